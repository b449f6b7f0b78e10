/* Unit tests of the dispatcher: its arithmetic (chunk sizing, the task
 * quota that drives recycling), and the dispatcher itself run alone through
 * struct disp_ops, with fake clients and fake workers: turns across uids,
 * connections and jobs, batches, chunks cut to a worker's quota, the
 * ordering buffer, retries of a lost chunk or batch, cancel, a client that
 * leaves, the queued-chunk limits and shares, stream credit, and the
 * hand-off of results and turns between the pool and the dispatcher.  The integration suites prove the same rules against a real
 * mpoold; these pin them down cheaply and exactly.  Check forks every test,
 * so each starts with an empty dispatcher. */
#include <check.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <mpool/error.h>
#include "config.h"
#include "disp.h"
#include "mp_scan.h"
#include "wmsg.h"

START_TEST(auto_chunksize_follows_python)
{
	/* Python: chunksize, extra = divmod(n, 4 * workers); chunksize += bool(extra) */
	ck_assert_uint_eq(disp_auto_chunksize(0, 2), 1);
	ck_assert_uint_eq(disp_auto_chunksize(1, 2), 1);
	ck_assert_uint_eq(disp_auto_chunksize(8, 2), 1);
	ck_assert_uint_eq(disp_auto_chunksize(9, 2), 2);
	ck_assert_uint_eq(disp_auto_chunksize(100, 2), 13);
	ck_assert_uint_eq(disp_auto_chunksize(100, 1), 25);
	ck_assert_uint_eq(disp_auto_chunksize(1000, 4), 63);
	ck_assert_uint_eq(disp_auto_chunksize(5, 0), 2);   /* zero workers treated as one */
}
END_TEST

START_TEST(auto_chunksize_is_capped)
{
	ck_assert_uint_eq(disp_auto_chunksize(1000000, 2), DISP_CHUNK_MAX);
	ck_assert_uint_eq(disp_auto_chunksize(UINT64_MAX / 2, 1), DISP_CHUNK_MAX);
	ck_assert_uint_eq(disp_auto_chunksize(8 * DISP_CHUNK_MAX, 2), DISP_CHUNK_MAX);
	ck_assert_uint_eq(disp_auto_chunksize(8 * DISP_CHUNK_MAX - 8, 2), DISP_CHUNK_MAX - 1);
}
END_TEST

START_TEST(take_is_bounded_by_items_and_quota)
{
	ck_assert_uint_eq(disp_chunk_take(10, 100, UINT64_MAX), 10);
	ck_assert_uint_eq(disp_chunk_take(10, 3, UINT64_MAX), 3);
	ck_assert_uint_eq(disp_chunk_take(10, 100, 4), 4);
	ck_assert_uint_eq(disp_chunk_take(10, 2, 4), 2);
	ck_assert_uint_eq(disp_chunk_take(10, 100, 0), 0);
	ck_assert_uint_eq(disp_chunk_take(UINT32_MAX, UINT64_MAX, UINT64_MAX), UINT32_MAX);
}
END_TEST

/* Replays the dispatcher's rule over a whole map with recycling: every
 * worker gets chunks sized to min(chunksize, left, quota) and is replaced
 * when its quota is spent.  No worker may exceed the quota, and the items
 * must be covered exactly once. */
static void replay(uint64_t n_items, uint32_t chunksize, uint64_t max_tasks)
{
	uint64_t next = 0, done_by_worker = 0, workers = 1, covered = 0;

	while (next < n_items) {
		uint64_t quota = max_tasks ? max_tasks - done_by_worker : UINT64_MAX;
		uint32_t n = disp_chunk_take(chunksize, n_items - next, quota);

		ck_assert_uint_gt(n, 0);
		ck_assert_uint_le(done_by_worker + n, max_tasks ? max_tasks : UINT64_MAX);
		next += n;
		covered += n;
		done_by_worker += n;
		if (max_tasks && done_by_worker == max_tasks) {
			done_by_worker = 0;        /* recycled: a fresh worker */
			workers++;
		}
	}
	ck_assert_uint_eq(covered, n_items);
	if (max_tasks)
		ck_assert_uint_eq(workers, n_items / max_tasks + 1);
}

