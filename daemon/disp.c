#include "disp.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <event2/buffer.h>
#include "tailq.h"

#include <mpool/error.h>
#include "config.h"
#include "log.h"
#include "master.h"         /* now_ms */
#include "mem.h"
#include "mp_rpc.h"

/* A finished chunk of an ordered map, waiting for the chunks before it. */
struct held {
	uint64_t first;
	uint32_t count;
	uint8_t *bytes;            /* a copy: results array then errors array */
	uint8_t *owned;            /* or the worker's frame buffer they lie in */
	const uint8_t *results, *errors;
	size_t results_len, errors_len;
	struct held *next;
};

/* The unanswered items of a lost chunk, waiting to run again. */
struct retry {
	uint64_t first;
	uint32_t count;
	uint32_t attempt;
	struct seg *seg;
	const uint8_t *items;
	size_t items_len;
	struct retry *next;
};

/* A run of a job's items as they arrived: the request's own items, then one
 * segment per "feed" of a streamed map.  It lives while items of it are
 * queued, running or waiting for a retry (refs), so a streamed map holds
 * only the input its workers have not finished. */
/* The memory a segment's items live in.  Worker channels send chunks of
 * it by reference, and a channel may still hold such bytes after the job
 * is gone (a worker killed before it read its chunk), so it is counted on
 * its own: the segment holds one reference, each chunk queued on a channel
 * another. */
struct seg_mem {
	unsigned refs;
	void *buf;                 /* owned: a copy, or the adopted read buffer */
};

struct seg {
	const uint8_t *frame;      /* the items' bytes, in mem */
	struct seg_mem *mem;
	size_t bytes;
	struct mp_cur items;       /* items not yet handed out */
	uint64_t left;             /* how many */
	uint64_t count;            /* items in the segment */
	size_t *marks;             /* count / DISP_MARK_EVERY item ends (owned) */
	unsigned refs;             /* chunks, retries, +1 while items are left */
	struct seg *next;
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
	struct seg *segs;          /* oldest first */
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
	struct retry *retry_head;  /* lost chunks waiting for a rerun */
	struct retry **retry_tail;
	struct held *held;         /* sorted by first */
	struct rr_client *client;  /* its turn in the run queue; NULL once detached */
	TAILQ_ENTRY(job) runq;     /* in client->jobs while it has items to hand out */
	TAILQ_ENTRY(job) all;
};

/* The run queue takes turns on three levels: uids, then a uid's
 * connections, then a connection's jobs.  Each level is a queue of those
 * with work, and the one served goes to the back of its queue, so a uid
 * with many connections, or a connection with many maps, gets one turn
 * like anyone else.  Nodes live while a job of theirs is attached. */
struct rr_user {
	uid_t uid;
	uint64_t qchunks;          /* its jobs' share of queued_chunks */
	unsigned refs;             /* its rr_clients */
	bool queued;
	TAILQ_HEAD(, rr_client) clients;   /* those with work, in turn order */
	TAILQ_ENTRY(rr_user) q;
	TAILQ_ENTRY(rr_user) all;
};

struct rr_client {
	const struct conn *conn;
	struct rr_user *user;
	unsigned refs;             /* its attached jobs */
	bool queued;
	TAILQ_HEAD(, job) jobs;    /* those with work, in turn order */
	TAILQ_ENTRY(rr_client) q;
	TAILQ_ENTRY(rr_client) all;
};

static TAILQ_HEAD(, rr_user) runq = TAILQ_HEAD_INITIALIZER(runq);
static TAILQ_HEAD(, rr_user) all_users = TAILQ_HEAD_INITIALIZER(all_users);
static TAILQ_HEAD(, rr_client) all_clients = TAILQ_HEAD_INITIALIZER(all_clients);
static TAILQ_HEAD(, job) all_jobs = TAILQ_HEAD_INITIALIZER(all_jobs);
static unsigned n_active;
static const struct disp_ops *ops;      /* disp_init */
/* Chunks waiting in the run queue, kept up to date as jobs change: the
 * limit check runs on every request and must not walk the queue. */
static uint64_t queued_chunks;
/* Input bytes every job holds, its client gone or not (the byte budget). */
static size_t held_bytes;

static void job_account(struct job *job)
{
	uint64_t c = job->queued && job->n_items > job->next_index
		     ? (job->n_items - job->next_index + job->chunksize - 1) / job->chunksize : 0;

	queued_chunks += c - job->qchunks;
	if (job->client)
		job->client->user->qchunks += c - job->qchunks;
	job->qchunks = c;
}

static struct rr_user *rr_user_find(uid_t uid)
{
	struct rr_user *u;

	TAILQ_FOREACH(u, &all_users, all)
		if (u->uid == uid)
			return u;
	return NULL;
}

