/* mpctl: the command line for mpoold.  Each command reads and checks all of
 * its arguments before it connects, so a mistake sends nothing; only map
 * over stdin streams its input, reading lines as mpoold grants credit, so a
 * bad line stops the map where it is.  Results go to stdout as one compact
 * JSON value per line, everything else to stderr. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include <mpool/mpool.h>

#include "mp_json.h"
#include "mp_path.h"
#include "mpctl.h"

#define JSON_IN_FLAGS (JSON_DECODE_ANY | JSON_ALLOW_NUL)

static const char usage_text[] =
	"Usage: mpctl [-s PATH] COMMAND [ARGS]\n"
	"Talk to mpoold, the mpool process-pool daemon.\n"
	"\n"
	"Commands:\n"
	"  status [--json] [--watch [--interval MS] [--count N]]\n"
	"                         show the pool, its workers, its jobs and its\n"
	"                         supervised processes\n"
	"  top                    status --watch: redraw every second\n"
	"  workers [--json]       the workers: pid, state, tasks, job, age, RSS\n"
	"  jobs [--json]          the open jobs: id, function, client, progress\n"
	"  nodes [--json]         the cluster: broker state, and per node its\n"
	"                         workers, idle workers, tasks, last heartbeat\n"
	"  ping                   check that mpoold answers\n"
	"  apply [--timeout MS] [--retries N] [--spread | --local] FN JSON\n"
	"                         run FN (MODULE.FUNCTION) on one argument\n"
	"  map [--chunksize N] [--unordered] [--star] [--timeout MS] [--retries N]\n"
	"      [--spread | --local]\n"
	"      FN [JSON...]       run FN on every argument; with none, on one JSON\n"
	"                         value per line of stdin (blank lines skipped),\n"
	"                         read as the map goes: memory stays bounded\n"
	"  spawn [--detach | --daemon] [--name NAME] FN JSON\n"
	"                         run FN on one argument in a supervised process\n"
	"                         of its own (Python's Process); prints\n"
	"                         {\"id\":ID,\"pid\":PID}, waits for the process\n"
	"                         and reports like join.  Ctrl-C terminates the\n"
	"                         process, waits for its end and exits 130; a\n"
	"                         second Ctrl-C leaves at once.  --detach: return\n"
	"                         at once, the process runs to completion (join\n"
	"                         it later).  --daemon: Python's daemon=True, the\n"
	"                         process dies with mpctl (also if mpctl is killed)\n"
	"  ps [--json]            the supervised processes: id, name, pid, owner\n"
	"                         uid, state, age, exitcode, function\n"
	"  join [--timeout MS] ID wait for process ID to exit (at most MS); print\n"
	"                         its result, or its failure on stderr\n"
	"  terminate [--job ID | --worker PID | --process ID [--kill]]\n"
	"                         kill the workers and stop mpoold at once; or\n"
	"                         cancel one job (its client gets an error); or\n"
	"                         kill one worker (it is replaced); or terminate\n"
	"                         one process (SIGTERM, SIGKILL after mpoold's\n"
	"                         --process-grace; --kill: SIGKILL now)\n"
	"  drain                  finish open work, take no new work, then exit\n"
	"  reload                 reopen modules, replace every worker gracefully\n"
	"\n"
	"--timeout: per-item deadline; a worker past it is killed (timeout error).\n"
	"--retries: rerun items lost to a worker's death or a timeout elsewhere,\n"
	"           up to N times (only for tasks that are safe to run twice).\n"
	"--star:    each value is an array of arguments (Pool.starmap); anything\n"
	"           else is refused, with its line or argument number.\n"
	"--unordered: print results as they finish (Pool.imap_unordered).\n"
	"--spread, --local: on an mpoold in a cluster, let other nodes run the\n"
	"           request, or keep it on this machine (default: mpoold's\n"
	"           cluster-spread, which shares maps).\n"
	"\n"
	"Options:\n"
	"  -s, --socket PATH      mpoold's socket (default: $MPOOL_SOCKET, else\n"
	"                         /run/mpool/mpoold.sock for root, else\n"
	"                         $XDG_RUNTIME_DIR/mpool/mpoold.sock, else\n"
	"                         /tmp/mpool-UID/mpoold.sock)\n"
	"  -h, --help             show this help\n"
	"\n"
	"Results print as one compact JSON value per line; map prints them in item\n"
	"order (with --unordered, as they finish) and reports failed items on stderr.\n"
	"\n"
	"terminate, drain, reload and terminate --worker need root, mpoold's user\n"
	"or its admin group; a job's owner may cancel it, a process's owner may\n"
	"join and terminate it.\n"
	"\n"
	"mpctl talks only to a server run by root, by you, by the mpool system user\n"
	"or by the uid in $MPOOL_TRUST_UID: another user may have put a socket in\n"
	"its place.\n"
	"\n"
	"Exit status: 0 success, 1 the request or some items failed (or was\n"
	"refused), 2 usage error, 3 cannot connect or connection lost.\n"
	"join (and spawn without --detach): 0 the process exited 0, 1 it exited\n"
	"otherwise (\"exitcode N\" on stderr: a status, or minus a signal) or the\n"
	"join failed, 4 the timeout passed and the process still runs, 130 spawn\n"
	"was interrupted (Ctrl-C).  Interrupting join leaves the process running.\n";

__attribute__((format(printf, 1, 2)))
static int usage_error(const char *fmt, ...)
{
	va_list ap;

	fputs("mpctl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs("\nTry 'mpctl --help'.\n", stderr);
	return CTL_EXIT_USAGE;
}

/* getopt_long with mpctl's own messages; argv[0] is the command's name.
 * Returns the option, -1 at the end, or '?' after printing the error. */
