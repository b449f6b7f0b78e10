/* iter: imap iterators.  Chunks of results are kept encoded, as they came,
 * in a queue bounded by MPOOL_ITER_MAX_ITEMS and MPOOL_ITER_MAX_BYTES;
 * while it is full the connection stops reading (conn.c, may_route) and
 * streams stop producing (feed.c), so mpoold's flow control holds the rest.
 * The chunk being taken is decoded once; mpool_iter_next() walks it. */
#include "libmpool-private.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void update_full(struct mpool_async *a)
{
	struct mpc_map *m = &a->map;
	bool full = m->buf_items >= MPOOL_ITER_MAX_ITEMS || m->buf_bytes >= MPOOL_ITER_MAX_BYTES;

	if (full == m->full)
		return;
	m->full = full;
	if (a->p) {
		if (full)
			a->p->n_full++;
		else
			a->p->n_full--;
	}
}

int mpc_iter_push(struct mpool_async *a, uint64_t first, uint32_t n, const uint8_t *results,
		  size_t results_len, const uint8_t *errors, size_t errors_len,
		  uint32_t n_errs)
{
	struct mpc_map *m = &a->map;
	struct mpc_chunk *c = malloc(sizeof(*c) + results_len + errors_len);

	if (!c)
		return -MPOOL_E_NOMEM;
	c->next = NULL;
	c->first = first;
	c->n = n;
	c->n_errs = n_errs;
	c->results_len = results_len;
	c->errors_len = errors_len;
	memcpy(c->bytes, results, results_len);
	memcpy(c->bytes + results_len, errors, errors_len);
	if (m->tail)
		m->tail->next = c;
	else
		m->head = c;
	m->tail = c;
	m->buf_items += n;
	m->buf_bytes += results_len + errors_len;
	update_full(a);
	return 0;
}

/* Lets go of the chunk being taken. */
static void drop_cur(struct mpool_async *a)
{
	struct mpc_map *m = &a->map;

	if (!m->cur)
		return;
	m->buf_items -= m->cur->n;
	m->buf_bytes -= m->cur->results_len + m->cur->errors_len;
	msgpack_unpacked_destroy(&m->cur_up);
	msgpack_unpacked_init(&m->cur_up);
	free(m->cur_errs);
	free(m->cur_by_item);
	free(m->cur);
	m->cur = NULL;
	m->cur_errs = NULL;
	m->cur_by_item = NULL;
	update_full(a);
}

void mpc_iter_drop(struct mpool_async *a)
{
	struct mpc_map *m = &a->map;
	struct mpc_chunk *c;

	drop_cur(a);
	while ((c = m->head)) {
		m->head = c->next;
		free(c);
	}
	m->tail = NULL;
	m->buf_items = 0;
	m->buf_bytes = 0;
	update_full(a);
}

bool mpc_iter_has(const struct mpool_async *a)
{
	const struct mpc_map *m = &a->map;

	return (m->cur && m->cur_pos < m->cur->n) || m->head;
}

/* Makes the next queued chunk the current one, decoded.  0, or a failure
 * (the chunk is lost; the iterator then fails as a whole). */
static int take_chunk(struct mpool_async *a)
{
	struct mpc_map *m = &a->map;
	struct mpc_chunk *c = m->head;
	size_t off = 0;
	int r;

	m->head = c->next;
	if (!m->head)
		m->tail = NULL;
	m->cur = c;
	m->cur_pos = 0;
	r = msgpack_unpack_next(&m->cur_up, (const char *)c->bytes, c->results_len, &off);
	if (r != MSGPACK_UNPACK_SUCCESS)
		return r == MSGPACK_UNPACK_NOMEM_ERROR ? -MPOOL_E_NOMEM : -MPOOL_E_PROTO;
	if (m->cur_up.data.type != MSGPACK_OBJECT_ARRAY || m->cur_up.data.via.array.size != c->n)
		return -MPOOL_E_PROTO;
	if (c->n_errs == 0)
		return 0;
	m->cur_errs = mpc_copy_errors(c->bytes + c->results_len, c->errors_len, c->n_errs);
	m->cur_by_item = calloc(c->n, sizeof(*m->cur_by_item));
	if (!m->cur_errs || !m->cur_by_item)
		return -MPOOL_E_NOMEM;
	for (uint32_t i = 0; i < c->n_errs; i++)
		m->cur_by_item[m->cur_errs[i].index - c->first] = &m->cur_errs[i];
	return 0;
}

/* The end of the iteration: 0, or the map's failure. */
static int ended(struct mpool_async *a)
{
	if (a->err < 0 && a->p)
		snprintf(a->p->errmsg, sizeof(a->p->errmsg), "%s",
			 a->errmsg ? a->errmsg : "out of memory");
	return a->err;
}