START_TEST(quota_is_never_exceeded)
{
	replay(300, 2, 3);
	replay(300, 7, 3);
	replay(1000, 13, 100);
	replay(1000, 1000, 1);
	replay(10, 4, 0);
	for (uint32_t cs = 1; cs <= 9; cs++)
		for (uint64_t q = 1; q <= 9; q++)
			replay(97, cs, q);
}
END_TEST

/* ---- fakes -------------------------------------------------------------- */

/* A client: disp.c sees its address as a struct conn *. */
struct fake_client {
	uid_t uid;
	bool backlogged;
	unsigned applies_done, maps_done, failed, items_out;
	uint64_t firsts[64];       /* send_chunk's first, in order */
	unsigned n_firsts;
	int fail_code;
	uint64_t credit;           /* granted in all */
	unsigned owned;            /* chunks whose results came with their buffer */
	unsigned credits;          /* how many grants */
};

#define CONN(fc) ((struct conn *)(void *)(fc))
#define FC(c) ((struct fake_client *)(void *)(c))

struct fake_worker {
	bool busy;
	uint64_t quota;            /* 0: none */
	struct chunk ck;
};

#define MAX_RUNS 256
static struct fake_worker fw[4];
static unsigned n_fw;
/* Every chunk started: its client, msgid and size, in order. */
static struct run {
	struct fake_client *client;
	uint64_t msgid;
	uint32_t count;
	bool batch;
} runs[MAX_RUNS];
static unsigned n_runs;

static uint32_t array_len(const uint8_t *b)
{
	if ((b[0] & 0xf0) == 0x90)
		return b[0] & 0x0f;
	ck_assert_uint_eq(b[0], 0xdc);
	return (uint32_t)b[1] << 8 | b[2];
}

static uid_t f_uid(const struct conn *c) { return FC(c)->uid; }
static pid_t f_pid(const struct conn *c) { (void)c; return 1; }
static bool f_backlogged(const struct conn *c) { return FC(c)->backlogged; }

static void f_send_chunk(struct conn *c, uint64_t msgid, uint64_t first, const uint8_t *results,
			 size_t rlen, const uint8_t *errors, size_t elen, uint8_t *owned)
{
	struct fake_client *fc = FC(c);

	(void)msgid; (void)rlen; (void)elen;
	fc->items_out += array_len(results);
	fc->failed += array_len(errors);
	if (fc->n_firsts < 64)
		fc->firsts[fc->n_firsts++] = first;
	fc->owned += owned != NULL;
	free(owned);
}

static void f_send_credit(struct conn *c, uint64_t msgid, uint64_t n)
{
	(void)msgid;
	FC(c)->credit += n;
	FC(c)->credits++;
}

static void f_apply_done(struct conn *c, uint64_t msgid, const uint8_t *results, size_t rlen,
			 const uint8_t *errors, size_t elen, uint32_t n_errors)
{
	(void)msgid; (void)results; (void)rlen; (void)errors; (void)elen;
	FC(c)->applies_done++;
	FC(c)->failed += n_errors;
}

static void f_map_done(struct conn *c, uint64_t msgid, uint64_t items, uint64_t failed)
{
	(void)msgid; (void)items; (void)failed;
	FC(c)->maps_done++;
}

static void f_job_failed(struct conn *c, uint64_t msgid, int code, const char *msg)
{
	(void)msgid; (void)msg;
	FC(c)->fail_code = code;
}

static void f_job_ended(struct conn *c, struct job *job) { (void)c; (void)job; }

static struct worker *f_idle(void)
{
	for (unsigned i = 0; i < n_fw; i++)
		if (!fw[i].busy)
			return (struct worker *)(void *)&fw[i];
	return NULL;
}

static uint64_t f_quota_left(const struct worker *w)
{
	const struct fake_worker *f = (const void *)w;

	return f->quota ? f->quota : UINT64_MAX;
}

static void f_run(struct worker *w, const struct chunk *ck, const char *fn, uint32_t fn_len)
{
	struct fake_worker *f = (void *)w;

	(void)fn; (void)fn_len;
	ck_assert(!f->busy);
	f->busy = true;
	f->ck = *ck;
	ck_assert_uint_lt(n_runs, MAX_RUNS);
	runs[n_runs++] = (struct run){ FC(disp_job_conn(ck->job)), disp_job_msgid(ck->job),
				       ck->count, ck->batch != NULL };
}

