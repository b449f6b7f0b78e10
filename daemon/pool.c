#include "pool.h"

#include <errno.h>
#include <stdarg.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <mpool/error.h>
#include "chan.h"
#include "config.h"
#include "fork.h"
#include "forksrv.h"
#include "proc.h"
#include "log.h"
#include "master.h"
#include "mem.h"
#include "modload.h"
#include "mp_rpc.h"
#include "wmsg.h"
#include "worker.h"

/* W_FORKING: the fork server has not answered yet; the entry has no pid. */
enum wstate { W_EMPTY, W_FORKING, W_STARTING, W_IDLE, W_BUSY, W_EXITING };
static const char *const wstate_names[] = { "empty", "forking", "starting", "idle", "busy",
					    "exiting" };

/* Why a worker was asked to leave.  Policy is data: reaping reads it. */
enum retire { R_NONE, R_TASKS, R_RSS, R_LIFETIME, R_RELOAD, R_DRAIN, R_COUNT };
static const char *const retire_names[] = { "none", "tasks", "rss", "lifetime", "reload", "drain" };

/* A process.  A slot's current worker takes work; once it is retiring
 * (past its quota, or asked to leave) the slot forks its successor at once
 * and the old process finishes leaving in an entry of its own, so exit,
 * reap and the next fork overlap. */
struct worker {
	unsigned slot;
	pid_t pid;                 /* 0 when the entry is free */
	enum wstate state;
	struct chan *ch;
	uint64_t tasks_done;
	uint64_t quota;            /* tasks before it leaves; 0: unlimited */
	uint64_t seq;
	struct chunk chunk;        /* the chunk in flight, when busy */
	uint64_t started_ms;
	unsigned gen;              /* pool generation it was forked in */
	enum retire retire;        /* asked to leave, and why */
	bool reaped;               /* gone: take its last words, give it no work */
	bool eof;                  /* its channel closed; waiting to reap it */
	bool killed;               /* by us; waiting to learn of its death */
	int fail_code;             /* with cause: the master gave up on it */
	char cause[160];
	uint32_t timeout_ms;       /* per item, for the chunk in flight */
	struct event *deadline;
};

struct slot {
	struct worker *cur;        /* the process that takes its work, or NULL */
	unsigned early_deaths;     /* consecutive failures before becoming ready */
	struct event *respawn;
};

/* --workers slots, and twice as many process entries: at most one retiring
 * process per slot on average waits to be reaped.  A slot that finds no
 * free entry waits for a reap before it forks, so a master that does not
 * get to reap cannot pile up processes. */
static struct slot *slots;
static unsigned n_slots;
static struct worker *procs;
static unsigned n_procs;
static struct event_base *base;
static struct event *tick;
static unsigned gen;
/* reload_pending: until every slot has a new worker ready (then READY=1);
 * old_pending: until the last old worker has left as well. */
static bool reload_pending, old_pending, announced_ready;
static uint64_t no_ready_since;
static uint64_t total_tasks, n_started, n_died, n_timed_out;
static uint64_t n_recycled[R_COUNT];
static char last_failure[256];
static uint64_t rng_state;

static void worker_frame(void *ctx, const uint8_t *frame, size_t len);
static void exited(pid_t pid, int status);
static void worker_closed(void *ctx, int err);
static void worker_drained(void *ctx)
{
	(void)ctx;
}

static const struct chan_ops worker_ops = {
	.frame = worker_frame,
	.closed = worker_closed,
	.drained = worker_drained,
};

