/* square: the smallest useful libmpool program.  It squares 7 with one
 * apply, then squares 1..N with a map whose results stream back chunk by
 * chunk.  Build: cc square.c $(pkg-config --cflags --libs mpool) */
#include <stdio.h>
#include <stdlib.h>
#include <mpool/mpool.h>

static void on_chunk(void *sum, uint64_t first, const msgpack_object *results,
		     const struct mpool_item_error *errs, size_t n_errs)
{
	(void)first;
	for (uint32_t i = 0; i < results->via.array.size; i++)
		*(uint64_t *)sum += results->via.array.ptr[i].via.u64;
	for (size_t i = 0; i < n_errs; i++)
		fprintf(stderr, "item %llu: %s\n", (unsigned long long)errs[i].index,
			errs[i].message);
}

int main(int argc, char **argv)
{
	uint64_t n = argc > 1 ? strtoull(argv[1], NULL, 10) : 1000, sum = 0;
	struct mpool_map_summary summary;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	mpool_value *v;
	char why[MPOOL_ERRMSG_MAX];
	mpool *p;
	int r;

	r = mpool_connect(NULL, &p, why, sizeof(why));    /* the default socket path */
	if (r < 0) {
		fprintf(stderr, "%s\n", why);
		return 1;
	}

	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_int(&pk, 7);
	r = mpool_apply(p, "builtin.square", sb.data, sb.size, &v);
	if (r < 0) {
		fprintf(stderr, "apply: %s\n", mpool_errmsg(p));
		goto out;
	}
	printf("7 squared is %llu\n", (unsigned long long)mpool_value_get(v)->via.u64);
	mpool_value_free(v);

	/* map items are n MessagePack values back to back */
	msgpack_sbuffer_clear(&sb);
	for (uint64_t i = 1; i <= n; i++)
		msgpack_pack_uint64(&pk, i);
	r = mpool_map(p, "builtin.square", sb.data, sb.size, n, NULL, on_chunk, &sum, &summary);
	if (r < 0) {
		fprintf(stderr, "map: %s\n", mpool_errmsg(p));
		goto out;
	}
	printf("sum of squares 1..%llu is %llu (%llu items, %llu failed)\n",
	       (unsigned long long)n, (unsigned long long)sum,
	       (unsigned long long)summary.items, (unsigned long long)summary.failed);
out:
	msgpack_sbuffer_destroy(&sb);
	mpool_close(p);
	return r < 0 ? 1 : 0;
}
