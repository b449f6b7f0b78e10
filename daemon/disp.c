/* disp: jobs and their lifecycle, from request to answer; the results
 * workers report enter here and go on to disp_out.c. */
#include "disp_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include <mpool/error.h>
#include "log.h"
#include "master.h"         /* now_ms */
#include "mem.h"
#include "mp_rpc.h"
#include "status.h"

static TAILQ_HEAD(, job) all_jobs = TAILQ_HEAD_INITIALIZER(all_jobs);
static unsigned n_active;

const struct disp_ops *disp_io;
static uint64_t next_id = 1, jobs_done;

static void job_fail(struct job *job, int code, const char *msg);
static void job_maybe_done(struct job *job);

void disp_init(const struct disp_ops *o)
{
	disp_io = o;
}

uint64_t disp_job_id(const struct job *job)
{
	return job ? job->id : 0;
}

uint64_t disp_job_msgid(const struct job *job)
{
	return job->msgid;
}

struct job *disp_find(uint64_t id)
{
	struct job *job;

	TAILQ_FOREACH(job, &all_jobs, all)
		if (job->id == id && job->conn)
			return job;
	return NULL;
}

struct conn *disp_job_conn(const struct job *job)
{
	return job->conn;
}

void disp_pack_jobs(msgpack_packer *pk)
{
	uint64_t now = now_ms();
	uint32_t n = 0;
	struct job *job;

	TAILQ_FOREACH(job, &all_jobs, all)
		n += job->conn != NULL;
	msgpack_pack_array(pk, n);
	TAILQ_FOREACH(job, &all_jobs, all) {
		if (!job->conn)
			continue;
		msgpack_pack_map(pk, 10);
		status_kv(pk, "id", job->id);
		mp_pack_cstr(pk, "method");
		mp_pack_cstr(pk, job->is_map ? "map" : "apply");
		mp_pack_cstr(pk, "function");
		msgpack_pack_str_with_body(pk, job->fn, job->fn_len);
		/* Never negative: the same bytes as packed signed. */
		status_kv(pk, "client_pid", (uint64_t)disp_io->pid(job->conn));
		status_kv(pk, "client_uid", disp_io->uid(job->conn));
		status_kv(pk, "items", job->n_items);
		status_kv(pk, "done", job->emitted);
		status_kv(pk, "failed", job->failed);
		status_kv(pk, "running_chunks", job->inflight);
		status_kv(pk, "age_ms", now - job->created_ms);
	}
}

uint32_t disp_job_timeout(const struct job *job)
{
	return job->timeout_ms;
}

uint32_t disp_job_retries(const struct job *job)
{
	return job->retries;
}

unsigned disp_active(void)
{
	return n_active;
}

uint64_t disp_jobs_done(void)
{
	return jobs_done;
}

static void job_free(struct job *job)
{
	out_free_held(job);
	sched_detach(job);
	TAILQ_REMOVE(&all_jobs, job, all);
	seg_free_all(job);
	free(job->fn);
	free(job);
	n_active--;
	disp_io->job_gone();
}

/* The job is answered and nothing runs for it. */
static void job_finish(struct job *job)
{
	disp_io->job_ended(job->conn, job);
	jobs_done++;
	job_free(job);
}

struct job *disp_submit(struct conn *conn, const struct job_spec *spec)
{
	struct job *job = xcalloc(1, sizeof(*job));

	job->id = next_id++;
	job->conn = conn;
	sched_attach(job, disp_io->uid(conn));
	job->msgid = spec->msgid;
	job->is_map = spec->is_map;
	job->ordered = spec->ordered;
	job->admin = spec->admin;
	job->fn = xstrndup(spec->fn, spec->fn_len);
	job->fn_len = spec->fn_len;
	job->streaming = spec->stream;
	job->n_items = spec->n_items;
	TAILQ_INIT(&job->segs);
	STAILQ_INIT(&job->lost);
	/* A job keeps only its items' bytes, not the envelope around them. */
	seg_new(job, spec->items, spec->items_len, spec->n_items, spec->marks, spec->buf);
	job->timeout_ms = spec->timeout_ms;
	job->retries = spec->retries;
	job->shared = spec->shared;        /* cluster */
	job->remote_only = spec->remote_only;
	job->created_ms = now_ms();
	job->auto_chunk = spec->chunksize == 0;
	job->chunksize = disp_spec_chunksize(spec);
	TAILQ_INSERT_TAIL(&all_jobs, job, all);
	n_active++;
	if (job->n_items == 0 && !job->streaming) {
		disp_io->map_done(conn, job->msgid, 0, 0);
		job_finish(job);
		return NULL;
	}
	if (job->streaming) {
		job->granted = job->n_items;
		out_grant(job);
	}
	sched_requeue(job);
	disp_schedule();
	return job;
}

bool disp_job_streaming(const struct job *job)
{
	return job->streaming;
}

