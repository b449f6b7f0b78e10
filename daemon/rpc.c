/* rpc: the method table, the dispatch of a parsed message through it, the
 * one msgid check, the admin policy, and the methods too small for a file
 * of their own. */
#include "rpc.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cluster.h"
#include "config.h"
#include "conn.h"
#include "log.h"
#include "master.h"
#include "pool.h"
#include "registry.h"
#include "rpc_int.h"
#include "status.h"

void rpc_printable(char *dst, size_t size, const char *s, size_t len)
{
	size_t i;

	for (i = 0; i < len && i + 1 < size; i++)
		dst[i] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
	dst[i] = '\0';
}

int rpc_why(int ret, char *why, size_t n_why, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, n_why, fmt, ap);
	va_end(ap);
	return ret;
}

static void pack_bool(msgpack_packer *pk, const void *arg)
{
	*(const bool *)arg ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
}

void rpc_reply_bool(struct conn *c, uint64_t msgid, bool v)
{
	conn_reply(c, msgid, pack_bool, &v);
}

bool rpc_room_for_request(struct conn *c, uint64_t msgid)
{
	if (conn_open_requests(c) < cfg.max_jobs_per_conn)
		return true;
	conn_limit_hit(LIM_JOBS);
	conn_reply_error(c, msgid, MPOOL_E_LIMIT, "more than %u open requests on one connection",
			 cfg.max_jobs_per_conn);
	return false;
}

int rpc_may_start(const char *fn, uint32_t fn_len, bool shared, char *why, size_t n_why)
{
	char name[96];
	int r;

	if (master_state() != MASTER_RUNNING)
		return rpc_why(MPOOL_E_SHUTDOWN, why, n_why, "mpoold is shutting down; no new work");
	r = shared ? cluster_check_fn(fn, fn_len) : reg_lookup(fn, fn_len) ? 0 : -ENOENT;
	if (r == 0)
		return 0;
	rpc_printable(name, sizeof(name), fn, fn_len);
	if (r == -EAGAIN)
		return rpc_why(MPOOL_E_UNAVAILABLE, why, n_why, "the cluster's broker is "
			       "unreachable and this node cannot run '%s' itself", name);
	return rpc_why(MPOOL_E_NOFUNC, why, n_why, "no function named '%s'%s", name,
		       shared ? " on any node of the cluster" : "");
}

static void pack_pong(msgpack_packer *pk, const void *arg)
{
	(void)arg;
	mp_pack_cstr(pk, "pong");
}

static void pack_status(msgpack_packer *pk, const void *arg)
{
	(void)arg;
	status_pack(pk);
}

static void run_ping(struct conn *c, uint64_t msgid, const struct rpc_args *a)
{
	(void)a;
	conn_reply(c, msgid, pack_pong, NULL);
}

static void run_status(struct conn *c, uint64_t msgid, const struct rpc_args *a)
{
	(void)a;
	conn_reply(c, msgid, pack_status, NULL);
}

/* terminate, drain and reload: the one body.  The caller's answer goes
 * out before the act, so it comes before what the act sends (terminate
 * fails every open job at once). */
static void lifecycle(struct conn *c, uint64_t msgid, int prio, const char *what,
		      void (*act)(const char *why), const char *why)
{
	rpc_reply_bool(c, msgid, true);
	log_msg(prio, "%s requested by client %llu (pid %d uid %u)", what,
		(unsigned long long)conn_id(c), (int)conn_pid(c), (unsigned)conn_uid(c));
	act(why);
}

static void run_terminate(struct conn *c, uint64_t msgid, const struct rpc_args *a)
{
	(void)a;
	lifecycle(c, msgid, LOG_WARNING, "terminate", master_terminate, "terminated by request");
}

static void run_drain(struct conn *c, uint64_t msgid, const struct rpc_args *a)
{
	(void)a;
	lifecycle(c, msgid, LOG_INFO, "drain", master_drain, "drain request");
}

static void run_reload(struct conn *c, uint64_t msgid, const struct rpc_args *a)
{
	(void)a;
	lifecycle(c, msgid, LOG_INFO, "reload", master_reload, "reload request");
}

