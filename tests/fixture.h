/* fixture: runs a real mpoold for one integration test, and the helpers the
 * tests share (status snapshots, waits with deadlines, raw sockets, item
 * packing, forked client processes).
 *
 * Isolation (STYLE.md, Tests): every daemon runs in its own process group
 * and temporary directory, dies with the test process (PR_SET_PDEATHSIG; its
 * workers die with it by their own), and fx_stop() kills the group and
 * proves that no worker pid ever seen in a status is still alive.  The test
 * process makes itself a child subreaper, so orphaned workers come back to
 * it and are reaped instead of lingering as zombies.
 *
 * Failures: REQUIRE()/REQUIREF() and every fixture helper fail through
 * fx_fail(), which first tears the current daemon down, then aborts the test
 * with the daemon's log tail in the message (the full tail goes to stderr).
 * A daemon that died by itself is reported as a crash ("killed by SIGSEGV")
 * or an exit ("exited with status 1"), never as a plain assertion.  A
 * watchdog (alarm) dumps the log and kills the daemon before Check's own
 * timeout would kill the test silently.
 *
 * Every wait has a deadline; polling runs every 10 ms; nothing sleeps as a
 * means of synchronisation. */
#ifndef MPOOL_TEST_FIXTURE_H
#define MPOOL_TEST_FIXTURE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <msgpack.h>
#include <mpool/mpool.h>

#define FX_WORKERS_DEFAULT 2
#define FX_MAX_WORKERS 512
#define FX_MAX_SEEN 1024
#define FX_READY_MS 10000      /* daemon start to all workers idle */
#define FX_WAIT_MS 20000       /* default deadline of a wait */
#define FX_WATCHDOG_S 55       /* below the test cases' 60 s timeout */

struct fx_worker {
	pid_t pid;
	char state[16];        /* starting, idle, busy, exiting */
	uint64_t tasks_done;
	int64_t job;           /* -1 when nil */
};

struct fx_totals {
	uint64_t workers, max_tasks_per_child, tasks_done, tasks_failed;
	uint64_t workers_started, workers_recycled, workers_died;
	uint64_t jobs_active, jobs_done, chunks_queued, clients;
};

struct fx_status {
	char version[32];
	int64_t protocol;
	pid_t pid;
	char state[16];        /* running, draining, terminating */
	unsigned n_workers;
	struct fx_worker workers[FX_MAX_WORKERS];
	struct fx_totals totals;
};

struct fx_seen {
	pid_t pid;
	unsigned long long start;   /* /proc/PID/stat starttime, 0 if unknown */
};

struct fx {
	char dir[64];
	char sock[96];
	char log[96];
	pid_t pid;             /* the daemon; 0 when none */
	unsigned workers;
	mpool *c;              /* the control connection (status, ping) */
	bool reaped;           /* the daemon was waited for */
	int wstatus;           /* its wait status, once reaped */
	bool may_exit;         /* the test expects the daemon to exit */
	struct fx_seen seen[FX_MAX_SEEN];
	unsigned n_seen;
};

/* ---- failing ---------------------------------------------------------- */

__attribute__((noreturn, format(printf, 4, 5)))
void fx_fail(const char *file, int line, const char *cond, const char *fmt, ...);

#define REQUIRE(c) do { \
	if (!(c)) \
		fx_fail(__FILE__, __LINE__, #c, " "); \
} while (0)

#define REQUIREF(c, ...) do { \
	if (!(c)) \
		fx_fail(__FILE__, __LINE__, #c, __VA_ARGS__); \
} while (0)

#define FAILF(...) fx_fail(__FILE__, __LINE__, "failed", __VA_ARGS__)

/* "exited with status 3", "killed by SIGSEGV (core dumped)". */
const char *fx_describe_wait(int wstatus, char *buf, size_t size);

/* ---- the daemon ------------------------------------------------------- */

/* Starts mpoold with --workers FX_WORKERS_DEFAULT (unless extra_args holds
 * --workers) and extra_args (NULL-terminated, may be NULL); returns when
 * ping answers and every worker is idle. */
void fx_start(struct fx *fx, const char *const *extra_args);
/* Kills the daemon's process group, reaps it, checks every worker ever seen
 * is gone, removes the directory.  Fails the test if the daemon had died
 * on its own and the test did not expect it (fx->may_exit). */
void fx_stop(struct fx *fx);

/* A new connection to the daemon, or the test fails. */
mpool *fx_connect(struct fx *fx);

/* Status through fx->c (or through c, for a second connection).  Records
 * the worker pids for fx_stop.  Fails the test when the call fails. */
void fx_status(struct fx *fx, struct fx_status *st);
void fx_status_on(struct fx *fx, mpool *c, struct fx_status *st);
/* Decodes a status map; false if it is not one. */
bool fx_status_parse(const msgpack_object *o, struct fx_status *st);

/* An unsigned int of the status by its path ("totals.recycled_by.reload"). */
uint64_t fx_status_get(struct fx *fx, const char *path);
unsigned fx_count_state(const struct fx_status *st, const char *state);
bool fx_has_worker(const struct fx_status *st, pid_t pid);
/* Pool full (n workers, as configured) and every worker idle. */
bool fx_pool_idle(const struct fx_status *st, unsigned n);

