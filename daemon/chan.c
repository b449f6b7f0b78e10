#include "chan.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "mem.h"

#define LOW_WATER (64 * 1024)

struct chan {
	int fd;
	struct event *rev, *wev;
	struct event *fev;   /* flush: made active by chan_flush, never polled */
	struct evbuffer *out;
	struct mp_frame in;
	const struct chan_ops *ops;
	void *ctx;
	bool paused, closed, dead;
	bool eof;            /* the peer sent end-of-file: read no more */
	unsigned busy;       /* callbacks running: defer the free */
	/* Found by chan_write_now, reported from the loop (chan_write_cb). */
	int werr;
	bool drain_due;
	/* chan_account: the bytes of in and out counted in *acct and
	 * acct_total, brought up to date at chan_flush and when bytes leave,
	 * not on every evbuffer operation. */
	size_t *acct;
	size_t acct_in, acct_out;
	/* The frame being delivered; NULL once taken. */
	const uint8_t *deliv_frame;
	size_t deliv_len;
};

static size_t acct_total;

static void chan_read_cb(evutil_socket_t fd, short what, void *arg);
static void chan_write_cb(evutil_socket_t fd, short what, void *arg);

struct chan *chan_new(struct event_base *base, int fd, const struct mp_frame_limits *lim,
		      const struct chan_ops *ops, void *ctx)
{
	struct chan *ch = xcalloc(1, sizeof(*ch));
	int on = 1;

	/* One call, where F_GETFL and F_SETFL take two: a recycle makes a
	 * channel. */
	(void)ioctl(fd, FIONBIO, &on);
	ch->fd = fd;
	ch->ops = ops;
	ch->ctx = ctx;
	mp_frame_init(&ch->in, lim);
	ch->out = evbuffer_new();
	ch->rev = event_new(base, fd, EV_READ | EV_PERSIST, chan_read_cb, ch);
	ch->wev = event_new(base, fd, EV_WRITE | EV_PERSIST, chan_write_cb, ch);
	ch->fev = event_new(base, -1, 0, chan_write_cb, ch);
	if (!ch->out || !ch->rev || !ch->wev || !ch->fev) {
		fprintf(stderr, "mpoold: out of memory creating a channel\n");
		abort();
	}
	event_add(ch->rev, NULL);
	return ch;
}

static void acct_add(struct chan *ch, size_t *field, size_t now)
{
	if (!ch->acct || *field == now)
		return;
	*ch->acct += now - *field;        /* modular arithmetic: a decrease too */
	acct_total += now - *field;
	*field = now;
}

/* The input buffer's size changes only in calls made from here: it is
 * sampled after each. */
static void acct_in(struct chan *ch)
{
	acct_add(ch, &ch->acct_in, ch->in.cap);
}

static void acct_out(struct chan *ch)
{
	acct_add(ch, &ch->acct_out, evbuffer_get_length(ch->out));
}

void chan_account(struct chan *ch, size_t *bytes)
{
	ch->acct = bytes;
	ch->acct_in = ch->acct_out = 0;
	acct_in(ch);
	acct_out(ch);
}

size_t chan_accounted_total(void)
{
	return acct_total;
}

size_t chan_in_partial(const struct chan *ch)
{
	return ch->paused || ch->eof ? 0 : mp_frame_pending(&ch->in);
}

/* At chan_free, even a deferred one: the counter lives in the owner,
 * which is gone once chan_free returns. */
static void acct_drop(struct chan *ch)
{
	acct_add(ch, &ch->acct_in, 0);
	acct_add(ch, &ch->acct_out, 0);
	ch->acct = NULL;
}

static void chan_destroy(struct chan *ch)
{
	event_free(ch->rev);
	event_free(ch->wev);
	event_free(ch->fev);
	evbuffer_free(ch->out);
	mp_frame_free(&ch->in);
	close(ch->fd);
	free(ch);
}

