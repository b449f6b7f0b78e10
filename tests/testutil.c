/* testutil: helpers the Check suites share (see testutil.h). */
#include "testutil.h"

#include <check.h>

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

char tu_dir[64];
static pid_t procs[TU_MAX_PROCS];

int64_t tu_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void tu_tick(void)
{
	struct timespec ts = { 0, 10 * 1000000 };

	nanosleep(&ts, NULL);
}

char *tu_path_in(const char *name)
{
	/* One path per name in the test's directory: a directory made since
	 * (another test, without Check's fork) takes the slots anew. */
	static struct { char name[32]; char path[128]; } paths[32];
	static char dir_of[sizeof(tu_dir)];

	if (strcmp(dir_of, tu_dir) != 0) {
		memset(paths, 0, sizeof(paths));
		snprintf(dir_of, sizeof(dir_of), "%s", tu_dir);
	}
	for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
		if (paths[i].name[0] && strcmp(paths[i].name, name) == 0)
			return paths[i].path;
		if (!paths[i].name[0]) {
			snprintf(paths[i].name, sizeof(paths[i].name), "%s", name);
			snprintf(paths[i].path, sizeof(paths[i].path), "%s/%s", tu_dir, name);
			return paths[i].path;
		}
	}
	ck_abort_msg("too many paths");
	return NULL;
}

char *tu_slurp(const char *path)
{
	FILE *f = fopen(path, "re");
	char *buf;
	long n;

	if (!f)
		return strdup("");
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	buf = calloc(1, (size_t)n + 1);
	ck_assert(buf);
	if (n > 0 && fread(buf, 1, (size_t)n, f) != (size_t)n)
		buf[0] = '\0';
	fclose(f);
	return buf;
}

void tu_write_file(const char *path, const char *text, mode_t mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);

	ck_assert_msg(fd >= 0, "cannot write %s: %s", path, strerror(errno));
	ck_assert_msg(write(fd, text, strlen(text)) == (ssize_t)strlen(text),
		      "cannot write %s: %s", path, strerror(errno));
	close(fd);
}

pid_t tu_spawn(char *const argv[], const struct tu_spawn_opts *o)
{
	pid_t pid = fork();

	ck_assert_msg(pid >= 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		int fd = open(o->out ? o->out : "/dev/null",
			      O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);

		setpgid(0, 0);
		if (fd < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0)
			_exit(126);
		for (const char *const *v = (const char *const[]){ "NOTIFY_SOCKET",
		     "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
		     "LISTEN_FDNAMES", "JOURNAL_STREAM", "MPOOL_SOCKET", NULL }; *v; v++)
			unsetenv(*v);
		for (const char *const *e = o->env; e && *e; e++)
			putenv((char *)*e);
		if (o->uid && (setgid(o->uid) < 0 || setgroups(0, NULL) < 0 || setuid(o->uid) < 0))
			_exit(126);
		/* After setuid, which clears it. */
		if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
			_exit(126);
		execv(argv[0], argv);
		_exit(127);
	}
	setpgid(pid, pid);
	tu_track(pid);
	return pid;
}

void tu_track(pid_t pid)
{
	for (int i = 0; i < TU_MAX_PROCS; i++) {
		if (!procs[i]) {
			procs[i] = pid;
			return;
		}
	}
}

void tu_forget(pid_t pid)
{
	for (int i = 0; i < TU_MAX_PROCS; i++)
		if (procs[i] == pid)
			procs[i] = 0;
}

int tu_wait_exit(pid_t pid, int timeout_ms, const char *what)
{
	int64_t end = tu_now_ms() + timeout_ms;
	int status;

	for (;;) {
		pid_t r = waitpid(pid, &status, WNOHANG);

		if (r == pid) {
			tu_forget(pid);
			/* Its workers die with it; kill the group anyway. */
			kill(-pid, SIGKILL);
			return status;
		}
		ck_assert_msg(r == 0, "waitpid: %s", strerror(errno));
		ck_assert_msg(tu_now_ms() < end, "%s did not exit within %d ms", what, timeout_ms);
		tu_tick();
	}
}

int tu_run(char *const argv[], const char *const *env, char **ret_out)
{
	struct tu_spawn_opts o = { .env = env, .out = tu_path_in("run.out") };
	int status;

	unlink(o.out);
	status = tu_wait_exit(tu_spawn(argv, &o), TU_WAIT_MS, argv[0]);
	*ret_out = tu_slurp(o.out);
	return status;
}

void tu_kill_all(void)
{
	for (int i = 0; i < TU_MAX_PROCS; i++) {
		if (procs[i]) {
			kill(-procs[i], SIGKILL);
			waitpid(procs[i], NULL, 0);
			procs[i] = 0;
		}
	}
}
