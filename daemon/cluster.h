/* cluster: mpoold nodes sharing work through NATS JetStream.  Only used
 * when cluster-url is set: the NATS code is a plugin (cluster_plugin.h)
 * opened then; without it nothing is opened, libnats is never loaded, and
 * these calls do nothing (cluster_load.c). */
#ifndef CLUSTER_H
#define CLUSTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <event2/event.h>
#include <msgpack.h>

struct chunk;
struct conn;
struct job;
struct job_spec;

/* Checks the cluster settings in cfg (URLs, files, names), fills in the
 * default node name and opens the cluster plugin.  0, or -1 with the
 * reason in why.  Without cluster-url it only checks that workers is not
 * 0. */
int cluster_config_check(char *why, size_t why_size);

/* Reads cluster-user-file: the user name on its first line, the password on
 * its second.  0, or -1 with the reason in why. */
int cluster_read_user_file(const char *path, char *user, size_t user_size, char *pass,
			   size_t pass_size, char *why, size_t why_size);

/* Connects (or starts retrying in the background) and starts the node's
 * heartbeat; modules must be loaded.  Nothing without cluster-url.  0 or a
 * negative errno (logged). */
int cluster_start(struct event_base *base);
/* Says goodbye to the other nodes and closes the connection. */
void cluster_stop(void);

/* Whether a request goes to the cluster: its "spread" option, else the
 * node's cluster-spread; always on a gateway (workers = 0), never without
 * cluster-url. */
bool cluster_share(const struct job_spec *spec);
/* A shared request may name fn when a live node (this one included, if it
 * has workers) has loaded it: 0, -ENOENT, or -EAGAIN when only other nodes
 * could have it and the broker is unreachable. */
int cluster_check_fn(const char *fn, size_t len);

/* The outlet, for the dispatcher's ops (disp.h). */
bool cluster_outlet_room(void);
void cluster_outlet_run(const struct chunk *ck, const char *fn, uint32_t fn_len);
/* The other live nodes' workers. */
unsigned cluster_outlet_workers(void);
/* A job's chunks must stop (cancel with kill): the other nodes are told,
 * and the outlet's chunks of it are lost soon after, from the loop. */
void cluster_kill_job(const struct job *job);
/* A client's job was answered: chunks of it still out are stopped. */
void cluster_job_ended(const struct job *job);

/* The inlet's client handle, and the calls the ops route to it. */
extern struct conn *const cluster_inlet_conn;
void cluster_send_chunk(uint64_t msgid, uint64_t first, const uint8_t *results, size_t rlen,
			const uint8_t *errors, size_t elen, uint8_t *owned);
void cluster_map_done(uint64_t msgid);
void cluster_job_failed(uint64_t msgid, int code, const char *msg);
void cluster_inlet_job_ended(uint64_t msgid);

/* status: the "cluster" map (proto/PROTOCOL.md). */
void cluster_pack_status(msgpack_packer *pk);

#endif
