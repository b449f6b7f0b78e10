/* chan: one framed MessagePack stream on a non-blocking descriptor, driven
 * by the master's loop; client connections and worker channels alike.
 *
 * Writers append to chan_out() and call chan_flush(), which writes once the
 * callback under way has returned, so all it produced leaves in one
 * writev.  Peer loss is reported in one place, closed(), and only from a
 * loop callback of the chan itself: no call an owner makes calls closed()
 * or drained() under it, so an owner frees itself in one place. */
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
	/* Optional.  The peer shut only its sending side and every whole
	 * frame was delivered: the chan stops reading and keeps writing.  May
	 * be called again after chan_pause(false).  NULL, or a peer that
	 * closed its socket entirely: closed(0). */
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
void chan_packer(struct chan *ch, msgpack_packer *pk);
void chan_flush(struct chan *ch);
size_t chan_out_len(const struct chan *ch);
/* From the frame() callback only: hands over the read buffer holding the
 * frame being delivered (see mp_frame_take), or NULL when the caller should
 * copy the keep bytes it wants instead. */
uint8_t *chan_take_frame(struct chan *ch, size_t keep);
/* The same, checked: NULL unless the keep bytes at p lie in the frame ch
 * is delivering now (further up the stack), not taken yet. */
uint8_t *chan_take_delivered(struct chan *ch, const void *p, size_t keep);
/* Counts the bytes the chan holds (input buffer, unsent output) in *bytes
 * from now on, and in the total of all accounted chans: output as of the
 * last chan_flush() or write. */
void chan_account(struct chan *ch, size_t *bytes);
size_t chan_accounted_total(void);
/* Bytes of a frame that has started to arrive and is not whole (0 while
 * paused, when whole frames may wait too). */
size_t chan_in_partial(const struct chan *ch);
void chan_pause(struct chan *ch, bool pause);
/* Reads and delivers everything the peer has sent so far, even when
 * paused: a worker's exit may be noticed before its last bytes are read.
 * Never calls closed(). */
void chan_drain_input(struct chan *ch);
/* Writes what it can now (shutdown, a client being dropped).  Never calls
 * back: a write error or drained output is reported later from the loop. */
void chan_write_now(struct chan *ch);

#endif
