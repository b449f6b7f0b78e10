/* test_process: supervised one-off processes (Python's multiprocessing.Process
 * served by mpoold) through libmpool's process handle: spawn, join with and
 * without timeout, results and failures, Python's exit codes for exit() and
 * signals, terminate with its SIGKILL escalation, names, mpctl spawn and ps,
 * a fork the kernel refuses; Python's daemon flag (a daemon process dies
 * with its client's connection, a non-daemon one outlives even a SIGKILLed
 * client and is joined from another connection), a client of protocol 1
 * refused; permissions across uids, --max-processes and the per-user
 * shares of running and finished processes; and the daemon's lifecycle
 * (drain, terminate, reload) with processes running.
 *
 * Every test starts its own mpoold (fixture.h) with the test module
 * (MPOOL_TESTMOD) and --process-grace 300, and stops it.  Processes are
 * forked by mpoold into its process group, so the fixture's teardown kills
 * them with it; the tests prove the ones they expect gone are gone by pid
 * and start time, with deadlines, never by a fixed sleep. */
#include <check.h>

#include <errno.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "faultfx.h"
#include "fixture.h"
#include "mpctl.h"

#define WAIT_MS FX_WAIT_MS
#define GRACE_MS 300           /* --process-grace of every daemon here */
#define NOBODY 65534

/* ---- helpers ------------------------------------------------------------- */

static const char *testmod(void)
{
	const char *v = getenv("MPOOL_TESTMOD");

	REQUIREF(v && *v, "MPOOL_TESTMOD is not set (tests/meson.build sets it)");
	return v;
}

/* mpoold with the test module, the short grace and extra (NULL-terminated,
 * at most 8 more arguments). */
static void start(struct fx *fx, const char *const *extra)
{
	const char *argv[16] = { "--module", testmod(), "--process-grace", "300" };
	int n = 4;

	for (int i = 0; extra && extra[i] && n < 15; i++)
		argv[n++] = extra[i];
	argv[n] = NULL;
	fx_start(fx, argv);
}

/* A field of /proc/PID/status as a hex mask ("SigBlk", "SigCgt"); false
 * when the process is gone. */
static bool status_mask(pid_t pid, const char *field, unsigned long long *ret)
{
	char path[64], line[256], fmt[32];
	bool found = false;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	snprintf(fmt, sizeof(fmt), "%s: %%llx", field);
	f = fopen(path, "re");
	if (!f)
		return false;
	while (!found && fgets(line, sizeof(line), f))
		found = sscanf(line, fmt, ret) == 1;
	fclose(f);
	return found;
}

/* Waits until a freshly forked process has dropped the master's signal
 * handlers (it catches no signal any more), or is gone.  Until then a
 * signal sent to it runs libevent's handler in the child, which forwards
 * it to the master: an mpoold bug that terminate_right_after_spawn shows;
 * the other tests wait here so that each shows what it is about. */
static void wait_detached(pid_t pid)
{
	unsigned long long caught = 0;
	int64_t end = fx_now_ms() + WAIT_MS;

	while (status_mask(pid, "SigCgt", &caught) && caught != 0) {
		REQUIREF(fx_now_ms() < end, "process pid %d still catches signals 0x%llx",
			 (int)pid, caught);
		fx_tick();
	}
}

static struct mpool_process *spawn_packed(mpool *c, const char *fn, const msgpack_sbuffer *sb,
					  const struct mpool_spawn_opts *opts)
{
	struct mpool_process *proc = NULL;
	int r = mpool_spawn(c, fn, sb->data, sb->size, opts, &proc);

	REQUIREF(r == 0, "spawn %s: %s: %s", fn, mpool_strerror(-r), mpool_errmsg(c));
	REQUIREF(proc && mpool_process_id(proc) > 0 && mpool_process_pid(proc) > 0,
		 "spawn %s gave no id or pid", fn);
	wait_detached(mpool_process_pid(proc));
	return proc;
}

static struct mpool_process *spawn_int(mpool *c, const char *fn, int64_t arg,
				       const struct mpool_spawn_opts *opts)
{
	struct mpool_process *proc;
	msgpack_sbuffer sb;

	fx_arg_int(&sb, arg);
	proc = spawn_packed(c, fn, &sb, opts);
	msgpack_sbuffer_destroy(&sb);
	return proc;
}

static struct mpool_process *spawn_nil(mpool *c, const char *fn,
				       const struct mpool_spawn_opts *opts)
{
	struct mpool_process *proc;
	msgpack_sbuffer sb;
	msgpack_packer pk;

	fx_sbuf_init(&sb, &pk);
	msgpack_pack_nil(&pk);
	proc = spawn_packed(c, fn, &sb, opts);
	msgpack_sbuffer_destroy(&sb);
	return proc;
}

/* Joins without limit; the process must exit with want. */
static void join_expect(mpool *c, struct mpool_process *proc, int want)
{
	int r = mpool_process_join(proc, -1), code = 12345;

	REQUIREF(r == 1, "join of process %llu: %d (%s: %s)",
		 (unsigned long long)mpool_process_id(proc), r, r < 0 ? mpool_strerror(-r) : "",
		 mpool_errmsg(c));
	r = mpool_process_exitcode(proc, &code);
	REQUIREF(r == 0, "exitcode after join: %d", r);
	REQUIREF(code == want, "process %llu (%s) exited with exitcode %d, expected %d (%s)",
		 (unsigned long long)mpool_process_id(proc), mpool_process_name(proc), code, want,
		 mpool_process_errmsg(proc));
}

/* The process's result must be the unsigned integer want. */
static void result_expect_u64(struct mpool_process *proc, uint64_t want)
{
	const msgpack_object *res = NULL;
	int r = mpool_process_result(proc, &res);

	REQUIREF(r == 0, "result of process %llu: %s: %s", (unsigned long long)mpool_process_id(proc),
		 mpool_strerror(-r), mpool_process_errmsg(proc));
	REQUIREF(res && fx_obj_u64(res) == want, "result %llu, expected %llu",
		 (unsigned long long)res->via.u64, (unsigned long long)want);
}

/* The process's result must be the failure code with a message holding
 * what. */
static void result_expect_fail(struct mpool_process *proc, int code, const char *what)
{
	const msgpack_object *res = NULL;
	int r = mpool_process_result(proc, &res);

	REQUIREF(r == -code, "result of process %llu: %d (%s), expected -%s",
		 (unsigned long long)mpool_process_id(proc), r, mpool_strerror(-r),
		 mpool_strerror(code));
	REQUIREF(strstr(mpool_process_errmsg(proc), what), "message '%s' does not say '%s'",
		 mpool_process_errmsg(proc), what);
}

/* Waits until pid (started at start) is gone: reaped, or a zombie. */
static void wait_pid_gone(pid_t pid, unsigned long long start, int timeout_ms, const char *what)
{
	int64_t end = fx_now_ms() + timeout_ms;

	while (fx_pid_alive(pid, start)) {
		REQUIREF(fx_now_ms() < end, "%s: pid %d still alive after %d ms", what, (int)pid,
			 timeout_ms);
		fx_tick();
	}
}

/* True when pid blocks sig. */
static bool blocks_signal(pid_t pid, int sig)
{
	unsigned long long mask = 0;

	return status_mask(pid, "SigBlk", &mask) && (mask & (1ull << (sig - 1)));
}

/* A testmod.hang_noterm process, once it has blocked SIGTERM: before that
 * a SIGTERM would still kill it.  A child fresh from fork blocks every
 * signal until it has reset its handlers (daemon/fork.c), so SIGTERM alone
 * says nothing: the function's own mask blocks SIGTERM and leaves SIGUSR1. */
static struct mpool_process *spawn_noterm(mpool *c, const struct mpool_spawn_opts *opts)
{
	struct mpool_process *proc = spawn_nil(c, "testmod.hang_noterm", opts);
	pid_t pid = mpool_process_pid(proc);
	int64_t end = fx_now_ms() + WAIT_MS;

	while (!blocks_signal(pid, SIGTERM) || blocks_signal(pid, SIGUSR1)) {
		REQUIREF(fx_now_ms() < end, "process pid %d never blocked SIGTERM", (int)pid);
		fx_tick();
	}
	return proc;
}

/* The map of process id in a list of process maps, or NULL. */
static const msgpack_object *find_proc(const msgpack_object *list, uint64_t id)
{
	REQUIRE(list && list->type == MSGPACK_OBJECT_ARRAY);
	for (uint32_t i = 0; i < list->via.array.size; i++) {
		const msgpack_object *m = &list->via.array.ptr[i];

		if (fx_obj_u64(fx_obj_get(m, "id")) == id)
			return m;
	}
	return NULL;
}

/* ---- 1. start, join, result ------------------------------------------------- */

