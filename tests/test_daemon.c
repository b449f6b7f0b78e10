/* test_daemon: integration tests of mpoold and libmpool working normally --
 * apply, map, several clients, recycling, fairness, limits, the status map,
 * and the byte-level examples of proto/PROTOCOL.md.  Every test starts its
 * own daemon (fixture.h) and stops it; the fault tests (dying clients,
 * workers and masters, malformed input, shutdown) are in test_faults.c.
 *
 * Loops over many items use REQUIRE (fixture.h), not ck_assert: Check
 * writes every passing ck_assert to its result pipe. */
#include <check.h>

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <grp.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "fixture.h"

/* ---- helpers ------------------------------------------------------------- */

static mpool_value *apply_ok(mpool *c, const char *fn, const msgpack_sbuffer *arg)
{
	mpool_value *v = NULL;
	int r = mpool_apply(c, fn, arg->data, arg->size, &v);

	REQUIREF(r == 0, "apply %s: %s: %s", fn, mpool_strerror(-r), mpool_errmsg(c));
	return v;
}

static int apply_int(mpool *c, const char *fn, int64_t arg, mpool_value **ret)
{
	msgpack_sbuffer sb;
	int r;

	fx_arg_int(&sb, arg);
	r = mpool_apply(c, fn, sb.data, sb.size, ret);
	msgpack_sbuffer_destroy(&sb);
	return r;
}

static void ping_ok(mpool *c)
{
	int r = mpool_ping(c);

	REQUIREF(r == 0, "ping: %s: %s", mpool_strerror(-r), mpool_errmsg(c));
}

/* Decodes the one value in sb. */
static msgpack_object decode(const msgpack_sbuffer *sb, msgpack_zone *zone)
{
	msgpack_object o;
	size_t off = 0;

	REQUIRE(msgpack_unpack(sb->data, sb->size, &off, zone, &o) == MSGPACK_UNPACK_SUCCESS);
	return o;
}

/* ---- 0. connecting -------------------------------------------------------- */

#define NOBODY 65534

/* A stand-in for mpoold: a process that listens on path as uid and holds
 * the connections it accepts, saying nothing.  Returns its pid once it
 * listens; it dies with the test (PR_SET_PDEATHSIG) or server_stop(). */
static pid_t server_start(const char *path, uid_t uid)
{
	int ready[2];
	pid_t pid;
	char b;

	REQUIRE(pipe2(ready, O_CLOEXEC) == 0);
	pid = fork();
	REQUIRE(pid >= 0);
	if (pid == 0) {
		struct sockaddr_un sa = { .sun_family = AF_UNIX };
		int fd;

		close(ready[0]);
		if (uid != geteuid() &&
		    (setgroups(0, NULL) < 0 || setgid(uid) < 0 || setuid(uid) < 0))
			_exit(10);
		/* After the change of credentials, which clears it. */
		if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() == 1)
			_exit(11);
		snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0 || bind(fd, (const struct sockaddr *)&sa, sizeof(sa)) < 0 ||
		    listen(fd, 8) < 0 || write(ready[1], "l", 1) != 1)
			_exit(12);
		for (;;)
			if (accept(fd, NULL, NULL) < 0 && errno != EINTR)
				_exit(13);
	}
	close(ready[1]);
	REQUIREF(read(ready[0], &b, 1) == 1, "the stand-in server (uid %u) did not listen on %s",
		 (unsigned)uid, path);
	close(ready[0]);
	return pid;
}

static void server_stop(pid_t pid, const char *path)
{
	int st;

	REQUIRE(kill(pid, SIGKILL) == 0);
	REQUIRE(waitpid(pid, &st, 0) == pid);
	REQUIRE(unlink(path) == 0);
}

/* Issue 14: a client must not talk to a server run by another user, who
 * may have made /tmp/mpool-UID first or swapped the socket, to read its
 * requests and forge answers.  mpool_connect refuses it and says why. */
START_TEST(connect_refuses_another_users_server)
{
	char dir[] = "/tmp/mpool-peer-XXXXXX", path[sizeof(dir) + 16], why[MPOOL_ERRMSG_MAX];
	struct passwd *svc = getpwnam("mpool");
	mpool *c = NULL;
	pid_t pid;
	int r;

	if (geteuid() != 0 || (svc && svc->pw_uid == NOBODY)) {
		/* Only root can run a server as another uid. */
		fprintf(stderr, "SKIP connect_refuses_another_users_server: %s\n",
			geteuid() != 0 ? "needs root" : "uid 65534 is the mpool user here");
		return;
	}
	REQUIRE(mkdtemp(dir));
	REQUIRE(chown(dir, NOBODY, NOBODY) == 0);
	snprintf(path, sizeof(path), "%s/s.sock", dir);

	/* No server at all: the reason names the path and the cause. */
	r = mpool_connect(path, &c, why, sizeof(why));
	REQUIREF(r == -MPOOL_E_SYS && !c && strstr(why, path) && strstr(why, strerror(ENOENT)),
		 "no server: %d, '%s'", r, why);

	pid = server_start(path, NOBODY);
	memset(why, 0, sizeof(why));
	r = mpool_connect(path, &c, why, sizeof(why));
	REQUIREF(r == -MPOOL_E_UNTRUSTED && !c, "a server run by uid %d: %d (%s), '%s'", NOBODY,
		 r, mpool_strerror(r), why);
	REQUIREF(strstr(why, path) && strstr(why, "uid 65534") && strstr(why, "refusing"),
		 "the reason: '%s'", why);
	/* A short buffer gets the start of the reason, terminated. */
	r = mpool_connect(path, &c, why, 8);
	REQUIREF(r == -MPOOL_E_UNTRUSTED && strlen(why) == 7, "short buffer: '%s'", why);
	REQUIREF(mpool_connect(path, &c, NULL, 0) == -MPOOL_E_UNTRUSTED && !c, "no buffer");
	/* Unless the caller names that uid: then it is its choice. */
	REQUIRE(setenv("MPOOL_TRUST_UID", "65534", 1) == 0);
	r = mpool_connect(path, &c, why, sizeof(why));
	REQUIREF(r == 0 && c, "uid 65534 with MPOOL_TRUST_UID=65534: %d, '%s'", r, why);
	mpool_close(c);
	c = NULL;
	REQUIRE(setenv("MPOOL_TRUST_UID", "6553", 1) == 0);
	REQUIREF(mpool_connect(path, &c, NULL, 0) == -MPOOL_E_UNTRUSTED && !c, "another uid");
	REQUIRE(unsetenv("MPOOL_TRUST_UID") == 0);
	server_stop(pid, path);

	/* The same stand-in run by root is trusted: it was the uid. */
	pid = server_start(path, 0);
	r = mpool_connect(path, &c, why, sizeof(why));
	REQUIREF(r == 0 && c, "a server run by root: %d, '%s'", r, why);
	mpool_close(c);
	server_stop(pid, path);
	REQUIRE(rmdir(dir) == 0);
}
END_TEST

/* ---- 1. apply ------------------------------------------------------------ */

START_TEST(apply_square)
{
	struct fx fx;
	mpool_value *v = NULL;
	int r;

	fx_start(&fx, NULL);
	r = apply_int(fx.c, "builtin.square", 7, &v);
	REQUIREF(r == 0, "%s: %s", mpool_strerror(-r), mpool_errmsg(fx.c));
	REQUIREF(fx_obj_u64(mpool_value_get(v)) == 49, "7 squared is %llu",
		 (unsigned long long)mpool_value_get(v)->via.u64);
	mpool_value_free(v);

	/* Negative integers square to positive ones. */
	r = apply_int(fx.c, "builtin.square", -12, &v);
	REQUIREF(r == 0, "%s: %s", mpool_strerror(-r), mpool_errmsg(fx.c));
	REQUIRE(fx_obj_u64(mpool_value_get(v)) == 144);
	mpool_value_free(v);

	/* The largest square that fits, and the first that does not. */
	r = apply_int(fx.c, "builtin.square", 0xffffffffll, &v);
	REQUIREF(r == 0, "%s: %s", mpool_strerror(-r), mpool_errmsg(fx.c));
	REQUIRE(fx_obj_u64(mpool_value_get(v)) == 0xfffffffe00000001ull);
	mpool_value_free(v);
	r = apply_int(fx.c, "builtin.square", 0x100000000ll, &v);
	REQUIREF(r == -MPOOL_E_TASK, "square of 2^32: %d (%s), expected task_error", r,
		 mpool_errmsg(fx.c));
	ping_ok(fx.c);
	fx_stop(&fx);
}
END_TEST

START_TEST(apply_echo_round_trip)
{
	static const char bin[] = { 0x00, (char)0xff, 0x10, (char)0xc1, 0x7f };
	struct fx fx;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	msgpack_zone zone;
	msgpack_object want;
	mpool_value *v;

	fx_start(&fx, NULL);
	fx_sbuf_init(&sb, &pk);
	msgpack_pack_map(&pk, 5);
	fx_pack_str(&pk, "ints");
	msgpack_pack_array(&pk, 6);
	msgpack_pack_int64(&pk, 0);
	msgpack_pack_int64(&pk, -1);
	msgpack_pack_int64(&pk, INT64_MIN);
	msgpack_pack_uint64(&pk, UINT64_MAX);
	msgpack_pack_int64(&pk, 300);
	msgpack_pack_int64(&pk, -70000);
	fx_pack_str(&pk, "str");
	fx_pack_str(&pk, "h\xc3\xa9llo, w\xc3\xb6rld -- a string longer than thirty-one bytes");
	fx_pack_str(&pk, "bin");
	msgpack_pack_bin(&pk, sizeof(bin));
	msgpack_pack_bin_body(&pk, bin, sizeof(bin));
	fx_pack_str(&pk, "nested");
	msgpack_pack_array(&pk, 4);
	msgpack_pack_nil(&pk);
	msgpack_pack_true(&pk);
	msgpack_pack_map(&pk, 2);
	fx_pack_str(&pk, "k");
	msgpack_pack_array(&pk, 1);
	msgpack_pack_array(&pk, 0);
	fx_pack_str(&pk, "f");
	msgpack_pack_double(&pk, 1.5);
	msgpack_pack_array(&pk, 2);
	fx_pack_str(&pk, "");
	msgpack_pack_map(&pk, 0);
	fx_pack_str(&pk, "empty bin");
	msgpack_pack_bin(&pk, 0);

	v = apply_ok(fx.c, "builtin.echo", &sb);
	REQUIRE(msgpack_zone_init(&zone, 4096));
	want = decode(&sb, &zone);
	REQUIREF(msgpack_object_equal(want, *mpool_value_get(v)),
		 "builtin.echo did not return its argument unchanged");
	mpool_value_free(v);
	msgpack_zone_destroy(&zone);
	msgpack_sbuffer_destroy(&sb);

	/* A large argument: 8 MiB of bin. */
	{
		size_t n = 8u << 20;
		char *big = malloc(n);
		const msgpack_object *o;

		REQUIRE(big);
		for (size_t i = 0; i < n; i++)
			big[i] = (char)(i * 7 + (i >> 13));
		fx_sbuf_init(&sb, &pk);
		msgpack_pack_bin(&pk, n);
		msgpack_pack_bin_body(&pk, big, n);
		v = apply_ok(fx.c, "builtin.echo", &sb);
		o = mpool_value_get(v);
		REQUIREF(o->type == MSGPACK_OBJECT_BIN && o->via.bin.size == n &&
			 memcmp(o->via.bin.ptr, big, n) == 0, "an 8 MiB bin did not round-trip");
		mpool_value_free(v);
		msgpack_sbuffer_destroy(&sb);
		free(big);
	}
	fx_stop(&fx);
}
END_TEST

START_TEST(apply_errors)
{
	struct fx fx;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	mpool_value *v = NULL;
	int r;

	fx_start(&fx, NULL);
	fx_sbuf_init(&sb, &pk);
	fx_pack_str(&pk, "seven");
	r = mpool_apply(fx.c, "builtin.square", sb.data, sb.size, &v);
	REQUIREF(r == -MPOOL_E_TYPE, "square of a string: %d (%s), expected -MPOOL_E_TYPE", r,
		 mpool_errmsg(fx.c));
	REQUIREF(strstr(mpool_errmsg(fx.c), "str"), "the message does not name the type: '%s'",
		 mpool_errmsg(fx.c));
	msgpack_sbuffer_destroy(&sb);

	fx_sbuf_init(&sb, &pk);
	msgpack_pack_array(&pk, 0);
	r = mpool_apply(fx.c, "builtin.sleep", sb.data, sb.size, &v);
	REQUIREF(r == -MPOOL_E_TYPE, "sleep of an array: %d (%s)", r, mpool_errmsg(fx.c));
	REQUIREF(strstr(mpool_errmsg(fx.c), "array"), "message '%s'", mpool_errmsg(fx.c));
	msgpack_sbuffer_destroy(&sb);

	r = apply_int(fx.c, "builtin.nosuch", 1, &v);
	REQUIREF(r == -MPOOL_E_NOFUNC, "unknown function: %d (%s)", r, mpool_errmsg(fx.c));
	REQUIREF(strstr(mpool_errmsg(fx.c), "builtin.nosuch"), "message '%s'", mpool_errmsg(fx.c));
	r = apply_int(fx.c, "nomodule.square", 1, &v);
	REQUIREF(r == -MPOOL_E_NOFUNC, "unknown module: %d (%s)", r, mpool_errmsg(fx.c));
	r = apply_int(fx.c, "square", 1, &v);
	REQUIREF(r == -MPOOL_E_NOFUNC, "name without module: %d (%s)", r, mpool_errmsg(fx.c));
	r = apply_int(fx.c, "", 1, &v);
	REQUIREF(r == -MPOOL_E_NOFUNC || r == -MPOOL_E_BADREQ || r == -MPOOL_E_INVAL,
		 "empty function name: %d (%s)", r, mpool_errmsg(fx.c));

	/* Per-task failures do not hurt the connection or the pool. */
	ping_ok(fx.c);
	r = apply_int(fx.c, "builtin.square", 3, &v);
	REQUIREF(r == 0 && fx_obj_u64(mpool_value_get(v)) == 9, "after errors: %d", r);
	mpool_value_free(v);

	/* Two values where one is expected: refused before sending. */
	fx_sbuf_init(&sb, &pk);
	msgpack_pack_int64(&pk, 1);
	msgpack_pack_int64(&pk, 2);
	r = mpool_apply(fx.c, "builtin.square", sb.data, sb.size, &v);
	REQUIREF(r == -MPOOL_E_INVAL, "two values as one argument: %d (%s)", r, mpool_errmsg(fx.c));
	msgpack_sbuffer_destroy(&sb);
	ping_ok(fx.c);
	fx_stop(&fx);
}
END_TEST

