/* py-embed.so: the part of the py module (py.c) that embeds CPython.
 *
 * py.so, the module mpoold opens, links no Python: the master opens every
 * module to read its descriptor, and must not map libpython.  Its load
 * hook, which runs only where tasks run, opens this object and calls
 * through struct mpool_py_embed (embed.h).
 *
 * load runs in the fork server, once, before any worker is forked: it
 * starts the interpreter, adds the configured directories to sys.path,
 * imports the configured Python modules and returns their public
 * functions, so that "py.thumbs.resize" calls resize() of module thumbs.
 * Every worker is a fork() of that process, starts with the modules
 * imported, and has its own interpreter and GIL.  init calls the
 * configured initializer with its initargs in each worker, like
 * Pool(initializer, initargs).
 *
 * Settings, the module's initargs (one JSON object in mpoold.conf):
 *     modules      list of Python module names to import (required)
 *     path         list of directories put first on sys.path
 *     initializer  "MODULE.NAME" of a callable run once per worker
 *     initargs     list of its positional arguments
 *
 * A task function takes one argument (as with Pool.map) and returns one
 * value; both convert as convert_in/convert_out say.  An exception fails
 * the item with task_error "Type: message", its traceback's last lines go
 * to the log; SystemExit ends the worker with its code, like os._exit,
 * which the master reports as a worker death. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <mpool/module.h>

#include "embed.h"

/* Deep enough for any value mpoold forwards (its items nest at most 29
 * levels); a deeper result, or a list that contains itself, fails. */
#define PY_DEPTH_MAX 32
/* The traceback lines a failing task leaves in the log. */
#define PY_TRACE_LINES 6

/* What load returned: name "thumbs.resize", data the function (a strong
 * reference, for the life of the process). */
static struct mpool_loaded_function *table;
static PyObject *initializer, *init_args;
static bool loaded;
/* The GIL is released between calls (saved_ts), so that threads a Python
 * module started can run while the process waits for work; it is held
 * during a call, which is also how the fork handlers below tell a fork of
 * the fork server's (saved_ts set) from one a task made itself. */
static PyThreadState *saved_ts;
static bool forking;
/* The thread that runs tasks (and, in the fork server, forks workers). */
static pthread_t main_thread;

/* ---- logging: one line, one write, in mpoold's format ---------------- */

