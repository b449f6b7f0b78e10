/* disp_sched: whose turn it is (the run queue), the queued-chunk limits,
 * and batches of single-item applies. */
#include "disp_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "mem.h"
#include "mp_rpc.h"
#include "status.h"

/* Turns on three levels: uids, a uid's connections, a connection's jobs.
 * The one served goes to the back of its queue, so a uid with many
 * connections, or a connection with many maps, gets one turn like anyone
 * else.  Nodes live while a job of theirs is attached; a node is in its
 * parent's queue exactly while its own queue is not empty. */
struct rr_user {
	uid_t uid;
	uint64_t qchunks;          /* its jobs' share of queued_chunks */
	unsigned refs;             /* its rr_clients */
	TAILQ_HEAD(, rr_client) clients;   /* those with work, in turn order */
	TAILQ_ENTRY(rr_user) q;
	TAILQ_ENTRY(rr_user) all;
};

struct rr_client {
	const struct conn *conn;
	struct rr_user *user;
	unsigned refs;             /* its attached jobs */
	TAILQ_HEAD(, job) jobs;    /* those with work, in turn order */
	TAILQ_ENTRY(rr_client) q;
	TAILQ_ENTRY(rr_client) all;
};

static TAILQ_HEAD(, rr_user) runq = TAILQ_HEAD_INITIALIZER(runq);
static TAILQ_HEAD(, rr_user) all_users = TAILQ_HEAD_INITIALIZER(all_users);
static TAILQ_HEAD(, rr_client) all_clients = TAILQ_HEAD_INITIALIZER(all_clients);

/* Chunks waiting in the run queue, kept up to date as jobs change: the
 * limit check runs on every request and must not walk the queue. */
static uint64_t queued_chunks;

void sched_account(struct job *job)
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

/* Made on conn's first job, freed with its last attached one; a
 * connection's jobs are all detached before it closes, so a node's conn is
 * always the live connection. */
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

void sched_attach(struct job *job, uid_t uid)
{
	job->client = rr_client_get(job->conn, uid);
}

uid_t sched_uid(const struct job *job)
{
	return job->client->user->uid;
}

static bool job_has_work(const struct job *job)
{
	return !STAILQ_EMPTY(&job->lost) || job->next_index < job->n_items;
}

bool disp_has_queued(void)
{
	return !TAILQ_EMPTY(&runq);
}

void sched_requeue(struct job *job)
{
	struct rr_client *cl = job->client;

	if (job->queued || !job->conn || !cl || !job_has_work(job))
		return;
	if (TAILQ_EMPTY(&cl->jobs)) {
		if (TAILQ_EMPTY(&cl->user->clients))
			TAILQ_INSERT_TAIL(&runq, cl->user, q);
		TAILQ_INSERT_TAIL(&cl->user->clients, cl, q);
	}
	TAILQ_INSERT_TAIL(&cl->jobs, job, runq);
	job->queued = true;
	sched_account(job);
}

uint64_t disp_chunks_queued(void)
{
	return queued_chunks;
}

static void sched_unqueue(struct job *job)
{
	struct rr_client *cl = job->client;

	if (!job->queued)
		return;
	TAILQ_REMOVE(&cl->jobs, job, runq);
	job->queued = false;
	sched_account(job);
	if (!TAILQ_EMPTY(&cl->jobs))
		return;
	TAILQ_REMOVE(&cl->user->clients, cl, q);
	if (TAILQ_EMPTY(&cl->user->clients))
		TAILQ_REMOVE(&runq, cl->user, q);
}

/* Chunks still running for the job need no turn. */
void sched_detach(struct job *job)
{
	sched_unqueue(job);
	if (job->client)
		rr_client_put(job->client);
	job->client = NULL;
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
	status_kv(pk, "max_chunks", cfg.max_queued_chunks);
	status_kv(pk, "max_chunks_per_uid", cfg.max_queued_chunks_per_uid);
	status_kv(pk, "admin_chunks", cfg.admin_queued_chunks);
	/* Only uids with chunks queued.  An array of maps, not a map keyed
	 * by uid: strict decoders take only string keys. */
	mp_pack_cstr(pk, "by_uid");
	msgpack_pack_array(pk, n);
	TAILQ_FOREACH(u, &all_users, all)
		if (u->qchunks > 0) {
			msgpack_pack_map(pk, 2);
			status_kv(pk, "uid", u->uid);
			status_kv(pk, "chunks", u->qchunks);
		}
}