static unsigned kills;
static void f_kill_job(const struct job *job) { (void)job; kills++; }
static void f_nothing(void) { }

/* cluster: a fake outlet with room for outlet_cap chunks. */
static unsigned outlet_cap, outlet_n;
static struct chunk outlet_ck[16];

static bool f_outlet_room(void) { return outlet_n < outlet_cap; }

static void f_outlet_run(const struct chunk *ck, const char *fn, uint32_t fn_len)
{
	(void)fn; (void)fn_len;
	ck_assert_uint_lt(outlet_n, 16);
	outlet_ck[outlet_n++] = *ck;
}

static unsigned f_outlet_workers(void) { return outlet_cap; }

static const struct disp_ops fake_ops = {
	.uid = f_uid, .pid = f_pid, .backlogged = f_backlogged, .send_chunk = f_send_chunk,
	.send_credit = f_send_credit, .apply_done = f_apply_done, .map_done = f_map_done,
	.job_failed = f_job_failed, .job_ended = f_job_ended, .idle = f_idle,
	.quota_left = f_quota_left, .run = f_run, .kill_job = f_kill_job,
	.outlet_room = f_outlet_room, .outlet_run = f_outlet_run,
	.outlet_workers = f_outlet_workers,
	.changed = f_nothing, .job_gone = f_nothing,
};

static void setup(unsigned workers)
{
	n_fw = workers;
	cfg.workers = workers ? workers : 1;
	disp_init(&fake_ops);
}

/* The next submit_spec's cluster flags. */
static bool next_shared, next_remote_only;

/* A map of n integers (an apply when !is_map: n is 1) from fc. */
static struct job *submit_spec(struct fake_client *fc, uint64_t msgid, bool is_map, uint32_t n,
			       uint32_t chunksize, uint32_t retries, bool stream)
{
	struct job_spec spec = { .is_map = is_map, .ordered = true, .msgid = msgid,
				 .chunksize = chunksize, .retries = retries, .fn = "f", .fn_len = 1,
				 .n_items = n, .stream = stream, .shared = next_shared,
				 .remote_only = next_remote_only };
	uint8_t buf[4096];
	struct mp_cur c;

	ck_assert_uint_lt(n, sizeof(buf));
	memset(buf, 0x07, n);               /* n positive fixints */
	mp_cur_init(&c, buf, n);
	ck_assert_int_eq(disp_walk_items(&c, n, &spec.items, &spec.items_len, &spec.marks), 0);
	return disp_submit(CONN(fc), &spec);
}

static struct job *submit(struct fake_client *fc, uint64_t msgid, bool is_map, uint32_t n,
			  uint32_t chunksize, uint32_t retries)
{
	return submit_spec(fc, msgid, is_map, n, chunksize, retries, false);
}

/* Worker i reports its whole chunk done: every item 0, no error. */
static void finish(unsigned i)
{
	static uint8_t results[4096], errors[1] = { 0x90 };
	struct chunk ck = fw[i].ck;
	struct wmsg_result res = { .results = results, .n_results = ck.count,
				   .errors = errors, .errors_len = 1 };

	ck_assert(fw[i].busy);
	ck_assert_uint_lt(ck.count, 4000);
	results[0] = 0xdc;
	results[1] = (uint8_t)(ck.count >> 8);
	results[2] = (uint8_t)ck.count;
	memset(results + 3, 0, ck.count);
	res.results_len = 3 + ck.count;
	fw[i].busy = false;
	disp_chunk_done(&ck, &res, NULL);
}

/* ---- turns ----------------------------------------------------------------- */

/* One connection with three maps, another with one: the second has every
 * other turn, and the first's turns go round its maps. */
