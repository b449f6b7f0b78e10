/* map: one map request and its stream of "result" notifications.  map_run
 * checks every chunk against the protocol (right msgid, inside the map,
 * each item covered once, in order when ordered) and hands it to a sink:
 * the caller's callback (mpool_map) or the collector (mpool_map_collect). */
#include "libmpool-private.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A sink receives a checked chunk: results_len bytes holding the results
 * array (n_results elements, still encoded, inside the frame) and the
 * chunk's failed items.  A negative return is remembered; later chunks are
 * then read and dropped so the stream stays in step. */
typedef int (*sink_fn)(mpool *p, void *userdata, uint64_t first, const uint8_t *results,
		       size_t results_len, uint32_t n_results,
		       const struct mpool_item_error *errs, size_t n_errs);

struct map_run {
	uint64_t msgid;
	uint64_t n_items;
	bool ordered;
	uint64_t next;          /* ordered: the first index due */
	uint8_t *seen;          /* unordered: one bit per item delivered */
	uint64_t covered;       /* items delivered */
	uint64_t failed;        /* item errors delivered */
	int err;                /* first failure of the sink */
	sink_fn sink;
	void *userdata;
};

/* Checks the error objects of a chunk covering [first, first + n) and
 * measures the messages.  0 or -EBADMSG. */
static int check_errors(struct mp_cur c, uint32_t n_errs, uint64_t first, uint32_t n,
			size_t *ret_msg_bytes)
{
	size_t bytes = 0;

	while (n_errs--) {
		const char *msg;
		uint32_t msg_len;
		int64_t index;
		int code;

		if (mp_read_error(&c, &code, &msg, &msg_len, &index) < 0 || code <= 0 ||
		    index < 0 || (uint64_t)index < first || (uint64_t)index - first >= n)
			return -EBADMSG;
		bytes += (size_t)msg_len + 1;
	}
	*ret_msg_bytes = bytes;
	return 0;
}

/* The chunk's error objects as the public struct, messages NUL-terminated,
 * in one block (the caller frees it).  NULL when out of memory. */
static struct mpool_item_error *copy_errors(struct mp_cur c, uint32_t n_errs, size_t msg_bytes)
{
	struct mpool_item_error *errs = malloc(n_errs * sizeof(*errs) + msg_bytes);
	char *text;

	if (!errs)
		return NULL;
	text = (char *)(errs + n_errs);
	for (uint32_t i = 0; i < n_errs; i++) {
		const char *msg;
		uint32_t msg_len;
		int64_t index;
		int code;

		mp_read_error(&c, &code, &msg, &msg_len, &index);  /* checked before */
		errs[i].index = (uint64_t)index;
		errs[i].code = code;
		errs[i].message = text;
		memcpy(text, msg, msg_len);
		text[msg_len] = '\0';
		text += msg_len + 1;
	}
	return errs;
}

/* Marks [first, first + n) delivered; false when any of it already was. */
static bool mark_seen(uint8_t *seen, uint64_t first, uint32_t n)
{
	for (uint64_t i = first; i < first + n; i++) {
		if (seen[i / 8] & (1u << (i % 8)))
			return false;
		seen[i / 8] |= (uint8_t)(1u << (i % 8));
	}
	return true;
}

