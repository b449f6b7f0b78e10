/* pool_run: chunks to workers, and their frames back, each checked against
 * the chunk it runs before the dispatcher hears of it. */
#include "pool_int.h"

#include <errno.h>
#include <stdio.h>

#include <mpool/error.h>
#include "forksrv.h"
#include "log.h"
#include "master.h"
#include "wmsg.h"

uint64_t run_tasks_total;
static bool announced_ready;

static void arm_deadline(struct worker *w)
{
	if (w->eof)
		return;
	/* A worker reports finished items at least every WMSG_PART_MS (by its
	 * coarse clock), so the item it is on started at most that long after
	 * its last report: waiting timeout + WMSG_PART_MS + the clock's slack
	 * never kills a task early. */
	if (w->timeout_ms)
		timer_add_ms(w->deadline, (uint64_t)w->timeout_ms + WMSG_PART_MS + WMSG_PART_SLACK_MS);
}

void run_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;
	char cause[160];

	(void)fd;
	(void)what;
	if (w->killed) {
		forksrv_overdue(w->pid);
		return;
	}
	if (w->eof) {
		pool_fault(w, MPOOL_E_WORKER, "closed its channel but did not exit");
		return;
	}
	if (w->state != W_BUSY)
		return;
	snprintf(cause, sizeof(cause), "timed out: item %llu of job %llu ran past its %u ms deadline",
		 (unsigned long long)w->chunk.first,
		 (unsigned long long)disp_job_id(w->chunk.job), w->timeout_ms);
	pool_fault(w, MPOOL_E_TIMEOUT, cause);
}

struct worker *pool_idle(void)
{
	for (unsigned i = 0; i < pool_n_workers; i++)
		if (pool_workers[i].state == W_IDLE)
			return &pool_workers[i];
	return NULL;
}

uint64_t pool_quota_left(const struct worker *w)
{
	if (!w->quota)
		return UINT64_MAX;
	return w->tasks_done >= w->quota ? 0 : w->quota - w->tasks_done;
}

void pool_run(struct worker *w, const struct chunk *ck, const char *fn, uint32_t fn_len)
{
	/* Anything but an idle worker means an entry was handed work before
	 * the pool was done with it ("Hand-off" in disp.h). */
	if (w->state != W_IDLE || !w->ch) {
		log_err("worker %d given a chunk while %s", (int)w->pid,
			w->ch ? "not idle" : "without a channel");
		abort();
	}
	struct wmsg_run run = {
		.seq = ++w->seq, .fn = fn, .fn_len = fn_len, .first = ck->first,
		.each = ck->batch != NULL,
		.count = ck->count, .items = ck->items, .items_len = ck->items_len,
	};
	msgpack_packer pk;

	chan_packer(w->ch, &pk);
	if (wmsg_pack_run_head(&pk, &run) < 0 || disp_chunk_add_items(ck, chan_out(w->ch)) < 0) {
		log_err("out of memory sending a chunk to worker %d", (int)w->pid);
		abort();
	}
	chan_flush(w->ch);
	w->chunk = *ck;
	w->state = W_BUSY;
	w->timeout_ms = disp_job_timeout(ck->job);
	arm_deadline(w);
}

static bool valid_result(const struct worker *w, const struct wmsg_result *res, bool part)
{
	return w->state == W_BUSY && res->seq == w->seq &&
	       res->n_errors <= res->n_results &&
	       (part ? res->n_results > 0 && res->n_results < w->chunk.count
		     : res->n_results == w->chunk.count);
}

/* Large results are adopted from the frame their channel is delivering. */
static uint8_t *take_results(void *ctx, const uint8_t *p, size_t len)
{
	return chan_take_delivered(ctx, p, len);
}

static void worker_part(struct worker *w, const struct wmsg_result *res)
{
	if (!valid_result(w, res, true)) {
		pool_fault(w, MPOOL_E_INTERNAL, "sent a part for no chunk it was running");
		return;
	}
	w->tasks_done += res->n_results;
	run_tasks_total += res->n_results;
	arm_deadline(w);
	/* A part schedules nothing (disp.h), so w is still ours after it. */
	disp_chunk_part(&w->chunk, res, &(struct disp_results_buf){ take_results, w->ch });
	recycle_rss_check(w);
}