static uint64_t rng_next(void)
{
	/* xorshift64: only spreads recycles out, needs no quality. */
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

/* Each worker's quota is drawn from [max - jitter, max], so workers started
 * together do not all recycle together; never above max. */
static uint64_t draw_quota(void)
{
	uint64_t max = cfg.max_tasks_per_child, j = cfg.max_tasks_jitter;

	if (!max)
		return 0;
	if (j >= max)
		j = max - 1;
	return j ? max - rng_next() % (j + 1) : max;
}

static void set_failure(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void set_failure(const char *fmt, ...)
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
static void retire(struct worker *w, enum retire why);
static void worker_gone(struct worker *w, int status);

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
	w->ch = chan_new(base, fd, &lim, &worker_ops, w);
	n_started++;
	if (master_state() == MASTER_TERMINATING) {
		w->retire = R_DRAIN;
		kill(pid, SIGKILL);
	} else if (!want_workers()) {
		retire(w, R_DRAIN);
	}
}

/* The fork server's answer (forksrv.h). */
static void forked(void *token, int err, pid_t pid, int fd)
{
	struct worker *w = token;
	struct slot *s = &slots[w->slot];

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
		set_failure("cannot start a worker: fork: %s", strerror(-err));
		log_err("slot %u: %s", w->slot, last_failure);
	}
	if (want_workers() && !s->cur && !evtimer_pending(s->respawn, NULL))
		schedule_respawn(s);
	master_progress();
}

/* Forks one worker into an empty slot, through the fork server (forksrv.h)
 * or, when there is none, from the master.  The child goes straight to
 * worker_main() and never comes back here. */
static int spawn(struct worker *w, unsigned slot)
{
	pid_t pid;
	int fd, r;

	w->slot = slot;
	w->quota = draw_quota();
	w->gen = gen;
	w->state = W_FORKING;
	slots[slot].cur = w;
	r = forksrv_request(w->quota, w);
	if (r == 0)
		return 0;
	if (r == -ENOTCONN)
		r = fork_child(worker_entry, &w->quota, &pid, &fd);
	if (r < 0) {
		w->state = W_EMPTY;
		slots[slot].cur = NULL;
		return r;
	}
	install(w, pid, fd);
	return 0;
}

static struct worker *free_entry(void)
{
	for (unsigned i = 0; i < n_procs; i++)
		if (!procs[i].pid && procs[i].state == W_EMPTY)
			return &procs[i];
	return NULL;
}

static void respawn_cb(evutil_socket_t fd, short what, void *arg)
{
	struct slot *s = arg;
	struct worker *w;
	int r;

	(void)fd;
	(void)what;
	if (s->cur || !want_workers())
		return;
	/* None free: every entry holds a live or unreaped process; the next
	 * reap calls us again (respawn_waiting). */
	w = free_entry();
	if (!w)
		return;
	r = spawn(w, (unsigned)(s - slots));
	if (r < 0) {
		s->early_deaths++;
		set_failure("cannot start a worker: fork: %s", strerror(-r));
		log_err("slot %u: %s", (unsigned)(s - slots), last_failure);
		schedule_respawn(s);
	}
}

/* Respawn at once after a normal exit; after failures before readiness,
 * wait 50 ms doubling to 10 s, so a broken module or a fork limit cannot
 * cause a fork storm. */
static void schedule_respawn(struct slot *s)
{
	struct timeval tv = { 0, 0 };

	if (s->early_deaths > 0) {
		unsigned shift = s->early_deaths > 9 ? 9 : s->early_deaths - 1;
		uint64_t ms = 50ull << shift;

		if (ms > 10000)
			ms = 10000;
		tv.tv_sec = (time_t)(ms / 1000);
		tv.tv_usec = (suseconds_t)(ms % 1000) * 1000;
		log_warn("slot %u: %u failed start(s) in a row; next try in %llu ms",
			 (unsigned)(s - slots), s->early_deaths, (unsigned long long)ms);
	}
	evtimer_add(s->respawn, &tv);
}

/* Every slot without a process, and no try pending, tries again: after a
 * reap frees an entry, or when a worker starts retiring. */
static void respawn_waiting(void)
{
	if (!want_workers())
		return;
	for (unsigned i = 0; i < n_slots; i++)
		if (!slots[i].cur && !evtimer_pending(slots[i].respawn, NULL))
			schedule_respawn(&slots[i]);
}

