/* test_faults: integration tests of mpoold when things go wrong -- a client
 * killed mid-map, malformed input next to a healthy client, SIGTERM drains,
 * terminate, workers killed while busy or idle, the master killed.  Each
 * test starts its own daemon (fixture.h) and proves afterwards that no
 * worker outlived it.
 *
 * Where a test must hit a busy worker, it makes the worker's item sleep far
 * longer than the test runs and kills it deliberately, so which item dies
 * never depends on timing. */
#include <check.h>

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fixture.h"

#define LONG_SLEEP_MS 600000   /* never ends within a test: killed instead */

static int apply_int(mpool *c, const char *fn, int64_t arg, mpool_value **ret)
{
	msgpack_sbuffer sb;
	int r;

	fx_arg_int(&sb, arg);
	r = mpool_apply(c, fn, sb.data, sb.size, ret);
	msgpack_sbuffer_destroy(&sb);
	return r;
}

static void apply_square_ok(mpool *c, int64_t x)
{
	mpool_value *v = NULL;
	int r = apply_int(c, "builtin.square", x, &v);

	REQUIREF(r == 0, "apply square %lld: %s: %s", (long long)x, mpool_strerror(-r),
		 mpool_errmsg(c));
	REQUIREF(fx_obj_u64(mpool_value_get(v)) == (uint64_t)(x * x), "square of %lld", (long long)x);
	mpool_value_free(v);
}

static bool map_running(const struct fx_status *st, void *arg)
{
	(void)arg;
	return st->totals.jobs_active >= 1 && fx_count_state(st, "busy") >= 1;
}

static bool no_jobs(const struct fx_status *st, void *arg)
{
	(void)arg;
	return st->totals.jobs_active == 0;
}

/* A map of n sleeps of ms each, chunksize 1, run to whatever end: returns
 * the map's code as an exit status (0 when it completed). */
struct sleeper {
	struct fx *fx;
	uint64_t n, ms;
};

static int run_sleep_map(void *arg)
{
	struct sleeper *s = arg;
	mpool *c = fx_connect(s->fx);
	struct mpool_map_summary sum;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	int r;

	fx_sbuf_init(&sb, &pk);
	fx_pack_repeat(&pk, (int64_t)s->ms, s->n);
	r = mpool_map(c, "builtin.sleep", sb.data, sb.size, s->n,
		      &(struct mpool_map_opts)MPOOL_MAP_OPTS(.chunksize = 1), NULL, NULL, &sum);
	if (r < 0)
		fprintf(stderr, "client %d: map ended with %s: %s\n", (int)getpid(),
			mpool_strerror(-r), mpool_errmsg(c));
	msgpack_sbuffer_destroy(&sb);
	mpool_close(c);
	return r == 0 ? 0 : -r;
}

/* ---- 5. a client killed mid-map ------------------------------------------ */

START_TEST(client_killed_mid_map)
{
	struct sleeper s;
	struct fx fx;
	struct fx_status st;
	char how[64];
	pid_t child;
	int wst;

	fx_start(&fx, NULL);
	s = (struct sleeper){ &fx, 400, 5 };
	child = fx_fork(run_sleep_map, &s);
	fx_wait_status(&fx, map_running, NULL, FX_WAIT_MS, "the client's map running", NULL);
	kill(child, SIGKILL);
	wst = fx_wait_child(child, FX_WAIT_MS);
	REQUIREF(WIFSIGNALED(wst) && WTERMSIG(wst) == SIGKILL,
		 "the client was to be killed mid-map but %s", fx_describe_wait(wst, how, sizeof(how)));

	fx_wait_status(&fx, no_jobs, NULL, FX_WAIT_MS, "jobs_active back to 0", NULL);
	fx_wait_idle(&fx, FX_WAIT_MS);
	fx_status(&fx, &st);
	REQUIREF(st.totals.tasks_done < 400,
		 "all 400 items ran although their client was gone (tasks_done %llu)",
		 (unsigned long long)st.totals.tasks_done);
	fprintf(stderr, "client_killed_mid_map: %llu of 400 items ran\n",
		(unsigned long long)st.totals.tasks_done);
	REQUIREF(st.totals.chunks_queued == 0, "chunks_queued %llu",
		 (unsigned long long)st.totals.chunks_queued);
	REQUIREF(st.totals.clients == 1, "clients %llu after the only other client died",
		 (unsigned long long)st.totals.clients);
	REQUIREF(st.totals.workers_died == 0, "workers_died %llu", (unsigned long long)st.totals.workers_died);
	/* The daemon keeps serving. */
	apply_square_ok(fx.c, 9);
	fx_map_squares(fx.c, 1000, 0, NULL, 0);
	fx_status(&fx, &st);
	REQUIRE(fx_pool_idle(&st, 2));
	fx_stop(&fx);
}
END_TEST

/* ---- 6. malformed input while another client's map completes -------------- */

struct looper {
	struct fx *fx;
	int stop_r, stop_w;
};

/* Maps 50 000 squares again and again until the parent closes the pipe. */
static int map_loop(void *arg)
{
	struct looper *l = arg;
	mpool *c;
	int rounds = 0;

	close(l->stop_w);
	c = fx_connect(l->fx);
	for (;;) {
		struct pollfd pfd = { l->stop_r, POLLIN, 0 };

		fx_map_squares(c, 50000, rounds * 7, NULL, 0);
		rounds++;
		if (poll(&pfd, 1, 0) > 0)
			break;
		if (rounds > 10000)
			return 3;
	}
	mpool_close(c);
	return 0;
}

static void expect_response_error(struct fx_raw *r, uint64_t msgid, int code, const char *what)
{
	const msgpack_object *err, *res;
	int64_t got;

	fx_raw_response(r, msgid, &err, &res, FX_WAIT_MS);
	REQUIREF(err->type == MSGPACK_OBJECT_MAP, "%s: msgid %llu was not an error", what,
		 (unsigned long long)msgid);
	got = fx_obj_i64(fx_obj_get(err, "code"));
	REQUIREF(got == code, "%s: code %lld (%s), expected %d (%s)", what, (long long)got,
		 mpool_strerror((int)got), code, mpool_strerror(code));
	REQUIRE(res->type == MSGPACK_OBJECT_NIL);
}

