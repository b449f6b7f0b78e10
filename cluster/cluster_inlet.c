/* cluster_inlet: chunks this node runs for the cluster (for itself too):
 * pulled from the stream only for idle workers, each run as a local map
 * job of the inlet's client, its results sent back to its origin; and the
 * stops origins send. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mpool/error.h>
#include "cluster_int.h"
#include "log.h"
#include "master.h"
#include "mem.h"
#include "mp_scan.h"
#include "pool.h"

static struct in_chunk *in_find(uint64_t id)
{
	for (struct in_chunk *i = cluster.in; i; i = i->next)
		if (i->id == id)
			return i;
	return NULL;
}

/* Tells a chunk's origin of its run (enum res_kind). */
static void cluster_in_reply(const struct in_chunk *ic, int kind, uint64_t first,
			     const uint8_t *res, size_t rlen, const uint8_t *errs, size_t elen,
			     const char *m)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;
	char subj[128];

	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_array(&pk, 11);
	msgpack_pack_uint64(&pk, CLUSTER_WIRE);
	msgpack_pack_uint64(&pk, (uint64_t)kind);
	msgpack_pack_uint64(&pk, ic->inc);
	msgpack_pack_uint64(&pk, ic->job_key);
	msgpack_pack_uint64(&pk, ic->chunk_key);
	mp_pack_cstr(&pk, host_cfg->node_name);
	msgpack_pack_uint64(&pk, ic->delivered);
	msgpack_pack_uint64(&pk, ic->first + first);
	msgpack_pack_bin(&pk, rlen);
	msgpack_pack_bin_body(&pk, res, rlen);
	msgpack_pack_bin(&pk, elen);
	msgpack_pack_bin_body(&pk, errs, elen);
	mp_pack_cstr(&pk, m ? m : "");
	cluster_subject(subj, sizeof(subj), "res", ic->origin);
	if (sb.data)
		cluster_publish(subj, NULL, sb.data, sb.size);
	msgpack_sbuffer_destroy(&sb);
}

/* Answers JetStream's delivery (reply subject) with what ("+ACK", "+WPI"...). */
static void cluster_js_ack(const char *reply, const char *what)
{
	if (reply)
		cluster_publish(reply, NULL, what, strlen(what));
}

/* The origin stopped the job (cluster_handle_stop). */
static bool job_stopped(const char *origin, uint64_t inc, uint64_t job)
{
	for (unsigned i = 0; i < cluster.n_stopped && i < STOPPED_KEEP; i++)
		if (cluster.stopped[i].inc == inc && cluster.stopped[i].job == job &&
		    strcmp(cluster.stopped[i].origin, origin) == 0)
			return true;
	return false;
}

