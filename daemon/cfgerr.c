#include "cfgerr.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <mpool/error.h>
#include "conn.h"
#include "log.h"
#include "master.h"
#include "mp_frame.h"
#include "mp_rpc.h"
#include "notify.h"

/* How long mpoold waits for another client after the last one left: it
 * spaces out restarts, which mpoold.service's StartLimitBurst= counts on. */
#define CFGERR_LINGER_MS 500
/* A connection that sends nothing for this long is closed. */
#define CFGERR_IDLE_MS 5000

/* A few clients at once are plenty for an error; one past the table is
 * told the error and closed at once. */
#define MAX_CONNS 64
/* Requests here are read for their msgid only; a larger one gets the error
 * as a notification, and its connection is closed. */
#define MAX_FRAME (1024 * 1024)
/* A client that does not read its errors stops being read. */
#define MAX_OUT (1024 * 1024)

struct econn {
	int fd;                  /* -1: a free entry */
	struct mp_frame in;
	msgpack_sbuffer out;
	size_t sent;             /* bytes of out written */
	bool closing;            /* close once out is written */
	uint64_t active_ms;
};

static volatile sig_atomic_t stop_sig;

static void on_stop(int sig)
{
	stop_sig = sig;
}

static void econn_close(struct econn *c)
{
	close(c->fd);
	c->fd = -1;
	mp_frame_free(&c->in);
	msgpack_sbuffer_destroy(&c->out);
}

/* [1, msgid, {code: unavailable, message}, nil], or for what has no
 * msgid (NULL) [2, "error", [{code: unavailable, message}]]. */
static int answer(struct econn *c, const uint64_t *msgid, const char *msg)
{
	msgpack_packer pk;
	int r;

	msgpack_packer_init(&pk, &c->out, msgpack_sbuffer_write);
	if (msgid)
		r = mp_pack_response_head(&pk, *msgid) < 0 ||
		    mp_pack_error(&pk, MPOOL_E_UNAVAILABLE, msg, -1) < 0 || msgpack_pack_nil(&pk) < 0;
	else
		r = mp_pack_notify_head(&pk, "error") < 0 || msgpack_pack_array(&pk, 1) < 0 ||
		    mp_pack_error(&pk, MPOOL_E_UNAVAILABLE, msg, -1) < 0;
	return r ? -ENOMEM : 0;
}

/* Writes what is pending; closes the connection when it is done and
 * closing, or when the peer is gone. */
static void econn_flush(struct econn *c)
{
	while (c->sent < c->out.size) {
		ssize_t n = send(c->fd, c->out.data + c->sent, c->out.size - c->sent,
				 MSG_NOSIGNAL | MSG_DONTWAIT);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		if (n <= 0) {
			econn_close(c);
			return;
		}
		c->sent += (size_t)n;
	}
	c->sent = 0;
	c->out.size = 0;
	if (c->closing)
		econn_close(c);
}

static void econn_read(struct econn *c, const char *msg, uint64_t now)
{
	const uint8_t *frame;
	size_t len;
	ssize_t n;
	int r;

	n = mp_frame_read(&c->in, c->fd);
	if (n == -EAGAIN || n == -EINTR)
		return;
	if (n <= 0) {
		/* End of stream: answer what came, then close. */
		c->closing = true;
		return;
	}
	c->active_ms = now;
	while ((r = mp_frame_next(&c->in, &frame, &len)) == 1) {
		struct mp_msg m;
		uint64_t msgid;
		int msgid_ok = 0;

		if (mp_msg_parse(frame, len, &m, &msgid_ok, &msgid) == 0) {
			if (m.type != MP_REQUEST)
				continue;       /* a notification wants no answer */
			msgid = m.msgid;
		} else if (!msgid_ok) {
			r = -EBADMSG;
			break;
		}
		if (answer(c, &msgid, msg) < 0) {
			c->closing = true;
			return;
		}
	}
	if (r < 0) {
		if (answer(c, NULL, msg) < 0)
			econn_close(c);
		else
			c->closing = true;
	}
}

/* Accepts every waiting connection.  Returns 0, or -errno when accepting
 * failed for a reason other than an empty queue (out of descriptors, say):
 * the caller then waits a little before it tries again. */
