/* process: supervised one-off processes, Python's multiprocessing.Process
 * served by mpoold (PROTOCOL.md, "Supervised processes"): spawn, attach,
 * join, is_alive, terminate, kill and the list.  Each is a blocking
 * one-response call (call.c); a join with a timeout is one request that
 * mpoold answers when the process exits or the timeout passes.  A handle
 * keeps what the last process map said; once that map says "exited" the
 * outcome is final and the handle stops asking. */
#include "libmpool-private.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mp_name.h"

/* mpoold's largest join timeout: a longer wait is several joins. */
#define JOIN_MAX_MS 86400000

struct mpool_process {
	mpool *p;                          /* NULL once the connection is closed */
	struct mpool_process *prev, *next; /* p->procs */
	bool linked;                       /* in p->procs */
	uint64_t id;
	pid_t pid;
	char *name;
	bool exited;
	int exitcode;                      /* once exited: Python's exitcode */
	mpool_value *map;                  /* the map that said it exited */
	const msgpack_object *result;      /* in map; NULL when it failed */
	int err;                           /* once exited: 0, or -code */
	char *errmsg;                      /* with err */
};

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void link_proc(struct mpool_process *proc)
{
	mpool *p = proc->p;

	proc->prev = NULL;
	proc->next = p->procs;
	if (p->procs)
		p->procs->prev = proc;
	p->procs = proc;
	proc->linked = true;
}

static void unlink_proc(struct mpool_process *proc)
{
	if (!proc->linked)
		return;
	if (proc->prev)
		proc->prev->next = proc->next;
	else
		proc->p->procs = proc->next;
	if (proc->next)
		proc->next->prev = proc->prev;
	proc->prev = proc->next = NULL;
	proc->linked = false;
}

void mpc_procs_detach(mpool *p)
{
	while (p->procs) {
		struct mpool_process *proc = p->procs;

		unlink_proc(proc);
		proc->p = NULL;
	}
}

/* 0 when proc may ask mpoold now; else the failure to return. */
static int may_ask(struct mpool_process *proc)
{
	int r;

	if (!proc->p)
		return -MPOOL_E_CLOSED;
	r = mpc_usable(proc->p);
	if (r == 0)
		r = mpc_can_block(proc->p);
	return r;
}

/* Sends [0, msgid, method, params] with params [] (id NULL), [id], or
 * [id, {"timeout_ms": timeout_ms}] (timeout_ms >= 0), and waits for the
 * answer: 0 with its value (when ret is not NULL), or the failure. */
static int request(mpool *p, const char *method, const uint64_t *id, int64_t timeout_ms,
		   mpool_value **ret)
{
	size_t mark = mpc_out_mark(p);
	struct mpool_async *a;
	msgpack_packer pk;
	int r;

	a = mpc_call_new(p, MPC_SIMPLE, sizeof(*a));
	if (!a)
		return mpc_err(p, MPOOL_E_NOMEM, "out of memory starting a request");
	mpc_packer(p, &pk);
	r = mpc_pack_head(p, a->msgid, method, !id ? 0 : timeout_ms >= 0 ? 2 : 1);
	if (id)
		r |= msgpack_pack_uint64(&pk, *id);
	if (id && timeout_ms >= 0)
		r |= msgpack_pack_map(&pk, 1) | mp_pack_cstr(&pk, "timeout_ms") |
		     msgpack_pack_uint64(&pk, (uint64_t)timeout_ms);
	if (r == 0 && mpc_call_open(a) < 0)
		r = -1;
	if (r) {
		mpc_out_rollback(p, mark);
		mpc_call_release(a);
		return mpc_err(p, MPOOL_E_NOMEM, "out of memory packing a request");
	}
	mpc_send_soon(p);
	return mpc_finish(p, a, ret);
}

/* ---- the process map ------------------------------------------------------ */

