/* faultfx: helpers of the fault tests; see faultfx.h for the contract. */
#include "faultfx.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define NOBODY 65534
#define MAX_TRACKED 8
#define TAIL_IN_MSG 700

/* What must not outlive the test process, even when a failure ends it in
 * the middle (Check's forked test calls exit(), so atexit runs).  Copies,
 * not pointers: a struct fx lives on a test's stack. */
static struct {
	pid_t pid;
	char dir[64];
} daemons[MAX_TRACKED];
static char tempdirs[MAX_TRACKED][96];
static pid_t placeholders[MAX_TRACKED];
static bool cleanup_registered;
static pid_t runner;             /* the Check runner: names our temp dirs */

static void remove_tree(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	char path[512];

	if (!d)
		return;
	while ((e = readdir(d))) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
		unlink(path);
	}
	closedir(d);
	rmdir(dir);
}

/* Kills what ffx_start and ffx_spawn_nobody_placeholder started (fx_stop
 * or the fixture's own teardown handles everything else). */
static void kill_tracked(void)
{
	for (int i = 0; i < MAX_TRACKED; i++) {
		/* fx_stop removes the directory: one still there was not stopped. */
		if (daemons[i].pid > 0 && access(daemons[i].dir, F_OK) == 0) {
			int64_t end = fx_now_ms() + 3000;

			killpg(daemons[i].pid, SIGKILL);
			waitpid(daemons[i].pid, NULL, 0);
			/* Its workers come back to us (a subreaper): reap them
			 * before we go, or they linger as zombies of PID 1. */
			while (kill(-daemons[i].pid, 0) == 0 && fx_now_ms() < end) {
				while (waitpid(-1, NULL, WNOHANG) > 0)
					;
				fx_tick();
			}
			remove_tree(daemons[i].dir);
		}
		daemons[i].pid = 0;
		if (placeholders[i] > 0) {
			kill(placeholders[i], SIGKILL);
			waitpid(placeholders[i], NULL, 0);
			placeholders[i] = 0;
		}
	}
	/* Orphaned workers reparented to us (the fixture makes us a subreaper). */
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
}

static void cleanup_at_exit(void)
{
	kill_tracked();
	for (int i = 0; i < MAX_TRACKED; i++) {
		if (tempdirs[i][0]) {
			remove_tree(tempdirs[i]);
			tempdirs[i][0] = '\0';
		}
	}
}

/* A failed test leaves through _exit (Check), past atexit: its temp dirs
 * carry the runner's pid, and the runner sweeps them. */
static void temp_pattern(char *buf, size_t size)
{
	snprintf(buf, size, "/tmp/mpool-ft-%d-XXXXXX", (int)(runner ? runner : getpid()));
}

void ffx_runner_init(void)
{
	runner = getpid();
}

void ffx_runner_sweep(void)
{
	char prefix[64];
	DIR *d = opendir("/tmp");
	struct dirent *e;

	if (!d)
		return;
	snprintf(prefix, sizeof(prefix), "mpool-ft-%d-", (int)(runner ? runner : getpid()));
	while ((e = readdir(d))) {
		char path[300];

		if (strncmp(e->d_name, prefix, strlen(prefix)) != 0)
			continue;
		snprintf(path, sizeof(path), "/tmp/%s", e->d_name);
		remove_tree(path);
	}
	closedir(d);
}

static void track_cleanup(void)
{
	if (!cleanup_registered) {
		atexit(cleanup_at_exit);
		cleanup_registered = true;
	}
}

const char *ffx_env(const char *name)
{
	const char *v = getenv(name);

	REQUIREF(v && *v, "%s is not set (tests/meson.build sets it)", name);
	return v;
}

/* ---- the extended status ----------------------------------------------- */

