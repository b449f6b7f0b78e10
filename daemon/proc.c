#include "proc.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <mpool/error.h>
#include "chan.h"
#include "config.h"
#include "conn.h"
#include "fork.h"
#include "log.h"
#include "master.h"
#include "mem.h"
#include "mp_rpc.h"
#include "status.h"
#include "tailq.h"
#include "worker.h"

/* A join waiting for its process to end. */
struct join {
	struct conn *conn;
	uint64_t msgid;
	struct event *timer;
	struct proc *p;
	TAILQ_ENTRY(join) link;
};

struct proc {
	uint64_t id;
	pid_t pid;                 /* kept once exited, for status; signalled only before */
	char *name;
	char *fn;
	uid_t owner;
	bool admin;                /* its owner was an admin: outside the shares */
	struct conn *conn;         /* the client a daemon process dies with; else NULL */
	bool daemon;
	bool exited;
	bool joined;               /* its outcome went to a join */
	int exitcode;              /* Python's: status, or -signal */
	uint8_t *error;            /* raw error object, when it failed */
	size_t error_len;
	uint8_t *result;           /* raw result, when it returned one */
	size_t result_len;
	uint64_t started_ms, ended_ms;
	struct chan *ch;
	struct event *grace;       /* SIGKILL after SIGTERM */
	TAILQ_HEAD(, join) joins;
	TAILQ_ENTRY(proc) link;
};

static TAILQ_HEAD(, proc) procs = TAILQ_HEAD_INITIALIZER(procs);
static struct event_base *base;
static uint64_t next_id = 1;
static uint64_t limit_hits;        /* spawns refused by a share or --max-processes */
static uint64_t dropped_unjoined;  /* outcomes forgotten before any join */

static void proc_frame(void *ctx, const uint8_t *frame, size_t len);
static void proc_closed(void *ctx, int err);
static void proc_drained(void *ctx)
{
	(void)ctx;
}

static const struct chan_ops proc_ops = {
	.frame = proc_frame,
	.closed = proc_closed,
	.drained = proc_drained,
};

void proc_init(struct event_base *b)
{
	base = b;
}

static void join_free(struct join *j)
{
	TAILQ_REMOVE(&j->p->joins, j, link);
	event_free(j->timer);
	free(j);
}

static void proc_destroy(struct proc *p)
{
	while (!TAILQ_EMPTY(&p->joins))
		join_free(TAILQ_FIRST(&p->joins));
	TAILQ_REMOVE(&procs, p, link);
	chan_free(p->ch);
	if (p->grace)
		event_free(p->grace);
	free(p->name);
	free(p->fn);
	free(p->error);
	free(p->result);
	free(p);
}

void proc_free(void)
{
	while (!TAILQ_EMPTY(&procs))
		proc_destroy(TAILQ_FIRST(&procs));
}

uid_t proc_owner(const struct proc *p) { return p->owner; }
bool proc_alive(const struct proc *p) { return !p->exited; }

struct proc *proc_find(uint64_t id)
{
	struct proc *p;

	TAILQ_FOREACH(p, &procs, link)
		if (p->id == id)
			return p;
	return NULL;
}

unsigned proc_running(bool nondaemon_only)
{
	unsigned n = 0;
	struct proc *p;

	TAILQ_FOREACH(p, &procs, link)
		n += !p->exited && (!nondaemon_only || !p->daemon);
	return n;
}

static size_t proc_bytes(const struct proc *p)
{
	return p->result_len + p->error_len;
}

/* Each user keeps at most --max-kept-processes finished processes, holding
 * at most --max-kept-bytes, and only that user's own processes push one
 * out, so another user's spawns never cost you a result you have not
 * joined yet.  The oldest go first, joined ones before unseen ones. */
static void trim_kept(uid_t owner)
{
	struct proc *p, *victim;
	unsigned kept;
	size_t bytes;

	for (;;) {
		struct proc *old_joined = NULL, *old_unjoined = NULL;

		kept = 0;
		bytes = 0;
		TAILQ_FOREACH(p, &procs, link) {
			if (p->owner != owner || !p->exited)
				continue;
			kept++;
			bytes += proc_bytes(p);
			if (!TAILQ_EMPTY(&p->joins))
				continue;
			if (p->joined && !old_joined)
				old_joined = p;
			if (!p->joined && !old_unjoined)
				old_unjoined = p;
		}
		victim = old_joined ? old_joined : old_unjoined;
		if ((kept <= cfg.max_kept_processes && bytes <= cfg.max_kept_bytes) || !victim)
			return;
		if (!victim->joined) {
			dropped_unjoined++;
			log_warn("process %llu (%s) of uid %u: forgotten before anyone joined it; "
				 "a user keeps at most %u finished processes (--max-kept-processes) "
				 "holding %zu bytes (--max-kept-bytes)",
				 (unsigned long long)victim->id, victim->name, (unsigned)owner,
				 cfg.max_kept_processes, cfg.max_kept_bytes);
		}
		proc_destroy(victim);
	}
}

