/* test_systemd: mpoold as a systemd service, without systemd as PID 1.
 *
 * - config: mpoold.conf errors name the file and the line (under journald
 *   without a doubled "mpoold: " prefix); the command line
 *   wins over the file; the sample config documents every key with its
 *   default (compared with mpoold --print-config).
 * - notify: a test that owns a NOTIFY_SOCKET datagram socket sees READY=1,
 *   STATUS=, WATCHDOG=1 (with WATCHDOG_USEC), RELOADING=1 + MONOTONIC_USEC
 *   and READY=1 around a SIGHUP, and STOPPING=1, in that order, each from
 *   the master's pid (SCM_CREDENTIALS), STATUS= rate-limited; READY=1 with a
 *   fresh STATUS= in its datagram; a reload's READY=1 while a long task
 *   still runs on an old worker; a drain that times out exits 3 with a
 *   warning.
 * - activation: mpoold under systemd-socket-activate serves a map and leaves
 *   the socket file alone; a passed socket of the wrong kind is refused; a
 *   config error or a module that does not load is told to every client
 *   (file:line, or the module) and in STATUS=, then mpoold exits 2 and the
 *   socket stays.
 * - listen: a socket mpoold binds itself: stale file replaced, live daemon
 *   refused, regular files and symlinks never removed, long paths and
 *   unwritable directories reported clearly, mode and group applied.
 * - units: systemd-analyze verify accepts the units (and finds the man pages
 *   they name); systemd-analyze security --offline rates mpoold.service at
 *   1.5 or lower; the stop timeout leaves room for mpoold's drain; the
 *   sysusers.d and tmpfiles.d entries apply to an empty root.
 *
 * Every daemon runs in its own process group, dies with the test process
 * (PR_SET_PDEATHSIG; its workers die with it) and is killed in teardown.
 * Every wait has a deadline.  Tools the tests need (systemd-analyze,
 * systemd-socket-activate, from .ci/install-deps) fail the test when
 * missing: a skipped check would pass silently.
 *
 * Environment (tests/meson.build): MPOOLD, the daemon; MPOOL_UNIT_DIR, the
 * configured units; MPOOL_SYSTEMD_SRC, systemd/ in the sources;
 * MPOOL_SAMPLE_CONF, the sample config there; MPOOL_MAN_DIR, the built man
 * pages. */
#include <check.h>

#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <msgpack.h>
#include <mpool/mpool.h>

#include "testutil.h"

#define WAIT_MS 20000          /* deadline of any wait */

/* ---- small helpers ------------------------------------------------------- */

static const char *env_or_fail(const char *name)
{
	const char *v = getenv(name);

	ck_assert_msg(v && *v, "%s is not set (tests/meson.build sets it)", name);
	return v;
}

/* The tool's path, or the test fails: CI installs it (.ci/install-deps).
 * Valid for the next three calls too. */
static const char *tool(const char *name, const char *package)
{
	static char bufs[4][512];
	static unsigned next;
	char path[2048], *save = NULL, *buf = bufs[next++ % 4];

	snprintf(path, sizeof(path), "%s:/usr/bin:/bin:/usr/sbin:/sbin",
		 getenv("PATH") ? getenv("PATH") : "");
	for (char *d = strtok_r(path, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
		snprintf(buf, sizeof(bufs[0]), "%s/%s", d, name);
		if (access(buf, X_OK) == 0)
			return buf;
	}
	ck_abort_msg("%s not found: .ci/install-deps installs it (Debian package %s)", name,
		     package);
	return NULL;
}

static const char *describe(int status, char *buf, size_t n)
{
	if (WIFEXITED(status))
		snprintf(buf, n, "exited with status %d", WEXITSTATUS(status));
	else if (WIFSIGNALED(status))
		snprintf(buf, n, "killed by SIG%s", sigabbrev_np(WTERMSIG(status)) ?
			 sigabbrev_np(WTERMSIG(status)) : "?");
	else
		snprintf(buf, n, "wait status %#x", status);
	return buf;
}

/* Each test case's temporary directories live under one per TCase, made
 * and removed by the runner process (unchecked fixture): a failed check
 * ends the test process with _exit(), which skips the checked teardown. */
static char base[48];

static void base_setup(void)
{
	snprintf(base, sizeof(base), "/tmp/mpsd-XXXXXX");
	if (!mkdtemp(base)) {
		fprintf(stderr, "mkdtemp: %s\n", strerror(errno));
		abort();
	}
}

static void setup(void)
{
	snprintf(tu_dir, sizeof(tu_dir), "%s/t-XXXXXX", base);
	ck_assert_msg(mkdtemp(tu_dir), "mkdtemp: %s", strerror(errno));
}

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	remove(p);
	return 0;
}

static void teardown(void)
{
	tu_kill_all();
	if (tu_dir[0])
		nftw(tu_dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	tu_dir[0] = '\0';
}

static void base_teardown(void)
{
	nftw(base, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- the daemon ------------------------------------------------------------ */

static const char *mpoold(void)
{
	return env_or_fail("MPOOLD");
}

static int connect_to(const char *sock)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), r;

	ck_assert(fd >= 0);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock);
	r = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
	close(fd);
	return r;
}

/* Waits until pid answers a ping on sock (or fails, with its log). */
static void wait_serving(pid_t pid, const char *sock, const char *log)
{
	int64_t end = tu_now_ms() + WAIT_MS;

	for (;;) {
		mpool *c;
		int status;

		if (waitpid(pid, &status, WNOHANG) == pid) {
			char how[64], *text = tu_slurp(log);

			tu_forget(pid);
			ck_abort_msg("mpoold %s before serving; its log:\n%s",
				     describe(status, how, sizeof(how)), text);
		}
		if (mpool_connect(sock, &c, NULL, 0) == 0) {
			int r = mpool_ping(c);

			mpool_close(c);
			if (r == 0)
				return;
		}
		ck_assert_msg(tu_now_ms() < end, "mpoold did not serve %s within %d ms", sock, WAIT_MS);
		tu_tick();
	}
}

/* Squares 0..n-1 through sock and checks every result. */
static void map_squares(const char *sock, unsigned n)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;
	mpool_value *v = NULL;
	const msgpack_object *o;
	char why[MPOOL_ERRMSG_MAX];
	mpool *c;
	int r;

	/* A passed socket's file exists from its bind(); connections are
	 * refused until the listen() that follows. */
	for (int64_t end = tu_now_ms() + WAIT_MS;
	     (r = mpool_connect(sock, &c, why, sizeof(why))) == -MPOOL_E_SYS && tu_now_ms() < end;)
		tu_tick();
	ck_assert_msg(r == 0, "connect: %s: %s", mpool_strerror(r), why);
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	for (unsigned i = 0; i < n; i++)
		msgpack_pack_unsigned_int(&pk, i);
	r = mpool_map_collect(c, "builtin.square", sb.data, sb.size, n, NULL, &v);
	ck_assert_msg(r == 0, "map: %s: %s", mpool_strerror(-r), mpool_errmsg(c));
	o = mpool_value_get(v);
	ck_assert(o->type == MSGPACK_OBJECT_ARRAY && o->via.array.size == n);
	for (unsigned i = 0; i < n; i++)
		if (o->via.array.ptr[i].via.u64 != (uint64_t)i * i)
			ck_abort_msg("item %u: %llu", i,
				     (unsigned long long)o->via.array.ptr[i].via.u64);
	mpool_value_free(v);
	msgpack_sbuffer_destroy(&sb);
	mpool_close(c);
}

/* Sends sig to pid and expects a clean exit. */
static void stop_ok(pid_t pid, int sig, const char *log)
{
	char how[64];
	int status;

	kill(pid, sig);
	status = tu_wait_exit(pid, WAIT_MS, "mpoold");
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		char *text = tu_slurp(log);

		ck_abort_msg("mpoold %s; its log:\n%s", describe(status, how, sizeof(how)), text);
	}
}

/* ---- config ------------------------------------------------------------------ */

struct bad_conf {
	const char *text;
	int line;
	const char *reason;
};

