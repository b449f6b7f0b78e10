/* mp_frame: cuts a byte stream into whole MessagePack frames.
 *
 * One framer serves every stream in mpool (client<->master, master<->worker),
 * blocking or not: the owner reads into the space mp_frame_space() offers,
 * commits what arrived, then takes frames with mp_frame_next() until it says
 * "need more".  Every frame handed out has been checked by mp_scan: it is
 * complete, no deeper than the depth limit and no longer than the size
 * limit, so msgpack-c may unpack it without unbounded allocation. */
#ifndef MP_FRAME_H
#define MP_FRAME_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "mp_scan.h"

struct mp_frame_limits {
	size_t max_frame;     /* largest frame accepted, in bytes */
	uint32_t max_depth;   /* deepest nesting accepted (<= MP_DEPTH_MAX) */
};

struct mp_frame {
	uint8_t *data;
	size_t start;         /* first byte not yet handed out */
	size_t len;           /* bytes held */
	size_t cap;
	size_t last_len;      /* the last frame handed out */
	struct mp_scan scan;  /* progress on the frame at start */
	struct mp_frame_limits lim;
};

void mp_frame_init(struct mp_frame *f, const struct mp_frame_limits *lim);
/* Frees the buffer; accepts a zeroed or already freed framer. */
void mp_frame_free(struct mp_frame *f);

/* Room for at least want bytes after the held data; returns NULL when out
 * of memory.  *ret_room receives the usable size. */
uint8_t *mp_frame_space(struct mp_frame *f, size_t want, size_t *ret_room);
/* How many bytes the next read should ask for: min, or more while a
 * string or binary of the frame under way is known to need more (but no
 * more than the frame holds already: a declared length is no promise).
 * Reading no further than that leaves little of the next frame behind,
 * which mp_frame_take() would copy. */
size_t mp_frame_read_size(const struct mp_frame *f, size_t min);
/* Marks n bytes written into the space as held. */
void mp_frame_commit(struct mp_frame *f, size_t n);
/* Copies n bytes in (space + commit).  0 or -ENOMEM. */
int mp_frame_push(struct mp_frame *f, const void *buf, size_t n);

/* Takes the next whole frame.  Returns 1 with *ret_frame and *ret_len pointing
 * into the buffer (valid until the next call that adds bytes), 0 when more
 * bytes are needed, -EBADMSG for bytes that are not MessagePack, -ELOOP for
 * nesting past the limit, -EMSGSIZE for a frame past the size limit.  After
 * an error the stream is lost: the owner must drop it. */
int mp_frame_next(struct mp_frame *f, const uint8_t **ret_frame, size_t *ret_len);

/* Hands over the buffer that holds the frame mp_frame_next just returned,
 * so a caller keeping a large frame need not copy it: the frame's pointer
 * stays valid, and free() of the returned pointer releases it.  Bytes held
 * after the frame move to a fresh buffer.  Returns NULL (nothing changes)
 * when the buffer is more than twice keep bytes (the part the caller
 * keeps), so an adopted buffer is mostly useful bytes, or when out of
 * memory; the caller then copies. */
uint8_t *mp_frame_take(struct mp_frame *f, size_t keep);

/* Bytes held that belong to no frame handed out yet. */
static inline size_t mp_frame_pending(const struct mp_frame *f)
{
	return f->len - f->start;
}

/* Reads once from fd into the framer (up to a sensible chunk).  Returns
 * bytes read, 0 on end of stream, or -errno (-EAGAIN included). */
ssize_t mp_frame_read(struct mp_frame *f, int fd);

#endif