int mpool_iter_next(mpool_iter *it, int timeout_ms, struct mpool_item *ret)
{
	struct mpool_async *a;
	struct mpc_map *m;
	const struct mpool_item_error *e = NULL;
	mpool *p;
	uint32_t i;
	int r;

	if (!it || !ret)
		return -MPOOL_E_INVAL;
	a = &it->a;
	m = &a->map;
	p = a->p;
	if (!m->cur || m->cur_pos >= m->cur->n) {
		drop_cur(a);
		if (!m->head) {
			if (a->done)
				return ended(a);
			if (timeout_ms != 0 && p && p->depth > 0)
				return mpc_can_block(p);
			if (!mpc_wait(a, timeout_ms))
				return mpc_err(p, MPOOL_E_TIMEOUT, "no result within %d ms; the map goes on",
					       timeout_ms);
			if (!m->head)
				return ended(a);
		} else if (p && p->depth == 0 && !p->dead) {
			/* Between chunks: take in what arrived, feed what
			 * the credit allows, without waiting. */
			mpc_step(p, NULL, MPC_PROCESS_BUDGET);
			if (!m->head)
				return ended(a);    /* the step failed and dropped it */
		}
		r = take_chunk(a);
		if (r < 0) {
			mpc_cancel(a, false, -r, r == -MPOOL_E_NOMEM ? "out of memory decoding results"
				   : "mpoold sent results msgpack-c cannot decode");
			return ended(a);
		}
	}
	i = m->cur_pos++;
	if (m->cur_by_item)
		e = m->cur_by_item[i];
	ret->index = m->cur->first + i;
	ret->result = e ? NULL : &m->cur_up.data.via.array.ptr[i];
	ret->code = e ? e->code : 0;
	ret->message = e ? e->message : "";
	/* After the last item of a chunk its bytes stay, and count against
	 * the bound, until the next call. */
	return 1;
}

int mpool_iter_summary(const mpool_iter *it, struct mpool_map_summary *ret)
{
	if (!it || !ret || !it->a.done || it->a.err < 0 || mpc_iter_has(&it->a))
		return -MPOOL_E_INVAL;
	*ret = it->a.map.summary;
	return 0;
}

int mpool_iter_cancel(mpool_iter *it, int kill)
{
	if (!it)
		return -MPOOL_E_INVAL;
	if (it->a.done)
		return 0;
	mpc_cancel(&it->a, kill != 0, MPOOL_E_CANCELLED, "cancelled by its client");
	return 1;
}

void mpool_iter_free(mpool_iter *it)
{
	if (!it)
		return;
	if (!it->a.done)
		mpc_cancel(&it->a, false, MPOOL_E_CANCELLED, "cancelled: its iterator was freed");
	mpc_iter_drop(&it->a);
	mpc_call_release(&it->a);
}

static int start(mpool *p, const char *fn, const void *items, size_t items_len,
		 uint64_t n_items, const struct mpool_map_opts *opts, bool unordered,
		 mpool_producer produce, void *produce_ud, mpool_iter **ret)
{
	struct mpool_map_opts o;
	struct mpool_async *a;
	int r;

	if (!p || !ret)
		return -MPOOL_E_INVAL;
	r = mpc_usable(p);
	if (r < 0)
		return r;
	/* The caller's struct may be smaller or larger than ours. */
	r = mpc_opts_copy(p, "struct mpool_map_opts", &o, sizeof(o), opts);
	if (r < 0)
		return r;
	if (unordered)
		o.unordered = 1;
	a = mpc_map_start(p, fn, items, items_len, n_items, &o, false,
			  produce ? INPUT_PRODUCER : INPUT_COPY, SINK_ITER, sizeof(struct mpool_iter),
			  &r);
	if (!a)
		return r;
	if (produce)
		mpc_feed_start(a, produce, produce_ud);
	mpc_watch_update(p);
	*ret = (mpool_iter *)a;
	return 0;
}

int mpool_imap(mpool *p, const char *fn, const void *items, size_t items_len,
	       uint64_t n_items, const struct mpool_map_opts *opts, mpool_iter **ret)
{
	return start(p, fn, items, items_len, n_items, opts, false, NULL, NULL, ret);
}

int mpool_imap_unordered(mpool *p, const char *fn, const void *items, size_t items_len,
			 uint64_t n_items, const struct mpool_map_opts *opts,
			 mpool_iter **ret)
{
	return start(p, fn, items, items_len, n_items, opts, true, NULL, NULL, ret);
}

int mpool_imap_stream(mpool *p, const char *fn, mpool_producer produce, void *produce_ud,
		      const struct mpool_map_opts *opts, mpool_iter **ret)
{
	if (p && !produce)
		return mpc_err(p, MPOOL_E_INVAL, "imap_stream: no producer");
	return start(p, fn, NULL, 0, 0, opts, false, produce, produce_ud, ret);
}
