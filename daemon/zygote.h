/* zygote: the fork server, the master's side.
 *
 * Forking the master costs in proportion to what it maps and has touched:
 * libsystemd alone drags in libgcrypt, liblzma, libzstd, liblz4 and libcap
 * (83 areas in all), libevent and the clients' buffers come on top, and
 * after each fork the master takes copy-on-write faults on its own heap.
 * So pool workers are forked by a small helper, mpool-zygote, which the
 * master starts by fork+exec once (and again on reload): it links only what
 * a worker needs (the task modules, msgpack, the worker loop; no libevent,
 * no libsystemd), loads the modules like the master did at start (RTLD_NOW,
 * before any fork) and then waits for requests.  Each worker is forked
 * from that small address space with clone(CLONE_PARENT | SIGCHLD), so it
 * is the master's child as before: the master gets its SIGCHLD, reaps it
 * and stays the parent PR_SET_PDEATHSIG watches.  The zygote hands back the
 * pid and the master's end of the worker's socketpair (SCM_RIGHTS).
 *
 * Failures never stop the pool: a zygote that cannot be started (binary
 * missing, a module that no longer loads) leaves the master forking
 * workers itself, as before; one that dies or stops answering is killed
 * and reaped, the fork that asked fails like any failed fork (the slot's
 * backoff, queued work failing after --recovery-timeout) and the next
 * spawn starts a new one.  Supervised processes (proc.c) still fork from
 * the master: they run one function with the caller's argument. */
#ifndef ZYGOTE_H
#define ZYGOTE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

/* The wire, over a SOCK_SEQPACKET pair: one message each way per fork. */
struct zygote_req {
	uint64_t quota;           /* the worker's task quota; 0: unlimited */
};
struct zygote_rep {
	int32_t err;              /* 0, or -errno: the fork failed */
	int32_t pid;              /* the worker, with its fd as SCM_RIGHTS */
};
/* The zygote's first message: err 0 and its pid once the modules are
 * loaded; err -EINVAL when one failed (it logged which). */

/* Starts the zygote unless one runs.  0, or -errno after logging why; the
 * caller then forks from the master. */
int zygote_start(void);
/* Kills and waits for the zygote, if any (reload, exit).  The next
 * zygote_start() tries again even after a failed start. */
void zygote_stop(void);
/* Forks a pool worker through the zygote: 0 with its pid and the master's
 * end of its channel (CLOEXEC); -ENOTCONN when no zygote runs and none
 * could be started (fork from the master); another -errno when the fork
 * failed (the zygote's clone failed, or the zygote was lost). */
int zygote_fork(uint64_t quota, pid_t *ret_pid, int *ret_fd);
/* SIGCHLD: true when pid was the zygote (it is forgotten; the next fork
 * starts a new one). */
bool zygote_reaped(pid_t pid, int status);
/* The zygote's pid, 0 when none runs. */
pid_t zygote_pid(void);

#endif
