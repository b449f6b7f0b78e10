/* test_cluster: mpoold nodes sharing work through NATS JetStream.
 *
 * The config cases run mpoold --print-config and need no broker.  Every
 * mpoold a case starts runs in its own process group and dies with the
 * test (PR_SET_PDEATHSIG).
 *
 * Environment (tests/meson.build): MPOOLD, the daemon. */
#include <check.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define WAIT_MS 20000

static char dir[64];

static const char *mpoold(void)
{
	const char *p = getenv("MPOOLD");

	ck_assert_msg(p, "MPOOLD is not set (run through meson test)");
	return p;
}

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char *path_in(const char *name)
{
	static char buf[4][128];
	static unsigned k;
	char *p = buf[k++ % 4];

	snprintf(p, sizeof(buf[0]), "%s/%s", dir, name);
	return p;
}

static void write_file(const char *path, const char *text, mode_t mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);

	ck_assert_msg(fd >= 0, "cannot write %s: %s", path, strerror(errno));
	ck_assert(write(fd, text, strlen(text)) == (ssize_t)strlen(text));
	close(fd);
}

static char *slurp(const char *path)
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

/* Runs argv with stdout and stderr to a file; returns the exit status
 * (-1: killed) and the output in *ret_out. */
static int run(char *const argv[], char **ret_out)
{
	const char *out = path_in("run.out");
	int64_t deadline = now_ms() + WAIT_MS;
	int status;
	pid_t pid, r;

	pid = fork();
	ck_assert(pid >= 0);
	if (pid == 0) {
		int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

		prctl(PR_SET_PDEATHSIG, SIGKILL);
		setpgid(0, 0);
		if (fd < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0)
			_exit(126);
		execv(argv[0], argv);
		_exit(127);
	}
	while ((r = waitpid(pid, &status, WNOHANG)) == 0 && now_ms() < deadline) {
		struct timespec ts = { 0, 10 * 1000000 };

		nanosleep(&ts, NULL);
	}
	if (r == 0) {
		kill(-pid, SIGKILL);
		waitpid(pid, &status, 0);
		ck_abort_msg("%s did not exit within %d ms", argv[0], WAIT_MS);
	}
	*ret_out = slurp(out);
	return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void setup(void)
{
	snprintf(dir, sizeof(dir), "/tmp/mpcl-XXXXXX");
	ck_assert_msg(mkdtemp(dir), "mkdtemp: %s", strerror(errno));
}

static void teardown(void)
{
	char cmd[96];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "cannot remove %s\n", dir);
}

/* ---- config --------------------------------------------------------------- */

/* mpoold --config FILE --print-config, FILE holding text: its exit status
 * and output. */
static int print_config(const char *text, char **ret_out)
{
	const char *conf = path_in("mpoold.conf");
	char *argv[] = { (char *)mpoold(), "--config", (char *)conf, "--print-config", NULL };

	write_file(conf, text, 0600);
	return run(argv, ret_out);
}

struct conf_case {
	const char *text;
	int status;             /* 0 or 2 */
	const char *says;       /* in the output */
};

