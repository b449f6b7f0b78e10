/* cluster_int: what the cluster plugin's files share.  The rest of the
 * daemon knows only cluster.h, and reaches the plugin through
 * cluster_load.c. */
#ifndef CLUSTER_INT_H
#define CLUSTER_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <event2/event.h>
#include <msgpack.h>
#include <nats/nats.h>

#include "cluster.h"
#include "cluster_plugin.h"
#include "config.h"
#include "disp.h"
#include "mp_rpc.h"

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

enum cluster_state { CLUSTER_OFF, CLUSTER_CONNECTING, CLUSTER_CONNECTED, CLUSTER_DISCONNECTED };
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

/* Connected, and the work stream is ready. */
bool cluster_up(void);

/* The daemon (cluster_host.c): its calls, and its config, read-only. */
extern const struct cluster_host *cluster_host;
extern const struct config *host_cfg;
void cluster_attach(const struct cluster_host *host);

/* A chunk this node runs for a node (itself included). */
struct in_chunk {
	uint64_t id;                 /* the local job's msgid */
	struct job *job;
	char origin[CONFIG_NAME_MAX + 1];
	uint64_t inc, job_key, chunk_key, first, delivered;
	char *ack;                   /* the JetStream reply subject */
	uint64_t claim_ms;
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

/* The link's whole state: one per mpoold. */
struct cluster {
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
};
extern struct cluster cluster;

/* cluster_js.c.  Publishing (reply: NULL, or the subject replies go to)
 * logs a failure and goes on: what is lost is covered by the timeouts
 * (tick) and JetStream's redelivery. */
void cluster_publish(const char *subj, const char *reply, const void *data, size_t len);
/* Readers of a message's fields; false on a bad shape (the message is
 * dropped: another node's bad data never stops this one). */
bool cluster_read_name(struct mp_cur *c, char *buf, size_t size);
/* A bin element: its bytes, in the buffer. */
bool cluster_read_bin(struct mp_cur *c, const uint8_t **ret, uint32_t *ret_len);
/* "mpool.C.what.tail" (tail NULL: none). */
void cluster_subject(char *buf, size_t size, const char *what, const char *tail);
/* fn's durable consumer name (see cluster.c's top comment). */
void cluster_durable_name(char *buf, size_t size, const char *fn);
/* Asks JetStream's API for the stream (API_STREAM, API_STREAM_UPDATE) or
 * fn's consumer (API_CONSUMER); the answer comes to cluster_handle_api. */
void cluster_api_send(int what, const char *fn);
void cluster_handle_api(uint64_t id, natsMsg *msg);

/* cluster_node.c */
/* This node announces fn (len bytes). */
bool cluster_has_fn(const char *fn, size_t len);
struct node *cluster_node_find(const char *name);
/* Frees n strings and their array. */
void cluster_strs_free(char **v, unsigned n);
/* Whether the n strings of v hold s (len bytes). */
bool cluster_strs_have(char *const *v, unsigned n, const char *s, size_t len);
/* A node is gone: its chunks here stop, its chunks of ours run again. */
void cluster_node_lost(struct node *nd, const char *why);
void cluster_handle_nodes(natsMsg *msg);
/* Publishes this node's heartbeat; leaving: its last. */
void cluster_heartbeat(bool leaving);
void cluster_fns_collect(void);

/* cluster_outlet.c */
/* The chunk out under key, and where it is linked (*ret_pp). */
struct out_chunk *cluster_out_find(uint64_t key, struct out_chunk ***ret_pp);
/* Forgets a chunk out without telling the dispatcher (shutdown). */
void cluster_out_remove(struct out_chunk **pp);
/* Ends a chunk out as lost (disp_chunk_lost) and forgets it. */
void cluster_out_lost(struct out_chunk **pp, int code, const char *msg);
void cluster_handle_res(natsMsg *msg);
void cluster_outlet_tick(uint64_t now);

/* cluster_inlet.c */
/* A pull's answer, or a pulled chunk (id 0). */
void cluster_handle_pull(uint64_t id, natsMsg *msg);
void cluster_pull_more(void);
void cluster_in_free(struct in_chunk *ic);
/* Each second: forgets expired pulls, renews long chunks' claims. */
void cluster_inlet_tick(uint64_t now);
void cluster_handle_stop(natsMsg *msg);
/* Stops the chunks run here for origin's incarnation inc: job's, or all
 * of them with any_job. */
void cluster_stop_origin_chunks(const char *origin, uint64_t inc, bool any_job, uint64_t job);

#endif
