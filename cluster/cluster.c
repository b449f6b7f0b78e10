/* cluster: the link between this mpoold and the other nodes of its cluster,
 * through NATS JetStream (libnats, on the master's libevent loop through
 * libnats's adapter).  Built with the other NATS-using files into the
 * plugin mpool-cluster.so, whose table (cluster_plugin.h) ends this file.
 *
 * To the dispatcher the link is two things it already knows: an outlet
 * that takes chunks like a worker (cluster_outlet.c) and an inlet that
 * brings chunks in like a client (cluster_inlet.c).
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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

/* The adapter is a header of function definitions, included in one file;
 * its callbacks ignore arguments. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"
#include <nats/adapters/libevent.h>
#pragma GCC diagnostic pop

#include <mpool/error.h>
#include "cluster_int.h"
#include "log.h"
#include "master.h"

struct cluster cluster = { .efd = -1 };

bool cluster_up(void)
{
	return cluster.on && cluster.state == CLUSTER_CONNECTED && cluster.stream_ok;
}

/* ---- handoff from libnats's threads ------------------------------------ */

static void wake(void)
{
	uint64_t one = 1;

	/* A full counter still wakes the loop: nothing to handle. */
	if (write(cluster.efd, &one, sizeof(one)) < 0)
		return;
}

static void enqueue(natsMsg *msg, enum qkind kind)
{
	pthread_mutex_lock(&cluster.mu);
	if (cluster.q_len == cluster.q_cap) {
		size_t cap = cluster.q_cap ? 2 * cluster.q_cap : 256;
		struct qitem *q = realloc(cluster.q, cap * sizeof(*q));

		if (!q) {
			/* Dropped like a message lost in transit; the
			 * protocol survives those. */
			pthread_mutex_unlock(&cluster.mu);
			natsMsg_Destroy(msg);
			return;
		}
		cluster.q = q;
		cluster.q_cap = cap;
	}
	cluster.q[cluster.q_len++] = (struct qitem){ msg, kind };
	pthread_mutex_unlock(&cluster.mu);
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
	atomic_fetch_add(&cluster.ev_conn, 1);
	wake();
}

/* ---- the connection --------------------------------------------------- */

static void pulls_free(void)
{
	while (cluster.pulls) {
		struct pull *pl = cluster.pulls;

		cluster.pulls = pl->next;
		free(pl);
	}
}

static void on_connected(void)
{
	char subj[200];

	cluster.state = CLUSTER_CONNECTED;
	if (cluster.ever_up)
		log_info("cluster: broker connection regained");
	else
		log_info("cluster: connected to the broker as node %s of cluster %s",
			 host_cfg->node_name, host_cfg->cluster_name);
	cluster.ever_up = true;
	cluster.down_since = 0;
	cluster.up_since = now_ms();
	/* Subscriptions survive reconnection; the stream is (re)made in
	 * case the servers lost it. */
	if (!cluster.subs[0]) {
		const struct { const char *what, *tail; enum qkind kind; } subs[] = {
			{ "nodes", NULL, Q_NODES }, { "res", host_cfg->node_name, Q_RES },
			{ "stop", "*", Q_STOP }, { NULL, NULL, Q_INBOX },
		};

		for (unsigned i = 0; i < 4; i++) {
			natsStatus s;

			if (subs[i].what)
				cluster_subject(subj, sizeof(subj), subs[i].what, subs[i].tail);
			else
				snprintf(subj, sizeof(subj), "%s.>", cluster.inbox);
			s = natsConnection_Subscribe(&cluster.subs[i], cluster.nc, subj, on_msg,
						     (void *)(intptr_t)subs[i].kind);
			if (s != NATS_OK) {
				log_err("cluster: cannot subscribe to %s: %s", subj,
					natsStatus_GetText(s));
				cluster.subs[i] = NULL;
			} else {
				natsSubscription_SetPendingLimits(cluster.subs[i], -1, -1);
			}
		}
	}
	cluster.stream_asked = now_ms();
	cluster_api_send(API_STREAM, NULL);
	cluster_heartbeat(false);
	master_status_changed();
}

static void on_disconnected(void)
{
	cluster.state = CLUSTER_DISCONNECTED;
	cluster.down_since = now_ms();
	cluster.stream_ok = false;
	/* Pull requests die with the connection. */
	pulls_free();
	cluster.pull_credit = 0;
	log_warn("cluster: broker connection lost; local work goes on, shared work waits "
		 "for it");
	master_status_changed();
}

