/* test_cluster: mpoold nodes sharing work through NATS JetStream.
 *
 * The config cases run mpoold --print-config and need no broker.  The
 * others start a real nats-server (JetStream on, its store in the test's
 * temporary directory, loopback, a free port) and mpoold nodes through the
 * fixture (tests/fixture.c); each runs in its own process group and dies
 * with the test (PR_SET_PDEATHSIG).  nats-server comes from
 * .ci/install-deps: a missing one fails the suite.
 *
 * Environment (tests/meson.build): MPOOLD, the daemon; MPOOL_SYSTEMD_SRC,
 * systemd/ in the sources (the sample nats-server config, the drop-in);
 * MPOOL_UNIT_DIR, the configured units; MPOOL_TESTMOD, tests/testmod.c's
 * module; MPOOL_PYMOD, the py module (set only where python3-dev built
 * it); MPOOL_NATSJWT, tests/natsjwt.py (an operator's JWTs and a user's
 * credentials file). */
#include <check.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

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

#include <msgpack.h>
#include <mpool/mpool.h>

#include "fixture.h"
#include "testutil.h"

#define WAIT_MS 20000

static const char *mpoold(void)
{
	const char *p = getenv("MPOOLD");

	ck_assert_msg(p, "MPOOLD is not set (run through meson test)");
	return p;
}

static const char *env_path(const char *name)
{
	const char *p = getenv(name);

	REQUIREF(p && *p, "%s is not set (run through meson test)", name);
	return p;
}

static void setup(void)
{
	snprintf(tu_dir, sizeof(tu_dir), "/tmp/mpcl-XXXXXX");
	ck_assert_msg(mkdtemp(tu_dir), "mkdtemp: %s", strerror(errno));
}

static void teardown(void)
{
	char cmd[96];

	tu_kill_all();
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tu_dir);
	if (system(cmd) != 0)
		fprintf(stderr, "cannot remove %s\n", tu_dir);
}

/* ---- config --------------------------------------------------------------- */

/* mpoold --config FILE --print-config, FILE holding text: its exit status
 * and output. */
