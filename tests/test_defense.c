/* test_defense: mpoold against hostile and broken clients (bad-input tests).
 *
 * Every test runs a real mpoold (fixture.h) and, for its whole length, a
 * second client in a forked process that maps builtin.square over 20 000
 * items again and again and checks every result (bg_start/bg_stop): a bad
 * client must get its clear error, or lose its own connection, while that
 * healthy client's maps complete correctly.
 *
 * Covered here, beyond what test_daemon.c and test_faults.c already do:
 * truncated frames then end-of-file; seeded random garbage of several
 * sizes; headers that declare four billion elements or bytes (array32,
 * map32, str32, bin32, ext32) past --max-frame, with mpoold's memory
 * bounded, also at the default 64 MiB; a map and an apply of exactly
 * --max-frame bytes, which must run; nesting past 32 levels in every
 * shape; every param of every method with a wrong type (table-driven), and
 * malformed feeds; unknown methods, odd method names and notifications;
 * msgid reuse against maps, streams, joins and every other method;
 * chunksize 0, negative, 2^32, 2^64 - 1 and the largest valid one; function
 * names that are not UTF-8 or hide a NUL; a client that pipelines 100 000
 * requests without reading; --max-queued-chunks, for maps and for streamed
 * feeds; every limit counted in status under its name; joins against
 * --max-jobs; feeds beyond credit, after the end, for unknown, failed,
 * cancelled or non-stream msgids.  Only max_queued_chunks_bounds_streams
 * runs without the healthy client: it must keep the one worker busy.
 *
 * Messages from mpoold must be printable ASCII whatever the request held:
 * expect_error() checks every error message it sees. */
#include <check.h>

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "fixture.h"
#include "mp_json.h"

#define BG_ITEMS 20000
#define BG_WAIT_MS 40000       /* the healthy client's last map, after the test */
#define MSG_MAX 1024           /* no error message is longer than this */

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

/* ---- the healthy client ----------------------------------------------------- */

struct bg {
	struct fx *fx;
	int stop_r, stop_w;
	pid_t pid;
};

/* Maps BG_ITEMS squares, checked item by item, until the parent closes the
 * pipe; always at least once. */
static int bg_main(void *arg)
{
	struct bg *bg = arg;
	mpool *c;
	int rounds = 0;

	close(bg->stop_w);
	c = fx_connect(bg->fx);
	for (;;) {
		struct pollfd pfd = { bg->stop_r, POLLIN, 0 };

		fx_map_squares(c, BG_ITEMS, rounds * 13, NULL, 0);
		rounds++;
		if (poll(&pfd, 1, 0) > 0)
			break;
	}
	mpool_close(c);
	fprintf(stderr, "healthy client: %d maps of %d items, all correct\n", rounds, BG_ITEMS);
	return 0;
}

static bool bg_running(const struct fx_status *st, void *arg)
{
	(void)arg;
	return st->totals.jobs_active >= 1;
}

static void bg_start(struct fx *fx, struct bg *bg)
{
	int p[2];

	REQUIRE(pipe(p) == 0);
	*bg = (struct bg){ fx, p[0], p[1], 0 };
	bg->pid = fx_fork(bg_main, bg);
	close(p[0]);
	fx_wait_status(fx, bg_running, NULL, FX_WAIT_MS, "the healthy client's map running", NULL);
}

static void bg_stop(struct bg *bg)
{
	close(bg->stop_w);
	fx_expect_child_ok(bg->pid, BG_WAIT_MS, "the healthy client's 20 000-item maps");
}

/* ---- packing ----------------------------------------------------------------- */

/* Packs the JSON text json (integers stay integers, reals float64). */
static void pack_json(msgpack_packer *pk, const char *json)
{
	json_error_t jerr;
	json_t *v = json_loads(json, JSON_DECODE_ANY, &jerr);

	REQUIREF(v, "bad JSON in the test: %s: %s", json, jerr.text);
	REQUIRE(mjson_pack(v, pk) == 0);
	json_decref(v);
}

/* [0, msgid, method, params] with params given as JSON. */
static void pack_req(msgpack_packer *pk, uint64_t msgid, const char *method, const char *params)
{
	fx_req_head(pk, msgid, method);
	pack_json(pk, params);
}

static void pack_raw_str(msgpack_packer *pk, const void *s, size_t len)
{
	msgpack_pack_str(pk, len);
	msgpack_pack_str_body(pk, s, len);
}

static void send_sb(struct fx_raw *r, msgpack_sbuffer *sb)
{
	REQUIREF(fx_raw_send(r, sb->data, sb->size) == 0, "mpoold hung up on a request it should answer");
	msgpack_sbuffer_clear(sb);
}

/* A deterministic PRNG (xorshift64*), so a failure replays. */
static uint64_t rng_state;

static uint64_t rng(void)
{
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 0x2545F4914F6CDD1Dull;
}

/* ---- reading ------------------------------------------------------------------ */

static void require_printable(const msgpack_object *msg, const char *what)
{
	REQUIREF(msg && msg->type == MSGPACK_OBJECT_STR && msg->via.str.size > 0,
		 "%s: the error has no message", what);
	REQUIREF(msg->via.str.size <= MSG_MAX, "%s: an error message of %u bytes", what,
		 msg->via.str.size);
	for (uint32_t i = 0; i < msg->via.str.size; i++) {
		unsigned char ch = (unsigned char)msg->via.str.ptr[i];

		REQUIREF(ch >= 0x20 && ch < 0x7f, "%s: byte 0x%02x at %u of the error message '%.*s'",
			 what, ch, i, (int)msg->via.str.size, msg->via.str.ptr);
	}
}

/* An error object: its code, after checking it is well-formed. */
static int64_t error_code(const msgpack_object *err, const char *what)
{
	REQUIREF(err->type == MSGPACK_OBJECT_MAP, "%s: the error is not a map", what);
	require_printable(fx_obj_get(err, "message"), what);
	return fx_obj_i64(fx_obj_get(err, "code"));
}

/* The next message must be the error response to msgid with code. */
static void expect_error(struct fx_raw *r, uint64_t msgid, int code, const char *what)
{
	const msgpack_object *err, *res;
	int64_t got;

	fx_raw_response(r, msgid, &err, &res, FX_WAIT_MS);
	REQUIREF(err->type == MSGPACK_OBJECT_MAP, "%s: answered without an error (msgid %llu)", what,
		 (unsigned long long)msgid);
	got = error_code(err, what);
	REQUIREF(got == code, "%s: code %lld (%s: %.*s), expected %d (%s)", what, (long long)got,
		 mpool_strerror((int)got), (int)fx_obj_get(err, "message")->via.str.size,
		 fx_obj_get(err, "message")->via.str.ptr, code, mpool_strerror(code));
	REQUIREF(!fx_obj_get(err, "index"), "%s: a request error with an index", what);
	REQUIREF(res->type == MSGPACK_OBJECT_NIL, "%s: an error response with a result", what);
}

static void raw_ping(struct fx_raw *r, uint64_t msgid, const char *after)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;
	const msgpack_object *err, *res;

	fx_sbuf_init(&sb, &pk);
	fx_req_head(&pk, msgid, "ping");
	msgpack_pack_array(&pk, 0);
	REQUIREF(fx_raw_send(r, sb.data, sb.size) == 0, "the connection was closed after %s", after);
	msgpack_sbuffer_destroy(&sb);
	REQUIREF(fx_raw_next(r, FX_WAIT_MS) == 1, "the connection was closed after %s", after);
	REQUIREF(r->msg.data.type == MSGPACK_OBJECT_ARRAY && r->msg.data.via.array.size == 4,
		 "after %s: not a response", after);
	err = &r->msg.data.via.array.ptr[2];
	res = &r->msg.data.via.array.ptr[3];
	REQUIREF(fx_obj_u64(&r->msg.data.via.array.ptr[1]) == msgid && err->type == MSGPACK_OBJECT_NIL &&
		 fx_obj_str_eq(res, "pong"), "the ping after %s was not answered with pong", after);
}

/* The next message must be the "error" notification with code, then EOF. */
static void expect_dropped(struct fx_raw *r, int code, const char *what)
{
	int64_t got = fx_raw_error_then_eof(r, FX_WAIT_MS);

	REQUIREF(got == code, "%s: dropped with code %lld (%s), expected %d (%s)", what,
		 (long long)got, mpool_strerror((int)got), code, mpool_strerror(code));
}

/* [2, method, params]: params, or NULL when m is not that notification. */
static const msgpack_object *note_params(const msgpack_object *m, const char *method)
{
	if (m->type != MSGPACK_OBJECT_ARRAY || m->via.array.size != 3 ||
	    m->via.array.ptr[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
	    m->via.array.ptr[0].via.u64 != 2 || !fx_obj_str_eq(&m->via.array.ptr[1], method))
		return NULL;
	return &m->via.array.ptr[2];
}

static uint64_t limit_hits(struct fx *fx, const char *name)
{
	char path[64];

	snprintf(path, sizeof(path), "totals.limits_hit.%s", name);
	return fx_status_get(fx, path);
}

static bool clients_are(const struct fx_status *st, void *arg)
{
	return st->totals.clients == *(uint64_t *)arg;
}

/* The daemon lets go of every connection but the control one and the
 * healthy client's. */
static void wait_clients(struct fx *fx, uint64_t n, const char *what)
{
	fx_wait_status(fx, clients_are, &n, FX_WAIT_MS, what, NULL);
}

/* Reads a map's notifications and response on r: every item's result
 * must be expect(i); returns when the response (success) came.  Results of
 * other open requests on r are skipped. */
static void read_map(struct fx_raw *r, uint64_t msgid, uint64_t n, int64_t (*expect)(uint64_t),
		     const char *what)
{
	uint8_t *seen = calloc(n + 1, 1);
	uint64_t got = 0;

	REQUIRE(seen);
	for (;;) {
		const msgpack_object *m, *p;

		REQUIREF(fx_raw_next(r, FX_WAIT_MS) == 1, "%s: EOF after %llu of %llu items", what,
			 (unsigned long long)got, (unsigned long long)n);
		m = &r->msg.data;
		if ((p = note_params(m, "credit")))
			continue;
		if ((p = note_params(m, "result"))) {
			const msgpack_object *res = &p->via.array.ptr[2];
			uint64_t first = fx_obj_u64(&p->via.array.ptr[1]);

			if (fx_obj_u64(&p->via.array.ptr[0]) != msgid)
				continue;        /* another open request's */
			REQUIREF(p->via.array.ptr[3].via.array.size == 0, "%s: item errors", what);
			for (uint32_t i = 0; i < res->via.array.size; i++) {
				REQUIREF(first + i < n && !seen[first + i], "%s: item %llu twice or outside",
					 what, (unsigned long long)(first + i));
				seen[first + i] = 1;
				REQUIREF(fx_obj_i64(&res->via.array.ptr[i]) == expect(first + i),
					 "%s: item %llu wrong", what, (unsigned long long)(first + i));
				got++;
			}
			continue;
		}
		REQUIREF(m->type == MSGPACK_OBJECT_ARRAY && m->via.array.size == 4 &&
			 fx_obj_u64(&m->via.array.ptr[0]) == 1, "%s: an unexpected message", what);
		REQUIREF(fx_obj_u64(&m->via.array.ptr[1]) == msgid, "%s: a response to msgid %llu", what,
			 (unsigned long long)m->via.array.ptr[1].via.u64);
		REQUIREF(m->via.array.ptr[2].type == MSGPACK_OBJECT_NIL, "%s: the map failed (code %lld)",
			 what, (long long)error_code(&m->via.array.ptr[2], what));
		REQUIREF(got == n && fx_obj_u64(fx_obj_get(&m->via.array.ptr[3], "items")) == n,
			 "%s: answered after %llu of %llu items", what, (unsigned long long)got,
			 (unsigned long long)n);
		break;
	}
	free(seen);
}

static int64_t square_of_index(uint64_t i)
{
	return (int64_t)(i * i);
}

/* ---- truncated frames, garbage ---------------------------------------------- */

/* Every strict prefix of a request is no request: mpoold answers nothing
 * and lets the connection go at end-of-file.  Cut at several points,
 * including inside headers that declare large sizes. */
START_TEST(truncated_frames_then_close)
{
	struct fx fx;
	struct bg bg;
	struct fx_raw r;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	char *reqs[16];
	size_t lens[16];
	unsigned n = 0;

	fx_start(&fx, NULL);
	bg_start(&fx, &bg);
	fx_sbuf_init(&sb, &pk);
#define ADD() do { \
	reqs[n] = malloc(sb.size); \
	REQUIRE(reqs[n]); \
	memcpy(reqs[n], sb.data, sb.size); \
	lens[n++] = sb.size; \
	msgpack_sbuffer_clear(&sb); \
} while (0)
	pack_req(&pk, 1, "apply", "[\"builtin.square\", 7]");
	ADD();
	pack_req(&pk, 2, "map", "[\"builtin.square\", [1, 2, 3, 4, 5], {\"chunksize\": 2, \"ordered\": false}]");
	ADD();
	pack_req(&pk, 3, "ping", "[]");
	ADD();
	pack_req(&pk, 4, "map", "[\"builtin.square\", [1], {\"stream\": true}]");
	ADD();
	msgpack_pack_array(&pk, 3);
	msgpack_pack_uint8(&pk, 2);
	fx_pack_str(&pk, "feed");
	pack_json(&pk, "[4, [2, 3], true]");
	ADD();
	pack_req(&pk, 5, "spawn", "[\"builtin.echo\", {\"a\": [1, 2.5, null]}, {\"protocol\": 2, \"name\": \"p\"}]");
	ADD();
	/* A str32 of 1 MiB, its header and some of its bytes. */
	fx_req_head(&pk, 6, "apply");
	msgpack_pack_array(&pk, 2);
	fx_pack_str(&pk, "builtin.echo");
	{
		char *big = calloc(1, 1u << 20);

		REQUIRE(big);
		pack_raw_str(&pk, big, 1u << 20);
		free(big);
	}
	ADD();
	/* Headers alone: array32, map32 declaring 2^32 - 1 elements. */
	msgpack_sbuffer_write(&sb, "\xdd\xff\xff\xff\xff\x01\x02", 7);
	ADD();
	msgpack_sbuffer_write(&sb, "\xdf\xff\xff\xff\xff\xa1k\x01", 8);
	ADD();
#undef ADD

	for (unsigned i = 0; i < n; i++) {
		size_t cuts[4] = { 1, lens[i] / 3, lens[i] / 2, lens[i] - 1 };

		for (unsigned k = 0; k < 4; k++) {
			char what[96];

			if (cuts[k] == 0 || cuts[k] >= lens[i])
				continue;
			snprintf(what, sizeof(what), "request %u cut after %zu of %zu bytes", i, cuts[k],
				 lens[i]);
			fx_raw_open(&fx, &r);
			REQUIREF(fx_raw_send(&r, reqs[i], cuts[k]) == 0, "%s: mpoold hung up", what);
			/* The half-frame must not block the daemon: the control
			 * connection is answered meanwhile. */
			REQUIREF(mpool_ping(fx.c) == 0, "%s: no ping answer: %s", what, mpool_errmsg(fx.c));
			REQUIRE(shutdown(r.fd, SHUT_WR) == 0);
			REQUIREF(fx_raw_next(&r, FX_WAIT_MS) == 0,
				 "%s: mpoold answered a truncated request instead of closing at EOF", what);
			fx_raw_close(&r);
		}
		free(reqs[i]);
	}
	/* ... and each of those connections is gone (control + healthy client). */
	wait_clients(&fx, 2, "every truncated connection closed");
	bg_stop(&bg);
	msgpack_sbuffer_destroy(&sb);
	fx_stop(&fx);
}
END_TEST

/* Seeded random bytes of many sizes: whatever they hold, each connection
 * gets answers that are well-formed (fx_raw_next fails on anything else)
 * -- error responses or the one "error" notification -- and ends at EOF;
 * mpoold stays up and small. */
