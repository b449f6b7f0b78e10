/* cluster_outlet: chunks of this node's shared jobs, out on the stream;
 * what their runners report becomes disp_chunk_part / done / lost, cut to
 * the items not yet forwarded (see cluster.c's top comment). */
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

/* The other live nodes' workers, and (spare) one chunk more per other node
 * with workers.  The outlet has no more out than that, so the stream holds
 * only what they will pull soon and this node's own workers take the rest
 * directly; the spare chunk lets a worker there that asks again find one
 * without waiting for this node to hear of its last result. */
static unsigned outlet_cap(bool spare)
{
	unsigned cap = 0;

	for (unsigned i = 0; i < cluster.n_nodes; i++) {
		const struct node *nd = &cluster.nodes[i];

		if (nd->live && strcmp(nd->name, host_cfg->node_name) != 0)
			cap += nd->workers + (spare && nd->workers);
	}
	return cap;
}

unsigned cluster_outlet_workers(void)
{
	return cluster.on ? outlet_cap(false) : 0;
}

bool cluster_outlet_room(void)
{
	return cluster_up() && cluster.n_out < outlet_cap(true);
}

void cluster_outlet_run(const struct chunk *ck, const char *fn, uint32_t fn_len)
{
	struct out_chunk *o = xcalloc(1, sizeof(*o));
	msgpack_sbuffer sb;
	msgpack_packer pk;
	char subj[400], reply[256];

	o->key = ++cluster.next_key;
	o->ck = *ck;
	o->orig_first = ck->first;
	o->retries = disp_job_retries(ck->job);
	snprintf(o->fn, sizeof(o->fn), "%.*s", (int)fn_len, fn);
	o->sent_ms = o->active_ms = now_ms();
	o->next = cluster.out;
	cluster.out = o;
	cluster.n_out++;
	cluster.sent++;
	if (!o->next)
		cluster_heartbeat(false);    /* nodes pull for functions with work out */
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_array(&pk, 10);
	msgpack_pack_uint64(&pk, CLUSTER_WIRE);
	mp_pack_cstr(&pk, host_cfg->node_name);
	msgpack_pack_uint64(&pk, cluster.inc);
	msgpack_pack_uint64(&pk, disp_job_id(ck->job));
	msgpack_pack_uint64(&pk, o->key);
	msgpack_pack_uint64(&pk, ck->first);
	msgpack_pack_uint64(&pk, ck->count);
	msgpack_pack_uint64(&pk, o->retries);
	msgpack_pack_uint64(&pk, disp_job_timeout(ck->job));
	msgpack_pack_bin(&pk, ck->items_len);
	msgpack_pack_bin_body(&pk, ck->items, ck->items_len);
	if (!sb.data) {
		log_err("cluster: out of memory sending a chunk");
		abort();
	}
	cluster_subject(subj, sizeof(subj), "work", o->fn);
	snprintf(reply, sizeof(reply), "%s.ack.%" PRIu64, cluster.inbox, o->key);
	cluster_publish(subj, reply, sb.data, sb.size);
	msgpack_sbuffer_destroy(&sb);
}

struct out_chunk *cluster_out_find(uint64_t key, struct out_chunk ***ret_pp)
{
	struct out_chunk **pp, *o;

	for (pp = &cluster.out; (o = *pp); pp = &o->next)
		if (o->key == key) {
			*ret_pp = pp;
			return o;
		}
	return NULL;
}

void cluster_out_remove(struct out_chunk **pp)
{
	struct out_chunk *o = *pp;

	*pp = o->next;
	cluster.n_out--;
	free(o);
}

void cluster_out_lost(struct out_chunk **pp, int code, const char *msg)
{
	struct chunk ck = (*pp)->ck;

	cluster.lost++;
	cluster_out_remove(pp);
	disp_chunk_lost(&ck, code, msg);
}

/* Shared work in flight completes or fails in bounded time: chunks the
 * stream never confirmed, chunks out while the broker stays unreachable
 * past the redelivery wait, chunks nobody took for UNTAKEN_MS, and chunks
 * nobody reported on for three redelivery waits (they rerun, within the
 * request's retries). */