static void raw_ping(struct fx_raw *r, uint64_t msgid)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;
	const msgpack_object *err, *res;

	fx_sbuf_init(&sb, &pk);
	fx_req_head(&pk, msgid, "ping");
	msgpack_pack_array(&pk, 0);
	REQUIREF(fx_raw_send(r, sb.data, sb.size) == 0, "the connection was closed");
	msgpack_sbuffer_destroy(&sb);
	fx_raw_response(r, msgid, &err, &res, FX_WAIT_MS);
	REQUIREF(err->type == MSGPACK_OBJECT_NIL && fx_obj_str_eq(res, "pong"), "ping %llu",
		 (unsigned long long)msgid);
}

static void pack_apply(msgpack_packer *pk, uint64_t msgid, const char *fn, int64_t arg)
{
	fx_req_head(pk, msgid, "apply");
	msgpack_pack_array(pk, 2);
	fx_pack_str(pk, fn);
	msgpack_pack_int64(pk, arg);
}

START_TEST(malformed_input_during_map)
{
	static const char *const args[] = { "--max-frame", "1048576", NULL };
	struct looper l;
	struct fx fx;
	struct fx_raw r;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	int64_t code;
	long rss;
	int p[2];
	pid_t child;

	fx_start(&fx, args);
	REQUIRE(pipe(p) == 0);
	l = (struct looper){ &fx, p[0], p[1] };
	child = fx_fork(map_loop, &l);
	close(p[0]);
	fx_wait_status(&fx, map_running, NULL, FX_WAIT_MS, "the healthy client's map running", NULL);
	fx_sbuf_init(&sb, &pk);

	/* (a) a byte that is no MessagePack type */
	fx_raw_open(&fx, &r);
	REQUIRE(fx_raw_send(&r, "\xc1", 1) == 0);
	code = fx_raw_error_then_eof(&r, FX_WAIT_MS);
	REQUIREF(code == MPOOL_E_BADREQ, "0xc1: error code %lld, expected bad_request", (long long)code);
	fx_raw_close(&r);

	/* (b) a well-formed request with bad params: an error response, and the
	 * connection stays */
	fx_raw_open(&fx, &r);
	fx_req_head(&pk, 5, "map");
	msgpack_pack_array(&pk, 2);
	msgpack_pack_int64(&pk, 1);
	msgpack_pack_int64(&pk, 2);
	REQUIRE(fx_raw_send(&r, sb.data, sb.size) == 0);
	msgpack_sbuffer_clear(&sb);
	expect_response_error(&r, 5, MPOOL_E_BADREQ, "[0, 5, \"map\", [1, 2]]");
	raw_ping(&r, 6);
	fx_raw_close(&r);

	/* (c) an array32 header claiming 2^32-1 elements, then 2 MiB: past
	 * --max-frame without the daemon allocating for the claim */
	{
		size_t n = 2u << 20;
		char *big = calloc(1, n + 5);

		REQUIRE(big);
		memcpy(big, "\xdd\xff\xff\xff\xff", 5);
		fx_raw_open(&fx, &r);
		fx_raw_send(&r, big, n + 5);   /* may fail with EPIPE: the daemon hung up */
		free(big);
		code = fx_raw_error_then_eof(&r, FX_WAIT_MS);
		REQUIREF(code == MPOOL_E_LIMIT, "frame past --max-frame: code %lld, expected limit",
			 (long long)code);
		fx_raw_close(&r);
		rss = fx_rss_kib(fx.pid);
		REQUIREF(rss > 0 && rss < 64 * 1024, "mpoold's VmRSS is %ld KiB after a 2 MiB frame", rss);
		fprintf(stderr, "malformed_input_during_map: mpoold VmRSS %ld KiB after the 2 MiB frame\n",
			rss);
	}

	/* (d) 40 nested arrays */
	fx_raw_open(&fx, &r);
	{
		char deep[41];

		memset(deep, 0x91, 40);
		deep[40] = 0x00;
		fx_raw_send(&r, deep, sizeof(deep));
	}
	code = fx_raw_error_then_eof(&r, FX_WAIT_MS);
	REQUIREF(code == MPOOL_E_LIMIT || code == MPOOL_E_BADREQ, "nesting 40: code %lld",
		 (long long)code);
	fx_raw_close(&r);

	/* An item nested one level more than the 29 allowed in a map. */
	fx_raw_open(&fx, &r);
	fx_req_head(&pk, 1, "map");
	msgpack_pack_array(&pk, 2);
	fx_pack_str(&pk, "builtin.echo");
	msgpack_pack_array(&pk, 1);
	for (int i = 0; i < 30; i++)
		msgpack_pack_array(&pk, 1);
	msgpack_pack_int64(&pk, 1);
	fx_raw_send(&r, sb.data, sb.size);
	msgpack_sbuffer_clear(&sb);
	code = fx_raw_error_then_eof(&r, FX_WAIT_MS);
	REQUIREF(code == MPOOL_E_LIMIT || code == MPOOL_E_BADREQ, "nesting 33: code %lld",
		 (long long)code);
	fx_raw_close(&r);

	/* (e) unknown method */
	fx_raw_open(&fx, &r);
	fx_req_head(&pk, 7, "frobnicate");
	msgpack_pack_array(&pk, 0);
	REQUIRE(fx_raw_send(&r, sb.data, sb.size) == 0);
	msgpack_sbuffer_clear(&sb);
	expect_response_error(&r, 7, MPOOL_E_NOMETHOD, "unknown method");
	raw_ping(&r, 8);

	/* (f) a msgid reused while its request is open: both in one write, so
	 * the second arrives while the first sleeps */
	pack_apply(&pk, 9, "builtin.sleep", 300);
	pack_apply(&pk, 9, "builtin.square", 2);
	REQUIRE(fx_raw_send(&r, sb.data, sb.size) == 0);
	msgpack_sbuffer_clear(&sb);
	expect_response_error(&r, 9, MPOOL_E_BADREQ, "a reused msgid");
	{
		const msgpack_object *err, *res;

		fx_raw_response(&r, 9, &err, &res, FX_WAIT_MS);
		REQUIREF(err->type == MSGPACK_OBJECT_NIL && fx_obj_u64(res) == 300,
			 "the first request of msgid 9 did not complete with its own result");
	}
	raw_ping(&r, 9);   /* closed now: the msgid is free again */
	fx_raw_close(&r);

	/* Not MessagePack-RPC at all: a bare integer, a response. */
	fx_raw_open(&fx, &r);
	REQUIRE(fx_raw_send(&r, "\x2a", 1) == 0);
	code = fx_raw_error_then_eof(&r, FX_WAIT_MS);
	REQUIREF(code == MPOOL_E_BADREQ, "a bare integer: code %lld", (long long)code);
	fx_raw_close(&r);
	fx_raw_open(&fx, &r);
	REQUIRE(fx_raw_send(&r, "\x94\x01\x01\xc0\xc0", 5) == 0);
	code = fx_raw_error_then_eof(&r, FX_WAIT_MS);
	REQUIREF(code == MPOOL_E_BADREQ, "a response from a client: code %lld", (long long)code);
	fx_raw_close(&r);

	/* The healthy client finishes its current map correctly. */
	close(p[1]);
	fx_expect_child_ok(child, 40000, "the healthy client's maps");
	msgpack_sbuffer_destroy(&sb);
	fx_wait_idle(&fx, FX_WAIT_MS);
	apply_square_ok(fx.c, 3);
	fx_stop(&fx);
}
END_TEST

