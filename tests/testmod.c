/* testmod: a task module that misbehaves on request, for the fault tests
 * (tests/test_faults.c).  Each function is one way a task can go wrong:
 *
 *   crash        SIGSEGV, writing through a NULL pointer
 *   abort        abort(): SIGABRT
 *   exit         exit(arg)
 *   kill         raise(arg): dies by that signal (with its default action)
 *   hang         sleeps forever
 *   hang_noterm  blocks SIGTERM, then sleeps forever
 *   grow         allocates arg MiB, touches every page and keeps it
 *   sleep        sleeps arg ms, returns arg
 *   ok           returns arg
 *   initargs     the initargs init saw (a copy), nil when there were none
 *   version      TESTMOD_VERSION (default 1; a test rebuilds the module
 *                with another value to prove that a reload reopens it)
 *   crash_once   arg is a path: crashes if the file does not exist yet
 *                (after creating it), returns arg otherwise
 *   getenv       the value of the environment variable arg in the task's
 *                process, nil when it is not set
 *   atfork       what a library that must reseed after fork(2) sees: a map
 *                with "pid" (the task's process), "ran" (whether the
 *                pthread_atfork child handler testmod registers when it is
 *                loaded ran in this very process) and "random" (the next
 *                value of a generator seeded at load and reseeded by that
 *                handler)
 *   mixed        one function for maps that mix behaviours item by item:
 *                an integer N sleeps N ms and returns N; the strings
 *                "crash", "abort", "hang" do that; "crash_once:PATH" and
 *                "hang_once:PATH" crash or hang only if PATH does not exist
 *                yet (creating it first) and else return the string.
 *
 * init: initargs {"fail": true} fails init with a message; {"die": true}
 * calls _exit(7) inside init; anything else is kept (copied) for
 * "initargs".
 *
 * Built with -DTESTMOD_NO_DESCRIPTOR it exports no mpool_module at all: a
 * shared object mpoold must refuse to load. */
#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <mpool/module.h>

#ifndef TESTMOD_VERSION
#define TESTMOD_VERSION 1
#endif

static void *saved_initargs;         /* packed copy; NULL: nil */
static size_t saved_initargs_len;

/* As a crypto or random-number library keeps it: seeded once when loaded,
 * reseeded in every child of fork(2) by an atfork handler, so that no two
 * processes draw the same numbers. */
static uint64_t rng_state;
static pid_t atfork_ran_in;          /* the process the child handler last ran in */

static uint64_t rng_mix(uint64_t x)
{
	/* splitmix64's finalizer */
	x += 0x9E3779B97F4A7C15ull;
	x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
	x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
	return x ^ (x >> 31);
}

static void atfork_child(void)
{
	atfork_ran_in = getpid();
	rng_state = rng_mix(rng_state ^ (uint64_t)atfork_ran_in);
}

__attribute__((constructor)) static void testmod_load(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	rng_state = rng_mix((uint64_t)ts.tv_nsec ^ (uint64_t)getpid());
	pthread_atfork(NULL, NULL, atfork_child);
}

static int type_fail(const char *fn, const char *want, struct mpool_task_error *err)
{
	err->code = MPOOL_E_TYPE;
	snprintf(err->message, sizeof(err->message), "testmod.%s: expected %s", fn, want);
	return -1;
}