static bool stderr_is_journal(void)
{
	const char *e = getenv("JOURNAL_STREAM");
	unsigned long long dev, ino;
	struct stat st;

	if (!e || sscanf(e, "%llu:%llu", &dev, &ino) != 2 || fstat(STDERR_FILENO, &st) < 0)
		return false;
	return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

__attribute__((format(printf, 2, 3)))
static void py_log(int prio, const char *fmt, ...)
{
	static const char *names[] = { "emerg", "alert", "crit", "error",
				       "warning", "notice", "info", "debug" };
	char line[1024];
	va_list ap;
	size_t n;

	if (stderr_is_journal()) {
		n = (size_t)snprintf(line, sizeof(line), "<%d>", prio);
	} else {
		struct timespec ts;
		struct tm tm;

		clock_gettime(CLOCK_REALTIME, &ts);
		localtime_r(&ts.tv_sec, &tm);
		n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
		n += (size_t)snprintf(line + n, sizeof(line) - n, ".%03ld mpoold[%d] %s: ",
				      ts.tv_nsec / 1000000, (int)getpid(), names[prio & 7]);
	}
	va_start(ap, fmt);
	vsnprintf(line + n, sizeof(line) - n, fmt, ap);
	va_end(ap);
	n = strlen(line);
	for (char *p = line; (p = strchr(p, '\n')) != NULL; p++)
		*p = ' ';
	if (n == sizeof(line) - 1)
		n--;
	line[n++] = '\n';
	if (write(STDERR_FILENO, line, n) < 0)
		return;     /* nowhere left to report it */
}

/* ---- exceptions ------------------------------------------------------- */

/* The exception set now as "Type: message" (the last line Python would
 * print) in err, with code; its traceback's last lines go to the log,
 * each prefixed with what.  Clears the exception. */
static int fail_exception(struct mpool_task_error *err, int code, const char *what)
{
	PyObject *type, *value, *tb, *mod, *lines = NULL, *only = NULL;
	const char *msg = NULL;

	PyErr_Fetch(&type, &value, &tb);
	PyErr_NormalizeException(&type, &value, &tb);
	if (tb && value)
		PyException_SetTraceback(value, tb);
	mod = PyImport_ImportModule("traceback");
	if (mod && value) {
		only = PyObject_CallMethod(mod, "format_exception_only", "OO", type, value);
		lines = PyObject_CallMethod(mod, "format_exception", "OOO", type, value,
					    tb ? tb : Py_None);
	}
	if (only && PyList_Check(only) && PyList_GET_SIZE(only) > 0)
		msg = PyUnicode_AsUTF8(PyList_GET_ITEM(only, PyList_GET_SIZE(only) - 1));
	if (msg) {
		size_t len = strlen(msg);

		snprintf(err->message, sizeof(err->message), "%.*s",
			 (int)(len && msg[len - 1] == '\n' ? len - 1 : len), msg);
		err->code = code;
	} else {
		mpool_task_fail(err, code, "an exception that cannot be printed");
	}
	if (lines && PyList_Check(lines)) {
		/* format_exception gives chunks that hold several lines: join,
		 * then keep the last few lines. */
		PyObject *empty = PyUnicode_FromString("");
		PyObject *all = empty ? PyUnicode_Join(empty, lines) : NULL;
		const char *s = all ? PyUnicode_AsUTF8(all) : NULL;

		if (s) {
			const char *start = s + strlen(s);
			int n = 0;

			while (start > s && n <= PY_TRACE_LINES)
				if (*--start == '\n')
					n++;
			if (*start == '\n')
				start++;
			while (*start) {
				const char *nl = strchr(start, '\n');
				int len = nl ? (int)(nl - start) : (int)strlen(start);

				py_log(3, "%s: %.*s", what, len, start);
				start += len + (nl ? 1 : 0);
			}
		}
		Py_XDECREF(all);
		Py_XDECREF(empty);
	}
	PyErr_Clear();
	Py_XDECREF(only);
	Py_XDECREF(lines);
	Py_XDECREF(mod);
	Py_XDECREF(type);
	Py_XDECREF(value);
	Py_XDECREF(tb);
	return -1;
}

/* SystemExit in a task ends the worker as Python would end a process,
 * without unwinding into mpoold: the master reports a worker death. */
static void exit_if_system_exit(void)
{
	PyObject *type, *value, *tb, *code;
	int status = 1;

	if (!PyErr_ExceptionMatches(PyExc_SystemExit))
		return;
	PyErr_Fetch(&type, &value, &tb);
	PyErr_NormalizeException(&type, &value, &tb);
	code = value ? PyObject_GetAttrString(value, "code") : NULL;
	if (!code || code == Py_None) {
		status = 0;
	} else if (PyLong_Check(code)) {
		status = (int)PyLong_AsLong(code);
	} else {
		PyObject *s = PyObject_Str(code);
		const char *m = s ? PyUnicode_AsUTF8(s) : NULL;

		py_log(3, "py: SystemExit: %s", m ? m : "?");
		Py_XDECREF(s);
	}
	py_log(4, "py: a task raised SystemExit(%d); the worker exits", status);
	_exit(status & 0xff);
}

/* ---- conversion ------------------------------------------------------- */

static PyObject *type_error(struct mpool_task_error *err, const char *msg)
{
	mpool_task_fail(err, MPOOL_E_TYPE, msg);
	return NULL;
}

/* A MessagePack argument as a Python object: nil None, bool, int, float,
 * str (UTF-8), bytes, array list, map dict.  NULL with err filled
 * (type_error) for an extension type, a string that is not UTF-8 or a map
 * key Python cannot hash. */
static PyObject *convert_in(const msgpack_object *o, int depth, struct mpool_task_error *err)
{
	PyObject *r;

	if (depth > PY_DEPTH_MAX)
		return type_error(err, "argument nested too deep");
	switch (o->type) {
	case MSGPACK_OBJECT_NIL:
		Py_RETURN_NONE;
	case MSGPACK_OBJECT_BOOLEAN:
		return PyBool_FromLong(o->via.boolean);
	case MSGPACK_OBJECT_POSITIVE_INTEGER:
		return PyLong_FromUnsignedLongLong(o->via.u64);
	case MSGPACK_OBJECT_NEGATIVE_INTEGER:
		return PyLong_FromLongLong(o->via.i64);
	case MSGPACK_OBJECT_FLOAT32:
	case MSGPACK_OBJECT_FLOAT64:
		return PyFloat_FromDouble(o->via.f64);
	case MSGPACK_OBJECT_STR:
		r = PyUnicode_DecodeUTF8(o->via.str.ptr, o->via.str.size, "strict");
		if (!r && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
			PyErr_Clear();
			return type_error(err, "argument holds a string that is not UTF-8");
		}
		return r;
	case MSGPACK_OBJECT_BIN:
		return PyBytes_FromStringAndSize(o->via.bin.ptr, o->via.bin.size);
	case MSGPACK_OBJECT_ARRAY:
		r = PyList_New(o->via.array.size);
		for (uint32_t i = 0; r && i < o->via.array.size; i++) {
			PyObject *v = convert_in(&o->via.array.ptr[i], depth + 1, err);

			if (!v) {
				Py_CLEAR(r);
				break;
			}
			PyList_SET_ITEM(r, i, v);
		}
		return r;
	case MSGPACK_OBJECT_MAP:
		r = PyDict_New();
		for (uint32_t i = 0; r && i < o->via.map.size; i++) {
			PyObject *k = convert_in(&o->via.map.ptr[i].key, depth + 1, err);
			PyObject *v = k ? convert_in(&o->via.map.ptr[i].val, depth + 1, err) : NULL;
			int set = v ? PyDict_SetItem(r, k, v) : -1;

			Py_XDECREF(k);
			Py_XDECREF(v);
			if (set < 0) {
				Py_CLEAR(r);
				if (PyErr_ExceptionMatches(PyExc_TypeError)) {
					PyErr_Clear();
					return type_error(err, "argument holds a map key that Python "
							  "cannot hash (a list or map)");
				}
			}
		}
		return r;
	default:
		return type_error(err, "argument holds a MessagePack extension type");
	}
}

static int packed(int r, struct mpool_task_error *err)
{
	return r == 0 ? 0 : mpool_task_fail(err, MPOOL_E_INTERNAL, "out of memory packing");
}

/* A Python result packed as one MessagePack value: the inverse of
 * convert_in, tuples as arrays, bytearray as bin.  0, or -1 with err
 * filled (type_error for anything else, an int beyond 64 bits, a str with
 * lone surrogates). */
static int convert_out(PyObject *o, msgpack_packer *pk, int depth, struct mpool_task_error *err)
{
	char msg[MPOOL_TASK_MSG_MAX];

	if (depth > PY_DEPTH_MAX)
		return mpool_task_fail(err, MPOOL_E_TYPE, "result nested too deep (or it contains "
				       "itself)");
	if (o == Py_None)
		return packed(msgpack_pack_nil(pk), err);
	if (PyBool_Check(o))
		return packed(o == Py_True ? msgpack_pack_true(pk) : msgpack_pack_false(pk), err);
	if (PyLong_Check(o)) {
		int overflow;
		long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
		unsigned long long u;

		if (!overflow && !(v == -1 && PyErr_Occurred()))
			return packed(msgpack_pack_int64(pk, v), err);
		PyErr_Clear();
		if (overflow > 0) {
			u = PyLong_AsUnsignedLongLong(o);
			if (!(u == (unsigned long long)-1 && PyErr_Occurred()))
				return packed(msgpack_pack_uint64(pk, u), err);
			PyErr_Clear();
		}
		return mpool_task_fail(err, MPOOL_E_TYPE, "result holds an int that does not fit "
				       "in 64 bits (MessagePack's integers are -2**63 to 2**64-1)");
	}
	if (PyFloat_Check(o))
		return packed(msgpack_pack_double(pk, PyFloat_AS_DOUBLE(o)), err);
	if (PyUnicode_Check(o)) {
		Py_ssize_t len;
		const char *s = PyUnicode_AsUTF8AndSize(o, &len);

		if (!s) {
			PyErr_Clear();
			return mpool_task_fail(err, MPOOL_E_TYPE, "result holds a str that is not "
					       "valid Unicode (a lone surrogate)");
		}
		return packed(msgpack_pack_str_with_body(pk, s, (size_t)len), err);
	}
	if (PyBytes_Check(o))
		return packed(msgpack_pack_bin_with_body(pk, PyBytes_AS_STRING(o),
							 (size_t)PyBytes_GET_SIZE(o)), err);
	if (PyByteArray_Check(o))
		return packed(msgpack_pack_bin_with_body(pk, PyByteArray_AS_STRING(o),
							 (size_t)PyByteArray_GET_SIZE(o)), err);
	if (PyList_Check(o) || PyTuple_Check(o)) {
		PyObject *seq = PySequence_Fast(o, "");
		Py_ssize_t n = seq ? PySequence_Fast_GET_SIZE(seq) : 0;
		int r = seq ? packed(msgpack_pack_array(pk, (size_t)n), err) :
			mpool_task_fail(err, MPOOL_E_INTERNAL, "out of memory");

		for (Py_ssize_t i = 0; r == 0 && i < n; i++)
			r = convert_out(PySequence_Fast_GET_ITEM(seq, i), pk, depth + 1, err);
		Py_XDECREF(seq);
		return r;
	}
	if (PyDict_Check(o)) {
		PyObject *k, *v;
		Py_ssize_t pos = 0;
		int r = packed(msgpack_pack_map(pk, (size_t)PyDict_GET_SIZE(o)), err);

		while (r == 0 && PyDict_Next(o, &pos, &k, &v)) {
			r = convert_out(k, pk, depth + 1, err);
			if (r == 0)
				r = convert_out(v, pk, depth + 1, err);
		}
		return r;
	}
	snprintf(msg, sizeof(msg), "result holds a value of type %.60s, which MessagePack cannot carry "
		 "(None, bool, int, float, str, bytes, list, tuple and dict can)",
		 Py_TYPE(o)->tp_name);
	return mpool_task_fail(err, MPOOL_E_TYPE, msg);
}

/* ---- calls ------------------------------------------------------------ */

static void gil_take(void)
{
	PyEval_RestoreThread(saved_ts);
	saved_ts = NULL;
}

static void gil_give(void)
{
	saved_ts = PyEval_SaveThread();
}

static int call(void *data, const msgpack_object *arg, msgpack_packer *result,
		struct mpool_task_error *err)
{
	PyObject *fn = data, *a, *r;
	char what[128];
	int rc;

	gil_take();
	a = convert_in(arg, 0, err);
	if (!a) {
		rc = PyErr_Occurred() ? fail_exception(err, MPOOL_E_INTERNAL, "py") : -1;
		gil_give();
		return rc;
	}
	r = PyObject_CallOneArg(fn, a);
	Py_DECREF(a);
	if (!r) {
		exit_if_system_exit();
		snprintf(what, sizeof(what), "py: a task");
		for (const struct mpool_loaded_function *f = table; f->name; f++)
			if (f->data == data)
				snprintf(what, sizeof(what), "py.%.100s", f->name);
		rc = fail_exception(err, MPOOL_E_TASK, what);
	} else {
		rc = convert_out(r, result, 0, err);
		Py_DECREF(r);
		if (rc < 0 && PyErr_Occurred())
			PyErr_Clear();
	}
	gil_give();
	return rc;
}

/* ---- fork ------------------------------------------------------------- */

/* The fork server forks with the GIL released: take it, and let CPython
 * prepare and fix itself up on both sides as os.fork() would (the child
 * reseeds random, resets locks, runs os.register_at_fork hooks).  A fork
 * made by Python code (os.fork, subprocess: a task, or a thread a module
 * started) holds the GIL already and does its own: nothing to do here
 * then. */
static void before_fork(void)
{
	if (!saved_ts || !pthread_equal(pthread_self(), main_thread))
		return;
	gil_take();
	PyOS_BeforeFork();
	forking = true;
}

static void after_fork_parent(void)
{
	if (!forking)
		return;
	forking = false;
	PyOS_AfterFork_Parent();
	gil_give();
}

static void after_fork_child(void)
{
	if (!forking)
		return;
	forking = false;
	PyOS_AfterFork_Child();
	gil_give();
}

/* ---- settings --------------------------------------------------------- */

struct settings {
	const msgpack_object *modules, *path, *initializer, *initargs;
};

static bool key_is(const msgpack_object *k, const char *s)
{
	return k->type == MSGPACK_OBJECT_STR && k->via.str.size == strlen(s) &&
	       memcmp(k->via.str.ptr, s, k->via.str.size) == 0;
}

static bool str_list(const msgpack_object *o)
{
	if (o->type != MSGPACK_OBJECT_ARRAY)
		return false;
	for (uint32_t i = 0; i < o->via.array.size; i++)
		if (o->via.array.ptr[i].type != MSGPACK_OBJECT_STR)
			return false;
	return true;
}

static int read_settings(const msgpack_object *args, struct settings *s,
			 struct mpool_task_error *err)
{
	memset(s, 0, sizeof(*s));
	if (args->type != MSGPACK_OBJECT_MAP)
		return mpool_task_fail(err, MPOOL_E_TASK, "initargs must be an object with "
				       "\"modules\" (see docs/python-tasks.md)");
	for (uint32_t i = 0; i < args->via.map.size; i++) {
		const msgpack_object *k = &args->via.map.ptr[i].key, *v = &args->via.map.ptr[i].val;

		if (key_is(k, "modules"))
			s->modules = v;
		else if (key_is(k, "path"))
			s->path = v;
		else if (key_is(k, "initializer"))
			s->initializer = v;
		else if (key_is(k, "initargs"))
			s->initargs = v;
		else
			return mpool_task_fail(err, MPOOL_E_TASK, "initargs: unknown key (it takes "
					       "modules, path, initializer, initargs)");
	}
	if (!s->modules || !str_list(s->modules) || s->modules->via.array.size == 0)
		return mpool_task_fail(err, MPOOL_E_TASK, "initargs: \"modules\" must be a "
				       "non-empty list of module names");
	if (s->path && !str_list(s->path))
		return mpool_task_fail(err, MPOOL_E_TASK, "initargs: \"path\" must be a list of "
				       "directories");
	if (s->initializer && s->initializer->type == MSGPACK_OBJECT_NIL)
		s->initializer = NULL;
	if (s->initializer && s->initializer->type != MSGPACK_OBJECT_STR)
		return mpool_task_fail(err, MPOOL_E_TASK, "initargs: \"initializer\" must be "
				       "\"MODULE.NAME\"");
	if (s->initargs && s->initargs->type != MSGPACK_OBJECT_ARRAY)
		return mpool_task_fail(err, MPOOL_E_TASK, "initargs: \"initargs\" must be a list");
	if (s->initargs && !s->initializer)
		return mpool_task_fail(err, MPOOL_E_TASK, "initargs: \"initargs\" without an "
				       "\"initializer\"");
	return 0;
}

/* ---- load ------------------------------------------------------------- */

/* CPython's extension modules (math, _json, ...) look the interpreter's
 * symbols up globally: whoever opened us, libpython's must be global. */
static void libpython_global(void)
{
	Dl_info info;

	/* Best effort: should it fail, an extension module's import fails
	 * with an ImportError naming the symbol, which load reports. */
	if (dladdr((void *)Py_InitializeFromConfig, &info) && info.dli_fname)
		dlopen(info.dli_fname, RTLD_NOW | RTLD_GLOBAL | RTLD_NOLOAD);
}

static int start_interpreter(struct mpool_task_error *err)
{
	PyConfig config;
	PyStatus st;

	/* Isolated: PYTHON* variables and the user's site directory of
	 * whoever started mpoold do not change what the tasks run.  No
	 * signal handlers: a worker dies of a signal as any other does.
	 * No .pyc writes: the code's directory is not the daemon's to write
	 * (read-only under the system unit). */
	PyConfig_InitIsolatedConfig(&config);
	config.install_signal_handlers = 0;
	config.write_bytecode = 0;
	config.buffered_stdio = 0;
	config.site_import = 1;
	st = PyConfig_SetBytesString(&config, &config.program_name, "mpoold");
	if (!PyStatus_Exception(st))
		st = Py_InitializeFromConfig(&config);
	PyConfig_Clear(&config);
	if (PyStatus_Exception(st)) {
		char msg[MPOOL_TASK_MSG_MAX];

		snprintf(msg, sizeof(msg), "cannot start Python: %.200s",
			 st.err_msg ? st.err_msg : "unknown error");
		return mpool_task_fail(err, MPOOL_E_TASK, msg);
	}
	return 0;
}

static char *utf8(const msgpack_object *o)
{
	return strndup(o->via.str.ptr, o->via.str.size);
}

/* A Python identifier in ASCII: a name clients can write. */
static bool plain_name(const char *s)
{
	if (!*s || (*s >= '0' && *s <= '9'))
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		      (*s >= '0' && *s <= '9') || *s == '_'))
			return false;
	return true;
}