START_TEST(apply_pid_is_a_worker)
{
	struct fx fx;
	struct fx_status st;
	mpool_value *v = NULL;
	int64_t pid;
	int r;

	fx_start(&fx, NULL);
	r = apply_int(fx.c, "builtin.pid", 0, &v);
	REQUIREF(r == 0, "%s: %s", mpool_strerror(-r), mpool_errmsg(fx.c));
	pid = fx_obj_i64(mpool_value_get(v));
	mpool_value_free(v);
	fx_status(&fx, &st);
	REQUIREF(fx_has_worker(&st, (pid_t)pid), "builtin.pid returned %lld, not a worker's pid",
		 (long long)pid);
	REQUIREF(pid != fx.pid && pid != getpid(), "builtin.pid returned %lld", (long long)pid);
	REQUIREF(st.totals.tasks_done == 1, "tasks_done %llu after one apply",
		 (unsigned long long)st.totals.tasks_done);
	fx_stop(&fx);
}
END_TEST

/* ---- 2. map --------------------------------------------------------------- */

START_TEST(map_60k_ordered)
{
	struct fx fx;
	uint64_t chunks;

	fx_start(&fx, NULL);
	/* Default chunksize: ceil(n / (4 workers)) capped at 4096.  (60 000
	 * items: libmpool sends a map of 65 536 or more in parts, and those
	 * are chunked as they arrive; test_async has them.) */
	chunks = fx_map_squares(fx.c, 60000, 0, NULL, 4096);
	REQUIREF(chunks >= 15, "%llu chunks", (unsigned long long)chunks);
	fx_stop(&fx);
}
END_TEST

START_TEST(map_100k_unordered)
{
	struct mpool_map_opts o = MPOOL_MAP_OPTS(.chunksize = 1000, .unordered = 1);
	struct fx fx;
	uint64_t chunks;

	fx_start(&fx, NULL);
	chunks = fx_map_squares(fx.c, 100000, 0, &o, 1000);
	REQUIREF(chunks >= 100, "%llu chunks", (unsigned long long)chunks);
	/* Small chunks, many of them, out of order. */
	o.chunksize = 3;
	chunks = fx_map_squares(fx.c, 10000, 5, &o, 3);
	REQUIREF(chunks >= 3334, "%llu chunks", (unsigned long long)chunks);
	fx_stop(&fx);
}
END_TEST

START_TEST(map_collect_10k)
{
	struct fx fx;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	mpool_value *v = NULL;
	const msgpack_object *o;
	int r;

	fx_start(&fx, NULL);
	fx_sbuf_init(&sb, &pk);
	fx_pack_range(&pk, 0, 10000);
	r = mpool_map_collect(fx.c, "builtin.square", sb.data, sb.size, 10000, NULL, &v);
	REQUIREF(r == 0, "%s: %s", mpool_strerror(-r), mpool_errmsg(fx.c));
	o = mpool_value_get(v);
	REQUIREF(o->type == MSGPACK_OBJECT_ARRAY && o->via.array.size == 10000,
		 "collected %u results", o->type == MSGPACK_OBJECT_ARRAY ? o->via.array.size : 0);
	for (uint64_t i = 0; i < 10000; i++) {
		const msgpack_object *e = &o->via.array.ptr[i];

		REQUIREF(e->type == MSGPACK_OBJECT_POSITIVE_INTEGER && e->via.u64 == i * i,
			 "result %llu is wrong", (unsigned long long)i);
	}
	mpool_value_free(v);
	msgpack_sbuffer_destroy(&sb);

	/* Unordered collection still lands in item order. */
	fx_sbuf_init(&sb, &pk);
	fx_pack_range(&pk, 100, 5000);
	r = mpool_map_collect(fx.c, "builtin.square", sb.data, sb.size, 5000,
			      &(struct mpool_map_opts)MPOOL_MAP_OPTS(.chunksize = 7, .unordered = 1), &v);
	REQUIREF(r == 0, "%s: %s", mpool_strerror(-r), mpool_errmsg(fx.c));
	o = mpool_value_get(v);
	REQUIRE(o->type == MSGPACK_OBJECT_ARRAY && o->via.array.size == 5000);
	for (uint64_t i = 0; i < 5000; i++)
		REQUIREF(o->via.array.ptr[i].via.u64 == (i + 100) * (i + 100), "result %llu",
			 (unsigned long long)i);
	mpool_value_free(v);
	msgpack_sbuffer_destroy(&sb);
	fx_stop(&fx);
}
END_TEST

/* Items of mixed kinds and sizes, some past the chunk byte limit together,
 * come back in order however the dispatcher cuts them (it hops over the
 * marks of the walk on arrival and walks around the limit). */
START_TEST(map_mixed_items_round_trip)
{
	static const uint32_t sizes[] = { 0, 1, 31, 32, 300, 70000, 200000, 20000 };
	static const uint32_t chunksizes[] = { 0, 1, 63, 64, 65, 200 };
	const uint64_t n = 1200;
	struct fx fx;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	char *buf = malloc(200100);

	REQUIRE(buf);
	for (size_t i = 0; i < 200100; i++)
		buf[i] = (char)(i * 13 + (i >> 9));
	fx_start(&fx, NULL);
	fx_sbuf_init(&sb, &pk);
	for (uint64_t i = 0; i < n; i++) {
		uint32_t sz = sizes[(i * 7 + i / 5) % 8];

		if (i % 3 == 0) {
			msgpack_pack_int64(&pk, (int64_t)i - 600);
		} else if (i % 3 == 1) {
			msgpack_pack_bin(&pk, sz);
			msgpack_pack_bin_body(&pk, buf + i % 17, sz);
		} else {
			msgpack_pack_array(&pk, 2);
			msgpack_pack_str_with_body(&pk, buf, i % 40);
			msgpack_pack_double(&pk, (double)i / 4);
		}
	}
	for (size_t c = 0; c < sizeof(chunksizes) / sizeof(chunksizes[0]); c++) {
		struct mpool_map_opts o = MPOOL_MAP_OPTS(.chunksize = chunksizes[c]);
		mpool_value *v = NULL;
		const msgpack_object *arr;
		msgpack_unpacked up;
		size_t off = 0;
		int r;

		r = mpool_map_collect(fx.c, "builtin.echo", sb.data, sb.size, n, &o, &v);
		REQUIREF(r == 0, "chunksize %u: %s: %s", chunksizes[c], mpool_strerror(-r),
			 mpool_errmsg(fx.c));
		arr = mpool_value_get(v);
		REQUIRE(arr->type == MSGPACK_OBJECT_ARRAY && arr->via.array.size == n);
		msgpack_unpacked_init(&up);
		for (uint64_t i = 0; i < n; i++) {
			REQUIRE(msgpack_unpack_next(&up, sb.data, sb.size, &off) ==
				MSGPACK_UNPACK_SUCCESS);
			REQUIREF(msgpack_object_equal(up.data, arr->via.array.ptr[i]),
				 "chunksize %u: item %llu came back changed", chunksizes[c],
				 (unsigned long long)i);
		}
		msgpack_unpacked_destroy(&up);
		mpool_value_free(v);
	}
	msgpack_sbuffer_destroy(&sb);
	free(buf);
	fx_stop(&fx);
}
END_TEST

START_TEST(map_chunksize_honoured)
{
	struct mpool_map_opts o = MPOOL_MAP_OPTS(.chunksize = 7);
	struct fx fx;
	uint64_t chunks;

	fx_start(&fx, NULL);
	chunks = fx_map_squares(fx.c, 100, 0, &o, 7);
	REQUIREF(chunks >= 15, "%llu chunks of chunksize 7 over 100 items", (unsigned long long)chunks);
	o.chunksize = 100;
	chunks = fx_map_squares(fx.c, 100, 0, &o, 100);
	REQUIRE(chunks >= 1);
	o.chunksize = 1000;   /* larger than the map */
	chunks = fx_map_squares(fx.c, 100, 0, &o, 1000);
	REQUIRE(chunks >= 1);
	o.chunksize = 1;
	chunks = fx_map_squares(fx.c, 50, 0, &o, 1);
	REQUIRE(chunks == 50);   /* one item cannot be cut in pieces */
	/* Default on 100 items and 2 workers: ceil(100 / 8) = 13. */
	chunks = fx_map_squares(fx.c, 100, 0, NULL, 13);
	REQUIRE(chunks >= 8);
	fx_stop(&fx);
}
END_TEST

static void never_called(void *ud, uint64_t first, const msgpack_object *res,
			 const struct mpool_item_error *errs, size_t n_errs)
{
	(void)ud;
	(void)res;
	(void)errs;
	(void)n_errs;
	FAILF("the callback of an empty map was called (first %llu)", (unsigned long long)first);
}

START_TEST(map_empty)
{
	struct mpool_map_summary sum = { 7, 7 };
	struct fx fx;
	mpool_value *v = NULL;
	int r;

	fx_start(&fx, NULL);
	r = mpool_map(fx.c, "builtin.square", "", 0, 0, NULL, never_called, NULL, &sum);
	REQUIREF(r == 0, "%s: %s", mpool_strerror(-r), mpool_errmsg(fx.c));
	REQUIREF(sum.items == 0 && sum.failed == 0, "summary {%llu, %llu}",
		 (unsigned long long)sum.items, (unsigned long long)sum.failed);
	r = mpool_map(fx.c, "builtin.square", "", 0, 0,
		      &(struct mpool_map_opts)MPOOL_MAP_OPTS(.chunksize = 5, .unordered = 1), never_called, NULL,
		      &sum);
	REQUIREF(r == 0 && sum.items == 0, "unordered empty map: %d", r);
	r = mpool_map_collect(fx.c, "builtin.square", "", 0, 0, NULL, &v);
	REQUIREF(r == 0, "%s: %s", mpool_strerror(-r), mpool_errmsg(fx.c));
	REQUIRE(mpool_value_get(v)->type == MSGPACK_OBJECT_ARRAY &&
		mpool_value_get(v)->via.array.size == 0);
	mpool_value_free(v);
	/* An empty map of an unknown function is still an unknown function. */
	r = mpool_map(fx.c, "builtin.nosuch", "", 0, 0, NULL, never_called, NULL, &sum);
	REQUIREF(r == -MPOOL_E_NOFUNC, "empty map of an unknown function: %d (%s)", r,
		 mpool_errmsg(fx.c));
	ping_ok(fx.c);
	fx_stop(&fx);
}
END_TEST

struct mixed {
	uint64_t n;
	uint8_t *err_seen;
	uint8_t *res_seen;
	uint64_t n_errs;
};

static bool is_str_item(uint64_t i)
{
	return i % 10 == 3 || i == 999;
}

static void mixed_chunk(void *ud, uint64_t first, const msgpack_object *res,
			const struct mpool_item_error *errs, size_t n_errs)
{
	struct mixed *m = ud;
	uint32_t size = res->via.array.size;

	for (uint32_t i = 0; i < size; i++) {
		uint64_t idx = first + i;
		const msgpack_object *o = &res->via.array.ptr[i];

		REQUIRE(idx < m->n);
		REQUIREF(!m->res_seen[idx], "item %llu twice", (unsigned long long)idx);
		m->res_seen[idx] = 1;
		if (is_str_item(idx))
			REQUIREF(o->type == MSGPACK_OBJECT_NIL, "failed item %llu has a result (type %d)",
				 (unsigned long long)idx, (int)o->type);
		else
			REQUIREF(o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 == idx * idx,
				 "item %llu: wrong result", (unsigned long long)idx);
	}
	for (size_t k = 0; k < n_errs; k++) {
		uint64_t idx = errs[k].index;

		REQUIREF(idx >= first && idx < first + size, "error index %llu outside chunk %llu+%u",
			 (unsigned long long)idx, (unsigned long long)first, size);
		REQUIREF(is_str_item(idx), "item %llu (an integer) failed: %s", (unsigned long long)idx,
			 errs[k].message);
		REQUIREF(!m->err_seen[idx], "two errors for item %llu", (unsigned long long)idx);
		m->err_seen[idx] = 1;
		REQUIREF(errs[k].code == -MPOOL_E_TYPE, "item %llu: code %d, expected type_error",
			 (unsigned long long)idx, errs[k].code);
		REQUIREF(strstr(errs[k].message, "str"), "item %llu: message '%s'",
			 (unsigned long long)idx, errs[k].message);
		m->n_errs++;
	}
}

START_TEST(map_item_errors)
{
	const uint64_t n = 1000;
	struct mixed m = { .n = n };
	struct mpool_map_summary sum = { 0 };
	struct fx fx;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	mpool_value *v = NULL;
	uint64_t want = 0;
	int r;

	fx_start(&fx, NULL);
	fx_sbuf_init(&sb, &pk);
	for (uint64_t i = 0; i < n; i++) {
		if (is_str_item(i)) {
			char s[32];

			snprintf(s, sizeof(s), "s%llu", (unsigned long long)i);
			fx_pack_str(&pk, s);
			want++;
		} else {
			msgpack_pack_uint64(&pk, i);
		}
	}
	for (int pass = 0; pass < 2; pass++) {
		struct mpool_map_opts o = MPOOL_MAP_OPTS(.chunksize = pass ? 0 : 6, .unordered = pass);

		m.err_seen = calloc(n, 1);
		m.res_seen = calloc(n, 1);
		m.n_errs = 0;
		r = mpool_map(fx.c, "builtin.square", sb.data, sb.size, n, &o, mixed_chunk, &m, &sum);
		REQUIREF(r == 0, "a map with failing items must succeed: %s: %s", mpool_strerror(-r),
			 mpool_errmsg(fx.c));
		REQUIREF(sum.items == n && sum.failed == want, "summary {%llu, %llu}, expected {%llu, %llu}",
			 (unsigned long long)sum.items, (unsigned long long)sum.failed,
			 (unsigned long long)n, (unsigned long long)want);
		REQUIRE(m.n_errs == want);
		for (uint64_t i = 0; i < n; i++) {
			REQUIREF(m.res_seen[i], "item %llu never delivered", (unsigned long long)i);
			REQUIREF(m.err_seen[i] == is_str_item(i), "item %llu: error %d",
				 (unsigned long long)i, m.err_seen[i]);
		}
		free(m.err_seen);
		free(m.res_seen);
	}

	r = mpool_map_collect(fx.c, "builtin.square", sb.data, sb.size, n, NULL, &v);
	REQUIREF(r == -MPOOL_E_ITEMS, "map_collect with failed items: %d (%s)", r, mpool_errmsg(fx.c));
	REQUIREF(strstr(mpool_errmsg(fx.c), "item 3 ") || strstr(mpool_errmsg(fx.c), "item 3:"),
		 "map_collect should name the first failed item (3): '%s'", mpool_errmsg(fx.c));
	REQUIREF(strstr(mpool_errmsg(fx.c), "str"), "'%s'", mpool_errmsg(fx.c));
	ping_ok(fx.c);
	msgpack_sbuffer_destroy(&sb);
	fx_stop(&fx);
}
END_TEST