START_TEST(config_errors_name_file_and_line)
{
	static const struct bad_conf cases[] = {
		{ "workers = 2\nmax-jobs = 3\nworkerz = 4\n", 3, "unknown key 'workerz'" },
		{ "# c\n\nworkers = lots\n", 3, "workers: expected an integer from 0 to 1024, got 'lots'" },
		{ "max-frame = 1\n", 1, "max-frame: expected an integer from 1024" },
		{ "log-level = loud\n", 1, "log-level: expected error, warning, info or debug" },
		{ "socket-mode = 0999\n", 1, "socket-mode: expected octal" },
		{ "socket-group = no-such-group-mpool\n", 1, "no group named" },
		{ "drain-timeout = -5\n", 1, "drain-timeout: expected an integer" },
		{ "workers = 2\nworkers = 3\n", 2, "'workers' given twice (first on line 1)" },
		{ "workers 4\n", 1, "expected 'key = value'" },
		{ "[modules]\npath = /x.so\n", 1, "unknown section [modules]" },
		{ "[module]\npath = /x.so\nworkers = 2\n", 3, "unknown key 'workers' in [module]" },
		{ "[module]\npath = /x.so\n\n[module]\ninitargs = 1\n", 4, "[module] without a path" },
		{ "[module]\npath = /x.so\ninitargs = {\"a\": }\n", 3, "initargs: not JSON" },
		{ "[module]\npath = /a.so\npath = /b.so\n", 3, "'path' given twice" },
		{ "socket = /tmp/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
		  "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.sock\n", 1, "path too long" },
		{ "max-items = 1\n; a comment line that goes on and on and on and on and on and on "
		  "and on and on and on and on and on and on and on and on and on and on and on and "
		  "on and on and on and on and on and on and on and on and on\n", 2,
		  "line longer than 199 bytes" },
	};
	const char *conf = tu_path_in("mpoold.conf");

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *argv[] = { (char *)mpoold(), "--config", (char *)conf, "--print-config", NULL };
		char want[512], how[64], *out;
		int status;

		tu_write_file(conf, cases[i].text, 0644);
		status = tu_run(argv, NULL, &out);
		snprintf(want, sizeof(want), "mpoold: %s:%d: ", conf, cases[i].line);
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 2 || !strstr(out, want) ||
		    !strstr(out, cases[i].reason))
			ck_abort_msg("case %zu (%s): mpoold %s, said:\n%s\nwanted '%s' and '%s'", i,
				     cases[i].text, describe(status, how, sizeof(how)), out, want,
				     cases[i].reason);
		free(out);
	}
}
END_TEST

/* Under journald the journal names the program: the config error line is
 * "<3>file:line: reason", not "mpoold: file:line: ...", which the journal
 * showed as "mpoold[42]: mpoold: ...". */
START_TEST(config_error_journal_line)
{
	const char *conf = tu_path_in("mpoold.conf"), *out = tu_path_in("journal.out");
	char *argv[] = { (char *)mpoold(), "--config", (char *)conf, NULL };
	char js[96], want[512], how[64], *text;
	const char *env[] = { js, NULL };
	struct tu_spawn_opts o = { .env = env, .out = out };
	struct stat st;
	int status;

	tu_write_file(conf, "workers = 2\nno-such-key = 1\n", 0644);
	tu_write_file(out, "", 0644);
	ck_assert(stat(out, &st) == 0);
	/* stderr is then this very file, as journald's stream would be. */
	snprintf(js, sizeof(js), "JOURNAL_STREAM=%llu:%llu", (unsigned long long)st.st_dev,
		 (unsigned long long)st.st_ino);
	status = tu_wait_exit(tu_spawn(argv, &o), WAIT_MS, "mpoold");
	text = tu_slurp(out);
	snprintf(want, sizeof(want), "<3>%s:2: unknown key 'no-such-key'\n", conf);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 2 && strcmp(text, want) == 0,
		      "mpoold %s and wrote:\n%s\nwanted status 2 and:\n%s",
		      describe(status, how, sizeof(how)), text, want);
	free(text);
}
END_TEST

START_TEST(config_missing_file)
{
	char *argv[] = { (char *)mpoold(), "--config", tu_path_in("nope.conf"), "--print-config", NULL };
	char *out;
	int status = tu_run(argv, NULL, &out);

	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 2, "%s", out);
	ck_assert_msg(strstr(out, "nope.conf: No such file"), "%s", out);
	free(out);
}
END_TEST

START_TEST(config_command_line_wins)
{
	const char *conf = tu_path_in("mpoold.conf");
	char *argv[] = { (char *)mpoold(), "--config", (char *)conf, "-w", "5", "--max-jobs", "9",
			 "--module", "/from/cli.so", "--print-config", NULL };
	char *out;
	int status;

	tu_write_file(conf, "workers = 3\nmax-clients = 7\nmax-jobs = 8\n"
		   "[module]\npath = /from/file.so\ninitargs = [1, 2]\n", 0644);
	status = tu_run(argv, NULL, &out);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s", out);
	ck_assert_msg(strstr(out, "\nworkers = 5\n"), "%s", out);
	ck_assert_msg(strstr(out, "\nmax-jobs = 9\n"), "%s", out);
	ck_assert_msg(strstr(out, "\nmax-clients = 7\n"), "%s", out);
	ck_assert_msg(strstr(out, "path = /from/cli.so\n") && !strstr(out, "/from/file.so"),
		      "command-line modules replace the file's:\n%s", out);
	free(out);
}
END_TEST

/* The sample config shows every key, commented out, with the default
 * --print-config reports (a default in words, "(...)", for those that
 * depend on the machine).  And --help names every key. */
START_TEST(config_sample_documents_every_key)
{
	char *argv[] = { (char *)mpoold(), "--config", "/dev/null", "--print-config", NULL };
	char *help_argv[] = { (char *)mpoold(), "--help", NULL };
	char *sample = tu_slurp(env_or_fail("MPOOL_SAMPLE_CONF")), *out, *help, *save = NULL;
	unsigned keys = 0;
	int status;

	ck_assert_msg(sample[0], "cannot read %s", getenv("MPOOL_SAMPLE_CONF"));
	status = tu_run(argv, NULL, &out);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s", out);
	status = tu_run(help_argv, NULL, &help);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s", help);
	for (char *line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char key[64], want[256], opt[80];
		const char *eq = strstr(line, " = "), *k = line[0] == '#' ? line + 1 : line;

		if (!eq || line[0] == '[' || (line[0] == '#' && line[1] == ' '))
			continue;
		snprintf(key, sizeof(key), "%.*s", (int)(eq - k), k);
		if (strcmp(key, "socket") == 0 || strcmp(key, "workers") == 0 || line[0] == '#')
			snprintf(want, sizeof(want), "\n#%s = (", key);   /* machine-dependent */
		else
			snprintf(want, sizeof(want), "\n#%s\n", line);
		ck_assert_msg(strstr(sample, want), "the sample config lacks '%s'", want + 1);
		snprintf(opt, sizeof(opt), "--%s ", key);
		ck_assert_msg(strstr(help, opt), "mpoold --help lacks %s", opt);
		keys++;
	}
	ck_assert_msg(keys >= 23, "only %u keys in:\n%s", keys, out);
	free(sample);
	free(out);
	free(help);
}
END_TEST

/* ---- notify -------------------------------------------------------------- */

struct note {
	char text[300];          /* one line: "READY=1", "STATUS=..." */
	pid_t pid;               /* sender */
	int64_t at_ms;
	unsigned dgram;          /* which datagram it came in, from 1 on */
};

struct notes {
	int fd;
	struct note list[4096];
	unsigned n;
	unsigned n_dgrams;
};

static void notes_open(struct notes *ns, const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int on = 1;

	ns->n = 0;
	ns->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	ck_assert(ns->fd >= 0);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	ck_assert_msg(bind(ns->fd, (struct sockaddr *)&sa, sizeof(sa)) == 0, "bind %s: %s", path,
		      strerror(errno));
	ck_assert(setsockopt(ns->fd, SOL_SOCKET, SO_PASSCRED, &on, sizeof(on)) == 0);
}

/* Reads datagrams for at most timeout_ms (0: those queued now), splitting
 * each into its lines; returns early once a line starting with until
 * arrives (NULL: never).  Read often: mpoold blocks in sd_notify() while
 * the receiver's queue is full, as it would with a stuck systemd. */
static bool notes_read(struct notes *ns, const char *until, int timeout_ms)
{
	int64_t end = tu_now_ms() + timeout_ms;

	for (;;) {
		struct pollfd pfd = { ns->fd, POLLIN, 0 };
		int64_t left = end - tu_now_ms() > 0 ? end - tu_now_ms() : 0;
		char buf[4096], cbuf[CMSG_SPACE(sizeof(struct ucred))];
		struct iovec iov = { buf, sizeof(buf) - 1 };
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
				     .msg_controllen = sizeof(cbuf) };
		struct cmsghdr *cm;
		pid_t pid = 0;
		bool hit = false;
		ssize_t n;

		if (poll(&pfd, 1, (int)left) <= 0) {
			if (tu_now_ms() >= end)
				return false;
			continue;
		}
		n = recvmsg(ns->fd, &mh, MSG_DONTWAIT);
		if (n < 0)
			continue;
		buf[n] = '\0';
		ns->n_dgrams++;
		for (cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
			if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_CREDENTIALS) {
				struct ucred uc;

				memcpy(&uc, CMSG_DATA(cm), sizeof(uc));
				pid = uc.pid;
			}
		}
		for (char *save = NULL, *l = strtok_r(buf, "\n", &save); l;
		     l = strtok_r(NULL, "\n", &save)) {
			struct note *nt;

			ck_assert_msg(ns->n < sizeof(ns->list) / sizeof(ns->list[0]),
				      "too many notifications");
			nt = &ns->list[ns->n++];
			snprintf(nt->text, sizeof(nt->text), "%s", l);
			nt->pid = pid;
			nt->at_ms = tu_now_ms();
			nt->dgram = ns->n_dgrams;
			if (until && strncmp(l, until, strlen(until)) == 0)
				hit = true;
		}
		if (hit)
			return true;
	}
}

