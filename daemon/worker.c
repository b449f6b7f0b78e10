/* A worker's buffers start small and grow to what its chunks need: a
 * recycled worker that runs one small task should touch few pages. */
#define MSGPACK_SBUFFER_INIT_SIZE 256

#include "worker.h"

#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "mp_frame.h"
#include "mp_obj.h"
#include "mp_rpc.h"
#include "registry.h"
#include "wmsg.h"

#define WORKER_FD 3

/* Leaves the parent's descriptors behind (listening socket, clients, other
 * workers' pairs, the epoll instance).  Signals and the environment were
 * reset by whoever forked us. */
static void worker_detach(int fd, pid_t parent)
{
	/* Die with the parent, even when it is SIGKILLed.  The getppid()
	 * check closes the race with a parent that died before prctl. */
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
		_exit(WORKER_EXIT_OK);

	if (fd != WORKER_FD) {
		if (dup3(fd, WORKER_FD, 0) < 0)
			_exit(WORKER_EXIT_PROTO);
		close(fd);
	}
	close_range(WORKER_FD + 1, ~0U, 0);
}

void worker_drop_service_env(void)
{
	unsetenv("NOTIFY_SOCKET");
	unsetenv("WATCHDOG_USEC");
	unsetenv("WATCHDOG_PID");
	unsetenv("LISTEN_FDS");
	unsetenv("LISTEN_PID");
	unsetenv("LISTEN_FDNAMES");
}

static void write_all(const struct iovec *iov, int n)
{
	struct iovec v[4];
	struct msghdr mh = { 0 };

	memcpy(v, iov, sizeof(v[0]) * (size_t)n);
	mh.msg_iov = v;
	mh.msg_iovlen = (size_t)n;
	while (mh.msg_iovlen > 0) {
		ssize_t w = sendmsg(WORKER_FD, &mh, MSG_NOSIGNAL);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			_exit(WORKER_EXIT_OK);      /* the master is gone */
		}
		while (mh.msg_iovlen > 0 && (size_t)w >= mh.msg_iov->iov_len) {
			w -= (ssize_t)mh.msg_iov->iov_len;
			mh.msg_iov++;
			mh.msg_iovlen--;
		}
		if (mh.msg_iovlen > 0) {
			mh.msg_iov->iov_base = (char *)mh.msg_iov->iov_base + w;
			mh.msg_iov->iov_len -= (size_t)w;
		}
	}
}

/* sb: the worker's buffer for its pieces' heads. */
static void send_ready(msgpack_sbuffer *sb)
{
	msgpack_packer pk;

	sb->size = 0;
	msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
	if (mp_pack_notify_head(&pk, "ready") < 0 || msgpack_pack_array(&pk, 1) < 0 ||
	    msgpack_pack_int64(&pk, getpid()) < 0)
		_exit(WORKER_EXIT_PROTO);
	write_all(&(struct iovec){ sb->data, sb->size }, 1);
}

/* Reused across chunks.  results and errors hold the elements of the piece
 * not yet sent; their array headers are packed when it goes out.  The zone
 * is set up on the first argument that is no scalar. */
struct run_bufs {
	msgpack_sbuffer head, results, errors, tail;
	msgpack_zone zone;
	bool zone_ready;
};

/* Read after every item: the coarse clock costs a few ns instead of ~20,
 * and its tick (a few ms) is within the slack the master's deadline
 * allows (WMSG_PART_SLACK_MS). */
