/* conn: libmpool's connection.  It owns the socket, the queue of bytes to
 * send, the framer that cuts the reply stream into messages, and the table
 * that routes each message to its call by msgid.  Everything that reads
 * goes through mpc_step(); everything that waits through mpc_wait(); a lost
 * stream goes through mpc_conn_fail(), which fails every open call once. */
#include "libmpool-private.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "mp_path.h"

/* Writes the reason for a failed connect into the caller's buffer (if any)
 * and returns -code.  errno is preserved. */
static int connect_fail(char *errbuf, size_t errbuf_size, int code, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static int connect_fail(char *errbuf, size_t errbuf_size, int code, const char *fmt, ...)
{
	int e = errno;
	va_list ap;

	if (errbuf && errbuf_size > 0) {
		va_start(ap, fmt);
		vsnprintf(errbuf, errbuf_size, fmt, ap);
		va_end(ap);
	}
	errno = e;
	return -code;
}

/* The uid of the service user (MPC_SERVICE_USER), or -1 when the system has
 * none.  Looked up by name because sysusers picks its uid per machine. */
static long service_uid(void)
{
	struct passwd pw, *found = NULL;
	char buf[4096];

	if (getpwnam_r(MPC_SERVICE_USER, &pw, buf, sizeof(buf), &found) != 0 || !found)
		return -1;
	return (long)found->pw_uid;
}

/* True when $MPOOL_TRUST_UID names uid.  secure_getenv: a set-user-ID
 * program does not take it from whoever runs it. */
static bool trusted_by_env(uid_t uid)
{
	const char *s = secure_getenv("MPOOL_TRUST_UID");
	unsigned long v;
	char *end;

	if (!s || *s < '0' || *s > '9')
		return false;
	errno = 0;
	v = strtoul(s, &end, 10);
	return errno == 0 && *end == '\0' && v == (unsigned long)uid;
}

/* A server is trusted when it runs as root, as us, as the service user
 * the system socket belongs to, or as the uid the caller's environment
 * names: anyone else could have put a socket where ours should be (a /tmp
 * directory made first, a swapped socket) to read our requests and forge
 * answers.  The credentials are those of the process that called listen(),
 * which the kernel recorded; the peer cannot forge them. */
static int check_server(int fd, const char *path, char *errbuf, size_t errbuf_size)
{
	struct ucred cr;
	socklen_t len = sizeof(cr);
	int e = errno;
	long svc;

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0)
		return connect_fail(errbuf, errbuf_size, MPOOL_E_SYS,
				    "cannot read the credentials of the server at %s: %s", path,
				    strerror(errno));
	if (cr.uid == 0 || cr.uid == geteuid() || cr.uid == getuid() || trusted_by_env(cr.uid))
		return 0;
	/* Only now, as it may ask NSS: the usual servers need no lookup. */
	svc = service_uid();
	errno = e;
	if (svc >= 0 && (uid_t)svc == cr.uid)
		return 0;
	return connect_fail(errbuf, errbuf_size, MPOOL_E_UNTRUSTED,
			    "the server at %s runs as uid %u, which is neither root, nor you "
			    "(uid %u), nor the %s service user, nor $MPOOL_TRUST_UID: refusing "
			    "it, as another user may have put that socket there", path,
			    (unsigned)cr.uid, (unsigned)geteuid(), MPC_SERVICE_USER);
}

