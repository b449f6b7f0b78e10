/* disp: the dispatcher.  A job is one client request (an apply is a job of
 * one item); it is cut into chunks as workers fall idle, round-robin across
 * jobs, and its results stream back to its client as chunks finish.
 *
 * Items and results are never decoded here: a job keeps its request frame
 * and walks its items as raw MessagePack slices, and results are forwarded
 * byte for byte. */
#ifndef DISP_H
#define DISP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <msgpack.h>

#include "wmsg.h"

struct conn;
struct job;
struct seg;
struct batch;
struct mp_cur;
struct worker;
struct chunk;

/* What the dispatcher needs of clients and workers (both opaque handles
 * here); tests pass fakes, so the dispatcher runs alone.
 *
 * Hand-off.  disp_submit, disp_feed, disp_cancel, disp_schedule,
 * disp_chunk_done and disp_chunk_lost schedule before they return, and may
 * call run on any idle worker, the one whose chunk just ended included;
 * disp_chunk_part, disp_detach, disp_fail_all and disp_fail_queued never
 * do.  So whoever reports a chunk's end first finishes with that worker
 * (idle, or leaving) and touches it no more after the call.  No ops call
 * calls back into the dispatcher. */
struct disp_ops {
	/* Clients. */
	uid_t (*uid)(const struct conn *c);
	pid_t (*pid)(const struct conn *c);
	/* The client reads too slowly: none of its work is started. */
	bool (*backlogged)(const struct conn *c);
	/* owned: NULL, or the buffer results lie in, which the client takes. */
	void (*send_chunk)(struct conn *c, uint64_t msgid, uint64_t first,
			   const uint8_t *results, size_t rlen, const uint8_t *errors,
			   size_t elen, uint8_t *owned);
	void (*send_credit)(struct conn *c, uint64_t msgid, uint64_t n);
	void (*apply_done)(struct conn *c, uint64_t msgid, const uint8_t *results, size_t rlen,
			   const uint8_t *errors, size_t elen, uint32_t n_errors);
	void (*map_done)(struct conn *c, uint64_t msgid, uint64_t items, uint64_t failed);
	void (*job_failed)(struct conn *c, uint64_t msgid, int code, const char *msg);
	/* The job is answered: the client forgets it. */
	void (*job_ended)(struct conn *c, struct job *job);

	/* Workers. */
	struct worker *(*idle)(void);        /* an idle worker, or NULL */
	uint64_t (*quota_left)(const struct worker *w);   /* UINT64_MAX: none */
	/* w is busy until disp_chunk_done or disp_chunk_lost, later. */
	void (*run)(struct worker *w, const struct chunk *ck, const char *fn, uint32_t fn_len);
	/* Each killed worker reports disp_chunk_lost later. */
	void (*kill_job)(const struct job *job);

	/* cluster: the outlet takes chunks of shared jobs like a worker while
	 * it has room, and ends each as a worker would.  NULL: no cluster. */
	bool (*outlet_room)(void);
	void (*outlet_run)(const struct chunk *ck, const char *fn, uint32_t fn_len);
	/* Workers behind the outlet: a shared job's reorder window counts them. */
	unsigned (*outlet_workers)(void);

	/* Something status shows changed; a job ended (shutdown waits). */
	void (*changed)(void);
	void (*job_gone)(void);
};

extern const struct disp_ops disp_daemon_ops;
/* Kept by reference; before any other call. */
void disp_init(const struct disp_ops *ops);

/* A chunk in flight, held by the worker running it.  Parts the worker
 * reports move first and items forward, so the chunk always describes the
 * items still unanswered. */
struct chunk {
	struct job *job;
	uint64_t first;
	uint32_t count;
	uint32_t attempt;            /* 0, then 1.. for retries */
	struct seg *seg;             /* the input segment its items live in */
	const uint8_t *items;        /* the unanswered items, raw */
	size_t items_len;
	/* Non-NULL: single-item applies of one function and options run as
	 * one chunk (job is the first of them); first counts from 0. */
	struct batch *batch;
};

struct job_spec {
	bool is_map;
	bool ordered;
	uint64_t msgid;
	uint32_t chunksize;          /* 0: the default rule */
	uint32_t timeout_ms;         /* per item; 0: none (--task-timeout is the default) */
	uint32_t retries;            /* reruns of a lost chunk */
	bool stream;                 /* more items follow in "feed" messages */
	bool admin;                  /* the client is an admin: no per-uid share */
	const char *fn;              /* within frame */
	uint32_t fn_len;
	const uint8_t *items;        /* n_items raw elements, within frame */
	size_t items_len;
	uint64_t n_items;
	const size_t *marks;         /* from disp_walk_items over the items */
	uint8_t *buf;                /* non-NULL: the read buffer holding items,
				      * given to the job (chan_take_frame) */
	/* cluster: -1 keep local, 1 share, 0 the node's cluster-spread (a
	 * request's "spread" option); shared: what cluster_share decided. */
	int spread;
	bool shared;
	bool remote_only;            /* shared, and this node lacks fn */
};

