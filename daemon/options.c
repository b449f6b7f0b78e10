#include "options.h"

#include <errno.h>
#include <grp.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

#include "config.h"

#define FIELD(f) offsetof(struct config, f), sizeof(((struct config *)0)->f)
#define DAY_MS (24ull * 3600 * 1000)

/* The order here is the order of --help, --print-config and the sample
 * config.  Adding a setting: a field in struct config, its default in
 * config.c, an entry here, a line in systemd/mpoold.conf and in
 * man/mpoold.conf.5.scd (test_systemd checks the sample against the table). */
const struct opt opt_table[] = {
	{ "config", 'c', OPT_CONFIG, OPT_CLI, NULL, "FILE", 0, 0, 0, 0,
	  MPOOL_CONFIG_FILE " if it exists",
	  "read settings from FILE; the command line overrides them" },
	{ "socket", 's', OPT_PATH, OPT_GLOBAL, NULL, "PATH", FIELD(socket_path), 0, 0,
	  "$MPOOL_SOCKET, else /run/mpool/mpoold.sock for root, else "
	  "$XDG_RUNTIME_DIR/mpool/mpoold.sock",
	  "the socket to create and listen on; a socket passed by systemd "
	  "(socket activation) is served instead" },
	{ "socket-mode", 0, OPT_MODE, OPT_GLOBAL, NULL, "MODE", FIELD(socket_mode), 0, 0777,
	  NULL, "permissions of the socket mpoold creates (octal); connecting needs write "
	  "permission" },
	{ "socket-group", 0, OPT_GROUP, OPT_GLOBAL, NULL, "GROUP", FIELD(socket_gid), 0, 0,
	  "the daemon's own group", "group of the socket mpoold creates (a name or a gid)" },
	{ "admin-group", 0, OPT_GROUP, OPT_GLOBAL, NULL, "GROUP", FIELD(admin_gid), 0, 0,
	  "none", "members may terminate, drain, reload, kill workers and cancel any job, "
	  "like root and mpoold's own user" },
	{ "workers", 'w', OPT_UINT, OPT_GLOBAL, NULL, "N", FIELD(workers), 0, 1024,
	  "the number of online CPUs", "worker processes (0: a cluster gateway that runs "
	  "nothing itself; needs --cluster-url)" },
	{ "max-tasks-per-child", 'm', OPT_UINT, OPT_GLOBAL, NULL, "N", FIELD(max_tasks_per_child),
	  0, UINT64_MAX, NULL, "recycle a worker after N tasks (0: never)" },
	{ "max-tasks-jitter", 0, OPT_UINT, OPT_GLOBAL, NULL, "N", FIELD(max_tasks_jitter),
	  0, UINT64_MAX, NULL, "draw each worker's quota from [max - N, max]" },
	{ "max-rss-per-child", 0, OPT_UINT, OPT_GLOBAL, NULL, "MIB", FIELD(max_rss_mib),
	  0, 1u << 20, NULL, "recycle a worker whose RSS passes MIB mebibytes (0: never)" },
	{ "max-worker-lifetime", 0, OPT_UINT, OPT_GLOBAL, NULL, "S", FIELD(max_lifetime_s),
	  0, 365u * 24 * 3600, NULL, "recycle a worker S seconds old (0: never)" },
	{ "task-timeout", 0, OPT_UINT, OPT_GLOBAL, NULL, "MS", FIELD(task_timeout_ms),
	  0, DAY_MS, NULL, "kill a chunk's worker when an item runs longer than MS "
	  "(0: no limit; a request may set its own)" },
	{ "max-retries", 0, OPT_UINT, OPT_GLOBAL, NULL, "N", FIELD(max_retries), 0, 100,
	  NULL, "the most retries a request may ask for" },
	{ "recovery-timeout", 0, OPT_UINT, OPT_GLOBAL, NULL, "MS", FIELD(recovery_timeout_ms),
	  0, DAY_MS, NULL, "fail queued work after MS without a ready worker" },
	{ "fork-server-timeout", 0, OPT_UINT, OPT_GLOBAL, NULL, "MS",
	  FIELD(fork_server_timeout_ms), 100, DAY_MS, NULL, "give up on a fork server that has "
	  "not loaded the task modules after MS; workers then fork from the master" },
	{ "max-frame", 0, OPT_UINT, OPT_GLOBAL, NULL, "BYTES", FIELD(max_frame),
	  1024, 1u << 30, NULL, "largest message accepted" },
	{ "max-items", 0, OPT_UINT, OPT_GLOBAL, NULL, "N", FIELD(max_items), 1, UINT32_MAX,
	  NULL, "most items in one map" },
	{ "max-jobs", 0, OPT_UINT, OPT_GLOBAL, NULL, "N", FIELD(max_jobs_per_conn), 1, 1u << 20,
	  NULL, "most open requests per connection" },
	{ "max-clients", 0, OPT_UINT, OPT_GLOBAL, NULL, "N", FIELD(max_clients), 1, 1u << 20,
	  NULL, "most client connections" },
	{ "max-clients-per-uid", 0, OPT_UINT, OPT_GLOBAL, NULL, "N", FIELD(max_clients_per_uid),
	  1, 1u << 20, NULL, "most client connections of one user who is not an admin" },
	{ "admin-clients", 0, OPT_UINT, OPT_GLOBAL, NULL, "N", FIELD(admin_clients), 0, 1u << 20,
	  NULL, "of --max-clients, connections only admins may take, so that status, "
	  "drain and terminate always get through" },
	{ "max-client-bytes", 0, OPT_UINT, OPT_GLOBAL, NULL, "BYTES", FIELD(max_client_bytes),
	  1024, (uint64_t)1 << 40, NULL, "most bytes the master holds for one client: a "
	  "message arriving, queued input, unsent output; at least --max-frame" },
	{ "max-total-bytes", 0, OPT_UINT, OPT_GLOBAL, NULL, "BYTES", FIELD(max_total_bytes),
	  1024, (uint64_t)1 << 40, NULL, "most bytes the master holds for all clients "
	  "together; at least --max-client-bytes" },
	{ "frame-timeout", 0, OPT_UINT, OPT_GLOBAL, NULL, "MS", FIELD(frame_timeout_ms), 0, DAY_MS,
	  NULL, "drop a client whose message has started and is not whole after MS "
	  "(0: no limit)" },
	{ "max-queued-chunks", 0, OPT_UINT, OPT_GLOBAL, NULL, "N", FIELD(max_queued_chunks),
	  1, UINT32_MAX, NULL, "most chunks waiting for a worker, across all jobs" },
	{ "max-queued-chunks-per-uid", 0, OPT_UINT, OPT_GLOBAL, NULL, "N",
	  FIELD(max_queued_chunks_per_uid), 1, UINT32_MAX, NULL,
	  "most chunks waiting for a worker from the jobs of one uid (admins: no share)" },
	{ "admin-queued-chunks", 0, OPT_UINT, OPT_GLOBAL, NULL, "N", FIELD(admin_queued_chunks),
	  0, UINT32_MAX, NULL, "of --max-queued-chunks, N only admins may fill" },
	{ "stream-window", 0, OPT_UINT, OPT_GLOBAL, NULL, "N", FIELD(stream_window), 1, UINT32_MAX,
	  NULL, "a streamed map has at most N items sent and not yet answered" },
	{ "stream-window-bytes", 0, OPT_UINT, OPT_GLOBAL, NULL, "BYTES", FIELD(stream_window_bytes),
	  1024, 1u << 30, NULL, "a streamed map holds at most BYTES of input" },
	{ "max-processes", 0, OPT_UINT, OPT_GLOBAL, NULL, "N", FIELD(max_processes), 1, 4096,
	  NULL, "most supervised processes (spawn) running at once" },
	{ "max-processes-per-uid", 0, OPT_UINT, OPT_GLOBAL, NULL, "N", FIELD(max_processes_per_uid),
	  1, 4096, NULL, "most processes one user runs at once (admins: no share)" },
	{ "admin-processes", 0, OPT_UINT, OPT_GLOBAL, NULL, "N", FIELD(admin_processes), 0, 4096,
	  NULL, "the last N of --max-processes are kept for admins" },
	{ "max-kept-processes", 0, OPT_UINT, OPT_GLOBAL, NULL, "N", FIELD(max_kept_processes),
	  1, 4096, NULL, "finished processes kept per user for join; past it that user's "
	  "oldest go, joined ones first" },
	{ "max-kept-bytes", 0, OPT_UINT, OPT_GLOBAL, NULL, "BYTES", FIELD(max_kept_bytes),
	  1024, 1u << 30, NULL, "the results one user's finished processes hold together; "
	  "a larger result is refused with limit" },
	{ "process-grace", 0, OPT_UINT, OPT_GLOBAL, NULL, "MS", FIELD(process_grace_ms), 0, DAY_MS,
	  NULL, "terminate_process sends SIGTERM, then SIGKILL after MS" },
	{ "drain-timeout", 0, OPT_UINT, OPT_GLOBAL, NULL, "MS", FIELD(drain_timeout_ms),
	  0, DAY_MS, NULL, "on SIGTERM, finish open work for at most MS, then terminate "
	  "and exit 3; keep it below the unit's TimeoutStopSec" },
	{ "cluster-url", 0, OPT_STRING, OPT_GLOBAL, NULL, "URLS", FIELD(cluster_url), 0, 0,
	  "none: one machine, no broker", "share work with other mpoold nodes through the "
	  "NATS JetStream servers at URLS (comma-separated, nats://HOST:PORT or "
	  "tls://HOST:PORT); without it nothing else in this group applies" },
	{ "cluster-name", 0, OPT_NAME, OPT_GLOBAL, NULL, "NAME", FIELD(cluster_name), 0, 0,
	  NULL, "nodes with the same NAME on the same servers share work" },
	{ "node-name", 0, OPT_NAME, OPT_GLOBAL, NULL, "NAME", FIELD(node_name), 0, 0,
	  "the host name", "this node's name in the cluster; unique within it" },
	{ "cluster-creds", 0, OPT_STRING, OPT_GLOBAL, NULL, "FILE", FIELD(cluster_creds), 0, 0,
	  "none", "a NATS credentials file (JWT and seed) this node logs in with" },
	{ "cluster-user-file", 0, OPT_STRING, OPT_GLOBAL, NULL, "FILE", FIELD(cluster_user_file),
	  0, 0, "none", "log in with the user name on FILE's first line and the password on "
	  "its second, so that no password is on a command line" },
	{ "cluster-ca", 0, OPT_STRING, OPT_GLOBAL, NULL, "FILE", FIELD(cluster_ca), 0, 0,
	  "the system's", "CA certificates (PEM) that verify the servers; setting it or "
	  "--cluster-cert requires TLS" },
	{ "cluster-cert", 0, OPT_STRING, OPT_GLOBAL, NULL, "FILE", FIELD(cluster_cert), 0, 0,
	  "none", "this node's TLS client certificate (PEM); needs --cluster-key" },
	{ "cluster-key", 0, OPT_STRING, OPT_GLOBAL, NULL, "FILE", FIELD(cluster_key), 0, 0,
	  "none", "the private key of --cluster-cert (PEM)" },
	{ "cluster-allow-plain", 0, OPT_UINT, OPT_GLOBAL, NULL, "0|1", FIELD(cluster_allow_plain),
	  0, 1, NULL, "1: allow nats:// (no TLS) to a host that is not loopback" },
	{ "cluster-replicas", 0, OPT_UINT, OPT_GLOBAL, NULL, "N", FIELD(cluster_replicas), 1, 5,
	  NULL, "copies of the work stream the servers keep (at most the servers in the "
	  "NATS cluster)" },
	{ "cluster-redelivery", 0, OPT_UINT, OPT_GLOBAL, NULL, "MS", FIELD(cluster_redelivery_ms),
	  1000, DAY_MS, NULL, "a chunk whose node stops confirming it runs again elsewhere "
	  "after MS" },
	{ "cluster-spread", 0, OPT_SPREAD, OPT_GLOBAL, NULL, "WHICH", FIELD(cluster_spread), 0, 0,
	  NULL, "which requests go to the cluster unless a request says: maps, all or none" },
	{ "log-level", 0, OPT_LEVEL, OPT_GLOBAL, NULL, "LEVEL", FIELD(log_level), 0, 0,
	  NULL, "error, warning, info or debug" },
	{ "module", 0, OPT_MODULE, OPT_SECTION, "path", "PATH", 0, 0, 0, 0, "none",
	  "load a task module (repeatable); in the config file, path = PATH in a "
	  "[module] section.  Modules on the command line replace the file's" },
	{ "initargs", 0, OPT_INITARGS, OPT_SECTION, "initargs", "JSON", 0, 0, 0, 0, "null",
	  "the initargs of the module before it; initargs = JSON in its [module] section" },
	{ "print-config", 0, OPT_ACTION, OPT_CLI, NULL, NULL, 0, 0, 0, 0, NULL,
	  "check the settings, print them as a config file and exit" },
	{ "help", 'h', OPT_ACTION, OPT_CLI, NULL, NULL, 0, 0, 0, 0, NULL, "this text" },
	{ "version", 'V', OPT_ACTION, OPT_CLI, NULL, NULL, 0, 0, 0, 0, NULL, "the version" },
};
const size_t opt_count = sizeof(opt_table) / sizeof(opt_table[0]);

