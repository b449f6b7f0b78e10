#include "mp_frame.h"
#include "mp_mem.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define READ_CHUNK (64 * 1024)
/* Buffers at least this large are populated when they are allocated
 * (mp_mem.h): reads fill them. */
#define POPULATE_MIN (256 * 1024)

void mp_frame_init(struct mp_frame *f, const struct mp_frame_limits *lim)
{
	memset(f, 0, sizeof(*f));
	f->lim = *lim;
	mp_scan_init(&f->scan, lim->max_depth);
}

void mp_frame_free(struct mp_frame *f)
{
	free(f->data);
	f->data = NULL;
	f->start = f->len = f->cap = 0;
}

uint8_t *mp_frame_space(struct mp_frame *f, size_t want, size_t *ret_room)
{
	/* Slide the unconsumed tail to the front before growing: frames are
	 * handed out by pointer, so this only happens when new bytes are
	 * wanted, which the contract says invalidates them. */
	if (f->start == f->len && f->cap > 4 * READ_CHUNK && f->last_len < f->cap / 4) {
		/* Idle, and the buffer is far larger than what the stream
		 * carries now: give the memory back.  A stream of large frames
		 * (a worker's results) keeps its buffer, or every frame would
		 * grow it again from READ_CHUNK, copying itself at each step. */
		free(f->data);
		f->data = NULL;
		f->cap = 0;
		f->start = f->len = 0;
	}
	if (f->start > 0) {
		memmove(f->data, f->data + f->start, f->len - f->start);
		f->len -= f->start;
		f->start = 0;
	}
	if (f->cap - f->len < want || !f->data) {
		size_t cap = f->cap ? f->cap : READ_CHUNK, fill;
		uint8_t *d;

		while (cap - f->len < want)
			cap *= 2;
		d = realloc(f->data, cap);
		if (!d)
			return NULL;
		/* Not all the room doubling made: no more than the buffer
		 * holds, so a peer that sends little makes little resident. */
		fill = f->len > want ? f->len : want;
		if (fill > cap - f->len)
			fill = cap - f->len;
		mp_populate(d + f->len, fill, POPULATE_MIN);
		f->data = d;
		f->cap = cap;
	}
	*ret_room = f->cap - f->len;
	return f->data + f->len;
}

void mp_frame_commit(struct mp_frame *f, size_t n)
{
	f->len += n;
}

int mp_frame_push(struct mp_frame *f, const void *buf, size_t n)
{
	size_t room;
	uint8_t *p = mp_frame_space(f, n, &room);

	if (!p)
		return -ENOMEM;
	memcpy(p, buf, n);
	mp_frame_commit(f, n);
	return 0;
}

uint8_t *mp_frame_take(struct mp_frame *f, size_t keep)
{
	size_t rest = f->len - f->start, cap = READ_CHUNK;
	uint8_t *old = f->data, *d;

	if (!old || f->cap / 2 > keep)
		return NULL;
	while (cap < rest)
		cap *= 2;
	/* A stream of frames this large (see mp_frame_space) gets a buffer
	 * as large, or the next frame would grow one again, copying it. */
	if (f->last_len >= f->cap / 4 && cap < f->cap)
		cap = f->cap;
	d = malloc(cap);
	if (!d)
		return NULL;
	mp_populate(d, cap, POPULATE_MIN);
	memcpy(d, old + f->start, rest);
	f->data = d;
	f->cap = cap;
	f->len = rest;
	f->start = 0;
	return old;
}

int mp_frame_next(struct mp_frame *f, const uint8_t **ret_frame, size_t *ret_len)
{
	size_t avail = f->len - f->start;
	int r;

	if (avail == 0)
		return 0;
	r = mp_scan_feed(&f->scan, f->data + f->start, avail);
	if (r < 0)
		return r;
	if (r == 0) {
		/* Held bytes past the limit, or a string or binary declared
		 * past it, can never become a valid frame. */
		return avail > f->lim.max_frame || f->scan.need_to > f->lim.max_frame ? -EMSGSIZE
										       : 0;
	}
	if (f->scan.off > f->lim.max_frame)
		return -EMSGSIZE;
	*ret_frame = f->data + f->start;
	*ret_len = f->scan.off;
	f->last_len = f->scan.off;
	f->start += f->scan.off;
	mp_scan_init(&f->scan, f->lim.max_depth);
	return 1;
}

size_t mp_frame_read_size(const struct mp_frame *f, size_t min)
{
	size_t end = f->start + f->scan.need_to, held = f->len - f->start, want;

	if (f->scan.need_to == 0 || end <= f->len)
		return min;
	want = end - f->len;
	/* A declared length is a claim, not bytes: grow by what arrived,
	 * and never past the largest frame (mp_frame_next refuses those). */
	if (want > held)
		want = held;
	if (held < f->lim.max_frame && want > f->lim.max_frame - held)
		want = f->lim.max_frame - held;
	return want > min ? want : min;
}

ssize_t mp_frame_read(struct mp_frame *f, int fd)
{
	size_t room, want = mp_frame_read_size(f, READ_CHUNK);
	uint8_t *p = mp_frame_space(f, want, &room);
	ssize_t n;

	if (!p)
		return -ENOMEM;
	n = read(fd, p, room < want ? room : want);
	if (n < 0)
		return -errno;
	mp_frame_commit(f, (size_t)n);
	return n;
}
