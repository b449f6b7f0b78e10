#include "status.h"

#include <unistd.h>

#include "cluster.h"
#include "config.h"
#include "conn.h"
#include "disp.h"
#include "forksrv.h"
#include "master.h"
#include "mp_rpc.h"
#include "pool.h"
#include "proc.h"

void status_kv(msgpack_packer *pk, const char *key, uint64_t v)
{
	mp_pack_cstr(pk, key);
	msgpack_pack_uint64(pk, v);
}

static void pack_totals(msgpack_packer *pk)
{
	msgpack_pack_map(pk, 9 + POOL_TOTALS_KEYS);
	status_kv(pk, "workers", cfg.workers);
	status_kv(pk, "max_tasks_per_child", cfg.max_tasks_per_child);
	status_kv(pk, "tasks_failed", disp_tasks_failed());
	status_kv(pk, "jobs_active", disp_active());
	status_kv(pk, "jobs_done", disp_jobs_done());
	status_kv(pk, "chunks_queued", disp_chunks_queued());
	status_kv(pk, "clients", conn_count());
	status_kv(pk, "client_bytes", conn_bytes_held());
	mp_pack_cstr(pk, "limits_hit");
	conn_pack_limits(pk);
	pool_pack_totals(pk);
}

/* The top-level keys after the five scalars, in PROTOCOL.md's order.  A
 * table, so that a new section cannot leave the map's announced size
 * behind. */
static const struct section {
	const char *key;
	void (*pack)(msgpack_packer *pk);
} sections[] = {
	{ "workers", pool_pack_workers },
	{ "jobs", disp_pack_jobs },
	{ "processes", proc_pack_all },
	{ "process_limits", proc_pack_limits },
	{ "fork_server", forksrv_pack_status },
	{ "limits", conn_pack_config_limits },
	{ "queue", disp_pack_queue },
	{ "totals", pack_totals },
	{ "cluster", cluster_pack_status },
};

void status_pack(msgpack_packer *pk)
{
	msgpack_pack_map(pk, 5 + sizeof(sections) / sizeof(sections[0]));
	mp_pack_cstr(pk, "version");
	mp_pack_cstr(pk, MPOOL_VERSION);
	status_kv(pk, "protocol", MP_PROTO_VERSION);
	status_kv(pk, "pid", (uint64_t)getpid());
	mp_pack_cstr(pk, "state");
	mp_pack_cstr(pk, master_state_name());
	status_kv(pk, "uptime_ms", master_uptime_ms());
	for (size_t i = 0; i < sizeof(sections) / sizeof(sections[0]); i++) {
		mp_pack_cstr(pk, sections[i].key);
		sections[i].pack(pk);
	}
}