/* The public functions of mod: those its __all__ names, or else the
 * functions defined in it (not imported into it) whose names do not start
 * with '_'.  Appended to list as (name, function) tuples. */
static int public_functions(PyObject *mod, const char *modname, PyObject *list)
{
	PyObject *all = PyObject_GetAttrString(mod, "__all__");
	PyObject *dict = PyModule_GetDict(mod), *k, *v;
	Py_ssize_t pos = 0;

	if (!all)
		PyErr_Clear();
	while (PyDict_Next(dict, &pos, &k, &v)) {
		const char *name = PyUnicode_Check(k) ? PyUnicode_AsUTF8(k) : NULL;
		bool pub;

		if (!name) {
			PyErr_Clear();
			continue;
		}
		if (all) {
			int in = PySequence_Contains(all, k);

			if (in < 0)
				PyErr_Clear();
			pub = in == 1 && PyCallable_Check(v);
		} else {
			PyObject *owner = PyFunction_Check(v) ?
				PyObject_GetAttrString(v, "__module__") : NULL;
			const char *o = owner && PyUnicode_Check(owner) ?
				PyUnicode_AsUTF8(owner) : NULL;

			pub = name[0] != '_' && o && strcmp(o, modname) == 0;
			Py_XDECREF(owner);
			PyErr_Clear();
		}
		if (!pub)
			continue;
		if (!plain_name(name)) {
			py_log(4, "py: %s.%s: not an ASCII name; clients cannot call it", modname,
			       name);
			continue;
		}
		PyObject *t = Py_BuildValue("(sO)", name, v);

		if (!t || PyList_Append(list, t) < 0) {
			Py_XDECREF(t);
			Py_XDECREF(all);
			return -1;
		}
		Py_DECREF(t);
	}
	Py_XDECREF(all);
	return 0;
}