START_TEST(turns_across_connections_then_jobs)
{
	struct fake_client a = { .uid = 1 }, b = { .uid = 1 };
	unsigned b_runs = 0, last_b = 0;
	uint64_t next_a = 1;

	setup(1);
	/* All queued before the worker is free, so the turns start afresh. */
	fw[0].busy = true;
	for (uint64_t m = 1; m <= 3; m++)
		submit(&a, m, true, 8, 1, 0);
	submit(&b, 1, true, 4, 1, 0);
	fw[0].busy = false;
	disp_schedule();
	while (n_runs < 28)
		finish(0);
	for (unsigned i = 0; i < n_runs; i++) {
		if (runs[i].client == &b) {
			b_runs++;
			last_b = i;
			continue;
		}
		/* a's turns: map 1, 2, 3, 1, ... */
		ck_assert_uint_eq(runs[i].msgid, next_a);
		next_a = next_a % 3 + 1;
	}
	ck_assert_uint_eq(b_runs, 4);
	/* b every other run: 1, 3, 5, 7. */
	ck_assert_uint_eq(last_b, 7);
	ck_assert_uint_eq(b.maps_done, 1);
}
END_TEST

/* uid 1 on two connections and uid 2 on one: uid 2 has every other turn. */
START_TEST(turns_across_uids_first)
{
	struct fake_client a1 = { .uid = 1 }, a2 = { .uid = 1 }, b = { .uid = 2 };
	unsigned b_runs = 0;

	setup(1);
	submit(&a1, 1, true, 8, 1, 0);
	submit(&a2, 1, true, 8, 1, 0);
	submit(&b, 1, true, 8, 1, 0);
	for (unsigned i = 1; i <= 16; i++) {
		finish(0);
		b_runs += runs[n_runs - 1].client == &b;
		ck_assert_uint_ge(b_runs, i / 2);
	}
	ck_assert_uint_eq(b_runs, 8);
}
END_TEST

/* A backlogged client's work waits; the others' goes on. */
START_TEST(backlogged_client_waits)
{
	struct fake_client a = { .uid = 1, .backlogged = true }, b = { .uid = 2 };

	setup(1);
	submit(&a, 1, true, 4, 1, 0);
	ck_assert_uint_eq(n_runs, 0);
	submit(&b, 1, true, 2, 1, 0);
	finish(0);
	finish(0);
	ck_assert(!fw[0].busy);
	for (unsigned i = 0; i < n_runs; i++)
		ck_assert_ptr_eq(runs[i].client, &b);
	a.backlogged = false;
	disp_schedule();
	ck_assert_ptr_eq(runs[n_runs - 1].client, &a);
}
END_TEST

/* ---- batches ----------------------------------------------------------------- */

/* While another client waits, no batch forms: the clients take turns, one
 * apply each, and the batch comes once the other client is served.  (A
 * client that comes later joins the back of the turns, behind one that had
 * its turn already: b waits for one apply of a's, not for a's backlog.) */
START_TEST(batch_never_holds_another_clients_apply)
{
	struct fake_client a = { .uid = 1 }, b = { .uid = 1 };

	setup(2);
	submit(&a, 1, false, 1, 0, 0);
	submit(&a, 2, false, 1, 0, 0);
	for (uint64_t m = 3; m < 23; m++)
		submit(&a, m, false, 1, 0, 0);
	submit(&b, 1, false, 1, 0, 0);
	ck_assert_uint_eq(n_runs, 2);
	finish(0);
	ck_assert_ptr_eq(runs[2].client, &a);
	ck_assert(!runs[2].batch);
	finish(1);
	ck_assert_ptr_eq(runs[3].client, &b);
	ck_assert(!runs[3].batch);
	/* b answered; a alone now: a batch, Python's share of a's 19. */
	finish(1);
	ck_assert_uint_eq(b.applies_done, 1);
	ck_assert_ptr_eq(runs[4].client, &a);
	ck_assert(runs[4].batch);
	ck_assert_uint_eq(runs[4].count, 3);        /* ceil(19 / (4 * 2)) */
	while (a.applies_done < 22) {
		for (unsigned i = 0; i < 2; i++)
			if (fw[i].busy)
				finish(i);
	}
	ck_assert_uint_eq(disp_active(), 0);
}
END_TEST

/* ---- chunks ------------------------------------------------------------------ */

START_TEST(chunk_cut_to_quota)
{
	struct fake_client a = { .uid = 1 };

	setup(1);
	fw[0].quota = 3;
	submit(&a, 1, true, 10, 5, 0);
	ck_assert_uint_eq(runs[0].count, 3);
	fw[0].quota = 0;
	finish(0);
	ck_assert_uint_eq(runs[1].count, 5);
	finish(0);
	ck_assert_uint_eq(runs[2].count, 2);
	finish(0);
	ck_assert_uint_eq(a.items_out, 10);
	ck_assert_uint_eq(a.maps_done, 1);
}
END_TEST

