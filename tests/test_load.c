/* test_load: mpoold under load, slow readers and descriptor exhaustion.
 *
 *   - 64 client processes mix applies and maps (ordered, unordered, sized
 *     chunks) for about 10 s, every result checked; afterwards mpoold's
 *     descriptors are exactly back to their baseline and its RSS within
 *     LEAK_RSS_KIB of it (the baseline is taken after a warm-up round of
 *     the same load, so what the allocator keeps for reuse is not counted
 *     as a leak);
 *   - 100 streamed maps whose clients read one message a second: mpoold's
 *     RSS, sampled every 100 ms, levels off instead of growing, and another
 *     client's pings are answered promptly throughout;
 *   - mpoold limited to 64 descriptors (prlimit(2) on the running daemon,
 *     as `prlimit --nofile=64` would) while 200 clients connect and
 *     reconnect: an existing connection's pings are answered within a
 *     deadline, mpoold's CPU time stays below half the wall time (EMFILE on
 *     accept must pause accepting, not spin), and afterwards every
 *     descriptor is back and new clients get in.
 *
 * More than the fixture's 16 forked clients are needed: fx_fork() starts 16
 * group leaders and each forks 3 more clients (they inherit the fixture's
 * forked-client mode, so a failed check in any of them exits 90 and never
 * touches Check), all dying with the test (PR_SET_PDEATHSIG). */
#include <check.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fixture.h"

#define LEADERS 16
#define PER_LEADER 4             /* the leader and 3 more */
#define LOAD_MS 10000
#define WARMUP_MS 2000
#define LEAK_RSS_KIB (8 * 1024)

/* Under AddressSanitizer (tests/run-all's second build) mpoold's freed
 * memory waits in ASan's quarantine (256 MiB by default) and every block
 * carries redzones, so each RSS bound gets this much slack there: enough
 * for the sanitizer, still far below growth without bound. */
#if defined(__SANITIZE_ADDRESS__)
#define RSS_SLACK_KIB (320L * 1024)
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define RSS_SLACK_KIB (320L * 1024)
#endif
#endif
#ifndef RSS_SLACK_KIB
#define RSS_SLACK_KIB 0L
#endif

/* ---- helpers ----------------------------------------------------------------- */

static unsigned count_fds(pid_t pid)
{
	char path[64];
	struct dirent *e;
	unsigned n = 0;
	DIR *d;

	snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
	d = opendir(path);
	REQUIREF(d, "%s: %s", path, strerror(errno));
	while ((e = readdir(d)))
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}

/* utime + stime of pid, in clock ticks. */
static unsigned long long cpu_ticks(pid_t pid)
{
	char path[64], buf[1024], *p;
	unsigned long long ut = 0, st = 0;
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	REQUIREF(fd >= 0, "%s: %s", path, strerror(errno));
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	REQUIRE(n > 0);
	buf[n] = '\0';
	/* After "(comm)": state is field 3; utime 14, stime 15. */
	p = strrchr(buf, ')');
	REQUIRE(p);
	p += 2;
	for (int field = 3; field < 14 && p; field++) {
		p = strchr(p, ' ');
		if (p)
			p++;
	}
	REQUIRE(p && sscanf(p, "%llu %llu", &ut, &st) == 2);
	return ut + st;
}

static bool quiet(const struct fx_status *st, void *arg)
{
	return st->totals.clients == *(uint64_t *)arg && st->totals.jobs_active == 0 &&
	       fx_pool_idle(st, FX_WORKERS_DEFAULT);
}

static void wait_quiet(struct fx *fx, uint64_t clients, const char *what)
{
	fx_wait_status(fx, quiet, &clients, FX_WAIT_MS, what, NULL);
}

static uint64_t rng_next(uint64_t *s)
{
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 0x2545F4914F6CDD1Dull;
}

/* ---- 64 clients mixing applies and maps --------------------------------------- */

struct mix {
	struct fx *fx;
	int64_t until;           /* CLOCK_MONOTONIC ms */
	uint64_t seed;
};