/* 0 when owner may start one more process now; else -EUSERS with the
 * limit that refuses it in why. */
static int may_spawn(uid_t owner, bool admin, char *why, size_t size)
{
	unsigned running = 0, others = 0, mine = 0;
	/* Users keep at least one slot, whatever --admin-processes says. */
	unsigned shared = cfg.admin_processes < cfg.max_processes ?
			  cfg.max_processes - cfg.admin_processes : 1;
	struct proc *p;

	TAILQ_FOREACH(p, &procs, link) {
		if (p->exited)
			continue;
		running++;
		others += !p->admin;
		mine += p->owner == owner;
	}
	if (running >= cfg.max_processes) {
		snprintf(why, size, "%u processes are running (--max-processes)", running);
	} else if (!admin && others >= shared) {
		snprintf(why, size, "%u processes of users are running; the other %u of "
			 "--max-processes %u are kept for admins (--admin-processes)",
			 others, cfg.max_processes - shared, cfg.max_processes);
	} else if (!admin && mine >= cfg.max_processes_per_uid) {
		snprintf(why, size, "uid %u runs %u processes, its share "
			 "(--max-processes-per-uid)", (unsigned)owner, mine);
	} else {
		return 0;
	}
	limit_hits++;
	return -EUSERS;
}

int proc_spawn(struct conn *conn, uid_t owner, bool admin, const struct proc_spec *spec,
	       char *why, size_t why_size, struct proc **ret)
{
	/* A result larger than its owner may keep is refused as it arrives,
	 * so running processes hold at most --max-processes of these. */
	struct mp_frame_limits lim = {
		.max_frame = (cfg.max_kept_bytes < cfg.max_frame ? cfg.max_kept_bytes :
			      cfg.max_frame) + CONFIG_WORKER_FRAME_SLACK,
		.max_depth = MP_DEPTH_MAX,
	};
	struct worker_once once;
	struct proc *p;
	char *fn;
	pid_t pid;
	int fd, r;

	r = may_spawn(owner, admin, why, why_size);
	if (r < 0)
		return r;
	fn = xstrndup(spec->fn, spec->fn_len);
	once = (struct worker_once){ .fn = fn, .arg = spec->arg, .arg_len = spec->arg_len };
	r = fork_child(worker_once_entry, &once, &pid, &fd);
	if (r < 0) {
		/* EAGAIN is the kernel's limit (RLIMIT_NPROC of mpoold's user,
		 * or the system's pid or thread limit), not one of ours: say so,
		 * or an operator hunts for processes that do not exist. */
		if (r == -EAGAIN)
			snprintf(why, why_size, "cannot fork a process: %s (mpoold's user is at its "
				 "RLIMIT_NPROC, or the system at its process limit); %u supervised "
				 "processes are running", strerror(-r), proc_running(false));
		else
			snprintf(why, why_size, "cannot fork a process: %s", strerror(-r));
		free(fn);
		return r;
	}
	p = xcalloc(1, sizeof(*p));
	TAILQ_INIT(&p->joins);
	p->id = next_id++;
	p->pid = pid;
	p->fn = fn;
	if (spec->name) {
		p->name = xstrndup(spec->name, spec->name_len);
	} else {
		char n[32];

		snprintf(n, sizeof(n), "Process-%llu", (unsigned long long)p->id);
		p->name = xstrndup(n, strlen(n));
	}
	p->owner = owner;
	p->admin = admin;
	p->daemon = spec->daemon;
	p->conn = spec->daemon ? conn : NULL;
	p->started_ms = now_ms();
	p->ch = chan_new(base, fd, &lim, &proc_ops, p);
	TAILQ_INSERT_TAIL(&procs, p, link);
	log_info("process %llu (%s, pid %d) started: %s for uid %u%s", (unsigned long long)p->id,
		 p->name, (int)p->pid, p->fn, (unsigned)owner, p->daemon ? ", daemon" : "");
	*ret = p;
	return 0;
}

