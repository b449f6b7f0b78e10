/* worker: the entry function of a pool worker process, a plain blocking
 * loop on one socketpair.  It never returns into master code. */
#ifndef WORKER_H
#define WORKER_H

#include <stdint.h>
#include <sys/types.h>

/* fd: the worker's end of its socketpair.  parent: the pid of whoever
 * forked it (the master or the fork server), which it dies with.  quota:
 * tasks before a clean exit (0: unlimited). */
__attribute__((noreturn))
void worker_main(int fd, pid_t parent, uint64_t quota);
/* Drops the systemd variables meant for mpoold alone, so that no child
 * notifies, is watched or takes sockets in its name. */
void worker_drop_service_env(void);
/* fork_child() entry of a pool worker: arg points to its quota. */
void worker_entry(int fd, pid_t master, const void *arg);

/* A supervised one-off process: runs fn(arg) once and reports
 * [1, 0, error, result] on fd, then exits 0 (success) or 1 (the function
 * failed), unless the function exits or dies first. */
struct worker_once {
	const char *fn;           /* NUL-terminated "MODULE.FUNCTION" */
	const uint8_t *arg;       /* one MessagePack value */
	size_t arg_len;
};
void worker_once_entry(int fd, pid_t master, const void *arg);

#endif