/* Ordered: a chunk that ends before the ones ahead of it waits for them. */
START_TEST(ordering_buffer)
{
	struct fake_client a = { .uid = 1 };

	setup(2);
	submit(&a, 1, true, 4, 2, 0);
	ck_assert_uint_eq(n_runs, 2);
	finish(1);                                 /* items 2, 3 */
	ck_assert_uint_eq(a.n_firsts, 0);
	finish(0);                                 /* items 0, 1: both go */
	ck_assert_uint_eq(a.n_firsts, 2);
	ck_assert_uint_eq(a.firsts[0], 0);
	ck_assert_uint_eq(a.firsts[1], 2);
	ck_assert_uint_eq(a.maps_done, 1);
}
END_TEST

/* A lost chunk reruns while retries last, then its items fail. */
START_TEST(lost_chunk_retries_then_fails)
{
	struct fake_client a = { .uid = 1 };
	struct chunk ck;

	setup(1);
	submit(&a, 1, true, 3, 3, 1);
	ck = fw[0].ck;
	fw[0].busy = false;
	disp_chunk_lost(&ck, MPOOL_E_WORKER, "worker 1 killed by SIGKILL");
	ck_assert_uint_eq(n_runs, 2);
	ck_assert_uint_eq(fw[0].ck.attempt, 1);
	ck_assert_uint_eq(fw[0].ck.count, 3);
	ck = fw[0].ck;
	fw[0].busy = false;
	disp_chunk_lost(&ck, MPOOL_E_WORKER, "worker 2 killed by SIGKILL");
	ck_assert_uint_eq(n_runs, 2);
	ck_assert_uint_eq(a.failed, 3);
	ck_assert_uint_eq(a.maps_done, 1);
}
END_TEST

/* Cancel answers at once; the running chunk's results are dropped. */
START_TEST(cancel_drops_running_results)
{
	struct fake_client a = { .uid = 1 };
	struct job *job;

	setup(1);
	job = submit(&a, 1, true, 6, 2, 0);
	disp_cancel(job, MPOOL_E_CANCELLED, "cancelled by its client");
	ck_assert_int_eq(a.fail_code, MPOOL_E_CANCELLED);
	ck_assert_uint_eq(disp_active(), 1);        /* its chunk still runs */
	finish(0);
	ck_assert_uint_eq(a.items_out, 0);
	ck_assert_uint_eq(n_runs, 1);
	ck_assert_uint_eq(disp_active(), 0);
}
END_TEST

/* Stream credit: room up to the window at once; a first part that fills
 * the window gets its first credit as its results go out. */
START_TEST(stream_credit)
{
	struct fake_client a = { .uid = 1 }, b = { .uid = 1 };

	setup(1);
	cfg.stream_window = 16;
	submit_spec(&a, 1, true, 4, 4, 0, true);
	ck_assert_uint_eq(a.credits, 1);
	ck_assert_uint_eq(a.credit, 16 - 4);       /* the first part counts in the window */
	fw[0].busy = true;
	submit_spec(&b, 1, true, 16, 4, 0, true);
	ck_assert_uint_eq(b.credits, 0);
	fw[0].busy = false;
	disp_schedule();
	while (b.credits == 0 && n_runs < 16)
		finish(0);
	ck_assert_uint_gt(b.credits, 0);
	ck_assert_uint_gt(b.items_out, 0);
}
END_TEST

static unsigned takes;

static uint8_t *take_copy(void *ctx, const uint8_t *p, size_t len)
{
	ck_assert_ptr_eq(ctx, &takes);
	takes++;
	return memcpy(malloc(len), p, len);
}

/* Large results are adopted through the buffer the caller names, small
 * ones copied; no global hands buffers around. */