static void proc_frame(void *ctx, const uint8_t *frame, size_t len)
{
	struct proc *p = ctx;
	struct mp_msg m;
	uint64_t msgid;
	int ok;

	if (p->result || p->error || mp_msg_parse(frame, len, &m, &ok, &msgid) < 0 ||
	    m.type != MP_RESPONSE) {
		log_err("process %llu (pid %d) sent a malformed message; killing it",
			(unsigned long long)p->id, (int)p->pid);
		kill(p->pid, SIGKILL);
		return;
	}
	if (!(m.error_len == 1 && m.error[0] == 0xc0)) {
		p->error = xmemdup(m.error, m.error_len);
		p->error_len = m.error_len;
	} else {
		p->result = xmemdup(m.body, m.body_len);
		p->result_len = m.body_len;
	}
}

static void proc_closed(void *ctx, int err)
{
	struct proc *p = ctx;

	if (err == -EMSGSIZE && !p->result && !p->error) {
		char msg[160];
		msgpack_sbuffer sb;
		msgpack_packer pk;

		snprintf(msg, sizeof(msg), "its result is larger than the %zu bytes a user may "
			 "keep (--max-kept-bytes)", cfg.max_kept_bytes);
		log_warn("process %llu (%s, pid %d): %s", (unsigned long long)p->id, p->name,
			 (int)p->pid, msg);
		msgpack_sbuffer_init(&sb);
		msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
		mp_pack_error(&pk, MPOOL_E_LIMIT, msg, -1);
		p->error = (uint8_t *)sb.data;    /* the sbuffer's malloc'd bytes */
		p->error_len = sb.size;
	}
	chan_free(p->ch);
	p->ch = NULL;
}

/* A raw msgpack object, or nil. */
static void pack_raw(msgpack_packer *pk, const char *key, const uint8_t *raw, size_t len)
{
	mp_pack_cstr(pk, key);
	if (raw)
		pk->callback(pk->data, (const char *)raw, len);
	else
		msgpack_pack_nil(pk);
}

/* With its result and error when outcome: only join shows those, to the
 * owner or an admin. */
static void proc_pack(msgpack_packer *pk, const struct proc *p, bool outcome)
{
	msgpack_pack_map(pk, outcome ? 11 : 9);
	status_kv(pk, "id", p->id);
	mp_pack_cstr(pk, "name");
	mp_pack_cstr(pk, p->name);
	mp_pack_cstr(pk, "function");
	mp_pack_cstr(pk, p->fn);
	mp_pack_cstr(pk, "pid");
	msgpack_pack_int64(pk, p->pid);
	status_kv(pk, "owner_uid", p->owner);
	mp_pack_cstr(pk, "daemon");
	p->daemon ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
	mp_pack_cstr(pk, "state");
	mp_pack_cstr(pk, p->exited ? "exited" : "running");
	status_kv(pk, "age_ms", (p->exited ? p->ended_ms : now_ms()) - p->started_ms);
	mp_pack_cstr(pk, "exitcode");
	if (p->exited)
		msgpack_pack_int(pk, p->exitcode);
	else
		msgpack_pack_nil(pk);
	if (!outcome)
		return;
	pack_raw(pk, "result", p->result, p->result_len);
	pack_raw(pk, "error", p->error, p->error_len);
}

void proc_pack_all(msgpack_packer *pk)
{
	unsigned n = 0;
	struct proc *p;

	TAILQ_FOREACH(p, &procs, link)
		n++;
	msgpack_pack_array(pk, n);
	TAILQ_FOREACH(p, &procs, link)
		proc_pack(pk, p, false);
}

void proc_pack_spawned(msgpack_packer *pk, const void *arg)
{
	const struct proc *p = arg;

	msgpack_pack_map(pk, 2);
	status_kv(pk, "id", p->id);
	mp_pack_cstr(pk, "pid");
	msgpack_pack_int64(pk, p->pid);
}

static void pack_proc_cb(msgpack_packer *pk, const void *arg)
{
	proc_pack(pk, arg, true);
}

static void join_answer(struct join *j)
{
	j->p->joined |= j->p->exited;
	conn_reply(j->conn, j->msgid, pack_proc_cb, j->p);
	conn_forget_msgid(j->conn, j->msgid);
	join_free(j);
}

static void join_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	join_answer(arg);
}

