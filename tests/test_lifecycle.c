/* test_lifecycle: fault tolerance of mpoold's worker lifecycle, driven by
 * tests/testmod.c, a task module that crashes, aborts, exits, hangs or
 * grows on request.  Worker deaths (signals, exit, a lost chunk's retries),
 * timeouts, failing module init and fork failure (backoff, degraded health,
 * queued work failing with 'unavailable'), recycling (tasks with jitter,
 * RSS, lifetime), reload (no task lost; modules reopened), the drain
 * method, initargs and modules mpoold must refuse.
 *
 * Every test starts its own mpoold (fixture.h, or faultfx.h for a pool that
 * never becomes healthy) and leaves no process behind.  Nothing sleeps to
 * synchronise: a test that needs a worker to be in the middle of something
 * makes it hang there (testmod.hang, "hang_once:PATH") and waits for the
 * status to show it.  No assertion measures time, except that backoff
 * keeps a failing pool far below a fork storm.
 *
 * Loops over items use REQUIRE (fixture.h), not ck_assert. */
#include <check.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "faultfx.h"
#include "fixture.h"

#define WAIT_MS FX_WAIT_MS

static const char *testmod(void)
{
	return ffx_env("MPOOL_TESTMOD");
}

/* ---- small helpers ---------------------------------------------------------- */

static void pidstr(char *buf, size_t size, pid_t pid)
{
	snprintf(buf, size, "worker %d ", (int)pid);
}

struct not_these {
	unsigned n_old;
	pid_t old[FX_MAX_WORKERS];
	unsigned want;           /* workers the pool must have */
	bool idle;               /* and all idle */
};

static void not_these_init(struct not_these *nt, const struct ffx_status *st, unsigned want,
			   bool idle)
{
	nt->n_old = st->n_workers;
	for (unsigned i = 0; i < st->n_workers; i++)
		nt->old[i] = st->workers[i].pid;
	nt->want = want;
	nt->idle = idle;
}

/* Every worker is new (none of nt->old), and the pool is full. */
static bool all_new(const struct ffx_status *st, void *arg)
{
	const struct not_these *nt = arg;

	if (st->n_workers != nt->want || ffx_count_state(st, "starting") > 0)
		return false;
	if (nt->idle && !ffx_pool_idle(st, nt->want))
		return false;
	for (unsigned i = 0; i < nt->n_old; i++)
		if (ffx_has_worker(st, nt->old[i]))
			return false;
	return true;
}

struct gone {
	pid_t pid;
	unsigned want;
};

/* pid is gone and the pool is full and idle again. */
static bool replaced(const struct ffx_status *st, void *arg)
{
	const struct gone *g = arg;

	return !ffx_has_worker(st, g->pid) && ffx_pool_idle(st, g->want);
}

static bool pool_full_idle2(const struct ffx_status *st, void *arg)
{
	(void)arg;
	return ffx_pool_idle(st, 2);
}

static bool one_busy(const struct ffx_status *st, void *arg)
{
	(void)arg;
	return st->jobs_active >= 1 && ffx_count_state(st, "busy") == 1 && st->n_workers == 2;
}

/* A map client's job is under way: at least min tasks done. */
struct progress {
	uint64_t min_tasks;
};

static bool map_under_way(const struct ffx_status *st, void *arg)
{
	const struct progress *p = arg;

	return st->jobs_active >= 1 && st->tasks_done >= p->min_tasks;
}

static pid_t the_idle_worker(const struct ffx_status *st)
{
	for (unsigned i = 0; i < st->n_workers; i++)
		if (strcmp(st->workers[i].state, "idle") == 0)
			return st->workers[i].pid;
	return 0;
}

/* mpoold's fork server (daemon/forksrv.h): its child named mpool-forksrv, or
 * 0 when it has none. */
static pid_t forksrv_of(pid_t daemon)
{
	DIR *d = opendir("/proc");
	struct dirent *e;
	pid_t found = 0;

	REQUIRE(d != NULL);
	while (!found && (e = readdir(d)) != NULL) {
		char path[300], line[512], *close_paren;
		int ppid;
		FILE *f;

		if (e->d_name[0] < '1' || e->d_name[0] > '9')
			continue;
		snprintf(path, sizeof(path), "/proc/%s/stat", e->d_name);
		f = fopen(path, "re");
		if (!f)
			continue;
		if (fgets(line, sizeof(line), f) && (close_paren = strrchr(line, ')')) != NULL &&
		    strstr(line, "(mpool-forksrv)") && sscanf(close_paren + 2, "%*c %d", &ppid) == 1 &&
		    ppid == daemon)
			found = (pid_t)atoi(e->d_name);
		fclose(f);
	}
	closedir(d);
	return found;
}

/* ---- forked clients --------------------------------------------------------- */

struct sleeper {
	struct fx *fx;
	const char *fn;          /* "builtin.sleep" or "testmod.sleep" */
	uint64_t n, ms;
	uint32_t chunksize;
};

/* Maps n sleeps of ms; every item must come back as ms.  Exit 0 when all
 * did (a failure inside exits 90 through the fixture). */
static int sleep_map_client(void *arg)
{
	struct sleeper *s = arg;
	mpool *c = fx_connect(s->fx);
	struct ffx_map m = { 0 };
	struct mpool_map_summary sum;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	int r;

	fx_sbuf_init(&sb, &pk);
	fx_pack_repeat(&pk, (int64_t)s->ms, s->n);
	r = ffx_map_run(c, s->fn, &sb, s->n, &(struct mpool_map_opts)MPOOL_MAP_OPTS(.chunksize = s->chunksize),
			&m, &sum);
	REQUIREF(r == 0, "the map of %llu sleeps: %s: %s", (unsigned long long)s->n,
		 mpool_strerror(-r), mpool_errmsg(c));
	for (uint64_t i = 0; i < s->n; i++)
		REQUIREF(m.items[i].code == 0 && m.items[i].type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
			 m.items[i].i == (int64_t)s->ms, "item %llu: code %d (%s: %s), value %lld",
			 (unsigned long long)i, m.items[i].code, mpool_strerror(m.items[i].code),
			 m.items[i].msg, (long long)m.items[i].i);
	REQUIREF(sum.failed == 0, "%llu items failed", (unsigned long long)sum.failed);
	ffx_map_free(&m);
	msgpack_sbuffer_destroy(&sb);
	mpool_close(c);
	return 0;
}

/* One apply of testmod.sleep 400 that must succeed. */
static int apply_sleep_client(void *arg)
{
	struct fx *fx = arg;
	mpool *c = fx_connect(fx);
	mpool_value *v = NULL;
	int r = ffx_apply_int(c, "testmod.sleep", 400, 0, &v);

	REQUIREF(r == 0, "the parallel apply failed: %s: %s", mpool_strerror(-r), mpool_errmsg(c));
	REQUIREF(fx_obj_u64(mpool_value_get(v)) == 400, "the parallel apply returned the wrong value");
	mpool_value_free(v);
	mpool_close(c);
	return 0;
}

/* ==== 1. a worker SIGKILLed in the middle of a chunk ========================== */

struct sniper {
	struct fx *fx;
	mpool *b;                /* a second connection, for status */
	uint64_t after;          /* kill once items 0..after-1 arrived */
	pid_t victim;
	uint64_t victim_done;    /* its tasks_done when killed */
};

/* Items 0..after-1 are in: the worker running chunk 0 is stuck in item
 * `after` (a hang).  The other worker finishes its chunk and idles, so it
 * is the only busy one.  Kill it. */
static void snipe_the_hung_worker(struct ffx_map *m, uint64_t first, uint32_t count)
{
	struct sniper *s = m->ud;
	int64_t end = fx_now_ms() + WAIT_MS;
	struct ffx_status st;
	char desc[1024];

	if (s->victim || first + count < s->after)
		return;
	for (;; fx_tick()) {
		ffx_status(s->fx, s->b, &st);
		if (ffx_count_state(&st, "busy") == 1)
			break;
		FREQUIRE(s->fx, fx_now_ms() < end, "never exactly one busy worker: %s",
			 ffx_describe(&st, desc, sizeof(desc)));
	}
	for (unsigned i = 0; i < st.n_workers; i++)
		if (strcmp(st.workers[i].state, "busy") == 0) {
			s->victim = st.workers[i].pid;
			s->victim_done = st.workers[i].tasks_done;
		}
	REQUIRE(kill(s->victim, SIGKILL) == 0);
}

/* 16 items of testmod.mixed in chunks of 8: chunk 0 is 30, 30, 30, then a
 * hang, then 10 x 4; chunk 1 is 10 x 8.  Each 30 ms item outlasts the 20 ms
 * reporting period, so items 0..2 are reported before the hang starts.
 * _i 0: no retries -- items 3..7 fail with worker_died naming the pid and
 * SIGKILL, 0..2 keep their results.  _i 1: retries 1 and a hang that
 * happens once -- the rerun finishes the chunk, nothing fails. */
