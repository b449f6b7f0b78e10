/* proc: supervised one-off processes, Python's multiprocessing.Process
 * served by mpoold: each runs one MODULE.FUNCTION(arg) in a process of its
 * own, outside the pool's worker count.  As in Python, a daemon process is
 * terminated when its client's connection closes; a non-daemon one runs to
 * completion, and its outcome is kept for its owner's join (per-user
 * shares bound both). */
#ifndef PROC_H
#define PROC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <event2/event.h>
#include <msgpack.h>

struct conn;
struct proc;

void proc_init(struct event_base *base);
void proc_free(void);

struct proc_spec {
	const char *fn;           /* not NUL-terminated */
	uint32_t fn_len;
	const uint8_t *arg;
	size_t arg_len;
	const char *name;         /* not NUL-terminated; may be NULL */
	uint32_t name_len;
	bool daemon;              /* dies with conn (Python's daemon=True) */
};

/* Starts a process for conn's client, of uid owner (admin: exempt from the
 * per-user share and may use the slots kept for admins).  0 with *ret;
 * -EUSERS when --max-processes or a share refuses it; -errno when fork
 * failed (-EAGAIN: the kernel's process limits).  On failure why holds a
 * sentence for the client. */
int proc_spawn(struct conn *conn, uid_t owner, bool admin, const struct proc_spec *spec,
	       char *why, size_t why_size, struct proc **ret);
struct proc *proc_find(uint64_t id);
uid_t proc_owner(const struct proc *p);
bool proc_alive(const struct proc *p);
/* Answers msgid on conn with the process's state once it has exited, or
 * when timeout_ms passes (0: no timeout), whichever comes first. */
void proc_join(struct proc *p, struct conn *conn, uint64_t msgid, uint32_t timeout_ms);
/* SIGTERM, then SIGKILL after --process-grace (kill: SIGKILL now). */
void proc_stop(struct proc *p, bool kill);

/* A child that is no pool worker exited: false when it was none of ours
 * either. */
bool proc_reaped(pid_t pid, int status);
/* The client is gone: its joins are dropped and its daemon processes
 * terminated and forgotten. */
void proc_conn_gone(struct conn *conn);
/* Processes still running; only non-daemon ones (those a drain waits for,
 * as Python's parent joins them at exit) when nondaemon_only. */
unsigned proc_running(bool nondaemon_only);
void proc_kill_all(void);

/* spawn's answer, {"id", "pid"}, as a conn_reply packer (arg: the proc). */
void proc_pack_spawned(msgpack_packer *pk, const void *arg);
/* Every process without its outcome (status, processes: anyone may list). */
void proc_pack_all(msgpack_packer *pk);
/* status's process_limits map. */
void proc_pack_limits(msgpack_packer *pk);

#endif
