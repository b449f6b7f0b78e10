/* async: libmpool's async API in one short program, against the default
 * socket.  An apply_async whose callback prints its result, a map_async
 * collected with get, and two iterators: imap_unordered printing results as
 * they finish, and imap_stream squaring a million numbers made on the fly
 * (neither side ever holds more than a window of them).
 * Build: cc async.c $(pkg-config --cflags --libs mpool) */
#include <stdio.h>
#include <stdlib.h>
#include <mpool/mpool.h>

static void on_result(void *what, const msgpack_object *result)
{
	printf("%s: %llu\n", (const char *)what, (unsigned long long)result->via.u64);
}

static void on_error(void *what, int code, const char *message)
{
	fprintf(stderr, "%s failed: %s: %s\n", (const char *)what, mpool_strerror(code), message);
}

/* Packs 1, 2, ... n, then says the input ended. */
static int numbers(void *userdata, msgpack_packer *pk)
{
	uint64_t *next = userdata;

	if (*next > 1000000)
		return 0;
	msgpack_pack_uint64(pk, (*next)++);
	return 1;
}

int main(void)
{
	const msgpack_object *all;
	struct mpool_item item;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	mpool_async *apply = NULL, *map = NULL;
	mpool_iter *it = NULL;
	uint64_t next = 1, sum = 0;
	char why[MPOOL_ERRMSG_MAX];
	mpool *p;
	int r;

	r = mpool_connect(NULL, &p, why, sizeof(why));
	if (r < 0) {
		fprintf(stderr, "%s\n", why);
		return 1;
	}
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);

	/* 1. Send and go on; the callback runs inside a later libmpool call. */
	msgpack_pack_int(&pk, 7);
	r = mpool_apply_async(p, "builtin.square", sb.data, sb.size, NULL, on_result, on_error,
			      "7 squared", &apply);
	if (r < 0)
		goto fail;

	/* 2. A map in flight at the same time, on the same connection. */
	msgpack_sbuffer_clear(&sb);
	for (int i = 1; i <= 10; i++)
		msgpack_pack_int(&pk, i);
	r = mpool_map_async(p, "builtin.square", sb.data, sb.size, 10, NULL, NULL, NULL, NULL,
			    &map);
	if (r < 0)
		goto fail;
	r = mpool_async_get(map, 5000, &all);     /* waits; runs the apply's callback too */
	if (r < 0)
		goto fail;
	for (uint32_t i = 0; i < all->via.array.size; i++)
		sum += all->via.array.ptr[i].via.u64;
	printf("sum of the squares of 1..10: %llu\n", (unsigned long long)sum);
	mpool_async_wait(apply, -1);

	/* 3. Results as they finish: 300 ms, 100 ms, 200 ms of sleep. */
	msgpack_sbuffer_clear(&sb);
	msgpack_pack_int(&pk, 300);
	msgpack_pack_int(&pk, 100);
	msgpack_pack_int(&pk, 200);
	r = mpool_imap_unordered(p, "builtin.sleep", sb.data, sb.size, 3,
				 &(struct mpool_map_opts)MPOOL_MAP_OPTS(.chunksize = 1), &it);
	if (r < 0)
		goto fail;
	while ((r = mpool_iter_next(it, -1, &item)) == 1)
		printf("item %llu slept %llu ms\n", (unsigned long long)item.index,
		       (unsigned long long)item.result->via.u64);
	if (r < 0)
		goto fail;
	mpool_iter_free(it);
	it = NULL;

	/* 4. A million items made as the map goes, results taken as they come. */
	r = mpool_imap_stream(p, "builtin.square", numbers, &next, NULL, &it);
	if (r < 0)
		goto fail;
	for (sum = 0; (r = mpool_iter_next(it, -1, &item)) == 1;)
		sum += item.code ? 0 : item.result->via.u64 % 1000;
	if (r < 0)
		goto fail;
	printf("sum of the squares of 1..1000000, each mod 1000: %llu\n",
	       (unsigned long long)sum);
	r = 0;
	goto out;
fail:
	fprintf(stderr, "%s\n", mpool_errmsg(p));
out:
	mpool_iter_free(it);
	mpool_async_free(map);
	mpool_async_free(apply);
	msgpack_sbuffer_destroy(&sb);
	mpool_close(p);
	return r < 0;
}