START_TEST(sigkill_mid_chunk_keeps_reported_items)
{
	const bool retry = _i == 1;
	struct fx fx;
	struct sniper s = { 0 };
	struct ffx_map m = { 0 };
	struct mpool_map_summary sum;
	struct ffx_status st;
	struct gone g;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	char dir[96], who[32];
	const char *args[] = { "--module", testmod(), NULL };
	int r;

	ffx_tempdir(dir, sizeof(dir));
	fx_start(&fx, args);
	s.fx = &fx;
	s.b = fx_connect(&fx);
	s.after = 3;
	fx_sbuf_init(&sb, &pk);
	fx_pack_repeat(&pk, 30, 3);
	if (retry)
		ffx_pack_cmd(&pk, "hang_once:%s/hung", dir);
	else
		ffx_pack_cmd(&pk, "hang");
	fx_pack_repeat(&pk, 10, 4 + 8);
	m.on_piece = snipe_the_hung_worker;
	m.ud = &s;
	r = ffx_map_run(fx.c, "testmod.mixed", &sb, 16,
			&(struct mpool_map_opts)MPOOL_MAP_OPTS(.chunksize = 8, .retries = retry ? 1 : 0), &m, &sum);
	REQUIREF(r == 0, "a map that lost a worker must still complete: %s: %s", mpool_strerror(-r),
		 mpool_errmsg(fx.c));
	REQUIREF(s.victim > 0, "no worker was killed");
	REQUIREF(s.victim_done == 3, "the hung worker had reported %llu items, expected 3",
		 (unsigned long long)s.victim_done);
	pidstr(who, sizeof(who), s.victim);
	for (uint64_t i = 0; i < 16; i++) {
		const struct ffx_item *it = &m.items[i];

		if (i < 3) {
			REQUIREF(it->code == 0 && it->i == 30,
				 "item %llu, reported before the kill, lost its result: code %d (%s)",
				 (unsigned long long)i, it->code, it->msg);
		} else if (i < 8 && !retry) {
			REQUIREF(it->code == -MPOOL_E_WORKER && it->type == MSGPACK_OBJECT_NIL,
				 "item %llu of the killed chunk: code %d (%s), expected worker_died",
				 (unsigned long long)i, it->code, mpool_strerror(it->code));
			REQUIREF(strstr(it->msg, who) && strstr(it->msg, "killed by SIGKILL"),
				 "item %llu: '%s' should say '%skilled by SIGKILL'", (unsigned long long)i,
				 it->msg, who);
		} else if (i == 3) {
			REQUIREF(it->code == 0 && it->type == MSGPACK_OBJECT_STR &&
				 strncmp(it->s, "hang_once:", 10) == 0,
				 "item 3, rerun after the kill: code %d (%s: %s)", it->code,
				 mpool_strerror(it->code), it->msg);
		} else {
			REQUIREF(it->code == 0 && it->i == 10, "item %llu: code %d (%s: %s), value %lld",
				 (unsigned long long)i, it->code, mpool_strerror(it->code), it->msg,
				 (long long)it->i);
		}
	}
	REQUIREF(sum.failed == (retry ? 0u : 5u), "%llu items failed, expected %u",
		 (unsigned long long)sum.failed, retry ? 0 : 5);
	if (retry)
		REQUIREF(fx_log_has(&fx, "rerunning items 3..7"),
			 "the log does not show the rerun of items 3..7");

	/* A replacement took the dead worker's place. */
	g = (struct gone){ s.victim, 2 };
	ffx_wait(&fx, replaced, &g, WAIT_MS, "the killed worker replaced", &st);
	REQUIREF(st.workers_died == 1 && st.workers_started == 3,
		 "workers_died %llu, workers_started %llu after one kill",
		 (unsigned long long)st.workers_died, (unsigned long long)st.workers_started);
	ffx_map_free(&m);
	msgpack_sbuffer_destroy(&sb);
	mpool_close(s.b);
	fx_stop(&fx);
}
END_TEST

struct random_sniper {
	struct fx *fx;
	mpool *b;
	pid_t victim;
};

/* At the first piece, kill whichever worker is busy. */
static void snipe_a_busy_worker(struct ffx_map *m, uint64_t first, uint32_t count)
{
	struct random_sniper *s = m->ud;
	int64_t end = fx_now_ms() + WAIT_MS;
	struct ffx_status st;

	(void)first;
	(void)count;
	if (s->victim)
		return;
	for (;; fx_tick()) {
		ffx_status(s->fx, s->b, &st);
		for (unsigned i = 0; i < st.n_workers && !s->victim; i++)
			if (strcmp(st.workers[i].state, "busy") == 0)
				s->victim = st.workers[i].pid;
		if (s->victim)
			break;
		FREQUIRE(s->fx, fx_now_ms() < end, "no busy worker to kill");
	}
	REQUIRE(kill(s->victim, SIGKILL) == 0);
}

/* 40 x testmod.sleep 30 in chunks of 8; a busy worker is SIGKILLed at the
 * first result.  Where in its chunk it was is up to the scheduler, so the
 * test checks the shape: the failed items are the tail of one chunk, all
 * worker_died naming the pid.  With retries 1 nothing fails. */
START_TEST(sigkill_during_sleep_map)
{
	const bool retry = _i == 1;
	const uint64_t n = 40, chunk = 8;
	struct fx fx;
	struct random_sniper s = { 0 };
	struct ffx_map m = { 0 };
	struct mpool_map_summary sum;
	struct ffx_status st;
	struct gone g;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	char who[32];
	const char *args[] = { "--module", testmod(), NULL };
	uint64_t first_failed = n, n_failed = 0;
	int r;

	fx_start(&fx, args);
	s.fx = &fx;
	s.b = fx_connect(&fx);
	fx_sbuf_init(&sb, &pk);
	fx_pack_repeat(&pk, 30, n);
	m.on_piece = snipe_a_busy_worker;
	m.ud = &s;
	r = ffx_map_run(fx.c, "testmod.sleep", &sb, n,
			&(struct mpool_map_opts)MPOOL_MAP_OPTS(.chunksize = (uint32_t)chunk,
						  .retries = retry ? 1 : 0), &m, &sum);
	REQUIREF(r == 0, "%s: %s", mpool_strerror(-r), mpool_errmsg(fx.c));
	REQUIREF(s.victim > 0, "no worker was killed");
	pidstr(who, sizeof(who), s.victim);
	for (uint64_t i = 0; i < n; i++) {
		const struct ffx_item *it = &m.items[i];

		if (it->code == 0) {
			REQUIREF(it->i == 30, "item %llu: %lld", (unsigned long long)i, (long long)it->i);
			continue;
		}
		REQUIREF(!retry, "item %llu failed although retries were allowed: %s: %s",
			 (unsigned long long)i, mpool_strerror(it->code), it->msg);
		REQUIREF(it->code == -MPOOL_E_WORKER && strstr(it->msg, who) &&
			 strstr(it->msg, "killed by SIGKILL"),
			 "item %llu: code %d (%s) '%s', expected worker_died naming '%s' and SIGKILL",
			 (unsigned long long)i, it->code, mpool_strerror(it->code), it->msg, who);
		if (first_failed == n)
			first_failed = i;
		n_failed++;
	}
	if (!retry) {
		/* The unreported tail of exactly one chunk. */
		REQUIREF(n_failed >= 1, "no item failed although a busy worker was killed");
		REQUIREF(first_failed / chunk == (first_failed + n_failed - 1) / chunk &&
			 (first_failed + n_failed) % chunk == 0,
			 "items %llu..%llu failed: not the unreported tail of one chunk of %llu",
			 (unsigned long long)first_failed,
			 (unsigned long long)(first_failed + n_failed - 1), (unsigned long long)chunk);
	} else {
		REQUIREF(sum.failed == 0, "%llu failed", (unsigned long long)sum.failed);
	}
	g = (struct gone){ s.victim, 2 };
	ffx_wait(&fx, replaced, &g, WAIT_MS, "the killed worker replaced", &st);
	REQUIREF(st.workers_died == 1, "workers_died %llu", (unsigned long long)st.workers_died);
	ffx_map_free(&m);
	msgpack_sbuffer_destroy(&sb);
	mpool_close(s.b);
	fx_stop(&fx);
}
END_TEST

/* ==== 2. crash, abort, exit, a signal: each named in the apply's error ======= */

START_TEST(apply_worker_deaths_are_named)
{
	static const struct {
		const char *fn;
		int64_t arg;
		const char *says;
	} cases[] = {
		{ "testmod.crash", 0, "killed by SIGSEGV" },
		{ "testmod.abort", 0, "killed by SIGABRT" },
		{ "testmod.kill", SIGTERM, "killed by SIGTERM" },
		{ "testmod.exit", 3, "exited with status 3" },
	};
	struct fx fx;
	struct ffx_status st;
	const char *args[] = { "--module", testmod(), NULL };

	fx_start(&fx, args);
	for (unsigned k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
		mpool_value *v = NULL;
		struct gone g;
		char who[32];
		pid_t child, victim;
		int r;

		/* The other worker runs a client's apply meanwhile. */
		child = fx_fork(apply_sleep_client, &fx);
		ffx_wait(&fx, one_busy, NULL, WAIT_MS, "the parallel apply running", &st);
		victim = the_idle_worker(&st);
		REQUIRE(victim > 0);
		r = ffx_apply_int(fx.c, cases[k].fn, cases[k].arg, 0, &v);
		REQUIREF(r == -MPOOL_E_WORKER, "%s: %d (%s: %s), expected worker_died", cases[k].fn, r,
			 mpool_strerror(-r), mpool_errmsg(fx.c));
		pidstr(who, sizeof(who), victim);
		REQUIREF(strstr(mpool_errmsg(fx.c), who) && strstr(mpool_errmsg(fx.c), cases[k].says),
			 "%s: the error '%s' should name '%s' and '%s'", cases[k].fn,
			 mpool_errmsg(fx.c), who, cases[k].says);
		/* A task's exit(3) is not a failed module init (3 is also the
		 * worker's own exit code for that). */
		REQUIREF(!strstr(mpool_errmsg(fx.c), "init"), "%s: the error '%s' blames a module init",
			 cases[k].fn, mpool_errmsg(fx.c));
		fx_expect_child_ok(child, WAIT_MS, "the apply running in parallel");
		g = (struct gone){ victim, 2 };
		ffx_wait(&fx, replaced, &g, WAIT_MS, "the dead worker replaced", &st);
		REQUIREF(st.workers_died == k + 1, "workers_died %llu after %u deaths",
			 (unsigned long long)st.workers_died, k + 1);
		REQUIREF(st.has_failure && strstr(st.last_failure, cases[k].says),
			 "last_failure '%s' should say '%s'", st.last_failure, cases[k].says);
	}
	/* The pool serves normally afterwards. */
	fx_map_squares(fx.c, 1000, 0, NULL, 0);
	ffx_status(&fx, NULL, &st);
	REQUIREF(strcmp(st.health, "ok") == 0, "health '%s' after task deaths (workers that were "
		 "ready and died in a task are not a start failure)", st.health);
	fx_stop(&fx);
}
END_TEST

/* ==== 2b. pipelined applies ride in batches; a crash in one costs no other ==== */

/* Packs testmod.mixed's argument: an integer (sleep ms) or a string. */
static void pack_mixed(msgpack_sbuffer *sb, int64_t ms, const char *s)
{
	msgpack_packer pk;

	sb->size = 0;
	msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
	if (s)
		msgpack_pack_str_with_body(&pk, s, strlen(s));
	else
		msgpack_pack_int64(&pk, ms);
}

START_TEST(batched_applies_survive_a_crash_among_them)
{
	enum { N = 60, CRASH = 23 };
	const char *args[] = { "--module", testmod(), NULL };
	mpool_async *busy[2], *a[N];
	msgpack_sbuffer sb;
	struct fx fx;
	int failed = 0;

	fx_start(&fx, args);
	msgpack_sbuffer_init(&sb);
	/* Both workers busy, so the next applies queue up and are batched. */
	for (int i = 0; i < 2; i++) {
		pack_mixed(&sb, 300, NULL);
		REQUIRE(mpool_apply_async(fx.c, "testmod.mixed", sb.data, sb.size, NULL, NULL, NULL,
					  NULL, &busy[i]) == 0);
	}
	for (int i = 0; i < N; i++) {
		pack_mixed(&sb, 2, i == CRASH ? "crash" : NULL);
		REQUIREF(mpool_apply_async(fx.c, "testmod.mixed", sb.data, sb.size, NULL, NULL, NULL,
					   NULL, &a[i]) == 0, "apply_async %d: %s", i, mpool_errmsg(fx.c));
	}
	for (int i = 0; i < N; i++) {
		const msgpack_object *o;
		int r = mpool_async_get(a[i], 20000, &o);

		if (i == CRASH) {
			REQUIREF(r == -MPOOL_E_WORKER && strstr(mpool_async_errmsg(a[i]), "SIGSEGV"),
				 "the crashing apply: %d (%s)", r, mpool_async_errmsg(a[i]));
			failed++;
		} else {
			REQUIREF(r == 0 && o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 == 2,
				 "apply %d beside the crash: %d (%s)", i, r,
				 r < 0 ? mpool_async_errmsg(a[i]) : "wrong result");
		}
		mpool_async_free(a[i]);
	}
	for (int i = 0; i < 2; i++) {
		const msgpack_object *o;

		REQUIRE(mpool_async_get(busy[i], 20000, &o) == 0);
		mpool_async_free(busy[i]);
	}
	REQUIRE(failed == 1);
	msgpack_sbuffer_destroy(&sb);
	fx_stop(&fx);
}
END_TEST

