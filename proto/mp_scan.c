/* mp_scan: see mp_scan.h.  The format table follows the MessagePack spec:
 * https://github.com/msgpack/msgpack/blob/master/spec.md */
#include "mp_scan.h"

#include <errno.h>
#include <string.h>

static inline uint64_t be(const uint8_t *p, unsigned n)
{
	uint64_t v = 0;
	for (unsigned i = 0; i < n; i++)
		v = (v << 8) | p[i];
	return v;
}

/* Decode the header at p (avail bytes).  On success sets *hdr (header bytes),
 * *payload (bytes after the header that belong to this element, for scalars)
 * and *children (elements nested inside, for arrays and maps).
 * Returns 1, 0 when the header itself is incomplete, -EBADMSG for 0xc1. */
static int head(const uint8_t *p, size_t avail, size_t *hdr, uint64_t *payload,
		uint64_t *children)
{
	uint8_t b;
	unsigned lenbytes = 0, extra = 0;

	if (avail < 1)
		return 0;
	b = p[0];
	*payload = 0;
	*children = 0;
	*hdr = 1;
	if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3)
		return 1;
	if ((b & 0xe0) == 0xa0) {            /* fixstr */
		*payload = b & 0x1f;
		return 1;
	}
	if ((b & 0xf0) == 0x90) {            /* fixarray */
		*children = b & 0x0f;
		return 1;
	}
	if ((b & 0xf0) == 0x80) {            /* fixmap */
		*children = 2ull * (b & 0x0f);
		return 1;
	}
	switch (b) {
	case 0xc4: case 0xd9: lenbytes = 1; break;            /* bin8 str8 */
	case 0xc5: case 0xda: lenbytes = 2; break;            /* bin16 str16 */
	case 0xc6: case 0xdb: lenbytes = 4; break;            /* bin32 str32 */
	case 0xc7: lenbytes = 1; extra = 1; break;            /* ext8 */
	case 0xc8: lenbytes = 2; extra = 1; break;            /* ext16 */
	case 0xc9: lenbytes = 4; extra = 1; break;            /* ext32 */
	case 0xca: case 0xce: case 0xd2: *payload = 4; return 1;
	case 0xcb: case 0xcf: case 0xd3: *payload = 8; return 1;
	case 0xcc: case 0xd0: *payload = 1; return 1;
	case 0xcd: case 0xd1: *payload = 2; return 1;
	case 0xd4: *payload = 2; return 1;                    /* fixext1 */
	case 0xd5: *payload = 3; return 1;
	case 0xd6: *payload = 5; return 1;
	case 0xd7: *payload = 9; return 1;
	case 0xd8: *payload = 17; return 1;
	case 0xdc: case 0xdd: {                               /* array16/32 */
		unsigned n = b == 0xdc ? 2 : 4;
		if (avail < 1 + n)
			return 0;
		*hdr = 1 + n;
		*children = be(p + 1, n);
		return 1;
	}
	case 0xde: case 0xdf: {                               /* map16/32 */
		unsigned n = b == 0xde ? 2 : 4;
		if (avail < 1 + n)
			return 0;
		*hdr = 1 + n;
		*children = 2 * be(p + 1, n);
		return 1;
	}
	default:
		return -EBADMSG;                              /* 0xc1 */
	}
	if (avail < 1 + lenbytes)
		return 0;
	*hdr = 1 + lenbytes;
	*payload = be(p + 1, lenbytes) + extra;
	return 1;
}

/* Total size (header and payload) of the elements whose first byte alone
 * fixes it: fixints, nil, booleans, fixstr, fixed-width ints and floats,
 * fixext; 0 for containers, variable-length types and 0xc1.  Most items
 * are such scalars, so the walkers take them from here before head(). */