/* PROTOCOL.md: "A msgid must not be reused while its request is still open
 * on the same connection (answered with bad_request)" -- whatever the
 * method of the second request. */
START_TEST(reused_msgid_on_simple_methods)
{
	static const char *const methods[] = { "ping", "status" };
	struct fx fx;
	struct fx_raw r;
	msgpack_sbuffer sb;
	msgpack_packer pk;

	fx_start(&fx, NULL);
	fx_raw_open(&fx, &r);
	fx_sbuf_init(&sb, &pk);
	for (int i = 0; i < 2; i++) {
		const msgpack_object *err, *res;
		uint64_t id = 20 + (uint64_t)i;

		pack_apply(&pk, id, "builtin.sleep", 300);
		fx_req_head(&pk, id, methods[i]);
		msgpack_pack_array(&pk, 0);
		REQUIRE(fx_raw_send(&r, sb.data, sb.size) == 0);
		msgpack_sbuffer_clear(&sb);
		fx_raw_response(&r, id, &err, &res, FX_WAIT_MS);
		REQUIREF(err->type == MSGPACK_OBJECT_MAP &&
			 fx_obj_i64(fx_obj_get(err, "code")) == MPOOL_E_BADREQ,
			 "a %s reusing the msgid %llu of an open apply was answered normally "
			 "(error %s), not with bad_request: the client now holds two responses "
			 "for one msgid", methods[i], (unsigned long long)id,
			 err->type == MSGPACK_OBJECT_NIL ? "nil" : "not bad_request");
		fx_raw_response(&r, id, &err, &res, FX_WAIT_MS);
		REQUIRE(err->type == MSGPACK_OBJECT_NIL && fx_obj_u64(res) == 300);
	}
	msgpack_sbuffer_destroy(&sb);
	fx_raw_close(&r);
	fx_stop(&fx);
}
END_TEST

/* ---- 8. SIGTERM drains ------------------------------------------------------ */

struct drain {
	struct fx *fx;
	mpool *b;
	uint64_t seen;
	bool signalled;
	bool by_request;        /* mpool_drain() instead of SIGTERM */
};

static void drain_chunk(void *ud, uint64_t first, const msgpack_object *res,
			const struct mpool_item_error *errs, size_t n_errs)
{
	struct drain *d = ud;
	struct fx_status st;
	int64_t end;

	REQUIREF(n_errs == 0, "item %llu failed during the drain: %s: %s",
		 (unsigned long long)errs[0].index, mpool_strerror(errs[0].code), errs[0].message);
	REQUIRE(first == d->seen);
	for (uint32_t i = 0; i < res->via.array.size; i++)
		REQUIRE(fx_obj_u64(&res->via.array.ptr[i]) == 20);
	d->seen += res->via.array.size;
	if (d->signalled)
		return;
	d->signalled = true;
	if (d->by_request) {
		int r = mpool_drain(d->b);

		REQUIREF(r == 0, "mpool_drain: %s: %s", mpool_strerror(-r), mpool_errmsg(d->b));
	} else {
		REQUIRE(kill(d->fx->pid, SIGTERM) == 0);
	}
	/* New work on an open connection is refused once the drain began. */
	for (end = fx_now_ms() + FX_WAIT_MS;;) {
		mpool_value *v = NULL;
		int r = apply_int(d->b, "builtin.square", 2, &v);

		mpool_value_free(v);
		if (r == -MPOOL_E_SHUTDOWN)
			break;
		REQUIREF(r == 0, "apply during the drain: %s: %s", mpool_strerror(-r),
			 mpool_errmsg(d->b));
		REQUIREF(fx_now_ms() < end, "new work was still accepted %d ms after SIGTERM",
			 FX_WAIT_MS);
		fx_tick();
	}
	fx_status_on(d->fx, d->b, &st);
	REQUIREF(strcmp(st.state, "draining") == 0, "state '%s' during the drain", st.state);
	REQUIREF(st.totals.jobs_active >= 1, "jobs_active %llu during the drain",
		 (unsigned long long)st.totals.jobs_active);
}

