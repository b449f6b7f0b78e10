/* map: a map request and its stream of "result" notifications.  Every
 * chunk is checked against the protocol (inside the map, each item covered
 * once, in order when ordered) and handed to the map's sink: the caller's
 * chunk callback, the collector (map_collect, map_async) or an iterator's
 * buffer.  Also the blocking maps. */
#include "libmpool-private.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- checks ------------------------------------------------------------ */

/* Marks [first, first + n) delivered; false when any of it already was.
 * The window slides as the low items complete, so a map of any length
 * needs only as many bits as it has items in flight. */
static int seen_mark(struct mpc_seen *s, uint64_t first, uint32_t n, bool *ret_dup)
{
	uint64_t end = first + n;
	size_t need, full;

	*ret_dup = false;
	if (n == 0)
		return 0;
	if (first < s->base) {
		*ret_dup = true;
		return 0;
	}
	need = (size_t)((end - s->base + 7) / 8);
	if (need > s->cap) {
		size_t cap = s->cap ? s->cap : 64;
		uint8_t *b;

		while (cap < need)
			cap *= 2;
		b = realloc(s->bits, cap);
		if (!b)
			return -1;
		memset(b + s->cap, 0, cap - s->cap);
		s->bits = b;
		s->cap = cap;
	}
	for (uint64_t i = first - s->base; i < end - s->base; i++) {
		if (s->bits[i / 8] & (1u << (i % 8))) {
			*ret_dup = true;
			return 0;
		}
		s->bits[i / 8] |= (uint8_t)(1u << (i % 8));
	}
	/* Slide past the complete bytes once they are a good part of it. */
	for (full = 0; full < s->cap && s->bits[full] == 0xff; full++)
		;
	if (full > 0 && full * 2 >= s->cap) {
		memmove(s->bits, s->bits + full, s->cap - full);
		memset(s->bits + s->cap - full, 0, full);
		s->base += (uint64_t)full * 8;
	}
	return 0;
}

/* Checks the error objects of a chunk covering [first, first + n) and
 * measures their messages.  0 or -EBADMSG. */
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

/* The error objects (checked before) as the public struct, messages
 * NUL-terminated, in one block the caller frees.  NULL when out of memory. */
struct mpool_item_error *mpc_copy_errors(const uint8_t *errors, size_t len, uint32_t n_errs)
{
	struct mpool_item_error *errs;
	size_t msg_bytes = 0;
	struct mp_cur c;
	char *text;

	mp_cur_init(&c, errors, len);
	for (uint32_t i = 0; i < n_errs; i++) {
		const char *msg;
		uint32_t msg_len;
		int64_t index;
		int code;

		mp_read_error(&c, &code, &msg, &msg_len, &index);
		msg_bytes += (size_t)msg_len + 1;
	}
	errs = malloc(n_errs * sizeof(*errs) + msg_bytes);
	if (!errs)
		return NULL;
	text = (char *)(errs + n_errs);
	mp_cur_init(&c, errors, len);
	for (uint32_t i = 0; i < n_errs; i++) {
		const char *msg;
		uint32_t msg_len;
		int64_t index;
		int code;

		mp_read_error(&c, &code, &msg, &msg_len, &index);
		errs[i].index = (uint64_t)index;
		errs[i].code = -code;   /* the wire's code, as libmpool reports codes */
		errs[i].message = text;
		memcpy(text, msg, msg_len);
		text[msg_len] = '\0';
		text += msg_len + 1;
	}
	return errs;
}

/* ---- sinks --------------------------------------------------------------- */

static void sink_fail(struct mpool_async *a, int err)
{
	if (a->map.sink_err == 0)
		a->map.sink_err = err;
}