/* The node of conn's turns, made on its first job.  A node is freed with
 * its last attached job, and a connection's jobs are all detached before
 * it closes, so a node's conn is always the live connection. */
static struct rr_client *rr_client_get(const struct conn *conn, uid_t uid)
{
	struct rr_client *cl;
	struct rr_user *u;

	TAILQ_FOREACH(cl, &all_clients, all)
		if (cl->conn == conn) {
			cl->refs++;
			return cl;
		}
	u = rr_user_find(uid);
	if (!u) {
		u = xcalloc(1, sizeof(*u));
		u->uid = uid;
		TAILQ_INIT(&u->clients);
		TAILQ_INSERT_TAIL(&all_users, u, all);
	}
	u->refs++;
	cl = xcalloc(1, sizeof(*cl));
	cl->conn = conn;
	cl->user = u;
	cl->refs = 1;
	TAILQ_INIT(&cl->jobs);
	TAILQ_INSERT_TAIL(&all_clients, cl, all);
	return cl;
}

static void rr_client_put(struct rr_client *cl)
{
	struct rr_user *u = cl->user;

	if (--cl->refs > 0)
		return;
	TAILQ_REMOVE(&all_clients, cl, all);
	free(cl);
	if (--u->refs > 0)
		return;
	TAILQ_REMOVE(&all_users, u, all);
	free(u);
}

/* The client (and its uid) just had a turn: to the back of their queues. */
static void rr_turn_taken(struct rr_client *cl)
{
	struct rr_user *u = cl->user;

	if (cl->queued) {
		TAILQ_REMOVE(&u->clients, cl, q);
		TAILQ_INSERT_TAIL(&u->clients, cl, q);
	}
	if (u->queued) {
		TAILQ_REMOVE(&runq, u, q);
		TAILQ_INSERT_TAIL(&runq, u, q);
	}
}
static uint64_t next_id = 1, jobs_done, tasks_failed;

void disp_init(const struct disp_ops *o)
{
	ops = o;
}

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
		mp_pack_cstr(pk, "id");
		msgpack_pack_uint64(pk, job->id);
		mp_pack_cstr(pk, "method");
		mp_pack_cstr(pk, job->is_map ? "map" : "apply");
		mp_pack_cstr(pk, "function");
		msgpack_pack_str_with_body(pk, job->fn, job->fn_len);
		mp_pack_cstr(pk, "client_pid");
		msgpack_pack_int64(pk, ops->pid(job->conn));
		mp_pack_cstr(pk, "client_uid");
		msgpack_pack_uint64(pk, ops->uid(job->conn));
		mp_pack_cstr(pk, "items");
		msgpack_pack_uint64(pk, job->n_items);
		mp_pack_cstr(pk, "done");
		msgpack_pack_uint64(pk, job->emitted);
		mp_pack_cstr(pk, "failed");
		msgpack_pack_uint64(pk, job->failed);
		mp_pack_cstr(pk, "running_chunks");
		msgpack_pack_uint64(pk, job->inflight);
		mp_pack_cstr(pk, "age_ms");
		msgpack_pack_uint64(pk, now - job->created_ms);
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

static bool job_has_work(const struct job *job)
{
	return job->retry_head || job->next_index < job->n_items;
}

bool disp_has_queued(void)
{
	return !TAILQ_EMPTY(&runq);
}

/* Puts a job with work at the back of its client's queue (and the client
 * and its uid at the back of theirs, if they had no work queued). */
static void job_requeue(struct job *job)
{
	struct rr_client *cl = job->client;

	if (!job->queued && job->conn && cl && job_has_work(job)) {
		TAILQ_INSERT_TAIL(&cl->jobs, job, runq);
		job->queued = true;
		job_account(job);
		if (!cl->queued) {
			TAILQ_INSERT_TAIL(&cl->user->clients, cl, q);
			cl->queued = true;
		}
		if (!cl->user->queued) {
			TAILQ_INSERT_TAIL(&runq, cl->user, q);
			cl->user->queued = true;
		}
	}
}

unsigned disp_active(void)
{
	return n_active;
}

uint64_t disp_jobs_done(void)
{
	return jobs_done;
}

uint64_t disp_tasks_failed(void)
{
	return tasks_failed;
}

uint64_t disp_chunks_queued(void)
{
	return queued_chunks;
}

static void job_grant(struct job *job);
static void job_maybe_done(struct job *job);
static void job_requeue(struct job *job);
static void job_detach_client(struct job *job);
static void job_fail(struct job *job, int code, const char *msg);
static void job_piece(struct job *job, uint64_t first, uint32_t count,
		      const uint8_t *results, size_t rlen, const uint8_t *errors, size_t elen,
		      uint32_t n_errors, const struct disp_results_buf *buf);
static void job_chunk_ended(struct job *job);
static void chunk_fail(struct chunk *ck, int code, const char *msg);

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

