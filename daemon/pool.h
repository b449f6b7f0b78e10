/* pool: the worker table; workers are started, reaped, timed and recycled
 * here and only here.  Slots are fixed (--workers); a retiring worker is
 * succeeded at once, before its exit is reaped. */
#ifndef POOL_H
#define POOL_H

#include <stdint.h>
#include <event2/event.h>
#include <msgpack.h>

#include "disp.h"

int pool_init(struct event_base *base);
void pool_free(void);

/* disp_ops' idle, quota_left and run. */
struct worker *pool_idle(void);
uint64_t pool_quota_left(const struct worker *w);
void pool_run(struct worker *w, const struct chunk *ck, const char *fn, uint32_t fn_len);

/* Reopens the modules and replaces every worker, busy ones once they have
 * finished their chunk, each with a new one started beside it at once.
 * Calls master_reload_done() when every slot has a new worker ready. */
void pool_reload(void);
/* SIGCHLD. */
void pool_reap(void);
/* Drain end: every worker leaves cleanly. */
void pool_stop(void);
/* An administrator's kill: the worker's chunk fails (or is retried) as
 * after any death.  0, or -ESRCH when no worker has that pid. */
int pool_kill_worker(pid_t pid, const char *why);
void pool_kill_job(const struct job *job);
/* Terminate: SIGKILL every worker now. */
void pool_kill_all(void);
/* Processes started and not reaped yet, and forks the fork server has not
 * answered: a drain waits for both. */
unsigned pool_live(void);
/* Workers running a chunk. */
unsigned pool_busy(void);
/* Items this node's workers have run since it started. */
uint64_t pool_tasks_done(void);

/* status: the workers array, and the pool's own keys of "totals". */
void pool_pack_workers(msgpack_packer *pk);
#define POOL_TOTALS_KEYS 9
void pool_pack_totals(msgpack_packer *pk);

#endif