static void sleep_ms(uint64_t ms)
{
	struct timespec ts = { (time_t)(ms / 1000), (long)(ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* Not sanitized: UBSan (with halt_on_error) would catch the store and exit
 * 1 instead of letting the worker die by SIGSEGV. */
static __attribute__((noreturn, no_sanitize("address", "undefined"))) void do_crash(void)
{
	/* Both volatile: the compiler may neither drop the store (it would,
	 * before a noreturn call) nor turn it into a trap (SIGILL). */
	volatile int *volatile p = NULL;

	for (;;)
		*p = 42;
}

static __attribute__((noreturn)) void do_hang(void)
{
	for (;;)
		pause();
}

/* True the first time path is seen: creates it then. */
static bool first_time(const char *path)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);

	if (fd < 0)
		return false;
	close(fd);
	return true;
}

/* The string argument as a C string in buf; false if it is not a string
 * or does not fit. */
static bool arg_cstr(const msgpack_object *arg, char *buf, size_t size)
{
	if (arg->type != MSGPACK_OBJECT_STR || arg->via.str.size >= size)
		return false;
	memcpy(buf, arg->via.str.ptr, arg->via.str.size);
	buf[arg->via.str.size] = '\0';
	return true;
}

static int fn_crash(const msgpack_object *arg, msgpack_packer *out, struct mpool_task_error *err)
{
	(void)arg;
	(void)out;
	(void)err;
	do_crash();
}

static int fn_abort(const msgpack_object *arg, msgpack_packer *out, struct mpool_task_error *err)
{
	(void)arg;
	(void)out;
	(void)err;
	abort();
}

static int fn_exit(const msgpack_object *arg, msgpack_packer *out, struct mpool_task_error *err)
{
	(void)out;
	if (arg->type != MSGPACK_OBJECT_POSITIVE_INTEGER || arg->via.u64 > 255)
		return type_fail("exit", "an exit status from 0 to 255", err);
	exit((int)arg->via.u64);
}

static int fn_kill(const msgpack_object *arg, msgpack_packer *out, struct mpool_task_error *err)
{
	struct sigaction sa = { .sa_handler = SIG_DFL };
	sigset_t set;
	int sig;

	(void)out;
	if (arg->type != MSGPACK_OBJECT_POSITIVE_INTEGER || arg->via.u64 < 1 || arg->via.u64 >= NSIG)
		return type_fail("kill", "a signal number", err);
	sig = (int)arg->via.u64;
	sigaction(sig, &sa, NULL);
	sigemptyset(&set);
	sigaddset(&set, sig);
	sigprocmask(SIG_UNBLOCK, &set, NULL);
	raise(sig);
	/* A signal whose default action is not to end the process. */
	return mpool_task_fail(err, MPOOL_E_TASK, "testmod.kill: still alive after the signal");
}

static int fn_hang(const msgpack_object *arg, msgpack_packer *out, struct mpool_task_error *err)
{
	(void)arg;
	(void)out;
	(void)err;
	do_hang();
}

static int fn_hang_noterm(const msgpack_object *arg, msgpack_packer *out,
			  struct mpool_task_error *err)
{
	sigset_t set;

	(void)arg;
	(void)out;
	(void)err;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	sigprocmask(SIG_BLOCK, &set, NULL);
	do_hang();
}

static int fn_grow(const msgpack_object *arg, msgpack_packer *out, struct mpool_task_error *err)
{
	size_t n;
	char *p;

	if (arg->type != MSGPACK_OBJECT_POSITIVE_INTEGER || arg->via.u64 > 4096)
		return type_fail("grow", "MiB from 0 to 4096", err);
	n = (size_t)arg->via.u64 << 20;
	p = malloc(n ? n : 1);
	if (!p)
		return mpool_task_fail(err, MPOOL_E_TASK, "testmod.grow: out of memory");
	/* Touch every page so it counts in the RSS; kept on purpose (the
	 * worker holds it until it leaves). */
	for (size_t i = 0; i < n; i += 4096)
		p[i] = (char)i;
	*(volatile char *)p = 1;
	return msgpack_pack_uint64(out, arg->via.u64);
}

static int fn_sleep(const msgpack_object *arg, msgpack_packer *out, struct mpool_task_error *err)
{
	if (arg->type != MSGPACK_OBJECT_POSITIVE_INTEGER || arg->via.u64 > 3600 * 1000)
		return type_fail("sleep", "milliseconds from 0 to 3600000", err);
	sleep_ms(arg->via.u64);
	return msgpack_pack_uint64(out, arg->via.u64);
}

static int fn_ok(const msgpack_object *arg, msgpack_packer *out, struct mpool_task_error *err)
{
	if (msgpack_pack_object(out, *arg) != 0)
		return mpool_task_fail(err, MPOOL_E_TASK, "testmod.ok: out of memory");
	return 0;
}

static int fn_initargs(const msgpack_object *arg, msgpack_packer *out,
		       struct mpool_task_error *err)
{
	(void)arg;
	(void)err;
	if (!saved_initargs)
		return msgpack_pack_nil(out);
	/* The copy is one packed value: hand it over byte for byte. */
	return out->callback(out->data, saved_initargs, saved_initargs_len);
}

static int fn_version(const msgpack_object *arg, msgpack_packer *out,
		      struct mpool_task_error *err)
{
	(void)arg;
	(void)err;
	return msgpack_pack_int64(out, TESTMOD_VERSION);
}

static int fn_crash_once(const msgpack_object *arg, msgpack_packer *out,
			 struct mpool_task_error *err)
{
	char path[512];

	if (!arg_cstr(arg, path, sizeof(path)))
		return type_fail("crash_once", "a path", err);
	if (first_time(path))
		do_crash();
	return msgpack_pack_object(out, *arg);
}

static int fn_mixed(const msgpack_object *arg, msgpack_packer *out, struct mpool_task_error *err)
{
	char s[512];

	if (arg->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
		return fn_sleep(arg, out, err);
	if (!arg_cstr(arg, s, sizeof(s)))
		return type_fail("mixed", "milliseconds or a command string", err);
	if (strcmp(s, "crash") == 0)
		do_crash();
	if (strcmp(s, "abort") == 0)
		abort();
	if (strcmp(s, "hang") == 0)
		do_hang();
	if (strncmp(s, "crash_once:", 11) == 0) {
		if (first_time(s + 11))
			do_crash();
		return msgpack_pack_object(out, *arg);
	}
	if (strncmp(s, "hang_once:", 10) == 0) {
		if (first_time(s + 10))
			do_hang();
		return msgpack_pack_object(out, *arg);
	}
	err->code = MPOOL_E_TASK;
	snprintf(err->message, sizeof(err->message), "testmod.mixed: unknown command '%.200s'", s);
	return -1;
}

static int fn_atfork(const msgpack_object *arg, msgpack_packer *out, struct mpool_task_error *err)
{
	pid_t pid = getpid();

	(void)arg;
	(void)err;
	rng_state = rng_mix(rng_state);
	msgpack_pack_map(out, 3);
	msgpack_pack_str_with_body(out, "pid", 3);
	msgpack_pack_int64(out, pid);
	msgpack_pack_str_with_body(out, "ran", 3);
	if (atfork_ran_in == pid)
		msgpack_pack_true(out);
	else
		msgpack_pack_false(out);
	msgpack_pack_str_with_body(out, "random", 6);
	return msgpack_pack_uint64(out, rng_state);
}

static int fn_getenv(const msgpack_object *arg, msgpack_packer *out, struct mpool_task_error *err)
{
	char name[256];
	const char *v;

	if (!arg_cstr(arg, name, sizeof(name)))
		return type_fail("getenv", "a variable name", err);
	v = getenv(name);
	if (!v)
		return msgpack_pack_nil(out);
	return msgpack_pack_str_with_body(out, v, strlen(v));
}

/* initargs[key] is true. */
static bool flag(const msgpack_object *o, const char *key)
{
	size_t kl = strlen(key);

	if (o->type != MSGPACK_OBJECT_MAP)
		return false;
	for (uint32_t i = 0; i < o->via.map.size; i++) {
		const msgpack_object *k = &o->via.map.ptr[i].key, *v = &o->via.map.ptr[i].val;

		if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == kl &&
		    memcmp(k->via.str.ptr, key, kl) == 0)
			return v->type == MSGPACK_OBJECT_BOOLEAN && v->via.boolean;
	}
	return false;
}

static int testmod_init(const msgpack_object *initargs, struct mpool_task_error *err)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;

	if (flag(initargs, "fail"))
		return mpool_task_fail(err, MPOOL_E_TASK,
				       "testmod: init failed on purpose (initargs fail: true)");
	if (flag(initargs, "die"))
		_exit(7);
	if (initargs->type == MSGPACK_OBJECT_NIL)
		return 0;
	/* The object dies after init: keep a packed copy. */
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	if (msgpack_pack_object(&pk, *initargs) != 0) {
		msgpack_sbuffer_destroy(&sb);
		return mpool_task_fail(err, MPOOL_E_TASK, "testmod: out of memory copying initargs");
	}
	saved_initargs_len = sb.size;
	saved_initargs = msgpack_sbuffer_release(&sb);
	return 0;
}

