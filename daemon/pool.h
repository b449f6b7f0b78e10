/* pool: the worker table (pool.c; pool_run.c runs chunks, pool_recycle.c
 * recycles and reloads).  Workers are started here and only here (forked by
 * the fork server, forksrv.h, or by fork.c); so do reaping, respawn with
 * backoff, per-worker task counts, deadlines and every recycling rule
 * (tasks, RSS, lifetime, reload).  Slots are fixed (--workers); a slot's
 * worker comes and goes, and a retiring worker is succeeded at once, before
 * its exit is reaped (at most --workers of them wait to be reaped). */
#ifndef POOL_H
#define POOL_H

#include <stdbool.h>
#include <stdint.h>
#include <event2/event.h>
#include <msgpack.h>

#include "disp.h"

struct worker;

int pool_init(struct event_base *base);
void pool_free(void);

/* An idle worker, or NULL. */
struct worker *pool_idle(void);
/* Tasks this worker may still run before it must be recycled. */
uint64_t pool_quota_left(const struct worker *w);
/* Sends a chunk to an idle worker; it is busy until the chunk ends. */
void pool_run(struct worker *w, const struct chunk *ck, const char *fn, uint32_t fn_len);

/* Reopens the modules and replaces every worker: idle ones now, busy ones
 * once they have finished their current chunk, each with a new worker
 * started beside it at once.  Calls master_reload_done() when every slot
 * has a new worker ready (old ones may still be finishing chunks). */
void pool_reload(void);
/* SIGCHLD: reap every exited child and apply policy. */
void pool_reap(void);
/* Drain end: close every worker's channel so it leaves cleanly. */
void pool_stop(void);
/* An administrator's kill: the worker's chunk fails (or is retried) as
 * after any death.  0, or -ESRCH when no worker has that pid. */
int pool_kill_worker(pid_t pid, const char *why);
/* Kills the workers running chunks of this job (cancel with kill). */
void pool_kill_job(const struct job *job);
/* Terminate: SIGKILL every worker now. */
void pool_kill_all(void);
/* Processes started and not reaped yet. */
unsigned pool_live(void);
/* Workers running a chunk (cluster: what a node reports of its load). */
unsigned pool_busy(void);
/* Items this node's workers have run since it started. */
uint64_t pool_tasks_done(void);

/* status: the workers array, and the pool's own keys of "totals". */
void pool_pack_workers(msgpack_packer *pk);
#define POOL_TOTALS_KEYS 8
void pool_pack_totals(msgpack_packer *pk);
/* "ok", or "degraded" while workers fail to start. */
const char *pool_health(void);

#endif