/* kill_worker: the item it ran fails with worker_died, and the message
 * names the signal, as the error table says. */
START_TEST(kill_worker_names_the_signal)
{
	const char *args[] = { "--module", testmod(), NULL };
	const msgpack_object *o;
	struct ffx_status st;
	pid_t busy = 0;
	mpool_async *a;
	msgpack_sbuffer sb;
	struct fx fx;
	mpool *admin;
	int r;

	fx_start(&fx, args);
	msgpack_sbuffer_init(&sb);
	pack_mixed(&sb, 20000, NULL);
	REQUIRE(mpool_apply_async(fx.c, "testmod.mixed", sb.data, sb.size, NULL, NULL, NULL, NULL,
				  &a) == 0);
	ffx_wait(&fx, one_busy, NULL, WAIT_MS, "the worker busy", &st);
	for (unsigned i = 0; i < st.n_workers; i++)
		if (strcmp(st.workers[i].state, "busy") == 0)
			busy = st.workers[i].pid;
	admin = fx_connect(&fx);
	r = mpool_kill_worker(admin, busy);
	REQUIREF(r == 0, "kill_worker: %d (%s)", r, mpool_errmsg(admin));
	r = mpool_async_get(a, 20000, &o);
	REQUIREF(r == -MPOOL_E_WORKER && strstr(mpool_async_errmsg(a), "SIGKILL"),
		 "the killed worker's apply: %d (%s)", r, mpool_async_errmsg(a));
	mpool_async_free(a);
	mpool_close(admin);
	msgpack_sbuffer_destroy(&sb);
	fx_stop(&fx);
}
END_TEST

/* ==== 3. an item that always crashes: retried up to the cap, then failed ===== */

START_TEST(crashing_item_exhausts_its_retries)
{
	struct fx fx;
	struct ffx_map m = { 0 };
	struct mpool_map_summary sum;
	struct ffx_status st;
	struct progress pr = { 1 };
	struct sleeper other;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	const char *args[] = { "--module", testmod(), NULL };
	pid_t child;
	int r;

	fx_start(&fx, args);
	/* A second client's map runs through the whole episode. */
	other = (struct sleeper){ &fx, "testmod.sleep", 150, 5, 2 };
	child = fx_fork(sleep_map_client, &other);
	ffx_wait(&fx, map_under_way, &pr, WAIT_MS, "the other client's map running", NULL);

	/* Item 5 crashes every time; 20 ms items are reported before the next
	 * one starts, so item 4 keeps its result and 5..7 are what is lost. */
	fx_sbuf_init(&sb, &pk);
	for (int i = 0; i < 20; i++) {
		if (i == 5)
			ffx_pack_cmd(&pk, "crash");
		else
			msgpack_pack_int64(&pk, 20);
	}
	r = ffx_map_run(fx.c, "testmod.mixed", &sb, 20,
			&(struct mpool_map_opts)MPOOL_MAP_OPTS(.chunksize = 4, .retries = 2), &m, &sum);
	REQUIREF(r == 0, "%s: %s", mpool_strerror(-r), mpool_errmsg(fx.c));
	for (uint64_t i = 0; i < 20; i++) {
		const struct ffx_item *it = &m.items[i];

		if (i >= 5 && i <= 7)
			REQUIREF(it->code == -MPOOL_E_WORKER && strstr(it->msg, "killed by SIGSEGV"),
				 "item %llu (unanswered when its chunk crashed): code %d (%s) '%s'",
				 (unsigned long long)i, it->code, mpool_strerror(it->code), it->msg);
		else
			REQUIREF(it->code == 0 && it->i == 20, "item %llu: code %d (%s) '%s'",
				 (unsigned long long)i, it->code, mpool_strerror(it->code), it->msg);
	}
	REQUIREF(sum.failed == 3, "%llu failed, expected items 5..7", (unsigned long long)sum.failed);
	REQUIREF(fx_log_has(&fx, "retry 2 of 2"), "the log shows no second retry");
	REQUIREF(!fx_log_has(&fx, "retry 3 of"), "a third retry with retries 2");

	fx_expect_child_ok(child, WAIT_MS, "the other client's map");
	ffx_wait(&fx, pool_full_idle2, NULL, WAIT_MS, "the pool full again", &st);
	REQUIREF(st.workers_died == 3, "workers_died %llu: expected the first run and 2 retries",
		 (unsigned long long)st.workers_died);
	ffx_map_free(&m);
	msgpack_sbuffer_destroy(&sb);
	fx_stop(&fx);
}
END_TEST

/* ==== 4. timeouts ============================================================= */

static void expect_timeout(struct fx *fx, const char *fn, unsigned n_timed_out)
{
	struct ffx_status before, st;
	mpool_value *v = NULL;
	int r;

	ffx_status(fx, NULL, &before);
	r = ffx_apply_int(fx->c, fn, 0, 200, &v);
	REQUIREF(r == -MPOOL_E_TIMEOUT, "%s with timeout_ms 200: %d (%s: %s), expected timeout", fn,
		 r, mpool_strerror(-r), mpool_errmsg(fx->c));
	REQUIREF(strstr(mpool_errmsg(fx->c), "200 ms"), "the timeout error does not name the "
		 "deadline: '%s'", mpool_errmsg(fx->c));
	/* Exactly one worker was replaced. */
	ffx_wait(fx, pool_full_idle2, NULL, WAIT_MS, "the pool full after a timeout", &st);
	REQUIREF(st.workers_started == before.workers_started + 1,
		 "workers_started %llu -> %llu: the hung worker was not replaced once",
		 (unsigned long long)before.workers_started, (unsigned long long)st.workers_started);
	REQUIREF(st.tasks_timed_out == n_timed_out, "tasks_timed_out %llu, expected %u",
		 (unsigned long long)st.tasks_timed_out, n_timed_out);
}

START_TEST(timeout_kills_hung_workers)
{
	struct fx fx;
	mpool_value *v = NULL;
	const char *args[] = { "--module", testmod(), NULL };
	int r;

	fx_start(&fx, args);
	expect_timeout(&fx, "testmod.hang", 1);
	/* SIGTERM blocked: only SIGKILL gets it. */
	expect_timeout(&fx, "testmod.hang_noterm", 2);
	/* Work within its deadline is unaffected. */
	r = ffx_apply_int(fx.c, "testmod.sleep", 20, 5000, &v);
	REQUIREF(r == 0 && fx_obj_u64(mpool_value_get(v)) == 20, "sleep 20 within 5000: %d (%s)", r,
		 mpool_errmsg(fx.c));
	mpool_value_free(v);
	fx_stop(&fx);
}
END_TEST

START_TEST(daemon_wide_task_timeout)
{
	struct fx fx;
	struct ffx_status st;
	mpool_value *v = NULL;
	const char *args[] = { "--module", testmod(), "--task-timeout", "200", NULL };
	int r;

	fx_start(&fx, args);
	r = ffx_apply_int(fx.c, "testmod.hang", 0, 0, &v);
	REQUIREF(r == -MPOOL_E_TIMEOUT, "hang under --task-timeout 200: %d (%s: %s)", r,
		 mpool_strerror(-r), mpool_errmsg(fx.c));
	/* A request's own timeout_ms wins over the daemon's. */
	r = ffx_apply_int(fx.c, "testmod.sleep", 500, 10000, &v);
	REQUIREF(r == 0 && fx_obj_u64(mpool_value_get(v)) == 500,
		 "sleep 500 with timeout_ms 10000 under --task-timeout 200: %d (%s: %s)", r,
		 mpool_strerror(-r), mpool_errmsg(fx.c));
	mpool_value_free(v);
	r = ffx_apply_int(fx.c, "testmod.sleep", 5, 0, &v);
	REQUIREF(r == 0, "a short sleep under --task-timeout 200: %d (%s)", r, mpool_errmsg(fx.c));
	mpool_value_free(v);
	/* timeout_ms 0, given, is no deadline at all: not the daemon's. */
	{
		const msgpack_object *err, *res;
		struct fx_raw raw;
		msgpack_sbuffer sb;
		msgpack_packer pk;

		fx_raw_open(&fx, &raw);
		fx_sbuf_init(&sb, &pk);
		fx_req_head(&pk, 1, "apply");
		msgpack_pack_array(&pk, 3);
		fx_pack_str(&pk, "testmod.sleep");
		msgpack_pack_uint32(&pk, 500);
		msgpack_pack_map(&pk, 1);
		fx_pack_str(&pk, "timeout_ms");
		msgpack_pack_uint32(&pk, 0);
		REQUIRE(fx_raw_send(&raw, sb.data, sb.size) == 0);
		fx_raw_response(&raw, 1, &err, &res, WAIT_MS);
		REQUIREF(err->type == MSGPACK_OBJECT_NIL && fx_obj_u64(res) == 500,
			 "sleep 500 with timeout_ms 0 under --task-timeout 200 failed (code %lld)",
			 err->type == MSGPACK_OBJECT_MAP
			 ? (long long)fx_obj_i64(fx_obj_get(err, "code")) : 0ll);
		msgpack_sbuffer_destroy(&sb);
		fx_raw_close(&raw);
	}
	ffx_wait(&fx, pool_full_idle2, NULL, WAIT_MS, "the pool full", &st);
	REQUIREF(st.tasks_timed_out == 1, "tasks_timed_out %llu", (unsigned long long)st.tasks_timed_out);
	fx_stop(&fx);
}
END_TEST

/* [10, 10, hang, 10] in one chunk with timeout_ms 300: items 0 and 1 are
 * reported (20 ms in all) before the hang, so they keep their results; 2
 * and 3 time out. */