START_TEST(start_join_result)
{
	struct mpool_spawn_opts named = MPOOL_SPAWN_OPTS(.name = "squarer");
	struct mpool_process *a, *b;
	const msgpack_object *m, *res;
	struct fx_status st;
	mpool_value *list, *status;
	struct fx fx;
	char dflt[32];
	int r, code;

	start(&fx, NULL);
	a = spawn_int(fx.c, "builtin.square", 12, NULL);
	b = spawn_int(fx.c, "builtin.echo", -7, &named);
	REQUIREF(mpool_process_id(b) != mpool_process_id(a), "two processes, one id");
	snprintf(dflt, sizeof(dflt), "Process-%llu", (unsigned long long)mpool_process_id(a));
	REQUIREF(strcmp(mpool_process_name(a), dflt) == 0, "default name '%s', expected '%s'",
		 mpool_process_name(a), dflt);
	REQUIRE(strcmp(mpool_process_name(b), "squarer") == 0);

	/* Outside the pool: neither the master nor one of its workers. */
	fx_status(&fx, &st);
	REQUIRE(mpool_process_pid(a) != st.pid && !fx_has_worker(&st, mpool_process_pid(a)));
	REQUIREF(st.n_workers == fx.workers, "%u workers with processes running", st.n_workers);

	join_expect(fx.c, a, 0);
	result_expect_u64(a, 144);
	REQUIREF(mpool_process_errmsg(a)[0] == '\0', "errmsg '%s' of a success",
		 mpool_process_errmsg(a));
	join_expect(fx.c, b, 0);
	r = mpool_process_result(b, &res);
	REQUIREF(r == 0 && res->type == MSGPACK_OBJECT_NEGATIVE_INTEGER && res->via.i64 == -7,
		 "echo -7 in a process: %d", r);

	/* Once exited, the handle answers without asking. */
	REQUIRE(mpool_process_is_alive(a) == 0);
	REQUIRE(mpool_process_join(a, 0) == 1);
	REQUIRE(mpool_process_terminate(a) == 0);
	REQUIRE(mpool_process_exitcode(a, &code) == 0 && code == 0);

	/* The list and the status show both, without their outcome: anyone may
	 * list processes, only the owner and admins see results (join). */
	r = mpool_processes(fx.c, &list);
	REQUIREF(r == 0, "processes: %s: %s", mpool_strerror(-r), mpool_errmsg(fx.c));
	m = find_proc(mpool_value_get(list), mpool_process_id(a));
	REQUIREF(m, "process %llu is not in the list", (unsigned long long)mpool_process_id(a));
	REQUIRE(fx_obj_str_eq(fx_obj_get(m, "state"), "exited"));
	REQUIRE(fx_obj_str_eq(fx_obj_get(m, "function"), "builtin.square"));
	REQUIRE(fx_obj_str_eq(fx_obj_get(m, "name"), dflt));
	REQUIRE(fx_obj_i64(fx_obj_get(m, "exitcode")) == 0);
	REQUIRE(fx_obj_get(m, "result") == NULL && fx_obj_get(m, "error") == NULL);
	REQUIRE(fx_obj_u64(fx_obj_get(m, "pid")) == (uint64_t)mpool_process_pid(a));
	REQUIRE(fx_obj_u64(fx_obj_get(m, "owner_uid")) == (uint64_t)getuid());
	REQUIRE(fx_obj_get(m, "daemon")->type == MSGPACK_OBJECT_BOOLEAN &&
		!fx_obj_get(m, "daemon")->via.boolean);
	m = find_proc(mpool_value_get(list), mpool_process_id(b));
	REQUIRE(m && fx_obj_str_eq(fx_obj_get(m, "name"), "squarer"));
	mpool_value_free(list);

	r = mpool_status(fx.c, &status);
	REQUIREF(r == 0, "status: %s", mpool_errmsg(fx.c));
	m = fx_obj_get(mpool_value_get(status), "processes");
	REQUIREF(m && find_proc(m, mpool_process_id(a)) && find_proc(m, mpool_process_id(b)),
		 "status has no key processes listing both");
	mpool_value_free(status);

	mpool_process_free(a);
	mpool_process_free(b);
	mpool_process_free(NULL);
	fx_stop(&fx);
}
END_TEST

START_TEST(failing_function)
{
	struct mpool_process *proc;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	struct fx fx;
	int r;

	start(&fx, NULL);
	fx_sbuf_init(&sb, &pk);
	fx_pack_str(&pk, "x");
	proc = spawn_packed(fx.c, "builtin.square", &sb, NULL);
	msgpack_sbuffer_destroy(&sb);
	join_expect(fx.c, proc, 1);
	result_expect_fail(proc, MPOOL_E_TYPE, "expected an integer");
	/* The message reaches the connection's errmsg too. */
	REQUIREF(strstr(mpool_errmsg(fx.c), "expected an integer"), "errmsg '%s'",
		 mpool_errmsg(fx.c));
	mpool_process_free(proc);

	/* Refused before anything runs. */
	fx_arg_int(&sb, 1);
	r = mpool_spawn(fx.c, "builtin.nosuch", sb.data, sb.size, NULL, &proc);
	REQUIREF(r == -MPOOL_E_NOFUNC, "spawn of an unknown function: %d (%s)", r,
		 mpool_errmsg(fx.c));
	r = mpool_spawn(fx.c, "builtin.square", sb.data, sb.size,
			&(struct mpool_spawn_opts)MPOOL_SPAWN_OPTS(.name = ""), &proc);
	REQUIREF(r == -MPOOL_E_INVAL, "spawn with an empty name: %d", r);
	r = mpool_spawn(fx.c, "builtin.square", sb.data, sb.size,
			&(struct mpool_spawn_opts)MPOOL_SPAWN_OPTS(.name = "a\nb"), &proc);
	REQUIREF(r == -MPOOL_E_INVAL, "spawn with a newline in its name: %d", r);
	r = mpool_spawn(fx.c, "builtin.square", sb.data, sb.size - 1, NULL, &proc);
	REQUIREF(sb.size == 1 && r == -MPOOL_E_INVAL, "spawn with no argument: %d", r);
	msgpack_sbuffer_destroy(&sb);
	r = mpool_process_attach(fx.c, 999999, &proc);
	REQUIREF(r == -MPOOL_E_NOTFOUND, "attach to an unknown id: %d (%s)", r, mpool_errmsg(fx.c));
	REQUIRE(mpool_process_join(NULL, 0) == -MPOOL_E_INVAL);
	REQUIRE(mpool_process_pid(NULL) == 0 && mpool_process_id(NULL) == 0);
	REQUIRE(strcmp(mpool_process_name(NULL), "") == 0);
	REQUIRE(mpool_ping(fx.c) == 0);
	fx_stop(&fx);
}
END_TEST

/* PROTOCOL.md: a name is "1 to 64 printable characters".  mpoold checks
 * each byte with a plain (signed, on x86) char against 0x20, so every byte
 * of a UTF-8 character reads as negative, a control character: "café" is
 * refused with bad_request here and accepted where char is unsigned. */
START_TEST(utf8_name)
{
	static const char name[] = "caf\xc3\xa9 \xe2\x86\x92 \xf0\x9f\x90\x8d";
	struct mpool_process *proc = NULL;
	msgpack_sbuffer sb;
	mpool_value *list;
	struct fx fx;
	int r;

	start(&fx, NULL);
	fx_arg_int(&sb, 6);
	r = mpool_spawn(fx.c, "builtin.square", sb.data, sb.size,
			&(struct mpool_spawn_opts)MPOOL_SPAWN_OPTS(.daemon = 1, .name = name), &proc);
	msgpack_sbuffer_destroy(&sb);
	REQUIREF(r == 0, "spawn named \"%s\" (printable UTF-8, %zu bytes): %s: %s", name,
		 strlen(name), mpool_strerror(-r), mpool_errmsg(fx.c));
	join_expect(fx.c, proc, 0);
	REQUIREF(strcmp(mpool_process_name(proc), name) == 0, "name '%s'",
		 mpool_process_name(proc));
	REQUIRE(mpool_processes(fx.c, &list) == 0);
	REQUIRE(fx_obj_str_eq(fx_obj_get(find_proc(mpool_value_get(list), mpool_process_id(proc)),
					 "name"), name));
	mpool_value_free(list);
	mpool_process_free(proc);
	fx_stop(&fx);
}
END_TEST

/* ---- 2. join with a timeout --------------------------------------------------- */

START_TEST(join_timeout)
{
	struct mpool_process *proc;
	const msgpack_object *res;
	int64_t t0, t1, spawned;
	struct fx fx;
	int r, code;

	start(&fx, NULL);
	spawned = fx_now_ms();
	proc = spawn_int(fx.c, "builtin.sleep", 2000, NULL);
	t0 = fx_now_ms();
	r = mpool_process_join(proc, 100);
	t1 = fx_now_ms();
	REQUIREF(r == 0, "join(100) of a 2 s sleep: %d (%s)", r, mpool_errmsg(fx.c));
	REQUIREF(t1 - t0 >= 90 && t1 - t0 < 1500, "join(100) took %lld ms", (long long)(t1 - t0));
	REQUIRE(mpool_process_is_alive(proc) == 1);
	REQUIREF(mpool_process_exitcode(proc, &code) == -MPOOL_E_INVAL,
		 "an exit code while it runs");
	REQUIRE(mpool_process_result(proc, &res) == -MPOOL_E_INVAL);
	/* 0 asks without waiting for the exit. */
	t0 = fx_now_ms();
	REQUIRE(mpool_process_join(proc, 0) == 0);
	REQUIREF(fx_now_ms() - t0 < 500, "join(0) took %lld ms", (long long)(fx_now_ms() - t0));

	join_expect(fx.c, proc, 0);
	REQUIREF(fx_now_ms() - spawned >= 1900, "the 2 s sleep ended after %lld ms",
		 (long long)(fx_now_ms() - spawned));
	result_expect_u64(proc, 2000);
	mpool_process_free(proc);
	fx_stop(&fx);
}
END_TEST

/* ---- 3. terminate and kill ----------------------------------------------------- */

START_TEST(terminate_escalates_to_kill)
{
	struct mpool_process *stubborn, *plain, *killed;
	int64_t t0, took;
	struct fx fx;
	int r;

	start(&fx, NULL);
	stubborn = spawn_noterm(fx.c, NULL);
	plain = spawn_nil(fx.c, "testmod.hang", NULL);
	killed = spawn_noterm(fx.c, NULL);

	t0 = fx_now_ms();
	r = mpool_process_terminate(stubborn);
	REQUIREF(r == 0, "terminate: %s: %s", mpool_strerror(-r), mpool_errmsg(fx.c));
	REQUIRE(mpool_process_terminate(plain) == 0);
	REQUIRE(mpool_process_kill(killed) == 0);
	/* SIGTERM is blocked: it is still there within the grace. */
	r = mpool_process_join(stubborn, 100);
	REQUIREF(r == 0 || fx_now_ms() - t0 >= GRACE_MS - 20,
		 "a process blocking SIGTERM exited %lld ms after terminate, before the %d ms grace",
		 (long long)(fx_now_ms() - t0), GRACE_MS);
	join_expect(fx.c, stubborn, -SIGKILL);
	took = fx_now_ms() - t0;
	REQUIREF(took >= GRACE_MS - 20 && took < 5000,
		 "SIGKILL came %lld ms after terminate; the grace is %d ms", (long long)took,
		 GRACE_MS);
	result_expect_fail(stubborn, MPOOL_E_WORKER, "killed by SIGKILL");

	join_expect(fx.c, plain, -SIGTERM);
	result_expect_fail(plain, MPOOL_E_WORKER, "killed by SIGTERM");
	join_expect(fx.c, killed, -SIGKILL);
	REQUIRE(fx_log_has(&fx, "outlived SIGTERM"));
	mpool_process_free(stubborn);
	mpool_process_free(plain);
	mpool_process_free(killed);
	fx_stop(&fx);
}
END_TEST

