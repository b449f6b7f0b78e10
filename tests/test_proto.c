/* test_proto: unit tests for proto/ (mp_scan, mp_frame, mp_rpc, mp_path).
 *
 * Values are built with msgpack-c's packer wherever possible, so the tests
 * check proto/ against the reference encoder rather than against bytes we
 * believe to be right.  Hot loops use REQUIRE instead of ck_assert: Check
 * records every passing ck_assert through its result channel, which costs a
 * write per call. */
#include <check.h>
#include <msgpack.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <mpool/error.h>

#include "mp_frame.h"
#include "mp_obj.h"
#include "mp_path.h"
#include "mp_rpc.h"
#include "mp_scan.h"

#define REQUIRE(c) do { \
	if (!(c)) \
		ck_abort_msg("%s:%d: requirement failed: %s", __FILE__, __LINE__, #c); \
} while (0)

#define MiB (1024u * 1024u)

/* ---- allocation counter ----------------------------------------------
 * Interposes malloc and friends (glibc's __libc_* entry points do the work)
 * so a test can prove a call allocated nothing.  Sanitizers interpose the
 * allocator themselves, so there the counter is compiled out and the
 * assertion is skipped. */
#if defined(__SANITIZE_ADDRESS__)
# define UNDER_SANITIZER 1
#elif defined(__has_feature)
# if __has_feature(address_sanitizer) || __has_feature(memory_sanitizer)
#  define UNDER_SANITIZER 1
# endif
#endif

#if !defined(UNDER_SANITIZER) && defined(__GLIBC__)
# define COUNT_ALLOCS 1
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);

static volatile size_t alloc_calls;

void *malloc(size_t n)
{
	alloc_calls++;
	return __libc_malloc(n);
}

void *calloc(size_t n, size_t m)
{
	alloc_calls++;
	return __libc_calloc(n, m);
}

void *realloc(void *p, size_t n)
{
	alloc_calls++;
	return __libc_realloc(p, n);
}

void free(void *p)
{
	__libc_free(p);
}
#endif

/* ---- helpers ---------------------------------------------------------- */

struct pk {
	msgpack_sbuffer sb;
	msgpack_packer pk;
};

static void pk_init(struct pk *p)
{
	msgpack_sbuffer_init(&p->sb);
	msgpack_packer_init(&p->pk, &p->sb, msgpack_sbuffer_write);
}

static void pk_free(struct pk *p)
{
	msgpack_sbuffer_destroy(&p->sb);
}

static const uint8_t *pk_data(const struct pk *p)
{
	return (const uint8_t *)p->sb.data;
}

static void pstr(msgpack_packer *pk, const char *s)
{
	ck_assert_int_eq(mp_pack_cstr(pk, s), 0);
}

/* Bytes that would derail a scanner that looked inside payloads. */
static uint8_t junk[70000];

static void junk_init(void)
{
	for (size_t i = 0; i < sizeof(junk); i++)
		junk[i] = (i % 3 == 0) ? 0xc1 : (i % 3 == 1) ? 0xdd : 0xff;
}

static uint64_t rnd(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 0x2545F4914F6CDD1Dull;
}

/* Does msgpack-c's own unpacker accept buf[0..len) as exactly one value? */
static int msgpack_accepts(const uint8_t *buf, size_t len)
{
	msgpack_unpacked u;
	size_t off = 0;
	int r;

	msgpack_unpacked_init(&u);
	r = msgpack_unpack_next(&u, (const char *)buf, len, &off);
	msgpack_unpacked_destroy(&u);
	return r == MSGPACK_UNPACK_SUCCESS && off == len;
}

/* ---- mp_scan: scalars -------------------------------------------------- */

struct scalar_case {
	const char *name;
	uint8_t first;
	size_t len;
	enum mp_type type;
};

static const struct scalar_case scalar_cases[] = {
	{ "fixint 0", 0x00, 1, MP_T_UINT },
	{ "fixint 127", 0x7f, 1, MP_T_UINT },
	{ "neg fixint -1", 0xff, 1, MP_T_INT },
	{ "neg fixint -32", 0xe0, 1, MP_T_INT },
	{ "uint8 128", 0xcc, 2, MP_T_UINT },
	{ "uint8 255", 0xcc, 2, MP_T_UINT },
	{ "uint16 256", 0xcd, 3, MP_T_UINT },
	{ "uint16 65535", 0xcd, 3, MP_T_UINT },
	{ "uint32 65536", 0xce, 5, MP_T_UINT },
	{ "uint32 max", 0xce, 5, MP_T_UINT },
	{ "uint64 2^32", 0xcf, 9, MP_T_UINT },
	{ "uint64 max", 0xcf, 9, MP_T_UINT },
	{ "int8 -33", 0xd0, 2, MP_T_INT },
	{ "int8 -128", 0xd0, 2, MP_T_INT },
	{ "int16 -129", 0xd1, 3, MP_T_INT },
	{ "int16 min", 0xd1, 3, MP_T_INT },
	{ "int32 -32769", 0xd2, 5, MP_T_INT },
	{ "int32 min", 0xd2, 5, MP_T_INT },
	{ "int64 int32min-1", 0xd3, 9, MP_T_INT },
	{ "int64 min", 0xd3, 9, MP_T_INT },
	{ "float32", 0xca, 5, MP_T_FLOAT },
	{ "float64", 0xcb, 9, MP_T_FLOAT },
	{ "nil", 0xc0, 1, MP_T_NIL },
	{ "false", 0xc2, 1, MP_T_BOOL },
	{ "true", 0xc3, 1, MP_T_BOOL },
	{ "fixstr 0", 0xa0, 1, MP_T_STR },
	{ "fixstr 31", 0xbf, 32, MP_T_STR },
	{ "str8 32", 0xd9, 34, MP_T_STR },
	{ "str8 255", 0xd9, 257, MP_T_STR },
	{ "str16 256", 0xda, 259, MP_T_STR },
	{ "str16 65535", 0xda, 65538, MP_T_STR },
	{ "str32 65536", 0xdb, 65541, MP_T_STR },
	{ "bin8 0", 0xc4, 2, MP_T_BIN },
	{ "bin8 255", 0xc4, 257, MP_T_BIN },
	{ "bin16 256", 0xc5, 259, MP_T_BIN },
	{ "bin16 65535", 0xc5, 65538, MP_T_BIN },
	{ "bin32 65536", 0xc6, 65541, MP_T_BIN },
	{ "fixext1", 0xd4, 3, MP_T_EXT },
	{ "fixext2", 0xd5, 4, MP_T_EXT },
	{ "fixext4", 0xd6, 6, MP_T_EXT },
	{ "fixext8", 0xd7, 10, MP_T_EXT },
	{ "fixext16", 0xd8, 18, MP_T_EXT },
	{ "ext8 0", 0xc7, 3, MP_T_EXT },
	{ "ext8 3", 0xc7, 6, MP_T_EXT },
	{ "ext8 255", 0xc7, 258, MP_T_EXT },
	{ "ext16 256", 0xc8, 260, MP_T_EXT },
	{ "ext32 65536", 0xc9, 65542, MP_T_EXT },
	{ "fix_uint8 1", 0xcc, 2, MP_T_UINT },
	{ "fix_uint64 1", 0xcf, 9, MP_T_UINT },
	{ "fix_int8 1", 0xd0, 2, MP_T_INT },
	{ "fix_int64 -1", 0xd3, 9, MP_T_INT },
};
#define N_SCALAR_CASES ((int)(sizeof(scalar_cases) / sizeof(scalar_cases[0])))

static void pack_scalar(msgpack_packer *pk, int i)
{
	int r;

	switch (i) {
	case 0: r = msgpack_pack_uint64(pk, 0); break;
	case 1: r = msgpack_pack_uint64(pk, 127); break;
	case 2: r = msgpack_pack_int64(pk, -1); break;
	case 3: r = msgpack_pack_int64(pk, -32); break;
	case 4: r = msgpack_pack_uint64(pk, 128); break;
	case 5: r = msgpack_pack_uint64(pk, 255); break;
	case 6: r = msgpack_pack_uint64(pk, 256); break;
	case 7: r = msgpack_pack_uint64(pk, 65535); break;
	case 8: r = msgpack_pack_uint64(pk, 65536); break;
	case 9: r = msgpack_pack_uint64(pk, UINT32_MAX); break;
	case 10: r = msgpack_pack_uint64(pk, (uint64_t)UINT32_MAX + 1); break;
	case 11: r = msgpack_pack_uint64(pk, UINT64_MAX); break;
	case 12: r = msgpack_pack_int64(pk, -33); break;
	case 13: r = msgpack_pack_int64(pk, -128); break;
	case 14: r = msgpack_pack_int64(pk, -129); break;
	case 15: r = msgpack_pack_int64(pk, INT16_MIN); break;
	case 16: r = msgpack_pack_int64(pk, -32769); break;
	case 17: r = msgpack_pack_int64(pk, INT32_MIN); break;
	case 18: r = msgpack_pack_int64(pk, (int64_t)INT32_MIN - 1); break;
	case 19: r = msgpack_pack_int64(pk, INT64_MIN); break;
	case 20: r = msgpack_pack_float(pk, 1.5f); break;
	case 21: r = msgpack_pack_double(pk, -2.25); break;
	case 22: r = msgpack_pack_nil(pk); break;
	case 23: r = msgpack_pack_false(pk); break;
	case 24: r = msgpack_pack_true(pk); break;
	case 25: case 26: case 27: case 28: case 29: case 30: case 31: {
		static const size_t l[] = { 0, 31, 32, 255, 256, 65535, 65536 };
		size_t n = l[i - 25];
		r = msgpack_pack_str(pk, n) | msgpack_pack_str_body(pk, junk, n);
		break;
	}
	case 32: case 33: case 34: case 35: case 36: {
		static const size_t l[] = { 0, 255, 256, 65535, 65536 };
		size_t n = l[i - 32];
		r = msgpack_pack_bin(pk, n) | msgpack_pack_bin_body(pk, junk, n);
		break;
	}
	case 37: case 38: case 39: case 40: case 41:
	case 42: case 43: case 44: case 45: case 46: {
		static const size_t l[] = { 1, 2, 4, 8, 16, 0, 3, 255, 256, 65536 };
		size_t n = l[i - 37];
		r = msgpack_pack_ext(pk, n, 7) | msgpack_pack_ext_body(pk, junk, n);
		break;
	}
	case 47: r = msgpack_pack_fix_uint8(pk, 1); break;
	case 48: r = msgpack_pack_fix_uint64(pk, 1); break;
	case 49: r = msgpack_pack_fix_int8(pk, 1); break;
	case 50: r = msgpack_pack_fix_int64(pk, -1); break;
	default: ck_abort_msg("no scalar case %d", i); return;
	}
	ck_assert_int_eq(r, 0);
}

START_TEST(scan_scalar)
{
	const struct scalar_case *sc = &scalar_cases[_i];
	struct pk p;
	uint8_t *buf;
	size_t n, got = 12345;
	struct mp_cur c;

	junk_init();
	pk_init(&p);
	pack_scalar(&p.pk, _i);
	n = p.sb.size;
	ck_assert_msg(n == sc->len, "%s: packer made %zu bytes, expected %zu",
		      sc->name, n, sc->len);
	ck_assert_msg(pk_data(&p)[0] == sc->first, "%s: first byte %02x", sc->name,
		      pk_data(&p)[0]);

	ck_assert_int_eq(mp_scan_one(pk_data(&p), n, MP_DEPTH_MAX, &got), 1);
	ck_assert_msg(got == n, "%s: scanned %zu of %zu", sc->name, got, n);

	/* Trailing bytes (even an invalid one) are not part of the element. */
	buf = malloc(n + 3);
	memcpy(buf, pk_data(&p), n);
	memcpy(buf + n, "\xc1\xdd\xff", 3);
	got = 0;
	ck_assert_int_eq(mp_scan_one(buf, n + 3, MP_DEPTH_MAX, &got), 1);
	ck_assert_uint_eq(got, n);

	/* Every proper prefix needs more bytes, and *ret_len stays untouched. */
	for (size_t k = 0; k < n; k++) {
		got = 777;
		REQUIRE(mp_scan_one(buf, k, MP_DEPTH_MAX, &got) == 0);
		REQUIRE(got == 777);
	}

	mp_cur_init(&c, buf, n);
	ck_assert_msg(mp_peek(&c) == sc->type, "%s: peek %d", sc->name, (int)mp_peek(&c));
	ck_assert_int_eq(mp_skip(&c, NULL, NULL), 0);
	ck_assert(mp_cur_done(&c));

	/* msgpack-c agrees on the length. */
	ck_assert(msgpack_accepts(buf, n));
	free(buf);
	pk_free(&p);
}
END_TEST

START_TEST(scan_hand_bytes)
{
	/* A few encodings written out by hand, independent of the packer. */
	static const struct { const char *b; size_t n; } v[] = {
		{ "\xca\x3f\xc0\x00\x00", 5 },
		{ "\xd4\x01\xc1", 3 },
		{ "\xd8\x01" "0123456789abcdef", 18 },
		{ "\xc7\x02\x05\xc1\xc1", 5 },
		{ "\xc8\x00\x01\x05\xc1", 5 },
		{ "\xc9\x00\x00\x00\x01\x05\xc1", 7 },
		{ "\xc6\x00\x00\x00\x02\xc1\xc1", 7 },
		{ "\xdb\x00\x00\x00\x01x", 6 },
		{ "\xdc\x00\x00", 3 },
		{ "\xdd\x00\x00\x00\x00", 5 },
		{ "\xde\x00\x00", 3 },
		{ "\xdf\x00\x00\x00\x00", 5 },
		{ "\xdc\x00\x02\x01\x02", 5 },
		{ "\xdd\x00\x00\x00\x02\x01\x02", 7 },
		{ "\xde\x00\x01\x01\x02", 5 },
		{ "\xdf\x00\x00\x00\x01\x01\x02", 7 },
		{ "\x81\x91\x01\x80", 4 },     /* {[1]: {}} container key */
	};

	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		size_t got = 0;
		int r = mp_scan_one((const uint8_t *)v[i].b, v[i].n, MP_DEPTH_MAX, &got);

		ck_assert_msg(r == 1 && got == v[i].n, "case %zu: r=%d len=%zu", i, r, got);
		for (size_t k = 0; k < v[i].n; k++)
			ck_assert_msg(mp_scan_one((const uint8_t *)v[i].b, k, MP_DEPTH_MAX,
						  &got) == 0, "case %zu prefix %zu", i, k);
	}
}
END_TEST

START_TEST(scan_c1)
{
	static const uint8_t lone[] = { 0xc1 };
	static const uint8_t in_array[] = { 0x93, 0x01, 0xc1, 0x02 };
	static const uint8_t as_key[] = { 0x81, 0xc1, 0x01 };
	static const uint8_t deep[] = { 0x91, 0x91, 0xdc, 0x00, 0x02, 0xa1, 'x', 0xc1 };
	size_t got = 99;

	ck_assert_int_eq(mp_scan_one(lone, sizeof(lone), MP_DEPTH_MAX, &got), -EBADMSG);
	ck_assert_int_eq(mp_scan_one(in_array, sizeof(in_array), MP_DEPTH_MAX, &got), -EBADMSG);
	ck_assert_int_eq(mp_scan_one(as_key, sizeof(as_key), MP_DEPTH_MAX, &got), -EBADMSG);
	ck_assert_int_eq(mp_scan_one(deep, sizeof(deep), MP_DEPTH_MAX, &got), -EBADMSG);
	ck_assert_uint_eq(got, 99);
	/* Before the bad byte arrives, the scanner just wants more. */
	ck_assert_int_eq(mp_scan_one(in_array, 2, MP_DEPTH_MAX, &got), 0);
	/* 0xc1 inside a payload is data, not a type byte. */
	ck_assert_int_eq(mp_scan_one((const uint8_t *)"\xa1\xc1", 2, MP_DEPTH_MAX, &got), 1);
	ck_assert_uint_eq(got, 2);
}
END_TEST

/* ---- mp_scan: containers ----------------------------------------------- */

