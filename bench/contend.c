/* contend: what one client sees while another keeps the pool busy.
 *
 *   contend --socket PATH [--maps M] [--items I] [--ms MS] [--n N]
 *
 * A hog process opens M maps of I builtin.sleep items of MS ms each
 * (chunksize 1) on one connection and reads their results as they come.
 * Meanwhile this process, on its own connection, times N serial applies of
 * builtin.square and then one map of 20 builtin.sleep items of 10 ms
 * (chunksize 1), the victim of issue 14.  Run it with --maps 0 for the
 * figures of an idle pool.  Prints one JSON object on stdout; failures go to
 * stderr, exit status 1.  The hog is killed when done. */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <msgpack.h>
#include <mpool/mpool.h>

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void pack_str(msgpack_packer *pk, const char *s)
{
	msgpack_pack_str_with_body(pk, s, strlen(s));
}

/* The hog: raw requests, so it needs no event loop to keep M maps open. */
static void hog(const char *path, unsigned maps, unsigned items, unsigned ms)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	msgpack_sbuffer sb;
	msgpack_packer pk;
	char buf[65536];
	int fd;

	prctl(PR_SET_PDEATHSIG, SIGKILL);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		perror("contend: hog: connect");
		_exit(1);
	}
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	for (unsigned m = 0; m < maps; m++) {
		msgpack_pack_array(&pk, 4);
		msgpack_pack_uint8(&pk, 0);
		msgpack_pack_uint32(&pk, m + 1);
		pack_str(&pk, "map");
		msgpack_pack_array(&pk, 3);
		pack_str(&pk, "builtin.sleep");
		msgpack_pack_array(&pk, items);
		for (unsigned i = 0; i < items; i++)
			msgpack_pack_uint32(&pk, ms);
		msgpack_pack_map(&pk, 1);
		pack_str(&pk, "chunksize");
		msgpack_pack_uint32(&pk, 1);
	}
	for (size_t off = 0; off < sb.size;) {
		ssize_t n = write(fd, sb.data + off, sb.size - off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			perror("contend: hog: write");
			_exit(1);
		}
		off += (size_t)n;
	}
	/* Results are read and dropped, so the hog is never held back for
	 * output it does not read. */
	while (read(fd, buf, sizeof(buf)) > 0 || errno == EINTR)
		;
	_exit(0);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static void fail(mpool *p, const char *what, int r)
{
	fprintf(stderr, "contend: %s: %s (%d)\n", what, p ? mpool_errmsg(p) : "", r);
	exit(1);
}

static void victim_chunk(void *ud, uint64_t first, const msgpack_object *res,
			 const struct mpool_item_error *errs, size_t n_errs)
{
	(void)ud;
	(void)first;
	(void)res;
	if (n_errs) {
		fprintf(stderr, "contend: victim item %llu failed: %s\n",
			(unsigned long long)errs[0].index, errs[0].message);
		exit(1);
	}
}

int main(int argc, char **argv)
{
	const char *path = NULL;
	unsigned maps = 100, items = 200, ms = 10, n = 50;
	struct mpool_map_summary sum;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	uint64_t *lat, t0, victim_ns;
	pid_t child = 0;
	mpool *p;
	int r;

	for (int i = 1; i + 1 < argc; i += 2) {
		const char *o = argv[i], *v = argv[i + 1];

		if (strcmp(o, "--socket") == 0)
			path = v;
		else if (strcmp(o, "--maps") == 0)
			maps = (unsigned)atoi(v);
		else if (strcmp(o, "--items") == 0)
			items = (unsigned)atoi(v);
		else if (strcmp(o, "--ms") == 0)
			ms = (unsigned)atoi(v);
		else if (strcmp(o, "--n") == 0)
			n = (unsigned)atoi(v);
	}
	if (!path || n < 1 || items < 1) {
		fprintf(stderr, "usage: contend --socket PATH [--maps M] [--items I] [--ms MS] "
			"[--n N]\n");
		return 2;
	}
	r = mpool_connect(path, &p, NULL, 0);
	if (r < 0)
		fail(NULL, "connect", r);
	if (maps) {
		child = fork();
		if (child < 0)
			fail(NULL, "fork", -errno);
		if (child == 0)
			hog(path, maps, items, ms);
		/* Let the hog's maps arrive and fill the queue. */
		usleep(500 * 1000);
	}
	lat = calloc(n, sizeof(*lat));
	if (!lat)
		fail(NULL, "calloc", -ENOMEM);
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	for (unsigned i = 0; i < n; i++) {
		mpool_value *v = NULL;

		sb.size = 0;
		msgpack_pack_uint32(&pk, 7);
		t0 = now_ns();
		r = mpool_apply(p, "builtin.square", sb.data, sb.size, &v);
		lat[i] = now_ns() - t0;
		if (r < 0)
			fail(p, "apply", r);
		mpool_value_free(v);
	}
	sb.size = 0;
	for (unsigned i = 0; i < 20; i++)
		msgpack_pack_uint32(&pk, 10);
	t0 = now_ns();
	r = mpool_map(p, "builtin.sleep", sb.data, sb.size, 20,
		      &(struct mpool_map_opts)MPOOL_MAP_OPTS(.chunksize = 1), victim_chunk, NULL, &sum);
	victim_ns = now_ns() - t0;
	if (r < 0)
		fail(p, "map", r);
	if (child > 0) {
		kill(child, SIGKILL);
		waitpid(child, NULL, 0);
	}
	qsort(lat, n, sizeof(*lat), cmp_u64);
	printf("{\"hog_maps\": %u, \"hog_items\": %u, \"hog_ms\": %u, \"applies\": %u, "
	       "\"apply_p50_ms\": %.2f, \"apply_p99_ms\": %.2f, \"apply_max_ms\": %.2f, "
	       "\"victim_map_20x10ms_s\": %.3f}\n", maps, items, ms, n,
	       (double)lat[n / 2] / 1e6, (double)lat[(n * 99) / 100] / 1e6,
	       (double)lat[n - 1] / 1e6, (double)victim_ns / 1e9);
	free(lat);
	msgpack_sbuffer_destroy(&sb);
	mpool_close(p);
	return 0;
}
