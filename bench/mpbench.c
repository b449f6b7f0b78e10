/* mpbench: mpool's side of the benchmark, through libmpool.
 *
 *   mpbench --socket PATH FIGURE [--n N] [--reps R] [--workers W] [--module NAME]
 *
 * FIGURE (bench/README.md says what each measures and why):
 *   ready     wait until mpoold answers and W workers are idle
 *   map       mpool_map_collect of builtin.square over 0..N-1, items/s
 *   apply     N serial mpool_apply of builtin.square, latency p50/p99 in us
 *   pipeline  N mpool_apply_async, --window in flight, tasks/s
 *   recycle   map of builtin.square over N items, tasks/s (run it against
 *             an mpoold with --max-tasks-per-child 1)
 *   spin      map of builtin.spin (--ms) over N items, parallel efficiency %
 *   echo      map of builtin.echo over N distinct 1 KiB bin items, MB/s
 *   sleep     map of builtin.sleep (--ms) over N items, chunksize 1, with
 *             --retries: items/s (the cluster's I/O-bound scaling and its
 *             recovery after a node is killed)
 *   stream    mpool_imap_stream of builtin.square over N produced items to a
 *             reader that sleeps --slow-us every --slow-every results;
 *             mpoold's VmHWM and largest sampled VmRSS in MiB, and
 *             mpbench's own VmHWM
 *
 * --module NAME calls NAME.square, NAME.spin and NAME.echo instead of the
 * builtin module's: "py.pytasks" runs bench/pytasks.py's, the Python
 * functions the Python peer runs too.
 *
 * --spread 1 or -1 sets the requests' spread option (a cluster node: share
 * with other nodes, or keep local); 0, the default, leaves it out.
 *
 * Each figure prints one JSON object on stdout: {"figure", "unit", "n",
 * "reps": [...]} (plus extras).  Packing the items is inside the timing, as
 * pickling is inside Pool.map's.  Failures go to stderr, exit status 1. */
#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <mpool/mpool.h>

/* The module whose square, spin and echo the figures call: "builtin", or
 * "py.pytasks" for the same functions in Python (bench/pytasks.py, through
 * the py module). */
static const char *module = "builtin";
static char fn_square[128], fn_spin[128], fn_echo[128];

struct args {
	const char *socket;
	const char *figure;
	uint64_t n;
	int reps;
	unsigned workers;
	unsigned window;
	unsigned ms;
	unsigned slow_every;
	unsigned slow_us;
	int timeout_ms;
	int spread;
	unsigned retries;
};

/* The spread option of every request (--spread). */
static int g_spread;

