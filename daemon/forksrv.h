/* forksrv: the fork server, the master's side.
 *
 * Workers are forked by mpool-forksrv, a small process the master starts by
 * fork+exec (again on reload) that links only what a worker needs and
 * loads the modules before any fork: a fork from it is far cheaper than one
 * from the master, and recycling pays one per task.  It reaps its workers
 * and reports each death in order with its answers, so the master sees a
 * worker's birth before its death.  Workers die with their fork server
 * (PR_SET_PDEATHSIG), it dies with the master, and the master is a child
 * subreaper, so it reaps orphaned workers itself with their real status.
 *
 * Module code that must run before any fork (ABI 2's load: Python imports)
 * runs there, never in the master; the hello carries the names of the
 * functions it returned (registry.h).  That may take long, so the master
 * serves meanwhile and takes the hello from its loop, bounded by
 * --fork-server-timeout.
 *
 * Failures never stop the pool: without a fork server the master forks
 * workers itself (without the functions only a fork server can name); one
 * that dies or stops answering is killed, and what it had not answered goes
 * to a new one; a request lost twice fails.  On reload it is retired, not
 * killed: it keeps reporting its workers' deaths and leaves with the last.
 * It answers in order, so the master matches each answer to its oldest
 * request. */
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
	FORKSRV_HELLO = 1,         /* err 0 and its pid once the modules are loaded,
				   * -EINVAL when one failed; status: the size of the
				   * message of load hooks' function names that
				   * follows (0: none) */
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

/* err 0 with the worker's pid and the master's end of its channel
 * (CLOEXEC, now the callee's); -ENOTCONN: no fork server (fork from the
 * master instead); -ECANCELED: dropped, no fork happened; another -errno:
 * the fork failed. */
typedef void forksrv_forked_fn(void *token, int err, pid_t pid, int fd);
typedef void forksrv_exited_fn(pid_t pid, int status);
/* A fork server forksrv_start() started has loaded the modules (err 0), or
 * did not start (-errno, logged; requests fork from the master).  Not
 * called for a start that failed inside forksrv_start(). */
typedef void forksrv_started_fn(int err);

/* Once, first: at most max_pending requests wait at once.  Makes the
 * master a child subreaper.  0, or -errno. */
int forksrv_init(struct event_base *base, forksrv_forked_fn *forked, forksrv_exited_fn *exited,
		forksrv_started_fn *started, unsigned max_pending);
void forksrv_free(void);
/* Starts the fork server unless one runs, and returns at once: started()
 * follows from the loop.  0, or -errno after logging why. */
int forksrv_start(void);
bool forksrv_loading(void);
/* Reload: the fork server takes no more requests and leaves once its
 * workers have (one still loading is killed).  Before it returns, what it
 * reported is delivered and every other request answered -ECANCELED.  The
 * next forksrv_start() starts a new one, even after a failed start. */
void forksrv_retire(void);
/* Exit: kills every fork server and waits for them (their workers become
 * the master's to reap); delivers what they reported, cancels the rest. */
void forksrv_stop(void);
/* 0: forked(token, ...) follows from the loop, never from inside this
 * call; -ENOTCONN: no fork server runs and none can be started (fork from
 * the master); -ENOBUFS: max_pending requests wait already; another
 * -errno: none could be started now (a failed fork). */
int forksrv_request(uint64_t quota, void *token);
/* Delivers what the fork servers have sent: before the master looks up a
 * pid it reaped, which may be a worker of a fork server that just died. */
void forksrv_collect(void);
/* A worker the master killed this long ago, and whose death no fork
 * server has reported: its fork server is stuck and is killed, so that its
 * workers become the master's to reap. */
#define FORKSRV_REPORT_MS 3000
void forksrv_overdue(pid_t worker);
/* SIGCHLD: true when pid was a fork server. */
bool forksrv_reaped(pid_t pid, int status);
/* status: nil when none runs, else its pid and state. */
void forksrv_pack_status(msgpack_packer *pk);

#endif