/* buf: the read buffer holding items, adopted; NULL to copy them. */
static struct seg *seg_new(struct job *job, const uint8_t *items, size_t items_len,
			   uint64_t count, const size_t *marks, uint8_t *buf)
{
	struct seg *sg = xcalloc(1, sizeof(*sg)), **pp = &job->segs;
	uint64_t nm = count / DISP_MARK_EVERY;

	sg->mem = xcalloc(1, sizeof(*sg->mem));
	sg->mem->refs = 1;
	if (buf) {
		sg->mem->buf = buf;
		sg->frame = items;
	} else {
		sg->mem->buf = xmemdup(items, items_len);
		sg->frame = sg->mem->buf;
	}
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
	while (*pp)
		pp = &(*pp)->next;
	*pp = sg;
	job->seg_bytes += items_len;
	job->fed_bytes += items_len;
	held_bytes += items_len;
	if (!job->cur && count > 0)
		job->cur = sg;
	return sg;
}

static void seg_unref(struct job *job, struct seg *sg)
{
	struct seg **pp;

	if (--sg->refs > 0)
		return;
	for (pp = &job->segs; *pp != sg; pp = &(*pp)->next)
		;
	*pp = sg->next;
	if (job->cur == sg)
		job->cur = sg->next;
	job->seg_bytes -= sg->bytes;
	held_bytes -= sg->bytes;
	free(sg->marks);
	seg_mem_unref(sg->mem);
	free(sg);
	/* Bytes freed may be what held the credit back. */
	if (job->streaming && job->conn)
		job_grant(job);
}

static void job_free(struct job *job)
{
	struct held *h, *next;

	for (h = job->held; h; h = next) {
		next = h->next;
		free(h->bytes);
		free(h->owned);
		free(h);
	}
	while (job->retry_head) {
		struct retry *r = job->retry_head;

		job->retry_head = r->next;
		free(r);
	}
	job_detach_client(job);
	TAILQ_REMOVE(&all_jobs, job, all);
	while (job->segs) {
		struct seg *sg = job->segs;

		job->segs = sg->next;
		held_bytes -= sg->bytes;
		free(sg->marks);
		seg_mem_unref(sg->mem);
		free(sg);
	}
	free(job->fn);
	free(job);
	n_active--;
	ops->job_gone();
}

/* The job is answered (or its client is gone) and nothing runs for it. */
static void job_finish(struct job *job)
{
	if (job->conn)
		ops->job_ended(job->conn, job);
	job->conn = NULL;
	jobs_done++;
	job_free(job);
}

static void job_unqueue(struct job *job)
{
	struct rr_client *cl = job->client;

	if (!job->queued)
		return;
	TAILQ_REMOVE(&cl->jobs, job, runq);
	job->queued = false;
	job_account(job);
	if (TAILQ_EMPTY(&cl->jobs)) {
		TAILQ_REMOVE(&cl->user->clients, cl, q);
		cl->queued = false;
		if (TAILQ_EMPTY(&cl->user->clients)) {
			TAILQ_REMOVE(&runq, cl->user, q);
			cl->user->queued = false;
		}
	}
}

/* The job leaves the run queue for good (answered, failed, or its client
 * gone); chunks still running for it need no turn. */
static void job_detach_client(struct job *job)
{
	job_unqueue(job);
	if (job->client)
		rr_client_put(job->client);
	job->client = NULL;
}

struct job *disp_submit(struct conn *conn, const struct job_spec *spec)
{
	struct job *job = xcalloc(1, sizeof(*job));

	job->id = next_id++;
	job->conn = conn;
	job->client = rr_client_get(conn, ops->uid(conn));
	job->msgid = spec->msgid;
	job->is_map = spec->is_map;
	job->ordered = spec->ordered;
	job->admin = spec->admin;
	job->fn = xstrndup(spec->fn, spec->fn_len);
	job->fn_len = spec->fn_len;
	job->streaming = spec->stream;
	job->n_items = spec->n_items;
	/* A job keeps only its items' bytes, not the envelope around them. */
	seg_new(job, spec->items, spec->items_len, spec->n_items, spec->marks, spec->buf);
	job->timeout_ms = spec->timeout_ms;
	job->retries = spec->retries;
	job->shared = spec->shared;        /* cluster */
	job->remote_only = spec->remote_only;
	job->retry_tail = &job->retry_head;
	job->created_ms = now_ms();
	job->auto_chunk = spec->chunksize == 0;
	job->chunksize = disp_spec_chunksize(spec);
	TAILQ_INSERT_TAIL(&all_jobs, job, all);
	n_active++;
	if (job->n_items == 0 && !job->streaming) {
		ops->map_done(conn, job->msgid, 0, 0);
		job_finish(job);
		return NULL;
	}
	if (job->streaming) {
		job->granted = job->n_items;
		job_grant(job);
	}
	job_requeue(job);
	disp_schedule();
	return job;
}

