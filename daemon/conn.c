#include "conn.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "tailq.h"
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>
#include <grp.h>
#include <pwd.h>

#include "chan.h"
#include "cluster.h"
#include "config.h"
#include "disp.h"
#include "log.h"
#include "master.h"
#include "mem.h"
#include "mp_name.h"
#include "mp_rpc.h"
#include "pool.h"
#include "proc.h"
#include "registry.h"
#include "status.h"

struct conn {
	struct chan *ch;
	uint64_t id;
	pid_t pid;
	uid_t uid;
	gid_t gid;
	struct job **jobs;         /* open apply/map requests */
	unsigned n_jobs, cap_jobs;
	uint64_t *held;            /* msgids of other open requests (joins) */
	unsigned n_held, cap_held;
	/* The client shut its sending side: answer what is open, then close
	 * (conn_fin_cb, from the loop, since the last answer is often sent
	 * from deep inside the dispatcher). */
	bool eof;
	struct event *fin;
	/* Its input buffer and unsent output (chan_account); its jobs' input
	 * is the dispatcher's to count (disp_job_bytes). */
	size_t io_bytes;
	struct event *frame_timer;  /* armed while a message is arriving */
	TAILQ_ENTRY(conn) link;
};

static TAILQ_HEAD(, conn) conns = TAILQ_HEAD_INITIALIZER(conns);
static uint64_t limit_hits[LIM_COUNT];
static const char *const limit_names[LIM_COUNT] = {
	"frame", "depth", "items", "jobs", "clients", "queued_chunks", "backlog",
	"clients_per_uid", "client_bytes", "total_bytes", "frame_timeout",
};

void conn_pack_limits(msgpack_packer *pk)
{
	msgpack_pack_map(pk, LIM_COUNT);
	for (int i = 0; i < LIM_COUNT; i++) {
		mp_pack_cstr(pk, limit_names[i]);
		msgpack_pack_uint64(pk, limit_hits[i]);
	}
}
/* Unread output a client may have while the total budget is spent. */
#define CONN_OUT_SLACK (64u * 1024)

static unsigned n_conns;
static uint64_t next_conn_id = 1;
static struct event *accept_ev, *accept_retry;
/* --max-clients, or fewer when RLIMIT_NOFILE cannot hold that many. */
static unsigned max_clients;
/* Accept fails for want of descriptors: the pause doubles while it lasts. */
static unsigned accept_backoff_ms;

/* At most one line per interval for a warning a client can provoke at
 * will; the lines it held back are counted in the next. */
struct ratelimit {
	uint64_t last_ms;
	unsigned held;
};

static bool ratelimit_ok(struct ratelimit *rl, unsigned interval_ms, unsigned *ret_held)
{
	uint64_t now = now_ms();

	if (rl->last_ms && now - rl->last_ms < interval_ms) {
		rl->held++;
		return false;
	}
	rl->last_ms = now;
	*ret_held = rl->held;
	rl->held = 0;
	return true;
}

static size_t conn_queued_bytes(const struct conn *c)
{
	size_t n = 0;

	for (unsigned i = 0; i < c->n_jobs; i++)
		n += disp_job_bytes(c->jobs[i]);
	return n;
}

uint64_t conn_bytes_held(void)
{
	return (uint64_t)chan_accounted_total() + disp_bytes_held();
}

/* Whether holding add more bytes for c (beside its input buffer, which
 * holds the message under way) keeps within the budgets.  Returns -1, or
 * the limit it would pass with the reason in why. */
static int conn_budget(const struct conn *c, size_t add, char *why, size_t n_why)
{
	size_t in = c->io_bytes - chan_out_len(c->ch);
	size_t mine = c->io_bytes - in + conn_queued_bytes(c);
	uint64_t all = conn_bytes_held() - in;

	if (mine + add > cfg.max_client_bytes) {
		snprintf(why, n_why, "this connection holds %zu bytes in mpoold; %zu more would pass "
			 "the limit of %zu (--max-client-bytes)", mine, add, cfg.max_client_bytes);
		return LIM_CLIENT_BYTES;
	}
	if (all + add > cfg.max_total_bytes) {
		snprintf(why, n_why, "mpoold holds %llu bytes for its clients; %zu more would pass "
			 "the limit of %zu (--max-total-bytes)", (unsigned long long)all, add,
			 cfg.max_total_bytes);
		return LIM_TOTAL_BYTES;
	}
	return -1;
}

void conn_pack_config_limits(msgpack_packer *pk)
{
	static const struct { const char *name; const void *field; size_t size; } l[] = {
		{ "max_frame", &cfg.max_frame, sizeof(cfg.max_frame) },
		{ "max_depth", &cfg.max_depth, sizeof(cfg.max_depth) },
		{ "max_items", &cfg.max_items, sizeof(cfg.max_items) },
		{ "max_jobs", &cfg.max_jobs_per_conn, sizeof(cfg.max_jobs_per_conn) },
		{ "max_clients", &cfg.max_clients, sizeof(cfg.max_clients) },
		{ "max_clients_per_uid", &cfg.max_clients_per_uid, sizeof(cfg.max_clients_per_uid) },
		{ "admin_clients", &cfg.admin_clients, sizeof(cfg.admin_clients) },
		{ "max_queued_chunks", &cfg.max_queued_chunks, sizeof(cfg.max_queued_chunks) },
		{ "stream_window", &cfg.stream_window, sizeof(cfg.stream_window) },
		{ "stream_window_bytes", &cfg.stream_window_bytes, sizeof(cfg.stream_window_bytes) },
		{ "max_client_bytes", &cfg.max_client_bytes, sizeof(cfg.max_client_bytes) },
		{ "max_total_bytes", &cfg.max_total_bytes, sizeof(cfg.max_total_bytes) },
		{ "frame_timeout_ms", &cfg.frame_timeout_ms, sizeof(cfg.frame_timeout_ms) },
	};

	msgpack_pack_map(pk, sizeof(l) / sizeof(l[0]) + 1);
	for (size_t i = 0; i < sizeof(l) / sizeof(l[0]); i++) {
		uint64_t v = 0;

		if (l[i].size == sizeof(uint64_t))
			v = *(const uint64_t *)l[i].field;
		else if (l[i].size == sizeof(uint32_t))
			v = *(const uint32_t *)l[i].field;
		mp_pack_cstr(pk, l[i].name);
		msgpack_pack_uint64(pk, v);
	}
	/* What RLIMIT_NOFILE leaves of max_clients. */
	mp_pack_cstr(pk, "clients_allowed");
	msgpack_pack_uint64(pk, max_clients ? max_clients : cfg.max_clients);
}

static void conn_free(struct conn *c);
static void conn_check_fin(struct conn *c);

static void conn_packer(struct conn *c, msgpack_packer *pk)
{
	chan_packer(c->ch, pk);
}

/* Function names come from clients: keep what we log and echo printable. */
static void printable(char *dst, size_t size, const char *s, size_t len)
{
	size_t i;

	for (i = 0; i < len && i + 1 < size; i++)
		dst[i] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
	dst[i] = '\0';
}