START_TEST(map_unknown_function)
{
	struct fx fx;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	struct mpool_map_summary sum;
	int r;

	fx_start(&fx, NULL);
	fx_sbuf_init(&sb, &pk);
	fx_pack_range(&pk, 0, 10);
	r = mpool_map(fx.c, "builtin.nosuch", sb.data, sb.size, 10, NULL, never_called, NULL, &sum);
	REQUIREF(r == -MPOOL_E_NOFUNC, "%d (%s)", r, mpool_errmsg(fx.c));
	msgpack_sbuffer_destroy(&sb);
	ping_ok(fx.c);
	fx_stop(&fx);
}
END_TEST

/* Nesting: an item or an apply argument may nest 29 levels deep. */
/* Option structs carry their own size (include/mpool/mpool.h), so they can
 * grow: one from an older header (smaller) is read up to its size, one
 * from a newer header (larger) is taken while every byte this library does
 * not know is 0, and one whose size was never set is refused.  retries
 * 1000 is past mpoold's --max-retries: a map that honours it fails, which
 * shows whether a field was read. */
START_TEST(opts_carry_their_size)
{
	struct {
		struct mpool_map_opts o;
		uint64_t newer;
	} big;
	struct mpool_map_opts old = MPOOL_MAP_OPTS(.chunksize = 7, .retries = 1000);
	struct mpool_map_opts unset = { 0 };
	struct mpool_apply_opts apply_unset = { 0 };
	struct mpool_spawn_opts spawn_unset = { 0 };
	struct mpool_process *proc = NULL;
	struct mpool_map_summary sum;
	mpool_value *v = NULL;
	mpool_iter *it = NULL;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	struct fx fx;
	int r;

	fx_start(&fx, NULL);
	fx_sbuf_init(&sb, &pk);
	fx_pack_range(&pk, 0, 10);

	/* The whole struct: retries 1000 is read, and refused by mpoold. */
	r = mpool_map(fx.c, "builtin.square", sb.data, sb.size, 10, &old, NULL, NULL, &sum);
	REQUIREF(r < 0 && r != -MPOOL_E_INVAL, "retries 1000 in a whole struct: %d (%s)", r,
		 mpool_errmsg(fx.c));
	/* An older, shorter struct ends before retries: chunksize is read,
	 * retries is not. */
	old.size = offsetof(struct mpool_map_opts, timeout_ms);
	fx_map_squares(fx.c, 70, 0, &old, 7);

	/* A newer, longer struct whose new bytes are 0. */
	memset(&big, 0, sizeof(big));
	big.o = (struct mpool_map_opts)MPOOL_MAP_OPTS(.chunksize = 7);
	big.o.size = sizeof(big);
	fx_map_squares(fx.c, 70, 0, &big.o, 7);
	/* ... and one that sets an option this library does not know. */
	big.newer = 1;
	r = mpool_map(fx.c, "builtin.square", sb.data, sb.size, 10, &big.o, NULL, NULL, &sum);
	REQUIREF(r == -MPOOL_E_INVAL && strstr(mpool_errmsg(fx.c), "does not know"),
		 "an unknown option: %d (%s)", r, mpool_errmsg(fx.c));

	/* Structs whose size was never set, of every kind and call. */
	r = mpool_map(fx.c, "builtin.square", sb.data, sb.size, 10, &unset, NULL, NULL, &sum);
	REQUIREF(r == -MPOOL_E_INVAL && strstr(mpool_errmsg(fx.c), "MPOOL_..._OPTS()"),
		 "map, size 0: %d (%s)", r, mpool_errmsg(fx.c));
	r = mpool_imap(fx.c, "builtin.square", sb.data, sb.size, 10, &unset, &it);
	REQUIREF(r == -MPOOL_E_INVAL && !it, "imap, size 0: %d", r);
	r = apply_int(fx.c, "builtin.square", 3, &v);
	REQUIREF(r == 0, "apply: %d", r);
	mpool_value_free(v);
	v = NULL;
	r = mpool_apply_with(fx.c, "builtin.square", sb.data + 1, 1, &apply_unset, &v);
	REQUIREF(r == -MPOOL_E_INVAL && !v, "apply, size 0: %d (%s)", r, mpool_errmsg(fx.c));
	r = mpool_spawn(fx.c, "builtin.square", sb.data + 1, 1, &spawn_unset, &proc);
	REQUIREF(r == -MPOOL_E_INVAL && !proc, "spawn, size 0: %d (%s)", r, mpool_errmsg(fx.c));
	/* Nothing of it broke the connection. */
	ping_ok(fx.c);

	msgpack_sbuffer_destroy(&sb);
	fx_stop(&fx);
}
END_TEST

START_TEST(map_deep_items)
{
	struct fx fx;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	msgpack_zone zone;
	mpool_value *v = NULL;
	int r;

	fx_start(&fx, NULL);
	fx_sbuf_init(&sb, &pk);
	for (int pass = 0; pass < 2; pass++) {
		for (int i = 0; i < 29; i++)
			msgpack_pack_array(&pk, 1);
		msgpack_pack_int64(&pk, pass);
	}
	r = mpool_map_collect(fx.c, "builtin.echo", sb.data, sb.size, 2, NULL, &v);
	REQUIREF(r == 0, "items nested 29 deep: %s: %s", mpool_strerror(-r), mpool_errmsg(fx.c));
	{
		const msgpack_object *o = mpool_value_get(v);

		REQUIRE(o->type == MSGPACK_OBJECT_ARRAY && o->via.array.size == 2);
		for (int pass = 0; pass < 2; pass++) {
			const msgpack_object *e = &o->via.array.ptr[pass];

			for (int i = 0; i < 29; i++) {
				REQUIREF(e->type == MSGPACK_OBJECT_ARRAY && e->via.array.size == 1,
					 "level %d of item %d", i, pass);
				e = &e->via.array.ptr[0];
			}
			REQUIRE(fx_obj_i64(e) == pass);
		}
	}
	mpool_value_free(v);
	msgpack_sbuffer_destroy(&sb);

	fx_sbuf_init(&sb, &pk);
	for (int i = 0; i < 29; i++) {
		msgpack_pack_map(&pk, 1);
		fx_pack_str(&pk, "k");
	}
	msgpack_pack_nil(&pk);
	v = apply_ok(fx.c, "builtin.echo", &sb);
	REQUIRE(msgpack_zone_init(&zone, 1024));
	REQUIREF(msgpack_object_equal(decode(&sb, &zone), *mpool_value_get(v)),
		 "a map nested 29 deep did not round-trip");
	msgpack_zone_destroy(&zone);
	mpool_value_free(v);
	msgpack_sbuffer_destroy(&sb);
	fx_stop(&fx);
}
END_TEST

/* ---- 3. two clients at once ------------------------------------------------ */

static int second_client(void *arg)
{
	struct fx *fx = arg;
	mpool *c = fx_connect(fx);

	fx_map_squares(c, 50000, 1000000, NULL, 0);
	fx_map_squares(c, 50000, 3000000, &(struct mpool_map_opts)MPOOL_MAP_OPTS(.chunksize = 50), 50);
	mpool_close(c);
	return 0;
}

START_TEST(two_clients_at_once)
{
	struct fx fx;
	pid_t child;

	fx_start(&fx, NULL);
	child = fx_fork(second_client, &fx);
	fx_map_squares(fx.c, 50000, 0, &(struct mpool_map_opts)MPOOL_MAP_OPTS(.unordered = 1, .chunksize = 50), 50);
	fx_map_squares(fx.c, 50000, 2000000, NULL, 0);
	fx_expect_child_ok(child, 40000, "the second client's maps");
	fx_wait_idle(&fx, FX_WAIT_MS);
	fx_stop(&fx);
}
END_TEST

/* ---- 4. recycling ---------------------------------------------------------- */

struct pids {
	uint64_t n;
	pid_t *by_item;
};

static void pid_chunk(void *ud, uint64_t first, const msgpack_object *res,
		      const struct mpool_item_error *errs, size_t n_errs)
{
	struct pids *p = ud;

	REQUIREF(n_errs == 0, "item %llu failed: %s: %s", (unsigned long long)errs[0].index,
		 mpool_strerror(errs[0].code), errs[0].message);
	REQUIREF(res->via.array.size <= 3, "a chunk of %u items with --max-tasks-per-child 3",
		 res->via.array.size);
	for (uint32_t i = 0; i < res->via.array.size; i++) {
		uint64_t idx = first + i;

		REQUIRE(idx < p->n);
		REQUIREF(p->by_item[idx] == 0, "item %llu answered twice", (unsigned long long)idx);
		p->by_item[idx] = (pid_t)fx_obj_i64(&res->via.array.ptr[i]);
		REQUIRE(p->by_item[idx] > 0);
	}
}

START_TEST(max_tasks_per_child)
{
	static const char *const args[] = { "--max-tasks-per-child", "3", NULL };
	const uint64_t n = 300;
	struct fx fx;
	struct fx_status st;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	struct mpool_map_summary sum;
	int r;

	fx_start(&fx, args);
	fx_sbuf_init(&sb, &pk);
	fx_pack_range(&pk, 0, n);
	for (int pass = 0; pass < 2; pass++) {
		struct mpool_map_opts o = MPOOL_MAP_OPTS(.chunksize = pass == 0 ? 2 : 0);
		struct pids p = { .n = n, .by_item = calloc(n, sizeof(pid_t)) };

		r = mpool_map(fx.c, "builtin.pid", sb.data, sb.size, n, &o, pid_chunk, &p, &sum);
		REQUIREF(r == 0, "chunksize %u: %s: %s", o.chunksize, mpool_strerror(-r),
			 mpool_errmsg(fx.c));
		REQUIRE(sum.items == n && sum.failed == 0);
		for (uint64_t i = 0; i < n; i++) {
			unsigned count = 0;

			REQUIREF(p.by_item[i] != 0, "item %llu never answered", (unsigned long long)i);
			for (uint64_t j = 0; j < n; j++)
				count += p.by_item[j] == p.by_item[i];
			REQUIREF(count <= 3, "chunksize %u: worker %d ran %u tasks (max 3)", o.chunksize,
				 (int)p.by_item[i], count);
		}
		free(p.by_item);
		/* The pool refills. */
		fx_wait_idle(&fx, FX_WAIT_MS);
	}
	msgpack_sbuffer_destroy(&sb);

	fx_status(&fx, &st);
	REQUIREF(st.totals.workers_recycled > 0, "workers_recycled %llu",
		 (unsigned long long)st.totals.workers_recycled);
	REQUIREF(st.totals.workers_died == 0, "workers_died %llu: recycling is not dying",
		 (unsigned long long)st.totals.workers_died);
	REQUIREF(st.totals.tasks_done == 2 * n, "tasks_done %llu, expected %llu: a task lost or run twice",
		 (unsigned long long)st.totals.tasks_done, (unsigned long long)(2 * n));
	REQUIREF(st.totals.max_tasks_per_child == 3, "max_tasks_per_child %llu",
		 (unsigned long long)st.totals.max_tasks_per_child);
	for (unsigned i = 0; i < st.n_workers; i++)
		REQUIREF(st.workers[i].tasks_done < 3, "idle worker %d has done %llu tasks",
			 (int)st.workers[i].pid, (unsigned long long)st.workers[i].tasks_done);

	/* Applies count too: three in a row on a fresh pool reach a quota. */
	for (int i = 0; i < 12; i++) {
		mpool_value *v = NULL;

		r = apply_int(fx.c, "builtin.square", i, &v);
		REQUIREF(r == 0 && fx_obj_u64(mpool_value_get(v)) == (uint64_t)(i * i), "apply %d: %s", i,
			 mpool_errmsg(fx.c));
		mpool_value_free(v);
	}
	fx_wait_idle(&fx, FX_WAIT_MS);
	fx_stop(&fx);
}
END_TEST

/* PROTOCOL.md, the builtin table: the errors of builtin.sleep and
 * builtin.spin. */
START_TEST(sleep_and_spin_errors)
{
	static const char *const fns[] = { "builtin.sleep", "builtin.spin" };
	struct fx fx;

	fx_start(&fx, NULL);
	for (unsigned i = 0; i < 2; i++) {
		msgpack_sbuffer sb;
		msgpack_packer pk;
		mpool_value *v = NULL;
		int r;

		r = apply_int(fx.c, fns[i], -1, &v);
		REQUIREF(r == -MPOOL_E_TYPE, "%s(-1): %d (%s)", fns[i], r, mpool_errmsg(fx.c));
		r = apply_int(fx.c, fns[i], 3600001, &v);
		REQUIREF(r == -MPOOL_E_TASK, "%s(3600001): %d (%s)", fns[i], r, mpool_errmsg(fx.c));
		fx_sbuf_init(&sb, &pk);
		fx_pack_str(&pk, "x");
		r = mpool_apply(fx.c, fns[i], sb.data, sb.size, &v);
		REQUIREF(r == -MPOOL_E_TYPE, "%s(\"x\"): %d (%s)", fns[i], r, mpool_errmsg(fx.c));
		msgpack_sbuffer_destroy(&sb);
		r = apply_int(fx.c, fns[i], 0, &v);
		REQUIREF(r == 0 && fx_obj_u64(mpool_value_get(v)) == 0, "%s(0): %d", fns[i], r);
		mpool_value_free(v);
	}
	fx_stop(&fx);
}
END_TEST

/* ---- 12. fairness ----------------------------------------------------------- */

struct sleeps {
	uint64_t n, ms, seen;
};