static void sink_chunk(struct mpool_async *a, uint64_t first, const uint8_t *results,
		       size_t results_len, const uint8_t *errors, size_t errors_len,
		       uint32_t n_errs)
{
	struct mpool_item_error *errs = NULL;
	msgpack_unpacked up;
	size_t off = 0;
	int r;

	if (!a->map.chunk_cb)
		return;
	if (n_errs > 0) {
		errs = mpc_copy_errors(errors, errors_len, n_errs);
		if (!errs) {
			sink_fail(a, -MPOOL_E_NOMEM);
			return;
		}
	}
	/* The objects may point into the frame, which stays put until the
	 * next read: no copy needed for the length of the callback. */
	msgpack_unpacked_init(&up);
	r = msgpack_unpack_next(&up, (const char *)results, results_len, &off);
	if (r != MSGPACK_UNPACK_SUCCESS) {
		sink_fail(a, r == MSGPACK_UNPACK_NOMEM_ERROR ? -MPOOL_E_NOMEM : -MPOOL_E_PROTO);
	} else {
		MPC_CALLBACK(a, a->map.chunk_cb(a->map.chunk_ud, first, &up.data, errs, n_errs));
	}
	msgpack_unpacked_destroy(&up);
	free(errs);
}

static void sink_collect(struct mpool_async *a, uint64_t first, const uint8_t *results,
			 size_t results_len, uint32_t n, const uint8_t *errors,
			 size_t errors_len, uint32_t n_errs)
{
	struct mpc_map *m = &a->map;
	struct mp_cur c;
	int r;

	mp_cur_init(&c, errors, errors_len);
	for (uint32_t i = 0; i < n_errs; i++) {
		const char *msg;
		uint32_t msg_len;
		int64_t index;
		int code;
		char *copy;

		mp_read_error(&c, &code, &msg, &msg_len, &index);
		if (m->item_failed && (uint64_t)index >= m->fail_index)
			continue;
		copy = strndup(msg, msg_len);
		if (!copy) {
			sink_fail(a, -MPOOL_E_NOMEM);
			return;
		}
		free(m->fail_msg);
		m->fail_msg = copy;
		m->item_failed = true;
		m->fail_index = (uint64_t)index;
		m->fail_code = code;
	}
	/* Like Pool.map, a failed item fails the call: stop keeping results. */
	if (m->item_failed)
		return;
	r = mpc_decode_items(mpc_value_zone(a->value), mpc_value_arena(a->value), &a->p->frame,
			     results, results_len, n, m->items + first);
	if (r < 0)
		sink_fail(a, r);
}

/* [2, "result", [msgid, first, results, errors]] */
void mpc_map_result(mpool *p, struct mpool_async *a, const struct mp_msg *msg)
{
	struct mpc_map *m = &a->map;
	const uint8_t *results, *errors;
	struct mp_cur c, res, errc;
	uint64_t msgid, first;
	uint32_t n, n_res, n_errs;
	size_t results_len, msg_bytes;
	bool dup;
	int r;

	mp_cur_init(&c, msg->body, msg->body_len);
	if (mp_read_array(&c, &n) < 0 || n != 4 || mp_read_u64(&c, &msgid) < 0 ||
	    mp_read_u64(&c, &first) < 0)
		goto bad;
	res = c;
	if (mp_read_array(&res, &n_res) < 0 || mp_skip(&c, &results, &results_len) < 0 ||
	    mp_read_array(&c, &n_errs) < 0)
		goto bad;
	errc = c;
	errors = c.p;
	if (n_errs > n_res || mp_skip_n(&c, n_errs, NULL, NULL) < 0 || !mp_cur_done(&c) ||
	    check_errors(errc, n_errs, first, n_res, &msg_bytes) < 0)
		goto bad;
	if (first > m->n_items || n_res > m->n_items - first) {
		mpc_conn_fail(p, MPOOL_E_PROTO, "mpoold sent results for items %llu..%llu of %llu%s",
			      (unsigned long long)first, (unsigned long long)(first + n_res),
			      (unsigned long long)m->n_items, m->stream ? " sent" : "");
		return;
	}
	if (m->ordered) {
		dup = first != m->next;
	} else if (seen_mark(&m->seen, first, n_res, &dup) < 0) {
		/* Without the bits the check is lost, not the stream. */
		sink_fail(a, -MPOOL_E_NOMEM);
		dup = false;
	}
	if (dup) {
		mpc_conn_fail(p, MPOOL_E_PROTO, "mpoold sent results from item %llu out of turn",
			      (unsigned long long)first);
		return;
	}
	m->next = first + n_res;
	m->covered += n_res;
	m->failed += n_errs;
	if (m->sink_err < 0 || n_res == 0)
		return;
	switch (m->sink) {
	case SINK_NONE:
		break;
	case SINK_CHUNK:
		sink_chunk(a, first, results, results_len, errors, (size_t)(c.p - errors), n_errs);
		break;
	case SINK_COLLECT:
		sink_collect(a, first, results, results_len, n_res, errors,
			     (size_t)(c.p - errors), n_errs);
		break;
	case SINK_ITER:
		r = mpc_iter_push(a, first, n_res, results, results_len, errors,
				  (size_t)(c.p - errors), n_errs);
		if (r < 0)
			sink_fail(a, r);
		break;
	}
	return;
bad:
	mpc_conn_fail(p, MPOOL_E_PROTO, "mpoold sent a malformed result notification");
}