#define R16(v) v, v, v, v, v, v, v, v, v, v, v, v, v, v, v, v
static const uint8_t scalar_size[256] = {
	R16(1), R16(1), R16(1), R16(1), R16(1), R16(1), R16(1), R16(1), /* 0x00-0x7f */
	R16(0), R16(0),                                                  /* fixmap, fixarray */
	1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,           /* fixstr 0-15 */
	17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32,  /* fixstr 16-31 */
	[0xc0] = 1, [0xc2] = 1, [0xc3] = 1,                              /* nil, false, true */
	[0xca] = 5, [0xcb] = 9,                                          /* float32/64 */
	[0xcc] = 2, [0xcd] = 3, [0xce] = 5, [0xcf] = 9,                  /* uint8-64 */
	[0xd0] = 2, [0xd1] = 3, [0xd2] = 5, [0xd3] = 9,                  /* int8-64 */
	[0xd4] = 3, [0xd5] = 4, [0xd6] = 6, [0xd7] = 10, [0xd8] = 18,    /* fixext */
	[0xe0] = R16(1), R16(1),                                         /* negative fixint */
};
#undef R16

/* Total size of a str or bin at p (avail >= 1 bytes) whose length field is
 * within avail; 0 for anything else (ext, containers, 0xc1, a cut length
 * field), which head() then decides.  Tried only where scalar_size says 0,
 * so runs of ints do not pay for it. */
static inline uint64_t raw_len(const uint8_t *p, size_t avail)
{
	switch (p[0]) {
	case 0xc4: case 0xd9:
		return avail >= 2 ? 2 + (uint64_t)p[1] : 0;
	case 0xc5: case 0xda:
		return avail >= 3 ? 3 + be(p + 1, 2) : 0;
	case 0xc6: case 0xdb:
		return avail >= 5 ? 5 + be(p + 1, 4) : 0;
	default:
		return 0;
	}
}

static inline bool is_container(uint8_t b)
{
	return (b & 0xe0) == 0x80 || (b >= 0xdc && b <= 0xdf);   /* fixmap, fixarray, 16/32 */
}

/* Called once per frame on every stream: only what mp_scan_feed reads
 * before writing is set (left[i] is written when depth reaches i + 1). */
void mp_scan_init(struct mp_scan *s, uint32_t max_depth)
{
	s->off = 0;
	s->need_to = 0;
	s->max_depth = max_depth > MP_DEPTH_MAX ? MP_DEPTH_MAX : max_depth;
	s->left[0] = 1;
	s->depth = 1;
}

/* Invariant: s->off is always at an element boundary, so a call that runs
 * out of bytes costs only a header re-read next time, never a rescan. */
int mp_scan_feed(struct mp_scan *s, const uint8_t *buf, size_t len)
{
	while (s->depth > 0) {
		size_t hdr;
		uint64_t payload, children;
		int r;

		if (s->left[s->depth - 1] == 0) {
			s->depth--;
			continue;
		}
		if (s->off >= len)
			return 0;
		/* Fast path: a run of fixed-size scalars at this level. */
		{
			/* Locals: buf may alias anything, so the compiler would
			 * reload fields of s after every read of it. */
			uint64_t left = s->left[s->depth - 1], rl;
			size_t off = s->off, sz;

			while (left > 0 && off < len &&
			       (sz = scalar_size[buf[off]]) != 0 && sz <= len - off) {
				off += sz;
				left--;
			}
			s->off = off;
			s->left[s->depth - 1] = left;
			if (left == 0)
				continue;
			if (off >= len)
				return 0;
			/* A str or bin: no need for the full decode either. */
			rl = raw_len(buf + off, len - off);
			if (rl > 0) {
				if (rl > len - off) {
					s->need_to = off + (size_t)rl;
					return 0;
				}
				s->off += (size_t)rl;
				s->left[s->depth - 1]--;
				continue;
			}
		}
		r = head(buf + s->off, len - s->off, &hdr, &payload, &children);
		if (r <= 0)
			return r;
		if (payload > len - s->off - hdr) {
			s->need_to = s->off + hdr + (size_t)payload;
			return 0;
		}
		/* Every container counts against the depth, empty or not:
		 * msgpack-c refuses the 33rd level before it reads the count. */
		if (is_container(buf[s->off]) && s->depth >= s->max_depth + 1)
			return -ELOOP;
		s->left[s->depth - 1]--;
		s->off += hdr + payload;
		if (children > 0)
			s->left[s->depth++] = children;
	}
	return 1;
}

int mp_scan_one(const uint8_t *buf, size_t len, uint32_t max_depth, size_t *ret_len)
{
	struct mp_scan s;
	int r;

	/* A lone scalar (a worker checks every result it packs): no walk. */
	if (len > 0 && scalar_size[buf[0]] != 0 && scalar_size[buf[0]] <= len) {
		*ret_len = scalar_size[buf[0]];
		return 1;
	}
	mp_scan_init(&s, max_depth);
	r = mp_scan_feed(&s, buf, len);
	if (r == 1)
		*ret_len = s.off;
	return r;
}