START_TEST(scan_containers_packed)
{
	static const uint32_t sizes[] = { 0, 1, 15, 16, 65535, 65536 };
	struct pk p;

	pk_init(&p);
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		uint32_t n = sizes[i];
		uint8_t want = n < 16 ? (uint8_t)(0x90 | n) : n < 65536 ? 0xdc : 0xdd;
		size_t got = 0;
		struct mp_cur c;
		uint32_t rn;

		/* array of n small ints */
		msgpack_sbuffer_clear(&p.sb);
		ck_assert_int_eq(msgpack_pack_array(&p.pk, n), 0);
		for (uint32_t k = 0; k < n; k++)
			msgpack_pack_uint32(&p.pk, k);
		ck_assert_uint_eq(pk_data(&p)[0], want);
		ck_assert_int_eq(mp_scan_one(pk_data(&p), p.sb.size, MP_DEPTH_MAX, &got), 1);
		ck_assert_uint_eq(got, p.sb.size);
		ck_assert_int_eq(mp_scan_one(pk_data(&p), p.sb.size - 1, MP_DEPTH_MAX, &got), 0);
		mp_cur_init(&c, pk_data(&p), p.sb.size);
		ck_assert_int_eq(mp_peek(&c), MP_T_ARRAY);
		ck_assert_int_eq(mp_read_array(&c, &rn), 0);
		ck_assert_uint_eq(rn, n);

		/* map of n pairs {k: [k]} (container values) */
		want = n < 16 ? (uint8_t)(0x80 | n) : n < 65536 ? 0xde : 0xdf;
		msgpack_sbuffer_clear(&p.sb);
		ck_assert_int_eq(msgpack_pack_map(&p.pk, n), 0);
		for (uint32_t k = 0; k < n; k++) {
			msgpack_pack_uint32(&p.pk, k);
			msgpack_pack_array(&p.pk, 1);
			msgpack_pack_uint32(&p.pk, k);
		}
		ck_assert_uint_eq(pk_data(&p)[0], want);
		ck_assert_int_eq(mp_scan_one(pk_data(&p), p.sb.size, MP_DEPTH_MAX, &got), 1);
		ck_assert_uint_eq(got, p.sb.size);
		ck_assert_int_eq(mp_scan_one(pk_data(&p), p.sb.size - 1, MP_DEPTH_MAX, &got), 0);
		mp_cur_init(&c, pk_data(&p), p.sb.size);
		ck_assert_int_eq(mp_peek(&c), MP_T_MAP);
		ck_assert_int_eq(mp_read_map(&c, &rn), 0);
		ck_assert_uint_eq(rn, n);
		ck_assert(msgpack_accepts(pk_data(&p), p.sb.size));
	}
	pk_free(&p);
}
END_TEST

START_TEST(scan_nested_mixed_prefixes)
{
	/* {"a": [1, [nil, {"b": bin}], str16], [true]: {}} plus an array16 */
	struct pk p;
	size_t got = 0, n;

	junk_init();
	pk_init(&p);
	msgpack_pack_array(&p.pk, 2);
	msgpack_pack_map(&p.pk, 2);
	pstr(&p.pk, "a");
	msgpack_pack_array(&p.pk, 3);
	msgpack_pack_uint8(&p.pk, 1);
	msgpack_pack_array(&p.pk, 2);
	msgpack_pack_nil(&p.pk);
	msgpack_pack_map(&p.pk, 1);
	pstr(&p.pk, "b");
	msgpack_pack_bin(&p.pk, 40);
	msgpack_pack_bin_body(&p.pk, junk, 40);
	msgpack_pack_str(&p.pk, 300);
	msgpack_pack_str_body(&p.pk, junk, 300);
	msgpack_pack_array(&p.pk, 1);
	msgpack_pack_true(&p.pk);
	msgpack_pack_map(&p.pk, 0);
	msgpack_pack_array(&p.pk, 20);
	for (int i = 0; i < 20; i++) {
		msgpack_pack_ext(&p.pk, (size_t)i, (int8_t)i);
		msgpack_pack_ext_body(&p.pk, junk, (size_t)i);
	}
	n = p.sb.size;
	ck_assert_int_eq(mp_scan_one(pk_data(&p), n, MP_DEPTH_MAX, &got), 1);
	ck_assert_uint_eq(got, n);
	for (size_t k = 0; k < n; k++)
		REQUIRE(mp_scan_one(pk_data(&p), k, MP_DEPTH_MAX, &got) == 0);
	ck_assert(msgpack_accepts(pk_data(&p), n));
	pk_free(&p);
}
END_TEST

/* Random values from msgpack-c's packer: the scanner, mp_skip and msgpack-c
 * must all agree on every value's length. */
static void pack_random(msgpack_packer *pk, uint64_t *rng, unsigned depth_left)
{
	unsigned kind = (unsigned)(rnd(rng) % (depth_left ? 14 : 11));
	uint64_t v = rnd(rng);
	size_t n;

	switch (kind) {
	case 0: msgpack_pack_uint64(pk, v >> (rnd(rng) % 64)); break;
	case 1: msgpack_pack_int64(pk, -(int64_t)(v >> (1 + rnd(rng) % 63)) - 1); break;
	case 2: msgpack_pack_float(pk, (float)(v % 1000) / 7.0f); break;
	case 3: msgpack_pack_double(pk, (double)v); break;
	case 4: msgpack_pack_nil(pk); break;
	case 5: (v & 1) ? msgpack_pack_true(pk) : msgpack_pack_false(pk); break;
	case 6:
		n = (v % 50 == 0) ? 256 + v % 500 : (v % 300 == 1) ? 65536 : v % 40;
		msgpack_pack_str(pk, n);
		msgpack_pack_str_body(pk, junk, n);
		break;
	case 7:
		n = (v % 50 == 0) ? 256 + v % 500 : v % 300;
		msgpack_pack_bin(pk, n);
		msgpack_pack_bin_body(pk, junk, n);
		break;
	case 8:
		n = (v % 30 == 0) ? 256 + v % 300 : v % 20;
		msgpack_pack_ext(pk, n, (int8_t)(v >> 8));
		msgpack_pack_ext_body(pk, junk, n);
		break;
	case 9:
		switch (v % 8) {
		case 0: msgpack_pack_fix_uint8(pk, (uint8_t)v); break;
		case 1: msgpack_pack_fix_uint16(pk, (uint16_t)v); break;
		case 2: msgpack_pack_fix_uint32(pk, (uint32_t)v); break;
		case 3: msgpack_pack_fix_uint64(pk, v); break;
		case 4: msgpack_pack_fix_int8(pk, (int8_t)v); break;
		case 5: msgpack_pack_fix_int16(pk, (int16_t)v); break;
		case 6: msgpack_pack_fix_int32(pk, (int32_t)v); break;
		default: msgpack_pack_fix_int64(pk, (int64_t)v); break;
		}
		break;
	case 10: msgpack_pack_int64(pk, (int64_t)(v % 200) - 100); break;
	case 11: case 12:
		n = (v % 20 == 0) ? 16 + v % 10 : v % 5;
		msgpack_pack_array(pk, n);
		for (size_t i = 0; i < n; i++)
			pack_random(pk, rng, depth_left - 1);
		break;
	default:
		n = (v % 20 == 0) ? 16 + v % 5 : v % 4;
		msgpack_pack_map(pk, n);
		for (size_t i = 0; i < 2 * n; i++)
			pack_random(pk, rng, depth_left - 1);
		break;
	}
}

START_TEST(scan_random_values_agree)
{
	uint64_t rng = 0x9e3779b97f4a7c15ull;
	struct pk p;

	junk_init();
	pk_init(&p);
	for (int it = 0; it < 3000; it++) {
		size_t got = 0, sl = 0;
		const uint8_t *ss;
		struct mp_cur c;
		int r;

		msgpack_sbuffer_clear(&p.sb);
		pack_random(&p.pk, &rng, (unsigned)(it % MP_DEPTH_MAX) + 1);
		r = mp_scan_one(pk_data(&p), p.sb.size, MP_DEPTH_MAX, &got);
		REQUIRE(r == 1);
		REQUIRE(got == p.sb.size);
		mp_cur_init(&c, pk_data(&p), p.sb.size);
		REQUIRE(mp_skip(&c, &ss, &sl) == 0);
		REQUIRE(ss == pk_data(&p) && sl == p.sb.size && mp_cur_done(&c));
		REQUIRE(msgpack_accepts(pk_data(&p), p.sb.size));
		if (p.sb.size < 400) {
			for (size_t k = 0; k < p.sb.size; k++)
				REQUIRE(mp_scan_one(pk_data(&p), k, MP_DEPTH_MAX, &got) == 0);
		}
	}
	pk_free(&p);
}
END_TEST

/* Random bytes: whenever the scanner calls a prefix complete, msgpack-c
 * must decode exactly that prefix.  (Only complete values are handed to
 * msgpack-c: it would try to allocate for huge declared arrays.) */
START_TEST(scan_fuzz_bytes_agree)
{
	static const uint8_t alphabet[] = {
		0x00, 0x05, 0x7f, 0x80, 0x81, 0x82, 0x90, 0x91, 0x92, 0x93, 0xa0, 0xa1,
		0xa3, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc7, 0xca, 0xcb, 0xcc, 0xcd,
		0xce, 0xcf, 0xd0, 0xd3, 0xd4, 0xd5, 0xd8, 0xd9, 0xdc, 0xdd, 0xde, 0xdf,
		0xe0, 0xff, 0x01, 0x02, 0x00, 0x00,
	};
	uint64_t rng = 12345;
	uint8_t buf[48];
	unsigned complete = 0;

	for (int it = 0; it < 200000; it++) {
		size_t n = 1 + rnd(&rng) % sizeof(buf), got = 0;
		int r;

		for (size_t i = 0; i < n; i++)
			buf[i] = alphabet[rnd(&rng) % sizeof(alphabet)];
		r = mp_scan_one(buf, n, MP_DEPTH_MAX, &got);
		REQUIRE(r == 1 || r == 0 || r == -EBADMSG || r == -ELOOP);
		if (r == 1) {
			struct mp_cur c;

			complete++;
			REQUIRE(got >= 1 && got <= n);
			REQUIRE(msgpack_accepts(buf, got));
			mp_cur_init(&c, buf, got);
			REQUIRE(mp_skip(&c, NULL, NULL) == 0 && mp_cur_done(&c));
		}
	}
	ck_assert_uint_gt(complete, 1000);
}
END_TEST

/* ---- mp_scan: nesting --------------------------------------------------- */

enum { NEST_FIXARRAY, NEST_ARRAY16, NEST_ARRAY32, NEST_FIXMAP_VAL, NEST_MAP16_KEY,
       NEST_MAP32_VAL, NEST_MIXED, NEST_KINDS };
enum { INNER_SCALAR, INNER_EMPTY_ARRAY, INNER_EMPTY_MAP, INNER_EMPTY_ARRAY16 };

/* levels wrapping containers of the given kind around one inner element.
 * Returns the number of bytes written; *ret_containers counts every array
 * and map on the path, the inner one included. */
static size_t nest(uint8_t *buf, unsigned levels, int kind, int inner,
		   unsigned *ret_containers)
{
	size_t n = 0;
	unsigned suffixes = 0;

	for (unsigned i = 0; i < levels; i++) {
		int k = kind == NEST_MIXED ? (int)(i % NEST_MIXED) : kind;

		switch (k) {
		case NEST_FIXARRAY: buf[n++] = 0x91; break;
		case NEST_ARRAY16: memcpy(buf + n, "\xdc\x00\x01", 3); n += 3; break;
		case NEST_ARRAY32: memcpy(buf + n, "\xdd\x00\x00\x00\x01", 5); n += 5; break;
		case NEST_FIXMAP_VAL: memcpy(buf + n, "\x81\xa1k", 3); n += 3; break;
		case NEST_MAP16_KEY:
			memcpy(buf + n, "\xde\x00\x01", 3);
			n += 3;
			suffixes++;
			break;
		default: memcpy(buf + n, "\xdf\x00\x00\x00\x01\xc0", 6); n += 6; break;
		}
	}
	switch (inner) {
	case INNER_SCALAR: buf[n++] = 0x2a; break;
	case INNER_EMPTY_ARRAY: buf[n++] = 0x90; break;
	case INNER_EMPTY_MAP: buf[n++] = 0x80; break;
	default: memcpy(buf + n, "\xdc\x00\x00", 3); n += 3; break;
	}
	while (suffixes--)
		buf[n++] = 0xc0;           /* the value after a container key */
	*ret_containers = levels + (inner != INNER_SCALAR);
	return n;
}

/* Nesting counts arrays and maps on the path (PROTOCOL.md: "deepest nesting
 * of arrays/maps in a message, the envelope included"): a value with exactly
 * max_depth of them passes, one more is -ELOOP. */
START_TEST(scan_depth_limit)
{
	static const uint32_t limits[] = { 1, 2, 3, 5, 31, 32 };
	uint8_t buf[512];

	for (size_t li = 0; li < sizeof(limits) / sizeof(limits[0]); li++) {
		uint32_t max = limits[li];

		for (int kind = 0; kind < NEST_KINDS; kind++) {
			unsigned cont;
			size_t n, got = 0;
			int r;

			n = nest(buf, max, kind, INNER_SCALAR, &cont);
			r = mp_scan_one(buf, n, max, &got);
			ck_assert_msg(r == 1 && got == n,
				      "limit %u kind %d: %u containers: r=%d", max, kind, cont, r);
			n = nest(buf, max + 1, kind, INNER_SCALAR, &cont);
			r = mp_scan_one(buf, n, max, &got);
			ck_assert_msg(r == -ELOOP, "limit %u kind %d: %u containers: r=%d",
				      max, kind, cont, r);
			/* max containers with an empty innermost one: at the limit */
			n = nest(buf, max - 1, kind, INNER_EMPTY_ARRAY, &cont);
			r = mp_scan_one(buf, n, max, &got);
			ck_assert_msg(r == 1 && got == n, "limit %u kind %d: %u containers: r=%d",
				      max, kind, cont, r);
		}
	}
	/* The scanner's own ceiling is MP_DEPTH_MAX whatever is asked. */
	{
		unsigned cont;
		size_t got = 0, n = nest(buf, MP_DEPTH_MAX + 1, NEST_FIXARRAY, INNER_SCALAR, &cont);

		ck_assert_int_eq(mp_scan_one(buf, n, 1000, &got), -ELOOP);
		n = nest(buf, MP_DEPTH_MAX, NEST_FIXARRAY, INNER_SCALAR, &cont);
		ck_assert_int_eq(mp_scan_one(buf, n, 1000, &got), 1);
		ck_assert_uint_eq(got, n);
	}
	/* Depth is per path, not a total: many siblings at the limit are fine. */
	{
		size_t n = 0, got = 0;

		buf[n++] = 0x9f;                          /* 15 siblings */
		for (int s = 0; s < 15; s++) {
			for (int d = 0; d < 2; d++)
				buf[n++] = 0x91;
			buf[n++] = 0x01;
		}
		ck_assert_int_eq(mp_scan_one(buf, n, 3, &got), 1);
		ck_assert_uint_eq(got, n);
		ck_assert_int_eq(mp_scan_one(buf, n, 2, &got), -ELOOP);
	}
}
END_TEST

/* One container too many is too deep even when the innermost container is
 * empty: msgpack-c counts it (and reports NOMEM), so must the scanner. */
START_TEST(scan_depth_empty_innermost)
{
	static const int inners[] = { INNER_EMPTY_ARRAY, INNER_EMPTY_MAP, INNER_EMPTY_ARRAY16 };
	static const uint32_t limits[] = { 1, 3, 32 };
	uint8_t buf[512];

	for (size_t li = 0; li < sizeof(limits) / sizeof(limits[0]); li++) {
		for (size_t ii = 0; ii < sizeof(inners) / sizeof(inners[0]); ii++) {
			unsigned cont;
			size_t got = 0, n = nest(buf, limits[li], NEST_FIXARRAY, inners[ii], &cont);
			int r = mp_scan_one(buf, n, limits[li], &got);

			ck_assert_msg(r == -ELOOP,
				      "limit %u: %u nested containers, innermost empty (last byte "
				      "%02x, %zu bytes): mp_scan_one returned %d, expected -ELOOP",
				      limits[li], cont, buf[n - 1], n, r);
		}
	}
}
END_TEST

/* The promise in mp_frame.h: every frame handed out may be given to
 * msgpack-c's unpacker.  Checked over values around the depth limit. */
START_TEST(frame_output_unpacks_with_msgpack)
{
	struct mp_frame_limits lim = { 64 * MiB, MP_DEPTH_MAX };
	uint8_t buf[512];

	for (int kind = 0; kind < NEST_KINDS; kind++) {
		for (int inner = INNER_SCALAR; inner <= INNER_EMPTY_ARRAY16; inner++) {
			for (unsigned levels = 28; levels <= 34; levels++) {
				struct mp_frame f;
				const uint8_t *fr;
				size_t fl;
				unsigned cont;
				size_t n = nest(buf, levels, kind, inner, &cont);
				int r;

				mp_frame_init(&f, &lim);
				ck_assert_int_eq(mp_frame_push(&f, buf, n), 0);
				r = mp_frame_next(&f, &fr, &fl);
				if (r == 1) {
					ck_assert_msg(msgpack_accepts(fr, fl),
						      "mp_frame handed out %u nested containers "
						      "(kind %d, inner %d) that msgpack-c rejects",
						      cont, kind, inner);
				} else {
					ck_assert_int_eq(r, -ELOOP);
					ck_assert_uint_gt(cont, MP_DEPTH_MAX);
				}
				mp_frame_free(&f);
			}
		}
	}
}
END_TEST

/* ---- mp_scan: huge declared counts ------------------------------------- */

