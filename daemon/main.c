/* mpoold: a preforking process-pool daemon.  main() gathers the settings
 * (built-in defaults, then the config file, then the command line), takes
 * what systemd passed, loads the task modules and hands over to the master
 * loop.
 *
 * Exit status: 0 clean, 1 a failure at run time, 2 a usage or config file
 * error (the unit does not restart on 2: restarting cannot fix a typo), 3
 * a stop whose drain timed out (master.h).  Under socket activation a
 * config error first answers the waiting clients (cfgerr.h). */
#include <fcntl.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cfgerr.h"
#include "cfgfile.h"
#include "cluster.h"
#include "config.h"
#include "log.h"
#include "master.h"
#include "modload.h"
#include "mp_path.h"
#include "mp_rpc.h"
#include "notify.h"
#include "options.h"

#define EXIT_USAGE 2

/* getopt_long's view of the option table: an option without a short name
 * answers with 256 + its index. */
struct cli {
	struct option longopts[64];
	char shortopts[64];
};

static void cli_build(struct cli *cl)
{
	size_t k = 0;

	if (opt_count >= sizeof(cl->longopts) / sizeof(cl->longopts[0]))
		abort();                /* a bug: grow struct cli */
	for (size_t i = 0; i < opt_count; i++) {
		const struct opt *o = &opt_table[i];

		cl->longopts[i] = (struct option){
			o->name, o->metavar ? required_argument : no_argument, NULL,
			o->short_name ? o->short_name : 256 + (int)i,
		};
		if (o->short_name) {
			cl->shortopts[k++] = o->short_name;
			if (o->metavar)
				cl->shortopts[k++] = ':';
		}
	}
	cl->longopts[opt_count] = (struct option){ NULL, 0, NULL, 0 };
	cl->shortopts[k] = '\0';
}

static const struct opt *cli_opt(int c)
{
	if (c >= 256 && (size_t)(c - 256) < opt_count)
		return &opt_table[c - 256];
	for (size_t i = 0; i < opt_count; i++)
		if (opt_table[i].short_name && opt_table[i].short_name == c)
			return &opt_table[i];
	return NULL;
}

enum action { RUN, HELP, VERSION, PRINT_CONFIG };

/* First pass: only what decides what to read and do (--config, --help,
 * --version, --print-config); errors wait for the second pass. */
static enum action cli_scan(struct cli *cl, int argc, char **argv, const char **ret_config)
{
	enum action act = RUN;
	int c;

	opterr = 0;
	optind = 0;
	while ((c = getopt_long(argc, argv, cl->shortopts, cl->longopts, NULL)) != -1) {
		const struct opt *o = cli_opt(c);

		if (!o)
			continue;
		if (o->type == OPT_CONFIG)
			*ret_config = optarg;
		else if (strcmp(o->name, "help") == 0)
			return HELP;
		else if (strcmp(o->name, "version") == 0 && act == RUN)
			act = VERSION;
		else if (strcmp(o->name, "print-config") == 0)
			act = PRINT_CONFIG;
	}
	return act;
}

/* Second pass: every setting, over what the config file set. */
static int cli_apply(struct cli *cl, int argc, char **argv)
{
	bool cli_modules = false, initargs_ok = false;
	char why[256];
	int c;

	opterr = 1;
	optind = 0;
	while ((c = getopt_long(argc, argv, cl->shortopts, cl->longopts, NULL)) != -1) {
		const struct opt *o = cli_opt(c);

		if (!o) {
			fprintf(stderr, "Try 'mpoold --help'.\n");
			return -1;
		}
		if (o->type == OPT_CONFIG || o->type == OPT_ACTION)
			continue;
		if (o->type == OPT_MODULE) {
			/* The command line's modules replace the file's. */
			if (!cli_modules)
				config_modules_clear();
			cli_modules = true;
			if (!config_module_add()) {
				log_startup_err("--module: at most %d modules", CONFIG_MAX_MODULES);
				return -1;
			}
			initargs_ok = true;
		} else if (o->type == OPT_INITARGS) {
			if (!initargs_ok) {
				log_startup_err("--initargs must follow the --module it belongs to");
				return -1;
			}
			initargs_ok = false;
		}
		if (opt_set(o, optarg, why, sizeof(why)) < 0) {
			log_startup_err("--%s: %s", o->name, why);
			return -1;
		}
	}
	if (optind < argc) {
		log_startup_err("unexpected argument '%s'; try 'mpoold --help'", argv[optind]);
		return -1;
	}
	return 0;
}