/* {"items": n, "failed": f} */
static int read_summary(const struct mp_msg *msg, struct mpool_map_summary *ret)
{
	struct mpool_map_summary s = { 0 };
	bool have_items = false, have_failed = false;
	struct mp_cur c;
	uint32_t n;

	mp_cur_init(&c, msg->body, msg->body_len);
	if (mp_read_map(&c, &n) < 0)
		return -1;
	while (n--) {
		const char *k;
		uint32_t kl;

		if (mp_read_str(&c, &k, &kl) < 0)
			return -1;
		if (mp_str_eq(k, kl, "items")) {
			if (mp_read_u64(&c, &s.items) < 0)
				return -1;
			have_items = true;
		} else if (mp_str_eq(k, kl, "failed")) {
			if (mp_read_u64(&c, &s.failed) < 0)
				return -1;
			have_failed = true;
		} else if (mp_skip(&c, NULL, NULL) < 0) {  /* future keys */
			return -1;
		}
	}
	if (!have_items || !have_failed)
		return -1;
	*ret = s;
	return 0;
}

void mpc_map_response(mpool *p, struct mpool_async *a, const struct mp_msg *msg)
{
	struct mpc_map *m = &a->map;
	struct mpool_map_summary s;
	char text[MPC_ERRMSG_MAX];
	msgpack_object arr = { .type = MSGPACK_OBJECT_ARRAY };
	int r;

	r = mpc_resp_error(msg, text, sizeof(text));
	if (r == -MPOOL_E_PROTO) {
		mpc_conn_fail(p, MPOOL_E_PROTO, "%s", text);
		mpc_call_complete(a, r, text);
		return;
	}
	if (r < 0) {
		mpc_call_complete(a, r, text);
		return;
	}
	if (read_summary(msg, &s) < 0) {
		snprintf(text, sizeof(text), "mpoold sent a malformed map summary");
		goto proto;
	}
	if (s.items != m->n_items || m->covered != m->n_items || s.failed != m->failed ||
	    (m->stream && !m->ended && !a->cancelled)) {
		snprintf(text, sizeof(text),
			 "mpoold ended a map of %llu items (%llu failed) after results for %llu of %llu (%llu failed)",
			 (unsigned long long)s.items, (unsigned long long)s.failed,
			 (unsigned long long)m->covered, (unsigned long long)m->n_items,
			 (unsigned long long)m->failed);
		goto proto;
	}
	m->summary = s;
	if (m->input_err < 0) {
		mpc_call_complete(a, m->input_err, m->input_msg);
		return;
	}
	if (m->sink_err < 0) {
		mpc_call_fail(a, -m->sink_err, "%s", m->sink_err == -MPOOL_E_NOMEM
			      ? "out of memory reading map results"
			      : "mpoold sent results msgpack-c cannot decode");
		return;
	}
	if (m->sink == SINK_COLLECT) {
		if (m->item_failed) {
			mpc_call_fail(a, MPOOL_E_ITEMS, "item %llu failed: %s: %s",
				      (unsigned long long)m->fail_index, mpool_strerror(m->fail_code),
				      m->fail_msg ? m->fail_msg : "");
			return;
		}
		arr.via.array.size = (uint32_t)m->n_items;
		arr.via.array.ptr = m->items;
		mpc_value_set(a->value, &arr);
	} else if (a->value) {
		/* A detached collector: nobody takes the results. */
		mpool_value_free(a->value);
		a->value = NULL;
	}
	mpc_call_complete(a, 0, NULL);
	return;
proto:
	mpc_conn_fail(p, MPOOL_E_PROTO, "%s", text);
	mpc_call_complete(a, -MPOOL_E_PROTO, text);
}