typedef bool (*fx_pred)(const struct fx_status *st, void *arg);
/* Polls status every 10 ms until pred holds; fails after timeout_ms with
 * what and the last status.  The matching status is copied to st (may be
 * NULL). */
void fx_wait_status(struct fx *fx, fx_pred pred, void *arg, int timeout_ms,
		    const char *what, struct fx_status *st);
void fx_wait_idle(struct fx *fx, int timeout_ms);

/* Waits for the daemon to exit; returns its wait status. */
int fx_wait_exit(struct fx *fx, int timeout_ms);

/* Worker pids seen so far: true when every one is gone (reaped, absent,
 * zombie, or its pid now belongs to another process). */
bool fx_seen_all_gone(struct fx *fx);
void fx_wait_seen_gone(struct fx *fx, int timeout_ms);
bool fx_pid_alive(pid_t pid, unsigned long long start);
unsigned long long fx_pid_starttime(pid_t pid);

/* VmRSS of pid in KiB, or -1. */
long fx_rss_kib(pid_t pid);

/* Last size bytes of the daemon's log, NUL-terminated. */
void fx_log_tail(const struct fx *fx, char *buf, size_t size);
/* True when the log holds s. */
bool fx_log_has(const struct fx *fx, const char *s);

/* ---- time --------------------------------------------------------------- */

int64_t fx_now_ms(void);
/* Sleeps 10 ms: the polling period of every wait. */
void fx_tick(void);

/* ---- items ---------------------------------------------------------------- */

void fx_sbuf_init(msgpack_sbuffer *sb, msgpack_packer *pk);
/* n integers first, first+1, ... */
void fx_pack_range(msgpack_packer *pk, int64_t first, uint64_t n);
/* n copies of v */
void fx_pack_repeat(msgpack_packer *pk, int64_t v, uint64_t n);
void fx_pack_str(msgpack_packer *pk, const char *s);
/* A bare integer argument in sb. */
void fx_arg_int(msgpack_sbuffer *sb, int64_t v);

/* An unsigned integer object's value; fails the test otherwise. */
uint64_t fx_obj_u64(const msgpack_object *o);
int64_t fx_obj_i64(const msgpack_object *o);
/* o[key] of a map, or NULL. */
const msgpack_object *fx_obj_get(const msgpack_object *map, const char *key);
/* A map's unsigned integer or string under key; false when absent or of
 * another type (*ret or buf untouched then). */
bool fx_get_u64(const msgpack_object *map, const char *key, uint64_t *ret);
bool fx_get_str(const msgpack_object *map, const char *key, char *buf, size_t size);
bool fx_obj_str_eq(const msgpack_object *o, const char *s);

/* ---- raw sockets ------------------------------------------------------------ */

struct fx_raw {
	int fd;
	msgpack_unpacker up;
	msgpack_unpacked msg;
};

void fx_raw_open(struct fx *fx, struct fx_raw *r);
void fx_raw_close(struct fx_raw *r);
/* Sends all bytes; returns 0, or -errno when the daemon hung up
 * (EPIPE/ECONNRESET) before they were all sent. */
int fx_raw_send(struct fx_raw *r, const void *buf, size_t len);
/* The next message in r->msg.data: 1; 0 at EOF (or ECONNRESET after the
 * last message).  Fails the test after timeout_ms. */
int fx_raw_next(struct fx_raw *r, int timeout_ms);
/* Exactly len bytes, raw (r->up must be empty). */
void fx_raw_read_exact(struct fx_raw *r, void *buf, size_t len, int timeout_ms);
/* The next message must be [1, msgid, err, res]: returns the error object
 * (nil object when none) and the result through pointers into r->msg. */
void fx_raw_response(struct fx_raw *r, uint64_t msgid, const msgpack_object **ret_err,
		     const msgpack_object **ret_res, int timeout_ms);
/* The next message must be [2, "error", [{code, message}]] followed by
 * EOF.  Returns the code. */
int64_t fx_raw_error_then_eof(struct fx_raw *r, int timeout_ms);
/* Packs [0, msgid, method, params...] with the params packed by the caller
 * next: returns a packer ready for the params array. */
void fx_req_head(msgpack_packer *pk, uint64_t msgid, const char *method);

/* Maps builtin.square over offset .. offset+n-1 on c and checks every
 * notification: inside the map, each item once, in order unless
 * opts->unordered, each result right, no item error, the summary right.
 * With expect_chunk, each notification lies within one chunk of that size
 * (a whole chunk, or a piece a worker reported early) and at least half the
 * chunks arrive whole.  Returns the number of notifications.  Fails the test
 * (or, in a forked client, exits 90). */
uint64_t fx_map_squares(mpool *c, uint64_t n, int64_t offset, const struct mpool_map_opts *opts,
			uint32_t expect_chunk);

/* ---- forked clients ------------------------------------------------------- */

/* Forks a client process running fn(arg) and leaving with _exit(fn's
 * return).  The child dies with the test (PDEATHSIG) and never touches
 * Check. */
pid_t fx_fork(int (*fn)(void *arg), void *arg);
/* Waits for a forked client; fails the test after timeout_ms (and kills
 * it).  Returns the wait status. */
int fx_wait_child(pid_t pid, int timeout_ms);
/* Fails unless the client exited 0; what names it in the message. */
void fx_expect_child_ok(pid_t pid, int timeout_ms, const char *what);

#endif