/* cancel [job_id]: the job's own client (same uid) or an admin. */
static void run_cancel(struct conn *c, uint64_t msgid, const struct rpc_args *a)
{
	struct job *job = disp_find(a->id);
	char msg[160];

	if (!job) {
		conn_reply_error(c, msgid, MPOOL_E_NOTFOUND, "no open job %llu",
				 (unsigned long long)a->id);
		return;
	}
	if (conn_uid(disp_job_conn(job)) != conn_uid(c) && !conn_is_admin(c)) {
		conn_reply_error(c, msgid, MPOOL_E_PERM,
				 "job %llu belongs to uid %u; only its owner or an admin may cancel it",
				 (unsigned long long)a->id, (unsigned)conn_uid(disp_job_conn(job)));
		return;
	}
	snprintf(msg, sizeof(msg), "job %llu cancelled by uid %u (pid %d)",
		 (unsigned long long)a->id, (unsigned)conn_uid(c), (int)conn_pid(c));
	log_info("%s", msg);
	disp_cancel(job, MPOOL_E_CANCELLED, msg);
	rpc_reply_bool(c, msgid, true);
}

static void run_kill_worker(struct conn *c, uint64_t msgid, const struct rpc_args *a)
{
	char why[128];

	/* pool_kill_worker sends SIGKILL: the error table promises the signal. */
	snprintf(why, sizeof(why), "killed by SIGKILL on request of uid %u (pid %d)",
		 (unsigned)conn_uid(c), (int)conn_pid(c));
	if (a->id > INT32_MAX || pool_kill_worker((pid_t)a->id, why) < 0) {
		conn_reply_error(c, msgid, MPOOL_E_NOTFOUND, "no worker with pid %llu",
				 (unsigned long long)a->id);
		return;
	}
	rpc_reply_bool(c, msgid, true);
}

/* cancel_request [msgid] or [msgid, {"kill": bool}]: a client cancels its
 * own open request; with kill, chunks already running are killed too
 * instead of finishing. */
static int parse_cancel_request(struct mp_cur *p, uint32_t n, struct rpc_args *a, char *why,
				size_t n_why)
{
	uint32_t nopt;
	const char *k;
	uint32_t kl;

	if (mp_read_u64(p, &a->id) < 0)
		return RPC_USAGE;
	if (n == 2 &&
	    (mp_read_map(p, &nopt) < 0 || nopt > 1 ||
	     (nopt == 1 && (mp_read_str(p, &k, &kl) < 0 || !mp_str_eq(k, kl, "kill") ||
			    mp_read_bool(p, &a->kill) < 0))))
		return rpc_why(MPOOL_E_BADREQ, why, n_why,
			       "cancel_request options: only {\"kill\": bool}");
	return 0;
}

static void run_cancel_request(struct conn *c, uint64_t msgid, const struct rpc_args *a)
{
	struct job *job = conn_find_job(c, a->id);

	if (!job || a->id == msgid) {
		conn_reply_error(c, msgid, MPOOL_E_NOTFOUND, "no open request with msgid %llu",
				 (unsigned long long)a->id);
		return;
	}
	if (a->kill)
		disp_kill_running(job);
	disp_cancel(job, MPOOL_E_CANCELLED, "cancelled by its client");
	rpc_reply_bool(c, msgid, true);
}

/* One integer: an id, a pid or a msgid. */
static int parse_id(struct mp_cur *p, uint32_t n, struct rpc_args *a, char *why, size_t n_why)
{
	(void)n;
	(void)why;
	(void)n_why;
	return mp_read_u64(p, &a->id) < 0 ? RPC_USAGE : 0;
}

/* Every method.  Policy is data: the params' count and parser (NULL:
 * nothing past the count), the line a client gets when they do not fit,
 * and whether only admins may call it (others check ownership). */
