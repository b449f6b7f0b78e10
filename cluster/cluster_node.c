/* cluster_node: the node table (the heartbeats every node sends, this
 * one's among them), the functions this node announces, and what clients
 * see of the cluster: whether a request's function exists on some node,
 * the status's cluster map. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster_int.h"
#include "log.h"
#include "master.h"
#include "mem.h"
#include "mp_scan.h"
#include "pool.h"
#include "registry.h"

bool cluster_strs_have(char *const *v, unsigned n, const char *s, size_t len)
{
	for (unsigned i = 0; i < n; i++)
		if (strlen(v[i]) == len && memcmp(v[i], s, len) == 0)
			return true;
	return false;
}

bool cluster_has_fn(const char *fn, size_t len)
{
	return cluster_strs_have(cluster.fns, cluster.n_fns, fn, len);
}

struct node *cluster_node_find(const char *name)
{
	for (unsigned i = 0; i < cluster.n_nodes; i++)
		if (strcmp(cluster.nodes[i].name, name) == 0)
			return &cluster.nodes[i];
	return NULL;
}

void cluster_strs_free(char **v, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

static bool read_strs(struct mp_cur *c, char ***ret, unsigned *ret_n)
{
	uint32_t n;
	char **v;

	if (mp_read_array(c, &n) < 0 || n > MAX_FNS)
		return false;
	v = xcalloc(n ? n : 1, sizeof(*v));
	for (uint32_t i = 0; i < n; i++) {
		const char *s;
		uint32_t len;

		if (mp_read_str(c, &s, &len) < 0) {
			cluster_strs_free(v, i);
			return false;
		}
		v[i] = xstrndup(s, len);
	}
	*ret = v;
	*ret_n = n;
	return true;
}

void cluster_node_lost(struct node *nd, const char *why)
{
	nd->live = false;
	log_warn("cluster: node %s lost (%s)", nd->name, why);
	/* Its clients are gone with it: stop running its chunks. */
	cluster_stop_origin_chunks(nd->name, nd->inc, true, 0);
	master_status_changed();
}

void cluster_handle_nodes(natsMsg *msg)
{
	struct mp_cur c;
	char name[CONFIG_NAME_MAX + 1];
	uint64_t wire, inc, workers, idle, done;
	char **fns = NULL, **want = NULL;
	unsigned n_fns = 0, n_want = 0;
	bool leaving = false;
	struct node *nd;
	uint32_t n;

	mp_cur_init(&c, natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg));
	if (mp_read_array(&c, &n) < 0 || n < 9 || mp_read_u64(&c, &wire) < 0 ||
	    wire != CLUSTER_WIRE || !cluster_read_name(&c, name, sizeof(name)) ||
	    mp_read_u64(&c, &inc) < 0 || mp_read_u64(&c, &workers) < 0 ||
	    mp_read_u64(&c, &idle) < 0 || mp_read_u64(&c, &done) < 0 ||
	    !read_strs(&c, &fns, &n_fns))
		return;
	if (!read_strs(&c, &want, &n_want)) {
		cluster_strs_free(fns, n_fns);
		return;
	}
	if (mp_read_bool(&c, &leaving) < 0)
		leaving = false;
	nd = cluster_node_find(name);
	if (!nd) {
		if (cluster.n_nodes == MAX_NODES || leaving) {
			cluster_strs_free(fns, n_fns);
			cluster_strs_free(want, n_want);
			return;
		}
		nd = &cluster.nodes[cluster.n_nodes++];
		memset(nd, 0, sizeof(*nd));
		snprintf(nd->name, sizeof(nd->name), "%s", name);
	}
	if (nd->live && nd->inc != inc && strcmp(name, host_cfg->node_name) != 0)
		cluster_node_lost(nd, "it restarted");
	cluster_strs_free(nd->fns, nd->n_fns);
	cluster_strs_free(nd->want, nd->n_want);
	nd->fns = fns;
	nd->n_fns = n_fns;
	nd->want = want;
	nd->n_want = n_want;
	nd->workers = (unsigned)workers;
	nd->idle = (unsigned)idle;
	nd->tasks_done = done;
	nd->inc = inc;
	nd->last_seen = now_ms();
	if (leaving) {
		if (nd->live)
			cluster_node_lost(nd, "it left");
		return;
	}
	if (!nd->live) {
		nd->live = true;
		if (strcmp(name, host_cfg->node_name) != 0)
			log_info("cluster: node %s joined (%u worker(s))", name, nd->workers);
		master_status_changed();
		disp_schedule();
	}
}