/* A callback of ch returns: a free it deferred happens now. */
static void chan_unbusy(struct chan *ch)
{
	if (--ch->busy == 0 && ch->dead)
		chan_destroy(ch);
}

void chan_free(struct chan *ch)
{
	if (!ch)
		return;
	acct_drop(ch);
	if (ch->busy) {
		ch->dead = true;
		event_del(ch->rev);
		event_del(ch->wev);
		event_del(ch->fev);
		return;
	}
	chan_destroy(ch);
}

struct evbuffer *chan_out(struct chan *ch)
{
	return ch->out;
}

static int evb_write(void *data, const char *buf, size_t len)
{
	return evbuffer_add(data, buf, len);
}

void chan_packer(struct chan *ch, msgpack_packer *pk)
{
	msgpack_packer_init(pk, ch->out, evb_write);
}

uint8_t *chan_take_frame(struct chan *ch, size_t keep)
{
	uint8_t *buf = mp_frame_take(&ch->in, keep);

	acct_in(ch);
	if (buf)
		ch->deliv_frame = NULL;      /* taken: not twice */
	return buf;
}

uint8_t *chan_take_delivered(struct chan *ch, const void *p, size_t keep)
{
	const uint8_t *b = p;

	if (!ch->deliv_frame || b < ch->deliv_frame || keep > ch->deliv_len ||
	    (size_t)(b - ch->deliv_frame) > ch->deliv_len - keep)
		return NULL;
	return chan_take_frame(ch, keep);
}

size_t chan_out_len(const struct chan *ch)
{
	return evbuffer_get_length(ch->out);
}

/* The flush event is made active, not EV_WRITE polled: libevent runs it
 * after the callback under way, in the same loop turn, with no epoll_ctl,
 * and no caller is re-entered by a failed write.  EV_WRITE is armed only
 * when the socket is full. */
void chan_flush(struct chan *ch)
{
	acct_out(ch);
	if (ch->closed || ch->dead || evbuffer_get_length(ch->out) == 0)
		return;
	if (!event_pending(ch->wev, EV_WRITE, NULL) && !event_pending(ch->fev, EV_TIMEOUT, NULL))
		event_active(ch->fev, EV_TIMEOUT, 0);
}

/* The owner usually frees the chan from closed(). */
static void chan_close(struct chan *ch, int err)
{
	if (ch->closed)
		return;
	ch->closed = true;
	event_del(ch->rev);
	event_del(ch->wev);
	event_del(ch->fev);
	ch->ops->closed(ch->ctx, err);
}

/* A framing error, or 0. */
static int chan_deliver(struct chan *ch, bool even_paused)
{
	const uint8_t *frame;
	size_t len;
	int r;

	while (!ch->dead && !ch->closed && (even_paused || !ch->paused)) {
		/* chan_drain_input may deliver this chan's frames from
		 * within one of its callbacks: put the outer frame back. */
		const uint8_t *pframe = ch->deliv_frame;
		size_t plen = ch->deliv_len;

		r = mp_frame_next(&ch->in, &frame, &len);
		if (r <= 0)
			return r;
		ch->deliv_frame = frame;
		ch->deliv_len = len;
		ch->ops->frame(ch->ctx, frame, len);
		ch->deliv_frame = pframe;
		ch->deliv_len = plen;
	}
	return 0;
}

/* The peer closed its socket, not just its sending side: on a Unix stream
 * socket POLLHUP means both directions are shut. */
static bool peer_gone(int fd)
{
	struct pollfd pfd = { .fd = fd, .events = 0 };

	return poll(&pfd, 1, 0) == 1 && (pfd.revents & (POLLHUP | POLLERR | POLLNVAL));
}