static void sleep_chunk(void *ud, uint64_t first, const msgpack_object *res,
			const struct mpool_item_error *errs, size_t n_errs)
{
	struct sleeps *s = ud;

	REQUIREF(n_errs == 0, "item %llu failed: %s", (unsigned long long)errs[0].index,
		 errs[0].message);
	REQUIRE(first == s->seen);
	for (uint32_t i = 0; i < res->via.array.size; i++)
		REQUIRE(fx_obj_u64(&res->via.array.ptr[i]) == s->ms);
	s->seen += res->via.array.size;
}

static int big_sleep_map(void *arg)
{
	struct fx *fx = arg;
	mpool *c = fx_connect(fx);
	struct sleeps s = { .n = 2000, .ms = 2 };
	struct mpool_map_summary sum;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	int r;

	fx_sbuf_init(&sb, &pk);
	fx_pack_repeat(&pk, 2, s.n);
	r = mpool_map(c, "builtin.sleep", sb.data, sb.size, s.n,
		      &(struct mpool_map_opts)MPOOL_MAP_OPTS(.chunksize = 10), sleep_chunk, &s, &sum);
	REQUIREF(r == 0, "%s: %s", mpool_strerror(-r), mpool_errmsg(c));
	REQUIRE(s.seen == s.n && sum.items == s.n && sum.failed == 0);
	msgpack_sbuffer_destroy(&sb);
	mpool_close(c);
	return 0;
}

static bool map_running(const struct fx_status *st, void *arg)
{
	(void)arg;
	return st->totals.jobs_active >= 1 && fx_count_state(st, "busy") >= 1;
}

START_TEST(fairness_apply_during_big_map)
{
	struct fx fx;
	struct fx_status st;
	mpool_value *v = NULL;
	pid_t child;
	int r;

	fx_start(&fx, NULL);
	child = fx_fork(big_sleep_map, &fx);
	fx_wait_status(&fx, map_running, NULL, FX_WAIT_MS, "the big map running", NULL);
	r = apply_int(fx.c, "builtin.square", 12, &v);
	REQUIREF(r == 0 && fx_obj_u64(mpool_value_get(v)) == 144, "apply: %s", mpool_errmsg(fx.c));
	mpool_value_free(v);
	fx_status(&fx, &st);
	REQUIREF(st.totals.jobs_active >= 1,
		 "the apply waited for the whole map: jobs_active %llu when it returned",
		 (unsigned long long)st.totals.jobs_active);
	fx_expect_child_ok(child, 40000, "the big map");
	fx_stop(&fx);
}
END_TEST

/* Sends [0, msgid, method, [fn, arg-or-items, {chunksize}]] of builtin.sleep:
 * an apply of ms, or (n > 0) a map of n items of ms with chunksize 1. */
static void pack_sleep_req(msgpack_packer *pk, uint64_t msgid, uint64_t n, int64_t ms)
{
	fx_req_head(pk, msgid, n ? "map" : "apply");
	msgpack_pack_array(pk, n ? 3 : 2);
	fx_pack_str(pk, "builtin.sleep");
	if (n) {
		msgpack_pack_array(pk, (uint32_t)n);
		fx_pack_repeat(pk, ms, n);
		msgpack_pack_map(pk, 1);
		fx_pack_str(pk, "chunksize");
		msgpack_pack_uint32(pk, 1);
	} else {
		msgpack_pack_int64(pk, ms);
	}
}

/* The responses (type 1) that have already arrived on r, read without
 * waiting; notifications are read and not counted. */
static unsigned responses_arrived(struct fx_raw *r)
{
	unsigned n = 0;

	for (;;) {
		ssize_t got;

		REQUIRE(msgpack_unpacker_reserve_buffer(&r->up, 65536));
		got = recv(r->fd, msgpack_unpacker_buffer(&r->up), 65536, MSG_DONTWAIT);
		if (got <= 0)
			break;
		msgpack_unpacker_buffer_consumed(&r->up, (size_t)got);
	}
	while (msgpack_unpacker_next(&r->up, &r->msg) == MSGPACK_UNPACK_SUCCESS)
		n += r->msg.data.via.array.ptr[0].via.u64 == 1;
	return n;
}

/* Reads r until the response to msgid; fails on an error response. */
static void await_response(struct fx_raw *r, uint64_t msgid, int timeout_ms)
{
	for (;;) {
		const msgpack_object *m;

		REQUIREF(fx_raw_next(r, timeout_ms) == 1, "EOF before the response to %llu",
			 (unsigned long long)msgid);
		m = r->msg.data.via.array.ptr;
		if (m[0].via.u64 == 1 && m[1].via.u64 == msgid) {
			REQUIREF(m[2].type == MSGPACK_OBJECT_NIL, "request %llu failed",
				 (unsigned long long)msgid);
			return;
		}
	}
}

struct queued_min {
	uint64_t chunks;
};

static bool busy_with_queue(const struct fx_status *st, void *arg)
{
	const struct queued_min *q = arg;

	return fx_count_state(st, "busy") == 2 && st->totals.chunks_queued >= q->chunks;
}

/* A worker falls idle while one client has 200 applies queued and another
 * client one: the other client's apply is next, not the last of a batch of
 * the first one's, and both workers share the backlog. */
START_TEST(fairness_batch_never_holds_another_clients_apply)
{
	enum { BACKLOG = 200 };
	struct fx fx;
	struct fx_raw hog, victim;
	struct fx_status st;
	struct queued_min q = { BACKLOG };
	msgpack_sbuffer sb;
	msgpack_packer pk;
	unsigned answered, total;

	fx_start(&fx, NULL);
	fx_raw_open(&fx, &hog);
	fx_raw_open(&fx, &victim);
	fx_sbuf_init(&sb, &pk);
	/* Two long applies take both workers; the backlog queues behind. */
	pack_sleep_req(&pk, 1, 0, 2000);
	pack_sleep_req(&pk, 2, 0, 2000);
	for (uint64_t i = 0; i < BACKLOG; i++)
		pack_sleep_req(&pk, 3 + i, 0, 20);
	REQUIRE(fx_raw_send(&hog, sb.data, sb.size) == 0);
	fx_wait_status(&fx, busy_with_queue, &q, FX_WAIT_MS, "the backlog queued", NULL);
	sb.size = 0;
	pack_sleep_req(&pk, 1, 0, 1);
	REQUIRE(fx_raw_send(&victim, sb.data, sb.size) == 0);
	q.chunks = BACKLOG + 1;
	fx_wait_status(&fx, busy_with_queue, &q, FX_WAIT_MS, "the victim's apply queued", &st);
	REQUIREF(st.totals.tasks_done == 0,
		 "a long apply ended before the victim's apply was queued (%llu tasks done): "
		 "the machine is too slow for this test",
		 (unsigned long long)st.totals.tasks_done);

	await_response(&victim, 1, FX_WAIT_MS);
	answered = responses_arrived(&hog);
	fprintf(stderr, "batch fairness: %u of the hog's %d applies answered before the "
		"victim's\n", answered, BACKLOG + 2);
	REQUIREF(answered < BACKLOG / 2, "the victim's apply waited for %u of the hog's applies",
		 answered);
	for (total = answered; total < BACKLOG + 2;) {
		REQUIRE(fx_raw_next(&hog, FX_WAIT_MS) == 1);
		total += hog.msg.data.via.array.ptr[0].via.u64 == 1;
	}
	fx_wait_idle(&fx, FX_WAIT_MS);
	fx_status(&fx, &st);
	for (unsigned i = 0; i < st.n_workers; i++)
		REQUIREF(st.workers[i].tasks_done >= BACKLOG / 5,
			 "worker %u ran %llu of %d tasks: the backlog went to one worker", i,
			 (unsigned long long)st.workers[i].tasks_done, BACKLOG + 3);
	msgpack_sbuffer_destroy(&sb);
	fx_raw_close(&hog);
	fx_raw_close(&victim);
	fx_stop(&fx);
}
END_TEST

struct jobs_min {
	uint64_t jobs;
};

static bool jobs_open(const struct fx_status *st, void *arg)
{
	const struct jobs_min *j = arg;

	return st->totals.jobs_active >= j->jobs && fx_count_state(st, "busy") == 2;
}

/* One connection with 100 open maps and another with one: the second gets
 * every other turn, not one in 101. */
START_TEST(fairness_round_robin_across_connections)
{
	enum { MAPS = 100, ITEMS = 30, VICTIM = 20 };
	struct fx fx;
	struct fx_raw hog, victim;
	struct fx_status st;
	struct jobs_min j = { MAPS };
	msgpack_sbuffer sb;
	msgpack_packer pk;

	fx_start(&fx, NULL);
	fx_raw_open(&fx, &hog);
	fx_raw_open(&fx, &victim);
	fx_sbuf_init(&sb, &pk);
	for (uint64_t i = 0; i < MAPS; i++)
		pack_sleep_req(&pk, 1 + i, ITEMS, 10);
	REQUIRE(fx_raw_send(&hog, sb.data, sb.size) == 0);
	fx_wait_status(&fx, jobs_open, &j, FX_WAIT_MS, "the hog's maps open", NULL);
	sb.size = 0;
	pack_sleep_req(&pk, 1, VICTIM, 10);
	REQUIRE(fx_raw_send(&victim, sb.data, sb.size) == 0);
	await_response(&victim, 1, 40000);
	fx_status(&fx, &st);
	fprintf(stderr, "round robin: %llu tasks done when the victim's %d-item map ended\n",
		(unsigned long long)st.totals.tasks_done, VICTIM);
	/* Fair: about 2 * VICTIM.  One turn in 101: about MAPS * VICTIM. */
	REQUIREF(st.totals.tasks_done < 6 * VICTIM,
		 "%llu tasks ran before the victim's %d-item map ended",
		 (unsigned long long)st.totals.tasks_done, VICTIM);
	msgpack_sbuffer_destroy(&sb);
	fx_raw_close(&hog);
	fx_raw_close(&victim);
	fx_stop(&fx);
}
END_TEST

#define NOBODY 65534

/* The victim of fairness_round_robin_across_uids: as another uid, a map of
 * 20 items of 10 ms, chunksize 1; exits 0 once it is answered. */
static int victim_as_nobody(void *arg)
{
	struct fx *fx = arg;
	struct fx_raw r;
	msgpack_sbuffer sb;
	msgpack_packer pk;

	if (setgroups(0, NULL) < 0 || setgid(NOBODY) < 0 || setuid(NOBODY) < 0) {
		fprintf(stderr, "cannot become uid %d: %s\n", NOBODY, strerror(errno));
		return 10;
	}
	/* A change of credentials clears it. */
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	fx_raw_open(fx, &r);
	fx_sbuf_init(&sb, &pk);
	pack_sleep_req(&pk, 1, 20, 10);
	REQUIRE(fx_raw_send(&r, sb.data, sb.size) == 0);
	await_response(&r, 1, 40000);
	msgpack_sbuffer_destroy(&sb);
	fx_raw_close(&r);
	return 0;
}

/* One uid on ten connections, each with five open maps, and another uid
 * with one map: the second uid gets every other turn, not one in eleven. */
START_TEST(fairness_round_robin_across_uids)
{
	enum { CONNS = 10, MAPS = 5, ITEMS = 30, VICTIM = 20 };
	static const char *const args[] = { "--socket-mode", "0666", NULL };
	struct fx fx;
	struct fx_raw hog[CONNS];
	struct fx_status st;
	struct jobs_min j = { CONNS * MAPS };
	msgpack_sbuffer sb;
	msgpack_packer pk;
	pid_t child;

	if (geteuid() != 0) {
		fprintf(stderr, "fairness_round_robin_across_uids: skipped, needs root\n");
		return;
	}
	fx_start(&fx, args);
	REQUIREF(chmod(fx.dir, 0711) == 0, "chmod %s: %s", fx.dir, strerror(errno));
	fx_sbuf_init(&sb, &pk);
	for (unsigned c = 0; c < CONNS; c++) {
		fx_raw_open(&fx, &hog[c]);
		sb.size = 0;
		for (uint64_t i = 0; i < MAPS; i++)
			pack_sleep_req(&pk, 1 + i, ITEMS, 10);
		REQUIRE(fx_raw_send(&hog[c], sb.data, sb.size) == 0);
	}
	fx_wait_status(&fx, jobs_open, &j, FX_WAIT_MS, "the hog's maps open", NULL);
	child = fx_fork(victim_as_nobody, &fx);
	fx_expect_child_ok(child, 40000, "the other uid's map");
	fx_status(&fx, &st);
	fprintf(stderr, "round robin across uids: %llu tasks done when the victim's %d-item map "
		"ended\n", (unsigned long long)st.totals.tasks_done, VICTIM);
	/* Fair: about 2 * VICTIM.  By connection alone: about 11 * VICTIM. */
	REQUIREF(st.totals.tasks_done < 6 * VICTIM,
		 "%llu tasks ran before the other uid's %d-item map ended",
		 (unsigned long long)st.totals.tasks_done, VICTIM);
	for (unsigned c = 0; c < CONNS; c++)
		fx_raw_close(&hog[c]);
	msgpack_sbuffer_destroy(&sb);
	fx_stop(&fx);
}
END_TEST

/* ---- 7. byte-level examples of PROTOCOL.md ------------------------------- */

#define S(...) { __VA_ARGS__ }