size_t disp_job_bytes(const struct job *job)
{
	return job->seg_bytes;
}

size_t disp_bytes_held(void)
{
	return held_bytes;
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
	    disp_queue_check(job->client->user->uid, job->admin,
			     (n_items + job->chunksize - 1) / job->chunksize, msg, sizeof(msg)) < 0) {
		job_fail(job, MPOOL_E_LIMIT, msg);
		return -ENOSPC;
	}
	if (n_items > 0) {
		struct seg *sg = seg_new(job, items, items_len, n_items, marks, NULL);

		if (!job->cur)
			job->cur = sg;
		job->n_items += n_items;
		job_account(job);
	}
	if (end)
		job->streaming = false;
	job_requeue(job);
	job_maybe_done(job);
	disp_schedule();
	return 0;
}

int disp_queue_check(uid_t uid, bool admin, uint64_t add, char *why, size_t size)
{
	struct rr_user *u = rr_user_find(uid);
	uint64_t mine = u ? u->qchunks : 0, max = cfg.max_queued_chunks;
	uint64_t open = max > cfg.admin_queued_chunks ? max - cfg.admin_queued_chunks : 0;

	if (queued_chunks + add > max) {
		snprintf(why, size, "%llu chunks are queued; %llu more would pass the limit of %llu "
			 "(--max-queued-chunks; a larger chunksize makes fewer)",
			 (unsigned long long)queued_chunks, (unsigned long long)add,
			 (unsigned long long)max);
		return -ENOSPC;
	}
	if (admin)
		return 0;
	if (mine + add > cfg.max_queued_chunks_per_uid) {
		snprintf(why, size, "uid %u has %llu chunks queued; %llu more would pass its share "
			 "of %llu (--max-queued-chunks-per-uid; a larger chunksize makes fewer)",
			 (unsigned)uid, (unsigned long long)mine, (unsigned long long)add,
			 (unsigned long long)cfg.max_queued_chunks_per_uid);
		return -ENOSPC;
	}
	if (queued_chunks + add > open) {
		snprintf(why, size, "%llu chunks are queued; %llu more would take the last %llu, "
			 "which are kept for admins (--admin-queued-chunks)",
			 (unsigned long long)queued_chunks, (unsigned long long)add,
			 (unsigned long long)cfg.admin_queued_chunks);
		return -ENOSPC;
	}
	return 0;
}

void disp_pack_queue(msgpack_packer *pk)
{
	struct rr_user *u;
	uint32_t n = 0;

	TAILQ_FOREACH(u, &all_users, all)
		n += u->qchunks > 0;
	msgpack_pack_map(pk, 4);
	mp_pack_cstr(pk, "max_chunks");
	msgpack_pack_uint64(pk, cfg.max_queued_chunks);
	mp_pack_cstr(pk, "max_chunks_per_uid");
	msgpack_pack_uint64(pk, cfg.max_queued_chunks_per_uid);
	mp_pack_cstr(pk, "admin_chunks");
	msgpack_pack_uint64(pk, cfg.admin_queued_chunks);
	/* Only uids with chunks queued: a uid's entry goes with its work.
	 * An array of maps, not a map keyed by uid: strict decoders take
	 * only string keys. */
	mp_pack_cstr(pk, "by_uid");
	msgpack_pack_array(pk, n);
	TAILQ_FOREACH(u, &all_users, all)
		if (u->qchunks > 0) {
			msgpack_pack_map(pk, 2);
			mp_pack_cstr(pk, "uid");
			msgpack_pack_uint64(pk, u->uid);
			mp_pack_cstr(pk, "chunks");
			msgpack_pack_uint64(pk, u->qchunks);
		}
}

void disp_detach(struct job *job)
{
	/* cluster: chunks running on other nodes stop too. */
	if (job->shared && job->inflight && ops->outlet_stop)
		ops->outlet_stop(job);
	job_detach_client(job);
	job->conn = NULL;
	if (job->inflight == 0)
		job_free(job);
}

/* Answers a job with an error and lets it go; chunks still running for it
 * report back into the detached job, which frees itself at the last one. */
static void job_fail(struct job *job, int code, const char *msg)
{
	job_detach_client(job);
	if (job->conn) {
		ops->job_failed(job->conn, job->msgid, code, msg);
		ops->job_ended(job->conn, job);
		job->conn = NULL;
	}
	if (job->inflight == 0)
		job_free(job);
}

void disp_kill_running(struct job *job)
{
	ops->kill_job(job);
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
	struct rr_user *u;

	/* job_fail takes each job out of the queue. */
	while ((u = TAILQ_FIRST(&runq)))
		job_fail(TAILQ_FIRST(&TAILQ_FIRST(&u->clients)->jobs), code, msg);
}