int disp_feed(struct job *job, const uint8_t *items, size_t items_len, uint64_t n_items,
	      const size_t *marks, bool end)
{
	char msg[160];

	if (n_items > job->granted - job->n_items) {
		snprintf(msg, sizeof(msg), "fed %llu items with credit for %llu",
			 (unsigned long long)n_items,
			 (unsigned long long)(job->granted - job->n_items));
		job_fail(job, MPOOL_E_BADREQ, msg);
		return -EPROTO;
	}
	if (n_items > 0 && job->client &&
	    disp_queue_check(sched_uid(job), job->admin,
			     (n_items + job->chunksize - 1) / job->chunksize, msg, sizeof(msg)) < 0) {
		job_fail(job, MPOOL_E_LIMIT, msg);
		return -ENOSPC;
	}
	if (n_items > 0) {
		seg_new(job, items, items_len, n_items, marks, NULL);
		job->n_items += n_items;
		sched_account(job);
	}
	if (end)
		job->streaming = false;
	sched_requeue(job);
	job_maybe_done(job);
	disp_schedule();
	return 0;
}

/* No client waits for the job any more.  Chunks still running report
 * back into it, and the last one frees it (job_chunk_ended). */
static void job_release(struct job *job)
{
	sched_detach(job);
	job->conn = NULL;
	if (job->inflight == 0)
		job_free(job);
}

void disp_detach(struct job *job)
{
	/* Nobody wants its results any more: what runs of it is killed (here,
	 * and on other nodes for a shared job) rather than left to hold its
	 * workers to the end, however long that is. */
	if (job->inflight)
		disp_io->kill_job(job);
	job_release(job);
}

static void job_fail(struct job *job, int code, const char *msg)
{
	if (job->conn) {
		disp_io->job_failed(job->conn, job->msgid, code, msg);
		disp_io->job_ended(job->conn, job);
	}
	job_release(job);
}

void disp_kill_running(struct job *job)
{
	disp_io->kill_job(job);
}

void disp_cancel(struct job *job, int code, const char *msg)
{
	job_fail(job, code, msg);
	disp_schedule();
}

void disp_fail_all(int code, const char *msg)
{
	struct job *job, *tmp;

	TAILQ_FOREACH_SAFE(job, &all_jobs, all, tmp)
		job_fail(job, code, msg);
}

void disp_fail_queued(int code, const char *msg)
{
	struct job *job;

	/* job_fail takes each job out of the queue. */
	while ((job = sched_first_queued()))
		job_fail(job, code, msg);
}

/* Answers a job whose every item has been answered and whose input ended. */
static void job_maybe_done(struct job *job)
{
	if (!job->conn || job->streaming || job->emitted < job->n_items)
		return;
	if (job->is_map)
		disp_io->map_done(job->conn, job->msgid, job->n_items, job->failed);
	job_finish(job);
}

void job_chunk_ended(const struct chunk *ck)
{
	struct job *job = ck->job;

	seg_unref(job, ck->seg);
	job->inflight--;
	if (!job->conn) {
		if (job->inflight == 0)
			job_free(job);
		return;
	}
	out_grant(job);
	job_maybe_done(job);
}

/* Delivers a piece of results for the items at the start of ck. */
static void chunk_piece(struct chunk *ck, const struct wmsg_result *res,
			const struct disp_results_buf *buf)
{
	if (ck->batch)
		batch_piece(ck->batch, res);
	else
		out_piece(ck->job, ck->first, res->n_results, res->results, res->results_len,
			  res->errors, res->errors_len, res->n_errors, buf);
}

void disp_chunk_part(struct chunk *ck, const struct wmsg_result *res,
		     const struct disp_results_buf *buf)
{
	chunk_piece(ck, res, buf);
	seg_slice(&ck->items, &ck->items_len, res->n_results, NULL, NULL);
	ck->first += res->n_results;
	ck->count -= res->n_results;
	/* Answered members may be freed already: the chunk names the member
	 * it is running now (a part never covers the last). */
	if (ck->batch)
		ck->job = batch_current(ck->batch);
}

void disp_chunk_done(struct chunk *ck, const struct wmsg_result *res,
		     const struct disp_results_buf *buf)
{
	chunk_piece(ck, res, buf);
	if (ck->batch)
		batch_free(ck->batch);
	else
		job_chunk_ended(ck);
	disp_schedule();
}

void disp_chunk_lost(struct chunk *ck, int code, const char *msg)
{
	struct job *job = ck->job;

	if (ck->batch) {
		batch_lost(ck->batch, code, msg);
		disp_schedule();
		return;
	}
	if (ck->count > 0 && job->conn && ck->attempt < job->retries) {
		seg_retry(job, ck, ck->attempt + 1);
		log_info("job %llu: rerunning items %llu..%llu (retry %u of %u): %s",
			 (unsigned long long)job->id, (unsigned long long)ck->first,
			 (unsigned long long)(ck->first + ck->count - 1), ck->attempt + 1,
			 job->retries, msg);
	} else if (ck->count > 0) {
		out_fail_chunk(ck, code, msg);
	}
	job_chunk_ended(ck);
	disp_schedule();
}

