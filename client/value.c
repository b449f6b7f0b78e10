/* value: MessagePack crossing the API: checks on what the caller sends, and
 * the one place that runs msgpack-c's decoder on what the daemon sent. */
#include "libmpool-private.h"
#include "mp_mem.h"
#include "mp_obj.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* One zone owns everything the object points to: the copied bytes, and the
 * zones msgpack_unpack_next() made, through finalizers. */
struct mpool_value {
	msgpack_zone *zone;
	struct mpc_arena arena;
	msgpack_object obj;
};

mpool_value *mpc_value_new(void)
{
	mpool_value *v = calloc(1, sizeof(*v));

	if (!v)
		return NULL;
	v->zone = msgpack_zone_new(MSGPACK_ZONE_CHUNK_SIZE);
	if (!v->zone) {
		free(v);
		return NULL;
	}
	v->obj.type = MSGPACK_OBJECT_NIL;
	return v;
}

void mpool_value_free(mpool_value *v)
{
	if (!v)
		return;
	msgpack_zone_free(v->zone);
	free(v);
}

const msgpack_object *mpool_value_get(const mpool_value *v)
{
	return v ? &v->obj : NULL;
}

msgpack_zone *mpc_value_zone(mpool_value *v)
{
	return v->zone;
}

struct mpc_arena *mpc_value_arena(mpool_value *v)
{
	return &v->arena;
}

void mpc_value_set(mpool_value *v, const msgpack_object *obj)
{
	v->obj = *obj;
}

/* An mmap'ed block a zone owns. */
struct zone_map {
	void *addr;
	size_t len;
};

static void zone_unmap(void *arg)
{
	struct zone_map *m = arg;

	munmap(m->addr, m->len);
}

/* A mapping of filled memory (mp_map_filled) that zone owns; NULL when
 * out of memory. */
static void *zone_map_filled(msgpack_zone *zone, size_t len, size_t *ret_len)
{
	struct zone_map *m = msgpack_zone_malloc(zone, sizeof(*m));

	if (!m)
		return NULL;
	m->addr = mp_map_filled(len, &m->len);
	if (!m->addr)
		return NULL;
	if (!msgpack_zone_push_finalizer(zone, zone_unmap, m)) {
		munmap(m->addr, m->len);
		return NULL;
	}
	*ret_len = m->len;
	return m->addr;
}

msgpack_object *mpc_zone_objects(msgpack_zone *zone, size_t n)
{
	size_t len, mapped;

	if (n > SIZE_MAX / sizeof(msgpack_object))
		return NULL;
	len = n * sizeof(msgpack_object);
	if (len < MPC_HUGE_MIN)
		return msgpack_zone_malloc(zone, len ? len : 1);
	/* A big map's results: filled once, front to back, right after
	 * this.  In 4 KiB pages that is a page fault every 170 results. */
	return zone_map_filled(zone, len, &mapped);
}

static void zone_free(void *zone)
{
	msgpack_zone_free(zone);
}

int mpc_decode(msgpack_zone *zone, const uint8_t *bytes, size_t len, msgpack_object *ret)
{
	msgpack_unpacked up;
	size_t off = 0;
	char *copy;
	int r;

	copy = msgpack_zone_malloc(zone, len ? len : 1);
	if (!copy)
		return -MPOOL_E_NOMEM;
	memcpy(copy, bytes, len);
	msgpack_unpacked_init(&up);
	r = msgpack_unpack_next(&up, copy, len, &off);
	if (r == MSGPACK_UNPACK_NOMEM_ERROR) {
		msgpack_unpacked_destroy(&up);
		return -MPOOL_E_NOMEM;
	}
	if (r != MSGPACK_UNPACK_SUCCESS || off != len) {
		/* mp_frame already checked structure and depth: this is a
		 * decoder limit the scanner does not know of. */
		msgpack_unpacked_destroy(&up);
		return -MPOOL_E_PROTO;
	}
	/* The decoder makes its zone only when the value needs one. */
	if (up.zone) {
		if (!msgpack_zone_push_finalizer(zone, zone_free, up.zone)) {
			msgpack_unpacked_destroy(&up);
			return -MPOOL_E_NOMEM;
		}
		msgpack_unpacked_release_zone(&up);
	}
	*ret = up.data;
	return 0;
}

static void free_held(void *arg)
{
	free(*(void **)arg);
}

/* A copy of bytes[0..len) in arena's current mapping, or in a new one. */
static uint8_t *arena_copy(msgpack_zone *zone, struct mpc_arena *arena, const uint8_t *bytes,
			   size_t len)
{
	uint8_t *cp;
	size_t step;

	if ((size_t)(arena->end - arena->next) < len) {
		size_t mapped;
		uint8_t *m = zone_map_filled(zone, len > MPC_ARENA_CHUNK ? len : MPC_ARENA_CHUNK,
					     &mapped);

		if (!m)
			return NULL;
		arena->next = m;
		arena->end = m + mapped;
	}
	cp = arena->next;
	memcpy(cp, bytes, len);
	/* The next copy starts on a cache line: memcpy likes it. */
	step = (len + 63) & ~(size_t)63;
	arena->next = step < (size_t)(arena->end - cp) ? cp + step : arena->end;
	return cp;
}