static void check_connection(void)
{
	natsConnStatus st;

	if (!cluster.nc)
		return;
	st = natsConnection_Status(cluster.nc);
	if (st == NATS_CONN_STATUS_CONNECTED && cluster.state != CLUSTER_CONNECTED)
		on_connected();
	else if (st != NATS_CONN_STATUS_CONNECTED && cluster.state == CLUSTER_CONNECTED)
		on_disconnected();
}

/* A message to this node's inbox: an answer of JetStream's API, a pull's
 * status answer or pulled chunk, or the stream's ack of a chunk out. */
static void handle_inbox(natsMsg *msg)
{
	const char *subj = natsMsg_GetSubject(msg), *data = natsMsg_GetData(msg);
	struct out_chunk *o, **pp;

	/* A pulled chunk keeps its own subject; only the server's status
	 * answers carry the request's. */
	if (strncmp(subj, cluster.inbox, strlen(cluster.inbox)) != 0) {
		cluster_handle_pull(0, msg);
		return;
	}
	subj += strlen(cluster.inbox);
	if (strncmp(subj, ".api.", 5) == 0) {
		cluster_handle_api(strtoull(subj + 5, NULL, 10), msg);
	} else if (strncmp(subj, ".pull.", 6) == 0) {
		cluster_handle_pull(strtoull(subj + 6, NULL, 10), msg);
	} else if (strncmp(subj, ".ack.", 5) == 0) {
		o = cluster_out_find(strtoull(subj + 5, NULL, 10), &pp);
		if (o && data && strstr(data, "\"error\""))
			cluster_out_lost(pp, MPOOL_E_WORKER,
					 "the cluster's stream refused the chunk");
		else if (o)
			o->acked = true;
	}
}