/* The worker takes no more work (it is leaving or has left): its slot
 * forks a successor now, without waiting for the exit to be reaped. */
static void leave_slot(struct worker *w)
{
	if (slots[w->slot].cur != w)
		return;
	slots[w->slot].cur = NULL;
	respawn_waiting();
}

static unsigned ready_workers(void)
{
	unsigned n = 0;
	for (unsigned i = 0; i < n_procs; i++)
		n += procs[i].state == W_IDLE || procs[i].state == W_BUSY;
	return n;
}

static unsigned old_workers(void)
{
	unsigned n = 0;

	for (unsigned i = 0; i < n_procs; i++)
		n += procs[i].pid && procs[i].gen != gen;
	return n;
}

/* A reload is done when every slot has a new worker ready: from then on
 * only new workers get work.  Old ones that were running a chunk have left
 * their slots (pool_reload) and finish it in the background; waiting for
 * them would make a reload as long as the longest task. */
static void check_reload_done(void)
{
	if (reload_pending) {
		for (unsigned i = 0; i < n_slots; i++) {
			const struct worker *w = slots[i].cur;
			if (!w || w->gen != gen || (w->state != W_IDLE && w->state != W_BUSY))
				return;
		}
		reload_pending = false;
		old_pending = true;
		master_reload_done(old_workers());
	}
	if (old_pending && old_workers() == 0) {
		old_pending = false;
		log_info("reload: the last old worker has left");
	}
}

/* Asks a worker to leave: closing its channel makes it run its modules'
 * fini and exit 0. */
static void retire(struct worker *w, enum retire why)
{
	w->retire = why;
	w->state = W_EXITING;
	evtimer_del(w->deadline);
	chan_free(w->ch);
	w->ch = NULL;
	leave_slot(w);
	log_debug("worker %d: retiring (%s) after %llu tasks", (int)w->pid, retire_names[why],
		  (unsigned long long)w->tasks_done);
}

/* Gives up on a worker: kill it now; its chunk fails with code and the
 * cause once it is reaped. */
static void worker_fault(struct worker *w, int code, const char *cause)
{
	struct timeval grace = { FORKSRV_REPORT_MS / 1000, (FORKSRV_REPORT_MS % 1000) * 1000 };

	if (!w->cause[0]) {
		snprintf(w->cause, sizeof(w->cause), "%s", cause);
		w->fail_code = code;
	}
	log_debug("worker %d %s; killing it", (int)w->pid, cause);
	kill(w->pid, SIGKILL);
	w->killed = true;
	/* Its chunk fails once its death is known: bounded even if the
	 * fork server that should report it is stuck. */
	evtimer_del(w->deadline);
	evtimer_add(w->deadline, &grace);
	chan_free(w->ch);
	w->ch = NULL;
	if (w->state != W_BUSY)
		w->state = W_EXITING;
}

static void arm_deadline(struct worker *w)
{
	if (w->eof)
		return;
	/* A worker reports finished items at least every WMSG_PART_MS (by its
	 * coarse clock), so the item it is on started at most that long after
	 * its last report: waiting timeout + WMSG_PART_MS + the clock's slack
	 * never kills a task early. */
	uint64_t ms = (uint64_t)w->timeout_ms + WMSG_PART_MS + WMSG_PART_SLACK_MS;
	struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000 };

	if (w->timeout_ms)
		evtimer_add(w->deadline, &tv);
}

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;
	char cause[160];

	(void)fd;
	(void)what;
	if (w->killed) {
		forksrv_overdue(w->pid);
		return;
	}
	if (w->eof) {
		worker_fault(w, MPOOL_E_WORKER, "closed its channel but did not exit");
		return;
	}
	if (w->state != W_BUSY)
		return;
	snprintf(cause, sizeof(cause), "timed out: item %llu of job %llu ran past its %u ms deadline",
		 (unsigned long long)w->chunk.first,
		 (unsigned long long)disp_job_id(w->chunk.job), w->timeout_ms);
	worker_fault(w, MPOOL_E_TIMEOUT, cause);
}