START_TEST(scan_huge_declared_count)
{
	static const uint8_t arr[] = { 0xdd, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00 };
	static const uint8_t map[] = { 0xdf, 0xff, 0xff, 0xff, 0xff, 0xc0, 0xc0, 0x01 };
	static const uint8_t arr16[] = { 0xdc, 0xff, 0xff, 0x01 };
	static const uint8_t str32[] = { 0xdb, 0xff, 0xff, 0xff, 0xff, 'a' };
	static const uint8_t bin32[] = { 0xc6, 0xff, 0xff, 0xff, 0xff, 'a' };
	static const uint8_t ext32[] = { 0xc9, 0xff, 0xff, 0xff, 0xff, 0x01, 'a' };
	static const struct { const uint8_t *b; size_t n; } v[] = {
		{ arr, sizeof(arr) }, { map, sizeof(map) }, { arr16, sizeof(arr16) },
		{ str32, sizeof(str32) }, { bin32, sizeof(bin32) }, { ext32, sizeof(ext32) },
	};

	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		size_t got = 4242;
		struct mp_scan s;
		int r;
#ifdef COUNT_ALLOCS
		size_t before = alloc_calls;
#endif
		r = mp_scan_one(v[i].b, v[i].n, MP_DEPTH_MAX, &got);
		mp_scan_init(&s, MP_DEPTH_MAX);
		for (size_t k = 0; k <= v[i].n; k++)
			REQUIRE(mp_scan_feed(&s, v[i].b, k) == 0);
#ifdef COUNT_ALLOCS
		ck_assert_msg(alloc_calls == before, "case %zu allocated", i);
#endif
		ck_assert_msg(r == 0, "case %zu: r=%d", i, r);
		ck_assert_uint_eq(got, 4242);
		ck_assert_uint_le(s.off, v[i].n);
	}
}
END_TEST

/* dd/df with a 4G count followed by a flood of tiny elements: the framer
 * must give up once it holds more than max_frame bytes. */
START_TEST(frame_huge_declared_count_emsgsize)
{
	static const uint8_t heads[2][5] = {
		{ 0xdd, 0xff, 0xff, 0xff, 0xff },
		{ 0xdf, 0xff, 0xff, 0xff, 0xff },
	};
	const size_t chunk = 64 * 1024;
	struct mp_frame_limits lim = { 1 * MiB, MP_DEPTH_MAX };
	uint8_t *zeros = calloc(1, chunk);

	for (int h = 0; h < 2; h++) {
		struct mp_frame f;
		const uint8_t *fr;
		size_t fl, fed = 0;
		int r = 0;

		mp_frame_init(&f, &lim);
		ck_assert_int_eq(mp_frame_push(&f, heads[h], 5), 0);
		ck_assert_int_eq(mp_frame_next(&f, &fr, &fl), 0);
		while (fed < 2 * MiB) {
			ck_assert_int_eq(mp_frame_push(&f, zeros, chunk), 0);
			fed += chunk;
			r = mp_frame_next(&f, &fr, &fl);
			if (mp_frame_pending(&f) < lim.max_frame)
				ck_assert_msg(r == 0, "head %02x: %zu held: r=%d", heads[h][0],
					      mp_frame_pending(&f), r);
			else if (mp_frame_pending(&f) > lim.max_frame) {
				ck_assert_msg(r == -EMSGSIZE, "head %02x: %zu held: r=%d",
					      heads[h][0], mp_frame_pending(&f), r);
				break;
			}
		}
		ck_assert_int_eq(r, -EMSGSIZE);
		ck_assert_uint_le(fed, lim.max_frame + chunk);
		mp_frame_free(&f);
	}
	free(zeros);
}
END_TEST

/* A large frame's buffer is handed over; the frame stays readable there,
 * and the bytes after it (a second frame, cut) carry on in the framer. */
START_TEST(frame_take_hands_over_the_buffer)
{
	struct mp_frame_limits lim = { 64 * MiB, MP_DEPTH_MAX };
	const size_t big = 300 * 1024;
	uint8_t *src = malloc(big + 16), *owned;
	const uint8_t *fr;
	size_t fl;
	struct mp_frame f;

	ck_assert_ptr_nonnull(src);
	/* bin32 of big - 5 bytes, then [1, 2] cut after its first byte. */
	src[0] = 0xc6;
	src[1] = (uint8_t)((big - 5) >> 24);
	src[2] = (uint8_t)((big - 5) >> 16);
	src[3] = (uint8_t)((big - 5) >> 8);
	src[4] = (uint8_t)(big - 5);
	for (size_t i = 5; i < big; i++)
		src[i] = (uint8_t)(i * 31);
	src[big] = 0x92;
	src[big + 1] = 0x01;
	mp_frame_init(&f, &lim);
	ck_assert_int_eq(mp_frame_push(&f, src, big + 2), 0);
	ck_assert_int_eq(mp_frame_next(&f, &fr, &fl), 1);
	ck_assert_uint_eq(fl, big);
	/* Refused while the buffer is mostly not what the caller keeps. */
	ck_assert_ptr_null(mp_frame_take(&f, 100));
	owned = mp_frame_take(&f, fl);
	ck_assert_ptr_nonnull(owned);
	ck_assert(fr >= owned && memcmp(fr, src, big) == 0);
	/* The framer goes on with the rest. */
	ck_assert_uint_eq(mp_frame_pending(&f), 2);
	ck_assert_int_eq(mp_frame_next(&f, &fr, &fl), 0);
	ck_assert_int_eq(mp_frame_push(&f, "\x02", 1), 0);
	ck_assert_int_eq(mp_frame_next(&f, &fr, &fl), 1);
	ck_assert_uint_eq(fl, 3);
	ck_assert(memcmp(fr, "\x92\x01\x02", 3) == 0);
	ck_assert_int_eq(mp_frame_next(&f, &fr, &fl), 0);
	free(owned);
	mp_frame_free(&f);
	free(src);
}
END_TEST

/* mp_obj_scalar gives what msgpack_unpack gives, for every first byte
 * followed by many payloads, whole and cut. */
static void obj_same(const uint8_t *buf, size_t n)
{
	msgpack_object fast;
	msgpack_object slow;
	msgpack_zone zone;
	size_t got = mp_obj_scalar(buf, n, &fast), off = 0, whole;
	msgpack_unpack_return ur;

	/* msgpack_unpack only on measured input (a random count would make
	 * it allocate that many objects); what is not whole is declined. */
	if (mp_scan_one(buf, n, MP_DEPTH_MAX, &whole) != 1) {
		ck_assert_msg(got == 0, "byte %02x, %zu bytes: decoded a cut element", buf[0], n);
		return;
	}
	msgpack_zone_init(&zone, 256);
	ur = msgpack_unpack((const char *)buf, n, &off, &zone, &slow);
	if (got > 0) {
		ck_assert_msg(ur == MSGPACK_UNPACK_SUCCESS || ur == MSGPACK_UNPACK_EXTRA_BYTES,
			      "byte %02x, %zu bytes: msgpack_unpack says %d", buf[0], n, (int)ur);
		ck_assert_uint_eq(got, off);
		ck_assert_int_eq(fast.type, slow.type);
		if (fast.type == MSGPACK_OBJECT_FLOAT32 || fast.type == MSGPACK_OBJECT_FLOAT64)
			ck_assert(memcmp(&fast.via.f64, &slow.via.f64, sizeof(double)) == 0);
		else
			ck_assert_msg(msgpack_object_equal(fast, slow), "byte %02x: values differ",
				      buf[0]);
		if (fast.type == MSGPACK_OBJECT_STR && fast.via.str.size > 0)
			ck_assert_ptr_eq(fast.via.str.ptr, slow.via.str.ptr);
		if (fast.type == MSGPACK_OBJECT_BIN && fast.via.bin.size > 0)
			ck_assert_ptr_eq(fast.via.bin.ptr, slow.via.bin.ptr);
	} else if (ur == MSGPACK_UNPACK_SUCCESS || ur == MSGPACK_UNPACK_EXTRA_BYTES) {
		/* Declined: only for what it does not claim to decode. */
		ck_assert_msg(slow.type == MSGPACK_OBJECT_ARRAY || slow.type == MSGPACK_OBJECT_MAP ||
			      slow.type == MSGPACK_OBJECT_EXT,
			      "byte %02x, %zu bytes: declined a whole scalar", buf[0], n);
	}
	msgpack_zone_destroy(&zone);
}

START_TEST(obj_scalar_matches_msgpack_unpack)
{
	uint8_t buf[300];
	uint32_t seed = 12345;

	for (unsigned b = 0; b < 256; b++) {
		for (int rep = 0; rep < 200; rep++) {
			size_t n = 1 + (size_t)(rep % 40);

			buf[0] = (uint8_t)b;
			for (size_t i = 1; i < sizeof(buf); i++) {
				seed = seed * 1103515245u + 12345u;
				buf[i] = (uint8_t)(seed >> 16);
			}
			/* Lengths of str8/bin8 that fit; sign bytes of both kinds. */
			if (rep & 1)
				buf[1] = (uint8_t)(rep % 30);
			if (rep % 3 == 0)
				n = sizeof(buf);
			obj_same(buf, n);
		}
	}
	/* Edges of each integer width, through msgpack-c's own packer. */
	{
		static const int64_t iv[] = { 0, 1, -1, -32, -33, 127, 128, -128, -129, 255, 256,
					      32767, 32768, -32768, -32769, 65535, 65536,
					      INT32_MAX, (int64_t)INT32_MAX + 1, INT32_MIN,
					      (int64_t)INT32_MIN - 1, INT64_MAX, INT64_MIN };
		msgpack_sbuffer sb;
		msgpack_packer pk;

		msgpack_sbuffer_init(&sb);
		msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
		for (size_t i = 0; i < sizeof(iv) / sizeof(iv[0]); i++) {
			sb.size = 0;
			msgpack_pack_int64(&pk, iv[i]);
			obj_same((const uint8_t *)sb.data, sb.size);
			sb.size = 0;
			msgpack_pack_uint64(&pk, (uint64_t)iv[i]);
			obj_same((const uint8_t *)sb.data, sb.size);
		}
		sb.size = 0;
		msgpack_pack_float(&pk, 1.5f);
		obj_same((const uint8_t *)sb.data, sb.size);
		sb.size = 0;
		msgpack_pack_double(&pk, -2.25);
		obj_same((const uint8_t *)sb.data, sb.size);
		msgpack_sbuffer_destroy(&sb);
	}
}
END_TEST

/* ---- mp_scan_feed resumability ------------------------------------------ */

static void check_resumable(const uint8_t *buf, size_t n, uint32_t max_depth,
			    const size_t *steps, size_t nsteps)
{
	size_t one_len = 0, len = 0, last_off = 0, si = 0;
	int one = mp_scan_one(buf, n, max_depth, &one_len);
	struct mp_scan s;
	int r = 0;

	mp_scan_init(&s, max_depth);
	for (;;) {
		r = mp_scan_feed(&s, buf, len);
		REQUIRE(s.off >= last_off);
		REQUIRE(s.off <= len);
		last_off = s.off;
		if (r != 0 || len == n)
			break;
		len += nsteps ? steps[si++ % nsteps] : 1;
		if (len > n)
			len = n;
	}
	REQUIRE(r == one);
	if (r == 1) {
		REQUIRE(s.off == one_len);
		/* Complete stays complete, off stays put. */
		REQUIRE(mp_scan_feed(&s, buf, n) == 1);
		REQUIRE(s.off == one_len);
	}
}

START_TEST(scan_feed_resumable)
{
	static const size_t steps_a[] = { 1 };
	static const size_t steps_b[] = { 3, 1, 7, 2, 64, 5 };
	static const size_t steps_c[] = { 4096, 1, 1000 };
	uint64_t rng = 777;
	struct pk p;
	uint8_t nb[512];

	junk_init();
	pk_init(&p);
	for (int it = 0; it < 400; it++) {
		msgpack_sbuffer_clear(&p.sb);
		pack_random(&p.pk, &rng, 1 + (unsigned)it % 12);
		/* Trailing junk must not change anything. */
		msgpack_sbuffer_write(&p.sb, "\xc1\xc1", 2);
		check_resumable(pk_data(&p), p.sb.size, MP_DEPTH_MAX, steps_a, 1);
		check_resumable(pk_data(&p), p.sb.size, MP_DEPTH_MAX, steps_b, 6);
		check_resumable(pk_data(&p), p.sb.size, MP_DEPTH_MAX, steps_c, 3);
	}
	/* Errors come out the same when reached incrementally. */
	for (int kind = 0; kind < NEST_KINDS; kind++) {
		unsigned cont;
		size_t n = nest(nb, 34, kind, INNER_SCALAR, &cont);

		check_resumable(nb, n, MP_DEPTH_MAX, steps_a, 1);
		check_resumable(nb, n, 5, steps_b, 6);
		n = nest(nb, 10, kind, INNER_SCALAR, &cont);
		nb[n - 1] = 0xc1;
		check_resumable(nb, n, MP_DEPTH_MAX, steps_a, 1);
	}
	pk_free(&p);
}
END_TEST

START_TEST(scan_feed_partial_header_no_progress)
{
	/* str16 of 300: off must not move past the header until the payload
	 * is all there, and must land exactly on the end. */
	uint8_t buf[303];
	struct mp_scan s;

	buf[0] = 0xda;
	buf[1] = 0x01;
	buf[2] = 0x2c;
	memset(buf + 3, 0xc1, 300);
	mp_scan_init(&s, MP_DEPTH_MAX);
	for (size_t k = 0; k < sizeof(buf); k++) {
		REQUIRE(mp_scan_feed(&s, buf, k) == 0);
		REQUIRE(s.off == 0);
	}
	ck_assert_int_eq(mp_scan_feed(&s, buf, sizeof(buf)), 1);
	ck_assert_uint_eq(s.off, sizeof(buf));
}
END_TEST

/* ---- mp_cur readers ----------------------------------------------------- */

/* One sample of each wire type, for wrong-type checks. */
static const struct { const char *b; size_t n; } samples[] = {
	{ "\x05", 1 },                         /* 0 uint fixint */
	{ "\xcd\x01\x00", 3 },                 /* 1 uint16 */
	{ "\xff", 1 },                         /* 2 neg fixint */
	{ "\xd1\xff\x00", 3 },                 /* 3 int16 neg */
	{ "\xca\x00\x00\x00\x00", 5 },         /* 4 float32 */
	{ "\xcb\x00\x00\x00\x00\x00\x00\x00\x00", 9 }, /* 5 float64 */
	{ "\xc0", 1 },                         /* 6 nil */
	{ "\xc3", 1 },                         /* 7 true */
	{ "\xa2hi", 3 },                       /* 8 fixstr */
	{ "\xd9\x02hi", 4 },                   /* 9 str8 */
	{ "\xc4\x02hi", 4 },                   /* 10 bin8 */
	{ "\x92\x01\x02", 3 },                 /* 11 fixarray */
	{ "\xdc\x00\x01\x01", 4 },             /* 12 array16 */
	{ "\x81\x01\x02", 3 },                 /* 13 fixmap */
	{ "\xde\x00\x01\x01\x02", 5 },         /* 14 map16 */
	{ "\xd4\x01\x02", 3 },                 /* 15 fixext1 */
	{ "\xc1", 1 },                         /* 16 never used */
	{ "", 0 },                             /* 17 empty */
};
#define N_SAMPLES (sizeof(samples) / sizeof(samples[0]))

enum { RD_ARRAY, RD_MAP, RD_U64, RD_I64, RD_BOOL, RD_NIL, RD_STR, RD_N };

static int do_read(int which, struct mp_cur *c)
{
	uint32_t n;
	uint64_t u;
	int64_t i;
	bool b;
	const char *s;

	switch (which) {
	case RD_ARRAY: return mp_read_array(c, &n);
	case RD_MAP: return mp_read_map(c, &n);
	case RD_U64: return mp_read_u64(c, &u);
	case RD_I64: return mp_read_i64(c, &i);
	case RD_BOOL: return mp_read_bool(c, &b);
	case RD_NIL: return mp_read_nil(c);
	default: return mp_read_str(c, &s, &n);
	}
}

static bool reader_accepts(int which, size_t sample)
{
	switch (which) {
	case RD_ARRAY: return sample == 11 || sample == 12;
	case RD_MAP: return sample == 13 || sample == 14;
	case RD_U64: return sample <= 1;
	case RD_I64: return sample <= 3;
	case RD_BOOL: return sample == 7;
	case RD_NIL: return sample == 6;
	default: return sample == 8 || sample == 9;
	}
}

START_TEST(cur_reader_type_matrix)
{
	for (int which = 0; which < RD_N; which++) {
		for (size_t si = 0; si < N_SAMPLES; si++) {
			struct mp_cur c;
			const uint8_t *p0;
			int r;

			mp_cur_init(&c, samples[si].b, samples[si].n);
			p0 = c.p;
			r = do_read(which, &c);
			if (reader_accepts(which, si)) {
				ck_assert_msg(r == 0, "reader %d sample %zu: r=%d", which, si, r);
				ck_assert_msg(c.p > p0, "reader %d sample %zu: no progress", which, si);
			} else {
				ck_assert_msg(r == -EBADMSG, "reader %d sample %zu: r=%d", which, si, r);
				ck_assert_msg(c.p == p0 && c.end == p0 + samples[si].n,
					      "reader %d sample %zu moved the cursor", which, si);
			}
		}
	}
}
END_TEST