static int next_opt(int argc, char **argv, const char *shortopts, const struct option *longopts)
{
	int c = getopt_long(argc, argv, shortopts, longopts, NULL);

	if (c == ':') {
		usage_error("option '%s' needs a value", argv[optind - 1]);
		return '?';
	}
	if (c == '?') {
		if (optopt)
			usage_error("unknown option '-%c'", optopt);
		else
			usage_error("unknown option '%s'", argv[optind - 1]);
	}
	return c;
}

/* Starts option parsing of a command's argv anew. */
static void opts_reset(void)
{
	optind = 0;
	opterr = 0;
}

static int exit_code(int r)
{
	switch (-r) {
	case MPOOL_E_SYS:
	case MPOOL_E_PROTO:
	case MPOOL_E_CLOSED:
		return CTL_EXIT_CONN;
	case MPOOL_E_INVAL:
		return CTL_EXIT_USAGE;
	default:
		return CTL_EXIT_FAILED;
	}
}

static int report(mpool *p, const char *what, int r)
{
	fprintf(stderr, "mpctl: %s: %s: %s\n", what, mpool_strerror(r), mpool_errmsg(p));
	return exit_code(r);
}

static mpool *connect_or_say(const char *path)
{
	char why[MPOOL_ERRMSG_MAX];
	mpool *p;

	if (mpool_connect(path, &p, why, sizeof(why)) == 0)
		return p;
	/* The reason names the socket path and the cause. */
	fprintf(stderr, "mpctl: %s\n", why);
	return NULL;
}

/* Flushes stdout and says so when the output could not be written. */
static int finish(int code)
{
	if (fflush(stdout) == EOF || ferror(stdout)) {
		fprintf(stderr, "mpctl: cannot write output: %s\n", strerror(errno));
		if (code == CTL_EXIT_OK)
			code = CTL_EXIT_FAILED;
	}
	return code;
}

/* Parses the options of a command that has none but -h, leaving optind at
 * its first argument.  -1 to go on, else the exit code. */
static int help_only(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	int c;

	opts_reset();
	while ((c = next_opt(argc, argv, "+:h", longopts)) != -1) {
		if (c != 'h')
			return CTL_EXIT_USAGE;
		fputs(usage_text, stdout);
		return finish(CTL_EXIT_OK);
	}
	return -1;
}

/* help_only, for a command that takes no arguments at all. */
static int no_args(int argc, char **argv)
{
	int r = help_only(argc, argv);

	if (r >= 0)
		return r;
	if (optind < argc)
		return usage_error("unexpected argument '%s'", argv[optind]);
	return -1;
}

static int cmd_ping(const char *sock, int argc, char **argv)
{
	mpool *p;
	int r;

	r = no_args(argc, argv);
	if (r >= 0)
		return r;
	p = connect_or_say(sock);
	if (!p)
		return CTL_EXIT_CONN;
	r = mpool_ping(p);
	if (r < 0)
		r = report(p, "ping", r);
	else
		puts("pong");
	mpool_close(p);
	return finish(r);
}