void cluster_heartbeat(bool leaving)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;
	char subj[128];
	char *want[MAX_FNS];
	unsigned n_want = 0;
	unsigned busy = pool_busy();

	/* Functions with chunks out: other nodes pull for those. */
	for (struct out_chunk *o = cluster.out; o; o = o->next)
		if (!cluster_strs_have(want, n_want, o->fn, strlen(o->fn)) && n_want < MAX_FNS)
			want[n_want++] = o->fn;
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_array(&pk, 9);
	msgpack_pack_uint64(&pk, CLUSTER_WIRE);
	mp_pack_cstr(&pk, host_cfg->node_name);
	msgpack_pack_uint64(&pk, cluster.inc);
	msgpack_pack_uint64(&pk, host_cfg->workers);
	msgpack_pack_uint64(&pk, host_cfg->workers > busy ? host_cfg->workers - busy : 0);
	msgpack_pack_uint64(&pk, pool_tasks_done());
	msgpack_pack_array(&pk, cluster.n_fns);
	for (unsigned i = 0; i < cluster.n_fns; i++)
		mp_pack_cstr(&pk, cluster.fns[i]);
	msgpack_pack_array(&pk, n_want);
	for (unsigned i = 0; i < n_want; i++)
		mp_pack_cstr(&pk, want[i]);
	if (leaving)
		msgpack_pack_true(&pk);
	else
		msgpack_pack_false(&pk);
	cluster_subject(subj, sizeof(subj), "nodes", NULL);
	if (sb.data)
		cluster_publish(subj, NULL, sb.data, sb.size);
	msgpack_sbuffer_destroy(&sb);
}

struct fn_list {
	char *v[MAX_FNS];
	unsigned n;
};

static void add_fn(const char *name, void *arg)
{
	struct fn_list *l = arg;

	if (l->n < MAX_FNS)
		l->v[l->n++] = xstrndup(name, strlen(name));
}

static void fns_free(char **v, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		free(v[i]);
}

/* The functions this node can run, MODULE.FUNCTION; a gateway runs none.
 * Collected again before every heartbeat, not only at start: the
 * functions a module's load hook gives are known in the master only once
 * the fork server reports them, after start and again after a reload.
 * A function new to the list gets its consumer at once when the stream
 * is there (else the stream's arrival creates every listed one). */
void cluster_fns_collect(void)
{
	struct fn_list now = { .n = 0 };
	bool same;

	if (host_cfg->workers > 0)
		reg_each_fn(add_fn, &now);
	same = now.n == cluster.n_fns;
	for (unsigned i = 0; same && i < now.n; i++)
		same = strcmp(now.v[i], cluster.fns[i]) == 0;
	if (same) {
		fns_free(now.v, now.n);
		return;
	}
	for (unsigned i = 0; i < now.n; i++)
		if (cluster.stream_ok && !cluster_has_fn(now.v[i], strlen(now.v[i])))
			cluster_api_send(API_CONSUMER, now.v[i]);
	fns_free(cluster.fns, cluster.n_fns);
	memcpy(cluster.fns, now.v, now.n * sizeof(now.v[0]));
	cluster.n_fns = now.n;
	log_debug("cluster: this node announces %u function(s)", cluster.n_fns);
}

int cluster_check_fn(const char *fn, size_t len)
{
	if (reg_lookup(fn, len) && host_cfg->workers > 0)
		return 0;
	/* Others may have it, but none can be reached now. */
	if (!cluster_up())
		return -EAGAIN;
	for (unsigned i = 0; i < cluster.n_nodes; i++) {
		const struct node *nd = &cluster.nodes[i];

		if (nd->live && nd->workers > 0 && cluster_strs_have(nd->fns, nd->n_fns, fn, len))
			return 0;
	}
	return -ENOENT;
}

/* status_kv's twin: the daemon's is out of the plugin's reach. */
static void pack_kv(msgpack_packer *pk, const char *key, uint64_t v)
{
	mp_pack_cstr(pk, key);
	msgpack_pack_uint64(pk, v);
}

void cluster_pack_status(msgpack_packer *pk)
{
	static const char *const states[] = { "off", "connecting", "connected", "disconnected" };
	uint64_t now = now_ms();
	unsigned live = 0;

	if (!cluster.on) {
		msgpack_pack_map(pk, 1);
		mp_pack_cstr(pk, "broker");
		mp_pack_cstr(pk, "off");
		return;
	}
	for (unsigned i = 0; i < cluster.n_nodes; i++)
		live += cluster.nodes[i].live;
	msgpack_pack_map(pk, 10);
	mp_pack_cstr(pk, "broker");
	mp_pack_cstr(pk, states[cluster.state]);
	mp_pack_cstr(pk, "cluster");
	mp_pack_cstr(pk, host_cfg->cluster_name);
	mp_pack_cstr(pk, "node");
	mp_pack_cstr(pk, host_cfg->node_name);
	mp_pack_cstr(pk, "nodes");
	msgpack_pack_array(pk, live);
	for (unsigned i = 0; i < cluster.n_nodes; i++) {
		const struct node *nd = &cluster.nodes[i];

		if (!nd->live)
			continue;
		msgpack_pack_map(pk, 5);
		mp_pack_cstr(pk, "name");
		mp_pack_cstr(pk, nd->name);
		pack_kv(pk, "workers", nd->workers);
		pack_kv(pk, "idle", nd->idle);
		pack_kv(pk, "tasks_done", nd->tasks_done);
		pack_kv(pk, "last_seen_ms", now - nd->last_seen);
	}
	pack_kv(pk, "chunks_sent", cluster.sent);
	pack_kv(pk, "chunks_ran_for_others", cluster.ran_for_others);
	pack_kv(pk, "chunks_redelivered", cluster.redelivered);
	pack_kv(pk, "chunks_lost", cluster.lost);
	pack_kv(pk, "chunks_out", cluster.n_out);
	pack_kv(pk, "chunks_running", cluster.n_in);
}