START_TEST(map_timeout_keeps_finished_items)
{
	struct fx fx;
	struct ffx_map m = { 0 };
	struct mpool_map_summary sum;
	struct ffx_status st;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	const char *args[] = { "--module", testmod(), NULL };
	int r;

	fx_start(&fx, args);
	fx_sbuf_init(&sb, &pk);
	msgpack_pack_int64(&pk, 10);
	msgpack_pack_int64(&pk, 10);
	ffx_pack_cmd(&pk, "hang");
	msgpack_pack_int64(&pk, 10);
	r = ffx_map_run(fx.c, "testmod.mixed", &sb, 4,
			&(struct mpool_map_opts)MPOOL_MAP_OPTS(.chunksize = 4, .timeout_ms = 300), &m, &sum);
	REQUIREF(r == 0, "%s: %s", mpool_strerror(-r), mpool_errmsg(fx.c));
	for (int i = 0; i < 4; i++) {
		const struct ffx_item *it = &m.items[i];

		if (i < 2)
			REQUIREF(it->code == 0 && it->i == 10, "item %d, done before the hang: code %d "
				 "(%s) '%s'", i, it->code, mpool_strerror(it->code), it->msg);
		else
			REQUIREF(it->code == -MPOOL_E_TIMEOUT, "item %d: code %d (%s) '%s', expected "
				 "timeout", i, it->code, mpool_strerror(it->code), it->msg);
	}
	REQUIREF(sum.failed == 2, "%llu failed", (unsigned long long)sum.failed);
	ffx_wait(&fx, pool_full_idle2, NULL, WAIT_MS, "the pool full", &st);
	REQUIREF(st.tasks_timed_out == 1, "tasks_timed_out %llu", (unsigned long long)st.tasks_timed_out);
	ffx_map_free(&m);
	msgpack_sbuffer_destroy(&sb);
	fx_stop(&fx);
}
END_TEST

START_TEST(out_of_range_options_are_bad_requests)
{
	struct fx fx;
	mpool_value *v = NULL;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	struct mpool_map_summary sum;
	const char *args[] = { "--module", testmod(), NULL };
	int r;

	fx_start(&fx, args);
	fx_arg_int(&sb, 1);
	/* PROTOCOL.md: timeout_ms is at most 86 400 000 (a day). */
	r = ffx_apply(fx.c, "testmod.ok", &sb, 86400001, 0, &v);
	REQUIREF(r == -MPOOL_E_BADREQ, "apply timeout_ms 86400001: %d (%s)", r, mpool_errmsg(fx.c));
	r = ffx_apply(fx.c, "testmod.ok", &sb, 0, 4, &v);
	REQUIREF(r == -MPOOL_E_BADREQ, "apply retries 4 above --max-retries 3: %d (%s)", r,
		 mpool_errmsg(fx.c));
	r = ffx_apply(fx.c, "testmod.ok", &sb, 86400000, 3, &v);
	REQUIREF(r == 0, "apply at both limits: %d (%s)", r, mpool_errmsg(fx.c));
	mpool_value_free(v);
	msgpack_sbuffer_destroy(&sb);

	fx_sbuf_init(&sb, &pk);
	fx_pack_repeat(&pk, 1, 3);
	r = mpool_map(fx.c, "testmod.ok", sb.data, sb.size, 3,
		      &(struct mpool_map_opts)MPOOL_MAP_OPTS(.timeout_ms = 86400001), NULL, NULL, &sum);
	REQUIREF(r == -MPOOL_E_BADREQ, "map timeout_ms 86400001: %d (%s)", r, mpool_errmsg(fx.c));
	r = mpool_map(fx.c, "testmod.ok", sb.data, sb.size, 3,
		      &(struct mpool_map_opts)MPOOL_MAP_OPTS(.retries = 4), NULL, NULL, &sum);
	REQUIREF(r == -MPOOL_E_BADREQ, "map retries 4: %d (%s)", r, mpool_errmsg(fx.c));
	REQUIRE(mpool_ping(fx.c) == 0);
	msgpack_sbuffer_destroy(&sb);
	fx_stop(&fx);
}
END_TEST

/* ==== 5. a module init that fails: backoff, degraded, unavailable =========== */

struct degraded_with {
	const char *needle;
};

static bool degraded_with(const struct ffx_status *st, void *arg)
{
	const struct degraded_with *d = arg;

	return strcmp(st->health, "degraded") == 0 && st->has_failure &&
	       strstr(st->last_failure, d->needle);
}

/* An apply that must fail with 'unavailable' (not hang, not succeed). */
static int unavailable_client(void *arg)
{
	struct fx *fx = arg;
	mpool *c = fx_connect(fx);
	mpool_value *v = NULL;
	int r = ffx_apply_int(c, "builtin.square", 3, 0, &v);

	if (r != -MPOOL_E_UNAVAILABLE) {
		fprintf(stderr, "client: apply on a pool that cannot start: %d (%s: %s), expected "
			"unavailable\n", r, mpool_strerror(-r), mpool_errmsg(c));
		return 1;
	}
	if (!strstr(mpool_errmsg(c), "no worker")) {
		fprintf(stderr, "client: the unavailable error does not say why: '%s'\n",
			mpool_errmsg(c));
		return 2;
	}
	mpool_close(c);
	return 0;
}

/* Counts workers_started over window_ms of polling. */
static uint64_t starts_during(struct fx *fx, int window_ms, struct ffx_status *last)
{
	struct ffx_status st;
	uint64_t first;
	int64_t end;

	ffx_status(fx, NULL, &st);
	first = st.workers_started;
	for (end = fx_now_ms() + window_ms; fx_now_ms() < end; fx_tick())
		ffx_status(fx, NULL, &st);
	*last = st;
	return st.workers_started - first;
}

/* _i 0: initargs {"fail": true} (init returns an error); _i 1: {"die": true}
 * (init calls _exit(7)). */
START_TEST(failing_init_backs_off_and_fails_queued_work)
{
	const bool die = _i == 1;
	const char *args[] = { "--module", testmod(), "--initargs",
			       die ? "{\"die\": true}" : "{\"fail\": true}",
			       "--recovery-timeout", "1500", NULL };
	struct degraded_with d = { die ? "exited with status 7" : "init failed" };
	struct fx fx;
	struct ffx_status st;
	char desc[1024];
	uint64_t starts;
	pid_t child;
	int wst;

	ffx_start(&fx, args, NULL);
	ffx_wait(&fx, degraded_with, &d, WAIT_MS, "health degraded, last_failure naming the cause",
		 &st);
	if (!die)
		FREQUIRE(&fx, fx_log_has(&fx, "init failed on purpose"),
			 "the log does not carry the module's own init error message");
	/* Exponential backoff: a handful of attempts in 2 s, not a storm. */
	starts = starts_during(&fx, 2000, &st);
	FREQUIRE(&fx, starts >= 1 && starts <= 25,
		 "%llu workers started in 2 s with an init that always fails (backoff expected: "
		 "more than 0, far fewer than 100); %s", (unsigned long long)starts,
		 ffx_describe(&st, desc, sizeof(desc)));
	FREQUIRE(&fx, strcmp(st.health, "degraded") == 0 && st.n_workers <= 2,
		 "status after 2 s: %s", ffx_describe(&st, desc, sizeof(desc)));

	/* Queued work waits about --recovery-timeout, then fails clearly. */
	child = fx_fork(unavailable_client, &fx);
	wst = fx_wait_child(child, WAIT_MS);
	FREQUIRE(&fx, WIFEXITED(wst) && WEXITSTATUS(wst) == 0,
		 "the apply queued on a pool that cannot start did not fail with unavailable "
		 "(client exit %d; see its stderr)", WIFEXITED(wst) ? WEXITSTATUS(wst) : -1);
	/* The daemon is still there and still trying. */
	FREQUIRE(&fx, mpool_ping(fx.c) == 0, "ping after the queued work failed");
	ffx_status(&fx, NULL, &st);
	FREQUIRE(&fx, strcmp(st.state, "running") == 0 && st.jobs_active == 0,
		 "after the failure: %s", ffx_describe(&st, desc, sizeof(desc)));
	fx_stop(&fx);
}
END_TEST

/* ==== 6. fork failure ========================================================= */

/* RLIMIT_NPROC counts every process of the real uid, so the daemon runs as
 * nobody (root ignores the limit) with room for itself and one worker of
 * three.  mpoold must stay up, degraded, naming fork, without a tight
 * retry loop, and serve with the worker it has. */
START_TEST(fork_failure_at_start)
{
	const char *args[] = { "--workers", "3", NULL };
	struct ffx_launch how = { .drop_to_nobody = true, .limit_nproc = true };
	struct degraded_with d = { "fork" };
	struct fx fx;
	struct ffx_status st;
	char desc[1024];
	mpool_value *v = NULL;
	unsigned before, after;
	int64_t end;
	int r;

	/* mpoold, its fork server and one worker. */
	how.nproc = ffx_settle_uid_tasks(65534) + 3;
	ffx_start(&fx, args, &how);
	ffx_wait(&fx, degraded_with, &d, WAIT_MS, "health degraded, last_failure naming fork", &st);
	before = ffx_log_count(&fx, "fork");
	for (end = fx_now_ms() + 2000; fx_now_ms() < end; fx_tick())
		ffx_status(&fx, NULL, &st);
	after = ffx_log_count(&fx, "fork");
	FREQUIRE(&fx, after - before <= 25, "%u fork failures logged in 2 s: no backoff",
		 after - before);
	FREQUIRE(&fx, strcmp(st.health, "degraded") == 0 && st.n_workers >= 1,
		 "%s", ffx_describe(&st, desc, sizeof(desc)));
	/* The worker that did start serves. */
	r = ffx_apply_int(fx.c, "builtin.square", 12, 0, &v);
	FREQUIRE(&fx, r == 0 && fx_obj_u64(mpool_value_get(v)) == 144,
		 "apply with one of three workers: %d (%s)", r, mpool_errmsg(fx.c));
	mpool_value_free(v);
	fx_stop(&fx);
}
END_TEST

struct nobody_count {
	unsigned want;
};

/* While the pool runs (as nobody), a placeholder process of nobody's takes
 * the last slot of the daemon's RLIMIT_NPROC, lowered from outside with
 * prlimit(); a killed worker cannot be replaced until the placeholder
 * leaves. */