enum mp_type mp_peek(const struct mp_cur *c)
{
	uint8_t b;

	if (c->p >= c->end)
		return MP_T_INVALID;
	b = *c->p;
	if (b <= 0x7f)
		return MP_T_UINT;
	if (b >= 0xe0)
		return MP_T_INT;
	if ((b & 0xe0) == 0xa0)
		return MP_T_STR;
	if ((b & 0xf0) == 0x90)
		return MP_T_ARRAY;
	if ((b & 0xf0) == 0x80)
		return MP_T_MAP;
	switch (b) {
	case 0xc0: return MP_T_NIL;
	case 0xc2: case 0xc3: return MP_T_BOOL;
	case 0xc4: case 0xc5: case 0xc6: return MP_T_BIN;
	case 0xc7: case 0xc8: case 0xc9: return MP_T_EXT;
	case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8: return MP_T_EXT;
	case 0xca: case 0xcb: return MP_T_FLOAT;
	case 0xcc: case 0xcd: case 0xce: case 0xcf: return MP_T_UINT;
	case 0xd0: case 0xd1: case 0xd2: case 0xd3: return MP_T_INT;
	case 0xd9: case 0xda: case 0xdb: return MP_T_STR;
	case 0xdc: case 0xdd: return MP_T_ARRAY;
	case 0xde: case 0xdf: return MP_T_MAP;
	default: return MP_T_INVALID;
	}
}

static int read_container(struct mp_cur *c, uint32_t *ret_n, uint8_t fixmask,
			  uint8_t b16)
{
	size_t avail = (size_t)(c->end - c->p);
	uint8_t b;

	if (avail < 1)
		return -EBADMSG;
	b = *c->p;
	if ((b & 0xf0) == fixmask) {
		*ret_n = b & 0x0f;
		c->p += 1;
		return 0;
	}
	if (b == b16 && avail >= 3) {
		*ret_n = (uint32_t)be(c->p + 1, 2);
		c->p += 3;
		return 0;
	}
	if (b == b16 + 1 && avail >= 5) {
		*ret_n = (uint32_t)be(c->p + 1, 4);
		c->p += 5;
		return 0;
	}
	return -EBADMSG;
}

int mp_read_array(struct mp_cur *c, uint32_t *ret_n)
{
	return read_container(c, ret_n, 0x90, 0xdc);
}

int mp_read_map(struct mp_cur *c, uint32_t *ret_n)
{
	return read_container(c, ret_n, 0x80, 0xde);
}

/* Reads any integer encoding into a sign flag and magnitude-free form:
 * *neg tells whether *v holds an int64 below zero. */
static int read_int(struct mp_cur *c, uint64_t *v, bool *neg)
{
	size_t avail = (size_t)(c->end - c->p);
	unsigned n;
	uint8_t b;

	if (avail < 1)
		return -EBADMSG;
	b = *c->p;
	*neg = false;
	if (b <= 0x7f) {
		*v = b;
		c->p += 1;
		return 0;
	}
	if (b >= 0xe0) {
		*v = (uint64_t)(int64_t)(int8_t)b;
		*neg = true;
		c->p += 1;
		return 0;
	}
	switch (b) {
	case 0xcc: case 0xd0: n = 1; break;
	case 0xcd: case 0xd1: n = 2; break;
	case 0xce: case 0xd2: n = 4; break;
	case 0xcf: case 0xd3: n = 8; break;
	default: return -EBADMSG;
	}
	if (avail < 1 + n)
		return -EBADMSG;
	*v = be(c->p + 1, n);
	if (b >= 0xd0) {                 /* signed: sign-extend */
		unsigned shift = 64 - 8 * n;
		int64_t s = (int64_t)(*v << shift) >> shift;
		*v = (uint64_t)s;
		*neg = s < 0;
	}
	c->p += 1 + n;
	return 0;
}

int mp_read_u64(struct mp_cur *c, uint64_t *ret)
{
	struct mp_cur save = *c;
	uint64_t v;
	bool neg;

	if (read_int(c, &v, &neg) < 0 || neg) {
		*c = save;
		return -EBADMSG;
	}
	*ret = v;
	return 0;
}