static void reply_error(struct conn *c, uint64_t msgid, int code, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void reply_error(struct conn *c, uint64_t msgid, int code, const char *fmt, ...)
{
	char msg[512];
	msgpack_packer pk;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	conn_packer(c, &pk);
	mp_pack_response_head(&pk, msgid);
	mp_pack_error(&pk, code, msg, -1);
	msgpack_pack_nil(&pk);
	chan_flush(c->ch);
}

/* Answers a client we are about to drop, then drops it: frees c, which
 * the caller must not touch afterwards (the write never frees it: see
 * chan_write_now).  The reason is small; a best-effort write now is all it
 * gets. */
static void conn_abort(struct conn *c, int code, const char *why)
{
	msgpack_packer pk;

	log_info("client %llu (pid %d uid %u): closing: %s", (unsigned long long)c->id,
		 (int)c->pid, (unsigned)c->uid, why);
	conn_packer(c, &pk);
	mp_pack_notify_head(&pk, "error");
	msgpack_pack_array(&pk, 1);
	mp_pack_error(&pk, code, why, -1);
	chan_write_now(c->ch);
	conn_free(c);
}

static bool msgid_held(const struct conn *c, uint64_t msgid)
{
	for (unsigned i = 0; i < c->n_held; i++)
		if (c->held[i] == msgid)
			return true;
	return false;
}

void conn_hold_msgid(struct conn *c, uint64_t msgid)
{
	if (c->n_held == c->cap_held) {
		c->cap_held = c->cap_held ? 2 * c->cap_held : 4;
		c->held = xrealloc(c->held, c->cap_held * sizeof(*c->held));
	}
	c->held[c->n_held++] = msgid;
}

void conn_forget_msgid(struct conn *c, uint64_t msgid)
{
	for (unsigned i = 0; i < c->n_held; i++) {
		if (c->held[i] == msgid) {
			c->held[i] = c->held[--c->n_held];
			break;
		}
	}
	conn_check_fin(c);
}

void conn_reply(struct conn *c, uint64_t msgid, void (*pack)(msgpack_packer *pk, const void *arg),
		const void *arg)
{
	msgpack_packer pk;

	conn_packer(c, &pk);
	mp_pack_response_head(&pk, msgid);
	msgpack_pack_nil(&pk);
	pack(&pk, arg);
	chan_flush(c->ch);
}

static struct job *conn_find_job(struct conn *c, uint64_t msgid)
{
	for (unsigned i = 0; i < c->n_jobs; i++)
		if (disp_job_msgid(c->jobs[i]) == msgid)
			return c->jobs[i];
	return NULL;
}

void conn_job_ended(struct conn *c, struct job *job)
{
	for (unsigned i = 0; i < c->n_jobs; i++) {
		if (c->jobs[i] == job) {
			c->jobs[i] = c->jobs[--c->n_jobs];
			break;
		}
	}
	conn_check_fin(c);
}

static int read_params(struct mp_cur *p, const struct mp_msg *m, uint32_t min, uint32_t max,
		       uint32_t *ret_n)
{
	uint32_t n;

	mp_cur_init(p, m->body, m->body_len);
	if (mp_read_array(p, &n) < 0 || n < min || n > max)
		return -EBADMSG;
	*ret_n = n;
	return 0;
}

/* Reads the apply or map options into spec.  On error writes a reason into why. */
static int read_opts(struct mp_cur *p, struct job_spec *spec, char *why, size_t n_why)
{
	uint32_t n;

	if (mp_read_map(p, &n) < 0) {
		snprintf(why, n_why, "options must be a map");
		return -1;
	}
	while (n--) {
		const char *k;
		uint32_t kl;

		if (mp_read_str(p, &k, &kl) < 0) {
			snprintf(why, n_why, "option names must be strings");
			return -1;
		}
		if (spec->is_map && mp_str_eq(k, kl, "chunksize")) {
			uint64_t v;

			if (mp_read_u64(p, &v) < 0 || v < 1 || v > UINT32_MAX) {
				snprintf(why, n_why, "chunksize must be an integer from 1 to %u",
					 UINT32_MAX);
				return -1;
			}
			spec->chunksize = (uint32_t)v;
		} else if (spec->is_map && mp_str_eq(k, kl, "stream")) {
			if (mp_read_bool(p, &spec->stream) < 0) {
				snprintf(why, n_why, "stream must be true or false");
				return -1;
			}
		} else if (spec->is_map && mp_str_eq(k, kl, "ordered")) {
			if (mp_read_bool(p, &spec->ordered) < 0) {
				snprintf(why, n_why, "ordered must be true or false");
				return -1;
			}
		} else if (mp_str_eq(k, kl, "timeout_ms")) {
			uint64_t v;

			if (mp_read_u64(p, &v) < 0 || v > 24u * 3600 * 1000) {
				snprintf(why, n_why, "timeout_ms must be an integer from 0 to 86400000");
				return -1;
			}
			spec->timeout_ms = (uint32_t)v;
		} else if (mp_str_eq(k, kl, "retries")) {
			uint64_t v;

			if (mp_read_u64(p, &v) < 0 || v > cfg.max_retries) {
				snprintf(why, n_why, "retries must be an integer from 0 to %u (--max-retries)",
					 cfg.max_retries);
				return -1;
			}
			spec->retries = (uint32_t)v;
		} else if (mp_str_eq(k, kl, "spread")) {
			bool v;

			/* cluster: true shares the request, false keeps it here. */
			if (mp_read_bool(p, &v) < 0) {
				snprintf(why, n_why, "spread must be true or false");
				return -1;
			}
			spec->spread = v ? 1 : -1;
		} else {
			char name[64];

			printable(name, sizeof(name), k, kl);
			snprintf(why, n_why, "unknown %s option '%s'",
				 spec->is_map ? "map" : "apply", name);
			return -1;
		}
	}
	return 0;
}

static bool conn_is_admin(const struct conn *c);

static void handle_job(struct conn *c, const struct mp_msg *m, bool is_map)
{
	/* timeout_ms: --task-timeout unless the request gives its own (0: none). */
	struct job_spec spec = { .is_map = is_map, .ordered = true, .msgid = m->msgid,
				 .timeout_ms = cfg.task_timeout_ms };
	const char *what = is_map ? "map" : "apply";
	struct mp_cur p;
	uint32_t n;
	char why[256], name[96];
	struct job *job;
	size_t alen;

	if (read_params(&p, m, 2, 3, &n) < 0 || mp_read_str(&p, &spec.fn, &spec.fn_len) < 0) {
		reply_error(c, m->msgid, MPOOL_E_BADREQ,
			    "%s params must be [function, %s] or [function, %s, options]",
			    what, is_map ? "items" : "argument", is_map ? "items" : "argument");
		return;
	}
	if (is_map) {
		uint32_t count;

		if (mp_read_array(&p, &count) < 0) {
			reply_error(c, m->msgid, MPOOL_E_BADREQ, "map items must be an array");
			return;
		}
		spec.n_items = count;
		if (disp_walk_items(&p, count, &spec.items, &spec.items_len, &spec.marks) < 0) {
			reply_error(c, m->msgid, MPOOL_E_BADREQ, "map items are truncated");
			return;
		}
	} else {
		spec.n_items = 1;
		if (mp_skip(&p, &spec.items, &spec.items_len) < 0) {
			reply_error(c, m->msgid, MPOOL_E_BADREQ, "apply argument is truncated");
			return;
		}
		/* It travels to the worker one level deeper, as a chunk's item. */
		if (mp_scan_one(spec.items, spec.items_len, MP_ITEM_DEPTH_MAX, &alen) != 1) {
			limit_hits[LIM_DEPTH]++;
			reply_error(c, m->msgid, MPOOL_E_LIMIT,
				    "apply argument nested deeper than %d levels", MP_ITEM_DEPTH_MAX);
			return;
		}
	}
	if (n == 3 && read_opts(&p, &spec, why, sizeof(why)) < 0) {
		reply_error(c, m->msgid, MPOOL_E_BADREQ, "%s: %s", what, why);
		return;
	}
	printable(name, sizeof(name), spec.fn, spec.fn_len);
	if (master_state() != MASTER_RUNNING) {
		reply_error(c, m->msgid, MPOOL_E_SHUTDOWN, "mpoold is shutting down; no new work");
		return;
	}
	/* cluster: a shared request may name a function of another node. */
	spec.shared = cluster_share(&spec);
	spec.remote_only = spec.shared && !reg_lookup(spec.fn, spec.fn_len);
	if (spec.shared && cluster_check_fn(spec.fn, spec.fn_len) == -EAGAIN) {
		reply_error(c, m->msgid, MPOOL_E_UNAVAILABLE, "the cluster's broker is unreachable "
			    "and this node cannot run '%s' itself", name);
		return;
	}
	if (spec.shared ? cluster_check_fn(spec.fn, spec.fn_len) < 0
			: !reg_lookup(spec.fn, spec.fn_len)) {
		reply_error(c, m->msgid, MPOOL_E_NOFUNC, "no function named '%s'%s", name,
			    spec.shared ? " on any node of the cluster" : "");
		return;
	}
	if (spec.n_items > (spec.stream ? cfg.stream_window : cfg.max_items)) {
		limit_hits[LIM_ITEMS]++;
		reply_error(c, m->msgid, MPOOL_E_LIMIT, "%s of %llu items exceeds the limit of %llu (%s)",
			    spec.stream ? "a stream's first part" : "map",
			    (unsigned long long)spec.n_items,
			    (unsigned long long)(spec.stream ? cfg.stream_window : cfg.max_items),
			    spec.stream ? "--stream-window" : "--max-items");
		return;
	}
	if (conn_find_job(c, m->msgid) || msgid_held(c, m->msgid)) {
		reply_error(c, m->msgid, MPOOL_E_BADREQ, "msgid %llu is already in use",
			    (unsigned long long)m->msgid);
		return;
	}
	if (c->n_jobs + c->n_held >= cfg.max_jobs_per_conn) {
		limit_hits[LIM_JOBS]++;
		reply_error(c, m->msgid, MPOOL_E_LIMIT, "more than %u open requests on one connection",
			    cfg.max_jobs_per_conn);
		return;
	}
	{
		uint32_t cs = disp_spec_chunksize(&spec);

		spec.admin = conn_is_admin(c);
		if (disp_queue_check(c->uid, spec.admin, (spec.n_items + cs - 1) / cs, why,
				     sizeof(why)) < 0) {
			limit_hits[LIM_QUEUED]++;
			reply_error(c, m->msgid, MPOOL_E_LIMIT, "%s", why);
			return;
		}
	}
	{
		int lim = conn_budget(c, spec.items_len, why, sizeof(why));

		if (lim >= 0) {
			limit_hits[lim]++;
			reply_error(c, m->msgid, MPOOL_E_LIMIT, "%s", why);
			return;
		}
	}
	if (c->n_jobs == c->cap_jobs) {
		c->cap_jobs = c->cap_jobs ? 2 * c->cap_jobs : 8;
		c->jobs = xrealloc(c->jobs, c->cap_jobs * sizeof(*c->jobs));
	}
	/* Large items: the job keeps the read buffer they arrived in rather
	 * than a copy (the frame stays where it is; nothing reads it after). */
	if (spec.items_len >= DISP_ADOPT_MIN)
		spec.buf = chan_take_frame(c->ch, spec.items_len);
	/* NULL: answered at once (an empty map), nothing to track. */
	job = disp_submit(c, &spec);
	if (job)
		c->jobs[c->n_jobs++] = job;
}

static bool in_group(uid_t uid, gid_t primary, gid_t want)
{
	struct passwd pw, *res = NULL;
	char buf[4096];
	gid_t groups[256];
	int n = 256;

	if (primary == want)
		return true;
	if (getpwuid_r(uid, &pw, buf, sizeof(buf), &res) != 0 || !res)
		return false;
	if (getgrouplist(pw.pw_name, pw.pw_gid, groups, &n) < 0)
		return false;
	for (int i = 0; i < n; i++)
		if (groups[i] == want)
			return true;
	return false;
}

/* Admin operations are for root, mpoold's own user, and --admin-group. */
static bool is_admin(uid_t uid, gid_t gid)
{
	return uid == 0 || uid == geteuid() ||
	       (cfg.admin_gid != (gid_t)-1 && in_group(uid, gid, cfg.admin_gid));
}

static bool conn_is_admin(const struct conn *c)
{
	return is_admin(c->uid, c->gid);
}

static void deny(struct conn *c, uint64_t msgid, const char *method)
{
	log_warn("refused %s from client %llu (pid %d uid %u): not an admin", method,
		 (unsigned long long)c->id, (int)c->pid, (unsigned)c->uid);
	reply_error(c, msgid, MPOOL_E_PERM,
		    "%s needs root, mpoold's user (uid %u)%s; you are uid %u", method,
		    (unsigned)geteuid(), cfg.admin_gid != (gid_t)-1 ? " or its admin group" : "",
		    (unsigned)c->uid);
}

static void pack_true(msgpack_packer *pk, const void *arg)
{
	(void)arg;
	msgpack_pack_true(pk);
}

static void reply_true(struct conn *c, uint64_t msgid)
{
	conn_reply(c, msgid, pack_true, NULL);
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

static void m_ping(struct conn *c, const struct mp_msg *m, uint64_t arg)
{
	(void)arg;
	conn_reply(c, m->msgid, pack_pong, NULL);
}

static void m_status(struct conn *c, const struct mp_msg *m, uint64_t arg)
{
	(void)arg;
	conn_reply(c, m->msgid, pack_status, NULL);
}

static void m_terminate(struct conn *c, const struct mp_msg *m, uint64_t arg)
{
	(void)arg;
	reply_true(c, m->msgid);
	log_warn("terminate requested by client %llu (pid %d uid %u)",
		 (unsigned long long)c->id, (int)c->pid, (unsigned)c->uid);
	master_terminate("terminated by request");
}

static void m_drain(struct conn *c, const struct mp_msg *m, uint64_t arg)
{
	(void)arg;
	reply_true(c, m->msgid);
	log_info("drain requested by client %llu (pid %d uid %u)",
		 (unsigned long long)c->id, (int)c->pid, (unsigned)c->uid);
	master_drain("drain request");
}

static void m_reload(struct conn *c, const struct mp_msg *m, uint64_t arg)
{
	(void)arg;
	reply_true(c, m->msgid);
	log_info("reload requested by client %llu (pid %d uid %u)",
		 (unsigned long long)c->id, (int)c->pid, (unsigned)c->uid);
	master_reload("reload request");
}

/* cancel [job_id]: the job's own client (same uid) or an admin. */
static void m_cancel(struct conn *c, const struct mp_msg *m, uint64_t id)
{
	struct job *job = disp_find(id);
	char msg[160];

	if (!job) {
		reply_error(c, m->msgid, MPOOL_E_NOTFOUND, "no open job %llu", (unsigned long long)id);
		return;
	}
	if (conn_uid(disp_job_conn(job)) != c->uid && !conn_is_admin(c)) {
		reply_error(c, m->msgid, MPOOL_E_PERM,
			    "job %llu belongs to uid %u; only its owner or an admin may cancel it",
			    (unsigned long long)id, (unsigned)conn_uid(disp_job_conn(job)));
		return;
	}
	snprintf(msg, sizeof(msg), "job %llu cancelled by uid %u (pid %d)",
		 (unsigned long long)id, (unsigned)c->uid, (int)c->pid);
	log_info("%s", msg);
	disp_cancel(job, MPOOL_E_CANCELLED, msg);
	reply_true(c, m->msgid);
}

static void m_kill_worker(struct conn *c, const struct mp_msg *m, uint64_t pid)
{
	char why[128];

	/* pool_kill_worker sends SIGKILL: the error table promises the signal. */
	snprintf(why, sizeof(why), "killed by SIGKILL on request of uid %u (pid %d)",
		 (unsigned)c->uid, (int)c->pid);
	if (pid > INT32_MAX || pool_kill_worker((pid_t)pid, why) < 0) {
		reply_error(c, m->msgid, MPOOL_E_NOTFOUND, "no worker with pid %llu",
			    (unsigned long long)pid);
		return;
	}
	reply_true(c, m->msgid);
}

/* cancel_request [msgid] or [msgid, {"kill": bool}]: a client cancels its
 * own open request; with kill, chunks already running are killed too
 * instead of finishing. */
static void m_cancel_request(struct conn *c, const struct mp_msg *m)
{
	struct mp_cur p;
	uint32_t n, nopt;
	uint64_t msgid;
	bool kill = false;
	struct job *job;

	mp_cur_init(&p, m->body, m->body_len);
	if (mp_read_array(&p, &n) < 0 || n < 1 || n > 2 || mp_read_u64(&p, &msgid) < 0) {
		reply_error(c, m->msgid, MPOOL_E_BADREQ,
			    "cancel_request params must be [msgid] or [msgid, {\"kill\": bool}]");
		return;
	}
	if (n == 2) {
		const char *k;
		uint32_t kl;

		if (mp_read_map(&p, &nopt) < 0 || nopt > 1 ||
		    (nopt == 1 && (mp_read_str(&p, &k, &kl) < 0 || !mp_str_eq(k, kl, "kill") ||
				   mp_read_bool(&p, &kill) < 0))) {
			reply_error(c, m->msgid, MPOOL_E_BADREQ,
				    "cancel_request options: only {\"kill\": bool}");
			return;
		}
	}
	job = conn_find_job(c, msgid);
	if (!job || msgid == m->msgid) {
		reply_error(c, m->msgid, MPOOL_E_NOTFOUND, "no open request with msgid %llu",
			    (unsigned long long)msgid);
		return;
	}
	if (kill)
		disp_kill_running(job);
	disp_cancel(job, MPOOL_E_CANCELLED, "cancelled by its client");
	reply_true(c, m->msgid);
}

/* The owner of a process, or an admin; else answers permission denied. */
static struct proc *own_process(struct conn *c, uint64_t msgid, uint64_t id)
{
	struct proc *p = proc_find(id);

	if (!p) {
		reply_error(c, msgid, MPOOL_E_NOTFOUND, "no process %llu", (unsigned long long)id);
		return NULL;
	}
	if (proc_owner(p) != c->uid && !conn_is_admin(c)) {
		reply_error(c, msgid, MPOOL_E_PERM,
			    "process %llu belongs to uid %u; only its owner or an admin may use it",
			    (unsigned long long)id, (unsigned)proc_owner(p));
		return NULL;
	}
	return p;
}

static void pack_spawned(msgpack_packer *pk, const void *arg)
{
	const struct proc *p = arg;

	msgpack_pack_map(pk, 2);
	mp_pack_cstr(pk, "id");
	msgpack_pack_uint64(pk, proc_id(p));
	mp_pack_cstr(pk, "pid");
	msgpack_pack_int64(pk, proc_pid(p));
}

/* A spawn that does not say it means protocol 2's "daemon". */
static void reply_old_protocol(struct conn *c, uint64_t msgid, uint64_t proto)
{
	if (proto == 0)
		reply_error(c, msgid, MPOOL_E_BADREQ,
			    "spawn changed meaning in protocol %d: a process started with "
			    "\"daemon\": true now dies with its client's connection, and one "
			    "without runs to completion and keeps its outcome for join (Python's "
			    "meaning, the opposite of protocol 1); say {\"protocol\": %d} in "
			    "spawn's options", MP_PROTO_VERSION, MP_PROTO_VERSION);
	else
		reply_error(c, msgid, MPOOL_E_BADREQ, "this mpoold speaks protocol %d, not %llu",
			    MP_PROTO_VERSION, (unsigned long long)proto);
}

/* spawn [function, argument, {"protocol": 2, "daemon": bool, "name": str}].
 * Protocol 2 gave "daemon" Python's meaning (a daemon process dies with its
 * client, a non-daemon one runs to completion), the opposite of version 1.
 * A client that does not say it speaks version 2 is refused with what
 * changed, rather than getting the opposite of what it asked for. */
static void m_spawn(struct conn *c, const struct mp_msg *m)
{
	struct proc_spec spec = { 0 };
	struct mp_cur p;
	struct proc *pr;
	uint32_t n, nopt;
	uint64_t proto = 0;
	bool bad_opt = false;
	size_t alen;
	char name[96], why[256];
	int r;

	if (read_params(&p, m, 2, 3, &n) < 0 || mp_read_str(&p, &spec.fn, &spec.fn_len) < 0 ||
	    mp_skip(&p, &spec.arg, &spec.arg_len) < 0) {
		reply_error(c, m->msgid, MPOOL_E_BADREQ,
			    "spawn params must be [function, argument, options]");
		return;
	}
	if (n == 3) {
		if (mp_read_map(&p, &nopt) < 0)
			goto badopt;
		/* Every key is read before any is refused: a client of
		 * protocol 1 (no "protocol", maybe a name that is no longer
		 * valid) must hear what changed, whatever order its keys are
		 * in. */
		while (nopt--) {
			const char *k;
			uint32_t kl;

			if (mp_read_str(&p, &k, &kl) < 0)
				goto badopt;
			if (mp_str_eq(k, kl, "protocol")) {
				if (mp_read_u64(&p, &proto) < 0)
					goto badopt;
			} else if (mp_str_eq(k, kl, "daemon")) {
				if (mp_read_bool(&p, &spec.daemon) < 0)
					goto badopt;
			} else if (mp_str_eq(k, kl, "name")) {
				if (mp_read_str(&p, &spec.name, &spec.name_len) < 0)
					goto badopt;
				bad_opt |= mp_name_check(spec.name, spec.name_len) < 0;
			} else {
				if (mp_skip(&p, NULL, NULL) < 0)
					goto badopt;
				bad_opt = true;
			}
		}
	}
	if (proto != MP_PROTO_VERSION) {
		reply_old_protocol(c, m->msgid, proto);
		return;
	}
	if (bad_opt)
		goto badopt;
	printable(name, sizeof(name), spec.fn, spec.fn_len);
	if (master_state() != MASTER_RUNNING) {
		reply_error(c, m->msgid, MPOOL_E_SHUTDOWN, "mpoold is shutting down; no new work");
		return;
	}
	if (!reg_lookup(spec.fn, spec.fn_len)) {
		reply_error(c, m->msgid, MPOOL_E_NOFUNC, "no function named '%s'", name);
		return;
	}
	if (mp_scan_one(spec.arg, spec.arg_len, MP_ITEM_DEPTH_MAX, &alen) != 1) {
		limit_hits[LIM_DEPTH]++;
		reply_error(c, m->msgid, MPOOL_E_LIMIT, "spawn argument nested deeper than %d levels",
			    MP_ITEM_DEPTH_MAX);
		return;
	}
	r = proc_spawn(c, c->uid, conn_is_admin(c), &spec, why, sizeof(why), &pr);
	if (r < 0) {
		reply_error(c, m->msgid, r == -EUSERS || r == -EAGAIN ? MPOOL_E_LIMIT :
			    MPOOL_E_INTERNAL, "%s", why);
		return;
	}
	conn_reply(c, m->msgid, pack_spawned, pr);
	return;
badopt:
	reply_error(c, m->msgid, MPOOL_E_BADREQ,
		    "spawn options: {\"protocol\": %d, \"daemon\": bool, \"name\": 1 to %d "
		    "printable characters}", MP_PROTO_VERSION, MP_NAME_MAX);
}

/* join [id] or [id, {"timeout_ms": n}]: answered when the process ends or
 * the timeout passes; the process keeps running after a timeout. */
static void m_join(struct conn *c, const struct mp_msg *m)
{
	struct mp_cur p;
	uint32_t n, nopt;
	uint64_t id, timeout = 0;
	struct proc *pr;

	if (read_params(&p, m, 1, 2, &n) < 0 || mp_read_u64(&p, &id) < 0)
		goto bad;
	if (n == 2) {
		const char *k;
		uint32_t kl;

		if (mp_read_map(&p, &nopt) < 0 || nopt > 1 ||
		    (nopt == 1 && (mp_read_str(&p, &k, &kl) < 0 || !mp_str_eq(k, kl, "timeout_ms") ||
				   mp_read_u64(&p, &timeout) < 0 || timeout > 24u * 3600 * 1000)))
			goto bad;
	}
	if (c->n_jobs + c->n_held >= cfg.max_jobs_per_conn) {
		limit_hits[LIM_JOBS]++;
		reply_error(c, m->msgid, MPOOL_E_LIMIT, "more than %u open requests on one connection",
			    cfg.max_jobs_per_conn);
		return;
	}
	pr = own_process(c, m->msgid, id);
	if (pr)
		proc_join(pr, c, m->msgid, (uint32_t)timeout);
	return;
bad:
	reply_error(c, m->msgid, MPOOL_E_BADREQ,
		    "join params must be [id] or [id, {\"timeout_ms\": 0 to 86400000}]");
}

static void pack_bool(msgpack_packer *pk, const void *arg)
{
	if (*(const bool *)arg)
		msgpack_pack_true(pk);
	else
		msgpack_pack_false(pk);
}

static void pack_processes(msgpack_packer *pk, const void *arg)
{
	(void)arg;
	proc_pack_all(pk);
}

/* is_alive, terminate_process, kill_process: [id]; processes: []. */
static void m_process_simple(struct conn *c, const struct mp_msg *m, const char *method)
{
	struct mp_cur p;
	uint32_t n;
	uint64_t id;
	struct proc *pr;
	bool alive;

	if (strcmp(method, "processes") == 0) {
		if (read_params(&p, m, 0, 0, &n) < 0)
			reply_error(c, m->msgid, MPOOL_E_BADREQ, "processes takes no params ([])");
		else
			conn_reply(c, m->msgid, pack_processes, NULL);
		return;
	}
	if (read_params(&p, m, 1, 1, &n) < 0 || mp_read_u64(&p, &id) < 0) {
		reply_error(c, m->msgid, MPOOL_E_BADREQ, "%s params must be [id]", method);
		return;
	}
	pr = own_process(c, m->msgid, id);
	if (!pr)
		return;
	if (strcmp(method, "is_alive") == 0) {
		alive = proc_alive(pr);
		conn_reply(c, m->msgid, pack_bool, &alive);
		return;
	}
	proc_stop(pr, strcmp(method, "kill_process") == 0);
	reply_true(c, m->msgid);
}

/* The methods besides apply and map.  Policy is data: who may call each,
 * and whether it takes one integer param. */
static const struct method {
	const char *name;
	void (*run)(struct conn *c, const struct mp_msg *m, uint64_t arg);
	bool admin;
	bool takes_id;
} methods[] = {
	{ "ping", m_ping, false, false },
	{ "status", m_status, false, false },
	{ "cancel", m_cancel, false, true },
	{ "terminate", m_terminate, true, false },
	{ "drain", m_drain, true, false },
	{ "reload", m_reload, true, false },
	{ "kill_worker", m_kill_worker, true, true },
};

static void handle_method(struct conn *c, const struct mp_msg *m, const struct method *me)
{
	struct mp_cur p;
	uint32_t n;
	uint64_t arg = 0;

	if (read_params(&p, m, me->takes_id, me->takes_id, &n) < 0 ||
	    (me->takes_id && mp_read_u64(&p, &arg) < 0)) {
		reply_error(c, m->msgid, MPOOL_E_BADREQ, "%s params must be %s", me->name,
			    me->takes_id ? "[id] with an integer id" : "[]");
		return;
	}
	if (conn_find_job(c, m->msgid) || msgid_held(c, m->msgid)) {
		reply_error(c, m->msgid, MPOOL_E_BADREQ, "msgid %llu is already in use",
			    (unsigned long long)m->msgid);
		return;
	}
	if (me->admin && !conn_is_admin(c)) {
		deny(c, m->msgid, me->name);
		return;
	}
	me->run(c, m, arg);
}

/* [2, "feed", [msgid, items, end]]: the next items of a streamed map.  A
 * feed for a msgid that is no open stream is dropped: the map may have just
 * failed or been cancelled while the client was still sending. */
static void handle_feed(struct conn *c, const struct mp_msg *m)
{
	struct mp_cur p;
	const uint8_t *items;
	const size_t *marks;
	size_t items_len;
	uint64_t msgid;
	uint32_t n, count;
	bool end;
	struct job *job;

	mp_cur_init(&p, m->body, m->body_len);
	if (mp_read_array(&p, &n) < 0 || n != 3 || mp_read_u64(&p, &msgid) < 0 ||
	    mp_read_array(&p, &count) < 0 ||
	    disp_walk_items(&p, count, &items, &items_len, &marks) < 0 ||
	    mp_read_bool(&p, &end) < 0) {
		conn_abort(c, MPOOL_E_BADREQ, "a feed is [2, \"feed\", [msgid, items, end]]");
		return;
	}
	job = conn_find_job(c, msgid);
	if (!job || !disp_job_streaming(job)) {
		log_debug("client %llu: feed for msgid %llu, which is no open stream; dropped",
			  (unsigned long long)c->id, (unsigned long long)msgid);
		return;
	}
	{
		char why[256];
		int lim = conn_budget(c, items_len, why, sizeof(why));

		if (lim >= 0) {
			limit_hits[lim]++;
			disp_cancel(job, MPOOL_E_LIMIT, why);
			return;
		}
	}
	if (disp_feed(job, items, items_len, count, marks, end) == -ENOSPC)
		limit_hits[LIM_QUEUED]++;
}

static void conn_frame(void *ctx, const uint8_t *frame, size_t len)
{
	struct conn *c = ctx;
	struct mp_msg m;
	uint64_t msgid;
	int msgid_ok;
	char name[64];

	/* A whole message: the next one's time starts when it does. */
	event_del(c->frame_timer);
	if (mp_msg_parse(frame, len, &m, &msgid_ok, &msgid) < 0) {
		if (msgid_ok)
			reply_error(c, msgid, MPOOL_E_BADREQ,
				    "a request is [0, msgid, method, params] with a string method and an array of params");
		else
			conn_abort(c, MPOOL_E_BADREQ, "not a MessagePack-RPC request");
		return;
	}
	if (m.type == MP_NOTIFY && mp_str_eq(m.method, m.method_len, "feed")) {
		handle_feed(c, &m);
		return;
	}
	if (m.type != MP_REQUEST) {
		conn_abort(c, MPOOL_E_BADREQ, "clients may send only requests and feed notifications");
		return;
	}
	if (mp_str_eq(m.method, m.method_len, "apply") || mp_str_eq(m.method, m.method_len, "map")) {
		handle_job(c, &m, m.method_len == 3);
	} else if (conn_find_job(c, m.msgid) || msgid_held(c, m.msgid)) {
		reply_error(c, m.msgid, MPOOL_E_BADREQ, "msgid %llu is already in use",
			    (unsigned long long)m.msgid);
	} else if (mp_str_eq(m.method, m.method_len, "cancel_request")) {
		m_cancel_request(c, &m);
	} else if (mp_str_eq(m.method, m.method_len, "spawn")) {
		m_spawn(c, &m);
	} else if (mp_str_eq(m.method, m.method_len, "join")) {
		m_join(c, &m);
	} else if (mp_str_eq(m.method, m.method_len, "is_alive") ||
		   mp_str_eq(m.method, m.method_len, "terminate_process") ||
		   mp_str_eq(m.method, m.method_len, "kill_process") ||
		   mp_str_eq(m.method, m.method_len, "processes")) {
		char method[32];

		printable(method, sizeof(method), m.method, m.method_len);
		m_process_simple(c, &m, method);
	} else {
		const struct method *me = NULL;

		for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++)
			if (mp_str_eq(m.method, m.method_len, methods[i].name))
				me = &methods[i];
		if (me) {
			handle_method(c, &m, me);
		} else {
			printable(name, sizeof(name), m.method, m.method_len);
			reply_error(c, m.msgid, MPOOL_E_NOMETHOD, "no method named '%s'", name);
		}
	}
	/* A client that sends faster than it reads stops being read; while
	 * the clients' bytes pass --max-total-bytes, so does every client
	 * with output it has not read yet. */
	if (conn_backlogged(c)) {
		limit_hits[LIM_BACKLOG]++;
		chan_pause(c->ch, true);
	} else if (chan_out_len(c->ch) > 0 && conn_bytes_held() > cfg.max_total_bytes) {
		limit_hits[LIM_TOTAL_BYTES]++;
		chan_pause(c->ch, true);
	}
}

/* Bytes arrived: a message under way must finish in time, and must not
 * take the clients' bytes past --max-total-bytes by more than one message
 * (that slack lets a request that arrives when the budget is nearly spent
 * be refused with an error instead of its connection dropped).  Its size
 * alone is bounded by --max-frame, which is at most --max-client-bytes. */
static void conn_received(void *ctx)
{
	struct conn *c = ctx;
	char why[256];

	if (chan_in_partial(c->ch) == 0) {
		event_del(c->frame_timer);
		return;
	}
	if (cfg.frame_timeout_ms && !evtimer_pending(c->frame_timer, NULL)) {
		struct timeval tv = { cfg.frame_timeout_ms / 1000, (cfg.frame_timeout_ms % 1000) * 1000 };

		evtimer_add(c->frame_timer, &tv);
	}
	if (conn_bytes_held() <= (uint64_t)cfg.max_total_bytes + cfg.max_frame)
		return;
	snprintf(why, sizeof(why), "mpoold holds %llu bytes for its clients, past the limit of "
		 "%zu (--max-total-bytes), and this message would add more",
		 (unsigned long long)conn_bytes_held(), cfg.max_total_bytes);
	limit_hits[LIM_TOTAL_BYTES]++;
	conn_abort(c, MPOOL_E_LIMIT, why);
}

static void conn_frame_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;
	char why[160];

	(void)fd;
	(void)what;
	limit_hits[LIM_FRAME_TIMEOUT]++;
	snprintf(why, sizeof(why), "a message started %u ms ago and is not whole (--frame-timeout)",
		 cfg.frame_timeout_ms);
	conn_abort(c, MPOOL_E_LIMIT, why);
}