static int control(const char *sock, int argc, char **argv, const char *what,
		   int (*call)(mpool *))
{
	mpool *p;
	int r;

	r = no_args(argc, argv);
	if (r >= 0)
		return r;
	p = connect_or_say(sock);
	if (!p)
		return CTL_EXIT_CONN;
	r = call(p);
	if (r < 0)
		r = report(p, what, r);
	mpool_close(p);
	return r;
}

/* A whole number option from 0 to max (--timeout, --retries, --job ...). */
static int parse_u32_opt(const char *name, const char *arg, uint32_t max, uint32_t *ret)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(arg, &end, 10);
	if (errno || end == arg || *end || arg[0] == '-' || v > max) {
		usage_error("--%s needs a whole number from 0 to %u, not '%s'", name, max, arg);
		return -1;
	}
	*ret = (uint32_t)v;
	return 0;
}

/* A process id: a whole number from 1. */
static int parse_id(const char *name, const char *arg, uint64_t *ret)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(arg, &end, 10);
	if (errno || end == arg || *end || arg[0] == '-' || v == 0) {
		usage_error("%s needs a process id (a whole number from 1), not '%s'", name, arg);
		return -1;
	}
	*ret = v;
	return 0;
}

/* terminate --process ID [--kill]: SIGTERM (then SIGKILL after mpoold's
 * grace) or SIGKILL; returns once mpoold has sent it. */
static int stop_process(const char *sock, uint64_t id, bool hard)
{
	struct mpool_process *proc = NULL;
	mpool *p;
	int r;

	p = connect_or_say(sock);
	if (!p)
		return CTL_EXIT_CONN;
	r = mpool_process_attach(p, id, &proc);
	if (r == 0)
		r = hard ? mpool_process_kill(proc) : mpool_process_terminate(proc);
	if (r < 0)
		r = report(p, "terminate", r);
	mpool_process_free(proc);
	mpool_close(p);
	return r;
}

/* terminate: the whole pool, or one job (--job ID), or one worker
 * (--worker PID), or one process (--process ID). */
static int cmd_terminate(const char *sock, int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "job", required_argument, NULL, 'j' },
		{ "worker", required_argument, NULL, 'w' },
		{ "process", required_argument, NULL, 'p' },
		{ "kill", no_argument, NULL, 'k' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	uint32_t job = 0, worker = 0;
	uint64_t process = 0;
	bool has_job = false, has_worker = false, has_process = false, hard = false;
	mpool *p;
	int c, r;

	opts_reset();
	while ((c = next_opt(argc, argv, "+:h", longopts)) != -1) {
		switch (c) {
		case 'p':
			if (parse_id("process", optarg, &process) < 0)
				return CTL_EXIT_USAGE;
			has_process = true;
			break;
		case 'k':
			hard = true;
			break;
		case 'j':
			if (parse_u32_opt("job", optarg, UINT32_MAX, &job) < 0)
				return CTL_EXIT_USAGE;
			has_job = true;
			break;
		case 'w':
			if (parse_u32_opt("worker", optarg, INT32_MAX, &worker) < 0)
				return CTL_EXIT_USAGE;
			has_worker = true;
			break;
		case 'h':
			fputs(usage_text, stdout);
			return finish(CTL_EXIT_OK);
		default:
			return CTL_EXIT_USAGE;
		}
	}
	if (optind < argc)
		return usage_error("unexpected argument '%s'", argv[optind]);
	if (has_job + has_worker + has_process > 1)
		return usage_error("--job, --worker and --process exclude each other");
	if (hard && !has_process)
		return usage_error("--kill goes with --process");
	if (has_process)
		return stop_process(sock, process, hard);
	p = connect_or_say(sock);
	if (!p)
		return CTL_EXIT_CONN;
	if (has_job)
		r = mpool_cancel(p, job);
	else if (has_worker)
		r = mpool_kill_worker(p, (pid_t)worker);
	else
		r = mpool_terminate(p);
	if (r < 0)
		r = report(p, "terminate", r);
	mpool_close(p);
	return r;
}

static int cmd_drain(const char *sock, int argc, char **argv)
{
	return control(sock, argc, argv, "drain", mpool_drain);
}

static int cmd_reload(const char *sock, int argc, char **argv)
{
	return control(sock, argc, argv, "reload", mpool_reload);
}


/* status, workers, jobs and top: one status call, shown whole or in part,
 * once or every interval (--watch) until interrupted. */
