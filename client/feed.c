/* feed: streamed input (PROTOCOL.md "Streamed input").  A streamed map's
 * request carries no items; mpoold answers with credit notifications, and
 * the producer is asked for items only as credit allows, packed into
 * "feed" notifications of at most MPOOL_FEED_MAX_ITEMS items or
 * MPOOL_FEED_MAX_BYTES bytes.  No feed is packed while that much output
 * waits in the queue, nor while the map's iterator is full, so the items
 * held here stay bounded whatever the length of the map. */
#include "libmpool-private.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void mpc_feed_start(struct mpool_async *a, mpool_producer produce, void *produce_ud)
{
	a->map.produce = produce;
	a->map.produce_ud = produce_ud;
	a->map.feeding = true;
	a->p->n_streams++;
}

void mpc_feed_start_items(struct mpool_async *a, const uint8_t *items, size_t len,
			  uint64_t n, uint8_t *own)
{
	a->map.src = items;
	a->map.src_len = len;
	a->map.src_items = n;
	a->map.src_own = own;
	mpc_feed_start(a, NULL, NULL);
}

void mpc_feed_stop(struct mpool_async *a)
{
	free(a->map.src_own);
	a->map.src_own = NULL;
	a->map.src = NULL;
	a->map.src_len = 0;
	a->map.src_items = 0;
	if (!a->map.feeding)
		return;
	a->map.feeding = false;
	if (a->p)
		a->p->n_streams--;
}

/* [2, "credit", [msgid, n]]: n more items may be sent. */
void mpc_feed_credit(mpool *p, struct mpool_async *a, const struct mp_msg *msg)
{
	struct mp_cur c;
	uint64_t msgid, n;
	uint32_t len;

	mp_cur_init(&c, msg->body, msg->body_len);
	if (mp_read_array(&c, &len) < 0 || len != 2 || mp_read_u64(&c, &msgid) < 0 ||
	    mp_read_u64(&c, &n) < 0 || !mp_cur_done(&c) || n > UINT64_MAX - a->map.granted) {
		mpc_conn_fail(p, MPOOL_E_PROTO, "mpoold sent a malformed credit notification");
		return;
	}
	a->map.granted += n;
}

static bool can_feed(const mpool *p, const struct mpool_async *a)
{
	const struct mpc_map *m = &a->map;

	return m->feeding && !a->done && a->open && m->n_items < m->granted &&
	       !(m->sink == SINK_ITER && m->full) &&
	       mpc_out_pending(p) < MPOOL_FEED_MAX_BYTES;
}

/* The scratch buffer a feed is packed in before it joins the queue: a
 * producer may queue requests of its own meanwhile. */
struct scratch {
	uint8_t *data;
	size_t len, cap;
	bool oom;
};

static int scratch_write(void *data, const char *buf, size_t len)
{
	struct scratch *s = data;

	if (s->cap - s->len < len) {
		size_t cap = s->cap ? s->cap : 65536;
		uint8_t *d;

		while (cap - s->len < len) {
			if (cap > SIZE_MAX / 2) {
				s->oom = true;
				return -1;
			}
			cap *= 2;
		}
		d = realloc(s->data, cap);
		if (!d) {
			s->oom = true;
			return -1;
		}
		s->data = d;
		s->cap = cap;
	}
	memcpy(s->data + s->len, buf, len);
	s->len += len;
	return 0;
}

/* Why a producer's item is refused, or NULL when it is one good value. */
static const char *check_item(const uint8_t *b, size_t len)
{
	size_t one;
	int r;

	if (len == 0)
		return "nothing";
	r = mp_scan_one(b, len, MP_ITEM_DEPTH_MAX, &one);
	if (r == 1)
		return one == len ? NULL : "more than one value";
	if (r == -ELOOP)
		return "a value nested deeper than 29 levels";
	if (r < 0)
		return "bytes that are not MessagePack";
	return "an incomplete value";
}

/* The producer failed (or packed something that is no item): the items
 * it made before are sent with end true, so they are still mapped and
 * delivered, and the map then fails with code (mpc_map_response), as
 * Pool.imap does with an iterable that raises. */
static void input_failed(struct mpool_async *a, int code, const char *msg)
{
	struct mpc_map *m = &a->map;

	if (m->input_err == 0) {
		m->input_err = -code;
		m->input_msg = strdup(msg);
	}
}

uint64_t mpc_feed_cut(const uint8_t *items, size_t len, uint64_t max, size_t max_bytes,
		      size_t *ret_len)
{
	struct mp_cur c;
	uint64_t n = 0;

	mp_cur_init(&c, items, len);
	while (n < max && (size_t)(c.p - items) < max_bytes && !mp_cur_done(&c)) {
		/* Checked when the map started: the skip cannot fail. */
		if (mp_skip_n(&c, 1, NULL, NULL) < 0)
			break;
		n++;
	}
	*ret_len = (size_t)(c.p - items);
	return n;
}

/* The next part of a map sent from a buffer: the items credit and the
 * bounds allow, raw (they were checked when the map started), end with
 * the last of them.  true when a feed was queued. */