int mpool_connect(const char *path, mpool **ret, char *errbuf, size_t errbuf_size)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	const struct mp_frame_limits lim = {
		.max_frame = MPC_MAX_FRAME,
		.max_depth = MP_DEPTH_MAX,
	};
	mpool *p = NULL;
	int fd = -1, r;

	if (!ret)
		return connect_fail(errbuf, errbuf_size, MPOOL_E_INVAL, "mpool_connect: no ret");
	if (path) {
		if (!*path || strlen(path) >= sizeof(sa.sun_path))
			return connect_fail(errbuf, errbuf_size, MPOOL_E_INVAL,
					    "socket path %s: %s", *path ? path : "\"\"",
					    *path ? "too long" : "empty");
		memcpy(sa.sun_path, path, strlen(path) + 1);
	} else if (mp_client_socket_path(sa.sun_path, sizeof(sa.sun_path)) < 0) {
		return connect_fail(errbuf, errbuf_size, MPOOL_E_INVAL,
				    "no usable default socket path (too long, or no uid)");
	}

	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		r = connect_fail(errbuf, errbuf_size, MPOOL_E_SYS, "socket: %s", strerror(errno));
		goto fail;
	}
	/* A Unix socket does not connect in the background: after EINTR it is
	 * still unconnected, so asking again is safe. */
	while (connect(fd, (const struct sockaddr *)&sa, sizeof(sa)) < 0) {
		if (errno != EINTR) {
			r = connect_fail(errbuf, errbuf_size, MPOOL_E_SYS, "cannot connect to %s: %s",
					 sa.sun_path, strerror(errno));
			goto fail;
		}
	}
	r = check_server(fd, sa.sun_path, errbuf, errbuf_size);
	if (r < 0)
		goto fail;
	/* Every wait is a poll(): the socket itself never blocks. */
	if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) {
		r = connect_fail(errbuf, errbuf_size, MPOOL_E_SYS, "fcntl: %s", strerror(errno));
		goto fail;
	}
	p = calloc(1, sizeof(*p));
	if (!p) {
		r = connect_fail(errbuf, errbuf_size, MPOOL_E_NOMEM,
				 "out of memory for a connection");
		goto fail;
	}
	p->fd = fd;
	p->next_msgid = 1;
	p->watch_events = -1;
	mp_frame_init(&p->frame, &lim);
	*ret = p;
	return 0;
fail:
	if (fd >= 0) {
		int e = errno;

		close(fd);
		errno = e;
	}
	return r;
}

static void fail_all(mpool *p, int code, const char *msg, bool callbacks);

void mpool_close(mpool *p)
{
	struct mpool_async *a, *next;

	if (!p)
		return;
	/* A cancel_request still queued is worth a try; nothing waits. */
	mpc_flush(p);
	close(p->fd);
	p->fd = -1;
	p->dead = true;
	p->dead_code = MPOOL_E_CLOSED;
	fail_all(p, MPOOL_E_CLOSED, "the connection was closed before the answer came", false);
	mpc_procs_detach(p);
	/* What is left is held by handles: they outlive p. */
	for (a = p->calls; a; a = next) {
		next = a->next;
		mpc_feed_stop(a);
		a->map.full = false;
		a->p = NULL;
		a->prev = a->next = NULL;
	}
	free(p->table.slot);
	free(p->out.data);
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
	errno = e;
	return -code;
}

int mpc_usable(mpool *p)
{
	static const char lost[] = "connection unusable after an earlier failure: ";
	char why[MPC_ERRMSG_MAX];

	if (!p->dead)
		return 0;
	/* Keep the first cause in the message, once. */
	if (strncmp(p->errmsg, lost, sizeof(lost) - 1) == 0)
		return -MPOOL_E_CLOSED;
	memcpy(why, p->errmsg, sizeof(why));
	why[sizeof(why) - 1] = '\0';
	return mpc_err(p, MPOOL_E_CLOSED, "%s%s", lost, why);
}

int mpc_can_block(mpool *p)
{
	if (p->depth == 0)
		return 0;
	return mpc_err(p, MPOOL_E_INVAL,
		       "a libmpool callback cannot wait on or read its own connection");
}

/* ---- the msgid table --------------------------------------------------- */

static size_t home(uint64_t msgid, size_t cap)
{
	/* msgids are sequential; an odd multiplier keeps them spread. */
	return (size_t)(msgid * 0x9e3779b97f4a7c15ull) & (cap - 1);
}

static struct mpool_async *table_find(const struct mpc_table *t, uint64_t msgid)
{
	if (t->cap == 0)
		return NULL;
	for (size_t i = home(msgid, t->cap);; i = (i + 1) & (t->cap - 1)) {
		struct mpool_async *a = t->slot[i];

		if (!a || a->msgid == msgid)
			return a;
	}
}

static void table_insert(struct mpc_table *t, struct mpool_async *a)
{
	size_t i = home(a->msgid, t->cap);

	while (t->slot[i])
		i = (i + 1) & (t->cap - 1);
	t->slot[i] = a;
	t->n++;
}