/* RSS in KiB from /proc; 0 when unknown. */
static uint64_t rss_kib(pid_t pid)
{
	char path[64];
	unsigned long long size, resident;
	FILE *f;
	int n;

	snprintf(path, sizeof(path), "/proc/%d/statm", (int)pid);
	f = fopen(path, "re");
	if (!f)
		return 0;
	n = fscanf(f, "%llu %llu", &size, &resident);
	fclose(f);
	return n == 2 ? resident * (uint64_t)sysconf(_SC_PAGESIZE) / 1024 : 0;
}

static bool too_old(const struct worker *w, uint64_t now)
{
	return cfg.max_lifetime_s && now - w->started_ms >= (uint64_t)cfg.max_lifetime_s * 1000;
}

/* After a chunk: which recycling rule, if any, says this worker goes. */
static enum retire retire_reason(const struct worker *w)
{
	if (w->quota && w->tasks_done >= w->quota)
		return R_TASKS;
	if (w->gen != gen)
		return R_RELOAD;
	if (cfg.max_rss_mib && rss_kib(w->pid) > (uint64_t)cfg.max_rss_mib * 1024)
		return R_RSS;
	if (too_old(w, now_ms()))
		return R_LIFETIME;
	return R_NONE;
}

/* --max-rss-per-child while a chunk runs, at each part a worker reports
 * (every WMSG_PART_MS): a chunk may hold thousands of items, and waiting
 * for its end let a worker grow without bound.  What runs is what grows,
 * so the worker is killed at once rather than asked to finish; the chunk's
 * unanswered items fail with "limit" (or rerun, if the request asked for
 * retries), as after any lost chunk.  A one-item chunk sends no parts: its
 * worker is checked when it ends, as before.  True when it was killed. */
static bool rss_check_busy(struct worker *w)
{
	uint64_t kib;
	char cause[160];

	if (!cfg.max_rss_mib || w->state != W_BUSY || w->cause[0])
		return false;
	kib = rss_kib(w->pid);
	if (kib <= (uint64_t)cfg.max_rss_mib * 1024)
		return false;
	snprintf(cause, sizeof(cause), "was killed at %llu MiB, past --max-rss-per-child %u MiB, "
		 "while running item %llu of job %llu", (unsigned long long)(kib / 1024),
		 cfg.max_rss_mib, (unsigned long long)w->chunk.first,
		 (unsigned long long)disp_job_id(w->chunk.job));
	w->retire = R_RSS;
	worker_fault(w, MPOOL_E_LIMIT, cause);
	return true;
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
	uint64_t now = now_ms();

	(void)fd;
	(void)what;
	(void)arg;
	for (unsigned i = 0; i < n_procs; i++)
		if (procs[i].state == W_IDLE && too_old(&procs[i], now))
			retire(&procs[i], R_LIFETIME);
	/* Queued work waits for workers, but not forever. */
	if (ready_workers() > 0 || !disp_has_queued()) {
		no_ready_since = now;
	} else if (now - no_ready_since >= cfg.recovery_timeout_ms) {
		char msg[400];

		snprintf(msg, sizeof(msg), "no worker could be started for %u ms; last failure: %s",
			 cfg.recovery_timeout_ms, last_failure[0] ? last_failure : "none recorded");
		log_err("failing queued work: %s", msg);
		disp_fail_queued(MPOOL_E_UNAVAILABLE, msg);
		no_ready_since = now;
	}
}

