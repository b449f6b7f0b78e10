/* mpoold: a preforking process-pool daemon.  main() reads the options,
 * registers the task modules (before any fork, so workers share them) and
 * hands over to the master loop. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "master.h"
#include "mp_path.h"
#include "mp_scan.h"
#include "modload.h"

static void usage(FILE *f)
{
	fprintf(f,
		"usage: mpoold [OPTION]...\n"
		"Serve a pool of worker processes on a Unix socket (see mpoold --help).\n\n"
		"  -s, --socket PATH            socket to listen on (default: $MPOOL_SOCKET,\n"
		"                               /run/mpool/mpoold.sock for root, else\n"
		"                               $XDG_RUNTIME_DIR/mpool/mpoold.sock)\n"
		"  -w, --workers N              worker processes (default: online CPUs)\n"
		"  -m, --max-tasks-per-child N  recycle a worker after N tasks (0: never; default 0)\n"
		"      --max-frame BYTES        largest message accepted (default 67108864)\n"
		"      --max-items N            most items in one map (default 16777216)\n"
		"      --max-jobs N             most open requests per connection (default 1024)\n"
		"      --max-clients N          most client connections (default 1024)\n"
		"      --drain-timeout MS       SIGTERM drain deadline before terminating (default 30000)\n"
		"      --log-level LEVEL        error, warning, info or debug (default info)\n"
		"      --module PATH            load a task module (repeatable)\n"
		"      --initargs JSON          the preceding module's initargs (default nil)\n"
		"      --task-timeout MS        kill a chunk's worker past this per item (0: none)\n"
		"      --max-tasks-jitter N     draw each worker's quota from [max - N, max]\n"
		"      --max-rss-per-child MIB  recycle a worker whose RSS passes this (0: never)\n"
		"      --max-worker-lifetime S  recycle a worker this old (0: never)\n"
		"      --max-retries N          cap on a request's retries (default 3)\n"
		"      --recovery-timeout MS    fail queued work after this long without a\n"
		"                               ready worker (default 60000)\n"
		"  -h, --help                   this text\n"
		"  -V, --version                the version\n");
}

static int parse_u64(const char *opt, const char *s, uint64_t min, uint64_t max, uint64_t *ret)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s || *end || s[0] == '-' || v < min || v > max) {
		fprintf(stderr, "mpoold: --%s: expected an integer from %llu to %llu, got '%s'\n",
			opt, (unsigned long long)min, (unsigned long long)max, s);
		return -1;
	}
	*ret = v;
	return 0;
}

static int parse_level(const char *s)
{
	static const struct { const char *name; int level; } levels[] = {
		{ "error", LOG_ERR }, { "warning", LOG_WARNING }, { "info", LOG_INFO },
		{ "debug", LOG_DEBUG },
	};
	for (size_t i = 0; i < sizeof(levels) / sizeof(levels[0]); i++)
		if (strcmp(s, levels[i].name) == 0)
			return levels[i].level;
	return -1;
}

/* Descriptors 0-2 must exist, or a socket could land on them and be written
 * to as if it were stderr. */
static void ensure_std_fds(void)
{
	for (int fd = 0; fd < 3; fd++)
		if (fcntl(fd, F_GETFD) < 0 && open("/dev/null", O_RDWR) < 0)
			exit(1);
}

