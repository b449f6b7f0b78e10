/* libmpool internals shared by conn.c, call.c, map.c and value.c.
 *
 * The blocking API keeps one request in flight per connection: a call packs
 * its request, sends it whole, then reads messages until the response with
 * its msgid.  Anything else on the stream (a response to another msgid, a
 * notification the call does not expect) is a protocol error.
 *
 * Out-of-memory policy: every allocation is checked and fails the call with
 * -MPOOL_E_NOMEM; nothing aborts.  Where the failure strikes while the
 * daemon's answer is still streaming in, the rest of the answer is read and
 * dropped so the connection stays in step (map.c); only a framer that cannot
 * grow loses the stream, and then the connection is marked unusable. */
#ifndef LIBMPOOL_PRIVATE_H
#define LIBMPOOL_PRIVATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <msgpack.h>
#include <mpool/mpool.h>

#include "mp_frame.h"
#include "mp_rpc.h"

/* Largest reply frame accepted: above the daemon's 64 MiB default, so a
 * daemon configured with a larger --max-frame still gets through. */
#define MPC_MAX_FRAME ((size_t)256 << 20)
#define MPC_ERRMSG_MAX 1024

struct mpool {
	int fd;
	bool dead;              /* a failure lost the stream: refuse new calls */
	bool in_callback;       /* inside a map callback: refuse new calls */
	uint64_t next_msgid;
	struct mp_frame frame;
	char errmsg[MPC_ERRMSG_MAX];
};

/* Records a failure: formats errmsg and returns -code.  -MPOOL_E_SYS,
 * -MPOOL_E_PROTO and -MPOOL_E_CLOSED also mark p unusable.  errno is
 * preserved. */
int mpc_err(mpool *p, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* 0 when p may start a call; otherwise the failure to return (after an
 * earlier loss of the stream, or from inside a map callback). */
int mpc_usable(mpool *p);

/* A request being packed: [0, msgid, method, [params...]]. */
struct mpc_req {
	msgpack_sbuffer buf;
	msgpack_packer pk;
	uint64_t msgid;
};

/* Starts a request whose params array has n_params elements; the caller
 * packs them through rq->pk (or mpc_req_raw), then calls mpc_req_call.
 * 0 or -MPOOL_E_NOMEM; rq needs mpc_req_done() either way. */
int mpc_req_start(mpool *p, struct mpc_req *rq, const char *method, uint32_t n_params);
/* Appends bytes that are already MessagePack.  0 or -MPOOL_E_NOMEM. */
int mpc_req_raw(mpool *p, struct mpc_req *rq, const void *bytes, size_t len);
void mpc_req_done(struct mpc_req *rq);

/* Called for each notification that arrives before the response (the
 * "error" notification never gets here).  A negative return ends the call
 * with that code at once: use it only when the stream is lost anyway. */
typedef int (*mpc_note_fn)(mpool *p, void *userdata, const struct mp_msg *note);

/* Sends rq, then reads until its response.  Notifications go to on_note
 * (NULL: any notification is a protocol error).  Returns 0 with *ret_resp
 * pointing into the framer (valid until the next read) when the daemon
 * answered with a result, or the failure (a daemon error response
 * included). */
int mpc_req_call(mpool *p, struct mpc_req *rq, mpc_note_fn on_note, void *userdata,
		 struct mp_msg *ret_resp);

/* Decodes the one MessagePack value in bytes[0..len) into objects owned by
 * zone: the bytes are copied into the zone first, because msgpack-c's
 * objects point into the buffer they were decoded from.  0, -MPOOL_E_NOMEM,
 * or -MPOOL_E_PROTO (with errmsg set) for bytes that do not decode. */
int mpc_decode(mpool *p, msgpack_zone *zone, const uint8_t *bytes, size_t len,
	       msgpack_object *ret);

/* A value with an empty zone and a nil object; NULL when out of memory. */
mpool_value *mpc_value_new(void);
msgpack_zone *mpc_value_zone(mpool_value *v);
void mpc_value_set(mpool_value *v, const msgpack_object *obj);

/* Decodes bytes into a new value.  0 or a failure (errmsg set). */
int mpc_value_decode(mpool *p, const uint8_t *bytes, size_t len, mpool_value **ret);

/* Checks that bytes[0..len) hold exactly n whole MessagePack values, each
 * within MP_ITEM_DEPTH_MAX.  0 or -MPOOL_E_INVAL (errmsg says which). */
int mpc_check_values(mpool *p, const char *what, const void *bytes, size_t len, uint64_t n);

/* Request options, for apply and map alike (apply leaves the map ones 0). */
struct mpc_opts {
	uint32_t chunksize;
	int unordered;
	uint32_t timeout_ms;
	uint32_t retries;
};
uint32_t mpc_opts_count(const struct mpc_opts *o);
/* Packs the options map.  0, or -1 when out of memory. */
int mpc_opts_pack(msgpack_packer *pk, const struct mpc_opts *o);

#endif