struct job *sched_first_queued(void)
{
	struct rr_user *u = TAILQ_FIRST(&runq);

	return u ? TAILQ_FIRST(&TAILQ_FIRST(&u->clients)->jobs) : NULL;
}

/* An ordered job may run ahead of what its client has received by this
 * many items, so one slow chunk cannot make the master hold unbounded
 * results. */
static bool job_window_open(const struct job *job)
{
	/* cluster: a shared job's chunks also run on the outlet's workers. */
	uint64_t w = cfg.workers +
		     (job->shared && disp_io->outlet_workers ? disp_io->outlet_workers() : 0);
	uint64_t window = (uint64_t)job->chunksize * (2ull * w + 2);

	return !job->ordered || job->next_index - job->emitted < window;
}

/* Its client is not backlogged (next_runnable asks once per client). */
static bool job_runnable(const struct job *job)
{
	return !STAILQ_EMPTY(&job->lost) || (job->next_index < job->n_items && job_window_open(job));
}

/* Batches.  One-item applies of the same function and options, queued
 * behind one that is dispatched, ride in its chunk: run one by one, each
 * costs a worker wake-up and two master wake-ups.  A batch holds items no
 * other worker can start, so it is kept fair: only that apply's own
 * connection contributes, only while no other client has work waiting,
 * and at most one chunk's worth by Python's rule of what is waiting, so
 * the rest stays queued for the other workers. */
#define BATCH_MAX 256

struct batch {
	uint32_t n, done;          /* members, and how many are answered */
	struct chunk *members;     /* each apply's own one-item chunk */
	uint8_t *items;            /* the members' items back to back (owned) */
};

static bool batchable(const struct job *a, const struct job *b)
{
	return !b->is_map && b->retries == 0 && STAILQ_EMPTY(&b->lost) &&
	       b->next_index < b->n_items && b->timeout_ms == a->timeout_ms &&
	       b->fn_len == a->fn_len && memcmp(b->fn, a->fn, a->fn_len) == 0;
}

void batch_free(struct batch *b)
{
	free(b->members);
	free(b->items);
	free(b);
}

/* ck holds the one item of apply `first`, about to go to a worker with
 * quota tasks left: gathers batchable applies into it. */
static void batch_gather(struct job *first, struct chunk *ck, uint64_t quota)
{
	size_t total;
	uint32_t waiting = 0, scanned = 0, limit, n = 1;
	struct rr_client *cl = first->client;
	struct job *j, *next;
	struct batch *b;

	/* first was runnable just now: its client is attached and reads. */
	if (first->is_map || first->retries || quota < 2)
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
	/* A chunk by Python's rule for what waits, of at most BATCH_MAX. */
	limit = disp_chunk_take(disp_auto_chunksize(waiting + 1ull, cfg.workers), BATCH_MAX, quota);
	if (waiting == 0 || limit < 2)
		return;
	b = xcalloc(1, sizeof(*b));
	b->members = xcalloc(limit, sizeof(*b->members));
	b->members[0] = *ck;
	total = ck->items_len;
	for (j = TAILQ_FIRST(&cl->jobs); j && n < limit; j = next) {
		next = TAILQ_NEXT(j, runq);
		if (j == first || !batchable(first, j) || !seg_next_chunk(j, 1, &b->members[n]))
			continue;
		j->inflight++;
		sched_unqueue(j);
		total += b->members[n++].items_len;
	}
	b->items = xmalloc(total);
	total = 0;
	for (uint32_t i = 0; i < n; i++) {
		memcpy(b->items + total, b->members[i].items, b->members[i].items_len);
		total += b->members[i].items_len;
	}
	b->n = n;
	ck->batch = b;
	ck->items = b->items;
	ck->items_len = total;
	ck->first = 0;
	ck->count = n;
}

struct job *batch_current(const struct batch *b)
{
	return b->members[b->done].job;
}

/* The worker counted the batch's items from 0, so an error's index is its
 * member's place. */
