/* fuzz_frame: libFuzzer target over the framing layer and the envelope
 * readers (proto/mp_frame.c, mp_scan.c, mp_rpc.c).
 *
 * Input: byte 0 picks the limits, bytes 1-2 the point where the stream is
 * cut into two pushes, the rest is the byte stream a peer sends.  The
 * stream goes through two framers -- one push of everything, and two pushes
 * cut at the chosen point -- which must hand out the same frames and end
 * with the same verdict (the scanner is resumable: where the bytes break
 * must not matter).  Every frame handed out must then
 *
 *   - be no longer than the frame limit and measure the same again;
 *   - unpack with msgpack-c's msgpack_unpack_next, successfully and to its
 *     last byte: that is the promise mp_frame makes (a measured frame is
 *     safe to unpack), so any other outcome is a crash here;
 *   - read the same through the zero-copy cursor as through msgpack-c,
 *     element by element (types, integers, strings, counts);
 *   - survive mp_msg_parse and mp_read_error, which must stay inside the
 *     frame and leave the cursor where it was on failure.
 *
 * Build: meson setup build-fuzz -Dfuzz=true with CC=clang; run through
 * tests/fuzz/run. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>

#include "mp_frame.h"
#include "mp_rpc.h"
#include "mp_scan.h"

/* Aborts with a reason: libFuzzer saves the input and reports the crash. */
#define CHECK(c) do { \
	if (!(c)) { \
		fprintf(stderr, "fuzz_frame: %s:%d: check failed: %s\n", __FILE__, __LINE__, #c); \
		abort(); \
	} \
} while (0)

/* What a framer handed out: how many frames, a hash of their lengths, and
 * how it ended (0: needs more; else its error). */
struct run {
	uint64_t n, hash;
	int verdict;
};

static struct mp_frame_limits pick_limits(uint8_t ctl)
{
	static const size_t frames[4] = { 64u << 20, 16, 300, 4096 };
	struct mp_frame_limits lim;
	unsigned d = ctl >> 2;

	lim.max_frame = frames[ctl & 3];
	lim.max_depth = d > MP_DEPTH_MAX ? MP_DEPTH_MAX : d;
	return lim;
}

/* Compares what the cursor reads at c with msgpack-c's object o, and moves
 * c past the element. */
static void same(struct mp_cur *c, const msgpack_object *o)
{
	struct mp_cur save = *c;
	const uint8_t *start = c->p, *raw;
	size_t raw_len;
	uint32_t n;
	uint64_t u;
	int64_t i;
	bool b;

	/* Skipping and reading must agree on where the element ends. */
	CHECK(mp_skip(c, &raw, &raw_len) == 0);
	CHECK(raw == start && raw_len > 0 && c->p == start + raw_len);
	*c = save;

	switch (mp_peek(c)) {
	case MP_T_NIL:
		CHECK(o->type == MSGPACK_OBJECT_NIL);
		CHECK(mp_read_nil(c) == 0);
		break;
	case MP_T_BOOL:
		CHECK(o->type == MSGPACK_OBJECT_BOOLEAN);
		CHECK(mp_read_bool(c, &b) == 0 && b == o->via.boolean);
		break;
	case MP_T_UINT:
	case MP_T_INT:
		if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
			CHECK(mp_read_u64(c, &u) == 0 && u == o->via.u64);
			CHECK(c->p == start + raw_len);
			*c = save;
			if (o->via.u64 <= INT64_MAX)
				CHECK(mp_read_i64(c, &i) == 0 && (uint64_t)i == o->via.u64);
			else
				CHECK(mp_read_i64(c, &i) < 0 && c->p == save.p);
			c->p = start + raw_len;
		} else {
			CHECK(o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER);
			CHECK(mp_read_u64(c, &u) < 0 && c->p == save.p);
			CHECK(mp_read_i64(c, &i) == 0 && i == o->via.i64 && i < 0);
		}
		break;
	case MP_T_FLOAT:
		CHECK(o->type == MSGPACK_OBJECT_FLOAT32 || o->type == MSGPACK_OBJECT_FLOAT64);
		CHECK(mp_read_u64(c, &u) < 0 && mp_read_str(c, &(const char *){ 0 }, &n) < 0);
		c->p = start + raw_len;
		break;
	case MP_T_STR: {
		const char *s;

		CHECK(o->type == MSGPACK_OBJECT_STR);
		CHECK(mp_read_str(c, &s, &n) == 0);
		CHECK(n == o->via.str.size && (n == 0 || memcmp(s, o->via.str.ptr, n) == 0));
		CHECK((const uint8_t *)s + n == start + raw_len);
		break;
	}
	case MP_T_BIN:
		CHECK(o->type == MSGPACK_OBJECT_BIN);
		CHECK(mp_read_str(c, &(const char *){ 0 }, &n) < 0 && c->p == save.p);
		c->p = start + raw_len;
		break;
	case MP_T_EXT:
		CHECK(o->type == MSGPACK_OBJECT_EXT);
		c->p = start + raw_len;
		break;
	case MP_T_ARRAY:
		CHECK(o->type == MSGPACK_OBJECT_ARRAY);
		CHECK(mp_read_map(c, &n) < 0 && c->p == save.p);
		CHECK(mp_read_array(c, &n) == 0 && n == o->via.array.size);
		for (uint32_t k = 0; k < n; k++)
			same(c, &o->via.array.ptr[k]);
		break;
	case MP_T_MAP:
		CHECK(o->type == MSGPACK_OBJECT_MAP);
		CHECK(mp_read_array(c, &n) < 0 && c->p == save.p);
		CHECK(mp_read_map(c, &n) == 0 && n == o->via.map.size);
		for (uint32_t k = 0; k < n; k++) {
			same(c, &o->via.map.ptr[k].key);
			same(c, &o->via.map.ptr[k].val);
		}
		break;
	case MP_T_INVALID:
		CHECK(!"a measured frame holds a byte that is no type");
	}
	CHECK(c->p == start + raw_len);
}

