/* test_async: libmpool's async API against a real mpoold -- many requests
 * in flight on one connection, callbacks, waits that time out, cancel,
 * imap and imap_unordered, starmap, streamed input, the event-loop calls
 * (poll and the libevent helper), and a 10-million-item stream whose
 * memory is watched on both sides.  Every test starts its own daemon
 * (fixture.h).
 *
 * Loops over many items use REQUIRE (fixture.h), not ck_assert: Check
 * writes every passing ck_assert to its result pipe. */
#include <check.h>

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <mpool/mpool-event.h>

#include "fixture.h"

/* The memory bounds the big stream asserts (VmRSS, KiB).  libmpool's own
 * bounds (mpool.h, "Memory bounds") are a few MiB; these leave room for
 * the process around it.  Under AddressSanitizer every allocation carries
 * shadow memory and redzones: the bounds there are looser, and
 * quarantine is kept small (below). */
#if defined(__SANITIZE_ADDRESS__)
#define TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TEST_ASAN 1
#endif
#endif

#ifdef TEST_ASAN
#define RSS_DAEMON_MAX_KIB (128 * 1024)
#define RSS_CLIENT_MAX_KIB (128 * 1024)
#define BIG_STREAM_ITEMS 10000000ull
const char *__asan_default_options(void);
const char *__asan_default_options(void)
{
	return "quarantine_size_mb=16";
}
#else
#define RSS_DAEMON_MAX_KIB (64 * 1024)
#define RSS_CLIENT_MAX_KIB (64 * 1024)
#define BIG_STREAM_ITEMS 10000000ull
#endif

/* ---- helpers ------------------------------------------------------------- */

static void ok(mpool *c, int r, const char *what)
{
	REQUIREF(r == 0, "%s: %s: %s", what, mpool_strerror(-r), mpool_errmsg(c));
}

static bool no_jobs(const struct fx_status *st, void *arg)
{
	(void)arg;
	return st->totals.jobs_active == 0;
}

static bool all_busy(const struct fx_status *st, void *arg)
{
	return fx_count_state(st, "busy") == *(unsigned *)arg;
}

static void wait_no_jobs(struct fx *fx, int timeout_ms)
{
	fx_wait_status(fx, no_jobs, NULL, timeout_ms, "jobs_active back to 0", NULL);
}

/* n items first, first+1, ... packed in sb. */
static void pack_range(msgpack_sbuffer *sb, int64_t first, uint64_t n)
{
	msgpack_packer pk;

	fx_sbuf_init(sb, &pk);
	fx_pack_range(&pk, first, n);
}

/* n copies of ms for builtin.sleep. */
static void pack_sleeps(msgpack_sbuffer *sb, int64_t ms, uint64_t n)
{
	msgpack_packer pk;

	fx_sbuf_init(sb, &pk);
	fx_pack_repeat(&pk, ms, n);
}

struct counts {
	int ok, err;
	int last_code;
	char last_msg[256];
	uint64_t last_u64;
	uint32_t last_array;
	bool array_ok;
};