START_TEST(protocol_examples_byte_by_byte)
{
	static const uint8_t apply_req[] = S(
		0x94, 0x00, 0x01, 0xa5, 0x61, 0x70, 0x70, 0x6c, 0x79, 0x92, 0xae, 0x62, 0x75, 0x69,
		0x6c, 0x74, 0x69, 0x6e, 0x2e, 0x73, 0x71, 0x75, 0x61, 0x72, 0x65, 0x07);
	static const uint8_t apply_resp[] = S(0x94, 0x01, 0x01, 0xc0, 0x31);
	static const uint8_t map_req[] = S(
		0x94, 0x00, 0x02, 0xa3, 0x6d, 0x61, 0x70, 0x93, 0xae, 0x62, 0x75, 0x69, 0x6c, 0x74,
		0x69, 0x6e, 0x2e, 0x73, 0x71, 0x75, 0x61, 0x72, 0x65,
		0x93, 0x01, 0x02, 0x03, 0x81, 0xa9, 0x63, 0x68, 0x75, 0x6e, 0x6b, 0x73, 0x69, 0x7a,
		0x65, 0x02);
	static const uint8_t map_resp[] = S(
		0x93, 0x02, 0xa6, 0x72, 0x65, 0x73, 0x75, 0x6c, 0x74, 0x94, 0x02, 0x00, 0x92, 0x01,
		0x04, 0x90,
		0x93, 0x02, 0xa6, 0x72, 0x65, 0x73, 0x75, 0x6c, 0x74, 0x94, 0x02, 0x02, 0x91, 0x09,
		0x90,
		0x94, 0x01, 0x02, 0xc0, 0x82, 0xa5, 0x69, 0x74, 0x65, 0x6d, 0x73, 0x03, 0xa6, 0x66,
		0x61, 0x69, 0x6c, 0x65, 0x64, 0x00);
	static const uint8_t x_req[] = S(
		0x94, 0x00, 0x03, 0xa5, 0x61, 0x70, 0x70, 0x6c, 0x79, 0x92, 0xae, 0x62, 0x75, 0x69,
		0x6c, 0x74, 0x69, 0x6e, 0x2e, 0x73, 0x71, 0x75, 0x61, 0x72, 0x65, 0xa1, 0x78);
	static const uint8_t x_resp_head[] = S(
		0x94, 0x01, 0x03, 0x82, 0xa4, 0x63, 0x6f, 0x64, 0x65, 0x05, 0xa7, 0x6d, 0x65, 0x73,
		0x73, 0x61, 0x67, 0x65);
	static const char x_msg[] = "builtin.square: expected an integer, got str";
	static const uint8_t ping_req[] = S(0x94, 0x00, 0x04, 0xa4, 'p', 'i', 'n', 'g', 0x90);
	static const uint8_t ping_resp[] = S(0x94, 0x01, 0x04, 0xc0, 0xa4, 'p', 'o', 'n', 'g');
	struct fx fx;
	struct fx_raw raw;
	uint8_t buf[256], b;
	size_t len;

	fx_start(&fx, NULL);
	fx_raw_open(&fx, &raw);

	REQUIRE(fx_raw_send(&raw, apply_req, sizeof(apply_req)) == 0);
	fx_raw_read_exact(&raw, buf, sizeof(apply_resp), FX_WAIT_MS);
	REQUIREF(memcmp(buf, apply_resp, sizeof(apply_resp)) == 0,
		 "apply example: got %02x %02x %02x %02x %02x", buf[0], buf[1], buf[2], buf[3], buf[4]);

	REQUIRE(fx_raw_send(&raw, map_req, sizeof(map_req)) == 0);
	fx_raw_read_exact(&raw, buf, sizeof(map_resp), FX_WAIT_MS);
	for (size_t i = 0; i < sizeof(map_resp); i++)
		REQUIREF(buf[i] == map_resp[i], "map example: byte %zu is %02x, documented %02x", i,
			 buf[i], map_resp[i]);

	REQUIRE(fx_raw_send(&raw, x_req, sizeof(x_req)) == 0);
	fx_raw_read_exact(&raw, buf, sizeof(x_resp_head), FX_WAIT_MS);
	for (size_t i = 0; i < sizeof(x_resp_head); i++)
		REQUIREF(buf[i] == x_resp_head[i], "type error example: byte %zu is %02x, documented %02x",
			 i, buf[i], x_resp_head[i]);
	fx_raw_read_exact(&raw, &b, 1, FX_WAIT_MS);
	if (b >= 0xa0 && b <= 0xbf) {
		len = b & 0x1f;
	} else {
		/* Shortest form: str8 only for 32 bytes and more. */
		REQUIREF(b == 0xd9, "the message is not a short str (first byte %02x)", b);
		fx_raw_read_exact(&raw, &b, 1, FX_WAIT_MS);
		len = b;
		REQUIREF(len > 31, "str8 for a message of %zu bytes", len);
	}
	REQUIRE(len < sizeof(buf));
	fx_raw_read_exact(&raw, buf, len, FX_WAIT_MS);
	REQUIREF(len == strlen(x_msg) && memcmp(buf, x_msg, len) == 0,
		 "type error example: message '%.*s', documented '%s'", (int)len, buf, x_msg);
	fx_raw_read_exact(&raw, &b, 1, FX_WAIT_MS);
	REQUIREF(b == 0xc0, "type error example: result is %02x, documented c0 (nil)", b);

	/* Nothing else came in between. */
	REQUIRE(fx_raw_send(&raw, ping_req, sizeof(ping_req)) == 0);
	fx_raw_read_exact(&raw, buf, sizeof(ping_resp), FX_WAIT_MS);
	REQUIREF(memcmp(buf, ping_resp, sizeof(ping_resp)) == 0, "ping: unexpected bytes");

	fx_raw_close(&raw);
	fx_stop(&fx);
}
END_TEST

/* ---- the status map ---------------------------------------------------------- */

static bool clients_are(const struct fx_status *st, void *arg)
{
	return st->totals.clients == *(uint64_t *)arg;
}

START_TEST(status_fields)
{
	struct fx fx;
	struct fx_status st;
	uint64_t want;
	mpool *c2;

	fx_start(&fx, NULL);
	fx_status(&fx, &st);
	REQUIREF(st.protocol == 2, "protocol %lld", (long long)st.protocol);
	REQUIREF(st.pid == fx.pid, "status pid %d, mpoold is %d", (int)st.pid, (int)fx.pid);
	REQUIREF(strcmp(st.state, "running") == 0, "state '%s'", st.state);
	REQUIREF(st.version[0], "empty version");
	REQUIRE(st.n_workers == 2 && st.totals.workers == 2);
	REQUIRE(st.totals.max_tasks_per_child == 0);
	REQUIRE(st.totals.jobs_active == 0 && st.totals.chunks_queued == 0);
	REQUIRE(st.totals.tasks_done == 0 && st.totals.tasks_failed == 0);
	REQUIREF(st.totals.workers_started == 2, "workers_started %llu",
		 (unsigned long long)st.totals.workers_started);
	REQUIREF(st.totals.clients == 1, "clients %llu with one connection",
		 (unsigned long long)st.totals.clients);
	for (unsigned i = 0; i < st.n_workers; i++) {
		REQUIRE(st.workers[i].job == -1);
		REQUIRE(st.workers[i].pid > 0 && st.workers[i].pid != fx.pid);
	}
	REQUIRE(st.workers[0].pid != st.workers[1].pid);

	c2 = fx_connect(&fx);
	ping_ok(c2);
	want = 2;
	fx_wait_status(&fx, clients_are, &want, FX_WAIT_MS, "clients == 2", NULL);
	mpool_close(c2);
	want = 1;
	fx_wait_status(&fx, clients_are, &want, FX_WAIT_MS, "clients back to 1", NULL);

	/* Totals follow the work. */
	{
		msgpack_sbuffer sb;
		msgpack_packer pk;
		struct mpool_map_summary sum;
		int r;

		fx_sbuf_init(&sb, &pk);
		fx_pack_range(&pk, 0, 10);
		fx_pack_str(&pk, "x");
		r = mpool_map(fx.c, "builtin.square", sb.data, sb.size, 11, NULL, NULL, NULL, &sum);
		REQUIREF(r == 0 && sum.failed == 1, "%d", r);
		msgpack_sbuffer_destroy(&sb);
	}
	fx_status(&fx, &st);
	REQUIREF(st.totals.tasks_done == 11 && st.totals.tasks_failed == 1 &&
		 st.totals.jobs_done == 1 && st.totals.jobs_active == 0,
		 "tasks_done %llu tasks_failed %llu jobs_done %llu jobs_active %llu",
		 (unsigned long long)st.totals.tasks_done, (unsigned long long)st.totals.tasks_failed,
		 (unsigned long long)st.totals.jobs_done, (unsigned long long)st.totals.jobs_active);
	REQUIRE(st.workers[0].tasks_done + st.workers[1].tasks_done == 11);
	fx_stop(&fx);
}
END_TEST

/* ---- limits, options, pipelining on raw sockets ----------------------------- */

static void pack_apply(msgpack_packer *pk, uint64_t msgid, const char *fn, int64_t arg)
{
	fx_req_head(pk, msgid, "apply");
	msgpack_pack_array(pk, 2);
	fx_pack_str(pk, fn);
	msgpack_pack_int64(pk, arg);
}

static void expect_error_response(struct fx_raw *r, uint64_t msgid, int code, const char *what)
{
	const msgpack_object *err, *res;
	int64_t got;

	fx_raw_response(r, msgid, &err, &res, FX_WAIT_MS);
	REQUIREF(err->type == MSGPACK_OBJECT_MAP, "%s: no error (msgid %llu)", what,
		 (unsigned long long)msgid);
	got = fx_obj_i64(fx_obj_get(err, "code"));
	REQUIREF(got == code, "%s: code %lld (%s), expected %d", what, (long long)got,
		 mpool_strerror((int)got), code);
	REQUIREF(fx_obj_get(err, "message") && fx_obj_get(err, "message")->type == MSGPACK_OBJECT_STR,
		 "%s: error without a message", what);
	REQUIREF(!fx_obj_get(err, "index"), "%s: a request error carries an index", what);
	REQUIREF(res->type == MSGPACK_OBJECT_NIL, "%s: an error response with a result", what);
}

static void expect_pong(struct fx_raw *r, uint64_t msgid)
{
	const msgpack_object *err, *res;

	fx_raw_response(r, msgid, &err, &res, FX_WAIT_MS);
	REQUIREF(err->type == MSGPACK_OBJECT_NIL && fx_obj_str_eq(res, "pong"),
		 "ping %llu was not answered with pong", (unsigned long long)msgid);
}

static void send_packed(struct fx_raw *r, msgpack_sbuffer *sb)
{
	REQUIRE(fx_raw_send(r, sb->data, sb->size) == 0);
	msgpack_sbuffer_clear(sb);
}

/* A map of n builtin.sleep items of ms each, one per chunk, sent on r
 * through pk, which packs into sb. */
static void send_sleep_map(struct fx_raw *r, msgpack_sbuffer *sb, msgpack_packer *pk,
			   uint64_t msgid, int64_t ms, uint32_t n)
{
	fx_req_head(pk, msgid, "map");
	msgpack_pack_array(pk, 3);
	fx_pack_str(pk, "builtin.sleep");
	msgpack_pack_array(pk, n);
	fx_pack_repeat(pk, ms, n);
	msgpack_pack_map(pk, 1);
	fx_pack_str(pk, "chunksize");
	msgpack_pack_uint64(pk, 1);
	send_packed(r, sb);
}

static void expect_pong_after_ping(struct fx_raw *r, msgpack_sbuffer *sb, uint64_t msgid)
{
	msgpack_packer pk;

	msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
	fx_req_head(&pk, msgid, "ping");
	msgpack_pack_array(&pk, 0);
	send_packed(r, sb);
	expect_pong(r, msgid);
}

START_TEST(bad_requests_keep_the_connection)
{
	struct fx fx;
	struct fx_raw r;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	uint64_t id = 1;

	fx_start(&fx, NULL);
	fx_raw_open(&fx, &r);
	fx_sbuf_init(&sb, &pk);

#define BAD(what, packing) do { \
	fx_req_head(&pk, id, what[0] == 'a' ? "apply" : what[0] == 'm' ? "map" : "ping"); \
	packing; \
	send_packed(&r, &sb); \
	expect_error_response(&r, id, MPOOL_E_BADREQ, what); \
	id++; \
} while (0)

	BAD("apply with an option", {
		msgpack_pack_array(&pk, 3); fx_pack_str(&pk, "builtin.echo"); msgpack_pack_int64(&pk, 1);
		msgpack_pack_map(&pk, 1); fx_pack_str(&pk, "x"); msgpack_pack_int64(&pk, 1);
	});
	BAD("apply without params", msgpack_pack_array(&pk, 0));
	BAD("apply with one param", { msgpack_pack_array(&pk, 1); fx_pack_str(&pk, "builtin.echo"); });
	BAD("apply with four params", {
		msgpack_pack_array(&pk, 4); fx_pack_str(&pk, "builtin.echo"); msgpack_pack_int64(&pk, 1);
		msgpack_pack_map(&pk, 0); msgpack_pack_nil(&pk);
	});
	BAD("apply of a non-string function", {
		msgpack_pack_array(&pk, 2); msgpack_pack_int64(&pk, 7); msgpack_pack_int64(&pk, 7);
	});
	BAD("map of items that are not an array", {
		msgpack_pack_array(&pk, 2); fx_pack_str(&pk, "builtin.square"); msgpack_pack_int64(&pk, 7);
	});
	BAD("map with chunksize 0", {
		msgpack_pack_array(&pk, 3); fx_pack_str(&pk, "builtin.square");
		msgpack_pack_array(&pk, 1); msgpack_pack_int64(&pk, 1);
		msgpack_pack_map(&pk, 1); fx_pack_str(&pk, "chunksize"); msgpack_pack_int64(&pk, 0);
	});
	BAD("map with chunksize -1", {
		msgpack_pack_array(&pk, 3); fx_pack_str(&pk, "builtin.square");
		msgpack_pack_array(&pk, 1); msgpack_pack_int64(&pk, 1);
		msgpack_pack_map(&pk, 1); fx_pack_str(&pk, "chunksize"); msgpack_pack_int64(&pk, -1);
	});
	BAD("map with chunksize \"2\"", {
		msgpack_pack_array(&pk, 3); fx_pack_str(&pk, "builtin.square");
		msgpack_pack_array(&pk, 1); msgpack_pack_int64(&pk, 1);
		msgpack_pack_map(&pk, 1); fx_pack_str(&pk, "chunksize"); fx_pack_str(&pk, "2");
	});
	BAD("map with ordered \"yes\"", {
		msgpack_pack_array(&pk, 3); fx_pack_str(&pk, "builtin.square");
		msgpack_pack_array(&pk, 1); msgpack_pack_int64(&pk, 1);
		msgpack_pack_map(&pk, 1); fx_pack_str(&pk, "ordered"); fx_pack_str(&pk, "yes");
	});
	BAD("map with an unknown option", {
		msgpack_pack_array(&pk, 3); fx_pack_str(&pk, "builtin.square");
		msgpack_pack_array(&pk, 1); msgpack_pack_int64(&pk, 1);
		msgpack_pack_map(&pk, 1); fx_pack_str(&pk, "timeout"); msgpack_pack_int64(&pk, 1);
	});
	BAD("map with options that are not a map", {
		msgpack_pack_array(&pk, 3); fx_pack_str(&pk, "builtin.square");
		msgpack_pack_array(&pk, 1); msgpack_pack_int64(&pk, 1);
		msgpack_pack_array(&pk, 0);
	});
	BAD("ping with params", { msgpack_pack_array(&pk, 1); msgpack_pack_int64(&pk, 1); });

	/* Malformed envelopes that still carry a msgid: answered, not dropped. */
	msgpack_pack_array(&pk, 4);
	msgpack_pack_uint8(&pk, 0);
	msgpack_pack_uint64(&pk, id);
	msgpack_pack_int64(&pk, 7);             /* method not a string */
	msgpack_pack_array(&pk, 0);
	send_packed(&r, &sb);
	expect_error_response(&r, id, MPOOL_E_BADREQ, "a method that is not a string");
	id++;
	fx_req_head(&pk, id, "ping");
	msgpack_pack_map(&pk, 0);               /* params not an array */
	send_packed(&r, &sb);
	expect_error_response(&r, id, MPOOL_E_BADREQ, "params that are not an array");
	id++;
