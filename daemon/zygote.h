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
 * from that small address space with clone(CLONE_PARENT), so it
 * is the master's child as before: the master gets its SIGCHLD, reaps it
 * and stays the parent PR_SET_PDEATHSIG watches.  The zygote hands back the
 * pid and the master's end of the worker's socketpair (SCM_RIGHTS).
 *
 * Failures never stop the pool: a zygote that cannot be started (binary
 * missing, a module that no longer loads) leaves the master forking
 * workers itself, as before; one that dies or stops answering is killed
 * and reaped, and what it had not answered goes to a new one; a request
 * lost twice fails like any failed fork (the slot's backoff, queued work
 * failing after --recovery-timeout).
 *
 * Requests are asynchronous: a fork costs the zygote about as much as the
 * floor's fork, and a master that waited for each answer sat idle for most
 * of a recycle while results and the other workers waited.  The zygote
 * answers in order, so the master keeps its requests in a FIFO and matches
 * each answer to the oldest.  Supervised processes (proc.c) still fork from
 * the master: they run one function with the caller's argument.
 */
#ifndef ZYGOTE_H
#define ZYGOTE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <msgpack.h>

struct event_base;

#define ZYGOTE_NAME "mpool-zygote"

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

/* The answer to a request: err 0 with the worker's pid and the master's
 * end of its channel (CLOEXEC, now the callee's); -ENOTCONN when the fork
 * server could not be started (fork from the master instead);
 * -ECANCELED when zygote_stop() dropped the request (no fork happened);
 * another -errno when the fork failed (the zygote's clone failed, or the
 * zygote was lost twice). */
typedef void zygote_forked_fn(void *token, int err, pid_t pid, int fd);

/* Once, before anything else here: answers go to forked, from base's
 * loop; at most max_pending requests wait at once. */
int zygote_init(struct event_base *base, zygote_forked_fn *forked, unsigned max_pending);
void zygote_free(void);
/* Starts the zygote unless one runs.  0, or -errno after logging why; the
 * caller then forks from the master. */
int zygote_start(void);
/* Kills and waits for the zygote, if any (reload, exit).  Answers it sent
 * before it died are delivered, every other request is answered
 * -ECANCELED, all before it returns.  The next zygote_start() tries again
 * even after a failed start. */
void zygote_stop(void);
/* Asks for a pool worker with this task quota.  0: forked(token, ...)
 * follows, from the event loop, never from inside this call; -ENOTCONN: no
 * zygote runs and none can be started (fork from the master); -ENOBUFS:
 * max_pending requests wait already; another -errno: no zygote runs and
 * none could be started now (a process limit: a failed fork). */
int zygote_request(uint64_t quota, void *token);
/* Requests sent and not answered yet. */
unsigned zygote_pending(void);
/* SIGCHLD: true when pid was the zygote (it is forgotten; pending requests
 * go to a new one). */
bool zygote_reaped(pid_t pid, int status);
/* The zygote's pid, 0 when none runs. */
pid_t zygote_pid(void);
/* For status: nil when no zygote runs, else a map with its pid. */
void zygote_pack_status(msgpack_packer *pk);

#endif
