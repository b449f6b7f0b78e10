/* cluster: the link between this mpoold and the other nodes of its cluster,
 * through NATS JetStream (libnats, on the master's libevent loop through
 * libnats's adapter).
 *
 * To the dispatcher the link is two things it already knows:
 * - the outlet takes chunks of shared jobs like a worker: it publishes them
 *   to the cluster's work-queue stream, and turns what comes back into
 *   disp_chunk_part / disp_chunk_done / disp_chunk_lost;
 * - the inlet brings chunks in like a client: it pulls chunks from the
 *   stream only for idle workers, submits each as a local map job, and
 *   sends its results back to the node the chunk came from.
 *
 * Threads: libnats calls message and connection handlers on threads of its
 * own.  Those handlers only queue the message (or the event) and wake the
 * loop through an eventfd; everything else, dispatcher state included,
 * happens on the master's loop.  No call here blocks: JetStream's API is
 * spoken with plain requests whose replies arrive like any message.
 *
 * What travels (MessagePack; bump CLUSTER_WIRE when a shape changes), with
 * C the cluster name:
 *   mpool.C.nodes          every second, core NATS, from each node:
 *                          [wire, node, incarnation, workers, idle,
 *                           tasks_done, [functions], [functions with work
 *                           out], leaving]
 *   mpool.C.work.FN        the stream MPOOL_C (work-queue retention), one
 *                          message per chunk:
 *                          [wire, origin, incarnation, job, chunk, first,
 *                           count, retries, timeout_ms, items]
 *                          items: the chunk's items, raw, back to back (bin)
 *   mpool.C.res.NODE       core NATS, to the chunk's origin:
 *                          [wire, kind, incarnation, job, chunk, runner,
 *                           delivered, first, results, errors, message]
 *                          kind 1 claim (the runner started it, sent again
 *                          while it runs), 2 part, 3 done (the last part),
 *                          4 lost (the runner gives it up: past its retries,
 *                          or it failed as a whole); results and errors are
 *                          the worker's arrays (bin), error indexes counted
 *                          from the chunk's start
 *   mpool.C.stop.NODE      core NATS, from the origin: [wire, incarnation,
 *                          job]: the job ended; drop and kill its chunks.
 *
 * A durable pull consumer per function ("F" + the name's length + the
 * name with '.' as '_', so names cannot collide) filters the stream on
 * mpool.C.work.FN; only nodes that have loaded FN pull from it, so no node
 * is handed a chunk it cannot run.  Its ack wait is cluster-redelivery: a
 * node that dies stops acknowledging, and the chunk goes to another node;
 * a node running a long chunk sends in-progress acks.  JetStream counts the
 * deliveries, and a runner that sees a chunk delivered more often than
 * its request's retries allow gives it up (lost), so a lost node costs a
 * retry like a lost worker.
 *
 * Exactly once: the origin forwards a chunk's results by item index; a
 * part that starts before what it has forwarded already (a rerun after a
 * redelivery) is cut to what is new, and a part that would leave a gap
 * (results lost in transit) ends the chunk as lost. */
#include "cluster.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>
#include <jansson.h>
#include <msgpack.h>
#include <nats/nats.h>
/* The adapter is a header of function definitions, included in one file;
 * its callbacks ignore arguments. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"
#include <nats/adapters/libevent.h>
#pragma GCC diagnostic pop

#include "config.h"
#include "disp.h"
#include "log.h"
#include "master.h"
#include "mem.h"
#include "mp_rpc.h"
#include "mp_scan.h"
#include "pool.h"
#include "registry.h"

#include <mpool/error.h>

#define CLUSTER_WIRE 1
#define HEARTBEAT_MS 1000
#define NODE_LOST_MS 5000        /* a node silent this long is lost */
#define PULL_EXPIRES_MS 2000     /* a pull request waits this long for work */
#define PUBACK_MS 10000          /* a chunk the stream did not confirm is lost */
/* A chunk no node took this long is lost: three redelivery waits, and at
 * least the 30 s a NATS cluster may need to elect a new leader for a
 * consumer whose server died. */
#define UNTAKEN_MS(redelivery) ((redelivery) * 3ull > 30000 ? (redelivery) * 3ull : 30000)
#define MAX_NODES 256
#define MAX_FNS 256
#define STOPPED_KEEP 1024        /* recent stopped jobs, whose queued chunks are dropped */

enum qkind { Q_NODES, Q_RES, Q_STOP, Q_INBOX };
enum res_kind { RES_CLAIM = 1, RES_PART = 2, RES_DONE = 3, RES_LOST = 4 };

struct qitem {
	natsMsg *msg;
	enum qkind kind;
};

struct node {
	char name[CONFIG_NAME_MAX + 1];
	uint64_t inc;
	unsigned workers, idle;
	uint64_t tasks_done;
	uint64_t last_seen;
	bool live;
	char **fns;
	unsigned n_fns;
	char **want;
	unsigned n_want;
};

/* A chunk the outlet has out: the dispatcher's copy, and what the origin
 * knows of its runs. */
struct out_chunk {
	uint64_t key;
	struct chunk ck;
	uint64_t orig_first;
	uint32_t retries;
	char fn[256];
	bool acked;                  /* the stream has it */
	uint64_t sent_ms, active_ms; /* published; last heard of */
	char runner[CONFIG_NAME_MAX + 1];
	uint64_t delivered;
	bool dead;                   /* its job was stopped: lost at the next wake */
	struct out_chunk *next;
};

/* A chunk this node runs for a node (itself included). */
struct in_chunk {
	uint64_t id;                 /* the local job's msgid */
	struct job *job;
	char origin[CONFIG_NAME_MAX + 1];
	uint64_t inc, job_key, chunk_key, first, delivered;
	char *ack;                   /* the JetStream reply subject */
	uint64_t claim_ms;
	uint32_t count;
	bool stopped;
	struct in_chunk *next;
};

struct pull {
	uint64_t id;
	unsigned want, got;
	uint64_t deadline;
	struct pull *next;
};

struct api_req {
	uint64_t id;
	int what;                    /* API_STREAM, API_STREAM_UPDATE, API_CONSUMER */
	char fn[256];
	struct api_req *next;
};
enum { API_STREAM, API_STREAM_UPDATE, API_CONSUMER };

/* The one inlet "client": a handle the daemon's ops recognise. */
static char inlet_tag;
struct conn *const cluster_inlet_conn = (struct conn *)&inlet_tag;

static struct {
	bool on;
	natsConnection *nc;
	natsOptions *opts;
	natsSubscription *subs[4];
	char inbox[128];
	char stream[64];
	uint64_t inc;
	enum cluster_state state;
	uint64_t down_since;
	bool ever_up;
	bool stream_ok;
	uint64_t up_since;           /* connected since */
	uint64_t stream_asked;       /* when the stream was last asked for */
	unsigned consumers_ok;
	/* Handoff from libnats's threads. */
	pthread_mutex_t mu;
	struct qitem *q;
	size_t q_len, q_cap;
	atomic_int ev_conn;          /* connection events since the loop last looked */
	int efd;
	struct event *ev_wake, *ev_tick;
	/* Nodes, this one among them. */
	struct node nodes[MAX_NODES];
	unsigned n_nodes;
	/* Functions this node has, and their durable names. */
	char *fns[MAX_FNS];
	unsigned n_fns;
	unsigned pull_rr;
	/* Work. */
	struct out_chunk *out;
	unsigned n_out;
	uint64_t next_key;
	struct in_chunk *in;
	unsigned n_in;
	struct pull *pulls;
	unsigned pull_credit;
	struct api_req *api;
	struct { char origin[CONFIG_NAME_MAX + 1]; uint64_t inc, job; } stopped[STOPPED_KEEP];
	unsigned n_stopped;
	/* Counters for status. */
	uint64_t sent, ran_for_others, redelivered, lost;
	uint64_t tasks_done;         /* items run here for the cluster */
} cl = { .efd = -1 };