/* An ordered job may run ahead of what its client has received by this
 * many items, so one slow chunk cannot make the master hold unbounded
 * results. */
static bool job_window_open(const struct job *job)
{
	/* cluster: a shared job's chunks also run on the outlet's workers. */
	uint64_t w = cfg.workers + (job->shared && ops->outlet_workers ? ops->outlet_workers() : 0);
	uint64_t window = (uint64_t)job->chunksize * (2ull * w + 2);

	return !job->ordered || job->next_index - job->emitted < window;
}

static bool job_runnable(const struct job *job)
{
	if (job->conn && ops->backlogged(job->conn))
		return false;
	return job->retry_head || (job->next_index < job->n_items && job_window_open(job));
}

/* Slices n whole items off a raw item run. */
static void slice_items(const uint8_t **items, size_t *len, uint32_t n,
			const uint8_t **ret_start, size_t *ret_len)
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

/* Slices the next n items off the job.  A chunk of the default size also
 * stops once its items pass DISP_CHUNK_BYTES (keeping at least one), so
 * large items do not make chunks whose results outgrow the frame limit; a
 * chunksize the client chose is honoured as it is.  The items were walked
 * on arrival: hop over the marks noted then, and walk at most the last
 * DISP_MARK_EVERY - 1 items (or those around the byte limit) one by one. */
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
		job->cur = sg->next;
		seg_unref(job, sg);      /* its cursor's reference */
	}
	return taken;
}

int disp_chunk_add_items(const struct chunk *ck, struct evbuffer *out)
{
	/* A batch's items are its own small copy; small chunks cost less to
	 * copy than a reference costs to set up. */
	if (ck->batch || ck->items_len < DISP_REF_MIN)
		return evbuffer_add(out, ck->items, ck->items_len) < 0 ? -ENOMEM : 0;
	if (evbuffer_add_reference(out, ck->items, ck->items_len, seg_mem_cleanup,
				   ck->seg->mem) < 0)
		return -ENOMEM;
	ck->seg->mem->refs++;
	return 0;
}

/* Carves the job's next chunk for a worker with quota tasks left: a lost
 * chunk's items first, then fresh ones.  Returns false when it cannot. */
