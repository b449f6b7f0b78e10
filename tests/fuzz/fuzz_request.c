/* fuzz_request: libFuzzer target over mpoold's request handling -- the real
 * daemon/conn.c (transport) and rpc*.c (methods), not a copy of them.
 *
 * The request validator is not a function that can be called on a frame:
 * rpc_dispatch() validates and acts in one pass (look the function up,
 * check the limits and the msgid, submit the job, answer through the
 * connection's buffer).  So this target links the daemon's
 * sources and drives them the way a client does, in one process: mpoold's
 * accept callback on a listening socket, one real connection per input,
 * the input written to it in two parts (cut where the data says), then
 * end-of-file, with the daemon's libevent loop run without blocking until
 * the daemon has dropped the connection.  No worker exists: work is queued
 * and dropped when the connection closes, so every path up to and
 * including disp_submit() and disp_feed() runs.
 *
 * The process is root in CI, hence an admin: terminate, drain and reload
 * are link-time wrapped (-Wl,--wrap) into no-ops that only count, and
 * --max-processes is 0, so spawn answers "limit" without forking.
 *
 * Checked on every input, besides ASan/UBSan/LSan's own checks:
 *   - everything mpoold writes back is a sequence of whole MessagePack-RPC
 *     responses and notifications ("result", "credit", "error"), each
 *     within the depth limit and readable by msgpack-c;
 *   - every error object has a known code (1 ... 16) and a message of
 *     printable ASCII, whatever bytes the request held;
 *   - after an "error" notification mpoold sends nothing more;
 *   - a client dropped with an "error" notification is gone by the end of
 *     its input; any other is answered what it can be (no worker runs
 *     here) and then closed as mpoold's exit does, after which the daemon
 *     is back to zero connections and zero active jobs.
 *
 * Input layout: byte 0 is unused by this target (it picks limits in
 * fuzz_frame, and the two share the seed corpus), bytes 1-2 the cut
 * point, the rest the client's byte stream. */
#include <errno.h>
#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/event.h>
#include <msgpack.h>
#include <mpool/error.h>

#include "config.h"
#include "conn.h"
#include "disp.h"
#include "log.h"
#include "mp_frame.h"
#include "mp_rpc.h"
#include "registry.h"

#define CHECK(c) do { \
	if (!(c)) { \
		fprintf(stderr, "fuzz_request: %s:%d: check failed: %s\n", __FILE__, __LINE__, #c); \
		abort(); \
	} \
} while (0)

#define MAX_TURNS 20000        /* loop turns from EOF to the connection's end */
#define OPEN_TURNS 64          /* loop turns a half-closed client gets to be answered */

static struct event_base *base;
static struct sockaddr_un addr;
static socklen_t addr_len;
static unsigned long admin_calls;

/* The admin methods' effects would end this process or change its state
 * for every later input: counted, not done. */
void __wrap_master_terminate(const char *why);
void __wrap_master_drain(const char *why);
void __wrap_master_reload(const char *why);

void __wrap_master_terminate(const char *why)
{
	(void)why;
	admin_calls++;
}

void __wrap_master_drain(const char *why)
{
	(void)why;
	admin_calls++;
}

void __wrap_master_reload(const char *why)
{
	(void)why;
	admin_calls++;
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	int lfd;

	(void)argc;
	(void)argv;
	log_init(LOG_EMERG);            /* the daemon's own log is noise here */
	cfg.workers = 2;
	cfg.max_processes = 0;          /* spawn: "limit", never a fork */
	CHECK(reg_add(&builtin_module, NULL, 0) == 0);
	/* As master.c does: the dispatcher reaches clients and workers only
	 * through its ops. */
	disp_init(&disp_daemon_ops);
	base = event_base_new();
	CHECK(base);
	/* An abstract socket: nothing to clean up, no clash between runs. */
	addr.sun_family = AF_UNIX;
	snprintf(addr.sun_path + 1, sizeof(addr.sun_path) - 1, "mpool-fuzz-request-%d", (int)getpid());
	addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(addr.sun_path + 1));
	lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	CHECK(lfd >= 0);
	CHECK(bind(lfd, (struct sockaddr *)&addr, addr_len) == 0);
	CHECK(listen(lfd, 16) == 0);
	CHECK(conn_listen(base, lfd) == 0);
	return 0;
}

/* What the client has read so far. */
struct reader {
	struct mp_frame in;
	bool got_error_note;    /* the daemon said why it drops us */
	bool eof;
};

static void check_error_object(struct mp_cur *c)
{
	const char *msg;
	uint32_t msg_len;
	int64_t index;
	int code;

	CHECK(mp_read_error(c, &code, &msg, &msg_len, &index) == 0);
	CHECK(code >= MPOOL_E_BADREQ && code <= MPOOL_E_NOTFOUND);
	CHECK(msg_len > 0);
	for (uint32_t i = 0; i < msg_len; i++)
		CHECK(msg[i] >= 0x20 && msg[i] < 0x7f);
}