static int print_config(const char *text, char **ret_out)
{
	const char *conf = tu_path_in("mpoold.conf");
	char *argv[] = { (char *)mpoold(), "--config", (char *)conf, "--print-config", NULL };
	int st;

	tu_write_file(conf, text, 0600);
	st = tu_run(argv, NULL, ret_out);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
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

	tu_write_file(tu_path_in("user"), "mpool\ns3cret-pass\n", 0600);
	tu_write_file(tu_path_in("oneline"), "mpool\n", 0600);
	tu_write_file(tu_path_in("creds"), "not checked until login\n", 0600);

	snprintf(text, sizeof(text), "cluster-url = nats://127.0.0.1:4222\n"
		 "cluster-user-file = %s\n", tu_path_in("user"));
	st = print_config(text, &out);
	ck_assert_msg(st == 0 && strstr(out, tu_path_in("user")) && !strstr(out, "s3cret"),
		      "exit %d:\n%s", st, out);
	free(out);

	snprintf(text, sizeof(text), "cluster-url = nats://127.0.0.1:4222\n"
		 "cluster-user-file = %s\n", tu_path_in("oneline"));
	st = print_config(text, &out);
	ck_assert_msg(st == 2 && strstr(out, "the password on its second"), "exit %d:\n%s", st,
		      out);
	free(out);

	snprintf(text, sizeof(text), "cluster-url = nats://127.0.0.1:4222\n"
		 "cluster-user-file = %s\ncluster-creds = %s\n", tu_path_in("user"),
		 tu_path_in("creds"));
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


/* ---- a real broker ------------------------------------------------------- */

struct broker {
	char dir[64];
	int port;
	pid_t pid;
};

static int free_port(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	REQUIRE(fd >= 0);
	REQUIRE(bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0);
	REQUIRE(getsockname(fd, (struct sockaddr *)&a, &len) == 0);
	close(fd);
	return ntohs(a.sin_port);
}

static bool port_open(int port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	bool ok = fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;

	if (fd >= 0)
		close(fd);
	return ok;
}

static const char *broker_conf;   /* a config file for the next broker_start, or NULL */

/* Starts nats-server with JetStream on port (0: a free one), its store in
 * b->dir (made once), and waits until it accepts connections. */
static void broker_start(struct broker *b, int port)
{
	char portbuf[16], store[96], logf[96];
	pid_t parent = getpid();
	int64_t end;

	if (!b->dir[0]) {
		snprintf(b->dir, sizeof(b->dir), "/tmp/mpcl-nats-XXXXXX");
		REQUIREF(mkdtemp(b->dir), "mkdtemp: %s", strerror(errno));
	}
	b->port = port ? port : free_port();
	snprintf(portbuf, sizeof(portbuf), "%d", b->port);
	snprintf(store, sizeof(store), "%s/js", b->dir);
	snprintf(logf, sizeof(logf), "%s/nats.log", b->dir);
	b->pid = fork();
	REQUIRE(b->pid >= 0);
	if (b->pid == 0) {
		int fd = open(logf, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);

		setpgid(0, 0);
		if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
			_exit(127);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		if (broker_conf)
			execlp("nats-server", "nats-server", "-c", broker_conf, "-js", "-a",
			       "127.0.0.1", "-p", portbuf, "-sd", store, (char *)NULL);
		else
			execlp("nats-server", "nats-server", "-js", "-a", "127.0.0.1", "-p", portbuf,
			       "-sd", store, (char *)NULL);
		fprintf(stderr, "nats-server: %s (.ci/install-deps installs it)\n", strerror(errno));
		_exit(127);
	}
	setpgid(b->pid, b->pid);
	end = fx_now_ms() + WAIT_MS;
	while (!port_open(b->port)) {
		int st;

		if (waitpid(b->pid, &st, WNOHANG) == b->pid) {
			b->pid = 0;
			FAILF("nats-server exited at start (is it installed? see %s)", logf);
		}
		REQUIREF(fx_now_ms() < end, "nats-server did not listen within %d ms", WAIT_MS);
		fx_tick();
	}
}

static void broker_kill(struct broker *b)
{
	if (b->pid > 0) {
		killpg(b->pid, SIGKILL);
		waitpid(b->pid, NULL, 0);
	}
	b->pid = 0;
}

static void broker_free(struct broker *b)
{
	char cmd[320];

	broker_kill(b);
	if (b->dir[0]) {
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", b->dir);
		if (system(cmd) != 0)
			fprintf(stderr, "cannot remove %s\n", b->dir);
	}
}

/* ---- nodes ---------------------------------------------------------------- */

struct node_args {
	char url[64], name[32], redelivery[16];
	const char *argv[24];
};

/* Starts node name on b through the fixture (two workers unless extra says). */
static void node_start(struct fx *fx, const struct broker *b, const char *name,
		       const char *const *extra)
{
	struct node_args a;
	int n = 0;

	snprintf(a.url, sizeof(a.url), "nats://127.0.0.1:%d", b->port);
	snprintf(a.name, sizeof(a.name), "%s", name);
	a.argv[n++] = "--cluster-url";
	a.argv[n++] = a.url;
	a.argv[n++] = "--node-name";
	a.argv[n++] = a.name;
	a.argv[n++] = "--cluster-redelivery";
	a.argv[n++] = "1000";
	for (int i = 0; extra && extra[i] && n < 22; i++)
		a.argv[n++] = extra[i];
	a.argv[n] = NULL;
	fx_start(fx, a.argv);
}

/* The status's cluster map through c; the caller frees *ret_v. */
static const msgpack_object *cluster_status(struct fx *fx, mpool_value **ret_v)
{
	const msgpack_object *o;
	int r = mpool_status(fx->c, ret_v);

	REQUIREF(r == 0, "mpool_status: %s", mpool_strerror(-r));
	o = fx_obj_get(mpool_value_get(*ret_v), "cluster");
	REQUIREF(o && o->type == MSGPACK_OBJECT_MAP, "the status has no cluster map");
	return o;
}

static bool cluster_str_is(struct fx *fx, const char *key, const char *want)
{
	mpool_value *v = NULL;
	char buf[64] = "";
	bool ok;

	fx_get_str(cluster_status(fx, &v), key, buf, sizeof(buf));
	ok = strcmp(buf, want) == 0;
	mpool_value_free(v);
	return ok;
}

static uint64_t cluster_u64(struct fx *fx, const char *key)
{
	mpool_value *v = NULL;
	uint64_t n = 0;

	REQUIREF(fx_get_u64(cluster_status(fx, &v), key, &n), "cluster.%s missing", key);
	mpool_value_free(v);
	return n;
}

/* Live nodes fx sees. */
static unsigned cluster_nodes(struct fx *fx)
{
	mpool_value *v = NULL;
	const msgpack_object *nodes = fx_obj_get(cluster_status(fx, &v), "nodes");
	unsigned n = nodes && nodes->type == MSGPACK_OBJECT_ARRAY ? nodes->via.array.size : 0;

	mpool_value_free(v);
	return n;
}

static void wait_nodes(struct fx *fx, unsigned n)
{
	int64_t end = fx_now_ms() + WAIT_MS;

	while (cluster_nodes(fx) != n) {
		REQUIREF(fx_now_ms() < end, "node sees %u nodes, not %u, after %d ms",
			 cluster_nodes(fx), n, WAIT_MS);
		fx_tick();
	}
}

static struct broker br;
static char py_dir[64];            /* a test's Python code; "" when none */

static void it_setup(void)
{
	memset(&br, 0, sizeof(br));
	broker_conf = NULL;
	py_dir[0] = '\0';
}

static void trio_teardown(void);

/* Also after a failed test (a checked fixture runs in the test's process). */
static void it_teardown(void)
{
	char cmd[128];

	broker_free(&br);
	trio_teardown();
	if (py_dir[0]) {
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", py_dir);
		if (system(cmd) != 0)
			fprintf(stderr, "cannot remove %s\n", py_dir);
	}
}

/* Three nodes: a map through one runs on all three, complete and in order. */
START_TEST(three_nodes_share_a_map)
{
	struct fx a, b, c;
	struct mpool_map_opts o = MPOOL_MAP_OPTS(.chunksize = 500);

	broker_start(&br, 0);
	node_start(&a, &br, "a", NULL);
	node_start(&b, &br, "b", NULL);
	node_start(&c, &br, "c", NULL);
	wait_nodes(&a, 3);
	wait_nodes(&b, 3);
	wait_nodes(&c, 3);
	fx_map_squares(a.c, 200000, 0, &o, 0);
	REQUIREF(fx_status_get(&a, "totals.tasks_done") > 0, "node a ran nothing");
	REQUIREF(fx_status_get(&b, "totals.tasks_done") > 0, "node b ran nothing");
	REQUIREF(fx_status_get(&c, "totals.tasks_done") > 0, "node c ran nothing");
	REQUIREF(cluster_u64(&a, "chunks_sent") > 0, "a sent no chunk out");
	REQUIREF(cluster_u64(&b, "chunks_ran_for_others") > 0, "b ran nothing for a");
	REQUIREF(cluster_u64(&a, "chunks_out") == 0, "chunks still out after the map");
	fx_stop(&c);
	fx_stop(&b);
	fx_stop(&a);
}
END_TEST

/* A shared request for a function no node has fails at once. */
START_TEST(function_missing_everywhere)
{
	struct fx a, b;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	int r;

	broker_start(&br, 0);
	node_start(&a, &br, "a", NULL);
	node_start(&b, &br, "b", NULL);
	wait_nodes(&a, 2);
	fx_sbuf_init(&sb, &pk);
	fx_pack_range(&pk, 0, 10);
	r = mpool_map(a.c, "nosuch.fn", sb.data, sb.size, 10, NULL, NULL, NULL, NULL);
	REQUIREF(r == -MPOOL_E_NOFUNC && strstr(mpool_errmsg(a.c), "on any node"),
		 "map of a missing function: %s: %s", mpool_strerror(-r), mpool_errmsg(a.c));
	msgpack_sbuffer_destroy(&sb);
	fx_stop(&b);
	fx_stop(&a);
}
END_TEST

/* Nodes announce their functions: a chunk goes only to a node that has its
 * function, and a node may share a request for a function only others
 * have. */
START_TEST(functions_only_where_loaded)
{
	static const char *mod[] = { "--module", NULL, NULL };
	struct fx a, b;
	struct mpool_map_opts o = MPOOL_MAP_OPTS(.chunksize = 5);
	struct mpool_map_opts local = MPOOL_MAP_OPTS(.chunksize = 5, .spread = -1);
	struct mpool_map_summary sum;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	mpool_value *v = NULL;
	const msgpack_object *res;
	int r;

	mod[1] = env_path("MPOOL_TESTMOD");
	broker_start(&br, 0);
	node_start(&a, &br, "a", mod);
	node_start(&b, &br, "b", NULL);
	wait_nodes(&a, 2);
	wait_nodes(&b, 2);
	fx_sbuf_init(&sb, &pk);
	fx_pack_range(&pk, 0, 400);
	r = mpool_map_collect(b.c, "testmod.ok", sb.data, sb.size, 400, &o, &v);
	REQUIREF(r == 0, "map of a function only a has, through b: %s: %s", mpool_strerror(-r),
		 mpool_errmsg(b.c));
	res = mpool_value_get(v);
	REQUIRE(res->type == MSGPACK_OBJECT_ARRAY && res->via.array.size == 400);
	for (uint32_t i = 0; i < 400; i++)
		REQUIREF(res->via.array.ptr[i].via.u64 == i, "item %u wrong", i);
	mpool_value_free(v);
	REQUIREF(fx_status_get(&b, "totals.tasks_done") == 0, "b ran chunks it cannot run");
	REQUIREF(fx_status_get(&a, "totals.tasks_done") >= 400, "a did not run them");
	r = mpool_map(b.c, "testmod.ok", sb.data, sb.size, 400, &local, NULL, NULL, &sum);
	REQUIREF(r == -MPOOL_E_NOFUNC, "a local map of a function b lacks: %s",
		 mpool_strerror(-r));
	msgpack_sbuffer_destroy(&sb);
	fx_stop(&b);
	fx_stop(&a);
}
END_TEST

/* A module's load hook gives its functions after start (the py module's
 * Python functions, reported by the fork server): the node announces them
 * once the master knows them, so that another node can share requests
 * for them. */
START_TEST(loaded_functions_announced)
{
	const char *pymod = getenv("MPOOL_PYMOD");
	char path[128], initargs[256];
	const char *extra[] = { "--module", NULL, "--initargs", initargs, NULL };
	struct fx a, b;
	struct mpool_map_opts o = MPOOL_MAP_OPTS(.chunksize = 5);
	msgpack_sbuffer sb;
	msgpack_packer pk;
	mpool_value *v = NULL;
	const msgpack_object *res;
	int64_t end;
	int r;

	if (!pymod || !*pymod) {
		printf("loaded_functions_announced: no py module here (python3-dev): "
		       "nothing to check\n");
		return;
	}
	snprintf(py_dir, sizeof(py_dir), "/tmp/mpool-clpy-XXXXXX");
	REQUIREF(mkdtemp(py_dir), "mkdtemp: %s", strerror(errno));
	snprintf(path, sizeof(path), "%s/cltasks.py", py_dir);
	tu_write_file(path, "def triple(x):\n    return 3 * x\n", 0644);
	snprintf(initargs, sizeof(initargs), "{\"modules\": [\"cltasks\"], \"path\": [\"%s\"]}",
		 py_dir);
	extra[1] = pymod;
	broker_start(&br, 0);
	node_start(&a, &br, "a", extra);
	node_start(&b, &br, "b", NULL);
	wait_nodes(&a, 2);
	wait_nodes(&b, 2);
	fx_sbuf_init(&sb, &pk);
	fx_pack_range(&pk, 0, 100);
	/* Until a's heartbeat names the function, b knows no node that has it. */
	end = fx_now_ms() + WAIT_MS;
	while ((r = mpool_map_collect(b.c, "py.cltasks.triple", sb.data, sb.size, 100, &o,
				      &v)) == -MPOOL_E_NOFUNC) {
		REQUIREF(fx_now_ms() < end, "after %d ms b still finds py.cltasks.triple on no "
			 "node: %s", WAIT_MS, mpool_errmsg(b.c));
		fx_tick();
	}
	REQUIREF(r == 0, "map of a loaded function only a has, through b: %s: %s",
		 mpool_strerror(-r), mpool_errmsg(b.c));
	res = mpool_value_get(v);
	REQUIRE(res->type == MSGPACK_OBJECT_ARRAY && res->via.array.size == 100);
	for (uint32_t i = 0; i < 100; i++)
		REQUIREF(res->via.array.ptr[i].via.u64 == 3ull * i, "item %u wrong", i);
	mpool_value_free(v);
	REQUIREF(fx_status_get(&a, "totals.tasks_done") >= 100, "a did not run them");
	msgpack_sbuffer_destroy(&sb);
	fx_stop(&b);
	fx_stop(&a);
}
END_TEST

/* No broker at start: mpoold serves local work, says so, and connects
 * once the broker is there. */
START_TEST(broker_unreachable_at_start)
{
	struct fx a;
	struct mpool_map_opts o = MPOOL_MAP_OPTS(.chunksize = 100);
	int64_t end;

	static const char *const gw[] = { "--workers", "0", NULL };
	struct fx g;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	int r;

	br.port = free_port();
	node_start(&a, &br, "a", NULL);
	REQUIREF(!cluster_str_is(&a, "broker", "connected"), "connected to nothing");
	REQUIREF(fx_log_has(&a, "broker unreachable"), "the log does not say so");
	fx_map_squares(a.c, 1000, 0, &o, 0);
	/* A gateway can run nothing without the broker: it says so at once. */
	node_start(&g, &br, "g", gw);
	fx_sbuf_init(&sb, &pk);
	fx_pack_range(&pk, 0, 10);
	r = mpool_map(g.c, "builtin.square", sb.data, sb.size, 10, NULL, NULL, NULL, NULL);
	REQUIREF(r == -MPOOL_E_UNAVAILABLE && strstr(mpool_errmsg(g.c), "broker is unreachable"),
		 "a gateway's map without a broker: %s: %s", mpool_strerror(-r), mpool_errmsg(g.c));
	msgpack_sbuffer_destroy(&sb);
	fx_stop(&g);
	broker_start(&br, br.port);
	end = fx_now_ms() + WAIT_MS;
	while (!cluster_str_is(&a, "broker", "connected")) {
		REQUIREF(fx_now_ms() < end, "not connected %d ms after the broker started",
			 WAIT_MS);
		fx_tick();
	}
	fx_map_squares(a.c, 1000, 0, &o, 0);
	fx_stop(&a);
}
END_TEST

/* ---- a node dies mid-map ---------------------------------------------------- */

#define KILL_ITEMS 600

struct kill_run {
	mpool *c;
	uint32_t retries;
	bool any_failures;           /* failures allowed whatever the retries */
	const char *err_has;         /* in each failed item's message */
	uint8_t seen[KILL_ITEMS];
	uint64_t failed;
	bool bad;
	char why[256];
};

static void kill_chunk(void *ud, uint64_t first, const msgpack_object *res,
		       const struct mpool_item_error *errs, size_t n_errs)
{
	struct kill_run *k = ud;

	for (uint32_t i = 0; i < res->via.array.size; i++) {
		uint64_t idx = first + i;
		const msgpack_object *o = &res->via.array.ptr[i];
		bool failed = false;

		if (idx >= KILL_ITEMS || k->seen[idx]++) {
			k->bad = true;
			snprintf(k->why, sizeof(k->why), "item %llu twice or outside",
				 (unsigned long long)idx);
			return;
		}
		for (size_t e = 0; e < n_errs; e++)
			if (errs[e].index == idx) {
				failed = true;
				if (errs[e].code != -MPOOL_E_WORKER ||
				    !strstr(errs[e].message, k->err_has)) {
					k->bad = true;
					snprintf(k->why, sizeof(k->why), "item %llu: %d %s",
						 (unsigned long long)idx, errs[e].code,
						 errs[e].message);
				}
			}
		if (failed) {
			k->failed++;
		} else if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
			   o->via.u64 != 20 + idx % 7) {
			k->bad = true;
			snprintf(k->why, sizeof(k->why), "item %llu: wrong value",
				 (unsigned long long)idx);
		}
	}
}

