/* test_value: libmpool's decoding of results (client/value.c), unit by
 * unit: every MessagePack encoding of a scalar decodes to the object
 * msgpack-c makes of the same bytes, strings and containers too, and
 * malformed arrays are refused.  Linked with libmpool's objects, so it
 * reaches the internal mpc_decode_items. */
#include <check.h>

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "libmpool-private.h"

/* Packs one of every kind, in every encoding msgpack-c's packer offers,
 * and returns how many. */
static uint32_t pack_every_kind(msgpack_packer *pk)
{
	static const int64_t ints[] = {
		0, 1, 127, 128, 255, 256, 65535, 65536, 4294967295ll, 4294967296ll,
		INT64_MAX, -1, -32, -33, -128, -129, -32768, -32769, -2147483648ll,
		-2147483649ll, INT64_MIN
	};
	uint32_t n = 0;

	for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++, n++)
		msgpack_pack_int64(pk, ints[i]);
	msgpack_pack_uint64(pk, UINT64_MAX), n++;
	/* Signed and wide encodings of small values, as other packers may
	 * write them: msgpack-c calls a non-negative one POSITIVE_INTEGER. */
	msgpack_pack_fix_int8(pk, 0), n++;
	msgpack_pack_fix_int8(pk, 5), n++;
	msgpack_pack_fix_int8(pk, -5), n++;
	msgpack_pack_fix_int16(pk, 300), n++;
	msgpack_pack_fix_int16(pk, -300), n++;
	msgpack_pack_fix_int32(pk, 0), n++;
	msgpack_pack_fix_int32(pk, -7), n++;
	msgpack_pack_fix_int64(pk, 0), n++;
	msgpack_pack_fix_int64(pk, 1ll << 40), n++;
	msgpack_pack_fix_uint8(pk, 3), n++;
	msgpack_pack_fix_uint16(pk, 3), n++;
	msgpack_pack_fix_uint32(pk, 3), n++;
	msgpack_pack_fix_uint64(pk, 3), n++;
	msgpack_pack_float(pk, 1.5f), n++;
	msgpack_pack_double(pk, -2.25), n++;
	msgpack_pack_nil(pk), n++;
	msgpack_pack_true(pk), n++;
	msgpack_pack_false(pk), n++;
	msgpack_pack_str_with_body(pk, "a string", 8), n++;
	msgpack_pack_str_with_body(pk, "", 0), n++;    /* empty: points nowhere */
	msgpack_pack_bin_with_body(pk, "", 0), n++;
	msgpack_pack_bin_with_body(pk, "\0\1\2", 3), n++;
	msgpack_pack_array(pk, 2), msgpack_pack_int(pk, 1), msgpack_pack_str_with_body(pk, "x", 1), n++;
	msgpack_pack_map(pk, 1), msgpack_pack_str_with_body(pk, "k", 1), msgpack_pack_double(pk, 0.5), n++;
	msgpack_pack_ext_with_body(pk, "ab", 2, 7), n++;
	msgpack_pack_int(pk, 42), n++;    /* a scalar after the others */
	return n;
}

START_TEST(every_kind_as_msgpack_c)
{
	msgpack_sbuffer items, arr;
	msgpack_packer pk;
	msgpack_zone *zone = msgpack_zone_new(4096), *ref = msgpack_zone_new(4096);
	msgpack_object *out;
	uint32_t n;
	size_t off = 0;

	msgpack_sbuffer_init(&items);
	msgpack_packer_init(&pk, &items, msgpack_sbuffer_write);
	n = pack_every_kind(&pk);
	msgpack_sbuffer_init(&arr);
	msgpack_packer_init(&pk, &arr, msgpack_sbuffer_write);
	msgpack_pack_array(&pk, n);
	msgpack_sbuffer_write(&arr, items.data, items.size);

	out = calloc(n, sizeof(*out));
	ck_assert_int_eq(mpc_decode_items(zone, NULL, NULL, (const uint8_t *)arr.data, arr.size, n, out),
			 0);
	/* The objects must not point into the caller's bytes: they go away. */
	memset(arr.data, 0xc1, arr.size);
	for (uint32_t i = 0; i < n; i++) {
		msgpack_object want;

		ck_assert_int_ge(msgpack_unpack(items.data, items.size, &off, ref, &want), 0);
		ck_assert_msg(out[i].type == want.type && msgpack_object_equal(out[i], want),
			      "item %u: type %d, msgpack-c says %d", i, out[i].type, want.type);
		if ((want.type == MSGPACK_OBJECT_STR || want.type == MSGPACK_OBJECT_BIN) &&
		    want.via.str.size == 0)
			ck_assert_msg(out[i].via.str.ptr == NULL,
				      "item %u: an empty string points somewhere", i);
	}
	ck_assert_uint_eq(off, items.size);
	free(out);
	msgpack_zone_free(zone);
	msgpack_zone_free(ref);
	msgpack_sbuffer_destroy(&items);
	msgpack_sbuffer_destroy(&arr);
}
END_TEST