static void conn_closed(void *ctx, int err)
{
	struct conn *c = ctx;

	if (err == -EBADMSG || err == -ELOOP || err == -EMSGSIZE) {
		const char *why = err == -EBADMSG ? "the stream is not MessagePack"
				  : err == -ELOOP ? "message nested too deep"
				  : "message larger than the frame limit";
		if (err == -ELOOP)
			limit_hits[LIM_DEPTH]++;
		else if (err == -EMSGSIZE)
			limit_hits[LIM_FRAME]++;
		conn_abort(c, err == -EBADMSG ? MPOOL_E_BADREQ : MPOOL_E_LIMIT, why);
		return;
	}
	if (c->n_jobs)
		log_info("client %llu (pid %d) left with %u open request(s)",
			 (unsigned long long)c->id, (int)c->pid, c->n_jobs);
	conn_free(c);
}

static void conn_drained(void *ctx)
{
	struct conn *c = ctx;

	chan_pause(c->ch, false);
	conn_check_fin(c);
	disp_schedule();
	master_progress();
}

/* Read end-of-file from a client that still reads: it has no more
 * requests.  What is open is answered, then the connection closes.  A
 * streamed map can get no more feeds, so it fails now. */
static void conn_eof(void *ctx)
{
	struct conn *c = ctx;

	if (!c->eof) {
		c->eof = true;
		log_debug("client %llu (pid %d): end of requests; %u open", (unsigned long long)c->id,
			  (int)c->pid, c->n_jobs + c->n_held);
		for (unsigned i = c->n_jobs; i-- > 0;) {
			if (i < c->n_jobs && disp_job_streaming(c->jobs[i]))
				disp_cancel(c->jobs[i], MPOOL_E_BADREQ,
					    "the client ended its input before the stream's last feed");
		}
	}
	conn_check_fin(c);
}