static int kill_client(void *arg)
{
	struct kill_run *k = arg;
	struct mpool_map_opts o = MPOOL_MAP_OPTS(.chunksize = 5, .retries = k->retries);
	struct mpool_map_summary sum;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	int r;

	fx_sbuf_init(&sb, &pk);
	for (int i = 0; i < KILL_ITEMS; i++)
		msgpack_pack_uint64(&pk, 20 + (uint64_t)i % 7);
	r = mpool_map(k->c, "builtin.sleep", sb.data, sb.size, KILL_ITEMS, &o, kill_chunk, k, &sum);
	if (k->bad) {
		fprintf(stderr, "kill_client: %s\n", k->why);
		return 2;
	}
	for (int i = 0; i < KILL_ITEMS; i++)
		if (!k->seen[i]) {
			fprintf(stderr, "kill_client: item %d never answered\n", i);
			return 3;
		}
	if (r != 0 || sum.failed != k->failed || sum.items != KILL_ITEMS ||
	    (!k->any_failures && (k->retries ? k->failed != 0 : k->failed == 0))) {
		fprintf(stderr, "kill_client: map %s, %llu failed (retries %u)\n", mpool_strerror(-r),
			(unsigned long long)k->failed, k->retries);
		return 4;
	}
	return 0;
}