/* mp_read_error anywhere: inside the bytes on success, untouched on failure. */
static void try_error(const uint8_t *p, size_t len)
{
	struct mp_cur c;
	const char *msg;
	uint32_t msg_len;
	int64_t index;
	int code;

	mp_cur_init(&c, p, len);
	if (mp_read_error(&c, &code, &msg, &msg_len, &index) == 0) {
		CHECK(c.p > p && c.p <= p + len);
		CHECK(msg_len == 0 || ((const uint8_t *)msg >= p &&
				       (const uint8_t *)msg + msg_len <= c.p));
	} else {
		CHECK(c.p == p);
	}
}

static void check_frame(const uint8_t *f, size_t len, const struct mp_frame_limits *lim)
{
	msgpack_unpacked up;
	msgpack_unpack_return ur;
	struct mp_msg m;
	struct mp_cur c;
	uint64_t msgid;
	size_t off = 0, again;
	int ok;

	CHECK(len > 0 && len <= lim->max_frame);
	CHECK(mp_scan_one(f, len, lim->max_depth, &again) == 1 && again == len);

	/* The promise: msgpack-c may unpack a measured frame, whole. */
	msgpack_unpacked_init(&up);
	ur = msgpack_unpack_next(&up, (const char *)f, len, &off);
	CHECK(ur == MSGPACK_UNPACK_SUCCESS);
	CHECK(off == len);
	mp_cur_init(&c, f, len);
	same(&c, &up.data);
	CHECK(mp_cur_done(&c));
	msgpack_unpacked_destroy(&up);

	ok = -1;
	if (mp_msg_parse(f, len, &m, &ok, &msgid) == 0) {
		CHECK(ok == 0 || ok == 1);
		CHECK(m.body >= f && m.body + m.body_len == f + len && m.body_len > 0);
		if (m.type == MP_REQUEST || m.type == MP_NOTIFY)
			CHECK((const uint8_t *)m.method > f &&
			      (const uint8_t *)m.method + m.method_len <= m.body);
		if (m.type == MP_RESPONSE) {
			CHECK(m.error > f && m.error + m.error_len == m.body);
			try_error(m.error, m.error_len);
		}
		if (m.type != MP_NOTIFY)
			CHECK(ok == 1 && msgid == m.msgid);
		try_error(m.body, m.body_len);
	} else {
		CHECK(ok == 0 || ok == 1);
	}
	try_error(f, len);
}

/* Takes frames until the framer needs more or fails.  Returns 0, or the
 * framer's error. */
static int drain(struct mp_frame *fr, struct run *run, size_t *consumed,
		 const struct mp_frame_limits *lim, bool check)
{
	const uint8_t *f;
	size_t len;
	int r;

	while ((r = mp_frame_next(fr, &f, &len)) == 1) {
		run->n++;
		run->hash = (run->hash ^ len) * 0x100000001b3ull;   /* FNV-1a step */
		*consumed += len;
		if (check)
			check_frame(f, len, lim);
	}
	CHECK(r == 0 || r == -EBADMSG || r == -ELOOP || r == -EMSGSIZE);
	return r;
}

static void frame_all(const uint8_t *data, size_t size, size_t cut,
		      const struct mp_frame_limits *lim, struct run *run, bool check)
{
	struct mp_frame fr;
	size_t consumed = 0;
	int r;

	run->n = 0;
	run->hash = 0xcbf29ce484222325ull;
	mp_frame_init(&fr, lim);
	CHECK(mp_frame_push(&fr, data, cut) == 0);
	r = drain(&fr, run, &consumed, lim, check);
	if (r == 0) {
		CHECK(mp_frame_push(&fr, data + cut, size - cut) == 0);
		r = drain(&fr, run, &consumed, lim, check);
	}
	if (r == 0)
		CHECK(mp_frame_pending(&fr) == size - consumed);
	run->verdict = r;
	mp_frame_free(&fr);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct run whole, split;
	struct mp_frame_limits lim;
	size_t cut;

	if (size < 3)
		return 0;
	lim = pick_limits(data[0]);
	cut = (size_t)data[1] | (size_t)data[2] << 8;
	data += 3;
	size -= 3;
	cut = size ? cut % (size + 1) : 0;

	frame_all(data, size, cut, &lim, &split, true);
	frame_all(data, size, size, &lim, &whole, false);
	CHECK(whole.n == split.n && whole.hash == split.hash);
	/* Same verdict, with one allowance: a frame that breaks both the size
	 * and another rule is blamed on its size when its first part alone
	 * already passes the size limit (the daemon counts it under "frame"
	 * rather than "depth"; the client is dropped either way). */
	CHECK(whole.verdict == split.verdict ||
	      (split.verdict == -EMSGSIZE && (whole.verdict == -ELOOP || whole.verdict == -EBADMSG)));
	return 0;
}