static void testmod_fini(void)
{
	free(saved_initargs);
	saved_initargs = NULL;
}

static const struct mpool_function functions[] = {
	{ "crash", fn_crash },
	{ "abort", fn_abort },
	{ "exit", fn_exit },
	{ "kill", fn_kill },
	{ "hang", fn_hang },
	{ "hang_noterm", fn_hang_noterm },
	{ "grow", fn_grow },
	{ "sleep", fn_sleep },
	{ "ok", fn_ok },
	{ "initargs", fn_initargs },
	{ "version", fn_version },
	{ "crash_once", fn_crash_once },
	{ "mixed", fn_mixed },
	{ "getenv", fn_getenv },
	{ "atfork", fn_atfork },
	{ NULL, NULL },
};

#if defined(TESTMOD_ABI1)
/* A module built against module ABI 1: its descriptor is exactly that
 * ABI's, with nothing after functions, as an old module's object is. */
struct mpool_module_abi1 {
	uint32_t abi;
	const char *name;
	int (*init)(const msgpack_object *initargs, struct mpool_task_error *err);
	void (*fini)(void);
	const struct mpool_function *functions;
};
MPOOL_MODULE_EXPORT const struct mpool_module_abi1 mpool_module = {
	.abi = 1,
	.name = "testmod",
	.init = testmod_init,
	.fini = testmod_fini,
	.functions = functions,
};
#elif !defined(TESTMOD_NO_DESCRIPTOR)
MPOOL_MODULE_EXPORT const struct mpool_module mpool_module = {
	.abi = MPOOL_MODULE_ABI,
	.name = "testmod",
	.init = testmod_init,
	.fini = testmod_fini,
	.functions = functions,
};
#else
/* Something to export, so this is an ordinary shared object without the
 * descriptor rather than an empty one. */
MPOOL_MODULE_EXPORT const struct mpool_function *testmod_functions = functions;
MPOOL_MODULE_EXPORT int (*testmod_init_fn)(const msgpack_object *, struct mpool_task_error *) =
	testmod_init;
MPOOL_MODULE_EXPORT void (*testmod_fini_fn)(void) = testmod_fini;
#endif