static void node_killed_mid_map(uint32_t retries)
{
	struct fx a, b, c;
	static struct kill_run k;
	int64_t end;
	pid_t client;

	broker_start(&br, 0);
	node_start(&a, &br, "a", NULL);
	node_start(&b, &br, "b", NULL);
	node_start(&c, &br, "c", NULL);
	wait_nodes(&a, 3);
	wait_nodes(&b, 3);
	wait_nodes(&c, 3);
	memset(&k, 0, sizeof(k));
	k.c = fx_connect(&a);
	k.retries = retries;
	k.err_has = "node c";
	client = fx_fork(kill_client, &k);
	end = fx_now_ms() + WAIT_MS;
	while (cluster_u64(&c, "chunks_running") == 0) {
		REQUIREF(fx_now_ms() < end, "c never ran a chunk");
		fx_tick();
	}
	killpg(c.pid, SIGKILL);
	c.may_exit = true;
	fx_expect_child_ok(client, 45000, "the map's client");
	REQUIREF(cluster_u64(&a, "chunks_out") == 0, "chunks still out after the map");
	fx_stop(&c);
	fx_stop(&b);
	fx_stop(&a);
}

START_TEST(node_killed_with_retries)
{
	node_killed_mid_map(2);
}
END_TEST

START_TEST(node_killed_without_retries)
{
	node_killed_mid_map(0);
}
END_TEST

/* A gateway (workers = 0) runs nothing and sends everything out; a
 * request may keep itself local or share itself against the default. */