static void fail(mpool *p, const char *what, int r)
{
	fprintf(stderr, "mpbench: %s: %s (%d)\n", what, p ? mpool_errmsg(p) : "", r);
	exit(1);
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void sleep_us(unsigned us)
{
	struct timespec ts = { (time_t)(us / 1000000), (long)(us % 1000000) * 1000 };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static double secs_since(uint64_t t0)
{
	return (double)(now_ns() - t0) / 1e9;
}

static mpool *connect_or_die(const struct args *a)
{
	char why[MPOOL_ERRMSG_MAX];
	mpool *p;
	int r = mpool_connect(a->socket, &p, why, sizeof(why));

	if (r < 0) {
		fprintf(stderr, "mpbench: %s (%d)\n", why, r);
		exit(1);
	}
	return p;
}

/* ---- status ---------------------------------------------------------------- */

static const msgpack_object *map_get(const msgpack_object *m, const char *key)
{
	size_t kl = strlen(key);

	if (!m || m->type != MSGPACK_OBJECT_MAP)
		return NULL;
	for (uint32_t i = 0; i < m->via.map.size; i++) {
		const msgpack_object *k = &m->via.map.ptr[i].key;

		if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == kl &&
		    memcmp(k->via.str.ptr, key, kl) == 0)
			return &m->via.map.ptr[i].val;
	}
	return NULL;
}

static uint64_t map_u64(const msgpack_object *m, const char *key)
{
	const msgpack_object *v = map_get(m, key);

	return v && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? v->via.u64 : 0;
}

/* Workers in state "idle" in a status map. */
static unsigned idle_workers(const msgpack_object *st)
{
	const msgpack_object *ws = map_get(st, "workers");
	unsigned n = 0;

	if (!ws || ws->type != MSGPACK_OBJECT_ARRAY)
		return 0;
	for (uint32_t i = 0; i < ws->via.array.size; i++) {
		const msgpack_object *s = map_get(&ws->via.array.ptr[i], "state");

		n += s && s->type == MSGPACK_OBJECT_STR && s->via.str.size == 4 &&
		     memcmp(s->via.str.ptr, "idle", 4) == 0;
	}
	return n;
}

/* Polls until mpoold accepts connections and has a.workers idle workers:
 * readiness, never a fixed sleep.  The runner calls this after starting
 * mpoold. */
static void fig_ready(const struct args *a)
{
	uint64_t deadline = now_ns() + (uint64_t)a->timeout_ms * 1000000u;
	mpool *p = NULL;

	for (;;) {
		mpool_value *v;

		if (!p && mpool_connect(a->socket, &p, NULL, 0) < 0)
			p = NULL;
		if (p) {
			int r = mpool_status(p, &v);

			if (r < 0) {
				mpool_close(p);
				p = NULL;
			} else {
				const msgpack_object *st = mpool_value_get(v);
				unsigned idle = idle_workers(st);
				uint64_t pid = map_u64(st, "pid");

				mpool_value_free(v);
				if (idle >= a->workers) {
					printf("{\"figure\": \"ready\", \"pid\": %llu, \"workers\": %u}\n",
					       (unsigned long long)pid, idle);
					mpool_close(p);
					return;
				}
			}
		}
		if (now_ns() > deadline) {
			fprintf(stderr, "mpbench: mpoold at %s not ready within %d ms\n", a->socket,
				a->timeout_ms);
			exit(1);
		}
		sleep_us(2000);
	}
}

/* ---- JSON output --------------------------------------------------------------- */

static void print_reps(const char *figure, const char *unit, uint64_t n, const double *reps,
		       int nreps, const char *extra)
{
	printf("{\"figure\": \"%s\", \"unit\": \"%s\", \"n\": %llu, \"reps\": [", figure, unit,
	       (unsigned long long)n);
	for (int i = 0; i < nreps; i++)
		printf("%s%.3f", i ? ", " : "", reps[i]);
	printf("]%s%s}\n", extra ? ", " : "", extra ? extra : "");
}

/* ---- maps ------------------------------------------------------------------ */

static void pack_ints(msgpack_sbuffer *sb, uint64_t n)
{
	msgpack_packer pk;

	msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
	for (uint64_t i = 0; i < n; i++)
		msgpack_pack_uint64(&pk, i);
}

/* One map of builtin.square over 0..n-1 with every result collected (the
 * shape of Pool.map); returns its seconds, checked. */
static double one_square_map(mpool *p, uint64_t n)
{
	msgpack_sbuffer sb;
	mpool_value *v;
	const msgpack_object *o;
	uint64_t t0 = now_ns();
	double dt;
	int r;

	msgpack_sbuffer_init(&sb);
	pack_ints(&sb, n);
	{
		struct mpool_map_opts o = MPOOL_MAP_OPTS(.spread = g_spread);

		r = mpool_map_collect(p, fn_square, sb.data, sb.size, n, &o, &v);
	}
	dt = secs_since(t0);
	if (r < 0)
		fail(p, "map", r);
	o = mpool_value_get(v);
	if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != n ||
	    (n > 0 && o->via.array.ptr[n - 1].via.u64 != (n - 1) * (n - 1))) {
		fprintf(stderr, "mpbench: map: wrong results\n");
		exit(1);
	}
	mpool_value_free(v);
	msgpack_sbuffer_destroy(&sb);
	return dt;
}

static void fig_map(const struct args *a)
{
	mpool *p = connect_or_die(a);
	double reps[64];

	one_square_map(p, 1000);    /* warm: the connection, the workers */
	for (int i = 0; i < a->reps; i++)
		reps[i] = (double)a->n / one_square_map(p, a->n);
	print_reps("map", "items/s", a->n, reps, a->reps, NULL);
	mpool_close(p);
}