static const msgpack_object *get(const msgpack_object *map, const char *key)
{
	size_t len = strlen(key);

	for (uint32_t i = 0; i < map->via.map.size; i++) {
		const msgpack_object *k = &map->via.map.ptr[i].key;

		if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == len &&
		    memcmp(k->via.str.ptr, key, len) == 0)
			return &map->via.map.ptr[i].val;
	}
	return NULL;
}

static bool as_i64(const msgpack_object *o, int64_t *ret)
{
	if (o && o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= INT64_MAX) {
		*ret = (int64_t)o->via.u64;
		return true;
	}
	if (o && o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
		*ret = o->via.i64;
		return true;
	}
	return false;
}

static bool is_str(const msgpack_object *o, const char *s)
{
	return o && o->type == MSGPACK_OBJECT_STR && o->via.str.size == strlen(s) &&
	       memcmp(o->via.str.ptr, s, o->via.str.size) == 0;
}

static char *str_dup(const msgpack_object *o)
{
	char *s = malloc(o->via.str.size + 1);

	if (s) {
		memcpy(s, o->via.str.ptr, o->via.str.size);
		s[o->via.str.size] = '\0';
	}
	return s;
}

static const msgpack_object nil = { .type = MSGPACK_OBJECT_NIL };

/* A crash reads like a pool worker's death: "killed by SIGSEGV". */
static char *death_msg(const struct mpool_process *proc)
{
	char buf[160];
	const char *sig;

	if (proc->exitcode < 0) {
		sig = sigabbrev_np(-proc->exitcode);
		if (sig)
			snprintf(buf, sizeof(buf), "process %llu (pid %d) killed by SIG%s",
				 (unsigned long long)proc->id, (int)proc->pid, sig);
		else
			snprintf(buf, sizeof(buf), "process %llu (pid %d) killed by signal %d",
				 (unsigned long long)proc->id, (int)proc->pid, -proc->exitcode);
	} else {
		snprintf(buf, sizeof(buf), "process %llu (pid %d) exited with status %d without a result",
			 (unsigned long long)proc->id, (int)proc->pid, proc->exitcode);
	}
	return strdup(buf);
}

/* Takes in a process map from mpoold (consumes v): its pid and name, and
 * once it says "exited", the exit code and the outcome.  0, -MPOOL_E_NOMEM,
 * or -MPOOL_E_PROTO when the map makes no sense (the connection is failed:
 * mpoold is not speaking the protocol). */
static int take_map(struct mpool_process *proc, mpool_value *v)
{
	const msgpack_object *m = mpool_value_get(v), *name, *state, *res, *error = NULL;
	mpool *p = proc->p;
	int64_t id, pid, code = 0, ecode = 0;
	const msgpack_object *emsg = NULL;
	const char *why = NULL;
	bool exited = false;
	char *name_copy;

	if (m->type != MSGPACK_OBJECT_MAP) {
		why = "not a map";
	} else if (!as_i64(get(m, "id"), &id) || (uint64_t)id != proc->id) {
		why = "no id, or another process's";
	} else if (!as_i64(get(m, "pid"), &pid) || pid <= 0 || pid > INT32_MAX) {
		why = "no valid pid";
	} else if (!(name = get(m, "name")) || name->type != MSGPACK_OBJECT_STR ||
		   name->via.str.size == 0 || memchr(name->via.str.ptr, 0, name->via.str.size)) {
		why = "no valid name";
	} else if (!(state = get(m, "state")) ||
		   !((exited = is_str(state, "exited")) || is_str(state, "running"))) {
		why = "no valid state";
	} else if (exited && (!as_i64(get(m, "exitcode"), &code) || code < -255 || code > 255)) {
		why = "an exited process without a valid exitcode";
	} else if (exited && (error = get(m, "error")) && error->type != MSGPACK_OBJECT_NIL &&
		   (error->type != MSGPACK_OBJECT_MAP || !as_i64(get(error, "code"), &ecode) ||
		    ecode <= 0 || ecode > INT32_MAX || !(emsg = get(error, "message")) ||
		    emsg->type != MSGPACK_OBJECT_STR)) {
		why = "a malformed error object";
	}
	if (why) {
		mpool_value_free(v);
		mpc_conn_fail(p, MPOOL_E_PROTO, "mpoold sent a process map with %s", why);
		return -MPOOL_E_PROTO;
	}
	name_copy = str_dup(name);
	if (!name_copy) {
		mpool_value_free(v);
		return mpc_err(p, MPOOL_E_NOMEM, "out of memory reading a process map");
	}
	free(proc->name);
	proc->name = name_copy;
	proc->pid = (pid_t)pid;
	if (!exited) {
		mpool_value_free(v);
		return 0;
	}
	proc->exitcode = (int)code;
	if (ecode) {
		proc->err = -(int)ecode;
		proc->errmsg = str_dup(emsg);
	} else if (code != 0) {
		proc->err = -MPOOL_E_WORKER;
		proc->errmsg = death_msg(proc);
	} else {
		/* Returned: the result, nil included (a function that called
		 * exit(0) reads the same). */
		res = get(m, "result");
		proc->result = res ? res : &nil;
	}
	if (proc->err && !proc->errmsg) {
		proc->err = 0;
		mpool_value_free(v);
		return mpc_err(p, MPOOL_E_NOMEM, "out of memory reading a process map");
	}
	proc->map = v;
	proc->exited = true;
	return 0;
}