START_TEST(gateway_and_spread_option)
{
	static const char *const gw[] = { "--workers", "0", NULL };
	struct fx g, a, b;
	struct mpool_map_opts local = MPOOL_MAP_OPTS(.chunksize = 10, .spread = -1);
	struct mpool_map_opts def = MPOOL_MAP_OPTS(.chunksize = 10);
	struct mpool_apply_opts spread = MPOOL_APPLY_OPTS(.spread = 1);
	msgpack_sbuffer sb;
	msgpack_packer pk;
	mpool_value *v = NULL;
	uint64_t sent;
	int r;

	broker_start(&br, 0);
	node_start(&g, &br, "g", gw);
	node_start(&a, &br, "a", NULL);
	node_start(&b, &br, "b", NULL);
	wait_nodes(&g, 3);
	wait_nodes(&a, 3);
	wait_nodes(&b, 3);
	fx_map_squares(g.c, 2000, 0, &def, 0);
	REQUIREF(cluster_u64(&g, "chunks_sent") == 200, "the gateway sent %llu chunks, not 200",
		 (unsigned long long)cluster_u64(&g, "chunks_sent"));
	sent = cluster_u64(&a, "chunks_sent");
	fx_map_squares(a.c, 2000, 0, &local, 0);
	REQUIREF(cluster_u64(&a, "chunks_sent") == sent, "a local map went out");
	fx_sbuf_init(&sb, &pk);
	msgpack_pack_int(&pk, 12);
	r = mpool_apply_with(a.c, "builtin.square", sb.data, sb.size, &spread, &v);
	REQUIREF(r == 0 && mpool_value_get(v)->via.u64 == 144, "shared apply: %s",
		 mpool_strerror(-r));
	mpool_value_free(v);
	msgpack_sbuffer_destroy(&sb);
	fx_stop(&b);
	fx_stop(&a);
	fx_stop(&g);
}
END_TEST

/* ---- stopping remote chunks ------------------------------------------------ */

#define SLOW_ITEMS 8
#define SLOW_MS 12000

struct slow_run {
	const char *sock;            /* the child connects: killing it closes the connection */
	int r;
};

static int slow_client(void *arg)
{
	struct slow_run *s = arg;
	struct mpool_map_opts o = MPOOL_MAP_OPTS(.chunksize = 1);
	msgpack_sbuffer sb;
	msgpack_packer pk;
	mpool *c;

	if (mpool_connect(s->sock, &c, NULL, 0) < 0)
		return 9;
	fx_sbuf_init(&sb, &pk);
	for (int i = 0; i < SLOW_ITEMS; i++)
		msgpack_pack_uint64(&pk, SLOW_MS);
	s->r = mpool_map(c, "builtin.sleep", sb.data, sb.size, SLOW_ITEMS, &o, NULL, NULL, NULL);
	/* Cancelled: its owner's connection hears so at once. */
	return s->r == -MPOOL_E_CANCELLED ? 0 : 10 + (-s->r & 0x3f);
}

/* A gateway g sends 8 slow items to a and b (four run, four wait on the
 * stream); returns once both run some. */
static pid_t slow_map_on(struct fx *g, struct fx *a, struct fx *b)
{
	static const char *const gw[] = { "--workers", "0", NULL };
	static struct slow_run s;
	int64_t end;
	pid_t client;

	broker_start(&br, 0);
	node_start(g, &br, "g", gw);
	node_start(a, &br, "a", NULL);
	node_start(b, &br, "b", NULL);
	wait_nodes(g, 3);
	wait_nodes(a, 3);
	wait_nodes(b, 3);
	s.sock = g->sock;
	client = fx_fork(slow_client, &s);
	end = fx_now_ms() + WAIT_MS;
	while (cluster_u64(a, "chunks_running") == 0 || cluster_u64(b, "chunks_running") == 0) {
		REQUIREF(fx_now_ms() < end, "a and b did not both start chunks");
		fx_tick();
	}
	return client;
}

/* Nothing runs on a or b within ms, and nothing starts there for a while
 * after. */
static void expect_remote_stopped(struct fx *a, struct fx *b, int ms, const char *what)
{
	int64_t start = fx_now_ms(), end = start + ms;

	while (cluster_u64(a, "chunks_running") || cluster_u64(b, "chunks_running") ||
	       fx_status_get(a, "totals.jobs_active") || fx_status_get(b, "totals.jobs_active")) {
		REQUIREF(fx_now_ms() < end, "%s: chunks still run on a or b after %d ms", what, ms);
		fx_tick();
	}
	/* The queued chunks are dropped when pulled, never run. */
	end = fx_now_ms() + 1500;
	while (fx_now_ms() < end) {
		REQUIREF(!cluster_u64(a, "chunks_running") && !cluster_u64(b, "chunks_running"),
			 "%s: a queued chunk ran after the stop", what);
		fx_tick();
	}
	REQUIREF(fx_now_ms() - start < SLOW_MS, "%s: the chunks were not cut short", what);
}

START_TEST(cancel_reaches_other_nodes)
{
	struct fx g, a, b;
	mpool_value *v = NULL;
	const msgpack_object *jobs;
	uint64_t id = 0;
	pid_t client = slow_map_on(&g, &a, &b);
	int r;

	REQUIRE(mpool_status(g.c, &v) == 0);
	jobs = fx_obj_get(mpool_value_get(v), "jobs");
	REQUIRE(jobs && jobs->type == MSGPACK_OBJECT_ARRAY && jobs->via.array.size == 1);
	REQUIRE(fx_get_u64(&jobs->via.array.ptr[0], "id", &id));
	mpool_value_free(v);
	r = mpool_cancel(g.c, id);
	REQUIREF(r == 0, "cancel: %s", mpool_strerror(-r));
	fx_expect_child_ok(client, 10000, "the cancelled map's client");
	expect_remote_stopped(&a, &b, 1500, "cancel");
	fx_stop(&b);
	fx_stop(&a);
	fx_stop(&g);
}
END_TEST

/* The client goes away: its chunks stop on the other nodes. */
START_TEST(disconnect_reaches_other_nodes)
{
	struct fx g, a, b;
	pid_t client = slow_map_on(&g, &a, &b);

	kill(client, SIGKILL);
	fx_wait_child(client, 10000);
	expect_remote_stopped(&a, &b, 1500, "client gone");
	fx_stop(&b);
	fx_stop(&a);
	fx_stop(&g);
}
END_TEST