int pool_init(struct event_base *b)
{
	struct timeval second = { 0, 250 * 1000 };
	int r;

	base = b;
	rng_state = (uint64_t)now_ms() * 0x9E3779B97F4A7C15ull ^ (uint64_t)getpid();
	n_slots = cfg.workers;
	n_procs = 2 * n_slots;
	slots = xcalloc(n_slots, sizeof(*slots));
	procs = xcalloc(n_procs, sizeof(*procs));
	no_ready_since = now_ms();
	tick = event_new(base, -1, EV_PERSIST, tick_cb, NULL);
	if (!tick || event_add(tick, &second) < 0)
		return -ENOMEM;
	for (unsigned i = 0; i < n_slots; i++) {
		slots[i].respawn = evtimer_new(base, respawn_cb, &slots[i]);
		if (!slots[i].respawn)
			return -ENOMEM;
	}
	for (unsigned i = 0; i < n_procs; i++) {
		procs[i].deadline = evtimer_new(base, deadline_cb, &procs[i]);
		if (!procs[i].deadline)
			return -ENOMEM;
	}
	r = forksrv_init(base, forked, exited, n_procs);
	if (r < 0) {
		log_err("cannot set up the fork server: %s", strerror(-r));
		return r;
	}
	/* Without it, workers fork from the master. */
	forksrv_start();
	/* A fork that fails at start is a failure storm like any other:
	 * mpoold starts degraded and retries with backoff. */
	for (unsigned i = 0; i < n_slots; i++)
		respawn_cb(-1, 0, &slots[i]);
	return 0;
}

void pool_free(void)
{
	forksrv_free();
	for (unsigned i = 0; i < n_slots; i++)
		if (slots[i].respawn)
			event_free(slots[i].respawn);
	for (unsigned i = 0; i < n_procs; i++) {
		chan_free(procs[i].ch);
		if (procs[i].deadline)
			event_free(procs[i].deadline);
	}
	if (tick)
		event_free(tick);
	tick = NULL;
	free(slots);
	free(procs);
	slots = NULL;
	procs = NULL;
	n_slots = n_procs = 0;
}

struct worker *pool_idle(void)
{
	for (unsigned i = 0; i < n_procs; i++)
		if (procs[i].state == W_IDLE)
			return &procs[i];
	return NULL;
}

uint64_t pool_quota_left(const struct worker *w)
{
	if (!w->quota)
		return UINT64_MAX;
	return w->tasks_done >= w->quota ? 0 : w->quota - w->tasks_done;
}

void pool_run(struct worker *w, const struct chunk *ck, const char *fn, uint32_t fn_len)
{
	struct wmsg_run run = {
		.seq = ++w->seq, .fn = fn, .fn_len = fn_len, .first = ck->first,
		.each = ck->batch != NULL,
		.count = ck->count, .items = ck->items, .items_len = ck->items_len,
	};
	msgpack_packer pk;

	chan_packer(w->ch, &pk);
	if (wmsg_pack_run_head(&pk, &run) < 0 || disp_chunk_add_items(ck, chan_out(w->ch)) < 0) {
		log_err("out of memory sending a chunk to worker %d", (int)w->pid);
		abort();
	}
	chan_flush(w->ch);
	w->chunk = *ck;
	w->state = W_BUSY;
	w->timeout_ms = disp_job_timeout(ck->job);
	arm_deadline(w);
}

static bool valid_result(const struct worker *w, const struct wmsg_result *res, bool part)
{
	return w->state == W_BUSY && res->seq == w->seq &&
	       res->n_errors <= res->n_results &&
	       (part ? res->n_results > 0 && res->n_results < w->chunk.count
		     : res->n_results == w->chunk.count);
}

/* Large results are adopted from the frame their channel is delivering. */
static uint8_t *take_results(void *ctx, const uint8_t *p, size_t len)
{
	return chan_take_delivered(ctx, p, len);
}

