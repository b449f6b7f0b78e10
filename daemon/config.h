/* mpoold's settings: one global, filled at start from the built-in defaults,
 * then the config file, then the command line (options.c declares each
 * setting once for all three), and read-only afterwards.  Every limit a
 * client can push against is here. */
#ifndef CONFIG_H
#define CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define CONFIG_MAX_MODULES 32
/* cluster-name and node-name: letters, digits, '-' and '_' (they become
 * NATS subject tokens and a stream name). */
#define CONFIG_NAME_MAX 32

/* A task module to load, with the initargs its init receives.  Both
 * strings are owned by cfg (config_modules_clear() frees them). */
struct module_spec {
	char *path;                     /* as given; opened with dlopen */
	char *initargs_json;            /* NULL: nil */
};

struct config {
	char socket_path[108];          /* sun_path size; "" until main() applies the default rule */
	unsigned socket_mode;           /* permissions of a socket mpoold binds itself */
	gid_t socket_gid;               /* its group; (gid_t)-1: the daemon's own */
	unsigned workers;               /* 0: a cluster gateway; see CONFIG_WORKERS_AUTO */
	uint64_t max_tasks_per_child;   /* 0: unlimited */
	size_t max_frame;
	uint32_t max_depth;
	uint64_t max_items;
	unsigned max_jobs_per_conn;
	unsigned max_clients;
	unsigned max_clients_per_uid;   /* for users who are not admins */
	unsigned admin_clients;         /* of max_clients, kept for admins */
	size_t max_client_bytes;        /* a client's partial frame, queued input, unsent output */
	size_t max_total_bytes;         /* the same, all clients together */
	unsigned frame_timeout_ms;      /* a started message must be whole within this */
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
	unsigned fork_server_timeout_ms;   /* a fork server still loading the modules is killed */

	gid_t admin_gid;                /* admins beside root and mpoold's uid; (gid_t)-1: none */
	uint64_t max_queued_chunks;     /* chunks waiting across all jobs */
	uint64_t max_queued_chunks_per_uid;   /* ... of one uid that is no admin */
	uint64_t admin_queued_chunks;   /* of max_queued_chunks, only admins may fill */
	uint64_t stream_window;         /* streamed map: items sent and unanswered */
	size_t stream_window_bytes;     /* streamed map: input bytes held */
	unsigned max_processes;         /* supervised processes running at once */
	unsigned max_processes_per_uid; /* of those, one non-admin uid's */
	unsigned admin_processes;       /* of those, the ones only admins may start */
	unsigned max_kept_processes;    /* finished processes kept per uid for join */
	size_t max_kept_bytes;          /* their outcomes' bytes, per uid */
	unsigned process_grace_ms;      /* SIGTERM to SIGKILL for a process */

	/* The cluster (cluster.h): all unused while cluster_url is "". */
	char cluster_url[1024];         /* comma-separated nats:// or tls:// URLs */
	char cluster_name[CONFIG_NAME_MAX + 1];  /* names the stream and subjects */
	char node_name[CONFIG_NAME_MAX + 1];     /* "": the host name's first label */
	char cluster_creds[256];        /* a NATS .creds file */
	char cluster_user_file[256];    /* user on line 1, password on line 2 */
	char cluster_ca[256];           /* TLS: CA bundle that verifies the servers */
	char cluster_cert[256];         /* TLS: this node's client certificate */
	char cluster_key[256];          /* ... and its private key */
	unsigned cluster_allow_plain;   /* 1: nats:// to a non-loopback host is allowed */
	unsigned cluster_replicas;      /* the stream's replicas, 1..5 */
	unsigned cluster_redelivery_ms; /* an unacknowledged chunk is redelivered after this */
	unsigned cluster_spread;        /* enum config_spread: the node's default */
};

/* Which requests go to the cluster unless the request says otherwise. */
enum config_spread { CONFIG_SPREAD_MAPS, CONFIG_SPREAD_ALL, CONFIG_SPREAD_NONE };

/* cfg.workers before main() applies the default (online CPUs); 0 is a valid
 * setting (a cluster gateway). */
#define CONFIG_WORKERS_AUTO UINT32_MAX

extern struct config cfg;

/* Messages between the master and its workers or processes wrap a client's
 * items or a task's results in a slightly larger envelope than the client's
 * own request had: their limit is the frame limit plus this. */
#define CONFIG_WORKER_FRAME_SLACK 4096

/* A new, empty module entry at the end of cfg.modules, or NULL when
 * CONFIG_MAX_MODULES are listed already. */
struct module_spec *config_module_add(void);
/* Forgets every module entry (the command line's --module replaces the
 * file's [module] sections; exit). */
void config_modules_clear(void);

#endif