bool cluster_enabled(void)
{
	return cfg.cluster_url[0] != '\0';
}

bool cluster_up(void)
{
	return cl.on && cl.state == CLUSTER_CONNECTED && cl.stream_ok;
}

/* ---- handoff from libnats's threads ------------------------------------ */

static void wake(void)
{
	uint64_t one = 1;

	/* A full counter still wakes the loop: nothing to handle. */
	if (write(cl.efd, &one, sizeof(one)) < 0)
		return;
}

static void enqueue(natsMsg *msg, enum qkind kind)
{
	pthread_mutex_lock(&cl.mu);
	if (cl.q_len == cl.q_cap) {
		size_t cap = cl.q_cap ? 2 * cl.q_cap : 256;
		struct qitem *q = realloc(cl.q, cap * sizeof(*q));

		if (!q) {
			/* Dropped like a message lost in transit; the
			 * protocol survives those. */
			pthread_mutex_unlock(&cl.mu);
			natsMsg_Destroy(msg);
			return;
		}
		cl.q = q;
		cl.q_cap = cap;
	}
	cl.q[cl.q_len++] = (struct qitem){ msg, kind };
	pthread_mutex_unlock(&cl.mu);
	wake();
}

static void on_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
	(void)nc;
	(void)sub;
	enqueue(msg, (enum qkind)(intptr_t)closure);
}

static void on_conn_event(natsConnection *nc, void *closure)
{
	(void)nc;
	(void)closure;
	atomic_fetch_add(&cl.ev_conn, 1);
	wake();
}

/* ---- small helpers ---------------------------------------------------- */

static void publish(const char *subj, const void *data, size_t len)
{
	natsStatus s;

	if (!cl.nc)
		return;
	s = natsConnection_Publish(cl.nc, subj, data, (int)len);
	if (s != NATS_OK && cl.state == CLUSTER_CONNECTED)
		log_debug("cluster: cannot publish to %s: %s", subj, natsStatus_GetText(s));
}

static void publish_req(const char *subj, const char *reply, const void *data, size_t len)
{
	natsStatus s;

	if (!cl.nc)
		return;
	s = natsConnection_PublishRequest(cl.nc, subj, reply, data, (int)len);
	if (s != NATS_OK && cl.state == CLUSTER_CONNECTED)
		log_debug("cluster: cannot publish to %s: %s", subj, natsStatus_GetText(s));
}

static bool read_name(struct mp_cur *c, char *buf, size_t size)
{
	const char *s;
	uint32_t n;

	if (mp_read_str(c, &s, &n) < 0 || n == 0 || n >= size)
		return false;
	memcpy(buf, s, n);
	buf[n] = '\0';
	return true;
}

/* A bin (or str) element: its bytes, in the buffer. */
static bool read_bin(struct mp_cur *c, const uint8_t **ret, uint32_t *ret_len)
{
	const uint8_t *p = c->p;
	uint32_t n;

	if (p >= c->end)
		return false;
	if (*p == 0xc4 && c->end - p >= 2) {
		n = p[1];
		p += 2;
	} else if (*p == 0xc5 && c->end - p >= 3) {
		n = (uint32_t)p[1] << 8 | p[2];
		p += 3;
	} else if (*p == 0xc6 && c->end - p >= 5) {
		n = (uint32_t)p[1] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 8 | p[4];
		p += 5;
	} else {
		return false;
	}
	if ((size_t)(c->end - p) < n)
		return false;
	*ret = p;
	*ret_len = n;
	c->p = p + n;
	return true;
}

static void subject(char *buf, size_t size, const char *what, const char *tail)
{
	snprintf(buf, size, "mpool.%s.%s%s%s", cfg.cluster_name, what, tail ? "." : "",
		 tail ? tail : "");
}

static void durable_name(char *buf, size_t size, const char *fn)
{
	size_t n = strlen(fn);

	snprintf(buf, size, "F%zu_%s", n, fn);
	for (char *p = buf; *p; p++)
		if (*p == '.')
			*p = '_';
}

static bool has_fn(const char *fn, size_t len)
{
	for (unsigned i = 0; i < cl.n_fns; i++)
		if (strlen(cl.fns[i]) == len && memcmp(cl.fns[i], fn, len) == 0)
			return true;
	return false;
}

/* ---- nodes ------------------------------------------------------------ */

static struct node *node_find(const char *name)
{
	for (unsigned i = 0; i < cl.n_nodes; i++)
		if (strcmp(cl.nodes[i].name, name) == 0)
			return &cl.nodes[i];
	return NULL;
}

static void strs_free(char **v, unsigned n)
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
			strs_free(v, i);
			return false;
		}
		v[i] = xstrndup(s, len);
	}
	*ret = v;
	*ret_n = n;
	return true;
}

static void stop_origin_chunks(const char *origin, uint64_t inc, bool any_job, uint64_t job);

static void node_lost(struct node *nd, const char *why)
{
	nd->live = false;
	log_warn("cluster: node %s lost (%s)", nd->name, why);
	/* Its clients are gone with it: stop running its chunks. */
	stop_origin_chunks(nd->name, nd->inc, true, 0);
	master_status_changed();
}

static void handle_nodes(natsMsg *msg)
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
	    wire != CLUSTER_WIRE || !read_name(&c, name, sizeof(name)) ||
	    mp_read_u64(&c, &inc) < 0 || mp_read_u64(&c, &workers) < 0 ||
	    mp_read_u64(&c, &idle) < 0 || mp_read_u64(&c, &done) < 0 ||
	    !read_strs(&c, &fns, &n_fns))
		return;
	if (!read_strs(&c, &want, &n_want)) {
		strs_free(fns, n_fns);
		return;
	}
	if (mp_read_bool(&c, &leaving) < 0)
		leaving = false;
	nd = node_find(name);
	if (!nd) {
		if (cl.n_nodes == MAX_NODES || leaving) {
			strs_free(fns, n_fns);
			strs_free(want, n_want);
			return;
		}
		nd = &cl.nodes[cl.n_nodes++];
		memset(nd, 0, sizeof(*nd));
		snprintf(nd->name, sizeof(nd->name), "%s", name);
	}
	if (nd->live && nd->inc != inc && strcmp(name, cfg.node_name) != 0)
		node_lost(nd, "it restarted");
	strs_free(nd->fns, nd->n_fns);
	strs_free(nd->want, nd->n_want);
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
			node_lost(nd, "it left");
		return;
	}
	if (!nd->live) {
		nd->live = true;
		if (strcmp(name, cfg.node_name) != 0)
			log_info("cluster: node %s joined (%u worker(s))", name, nd->workers);
		master_status_changed();
		disp_schedule();
	}
}

static void heartbeat(bool leaving)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;
	char subj[128];
	char *want[MAX_FNS];
	unsigned n_want = 0;
	unsigned busy = pool_busy();

	/* Functions with chunks out: other nodes pull for those. */
	for (struct out_chunk *o = cl.out; o; o = o->next) {
		bool seen = false;

		for (unsigned i = 0; i < n_want; i++)
			seen |= strcmp(want[i], o->fn) == 0;
		if (!seen && n_want < MAX_FNS)
			want[n_want++] = o->fn;
	}
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_array(&pk, 9);
	msgpack_pack_uint64(&pk, CLUSTER_WIRE);
	mp_pack_cstr(&pk, cfg.node_name);
	msgpack_pack_uint64(&pk, cl.inc);
	msgpack_pack_uint64(&pk, cfg.workers);
	msgpack_pack_uint64(&pk, cfg.workers > busy ? cfg.workers - busy : 0);
	msgpack_pack_uint64(&pk, cl.tasks_done);
	msgpack_pack_array(&pk, cl.n_fns);
	for (unsigned i = 0; i < cl.n_fns; i++)
		mp_pack_cstr(&pk, cl.fns[i]);
	msgpack_pack_array(&pk, n_want);
	for (unsigned i = 0; i < n_want; i++)
		mp_pack_cstr(&pk, want[i]);
	if (leaving)
		msgpack_pack_true(&pk);
	else
		msgpack_pack_false(&pk);
	subject(subj, sizeof(subj), "nodes", NULL);
	if (sb.data)
		publish(subj, sb.data, sb.size);
	msgpack_sbuffer_destroy(&sb);
}