static const struct { const char *name; int level; } levels[] = {
	{ "error", LOG_ERR }, { "warning", LOG_WARNING }, { "info", LOG_INFO },
	{ "debug", LOG_DEBUG },
};

static const char *const spreads[] = { "maps", "all", "none" };

static const char *opt_key(const struct opt *o)
{
	return o->key ? o->key : o->name;
}

const struct opt *opt_by_key(const char *section, const char *key)
{
	enum opt_scope want = section[0] ? OPT_SECTION : OPT_GLOBAL;

	if (section[0] && strcmp(section, "module") != 0)
		return NULL;
	for (size_t i = 0; i < opt_count; i++)
		if (opt_table[i].scope == want && strcmp(opt_key(&opt_table[i]), key) == 0)
			return &opt_table[i];
	return NULL;
}

static void *field(const struct opt *o)
{
	return (char *)&cfg + o->off;
}

static uint64_t get_uint(const struct opt *o)
{
	uint32_t v32;
	uint64_t v64;

	if (o->size == sizeof(v32)) {
		memcpy(&v32, field(o), sizeof(v32));
		return v32;
	}
	memcpy(&v64, field(o), sizeof(v64));
	return v64;
}

static void put_uint(const struct opt *o, uint64_t v)
{
	uint32_t v32 = (uint32_t)v;

	if (o->size == sizeof(v32) && o->max <= UINT32_MAX)
		memcpy(field(o), &v32, sizeof(v32));
	else if (o->size == sizeof(v))
		memcpy(field(o), &v, sizeof(v));
	else
		abort();        /* a bug in the table: the field cannot hold max */
}

