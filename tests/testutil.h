/* testutil: helpers the Check suites share that know nothing of mpoold
 * (tests/fixture.c starts and drives the daemon): the test's temporary
 * directory and its files, and child processes, each in its own process
 * group, dying with the test and killed by tu_kill_all().  Failures fail
 * the current test (Check's ck_assert). */
#ifndef MPOOL_TESTUTIL_H
#define MPOOL_TESTUTIL_H

#include <stdint.h>
#include <sys/types.h>

#define TU_WAIT_MS 20000        /* how long tu_run waits for its command */
#define TU_MAX_PROCS 8          /* process groups tu_kill_all knows of */

/* This test's temporary directory, which the suite makes and removes. */
extern char tu_dir[64];

/* CLOCK_MONOTONIC in milliseconds. */
int64_t tu_now_ms(void);

/* A 10 ms sleep, between the polls of a wait with a deadline. */
void tu_tick(void);

/* tu_dir/name; the same name always gives the same pointer, valid for the
 * whole test. */
char *tu_path_in(const char *name);

/* The whole file, NUL-terminated (the caller frees it); "" when it cannot
 * be opened. */
char *tu_slurp(const char *path);

/* Writes text to path, made with mode (before the umask) or truncated. */
void tu_write_file(const char *path, const char *text, mode_t mode);

struct tu_spawn_opts {
	const char *const *env;     /* extra NAME=value */
	const char *out;            /* stdout and stderr go here; NULL: /dev/null */
	uid_t uid;                  /* run as this user (0: unchanged) */
};

/* Forks argv in its own process group, dying with us (PR_SET_PDEATHSIG),
 * and remembers it for tu_kill_all.  Variables systemd might have given
 * the test runner itself never reach the child. */
pid_t tu_spawn(char *const argv[], const struct tu_spawn_opts *o);

/* Remembers pid's process group for tu_kill_all, or forgets it. */
void tu_track(pid_t pid);
void tu_forget(pid_t pid);

/* Waits for pid and returns its wait status; fails the test after
 * timeout_ms (tu_kill_all kills it). */
int tu_wait_exit(pid_t pid, int timeout_ms, const char *what);

/* Runs argv to its end (at most TU_WAIT_MS) with env added; returns its
 * wait status and its output (stdout and stderr) in *ret_out, which the
 * caller frees. */
int tu_run(char *const argv[], const char *const *env, char **ret_out);

/* Kills and reaps every process group still remembered: in teardown. */
void tu_kill_all(void);

#endif