/* ---- JetStream's API, asynchronously ---------------------------------- */

static void api_send(int what, const char *fn)
{
	struct api_req *r = xcalloc(1, sizeof(*r));
	char subj[700], reply[256], dur[300], filter[300];
	json_t *body;
	char *text;

	r->id = ++cl.next_key;
	r->what = what;
	snprintf(r->fn, sizeof(r->fn), "%s", fn ? fn : "");
	r->next = cl.api;
	cl.api = r;
	snprintf(reply, sizeof(reply), "%s.api.%" PRIu64, cl.inbox, r->id);
	if (what == API_CONSUMER) {
		durable_name(dur, sizeof(dur), fn);
		subject(filter, sizeof(filter), "work", fn);
		snprintf(subj, sizeof(subj), "$JS.API.CONSUMER.DURABLE.CREATE.%s.%s", cl.stream,
			 dur);
		body = json_pack("{s:s, s:{s:s, s:s, s:I, s:s, s:I, s:I, s:I, s:s}}",
				 "stream_name", cl.stream, "config",
				 "durable_name", dur, "ack_policy", "explicit",
				 "ack_wait", (json_int_t)cfg.cluster_redelivery_ms * 1000000,
				 "filter_subject", filter, "max_deliver", (json_int_t)-1,
				 "max_waiting", (json_int_t)4096, "max_ack_pending", (json_int_t)65536,
				 "deliver_policy", "all");
	} else {
		subject(filter, sizeof(filter), "work", ">");
		snprintf(subj, sizeof(subj), "$JS.API.STREAM.%s.%s",
			 what == API_STREAM ? "CREATE" : "UPDATE", cl.stream);
		body = json_pack("{s:s, s:[s], s:s, s:s, s:I, s:s}", "name", cl.stream,
				 "subjects", filter, "retention", "workqueue", "storage", "file",
				 "num_replicas", (json_int_t)cfg.cluster_replicas, "discard", "old");
	}
	text = body ? json_dumps(body, JSON_COMPACT) : NULL;
	json_decref(body);
	if (!text) {
		log_err("cluster: out of memory building a JetStream request");
		return;
	}
	publish_req(subj, reply, text, strlen(text));
	free(text);
}

static void consumers_create(void)
{
	for (unsigned i = 0; i < cl.n_fns; i++)
		api_send(API_CONSUMER, cl.fns[i]);
}

static void handle_api(uint64_t id, natsMsg *msg)
{
	struct api_req **pp, *r;
	json_t *root, *err;
	json_error_t jerr;

	for (pp = &cl.api; (r = *pp) && r->id != id; pp = &r->next)
		;
	if (!r)
		return;
	*pp = r->next;
	root = json_loadb(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg), 0, &jerr);
	err = root ? json_object_get(root, "error") : NULL;
	if (!root || err) {
		const char *desc = err ? json_string_value(json_object_get(err, "description")) : NULL;
		json_int_t code = err ? json_integer_value(json_object_get(err, "err_code")) : 0;

		if (r->what == API_STREAM && code == 10058) {
			api_send(API_STREAM_UPDATE, NULL);      /* exists, other settings */
		} else if (r->what == API_CONSUMER) {
			log_err("cluster: cannot create the consumer of %s: %s", r->fn,
				desc ? desc : "no answer");
		} else {
			log_err("cluster: cannot create the stream %s: %s", cl.stream,
				desc ? desc : "no answer");
		}
	} else if (r->what == API_CONSUMER) {
		cl.consumers_ok++;
	} else {
		if (!cl.stream_ok)
			log_info("cluster: stream %s ready (%u replica(s))", cl.stream,
				 cfg.cluster_replicas);
		cl.stream_ok = true;
		consumers_create();
		disp_schedule();
	}
	json_decref(root);
	free(r);
}

/* ---- the outlet: chunks of this node's shared jobs ----------------------- */

/* Chunks the outlet may have out: what the other live nodes' workers can
 * take now, so the stream holds no more than they will pull soon, and this
 * node's own workers take the rest directly. */
static unsigned outlet_cap(void)
{
	unsigned cap = 0;

	for (unsigned i = 0; i < cl.n_nodes; i++)
		if (cl.nodes[i].live && strcmp(cl.nodes[i].name, cfg.node_name) != 0)
			cap += cl.nodes[i].workers;
	/* A gateway's own pulls count too: it runs nothing itself. */
	return cap;
}

unsigned cluster_outlet_workers(void)
{
	return cl.on ? outlet_cap() : 0;
}

bool cluster_outlet_room(void)
{
	return cluster_up() && cl.n_out < outlet_cap();
}

void cluster_outlet_run(const struct chunk *ck, const char *fn, uint32_t fn_len)
{
	struct out_chunk *o = xcalloc(1, sizeof(*o));
	msgpack_sbuffer sb;
	msgpack_packer pk;
	char subj[400], reply[256];
	bool first_out;

	o->key = ++cl.next_key;
	o->ck = *ck;
	o->orig_first = ck->first;
	o->retries = disp_job_retries(ck->job);
	snprintf(o->fn, sizeof(o->fn), "%.*s", (int)fn_len, fn);
	o->sent_ms = o->active_ms = now_ms();
	first_out = !cl.out;
	o->next = cl.out;
	cl.out = o;
	cl.n_out++;
	cl.sent++;
	if (first_out)
		heartbeat(false);    /* nodes pull for functions with work out */
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_array(&pk, 10);
	msgpack_pack_uint64(&pk, CLUSTER_WIRE);
	mp_pack_cstr(&pk, cfg.node_name);
	msgpack_pack_uint64(&pk, cl.inc);
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
	subject(subj, sizeof(subj), "work", o->fn);
	snprintf(reply, sizeof(reply), "%s.ack.%" PRIu64, cl.inbox, o->key);
	publish_req(subj, reply, sb.data, sb.size);
	msgpack_sbuffer_destroy(&sb);
}

static struct out_chunk *out_find(uint64_t key, struct out_chunk ***ret_pp)
{
	struct out_chunk **pp, *o;

	for (pp = &cl.out; (o = *pp); pp = &o->next)
		if (o->key == key) {
			if (ret_pp)
				*ret_pp = pp;
			return o;
		}
	return NULL;
}

static void out_remove(struct out_chunk **pp)
{
	struct out_chunk *o = *pp;

	*pp = o->next;
	cl.n_out--;
	free(o);
}

static void out_lost(struct out_chunk **pp, int code, const char *msg)
{
	struct chunk ck = (*pp)->ck;

	cl.lost++;
	out_remove(pp);
	disp_chunk_lost(&ck, code, msg);
}

/* Errors arrive with indexes counted from the chunk's start: rewrite them
 * from base, keeping only those of items at skip and after.  Returns the
 * packed array (sb) and how many it holds. */