START_TEST(fork_failure_on_respawn_recovers)
{
	struct ffx_launch how = { .drop_to_nobody = true };
	struct degraded_with d = { "fork" };
	struct fx fx;
	struct ffx_status st;
	struct gone g;
	char desc[1024];
	mpool_value *v = NULL;
	unsigned base = ffx_settle_uid_tasks(65534), before, after;
	pid_t holder, victim, forksrv;
	int64_t end;
	int r;

	ffx_start(&fx, NULL, &how);
	ffx_wait(&fx, pool_full_idle2, NULL, WAIT_MS, "two workers up", &st);
	holder = ffx_spawn_nobody_placeholder();
	/* The daemon, its fork server, its two workers and the placeholder. */
	for (end = fx_now_ms() + WAIT_MS; ffx_count_uid_tasks(65534) < base + 5; fx_tick())
		FREQUIRE(&fx, fx_now_ms() < end, "nobody runs %u tasks, expected %u",
			 ffx_count_uid_tasks(65534), base + 5);
	/* The fork server forks the workers: its limit is the one that bites. */
	forksrv = forksrv_of(fx.pid);
	FREQUIRE(&fx, forksrv > 0, "mpoold %d has no fork server", (int)fx.pid);
	ffx_set_nproc_of_nobody(fx.pid, base + 4);
	ffx_set_nproc_of_nobody(forksrv, base + 4);
	victim = st.workers[0].pid;
	FREQUIRE(&fx, kill(victim, SIGKILL) == 0, "kill %d: %s", (int)victim, strerror(errno));
	ffx_wait(&fx, degraded_with, &d, WAIT_MS, "degraded, last_failure naming fork", &st);
	before = ffx_log_count(&fx, "fork");
	for (end = fx_now_ms() + 2000; fx_now_ms() < end; fx_tick()) {
		ffx_status(&fx, NULL, &st);
	}
	after = ffx_log_count(&fx, "fork");
	FREQUIRE(&fx, after - before <= 25, "%u fork failures logged in 2 s: no backoff",
		 after - before);
	FREQUIRE(&fx, st.n_workers == 1 && strcmp(st.health, "degraded") == 0, "%s",
		 ffx_describe(&st, desc, sizeof(desc)));
	r = ffx_apply_int(fx.c, "builtin.square", 5, 0, &v);
	FREQUIRE(&fx, r == 0, "apply on the surviving worker: %d (%s)", r, mpool_errmsg(fx.c));
	mpool_value_free(v);

	/* The slot frees up: the pool recovers by itself. */
	ffx_end_placeholder(holder);
	g = (struct gone){ victim, 2 };
	ffx_wait(&fx, replaced, &g, WAIT_MS, "the pool full again once fork works", &st);
	ffx_status(&fx, NULL, &st);
	FREQUIRE(&fx, strcmp(st.health, "ok") == 0, "health after recovery: %s",
		 ffx_describe(&st, desc, sizeof(desc)));
	fx_stop(&fx);
}
END_TEST

struct new_forksrv {
	pid_t daemon, old;
};

static bool forksrv_replaced(const struct ffx_status *st, void *arg)
{
	const struct new_forksrv *z = arg;
	pid_t now = forksrv_of(z->daemon);

	return now > 0 && now != z->old && ffx_pool_idle(st, 2);
}

/* ppid of pid, from /proc; 0 when it is gone. */
static pid_t parent_of(pid_t pid)
{
	char path[64], line[512], *close_paren;
	int ppid = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	f = fopen(path, "re");
	if (!f)
		return 0;
	if (fgets(line, sizeof(line), f) && (close_paren = strrchr(line, ')')) != NULL &&
	    sscanf(close_paren + 2, "%*c %d", &ppid) != 1)
		ppid = 0;
	fclose(f);
	return (pid_t)ppid;
}

/* The fork server dies: its workers die with it (none is left behind, the
 * master reports each death with its signal), a new fork server takes
 * over and the pool recovers.  Workers are the fork server's children.
 * Killed again while every task recycles its worker, a map with retries
 * loses nothing and hangs no client. */
START_TEST(fork_server_killed_takes_its_workers_pool_recovers)
{
	const char *args[] = { "--max-tasks-per-child", "1", NULL };
	struct new_forksrv z;
	struct fx fx;
	struct ffx_map m = { 0 };
	struct mpool_map_summary sum;
	struct ffx_status st;
	struct not_these nt;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	char desc[1024];
	int r;

	fx_start(&fx, args);
	z.daemon = fx.pid;
	z.old = forksrv_of(fx.pid);
	FREQUIRE(&fx, z.old > 0, "mpoold %d has no fork server", (int)fx.pid);
	ffx_status(&fx, NULL, &st);
	FREQUIRE(&fx, st.n_workers == 2, "%s", ffx_describe(&st, desc, sizeof(desc)));
	for (unsigned i = 0; i < st.n_workers; i++)
		FREQUIRE(&fx, parent_of(st.workers[i].pid) == z.old,
			 "worker %d has parent %d, not the fork server %d", (int)st.workers[i].pid,
			 (int)parent_of(st.workers[i].pid), (int)z.old);
	not_these_init(&nt, &st, 2, true);
	FREQUIRE(&fx, kill(z.old, SIGKILL) == 0, "kill %d: %s", (int)z.old, strerror(errno));
	ffx_wait(&fx, all_new, &nt, WAIT_MS, "two new workers", &st);
	ffx_wait(&fx, forksrv_replaced, &z, WAIT_MS, "a new fork server and the pool full", &st);
	for (unsigned i = 0; i < nt.n_old; i++)
		FREQUIRE(&fx, kill(nt.old[i], 0) < 0 && errno == ESRCH,
			 "worker %d outlived its fork server", (int)nt.old[i]);
	FREQUIRE(&fx, st.workers_died == 2 && strstr(st.last_failure, "killed by SIGKILL"),
		 "after the fork server's death: %s", ffx_describe(&st, desc, sizeof(desc)));
	z.old = forksrv_of(fx.pid);
	for (unsigned i = 0; i < st.n_workers; i++)
		FREQUIRE(&fx, parent_of(st.workers[i].pid) == z.old,
			 "worker %d has parent %d, not the new fork server %d",
			 (int)st.workers[i].pid, (int)parent_of(st.workers[i].pid), (int)z.old);
	fx_sbuf_init(&sb, &pk);
	fx_pack_range(&pk, 0, 100);
	r = ffx_map_run(fx.c, "builtin.pid", &sb, 100, &(struct mpool_map_opts)MPOOL_MAP_OPTS(.chunksize = 1),
			&m, &sum);
	FREQUIRE(&fx, r == 0 && sum.failed == 0, "%d (%s), %llu failed", r, mpool_errmsg(fx.c),
		 (unsigned long long)sum.failed);
	ffx_map_free(&m);
	memset(&m, 0, sizeof(m));

	/* Killed while every task recycles a worker. */
	z.old = forksrv_of(fx.pid);
	FREQUIRE(&fx, z.old > 0 && kill(z.old, SIGKILL) == 0, "kill the fork server %d", (int)z.old);
	r = ffx_map_run(fx.c, "builtin.pid", &sb, 100,
			&(struct mpool_map_opts)MPOOL_MAP_OPTS(.chunksize = 1, .retries = 3), &m, &sum);
	FREQUIRE(&fx, r == 0 && sum.failed == 0, "%d (%s), %llu failed", r, mpool_errmsg(fx.c),
		 (unsigned long long)sum.failed);
	ffx_wait(&fx, forksrv_replaced, &z, WAIT_MS, "a new fork server and the pool full", &st);
	FREQUIRE(&fx, st.tasks_done >= 200 && strcmp(st.health, "ok") == 0, "%s",
		 ffx_describe(&st, desc, sizeof(desc)));
	ffx_map_free(&m);
	msgpack_sbuffer_destroy(&sb);
	fx_stop(&fx);
}
END_TEST

/* A stopped fork server cannot report the death of a worker the master
 * killed (here for a timeout): the master kills it after a few seconds,
 * reaps the worker itself, fails the task with its timeout and recovers,
 * rather than leave the client waiting. */
START_TEST(stopped_fork_server_hangs_no_client)
{
	const char *args[] = { "--module", testmod(), NULL };
	struct new_forksrv z;
	struct ffx_status st;
	mpool_value *v = NULL;
	struct fx fx;
	int r;

	fx_start(&fx, args);
	z.daemon = fx.pid;
	z.old = forksrv_of(fx.pid);
	FREQUIRE(&fx, z.old > 0 && kill(z.old, SIGSTOP) == 0, "stop the fork server %d",
		 (int)z.old);
	r = ffx_apply_int(fx.c, "testmod.hang", 0, 200, &v);
	FREQUIRE(&fx, r == -MPOOL_E_TIMEOUT, "hang with timeout_ms 200 under a stopped fork "
		 "server: %d (%s: %s)", r, mpool_strerror(-r), mpool_errmsg(fx.c));
	ffx_wait(&fx, forksrv_replaced, &z, WAIT_MS, "a new fork server and the pool full", &st);
	FREQUIRE(&fx, kill(z.old, 0) < 0 && errno == ESRCH, "the stopped fork server %d lives on",
		 (int)z.old);
	r = ffx_apply_int(fx.c, "testmod.sleep", 5, 0, &v);
	FREQUIRE(&fx, r == 0, "after the recovery: %d (%s)", r, mpool_errmsg(fx.c));
	mpool_value_free(v);
	fx_stop(&fx);
}
END_TEST

/* A worker dies while idle and its death is not reported yet (the fork
 * server is stopped), but its channel's end reaches the master at once.
 * Work that comes in meanwhile must not be handed to it: its channel is
 * gone.  The request waits until the master has given up on the fork
 * server and a new worker runs it. */
START_TEST(idle_worker_with_closed_channel_gets_no_work)
{
	const char *args[] = { "--workers", "1", NULL };
	struct fx_status st;
	mpool_value *v = NULL;
	pid_t victim, forksrv;
	struct fx fx;
	int r;

	fx_start(&fx, args);
	fx_status(&fx, &st);
	victim = st.workers[0].pid;
	forksrv = forksrv_of(fx.pid);
	FREQUIRE(&fx, forksrv > 0 && kill(forksrv, SIGSTOP) == 0, "stop the fork server %d",
		 (int)forksrv);
	FREQUIRE(&fx, kill(victim, SIGKILL) == 0, "kill worker %d", (int)victim);
	/* Nothing shows that the master has read the channel's end; it does
	 * so in its next loop turn, and treats the channel as lingering for
	 * a second.  A request sent later than that passes without proving
	 * anything; one sent earlier must not crash the master. */
	usleep(200 * 1000);
	r = ffx_apply_int(fx.c, "builtin.square", 7, 0, &v);
	FREQUIRE(&fx, r == 0, "square 7 after an idle worker died: %d (%s: %s)", r,
		 mpool_strerror(-r), mpool_errmsg(fx.c));
	FREQUIRE(&fx, fx_obj_u64(mpool_value_get(v)) == 49, "square 7");
	mpool_value_free(v);
	FREQUIRE(&fx, kill(fx.pid, 0) == 0, "the master is gone");
	fx_stop(&fx);
}
END_TEST

/* More workers at once than the fork server's channel holds requests (a
 * few hundred): the master sends the rest as answers make room.  No fork
 * server is lost, no start fails, and every worker takes work. */
