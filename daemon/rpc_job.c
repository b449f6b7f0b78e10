/* rpc_job: apply and map, whose params become a dispatcher job, and the
 * feeds that bring a streamed map's later items. */
#include <errno.h>

#include "cluster.h"
#include "config.h"
#include "conn.h"
#include "log.h"
#include "mp_scan.h"
#include "registry.h"
#include "rpc_int.h"

static int read_opts(struct mp_cur *p, struct job_spec *spec, char *why, size_t n_why)
{
	uint32_t n;

	if (mp_read_map(p, &n) < 0)
		return rpc_why(-1, why, n_why, "options must be a map");
	while (n--) {
		const char *k;
		uint32_t kl;
		uint64_t v;
		bool b;

		if (mp_read_str(p, &k, &kl) < 0)
			return rpc_why(-1, why, n_why, "option names must be strings");
		if (spec->is_map && mp_str_eq(k, kl, "chunksize")) {
			if (mp_read_u64(p, &v) < 0 || v < 1 || v > UINT32_MAX)
				return rpc_why(-1, why, n_why,
					       "chunksize must be an integer from 1 to %u", UINT32_MAX);
			spec->chunksize = (uint32_t)v;
		} else if (spec->is_map && mp_str_eq(k, kl, "stream")) {
			if (mp_read_bool(p, &spec->stream) < 0)
				return rpc_why(-1, why, n_why, "stream must be true or false");
		} else if (spec->is_map && mp_str_eq(k, kl, "ordered")) {
			if (mp_read_bool(p, &spec->ordered) < 0)
				return rpc_why(-1, why, n_why, "ordered must be true or false");
		} else if (mp_str_eq(k, kl, "timeout_ms")) {
			if (mp_read_u64(p, &v) < 0 || v > RPC_TIMEOUT_MAX_MS)
				return rpc_why(-1, why, n_why,
					       "timeout_ms must be an integer from 0 to 86400000");
			spec->timeout_ms = (uint32_t)v;
		} else if (mp_str_eq(k, kl, "retries")) {
			if (mp_read_u64(p, &v) < 0 || v > cfg.max_retries)
				return rpc_why(-1, why, n_why, "retries must be an integer "
					       "from 0 to %u (--max-retries)", cfg.max_retries);
			spec->retries = (uint32_t)v;
		} else if (mp_str_eq(k, kl, "spread")) {
			/* cluster: true shares the request, false keeps it here. */
			if (mp_read_bool(p, &b) < 0)
				return rpc_why(-1, why, n_why, "spread must be true or false");
			spec->spread = b ? 1 : -1;
		} else {
			char name[64];

			rpc_printable(name, sizeof(name), k, kl);
			return rpc_why(-1, why, n_why, "unknown %s option '%s'",
				       spec->is_map ? "map" : "apply", name);
		}
	}
	return 0;
}

/* [function, argument or items] or [function, argument or items, options]. */
static int parse_job(struct mp_cur *p, uint32_t n, struct job_spec *spec, bool is_map, char *why,
		     size_t n_why)
{
	char opt_why[256];
	uint64_t max;
	size_t alen;
	int r;

	/* timeout_ms: --task-timeout unless the request gives its own (0: none). */
	*spec = (struct job_spec){ .is_map = is_map, .ordered = true, .timeout_ms = cfg.task_timeout_ms };
	if (mp_read_str(p, &spec->fn, &spec->fn_len) < 0)
		return RPC_USAGE;
	if (is_map) {
		uint32_t count;

		if (mp_read_array(p, &count) < 0)
			return rpc_why(MPOOL_E_BADREQ, why, n_why, "map items must be an array");
		spec->n_items = count;
		if (disp_walk_items(p, count, &spec->items, &spec->items_len, &spec->marks) < 0)
			return rpc_why(MPOOL_E_BADREQ, why, n_why, "map items are truncated");
	} else {
		spec->n_items = 1;
		if (mp_skip(p, &spec->items, &spec->items_len) < 0)
			return rpc_why(MPOOL_E_BADREQ, why, n_why, "apply argument is truncated");
		/* It travels to the worker one level deeper, as a chunk's item. */
		if (mp_scan_one(spec->items, spec->items_len, MP_ITEM_DEPTH_MAX, &alen) != 1) {
			conn_limit_hit(LIM_DEPTH);
			return rpc_why(MPOOL_E_LIMIT, why, n_why, "apply argument nested deeper "
				       "than %d levels", MP_ITEM_DEPTH_MAX);
		}
	}
	if (n == 3 && read_opts(p, spec, opt_why, sizeof(opt_why)) < 0)
		return rpc_why(MPOOL_E_BADREQ, why, n_why, "%s: %s", is_map ? "map" : "apply",
			       opt_why);
	/* cluster: whether its chunks may go to other nodes, which depends
	 * only on the options and the configuration; a shared request may
	 * name a function of another node. */
	spec->shared = cluster_share(spec);
	spec->remote_only = spec->shared && !reg_lookup(spec->fn, spec->fn_len);
	/* What it asks for, in PROTOCOL.md's order: the daemon draining, the
	 * function (on any node, for a shared request), the item count. */
	r = rpc_may_start(spec->fn, spec->fn_len, spec->shared, why, n_why);
	if (r)
		return r;
	max = spec->stream ? cfg.stream_window : cfg.max_items;
	if (spec->n_items > max) {
		conn_limit_hit(LIM_ITEMS);
		return rpc_why(MPOOL_E_LIMIT, why, n_why, "%s of %llu items exceeds the limit of "
			       "%llu (%s)", spec->stream ? "a stream's first part" : "map",
			       (unsigned long long)spec->n_items, (unsigned long long)max,
			       spec->stream ? "--stream-window" : "--max-items");
	}
	return 0;
}

