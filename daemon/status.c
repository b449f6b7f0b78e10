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

static void kv_u64(msgpack_packer *pk, const char *k, uint64_t v)
{
	mp_pack_cstr(pk, k);
	msgpack_pack_uint64(pk, v);
}

void status_pack(msgpack_packer *pk)
{
	msgpack_pack_map(pk, 14);
	mp_pack_cstr(pk, "version");
	mp_pack_cstr(pk, MPOOL_VERSION);
	kv_u64(pk, "protocol", MP_PROTO_VERSION);
	kv_u64(pk, "pid", (uint64_t)getpid());
	mp_pack_cstr(pk, "state");
	mp_pack_cstr(pk, master_state_name());
	kv_u64(pk, "uptime_ms", master_uptime_ms());
	mp_pack_cstr(pk, "workers");
	pool_pack_workers(pk);
	mp_pack_cstr(pk, "jobs");
	disp_pack_jobs(pk);
	mp_pack_cstr(pk, "processes");
	proc_pack_all(pk);
	mp_pack_cstr(pk, "process_limits");
	proc_pack_limits(pk);
	mp_pack_cstr(pk, "fork_server");
	forksrv_pack_status(pk);
	mp_pack_cstr(pk, "limits");
	conn_pack_config_limits(pk);
	mp_pack_cstr(pk, "queue");
	disp_pack_queue(pk);
	mp_pack_cstr(pk, "cluster");
	cluster_pack_status(pk);
	mp_pack_cstr(pk, "totals");
	msgpack_pack_map(pk, 9 + POOL_TOTALS_KEYS);
	kv_u64(pk, "workers", cfg.workers);
	kv_u64(pk, "max_tasks_per_child", cfg.max_tasks_per_child);
	kv_u64(pk, "tasks_failed", disp_tasks_failed());
	kv_u64(pk, "jobs_active", disp_active());
	kv_u64(pk, "jobs_done", disp_jobs_done());
	kv_u64(pk, "chunks_queued", disp_chunks_queued());
	kv_u64(pk, "clients", conn_count());
	kv_u64(pk, "client_bytes", conn_bytes_held());
	mp_pack_cstr(pk, "limits_hit");
	conn_pack_limits(pk);
	pool_pack_totals(pk);
}