static int show_status(const char *sock, int argc, char **argv, int show, const char *key,
		       bool watch)
{
	static const struct option longopts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "watch", no_argument, NULL, 'w' },
		{ "interval", required_argument, NULL, 'i' },
		{ "count", required_argument, NULL, 'n' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	bool json = false;
	uint32_t interval_ms = 1000, count = 0;
	mpool_value *v;
	mpool *p;
	int c, r = 0;

	opts_reset();
	while ((c = next_opt(argc, argv, "+:h", longopts)) != -1) {
		switch (c) {
		case 'j':
			json = true;
			break;
		case 'w':
			watch = true;
			break;
		case 'i':
			if (parse_u32_opt("interval", optarg, 3600000, &interval_ms) < 0 ||
			    interval_ms == 0)
				return usage_error("--interval needs milliseconds from 1");
			break;
		case 'n':
			if (parse_u32_opt("count", optarg, UINT32_MAX, &count) < 0)
				return CTL_EXIT_USAGE;
			break;
		case 'h':
			fputs(usage_text, stdout);
			return finish(CTL_EXIT_OK);
		default:
			return CTL_EXIT_USAGE;
		}
	}
	if (optind < argc)
		return usage_error("unexpected argument '%s'", argv[optind]);
	p = connect_or_say(sock);
	if (!p)
		return CTL_EXIT_CONN;
	for (uint32_t round = 0; !watch || count == 0 || round < count; round++) {
		struct timespec ts = { interval_ms / 1000, (long)(interval_ms % 1000) * 1000000 };

		if (round > 0)
			nanosleep(&ts, NULL);
		r = mpool_status(p, &v);
		if (r < 0) {
			r = report(p, "status", r);
			break;
		}
		if (watch && !json && isatty(STDOUT_FILENO))
			fputs("\033[H\033[2J", stdout);     /* redraw in place, like top */
		if (!json)
			ctl_print_status(stdout, mpool_value_get(v), show);
		else if (mjson_print(stdout, key ? ctl_get(mpool_value_get(v), key)
					  : mpool_value_get(v)) < 0)
			r = CTL_EXIT_FAILED;
		if (watch && !json)
			fputc('\n', stdout);
		fflush(stdout);
		mpool_value_free(v);
		if (!watch || r)
			break;
	}
	mpool_close(p);
	return finish(r);
}

static int cmd_status(const char *sock, int argc, char **argv)
{
	return show_status(sock, argc, argv, CTL_SHOW_ALL, NULL, false);
}

static int cmd_top(const char *sock, int argc, char **argv)
{
	return show_status(sock, argc, argv, CTL_SHOW_ALL, NULL, true);
}

static int cmd_workers(const char *sock, int argc, char **argv)
{
	return show_status(sock, argc, argv, CTL_SHOW_WORKERS, "workers", false);
}

static int cmd_jobs(const char *sock, int argc, char **argv)
{
	return show_status(sock, argc, argv, CTL_SHOW_JOBS, "jobs", false);
}

static int cmd_nodes(const char *sock, int argc, char **argv)
{
	return show_status(sock, argc, argv, CTL_SHOW_NODES, "cluster", false);
}

/* Parses one JSON text and appends it to pk; with star it must be an
 * array (of arguments).  0, CTL_EXIT_USAGE after saying what is wrong
 * (where names the place), or CTL_EXIT_FAILED when out of memory. */
static int pack_json_item(msgpack_packer *pk, const char *text, size_t len, const char *where,
			  bool star)
{
	json_error_t err;
	json_t *v = json_loadb(text, len, JSON_IN_FLAGS, &err);
	int r;

	if (!v) {
		fprintf(stderr, "mpctl: %s: invalid JSON: %s\n", where, err.text);
		return CTL_EXIT_USAGE;
	}
	if (star && !json_is_array(v)) {
		fprintf(stderr, "mpctl: %s: --star needs an array of arguments\n", where);
		json_decref(v);
		return CTL_EXIT_USAGE;
	}
	r = mjson_pack(v, pk);
	json_decref(v);
	if (r < 0) {
		fprintf(stderr, "mpctl: out of memory\n");
		return CTL_EXIT_FAILED;
	}
	return 0;
}

static int pack_json(msgpack_packer *pk, const char *text, size_t len, const char *where)
{
	return pack_json_item(pk, text, len, where, false);
}

/* The "FN JSON" that apply and spawn take after their options: packs the
 * JSON into *buf and connects.  -1 with both done, or an exit code after
 * saying what went wrong (nothing is left to free then). */