static void conn_check_fin(struct conn *c)
{
	if (c->eof && c->n_jobs == 0 && c->n_held == 0)
		event_active(c->fin, EV_TIMEOUT, 0);
}

static void conn_fin_cb(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;

	(void)fd;
	(void)what;
	/* Output still waiting: conn_drained() comes back here once it is
	 * sent. */
	if (c->eof && c->n_jobs == 0 && c->n_held == 0 && chan_out_len(c->ch) == 0)
		conn_free(c);
}

static const struct chan_ops conn_ops = {
	.frame = conn_frame,
	.closed = conn_closed,
	.drained = conn_drained,
	.eof = conn_eof,
	.received = conn_received,
};

static void conn_free(struct conn *c)
{
	proc_conn_gone(c);
	free(c->held);
	/* Detaching may free jobs; walk a snapshot from the end. */
	while (c->n_jobs > 0)
		disp_detach(c->jobs[--c->n_jobs]);
	free(c->jobs);
	event_free(c->fin);
	event_free(c->frame_timer);
	chan_free(c->ch);
	TAILQ_REMOVE(&conns, c, link);
	n_conns--;
	free(c);
	master_progress();
}

pid_t conn_pid(const struct conn *c)
{
	return c->pid;
}

uid_t conn_uid(const struct conn *c)
{
	return c->uid;
}