/* A terminate (or a client that leaves) right after a spawn must end that
 * process, and nothing else.  mpoold forks the process from its event loop
 * with libevent's signal handlers installed; the child drops them only in
 * worker_detach().  A SIGTERM that lands in between runs libevent's handler
 * in the child, which writes the signal number into the socketpair it
 * shares with the master: the process survives (until the SIGKILL of the
 * grace) and the master believes it got SIGTERM and drains.  Any user may
 * do this to their own process, so any user can stop the daemon. */
#define DRAIN_WHY \
	", and mpoold logged 'SIGTERM: draining' though nobody signalled it: the SIGTERM " \
	"meant for the new process reached it before it dropped the master's libevent " \
	"signal handler, which forwarded it to the master"

START_TEST(terminate_right_after_spawn)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct mpool_process *proc;
	struct fx_status st;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	mpool_value *list;
	struct fx fx;
	int r, fd, code = 0;

	start(&fx, NULL);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", fx.sock);
	/* A client that sends a spawn of a daemon process and leaves at once:
	 * mpoold forks, then
	 * reads the end of the connection and sends SIGTERM within
	 * microseconds, while the child is still starting. */
	for (int i = 0; i < 50; i++) {
		int64_t end = fx_now_ms() + WAIT_MS;

		fx_sbuf_init(&sb, &pk);
		fx_req_head(&pk, 1, "spawn");
		msgpack_pack_array(&pk, 3);
		fx_pack_str(&pk, "builtin.sleep");
		msgpack_pack_uint32(&pk, 30000);
		msgpack_pack_map(&pk, 2);
		fx_pack_str(&pk, "protocol");
		msgpack_pack_uint32(&pk, 2);
		fx_pack_str(&pk, "daemon");
		msgpack_pack_true(&pk);
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		REQUIRE(fd >= 0);
		REQUIREF(connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0,
			 "round %d: connect: %s%s", i, strerror(errno),
			 fx_log_has(&fx, "SIGTERM: draining") ? DRAIN_WHY : "");
		REQUIRE(send(fd, sb.data, sb.size, MSG_NOSIGNAL) == (ssize_t)sb.size);
		msgpack_sbuffer_destroy(&sb);
		close(fd);
		/* Gone and forgotten, or the daemon misread the signal. */
		for (;;) {
			REQUIREF(!fx_log_has(&fx, "SIGTERM: draining"),
				 "round %d: a client left right after a spawn%s", i, DRAIN_WHY);
			r = mpool_processes(fx.c, &list);
			REQUIREF(r == 0, "processes: %s", mpool_errmsg(fx.c));
			r = (int)mpool_value_get(list)->via.array.size;
			mpool_value_free(list);
			if (r == 0)
				break;
			REQUIREF(fx_now_ms() < end, "round %d: the process outlived its client", i);
			fx_tick();
		}
	}
	/* The same through terminate_process, one round trip after the spawn. */
	fx_arg_int(&sb, 30000);
	for (int i = 0; i < 50; i++) {
		r = mpool_spawn(fx.c, "builtin.sleep", sb.data, sb.size, NULL, &proc);
		REQUIREF(r == 0, "spawn %d: %s: %s", i, mpool_strerror(-r), mpool_errmsg(fx.c));
		r = mpool_process_terminate(proc);
		REQUIREF(r == 0, "terminate %d: %s: %s", i, mpool_strerror(-r), mpool_errmsg(fx.c));
		r = mpool_process_join(proc, -1);
		REQUIREF(r == 1, "join %d: %d: %s", i, r, mpool_errmsg(fx.c));
		REQUIRE(mpool_process_exitcode(proc, &code) == 0);
		REQUIREF(code == -SIGTERM && !fx_log_has(&fx, "SIGTERM: draining"),
			 "round %d: a process terminated right after its spawn exited with %d "
			 "(expected %d)%s", i, code, -SIGTERM,
			 fx_log_has(&fx, "SIGTERM: draining") ? DRAIN_WHY : "");
		mpool_process_free(proc);
	}
	msgpack_sbuffer_destroy(&sb);
	fx_status(&fx, &st);
	REQUIREF(strcmp(st.state, "running") == 0, "mpoold is '%s' after the terminates", st.state);
	fx_stop(&fx);
}
END_TEST

/* ---- 4. exit codes ----------------------------------------------------------- */

START_TEST(exit_codes)
{
	struct mpool_process *ex, *sig, *crash, *nil;
	const msgpack_object *res;
	struct fx fx;
	char want[64];

	start(&fx, NULL);
	ex = spawn_int(fx.c, "testmod.exit", 3, NULL);
	sig = spawn_int(fx.c, "testmod.kill", SIGTERM, NULL);
	crash = spawn_nil(fx.c, "testmod.crash", NULL);
	nil = spawn_nil(fx.c, "builtin.echo", NULL);

	join_expect(fx.c, ex, 3);
	result_expect_fail(ex, MPOOL_E_WORKER, "exited with status 3");
	join_expect(fx.c, sig, -SIGTERM);
	result_expect_fail(sig, MPOOL_E_WORKER, "killed by SIGTERM");
	join_expect(fx.c, crash, -SIGSEGV);
	snprintf(want, sizeof(want), "(pid %d) killed by SIGSEGV", (int)mpool_process_pid(crash));
	result_expect_fail(crash, MPOOL_E_WORKER, want);
	/* A function that returns nil returns: exitcode 0, result nil. */
	join_expect(fx.c, nil, 0);
	REQUIRE(mpool_process_result(nil, &res) == 0 && res->type == MSGPACK_OBJECT_NIL);

	mpool_process_free(ex);
	mpool_process_free(sig);
	mpool_process_free(crash);
	mpool_process_free(nil);
	/* The pool is untouched by all that. */
	REQUIRE(fx_status_get(&fx, "totals.workers_died") == 0);
	fx_stop(&fx);
}
END_TEST

/* ---- 5. owners, connections, users ------------------------------------------ */

/* Python's daemon=True: a helper of its client.  Its client's connection
 * closes: the daemon processes are terminated (SIGKILL after the grace for
 * one that blocks SIGTERM) and forgotten; the non-daemon one runs on. */
START_TEST(daemon_dies_with_its_client)
{
	struct mpool_spawn_opts dmn = MPOOL_SPAWN_OPTS(.daemon = 1);
	struct mpool_process *sleeper, *stubborn, *survivor, *again;
	unsigned long long s_start, n_start, d_start;
	uint64_t s_id, n_id;
	pid_t s_pid, n_pid, d_pid;
	mpool_value *list;
	int64_t t0, took;
	struct fx fx;
	mpool *c;
	int r;

	start(&fx, NULL);
	c = fx_connect(&fx);
	sleeper = spawn_int(c, "builtin.sleep", 30000, &dmn);
	stubborn = spawn_noterm(c, &dmn);
	survivor = spawn_int(c, "builtin.sleep", 30000, NULL);
	s_pid = mpool_process_pid(sleeper);
	n_pid = mpool_process_pid(stubborn);
	d_pid = mpool_process_pid(survivor);
	s_id = mpool_process_id(sleeper);
	n_id = mpool_process_id(stubborn);
	s_start = fx_pid_starttime(s_pid);
	n_start = fx_pid_starttime(n_pid);
	d_start = fx_pid_starttime(d_pid);
	REQUIRE(s_start && n_start && d_start);
	REQUIRE(mpool_process_is_alive(sleeper) == 1);

	t0 = fx_now_ms();
	mpool_close(c);
	wait_pid_gone(s_pid, s_start, 3000, "a daemon process after its client left");
	wait_pid_gone(n_pid, n_start, 3000,
		      "a daemon process blocking SIGTERM after its client left");
	took = fx_now_ms() - t0;
	REQUIREF(took >= GRACE_MS - 20, "the SIGTERM-blocking process was gone after %lld ms, "
		 "before the %d ms grace", (long long)took, GRACE_MS);
	REQUIREF(fx_pid_alive(d_pid, d_start), "the non-daemon process died with its client");

	/* The closed connection's handles keep what they knew, ask nothing. */
	REQUIRE(mpool_process_is_alive(sleeper) == -MPOOL_E_CLOSED);
	REQUIRE(mpool_process_join(sleeper, 0) == -MPOOL_E_CLOSED);
	REQUIRE(mpool_process_pid(sleeper) == s_pid);
	mpool_process_free(sleeper);
	mpool_process_free(stubborn);

	/* Forgotten: nobody can join them any more. */
	r = mpool_processes(fx.c, &list);
	REQUIRE(r == 0);
	REQUIREF(!find_proc(mpool_value_get(list), s_id) && !find_proc(mpool_value_get(list), n_id),
		 "the daemon processes of a closed client are still listed");
	mpool_value_free(list);
	r = mpool_process_attach(fx.c, s_id, &again);
	REQUIREF(r == -MPOOL_E_NOTFOUND, "attach to a forgotten process: %d", r);

	/* The non-daemon one goes on, reachable from another connection. */
	r = mpool_process_attach(fx.c, mpool_process_id(survivor), &again);
	REQUIREF(r == 0, "attach: %s: %s", mpool_strerror(-r), mpool_errmsg(fx.c));
	REQUIRE(mpool_process_pid(again) == d_pid);
	REQUIRE(mpool_process_is_alive(again) == 1);
	REQUIRE(mpool_process_kill(again) == 0);
	join_expect(fx.c, again, -SIGKILL);
	mpool_process_free(again);
	mpool_process_free(survivor);
	fx_stop(&fx);
}
END_TEST