static void check_reply(struct reader *rd, const uint8_t *f, size_t len)
{
	msgpack_unpacked up;
	struct mp_msg m;
	struct mp_cur c;
	uint64_t msgid;
	uint32_t n;
	size_t off = 0;
	int ok;

	CHECK(!rd->got_error_note);     /* nothing after the farewell */
	msgpack_unpacked_init(&up);
	CHECK(msgpack_unpack_next(&up, (const char *)f, len, &off) == MSGPACK_UNPACK_SUCCESS);
	CHECK(off == len);
	msgpack_unpacked_destroy(&up);
	CHECK(mp_msg_parse(f, len, &m, &ok, &msgid) == 0);
	CHECK(m.type == MP_RESPONSE || m.type == MP_NOTIFY);
	if (m.type == MP_RESPONSE) {
		mp_cur_init(&c, m.error, m.error_len);
		if (mp_read_nil(&c) < 0) {
			/* An error response carries no result. */
			check_error_object(&c);
			CHECK(mp_cur_done(&c));
			mp_cur_init(&c, m.body, m.body_len);
			CHECK(mp_read_nil(&c) == 0);
		}
		return;
	}
	mp_cur_init(&c, m.body, m.body_len);
	CHECK(mp_read_array(&c, &n) == 0);
	if (mp_str_eq(m.method, m.method_len, "error")) {
		CHECK(n == 1);
		check_error_object(&c);
		rd->got_error_note = true;
	} else if (mp_str_eq(m.method, m.method_len, "credit")) {
		CHECK(n == 2 && mp_read_u64(&c, &msgid) == 0);
	} else {
		/* No worker runs, so no result can come. */
		CHECK(!"an unexpected notification");
	}
}

/* Reads what the daemon wrote, checking each whole reply. */
static void read_replies(int fd, struct reader *rd)
{
	const uint8_t *f;
	size_t len;
	ssize_t n;
	int r;

	while (!rd->eof) {
		n = mp_frame_read(&rd->in, fd);
		if (n == -EAGAIN)
			break;
		if (n == 0 || n == -ECONNRESET) {
			rd->eof = true;
			break;
		}
		CHECK(n > 0);
		while ((r = mp_frame_next(&rd->in, &f, &len)) == 1)
			check_reply(rd, f, len);
		CHECK(r == 0);          /* mpoold writes only whole, sane frames */
	}
}

static void pump(int fd, struct reader *rd)
{
	CHECK(event_base_loop(base, EVLOOP_NONBLOCK) >= 0);
	read_replies(fd, rd);
}

/* Writes all of buf, turning the daemon's loop while the socket is full.
 * Stops early when the daemon has dropped us. */
static void send_all(int fd, struct reader *rd, const uint8_t *buf, size_t len)
{
	unsigned turns = 0;

	while (len > 0) {
		ssize_t n = send(fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);

		if (n < 0 && (errno == EPIPE || errno == ECONNRESET))
			return;
		if (n < 0) {
			CHECK(errno == EAGAIN);
			CHECK(++turns < MAX_TURNS);
			pump(fd, rd);
			if (conn_count() == 0)
				return;
			continue;
		}
		buf += n;
		len -= (size_t)n;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct mp_frame_limits lim = { .max_frame = 1u << 30, .max_depth = MP_DEPTH_MAX };
	struct reader rd = { .got_error_note = false };
	size_t cut;
	unsigned turns;
	int fd;

	if (size < 3)
		return 0;
	cut = (size_t)data[1] | (size_t)data[2] << 8;
	data += 3;
	size -= 3;
	cut = size ? cut % (size + 1) : 0;

	mp_frame_init(&rd.in, &lim);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	CHECK(fd >= 0);
	CHECK(connect(fd, (struct sockaddr *)&addr, addr_len) == 0);
	for (turns = 0; conn_count() == 0; turns++) {
		CHECK(turns < MAX_TURNS);
		pump(fd, &rd);
	}
	send_all(fd, &rd, data, cut);
	pump(fd, &rd);
	send_all(fd, &rd, data + cut, size - cut);
	shutdown(fd, SHUT_WR);
	/* End of input: a half-closed client is answered what it has open,
	 * then let go (PROTOCOL.md).  No worker exists here, so a job stays
	 * open: after a bounded number of turns the daemon's exit path closes
	 * the connection, and must let go of every job it opened.  A client it
	 * dropped with an error notification must be gone by then. */
	for (turns = 0; conn_count() > 0 && turns < OPEN_TURNS; turns++)
		pump(fd, &rd);
	CHECK(!rd.got_error_note || conn_count() == 0);
	read_replies(fd, &rd);
	conn_close_all();
	CHECK(disp_active() == 0);
	CHECK(disp_chunks_queued() == 0);
	close(fd);
	mp_frame_free(&rd.in);
	return 0;
}