/* Defaults that depend on the machine or the user, once nothing set them. */
static int apply_dynamic_defaults(void)
{
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	char why[512];

	if (cfg.workers == CONFIG_WORKERS_AUTO)
		cfg.workers = cpus > 0 ? (cpus > 1024 ? 1024 : (unsigned)cpus) : 1;
	/* Budgets that could not hold one message of --max-frame would refuse
	 * every large request; say so at start instead. */
	if (cfg.max_client_bytes < cfg.max_frame || cfg.max_total_bytes < cfg.max_client_bytes) {
		log_startup_err("max-frame (%zu) <= max-client-bytes (%zu) <= max-total-bytes (%zu) "
				"must hold", cfg.max_frame, cfg.max_client_bytes, cfg.max_total_bytes);
		return -1;
	}
	if (cluster_config_check(why, sizeof(why)) < 0) {
		log_startup_err("%s", why);
		return -1;
	}
	if (!cfg.socket_path[0] &&
	    mp_default_socket_path(cfg.socket_path, sizeof(cfg.socket_path)) < 0) {
		log_startup_err("the default socket path is too long; set socket or pass --socket");
		return -1;
	}
	return 0;
}

/* Descriptors 0-2 must exist, or a socket could land on them and be written
 * to as if it were stderr. */
static void ensure_std_fds(void)
{
	for (int fd = 0; fd < 3; fd++)
		if (fcntl(fd, F_GETFD) < 0 && open("/dev/null", O_RDWR) < 0)
			exit(1);
}

/* mpoold cannot start for the reason just logged.  Under socket activation
 * the clients waiting on the socket are told why before mpoold exits
 * (cfgerr.h); otherwise it exits now.  Returns the exit status. */
static int cannot_start(int status)
{
	int fd = notify_take_listen_fd();

	return fd < 0 ? status : cfgerr_serve(fd, log_last_error());
}

int main(int argc, char **argv)
{
	const char *config = NULL;
	struct cli cl;
	char why[512];
	enum action act;
	int r = 1;

	ensure_std_fds();
	log_init(cfg.log_level);
	cli_build(&cl);
	act = cli_scan(&cl, argc, argv, &config);
	if (act == HELP) {
		opt_usage(stdout);
		return 0;
	}
	if (act == VERSION) {
		printf("mpoold %s (protocol %d)\n", MPOOL_VERSION, MP_PROTO_VERSION);
		return 0;
	}
	if (cfgfile_load(config ? config : MPOOL_CONFIG_FILE, config != NULL, why,
			 sizeof(why)) < 0) {
		log_startup_err("%s", why);
		goto bad_config;
	}
	if (cli_apply(&cl, argc, argv) < 0 || apply_dynamic_defaults() < 0)
		goto bad_config;
	if (act == PRINT_CONFIG) {
		opt_print_config(stdout);
		config_modules_clear();
		return 0;
	}
	log_init(cfg.log_level);
	/* Modules load before master_run() starts anything: the master checks
	 * function names against them, and a bad module stops mpoold now,
	 * naming the file (a config error too: nothing a restart can fix).
	 * The fork server (forksrv.h) loads them again for its workers. */
	if (notify_init() == 0) {
		r = modload_all() == 0 ? master_run() : cannot_start(1);
		modload_close_all();
	}
	config_modules_clear();
	return r;

bad_config:
	config_modules_clear();
	return act == RUN && notify_init() == 0 ? cannot_start(EXIT_USAGE) : EXIT_USAGE;
}
