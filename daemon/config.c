#include "config.h"

#include <stdlib.h>
#include <syslog.h>

#include "mp_scan.h"

/* Defaults; the config file and then the command line override them.
 * mpoold --help, mpoold.conf(5) and the sample config show each one (a
 * test checks that the sample agrees with these). */
struct config cfg = {
	.socket_mode = 0660,
	.socket_gid = (gid_t)-1,
	.max_tasks_per_child = 0,
	.max_frame = 64u << 20,
	.max_depth = MP_DEPTH_MAX,
	.max_items = 1u << 24,
	.max_jobs_per_conn = 1024,
	.max_clients = 1024,
	.max_clients_per_uid = 128,
	.admin_clients = 8,
	.max_client_bytes = 128u << 20,
	.max_total_bytes = 256u << 20,
	.frame_timeout_ms = 30000,
	.out_high_water = 4u << 20,
	.drain_timeout_ms = 30000,
	.log_level = LOG_INFO,
	.max_retries = 3,
	.recovery_timeout_ms = 60000,
	.fork_server_timeout_ms = 60000,
	.admin_gid = (gid_t)-1,
	.max_queued_chunks = 1u << 20,
	.max_queued_chunks_per_uid = 1u << 18,
	.admin_queued_chunks = 1u << 16,
	.stream_window = 65536,
	.stream_window_bytes = 16u << 20,
	.max_processes = 16,
	.max_processes_per_uid = 8,
	.admin_processes = 2,
	.max_kept_processes = 16,
	.max_kept_bytes = 16u << 20,
	.process_grace_ms = 3000,
	.workers = CONFIG_WORKERS_AUTO,
	.cluster_name = "mpool",
	.cluster_replicas = 1,
	.cluster_redelivery_ms = 30000,
	.cluster_spread = CONFIG_SPREAD_MAPS,
};

struct module_spec *config_module_add(void)
{
	struct module_spec *m;

	if (cfg.n_modules == CONFIG_MAX_MODULES)
		return NULL;
	m = &cfg.modules[cfg.n_modules++];
	*m = (struct module_spec){ 0 };
	return m;
}

void config_modules_clear(void)
{
	for (unsigned i = 0; i < cfg.n_modules; i++) {
		free(cfg.modules[i].path);
		free(cfg.modules[i].initargs_json);
	}
	cfg.n_modules = 0;
}