static int parse_uint(const char *s, int base, uint64_t min, uint64_t max, uint64_t *ret)
{
	unsigned long long v;
	char *end;

	/* strtoull would take leading blanks and a minus sign (wrapping it). */
	if (s[0] < '0' || s[0] > '9')
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, base);
	if (errno || *end || v < min || v > max)
		return -ERANGE;
	*ret = v;
	return 0;
}

static int set_group(const struct opt *o, const char *s, char *why, size_t n)
{
	struct group gr, *res = NULL;
	char buf[4096];
	uint64_t id;
	gid_t gid;

	if (parse_uint(s, 10, 0, INT32_MAX, &id) == 0) {
		gid = (gid_t)id;
	} else {
		if (getgrnam_r(s, &gr, buf, sizeof(buf), &res) != 0 || !res) {
			snprintf(why, n, "no group named '%s'", s);
			return -1;
		}
		gid = res->gr_gid;
	}
	memcpy(field(o), &gid, sizeof(gid));
	return 0;
}

static int set_initargs(const char *s, char *why, size_t n)
{
	struct module_spec *m = &cfg.modules[cfg.n_modules - 1];
	json_error_t jerr;
	json_t *v;

	/* Checked here so a typo is reported with its file and line; modload
	 * converts it again when it loads the module. */
	v = json_loads(s, JSON_DECODE_ANY, &jerr);
	if (!v) {
		if (m->path)
			snprintf(why, n, "not JSON: %s (column %d), for module %s", jerr.text,
				 jerr.column, m->path);
		else
			snprintf(why, n, "not JSON: %s (column %d)", jerr.text, jerr.column);
		return -1;
	}
	json_decref(v);
	free(m->initargs_json);
	m->initargs_json = strdup(s);
	if (!m->initargs_json) {
		snprintf(why, n, "out of memory");
		return -1;
	}
	return 0;
}

