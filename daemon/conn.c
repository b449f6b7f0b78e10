#include "conn.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <mpool/error.h>

#include "chan.h"
#include "conn_int.h"
#include "config.h"
#include "disp.h"
#include "log.h"
#include "master.h"
#include "mem.h"
#include "mp_rpc.h"
#include "proc.h"
#include "rpc.h"
#include "status.h"
#include "tailq.h"

struct conn {
	struct chan *ch;
	uint64_t id;
	pid_t pid;
	uid_t uid;
	gid_t gid;
	struct job **jobs;         /* open apply/map requests, by msgid */
	unsigned n_jobs, cap_jobs;
	uint64_t *held;            /* msgids of other open requests (joins) */
	unsigned n_held, cap_held;
	/* The client shut its sending side: answer what is open, then close
	 * (conn_fin_cb, from the loop, since the last answer is often sent
	 * from deep inside the dispatcher). */
	bool eof;
	struct event *fin;
	/* Its input buffer and unsent output (chan_account); its jobs' input
	 * is the dispatcher's to count (disp_job_bytes). */
	size_t io_bytes;
	struct event *frame_timer;  /* armed while a message is arriving */
	TAILQ_ENTRY(conn) link;
};

/* Unread output a client may have while the total budget is spent. */
#define CONN_OUT_SLACK (64u * 1024)

static TAILQ_HEAD(, conn) conns = TAILQ_HEAD_INITIALIZER(conns);
static unsigned n_conns;
static uint64_t next_conn_id = 1;
static uint64_t limit_hits[LIM_COUNT];
static const char *const limit_names[LIM_COUNT] = {
	"frame", "depth", "items", "jobs", "clients", "queued_chunks", "backlog",
	"clients_per_uid", "client_bytes", "total_bytes", "frame_timeout",
};

void conn_limit_hit(enum conn_limit l)
{
	limit_hits[l]++;
}

void conn_pack_limits(msgpack_packer *pk)
{
	msgpack_pack_map(pk, LIM_COUNT);
	for (int i = 0; i < LIM_COUNT; i++)
		status_kv(pk, limit_names[i], limit_hits[i]);
}

static size_t conn_queued_bytes(const struct conn *c)
{
	size_t n = 0;

	for (unsigned i = 0; i < c->n_jobs; i++)
		n += disp_job_bytes(c->jobs[i]);
	return n;
}

uint64_t conn_bytes_held(void)
{
	return (uint64_t)chan_accounted_total() + disp_bytes_held();
}

int conn_budget(const struct conn *c, size_t add, char *why, size_t n_why)
{
	size_t in = c->io_bytes - chan_out_len(c->ch);
	/* Every job's input bounds this client's: its own are summed (a walk
	 * per request, with a pipelining client's thousand applies open)
	 * only when that bound does not settle it. */
	size_t mine = c->io_bytes - in + disp_bytes_held();
	uint64_t all = conn_bytes_held() - in;

	if (mine + add > cfg.max_client_bytes)
		mine = c->io_bytes - in + conn_queued_bytes(c);

	if (mine + add > cfg.max_client_bytes) {
		snprintf(why, n_why, "this connection holds %zu bytes in mpoold; %zu more would pass "
			 "the limit of %zu (--max-client-bytes)", mine, add, cfg.max_client_bytes);
		return LIM_CLIENT_BYTES;
	}
	if (all + add > cfg.max_total_bytes) {
		snprintf(why, n_why, "mpoold holds %llu bytes for its clients; %zu more would pass "
			 "the limit of %zu (--max-total-bytes)", (unsigned long long)all, add,
			 cfg.max_total_bytes);
		return LIM_TOTAL_BYTES;
	}
	return -1;
}