static void handle_chunk(natsMsg *msg)
{
	const char *reply = natsMsg_GetReply(msg);
	struct mp_cur c, items_cur;
	uint64_t wire, inc, job, key, first, count, retries, timeout, delivered = 1;
	char origin[CONFIG_NAME_MAX + 1];
	const uint8_t *items, *walked;
	size_t walked_len;
	const size_t *marks;
	uint32_t items_len, n;
	const char *fn = natsMsg_GetSubject(msg), *p;
	char prefix[128];
	struct in_chunk *ic, head;
	struct job_spec spec;
	struct node *nd;

	/* $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending> */
	if (reply && strncmp(reply, "$JS.ACK.", 8) == 0) {
		p = reply + 8;
		for (int dots = 0; *p && dots < 2; p++)
			dots += *p == '.';
		delivered = strtoull(p, NULL, 10);
	}
	cluster_subject(prefix, sizeof(prefix), "work", "");
	if (strncmp(fn, prefix, strlen(prefix)) != 0)
		return;
	fn += strlen(prefix);
	mp_cur_init(&c, natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg));
	if (mp_read_array(&c, &n) < 0 || n < 10 || mp_read_u64(&c, &wire) < 0 ||
	    wire != CLUSTER_WIRE || !cluster_read_name(&c, origin, sizeof(origin)) ||
	    mp_read_u64(&c, &inc) < 0 || mp_read_u64(&c, &job) < 0 ||
	    mp_read_u64(&c, &key) < 0 || mp_read_u64(&c, &first) < 0 ||
	    mp_read_u64(&c, &count) < 0 || mp_read_u64(&c, &retries) < 0 ||
	    mp_read_u64(&c, &timeout) < 0 || !cluster_read_bin(&c, &items, &items_len) ||
	    count == 0 || count > UINT32_MAX || !cluster_has_fn(fn, strlen(fn))) {
		log_warn("cluster: dropped an unreadable chunk from the stream");
		cluster_js_ack(reply, "+TERM");
		return;
	}
	nd = cluster_node_find(origin);
	if (!nd || !nd->live || nd->inc != inc) {
		/* Its origin is gone: dropped.  Not heard of yet, just after
		 * this node connected: handed back for a second. */
		if (!nd && now_ms() - cluster.up_since < NODE_LOST_MS)
			cluster_js_ack(reply, "-NAK {\"delay\": 1000000000}");
		else
			cluster_js_ack(reply, "+TERM");
		return;
	}
	if (job_stopped(origin, inc, job)) {
		cluster_js_ack(reply, "+ACK");
		return;
	}
	head = (struct in_chunk){ .inc = inc, .job_key = job, .chunk_key = key, .first = first,
				  .delivered = delivered };
	snprintf(head.origin, sizeof(head.origin), "%s", origin);
	if (delivered > retries + 1) {
		/* Every run allowed has been lost with its node. */
		cluster_in_reply(&head, RES_LOST, 0, NULL, 0, NULL, 0, NULL);
		cluster_js_ack(reply, "+ACK");
		return;
	}
	mp_cur_init(&items_cur, items, items_len);
	if (disp_walk_items(&items_cur, count, &walked, &walked_len, &marks) < 0) {
		log_warn("cluster: dropped a chunk from %s whose items are unreadable", origin);
		cluster_js_ack(reply, "+TERM");
		return;
	}
	ic = xcalloc(1, sizeof(*ic));
	*ic = head;
	ic->id = ++cluster.next_key;
	ic->ack = reply ? xstrndup(reply, strlen(reply)) : NULL;
	ic->claim_ms = now_ms();
	spec = (struct job_spec){
		.is_map = true, .ordered = true, .msgid = ic->id, .chunksize = (uint32_t)count,
		.timeout_ms = (uint32_t)timeout, .retries = (uint32_t)retries,
		.admin = true,       /* pulled for idle workers only: no queue share */
		.fn = fn, .fn_len = (uint32_t)strlen(fn),
		.items = walked, .items_len = walked_len, .n_items = count, .marks = marks,
	};
	ic->next = cluster.in;
	cluster.in = ic;
	cluster.n_in++;
	if (strcmp(origin, host_cfg->node_name) != 0)
		cluster.ran_for_others++;
	cluster_in_reply(ic, RES_CLAIM, 0, NULL, 0, NULL, 0, NULL);
	ic->job = disp_submit(cluster_host->inlet_conn, &spec);
}

void cluster_handle_pull(uint64_t id, natsMsg *msg)
{
	struct pull **pp, *pl, **oldest = NULL;
	const char *status = NULL;

	/* id 0: a chunk, counted against the oldest request still owed (the
	 * list is newest first). */
	for (pp = &cluster.pulls; (pl = *pp); pp = &pl->next) {
		if (id && pl->id == id)
			break;
		if (!id && pl->got < pl->want)
			oldest = pp;
	}
	if (!id && oldest) {
		pp = oldest;
		pl = *pp;
	}
	if ((natsMsgHeader_Get(msg, "Status", &status) == NATS_OK && status) ||
	    !natsMsg_GetReply(msg) || strncmp(natsMsg_GetReply(msg), "$JS.ACK.", 8) != 0) {
		/* 404 no messages, 408 expired, 409 and the like: the
		 * request is over, its credit returns. */
		if ((status && strcmp(status, "100") == 0) || !pl)
			return;
		cluster.pull_credit -= pl->want - pl->got;
		*pp = pl->next;
		free(pl);
		return;
	}
	if (pl) {
		pl->got++;
		cluster.pull_credit--;
		if (pl->got == pl->want) {
			*pp = pl->next;
			free(pl);
		}
	}
	handle_chunk(msg);
}

