/* pool: the worker table, and each worker's life: forked, respawned with
 * backoff, retired, given up on, reaped. */
#include "pool.h"
#include "pool_int.h"

#include <errno.h>
#include <stdarg.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <mpool/error.h>
#include "chan.h"
#include "config.h"
#include "fork.h"
#include "forksrv.h"
#include "proc.h"
#include "log.h"
#include "master.h"
#include "mem.h"
#include "mp_rpc.h"
#include "status.h"
#include "wmsg.h"
#include "worker.h"

static const char *const wstate_names[] = { "empty", "forking", "starting", "idle", "busy",
					    "exiting" };
static const char *const retire_names[] = { "none", "tasks", "rss", "lifetime", "reload", "drain" };

struct slot *pool_slots;
unsigned pool_n_slots;
struct worker *pool_workers;
unsigned pool_n_workers;
unsigned pool_gen;
static struct event_base *base;
static uint64_t n_started, n_died, n_killed, n_timed_out;
static uint64_t n_recycled[R_COUNT];
static char last_failure[256];

void pool_set_failure(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(last_failure, sizeof(last_failure), fmt, ap);
	va_end(ap);
}

static bool want_workers(void)
{
	return master_state() == MASTER_RUNNING ||
	       (master_state() == MASTER_DRAINING && disp_active() > 0);
}

static void schedule_respawn(struct slot *s);
static void exited(pid_t pid, int status);

/* The forked process becomes the entry's worker, whatever happened to
 * the pool while the fork server worked. */
static void install(struct worker *w, pid_t pid, int fd)
{
	struct mp_frame_limits lim = {
		.max_frame = cfg.max_frame + CONFIG_WORKER_FRAME_SLACK,
		.max_depth = MP_DEPTH_MAX,
	};

	w->pid = pid;
	w->state = W_STARTING;
	w->tasks_done = 0;
	w->retire = R_NONE;
	w->reaped = false;
	w->eof = false;
	w->killed = false;
	w->fail_code = 0;
	w->cause[0] = '\0';
	w->started_ms = now_ms();
	w->ch = chan_new(base, fd, &lim, &run_chan_ops, w);
	n_started++;
	if (master_state() == MASTER_TERMINATING) {
		w->retire = R_DRAIN;
		kill(pid, SIGKILL);
	} else if (!want_workers()) {
		pool_retire(w, R_DRAIN);
	}
}

/* The fork server's answer (forksrv.h), or its refusal of the request:
 * without a fork server the master forks the worker itself. */
static void forked(void *token, int err, pid_t pid, int fd)
{
	struct worker *w = token;
	struct slot *s = &pool_slots[w->slot];

	if (err == -ENOTCONN)
		err = fork_child(worker_entry, &w->quota, &pid, &fd);
	if (err == 0) {
		install(w, pid, fd);
		return;
	}
	w->state = W_EMPTY;
	if (s->cur == w)
		s->cur = NULL;
	if (err != -ECANCELED) {
		s->early_deaths++;
		pool_set_failure("cannot start a worker: fork: %s", strerror(-err));
		log_err("slot %u: %s", w->slot, last_failure);
	}
	if (want_workers() && !s->cur && !evtimer_pending(s->respawn, NULL))
		schedule_respawn(s);
	master_progress();
}

/* Forks one worker into an empty slot, through the fork server or, when
 * there is none, from the master; a failure schedules the next try. */
static void spawn(struct worker *w, unsigned slot)
{
	int r;

	w->slot = slot;
	w->quota = recycle_draw_quota();
	w->gen = pool_gen;
	w->state = W_FORKING;
	pool_slots[slot].cur = w;
	r = forksrv_request(w->quota, w);
	if (r < 0)
		forked(w, r, 0, -1);
}

static struct worker *free_entry(void)
{
	for (unsigned i = 0; i < pool_n_workers; i++)
		if (!pool_workers[i].pid && pool_workers[i].state == W_EMPTY)
			return &pool_workers[i];
	return NULL;
}

static void respawn_cb(evutil_socket_t fd, short what, void *arg)
{
	struct slot *s = arg;
	struct worker *w;

	(void)fd;
	(void)what;
	if (s->cur || !want_workers())
		return;
	/* None free: every entry holds a live or unreaped process; the next
	 * reap calls us again (respawn_waiting). */
	w = free_entry();
	if (!w)
		return;
	spawn(w, (unsigned)(s - pool_slots));
}

/* Respawn at once after a normal exit; after failures before readiness,
 * wait 50 ms doubling to 10 s, so a broken module or a fork limit cannot
 * cause a fork storm. */