START_TEST(cur_reader_truncated)
{
	/* Every strict prefix of a readable element is -EBADMSG, cursor kept. */
	static const struct { const char *b; size_t n; int which; } v[] = {
		{ "\xdc\x00\x10", 3, RD_ARRAY },
		{ "\xdd\x00\x00\x00\x10", 5, RD_ARRAY },
		{ "\xde\x00\x10", 3, RD_MAP },
		{ "\xdf\x00\x00\x00\x10", 5, RD_MAP },
		{ "\xcc\x80", 2, RD_U64 },
		{ "\xcd\x01\x00", 3, RD_U64 },
		{ "\xce\x00\x01\x00\x00", 5, RD_U64 },
		{ "\xcf\x00\x00\x00\x01\x00\x00\x00\x00", 9, RD_U64 },
		{ "\xd0\x80", 2, RD_I64 },
		{ "\xd3\x80\x00\x00\x00\x00\x00\x00\x00", 9, RD_I64 },
		{ "\xa3" "abc", 4, RD_STR },
		{ "\xd9\x03" "abc", 5, RD_STR },
		{ "\xda\x00\x03" "abc", 6, RD_STR },
		{ "\xdb\x00\x00\x00\x03" "abc", 8, RD_STR },
	};

	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		struct mp_cur c;

		mp_cur_init(&c, v[i].b, v[i].n);
		ck_assert_msg(do_read(v[i].which, &c) == 0, "case %zu whole", i);
		ck_assert_msg(mp_cur_done(&c), "case %zu not consumed", i);
		for (size_t k = 0; k < v[i].n; k++) {
			mp_cur_init(&c, v[i].b, k);
			ck_assert_msg(do_read(v[i].which, &c) == -EBADMSG, "case %zu prefix %zu", i, k);
			ck_assert_msg(c.p == (const uint8_t *)v[i].b, "case %zu prefix %zu moved", i, k);
		}
	}
}
END_TEST

START_TEST(cur_read_values)
{
	struct pk p;
	struct mp_cur c;
	uint32_t n;
	uint64_t u;
	int64_t i;
	bool b;
	const char *s;
	uint32_t sl;

	junk_init();
	pk_init(&p);
	msgpack_pack_array(&p.pk, 70000);
	msgpack_pack_map(&p.pk, 17);
	msgpack_pack_true(&p.pk);
	msgpack_pack_false(&p.pk);
	msgpack_pack_nil(&p.pk);
	pstr(&p.pk, "hello");
	msgpack_pack_str(&p.pk, 0);
	msgpack_pack_str(&p.pk, 70000);
	msgpack_pack_str_body(&p.pk, junk, 70000);
	msgpack_pack_uint64(&p.pk, 300);
	msgpack_pack_int64(&p.pk, -300);

	mp_cur_init(&c, pk_data(&p), p.sb.size);
	ck_assert_int_eq(mp_read_array(&c, &n), 0);
	ck_assert_uint_eq(n, 70000);
	ck_assert_int_eq(mp_read_map(&c, &n), 0);
	ck_assert_uint_eq(n, 17);
	ck_assert_int_eq(mp_read_bool(&c, &b), 0);
	ck_assert(b);
	ck_assert_int_eq(mp_read_bool(&c, &b), 0);
	ck_assert(!b);
	ck_assert_int_eq(mp_read_nil(&c), 0);
	ck_assert_int_eq(mp_read_str(&c, &s, &sl), 0);
	ck_assert_uint_eq(sl, 5);
	ck_assert(memcmp(s, "hello", 5) == 0);
	ck_assert(s > (const char *)pk_data(&p) && s < (const char *)pk_data(&p) + p.sb.size);
	ck_assert_int_eq(mp_read_str(&c, &s, &sl), 0);
	ck_assert_uint_eq(sl, 0);
	ck_assert_int_eq(mp_read_str(&c, &s, &sl), 0);
	ck_assert_uint_eq(sl, 70000);
	ck_assert(memcmp(s, junk, 70000) == 0);
	ck_assert_int_eq(mp_read_u64(&c, &u), 0);
	ck_assert_uint_eq(u, 300);
	/* -300 is not a u64: rejected, cursor kept, then read as i64. */
	{
		const uint8_t *p0 = c.p;

		ck_assert_int_eq(mp_read_u64(&c, &u), -EBADMSG);
		ck_assert_ptr_eq(c.p, p0);
	}
	ck_assert_int_eq(mp_read_i64(&c, &i), 0);
	ck_assert_int_eq(i, -300);
	ck_assert(mp_cur_done(&c));
	ck_assert_int_eq(mp_peek(&c), MP_T_INVALID);
	ck_assert_int_eq(mp_read_nil(&c), -EBADMSG);
	pk_free(&p);
}
END_TEST

START_TEST(cur_int_edges)
{
	static const struct {
		const char *b; size_t n;
		int u_ok; uint64_t u;
		int i_ok; int64_t i;
	} v[] = {
		{ "\x00", 1, 1, 0, 1, 0 },
		{ "\x7f", 1, 1, 127, 1, 127 },
		{ "\xff", 1, 0, 0, 1, -1 },
		{ "\xe0", 1, 0, 0, 1, -32 },
		{ "\xcc\xff", 2, 1, 255, 1, 255 },
		{ "\xd0\x7f", 2, 1, 127, 1, 127 },     /* int8 >= 0 is fine for u64 */
		{ "\xd0\x80", 2, 0, 0, 1, -128 },
		{ "\xd0\x00", 2, 1, 0, 1, 0 },
		{ "\xd1\x80\x00", 3, 0, 0, 1, INT16_MIN },
		{ "\xd1\x7f\xff", 3, 1, INT16_MAX, 1, INT16_MAX },
		{ "\xd2\x80\x00\x00\x00", 5, 0, 0, 1, INT32_MIN },
		{ "\xd2\xff\xff\xff\xff", 5, 0, 0, 1, -1 },
		{ "\xce\xff\xff\xff\xff", 5, 1, UINT32_MAX, 1, UINT32_MAX },
		{ "\xd3\x80\x00\x00\x00\x00\x00\x00\x00", 9, 0, 0, 1, INT64_MIN },
		{ "\xd3\x7f\xff\xff\xff\xff\xff\xff\xff", 9, 1, INT64_MAX, 1, INT64_MAX },
		{ "\xd3\xff\xff\xff\xff\xff\xff\xff\xff", 9, 0, 0, 1, -1 },
		{ "\xcf\x7f\xff\xff\xff\xff\xff\xff\xff", 9, 1, INT64_MAX, 1, INT64_MAX },
		{ "\xcf\x80\x00\x00\x00\x00\x00\x00\x00", 9, 1, (uint64_t)INT64_MAX + 1, 0, 0 },
		{ "\xcf\xff\xff\xff\xff\xff\xff\xff\xff", 9, 1, UINT64_MAX, 0, 0 },
		{ "\xca\x00\x00\x00\x00", 5, 0, 0, 0, 0 },
		{ "\xc2", 1, 0, 0, 0, 0 },
	};

	for (size_t k = 0; k < sizeof(v) / sizeof(v[0]); k++) {
		struct mp_cur c;
		uint64_t u = 0xdead;
		int64_t i = 0xbeef;
		int r;

		mp_cur_init(&c, v[k].b, v[k].n);
		r = mp_read_u64(&c, &u);
		if (v[k].u_ok) {
			ck_assert_msg(r == 0 && u == v[k].u && mp_cur_done(&c),
				      "case %zu u64: r=%d u=%llu", k, r, (unsigned long long)u);
		} else {
			ck_assert_msg(r == -EBADMSG && c.p == (const uint8_t *)v[k].b && u == 0xdead,
				      "case %zu u64 should fail: r=%d", k, r);
		}
		mp_cur_init(&c, v[k].b, v[k].n);
		r = mp_read_i64(&c, &i);
		if (v[k].i_ok) {
			ck_assert_msg(r == 0 && i == v[k].i && mp_cur_done(&c),
				      "case %zu i64: r=%d i=%lld", k, r, (long long)i);
		} else {
			ck_assert_msg(r == -EBADMSG && c.p == (const uint8_t *)v[k].b && i == 0xbeef,
				      "case %zu i64 should fail: r=%d", k, r);
		}
	}

	/* And the packer's own encodings of the edges. */
	{
		struct pk p;
		struct mp_cur c;
		int64_t i;
		uint64_t u;

		pk_init(&p);
		msgpack_pack_int64(&p.pk, INT64_MIN);
		msgpack_pack_int64(&p.pk, INT64_MAX);
		msgpack_pack_uint64(&p.pk, UINT64_MAX);
		mp_cur_init(&c, pk_data(&p), p.sb.size);
		ck_assert_int_eq(mp_read_u64(&c, &u), -EBADMSG);
		ck_assert_int_eq(mp_read_i64(&c, &i), 0);
		ck_assert(i == INT64_MIN);
		ck_assert_int_eq(mp_read_i64(&c, &i), 0);
		ck_assert(i == INT64_MAX);
		ck_assert_int_eq(mp_read_i64(&c, &i), -EBADMSG);
		ck_assert_int_eq(mp_read_u64(&c, &u), 0);
		ck_assert(u == UINT64_MAX);
		ck_assert(mp_cur_done(&c));
		pk_free(&p);
	}
}
END_TEST

START_TEST(cur_skip_slices)
{
	struct pk p;
	size_t off[8], k = 0;
	struct mp_cur c;
	const uint8_t *st;
	size_t sl;

	junk_init();
	pk_init(&p);
	off[k++] = p.sb.size;
	msgpack_pack_uint64(&p.pk, 1);
	off[k++] = p.sb.size;
	pstr(&p.pk, "builtin.square");
	off[k++] = p.sb.size;
	msgpack_pack_map(&p.pk, 2);           /* {"a": [1, [2, {}]], [nil]: bin} */
	pstr(&p.pk, "a");
	msgpack_pack_array(&p.pk, 2);
	msgpack_pack_uint8(&p.pk, 1);
	msgpack_pack_array(&p.pk, 2);
	msgpack_pack_uint8(&p.pk, 2);
	msgpack_pack_map(&p.pk, 0);
	msgpack_pack_array(&p.pk, 1);
	msgpack_pack_nil(&p.pk);
	msgpack_pack_bin(&p.pk, 300);
	msgpack_pack_bin_body(&p.pk, junk, 300);
	off[k++] = p.sb.size;
	msgpack_pack_array(&p.pk, 20);
	for (int i = 0; i < 20; i++)
		msgpack_pack_array(&p.pk, 0);
	off[k++] = p.sb.size;
	msgpack_pack_ext(&p.pk, 5, 1);
	msgpack_pack_ext_body(&p.pk, junk, 5);
	off[k++] = p.sb.size;

	/* One at a time. */
	mp_cur_init(&c, pk_data(&p), p.sb.size);
	for (size_t e = 0; e + 1 < k; e++) {
		ck_assert_int_eq(mp_skip(&c, &st, &sl), 0);
		ck_assert_ptr_eq(st, pk_data(&p) + off[e]);
		ck_assert_uint_eq(sl, off[e + 1] - off[e]);
		ck_assert_ptr_eq(c.p, pk_data(&p) + off[e + 1]);
	}
	ck_assert(mp_cur_done(&c));

	/* Several at once, from the middle. */
	mp_cur_init(&c, pk_data(&p) + off[1], p.sb.size - off[1]);
	ck_assert_int_eq(mp_skip_n(&c, 3, &st, &sl), 0);
	ck_assert_ptr_eq(st, pk_data(&p) + off[1]);
	ck_assert_uint_eq(sl, off[4] - off[1]);

	/* Zero elements: an empty slice, nothing moves. */
	mp_cur_init(&c, pk_data(&p), p.sb.size);
	ck_assert_int_eq(mp_skip_n(&c, 0, &st, &sl), 0);
	ck_assert_ptr_eq(st, pk_data(&p));
	ck_assert_uint_eq(sl, 0);
	ck_assert_ptr_eq(c.p, pk_data(&p));

	/* NULL outputs are allowed. */
	ck_assert_int_eq(mp_skip_n(&c, 2, NULL, NULL), 0);
	ck_assert_ptr_eq(c.p, pk_data(&p) + off[2]);

	/* More than there is: -EBADMSG, cursor and outputs untouched. */
	mp_cur_init(&c, pk_data(&p), p.sb.size);
	st = NULL;
	sl = 99;
	ck_assert_int_eq(mp_skip_n(&c, k, &st, &sl), -EBADMSG);
	ck_assert_ptr_eq(c.p, pk_data(&p));
	ck_assert_ptr_null(st);
	ck_assert_uint_eq(sl, 99);

	/* A container cut short is -EBADMSG too. */
	mp_cur_init(&c, pk_data(&p) + off[2], off[3] - off[2] - 1);
	ck_assert_int_eq(mp_skip(&c, &st, &sl), -EBADMSG);
	ck_assert_ptr_eq(c.p, pk_data(&p) + off[2]);

	/* The marked walk: the same slice, and the end of every every-th
	 * element, for every spacing. */
	for (uint32_t every = 1; every <= k; every++) {
		size_t marks[64];

		ck_assert_uint_le(k, 64);
		mp_cur_init(&c, pk_data(&p), p.sb.size);
		ck_assert_int_eq(mp_skip_n_marked(&c, k - 1, every, marks, &st, &sl), 0);
		ck_assert_ptr_eq(st, pk_data(&p));
		ck_assert_uint_eq(sl, off[k - 1]);
		ck_assert(mp_cur_done(&c));
		for (size_t m = 0; m < (k - 1) / every; m++)
			ck_assert_uint_eq(marks[m], off[(m + 1) * every]);
		mp_cur_init(&c, pk_data(&p), p.sb.size);
		ck_assert_int_eq(mp_skip_n_marked(&c, k, every, marks, &st, &sl), -EBADMSG);
		ck_assert_ptr_eq(c.p, pk_data(&p));
	}
	pk_free(&p);

	/* 0xc1 and a lying array32 header. */
	mp_cur_init(&c, "\x92\x01\xc1", 3);
	ck_assert_int_eq(mp_skip(&c, NULL, NULL), -EBADMSG);
	mp_cur_init(&c, "\xdd\xff\xff\xff\xff\x00\x00", 7);
	ck_assert_int_eq(mp_skip(&c, NULL, NULL), -EBADMSG);
	ck_assert(!mp_cur_done(&c));
}
END_TEST

START_TEST(cur_str_eq)
{
	ck_assert(mp_str_eq("apply", 5, "apply"));
	ck_assert(!mp_str_eq("apply", 4, "apply"));
	ck_assert(!mp_str_eq("appl", 4, "apply"));
	ck_assert(!mp_str_eq("applyx", 6, "apply"));
	ck_assert(!mp_str_eq("apPly", 5, "apply"));
	ck_assert(mp_str_eq("", 0, ""));
	ck_assert(mp_str_eq("xyz", 0, ""));
	ck_assert(!mp_str_eq("x", 1, ""));
	ck_assert(!mp_str_eq("ab\0", 3, "ab"));         /* length counts, not NUL */
	ck_assert(mp_str_eq("mapping", 3, "map"));       /* not NUL-terminated input */
}
END_TEST

START_TEST(cur_peek_types)
{
	static const struct { uint8_t b; enum mp_type t; } v[] = {
		{ 0x00, MP_T_UINT }, { 0x7f, MP_T_UINT }, { 0xe0, MP_T_INT }, { 0xff, MP_T_INT },
		{ 0x80, MP_T_MAP }, { 0x8f, MP_T_MAP }, { 0x90, MP_T_ARRAY }, { 0x9f, MP_T_ARRAY },
		{ 0xa0, MP_T_STR }, { 0xbf, MP_T_STR }, { 0xc0, MP_T_NIL }, { 0xc1, MP_T_INVALID },
		{ 0xc2, MP_T_BOOL }, { 0xc3, MP_T_BOOL }, { 0xc4, MP_T_BIN }, { 0xc6, MP_T_BIN },
		{ 0xc7, MP_T_EXT }, { 0xc9, MP_T_EXT }, { 0xca, MP_T_FLOAT }, { 0xcb, MP_T_FLOAT },
		{ 0xcc, MP_T_UINT }, { 0xcf, MP_T_UINT }, { 0xd0, MP_T_INT }, { 0xd3, MP_T_INT },
		{ 0xd4, MP_T_EXT }, { 0xd8, MP_T_EXT }, { 0xd9, MP_T_STR }, { 0xdb, MP_T_STR },
		{ 0xdc, MP_T_ARRAY }, { 0xdd, MP_T_ARRAY }, { 0xde, MP_T_MAP }, { 0xdf, MP_T_MAP },
	};

	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		struct mp_cur c;

		mp_cur_init(&c, &v[i].b, 1);
		ck_assert_msg(mp_peek(&c) == v[i].t, "byte %02x: %d", v[i].b, (int)mp_peek(&c));
		ck_assert_ptr_eq(c.p, &v[i].b);
	}
}
END_TEST

/* ---- mp_rpc ------------------------------------------------------------ */

static void parse_ok(const struct pk *p, struct mp_msg *m)
{
	int ok = -1;
	uint64_t id = 0;

	ck_assert_int_eq(mp_msg_parse(pk_data(p), p->sb.size, m, &ok, &id), 0);
}

