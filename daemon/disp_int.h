/* The dispatcher's own header: disp.c jobs (job_), disp_seg.c their input
 * (seg_), disp_sched.c turns and batches (sched_, batch_), disp_out.c
 * results on their way to clients (out_). */
#ifndef DISP_INT_H
#define DISP_INT_H

#include "disp.h"
#include "tailq.h"

struct rr_client;
struct held;

extern const struct disp_ops *disp_io;

/* The unanswered items of a lost chunk, waiting to run again (with a
 * segment reference of their own). */
struct retry {
	struct chunk ck;
	STAILQ_ENTRY(retry) link;
};

struct job {
	uint64_t id;
	struct conn *conn;         /* NULL once the client left */
	uint64_t msgid;
	bool is_map, ordered, queued;
	bool admin;                /* its client's: no per-uid share of the queue */
	bool auto_chunk;           /* chunksize chosen by the daemon */
	char *fn;                  /* owned */
	uint32_t fn_len;
	TAILQ_HEAD(, seg) segs;    /* oldest first */
	struct seg *cur;           /* the first segment with items left */
	size_t seg_bytes;          /* input held */
	uint64_t fed_bytes;        /* input received in all (credit by bytes) */
	bool streaming;            /* a streamed map whose input has not ended */
	uint64_t granted;          /* streamed: items the client may send, in all */
	uint64_t n_items;          /* items received so far */
	uint64_t next_index;       /* first item not yet handed out */
	uint64_t emitted;          /* items whose results reached the client */
	uint64_t failed;
	uint32_t chunksize;
	uint32_t timeout_ms;       /* per item; 0: none */
	uint32_t retries;          /* reruns allowed per lost chunk */
	uint32_t inflight;         /* chunks running on workers */
	bool shared;               /* cluster: its chunks may go to the outlet */
	bool remote_only;          /* cluster: ... and only there (fn not loaded here) */
	uint64_t qchunks;          /* its share of queued_chunks */
	uint64_t created_ms;
	STAILQ_HEAD(, retry) lost; /* lost chunks waiting for a rerun */
	struct held *held;         /* sorted by first */
	struct rr_client *client;  /* its turn in the run queue; NULL once detached */
	TAILQ_ENTRY(job) runq;     /* in client->jobs while it has items to hand out */
	TAILQ_ENTRY(job) all;
};

/* disp.c.  A chunk stopped running (done, failed or requeued): drops its
 * segment reference; may free its job. */
void job_chunk_ended(const struct chunk *ck);


/* disp_seg.c.  A segment of count items (copied, or buf adopted: the read
 * buffer holding them), appended to the job's input. */
void seg_new(struct job *job, const uint8_t *items, size_t items_len, uint64_t count,
	     const size_t *marks, uint8_t *buf);
/* Drops a reference (a chunk's, a retry's, or the cursor's); the last one
 * frees the segment and may grant stream credit. */
void seg_unref(struct job *job, struct seg *sg);
/* Frees the input of a job being freed: segments and retries. */
void seg_free_all(struct job *job);
/* Queues ck's items to run again. */
void seg_retry(struct job *job, const struct chunk *ck, uint32_t attempt);
/* Slices n whole items off a raw item run (ret_ may be NULL). */
void seg_slice(const uint8_t **items, size_t *len, uint32_t n, const uint8_t **ret_start,
	       size_t *ret_len);
/* Carves the job's next chunk for a worker with quota tasks left: a lost
 * chunk's items first, then fresh ones.  False when it cannot. */
bool seg_next_chunk(struct job *job, uint64_t quota, struct chunk *ck);

/* disp_sched.c.  A new job takes its place among its client's (uid: the
 * client's); detach takes it out of the run queue for good. */
void sched_attach(struct job *job, uid_t uid);
void sched_detach(struct job *job);
/* Puts a job with work at the back of its client's queue. */
void sched_requeue(struct job *job);
/* The job's queued chunks changed: updates the counts the limits read. */
void sched_account(struct job *job);
struct job *sched_first_queued(void);
uid_t sched_uid(const struct job *job);
/* A batch's worker reported res->n_results more members; or is gone. */
void batch_piece(struct batch *b, const struct wmsg_result *res);
void batch_lost(struct batch *b, int code, const char *msg);
void batch_free(struct batch *b);
/* The member a batch's worker is running now. */
struct job *batch_current(const struct batch *b);

/* disp_out.c.  Delivers results for items first..first+count-1: now, or
 * once the items before them are out (ordered). */
void out_piece(struct job *job, uint64_t first, uint32_t count, const uint8_t *results,
	       size_t rlen, const uint8_t *errors, size_t elen, uint32_t n_errors,
	       const struct disp_results_buf *buf);
/* Fails every unanswered item of a chunk with the same error. */
void out_fail_chunk(struct chunk *ck, int code, const char *msg);
void out_grant(struct job *job);
void out_free_held(struct job *job);

#endif
