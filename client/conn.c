/* conn: libmpool's connection: connect, send whole requests, cut the reply
 * stream into messages, and remember the last failure. */
#include "libmpool-private.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "mp_path.h"

int mpool_connect(const char *path, mpool **ret)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	const struct mp_frame_limits lim = {
		.max_frame = MPC_MAX_FRAME,
		.max_depth = MP_DEPTH_MAX,
	};
	mpool *p;
	int fd, e;

	if (!ret)
		return -MPOOL_E_INVAL;
	if (path) {
		if (!*path || strlen(path) >= sizeof(sa.sun_path))
			return -MPOOL_E_INVAL;
		memcpy(sa.sun_path, path, strlen(path) + 1);
	} else if (mp_default_socket_path(sa.sun_path, sizeof(sa.sun_path)) < 0) {
		return -MPOOL_E_INVAL;
	}

	p = calloc(1, sizeof(*p));
	if (!p)
		return -MPOOL_E_NOMEM;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		goto fail;
	/* A Unix socket does not connect in the background: after EINTR it is
	 * still unconnected, so asking again is safe. */
	while (connect(fd, (const struct sockaddr *)&sa, sizeof(sa)) < 0) {
		if (errno != EINTR)
			goto fail;
	}
	p->fd = fd;
	p->next_msgid = 1;
	mp_frame_init(&p->frame, &lim);
	*ret = p;
	return 0;
fail:
	e = errno;
	if (fd >= 0)
		close(fd);
	free(p);
	errno = e;
	return -MPOOL_E_SYS;
}

void mpool_close(mpool *p)
{
	if (!p)
		return;
	close(p->fd);
	mp_frame_free(&p->frame);
	free(p);
}

const char *mpool_errmsg(const mpool *p)
{
	return p ? p->errmsg : "";
}

int mpc_err(mpool *p, int code, const char *fmt, ...)
{
	int e = errno;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(p->errmsg, sizeof(p->errmsg), fmt, ap);
	va_end(ap);
	if (code == MPOOL_E_SYS || code == MPOOL_E_PROTO || code == MPOOL_E_CLOSED)
		p->dead = true;
	errno = e;
	return -code;
}

int mpc_usable(mpool *p)
{
	static const char lost[] = "connection unusable after an earlier failure: ";
	char why[MPC_ERRMSG_MAX];

	if (p->in_callback)
		return mpc_err(p, MPOOL_E_INVAL, "a map callback cannot use its own connection");
	if (!p->dead)
		return 0;
	/* Keep the first cause in the message, once. */
	if (strncmp(p->errmsg, lost, sizeof(lost) - 1) == 0)
		return -MPOOL_E_CLOSED;
	memcpy(why, p->errmsg, sizeof(why));
	return mpc_err(p, MPOOL_E_CLOSED, "%s%s", lost, why);
}

int mpc_req_start(mpool *p, struct mpc_req *rq, const char *method, uint32_t n_params)
{
	msgpack_sbuffer_init(&rq->buf);
	msgpack_packer_init(&rq->pk, &rq->buf, msgpack_sbuffer_write);
	rq->msgid = p->next_msgid++;
	if (mp_pack_request_head(&rq->pk, rq->msgid, method) < 0 ||
	    msgpack_pack_array(&rq->pk, n_params) < 0)
		return mpc_err(p, MPOOL_E_NOMEM, "out of memory packing a request");
	return 0;
}

int mpc_req_raw(mpool *p, struct mpc_req *rq, const void *bytes, size_t len)
{
	if (len > 0 && msgpack_sbuffer_write(&rq->buf, bytes, len) < 0)
		return mpc_err(p, MPOOL_E_NOMEM, "out of memory packing a request");
	return 0;
}

void mpc_req_done(struct mpc_req *rq)
{
	msgpack_sbuffer_destroy(&rq->buf);
	msgpack_sbuffer_init(&rq->buf);
}

/* Describes a framing failure of the reply stream. */
static int frame_err(mpool *p, int r)
{
	switch (r) {
	case -EMSGSIZE:
		return mpc_err(p, MPOOL_E_PROTO, "mpoold sent a message larger than %zu bytes",
			       MPC_MAX_FRAME);
	case -ELOOP:
		return mpc_err(p, MPOOL_E_PROTO, "mpoold sent a message nested deeper than %d levels",
			       MP_DEPTH_MAX);
	default:
		return mpc_err(p, MPOOL_E_PROTO, "mpoold sent bytes that are not MessagePack");
	}
}

/* Reads the envelope of a frame.  The daemon's "error" notification ends
 * the connection: its code and message become the call's failure. */
static int parse_msg(mpool *p, const uint8_t *frame, size_t len, struct mp_msg *ret)
{
	struct mp_msg m;
	struct mp_cur c;
	const char *msg;
	uint32_t n, msg_len;
	int64_t index;
	uint64_t id;
	int id_ok, code;

	if (mp_msg_parse(frame, len, &m, &id_ok, &id) < 0)
		return mpc_err(p, MPOOL_E_PROTO, "mpoold sent a message that is not MessagePack-RPC");
	if (m.type == MP_REQUEST)
		return mpc_err(p, MPOOL_E_PROTO, "mpoold sent a request");
	if (m.type == MP_NOTIFY && mp_str_eq(m.method, m.method_len, "error")) {
		mp_cur_init(&c, m.body, m.body_len);
		if (mp_read_array(&c, &n) < 0 || n < 1 ||
		    mp_read_error(&c, &code, &msg, &msg_len, &index) < 0 || code <= 0)
			return mpc_err(p, MPOOL_E_PROTO, "mpoold sent a malformed error notification");
		p->dead = true;
		return mpc_err(p, code, "mpoold closed the connection: %.*s", (int)msg_len, msg);
	}
	*ret = m;
	return 0;
}