START_TEST(many_workers_start_through_a_full_channel)
{
	const char *args[] = { "--workers", "400", NULL };
	struct ffx_status st;
	struct fx fx;
	char desc[512];

	fx_start(&fx, args);       /* waits for 400 idle workers */
	FREQUIRE(&fx, !fx_log_has(&fx, "lost") && !fx_log_has(&fx, "cannot start"),
		 "the fork server was lost or a start failed (see the log)");
	fx_map_squares(fx.c, 2000, 0, &(struct mpool_map_opts)MPOOL_MAP_OPTS(.chunksize = 1), 1);
	ffx_status(&fx, NULL, &st);
	FREQUIRE(&fx, st.workers_started == 400 && st.workers_died == 0 &&
		 strcmp(st.health, "ok") == 0, "started %llu, died %llu: %s",
		 (unsigned long long)st.workers_started, (unsigned long long)st.workers_died,
		 ffx_describe(&st, desc, sizeof(desc)));
	fx_stop(&fx);
}
END_TEST

/* Workers are made by fork(2), with glibc's fork handling: the
 * pthread_atfork child handler testmod registers when it is loaded (as a
 * library that must reseed its random generator after fork does) has run
 * in every worker, and no two workers draw the same numbers.  Each task
 * runs in a new worker. */
START_TEST(workers_run_atfork_child_handlers)
{
	const char *args[] = { "--module", testmod(), "--max-tasks-per-child", "1", NULL };
	enum { N = 8 };
	int64_t pids[N];
	uint64_t draws[N];
	struct fx fx;

	fx_start(&fx, args);
	for (int i = 0; i < N; i++) {
		mpool_value *v = NULL;
		const msgpack_object *o, *ran, *pid, *rnd;
		int r = ffx_apply_int(fx.c, "testmod.atfork", 0, 0, &v);

		FREQUIRE(&fx, r == 0, "testmod.atfork: %d (%s)", r, mpool_errmsg(fx.c));
		o = mpool_value_get(v);
		ran = fx_obj_get(o, "ran");
		pid = fx_obj_get(o, "pid");
		rnd = fx_obj_get(o, "random");
		FREQUIRE(&fx, ran && ran->type == MSGPACK_OBJECT_BOOLEAN && pid &&
			 pid->type == MSGPACK_OBJECT_POSITIVE_INTEGER && rnd &&
			 rnd->type == MSGPACK_OBJECT_POSITIVE_INTEGER, "testmod.atfork's answer");
		pids[i] = pid->via.i64;
		draws[i] = rnd->via.u64;
		FREQUIRE(&fx, ran->via.boolean, "worker %lld: the atfork child handler did not run",
			 (long long)pids[i]);
		for (int j = 0; j < i; j++) {
			FREQUIRE(&fx, pids[j] != pids[i], "task %d ran in worker %lld again", i,
				 (long long)pids[i]);
			FREQUIRE(&fx, draws[j] != draws[i], "workers %lld and %lld drew the same "
				 "random number %#llx", (long long)pids[j], (long long)pids[i],
				 (unsigned long long)draws[i]);
		}
		mpool_value_free(v);
	}
	fx_stop(&fx);
}
END_TEST

/* status.fork_server, in a value the caller frees (*v). */
static const msgpack_object *fork_server_status(struct fx *fx, mpool_value **v)
{
	const msgpack_object *fs;
	int r = mpool_status(fx->c, v);

	REQUIREF(r == 0, "mpool_status: %s: %s", mpool_strerror(-r), mpool_errmsg(fx->c));
	fs = fx_obj_get(mpool_value_get(*v), "fork_server");
	REQUIREF(fs, "the status has no fork_server");
	return fs;
}

/* An mpoold with no mpool-forksrv beside it (and none installed) forks its
 * workers itself, says so once, and serves as before. */
START_TEST(no_fork_server_workers_fork_from_the_master)
{
	const char *args[] = { "--max-tasks-per-child", "1", NULL };
	static char dir[] = "/tmp/mpool-noforksrv.XXXXXX", copy[64];
	struct fx fx;
	struct ffx_map m = { 0 };
	struct mpool_map_summary sum;
	struct ffx_status st;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	char buf[65536];
	ssize_t n;
	int in, out, r;

	REQUIRE(mkdtemp(dir) != NULL);
	snprintf(copy, sizeof(copy), "%s/mpoold", dir);
	in = open(ffx_env("MPOOLD"), O_RDONLY | O_CLOEXEC);
	out = open(copy, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0755);
	REQUIRE(in >= 0 && out >= 0);
	while ((n = read(in, buf, sizeof(buf))) > 0)
		REQUIRE(write(out, buf, (size_t)n) == n);
	REQUIRE(n == 0);
	close(in);
	close(out);
	setenv("MPOOLD", copy, 1);
	fx_start(&fx, args);
	fx_sbuf_init(&sb, &pk);
	fx_pack_range(&pk, 0, 50);
	r = ffx_map_run(fx.c, "builtin.pid", &sb, 50, &(struct mpool_map_opts)MPOOL_MAP_OPTS(.chunksize = 1),
			&m, &sum);
	REQUIREF(r == 0 && sum.failed == 0, "%d (%s), %llu failed", r, mpool_errmsg(fx.c),
		 (unsigned long long)sum.failed);
	ffx_wait(&fx, pool_full_idle2, NULL, WAIT_MS, "the pool full after the map", &st);
	REQUIREF(st.tasks_done == 50 && st.workers_recycled == 50 && st.workers_died == 0,
		 "tasks_done %llu, recycled %llu, died %llu", (unsigned long long)st.tasks_done,
		 (unsigned long long)st.workers_recycled, (unsigned long long)st.workers_died);
	/* Unless a fork server is installed where mpoold looks last. */
	if (forksrv_of(fx.pid) == 0) {
		mpool_value *v = NULL;
		const msgpack_object *fs = fork_server_status(&fx, &v);

		REQUIREF(fs->type == MSGPACK_OBJECT_NIL, "status shows a fork server of type %d",
			 (int)fs->type);
		mpool_value_free(v);
		REQUIREF(ffx_log_count(&fx, "workers fork from the master") == 1,
			 "%u log lines say the workers fork from the master",
			 ffx_log_count(&fx, "workers fork from the master"));
	}
	ffx_map_free(&m);
	msgpack_sbuffer_destroy(&sb);
	fx_stop(&fx);
	unlink(copy);
	rmdir(dir);
}
END_TEST

/* ==== 7. recycling ============================================================= */

struct quotas {
	struct fx *fx;
	mpool *b;
	unsigned n;
	pid_t pid[FX_MAX_SEEN];
	uint64_t quota[FX_MAX_SEEN];
};

static void note_quotas(struct quotas *q, const struct ffx_status *st)
{
	for (unsigned i = 0; i < st->n_workers; i++) {
		unsigned k;

		REQUIREF(st->workers[i].quota >= 5 && st->workers[i].quota <= 10,
			 "worker %d has quota %llu, outside [10 - 5, 10]", (int)st->workers[i].pid,
			 (unsigned long long)st->workers[i].quota);
		for (k = 0; k < q->n; k++)
			if (q->pid[k] == st->workers[i].pid)
				break;
		if (k == q->n && q->n < FX_MAX_SEEN) {
			q->pid[q->n] = st->workers[i].pid;
			q->quota[q->n++] = st->workers[i].quota;
		}
	}
}

static void sample_quotas(struct ffx_map *m, uint64_t first, uint32_t count)
{
	struct quotas *q = m->ud;
	struct ffx_status st;

	(void)count;
	if (first % 4 == 0) {
		ffx_status(q->fx, q->b, &st);
		note_quotas(q, &st);
	}
}

START_TEST(recycle_by_tasks_with_jitter)
{
	const char *args[] = { "--max-tasks-per-child", "10", "--max-tasks-jitter", "5", NULL };
	static struct quotas q;
	struct fx fx;
	struct ffx_map m = { 0 };
	struct mpool_map_summary sum;
	struct ffx_status st;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	static pid_t pids[200];
	static unsigned counts[200];
	unsigned n_pids = 0, checked = 0;
	uint64_t seen_counts = 0;   /* bit per count value of recycled workers */
	int r;

	fx_start(&fx, args);
	memset(&q, 0, sizeof(q));
	q.fx = &fx;
	q.b = fx_connect(&fx);
	ffx_status(&fx, NULL, &st);
	note_quotas(&q, &st);
	fx_sbuf_init(&sb, &pk);
	fx_pack_range(&pk, 0, 200);
	m.on_piece = sample_quotas;
	m.ud = &q;
	r = ffx_map_run(fx.c, "builtin.pid", &sb, 200, &(struct mpool_map_opts)MPOOL_MAP_OPTS(.chunksize = 1),
			&m, &sum);
	REQUIREF(r == 0 && sum.failed == 0, "%d (%s), %llu failed", r, mpool_errmsg(fx.c),
		 (unsigned long long)sum.failed);
	for (unsigned i = 0; i < 200; i++) {
		pid_t pid = (pid_t)m.items[i].i;
		unsigned k;

		for (k = 0; k < n_pids; k++)
			if (pids[k] == pid)
				break;
		if (k == n_pids)
			pids[n_pids++] = pid;
		counts[k]++;
		REQUIREF(counts[k] <= 10, "worker %d ran more than 10 tasks with --max-tasks-per-child 10",
			 (int)pid);
	}
	ffx_wait(&fx, pool_full_idle2, NULL, WAIT_MS, "the pool full after the map", &st);
	note_quotas(&q, &st);
	/* A worker that left ran exactly its quota: no task lost or run twice. */
	for (unsigned k = 0; k < n_pids; k++) {
		if (ffx_has_worker(&st, pids[k]))
			continue;
		REQUIREF(counts[k] >= 5 && counts[k] <= 10, "recycled worker %d ran %u tasks",
			 (int)pids[k], counts[k]);
		seen_counts |= 1ull << counts[k];
		for (unsigned j = 0; j < q.n; j++)
			if (q.pid[j] == pids[k]) {
				REQUIREF(counts[k] == q.quota[j], "worker %d had quota %llu but ran %u tasks",
					 (int)pids[k], (unsigned long long)q.quota[j], counts[k]);
				checked++;
			}
	}
	REQUIREF(st.by_tasks >= 200 / 10 - 2 && st.by_tasks == st.workers_recycled,
		 "recycled_by.tasks %llu, workers_recycled %llu after 200 tasks",
		 (unsigned long long)st.by_tasks, (unsigned long long)st.workers_recycled);
	REQUIREF(__builtin_popcountll(seen_counts) >= 2,
		 "every recycled worker ran the same number of tasks: no jitter");
	REQUIREF(checked >= 1, "no recycled worker's quota was sampled");
	REQUIREF(st.tasks_done == 200 && st.workers_died == 0, "tasks_done %llu, workers_died %llu",
		 (unsigned long long)st.tasks_done, (unsigned long long)st.workers_died);
	ffx_map_free(&m);
	msgpack_sbuffer_destroy(&sb);
	mpool_close(q.b);
	fx_stop(&fx);
}
END_TEST