static void worker_part(struct worker *w, const struct wmsg_result *res)
{
	if (!valid_result(w, res, true)) {
		worker_fault(w, MPOOL_E_INTERNAL, "sent a part for no chunk it was running");
		return;
	}
	w->tasks_done += res->n_results;
	total_tasks += res->n_results;
	arm_deadline(w);
	disp_chunk_part(&w->chunk, res, &(struct disp_results_buf){ take_results, w->ch });
	rss_check_busy(w);
}

static void worker_result(struct worker *w, const struct wmsg_result *res)
{
	struct chunk ck = w->chunk;
	/* The channel delivering res; a retire below lets go of it, but its
	 * free waits until this delivery returns. */
	struct disp_results_buf buf = { take_results, w->ch };
	enum retire why;

	if (!valid_result(w, res, false)) {
		worker_fault(w, MPOOL_E_INTERNAL, "sent a result for no chunk it was running");
		return;
	}
	evtimer_del(w->deadline);
	w->tasks_done += res->n_results;
	total_tasks += res->n_results;
	w->chunk.job = NULL;
	w->state = W_IDLE;
	why = retire_reason(w);
	if (why == R_TASKS) {
		/* It leaves by itself after this result; its successor need not
		 * wait for that. */
		w->retire = R_TASKS;
		w->state = W_EXITING;
		leave_slot(w);
	} else if (w->reaped) {
		w->state = W_EXITING;
	} else if (why != R_NONE) {
		retire(w, why);
	}
	disp_chunk_done(&ck, res, &buf);
}

static void worker_ready(struct worker *w, int64_t pid)
{
	if (w->state != W_STARTING || pid != w->pid) {
		worker_fault(w, MPOOL_E_INTERNAL, "sent a ready notice out of turn");
		return;
	}
	w->state = W_IDLE;
	slots[w->slot].early_deaths = 0;
	if (w->reaped) {
		w->state = W_EXITING;
		return;
	}
	if (w->gen != gen) {
		retire(w, R_RELOAD);
		return;
	}
	if (!announced_ready && ready_workers() == n_slots) {
		announced_ready = true;
		master_ready();
	}
	check_reload_done();
	disp_schedule();
}

static void worker_frame(void *ctx, const uint8_t *frame, size_t len)
{
	struct worker *w = ctx;
	struct wmsg_result res;
	int64_t pid;

	switch (wmsg_parse_from_worker(frame, len, &res, &pid)) {
	case WMSG_RESULT:
		worker_result(w, &res);
		break;
	case WMSG_PART:
		worker_part(w, &res);
		break;
	case WMSG_READY:
		worker_ready(w, pid);
		break;
	default:
		worker_fault(w, MPOOL_E_INTERNAL, "sent a malformed message");
	}
}