void conn_pack_config_limits(msgpack_packer *pk)
{
	msgpack_pack_map(pk, 14);
	status_kv(pk, "max_frame", cfg.max_frame);
	status_kv(pk, "max_depth", cfg.max_depth);
	status_kv(pk, "max_items", cfg.max_items);
	status_kv(pk, "max_jobs", cfg.max_jobs_per_conn);
	status_kv(pk, "max_clients", cfg.max_clients);
	status_kv(pk, "max_clients_per_uid", cfg.max_clients_per_uid);
	status_kv(pk, "admin_clients", cfg.admin_clients);
	status_kv(pk, "max_queued_chunks", cfg.max_queued_chunks);
	status_kv(pk, "stream_window", cfg.stream_window);
	status_kv(pk, "stream_window_bytes", cfg.stream_window_bytes);
	status_kv(pk, "max_client_bytes", cfg.max_client_bytes);
	status_kv(pk, "max_total_bytes", cfg.max_total_bytes);
	status_kv(pk, "frame_timeout_ms", cfg.frame_timeout_ms);
	/* What RLIMIT_NOFILE leaves of max_clients. */
	status_kv(pk, "clients_allowed", conn_clients_allowed());
}

static void conn_check_fin(struct conn *c)
{
	if (c->eof && conn_open_requests(c) == 0)
		event_active(c->fin, EV_TIMEOUT, 0);
}

static void conn_free(struct conn *c)
{
	proc_conn_gone(c);
	free(c->held);
	/* Detaching may free jobs; walk a snapshot from the end. */
	while (c->n_jobs > 0)
		disp_detach(c->jobs[--c->n_jobs]);
	free(c->jobs);
	event_free(c->fin);
	event_free(c->frame_timer);
	chan_free(c->ch);
	TAILQ_REMOVE(&conns, c, link);
	n_conns--;
	free(c);
	master_progress();
}

void conn_reply_error(struct conn *c, uint64_t msgid, int code, const char *fmt, ...)
{
	char msg[512];
	msgpack_packer pk;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	chan_packer(c->ch, &pk);
	mp_pack_response_head(&pk, msgid);
	mp_pack_error(&pk, code, msg, -1);
	msgpack_pack_nil(&pk);
	chan_flush(c->ch);
}

/* chan_write_now never frees c. */
void conn_abort(struct conn *c, int code, const char *why)
{
	msgpack_packer pk;

	log_info("client %llu (pid %d uid %u): closing: %s", (unsigned long long)c->id,
		 (int)c->pid, (unsigned)c->uid, why);
	chan_packer(c->ch, &pk);
	mp_pack_notify_head(&pk, "error");
	msgpack_pack_array(&pk, 1);
	mp_pack_error(&pk, code, why, -1);
	chan_write_now(c->ch);
	conn_free(c);
}

/* c->jobs is sorted by msgid, so a pipelining client's thousand open
 * applies cost a binary search per request, not a walk: where the first
 * job of msgid or above is, or would go. */