static void schedule_respawn(struct slot *s)
{
	uint64_t ms = 0;

	if (s->early_deaths > 0) {
		unsigned shift = s->early_deaths > 9 ? 9 : s->early_deaths - 1;

		ms = 50ull << shift;
		if (ms > 10000)
			ms = 10000;
		log_warn("slot %u: %u failed start(s) in a row; next try in %llu ms",
			 (unsigned)(s - pool_slots), s->early_deaths, (unsigned long long)ms);
	}
	timer_add_ms(s->respawn, ms);
}

/* Every slot without a process, and no try pending, tries again: after a
 * reap frees an entry, or when a worker starts retiring. */
static void respawn_waiting(void)
{
	if (!want_workers())
		return;
	for (unsigned i = 0; i < pool_n_slots; i++)
		if (!pool_slots[i].cur && !evtimer_pending(pool_slots[i].respawn, NULL))
			schedule_respawn(&pool_slots[i]);
}

void pool_leave_slot(struct worker *w)
{
	if (pool_slots[w->slot].cur != w)
		return;
	pool_slots[w->slot].cur = NULL;
	respawn_waiting();
}

unsigned pool_ready_workers(void)
{
	unsigned n = 0;

	for (unsigned i = 0; i < pool_n_workers; i++)
		n += pool_workers[i].state == W_IDLE || pool_workers[i].state == W_BUSY;
	return n;
}

void pool_retire(struct worker *w, enum retire why)
{
	w->retire = why;
	w->state = W_EXITING;
	evtimer_del(w->deadline);
	chan_free(w->ch);
	w->ch = NULL;
	pool_leave_slot(w);
	log_debug("worker %d: retiring (%s) after %llu tasks", (int)w->pid, retire_names[why],
		  (unsigned long long)w->tasks_done);
}

void pool_fault(struct worker *w, int code, const char *cause)
{
	if (!w->cause[0]) {
		snprintf(w->cause, sizeof(w->cause), "%s", cause);
		w->fail_code = code;
	}
	log_debug("worker %d %s; killing it", (int)w->pid, cause);
	kill(w->pid, SIGKILL);
	w->killed = true;
	/* Its chunk fails once its death is known: bounded even if the
	 * fork server that should report it is stuck. */
	timer_add_ms(w->deadline, FORKSRV_REPORT_MS);
	chan_free(w->ch);
	w->ch = NULL;
	if (w->state != W_BUSY)
		w->state = W_EXITING;
}

int pool_init(struct event_base *b)
{
	int r;

	base = b;
	pool_n_slots = cfg.workers;
	pool_n_workers = 2 * pool_n_slots;
	pool_slots = xcalloc(pool_n_slots, sizeof(*pool_slots));
	pool_workers = xcalloc(pool_n_workers, sizeof(*pool_workers));
	r = recycle_init(base);
	if (r < 0)
		return r;
	for (unsigned i = 0; i < pool_n_slots; i++) {
		pool_slots[i].respawn = evtimer_new(base, respawn_cb, &pool_slots[i]);
		if (!pool_slots[i].respawn)
			return -ENOMEM;
	}
	for (unsigned i = 0; i < pool_n_workers; i++) {
		pool_workers[i].deadline = evtimer_new(base, run_deadline_cb, &pool_workers[i]);
		if (!pool_workers[i].deadline)
			return -ENOMEM;
	}
	r = forksrv_init(base, forked, exited, recycle_forksrv_started, pool_n_workers);
	if (r < 0) {
		log_err("cannot set up the fork server: %s", strerror(-r));
		return r;
	}
	/* Failing, workers fork from the master.  The forks below wait while
	 * it loads the modules. */
	forksrv_start();
	/* A fork that fails at start: mpoold starts degraded and retries. */
	for (unsigned i = 0; i < pool_n_slots; i++)
		respawn_cb(-1, 0, &pool_slots[i]);
	return 0;
}

void pool_free(void)
{
	forksrv_free();
	for (unsigned i = 0; i < pool_n_slots; i++)
		if (pool_slots[i].respawn)
			event_free(pool_slots[i].respawn);
	for (unsigned i = 0; i < pool_n_workers; i++) {
		chan_free(pool_workers[i].ch);
		if (pool_workers[i].deadline)
			event_free(pool_workers[i].deadline);
	}
	recycle_free();
	free(pool_slots);
	free(pool_workers);
	pool_slots = NULL;
	pool_workers = NULL;
	pool_n_slots = pool_n_workers = 0;
}

/* A worker's end in words.  Exit status WORKER_EXIT_INIT means a failed
 * module init only for a worker that never became ready: a task may call
 * exit() with any status. */