/* Index of the first note at or after from starting with prefix, or -1. */
static int notes_find(const struct notes *ns, unsigned from, const char *prefix)
{
	for (unsigned i = from; i < ns->n; i++)
		if (strncmp(ns->list[i].text, prefix, strlen(prefix)) == 0)
			return (int)i;
	return -1;
}

/* Index of the first note at or after from starting with prefix and
 * holding text, or -1. */
static int notes_find_with(const struct notes *ns, unsigned from, const char *prefix,
			   const char *text)
{
	for (unsigned i = from; i < ns->n; i++)
		if (strncmp(ns->list[i].text, prefix, strlen(prefix)) == 0 &&
		    strstr(ns->list[i].text, text))
			return (int)i;
	return -1;
}

static unsigned notes_count(const struct notes *ns, unsigned from, const char *prefix)
{
	unsigned k = 0;

	for (unsigned i = from; i < ns->n; i++)
		k += strncmp(ns->list[i].text, prefix, strlen(prefix)) == 0;
	return k;
}

static char *notes_dump(const struct notes *ns)
{
	static char buf[8192];
	size_t len = 0;

	buf[0] = '\0';
	for (unsigned i = 0; i < ns->n && len < sizeof(buf) - 400; i++)
		len += (size_t)snprintf(buf + len, sizeof(buf) - len, "  [%u] pid %d, datagram %u: %s\n",
					i, (int)ns->list[i].pid, ns->list[i].dgram, ns->list[i].text);
	return buf;
}

/* mpoold with 2 workers on sock, telling ns; extra: more arguments. */
static pid_t start_notified_with(struct notes *ns, const char *watchdog_usec, const char *sock,
				 const char *log, const char *const *extra)
{
	static char env_notify[128], env_wd[64];
	const char *env[3] = { env_notify, NULL, NULL };
	char *argv[24] = { (char *)mpoold(), "--config", "/dev/null", "-w", "2", "-s",
			   (char *)sock, "--log-level", "debug", NULL };
	struct tu_spawn_opts o = { .env = env, .out = log };
	int k = 9;

	for (; extra && *extra && k < 23; extra++)
		argv[k++] = (char *)*extra;
	argv[k] = NULL;

	notes_open(ns, tu_path_in("notify.sock"));
	snprintf(env_notify, sizeof(env_notify), "NOTIFY_SOCKET=%s", tu_path_in("notify.sock"));
	if (watchdog_usec) {
		snprintf(env_wd, sizeof(env_wd), "WATCHDOG_USEC=%s", watchdog_usec);
		env[1] = env_wd;
	}
	return tu_spawn(argv, &o);
}

static pid_t start_notified(struct notes *ns, const char *watchdog_usec, const char *sock,
			    const char *log)
{
	return start_notified_with(ns, watchdog_usec, sock, log, NULL);
}

/* Index of the first note at or after from that is READY=1, waiting for it
 * as long as WAIT_MS; fails the test without one. */
static int wait_ready(struct notes *ns, unsigned from)
{
	int64_t end = tu_now_ms() + WAIT_MS;
	int i;

	while ((i = notes_find(ns, from, "READY=1")) < 0) {
		ck_assert_msg(tu_now_ms() < end, "no READY=1:\n%s", notes_dump(ns));
		notes_read(ns, "READY=1", 500);
	}
	return i;
}

/* Waits for a STATUS= note at or after from holding text. */
static int wait_status_with(struct notes *ns, unsigned from, const char *text)
{
	int64_t end = tu_now_ms() + WAIT_MS;
	int i;

	while ((i = notes_find_with(ns, from, "STATUS=", text)) < 0) {
		ck_assert_msg(tu_now_ms() < end, "no STATUS= with '%s':\n%s", text, notes_dump(ns));
		notes_read(ns, "STATUS=", 500);
	}
	return i;
}

/* In a child of the test: one apply of builtin.sleep ms through sock;
 * exits 0 when it returned ms, 1 otherwise. */
static pid_t sleeper(const char *sock, int ms)
{
	pid_t pid = fork();

	ck_assert(pid >= 0);
	if (pid == 0) {
		msgpack_sbuffer sb;
		msgpack_packer pk;
		mpool_value *v = NULL;
		mpool *c;
		int r;

		if (mpool_connect(sock, &c, NULL, 0) < 0)
			_exit(2);
		msgpack_sbuffer_init(&sb);
		msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
		msgpack_pack_int(&pk, ms);
		r = mpool_apply(c, "builtin.sleep", sb.data, sb.size, &v);
		_exit(r == 0 && mpool_value_get(v)->via.u64 == (uint64_t)ms ? 0 : 1);
	}
	tu_track(pid);
	return pid;
}

START_TEST(notify_sequence)
{
	const char *sock = tu_path_in("s.sock"), *log = tu_path_in("mpoold.log");
	struct notes *ns = calloc(1, sizeof(*ns));
	struct timespec ts;
	int ready, reloading, ready2, stopping, st;
	unsigned long long mono;
	const char *m;
	pid_t pid;

	ck_assert(ns);
	/* WATCHDOG=1 every 100 ms. */
	pid = start_notified(ns, "200000", sock, log);
	ck_assert_msg(notes_read(ns, "READY=1", WAIT_MS), "no READY=1:\n%s", notes_dump(ns));
	ready = notes_find(ns, 0, "READY=1");
	wait_serving(pid, sock, log);
	/* Some work, then its count in STATUS=. */
	map_squares(sock, 100);
	for (int64_t end = tu_now_ms() + WAIT_MS; tu_now_ms() < end;) {
		if (notes_find_with(ns, (unsigned)ready, "STATUS=", "; 100 tasks done") >= 0 &&
		    notes_count(ns, (unsigned)ready, "WATCHDOG=1") >= 2)
			break;
		notes_read(ns, "STATUS=", 1000);
	}
	st = notes_find_with(ns, (unsigned)ready, "STATUS=", "; 100 tasks done");
	ck_assert_msg(st >= 0 && notes_count(ns, (unsigned)ready, "WATCHDOG=1") >= 2,
		      "wanted STATUS= ending in 100 tasks done and WATCHDOG=1 pings:\n%s",
		      notes_dump(ns));
	m = ns->list[st].text;
	ck_assert_msg(strstr(m, "workers") && strstr(m, "busy") && strstr(m, "idle") &&
		      strstr(m, "jobs") && strstr(m, "chunks queued") && strstr(m, "tasks done"),
		      "STATUS= lacks a field: %s", m);

	/* Reload: RELOADING=1 with the monotonic clock, then READY=1. */
	kill(pid, SIGHUP);
	ck_assert_msg(notes_read(ns, "RELOADING=1", WAIT_MS), "no RELOADING=1:\n%s",
		      notes_dump(ns));
	reloading = notes_find(ns, (unsigned)ready + 1, "RELOADING=1");
	ck_assert_msg(reloading >= 0 && (unsigned)reloading + 1 < ns->n &&
		      sscanf(ns->list[reloading + 1].text, "MONOTONIC_USEC=%llu", &mono) == 1,
		      "RELOADING=1 without MONOTONIC_USEC:\n%s", notes_dump(ns));
	clock_gettime(CLOCK_MONOTONIC, &ts);
	ck_assert_msg(mono <= (unsigned long long)ts.tv_sec * 1000000 + (unsigned long long)ts.tv_nsec / 1000 &&
		      mono + 20000000ull > (unsigned long long)ts.tv_sec * 1000000,
		      "MONOTONIC_USEC=%llu is not CLOCK_MONOTONIC", mono);
	if (notes_find(ns, (unsigned)reloading, "READY=1") < 0)
		ck_assert_msg(notes_read(ns, "READY=1", WAIT_MS), "no READY=1 after the reload:\n%s",
			      notes_dump(ns));
	ready2 = notes_find(ns, (unsigned)reloading, "READY=1");

	/* Stop: STOPPING=1, then a clean exit. */
	kill(pid, SIGTERM);
	ck_assert_msg(notes_read(ns, "STOPPING=1", WAIT_MS), "no STOPPING=1:\n%s", notes_dump(ns));
	stopping = notes_find(ns, (unsigned)ready2, "STOPPING=1");
	ck_assert_msg(ready < reloading && reloading < ready2 && ready2 < stopping,
		      "wrong order:\n%s", notes_dump(ns));
	ck_assert_msg(notes_count(ns, 0, "READY=1") == 2 && notes_count(ns, 0, "STOPPING=1") == 1,
		      "READY=1 twice and STOPPING=1 once:\n%s", notes_dump(ns));
	stop_ok(pid, 0, log);

	/* Only the master talks to systemd. */
	for (unsigned i = 0; i < ns->n; i++)
		ck_assert_msg(ns->list[i].pid == pid, "note %u came from pid %d, not the master %d:\n%s",
			      i, (int)ns->list[i].pid, (int)pid, notes_dump(ns));
	free(ns);
}
END_TEST