static void worker_closed(void *ctx, int err)
{
	struct worker *w = ctx;

	chan_free(w->ch);
	w->ch = NULL;
	if (w->retire != R_NONE)
		return;
	if (err == -EMSGSIZE) {
		worker_fault(w, MPOOL_E_LIMIT, "sent a result larger than --max-frame");
	} else if (err < 0 && err != -ECONNRESET && err != -EPIPE) {
		worker_fault(w, MPOOL_E_INTERNAL, "broke its channel");
	} else {
		/* End of stream almost always means it died: its exit status,
		 * reaped in a moment, names the cause (a signal, an init that
		 * failed).  Only one that lingers is killed, and blamed.  A
		 * reset or a broken pipe says the same: a worker killed with
		 * bytes of ours unread resets the socket instead of ending
		 * the stream. */
		struct timeval grace = { 1, 0 };

		w->eof = true;
		evtimer_del(w->deadline);
		evtimer_add(w->deadline, &grace);
	}
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

	/* It may have written results and exited before we read them: take
	 * them first, so nothing it finished is reported lost. */
	w->reaped = true;
	if (w->ch)
		chan_drain_input(w->ch);
	chan_free(w->ch);
	w->ch = NULL;
	evtimer_del(w->deadline);
	st = w->state;
	w->pid = 0;
	w->state = W_EMPTY;

	describe_exit(status, st == W_STARTING, how, sizeof(how));
	snprintf(msg, sizeof(msg), "worker %d %s", (int)pid, w->cause[0] ? w->cause : how);
	if (st == W_BUSY) {
		struct chunk ck = w->chunk;
		int code = w->fail_code ? w->fail_code : MPOOL_E_WORKER;

		w->chunk.job = NULL;
		if (!terminating) {
			if (code == MPOOL_E_TIMEOUT)
				n_timed_out++;
			else if (w->retire == R_RSS)
				n_recycled[R_RSS]++;
			else
				n_died++;
			set_failure("%s", msg);
			log_warn("%s while running job %llu (items %llu..%llu)", msg,
				 (unsigned long long)disp_job_id(ck.job), (unsigned long long)ck.first,
				 (unsigned long long)(ck.first + ck.count - 1));
		}
		disp_chunk_lost(&ck, code, msg);
	} else if (clean && w->retire != R_NONE) {
		n_recycled[w->retire]++;
		if (w->retire != R_DRAIN)
			log_info("worker %d recycled (%s) after %llu tasks", (int)pid,
				 retire_names[w->retire], (unsigned long long)w->tasks_done);
	} else if (!terminating && !(clean && master_state() == MASTER_DRAINING)) {
		n_died++;
		if (st == W_STARTING)
			slots[w->slot].early_deaths++;
		set_failure("%s", msg);
		log_warn("%s", msg);
	}
	if (slots[w->slot].cur == w)
		slots[w->slot].cur = NULL;
	/* Its entry is free: a slot that found none can fork now. */
	respawn_waiting();
	check_reload_done();
	master_progress();
}