START_TEST(random_garbage)
{
	static const char *const args[] = { "--max-frame", "1048576", NULL };
	static const size_t sizes[] = { 1, 2, 3, 5, 16, 100, 1000, 4096, 65536, 1u << 20, 3u << 20 };
	struct fx fx;
	struct bg bg;
	struct fx_raw r;
	unsigned dropped = 0, answered = 0, quiet = 0;
	long rss;

	fx_start(&fx, args);
	bg_start(&fx, &bg);
	rng_state = 0x6d706f6f6c646566ull;      /* "mpooldef" */
	for (unsigned round = 0; round < 3; round++) {
		for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
			size_t len = sizes[s];
			uint8_t *buf = malloc(len);
			bool farewell = false;
			unsigned msgs = 0;

			REQUIRE(buf);
			for (size_t i = 0; i < len; i++)
				buf[i] = (uint8_t)(rng() >> 56);
			fx_raw_open(&fx, &r);
			(void)fx_raw_send(&r, buf, len);   /* may be cut short: mpoold hung up */
			free(buf);
			shutdown(r.fd, SHUT_WR);
			while (fx_raw_next(&r, FX_WAIT_MS) == 1) {
				const msgpack_object *m = &r.msg.data, *p;

				REQUIREF(!farewell, "garbage of %zu bytes: a message after the error notification",
					 len);
				msgs++;
				if ((p = note_params(m, "error"))) {
					REQUIRE(p->type == MSGPACK_OBJECT_ARRAY && p->via.array.size == 1);
					(void)error_code(&p->via.array.ptr[0], "garbage: the error notification");
					farewell = true;
					continue;
				}
				REQUIREF(m->type == MSGPACK_OBJECT_ARRAY && m->via.array.size == 4 &&
					 fx_obj_u64(&m->via.array.ptr[0]) == 1,
					 "garbage of %zu bytes: an answer that is no response", len);
				if (m->via.array.ptr[2].type != MSGPACK_OBJECT_NIL)
					(void)error_code(&m->via.array.ptr[2], "garbage: an error response");
			}
			fx_raw_close(&r);
			dropped += farewell;
			answered += msgs > (unsigned)farewell;
			quiet += msgs == 0;
		}
		REQUIREF(mpool_ping(fx.c) == 0, "mpoold does not answer after garbage: %s",
			 mpool_errmsg(fx.c));
	}
	fprintf(stderr, "random_garbage: %u connections dropped with a reason, %u got responses, "
		"%u ended silently (an unfinished value at EOF)\n", dropped, answered, quiet);
	REQUIREF(dropped > 0, "no garbage was refused with an error notification");
	rss = fx_rss_kib(fx.pid);
	REQUIREF(rss > 0 && rss < 64 * 1024 + RSS_SLACK_KIB, "mpoold's VmRSS is %ld KiB after the garbage",
		 rss);
	wait_clients(&fx, 2, "every garbage connection closed");
	bg_stop(&bg);
	fx_stop(&fx);
}
END_TEST

/* ---- size and depth limits ------------------------------------------------ */

/* Headers that declare four billion elements or bytes, then more bytes than
 * --max-frame: each client gets "limit" and is dropped, without mpoold
 * allocating for the claim (its RSS stays small), and status counts each
 * under limits_hit.frame.  One more at the default limit (64 MiB): the
 * memory held for it is bounded by the limit and given back. */
START_TEST(four_billion_headers_past_max_frame)
{
	static const char *const args[] = { "--max-frame", "1048576", NULL };
	static const struct { const char *name; const char *head; size_t len; } heads[] = {
		{ "array32 of 2^32-1", "\xdd\xff\xff\xff\xff", 5 },
		{ "map32 of 2^32-1", "\xdf\xff\xff\xff\xff", 5 },
		{ "str32 of 2^32-1 bytes", "\xdb\xff\xff\xff\xff", 5 },
		{ "bin32 of 2^32-1 bytes", "\xc6\xff\xff\xff\xff", 5 },
		{ "ext32 of 2^32-1 bytes", "\xc9\xff\xff\xff\xff\x01", 6 },
		{ "a request whose params are an array32 of 2^32-1",
		  "\x94\x00\x01\xa5" "apply" "\xdd\xff\xff\xff\xff", 14 },
		{ "a map request with items of 2^32-1",
		  "\x94\x00\x01\xa3" "map" "\x92\xac" "builtin.echo" "\xdd\xff\xff\xff\xff", 26 },
	};
	const size_t pad = 2u << 20;
	struct fx fx;
	struct bg bg;
	struct fx_raw r;
	char *buf = calloc(1, pad + 64);
	uint64_t before;
	long rss, base_rss;

	REQUIRE(buf);
	fx_start(&fx, args);
	bg_start(&fx, &bg);
	before = limit_hits(&fx, "frame");
	for (size_t i = 0; i < sizeof(heads) / sizeof(heads[0]); i++) {
		memcpy(buf, heads[i].head, heads[i].len);
		fx_raw_open(&fx, &r);
		(void)fx_raw_send(&r, buf, heads[i].len + pad);   /* EPIPE once it hung up */
		expect_dropped(&r, MPOOL_E_LIMIT, heads[i].name);
		fx_raw_close(&r);
		rss = fx_rss_kib(fx.pid);
		REQUIREF(rss > 0 && rss < 48 * 1024 + RSS_SLACK_KIB, "%s: mpoold's VmRSS is %ld KiB",
			 heads[i].name, rss);
	}
	REQUIREF(limit_hits(&fx, "frame") == before + sizeof(heads) / sizeof(heads[0]),
		 "limits_hit.frame went from %llu to %llu after %zu oversized frames",
		 (unsigned long long)before, (unsigned long long)limit_hits(&fx, "frame"),
		 sizeof(heads) / sizeof(heads[0]));
	bg_stop(&bg);
	fx_stop(&fx);

	/* At the default --max-frame, 64 MiB: held while it arrives, then freed. */
	fx_start(&fx, NULL);
	base_rss = fx_rss_kib(fx.pid);
	{
		const size_t big = (64u << 20) + (1u << 20);
		char *huge = calloc(1, big);

		REQUIRE(huge);
		memcpy(huge, "\xdf\xff\xff\xff\xff", 5);
		fx_raw_open(&fx, &r);
		(void)fx_raw_send(&r, huge, big);
		free(huge);
		expect_dropped(&r, MPOOL_E_LIMIT, "map32 of 2^32-1 past the default 64 MiB");
		fx_raw_close(&r);
	}
	rss = fx_rss_kib(fx.pid);
	REQUIREF(rss > 0 && rss < base_rss + 160 * 1024 + RSS_SLACK_KIB,
		 "mpoold's VmRSS is %ld KiB after a 65 MiB frame (it was %ld KiB)", rss, base_rss);
	for (int64_t end = fx_now_ms() + FX_WAIT_MS;
	     (rss = fx_rss_kib(fx.pid)) > base_rss + 16 * 1024 + RSS_SLACK_KIB;) {
		REQUIREF(fx_now_ms() < end, "mpoold kept %ld KiB (from %ld KiB) after dropping a 65 MiB frame",
			 rss, base_rss);
		fx_tick();
	}
	fprintf(stderr, "four_billion_headers: VmRSS %ld KiB at start, %ld KiB after the 65 MiB frame\n",
		base_rss, rss);
	REQUIRE(limit_hits(&fx, "frame") == 1);
	free(buf);
	fx_stop(&fx);
}
END_TEST

/* An echo request packed to exactly total bytes (PROTOCOL.md: "a message of
 * exactly this size passes").  Returns the payload size. */
static size_t pack_exact(msgpack_sbuffer *sb, uint64_t msgid, bool is_map, size_t total)
{
	msgpack_packer pk;
	char *payload = calloc(1, total);

	REQUIRE(payload);
	for (size_t n = total - 64; n < total; n++) {
		msgpack_sbuffer_clear(sb);
		msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
		fx_req_head(&pk, msgid, is_map ? "map" : "apply");
		msgpack_pack_array(&pk, 2);
		fx_pack_str(&pk, "builtin.echo");
		if (is_map)
			msgpack_pack_array(&pk, 1);
		for (size_t i = 0; i < n; i++)
			payload[i] = (char)('a' + i % 26);
		msgpack_pack_bin(&pk, n);
		msgpack_pack_bin_body(&pk, payload, n);
		if (sb->size == total) {
			free(payload);
			return n;
		}
	}
	free(payload);
	FAILF("cannot pack a request of exactly %zu bytes", total);
}

static void expect_bin_echo(const msgpack_object *o, size_t n, const char *what)
{
	REQUIREF(o->type == MSGPACK_OBJECT_BIN && o->via.bin.size == n, "%s: the echo is not the %zu-byte bin",
		 what, n);
	for (size_t i = 0; i < n; i++)
		REQUIREF(o->via.bin.ptr[i] == (char)('a' + i % 26), "%s: byte %zu of the echo", what, i);
}

/* PROTOCOL.md, Limits: a message of exactly --max-frame bytes passes -- so
 * it must also run: the master's message to the worker and the worker's
 * result must fit through the same limit.  A map of one item is packed one
 * byte larger for the worker than the client's request (the chunk's first
 * index); an apply, once the worker's sequence numbers pass 255. */
static const char *const at_limit_args[] = { "--max-frame", "65536", "--workers", "1", NULL };
#define AT_LIMIT 65536

static void require_no_item_error(const msgpack_object *errs, const char *what)
{
	const msgpack_object *e, *msg;

	if (errs->via.array.size == 0)
		return;
	e = &errs->via.array.ptr[0];
	msg = fx_obj_get(e, "message");
	FAILF("%s, which PROTOCOL.md says passes, failed with code %lld: %.*s", what,
	      (long long)fx_obj_i64(fx_obj_get(e, "code")), msg ? (int)msg->via.str.size : 0,
	      msg ? msg->via.str.ptr : "");
}

START_TEST(map_of_exactly_max_frame_runs)
{
	struct fx fx;
	struct bg bg;
	struct fx_raw r;
	msgpack_sbuffer sb;
	size_t n;

	fx_start(&fx, at_limit_args);
	bg_start(&fx, &bg);
	msgpack_sbuffer_init(&sb);

	/* One byte more is refused. */
	fx_raw_open(&fx, &r);
	(void)pack_exact(&sb, 1, true, AT_LIMIT + 1);
	(void)fx_raw_send(&r, sb.data, sb.size);
	expect_dropped(&r, MPOOL_E_LIMIT, "a map of --max-frame + 1 bytes");
	fx_raw_close(&r);

	fx_raw_open(&fx, &r);
	n = pack_exact(&sb, 2, true, AT_LIMIT);
	send_sb(&r, &sb);
	for (;;) {
		const msgpack_object *p;

		REQUIREF(fx_raw_next(&r, FX_WAIT_MS) == 1, "EOF during the map of exactly --max-frame bytes");
		if (!(p = note_params(&r.msg.data, "result")))
			break;
		require_no_item_error(&p->via.array.ptr[3], "a map request of exactly --max-frame bytes");
		expect_bin_echo(&p->via.array.ptr[2].via.array.ptr[0], n, "the map at the limit");
	}
	REQUIRE(r.msg.data.via.array.size == 4 && r.msg.data.via.array.ptr[2].type == MSGPACK_OBJECT_NIL);
	REQUIREF(fx_status_get(&fx, "totals.workers_died") == 0, "a worker died over a frame at the limit");
	raw_ping(&r, 3, "the map at the limit");
	fx_raw_close(&r);
	msgpack_sbuffer_destroy(&sb);
	bg_stop(&bg);
	fx_stop(&fx);
}
END_TEST

START_TEST(apply_of_exactly_max_frame_runs)
{
	struct fx fx;
	struct bg bg;
	struct fx_raw r;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	const msgpack_object *err, *res;
	size_t n;

	fx_start(&fx, at_limit_args);
	bg_start(&fx, &bg);
	fx_raw_open(&fx, &r);
	fx_sbuf_init(&sb, &pk);
	/* At a fresh worker, then once its chunk numbers are past 255. */
	for (int round = 0; round < 2; round++) {
		char what[96];

		if (round == 1) {
			for (uint64_t i = 0; i < 300; i++) {
				fx_req_head(&pk, 100 + i, "apply");
				pack_json(&pk, "[\"builtin.square\", 3]");
			}
			send_sb(&r, &sb);
			for (int i = 0; i < 300; i++) {
				REQUIRE(fx_raw_next(&r, FX_WAIT_MS) == 1);
				REQUIRE(r.msg.data.via.array.size == 4 &&
					r.msg.data.via.array.ptr[2].type == MSGPACK_OBJECT_NIL);
			}
		}
		snprintf(what, sizeof(what), "an apply of exactly --max-frame bytes%s",
			 round ? " after 300 chunks" : "");
		n = pack_exact(&sb, 3, false, AT_LIMIT);
		send_sb(&r, &sb);
		fx_raw_response(&r, 3, &err, &res, FX_WAIT_MS);
		if (err->type != MSGPACK_OBJECT_NIL) {
			const msgpack_object *msg = fx_obj_get(err, "message");

			FAILF("%s, which PROTOCOL.md says passes, failed with code %lld: %.*s", what,
			      (long long)fx_obj_i64(fx_obj_get(err, "code")),
			      msg ? (int)msg->via.str.size : 0, msg ? msg->via.str.ptr : "");
		}
		expect_bin_echo(res, n, what);
		msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	}
	REQUIREF(fx_status_get(&fx, "totals.workers_died") == 0, "a worker died over a frame at the limit");
	raw_ping(&r, 4, "the applies at the limit");
	fx_raw_close(&r);
	msgpack_sbuffer_destroy(&sb);
	bg_stop(&bg);
	fx_stop(&fx);
}
END_TEST

/* Nesting past 32 levels, in every shape: maps, an empty container at level
 * 33, deep inside a well-formed request, far deeper.  Each is dropped with
 * "limit" and counted under limits_hit.depth. */
START_TEST(nesting_past_the_limit)
{
	struct fx fx;
	struct bg bg;
	struct fx_raw r;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	uint64_t before;
	int cases = 0;

	fx_start(&fx, NULL);
	bg_start(&fx, &bg);
	fx_sbuf_init(&sb, &pk);
	before = limit_hits(&fx, "depth");

	for (int shape = 0; shape < 5; shape++) {
		const char *what = NULL;

		switch (shape) {
		case 0:
			what = "33 nested maps";
			for (int i = 0; i < 33; i++) {
				msgpack_pack_map(&pk, 1);
				fx_pack_str(&pk, "k");
			}
			msgpack_pack_nil(&pk);
			break;
		case 1:
			what = "32 arrays holding an empty array";
			for (int i = 0; i < 32; i++)
				msgpack_pack_array(&pk, 1);
			msgpack_pack_array(&pk, 0);
			break;
		case 2:
			what = "32 maps holding an empty map";
			for (int i = 0; i < 32; i++) {
				msgpack_pack_map(&pk, 1);
				msgpack_pack_nil(&pk);
			}
			msgpack_pack_map(&pk, 0);
			break;
		case 3:
			what = "an apply whose argument nests 31 deep (frame 33)";
			fx_req_head(&pk, 1, "apply");
			msgpack_pack_array(&pk, 2);
			fx_pack_str(&pk, "builtin.echo");
			for (int i = 0; i < 31; i++)
				msgpack_pack_array(&pk, 1);
			msgpack_pack_nil(&pk);
			break;
		case 4:
			what = "100 000 nested arrays";
			for (int i = 0; i < 100000; i++)
				msgpack_pack_array(&pk, 1);
			msgpack_pack_nil(&pk);
			break;
		}
		fx_raw_open(&fx, &r);
		(void)fx_raw_send(&r, sb.data, sb.size);
		msgpack_sbuffer_clear(&sb);
		expect_dropped(&r, MPOOL_E_LIMIT, what);
		fx_raw_close(&r);
		cases++;
	}
	REQUIREF(limit_hits(&fx, "depth") == before + (uint64_t)cases,
		 "limits_hit.depth went from %llu to %llu after %d frames too deep",
		 (unsigned long long)before, (unsigned long long)limit_hits(&fx, "depth"), cases);
	bg_stop(&bg);
	msgpack_sbuffer_destroy(&sb);
	fx_stop(&fx);
}
END_TEST

/* ---- every param of every method, wrong ------------------------------------ */

struct bad_params {
	const char *method;
	const char *params;   /* JSON */
};