START_TEST(sigterm_drains_then_exits)
{
	struct fx fx;
	struct fx_status st;
	struct drain d;
	struct mpool_map_summary sum = { 0 };
	msgpack_sbuffer sb;
	msgpack_packer pk;
	mpool *c = NULL;
	char how[64];
	int r, wst;

	fx_start(&fx, NULL);
	fx_status(&fx, &st);   /* records the worker pids */
	d = (struct drain){ .fx = &fx, .b = fx_connect(&fx), .by_request = _i == 1 };
	fx_sbuf_init(&sb, &pk);
	fx_pack_repeat(&pk, 20, 40);
	r = mpool_map(fx.c, "builtin.sleep", sb.data, sb.size, 40,
		      &(struct mpool_map_opts)MPOOL_MAP_OPTS(.chunksize = 1), drain_chunk, &d, &sum);
	REQUIREF(r == 0, "the map did not survive the drain: %s: %s", mpool_strerror(-r),
		 mpool_errmsg(fx.c));
	REQUIREF(d.seen == 40 && sum.items == 40 && sum.failed == 0, "%llu results, summary {%llu, %llu}",
		 (unsigned long long)d.seen, (unsigned long long)sum.items,
		 (unsigned long long)sum.failed);
	msgpack_sbuffer_destroy(&sb);
	mpool_close(d.b);

	wst = fx_wait_exit(&fx, FX_WAIT_MS);
	REQUIREF(WIFEXITED(wst) && WEXITSTATUS(wst) == 0, "mpoold after the drain: %s",
		 fx_describe_wait(wst, how, sizeof(how)));
	REQUIREF(mpool_connect(fx.sock, &c, NULL, 0) < 0, "a new connection succeeded after the exit");
	fx_wait_seen_gone(&fx, 5000);
	fx_stop(&fx);
}
END_TEST

START_TEST(sigterm_idle_exits_at_once)
{
	struct fx fx;
	struct fx_status st;
	mpool *c = NULL;
	char how[64];
	int wst;

	fx_start(&fx, NULL);
	fx_status(&fx, &st);
	REQUIRE(kill(fx.pid, SIGTERM) == 0);
	wst = fx_wait_exit(&fx, FX_WAIT_MS);
	REQUIREF(WIFEXITED(wst) && WEXITSTATUS(wst) == 0, "mpoold after SIGTERM: %s",
		 fx_describe_wait(wst, how, sizeof(how)));
	REQUIREF(mpool_connect(fx.sock, &c, NULL, 0) < 0, "a new connection succeeded after the exit");
	REQUIREF(access(fx.sock, F_OK) < 0, "the socket file is left behind");
	fx_wait_seen_gone(&fx, 5000);
	fx_stop(&fx);
}
END_TEST

/* SIGTERM from a second process once the only busy worker runs our item. */
struct signaller {
	struct fx *fx;
	int sig;
};

static int signal_when_busy(void *arg)
{
	struct signaller *s = arg;
	mpool *c = fx_connect(s->fx);
	struct fx_status st;

	for (int64_t end = fx_now_ms() + FX_WAIT_MS;; fx_tick()) {
		fx_status_on(s->fx, c, &st);
		if (st.totals.jobs_active >= 1 && fx_count_state(&st, "busy") >= 1)
			break;
		if (fx_now_ms() > end)
			return 3;
	}
	mpool_close(c);
	return kill(s->fx->pid, s->sig) == 0 ? 0 : 4;
}

START_TEST(drain_timeout_terminates)
{
	static const char *const args[] = { "--drain-timeout", "300", NULL };
	struct signaller s;
	struct fx fx;
	struct fx_status st;
	mpool_value *v = NULL;
	char how[64];
	pid_t child;
	int r, wst;

	fx_start(&fx, args);
	fx_status(&fx, &st);
	s = (struct signaller){ &fx, SIGTERM };
	child = fx_fork(signal_when_busy, &s);
	r = apply_int(fx.c, "builtin.sleep", LONG_SLEEP_MS, &v);
	REQUIREF(r == -MPOOL_E_TERMINATED,
		 "an apply still running when the drain timed out: %d (%s), expected terminated", r,
		 mpool_errmsg(fx.c));
	fx_expect_child_ok(child, FX_WAIT_MS, "the SIGTERM sender");
	wst = fx_wait_exit(&fx, FX_WAIT_MS);
	REQUIREF(WIFEXITED(wst), "mpoold after a timed-out drain: %s",
		 fx_describe_wait(wst, how, sizeof(how)));
	fx_wait_seen_gone(&fx, 5000);
	fx_stop(&fx);
}
END_TEST

/* ---- 9. terminate ----------------------------------------------------------- */

START_TEST(terminate_fails_open_work)
{
	struct sleeper s;
	struct fx fx;
	mpool *c = NULL;
	char how[64];
	pid_t child;
	int r, wst;

	fx_start(&fx, NULL);
	s = (struct sleeper){ &fx, 400, 10 };
	child = fx_fork(run_sleep_map, &s);
	fx_wait_status(&fx, map_running, NULL, FX_WAIT_MS, "the long map running", NULL);
	r = mpool_terminate(fx.c);
	REQUIREF(r == 0, "mpool_terminate: %s: %s", mpool_strerror(-r), mpool_errmsg(fx.c));
	wst = fx_wait_child(child, FX_WAIT_MS);
	REQUIREF(WIFEXITED(wst) && WEXITSTATUS(wst) == MPOOL_E_TERMINATED,
		 "the map of the terminated pool %s (the exit status is the map's error code; "
		 "expected %d, terminated)", fx_describe_wait(wst, how, sizeof(how)),
		 MPOOL_E_TERMINATED);
	wst = fx_wait_exit(&fx, FX_WAIT_MS);
	REQUIREF(WIFEXITED(wst), "mpoold after terminate: %s", fx_describe_wait(wst, how, sizeof(how)));
	fx_wait_seen_gone(&fx, 5000);
	REQUIREF(mpool_connect(fx.sock, &c, NULL, 0) < 0, "a new connection succeeded after terminate");
	fx_stop(&fx);
}
END_TEST

/* ---- 10. worker death ------------------------------------------------------- */

struct killer {
	struct fx *fx;
	int wfd;
};

/* Waits until exactly one worker is busy -- the one stuck in the long
 * sleep, since it is busy from its dispatch until killed -- and SIGKILLs
 * it; sends its pid through wfd.  On failure kills the daemon instead, so
 * the parent's blocked call returns. */