START_TEST(malformed_arrays_refused)
{
	/* [1, 2] with a count of 3 expected; a uint32 cut short; a byte
	 * left over; not an array at all. */
	static const uint8_t two[] = { 0x92, 0x01, 0x02 };
	static const uint8_t cut[] = { 0x91, 0xce, 0x00, 0x01 };
	static const uint8_t extra[] = { 0x91, 0x01, 0x02 };
	static const uint8_t cut_str[] = { 0x91, 0xa5, 'a', 'b' };
	static const uint8_t scalar[] = { 0x01 };
	msgpack_zone *zone = msgpack_zone_new(4096);
	msgpack_object out[3];

	ck_assert_int_eq(mpc_decode_items(zone, NULL, NULL, two, sizeof(two), 3, out), -MPOOL_E_PROTO);
	ck_assert_int_eq(mpc_decode_items(zone, NULL, NULL, two, sizeof(two), 2, out), 0);
	ck_assert_uint_eq(out[1].via.u64, 2);
	ck_assert_int_eq(mpc_decode_items(zone, NULL, NULL, cut, sizeof(cut), 1, out), -MPOOL_E_PROTO);
	ck_assert_int_eq(mpc_decode_items(zone, NULL, NULL, extra, sizeof(extra), 1, out), -MPOOL_E_PROTO);
	ck_assert_int_eq(mpc_decode_items(zone, NULL, NULL, cut_str, sizeof(cut_str), 1, out), -MPOOL_E_PROTO);
	ck_assert_int_eq(mpc_decode_items(zone, NULL, NULL, scalar, sizeof(scalar), 1, out), -MPOOL_E_PROTO);
	msgpack_zone_free(zone);
}
END_TEST

/* A chunk of strings of MPC_ADOPT_MIN bytes or more keeps the framer's
 * buffer instead of a copy: the objects point into the frame, and stay
 * valid after the framer has moved on and is gone.  A smaller one is
 * copied, and the framer keeps its buffer. */
static void chunk_of_blobs(size_t blob_len, bool adopted)
{
	uint8_t *blob = malloc(blob_len);
	struct mp_frame_limits lim = { .max_frame = 8 * MPC_ADOPT_MIN, .max_depth = MP_DEPTH_MAX };
	msgpack_zone *zone = msgpack_zone_new(4096);
	struct mp_frame f;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	msgpack_object out[3];
	const uint8_t *frame;
	uint8_t *buf;
	size_t len;

	ck_assert_ptr_nonnull(blob);
	memset(blob, 'x', blob_len);
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_array(&pk, 3);
	for (int i = 0; i < 3; i++) {
		blob[0] = (uint8_t)('a' + i);
		msgpack_pack_bin_with_body(&pk, blob, blob_len);
	}
	msgpack_pack_nil(&pk);            /* the start of a next frame */
	mp_frame_init(&f, &lim);
	ck_assert_int_eq(mp_frame_push(&f, sb.data, sb.size), 0);
	buf = f.data;
	ck_assert_int_eq(mp_frame_next(&f, &frame, &len), 1);
	ck_assert_uint_eq(len, sb.size - 1);
	ck_assert_int_eq(mpc_decode_items(zone, NULL, &f, frame, len, 3, out), 0);
	if (adopted) {
		/* No copy: the blobs point into the frame, and the framer
		 * kept going with the rest in a buffer of its own. */
		ck_assert_ptr_eq(out[0].via.bin.ptr, (const char *)frame + 1 + 5);
		ck_assert_ptr_ne(f.data, buf);
	} else {
		ck_assert((const uint8_t *)out[0].via.bin.ptr < frame ||
			  (const uint8_t *)out[0].via.bin.ptr >= frame + len);
		ck_assert_ptr_eq(f.data, buf);
	}
	ck_assert_int_eq(mp_frame_next(&f, &frame, &len), 1);
	ck_assert_uint_eq(len, 1);
	mp_frame_free(&f);
	for (int i = 0; i < 3; i++)
		ck_assert(out[i].via.bin.size == blob_len && out[i].via.bin.ptr[0] == 'a' + i &&
			  out[i].via.bin.ptr[blob_len - 1] == 'x');
	msgpack_zone_free(zone);       /* frees the adopted buffer (ASan: no leak) */
	msgpack_sbuffer_destroy(&sb);
	free(blob);
}

START_TEST(large_chunk_adopts_the_frame)
{
	chunk_of_blobs(MPC_ADOPT_MIN / 2, true);
}
END_TEST