START_TEST(nondaemon_joined_from_new_connection)
{
	struct mpool_spawn_opts named = MPOOL_SPAWN_OPTS(.name = "keeper");
	struct mpool_process *proc, *done, *a, *b;
	uint64_t id, done_id;
	pid_t pid;
	struct fx fx;
	mpool *c;
	int r;

	start(&fx, NULL);
	c = fx_connect(&fx);
	proc = spawn_int(c, "builtin.sleep", 400, &named);
	done = spawn_int(c, "builtin.square", 12, NULL);
	id = mpool_process_id(proc);
	done_id = mpool_process_id(done);
	pid = mpool_process_pid(proc);
	mpool_process_free(proc);
	mpool_process_free(done);
	mpool_close(c);

	c = fx_connect(&fx);
	r = mpool_process_attach(c, id, &a);
	REQUIREF(r == 0, "attach from a new connection: %s: %s", mpool_strerror(-r),
		 mpool_errmsg(c));
	REQUIREF(mpool_process_pid(a) == pid && strcmp(mpool_process_name(a), "keeper") == 0,
		 "attach found pid %d name '%s'", (int)mpool_process_pid(a), mpool_process_name(a));
	join_expect(c, a, 0);
	result_expect_u64(a, 400);

	/* One that finished with nobody watching keeps its result too. */
	r = mpool_process_attach(c, done_id, &b);
	REQUIREF(r == 0, "attach to a finished process: %s: %s", mpool_strerror(-r),
		 mpool_errmsg(c));
	REQUIRE(mpool_process_join(b, 0) == 1);
	result_expect_u64(b, 144);
	mpool_process_free(b);
	mpool_close(c);

	/* And again, from yet another connection. */
	r = mpool_process_attach(fx.c, id, &b);
	REQUIREF(r == 0, "second attach: %s", mpool_errmsg(fx.c));
	REQUIRE(mpool_process_join(b, -1) == 1);
	result_expect_u64(b, 400);
	mpool_process_free(b);
	/* Handles outlive their connection with what they knew. */
	result_expect_u64(a, 400);
	REQUIRE(mpool_process_join(a, -1) == 1);
	mpool_process_free(a);
	fx_stop(&fx);
}
END_TEST

/* A client that spawns one non-daemon process, hands its id back through a
 * pipe and waits to be killed. */
struct killed_client {
	struct fx *fx;
	int fd;
};

static int spawn_and_wait(void *arg)
{
	struct killed_client *k = arg;
	struct mpool_process *proc;
	msgpack_sbuffer sb;
	uint64_t id;
	mpool *c;

	if (mpool_connect(k->fx->sock, &c, NULL, 0) < 0)
		return 11;
	fx_arg_int(&sb, 1500);
	if (mpool_spawn(c, "builtin.sleep", sb.data, sb.size, NULL, &proc) < 0)
		return 12;
	id = mpool_process_id(proc);
	if (write(k->fd, &id, sizeof(id)) != sizeof(id))
		return 13;
	/* Killed here, in a join, as a client would be. */
	mpool_process_join(proc, -1);
	return 14;
}

/* Python's daemon=False: its client is SIGKILLed in the middle of a join
 * and the process runs to completion all the same; its result is joined
 * from a new connection by the same uid. */
START_TEST(nondaemon_outlives_killed_client)
{
	struct killed_client k;
	struct mpool_process *proc;
	unsigned long long pstart;
	int pipefd[2], st;
	pid_t child, pid;
	uint64_t id = 0;
	struct fx fx;
	int r;

	start(&fx, NULL);
	REQUIRE(pipe(pipefd) == 0);
	k.fx = &fx;
	k.fd = pipefd[1];
	child = fx_fork(spawn_and_wait, &k);
	close(pipefd[1]);
	REQUIREF(read(pipefd[0], &id, sizeof(id)) == sizeof(id), "the client spawned nothing");
	close(pipefd[0]);
	REQUIRE(kill(child, SIGKILL) == 0);
	st = fx_wait_child(child, WAIT_MS);
	REQUIREF(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "the client was not killed: 0x%x", st);

	r = mpool_process_attach(fx.c, id, &proc);
	REQUIREF(r == 0, "attach after the client was killed: %s: %s", mpool_strerror(-r),
		 mpool_errmsg(fx.c));
	pid = mpool_process_pid(proc);
	pstart = fx_pid_starttime(pid);
	REQUIREF(mpool_process_is_alive(proc) == 1 && fx_pid_alive(pid, pstart),
		 "the process died with its killed client");
	join_expect(fx.c, proc, 0);
	result_expect_u64(proc, 1500);
	mpool_process_free(proc);
	fx_stop(&fx);
}
END_TEST

/* A client of protocol 1 sends spawn without "protocol": it must be told
 * what changed, not get the opposite of what it meant. */
static void raw_spawn(struct fx_raw *raw, uint64_t msgid, int proto, int daemon)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;

	fx_sbuf_init(&sb, &pk);
	fx_req_head(&pk, msgid, "spawn");
	msgpack_pack_array(&pk, proto < 0 && daemon < 0 ? 2 : 3);
	fx_pack_str(&pk, "builtin.sleep");
	msgpack_pack_uint32(&pk, 30000);
	if (proto >= 0 || daemon >= 0) {
		msgpack_pack_map(&pk, (proto >= 0) + (daemon >= 0));
		if (proto >= 0) {
			fx_pack_str(&pk, "protocol");
			msgpack_pack_uint32(&pk, (uint32_t)proto);
		}
		if (daemon >= 0) {
			fx_pack_str(&pk, "daemon");
			if (daemon)
				msgpack_pack_true(&pk);
			else
				msgpack_pack_false(&pk);
		}
	}
	REQUIRE(fx_raw_send(raw, sb.data, sb.size) == 0);
	msgpack_sbuffer_destroy(&sb);
}

START_TEST(old_protocol_refused)
{
	static const struct { int proto, daemon; const char *says; } cases[] = {
		{ -1, -1, "changed meaning in protocol 2" },
		{ -1, 1, "changed meaning in protocol 2" },
		{ -1, 0, "changed meaning in protocol 2" },
		{ 1, 1, "speaks protocol 2, not 1" },
		{ 3, 0, "speaks protocol 2, not 3" },
	};
	const msgpack_object *err, *res;
	struct fx_raw raw;
	char msg[512];
	mpool_value *list;
	struct fx fx;

	start(&fx, NULL);
	REQUIREF(fx_status_get(&fx, "protocol") == 2, "status says protocol %llu",
		 (unsigned long long)fx_status_get(&fx, "protocol"));
	fx_raw_open(&fx, &raw);
	for (unsigned i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		raw_spawn(&raw, 10 + i, cases[i].proto, cases[i].daemon);
		fx_raw_response(&raw, 10 + i, &err, &res, WAIT_MS);
		REQUIREF(err->type == MSGPACK_OBJECT_MAP, "case %u: a spawn of protocol %d was run",
			 i, cases[i].proto);
		REQUIRE(fx_obj_i64(fx_obj_get(err, "code")) == MPOOL_E_BADREQ);
		REQUIRE(fx_get_str(err, "message", msg, sizeof(msg)));
		REQUIREF(strstr(msg, cases[i].says), "case %u: the error says '%s'", i, msg);
		if (cases[i].proto < 0)
			REQUIREF(strstr(msg, "Python") && strstr(msg, "{\"protocol\": 2}"),
				 "the error does not say what changed and how to ask: '%s'", msg);
	}
	/* Whatever the order of the keys: a name protocol 1 took and 2 does
	 * not, before the daemon flag, still gets the news; an unknown key
	 * before "protocol" is a plain bad option. */
	for (int i = 0; i < 2; i++) {
		msgpack_sbuffer sb;
		msgpack_packer pk;

		fx_sbuf_init(&sb, &pk);
		fx_req_head(&pk, 30 + i, "spawn");
		msgpack_pack_array(&pk, 3);
		fx_pack_str(&pk, "builtin.echo");
		msgpack_pack_nil(&pk);
		msgpack_pack_map(&pk, 2);
		if (i == 0) {
			fx_pack_str(&pk, "name");
			fx_pack_str(&pk, "a\xc2\x9b");
			fx_pack_str(&pk, "daemon");
			msgpack_pack_true(&pk);
		} else {
			fx_pack_str(&pk, "nosuch");
			msgpack_pack_true(&pk);
			fx_pack_str(&pk, "protocol");
			msgpack_pack_uint32(&pk, 2);
		}
		REQUIRE(fx_raw_send(&raw, sb.data, sb.size) == 0);
		msgpack_sbuffer_destroy(&sb);
		fx_raw_response(&raw, 30 + i, &err, &res, WAIT_MS);
		REQUIRE(err->type == MSGPACK_OBJECT_MAP);
		REQUIRE(fx_get_str(err, "message", msg, sizeof(msg)));
		REQUIREF(strstr(msg, i == 0 ? "changed meaning in protocol 2" : "spawn options:"),
			 "case %d of the key order: the error says '%s'", i, msg);
	}
	/* The same connection may go on in protocol 2. */
	raw_spawn(&raw, 20, 2, 1);
	fx_raw_response(&raw, 20, &err, &res, WAIT_MS);
	REQUIREF(err->type == MSGPACK_OBJECT_NIL && fx_obj_get(res, "id"),
		 "a spawn of protocol 2 was refused");
	REQUIRE(mpool_processes(fx.c, &list) == 0);
	REQUIREF(mpool_value_get(list)->via.array.size == 1, "%u processes run, expected 1",
		 mpool_value_get(list)->via.array.size);
	mpool_value_free(list);
	fx_raw_close(&raw);
	fx_stop(&fx);
}
END_TEST

/* The other user's client: it may see the list and run processes of its
 * own, but not join, poll, terminate or kill root's.  Exit codes name the
 * step that failed. */
struct other_uid {
	struct fx *fx;
	uint64_t id;                 /* root's daemon process */
	uint64_t own_id;             /* out: a process of its own, left running */
};

static int raw_call_code(struct fx *fx, const char *method, uint64_t id)
{
	const msgpack_object *err, *res;
	struct fx_raw raw;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	int64_t code = 0;

	fx_raw_open(fx, &raw);
	fx_sbuf_init(&sb, &pk);
	fx_req_head(&pk, 7, method);
	msgpack_pack_array(&pk, 1);
	msgpack_pack_uint64(&pk, id);
	REQUIRE(fx_raw_send(&raw, sb.data, sb.size) == 0);
	msgpack_sbuffer_destroy(&sb);
	fx_raw_response(&raw, 7, &err, &res, WAIT_MS);
	if (err->type != MSGPACK_OBJECT_NIL)
		code = fx_obj_i64(fx_obj_get(err, "code"));
	fx_raw_close(&raw);
	return (int)code;
}