static int kill_the_busy_worker(void *arg)
{
	struct killer *k = arg;
	mpool *c = fx_connect(k->fx);
	struct fx_status st;

	for (int64_t end = fx_now_ms() + FX_WAIT_MS;; fx_tick()) {
		fx_status_on(k->fx, c, &st);
		if (st.totals.jobs_active >= 1 && fx_count_state(&st, "busy") == 1)
			break;
		if (fx_now_ms() > end) {
			fprintf(stderr, "killer: never saw exactly one busy worker\n");
			kill(k->fx->pid, SIGKILL);
			return 3;
		}
	}
	for (unsigned i = 0; i < st.n_workers; i++) {
		if (strcmp(st.workers[i].state, "busy") == 0) {
			pid_t pid = st.workers[i].pid;

			if (kill(pid, SIGKILL) < 0 || write(k->wfd, &pid, sizeof(pid)) != sizeof(pid))
				return 4;
			mpool_close(c);
			return 0;
		}
	}
	return 5;
}

static pid_t read_pid(int fd)
{
	struct pollfd pfd = { fd, POLLIN, 0 };
	pid_t pid = 0;

	REQUIREF(poll(&pfd, 1, FX_WAIT_MS) == 1 && read(fd, &pid, sizeof(pid)) == sizeof(pid),
		 "the killer did not report a pid");
	return pid;
}

struct deaths {
	uint64_t n;
	uint8_t *got;
	int64_t *val;           /* -1: nil */
	int *code;
	char msg[256];
};

static void death_chunk(void *ud, uint64_t first, const msgpack_object *res,
			const struct mpool_item_error *errs, size_t n_errs)
{
	struct deaths *d = ud;

	for (uint32_t i = 0; i < res->via.array.size; i++) {
		const msgpack_object *o = &res->via.array.ptr[i];

		REQUIRE(first + i < d->n && !d->got[first + i]);
		d->got[first + i] = 1;
		d->val[first + i] = o->type == MSGPACK_OBJECT_NIL ? -1 : (int64_t)fx_obj_u64(o);
	}
	for (size_t k = 0; k < n_errs; k++) {
		REQUIRE(errs[k].index < d->n && d->code[errs[k].index] == 0);
		d->code[errs[k].index] = errs[k].code;
		snprintf(d->msg, sizeof(d->msg), "%s", errs[k].message);
	}
}

START_TEST(worker_killed_mid_map)
{
	const uint32_t chunksize = _i ? 4 : 1;
	const uint64_t n = 200;
	struct deaths d = { .n = n };
	struct mpool_map_summary sum = { 0 };
	struct killer k;
	struct fx fx;
	struct fx_status st;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	char pidstr[32];
	pid_t child, victim;
	int p[2], r;

	fx_start(&fx, NULL);
	REQUIRE(pipe(p) == 0);
	k = (struct killer){ &fx, p[1] };
	child = fx_fork(kill_the_busy_worker, &k);
	close(p[1]);

	d.got = calloc(n, 1);
	d.val = calloc(n, sizeof(*d.val));
	d.code = calloc(n, sizeof(*d.code));
	fx_sbuf_init(&sb, &pk);
	msgpack_pack_uint64(&pk, LONG_SLEEP_MS);   /* item 0: runs until killed */
	fx_pack_repeat(&pk, 10, n - 1);
	r = mpool_map(fx.c, "builtin.sleep", sb.data, sb.size, n,
		      &(struct mpool_map_opts)MPOOL_MAP_OPTS(.chunksize = chunksize), death_chunk, &d, &sum);
	fx_expect_child_ok(child, FX_WAIT_MS, "the worker killer");
	victim = read_pid(p[0]);
	close(p[0]);
	REQUIREF(r == 0, "a map that lost a worker must still succeed: %s: %s", mpool_strerror(-r),
		 mpool_errmsg(fx.c));
	REQUIREF(sum.items == n && sum.failed == chunksize, "summary {%llu, %llu}, expected {%llu, %u}",
		 (unsigned long long)sum.items, (unsigned long long)sum.failed, (unsigned long long)n,
		 chunksize);
	snprintf(pidstr, sizeof(pidstr), "%d", (int)victim);
	for (uint64_t i = 0; i < n; i++) {
		REQUIREF(d.got[i], "item %llu never delivered", (unsigned long long)i);
		if (i < chunksize) {
			REQUIREF(d.code[i] == -MPOOL_E_WORKER && d.val[i] == -1,
				 "item %llu of the killed worker's chunk: code %d (%s), value %lld",
				 (unsigned long long)i, d.code[i], mpool_strerror(d.code[i]),
				 (long long)d.val[i]);
		} else {
			REQUIREF(d.code[i] == 0 && d.val[i] == 10,
				 "item %llu outside the killed chunk: code %d (%s), value %lld",
				 (unsigned long long)i, d.code[i], mpool_strerror(d.code[i]),
				 (long long)d.val[i]);
		}
	}
	REQUIREF(strstr(d.msg, "killed by SIGKILL") && strstr(d.msg, pidstr),
		 "the worker_died message should name pid %d and SIGKILL: '%s'", (int)victim, d.msg);
	free(d.got);
	free(d.val);
	free(d.code);
	msgpack_sbuffer_destroy(&sb);

	fx_wait_idle(&fx, FX_WAIT_MS);
	fx_status(&fx, &st);
	REQUIREF(!fx_has_worker(&st, victim), "the killed worker %d is still listed", (int)victim);
	REQUIREF(st.totals.workers_died >= 1, "workers_died %llu", (unsigned long long)st.totals.workers_died);
	REQUIRE(st.totals.workers_started >= 3);
	REQUIREF(st.totals.tasks_failed == chunksize, "tasks_failed %llu",
		 (unsigned long long)st.totals.tasks_failed);
	fx_map_squares(fx.c, 1000, 0, NULL, 0);
	fx_stop(&fx);
}
END_TEST