void proc_join(struct proc *p, struct conn *conn, uint64_t msgid, uint32_t timeout_ms)
{
	struct join *j;

	if (p->exited) {
		p->joined = true;
		conn_reply(conn, msgid, pack_proc_cb, p);
		return;
	}
	j = xcalloc(1, sizeof(*j));
	j->conn = conn;
	j->msgid = msgid;
	j->p = p;
	j->timer = evtimer_new(base, join_timeout_cb, j);
	if (!j->timer) {
		log_err("out of memory arming a join");
		abort();
	}
	if (timeout_ms)
		timer_add_ms(j->timer, timeout_ms);
	TAILQ_INSERT_HEAD(&p->joins, j, link);
	conn_hold_msgid(conn, msgid);
}

static void grace_cb(evutil_socket_t fd, short what, void *arg)
{
	struct proc *p = arg;

	(void)fd;
	(void)what;
	if (!p->exited) {
		log_warn("process %llu (pid %d) outlived SIGTERM by %u ms; killing it",
			 (unsigned long long)p->id, (int)p->pid, cfg.process_grace_ms);
		kill(p->pid, SIGKILL);
	}
}

void proc_stop(struct proc *p, bool hard)
{
	if (p->exited)
		return;
	if (hard) {
		kill(p->pid, SIGKILL);
		return;
	}
	kill(p->pid, SIGTERM);
	if (!p->grace)
		p->grace = evtimer_new(base, grace_cb, p);
	if (p->grace)
		timer_add_ms(p->grace, cfg.process_grace_ms);
}

bool proc_reaped(pid_t pid, int status)
{
	struct proc *p;

	TAILQ_FOREACH(p, &procs, link)
		if (p->pid == pid && !p->exited)
			break;
	if (!p)
		return false;
	/* Its result may still be in the pipe: read it before it is lost. */
	if (p->ch)
		chan_drain_input(p->ch);
	chan_free(p->ch);
	p->ch = NULL;
	if (p->grace)
		evtimer_del(p->grace);
	p->exited = true;
	p->ended_ms = now_ms();
	p->exitcode = WIFSIGNALED(status) ? -WTERMSIG(status) : WEXITSTATUS(status);
	log_info("process %llu (%s, pid %d) exited with exitcode %d", (unsigned long long)p->id,
		 p->name, (int)pid, p->exitcode);
	while (!TAILQ_EMPTY(&p->joins))
		join_answer(TAILQ_FIRST(&p->joins));
	if (p->daemon && !p->conn)
		proc_destroy(p);        /* its client is gone: nobody will ask */
	else
		trim_kept(p->owner);
	master_progress();
	return true;
}

void proc_conn_gone(struct conn *conn)
{
	struct proc *p, *tmp;

	TAILQ_FOREACH_SAFE(p, &procs, link, tmp) {
		struct join *j, *jt;

		TAILQ_FOREACH_SAFE(j, &p->joins, link, jt)
			if (j->conn == conn)
				join_free(j);
		/* Only daemon processes belong to a connection: a non-daemon
		 * one runs on, and its owner joins it from any connection. */
		if (p->conn != conn)
			continue;
		p->conn = NULL;
		if (p->exited) {
			proc_destroy(p);
		} else {
			log_info("daemon process %llu (pid %d): its client left; terminating it",
				 (unsigned long long)p->id, (int)p->pid);
			proc_stop(p, false);
		}
	}
}

void proc_kill_all(void)
{
	struct proc *p;

	TAILQ_FOREACH(p, &procs, link)
		if (!p->exited)
			kill(p->pid, SIGKILL);
}

void proc_pack_limits(msgpack_packer *pk)
{
	unsigned running = 0, kept = 0;
	struct proc *p;

	TAILQ_FOREACH(p, &procs, link) {
		running += !p->exited;
		kept += p->exited;
	}
	msgpack_pack_map(pk, 9);
	status_kv(pk, "max_processes", cfg.max_processes);
	status_kv(pk, "max_processes_per_uid", cfg.max_processes_per_uid);
	status_kv(pk, "admin_processes", cfg.admin_processes);
	status_kv(pk, "max_kept_processes", cfg.max_kept_processes);
	status_kv(pk, "max_kept_bytes", cfg.max_kept_bytes);
	status_kv(pk, "running", running);
	status_kv(pk, "kept", kept);
	status_kv(pk, "limit_hits", limit_hits);
	status_kv(pk, "dropped_unjoined", dropped_unjoined);
}
