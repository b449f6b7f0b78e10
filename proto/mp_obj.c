/* mp_obj: see mp_obj.h.  Types follow msgpack-c's C unpacker: signed
 * encodings of values >= 0 are POSITIVE_INTEGER, float32 is FLOAT32 with
 * the value widened into f64. */
#include "mp_obj.h"

#include <string.h>

static inline uint64_t be(const uint8_t *p, unsigned n)
{
	uint64_t v = 0;

	for (unsigned i = 0; i < n; i++)
		v = (v << 8) | p[i];
	return v;
}

static size_t raw(msgpack_object *o, msgpack_object_type t, const uint8_t *p, size_t len,
		  unsigned lenbytes, size_t hdr_base)
{
	size_t hdr = hdr_base + lenbytes;
	uint64_t n;

	if (len < hdr)
		return 0;
	n = lenbytes ? be(p + hdr_base, lenbytes) : (uint64_t)(p[0] & 0x1f);
	if (n > len - hdr)
		return 0;
	o->type = t;
	/* Empty: no pointer, like msgpack-c. */
	if (t == MSGPACK_OBJECT_STR) {
		o->via.str.size = (uint32_t)n;
		o->via.str.ptr = n ? (const char *)p + hdr : NULL;
	} else {
		o->via.bin.size = (uint32_t)n;
		o->via.bin.ptr = n ? (const char *)p + hdr : NULL;
	}
	return hdr + (size_t)n;
}

size_t mp_obj_scalar(const uint8_t *p, size_t len, msgpack_object *o)
{
	unsigned n;
	uint8_t b;

	if (len < 1)
		return 0;
	b = p[0];
	if (b <= 0x7f) {
		o->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
		o->via.u64 = b;
		return 1;
	}
	if (b >= 0xe0) {
		o->type = MSGPACK_OBJECT_NEGATIVE_INTEGER;
		o->via.i64 = (int8_t)b;
		return 1;
	}
	if ((b & 0xe0) == 0xa0)
		return raw(o, MSGPACK_OBJECT_STR, p, len, 0, 1);
	switch (b) {
	case 0xc0:
		o->type = MSGPACK_OBJECT_NIL;
		return 1;
	case 0xc2: case 0xc3:
		o->type = MSGPACK_OBJECT_BOOLEAN;
		o->via.boolean = b == 0xc3;
		return 1;
	/* One case per width, so each load is unrolled. */
	case 0xcc:
		if (len < 2)
			return 0;
		o->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
		o->via.u64 = p[1];
		return 2;
	case 0xcd:
		if (len < 3)
			return 0;
		o->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
		o->via.u64 = be(p + 1, 2);
		return 3;
	case 0xce:
		if (len < 5)
			return 0;
		o->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
		o->via.u64 = be(p + 1, 4);
		return 5;
	case 0xcf:
		if (len < 9)
			return 0;
		o->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
		o->via.u64 = be(p + 1, 8);
		return 9;
	case 0xd0: case 0xd1: case 0xd2: case 0xd3: {
		unsigned shift;
		int64_t v;

		n = 1u << (b - 0xd0);
		if (len < 1 + n)
			return 0;
		shift = 64 - 8 * n;
		v = (int64_t)(be(p + 1, n) << shift) >> shift;
		if (v >= 0) {
			o->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
			o->via.u64 = (uint64_t)v;
		} else {
			o->type = MSGPACK_OBJECT_NEGATIVE_INTEGER;
			o->via.i64 = v;
		}
		return 1 + n;
	}
	case 0xca: {
		uint32_t bits;
		float f;

		if (len < 5)
			return 0;
		bits = (uint32_t)be(p + 1, 4);
		memcpy(&f, &bits, sizeof(f));
		o->type = MSGPACK_OBJECT_FLOAT32;
		o->via.f64 = f;
		return 5;
	}
	case 0xcb: {
		uint64_t bits;
		double d;

		if (len < 9)
			return 0;
		bits = be(p + 1, 8);
		memcpy(&d, &bits, sizeof(d));
		o->type = MSGPACK_OBJECT_FLOAT64;
		o->via.f64 = d;
		return 9;
	}
	case 0xd9: case 0xda: case 0xdb:
		return raw(o, MSGPACK_OBJECT_STR, p, len, 1u << (b - 0xd9), 1);
	case 0xc4: case 0xc5: case 0xc6:
		return raw(o, MSGPACK_OBJECT_BIN, p, len, 1u << (b - 0xc4), 1);
	default:
		return 0;
	}
}