/* Each answered with bad_request and nothing done: the admin methods among
 * them (terminate, drain, reload, kill_worker) must not act on malformed
 * params, and no spawn may start a process. */
static const struct bad_params bad_params[] = {
	{ "apply", "null" }, { "apply", "{}" }, { "apply", "\"builtin.echo\"" },
	{ "apply", "[null, 1]" }, { "apply", "[[\"builtin.echo\"], 1]" },
	{ "apply", "[\"builtin.echo\", 1, {\"timeout_ms\": \"100\"}]" },
	{ "apply", "[\"builtin.echo\", 1, {\"timeout_ms\": -1}]" },
	{ "apply", "[\"builtin.echo\", 1, {\"timeout_ms\": 1.5}]" },
	{ "apply", "[\"builtin.echo\", 1, {\"timeout_ms\": 86400001}]" },
	{ "apply", "[\"builtin.echo\", 1, {\"retries\": true}]" },
	{ "apply", "[\"builtin.echo\", 1, {\"retries\": -1}]" },
	{ "apply", "[\"builtin.echo\", 1, {\"chunksize\": 2}]" },
	{ "apply", "[\"builtin.echo\", 1, {\"ordered\": true}]" },
	{ "apply", "[\"builtin.echo\", 1, {\"stream\": true}]" },
	{ "apply", "[\"builtin.echo\", 1, null]" },
	{ "map", "null" }, { "map", "[\"builtin.square\"]" }, { "map", "[\"builtin.square\", {}]" },
	{ "map", "[\"builtin.square\", \"123\"]" }, { "map", "[\"builtin.square\", null]" },
	{ "map", "[1.5, [1]]" }, { "map", "[true, [1]]" },
	{ "map", "[\"builtin.square\", [1], {\"ordered\": 1}]" },
	{ "map", "[\"builtin.square\", [1], {\"ordered\": null}]" },
	{ "map", "[\"builtin.square\", [1], {\"stream\": \"yes\"}]" },
	{ "map", "[\"builtin.square\", [1], {\"timeout_ms\": 86400001}]" },
	{ "map", "[\"builtin.square\", [1], {\"timeout_ms\": [1]}]" },
	{ "map", "[\"builtin.square\", [1], {\"retries\": 4}]" },
	{ "map", "[\"builtin.square\", [1], {\"retries\": \"1\"}]" },
	{ "map", "[\"builtin.square\", [1], {\"chunksize\": 1.0}]" },
	{ "map", "[\"builtin.square\", [1], {\"chunksize\": true}]" },
	{ "map", "[\"builtin.square\", [1], {\"chunksize\": null}]" },
	{ "map", "[\"builtin.square\", [1], {\"chunksize\": 1, \"bogus\": 1}]" },
	{ "map", "[\"builtin.square\", [1], {\"chunksize\": 1}, 4]" },
	{ "map", "[\"builtin.square\", [1], null]" },
	{ "ping", "[null]" }, { "ping", "{}" }, { "ping", "null" }, { "ping", "\"x\"" },
	{ "status", "[1]" }, { "status", "{}" }, { "status", "[[]]" },
	{ "processes", "[1]" }, { "processes", "null" },
	{ "terminate", "[1]" }, { "terminate", "{}" }, { "terminate", "[null]" },
	{ "drain", "[true]" }, { "drain", "null" },
	{ "reload", "[\"now\"]" }, { "reload", "{}" },
	{ "cancel", "[]" }, { "cancel", "[\"1\"]" }, { "cancel", "[-1]" }, { "cancel", "[1.0]" },
	{ "cancel", "[null]" }, { "cancel", "[1, 2]" }, { "cancel", "[[1]]" }, { "cancel", "{}" },
	{ "kill_worker", "[]" }, { "kill_worker", "[\"1\"]" }, { "kill_worker", "[-1]" },
	{ "kill_worker", "[1.0]" }, { "kill_worker", "[true]" }, { "kill_worker", "[1, 2]" },
	{ "is_alive", "[]" }, { "is_alive", "[\"1\"]" }, { "is_alive", "[-1]" }, { "is_alive", "[1, 2]" },
	{ "terminate_process", "[]" }, { "terminate_process", "[\"1\"]" },
	{ "terminate_process", "[null]" }, { "terminate_process", "{}" },
	{ "kill_process", "[]" }, { "kill_process", "[1.5]" }, { "kill_process", "[[1]]" },
	{ "cancel_request", "[]" }, { "cancel_request", "[\"1\"]" }, { "cancel_request", "[-1]" },
	{ "cancel_request", "[1, {\"kill\": 1}]" }, { "cancel_request", "[1, {\"kill\": \"yes\"}]" },
	{ "cancel_request", "[1, {\"x\": true}]" }, { "cancel_request", "[1, []]" },
	{ "cancel_request", "[1, {\"kill\": true, \"x\": 1}]" }, { "cancel_request", "[1, {}, 3]" },
	{ "cancel_request", "[1, null]" },
	{ "spawn", "[]" }, { "spawn", "[\"builtin.echo\"]" }, { "spawn", "[7, 1]" },
	{ "spawn", "null" },
	{ "spawn", "[\"builtin.echo\", 1, {\"protocol\": 2, \"daemon\": 1}]" },
	{ "spawn", "[\"builtin.echo\", 1, {\"protocol\": 2, \"daemon\": null}]" },
	{ "spawn", "[\"builtin.echo\", 1, {\"protocol\": 2, \"name\": \"\"}]" },
	{ "spawn", "[\"builtin.echo\", 1, {\"protocol\": 2, \"name\": "
		   "\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}]" },
	{ "spawn", "[\"builtin.echo\", 1, {\"protocol\": 2, \"name\": \"a\\nb\"}]" },
	{ "spawn", "[\"builtin.echo\", 1, {\"protocol\": 2, \"name\": \"del\\u007f\"}]" },
	{ "spawn", "[\"builtin.echo\", 1, {\"protocol\": 2, \"name\": 7}]" },
	{ "spawn", "[\"builtin.echo\", 1, {\"protocol\": 2, \"x\": 1}]" },
	{ "spawn", "[\"builtin.echo\", 1, []]" },
	{ "spawn", "[\"builtin.echo\", 1, {\"protocol\": 2}, 4]" },
	{ "join", "[]" }, { "join", "[\"1\"]" }, { "join", "[-1]" }, { "join", "null" },
	{ "join", "[1, {\"timeout_ms\": \"x\"}]" }, { "join", "[1, {\"timeout_ms\": 86400001}]" },
	{ "join", "[1, {\"timeout_ms\": -1}]" }, { "join", "[1, {\"x\": 1}]" }, { "join", "[1, []]" },
	{ "join", "[1, {}, 3]" }, { "join", "[1, {\"timeout_ms\": 1, \"x\": 2}]" },
};

START_TEST(every_method_with_wrong_params)
{
	struct fx fx;
	struct bg bg;
	struct fx_raw r;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	uint64_t id = 1;
	char what[256];

	fx_start(&fx, NULL);
	bg_start(&fx, &bg);
	fx_raw_open(&fx, &r);
	fx_sbuf_init(&sb, &pk);
	for (size_t i = 0; i < sizeof(bad_params) / sizeof(bad_params[0]); i++, id++) {
		snprintf(what, sizeof(what), "%s %s", bad_params[i].method, bad_params[i].params);
		pack_req(&pk, id, bad_params[i].method, bad_params[i].params);
		send_sb(&r, &sb);
		expect_error(&r, id, MPOOL_E_BADREQ, what);
		if (i % 8 == 7)
			raw_ping(&r, 100000 + id, what);
	}

	/* Shapes JSON cannot write: option names that are not strings. */
	for (int k = 0; k < 3; k++, id++) {
		static const char *const methods[] = { "apply", "map", "spawn" };

		fx_req_head(&pk, id, methods[k]);
		msgpack_pack_array(&pk, 3);
		fx_pack_str(&pk, k == 0 ? "builtin.echo" : k == 1 ? "builtin.square" : "builtin.echo");
		if (k == 1)
			pack_json(&pk, "[1, 2]");
		else
			msgpack_pack_int64(&pk, 1);
		msgpack_pack_map(&pk, 1);
		if (k == 2) {
			msgpack_pack_bin(&pk, 6);                  /* "daemon" as bin */
			msgpack_pack_bin_body(&pk, "daemon", 6);
			msgpack_pack_true(&pk);
		} else {
			msgpack_pack_int64(&pk, 1);                /* an integer key */
			msgpack_pack_int64(&pk, 2);
		}
		send_sb(&r, &sb);
		snprintf(what, sizeof(what), "%s with an option name that is not a string", methods[k]);
		expect_error(&r, id, MPOOL_E_BADREQ, what);
	}
	raw_ping(&r, id++, "every malformed request");

	/* Nothing was done: still running, no process started. */
	REQUIREF(mpool_ping(fx.c) == 0, "%s", mpool_errmsg(fx.c));
	{
		struct fx_status st;

		fx_status(&fx, &st);
		REQUIREF(strcmp(st.state, "running") == 0, "state '%s' after malformed admin requests",
			 st.state);
		REQUIREF(st.n_workers == 2 && st.totals.workers_died == 0,
			 "the pool changed: %u workers, %llu died", st.n_workers,
			 (unsigned long long)st.totals.workers_died);
	}
	pack_req(&pk, id, "processes", "[]");
	send_sb(&r, &sb);
	{
		const msgpack_object *err, *res;

		fx_raw_response(&r, id, &err, &res, FX_WAIT_MS);
		REQUIREF(err->type == MSGPACK_OBJECT_NIL && res->type == MSGPACK_OBJECT_ARRAY &&
			 res->via.array.size == 0, "a malformed spawn started a process");
	}
	fx_raw_close(&r);
	msgpack_sbuffer_destroy(&sb);
	bg_stop(&bg);
	fx_stop(&fx);
}
END_TEST

/* Malformed feeds are notifications: nothing to answer, so the client is
 * dropped (code 1). */
START_TEST(malformed_feeds_drop_the_client)
{
	static const char *const feeds[] = {
		"[1, 7, true]", "[1, [1], 1]", "[1]", "[\"x\", [], true]", "[1, [1], true, 4]",
		"{}", "null", "[-1, [1], true]",
	};
	struct fx fx;
	struct bg bg;
	struct fx_raw r;
	msgpack_sbuffer sb;
	msgpack_packer pk;

	fx_start(&fx, NULL);
	bg_start(&fx, &bg);
	fx_sbuf_init(&sb, &pk);
	for (size_t i = 0; i < sizeof(feeds) / sizeof(feeds[0]); i++) {
		char what[96];

		snprintf(what, sizeof(what), "the feed [2, \"feed\", %s]", feeds[i]);
		fx_raw_open(&fx, &r);
		/* An open stream, so the feed's msgid could matter. */
		pack_req(&pk, 1, "map", "[\"builtin.square\", [], {\"stream\": true}]");
		send_sb(&r, &sb);
		REQUIREF(fx_raw_next(&r, FX_WAIT_MS) == 1 && note_params(&r.msg.data, "credit"),
			 "%s: no credit for the stream", what);
		msgpack_pack_array(&pk, 3);
		msgpack_pack_uint8(&pk, 2);
		fx_pack_str(&pk, "feed");
		pack_json(&pk, feeds[i]);
		(void)fx_raw_send(&r, sb.data, sb.size);
		msgpack_sbuffer_clear(&sb);
		expect_dropped(&r, MPOOL_E_BADREQ, what);
		fx_raw_close(&r);
	}
	wait_clients(&fx, 2, "every stream of a dropped client closed");
	REQUIREF(fx_status_get(&fx, "totals.jobs_active") <= 1, "the dropped clients' streams stayed open");
	msgpack_sbuffer_destroy(&sb);
	bg_stop(&bg);
	fx_stop(&fx);
}
END_TEST

/* ---- methods and names ---------------------------------------------------- */

START_TEST(unknown_methods_and_notifications)
{
	static const char *const names[] = {
		"", "PING", "ping ", " ping", "pin", "pingpong", "Apply", "maps", "feed", "result",
		"credit", "error", "run", "part", "ready", "status\n", "cancel_requests",
	};
	struct fx fx;
	struct bg bg;
	struct fx_raw r;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	uint64_t id = 1;
	char what[128];

	fx_start(&fx, NULL);
	bg_start(&fx, &bg);
	fx_raw_open(&fx, &r);
	fx_sbuf_init(&sb, &pk);
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++, id++) {
		snprintf(what, sizeof(what), "method '%s'", names[i]);
		pack_req(&pk, id, names[i], "[]");
		send_sb(&r, &sb);
		expect_error(&r, id, MPOOL_E_NOMETHOD, what);
	}
	/* Names a C string would cut short, bytes that are not UTF-8, and
	 * names far longer than any method. */
	{
		static const struct { const char *bytes; size_t len; } odd[] = {
			{ "ping\0", 5 }, { "apply\0x", 7 }, { "\0ping", 5 }, { "\xff\xfe\xc3\x28", 4 },
			{ "p\xc3\xafng", 5 }, { "ping\xed\xa0\x80", 7 },
		};
		for (size_t i = 0; i < sizeof(odd) / sizeof(odd[0]); i++, id++) {
			msgpack_pack_array(&pk, 4);
			msgpack_pack_uint8(&pk, 0);
			msgpack_pack_uint64(&pk, id);
			pack_raw_str(&pk, odd[i].bytes, odd[i].len);
			msgpack_pack_array(&pk, 0);
			send_sb(&r, &sb);
			snprintf(what, sizeof(what), "odd method name %zu", i);
			expect_error(&r, id, MPOOL_E_NOMETHOD, what);
		}
	}
	{
		const size_t lens[] = { 300, 100000 };

		for (int k = 0; k < 2; k++, id++) {
			char *name = malloc(lens[k]);

			REQUIRE(name);
			memset(name, k ? 'a' : '\xff', lens[k]);
			msgpack_pack_array(&pk, 4);
			msgpack_pack_uint8(&pk, 0);
			msgpack_pack_uint64(&pk, id);
			pack_raw_str(&pk, name, lens[k]);
			msgpack_pack_array(&pk, 0);
			free(name);
			send_sb(&r, &sb);
			snprintf(what, sizeof(what), "a method name of %zu bytes", lens[k]);
			expect_error(&r, id, MPOOL_E_NOMETHOD, what);
		}
	}
	/* A method that is no string, but the msgid is readable: bad_request. */
	msgpack_pack_array(&pk, 4);
	msgpack_pack_uint8(&pk, 0);
	msgpack_pack_uint64(&pk, id);
	msgpack_pack_bin(&pk, 4);
	msgpack_pack_bin_body(&pk, "ping", 4);
	msgpack_pack_array(&pk, 0);
	send_sb(&r, &sb);
	expect_error(&r, id++, MPOOL_E_BADREQ, "a method sent as bin");
	msgpack_pack_array(&pk, 4);
	msgpack_pack_uint8(&pk, 0);
	msgpack_pack_uint64(&pk, id);
	msgpack_pack_nil(&pk);
	msgpack_pack_array(&pk, 0);
	send_sb(&r, &sb);
	expect_error(&r, id++, MPOOL_E_BADREQ, "a nil method");
	raw_ping(&r, id++, "the unknown methods");
	fx_raw_close(&r);

	/* Notifications other than feed: nothing to answer, the client goes. */
	{
		static const char *const notes[] = { "ping", "apply", "cancel", "result", "" };

		for (size_t i = 0; i < sizeof(notes) / sizeof(notes[0]); i++) {
			snprintf(what, sizeof(what), "the notification '%s'", notes[i]);
			fx_raw_open(&fx, &r);
			msgpack_pack_array(&pk, 3);
			msgpack_pack_uint8(&pk, 2);
			fx_pack_str(&pk, notes[i]);
			pack_json(&pk, "[1]");
			(void)fx_raw_send(&r, sb.data, sb.size);
			msgpack_sbuffer_clear(&sb);
			expect_dropped(&r, MPOOL_E_BADREQ, what);
			fx_raw_close(&r);
		}
	}
	/* Message types past 2, and a request of three elements. */
	{
		static const char *const envs[] = { "[3, 1, \"ping\", []]", "[0, 1, \"ping\"]",
						    "[-1, 1, \"ping\", []]", "[0, -1, \"ping\", []]" };

		for (size_t i = 0; i < sizeof(envs) / sizeof(envs[0]); i++) {
			snprintf(what, sizeof(what), "the envelope %s", envs[i]);
			fx_raw_open(&fx, &r);
			pack_json(&pk, envs[i]);
			(void)fx_raw_send(&r, sb.data, sb.size);
			msgpack_sbuffer_clear(&sb);
			expect_dropped(&r, MPOOL_E_BADREQ, what);
			fx_raw_close(&r);
		}
	}
	msgpack_sbuffer_destroy(&sb);
	bg_stop(&bg);
	fx_stop(&fx);
}
END_TEST

