/* disp_seg: a job's input, kept as it arrived; chunks are carved from it
 * and the bytes held are counted for the memory budget. */
#include "disp_int.h"

#include <errno.h>
#include <stdlib.h>
#include <event2/buffer.h>

#include "config.h"
#include "log.h"
#include "mem.h"
#include "mp_rpc.h"

/* Chunks at least this large go to a worker by reference rather than
 * copied into its channel: smaller ones cost less to copy than a
 * reference costs to set up. */
#define DISP_REF_MIN 4096u
/* Default-sized chunks (not a chunksize the client chose) also stop at
 * this many bytes of items, so that large items do not make chunks whose
 * results outgrow the frame limit. */
#define DISP_CHUNK_BYTES (1u << 20)

/* The memory a segment's items live in, counted on its own: a worker
 * channel may still hold chunks of it by reference after the job is gone
 * (a worker killed before it read its chunk). */
struct seg_mem {
	unsigned refs;
	void *buf;                 /* owned: a copy, or the adopted read buffer */
};

/* The request's own items, or one "feed" of a streamed map.  It lives
 * while items of it are queued, running or waiting for a retry, so a
 * streamed map holds only the input its workers have not finished. */
struct seg {
	const uint8_t *frame;      /* the items' bytes, in mem */
	struct seg_mem *mem;
	size_t bytes;
	struct mp_cur items;       /* items not yet handed out */
	uint64_t left;             /* how many */
	uint64_t count;            /* items in the segment */
	size_t *marks;             /* count / DISP_MARK_EVERY item ends (owned) */
	unsigned refs;             /* chunks, retries, +1 while items are left */
	TAILQ_ENTRY(seg) link;
};

static size_t held_bytes;

uint32_t disp_auto_chunksize(uint64_t n_items, unsigned workers)
{
	uint64_t div = 4ull * (workers ? workers : 1);
	uint64_t c = (n_items + div - 1) / div;

	if (c < 1)
		c = 1;
	return c > DISP_CHUNK_MAX ? DISP_CHUNK_MAX : (uint32_t)c;
}

uint32_t disp_chunk_take(uint32_t chunksize, uint64_t items_left, uint64_t quota_left)
{
	uint64_t n = chunksize;

	if (n > items_left)
		n = items_left;
	if (n > quota_left)
		n = quota_left;
	return (uint32_t)n;
}

uint32_t disp_spec_chunksize(const struct job_spec *spec)
{
	if (spec->chunksize)
		return spec->chunksize;
	/* A stream's length is unknown: size chunks for a window's worth. */
	return disp_auto_chunksize(spec->stream ? cfg.stream_window : spec->n_items, cfg.workers);
}

/* Walks are noted here and copied into the segment made from them, so
 * the buffer serves every request (the master is single-threaded). */
static size_t *walk_marks;
static size_t walk_marks_cap;

int disp_walk_items(struct mp_cur *c, uint64_t n, const uint8_t **ret_items,
		    size_t *ret_len, const size_t **ret_marks)
{
	uint64_t nm = n / DISP_MARK_EVERY;

	/* Every item takes a byte at least: a count past what is left is a
	 * lie, refused before it sizes anything. */
	if (n > (uint64_t)(c->end - c->p))
		return -EBADMSG;
	if (nm > walk_marks_cap) {
		free(walk_marks);
		walk_marks = xmalloc(nm * sizeof(*walk_marks));
		walk_marks_cap = nm;
	}
	if (mp_skip_n_marked(c, n, DISP_MARK_EVERY, walk_marks, ret_items, ret_len) < 0)
		return -EBADMSG;
	*ret_marks = walk_marks;
	return 0;
}

static void seg_mem_unref(struct seg_mem *m)
{
	if (--m->refs > 0)
		return;
	free(m->buf);
	free(m);
}

static void seg_mem_cleanup(const void *data, size_t len, void *arg)
{
	(void)data;
	(void)len;
	seg_mem_unref(arg);
}

void seg_new(struct job *job, const uint8_t *items, size_t items_len, uint64_t count,
	     const size_t *marks, uint8_t *buf)
{
	struct seg *sg = xcalloc(1, sizeof(*sg));
	uint64_t nm = count / DISP_MARK_EVERY;

	sg->mem = xcalloc(1, sizeof(*sg->mem));
	sg->mem->refs = 1;
	sg->mem->buf = buf ? buf : xmemdup(items, items_len);
	sg->frame = buf ? items : sg->mem->buf;
	sg->bytes = items_len;
	mp_cur_init(&sg->items, sg->frame, items_len);
	sg->left = count;
	sg->count = count;
	if (nm > 0) {
		if (!marks) {
			log_err("%llu items without their marks", (unsigned long long)count);
			abort();
		}
		sg->marks = xmemdup(marks, nm * sizeof(*marks));
	}
	sg->refs = count > 0;
	TAILQ_INSERT_TAIL(&job->segs, sg, link);
	job->seg_bytes += items_len;
	job->fed_bytes += items_len;
	held_bytes += items_len;
	if (!job->cur && count > 0)
		job->cur = sg;
}

/* Unlinks sg from the job's list and frees it. */
static void seg_free(struct job *job, struct seg *sg)
{
	if (job->cur == sg)
		job->cur = TAILQ_NEXT(sg, link);
	TAILQ_REMOVE(&job->segs, sg, link);
	job->seg_bytes -= sg->bytes;
	held_bytes -= sg->bytes;
	free(sg->marks);
	seg_mem_unref(sg->mem);
	free(sg);
}