/* READY=1 comes with the STATUS= of that moment, in the same datagram:
 * systemctl status never shows "0 idle" once the unit is started. */
START_TEST(notify_ready_carries_status)
{
	const char *sock = tu_path_in("s.sock"), *log = tu_path_in("mpoold.log");
	struct notes *ns = calloc(1, sizeof(*ns));
	int ready, reloading;
	pid_t pid;

	ck_assert(ns);
	pid = start_notified(ns, NULL, sock, log);
	for (int round = 0; round < 2; round++) {
		ready = wait_ready(ns, round ? (unsigned)reloading : 0);
		ck_assert_msg((unsigned)ready + 1 < ns->n &&
			      ns->list[ready + 1].dgram == ns->list[ready].dgram &&
			      /* After a reload old workers may still be leaving:
			       * "2 idle, 2 starting or exiting". */
			      strncmp(ns->list[ready + 1].text, "STATUS=running; workers 0 busy, 2 idle",
				      strlen("STATUS=running; workers 0 busy, 2 idle")) == 0,
			      "READY=1 #%d without 'STATUS=running; workers 0 busy, 2 idle' in its "
			      "datagram:\n%s", round + 1, notes_dump(ns));
		if (round == 0) {
			wait_serving(pid, sock, log);
			kill(pid, SIGHUP);
			ck_assert_msg(notes_read(ns, "RELOADING=1", WAIT_MS), "no RELOADING=1:\n%s",
				      notes_dump(ns));
			reloading = notes_find(ns, (unsigned)ready + 1, "RELOADING=1");
		}
	}
	stop_ok(pid, SIGTERM, log);
	free(ns);
}
END_TEST

/* A reload is done (READY=1) once every slot has a new worker, while an old
 * one still runs a long task, which then finishes on the old worker:
 * systemd bounds a reload by TimeoutStartSec=, a task is not bounded. */
START_TEST(notify_reload_does_not_wait_for_long_tasks)
{
	const char *sock = tu_path_in("s.sock"), *log = tu_path_in("mpoold.log");
	struct notes *ns = calloc(1, sizeof(*ns));
	int ready, reloading, ready2, st;
	int64_t t0, took;
	char how[64];
	pid_t pid, task;

	ck_assert(ns);
	pid = start_notified(ns, NULL, sock, log);
	ready = wait_ready(ns, 0);
	wait_serving(pid, sock, log);
	task = sleeper(sock, 8000);
	wait_status_with(ns, (unsigned)ready, "workers 1 busy");
	t0 = tu_now_ms();
	kill(pid, SIGHUP);
	ck_assert_msg(notes_read(ns, "RELOADING=1", WAIT_MS), "no RELOADING=1:\n%s", notes_dump(ns));
	reloading = notes_find(ns, (unsigned)ready + 1, "RELOADING=1");
	ready2 = wait_ready(ns, (unsigned)reloading);
	took = ns->list[ready2].at_ms - t0;
	ck_assert_msg(took < 4000 && waitpid(task, &st, WNOHANG) == 0,
		      "READY=1 after the reload came %lld ms after SIGHUP, with an 8 s task "
		      "running (wanted under 4000 ms, the task still running):\n%s",
		      (long long)took, notes_dump(ns));
	/* The old worker finishes the task; then only new workers are left. */
	st = tu_wait_exit(task, WAIT_MS, "the 8 s apply");
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the apply across the reload %s",
		      describe(st, how, sizeof(how)));
	stop_ok(pid, SIGTERM, log);
	free(ns);
}
END_TEST

/* A stop whose drain times out was still asked for: exit 3 (mpoold.service
 * has SuccessExitStatus=3), logged as a warning. */
START_TEST(drain_timeout_exits_3)
{
	static const char *const extra[] = { "--drain-timeout", "500", NULL };
	const char *sock = tu_path_in("s.sock"), *log = tu_path_in("mpoold.log");
	struct notes *ns = calloc(1, sizeof(*ns));
	char how[64], *text;
	int ready, st;
	pid_t pid, task;

	ck_assert(ns);
	pid = start_notified_with(ns, NULL, sock, log, extra);
	ready = wait_ready(ns, 0);
	wait_serving(pid, sock, log);
	task = sleeper(sock, 20000);
	wait_status_with(ns, (unsigned)ready, "workers 1 busy");
	kill(pid, SIGTERM);
	st = tu_wait_exit(pid, WAIT_MS, "mpoold");
	text = tu_slurp(log);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 3 &&
		      strstr(text, "warning: exited: the drain timed out"),
		      "mpoold %s after its drain timed out (wanted status 3 and a warning):\n%s",
		      describe(st, how, sizeof(how)), text);
	free(text);
	st = tu_wait_exit(task, WAIT_MS, "the terminated apply");
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 1, "the terminated apply %s",
		      describe(st, how, sizeof(how)));
	free(ns);
}
END_TEST

/* getenv(name) in a task of fn's kind: "apply" runs it in a pool worker
 * (forked by the fork server), "spawn" in a supervised process (forked by
 * the master).  Returns a copy of the value, NULL when it is not set. */
static char *task_getenv(mpool *c, const char *how, const char *name)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;
	const msgpack_object *o;
	mpool_value *v = NULL;
	struct mpool_process *proc = NULL;
	char *out = NULL;
	int r;

	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_str_with_body(&pk, name, strlen(name));
	if (strcmp(how, "apply") == 0) {
		r = mpool_apply(c, "testmod.getenv", sb.data, sb.size, &v);
		ck_assert_msg(r == 0, "apply getenv %s: %s", name, mpool_errmsg(c));
		o = mpool_value_get(v);
	} else {
		r = mpool_spawn(c, "testmod.getenv", sb.data, sb.size, NULL, &proc);
		ck_assert_msg(r == 0, "spawn getenv %s: %s", name, mpool_errmsg(c));
		ck_assert_msg(mpool_process_join(proc, WAIT_MS) == 1, "the process did not end");
		r = mpool_process_result(proc, &o);
		ck_assert_msg(r == 0, "process getenv %s: %s", name, mpool_process_errmsg(proc));
	}
	if (o->type == MSGPACK_OBJECT_STR)
		out = strndup(o->via.str.ptr, o->via.str.size);
	else
		ck_assert_msg(o->type == MSGPACK_OBJECT_NIL, "getenv %s: type %d", name, o->type);
	mpool_value_free(v);
	if (proc)
		mpool_process_free(proc);
	msgpack_sbuffer_destroy(&sb);
	return out;
}

/* NOTIFY_SOCKET is the master's alone: no task, in a pool worker or in a
 * supervised process, can notify systemd in mpoold's name. */
START_TEST(notify_socket_stays_with_the_master)
{
	static char env_notify[128];
	const char *sock = tu_path_in("s.sock"), *log = tu_path_in("mpoold.log");
	const char *env[] = { env_notify, NULL };
	char *argv[] = { (char *)mpoold(), "--config", "/dev/null", "-w", "2", "-s", (char *)sock,
			 "--module", (char *)env_or_fail("MPOOL_TESTMOD"), NULL };
	struct tu_spawn_opts o = { .env = env, .out = log };
	struct notes *ns = calloc(1, sizeof(*ns));
	const char *hows[] = { "apply", "spawn" };
	mpool *c;
	pid_t pid;

	ck_assert(ns);
	notes_open(ns, tu_path_in("notify.sock"));
	snprintf(env_notify, sizeof(env_notify), "NOTIFY_SOCKET=%s", tu_path_in("notify.sock"));
	pid = tu_spawn(argv, &o);
	ck_assert_msg(notes_read(ns, "READY=1", WAIT_MS), "no READY=1:\n%s", notes_dump(ns));
	wait_serving(pid, sock, log);
	ck_assert(mpool_connect(sock, &c, NULL, 0) == 0);
	for (int i = 0; i < 2; i++) {
		char *path = task_getenv(c, hows[i], "PATH"), *notify;

		/* The variable a task does inherit: the function reads the
		 * environment at all. */
		ck_assert_msg(path && strcmp(path, getenv("PATH")) == 0, "%s: PATH is %s", hows[i],
			      path ? path : "not set");
		free(path);
		/* Several, so that both workers answer. */
		for (int k = 0; k < (i == 0 ? 8 : 1); k++) {
			notify = task_getenv(c, hows[i], "NOTIFY_SOCKET");
			ck_assert_msg(!notify, "%s: a task sees NOTIFY_SOCKET=%s", hows[i], notify);
		}
	}
	mpool_close(c);
	stop_ok(pid, SIGTERM, log);
	free(ns);
}
END_TEST

