/* pool: the worker process table.  Fork happens here and only here; so do
 * reaping, respawn with backoff, and the per-worker task count that drives
 * recycling.  Slots are fixed (--workers); a slot's process comes and goes. */
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
/* Sends a chunk to an idle worker; it becomes busy until the chunk ends. */
void pool_run(struct worker *w, const struct chunk *ck, const char *fn, uint32_t fn_len,
	      const uint8_t *items, size_t items_len);

/* Replace every worker once it has finished its current chunk. */
void pool_reload(void);
/* SIGCHLD: reap every exited child and apply policy. */
void pool_reap(void);
/* Drain end: close every worker's channel so it leaves cleanly. */
void pool_stop(void);
/* Terminate: SIGKILL every worker now. */
void pool_kill_all(void);
/* Processes started and not reaped yet. */
unsigned pool_live(void);
/* True once every slot has had a worker ready (for READY=1). */
bool pool_all_ready(void);
unsigned pool_busy(void);

void pool_pack_workers(msgpack_packer *pk);
uint64_t pool_tasks_done(void);
uint64_t pool_started(void);
uint64_t pool_recycled(void);
uint64_t pool_died(void);

#endif