START_TEST(worker_killed_during_apply)
{
	struct killer k;
	struct fx fx;
	struct fx_status st;
	mpool_value *v = NULL;
	char pidstr[32];
	pid_t child, victim;
	int p[2], r;

	fx_start(&fx, NULL);
	REQUIRE(pipe(p) == 0);
	k = (struct killer){ &fx, p[1] };
	child = fx_fork(kill_the_busy_worker, &k);
	close(p[1]);
	r = apply_int(fx.c, "builtin.sleep", LONG_SLEEP_MS, &v);
	fx_expect_child_ok(child, FX_WAIT_MS, "the worker killer");
	victim = read_pid(p[0]);
	close(p[0]);
	REQUIREF(r == -MPOOL_E_WORKER, "the apply whose worker was killed: %d (%s)", r,
		 mpool_errmsg(fx.c));
	snprintf(pidstr, sizeof(pidstr), "%d", (int)victim);
	REQUIREF(strstr(mpool_errmsg(fx.c), "killed by SIGKILL") && strstr(mpool_errmsg(fx.c), pidstr),
		 "'%s' should name pid %d and SIGKILL", mpool_errmsg(fx.c), (int)victim);
	fx_wait_idle(&fx, FX_WAIT_MS);
	fx_status(&fx, &st);
	REQUIRE(!fx_has_worker(&st, victim) && st.totals.workers_died >= 1);
	apply_square_ok(fx.c, 11);
	fx_stop(&fx);
}
END_TEST

START_TEST(idle_worker_killed)
{
	struct fx fx;
	struct fx_status st;
	pid_t victim;

	fx_start(&fx, NULL);
	fx_status(&fx, &st);
	victim = st.workers[0].pid;
	REQUIRE(kill(victim, SIGKILL) == 0);
	for (int64_t end = fx_now_ms() + FX_WAIT_MS;; fx_tick()) {
		fx_status(&fx, &st);
		if (fx_pool_idle(&st, 2) && !fx_has_worker(&st, victim))
			break;
		REQUIREF(fx_now_ms() < end, "the pool did not replace worker %d", (int)victim);
	}
	REQUIREF(st.totals.workers_died == 1, "workers_died %llu after one kill",
		 (unsigned long long)st.totals.workers_died);
	REQUIREF(st.totals.workers_started == 3, "workers_started %llu",
		 (unsigned long long)st.totals.workers_started);
	fx_map_squares(fx.c, 2000, 0, NULL, 0);
	fx_stop(&fx);
}
END_TEST

/* ---- 11. the master killed --------------------------------------------------- */

START_TEST(master_sigkill_takes_workers_down)
{
	struct sleeper s;
	struct fx fx;
	char how[64];
	pid_t child;
	int wst;

	fx_start(&fx, NULL);
	s = (struct sleeper){ &fx, 400, 10 };
	child = fx_fork(run_sleep_map, &s);
	fx_wait_status(&fx, map_running, NULL, FX_WAIT_MS, "the map running", NULL);
	REQUIREF(fx.n_seen == 2, "%u worker pids recorded", fx.n_seen);
	/* The master alone, not its group: the workers must follow by themselves. */
	REQUIRE(kill(fx.pid, SIGKILL) == 0);
	wst = fx_wait_exit(&fx, FX_WAIT_MS);
	REQUIREF(WIFSIGNALED(wst) && WTERMSIG(wst) == SIGKILL, "mpoold %s",
		 fx_describe_wait(wst, how, sizeof(how)));
	fx_wait_seen_gone(&fx, 10000);
	wst = fx_wait_child(child, FX_WAIT_MS);
	REQUIREF(WIFEXITED(wst) && WEXITSTATUS(wst) == MPOOL_E_CLOSED,
		 "the client of a killed daemon %s (expected exit %d, closed)",
		 fx_describe_wait(wst, how, sizeof(how)), MPOOL_E_CLOSED);
	fx_stop(&fx);
}
END_TEST

/* ---- worker lifecycle: partial reports, timeouts, retries, reload --------- */

/* Kills the only busy worker, found through a second connection. */
static pid_t kill_only_busy(struct fx *fx, mpool *b)
{
	struct fx_status st;

	fx_status_on(fx, b, &st);
	REQUIREF(fx_count_state(&st, "busy") == 1, "%u busy workers, expected 1",
		 fx_count_state(&st, "busy"));
	for (unsigned i = 0; i < st.n_workers; i++)
		if (strcmp(st.workers[i].state, "busy") == 0) {
			REQUIRE(kill(st.workers[i].pid, SIGKILL) == 0);
			return st.workers[i].pid;
		}
	return 0;
}

struct partial {
	struct fx *fx;
	mpool *b;
	uint64_t seen, kill_after;
	pid_t victim;
	int64_t val[10];
	int code[10];
	char msg[256];
};

static void partial_chunk(void *ud, uint64_t first, const msgpack_object *res,
			  const struct mpool_item_error *errs, size_t n_errs)
{
	struct partial *p = ud;

	REQUIRE(first == p->seen && first + res->via.array.size <= 10);
	for (uint32_t i = 0; i < res->via.array.size; i++) {
		const msgpack_object *o = &res->via.array.ptr[i];

		p->val[first + i] = o->type == MSGPACK_OBJECT_NIL ? -1 : (int64_t)fx_obj_u64(o);
	}
	for (size_t k = 0; k < n_errs; k++) {
		p->code[errs[k].index] = errs[k].code;
		snprintf(p->msg, sizeof(p->msg), "%s", errs[k].message);
	}
	p->seen += res->via.array.size;
	/* Items 0..4 reported: the worker is in item 5's long sleep. */
	if (!p->victim && p->seen >= p->kill_after)
		p->victim = kill_only_busy(p->fx, p->b);
}

/* PROTOCOL.md, Failures: a worker that dies fails only the items it had not
 * reported yet.  One chunk of ten: items 0..4 sleep 30 ms each (longer than
 * the ~20 ms reporting period, so each is reported before the next
 * starts), item 5 sleeps until killed. */