static bool busy_workers(const struct fx_status *st, void *arg)
{
	return fx_count_state(st, "busy") >= *(unsigned *)arg;
}

static int64_t fifty(uint64_t i)
{
	(void)i;
	return 50;
}

static int64_t identity_sq(uint64_t i)
{
	return (int64_t)((i + 1) * (i + 1));
}

/* PROTOCOL.md: a msgid must not be reused while its request is open; any
 * request carrying it is answered with bad_request -- whatever its method
 * -- and the open request still completes, answered exactly once. */
START_TEST(msgid_reuse_against_every_method)
{
	static const struct bad_params reuses[] = {
		{ "map", "[\"builtin.square\", [1, 2]]" }, { "apply", "[\"builtin.square\", 2]" },
		{ "cancel_request", "[999]" }, { "spawn", "[\"builtin.echo\", 1, {\"protocol\": 2}]" },
		{ "join", "[1]" }, { "is_alive", "[1]" }, { "terminate_process", "[1]" },
		{ "kill_process", "[1]" }, { "processes", "[]" }, { "kill_worker", "[1]" },
		{ "cancel", "[1]" }, { "status", "[]" }, { "ping", "[]" },
		/* Admin methods too (the test runs as mpoold's user): a reused
		 * msgid must stop them before they act. */
		{ "drain", "[]" }, { "reload", "[]" }, { "terminate", "[]" },
	};
	const size_t n_reuses = sizeof(reuses) / sizeof(reuses[0]);
	struct fx fx;
	struct bg bg;
	struct fx_raw r;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	unsigned one = 1;
	uint64_t items = 0, errors = 0, proc_id;
	bool done = false;

	fx_start(&fx, NULL);
	bg_start(&fx, &bg);
	fx_raw_open(&fx, &r);
	fx_sbuf_init(&sb, &pk);

	/* An open map (40 sleeps of 50 ms, one per chunk), then every method
	 * with its msgid. */
	fx_req_head(&pk, 5, "map");
	msgpack_pack_array(&pk, 3);
	fx_pack_str(&pk, "builtin.sleep");
	msgpack_pack_array(&pk, 40);
	fx_pack_repeat(&pk, 50, 40);
	pack_json(&pk, "{\"chunksize\": 1}");
	send_sb(&r, &sb);
	fx_wait_status(&fx, busy_workers, &one, FX_WAIT_MS, "the map of sleeps running", NULL);
	for (size_t i = 0; i < n_reuses; i++)
		pack_req(&pk, 5, reuses[i].method, reuses[i].params);
	send_sb(&r, &sb);
	while (!done) {
		const msgpack_object *m, *p;

		REQUIREF(fx_raw_next(&r, FX_WAIT_MS) == 1, "EOF with msgid 5 open");
		m = &r.msg.data;
		if ((p = note_params(m, "result"))) {
			REQUIREF(fx_obj_u64(&p->via.array.ptr[0]) == 5, "a result for another msgid");
			for (uint32_t i = 0; i < p->via.array.ptr[2].via.array.size; i++, items++)
				REQUIRE(fx_obj_u64(&p->via.array.ptr[2].via.array.ptr[i]) == 50);
			continue;
		}
		REQUIREF(m->via.array.size == 4 && fx_obj_u64(&m->via.array.ptr[1]) == 5,
			 "a message that is no answer to msgid 5");
		if (m->via.array.ptr[2].type == MSGPACK_OBJECT_MAP) {
			int64_t code = error_code(&m->via.array.ptr[2], "a reused msgid");

			REQUIREF(code == MPOOL_E_BADREQ, "request %llu reusing msgid 5 (%s): code %lld, "
				 "expected bad_request", (unsigned long long)errors,
				 errors < n_reuses ? reuses[errors].method : "?", (long long)code);
			errors++;
			continue;
		}
		REQUIREF(errors == n_reuses, "the map answered before %llu of the %zu reuses were refused "
			 "(the next: %s)", (unsigned long long)errors, n_reuses,
			 errors < n_reuses ? reuses[errors].method : "?");
		REQUIREF(items == 40 && fx_obj_u64(fx_obj_get(&m->via.array.ptr[3], "items")) == 40,
			 "the map answered after %llu of 40 items", (unsigned long long)items);
		done = true;
	}
	raw_ping(&r, 5, "the map of msgid 5 ended");   /* free again */

	/* A streamed map's msgid, open while it waits for feeds. */
	pack_req(&pk, 6, "map", "[\"builtin.square\", [], {\"stream\": true}]");
	send_sb(&r, &sb);
	REQUIREF(fx_raw_next(&r, FX_WAIT_MS) == 1 && note_params(&r.msg.data, "credit"),
		 "no credit for the stream");
	pack_req(&pk, 6, "apply", "[\"builtin.square\", 2]");
	pack_req(&pk, 6, "map", "[\"builtin.square\", [3]]");
	send_sb(&r, &sb);
	for (int k = 0; k < 2; k++) {
		for (;;) {
			REQUIRE(fx_raw_next(&r, FX_WAIT_MS) == 1);
			if (!note_params(&r.msg.data, "credit"))
				break;
		}
		REQUIREF(r.msg.data.via.array.size == 4 && r.msg.data.via.array.ptr[2].type == MSGPACK_OBJECT_MAP &&
			 fx_obj_i64(fx_obj_get(&r.msg.data.via.array.ptr[2], "code")) == MPOOL_E_BADREQ,
			 "a request reusing an open stream's msgid was not refused");
	}
	msgpack_pack_array(&pk, 3);
	msgpack_pack_uint8(&pk, 2);
	fx_pack_str(&pk, "feed");
	pack_json(&pk, "[6, [1, 2, 3, 4], true]");
	send_sb(&r, &sb);
	read_map(&r, 6, 4, identity_sq, "the stream after reuses of its msgid");

	/* A join holds its msgid while it waits. */
	pack_req(&pk, 7, "spawn", "[\"builtin.sleep\", 400, {\"protocol\": 2}]");
	send_sb(&r, &sb);
	{
		const msgpack_object *err, *res;

		fx_raw_response(&r, 7, &err, &res, FX_WAIT_MS);
		REQUIREF(err->type == MSGPACK_OBJECT_NIL, "spawn failed");
		proc_id = fx_obj_u64(fx_obj_get(res, "id"));
	}
	fx_req_head(&pk, 8, "join");
	msgpack_pack_array(&pk, 1);
	msgpack_pack_uint64(&pk, proc_id);
	pack_req(&pk, 8, "ping", "[]");
	pack_req(&pk, 8, "apply", "[\"builtin.square\", 2]");
	send_sb(&r, &sb);
	expect_error(&r, 8, MPOOL_E_BADREQ, "a ping reusing the msgid of an open join");
	expect_error(&r, 8, MPOOL_E_BADREQ, "an apply reusing the msgid of an open join");
	{
		const msgpack_object *err, *res;

		fx_raw_response(&r, 8, &err, &res, FX_WAIT_MS);
		REQUIREF(err->type == MSGPACK_OBJECT_NIL && fx_obj_i64(fx_obj_get(res, "exitcode")) == 0 &&
			 fx_obj_u64(fx_obj_get(res, "result")) == 400, "the join was not answered with the process");
	}
	raw_ping(&r, 8, "the join of msgid 8 ended");
	fx_raw_close(&r);
	msgpack_sbuffer_destroy(&sb);
	bg_stop(&bg);
	fx_stop(&fx);
}
END_TEST

/* PROTOCOL.md orders an apply's or map's checks: params, draining, the
 * function and the item count come before the msgid; and a request of any
 * method, even one that does not exist, is bad_request for a msgid in use. */
START_TEST(msgid_check_in_the_documented_order)
{
	static const char *const args[] = { "--max-items", "4", NULL };
	struct fx fx;
	struct fx_raw r;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	bool done = false;

	fx_start(&fx, args);
	fx_raw_open(&fx, &r);
	fx_sbuf_init(&sb, &pk);
	/* One chunk of sleeps: no result can come before the answers below,
	 * which are written while the same bytes are read. */
	pack_req(&pk, 5, "map", "[\"builtin.sleep\", [300, 300, 300, 300], {\"chunksize\": 4}]");
	pack_req(&pk, 5, "apply", "[\"no.such_function\", 1]");
	pack_req(&pk, 5, "map", "[\"builtin.square\", [1, 2, 3, 4, 5]]");
	pack_req(&pk, 5, "apply", "[\"builtin.square\"]");
	pack_req(&pk, 5, "no_such_method", "[]");
	pack_req(&pk, 5, "apply", "[\"builtin.square\", 2]");
	send_sb(&r, &sb);
	expect_error(&r, 5, MPOOL_E_NOFUNC, "an apply of an unknown function on a msgid in use");
	expect_error(&r, 5, MPOOL_E_LIMIT, "a map past --max-items on a msgid in use");
	expect_error(&r, 5, MPOOL_E_BADREQ, "an apply with too few params on a msgid in use");
	expect_error(&r, 5, MPOOL_E_BADREQ, "an unknown method on a msgid in use");
	expect_error(&r, 5, MPOOL_E_BADREQ, "an apply on a msgid in use");
	while (!done) {
		const msgpack_object *m;

		REQUIREF(fx_raw_next(&r, FX_WAIT_MS) == 1, "EOF with the map of msgid 5 open");
		m = &r.msg.data;
		if (note_params(m, "result"))
			continue;
		REQUIREF(m->via.array.size == 4 && fx_obj_u64(&m->via.array.ptr[1]) == 5 &&
			 m->via.array.ptr[2].type == MSGPACK_OBJECT_NIL &&
			 fx_obj_u64(fx_obj_get(&m->via.array.ptr[3], "items")) == 4,
			 "the map of msgid 5 did not end with its 4 items");
		done = true;
	}
	raw_ping(&r, 5, "the map of msgid 5 ended");
	fx_raw_close(&r);
	msgpack_sbuffer_destroy(&sb);
	fx_stop(&fx);
}
END_TEST

/* chunksize: PROTOCOL.md allows 1 ... 2^32 - 1. */
START_TEST(chunksize_extremes)
{
	static const char *const bad[] = {
		"0", "-1", "-9223372036854775808", "4294967296", "18446744073709551615", "1e3",
	};
	struct fx fx;
	struct bg bg;
	struct fx_raw r;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	uint64_t id = 1;

	fx_start(&fx, NULL);
	bg_start(&fx, &bg);
	fx_raw_open(&fx, &r);
	fx_sbuf_init(&sb, &pk);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++, id++) {
		char params[128], what[96];

		/* 2^64 - 1 is beyond JSON's integers here: packed by hand. */
		if (strcmp(bad[i], "18446744073709551615") == 0) {
			fx_req_head(&pk, id, "map");
			msgpack_pack_array(&pk, 3);
			fx_pack_str(&pk, "builtin.square");
			pack_json(&pk, "[1, 2, 3]");
			msgpack_pack_map(&pk, 1);
			fx_pack_str(&pk, "chunksize");
			msgpack_pack_uint64(&pk, UINT64_MAX);
		} else {
			snprintf(params, sizeof(params), "[\"builtin.square\", [1, 2, 3], {\"chunksize\": %s}]",
				 bad[i]);
			pack_req(&pk, id, "map", params);
		}
		send_sb(&r, &sb);
		snprintf(what, sizeof(what), "chunksize %s", bad[i]);
		expect_error(&r, id, MPOOL_E_BADREQ, what);
	}
	/* The largest chunksize is fine: one chunk. */
	fx_req_head(&pk, id, "map");
	msgpack_pack_array(&pk, 3);
	fx_pack_str(&pk, "builtin.square");
	msgpack_pack_array(&pk, 100);
	fx_pack_range(&pk, 0, 100);
	msgpack_pack_map(&pk, 1);
	fx_pack_str(&pk, "chunksize");
	msgpack_pack_uint32(&pk, UINT32_MAX);
	send_sb(&r, &sb);
	read_map(&r, id++, 100, square_of_index, "chunksize 2^32 - 1");
	/* A chunksize in a wider encoding than needed (uint64 5) is still 5. */
	{
		static const uint8_t wide[] = { 0xcf, 0, 0, 0, 0, 0, 0, 0, 5 };

		fx_req_head(&pk, id, "map");
		msgpack_pack_array(&pk, 3);
		fx_pack_str(&pk, "builtin.square");
		msgpack_pack_array(&pk, 20);
		fx_pack_range(&pk, 0, 20);
		msgpack_pack_map(&pk, 1);
		fx_pack_str(&pk, "chunksize");
		msgpack_sbuffer_write(&sb, (const char *)wide, sizeof(wide));
		send_sb(&r, &sb);
		for (;;) {
			const msgpack_object *p;
			uint64_t first;
			uint32_t size;

			REQUIRE(fx_raw_next(&r, FX_WAIT_MS) == 1);
			if (!(p = note_params(&r.msg.data, "result")))
				break;
			/* Whole chunks, or pieces of one; never across two. */
			first = fx_obj_u64(&p->via.array.ptr[1]);
			size = p->via.array.ptr[2].via.array.size;
			REQUIREF(size > 0 && first / 5 == (first + size - 1) / 5,
				 "chunksize 5 sent as uint64: items %llu..%llu in one notification",
				 (unsigned long long)first, (unsigned long long)(first + size - 1));
		}
		REQUIRE(r.msg.data.via.array.ptr[2].type == MSGPACK_OBJECT_NIL);
	}
	raw_ping(&r, ++id, "the chunksizes");
	fx_raw_close(&r);
	msgpack_sbuffer_destroy(&sb);
	bg_stop(&bg);
	fx_stop(&fx);
}
END_TEST

/* A function name is bytes from a client: never matched past an embedded
 * NUL, never echoed or logged raw. */
START_TEST(function_names_that_are_not_utf8)
{
	static const struct { const char *bytes; size_t len; } names[] = {
		{ "\xff\xfe\xc3\x28" "builtin.square", 18 },
		{ "builtin.square\0", 15 },
		{ "builtin.square\0x", 16 },
		{ "builtin\0.square", 15 },
		{ "builtin.squar\xc3\xa9", 15 },
		{ "builtin.square\n", 15 },
		{ "\x1b[31mbuiltin.square", 19 },
		{ "", 0 },
		{ "builtin.", 8 },
		{ ".square", 7 },
		{ "builtin..square", 15 },
	};
	static const char *const methods[] = { "apply", "map", "spawn" };
	struct fx fx;
	struct bg bg;
	struct fx_raw r;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	uint64_t id = 1;
	static char logbuf[1 << 16];

	fx_start(&fx, NULL);
	bg_start(&fx, &bg);
	fx_raw_open(&fx, &r);
	fx_sbuf_init(&sb, &pk);
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]) + 1; i++) {
		const char *bytes = i < sizeof(names) / sizeof(names[0]) ? names[i].bytes : NULL;
		size_t len = bytes ? names[i].len : 65536;
		char *big = NULL;

		if (!bytes) {
			/* 64 KiB of continuation bytes. */
			big = malloc(len);
			REQUIRE(big);
			memset(big, 0x80, len);
			bytes = big;
		}
		for (int k = 0; k < 3; k++, id++) {
			char what[96];

			fx_req_head(&pk, id, methods[k]);
			msgpack_pack_array(&pk, k == 2 ? 3 : 2);
			pack_raw_str(&pk, bytes, len);
			if (k == 1)
				pack_json(&pk, "[1, 2, 3]");
			else
				msgpack_pack_int64(&pk, 3);
			if (k == 2)
				pack_json(&pk, "{\"protocol\": 2}");
			send_sb(&r, &sb);
			snprintf(what, sizeof(what), "%s of function name %zu (%zu bytes)", methods[k], i, len);
			expect_error(&r, id, MPOOL_E_NOFUNC, what);
		}
		free(big);
	}
	raw_ping(&r, id, "the odd function names");
	/* Nothing raw reached the log either. */
	fx_log_tail(&fx, logbuf, sizeof(logbuf));
	for (size_t i = 0; logbuf[i]; i++) {
		unsigned char ch = (unsigned char)logbuf[i];

		REQUIREF(ch == '\n' || (ch >= 0x20 && ch < 0x7f),
			 "byte 0x%02x in mpoold's log at %zu: a client's bytes were logged raw", ch, i);
	}
	fx_raw_close(&r);
	msgpack_sbuffer_destroy(&sb);
	bg_stop(&bg);
	fx_stop(&fx);
}
END_TEST

