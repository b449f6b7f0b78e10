/* test_sdunits: the shipped units (mpoold.socket, mpoold.service, sysusers.d,
 * tmpfiles.d) under a real systemd as PID 1.
 *
 * Each test case group installs this build into a throw-away guest that
 * boots the host's systemd (run-under-systemd) and runs
 * tests/sdunits-guest.sh there once; the script prints "PASS name: ..." or
 * "FAIL name: ..." per check, and each check is one test case here:
 *
 * - fast (one boot, about 30 s): activation by the first client; READY=1
 *   with a fresh STATUS=; the sandbox (uid, capabilities, NoNewPrivs,
 *   seccomp) running a map, a spawn, a worker kill and a module from
 *   mpoold.conf; reload across a map; reload during tasks longer than
 *   TimeoutStartSec=; stop with a drain; a config error (the client is told
 *   file:line, one start, exit 2, the socket survives, "systemctl status"
 *   shows it, the journal line has no doubled prefix, a stream of clients
 *   never trips the start limit, the fixed file works without touching the
 *   socket); teardown.
 * - slow (one boot, about 70 s): the two checks that wait for a 30 s timer,
 *   the watchdog and a stop whose drain times out.
 *
 * It needs root and run-under-systemd: $MPOOL_SDRIG names the directory
 * that holds it, else the sdrig/ of the shared/ tree beside the sources
 * (tests/meson.build).  Without them every check is skipped and the suite
 * says so: it prints "SKIPPED: N checks" with the reason (tests/run-all
 * counts that line) and exits 77, which meson shows as SKIP.
 *
 * The guest and everything in it is gone when run-under-systemd returns; a
 * stop signal to this test stops the guest first. */
#include <check.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* The checks of each group, as sdunits-guest.sh names them. */
static const char *const fast_checks[] = {
	"activation", "ready-status", "sandbox", "reload-map", "reload-long-task",
	"stop-drain", "config-error", "config-error-log", "config-error-clients",
	"config-fixed", "teardown",
};
static const char *const slow_checks[] = { "watchdog", "stop-drain-timeout" };
#define N_FAST (int)(sizeof(fast_checks) / sizeof(fast_checks[0]))
#define N_SLOW (int)(sizeof(slow_checks) / sizeof(slow_checks[0]))

static char rig[4096];         /* run-under-systemd */
static char *output;           /* what the guest of the current group printed */
static int guest_status;
static volatile pid_t guest_pid;

static const char *env_or_die(const char *name)
{
	const char *v = getenv(name);

	if (!v || !*v) {
		fprintf(stderr, "test_sdunits: %s is not set (run it through meson test)\n", name);
		exit(1);
	}
	return v;
}

/* Where run-under-systemd is and whether it can run; NULL, or why not. */
static const char *find_rig(void)
{
	static char why[4200];
	const char *d = getenv("MPOOL_SDRIG");

	if (!d || !*d)
		d = env_or_die("MPOOL_SDRIG_DEFAULT");
	snprintf(rig, sizeof(rig), "%s/run-under-systemd", d);
	if (geteuid() != 0)
		return "not root (run-under-systemd boots systemd in namespaces it makes as root)";
	if (access(rig, X_OK) != 0) {
		snprintf(why, sizeof(why), "no run-under-systemd at %s: %s (set MPOOL_SDRIG to "
			 "the directory that holds it)", rig, strerror(errno));
		return why;
	}
	return NULL;
}

static void stop_guest(int sig)
{
	/* The rig in its own group cleans its guest up on SIGTERM. */
	if (guest_pid > 0)
		kill(-guest_pid, SIGTERM);
	signal(sig, SIG_DFL);
	raise(sig);
}

static char *slurp(const char *path)
{
	FILE *f = fopen(path, "re");
	char *buf = NULL;
	size_t cap = 0, len = 0, n;

	if (!f)
		return NULL;
	do {
		if (cap - len < 4096) {
			char *p = realloc(buf, cap + 65536);
			if (!p)
				break;
			buf = p;
			cap += 65536;
		}
		n = fread(buf + len, 1, cap - len - 1, f);
		len += n;
	} while (n > 0);
	fclose(f);
	if (buf)
		buf[len] = '\0';
	return buf;
}

/* Boots a guest with this build and the guest script installed, runs the
 * script's group there, keeps what it printed in output. */