START_TEST(rpc_parse_request)
{
	struct pk p;
	struct mp_msg m;
	size_t params_off;
	int ok = 0;
	uint64_t id = 0;

	pk_init(&p);
	ck_assert_int_eq(mp_pack_request_head(&p.pk, 42, "apply"), 0);
	params_off = p.sb.size;
	msgpack_pack_array(&p.pk, 2);
	pstr(&p.pk, "builtin.square");
	msgpack_pack_uint8(&p.pk, 7);
	ck_assert_int_eq(mp_msg_parse(pk_data(&p), p.sb.size, &m, &ok, &id), 0);
	ck_assert_int_eq(m.type, MP_REQUEST);
	ck_assert_uint_eq(m.msgid, 42);
	ck_assert(mp_str_eq(m.method, m.method_len, "apply"));
	ck_assert_ptr_eq(m.body, pk_data(&p) + params_off);
	ck_assert_uint_eq(m.body_len, p.sb.size - params_off);
	ck_assert_int_eq(ok, 1);
	ck_assert_uint_eq(id, 42);
	pk_free(&p);

	/* Largest msgid. */
	pk_init(&p);
	ck_assert_int_eq(mp_pack_request_head(&p.pk, UINT64_MAX, "ping"), 0);
	msgpack_pack_array(&p.pk, 0);
	parse_ok(&p, &m);
	ck_assert(m.msgid == UINT64_MAX);
	ck_assert(mp_str_eq(m.method, m.method_len, "ping"));
	ck_assert_uint_eq(m.body_len, 1);
	ck_assert_uint_eq(m.body[0], 0x90);
	pk_free(&p);
}
END_TEST

START_TEST(rpc_parse_response)
{
	struct pk p;
	struct mp_msg m;
	size_t err_off, res_off;

	/* success: error nil, result 49 */
	pk_init(&p);
	ck_assert_int_eq(mp_pack_response_head(&p.pk, 1), 0);
	err_off = p.sb.size;
	msgpack_pack_nil(&p.pk);
	res_off = p.sb.size;
	msgpack_pack_uint8(&p.pk, 49);
	parse_ok(&p, &m);
	ck_assert_int_eq(m.type, MP_RESPONSE);
	ck_assert_uint_eq(m.msgid, 1);
	ck_assert_ptr_eq(m.error, pk_data(&p) + err_off);
	ck_assert_uint_eq(m.error_len, 1);
	ck_assert_uint_eq(m.error[0], 0xc0);
	ck_assert_ptr_eq(m.body, pk_data(&p) + res_off);
	ck_assert_uint_eq(m.body_len, 1);
	ck_assert_uint_eq(m.body[0], 49);
	pk_free(&p);

	/* failure: an error object, result nil */
	pk_init(&p);
	ck_assert_int_eq(mp_pack_response_head(&p.pk, 9000000000ull), 0);
	err_off = p.sb.size;
	ck_assert_int_eq(mp_pack_error(&p.pk, MPOOL_E_TYPE, "bad type", -1), 0);
	res_off = p.sb.size;
	msgpack_pack_nil(&p.pk);
	parse_ok(&p, &m);
	ck_assert_int_eq(m.type, MP_RESPONSE);
	ck_assert(m.msgid == 9000000000ull);
	ck_assert_ptr_eq(m.error, pk_data(&p) + err_off);
	ck_assert_uint_eq(m.error_len, res_off - err_off);
	ck_assert_uint_eq(m.body_len, 1);
	{
		struct mp_cur c;
		int code;
		const char *msg;
		uint32_t ml;
		int64_t idx;

		mp_cur_init(&c, m.error, m.error_len);
		ck_assert_int_eq(mp_read_error(&c, &code, &msg, &ml, &idx), 0);
		ck_assert_int_eq(code, MPOOL_E_TYPE);
		ck_assert(mp_str_eq(msg, ml, "bad type"));
		ck_assert_int_eq(idx, -1);
		ck_assert(mp_cur_done(&c));
	}
	pk_free(&p);
}
END_TEST

START_TEST(rpc_parse_notify)
{
	struct pk p;
	struct mp_msg m;
	size_t params_off;
	int ok = 7;
	uint64_t id = 0;

	pk_init(&p);
	ck_assert_int_eq(mp_pack_notify_head(&p.pk, "result"), 0);
	params_off = p.sb.size;
	msgpack_pack_array(&p.pk, 4);
	msgpack_pack_uint8(&p.pk, 2);
	msgpack_pack_uint8(&p.pk, 0);
	msgpack_pack_array(&p.pk, 2);
	msgpack_pack_uint8(&p.pk, 1);
	msgpack_pack_uint8(&p.pk, 4);
	msgpack_pack_array(&p.pk, 0);
	ck_assert_int_eq(mp_msg_parse(pk_data(&p), p.sb.size, &m, &ok, &id), 0);
	ck_assert_int_eq(m.type, MP_NOTIFY);
	ck_assert(mp_str_eq(m.method, m.method_len, "result"));
	ck_assert_ptr_eq(m.body, pk_data(&p) + params_off);
	ck_assert_uint_eq(m.body_len, p.sb.size - params_off);
	ck_assert_int_eq(ok, 0);                /* a notification has no msgid */
	pk_free(&p);
}
END_TEST

START_TEST(rpc_parse_any_int_encoding)
{
	/* "clients may use any valid encoding": type and msgid as uint64/int8. */
	static const uint8_t req[] = {
		0x94, 0xcf, 0, 0, 0, 0, 0, 0, 0, 0x00, 0xd0, 0x05, 0xa4, 'p', 'i', 'n', 'g', 0x90,
	};
	static const uint8_t arr16[] = { 0xdc, 0x00, 0x03, 0xcc, 0x02, 0xa1, 'x', 0x90 };
	struct mp_msg m;
	int ok;
	uint64_t id;

	ck_assert_int_eq(mp_msg_parse(req, sizeof(req), &m, &ok, &id), 0);
	ck_assert_int_eq(m.type, MP_REQUEST);
	ck_assert_uint_eq(m.msgid, 5);
	ck_assert_int_eq(mp_msg_parse(arr16, sizeof(arr16), &m, &ok, &id), 0);
	ck_assert_int_eq(m.type, MP_NOTIFY);
	ck_assert(mp_str_eq(m.method, m.method_len, "x"));
}
END_TEST

struct bad_msg {
	const char *what;
	const char *b;
	size_t n;
	int msgid_ok;
	uint64_t msgid;
};

static const struct bad_msg bad_msgs[] = {
	{ "empty input", "", 0, 0, 0 },
	{ "not an array", "\x81\x00\x01", 3, 0, 0 },
	{ "scalar", "\x05", 1, 0, 0 },
	{ "empty array", "\x90", 1, 0, 0 },
	{ "type only", "\x91\x00", 2, 0, 0 },
	{ "request arity 3", "\x93\x00\x07\xa1m", 5, 0, 0 },
	{ "request arity 5", "\x95\x00\x07\xa1m\x90\xc0", 7, 0, 0 },
	{ "response arity 3", "\x93\x01\x07\xc0", 4, 0, 0 },
	{ "response arity 5", "\x95\x01\x07\xc0\xc0\xc0", 6, 0, 0 },
	{ "notify arity 4", "\x94\x02\xa1m\x90\xc0", 6, 0, 0 },
	{ "notify arity 2", "\x92\x02\xa1m", 4, 0, 0 },
	/* the declared count disagrees with the elements present */
	{ "notify declares 4, has 3", "\x94\x02\xa1m\x90", 5, 0, 0 },
	{ "notify declares 2, has 3", "\x92\x02\xa1m\x90", 5, 0, 0 },
	{ "request declares 5, has 4", "\x95\x00\x07\xa1m\x90", 6, 0, 0 },
	{ "request declares 3, has 4", "\x93\x00\x07\xa1m\x90", 6, 0, 0 },
	{ "response declares 3, has 4", "\x93\x01\x07\xc0\xc0", 5, 0, 0 },
	{ "type 3", "\x94\x03\x07\xa1m\x90", 6, 0, 0 },
	{ "type 255", "\x94\xcc\xff\x07\xa1m\x90", 7, 0, 0 },
	{ "type -1", "\x94\xff\x07\xa1m\x90", 6, 0, 0 },
	{ "type as string", "\x94\xa1\x30\x07\xa1m\x90", 7, 0, 0 },
	{ "type nil", "\x94\xc0\x07\xa1m\x90", 6, 0, 0 },
	{ "negative msgid", "\x94\x00\xff\xa1m\x90", 6, 0, 0 },
	{ "msgid string", "\x94\x00\xa1\x31\xa1m\x90", 7, 0, 0 },
	{ "msgid float", "\x94\x00\xca\x3f\x80\x00\x00\xa1m\x90", 10, 0, 0 },
	{ "method int", "\x94\x00\x07\x05\x90", 5, 1, 7 },
	{ "method bin", "\x94\x00\x07\xc4\x01m\x90", 7, 1, 7 },
	{ "method nil", "\x94\x00\x07\xc0\x90", 5, 1, 7 },
	{ "method array", "\x94\x00\x07\x91\xa1m\x90", 7, 1, 7 },
	{ "request trailing byte", "\x94\x00\x07\xa1m\x90\xc0", 7, 1, 7 },
	{ "request trailing frame", "\x94\x00\x07\xa1m\x90\x94\x00\x08\xa1m\x90", 12, 1, 7 },
	{ "request params missing", "\x94\x00\x07\xa1m", 5, 1, 7 },
	{ "request params cut", "\x94\x00\x07\xa1m\x92\x01", 7, 1, 7 },
	{ "request params c1", "\x94\x00\x07\xa1m\xc1", 6, 1, 7 },
	{ "request method cut", "\x94\x00\x07\xa5mo", 6, 1, 7 },
	{ "request big msgid trailing",
	  "\x94\x00\xcf\xff\xff\xff\xff\xff\xff\xff\xff\xa1m\x90\x00", 15, 1, UINT64_MAX },
	{ "response trailing", "\x94\x01\x09\xc0\x01\x02", 6, 1, 9 },
	{ "response result missing", "\x94\x01\x09\xc0", 4, 1, 9 },
	{ "response error missing", "\x94\x01\x09", 3, 1, 9 },
	{ "notify method int", "\x93\x02\x01\x90", 4, 0, 0 },
	{ "notify trailing", "\x93\x02\xa1m\x90\x00", 6, 0, 0 },
};
#define N_BAD_MSGS ((int)(sizeof(bad_msgs) / sizeof(bad_msgs[0])))

START_TEST(rpc_parse_bad)
{
	const struct bad_msg *b = &bad_msgs[_i];
	struct mp_msg m, sentinel;
	int ok = 55;
	uint64_t id = 0x5a5a;
	int r;

	memset(&sentinel, 0xa5, sizeof(sentinel));
	m = sentinel;
	/* Raw bytes, not a framed element: the checked variant. */
	r = mp_msg_parse_checked((const uint8_t *)b->b, b->n, &m, &ok, &id);
	ck_assert_msg(r == -EBADMSG, "%s: r=%d", b->what, r);
	ck_assert_msg(ok == b->msgid_ok, "%s: msgid_ok=%d, expected %d", b->what, ok, b->msgid_ok);
	if (b->msgid_ok)
		ck_assert_msg(id == b->msgid, "%s: msgid=%llu", b->what, (unsigned long long)id);
	ck_assert_msg(memcmp(&m, &sentinel, sizeof(m)) == 0, "%s: *ret written on failure",
		      b->what);
	/* What the framer would hand out as one element is refused by the
	 * unchecked parser too. */
	{
		size_t got;

		if (mp_scan_one((const uint8_t *)b->b, b->n, MP_DEPTH_MAX, &got) == 1 &&
		    got == b->n) {
			r = mp_msg_parse((const uint8_t *)b->b, b->n, &m, &ok, &id);
			ck_assert_msg(r == -EBADMSG, "%s (framed): r=%d", b->what, r);
			ck_assert_msg(memcmp(&m, &sentinel, sizeof(m)) == 0,
				      "%s (framed): *ret written on failure", b->what);
		}
	}
}
END_TEST

START_TEST(rpc_error_roundtrip)
{
	static const int64_t idx[] = { -1, 0, 5, 16777215, INT64_MAX };
	static const int codes[] = { MPOOL_E_BADREQ, MPOOL_E_TASK, MPOOL_E_RESULT, 0, INT32_MAX,
				     INT32_MIN };
	char longmsg[300];

	memset(longmsg, 'm', sizeof(longmsg) - 1);
	longmsg[sizeof(longmsg) - 1] = '\0';
	for (size_t i = 0; i < sizeof(idx) / sizeof(idx[0]); i++) {
		for (size_t k = 0; k < sizeof(codes) / sizeof(codes[0]); k++) {
			const char *text = (k % 2) ? longmsg : "worker 12 killed by SIGSEGV";
			struct pk p;
			struct mp_cur c;
			int code = 0;
			const char *msg = NULL;
			uint32_t ml = 0;
			int64_t ri = 1234;
			uint32_t nk;

			pk_init(&p);
			ck_assert_int_eq(mp_pack_error(&p.pk, codes[k], text, idx[i]), 0);
			msgpack_pack_true(&p.pk);           /* the next element */
			mp_cur_init(&c, pk_data(&p), p.sb.size);
			ck_assert_int_eq(mp_read_map(&c, &nk), 0);
			ck_assert_uint_eq(nk, idx[i] >= 0 ? 3 : 2);
			mp_cur_init(&c, pk_data(&p), p.sb.size);
			ck_assert_int_eq(mp_read_error(&c, &code, &msg, &ml, &ri), 0);
			ck_assert_int_eq(code, codes[k]);
			ck_assert_uint_eq(ml, strlen(text));
			ck_assert(memcmp(msg, text, ml) == 0);
			ck_assert(ri == idx[i]);
			/* exactly the error object was consumed */
			ck_assert_ptr_eq(c.p, pk_data(&p) + p.sb.size - 1);
			pk_free(&p);
		}
	}
}
END_TEST

START_TEST(rpc_error_extra_keys)
{
	struct pk p;
	struct mp_cur c;
	int code = 0;
	const char *msg;
	uint32_t ml;
	int64_t ri;

	/* {"future": [1, {"a": bin}], "code": 4, "x": nil, "message": "boom",
	 *  "index": 3, "more": {"k": [[]]}} then a sentinel */
	pk_init(&p);
	msgpack_pack_map(&p.pk, 6);
	pstr(&p.pk, "future");
	msgpack_pack_array(&p.pk, 2);
	msgpack_pack_uint8(&p.pk, 1);
	msgpack_pack_map(&p.pk, 1);
	pstr(&p.pk, "a");
	msgpack_pack_bin(&p.pk, 3);
	msgpack_pack_bin_body(&p.pk, "\xc1\xc1\xc1", 3);
	pstr(&p.pk, "code");
	msgpack_pack_int(&p.pk, 4);
	pstr(&p.pk, "x");
	msgpack_pack_nil(&p.pk);
	pstr(&p.pk, "message");
	pstr(&p.pk, "boom");
	pstr(&p.pk, "index");
	msgpack_pack_int64(&p.pk, 3);
	pstr(&p.pk, "more");
	msgpack_pack_map(&p.pk, 1);
	pstr(&p.pk, "k");
	msgpack_pack_array(&p.pk, 1);
	msgpack_pack_array(&p.pk, 0);
	msgpack_pack_uint8(&p.pk, 0x11);
	mp_cur_init(&c, pk_data(&p), p.sb.size);
	ck_assert_int_eq(mp_read_error(&c, &code, &msg, &ml, &ri), 0);
	ck_assert_int_eq(code, 4);
	ck_assert(mp_str_eq(msg, ml, "boom"));
	ck_assert_int_eq(ri, 3);
	ck_assert_ptr_eq(c.p, pk_data(&p) + p.sb.size - 1);
	ck_assert_uint_eq(*c.p, 0x11);
	pk_free(&p);
}
END_TEST

START_TEST(rpc_error_bad)
{
	static const struct { const char *what; const char *b; size_t n; } v[] = {
		{ "not a map", "\x92\x01\x02", 3 },
		{ "int key", "\x81\x01\x02", 3 },
		{ "code string", "\x81\xa4" "code" "\xa1x", 8 },
		{ "code too big", "\x81\xa4" "code" "\xce\x80\x00\x00\x00", 11 },
		{ "code too small", "\x81\xa4" "code" "\xd3\xff\xff\xff\xff\x7f\xff\xff\xff", 15 },
		{ "message int", "\x81\xa7" "message" "\x01", 10 },
		{ "index string", "\x81\xa5" "index" "\xa1x", 9 },
		{ "cut short", "\x82\xa4" "code" "\x01", 7 },
		{ "unknown key cut", "\x81\xa1x\x92\x01", 5 },
	};

	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		struct mp_cur c;
		int code = 77;
		const char *msg = NULL;
		uint32_t ml = 77;
		int64_t ri = 77;

		mp_cur_init(&c, v[i].b, v[i].n);
		ck_assert_msg(mp_read_error(&c, &code, &msg, &ml, &ri) == -EBADMSG, "%s", v[i].what);
		ck_assert_msg(c.p == (const uint8_t *)v[i].b, "%s: cursor moved", v[i].what);
		ck_assert_msg(code == 77 && msg == NULL && ml == 77 && ri == 77,
			      "%s: outputs written on failure", v[i].what);
	}
}
END_TEST

/* ---- PROTOCOL.md examples ------------------------------------------------ */