START_TEST(notify_no_watchdog_unless_asked)
{
	const char *sock = tu_path_in("s.sock"), *log = tu_path_in("mpoold.log");
	struct notes *ns = calloc(1, sizeof(*ns));
	pid_t pid;

	ck_assert(ns);
	pid = start_notified(ns, NULL, sock, log);
	ck_assert_msg(notes_read(ns, "READY=1", WAIT_MS), "no READY=1:\n%s", notes_dump(ns));
	wait_serving(pid, sock, log);
	map_squares(sock, 10);
	kill(pid, SIGTERM);
	ck_assert_msg(notes_read(ns, "STOPPING=1", WAIT_MS), "no STOPPING=1:\n%s", notes_dump(ns));
	stop_ok(pid, 0, log);
	notes_read(ns, NULL, 100);
	ck_assert_msg(notes_count(ns, 0, "WATCHDOG=1") == 0, "WATCHDOG=1 without WATCHDOG_USEC:\n%s",
		      notes_dump(ns));
	free(ns);
}
END_TEST

/* Work for a while and count STATUS= lines: at most one per 250 ms. */
START_TEST(notify_status_rate_limited)
{
	const char *sock = tu_path_in("s.sock"), *log = tu_path_in("mpoold.log");
	struct notes *ns = calloc(1, sizeof(*ns));
	int64_t start, elapsed;
	unsigned first, n_status;
	pid_t pid;
	mpool *c;

	ck_assert(ns);
	pid = start_notified(ns, "100000", sock, log);
	ck_assert_msg(notes_read(ns, "READY=1", WAIT_MS), "no READY=1:\n%s", notes_dump(ns));
	wait_serving(pid, sock, log);
	notes_read(ns, NULL, 300);
	first = ns->n;
	ck_assert(mpool_connect(sock, &c, NULL, 0) == 0);
	start = tu_now_ms();
	while (tu_now_ms() - start < 1500) {
		msgpack_sbuffer sb;
		msgpack_packer pk;
		mpool_value *v = NULL;

		msgpack_sbuffer_init(&sb);
		msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
		msgpack_pack_int(&pk, 3);
		if (mpool_apply(c, "builtin.square", sb.data, sb.size, &v) != 0)
			ck_abort_msg("apply: %s", mpool_errmsg(c));
		mpool_value_free(v);
		msgpack_sbuffer_destroy(&sb);
		notes_read(ns, NULL, 0);
	}
	elapsed = tu_now_ms() - start;
	mpool_close(c);
	notes_read(ns, NULL, 600);
	n_status = notes_count(ns, first, "STATUS=");
	/* Every 250 ms at most, plus one at each end of the window. */
	ck_assert_msg(n_status >= 2 && n_status <= (unsigned)((elapsed + 600) / 250) + 2,
		      "%u STATUS= lines in %lld ms:\n%s", n_status, (long long)elapsed + 600,
		      notes_dump(ns));
	stop_ok(pid, SIGTERM, log);
	free(ns);
}
END_TEST

/* ---- socket activation ------------------------------------------------------- */

static const char *pass_env(const char *name, char *buf, size_t n)
{
	const char *v = getenv(name);

	if (!v)
		return NULL;
	snprintf(buf, n, "%s=%s", name, v);
	return buf;
}

START_TEST(activation_serves_a_map)
{
	const char *ssa = tool("systemd-socket-activate", "systemd");
	const char *sock = tu_path_in("act.sock"), *log = tu_path_in("mpoold.log");
	char asan[512], ubsan[512], *argv[16], *text;
	struct tu_spawn_opts o = { .out = log };
	struct stat st;
	int k = 0;
	pid_t pid;

	argv[k++] = (char *)ssa;
	argv[k++] = "-l";
	argv[k++] = (char *)sock;
	/* systemd-socket-activate passes on only what -E names. */
	if (pass_env("ASAN_OPTIONS", asan, sizeof(asan))) {
		argv[k++] = "-E";
		argv[k++] = asan;
	}
	if (pass_env("UBSAN_OPTIONS", ubsan, sizeof(ubsan))) {
		argv[k++] = "-E";
		argv[k++] = ubsan;
	}
	argv[k++] = (char *)mpoold();
	argv[k++] = "--config";
	argv[k++] = "/dev/null";
	argv[k++] = "-w";
	argv[k++] = "2";
	argv[k++] = "-s";
	argv[k++] = tu_path_in("not-this.sock");   /* ignored: the passed socket wins */
	argv[k] = NULL;
	pid = tu_spawn(argv, &o);
	/* It listens at once and starts mpoold on the first connection. */
	for (int64_t end = tu_now_ms() + WAIT_MS; stat(sock, &st) < 0;) {
		ck_assert_msg(tu_now_ms() < end, "systemd-socket-activate did not create %s", sock);
		tu_tick();
	}
	map_squares(sock, 1000);
	text = tu_slurp(log);
	ck_assert_msg(strstr(text, "socket activation: serving ") && strstr(text, sock),
		      "log:\n%s", text);
	free(text);
	ck_assert_msg(stat(tu_path_in("not-this.sock"), &st) < 0, "mpoold bound its own socket too");
	stop_ok(pid, SIGTERM, log);
	/* systemd owns the file of a passed socket: mpoold leaves it. */
	ck_assert_msg(lstat(sock, &st) == 0 && S_ISSOCK(st.st_mode),
		      "mpoold removed the socket systemd passed");
}
END_TEST

START_TEST(activation_refuses_a_datagram_socket)
{
	const char *ssa = tool("systemd-socket-activate", "systemd");
	const char *sock = tu_path_in("dgram.sock"), *log = tu_path_in("mpoold.log");
	char *argv[] = { (char *)ssa, "--datagram", "-l", (char *)sock, (char *)mpoold(),
			 "--config", "/dev/null", "-w", "1", NULL };
	struct tu_spawn_opts o = { .out = log };
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char how[64], *text;
	struct stat st;
	int fd, status;
	pid_t pid;

	pid = tu_spawn(argv, &o);
	for (int64_t end = tu_now_ms() + WAIT_MS; stat(sock, &st) < 0;) {
		ck_assert_msg(tu_now_ms() < end, "systemd-socket-activate did not create %s", sock);
		tu_tick();
	}
	/* A datagram starts the service. */
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock);
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	ck_assert(fd >= 0);
	ck_assert(sendto(fd, "x", 1, 0, (struct sockaddr *)&sa, sizeof(sa)) == 1);
	close(fd);
	status = tu_wait_exit(pid, WAIT_MS, "mpoold");
	text = tu_slurp(log);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 1, "mpoold %s:\n%s",
		      describe(status, how, sizeof(how)), text);
	ck_assert_msg(strstr(text, "not a listening Unix stream socket"), "log:\n%s", text);
	free(text);
}
END_TEST

/* Started by a client with a config error, mpoold answers every client with
 * an error naming the file and the line, says it in STATUS=, and exits 2 once
 * no client is left, keeping the socket: exiting at once left the client
 * queued, so systemd started mpoold again and again until the start limit
 * failed mpoold.socket. */