START_TEST(worker_death_keeps_reported_items)
{
	struct partial p = { 0 };
	struct mpool_map_summary sum = { 0 };
	struct fx fx;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	int r;

	fx_start(&fx, NULL);
	p.fx = &fx;
	p.b = fx_connect(&fx);
	p.kill_after = 5;
	fx_sbuf_init(&sb, &pk);
	fx_pack_repeat(&pk, 30, 5);
	msgpack_pack_uint64(&pk, LONG_SLEEP_MS);
	fx_pack_repeat(&pk, 10, 4);
	r = mpool_map(fx.c, "builtin.sleep", sb.data, sb.size, 10,
		      &(struct mpool_map_opts)MPOOL_MAP_OPTS(.chunksize = 10), partial_chunk, &p, &sum);
	REQUIREF(r == 0, "%s: %s", mpool_strerror(-r), mpool_errmsg(fx.c));
	REQUIRE(p.victim > 0 && p.seen == 10);
	REQUIREF(sum.failed == 5, "%llu items failed, expected the 5 unreported ones",
		 (unsigned long long)sum.failed);
	for (int i = 0; i < 10; i++) {
		if (i < 5)
			REQUIREF(p.code[i] == 0 && p.val[i] == 30, "reported item %d: code %d value %lld",
				 i, p.code[i], (long long)p.val[i]);
		else
			REQUIREF(p.code[i] == -MPOOL_E_WORKER && p.val[i] == -1,
				 "unreported item %d: code %d (%s) value %lld", i, p.code[i],
				 mpool_strerror(p.code[i]), (long long)p.val[i]);
	}
	msgpack_sbuffer_destroy(&sb);
	mpool_close(p.b);
	fx_wait_idle(&fx, FX_WAIT_MS);
	fx_stop(&fx);
}
END_TEST

START_TEST(task_timeouts)
{
	struct mpool_apply_opts ao = MPOOL_APPLY_OPTS(.timeout_ms = 300);
	struct fx fx;
	struct fx_status st;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	mpool_value *v = NULL;
	struct deaths d = { .n = 6 };
	struct mpool_map_summary sum = { 0 };
	int r;

	fx_start(&fx, NULL);
	fx_arg_int(&sb, LONG_SLEEP_MS);
	r = mpool_apply_with(fx.c, "builtin.sleep", sb.data, sb.size, &ao, &v);
	REQUIREF(r == -MPOOL_E_TIMEOUT, "an apply past timeout_ms: %d (%s)", r, mpool_errmsg(fx.c));
	msgpack_sbuffer_destroy(&sb);
	fx_wait_idle(&fx, FX_WAIT_MS);
	/* Within its deadline an apply runs normally. */
	fx_arg_int(&sb, 1);
	r = mpool_apply_with(fx.c, "builtin.sleep", sb.data, sb.size, &ao, &v);
	REQUIREF(r == 0 && fx_obj_u64(mpool_value_get(v)) == 1, "%d (%s)", r, mpool_errmsg(fx.c));
	mpool_value_free(v);
	msgpack_sbuffer_destroy(&sb);

	d.got = calloc(d.n, 1);
	d.val = calloc(d.n, sizeof(*d.val));
	d.code = calloc(d.n, sizeof(*d.code));
	fx_sbuf_init(&sb, &pk);
	fx_pack_repeat(&pk, 1, 2);
	msgpack_pack_uint64(&pk, LONG_SLEEP_MS);
	fx_pack_repeat(&pk, 1, 3);
	r = mpool_map(fx.c, "builtin.sleep", sb.data, sb.size, d.n,
		      &(struct mpool_map_opts)MPOOL_MAP_OPTS(.chunksize = 1, .timeout_ms = 1000), death_chunk,
		      &d, &sum);
	REQUIREF(r == 0, "%s: %s", mpool_strerror(-r), mpool_errmsg(fx.c));
	REQUIREF(sum.failed == 1, "%llu failed", (unsigned long long)sum.failed);
	for (uint64_t i = 0; i < d.n; i++)
		REQUIREF(i == 2 ? d.code[i] == -MPOOL_E_TIMEOUT && d.val[i] == -1
			 : d.code[i] == 0 && d.val[i] == 1, "item %llu: code %d (%s) value %lld",
			 (unsigned long long)i, d.code[i], mpool_strerror(d.code[i]), (long long)d.val[i]);
	free(d.got);
	free(d.val);
	free(d.code);
	msgpack_sbuffer_destroy(&sb);
	fx_wait_idle(&fx, FX_WAIT_MS);
	fx_status(&fx, &st);
	REQUIREF(fx_status_get(&fx, "totals.tasks_timed_out") == 2, "tasks_timed_out %llu",
		 (unsigned long long)fx_status_get(&fx, "totals.tasks_timed_out"));
	fx_stop(&fx);
}
END_TEST

struct retry {
	struct fx *fx;
	mpool *b;
	uint64_t seen;
	pid_t victim;
};

static void retry_chunk(void *ud, uint64_t first, const msgpack_object *res,
			const struct mpool_item_error *errs, size_t n_errs)
{
	struct retry *t = ud;
	struct fx_status st;

	REQUIREF(n_errs == 0, "item %llu failed although retries were allowed: %s: %s",
		 (unsigned long long)errs[0].index, mpool_strerror(errs[0].code), errs[0].message);
	REQUIRE(first == t->seen);
	for (uint32_t i = 0; i < res->via.array.size; i++)
		REQUIRE(fx_obj_u64(&res->via.array.ptr[i]) == 100);
	t->seen += res->via.array.size;
	if (t->victim)
		return;
	fx_status_on(t->fx, t->b, &st);
	for (unsigned i = 0; i < st.n_workers; i++)
		if (strcmp(st.workers[i].state, "busy") == 0) {
			t->victim = st.workers[i].pid;
			REQUIRE(kill(t->victim, SIGKILL) == 0);
			return;
		}
}