/* Items of a request at least this large are adopted with their read
 * buffer rather than copied. */
#define DISP_ADOPT_MIN (64u * 1024)

/* A request's items are walked once, on arrival: the walk notes where every
 * DISP_MARK_EVERY-th item ends, and chunks are cut at those marks plus a
 * short walk, never by walking every item again. */
#define DISP_MARK_EVERY 64
/* Skips n items at c like mp_skip_n, noting their marks in a buffer that
 * the next call reuses: pass *ret_marks to disp_submit or disp_feed before
 * walking anything else.  0, or -EBADMSG when the items are not there. */
int disp_walk_items(struct mp_cur *c, uint64_t n, const uint8_t **ret_items,
		    size_t *ret_len, const size_t **ret_marks);

/* Python's rule, ceil(n / (4 * workers)), capped at DISP_CHUNK_MAX and at
 * least 1. */
#define DISP_CHUNK_MAX 4096
uint32_t disp_auto_chunksize(uint64_t n_items, unsigned workers);
/* How many items the next chunk takes: the chunksize, bounded by the items
 * left and by the worker's remaining task quota (UINT64_MAX: none). */
uint32_t disp_chunk_take(uint32_t chunksize, uint64_t items_left, uint64_t quota_left);
uint32_t disp_spec_chunksize(const struct job_spec *spec);

/* Whether add more queued chunks from uid fit --max-queued-chunks and, for
 * a non-admin, uid's share and what --admin-queued-chunks leaves.  0, or
 * -ENOSPC with the reason in why. */
int disp_queue_check(uid_t uid, bool admin, uint64_t add, char *why, size_t size);
void disp_pack_queue(msgpack_packer *pk);

/* Items are copied, or spec->buf adopted.  NULL when the job was answered
 * at once (an empty map). */
struct job *disp_submit(struct conn *conn, const struct job_spec *spec);
/* A streamed map's next n_items items (copied), with the marks of their
 * walk.  0, or after failing the job: -EPROTO (past its credit), -ENOSPC
 * (past --max-queued-chunks). */
int disp_feed(struct job *job, const uint8_t *items, size_t items_len, uint64_t n_items,
	      const size_t *marks, bool end);
bool disp_job_streaming(const struct job *job);
/* Input bytes held (items not yet answered): by the job; by all jobs,
 * those of departed clients included. */
size_t disp_job_bytes(const struct job *job);
size_t disp_bytes_held(void);
void disp_kill_running(struct job *job);
/* The client is gone: drop what is queued, kill what runs (kill_job). */
void disp_detach(struct job *job);
void disp_fail_all(int code, const char *msg);
void disp_schedule(void);

/* Where a worker's results lie, so that large ones are adopted rather than
 * copied: take() hands over the buffer holding p (the caller's to free()),
 * or returns NULL.  A NULL buf: always copy. */
struct disp_results_buf {
	uint8_t *(*take)(void *ctx, const uint8_t *p, size_t len);
	void *ctx;
};

/* A worker reported the first res->n_results items of its chunk; ck moves
 * past them.  The chunk is still running; nothing is scheduled. */
void disp_chunk_part(struct chunk *ck, const struct wmsg_result *res,
		     const struct disp_results_buf *buf);
/* By reference when large (the bytes live until out has sent or dropped
 * them, even past the job's end), else copied.  0 or -ENOMEM. */
struct evbuffer;
int disp_chunk_add_items(const struct chunk *ck, struct evbuffer *out);
/* res holds the rest of the chunk's results.  Schedules ("Hand-off"). */
void disp_chunk_done(struct chunk *ck, const struct wmsg_result *res,
		     const struct disp_results_buf *buf);
/* The chunk's worker died or timed out: its unanswered items are rerun
 * elsewhere if the request allows retries, else each fails with code/msg.
 * Then schedules, as disp_chunk_done. */
void disp_chunk_lost(struct chunk *ck, int code, const char *msg);
uint32_t disp_job_timeout(const struct job *job);
uint32_t disp_job_retries(const struct job *job);
/* No worker can run anything: fail every job that has work waiting. */
void disp_fail_queued(int code, const char *msg);
bool disp_has_queued(void);

uint64_t disp_job_id(const struct job *job);
/* The open job with this id, or NULL. */
struct job *disp_find(uint64_t id);
struct conn *disp_job_conn(const struct job *job);
/* Work still running for the job is discarded when it ends. */
void disp_cancel(struct job *job, int code, const char *msg);
void disp_pack_jobs(msgpack_packer *pk);
uint64_t disp_job_msgid(const struct job *job);
unsigned disp_active(void);          /* jobs not yet answered or freed */
uint64_t disp_chunks_queued(void);
uint64_t disp_jobs_done(void);
uint64_t disp_tasks_failed(void);

#endif
