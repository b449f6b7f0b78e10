/* worker: the entry function of a pool worker process.  A plain blocking
 * loop on one socketpair: read a chunk, call the task function per item,
 * write the results.  It never returns into master code. */
#ifndef WORKER_H
#define WORKER_H

#include <stdint.h>
#include <sys/types.h>

/* fd: the worker's end of its socketpair.  master: the master's pid, to
 * notice an already dead master.  quota: tasks before a clean exit (0:
 * unlimited). */
__attribute__((noreturn))
void worker_main(int fd, pid_t master, uint64_t quota);

#endif