/* Asks for chunks for the idle workers no chunk or pull is meant for yet,
 * from the consumers of functions some node has work out for. */
void cluster_pull_more(void)
{
	unsigned busy = pool_busy(), idle, want;
	char *cands[MAX_FNS];
	unsigned n_cands = 0;

	/* A draining node takes no more work. */
	if (!cluster_up() || host_cfg->workers == 0 || disp_has_queued() ||
	    master_state() != MASTER_RUNNING)
		return;
	idle = host_cfg->workers > busy ? host_cfg->workers - busy : 0;
	if (idle <= cluster.pull_credit)
		return;
	want = idle - cluster.pull_credit;
	for (unsigned i = 0; i < cluster.n_fns; i++) {
		const char *fn = cluster.fns[i];
		bool wanted = false;

		for (unsigned k = 0; k < cluster.n_nodes && !wanted; k++)
			wanted = cluster.nodes[k].live &&
				 cluster_strs_have(cluster.nodes[k].want, cluster.nodes[k].n_want,
						   fn, strlen(fn));
		if (wanted)
			cands[n_cands++] = cluster.fns[i];
	}
	if (!n_cands)
		return;
	/* One request per function in turn, the idle workers shared out. */
	for (unsigned k = 0; k < n_cands && want > 0; k++) {
		const char *fn = cands[(cluster.pull_rr + k) % n_cands];
		unsigned batch = (want + (n_cands - k) - 1) / (n_cands - k);
		struct pull *pl = xcalloc(1, sizeof(*pl));
		char subj[400], reply[256], dur[300], body[128];

		pl->id = ++cluster.next_key;
		pl->want = batch;
		pl->deadline = now_ms() + PULL_EXPIRES_MS + 2000;
		pl->next = cluster.pulls;
		cluster.pulls = pl;
		cluster.pull_credit += batch;
		want -= batch;
		cluster_durable_name(dur, sizeof(dur), fn);
		snprintf(subj, sizeof(subj), "$JS.API.CONSUMER.MSG.NEXT.%s.%s", cluster.stream, dur);
		snprintf(reply, sizeof(reply), "%s.pull.%" PRIu64, cluster.inbox, pl->id);
		snprintf(body, sizeof(body), "{\"batch\":%u,\"expires\":%llu}", batch,
			 (unsigned long long)PULL_EXPIRES_MS * 1000000ull);
		cluster_publish(subj, reply, body, strlen(body));
	}
	cluster.pull_rr++;
}

void cluster_inlet_tick(uint64_t now)
{
	struct pull **lp, *pl;

	/* Pull requests that will get no answer (lost with a connection). */
	for (lp = &cluster.pulls; (pl = *lp);) {
		if (now > pl->deadline) {
			cluster.pull_credit -= pl->want - pl->got;
			*lp = pl->next;
			free(pl);
		} else {
			lp = &pl->next;
		}
	}
	/* Long chunks keep their claim: an in-progress ack to the stream,
	 * and a claim to the origin, every third of the wait. */
	for (struct in_chunk *ic = cluster.in; ic; ic = ic->next) {
		if (ic->ack && !ic->stopped && now - ic->claim_ms >= host_cfg->cluster_redelivery_ms / 3) {
			ic->claim_ms = now;
			cluster_js_ack(ic->ack, "+WPI");
			cluster_in_reply(ic, RES_CLAIM, 0, NULL, 0, NULL, 0, NULL);
		}
	}
}