/* NULL on success, else the key that is missing or mistyped. */
static const char *parse_status(const msgpack_object *o, struct ffx_status *st)
{
	const msgpack_object *w, *t, *by, *lf;

	memset(st, 0, sizeof(*st));
	if (!fx_get_str(o, "state", st->state, sizeof(st->state)))
		return "state";
	w = fx_obj_get(o, "workers");
	if (!w || w->type != MSGPACK_OBJECT_ARRAY || w->via.array.size > FX_MAX_WORKERS)
		return "workers";
	st->n_workers = w->via.array.size;
	for (unsigned i = 0; i < st->n_workers; i++) {
		const msgpack_object *m = &w->via.array.ptr[i];
		struct ffx_worker *fw = &st->workers[i];
		uint64_t pid;

		if (!fx_get_u64(m, "pid", &pid))
			return "workers[].pid";
		fw->pid = (pid_t)pid;
		if (!fx_get_str(m, "state", fw->state, sizeof(fw->state)))
			return "workers[].state";
		if (!fx_get_u64(m, "tasks_done", &fw->tasks_done))
			return "workers[].tasks_done";
		if (!fx_get_u64(m, "quota", &fw->quota))
			return "workers[].quota";
		if (!fx_get_u64(m, "rss_kib", &fw->rss_kib))
			return "workers[].rss_kib";
	}
	t = fx_obj_get(o, "totals");
	if (!t || t->type != MSGPACK_OBJECT_MAP)
		return "totals";
#define U(k) if (!fx_get_u64(t, #k, &st->k)) return "totals." #k
	if (!fx_get_u64(t, "workers", &st->pool_size))
		return "totals.workers";
	U(tasks_done);
	U(tasks_failed);
	U(tasks_timed_out);
	U(workers_started);
	U(workers_recycled);
	U(workers_died);
	U(jobs_active);
	U(chunks_queued);
#undef U
	by = fx_obj_get(t, "recycled_by");
	if (!by || by->type != MSGPACK_OBJECT_MAP)
		return "totals.recycled_by";
	if (!fx_get_u64(by, "tasks", &st->by_tasks))
		return "totals.recycled_by.tasks";
	if (!fx_get_u64(by, "rss", &st->by_rss))
		return "totals.recycled_by.rss";
	if (!fx_get_u64(by, "lifetime", &st->by_lifetime))
		return "totals.recycled_by.lifetime";
	if (!fx_get_u64(by, "reload", &st->by_reload))
		return "totals.recycled_by.reload";
	if (!fx_get_str(t, "health", st->health, sizeof(st->health)))
		return "totals.health";
	lf = fx_obj_get(t, "last_failure");
	if (!lf)
		return "totals.last_failure";
	if (lf->type == MSGPACK_OBJECT_STR) {
		st->has_failure = true;
		snprintf(st->last_failure, sizeof(st->last_failure), "%.*s", (int)lf->via.str.size,
			 lf->via.str.ptr);
	} else if (lf->type != MSGPACK_OBJECT_NIL) {
		return "totals.last_failure";
	}
	return NULL;
}

void ffx_status(struct fx *fx, mpool *c, struct ffx_status *st)
{
	struct fx_status base;
	mpool_value *v = NULL;
	const char *bad;
	int r;

	if (!c)
		c = fx->c;
	/* The fixture's snapshot only records the pids for fx_stop's check. */
	fx_status_on(fx, c, &base);
	r = mpool_status(c, &v);
	FREQUIRE(fx, r == 0, "mpool_status: %s: %s", mpool_strerror(-r), mpool_errmsg(c));
	bad = parse_status(mpool_value_get(v), st);
	mpool_value_free(v);
	FREQUIRE(fx, bad == NULL, "the status lacks '%s' or it has the wrong type", bad);
}

bool ffx_has_worker(const struct ffx_status *st, pid_t pid)
{
	for (unsigned i = 0; i < st->n_workers; i++)
		if (st->workers[i].pid == pid)
			return true;
	return false;
}

unsigned ffx_count_state(const struct ffx_status *st, const char *state)
{
	unsigned n = 0;

	for (unsigned i = 0; i < st->n_workers; i++)
		n += strcmp(st->workers[i].state, state) == 0;
	return n;
}