/* bytes[0..len) for objects that point into them, for as long as zone
 * lives: the frame's own buffer when the framer gives it up (no copy of a
 * large chunk of strings), else a copy in arena or zone.  NULL when out of
 * memory. */
static const uint8_t *keep_bytes(msgpack_zone *zone, struct mpc_arena *arena,
				 struct mp_frame *frame, const uint8_t *bytes, size_t len)
{
	uint8_t *cp;

	if (frame && len >= MPC_ADOPT_MIN) {
		/* The finalizer is in place before the buffer changes hands,
		 * so a full zone cannot leave it with nobody to free it. */
		void **held = msgpack_zone_malloc(zone, sizeof(*held));

		if (held) {
			*held = NULL;
			if (msgpack_zone_push_finalizer(zone, free_held, held) &&
			    (*held = mp_frame_take(frame, len)) != NULL)
				return bytes;
		}
	}
	if (arena) {
		arena->kept += len;
		if (arena->kept >= MPC_ARENA_FROM)
			return arena_copy(zone, arena, bytes, len);
	}
	cp = msgpack_zone_malloc(zone, len);
	if (cp) {
		mp_populate(cp, len, MPC_POPULATE_MIN);   /* fresh memory, filled now */
		memcpy(cp, bytes, len);
	}
	return cp;
}

int mpc_decode_items(msgpack_zone *zone, struct mpc_arena *arena, struct mp_frame *frame,
		     const uint8_t *bytes, size_t len, uint32_t n, msgpack_object *out)
{
	const uint8_t *copy = NULL;
	struct mp_cur c;
	uint32_t count;
	size_t off;

	mp_cur_init(&c, bytes, len);
	if (mp_read_array(&c, &count) < 0 || count != n)
		return -MPOOL_E_PROTO;
	off = (size_t)(c.p - bytes);
	for (uint32_t i = 0; i < n; i++) {
		size_t one = off < len ? mp_obj_scalar(bytes + off, len - off, &out[i]) : 0;
		msgpack_unpack_return r;

		bool points = one > 0 && (out[i].type == MSGPACK_OBJECT_STR ||
					  out[i].type == MSGPACK_OBJECT_BIN) &&
			      out[i].via.str.size > 0;   /* an empty one points nowhere */

		/* Objects point into what they were decoded from, and bytes
		 * is the read buffer: anything that points (a string, a blob,
		 * a container) needs the bytes in zone first, copied once per
		 * array and only when such an item comes. */
		if (!copy && (one == 0 || points)) {
			copy = keep_bytes(zone, arena, frame, bytes, len);
			if (!copy)
				return -MPOOL_E_NOMEM;
		}
		if (one > 0) {
			if (points)
				out[i].via.str.ptr = (const char *)copy +
						     ((const uint8_t *)out[i].via.str.ptr - bytes);
			off += one;
			continue;
		}
		r = msgpack_unpack((const char *)copy, len, &off, zone, &out[i]);
		if (r == MSGPACK_UNPACK_NOMEM_ERROR)
			return -MPOOL_E_NOMEM;
		if (r != MSGPACK_UNPACK_SUCCESS && r != MSGPACK_UNPACK_EXTRA_BYTES)
			return -MPOOL_E_PROTO;
	}
	return off == len ? 0 : -MPOOL_E_PROTO;
}

int mpc_value_decode(const uint8_t *bytes, size_t len, mpool_value **ret)
{
	mpool_value *v = mpc_value_new();
	int r;

	if (!v)
		return -MPOOL_E_NOMEM;
	r = mpc_decode(v->zone, bytes, len, &v->obj);
	if (r < 0) {
		mpool_value_free(v);
		return r;
	}
	*ret = v;
	return 0;
}

/* An array's first byte: fixarray, array16, array32. */
static bool is_array(uint8_t b)
{
	return (b & 0xf0) == 0x90 || b == 0xdc || b == 0xdd;
}

int mpc_check_values(mpool *p, const char *what, const void *bytes, size_t len, uint64_t n,
		     bool star)
{
	const uint8_t *b = bytes;
	size_t off = 0, one;
	uint64_t i;
	int r;

	if (!b && len > 0)
		return mpc_err(p, MPOOL_E_INVAL, "%s: NULL buffer of %zu bytes", what, len);
	for (i = 0; i < n; i++) {
		r = mp_scan_one(b + off, len - off, MP_ITEM_DEPTH_MAX, &one);
		if (r == 1) {
			if (star && !is_array(b[off]))
				return mpc_err(p, MPOOL_E_INVAL, "%s: value %llu is not an array of arguments",
					       what, (unsigned long long)i);
			off += one;
			continue;
		}
		if (r == -ELOOP)
			return mpc_err(p, MPOOL_E_INVAL, "%s: value %llu nests deeper than %d levels",
				       what, (unsigned long long)i, MP_ITEM_DEPTH_MAX);
		if (r == 0)
			return mpc_err(p, MPOOL_E_INVAL, "%s: %llu bytes hold %llu whole values, not %llu",
				       what, (unsigned long long)len, (unsigned long long)i,
				       (unsigned long long)n);
		return mpc_err(p, MPOOL_E_INVAL, "%s: value %llu is not MessagePack", what,
			       (unsigned long long)i);
	}
	if (off != len)
		return mpc_err(p, MPOOL_E_INVAL, "%s: %zu bytes left after %llu values", what,
			       len - off, (unsigned long long)n);
	return 0;
}