static unsigned job_pos(const struct conn *c, uint64_t msgid)
{
	unsigned lo = 0, hi = c->n_jobs;

	while (lo < hi) {
		unsigned mid = lo + (hi - lo) / 2;

		if (disp_job_msgid(c->jobs[mid]) < msgid)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

struct job *conn_find_job(const struct conn *c, uint64_t msgid)
{
	unsigned i = job_pos(c, msgid);

	return i < c->n_jobs && disp_job_msgid(c->jobs[i]) == msgid ? c->jobs[i] : NULL;
}

bool conn_msgid_in_use(const struct conn *c, uint64_t msgid)
{
	if (conn_find_job(c, msgid))
		return true;
	for (unsigned i = 0; i < c->n_held; i++)
		if (c->held[i] == msgid)
			return true;
	return false;
}

unsigned conn_open_requests(const struct conn *c)
{
	return c->n_jobs + c->n_held;
}

void conn_add_job(struct conn *c, struct job *job)
{
	unsigned i;

	if (c->n_jobs == c->cap_jobs) {
		c->cap_jobs = c->cap_jobs ? 2 * c->cap_jobs : 8;
		c->jobs = xrealloc(c->jobs, c->cap_jobs * sizeof(*c->jobs));
	}
	i = job_pos(c, disp_job_msgid(job));
	memmove(c->jobs + i + 1, c->jobs + i, (c->n_jobs - i) * sizeof(*c->jobs));
	c->jobs[i] = job;
	c->n_jobs++;
}

uint8_t *conn_take_frame(struct conn *c, size_t len)
{
	return chan_take_frame(c->ch, len);
}

void conn_hold_msgid(struct conn *c, uint64_t msgid)
{
	if (c->n_held == c->cap_held) {
		c->cap_held = c->cap_held ? 2 * c->cap_held : 4;
		c->held = xrealloc(c->held, c->cap_held * sizeof(*c->held));
	}
	c->held[c->n_held++] = msgid;
}

void conn_forget_msgid(struct conn *c, uint64_t msgid)
{
	for (unsigned i = 0; i < c->n_held; i++) {
		if (c->held[i] == msgid) {
			c->held[i] = c->held[--c->n_held];
			break;
		}
	}
	conn_check_fin(c);
}

void conn_reply(struct conn *c, uint64_t msgid, void (*pack)(msgpack_packer *pk, const void *arg),
		const void *arg)
{
	msgpack_packer pk;

	chan_packer(c->ch, &pk);
	mp_pack_response_head(&pk, msgid);
	msgpack_pack_nil(&pk);
	pack(&pk, arg);
	chan_flush(c->ch);
}

void conn_job_ended(struct conn *c, struct job *job)
{
	uint64_t msgid = disp_job_msgid(job);
	unsigned i = job_pos(c, msgid);

	while (i < c->n_jobs && c->jobs[i] != job && disp_job_msgid(c->jobs[i]) == msgid)
		i++;
	if (i < c->n_jobs && c->jobs[i] == job) {
		c->n_jobs--;
		memmove(c->jobs + i, c->jobs + i + 1, (c->n_jobs - i) * sizeof(*c->jobs));
	}
	conn_check_fin(c);
}

bool conn_is_admin(const struct conn *c)
{
	return conn_cred_is_admin(c->uid, c->gid);
}

static void conn_frame(void *ctx, const uint8_t *frame, size_t len)
{
	struct conn *c = ctx;
	struct mp_msg m;
	uint64_t msgid;
	int msgid_ok;

	/* A whole message: the next one's time starts when it does. */
	event_del(c->frame_timer);
	if (mp_msg_parse(frame, len, &m, &msgid_ok, &msgid) < 0) {
		if (msgid_ok)
			conn_reply_error(c, msgid, MPOOL_E_BADREQ,
				    "a request is [0, msgid, method, params] with a string method and an array of params");
		else
			conn_abort(c, MPOOL_E_BADREQ, "not a MessagePack-RPC request");
		return;
	}
	/* Past a feed c may be gone; a feed adds no output either. */
	if (!rpc_dispatch(c, &m))
		return;
	/* A client that sends faster than it reads stops being read; while
	 * the clients' bytes pass --max-total-bytes, so does every client
	 * with output it has not read yet. */
	if (conn_backlogged(c)) {
		limit_hits[LIM_BACKLOG]++;
		chan_pause(c->ch, true);
	} else if (chan_out_len(c->ch) > 0 && conn_bytes_held() > cfg.max_total_bytes) {
		limit_hits[LIM_TOTAL_BYTES]++;
		chan_pause(c->ch, true);
	}
}

/* Bytes arrived: a message under way must finish in time, and must not
 * take the clients' bytes past --max-total-bytes by more than one message
 * (that slack lets a request that arrives when the budget is nearly spent
 * be refused with an error instead of its connection dropped).  Its size
 * alone is bounded by --max-frame, which is at most --max-client-bytes. */
static void conn_received(void *ctx)
{
	struct conn *c = ctx;
	char why[256];

	if (chan_in_partial(c->ch) == 0) {
		event_del(c->frame_timer);
		return;
	}
	if (cfg.frame_timeout_ms && !evtimer_pending(c->frame_timer, NULL))
		timer_add_ms(c->frame_timer, cfg.frame_timeout_ms);
	if (conn_bytes_held() <= (uint64_t)cfg.max_total_bytes + cfg.max_frame)
		return;
	snprintf(why, sizeof(why), "mpoold holds %llu bytes for its clients, past the limit of "
		 "%zu (--max-total-bytes), and this message would add more",
		 (unsigned long long)conn_bytes_held(), cfg.max_total_bytes);
	limit_hits[LIM_TOTAL_BYTES]++;
	conn_abort(c, MPOOL_E_LIMIT, why);
}

static void conn_frame_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;
	char why[160];

	(void)fd;
	(void)what;
	limit_hits[LIM_FRAME_TIMEOUT]++;
	snprintf(why, sizeof(why), "a message started %u ms ago and is not whole (--frame-timeout)",
		 cfg.frame_timeout_ms);
	conn_abort(c, MPOOL_E_LIMIT, why);
}

static void conn_closed(void *ctx, int err)
{
	struct conn *c = ctx;

	if (err == -EBADMSG || err == -ELOOP || err == -EMSGSIZE) {
		const char *why = err == -EBADMSG ? "the stream is not MessagePack"
				  : err == -ELOOP ? "message nested too deep"
				  : "message larger than the frame limit";
		if (err == -ELOOP)
			limit_hits[LIM_DEPTH]++;
		else if (err == -EMSGSIZE)
			limit_hits[LIM_FRAME]++;
		conn_abort(c, err == -EBADMSG ? MPOOL_E_BADREQ : MPOOL_E_LIMIT, why);
		return;
	}
	if (c->n_jobs)
		log_info("client %llu (pid %d) left with %u open request(s)",
			 (unsigned long long)c->id, (int)c->pid, c->n_jobs);
	conn_free(c);
}

static void conn_drained(void *ctx)
{
	struct conn *c = ctx;

	chan_pause(c->ch, false);
	conn_check_fin(c);
	disp_schedule();
	master_progress();
}

/* Read end-of-file from a client that still reads: it has no more
 * requests.  What is open is answered, then the connection closes.  A
 * streamed map can get no more feeds, so it fails now. */
static void conn_eof(void *ctx)
{
	struct conn *c = ctx;

	if (!c->eof) {
		c->eof = true;
		log_debug("client %llu (pid %d): end of requests; %u open", (unsigned long long)c->id,
			  (int)c->pid, conn_open_requests(c));
		for (unsigned i = c->n_jobs; i-- > 0;)
			if (i < c->n_jobs && disp_job_streaming(c->jobs[i]))
				disp_cancel(c->jobs[i], MPOOL_E_BADREQ,
					    "the client ended its input before the stream's last feed");
	}
	conn_check_fin(c);
}

static void conn_fin_cb(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;

	(void)fd;
	(void)what;
	/* Output still waiting: conn_drained() comes back here once it is sent. */
	if (c->eof && conn_open_requests(c) == 0 && chan_out_len(c->ch) == 0)
		conn_free(c);
}

static const struct chan_ops conn_ops = {
	.frame = conn_frame,
	.closed = conn_closed,
	.drained = conn_drained,
	.eof = conn_eof,
	.received = conn_received,
};

pid_t conn_pid(const struct conn *c)
{
	return c->pid;
}

uid_t conn_uid(const struct conn *c)
{
	return c->uid;
}

uint64_t conn_id(const struct conn *c)
{
	return c->id;
}

/* Past the high-water mark; or, while the clients' bytes pass
 * --max-total-bytes, past a little: the dispatcher then stops feeding the
 * client's jobs, so unread output cannot take the total much further. */
bool conn_backlogged(const struct conn *c)
{
	size_t out = chan_out_len(c->ch);

	return out > cfg.out_high_water ||
	       (out > CONN_OUT_SLACK && conn_bytes_held() > cfg.max_total_bytes);
}

static void free_sent(const void *data, size_t len, void *arg)
{
	(void)data;
	(void)len;
	free(arg);
}

void conn_send_chunk(struct conn *c, uint64_t msgid, uint64_t first,
		     const uint8_t *results, size_t rlen, const uint8_t *errors, size_t elen,
		     uint8_t *owned)
{
	msgpack_packer pk;
	struct evbuffer *out = chan_out(c->ch);

	chan_packer(c->ch, &pk);
	mp_pack_notify_head(&pk, "result");
	msgpack_pack_array(&pk, 4);
	msgpack_pack_uint64(&pk, msgid);
	msgpack_pack_uint64(&pk, first);
	/* The reference frees owned once the bytes are sent: after a write,
	 * never before the errors (in owned too) are copied below. */
	if (owned && evbuffer_add_reference(out, results, rlen, free_sent, owned) == 0)
		owned = NULL;
	else
		evbuffer_add(out, results, rlen);
	evbuffer_add(out, errors, elen);
	free(owned);         /* NULL unless the reference failed */
	chan_flush(c->ch);
}

void conn_send_credit(struct conn *c, uint64_t msgid, uint64_t n)
{
	msgpack_packer pk;

	chan_packer(c->ch, &pk);
	mp_pack_notify_head(&pk, "credit");
	msgpack_pack_array(&pk, 2);
	msgpack_pack_uint64(&pk, msgid);
	msgpack_pack_uint64(&pk, n);
	chan_flush(c->ch);
}

void conn_map_done(struct conn *c, uint64_t msgid, uint64_t items, uint64_t failed)
{
	msgpack_packer pk;

	chan_packer(c->ch, &pk);
	mp_pack_response_head(&pk, msgid);
	msgpack_pack_nil(&pk);
	msgpack_pack_map(&pk, 2);
	status_kv(&pk, "items", items);
	status_kv(&pk, "failed", failed);
	chan_flush(c->ch);
}

void conn_apply_done(struct conn *c, uint64_t msgid, const uint8_t *results, size_t rlen,
		     const uint8_t *errors, size_t elen, uint32_t n_errors)
{
	msgpack_packer pk;
	struct mp_cur cur;
	uint32_t n;

	if (n_errors > 0) {
		int code;
		const char *msg;
		uint32_t msg_len;
		int64_t index;

		mp_cur_init(&cur, errors, elen);
		if (mp_read_array(&cur, &n) < 0 ||
		    mp_read_error(&cur, &code, &msg, &msg_len, &index) < 0)
			conn_reply_error(c, msgid, MPOOL_E_INTERNAL, "unreadable error from the worker");
		else
			conn_reply_error(c, msgid, code, "%.*s", (int)msg_len, msg);
		return;
	}
	mp_cur_init(&cur, results, rlen);
	if (mp_read_array(&cur, &n) < 0 || n != 1) {
		conn_reply_error(c, msgid, MPOOL_E_INTERNAL, "unreadable result from the worker");
		return;
	}
	chan_packer(c->ch, &pk);
	mp_pack_response_head(&pk, msgid);
	msgpack_pack_nil(&pk);
	evbuffer_add(chan_out(c->ch), cur.p, (size_t)(cur.end - cur.p));
	chan_flush(c->ch);
}

void conn_job_failed(struct conn *c, uint64_t msgid, int code, const char *msg)
{
	conn_reply_error(c, msgid, code, "%s", msg);
}

void conn_new(struct event_base *base, int fd, const struct ucred *cred)
{
	struct mp_frame_limits lim = { .max_frame = cfg.max_frame, .max_depth = cfg.max_depth };
	struct conn *c = xcalloc(1, sizeof(*c));

	c->id = next_conn_id++;
	c->pid = cred->pid;
	c->uid = cred->uid;
	c->gid = cred->gid;
	c->fin = evtimer_new(base, conn_fin_cb, c);
	c->frame_timer = evtimer_new(base, conn_frame_timeout, c);
	if (!c->fin || !c->frame_timer) {
		log_err("out of memory accepting a client");
		abort();
	}
	c->ch = chan_new(base, fd, &lim, &conn_ops, c);
	chan_account(c->ch, &c->io_bytes);
	TAILQ_INSERT_TAIL(&conns, c, link);
	n_conns++;
	log_debug("client %llu connected (pid %d uid %u)", (unsigned long long)c->id,
		  (int)c->pid, (unsigned)c->uid);
}

unsigned conn_uid_count(uid_t uid)
{
	const struct conn *c;
	unsigned n = 0;

	TAILQ_FOREACH(c, &conns, link)
		n += c->uid == uid;
	return n;
}

unsigned conn_count(void)
{
	return n_conns;
}

bool conn_all_flushed(void)
{
	struct conn *c;

	TAILQ_FOREACH(c, &conns, link)
		if (chan_out_len(c->ch) > 0)
			return false;
	return true;
}

void conn_write_all_now(void)
{
	struct conn *c, *tmp;

	TAILQ_FOREACH_SAFE(c, &conns, link, tmp)
		chan_write_now(c->ch);
}

void conn_close_all(void)
{
	while (!TAILQ_EMPTY(&conns))
		conn_free(TAILQ_FIRST(&conns));
}