static int fn_and_arg(const char *sock, int argc, char **argv, const char *what,
		      msgpack_sbuffer *buf, mpool **ret)
{
	msgpack_packer pk;
	int r;

	if (argc - optind != 2)
		return usage_error("%s takes a function and one JSON argument", what);
	msgpack_sbuffer_init(buf);
	msgpack_packer_init(&pk, buf, msgpack_sbuffer_write);
	r = pack_json(&pk, argv[optind + 1], strlen(argv[optind + 1]), "argument");
	if (r) {
		msgpack_sbuffer_destroy(buf);
		return r;
	}
	*ret = connect_or_say(sock);
	if (!*ret) {
		msgpack_sbuffer_destroy(buf);
		return CTL_EXIT_CONN;
	}
	return -1;
}

static int cmd_apply(const char *sock, int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "timeout", required_argument, NULL, 't' },
		{ "retries", required_argument, NULL, 'r' },
		{ "spread", no_argument, NULL, 'P' },
		{ "local", no_argument, NULL, 'L' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	struct mpool_apply_opts opts = MPOOL_APPLY_OPTS();
	msgpack_sbuffer buf;
	mpool_value *v;
	mpool *p;
	int c, r;

	opts_reset();
	while ((c = next_opt(argc, argv, "+:h", longopts)) != -1) {
		switch (c) {
		case 't':
			if (parse_u32_opt("timeout", optarg, 86400000, &opts.timeout_ms) < 0)
				return CTL_EXIT_USAGE;
			break;
		case 'r':
			if (parse_u32_opt("retries", optarg, 100, &opts.retries) < 0)
				return CTL_EXIT_USAGE;
			break;
		case 'P':
		case 'L':
			if (opts.spread && opts.spread != (c == 'P' ? 1 : -1))
				return usage_error("--spread and --local exclude each other");
			opts.spread = c == 'P' ? 1 : -1;
			break;
		case 'h':
			fputs(usage_text, stdout);
			return finish(CTL_EXIT_OK);
		default:
			return CTL_EXIT_USAGE;
		}
	}
	r = fn_and_arg(sock, argc, argv, "apply", &buf, &p);
	if (r >= 0)
		return r;
	r = mpool_apply_with(p, argv[optind], buf.data, buf.size, &opts, &v);
	msgpack_sbuffer_destroy(&buf);
	if (r < 0) {
		r = report(p, "apply", r);
	} else {
		if (mjson_print(stdout, mpool_value_get(v)) < 0)
			r = CTL_EXIT_FAILED;
		mpool_value_free(v);
	}
	mpool_close(p);
	return finish(r);
}

/* The producer of a streamed map over stdin: one JSON value per line,
 * blank lines skipped, read only as mpoold grants credit. */
struct line_src {
	bool star;
	unsigned long long lineno;
	char *line;
	size_t cap;
	int fail;       /* the exit code, once the input stopped the map */
};

static int produce_line(void *userdata, msgpack_packer *pk)
{
	struct line_src *src = userdata;
	char where[48];
	ssize_t len;
	int r;

	for (;;) {
		errno = 0;
		len = getline(&src->line, &src->cap, stdin);
		if (len < 0) {
			if (!ferror(stdin) && errno != ENOMEM)
				return 0;
			fprintf(stderr, "mpctl: cannot read stdin: %s\n", strerror(errno));
			src->fail = CTL_EXIT_FAILED;
			return -MPOOL_E_SYS;
		}
		src->lineno++;
		if (strspn(src->line, " \t\r\n\f\v") < (size_t)len)
			break;
	}
	snprintf(where, sizeof(where), "line %llu", src->lineno);
	r = pack_json_item(pk, src->line, (size_t)len, where, src->star);
	if (r) {
		src->fail = r;
		return r == CTL_EXIT_USAGE ? -MPOOL_E_INVAL : -MPOOL_E_NOMEM;
	}
	return 1;
}

/* Prints results as the iterator yields them: results on stdout, failed
 * items on stderr.  stdout is flushed whenever the next result is not
 * there yet, so output streams without a write per line. */
static int print_results(mpool *p, mpool_iter *it, const struct line_src *src)
{
	struct mpool_item item;
	bool failed = false, broken = false;
	int r;

	for (;;) {
		r = mpool_iter_next(it, 0, &item);
		if (r == -MPOOL_E_TIMEOUT) {
			fflush(stdout);
			r = mpool_iter_next(it, -1, &item);
		}
		if (r != 1)
			break;
		if (item.code) {
			fprintf(stderr, "mpctl: item %llu: %s: %s\n", (unsigned long long)item.index,
				mpool_strerror(item.code), item.message);
			failed = true;
		} else if (mjson_print(stdout, item.result) < 0) {
			broken = true;
		}
	}
	if (broken)
		fprintf(stderr, "mpctl: some results could not be printed\n");
	if (src && src->fail)
		return src->fail;    /* the input stopped the map; it said why */
	if (r < 0)
		return report(p, "map", r);
	return failed || broken ? CTL_EXIT_FAILED : CTL_EXIT_OK;
}