static void describe_exit(int status, bool starting, char *buf, size_t n)
{
	if (WIFSIGNALED(status)) {
		const char *name = sigabbrev_np(WTERMSIG(status));

		if (name)
			snprintf(buf, n, "killed by SIG%s%s", name,
				 WCOREDUMP(status) ? " (core dumped)" : "");
		else
			snprintf(buf, n, "killed by signal %d", WTERMSIG(status));
	} else if (starting && WEXITSTATUS(status) == WORKER_EXIT_INIT) {
		snprintf(buf, n, "exited with status %d (a module's init failed)", WEXITSTATUS(status));
	} else {
		snprintf(buf, n, "exited with status %d", WEXITSTATUS(status));
	}
}

static void worker_gone(struct worker *w, int status)
{
	char how[96], msg[300];
	bool clean = WIFEXITED(status) && WEXITSTATUS(status) == WORKER_EXIT_OK;
	bool terminating = master_state() == MASTER_TERMINATING;
	pid_t pid = w->pid;
	enum wstate st;
	struct chunk ck = { 0 };
	int code = 0;
	bool lost = false;

	/* It may have written results and exited before we read them: take
	 * them first, so nothing it finished is reported lost; marked reaped,
	 * it gets no new work from such a result. */
	w->reaped = true;
	if (w->ch)
		chan_drain_input(w->ch);
	chan_free(w->ch);
	w->ch = NULL;
	evtimer_del(w->deadline);
	st = w->state;
	w->pid = 0;
	w->state = W_EMPTY;

	/* Words for a death that is reported, not for every recycle. */
	if (st == W_BUSY || !clean || w->retire == R_NONE) {
		describe_exit(status, st == W_STARTING, how, sizeof(how));
		snprintf(msg, sizeof(msg), "worker %d %s", (int)pid, w->cause[0] ? w->cause : how);
	}
	if (st == W_BUSY) {
		ck = w->chunk;
		code = w->fail_code ? w->fail_code : MPOOL_E_WORKER;
		lost = true;
		w->chunk.job = NULL;
		if (!terminating && code == MPOOL_E_CANCELLED) {
			/* Killed on purpose (a cancel with kill, a client that
			 * left): not a failure of the worker or its module. */
			n_killed++;
			log_info("%s (job %llu)", msg, (unsigned long long)disp_job_id(ck.job));
		} else if (!terminating) {
			if (code == MPOOL_E_TIMEOUT)
				n_timed_out++;
			else if (w->retire == R_RSS)
				n_recycled[R_RSS]++;
			else
				n_died++;
			pool_set_failure("%s", msg);
			log_warn("%s while running job %llu (items %llu..%llu)", msg,
				 (unsigned long long)disp_job_id(ck.job), (unsigned long long)ck.first,
				 (unsigned long long)(ck.first + ck.count - 1));
		}
	} else if (clean && w->retire != R_NONE) {
		n_recycled[w->retire]++;
		if (w->retire != R_DRAIN)
			log_info("worker %d recycled (%s) after %llu tasks", (int)pid,
				 retire_names[w->retire], (unsigned long long)w->tasks_done);
	} else if (!terminating && !(clean && master_state() == MASTER_DRAINING)) {
		n_died++;
		if (st == W_STARTING)
			pool_slots[w->slot].early_deaths++;
		pool_set_failure("%s", msg);
		log_warn("%s", msg);
	}
	if (pool_slots[w->slot].cur == w)
		pool_slots[w->slot].cur = NULL;
	/* Its entry is free: a slot that found none can fork now. */
	respawn_waiting();
	recycle_reload_check();
	/* The hand-off, once the entry is free: the dispatcher reruns or
	 * fails the chunk and schedules, which never picks this entry. */
	if (lost)
		disp_chunk_lost(&ck, code, msg);
	master_progress();
}

static struct worker *find_worker(pid_t pid)
{
	for (unsigned i = 0; i < pool_n_workers; i++)
		if (pool_workers[i].pid == pid && pid > 0)
			return &pool_workers[i];
	return NULL;
}

/* A fork server reaped one of its workers (forksrv.h). */
static void exited(pid_t pid, int status)
{
	struct worker *w = find_worker(pid);

	if (w) {
		worker_gone(w, status);
		disp_schedule();
	}
}

void pool_reap(void)
{
	int status;
	pid_t pid;

	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		struct worker *w;

		if (forksrv_reaped(pid, status))
			continue;
		w = find_worker(pid);
		if (!w) {
			/* A worker whose fork server died is ours to reap now,
			 * and the answer that named it may still be unread. */
			forksrv_collect();
			w = find_worker(pid);
		}
		/* Neither a worker nor a supervised process: an orphan of
		 * theirs, reparented to us as their subreaper. */
		if (w)
			worker_gone(w, status);
		else
			proc_reaped(pid, status);
	}
	disp_schedule();
}