static void activated_error(const char *const *args, const char *want)
{
	const char *ssa = tool("systemd-socket-activate", "systemd");
	const char *sock = tu_path_in("act.sock"), *log = tu_path_in("mpoold.log");
	struct notes *ns = calloc(1, sizeof(*ns));
	char asan[512], ubsan[512], notify[256], how[64], *argv[24], *text;
	struct tu_spawn_opts o = { .out = log };
	struct stat st;
	int k = 0, status;
	pid_t pid;

	ck_assert(ns);
	notes_open(ns, tu_path_in("notify.sock"));
	snprintf(notify, sizeof(notify), "NOTIFY_SOCKET=%s", tu_path_in("notify.sock"));
	argv[k++] = (char *)ssa;
	argv[k++] = "-l";
	argv[k++] = (char *)sock;
	argv[k++] = "-E";
	argv[k++] = notify;
	if (pass_env("ASAN_OPTIONS", asan, sizeof(asan))) {
		argv[k++] = "-E";
		argv[k++] = asan;
	}
	if (pass_env("UBSAN_OPTIONS", ubsan, sizeof(ubsan))) {
		argv[k++] = "-E";
		argv[k++] = ubsan;
	}
	argv[k++] = (char *)mpoold();
	for (; *args && k < 23; args++)
		argv[k++] = (char *)*args;
	argv[k] = NULL;
	pid = tu_spawn(argv, &o);
	for (int64_t end = tu_now_ms() + WAIT_MS; stat(sock, &st) < 0;) {
		ck_assert_msg(tu_now_ms() < end, "systemd-socket-activate did not create %s", sock);
		tu_tick();
	}
	/* The first client starts mpoold; each is told why it cannot serve. */
	for (int i = 0; i < 3; i++) {
		int64_t end = tu_now_ms() + WAIT_MS;
		mpool *c;
		int r;

		/* The socket's file exists from its bind(); connections are
		 * refused until the listen() that follows. */
		while ((r = mpool_connect(sock, &c, NULL, 0)) == -MPOOL_E_SYS && tu_now_ms() < end)
			tu_tick();
		ck_assert_msg(r == 0, "client %d: connect: %s", i, mpool_strerror(-r));
		r = mpool_ping(c);
		ck_assert_msg(r == -MPOOL_E_UNAVAILABLE && strstr(mpool_errmsg(c), want),
			      "client %d: ping -> %d (%s), wanted unavailable naming '%s'; log:\n%s",
			      i, r, mpool_errmsg(c), want, tu_slurp(log));
		mpool_close(c);
	}
	wait_status_with(ns, 0, want);
	status = tu_wait_exit(pid, WAIT_MS, "mpoold with a config error");
	text = tu_slurp(log);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 2 && strstr(text, want),
		      "mpoold %s, wanted status 2 and '%s' in its log:\n%s",
		      describe(status, how, sizeof(how)), want, text);
	free(text);
	ck_assert_msg(lstat(sock, &st) == 0 && S_ISSOCK(st.st_mode),
		      "mpoold removed the socket systemd passed");
	free(ns);
}

START_TEST(activation_config_error_answers_clients)
{
	const char *conf = tu_path_in("bad.conf");
	const char *const args[] = { "--config", conf, NULL };
	char want[512];

	tu_write_file(conf, "workers = 2\nno-such-key = 1\n", 0644);
	snprintf(want, sizeof(want), "%s:2: unknown key 'no-such-key'", conf);
	activated_error(args, want);
}
END_TEST

/* A module of the config that does not load cannot be fixed by a restart
 * either: the same answer, naming the module. */
START_TEST(activation_bad_module_answers_clients)
{
	const char *mod = tu_path_in("no-such-module.so");
	const char *const args[] = { "--config", "/dev/null", "-w", "1", "--module", mod, NULL };
	char want[512];

	snprintf(want, sizeof(want), "module %s: cannot load", mod);
	activated_error(args, want);
}
END_TEST

/* ---- a socket mpoold binds itself ---------------------------------------------- */

static pid_t start_plain(const char *sock, const char *log, const char *const *extra)
{
	char *argv[24];
	struct tu_spawn_opts o = { .out = log };
	int k = 0;

	argv[k++] = (char *)mpoold();
	argv[k++] = "--config";
	argv[k++] = "/dev/null";
	argv[k++] = "-w";
	argv[k++] = "1";
	argv[k++] = "-s";
	argv[k++] = (char *)sock;
	for (; extra && *extra && k < 23; extra++)
		argv[k++] = (char *)*extra;
	argv[k] = NULL;
	return tu_spawn(argv, &o);
}

/* Runs an mpoold on sock that must fail with status want and say why; as
 * user uid (0: ourselves) from the copy mpoold-copy, which that user can
 * reach. */
static void expect_refusal(const char *sock, int want, const char *why, uid_t uid)
{
	struct tu_spawn_opts o = { .out = tu_path_in("refused.log"), .uid = uid };
	char *argv[] = { uid ? tu_path_in("mpoold-copy") : (char *)mpoold(), "--config", "/dev/null",
			 "-w", "1", "-s", (char *)sock, NULL };
	char how[64], *text;
	int status;

	unlink(o.out);
	status = tu_wait_exit(tu_spawn(argv, &o), WAIT_MS, "the refused mpoold");
	text = tu_slurp(o.out);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == want && strstr(text, why),
		      "mpoold %s, wanted status %d and '%s':\n%s", describe(status, how, sizeof(how)),
		      want, why, text);
	free(text);
}

START_TEST(listen_replaces_stale_socket)
{
	const char *sock = tu_path_in("s.sock"), *log = tu_path_in("mpoold.log");
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char *text;
	int fd;
	pid_t pid;

	/* A socket file nobody listens on: what a SIGKILLed daemon leaves. */
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ck_assert(fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
	close(fd);
	ck_assert(connect_to(sock) < 0 && errno == ECONNREFUSED);
	pid = start_plain(sock, log, NULL);
	wait_serving(pid, sock, log);
	text = tu_slurp(log);
	ck_assert_msg(strstr(text, "removed stale socket"), "log:\n%s", text);
	free(text);
	stop_ok(pid, SIGTERM, log);
	/* Its own socket it removes on exit. */
	ck_assert_msg(access(sock, F_OK) < 0, "mpoold left its socket behind");
}
END_TEST

START_TEST(listen_refuses_second_daemon)
{
	const char *sock = tu_path_in("s.sock"), *log = tu_path_in("mpoold.log");
	pid_t pid = start_plain(sock, log, NULL);

	wait_serving(pid, sock, log);
	expect_refusal(sock, 1, "another mpoold is already serving", 0);
	/* The first one is untouched and still serves. */
	map_squares(sock, 10);
	stop_ok(pid, SIGTERM, log);
}
END_TEST

START_TEST(listen_never_removes_files_or_symlinks)
{
	const char *file = tu_path_in("file"), *link = tu_path_in("link");
	struct stat st;

	tu_write_file(file, "precious\n", 0644);
	ck_assert(symlink(file, link) == 0);
	expect_refusal(file, 1, "exists and is a regular file; refusing", 0);
	expect_refusal(link, 1, "exists and is a symbolic link; refusing", 0);
	ck_assert(lstat(link, &st) == 0 && S_ISLNK(st.st_mode));
	ck_assert(lstat(file, &st) == 0 && S_ISREG(st.st_mode) && st.st_size == 9);
}
END_TEST

START_TEST(listen_long_path_and_unwritable_dir)
{
	char longp[200], *copy_argv[] = { "/bin/cp", (char *)mpoold(), tu_path_in("mpoold-copy"), NULL };
	const char *ro = tu_path_in("ro");
	uid_t uid = 0;
	char *out;

	memset(longp, 'a', sizeof(longp));
	memcpy(longp, "/tmp/", 5);
	longp[sizeof(longp) - 1] = '\0';
	expect_refusal(longp, 2, "--socket: path too long (199 bytes, a socket path holds at most 107)",
		       0);

	/* A directory we may not write.  Root may write anywhere, so as root
	 * the daemon runs as nobody, from a copy nobody can reach. */
	ck_assert(mkdir(ro, 0755) == 0);
	if (geteuid() == 0) {
		ck_assert(chmod(base, 0755) == 0 && chmod(tu_dir, 0755) == 0);
		ck_assert(WIFEXITED(tu_run(copy_argv, NULL, &out)));
		free(out);
		uid = 65534;
	} else {
		ck_assert(chmod(ro, 0555) == 0);
	}
	expect_refusal(tu_path_in("ro/s.sock"), 1, "Permission denied (its directory must be writable",
		       uid);
	expect_refusal(tu_path_in("ro/sub/s.sock"), 1, "cannot create directory", uid);
}
END_TEST

START_TEST(listen_mode_and_group)
{
	const char *sock = tu_path_in("s.sock"), *log = tu_path_in("mpoold.log");
	gid_t gid = geteuid() == 0 ? 4242 : getgid();
	char gids[16];
	const char *extra[] = { "--socket-mode", "0640", "--socket-group", gids, NULL };
	struct stat st;
	pid_t pid;

	snprintf(gids, sizeof(gids), "%u", (unsigned)gid);
	pid = start_plain(sock, log, extra);
	wait_serving(pid, sock, log);
	ck_assert(lstat(sock, &st) == 0);
	ck_assert_msg((st.st_mode & 07777) == 0640, "mode %o", (unsigned)(st.st_mode & 07777));
	ck_assert_msg(st.st_gid == gid, "group %u, wanted %u", (unsigned)st.st_gid, (unsigned)gid);
	stop_ok(pid, SIGTERM, log);
}
END_TEST

/* The default socket directory of a user ($XDG_RUNTIME_DIR/mpool here;
 * /tmp/mpool-UID takes the same check) must be mpoold's own, 0700 (plus
 * the search bits --socket-mode asks for), and a real directory: otherwise another user who made it first could swap the
 * socket for theirs.  As root (whose default is /run/mpool) the daemon runs
 * as nobody, from a copy nobody can reach. */
static void run_in_xdg(uid_t uid, const char *xdg, const char *want, int status_want)
{
	char env_xdg[160];
	const char *env[] = { env_xdg, NULL };
	struct tu_spawn_opts o = { .env = env, .out = tu_path_in("xdg.log"), .uid = uid };
	char *argv[] = { uid ? tu_path_in("mpoold-copy") : (char *)mpoold(), "--config", "/dev/null",
			 "-w", "1", NULL };
	char how[64], *text, sock[192];
	pid_t pid;

	snprintf(env_xdg, sizeof(env_xdg), "XDG_RUNTIME_DIR=%s", xdg);
	snprintf(sock, sizeof(sock), "%s/mpool/mpoold.sock", xdg);
	unlink(o.out);
	pid = tu_spawn(argv, &o);
	if (!want) {
		int64_t end = tu_now_ms() + WAIT_MS;
		int st;

		/* A raw connect: whether a client trusts a daemon of another
		 * uid is the client's business, not this test's. */
		while (connect_to(sock) < 0) {
			if (waitpid(pid, &st, WNOHANG) == pid) {
				tu_forget(pid);
				text = tu_slurp(o.out);
				ck_abort_msg("mpoold %s in a good socket directory:\n%s",
					     describe(st, how, sizeof(how)), text);
			}
			ck_assert_msg(tu_now_ms() < end, "mpoold did not serve %s", sock);
			tu_tick();
		}
		stop_ok(pid, SIGTERM, o.out);
		return;
	}
	int status = tu_wait_exit(pid, WAIT_MS, "the refused mpoold");

	text = tu_slurp(o.out);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == status_want && strstr(text, want),
		      "mpoold %s, wanted status %d and '%s':\n%s", describe(status, how, sizeof(how)),
		      status_want, want, text);
	free(text);
}