int mp_read_i64(struct mp_cur *c, int64_t *ret)
{
	struct mp_cur save = *c;
	uint64_t v;
	bool neg;

	if (read_int(c, &v, &neg) < 0 || (!neg && v > INT64_MAX)) {
		*c = save;
		return -EBADMSG;
	}
	*ret = (int64_t)v;
	return 0;
}

int mp_read_bool(struct mp_cur *c, bool *ret)
{
	if (c->p >= c->end || (*c->p != 0xc2 && *c->p != 0xc3))
		return -EBADMSG;
	*ret = *c->p == 0xc3;
	c->p++;
	return 0;
}

int mp_read_nil(struct mp_cur *c)
{
	if (c->p >= c->end || *c->p != 0xc0)
		return -EBADMSG;
	c->p++;
	return 0;
}

int mp_read_str(struct mp_cur *c, const char **ret_s, uint32_t *ret_len)
{
	size_t avail = (size_t)(c->end - c->p);
	size_t hdr;
	uint64_t len;
	uint8_t b;

	if (avail < 1)
		return -EBADMSG;
	b = *c->p;
	if ((b & 0xe0) == 0xa0) {
		hdr = 1;
		len = b & 0x1f;
	} else if (b >= 0xd9 && b <= 0xdb) {
		unsigned n = b == 0xd9 ? 1 : b == 0xda ? 2 : 4;
		if (avail < 1 + n)
			return -EBADMSG;
		hdr = 1 + n;
		len = be(c->p + 1, n);
	} else {
		return -EBADMSG;
	}
	if (len > avail - hdr)
		return -EBADMSG;
	*ret_s = (const char *)c->p + hdr;
	*ret_len = (uint32_t)len;
	c->p += hdr + len;
	return 0;
}

/* The end of due whole elements at p; NULL when they do not fit before
 * end.  A flat counter suffices: containers add their children to what is
 * due. */
static inline const uint8_t *skip_elems(const uint8_t *p, const uint8_t *end, uint64_t due)
{
	while (due > 0) {
		size_t hdr, avail = (size_t)(end - p), sz;
		uint64_t payload, children, raw;

		if (avail > 0 && (sz = scalar_size[*p]) != 0 && sz <= avail) {
			p += sz;
			due--;
			continue;
		}
		if (avail > 0 && (raw = raw_len(p, avail)) != 0 && raw <= avail) {
			p += raw;
			due--;
			continue;
		}
		if (head(p, avail, &hdr, &payload, &children) != 1 || payload > avail - hdr)
			return NULL;
		p += hdr + payload;
		due = due - 1 + children;
		if (due < children)      /* overflow: a lie no valid frame can tell */
			return NULL;
	}
	return p;
}

int mp_skip_n(struct mp_cur *c, uint64_t n, const uint8_t **ret_start, size_t *ret_len)
{
	const uint8_t *p = skip_elems(c->p, c->end, n);

	if (!p)
		return -EBADMSG;
	if (ret_start)
		*ret_start = c->p;
	if (ret_len)
		*ret_len = (size_t)(p - c->p);
	c->p = p;
	return 0;
}

int mp_skip_n_marked(struct mp_cur *c, uint64_t n, uint32_t every, size_t *marks,
		     const uint8_t **ret_start, size_t *ret_len)
{
	const uint8_t *p = c->p, *end = c->end;
	uint32_t k = every;

	for (uint64_t i = 0; i < n; i++) {
		size_t sz;

		/* Most items are scalars: no call, no counter of what is due. */
		if (p < end && (sz = scalar_size[*p]) != 0 && sz <= (size_t)(end - p))
			p += sz;
		else if (!(p = skip_elems(p, end, 1)))
			return -EBADMSG;
		if (--k == 0) {
			*marks++ = (size_t)(p - c->p);
			k = every;
		}
	}
	if (ret_start)
		*ret_start = c->p;
	if (ret_len)
		*ret_len = (size_t)(p - c->p);
	c->p = p;
	return 0;
}

bool mp_str_eq(const char *str, uint32_t len, const char *lit)
{
	size_t l = strlen(lit);
	return l == len && memcmp(str, lit, l) == 0;
}