static int import_all(const struct settings *s, PyObject *found, struct mpool_task_error *err)
{
	PyObject *syspath = PySys_GetObject("path");     /* borrowed */
	char what[160];

	for (uint32_t i = 0; s->path && i < s->path->via.array.size; i++) {
		const msgpack_object *d = &s->path->via.array.ptr[i];
		PyObject *dir = PyUnicode_DecodeFSDefaultAndSize(d->via.str.ptr,
								 (Py_ssize_t)d->via.str.size);

		if (!dir || !syspath || PyList_Insert(syspath, (Py_ssize_t)i, dir) < 0) {
			Py_XDECREF(dir);
			return fail_exception(err, MPOOL_E_TASK, "py: sys.path");
		}
		Py_DECREF(dir);
	}
	for (uint32_t i = 0; i < s->modules->via.array.size; i++) {
		char *name = utf8(&s->modules->via.array.ptr[i]);
		PyObject *mod, *list = NULL;
		int r = 0;

		if (!name)
			return mpool_task_fail(err, MPOOL_E_INTERNAL, "out of memory");
		snprintf(what, sizeof(what), "py: import %.100s", name);
		mod = PyImport_ImportModule(name);
		if (!mod) {
			exit_if_system_exit();
			fail_exception(err, MPOOL_E_TASK, what);
			/* Say which module: the exception alone may not. */
			char msg[MPOOL_TASK_MSG_MAX];

			snprintf(msg, sizeof(msg), "import %.60s: %.180s", name, err->message);
			free(name);
			return mpool_task_fail(err, MPOOL_E_TASK, msg);
		}
		list = PyList_New(0);
		if (!list || public_functions(mod, name, list) < 0)
			r = fail_exception(err, MPOOL_E_TASK, what);
		for (Py_ssize_t j = 0; r == 0 && j < PyList_GET_SIZE(list); j++) {
			PyObject *t = PyList_GET_ITEM(list, j);
			PyObject *full = PyUnicode_FromFormat("%s.%U", name, PyTuple_GET_ITEM(t, 0));
			PyObject *e = full ? PyTuple_Pack(2, full, PyTuple_GET_ITEM(t, 1)) : NULL;

			if (!e || PyList_Append(found, e) < 0)
				r = fail_exception(err, MPOOL_E_INTERNAL, what);
			Py_XDECREF(e);
			Py_XDECREF(full);
		}
		if (r == 0 && PyList_GET_SIZE(list) == 0)
			py_log(4, "py: module %s has no public functions", name);
		Py_XDECREF(list);
		Py_DECREF(mod);
		free(name);
		if (r < 0)
			return -1;
	}
	return 0;
}