/* Handles what libnats queued, or at shutdown (drop) frees it unhandled. */
static void drain_queue(bool drop)
{
	static void (*const handle[])(natsMsg *msg) = {
		[Q_NODES] = cluster_handle_nodes, [Q_RES] = cluster_handle_res,
		[Q_STOP] = cluster_handle_stop, [Q_INBOX] = handle_inbox,
	};
	struct qitem *q;
	size_t n;

	pthread_mutex_lock(&cluster.mu);
	q = cluster.q;
	n = cluster.q_len;
	cluster.q = NULL;
	cluster.q_len = cluster.q_cap = 0;
	pthread_mutex_unlock(&cluster.mu);
	for (size_t i = 0; i < n; i++) {
		if (!drop)
			handle[q[i].kind](q[i].msg);
		natsMsg_Destroy(q[i].msg);
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
	if (atomic_exchange(&cluster.ev_conn, 0))
		check_connection();
	for (struct out_chunk **pp = &cluster.out, *o; (o = *pp);) {
		if (o->dead)
			cluster_out_lost(pp, MPOOL_E_CANCELLED, "cancelled");
		else
			pp = &o->next;
	}
	drain_queue(false);
	cluster_pull_more();
	disp_schedule();
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
	uint64_t now = now_ms();

	(void)fd;
	(void)what;
	(void)arg;
	check_connection();
	cluster_fns_collect();
	if (cluster.state == CLUSTER_CONNECTED)
		cluster_heartbeat(false);
	/* A NATS cluster still electing its leaders refuses the stream for a
	 * while: ask again every few seconds until it is there. */
	if (cluster.state == CLUSTER_CONNECTED && !cluster.stream_ok &&
	    now - cluster.stream_asked >= 3000) {
		cluster.stream_asked = now;
		cluster_api_send(API_STREAM, NULL);
	}
	for (unsigned i = 0; i < cluster.n_nodes; i++)
		if (cluster.nodes[i].live && now - cluster.nodes[i].last_seen > NODE_LOST_MS &&
		    strcmp(cluster.nodes[i].name, host_cfg->node_name) != 0)
			cluster_node_lost(&cluster.nodes[i], "silent for 5 s");
	cluster_inlet_tick(now);
	cluster_outlet_tick(now);
	/* A gateway cannot run what waits for the broker: past the
	 * redelivery wait without it, the queued work fails. */
	if (host_cfg->workers == 0 && cluster.state != CLUSTER_CONNECTED && cluster.down_since &&
	    now - cluster.down_since > host_cfg->cluster_redelivery_ms && disp_has_queued())
		disp_fail_queued(MPOOL_E_UNAVAILABLE, "the cluster's broker is unreachable");
	cluster_pull_more();
	disp_schedule();
}

static void attach(const struct cluster_host *host)
{
	cluster_attach(host);
	/* libnats touches the loop's events from its threads. */
	natsLibevent_Init();
}

/* libnats's words for a refused login do not say what to fix. */
static const char *login_hint(natsStatus s)
{
	if (s == NATS_CONNECTION_AUTH_FAILED)
		return " (the broker refused this node's cluster-creds or cluster-user-file)";
	if (s == NATS_ERR && host_cfg->cluster_creds[0])
		return " (cluster-creds: not a NATS user credentials file?)";
	if (s == NATS_PROTOCOL_ERROR && (host_cfg->cluster_ca[0] || host_cfg->cluster_cert[0]))
		return " (the broker closed the TLS connection at login: does it require a "
		       "client certificate, cluster-cert, signed by a CA it trusts?)";
	return "";
}

int cluster_start(struct event_base *base)
{
	const char *servers[32];
	char urls[sizeof(host_cfg->cluster_url)], *save = NULL;
	int n_servers = 0;
	natsStatus s;
	char user[256], pass[256], why[512] = "";
	uint64_t r[2];

	pthread_mutex_init(&cluster.mu, NULL);
	if (getentropy(r, sizeof(r)) < 0)
		r[0] = (uint64_t)getpid() << 32 ^ now_ms();
	cluster.inc = r[0] ? r[0] : 1;
	snprintf(cluster.inbox, sizeof(cluster.inbox), "_INBOX.mpool.%s.%016" PRIx64, host_cfg->node_name,
		 cluster.inc);
	snprintf(cluster.stream, sizeof(cluster.stream), "MPOOL_%s", host_cfg->cluster_name);
	cluster_fns_collect();
	cluster.efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (cluster.efd < 0)
		return -errno;
	cluster.ev_wake = event_new(base, cluster.efd, EV_READ | EV_PERSIST, wake_cb, NULL);
	cluster.ev_tick = event_new(base, -1, EV_PERSIST, tick_cb, NULL);
	if (!cluster.ev_wake || !cluster.ev_tick || event_add(cluster.ev_wake, NULL) < 0 ||
	    timer_add_ms(cluster.ev_tick, HEARTBEAT_MS) < 0)
		return -ENOMEM;
	snprintf(urls, sizeof(urls), "%s", host_cfg->cluster_url);
	for (char *u = strtok_r(urls, ", ", &save); u && n_servers < 32;
	     u = strtok_r(NULL, ", ", &save))
		servers[n_servers++] = u;
	/* Threads for libnats's own work: few, the loop does the I/O. */
	s = nats_Open(-1);
	if (s == NATS_OK)
		s = natsOptions_Create(&cluster.opts);
	if (s == NATS_OK)
		s = natsOptions_SetServers(cluster.opts, servers, n_servers);
	if (s == NATS_OK)
		s = natsOptions_SetName(cluster.opts, host_cfg->node_name);
	if (s == NATS_OK)
		s = natsOptions_SetEventLoop(cluster.opts, base, natsLibevent_Attach,
					     natsLibevent_Read, natsLibevent_Write,
					     natsLibevent_Detach);
	if (s == NATS_OK)
		s = natsOptions_SetTimeout(cluster.opts, 2000);
	if (s == NATS_OK)
		s = natsOptions_SetMaxReconnect(cluster.opts, -1);
	if (s == NATS_OK)
		s = natsOptions_SetReconnectWait(cluster.opts, 1000);
	if (s == NATS_OK)
		s = natsOptions_SetDisconnectedCB(cluster.opts, on_conn_event, NULL);
	if (s == NATS_OK)
		s = natsOptions_SetReconnectedCB(cluster.opts, on_conn_event, NULL);
	if (s == NATS_OK)
		s = natsOptions_SetClosedCB(cluster.opts, on_conn_event, NULL);
	if (s == NATS_OK && host_cfg->cluster_creds[0])
		s = natsOptions_SetUserCredentialsFromFiles(cluster.opts, host_cfg->cluster_creds, NULL);
	if (s == NATS_OK && host_cfg->cluster_user_file[0]) {
		if (cluster_read_user_file(host_cfg->cluster_user_file, user, sizeof(user), pass,
					   sizeof(pass), why, sizeof(why)) < 0) {
			log_err("%s", why);
			return -EINVAL;
		}
		s = natsOptions_SetUserInfo(cluster.opts, user, pass);
		explicit_bzero(pass, sizeof(pass));
	}
	if (s == NATS_OK && (host_cfg->cluster_ca[0] || host_cfg->cluster_cert[0] ||
			     strstr(host_cfg->cluster_url, "tls://")))
		s = natsOptions_SetSecure(cluster.opts, true);
	if (s == NATS_OK && host_cfg->cluster_ca[0])
		s = natsOptions_LoadCATrustedCertificates(cluster.opts, host_cfg->cluster_ca);
	if (s == NATS_OK && host_cfg->cluster_cert[0])
		s = natsOptions_LoadCertificatesChain(cluster.opts, host_cfg->cluster_cert,
						      host_cfg->cluster_key);
	if (s != NATS_OK) {
		log_err("cluster: cannot set up the broker connection: %s (%s)",
			natsStatus_GetText(s), nats_GetLastError(NULL));
		return -EINVAL;
	}
	cluster.on = true;
	cluster.state = CLUSTER_CONNECTING;
	/* Connecting waits for the first server to answer (at most the
	 * timeout); an unreachable broker is retried in the background while
	 * mpoold serves local work. */
	s = natsConnection_Connect(&cluster.nc, cluster.opts);
	if (s != NATS_OK) {
		const char *last = nats_GetLastError(NULL);

		/* The first try says why (no server, a certificate that does
		 * not verify, a wrong password); the retries in the
		 * background do not. */
		snprintf(why, sizeof(why), "%s%s", last && last[0] ? last : natsStatus_GetText(s),
			 login_hint(s));
		cluster.nc = NULL;
		s = natsOptions_SetRetryOnFailedConnect(cluster.opts, true, on_conn_event, NULL);
		if (s == NATS_OK)
			s = natsConnection_Connect(&cluster.nc, cluster.opts);
	}
	if (s == NATS_OK && !why[0]) {
		on_connected();
	} else if (s == NATS_OK || s == NATS_NOT_YET_CONNECTED) {
		cluster.down_since = now_ms();
		log_warn("cluster: broker unreachable at %s: %s; serving local work and retrying",
			 host_cfg->cluster_url, why);
		if (s == NATS_OK)
			on_connected();
	} else {
		log_err("cluster: cannot connect to the broker: %s (%s)", natsStatus_GetText(s),
			nats_GetLastError(NULL));
		cluster.nc = NULL;
		cluster.state = CLUSTER_DISCONNECTED;
		cluster.down_since = now_ms();
	}
	return 0;
}

void cluster_stop(void)
{
	struct out_chunk **pp = &cluster.out;

	if (!cluster.on)
		return;
	if (cluster.state == CLUSTER_CONNECTED) {
		cluster_heartbeat(true);
		natsConnection_FlushTimeout(cluster.nc, 500);
	}
	while (*pp)
		cluster_out_remove(pp);
	for (unsigned i = 0; i < 4; i++)
		natsSubscription_Destroy(cluster.subs[i]);
	natsConnection_Destroy(cluster.nc);
	natsOptions_Destroy(cluster.opts);
	cluster.nc = NULL;
	event_free(cluster.ev_wake);
	event_free(cluster.ev_tick);
	close(cluster.efd);
	drain_queue(true);
	for (unsigned i = 0; i < cluster.n_nodes; i++) {
		cluster_strs_free(cluster.nodes[i].fns, cluster.nodes[i].n_fns);
		cluster_strs_free(cluster.nodes[i].want, cluster.nodes[i].n_want);
	}
	for (unsigned i = 0; i < cluster.n_fns; i++)
		free(cluster.fns[i]);
	pulls_free();
	while (cluster.api) {
		struct api_req *r = cluster.api;

		cluster.api = r->next;
		free(r);
	}
	while (cluster.in)
		cluster_in_free(cluster.in);
	cluster.on = false;
	nats_CloseAndWait(2000);
}

/* The plugin's one exported symbol: everything else is hidden
 * (-fvisibility=hidden), so its cluster_* never meet the daemon's. */
__attribute__((visibility("default"))) extern const struct cluster_plugin mpool_cluster_plugin;
const struct cluster_plugin mpool_cluster_plugin = {
	.abi = CLUSTER_PLUGIN_ABI,
	.version = MPOOL_VERSION,
	.sizes = CLUSTER_PLUGIN_SIZES,
	.attach = attach,
	.start = cluster_start,
	.stop = cluster_stop,
	.check_fn = cluster_check_fn,
	.outlet_room = cluster_outlet_room,
	.outlet_run = cluster_outlet_run,
	.outlet_workers = cluster_outlet_workers,
	.kill_job = cluster_kill_job,
	.job_ended = cluster_job_ended,
	.send_chunk = cluster_send_chunk,
	.map_done = cluster_map_done,
	.job_failed = cluster_job_failed,
	.inlet_job_ended = cluster_inlet_job_ended,
	.pack_status = cluster_pack_status,
};