int opt_set(const struct opt *o, const char *s, char *why, size_t n)
{
	struct module_spec *m;
	uint64_t v;

	switch (o->type) {
	case OPT_UINT:
		if (parse_uint(s, 10, o->min, o->max, &v) < 0) {
			snprintf(why, n, "expected an integer from %llu to %llu, got '%s'",
				 (unsigned long long)o->min, (unsigned long long)o->max, s);
			return -1;
		}
		put_uint(o, v);
		return 0;
	case OPT_MODE:
		if (parse_uint(s, 8, 0, o->max, &v) < 0) {
			snprintf(why, n, "expected octal permission bits such as 0660, got '%s'", s);
			return -1;
		}
		put_uint(o, v);
		return 0;
	case OPT_LEVEL:
		for (size_t i = 0; i < sizeof(levels) / sizeof(levels[0]); i++) {
			if (strcmp(s, levels[i].name) == 0) {
				memcpy(field(o), &levels[i].level, sizeof(int));
				return 0;
			}
		}
		snprintf(why, n, "expected error, warning, info or debug, got '%s'", s);
		return -1;
	case OPT_PATH:
		if (!s[0] || strlen(s) >= o->size) {
			snprintf(why, n, s[0] ? "path too long (%zu bytes, a socket path holds at most %zu)"
				 : "empty path", strlen(s), o->size - 1);
			return -1;
		}
		memcpy(field(o), s, strlen(s) + 1);
		return 0;
	case OPT_GROUP:
		return set_group(o, s, why, n);
	case OPT_MODULE:
		m = &cfg.modules[cfg.n_modules - 1];
		if (!s[0]) {
			snprintf(why, n, "empty path");
			return -1;
		}
		free(m->path);
		m->path = strdup(s);
		if (!m->path) {
			snprintf(why, n, "out of memory");
			return -1;
		}
		return 0;
	case OPT_INITARGS:
		return set_initargs(s, why, n);
	case OPT_STRING:
		if (!s[0] || strlen(s) >= o->size) {
			snprintf(why, n, s[0] ? "too long (%zu bytes, at most %zu)" : "empty",
				 strlen(s), o->size - 1);
			return -1;
		}
		memcpy(field(o), s, strlen(s) + 1);
		return 0;
	case OPT_NAME:
		if (!s[0] || strlen(s) >= o->size || s[strspn(s, "abcdefghijklmnopqrstuvwxyz"
				"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")]) {
			snprintf(why, n, "expected 1 to %zu letters, digits, '-' or '_', got '%s'",
				 o->size - 1, s);
			return -1;
		}
		memcpy(field(o), s, strlen(s) + 1);
		return 0;
	case OPT_SPREAD:
		for (unsigned i = 0; i < sizeof(spreads) / sizeof(spreads[0]); i++) {
			if (strcmp(s, spreads[i]) == 0) {
				memcpy(field(o), &i, sizeof(i));
				return 0;
			}
		}
		snprintf(why, n, "expected maps, all or none, got '%s'", s);
		return -1;
	case OPT_CONFIG:
	case OPT_ACTION:
		break;
	}
	snprintf(why, n, "not a setting");
	return -1;
}