/* "MODULE.NAME" imported, and the arguments as a tuple. */
static int resolve_initializer(const struct settings *s, struct mpool_task_error *err)
{
	char *spec, *dot, msg[MPOOL_TASK_MSG_MAX];
	PyObject *mod;
	msgpack_object none = { .type = MSGPACK_OBJECT_NIL };

	if (!s->initializer)
		return 0;
	spec = utf8(s->initializer);
	if (!spec)
		return mpool_task_fail(err, MPOOL_E_INTERNAL, "out of memory");
	dot = strrchr(spec, '.');
	if (!dot || dot == spec || !dot[1]) {
		free(spec);
		return mpool_task_fail(err, MPOOL_E_TASK, "initargs: \"initializer\" must be "
				       "\"MODULE.NAME\"");
	}
	*dot = '\0';
	mod = PyImport_ImportModule(spec);
	initializer = mod ? PyObject_GetAttrString(mod, dot + 1) : NULL;
	Py_XDECREF(mod);
	if (!initializer || !PyCallable_Check(initializer)) {
		if (PyErr_Occurred())
			fail_exception(err, MPOOL_E_TASK, "py: initializer");
		snprintf(msg, sizeof(msg), "initializer %.60s.%.60s: %.120s", spec, dot + 1,
			 initializer ? "not callable" : err->message);
		free(spec);
		Py_CLEAR(initializer);
		return mpool_task_fail(err, MPOOL_E_TASK, msg);
	}
	free(spec);
	{
		PyObject *list = convert_in(s->initargs ? s->initargs : &none, 0, err);

		if (!list)
			return -1;
		init_args = list == Py_None ? PyTuple_New(0) : PyList_AsTuple(list);
		Py_DECREF(list);
	}
	return init_args ? 0 : fail_exception(err, MPOOL_E_INTERNAL, "py: initargs");
}

