/* fixture: one real mpoold per test; see fixture.h for the contract. */
#include "fixture.h"

#include <check.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define LOG_TAIL_MSG 2500      /* log bytes quoted in Check's message */
#define LOG_TAIL_ERR 16384     /* log bytes written to stderr */
#define MAX_CLIENTS 16

static struct fx *cur;             /* the running fixture of this test */
static bool in_child;              /* a forked client: never touch Check */
static pid_t clients[MAX_CLIENTS]; /* forked clients not yet waited for */

/* ---- time ------------------------------------------------------------------ */

int64_t fx_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void fx_tick(void)
{
	struct timespec ts = { 0, 10 * 1000 * 1000 };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* ---- describing processes ------------------------------------------------ */

const char *fx_describe_wait(int st, char *buf, size_t size)
{
	if (WIFEXITED(st))
		snprintf(buf, size, "exited with status %d", WEXITSTATUS(st));
	else if (WIFSIGNALED(st))
		snprintf(buf, size, "killed by SIG%s%s",
			 sigabbrev_np(WTERMSIG(st)) ? sigabbrev_np(WTERMSIG(st)) : "?",
			 WCOREDUMP(st) ? " (core dumped)" : "");
	else
		snprintf(buf, size, "wait status 0x%x", st);
	return buf;
}

unsigned long long fx_pid_starttime(pid_t pid)
{
	char path[64], buf[1024], *p;
	unsigned long long start = 0;
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	/* Fields after "(comm)": state is field 3, starttime field 22. */
	p = strrchr(buf, ')');
	if (!p)
		return 0;
	p += 2;
	for (int field = 3; field < 22 && p; field++) {
		p = strchr(p, ' ');
		if (p)
			p++;
	}
	if (p)
		start = strtoull(p, NULL, 10);
	return start;
}

/* 'R', 'S', 'Z', ... or 0 when there is no such process. */
static char pid_state(pid_t pid)
{
	char path[64], buf[512], *p;
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	p = strrchr(buf, ')');
	return p && p[1] == ' ' ? p[2] : 0;
}

bool fx_pid_alive(pid_t pid, unsigned long long start)
{
	int st;
	pid_t r = waitpid(pid, &st, WNOHANG);
	char s;

	if (r == pid)
		return false;           /* an orphan that came back to us: reaped now */
	if (r == 0)
		return true;            /* our child, still running */
	if (kill(pid, 0) < 0 && errno == ESRCH)
		return false;
	s = pid_state(pid);
	if (s == 0 || s == 'Z' || s == 'X')
		return false;           /* gone, or dead and not yet reaped by its parent */
	/* The pid may have been reused by an unrelated process. */
	return start == 0 || fx_pid_starttime(pid) == start;
}

long fx_rss_kib(pid_t pid)
{
	char path[64], line[256];
	long kib = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	f = fopen(path, "re");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
			break;
	fclose(f);
	return kib;
}

/* ---- the log ------------------------------------------------------------- */

static size_t read_tail(const char *path, char *buf, size_t size)
{
	off_t end;
	ssize_t n;
	size_t got = 0;
	int fd;

	if (size == 0)
		return 0;
	buf[0] = '\0';
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	end = lseek(fd, 0, SEEK_END);
	if (end > (off_t)(size - 1))
		lseek(fd, end - (off_t)(size - 1), SEEK_SET);
	else
		lseek(fd, 0, SEEK_SET);
	while (got < size - 1 && (n = read(fd, buf + got, size - 1 - got)) > 0)
		got += (size_t)n;
	close(fd);
	buf[got] = '\0';
	return got;
}

void fx_log_tail(const struct fx *fx, char *buf, size_t size)
{
	read_tail(fx->log, buf, size);
}

bool fx_log_has(const struct fx *fx, const char *s)
{
	static char buf[1 << 20];

	read_tail(fx->log, buf, sizeof(buf));
	return strstr(buf, s) != NULL;
}

/* ---- teardown ---------------------------------------------------------- */

static void kill_clients(void)
{
	for (int i = 0; i < MAX_CLIENTS; i++) {
		if (clients[i] > 0) {
			kill(clients[i], SIGKILL);
			waitpid(clients[i], NULL, 0);
			clients[i] = 0;
		}
	}
}

static void remove_dir(const char *dir)
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

/* Kills everything the fixture started.  Writes into why (when not NULL)
 * what went wrong that the test did not expect: the daemon dying by itself,
 * a worker outliving it.  Returns true when nothing did. */
static bool teardown(struct fx *fx, char *why, size_t n_why, char *tail, size_t n_tail)
{
	bool ok = true;
	char how[64];
	int st;

	if (why)
		why[0] = '\0';
	if (tail)
		tail[0] = '\0';
	if (fx->c) {
		mpool_close(fx->c);
		fx->c = NULL;
	}
	kill_clients();
	if (!fx->pid) {
		remove_dir(fx->dir);
		return true;
	}
	if (!fx->reaped && waitpid(fx->pid, &st, WNOHANG) == fx->pid) {
		fx->reaped = true;
		fx->wstatus = st;
		if (!fx->may_exit) {
			ok = false;
			if (why)
				snprintf(why, n_why, "mpoold (pid %d) died during the test: %s",
					 (int)fx->pid, fx_describe_wait(st, how, sizeof(how)));
		}
	}
	/* The group outlives its leader while workers remain. */
	killpg(fx->pid, SIGKILL);
	if (!fx->reaped) {
		while (waitpid(fx->pid, &st, 0) < 0 && errno == EINTR)
			;
		fx->reaped = true;
		fx->wstatus = st;
	}
	/* Every worker ever seen must be gone, soon. */
	for (int64_t end = fx_now_ms() + 5000; !fx_seen_all_gone(fx) && fx_now_ms() < end;)
		fx_tick();
	for (unsigned i = 0; i < fx->n_seen; i++) {
		if (fx_pid_alive(fx->seen[i].pid, fx->seen[i].start)) {
			if (ok && why)
				snprintf(why, n_why, "worker pid %d outlived mpoold by 5 s",
					 (int)fx->seen[i].pid);
			ok = false;
			kill(fx->seen[i].pid, SIGKILL);
		}
	}
	/* Orphans that came back to us (we are a subreaper). */
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
	if (tail)
		fx_log_tail(fx, tail, n_tail);
	remove_dir(fx->dir);
	fx->pid = 0;
	return ok;
}

static void dump_tail(const char *tail)
{
	fprintf(stderr, "---- mpoold log (tail) ----\n%s---- end of mpoold log ----\n", tail);
}

void fx_fail(const char *file, int line, const char *cond, const char *fmt, ...)
{
	static char tail[LOG_TAIL_ERR];
	char msg[1024], why[256] = "";
	const char *short_tail;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (in_child) {
		/* A forked client: say why and leave with a code the parent sees. */
		fprintf(stderr, "client %d: %s:%d: %s %s\n", (int)getpid(), file, line, cond, msg);
		_exit(90);
	}
	alarm(0);
	if (cur) {
		teardown(cur, why, sizeof(why), tail, sizeof(tail));
		cur = NULL;
		dump_tail(tail);
	} else {
		tail[0] = '\0';
	}
	short_tail = strlen(tail) > LOG_TAIL_MSG ? tail + strlen(tail) - LOG_TAIL_MSG : tail;
	/* Reported at the caller's file and line, not at this function. */
	_ck_assert_failed(file, line, "Failed", "%s%s%s%s%s%s\n---- mpoold log (tail) ----\n%s",
			  cond, strcmp(msg, " ") ? ": " : "", strcmp(msg, " ") ? msg : "",
			  why[0] ? " [" : "", why, why[0] ? "]" : "", short_tail);
}

/* The watchdog: a test about to hit Check's timeout says where it hung and
 * takes its daemon down.  Only async-signal-safe calls. */
static void watchdog(int sig)
{
	static const char head[] = "\nfixture watchdog: the test hung; mpoold log tail:\n";
	char buf[4096];
	ssize_t n;
	int fd;

	(void)sig;
	if (write(2, head, sizeof(head) - 1) < 0)
		_exit(98);
	if (cur) {
		fd = open(cur->log, O_RDONLY);
		if (fd >= 0) {
			off_t end = lseek(fd, 0, SEEK_END);

			lseek(fd, end > (off_t)sizeof(buf) ? end - (off_t)sizeof(buf) : 0, SEEK_SET);
			n = read(fd, buf, sizeof(buf));
			if (n > 0 && write(2, buf, (size_t)n) < 0)
				_exit(98);
			close(fd);
		}
		if (cur->pid)
			killpg(cur->pid, SIGKILL);
		unlink(cur->sock);
		unlink(cur->log);
		rmdir(cur->dir);
	}
	for (int i = 0; i < MAX_CLIENTS; i++)
		if (clients[i] > 0)
			kill(clients[i], SIGKILL);
	_exit(98);
}

/* ---- start and stop ---------------------------------------------------- */

static bool pred_ready(const struct fx_status *st, void *arg)
{
	return fx_pool_idle(st, *(unsigned *)arg);
}

void fx_start(struct fx *fx, const char *const *extra)
{
	const char *bin = getenv("MPOOLD");
	const char *argv[64];
	char nbuf[16];
	bool have_workers = false;
	pid_t parent = getpid();
	int argc = 0, logfd, r;
	int64_t end;
	unsigned n;

	memset(fx, 0, sizeof(*fx));
	REQUIREF(bin && *bin, "MPOOLD is not set (tests/meson.build sets it)");
	REQUIREF(prctl(PR_SET_CHILD_SUBREAPER, 1) == 0, "PR_SET_CHILD_SUBREAPER: %s",
		 strerror(errno));
	snprintf(fx->dir, sizeof(fx->dir), "/tmp/mpool-it-XXXXXX");
	REQUIREF(mkdtemp(fx->dir), "mkdtemp: %s", strerror(errno));
	snprintf(fx->sock, sizeof(fx->sock), "%s/mpoold.sock", fx->dir);
	snprintf(fx->log, sizeof(fx->log), "%s/mpoold.log", fx->dir);
	fx->workers = FX_WORKERS_DEFAULT;
	cur = fx;

	argv[argc++] = bin;
	/* An installed /etc/mpool/mpoold.conf must not change what a test sees. */
	argv[argc++] = "--config";
	argv[argc++] = "/dev/null";
	argv[argc++] = "--socket";
	argv[argc++] = fx->sock;
	for (int i = 0; extra && extra[i]; i++) {
		if ((strcmp(extra[i], "--workers") == 0 || strcmp(extra[i], "-w") == 0) && extra[i + 1]) {
			have_workers = true;
			fx->workers = (unsigned)atoi(extra[i + 1]);
		}
	}
	if (!have_workers) {
		snprintf(nbuf, sizeof(nbuf), "%u", fx->workers);
		argv[argc++] = "--workers";
		argv[argc++] = nbuf;
	}
	for (int i = 0; extra && extra[i] && argc < 62; i++)
		argv[argc++] = extra[i];
	argv[argc] = NULL;

	logfd = open(fx->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	REQUIREF(logfd >= 0, "%s: %s", fx->log, strerror(errno));
	fx->pid = fork();
	if (fx->pid < 0) {
		close(logfd);
		fx->pid = 0;
		FAILF("fork: %s", strerror(errno));
	}
	if (fx->pid == 0) {
		sigset_t none;
		int devnull = open("/dev/null", O_RDONLY);

		setpgid(0, 0);
		/* Die with the test, whatever ends it; the workers die with us. */
		if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
			_exit(127);
		for (int sig = 1; sig < 32; sig++)
			if (sig != SIGKILL && sig != SIGSTOP)
				signal(sig, SIG_DFL);
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		if (devnull >= 0)
			dup2(devnull, 0);
		dup2(logfd, 1);
		dup2(logfd, 2);
		execv(bin, (char *const *)argv);
		fprintf(stderr, "exec %s: %s\n", bin, strerror(errno));
		_exit(127);
	}
	setpgid(fx->pid, fx->pid);   /* either of the two calls wins the race */
	close(logfd);
	signal(SIGALRM, watchdog);
	alarm(FX_WATCHDOG_S);

	/* Ready when it answers ping ... */
	end = fx_now_ms() + FX_READY_MS;
	for (;;) {
		int st;

		if (waitpid(fx->pid, &st, WNOHANG) == fx->pid) {
			char how[64];

			fx->reaped = true;
			fx->wstatus = st;
			fx->may_exit = true;   /* reported here, not again by teardown */
			FAILF("mpoold %s while starting", fx_describe_wait(st, how, sizeof(how)));
		}
		r = mpool_connect(fx->sock, &fx->c, NULL, 0);
		if (r == 0) {
			r = mpool_ping(fx->c);
			if (r == 0)
				break;
			mpool_close(fx->c);
			fx->c = NULL;
		}
		if (fx_now_ms() > end)
			FAILF("mpoold did not answer ping within %d ms (last: %s)", FX_READY_MS,
			      mpool_strerror(-r));
		fx_tick();
	}
	/* ... and every worker is up and idle. */
	n = fx->workers;
	fx_wait_status(fx, pred_ready, &n, FX_READY_MS, "all workers idle after start", NULL);
}

void fx_stop(struct fx *fx)
{
	static char tail[LOG_TAIL_ERR];
	char why[256];

	alarm(0);
	if (!teardown(fx, why, sizeof(why), tail, sizeof(tail))) {
		cur = NULL;
		dump_tail(tail);
		ck_abort_msg("%s\n---- mpoold log (tail) ----\n%s", why,
			     strlen(tail) > LOG_TAIL_MSG ? tail + strlen(tail) - LOG_TAIL_MSG : tail);
	}
	cur = NULL;
}

mpool *fx_connect(struct fx *fx)
{
	char why[MPOOL_ERRMSG_MAX];
	mpool *c = NULL;
	int r = mpool_connect(fx->sock, &c, why, sizeof(why));

	REQUIREF(r == 0, "mpool_connect: %s: %s", mpool_strerror(r), why);
	return c;
}

/* ---- status ----------------------------------------------------------- */

const msgpack_object *fx_obj_get(const msgpack_object *map, const char *key)
{
	size_t kl = strlen(key);

	if (!map || map->type != MSGPACK_OBJECT_MAP)
		return NULL;
	for (uint32_t i = 0; i < map->via.map.size; i++) {
		const msgpack_object *k = &map->via.map.ptr[i].key;

		if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == kl &&
		    memcmp(k->via.str.ptr, key, kl) == 0)
			return &map->via.map.ptr[i].val;
	}
	return NULL;
}

bool fx_obj_str_eq(const msgpack_object *o, const char *s)
{
	return o && o->type == MSGPACK_OBJECT_STR && o->via.str.size == strlen(s) &&
	       memcmp(o->via.str.ptr, s, o->via.str.size) == 0;
}

uint64_t fx_obj_u64(const msgpack_object *o)
{
	REQUIREF(o && o->type == MSGPACK_OBJECT_POSITIVE_INTEGER, "expected an unsigned integer, got type %d",
		 o ? (int)o->type : -1);
	return o->via.u64;
}

int64_t fx_obj_i64(const msgpack_object *o)
{
	REQUIREF(o && (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER ||
		       o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER),
		 "expected an integer, got type %d", o ? (int)o->type : -1);
	return o->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? (int64_t)o->via.u64 : o->via.i64;
}

bool fx_get_u64(const msgpack_object *map, const char *key, uint64_t *ret)
{
	const msgpack_object *o = fx_obj_get(map, key);

	if (!o || o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
		return false;
	*ret = o->via.u64;
	return true;
}

bool fx_get_str(const msgpack_object *map, const char *key, char *buf, size_t size)
{
	const msgpack_object *o = fx_obj_get(map, key);

	if (!o || o->type != MSGPACK_OBJECT_STR)
		return false;
	snprintf(buf, size, "%.*s", (int)o->via.str.size, o->via.str.ptr);
	return true;
}

bool fx_status_parse(const msgpack_object *o, struct fx_status *st)
{
	const msgpack_object *w, *t;
	uint64_t v;

	memset(st, 0, sizeof(*st));
	if (!o || o->type != MSGPACK_OBJECT_MAP)
		return false;
	if (!fx_get_str(o, "version", st->version, sizeof(st->version)) ||
	    !fx_get_str(o, "state", st->state, sizeof(st->state)) ||
	    !fx_get_u64(o, "protocol", &v))
		return false;
	st->protocol = (int64_t)v;
	if (!fx_get_u64(o, "pid", &v))
		return false;
	st->pid = (pid_t)v;
	w = fx_obj_get(o, "workers");
	if (!w || w->type != MSGPACK_OBJECT_ARRAY || w->via.array.size > FX_MAX_WORKERS)
		return false;
	st->n_workers = w->via.array.size;
	for (unsigned i = 0; i < st->n_workers; i++) {
		const msgpack_object *m = &w->via.array.ptr[i], *job;
		struct fx_worker *fw = &st->workers[i];

		if (!fx_get_u64(m, "pid", &v))
			return false;
		fw->pid = (pid_t)v;
		if (!fx_get_str(m, "state", fw->state, sizeof(fw->state)) ||
		    !fx_get_u64(m, "tasks_done", &fw->tasks_done))
			return false;
		job = fx_obj_get(m, "job");
		if (!job)
			return false;
		if (job->type == MSGPACK_OBJECT_NIL)
			fw->job = -1;
		else if (job->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
			fw->job = (int64_t)job->via.u64;
		else
			return false;
	}
	t = fx_obj_get(o, "totals");
	return t && fx_get_u64(t, "workers", &st->totals.workers) &&
	       fx_get_u64(t, "max_tasks_per_child", &st->totals.max_tasks_per_child) &&
	       fx_get_u64(t, "tasks_done", &st->totals.tasks_done) &&
	       fx_get_u64(t, "tasks_failed", &st->totals.tasks_failed) &&
	       fx_get_u64(t, "workers_started", &st->totals.workers_started) &&
	       fx_get_u64(t, "workers_recycled", &st->totals.workers_recycled) &&
	       fx_get_u64(t, "workers_died", &st->totals.workers_died) &&
	       fx_get_u64(t, "jobs_active", &st->totals.jobs_active) &&
	       fx_get_u64(t, "jobs_done", &st->totals.jobs_done) &&
	       fx_get_u64(t, "chunks_queued", &st->totals.chunks_queued) &&
	       fx_get_u64(t, "clients", &st->totals.clients);
}

static void record_seen(struct fx *fx, pid_t pid)
{
	for (unsigned i = 0; i < fx->n_seen; i++)
		if (fx->seen[i].pid == pid)
			return;
	if (fx->n_seen < FX_MAX_SEEN) {
		fx->seen[fx->n_seen].pid = pid;
		fx->seen[fx->n_seen].start = fx_pid_starttime(pid);
		fx->n_seen++;
	}
}

void fx_status_on(struct fx *fx, mpool *c, struct fx_status *st)
{
	mpool_value *v = NULL;
	int r = mpool_status(c, &v);
	bool ok;

	REQUIREF(r == 0, "mpool_status: %s: %s", mpool_strerror(-r), mpool_errmsg(c));
	ok = fx_status_parse(mpool_value_get(v), st);
	mpool_value_free(v);
	REQUIREF(ok, "the status map lacks a key of PROTOCOL.md or has a wrong type");
	for (unsigned i = 0; i < st->n_workers; i++)
		record_seen(fx, st->workers[i].pid);
}

void fx_status(struct fx *fx, struct fx_status *st)
{
	fx_status_on(fx, fx->c, st);
}

uint64_t fx_status_get(struct fx *fx, const char *path)
{
	const msgpack_object *o;
	mpool_value *v = NULL;
	char key[64];
	const char *p = path;
	uint64_t ret;
	int r = mpool_status(fx->c, &v);

	REQUIREF(r == 0, "mpool_status: %s: %s", mpool_strerror(-r), mpool_errmsg(fx->c));
	o = mpool_value_get(v);
	while (*p) {
		size_t n = strcspn(p, ".");

		snprintf(key, sizeof(key), "%.*s", (int)n, p);
		o = fx_obj_get(o, key);
		REQUIREF(o, "the status has no '%s' (looking for %s)", key, path);
		p += n + (p[n] == '.');
	}
	REQUIREF(o->type == MSGPACK_OBJECT_POSITIVE_INTEGER, "status %s is not an unsigned int", path);
	ret = o->via.u64;
	mpool_value_free(v);
	return ret;
}

unsigned fx_count_state(const struct fx_status *st, const char *state)
{
	unsigned n = 0;

	for (unsigned i = 0; i < st->n_workers; i++)
		n += strcmp(st->workers[i].state, state) == 0;
	return n;
}

bool fx_has_worker(const struct fx_status *st, pid_t pid)
{
	for (unsigned i = 0; i < st->n_workers; i++)
		if (st->workers[i].pid == pid)
			return true;
	return false;
}

bool fx_pool_idle(const struct fx_status *st, unsigned n)
{
	return st->n_workers == n && fx_count_state(st, "idle") == n;
}

static void describe_status(const struct fx_status *st, char *buf, size_t size)
{
	int off = snprintf(buf, size, "state %s, workers [", st->state);

	for (unsigned i = 0; i < st->n_workers && off < (int)size; i++)
		off += snprintf(buf + off, size - (size_t)off, "%s%d %s done %llu job %lld",
				i ? ", " : "", (int)st->workers[i].pid, st->workers[i].state,
				(unsigned long long)st->workers[i].tasks_done,
				(long long)st->workers[i].job);
	if (off < (int)size)
		snprintf(buf + off, size - (size_t)off,
			 "], jobs_active %llu, tasks_done %llu, recycled %llu, died %llu, queued %llu",
			 (unsigned long long)st->totals.jobs_active,
			 (unsigned long long)st->totals.tasks_done,
			 (unsigned long long)st->totals.workers_recycled,
			 (unsigned long long)st->totals.workers_died,
			 (unsigned long long)st->totals.chunks_queued);
}

void fx_wait_status(struct fx *fx, fx_pred pred, void *arg, int timeout_ms,
		    const char *what, struct fx_status *ret)
{
	int64_t end = fx_now_ms() + timeout_ms;
	struct fx_status st;
	char desc[768];

	for (;;) {
		fx_status(fx, &st);
		if (pred(&st, arg)) {
			if (ret)
				*ret = st;
			return;
		}
		if (fx_now_ms() > end) {
			describe_status(&st, desc, sizeof(desc));
			FAILF("waited %d ms for: %s; last status: %s", timeout_ms, what, desc);
		}
		fx_tick();
	}
}

void fx_wait_idle(struct fx *fx, int timeout_ms)
{
	unsigned n = fx->workers;

	fx_wait_status(fx, pred_ready, &n, timeout_ms, "pool full and every worker idle", NULL);
}

int fx_wait_exit(struct fx *fx, int timeout_ms)
{
	int64_t end = fx_now_ms() + timeout_ms;
	int st;

	if (fx->reaped)
		return fx->wstatus;
	fx->may_exit = true;
	for (;;) {
		pid_t r = waitpid(fx->pid, &st, WNOHANG);

		if (r == fx->pid) {
			fx->reaped = true;
			fx->wstatus = st;
			return st;
		}
		REQUIREF(r == 0, "waitpid(mpoold): %s", strerror(errno));
		if (fx_now_ms() > end) {
			fx->may_exit = false;
			FAILF("mpoold did not exit within %d ms", timeout_ms);
		}
		fx_tick();
	}
}

bool fx_seen_all_gone(struct fx *fx)
{
	for (unsigned i = 0; i < fx->n_seen; i++)
		if (fx_pid_alive(fx->seen[i].pid, fx->seen[i].start))
			return false;
	return true;
}

void fx_wait_seen_gone(struct fx *fx, int timeout_ms)
{
	int64_t end = fx_now_ms() + timeout_ms;

	while (!fx_seen_all_gone(fx)) {
		if (fx_now_ms() > end) {
			for (unsigned i = 0; i < fx->n_seen; i++)
				if (fx_pid_alive(fx->seen[i].pid, fx->seen[i].start))
					FAILF("worker pid %d still alive after %d ms (state %c)",
					      (int)fx->seen[i].pid, timeout_ms, pid_state(fx->seen[i].pid));
		}
		fx_tick();
	}
}

/* ---- items ------------------------------------------------------------- */

void fx_sbuf_init(msgpack_sbuffer *sb, msgpack_packer *pk)
{
	msgpack_sbuffer_init(sb);
	msgpack_packer_init(pk, sb, msgpack_sbuffer_write);
}

void fx_pack_range(msgpack_packer *pk, int64_t first, uint64_t n)
{
	for (uint64_t i = 0; i < n; i++)
		msgpack_pack_int64(pk, first + (int64_t)i);
}

void fx_pack_repeat(msgpack_packer *pk, int64_t v, uint64_t n)
{
	for (uint64_t i = 0; i < n; i++)
		msgpack_pack_int64(pk, v);
}

void fx_pack_str(msgpack_packer *pk, const char *s)
{
	msgpack_pack_str(pk, strlen(s));
	msgpack_pack_str_body(pk, s, strlen(s));
}

void fx_arg_int(msgpack_sbuffer *sb, int64_t v)
{
	msgpack_packer pk;

	fx_sbuf_init(sb, &pk);
	msgpack_pack_int64(&pk, v);
}

/* ---- raw sockets ------------------------------------------------------- */

void fx_raw_open(struct fx *fx, struct fx_raw *r)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };

	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", fx->sock);
	r->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	REQUIREF(r->fd >= 0, "socket: %s", strerror(errno));
	REQUIREF(connect(r->fd, (struct sockaddr *)&sa, sizeof(sa)) == 0, "connect %s: %s",
		 fx->sock, strerror(errno));
	REQUIRE(msgpack_unpacker_init(&r->up, 65536));
	msgpack_unpacked_init(&r->msg);
}

void fx_raw_close(struct fx_raw *r)
{
	if (r->fd >= 0)
		close(r->fd);
	r->fd = -1;
	msgpack_unpacked_destroy(&r->msg);
	msgpack_unpacker_destroy(&r->up);
}

int fx_raw_send(struct fx_raw *r, const void *buf, size_t len)
{
	const char *p = buf;
	int64_t end = fx_now_ms() + FX_WAIT_MS;

	while (len > 0) {
		struct pollfd pfd = { r->fd, POLLOUT, 0 };
		ssize_t n;

		if (poll(&pfd, 1, 100) < 0 && errno != EINTR)
			FAILF("poll: %s", strerror(errno));
		REQUIREF(fx_now_ms() < end, "could not send %zu bytes within %d ms", len, FX_WAIT_MS);
		n = send(r->fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			if (errno == EPIPE || errno == ECONNRESET)
				return -errno;
			FAILF("send: %s", strerror(errno));
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int fx_raw_next(struct fx_raw *r, int timeout_ms)
{
	int64_t end = fx_now_ms() + timeout_ms;

	for (;;) {
		msgpack_unpack_return ur = msgpack_unpacker_next(&r->up, &r->msg);
		struct pollfd pfd = { r->fd, POLLIN, 0 };
		int64_t left;
		ssize_t n;

		if (ur == MSGPACK_UNPACK_SUCCESS)
			return 1;
		REQUIREF(ur == MSGPACK_UNPACK_CONTINUE, "the daemon sent bytes that are not MessagePack");
		left = end - fx_now_ms();
		REQUIREF(left > 0, "no message from the daemon within %d ms", timeout_ms);
		if (poll(&pfd, 1, (int)left) <= 0)
			continue;
		REQUIRE(msgpack_unpacker_reserve_buffer(&r->up, 65536));
		n = recv(r->fd, msgpack_unpacker_buffer(&r->up), 65536, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n == 0 || (n < 0 && errno == ECONNRESET))
			return 0;
		REQUIREF(n > 0, "recv: %s", strerror(errno));
		msgpack_unpacker_buffer_consumed(&r->up, (size_t)n);
	}
}

void fx_raw_read_exact(struct fx_raw *r, void *buf, size_t len, int timeout_ms)
{
	int64_t end = fx_now_ms() + timeout_ms;
	size_t got = 0;

	while (got < len) {
		struct pollfd pfd = { r->fd, POLLIN, 0 };
		int64_t left = end - fx_now_ms();
		ssize_t n;

		REQUIREF(left > 0, "only %zu of %zu bytes within %d ms", got, len, timeout_ms);
		if (poll(&pfd, 1, (int)left) <= 0)
			continue;
		n = recv(r->fd, (char *)buf + got, len - got, 0);
		if (n < 0 && errno == EINTR)
			continue;
		REQUIREF(n > 0, "connection ended after %zu of %zu bytes (%s)", got, len,
			 n < 0 ? strerror(errno) : "EOF");
		got += (size_t)n;
	}
}

void fx_raw_response(struct fx_raw *r, uint64_t msgid, const msgpack_object **ret_err,
		     const msgpack_object **ret_res, int timeout_ms)
{
	const msgpack_object *a;

	REQUIREF(fx_raw_next(r, timeout_ms) == 1, "EOF instead of the response to msgid %llu",
		 (unsigned long long)msgid);
	a = &r->msg.data;
	REQUIREF(a->type == MSGPACK_OBJECT_ARRAY && a->via.array.size == 4 &&
		 a->via.array.ptr[0].type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
		 a->via.array.ptr[0].via.u64 == 1,
		 "expected a response [1, msgid, error, result] to msgid %llu",
		 (unsigned long long)msgid);
	REQUIREF(fx_obj_u64(&a->via.array.ptr[1]) == msgid, "response to msgid %llu, expected %llu",
		 (unsigned long long)a->via.array.ptr[1].via.u64, (unsigned long long)msgid);
	*ret_err = &a->via.array.ptr[2];
	*ret_res = &a->via.array.ptr[3];
}

int64_t fx_raw_error_then_eof(struct fx_raw *r, int timeout_ms)
{
	const msgpack_object *a, *p, *e, *msg;
	int64_t code;

	REQUIREF(fx_raw_next(r, timeout_ms) == 1, "EOF without an error notification");
	a = &r->msg.data;
	REQUIREF(a->type == MSGPACK_OBJECT_ARRAY && a->via.array.size == 3 &&
		 a->via.array.ptr[0].type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
		 a->via.array.ptr[0].via.u64 == 2 && fx_obj_str_eq(&a->via.array.ptr[1], "error"),
		 "expected the notification [2, \"error\", [error]]");
	p = &a->via.array.ptr[2];
	REQUIREF(p->type == MSGPACK_OBJECT_ARRAY && p->via.array.size == 1,
		 "the error notification's params are not [error]");
	e = &p->via.array.ptr[0];
	code = fx_obj_i64(fx_obj_get(e, "code"));
	msg = fx_obj_get(e, "message");
	REQUIREF(msg && msg->type == MSGPACK_OBJECT_STR && msg->via.str.size > 0,
		 "the error object has no message");
	if (fx_raw_next(r, timeout_ms) != 0) {
		char extra[256];

		msgpack_object_print_buffer(extra, sizeof(extra), r->msg.data);
		FAILF("after the error notification (code %lld) the daemon sent another value, %s, "
		      "instead of closing the connection", (long long)code, extra);
	}
	return code;
}

void fx_req_head(msgpack_packer *pk, uint64_t msgid, const char *method)
{
	msgpack_pack_array(pk, 4);
	msgpack_pack_uint8(pk, 0);
	msgpack_pack_uint64(pk, msgid);
	fx_pack_str(pk, method);
}

/* ---- forked clients ----------------------------------------------------- */

pid_t fx_fork(int (*fn)(void *arg), void *arg)
{
	pid_t parent = getpid(), pid;
	int slot = -1;

	for (int i = 0; i < MAX_CLIENTS; i++)
		if (clients[i] == 0) {
			slot = i;
			break;
		}
	REQUIREF(slot >= 0, "more than %d forked clients", MAX_CLIENTS);
	fflush(NULL);
	pid = fork();
	REQUIREF(pid >= 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		in_child = true;
		cur = NULL;
		if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
			_exit(127);
		signal(SIGALRM, SIG_DFL);
		_exit(fn(arg) & 0xff);
	}
	clients[slot] = pid;
	return pid;
}

static void forget_client(pid_t pid)
{
	for (int i = 0; i < MAX_CLIENTS; i++)
		if (clients[i] == pid)
			clients[i] = 0;
}

int fx_wait_child(pid_t pid, int timeout_ms)
{
	int64_t end = fx_now_ms() + timeout_ms;
	int st;

	for (;;) {
		pid_t r = waitpid(pid, &st, WNOHANG);

		if (r == pid) {
			forget_client(pid);
			return st;
		}
		REQUIREF(r == 0, "waitpid(client %d): %s", (int)pid, strerror(errno));
		if (fx_now_ms() > end)
			FAILF("client process %d did not finish within %d ms", (int)pid, timeout_ms);
		fx_tick();
	}
}

void fx_expect_child_ok(pid_t pid, int timeout_ms, const char *what)
{
	int st = fx_wait_child(pid, timeout_ms);
	char how[64];

	REQUIREF(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s (client pid %d) %s%s", what, (int)pid,
		 fx_describe_wait(st, how, sizeof(how)),
		 WIFSIGNALED(st) ? " -- the client crashed" : " (see its stderr)");
}

/* ---- a verified map of squares ----------------------------------------- */

struct sq_run {
	uint64_t n;
	int64_t offset;
	bool ordered;
	uint32_t expect_chunk;
	uint64_t next, notes, whole;
	uint8_t *seen;
};

static void sq_chunk(void *ud, uint64_t first, const msgpack_object *res,
		     const struct mpool_item_error *errs, size_t n_errs)
{
	struct sq_run *run = ud;
	uint32_t size;

	REQUIREF(res && res->type == MSGPACK_OBJECT_ARRAY, "a chunk's results are not an array");
	size = res->via.array.size;
	REQUIREF(size > 0, "an empty chunk at %llu", (unsigned long long)first);
	REQUIREF(first < run->n && size <= run->n - first, "chunk %llu+%u outside the map of %llu",
		 (unsigned long long)first, size, (unsigned long long)run->n);
	REQUIREF(n_errs == 0, "item %llu failed: %s: %s", (unsigned long long)errs[0].index,
		 mpool_strerror(errs[0].code), errs[0].message);
	if (run->ordered)
		REQUIREF(first == run->next, "ordered chunk starts at %llu, expected %llu",
			 (unsigned long long)first, (unsigned long long)run->next);
	if (run->expect_chunk) {
		/* A notification is a whole chunk or a piece of one (a worker
		 * reports a long chunk as it goes): never more, never across
		 * two chunks. */
		uint64_t cs = run->expect_chunk, start = first / cs * cs;
		uint64_t end = start + cs < run->n ? start + cs : run->n;

		REQUIREF(first + size <= end,
			 "items %llu..%llu cross the boundary of the chunk %llu..%llu (chunksize %u)",
			 (unsigned long long)first, (unsigned long long)(first + size - 1),
			 (unsigned long long)start, (unsigned long long)(end - 1), run->expect_chunk);
		run->whole += first == start && first + size == end;
	}
	for (uint32_t i = 0; i < size; i++) {
		const msgpack_object *o = &res->via.array.ptr[i];
		uint64_t idx = first + i;
		uint64_t v = (uint64_t)(run->offset + (int64_t)idx);

		if (run->seen[idx])
			FAILF("item %llu delivered twice", (unsigned long long)idx);
		run->seen[idx] = 1;
		if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER || o->via.u64 != v * v)
			FAILF("item %llu: expected %llu, got type %d value %llu", (unsigned long long)idx,
			      (unsigned long long)(v * v), (int)o->type,
			      (unsigned long long)o->via.u64);
	}
	run->next = first + size;
	run->notes++;
}

uint64_t fx_map_squares(mpool *c, uint64_t n, int64_t offset, const struct mpool_map_opts *opts,
			uint32_t expect_chunk)
{
	struct sq_run run = {
		.n = n, .offset = offset, .ordered = !(opts && opts->unordered),
		.expect_chunk = expect_chunk,
	};
	struct mpool_map_summary sum = { 99, 99 };
	msgpack_sbuffer sb;
	msgpack_packer pk;
	int r;

	fx_sbuf_init(&sb, &pk);
	fx_pack_range(&pk, offset, n);
	run.seen = calloc(n + 1, 1);
	REQUIRE(run.seen);
	r = mpool_map(c, "builtin.square", sb.data, sb.size, n, opts, sq_chunk, &run, &sum);
	REQUIREF(r == 0, "mpool_map of %llu squares: %s: %s", (unsigned long long)n,
		 mpool_strerror(-r), mpool_errmsg(c));
	REQUIREF(sum.items == n && sum.failed == 0, "summary {items %llu, failed %llu}, expected {%llu, 0}",
		 (unsigned long long)sum.items, (unsigned long long)sum.failed, (unsigned long long)n);
	for (uint64_t i = 0; i < n; i++)
		REQUIREF(run.seen[i], "item %llu never delivered", (unsigned long long)i);
	if (expect_chunk) {
		/* Squares are quick: most chunks come whole.  Chunks of the
		 * wrong size could not. */
		uint64_t chunks = (n + expect_chunk - 1) / expect_chunk;

		REQUIREF(run.whole * 2 >= chunks, "only %llu of %llu chunks of %u items arrived whole",
			 (unsigned long long)run.whole, (unsigned long long)chunks, expect_chunk);
	}
	free(run.seen);
	msgpack_sbuffer_destroy(&sb);
	return run.notes;
}