static bool feed_items(mpool *p, struct mpool_async *a)
{
	struct mpc_map *m = &a->map;
	uint64_t credit = m->granted - m->n_items, n;
	size_t len, mark = mpc_out_mark(p);
	msgpack_packer pk;
	bool end;
	int r;

	n = mpc_feed_cut(m->src, m->src_len, credit < MPOOL_FEED_MAX_ITEMS ? credit :
			 MPOOL_FEED_MAX_ITEMS, MPOOL_FEED_MAX_BYTES, &len);
	end = n == m->src_items;
	mpc_packer(p, &pk);
	r = mp_pack_notify_head(&pk, "feed") | msgpack_pack_array(&pk, 3) |
	    msgpack_pack_uint64(&pk, a->msgid) | msgpack_pack_array(&pk, (size_t)n) |
	    mpc_out_write(p, m->src, len) |
	    (end ? msgpack_pack_true(&pk) : msgpack_pack_false(&pk));
	if (r) {
		mpc_out_rollback(p, mark);
		mpc_cancel(a, false, MPOOL_E_NOMEM, "out of memory sending the items of a map");
		return false;
	}
	m->src += len;
	m->src_len -= len;
	m->src_items -= n;
	m->n_items += n;
	if (end) {
		m->ended = true;
		mpc_feed_stop(a);
	}
	return true;
}

/* Packs one feed of a into the queue: as many items as credit and the
 * bounds allow, and end when the producer says so.  true when a feed was
 * queued. */
static bool feed_one(mpool *p, struct mpool_async *a)
{
	struct mpc_map *m = &a->map;
	uint64_t credit = m->granted - m->n_items;
	uint32_t max = credit < MPOOL_FEED_MAX_ITEMS ? (uint32_t)credit : MPOOL_FEED_MAX_ITEMS;
	struct scratch s = { 0 };
	msgpack_packer pk;
	size_t count_at, items_at;
	uint32_t count = 0;
	bool end = false;
	char msg[160];
	int r;

	msgpack_packer_init(&pk, &s, scratch_write);
	r = mp_pack_notify_head(&pk, "feed") | msgpack_pack_array(&pk, 3) |
	    msgpack_pack_uint64(&pk, a->msgid);
	/* The item count is known at the end: an array32 header holds any. */
	count_at = s.len;
	r |= scratch_write(&s, "\xdd\0\0\0\0", 5);
	items_at = s.len;
	if (r)
		goto nomem;
	while (count < max && s.len - items_at < MPOOL_FEED_MAX_BYTES) {
		size_t before = s.len;
		const char *why;
		int pr;

		MPC_CALLBACK(a, pr = m->produce(m->produce_ud, &pk));
		if (a->done || p->dead) {
			/* Cancelled (or the connection lost) from inside. */
			free(s.data);
			return false;
		}
		if (s.oom)
			goto nomem;
		if (pr == 0 && s.len == before) {
			end = true;
			break;
		}
		if (pr < 0) {
			snprintf(msg, sizeof(msg), "the producer failed at item %llu: %s",
				 (unsigned long long)(m->n_items + count), mpool_strerror(pr));
			input_failed(a, -pr, msg);
		} else {
			why = pr == 1 ? check_item(s.data + before, s.len - before)
				      : "a return value other than 1, 0 or a negative code";
			if (!why && pr == 0)
				why = "an item together with the end";
			if (!why) {
				count++;
				continue;
			}
			snprintf(msg, sizeof(msg), "the producer gave %s for item %llu", why,
				 (unsigned long long)(m->n_items + count));
			input_failed(a, MPOOL_E_INVAL, msg);
		}
		s.len = before;
		end = true;
		break;
	}
	s.data[count_at + 1] = (uint8_t)(count >> 24);
	s.data[count_at + 2] = (uint8_t)(count >> 16);
	s.data[count_at + 3] = (uint8_t)(count >> 8);
	s.data[count_at + 4] = (uint8_t)count;
	if ((end ? msgpack_pack_true(&pk) : msgpack_pack_false(&pk)) < 0 ||
	    mpc_out_write(p, s.data, s.len) < 0)
		goto nomem;
	free(s.data);
	m->n_items += count;
	if (end) {
		m->ended = true;
		mpc_feed_stop(a);
	}
	return true;
nomem:
	/* Without room for the feed the stream cannot even be ended. */
	free(s.data);
	mpc_cancel(a, false, MPOOL_E_NOMEM, "out of memory packing the items of a streamed map");
	return false;
}

bool mpc_feed_pump(mpool *p)
{
	bool queued = false;

	/* A producer may free or start calls: look for the next stream from
	 * the start of the list each time rather than keep a pointer. */
	while (p->n_streams > 0 && !p->dead && !p->wclosed && !p->fail_code) {
		struct mpool_async *a;

		for (a = p->calls; a && !can_feed(p, a); a = a->next)
			;
		if (!a)
			break;
		/* A feed that is not queued ended its stream. */
		if (a->map.src ? feed_items(p, a) : feed_one(p, a))
			queued = true;
	}
	return queued;
}