/* The origin dies: its chunks stop elsewhere in bounded time (its
 * heartbeat's loss: 5 s). */
START_TEST(origin_killed_remote_chunks_stop)
{
	struct fx g, a, b;
	pid_t client = slow_map_on(&g, &a, &b);

	killpg(g.pid, SIGKILL);
	g.may_exit = true;
	fx_wait_child(client, 10000);
	expect_remote_stopped(&a, &b, 8000, "origin killed");
	REQUIREF(fx_log_has(&a, "node g lost"), "a's log does not say g was lost");
	fx_stop(&b);
	fx_stop(&a);
	fx_stop(&g);
}
END_TEST

/* nats-server restarts mid-map (same store): every item is answered once,
 * in bounded time, and the cluster works again afterwards. */
START_TEST(broker_restart_mid_map)
{
	struct fx a, b;
	static struct kill_run k;
	struct mpool_map_opts o = MPOOL_MAP_OPTS(.chunksize = 10);
	uint64_t sent;
	int64_t end;
	pid_t client;
	int port;

	broker_start(&br, 0);
	port = br.port;
	node_start(&a, &br, "a", NULL);
	node_start(&b, &br, "b", NULL);
	wait_nodes(&a, 2);
	wait_nodes(&b, 2);
	memset(&k, 0, sizeof(k));
	k.c = fx_connect(&a);
	k.retries = 2;
	k.any_failures = true;       /* a chunk may fail with the broker, clearly */
	k.err_has = "";
	client = fx_fork(kill_client, &k);
	end = fx_now_ms() + WAIT_MS;
	while (cluster_u64(&b, "chunks_running") == 0) {
		REQUIREF(fx_now_ms() < end, "b never ran a chunk");
		fx_tick();
	}
	broker_kill(&br);
	end = fx_now_ms() + WAIT_MS;
	while (cluster_str_is(&a, "broker", "connected")) {
		REQUIREF(fx_now_ms() < end, "a did not notice the broker's loss");
		fx_tick();
	}
	REQUIREF(fx_log_has(&a, "broker connection lost"), "a's log does not say so");
	broker_start(&br, port);
	fx_expect_child_ok(client, 40000, "the map's client across the restart");
	end = fx_now_ms() + WAIT_MS;
	while (!cluster_str_is(&a, "broker", "connected") || cluster_nodes(&a) != 2) {
		REQUIREF(fx_now_ms() < end, "a did not reconnect and see b again");
		fx_tick();
	}
	REQUIREF(fx_log_has(&a, "broker connection regained"), "a's log does not say so");
	sent = cluster_u64(&a, "chunks_sent");
	fx_map_squares(a.c, 20000, 0, &o, 0);
	REQUIREF(cluster_u64(&a, "chunks_sent") > sent, "nothing shared after the restart");
	fx_stop(&b);
	fx_stop(&a);
}
END_TEST

/* ---- a NATS cluster of three ------------------------------------------------- */

/* Three nats-servers routed into one cluster, each with its own store. */
static struct broker trio[3];

static void trio_start(char *urls, size_t size)
{
	int port[3], cport[3];
	char conf[320], text[1024];

	for (int i = 0; i < 3; i++) {
		port[i] = free_port();
		cport[i] = free_port();
	}
	urls[0] = '\0';
	for (int i = 0; i < 3; i++) {
		struct broker *b = &trio[i];

		snprintf(b->dir, sizeof(b->dir), "/tmp/mpcl-nats-XXXXXX");
		REQUIREF(mkdtemp(b->dir), "mkdtemp: %s", strerror(errno));
		snprintf(conf, sizeof(conf), "%s/nats.conf", b->dir);
		snprintf(text, sizeof(text),
			 "server_name: s%d\n"
			 "cluster { name: mpool-test, listen: 127.0.0.1:%d,\n"
			 "  routes: [ nats://127.0.0.1:%d, nats://127.0.0.1:%d ] }\n",
			 i, cport[i], cport[(i + 1) % 3], cport[(i + 2) % 3]);
		tu_write_file(conf, text, 0600);
		broker_conf = conf;
		broker_start(b, port[i]);
		snprintf(urls + strlen(urls), size - strlen(urls), "%snats://127.0.0.1:%d",
			 i ? "," : "", port[i]);
	}
	broker_conf = NULL;
}

static void trio_teardown(void)
{
	for (int i = 0; i < 3; i++)
		broker_free(&trio[i]);
	memset(trio, 0, sizeof(trio));
}

/* A replicated stream (3 copies): one server dies mid-map, the map ends
 * with every item answered once, and the cluster goes on. */
START_TEST(nats_cluster_loses_a_server)
{
	static struct kill_run k;
	static char urls[256];
	struct fx a, b;
	const char *args[] = { "--cluster-url", urls, "--node-name", "a", "--cluster-replicas",
			       "3", "--cluster-redelivery", "1000", NULL };
	struct mpool_map_opts o = MPOOL_MAP_OPTS(.chunksize = 10);
	int64_t end;
	pid_t client;

	memset(trio, 0, sizeof(trio));
	trio_start(urls, sizeof(urls));
	fx_start(&a, args);
	args[3] = "b";
	fx_start(&b, args);
	end = fx_now_ms() + 40000;
	while (!fx_log_has(&a, "stream MPOOL_mpool ready (3 replica(s))") || cluster_nodes(&a) != 2) {
		REQUIREF(fx_now_ms() < end, "the replicated stream never got ready");
		fx_tick();
	}
	memset(&k, 0, sizeof(k));
	k.c = fx_connect(&a);
	k.retries = 2;
	k.any_failures = true;
	k.err_has = "";
	client = fx_fork(kill_client, &k);
	end = fx_now_ms() + WAIT_MS;
	while (cluster_u64(&b, "chunks_running") == 0) {
		REQUIREF(fx_now_ms() < end, "b never ran a chunk");
		fx_tick();
	}
	broker_kill(&trio[0]);
	fx_expect_child_ok(client, 40000, "the map's client");
	fx_map_squares(a.c, 5000, 0, &o, 0);
	fx_stop(&b);
	fx_stop(&a);
	trio_teardown();
}
END_TEST