/* The value of a setting as the config file spells it, or NULL when it has
 * none of its own (the default in words applies). */
static const char *value_text(const struct opt *o, char *buf, size_t n)
{
	struct group gr, *res = NULL;
	char grbuf[4096];
	gid_t gid;
	int level;

	switch (o->type) {
	case OPT_UINT:
		snprintf(buf, n, "%llu", (unsigned long long)get_uint(o));
		return buf;
	case OPT_MODE:
		snprintf(buf, n, "%04llo", (unsigned long long)get_uint(o));
		return buf;
	case OPT_LEVEL:
		memcpy(&level, field(o), sizeof(level));
		for (size_t i = 0; i < sizeof(levels) / sizeof(levels[0]); i++)
			if (levels[i].level == level)
				return levels[i].name;
		return NULL;
	case OPT_PATH:
	case OPT_STRING:
	case OPT_NAME:
		return *(const char *)field(o) ? (const char *)field(o) : NULL;
	case OPT_SPREAD:
		memcpy(&level, field(o), sizeof(level));
		return (unsigned)level < sizeof(spreads) / sizeof(spreads[0]) ? spreads[level] : NULL;
	case OPT_GROUP:
		memcpy(&gid, field(o), sizeof(gid));
		if (gid == (gid_t)-1)
			return NULL;
		if (getgrgid_r(gid, &gr, grbuf, sizeof(grbuf), &res) == 0 && res) {
			snprintf(buf, n, "%s", res->gr_name);
			return buf;
		}
		snprintf(buf, n, "%u", (unsigned)gid);
		return buf;
	default:
		return NULL;
	}
}