bool ffx_pool_idle(const struct ffx_status *st, unsigned n)
{
	return st->n_workers == n && ffx_count_state(st, "idle") == n;
}

const char *ffx_describe(const struct ffx_status *st, char *buf, size_t size)
{
	int off = snprintf(buf, size, "state %s, health %s, workers [", st->state, st->health);

	for (unsigned i = 0; i < st->n_workers && off < (int)size; i++)
		off += snprintf(buf + off, size - (size_t)off, "%s%d %s done %llu quota %llu",
				i ? ", " : "", (int)st->workers[i].pid, st->workers[i].state,
				(unsigned long long)st->workers[i].tasks_done,
				(unsigned long long)st->workers[i].quota);
	if (off < (int)size)
		snprintf(buf + off, size - (size_t)off,
			 "], started %llu, died %llu, timed out %llu, recycled %llu "
			 "(tasks %llu rss %llu lifetime %llu reload %llu), jobs %llu, "
			 "last_failure '%s'",
			 (unsigned long long)st->workers_started, (unsigned long long)st->workers_died,
			 (unsigned long long)st->tasks_timed_out,
			 (unsigned long long)st->workers_recycled, (unsigned long long)st->by_tasks,
			 (unsigned long long)st->by_rss, (unsigned long long)st->by_lifetime,
			 (unsigned long long)st->by_reload, (unsigned long long)st->jobs_active,
			 st->has_failure ? st->last_failure : "(nil)");
	return buf;
}

void ffx_wait(struct fx *fx, ffx_pred pred, void *arg, int timeout_ms, const char *what,
	      struct ffx_status *ret)
{
	int64_t end = fx_now_ms() + timeout_ms;
	struct ffx_status st;
	char desc[1024];

	for (;;) {
		ffx_status(fx, NULL, &st);
		if (pred(&st, arg)) {
			if (ret)
				*ret = st;
			return;
		}
		if (fx_now_ms() > end)
			ffx_fail(fx, __FILE__, __LINE__, what, "waited %d ms for: %s; last status: %s",
				 timeout_ms, what, ffx_describe(&st, desc, sizeof(desc)));
		fx_tick();
	}
}

/* ---- failing with the log ------------------------------------------------ */

void ffx_fail(struct fx *fx, const char *file, int line, const char *cond, const char *fmt, ...)
{
	static char tail[16384];
	char msg[700];
	const char *short_tail;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	tail[0] = '\0';
	/* fx_fail tears down only the fixture's own daemon. */
	kill_tracked();
	if (fx && fx->log[0]) {
		fx_log_tail(fx, tail, sizeof(tail));
		fprintf(stderr, "---- mpoold log (tail) ----\n%s---- end of mpoold log ----\n", tail);
	}
	short_tail = strlen(tail) > TAIL_IN_MSG ? tail + strlen(tail) - TAIL_IN_MSG : tail;
	fx_fail(file, line, cond, "%s\n---- mpoold log (tail) ----\n%s", msg, short_tail);
}

unsigned ffx_log_count(const struct fx *fx, const char *s)
{
	static char buf[1 << 20];
	unsigned n = 0;
	const char *p = buf;

	fx_log_tail(fx, buf, sizeof(buf));
	while ((p = strstr(p, s))) {
		n++;
		p += strlen(s);
	}
	return n;
}

/* ---- starting mpoold ------------------------------------------------------ */

static void track_daemon(const struct fx *fx)
{
	track_cleanup();
	for (int i = 0; i < MAX_TRACKED; i++) {
		if (daemons[i].pid <= 0 || access(daemons[i].dir, F_OK) != 0) {
			daemons[i].pid = fx->pid;
			snprintf(daemons[i].dir, sizeof(daemons[i].dir), "%s", fx->dir);
			return;
		}
	}
}

/* A test about to hit Check's timeout says so, with the log of the
 * daemon it started, and takes that daemon down.  Only async-signal-safe
 * calls. */
static const char *watched_log;