/* Past the high-water mark; or, while the clients' bytes pass
 * --max-total-bytes, past a little: the dispatcher then stops feeding the
 * client's jobs, so unread output cannot take the total much further. */
bool conn_backlogged(const struct conn *c)
{
	size_t out = chan_out_len(c->ch);

	return out > cfg.out_high_water ||
	       (out > CONN_OUT_SLACK && conn_bytes_held() > cfg.max_total_bytes);
}

static void free_sent(const void *data, size_t len, void *arg)
{
	(void)data;
	(void)len;
	free(arg);
}

void conn_send_chunk(struct conn *c, uint64_t msgid, uint64_t first,
		     const uint8_t *results, size_t rlen, const uint8_t *errors, size_t elen,
		     uint8_t *owned)
{
	msgpack_packer pk;
	struct evbuffer *out = chan_out(c->ch);

	conn_packer(c, &pk);
	mp_pack_notify_head(&pk, "result");
	msgpack_pack_array(&pk, 4);
	msgpack_pack_uint64(&pk, msgid);
	msgpack_pack_uint64(&pk, first);
	/* The reference frees owned once the bytes are sent: after a write,
	 * never before the errors (in owned too) are copied below. */
	if (owned && evbuffer_add_reference(out, results, rlen, free_sent, owned) == 0)
		owned = NULL;
	else
		evbuffer_add(out, results, rlen);
	evbuffer_add(out, errors, elen);
	free(owned);         /* NULL unless the reference failed */
	chan_flush(c->ch);
}

