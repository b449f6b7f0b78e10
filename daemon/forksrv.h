/* forksrv: the fork server, the master's side.
 *
 * Pool workers are forked by a small helper, mpool-forksrv, which the master
 * starts by fork+exec once (and again on reload): it links only what a
 * worker needs (the task modules, msgpack, the worker loop; no libevent, no
 * libsystemd) and loads the modules before any fork.  A fork from that
 * small process costs a fraction of one from the master, which is what
 * recycling pays per task (bench/README.md has the figures).
 *
 * Workers are made by fork(), so atfork handlers and glibc's own fix-ups run
 * in each, and they are the fork server's children: it reaps them and
 * reports each death (pid, wait status) to the master in order with its
 * answers, so the master sees a worker's birth before its death.  The
 * master still signals workers by pid.  Each worker dies with its fork
 * server (PR_SET_PDEATHSIG) and the fork server with the master.  The
 * master is a child subreaper, so workers whose fork server died become
 * its children and it reaps them itself, with their real status.
 *
 * The fork server is also where module code that must run before any
 * fork runs (module ABI 2's load: the Python module's imports), never in
 * the master: its hello carries the names of the functions that code
 * returned, which the master then accepts (registry.h).  That code may take
 * long (a large Python library), so the master does not wait for the
 * hello: it serves clients meanwhile, keeps the requests for workers until
 * the hello is in, and takes it from its event loop.  --fork-server-timeout
 * bounds the wait: one that has not said hello by then is killed, as one
 * that dies or talks nonsense before it is, and that is a failed start.
 *
 * Failures never stop the pool: a fork server that cannot be started
 * (binary missing, a module that no longer loads, a load past the timeout)
 * leaves the master forking workers itself, without the functions only a fork server can
 * name; one that dies or stops answering is killed and
 * reaped, and what it had not answered goes to a new one; a request lost
 * twice fails like any failed fork.  On reload the fork server is retired,
 * not killed: it takes no more requests, keeps reporting the deaths of its
 * workers, and leaves with the last of them.
 *
 * Requests are asynchronous, so the master serves clients while a worker
 * is forked; the fork server answers in order, so the master keeps its
 * requests in a FIFO and matches each answer to the oldest. */
#ifndef FORKSRV_H
#define FORKSRV_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <msgpack.h>

struct event_base;

#define FORKSRV_NAME "mpool-forksrv"

/* The wire, over a SOCK_SEQPACKET pair; private to one build (the fork
 * server refuses an mpoold of another version). */
struct forksrv_req {
	uint64_t quota;           /* the worker's task quota; 0: unlimited */
};
enum forksrv_kind {
	FORKSRV_HELLO = 1,         /* err 0 and its pid once the modules are loaded;
				   * err -EINVAL when one failed (it logged which).
				   * status: the size of the message that follows,
				   * the names of the functions the modules' load
				   * hooks returned (registry.h), at most
				   * FORKSRV_NAMES_MAX bytes; none when 0 */
	FORKSRV_FORKED,            /* the answer to the oldest request: err 0 and the
				   * worker's pid, its channel as SCM_RIGHTS; or -errno */
	FORKSRV_EXITED,            /* it reaped worker pid: status as from waitpid */
};
#define FORKSRV_NAMES_MAX (64 * 1024)
struct forksrv_rep {
	int32_t kind;
	int32_t err;
	int32_t pid;
	int32_t status;
};

/* The answer to a request: err 0 with the worker's pid and the master's
 * end of its channel (CLOEXEC, now the callee's); -ENOTCONN when the fork
 * server could not be started (fork from the master instead);
 * -ECANCELED when the request was dropped (no fork happened); another
 * -errno when the fork failed (the fork server's fork failed, or it was
 * lost twice). */
typedef void forksrv_forked_fn(void *token, int err, pid_t pid, int fd);
/* A worker of a fork server died; status as from waitpid(). */
typedef void forksrv_exited_fn(pid_t pid, int status);
/* A fork server that forksrv_start() started has loaded the modules (err
 * 0: the master knows their functions now, and requests go to it), or did
 * not start (-errno, logged; requests fork from the master).  Not called
 * for a start that failed inside forksrv_start(). */
typedef void forksrv_started_fn(int err);

/* Once, before anything else here: answers go to forked, deaths to
 * exited and the end of a start to started, from base's loop or from the
 * calls below that say so; at most max_pending requests wait at once.
 * Makes the master a child subreaper.  0, or -errno. */
int forksrv_init(struct event_base *base, forksrv_forked_fn *forked, forksrv_exited_fn *exited,
		forksrv_started_fn *started, unsigned max_pending);
void forksrv_free(void);
/* Starts the fork server unless one runs, and returns at once: it loads
 * the modules meanwhile (forksrv_loading()), and started() follows from
 * the loop.  0, or -errno after logging why; the caller then forks from
 * the master. */
int forksrv_start(void);
/* True while the current fork server is loading the modules: requests
 * wait for it. */
bool forksrv_loading(void);
/* Reload: the fork server takes no more requests and leaves once its
 * workers have (one still loading the modules is killed); answers and deaths it reports before it returns are
 * delivered, every other request is answered -ECANCELED, all before it
 * returns.  The next forksrv_start() starts a new one, even after a failed
 * start. */
void forksrv_retire(void);
/* Exit: kills every fork server, retired ones too, and waits for them;
 * their workers die with them and become the master's children to reap.
 * Delivers what they reported and cancels every request. */
void forksrv_stop(void);
/* Asks for a pool worker with this task quota.  0: forked(token, ...)
 * follows, from the event loop, never from inside this call (once the fork
 * server has loaded the modules, or failed to); -ENOTCONN: no
 * fork server runs and none can be started (fork from the master);
 * -ENOBUFS: max_pending requests wait already; another -errno: none runs
 * and none could be started now (a process limit: a failed fork). */
int forksrv_request(uint64_t quota, void *token);
/* Requests sent and not answered yet. */
unsigned forksrv_pending(void);
/* Delivers every answer and death the fork servers have sent: before the
 * master looks up a pid it reaped, which may be a worker of a fork server
 * that has just died. */
void forksrv_collect(void);
/* A worker the master killed this long ago and whose death no fork server
 * has reported: forksrv_overdue(). */
#define FORKSRV_REPORT_MS 3000
/* Its fork server, if it has one, is stuck (stopped, say): it is killed,
 * so that its workers die and become the master's children to reap. */
void forksrv_overdue(pid_t worker);
/* SIGCHLD: true when pid was a fork server (it is forgotten; pending
 * requests go to a new one). */
bool forksrv_reaped(pid_t pid, int status);
/* For status: nil when no fork server runs, else a map with its pid and
 * state (loading, ready). */
void forksrv_pack_status(msgpack_packer *pk);

#endif