static void watchdog(int sig)
{
	static const char head[] = "\nfaultfx watchdog: the test hung; mpoold log tail:\n";
	char buf[4096];
	ssize_t n;
	int fd;

	(void)sig;
	if (write(2, head, sizeof(head) - 1) < 0)
		_exit(98);
	fd = watched_log ? open(watched_log, O_RDONLY) : -1;
	if (fd >= 0) {
		off_t end = lseek(fd, 0, SEEK_END);

		lseek(fd, end > (off_t)sizeof(buf) ? end - (off_t)sizeof(buf) : 0, SEEK_SET);
		n = read(fd, buf, sizeof(buf));
		if (n > 0 && write(2, buf, (size_t)n) < 0)
			_exit(98);
		close(fd);
	}
	for (int i = 0; i < MAX_TRACKED; i++) {
		if (daemons[i].pid > 0)
			killpg(daemons[i].pid, SIGKILL);
		if (placeholders[i] > 0)
			kill(placeholders[i], SIGKILL);
	}
	_exit(98);
}

static void drop_privileges_or_die(void)
{
	if (setgroups(0, NULL) < 0 || setgid(NOBODY) < 0 || setuid(NOBODY) < 0) {
		fprintf(stderr, "cannot become uid %d: %s\n", NOBODY, strerror(errno));
		_exit(126);
	}
}

