/* faultfx: what the fault tests need beyond tests/fixture.h -- the status
 * keys of the worker lifecycle (quota, rss_kib, tasks_timed_out,
 * recycled_by, health, last_failure), a daemon start that does not wait for
 * a healthy pool (and may drop privileges and limit processes), running
 * mpoold to its exit, building a copy of testmod, and maps whose every item
 * is recorded.
 *
 * Everything fails the test through fixture.h's REQUIREF/FAILF; daemons
 * started here are torn down by fx_stop() like any other, and also at exit
 * if a failure left one running. */
#ifndef MPOOL_TEST_FAULTFX_H
#define MPOOL_TEST_FAULTFX_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "fixture.h"

/* ---- the environment (tests/meson.build sets it) -------------------------- */

/* Call in main() around srunner_run_all(): a test that fails leaves with
 * _exit(), so its temp dirs are swept by the runner afterwards. */
void ffx_runner_init(void);
void ffx_runner_sweep(void);

/* getenv(name), or the test fails naming it. */
const char *ffx_env(const char *name);

/* ---- the extended status ----------------------------------------------- */

struct ffx_worker {
	pid_t pid;
	char state[16];
	uint64_t tasks_done, quota, rss_kib;
};

struct ffx_status {
	char state[16];
	unsigned n_workers;
	struct ffx_worker workers[FX_MAX_WORKERS];
	uint64_t pool_size, tasks_done, tasks_failed, tasks_timed_out;  /* pool_size: totals.workers */
	uint64_t workers_started, workers_recycled, workers_died;
	uint64_t jobs_active, chunks_queued;
	uint64_t by_tasks, by_rss, by_lifetime, by_reload;   /* recycled_by */
	char health[16];
	bool has_failure;
	char last_failure[512];   /* "" when nil */
};

/* One status snapshot through c (NULL: fx->c), with every key the
 * lifecycle added; fails the test if one is missing or mistyped.  Records
 * the worker pids for fx_stop's check, like fx_status. */
void ffx_status(struct fx *fx, mpool *c, struct ffx_status *st);

typedef bool (*ffx_pred)(const struct ffx_status *st, void *arg);
/* Polls every 10 ms until pred holds (the matching snapshot in ret, which
 * may be NULL); fails after timeout_ms saying what and the last status. */
void ffx_wait(struct fx *fx, ffx_pred pred, void *arg, int timeout_ms, const char *what,
	      struct ffx_status *ret);

bool ffx_has_worker(const struct ffx_status *st, pid_t pid);
unsigned ffx_count_state(const struct ffx_status *st, const char *state);
/* n workers, all idle. */
bool ffx_pool_idle(const struct ffx_status *st, unsigned n);
/* A one-line summary for failure messages. */
const char *ffx_describe(const struct ffx_status *st, char *buf, size_t size);

/* ---- starting mpoold without waiting for a healthy pool ------------------- */

struct ffx_launch {
	bool drop_to_nobody;      /* setgid/setuid 65534 before exec */
	bool limit_nproc;         /* set RLIMIT_NPROC to nproc before exec */
	unsigned long nproc;
};

/* Starts mpoold like fx_start (own process group and temp dir, dies with
 * the test, a watchdog before Check's timeout) but returns as soon as it
 * answers ping: the pool may be degraded.  With drop_to_nobody the temp
 * dir is made world-writable first.  Fails the test (with the log tail)
 * if mpoold exits first. */
void ffx_start(struct fx *fx, const char *const *extra_args, const struct ffx_launch *how);

/* Fails the test with the daemon's log tail appended, after tearing the
 * daemon down (for daemons from ffx_start, which fx_fail does not know). */
#define FREQUIRE(fx, c, ...) do { \
	if (!(c)) \
		ffx_fail(fx, __FILE__, __LINE__, #c, __VA_ARGS__); \
} while (0)
__attribute__((noreturn, format(printf, 5, 6)))
void ffx_fail(struct fx *fx, const char *file, int line, const char *cond, const char *fmt, ...);

/* How many times s occurs in the daemon's log. */
unsigned ffx_log_count(const struct fx *fx, const char *s);

/* Processes (threads included, as RLIMIT_NPROC counts them) whose real uid
 * is uid. */
unsigned ffx_count_uid_tasks(uid_t uid);

/* ffx_count_uid_tasks once it has stopped changing and holds no zombie
 * (tasks of an earlier test may still be on their way out), or after 5 s. */
unsigned ffx_settle_uid_tasks(uid_t uid);

/* Sets RLIMIT_NPROC (soft and hard) of pid, a process of nobody's, from a
 * helper that becomes nobody first (prlimit on another user's process
 * needs CAP_SYS_RESOURCE, which root in a container may lack). */
void ffx_set_nproc_of_nobody(pid_t pid, unsigned long limit);

/* Forks a process that becomes uid/gid 65534 and sleeps until killed: it
 * takes one of nobody's RLIMIT_NPROC slots.  Killed at exit if still
 * there. */
pid_t ffx_spawn_nobody_placeholder(void);
/* Kills and reaps it: a zombie would still hold the slot. */
void ffx_end_placeholder(pid_t pid);

/* ---- running mpoold to its exit ------------------------------------------- */

/* Runs mpoold with args (after --socket in a temp dir), stdin /dev/null,
 * stdout and stderr into out (NUL-terminated, truncated to size).  Returns
 * its wait status; kills it and fails the test if it runs past
 * timeout_ms. */
int ffx_run_mpoold(const char *const *args, char *out, size_t size, int timeout_ms);

/* ---- building a copy of testmod --------------------------------------------- */

/* Compiles tests/testmod.c with -DTESTMOD_VERSION=version into out_path
 * ($CC, else $MPOOL_TEST_CC, else cc).  Writes a temporary file next to it
 * and rename()s it over out_path, as a linker does. */
void ffx_build_testmod(const char *out_path, int version);

/* A private temp directory (mode 0755), removed with its files at exit. */
void ffx_tempdir(char *buf, size_t size);

/* ---- calls ------------------------------------------------------------------ */

/* apply with options; arg is one packed value. */
int ffx_apply(mpool *c, const char *fn, const msgpack_sbuffer *arg, uint32_t timeout_ms,
	      uint32_t retries, mpool_value **ret);
int ffx_apply_int(mpool *c, const char *fn, int64_t arg, uint32_t timeout_ms, mpool_value **ret);

/* Every item of a map, as delivered. */
struct ffx_item {
	bool got;                 /* delivered (result or error) */
	msgpack_object_type type; /* of the result; NIL where it failed */
	int64_t i;                /* integer results */
	char s[128];              /* string results */
	int code;                 /* 0, or the item's error code */
	char msg[256];
};

struct ffx_map {
	uint64_t n;
	struct ffx_item *items;
	uint64_t pieces;          /* result notifications */
	uint64_t failed;          /* item errors seen */
	/* Called after each piece is recorded (may be NULL). */
	void (*on_piece)(struct ffx_map *m, uint64_t first, uint32_t count);
	void *ud;
};

/* Runs the map, recording every item; checks the protocol's promises on
 * the way (each item once, errors only for nil results, in order unless
 * unordered).  Returns mpool_map's code; *sum is written when it is 0. */
int ffx_map_run(mpool *c, const char *fn, const msgpack_sbuffer *items, uint64_t n,
		const struct mpool_map_opts *o, struct ffx_map *m, struct mpool_map_summary *sum);
void ffx_map_free(struct ffx_map *m);

/* Pack helpers for testmod.mixed items. */
void ffx_pack_cmd(msgpack_packer *pk, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