static void run_guest(const char *group)
{
	char tree[] = "/tmp/sdunits-XXXXXX", script[512], log[512], cmd[2048];
	char env_bin[512], env_conf[512];
	const char *guest_script = "/usr/local/libexec/mpool-sdunits/sdunits-guest.sh";
	bool sanitized = getenv("MPOOL_SANITIZED") && strcmp(getenv("MPOOL_SANITIZED"), "1") == 0;
	pid_t pid;
	int fd, st;

	free(output);
	output = NULL;
	guest_status = -1;
	if (!mkdtemp(tree)) {
		fprintf(stderr, "mkdtemp: %s\n", strerror(errno));
		return;
	}
	snprintf(script, sizeof(script), "%s%s", tree, guest_script);
	snprintf(log, sizeof(log), "%s/guest.log", tree);
	snprintf(cmd, sizeof(cmd), "install -D -m 0755 '%s' '%s'",
		 env_or_die("MPOOL_SDUNITS_GUEST"), script);
	if (system(cmd) != 0) {
		fprintf(stderr, "cannot copy the guest script: %s\n", cmd);
		return;
	}
	snprintf(env_bin, sizeof(env_bin), "MPOOL_BINDIR=%s", env_or_die("MPOOL_BINDIR"));
	snprintf(env_conf, sizeof(env_conf), "MPOOL_CONF=%s", env_or_die("MPOOL_CONF"));
	printf("== %s checks: booting systemd with %s installed\n", group,
	       env_or_die("MPOOL_BUILD_ROOT"));
	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		char *argv[] = {
			rig, "-q", "-b", (char *)env_or_die("MPOOL_BUILD_ROOT"), "-d", tree,
			"--setenv", env_bin, "--setenv", env_conf,
			"--setenv", sanitized ? "MPOOL_SANITIZED=1" : "MPOOL_SANITIZED=0",
			"--", "/bin/bash", (char *)guest_script, (char *)group, NULL,
		};

		setpgid(0, 0);
		fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		if (fd < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0)
			_exit(126);
		execv(rig, argv);
		_exit(127);
	}
	if (pid < 0) {
		fprintf(stderr, "fork: %s\n", strerror(errno));
		return;
	}
	guest_pid = pid;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	guest_pid = 0;
	guest_status = st;
	output = slurp(log);
	/* Into the test log: each check's own line says what it saw. */
	printf("%s== %s checks: run-under-systemd exited %d\n", output ? output : "(no output)\n",
	       group, WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
	fflush(stdout);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tree);
	if (system(cmd) != 0)
		fprintf(stderr, "cannot remove %s\n", tree);
}

static void fast_setup(void)
{
	run_guest("fast");
}

static void slow_setup(void)
{
	run_guest("slow");
}

static void expect_pass(const char *name)
{
	char pass[128], failp[128];
	const char *p, *f;

	ck_assert_msg(output, "the guest printed nothing (run-under-systemd status %d)", guest_status);
	snprintf(pass, sizeof(pass), "\nPASS %s: ", name);
	snprintf(failp, sizeof(failp), "\nFAIL %s: ", name);
	p = strstr(output, pass);
	f = strstr(output, failp);
	if (f) {
		const char *end = strchr(f + 1, '\n');
		ck_abort_msg("%.*s", end ? (int)(end - f - 1) : (int)strlen(f + 1), f + 1);
	}
	ck_assert_msg(p, "check %s did not run; the guest printed:\n%s", name, output);
}

START_TEST(fast_check)
{
	expect_pass(fast_checks[_i]);
}
END_TEST

START_TEST(slow_check)
{
	expect_pass(slow_checks[_i]);
}
END_TEST

static Suite *sdunits_suite(void)
{
	Suite *s = suite_create("sdunits");
	TCase *tc;

	tc = tcase_create("fast");
	tcase_add_unchecked_fixture(tc, fast_setup, NULL);
	tcase_add_loop_test(tc, fast_check, 0, N_FAST);
	suite_add_tcase(s, tc);

	tc = tcase_create("slow");
	tcase_add_unchecked_fixture(tc, slow_setup, NULL);
	tcase_add_loop_test(tc, slow_check, 0, N_SLOW);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	const char *why = find_rig();
	SRunner *sr;
	int failed;

	if (why) {
		/* Not a pass: say it, in a line tests/run-all counts. */
		printf("SKIPPED: %d checks of the systemd units under a real systemd: %s\n",
		       N_FAST + N_SLOW, why);
		return 77;
	}
	signal(SIGTERM, stop_guest);
	signal(SIGINT, stop_guest);
	sr = srunner_create(sdunits_suite());
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	free(output);
	return failed ? 1 : 0;
}