/* [2, "result", [msgid, first, results, errors]] */
static int on_result(mpool *p, void *userdata, const struct mp_msg *m)
{
	struct map_run *run = userdata;
	struct mpool_item_error *errs = NULL;
	const uint8_t *results;
	struct mp_cur c, res, errc;
	uint64_t msgid, first;
	uint32_t n, n_res, n_errs;
	size_t results_len, msg_bytes;
	int r;

	if (!mp_str_eq(m->method, m->method_len, "result"))
		return mpc_err(p, MPOOL_E_PROTO, "mpoold sent an unexpected \"%.*s\" notification",
			       (int)m->method_len, m->method);
	mp_cur_init(&c, m->body, m->body_len);
	if (mp_read_array(&c, &n) < 0 || n != 4 || mp_read_u64(&c, &msgid) < 0 ||
	    mp_read_u64(&c, &first) < 0)
		goto bad;
	res = c;
	if (mp_read_array(&res, &n_res) < 0 || mp_skip(&c, &results, &results_len) < 0 ||
	    mp_read_array(&c, &n_errs) < 0)
		goto bad;
	errc = c;
	if (n_errs > n_res || mp_skip_n(&c, n_errs, NULL, NULL) < 0 || !mp_cur_done(&c) ||
	    check_errors(errc, n_errs, first, n_res, &msg_bytes) < 0)
		goto bad;
	if (msgid != run->msgid)
		return mpc_err(p, MPOOL_E_PROTO, "mpoold sent results for msgid %llu while %llu was open",
			       (unsigned long long)msgid, (unsigned long long)run->msgid);
	if (first > run->n_items || n_res > run->n_items - first)
		return mpc_err(p, MPOOL_E_PROTO, "mpoold sent results for items %llu..%llu of %llu",
			       (unsigned long long)first, (unsigned long long)(first + n_res),
			       (unsigned long long)run->n_items);
	if (run->ordered ? first != run->next : !mark_seen(run->seen, first, n_res))
		return mpc_err(p, MPOOL_E_PROTO, "mpoold sent results from item %llu out of turn",
			       (unsigned long long)first);
	run->next = first + n_res;
	run->covered += n_res;
	run->failed += n_errs;
	if (run->err < 0)
		return 0;

	if (n_errs > 0) {
		errs = copy_errors(errc, n_errs, msg_bytes);
		if (!errs) {
			run->err = mpc_err(p, MPOOL_E_NOMEM, "out of memory reading map results");
			return 0;
		}
	}
	r = run->sink(p, run->userdata, first, results, results_len, n_res, errs, n_errs);
	free(errs);
	if (r < 0) {
		if (p->dead)
			return r;
		run->err = r;
	}
	return 0;
bad:
	return mpc_err(p, MPOOL_E_PROTO, "mpoold sent a malformed result notification");
}

/* {"items": n, "failed": f} */
static int read_summary(mpool *p, const struct map_run *run, const struct mp_msg *m,
			struct mpool_map_summary *ret)
{
	struct mpool_map_summary s = { 0 };
	bool have_items = false, have_failed = false;
	struct mp_cur c;
	uint32_t n;

	mp_cur_init(&c, m->body, m->body_len);
	if (mp_read_map(&c, &n) < 0)
		goto bad;
	while (n--) {
		const char *k;
		uint32_t kl;

		if (mp_read_str(&c, &k, &kl) < 0)
			goto bad;
		if (mp_str_eq(k, kl, "items")) {
			if (mp_read_u64(&c, &s.items) < 0)
				goto bad;
			have_items = true;
		} else if (mp_str_eq(k, kl, "failed")) {
			if (mp_read_u64(&c, &s.failed) < 0)
				goto bad;
			have_failed = true;
		} else if (mp_skip(&c, NULL, NULL) < 0) {  /* future keys */
			goto bad;
		}
	}
	if (!have_items || !have_failed)
		goto bad;
	if (s.items != run->n_items || run->covered != run->n_items || s.failed != run->failed)
		return mpc_err(p, MPOOL_E_PROTO,
			       "mpoold ended a map of %llu items (%llu failed) after results for %llu (%llu failed)",
			       (unsigned long long)s.items, (unsigned long long)s.failed,
			       (unsigned long long)run->covered, (unsigned long long)run->failed);
	*ret = s;
	return 0;
bad:
	return mpc_err(p, MPOOL_E_PROTO, "mpoold sent a malformed map summary");
}