void cluster_outlet_tick(uint64_t now)
{
	struct out_chunk **pp, *o;

	for (pp = &cluster.out; (o = *pp);) {
		bool down = cluster.state != CLUSTER_CONNECTED && cluster.down_since &&
			    now - cluster.down_since > host_cfg->cluster_redelivery_ms;

		if (down)
			cluster_out_lost(pp, MPOOL_E_WORKER, "the cluster's broker is unreachable");
		else if (!o->acked && now - o->sent_ms > PUBACK_MS)
			cluster_out_lost(pp, MPOOL_E_WORKER, "the cluster's stream did not take the chunk");
		else if (now - o->active_ms > (o->delivered ? 3ull * host_cfg->cluster_redelivery_ms :
					       UNTAKEN_MS(host_cfg->cluster_redelivery_ms)))
			cluster_out_lost(pp, MPOOL_E_WORKER, o->delivered ? "no node reported on the chunk" :
					 "no node took the chunk");
		else
			pp = &o->next;
	}
}

/* Errors arrive with indexes counted from the chunk's start: rewrite them
 * from base, keeping only those of items at skip and after.  Returns the
 * packed array (sb) and how many it holds. */
static uint32_t rebase_errors(const uint8_t *errs, size_t len, uint64_t base, uint64_t skip,
			      msgpack_sbuffer *sb)
{
	msgpack_sbuffer kept_sb;
	msgpack_packer pk, kpk;
	struct mp_cur c;
	uint32_t n, kept = 0;

	msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
	msgpack_sbuffer_init(&kept_sb);
	msgpack_packer_init(&kpk, &kept_sb, msgpack_sbuffer_write);
	mp_cur_init(&c, errs, len);
	if (mp_read_array(&c, &n) < 0)
		n = 0;
	while (n--) {
		const char *msg;
		uint32_t msg_len;
		int64_t index;
		int code;
		char m[512];

		if (mp_read_error(&c, &code, &msg, &msg_len, &index) < 0) {
			if (mp_skip(&c, NULL, NULL) < 0)
				break;
			continue;
		}
		if (index < 0 || (uint64_t)index < skip)
			continue;
		snprintf(m, sizeof(m), "%.*s", (int)msg_len, msg);
		mp_pack_error(&kpk, code, m, (int64_t)(base + (uint64_t)index));
		kept++;
	}
	msgpack_pack_array(&pk, kept);
	if (kept_sb.data)
		msgpack_sbuffer_write(sb, kept_sb.data, kept_sb.size);
	msgpack_sbuffer_destroy(&kept_sb);
	return kept;
}

/* A part of a run of chunk o: results for items orig_first + rel .. + n
 * of the chunk. */
static void out_results(struct out_chunk **pp, uint64_t rel, const uint8_t *res,
			uint32_t res_len, const uint8_t *errs, uint32_t errs_len)
{
	struct out_chunk *o = *pp;
	uint64_t done = o->ck.first - o->orig_first;   /* items forwarded already */
	struct mp_cur c;
	uint32_t n;
	const uint8_t *start;
	size_t len;
	msgpack_sbuffer rb, eb;
	msgpack_packer rpk;
	struct wmsg_result wr;
	uint32_t n_errors;
	uint64_t skip;

	mp_cur_init(&c, res, res_len);
	if (mp_read_array(&c, &n) < 0)
		return;
	if (rel > done) {
		/* Results of the items between were lost on the way. */
		cluster_out_lost(pp, MPOOL_E_WORKER, "results from another node were lost in transit");
		return;
	}
	if (rel + n <= done)
		return;          /* a rerun's results, forwarded already */
	skip = done - rel;
	if (mp_skip_n(&c, skip, NULL, NULL) < 0 || mp_skip_n(&c, n - skip, &start, &len) < 0)
		return;
	msgpack_sbuffer_init(&rb);
	msgpack_sbuffer_init(&eb);
	msgpack_packer_init(&rpk, &rb, msgpack_sbuffer_write);
	msgpack_pack_array(&rpk, (uint32_t)(n - skip));
	msgpack_sbuffer_write(&rb, (const char *)start, len);
	n_errors = rebase_errors(errs, errs_len, o->orig_first, rel + skip, &eb);
	if (!rb.data || !eb.data) {
		log_err("cluster: out of memory forwarding results");
		abort();
	}
	wr = (struct wmsg_result){
		.results = (const uint8_t *)rb.data, .results_len = rb.size,
		.n_results = (uint32_t)(n - skip),
		.errors = (const uint8_t *)eb.data, .errors_len = eb.size, .n_errors = n_errors,
	};
	o->active_ms = now_ms();
	if (wr.n_results >= o->ck.count) {
		struct chunk ck = o->ck;

		cluster_out_remove(pp);
		disp_chunk_done(&ck, &wr, NULL);
	} else {
		disp_chunk_part(&o->ck, &wr, NULL);
	}
	msgpack_sbuffer_destroy(&rb);
	msgpack_sbuffer_destroy(&eb);
}