void conn_send_credit(struct conn *c, uint64_t msgid, uint64_t n)
{
	msgpack_packer pk;

	conn_packer(c, &pk);
	mp_pack_notify_head(&pk, "credit");
	msgpack_pack_array(&pk, 2);
	msgpack_pack_uint64(&pk, msgid);
	msgpack_pack_uint64(&pk, n);
	chan_flush(c->ch);
}

void conn_map_done(struct conn *c, uint64_t msgid, uint64_t items, uint64_t failed)
{
	msgpack_packer pk;

	conn_packer(c, &pk);
	mp_pack_response_head(&pk, msgid);
	msgpack_pack_nil(&pk);
	msgpack_pack_map(&pk, 2);
	mp_pack_cstr(&pk, "items");
	msgpack_pack_uint64(&pk, items);
	mp_pack_cstr(&pk, "failed");
	msgpack_pack_uint64(&pk, failed);
	chan_flush(c->ch);
}

void conn_apply_done(struct conn *c, uint64_t msgid, const uint8_t *results, size_t rlen,
		     const uint8_t *errors, size_t elen, uint32_t n_errors)
{
	struct mp_cur cur;
	uint32_t n;

	if (n_errors > 0) {
		int code;
		const char *msg;
		uint32_t msg_len;
		int64_t index;

		mp_cur_init(&cur, errors, elen);
		if (mp_read_array(&cur, &n) < 0 ||
		    mp_read_error(&cur, &code, &msg, &msg_len, &index) < 0) {
			reply_error(c, msgid, MPOOL_E_INTERNAL, "unreadable error from the worker");
			return;
		}
		reply_error(c, msgid, code, "%.*s", (int)msg_len, msg);
		return;
	}
	mp_cur_init(&cur, results, rlen);
	if (mp_read_array(&cur, &n) < 0 || n != 1) {
		reply_error(c, msgid, MPOOL_E_INTERNAL, "unreadable result from the worker");
		return;
	}
	msgpack_packer pk;
	conn_packer(c, &pk);
	mp_pack_response_head(&pk, msgid);
	msgpack_pack_nil(&pk);
	evbuffer_add(chan_out(c->ch), cur.p, (size_t)(cur.end - cur.p));
	chan_flush(c->ch);
}

