/* mpoold's settings: one global, filled from the command line at start and
 * read-only afterwards.  Every limit a client can push against is here. */
#ifndef CONFIG_H
#define CONFIG_H

#include <stddef.h>
#include <stdint.h>

struct config {
	char socket_path[108];          /* sun_path size */
	unsigned workers;
	uint64_t max_tasks_per_child;   /* 0: unlimited */
	size_t max_frame;
	uint32_t max_depth;
	uint64_t max_items;
	unsigned max_jobs_per_conn;
	unsigned max_clients;
	size_t out_high_water;          /* stop feeding a client's jobs past this */
	unsigned drain_timeout_ms;
	int log_level;
};

extern struct config cfg;

#endif