static int as_other_uid(void *arg)
{
	static const char *const methods[] = { "join", "is_alive", "terminate_process",
					       "kill_process" };
	struct other_uid *o = arg;
	struct mpool_process *proc = NULL, *mine;
	char why[MPOOL_ERRMSG_MAX];
	mpool_value *list;
	mpool *c;
	int r;

	if (setgroups(0, NULL) < 0 || setgid(NOBODY) < 0 || setuid(NOBODY) < 0) {
		fprintf(stderr, "cannot become uid %d: %s\n", NOBODY, strerror(errno));
		return 10;
	}
	/* A change of credentials clears it. */
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (mpool_connect(o->fx->sock, &c, why, sizeof(why)) < 0) {
		fprintf(stderr, "uid %d cannot connect: %s\n", NOBODY, why);
		return 11;
	}
	r = mpool_process_attach(c, o->id, &proc);
	if (r != -MPOOL_E_PERM) {
		fprintf(stderr, "attach to root's process: %d (%s)\n", r, mpool_errmsg(c));
		return 12;
	}
	if (!strstr(mpool_errmsg(c), "only its owner or an admin")) {
		fprintf(stderr, "the permission error says '%s'\n", mpool_errmsg(c));
		return 13;
	}
	for (unsigned i = 0; i < 4; i++) {
		r = raw_call_code(o->fx, methods[i], o->id);
		if (r != MPOOL_E_PERM) {
			fprintf(stderr, "%s of root's process as uid %d: code %d\n", methods[i],
				NOBODY, r);
			return 20 + (int)i;
		}
	}
	/* Listing is for everyone. */
	if (mpool_processes(c, &list) < 0 || !find_proc(mpool_value_get(list), o->id)) {
		fprintf(stderr, "uid %d does not see the process list\n", NOBODY);
		return 30;
	}
	mpool_value_free(list);
	/* Its own processes are its own. */
	mine = spawn_int(c, "builtin.square", 5, NULL);
	join_expect(c, mine, 0);
	result_expect_u64(mine, 25);
	mpool_process_free(mine);
	mine = spawn_int(c, "builtin.sleep", 30000, NULL);
	o->own_id = mpool_process_id(mine);
	mpool_process_free(mine);
	mpool_close(c);
	/* Handing own_id back: through the exit status is enough. */
	return o->own_id < 100 ? 100 + (int)o->own_id : 99;
}

START_TEST(other_uid_is_refused)
{
	static const char *const extra[] = { "--socket-mode", "0666", NULL };
	struct mpool_process *proc, *theirs;
	struct other_uid o = { 0 };
	const msgpack_object *m;
	mpool_value *list;
	struct fx fx;
	pid_t child;
	int st, r;

	if (geteuid() != 0) {
		fprintf(stderr, "other_uid_is_refused: skipped, needs root to become uid %d\n",
			NOBODY);
		return;
	}
	start(&fx, extra);
	REQUIREF(chmod(fx.dir, 0711) == 0, "chmod %s: %s", fx.dir, strerror(errno));
	proc = spawn_int(fx.c, "builtin.sleep", 30000, &(struct mpool_spawn_opts)MPOOL_SPAWN_OPTS(.daemon = 1));
	o.fx = &fx;
	o.id = mpool_process_id(proc);
	child = fx_fork(as_other_uid, &o);
	st = fx_wait_child(child, WAIT_MS);
	REQUIREF(WIFEXITED(st) && WEXITSTATUS(st) > 100 && WEXITSTATUS(st) < 200,
		 "the uid %d client failed at step %d (see its stderr)", NOBODY,
		 WIFEXITED(st) ? WEXITSTATUS(st) : -1);
	o.own_id = (uint64_t)(WEXITSTATUS(st) - 100);

	/* Untouched by all that. */
	REQUIRE(mpool_process_is_alive(proc) == 1);

	/* Root is an admin: it may join and stop uid 65534's process. */
	r = mpool_processes(fx.c, &list);
	REQUIRE(r == 0);
	m = find_proc(mpool_value_get(list), o.own_id);
	REQUIREF(m && fx_obj_u64(fx_obj_get(m, "owner_uid")) == NOBODY,
		 "uid %d's process %llu is not listed as its own", NOBODY,
		 (unsigned long long)o.own_id);
	mpool_value_free(list);
	r = mpool_process_attach(fx.c, o.own_id, &theirs);
	REQUIREF(r == 0, "an admin attaching to another user's process: %s: %s",
		 mpool_strerror(-r), mpool_errmsg(fx.c));
	REQUIRE(mpool_process_terminate(theirs) == 0);
	join_expect(fx.c, theirs, -SIGTERM);
	mpool_process_free(theirs);
	REQUIRE(mpool_process_kill(proc) == 0);
	join_expect(fx.c, proc, -SIGKILL);
	mpool_process_free(proc);
	fx_stop(&fx);
}
END_TEST

/* ---- names --------------------------------------------------------------- */

/* A raw spawn of builtin.echo named name (len bytes): 0 when mpoold took
 * it, else the error code. */
static int raw_spawn_named(struct fx *fx, const char *name, size_t len)
{
	const msgpack_object *err, *res;
	struct fx_raw raw;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	int code = 0;

	fx_raw_open(fx, &raw);
	fx_sbuf_init(&sb, &pk);
	fx_req_head(&pk, 3, "spawn");
	msgpack_pack_array(&pk, 3);
	fx_pack_str(&pk, "builtin.echo");
	msgpack_pack_nil(&pk);
	msgpack_pack_map(&pk, 2);
	fx_pack_str(&pk, "protocol");
	msgpack_pack_uint32(&pk, 2);
	fx_pack_str(&pk, "name");
	msgpack_pack_str(&pk, len);
	msgpack_pack_str_body(&pk, name, len);
	REQUIRE(fx_raw_send(&raw, sb.data, sb.size) == 0);
	msgpack_sbuffer_destroy(&sb);
	fx_raw_response(&raw, 3, &err, &res, WAIT_MS);
	if (err->type != MSGPACK_OBJECT_NIL)
		code = (int)fx_obj_i64(fx_obj_get(err, "code"));
	fx_raw_close(&raw);
	return code;
}

/* PROTOCOL.md: 1 to 64 printable characters.  Characters, not bytes: 64
 * e-acutes (128 bytes) are a name, 65 are not.  No C1 control (U+009B is a
 * terminal's CSI), no bytes that are not UTF-8 (every client's status would
 * carry them), no bidirectional override. */
START_TEST(names_are_printable_characters)
{
	static const struct { const char *name; const char *what; } bad[] = {
		{ "a\xc2\x9b" "2J", "a C1 control (U+009B)" },
		{ "a\xc2\x85", "U+0085 (NEL)" },
		{ "caf\xe9", "Latin-1, not UTF-8" },
		{ "a\xff", "a byte that is never UTF-8" },
		{ "\xc0\xaf", "an overlong /" },
		{ "\xed\xa0\x80", "a surrogate" },
		{ "evil\xe2\x80\xaetxt", "U+202E (right-to-left override)" },
		{ "a\xe2\x80\xa8" "b", "U+2028 (line separator)" },
		{ "a\x1b[2J", "ESC" },
		{ "a\x7f", "DEL" },
	};
	char e64[129], e65[131];
	struct mpool_process *proc = NULL;
	msgpack_sbuffer sb;
	struct fx fx;
	int r;

	for (int i = 0; i < 64; i++)
		memcpy(e64 + 2 * i, "\xc3\xa9", 2);
	e64[128] = '\0';
	memcpy(e65, e64, 128);
	memcpy(e65 + 128, "\xc3\xa9", 3);
	start(&fx, NULL);
	r = raw_spawn_named(&fx, e64, 128);
	REQUIREF(r == 0, "64 characters (128 bytes of UTF-8) refused with code %d", r);
	r = raw_spawn_named(&fx, e65, 130);
	REQUIREF(r == MPOOL_E_BADREQ, "65 characters accepted (code %d)", r);
	for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		r = raw_spawn_named(&fx, bad[i].name, strlen(bad[i].name));
		REQUIREF(r == MPOOL_E_BADREQ, "a name with %s: code %d, expected bad_request",
			 bad[i].what, r);
	}
	/* libmpool counts the same way, and refuses the same early. */
	fx_arg_int(&sb, 2);
	r = mpool_spawn(fx.c, "builtin.square", sb.data, sb.size,
			&(struct mpool_spawn_opts)MPOOL_SPAWN_OPTS(.name = e64), &proc);
	REQUIREF(r == 0, "libmpool: a name of 64 characters: %s: %s", mpool_strerror(-r),
		 mpool_errmsg(fx.c));
	join_expect(fx.c, proc, 0);
	REQUIRE(strcmp(mpool_process_name(proc), e64) == 0);
	mpool_process_free(proc);
	for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		proc = NULL;
		r = mpool_spawn(fx.c, "builtin.square", sb.data, sb.size,
				&(struct mpool_spawn_opts)MPOOL_SPAWN_OPTS(.name = bad[i].name), &proc);
		REQUIREF(r == -MPOOL_E_INVAL && !proc, "libmpool: a name with %s: %d", bad[i].what,
			 r);
	}
	msgpack_sbuffer_destroy(&sb);
	fx_stop(&fx);
}
END_TEST

/* mpctl ps (ctl_print_processes) writes what it cannot show as escapes: a
 * name from mpoold, or from whatever answers on its socket, must not drive
 * the terminal. */
START_TEST(ps_escapes_names)
{
	static const char evil[] = "x\x1b]0;owned\x07\x1b[2J\xc2\x9b" "31m\xff\\y";
	static const char shown[] = "x\\x1b]0;owned\\x07\\x1b[2J\\xc2\\x9b31m\\xff\\\\y";
	msgpack_unpacked up;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	char *out = NULL;
	size_t len = 0;
	FILE *f;

	fx_sbuf_init(&sb, &pk);
	msgpack_pack_array(&pk, 2);
	for (int i = 0; i < 2; i++) {
		const char *name = i ? "caf\xc3\xa9" : evil;

		msgpack_pack_map(&pk, 8);
		fx_pack_str(&pk, "id");
		msgpack_pack_uint32(&pk, (uint32_t)i + 1);
		fx_pack_str(&pk, "name");
		msgpack_pack_str(&pk, strlen(name));
		msgpack_pack_str_body(&pk, name, strlen(name));
		fx_pack_str(&pk, "pid");
		msgpack_pack_uint32(&pk, 4242);
		fx_pack_str(&pk, "owner_uid");
		msgpack_pack_uint32(&pk, 0);
		fx_pack_str(&pk, "state");
		fx_pack_str(&pk, "running");
		fx_pack_str(&pk, "age_ms");
		msgpack_pack_uint32(&pk, 5);
		fx_pack_str(&pk, "exitcode");
		msgpack_pack_nil(&pk);
		fx_pack_str(&pk, "function");
		fx_pack_str(&pk, "builtin.sleep");
	}
	msgpack_unpacked_init(&up);
	REQUIRE(msgpack_unpack_next(&up, sb.data, sb.size, NULL) == MSGPACK_UNPACK_SUCCESS);
	f = open_memstream(&out, &len);
	REQUIRE(f);
	ctl_print_processes(f, &up.data);
	REQUIRE(fclose(f) == 0);
	msgpack_unpacked_destroy(&up);
	msgpack_sbuffer_destroy(&sb);
	for (size_t i = 0; i < len; i++)
		REQUIREF((unsigned char)out[i] >= 0x20 || out[i] == '\n',
			 "mpctl ps wrote the control byte 0x%02x raw:\n%s", (unsigned char)out[i],
			 out);
	REQUIREF(!memchr(out, 0xff, len) && !strstr(out, "\xc2\x9b"),
		 "mpctl ps wrote a C1 control or invalid UTF-8 raw");
	REQUIREF(strstr(out, shown), "mpctl ps shows the name as:\n%s\nexpected %s", out, shown);
	REQUIREF(strstr(out, "caf\xc3\xa9"), "a printable UTF-8 name was escaped:\n%s", out);
	free(out);
}
END_TEST