START_TEST(listen_refuses_a_socket_dir_not_its_own)
{
	char *copy_argv[] = { "/bin/cp", (char *)mpoold(), tu_path_in("mpoold-copy"), NULL };
	const char *xdg = tu_path_in("xdg"), *sub = tu_path_in("xdg/mpool"), *real = tu_path_in("real");
	uid_t uid = 0, me;
	struct stat st;
	char *out;

	ck_assert(mkdir(xdg, 0755) == 0);
	if (geteuid() == 0) {
		ck_assert(chmod(base, 0755) == 0 && chmod(tu_dir, 0755) == 0);
		ck_assert(WIFEXITED(tu_run(copy_argv, NULL, &out)));
		free(out);
		uid = 65534;
		ck_assert(chown(xdg, uid, uid) == 0);
	}
	me = uid ? uid : geteuid();

	/* A plain file where the directory should be. */
	tu_write_file(sub, "x\n", 0644);
	run_in_xdg(uid, xdg, "is not a directory; refusing it", 1);
	ck_assert(unlink(sub) == 0);

	/* Made by someone else first, open to all: the attack. */
	ck_assert(mkdir(sub, 0777) == 0 && chmod(sub, 0777) == 0);
	if (uid) {
		run_in_xdg(uid, xdg, "belongs to uid 0, not to mpoold's uid 65534", 1);
		ck_assert(chown(sub, uid, uid) == 0);
	}
	/* Its own, but open to others. */
	run_in_xdg(uid, xdg, "has mode 0777; other users must have no access", 1);
	ck_assert(chmod(sub, 0750) == 0);
	run_in_xdg(uid, xdg, "has mode 0750", 1);
	ck_assert(rmdir(sub) == 0);

	/* Reached through a symbolic link, even to a good directory. */
	ck_assert(mkdir(real, 0700) == 0 && chown(real, me, me) == 0);
	ck_assert(symlink(real, sub) == 0);
	run_in_xdg(uid, xdg, "is a symbolic link; refusing it", 1);
	ck_assert(unlink(sub) == 0);

	/* Missing: made, and served.  The group may search it (never read or
	 * write it) because the default --socket-mode 0660 lets the group
	 * connect. */
	run_in_xdg(uid, xdg, NULL, 0);
	ck_assert(lstat(sub, &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == me);
	ck_assert_msg((st.st_mode & 07777) == 0710, "made with mode %o",
		      (unsigned)(st.st_mode & 07777));
	/* Its own directory again, and a stricter 0700 one: served. */
	run_in_xdg(uid, xdg, NULL, 0);
	ck_assert(chmod(sub, 0700) == 0);
	run_in_xdg(uid, xdg, NULL, 0);
}
END_TEST

/* A directory the operator chose (--socket) may be shared for reading, as
 * /run/mpool is, but no other user may write in it. */
START_TEST(listen_refuses_a_writable_socket_dir)
{
	const char *open_dir = tu_path_in("open"), *sticky = tu_path_in("sticky");
	const char *sock = tu_path_in("sticky/s.sock"), *log = tu_path_in("mpoold.log");
	pid_t pid;

	ck_assert(mkdir(open_dir, 0755) == 0 && chmod(open_dir, 0777) == 0);
	expect_refusal(tu_path_in("open/s.sock"), 1, "has mode 0777: other users could replace", 0);
	ck_assert(chmod(open_dir, 0775) == 0);
	expect_refusal(tu_path_in("open/s.sock"), 1, "has mode 0775", 0);
	/* Like /tmp: others may write, but not remove what is ours. */
	ck_assert(mkdir(sticky, 0755) == 0 && chmod(sticky, 01777) == 0);
	pid = start_plain(sock, log, NULL);
	wait_serving(pid, sock, log);
	stop_ok(pid, SIGTERM, log);
}
END_TEST

/* ---- the units ------------------------------------------------------------------ */

/* Copies the configured units into the test's directory with ExecStart=
 * naming the built mpoold (systemd-analyze wants the binary to exist). */
static void copy_units(void)
{
	const char *units = env_or_fail("MPOOL_UNIT_DIR");
	const char *names[] = { "mpoold.service", "mpoold.socket" };
	char src[512];

	for (int i = 0; i < 2; i++) {
		char *text, *line, *save = NULL;
		FILE *f;

		snprintf(src, sizeof(src), "%s/%s", units, names[i]);
		text = tu_slurp(src);
		ck_assert_msg(text[0], "cannot read %s", src);
		f = fopen(tu_path_in(names[i]), "we");
		ck_assert(f);
		for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
			if (strncmp(line, "ExecStart=", 10) == 0)
				fprintf(f, "ExecStart=%s\n", mpoold());
			else
				fprintf(f, "%s\n", line);
		}
		fclose(f);
		free(text);
	}
}

/* A man tree with the built pages, for the Documentation= check. */
static const char *man_tree(void)
{
	const char *built = env_or_fail("MPOOL_MAN_DIR");
	const char *pages[] = { "mpoold.8", "mpoold.conf.5", "mpctl.1", "libmpool.3" };
	char sub[256], src[512], dst[512];

	for (int i = 0; i < 4; i++) {
		const char *sec = strrchr(pages[i], '.') + 1;

		snprintf(sub, sizeof(sub), "%s/man/man%s", tu_dir, sec);
		mkdir(tu_path_in("man"), 0755);
		mkdir(sub, 0755);
		snprintf(src, sizeof(src), "%s/%s", built, pages[i]);
		snprintf(dst, sizeof(dst), "%s/%s", sub, pages[i]);
		ck_assert_msg(access(src, R_OK) == 0, "man page %s was not built (scdoc)", src);
		ck_assert(symlink(src, dst) == 0);
	}
	return tu_path_in("man");
}

START_TEST(units_verify)
{
	const char *sa = tool("systemd-analyze", "systemd");
	static char manpath[300];
	const char *env[] = { manpath, NULL };
	char *argv[] = { (char *)sa, "verify", tu_path_in("mpoold.service"), tu_path_in("mpoold.socket"),
			 NULL };
	char how[64], *out;
	int status;

	copy_units();
	snprintf(manpath, sizeof(manpath), "MANPATH=%s", man_tree());
	status = tu_run(argv, env, &out);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0 && !out[0],
		      "systemd-analyze verify %s:\n%s", describe(status, how, sizeof(how)), out);
	free(out);
}
END_TEST

