/* mpoold's settings: one global, filled from the command line at start and
 * read-only afterwards.  Every limit a client can push against is here. */
#ifndef CONFIG_H
#define CONFIG_H

#include <stddef.h>
#include <stdint.h>

#define CONFIG_MAX_MODULES 32

/* A task module to load, with the initargs its init receives. */
struct module_spec {
	char *path;                     /* as given; opened with dlopen */
	char *initargs_json;            /* NULL: nil */
};

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

	/* Task modules and worker lifecycle. */
	struct module_spec modules[CONFIG_MAX_MODULES];
	unsigned n_modules;
	uint64_t max_tasks_jitter;      /* a worker's quota is drawn from [max - jitter, max] */
	unsigned task_timeout_ms;       /* 0: none; a request may set its own */
	unsigned max_rss_mib;           /* recycle a worker past this RSS; 0: never */
	unsigned max_lifetime_s;        /* recycle a worker this old; 0: never */
	unsigned max_retries;           /* cap on a request's "retries" */
	unsigned recovery_timeout_ms;   /* queued work fails if no worker is ready this long */
};

extern struct config cfg;

#endif