void conn_job_failed(struct conn *c, uint64_t msgid, int code, const char *msg)
{
	reply_error(c, msgid, code, "%s", msg);
}

/* Tells a client we will not serve why, in one best-effort write. */
static void refuse(int fd, int code, const char *why)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;

	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	if (mp_pack_notify_head(&pk, "error") == 0 && msgpack_pack_array(&pk, 1) == 0 &&
	    mp_pack_error(&pk, code, why, -1) == 0 &&
	    send(fd, sb.data, sb.size, MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
		log_debug("could not tell a refused client why: %s", strerror(errno));
	msgpack_sbuffer_destroy(&sb);
}

static unsigned uid_clients(uid_t uid)
{
	const struct conn *c;
	unsigned n = 0;

	TAILQ_FOREACH(c, &conns, link)
		n += c->uid == uid;
	return n;
}

/* Whether a new client may have a slot: the last --admin-clients slots are
 * for admins, and a user who is not one has at most --max-clients-per-uid.
 * Returns -1, or the limit with the reason in why. */
static int admit(const struct ucred *cred, char *why, size_t n_why)
{
	/* One slot at least stays open to everyone. */
	unsigned reserve = cfg.admin_clients < max_clients ? cfg.admin_clients : max_clients - 1;

	if (n_conns >= max_clients) {
		snprintf(why, n_why, "%u clients connected (--max-clients)", n_conns);
		return LIM_CLIENTS;
	}
	if (n_conns + reserve < max_clients &&
	    uid_clients(cred->uid) < cfg.max_clients_per_uid)
		return -1;      /* the common case: no group lookup */
	if (is_admin(cred->uid, cred->gid))
		return -1;
	if (n_conns + reserve >= max_clients) {
		snprintf(why, n_why, "%u clients connected; the last %u of %u slots are for admins "
			 "(--admin-clients)", n_conns, reserve, max_clients);
		return LIM_CLIENTS;
	}
	snprintf(why, n_why, "uid %u has %u connections (--max-clients-per-uid)",
		 (unsigned)cred->uid, cfg.max_clients_per_uid);
	return LIM_CLIENTS_PER_UID;
}

static void accept_cb(evutil_socket_t fd, short what, void *arg)
{
	struct mp_frame_limits lim = { .max_frame = cfg.max_frame, .max_depth = cfg.max_depth };
	struct event_base *base = arg;
	static struct ratelimit refusals, out_of_fds;
	unsigned held;

	(void)what;
	/* Bounded, so a connect storm cannot starve the clients already in. */
	for (int i = 0; i < 64; i++) {
		struct ucred cred = { 0 };
		socklen_t cl = sizeof(cred);
		struct conn *c;
		char why[160];
		int cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC), l;

		if (cfd < 0) {
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
				/* Out of descriptors: retrying at once would spin.
				 * Pause accepting, longer while it lasts; clients
				 * already in keep working. */
				struct timeval tv;

				accept_backoff_ms = accept_backoff_ms ? accept_backoff_ms * 2 : 100;
				if (accept_backoff_ms > 5000)
					accept_backoff_ms = 5000;
				tv.tv_sec = accept_backoff_ms / 1000;
				tv.tv_usec = (accept_backoff_ms % 1000) * 1000;
				if (ratelimit_ok(&out_of_fds, 60000, &held))
					log_warn("accept: %s; pausing new connections for %u ms "
						 "(%u more like this in the last minute not logged)",
						 strerror(errno), accept_backoff_ms, held);
				event_del(accept_ev);
				evtimer_add(accept_retry, &tv);
			}
			return;
		}
		accept_backoff_ms = 0;
		if (getsockopt(cfd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0) {
			/* Unknown: neither root nor anyone's share. */
			cred.uid = (uid_t)-1;
			cred.gid = (gid_t)-1;
		}
		l = admit(&cred, why, sizeof(why));
		if (l >= 0) {
			limit_hits[l]++;
			if (ratelimit_ok(&refusals, 1000, &held))
				log_warn("refusing client pid %d uid %u: %s (%u more refused in the "
					 "last second not logged)", (int)cred.pid, (unsigned)cred.uid,
					 why, held);
			refuse(cfd, MPOOL_E_LIMIT, why);
			close(cfd);
			continue;
		}
		c = xcalloc(1, sizeof(*c));
		c->id = next_conn_id++;
		c->pid = cred.pid;
		c->uid = cred.uid;
		c->gid = cred.gid;
		c->fin = evtimer_new(base, conn_fin_cb, c);
		c->frame_timer = evtimer_new(base, conn_frame_timeout, c);
		if (!c->fin || !c->frame_timer) {
			log_err("out of memory accepting a client");
			abort();
		}
		c->ch = chan_new(base, cfd, &lim, &conn_ops, c);
		chan_account(c->ch, &c->io_bytes);
		TAILQ_INSERT_TAIL(&conns, c, link);
		n_conns++;
		log_debug("client %llu connected (pid %d uid %u)", (unsigned long long)c->id,
			  (int)c->pid, (unsigned)c->uid);
	}
}