static int table_put(struct mpc_table *t, struct mpool_async *a)
{
	if ((t->n + 1) * 2 > t->cap) {
		struct mpc_table nt = { .cap = t->cap ? t->cap * 2 : 64 };

		nt.slot = calloc(nt.cap, sizeof(*nt.slot));
		if (!nt.slot)
			return -1;
		for (size_t i = 0; i < t->cap; i++)
			if (t->slot[i])
				table_insert(&nt, t->slot[i]);
		free(t->slot);
		*t = nt;
	}
	table_insert(t, a);
	return 0;
}

/* True when h lies in the cyclic range (i, j]. */
static bool cyclic_between(size_t i, size_t h, size_t j)
{
	return i <= j ? (i < h && h <= j) : (h > i || h <= j);
}

/* Removes a, then shifts the entries after it back so that every entry
 * stays reachable from its home slot (no tombstones). */
static void table_del(struct mpc_table *t, struct mpool_async *a)
{
	size_t mask = t->cap - 1, i = home(a->msgid, t->cap), j;

	while (t->slot[i] != a)
		i = (i + 1) & mask;
	t->slot[i] = NULL;
	t->n--;
	for (j = (i + 1) & mask; t->slot[j]; j = (j + 1) & mask) {
		if (cyclic_between(i, home(t->slot[j]->msgid, t->cap), j))
			continue;
		t->slot[i] = t->slot[j];
		t->slot[j] = NULL;
		i = j;
	}
}

/* ---- calls ----------------------------------------------------------- */

struct mpool_async *mpc_call_new(mpool *p, enum mpc_kind kind, size_t size)
{
	struct mpool_async *a = calloc(1, size);

	if (!a)
		return NULL;
	a->p = p;
	a->kind = kind;
	a->msgid = p->next_msgid++;
	a->owned = true;
	a->is_iter = size == sizeof(struct mpool_iter);
	a->next = p->calls;
	if (p->calls)
		p->calls->prev = a;
	p->calls = a;
	return a;
}

int mpc_call_open(struct mpool_async *a)
{
	if (table_put(&a->p->table, a) < 0)
		return -MPOOL_E_NOMEM;
	a->open = true;
	return 0;
}

static void call_free(struct mpool_async *a)
{
	mpool *p = a->p;

	if (a->kind == MPC_MAP)
		mpc_map_free(a);
	if (p) {
		if (a->prev)
			a->prev->next = a->next;
		else
			p->calls = a->next;
		if (a->next)
			a->next->prev = a->prev;
	}
	mpool_value_free(a->value);
	free(a->errmsg);
	free(a);
}

void mpc_call_maybe_free(struct mpool_async *a)
{
	if (!a->open && !a->owned && a->busy == 0)
		call_free(a);
}

void mpc_call_release(struct mpool_async *a)
{
	a->owned = false;
	mpc_call_maybe_free(a);
}

const msgpack_object *mpc_call_result(const struct mpool_async *a)
{
	return a->value ? mpool_value_get(a->value) : NULL;
}

void mpc_call_complete(struct mpool_async *a, int err, const char *msg)
{
	if (a->done)
		return;
	a->done = true;
	a->err = err;
	if (err < 0)
		a->errmsg = strdup(msg && *msg ? msg : mpool_strerror(err));
	if (a->kind == MPC_MAP)
		mpc_feed_stop(a);
	if (!a->p)
		return;
	if (err == 0 && a->cb)
		MPC_CALLBACK(a, a->cb(a->ud, mpc_call_result(a)));
	else if (err < 0 && a->ecb)
		MPC_CALLBACK(a, a->ecb(a->ud, err, a->errmsg ? a->errmsg : "out of memory"));
}