int rpc_parse_apply(struct mp_cur *p, uint32_t n, struct rpc_args *a, char *why, size_t n_why)
{
	return parse_job(p, n, &a->job, false, why, n_why);
}

int rpc_parse_map(struct mp_cur *p, uint32_t n, struct rpc_args *a, char *why, size_t n_why)
{
	return parse_job(p, n, &a->job, true, why, n_why);
}

/* Past the msgid check: the limits of what mpoold holds, then the job. */
void rpc_run_job(struct conn *c, uint64_t msgid, const struct rpc_args *a)
{
	struct job_spec spec = a->job;
	char why[256];
	struct job *job;
	uint32_t cs;
	int lim;

	if (!rpc_room_for_request(c, msgid))
		return;
	cs = disp_spec_chunksize(&spec);
	spec.msgid = msgid;
	spec.admin = conn_is_admin(c);
	if (disp_queue_check(conn_uid(c), spec.admin, (spec.n_items + cs - 1) / cs, why,
			     sizeof(why)) < 0)
		lim = LIM_QUEUED;
	else
		lim = conn_budget(c, spec.items_len, why, sizeof(why));
	if (lim >= 0) {
		conn_limit_hit(lim);
		conn_reply_error(c, msgid, MPOOL_E_LIMIT, "%s", why);
		return;
	}
	/* Large items: the job keeps the read buffer they arrived in rather
	 * than a copy (the frame stays where it is; nothing reads it after). */
	if (spec.items_len >= DISP_ADOPT_MIN)
		spec.buf = conn_take_frame(c, spec.items_len);
	/* NULL: answered at once (an empty map), nothing to track. */
	job = disp_submit(c, &spec);
	if (job)
		conn_add_job(c, job);
}

/* [2, "feed", [msgid, items, end]]: the next items of a streamed map.  A
 * feed for a msgid that is no open stream is dropped: the map may have just
 * failed or been cancelled while the client was still sending. */
void rpc_feed(struct conn *c, const struct mp_msg *m)
{
	struct mp_cur p;
	const uint8_t *items;
	const size_t *marks;
	size_t items_len;
	uint64_t msgid;
	uint32_t n, count;
	bool end;
	struct job *job;
	char why[256];
	int lim;

	mp_cur_init(&p, m->body, m->body_len);
	if (mp_read_array(&p, &n) < 0 || n != 3 || mp_read_u64(&p, &msgid) < 0 ||
	    mp_read_array(&p, &count) < 0 ||
	    disp_walk_items(&p, count, &items, &items_len, &marks) < 0 ||
	    mp_read_bool(&p, &end) < 0) {
		conn_abort(c, MPOOL_E_BADREQ, "a feed is [2, \"feed\", [msgid, items, end]]");
		return;
	}
	job = conn_find_job(c, msgid);
	if (!job || !disp_job_streaming(job)) {
		log_debug("client %llu: feed for msgid %llu, which is no open stream; dropped",
			  (unsigned long long)conn_id(c), (unsigned long long)msgid);
		return;
	}
	lim = conn_budget(c, items_len, why, sizeof(why));
	if (lim >= 0) {
		conn_limit_hit(lim);
		disp_cancel(job, MPOOL_E_LIMIT, why);
		return;
	}
	if (disp_feed(job, items, items_len, count, marks, end) == -ENOSPC)
		conn_limit_hit(LIM_QUEUED);
}