static void fig_recycle(const struct args *a)
{
	mpool *p = connect_or_die(a);
	mpool_value *st;
	double reps[64];
	uint64_t before, after;
	char extra[96];
	int r;

	one_square_map(p, a->workers);
	if ((r = mpool_status(p, &st)) < 0)
		fail(p, "status", r);
	before = map_u64(map_get(mpool_value_get(st), "totals"), "workers_recycled");
	mpool_value_free(st);
	for (int i = 0; i < a->reps; i++)
		reps[i] = (double)a->n / one_square_map(p, a->n);
	if ((r = mpool_status(p, &st)) < 0)
		fail(p, "status", r);
	after = map_u64(map_get(mpool_value_get(st), "totals"), "workers_recycled");
	mpool_value_free(st);
	/* The figure means nothing unless every task really had a fresh worker. */
	snprintf(extra, sizeof(extra), "\"recycled\": %llu", (unsigned long long)(after - before));
	print_reps("recycle", "tasks/s", a->n, reps, a->reps, extra);
	mpool_close(p);
}

static void fig_spin(const struct args *a)
{
	mpool *p = connect_or_die(a);
	msgpack_sbuffer sb;
	msgpack_packer pk;
	double reps[64], ideal = (double)a->n * a->ms / 1000.0 / a->workers;

	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	for (uint64_t i = 0; i < a->n; i++)
		msgpack_pack_uint32(&pk, a->ms);
	one_square_map(p, 1000);
	for (int i = 0; i < a->reps; i++) {
		struct mpool_map_summary s;
		uint64_t t0 = now_ns();
		int r = mpool_map(p, fn_spin, sb.data, sb.size, a->n, NULL, NULL, NULL, &s);

		if (r < 0 || s.failed)
			fail(p, "spin map", r);
		reps[i] = 100.0 * ideal / secs_since(t0);
	}
	print_reps("spin", "%", a->n, reps, a->reps, NULL);
	msgpack_sbuffer_destroy(&sb);
	mpool_close(p);
}

static void fig_sleep(const struct args *a)
{
	mpool *p = connect_or_die(a);
	struct mpool_map_opts o = MPOOL_MAP_OPTS(.chunksize = 1, .retries = a->retries,
						 .spread = a->spread);
	msgpack_sbuffer sb;
	msgpack_packer pk;
	double reps[64];

	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	for (uint64_t i = 0; i < a->n; i++)
		msgpack_pack_uint32(&pk, a->ms);
	for (int i = 0; i < a->reps; i++) {
		struct mpool_map_summary s;
		uint64_t t0 = now_ns();
		int r = mpool_map(p, "builtin.sleep", sb.data, sb.size, a->n, &o, NULL, NULL, &s);

		if (r < 0 || s.failed)
			fail(p, "sleep map", r);
		reps[i] = (double)a->n / secs_since(t0);
	}
	print_reps("sleep", "items/s", a->n, reps, a->reps, NULL);
	msgpack_sbuffer_destroy(&sb);
	mpool_close(p);
}

static void fig_echo(const struct args *a)
{
	mpool *p = connect_or_die(a);
	unsigned char item[1024];
	double reps[64];

	for (int i = 0; i < 1024; i++)
		item[i] = (unsigned char)i;
	one_square_map(p, 1000);
	for (int i = 0; i < a->reps; i++) {
		msgpack_sbuffer sb;
		msgpack_packer pk;
		mpool_value *v;
		const msgpack_object *o;
		uint64_t t0 = now_ns();
		int r;

		msgpack_sbuffer_init(&sb);
		msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
		for (uint64_t k = 0; k < a->n; k++) {
			uint32_t tag = (uint32_t)k;

			/* Distinct items, as in the Python peer. */
			memcpy(item, &tag, sizeof(tag));
			msgpack_pack_bin(&pk, sizeof(item));
			msgpack_pack_bin_body(&pk, item, sizeof(item));
		}
		r = mpool_map_collect(p, fn_echo, sb.data, sb.size, a->n, NULL, &v);
		reps[i] = (double)a->n * 1024 / secs_since(t0) / 1e6;
		if (r < 0)
			fail(p, "echo map", r);
		o = mpool_value_get(v);
		if (o->via.array.size != a->n ||
		    o->via.array.ptr[a->n - 1].type != MSGPACK_OBJECT_BIN ||
		    o->via.array.ptr[a->n - 1].via.bin.size != 1024 ||
		    memcmp(o->via.array.ptr[a->n - 1].via.bin.ptr, item, 1024) != 0) {
			fprintf(stderr, "mpbench: echo: wrong results\n");
			exit(1);
		}
		mpool_value_free(v);
		msgpack_sbuffer_destroy(&sb);
	}
	print_reps("echo", "MB/s", a->n, reps, a->reps, NULL);
	mpool_close(p);
}