static bool job_next_chunk(struct job *job, uint64_t quota, struct chunk *ck)
{
	struct retry *r = job->retry_head;
	uint32_t n;

	ck->job = job;
	if (r) {
		n = r->count < quota ? r->count : (uint32_t)quota;
		if (n == 0)
			return false;
		ck->first = r->first;
		ck->count = n;
		ck->attempt = r->attempt;
		ck->seg = r->seg;
		r->seg->refs++;
		slice_items(&r->items, &r->items_len, n, &ck->items, &ck->items_len);
		r->first += n;
		r->count -= n;
		if (r->count == 0) {
			job->retry_head = r->next;
			if (!job->retry_head)
				job->retry_tail = &job->retry_head;
			seg_unref(job, r->seg);
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
	job_account(job);
	return true;
}

/* Batches.  A pipelining client can have many one-item applies queued; run
 * one by one, each costs a worker wake-up and two master wake-ups.  Applies
 * of the same function and options waiting behind one that is dispatched
 * ride in its chunk instead.  A batch holds items no other worker can start
 * until it ends, so it is kept fair:
 * - only the dispatched apply's own connection contributes, and only while
 *   no other client has work waiting, so nobody's apply sits behind
 *   another's backlog;
 * - it takes at most what Python's chunk rule gives one chunk of that
 *   connection's waiting applies, ceil(n / (4 * workers)), so the rest
 *   stays queued for every other worker, and a client that comes later
 *   waits for at most one such batch on one worker. */
#define BATCH_MAX 256

struct batch {
	uint32_t n, done;          /* members, and how many are answered */
	struct job **jobs;         /* member i: the job of item i */
	struct seg **segs;         /* the segment each member's item lives in */
	const uint8_t **item;      /* each member's item, in its segment */
	size_t *item_len;
	uint8_t *items;            /* the members' items back to back (owned) */
};

static bool batchable(const struct job *a, const struct job *b)
{
	return !b->is_map && b->retries == 0 && !b->retry_head &&
	       b->next_index < b->n_items && b->timeout_ms == a->timeout_ms &&
	       b->fn_len == a->fn_len && memcmp(b->fn, a->fn, a->fn_len) == 0;
}

static void batch_free(struct batch *b)
{
	free(b->jobs);
	free(b->segs);
	free(b->item);
	free(b->item_len);
	free(b->items);
	free(b);
}

/* ck holds the one item of apply `first`, about to go to a worker with
 * quota tasks left: gathers batchable applies into it. */
static void batch_gather(struct job *first, struct chunk *ck, uint64_t quota)
{
	size_t total = 0;
	uint32_t waiting = 0, scanned = 0, limit, n = 1;
	struct rr_client *cl = first->client;
	struct job *j, *next;
	struct batch *b;

	if (first->is_map || first->retries || quota < 2 || !cl || !first->conn ||
	    ops->backlogged(first->conn))
		return;
	/* Another client waits: its turn comes before any more of this one's. */
	if (TAILQ_FIRST(&runq) != cl->user || TAILQ_NEXT(cl->user, q) ||
	    TAILQ_FIRST(&cl->user->clients) != cl || TAILQ_NEXT(cl, q))
		return;
	TAILQ_FOREACH(j, &cl->jobs, runq) {
		if (++scanned > 4 * BATCH_MAX)
			break;
		waiting += j != first && batchable(first, j);
	}
	limit = disp_auto_chunksize(waiting + 1ull, cfg.workers);
	if (limit > BATCH_MAX)
		limit = BATCH_MAX;
	if (limit > quota)
		limit = (uint32_t)quota;
	if (waiting == 0 || limit < 2)
		return;
	b = xcalloc(1, sizeof(*b));
	b->jobs = xmalloc(limit * sizeof(*b->jobs));
	b->segs = xmalloc(limit * sizeof(*b->segs));
	b->item = xmalloc(limit * sizeof(*b->item));
	b->item_len = xmalloc(limit * sizeof(*b->item_len));
	b->jobs[0] = first;
	b->segs[0] = ck->seg;
	b->item[0] = ck->items;
	b->item_len[0] = ck->items_len;
	for (j = TAILQ_FIRST(&cl->jobs); j && n < limit; j = next) {
		struct chunk one;

		next = TAILQ_NEXT(j, runq);
		if (j == first || !batchable(first, j) || !job_next_chunk(j, 1, &one))
			continue;
		j->inflight++;
		job_unqueue(j);
		b->jobs[n] = j;
		b->segs[n] = one.seg;
		b->item[n] = one.items;
		b->item_len[n] = one.items_len;
		n++;
	}
	for (uint32_t i = 0; i < n; i++)
		total += b->item_len[i];
	b->items = xmalloc(total);
	total = 0;
	for (uint32_t i = 0; i < n; i++) {
		memcpy(b->items + total, b->item[i], b->item_len[i]);
		total += b->item_len[i];
	}
	b->n = n;
	ck->batch = b;
	ck->items = b->items;
	ck->items_len = total;
	ck->first = 0;
	ck->count = n;
}

/* Answers the batch members a piece of results covers.  The worker counted
 * the batch's items from 0, so an error's index is its member's place. */
static void batch_piece(struct batch *b, const struct wmsg_result *res)
{
	static const uint8_t none[1] = { 0x90 };
	struct mp_cur rc, ec;
	uint32_t n;

	mp_cur_init(&rc, res->results, res->results_len);
	mp_cur_init(&ec, res->errors, res->errors_len);
	if (mp_read_array(&rc, &n) < 0 || mp_read_array(&ec, &n) < 0)
		abort();             /* wmsg_parse_from_worker checked both */
	for (uint32_t i = 0; i < res->n_results; i++) {
		uint32_t k = b->done + i;
		struct job *job = b->jobs[k];
		const uint8_t *r, *e = NULL;
		size_t rl, el = 0;
		uint8_t *rb, *eb = NULL;
		struct mp_cur peek = ec;
		int code;
		const char *msg;
		uint32_t ml;
		int64_t index;

		if (mp_skip(&rc, &r, &rl) < 0)
			abort();
		if (!mp_cur_done(&ec) && mp_read_error(&peek, &code, &msg, &ml, &index) == 0 &&
		    index == (int64_t)k)
			mp_skip(&ec, &e, &el);
		/* One-element arrays, the shape job_piece takes. */
		rb = xmalloc(rl + 1);
		rb[0] = 0x91;
		memcpy(rb + 1, r, rl);
		if (e) {
			eb = xmalloc(el + 1);
			eb[0] = 0x91;
			memcpy(eb + 1, e, el);
		}
		job_piece(job, 0, 1, rb, rl + 1, e ? eb : none, e ? el + 1 : 1, e ? 1 : 0, NULL);
		free(rb);
		free(eb);
		seg_unref(job, b->segs[k]);
		job_chunk_ended(job);
	}
	b->done += res->n_results;
}

/* The batch's worker is gone.  A batch's worker reports every member as it
 * finishes (wmsg "each"), so the first unanswered member is the one it was
 * running: that one fails (batched applies ask for no retries).  The members
 * after it never started, and may belong to other clients: they go back to
 * the queue untouched, so one task's crash costs nobody else their work. */
static void batch_lost(struct batch *b, int code, const char *msg)
{
	for (uint32_t k = b->done; k < b->n; k++) {
		struct job *job = b->jobs[k];

		if (k > b->done && job->conn) {
			struct retry *r = xcalloc(1, sizeof(*r));

			r->first = 0;
			r->count = 1;
			r->seg = b->segs[k];       /* the member's reference moves here */
			r->items = b->item[k];
			r->items_len = b->item_len[k];
			*job->retry_tail = r;
			job->retry_tail = &r->next;
			job->inflight--;
			job_requeue(job);
			continue;
		}
		struct chunk one = { .job = job, .first = 0, .count = 1 };

		chunk_fail(&one, code, msg);
		seg_unref(job, b->segs[k]);
		job_chunk_ended(job);
	}
	batch_free(b);
}

/* The first job that may run, in turn order: uids, their connections,
 * their jobs. */
/* shared_only: for the cluster's outlet, jobs that may be shared. */
static struct job *next_runnable(bool shared_only)
{
	struct rr_user *u;
	struct rr_client *cl;
	struct job *job;

	TAILQ_FOREACH(u, &runq, q)
		TAILQ_FOREACH(cl, &u->clients, q) {
			/* A backlogged client's jobs all wait for it to read. */
			if (cl->conn && ops->backlogged(cl->conn))
				continue;
			TAILQ_FOREACH(job, &cl->jobs, runq)
				if (job_runnable(job) &&
				    (shared_only ? job->shared : !job->remote_only))
					return job;
		}
	return NULL;
}

void disp_schedule(void)
{
	struct worker *w;

	ops->changed();
	while ((w = ops->idle())) {
		struct rr_client *cl;
		struct job *job;
		struct chunk ck;

		if (!(job = next_runnable(false)))
			break;       /* the outlet may still take shared work */
		ck.batch = NULL;
		if (!job_next_chunk(job, ops->quota_left(w), &ck))
			return;      /* a worker at its quota is never idle */
		job->inflight++;
		/* Round robin: the job, its client and its uid go to the back of
		 * their lines. */
		cl = job->client;
		job_unqueue(job);
		job_requeue(job);
		rr_turn_taken(cl);
		batch_gather(job, &ck, ops->quota_left(w));
		ops->run(w, &ck, job->fn, job->fn_len);
	}
	/* cluster: what local workers left of shared jobs goes to the
	 * outlet, a worker of its own kind, while it has room. */
	while (ops->outlet_room && ops->outlet_room()) {
		struct rr_client *cl;
		struct job *job;
		struct chunk ck;

		if (!(job = next_runnable(true)))
			return;
		ck.batch = NULL;
		if (!job_next_chunk(job, UINT64_MAX, &ck))
			return;
		job->inflight++;
		cl = job->client;
		job_unqueue(job);
		job_requeue(job);
		rr_turn_taken(cl);
		ops->outlet_run(&ck, job->fn, job->fn_len);
	}
}

/* Credit-based flow control of a streamed map: the client may have at most
 * --stream-window items sent and unanswered, so the master holds a bounded
 * input whatever the map's length.  Grants go out in batches of at least a
 * quarter window, and not while the held input passes its byte bound. */
static void job_grant(struct job *job)
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
	ops->send_credit(job->conn, job->msgid, room);
}

/* owned: see conn_send_chunk; taken in any case. */
static void job_emit(struct job *job, uint64_t first, uint32_t count,
		     const uint8_t *results, size_t rlen, const uint8_t *errors, size_t elen,
		     uint8_t *owned)
{
	if (count > 0)
		ops->send_chunk(job->conn, job->msgid, first, results, rlen, errors, elen, owned);
	else
		free(owned);
	job->emitted += count;
}

/* Large results still in the buffer they arrived in: the job takes that
 * buffer and the client's output refers to it, rather than copying every
 * byte (NULL: copy). */
static uint8_t *take_results(const struct disp_results_buf *buf, const uint8_t *results,
			     size_t rlen)
{
	return rlen >= DISP_ADOPT_MIN && buf ? buf->take(buf->ctx, results, rlen) : NULL;
}

/* Delivers results for items first..first+count-1 of a map: now, or once
 * the items before them are out (ordered). */
static void job_piece(struct job *job, uint64_t first, uint32_t count,
		      const uint8_t *results, size_t rlen, const uint8_t *errors, size_t elen,
		      uint32_t n_errors, const struct disp_results_buf *buf)
{
	job->failed += n_errors;
	tasks_failed += n_errors;
	if (!job->conn || count == 0)
		return;
	if (!job->is_map) {
		ops->apply_done(job->conn, job->msgid, results, rlen, errors, elen, n_errors);
		job->emitted += count;
		return;
	}
	if (!job->ordered || first == job->emitted) {
		job_emit(job, first, count, results, rlen, errors, elen,
			 take_results(buf, results, rlen));
		while (job->held && job->held->first == job->emitted) {
			struct held *h = job->held;

			job->held = h->next;
			job_emit(job, h->first, h->count, h->results, h->results_len,
				 h->errors, h->errors_len, h->owned);
			free(h->bytes);
			free(h);
		}
	} else {
		struct held *h = xcalloc(1, sizeof(*h)), **pp = &job->held;

		h->first = first;
		h->count = count;
		h->owned = take_results(buf, results, rlen);
		if (h->owned) {
			h->results = results;
			h->errors = errors;
		} else {
			h->bytes = xmalloc(rlen + elen);
			memcpy(h->bytes, results, rlen);
			memcpy(h->bytes + rlen, errors, elen);
			h->results = h->bytes;
			h->errors = h->bytes + rlen;
		}
		h->results_len = rlen;
		h->errors_len = elen;
		while (*pp && (*pp)->first < h->first)
			pp = &(*pp)->next;
		h->next = *pp;
		*pp = h;
	}
}

/* A chunk of the job stopped running (done, failed or requeued). */
/* Answers a job whose every item has been answered and whose input ended. */
static void job_maybe_done(struct job *job)
{
	if (!job->conn || job->streaming || job->emitted < job->n_items)
		return;
	if (job->is_map)
		ops->map_done(job->conn, job->msgid, job->n_items, job->failed);
	job_finish(job);
}

static void job_chunk_ended(struct job *job)
{
	job->inflight--;
	if (!job->conn) {
		if (job->inflight == 0)
			job_free(job);
		return;
	}
	job_grant(job);
	job_maybe_done(job);
}

static void chunk_advance(struct chunk *ck, uint32_t n)
{
	const uint8_t *start;
	size_t len;

	slice_items(&ck->items, &ck->items_len, n, &start, &len);
	ck->first += n;
	ck->count -= n;
}

void disp_chunk_part(struct chunk *ck, const struct wmsg_result *res,
		     const struct disp_results_buf *buf)
{
	if (ck->batch) {
		batch_piece(ck->batch, res);
		chunk_advance(ck, res->n_results);
		/* Answered members may be freed already: the chunk names the
		 * member it is running now (a part never covers the last). */
		ck->job = ck->batch->jobs[ck->batch->done];
		return;
	}
	job_piece(ck->job, ck->first, res->n_results, res->results, res->results_len,
		  res->errors, res->errors_len, res->n_errors, buf);
	chunk_advance(ck, res->n_results);
}

void disp_chunk_done(struct chunk *ck, const struct wmsg_result *res,
		     const struct disp_results_buf *buf)
{
	if (ck->batch) {
		batch_piece(ck->batch, res);
		batch_free(ck->batch);
		disp_schedule();
		return;
	}
	job_piece(ck->job, ck->first, res->n_results, res->results, res->results_len,
		  res->errors, res->errors_len, res->n_errors, buf);
	seg_unref(ck->job, ck->seg);
	job_chunk_ended(ck->job);
	disp_schedule();
}

/* Fails every unanswered item of a chunk with the same error. */
static void chunk_fail(struct chunk *ck, int code, const char *msg)
{
	msgpack_sbuffer r, e;
	msgpack_packer rpk, epk;

	msgpack_sbuffer_init(&r);
	msgpack_sbuffer_init(&e);
	msgpack_packer_init(&rpk, &r, msgpack_sbuffer_write);
	msgpack_packer_init(&epk, &e, msgpack_sbuffer_write);
	msgpack_pack_array(&rpk, ck->count);
	msgpack_pack_array(&epk, ck->count);
	for (uint32_t i = 0; i < ck->count; i++) {
		msgpack_pack_nil(&rpk);
		mp_pack_error(&epk, code, msg, (int64_t)(ck->first + i));
	}
	if (!r.data || !e.data) {
		log_err("out of memory failing a chunk");
		abort();
	}
	job_piece(ck->job, ck->first, ck->count, (uint8_t *)r.data, r.size,
		  (uint8_t *)e.data, e.size, ck->count, NULL);
	msgpack_sbuffer_destroy(&r);
	msgpack_sbuffer_destroy(&e);
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
		struct retry *r = xcalloc(1, sizeof(*r));

		r->first = ck->first;
		r->count = ck->count;
		r->attempt = ck->attempt + 1;
		r->seg = ck->seg;          /* the chunk's reference moves here */
		r->items = ck->items;
		r->items_len = ck->items_len;
		*job->retry_tail = r;
		job->retry_tail = &r->next;
		log_info("job %llu: rerunning items %llu..%llu (retry %u of %u): %s",
			 (unsigned long long)job->id, (unsigned long long)ck->first,
			 (unsigned long long)(ck->first + ck->count - 1), r->attempt,
			 job->retries, msg);
		job_requeue(job);
	} else {
		if (ck->count > 0)
			chunk_fail(ck, code, msg);
		seg_unref(job, ck->seg);
	}
	job_chunk_ended(job);
	disp_schedule();
}