void batch_piece(struct batch *b, const struct wmsg_result *res)
{
	struct mp_cur rc, ec;
	uint32_t n;

	mp_cur_init(&rc, res->results, res->results_len);
	mp_cur_init(&ec, res->errors, res->errors_len);
	if (mp_read_array(&rc, &n) < 0 || mp_read_array(&ec, &n) < 0)
		abort();             /* wmsg_parse_from_worker checked both */
	for (uint32_t i = 0; i < res->n_results; i++) {
		uint32_t k = b->done + i;
		struct job *job = b->members[k].job;
		const uint8_t *r, *e = NULL;
		size_t rl, el = 0;
		uint8_t *one;
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
		/* The shape out_piece takes: a one-element results array, then
		 * an errors array of one element or none. */
		one = xmalloc(rl + el + 2);
		one[0] = 0x91;
		memcpy(one + 1, r, rl);
		one[rl + 1] = e ? 0x91 : 0x90;
		if (e)
			memcpy(one + rl + 2, e, el);
		out_piece(job, 0, 1, one, rl + 1, one + rl + 1, el + 1, e ? 1 : 0, NULL);
		free(one);
		job_chunk_ended(&b->members[k]);
	}
	b->done += res->n_results;
}

/* A batch's worker reports every member as it finishes (wmsg "each"), so
 * the first unanswered member is the one it was running: that one fails
 * (batched applies ask for no retries).  Those after it never started and
 * go back to the queue, so one task's crash costs nobody else their work. */
void batch_lost(struct batch *b, int code, const char *msg)
{
	for (uint32_t k = b->done; k < b->n; k++) {
		struct chunk *one = &b->members[k];

		if (k > b->done && one->job->conn)
			seg_retry(one->job, one, 0);
		else
			out_fail_chunk(one, code, msg);
		job_chunk_ended(one);
	}
	batch_free(b);
}

/* The first job that may run, in turn order: uids, their connections,
 * their jobs.  shared_only: for the cluster's outlet, jobs that may be
 * shared; else jobs this node's workers can run. */
static struct job *next_runnable(bool shared_only)
{
	struct rr_user *u;
	struct rr_client *cl;
	struct job *job;

	TAILQ_FOREACH(u, &runq, q)
		TAILQ_FOREACH(cl, &u->clients, q) {
			/* A backlogged client's jobs all wait for it to read. */
			if (cl->conn && disp_io->backlogged(cl->conn))
				continue;
			TAILQ_FOREACH(job, &cl->jobs, runq)
				if (job_runnable(job) &&
				    (shared_only ? job->shared : !job->remote_only))
					return job;
		}
	return NULL;
}

/* The job's next chunk, for a worker with quota tasks left, or NULL.
 * shared_only: as for next_runnable.  The job, its client and its uid go
 * to the back of their lines. */
static struct job *take_turn(bool shared_only, uint64_t quota, struct chunk *ck)
{
	struct job *job = next_runnable(shared_only);
	struct rr_client *cl;

	ck->batch = NULL;
	if (!job || !seg_next_chunk(job, quota, ck))
		return NULL;
	job->inflight++;
	cl = job->client;
	sched_unqueue(job);
	sched_requeue(job);
	if (!TAILQ_EMPTY(&cl->jobs)) {
		TAILQ_REMOVE(&cl->user->clients, cl, q);
		TAILQ_INSERT_TAIL(&cl->user->clients, cl, q);
	}
	if (!TAILQ_EMPTY(&cl->user->clients)) {
		TAILQ_REMOVE(&runq, cl->user, q);
		TAILQ_INSERT_TAIL(&runq, cl->user, q);
	}
	return job;
}

void disp_schedule(void)
{
	struct worker *w;
	struct job *job;
	struct chunk ck;

	disp_io->changed();
	/* A worker at its quota is never idle, so no chunk means no job. */
	while ((w = disp_io->idle()) && (job = take_turn(false, disp_io->quota_left(w), &ck))) {
		batch_gather(job, &ck, disp_io->quota_left(w));
		disp_io->run(w, &ck, job->fn, job->fn_len);
	}
	/* cluster: what local workers left of shared jobs goes to the
	 * outlet, a worker of its own kind, while it has room. */
	while (disp_io->outlet_room && disp_io->outlet_room() &&
	       (job = take_turn(true, UINT64_MAX, &ck)))
		disp_io->outlet_run(&ck, job->fn, job->fn_len);
}