START_TEST(units_exposure)
{
	const char *sa = tool("systemd-analyze", "systemd");
	char *argv[] = { (char *)sa, "security", "--offline=true", "--threshold=15",
			 tu_path_in("mpoold.service"), NULL };
	char how[64], *out, *p;
	double exposure;
	int status;

	copy_units();
	status = tu_run(argv, NULL, &out);
	p = strstr(out, "Overall exposure level for mpoold.service: ");
	ck_assert_msg(p && sscanf(p + strlen("Overall exposure level for mpoold.service: "), "%lf",
				  &exposure) == 1, "no exposure level in:\n%s", out);
	ck_assert_msg(exposure <= 1.5 && WIFEXITED(status) && WEXITSTATUS(status) == 0,
		      "exposure %.1f (%s), wanted 1.5 or lower:\n%s", exposure,
		      describe(status, how, sizeof(how)), out);
	free(out);
}
END_TEST

/* The sysusers.d and tmpfiles.d entries, applied to an empty root: user and
 * group mpool, and /run/mpool. */
START_TEST(units_sysusers_and_tmpfiles)
{
	const char *src = env_or_fail("MPOOL_SYSTEMD_SRC");
	const char *root = tu_path_in("root");
	char from[512], to[512], *out, *text, how[64];
	char *sysusers[] = { (char *)tool("systemd-sysusers", "systemd"), NULL, NULL };
	char *tmpfiles[] = { (char *)tool("systemd-tmpfiles", "systemd"), NULL, "--create", NULL };
	char rootarg[300];
	struct stat st;
	int status;

	snprintf(rootarg, sizeof(rootarg), "--root=%s", root);
	sysusers[1] = rootarg;
	tmpfiles[1] = rootarg;
	for (const char *const *d = (const char *const[]){ "", "/etc", "/usr", "/usr/lib",
	     "/usr/lib/sysusers.d", "/usr/lib/tmpfiles.d", NULL }; *d; d++) {
		snprintf(to, sizeof(to), "%s%s", root, *d);
		ck_assert(mkdir(to, 0755) == 0);
	}
	snprintf(from, sizeof(from), "%s/mpool.sysusers", src);
	snprintf(to, sizeof(to), "%s/usr/lib/sysusers.d/mpool.conf", root);
	text = tu_slurp(from);
	ck_assert_msg(text[0], "cannot read %s", from);
	tu_write_file(to, text, 0644);
	free(text);
	snprintf(from, sizeof(from), "%s/mpool.tmpfiles", src);
	snprintf(to, sizeof(to), "%s/usr/lib/tmpfiles.d/mpool.conf", root);
	text = tu_slurp(from);
	ck_assert_msg(text[0], "cannot read %s", from);
	tu_write_file(to, text, 0644);
	free(text);

	status = tu_run(sysusers, NULL, &out);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "systemd-sysusers %s:\n%s",
		      describe(status, how, sizeof(how)), out);
	free(out);
	snprintf(to, sizeof(to), "%s/etc/passwd", root);
	text = tu_slurp(to);
	ck_assert_msg(strncmp(text, "mpool:", 6) == 0 && strstr(text, "nologin"), "passwd: %s", text);
	free(text);
	snprintf(to, sizeof(to), "%s/etc/group", root);
	text = tu_slurp(to);
	ck_assert_msg(strncmp(text, "mpool:", 6) == 0, "group: %s", text);
	free(text);

	status = tu_run(tmpfiles, NULL, &out);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "systemd-tmpfiles %s:\n%s",
		      describe(status, how, sizeof(how)), out);
	free(out);
	snprintf(to, sizeof(to), "%s/run/mpool", root);
	ck_assert_msg(stat(to, &st) == 0 && S_ISDIR(st.st_mode) && (st.st_mode & 07777) == 0755,
		      "no /run/mpool 0755 under %s", root);
}
END_TEST

static long unit_seconds(const char *text, const char *key)
{
	const char *p = strstr(text, key);
	long v;

	ck_assert_msg(p && sscanf(p + strlen(key), "%ld", &v) == 1, "no %s in the unit", key);
	return v;
}

/* Lifecycle settings the issue fixes, and a stop timeout that leaves room
 * for mpoold's own drain deadline plus its 2 s terminate grace, so systemd
 * never SIGKILLs the master. */
START_TEST(units_lifecycle)
{
	char src[512], *service, *socket, *argv[] = { (char *)mpoold(), "--config", "/dev/null",
						       "--print-config", NULL }, *out, *p;
	unsigned long drain_ms;
	int status;

	snprintf(src, sizeof(src), "%s/mpoold.service", env_or_fail("MPOOL_UNIT_DIR"));
	service = tu_slurp(src);
	snprintf(src, sizeof(src), "%s/mpoold.socket", env_or_fail("MPOOL_UNIT_DIR"));
	socket = tu_slurp(src);
	for (const char *const *k = (const char *const[]){ "\nType=notify\n",
	     "\nNotifyAccess=main\n", "\nKillMode=mixed\n", "\nRestart=on-failure\n",
	     "\nExecReload=/bin/kill -HUP $MAINPID\n", "\nWatchdogSec=", "\nUser=mpool\n",
	     "\nRequires=mpoold.socket\n", NULL }; *k; k++)
		ck_assert_msg(strstr(service, *k), "mpoold.service lacks %s", *k + 1);
	for (const char *const *k = (const char *const[]){
	     "\nListenStream=/run/mpool/mpoold.sock\n", "\nSocketMode=0660\n",
	     "\nSocketGroup=mpool\n", NULL }; *k; k++)
		ck_assert_msg(strstr(socket, *k), "mpoold.socket lacks %s", *k + 1);
	status = tu_run(argv, NULL, &out);
	ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	p = strstr(out, "\ndrain-timeout = ");
	ck_assert(p && sscanf(p, "\ndrain-timeout = %lu", &drain_ms) == 1);
	ck_assert_msg(unit_seconds(service, "\nTimeoutStopSec=") * 1000 >= (long)drain_ms + 2000 + 5000,
		      "TimeoutStopSec must exceed drain-timeout (%lu ms) + 2 s + a 5 s margin",
		      drain_ms);
	free(out);
	free(service);
	free(socket);
}
END_TEST

static Suite *systemd_suite(void)
{
	Suite *s = suite_create("systemd");
	TCase *tc;

	tc = tcase_create("config");
	tcase_add_unchecked_fixture(tc, base_setup, base_teardown);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, config_errors_name_file_and_line);
	tcase_add_test(tc, config_error_journal_line);
	tcase_add_test(tc, config_missing_file);
	tcase_add_test(tc, config_command_line_wins);
	tcase_add_test(tc, config_sample_documents_every_key);
	suite_add_tcase(s, tc);

	tc = tcase_create("notify");
	tcase_add_unchecked_fixture(tc, base_setup, base_teardown);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, notify_sequence);
	tcase_add_test(tc, notify_no_watchdog_unless_asked);
	tcase_add_test(tc, notify_status_rate_limited);
	tcase_add_test(tc, notify_socket_stays_with_the_master);
	tcase_add_test(tc, notify_ready_carries_status);
	tcase_add_test(tc, notify_reload_does_not_wait_for_long_tasks);
	tcase_add_test(tc, drain_timeout_exits_3);
	suite_add_tcase(s, tc);

	tc = tcase_create("activation");
	tcase_add_unchecked_fixture(tc, base_setup, base_teardown);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, activation_serves_a_map);
	tcase_add_test(tc, activation_refuses_a_datagram_socket);
	tcase_add_test(tc, activation_config_error_answers_clients);
	tcase_add_test(tc, activation_bad_module_answers_clients);
	suite_add_tcase(s, tc);

	tc = tcase_create("listen");
	tcase_add_unchecked_fixture(tc, base_setup, base_teardown);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, listen_replaces_stale_socket);
	tcase_add_test(tc, listen_refuses_second_daemon);
	tcase_add_test(tc, listen_never_removes_files_or_symlinks);
	tcase_add_test(tc, listen_long_path_and_unwritable_dir);
	tcase_add_test(tc, listen_mode_and_group);
	tcase_add_test(tc, listen_refuses_a_socket_dir_not_its_own);
	tcase_add_test(tc, listen_refuses_a_writable_socket_dir);
	suite_add_tcase(s, tc);

	tc = tcase_create("units");
	tcase_add_unchecked_fixture(tc, base_setup, base_teardown);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, units_verify);
	tcase_add_test(tc, units_exposure);
	tcase_add_test(tc, units_lifecycle);
	tcase_add_test(tc, units_sysusers_and_tmpfiles);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(systemd_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