static void accept_retry_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	if (master_state() == MASTER_RUNNING)
		event_add(accept_ev, NULL);
}

/* Every client takes a descriptor: when RLIMIT_NOFILE cannot hold
 * --max-clients beside what workers and processes need, raise it as far
 * as the hard limit allows, else serve fewer clients, so that accept()
 * never runs out before the admins' slots do. */
static void fit_descriptors(void)
{
	uint64_t need_other = 32 + 2ull * cfg.workers + 2ull * cfg.max_processes;
	uint64_t need = need_other + cfg.max_clients;
	struct rlimit rl;

	max_clients = cfg.max_clients;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= need)
		return;
	if (rl.rlim_max == RLIM_INFINITY || rl.rlim_max > rl.rlim_cur) {
		rlim_t old = rl.rlim_cur;

		rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > need ? need : rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
			rl.rlim_cur = old;
	}
	if (rl.rlim_cur >= need)
		return;
	max_clients = rl.rlim_cur > need_other + 1 ? (unsigned)(rl.rlim_cur - need_other) : 1;
	log_warn("RLIMIT_NOFILE is %llu: serving at most %u clients, not %u (--max-clients)",
		 (unsigned long long)rl.rlim_cur, max_clients, cfg.max_clients);
}

int conn_listen(struct event_base *base, int listen_fd)
{
	fit_descriptors();
	accept_ev = event_new(base, listen_fd, EV_READ | EV_PERSIST, accept_cb, base);
	accept_retry = evtimer_new(base, accept_retry_cb, NULL);
	if (!accept_ev || !accept_retry)
		return -ENOMEM;
	return event_add(accept_ev, NULL) < 0 ? -EIO : 0;
}

void conn_stop_listening(void)
{
	if (accept_ev) {
		event_free(accept_ev);
		accept_ev = NULL;
	}
	if (accept_retry) {
		event_free(accept_retry);
		accept_retry = NULL;
	}
}

unsigned conn_count(void)
{
	return n_conns;
}

bool conn_all_flushed(void)
{
	struct conn *c;

	TAILQ_FOREACH(c, &conns, link)
		if (chan_out_len(c->ch) > 0)
			return false;
	return true;
}

void conn_write_all_now(void)
{
	struct conn *c, *tmp;

	TAILQ_FOREACH_SAFE(c, &conns, link, tmp)
		chan_write_now(c->ch);
}

void conn_close_all(void)
{
	while (!TAILQ_EMPTY(&conns))
		conn_free(TAILQ_FIRST(&conns));
}