/* ---- mpctl spawn ------------------------------------------------------------- */

/* mpctl status prints the client budgets beside what is in use, so an
 * operator sees why clients are refused without reading JSON. */
START_TEST(status_shows_limits)
{
	static const char *const extra[] = { "--max-clients-per-uid", "7", NULL };
	mpool_value *st;
	struct fx fx;
	char *out = NULL;
	size_t len = 0;
	FILE *f;

	start(&fx, extra);
	REQUIREF(mpool_status(fx.c, &st) == 0, "status: %s", mpool_errmsg(fx.c));
	f = open_memstream(&out, &len);
	REQUIRE(f);
	ctl_print_status(f, mpool_value_get(st), CTL_SHOW_SUMMARY);
	REQUIRE(fclose(f) == 0);
	mpool_value_free(st);
	REQUIREF(strstr(out, "limits: clients 1 of ") && strstr(out, "(7 per uid, 8 for admins)") &&
		 strstr(out, "of 268435456; chunks queued 0 of 1048576; 0 refused"),
		 "mpctl status has no limits line with the budgets:\n%s", out);
	free(out);
	fx_stop(&fx);
}
END_TEST

/* Starts mpctl -s SOCK spawn ARGS... with its stdout on a pipe (*ret_fd),
 * in its own process group, dying with the test. */
