/* master: the one-thread event loop of mpoold, its signals and its
 * lifecycle: running -> draining (SIGTERM/SIGINT) or terminating
 * (terminate request) -> exit. */
#ifndef MASTER_H
#define MASTER_H

#include <stdint.h>
#include <event2/event.h>

enum master_state { MASTER_RUNNING, MASTER_DRAINING, MASTER_TERMINATING };

/* Runs the loop until mpoold exits; returns its exit status: 0 clean, 1 a
 * failure, MASTER_EXIT_DRAIN_TIMEOUT when a drain ran out of
 * --drain-timeout (mpoold.service lists it in SuccessExitStatus=). */
#define MASTER_EXIT_DRAIN_TIMEOUT 3
int master_run(void);

/* Every signal whose disposition master_run() changes, 0-terminated: a
 * worker resets exactly these, so it never runs the master's handlers. */
extern const int master_signals[];

enum master_state master_state(void);
const char *master_state_name(void);
uint64_t master_uptime_ms(void);
uint64_t now_ms(void);       /* monotonic */

/* Arms ev to fire ms from now. */
static inline int timer_add_ms(struct event *ev, uint64_t ms)
{
	struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000 };

	return evtimer_add(ev, &tv);
}

/* Stop taking work, finish what is open, exit (close() + join()). */
void master_drain(const char *why);
/* Stop at once: kill workers, fail all work, exit. */
void master_terminate(const char *why);
/* Replace every worker after its current chunk, reopening modules (SIGHUP,
 * the reload method).  The pool calls master_reload_done() once every slot has a new
 * worker ready, while old_left old workers still finish their chunks: that
 * is when systemd hears READY=1, so a reload never waits for a long task. */
void master_reload(const char *why);
void master_reload_done(unsigned old_left);
/* The pool is up (every worker ready): READY=1 with a fresh STATUS=. */
void master_ready(void);
/* Something that shutdown waits for has ended (a job, a worker, a client). */
void master_progress(void);
/* Something the STATUS= line shows has changed.  Cheap enough to call on
 * every change: it only arms a timer that sends the line (under systemd)
 * at most every 250 ms, and only when its text changed. */
void master_status_changed(void);

#endif