static void apply_square_ok(mpool *c, int64_t x)
{
	msgpack_sbuffer sb;
	mpool_value *v = NULL;
	int r;

	fx_arg_int(&sb, x);
	r = mpool_apply(c, "builtin.square", sb.data, sb.size, &v);
	msgpack_sbuffer_destroy(&sb);
	REQUIREF(r == 0, "apply square %lld: %s: %s", (long long)x, mpool_strerror(-r), mpool_errmsg(c));
	REQUIREF(fx_obj_u64(mpool_value_get(v)) == (uint64_t)(x * x), "square of %lld", (long long)x);
	mpool_value_free(v);
}

static void apply_echo_ok(mpool *c, uint64_t i)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;
	msgpack_zone zone;
	msgpack_object sent;
	mpool_value *v = NULL;
	size_t off = 0;
	int r;

	fx_sbuf_init(&sb, &pk);
	msgpack_pack_map(&pk, 3);
	fx_pack_str(&pk, "i");
	msgpack_pack_uint64(&pk, i);
	fx_pack_str(&pk, "s");
	fx_pack_str(&pk, "a string that goes there and back");
	fx_pack_str(&pk, "l");
	msgpack_pack_array(&pk, 3);
	msgpack_pack_double(&pk, 1.5);
	msgpack_pack_nil(&pk);
	msgpack_pack_int64(&pk, -(int64_t)i);
	r = mpool_apply(c, "builtin.echo", sb.data, sb.size, &v);
	REQUIREF(r == 0, "apply echo: %s: %s", mpool_strerror(-r), mpool_errmsg(c));
	REQUIRE(msgpack_zone_init(&zone, 1024));
	REQUIRE(msgpack_unpack(sb.data, sb.size, &off, &zone, &sent) == MSGPACK_UNPACK_SUCCESS);
	REQUIREF(msgpack_object_equal(sent, *mpool_value_get(v)), "echo %llu came back different",
		 (unsigned long long)i);
	msgpack_zone_destroy(&zone);
	mpool_value_free(v);
	msgpack_sbuffer_destroy(&sb);
}

static int mix_client(void *arg)
{
	struct mix *m = arg;
	mpool *c = fx_connect(m->fx);
	uint64_t s = m->seed | 1, ops = 0;

	while (fx_now_ms() < m->until) {
		uint64_t r = rng_next(&s);

		switch (r % 6) {
		case 0:
			apply_square_ok(c, (int64_t)(r >> 40) - (1 << 23));
			break;
		case 1:
			apply_echo_ok(c, r >> 32);
			break;
		case 2:
			fx_map_squares(c, 1000 + (r >> 40) % 2000, (int64_t)(r % 1000), NULL, 0);
			break;
		case 3:
			fx_map_squares(c, 500, (int64_t)(r % 777), &(struct mpool_map_opts)MPOOL_MAP_OPTS(.unordered = 1),
				       0);
			break;
		case 4:
			fx_map_squares(c, 300, 3, &(struct mpool_map_opts)MPOOL_MAP_OPTS(.chunksize = 7), 7);
			break;
		default: {
			mpool_value *v = NULL;
			int rr = (r >> 8) & 1 ? mpool_ping(c) : mpool_status(c, &v);

			mpool_value_free(v);
			REQUIREF(rr == 0, "ping/status: %s: %s", mpool_strerror(-rr), mpool_errmsg(c));
		}
		}
		ops++;
	}
	mpool_close(c);
	return ops > 0 ? 0 : 3;
}

/* A group leader: forks PER_LEADER - 1 more clients, runs one itself, and
 * fails unless every one of them succeeded. */
static int mix_leader(void *arg)
{
	struct mix *m = arg;
	pid_t parent = getpid(), kids[PER_LEADER];
	int bad = 0;

	for (int i = 1; i < PER_LEADER; i++) {
		struct mix mine = *m;

		mine.seed = m->seed * 31 + (uint64_t)i;
		fflush(NULL);
		kids[i] = fork();
		if (kids[i] < 0)
			return 4;
		if (kids[i] == 0) {
			if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
				_exit(127);
			_exit(mix_client(&mine) & 0xff);
		}
	}
	bad |= mix_client(m) != 0;
	for (int i = 1; i < PER_LEADER; i++) {
		int st;

		if (waitpid(kids[i], &st, 0) != kids[i] || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
			char how[64];

			fprintf(stderr, "client %d %s\n", (int)kids[i], fx_describe_wait(st, how, sizeof(how)));
			bad = 1;
		}
	}
	return bad;
}