static const uint8_t ex_apply_req[] = {
	0x94, 0x00, 0x01, 0xa5, 0x61, 0x70, 0x70, 0x6c, 0x79, 0x92, 0xae, 0x62, 0x75,
	0x69, 0x6c, 0x74, 0x69, 0x6e, 0x2e, 0x73, 0x71, 0x75, 0x61, 0x72, 0x65, 0x07,
};
static const uint8_t ex_apply_resp[] = { 0x94, 0x01, 0x01, 0xc0, 0x31 };
static const uint8_t ex_map_req[] = {
	0x94, 0x00, 0x02, 0xa3, 0x6d, 0x61, 0x70, 0x93, 0xae, 0x62, 0x75, 0x69, 0x6c,
	0x74, 0x69, 0x6e, 0x2e, 0x73, 0x71, 0x75, 0x61, 0x72, 0x65,
	0x93, 0x01, 0x02, 0x03, 0x81, 0xa9, 0x63, 0x68, 0x75, 0x6e, 0x6b, 0x73, 0x69,
	0x7a, 0x65, 0x02,
};
static const uint8_t ex_map_note1[] = {
	0x93, 0x02, 0xa6, 0x72, 0x65, 0x73, 0x75, 0x6c, 0x74, 0x94, 0x02, 0x00, 0x92,
	0x01, 0x04, 0x90,
};
static const uint8_t ex_map_note2[] = {
	0x93, 0x02, 0xa6, 0x72, 0x65, 0x73, 0x75, 0x6c, 0x74, 0x94, 0x02, 0x02, 0x91,
	0x09, 0x90,
};
static const uint8_t ex_map_resp[] = {
	0x94, 0x01, 0x02, 0xc0, 0x82, 0xa5, 0x69, 0x74, 0x65, 0x6d, 0x73, 0x03, 0xa6,
	0x66, 0x61, 0x69, 0x6c, 0x65, 0x64, 0x00,
};
static const uint8_t ex_err_req[] = {
	0x94, 0x00, 0x03, 0xa5, 0x61, 0x70, 0x70, 0x6c, 0x79, 0x92, 0xae, 0x62, 0x75,
	0x69, 0x6c, 0x74, 0x69, 0x6e, 0x2e, 0x73, 0x71, 0x75, 0x61, 0x72, 0x65, 0xa1, 0x78,
};
static const uint8_t ex_err_resp_head[] = {
	0x94, 0x01, 0x03, 0x82, 0xa4, 0x63, 0x6f, 0x64, 0x65, 0x05, 0xa7, 0x6d, 0x65,
	0x73, 0x73, 0x61, 0x67, 0x65,
};

static void assert_bytes(const struct pk *p, const uint8_t *want, size_t n, const char *what)
{
	ck_assert_msg(p->sb.size == n, "%s: packed %zu bytes, documented %zu", what, p->sb.size, n);
	for (size_t i = 0; i < n; i++)
		ck_assert_msg(pk_data(p)[i] == want[i], "%s: byte %zu is %02x, documented %02x",
			      what, i, pk_data(p)[i], want[i]);
}

START_TEST(doc_apply_example)
{
	struct mp_msg m;
	struct mp_cur c;
	int ok;
	uint64_t id, u;
	uint32_t n, sl;
	const char *s;
	struct pk p;

	ck_assert_int_eq(mp_msg_parse(ex_apply_req, sizeof(ex_apply_req), &m, &ok, &id), 0);
	ck_assert_int_eq(m.type, MP_REQUEST);
	ck_assert_uint_eq(m.msgid, 1);
	ck_assert(mp_str_eq(m.method, m.method_len, "apply"));
	mp_cur_init(&c, m.body, m.body_len);
	ck_assert_int_eq(mp_read_array(&c, &n), 0);
	ck_assert_uint_eq(n, 2);
	ck_assert_int_eq(mp_read_str(&c, &s, &sl), 0);
	ck_assert(mp_str_eq(s, sl, "builtin.square"));
	ck_assert_int_eq(mp_read_u64(&c, &u), 0);
	ck_assert_uint_eq(u, 7);
	ck_assert(mp_cur_done(&c));
	ck_assert_ptr_eq(c.end, ex_apply_req + sizeof(ex_apply_req));

	pk_init(&p);
	ck_assert_int_eq(mp_pack_request_head(&p.pk, 1, "apply"), 0);
	msgpack_pack_array(&p.pk, 2);
	pstr(&p.pk, "builtin.square");
	msgpack_pack_int(&p.pk, 7);
	assert_bytes(&p, ex_apply_req, sizeof(ex_apply_req), "apply request");
	pk_free(&p);

	/* The daemon's answer [1, 1, nil, 49]. */
	ck_assert_int_eq(mp_msg_parse(ex_apply_resp, sizeof(ex_apply_resp), &m, &ok, &id), 0);
	ck_assert_int_eq(m.type, MP_RESPONSE);
	ck_assert_uint_eq(m.msgid, 1);
	ck_assert_uint_eq(m.error_len, 1);
	ck_assert_uint_eq(m.error[0], 0xc0);
	mp_cur_init(&c, m.body, m.body_len);
	ck_assert_int_eq(mp_read_u64(&c, &u), 0);
	ck_assert_uint_eq(u, 49);
	pk_init(&p);
	ck_assert_int_eq(mp_pack_response_head(&p.pk, 1), 0);
	msgpack_pack_nil(&p.pk);
	msgpack_pack_uint64(&p.pk, 49);
	assert_bytes(&p, ex_apply_resp, sizeof(ex_apply_resp), "apply response");
	pk_free(&p);
}
END_TEST

START_TEST(doc_map_example)
{
	struct mp_msg m;
	struct mp_cur c;
	int ok;
	uint64_t id, u;
	uint32_t n, sl;
	const char *s;
	struct pk p;

	ck_assert_int_eq(mp_msg_parse(ex_map_req, sizeof(ex_map_req), &m, &ok, &id), 0);
	ck_assert_int_eq(m.type, MP_REQUEST);
	ck_assert_uint_eq(m.msgid, 2);
	ck_assert(mp_str_eq(m.method, m.method_len, "map"));
	mp_cur_init(&c, m.body, m.body_len);
	ck_assert_int_eq(mp_read_array(&c, &n), 0);
	ck_assert_uint_eq(n, 3);
	ck_assert_int_eq(mp_read_str(&c, &s, &sl), 0);
	ck_assert(mp_str_eq(s, sl, "builtin.square"));
	ck_assert_int_eq(mp_read_array(&c, &n), 0);
	ck_assert_uint_eq(n, 3);
	for (uint64_t k = 1; k <= 3; k++) {
		ck_assert_int_eq(mp_read_u64(&c, &u), 0);
		ck_assert_uint_eq(u, k);
	}
	ck_assert_int_eq(mp_read_map(&c, &n), 0);
	ck_assert_uint_eq(n, 1);
	ck_assert_int_eq(mp_read_str(&c, &s, &sl), 0);
	ck_assert(mp_str_eq(s, sl, "chunksize"));
	ck_assert_int_eq(mp_read_u64(&c, &u), 0);
	ck_assert_uint_eq(u, 2);
	ck_assert(mp_cur_done(&c));

	pk_init(&p);
	ck_assert_int_eq(mp_pack_request_head(&p.pk, 2, "map"), 0);
	msgpack_pack_array(&p.pk, 3);
	pstr(&p.pk, "builtin.square");
	msgpack_pack_array(&p.pk, 3);
	msgpack_pack_int(&p.pk, 1);
	msgpack_pack_int(&p.pk, 2);
	msgpack_pack_int(&p.pk, 3);
	msgpack_pack_map(&p.pk, 1);
	pstr(&p.pk, "chunksize");
	msgpack_pack_int(&p.pk, 2);
	assert_bytes(&p, ex_map_req, sizeof(ex_map_req), "map request");
	pk_free(&p);

	/* The daemon's side: two result notifications, then the response. */
	ck_assert_int_eq(mp_msg_parse(ex_map_note1, sizeof(ex_map_note1), &m, &ok, &id), 0);
	ck_assert_int_eq(m.type, MP_NOTIFY);
	ck_assert(mp_str_eq(m.method, m.method_len, "result"));
	pk_init(&p);
	ck_assert_int_eq(mp_pack_notify_head(&p.pk, "result"), 0);
	msgpack_pack_array(&p.pk, 4);
	msgpack_pack_uint64(&p.pk, 2);
	msgpack_pack_uint64(&p.pk, 0);
	msgpack_pack_array(&p.pk, 2);
	msgpack_pack_int(&p.pk, 1);
	msgpack_pack_int(&p.pk, 4);
	msgpack_pack_array(&p.pk, 0);
	assert_bytes(&p, ex_map_note1, sizeof(ex_map_note1), "map notification 1");
	pk_free(&p);

	ck_assert_int_eq(mp_msg_parse(ex_map_note2, sizeof(ex_map_note2), &m, &ok, &id), 0);
	ck_assert_int_eq(m.type, MP_NOTIFY);
	pk_init(&p);
	ck_assert_int_eq(mp_pack_notify_head(&p.pk, "result"), 0);
	msgpack_pack_array(&p.pk, 4);
	msgpack_pack_uint64(&p.pk, 2);
	msgpack_pack_uint64(&p.pk, 2);
	msgpack_pack_array(&p.pk, 1);
	msgpack_pack_int(&p.pk, 9);
	msgpack_pack_array(&p.pk, 0);
	assert_bytes(&p, ex_map_note2, sizeof(ex_map_note2), "map notification 2");
	pk_free(&p);

	ck_assert_int_eq(mp_msg_parse(ex_map_resp, sizeof(ex_map_resp), &m, &ok, &id), 0);
	ck_assert_int_eq(m.type, MP_RESPONSE);
	ck_assert_uint_eq(m.msgid, 2);
	pk_init(&p);
	ck_assert_int_eq(mp_pack_response_head(&p.pk, 2), 0);
	msgpack_pack_nil(&p.pk);
	msgpack_pack_map(&p.pk, 2);
	pstr(&p.pk, "items");
	msgpack_pack_uint64(&p.pk, 3);
	pstr(&p.pk, "failed");
	msgpack_pack_uint64(&p.pk, 0);
	assert_bytes(&p, ex_map_resp, sizeof(ex_map_resp), "map response");
	pk_free(&p);
}
END_TEST

START_TEST(doc_error_example)
{
	static const char text[] = "builtin.square: expected an integer, got str";
	struct mp_msg m;
	struct mp_cur c;
	int ok, code;
	uint64_t id;
	struct pk p;
	const char *msg;
	uint32_t ml;
	int64_t idx;
	size_t tl = strlen(text);

	ck_assert_int_eq(mp_msg_parse(ex_err_req, sizeof(ex_err_req), &m, &ok, &id), 0);
	ck_assert_uint_eq(m.msgid, 3);
	ck_assert(mp_str_eq(m.method, m.method_len, "apply"));
	pk_init(&p);
	ck_assert_int_eq(mp_pack_request_head(&p.pk, 3, "apply"), 0);
	msgpack_pack_array(&p.pk, 2);
	pstr(&p.pk, "builtin.square");
	pstr(&p.pk, "x");
	assert_bytes(&p, ex_err_req, sizeof(ex_err_req), "apply \"x\" request");
	pk_free(&p);

	/* 94 01 03 82 a4 code 05 a7 message <str> c0 */
	pk_init(&p);
	ck_assert_int_eq(mp_pack_response_head(&p.pk, 3), 0);
	ck_assert_int_eq(mp_pack_error(&p.pk, MPOOL_E_TYPE, text, -1), 0);
	msgpack_pack_nil(&p.pk);
	ck_assert_uint_ge(p.sb.size, sizeof(ex_err_resp_head) + 2 + tl + 1);
	ck_assert(memcmp(pk_data(&p), ex_err_resp_head, sizeof(ex_err_resp_head)) == 0);
	ck_assert_uint_eq(pk_data(&p)[sizeof(ex_err_resp_head)], 0xd9);   /* str8 */
	ck_assert_uint_eq(pk_data(&p)[sizeof(ex_err_resp_head) + 1], tl);
	ck_assert_uint_eq(p.sb.size, sizeof(ex_err_resp_head) + 2 + tl + 1);
	ck_assert_uint_eq(pk_data(&p)[p.sb.size - 1], 0xc0);
	ck_assert_int_eq(mp_msg_parse(pk_data(&p), p.sb.size, &m, &ok, &id), 0);
	mp_cur_init(&c, m.error, m.error_len);
	ck_assert_int_eq(mp_read_error(&c, &code, &msg, &ml, &idx), 0);
	ck_assert_int_eq(code, 5);
	ck_assert(mp_str_eq(msg, ml, text));
	ck_assert_int_eq(idx, -1);
	pk_free(&p);
}
END_TEST

/* ---- mp_frame ------------------------------------------------------------ */

struct stream {
	struct pk p;
	size_t n;            /* frames */
	size_t *off;         /* n + 1 offsets */
	size_t cap;
};

static void st_mark(struct stream *s)
{
	if (s->n + 1 >= s->cap) {
		s->cap = s->cap ? 2 * s->cap : 16;
		s->off = realloc(s->off, s->cap * sizeof(*s->off));
		ck_assert_ptr_nonnull(s->off);
	}
	s->off[++s->n] = s->p.sb.size;
}

static void st_init(struct stream *s)
{
	memset(s, 0, sizeof(*s));
	pk_init(&s->p);
	s->cap = 16;
	s->off = calloc(s->cap, sizeof(*s->off));
}

static void st_free(struct stream *s)
{
	pk_free(&s->p);
	free(s->off);
}

static const uint8_t *st_bytes(const struct stream *s)
{
	return pk_data(&s->p);
}

static size_t st_len(const struct stream *s)
{
	return s->p.sb.size;
}

/* A realistic client/daemon conversation (both directions in one stream:
 * the framer does not care). */
static void st_small(struct stream *s)
{
	msgpack_packer *pk = &s->p.pk;

	mp_pack_request_head(pk, 1, "apply");
	msgpack_pack_array(pk, 2);
	pstr(pk, "builtin.square");
	msgpack_pack_int(pk, 7);
	st_mark(s);

	mp_pack_request_head(pk, 2, "map");
	msgpack_pack_array(pk, 3);
	pstr(pk, "builtin.square");
	msgpack_pack_array(pk, 3);
	for (int i = 1; i <= 3; i++)
		msgpack_pack_int(pk, i);
	msgpack_pack_map(pk, 2);
	pstr(pk, "chunksize");
	msgpack_pack_int(pk, 2);
	pstr(pk, "ordered");
	msgpack_pack_false(pk);
	st_mark(s);

	mp_pack_request_head(pk, 3, "ping");
	msgpack_pack_array(pk, 0);
	st_mark(s);

	mp_pack_notify_head(pk, "result");
	msgpack_pack_array(pk, 4);
	msgpack_pack_uint64(pk, 2);
	msgpack_pack_uint64(pk, 0);
	msgpack_pack_array(pk, 2);
	msgpack_pack_int(pk, 1);
	msgpack_pack_int(pk, 4);
	msgpack_pack_array(pk, 0);
	st_mark(s);

	mp_pack_response_head(pk, 1);
	msgpack_pack_nil(pk);
	msgpack_pack_int(pk, 49);
	st_mark(s);

	mp_pack_response_head(pk, 3);
	mp_pack_error(pk, MPOOL_E_TYPE, "builtin.square: expected an integer, got str", 0);
	msgpack_pack_nil(pk);
	st_mark(s);

	mp_pack_request_head(pk, UINT64_MAX, "status");
	msgpack_pack_array(pk, 0);
	st_mark(s);

	mp_pack_response_head(pk, 4);
	msgpack_pack_nil(pk);
	msgpack_pack_map(pk, 5);
	pstr(pk, "version");
	pstr(pk, "0.1.0");
	pstr(pk, "pid");
	msgpack_pack_int64(pk, 123456);
	pstr(pk, "workers");
	msgpack_pack_array(pk, 1);
	msgpack_pack_map(pk, 3);
	pstr(pk, "pid");
	msgpack_pack_int64(pk, 123457);
	pstr(pk, "state");
	pstr(pk, "idle");
	pstr(pk, "job");
	msgpack_pack_nil(pk);
	pstr(pk, "load");
	msgpack_pack_double(pk, -1.5);
	pstr(pk, "blob");
	msgpack_pack_bin(pk, 40);
	msgpack_pack_bin_body(pk, junk, 40);
	st_mark(s);

	mp_pack_notify_head(pk, "error");
	msgpack_pack_array(pk, 1);
	mp_pack_error(pk, MPOOL_E_BADREQ, "msgid 2 is already open", -1);
	st_mark(s);

	mp_pack_request_head(pk, 5, "apply");
	msgpack_pack_array(pk, 2);
	pstr(pk, "builtin.echo");
	msgpack_pack_str(pk, 300);
	msgpack_pack_str_body(pk, junk, 300);
	st_mark(s);

	mp_pack_request_head(pk, 6, "terminate");
	msgpack_pack_array(pk, 0);
	st_mark(s);
}

/* The small stream plus a ~1 MB map request (array32 of items) and a
 * 1 MiB bin32 result, then small frames again. */
