#include "config.h"

#include <syslog.h>

#include "mp_scan.h"

/* Defaults; main() overrides them from the command line.  PROTOCOL.md and
 * mpoold --help document each one. */
struct config cfg = {
	.max_tasks_per_child = 0,
	.max_frame = 64u << 20,
	.max_depth = MP_DEPTH_MAX,
	.max_items = 1u << 24,
	.max_jobs_per_conn = 1024,
	.max_clients = 1024,
	.out_high_water = 4u << 20,
	.drain_timeout_ms = 30000,
	.log_level = LOG_INFO,
	.max_retries = 3,
	.recovery_timeout_ms = 60000,
};