static int cmd_map(const char *sock, int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "chunksize", required_argument, NULL, 'c' },
		{ "unordered", no_argument, NULL, 'u' },
		{ "star", no_argument, NULL, 'S' },
		{ "timeout", required_argument, NULL, 't' },
		{ "retries", required_argument, NULL, 'r' },
		{ "spread", no_argument, NULL, 'P' },
		{ "local", no_argument, NULL, 'L' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	struct mpool_map_opts opts = MPOOL_MAP_OPTS();
	struct line_src src = { 0 };
	msgpack_sbuffer buf;
	msgpack_packer pk;
	mpool_iter *it = NULL;
	uint64_t n = 0;
	const char *fn;
	mpool *p;
	int c, r = 0;

	opts_reset();
	while ((c = next_opt(argc, argv, "+:h", longopts)) != -1) {
		char *end;
		unsigned long long v;

		switch (c) {
		case 'c':
			errno = 0;
			v = strtoull(optarg, &end, 10);
			if (errno || end == optarg || *end || optarg[0] == '-' || v == 0 ||
			    v > UINT32_MAX)
				return usage_error("--chunksize needs a whole number from 1, not '%s'",
						   optarg);
			opts.chunksize = (uint32_t)v;
			break;
		case 'u':
			opts.unordered = 1;
			break;
		case 'S':
			src.star = true;
			break;
		case 't':
			if (parse_u32_opt("timeout", optarg, 86400000, &opts.timeout_ms) < 0)
				return CTL_EXIT_USAGE;
			break;
		case 'r':
			if (parse_u32_opt("retries", optarg, 100, &opts.retries) < 0)
				return CTL_EXIT_USAGE;
			break;
		case 'P':
		case 'L':
			if (opts.spread && opts.spread != (c == 'P' ? 1 : -1))
				return usage_error("--spread and --local exclude each other");
			opts.spread = c == 'P' ? 1 : -1;
			break;
		case 'h':
			fputs(usage_text, stdout);
			return finish(CTL_EXIT_OK);
		default:
			return CTL_EXIT_USAGE;
		}
	}
	if (optind >= argc)
		return usage_error("map needs a function");
	fn = argv[optind++];

	/* Arguments are all checked before anything is sent. */
	msgpack_sbuffer_init(&buf);
	msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
	for (; optind < argc && r == 0; optind++, n++) {
		char where[32];

		snprintf(where, sizeof(where), "argument %llu", (unsigned long long)n + 1);
		r = pack_json_item(&pk, argv[optind], strlen(argv[optind]), where, src.star);
	}
	if (r) {
		msgpack_sbuffer_destroy(&buf);
		return r;
	}
	p = connect_or_say(sock);
	if (!p) {
		msgpack_sbuffer_destroy(&buf);
		return CTL_EXIT_CONN;
	}
	/* stdin streams: lines are read as mpoold asks for items. */
	if (n == 0)
		r = mpool_imap_stream(p, fn, produce_line, &src, &opts, &it);
	else
		r = mpool_imap(p, fn, buf.data, buf.size, n, &opts, &it);
	msgpack_sbuffer_destroy(&buf);
	if (r < 0)
		r = report(p, "map", r);
	else
		r = print_results(p, it, n == 0 ? &src : NULL);
	mpool_iter_free(it);
	free(src.line);
	mpool_close(p);
	return finish(r);
}

/* ---- supervised processes ------------------------------------------------ */

/* Says how a process ended, the way join's exit status does: its result
 * on stdout, or its failure and exit code on stderr.  0 when it exited 0,
 * else 1. */