static void count_ok(void *ud, const msgpack_object *res)
{
	struct counts *c = ud;

	c->ok++;
	if (res->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
		c->last_u64 = res->via.u64;
	if (res->type == MSGPACK_OBJECT_ARRAY) {
		c->last_array = res->via.array.size;
		c->array_ok = true;
		for (uint32_t i = 0; i < res->via.array.size; i++) {
			uint64_t v = (uint64_t)i + 1;

			if (res->via.array.ptr[i].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
			    res->via.array.ptr[i].via.u64 != v * v)
				c->array_ok = false;
		}
	}
}

static void count_err(void *ud, int code, const char *msg)
{
	struct counts *c = ud;

	c->err++;
	c->last_code = code;
	snprintf(c->last_msg, sizeof(c->last_msg), "%s", msg);
}

/* ---- 1. many requests in flight ------------------------------------------ */

START_TEST(many_applies_in_flight)
{
	enum { N = 1000 };
	static mpool_async *h[N];
	static struct counts cnt[N];
	struct fx fx;
	mpool *c;
	int r;

	fx_start(&fx, NULL);
	c = fx_connect(&fx);
	/* All of them are sent before a single answer is read. */
	for (int i = 0; i < N; i++) {
		msgpack_sbuffer sb;
		const char *fn = i % 3 == 0 ? "builtin.echo" : "builtin.square";

		fx_arg_int(&sb, i);
		r = mpool_apply_async(c, fn, sb.data, sb.size, NULL, count_ok, count_err, &cnt[i],
				      &h[i]);
		msgpack_sbuffer_destroy(&sb);
		ok(c, r, "apply_async");
	}
	/* Answers are matched by msgid: take them in reverse order. */
	for (int i = N - 1; i >= 0; i--) {
		const msgpack_object *o;
		uint64_t want = i % 3 == 0 ? (uint64_t)i : (uint64_t)i * (uint64_t)i;

		r = mpool_async_get(h[i], FX_WAIT_MS, &o);
		REQUIREF(r == 0, "get %d: %s: %s", i, mpool_strerror(-r), mpool_async_errmsg(h[i]));
		REQUIREF(fx_obj_u64(o) == want, "request %d answered %llu, expected %llu", i,
			 (unsigned long long)o->via.u64, (unsigned long long)want);
		REQUIRE(mpool_async_ready(h[i]) == 1 && mpool_async_successful(h[i]) == 1);
	}
	for (int i = 0; i < N; i++) {
		REQUIREF(cnt[i].ok == 1 && cnt[i].err == 0, "request %d: callback %d times, error callback %d",
			 i, cnt[i].ok, cnt[i].err);
		mpool_async_free(h[i]);
	}
	ok(c, mpool_ping(c), "ping after");
	mpool_close(c);
	fx_stop(&fx);
}
END_TEST

/* ---- 2. callbacks -------------------------------------------------------------- */

struct chain {
	mpool *c;
	int left, done;
	uint64_t last;
};

/* Each result starts the next apply from inside the callback, and frees
 * nothing: the handles are freed by the callback below. */
static void chain_next(void *ud, const msgpack_object *res);

static void chain_err(void *ud, int code, const char *msg)
{
	(void)ud;
	FAILF("chain failed: %s: %s", mpool_strerror(code), msg);
}

static void chain_next(void *ud, const msgpack_object *res)
{
	struct chain *ch = ud;
	mpool_async *a;
	msgpack_sbuffer sb;
	int r;

	ch->done++;
	ch->last = fx_obj_u64(res);
	if (ch->left-- == 0)
		return;
	fx_arg_int(&sb, (int64_t)ch->done + 1);
	r = mpool_apply_async(ch->c, "builtin.square", sb.data, sb.size, NULL, chain_next,
			      chain_err, ch, &a);
	msgpack_sbuffer_destroy(&sb);
	REQUIREF(r == 0, "apply_async from a callback: %s", mpool_errmsg(ch->c));
	/* Fire and forget: the callback still runs after the free. */
	mpool_async_free(a);
}

struct self_free {
	mpool_async *a;
	int calls;
};

static void free_self(void *ud, const msgpack_object *res)
{
	struct self_free *s = ud;

	(void)res;
	s->calls++;
	/* The free takes effect once the callback returns. */
	REQUIRE(mpool_async_ready(s->a) == 1);
	mpool_async_free(s->a);
}

START_TEST(callbacks_once_each)
{
	struct counts ok1 = { 0 }, bad = { 0 }, nof = { 0 }, map_ok = { 0 }, map_bad = { 0 };
	struct self_free sf = { 0 };
	struct chain ch;
	mpool_async *a1, *a2, *a3, *m1, *m2, *first;
	const msgpack_object *o;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	struct fx fx;
	mpool *c;
	int r;

	fx_start(&fx, NULL);
	c = fx_connect(&fx);

	fx_arg_int(&sb, 7);
	ok(c, mpool_apply_async(c, "builtin.square", sb.data, sb.size, NULL, count_ok, count_err,
				&ok1, &a1), "apply_async");
	REQUIRE(mpool_async_successful(a1) == -MPOOL_E_INVAL || mpool_async_ready(a1));
	msgpack_sbuffer_destroy(&sb);

	fx_sbuf_init(&sb, &pk);
	fx_pack_str(&pk, "x");
	ok(c, mpool_apply_async(c, "builtin.square", sb.data, sb.size, NULL, count_ok, count_err,
				&bad, &a2), "apply_async");
	ok(c, mpool_apply_async(c, "builtin.nosuch", sb.data, sb.size, NULL, count_ok, count_err,
				&nof, &a3), "apply_async");
	msgpack_sbuffer_destroy(&sb);

	pack_range(&sb, 1, 1000);
	ok(c, mpool_map_async(c, "builtin.square", sb.data, sb.size, 1000,
			      &(struct mpool_map_opts)MPOOL_MAP_OPTS(.chunksize = 7), count_ok, count_err,
			      &map_ok, &m1), "map_async");
	msgpack_sbuffer_destroy(&sb);
	fx_sbuf_init(&sb, &pk);
	fx_pack_range(&pk, 1, 5);
	fx_pack_str(&pk, "six");
	fx_pack_range(&pk, 7, 4);
	ok(c, mpool_map_async(c, "builtin.square", sb.data, sb.size, 10, NULL, count_ok,
			      count_err, &map_bad, &m2), "map_async");
	msgpack_sbuffer_destroy(&sb);

	/* Waiting on the last one reads the answers of all of them. */
	REQUIRE(mpool_async_wait(m2, FX_WAIT_MS) == 1);
	REQUIRE(mpool_async_wait(a1, FX_WAIT_MS) == 1 && mpool_async_wait(a2, FX_WAIT_MS) == 1 &&
		mpool_async_wait(a3, FX_WAIT_MS) == 1 && mpool_async_wait(m1, FX_WAIT_MS) == 1);

	REQUIREF(ok1.ok == 1 && ok1.err == 0 && ok1.last_u64 == 49, "square 7: %d/%d, %llu",
		 ok1.ok, ok1.err, (unsigned long long)ok1.last_u64);
	REQUIRE(mpool_async_successful(a1) == 1);
	REQUIRE(mpool_async_get(a1, 0, &o) == 0 && fx_obj_u64(o) == 49);

	REQUIREF(bad.ok == 0 && bad.err == 1 && bad.last_code == -MPOOL_E_TYPE &&
		 strstr(bad.last_msg, "str"), "square of a str: %d/%d, code %d '%s'",
		 bad.ok, bad.err, bad.last_code, bad.last_msg);
	REQUIRE(mpool_async_successful(a2) == 0);
	r = mpool_async_get(a2, 0, &o);
	REQUIREF(r == -MPOOL_E_TYPE, "get of the failed apply: %d", r);
	REQUIREF(strcmp(mpool_async_errmsg(a2), bad.last_msg) == 0 &&
		 strcmp(mpool_errmsg(c), bad.last_msg) == 0, "'%s' / '%s' / '%s'",
		 mpool_async_errmsg(a2), mpool_errmsg(c), bad.last_msg);

	REQUIREF(nof.err == 1 && nof.ok == 0 && nof.last_code == -MPOOL_E_NOFUNC, "nosuch: %d/%d %d",
		 nof.ok, nof.err, nof.last_code);

	REQUIREF(map_ok.ok == 1 && map_ok.err == 0 && map_ok.array_ok && map_ok.last_array == 1000,
		 "map_async: %d/%d, %u results, right %d", map_ok.ok, map_ok.err,
		 map_ok.last_array, map_ok.array_ok);
	REQUIRE(mpool_async_get(m1, 0, &o) == 0 && o->type == MSGPACK_OBJECT_ARRAY &&
		o->via.array.size == 1000 && fx_obj_u64(&o->via.array.ptr[999]) == 1000000);

	/* Like Pool.map_async: a failed item fails the whole map. */
	REQUIREF(map_bad.ok == 0 && map_bad.err == 1 && map_bad.last_code == -MPOOL_E_ITEMS &&
		 strstr(map_bad.last_msg, "item 5"), "map with a failed item: %d/%d, %d '%s'",
		 map_bad.ok, map_bad.err, map_bad.last_code, map_bad.last_msg);
	REQUIRE(mpool_async_get(m2, 0, &o) == -MPOOL_E_ITEMS);

	/* Nothing is called twice, however much more is read. */
	for (int i = 0; i < 5; i++)
		ok(c, mpool_ping(c), "ping");
	REQUIRE(ok1.ok + ok1.err + bad.ok + bad.err + nof.ok + nof.err + map_ok.ok + map_ok.err +
		map_bad.ok + map_bad.err == 5);
	mpool_async_free(a1);
	mpool_async_free(a2);
	mpool_async_free(a3);
	mpool_async_free(m1);
	mpool_async_free(m2);

	/* Requests made from callbacks, handles freed before their answer. */
	ch = (struct chain){ .c = c, .left = 20 };
	fx_arg_int(&sb, 1);
	ok(c, mpool_apply_async(c, "builtin.square", sb.data, sb.size, NULL, chain_next,
				chain_err, &ch, &first), "apply_async");
	msgpack_sbuffer_destroy(&sb);
	mpool_async_free(first);
	/* A callback frees its own handle. */
	fx_arg_int(&sb, 3);
	ok(c, mpool_apply_async(c, "builtin.square", sb.data, sb.size, NULL, free_self, NULL, &sf,
				&sf.a), "apply_async");
	msgpack_sbuffer_destroy(&sb);
	for (int64_t end = fx_now_ms() + FX_WAIT_MS; ch.done < 21 || sf.calls == 0;) {
		REQUIREF(fx_now_ms() < end, "chain at %d of 21", ch.done);
		ok(c, mpool_ping(c), "ping");
	}
	REQUIREF(ch.done == 21 && ch.last == 21 * 21, "chain: %d done, last %llu", ch.done,
		 (unsigned long long)ch.last);
	REQUIRE(sf.calls == 1);
	mpool_close(c);
	fx_stop(&fx);
}
END_TEST

static void blocking_in_cb(void *ud, const msgpack_object *res)
{
	mpool *c = ud;
	mpool_value *v;
	msgpack_sbuffer sb;
	int r;

	(void)res;
	r = mpool_ping(c);
	REQUIREF(r == -MPOOL_E_INVAL, "ping from a callback: %d", r);
	REQUIRE(mpool_process(c) == -MPOOL_E_INVAL);
	fx_arg_int(&sb, 2);
	r = mpool_apply(c, "builtin.square", sb.data, sb.size, &v);
	msgpack_sbuffer_destroy(&sb);
	REQUIREF(r == -MPOOL_E_INVAL, "apply from a callback: %d", r);
}

START_TEST(callback_may_not_block)
{
	mpool_async *a;
	msgpack_sbuffer sb;
	struct fx fx;

	fx_start(&fx, NULL);
	fx_arg_int(&sb, 2);
	ok(fx.c, mpool_apply_async(fx.c, "builtin.square", sb.data, sb.size, NULL, blocking_in_cb,
				   NULL, fx.c, &a), "apply_async");
	msgpack_sbuffer_destroy(&sb);
	REQUIRE(mpool_async_wait(a, FX_WAIT_MS) == 1);
	mpool_async_free(a);
	ok(fx.c, mpool_ping(fx.c), "ping after");
	fx_stop(&fx);
}
END_TEST

/* ---- 3. timeouts leave the work running ------------------------------------- */

START_TEST(timeouts_leave_job_running)
{
	const msgpack_object *o;
	struct mpool_item item;
	mpool_async *a;
	mpool_iter *it;
	msgpack_sbuffer sb;
	struct fx fx;
	int64_t t0;
	int r;

	fx_start(&fx, NULL);
	fx_arg_int(&sb, 600);
	ok(fx.c, mpool_apply_async(fx.c, "builtin.sleep", sb.data, sb.size, NULL, NULL, NULL, NULL,
				   &a), "apply_async");
	msgpack_sbuffer_destroy(&sb);
	t0 = fx_now_ms();
	r = mpool_async_get(a, 100, &o);
	REQUIREF(r == -MPOOL_E_TIMEOUT, "get after 100 ms of 600: %d", r);
	REQUIREF(fx_now_ms() - t0 >= 95 && fx_now_ms() - t0 < 400, "get waited %lld ms",
		 (long long)(fx_now_ms() - t0));
	REQUIRE(mpool_async_ready(a) == 0);
	REQUIRE(mpool_async_successful(a) == -MPOOL_E_INVAL);
	REQUIRE(mpool_async_wait(a, 50) == 0);
	REQUIRE(mpool_async_wait(a, 0) == 0);
	/* Still running at the daemon. */
	REQUIREF(fx_status_get(&fx, "totals.jobs_active") == 1, "jobs_active %llu",
		 (unsigned long long)fx_status_get(&fx, "totals.jobs_active"));
	r = mpool_async_get(a, -1, &o);
	REQUIREF(r == 0 && fx_obj_u64(o) == 600, "get at last: %d (%s)", r, mpool_errmsg(fx.c));
	REQUIRE(mpool_async_ready(a) == 1);
	mpool_async_free(a);

	/* The same for an iterator. */
	pack_sleeps(&sb, 300, 2);
	ok(fx.c, mpool_imap(fx.c, "builtin.sleep", sb.data, sb.size, 2,
			    &(struct mpool_map_opts)MPOOL_MAP_OPTS(.chunksize = 1), &it), "imap");
	msgpack_sbuffer_destroy(&sb);
	r = mpool_iter_next(it, 30, &item);
	REQUIREF(r == -MPOOL_E_TIMEOUT, "next after 30 ms: %d", r);
	for (int i = 0; i < 2; i++) {
		r = mpool_iter_next(it, -1, &item);
		REQUIREF(r == 1 && item.index == (uint64_t)i && item.code == 0 &&
			 fx_obj_u64(item.result) == 300, "item %d: %d", i, r);
	}
	REQUIRE(mpool_iter_next(it, -1, &item) == 0);
	mpool_iter_free(it);
	wait_no_jobs(&fx, FX_WAIT_MS);
	fx_stop(&fx);
}
END_TEST

/* A producer of the items 1..n (for builtin.square), with faults on request. */
struct gen {
	uint64_t next, n;         /* items next+1 .. n */
	uint64_t fail_at;         /* 0: never */
	int fail_code;
	bool two_values;
	uint64_t calls_after_end;
	bool ended;
};

static int gen_produce(void *ud, msgpack_packer *pk)
{
	struct gen *g = ud;

	if (g->ended) {
		g->calls_after_end++;
		return 0;
	}
	if (g->next == g->n) {
		g->ended = true;
		return 0;
	}
	if (g->fail_at && g->next == g->fail_at) {
		g->ended = true;      /* never to be called again */
		return -g->fail_code;
	}
	g->next++;
	msgpack_pack_uint64(pk, g->next);
	if (g->two_values && g->next == 100)
		msgpack_pack_uint64(pk, g->next);
	return 1;
}

/* ---- 4. cancel -------------------------------------------------------------- */

START_TEST(cancel_queued_map)
{
	struct counts busy = { 0 }, queued = { 0 };
	mpool_async *a, *b;
	const msgpack_object *o;
	msgpack_sbuffer sb;
	unsigned two = 2;
	struct fx fx;
	int r;

	fx_start(&fx, NULL);
	/* Both workers busy for 500 ms ... */
	pack_sleeps(&sb, 500, 2);
	ok(fx.c, mpool_map_async(fx.c, "builtin.sleep", sb.data, sb.size, 2,
				 &(struct mpool_map_opts)MPOOL_MAP_OPTS(.chunksize = 1), count_ok, count_err,
				 &busy, &a), "map_async");
	msgpack_sbuffer_destroy(&sb);
	fx_wait_status(&fx, all_busy, &two, FX_WAIT_MS, "both workers busy", NULL);
	/* ... so this one waits in the queue. */
	pack_sleeps(&sb, 10, 8);
	ok(fx.c, mpool_map_async(fx.c, "builtin.sleep", sb.data, sb.size, 8,
				 &(struct mpool_map_opts)MPOOL_MAP_OPTS(.chunksize = 1), count_ok, count_err,
				 &queued, &b), "map_async");
	msgpack_sbuffer_destroy(&sb);
	REQUIRE(mpool_async_cancel(b, 0) == 1);
	/* Cancelled at once, its error callback already called. */
	REQUIRE(mpool_async_ready(b) == 1 && mpool_async_successful(b) == 0);
	REQUIREF(queued.err == 1 && queued.ok == 0 && queued.last_code == -MPOOL_E_CANCELLED,
		 "cancelled map: %d/%d code %d", queued.ok, queued.err, queued.last_code);
	r = mpool_async_get(b, 0, &o);
	REQUIREF(r == -MPOOL_E_CANCELLED, "get of a cancelled map: %d", r);
	REQUIRE(mpool_async_cancel(b, 0) == 0);     /* nothing left to cancel */
	r = mpool_async_get(a, FX_WAIT_MS, &o);
	REQUIREF(r == 0 && o->via.array.size == 2, "the busy map: %d (%s)", r, mpool_errmsg(fx.c));
	wait_no_jobs(&fx, FX_WAIT_MS);
	/* Its queued chunks never ran. */
	REQUIREF(fx_status_get(&fx, "totals.tasks_done") == 2, "tasks_done %llu",
		 (unsigned long long)fx_status_get(&fx, "totals.tasks_done"));
	REQUIRE(queued.err == 1 && busy.ok == 1);
	mpool_async_free(a);
	mpool_async_free(b);
	ok(fx.c, mpool_ping(fx.c), "ping after");
	fx_stop(&fx);
}
END_TEST

/* A map whose chunks run when it is cancelled: without kill they finish
 * (results dropped), with kill their workers die and are replaced. */
static void cancel_running(bool kill)
{
	struct counts cnt = { 0 };
	struct fx_status st;
	mpool_async *a;
	msgpack_sbuffer sb;
	unsigned two = 2;
	struct fx fx;
	int64_t t0;
	int ms = kill ? 20000 : 1500;

	fx_start(&fx, NULL);
	pack_sleeps(&sb, ms, 4);
	ok(fx.c, mpool_map_async(fx.c, "builtin.sleep", sb.data, sb.size, 4,
				 &(struct mpool_map_opts)MPOOL_MAP_OPTS(.chunksize = 1), count_ok, count_err, &cnt,
				 &a), "map_async");
	msgpack_sbuffer_destroy(&sb);
	fx_wait_status(&fx, all_busy, &two, FX_WAIT_MS, "both workers busy", NULL);
	t0 = fx_now_ms();
	REQUIRE(mpool_async_cancel(a, kill) == 1);
	REQUIREF(mpool_async_get(a, 0, NULL) == -MPOOL_E_CANCELLED && cnt.err == 1 &&
		 cnt.last_code == -MPOOL_E_CANCELLED, "after cancel: %d/%d", cnt.ok, cnt.err);
	if (!kill) {
		/* The running chunks keep the job until they finish. */
		fx_status(&fx, &st);
		REQUIREF(st.totals.jobs_active == 1, "jobs_active %llu right after cancel",
			 (unsigned long long)st.totals.jobs_active);
	}
	wait_no_jobs(&fx, FX_WAIT_MS);
	fx_status(&fx, &st);
	if (kill) {
		REQUIREF(fx_now_ms() - t0 < 5000, "jobs_active took %lld ms to reach 0",
			 (long long)(fx_now_ms() - t0));
		REQUIREF(st.totals.workers_died + st.totals.workers_recycled >= 2 ||
			 st.totals.workers_started >= 4, "workers not killed: died %llu, started %llu",
			 (unsigned long long)st.totals.workers_died,
			 (unsigned long long)st.totals.workers_started);
	} else {
		REQUIREF(fx_now_ms() - t0 >= ms / 2, "the running chunks stopped after %lld ms",
			 (long long)(fx_now_ms() - t0));
		REQUIREF(st.totals.workers_died == 0 && st.totals.workers_started == 2,
			 "workers died %llu, started %llu", (unsigned long long)st.totals.workers_died,
			 (unsigned long long)st.totals.workers_started);
		/* Only the two running items ran. */
		REQUIREF(st.totals.tasks_done == 2, "tasks_done %llu",
			 (unsigned long long)st.totals.tasks_done);
	}
	fx_wait_idle(&fx, FX_WAIT_MS);
	REQUIRE(cnt.err == 1 && cnt.ok == 0);
	mpool_async_free(a);
	fx_map_squares(fx.c, 1000, 0, NULL, 0);
	fx_stop(&fx);
}

START_TEST(cancel_running_map)
{
	cancel_running(false);
}
END_TEST

START_TEST(cancel_running_map_kill)
{
	cancel_running(true);
}
END_TEST

START_TEST(cancel_iterator_and_stream)
{
	struct gen g;
	uint64_t done0, produced;
	struct mpool_item item;
	mpool_iter *it;
	msgpack_sbuffer sb;
	unsigned two = 2;
	struct fx fx;
	int r;

	fx_start(&fx, NULL);
	pack_sleeps(&sb, 200, 20);
	ok(fx.c, mpool_imap(fx.c, "builtin.sleep", sb.data, sb.size, 20,
			    &(struct mpool_map_opts)MPOOL_MAP_OPTS(.chunksize = 1), &it), "imap");
	msgpack_sbuffer_destroy(&sb);
	r = mpool_iter_next(it, FX_WAIT_MS, &item);
	REQUIREF(r == 1 && item.index == 0, "first item: %d", r);
	REQUIRE(mpool_iter_cancel(it, 1) == 1);
	r = mpool_iter_next(it, FX_WAIT_MS, &item);
	REQUIREF(r == -MPOOL_E_CANCELLED, "next after cancel: %d", r);
	REQUIRE(mpool_iter_next(it, 0, &item) == -MPOOL_E_CANCELLED);
	mpool_iter_free(it);
	wait_no_jobs(&fx, 5000);

	/* Freeing an iterator that has not ended cancels its map. */
	done0 = fx_status_get(&fx, "totals.tasks_done");
	pack_sleeps(&sb, 300, 8);
	ok(fx.c, mpool_imap(fx.c, "builtin.sleep", sb.data, sb.size, 8,
			    &(struct mpool_map_opts)MPOOL_MAP_OPTS(.chunksize = 1), &it), "imap");
	msgpack_sbuffer_destroy(&sb);
	fx_wait_status(&fx, all_busy, &two, FX_WAIT_MS, "both workers busy", NULL);
	mpool_iter_free(it);
	ok(fx.c, mpool_ping(fx.c), "ping");    /* sends the queued cancel */
	wait_no_jobs(&fx, FX_WAIT_MS);
	REQUIREF(fx_status_get(&fx, "totals.tasks_done") - done0 <= 3,
		 "%llu tasks done after the free",
		 (unsigned long long)(fx_status_get(&fx, "totals.tasks_done") - done0));

	/* A stream that would never end: cancelled, its producer is never
	 * called again. */
	g = (struct gen){ .n = UINT64_MAX };
	ok(fx.c, mpool_imap_stream(fx.c, "builtin.square", gen_produce, &g, NULL, &it),
	   "imap_stream");
	for (uint64_t i = 0; i < 100000; i++) {
		r = mpool_iter_next(it, FX_WAIT_MS, &item);
		REQUIREF(r == 1 && item.index == i && fx_obj_u64(item.result) == (i + 1) * (i + 1),
			 "stream item %llu: %d", (unsigned long long)i, r);
	}
	REQUIRE(mpool_iter_cancel(it, 0) == 1);
	produced = g.next;
	REQUIRE(mpool_iter_next(it, FX_WAIT_MS, &item) == -MPOOL_E_CANCELLED);
	wait_no_jobs(&fx, FX_WAIT_MS);
	ok(fx.c, mpool_ping(fx.c), "ping");
	REQUIREF(g.next == produced, "the producer ran after the cancel: %llu, then %llu",
		 (unsigned long long)produced, (unsigned long long)g.next);
	mpool_iter_free(it);
	fx_stop(&fx);
}
END_TEST

/* ---- 5. imap, imap_unordered, starmap ------------------------------------------- */

START_TEST(imap_in_order)
{
	enum { N = 20000, BAD = 12345 };
	struct mpool_map_summary sum;
	struct mpool_item item;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	mpool_iter *it;
	struct fx fx;
	int r;

	fx_start(&fx, NULL);
	fx_sbuf_init(&sb, &pk);
	fx_pack_range(&pk, 0, BAD);
	fx_pack_str(&pk, "bad");
	fx_pack_range(&pk, BAD + 1, N - BAD - 1);
	ok(fx.c, mpool_imap(fx.c, "builtin.square", sb.data, sb.size, N,
			    &(struct mpool_map_opts)MPOOL_MAP_OPTS(.chunksize = 100), &it), "imap");
	msgpack_sbuffer_destroy(&sb);
	REQUIRE(mpool_iter_summary(it, &sum) == -MPOOL_E_INVAL);
	for (uint64_t i = 0; i < N; i++) {
		r = mpool_iter_next(it, FX_WAIT_MS, &item);
		REQUIREF(r == 1, "next at %llu: %d (%s)", (unsigned long long)i, r, mpool_errmsg(fx.c));
		REQUIREF(item.index == i, "imap yielded item %llu at position %llu",
			 (unsigned long long)item.index, (unsigned long long)i);
		if (i == BAD) {
			REQUIREF(item.code == -MPOOL_E_TYPE && !item.result && strstr(item.message, "str"),
				 "the bad item: code %d '%s'", item.code, item.message);
			continue;
		}
		REQUIREF(item.code == 0 && item.result && fx_obj_u64(item.result) == i * i &&
			 item.message && !*item.message, "item %llu", (unsigned long long)i);
	}
	REQUIRE(mpool_iter_next(it, FX_WAIT_MS, &item) == 0);
	REQUIRE(mpool_iter_next(it, 0, &item) == 0);
	REQUIRE(mpool_iter_summary(it, &sum) == 0 && sum.items == N && sum.failed == 1);
	mpool_iter_free(it);
	fx_stop(&fx);
}
END_TEST

START_TEST(imap_unordered_complete)
{
	enum { N = 600 };
	struct mpool_item item;
	static uint8_t seen[N];
	msgpack_sbuffer sb;
	msgpack_packer pk;
	mpool_iter *it;
	uint64_t got = 0, out_of_order = 0, prev = 0;
	struct fx fx;
	int r;

	fx_start(&fx, NULL);
	/* Early items sleep longer, so later ones finish first. */
	fx_sbuf_init(&sb, &pk);
	for (int i = 0; i < N; i++)
		msgpack_pack_int(&pk, i < 4 ? 300 : i % 2);
	ok(fx.c, mpool_imap_unordered(fx.c, "builtin.sleep", sb.data, sb.size, N,
				      &(struct mpool_map_opts)MPOOL_MAP_OPTS(.chunksize = 4), &it),
	   "imap_unordered");
	msgpack_sbuffer_destroy(&sb);
	while ((r = mpool_iter_next(it, FX_WAIT_MS, &item)) == 1) {
		REQUIREF(item.index < N && !seen[item.index], "item %llu twice or outside",
			 (unsigned long long)item.index);
		seen[item.index] = 1;
		REQUIREF(item.code == 0 && fx_obj_u64(item.result) ==
			 (item.index < 4 ? 300u : item.index % 2), "item %llu",
			 (unsigned long long)item.index);
		out_of_order += got > 0 && item.index < prev;
		prev = item.index;
		got++;
	}
	REQUIREF(r == 0, "end: %d (%s)", r, mpool_errmsg(fx.c));
	REQUIREF(got == N, "%llu of %d items", (unsigned long long)got, N);
	REQUIREF(out_of_order > 0, "results came in item order: not unordered");
	mpool_iter_free(it);

	/* imap with opts->unordered is the same. */
	pack_range(&sb, 0, 30000);
	ok(fx.c, mpool_imap(fx.c, "builtin.square", sb.data, sb.size, 30000,
			    &(struct mpool_map_opts)MPOOL_MAP_OPTS(.chunksize = 7, .unordered = 1), &it), "imap");
	msgpack_sbuffer_destroy(&sb);
	{
		uint8_t *s = calloc(30000, 1);

		REQUIRE(s);
		for (got = 0; (r = mpool_iter_next(it, FX_WAIT_MS, &item)) == 1; got++) {
			REQUIRE(item.index < 30000 && !s[item.index]);
			s[item.index] = 1;
			REQUIRE(fx_obj_u64(item.result) == item.index * item.index);
		}
		free(s);
	}
	REQUIREF(r == 0 && got == 30000, "%d, %llu items", r, (unsigned long long)got);
	mpool_iter_free(it);
	fx_stop(&fx);
}
END_TEST

START_TEST(starmap_arrays)
{
	const msgpack_object *o, *e;
	mpool_value *v = NULL;
	mpool_async *a;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	struct fx fx;
	int r;

	fx_start(&fx, NULL);
	/* Each item is an argument array; the task receives the array. */
	fx_sbuf_init(&sb, &pk);
	for (int i = 0; i < 50; i++) {
		msgpack_pack_array(&pk, (size_t)(i % 3));
		for (int j = 0; j < i % 3; j++)
			msgpack_pack_int(&pk, i * 10 + j);
	}
	r = mpool_starmap(fx.c, "builtin.echo", sb.data, sb.size, 50, NULL, &v);
	ok(fx.c, r, "starmap");
	o = mpool_value_get(v);
	REQUIRE(o->type == MSGPACK_OBJECT_ARRAY && o->via.array.size == 50);
	for (int i = 0; i < 50; i++) {
		e = &o->via.array.ptr[i];
		REQUIREF(e->type == MSGPACK_OBJECT_ARRAY && e->via.array.size == (uint32_t)(i % 3),
			 "result %d is not its argument array", i);
		for (int j = 0; j < i % 3; j++)
			REQUIRE(fx_obj_u64(&e->via.array.ptr[j]) == (uint64_t)(i * 10 + j));
	}
	mpool_value_free(v);
	ok(fx.c, mpool_starmap_async(fx.c, "builtin.echo", sb.data, sb.size, 50, NULL, NULL, NULL,
				     NULL, &a), "starmap_async");
	REQUIRE(mpool_async_get(a, FX_WAIT_MS, &o) == 0 && o->via.array.size == 50 &&
		o->via.array.ptr[49].via.array.size == 1);
	mpool_async_free(a);
	msgpack_sbuffer_destroy(&sb);

	/* An item that is not an array sends nothing. */
	fx_sbuf_init(&sb, &pk);
	msgpack_pack_array(&pk, 1);
	msgpack_pack_int(&pk, 1);
	msgpack_pack_int(&pk, 2);
	v = NULL;
	r = mpool_starmap(fx.c, "builtin.echo", sb.data, sb.size, 2, NULL, &v);
	REQUIREF(r == -MPOOL_E_INVAL && !v && strstr(mpool_errmsg(fx.c), "value 1"),
		 "starmap of a non-array: %d (%s)", r, mpool_errmsg(fx.c));
	r = mpool_starmap_async(fx.c, "builtin.echo", sb.data, sb.size, 2, NULL, NULL, NULL, NULL,
				&a);
	REQUIREF(r == -MPOOL_E_INVAL, "starmap_async of a non-array: %d", r);
	msgpack_sbuffer_destroy(&sb);
	REQUIREF(fx_status_get(&fx, "totals.tasks_done") == 100, "tasks_done %llu",
		 (unsigned long long)fx_status_get(&fx, "totals.tasks_done"));
	fx_stop(&fx);
}
END_TEST

/* ---- 6. streamed input ------------------------------------------------------ */

struct sq_check {
	uint64_t next, chunks;
};

static void sq_chunk(void *ud, uint64_t first, const msgpack_object *res,
		     const struct mpool_item_error *errs, size_t n_errs)
{
	struct sq_check *s = ud;

	REQUIREF(first == s->next && n_errs == 0, "chunk at %llu, expected %llu (%zu errors: %s)",
		 (unsigned long long)first, (unsigned long long)s->next, n_errs,
		 n_errs ? errs[0].message : "");
	for (uint32_t i = 0; i < res->via.array.size; i++) {
		uint64_t v = first + i + 1;

		REQUIREF(res->via.array.ptr[i].via.u64 == v * v, "item %llu",
			 (unsigned long long)(first + i));
	}
	s->next += res->via.array.size;
	s->chunks++;
}

/* Counts deliveries per item (items 1..n squared, any order). */
static void mark_chunk(void *ud, uint64_t first, const msgpack_object *res,
		       const struct mpool_item_error *errs, size_t n_errs)
{
	uint8_t *seen = ud;

	REQUIRE(n_errs == 0 || !errs);
	for (uint32_t i = 0; i < res->via.array.size; i++) {
		uint64_t v = first + i + 1;

		REQUIRE(res->via.array.ptr[i].via.u64 == v * v);
		seen[first + i]++;
	}
}

START_TEST(map_stream_blocking)
{
	uint8_t *seen;
	struct mpool_map_summary sum = { 0 };
	struct sq_check chk = { 0 };
	struct gen g = { .n = 300000 };
	struct fx fx;
	int r;

	fx_start(&fx, NULL);
	r = mpool_map_stream(fx.c, "builtin.square", gen_produce, &g, NULL, sq_chunk, &chk, &sum);
	ok(fx.c, r, "map_stream");
	REQUIREF(sum.items == g.n && sum.failed == 0 && chk.next == g.n,
		 "summary %llu/%llu, delivered %llu", (unsigned long long)sum.items,
		 (unsigned long long)sum.failed, (unsigned long long)chk.next);
	REQUIRE(g.calls_after_end == 0);

	/* Unordered: every item exactly once. */
	g = (struct gen){ .n = 200000 };
	seen = calloc(g.n, 1);
	REQUIRE(seen);
	r = mpool_map_stream(fx.c, "builtin.square", gen_produce, &g,
			     &(struct mpool_map_opts)MPOOL_MAP_OPTS(.unordered = 1, .chunksize = 333), mark_chunk,
			     seen, &sum);
	ok(fx.c, r, "unordered map_stream");
	for (uint64_t i = 0; i < g.n; i++)
		REQUIREF(seen[i] == 1, "item %llu delivered %d times", (unsigned long long)i, seen[i]);
	free(seen);

	/* An empty stream. */
	g = (struct gen){ .n = 0 };
	chk = (struct sq_check){ 0 };
	ok(fx.c, mpool_map_stream(fx.c, "builtin.square", gen_produce, &g, NULL, sq_chunk, &chk,
				  &sum), "empty map_stream");
	REQUIRE(sum.items == 0 && chk.chunks == 0);

	/* A producer that fails: what it made before is still mapped, then
	 * the map fails with its code. */
	g = (struct gen){ .n = 100000, .fail_at = 70000, .fail_code = MPOOL_E_SYS };
	chk = (struct sq_check){ 0 };
	r = mpool_map_stream(fx.c, "builtin.square", gen_produce, &g, NULL, sq_chunk, &chk, &sum);
	REQUIREF(r == -MPOOL_E_SYS && strstr(mpool_errmsg(fx.c), "producer failed at item 70000"),
		 "failing producer: %d (%s)", r, mpool_errmsg(fx.c));
	REQUIREF(chk.next == 70000, "%llu items delivered before the failure",
		 (unsigned long long)chk.next);
	REQUIRE(g.calls_after_end == 0);
	wait_no_jobs(&fx, FX_WAIT_MS);

	/* A producer that packs two values for one item. */
	g = (struct gen){ .n = 1000, .two_values = true };
	r = mpool_map_stream(fx.c, "builtin.square", gen_produce, &g, NULL, NULL, NULL, &sum);
	REQUIREF(r == -MPOOL_E_INVAL && strstr(mpool_errmsg(fx.c), "more than one value"),
		 "two values: %d (%s)", r, mpool_errmsg(fx.c));
	wait_no_jobs(&fx, FX_WAIT_MS);
	ok(fx.c, mpool_ping(fx.c), "ping after");
	fx_map_squares(fx.c, 5000, 0, NULL, 0);
	fx_stop(&fx);
}
END_TEST

/* The iterator holds a bounded number of results: with nobody taking them
 * the connection stops reading, and everything still comes in the end. */
START_TEST(iterator_bound_stops_reading)
{
	/* 30 MB of results: more than mpoold's 4 MiB of unread output, the
	 * socket buffers and the iterator's own bound together. */
	enum { N = 300000, LEN = 100 };
	struct mpool_item item;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	mpool_iter *it;
	struct fx fx;
	char text[LEN + 1];
	uint64_t i = 0;
	int64_t end;
	int r;

	fx_start(&fx, NULL);
	fx_sbuf_init(&sb, &pk);
	for (i = 0; i < N; i++) {
		snprintf(text, sizeof(text), "%0*llu", LEN, (unsigned long long)i);
		fx_pack_str(&pk, text);
	}
	i = 0;
	ok(fx.c, mpool_imap(fx.c, "builtin.echo", sb.data, sb.size, N, NULL, &it), "imap");
	msgpack_sbuffer_destroy(&sb);
	end = fx_now_ms() + FX_WAIT_MS;
	while (mpool_events(fx.c) & MPOOL_EV_READ) {
		struct pollfd pfd = { mpool_fd(fx.c), POLLIN, 0 };

		REQUIREF(fx_now_ms() < end, "the iterator never filled up");
		poll(&pfd, 1, 100);
		ok(fx.c, mpool_process(fx.c), "process");
	}
	/* Full: the map is held by mpoold, not buffered here. */
	for (int k = 0; k < 20; k++) {
		fx_tick();
		ok(fx.c, mpool_process(fx.c), "process");
	}
	REQUIRE(!(mpool_events(fx.c) & MPOOL_EV_READ));
	REQUIREF(fx_status_get(&fx, "totals.jobs_active") == 1, "the map ended unread");
	while ((r = mpool_iter_next(it, FX_WAIT_MS, &item)) == 1) {
		snprintf(text, sizeof(text), "%0*llu", LEN, (unsigned long long)i);
		REQUIREF(item.index == i && fx_obj_str_eq(item.result, text), "item %llu",
			 (unsigned long long)i);
		i++;
	}
	REQUIREF(r == 0 && i == N, "%d after %llu items", r, (unsigned long long)i);
	REQUIRE(mpool_events(fx.c) & MPOOL_EV_READ);
	mpool_iter_free(it);
	fx_stop(&fx);
}
END_TEST

/* ---- 7. event loops --------------------------------------------------------------- */

START_TEST(poll_loop)
{
	enum { N = 200 };
	static struct counts cnt[N];
	static mpool_async *h[N];
	struct counts mc = { 0 };
	struct gen g = { .n = 50000 };
	struct mpool_item item;
	mpool_async *m;
	mpool_iter *it;
	msgpack_sbuffer sb;
	uint64_t taken = 0;
	bool stream_done = false;
	int64_t end;
	struct fx fx;
	mpool *c;
	int r, done;

	fx_start(&fx, NULL);
	c = fx_connect(&fx);
	REQUIRE(mpool_fd(c) >= 0 && mpool_fd(NULL) == -1);
	REQUIRE(mpool_events(c) == MPOOL_EV_READ);
	for (int i = 0; i < N; i++) {
		fx_arg_int(&sb, i);
		ok(c, mpool_apply_async(c, "builtin.square", sb.data, sb.size, NULL, count_ok,
					count_err, &cnt[i], &h[i]), "apply_async");
		msgpack_sbuffer_destroy(&sb);
	}
	pack_range(&sb, 1, 2000);
	ok(c, mpool_map_async(c, "builtin.square", sb.data, sb.size, 2000, NULL, count_ok,
			      count_err, &mc, &m), "map_async");
	msgpack_sbuffer_destroy(&sb);
	ok(c, mpool_imap_stream(c, "builtin.square", gen_produce, &g, NULL, &it), "imap_stream");

	end = fx_now_ms() + FX_WAIT_MS;
	for (;;) {
		int ev = mpool_events(c);
		struct pollfd pfd = {
			mpool_fd(c),
			(short)((ev & MPOOL_EV_READ ? POLLIN : 0) | (ev & MPOOL_EV_WRITE ? POLLOUT : 0)),
			0
		};

		done = mc.ok;
		for (int i = 0; i < N; i++)
			done += cnt[i].ok;
		if (done == N + 1 && stream_done)
			break;
		REQUIREF(fx_now_ms() < end, "%d of %d callbacks, %llu stream results", done, N + 1,
			 (unsigned long long)taken);
		if (poll(&pfd, 1, 100) < 0)
			REQUIRE(errno == EINTR);
		ok(c, mpool_process(c), "process");
		/* Take what the stream has, without waiting. */
		while (!stream_done && (r = mpool_iter_next(it, 0, &item)) != -MPOOL_E_TIMEOUT) {
			if (r == 0) {
				stream_done = true;
				break;
			}
			REQUIREF(r == 1 && item.index == taken &&
				 fx_obj_u64(item.result) == (taken + 1) * (taken + 1),
				 "stream item %llu: %d", (unsigned long long)taken, r);
			taken++;
		}
	}
	REQUIRE(taken == g.n);
	for (int i = 0; i < N; i++) {
		REQUIREF(cnt[i].ok == 1 && cnt[i].err == 0 && cnt[i].last_u64 == (uint64_t)i * i,
			 "request %d: %d/%d %llu", i, cnt[i].ok, cnt[i].err,
			 (unsigned long long)cnt[i].last_u64);
		mpool_async_free(h[i]);
	}
	REQUIRE(mc.ok == 1 && mc.array_ok && mc.last_array == 2000);
	mpool_async_free(m);
	mpool_iter_free(it);
	REQUIRE(mpool_events(c) == MPOOL_EV_READ);
	mpool_close(c);
	fx_stop(&fx);
}
END_TEST

struct ev_state {
	struct event_base *base;
	int ok, err, want;
	uint64_t sum;
	bool lost;
};

static void ev_ok(void *ud, const msgpack_object *res)
{
	struct ev_state *s = ud;

	s->ok++;
	if (res->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
		s->sum += res->via.u64;
	if (s->ok + s->err == s->want)
		event_base_loopbreak(s->base);
}

static void ev_err(void *ud, int code, const char *msg)
{
	struct ev_state *s = ud;

	(void)msg;
	REQUIREF(code == -MPOOL_E_NOFUNC, "error callback with %d", code);
	s->err++;
	if (s->ok + s->err == s->want)
		event_base_loopbreak(s->base);
}

static void ev_lost(void *ud, int code)
{
	struct ev_state *s = ud;

	(void)code;
	s->lost = true;
	event_base_loopbreak(s->base);
}

static void ev_timeout(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	FAILF("the event loop did not finish within %d ms", FX_WAIT_MS);
}

START_TEST(libevent_helper)
{
	struct ev_state s = { 0 };
	struct timeval tv = { FX_WAIT_MS / 1000, 0 };
	struct mpool_event *me;
	struct event *timer;
	mpool_async *h[12];
	msgpack_sbuffer sb;
	struct fx fx;
	mpool *c;

	fx_start(&fx, NULL);
	c = fx_connect(&fx);
	s.base = event_base_new();
	REQUIRE(s.base);
	me = mpool_event_new(s.base, c, ev_lost, &s);
	REQUIRE(me);
	timer = evtimer_new(s.base, ev_timeout, NULL);
	evtimer_add(timer, &tv);
	for (int i = 0; i < 10; i++) {
		fx_arg_int(&sb, i + 1);
		ok(c, mpool_apply_async(c, i % 2 ? "builtin.square" : "builtin.sleep", sb.data,
					sb.size, NULL, ev_ok, ev_err, &s, &h[i]), "apply_async");
		msgpack_sbuffer_destroy(&sb);
	}
	fx_arg_int(&sb, 1);
	ok(c, mpool_apply_async(c, "builtin.nosuch", sb.data, sb.size, NULL, ev_ok, ev_err, &s,
				&h[10]), "apply_async");
	msgpack_sbuffer_destroy(&sb);
	pack_range(&sb, 1, 100);
	ok(c, mpool_map_async(c, "builtin.square", sb.data, sb.size, 100, NULL, ev_ok, ev_err, &s,
			      &h[11]), "map_async");
	msgpack_sbuffer_destroy(&sb);
	s.want = 12;
	REQUIRE(event_base_dispatch(s.base) >= 0);
	REQUIREF(!s.lost && s.ok == 11 && s.err == 1, "ok %d, err %d, lost %d", s.ok, s.err, s.lost);
	/* sleeps 1,3,5,7,9 ms echo; squares of 2,4,6,8,10 */
	REQUIREF(s.sum == 1 + 3 + 5 + 7 + 9 + 4 + 16 + 36 + 64 + 100, "sum %llu",
		 (unsigned long long)s.sum);
	for (int i = 0; i < 12; i++)
		mpool_async_free(h[i]);
	event_free(timer);
	mpool_event_free(me);
	event_base_free(s.base);
	mpool_close(c);
	fx_stop(&fx);
}
END_TEST

/* ---- 8. handles and the connection's end ------------------------------------------ */

START_TEST(handles_outlive_connection)
{
	const msgpack_object *o;
	struct counts cnt = { 0 };
	mpool_async *done, *open;
	mpool_iter *it;
	struct mpool_item item;
	msgpack_sbuffer sb;
	struct fx fx;
	mpool *c;
	int r;

	fx_start(&fx, NULL);
	c = fx_connect(&fx);
	fx_arg_int(&sb, 9);
	ok(c, mpool_apply_async(c, "builtin.square", sb.data, sb.size, NULL, NULL, NULL, NULL,
				&done), "apply_async");
	msgpack_sbuffer_destroy(&sb);
	REQUIRE(mpool_async_wait(done, FX_WAIT_MS) == 1);
	fx_arg_int(&sb, 2000);
	ok(c, mpool_apply_async(c, "builtin.sleep", sb.data, sb.size, NULL, count_ok, count_err,
				&cnt, &open), "apply_async");
	msgpack_sbuffer_destroy(&sb);
	pack_sleeps(&sb, 2000, 4);
	ok(c, mpool_imap(c, "builtin.sleep", sb.data, sb.size, 4, NULL, &it), "imap");
	msgpack_sbuffer_destroy(&sb);
	mpool_close(c);
	/* Closing runs no callback; open handles fail with closed. */
	REQUIRE(cnt.ok == 0 && cnt.err == 0);
	REQUIRE(mpool_async_ready(open) == 1);
	r = mpool_async_get(open, -1, &o);
	REQUIREF(r == -MPOOL_E_CLOSED, "open handle after close: %d", r);
	REQUIRE(mpool_async_cancel(open, 0) == 0);
	REQUIRE(mpool_iter_next(it, -1, &item) == -MPOOL_E_CLOSED);
	r = mpool_async_get(done, 0, &o);
	REQUIREF(r == 0 && fx_obj_u64(o) == 81, "a finished handle keeps its result: %d", r);
	mpool_async_free(open);
	mpool_async_free(done);
	mpool_iter_free(it);
	wait_no_jobs(&fx, FX_WAIT_MS);
	fx_stop(&fx);
}
END_TEST

START_TEST(daemon_gone_fails_handles)
{
	struct counts cnt = { 0 };
	mpool_async *a;
	msgpack_sbuffer sb;
	struct fx fx;
	int r;

	fx_start(&fx, NULL);
	fx_arg_int(&sb, 5000);
	ok(fx.c, mpool_apply_async(fx.c, "builtin.sleep", sb.data, sb.size, NULL, count_ok,
				   count_err, &cnt, &a), "apply_async");
	msgpack_sbuffer_destroy(&sb);
	REQUIRE(mpool_async_wait(a, 100) == 0);
	fx.may_exit = true;
	REQUIRE(killpg(fx.pid, SIGKILL) == 0);
	fx_wait_exit(&fx, FX_WAIT_MS);
	r = mpool_async_get(a, FX_WAIT_MS, NULL);
	REQUIREF(r == -MPOOL_E_CLOSED && cnt.err == 1 && cnt.last_code == -MPOOL_E_CLOSED,
		 "after the daemon died: %d, %d error callbacks (code %d)", r, cnt.err,
		 cnt.last_code);
	REQUIRE(mpool_events(fx.c) == 0);
	REQUIRE(mpool_process(fx.c) == -MPOOL_E_CLOSED);
	mpool_async_free(a);
	fx_stop(&fx);
}
END_TEST

/* ---- 9. ten million items, bounded memory ----------------------------------------- */

struct sampler {
	pid_t daemon;
	atomic_bool stop;
	atomic_long max_daemon, max_client;
	atomic_int samples;
	pthread_t th;
};

static void *sample_loop(void *arg)
{
	struct sampler *s = arg;
	pid_t self = getpid();

	while (!atomic_load(&s->stop)) {
		struct timespec ts = { 0, 100 * 1000 * 1000 };
		long d = fx_rss_kib(s->daemon), c = fx_rss_kib(self);

		if (d > atomic_load(&s->max_daemon))
			atomic_store(&s->max_daemon, d);
		if (c > atomic_load(&s->max_client))
			atomic_store(&s->max_client, c);
		atomic_fetch_add(&s->samples, 1);
		nanosleep(&ts, NULL);
	}
	return NULL;
}

static void check_rss(struct sampler *s, uint64_t at)
{
	long d = atomic_load(&s->max_daemon), c = atomic_load(&s->max_client);

	REQUIREF(d < RSS_DAEMON_MAX_KIB, "mpoold's RSS reached %ld KiB (bound %d) at item %llu", d,
		 RSS_DAEMON_MAX_KIB, (unsigned long long)at);
	REQUIREF(c < RSS_CLIENT_MAX_KIB, "the client's RSS reached %ld KiB (bound %d) at item %llu",
		 c, RSS_CLIENT_MAX_KIB, (unsigned long long)at);
}

START_TEST(stream_10m_bounded)
{
	const uint64_t n = BIG_STREAM_ITEMS, slow_part = 2000000;
	uint64_t held_back = 0;
	long client0;
	struct sampler s = { 0 };
	struct gen g = { .n = n };
	struct mpool_map_summary sum;
	struct mpool_item item;
	mpool_iter *it;
	struct fx fx;
	int64_t t0;
	uint64_t i;
	int r;

#ifdef TEST_ASAN
	{
		/* mpoold inherits this: a freed block kept in quarantine is
		 * resident memory, 256 MiB of it by default. */
		const char *old = getenv("ASAN_OPTIONS");
		char opts[512];

		snprintf(opts, sizeof(opts), "%s%squarantine_size_mb=16", old ? old : "",
			 old && *old ? ":" : "");
		setenv("ASAN_OPTIONS", opts, 1);
	}
#endif
	fx_start(&fx, NULL);
	s.daemon = fx.pid;
	client0 = fx_rss_kib(getpid());
	REQUIRE(pthread_create(&s.th, NULL, sample_loop, &s) == 0);
	t0 = fx_now_ms();
	ok(fx.c, mpool_imap_stream(fx.c, "builtin.square", gen_produce, &g, NULL, &it),
	   "imap_stream");
	for (i = 0; (r = mpool_iter_next(it, FX_WAIT_MS, &item)) == 1; i++) {
		uint64_t v = i + 1;

		if (item.index != i || item.code != 0 || !item.result ||
		    item.result->via.u64 != v * v)
			FAILF("item %llu: index %llu code %d value %llu", (unsigned long long)i,
			      (unsigned long long)item.index, item.code,
			      item.result ? (unsigned long long)item.result->via.u64 : 0ull);
		/* A slow reader first: mpoold must hold back, not buffer. */
		if (i < slow_part && i % 1000 == 999) {
			struct timespec ts = { 0, 1000 * 1000 };

			nanosleep(&ts, NULL);
			/* Full: libmpool stopped reading, mpoold holds the rest. */
			held_back += !(mpool_events(fx.c) & MPOOL_EV_READ);
		}
		if (i % 500000 == 0)
			check_rss(&s, i);
	}
	REQUIREF(r == 0, "the stream ended with %d (%s) after %llu items", r, mpool_errmsg(fx.c),
		 (unsigned long long)i);
	REQUIREF(i == n && g.next == n, "%llu items taken, %llu produced", (unsigned long long)i,
		 (unsigned long long)g.next);
	REQUIRE(mpool_iter_summary(it, &sum) == 0 && sum.items == n && sum.failed == 0);
	REQUIREF(held_back > 0, "the slow reader never filled its iterator");
#ifndef TEST_ASAN
	/* What the client grew by stays within libmpool's documented bounds
	 * (an iterator's results, a feed being packed and one queued), plus
	 * 8 MiB for the decoded chunk, the framer and the allocator. */
	REQUIREF(atomic_load(&s.max_client) - client0 <
		 (long)(MPOOL_ITER_MAX_BYTES + 2 * MPOOL_FEED_MAX_BYTES) / 1024 + 8192,
		 "the client grew from %ld to %ld KiB", client0, atomic_load(&s.max_client));
#endif
	mpool_iter_free(it);
	atomic_store(&s.stop, true);
	pthread_join(s.th, NULL);
	check_rss(&s, i);
	fprintf(stderr, "stream_10m_bounded: %llu items in %lld ms; peak VmRSS mpoold %ld KiB, "
		"client %ld KiB (%ld at the start; %d samples); iterator full at %llu of %llu "
		"slow steps\n",
		(unsigned long long)n, (long long)(fx_now_ms() - t0), atomic_load(&s.max_daemon),
		atomic_load(&s.max_client), client0, atomic_load(&s.samples),
		(unsigned long long)held_back, (unsigned long long)(slow_part / 1000));
	REQUIRE(atomic_load(&s.samples) > 10);
	fx_stop(&fx);
}
END_TEST

/* ---- 8. batching: mpool_cork and requests made in callbacks --------------------- */

/* Drives c with poll + mpool_process until *done reaches n. */
static void process_until(mpool *c, const int *done, int n)
{
	int64_t end = fx_now_ms() + FX_WAIT_MS;

	while (*done < n) {
		int ev = mpool_events(c);
		struct pollfd pfd = {
			mpool_fd(c),
			(short)((ev & MPOOL_EV_READ ? POLLIN : 0) | (ev & MPOOL_EV_WRITE ? POLLOUT : 0)),
			0
		};

		REQUIREF(fx_now_ms() < end, "%d of %d answers", *done, n);
		if (poll(&pfd, 1, 100) < 0)
			REQUIRE(errno == EINTR);
		ok(c, mpool_process(c), "process");
	}
}

static void count_done(void *ud, const msgpack_object *res)
{
	(void)res;
	(*(int *)ud)++;
}

START_TEST(cork_holds_until_uncork)
{
	enum { N = 300 };
	static struct counts cnt[N];
	static mpool_async *h[N];
	struct fx_status st;
	uint64_t done_before;
	msgpack_sbuffer sb;
	struct fx fx;
	mpool *c;
	int done;

	fx_start(&fx, NULL);
	c = fx_connect(&fx);
	REQUIRE(mpool_uncork(c) == -MPOOL_E_INVAL);
	REQUIRE(strstr(mpool_errmsg(c), "without mpool_cork") != NULL);
	REQUIRE(mpool_cork(NULL) == -MPOOL_E_INVAL && mpool_uncork(NULL) == -MPOOL_E_INVAL);
	fx_status(&fx, &st);
	done_before = st.totals.tasks_done;

	ok(c, mpool_cork(c), "cork");
	ok(c, mpool_cork(c), "cork again");
	for (int i = 0; i < N; i++) {
		fx_arg_int(&sb, i);
		ok(c, mpool_apply_async(c, "builtin.square", sb.data, sb.size, NULL, count_ok,
					count_err, &cnt[i], &h[i]), "apply_async");
		msgpack_sbuffer_destroy(&sb);
		REQUIRE(mpool_events(c) & MPOOL_EV_WRITE);
	}
	/* Nothing left the process: mpoold has run none of them (its status
	 * comes over another connection, after all 300 were made). */
	fx_status(&fx, &st);
	REQUIREF(st.totals.tasks_done == done_before, "%llu tasks done while corked",
		 (unsigned long long)(st.totals.tasks_done - done_before));
	ok(c, mpool_uncork(c), "inner uncork");
	REQUIRE(mpool_events(c) & MPOOL_EV_WRITE);      /* one cork is left */
	ok(c, mpool_uncork(c), "outer uncork");
	/* About 10 KiB: the socket takes them in the one write. */
	REQUIRE(mpool_events(c) == MPOOL_EV_READ);

	for (int64_t end = fx_now_ms() + FX_WAIT_MS;;) {
		struct pollfd pfd = { mpool_fd(c), POLLIN, 0 };

		done = 0;
		for (int i = 0; i < N; i++)
			done += cnt[i].ok + cnt[i].err;
		if (done == N)
			break;
		REQUIREF(fx_now_ms() < end, "%d of %d answers", done, N);
		if (poll(&pfd, 1, 100) < 0)
			REQUIRE(errno == EINTR);
		ok(c, mpool_process(c), "process");
	}
	for (int i = 0; i < N; i++) {
		REQUIREF(cnt[i].ok == 1 && cnt[i].last_u64 == (uint64_t)i * i, "request %d: %d/%d",
			 i, cnt[i].ok, cnt[i].err);
		mpool_async_free(h[i]);
	}
	mpool_close(c);
	fx_stop(&fx);
}
END_TEST

/* A wait never hangs on a request held back by a cork: it sends first. */
START_TEST(cork_wait_sends_first)
{
	const msgpack_object *res;
	mpool_value *v;
	msgpack_sbuffer sb;
	mpool_async *h;
	struct fx fx;
	mpool *c;

	fx_start(&fx, NULL);
	c = fx_connect(&fx);
	ok(c, mpool_cork(c), "cork");
	fx_arg_int(&sb, 7);
	ok(c, mpool_apply_async(c, "builtin.square", sb.data, sb.size, NULL, NULL, NULL, NULL,
				&h), "apply_async");
	REQUIRE(mpool_events(c) & MPOOL_EV_WRITE);
	ok(c, mpool_async_get(h, FX_WAIT_MS, &res), "get while corked");
	REQUIRE(fx_obj_u64(res) == 49);
	mpool_async_free(h);
	/* A blocking call while corked, too. */
	ok(c, mpool_apply(c, "builtin.square", sb.data, sb.size, &v), "apply while corked");
	REQUIRE(fx_obj_u64(mpool_value_get(v)) == 49);
	mpool_value_free(v);
	msgpack_sbuffer_destroy(&sb);
	ok(c, mpool_uncork(c), "uncork");
	REQUIRE(mpool_events(c) == MPOOL_EV_READ);
	mpool_close(c);
	fx_stop(&fx);
}
END_TEST

/* A cork holds at most 64 KiB: past it, what is held leaves at once. */
START_TEST(cork_bound)
{
	enum { N = 200, SZ = 1024 };
	static uint8_t blob[SZ];
	int held_at_least = 0, done = 0;
	bool flushed = false;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	struct fx fx;
	mpool *c;

	fx_start(&fx, NULL);
	c = fx_connect(&fx);
	fx_sbuf_init(&sb, &pk);
	msgpack_pack_bin(&pk, SZ);
	msgpack_pack_bin_body(&pk, blob, SZ);
	ok(c, mpool_cork(c), "cork");
	for (int i = 0; i < N; i++) {
		mpool_async *h;

		ok(c, mpool_apply_async(c, "builtin.echo", sb.data, sb.size, NULL, count_done,
					NULL, &done, &h), "apply_async");
		mpool_async_free(h);
		if (!(mpool_events(c) & MPOOL_EV_WRITE))
			flushed = true;
		else if (!flushed)
			held_at_least = i + 1;
	}
	/* 60 requests of ~1 KiB are under the bound: all held. */
	REQUIREF(held_at_least >= 60 && flushed, "held %d, flushed %d", held_at_least, flushed);
	ok(c, mpool_uncork(c), "uncork");
	msgpack_sbuffer_destroy(&sb);
	process_until(c, &done, N);
	REQUIRE(done == N);
	mpool_close(c);
	fx_stop(&fx);
}
END_TEST

/* Requests a callback makes leave when the call that ran it returns: the
 * callback sees them held, the caller of mpool_process sees them sent. */
struct burst {
	mpool *c;
	int started, done, held_in_cb, sent_after;
};

static void burst_next(void *ud, const msgpack_object *res)
{
	struct burst *ch = ud;
	msgpack_sbuffer sb;

	(void)res;
	ch->done++;
	if (ch->started >= 400)
		return;
	/* Two new requests per answer, up to 400 in all. */
	for (int k = 0; k < 2 && ch->started < 400; k++) {
		mpool_async *h;

		fx_arg_int(&sb, ch->started);
		REQUIRE(mpool_apply_async(ch->c, "builtin.square", sb.data, sb.size, NULL,
					  burst_next, NULL, ch, &h) == 0);
		msgpack_sbuffer_destroy(&sb);
		mpool_async_free(h);
		ch->started++;
	}
	if (mpool_events(ch->c) & MPOOL_EV_WRITE)
		ch->held_in_cb++;
}

START_TEST(callback_requests_leave_together)
{
	struct burst ch = { 0 };
	int64_t end = fx_now_ms() + FX_WAIT_MS;
	msgpack_sbuffer sb;
	mpool_async *h;
	struct fx fx;

	fx_start(&fx, NULL);
	ch.c = fx_connect(&fx);
	fx_arg_int(&sb, 1);
	ok(ch.c, mpool_apply_async(ch.c, "builtin.square", sb.data, sb.size, NULL, burst_next,
				   NULL, &ch, &h), "apply_async");
	msgpack_sbuffer_destroy(&sb);
	mpool_async_free(h);
	ch.started = 1;
	while (ch.done < 400) {
		struct pollfd pfd = { mpool_fd(ch.c), POLLIN, 0 };

		REQUIREF(fx_now_ms() < end, "%d of 400 answers", ch.done);
		/* Nothing waits to be sent between calls: a callback's
		 * requests left before mpool_process returned. */
		REQUIRE(!(mpool_events(ch.c) & MPOOL_EV_WRITE));
		if (poll(&pfd, 1, 100) < 0)
			REQUIRE(errno == EINTR);
		ok(ch.c, mpool_process(ch.c), "process");
	}
	REQUIRE(ch.started == 400 && ch.done == 400);
	REQUIREF(ch.held_in_cb > 0, "no callback saw its requests held");
	mpool_close(ch.c);
	fx_stop(&fx);
}
END_TEST

/* ---- 9. results decoded as msgpack-c would ------------------------------------ */

/* Every kind of value makes the round trip through builtin.echo and
 * mpool_map_collect and comes back as the object msgpack-c makes of it
 * (libmpool decodes scalars itself; test_value checks every encoding). */
START_TEST(collect_decodes_every_kind)
{
	static const int64_t ints[] = {
		0, 1, 127, 128, 255, 256, 65535, 65536, 4294967295ll, 4294967296ll,
		INT64_MAX, -1, -32, -33, -128, -129, -32768, -32769, -2147483648ll,
		-2147483649ll, INT64_MIN
	};
	msgpack_sbuffer sb;
	msgpack_packer pk;
	msgpack_zone *zone;
	const msgpack_object *res;
	mpool_value *v;
	struct fx fx;
	uint32_t n = 0;
	size_t off = 0;
	mpool *c;

	fx_sbuf_init(&sb, &pk);
	for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++, n++)
		msgpack_pack_int64(&pk, ints[i]);
	msgpack_pack_uint64(&pk, UINT64_MAX), n++;
	/* Signed encodings of non-negative values, as other packers write them. */
	msgpack_pack_fix_int8(&pk, 5), n++;
	msgpack_pack_fix_int8(&pk, 0), n++;
	msgpack_pack_fix_int64(&pk, 0), n++;
	msgpack_pack_fix_int16(&pk, 300), n++;
	msgpack_pack_fix_int32(&pk, -7), n++;
	msgpack_pack_fix_int64(&pk, 1ll << 40), n++;
	msgpack_pack_fix_uint8(&pk, 3), n++;
	msgpack_pack_float(&pk, 1.5f), n++;
	msgpack_pack_double(&pk, -2.25), n++;
	msgpack_pack_nil(&pk), n++;
	msgpack_pack_true(&pk), n++;
	msgpack_pack_false(&pk), n++;
	fx_pack_str(&pk, "a string"), n++;
	msgpack_pack_bin(&pk, 3), msgpack_pack_bin_body(&pk, "\0\1\2", 3), n++;
	msgpack_pack_array(&pk, 2), msgpack_pack_int(&pk, 1), fx_pack_str(&pk, "x"), n++;
	msgpack_pack_map(&pk, 1), fx_pack_str(&pk, "k"), msgpack_pack_double(&pk, 0.5), n++;
	msgpack_pack_ext(&pk, 2, 7), msgpack_pack_ext_body(&pk, "ab", 2), n++;
	msgpack_pack_int(&pk, 42), n++;     /* a scalar after the others */

	fx_start(&fx, NULL);
	c = fx_connect(&fx);
	ok(c, mpool_map_collect(c, "builtin.echo", sb.data, sb.size, n, NULL, &v), "map_collect");
	res = mpool_value_get(v);
	REQUIRE(res->type == MSGPACK_OBJECT_ARRAY && res->via.array.size == n);
	zone = msgpack_zone_new(4096);
	for (uint32_t i = 0; i < n; i++) {
		msgpack_object want;

		REQUIRE(msgpack_unpack(sb.data, sb.size, &off, zone, &want) >= 0);
		REQUIREF(res->via.array.ptr[i].type == want.type &&
			 msgpack_object_equal(res->via.array.ptr[i], want),
			 "item %u: type %d, want %d", i, res->via.array.ptr[i].type, want.type);
	}
	REQUIRE(off == sb.size);
	msgpack_zone_free(zone);
	mpool_value_free(v);
	msgpack_sbuffer_destroy(&sb);
	mpool_close(c);
	fx_stop(&fx);
}
END_TEST

/* ---- 10. big maps go in parts ------------------------------------------------ */

/* A map of at least 65 536 items (or 4 MiB) with the default chunksize
 * goes as a stream of parts: so it runs against a daemon whose --max-frame
 * is far below the size of its items (one request would be refused). */
static const char *const small_frames[] = { "--max-frame", "262144", NULL };

struct part_run {
	uint64_t seen, largest;
};

static void part_chunk(void *ud, uint64_t first, const msgpack_object *res,
		       const struct mpool_item_error *errs, size_t n_errs)
{
	struct part_run *run = ud;

	(void)errs;
	REQUIRE(n_errs == 0 && res->type == MSGPACK_OBJECT_ARRAY);
	for (uint32_t i = 0; i < res->via.array.size; i++)
		REQUIREF(fx_obj_u64(&res->via.array.ptr[i]) == (first + i) * (first + i),
			 "item %llu", (unsigned long long)(first + i));
	run->seen += res->via.array.size;
	if (res->via.array.size > run->largest)
		run->largest = res->via.array.size;
}

START_TEST(big_map_goes_in_parts)
{
	enum { N = 300000 };     /* about 1.4 MB of items */
	struct mpool_map_opts unordered = MPOOL_MAP_OPTS(.unordered = 1);
	struct mpool_map_opts chosen = MPOOL_MAP_OPTS(.chunksize = 5000);
	struct mpool_map_summary sum;
	struct part_run run = { 0 };
	const msgpack_object *o;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	mpool_value *v;
	struct fx fx;
	mpool *c;
	int r;

	fx_start(&fx, small_frames);
	c = fx_connect(&fx);
	/* Ordered, every item once, through the chunk callback. */
	REQUIRE(fx_map_squares(c, N, 0, NULL, 0) > 0);
	/* Collected. */
	fx_sbuf_init(&sb, &pk);
	fx_pack_range(&pk, 0, N);
	ok(c, mpool_map_collect(c, "builtin.square", sb.data, sb.size, N, NULL, &v), "map_collect");
	o = mpool_value_get(v);
	REQUIRE(o->type == MSGPACK_OBJECT_ARRAY && o->via.array.size == N);
	for (uint32_t i = 0; i < N; i++)
		REQUIREF(fx_obj_u64(&o->via.array.ptr[i]) == (uint64_t)i * i, "item %u", i);
	mpool_value_free(v);
	/* Unordered: still every item once, no chunk above the default cap. */
	ok(c, mpool_map(c, "builtin.square", sb.data, sb.size, N, &unordered, part_chunk, &run, &sum),
	   "unordered map");
	REQUIREF(run.seen == N && sum.items == N && sum.failed == 0, "%llu results",
		 (unsigned long long)run.seen);
	REQUIREF(run.largest <= 4096, "a chunk of %llu items", (unsigned long long)run.largest);
	/* A chunksize the caller chose is honoured exactly, so that map goes
	 * in one request, and this daemon refuses a request that large. */
	r = mpool_map(c, "builtin.square", sb.data, sb.size, N, &chosen, part_chunk, &run, &sum);
	REQUIREF(r == -MPOOL_E_LIMIT, "a 1.4 MB request against --max-frame 262144: %d (%s)", r,
		 mpool_errmsg(c));
	msgpack_sbuffer_destroy(&sb);
	mpool_close(c);
	fx_stop(&fx);
}
END_TEST

/* An async big map keeps its own copy of the items: the caller's buffer
 * may go the moment the call returns.  The same for imap and starmap. */
START_TEST(big_async_map_owns_its_items)
{
	enum { N = 200000 };
	const msgpack_object *res;
	struct mpool_item item;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	mpool_async *h, *star;
	mpool_iter *it;
	uint64_t next = 0;
	struct fx fx;
	mpool *c;

	fx_start(&fx, small_frames);
	c = fx_connect(&fx);
	fx_sbuf_init(&sb, &pk);
	fx_pack_range(&pk, 0, N);
	ok(c, mpool_map_async(c, "builtin.square", sb.data, sb.size, N, NULL, NULL, NULL, NULL, &h),
	   "map_async");
	ok(c, mpool_imap(c, "builtin.square", sb.data, sb.size, N, NULL, &it), "imap");
	memset(sb.data, 0xc1, sb.size);      /* never valid MessagePack */
	msgpack_sbuffer_destroy(&sb);
	/* Argument arrays, echoed back. */
	fx_sbuf_init(&sb, &pk);
	for (uint32_t i = 0; i < N; i++)
		msgpack_pack_array(&pk, 1), msgpack_pack_uint32(&pk, i);
	ok(c, mpool_starmap_async(c, "builtin.echo", sb.data, sb.size, N, NULL, NULL, NULL, NULL,
				  &star), "starmap_async");
	memset(sb.data, 0xc1, sb.size);
	msgpack_sbuffer_destroy(&sb);

	while (mpool_iter_next(it, FX_WAIT_MS, &item) == 1) {
		REQUIREF(item.index == next && item.code == 0 &&
			 fx_obj_u64(item.result) == next * next, "imap item %llu",
			 (unsigned long long)next);
		next++;
	}
	REQUIREF(next == N, "imap gave %llu of %d", (unsigned long long)next, N);
	mpool_iter_free(it);
	ok(c, mpool_async_get(h, FX_WAIT_MS, &res), "get");
	REQUIRE(res->type == MSGPACK_OBJECT_ARRAY && res->via.array.size == N);
	for (uint32_t i = 0; i < N; i++)
		REQUIREF(fx_obj_u64(&res->via.array.ptr[i]) == (uint64_t)i * i, "map item %u", i);
	mpool_async_free(h);
	ok(c, mpool_async_get(star, FX_WAIT_MS, &res), "starmap get");
	REQUIRE(res->type == MSGPACK_OBJECT_ARRAY && res->via.array.size == N);
	for (uint32_t i = 0; i < N; i++) {
		const msgpack_object *a = &res->via.array.ptr[i];

		REQUIREF(a->type == MSGPACK_OBJECT_ARRAY && a->via.array.size == 1 &&
			 fx_obj_u64(&a->via.array.ptr[0]) == i, "starmap item %u", i);
	}
	mpool_async_free(star);
	mpool_close(c);
	fx_stop(&fx);
}
END_TEST

/* Cancelling a big map while its parts are still going: it fails at
 * once, the rest of its items are never sent, the connection goes on. */
START_TEST(big_map_cancelled_midway)
{
	enum { N = 2000000 };
	const msgpack_object *res;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	mpool_value *v;
	mpool_async *h;
	struct fx fx;
	mpool *c;

	fx_start(&fx, NULL);
	c = fx_connect(&fx);
	fx_sbuf_init(&sb, &pk);
	fx_pack_range(&pk, 0, N);
	ok(c, mpool_map_async(c, "builtin.square", sb.data, sb.size, N, NULL, NULL, NULL, NULL, &h),
	   "map_async");
	msgpack_sbuffer_destroy(&sb);
	REQUIRE(mpool_async_wait(h, 50) == 0);      /* under way, not done */
	REQUIRE(mpool_async_cancel(h, 0) == 1);
	REQUIRE(mpool_async_get(h, 0, &res) == -MPOOL_E_CANCELLED);
	mpool_async_free(h);
	fx_arg_int(&sb, 9);
	ok(c, mpool_apply(c, "builtin.square", sb.data, sb.size, &v), "apply after the cancel");
	REQUIRE(fx_obj_u64(mpool_value_get(v)) == 81);
	mpool_value_free(v);
	msgpack_sbuffer_destroy(&sb);
	wait_no_jobs(&fx, FX_WAIT_MS);
	mpool_close(c);
	fx_stop(&fx);
}
END_TEST

/* A stream whose consumer is slower than the pool, with a window's
 * results (16 384 x 300 B) above both libmpool's 1 MiB read budget and
 * mpoold's 4 MiB bound on unread output: credit then comes late, as the
 * last thing mpoold says until the next feed, and must be used by the step
 * that reads it even when the budget ends that step. */
struct blobs {
	uint32_t next, n, seen;
};

static int blob_produce(void *ud, msgpack_packer *pk)
{
	static uint8_t blob[300];
	struct blobs *b = ud;

	if (b->next == b->n)
		return 0;
	memcpy(blob, &b->next, sizeof(b->next));
	b->next++;
	msgpack_pack_bin(pk, sizeof(blob));
	msgpack_pack_bin_body(pk, blob, sizeof(blob));
	return 1;
}

static void blob_chunk(void *ud, uint64_t first, const msgpack_object *res,
		       const struct mpool_item_error *errs, size_t n_errs)
{
	struct blobs *b = ud;
	struct timespec slow = { 0, 300000 };

	(void)errs;
	REQUIRE(n_errs == 0);
	for (uint32_t i = 0; i < res->via.array.size; i++) {
		uint32_t idx;

		REQUIRE(res->via.array.ptr[i].via.bin.size == 300);
		memcpy(&idx, res->via.array.ptr[i].via.bin.ptr, sizeof(idx));
		REQUIREF(idx == first + i, "item %llu", (unsigned long long)(first + i));
	}
	b->seen += res->via.array.size;
	nanosleep(&slow, NULL);
}

START_TEST(stream_credit_at_budget_end)
{
	static const char *const args[] = { "--stream-window", "16384", NULL };
	struct blobs b = { 0, 200000, 0 };
	struct mpool_map_summary sum;
	struct fx fx;
	mpool *c;

	fx_start(&fx, args);
	c = fx_connect(&fx);
	ok(c, mpool_map_stream(c, "builtin.echo", blob_produce, &b, NULL, blob_chunk, &b, &sum),
	   "map_stream");
	REQUIRE(b.seen == b.n && sum.items == b.n);
	mpool_close(c);
	fx_stop(&fx);
}
END_TEST

static Suite *async_suite(void)
{
	Suite *s = suite_create("async");
	TCase *tc = tcase_create("async");

	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, many_applies_in_flight);
	tcase_add_test(tc, callbacks_once_each);
	tcase_add_test(tc, callback_may_not_block);
	tcase_add_test(tc, timeouts_leave_job_running);
	tcase_add_test(tc, cancel_queued_map);
	tcase_add_test(tc, cancel_running_map);
	tcase_add_test(tc, cancel_running_map_kill);
	tcase_add_test(tc, cancel_iterator_and_stream);
	tcase_add_test(tc, imap_in_order);
	tcase_add_test(tc, imap_unordered_complete);
	tcase_add_test(tc, starmap_arrays);
	tcase_add_test(tc, map_stream_blocking);
	tcase_add_test(tc, iterator_bound_stops_reading);
	tcase_add_test(tc, poll_loop);
	tcase_add_test(tc, libevent_helper);
	tcase_add_test(tc, cork_holds_until_uncork);
	tcase_add_test(tc, cork_wait_sends_first);
	tcase_add_test(tc, cork_bound);
	tcase_add_test(tc, callback_requests_leave_together);
	tcase_add_test(tc, collect_decodes_every_kind);
	tcase_add_test(tc, big_map_goes_in_parts);
	tcase_add_test(tc, big_async_map_owns_its_items);
	tcase_add_test(tc, big_map_cancelled_midway);
	tcase_add_test(tc, stream_credit_at_budget_end);
	tcase_add_test(tc, handles_outlive_connection);
	tcase_add_test(tc, daemon_gone_fails_handles);
	tcase_add_test(tc, stream_10m_bounded);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(async_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
