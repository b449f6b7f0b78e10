/* disp_out: results on their way to clients.  The ordering buffer holds an
 * ordered map's chunks that finished early; stream credit lets a streamed
 * map's client send more items as room opens. */
#include "disp_int.h"

#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "mem.h"
#include "mp_rpc.h"

/* A finished chunk of an ordered map, waiting for the chunks before it. */
struct held {
	uint64_t first;
	uint32_t count;
	/* The worker's frame buffer they lie in, or a copy of the results
	 * array then the errors array: the client takes it either way. */
	uint8_t *owned;
	const uint8_t *results, *errors;
	size_t results_len, errors_len;
	struct held *next;
};

static uint64_t tasks_failed;

uint64_t disp_tasks_failed(void)
{
	return tasks_failed;
}

void out_free_held(struct job *job)
{
	struct held *h, *next;

	for (h = job->held; h; h = next) {
		next = h->next;
		free(h->owned);
		free(h);
	}
	job->held = NULL;
}

/* Grants a streamed map's client credit, if room opened.  It may have at
 * most --stream-window items sent and unanswered, so the master holds a
 * bounded input whatever the map's length.  Grants go out in batches of at
 * least a quarter window. */
void out_grant(struct job *job)
{
	uint64_t window = cfg.stream_window, outstanding, left, room;

	if (!job->streaming || !job->conn)
		return;
	outstanding = job->n_items - job->emitted;
	left = job->granted - job->n_items;
	if (outstanding + left >= window || job->seg_bytes >= cfg.stream_window_bytes)
		return;
	room = window - outstanding - left;
	/* Credit counts items; --stream-window-bytes bounds bytes: grant no
	 * more items than the bytes left would hold at the average size seen
	 * so far, counting those granted and not yet sent. */
	if (job->n_items > 0) {
		uint64_t avg = job->fed_bytes / job->n_items + 1;
		uint64_t fit = (cfg.stream_window_bytes - job->seg_bytes) / avg;

		if (fit == 0 && job->seg_bytes == 0)
			fit = 1;         /* items larger than the window: one at a time */
		if (fit <= left)
			return;
		if (room > fit - left)
			room = fit - left;
	}
	if (room < window / 4 && left > 0)
		return;
	job->granted += room;
	disp_io->send_credit(job->conn, job->msgid, room);
}

/* owned: as for send_chunk.  Pieces are never empty (out_piece). */
static void out_emit(struct job *job, uint64_t first, uint32_t count,
		     const uint8_t *results, size_t rlen, const uint8_t *errors, size_t elen,
		     uint8_t *owned)
{
	disp_io->send_chunk(job->conn, job->msgid, first, results, rlen, errors, elen, owned);
	job->emitted += count;
}

/* Large results are adopted with the buffer they arrived in, not copied
 * (NULL: copy). */
static uint8_t *out_take_results(const struct disp_results_buf *buf,
				 const uint8_t *results, size_t rlen)
{
	return rlen >= DISP_ADOPT_MIN && buf ? buf->take(buf->ctx, results, rlen) : NULL;
}

void out_piece(struct job *job, uint64_t first, uint32_t count,
	       const uint8_t *results, size_t rlen, const uint8_t *errors, size_t elen,
	       uint32_t n_errors, const struct disp_results_buf *buf)
{
	job->failed += n_errors;
	tasks_failed += n_errors;
	if (!job->conn || count == 0)
		return;
	if (!job->is_map) {
		disp_io->apply_done(job->conn, job->msgid, results, rlen, errors, elen, n_errors);
		job->emitted += count;
		return;
	}
	if (!job->ordered || first == job->emitted) {
		out_emit(job, first, count, results, rlen, errors, elen,
			 out_take_results(buf, results, rlen));
		while (job->held && job->held->first == job->emitted) {
			struct held *h = job->held;

			job->held = h->next;
			out_emit(job, h->first, h->count, h->results, h->results_len,
				 h->errors, h->errors_len, h->owned);
			free(h);
		}
	} else {
		struct held *h = xcalloc(1, sizeof(*h)), **pp = &job->held;

		h->first = first;
		h->count = count;
		h->owned = out_take_results(buf, results, rlen);
		if (h->owned) {
			h->results = results;
			h->errors = errors;
		} else {
			h->owned = xmalloc(rlen + elen);
			memcpy(h->owned, results, rlen);
			memcpy(h->owned + rlen, errors, elen);
			h->results = h->owned;
			h->errors = h->owned + rlen;
		}
		h->results_len = rlen;
		h->errors_len = elen;
		while (*pp && (*pp)->first < h->first)
			pp = &(*pp)->next;
		h->next = *pp;
		*pp = h;
	}
}

void out_fail_chunk(struct chunk *ck, int code, const char *msg)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;
	size_t rlen;

	/* The results array (all nil), then the errors array. */
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_array(&pk, ck->count);
	for (uint32_t i = 0; i < ck->count; i++)
		msgpack_pack_nil(&pk);
	rlen = sb.size;
	msgpack_pack_array(&pk, ck->count);
	for (uint32_t i = 0; i < ck->count; i++)
		mp_pack_error(&pk, code, msg, (int64_t)(ck->first + i));
	if (!sb.data) {
		log_err("out of memory failing a chunk");
		abort();
	}
	out_piece(ck->job, ck->first, ck->count, (uint8_t *)sb.data, rlen,
		  (uint8_t *)sb.data + rlen, sb.size - rlen, ck->count, NULL);
	msgpack_sbuffer_destroy(&sb);
}