void ffx_start(struct fx *fx, const char *const *extra, const struct ffx_launch *how)
{
	const char *bin = ffx_env("MPOOLD");
	const char *argv[64];
	static const struct ffx_launch none;
	pid_t parent = getpid();
	int argc = 0, logfd, r = 0;
	bool have_workers = false;
	int64_t end;

	if (!how)
		how = &none;
	memset(fx, 0, sizeof(*fx));
	REQUIREF(prctl(PR_SET_CHILD_SUBREAPER, 1) == 0, "PR_SET_CHILD_SUBREAPER: %s",
		 strerror(errno));
	temp_pattern(fx->dir, sizeof(fx->dir));
	REQUIREF(mkdtemp(fx->dir), "mkdtemp: %s", strerror(errno));
	/* Writable for nobody; sticky, or mpoold refuses a socket directory
	 * others could write in. */
	if (how->drop_to_nobody) {
		REQUIREF(chmod(fx->dir, 01777) == 0, "chmod %s: %s", fx->dir, strerror(errno));
		/* libmpool refuses a server run by another user unless told. */
		REQUIREF(setenv("MPOOL_TRUST_UID", "65534", 1) == 0, "setenv: %s", strerror(errno));
	}
	snprintf(fx->sock, sizeof(fx->sock), "%s/mpoold.sock", fx->dir);
	snprintf(fx->log, sizeof(fx->log), "%s/mpoold.log", fx->dir);
	fx->workers = FX_WORKERS_DEFAULT;

	argv[argc++] = bin;
	argv[argc++] = "--socket";
	argv[argc++] = fx->sock;
	for (int i = 0; extra && extra[i]; i++)
		if (strcmp(extra[i], "--workers") == 0 && extra[i + 1]) {
			have_workers = true;
			fx->workers = (unsigned)atoi(extra[i + 1]);
		}
	if (!have_workers) {
		argv[argc++] = "--workers";
		argv[argc++] = "2";
	}
	for (int i = 0; extra && extra[i] && argc < 62; i++)
		argv[argc++] = extra[i];
	argv[argc] = NULL;

	logfd = open(fx->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	REQUIREF(logfd >= 0, "%s: %s", fx->log, strerror(errno));
	fflush(NULL);
	fx->pid = fork();
	REQUIREF(fx->pid >= 0, "fork: %s", strerror(errno));
	if (fx->pid == 0) {
		sigset_t empty;
		int devnull = open("/dev/null", O_RDONLY);

		setpgid(0, 0);
		if (how->drop_to_nobody)
			drop_privileges_or_die();
		if (how->limit_nproc) {
			struct rlimit rl = { how->nproc, how->nproc };

			if (setrlimit(RLIMIT_NPROC, &rl) < 0)
				_exit(125);
		}
		/* After the credentials change, which clears it. */
		if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
			_exit(127);
		for (int sig = 1; sig < 32; sig++)
			if (sig != SIGKILL && sig != SIGSTOP)
				signal(sig, SIG_DFL);
		sigemptyset(&empty);
		sigprocmask(SIG_SETMASK, &empty, NULL);
		if (devnull >= 0)
			dup2(devnull, 0);
		dup2(logfd, 1);
		dup2(logfd, 2);
		execv(bin, (char *const *)argv);
		fprintf(stderr, "exec %s: %s\n", bin, strerror(errno));
		_exit(127);
	}
	setpgid(fx->pid, fx->pid);
	close(logfd);
	track_daemon(fx);
	watched_log = fx->log;   /* fx outlives the test body's calls */
	signal(SIGALRM, watchdog);
	alarm(FX_WATCHDOG_S);

	end = fx_now_ms() + FX_READY_MS;
	for (;;) {
		int st;

		if (waitpid(fx->pid, &st, WNOHANG) == fx->pid) {
			char how_[64];

			fx->reaped = true;
			fx->wstatus = st;
			fx->may_exit = true;
			ffx_fail(fx, __FILE__, __LINE__, "mpoold running",
				 "mpoold %s while starting (before it answered ping)",
				 fx_describe_wait(st, how_, sizeof(how_)));
		}
		r = mpool_connect(fx->sock, &fx->c, NULL, 0);
		if (r == 0) {
			r = mpool_ping(fx->c);
			if (r == 0)
				return;
			mpool_close(fx->c);
			fx->c = NULL;
		}
		if (fx_now_ms() > end)
			ffx_fail(fx, __FILE__, __LINE__, "ping", "mpoold did not answer ping within %d ms (%s)",
				 FX_READY_MS, mpool_strerror(-r));
		fx_tick();
	}
}

static unsigned count_uid_tasks(uid_t uid, unsigned *ret_zombies);

unsigned ffx_count_uid_tasks(uid_t uid)
{
	return count_uid_tasks(uid, NULL);
}

static unsigned count_uid_tasks(uid_t uid, unsigned *ret_zombies)
{
	unsigned zombies = 0;
	DIR *proc = opendir("/proc");
	struct dirent *p;
	unsigned n = 0;

	if (!proc)
		return 0;
	while ((p = readdir(proc))) {
		char path[300];
		DIR *tasks;
		struct dirent *t;

		if (p->d_name[0] < '0' || p->d_name[0] > '9')
			continue;
		snprintf(path, sizeof(path), "/proc/%s/task", p->d_name);
		tasks = opendir(path);
		if (!tasks)
			continue;
		while ((t = readdir(tasks))) {
			char spath[600], line[256];
			FILE *f;

			if (t->d_name[0] < '0' || t->d_name[0] > '9')
				continue;
			snprintf(spath, sizeof(spath), "/proc/%s/task/%s/status", p->d_name, t->d_name);
			f = fopen(spath, "re");
			if (!f)
				continue;
			bool zombie = false;

			while (fgets(line, sizeof(line), f)) {
				unsigned long ruid;
				char state;

				if (sscanf(line, "State: %c", &state) == 1)
					zombie = state == 'Z' || state == 'X';
				if (sscanf(line, "Uid: %lu", &ruid) == 1) {
					n += ruid == (unsigned long)uid;
					zombies += ruid == (unsigned long)uid && zombie;
					break;
				}
			}
			fclose(f);
		}
		closedir(tasks);
	}
	closedir(proc);
	if (ret_zombies)
		*ret_zombies = zombies;
	return n;
}

void ffx_set_nproc_of_nobody(pid_t target, unsigned long limit)
{
	pid_t pid;
	int st;
	char how[64];

	fflush(NULL);
	pid = fork();
	REQUIREF(pid >= 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		struct rlimit rl = { limit, limit };

		drop_privileges_or_die();
		if (prlimit(target, RLIMIT_NPROC, &rl, NULL) < 0) {
			fprintf(stderr, "prlimit(%d, RLIMIT_NPROC, %lu): %s\n", (int)target, limit,
				strerror(errno));
			_exit(1);
		}
		_exit(0);
	}
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	REQUIREF(WIFEXITED(st) && WEXITSTATUS(st) == 0, "setting RLIMIT_NPROC of %d as nobody: %s",
		 (int)target, fx_describe_wait(st, how, sizeof(how)));
}

unsigned ffx_settle_uid_tasks(uid_t uid)
{
	int64_t end = fx_now_ms() + 5000;
	unsigned zombies, n = count_uid_tasks(uid, &zombies), same = 0;

	/* Zombies still count against RLIMIT_NPROC until someone reaps them. */
	while (n > 0 && (same < 20 || zombies > 0) && fx_now_ms() < end) {
		unsigned m;

		fx_tick();
		m = count_uid_tasks(uid, &zombies);
		same = m == n ? same + 1 : 0;
		n = m;
	}
	return n;
}

pid_t ffx_spawn_nobody_placeholder(void)
{
	pid_t parent = getpid(), pid;
	int slot = -1;

	track_cleanup();
	for (int i = 0; i < MAX_TRACKED; i++)
		if (placeholders[i] == 0) {
			slot = i;
			break;
		}
	REQUIREF(slot >= 0, "too many placeholders");
	fflush(NULL);
	pid = fork();
	REQUIREF(pid >= 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		drop_privileges_or_die();
		if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
			_exit(127);
		for (;;)
			pause();
	}
	placeholders[slot] = pid;
	return pid;
}

void ffx_end_placeholder(pid_t pid)
{
	for (int i = 0; i < MAX_TRACKED; i++)
		if (placeholders[i] == pid)
			placeholders[i] = 0;
	REQUIREF(kill(pid, SIGKILL) == 0, "kill placeholder %d: %s", (int)pid, strerror(errno));
	while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
		;
}

/* ---- running mpoold to its exit ------------------------------------------- */

void ffx_tempdir(char *buf, size_t size)
{
	int slot = -1;

	track_cleanup();
	for (int i = 0; i < MAX_TRACKED; i++)
		if (!tempdirs[i][0]) {
			slot = i;
			break;
		}
	REQUIREF(slot >= 0, "too many temp dirs");
	temp_pattern(buf, size);
	REQUIREF(mkdtemp(buf), "mkdtemp: %s", strerror(errno));
	REQUIREF(chmod(buf, 0755) == 0, "chmod: %s", strerror(errno));
	snprintf(tempdirs[slot], sizeof(tempdirs[slot]), "%s", buf);
}

/* Forks argv (stdout and stderr to outpath, in a process group of its
 * own, dying with us), waits up to timeout_ms.  Returns the wait status;
 * fails the test if it does not end in time. */
static int run_to_exit(const char *const *argv, const char *outpath, int timeout_ms)
{
	pid_t parent = getpid(), pid;
	int64_t end = fx_now_ms() + timeout_ms;
	int fd = open(outpath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

	REQUIREF(fd >= 0, "%s: %s", outpath, strerror(errno));
	fflush(NULL);
	pid = fork();
	REQUIREF(pid >= 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		int devnull = open("/dev/null", O_RDONLY);

		setpgid(0, 0);
		if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
			_exit(127);
		if (devnull >= 0)
			dup2(devnull, 0);
		dup2(fd, 1);
		dup2(fd, 2);
		execvp(argv[0], (char *const *)argv);
		fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	close(fd);
	for (;;) {
		int st;
		pid_t r = waitpid(pid, &st, WNOHANG);

		if (r == pid) {
			killpg(pid, SIGKILL);   /* anything it left behind */
			return st;
		}
		if (fx_now_ms() > end) {
			killpg(pid, SIGKILL);
			waitpid(pid, NULL, 0);
			FAILF("%s did not exit within %d ms", argv[0], timeout_ms);
		}
		fx_tick();
	}
}

static void read_file(const char *path, char *out, size_t size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	size_t got = 0;
	ssize_t n;

	out[0] = '\0';
	if (fd < 0)
		return;
	while (got < size - 1 && (n = read(fd, out + got, size - 1 - got)) > 0)
		got += (size_t)n;
	out[got] = '\0';
	close(fd);
}

int ffx_run_mpoold(const char *const *args, char *out, size_t size, int timeout_ms)
{
	const char *argv[64];
	char dir[96], sock[128], outpath[128];
	int argc = 0, st;

	ffx_tempdir(dir, sizeof(dir));
	snprintf(sock, sizeof(sock), "%s/mpoold.sock", dir);
	snprintf(outpath, sizeof(outpath), "%s/out", dir);
	argv[argc++] = ffx_env("MPOOLD");
	argv[argc++] = "--socket";
	argv[argc++] = sock;
	for (int i = 0; args[i] && argc < 63; i++)
		argv[argc++] = args[i];
	argv[argc] = NULL;
	st = run_to_exit(argv, outpath, timeout_ms);
	read_file(outpath, out, size);
	return st;
}

/* ---- building a copy of testmod --------------------------------------------- */

void ffx_build_testmod(const char *out_path, int version)
{
	const char *cc = getenv("CC");
	const char *argv[32];
	char ccbuf[256], def[64], inc[512], inc2[512], tmp[512], log[600], out[4096], how[64];
	const char *msgpack_inc = getenv("MPOOL_MSGPACK_INCLUDE");
	int argc = 0, st;
	char *save = NULL, *tok;

	if (!cc || !*cc)
		cc = getenv("MPOOL_TEST_CC");
	if (!cc || !*cc)
		cc = "cc";
	snprintf(ccbuf, sizeof(ccbuf), "%s", cc);
	for (tok = strtok_r(ccbuf, " ", &save); tok && argc < 8; tok = strtok_r(NULL, " ", &save))
		argv[argc++] = tok;
	snprintf(def, sizeof(def), "-DTESTMOD_VERSION=%d", version);
	snprintf(inc, sizeof(inc), "-I%s", ffx_env("MPOOL_INCLUDE"));
	snprintf(tmp, sizeof(tmp), "%s.new", out_path);
	snprintf(log, sizeof(log), "%s.cc-log", out_path);
	argv[argc++] = "-shared";
	argv[argc++] = "-fPIC";
	argv[argc++] = "-O1";
	argv[argc++] = "-D_GNU_SOURCE";
	argv[argc++] = def;
	argv[argc++] = inc;
	if (msgpack_inc && *msgpack_inc) {
		snprintf(inc2, sizeof(inc2), "-I%s", msgpack_inc);
		argv[argc++] = inc2;
	}
	argv[argc++] = ffx_env("MPOOL_TESTMOD_SRC");
	argv[argc++] = "-o";
	argv[argc++] = tmp;
	argv[argc] = NULL;
	st = run_to_exit(argv, log, 60000);
	read_file(log, out, sizeof(out));
	unlink(log);
	REQUIREF(WIFEXITED(st) && WEXITSTATUS(st) == 0, "building testmod version %d with %s %s: %s",
		 version, argv[0], fx_describe_wait(st, how, sizeof(how)), out);
	REQUIREF(rename(tmp, out_path) == 0, "rename %s -> %s: %s", tmp, out_path, strerror(errno));
}

/* ---- calls ------------------------------------------------------------------ */

int ffx_apply(mpool *c, const char *fn, const msgpack_sbuffer *arg, uint32_t timeout_ms,
	      uint32_t retries, mpool_value **ret)
{
	struct mpool_apply_opts o = MPOOL_APPLY_OPTS(.timeout_ms = timeout_ms, .retries = retries);

	return mpool_apply_with(c, fn, arg->data, arg->size, &o, ret);
}

int ffx_apply_int(mpool *c, const char *fn, int64_t arg, uint32_t timeout_ms, mpool_value **ret)
{
	msgpack_sbuffer sb;
	int r;

	fx_arg_int(&sb, arg);
	r = ffx_apply(c, fn, &sb, timeout_ms, 0, ret);
	msgpack_sbuffer_destroy(&sb);
	return r;
}

struct map_ctx {
	struct ffx_map *m;
	bool ordered;
	uint64_t next;
};

static void map_piece(void *ud, uint64_t first, const msgpack_object *res,
		      const struct mpool_item_error *errs, size_t n_errs)
{
	struct map_ctx *x = ud;
	struct ffx_map *m = x->m;
	uint32_t size;

	REQUIREF(res && res->type == MSGPACK_OBJECT_ARRAY, "a piece's results are not an array");
	size = res->via.array.size;
	REQUIREF(size > 0 && first < m->n && size <= m->n - first,
		 "a piece %llu+%u outside the map of %llu", (unsigned long long)first, size,
		 (unsigned long long)m->n);
	if (x->ordered)
		REQUIREF(first == x->next, "ordered map: a piece at %llu, expected %llu",
			 (unsigned long long)first, (unsigned long long)x->next);
	x->next = first + size;
	for (uint32_t i = 0; i < size; i++) {
		const msgpack_object *o = &res->via.array.ptr[i];
		struct ffx_item *it = &m->items[first + i];

		REQUIREF(!it->got, "item %llu delivered twice", (unsigned long long)(first + i));
		it->got = true;
		it->type = o->type;
		if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
			it->i = (int64_t)o->via.u64;
		else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
			it->i = o->via.i64;
		else if (o->type == MSGPACK_OBJECT_STR)
			snprintf(it->s, sizeof(it->s), "%.*s", (int)o->via.str.size, o->via.str.ptr);
	}
	for (size_t k = 0; k < n_errs; k++) {
		uint64_t idx = errs[k].index;
		struct ffx_item *it;

		REQUIREF(idx >= first && idx < first + size, "error for item %llu outside its piece",
			 (unsigned long long)idx);
		it = &m->items[idx];
		REQUIREF(it->code == 0, "two errors for item %llu", (unsigned long long)idx);
		REQUIREF(it->type == MSGPACK_OBJECT_NIL, "item %llu has both a result and an error",
			 (unsigned long long)idx);
		REQUIREF(errs[k].code < 0, "item %llu: error code %d", (unsigned long long)idx,
			 errs[k].code);
		it->code = errs[k].code;
		snprintf(it->msg, sizeof(it->msg), "%s", errs[k].message);
		m->failed++;
	}
	m->pieces++;
	if (m->on_piece)
		m->on_piece(m, first, size);
}

int ffx_map_run(mpool *c, const char *fn, const msgpack_sbuffer *items, uint64_t n,
		const struct mpool_map_opts *o, struct ffx_map *m, struct mpool_map_summary *sum)
{
	struct map_ctx x = { .m = m, .ordered = !(o && o->unordered) };
	int r;

	m->n = n;
	m->items = calloc(n ? n : 1, sizeof(*m->items));
	REQUIRE(m->items);
	m->pieces = m->failed = 0;
	r = mpool_map(c, fn, items->data, items->size, n, o, map_piece, &x, sum);
	if (r == 0) {
		for (uint64_t i = 0; i < n; i++)
			REQUIREF(m->items[i].got, "item %llu was never delivered", (unsigned long long)i);
		REQUIREF(sum->items == n && sum->failed == m->failed,
			 "summary {items %llu, failed %llu}, but %llu items and %llu errors arrived",
			 (unsigned long long)sum->items, (unsigned long long)sum->failed,
			 (unsigned long long)n, (unsigned long long)m->failed);
	}
	return r;
}

void ffx_map_free(struct ffx_map *m)
{
	free(m->items);
	m->items = NULL;
}

void ffx_pack_cmd(msgpack_packer *pk, const char *fmt, ...)
{
	char buf[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	fx_pack_str(pk, buf);
}