/* ---- applies --------------------------------------------------------------- */

static int cmp_double(const void *x, const void *y)
{
	double a = *(const double *)x, b = *(const double *)y;

	return (a > b) - (a < b);
}

static void fig_apply(const struct args *a)
{
	mpool *p = connect_or_die(a);
	double *lat = calloc(a->n, sizeof(*lat));
	char arg[1] = { 7 };   /* positive fixint 7 */

	if (!lat)
		fail(NULL, "calloc", 0);
	printf("{\"figure\": \"apply\", \"unit\": \"us\", \"n\": %llu, \"reps\": [",
	       (unsigned long long)a->n);
	for (int rep = -1; rep < a->reps; rep++) {
		/* Round -1 warms up (a tenth of n), unrecorded. */
		uint64_t n = rep < 0 ? a->n / 10 : a->n;

		for (uint64_t i = 0; i < n; i++) {
			mpool_value *v;
			uint64_t t0 = now_ns();
			struct mpool_apply_opts o = MPOOL_APPLY_OPTS(.spread = g_spread);
			int r = mpool_apply_with(p, fn_square, arg, 1, &o, &v);

			lat[i] = (double)(now_ns() - t0) / 1000.0;
			if (r < 0 || mpool_value_get(v)->via.u64 != 49)
				fail(p, "apply", r);
			mpool_value_free(v);
		}
		if (rep < 0)
			continue;    /* warm-up round */
		qsort(lat, a->n, sizeof(*lat), cmp_double);
		printf("%s{\"p50\": %.3f, \"p99\": %.3f}", rep ? ", " : "", lat[a->n / 2],
		       lat[a->n * 99 / 100]);
	}
	printf("]}\n");
	free(lat);
	mpool_close(p);
}

/* The pipelined applies' tally; one per process, as mpbench runs one
 * figure. */
static struct {
	uint64_t done, failed, wrong;
} pipe_st;

/* userdata is the item: the result must be its square. */
static void pipe_result(void *ud, const msgpack_object *result)
{
	uint64_t i = (uint64_t)(uintptr_t)ud;

	if (result->type != MSGPACK_OBJECT_POSITIVE_INTEGER || result->via.u64 != i * i)
		pipe_st.wrong++;
	pipe_st.done++;
}

static void pipe_error(void *ud, int code, const char *msg)
{
	fprintf(stderr, "mpbench: pipelined apply %llu failed: %d %s\n",
		(unsigned long long)(uintptr_t)ud, code, msg);
	pipe_st.failed++;
	pipe_st.done++;
}

/* Keeps a->window applies in flight on one connection, driven like an event
 * loop would (poll the fd, mpool_process), until a->n are answered. */