/* One join request: without timeout (timeout_ms < 0) or with one of
 * 1 … JOIN_MAX_MS.  0 with the handle updated, or the failure. */
static int join_once(struct mpool_process *proc, int64_t timeout_ms)
{
	mpool_value *v;
	int r;

	r = request(proc->p, "join", &proc->id, timeout_ms, &v);
	if (r < 0)
		return r;
	return take_map(proc, v);
}

/* ---- the calls ------------------------------------------------------------ */

static struct mpool_process *proc_new(mpool *p, uint64_t id)
{
	struct mpool_process *proc = calloc(1, sizeof(*proc));

	if (proc) {
		proc->p = p;
		proc->id = id;
	}
	return proc;
}

static void proc_free(struct mpool_process *proc)
{
	unlink_proc(proc);
	mpool_value_free(proc->map);
	free(proc->name);
	free(proc->errmsg);
	free(proc);
}

int mpool_spawn(mpool *p, const char *fn, const void *arg, size_t arg_len,
		const struct mpool_spawn_opts *opts, struct mpool_process **ret)
{
	struct mpool_spawn_opts so;
	const char *name;
	bool daemon;
	struct mpool_process *proc;
	const msgpack_object *o;
	struct mpool_async *a;
	msgpack_packer pk;
	mpool_value *v;
	int64_t id, pid;
	size_t mark;
	char dflt[32];
	int r;

	if (!p)
		return -MPOOL_E_INVAL;
	if (!fn || !ret)
		return mpc_err(p, MPOOL_E_INVAL, "spawn: %s", !fn ? "no function name" : "no ret");
	r = mpc_opts_copy(p, "struct mpool_spawn_opts", &so, sizeof(so), opts);
	if (r < 0)
		return r;
	name = so.name;
	daemon = so.daemon;
	if (name && mp_name_check(name, strlen(name)) < 0)
		return mpc_err(p, MPOOL_E_INVAL,
			       "spawn: a name is 1 to %d characters of UTF-8, none of them a "
			       "control, separator or bidirectional formatting character", MP_NAME_MAX);
	r = mpc_usable(p);
	if (r == 0)
		r = mpc_can_block(p);
	if (r == 0)
		r = mpc_check_values(p, "spawn argument", arg, arg_len, 1, false);
	if (r < 0)
		return r;

	a = mpc_call_new(p, MPC_SIMPLE, sizeof(*a));
	if (!a)
		return mpc_err(p, MPOOL_E_NOMEM, "out of memory starting a request");
	mark = mpc_out_mark(p);
	mpc_packer(p, &pk);
	/* "protocol" says which meaning of "daemon" we mean: mpoold refuses a
	 * spawn without it (PROTOCOL.md, Versioning). */
	r = mpc_pack_head(p, a->msgid, "spawn", 3);
	r |= mp_pack_cstr(&pk, fn);
	r |= mpc_out_write(p, arg, arg_len);
	r |= msgpack_pack_map(&pk, 2 + (name != NULL));
	r |= mp_pack_cstr(&pk, "protocol") | msgpack_pack_uint32(&pk, MP_PROTO_VERSION);
	r |= mp_pack_cstr(&pk, "daemon") |
	     (daemon ? msgpack_pack_true(&pk) : msgpack_pack_false(&pk));
	if (name)
		r |= mp_pack_cstr(&pk, "name") | mp_pack_cstr(&pk, name);
	if (r == 0 && mpc_call_open(a) < 0)
		r = -1;
	if (r) {
		mpc_out_rollback(p, mark);
		mpc_call_release(a);
		return mpc_err(p, MPOOL_E_NOMEM, "out of memory packing a request");
	}
	mpc_send_soon(p);
	r = mpc_finish(p, a, &v);
	if (r < 0)
		return r;

	o = mpool_value_get(v);
	if (o->type != MSGPACK_OBJECT_MAP || !as_i64(get(o, "id"), &id) || id <= 0 ||
	    !as_i64(get(o, "pid"), &pid) || pid <= 0 || pid > INT32_MAX) {
		mpool_value_free(v);
		mpc_conn_fail(p, MPOOL_E_PROTO, "mpoold answered spawn without a valid id and pid");
		return -MPOOL_E_PROTO;
	}
	mpool_value_free(v);
	/* mpoold's default name, as PROTOCOL.md gives it. */
	snprintf(dflt, sizeof(dflt), "Process-%llu", (unsigned long long)id);
	proc = proc_new(p, (uint64_t)id);
	if (proc)
		proc->name = strdup(name ? name : dflt);
	if (!proc || !proc->name) {
		free(proc);
		/* Dropping the handle does not stop the process: say which. */
		return mpc_err(p, MPOOL_E_NOMEM, "out of memory after spawning process %lld (pid %lld)",
			       (long long)id, (long long)pid);
	}
	proc->pid = (pid_t)pid;
	link_proc(proc);
	*ret = proc;
	return 0;
}