START_TEST(large_results_adopted_through_their_buffer)
{
	struct fake_client a = { .uid = 1 };
	struct disp_results_buf buf = { take_copy, &takes };
	size_t big = DISP_ADOPT_MIN + 16;
	uint8_t *results = calloc(1, big + 6), errors[1] = { 0x90 };
	struct wmsg_result res = { .results = results, .results_len = big + 6, .n_results = 1,
				   .errors = errors, .errors_len = 1 };
	struct chunk ck;

	setup(1);
	submit(&a, 1, true, 2, 1, 0);
	results[0] = 0x91;                         /* [bin32 of big bytes] */
	results[1] = 0xc6;
	results[2] = (uint8_t)(big >> 24);
	results[3] = (uint8_t)(big >> 16);
	results[4] = (uint8_t)(big >> 8);
	results[5] = (uint8_t)big;
	ck = fw[0].ck;
	fw[0].busy = false;
	disp_chunk_done(&ck, &res, &buf);
	ck_assert_uint_eq(takes, 1);
	ck_assert_uint_eq(a.owned, 1);
	ck = fw[0].ck;
	fw[0].busy = false;
	res.results_len = 2;
	results[1] = 0x00;
	disp_chunk_done(&ck, &res, &buf);
	ck_assert_uint_eq(takes, 1);
	ck_assert_uint_eq(a.items_out, 2);
	free(results);
}
END_TEST

/* ---- the queued-chunk limit ----------------------------------------------------- */

START_TEST(queued_chunks_share_per_uid)
{
	struct fake_client a = { .uid = 5 };
	char why[256];

	setup(0);
	cfg.max_queued_chunks = 100;
	cfg.max_queued_chunks_per_uid = 50;
	cfg.admin_queued_chunks = 20;
	submit(&a, 1, true, 50, 1, 0);
	ck_assert_uint_eq(disp_chunks_queued(), 50);
	ck_assert_int_eq(disp_queue_check(5, false, 1, why, sizeof(why)), -ENOSPC);
	ck_assert(strstr(why, "--max-queued-chunks-per-uid"));
	ck_assert_int_eq(disp_queue_check(6, false, 30, why, sizeof(why)), 0);
	ck_assert_int_eq(disp_queue_check(6, false, 31, why, sizeof(why)), -ENOSPC);
	ck_assert(strstr(why, "kept for admins"));
	ck_assert_int_eq(disp_queue_check(0, true, 50, why, sizeof(why)), 0);
	ck_assert_int_eq(disp_queue_check(0, true, 51, why, sizeof(why)), -ENOSPC);
	ck_assert(strstr(why, "--max-queued-chunks;"));
}
END_TEST

/* A streamed map's feed is checked by the dispatcher itself: past its
 * credit it is a protocol error, past the queued-chunk share a limit; the
 * job fails either way and lets go of what it queued. */
START_TEST(feed_checks_credit_and_queue_limit)
{
	struct fake_client a = { .uid = 1 }, b = { .uid = 1 };
	uint8_t items[32];
	const uint8_t *it;
	const size_t *marks;
	size_t len;
	struct mp_cur c;
	struct job *job;

	setup(0);                                  /* nothing runs: all stays queued */
	cfg.stream_window = 16;
	cfg.max_queued_chunks_per_uid = 6;
	job = submit_spec(&a, 1, true, 4, 1, 0, true);
	ck_assert_uint_eq(disp_chunks_queued(), 4);
	memset(items, 0x07, sizeof(items));
	mp_cur_init(&c, items, 3);
	ck_assert_int_eq(disp_walk_items(&c, 3, &it, &len, &marks), 0);
	ck_assert_int_eq(disp_feed(job, it, len, 3, marks, false), -ENOSPC);
	ck_assert_int_eq(a.fail_code, MPOOL_E_LIMIT);
	ck_assert_uint_eq(disp_chunks_queued(), 0);
	ck_assert_uint_eq(disp_active(), 0);

	cfg.max_queued_chunks_per_uid = 1000;
	job = submit_spec(&b, 1, true, 2, 1, 0, true);
	ck_assert_uint_eq(b.credit, 14);
	mp_cur_init(&c, items, 15);
	ck_assert_int_eq(disp_walk_items(&c, 15, &it, &len, &marks), 0);
	ck_assert_int_eq(disp_feed(job, it, len, 15, marks, false), -EPROTO);
	ck_assert_int_eq(b.fail_code, MPOOL_E_BADREQ);
	ck_assert_uint_eq(disp_chunks_queued(), 0);
	ck_assert_uint_eq(disp_active(), 0);
}
END_TEST