static double one_pipeline(mpool *p, const struct args *a)
{
	uint64_t sent = 0, t0 = now_ns();
	msgpack_sbuffer sb;
	msgpack_packer pk;

	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);

	pipe_st.done = pipe_st.failed = pipe_st.wrong = 0;
	while (pipe_st.done < a->n) {
		struct pollfd pfd = { .fd = mpool_fd(p) };
		int r;

		/* The burst leaves in one write (mpool_cork), as a program
		 * submitting many applies at once would send it. */
		if ((r = mpool_cork(p)) < 0)
			fail(p, "cork", r);
		while (sent < a->n && sent - pipe_st.done < a->window) {
			mpool_async *h;

			sb.size = 0;
			msgpack_pack_uint64(&pk, sent);
			r = mpool_apply_async(p, fn_square, sb.data, sb.size, NULL,
					      pipe_result, pipe_error, (void *)(uintptr_t)sent, &h);
			if (r < 0)
				fail(p, "apply_async", r);
			/* The callback still runs; the handle is not needed. */
			mpool_async_free(h);
			sent++;
		}
		if ((r = mpool_uncork(p)) < 0)
			fail(p, "uncork", r);
		pfd.events = (short)((mpool_events(p) & MPOOL_EV_READ ? POLLIN : 0) |
				     (mpool_events(p) & MPOOL_EV_WRITE ? POLLOUT : 0));
		if (poll(&pfd, 1, -1) < 0 && errno != EINTR)
			fail(p, "poll", -errno);
		if ((r = mpool_process(p)) < 0)
			fail(p, "process", r);
	}
	msgpack_sbuffer_destroy(&sb);
	if (pipe_st.failed || pipe_st.wrong)
		fail(p, "pipelined applies failed or answered wrong", 0);
	return secs_since(t0);
}

static void fig_pipeline(const struct args *a)
{
	mpool *p = connect_or_die(a);
	struct args warm = *a;
	double reps[64];
	char extra[64];

	warm.n = a->window * 2;
	one_pipeline(p, &warm);
	for (int i = 0; i < a->reps; i++)
		reps[i] = (double)a->n / one_pipeline(p, a);
	snprintf(extra, sizeof(extra), "\"window\": %u", a->window);
	print_reps("pipeline", "tasks/s", a->n, reps, a->reps, extra);
	mpool_close(p);
}

/* ---- streaming ----------------------------------------------------------- */

struct producer {
	uint64_t next, n;
};

static int produce(void *ud, msgpack_packer *pk)
{
	struct producer *pr = ud;

	if (pr->next == pr->n)
		return 0;
	msgpack_pack_uint64(pk, pr->next++);
	return 1;
}

/* A VmXXX line of /proc/PID/status, in KiB; 0 when unreadable. */
static uint64_t proc_kib(uint64_t pid, const char *key)
{
	char path[64], line[256];
	uint64_t v = 0;
	size_t kl = strlen(key);
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%llu/status", (unsigned long long)pid);
	f = fopen(path, "re");
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (strncmp(line, key, kl) == 0 && line[kl] == ':')
			v = strtoull(line + kl + 1, NULL, 10);
	fclose(f);
	return v;
}

static void fig_stream(const struct args *a)
{
	mpool *p = connect_or_die(a);
	struct producer pr = { 0, a->n };
	struct mpool_item it;
	mpool_value *st;
	mpool_iter *iter;
	uint64_t pid, got = 0, max_rss = 0, start_rss, next_sample = 0, t0;
	double dt;
	int r;

	if ((r = mpool_status(p, &st)) < 0)
		fail(p, "status", r);
	pid = map_u64(mpool_value_get(st), "pid");
	mpool_value_free(st);
	start_rss = proc_kib(pid, "VmRSS");
	t0 = now_ns();
	r = mpool_imap_stream(p, fn_square, produce, &pr, NULL, &iter);
	if (r < 0)
		fail(p, "imap_stream", r);
	while ((r = mpool_iter_next(iter, -1, &it)) == 1) {
		if (!it.result || it.index != got || it.result->via.u64 != got * got)
			fail(p, "stream: wrong result", 0);
		got++;
		if (a->slow_every && got % a->slow_every == 0)
			sleep_us(a->slow_us);
		if (now_ns() >= next_sample) {
			uint64_t rss = proc_kib(pid, "VmRSS");

			if (rss > max_rss)
				max_rss = rss;
			next_sample = now_ns() + 50 * 1000000u;
		}
	}
	dt = secs_since(t0);
	if (r < 0)
		fail(p, "stream", r);
	if (got != a->n)
		fail(p, "stream: short", 0);
	printf("{\"figure\": \"stream\", \"unit\": \"MiB\", \"n\": %llu, \"pid\": %llu, "
	       "\"client_vmhwm_mib\": %.2f, "
	       "\"vmhwm_mib\": %.2f, \"max_vmrss_mib\": %.2f, \"start_vmrss_mib\": %.2f, "
	       "\"seconds\": %.3f, \"items_per_s\": %.1f, \"slow_every\": %u, \"slow_us\": %u}\n",
	       (unsigned long long)a->n, (unsigned long long)pid,
	       (double)proc_kib((uint64_t)getpid(), "VmHWM") / 1024,
	       (double)proc_kib(pid, "VmHWM") / 1024, (double)max_rss / 1024,
	       (double)start_rss / 1024, dt, (double)a->n / dt, a->slow_every, a->slow_us);
	mpool_iter_free(iter);
	mpool_close(p);
}