int main(int argc, char **argv)
{
	enum { O_FRAME = 256, O_ITEMS, O_JOBS, O_CLIENTS, O_DRAIN, O_LOG, O_MODULE, O_INITARGS,
	       O_TIMEOUT, O_RSS, O_LIFETIME, O_JITTER, O_RETRIES, O_RECOVERY };
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "workers", required_argument, NULL, 'w' },
		{ "max-tasks-per-child", required_argument, NULL, 'm' },
		{ "max-frame", required_argument, NULL, O_FRAME },
		{ "max-items", required_argument, NULL, O_ITEMS },
		{ "max-jobs", required_argument, NULL, O_JOBS },
		{ "max-clients", required_argument, NULL, O_CLIENTS },
		{ "drain-timeout", required_argument, NULL, O_DRAIN },
		{ "log-level", required_argument, NULL, O_LOG },
		{ "module", required_argument, NULL, O_MODULE },
		{ "initargs", required_argument, NULL, O_INITARGS },
		{ "task-timeout", required_argument, NULL, O_TIMEOUT },
		{ "max-rss-per-child", required_argument, NULL, O_RSS },
		{ "max-worker-lifetime", required_argument, NULL, O_LIFETIME },
		{ "max-tasks-jitter", required_argument, NULL, O_JITTER },
		{ "max-retries", required_argument, NULL, O_RETRIES },
		{ "recovery-timeout", required_argument, NULL, O_RECOVERY },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 },
	};
	const char *socket_path = NULL;
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	uint64_t v;
	int c, r;

	ensure_std_fds();
	cfg.workers = cpus > 0 ? (unsigned)cpus : 1;
	while ((c = getopt_long(argc, argv, "s:w:m:hV", opts, NULL)) != -1) {
		switch (c) {
		case 's':
			socket_path = optarg;
			break;
		case 'w':
			if (parse_u64("workers", optarg, 1, 1024, &v) < 0)
				return 2;
			cfg.workers = (unsigned)v;
			break;
		case 'm':
			if (parse_u64("max-tasks-per-child", optarg, 0, UINT64_MAX, &v) < 0)
				return 2;
			cfg.max_tasks_per_child = v;
			break;
		case O_FRAME:
			if (parse_u64("max-frame", optarg, 1024, 1ull << 30, &v) < 0)
				return 2;
			cfg.max_frame = v;
			break;
		case O_ITEMS:
			if (parse_u64("max-items", optarg, 1, UINT32_MAX, &v) < 0)
				return 2;
			cfg.max_items = v;
			break;
		case O_JOBS:
			if (parse_u64("max-jobs", optarg, 1, 1u << 20, &v) < 0)
				return 2;
			cfg.max_jobs_per_conn = (unsigned)v;
			break;
		case O_CLIENTS:
			if (parse_u64("max-clients", optarg, 1, 1u << 20, &v) < 0)
				return 2;
			cfg.max_clients = (unsigned)v;
			break;
		case O_DRAIN:
			if (parse_u64("drain-timeout", optarg, 0, 24u * 3600 * 1000, &v) < 0)
				return 2;
			cfg.drain_timeout_ms = (unsigned)v;
			break;
		case O_LOG:
			cfg.log_level = parse_level(optarg);
			if (cfg.log_level < 0) {
				fprintf(stderr, "mpoold: --log-level: expected error, warning, info or debug\n");
				return 2;
			}
			break;
		case O_MODULE:
			if (cfg.n_modules == CONFIG_MAX_MODULES) {
				fprintf(stderr, "mpoold: --module: at most %d modules\n", CONFIG_MAX_MODULES);
				return 2;
			}
			cfg.modules[cfg.n_modules++].path = optarg;
			break;
		case O_INITARGS:
			if (cfg.n_modules == 0 || cfg.modules[cfg.n_modules - 1].initargs_json) {
				fprintf(stderr, "mpoold: --initargs must follow the --module it belongs to\n");
				return 2;
			}
			cfg.modules[cfg.n_modules - 1].initargs_json = optarg;
			break;
		case O_TIMEOUT:
			if (parse_u64("task-timeout", optarg, 0, 24u * 3600 * 1000, &v) < 0)
				return 2;
			cfg.task_timeout_ms = (unsigned)v;
			break;
		case O_RSS:
			if (parse_u64("max-rss-per-child", optarg, 0, 1u << 20, &v) < 0)
				return 2;
			cfg.max_rss_mib = (unsigned)v;
			break;
		case O_LIFETIME:
			if (parse_u64("max-worker-lifetime", optarg, 0, 365u * 24 * 3600, &v) < 0)
				return 2;
			cfg.max_lifetime_s = (unsigned)v;
			break;
		case O_JITTER:
			if (parse_u64("max-tasks-jitter", optarg, 0, UINT64_MAX, &v) < 0)
				return 2;
			cfg.max_tasks_jitter = v;
			break;
		case O_RETRIES:
			if (parse_u64("max-retries", optarg, 0, 100, &v) < 0)
				return 2;
			cfg.max_retries = (unsigned)v;
			break;
		case O_RECOVERY:
			if (parse_u64("recovery-timeout", optarg, 0, 24u * 3600 * 1000, &v) < 0)
				return 2;
			cfg.recovery_timeout_ms = (unsigned)v;
			break;
		case 'h':
			usage(stdout);
			return 0;
		case 'V':
			printf("mpoold %s (protocol %d)\n", MPOOL_VERSION, 1);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "mpoold: unexpected argument '%s'\n", argv[optind]);
		usage(stderr);
		return 2;
	}
	log_init(cfg.log_level);
	if (socket_path) {
		if (strlen(socket_path) >= sizeof(cfg.socket_path)) {
			log_err("socket path too long (at most %zu bytes): %s",
				sizeof(cfg.socket_path) - 1, socket_path);
			return 1;
		}
		snprintf(cfg.socket_path, sizeof(cfg.socket_path), "%s", socket_path);
	} else if (mp_default_socket_path(cfg.socket_path, sizeof(cfg.socket_path)) < 0) {
		log_err("the default socket path is too long; pass --socket");
		return 1;
	}
	/* Modules load here, before master_run() forks: workers share them. */
	if (modload_all() < 0)
		return 1;
	r = master_run();
	modload_close_all();
	return r;
}