/* A batch's worker dies: the member it was running fails, the others
 * were never started and run again, and nothing else is lost. */
START_TEST(lost_batch_fails_one_and_requeues_the_rest)
{
	struct fake_client a = { .uid = 1 };
	struct chunk ck;

	setup(1);
	for (uint64_t m = 1; m <= 21; m++)
		submit(&a, m, false, 1, 0, 0);
	ck_assert(!runs[0].batch);
	finish(0);
	ck_assert(runs[1].batch);
	ck_assert_uint_eq(runs[1].count, 5);       /* ceil(20 / (4 * 1)) */
	ck = fw[0].ck;
	fw[0].busy = false;
	disp_chunk_lost(&ck, MPOOL_E_WORKER, "worker 1 killed by SIGSEGV");
	ck_assert_uint_eq(a.applies_done, 2);
	ck_assert_uint_eq(a.failed, 1);
	ck_assert_uint_eq(n_runs, 3);
	while (fw[0].busy)
		finish(0);
	ck_assert_uint_eq(a.applies_done, 21);
	ck_assert_uint_eq(a.failed, 1);
	ck_assert_uint_eq(disp_active(), 0);
	ck_assert_uint_eq(disp_chunks_queued(), 0);
}
END_TEST

/* The client left with a chunk running: nothing more is queued, the
 * chunk is killed, its results are dropped, and the job is freed when it
 * ends. */
START_TEST(detach_drops_queue_and_running_results)
{
	struct fake_client a = { .uid = 1 };
	struct job *job;

	setup(1);
	job = submit(&a, 1, true, 6, 2, 0);
	ck_assert_uint_eq(disp_chunks_queued(), 2);
	kills = 0;
	disp_detach(job);
	ck_assert_uint_eq(kills, 1);
	ck_assert_uint_eq(disp_chunks_queued(), 0);
	ck_assert_uint_eq(disp_active(), 1);
	finish(0);
	ck_assert_uint_eq(a.items_out, 0);
	ck_assert_uint_eq(n_runs, 1);
	ck_assert_uint_eq(disp_active(), 0);
}
END_TEST

/* No worker can start: every job with work waiting fails at once. */
START_TEST(fail_queued_fails_every_waiting_job)
{
	struct fake_client a = { .uid = 1 }, b = { .uid = 2 };

	setup(0);
	submit(&a, 1, true, 4, 1, 0);
	submit(&a, 2, false, 1, 0, 0);
	submit(&b, 1, true, 4, 2, 0);
	ck_assert_uint_eq(disp_active(), 3);
	disp_fail_queued(MPOOL_E_UNAVAILABLE, "no worker could be started");
	ck_assert_int_eq(a.fail_code, MPOOL_E_UNAVAILABLE);
	ck_assert_int_eq(b.fail_code, MPOOL_E_UNAVAILABLE);
	ck_assert_uint_eq(disp_active(), 0);
	ck_assert_uint_eq(disp_chunks_queued(), 0);
	ck_assert(!disp_has_queued());
}
END_TEST

/* The hand-off between the pool and the dispatcher (disp.h): a part moves
 * the chunk on and starts no work, even with a worker idle; the chunk's
 * end starts the next chunks at once, on the worker that reported it too. */
START_TEST(part_starts_nothing_done_schedules)
{
	struct fake_client a = { .uid = 1 };
	static uint8_t one[2] = { 0x91, 0x00 }, none[1] = { 0x90 };
	struct wmsg_result res = { .results = one, .results_len = 2, .n_results = 1,
				   .errors = none, .errors_len = 1 };

	setup(2);
	fw[1].busy = true;
	submit(&a, 1, true, 6, 2, 0);
	ck_assert_uint_eq(n_runs, 1);
	fw[1].busy = false;                        /* idle, unknown to the dispatcher */
	disp_chunk_part(&fw[0].ck, &res, NULL);
	ck_assert_uint_eq(n_runs, 1);
	ck_assert_uint_eq(a.items_out, 1);
	ck_assert_uint_eq(fw[0].ck.first, 1);
	ck_assert_uint_eq(fw[0].ck.count, 1);
	finish(0);
	ck_assert_uint_eq(a.items_out, 2);
	ck_assert_uint_eq(n_runs, 3);
	ck_assert(fw[0].busy && fw[1].busy);
}
END_TEST