/* ---- a client that floods without reading ---------------------------------- */

static bool backlogged(struct fx *fx)
{
	return limit_hits(fx, "backlog") > 0;
}

/* 100 000 pipelined requests (status, whose answers are large, and pings)
 * from a client that does not read: mpoold must stop reading it once its
 * unread output passes the high-water mark -- memory bounded, limits_hit.
 * backlog counted, everyone else served -- and answer every request, in
 * order, once the client reads. */
START_TEST(flood_without_reading)
{
	enum { N = 100000 };
	struct fx fx;
	struct bg bg;
	struct fx_raw r;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	size_t sent = 0;
	uint64_t answered = 0;
	int64_t stall_since = -1, end;
	long rss, peak = 0;

	fx_start(&fx, NULL);
	bg_start(&fx, &bg);
	fx_sbuf_init(&sb, &pk);
	for (uint64_t i = 0; i < N; i++) {
		fx_req_head(&pk, i, i % 4 == 0 ? "status" : "ping");
		msgpack_pack_array(&pk, 0);
	}
	fx_raw_open(&fx, &r);

	/* Send without reading until mpoold stops taking bytes for 300 ms. */
	end = fx_now_ms() + FX_WAIT_MS;
	while (sent < sb.size) {
		ssize_t n = send(r.fd, sb.data + sent, sb.size - sent, MSG_NOSIGNAL | MSG_DONTWAIT);

		if (n > 0) {
			sent += (size_t)n;
			stall_since = -1;
			continue;
		}
		REQUIREF(n < 0 && (errno == EAGAIN || errno == EINTR), "send: %s", strerror(errno));
		if (stall_since < 0)
			stall_since = fx_now_ms();
		if (fx_now_ms() - stall_since >= 300 && backlogged(&fx))
			break;
		REQUIREF(fx_now_ms() < end, "mpoold neither took the flood nor counted a backlog");
		fx_tick();
	}
	REQUIREF(sent < sb.size, "mpoold took all %zu bytes of 100 000 requests from a client "
		 "that reads nothing", sb.size);
	rss = fx_rss_kib(fx.pid);
	fprintf(stderr, "flood_without_reading: mpoold stopped reading after %zu of %zu bytes; "
		"VmRSS %ld KiB; limits_hit.backlog %llu\n", sent, sb.size, rss,
		(unsigned long long)limit_hits(&fx, "backlog"));
	REQUIREF(rss > 0 && rss < 128 * 1024 + RSS_SLACK_KIB, "mpoold's VmRSS is %ld KiB with a flooding "
		 "client", rss);
	/* Others are served meanwhile. */
	{
		int64_t t0 = fx_now_ms();

		REQUIREF(mpool_ping(fx.c) == 0, "%s", mpool_errmsg(fx.c));
		REQUIREF(fx_now_ms() - t0 < 2000, "a ping took %lld ms during the flood",
			 (long long)(fx_now_ms() - t0));
	}

	/* Now read everything while sending the rest: each answered, in order. */
	end = fx_now_ms() + 50000;
	while (answered < N) {
		const msgpack_object *m;

		if (sent < sb.size) {
			ssize_t n = send(r.fd, sb.data + sent, sb.size - sent, MSG_NOSIGNAL | MSG_DONTWAIT);

			if (n > 0)
				sent += (size_t)n;
		}
		/* Parse whatever is buffered; read when needed. */
		if (msgpack_unpacker_next(&r.up, &r.msg) != MSGPACK_UNPACK_SUCCESS) {
			struct pollfd pfd = { r.fd, POLLIN, 0 };
			ssize_t n;

			REQUIREF(fx_now_ms() < end, "only %llu of %d answers", (unsigned long long)answered, N);
			if (poll(&pfd, 1, 10) <= 0)
				continue;
			REQUIRE(msgpack_unpacker_reserve_buffer(&r.up, 1 << 16));
			n = recv(r.fd, msgpack_unpacker_buffer(&r.up), 1 << 16, 0);
			REQUIREF(n > 0, "the flooding client lost its connection after %llu answers",
				 (unsigned long long)answered);
			msgpack_unpacker_buffer_consumed(&r.up, (size_t)n);
			continue;
		}
		m = &r.msg.data;
		REQUIREF(m->type == MSGPACK_OBJECT_ARRAY && m->via.array.size == 4 &&
			 m->via.array.ptr[2].type == MSGPACK_OBJECT_NIL, "answer %llu is not a success",
			 (unsigned long long)answered);
		REQUIREF(fx_obj_u64(&m->via.array.ptr[1]) == answered, "answer %llu carries msgid %llu",
			 (unsigned long long)answered, (unsigned long long)m->via.array.ptr[1].via.u64);
		answered++;
		if (answered % 10000 == 0 && (rss = fx_rss_kib(fx.pid)) > peak)
			peak = rss;
	}
	REQUIREF(peak < 128 * 1024 + RSS_SLACK_KIB, "mpoold's VmRSS reached %ld KiB while the flood drained",
		 peak);
	raw_ping(&r, N, "the flood");
	fx_raw_close(&r);
	msgpack_sbuffer_destroy(&sb);
	bg_stop(&bg);
	fx_stop(&fx);
}
END_TEST

/* ---- --max-queued-chunks ----------------------------------------------------- */

static bool queued_at_least(const struct fx_status *st, void *arg)
{
	return st->totals.chunks_queued >= *(uint64_t *)arg;
}

/* A map that would queue more chunks than --max-queued-chunks, counting
 * every job's queued chunks, gets "limit"; a smaller one passes. */
START_TEST(max_queued_chunks_refuses_maps)
{
	static const char *const args[] = { "--max-queued-chunks", "100", NULL };
	struct fx fx;
	struct bg bg;
	struct fx_raw r;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	uint64_t before, sixty = 60;

	fx_start(&fx, args);
	bg_start(&fx, &bg);
	fx_raw_open(&fx, &r);
	fx_sbuf_init(&sb, &pk);
	before = limit_hits(&fx, "queued_chunks");

	/* Alone, 101 chunks are too many. */
	fx_req_head(&pk, 1, "map");
	msgpack_pack_array(&pk, 3);
	fx_pack_str(&pk, "builtin.square");
	msgpack_pack_array(&pk, 101);
	fx_pack_range(&pk, 0, 101);
	pack_json(&pk, "{\"chunksize\": 1}");
	send_sb(&r, &sb);
	expect_error(&r, 1, MPOOL_E_LIMIT, "a map of 101 chunks with --max-queued-chunks 100");

	/* 80 slow chunks queue up; 60 more would pass 100 with them. */
	fx_req_head(&pk, 2, "map");
	msgpack_pack_array(&pk, 3);
	fx_pack_str(&pk, "builtin.sleep");
	msgpack_pack_array(&pk, 80);
	fx_pack_repeat(&pk, 300, 80);
	pack_json(&pk, "{\"chunksize\": 1}");
	send_sb(&r, &sb);
	fx_wait_status(&fx, queued_at_least, &sixty, FX_WAIT_MS, "the slow map's chunks queued", NULL);
	fx_req_head(&pk, 3, "map");
	msgpack_pack_array(&pk, 3);
	fx_pack_str(&pk, "builtin.square");
	msgpack_pack_array(&pk, 60);
	fx_pack_range(&pk, 0, 60);
	pack_json(&pk, "{\"chunksize\": 1}");
	send_sb(&r, &sb);
	expect_error(&r, 3, MPOOL_E_LIMIT, "60 chunks on top of 60 or more queued, limit 100");
	REQUIREF(limit_hits(&fx, "queued_chunks") == before + 2, "limits_hit.queued_chunks is %llu, "
		 "expected %llu", (unsigned long long)limit_hits(&fx, "queued_chunks"),
		 (unsigned long long)(before + 2));
	/* Fewer chunks fit. */
	fx_req_head(&pk, 4, "map");
	msgpack_pack_array(&pk, 3);
	fx_pack_str(&pk, "builtin.square");
	msgpack_pack_array(&pk, 60);
	fx_pack_range(&pk, 0, 60);
	pack_json(&pk, "{\"chunksize\": 30}");
	send_sb(&r, &sb);
	read_map(&r, 4, 60, square_of_index, "a map of 2 chunks beside 80 queued");
	/* The slow map goes; the connection stays fine. */
	pack_req(&pk, 5, "cancel_request", "[2, {\"kill\": true}]");
	send_sb(&r, &sb);
	for (int got = 0; got < 2;) {
		REQUIRE(fx_raw_next(&r, FX_WAIT_MS) == 1);
		if (note_params(&r.msg.data, "result"))
			continue;
		got++;
	}
	raw_ping(&r, 6, "the refused maps");
	fx_raw_close(&r);
	msgpack_sbuffer_destroy(&sb);
	bg_stop(&bg);
	fx_stop(&fx);
}
END_TEST

/* A client of another uid: queues a map of `queue` one-item chunks (0:
 * none), then asks for one chunk more and must be refused with "limit" and
 * a message holding `needle`.  Then it tells the test (ready) and keeps its
 * connection, and so its queued chunks, until the test closes `hold`. */
struct uid_client {
	struct fx *fx;
	uid_t uid;
	uint32_t queue;
	const char *needle;
	int ready[2], hold[2];
};

static void pack_sleep_map(msgpack_packer *pk, uint64_t msgid, uint32_t n, int64_t ms)
{
	fx_req_head(pk, msgid, "map");
	msgpack_pack_array(pk, 3);
	fx_pack_str(pk, "builtin.sleep");
	msgpack_pack_array(pk, n);
	fx_pack_repeat(pk, ms, n);
	pack_json(pk, "{\"chunksize\": 1}");
}

static int queue_as_uid(void *arg)
{
	struct uid_client *u = arg;
	const msgpack_object *err, *res, *msg;
	struct fx_raw r;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	char b;

	close(u->ready[0]);
	close(u->hold[1]);
	if (setgroups(0, NULL) < 0 || setgid(u->uid) < 0 || setuid(u->uid) < 0) {
		fprintf(stderr, "cannot become uid %u: %s\n", (unsigned)u->uid, strerror(errno));
		return 10;
	}
	/* A change of credentials clears it. */
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	fx_raw_open(u->fx, &r);
	fx_sbuf_init(&sb, &pk);
	if (u->queue)
		pack_sleep_map(&pk, 1, u->queue, 0);
	pack_sleep_map(&pk, 2, 1, 0);
	send_sb(&r, &sb);
	/* The first map waits for the busy worker: the refusal comes first. */
	fx_raw_response(&r, 2, &err, &res, FX_WAIT_MS);
	msg = err->type == MSGPACK_OBJECT_MAP ? fx_obj_get(err, "message") : NULL;
	if (!msg || fx_obj_i64(fx_obj_get(err, "code")) != MPOOL_E_LIMIT ||
	    !memmem(msg->via.str.ptr, msg->via.str.size, u->needle, strlen(u->needle))) {
		fprintf(stderr, "uid %u: one chunk past %u was not refused with '%s'%s%.*s\n",
			(unsigned)u->uid, u->queue, u->needle, msg ? ": " : "",
			msg ? (int)msg->via.str.size : 0, msg ? msg->via.str.ptr : "");
		return 11;
	}
	if (write(u->ready[1], "r", 1) != 1)
		return 12;
	while (read(u->hold[0], &b, 1) > 0)
		;
	msgpack_sbuffer_destroy(&sb);
	fx_raw_close(&r);
	return 0;
}

/* status.queue.by_uid: the chunks uid has queued, 0 when it is not listed. */
static uint64_t queued_by_uid(struct fx *fx, uid_t uid)
{
	const msgpack_object *q, *by;
	mpool_value *v = NULL;
	uint64_t n = 0;

	REQUIRE(mpool_status(fx->c, &v) == 0);
	q = fx_obj_get(mpool_value_get(v), "queue");
	by = q ? fx_obj_get(q, "by_uid") : NULL;
	REQUIREF(by && by->type == MSGPACK_OBJECT_ARRAY, "status has no queue.by_uid array");
	for (uint32_t i = 0; i < by->via.array.size; i++)
		if (fx_obj_u64(fx_obj_get(&by->via.array.ptr[i], "uid")) == uid)
			n = fx_obj_u64(fx_obj_get(&by->via.array.ptr[i], "chunks"));
	mpool_value_free(v);
	return n;
}

static pid_t uid_client_start(struct fx *fx, struct uid_client *u, uid_t uid, uint32_t queue,
			      const char *needle)
{
	pid_t pid;
	char b;

	u->fx = fx;
	u->uid = uid;
	u->queue = queue;
	u->needle = needle;
	REQUIRE(pipe2(u->ready, O_CLOEXEC) == 0 && pipe2(u->hold, O_CLOEXEC) == 0);
	pid = fx_fork(queue_as_uid, u);
	close(u->ready[1]);
	close(u->hold[0]);
	REQUIREF(read(u->ready[0], &b, 1) == 1, "the uid %u client failed (see its stderr)",
		 (unsigned)uid);
	close(u->ready[0]);
	return pid;
}

static void uid_client_stop(struct uid_client *u, pid_t pid)
{
	close(u->hold[1]);
	fx_expect_child_ok(pid, FX_WAIT_MS, "a client of another uid");
}

/* One uid that is no admin may queue its share of --max-queued-chunks and
 * no more, and no such uid may take the part kept for admins: one user's
 * huge map no longer makes everyone else's requests fail with "limit". */
START_TEST(queued_chunks_are_shared_per_uid)
{
	static const char *const args[] = {
		"--workers", "1", "--socket-mode", "0666", "--max-queued-chunks", "100",
		"--max-queued-chunks-per-uid", "50", "--admin-queued-chunks", "20", NULL };
	struct uid_client a, b;
	struct fx fx;
	struct fx_raw r;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	pid_t pa, pb;
	unsigned one = 1;

	if (geteuid() != 0) {
		fprintf(stderr, "queued_chunks_are_shared_per_uid: skipped, needs root\n");
		return;
	}
	fx_start(&fx, args);
	REQUIREF(chmod(fx.dir, 0711) == 0, "chmod %s: %s", fx.dir, strerror(errno));
	fx_raw_open(&fx, &r);
	fx_sbuf_init(&sb, &pk);
	/* Root keeps the only worker busy, so every chunk below stays queued. */
	pack_req(&pk, 1, "apply", "[\"builtin.sleep\", 10000]");
	send_sb(&r, &sb);
	fx_wait_status(&fx, busy_workers, &one, FX_WAIT_MS, "the worker busy", NULL);

	/* 65534 queues its share, 50 chunks; a 51st is refused. */
	pa = uid_client_start(&fx, &a, 65534, 50, "--max-queued-chunks-per-uid");
	REQUIRE(fx_status_get(&fx, "totals.chunks_queued") == 50);
	REQUIRE(fx_status_get(&fx, "queue.max_chunks_per_uid") == 50);
	REQUIRE(fx_status_get(&fx, "queue.admin_chunks") == 20);
	REQUIRE(queued_by_uid(&fx, 65534) == 50);
	/* Another such uid has a share of its own: 30 more pass (80, all that
	 * is open to them); one more would be the admins' part. */
	pb = uid_client_start(&fx, &b, 65533, 30, "kept for admins");
	REQUIRE(fx_status_get(&fx, "totals.chunks_queued") == 80);
	REQUIRE(queued_by_uid(&fx, 65533) == 30 && queued_by_uid(&fx, 65534) == 50);
	/* Root, an admin, may fill the rest. */
	pack_sleep_map(&pk, 2, 20, 0);
	send_sb(&r, &sb);
	pack_req(&pk, 3, "ping", "[]");
	send_sb(&r, &sb);
	{
		const msgpack_object *err, *res;

		fx_raw_response(&r, 3, &err, &res, FX_WAIT_MS);
	}
	REQUIREF(fx_status_get(&fx, "totals.chunks_queued") == 100,
		 "root's 30 chunks were refused: %llu queued",
		 (unsigned long long)fx_status_get(&fx, "totals.chunks_queued"));
	/* b first: it inherited a's end of a's hold pipe. */
	uid_client_stop(&b, pb);
	uid_client_stop(&a, pa);
	fx_raw_close(&r);
	msgpack_sbuffer_destroy(&sb);
	fx_stop(&fx);
}
END_TEST