void seg_unref(struct job *job, struct seg *sg)
{
	if (--sg->refs > 0)
		return;
	seg_free(job, sg);
	/* Bytes freed may be what held the credit back. */
	if (job->streaming && job->conn)
		out_grant(job);
}

void seg_free_all(struct job *job)
{
	while (!STAILQ_EMPTY(&job->lost)) {
		struct retry *r = STAILQ_FIRST(&job->lost);

		STAILQ_REMOVE_HEAD(&job->lost, link);
		free(r);
	}
	while (!TAILQ_EMPTY(&job->segs))
		seg_free(job, TAILQ_FIRST(&job->segs));
}

size_t disp_job_bytes(const struct job *job)
{
	return job->seg_bytes;
}

size_t disp_bytes_held(void)
{
	return held_bytes;
}

void seg_slice(const uint8_t **items, size_t *len, uint32_t n, const uint8_t **ret_start,
	       size_t *ret_len)
{
	struct mp_cur c;

	mp_cur_init(&c, *items, *len);
	if (mp_skip_n(&c, n, ret_start, ret_len) < 0) {
		/* Every frame was measured on arrival; this cannot be. */
		log_err("items do not match their count");
		abort();
	}
	*items = c.p;
	*len = (size_t)(c.end - c.p);
}

/* Slices the next n items (at least one) off the job; a chunk of the
 * default size also stops at DISP_CHUNK_BYTES.  Hops over the marks noted
 * on arrival and walks at most DISP_MARK_EVERY - 1 items one by one. */
static uint32_t take_items(struct job *job, uint32_t n, struct chunk *ck)
{
	struct seg *sg = job->cur;
	const uint8_t *start = sg->items.p;
	uint64_t from = sg->count - sg->left, at = from, target;
	uint32_t taken;

	/* A chunk never spans segments: it points into one. */
	if (n > sg->left)
		n = (uint32_t)sg->left;
	target = from + n;
	for (uint64_t k = at / DISP_MARK_EVERY + 1; k * DISP_MARK_EVERY <= target; k++) {
		const uint8_t *q = sg->frame + sg->marks[k - 1];

		/* Past the byte limit: the cut lies before this mark. */
		if (job->auto_chunk && (size_t)(q - start) >= DISP_CHUNK_BYTES)
			break;
		sg->items.p = q;
		at = k * DISP_MARK_EVERY;
	}
	while (at < target) {
		if (mp_skip(&sg->items, NULL, NULL) < 0) {
			log_err("job %llu: items do not match their count",
				(unsigned long long)job->id);
			abort();
		}
		at++;
		if (job->auto_chunk && (size_t)(sg->items.p - start) >= DISP_CHUNK_BYTES)
			break;
	}
	taken = (uint32_t)(at - from);
	ck->items = start;
	ck->items_len = (size_t)(sg->items.p - start);
	ck->seg = sg;
	sg->refs++;
	sg->left -= taken;
	if (sg->left == 0) {
		job->cur = TAILQ_NEXT(sg, link);
		seg_unref(job, sg);      /* its cursor's reference */
	}
	return taken;
}

int disp_chunk_add_items(const struct chunk *ck, struct evbuffer *out)
{
	/* A batch's items are its own small copy. */
	if (ck->batch || ck->items_len < DISP_REF_MIN)
		return evbuffer_add(out, ck->items, ck->items_len) < 0 ? -ENOMEM : 0;
	if (evbuffer_add_reference(out, ck->items, ck->items_len, seg_mem_cleanup,
				   ck->seg->mem) < 0)
		return -ENOMEM;
	ck->seg->mem->refs++;
	return 0;
}

void seg_retry(struct job *job, const struct chunk *ck, uint32_t attempt)
{
	struct retry *r = xcalloc(1, sizeof(*r));

	r->ck = *ck;
	r->ck.attempt = attempt;
	r->ck.seg->refs++;
	STAILQ_INSERT_TAIL(&job->lost, r, link);
	sched_requeue(job);
}

bool seg_next_chunk(struct job *job, uint64_t quota, struct chunk *ck)
{
	struct retry *r = STAILQ_FIRST(&job->lost);
	uint32_t n;

	ck->job = job;
	if (r) {
		n = r->ck.count < quota ? r->ck.count : (uint32_t)quota;
		if (n == 0)
			return false;
		*ck = r->ck;
		ck->count = n;
		ck->seg->refs++;
		seg_slice(&r->ck.items, &r->ck.items_len, n, &ck->items, &ck->items_len);
		r->ck.first += n;
		r->ck.count -= n;
		if (r->ck.count == 0) {
			STAILQ_REMOVE_HEAD(&job->lost, link);
			seg_unref(job, r->ck.seg);
			free(r);
		}
		return true;
	}
	n = disp_chunk_take(job->chunksize, job->n_items - job->next_index, quota);
	/* A stream's items trickle in: spread what is here over the pool
	 * rather than hand it all to one worker. */
	if (job->streaming || job->granted) {
		unsigned w = cfg.workers ? cfg.workers : 1;     /* 0: a cluster gateway */
		uint64_t spread = (job->n_items - job->next_index + w - 1) / w;

		if (spread >= 1 && spread < n)
			n = (uint32_t)spread;
	}
	if (n == 0 || !job->cur)
		return false;
	ck->first = job->next_index;
	ck->count = take_items(job, n, ck);
	ck->attempt = 0;
	job->next_index += ck->count;
	sched_account(job);
	return true;
}