/* After a failed send: the daemon may have said why it hung up (a request
 * past its frame or depth limit) in an "error" notification still waiting
 * in the socket.  Returns that failure, or 0 when there is none to read. */
static int salvage_error(mpool *p)
{
	for (;;) {
		const uint8_t *frame;
		struct mp_msg m;
		size_t room, len;
		uint8_t *space;
		ssize_t n;
		int r;

		while ((r = mp_frame_next(&p->frame, &frame, &len)) == 1) {
			/* Only the daemon's own account is worth returning. */
			r = parse_msg(p, frame, len, &m);
			if (r < 0 && r != -MPOOL_E_PROTO)
				return r;
		}
		if (r < 0)
			return 0;
		space = mp_frame_space(&p->frame, 4096, &room);
		if (!space)
			return 0;
		n = recv(p->fd, space, room, MSG_DONTWAIT);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return 0;
		mp_frame_commit(&p->frame, (size_t)n);
	}
}

static int send_all(mpool *p, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = send(p->fd, buf, len, MSG_NOSIGNAL);
		int e, r;

		if (n < 0) {
			if (errno == EINTR)
				continue;
			e = errno;
			if (e == EPIPE || e == ECONNRESET) {
				r = salvage_error(p);
				if (r < 0)
					return r;
				return mpc_err(p, MPOOL_E_CLOSED,
					       "mpoold closed the connection while a request was sent");
			}
			errno = e;
			return mpc_err(p, MPOOL_E_SYS, "cannot send to mpoold: %s", strerror(e));
		}
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Next message from the daemon, blocking until one is complete. */
static int recv_msg(mpool *p, struct mp_msg *ret)
{
	const uint8_t *frame;
	size_t len;
	ssize_t n;
	int r;

	while ((r = mp_frame_next(&p->frame, &frame, &len)) == 0) {
		n = mp_frame_read(&p->frame, p->fd);
		if (n > 0 || n == -EINTR)
			continue;
		if (n == -ENOMEM) {
			/* The reply cannot be read, so the stream is lost. */
			p->dead = true;
			return mpc_err(p, MPOOL_E_NOMEM, "out of memory reading from mpoold");
		}
		if (n == 0 || n == -ECONNRESET)
			return mpc_err(p, MPOOL_E_CLOSED, "mpoold closed the connection%s",
				       mp_frame_pending(&p->frame) ? " in the middle of a message" : "");
		errno = (int)-n;
		return mpc_err(p, MPOOL_E_SYS, "cannot read from mpoold: %s", strerror(errno));
	}
	if (r < 0)
		return frame_err(p, r);
	return parse_msg(p, frame, len, ret);
}

/* The failure a response reports, or 0 when its error is nil. */
static int resp_error(mpool *p, const struct mp_msg *m)
{
	struct mp_cur c;
	const char *msg;
	uint32_t msg_len;
	int64_t index;
	int code;

	mp_cur_init(&c, m->error, m->error_len);
	if (mp_read_nil(&c) == 0)
		return 0;
	if (mp_read_error(&c, &code, &msg, &msg_len, &index) < 0 || code <= 0)
		return mpc_err(p, MPOOL_E_PROTO, "mpoold sent a malformed error object");
	return mpc_err(p, code, "%.*s", (int)msg_len, msg);
}

int mpc_req_call(mpool *p, struct mpc_req *rq, mpc_note_fn on_note, void *userdata,
		 struct mp_msg *ret_resp)
{
	struct mp_msg m;
	int r;

	r = send_all(p, rq->buf.data, rq->buf.size);
	/* Requests can be large: do not hold the copy while results stream. */
	mpc_req_done(rq);
	if (r < 0)
		return r;
	for (;;) {
		r = recv_msg(p, &m);
		if (r < 0)
			return r;
		if (m.type == MP_RESPONSE)
			break;
		if (!on_note)
			return mpc_err(p, MPOOL_E_PROTO, "mpoold sent an unexpected \"%.*s\" notification",
				       (int)m.method_len, m.method);
		r = on_note(p, userdata, &m);
		if (r < 0)
			return r;
	}
	if (m.msgid != rq->msgid)
		return mpc_err(p, MPOOL_E_PROTO, "mpoold answered msgid %llu while %llu was open",
			       (unsigned long long)m.msgid, (unsigned long long)rq->msgid);
	r = resp_error(p, &m);
	if (r < 0)
		return r;
	*ret_resp = m;
	return 0;
}

uint32_t mpc_opts_count(const struct mpc_opts *o)
{
	return (o->chunksize != 0) + (o->unordered != 0) + (o->timeout_ms != 0) +
	       (o->retries != 0);
}

/* Only what differs from the daemon's defaults goes on the wire. */
int mpc_opts_pack(msgpack_packer *pk, const struct mpc_opts *o)
{
	int r = msgpack_pack_map(pk, mpc_opts_count(o));

	if (o->chunksize)
		r |= mp_pack_cstr(pk, "chunksize") | msgpack_pack_uint32(pk, o->chunksize);
	if (o->unordered)
		r |= mp_pack_cstr(pk, "ordered") | msgpack_pack_false(pk);
	if (o->timeout_ms)
		r |= mp_pack_cstr(pk, "timeout_ms") | msgpack_pack_uint32(pk, o->timeout_ms);
	if (o->retries)
		r |= mp_pack_cstr(pk, "retries") | msgpack_pack_uint32(pk, o->retries);
	return r ? -1 : 0;
}