#undef BAD

	/* Still usable, and valid options work. */
	fx_req_head(&pk, id, "ping");
	msgpack_pack_array(&pk, 0);
	send_packed(&r, &sb);
	expect_pong(&r, id);
	id++;
	fx_req_head(&pk, id, "map");
	msgpack_pack_array(&pk, 3);
	fx_pack_str(&pk, "builtin.square");
	msgpack_pack_array(&pk, 3);
	fx_pack_range(&pk, 1, 3);
	msgpack_pack_map(&pk, 2);
	fx_pack_str(&pk, "ordered");
	msgpack_pack_false(&pk);
	fx_pack_str(&pk, "chunksize");
	msgpack_pack_uint64(&pk, 3);
	send_packed(&r, &sb);
	REQUIRE(fx_raw_next(&r, FX_WAIT_MS) == 1);
	REQUIREF(r.msg.data.type == MSGPACK_OBJECT_ARRAY && r.msg.data.via.array.size == 3 &&
		 fx_obj_str_eq(&r.msg.data.via.array.ptr[1], "result"), "expected a result notification");
	{
		const msgpack_object *err, *res;

		fx_raw_response(&r, id, &err, &res, FX_WAIT_MS);
		REQUIRE(err->type == MSGPACK_OBJECT_NIL);
		REQUIRE(fx_obj_u64(fx_obj_get(res, "items")) == 3);
		REQUIRE(fx_obj_u64(fx_obj_get(res, "failed")) == 0);
	}
	msgpack_sbuffer_destroy(&sb);
	fx_raw_close(&r);
	fx_stop(&fx);
}
END_TEST

START_TEST(unknown_method_and_extreme_msgids)
{
	struct fx fx;
	struct fx_raw r;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	const msgpack_object *err, *res;

	fx_start(&fx, NULL);
	fx_raw_open(&fx, &r);
	fx_sbuf_init(&sb, &pk);

	fx_req_head(&pk, 41, "frobnicate");
	msgpack_pack_array(&pk, 0);
	send_packed(&r, &sb);
	expect_error_response(&r, 41, MPOOL_E_NOMETHOD, "unknown method");

	fx_req_head(&pk, UINT64_MAX, "ping");
	msgpack_pack_array(&pk, 0);
	send_packed(&r, &sb);
	expect_pong(&r, UINT64_MAX);

	fx_req_head(&pk, 0, "ping");
	msgpack_pack_array(&pk, 0);
	send_packed(&r, &sb);
	expect_pong(&r, 0);

	pack_apply(&pk, UINT64_MAX - 1, "builtin.square", 5);
	send_packed(&r, &sb);
	fx_raw_response(&r, UINT64_MAX - 1, &err, &res, FX_WAIT_MS);
	REQUIRE(err->type == MSGPACK_OBJECT_NIL && fx_obj_u64(res) == 25);

	/* A msgid sent in a wider encoding than needed is still the same id. */
	{
		static const uint8_t wide[] = { 0x94, 0x00, 0xcf, 0, 0, 0, 0, 0, 0, 0, 9,
						0xa4, 'p', 'i', 'n', 'g', 0x90 };

		REQUIRE(fx_raw_send(&r, wide, sizeof(wide)) == 0);
		expect_pong(&r, 9);
	}
	msgpack_sbuffer_destroy(&sb);
	fx_raw_close(&r);
	fx_stop(&fx);
}
END_TEST

/* Several requests in one write: each answered once; a map's notifications
 * all come before its response. */
START_TEST(pipelining)
{
	struct fx fx;
	struct fx_raw r;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	bool answered[5] = { false };
	uint64_t next10 = 0, covered12 = 0;
	uint8_t seen12[20] = { 0 };
	int responses = 0;

	fx_start(&fx, NULL);
	fx_raw_open(&fx, &r);
	fx_sbuf_init(&sb, &pk);
	fx_req_head(&pk, 10, "map");
	msgpack_pack_array(&pk, 3);
	fx_pack_str(&pk, "builtin.square");
	msgpack_pack_array(&pk, 5);
	fx_pack_range(&pk, 0, 5);
	msgpack_pack_map(&pk, 1);
	fx_pack_str(&pk, "chunksize");
	msgpack_pack_uint64(&pk, 2);
	pack_apply(&pk, 11, "builtin.square", 3);
	fx_req_head(&pk, 12, "map");
	msgpack_pack_array(&pk, 3);
	fx_pack_str(&pk, "builtin.sleep");
	msgpack_pack_array(&pk, 20);
	fx_pack_repeat(&pk, 1, 20);
	msgpack_pack_map(&pk, 2);
	fx_pack_str(&pk, "chunksize");
	msgpack_pack_uint64(&pk, 3);
	fx_pack_str(&pk, "ordered");
	msgpack_pack_false(&pk);
	fx_req_head(&pk, 13, "ping");
	msgpack_pack_array(&pk, 0);
	fx_req_head(&pk, 14, "status");
	msgpack_pack_array(&pk, 0);
	send_packed(&r, &sb);

	while (responses < 5) {
		const msgpack_object *m, *p;

		REQUIREF(fx_raw_next(&r, FX_WAIT_MS) == 1, "EOF after %d responses", responses);
		m = &r.msg.data;
		REQUIRE(m->type == MSGPACK_OBJECT_ARRAY && m->via.array.size >= 3);
		if (fx_obj_u64(&m->via.array.ptr[0]) == 2) {
			uint64_t msgid, first;
			uint32_t n;

			REQUIRE(fx_obj_str_eq(&m->via.array.ptr[1], "result"));
			p = &m->via.array.ptr[2];
			REQUIRE(p->type == MSGPACK_OBJECT_ARRAY && p->via.array.size == 4);
			msgid = fx_obj_u64(&p->via.array.ptr[0]);
			first = fx_obj_u64(&p->via.array.ptr[1]);
			n = p->via.array.ptr[2].via.array.size;
			REQUIREF(msgid == 10 || msgid == 12, "a result notification for msgid %llu",
				 (unsigned long long)msgid);
			REQUIREF(!answered[msgid - 10], "a notification for msgid %llu after its response",
				 (unsigned long long)msgid);
			REQUIRE(p->via.array.ptr[3].type == MSGPACK_OBJECT_ARRAY &&
				p->via.array.ptr[3].via.array.size == 0);
			if (msgid == 10) {
				REQUIREF(first == next10, "map 10 out of order: %llu, expected %llu",
					 (unsigned long long)first, (unsigned long long)next10);
				for (uint32_t i = 0; i < n; i++)
					REQUIRE(fx_obj_u64(&p->via.array.ptr[2].via.array.ptr[i]) ==
						(first + i) * (first + i));
				next10 += n;
			} else {
				for (uint32_t i = 0; i < n; i++) {
					REQUIRE(first + i < 20 && !seen12[first + i]);
					seen12[first + i] = 1;
					REQUIRE(fx_obj_u64(&p->via.array.ptr[2].via.array.ptr[i]) == 1);
				}
				covered12 += n;
			}
		} else {
			uint64_t msgid = fx_obj_u64(&m->via.array.ptr[1]);
			const msgpack_object *res = &m->via.array.ptr[3];

			REQUIREF(fx_obj_u64(&m->via.array.ptr[0]) == 1 && m->via.array.size == 4,
				 "not a response");
			REQUIREF(msgid >= 10 && msgid <= 14, "response to msgid %llu", (unsigned long long)msgid);
			REQUIREF(!answered[msgid - 10], "two responses to msgid %llu", (unsigned long long)msgid);
			REQUIREF(m->via.array.ptr[2].type == MSGPACK_OBJECT_NIL, "msgid %llu failed",
				 (unsigned long long)msgid);
			answered[msgid - 10] = true;
			responses++;
			if (msgid == 10)
				REQUIREF(next10 == 5 && fx_obj_u64(fx_obj_get(res, "items")) == 5,
					 "map 10 answered after %llu items", (unsigned long long)next10);
			else if (msgid == 11)
				REQUIRE(fx_obj_u64(res) == 9);
			else if (msgid == 12)
				REQUIREF(covered12 == 20 && fx_obj_u64(fx_obj_get(res, "items")) == 20,
					 "map 12 answered after %llu items", (unsigned long long)covered12);
			else if (msgid == 13)
				REQUIRE(fx_obj_str_eq(res, "pong"));
			else
				REQUIRE(res->type == MSGPACK_OBJECT_MAP && fx_obj_get(res, "totals"));
		}
	}
	msgpack_sbuffer_destroy(&sb);
	fx_raw_close(&r);
	fx_stop(&fx);
}
END_TEST

START_TEST(limits)
{
	static const char *const args[] = {
		"--max-items", "10", "--max-jobs", "2", "--max-clients", "2", NULL,
	};
	struct fx fx;
	struct fx_raw a, b;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	struct mpool_map_summary sum;
	bool answered[4] = { false };
	int r;

	fx_start(&fx, args);

	/* --max-items */
	fx_sbuf_init(&sb, &pk);
	fx_pack_range(&pk, 0, 11);
	r = mpool_map(fx.c, "builtin.square", sb.data, sb.size, 11, NULL, NULL, NULL, &sum);
	REQUIREF(r == -MPOOL_E_LIMIT, "a map of 11 items with --max-items 10: %d (%s)", r,
		 mpool_errmsg(fx.c));
	ping_ok(fx.c);
	msgpack_sbuffer_clear(&sb);
	fx_map_squares(fx.c, 10, 0, NULL, 0);

	/* --max-jobs: the third open request on a connection. */
	fx_raw_open(&fx, &a);
	pack_apply(&pk, 1, "builtin.sleep", 300);
	pack_apply(&pk, 2, "builtin.sleep", 300);
	pack_apply(&pk, 3, "builtin.sleep", 300);
	send_packed(&a, &sb);
	for (int i = 0; i < 3; i++) {
		const msgpack_object *m, *e;
		uint64_t msgid;

		REQUIRE(fx_raw_next(&a, FX_WAIT_MS) == 1);
		m = &a.msg.data;
		REQUIRE(m->type == MSGPACK_OBJECT_ARRAY && m->via.array.size == 4 &&
			fx_obj_u64(&m->via.array.ptr[0]) == 1);
		msgid = fx_obj_u64(&m->via.array.ptr[1]);
		REQUIRE(msgid >= 1 && msgid <= 3 && !answered[msgid]);
		answered[msgid] = true;
		e = &m->via.array.ptr[2];
		if (msgid == 3) {
			REQUIREF(e->type == MSGPACK_OBJECT_MAP &&
				 fx_obj_i64(fx_obj_get(e, "code")) == MPOOL_E_LIMIT,
				 "the third open request with --max-jobs 2 was not refused with limit");
		} else {
			REQUIREF(e->type == MSGPACK_OBJECT_NIL, "request %llu failed",
				 (unsigned long long)msgid);
			REQUIRE(fx_obj_u64(&m->via.array.ptr[3]) == 300);
		}
	}
	/* The slots are free again. */
	pack_apply(&pk, 4, "builtin.square", 4);
	pack_apply(&pk, 5, "builtin.square", 5);
	send_packed(&a, &sb);
	for (int i = 0; i < 2; i++) {
		const msgpack_object *m;

		REQUIRE(fx_raw_next(&a, FX_WAIT_MS) == 1);
		m = &a.msg.data;
		REQUIREF(m->via.array.ptr[2].type == MSGPACK_OBJECT_NIL, "after the limit: msgid %llu failed",
			 (unsigned long long)m->via.array.ptr[1].via.u64);
	}

	/* --max-clients 2: fx.c and a; a third is turned away with a limit error. */
	fx_raw_open(&fx, &b);
	REQUIREF(fx_raw_error_then_eof(&b, FX_WAIT_MS) == MPOOL_E_LIMIT,
		 "the client past --max-clients was not told 'limit'");
	fx_raw_close(&b);
	fx_raw_close(&a);
	/* Once a is gone, a new client gets in. */
	for (int64_t end = fx_now_ms() + FX_WAIT_MS;;) {
		const msgpack_object *m;

		fx_raw_open(&fx, &b);
		fx_req_head(&pk, 1, "ping");
		msgpack_pack_array(&pk, 0);
		if (fx_raw_send(&b, sb.data, sb.size) == 0 && fx_raw_next(&b, FX_WAIT_MS) == 1) {
			m = &b.msg.data;
			if (m->via.array.ptr[0].via.u64 == 1)
				break;
		}
		msgpack_sbuffer_clear(&sb);
		fx_raw_close(&b);
		REQUIREF(fx_now_ms() < end, "a new client never got in after one left");
		fx_tick();
	}
	msgpack_sbuffer_clear(&sb);
	fx_raw_close(&b);
	msgpack_sbuffer_destroy(&sb);
	ping_ok(fx.c);
	fx_stop(&fx);
}
END_TEST