static void st_large(struct stream *s)
{
	msgpack_packer *pk = &s->p.pk;

	st_small(s);
	mp_pack_request_head(pk, 7, "map");
	msgpack_pack_array(pk, 2);
	pstr(pk, "builtin.echo");
	msgpack_pack_array(pk, 200000);
	for (uint32_t i = 0; i < 200000; i++)
		msgpack_pack_uint32(pk, i * 977u);
	st_mark(s);
	ck_assert_uint_gt(s->off[s->n] - s->off[s->n - 1], 900000);

	mp_pack_response_head(pk, 7);
	msgpack_pack_nil(pk);
	msgpack_pack_bin(pk, MiB);
	for (int i = 0; i < 16; i++)
		msgpack_pack_bin_body(pk, junk, 65536);
	st_mark(s);

	st_small(s);
}

/* Takes every frame now available and checks each against the expected. */
static void drain(struct mp_frame *f, const struct stream *s, size_t *k)
{
	const uint8_t *fr;
	size_t fl;
	int r;

	while ((r = mp_frame_next(f, &fr, &fl)) == 1) {
		REQUIRE(*k < s->n);
		REQUIRE(fl == s->off[*k + 1] - s->off[*k]);
		REQUIRE(memcmp(fr, st_bytes(s) + s->off[*k], fl) == 0);
		(*k)++;
	}
	REQUIRE(r == 0);
}

static const struct mp_frame_limits def_lim = { 64 * MiB, MP_DEPTH_MAX };

START_TEST(frame_small_stream_every_split)
{
	struct stream s;
	size_t len;

	junk_init();
	st_init(&s);
	st_small(&s);
	len = st_len(&s);
	ck_assert_uint_ge(s.n, 10);

	/* One byte at a time. */
	{
		struct mp_frame f;
		size_t k = 0;

		mp_frame_init(&f, &def_lim);
		for (size_t i = 0; i < len; i++) {
			REQUIRE(mp_frame_push(&f, st_bytes(&s) + i, 1) == 0);
			drain(&f, &s, &k);
			/* A frame comes out exactly when its last byte arrives. */
			REQUIRE(k == 0 || s.off[k] <= i + 1);
			REQUIRE(k == s.n || s.off[k + 1] > i + 1);
		}
		ck_assert_uint_eq(k, s.n);
		ck_assert_uint_eq(mp_frame_pending(&f), 0);
		mp_frame_free(&f);
	}
	/* Every split point into two pushes. */
	for (size_t cut = 1; cut < len; cut++) {
		struct mp_frame f;
		size_t k = 0;

		mp_frame_init(&f, &def_lim);
		REQUIRE(mp_frame_push(&f, st_bytes(&s), cut) == 0);
		drain(&f, &s, &k);
		REQUIRE(mp_frame_pending(&f) == cut - s.off[k]);
		REQUIRE(mp_frame_push(&f, st_bytes(&s) + cut, len - cut) == 0);
		drain(&f, &s, &k);
		REQUIRE(k == s.n);
		REQUIRE(mp_frame_pending(&f) == 0);
		mp_frame_free(&f);
	}
	/* Every pair of split points (three pushes). */
	for (size_t a = 1; a < len; a += 3) {
		for (size_t b = a; b < len; b += 5) {
			struct mp_frame f;
			size_t k = 0;

			mp_frame_init(&f, &def_lim);
			REQUIRE(mp_frame_push(&f, st_bytes(&s), a) == 0);
			drain(&f, &s, &k);
			if (b > a) {
				REQUIRE(mp_frame_push(&f, st_bytes(&s) + a, b - a) == 0);
				drain(&f, &s, &k);
			}
			REQUIRE(mp_frame_push(&f, st_bytes(&s) + b, len - b) == 0);
			drain(&f, &s, &k);
			REQUIRE(k == s.n);
			mp_frame_free(&f);
		}
	}
	st_free(&s);
}
END_TEST

START_TEST(frame_large_stream)
{
	struct stream s;
	size_t len;
	uint64_t rng = 99;

	junk_init();
	st_init(&s);
	st_large(&s);
	len = st_len(&s);

	/* One byte at a time, through the 1 MB frames too. */
	{
		struct mp_frame f;
		size_t k = 0;

		mp_frame_init(&f, &def_lim);
		for (size_t i = 0; i < len; i++) {
			REQUIRE(mp_frame_push(&f, st_bytes(&s) + i, 1) == 0);
			drain(&f, &s, &k);
		}
		ck_assert_uint_eq(k, s.n);
		ck_assert_uint_eq(mp_frame_pending(&f), 0);
		mp_frame_free(&f);
	}
	/* Random chunk sizes, several runs. */
	for (int run = 0; run < 8; run++) {
		struct mp_frame f;
		size_t k = 0, i = 0;

		mp_frame_init(&f, &def_lim);
		while (i < len) {
			size_t c = 1 + rnd(&rng) % (run < 4 ? 300 : 200000);

			if (c > len - i)
				c = len - i;
			REQUIRE(mp_frame_push(&f, st_bytes(&s) + i, c) == 0);
			i += c;
			drain(&f, &s, &k);
		}
		ck_assert_uint_eq(k, s.n);
		mp_frame_free(&f);
	}
	/* All of it in one push. */
	{
		struct mp_frame f;
		size_t k = 0;

		mp_frame_init(&f, &def_lim);
		ck_assert_int_eq(mp_frame_push(&f, st_bytes(&s), len), 0);
		ck_assert_uint_eq(mp_frame_pending(&f), len);
		drain(&f, &s, &k);
		ck_assert_uint_eq(k, s.n);
		mp_frame_free(&f);
	}
	st_free(&s);
}
END_TEST

START_TEST(frame_many_in_one_push)
{
	struct stream s;
	struct mp_frame f;
	size_t k = 0;

	st_init(&s);
	for (uint64_t i = 0; i < 20000; i++) {
		mp_pack_request_head(&s.p.pk, i, "apply");
		msgpack_pack_array(&s.p.pk, 2);
		pstr(&s.p.pk, "builtin.square");
		msgpack_pack_uint64(&s.p.pk, i * i);
		st_mark(&s);
		msgpack_pack_uint64(&s.p.pk, i);      /* bare scalars are frames too */
		st_mark(&s);
	}
	mp_frame_init(&f, &def_lim);
	ck_assert_int_eq(mp_frame_push(&f, st_bytes(&s), st_len(&s)), 0);
	drain(&f, &s, &k);
	ck_assert_uint_eq(k, s.n);
	ck_assert_uint_eq(k, 40000);
	ck_assert_uint_eq(mp_frame_pending(&f), 0);
	mp_frame_free(&f);
	st_free(&s);
}
END_TEST

START_TEST(frame_pending)
{
	struct stream s;
	struct mp_frame f;
	const uint8_t *fr;
	size_t fl, a, b;

	junk_init();
	st_init(&s);
	st_small(&s);
	a = s.off[1];
	b = s.off[2];
	mp_frame_init(&f, &def_lim);
	ck_assert_uint_eq(mp_frame_pending(&f), 0);
	ck_assert_int_eq(mp_frame_next(&f, &fr, &fl), 0);

	/* frame 0 whole, frame 1 half */
	ck_assert_int_eq(mp_frame_push(&f, st_bytes(&s), a + (b - a) / 2), 0);
	ck_assert_uint_eq(mp_frame_pending(&f), a + (b - a) / 2);
	ck_assert_int_eq(mp_frame_next(&f, &fr, &fl), 1);
	ck_assert_uint_eq(fl, a);
	ck_assert_uint_eq(mp_frame_pending(&f), (b - a) / 2);
	ck_assert_int_eq(mp_frame_next(&f, &fr, &fl), 0);
	ck_assert_int_eq(mp_frame_next(&f, &fr, &fl), 0);
	ck_assert_uint_eq(mp_frame_pending(&f), (b - a) / 2);
	/* the rest of frame 1 */
	ck_assert_int_eq(mp_frame_push(&f, st_bytes(&s) + a + (b - a) / 2, b - a - (b - a) / 2), 0);
	ck_assert_uint_eq(mp_frame_pending(&f), b - a);
	ck_assert_int_eq(mp_frame_next(&f, &fr, &fl), 1);
	ck_assert_uint_eq(fl, b - a);
	ck_assert(memcmp(fr, st_bytes(&s) + a, fl) == 0);
	ck_assert_uint_eq(mp_frame_pending(&f), 0);
	ck_assert_int_eq(mp_frame_next(&f, &fr, &fl), 0);
	mp_frame_free(&f);
	mp_frame_free(&f);                            /* twice is fine */
	st_free(&s);
}
END_TEST

START_TEST(frame_space_commit)
{
	struct mp_frame f;
	const uint8_t *fr;
	size_t room = 0, fl;
	uint8_t *sp;

	mp_frame_init(&f, &def_lim);
	sp = mp_frame_space(&f, 10, &room);
	ck_assert_ptr_nonnull(sp);
	ck_assert_uint_ge(room, 10);
	memcpy(sp, "\x93\x02\xa1m", 4);
	mp_frame_commit(&f, 4);
	ck_assert_int_eq(mp_frame_next(&f, &fr, &fl), 0);
	sp = mp_frame_space(&f, 200000, &room);
	ck_assert_ptr_nonnull(sp);
	ck_assert_uint_ge(room, 200000);
	memcpy(sp, "\x90\xc0", 2);
	mp_frame_commit(&f, 2);
	ck_assert_int_eq(mp_frame_next(&f, &fr, &fl), 1);
	ck_assert_uint_eq(fl, 5);
	ck_assert(memcmp(fr, "\x93\x02\xa1m\x90", 5) == 0);
	ck_assert_int_eq(mp_frame_next(&f, &fr, &fl), 1);
	ck_assert_uint_eq(fl, 1);
	ck_assert_uint_eq(fr[0], 0xc0);
	mp_frame_free(&f);
}
END_TEST

/* Pushing nothing is not running out of memory. */
START_TEST(frame_push_empty)
{
	struct mp_frame f;
	const uint8_t *fr;
	size_t fl, room = 0;
	int r;

	mp_frame_init(&f, &def_lim);
	r = mp_frame_push(&f, "", 0);
	ck_assert_msg(r == 0, "mp_frame_push(f, buf, 0) on a new framer returned %d", r);
	ck_assert_msg(mp_frame_space(&f, 0, &room) != NULL,
		      "mp_frame_space(f, 0) on a new framer returned NULL (\"out of memory\")");
	ck_assert_uint_eq(mp_frame_pending(&f), 0);
	ck_assert_int_eq(mp_frame_next(&f, &fr, &fl), 0);
	mp_frame_free(&f);
}
END_TEST

START_TEST(frame_size_limit)
{
	static const size_t limits[] = { 1, 2, 100, 257, 65536 };

	junk_init();
	for (size_t li = 0; li < sizeof(limits) / sizeof(limits[0]); li++) {
		size_t max = limits[li];
		struct mp_frame_limits lim = { max, MP_DEPTH_MAX };

		for (int over = 0; over <= 1; over++) {
			size_t want = max + (size_t)over;   /* frame size */
			struct pk p;

			/* A str of exactly want bytes, by hand: the packer always picks
			 * the shortest header, which leaves gaps (no 258-byte str). */
			pk_init(&p);
			if (want == 1) {
				msgpack_sbuffer_write(&p.sb, "\x01", 1);
			} else if (want - 1 < 32) {
				uint8_t h = (uint8_t)(0xa0 | (want - 1));
				msgpack_sbuffer_write(&p.sb, (const char *)&h, 1);
				msgpack_sbuffer_write(&p.sb, (const char *)junk, want - 1);
			} else if (want - 2 < 256) {
				uint8_t h[2] = { 0xd9, (uint8_t)(want - 2) };
				msgpack_sbuffer_write(&p.sb, (const char *)h, 2);
				msgpack_sbuffer_write(&p.sb, (const char *)junk, want - 2);
			} else {
				uint8_t h[3] = { 0xda, (uint8_t)((want - 3) >> 8), (uint8_t)(want - 3) };
				msgpack_sbuffer_write(&p.sb, (const char *)h, 3);
				msgpack_sbuffer_write(&p.sb, (const char *)junk, want - 3);
			}
			ck_assert_uint_eq(p.sb.size, want);

			/* Whole frame in one push, with the next frame's first byte. */
			{
				struct mp_frame f;
				const uint8_t *fr;
				size_t fl;
				int r;

				mp_frame_init(&f, &lim);
				mp_frame_push(&f, pk_data(&p), p.sb.size);
				mp_frame_push(&f, "\x92", 1);
				r = mp_frame_next(&f, &fr, &fl);
				if (over) {
					ck_assert_msg(r == -EMSGSIZE, "max %zu frame %zu: r=%d", max, want, r);
				} else {
					ck_assert_msg(r == 1 && fl == want, "max %zu frame %zu: r=%d",
						      max, want, r);
					ck_assert_int_eq(mp_frame_next(&f, &fr, &fl), 0);
				}
				mp_frame_free(&f);
			}
			/* Byte by byte: nothing until the last byte, then the
			 * verdict; a frame over the limit may be refused as
			 * soon as a string or binary in it is declared past
			 * it. */
			{
				struct mp_frame f;
				const uint8_t *fr;
				size_t fl;
				int r = 0;

				mp_frame_init(&f, &lim);
				for (size_t i = 0; i < want; i++) {
					mp_frame_push(&f, pk_data(&p) + i, 1);
					r = mp_frame_next(&f, &fr, &fl);
					if (over && r == -EMSGSIZE)
						break;
					if (i + 1 < want)
						REQUIRE(r == 0);
				}
				ck_assert_int_eq(r, over ? -EMSGSIZE : 1);
				mp_frame_free(&f);
			}
			pk_free(&p);
		}
	}

	/* A frame that can never end within the limit: bin32 of 16 MiB, 1 MiB
	 * limit.  Refused at its header, before its bytes come; one whose
	 * size shows only as bytes arrive (an array of many small items),
	 * once more than max_frame bytes are held. */
	{
		struct mp_frame_limits lim = { MiB, MP_DEPTH_MAX };
		struct mp_frame f;
		const uint8_t *fr;
		size_t fl;
		uint8_t *z = calloc(1, MiB);

		mp_frame_init(&f, &lim);
		mp_frame_push(&f, "\xc6\x01\x00\x00\x00", 5);
		ck_assert_int_eq(mp_frame_next(&f, &fr, &fl), -EMSGSIZE);
		mp_frame_free(&f);

		mp_frame_init(&f, &lim);
		mp_frame_push(&f, "\xdd\x01\x00\x00\x00", 5);   /* array32 of 16 M items */
		mp_frame_push(&f, z, MiB - 6);      /* max_frame - 1 held */
		ck_assert_int_eq(mp_frame_next(&f, &fr, &fl), 0);
		mp_frame_push(&f, z, 2);            /* max_frame + 1 held */
		ck_assert_int_eq(mp_frame_next(&f, &fr, &fl), -EMSGSIZE);
		mp_frame_free(&f);
		free(z);
	}
}
END_TEST

START_TEST(frame_errors_after_good_frames)
{
	static const uint8_t c1[] = { 0x01, 0x92, 0x02, 0x03, 0x93, 0x01, 0xc1, 0x00 };
	uint8_t deep[64];
	struct mp_frame_limits lim = { MiB, 4 };
	struct mp_frame f;
	const uint8_t *fr;
	size_t fl, n;
	unsigned cont;

	mp_frame_init(&f, &def_lim);
	mp_frame_push(&f, c1, sizeof(c1));
	ck_assert_int_eq(mp_frame_next(&f, &fr, &fl), 1);
	ck_assert_uint_eq(fl, 1);
	ck_assert_int_eq(mp_frame_next(&f, &fr, &fl), 1);
	ck_assert_uint_eq(fl, 3);
	ck_assert_int_eq(mp_frame_next(&f, &fr, &fl), -EBADMSG);
	mp_frame_free(&f);

	/* Depth limit from mp_frame_limits. */
	mp_frame_init(&f, &lim);
	n = nest(deep, 4, NEST_FIXARRAY, INNER_SCALAR, &cont);
	mp_frame_push(&f, deep, n);
	n = nest(deep, 5, NEST_FIXARRAY, INNER_SCALAR, &cont);
	mp_frame_push(&f, deep, n);
	ck_assert_int_eq(mp_frame_next(&f, &fr, &fl), 1);
	ck_assert_uint_eq(fl, 5);
	ck_assert_int_eq(mp_frame_next(&f, &fr, &fl), -ELOOP);
	mp_frame_free(&f);

	/* The -ELOOP comes before the frame is complete (no need to wait). */
	mp_frame_init(&f, &def_lim);
	for (int i = 0; i < MP_DEPTH_MAX + 1; i++)
		deep[i] = 0x92;
	mp_frame_push(&f, deep, MP_DEPTH_MAX + 1);
	ck_assert_int_eq(mp_frame_next(&f, &fr, &fl), -ELOOP);
	mp_frame_free(&f);
}
END_TEST

/* Reads a whole stream from fd, checking frames as they come. */
static void read_all(int fd, const struct stream *s, size_t max_frame)
{
	struct mp_frame_limits lim = { max_frame, MP_DEPTH_MAX };
	struct mp_frame f;
	size_t k = 0, total = 0;
	ssize_t n;

	mp_frame_init(&f, &lim);
	while ((n = mp_frame_read(&f, fd)) > 0) {
		total += (size_t)n;
		drain(&f, s, &k);
	}
	ck_assert_int_eq(n, 0);
	ck_assert_uint_eq(total, st_len(s));
	ck_assert_uint_eq(k, s->n);
	ck_assert_uint_eq(mp_frame_pending(&f), 0);
	mp_frame_free(&f);
}

