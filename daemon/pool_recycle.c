/* pool_recycle: when a worker must go (task quotas with jitter, RSS and
 * lifetime limits), and reload: a new generation of workers. */
#include "pool_int.h"

#include <errno.h>
#include <stdio.h>
#include <unistd.h>

#include <mpool/error.h>
#include "config.h"
#include "forksrv.h"
#include "log.h"
#include "master.h"
#include "modload.h"

static struct event *tick;
/* reload_waiting: until the reload's fork server has loaded the modules;
 * reload_pending: until every slot has a new worker ready (then READY=1);
 * old_pending: until the last old worker has left as well. */
static bool reload_waiting, reload_pending, old_pending;
static uint64_t no_ready_since;
static uint64_t rng_state;

static uint64_t rng_next(void)
{
	/* xorshift64: only spreads recycles out, needs no quality. */
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

uint64_t recycle_draw_quota(void)
{
	uint64_t max = cfg.max_tasks_per_child, j = cfg.max_tasks_jitter;

	if (!max)
		return 0;
	if (j >= max)
		j = max - 1;
	return j ? max - rng_next() % (j + 1) : max;
}

static unsigned old_workers(void)
{
	unsigned n = 0;

	for (unsigned i = 0; i < pool_n_workers; i++)
		n += pool_workers[i].pid && pool_workers[i].gen != pool_gen;
	return n;
}

/* Tells the master once a reload is done: when every slot has a new worker
 * ready.  Old ones still running a chunk finish it out of their slots, or a
 * reload would last as long as the longest task. */
void recycle_reload_check(void)
{
	if (reload_pending) {
		for (unsigned i = 0; i < pool_n_slots; i++) {
			const struct worker *w = pool_slots[i].cur;

			if (!w || w->gen != pool_gen || (w->state != W_IDLE && w->state != W_BUSY))
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

uint64_t recycle_rss_kib(pid_t pid)
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

enum retire recycle_reason(const struct worker *w)
{
	if (w->quota && w->tasks_done >= w->quota)
		return R_TASKS;
	if (w->gen != pool_gen)
		return R_RELOAD;
	if (cfg.max_rss_mib && recycle_rss_kib(w->pid) > (uint64_t)cfg.max_rss_mib * 1024)
		return R_RSS;
	if (too_old(w, now_ms()))
		return R_LIFETIME;
	return R_NONE;
}

/* --max-rss-per-child at each part a worker reports: a chunk may hold
 * thousands of items, and a worker must not grow without bound until its
 * end.  What runs is what grows, so the worker is killed at once (true)
 * rather than asked to finish; the chunk's unanswered items fail with
 * "limit" (or rerun).  A one-item chunk sends no parts: it is checked when
 * it ends. */
bool recycle_rss_check(struct worker *w)
{
	uint64_t kib;
	char cause[160];

	if (!cfg.max_rss_mib || w->state != W_BUSY || w->cause[0])
		return false;
	kib = recycle_rss_kib(w->pid);
	if (kib <= (uint64_t)cfg.max_rss_mib * 1024)
		return false;
	snprintf(cause, sizeof(cause), "was killed at %llu MiB, past --max-rss-per-child %u MiB, "
		 "while running item %llu of job %llu", (unsigned long long)(kib / 1024),
		 cfg.max_rss_mib, (unsigned long long)w->chunk.first,
		 (unsigned long long)disp_job_id(w->chunk.job));
	w->retire = R_RSS;
	pool_fault(w, MPOOL_E_LIMIT, cause);
	return true;
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
	uint64_t now = now_ms();

	(void)fd;
	(void)what;
	(void)arg;
	for (unsigned i = 0; i < pool_n_workers; i++)
		if (pool_workers[i].state == W_IDLE && too_old(&pool_workers[i], now))
			pool_retire(&pool_workers[i], R_LIFETIME);
	/* Queued work waits for workers, but not forever.  While the fork
	 * server loads the modules no worker was tried yet: that wait has a
	 * bound of its own (--fork-server-timeout). */
	if (pool_ready_workers() > 0 || !disp_has_queued() || forksrv_loading()) {
		no_ready_since = now;
	} else if (now - no_ready_since >= cfg.recovery_timeout_ms) {
		char msg[400];

		snprintf(msg, sizeof(msg), "no worker could be started for %u ms; last failure: %s",
			 cfg.recovery_timeout_ms, pool_failure() ? pool_failure() : "none recorded");
		log_err("failing queued work: %s", msg);
		disp_fail_queued(MPOOL_E_UNAVAILABLE, msg);
		no_ready_since = now;
	}
}

int recycle_init(struct event_base *base)
{
	struct timeval period = { 0, 250 * 1000 };

	rng_state = (uint64_t)now_ms() * 0x9E3779B97F4A7C15ull ^ (uint64_t)getpid();
	no_ready_since = now_ms();
	tick = event_new(base, -1, EV_PERSIST, tick_cb, NULL);
	if (!tick || event_add(tick, &period) < 0)
		return -ENOMEM;
	return 0;
}

void recycle_free(void)
{
	if (tick)
		event_free(tick);
	tick = NULL;
}

/* The new generation: every worker forked from now on, the forks the new
 * fork server has not answered yet included. */
static void reload_switch(void)
{
	pool_gen++;
	reload_pending = true;
	for (unsigned i = 0; i < pool_n_workers; i++) {
		struct worker *w = &pool_workers[i];

		/* Busy workers finish their chunk, out of their slots, so a new
		 * worker starts beside each now. */
		if (w->state == W_FORKING)
			w->gen = pool_gen;
		else if (w->pid && (w->state == W_IDLE || w->state == W_STARTING))
			pool_retire(w, R_RELOAD);
		else if (w->pid && w->state == W_BUSY)
			pool_leave_slot(w);
	}
	recycle_reload_check();
}

void pool_reload(void)
{
	int r;

	if (modload_reload() < 0) {
		pool_set_failure("reload: a module failed to load again (see the log)");
		log_err("%s; functions of that module are unavailable until the next reload",
			pool_failure());
	}
	/* A new fork server opens the files anew too; the old one serves its
	 * workers out. */
	forksrv_retire();
	r = forksrv_start();
	if (r == 0 && forksrv_loading()) {
		/* The old workers serve until it has loaded the modules (a
		 * Python import may take long): a reload leaves no gap. */
		reload_waiting = true;
		log_info("reload: the old workers serve until the new fork server has loaded "
			 "the modules");
		return;
	}
	reload_waiting = false;
	reload_switch();
}

void recycle_forksrv_started(int err)
{
	(void)err;              /* loaded or not, the reload goes on: forksrv.h */
	if (!reload_waiting)
		return;
	reload_waiting = false;
	if (master_state() == MASTER_RUNNING)
		reload_switch();
}
