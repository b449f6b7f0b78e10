/* cluster_plugin: the contract between mpoold and mpool-cluster.so, the
 * plugin that holds the cluster's NATS code (cluster/), so that mpoold
 * needs libnats only when cluster-url is set.
 *
 * The plugin exports one symbol, CLUSTER_PLUGIN_SYM, a const struct
 * cluster_plugin; cluster_load.c opens the plugin at config check time
 * (before the loop's event_base exists), hands it the daemon's calls as a
 * struct cluster_host and forwards cluster.h's calls to its table.  mpoold
 * itself exports no symbol: a task module it opens cannot bind one of its
 * own names to the daemon's by chance.  The plugin reads the daemon's
 * config and the structs it shares, so it must come from the same build:
 * abi, version and the sizes of those structs are checked.  Bump
 * CLUSTER_PLUGIN_ABI when either table changes shape. */
#ifndef CLUSTER_PLUGIN_H
#define CLUSTER_PLUGIN_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <event2/event.h>
#include <msgpack.h>

#include "master.h"

#define CLUSTER_PLUGIN_ABI 3

/* The structs the plugin and mpoold share, by size: a plugin built against
 * other headers of the same version shows here.  Needs config.h, disp.h
 * and wmsg.h. */
#define CLUSTER_PLUGIN_SIZES                                                   \
	{ sizeof(struct config), sizeof(struct job_spec), sizeof(struct chunk), \
	  sizeof(struct wmsg_result), sizeof(struct disp_results_buf) }
#define CLUSTER_PLUGIN_N_SIZES 5
#define CLUSTER_PLUGIN_NAME "mpool-cluster.so"
#define CLUSTER_PLUGIN_SYM "mpool_cluster_plugin"

struct chunk;
struct conn;
struct config;
struct disp_results_buf;
struct job;
struct job_spec;
struct mp_cur;
struct reg_fn;
struct wmsg_result;

/* The daemon, as the plugin sees it: each call does what the daemon's
 * function of the same name does (cluster_host.c gives the plugin those
 * names back). */
struct cluster_host {
	const struct config *cfg;
	struct conn *inlet_conn;
	int (*read_user_file)(const char *path, char *user, size_t user_size, char *pass,
			      size_t pass_size, char *why, size_t why_size);
	void (*log_vmsg)(int prio, const char *fmt, va_list ap);
	uint64_t (*now_ms)(void);
	enum master_state (*master_state)(void);
	void (*master_status_changed)(void);
	unsigned (*pool_busy)(void);
	uint64_t (*pool_tasks_done)(void);
	const struct reg_fn *(*reg_lookup)(const char *name, size_t len);
	void (*reg_each_fn)(void (*fn)(const char *name, void *arg), void *arg);
	struct job *(*disp_submit)(struct conn *conn, const struct job_spec *spec);
	void (*disp_schedule)(void);
	void (*disp_cancel)(struct job *job, int code, const char *msg);
	void (*disp_kill_running)(struct job *job);
	void (*disp_fail_queued)(int code, const char *msg);
	bool (*disp_has_queued)(void);
	uint64_t (*disp_job_id)(const struct job *job);
	uint32_t (*disp_job_retries)(const struct job *job);
	uint32_t (*disp_job_timeout)(const struct job *job);
	void (*disp_chunk_part)(struct chunk *ck, const struct wmsg_result *res,
				const struct disp_results_buf *buf);
	void (*disp_chunk_done)(struct chunk *ck, const struct wmsg_result *res,
				const struct disp_results_buf *buf);
	void (*disp_chunk_lost)(struct chunk *ck, int code, const char *msg);
	int (*disp_walk_items)(struct mp_cur *c, uint64_t n, const uint8_t **ret_items,
			       size_t *ret_len, const size_t **ret_marks);
};

/* Each entry does what cluster.h says of the function of the same name. */
struct cluster_plugin {
	uint32_t abi;                   /* CLUSTER_PLUGIN_ABI */
	const char *version;            /* MPOOL_VERSION */
	size_t sizes[CLUSTER_PLUGIN_N_SIZES];   /* CLUSTER_PLUGIN_SIZES */
	/* First, before any other call and before the loop's event_base
	 * exists (libnats's adapter needs libevent's thread support). */
	void (*attach)(const struct cluster_host *host);
	int (*start)(struct event_base *base);
	void (*stop)(void);
	int (*check_fn)(const char *fn, size_t len);
	bool (*outlet_room)(void);
	void (*outlet_run)(const struct chunk *ck, const char *fn, uint32_t fn_len);
	unsigned (*outlet_workers)(void);
	void (*kill_job)(const struct job *job);
	void (*job_ended)(const struct job *job);
	void (*send_chunk)(uint64_t msgid, uint64_t first, const uint8_t *results, size_t rlen,
			   const uint8_t *errors, size_t elen, uint8_t *owned);
	void (*map_done)(uint64_t msgid);
	void (*job_failed)(uint64_t msgid, int code, const char *msg);
	void (*inlet_job_ended)(uint64_t msgid);
	void (*pack_status)(msgpack_packer *pk);
};

/* cluster_load.c: with cluster-url, opens the plugin (once).  0, or -1
 * with the reason, naming the file, in why. */
int cluster_plugin_load(char *why, size_t why_size);

#endif