/* Prints text from column col on, wrapped at 79 columns, continuation lines
 * indented to indent. */
static void wrap(FILE *f, size_t col, size_t indent, const char *text)
{
	const char *p = text;

	while (*p) {
		size_t word = strcspn(p, " ");

		if (col > indent && col + 1 + word > 79) {
			fprintf(f, "\n%*s", (int)indent, "");
			col = indent;
		} else if (col > indent) {
			fputc(' ', f);
			col++;
		}
		fprintf(f, "%.*s", (int)word, p);
		col += word;
		p += word;
		while (*p == ' ')
			p++;
	}
	fputc('\n', f);
}

void opt_usage(FILE *f)
{
	enum { HELP_COL = 31 };

	fprintf(f, "usage: mpoold [OPTION]...\n"
		"Serve a pool of worker processes on a Unix socket.  Settings come from the\n"
		"config file (each option below is a key there; see mpoold.conf(5)), then\n"
		"from the command line, which wins.\n\n");
	for (size_t i = 0; i < opt_count; i++) {
		const struct opt *o = &opt_table[i];
		char head[64], text[512], buf[64];
		const char *def = o->dflt ? o->dflt : value_text(o, buf, sizeof(buf));
		int len;

		len = snprintf(head, sizeof(head), "  %c%c%s--%s%s%s", o->short_name ? '-' : ' ',
			       o->short_name ? o->short_name : ' ', o->short_name ? ", " : "  ",
			       o->name, o->metavar ? " " : "", o->metavar ? o->metavar : "");
		if (def && o->help[strlen(o->help) - 1] == ')')
			snprintf(text, sizeof(text), "%.*s; default: %s)",
				 (int)strlen(o->help) - 1, o->help, def);
		else if (def)
			snprintf(text, sizeof(text), "%s (default: %s)", o->help, def);
		else
			snprintf(text, sizeof(text), "%s", o->help);
		fputs(head, f);
		if (len + 1 > HELP_COL) {
			fprintf(f, "\n%*s", HELP_COL, "");
			len = HELP_COL;
		}
		fprintf(f, "%*s", HELP_COL - len, "");
		wrap(f, HELP_COL, HELP_COL, text);
	}
}

static void print_json_line(FILE *f, const char *key, const char *json)
{
	json_t *v = json_loads(json, JSON_DECODE_ANY, NULL);
	char *compact = v ? json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;

	/* One line, whatever whitespace the command line gave it. */
	fprintf(f, "%s = %s\n", key, compact ? compact : json);
	free(compact);
	json_decref(v);
}

void opt_print_config(FILE *f)
{
	fprintf(f, "# mpoold %s: the settings in effect (mpoold --print-config)\n", MPOOL_VERSION);
	for (size_t i = 0; i < opt_count; i++) {
		const struct opt *o = &opt_table[i];
		char buf[64];
		const char *v;

		if (o->scope != OPT_GLOBAL)
			continue;
		v = value_text(o, buf, sizeof(buf));
		if (v)
			fprintf(f, "%s = %s\n", opt_key(o), v);
		else
			fprintf(f, "#%s = (%s)\n", opt_key(o), o->dflt);
	}
	for (unsigned i = 0; i < cfg.n_modules; i++) {
		fprintf(f, "\n[module]\npath = %s\n", cfg.modules[i].path);
		if (cfg.modules[i].initargs_json)
			print_json_line(f, "initargs", cfg.modules[i].initargs_json);
	}
}