START_TEST(smaller_chunk_is_copied)
{
	chunk_of_blobs(MPC_ADOPT_MIN / 4 - 16, false);
}
END_TEST

/* A big results array has a mapping of its own, gone with its zone. */
START_TEST(big_arrays_mapped_and_unmapped)
{
	size_t n = 2 * MPC_HUGE_MIN / sizeof(msgpack_object);
	msgpack_zone *zone = msgpack_zone_new(4096);
	msgpack_object *small = mpc_zone_objects(zone, 10);
	msgpack_object *big = mpc_zone_objects(zone, n);
	void *page;

	ck_assert_ptr_nonnull(small);
	ck_assert_ptr_nonnull(big);
	for (size_t i = 0; i < n; i++)
		big[i].via.u64 = i;
	ck_assert_uint_eq(big[n - 1].via.u64, n - 1);
	page = (void *)((uintptr_t)big & ~(uintptr_t)4095);
	ck_assert_int_eq(msync(page, 4096, MS_ASYNC), 0);
	ck_assert_ptr_null(mpc_zone_objects(zone, SIZE_MAX / 2));
	msgpack_zone_free(zone);
	/* msync fails with ENOMEM on memory that is not mapped. */
	ck_assert_int_eq(msync(page, 4096, MS_ASYNC), -1);
	ck_assert_int_eq(errno, ENOMEM);
}
END_TEST

/* Copies that add up to MPC_ARENA_FROM go to mappings of filled memory,
 * aligned to a huge page, that the zone frees; smaller totals stay in the
 * zone. */
START_TEST(copies_move_to_the_arena)
{
	enum { BLOB = 100 * 1024, CHUNKS = 40 };   /* 4 MB in all */
	static uint8_t blob[BLOB];
	msgpack_zone *zone = msgpack_zone_new(4096);
	struct mpc_arena arena = { 0 };
	msgpack_object out[CHUNKS][2];
	msgpack_sbuffer sb;
	msgpack_packer pk;
	void *first_mapped = NULL;
	unsigned in_arena = 0;

	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	for (int c = 0; c < CHUNKS; c++) {
		bool mapped;

		sb.size = 0;
		msgpack_pack_array(&pk, 2);
		memset(blob, 'a' + c % 26, sizeof(blob));
		msgpack_pack_bin_with_body(&pk, blob, sizeof(blob));
		msgpack_pack_uint32(&pk, (uint32_t)c);
		/* No framer: every chunk is a copy. */
		ck_assert_int_eq(mpc_decode_items(zone, &arena, NULL, (const uint8_t *)sb.data,
						  sb.size, 2, out[c]), 0);
		mapped = arena.next && (const uint8_t *)out[c][0].via.bin.ptr < arena.end &&
			 (const uint8_t *)out[c][0].via.bin.ptr >= arena.end - MPC_ARENA_CHUNK;
		/* Before the total reaches the bound: zone memory. */
		if ((size_t)(c + 1) * (sb.size) < MPC_ARENA_FROM)
			ck_assert(!mapped);
		if (mapped) {
			in_arena++;
			if (!first_mapped)
				first_mapped = (void *)(arena.end - MPC_ARENA_CHUNK);
		}
	}
	ck_assert_uint_ge(in_arena, CHUNKS / 2);
	ck_assert_uint_eq((uintptr_t)first_mapped % (2u << 20), 0);
	ck_assert_uint_ge(arena.kept, (size_t)CHUNKS * BLOB);
	/* Every copy is intact, in the zone or in the arena. */
	for (int c = 0; c < CHUNKS; c++) {
		ck_assert_uint_eq(out[c][0].via.bin.size, BLOB);
		ck_assert_int_eq(out[c][0].via.bin.ptr[0], 'a' + c % 26);
		ck_assert_int_eq(out[c][0].via.bin.ptr[BLOB - 1], 'a' + c % 26);
		ck_assert_uint_eq(out[c][1].via.u64, (uint64_t)c);
	}
	ck_assert_int_eq(msync(first_mapped, 4096, MS_ASYNC), 0);
	msgpack_zone_free(zone);
	ck_assert_int_eq(msync(first_mapped, 4096, MS_ASYNC), -1);
	msgpack_sbuffer_destroy(&sb);
}
END_TEST

static Suite *value_suite(void)
{
	Suite *s = suite_create("value");
	TCase *tc = tcase_create("decode");

	tcase_add_test(tc, every_kind_as_msgpack_c);
	tcase_add_test(tc, malformed_arrays_refused);
	tcase_add_test(tc, big_arrays_mapped_and_unmapped);
	tcase_add_test(tc, large_chunk_adopts_the_frame);
	tcase_add_test(tc, smaller_chunk_is_copied);
	tcase_add_test(tc, copies_move_to_the_arena);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(value_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