static pid_t mpctl_spawn(struct fx *fx, const char *const *args, int *ret_fd)
{
	const char *argv[16] = { NULL, "-s", fx->sock, "spawn" };
	pid_t parent = getpid(), pid;
	int n = 4, pfd[2];

	argv[0] = getenv("MPCTL");
	REQUIREF(argv[0] && *argv[0], "MPCTL is not set (tests/meson.build sets it)");
	for (int i = 0; args[i] && n < 15; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	REQUIRE(pipe(pfd) == 0);
	fflush(NULL);
	pid = fork();
	REQUIRE(pid >= 0);
	if (pid == 0) {
		if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
			_exit(127);
		setpgid(0, 0);
		dup2(pfd[1], 1);
		close(pfd[0]);
		close(pfd[1]);
		signal(SIGINT, SIG_DFL);
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	close(pfd[1]);
	*ret_fd = pfd[0];
	return pid;
}

/* The {"id":ID,"pid":PID} line mpctl spawn prints first: the id. */
static uint64_t read_spawned_id(int fd)
{
	char line[128];
	unsigned long long id = 0;
	size_t n = 0;

	while (n + 1 < sizeof(line)) {
		ssize_t r = read(fd, line + n, 1);

		REQUIREF(r == 1, "mpctl spawn printed no id line (read: %zd)", r);
		if (line[n++] == '\n')
			break;
	}
	line[n] = '\0';
	REQUIREF(sscanf(line, "{\"id\":%llu,", &id) == 1 && id > 0, "mpctl spawn printed '%s'",
		 line);
	return id;
}

static int mpctl_wait(pid_t pid)
{
	int64_t end = fx_now_ms() + WAIT_MS;
	int st;

	for (;;) {
		pid_t r = waitpid(pid, &st, WNOHANG);

		if (r == pid)
			return st;
		REQUIREF(r == 0 && fx_now_ms() < end, "mpctl %d did not finish", (int)pid);
		fx_tick();
	}
}

/* mpctl spawn --detach returns at once and the process runs to completion;
 * without it mpctl waits, and Ctrl-C terminates the process, waits for its
 * end and exits 130.  --detach with --daemon makes no sense (the process
 * would die as mpctl leaves): a usage error. */
START_TEST(mpctl_spawn_detach_and_ctrl_c)
{
	static const char *const detach[] = { "--detach", "builtin.sleep", "600", NULL };
	static const char *const wait_[] = { "--name", "interrupted", "builtin.sleep", "30000",
					     NULL };
	static const char *const both[] = { "--detach", "--daemon", "builtin.sleep", "1", NULL };
	struct mpool_process *proc;
	int64_t t0;
	uint64_t id;
	pid_t pid;
	struct fx fx;
	int fd, st, r;

	start(&fx, NULL);
	t0 = fx_now_ms();
	pid = mpctl_spawn(&fx, detach, &fd);
	id = read_spawned_id(fd);
	st = mpctl_wait(pid);
	close(fd);
	REQUIREF(WIFEXITED(st) && WEXITSTATUS(st) == 0, "mpctl spawn --detach: status 0x%x", st);
	REQUIREF(fx_now_ms() - t0 < 600, "mpctl spawn --detach stayed %lld ms with a 600 ms process",
		 (long long)(fx_now_ms() - t0));
	r = mpool_process_attach(fx.c, id, &proc);
	REQUIREF(r == 0, "attach to the detached process: %s", mpool_errmsg(fx.c));
	join_expect(fx.c, proc, 0);
	result_expect_u64(proc, 600);
	mpool_process_free(proc);

	pid = mpctl_spawn(&fx, wait_, &fd);
	id = read_spawned_id(fd);
	r = mpool_process_attach(fx.c, id, &proc);
	REQUIREF(r == 0, "attach to mpctl's process: %s", mpool_errmsg(fx.c));
	wait_detached(mpool_process_pid(proc));
	REQUIRE(kill(pid, SIGINT) == 0);
	st = mpctl_wait(pid);
	close(fd);
	REQUIREF(WIFEXITED(st) && WEXITSTATUS(st) == 130, "mpctl spawn after Ctrl-C: status 0x%x",
		 st);
	/* It was already gone when mpctl left: mpctl waited for the end. */
	REQUIRE(mpool_process_join(proc, 0) == 1);
	REQUIRE(mpool_process_exitcode(proc, &r) == 0 && r == -SIGTERM);
	mpool_process_free(proc);

	pid = mpctl_spawn(&fx, both, &fd);
	st = mpctl_wait(pid);
	close(fd);
	REQUIREF(WIFEXITED(st) && WEXITSTATUS(st) == 2, "mpctl spawn --detach --daemon: 0x%x", st);
	fx_stop(&fx);
}
END_TEST

/* ---- the kernel's limit ------------------------------------------------------ */

/* A fork that fails with EAGAIN is the kernel's process limit (here the
 * RLIMIT_NPROC of mpoold's user), not --max-processes: with no process
 * running, "16 processes are running" sends an operator the wrong way.
 * mpoold runs as nobody (root ignores RLIMIT_NPROC); its pool keeps
 * working, since the fork server makes the workers. */
START_TEST(fork_eagain_is_not_max_processes)
{
	const char *const args[] = { "--module", testmod(), NULL };
	struct ffx_launch how = { .drop_to_nobody = true };
	struct mpool_process *proc = NULL;
	msgpack_sbuffer sb;
	mpool_value *v = NULL;
	struct fx fx;
	int r;

	if (geteuid() != 0) {
		fprintf(stderr, "fork_eagain_is_not_max_processes: skipped, needs root\n");
		return;
	}
	ffx_start(&fx, args, &how);
	/* Every slot of nobody's taken: mpoold's next fork fails. */
	ffx_set_nproc_of_nobody(fx.pid, ffx_settle_uid_tasks(NOBODY));
	fx_arg_int(&sb, 3);
	r = mpool_spawn(fx.c, "builtin.square", sb.data, sb.size, NULL, &proc);
	msgpack_sbuffer_destroy(&sb);
	FREQUIRE(&fx, r == -MPOOL_E_LIMIT && !proc, "spawn at RLIMIT_NPROC: %d (%s)", r,
		 mpool_errmsg(fx.c));
	FREQUIRE(&fx, !strstr(mpool_errmsg(fx.c), "--max-processes") &&
		 strstr(mpool_errmsg(fx.c), "RLIMIT_NPROC") &&
		 strstr(mpool_errmsg(fx.c), "cannot fork"),
		 "the error blames the wrong limit: '%s'", mpool_errmsg(fx.c));
	/* Nothing leaked: the daemon still serves. */
	r = ffx_apply_int(fx.c, "builtin.square", 4, 0, &v);
	FREQUIRE(&fx, r == 0 && fx_obj_u64(mpool_value_get(v)) == 16, "apply after: %d (%s)", r,
		 mpool_errmsg(fx.c));
	mpool_value_free(v);
	fx_stop(&fx);
}
END_TEST

/* ---- per-user shares ----------------------------------------------------------- */

/* A client of another uid: spawns n testmod.hang processes (non-daemon, so
 * they outlive it), then one more, which must fail with a limit error
 * whose message holds says (NULL: must succeed), and leaves.  Exit codes
 * name the step that failed. */
struct share_client {
	struct fx *fx;
	uid_t uid;
	int n;
	const char *says;
};

static int become(uid_t uid)
{
	if (setgroups(0, NULL) < 0 || setgid(uid) < 0 || setuid(uid) < 0) {
		fprintf(stderr, "cannot become uid %u: %s\n", (unsigned)uid, strerror(errno));
		return -1;
	}
	/* A change of credentials clears it. */
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	return 0;
}

static int share_client(void *arg)
{
	struct share_client *o = arg;
	struct mpool_process *proc = NULL;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	mpool *c;
	int r;

	if (become(o->uid) < 0)
		return 10;
	if (mpool_connect(o->fx->sock, &c, NULL, 0) < 0)
		return 11;
	fx_sbuf_init(&sb, &pk);
	msgpack_pack_nil(&pk);
	for (int i = 0; i <= o->n; i++) {
		proc = NULL;
		r = mpool_spawn(c, "testmod.hang", sb.data, sb.size, NULL, &proc);
		if (i < o->n || !o->says) {
			if (r < 0) {
				fprintf(stderr, "uid %u: spawn %d: %s\n", (unsigned)o->uid, i,
					mpool_errmsg(c));
				return 20 + i;
			}
			mpool_process_free(proc);
			continue;
		}
		if (r != -MPOOL_E_LIMIT || !strstr(mpool_errmsg(c), o->says)) {
			fprintf(stderr, "uid %u: spawn %d past its share: %d (%s), expected "
				"a limit naming %s\n", (unsigned)o->uid, i, r, mpool_errmsg(c),
				o->says);
			return 40;
		}
	}
	msgpack_sbuffer_destroy(&sb);
	mpool_close(c);
	return 0;
}

static void run_as(struct fx *fx, uid_t uid, int n, const char *says)
{
	struct share_client o = { fx, uid, n, says };
	char what[64];

	snprintf(what, sizeof(what), "the client of uid %u", (unsigned)uid);
	fx_expect_child_ok(fx_fork(share_client, &o), WAIT_MS, what);
}

/* One user may not take every slot: --max-processes-per-uid is a user's
 * share, and --admin-processes keeps the last slots for admins, so root
 * can still run processes when users have taken the rest. */
START_TEST(per_uid_shares)
{
	static const char *const extra[] = { "--socket-mode", "0666", "--max-processes", "4",
					     "--max-processes-per-uid", "2",
					     "--admin-processes", "1", NULL };
	struct mpool_process *mine, *more = NULL;
	const msgpack_object *lim;
	msgpack_sbuffer sb;
	mpool_value *st;
	struct fx fx;
	int r;

	if (geteuid() != 0) {
		fprintf(stderr, "per_uid_shares: skipped, needs root to become other users\n");
		return;
	}
	start(&fx, extra);
	REQUIREF(chmod(fx.dir, 0711) == 0, "chmod %s: %s", fx.dir, strerror(errno));
	/* Two of nobody's, then its share is spent. */
	run_as(&fx, NOBODY, 2, "--max-processes-per-uid");
	/* Another user gets one: the fourth slot is the admins'. */
	run_as(&fx, NOBODY - 1, 1, "--admin-processes");
	/* Root is an admin: the kept slot is its, then nothing is left. */
	mine = spawn_nil(fx.c, "testmod.hang", NULL);
	fx_arg_int(&sb, 2);
	r = mpool_spawn(fx.c, "builtin.square", sb.data, sb.size, NULL, &more);
	msgpack_sbuffer_destroy(&sb);
	REQUIREF(r == -MPOOL_E_LIMIT && strstr(mpool_errmsg(fx.c), "--max-processes"),
		 "a fifth process: %d (%s)", r, mpool_errmsg(fx.c));

	/* status shows the shares and what they refused. */
	REQUIRE(mpool_status(fx.c, &st) == 0);
	lim = fx_obj_get(mpool_value_get(st), "process_limits");
	REQUIREF(lim && fx_obj_u64(fx_obj_get(lim, "max_processes")) == 4 &&
		 fx_obj_u64(fx_obj_get(lim, "max_processes_per_uid")) == 2 &&
		 fx_obj_u64(fx_obj_get(lim, "admin_processes")) == 1 &&
		 fx_obj_u64(fx_obj_get(lim, "max_kept_processes")) == 16 &&
		 fx_obj_u64(fx_obj_get(lim, "running")) == 4 &&
		 fx_obj_u64(fx_obj_get(lim, "limit_hits")) == 3,
		 "status has no process_limits with the shares, 4 running and 3 refusals");
	mpool_value_free(st);
	REQUIRE(mpool_process_kill(mine) == 0);
	join_expect(fx.c, mine, -SIGKILL);
	mpool_process_free(mine);
	fx_stop(&fx);
}
END_TEST

/* Waits until process id has exited, by the list (no join: that would
 * count as seen). */
static void wait_exited(struct fx *fx, uint64_t id)
{
	int64_t end = fx_now_ms() + WAIT_MS;

	for (;;) {
		const msgpack_object *m;
		mpool_value *list;
		bool done;

		REQUIRE(mpool_processes(fx->c, &list) == 0);
		m = find_proc(mpool_value_get(list), id);
		REQUIREF(m, "process %llu was forgotten", (unsigned long long)id);
		done = fx_obj_str_eq(fx_obj_get(m, "state"), "exited");
		mpool_value_free(list);
		if (done)
			return;
		REQUIREF(fx_now_ms() < end, "process %llu did not exit", (unsigned long long)id);
		fx_tick();
	}
}

/* Nobody's client: spawns builtin.square 3 and leaves without joining
 * (mode 0), or attaches to process id and joins it (mode 1). */
struct kept_client {
	struct fx *fx;
	int mode;
	uint64_t id;
	int fd;
};

static int kept_client(void *arg)
{
	struct kept_client *k = arg;
	struct mpool_process *proc;
	const msgpack_object *res;
	msgpack_sbuffer sb;
	uint64_t id;
	mpool *c;

	if (become(NOBODY) < 0)
		return 10;
	if (mpool_connect(k->fx->sock, &c, NULL, 0) < 0)
		return 11;
	if (k->mode == 0) {
		fx_arg_int(&sb, 3);
		if (mpool_spawn(c, "builtin.square", sb.data, sb.size, NULL, &proc) < 0)
			return 12;
		id = mpool_process_id(proc);
		return write(k->fd, &id, sizeof(id)) == sizeof(id) ? 0 : 13;
	}
	if (mpool_process_attach(c, k->id, &proc) < 0) {
		fprintf(stderr, "nobody's attach to its process %llu: %s\n",
			(unsigned long long)k->id, mpool_errmsg(c));
		return 20;
	}
	if (mpool_process_join(proc, -1) != 1 || mpool_process_result(proc, &res) < 0 ||
	    res->type != MSGPACK_OBJECT_POSITIVE_INTEGER || res->via.u64 != 9)
		return 21;
	return 0;
}

/* Finished processes are kept per user: another user's spawns never push
 * out a result you have not joined (mpoold used to forget the oldest
 * finished process of anyone past --max-processes); a user's own spawns
 * push out that user's oldest, those already joined first. */
START_TEST(kept_per_uid)
{
	static const char *const extra[] = { "--socket-mode", "0666", "--max-processes", "4",
					     "--max-kept-processes", "2", NULL };
	struct kept_client k = { 0 };
	struct mpool_process *p[5], *again;
	uint64_t ids[5], theirs = 0;
	int pipefd[2], r;
	struct fx fx;

	if (geteuid() != 0) {
		fprintf(stderr, "kept_per_uid: skipped, needs root to become another user\n");
		return;
	}
	start(&fx, extra);
	REQUIREF(chmod(fx.dir, 0711) == 0, "chmod %s: %s", fx.dir, strerror(errno));
	REQUIRE(pipe(pipefd) == 0);
	k.fx = &fx;
	k.fd = pipefd[1];
	fx_expect_child_ok(fx_fork(kept_client, &k), WAIT_MS, "nobody's spawn");
	close(pipefd[1]);
	REQUIRE(read(pipefd[0], &theirs, sizeof(theirs)) == sizeof(theirs));
	close(pipefd[0]);
	wait_exited(&fx, theirs);

	/* Root's: the first joined, the others finished and left unjoined. */
	for (int i = 0; i < 5; i++) {
		p[i] = spawn_int(fx.c, "builtin.square", i, NULL);
		ids[i] = mpool_process_id(p[i]);
		if (i == 0)
			join_expect(fx.c, p[0], 0);
		else
			wait_exited(&fx, ids[i]);
		if (i == 2) {
			/* Three finished of two kept: the joined one went. */
			r = mpool_process_attach(fx.c, ids[0], &again);
			REQUIREF(r == -MPOOL_E_NOTFOUND, "the joined process is still kept: %d", r);
		}
	}
	/* Then the oldest unjoined ones, 1 and 2; 3 and 4 are kept. */
	for (int i = 1; i < 5; i++) {
		r = mpool_process_attach(fx.c, ids[i], &again);
		REQUIREF(i < 3 ? r == -MPOOL_E_NOTFOUND : r == 0,
			 "root's process %d of 5 with 2 kept: attach %d", i, r);
		if (r == 0)
			mpool_process_free(again);
	}
	REQUIRE(fx_status_get(&fx, "process_limits.dropped_unjoined") == 2);
	REQUIRE(fx_log_has(&fx, "forgotten before anyone joined it"));
	for (int i = 0; i < 5; i++)
		mpool_process_free(p[i]);

	/* Nobody's result is still there for nobody. */
	k.mode = 1;
	k.id = theirs;
	fx_expect_child_ok(fx_fork(kept_client, &k), WAIT_MS,
			   "nobody joining its result after root's spawns");
	fx_stop(&fx);
}
END_TEST

/* Results are bounded in bytes too: one larger than a user may keep is
 * refused with limit as it arrives (not held, not a dead process's silence),
 * and the user's oldest finished ones go to make room for new ones. */
static struct mpool_process *spawn_str(mpool *c, size_t len)
{
	struct mpool_process *proc;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	char *s = malloc(len);

	REQUIRE(s);
	memset(s, 'k', len);
	fx_sbuf_init(&sb, &pk);
	msgpack_pack_str(&pk, len);
	msgpack_pack_str_body(&pk, s, len);
	free(s);
	proc = spawn_packed(c, "builtin.echo", &sb, NULL);
	msgpack_sbuffer_destroy(&sb);
	return proc;
}

START_TEST(kept_bytes_per_uid)
{
	static const char *const extra[] = { "--max-kept-bytes", "10000", NULL };
	struct mpool_process *big, *p[3], *again;
	const msgpack_object *res;
	struct fx fx;
	int r;

	start(&fx, extra);
	REQUIRE(fx_status_get(&fx, "process_limits.max_kept_bytes") == 10000);
	big = spawn_str(fx.c, 20000);
	r = mpool_process_join(big, -1);
	REQUIREF(r == 1, "join of the large result: %d (%s)", r, mpool_errmsg(fx.c));
	r = mpool_process_result(big, &res);
	REQUIREF(r == -MPOOL_E_LIMIT && strstr(mpool_process_errmsg(big), "--max-kept-bytes"),
		 "a result over --max-kept-bytes: %d (%s)", r, mpool_process_errmsg(big));
	mpool_process_free(big);

	/* Three of 4000 bytes in 10000: the oldest goes when the third ends. */
	for (int i = 0; i < 3; i++) {
		p[i] = spawn_str(fx.c, 4000);
		wait_exited(&fx, mpool_process_id(p[i]));
	}
	r = mpool_process_attach(fx.c, mpool_process_id(p[0]), &again);
	REQUIREF(r == -MPOOL_E_NOTFOUND, "the oldest result is still kept: %d", r);
	for (int i = 1; i < 3; i++) {
		join_expect(fx.c, p[i], 0);
		r = mpool_process_result(p[i], &res);
		REQUIREF(r == 0 && res->type == MSGPACK_OBJECT_STR && res->via.str.size == 4000,
			 "kept result %d: %d", i, r);
	}
	for (int i = 0; i < 3; i++)
		mpool_process_free(p[i]);
	fx_stop(&fx);
}
END_TEST

/* ---- 6. the concurrency limit ------------------------------------------------ */

START_TEST(max_processes)
{
	static const char *const extra[] = { "--max-processes", "2", NULL };
	struct mpool_process *a, *b, *c = NULL, *d;
	msgpack_sbuffer sb;
	struct fx fx;
	int r;

	start(&fx, extra);
	a = spawn_nil(fx.c, "testmod.hang", NULL);
	b = spawn_nil(fx.c, "testmod.hang", &(struct mpool_spawn_opts)MPOOL_SPAWN_OPTS(.daemon = 1));
	fx_arg_int(&sb, 3);
	r = mpool_spawn(fx.c, "builtin.square", sb.data, sb.size, NULL, &c);
	REQUIREF(r == -MPOOL_E_LIMIT && c == NULL, "a third process past --max-processes 2: %d (%s)",
		 r, mpool_errmsg(fx.c));
	REQUIREF(strstr(mpool_errmsg(fx.c), "--max-processes"), "the limit error says '%s'",
		 mpool_errmsg(fx.c));
	/* From another connection alike: the limit is the daemon's. */
	{
		mpool *c2 = fx_connect(&fx);

		r = mpool_spawn(c2, "builtin.square", sb.data, sb.size, NULL, &c);
		REQUIREF(r == -MPOOL_E_LIMIT, "a third process from another client: %d", r);
		mpool_close(c2);
	}
	/* A finished process frees its slot. */
	REQUIRE(mpool_process_kill(a) == 0);
	join_expect(fx.c, a, -SIGKILL);
	d = spawn_packed(fx.c, "builtin.square", &sb, NULL);
	join_expect(fx.c, d, 0);
	result_expect_u64(d, 9);
	msgpack_sbuffer_destroy(&sb);
	mpool_process_free(a);
	mpool_process_free(d);
	REQUIRE(mpool_process_kill(b) == 0);
	join_expect(fx.c, b, -SIGKILL);
	mpool_process_free(b);
	fx_stop(&fx);
}
END_TEST

/* ---- 7. the daemon's lifecycle -------------------------------------------------- */

START_TEST(drain_waits_for_nondaemon_process)
{
	struct mpool_process *proc, *dmn, *late = NULL;
	unsigned long long d_start;
	int64_t spawned;
	msgpack_sbuffer sb;
	struct fx fx;
	pid_t d_pid;
	mpool *c;
	int st, r;

	start(&fx, NULL);
	c = fx_connect(&fx);
	spawned = fx_now_ms();
	proc = spawn_int(c, "builtin.sleep", 1000, NULL);
	dmn = spawn_nil(c, "testmod.hang", &(struct mpool_spawn_opts)MPOOL_SPAWN_OPTS(.daemon = 1));
	d_pid = mpool_process_pid(dmn);
	d_start = fx_pid_starttime(d_pid);
	r = mpool_drain(fx.c);
	REQUIREF(r == 0, "drain: %s: %s", mpool_strerror(-r), mpool_errmsg(fx.c));

	fx_arg_int(&sb, 1);
	r = mpool_spawn(c, "builtin.square", sb.data, sb.size, NULL, &late);
	msgpack_sbuffer_destroy(&sb);
	REQUIREF(r == -MPOOL_E_SHUTDOWN, "spawn during a drain: %d (%s)", r, mpool_errmsg(c));

	/* The drain waits for it: its client still gets the result. */
	join_expect(c, proc, 0);
	result_expect_u64(proc, 1000);
	st = fx_wait_exit(&fx, WAIT_MS);
	REQUIREF(WIFEXITED(st) && WEXITSTATUS(st) == 0, "mpoold after the drain: status 0x%x", st);
	REQUIREF(fx_now_ms() - spawned >= 950, "mpoold exited %lld ms after the spawn of a 1 s process",
		 (long long)(fx_now_ms() - spawned));
	/* A daemon process does not hold a drain; it goes with the daemon. */
	wait_pid_gone(d_pid, d_start, 3000, "a daemon process after the drain");
	mpool_process_free(proc);
	mpool_process_free(dmn);
	mpool_close(c);
	fx_stop(&fx);
}
END_TEST

START_TEST(terminate_kills_every_process)
{
	struct mpool_process *a, *b, *c;
	unsigned long long sa, sb, sc;
	int64_t t0;
	struct fx fx;
	int st, r;

	start(&fx, NULL);
	a = spawn_noterm(fx.c, NULL);
	b = spawn_noterm(fx.c, &(struct mpool_spawn_opts)MPOOL_SPAWN_OPTS(.daemon = 1));
	c = spawn_int(fx.c, "builtin.sleep", 30000, NULL);
	sa = fx_pid_starttime(mpool_process_pid(a));
	sb = fx_pid_starttime(mpool_process_pid(b));
	sc = fx_pid_starttime(mpool_process_pid(c));
	t0 = fx_now_ms();
	r = mpool_terminate(fx.c);
	REQUIREF(r == 0, "terminate: %s: %s", mpool_strerror(-r), mpool_errmsg(fx.c));
	st = fx_wait_exit(&fx, WAIT_MS);
	REQUIREF(WIFEXITED(st) && WEXITSTATUS(st) == 0, "mpoold after terminate: status 0x%x", st);
	wait_pid_gone(mpool_process_pid(a), sa, 2000, "a non-daemon process after terminate");
	wait_pid_gone(mpool_process_pid(b), sb, 2000, "a daemon process after terminate");
	wait_pid_gone(mpool_process_pid(c), sc, 2000, "a sleeping process after terminate");
	/* No grace: SIGTERM-blocking processes do not hold it up. */
	REQUIREF(fx_now_ms() - t0 < 2000 + GRACE_MS, "terminate took %lld ms",
		 (long long)(fx_now_ms() - t0));
	mpool_process_free(a);
	mpool_process_free(b);
	mpool_process_free(c);
	fx_stop(&fx);
}
END_TEST

START_TEST(reload_leaves_processes_running)
{
	struct mpool_process *proc;
	unsigned long long pstart;
	int64_t end;
	struct fx fx;
	pid_t pid;
	int r;

	start(&fx, NULL);
	proc = spawn_int(fx.c, "builtin.sleep", 1500, &(struct mpool_spawn_opts)MPOOL_SPAWN_OPTS(.daemon = 1));
	pid = mpool_process_pid(proc);
	pstart = fx_pid_starttime(pid);
	r = mpool_reload(fx.c);
	REQUIREF(r == 0, "reload: %s: %s", mpool_strerror(-r), mpool_errmsg(fx.c));
	for (end = fx_now_ms() + WAIT_MS; !fx_log_has(&fx, "reload complete"); fx_tick())
		REQUIREF(fx_now_ms() < end, "the reload did not complete within %d ms", WAIT_MS);
	/* An old worker counts once it is reaped, which may come after
	 * "reload complete" (the new workers are what completes it). */
	for (; fx_status_get(&fx, "totals.recycled_by.reload") < fx.workers; fx_tick())
		REQUIREF(fx_now_ms() < end, "reload replaced %llu workers",
			 (unsigned long long)fx_status_get(&fx, "totals.recycled_by.reload"));
	r = mpool_process_is_alive(proc);
	REQUIREF(r == 1, "is_alive after the reload: %d (%s)", r, mpool_process_errmsg(proc));
	REQUIREF(fx_pid_alive(pid, pstart), "the process (pid %d) did not survive the reload",
		 (int)pid);
	join_expect(fx.c, proc, 0);
	result_expect_u64(proc, 1500);
	REQUIRE(mpool_process_pid(proc) == pid);
	mpool_process_free(proc);
	fx_stop(&fx);
}
END_TEST

static Suite *process_suite(void)
{
	Suite *s = suite_create("process");
	TCase *tc;

	tc = tcase_create("basics");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, start_join_result);
	tcase_add_test(tc, failing_function);
	tcase_add_test(tc, utf8_name);
	tcase_add_test(tc, join_timeout);
	tcase_add_test(tc, terminate_escalates_to_kill);
	tcase_add_test(tc, terminate_right_after_spawn);
	tcase_add_test(tc, exit_codes);
	tcase_add_test(tc, names_are_printable_characters);
	tcase_add_test(tc, ps_escapes_names);
	tcase_add_test(tc, status_shows_limits);
	tcase_add_test(tc, mpctl_spawn_detach_and_ctrl_c);
	tcase_add_test(tc, fork_eagain_is_not_max_processes);
	suite_add_tcase(s, tc);

	tc = tcase_create("owners");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, daemon_dies_with_its_client);
	tcase_add_test(tc, nondaemon_joined_from_new_connection);
	tcase_add_test(tc, nondaemon_outlives_killed_client);
	tcase_add_test(tc, old_protocol_refused);
	tcase_add_test(tc, other_uid_is_refused);
	tcase_add_test(tc, max_processes);
	tcase_add_test(tc, per_uid_shares);
	tcase_add_test(tc, kept_per_uid);
	tcase_add_test(tc, kept_bytes_per_uid);
	suite_add_tcase(s, tc);

	tc = tcase_create("lifecycle");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, drain_waits_for_nondaemon_process);
	tcase_add_test(tc, terminate_kills_every_process);
	tcase_add_test(tc, reload_leaves_processes_running);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(process_suite());
	int failed;

	ffx_runner_init();
	srunner_run_all(sr, CK_NORMAL);
	ffx_runner_sweep();
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