static struct worker *find_worker(pid_t pid)
{
	for (unsigned i = 0; i < n_procs; i++)
		if (procs[i].pid == pid && pid > 0)
			return &procs[i];
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

void pool_reload(void)
{
	if (modload_reload() < 0) {
		set_failure("reload: a module failed to load again (see the log)");
		log_err("%s; functions of that module are unavailable until the next reload",
			last_failure);
	}
	/* A new fork server opens the files anew too; the old one serves its
	 * workers out. */
	forksrv_retire();
	forksrv_start();
	gen++;
	reload_pending = true;
	for (unsigned i = 0; i < n_procs; i++) {
		struct worker *w = &procs[i];

		/* Busy workers finish their chunk first (worker_result), but
		 * out of their slots, so a new worker starts beside each now. */
		if (w->pid && (w->state == W_IDLE || w->state == W_STARTING))
			retire(w, R_RELOAD);
		else if (w->pid && w->state == W_BUSY)
			leave_slot(w);
	}
	check_reload_done();
}

void pool_stop(void)
{
	for (unsigned i = 0; i < n_slots; i++)
		evtimer_del(slots[i].respawn);
	for (unsigned i = 0; i < n_procs; i++) {
		struct worker *w = &procs[i];

		if (w->ch && w->state != W_BUSY)
			retire(w, R_DRAIN);
	}
}

int pool_kill_worker(pid_t pid, const char *why)
{
	for (unsigned i = 0; i < n_procs; i++) {
		struct worker *w = &procs[i];

		if (w->pid == pid && pid > 0 && w->state != W_EXITING) {
			worker_fault(w, MPOOL_E_WORKER, why);
			return 0;
		}
	}
	return -ESRCH;
}

void pool_kill_job(const struct job *job)
{
	for (unsigned i = 0; i < n_procs; i++) {
		struct worker *w = &procs[i];

		if (w->state == W_BUSY && w->chunk.job == job)
			worker_fault(w, MPOOL_E_CANCELLED, "killed: its job was cancelled");
	}
}

void pool_kill_all(void)
{
	for (unsigned i = 0; i < n_slots; i++)
		if (slots[i].respawn)
			evtimer_del(slots[i].respawn);
	for (unsigned i = 0; i < n_procs; i++) {
		struct worker *w = &procs[i];

		if (w->pid) {
			if (w->retire == R_NONE)
				w->retire = R_DRAIN;
			kill(w->pid, SIGKILL);
		}
	}
}

/* Processes, and forks the fork server has not answered: a drain waits
 * for those too. */
unsigned pool_live(void)
{
	unsigned n = 0;
	for (unsigned i = 0; i < n_procs; i++)
		n += procs[i].pid != 0 || procs[i].state == W_FORKING;
	return n;
}

static unsigned n_processes(void)
{
	unsigned n = 0;
	for (unsigned i = 0; i < n_procs; i++)
		n += procs[i].pid != 0;
	return n;
}

unsigned pool_busy(void)
{
	unsigned n = 0;
	for (unsigned i = 0; i < n_procs; i++)
		n += procs[i].state == W_BUSY;
	return n;
}

const char *pool_health(void)
{
	for (unsigned i = 0; i < n_slots; i++)
		if (slots[i].early_deaths > 0)
			return "degraded";
	return "ok";
}

const char *pool_last_failure(void)
{
	return last_failure[0] ? last_failure : NULL;
}

void pool_pack_workers(msgpack_packer *pk)
{
	uint64_t now = now_ms();

	msgpack_pack_array(pk, n_processes());
	for (unsigned i = 0; i < n_procs; i++) {
		const struct worker *w = &procs[i];

		if (!w->pid)
			continue;
		msgpack_pack_map(pk, 7);
		mp_pack_cstr(pk, "pid");
		msgpack_pack_int64(pk, w->pid);
		mp_pack_cstr(pk, "state");
		mp_pack_cstr(pk, wstate_names[w->state]);
		mp_pack_cstr(pk, "tasks_done");
		msgpack_pack_uint64(pk, w->tasks_done);
		mp_pack_cstr(pk, "quota");
		msgpack_pack_uint64(pk, w->quota);
		mp_pack_cstr(pk, "job");
		if (w->state == W_BUSY && w->chunk.job)
			msgpack_pack_uint64(pk, disp_job_id(w->chunk.job));
		else
			msgpack_pack_nil(pk);
		mp_pack_cstr(pk, "age_ms");
		msgpack_pack_uint64(pk, now - w->started_ms);
		mp_pack_cstr(pk, "rss_kib");
		msgpack_pack_uint64(pk, rss_kib(w->pid));
	}
}

void pool_pack_totals(msgpack_packer *pk)
{
	uint64_t recycled = 0;

	for (int r = R_TASKS; r < R_COUNT; r++)
		if (r != R_DRAIN)
			recycled += n_recycled[r];
	mp_pack_cstr(pk, "tasks_done");
	msgpack_pack_uint64(pk, total_tasks);
	mp_pack_cstr(pk, "tasks_timed_out");
	msgpack_pack_uint64(pk, n_timed_out);
	mp_pack_cstr(pk, "workers_started");
	msgpack_pack_uint64(pk, n_started);
	mp_pack_cstr(pk, "workers_recycled");
	msgpack_pack_uint64(pk, recycled);
	mp_pack_cstr(pk, "workers_died");
	msgpack_pack_uint64(pk, n_died);
	mp_pack_cstr(pk, "recycled_by");
	msgpack_pack_map(pk, 4);
	for (int r = R_TASKS; r <= R_RELOAD; r++) {
		mp_pack_cstr(pk, retire_names[r]);
		msgpack_pack_uint64(pk, n_recycled[r]);
	}
	mp_pack_cstr(pk, "health");
	mp_pack_cstr(pk, pool_health());
	mp_pack_cstr(pk, "last_failure");
	if (last_failure[0])
		mp_pack_cstr(pk, last_failure);
	else
		msgpack_pack_nil(pk);
}