static int pack_request(mpool *p, struct mpc_req *rq, const char *fn, const void *items,
			size_t items_len, uint64_t n_items, const struct mpool_map_opts *opts)
{
	struct mpc_opts o = { 0 };
	uint32_t n_opts;
	int r;

	if (opts) {
		o.chunksize = opts->chunksize;
		o.unordered = opts->unordered;
		o.timeout_ms = opts->timeout_ms;
		o.retries = opts->retries;
	}
	n_opts = mpc_opts_count(&o);
	r = mpc_req_start(p, rq, "map", n_opts ? 3 : 2);
	if (r < 0)
		return r;
	if (mp_pack_cstr(&rq->pk, fn) < 0 || msgpack_pack_array(&rq->pk, (size_t)n_items) < 0)
		goto nomem;
	/* The items are already MessagePack: copy them, do not re-encode. */
	r = mpc_req_raw(p, rq, items, items_len);
	if (r < 0)
		return r;
	if (n_opts == 0)
		return 0;
	if (mpc_opts_pack(&rq->pk, &o) < 0)
		goto nomem;
	return 0;
nomem:
	return mpc_err(p, MPOOL_E_NOMEM, "out of memory packing a request");
}

static int map_run(mpool *p, const char *fn, const void *items, size_t items_len,
		   uint64_t n_items, const struct mpool_map_opts *opts, sink_fn sink,
		   void *userdata, struct mpool_map_summary *ret_summary)
{
	struct map_run run = {
		.n_items = n_items,
		.ordered = !(opts && opts->unordered),
		.sink = sink,
		.userdata = userdata,
	};
	struct mpool_map_summary s = { 0 };
	struct mpc_req rq;
	struct mp_msg m;
	int r;

	if (!fn)
		return mpc_err(p, MPOOL_E_INVAL, "map: no function name");
	if (n_items > UINT32_MAX)
		return mpc_err(p, MPOOL_E_INVAL, "map: %llu items are more than one request can carry",
			       (unsigned long long)n_items);
	r = mpc_check_values(p, "map items", items, items_len, n_items);
	if (r < 0)
		return r;
	if (!run.ordered) {
		run.seen = calloc(n_items / 8 + 1, 1);
		if (!run.seen)
			return mpc_err(p, MPOOL_E_NOMEM, "out of memory starting a map");
	}

	r = pack_request(p, &rq, fn, items, items_len, n_items, opts);
	run.msgid = rq.msgid;
	if (r == 0)
		r = mpc_req_call(p, &rq, on_result, &run, &m);
	mpc_req_done(&rq);
	if (r == 0)
		r = read_summary(p, &run, &m, &s);
	if (r == 0)
		r = run.err;
	free(run.seen);
	if (r < 0)
		return r;
	if (ret_summary)
		*ret_summary = s;
	return 0;
}

struct stream {
	mpool_chunk_cb cb;
	void *userdata;
};

static int stream_chunk(mpool *p, void *userdata, uint64_t first, const uint8_t *results,
			size_t results_len, uint32_t n_results,
			const struct mpool_item_error *errs, size_t n_errs)
{
	struct stream *s = userdata;
	msgpack_unpacked up;
	size_t off = 0;
	int r;

	(void)n_results;
	if (!s->cb)
		return 0;
	/* The objects may point into the frame, which stays put until the
	 * next read: no copy needed for the length of the callback. */
	msgpack_unpacked_init(&up);
	r = msgpack_unpack_next(&up, (const char *)results, results_len, &off);
	if (r != MSGPACK_UNPACK_SUCCESS) {
		msgpack_unpacked_destroy(&up);
		if (r == MSGPACK_UNPACK_NOMEM_ERROR)
			return mpc_err(p, MPOOL_E_NOMEM, "out of memory decoding map results");
		return mpc_err(p, MPOOL_E_PROTO, "mpoold sent results msgpack-c cannot decode");
	}
	/* A callback that calls back into p would read over this frame. */
	p->in_callback = true;
	s->cb(s->userdata, first, &up.data, errs, n_errs);
	p->in_callback = false;
	msgpack_unpacked_destroy(&up);
	return 0;
}