static int report_exit(mpool *p, struct mpool_process *proc)
{
	const msgpack_object *res;
	int code = 0, r;

	if (mpool_process_exitcode(proc, &code) < 0) {
		fprintf(stderr, "mpctl: process %llu: its exit code is unknown\n",
			(unsigned long long)mpool_process_id(proc));
		return CTL_EXIT_FAILED;
	}
	r = mpool_process_result(proc, &res);
	if (r == 0 && mjson_print(stdout, res) < 0)
		return CTL_EXIT_FAILED;
	if (r < 0)
		fprintf(stderr, "mpctl: process %llu: %s: %s\n",
			(unsigned long long)mpool_process_id(proc), mpool_strerror(r), mpool_errmsg(p));
	if (code == 0)
		return CTL_EXIT_OK;
	fprintf(stderr, "mpctl: process %llu: exitcode %d\n",
		(unsigned long long)mpool_process_id(proc), code);
	return CTL_EXIT_FAILED;
}

/* Waits for proc (timeout_ms negative: no limit) and reports it. */
static int join_and_report(mpool *p, struct mpool_process *proc, int timeout_ms)
{
	int r = mpool_process_join(proc, timeout_ms);

	if (r < 0)
		return report(p, "join", r);
	if (r == 0) {
		fprintf(stderr, "mpctl: process %llu (pid %d) is still running after %d ms\n",
			(unsigned long long)mpool_process_id(proc), (int)mpool_process_pid(proc),
			timeout_ms);
		return CTL_EXIT_RUNNING;
	}
	return report_exit(p, proc);
}

static volatile sig_atomic_t interrupts;

static void on_interrupt(int sig)
{
	(void)sig;
	interrupts++;
}

/* How often a waiting spawn looks at Ctrl-C: libmpool retries a wait that
 * a signal interrupts, so the wait is cut into joins this long. */
#define SPAWN_POLL_MS 200

/* spawn's wait: joins proc until it exits and reports it.  The first
 * Ctrl-C terminates the process (as a terminal's SIGINT would reach a
 * local child) and waits on for its end; the second leaves at once (the
 * process still gets mpoold's SIGKILL after --process-grace). */
static int spawn_wait(mpool *p, struct mpool_process *proc)
{
	bool stopping = false;
	int r;

	for (;;) {
		if (interrupts > 1)
			return CTL_EXIT_INTERRUPTED;
		if (interrupts && !stopping) {
			fprintf(stderr, "mpctl: interrupted: terminating process %llu (pid %d)\n",
				(unsigned long long)mpool_process_id(proc),
				(int)mpool_process_pid(proc));
			r = mpool_process_terminate(proc);
			if (r < 0)
				return report(p, "terminate", r);
			stopping = true;
		}
		r = mpool_process_join(proc, SPAWN_POLL_MS);
		if (r < 0)
			return report(p, "join", r);
		if (r == 1)
			break;
	}
	r = report_exit(p, proc);
	return stopping ? CTL_EXIT_INTERRUPTED : r;
}

static int cmd_spawn(const char *sock, int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "detach", no_argument, NULL, 'D' },
		{ "daemon", no_argument, NULL, 'd' },
		{ "name", required_argument, NULL, 'n' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	struct mpool_spawn_opts opts = MPOOL_SPAWN_OPTS();
	struct mpool_process *proc;
	msgpack_sbuffer buf;
	bool detach = false;
	mpool *p;
	int c, r;

	opts_reset();
	while ((c = next_opt(argc, argv, "+:h", longopts)) != -1) {
		switch (c) {
		case 'D':
			detach = true;
			break;
		case 'd':
			opts.daemon = 1;
			break;
		case 'n':
			opts.name = optarg;
			break;
		case 'h':
			fputs(usage_text, stdout);
			return finish(CTL_EXIT_OK);
		default:
			return CTL_EXIT_USAGE;
		}
	}
	/* A daemon process dies with mpctl's connection: left behind, it
	 * would be gone as mpctl returns. */
	if (detach && opts.daemon)
		return usage_error("spawn: --detach and --daemon exclude each other (a daemon "
				   "process dies when mpctl leaves)");
	r = fn_and_arg(sock, argc, argv, "spawn", &buf, &p);
	if (r >= 0)
		return r;
	/* Caught before the process exists, so that a Ctrl-C as soon as its
	 * id shows terminates it rather than leaving it behind. */
	if (!detach) {
		struct sigaction sa = { .sa_handler = on_interrupt };

		sigemptyset(&sa.sa_mask);
		if (sigaction(SIGINT, &sa, NULL) < 0) {
			fprintf(stderr, "mpctl: cannot catch SIGINT: %s\n", strerror(errno));
			msgpack_sbuffer_destroy(&buf);
			mpool_close(p);
			return finish(CTL_EXIT_FAILED);
		}
	}
	r = mpool_spawn(p, argv[optind], buf.data, buf.size, &opts, &proc);
	msgpack_sbuffer_destroy(&buf);
	if (r < 0) {
		r = report(p, "spawn", r);
		mpool_close(p);
		return finish(r);
	}
	printf("{\"id\":%llu,\"pid\":%d}\n", (unsigned long long)mpool_process_id(proc),
	       (int)mpool_process_pid(proc));
	/* Like Python's parent, which joins its children at exit; --detach
	 * leaves a non-daemon process to run to completion. */
	r = CTL_EXIT_OK;
	if (!detach) {
		fflush(stdout);
		r = spawn_wait(p, proc);
	}
	mpool_process_free(proc);
	mpool_close(p);
	return finish(r);
}