/* The limit counts chunks queued by any job: a streamed map's feeds queue
 * chunks too, and may not pile up past it any more than a map's items. */
START_TEST(max_queued_chunks_bounds_streams)
{
	static const char *const args[] = { "--max-queued-chunks", "100", "--workers", "1", NULL };
	struct fx fx;
	struct fx_raw r, slow;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	uint64_t credit, fed = 0, peak = 0;
	unsigned one = 1;
	bool failed = false;

	fx_start(&fx, args);
	fx_sbuf_init(&sb, &pk);
	/* Keep the only worker busy so fed chunks stay queued. */
	fx_raw_open(&fx, &slow);
	pack_req(&pk, 1, "apply", "[\"builtin.sleep\", 3000]");
	send_sb(&slow, &sb);
	fx_wait_status(&fx, busy_workers, &one, FX_WAIT_MS, "the worker busy", NULL);

	fx_raw_open(&fx, &r);
	pack_req(&pk, 1, "map", "[\"builtin.square\", [], {\"stream\": true, \"chunksize\": 1}]");
	send_sb(&r, &sb);
	REQUIREF(fx_raw_next(&r, FX_WAIT_MS) == 1 && note_params(&r.msg.data, "credit"), "no credit");
	credit = fx_obj_u64(&note_params(&r.msg.data, "credit")->via.array.ptr[1]);
	/* Feed 10 items at a time, up to 500, within the credit. */
	while (fed < 500 && fed + 10 <= credit && !failed) {
		struct pollfd pfd = { r.fd, POLLIN, 0 };
		uint64_t q;

		msgpack_pack_array(&pk, 3);
		msgpack_pack_uint8(&pk, 2);
		fx_pack_str(&pk, "feed");
		msgpack_pack_array(&pk, 3);
		msgpack_pack_uint64(&pk, 1);
		msgpack_pack_array(&pk, 10);
		fx_pack_range(&pk, (int64_t)fed, 10);
		msgpack_pack_false(&pk);
		if (fx_raw_send(&r, sb.data, sb.size) < 0)
			break;
		msgpack_sbuffer_clear(&sb);
		fed += 10;
		q = fx_status_get(&fx, "totals.chunks_queued");
		if (q > peak)
			peak = q;
		/* A refusal (the map failing with "limit") is a fine answer. */
		while (poll(&pfd, 1, 0) > 0 && fx_raw_next(&r, FX_WAIT_MS) == 1)
			if (!note_params(&r.msg.data, "credit") && !note_params(&r.msg.data, "result"))
				failed = true;
	}
	fprintf(stderr, "max_queued_chunks_bounds_streams: fed %llu one-item chunks, chunks_queued "
		"peaked at %llu (limit 100), the map %s\n", (unsigned long long)fed,
		(unsigned long long)peak, failed ? "was refused" : "went on");
	REQUIREF(peak <= 100, "a streamed map queued %llu chunks past --max-queued-chunks 100 "
		 "(the limit is checked only against the request's first part, never against feeds)",
		 (unsigned long long)peak);
	fx_raw_close(&r);
	fx_raw_close(&slow);
	msgpack_sbuffer_destroy(&sb);
	fx_stop(&fx);
}
END_TEST

/* ---- limits are counted, and say which ---------------------------------------- */

static void pack_deep(msgpack_packer *pk, int depth)
{
	for (int i = 0; i < depth; i++)
		msgpack_pack_array(pk, 1);
	msgpack_pack_nil(pk);
}

/* Every limit a client can hit is answered with "limit", counted in status
 * under its name, and its message names the limit that applies. */
START_TEST(every_limit_is_counted)
{
	static const char *const args[] = {
		"--max-items", "20000", "--max-jobs", "2", "--max-clients", "3", "--stream-window", "100",
		NULL,
	};
	struct fx fx;
	struct bg bg;
	struct fx_raw r, extra;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	uint64_t depth0, items0, jobs0, clients0;
	const msgpack_object *err, *res;

	fx_start(&fx, args);
	bg_start(&fx, &bg);
	fx_raw_open(&fx, &r);
	fx_sbuf_init(&sb, &pk);
	depth0 = limit_hits(&fx, "depth");
	items0 = limit_hits(&fx, "items");
	jobs0 = limit_hits(&fx, "jobs");
	clients0 = limit_hits(&fx, "clients");

	/* Arguments nested past 29 levels: apply and spawn alike. */
	fx_req_head(&pk, 1, "apply");
	msgpack_pack_array(&pk, 2);
	fx_pack_str(&pk, "builtin.echo");
	pack_deep(&pk, 30);
	send_sb(&r, &sb);
	expect_error(&r, 1, MPOOL_E_LIMIT, "an apply argument 30 deep");
	REQUIREF(limit_hits(&fx, "depth") == depth0 + 1, "an apply argument too deep was not counted");

	/* Items: a map past --max-items. */
	fx_req_head(&pk, 3, "map");
	msgpack_pack_array(&pk, 2);
	fx_pack_str(&pk, "builtin.square");
	msgpack_pack_array(&pk, 20001);
	fx_pack_range(&pk, 0, 20001);
	send_sb(&r, &sb);
	fx_raw_response(&r, 3, &err, &res, FX_WAIT_MS);
	REQUIREF(err->type == MSGPACK_OBJECT_MAP && error_code(err, "20001 items") == MPOOL_E_LIMIT,
		 "a map of 20001 items with --max-items 20000 was not refused with limit");
	REQUIREF(limit_hits(&fx, "items") == items0 + 1, "limits_hit.items is %llu, expected %llu",
		 (unsigned long long)limit_hits(&fx, "items"), (unsigned long long)(items0 + 1));

	/* Jobs: a third open request with --max-jobs 2. */
	pack_req(&pk, 5, "apply", "[\"builtin.sleep\", 200]");
	pack_req(&pk, 6, "apply", "[\"builtin.sleep\", 200]");
	pack_req(&pk, 7, "apply", "[\"builtin.sleep\", 200]");
	send_sb(&r, &sb);
	expect_error(&r, 7, MPOOL_E_LIMIT, "a third open request with --max-jobs 2");
	for (int i = 0; i < 2; i++)
		REQUIRE(fx_raw_next(&r, FX_WAIT_MS) == 1);
	REQUIREF(limit_hits(&fx, "jobs") == jobs0 + 1, "limits_hit.jobs is %llu, expected %llu",
		 (unsigned long long)limit_hits(&fx, "jobs"), (unsigned long long)(jobs0 + 1));

	/* Clients: control, healthy and r make 3; a fourth is turned away. */
	fx_raw_open(&fx, &extra);
	expect_dropped(&extra, MPOOL_E_LIMIT, "a client past --max-clients 3");
	fx_raw_close(&extra);
	REQUIREF(limit_hits(&fx, "clients") == clients0 + 1, "limits_hit.clients is %llu, expected %llu",
		 (unsigned long long)limit_hits(&fx, "clients"), (unsigned long long)(clients0 + 1));

	/* A spawn's argument is held to the same depth as an apply's. */
	fx_req_head(&pk, 2, "spawn");
	msgpack_pack_array(&pk, 3);
	fx_pack_str(&pk, "builtin.echo");
	pack_deep(&pk, 30);
	pack_json(&pk, "{\"protocol\": 2}");
	send_sb(&r, &sb);
	expect_error(&r, 2, MPOOL_E_LIMIT, "a spawn argument 30 deep");
	REQUIREF(limit_hits(&fx, "depth") == depth0 + 2,
		 "a spawn argument nested past 29 levels was refused with 'limit' but not counted in "
		 "limits_hit.depth (%llu, expected %llu)", (unsigned long long)limit_hits(&fx, "depth"),
		 (unsigned long long)(depth0 + 2));
	raw_ping(&r, 8, "every limit");
	fx_raw_close(&r);
	msgpack_sbuffer_destroy(&sb);
	bg_stop(&bg);
	fx_stop(&fx);
}
END_TEST

/* PROTOCOL.md, Streamed input: a stream's first part holds at most
 * --stream-window items; past it, "limit", counted under items, with a
 * message that names the window (not --max-items). */
START_TEST(stream_first_part_past_the_window)
{
	static const char *const args[] = { "--stream-window", "100", NULL };
	struct fx fx;
	struct bg bg;
	struct fx_raw r;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	const msgpack_object *err, *res, *msg;
	uint64_t items0;

	fx_start(&fx, args);
	bg_start(&fx, &bg);
	fx_raw_open(&fx, &r);
	fx_sbuf_init(&sb, &pk);
	items0 = limit_hits(&fx, "items");
	fx_req_head(&pk, 4, "map");
	msgpack_pack_array(&pk, 3);
	fx_pack_str(&pk, "builtin.square");
	msgpack_pack_array(&pk, 101);
	fx_pack_range(&pk, 0, 101);
	pack_json(&pk, "{\"stream\": true}");
	send_sb(&r, &sb);
	fx_raw_response(&r, 4, &err, &res, FX_WAIT_MS);
	REQUIREF(err->type == MSGPACK_OBJECT_MAP && error_code(err, "101 items") == MPOOL_E_LIMIT,
		 "a stream whose first part holds 101 items with --stream-window 100 was not refused");
	REQUIREF(limit_hits(&fx, "items") == items0 + 1, "limits_hit.items is %llu, expected %llu",
		 (unsigned long long)limit_hits(&fx, "items"), (unsigned long long)(items0 + 1));
	msg = fx_obj_get(err, "message");
	REQUIREF(memmem(msg->via.str.ptr, msg->via.str.size, "100", 3) &&
		 !memmem(msg->via.str.ptr, msg->via.str.size, "16777216", 8),
		 "the refusal of a stream's first part past --stream-window 100 names the wrong "
		 "limit: '%.*s'", (int)msg->via.str.size, msg->via.str.ptr);
	/* 100 is fine. */
	fx_req_head(&pk, 5, "map");
	msgpack_pack_array(&pk, 3);
	fx_pack_str(&pk, "builtin.square");
	msgpack_pack_array(&pk, 100);
	fx_pack_range(&pk, 0, 100);
	pack_json(&pk, "{\"stream\": true}");
	msgpack_pack_array(&pk, 3);
	msgpack_pack_uint8(&pk, 2);
	fx_pack_str(&pk, "feed");
	pack_json(&pk, "[5, [], true]");
	send_sb(&r, &sb);
	read_map(&r, 5, 100, square_of_index, "a stream whose first part fills the window");
	fx_raw_close(&r);
	msgpack_sbuffer_destroy(&sb);
	bg_stop(&bg);
	fx_stop(&fx);
}
END_TEST

/* A join is an open request too: it holds its msgid (and a timer) until
 * the process ends.  One connection must not be able to open them without
 * bound -- --max-jobs caps open requests per connection -- or every new
 * request on it pays for a scan of all of them. */
START_TEST(joins_count_against_max_jobs)
{
	enum { JOINS = 3000, MAX_JOBS = 1024 };
	struct fx fx;
	struct bg bg;
	struct fx_raw r;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	const msgpack_object *err, *res;
	uint64_t proc_id, limited = 0, other = 0;

	fx_start(&fx, NULL);
	bg_start(&fx, &bg);
	fx_raw_open(&fx, &r);
	fx_sbuf_init(&sb, &pk);
	pack_req(&pk, 1, "spawn", "[\"builtin.sleep\", 60000, {\"protocol\": 2}]");
	send_sb(&r, &sb);
	fx_raw_response(&r, 1, &err, &res, FX_WAIT_MS);
	REQUIREF(err->type == MSGPACK_OBJECT_NIL, "spawn failed");
	proc_id = fx_obj_u64(fx_obj_get(res, "id"));
	for (uint64_t i = 0; i < JOINS; i++) {
		fx_req_head(&pk, 10 + i, "join");
		msgpack_pack_array(&pk, 2);
		msgpack_pack_uint64(&pk, proc_id);
		pack_json(&pk, "{\"timeout_ms\": 86400000}");
	}
	pack_req(&pk, 2, "ping", "[]");
	send_sb(&r, &sb);
	/* Until the pong: joins past the limit are answered at once. */
	for (;;) {
		const msgpack_object *m;

		REQUIREF(fx_raw_next(&r, FX_WAIT_MS) == 1, "EOF after the joins");
		m = &r.msg.data;
		REQUIRE(m->type == MSGPACK_OBJECT_ARRAY && m->via.array.size == 4);
		if (fx_obj_u64(&m->via.array.ptr[1]) == 2)
			break;
		if (m->via.array.ptr[2].type == MSGPACK_OBJECT_MAP &&
		    error_code(&m->via.array.ptr[2], "a join") == MPOOL_E_LIMIT)
			limited++;
		else
			other++;
	}
	fprintf(stderr, "joins_count_against_max_jobs: %d joins on one connection: %llu refused with "
		"limit, %llu answered otherwise, the rest held open\n", JOINS,
		(unsigned long long)limited, (unsigned long long)other);
	REQUIREF(limited >= JOINS - MAX_JOBS,
		 "%llu of %d joins on one connection were refused: mpoold holds %llu open joins, "
		 "past --max-jobs %d (limits_hit.jobs %llu)", (unsigned long long)limited, JOINS,
		 (unsigned long long)(JOINS - limited - other), MAX_JOBS,
		 (unsigned long long)limit_hits(&fx, "jobs"));
	fx_raw_close(&r);
	msgpack_sbuffer_destroy(&sb);
	bg_stop(&bg);
	fx_stop(&fx);
}
END_TEST

/* ---- streamed input abuse -------------------------------------------------- */