START_TEST(retries_rerun_lost_items)
{
	struct retry t = { 0 };
	struct mpool_map_summary sum = { 0 };
	struct fx fx;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	int r;

	fx_start(&fx, NULL);
	t.fx = &fx;
	t.b = fx_connect(&fx);
	fx_sbuf_init(&sb, &pk);
	fx_pack_repeat(&pk, 100, 12);
	r = mpool_map(fx.c, "builtin.sleep", sb.data, sb.size, 12,
		      &(struct mpool_map_opts)MPOOL_MAP_OPTS(.chunksize = 1, .retries = 2), retry_chunk, &t, &sum);
	REQUIREF(r == 0 && sum.failed == 0 && t.seen == 12, "%d (%s), %llu failed", r,
		 mpool_errmsg(fx.c), (unsigned long long)sum.failed);
	REQUIRE(t.victim > 0);
	fx_wait_idle(&fx, FX_WAIT_MS);
	REQUIREF(fx_status_get(&fx, "totals.workers_died") == 1, "workers_died %llu",
		 (unsigned long long)fx_status_get(&fx, "totals.workers_died"));

	/* More retries than --max-retries (default 3): a bad request. */
	r = mpool_map(fx.c, "builtin.sleep", sb.data, sb.size, 12,
		      &(struct mpool_map_opts)MPOOL_MAP_OPTS(.retries = 4), NULL, NULL, &sum);
	REQUIREF(r == -MPOOL_E_BADREQ, "retries 4 with --max-retries 3: %d (%s)", r,
		 mpool_errmsg(fx.c));
	msgpack_sbuffer_destroy(&sb);
	mpool_close(t.b);
	fx_stop(&fx);
}
END_TEST

struct reload {
	struct fx *fx;
	mpool *b;
	uint64_t seen;
	bool asked;
	bool by_signal;
};

static void reload_chunk(void *ud, uint64_t first, const msgpack_object *res,
			 const struct mpool_item_error *errs, size_t n_errs)
{
	struct reload *l = ud;

	REQUIREF(n_errs == 0, "item %llu failed across a reload: %s: %s",
		 (unsigned long long)errs[0].index, mpool_strerror(errs[0].code), errs[0].message);
	REQUIRE(first == l->seen);
	for (uint32_t i = 0; i < res->via.array.size; i++)
		REQUIRE(fx_obj_u64(&res->via.array.ptr[i]) == 5);
	l->seen += res->via.array.size;
	if (l->asked)
		return;
	l->asked = true;
	if (l->by_signal) {
		REQUIRE(kill(l->fx->pid, SIGHUP) == 0);
	} else {
		int r = mpool_reload(l->b);

		REQUIREF(r == 0, "mpool_reload: %s: %s", mpool_strerror(-r), mpool_errmsg(l->b));
	}
}

static bool none_of(const struct fx_status *st, void *arg)
{
	const struct fx_status *old = arg;

	if (!fx_pool_idle(st, old->n_workers))
		return false;
	for (unsigned i = 0; i < old->n_workers; i++)
		if (fx_has_worker(st, old->workers[i].pid))
			return false;
	return true;
}

START_TEST(reload_replaces_workers_without_loss)
{
	struct reload l = { 0 };
	struct mpool_map_summary sum = { 0 };
	struct fx fx;
	struct fx_status before;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	int r;

	fx_start(&fx, NULL);
	fx_status(&fx, &before);
	l.fx = &fx;
	l.b = fx_connect(&fx);
	l.by_signal = _i == 1;
	fx_sbuf_init(&sb, &pk);
	fx_pack_repeat(&pk, 5, 200);
	r = mpool_map(fx.c, "builtin.sleep", sb.data, sb.size, 200,
		      &(struct mpool_map_opts)MPOOL_MAP_OPTS(.chunksize = 1), reload_chunk, &l, &sum);
	REQUIREF(r == 0 && sum.failed == 0 && l.seen == 200, "%d (%s), %llu failed", r,
		 mpool_errmsg(fx.c), (unsigned long long)sum.failed);
	fx_wait_status(&fx, none_of, &before, FX_WAIT_MS, "every worker replaced after the reload",
		       NULL);
	REQUIREF(fx_status_get(&fx, "totals.tasks_done") == 200, "tasks_done %llu: lost or repeated",
		 (unsigned long long)fx_status_get(&fx, "totals.tasks_done"));
	REQUIREF(fx_status_get(&fx, "totals.recycled_by.reload") >= 2, "recycled_by.reload %llu",
		 (unsigned long long)fx_status_get(&fx, "totals.recycled_by.reload"));
	REQUIREF(fx_status_get(&fx, "totals.workers_died") == 0, "workers_died %llu",
		 (unsigned long long)fx_status_get(&fx, "totals.workers_died"));
	msgpack_sbuffer_destroy(&sb);
	mpool_close(l.b);
	fx_map_squares(fx.c, 1000, 0, NULL, 0);
	fx_stop(&fx);
}
END_TEST

static Suite *faults_suite(void)
{
	Suite *s = suite_create("faults");
	TCase *tc;

	tc = tcase_create("clients");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, client_killed_mid_map);
	tcase_add_test(tc, malformed_input_during_map);
	tcase_add_test(tc, reused_msgid_on_simple_methods);
	suite_add_tcase(s, tc);

	tc = tcase_create("shutdown");
	tcase_set_timeout(tc, 60);
	tcase_add_loop_test(tc, sigterm_drains_then_exits, 0, 2);   /* SIGTERM, drain */
	tcase_add_test(tc, sigterm_idle_exits_at_once);
	tcase_add_test(tc, drain_timeout_terminates);
	tcase_add_test(tc, terminate_fails_open_work);
	suite_add_tcase(s, tc);

	tc = tcase_create("deaths");
	tcase_set_timeout(tc, 60);
	tcase_add_loop_test(tc, worker_killed_mid_map, 0, 2);
	tcase_add_test(tc, worker_killed_during_apply);
	tcase_add_test(tc, idle_worker_killed);
	tcase_add_test(tc, master_sigkill_takes_workers_down);
	suite_add_tcase(s, tc);

	tc = tcase_create("lifecycle");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, worker_death_keeps_reported_items);
	tcase_add_test(tc, task_timeouts);
	tcase_add_test(tc, retries_rerun_lost_items);
	tcase_add_loop_test(tc, reload_replaces_workers_without_loss, 0, 2);   /* reload, SIGHUP */
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(faults_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