static int cmd_ps(const char *sock, int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	bool json = false;
	mpool_value *v;
	mpool *p;
	int c, r;

	opts_reset();
	while ((c = next_opt(argc, argv, "+:h", longopts)) != -1) {
		switch (c) {
		case 'j':
			json = true;
			break;
		case 'h':
			fputs(usage_text, stdout);
			return finish(CTL_EXIT_OK);
		default:
			return CTL_EXIT_USAGE;
		}
	}
	if (optind < argc)
		return usage_error("unexpected argument '%s'", argv[optind]);
	p = connect_or_say(sock);
	if (!p)
		return CTL_EXIT_CONN;
	r = mpool_processes(p, &v);
	if (r < 0) {
		r = report(p, "ps", r);
	} else {
		if (json) {
			if (mjson_print(stdout, mpool_value_get(v)) < 0)
				r = CTL_EXIT_FAILED;
		} else {
			ctl_print_processes(stdout, mpool_value_get(v));
		}
		mpool_value_free(v);
	}
	mpool_close(p);
	return finish(r);
}

static int cmd_join(const char *sock, int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "timeout", required_argument, NULL, 't' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	struct mpool_process *proc;
	uint32_t timeout = 0;
	bool has_timeout = false;
	uint64_t id;
	mpool *p;
	int c, r;

	opts_reset();
	while ((c = next_opt(argc, argv, "+:h", longopts)) != -1) {
		switch (c) {
		case 't':
			if (parse_u32_opt("timeout", optarg, INT32_MAX, &timeout) < 0)
				return CTL_EXIT_USAGE;
			has_timeout = true;
			break;
		case 'h':
			fputs(usage_text, stdout);
			return finish(CTL_EXIT_OK);
		default:
			return CTL_EXIT_USAGE;
		}
	}
	if (argc - optind != 1)
		return usage_error("join takes one process id");
	if (parse_id("join", argv[optind], &id) < 0)
		return CTL_EXIT_USAGE;
	p = connect_or_say(sock);
	if (!p)
		return CTL_EXIT_CONN;
	r = mpool_process_attach(p, id, &proc);
	if (r < 0) {
		r = report(p, "join", r);
	} else {
		r = join_and_report(p, proc, has_timeout ? (int)timeout : -1);
		mpool_process_free(proc);
	}
	mpool_close(p);
	return finish(r);
}

static const struct {
	const char *name;
	int (*run)(const char *sock, int argc, char **argv);
} commands[] = {
	{ "status", cmd_status },
	{ "top", cmd_top },
	{ "workers", cmd_workers },
	{ "jobs", cmd_jobs },
	{ "nodes", cmd_nodes },
	{ "ping", cmd_ping },
	{ "apply", cmd_apply },
	{ "map", cmd_map },
	{ "spawn", cmd_spawn },
	{ "ps", cmd_ps },
	{ "join", cmd_join },
	{ "terminate", cmd_terminate },
	{ "drain", cmd_drain },
	{ "reload", cmd_reload },
};

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	static char outbuf[1 << 16];
	const char *sock = NULL;
	int c;

	/* Results are written in bulk and flushed per map chunk. */
	setvbuf(stdout, outbuf, _IOFBF, sizeof(outbuf));
	opterr = 0;
	while ((c = next_opt(argc, argv, "+:s:h", longopts)) != -1) {
		switch (c) {
		case 's':
			sock = optarg;
			break;
		case 'h':
			fputs(usage_text, stdout);
			return finish(CTL_EXIT_OK);
		default:
			return CTL_EXIT_USAGE;
		}
	}
	if (optind >= argc)
		return usage_error("no command given");
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (strcmp(argv[optind], commands[i].name) == 0)
			return commands[i].run(sock, argc - optind, argv + optind);
	return usage_error("unknown command '%s'", argv[optind]);
}
