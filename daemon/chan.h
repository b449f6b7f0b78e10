/* chan: one framed MessagePack stream on a non-blocking descriptor, driven
 * by the master's libevent loop.  Client connections and worker channels are
 * both chans: the same framing, limits and back-pressure serve both.
 *
 * Output is batched: writers append to chan_out() and call chan_flush(),
 * which writes once the callback under way has returned (the same loop
 * turn), so everything it produced leaves in one writev; the write event is
 * armed only while the socket is full.  Peer loss is reported in exactly one place, the
 * closed() callback, and only from a loop callback of the chan itself: no
 * call an owner makes (chan_flush, chan_write_now, chan_pause) calls
 * closed() or drained() under it, so an owner frees itself in one place. */
#ifndef CHAN_H
#define CHAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <event2/event.h>
#include <event2/buffer.h>
#include <msgpack.h>

#include "mp_frame.h"

struct chan;

struct chan_ops {
	/* A whole frame arrived; frame is valid during the call only. */
	void (*frame)(void *ctx, const uint8_t *frame, size_t len);
	/* The peer is gone (err 0: end of stream; -errno: I/O error;
	 * -EBADMSG/-ELOOP/-EMSGSIZE: it broke the framing).  Called once; the
	 * chan reads and writes no more, the owner should free it. */
	void (*closed)(void *ctx, int err);
	/* Unsent output fell to the low-water mark (possibly zero). */
	void (*drained)(void *ctx);
	/* Optional.  The peer will send no more (read end-of-file, every
	 * whole frame delivered) but still reads (it shut only its sending
	 * side): the chan stops reading and keeps writing until the owner
	 * frees it or a write fails (closed()).  May be called again after
	 * chan_pause(false).  NULL, or a peer that closed its socket
	 * entirely: the end of the stream is closed(0). */
	void (*eof)(void *ctx);
	/* Optional.  Bytes arrived and every whole frame among them was
	 * delivered: the owner may check what the chan holds
	 * (chan_in_partial) and may free it. */
	void (*received)(void *ctx);
};

/* Takes ownership of fd (made non-blocking here). */
struct chan *chan_new(struct event_base *base, int fd, const struct mp_frame_limits *lim,
		      const struct chan_ops *ops, void *ctx);
/* Closes the descriptor and frees; safe from inside a callback of the same
 * chan (the free is then deferred until the callback returns).  NULL ok. */
void chan_free(struct chan *ch);

struct evbuffer *chan_out(struct chan *ch);
/* A packer that appends to the chan's output. */
void chan_packer(struct chan *ch, msgpack_packer *pk);
void chan_flush(struct chan *ch);
size_t chan_out_len(const struct chan *ch);
/* From the frame() callback only: hands over the read buffer holding the
 * frame being delivered (see mp_frame_take), or NULL when the caller should
 * copy the keep bytes it wants instead. */
uint8_t *chan_take_frame(struct chan *ch, size_t keep);
/* The same, checked: when the keep bytes at p lie in the frame ch is
 * delivering right now (its frame() callback is running further up the
 * stack) and it was not taken yet, hands over its buffer; else NULL. */
uint8_t *chan_take_delivered(struct chan *ch, const void *p, size_t keep);
/* Counts the bytes the chan holds (its input buffer and unsent output) in
 * *bytes from now on, and in the total of all accounted chans: output as of
 * the last chan_flush() or write, which is why a writer calls chan_flush()
 * once its message is complete. */
void chan_account(struct chan *ch, size_t *bytes);
size_t chan_accounted_total(void);
/* Bytes of a frame that has started to arrive and is not whole (0 while
 * paused, when whole frames may wait too). */
size_t chan_in_partial(const struct chan *ch);
/* Stops (or resumes) reading and delivering frames. */
void chan_pause(struct chan *ch, bool pause);
/* Reads everything the peer has sent so far and delivers its frames now,
 * even when paused: used when a worker's exit is noticed before its last
 * bytes were read.  The closed() callback is not called from here. */
void chan_drain_input(struct chan *ch);
/* Writes what it can now, without waiting (shutdown path, a client being
 * dropped).  Never calls back: a write error or drained output is
 * reported later from the loop, so the caller may go on using the chan
 * and its owner, and free them, after this returns. */
void chan_write_now(struct chan *ch);

#endif