static void chan_read_cb(evutil_socket_t fd, short what, void *arg)
{
	struct chan *ch = arg;
	ssize_t n = 1;      /* paused: nothing read, nothing lost */
	bool got = false;
	int r;

	(void)fd;
	(void)what;
	ch->busy++;
	if (!ch->paused) {
		n = mp_frame_read(&ch->in, ch->fd);
		got = n > 0;
		if (n == -EAGAIN || n == -EINTR)
			n = 1;
	}
	r = chan_deliver(ch, false);
	acct_in(ch);
	if (r == 0 && got && !ch->dead && !ch->closed && ch->ops->received)
		ch->ops->received(ch->ctx);
	if (ch->dead || ch->closed) {
		/* Dropped by received(), or while delivering. */
	} else if (r < 0) {
		chan_close(ch, r);
	} else if (n == 0 && ch->ops->eof && !peer_gone(ch->fd)) {
		/* Half-closed: frames still held wait for chan_pause(false). */
		ch->eof = true;
		event_del(ch->rev);
		if (!ch->paused)
			ch->ops->eof(ch->ctx);
	} else if (n <= 0) {
		chan_close(ch, (int)n);
	}
	chan_unbusy(ch);
}

void chan_drain_input(struct chan *ch)
{
	ssize_t n;

	if (ch->closed || ch->dead)
		return;
	ch->busy++;
	do {
		n = mp_frame_read(&ch->in, ch->fd);
		if (chan_deliver(ch, true) < 0)
			break;
	} while (n > 0 && !ch->dead && !ch->closed);
	acct_in(ch);
	chan_unbusy(ch);
}

/* report: called from the loop, so closed() and drained() may run now.
 * Otherwise they are left for chan_write_cb: a caller that writes must be
 * able to go on using (or freeing) what it holds. */
static void chan_write_some(struct chan *ch, bool report)
{
	size_t before = evbuffer_get_length(ch->out);
	int n = evbuffer_write(ch->out, ch->fd);
	bool drained;

	acct_out(ch);
	if (n < 0 && errno != EAGAIN && errno != EINTR) {
		if (report) {
			chan_close(ch, -errno);
		} else if (!ch->werr) {
			ch->werr = -errno;
			event_active(ch->fev, EV_TIMEOUT, 0);
		}
		return;
	}
	if (evbuffer_get_length(ch->out) == 0)
		event_del(ch->wev);
	else if (!ch->closed && !ch->dead && !event_pending(ch->wev, EV_WRITE, NULL))
		event_add(ch->wev, NULL);     /* full: wait until it drains */
	drained = (before > LOW_WATER && evbuffer_get_length(ch->out) <= LOW_WATER) ||
		  (before > 0 && evbuffer_get_length(ch->out) == 0);
	if (drained && !report) {
		ch->drain_due = true;
		event_active(ch->fev, EV_TIMEOUT, 0);
		return;
	}
	if (drained || ch->drain_due) {
		ch->drain_due = false;
		if (!ch->closed)
			ch->ops->drained(ch->ctx);
	}
}

/* The socket is writable (wev), or a flush or what chan_write_now found
 * is due (fev). */
static void chan_write_cb(evutil_socket_t fd, short what, void *arg)
{
	struct chan *ch = arg;

	(void)fd;
	(void)what;
	if (ch->closed || ch->dead)
		return;
	ch->busy++;
	if (ch->werr)
		chan_close(ch, ch->werr);
	else
		chan_write_some(ch, true);
	chan_unbusy(ch);
}

void chan_write_now(struct chan *ch)
{
	/* Even after closed(): a client dropped for breaking the framing can
	 * still be told why. */
	if (ch->dead || ch->werr)
		return;
	chan_write_some(ch, false);
}

void chan_pause(struct chan *ch, bool pause)
{
	if (ch->paused == pause || ch->closed || ch->dead)
		return;
	ch->paused = pause;
	if (ch->eof) {
		/* Frames held (and the end-of-file) go from the read callback. */
		if (!pause)
			event_active(ch->rev, EV_READ, 0);
		return;
	}
	if (pause) {
		event_del(ch->rev);
	} else {
		event_add(ch->rev, NULL);
		/* Frames may be held already: do not wait for more. */
		event_active(ch->rev, EV_READ, 0);
	}
}