static void run_mix(struct fx *fx, int ms, uint64_t seed)
{
	struct mix m[LEADERS];
	pid_t pids[LEADERS];
	int64_t until = fx_now_ms() + ms;

	for (int i = 0; i < LEADERS; i++) {
		m[i] = (struct mix){ fx, until, seed + (uint64_t)i * 1000003 };
		pids[i] = fx_fork(mix_leader, &m[i]);
	}
	for (int i = 0; i < LEADERS; i++)
		fx_expect_child_ok(pids[i], ms + 30000, "a group of 4 load clients");
}

START_TEST(mixed_load_64_clients)
{
	struct fx fx;
	struct fx_status st;
	unsigned fds0, fds;
	long rss0, rss, peak = 0;
	uint64_t done0;

	fx_start(&fx, NULL);
	/* Warm-up: the same load, so the baseline includes what the allocator
	 * keeps for reuse. */
	run_mix(&fx, WARMUP_MS, 1);
	wait_quiet(&fx, 1, "the warm-up's clients gone and the pool idle");
	fds0 = count_fds(fx.pid);
	rss0 = fx_rss_kib(fx.pid);
	fx_status(&fx, &st);
	done0 = st.totals.tasks_done;

	run_mix(&fx, LOAD_MS, 777);
	wait_quiet(&fx, 1, "the load's clients gone and the pool idle");
	fx_status(&fx, &st);
	REQUIREF(st.totals.workers_died == 0 && st.totals.tasks_failed == 0,
		 "under load: %llu workers died, %llu tasks failed",
		 (unsigned long long)st.totals.workers_died, (unsigned long long)st.totals.tasks_failed);
	/* Closing connections is asynchronous for the daemon too. */
	for (int64_t end = fx_now_ms() + 5000; (fds = count_fds(fx.pid)) != fds0;) {
		REQUIREF(fx_now_ms() < end, "mpoold holds %u descriptors after the load, %u before", fds, fds0);
		fx_tick();
	}
	rss = fx_rss_kib(fx.pid);
	peak = rss;
	fprintf(stderr, "mixed_load_64_clients: %llu tasks in %d s; fds %u -> %u; VmRSS %ld -> %ld KiB\n",
		(unsigned long long)(st.totals.tasks_done - done0), LOAD_MS / 1000, fds0, fds, rss0, rss);
	REQUIREF(rss > 0 && rss <= rss0 + LEAK_RSS_KIB + RSS_SLACK_KIB,
		 "mpoold's VmRSS grew from %ld to %ld KiB over the load (tolerance %d KiB)", rss0, rss,
		 LEAK_RSS_KIB);
	(void)peak;
	fx_map_squares(fx.c, 10000, 0, NULL, 0);
	fx_stop(&fx);
}
END_TEST

/* ---- 100 slow readers ------------------------------------------------------ */

#define SLOW_CLIENTS 100
#define SLOW_WINDOW 1024
#define SLOW_ITEM 256
#define SLOW_SECONDS 5

static void pack_feed(msgpack_packer *pk, uint64_t msgid, uint64_t first, uint64_t n)
{
	char item[SLOW_ITEM];

	msgpack_pack_array(pk, 3);
	msgpack_pack_uint8(pk, 2);
	fx_pack_str(pk, "feed");
	msgpack_pack_array(pk, 3);
	msgpack_pack_uint64(pk, msgid);
	msgpack_pack_array(pk, (uint32_t)n);
	for (uint64_t i = 0; i < n; i++) {
		memset(item, (int)((first + i) & 0xff), sizeof(item));
		msgpack_pack_bin(pk, sizeof(item));
		msgpack_pack_bin_body(pk, item, sizeof(item));
	}
	msgpack_pack_false(pk);
}

/* Streamed maps whose clients read one message a second and feed whatever
 * credit they read: mpoold holds each one's input and unread output, and
 * must level off there, not keep growing, while serving everyone else. */