static uint32_t rebase_errors(const uint8_t *errs, size_t len, uint64_t base, uint64_t skip,
			      msgpack_sbuffer *sb)
{
	msgpack_unpacked u;
	msgpack_packer pk;
	uint32_t kept = 0;
	size_t off = 0;

	msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
	msgpack_unpacked_init(&u);
	if (msgpack_unpack_next(&u, (const char *)errs, len, &off) != MSGPACK_UNPACK_SUCCESS ||
	    u.data.type != MSGPACK_OBJECT_ARRAY) {
		msgpack_unpacked_destroy(&u);
		msgpack_pack_array(&pk, 0);
		return 0;
	}
	for (uint32_t i = 0; i < u.data.via.array.size; i++) {
		const msgpack_object *e = &u.data.via.array.ptr[i];

		if (e->type != MSGPACK_OBJECT_MAP)
			continue;
		for (uint32_t k = 0; k < e->via.map.size; k++) {
			const msgpack_object *key = &e->via.map.ptr[k].key, *v = &e->via.map.ptr[k].val;

			if (key->type == MSGPACK_OBJECT_STR &&
			    mp_str_eq(key->via.str.ptr, key->via.str.size, "index") &&
			    v->type == MSGPACK_OBJECT_POSITIVE_INTEGER && v->via.u64 >= skip)
				kept++;
		}
	}
	msgpack_pack_array(&pk, kept);
	for (uint32_t i = 0; i < u.data.via.array.size; i++) {
		const msgpack_object *e = &u.data.via.array.ptr[i];
		int64_t code = MPOOL_E_WORKER, index = -1;
		char m[512] = "";

		if (e->type != MSGPACK_OBJECT_MAP)
			continue;
		for (uint32_t k = 0; k < e->via.map.size; k++) {
			const msgpack_object *key = &e->via.map.ptr[k].key, *v = &e->via.map.ptr[k].val;

			if (key->type != MSGPACK_OBJECT_STR)
				continue;
			if (mp_str_eq(key->via.str.ptr, key->via.str.size, "code") &&
			    (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER ||
			     v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER))
				code = v->via.i64;
			else if (mp_str_eq(key->via.str.ptr, key->via.str.size, "index") &&
				 v->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
				index = (int64_t)v->via.u64;
			else if (mp_str_eq(key->via.str.ptr, key->via.str.size, "message") &&
				 v->type == MSGPACK_OBJECT_STR)
				snprintf(m, sizeof(m), "%.*s", (int)v->via.str.size, v->via.str.ptr);
		}
		if (index >= 0 && (uint64_t)index >= skip)
			mp_pack_error(&pk, (int)code, m, (int64_t)(base + (uint64_t)index));
	}
	msgpack_unpacked_destroy(&u);
	return kept;
}

/* A part (or the last part) of a run of chunk o: results for items
 * orig_first + rel .. + n of the chunk. */
static void out_results(struct out_chunk **pp, bool last, uint64_t rel, const uint8_t *res,
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
	uint64_t skip;

	mp_cur_init(&c, res, res_len);
	if (mp_read_array(&c, &n) < 0)
		return;
	if (rel > done) {
		/* Results of the items between were lost on the way. */
		out_lost(pp, MPOOL_E_WORKER, "results from another node were lost in transit");
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
	memset(&wr, 0, sizeof(wr));
	wr.n_errors = rebase_errors(errs, errs_len, o->orig_first, rel + skip, &eb);
	if (!rb.data || !eb.data) {
		log_err("cluster: out of memory forwarding results");
		abort();
	}
	wr.results = (const uint8_t *)rb.data;
	wr.results_len = rb.size;
	wr.n_results = (uint32_t)(n - skip);
	wr.errors = (const uint8_t *)eb.data;
	wr.errors_len = eb.size;
	o->active_ms = now_ms();
	(void)last;
	if (wr.n_results >= o->ck.count) {
		struct chunk ck = o->ck;

		out_remove(pp);
		disp_chunk_done(&ck, &wr, NULL);
	} else {
		disp_chunk_part(&o->ck, &wr, NULL);
	}
	msgpack_sbuffer_destroy(&rb);
	msgpack_sbuffer_destroy(&eb);
}

static void handle_res(natsMsg *msg)
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
	    !read_name(&c, runner, sizeof(runner)) || mp_read_u64(&c, &delivered) < 0 ||
	    mp_read_u64(&c, &first) < 0)
		return;
	if (inc != cl.inc || !(o = out_find(key, &pp)))
		return;          /* an earlier life's, or a chunk already ended */
	(void)job;
	o->active_ms = now_ms();
	o->acked = true;
	/* A runner that gives the chunk up never ran it: the node named is
	 * the one lost before it. */
	if (delivered > o->delivered && kind != RES_LOST) {
		if (o->delivered > 0) {
			cl.redelivered++;
			log_info("cluster: a chunk of job %" PRIu64 " that ran on %s runs again "
				 "on %s", disp_job_id(o->ck.job), o->runner, runner);
		}
		o->delivered = delivered;
		snprintf(o->runner, sizeof(o->runner), "%s", runner);
	}
	if (kind == RES_CLAIM)
		return;
	if (kind == RES_LOST) {
		const char *m;
		uint32_t mlen;

		if (!read_bin(&c, &res, &res_len) || !read_bin(&c, &errs, &errs_len) ||
		    mp_read_str(&c, &m, &mlen) < 0) {
			m = "";
			mlen = 0;
		}
		/* The runner gave the chunk up: its retries are spent. */
		o->ck.attempt = o->retries;
		if (mlen)
			snprintf(text, sizeof(text), "%.*s", (int)mlen, m);
		else
			snprintf(text, sizeof(text), "node %s was lost while running the item",
				 o->runner[0] ? o->runner : "(unknown)");
		out_lost(pp, MPOOL_E_WORKER, text);
		return;
	}
	if (kind == RES_DONE) {
		/* Parts and the end travel in order: an end before the
		 * chunk's last result means results were lost in transit. */
		out_lost(pp, MPOOL_E_WORKER, "results from another node were lost in transit");
		return;
	}
	if (!read_bin(&c, &res, &res_len) || !read_bin(&c, &errs, &errs_len))
		return;
	out_results(pp, false, first - o->orig_first, res, res_len, errs, errs_len);
}

void cluster_kill_job(const struct job *job)
{
	struct out_chunk **pp = &cl.out, *o;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	char subj[128];

	if (!cl.on)
		return;
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_array(&pk, 3);
	msgpack_pack_uint64(&pk, CLUSTER_WIRE);
	msgpack_pack_uint64(&pk, cl.inc);
	msgpack_pack_uint64(&pk, disp_job_id(job));
	subject(subj, sizeof(subj), "stop", cfg.node_name);
	if (sb.data)
		publish(subj, sb.data, sb.size);
	msgpack_sbuffer_destroy(&sb);
	/* The outlet's chunks of job end as a killed worker's do: soon,
	 * from the loop, not inside the dispatcher's call. */
	for (; (o = *pp); pp = &o->next)
		if (o->ck.job == job)
			o->dead = true;
	event_active(cl.ev_wake, EV_READ, 0);
}

void cluster_job_ended(const struct job *job)
{
	bool any = false;

	if (!cl.on)
		return;
	for (struct out_chunk *o = cl.out; o; o = o->next)
		any |= o->ck.job == job;
	if (any)
		cluster_kill_job(job);
}

/* ---- the inlet: chunks this node runs for others ------------------------- */

static struct in_chunk *in_find(uint64_t id)
{
	for (struct in_chunk *i = cl.in; i; i = i->next)
		if (i->id == id)
			return i;
	return NULL;
}

static void in_reply(const struct in_chunk *ic, int kind, uint64_t first, const uint8_t *res,
		     size_t rlen, const uint8_t *errs, size_t elen, const char *m)
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
	mp_pack_cstr(&pk, cfg.node_name);
	msgpack_pack_uint64(&pk, ic->delivered);
	msgpack_pack_uint64(&pk, ic->first + first);
	msgpack_pack_bin(&pk, rlen);
	msgpack_pack_bin_body(&pk, res, rlen);
	msgpack_pack_bin(&pk, elen);
	msgpack_pack_bin_body(&pk, errs, elen);
	mp_pack_cstr(&pk, m ? m : "");
	subject(subj, sizeof(subj), "res", ic->origin);
	if (sb.data)
		publish(subj, sb.data, sb.size);
	msgpack_sbuffer_destroy(&sb);
}

static void js_ack(const char *reply, const char *what)
{
	if (reply)
		publish(reply, what, strlen(what));
}