static const struct rpc_method {
	const char *name;
	uint8_t min_params, max_params;
	rpc_parse_fn *parse;
	rpc_run_fn *run;
	bool admin;
	const char *usage;
} methods[] = {
	{ "apply", 2, 3, rpc_parse_apply, rpc_run_job, false,
	  "apply params must be [function, argument] or [function, argument, options]" },
	{ "map", 2, 3, rpc_parse_map, rpc_run_job, false,
	  "map params must be [function, items] or [function, items, options]" },
	{ "cancel_request", 1, 2, parse_cancel_request, run_cancel_request, false,
	  "cancel_request params must be [msgid] or [msgid, {\"kill\": bool}]" },
	{ "spawn", 2, 3, rpc_parse_spawn, rpc_run_spawn, false,
	  "spawn params must be [function, argument, options]" },
	{ "join", 1, 2, rpc_parse_join, rpc_run_join, false,
	  "join params must be [id] or [id, {\"timeout_ms\": 0 to 86400000}]" },
	{ "is_alive", 1, 1, parse_id, rpc_run_is_alive, false, "is_alive params must be [id]" },
	{ "terminate_process", 1, 1, parse_id, rpc_run_terminate_process, false,
	  "terminate_process params must be [id]" },
	{ "kill_process", 1, 1, parse_id, rpc_run_kill_process, false,
	  "kill_process params must be [id]" },
	{ "processes", 0, 0, NULL, rpc_run_processes, false, "processes takes no params ([])" },
	{ "ping", 0, 0, NULL, run_ping, false, "ping params must be []" },
	{ "status", 0, 0, NULL, run_status, false, "status params must be []" },
	{ "cancel", 1, 1, parse_id, run_cancel, false,
	  "cancel params must be [id] with an integer id" },
	{ "terminate", 0, 0, NULL, run_terminate, true, "terminate params must be []" },
	{ "drain", 0, 0, NULL, run_drain, true, "drain params must be []" },
	{ "reload", 0, 0, NULL, run_reload, true, "reload params must be []" },
	{ "kill_worker", 1, 1, parse_id, run_kill_worker, true,
	  "kill_worker params must be [id] with an integer id" },
};

static const struct rpc_method *find_method(const char *name, uint32_t len)
{
	for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++)
		if (mp_str_eq(name, len, methods[i].name))
			return &methods[i];
	return NULL;
}

/* A msgid names one open request of a connection (a job, or a join):
 * its answers would be ambiguous otherwise. */
static bool msgid_free(struct conn *c, uint64_t msgid)
{
	if (!conn_msgid_in_use(c, msgid))
		return true;
	conn_reply_error(c, msgid, MPOOL_E_BADREQ, "msgid %llu is already in use",
			 (unsigned long long)msgid);
	return false;
}

static bool may_call(struct conn *c, uint64_t msgid, const struct rpc_method *me)
{
	if (!me->admin || conn_is_admin(c))
		return true;
	log_warn("refused %s from client %llu (pid %d uid %u): not an admin", me->name,
		 (unsigned long long)conn_id(c), (int)conn_pid(c), (unsigned)conn_uid(c));
	conn_reply_error(c, msgid, MPOOL_E_PERM,
			 "%s needs root, mpoold's user (uid %u)%s; you are uid %u", me->name,
			 (unsigned)geteuid(), cfg.admin_gid != (gid_t)-1 ? " or its admin group" : "",
			 (unsigned)conn_uid(c));
	return false;
}

/* The order of refusals, which PROTOCOL.md gives: the params (and for a
 * job what it asks for), the msgid, the caller's right to the method;
 * then the method runs its own checks and acts. */
static void dispatch_request(struct conn *c, const struct mp_msg *m)
{
	const struct rpc_method *me = find_method(m->method, m->method_len);
	struct rpc_args args;
	char why[512];
	struct mp_cur p;
	uint32_t n;
	int r;

	if (!me) {
		char name[64];

		/* PROTOCOL.md: a reused msgid is bad_request whatever the method. */
		if (!msgid_free(c, m->msgid))
			return;
		rpc_printable(name, sizeof(name), m->method, m->method_len);
		conn_reply_error(c, m->msgid, MPOOL_E_NOMETHOD, "no method named '%s'", name);
		return;
	}
	memset(&args, 0, sizeof(args));
	mp_cur_init(&p, m->body, m->body_len);
	if (mp_read_array(&p, &n) < 0 || n < me->min_params || n > me->max_params)
		r = RPC_USAGE;
	else
		r = me->parse ? me->parse(&p, n, &args, why, sizeof(why)) : 0;
	if (r == RPC_USAGE) {
		conn_reply_error(c, m->msgid, MPOOL_E_BADREQ, "%s", me->usage);
		return;
	}
	if (r > 0) {
		conn_reply_error(c, m->msgid, r, "%s", why);
		return;
	}
	if (!msgid_free(c, m->msgid) || !may_call(c, m->msgid, me))
		return;
	me->run(c, m->msgid, &args);
}

bool rpc_dispatch(struct conn *c, const struct mp_msg *m)
{
	if (m->type == MP_NOTIFY && mp_str_eq(m->method, m->method_len, "feed")) {
		rpc_feed(c, m);
		return false;
	}
	if (m->type != MP_REQUEST) {
		conn_abort(c, MPOOL_E_BADREQ, "clients may send only requests and feed notifications");
		return false;
	}
	dispatch_request(c, m);
	return true;
}