START_TEST(slow_readers_do_not_grow_memory)
{
	static const char *const args[] = { "--stream-window", "1024", NULL };
	static struct fx_raw raw[SLOW_CLIENTS];
	static long samples[SLOW_SECONDS * 10 + 10];
	uint64_t fed[SLOW_CLIENTS] = { 0 }, reads = 0, results = 0;
	struct fx fx;
	struct fx_status st;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	unsigned n_samples = 0;
	long rss0, peak = 0, worst_ping = 0;
	int64_t t0;

	fx_start(&fx, args);
	rss0 = fx_rss_kib(fx.pid);
	fx_sbuf_init(&sb, &pk);
	for (int i = 0; i < SLOW_CLIENTS; i++) {
		fx_raw_open(&fx, &raw[i]);
		fx_req_head(&pk, 1, "map");
		msgpack_pack_array(&pk, 3);
		fx_pack_str(&pk, "builtin.echo");
		msgpack_pack_array(&pk, 0);
		msgpack_pack_map(&pk, 2);
		fx_pack_str(&pk, "stream");
		msgpack_pack_true(&pk);
		fx_pack_str(&pk, "chunksize");
		msgpack_pack_uint32(&pk, 16);
		REQUIRE(fx_raw_send(&raw[i], sb.data, sb.size) == 0);
		msgpack_sbuffer_clear(&sb);
	}

	t0 = fx_now_ms();
	for (int sec = 0; sec < SLOW_SECONDS; sec++) {
		/* Each client reads one message, and feeds the credit it read. */
		for (int i = 0; i < SLOW_CLIENTS; i++) {
			const msgpack_object *m;

			REQUIREF(fx_raw_next(&raw[i], FX_WAIT_MS) == 1, "slow client %d: EOF", i);
			reads++;
			m = &raw[i].msg.data;
			REQUIREF(m->type == MSGPACK_OBJECT_ARRAY && m->via.array.size == 3 &&
				 fx_obj_u64(&m->via.array.ptr[0]) == 2,
				 "slow client %d: a response to an open stream", i);
			if (fx_obj_str_eq(&m->via.array.ptr[1], "credit")) {
				uint64_t credit = fx_obj_u64(&m->via.array.ptr[2].via.array.ptr[1]);

				if (credit > SLOW_WINDOW)
					credit = SLOW_WINDOW;
				pack_feed(&pk, 1, fed[i], credit);
				REQUIREF(fx_raw_send(&raw[i], sb.data, sb.size) == 0, "slow client %d: hung up", i);
				msgpack_sbuffer_clear(&sb);
				fed[i] += credit;
			} else {
				REQUIREF(fx_obj_str_eq(&m->via.array.ptr[1], "result"),
					 "slow client %d: an unexpected notification", i);
				results++;
			}
		}
		/* Then a second of sampling mpoold's memory and another client's
		 * latency. */
		while (fx_now_ms() < t0 + (int64_t)(sec + 1) * 1000) {
			int64_t p0 = fx_now_ms(), lat;
			long rss = fx_rss_kib(fx.pid);

			REQUIREF(mpool_ping(fx.c) == 0, "%s", mpool_errmsg(fx.c));
			lat = fx_now_ms() - p0;
			if (lat > worst_ping)
				worst_ping = lat;
			if (n_samples < sizeof(samples) / sizeof(samples[0]))
				samples[n_samples++] = rss;
			if (rss > peak)
				peak = rss;
			for (int k = 0; k < 10; k++)
				fx_tick();           /* pacing: one sample per 100 ms */
		}
	}
	fx_status(&fx, &st);
	fprintf(stderr, "slow_readers: %d clients, %llu messages read (%llu results), VmRSS %ld KiB at "
		"start, peak %ld KiB, at 2 s %ld KiB, last %ld KiB; slowest ping %ld ms; "
		"jobs_active %llu, busy workers %u\n", SLOW_CLIENTS, (unsigned long long)reads,
		(unsigned long long)results, rss0, peak, samples[n_samples > 20 ? 20 : 0],
		samples[n_samples - 1], worst_ping, (unsigned long long)st.totals.jobs_active,
		fx_count_state(&st, "busy"));
	REQUIREF(worst_ping < 1000, "a ping took %ld ms beside %d slow readers", worst_ping, SLOW_CLIENTS);
	REQUIREF(st.totals.jobs_active == SLOW_CLIENTS, "%llu of the %d slow streams are open",
		 (unsigned long long)st.totals.jobs_active, SLOW_CLIENTS);
	/* Levelled off: the last two seconds grow no more than 8 MiB over the
	 * peak of the first three, and the whole stays within what the fed
	 * input and its answers can hold. */
	{
		long early = 0, late = 0;

		for (unsigned i = 0; i < n_samples; i++) {
			if (i < n_samples * 3 / 5 && samples[i] > early)
				early = samples[i];
			if (i >= n_samples * 3 / 5 && samples[i] > late)
				late = samples[i];
		}
		REQUIREF(late <= early + 8 * 1024 + RSS_SLACK_KIB / 4,
			 "mpoold's VmRSS kept growing beside slow readers: "
			 "%ld KiB in the first 3 s, %ld KiB after", early, late);
		REQUIREF(peak <= rss0 + SLOW_CLIENTS * 2 * (SLOW_WINDOW * (SLOW_ITEM + 8) / 1024) + 48 * 1024 +
				 RSS_SLACK_KIB,
			 "mpoold's VmRSS reached %ld KiB (from %ld KiB) for %d streams of %d items of %d bytes",
			 peak, rss0, SLOW_CLIENTS, SLOW_WINDOW, SLOW_ITEM);
	}
	for (int i = 0; i < SLOW_CLIENTS; i++)
		fx_raw_close(&raw[i]);
	msgpack_sbuffer_destroy(&sb);
	wait_quiet(&fx, 1, "the slow readers gone");
	fx_stop(&fx);
}
END_TEST