/* ---- main ---------------------------------------------------------------- */

static const struct figure {
	const char *name;
	void (*run)(const struct args *a);
	uint64_t default_n;
} figures[] = {
	{ "ready", fig_ready, 0 },
	{ "map", fig_map, 1000000 },
	{ "apply", fig_apply, 20000 },
	{ "pipeline", fig_pipeline, 200000 },
	{ "recycle", fig_recycle, 2000 },
	{ "spin", fig_spin, 1000 },
	{ "sleep", fig_sleep, 600 },
	{ "echo", fig_echo, 100000 },
	{ "stream", fig_stream, 10000000 },
};

static void usage(void)
{
	fprintf(stderr,
		"usage: mpbench --socket PATH FIGURE [--n N] [--reps R] [--workers W]\n"
		"               [--window W] [--ms MS] [--slow-every N] [--slow-us US]\n"
		"               [--timeout-ms MS] [--module NAME] [--spread 1|-1]\n"
		"               [--retries N]\n"
		"FIGURE: ready map apply pipeline recycle spin echo stream\n");
	exit(2);
}

int main(int argc, char **argv)
{
	struct args a = { .reps = 3, .workers = (unsigned)sysconf(_SC_NPROCESSORS_ONLN),
			  .window = 1000, .ms = 1, .slow_every = 2048, .slow_us = 1000,
			  .timeout_ms = 10000 };
	const struct figure *fig = NULL;

	for (int i = 1; i < argc; i++) {
		const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (o[0] != '-') {
			a.figure = o;
			continue;
		}
		if (!v)
			usage();
		i++;
		if (strcmp(o, "--socket") == 0)
			a.socket = v;
		else if (strcmp(o, "--n") == 0)
			a.n = strtoull(v, NULL, 10);
		else if (strcmp(o, "--reps") == 0)
			a.reps = atoi(v);
		else if (strcmp(o, "--workers") == 0)
			a.workers = (unsigned)atoi(v);
		else if (strcmp(o, "--window") == 0)
			a.window = (unsigned)atoi(v);
		else if (strcmp(o, "--ms") == 0)
			a.ms = (unsigned)atoi(v);
		else if (strcmp(o, "--slow-every") == 0)
			a.slow_every = (unsigned)atoi(v);
		else if (strcmp(o, "--slow-us") == 0)
			a.slow_us = (unsigned)atoi(v);
		else if (strcmp(o, "--timeout-ms") == 0)
			a.timeout_ms = atoi(v);
		else if (strcmp(o, "--module") == 0)
			module = v;
		else if (strcmp(o, "--spread") == 0)
			a.spread = atoi(v);
		else if (strcmp(o, "--retries") == 0)
			a.retries = (unsigned)atoi(v);
		else
			usage();
	}
	if (!a.socket || !a.figure || a.reps < 1 || a.reps > 64 || a.workers < 1 || a.window < 1)
		usage();
	for (size_t i = 0; i < sizeof(figures) / sizeof(figures[0]); i++)
		if (strcmp(figures[i].name, a.figure) == 0)
			fig = &figures[i];
	if (!fig)
		usage();
	if (a.n == 0)
		a.n = fig->default_n;
	snprintf(fn_square, sizeof(fn_square), "%s.square", module);
	snprintf(fn_spin, sizeof(fn_spin), "%s.spin", module);
	snprintf(fn_echo, sizeof(fn_echo), "%s.echo", module);
	g_spread = a.spread;
	fig->run(&a);
	return 0;
}
