/* Unit tests of the dispatcher's arithmetic: chunk sizing and the task
 * quota that drives recycling.  The integration suite proves the same rules
 * against a real mpoold; these pin the edge cases down cheaply. */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>

#include "disp.h"

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
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