void mpc_map_free(struct mpool_async *a)
{
	if (a->is_iter)
		mpc_iter_drop(a);
	mpc_feed_stop(a);
	free(a->map.seen.bits);
	free(a->map.fail_msg);
	free(a->map.input_msg);
}

/* ---- starting a map -------------------------------------------------------- */

struct mpool_async *mpc_map_start(mpool *p, const char *fn, const void *items,
				  size_t items_len, uint64_t n_items,
				  const struct mpool_map_opts *opts, bool star,
				  enum mpc_input input, enum mpc_sink sink, size_t size,
				  int *ret_err)
{
	struct mpc_opts o = { .stream = input == INPUT_PRODUCER };
	bool slice;
	uint64_t first_n = n_items;
	size_t first_len = items_len;
	uint8_t *own = NULL;
	struct mpool_async *a;
	msgpack_packer pk;
	size_t mark;
	int r;

	if (!fn) {
		*ret_err = mpc_err(p, MPOOL_E_INVAL, "map: no function name");
		return NULL;
	}
	if (n_items > UINT32_MAX) {
		*ret_err = mpc_err(p, MPOOL_E_INVAL,
				   "map: %llu items are more than one request can carry",
				   (unsigned long long)n_items);
		return NULL;
	}
	r = mpc_check_values(p, star ? "starmap items" : "map items", items, items_len, n_items,
			     star);
	if (r < 0) {
		*ret_err = r;
		return NULL;
	}
	r = mpc_opts_from_map(p, &o, opts);
	if (r < 0) {
		*ret_err = r;
		return NULL;
	}
	/* A chunksize the caller chose is honoured exactly, which only a map
	 * in one request can promise (mpoold spreads a stream's parts). */
	slice = input != INPUT_PRODUCER && o.chunksize == 0 &&
		(n_items >= MPC_SLICE_MIN_ITEMS || items_len >= MPC_SLICE_MIN_BYTES);
	o.stream = o.stream || slice;
	if (slice) {
		/* The request carries the first part; mpoold starts on it
		 * while credit brings the rest. */
		first_n = mpc_feed_cut(items, items_len, MPOOL_FEED_MAX_ITEMS, MPOOL_FEED_MAX_BYTES,
				       &first_len);
		if (input == INPUT_COPY) {
			own = malloc(items_len - first_len);
			if (!own)
				goto nomem;
			memcpy(own, (const uint8_t *)items + first_len, items_len - first_len);
		}
	}
	a = mpc_call_new(p, MPC_MAP, size);
	if (!a) {
		free(own);
		goto nomem;
	}
	a->map.ordered = !o.unordered;
	a->map.stream = o.stream;
	a->map.n_items = first_n;
	/* The first part needs no credit: count it as granted, as mpoold does. */
	a->map.granted = slice ? first_n : 0;
	a->map.sink = sink;
	if (slice)
		mpc_feed_start_items(a, own ? own : (const uint8_t *)items + first_len,
				     items_len - first_len, n_items - first_n, own);
	if (sink == SINK_COLLECT) {
		a->value = mpc_value_new();
		if (!a->value)
			goto nomem_call;
		if (n_items > 0) {
			/* n_items <= UINT32_MAX (above): size_t holds it;
			 * mpc_zone_objects checks the product. */
			a->map.items = mpc_zone_objects(mpc_value_zone(a->value), (size_t)n_items);
			if (!a->map.items) {
				mpc_call_release(a);
				*ret_err = mpc_err(p, MPOOL_E_NOMEM, "out of memory for %llu results",
						   (unsigned long long)n_items);
				return NULL;
			}
		}
	}
	mark = mpc_out_mark(p);
	mpc_packer(p, &pk);
	r = mpc_pack_head(p, a->msgid, "map", mpc_opts_count(&o) ? 3 : 2);
	r |= mp_pack_cstr(&pk, fn) | msgpack_pack_array(&pk, (size_t)first_n);
	/* The items are already MessagePack: copy them, do not re-encode. */
	r |= mpc_out_write(p, items, first_len);
	if (mpc_opts_count(&o))
		r |= mpc_opts_pack(&pk, &o);
	if (r == 0 && mpc_call_open(a) < 0)
		r = -1;
	if (r) {
		mpc_out_rollback(p, mark);
		goto nomem_call;
	}
	mpc_send_soon(p);
	return a;
nomem_call:
	mpc_call_release(a);
nomem:
	*ret_err = mpc_err(p, MPOOL_E_NOMEM, "out of memory packing a request");
	return NULL;
}

