#include "summary.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <msgpack.h>

#include "disp.h"
#include "forksrv.h"
#include "master.h"
#include "mp_rpc.h"
#include "pool.h"

static bool str_is(const msgpack_object *o, const char *s)
{
	return o->type == MSGPACK_OBJECT_STR && mp_str_eq(o->via.str.ptr, o->via.str.size, s);
}

static const msgpack_object *get(const msgpack_object *map, const char *key)
{
	if (map->type != MSGPACK_OBJECT_MAP)
		return NULL;
	for (uint32_t i = 0; i < map->via.map.size; i++)
		if (str_is(&map->via.map.ptr[i].key, key))
			return &map->via.map.ptr[i].val;
	return NULL;
}

/* Appends to buf at *n, never past size. */
__attribute__((format(printf, 4, 5)))
static void add(char *buf, size_t size, size_t *n, const char *fmt, ...)
{
	va_list ap;
	int r;

	if (*n >= size)
		return;
	va_start(ap, fmt);
	r = vsnprintf(buf + *n, size - *n, fmt, ap);
	va_end(ap);
	*n = r < 0 ? size : *n + (size_t)r;
}

void summary_line(char *buf, size_t size, const char *phase)
{
	const msgpack_object *workers, *totals, *v;
	unsigned busy = 0, idle = 0, other = 0;
	unsigned long long tasks = 0;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	msgpack_unpacked up;
	size_t n = 0;

	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 2);
	mp_pack_cstr(&pk, "workers");
	pool_pack_workers(&pk);
	mp_pack_cstr(&pk, "totals");
	msgpack_pack_map(&pk, POOL_TOTALS_KEYS);
	pool_pack_totals(&pk);
	msgpack_unpacked_init(&up);
	buf[0] = '\0';
	add(buf, size, &n, "%s", phase ? phase : master_state_name());
	if (!sb.data || msgpack_unpack_next(&up, sb.data, sb.size, NULL) != MSGPACK_UNPACK_SUCCESS)
		goto out;
	workers = get(&up.data, "workers");
	totals = get(&up.data, "totals");
	if (workers && workers->type == MSGPACK_OBJECT_ARRAY) {
		for (uint32_t i = 0; i < workers->via.array.size; i++) {
			v = get(&workers->via.array.ptr[i], "state");
			if (v && str_is(v, "busy"))
				busy++;
			else if (v && str_is(v, "idle"))
				idle++;
			else
				other++;
		}
	}
	v = totals ? get(totals, "tasks_done") : NULL;
	if (v && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
		tasks = v->via.u64;
	add(buf, size, &n, "; workers %u busy, %u idle", busy, idle);
	if (other)
		add(buf, size, &n, ", %u starting or exiting", other);
	/* New workers wait for it (a Python import may take a while). */
	if (forksrv_loading())
		add(buf, size, &n, "; loading the task modules");
	add(buf, size, &n, "; %u jobs, %llu chunks queued; %llu tasks done", disp_active(),
	    (unsigned long long)disp_chunks_queued(), tasks);
	v = totals ? get(totals, "health") : NULL;
	if (v && v->type == MSGPACK_OBJECT_STR && !str_is(v, "ok")) {
		const msgpack_object *why = get(totals, "last_failure");

		add(buf, size, &n, "; %.*s", (int)v->via.str.size, v->via.str.ptr);
		if (why && why->type == MSGPACK_OBJECT_STR)
			add(buf, size, &n, ": %.*s", (int)why->via.str.size, why->via.str.ptr);
	}
out:
	/* STATUS= is one line. */
	for (char *p = buf; (p = strchr(p, '\n')) != NULL; p++)
		*p = ' ';
	msgpack_unpacked_destroy(&up);
	msgpack_sbuffer_destroy(&sb);
}