static bool origin_stopped(const char *origin, uint64_t inc, uint64_t job)
{
	struct node *nd = node_find(origin);

	if (nd && (!nd->live || nd->inc != inc) && nd->inc >= 1 && nd->last_seen)
		return true;          /* its origin is gone, or lives again anew */
	for (unsigned i = 0; i < cl.n_stopped && i < STOPPED_KEEP; i++)
		if (cl.stopped[i].inc == inc && cl.stopped[i].job == job &&
		    strcmp(cl.stopped[i].origin, origin) == 0)
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
	struct in_chunk *ic;
	struct job_spec spec;
	struct node *nd;

	/* $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending> */
	if (reply && strncmp(reply, "$JS.ACK.", 8) == 0) {
		p = reply + 8;
		for (int dots = 0; *p && dots < 2; p++)
			dots += *p == '.';
		delivered = strtoull(p, NULL, 10);
	}
	subject(prefix, sizeof(prefix), "work", "");
	if (strncmp(fn, prefix, strlen(prefix)) != 0)
		return;
	fn += strlen(prefix);
	mp_cur_init(&c, natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg));
	if (mp_read_array(&c, &n) < 0 || n < 10 || mp_read_u64(&c, &wire) < 0 ||
	    wire != CLUSTER_WIRE || !read_name(&c, origin, sizeof(origin)) ||
	    mp_read_u64(&c, &inc) < 0 || mp_read_u64(&c, &job) < 0 ||
	    mp_read_u64(&c, &key) < 0 || mp_read_u64(&c, &first) < 0 ||
	    mp_read_u64(&c, &count) < 0 || mp_read_u64(&c, &retries) < 0 ||
	    mp_read_u64(&c, &timeout) < 0 || !read_bin(&c, &items, &items_len) ||
	    count == 0 || count > UINT32_MAX || !has_fn(fn, strlen(fn))) {
		log_warn("cluster: dropped an unreadable chunk from the stream");
		js_ack(reply, "+TERM");
		return;
	}
	nd = node_find(origin);
	if (!nd || !nd->live || nd->inc != inc) {
		/* Its origin is gone: dropped.  Not heard of yet, just after
		 * this node connected: handed back for a second. */
		if (!nd && now_ms() - cl.up_since < NODE_LOST_MS)
			js_ack(reply, "-NAK {\"delay\": 1000000000}");
		else
			js_ack(reply, "+TERM");
		return;
	}
	ic = xcalloc(1, sizeof(*ic));
	ic->id = ++cl.next_key;
	snprintf(ic->origin, sizeof(ic->origin), "%s", origin);
	ic->inc = inc;
	ic->job_key = job;
	ic->chunk_key = key;
	ic->first = first;
	ic->delivered = delivered;
	ic->ack = reply ? xstrndup(reply, strlen(reply)) : NULL;
	ic->claim_ms = now_ms();
	ic->count = (uint32_t)count;
	if (origin_stopped(origin, inc, job)) {
		js_ack(reply, "+ACK");
		free(ic->ack);
		free(ic);
		return;
	}
	if (delivered > retries + 1) {
		/* Every run allowed has been lost with its node. */
		in_reply(ic, RES_LOST, 0, NULL, 0, NULL, 0, NULL);
		js_ack(reply, "+ACK");
		free(ic->ack);
		free(ic);
		return;
	}
	mp_cur_init(&items_cur, items, items_len);
	if (disp_walk_items(&items_cur, count, &walked, &walked_len, &marks) < 0) {
		log_warn("cluster: dropped a chunk from %s whose items are unreadable", origin);
		js_ack(reply, "+TERM");
		free(ic->ack);
		free(ic);
		return;
	}
	memset(&spec, 0, sizeof(spec));
	spec.is_map = true;
	spec.ordered = true;
	spec.msgid = ic->id;
	spec.chunksize = (uint32_t)count;
	spec.timeout_ms = (uint32_t)timeout;
	spec.retries = (uint32_t)retries;
	spec.admin = true;       /* pulled for idle workers only: no queue share */
	spec.fn = fn;
	spec.fn_len = (uint32_t)strlen(fn);
	spec.items = walked;
	spec.items_len = walked_len;
	spec.n_items = count;
	spec.marks = marks;
	ic->next = cl.in;
	cl.in = ic;
	cl.n_in++;
	if (strcmp(origin, cfg.node_name) != 0)
		cl.ran_for_others++;
	in_reply(ic, RES_CLAIM, 0, NULL, 0, NULL, 0, NULL);
	ic->job = disp_submit(cluster_inlet_conn, &spec);
}

static void handle_pull(uint64_t id, natsMsg *msg)
{
	struct pull **pp, *pl;
	const char *status = NULL;

	struct pull **oldest = NULL;

	/* id 0: a chunk, counted against the oldest request still owed (the
	 * list is newest first). */
	for (pp = &cl.pulls; (pl = *pp); pp = &pl->next) {
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
		if (!status)
			status = "";
		/* 404 no messages, 408 expired, 409 and the like: the
		 * request is over, its credit returns. */
		if (strcmp(status, "100") == 0 || !pl)
			return;
		cl.pull_credit -= pl->want - pl->got;
		*pp = pl->next;
		free(pl);
		return;
	}
	if (pl) {
		pl->got++;
		cl.pull_credit--;
		if (pl->got == pl->want) {
			*pp = pl->next;
			free(pl);
		}
	}
	handle_chunk(msg);
}

/* Asks for chunks for the idle workers no chunk or pull is meant for yet,
 * from the consumers of functions some node has work out for. */
static void pull_more(void)
{
	unsigned busy = pool_busy(), idle, want;
	char *cands[MAX_FNS];
	unsigned n_cands = 0;

	/* A draining node takes no more work. */
	if (!cluster_up() || cfg.workers == 0 || disp_has_queued() ||
	    master_state() != MASTER_RUNNING)
		return;
	idle = cfg.workers > busy ? cfg.workers - busy : 0;
	if (idle <= cl.pull_credit)
		return;
	want = idle - cl.pull_credit;
	for (unsigned i = 0; i < cl.n_fns; i++) {
		bool wanted = false;

		for (unsigned k = 0; k < cl.n_nodes && !wanted; k++) {
			if (!cl.nodes[k].live)
				continue;
			for (unsigned j = 0; j < cl.nodes[k].n_want && !wanted; j++)
				wanted = strcmp(cl.nodes[k].want[j], cl.fns[i]) == 0;
		}
		if (wanted)
			cands[n_cands++] = cl.fns[i];
	}
	if (!n_cands)
		return;
	/* One request per function in turn, the idle workers shared out. */
	for (unsigned k = 0; k < n_cands && want > 0; k++) {
		const char *fn = cands[(cl.pull_rr + k) % n_cands];
		unsigned batch = (want + (n_cands - k) - 1) / (n_cands - k);
		struct pull *pl = xcalloc(1, sizeof(*pl));
		char subj[400], reply[256], dur[300], body[128];

		pl->id = ++cl.next_key;
		pl->want = batch;
		pl->deadline = now_ms() + PULL_EXPIRES_MS + 2000;
		pl->next = cl.pulls;
		cl.pulls = pl;
		cl.pull_credit += batch;
		want -= batch;
		durable_name(dur, sizeof(dur), fn);
		snprintf(subj, sizeof(subj), "$JS.API.CONSUMER.MSG.NEXT.%s.%s", cl.stream, dur);
		snprintf(reply, sizeof(reply), "%s.pull.%" PRIu64, cl.inbox, pl->id);
		snprintf(body, sizeof(body), "{\"batch\":%u,\"expires\":%llu}", batch,
			 (unsigned long long)PULL_EXPIRES_MS * 1000000ull);
		publish_req(subj, reply, body, strlen(body));
	}
	cl.pull_rr++;
}