static int accept_all(int lfd, struct econn *conns, const struct mp_frame_limits *lim,
		      const char *msg, uint64_t now)
{
	for (;;) {
		int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		struct econn *c = NULL;

		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
		}
		for (unsigned i = 0; i < MAX_CONNS && !c; i++)
			if (conns[i].fd < 0)
				c = &conns[i];
		if (!c) {
			/* Full: this one gets the error without a msgid. */
			conn_refuse(fd, MPOOL_E_UNAVAILABLE, msg);
			close(fd);
			continue;
		}
		*c = (struct econn){ .fd = fd, .active_ms = now };
		mp_frame_init(&c->in, lim);
		msgpack_sbuffer_init(&c->out);
	}
}

int cfgerr_serve(int listen_fd, const char *why)
{
	static struct econn conns[MAX_CONNS];
	const struct mp_frame_limits lim = { .max_frame = MAX_FRAME, .max_depth = MP_DEPTH_MAX };
	struct sigaction sa = { .sa_handler = on_stop };
	/* One entry per slot, the same index as in conns (poll skips the free
	 * ones, whose fd is -1), then the listening socket's. */
	struct pollfd pfd[MAX_CONNS + 1];
	uint64_t last_ms = now_ms(), accept_after = 0;
	char msg[700], status[700];

	snprintf(msg, sizeof(msg), "mpoold cannot start: %s; fix that and restart mpoold "
		 "(the next client starts it again)", why[0] ? why : "see its log");
	snprintf(status, sizeof(status), "config error: %s; fix it, then restart mpoold",
		 why[0] ? why : "see the log");
	notify_status(status);
	log_warn("answering every client with this error until none is left for %d ms",
		 CFGERR_LINGER_MS);
	/* No SA_RESTART: a stop signal must wake poll(). */
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	for (unsigned i = 0; i < MAX_CONNS; i++)
		conns[i].fd = -1;

	while (!stop_sig) {
		uint64_t now = now_ms();
		unsigned live = 0;
		int timeout, r;

		for (unsigned i = 0; i < MAX_CONNS; i++) {
			struct econn *c = &conns[i];

			if (c->fd >= 0 && now - c->active_ms >= CFGERR_IDLE_MS)
				econn_close(c);
			pfd[i] = (struct pollfd){ c->fd, 0, 0 };
			if (c->fd < 0)
				continue;
			live++;
			if (!c->closing && c->out.size < MAX_OUT)
				pfd[i].events |= POLLIN;
			if (c->out.size > c->sent)
				pfd[i].events |= POLLOUT;
		}
		if (live > 0) {
			last_ms = now;
			timeout = 250;  /* to look at idle connections again */
		} else if (now - last_ms >= CFGERR_LINGER_MS) {
			break;
		} else {
			timeout = (int)(CFGERR_LINGER_MS - (now - last_ms));
		}
		pfd[MAX_CONNS] = (struct pollfd){ listen_fd, now >= accept_after ? POLLIN : 0, 0 };
		if (now < accept_after && timeout > (int)(accept_after - now))
			timeout = (int)(accept_after - now);
		r = poll(pfd, MAX_CONNS + 1, timeout);
		if (r < 0 && errno != EINTR) {
			log_err("poll: %s", strerror(errno));
			break;
		}
		if (r <= 0)
			continue;
		now = now_ms();
		for (unsigned i = 0; i < MAX_CONNS; i++) {
			if (!pfd[i].revents)
				continue;
			if (pfd[i].revents & (POLLIN | POLLHUP | POLLERR))
				econn_read(&conns[i], msg, now);
			if (conns[i].fd >= 0)
				econn_flush(&conns[i]);
		}
		if (pfd[MAX_CONNS].revents & POLLIN) {
			r = accept_all(listen_fd, conns, &lim, msg, now);
			if (r < 0) {
				/* The socket stays readable: do not spin on it. */
				log_warn("cannot accept a client: %s", strerror(-r));
				accept_after = now + 100;
			}
			last_ms = now;
		}
	}
	for (unsigned i = 0; i < MAX_CONNS; i++)
		if (conns[i].fd >= 0)
			econn_close(&conns[i]);
	close(listen_fd);
	return 2;
}