void cluster_in_free(struct in_chunk *ic)
{
	struct in_chunk **pp;

	for (pp = &cluster.in; *pp && *pp != ic; pp = &(*pp)->next)
		;
	if (*pp) {
		*pp = ic->next;
		cluster.n_in--;
	}
	free(ic->ack);
	free(ic);
}

/* The ops the dispatcher calls for the inlet's jobs. */
void cluster_send_chunk(uint64_t msgid, uint64_t first, const uint8_t *results, size_t rlen,
			const uint8_t *errors, size_t elen, uint8_t *owned)
{
	struct in_chunk *ic = in_find(msgid);

	if (ic && !ic->stopped)
		cluster_in_reply(ic, RES_PART, first, results, rlen, errors, elen, NULL);
	free(owned);
}

void cluster_map_done(uint64_t msgid)
{
	struct in_chunk *ic = in_find(msgid);
	static const uint8_t empty[] = { 0x90 };

	if (!ic)
		return;
	/* The last part said it all; this closes the run. */
	if (!ic->stopped)
		cluster_in_reply(ic, RES_DONE, 0, empty, 1, empty, 1, NULL);
	cluster_js_ack(ic->ack, "+ACK");
	free(ic->ack);
	ic->ack = NULL;
}

void cluster_job_failed(uint64_t msgid, int code, const char *msg)
{
	struct in_chunk *ic = in_find(msgid);

	(void)code;
	if (!ic)
		return;
	/* Failed as a whole here (this node terminates, no worker can
	 * start): another node may do better. */
	if (!ic->stopped)
		log_info("cluster: a chunk from %s failed here (%s); handing it back", ic->origin,
			 msg);
	cluster_js_ack(ic->ack, ic->stopped ? "+ACK" : "-NAK");
	free(ic->ack);
	ic->ack = NULL;
}

void cluster_inlet_job_ended(uint64_t msgid)
{
	struct in_chunk *ic = in_find(msgid);

	if (ic)
		cluster_in_free(ic);
	cluster_pull_more();
}

void cluster_stop_origin_chunks(const char *origin, uint64_t inc, bool any_job, uint64_t job)
{
	struct in_chunk *ic;

	/* Cancelling may end and free the chunk (and its list entry): start
	 * over after each; a stopped one is skipped. */
again:
	for (ic = cluster.in; ic; ic = ic->next) {
		struct job *j = ic->job;

		if (strcmp(ic->origin, origin) != 0 || ic->inc != inc || ic->stopped ||
		    (!any_job && ic->job_key != job) || !j)
			continue;
		ic->stopped = true;
		disp_kill_running(j);
		disp_cancel(j, MPOOL_E_CANCELLED, "stopped by its origin");
		goto again;
	}
}

void cluster_handle_stop(natsMsg *msg)
{
	const char *subj = natsMsg_GetSubject(msg), *origin;
	char prefix[128];
	struct mp_cur c;
	uint64_t wire, inc, job;
	uint32_t n;
	unsigned slot;

	cluster_subject(prefix, sizeof(prefix), "stop", "");
	if (strncmp(subj, prefix, strlen(prefix)) != 0)
		return;
	origin = subj + strlen(prefix);
	mp_cur_init(&c, natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg));
	if (mp_read_array(&c, &n) < 0 || n < 3 || mp_read_u64(&c, &wire) < 0 ||
	    wire != CLUSTER_WIRE || mp_read_u64(&c, &inc) < 0 || mp_read_u64(&c, &job) < 0 ||
	    strlen(origin) > CONFIG_NAME_MAX)
		return;
	slot = cluster.n_stopped++ % STOPPED_KEEP;
	snprintf(cluster.stopped[slot].origin, sizeof(cluster.stopped[slot].origin), "%s", origin);
	cluster.stopped[slot].inc = inc;
	cluster.stopped[slot].job = job;
	cluster_stop_origin_chunks(origin, inc, false, job);
}