static void worker_result(struct worker *w, const struct wmsg_result *res)
{
	struct chunk ck = w->chunk;
	/* The channel delivering res; a retire below lets go of it, but its
	 * free waits until this delivery returns. */
	struct disp_results_buf buf = { take_results, w->ch };
	enum retire why;

	if (!valid_result(w, res, false)) {
		pool_fault(w, MPOOL_E_INTERNAL, "sent a result for no chunk it was running");
		return;
	}
	evtimer_del(w->deadline);
	w->tasks_done += res->n_results;
	run_tasks_total += res->n_results;
	w->chunk.job = NULL;
	w->state = W_IDLE;
	why = recycle_reason(w);
	if (why == R_TASKS) {
		/* It leaves by itself after this result, and sends nothing
		 * more: its channel goes now, not at an end-of-file read, and
		 * its successor need not wait for the exit. */
		pool_retire(w, R_TASKS);
	} else if (w->reaped) {
		w->state = W_EXITING;
	} else if (why != R_NONE) {
		pool_retire(w, why);
	}
	/* The hand-off, last: the dispatcher may give w its next chunk from
	 * under this call, inside the channel's frame callback; safe, as chan_flush
	 * writes only once the callback has returned.  w is not touched after. */
	disp_chunk_done(&ck, res, &buf);
}

static void worker_ready(struct worker *w, int64_t pid)
{
	if (w->state != W_STARTING || pid != w->pid) {
		pool_fault(w, MPOOL_E_INTERNAL, "sent a ready notice out of turn");
		return;
	}
	w->state = W_IDLE;
	pool_slots[w->slot].early_deaths = 0;
	if (w->reaped) {
		w->state = W_EXITING;
		return;
	}
	if (w->gen != pool_gen) {
		pool_retire(w, R_RELOAD);
		return;
	}
	if (!announced_ready && pool_ready_workers() == pool_n_slots) {
		announced_ready = true;
		master_ready();
	}
	recycle_reload_check();
	disp_schedule();
}

static void worker_frame(void *ctx, const uint8_t *frame, size_t len)
{
	struct worker *w = ctx;
	struct wmsg_result res;
	int64_t pid;

	switch (wmsg_parse_from_worker(frame, len, &res, &pid)) {
	case WMSG_RESULT:
		worker_result(w, &res);
		break;
	case WMSG_PART:
		worker_part(w, &res);
		break;
	case WMSG_READY:
		worker_ready(w, pid);
		break;
	default:
		pool_fault(w, MPOOL_E_INTERNAL, "sent a malformed message");
	}
}

static void worker_closed(void *ctx, int err)
{
	struct worker *w = ctx;

	chan_free(w->ch);
	w->ch = NULL;
	if (w->retire != R_NONE)
		return;
	if (err == -EMSGSIZE) {
		pool_fault(w, MPOOL_E_LIMIT, "sent a result larger than --max-frame");
	} else if (err < 0 && err != -ECONNRESET && err != -EPIPE) {
		pool_fault(w, MPOOL_E_INTERNAL, "broke its channel");
	} else {
		/* End of stream (or a reset: a worker killed with bytes of
		 * ours unread) almost always means it died, and its exit
		 * status, reaped in a moment, names the cause.  Only one that
		 * lingers is killed, and blamed. */
		w->eof = true;
		/* It has no channel to take work on any more.  A starting
		 * one stays starting: its exit may say its init failed. */
		if (w->state == W_IDLE)
			w->state = W_EXITING;
		timer_add_ms(w->deadline, 1000);
	}
}

static void worker_drained(void *ctx)
{
	(void)ctx;
}

const struct chan_ops run_chan_ops = {
	.frame = worker_frame,
	.closed = worker_closed,
	.drained = worker_drained,
};