int mpool_process_attach(mpool *p, uint64_t id, struct mpool_process **ret)
{
	struct mpool_process *proc;
	int r;

	if (!p)
		return -MPOOL_E_INVAL;
	if (!ret)
		return mpc_err(p, MPOOL_E_INVAL, "process_attach: no ret");
	proc = proc_new(p, id);
	if (!proc)
		return mpc_err(p, MPOOL_E_NOMEM, "out of memory making a process handle");
	/* The shortest join: permission checked, the whole map in one answer. */
	r = may_ask(proc);
	if (r == 0)
		r = join_once(proc, 1);
	if (r < 0) {
		proc_free(proc);
		return r;
	}
	link_proc(proc);
	*ret = proc;
	return 0;
}

int mpool_process_join(struct mpool_process *proc, int timeout_ms)
{
	int64_t deadline;
	int r;

	if (!proc)
		return -MPOOL_E_INVAL;
	if (proc->exited)
		return 1;
	r = may_ask(proc);
	if (r < 0)
		return r;
	if (timeout_ms < 0) {
		r = join_once(proc, -1);
		return r < 0 ? r : proc->exited;
	}
	/* 0 asks with mpoold's shortest wait; beyond its longest, join again. */
	deadline = now_ms() + timeout_ms;
	for (;;) {
		int64_t left = deadline - now_ms();

		r = join_once(proc, left < 1 ? 1 : left > JOIN_MAX_MS ? JOIN_MAX_MS : left);
		if (r < 0)
			return r;
		if (proc->exited)
			return 1;
		if (now_ms() >= deadline)
			return 0;
	}
}