/* A request dribbled in one byte at a time is the same request. */
START_TEST(request_in_single_bytes)
{
	static const uint8_t map_req[] = S(
		0x94, 0x00, 0x02, 0xa3, 0x6d, 0x61, 0x70, 0x93, 0xae, 0x62, 0x75, 0x69, 0x6c, 0x74,
		0x69, 0x6e, 0x2e, 0x73, 0x71, 0x75, 0x61, 0x72, 0x65,
		0x93, 0x01, 0x02, 0x03, 0x81, 0xa9, 0x63, 0x68, 0x75, 0x6e, 0x6b, 0x73, 0x69, 0x7a,
		0x65, 0x02);
	static const uint8_t map_resp[] = S(
		0x93, 0x02, 0xa6, 0x72, 0x65, 0x73, 0x75, 0x6c, 0x74, 0x94, 0x02, 0x00, 0x92, 0x01,
		0x04, 0x90,
		0x93, 0x02, 0xa6, 0x72, 0x65, 0x73, 0x75, 0x6c, 0x74, 0x94, 0x02, 0x02, 0x91, 0x09,
		0x90,
		0x94, 0x01, 0x02, 0xc0, 0x82, 0xa5, 0x69, 0x74, 0x65, 0x6d, 0x73, 0x03, 0xa6, 0x66,
		0x61, 0x69, 0x6c, 0x65, 0x64, 0x00);
	struct fx fx;
	struct fx_raw raw;
	uint8_t buf[sizeof(map_resp)];

	fx_start(&fx, NULL);
	fx_raw_open(&fx, &raw);
	for (size_t i = 0; i < sizeof(map_req); i++) {
		struct timespec ts = { 0, 1000 * 1000 };   /* pacing, not synchronisation */

		REQUIRE(fx_raw_send(&raw, map_req + i, 1) == 0);
		nanosleep(&ts, NULL);
	}
	fx_raw_read_exact(&raw, buf, sizeof(buf), FX_WAIT_MS);
	REQUIREF(memcmp(buf, map_resp, sizeof(buf)) == 0, "the dribbled map was answered differently");
	fx_raw_close(&raw);
	fx_stop(&fx);
}
END_TEST

/* A thousand pings in one write: a thousand pongs, each msgid once. */
START_TEST(many_pipelined_requests)
{
	enum { N = 1000 };
	struct fx fx;
	struct fx_raw r;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	static uint8_t answered[N];

	fx_start(&fx, NULL);
	fx_raw_open(&fx, &r);
	fx_sbuf_init(&sb, &pk);
	for (uint64_t i = 0; i < N; i++) {
		if (i % 10 == 9) {
			pack_apply(&pk, i, "builtin.square", (int64_t)i);
		} else {
			fx_req_head(&pk, i, "ping");
			msgpack_pack_array(&pk, 0);
		}
	}
	send_packed(&r, &sb);
	for (int n = 0; n < N; n++) {
		const msgpack_object *m;
		uint64_t id;

		REQUIREF(fx_raw_next(&r, FX_WAIT_MS) == 1, "EOF after %d responses", n);
		m = &r.msg.data;
		REQUIRE(m->type == MSGPACK_OBJECT_ARRAY && m->via.array.size == 4 &&
			fx_obj_u64(&m->via.array.ptr[0]) == 1 &&
			m->via.array.ptr[2].type == MSGPACK_OBJECT_NIL);
		id = fx_obj_u64(&m->via.array.ptr[1]);
		REQUIREF(id < N && !answered[id], "msgid %llu answered twice or unknown",
			 (unsigned long long)id);
		answered[id] = 1;
		if (id % 10 == 9)
			REQUIRE(fx_obj_u64(&m->via.array.ptr[3]) == id * id);
		else
			REQUIRE(fx_obj_str_eq(&m->via.array.ptr[3], "pong"));
	}
	msgpack_sbuffer_destroy(&sb);
	fx_raw_close(&r);
	fx_stop(&fx);
}
END_TEST

/* PROTOCOL.md, Limits: an apply argument nested deeper than 29 levels gets
 * a limit error response (the frame itself is within the 32 levels). */
START_TEST(apply_argument_too_deep)
{
	struct fx fx;
	struct fx_raw r;
	msgpack_sbuffer sb;
	msgpack_packer pk;

	fx_start(&fx, NULL);
	fx_raw_open(&fx, &r);
	fx_sbuf_init(&sb, &pk);
	fx_req_head(&pk, 3, "apply");
	msgpack_pack_array(&pk, 2);
	fx_pack_str(&pk, "builtin.echo");
	for (int i = 0; i < 30; i++)
		msgpack_pack_array(&pk, 1);
	msgpack_pack_nil(&pk);
	send_packed(&r, &sb);
	expect_error_response(&r, 3, MPOOL_E_LIMIT, "an apply argument nested 30 deep");
	expect_pong_after_ping(&r, &sb, 4);
	/* 29 is fine. */
	fx_req_head(&pk, 5, "apply");
	msgpack_pack_array(&pk, 2);
	fx_pack_str(&pk, "builtin.echo");
	for (int i = 0; i < 29; i++)
		msgpack_pack_array(&pk, 1);
	msgpack_pack_nil(&pk);
	send_packed(&r, &sb);
	{
		const msgpack_object *err, *res;
		int depth = 0;

		fx_raw_response(&r, 5, &err, &res, FX_WAIT_MS);
		REQUIRE(err->type == MSGPACK_OBJECT_NIL);
		while (res->type == MSGPACK_OBJECT_ARRAY && res->via.array.size == 1) {
			res = &res->via.array.ptr[0];
			depth++;
		}
		REQUIREF(depth == 29 && res->type == MSGPACK_OBJECT_NIL, "echo returned depth %d", depth);
	}
	msgpack_sbuffer_destroy(&sb);
	fx_raw_close(&r);
	fx_stop(&fx);
}
END_TEST

/* A client that stops reading must not make the daemon buffer its whole
 * answer: its job stalls (workers idle, chunks still queued) while other
 * clients are served, and resumes, complete and correct, once it reads. */
static bool stalled(const struct fx_status *st, void *arg)
{
	(void)arg;
	return st->totals.jobs_active >= 1 && st->totals.chunks_queued > 0 &&
	       fx_count_state(st, "busy") == 0;
}

START_TEST(slow_reader_backpressure)
{
	enum { N = 1000, ITEM = 16384 };
	struct fx fx;
	struct fx_raw r;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	mpool_value *v = NULL;
	char *item = malloc(ITEM);
	uint64_t next = 0;
	int rr;

	fx_start(&fx, NULL);
	REQUIRE(item);
	fx_sbuf_init(&sb, &pk);
	fx_req_head(&pk, 1, "map");
	msgpack_pack_array(&pk, 3);
	fx_pack_str(&pk, "builtin.echo");
	msgpack_pack_array(&pk, N);
	for (uint32_t i = 0; i < N; i++) {
		memset(item, (int)(i & 0xff), ITEM);
		memcpy(item, &i, sizeof(i));
		msgpack_pack_bin(&pk, ITEM);
		msgpack_pack_bin_body(&pk, item, ITEM);
	}
	msgpack_pack_map(&pk, 1);
	fx_pack_str(&pk, "chunksize");
	msgpack_pack_uint64(&pk, 4);
	fx_raw_open(&fx, &r);
	send_packed(&r, &sb);

	fx_wait_status(&fx, stalled, NULL, FX_WAIT_MS,
		       "the job of a client that does not read to stall (workers idle, chunks queued)",
		       NULL);
	{
		msgpack_sbuffer arg;

		fx_arg_int(&arg, 6);
		rr = mpool_apply(fx.c, "builtin.square", arg.data, arg.size, &v);
		msgpack_sbuffer_destroy(&arg);
	}
	REQUIREF(rr == 0 && fx_obj_u64(mpool_value_get(v)) == 36,
		 "another client was not served while one stalled: %s", mpool_errmsg(fx.c));
	mpool_value_free(v);

	for (;;) {
		const msgpack_object *m, *p;

		REQUIREF(fx_raw_next(&r, FX_WAIT_MS) == 1, "EOF after %llu items", (unsigned long long)next);
		m = &r.msg.data;
		REQUIRE(m->type == MSGPACK_OBJECT_ARRAY);
		if (fx_obj_u64(&m->via.array.ptr[0]) == 1) {
			REQUIRE(m->via.array.ptr[2].type == MSGPACK_OBJECT_NIL);
			REQUIREF(next == N, "the map ended after %llu of %d items", (unsigned long long)next, N);
			REQUIRE(fx_obj_u64(fx_obj_get(&m->via.array.ptr[3], "items")) == N);
			break;
		}
		p = &m->via.array.ptr[2];
		REQUIRE(fx_obj_u64(&p->via.array.ptr[1]) == next);
		for (uint32_t i = 0; i < p->via.array.ptr[2].via.array.size; i++, next++) {
			const msgpack_object *b = &p->via.array.ptr[2].via.array.ptr[i];
			uint32_t idx;

			REQUIREF(b->type == MSGPACK_OBJECT_BIN && b->via.bin.size == ITEM, "item %llu",
				 (unsigned long long)next);
			memcpy(&idx, b->via.bin.ptr, sizeof(idx));
			REQUIREF(idx == next && (uint8_t)b->via.bin.ptr[ITEM - 1] == (next & 0xff),
				 "item %llu came back wrong", (unsigned long long)next);
		}
	}
	free(item);
	msgpack_sbuffer_destroy(&sb);
	fx_raw_close(&r);
	fx_wait_idle(&fx, FX_WAIT_MS);
	fx_stop(&fx);
}
END_TEST

/* ---- streamed input and cancel_request (raw sockets) ---------------------- */

static void pack_feed(msgpack_packer *pk, uint64_t msgid, uint64_t first, uint64_t n, bool end)
{
	msgpack_pack_array(pk, 3);
	msgpack_pack_uint8(pk, 2);
	fx_pack_str(pk, "feed");
	msgpack_pack_array(pk, 3);
	msgpack_pack_uint64(pk, msgid);
	msgpack_pack_array(pk, (uint32_t)n);
	fx_pack_range(pk, (int64_t)first, n);
	if (end)
		msgpack_pack_true(pk);
	else
		msgpack_pack_false(pk);
}