struct overlap {
	struct fx *fx;
	mpool *b;
	unsigned max_live, max_taking;   /* seen in status */
};

/* Processes the pool has (exiting ones included), and those that take work. */
static void sample_overlap(struct ffx_map *m, uint64_t first, uint32_t count)
{
	struct overlap *o = m->ud;
	struct ffx_status st;
	unsigned taking;

	(void)first;
	(void)count;
	ffx_status(o->fx, o->b, &st);
	taking = st.n_workers - ffx_count_state(&st, "exiting");
	if (st.n_workers > o->max_live)
		o->max_live = st.n_workers;
	if (taking > o->max_taking)
		o->max_taking = taking;
}

/* Every task on a fresh worker: a slot forks its successor while the old
 * worker is still leaving, yet the pool never has more than --workers
 * processes that take work nor more than twice that in all, and every
 * count comes out exact. */
START_TEST(recycle_every_task_overlaps_within_bound)
{
	const char *args[] = { "--max-tasks-per-child", "1", NULL };
	static struct overlap o;
	static pid_t pids[300];
	struct fx fx;
	struct ffx_map m = { 0 };
	struct mpool_map_summary sum;
	struct ffx_status st;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	int r;

	fx_start(&fx, args);
	memset(&o, 0, sizeof(o));
	o.fx = &fx;
	o.b = fx_connect(&fx);
	fx_sbuf_init(&sb, &pk);
	fx_pack_range(&pk, 0, 300);
	m.on_piece = sample_overlap;
	m.ud = &o;
	r = ffx_map_run(fx.c, "builtin.pid", &sb, 300, &(struct mpool_map_opts)MPOOL_MAP_OPTS(.chunksize = 1),
			&m, &sum);
	REQUIREF(r == 0 && sum.failed == 0, "%d (%s), %llu failed", r, mpool_errmsg(fx.c),
		 (unsigned long long)sum.failed);
	for (unsigned i = 0; i < 300; i++) {
		pids[i] = (pid_t)m.items[i].i;
		for (unsigned k = 0; k < i; k++)
			REQUIREF(pids[k] != pids[i], "items %u and %u both ran in worker %d", k, i,
				 (int)pids[i]);
	}
	REQUIREF(o.max_taking <= 2 && o.max_live <= 4,
		 "%u processes taking work, %u in all, with --workers 2", o.max_taking, o.max_live);
	ffx_wait(&fx, pool_full_idle2, NULL, WAIT_MS, "the pool full after the map", &st);
	REQUIREF(st.tasks_done == 300 && st.workers_recycled == 300 && st.by_tasks == 300 &&
		 st.workers_started == 302 && st.workers_died == 0,
		 "tasks_done %llu, recycled %llu (by tasks %llu), started %llu, died %llu",
		 (unsigned long long)st.tasks_done, (unsigned long long)st.workers_recycled,
		 (unsigned long long)st.by_tasks, (unsigned long long)st.workers_started,
		 (unsigned long long)st.workers_died);
	ffx_map_free(&m);
	msgpack_sbuffer_destroy(&sb);
	mpool_close(o.b);
	fx_stop(&fx);
}
END_TEST

static bool rss_recycled(const struct ffx_status *st, void *arg)
{
	const struct gone *g = arg;

	return st->by_rss >= 1 && replaced(st, (void *)g);
}

START_TEST(recycle_by_rss)
{
	const char *args[] = { "--module", testmod(), "--workers", "1", "--max-rss-per-child", "64",
			       NULL };
	struct fx fx;
	struct ffx_status st;
	struct gone g;
	mpool_value *v = NULL;
	pid_t pid;
	int r;

	fx_start(&fx, args);
	ffx_status(&fx, NULL, &st);
	pid = st.workers[0].pid;
	r = ffx_apply_int(fx.c, "testmod.grow", 1, 0, &v);
	REQUIREF(r == 0, "grow 1: %d (%s)", r, mpool_errmsg(fx.c));
	mpool_value_free(v);
	ffx_status(&fx, NULL, &st);
	if (st.workers[0].rss_kib < 60 * 1024)
		REQUIREF(st.by_rss == 0 && ffx_has_worker(&st, pid),
			 "a worker of %llu KiB was recycled for RSS with a 64 MiB limit",
			 (unsigned long long)st.workers[0].rss_kib);
	/* The task that pushes it past the limit succeeds; then it goes. */
	r = ffx_apply_int(fx.c, "testmod.grow", 100, 0, &v);
	REQUIREF(r == 0 && fx_obj_u64(mpool_value_get(v)) == 100, "grow 100: %d (%s)", r,
		 mpool_errmsg(fx.c));
	mpool_value_free(v);
	g = (struct gone){ pid, 1 };
	ffx_wait(&fx, rss_recycled, &g, WAIT_MS, "the grown worker recycled for RSS", &st);
	REQUIREF(st.workers_died == 0 && st.tasks_failed == 0, "workers_died %llu, tasks_failed %llu",
		 (unsigned long long)st.workers_died, (unsigned long long)st.tasks_failed);
	fx_stop(&fx);
}
END_TEST

struct grown {
	uint64_t ok, failed;
	int code;
	char msg[256];
};

static void grow_chunk(void *ud, uint64_t first, const msgpack_object *res,
		       const struct mpool_item_error *errs, size_t n_errs)
{
	struct grown *g = ud;

	(void)first;
	g->ok += res->via.array.size - n_errs;
	g->failed += n_errs;
	if (n_errs && !g->msg[0]) {
		g->code = errs[0].code;
		snprintf(g->msg, sizeof(g->msg), "%s", errs[0].message);
	}
}

/* One chunk of 400 items that each keep 1 MiB, under a 32 MiB limit: the
 * worker is checked at the parts it reports while the chunk runs, and is
 * killed long before the chunk ends (it used to reach 400 MiB); the items
 * it did not answer fail with "limit", saying why. */
START_TEST(rss_is_checked_within_a_chunk)
{
	enum { N = 400 };
	const char *args[] = { "--module", testmod(), "--workers", "1", "--max-rss-per-child", "32",
			       NULL };
	struct mpool_map_opts opts = MPOOL_MAP_OPTS(.chunksize = N);
	struct mpool_map_summary sum;
	struct grown g = { 0 };
	struct ffx_status st;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	struct fx fx;
	int r;

	fx_start(&fx, args);
	fx_sbuf_init(&sb, &pk);
	fx_pack_repeat(&pk, 1, N);
	r = mpool_map(fx.c, "testmod.grow", sb.data, sb.size, N, &opts, grow_chunk, &g, &sum);
	REQUIREF(r == 0, "map: %d (%s)", r, mpool_errmsg(fx.c));
	fprintf(stderr, "rss_is_checked_within_a_chunk: %llu items ran, %llu failed: %s\n",
		(unsigned long long)g.ok, (unsigned long long)g.failed, g.msg);
	REQUIRE(g.ok + g.failed == N && sum.failed == g.failed);
	REQUIREF(g.failed >= N / 2, "the worker ran %llu MiB of items under a 32 MiB limit",
		 (unsigned long long)g.ok);
	REQUIREF(g.code == -MPOOL_E_LIMIT && strstr(g.msg, "--max-rss-per-child 32 MiB"),
		 "the items not done failed with code %d: %s", g.code, g.msg);
	ffx_status(&fx, NULL, &st);
	REQUIREF(st.by_rss == 1 && st.workers_died == 0, "recycled_by.rss %llu, workers_died %llu",
		 (unsigned long long)st.by_rss, (unsigned long long)st.workers_died);
	msgpack_sbuffer_destroy(&sb);
	fx_stop(&fx);
}
END_TEST

static bool lifetime_recycled(const struct ffx_status *st, void *arg)
{
	return st->by_lifetime >= 2 && all_new(st, arg);
}

START_TEST(recycle_by_lifetime)
{
	const char *args[] = { "--max-worker-lifetime", "1", NULL };
	struct fx fx;
	struct ffx_status st;
	struct not_these nt;

	fx_start(&fx, args);
	ffx_status(&fx, NULL, &st);
	not_these_init(&nt, &st, 2, false);
	/* Idle workers too: nobody sends any work. */
	ffx_wait(&fx, lifetime_recycled, &nt, WAIT_MS, "both idle workers replaced for lifetime", &st);
	REQUIREF(st.workers_died == 0, "workers_died %llu", (unsigned long long)st.workers_died);
	fx_map_squares(fx.c, 1000, 0, NULL, 0);
	fx_stop(&fx);
}
END_TEST

/* ==== 8. reload ================================================================ */

/* _i 0: the reload method from another connection; _i 1: SIGHUP. */
START_TEST(reload_during_map_loses_nothing)
{
	const bool by_signal = _i == 1;
	const char *args[] = { "--module", testmod(), NULL };
	struct sleeper map = { 0 };
	struct progress pr = { 20 };
	struct fx fx;
	struct ffx_status before, st;
	struct not_these nt;
	pid_t child;
	int r;

	fx_start(&fx, args);
	map = (struct sleeper){ &fx, "builtin.sleep", 400, 5, 5 };
	child = fx_fork(sleep_map_client, &map);
	ffx_wait(&fx, map_under_way, &pr, WAIT_MS, "the map under way", &before);
	if (by_signal) {
		REQUIRE(kill(fx.pid, SIGHUP) == 0);
	} else {
		r = mpool_reload(fx.c);
		REQUIREF(r == 0, "mpool_reload: %s: %s", mpool_strerror(-r), mpool_errmsg(fx.c));
	}
	ffx_status(&fx, NULL, &st);
	REQUIREF(st.jobs_active >= 1, "the map had ended when the reload began: the test "
		 "proves nothing (make the map longer)");
	not_these_init(&nt, &before, 2, false);
	ffx_wait(&fx, all_new, &nt, WAIT_MS, "every worker replaced by the reload", &st);
	fx_expect_child_ok(child, WAIT_MS, "the map across the reload");
	ffx_wait(&fx, pool_full_idle2, NULL, WAIT_MS, "the pool idle", &st);
	REQUIREF(st.by_reload >= 2, "recycled_by.reload %llu", (unsigned long long)st.by_reload);
	REQUIREF(st.tasks_done == 400 && st.tasks_failed == 0 && st.workers_died == 0,
		 "tasks_done %llu (400: none lost or run twice), tasks_failed %llu, workers_died %llu",
		 (unsigned long long)st.tasks_done, (unsigned long long)st.tasks_failed,
		 (unsigned long long)st.workers_died);
	REQUIREF(strcmp(st.health, "ok") == 0, "health '%s' after a reload", st.health);
	fx_stop(&fx);
}
END_TEST

static int64_t version_of(struct fx *fx)
{
	mpool_value *v = NULL;
	int64_t ver;
	int r = ffx_apply_int(fx->c, "testmod.version", 0, 0, &v);

	REQUIREF(r == 0, "testmod.version: %s: %s", mpool_strerror(-r), mpool_errmsg(fx->c));
	ver = fx_obj_i64(mpool_value_get(v));
	mpool_value_free(v);
	return ver;
}