int mpool_process_is_alive(struct mpool_process *proc)
{
	const msgpack_object *o;
	mpool_value *v;
	bool alive;
	int r;

	if (!proc)
		return -MPOOL_E_INVAL;
	if (proc->exited)
		return 0;
	r = may_ask(proc);
	if (r == 0)
		r = request(proc->p, "is_alive", &proc->id, -1, &v);
	if (r < 0)
		return r;
	o = mpool_value_get(v);
	if (o->type != MSGPACK_OBJECT_BOOLEAN) {
		mpool_value_free(v);
		mpc_conn_fail(proc->p, MPOOL_E_PROTO, "mpoold answered is_alive with no bool");
		return -MPOOL_E_PROTO;
	}
	alive = o->via.boolean;
	mpool_value_free(v);
	if (alive)
		return 1;
	/* Exited: fetch the outcome now (mpoold answers at once), so that
	 * exitcode and result work as after a join.  A record mpoold dropped
	 * in between leaves them unknown. */
	r = join_once(proc, -1);
	return r < 0 && r != -MPOOL_E_NOTFOUND ? r : 0;
}

static int stop(struct mpool_process *proc, const char *method)
{
	int r;

	if (!proc)
		return -MPOOL_E_INVAL;
	if (proc->exited)
		return 0;
	r = may_ask(proc);
	if (r == 0)
		r = request(proc->p, method, &proc->id, -1, NULL);
	return r;
}

int mpool_process_terminate(struct mpool_process *proc)
{
	return stop(proc, "terminate_process");
}

int mpool_process_kill(struct mpool_process *proc)
{
	return stop(proc, "kill_process");
}

int mpool_process_exitcode(const struct mpool_process *proc, int *ret_code)
{
	if (!proc || !ret_code)
		return -MPOOL_E_INVAL;
	if (!proc->exited) {
		if (proc->p)
			mpc_err(proc->p, MPOOL_E_INVAL, "process %llu is running (as last heard)",
				(unsigned long long)proc->id);
		return -MPOOL_E_INVAL;
	}
	*ret_code = proc->exitcode;
	return 0;
}

int mpool_process_result(const struct mpool_process *proc, const msgpack_object **ret_result)
{
	if (!proc)
		return -MPOOL_E_INVAL;
	if (!proc->exited) {
		if (proc->p)
			mpc_err(proc->p, MPOOL_E_INVAL, "process %llu is running (as last heard)",
				(unsigned long long)proc->id);
		return -MPOOL_E_INVAL;
	}
	if (proc->err) {
		if (proc->p)
			snprintf(proc->p->errmsg, sizeof(proc->p->errmsg), "%s", proc->errmsg);
		return proc->err;
	}
	if (ret_result)
		*ret_result = proc->result;
	return 0;
}

const char *mpool_process_errmsg(const struct mpool_process *proc)
{
	return proc && proc->errmsg ? proc->errmsg : "";
}

pid_t mpool_process_pid(const struct mpool_process *proc)
{
	return proc ? proc->pid : 0;
}

uint64_t mpool_process_id(const struct mpool_process *proc)
{
	return proc ? proc->id : 0;
}

const char *mpool_process_name(const struct mpool_process *proc)
{
	return proc && proc->name ? proc->name : "";
}

void mpool_process_free(struct mpool_process *proc)
{
	if (proc)
		proc_free(proc);
}

int mpool_processes(mpool *p, mpool_value **ret_list)
{
	mpool_value *v;
	int r;

	if (!p)
		return -MPOOL_E_INVAL;
	r = mpc_usable(p);
	if (r == 0)
		r = mpc_can_block(p);
	if (r == 0)
		r = request(p, "processes", NULL, -1, &v);
	if (r < 0)
		return r;
	if (mpool_value_get(v)->type != MSGPACK_OBJECT_ARRAY) {
		mpool_value_free(v);
		mpc_conn_fail(p, MPOOL_E_PROTO, "mpoold's process list is not an array");
		return -MPOOL_E_PROTO;
	}
	if (ret_list)
		*ret_list = v;
	else
		mpool_value_free(v);
	return 0;
}