/* ---- the blocking maps ---------------------------------------------------- */

/* Waits for a blocking map and lets it go: 0, or its failure with the
 * message in p->errmsg. */
static int map_finish(mpool *p, struct mpool_async *a, struct mpool_map_summary *ret_summary,
		      mpool_value **ret_results)
{
	int r;

	mpc_wait(a, -1);
	r = a->err;
	if (r < 0) {
		snprintf(p->errmsg, sizeof(p->errmsg), "%s", a->errmsg ? a->errmsg : "out of memory");
	} else {
		if (ret_summary)
			*ret_summary = a->map.summary;
		if (ret_results) {
			*ret_results = a->value;
			a->value = NULL;
		}
	}
	mpc_call_release(a);
	return r;
}

static int blocking_ok(mpool *p)
{
	int r;

	if (!p)
		return -MPOOL_E_INVAL;
	r = mpc_usable(p);
	if (r == 0)
		r = mpc_can_block(p);
	return r;
}

int mpool_map(mpool *p, const char *fn, const void *items, size_t items_len,
	      uint64_t n_items, const struct mpool_map_opts *opts,
	      mpool_chunk_cb cb, void *userdata,
	      struct mpool_map_summary *ret_summary)
{
	struct mpool_async *a;
	int r = blocking_ok(p);

	if (r < 0)
		return r;
	a = mpc_map_start(p, fn, items, items_len, n_items, opts, false, INPUT_BORROW, SINK_CHUNK,
			  sizeof(*a), &r);
	if (!a)
		return r;
	a->map.chunk_cb = cb;
	a->map.chunk_ud = userdata;
	return map_finish(p, a, ret_summary, NULL);
}

static int collect(mpool *p, const char *fn, const void *items, size_t items_len,
		   uint64_t n_items, const struct mpool_map_opts *opts, bool star,
		   mpool_value **ret_results)
{
	struct mpool_async *a;
	int r = blocking_ok(p);

	if (r < 0)
		return r;
	a = mpc_map_start(p, fn, items, items_len, n_items, opts, star, INPUT_BORROW, SINK_COLLECT,
			  sizeof(*a), &r);
	if (!a)
		return r;
	return map_finish(p, a, NULL, ret_results);
}

int mpool_map_collect(mpool *p, const char *fn, const void *items,
		      size_t items_len, uint64_t n_items,
		      const struct mpool_map_opts *opts, mpool_value **ret_results)
{
	return collect(p, fn, items, items_len, n_items, opts, false, ret_results);
}

int mpool_starmap(mpool *p, const char *fn, const void *items, size_t items_len,
		  uint64_t n_items, const struct mpool_map_opts *opts,
		  mpool_value **ret_results)
{
	return collect(p, fn, items, items_len, n_items, opts, true, ret_results);
}

int mpool_map_stream(mpool *p, const char *fn, mpool_producer produce, void *produce_ud,
		     const struct mpool_map_opts *opts, mpool_chunk_cb cb, void *userdata,
		     struct mpool_map_summary *ret_summary)
{
	struct mpool_async *a;
	int r = blocking_ok(p);

	if (r < 0)
		return r;
	if (!produce)
		return mpc_err(p, MPOOL_E_INVAL, "map_stream: no producer");
	a = mpc_map_start(p, fn, NULL, 0, 0, opts, false, INPUT_PRODUCER, SINK_CHUNK, sizeof(*a),
			  &r);
	if (!a)
		return r;
	a->map.chunk_cb = cb;
	a->map.chunk_ud = userdata;
	mpc_feed_start(a, produce, produce_ud);
	return map_finish(p, a, ret_summary, NULL);
}