START_TEST(reload_reopens_a_rebuilt_module)
{
	char dir[96], path[160];
	struct fx fx;
	struct ffx_status st;
	struct not_these nt;
	int64_t ver;
	pid_t forksrv;
	int r;

	ffx_tempdir(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/testmod.so", dir);
	ffx_build_testmod(path, 1);
	{
		const char *args[] = { "--module", path, NULL };

		fx_start(&fx, args);
	}
	ver = version_of(&fx);
	REQUIREF(ver == 1, "testmod.version is %lld before the rebuild", (long long)ver);

	ffx_build_testmod(path, 2);   /* a new file renamed over the old path */
	ffx_status(&fx, NULL, &st);
	not_these_init(&nt, &st, 2, true);
	forksrv = forksrv_of(fx.pid);
	FREQUIRE(&fx, forksrv > 0, "mpoold %d has no fork server", (int)fx.pid);
	r = mpool_reload(fx.c);
	REQUIREF(r == 0, "mpool_reload: %s: %s", mpool_strerror(-r), mpool_errmsg(fx.c));
	ffx_wait(&fx, all_new, &nt, WAIT_MS, "every worker replaced by the reload", &st);
	/* The new workers come from a new fork server, which opened the file
	 * anew. */
	REQUIREF(forksrv_of(fx.pid) > 0 && forksrv_of(fx.pid) != forksrv,
		 "fork server %d before the reload, %d after", (int)forksrv, (int)forksrv_of(fx.pid));
	for (int k = 0; k < 4; k++) {   /* whichever worker answers */
		ver = version_of(&fx);
		REQUIREF(ver == 2, "testmod.version is %lld after rebuilding with 2 and reloading",
			 (long long)ver);
	}
	ffx_status(&fx, NULL, &st);
	REQUIREF(strcmp(st.health, "ok") == 0, "health '%s'", st.health);
	fx_stop(&fx);
}
END_TEST

/* ==== 9. the drain method ====================================================== */

START_TEST(drain_method_finishes_work_and_exits)
{
	const char *args[] = { "--module", testmod(), NULL };
	struct sleeper map;
	struct progress pr = { 10 };
	struct fx fx;
	struct ffx_status st;
	mpool *b;
	mpool_value *v = NULL;
	char how[64];
	pid_t child;
	int r, wst;

	fx_start(&fx, args);
	b = fx_connect(&fx);
	map = (struct sleeper){ &fx, "builtin.sleep", 400, 5, 5 };
	child = fx_fork(sleep_map_client, &map);
	ffx_wait(&fx, map_under_way, &pr, WAIT_MS, "the map under way", NULL);
	r = mpool_drain(fx.c);
	REQUIREF(r == 0, "mpool_drain: %s: %s", mpool_strerror(-r), mpool_errmsg(fx.c));
	r = ffx_apply_int(b, "testmod.ok", 1, 0, &v);
	REQUIREF(r == -MPOOL_E_SHUTDOWN, "an apply on an open connection during the drain: %d (%s)",
		 r, mpool_errmsg(b));
	ffx_status(&fx, b, &st);
	REQUIREF(strcmp(st.state, "draining") == 0 && st.jobs_active == 1,
		 "state '%s', jobs_active %llu during the drain", st.state,
		 (unsigned long long)st.jobs_active);
	fx_expect_child_ok(child, WAIT_MS, "the map during the drain");
	mpool_close(b);
	wst = fx_wait_exit(&fx, WAIT_MS);
	REQUIREF(WIFEXITED(wst) && WEXITSTATUS(wst) == 0, "mpoold after the drain: %s",
		 fx_describe_wait(wst, how, sizeof(how)));
	fx_wait_seen_gone(&fx, 5000);
	fx_stop(&fx);
}
END_TEST

/* ==== 10. initargs, and modules mpoold must refuse =========================== */

START_TEST(initargs_reach_init)
{
	const char *args[] = { "--module", testmod(), "--initargs", "{\"k\": [1, 2]}", NULL };
	const char *plain[] = { "--module", testmod(), NULL };
	struct fx fx;
	msgpack_sbuffer want;
	msgpack_packer pk;
	msgpack_zone zone;
	msgpack_object o;
	mpool_value *v = NULL;
	size_t off = 0;
	char got[256];
	int r;

	fx_sbuf_init(&want, &pk);
	msgpack_pack_map(&pk, 1);
	fx_pack_str(&pk, "k");
	msgpack_pack_array(&pk, 2);
	msgpack_pack_int64(&pk, 1);
	msgpack_pack_int64(&pk, 2);
	REQUIRE(msgpack_zone_init(&zone, 1024));
	REQUIRE(msgpack_unpack(want.data, want.size, &off, &zone, &o) == MSGPACK_UNPACK_SUCCESS);

	fx_start(&fx, args);
	for (int k = 0; k < 4; k++) {   /* both workers ran init */
		r = ffx_apply_int(fx.c, "testmod.initargs", 0, 0, &v);
		REQUIREF(r == 0, "testmod.initargs: %s: %s", mpool_strerror(-r), mpool_errmsg(fx.c));
		msgpack_object_print_buffer(got, sizeof(got), *mpool_value_get(v));
		REQUIREF(msgpack_object_equal(o, *mpool_value_get(v)),
			 "testmod.initargs returned %s, expected {\"k\": [1, 2]}", got);
		mpool_value_free(v);
	}
	fx_stop(&fx);

	fx_start(&fx, plain);
	r = ffx_apply_int(fx.c, "testmod.initargs", 0, 0, &v);
	REQUIREF(r == 0 && mpool_value_get(v)->type == MSGPACK_OBJECT_NIL,
		 "without --initargs init should see nil: %d (%s)", r, mpool_errmsg(fx.c));
	mpool_value_free(v);
	fx_stop(&fx);
	msgpack_zone_destroy(&zone);
	msgpack_sbuffer_destroy(&want);
}
END_TEST

START_TEST(bad_modules_stop_the_start)
{
	static const char missing[] = "/nonexistent-mpool-test/missing-module.so";
	const char *nodesc = ffx_env("MPOOL_TESTMOD_NODESC");
	const struct {
		const char *what;
		const char *args[8];
		const char *file;
		const char *cause;
	} cases[] = {
		{ "a missing file", { "--module", missing, NULL }, missing, "cannot load" },
		{ "no descriptor", { "--module", nodesc, NULL }, nodesc, "mpool_module" },
		{ "the same module twice", { "--module", testmod(), "--module", testmod(), NULL },
		  testmod(), "already loaded" },
		{ "initargs that are not JSON", { "--module", testmod(), "--initargs", "{\"k\": ", NULL },
		  "--initargs", "JSON" },
	};
	static char out[16384];

	for (unsigned k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
		const char *argv[12];
		char how[64];
		int n = 0, st;

		argv[n++] = "--workers";
		argv[n++] = "1";
		for (int i = 0; cases[k].args[i]; i++)
			argv[n++] = cases[k].args[i];
		argv[n] = NULL;
		st = ffx_run_mpoold(argv, out, sizeof(out), WAIT_MS);
		REQUIREF(!WIFSIGNALED(st), "%s: mpoold crashed at start: %s\n%s", cases[k].what,
			 fx_describe_wait(st, how, sizeof(how)), out);
		REQUIREF(WIFEXITED(st) && WEXITSTATUS(st) != 0, "%s: mpoold %s\n%s", cases[k].what,
			 fx_describe_wait(st, how, sizeof(how)), out);
		REQUIREF(strstr(out, cases[k].file) && strstr(out, cases[k].cause),
			 "%s: the error should name '%s' and say '%s':\n%s", cases[k].what,
			 cases[k].file, cases[k].cause, out);
	}
}
END_TEST

static Suite *lifecycle_suite(void)
{
	Suite *s = suite_create("lifecycle");
	TCase *tc;

	tc = tcase_create("deaths");
	tcase_set_timeout(tc, 60);
	tcase_add_loop_test(tc, sigkill_mid_chunk_keeps_reported_items, 0, 2);   /* retries 0, 1 */
	tcase_add_loop_test(tc, sigkill_during_sleep_map, 0, 2);                 /* retries 0, 1 */
	tcase_add_test(tc, apply_worker_deaths_are_named);
	tcase_add_test(tc, batched_applies_survive_a_crash_among_them);
	tcase_add_test(tc, kill_worker_names_the_signal);
	tcase_add_test(tc, crashing_item_exhausts_its_retries);
	suite_add_tcase(s, tc);

	tc = tcase_create("timeouts");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, timeout_kills_hung_workers);
	tcase_add_test(tc, daemon_wide_task_timeout);
	tcase_add_test(tc, map_timeout_keeps_finished_items);
	tcase_add_test(tc, out_of_range_options_are_bad_requests);
	suite_add_tcase(s, tc);

	tc = tcase_create("storms");
	tcase_set_timeout(tc, 60);
	tcase_add_loop_test(tc, failing_init_backs_off_and_fails_queued_work, 0, 2);   /* fail, die */
	tcase_add_test(tc, fork_failure_at_start);
	tcase_add_test(tc, fork_failure_on_respawn_recovers);
	tcase_add_test(tc, fork_server_killed_takes_its_workers_pool_recovers);
	tcase_add_test(tc, stopped_fork_server_hangs_no_client);
	tcase_add_test(tc, idle_worker_with_closed_channel_gets_no_work);
	tcase_add_test(tc, many_workers_start_through_a_full_channel);
	tcase_add_test(tc, no_fork_server_workers_fork_from_the_master);
	tcase_add_test(tc, workers_run_atfork_child_handlers);
	suite_add_tcase(s, tc);

	tc = tcase_create("recycling");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, recycle_by_tasks_with_jitter);
	tcase_add_test(tc, recycle_every_task_overlaps_within_bound);
	tcase_add_test(tc, recycle_by_rss);
	tcase_add_test(tc, rss_is_checked_within_a_chunk);
	tcase_add_test(tc, recycle_by_lifetime);
	suite_add_tcase(s, tc);

	tc = tcase_create("reload");
	tcase_set_timeout(tc, 60);
	tcase_add_loop_test(tc, reload_during_map_loses_nothing, 0, 2);   /* method, SIGHUP */
	tcase_add_test(tc, reload_reopens_a_rebuilt_module);
	tcase_add_test(tc, drain_method_finishes_work_and_exits);
	suite_add_tcase(s, tc);

	tc = tcase_create("modules");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, initargs_reach_init);
	tcase_add_test(tc, bad_modules_stop_the_start);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(lifecycle_suite());
	int failed;

	ffx_runner_init();
	srunner_run_all(sr, CK_NORMAL);
	ffx_runner_sweep();
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