static int load(const msgpack_object *initargs, const struct mpool_loaded_function **ret,
		struct mpool_task_error *err)
{
	struct settings s;
	PyObject *found;
	Py_ssize_t n;

	if (read_settings(initargs, &s, err) < 0)
		return -1;
	libpython_global();
	if (start_interpreter(err) < 0)
		return -1;
	found = PyList_New(0);
	if (!found)
		return fail_exception(err, MPOOL_E_INTERNAL, "py");
	if (import_all(&s, found, err) < 0 || resolve_initializer(&s, err) < 0) {
		Py_DECREF(found);
		gil_give();
		return -1;
	}
	n = PyList_GET_SIZE(found);
	table = calloc((size_t)n + 1, sizeof(*table));
	if (!table) {
		Py_DECREF(found);
		gil_give();
		return mpool_task_fail(err, MPOOL_E_INTERNAL, "out of memory");
	}
	for (Py_ssize_t i = 0; i < n; i++) {
		PyObject *t = PyList_GET_ITEM(found, i);
		const char *name = PyUnicode_AsUTF8(PyTuple_GET_ITEM(t, 0));

		table[i].name = name ? strdup(name) : NULL;
		if (!table[i].name) {
			table[i].name = NULL;
			Py_DECREF(found);
			gil_give();
			return mpool_task_fail(err, MPOOL_E_INTERNAL, "out of memory");
		}
		table[i].call = call;
		table[i].data = Py_NewRef(PyTuple_GET_ITEM(t, 1));
	}
	Py_DECREF(found);
	/* From here on the fork server forks, with the GIL released. */
	main_thread = pthread_self();
	if (pthread_atfork(before_fork, after_fork_parent, after_fork_child) != 0) {
		gil_give();
		return mpool_task_fail(err, MPOOL_E_INTERNAL, "pthread_atfork failed");
	}
	gil_give();
	loaded = true;
	*ret = table;
	return 0;
}

/* In each worker, before its first task: the initializer. */
static int init(const msgpack_object *initargs, struct mpool_task_error *err)
{
	PyObject *r;
	int rc = 0;

	(void)initargs;     /* load read them */
	if (!loaded || !initializer)
		return 0;
	gil_take();
	r = PyObject_Call(initializer, init_args, NULL);
	if (!r) {
		char msg[MPOOL_TASK_MSG_MAX];

		exit_if_system_exit();
		fail_exception(err, MPOOL_E_TASK, "py: initializer");
		snprintf(msg, sizeof(msg), "initializer raised %.200s", err->message);
		rc = mpool_task_fail(err, MPOOL_E_TASK, msg);
	}
	Py_XDECREF(r);
	gil_give();
	return rc;
}

MPOOL_MODULE_EXPORT const struct mpool_py_embed mpool_py_embed = {
	.load = load,
	.init = init,
};