/* ---- 200 clients against 64 descriptors ---------------------------------------- */

#define STORM_CLIENTS 200
#define STORM_MS 3000

static int storm_connect(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	static const uint8_t ping[] = { 0x94, 0x00, 0x01, 0xa4, 'p', 'i', 'n', 'g', 0x90 };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	REQUIREF(fd >= 0, "socket: %s", strerror(errno));
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		/* The backlog is full: try again later. */
		REQUIREF(errno == EAGAIN, "connect: %s", strerror(errno));
		close(fd);
		return -1;
	}
	/* Queued on the socket even before mpoold accepts it. */
	REQUIREF(send(fd, ping, sizeof(ping), MSG_NOSIGNAL) == (ssize_t)sizeof(ping), "send: %s",
		 strerror(errno));
	return fd;
}

START_TEST(emfile_storm_stays_responsive)
{
	static int fds[STORM_CLIENTS];
	struct rlimit lim = { 64, 64 };
	struct fx fx;
	struct fx_raw old;
	unsigned fds0, fds_now;
	unsigned long long cpu0, cpu1;
	uint64_t pongs = 0, pings = 0;
	long worst = 0, hz = sysconf(_SC_CLK_TCK);
	int64_t t0, t1, next_ping;
	double share;
	struct fx_status st;
	bool killed = false;
	pid_t victim;

	fx_start(&fx, NULL);
	fx_raw_open(&fx, &old);
	{
		msgpack_sbuffer sb;
		msgpack_packer pk;
		const msgpack_object *err, *res;

		fx_sbuf_init(&sb, &pk);
		fx_req_head(&pk, 1, "ping");
		msgpack_pack_array(&pk, 0);
		REQUIRE(fx_raw_send(&old, sb.data, sb.size) == 0);
		msgpack_sbuffer_destroy(&sb);
		fx_raw_response(&old, 1, &err, &res, FX_WAIT_MS);
	}
	/* As `prlimit --pid PID --nofile=64`: soft and hard. */
	REQUIREF(prlimit(fx.pid, RLIMIT_NOFILE, &lim, NULL) == 0, "prlimit: %s", strerror(errno));
	fds0 = count_fds(fx.pid);
	REQUIREF(fds0 < 64, "mpoold already holds %u descriptors", fds0);
	fx_status(&fx, &st);
	victim = st.workers[0].pid;

	for (int i = 0; i < STORM_CLIENTS; i++)
		fds[i] = storm_connect(fx.sock);
	cpu0 = cpu_ticks(fx.pid);
	t0 = fx_now_ms();
	next_ping = t0;
	while (fx_now_ms() < t0 + STORM_MS) {
		struct pollfd pfd[STORM_CLIENTS];

		/* The existing connection: a ping or an apply every 100 ms,
		 * answered within 1 s. */
		if (fx_now_ms() >= next_ping) {
			static const uint8_t ping[] = { 0x94, 0x00, 0x02, 0xa4, 'p', 'i', 'n', 'g', 0x90 };
			static const uint8_t apply[] = {
				0x94, 0x00, 0x03, 0xa5, 'a', 'p', 'p', 'l', 'y', 0x92, 0xae, 'b', 'u', 'i', 'l',
				't', 'i', 'n', '.', 's', 'q', 'u', 'a', 'r', 'e', 0x07,
			};
			bool sq = pings % 2;
			int64_t p0 = fx_now_ms();
			const msgpack_object *m;

			REQUIREF(fx_raw_send(&old, sq ? apply : ping, sq ? sizeof(apply) : sizeof(ping)) == 0,
				 "the existing client was dropped");
			REQUIREF(fx_raw_next(&old, 1000) == 1, "the existing client's request: EOF");
			m = &old.msg.data;
			REQUIREF(m->type == MSGPACK_OBJECT_ARRAY && m->via.array.size == 4 &&
				 m->via.array.ptr[2].type == MSGPACK_OBJECT_NIL &&
				 (sq ? fx_obj_u64(&m->via.array.ptr[3]) == 49
				     : fx_obj_str_eq(&m->via.array.ptr[3], "pong")),
				 "the existing client's %s failed during the storm", sq ? "apply" : "ping");
			if (fx_now_ms() - p0 > worst)
				worst = (long)(fx_now_ms() - p0);
			pings++;
			next_ping = fx_now_ms() + 100;
		}
		/* A worker dies while descriptors are out: its replacement needs
		 * some, and must come once there are. */
		if (!killed && fx_now_ms() >= t0 + STORM_MS / 3) {
			REQUIRE(kill(victim, SIGKILL) == 0);
			killed = true;
		}
		/* Storm clients: whoever got in is answered, closes, connects again. */
		for (int i = 0; i < STORM_CLIENTS; i++)
			pfd[i] = (struct pollfd){ fds[i], POLLIN, 0 };
		if (poll(pfd, STORM_CLIENTS, 10) < 0)
			continue;
		for (int i = 0; i < STORM_CLIENTS; i++) {
			if (fds[i] < 0) {
				fds[i] = storm_connect(fx.sock);
				continue;
			}
			if (!(pfd[i].revents & (POLLIN | POLLHUP | POLLERR)))
				continue;
			{
				uint8_t buf[256];
				ssize_t n = recv(fds[i], buf, sizeof(buf), 0);

				if (n > 0 && buf[0] == 0x94)
					pongs++;
			}
			close(fds[i]);
			fds[i] = storm_connect(fx.sock);
		}
	}
	t1 = fx_now_ms();
	cpu1 = cpu_ticks(fx.pid);
	share = (double)(cpu1 - cpu0) / (double)hz * 1000.0 / (double)(t1 - t0);
	fprintf(stderr, "emfile_storm: %u fds at start under a limit of 64; %llu storm pings answered in "
		"%lld ms; the existing client's %llu requests, slowest %ld ms; mpoold used %.0f%% of a CPU\n",
		fds0, (unsigned long long)pongs, (long long)(t1 - t0), (unsigned long long)pings, worst,
		share * 100);
	REQUIREF(fx_log_has(&fx, "Too many open files"),
		 "mpoold never ran out of descriptors: the storm did not test EMFILE");
	REQUIREF(pongs > 0, "no storm client was ever served");
	REQUIREF(share < 0.5, "mpoold used %.0f%% of a CPU while out of descriptors (spinning on accept?)",
		 share * 100);

	for (int i = 0; i < STORM_CLIENTS; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	wait_quiet(&fx, 2, "the storm's connections closed, and the killed worker replaced");
	for (int64_t end = fx_now_ms() + 5000; (fds_now = count_fds(fx.pid)) != fds0;) {
		REQUIREF(fx_now_ms() < end, "mpoold holds %u descriptors after the storm, %u before",
			 fds_now, fds0);
		fx_tick();
	}
	/* New clients get in, and work runs. */
	for (int i = 0; i < 20; i++) {
		mpool *c = fx_connect(&fx);

		REQUIREF(mpool_ping(c) == 0, "a new client after the storm: %s", mpool_errmsg(c));
		mpool_close(c);
	}
	fx_map_squares(fx.c, 10000, 0, NULL, 0);
	fx_raw_close(&old);
	fx_stop(&fx);
}
END_TEST

static Suite *load_suite(void)
{
	Suite *s = suite_create("load");
	TCase *tc = tcase_create("load");

	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, mixed_load_64_clients);
	tcase_add_test(tc, slow_readers_do_not_grow_memory);
	tcase_add_test(tc, emfile_storm_stays_responsive);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(load_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