/* ---- TLS and credentials ----------------------------------------------- */

/* A test CA, a server certificate for 127.0.0.1 it signed, another CA, a
 * nats-server config requiring TLS and a password, whose mpool account has
 * only the permissions of the sample config (systemd/nats-server-mpool.conf),
 * and the user files; for mutual TLS, client certificates, one the test CA
 * signed and one the other, and a config requiring the first kind
 * (mtls.conf, verify). */
static void make_tls(const char *d)
{
	char cmd[3072];

	snprintf(cmd, sizeof(cmd),
		 "set -e; cd '%s'; k='-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes'\n"
		 "openssl req -x509 $k -keyout ca.key -out ca.pem -days 2 -subj /CN=mpool-test-ca\n"
		 "openssl req -x509 $k -keyout other.key -out other-ca.pem -days 2 -subj /CN=other\n"
		 "openssl req $k -keyout server.key -out server.csr -subj /CN=localhost\n"
		 "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > san.ext\n"
		 "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
		 "-out server.pem -days 2 -extfile san.ext\n"
		 "sed -n '/^mpool_node = {/,/^}/p' '%s/nats-server-mpool.conf' > perms.conf\n"
		 "grep -q 'mpool.mpool' perms.conf\n"
		 "printf 'tls { cert_file: \"%s/server.pem\", key_file: \"%s/server.key\" }\\n"
		 "include ./perms.conf\\n"
		 "accounts { MPOOL { jetstream: enabled\\n"
		 "users = [ { user: node, password: s3cret, permissions: $mpool_node } ] } }\\n'"
		 " > nats.conf\n"
		 "openssl req $k -keyout client.key -out client.csr -subj /CN=mpool-node\n"
		 "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
		 "-out client.pem -days 2\n"
		 "openssl req $k -keyout stranger.key -out stranger.csr -subj /CN=stranger\n"
		 "openssl x509 -req -in stranger.csr -CA other-ca.pem -CAkey other.key "
		 "-CAcreateserial -out stranger.pem -days 2\n"
		 "printf 'tls { cert_file: \"%s/server.pem\", key_file: \"%s/server.key\",\\n"
		 "  ca_file: \"%s/ca.pem\", verify: true }\\n' > mtls.conf\n"
		 "umask 077; printf 'node\\ns3cret\\n' > user; printf 'node\\nwrong\\n' > baduser\n",
		 d, env_path("MPOOL_SYSTEMD_SRC"), d, d, d, d, d);
	REQUIREF(system(cmd) == 0, "making the test CA failed (openssl: .ci/install-deps)");
}

/* br.dir, a new directory for the broker's config and the files the nodes
 * log in with. */
static void broker_dir_make(void)
{
	snprintf(br.dir, sizeof(br.dir), "/tmp/mpcl-nats-XXXXXX");
	REQUIREF(mkdtemp(br.dir), "mkdtemp: %s", strerror(errno));
}

/* Starts node name on br, whose URL has scheme (tls or nats); opts
 * alternate an option and a file in br.dir (--cluster-ca ca.pem ...). */
static void auth_node(struct fx *fx, const char *name, const char *scheme,
		      const char *const *opts)
{
	char url[64], files[6][128];
	const char *argv[20] = { "--cluster-url", url, "--node-name", name };
	int n = 4;

	snprintf(url, sizeof(url), "%s://127.0.0.1:%d", scheme, br.port);
	for (int i = 0; opts[i] && opts[i + 1] && i < 12; i += 2) {
		snprintf(files[i / 2], sizeof(files[0]), "%s/%s", br.dir, opts[i + 1]);
		argv[n++] = opts[i];
		argv[n++] = files[i / 2];
	}
	argv[n] = NULL;
	fx_start(fx, argv);
}

/* Starts br with the config conf in br.dir, and nodes a and b logging in
 * with opts (see auth_node); a map through a runs on b too. */
static void auth_pair(struct fx *a, struct fx *b, const char *conf, const char *scheme,
		      const char *const *opts)
{
	struct mpool_map_opts o = MPOOL_MAP_OPTS(.chunksize = 10);
	char path[96];

	snprintf(path, sizeof(path), "%s/%s", br.dir, conf);
	broker_conf = path;
	broker_start(&br, 0);
	broker_conf = NULL;
	auth_node(a, "a", scheme, opts);
	auth_node(b, "b", scheme, opts);
	wait_nodes(a, 2);
	fx_map_squares(a->c, 2000, 0, &o, 0);
	REQUIREF(cluster_u64(a, "chunks_sent") > 0, "nothing shared with %s", opts[1]);
}

/* Node name, logging in with opts, is refused: its log says why (says),
 * and it serves local work. */
static void auth_refused(struct fx *fx, const char *name, const char *scheme,
			 const char *const *opts, const char *says)
{
	struct mpool_map_opts o = MPOOL_MAP_OPTS(.chunksize = 10);
	int64_t end = fx_now_ms() + WAIT_MS;

	auth_node(fx, name, scheme, opts);
	while (!fx_log_has(fx, says)) {
		REQUIREF(fx_now_ms() < end, "node %s's log never said '%s'", name, says);
		fx_tick();
	}
	REQUIREF(!cluster_str_is(fx, "broker", "connected"), "node %s connected", name);
	fx_map_squares(fx->c, 100, 0, &o, 0);
}

START_TEST(tls_and_credentials)
{
	struct fx a, b, badca, badpw;

	broker_dir_make();
	make_tls(br.dir);
	auth_pair(&a, &b, "nats.conf", "tls", (const char *const[]){ "--cluster-ca", "ca.pem",
		  "--cluster-user-file", "user", NULL });
	auth_refused(&badca, "c", "tls", (const char *const[]){ "--cluster-ca", "other-ca.pem",
		     "--cluster-user-file", "user", NULL },
		     "unable to get local issuer certificate");
	auth_refused(&badpw, "d", "tls", (const char *const[]){ "--cluster-ca", "ca.pem",
		     "--cluster-user-file", "baduser", NULL }, "Authorization Violation");
	fx_stop(&badpw);
	fx_stop(&badca);
	fx_stop(&b);
	fx_stop(&a);
}
END_TEST

