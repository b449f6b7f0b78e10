/* cluster_plugin: the contract between mpoold and mpool-cluster.so, the
 * plugin that holds the cluster's NATS code (cluster.c, cluster_js.c,
 * cluster_node.c, cluster_outlet.c, cluster_inlet.c), so that mpoold
 * needs libnats only when cluster-url is set.
 *
 * The plugin exports one symbol, CLUSTER_PLUGIN_SYM, a const struct
 * cluster_plugin; cluster_load.c opens the plugin at config check time
 * (before the loop's event_base exists) and forwards cluster.h's calls to
 * its table.  The plugin calls back into mpoold through the symbols
 * cluster.dynlist exports, and reads cfg: it must come from the same
 * build, which abi, version and cfg_size check.  Bump CLUSTER_PLUGIN_ABI
 * when the table, or what the plugin uses of the daemon, changes shape. */
#ifndef CLUSTER_PLUGIN_H
#define CLUSTER_PLUGIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <event2/event.h>
#include <msgpack.h>

#define CLUSTER_PLUGIN_ABI 1
#define CLUSTER_PLUGIN_NAME "mpool-cluster.so"
#define CLUSTER_PLUGIN_SYM "mpool_cluster_plugin"

struct chunk;
struct job;

/* Each entry does what cluster.h says of the function of the same name. */
struct cluster_plugin {
	uint32_t abi;                   /* CLUSTER_PLUGIN_ABI */
	const char *version;            /* MPOOL_VERSION */
	size_t cfg_size;                /* sizeof(struct config) */
	void (*preinit)(void);
	int (*start)(struct event_base *base);
	void (*stop)(void);
	bool (*up)(void);
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
