/* The pool's own header: pool.c the worker table and each worker's life,
 * pool_run.c chunks to workers and their results back (run_),
 * pool_recycle.c the recycling rules and reload (recycle_). */
#ifndef POOL_INT_H
#define POOL_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <event2/event.h>

#include "chan.h"
#include "disp.h"

/* W_FORKING: the fork server has not answered yet; the entry has no pid. */
enum wstate { W_EMPTY, W_FORKING, W_STARTING, W_IDLE, W_BUSY, W_EXITING };

/* Why a worker was asked to leave.  Policy is data: reaping reads it. */
enum retire { R_NONE, R_TASKS, R_RSS, R_LIFETIME, R_RELOAD, R_DRAIN, R_COUNT };

/* A worker process.  Once it is retiring its slot forks a successor at
 * once and it finishes leaving in an entry of its own, so exit, reap and
 * the next fork overlap. */
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

/* --workers slots, and twice as many worker entries.  A slot that finds no
 * free entry waits for a reap before it forks, so a master that does not
 * get to reap cannot pile up processes. */
extern struct slot *pool_slots;
extern unsigned pool_n_slots;
extern struct worker *pool_workers;
extern unsigned pool_n_workers;
extern unsigned pool_gen;          /* a reload starts the next */

/* pool.c.  Asks a worker to leave: closing its channel makes it run its
 * modules' fini and exit 0. */
void pool_retire(struct worker *w, enum retire why);
/* Gives up on a worker: kills it now; its chunk fails with code and the
 * cause once it is reaped. */
void pool_fault(struct worker *w, int code, const char *cause);
/* The worker takes no more work: its slot forks a successor now, without
 * waiting for the exit to be reaped. */
void pool_leave_slot(struct worker *w);
/* Workers idle or busy. */
unsigned pool_ready_workers(void);
/* The last failure, for status and the log; NULL when none. */
void pool_set_failure(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
const char *pool_failure(void);

/* pool_run.c.  A worker channel's callbacks; the deadline timer of a
 * worker entry (arg: the entry). */
extern const struct chan_ops run_chan_ops;
void run_deadline_cb(evutil_socket_t fd, short what, void *arg);
extern uint64_t run_tasks_total;

/* pool_recycle.c.  The periodic checks. */
int recycle_init(struct event_base *base);
void recycle_free(void);
/* A new worker's task quota (0: unlimited), drawn from [max - jitter, max]
 * so that workers started together do not all recycle together. */
uint64_t recycle_draw_quota(void);
/* After a chunk: which recycling rule, if any, says this worker goes. */
enum retire recycle_reason(const struct worker *w);
bool recycle_rss_check(struct worker *w);
/* RSS in KiB from /proc; 0 when unknown. */
uint64_t recycle_rss_kib(pid_t pid);
void recycle_reload_check(void);
/* forksrv.h's started: a reload that waited for it goes on. */
void recycle_forksrv_started(int err);

#endif