int mpool_map(mpool *p, const char *fn, const void *items, size_t items_len,
	      uint64_t n_items, const struct mpool_map_opts *opts,
	      mpool_chunk_cb cb, void *userdata,
	      struct mpool_map_summary *ret_summary)
{
	struct stream s = { cb, userdata };
	int r;

	if (!p)
		return -MPOOL_E_INVAL;
	r = mpc_usable(p);
	if (r < 0)
		return r;
	return map_run(p, fn, items, items_len, n_items, opts, stream_chunk, &s, ret_summary);
}

struct collect {
	msgpack_zone *zone;
	msgpack_object *items;  /* n_items slots in zone */
	bool failed;            /* once true, results are no longer kept */
	uint64_t fail_index;    /* the lowest failed item seen */
	int fail_code;
	char fail_msg[MPC_ERRMSG_MAX];
};

static int collect_chunk(mpool *p, void *userdata, uint64_t first, const uint8_t *results,
			 size_t results_len, uint32_t n_results,
			 const struct mpool_item_error *errs, size_t n_errs)
{
	struct collect *col = userdata;
	msgpack_object obj;
	int r;

	for (size_t i = 0; i < n_errs; i++) {
		if (col->failed && errs[i].index >= col->fail_index)
			continue;
		col->failed = true;
		col->fail_index = errs[i].index;
		col->fail_code = errs[i].code;
		snprintf(col->fail_msg, sizeof(col->fail_msg), "%s", errs[i].message);
	}
	/* Like Pool.map, a failed item fails the call: stop keeping results. */
	if (col->failed)
		return 0;
	r = mpc_decode(p, col->zone, results, results_len, &obj);
	if (r < 0)
		return r;
	if (obj.type != MSGPACK_OBJECT_ARRAY || obj.via.array.size != n_results)
		return mpc_err(p, MPOOL_E_PROTO, "mpoold sent results that are not an array");
	memcpy(col->items + first, obj.via.array.ptr, n_results * sizeof(msgpack_object));
	return 0;
}

int mpool_map_collect(mpool *p, const char *fn, const void *items,
		      size_t items_len, uint64_t n_items,
		      const struct mpool_map_opts *opts, mpool_value **ret_results)
{
	struct collect col = { 0 };
	msgpack_object arr = { .type = MSGPACK_OBJECT_ARRAY };
	mpool_value *v;
	int r;

	if (!p)
		return -MPOOL_E_INVAL;
	r = mpc_usable(p);
	if (r < 0)
		return r;
	if (n_items > UINT32_MAX)
		return mpc_err(p, MPOOL_E_INVAL, "map: %llu items are more than one request can carry",
			       (unsigned long long)n_items);
	if (n_items > SIZE_MAX / sizeof(msgpack_object))
		return mpc_err(p, MPOOL_E_NOMEM, "out of memory for %llu results",
			       (unsigned long long)n_items);
	v = mpc_value_new();
	if (!v)
		return mpc_err(p, MPOOL_E_NOMEM, "out of memory starting a map");
	col.zone = mpc_value_zone(v);
	if (n_items > 0) {
		col.items = msgpack_zone_malloc(col.zone, (size_t)n_items * sizeof(msgpack_object));
		if (!col.items) {
			mpool_value_free(v);
			return mpc_err(p, MPOOL_E_NOMEM, "out of memory for %llu results",
				       (unsigned long long)n_items);
		}
	}
	r = map_run(p, fn, items, items_len, n_items, opts, collect_chunk, &col, NULL);
	if (r == 0 && col.failed)
		r = mpc_err(p, MPOOL_E_ITEMS, "item %llu failed: %s: %s",
			    (unsigned long long)col.fail_index, mpool_strerror(col.fail_code),
			    col.fail_msg);
	if (r < 0 || !ret_results) {
		mpool_value_free(v);
		return r;
	}
	arr.via.array.size = (uint32_t)n_items;
	arr.via.array.ptr = col.items;
	mpc_value_set(v, &arr);
	*ret_results = v;
	return 0;
}