static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* index -1: none (a one-off process's error). */
static void pack_task_error(msgpack_packer *pk, int64_t index, const struct mpool_task_error *err)
{
	const char *msg = err->message[0] ? err->message : "task failed without a message";

	if (mp_pack_error(pk, err->code ? err->code : MPOOL_E_TASK, msg, index) < 0)
		_exit(WORKER_EXIT_PROTO);
}

/* A "part" notification, or the final response that ends the chunk. */
static void send_piece(struct run_bufs *b, uint64_t seq, bool final, uint32_t n_items,
		       uint32_t n_err)
{
	msgpack_packer hpk, tpk;
	struct iovec iov[4];
	int r;

	b->head.size = b->tail.size = 0;
	msgpack_packer_init(&hpk, &b->head, msgpack_sbuffer_write);
	if (final) {
		r = mp_pack_response_head(&hpk, seq);
		r |= msgpack_pack_nil(&hpk);
		r |= msgpack_pack_array(&hpk, 2);
	} else {
		r = mp_pack_notify_head(&hpk, "part");
		r |= msgpack_pack_array(&hpk, 3);
		r |= msgpack_pack_uint64(&hpk, seq);
	}
	/* errors before results (wmsg.h says why). */
	r |= msgpack_pack_array(&hpk, n_err);
	msgpack_packer_init(&tpk, &b->tail, msgpack_sbuffer_write);
	r |= msgpack_pack_array(&tpk, n_items);
	if (r)
		_exit(WORKER_EXIT_PROTO);
	iov[0] = (struct iovec){ b->head.data, b->head.size };
	iov[1] = (struct iovec){ b->errors.data, b->errors.size };
	iov[2] = (struct iovec){ b->tail.data, b->tail.size };
	iov[3] = (struct iovec){ b->results.data, b->results.size };
	write_all(iov, 4);
	b->results.size = b->errors.size = 0;
}

/* Whether a task packed exactly one value of at most MP_ITEM_DEPTH_MAX
 * levels. */
static bool one_result(const char *p, size_t len)
{
	size_t n;

	return mp_scan_one((const uint8_t *)p, len, MP_ITEM_DEPTH_MAX, &n) == 1 && n == len;
}

/* Calls fn (NULL: not found) on arg, packing its result at the end of out.
 * 0, or -1 with err filled and out as it was. */
static int call_task(const struct reg_fn *fn, const char *name, uint32_t name_len,
		     const msgpack_object *arg, msgpack_sbuffer *out, struct mpool_task_error *err)
{
	msgpack_packer pk;
	size_t before = out->size;
	int rc;

	msgpack_packer_init(&pk, out, msgpack_sbuffer_write);
	rc = reg_call(fn, arg, &pk, err);
	if (rc == 0 && !one_result(out->data + before, out->size - before)) {
		rc = -1;
		err->code = MPOOL_E_RESULT;
		snprintf(err->message, sizeof(err->message),
			 "%.*s did not produce exactly one result of at most %d levels",
			 (int)name_len, name, MP_ITEM_DEPTH_MAX);
	}
	if (rc != 0)
		out->size = before;
	return rc;
}

/* Runs one chunk, streaming its results in pieces; the tasks run. */
static uint32_t run_chunk(struct run_bufs *b, const struct wmsg_run *run)
{
	msgpack_packer rpk, epk;
	const struct reg_fn *fn = reg_lookup(run->fn, run->fn_len);
	uint32_t piece = 0, n_err = 0;
	/* A chunk of one item, or one reported item by item, never looks at
	 * the clock: a worker recycled after one task maps no vDSO page. */
	bool timed = run->count > 1 && !run->each;
	uint64_t last_sent = timed ? mono_ms() : 0, now;
	size_t off = 0;

	b->results.size = b->errors.size = 0;
	msgpack_packer_init(&rpk, &b->results, msgpack_sbuffer_write);
	msgpack_packer_init(&epk, &b->errors, msgpack_sbuffer_write);

	for (uint32_t i = 0; i < run->count; i++) {
		struct mpool_task_error err = { .code = MPOOL_E_TASK };
		msgpack_object arg;
		size_t len;

		/* Scalars without the unpacker and its zone: most items are. */
		len = mp_obj_scalar(run->items + off, run->items_len - off, &arg);
		if (len > 0) {
			off += len;
		} else {
			if (!b->zone_ready && !msgpack_zone_init(&b->zone, 4096))
				_exit(WORKER_EXIT_PROTO);
			b->zone_ready = true;
			msgpack_zone_clear(&b->zone);
			if (msgpack_unpack((const char *)run->items, run->items_len, &off,
					   &b->zone, &arg) < 0)
				_exit(WORKER_EXIT_PROTO);
		}
		if (call_task(fn, run->fn, run->fn_len, &arg, &b->results, &err) < 0) {
			msgpack_pack_nil(&rpk);
			pack_task_error(&epk, (int64_t)(run->first + i), &err);
			n_err++;
		}
		piece++;
		if (i + 1 == run->count)
			break;
		now = timed ? mono_ms() : 0;
		if (run->each || now - last_sent >= WMSG_PART_MS) {
			send_piece(b, run->seq, false, piece, n_err);
			piece = n_err = 0;
			last_sent = now;
		}
	}
	send_piece(b, run->seq, true, piece, n_err);
	return run->count;
}

void worker_main(int fd, pid_t parent, uint64_t quota)
{
	struct mp_frame_limits lim = {
		.max_frame = cfg.max_frame + CONFIG_WORKER_FRAME_SLACK,
		.max_depth = MP_DEPTH_MAX,
	};
	struct mpool_task_error err = { 0 };
	struct run_bufs b;
	struct mp_frame in;
	const char *failed;
	uint64_t done = 0;

	worker_detach(fd, parent);
	if (reg_init_all(&err, &failed) < 0) {
		log_err("worker %d: module %s: init failed: %s", (int)getpid(), failed,
			err.message[0] ? err.message : "no reason given");
		_exit(WORKER_EXIT_INIT);
	}
	memset(&b, 0, sizeof(b));
	mp_frame_init(&in, &lim);
	send_ready(&b.head);

	for (;;) {
		const uint8_t *frame;
		size_t len;
		struct wmsg_run run;
		ssize_t n;
		int r;

		while ((r = mp_frame_next(&in, &frame, &len)) == 1) {
			if (wmsg_parse_run(frame, len, &run) < 0)
				_exit(WORKER_EXIT_PROTO);
			done += run_chunk(&b, &run);
			if (quota && done >= quota) {
				reg_fini_all();
				_exit(WORKER_EXIT_OK);
			}
		}
		if (r < 0)
			_exit(WORKER_EXIT_PROTO);
		n = mp_frame_read(&in, WORKER_FD);
		if (n == -EINTR)
			continue;
		if (n <= 0) {
			/* The master closed our channel: a drain, or it died. */
			reg_fini_all();
			_exit(WORKER_EXIT_OK);
		}
	}
}

void worker_entry(int fd, pid_t master, const void *arg)
{
	worker_drop_service_env();
	worker_main(fd, master, *(const uint64_t *)arg);
}

void worker_once_entry(int fd, pid_t master, const void *arg)
{
	const struct worker_once *once = arg;
	uint32_t fn_len = (uint32_t)strlen(once->fn);
	struct mpool_task_error err = { .code = MPOOL_E_TASK };
	msgpack_sbuffer head, body;
	msgpack_packer hpk;
	msgpack_zone zone;
	msgpack_object obj;
	const char *failed;
	struct iovec iov[2];
	size_t off = 0;
	int rc;

	worker_drop_service_env();
	worker_detach(fd, master);
	if (!msgpack_zone_init(&zone, 4096))
		_exit(WORKER_EXIT_PROTO);
	msgpack_sbuffer_init(&head);
	msgpack_sbuffer_init(&body);
	msgpack_packer_init(&hpk, &head, msgpack_sbuffer_write);
	if (reg_init_all(&err, &failed) < 0) {
		char reason[MPOOL_TASK_MSG_MAX];

		snprintf(reason, sizeof(reason), "%s", err.message[0] ? err.message : "no reason given");
		rc = -1;
		err.code = MPOOL_E_TASK;
		snprintf(err.message, sizeof(err.message), "module %.40s: init failed: %.180s",
			 failed, reason);
	} else if (msgpack_unpack((const char *)once->arg, once->arg_len, &off, &zone, &obj) < 0) {
		_exit(WORKER_EXIT_PROTO);
	} else {
		/* After init: load ran in reg_init_all, and may have failed. */
		rc = call_task(reg_lookup(once->fn, fn_len), once->fn, fn_len, &obj, &body, &err);
	}
	/* [1, 0, error, result]: the same envelope as any response. */
	if (mp_pack_response_head(&hpk, 0) < 0)
		_exit(WORKER_EXIT_PROTO);
	if (rc == 0) {
		msgpack_pack_nil(&hpk);
	} else {
		pack_task_error(&hpk, -1, &err);
		msgpack_pack_nil(&hpk);      /* the result; body is empty */
	}
	iov[0] = (struct iovec){ head.data, head.size };
	iov[1] = (struct iovec){ body.data, body.size };
	write_all(iov, 2);
	reg_fini_all();
	_exit(rc == 0 ? 0 : 1);
}
