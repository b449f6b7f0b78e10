/* mpctl-status: the readable form of mpoold's status map
 * (proto/PROTOCOL.md, "status"). */
#include "mpctl.h"

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "mp_name.h"

const msgpack_object *ctl_get(const msgpack_object *map, const char *key)
{
	size_t len = strlen(key);

	if (!map || map->type != MSGPACK_OBJECT_MAP)
		return NULL;
	for (uint32_t i = 0; i < map->via.map.size; i++) {
		const msgpack_object *k = &map->via.map.ptr[i].key;

		if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == len &&
		    memcmp(k->via.str.ptr, key, len) == 0)
			return &map->via.map.ptr[i].val;
	}
	return NULL;
}

static bool get_u64(const msgpack_object *map, const char *key, uint64_t *ret)
{
	const msgpack_object *v = ctl_get(map, key);

	if (!v || v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
		return false;
	*ret = v->via.u64;
	return true;
}

/* A signed integer as text, "-" when nil, "?" when absent. */
static const char *snum(char *buf, size_t size, const msgpack_object *map, const char *key)
{
	const msgpack_object *v = ctl_get(map, key);

	if (v && v->type == MSGPACK_OBJECT_NIL)
		return "-";
	if (v && v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
		snprintf(buf, size, "%lld", (long long)v->via.i64);
		return buf;
	}
	if (v && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
		snprintf(buf, size, "%llu", (unsigned long long)v->via.u64);
		return buf;
	}
	return "?";
}

/* An integer as text, "?" when absent. */
static const char *num(char *buf, size_t size, const msgpack_object *map, const char *key)
{
	uint64_t v;

	if (!get_u64(map, key, &v))
		return "?";
	snprintf(buf, size, "%llu", (unsigned long long)v);
	return buf;
}

/* A string as text, "?" when absent.  It goes to a terminal: control
 * characters (C0, DEL, C1), separators, bidirectional formatting and bytes
 * that are not UTF-8 are written as \xNN, each byte of them, so a
 * process name cannot move the cursor, rewrite the screen or hide what
 * follows it; a backslash is doubled so the escapes stay unambiguous.
 * Truncated to size on a character boundary. */
static const char *str(char *buf, size_t size, const msgpack_object *map, const char *key)
{
	const msgpack_object *v = ctl_get(map, key);
	const char *s;
	size_t n, i = 0, o = 0;

	if (!v || v->type != MSGPACK_OBJECT_STR)
		return "?";
	s = v->via.str.ptr;
	n = v->via.str.size;
	while (i < n) {
		size_t l = s[i] == '\\' ? 0 : mp_name_char(s + i, n - i);

		if (l > 0) {
			if (o + l >= size)
				break;
			memcpy(buf + o, s + i, l);
			o += l;
			i += l;
		} else if (s[i] == '\\') {
			if (o + 2 >= size)
				break;
			buf[o++] = '\\';
			buf[o++] = '\\';
			i++;
		} else {
			if (o + 4 >= size)
				break;
			snprintf(buf + o, size - o, "\\x%02x", (unsigned char)s[i]);
			o += 4;
			i++;
		}
	}
	buf[o] = '\0';
	return buf;
}

/* Milliseconds as "4.2s", "3m07s", "2h03m07s" or "5d02h03m". */
static const char *duration(char *buf, size_t size, const msgpack_object *map, const char *key)
{
	unsigned long long ms, s, m, h;
	uint64_t v;

	if (!get_u64(map, key, &v))
		return "?";
	ms = v;
	s = ms / 1000;
	m = s / 60;
	h = m / 60;
	if (s < 60)
		snprintf(buf, size, "%llu.%llus", s, ms % 1000 / 100);
	else if (m < 60)
		snprintf(buf, size, "%llum%02llus", m, s % 60);
	else if (h < 24)
		snprintf(buf, size, "%lluh%02llum%02llus", h, m % 60, s % 60);
	else
		snprintf(buf, size, "%llud%02lluh%02llum", h / 24, h % 24, m % 60);
	return buf;
}

/* Nothing from a daemon older than the key. */
static void print_fork_server(FILE *out, const msgpack_object *st)
{
	const msgpack_object *fs = ctl_get(st, "fork_server");
	char b[32];

	if (!fs)
		return;
	if (fs->type != MSGPACK_OBJECT_MAP) {
		fprintf(out, "fork server none: workers fork from the master\n");
		return;
	}
	fprintf(out, "fork server pid %s\n", num(b, sizeof(b), fs, "pid"));
}

/* One line for the budgets an operator checks when clients are refused:
 * what is in use beside its limit, and how often a limit said no. */
static void print_limits(FILE *out, const msgpack_object *st)
{
	const msgpack_object *lim = ctl_get(st, "limits"), *totals = ctl_get(st, "totals");
	const msgpack_object *hits = ctl_get(totals, "limits_hit");
	uint64_t hit = 0;
	char b[8][32];

	if (!lim || lim->type != MSGPACK_OBJECT_MAP)
		return;         /* a daemon older than the key */
	if (hits && hits->type == MSGPACK_OBJECT_MAP)
		for (uint32_t i = 0; i < hits->via.map.size; i++)
			if (hits->via.map.ptr[i].val.type == MSGPACK_OBJECT_POSITIVE_INTEGER)
				hit += hits->via.map.ptr[i].val.via.u64;
	fprintf(out, "limits: clients %s of %s (%s per uid, %s for admins); bytes held %s of %s; "
		"chunks queued %s of %s; %llu refused\n",
		num(b[0], sizeof(b[0]), totals, "clients"),
		num(b[1], sizeof(b[1]), lim, "clients_allowed"),
		num(b[2], sizeof(b[2]), lim, "max_clients_per_uid"),
		num(b[3], sizeof(b[3]), lim, "admin_clients"),
		num(b[4], sizeof(b[4]), totals, "client_bytes"),
		num(b[5], sizeof(b[5]), lim, "max_total_bytes"),
		num(b[6], sizeof(b[6]), totals, "chunks_queued"),
		num(b[7], sizeof(b[7]), lim, "max_queued_chunks"), (unsigned long long)hit);
}

static void print_summary(FILE *out, const msgpack_object *st)
{
	const msgpack_object *totals = ctl_get(st, "totals");
	const msgpack_object *by = ctl_get(totals, "recycled_by");
	const msgpack_object *failure = ctl_get(totals, "last_failure");
	char b[7][32], text[300];
	uint64_t quota;

	fprintf(out, "mpoold %s, pid %s, %s, up %s; pool %s workers, max-tasks-per-child %s\n",
		str(b[0], sizeof(b[0]), st, "version"), num(b[1], sizeof(b[1]), st, "pid"),
		str(b[2], sizeof(b[2]), st, "state"), duration(b[3], sizeof(b[3]), st, "uptime_ms"),
		num(b[4], sizeof(b[4]), totals, "workers"),
		get_u64(totals, "max_tasks_per_child", &quota) && quota == 0 ? "unlimited" :
		num(b[5], sizeof(b[5]), totals, "max_tasks_per_child"));
	fprintf(out, "tasks %s done, %s failed, %s timed out; jobs %s active, %s done, "
		"%s chunks queued; clients %s\n",
		num(b[0], sizeof(b[0]), totals, "tasks_done"),
		num(b[1], sizeof(b[1]), totals, "tasks_failed"),
		num(b[2], sizeof(b[2]), totals, "tasks_timed_out"),
		num(b[3], sizeof(b[3]), totals, "jobs_active"),
		num(b[4], sizeof(b[4]), totals, "jobs_done"),
		num(b[5], sizeof(b[5]), totals, "chunks_queued"),
		num(b[6], sizeof(b[6]), totals, "clients"));
	fprintf(out, "workers %s started, %s died, %s recycled (tasks %s, rss %s, lifetime %s, "
		"reload %s)\n",
		num(b[0], sizeof(b[0]), totals, "workers_started"),
		num(b[1], sizeof(b[1]), totals, "workers_died"),
		num(b[2], sizeof(b[2]), totals, "workers_recycled"),
		num(b[3], sizeof(b[3]), by, "tasks"), num(b[4], sizeof(b[4]), by, "rss"),
		num(b[5], sizeof(b[5]), by, "lifetime"), num(b[6], sizeof(b[6]), by, "reload"));
	fprintf(out, "health %s", str(b[0], sizeof(b[0]), totals, "health"));
	if (failure && failure->type == MSGPACK_OBJECT_STR)
		fprintf(out, "; last failure: %s", str(text, sizeof(text), totals, "last_failure"));
	fputc('\n', out);
	print_limits(out, st);
	print_fork_server(out, st);
}

static void print_workers(FILE *out, const msgpack_object *workers)
{
	char b[6][32];

	if (!workers || workers->type != MSGPACK_OBJECT_ARRAY)
		return;
	fprintf(out, "%8s  %-9s %8s %8s %10s %10s\n", "PID", "STATE", "TASKS", "JOB", "AGE",
		"RSS(KiB)");
	for (uint32_t i = 0; i < workers->via.array.size; i++) {
		const msgpack_object *w = &workers->via.array.ptr[i];
		const msgpack_object *job = ctl_get(w, "job");

		fprintf(out, "%8s  %-9s %8s %8s %10s %10s\n", num(b[0], sizeof(b[0]), w, "pid"),
			str(b[1], sizeof(b[1]), w, "state"), num(b[2], sizeof(b[2]), w, "tasks_done"),
			job && job->type == MSGPACK_OBJECT_NIL ? "-" : num(b[3], sizeof(b[3]), w, "job"),
			duration(b[4], sizeof(b[4]), w, "age_ms"), num(b[5], sizeof(b[5]), w, "rss_kib"));
	}
}

static void print_jobs(FILE *out, const msgpack_object *jobs)
{
	char b[9][64];

	if (!jobs || jobs->type != MSGPACK_OBJECT_ARRAY)
		return;
	fprintf(out, "%8s  %-5s %-24s %8s %6s %10s %8s %10s\n", "JOB", "KIND", "FUNCTION",
		"PID", "UID", "DONE", "FAILED", "AGE");
	for (uint32_t i = 0; i < jobs->via.array.size; i++) {
		const msgpack_object *j = &jobs->via.array.ptr[i];
		char done[132];

		snprintf(done, sizeof(done), "%s/%s", num(b[5], sizeof(b[5]), j, "done"),
			 num(b[6], sizeof(b[6]), j, "items"));
		fprintf(out, "%8s  %-5s %-24s %8s %6s %10s %8s %10s\n",
			num(b[0], sizeof(b[0]), j, "id"), str(b[1], sizeof(b[1]), j, "method"),
			str(b[2], sizeof(b[2]), j, "function"), num(b[3], sizeof(b[3]), j, "client_pid"),
			num(b[4], sizeof(b[4]), j, "client_uid"), done,
			num(b[7], sizeof(b[7]), j, "failed"), duration(b[8], sizeof(b[8]), j, "age_ms"));
	}
}

void ctl_print_processes(FILE *out, const msgpack_object *procs)
{
	char b[8][320];   /* 64 characters of up to 4 bytes, and escapes */

	if (!procs || procs->type != MSGPACK_OBJECT_ARRAY)
		return;
	fprintf(out, "%6s  %-16s %8s %6s %-8s %10s %8s  %s\n", "ID", "NAME", "PID", "OWNER",
		"STATE", "AGE", "EXITCODE", "FUNCTION");
	for (uint32_t i = 0; i < procs->via.array.size; i++) {
		const msgpack_object *pr = &procs->via.array.ptr[i];

		fprintf(out, "%6s  %-16s %8s %6s %-8s %10s %8s  %s\n",
			num(b[0], sizeof(b[0]), pr, "id"), str(b[1], sizeof(b[1]), pr, "name"),
			num(b[2], sizeof(b[2]), pr, "pid"), num(b[3], sizeof(b[3]), pr, "owner_uid"),
			str(b[4], sizeof(b[4]), pr, "state"), duration(b[5], sizeof(b[5]), pr, "age_ms"),
			snum(b[6], sizeof(b[6]), pr, "exitcode"),
			str(b[7], sizeof(b[7]), pr, "function"));
	}
}

/* mpctl nodes: the broker line, then one line per live node. */
static void print_nodes(FILE *out, const msgpack_object *cl)
{
	const msgpack_object *nodes = ctl_get(cl, "nodes");
	char b[8][32];

	if (!cl || cl->type != MSGPACK_OBJECT_MAP)
		return;
	fprintf(out, "broker %s", str(b[0], sizeof(b[0]), cl, "broker"));
	if (!nodes || nodes->type != MSGPACK_OBJECT_ARRAY) {
		fputc('\n', out);
		return;
	}
	fprintf(out, ", cluster %s, node %s: chunks sent %s, ran for others %s, redelivered %s, "
		"lost %s\n", str(b[1], sizeof(b[1]), cl, "cluster"), str(b[2], sizeof(b[2]), cl, "node"),
		num(b[3], sizeof(b[3]), cl, "chunks_sent"),
		num(b[4], sizeof(b[4]), cl, "chunks_ran_for_others"),
		num(b[5], sizeof(b[5]), cl, "chunks_redelivered"),
		num(b[6], sizeof(b[6]), cl, "chunks_lost"));
	fprintf(out, "%-32s %8s %6s %10s %10s\n", "NODE", "WORKERS", "IDLE", "TASKS", "LAST SEEN");
	for (uint32_t i = 0; i < nodes->via.array.size; i++) {
		const msgpack_object *n = &nodes->via.array.ptr[i];

		fprintf(out, "%-32s %8s %6s %10s %10s\n", str(b[0], sizeof(b[0]), n, "name"),
			num(b[1], sizeof(b[1]), n, "workers"), num(b[2], sizeof(b[2]), n, "idle"),
			num(b[3], sizeof(b[3]), n, "tasks_done"),
			duration(b[4], sizeof(b[4]), n, "last_seen_ms"));
	}
}

void ctl_print_status(FILE *out, const msgpack_object *st, int show)
{
	bool sep = false;

	if (show & CTL_SHOW_NODES) {
		print_nodes(out, ctl_get(st, "cluster"));
		sep = true;
	}

	if (show & CTL_SHOW_SUMMARY) {
		print_summary(out, st);
		sep = true;
	}
	if (show & CTL_SHOW_WORKERS) {
		if (sep)
			fputc('\n', out);
		print_workers(out, ctl_get(st, "workers"));
		sep = true;
	}
	if (show & CTL_SHOW_JOBS) {
		const msgpack_object *jobs = ctl_get(st, "jobs");

		if (show == CTL_SHOW_JOBS || (jobs && jobs->type == MSGPACK_OBJECT_ARRAY &&
					      jobs->via.array.size > 0)) {
			if (sep)
				fputc('\n', out);
			print_jobs(out, jobs);
			sep = true;
		}
	}
	if (show & CTL_SHOW_PROCS) {
		const msgpack_object *procs = ctl_get(st, "processes");

		if (show == CTL_SHOW_PROCS || (procs && procs->type == MSGPACK_OBJECT_ARRAY &&
					       procs->via.array.size > 0)) {
			if (sep)
				fputc('\n', out);
			ctl_print_processes(out, procs);
		}
	}
}
