/* mp_scan: bounded MessagePack structure checks and a zero-copy cursor.
 *
 * The framing layer must never hand msgpack-c's unpacker a frame it has not
 * measured: the unpacker allocates count * sizeof(msgpack_object) for a
 * declared array before a single element arrives, and reports nesting past
 * 32 as out-of-memory.  mp_scan walks the byte stream with a fixed-size stack
 * and no allocation, so a frame is known to be complete, within the depth
 * limit and internally consistent (every declared element present) before
 * anything decodes it.  The master never decodes items at all: it uses the
 * cursor below to read envelopes and to slice items as raw bytes. */
#ifndef MP_SCAN_H
#define MP_SCAN_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

/* Hard ceiling on nesting; msgpack-c cannot unpack deeper than 32 levels. */
#define MP_DEPTH_MAX 32

/* A resumable scanner for one top-level element.  Zero-initialise with
 * mp_scan_init(); feed it the same growing buffer again and again. */
struct mp_scan {
	size_t off;                   /* bytes of the element already walked */
	/* When the last feed stopped inside a str, bin or ext: the element is
	 * at least this long (its payload is under way); else 0. */
	size_t need_to;
	uint32_t depth;               /* entries used in left[] */
	uint32_t max_depth;
	uint64_t left[MP_DEPTH_MAX + 1]; /* elements still due at each level */
};

void mp_scan_init(struct mp_scan *s, uint32_t max_depth);

/* Walk buf[0..len) from where the last call stopped.  buf must start at the
 * element's first byte and keep its earlier contents between calls.
 * Returns 1 when the element is complete (its length is s->off), 0 when more
 * bytes are needed, -EBADMSG for a byte that is no MessagePack type (0xc1),
 * -ELOOP when nesting exceeds max_depth. */
int mp_scan_feed(struct mp_scan *s, const uint8_t *buf, size_t len);

/* Length of the one complete element at buf (used on already scanned data
 * and by tests).  Returns the same codes as mp_scan_feed; *ret_len is
 * written only when the result is 1. */
int mp_scan_one(const uint8_t *buf, size_t len, uint32_t max_depth, size_t *ret_len);

/* A read cursor over bytes that hold whole elements (a scanned frame).
 * Every reader checks bounds and types; on failure it returns -EBADMSG and
 * leaves the cursor where it was. */
struct mp_cur {
	const uint8_t *p;
	const uint8_t *end;
};

enum mp_type {
	MP_T_NIL, MP_T_BOOL, MP_T_UINT, MP_T_INT, MP_T_FLOAT, MP_T_STR,
	MP_T_BIN, MP_T_ARRAY, MP_T_MAP, MP_T_EXT, MP_T_INVALID
};

static inline void mp_cur_init(struct mp_cur *c, const void *buf, size_t len)
{
	c->p = buf;
	c->end = c->p + len;
}

static inline bool mp_cur_done(const struct mp_cur *c)
{
	return c->p >= c->end;
}

enum mp_type mp_peek(const struct mp_cur *c);
int mp_read_array(struct mp_cur *c, uint32_t *ret_n);
int mp_read_map(struct mp_cur *c, uint32_t *ret_n);
/* Any integer that fits: positive fixint, uint*, and int* when >= 0. */
int mp_read_u64(struct mp_cur *c, uint64_t *ret);
int mp_read_i64(struct mp_cur *c, int64_t *ret);
int mp_read_bool(struct mp_cur *c, bool *ret);
int mp_read_nil(struct mp_cur *c);
/* *ret_s points into the buffer and is not NUL-terminated. */
int mp_read_str(struct mp_cur *c, const char **ret_s, uint32_t *ret_len);
/* Skip n whole elements; *ret_start and *ret_len (either may be NULL) receive
 * the raw bytes skipped. */
int mp_skip_n(struct mp_cur *c, uint64_t n, const uint8_t **ret_start, size_t *ret_len);
static inline int mp_skip(struct mp_cur *c, const uint8_t **ret_start, size_t *ret_len)
{
	return mp_skip_n(c, 1, ret_start, ret_len);
}

/* mp_skip_n that also notes where every every-th element ends: marks[k]
 * receives the offset from the cursor of the end of element (k + 1) * every,
 * for the n / every marks (marks must hold that many; every >= 1).  Lets a
 * caller that walks a run once find element boundaries later without
 * walking it again.  On failure the marks are garbage. */
int mp_skip_n_marked(struct mp_cur *c, uint64_t n, uint32_t every, size_t *marks,
		     const uint8_t **ret_start, size_t *ret_len);

/* True when str (len bytes) equals the NUL-terminated lit. */
bool mp_str_eq(const char *str, uint32_t len, const char *lit);

#endif