START_TEST(feeds_out_of_place)
{
	struct fx fx;
	struct bg bg;
	struct fx_raw r;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	const msgpack_object *p;
	uint64_t credit;

	fx_start(&fx, NULL);
	bg_start(&fx, &bg);
	fx_raw_open(&fx, &r);
	fx_sbuf_init(&sb, &pk);
#define FEED(json) do { \
	msgpack_pack_array(&pk, 3); \
	msgpack_pack_uint8(&pk, 2); \
	fx_pack_str(&pk, "feed"); \
	pack_json(&pk, json); \
} while (0)

	/* For a msgid nothing uses, and for 2^64 - 1: dropped, silently. */
	FEED("[77, [1, 2, 3], true]");
	FEED("[9223372036854775807, [1], false]");
	send_sb(&r, &sb);
	raw_ping(&r, 1, "feeds for unknown msgids");

	/* For a map that is no stream: dropped; the map completes unchanged. */
	fx_req_head(&pk, 2, "map");
	msgpack_pack_array(&pk, 3);
	fx_pack_str(&pk, "builtin.sleep");
	msgpack_pack_array(&pk, 6);
	fx_pack_repeat(&pk, 50, 6);
	pack_json(&pk, "{\"chunksize\": 1}");
	FEED("[2, [50, 50, 50], true]");
	send_sb(&r, &sb);
	read_map(&r, 2, 6, fifty, "a map fed as if it were a stream");

	/* Beyond the credit: the map fails with bad_request. */
	pack_req(&pk, 3, "map", "[\"builtin.square\", [], {\"stream\": true}]");
	send_sb(&r, &sb);
	REQUIRE(fx_raw_next(&r, FX_WAIT_MS) == 1);
	p = note_params(&r.msg.data, "credit");
	REQUIREF(p, "no credit after a stream request");
	credit = fx_obj_u64(&p->via.array.ptr[1]);
	msgpack_pack_array(&pk, 3);
	msgpack_pack_uint8(&pk, 2);
	fx_pack_str(&pk, "feed");
	msgpack_pack_array(&pk, 3);
	msgpack_pack_uint64(&pk, 3);
	msgpack_pack_array(&pk, (uint32_t)(credit + 1));
	fx_pack_range(&pk, 0, credit + 1);
	msgpack_pack_false(&pk);
	send_sb(&r, &sb);
	for (;;) {
		REQUIRE(fx_raw_next(&r, FX_WAIT_MS) == 1);
		if (note_params(&r.msg.data, "result") || note_params(&r.msg.data, "credit"))
			continue;
		break;
	}
	REQUIREF(r.msg.data.via.array.size == 4 && fx_obj_u64(&r.msg.data.via.array.ptr[1]) == 3 &&
		 r.msg.data.via.array.ptr[2].type == MSGPACK_OBJECT_MAP &&
		 error_code(&r.msg.data.via.array.ptr[2], "feed beyond credit") == MPOOL_E_BADREQ,
		 "a feed beyond the credit did not fail the map with bad_request");
	/* A late feed for that failed stream: dropped. */
	FEED("[3, [1], true]");
	send_sb(&r, &sb);
	raw_ping(&r, 4, "a feed for a failed stream");

	/* After the end: the stream is no longer open; its later feeds drop. */
	pack_req(&pk, 5, "map", "[\"builtin.square\", [0, 1], {\"stream\": true}]");
	FEED("[5, [2], true]");
	FEED("[5, [3, 4], true]");
	FEED("[5, [], true]");
	send_sb(&r, &sb);
	read_map(&r, 5, 3, square_of_index, "a stream with feeds after its end");
	raw_ping(&r, 6, "feeds after a stream's end");

	/* An end with no items needs no credit; a cancelled stream drops feeds. */
	pack_req(&pk, 7, "map", "[\"builtin.square\", [0], {\"stream\": true}]");
	pack_req(&pk, 8, "cancel_request", "[7]");
	FEED("[7, [1, 2], true]");
	send_sb(&r, &sb);
	for (int got = 0; got < 2;) {
		const msgpack_object *m;

		REQUIRE(fx_raw_next(&r, FX_WAIT_MS) == 1);
		m = &r.msg.data;
		if (note_params(m, "result") || note_params(m, "credit"))
			continue;
		REQUIRE(m->via.array.size == 4);
		if (fx_obj_u64(&m->via.array.ptr[1]) == 7)
			REQUIREF(error_code(&m->via.array.ptr[2], "cancelled stream") == MPOOL_E_CANCELLED,
				 "the cancelled stream was not answered with cancelled");
		got++;
	}
	raw_ping(&r, 9, "a feed for a cancelled stream");
#undef FEED
	fx_raw_close(&r);
	msgpack_sbuffer_destroy(&sb);
	bg_stop(&bg);
	fx_stop(&fx);
}
END_TEST

/* ---- dropped, then gone ----------------------------------------------------- */

/* A client sends one message that gets it dropped and closes its socket at
 * once: the error mpoold writes on its way out meets EPIPE.  That write
 * must not free the connection under the code that drops it (a double
 * free that took the whole daemon down).  Each message, many times. */
START_TEST(dropped_then_closed_at_once)
{
	static const char *const msgs[] = {
		"[1, 1, null, null]",                 /* a response */
		"[2, \"feed\", [1, 7, true]]",         /* a malformed feed */
		"\"bare\"",                            /* a bare string */
	};
	struct fx fx;
	struct fx_raw r;
	msgpack_sbuffer sb;
	msgpack_packer pk;

	fx_start(&fx, NULL);
	fx_sbuf_init(&sb, &pk);
	for (size_t i = 0; i < sizeof(msgs) / sizeof(msgs[0]); i++) {
		char what[96];

		pack_json(&pk, msgs[i]);
		for (int k = 0; k < 300; k++) {
			fx_raw_open(&fx, &r);
			(void)fx_raw_send(&r, sb.data, sb.size);
			fx_raw_close(&r);
		}
		msgpack_sbuffer_clear(&sb);
		snprintf(what, sizeof(what), "300 clients that sent %s and closed", msgs[i]);
		wait_clients(&fx, 1, what);
		fx_raw_open(&fx, &r);
		raw_ping(&r, 9, what);
		fx_raw_close(&r);
	}
	/* --max-jobs, like every client limit, can be read from status. */
	REQUIRE(fx_status_get(&fx, "limits.max_jobs") == 1024);
	msgpack_sbuffer_destroy(&sb);
	fx_stop(&fx);
}
END_TEST

/* shutdown(SHUT_WR), as socat and nc -N do, means "no more requests": the
 * apply and the map in flight are answered, then mpoold closes.  A stream
 * still open can get no more feeds: it fails at once, then EOF. */
START_TEST(half_close_answers_what_is_open)
{
	struct fx fx;
	struct fx_raw r;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	const msgpack_object *err, *res;

	fx_start(&fx, NULL);
	fx_sbuf_init(&sb, &pk);
	for (int round = 0; round < 2; round++) {
		bool map_first = round == 1;

		fx_raw_open(&fx, &r);
		if (map_first) {
			fx_req_head(&pk, 2, "map");
			msgpack_pack_array(&pk, 2);
			fx_pack_str(&pk, "builtin.square");
			msgpack_pack_array(&pk, 3000);
			for (int i = 0; i < 3000; i++)
				msgpack_pack_int(&pk, i);
		}
		pack_req(&pk, 1, "apply", "[\"builtin.sleep\", 300]");
		if (!map_first) {
			fx_req_head(&pk, 2, "map");
			msgpack_pack_array(&pk, 2);
			fx_pack_str(&pk, "builtin.square");
			msgpack_pack_array(&pk, 3000);
			for (int i = 0; i < 3000; i++)
				msgpack_pack_int(&pk, i);
		}
		send_sb(&r, &sb);
		REQUIRE(shutdown(r.fd, SHUT_WR) == 0);
		/* The apply's answer may come before or after the map's. */
		bool apply_done = false, map_done = false;
		uint64_t got = 0;

		while (!apply_done || !map_done) {
			const msgpack_object *m, *p;

			REQUIREF(fx_raw_next(&r, FX_WAIT_MS) == 1,
				 "EOF after a half-close with the apply %s and the map %s (%llu items)",
				 apply_done ? "answered" : "open", map_done ? "answered" : "open",
				 (unsigned long long)got);
			m = &r.msg.data;
			if ((p = note_params(m, "result"))) {
				got += p->via.array.ptr[2].via.array.size;
				continue;
			}
			REQUIREF(m->type == MSGPACK_OBJECT_ARRAY && m->via.array.size == 4,
				 "an unexpected message after the half-close");
			err = &m->via.array.ptr[2];
			res = &m->via.array.ptr[3];
			REQUIREF(err->type == MSGPACK_OBJECT_NIL, "a request failed after the half-close");
			if (fx_obj_u64(&m->via.array.ptr[1]) == 1) {
				REQUIRE(fx_obj_u64(res) == 300);
				apply_done = true;
			} else {
				REQUIRE(fx_obj_u64(fx_obj_get(res, "items")) == 3000 && got == 3000);
				map_done = true;
			}
		}
		REQUIREF(fx_raw_next(&r, FX_WAIT_MS) == 0, "no EOF once everything was answered");
		fx_raw_close(&r);
	}

	/* An open stream: it fails, then EOF. */
	fx_raw_open(&fx, &r);
	pack_req(&pk, 5, "map", "[\"builtin.square\", [1, 2], {\"stream\": true}]");
	send_sb(&r, &sb);
	REQUIRE(shutdown(r.fd, SHUT_WR) == 0);
	for (;;) {
		const msgpack_object *m;

		REQUIREF(fx_raw_next(&r, FX_WAIT_MS) == 1, "EOF before the open stream was answered");
		m = &r.msg.data;
		if (note_params(m, "result") || note_params(m, "credit"))
			continue;
		break;
	}
	r.msg.data.type == MSGPACK_OBJECT_ARRAY ? (void)0 : FAILF("not a response");
	REQUIREF(fx_obj_u64(&r.msg.data.via.array.ptr[1]) == 5 &&
		 r.msg.data.via.array.ptr[2].type == MSGPACK_OBJECT_MAP &&
		 error_code(&r.msg.data.via.array.ptr[2], "the half-closed stream") == MPOOL_E_BADREQ,
		 "the half-closed stream did not fail with bad_request");
	REQUIREF(fx_raw_next(&r, FX_WAIT_MS) == 0, "no EOF after the stream's answer");
	fx_raw_close(&r);
	wait_clients(&fx, 1, "the half-closed clients gone");
	msgpack_sbuffer_destroy(&sb);
	fx_stop(&fx);
}
END_TEST

/* ---- memory budgets ---------------------------------------------------------- */

/* A bin32 header announcing len bytes, then fill bytes of it. */
static void send_partial_bin(struct fx_raw *r, uint32_t len, size_t fill)
{
	uint8_t *buf = calloc(1, 5 + fill);

	REQUIRE(buf);
	buf[0] = 0xc6;
	buf[1] = (uint8_t)(len >> 24);
	buf[2] = (uint8_t)(len >> 16);
	buf[3] = (uint8_t)(len >> 8);
	buf[4] = (uint8_t)len;
	(void)fx_raw_send(r, buf, 5 + fill);
	free(buf);
}

/* A message that starts and never finishes, even one fed a byte at a
 * time, loses its connection after --frame-timeout. */
START_TEST(frame_timeout_drops_an_unfinished_message)
{
	static const char *const extra[] = { "--frame-timeout", "400", NULL };
	struct fx fx;
	struct fx_raw r;
	int64_t t0;

	fx_start(&fx, extra);
	fx_raw_open(&fx, &r);
	send_partial_bin(&r, 1u << 20, 1000);
	t0 = fx_now_ms();
	/* A byte every 50 ms: it keeps arriving, never whole. */
	for (;;) {
		struct pollfd pfd = { r.fd, POLLIN, 0 };
		uint8_t b = 0;

		if (poll(&pfd, 1, 50) > 0)
			break;
		REQUIREF(fx_now_ms() - t0 < FX_WAIT_MS, "a trickled message was never dropped");
		if (send(r.fd, &b, 1, MSG_NOSIGNAL) < 0)
			break;
	}
	expect_dropped(&r, MPOOL_E_LIMIT, "a message past --frame-timeout");
	fx_raw_close(&r);
	REQUIRE(limit_hits(&fx, "frame_timeout") == 1);
	/* Whole messages, however slow the client between them, are fine. */
	fx_raw_open(&fx, &r);
	raw_ping(&r, 1, "a first ping");
	for (int64_t end = fx_now_ms() + 600; fx_now_ms() < end;)
		fx_tick();
	raw_ping(&r, 2, "an idle pause longer than --frame-timeout");
	fx_raw_close(&r);
	REQUIRE(fx_status_get(&fx, "limits.frame_timeout_ms") == 400);
	fx_stop(&fx);
}
END_TEST

/* Connections each holding most of a large message: the total budget
 * (plus one message of slack) lets three in, the others are dropped, and
 * the master's memory stays bounded. */
START_TEST(partial_frames_within_the_total_budget)
{
	static const char *const extra[] = {
		"--max-frame", "4194304", "--max-client-bytes", "4194304",
		"--max-total-bytes", "8388608", "--frame-timeout", "0", NULL,
	};
	enum { N = 6 };
	struct fx fx;
	struct fx_raw r[N];
	long rss0, rss1;
	int dropped = 0;

	fx_start(&fx, extra);
	rss0 = fx_rss_kib(fx.pid);
	for (int i = 0; i < N; i++) {
		fx_raw_open(&fx, &r[i]);
		send_partial_bin(&r[i], (4u << 20) - 64, 3u << 20);
	}
	for (int i = 0; i < N; i++) {
		struct pollfd pfd = { r[i].fd, POLLIN, 0 };

		if (poll(&pfd, 1, 2000) > 0) {
			expect_dropped(&r[i], MPOOL_E_LIMIT, "a message past --max-total-bytes");
			dropped++;
		}
	}
	rss1 = fx_rss_kib(fx.pid);
	/* The budget, plus one message's worth of slack. */
	REQUIREF(dropped >= N - 3, "%d of %d connections holding 3 MiB each were dropped under "
		 "an 8 MiB budget", dropped, N);
	REQUIREF(limit_hits(&fx, "total_bytes") >= (uint64_t)dropped, "limits_hit.total_bytes %llu",
		 (unsigned long long)limit_hits(&fx, "total_bytes"));
	REQUIREF(rss1 - rss0 < 20 * 1024 + RSS_SLACK_KIB, "VmRSS grew from %ld to %ld KiB", rss0,
		 rss1);
	REQUIRE(fx_status_get(&fx, "totals.client_bytes") <= 8388608 + 4194304);
	for (int i = 0; i < N; i++)
		fx_raw_close(&r[i]);
	wait_clients(&fx, 1, "the partial messages' connections gone");
	fx_raw_open(&fx, &r[0]);
	raw_ping(&r[0], 1, "the budget was spent and freed");
	fx_raw_close(&r[0]);
	fx_stop(&fx);
}
END_TEST

/* Packs [0, msgid, "map", ["builtin.sleep", [bin of len]]]. */
static void pack_big_item_map(msgpack_packer *pk, uint64_t msgid, size_t len, bool stream)
{
	char *buf = calloc(1, len);

	REQUIRE(buf);
	fx_req_head(pk, msgid, "map");
	msgpack_pack_array(pk, stream ? 3 : 2);
	fx_pack_str(pk, "builtin.sleep");
	msgpack_pack_array(pk, 1);
	msgpack_pack_bin(pk, len);
	msgpack_pack_bin_body(pk, buf, len);
	if (stream) {
		msgpack_pack_map(pk, 1);
		fx_pack_str(pk, "stream");
		msgpack_pack_true(pk);
	}
	free(buf);
}

/* Reads the responses that come within a second: each must be a limit
 * error naming option; returns how many. */
static int read_refusals(struct fx_raw *r, const char *option)
{
	int n = 0;

	for (;;) {
		struct pollfd pfd = { r->fd, POLLIN, 0 };
		const msgpack_object *m, *err;
		char msg[MSG_MAX + 1];

		/* Responses already read come first. */
		if (msgpack_unpacker_next(&r->up, &r->msg) != MSGPACK_UNPACK_SUCCESS) {
			if (poll(&pfd, 1, 1000) <= 0)
				return n;
			REQUIRE(fx_raw_next(r, FX_WAIT_MS) == 1);
		}
		m = &r->msg.data;
		REQUIREF(m->type == MSGPACK_OBJECT_ARRAY && m->via.array.size == 4,
			 "not a response while maps wait for the worker");
		err = &m->via.array.ptr[2];
		REQUIREF(err->type == MSGPACK_OBJECT_MAP &&
			 error_code(err, "a map past a budget") == MPOOL_E_LIMIT,
			 "map %llu answered before the worker was free",
			 (unsigned long long)m->via.array.ptr[1].via.u64);
		REQUIRE(fx_get_str(err, "message", msg, sizeof(msg)));
		REQUIREF(strstr(msg, option), "refused without naming %s: %s", option, msg);
		n++;
	}
}

/* Queued input counts in bytes: maps of one 1 MiB item each, queued behind
 * a busy worker, fail with limit once one client holds --max-client-bytes,
 * and once all hold --max-total-bytes. */