/* ---- the cluster's outlet ------------------------------------------------- */

/* Local workers first; what they leave of a shared job goes to the outlet
 * while it has room; a job that is not shared never goes out. */
START_TEST(outlet_takes_what_workers_leave_of_shared_jobs)
{
	struct fake_client a = { .uid = 1 }, b = { .uid = 2 };
	struct wmsg_result res = { 0 };
	uint8_t results[8] = { 0x92, 0, 0 }, errors[1] = { 0x90 };
	struct chunk ck, second;

	setup(1);
	outlet_cap = 2;
	submit(&b, 1, true, 8, 2, 0);           /* local only: 4 chunks */
	next_shared = true;
	submit(&a, 1, true, 8, 2, 0);           /* shared: 4 chunks */
	next_shared = false;
	ck_assert_uint_eq(n_runs, 1);           /* the one worker */
	ck_assert_uint_eq(outlet_n, 2);         /* the outlet's room, from a only */
	ck_assert_ptr_eq(FC(disp_job_conn(outlet_ck[0].job)), &a);
	ck_assert_ptr_eq(FC(disp_job_conn(outlet_ck[1].job)), &a);
	/* The outlet answers its chunks like a worker. */
	res.results = results;
	res.results_len = 3;
	res.n_results = 2;
	res.errors = errors;
	res.errors_len = 1;
	ck = outlet_ck[0];
	second = outlet_ck[1];
	outlet_n = 0;
	disp_chunk_done(&ck, &res, NULL);
	ck_assert_uint_eq(outlet_n, 2);         /* its room taken again at once */
	/* A lost outlet chunk is retried within the request's retries, like
	 * a worker's (none here: its items fail). */
	disp_chunk_lost(&second, MPOOL_E_WORKER, "node c was lost");
	ck_assert_uint_eq(a.failed, 2);
}
END_TEST

/* A shared job whose function this node lacks never goes to a local
 * worker, and a departing client's chunks out are stopped. */
START_TEST(remote_only_jobs_skip_local_workers)
{
	struct fake_client a = { .uid = 1 };
	struct job *job;

	setup(2);
	outlet_cap = 1;
	next_shared = next_remote_only = true;
	job = submit(&a, 1, true, 6, 2, 0);
	next_shared = next_remote_only = false;
	ck_assert_uint_eq(n_runs, 0);
	ck_assert_uint_eq(outlet_n, 1);
	kills = 0;
	disp_detach(job);
	ck_assert_uint_eq(kills, 1);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("disp");
	TCase *tc = tcase_create("chunks");
	SRunner *sr;
	int failed;

	tcase_add_test(tc, auto_chunksize_follows_python);
	tcase_add_test(tc, auto_chunksize_is_capped);
	tcase_add_test(tc, take_is_bounded_by_items_and_quota);
	tcase_add_test(tc, quota_is_never_exceeded);
	suite_add_tcase(s, tc);
	tc = tcase_create("alone");
	tcase_add_test(tc, turns_across_connections_then_jobs);
	tcase_add_test(tc, turns_across_uids_first);
	tcase_add_test(tc, backlogged_client_waits);
	tcase_add_test(tc, batch_never_holds_another_clients_apply);
	tcase_add_test(tc, chunk_cut_to_quota);
	tcase_add_test(tc, ordering_buffer);
	tcase_add_test(tc, lost_chunk_retries_then_fails);
	tcase_add_test(tc, cancel_drops_running_results);
	tcase_add_test(tc, stream_credit);
	tcase_add_test(tc, large_results_adopted_through_their_buffer);
	tcase_add_test(tc, queued_chunks_share_per_uid);
	tcase_add_test(tc, feed_checks_credit_and_queue_limit);
	tcase_add_test(tc, lost_batch_fails_one_and_requeues_the_rest);
	tcase_add_test(tc, detach_drops_queue_and_running_results);
	tcase_add_test(tc, fail_queued_fails_every_waiting_job);
	tcase_add_test(tc, part_starts_nothing_done_schedules);
	tcase_add_test(tc, outlet_takes_what_workers_leave_of_shared_jobs);
	tcase_add_test(tc, remote_only_jobs_skip_local_workers);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