/* [2, method, [msgid, ...]]: the method, or NULL when m is not a notification. */
static const msgpack_object *note_params(const msgpack_object *m, const char *method)
{
	if (m->type != MSGPACK_OBJECT_ARRAY || m->via.array.size != 3 ||
	    m->via.array.ptr[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
	    m->via.array.ptr[0].via.u64 != 2 || !fx_obj_str_eq(&m->via.array.ptr[1], method))
		return NULL;
	return &m->via.array.ptr[2];
}

/* PROTOCOL.md, Streamed input: more items than the window, fed as credit
 * allows; results ordered and right; the summary counts every part. */
START_TEST(stream_map_with_credit)
{
	const uint64_t n = 150000, first_part = 10;
	struct fx fx;
	struct fx_raw r;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	uint64_t credit = 0, sent = first_part, next = 0, notes = 0;
	bool ended = false;
	int64_t end_ms;

	fx_start(&fx, NULL);
	fx_raw_open(&fx, &r);
	fx_sbuf_init(&sb, &pk);
	fx_req_head(&pk, 1, "map");
	msgpack_pack_array(&pk, 3);
	fx_pack_str(&pk, "builtin.square");
	msgpack_pack_array(&pk, (uint32_t)first_part);
	fx_pack_range(&pk, 0, first_part);
	msgpack_pack_map(&pk, 1);
	fx_pack_str(&pk, "stream");
	msgpack_pack_true(&pk);
	send_packed(&r, &sb);

	end_ms = fx_now_ms() + 40000;
	for (;;) {
		const msgpack_object *m, *p;

		/* Feed what the credit allows. */
		while (!ended && credit > 0) {
			uint64_t k = credit < 5000 ? credit : 5000;

			if (k > n - sent)
				k = n - sent;
			pack_feed(&pk, 1, sent, k, sent + k == n);
			REQUIREF(fx_raw_send(&r, sb.data, sb.size) == 0, "the daemon hung up during feeds");
			msgpack_sbuffer_clear(&sb);
			sent += k;
			credit -= k;
			ended = sent == n;
		}
		REQUIREF(fx_now_ms() < end_ms, "the stream stalled: %llu sent, %llu answered, credit %llu",
			 (unsigned long long)sent, (unsigned long long)next, (unsigned long long)credit);
		REQUIREF(fx_raw_next(&r, FX_WAIT_MS) == 1,
			 "EOF during the stream: %llu sent, %llu answered, credit %llu", (unsigned long long)sent,
			 (unsigned long long)next, (unsigned long long)credit);
		m = &r.msg.data;
		notes++;
		if ((p = note_params(m, "credit"))) {
			REQUIRE(p->type == MSGPACK_OBJECT_ARRAY && p->via.array.size == 2 &&
				fx_obj_u64(&p->via.array.ptr[0]) == 1);
			credit += fx_obj_u64(&p->via.array.ptr[1]);
			continue;
		}
		REQUIREF(notes > 1, "the first message after a stream request is not its credit");
		if ((p = note_params(m, "result"))) {
			const msgpack_object *res = &p->via.array.ptr[2];

			REQUIRE(fx_obj_u64(&p->via.array.ptr[0]) == 1);
			REQUIREF(fx_obj_u64(&p->via.array.ptr[1]) == next, "result at %llu, expected %llu",
				 (unsigned long long)p->via.array.ptr[1].via.u64, (unsigned long long)next);
			REQUIRE(p->via.array.ptr[3].via.array.size == 0);
			for (uint32_t i = 0; i < res->via.array.size; i++, next++)
				REQUIREF(next < sent && fx_obj_u64(&res->via.array.ptr[i]) == next * next,
					 "stream item %llu", (unsigned long long)next);
			continue;
		}
		{
			const msgpack_object *err, *res;

			REQUIREF(m->type == MSGPACK_OBJECT_ARRAY && m->via.array.size == 4 &&
				 fx_obj_u64(&m->via.array.ptr[0]) == 1 && fx_obj_u64(&m->via.array.ptr[1]) == 1,
				 "an unexpected message during the stream");
			err = &m->via.array.ptr[2];
			res = &m->via.array.ptr[3];
			REQUIREF(err->type == MSGPACK_OBJECT_NIL, "the stream failed (code %lld)",
				 (long long)fx_obj_i64(fx_obj_get(err, "code")));
			REQUIREF(ended && next == n, "the stream was answered after %llu of %llu items (%s)",
				 (unsigned long long)next, (unsigned long long)n, ended ? "ended" : "not ended");
			REQUIRE(fx_obj_u64(fx_obj_get(res, "items")) == n);
			REQUIRE(fx_obj_u64(fx_obj_get(res, "failed")) == 0);
			break;
		}
	}
	msgpack_sbuffer_destroy(&sb);
	fx_raw_close(&r);
	fx_stop(&fx);
}
END_TEST

/* PROTOCOL.md, Streamed input: a first part that fills the window gets no
 * credit at once; the first credit follows the results it reads. */
START_TEST(stream_first_part_fills_window)
{
	static const char *const args[] = { "--stream-window", "16", NULL };
	struct fx fx;
	struct fx_raw r;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	uint64_t results = 0, credit = 0;

	fx_start(&fx, args);
	fx_raw_open(&fx, &r);
	fx_sbuf_init(&sb, &pk);
	fx_req_head(&pk, 1, "map");
	msgpack_pack_array(&pk, 3);
	fx_pack_str(&pk, "builtin.square");
	msgpack_pack_array(&pk, 16);
	fx_pack_range(&pk, 0, 16);
	msgpack_pack_map(&pk, 1);
	fx_pack_str(&pk, "stream");
	msgpack_pack_true(&pk);
	send_packed(&r, &sb);
	while (credit == 0) {
		const msgpack_object *p;

		REQUIRE(fx_raw_next(&r, FX_WAIT_MS) == 1);
		if ((p = note_params(&r.msg.data, "credit"))) {
			REQUIREF(results > 0, "a credit came before any result of a full first part");
			credit = fx_obj_u64(&p->via.array.ptr[1]);
			REQUIRE(credit > 0);
		} else {
			REQUIREF((p = note_params(&r.msg.data, "result")), "not a result or a credit");
			results += p->via.array.ptr[2].via.array.size;
		}
	}
	pack_feed(&pk, 1, 16, 0, true);
	send_packed(&r, &sb);
	for (;;) {
		const msgpack_object *m;

		REQUIRE(fx_raw_next(&r, FX_WAIT_MS) == 1);
		m = &r.msg.data;
		if (note_params(m, "credit") || note_params(m, "result"))
			continue;
		REQUIREF(m->via.array.ptr[0].via.u64 == 1 &&
			 m->via.array.ptr[2].type == MSGPACK_OBJECT_NIL &&
			 fx_obj_u64(fx_obj_get(&m->via.array.ptr[3], "items")) == 16,
			 "the stream's response");
		break;
	}
	msgpack_sbuffer_destroy(&sb);
	fx_raw_close(&r);
	fx_stop(&fx);
}
END_TEST

START_TEST(stream_protocol_errors)
{
	struct fx fx;
	struct fx_raw r;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	const msgpack_object *p;
	uint64_t credit;

	fx_start(&fx, NULL);
	fx_raw_open(&fx, &r);
	fx_sbuf_init(&sb, &pk);

	/* A feed for no open stream is dropped without an answer. */
	pack_feed(&pk, 77, 0, 3, true);
	send_packed(&r, &sb);
	expect_pong_after_ping(&r, &sb, 78);

	/* A feed beyond the credit fails the map with bad_request. */
	fx_req_head(&pk, 1, "map");
	msgpack_pack_array(&pk, 3);
	fx_pack_str(&pk, "builtin.square");
	msgpack_pack_array(&pk, 0);
	msgpack_pack_map(&pk, 1);
	fx_pack_str(&pk, "stream");
	msgpack_pack_true(&pk);
	send_packed(&r, &sb);
	REQUIRE(fx_raw_next(&r, FX_WAIT_MS) == 1);
	p = note_params(&r.msg.data, "credit");
	REQUIREF(p && fx_obj_u64(&p->via.array.ptr[0]) == 1, "no credit after a stream request");
	credit = fx_obj_u64(&p->via.array.ptr[1]);
	REQUIRE(credit > 0 && credit < 10000000);
	pack_feed(&pk, 1, 0, credit + 1, false);
	send_packed(&r, &sb);
	for (;;) {
		const msgpack_object *m;

		REQUIRE(fx_raw_next(&r, FX_WAIT_MS) == 1);
		m = &r.msg.data;
		if (note_params(m, "result") || note_params(m, "credit"))
			continue;
		REQUIREF(m->via.array.size == 4 && fx_obj_u64(&m->via.array.ptr[1]) == 1 &&
			 m->via.array.ptr[2].type == MSGPACK_OBJECT_MAP &&
			 fx_obj_i64(fx_obj_get(&m->via.array.ptr[2], "code")) == MPOOL_E_BADREQ,
			 "a feed of %llu items on a credit of %llu did not fail the map with bad_request",
			 (unsigned long long)(credit + 1), (unsigned long long)credit);
		break;
	}
	expect_pong_after_ping(&r, &sb, 2);

	/* stream must be a bool. */
	fx_req_head(&pk, 3, "map");
	msgpack_pack_array(&pk, 3);
	fx_pack_str(&pk, "builtin.square");
	msgpack_pack_array(&pk, 0);
	msgpack_pack_map(&pk, 1);
	fx_pack_str(&pk, "stream");
	msgpack_pack_int64(&pk, 1);
	send_packed(&r, &sb);
	expect_error_response(&r, 3, MPOOL_E_BADREQ, "stream: 1");
	msgpack_sbuffer_destroy(&sb);
	fx_raw_close(&r);
	fx_wait_idle(&fx, FX_WAIT_MS);
	fx_stop(&fx);
}
END_TEST

static bool busy_job(const struct fx_status *st, void *arg)
{
	return fx_count_state(st, "busy") >= *(unsigned *)arg;
}

static bool quiet(const struct fx_status *st, void *arg)
{
	(void)arg;
	return st->totals.jobs_active == 0 && fx_pool_idle(st, 2);
}

/* PROTOCOL.md, cancel_request: the request fails at once with cancelled;
 * queued chunks are dropped; with kill, running workers are replaced. */
START_TEST(cancel_request_own_jobs)
{
	struct fx fx;
	struct fx_raw r, other;
	struct fx_status before, st;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	unsigned two = 2;
	bool got[2];

	fx_start(&fx, NULL);
	fx_status(&fx, &before);
	fx_raw_open(&fx, &r);
	fx_sbuf_init(&sb, &pk);

	/* Without kill: 40 sleeps of 100 ms on 2 workers, cancelled at once. */
	send_sleep_map(&r, &sb, &pk, 1, 100, 40);
	fx_wait_status(&fx, busy_job, &two, FX_WAIT_MS, "both workers busy with the map", NULL);
	fx_req_head(&pk, 2, "cancel_request");
	msgpack_pack_array(&pk, 1);
	msgpack_pack_uint64(&pk, 1);
	send_packed(&r, &sb);
	got[0] = got[1] = false;
	while (!got[0] || !got[1]) {
		const msgpack_object *m;
		uint64_t id;

		REQUIRE(fx_raw_next(&r, FX_WAIT_MS) == 1);
		m = &r.msg.data;
		if (note_params(m, "result")) {
			REQUIREF(!got[0], "a result of map 1 after its cancelled response");
			continue;
		}
		REQUIRE(m->via.array.size == 4);
		id = fx_obj_u64(&m->via.array.ptr[1]);
		REQUIRE(id == 1 || id == 2);
		REQUIRE(!got[id - 1]);
		got[id - 1] = true;
		if (id == 1)
			REQUIREF(m->via.array.ptr[2].type == MSGPACK_OBJECT_MAP &&
				 fx_obj_i64(fx_obj_get(&m->via.array.ptr[2], "code")) == MPOOL_E_CANCELLED,
				 "the cancelled map was not answered with cancelled");
		else
			REQUIREF(m->via.array.ptr[2].type == MSGPACK_OBJECT_NIL &&
				 m->via.array.ptr[3].type == MSGPACK_OBJECT_BOOLEAN &&
				 m->via.array.ptr[3].via.boolean, "cancel_request did not answer true");
	}
	fx_wait_status(&fx, quiet, NULL, FX_WAIT_MS, "no job left after the cancel", &st);
	REQUIREF(st.totals.tasks_done < 40, "%llu of the 40 cancelled items ran",
		 (unsigned long long)st.totals.tasks_done);
	REQUIREF(st.totals.workers_died == 0 && fx_has_worker(&st, before.workers[0].pid) &&
		 fx_has_worker(&st, before.workers[1].pid), "a cancel without kill replaced workers");

	/* With kill: two items that never end. */
	send_sleep_map(&r, &sb, &pk, 3, 600000, 2);
	fx_wait_status(&fx, busy_job, &two, FX_WAIT_MS, "both workers in the endless items", NULL);
	fx_req_head(&pk, 4, "cancel_request");
	msgpack_pack_array(&pk, 2);
	msgpack_pack_uint64(&pk, 3);
	msgpack_pack_map(&pk, 1);
	fx_pack_str(&pk, "kill");
	msgpack_pack_true(&pk);
	send_packed(&r, &sb);
	got[0] = got[1] = false;
	while (!got[0] || !got[1]) {
		const msgpack_object *m;
		uint64_t id;

		REQUIRE(fx_raw_next(&r, FX_WAIT_MS) == 1);
		m = &r.msg.data;
		REQUIREF(m->via.array.size == 4, "a notification after cancel with kill");
		id = fx_obj_u64(&m->via.array.ptr[1]);
		REQUIRE((id == 3 || id == 4) && !got[id - 3]);
		got[id - 3] = true;
		if (id == 3)
			REQUIREF(fx_obj_i64(fx_obj_get(&m->via.array.ptr[2], "code")) == MPOOL_E_CANCELLED,
				 "map 3 was not answered with cancelled");
	}
	fx_wait_status(&fx, quiet, NULL, FX_WAIT_MS, "the killed workers replaced", &st);
	REQUIREF(!fx_has_worker(&st, before.workers[0].pid) && !fx_has_worker(&st, before.workers[1].pid),
		 "cancel with kill left the endless items' workers in place");

	/* An unknown msgid, and another connection's msgid: not_found. */
	fx_req_head(&pk, 5, "cancel_request");
	msgpack_pack_array(&pk, 1);
	msgpack_pack_uint64(&pk, 12345);
	send_packed(&r, &sb);
	expect_error_response(&r, 5, MPOOL_E_NOTFOUND, "cancel of an unknown msgid");
	pack_apply(&pk, 6, "builtin.sleep", 300);
	send_packed(&r, &sb);
	fx_raw_open(&fx, &other);
	fx_req_head(&pk, 7, "cancel_request");
	msgpack_pack_array(&pk, 1);
	msgpack_pack_uint64(&pk, 6);
	REQUIRE(fx_raw_send(&other, sb.data, sb.size) == 0);
	msgpack_sbuffer_clear(&sb);
	expect_error_response(&other, 7, MPOOL_E_NOTFOUND, "cancel of another connection's msgid");
	{
		const msgpack_object *err, *res;

		fx_raw_response(&r, 6, &err, &res, FX_WAIT_MS);
		REQUIREF(err->type == MSGPACK_OBJECT_NIL && fx_obj_u64(res) == 300,
			 "another connection cancelled our apply");
	}
	fx_raw_close(&other);
	msgpack_sbuffer_destroy(&sb);
	fx_raw_close(&r);
	fx_stop(&fx);
}
END_TEST

/* PROTOCOL.md, "When a client goes": a client that closes its connection
 * with chunks running holds no worker: they are killed and replaced, and
 * that counts as workers_killed, not as a death. */
START_TEST(client_gone_frees_its_workers)
{
	struct fx fx;
	struct fx_raw r;
	struct fx_status before, st;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	unsigned two = 2;

	fx_start(&fx, NULL);
	fx_status(&fx, &before);
	fx_raw_open(&fx, &r);
	fx_sbuf_init(&sb, &pk);
	/* Two items of ten minutes each, one per worker. */
	send_sleep_map(&r, &sb, &pk, 1, 600000, 2);
	fx_wait_status(&fx, busy_job, &two, FX_WAIT_MS, "both workers in the long items", NULL);
	fx_raw_close(&r);
	msgpack_sbuffer_destroy(&sb);
	fx_wait_status(&fx, quiet, NULL, FX_WAIT_MS, "the departed client's workers replaced", &st);
	REQUIREF(!fx_has_worker(&st, before.workers[0].pid) &&
		 !fx_has_worker(&st, before.workers[1].pid),
		 "the workers of a client that left still run its items");
	REQUIREF(fx_status_get(&fx, "totals.workers_killed") == 2 && st.totals.workers_died == 0,
		 "workers_killed %llu, workers_died %llu",
		 (unsigned long long)fx_status_get(&fx, "totals.workers_killed"),
		 (unsigned long long)st.totals.workers_died);
	fx_map_squares(fx.c, 100, 0, NULL, 0);
	fx_stop(&fx);
}
END_TEST

static Suite *daemon_suite(void)
{
	Suite *s = suite_create("daemon");
	TCase *tc;

	tc = tcase_create("connect");
	tcase_add_test(tc, connect_refuses_another_users_server);
	suite_add_tcase(s, tc);

	tc = tcase_create("apply");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, apply_square);
	tcase_add_test(tc, apply_echo_round_trip);
	tcase_add_test(tc, apply_errors);
	tcase_add_test(tc, apply_pid_is_a_worker);
	suite_add_tcase(s, tc);

	tc = tcase_create("map");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, map_60k_ordered);
	tcase_add_test(tc, map_100k_unordered);
	tcase_add_test(tc, map_collect_10k);
	tcase_add_test(tc, map_chunksize_honoured);
	tcase_add_test(tc, map_mixed_items_round_trip);
	tcase_add_test(tc, map_empty);
	tcase_add_test(tc, map_item_errors);
	tcase_add_test(tc, map_unknown_function);
	tcase_add_test(tc, map_deep_items);
	tcase_add_test(tc, opts_carry_their_size);
	suite_add_tcase(s, tc);

	tc = tcase_create("pool");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, two_clients_at_once);
	tcase_add_test(tc, max_tasks_per_child);
	tcase_add_test(tc, sleep_and_spin_errors);
	tcase_add_test(tc, fairness_apply_during_big_map);
	tcase_add_test(tc, fairness_batch_never_holds_another_clients_apply);
	tcase_add_test(tc, fairness_round_robin_across_connections);
	tcase_add_test(tc, fairness_round_robin_across_uids);
	tcase_add_test(tc, status_fields);
	suite_add_tcase(s, tc);

	tc = tcase_create("wire");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, protocol_examples_byte_by_byte);
	tcase_add_test(tc, bad_requests_keep_the_connection);
	tcase_add_test(tc, unknown_method_and_extreme_msgids);
	tcase_add_test(tc, pipelining);
	tcase_add_test(tc, limits);
	tcase_add_test(tc, request_in_single_bytes);
	tcase_add_test(tc, many_pipelined_requests);
	tcase_add_test(tc, apply_argument_too_deep);
	tcase_add_test(tc, slow_reader_backpressure);
	suite_add_tcase(s, tc);

	tc = tcase_create("stream");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, stream_map_with_credit);
	tcase_add_test(tc, stream_first_part_fills_window);
	tcase_add_test(tc, stream_protocol_errors);
	tcase_add_test(tc, cancel_request_own_jobs);
	tcase_add_test(tc, client_gone_frees_its_workers);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(daemon_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