START_TEST(queued_input_within_the_byte_budgets)
{
	static const char *const extra[] = {
		"--workers", "1", "--max-frame", "2097152", "--max-client-bytes", "4194304",
		"--max-total-bytes", "7340032", NULL,
	};
	struct fx fx;
	struct fx_raw busy, a, b;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	int accepted = 0, refused = 0;
	uint64_t id;

	fx_start(&fx, extra);
	fx_sbuf_init(&sb, &pk);
	fx_raw_open(&fx, &busy);
	pack_req(&pk, 1, "apply", "[\"builtin.sleep\", 4000]");
	send_sb(&busy, &sb);
	fx_wait_status(&fx, busy_workers, &(unsigned){ 1 }, FX_WAIT_MS, "the one worker busy", NULL);

	fx_raw_open(&fx, &a);
	for (id = 1; id <= 6; id++) {
		pack_big_item_map(&pk, id, 1u << 20, false);
		send_sb(&a, &sb);
	}
	/* Refusals come at once, the queued maps after the sleep. */
	refused = read_refusals(&a, "--max-client-bytes");
	accepted = 6 - refused;
	REQUIREF(accepted >= 2 && accepted <= 4 && refused >= 2,
		 "%d of 6 maps of 1 MiB queued under a 4 MiB client budget", accepted);
	REQUIRE(limit_hits(&fx, "client_bytes") == (uint64_t)refused);

	/* Another client: the total budget is what is left. */
	fx_raw_open(&fx, &b);
	refused = 0;
	for (id = 1; id <= 6; id++) {
		pack_big_item_map(&pk, id, 1u << 20, false);
		send_sb(&b, &sb);
	}
	refused = read_refusals(&b, "--max-total-bytes");
	/* 7 MiB in all: what the first client left, less a message's room. */
	REQUIREF(refused >= 6 - (7 - accepted) && limit_hits(&fx, "total_bytes") >= 1,
		 "the second client: %d of 6 refused, total_bytes hit %llu times", refused,
		 (unsigned long long)limit_hits(&fx, "total_bytes"));
	/* Input buffers may hold one message more than the budget. */
	REQUIRE(fx_status_get(&fx, "totals.client_bytes") <= 7340032 + 2097152);
	fx_raw_close(&a);
	fx_raw_close(&b);
	fx_raw_close(&busy);
	msgpack_sbuffer_destroy(&sb);
	fx_stop(&fx);
}
END_TEST

/* A stream's credit is bounded by --stream-window-bytes too: after a first
 * part of one 256 KiB item, a 1 MiB window has room for a few items more,
 * not for the 65 535 the item window would allow. */
START_TEST(stream_credit_counts_bytes)
{
	static const char *const extra[] = { "--workers", "1", "--stream-window-bytes", "1048576",
					     NULL };
	struct fx fx;
	struct fx_raw busy, r;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	const msgpack_object *p = NULL;
	uint64_t credit;

	fx_start(&fx, extra);
	fx_sbuf_init(&sb, &pk);
	fx_raw_open(&fx, &busy);
	pack_req(&pk, 1, "apply", "[\"builtin.sleep\", 3000]");
	send_sb(&busy, &sb);
	fx_wait_status(&fx, busy_workers, &(unsigned){ 1 }, FX_WAIT_MS, "the one worker busy", NULL);
	fx_raw_open(&fx, &r);
	pack_big_item_map(&pk, 7, 256u << 10, true);
	send_sb(&r, &sb);
	while (!p) {
		REQUIREF(fx_raw_next(&r, FX_WAIT_MS) == 1, "no credit for the stream");
		p = note_params(&r.msg.data, "credit");
	}
	credit = fx_obj_u64(&p->via.array.ptr[1]);
	REQUIREF(credit >= 1 && credit <= 4, "credit for %llu items of 256 KiB under a 1 MiB window",
		 (unsigned long long)credit);
	fx_raw_close(&r);
	fx_raw_close(&busy);
	msgpack_sbuffer_destroy(&sb);
	fx_stop(&fx);
}
END_TEST

/* Clients that ask for status and never read: their replies count against
 * the total budget, and past it they are no longer read. */
START_TEST(unread_status_replies_within_the_budget)
{
	static const char *const extra[] = {
		"--max-frame", "65536", "--max-client-bytes", "524288",
		"--max-total-bytes", "1048576", NULL,
	};
	enum { N = 8, REQS = 3000 };
	struct fx fx;
	struct fx_raw r[N];
	msgpack_sbuffer sb;
	msgpack_packer pk;
	uint64_t held;

	fx_start(&fx, extra);
	fx_sbuf_init(&sb, &pk);
	for (int k = 0; k < REQS; k++)
		pack_req(&pk, (uint64_t)k + 1, "status", "[]");
	for (int i = 0; i < N; i++) {
		fx_raw_open(&fx, &r[i]);
		/* Part of it may stay unsent: mpoold stops reading. */
		for (size_t off = 0; off < sb.size;) {
			struct pollfd pfd = { r[i].fd, POLLOUT, 0 };
			ssize_t n;

			if (poll(&pfd, 1, 500) <= 0)
				break;
			n = send(r[i].fd, sb.data + off, sb.size - off, MSG_NOSIGNAL | MSG_DONTWAIT);
			if (n <= 0)
				break;
			off += (size_t)n;
		}
	}
	held = fx_status_get(&fx, "totals.client_bytes");
	/* The budget, plus for each client the slack it may pass it by: one
	 * reply beyond 64 KiB, and its input buffer. */
	REQUIREF(held <= 1048576 + N * (192u << 10), "%llu bytes held for %d clients that do "
		 "not read, under a 1 MiB budget", (unsigned long long)held, N);
	REQUIRE(limit_hits(&fx, "total_bytes") + limit_hits(&fx, "backlog") >= 1);
	for (int i = 0; i < N; i++)
		fx_raw_close(&r[i]);
	wait_clients(&fx, 1, "the clients that did not read gone");
	msgpack_sbuffer_destroy(&sb);
	fx_stop(&fx);
}
END_TEST

/* ---- connections per user ----------------------------------------------------- */

#define NOBODY 65534

struct holder {
	struct fx *fx;
	uid_t uid;
	int n;                     /* connections to try */
	int report_w, stop_r;      /* ok count + refusals out; hold until EOF in */
	int report_r, stop_w;      /* the parent's ends, closed in the child */
};

/* One message from fd within 10 s into up: 1, or 0 at EOF or timeout. */
static int child_next(int fd, msgpack_unpacker *up, msgpack_unpacked *msg)
{
	int64_t end = fx_now_ms() + 10000;

	for (;;) {
		struct pollfd pfd = { fd, POLLIN, 0 };
		ssize_t n;

		if (msgpack_unpacker_next(up, msg) == MSGPACK_UNPACK_SUCCESS)
			return 1;
		if (fx_now_ms() > end || poll(&pfd, 1, 100) < 0)
			return 0;
		if (!(pfd.revents & (POLLIN | POLLHUP)))
			continue;
		if (!msgpack_unpacker_reserve_buffer(up, 4096))
			return 0;
		n = recv(fd, msgpack_unpacker_buffer(up), 4096, 0);
		if (n <= 0)
			return 0;
		msgpack_unpacker_buffer_consumed(up, (size_t)n);
	}
}

/* As uid, opens n connections and pings on each: "ok refused_limit other"
 * to report_w, then holds the connections open until stop_r closes.  Runs
 * in a forked process: no REQUIRE here. */
static int holder_main(void *arg)
{
	static const uint8_t ping[] = { 0x94, 0x00, 0x01, 0xa4, 'p', 'i', 'n', 'g', 0x90 };
	struct holder *h = arg;
	int ok = 0, limited = 0, other = 0, fds[256];
	char line[64];
	char c;

	close(h->report_r);
	close(h->stop_w);
	if (h->uid && (setgroups(0, NULL) < 0 || setgid(h->uid) < 0 || setuid(h->uid) < 0))
		return 10;
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	for (int i = 0; i < h->n && i < 256; i++) {
		struct sockaddr_un sa = { .sun_family = AF_UNIX };
		msgpack_unpacker up;
		msgpack_unpacked msg;
		const msgpack_object *m;

		snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", h->fx->sock);
		fds[i] = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fds[i] < 0 || connect(fds[i], (struct sockaddr *)&sa, sizeof(sa)) < 0)
			return 11;
		(void)send(fds[i], ping, sizeof(ping), MSG_NOSIGNAL);
		msgpack_unpacker_init(&up, 4096);
		msgpack_unpacked_init(&msg);
		if (child_next(fds[i], &up, &msg) != 1) {
			other++;
		} else {
			m = &msg.data;
			if (m->type == MSGPACK_OBJECT_ARRAY && m->via.array.size == 4)
				ok++;
			else if (note_params(m, "error") &&
				 fx_obj_get(&m->via.array.ptr[2].via.array.ptr[0], "code")->via.u64 ==
				 MPOOL_E_LIMIT)
				limited++;
			else
				other++;
		}
		msgpack_unpacked_destroy(&msg);
		msgpack_unpacker_destroy(&up);
	}
	snprintf(line, sizeof(line), "%d %d %d\n", ok, limited, other);
	if (write(h->report_w, line, strlen(line)) < 0)
		return 12;
	while (read(h->stop_r, &c, 1) > 0)
		;
	return 0;
}

struct held_conns {
	struct holder h;
	pid_t pid;
	int stop_w;
	int ok, limited, other;
};

static void hold_conns(struct fx *fx, struct held_conns *hc, uid_t uid, int n)
{
	int rep[2], stop[2];
	char line[64] = "";
	ssize_t got;

	REQUIRE(pipe(rep) == 0 && pipe(stop) == 0);
	hc->h = (struct holder){ fx, uid, n, rep[1], stop[0], rep[0], stop[1] };
	hc->pid = fx_fork(holder_main, &hc->h);
	close(rep[1]);
	close(stop[0]);
	hc->stop_w = stop[1];
	got = read(rep[0], line, sizeof(line) - 1);
	close(rep[0]);
	REQUIREF(got > 0 && sscanf(line, "%d %d %d", &hc->ok, &hc->limited, &hc->other) == 3,
		 "the uid %u client reported nothing (exit status %d)", (unsigned)uid,
		 got > 0 ? 0 : WEXITSTATUS(fx_wait_child(hc->pid, FX_WAIT_MS)));
}

static void release_conns(struct held_conns *hc)
{
	close(hc->stop_w);
	fx_expect_child_ok(hc->pid, FX_WAIT_MS, "a client holding connections");
}

/* One user cannot take every slot: a user who is not an admin gets
 * --max-clients-per-uid, and the last --admin-clients slots stay for root,
 * so root can still ping, drain or look at the status. */
START_TEST(clients_per_uid_and_room_for_admins)
{
	static const char *const extra[] = {
		"--max-clients", "12", "--admin-clients", "3", "--max-clients-per-uid", "5",
		"--socket-mode", "0666", NULL,
	};
	struct fx fx;
	struct held_conns a, b, root;

	if (geteuid() != 0) {
		fprintf(stderr, "clients_per_uid_and_room_for_admins: skipped, needs root to be "
			"other users\n");
		return;
	}
	fx_start(&fx, extra);
	REQUIREF(chmod(fx.dir, 0711) == 0, "chmod %s: %s", fx.dir, strerror(errno));
	/* fx.c holds one slot. */
	hold_conns(&fx, &a, NOBODY, 7);
	REQUIREF(a.ok == 5 && a.limited == 2 && a.other == 0,
		 "uid %d: %d served, %d refused with limit, %d otherwise; wanted 5, 2, 0", NOBODY,
		 a.ok, a.limited, a.other);
	REQUIRE(limit_hits(&fx, "clients_per_uid") == 2);
	hold_conns(&fx, &b, NOBODY - 1, 5);
	REQUIREF(b.ok == 3 && b.limited == 2 && b.other == 0,
		 "a second uid: %d served, %d refused with limit, %d otherwise; wanted 3, 2, 0 "
		 "(3 of 12 slots are for admins)", b.ok, b.limited, b.other);
	REQUIRE(limit_hits(&fx, "clients") == 2);
	hold_conns(&fx, &root, 0, 4);
	REQUIREF(root.ok == 3 && root.limited == 1,
		 "root: %d served, %d refused; wanted the 3 admin slots, then --max-clients",
		 root.ok, root.limited);
	REQUIRE(fx_status_get(&fx, "limits.max_clients_per_uid") == 5);
	release_conns(&root);
	release_conns(&b);
	release_conns(&a);
	fx_stop(&fx);
}
END_TEST

/* With few descriptors, mpoold serves fewer clients than --max-clients
 * instead of running out in accept(): extra clients are told why at once,
 * and the log does not fill with a warning every 100 ms. */
START_TEST(few_descriptors_refuse_clearly)
{
	static const char *const extra[] = { "--max-processes", "4", NULL };
	static const uint8_t ping[] = { 0x94, 0x00, 0x01, 0xa4, 'p', 'i', 'n', 'g', 0x90 };
	struct rlimit low = { 64, 64 };
	enum { N = 40 };
	struct fx fx;
	struct fx_raw r[N];
	int served = 0, limited = 0;
	char tail[8192];
	int accept_warnings = 0;

	/* The daemon inherits the limit, hard limit included, so it cannot
	 * raise it; this test process stays well below it too. */
	REQUIRE(setrlimit(RLIMIT_NOFILE, &low) == 0);
	fx_start(&fx, extra);
	REQUIREF(fx_log_has(&fx, "RLIMIT_NOFILE is 64: serving at most"),
		 "no word of the descriptor limit at start");
	for (int i = 0; i < N; i++) {
		fx_raw_open(&fx, &r[i]);
		(void)fx_raw_send(&r[i], ping, sizeof(ping));
		REQUIREF(fx_raw_next(&r[i], FX_WAIT_MS) == 1, "client %d got no answer", i);
		if (r[i].msg.data.type == MSGPACK_OBJECT_ARRAY && r[i].msg.data.via.array.size == 4)
			served++;
		else if (note_params(&r[i].msg.data, "error"))
			limited++;
	}
	REQUIREF(served >= 10 && served < N && served + limited == N, "%d served, %d refused of %d",
		 served, limited, N);
	fx_log_tail(&fx, tail, sizeof(tail));
	for (const char *p = tail; (p = strstr(p, "pausing new connections")); p++)
		accept_warnings++;
	REQUIREF(accept_warnings <= 1, "%d accept warnings", accept_warnings);
	for (int i = 0; i < N; i++)
		fx_raw_close(&r[i]);
	fx_stop(&fx);
}
END_TEST

static Suite *defense_suite(void)
{
	Suite *s = suite_create("defense");
	TCase *tc;

	tc = tcase_create("frames");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, truncated_frames_then_close);
	tcase_add_test(tc, random_garbage);
	tcase_add_test(tc, four_billion_headers_past_max_frame);
	tcase_add_test(tc, map_of_exactly_max_frame_runs);
	tcase_add_test(tc, apply_of_exactly_max_frame_runs);
	tcase_add_test(tc, nesting_past_the_limit);
	suite_add_tcase(s, tc);

	tc = tcase_create("requests");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, every_method_with_wrong_params);
	tcase_add_test(tc, malformed_feeds_drop_the_client);
	tcase_add_test(tc, unknown_methods_and_notifications);
	tcase_add_test(tc, msgid_reuse_against_every_method);
	tcase_add_test(tc, msgid_check_in_the_documented_order);
	tcase_add_test(tc, chunksize_extremes);
	tcase_add_test(tc, function_names_that_are_not_utf8);
	suite_add_tcase(s, tc);

	tc = tcase_create("limits");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, flood_without_reading);
	tcase_add_test(tc, max_queued_chunks_refuses_maps);
	tcase_add_test(tc, max_queued_chunks_bounds_streams);
	tcase_add_test(tc, queued_chunks_are_shared_per_uid);
	tcase_add_test(tc, every_limit_is_counted);
	tcase_add_test(tc, stream_first_part_past_the_window);
	tcase_add_test(tc, joins_count_against_max_jobs);
	tcase_add_test(tc, feeds_out_of_place);
	suite_add_tcase(s, tc);

	tc = tcase_create("hardening");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, dropped_then_closed_at_once);
	tcase_add_test(tc, half_close_answers_what_is_open);
	tcase_add_test(tc, frame_timeout_drops_an_unfinished_message);
	tcase_add_test(tc, partial_frames_within_the_total_budget);
	tcase_add_test(tc, queued_input_within_the_byte_budgets);
	tcase_add_test(tc, stream_credit_counts_bytes);
	tcase_add_test(tc, unread_status_replies_within_the_budget);
	tcase_add_test(tc, clients_per_uid_and_room_for_admins);
	tcase_add_test(tc, few_descriptors_refuse_clearly);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(defense_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