void mpc_call_fail(struct mpool_async *a, int code, const char *fmt, ...)
{
	char msg[MPC_ERRMSG_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	mpc_call_complete(a, -code, msg);
}

/* Fails every open call with code (callbacks: run theirs) and empties the
 * table.  Calls stay marked open while they wait on the local list, so a
 * callback that frees one cannot free it under this loop. */
static void fail_all(mpool *p, int code, const char *msg, bool callbacks)
{
	struct mpool_async *list = NULL, *a;

	for (size_t i = 0; i < p->table.cap; i++) {
		a = p->table.slot[i];
		if (!a)
			continue;
		a->fail_next = list;
		list = a;
		p->table.slot[i] = NULL;
	}
	p->table.n = 0;
	while ((a = list)) {
		list = a->fail_next;
		a->open = false;
		if (!callbacks)
			a->cb = NULL, a->ecb = NULL;
		mpc_call_complete(a, -code, msg);
		mpc_call_maybe_free(a);
	}
}

void mpc_conn_fail(mpool *p, int code, const char *fmt, ...)
{
	char msg[MPC_ERRMSG_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (p->dead)
		return;
	p->dead = true;
	p->dead_code = code;
	p->out.start = p->out.len = 0;
	snprintf(p->errmsg, sizeof(p->errmsg), "%s", msg);
	fail_all(p, code, msg, true);
	/* Callbacks may have written errmsg: the cause wins. */
	snprintf(p->errmsg, sizeof(p->errmsg), "%s", msg);
}

/* ---- output ---------------------------------------------------------- */

static int out_reserve(struct mpc_out *o, size_t n)
{
	size_t cap;
	uint8_t *d;

	if (o->cap - o->len >= n)
		return 0;
	if (o->start > 0) {
		memmove(o->data, o->data + o->start, o->len - o->start);
		o->len -= o->start;
		o->start = 0;
		if (o->cap - o->len >= n)
			return 0;
	}
	cap = o->cap ? o->cap : 4096;
	while (cap - o->len < n) {
		if (cap > SIZE_MAX / 2)
			return -1;
		cap *= 2;
	}
	d = realloc(o->data, cap);
	if (!d)
		return -1;
	o->data = d;
	o->cap = cap;
	return 0;
}

int mpc_out_write(mpool *p, const void *buf, size_t len)
{
	if (len == 0)
		return 0;
	if (out_reserve(&p->out, len) < 0)
		return -1;
	memcpy(p->out.data + p->out.len, buf, len);
	p->out.len += len;
	return 0;
}

static int out_pack_write(void *data, const char *buf, size_t len)
{
	return mpc_out_write(data, buf, len);
}

void mpc_packer(mpool *p, msgpack_packer *pk)
{
	msgpack_packer_init(pk, p, out_pack_write);
}

/* Marks are lengths, not offsets: out_reserve may slide the data. */
size_t mpc_out_mark(const mpool *p)
{
	return p->out.len - p->out.start;
}

void mpc_out_rollback(mpool *p, size_t mark)
{
	p->out.len = p->out.start + mark;
}

size_t mpc_out_pending(const mpool *p)
{
	return p->out.len - p->out.start;
}

void mpc_flush(mpool *p)
{
	struct mpc_out *o = &p->out;

	if (p->dead || p->wclosed || p->fail_code)
		return;
	while (o->start < o->len) {
		ssize_t n = send(p->fd, o->data + o->start, o->len - o->start,
				 MSG_NOSIGNAL | MSG_DONTWAIT);

		if (n >= 0) {
			o->start += (size_t)n;
			continue;
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			return;
		if (errno == EPIPE || errno == ECONNRESET) {
			/* The daemon may have said why in an "error"
			 * notification: the next step reads it. */
			p->wclosed = true;
		} else {
			p->fail_code = MPOOL_E_SYS;
			snprintf(p->fail_msg, sizeof(p->fail_msg), "cannot send to mpoold: %s",
				 strerror(errno));
		}
		o->start = o->len = 0;
		return;
	}
	o->start = o->len = 0;
	if (o->cap > MPC_OUT_KEEP) {
		/* Give back what a large request took. */
		free(o->data);
		o->data = NULL;
		o->cap = 0;
	}
}

void mpc_send_soon(mpool *p)
{
	if ((p->cork > 0 || p->depth > 0 || p->reading) && mpc_out_pending(p) < MPC_CORK_MAX)
		return;
	mpc_flush(p);
}

int mpool_cork(mpool *p)
{
	if (!p)
		return -MPOOL_E_INVAL;
	if (p->cork == UINT_MAX)
		return mpc_err(p, MPOOL_E_INVAL, "mpool_cork nested too deep");
	p->cork++;
	return 0;
}

int mpool_uncork(mpool *p)
{
	if (!p)
		return -MPOOL_E_INVAL;
	if (p->cork == 0)
		return mpc_err(p, MPOOL_E_INVAL, "mpool_uncork without mpool_cork");
	p->cork--;
	mpc_send_soon(p);
	mpc_watch_update(p);
	return 0;
}

int mpc_pack_head(mpool *p, uint64_t msgid, const char *method, uint32_t n_params)
{
	msgpack_packer pk;

	mpc_packer(p, &pk);
	if (mp_pack_request_head(&pk, msgid, method) < 0 || msgpack_pack_array(&pk, n_params) < 0)
		return -1;
	return 0;
}

/* ---- input and routing ------------------------------------------------- */

/* The msgid a result or credit notification starts with. */
static int note_msgid(const struct mp_msg *m, uint64_t *ret)
{
	struct mp_cur c;
	uint32_t n;

	mp_cur_init(&c, m->body, m->body_len);
	if (mp_read_array(&c, &n) < 0 || n < 1 || mp_read_u64(&c, ret) < 0)
		return -1;
	return 0;
}

static void route_response(mpool *p, const struct mp_msg *m)
{
	struct mpool_async *a = table_find(&p->table, m->msgid);

	if (!a) {
		mpc_conn_fail(p, MPOOL_E_PROTO, "mpoold answered msgid %llu, which is not open",
			      (unsigned long long)m->msgid);
		return;
	}
	table_del(&p->table, a);
	a->open = false;
	a->busy++;
	if (a->kind == MPC_MAP)
		mpc_map_response(p, a, m);
	else
		mpc_simple_response(p, a, m);
	a->busy--;
	mpc_call_maybe_free(a);
}

static void route_note(mpool *p, const struct mp_msg *m)
{
	bool result = mp_str_eq(m->method, m->method_len, "result");
	bool credit = mp_str_eq(m->method, m->method_len, "credit");
	struct mpool_async *a;
	uint64_t msgid;

	if (mp_str_eq(m->method, m->method_len, "error")) {
		struct mp_cur c;
		const char *msg;
		uint32_t n, msg_len;
		int64_t index;
		int code;

		mp_cur_init(&c, m->body, m->body_len);
		if (mp_read_array(&c, &n) < 0 || n < 1 ||
		    mp_read_error(&c, &code, &msg, &msg_len, &index) < 0 || code <= 0) {
			mpc_conn_fail(p, MPOOL_E_PROTO, "mpoold sent a malformed error notification");
			return;
		}
		mpc_conn_fail(p, code, "mpoold closed the connection: %.*s", (int)msg_len, msg);
		return;
	}
	/* Notifications a later protocol may add are none of ours. */
	if (!result && !credit)
		return;
	if (note_msgid(m, &msgid) < 0) {
		mpc_conn_fail(p, MPOOL_E_PROTO, "mpoold sent a malformed %s notification",
			      result ? "result" : "credit");
		return;
	}
	a = table_find(&p->table, msgid);
	if (!a || a->kind != MPC_MAP || (credit && !a->map.stream)) {
		mpc_conn_fail(p, MPOOL_E_PROTO, "mpoold sent a %s notification for msgid %llu, %s",
			      result ? "result" : "credit", (unsigned long long)msgid,
			      !a ? "which is not open" : "which is no streamed map");
		return;
	}
	a->busy++;
	if (result)
		mpc_map_result(p, a, m);
	else
		mpc_feed_credit(p, a, m);
	a->busy--;
	mpc_call_maybe_free(a);
}

static void route(mpool *p, const uint8_t *frame, size_t len)
{
	struct mp_msg m;
	uint64_t id;
	int id_ok;

	if (mp_msg_parse(frame, len, &m, &id_ok, &id) < 0) {
		mpc_conn_fail(p, MPOOL_E_PROTO, "mpoold sent a message that is not MessagePack-RPC");
		return;
	}
	if (m.type == MP_REQUEST)
		mpc_conn_fail(p, MPOOL_E_PROTO, "mpoold sent a request");
	else if (m.type == MP_RESPONSE)
		route_response(p, &m);
	else
		route_note(p, &m);
}

static void frame_fail(mpool *p, int r)
{
	switch (r) {
	case -EMSGSIZE:
		mpc_conn_fail(p, MPOOL_E_PROTO, "mpoold sent a message larger than %zu bytes",
			      MPC_MAX_FRAME);
		break;
	case -ELOOP:
		mpc_conn_fail(p, MPOOL_E_PROTO, "mpoold sent a message nested deeper than %d levels",
			      MP_DEPTH_MAX);
		break;
	default:
		mpc_conn_fail(p, MPOOL_E_PROTO, "mpoold sent bytes that are not MessagePack");
	}
}

bool mpc_ready(const struct mpool_async *a)
{
	return a->done || (a->is_iter && mpc_iter_has(a));
}

/* Whether routing may go on: not while an iterator is full, unless a wait
 * needs an answer that may come after its results. */
static bool may_route(const mpool *p, const struct mpool_async *until)
{
	return p->n_full == 0 || (until && !mpc_ready(until));
}

/* One read into the framer: bytes read, 0 at the end of the stream, or
 * -errno; *ret_room is what the read asked for. */
static ssize_t read_once(mpool *p, size_t *ret_room)
{
	size_t want = mp_frame_read_size(&p->frame, MPC_READ_CHUNK);
	uint8_t *buf = mp_frame_space(&p->frame, want, ret_room);
	ssize_t n;

	if (!buf)
		return -ENOMEM;
	/* Not all the room: a large result frame is adopted whole
	 * (mpc_decode_items), and whatever the read took past its end is
	 * copied into a new buffer. */
	if (*ret_room > want)
		*ret_room = want;
	n = read(p->fd, buf, *ret_room);
	if (n < 0)
		return -errno;
	mp_frame_commit(&p->frame, (size_t)n);
	return n;
}

/* Routes the frames held and reads more, until EAGAIN, the budget, or
 * may_route() says stop.  1 when bytes were read, 0 when not, -1 when the
 * connection failed. */
static int read_some(mpool *p, struct mpool_async *until, size_t budget, size_t *got,
		     bool drain)
{
	bool any = false, emptied = false;
	size_t room = 0;

	for (;;) {
		const uint8_t *frame;
		size_t len;
		ssize_t n;
		int r;

		while (drain || may_route(p, until)) {
			r = mp_frame_next(&p->frame, &frame, &len);
			if (r == 0)
				break;
			if (r < 0) {
				frame_fail(p, r);
				return -1;
			}
			route(p, frame, len);
			if (p->dead)
				return -1;
		}
		if (!drain && (!may_route(p, until) || *got >= budget || emptied))
			return any;
		n = read_once(p, &room);
		if (n > 0) {
			*got += (size_t)n;
			any = true;
			/* A short read took all the socket held: another
			 * read would only say EAGAIN, a system call per
			 * message for nothing. */
			emptied = (size_t)n < room;
			continue;
		}
		if (n == -EINTR)
			continue;
		if (n == -EAGAIN || n == -EWOULDBLOCK)
			return any;
		if (drain)
			return -1;    /* the caller says why */
		if (n == -ENOMEM)
			mpc_conn_fail(p, MPOOL_E_NOMEM, "out of memory reading from mpoold");
		else if (n == 0 || n == -ECONNRESET)
			mpc_conn_fail(p, MPOOL_E_CLOSED, "mpoold closed the connection%s",
				      mp_frame_pending(&p->frame) ? " in the middle of a message" : "");
		else
			mpc_conn_fail(p, MPOOL_E_SYS, "cannot read from mpoold: %s",
				      strerror((int)-n));
		return -1;
	}
}

/* A send failed earlier: route what the daemon still sent (it may explain
 * itself in an "error" notification), then fail the connection. */
static void apply_broken(mpool *p)
{
	size_t got = 0;

	if (p->wclosed) {
		read_some(p, NULL, SIZE_MAX, &got, true);
		if (!p->dead)
			mpc_conn_fail(p, MPOOL_E_CLOSED,
				      "mpoold closed the connection while a request was sent");
	} else {
		mpc_conn_fail(p, p->fail_code, "%s", p->fail_msg);
	}
}

int mpc_step(mpool *p, struct mpool_async *until, size_t budget)
{
	size_t got = 0;
	int r;

	/* What callbacks queue while this step reads leaves with the last
	 * flush below, in one write. */
	p->reading = true;
	while (!p->dead) {
		mpc_flush(p);
		while (mpc_feed_pump(p))
			mpc_flush(p);
		if (p->wclosed || p->fail_code) {
			apply_broken(p);
			break;
		}
		r = read_some(p, until, budget, &got, false);
		/* New credit may let a producer go on. */
		if (r <= 0 || got >= budget || p->n_streams == 0)
			break;
	}
	/* Credit read in the last round (the budget may have ended the loop
	 * right after it) is used now: mpoold may have nothing more to say
	 * until the feeds come, and a wait would then wait for ever. */
	if (!p->dead && !p->wclosed && !p->fail_code)
		while (mpc_feed_pump(p))
			mpc_flush(p);
	p->reading = false;
	if (!p->dead) {
		mpc_flush(p);
		if (p->wclosed || p->fail_code)
			apply_broken(p);
	}
	mpc_watch_update(p);
	return p->dead ? -p->dead_code : 0;
}

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int mpc_wait(struct mpool_async *a, int timeout_ms)
{
	mpool *p = a->p;
	int64_t deadline = timeout_ms > 0 ? now_ms() + timeout_ms : 0;
	bool first = true;

	for (;;) {
		struct pollfd pfd;
		int left = -1;

		if (mpc_ready(a) || !p || p->dead)
			return 1;
		if (p->depth > 0)
			return 0;     /* a callback may only look */
		if (first && timeout_ms != 0 && p->n_streams == 0 &&
		    mp_frame_pending(&p->frame) == 0 && !p->wclosed && !p->fail_code) {
			/* A wait that polls anyway starts by only sending: a
			 * read before the poll would, for a request just sent,
			 * find nothing and cost a system call.  A producer to
			 * call, frames held or a failed send need a step. */
			first = false;
			mpc_flush(p);
			if (p->wclosed || p->fail_code)
				continue;
		} else {
			first = false;
			mpc_step(p, a, MPC_PROCESS_BUDGET);
			if (mpc_ready(a) || p->dead)
				return 1;
			if (timeout_ms == 0)
				return 0;
		}
		if (timeout_ms > 0) {
			int64_t rest = deadline - now_ms();

			if (rest <= 0)
				return 0;
			left = rest > INT32_MAX ? INT32_MAX : (int)rest;
		}
		pfd.fd = p->fd;
		pfd.events = POLLIN;
		if (mpc_out_pending(p) > 0)
			pfd.events |= POLLOUT;
		pfd.revents = 0;
		if (poll(&pfd, 1, left) < 0 && errno != EINTR) {
			mpc_conn_fail(p, MPOOL_E_SYS, "cannot poll the connection to mpoold: %s",
				      strerror(errno));
			return 1;
		}
	}
}

/* ---- the event-loop interface ------------------------------------------ */

int mpool_fd(const mpool *p)
{
	return p ? p->fd : -1;
}

int mpool_events(const mpool *p)
{
	int ev = 0;

	if (!p || p->dead)
		return 0;
	if (p->wclosed || p->fail_code)
		return MPOOL_EV_READ | MPOOL_EV_WRITE;   /* process() must run soon */
	if (mpc_out_pending(p) > 0)
		ev |= MPOOL_EV_WRITE;
	if (p->n_full == 0)
		ev |= MPOOL_EV_READ;
	return ev;
}

void mpc_watch_update(mpool *p)
{
	int ev;

	if (!p->watch)
		return;
	ev = mpool_events(p);
	if (ev == p->watch_events)
		return;
	p->watch_events = ev;
	p->watch(p->watch_ud, ev);
}

void mpool_set_watch(mpool *p, mpool_watch_cb cb, void *userdata)
{
	if (!p)
		return;
	p->watch = cb;
	p->watch_ud = userdata;
	p->watch_events = -1;
	mpc_watch_update(p);
}

int mpool_process(mpool *p)
{
	int r;

	if (!p)
		return -MPOOL_E_INVAL;
	if (p->depth > 0)
		return mpc_err(p, MPOOL_E_INVAL, "mpool_process cannot run inside a libmpool callback");
	r = mpc_usable(p);
	if (r < 0)
		return r;
	return mpc_step(p, NULL, MPC_PROCESS_BUDGET);
}