static void in_free(struct in_chunk *ic)
{
	struct in_chunk **pp;

	for (pp = &cl.in; *pp && *pp != ic; pp = &(*pp)->next)
		;
	if (*pp) {
		*pp = ic->next;
		cl.n_in--;
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
		in_reply(ic, RES_PART, first, results, rlen, errors, elen, NULL);
	free(owned);
}

void cluster_map_done(uint64_t msgid)
{
	struct in_chunk *ic = in_find(msgid);
	static const uint8_t empty[] = { 0x90 };

	if (!ic)
		return;
	if (!ic->stopped) {
		/* The last part said it all; this closes the run. */
		in_reply(ic, RES_DONE, 0, empty, 1, empty, 1, NULL);
		cl.tasks_done += ic->count;
	}
	js_ack(ic->ack, "+ACK");
	free(ic->ack);
	ic->ack = NULL;
}

void cluster_job_failed(uint64_t msgid, int code, const char *msg)
{
	struct in_chunk *ic = in_find(msgid);

	if (!ic)
		return;
	if (ic->stopped) {
		js_ack(ic->ack, "+ACK");
	} else {
		/* Failed as a whole here (this node terminates, no worker
		 * can start): another node may do better. */
		log_info("cluster: a chunk from %s failed here (%s); handing it back", ic->origin,
			 msg);
		(void)code;
		js_ack(ic->ack, "-NAK");
	}
	free(ic->ack);
	ic->ack = NULL;
}

void cluster_inlet_job_ended(uint64_t msgid)
{
	struct in_chunk *ic = in_find(msgid);

	if (ic)
		in_free(ic);
	pull_more();
}

static void stop_origin_chunks(const char *origin, uint64_t inc, bool any_job, uint64_t job)
{
	struct in_chunk *ic;

	/* Cancelling may end and free the chunk (and its list entry): start
	 * over after each; a stopped one is skipped. */
again:
	for (ic = cl.in; ic; ic = ic->next) {
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

static void handle_stop(natsMsg *msg)
{
	const char *subj = natsMsg_GetSubject(msg), *origin;
	char prefix[128];
	struct mp_cur c;
	uint64_t wire, inc, job;
	uint32_t n;

	subject(prefix, sizeof(prefix), "stop", "");
	if (strncmp(subj, prefix, strlen(prefix)) != 0)
		return;
	origin = subj + strlen(prefix);
	mp_cur_init(&c, natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg));
	if (mp_read_array(&c, &n) < 0 || n < 3 || mp_read_u64(&c, &wire) < 0 ||
	    wire != CLUSTER_WIRE || mp_read_u64(&c, &inc) < 0 || mp_read_u64(&c, &job) < 0 ||
	    strlen(origin) > CONFIG_NAME_MAX)
		return;
	{
		unsigned slot = cl.n_stopped++ % STOPPED_KEEP;

		snprintf(cl.stopped[slot].origin, sizeof(cl.stopped[slot].origin), "%s", origin);
		cl.stopped[slot].inc = inc;
		cl.stopped[slot].job = job;
	}
	stop_origin_chunks(origin, inc, false, job);
}

/* ---- the connection --------------------------------------------------- */

static void on_connected(void)
{
	char subj[200];

	cl.state = CLUSTER_CONNECTED;
	if (cl.ever_up)
		log_info("cluster: broker connection regained");
	else
		log_info("cluster: connected to the broker as node %s of cluster %s",
			 cfg.node_name, cfg.cluster_name);
	cl.ever_up = true;
	cl.down_since = 0;
	cl.up_since = now_ms();
	/* Subscriptions survive reconnection; the stream is (re)made in
	 * case the servers lost it. */
	if (!cl.subs[0]) {
		const struct { const char *what, *tail; enum qkind kind; } subs[] = {
			{ "nodes", NULL, Q_NODES }, { "res", cfg.node_name, Q_RES },
			{ "stop", "*", Q_STOP }, { NULL, NULL, Q_INBOX },
		};

		for (unsigned i = 0; i < 4; i++) {
			natsStatus s;

			if (subs[i].what)
				subject(subj, sizeof(subj), subs[i].what, subs[i].tail);
			else
				snprintf(subj, sizeof(subj), "%s.>", cl.inbox);
			s = natsConnection_Subscribe(&cl.subs[i], cl.nc, subj, on_msg,
						     (void *)(intptr_t)subs[i].kind);
			if (s != NATS_OK) {
				log_err("cluster: cannot subscribe to %s: %s", subj,
					natsStatus_GetText(s));
				cl.subs[i] = NULL;
			} else {
				natsSubscription_SetPendingLimits(cl.subs[i], -1, -1);
			}
		}
	}
	cl.stream_asked = now_ms();
	api_send(API_STREAM, NULL);
	heartbeat(false);
	master_status_changed();
}

static void on_disconnected(void)
{
	cl.state = CLUSTER_DISCONNECTED;
	cl.down_since = now_ms();
	cl.stream_ok = false;
	/* Pull requests die with the connection. */
	while (cl.pulls) {
		struct pull *pl = cl.pulls;

		cl.pulls = pl->next;
		free(pl);
	}
	cl.pull_credit = 0;
	log_warn("cluster: broker connection lost; local work goes on, shared work waits "
		 "for it");
	master_status_changed();
}

static void check_connection(void)
{
	natsConnStatus st;

	if (!cl.nc)
		return;
	st = natsConnection_Status(cl.nc);
	if (st == NATS_CONN_STATUS_CONNECTED && cl.state != CLUSTER_CONNECTED)
		on_connected();
	else if (st != NATS_CONN_STATUS_CONNECTED && cl.state == CLUSTER_CONNECTED)
		on_disconnected();
}

/* Shutdown: what libnats still queued is dropped, not handled. */
static void drop_queue(void)
{
	pthread_mutex_lock(&cl.mu);
	for (size_t i = 0; i < cl.q_len; i++)
		natsMsg_Destroy(cl.q[i].msg);
	free(cl.q);
	cl.q = NULL;
	cl.q_len = cl.q_cap = 0;
	pthread_mutex_unlock(&cl.mu);
}

static void drain_queue(void)
{
	struct qitem *q;
	size_t n;

	pthread_mutex_lock(&cl.mu);
	q = cl.q;
	n = cl.q_len;
	cl.q = NULL;
	cl.q_len = cl.q_cap = 0;
	pthread_mutex_unlock(&cl.mu);
	for (size_t i = 0; i < n; i++) {
		natsMsg *msg = q[i].msg;

		switch (q[i].kind) {
		case Q_NODES:
			handle_nodes(msg);
			break;
		case Q_RES:
			handle_res(msg);
			break;
		case Q_STOP:
			handle_stop(msg);
			break;
		case Q_INBOX: {
			const char *subj = natsMsg_GetSubject(msg);
			uint64_t id;

			/* A pulled chunk keeps its own subject; only the
			 * server's status answers carry the request's. */
			if (strncmp(subj, cl.inbox, strlen(cl.inbox)) != 0) {
				handle_pull(0, msg);
				break;
			}
			subj += strlen(cl.inbox);
			if (strncmp(subj, ".api.", 5) == 0) {
				handle_api(strtoull(subj + 5, NULL, 10), msg);
			} else if (strncmp(subj, ".pull.", 6) == 0) {
				handle_pull(strtoull(subj + 6, NULL, 10), msg);
			} else if (strncmp(subj, ".ack.", 5) == 0) {
				struct out_chunk *o, **pp;

				id = strtoull(subj + 5, NULL, 10);
				o = out_find(id, &pp);
				if (o && strstr(natsMsg_GetData(msg) ? natsMsg_GetData(msg) : "",
						"\"error\""))
					out_lost(pp, MPOOL_E_WORKER, "the cluster's stream refused "
						 "the chunk");
				else if (o)
					o->acked = true;
			}
			break;
		}
		}
		natsMsg_Destroy(msg);
	}
	free(q);
}

static void wake_cb(evutil_socket_t fd, short what, void *arg)
{
	uint64_t v;

	(void)what;
	(void)arg;
	if (read(fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
		log_debug("cluster: eventfd read: %s", strerror(errno));
	if (atomic_exchange(&cl.ev_conn, 0))
		check_connection();
	for (struct out_chunk **pp = &cl.out, *o; (o = *pp);) {
		if (o->dead)
			out_lost(pp, MPOOL_E_CANCELLED, "cancelled");
		else
			pp = &o->next;
	}
	drain_queue();
	pull_more();
	disp_schedule();
}

static void fns_collect(void);

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
	uint64_t now = now_ms();
	struct out_chunk **pp, *o;
	struct pull **lp, *pl;

	(void)fd;
	(void)what;
	(void)arg;
	check_connection();
	fns_collect();
	if (cl.state == CLUSTER_CONNECTED)
		heartbeat(false);
	/* A NATS cluster still electing its leaders refuses the stream for a
	 * while: ask again every few seconds until it is there. */
	if (cl.state == CLUSTER_CONNECTED && !cl.stream_ok && now - cl.stream_asked >= 3000) {
		cl.stream_asked = now;
		api_send(API_STREAM, NULL);
	}
	for (unsigned i = 0; i < cl.n_nodes; i++)
		if (cl.nodes[i].live && now - cl.nodes[i].last_seen > NODE_LOST_MS &&
		    strcmp(cl.nodes[i].name, cfg.node_name) != 0)
			node_lost(&cl.nodes[i], "silent for 5 s");
	/* Pull requests that will get no answer (lost with a connection). */
	for (lp = &cl.pulls; (pl = *lp);) {
		if (now > pl->deadline) {
			cl.pull_credit -= pl->want - pl->got;
			*lp = pl->next;
			free(pl);
		} else {
			lp = &pl->next;
		}
	}
	/* Shared work in flight completes or fails in bounded time: chunks
	 * the stream never confirmed, chunks out while the broker stays
	 * unreachable past the redelivery wait, chunks nobody took for
	 * UNTAKEN_MS, and chunks nobody reported on for three redelivery
	 * waits (they rerun, within the request's retries). */
	for (pp = &cl.out; (o = *pp);) {
		bool down = cl.state != CLUSTER_CONNECTED && cl.down_since &&
			    now - cl.down_since > cfg.cluster_redelivery_ms;

		if (down)
			out_lost(pp, MPOOL_E_WORKER, "the cluster's broker is unreachable");
		else if (!o->acked && now - o->sent_ms > PUBACK_MS)
			out_lost(pp, MPOOL_E_WORKER, "the cluster's stream did not take the chunk");
		else if (now - o->active_ms > (o->delivered ? 3ull * cfg.cluster_redelivery_ms :
					       UNTAKEN_MS(cfg.cluster_redelivery_ms)))
			out_lost(pp, MPOOL_E_WORKER, o->delivered ? "no node reported on the chunk" :
				 "no node took the chunk");
		else
			pp = &o->next;
	}
	/* A gateway cannot run what waits for the broker: past the
	 * redelivery wait without it, the queued work fails. */
	if (cfg.workers == 0 && cl.state != CLUSTER_CONNECTED && cl.down_since &&
	    now - cl.down_since > cfg.cluster_redelivery_ms && disp_has_queued())
		disp_fail_queued(MPOOL_E_UNAVAILABLE, "the cluster's broker is unreachable");
	/* Long chunks keep their claim: an in-progress ack to the stream,
	 * and a claim to the origin, every third of the wait. */
	for (struct in_chunk *ic = cl.in; ic; ic = ic->next) {
		if (ic->ack && !ic->stopped && now - ic->claim_ms >= cfg.cluster_redelivery_ms / 3) {
			ic->claim_ms = now;
			js_ack(ic->ack, "+WPI");
			in_reply(ic, RES_CLAIM, 0, NULL, 0, NULL, 0, NULL);
		}
	}
	pull_more();
	disp_schedule();
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

static bool fn_listed(char *const *v, unsigned n, const char *fn)
{
	for (unsigned i = 0; i < n; i++)
		if (strcmp(v[i], fn) == 0)
			return true;
	return false;
}

/* The functions this node can run, MODULE.FUNCTION; a gateway runs none.
 * Collected again before every heartbeat, not only at start: the
 * functions a module's load hook gives are known in the master only once
 * the fork server reports them, after start and again after a reload.
 * A function new to the list gets its consumer at once when the stream
 * is there (else the stream's arrival creates every listed one). */
static void fns_collect(void)
{
	struct fn_list now = { .n = 0 };
	bool same;

	if (cfg.workers > 0)
		reg_each_fn(add_fn, &now);
	same = now.n == cl.n_fns;
	for (unsigned i = 0; same && i < now.n; i++)
		same = strcmp(now.v[i], cl.fns[i]) == 0;
	if (same) {
		fns_free(now.v, now.n);
		return;
	}
	for (unsigned i = 0; i < now.n; i++)
		if (cl.stream_ok && !fn_listed(cl.fns, cl.n_fns, now.v[i]))
			api_send(API_CONSUMER, now.v[i]);
	fns_free(cl.fns, cl.n_fns);
	memcpy(cl.fns, now.v, now.n * sizeof(now.v[0]));
	cl.n_fns = now.n;
	log_debug("cluster: this node announces %u function(s)", cl.n_fns);
}

void cluster_preinit(void)
{
	if (!cluster_enabled())
		return;
	/* libnats touches the loop's events from its threads. */
	natsLibevent_Init();
}

int cluster_start(struct event_base *base)
{
	struct timeval tick = { HEARTBEAT_MS / 1000, (HEARTBEAT_MS % 1000) * 1000 };
	const char *servers[32];
	char urls[sizeof(cfg.cluster_url)], *save = NULL;
	int n_servers = 0;
	natsStatus s;
	char user[256], pass[256], why[512] = "";
	uint64_t r[2];

	if (!cluster_enabled())
		return 0;
	pthread_mutex_init(&cl.mu, NULL);
	if (getentropy(r, sizeof(r)) < 0)
		r[0] = (uint64_t)getpid() << 32 ^ now_ms();
	cl.inc = r[0] ? r[0] : 1;
	snprintf(cl.inbox, sizeof(cl.inbox), "_INBOX.mpool.%s.%016" PRIx64, cfg.node_name,
		 cl.inc);
	snprintf(cl.stream, sizeof(cl.stream), "MPOOL_%s", cfg.cluster_name);
	fns_collect();
	cl.efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (cl.efd < 0)
		return -errno;
	cl.ev_wake = event_new(base, cl.efd, EV_READ | EV_PERSIST, wake_cb, NULL);
	cl.ev_tick = event_new(base, -1, EV_PERSIST, tick_cb, NULL);
	if (!cl.ev_wake || !cl.ev_tick || event_add(cl.ev_wake, NULL) < 0 ||
	    event_add(cl.ev_tick, &tick) < 0)
		return -ENOMEM;
	snprintf(urls, sizeof(urls), "%s", cfg.cluster_url);
	for (char *u = strtok_r(urls, ", ", &save); u && n_servers < 32;
	     u = strtok_r(NULL, ", ", &save))
		servers[n_servers++] = u;
	/* Threads for libnats's own work: few, the loop does the I/O. */
	s = nats_Open(-1);
	if (s == NATS_OK)
		s = natsOptions_Create(&cl.opts);
	if (s == NATS_OK)
		s = natsOptions_SetServers(cl.opts, servers, n_servers);
	if (s == NATS_OK)
		s = natsOptions_SetName(cl.opts, cfg.node_name);
	if (s == NATS_OK)
		s = natsOptions_SetEventLoop(cl.opts, base, natsLibevent_Attach,
					     natsLibevent_Read, natsLibevent_Write,
					     natsLibevent_Detach);
	if (s == NATS_OK)
		s = natsOptions_SetTimeout(cl.opts, 2000);
	if (s == NATS_OK)
		s = natsOptions_SetMaxReconnect(cl.opts, -1);
	if (s == NATS_OK)
		s = natsOptions_SetReconnectWait(cl.opts, 1000);
	if (s == NATS_OK)
		s = natsOptions_SetDisconnectedCB(cl.opts, on_conn_event, NULL);
	if (s == NATS_OK)
		s = natsOptions_SetReconnectedCB(cl.opts, on_conn_event, NULL);
	if (s == NATS_OK)
		s = natsOptions_SetClosedCB(cl.opts, on_conn_event, NULL);
	if (s == NATS_OK && cfg.cluster_creds[0])
		s = natsOptions_SetUserCredentialsFromFiles(cl.opts, cfg.cluster_creds, NULL);
	if (s == NATS_OK && cfg.cluster_user_file[0]) {
		if (cluster_read_user_file(cfg.cluster_user_file, user, sizeof(user), pass,
					   sizeof(pass), why, sizeof(why)) < 0) {
			log_err("%s", why);
			return -EINVAL;
		}
		s = natsOptions_SetUserInfo(cl.opts, user, pass);
		explicit_bzero(pass, sizeof(pass));
	}
	if (s == NATS_OK && (cfg.cluster_ca[0] || cfg.cluster_cert[0] ||
			     strstr(cfg.cluster_url, "tls://")))
		s = natsOptions_SetSecure(cl.opts, true);
	if (s == NATS_OK && cfg.cluster_ca[0])
		s = natsOptions_LoadCATrustedCertificates(cl.opts, cfg.cluster_ca);
	if (s == NATS_OK && cfg.cluster_cert[0])
		s = natsOptions_LoadCertificatesChain(cl.opts, cfg.cluster_cert, cfg.cluster_key);
	if (s != NATS_OK) {
		log_err("cluster: cannot set up the broker connection: %s (%s)",
			natsStatus_GetText(s), nats_GetLastError(NULL));
		return -EINVAL;
	}
	cl.on = true;
	cl.state = CLUSTER_CONNECTING;
	/* Connecting waits for the first server to answer (at most the
	 * timeout); an unreachable broker is retried in the background while
	 * mpoold serves local work. */
	s = natsConnection_Connect(&cl.nc, cl.opts);
	if (s != NATS_OK) {
		const char *last = nats_GetLastError(NULL);

		/* The first try says why (no server, a certificate that does
		 * not verify, a wrong password); the retries in the
		 * background do not. */
		snprintf(why, sizeof(why), "%s", last && last[0] ? last : natsStatus_GetText(s));
		cl.nc = NULL;
		s = natsOptions_SetRetryOnFailedConnect(cl.opts, true, on_conn_event, NULL);
		if (s == NATS_OK)
			s = natsConnection_Connect(&cl.nc, cl.opts);
	}
	if (s == NATS_OK && !why[0]) {
		on_connected();
	} else if (s == NATS_OK || s == NATS_NOT_YET_CONNECTED) {
		cl.down_since = now_ms();
		log_warn("cluster: broker unreachable at %s: %s; serving local work and retrying",
			 cfg.cluster_url, why);
		if (s == NATS_OK)
			on_connected();
	} else {
		log_err("cluster: cannot connect to the broker: %s (%s)", natsStatus_GetText(s),
			nats_GetLastError(NULL));
		cl.nc = NULL;
		cl.state = CLUSTER_DISCONNECTED;
		cl.down_since = now_ms();
	}
	return 0;
}

void cluster_stop(void)
{
	struct out_chunk **pp = &cl.out;

	if (!cl.on)
		return;
	if (cl.state == CLUSTER_CONNECTED) {
		heartbeat(true);
		natsConnection_FlushTimeout(cl.nc, 500);
	}
	while (*pp)
		out_remove(pp);
	for (unsigned i = 0; i < 4; i++)
		natsSubscription_Destroy(cl.subs[i]);
	natsConnection_Destroy(cl.nc);
	natsOptions_Destroy(cl.opts);
	cl.nc = NULL;
	event_free(cl.ev_wake);
	event_free(cl.ev_tick);
	close(cl.efd);
	drop_queue();
	for (unsigned i = 0; i < cl.n_nodes; i++) {
		strs_free(cl.nodes[i].fns, cl.nodes[i].n_fns);
		strs_free(cl.nodes[i].want, cl.nodes[i].n_want);
	}
	for (unsigned i = 0; i < cl.n_fns; i++)
		free(cl.fns[i]);
	while (cl.pulls) {
		struct pull *pl = cl.pulls;

		cl.pulls = pl->next;
		free(pl);
	}
	while (cl.api) {
		struct api_req *r = cl.api;

		cl.api = r->next;
		free(r);
	}
	while (cl.in)
		in_free(cl.in);
	cl.on = false;
	nats_CloseAndWait(2000);
}

/* ---- what clients see --------------------------------------------------- */

bool cluster_share(const struct job_spec *spec)
{
	if (!cluster_enabled())
		return false;
	if (cfg.workers == 0)
		return true;
	if (spec->spread)
		return spec->spread > 0;
	return cfg.cluster_spread == CONFIG_SPREAD_ALL ||
	       (cfg.cluster_spread == CONFIG_SPREAD_MAPS && spec->is_map);
}

int cluster_check_fn(const char *fn, size_t len)
{
	if (reg_lookup(fn, len) && cfg.workers > 0)
		return 0;
	/* Others may have it, but none can be reached now. */
	if (!cluster_up())
		return -EAGAIN;
	for (unsigned i = 0; i < cl.n_nodes; i++) {
		if (!cl.nodes[i].live)
			continue;
		for (unsigned k = 0; k < cl.nodes[i].n_fns; k++)
			if (strlen(cl.nodes[i].fns[k]) == len &&
			    memcmp(cl.nodes[i].fns[k], fn, len) == 0 && cl.nodes[i].workers > 0)
				return 0;
	}
	return -ENOENT;
}

const char *cluster_state_name(void)
{
	static const char *names[] = { "off", "connecting", "connected", "disconnected" };

	return names[cl.on ? cl.state : CLUSTER_OFF];
}

void cluster_pack_status(msgpack_packer *pk)
{
	uint64_t now = now_ms();
	unsigned live = 0;

	if (!cl.on) {
		msgpack_pack_map(pk, 1);
		mp_pack_cstr(pk, "broker");
		mp_pack_cstr(pk, "off");
		return;
	}
	for (unsigned i = 0; i < cl.n_nodes; i++)
		live += cl.nodes[i].live;
	msgpack_pack_map(pk, 10);
	mp_pack_cstr(pk, "broker");
	mp_pack_cstr(pk, cluster_state_name());
	mp_pack_cstr(pk, "cluster");
	mp_pack_cstr(pk, cfg.cluster_name);
	mp_pack_cstr(pk, "node");
	mp_pack_cstr(pk, cfg.node_name);
	mp_pack_cstr(pk, "nodes");
	msgpack_pack_array(pk, live);
	for (unsigned i = 0; i < cl.n_nodes; i++) {
		const struct node *nd = &cl.nodes[i];

		if (!nd->live)
			continue;
		msgpack_pack_map(pk, 5);
		mp_pack_cstr(pk, "name");
		mp_pack_cstr(pk, nd->name);
		mp_pack_cstr(pk, "workers");
		msgpack_pack_uint64(pk, nd->workers);
		mp_pack_cstr(pk, "idle");
		msgpack_pack_uint64(pk, nd->idle);
		mp_pack_cstr(pk, "tasks_done");
		msgpack_pack_uint64(pk, nd->tasks_done);
		mp_pack_cstr(pk, "last_seen_ms");
		msgpack_pack_uint64(pk, now - nd->last_seen);
	}
	mp_pack_cstr(pk, "chunks_sent");
	msgpack_pack_uint64(pk, cl.sent);
	mp_pack_cstr(pk, "chunks_ran_for_others");
	msgpack_pack_uint64(pk, cl.ran_for_others);
	mp_pack_cstr(pk, "chunks_redelivered");
	msgpack_pack_uint64(pk, cl.redelivered);
	mp_pack_cstr(pk, "chunks_lost");
	msgpack_pack_uint64(pk, cl.lost);
	mp_pack_cstr(pk, "chunks_out");
	msgpack_pack_uint64(pk, cl.n_out);
	mp_pack_cstr(pk, "chunks_running");
	msgpack_pack_uint64(pk, cl.n_in);
}