void pool_stop(void)
{
	for (unsigned i = 0; i < pool_n_slots; i++)
		evtimer_del(pool_slots[i].respawn);
	for (unsigned i = 0; i < pool_n_workers; i++) {
		struct worker *w = &pool_workers[i];

		if (w->ch && w->state != W_BUSY)
			pool_retire(w, R_DRAIN);
	}
}

int pool_kill_worker(pid_t pid, const char *why)
{
	struct worker *w = find_worker(pid);

	if (!w || w->state == W_EXITING)
		return -ESRCH;
	pool_fault(w, MPOOL_E_WORKER, why);
	return 0;
}

void pool_kill_job(const struct job *job)
{
	for (unsigned i = 0; i < pool_n_workers; i++) {
		struct worker *w = &pool_workers[i];

		if (w->state == W_BUSY && w->chunk.job == job)
			pool_fault(w, MPOOL_E_CANCELLED, "killed: its job was cancelled");
	}
}

void pool_kill_all(void)
{
	for (unsigned i = 0; i < pool_n_slots; i++)
		if (pool_slots[i].respawn)
			evtimer_del(pool_slots[i].respawn);
	for (unsigned i = 0; i < pool_n_workers; i++) {
		struct worker *w = &pool_workers[i];

		if (w->pid) {
			if (w->retire == R_NONE)
				w->retire = R_DRAIN;
			kill(w->pid, SIGKILL);
		}
	}
}

unsigned pool_live(void)
{
	unsigned n = 0;

	for (unsigned i = 0; i < pool_n_workers; i++)
		n += pool_workers[i].pid != 0 || pool_workers[i].state == W_FORKING;
	return n;
}

uint64_t pool_tasks_done(void)
{
	return run_tasks_total;
}

unsigned pool_busy(void)
{
	unsigned n = 0;

	for (unsigned i = 0; i < pool_n_workers; i++)
		n += pool_workers[i].state == W_BUSY;
	return n;
}

static unsigned workers_alive(void)
{
	unsigned n = 0;

	for (unsigned i = 0; i < pool_n_workers; i++)
		n += pool_workers[i].pid != 0;
	return n;
}

const char *pool_failure(void)
{
	return last_failure[0] ? last_failure : NULL;
}

/* "degraded" while workers fail to start. */
static const char *pool_health(void)
{
	for (unsigned i = 0; i < pool_n_slots; i++)
		if (pool_slots[i].early_deaths > 0)
			return "degraded";
	return "ok";
}

void pool_pack_workers(msgpack_packer *pk)
{
	uint64_t now = now_ms();

	msgpack_pack_array(pk, workers_alive());
	for (unsigned i = 0; i < pool_n_workers; i++) {
		const struct worker *w = &pool_workers[i];

		if (!w->pid)
			continue;
		msgpack_pack_map(pk, 7);
		status_kv(pk, "pid", (uint64_t)w->pid);
		mp_pack_cstr(pk, "state");
		mp_pack_cstr(pk, wstate_names[w->state]);
		status_kv(pk, "tasks_done", w->tasks_done);
		status_kv(pk, "quota", w->quota);
		mp_pack_cstr(pk, "job");
		if (w->state == W_BUSY && w->chunk.job)
			msgpack_pack_uint64(pk, disp_job_id(w->chunk.job));
		else
			msgpack_pack_nil(pk);
		status_kv(pk, "age_ms", now - w->started_ms);
		status_kv(pk, "rss_kib", recycle_rss_kib(w->pid));
	}
}

void pool_pack_totals(msgpack_packer *pk)
{
	uint64_t recycled = 0;

	for (int r = R_TASKS; r < R_COUNT; r++)
		if (r != R_DRAIN)
			recycled += n_recycled[r];
	status_kv(pk, "tasks_done", run_tasks_total);
	status_kv(pk, "tasks_timed_out", n_timed_out);
	status_kv(pk, "workers_started", n_started);
	status_kv(pk, "workers_recycled", recycled);
	status_kv(pk, "workers_died", n_died);
	status_kv(pk, "workers_killed", n_killed);
	mp_pack_cstr(pk, "recycled_by");
	msgpack_pack_map(pk, 4);
	for (int r = R_TASKS; r <= R_RELOAD; r++)
		status_kv(pk, retire_names[r], n_recycled[r]);
	mp_pack_cstr(pk, "health");
	mp_pack_cstr(pk, pool_health());
	mp_pack_cstr(pk, "last_failure");
	if (last_failure[0])
		mp_pack_cstr(pk, last_failure);
	else
		msgpack_pack_nil(pk);
}