/* The next read asks for the rest of a string or binary under way, at
 * least the minimum, and never more than the frame holds already. */
START_TEST(frame_read_size_follows_the_frame)
{
	struct mp_frame_limits lim = { 64 * MiB, MP_DEPTH_MAX };
	const size_t min = 64 * 1024, body = 1 * MiB;
	uint8_t *src = calloc(1, body + 64);
	const uint8_t *fr;
	size_t fl, got;
	struct mp_frame f;

	ck_assert_ptr_nonnull(src);
	/* [bin32 of 1 MiB, 7] */
	src[0] = 0x92;
	src[1] = 0xc6;
	src[2] = (uint8_t)(body >> 24);
	src[3] = (uint8_t)(body >> 16);
	src[4] = (uint8_t)(body >> 8);
	src[5] = (uint8_t)body;
	src[6 + body] = 0x07;
	mp_frame_init(&f, &lim);
	/* Nothing known yet. */
	ck_assert_uint_eq(mp_frame_read_size(&f, min), min);
	/* The header alone claims a megabyte: not believed past what came. */
	ck_assert_int_eq(mp_frame_push(&f, src, 6), 0);
	ck_assert_int_eq(mp_frame_next(&f, &fr, &fl), 0);
	ck_assert_uint_eq(mp_frame_read_size(&f, min), min);
	got = 6 + min;
	ck_assert_int_eq(mp_frame_push(&f, src + 6, min), 0);
	ck_assert_int_eq(mp_frame_next(&f, &fr, &fl), 0);
	ck_assert_uint_eq(mp_frame_read_size(&f, min), got);
	/* Past half of it: exactly the rest of the binary. */
	ck_assert_int_eq(mp_frame_push(&f, src + got, 700 * 1024), 0);
	got += 700 * 1024;
	ck_assert_int_eq(mp_frame_next(&f, &fr, &fl), 0);
	ck_assert_uint_eq(mp_frame_read_size(&f, min), 6 + body - got);
	/* Its last bytes: the minimum again; then the frame ends. */
	ck_assert_int_eq(mp_frame_push(&f, src + got, 6 + body - got - 10), 0);
	got = 6 + body - 10;
	ck_assert_int_eq(mp_frame_next(&f, &fr, &fl), 0);
	ck_assert_uint_eq(mp_frame_read_size(&f, min), min);
	ck_assert_int_eq(mp_frame_push(&f, src + got, 11), 0);
	ck_assert_int_eq(mp_frame_next(&f, &fr, &fl), 1);
	ck_assert_uint_eq(fl, 7 + body);
	ck_assert_uint_eq(mp_frame_read_size(&f, min), min);
	mp_frame_free(&f);
	free(src);
}
END_TEST

/* A string or binary declared past the frame limit is refused at its
 * header, before a byte of it is read or room is made for it; the read
 * size never reaches past the limit either. */
START_TEST(frame_declared_past_the_limit)
{
	struct mp_frame_limits lim = { 1 * MiB, MP_DEPTH_MAX };
	const uint8_t huge[] = { 0x91, 0xc6, 0xff, 0xff, 0xff, 0xf0 };   /* [bin32 of 4 GiB] */
	const uint8_t near[] = { 0x91, 0xc6, 0x00, 0x0f, 0xff, 0x00 };   /* [bin32 of ~1 MiB] */
	static uint8_t fill[800 * 1024];
	const uint8_t *fr;
	size_t fl;
	struct mp_frame f;

	mp_frame_init(&f, &lim);
	ck_assert_int_eq(mp_frame_push(&f, huge, sizeof(huge)), 0);
	ck_assert_int_eq(mp_frame_next(&f, &fr, &fl), -EMSGSIZE);
	mp_frame_free(&f);

	mp_frame_init(&f, &lim);
	ck_assert_int_eq(mp_frame_push(&f, near, sizeof(near)), 0);
	ck_assert_int_eq(mp_frame_next(&f, &fr, &fl), 0);
	ck_assert_int_eq(mp_frame_push(&f, fill, sizeof(fill)), 0);
	ck_assert_int_eq(mp_frame_next(&f, &fr, &fl), 0);
	/* 0xfff00 - 800 KiB still due, within the limit. */
	ck_assert_uint_eq(mp_frame_read_size(&f, 4096), 0xfff00 + 6 - sizeof(near) - sizeof(fill));
	ck_assert_uint_le(mp_frame_read_size(&f, 4096) + sizeof(near) + sizeof(fill), lim.max_frame);
	mp_frame_free(&f);
}
END_TEST

START_TEST(frame_read_socketpair)
{
	struct stream s;
	int sv[2];

	junk_init();
	st_init(&s);
	st_small(&s);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	ck_assert_int_eq(write(sv[1], st_bytes(&s), st_len(&s)), (ssize_t)st_len(&s));
	ck_assert_int_eq(shutdown(sv[1], SHUT_WR), 0);
	read_all(sv[0], &s, 64 * MiB);
	close(sv[0]);
	close(sv[1]);
	st_free(&s);
}
END_TEST

START_TEST(frame_read_pipe_writer)
{
	struct stream s;
	int pfd[2], status;
	pid_t pid;

	junk_init();
	st_init(&s);
	st_large(&s);
	ck_assert_int_eq(pipe2(pfd, O_CLOEXEC), 0);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		/* Writer: odd-sized chunks so frames straddle reads. */
		size_t i = 0, len = st_len(&s);
		uint64_t rng = 5;

		close(pfd[0]);
		while (i < len) {
			size_t c = 1 + rnd(&rng) % 100000;
			ssize_t w;

			if (c > len - i)
				c = len - i;
			w = write(pfd[1], st_bytes(&s) + i, c);
			if (w <= 0)
				_exit(2);
			i += (size_t)w;
		}
		_exit(0);
	}
	close(pfd[1]);
	read_all(pfd[0], &s, 2 * MiB);
	close(pfd[0]);
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "writer status %#x", status);
	st_free(&s);
}
END_TEST

START_TEST(frame_read_errors)
{
	struct mp_frame f;
	const uint8_t *fr;
	size_t fl;
	int sv[2];

	mp_frame_init(&f, &def_lim);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
	ck_assert_int_eq(mp_frame_read(&f, sv[0]), -EAGAIN);
	ck_assert_uint_eq(mp_frame_pending(&f), 0);
	ck_assert_int_eq(write(sv[1], "\x92\x01", 2), 2);
	ck_assert_int_eq(mp_frame_read(&f, sv[0]), 2);
	ck_assert_uint_eq(mp_frame_pending(&f), 2);
	ck_assert_int_eq(mp_frame_next(&f, &fr, &fl), 0);
	ck_assert_int_eq(mp_frame_read(&f, sv[0]), -EAGAIN);
	ck_assert_uint_eq(mp_frame_pending(&f), 2);
	ck_assert_int_eq(write(sv[1], "\x02", 1), 1);
	ck_assert_int_eq(mp_frame_read(&f, sv[0]), 1);
	ck_assert_int_eq(mp_frame_next(&f, &fr, &fl), 1);
	ck_assert_uint_eq(fl, 3);
	close(sv[1]);
	ck_assert_int_eq(mp_frame_read(&f, sv[0]), 0);
	close(sv[0]);
	ck_assert_int_eq(mp_frame_read(&f, sv[0]), -EBADF);
	ck_assert_int_eq(mp_frame_read(&f, -1), -EBADF);
	mp_frame_free(&f);
}
END_TEST

/* ---- mp_path ------------------------------------------------------------- */

static void path_expect(const char *want)
{
	char buf[256];

	memset(buf, 'Z', sizeof(buf));
	ck_assert_int_eq(mp_default_socket_path(buf, sizeof(buf)), 0);
	ck_assert_str_eq(buf, want);
}

/* The non-root rule, for whatever non-root uid we are. */
static int path_check_nonroot(void)
{
	char want[128], buf[256];

	unsetenv("MPOOL_SOCKET");
	setenv("XDG_RUNTIME_DIR", "/run/user/4242", 1);
	if (mp_default_socket_path(buf, sizeof(buf)) != 0 ||
	    strcmp(buf, "/run/user/4242/mpool/mpoold.sock") != 0)
		return 1;
	unsetenv("XDG_RUNTIME_DIR");
	snprintf(want, sizeof(want), "/tmp/mpool-%u/mpoold.sock", (unsigned)geteuid());
	if (mp_default_socket_path(buf, sizeof(buf)) != 0 || strcmp(buf, want) != 0)
		return 2;
	setenv("XDG_RUNTIME_DIR", "", 1);       /* empty counts as unset */
	if (mp_default_socket_path(buf, sizeof(buf)) != 0 || strcmp(buf, want) != 0)
		return 3;
	setenv("MPOOL_SOCKET", "/srv/x.sock", 1);
	if (mp_default_socket_path(buf, sizeof(buf)) != 0 || strcmp(buf, "/srv/x.sock") != 0)
		return 4;
	return 0;
}

START_TEST(path_env_wins)
{
	setenv("MPOOL_SOCKET", "/tmp/test-mpool/sock", 1);
	setenv("XDG_RUNTIME_DIR", "/run/user/1000", 1);
	path_expect("/tmp/test-mpool/sock");
	setenv("MPOOL_SOCKET", "relative.sock", 1);
	path_expect("relative.sock");
}
END_TEST

START_TEST(path_default_for_user)
{
	unsetenv("MPOOL_SOCKET");
	if (geteuid() == 0) {
		pid_t pid;
		int status;

		setenv("XDG_RUNTIME_DIR", "/run/user/0", 1);
		path_expect("/run/mpool/mpoold.sock");      /* root ignores XDG */
		unsetenv("XDG_RUNTIME_DIR");
		path_expect("/run/mpool/mpoold.sock");
		setenv("MPOOL_SOCKET", "", 1);             /* empty counts as unset */
		path_expect("/run/mpool/mpoold.sock");

		/* Also check the non-root branch, as nobody, in a child. */
		pid = fork();
		ck_assert_int_ge(pid, 0);
		if (pid == 0) {
			if (setgid(65534) != 0 || setuid(65534) != 0)
				_exit(99);
			_exit(path_check_nonroot());
		}
		ck_assert_int_eq(waitpid(pid, &status, 0), pid);
		ck_assert(WIFEXITED(status));
		if (WEXITSTATUS(status) != 99)
			ck_assert_msg(WEXITSTATUS(status) == 0, "non-root rule failed: step %d",
				      WEXITSTATUS(status));
	} else {
		ck_assert_int_eq(path_check_nonroot(), 0);
	}
}
END_TEST

START_TEST(path_too_long)
{
	char buf[256], big[400];
	const char *want = "/tmp/mpool-test/x.sock";
	size_t l = strlen(want);

	setenv("MPOOL_SOCKET", want, 1);
	ck_assert_int_eq(mp_default_socket_path(buf, l), -ENAMETOOLONG);   /* no room for NUL */
	ck_assert_int_eq(mp_default_socket_path(buf, 1), -ENAMETOOLONG);
	ck_assert_int_eq(mp_default_socket_path(buf, l + 1), 0);
	ck_assert_str_eq(buf, want);

	memset(big, 'a', sizeof(big) - 1);
	big[0] = '/';
	big[sizeof(big) - 1] = '\0';
	setenv("MPOOL_SOCKET", big, 1);
	ck_assert_int_eq(mp_default_socket_path(buf, 108), -ENAMETOOLONG);  /* sun_path */
	ck_assert_int_eq(mp_default_socket_path(buf, sizeof(buf)), -ENAMETOOLONG);

	/* The built-in rules are bounded the same way. */
	unsetenv("MPOOL_SOCKET");
	if (geteuid() == 0) {
		ck_assert_int_eq(mp_default_socket_path(buf, strlen("/run/mpool/mpoold.sock")),
				 -ENAMETOOLONG);
		ck_assert_int_eq(mp_default_socket_path(buf, strlen("/run/mpool/mpoold.sock") + 1), 0);
	} else {
		setenv("XDG_RUNTIME_DIR", big, 1);
		ck_assert_int_eq(mp_default_socket_path(buf, sizeof(buf)), -ENAMETOOLONG);
	}
}
END_TEST

/* ---- no allocation on the master's read path ----------------------------- */

START_TEST(read_path_allocates_nothing)
{
#ifdef COUNT_ALLOCS
	/* Check's own ck_assert allocates, so results are collected first. */
	struct mp_msg m;
	struct mp_cur c;
	int ok, r[6];
	uint64_t id, u = 0;
	uint32_t n;
	size_t got, before, after;
	const uint8_t *st;
	size_t sl;

	before = alloc_calls;
	r[0] = mp_scan_one(ex_map_req, sizeof(ex_map_req), MP_DEPTH_MAX, &got);
	r[1] = mp_msg_parse(ex_map_req, sizeof(ex_map_req), &m, &ok, &id);
	mp_cur_init(&c, m.body, m.body_len);
	r[2] = mp_read_array(&c, &n);
	r[3] = mp_skip(&c, &st, &sl);
	r[4] = mp_read_array(&c, &n);
	r[5] = mp_read_u64(&c, &u);
	after = alloc_calls;
	ck_assert_int_eq(r[0], 1);
	for (int i = 1; i < 6; i++)
		ck_assert_int_eq(r[i], 0);
	ck_assert_uint_eq(u, 1);
	ck_assert_uint_eq(after, before);
#else
	/* The allocator is the sanitizer's here; nothing to count. */
#endif
}
END_TEST

/* ---- runner -------------------------------------------------------------- */

static Suite *proto_suite(void)
{
	Suite *s = suite_create("proto");
	TCase *tc;

	tc = tcase_create("scan");
	tcase_set_timeout(tc, 120);
	tcase_add_loop_test(tc, scan_scalar, 0, N_SCALAR_CASES);
	tcase_add_test(tc, scan_hand_bytes);
	tcase_add_test(tc, scan_c1);
	tcase_add_test(tc, scan_containers_packed);
	tcase_add_test(tc, scan_nested_mixed_prefixes);
	tcase_add_test(tc, scan_random_values_agree);
	tcase_add_test(tc, scan_fuzz_bytes_agree);
	tcase_add_test(tc, scan_depth_limit);
	tcase_add_test(tc, scan_depth_empty_innermost);
	tcase_add_test(tc, scan_huge_declared_count);
	tcase_add_test(tc, scan_feed_resumable);
	tcase_add_test(tc, scan_feed_partial_header_no_progress);
	suite_add_tcase(s, tc);

	tc = tcase_create("cur");
	tcase_add_test(tc, cur_reader_type_matrix);
	tcase_add_test(tc, cur_reader_truncated);
	tcase_add_test(tc, cur_read_values);
	tcase_add_test(tc, cur_int_edges);
	tcase_add_test(tc, cur_skip_slices);
	tcase_add_test(tc, cur_str_eq);
	tcase_add_test(tc, cur_peek_types);
	tcase_add_test(tc, read_path_allocates_nothing);
	suite_add_tcase(s, tc);

	tc = tcase_create("frame");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, frame_small_stream_every_split);
	tcase_add_test(tc, frame_large_stream);
	tcase_add_test(tc, frame_many_in_one_push);
	tcase_add_test(tc, frame_pending);
	tcase_add_test(tc, frame_space_commit);
	tcase_add_test(tc, frame_push_empty);
	tcase_add_test(tc, frame_size_limit);
	tcase_add_test(tc, frame_errors_after_good_frames);
	tcase_add_test(tc, frame_huge_declared_count_emsgsize);
	tcase_add_test(tc, frame_take_hands_over_the_buffer);
	tcase_add_test(tc, obj_scalar_matches_msgpack_unpack);
	tcase_add_test(tc, frame_output_unpacks_with_msgpack);
	tcase_add_test(tc, frame_read_size_follows_the_frame);
	tcase_add_test(tc, frame_declared_past_the_limit);
	tcase_add_test(tc, frame_read_socketpair);
	tcase_add_test(tc, frame_read_pipe_writer);
	tcase_add_test(tc, frame_read_errors);
	suite_add_tcase(s, tc);

	tc = tcase_create("rpc");
	tcase_add_test(tc, rpc_parse_request);
	tcase_add_test(tc, rpc_parse_response);
	tcase_add_test(tc, rpc_parse_notify);
	tcase_add_test(tc, rpc_parse_any_int_encoding);
	tcase_add_loop_test(tc, rpc_parse_bad, 0, N_BAD_MSGS);
	tcase_add_test(tc, rpc_error_roundtrip);
	tcase_add_test(tc, rpc_error_extra_keys);
	tcase_add_test(tc, rpc_error_bad);
	tcase_add_test(tc, doc_apply_example);
	tcase_add_test(tc, doc_map_example);
	tcase_add_test(tc, doc_error_example);
	suite_add_tcase(s, tc);

	tc = tcase_create("path");
	tcase_add_test(tc, path_env_wins);
	tcase_add_test(tc, path_default_for_user);
	tcase_add_test(tc, path_too_long);
	suite_add_tcase(s, tc);

	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(proto_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