/* Mutual TLS: a broker that requires a client certificate its CA signed
 * takes nodes that have one (cluster-cert, cluster-key), and refuses a node
 * without one or with one another CA signed. */
START_TEST(mutual_tls)
{
	struct fx a, b, nocert, stranger;
	static const char *const refused = "the broker closed the TLS connection at login";

	broker_dir_make();
	make_tls(br.dir);
	auth_pair(&a, &b, "mtls.conf", "tls", (const char *const[]){ "--cluster-cert",
		  "client.pem", "--cluster-key", "client.key", "--cluster-ca", "ca.pem", NULL });
	auth_refused(&nocert, "c", "tls", (const char *const[]){ "--cluster-ca", "ca.pem", NULL },
		     refused);
	auth_refused(&stranger, "d", "tls", (const char *const[]){ "--cluster-ca", "ca.pem",
		     "--cluster-cert", "stranger.pem", "--cluster-key", "stranger.key", NULL },
		     refused);
	fx_stop(&stranger);
	fx_stop(&nocert);
	fx_stop(&b);
	fx_stop(&a);
}
END_TEST

/* A broker in operator (JWT) mode, its operator, accounts and user made by
 * tests/natsjwt.py: nodes log in with a credentials file (cluster-creds)
 * and share a map through JetStream, which the account's JWT enables.  A
 * user JWT signed by a key other than its account's is refused, and so is
 * a file whose seed is corrupt. */
START_TEST(credentials_file)
{
	struct fx a, b, forged, corrupt;
	char cmd[512];

	broker_dir_make();
	/* The corrupt file: one letter of the seed changed, so its checksum
	 * fails. */
	snprintf(cmd, sizeof(cmd),
		 "set -e; cd '%s'; python3 '%s' \"$PWD\"\n"
		 "sed 's/^\\(SU..\\)A/\\1B/; t; s/^\\(SU..\\)./\\1A/' user.creds > corrupt.creds\n"
		 "printf 'include ./resolver.conf\\n' > nats.conf\n",
		 br.dir, env_path("MPOOL_NATSJWT"));
	REQUIREF(system(cmd) == 0, "tests/natsjwt.py failed (python3-cryptography: "
		 ".ci/install-deps)");
	auth_pair(&a, &b, "nats.conf", "nats",
		  (const char *const[]){ "--cluster-creds", "user.creds", NULL });
	auth_refused(&forged, "c", "nats",
		     (const char *const[]){ "--cluster-creds", "forged.creds", NULL },
		     "Authorization Violation (the broker refused this node's cluster-creds");
	auth_refused(&corrupt, "d", "nats",
		     (const char *const[]){ "--cluster-creds", "corrupt.creds", NULL },
		     "invalid checksum (cluster-creds: not a NATS user credentials file?)");
	fx_stop(&corrupt);
	fx_stop(&forged);
	fx_stop(&b);
	fx_stop(&a);
}
END_TEST

/* The drop-in that opens the network keeps systemd-analyze's exposure of
 * mpoold.service at 2.0 or lower. */
START_TEST(dropin_exposure)
{
	char cmd[1024], *out;
	double exposure = 99;
	const char *p;

	snprintf(cmd, sizeof(cmd),
		 "set -e; mkdir -p '%s/etc/systemd/system/mpoold.service.d'; "
		 "cp '%s/mpoold.service' '%s/etc/systemd/system/'; "
		 "cp '%s/mpoold-cluster.conf' '%s/etc/systemd/system/mpoold.service.d/cluster.conf'; "
		 "systemd-analyze security --offline=true --root='%s' mpoold.service > '%s/sa.out' 2>&1",
		 tu_dir, env_path("MPOOL_UNIT_DIR"), tu_dir, env_path("MPOOL_UNIT_DIR"), tu_dir,
		 tu_dir, tu_dir);
	ck_assert_msg(system(cmd) == 0, "systemd-analyze security failed");
	out = tu_slurp(tu_path_in("sa.out"));
	p = strstr(out, "Overall exposure level for mpoold.service: ");
	ck_assert_msg(p && sscanf(p + strlen("Overall exposure level for mpoold.service: "), "%lf",
				  &exposure) == 1, "no exposure level in:\n%s", out);
	ck_assert_msg(strstr(out, "PrivateNetwork="), "the report lacks PrivateNetwork=:\n%s", out);
	ck_assert_msg(exposure <= 2.0, "exposure %.1f with the drop-in, wanted 2.0 or lower", exposure);
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
	tcase_add_test(tc, dropin_exposure);
	suite_add_tcase(s, tc);

	tc = tcase_create("nodes");
	tcase_add_unchecked_fixture(tc, NULL, NULL);
	tcase_add_checked_fixture(tc, it_setup, it_teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, three_nodes_share_a_map);
	tcase_add_test(tc, function_missing_everywhere);
	tcase_add_test(tc, functions_only_where_loaded);
	tcase_add_test(tc, loaded_functions_announced);
	tcase_add_test(tc, broker_unreachable_at_start);
	tcase_add_test(tc, node_killed_with_retries);
	tcase_add_test(tc, node_killed_without_retries);
	tcase_add_test(tc, gateway_and_spread_option);
	tcase_add_test(tc, broker_restart_mid_map);
	tcase_add_test(tc, tls_and_credentials);
	tcase_add_test(tc, mutual_tls);
	tcase_add_test(tc, credentials_file);
	tcase_add_test(tc, nats_cluster_loses_a_server);
	tcase_add_test(tc, cancel_reaches_other_nodes);
	tcase_add_test(tc, disconnect_reaches_other_nodes);
	tcase_add_test(tc, origin_killed_remote_chunks_stop);
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