START_TEST(config_cluster_keys_checked_at_start)
{
	char text[1024];
	const struct conf_case cases[] = {
		/* Plain text to another machine needs saying so. */
		{ "cluster-url = nats://10.1.2.3:4222\n", 2,
		  "would send work and results unencrypted" },
		{ "cluster-url = nats://10.1.2.3:4222\ncluster-allow-plain = 1\n", 0,
		  "cluster-url = nats://10.1.2.3:4222" },
		{ "cluster-url = nats://127.0.0.1:4222, nats://[::1]:4223,nats://localhost\n", 0,
		  "cluster-url = nats://127.0.0.1:4222, nats://[::1]:4223,nats://localhost" },
		{ "cluster-url = tls://nats.example:4222,nats://nats2.example:4222\n", 2,
		  "'nats://nats2.example:4222' would send" },
		{ "cluster-url = tls://nats.example:4222\n", 0, "cluster-url = tls://nats.example" },
		{ "cluster-url = http://127.0.0.1:4222\n", 2, "is not nats://HOST:PORT" },
		{ "cluster-url = tls://nats.example:4222,\n", 2, "an empty URL" },
		{ "cluster-url = nats://u:secret@127.0.0.1:4222\n", 2,
		  "no user or password in a URL" },
		{ "workers = 0\n", 2, "workers = 0 makes a cluster gateway, which needs cluster-url" },
		{ "workers = 0\ncluster-url = nats://127.0.0.1:4222\n", 0, "workers = 0" },
		{ "cluster-url = nats://127.0.0.1:4222\ncluster-cert = /etc/hostname\n", 2,
		  "cluster-cert and cluster-key go together" },
		{ "cluster-url = nats://127.0.0.1:4222\ncluster-ca = /nonexistent/ca.pem\n", 2,
		  "cluster-ca: cannot read /nonexistent/ca.pem" },
		{ "cluster-url = nats://127.0.0.1:4222\nnode-name = a.b\n", 2,
		  "node-name: expected 1 to 32 letters" },
		{ "cluster-name = x y\n", 2, "cluster-name: expected 1 to 32 letters" },
		{ "cluster-spread = some\n", 2, "cluster-spread: expected maps, all or none" },
		{ "cluster-spread = all\n", 0, "cluster-spread = all" },
		{ "cluster-replicas = 6\n", 2, "cluster-replicas: expected an integer from 1 to 5" },
		{ "cluster-redelivery = 10\n", 2, "cluster-redelivery: expected an integer from 1000" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *out;
		int st = print_config(cases[i].text, &out);

		snprintf(text, sizeof(text), "%s", cases[i].text);
		ck_assert_msg(st == cases[i].status && strstr(out, cases[i].says),
			      "case %zu (%s): exit %d, wanted %d and '%s'; said:\n%s", i, text, st,
			      cases[i].status, cases[i].says, out);
		free(out);
	}
}
END_TEST

/* Credentials come from files; the password shows nowhere. */
START_TEST(config_credentials_from_files)
{
	char text[512], *out;
	int st;

	write_file(path_in("user"), "mpool\ns3cret-pass\n", 0600);
	write_file(path_in("oneline"), "mpool\n", 0600);
	write_file(path_in("creds"), "not checked until login\n", 0600);

	snprintf(text, sizeof(text), "cluster-url = nats://127.0.0.1:4222\n"
		 "cluster-user-file = %s\n", path_in("user"));
	st = print_config(text, &out);
	ck_assert_msg(st == 0 && strstr(out, path_in("user")) && !strstr(out, "s3cret"),
		      "exit %d:\n%s", st, out);
	free(out);

	snprintf(text, sizeof(text), "cluster-url = nats://127.0.0.1:4222\n"
		 "cluster-user-file = %s\n", path_in("oneline"));
	st = print_config(text, &out);
	ck_assert_msg(st == 2 && strstr(out, "the password on its second"), "exit %d:\n%s", st,
		      out);
	free(out);

	snprintf(text, sizeof(text), "cluster-url = nats://127.0.0.1:4222\n"
		 "cluster-user-file = %s\ncluster-creds = %s\n", path_in("user"), path_in("creds"));
	st = print_config(text, &out);
	ck_assert_msg(st == 2 && strstr(out, "set one, not both"), "exit %d:\n%s", st, out);
	free(out);
}
END_TEST

/* The node is named after the host unless told; only once clustered. */
START_TEST(config_node_name_defaults_to_host)
{
	char host[256], want[320], *out;
	int st;

	ck_assert(gethostname(host, sizeof(host)) == 0);
	host[strcspn(host, ".")] = '\0';
	st = print_config("cluster-url = nats://127.0.0.1:4222\n", &out);
	snprintf(want, sizeof(want), "\nnode-name = %s\n", host);
	ck_assert_msg(st == 0 && strstr(out, want), "exit %d, wanted '%s':\n%s", st, want + 1,
		      out);
	free(out);
	st = print_config("", &out);
	ck_assert_msg(st == 0 && strstr(out, "#node-name = (the host name)"), "exit %d:\n%s", st,
		      out);
	free(out);
	st = print_config("cluster-url = nats://127.0.0.1:4222\nnode-name = n-1_b\n", &out);
	ck_assert_msg(st == 0 && strstr(out, "\nnode-name = n-1_b\n"), "exit %d:\n%s", st, out);
	free(out);
}
END_TEST

static Suite *cluster_suite(void)
{
	Suite *s = suite_create("cluster");
	TCase *tc = tcase_create("config");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, config_cluster_keys_checked_at_start);
	tcase_add_test(tc, config_credentials_from_files);
	tcase_add_test(tc, config_node_name_defaults_to_host);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(cluster_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