void cluster_handle_res(natsMsg *msg)
{
	struct mp_cur c;
	uint64_t wire, kind, inc, job, key, delivered, first;
	char runner[CONFIG_NAME_MAX + 1];
	const uint8_t *res = NULL, *errs = NULL;
	uint32_t res_len = 0, errs_len = 0, n;
	struct out_chunk *o, **pp;
	char text[300];

	mp_cur_init(&c, natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg));
	if (mp_read_array(&c, &n) < 0 || n < 11 || mp_read_u64(&c, &wire) < 0 ||
	    wire != CLUSTER_WIRE || mp_read_u64(&c, &kind) < 0 || mp_read_u64(&c, &inc) < 0 ||
	    mp_read_u64(&c, &job) < 0 || mp_read_u64(&c, &key) < 0 ||
	    !cluster_read_name(&c, runner, sizeof(runner)) || mp_read_u64(&c, &delivered) < 0 ||
	    mp_read_u64(&c, &first) < 0)
		return;
	if (inc != cluster.inc || !(o = cluster_out_find(key, &pp)))
		return;          /* an earlier life's, or a chunk already ended */
	o->active_ms = now_ms();
	o->acked = true;
	/* A runner that gives the chunk up never ran it: the node named is
	 * the one lost before it. */
	if (delivered > o->delivered && kind != RES_LOST) {
		if (o->delivered > 0) {
			cluster.redelivered++;
			log_info("cluster: a chunk of job %" PRIu64 " that ran on %s runs again "
				 "on %s", disp_job_id(o->ck.job), o->runner, runner);
		}
		o->delivered = delivered;
		snprintf(o->runner, sizeof(o->runner), "%s", runner);
	}
	if (kind == RES_CLAIM)
		return;
	if (kind == RES_LOST) {
		const char *m = "";
		uint32_t mlen = 0;

		if (!cluster_read_bin(&c, &res, &res_len) || !cluster_read_bin(&c, &errs, &errs_len) ||
		    mp_read_str(&c, &m, &mlen) < 0)
			mlen = 0;
		/* The runner gave the chunk up: its retries are spent. */
		o->ck.attempt = o->retries;
		if (mlen)
			snprintf(text, sizeof(text), "%.*s", (int)mlen, m);
		else
			snprintf(text, sizeof(text), "node %s was lost while running the item",
				 o->runner[0] ? o->runner : "(unknown)");
		cluster_out_lost(pp, MPOOL_E_WORKER, text);
		return;
	}
	if (kind == RES_DONE) {
		/* Parts and the end travel in order: an end before the
		 * chunk's last result means results were lost in transit. */
		cluster_out_lost(pp, MPOOL_E_WORKER, "results from another node were lost in transit");
		return;
	}
	if (!cluster_read_bin(&c, &res, &res_len) || !cluster_read_bin(&c, &errs, &errs_len))
		return;
	out_results(pp, first - o->orig_first, res, res_len, errs, errs_len);
}

void cluster_kill_job(const struct job *job)
{
	struct out_chunk **pp = &cluster.out, *o;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	char subj[128];

	if (!cluster.on)
		return;
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_array(&pk, 3);
	msgpack_pack_uint64(&pk, CLUSTER_WIRE);
	msgpack_pack_uint64(&pk, cluster.inc);
	msgpack_pack_uint64(&pk, disp_job_id(job));
	cluster_subject(subj, sizeof(subj), "stop", host_cfg->node_name);
	if (sb.data)
		cluster_publish(subj, NULL, sb.data, sb.size);
	msgpack_sbuffer_destroy(&sb);
	/* The outlet's chunks of job end as a killed worker's do: soon,
	 * from the loop, not inside the dispatcher's call. */
	for (; (o = *pp); pp = &o->next)
		if (o->ck.job == job)
			o->dead = true;
	event_active(cluster.ev_wake, EV_READ, 0);
}

void cluster_job_ended(const struct job *job)
{
	/* Only while the cluster is on does the outlet have chunks out. */
	for (struct out_chunk *o = cluster.out; o; o = o->next) {
		if (o->ck.job == job) {
			cluster_kill_job(job);
			return;
		}
	}
}

