/* libmpool internals shared by its files:
 *   conn.c   the connection: socket, output queue, framing, the msgid table,
 *            routing, waits, mpool_process and failure of the connection
 *   call.c   the one-response methods, blocking (ping, apply, status, ...);
 *            request options
 *   async.c  the async handle (apply_async, map_async, wait, get, cancel);
 *            cancelling any call
 *   map.c    a map's results: checks and sinks; the blocking maps
 *   iter.c   imap iterators: a bounded buffer of chunks
 *   feed.c   streamed input: producer, credit, feeds
 *   value.c  MessagePack values crossing the API
 *   process.c supervised processes: spawn, attach, join, is_alive,
 *            terminate, kill; the handle's view of a process map
 *
 * Every request is a struct mpool_async (a "call"), blocking or not: a
 * blocking call is an async one plus a wait.  A call lives while it is open
 * (in the connection's msgid table, its response not read yet), owned (a
 * public handle or a blocking function holds it) or busy (one of its
 * callbacks runs); the last of the three to end frees it.
 *
 * Reading happens only in mpc_step(), which is never entered from a
 * callback (p->depth counts running callbacks): the frame a callback sees
 * stays put, and routing is never re-entered.
 *
 * Out-of-memory policy: every allocation is checked and fails the call with
 * -MPOOL_E_NOMEM; nothing aborts.  Where the failure strikes while the
 * daemon's answer is still streaming in, the rest of the answer is read and
 * dropped so the connection stays in step; only a framer that cannot grow
 * loses the stream, and then the connection is unusable. */
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
#define MPC_ERRMSG_MAX MPOOL_ERRMSG_MAX
/* The system user mpoold.service runs as, which owns /run/mpool
 * (systemd/mpool.sysusers): clients trust a server running as it. */
#define MPC_SERVICE_USER "mpool"
/* Bytes one mpool_process() reads at most. */
#define MPC_PROCESS_BUDGET ((size_t)1 << 20)
/* An idle output buffer larger than this is given back. */
#define MPC_OUT_KEEP ((size_t)1 << 20)
/* Held-back requests (mpool_cork(), callbacks) leave at once past this
 * many queued bytes: a burst costs one write per 64 KiB, and a corked
 * program never makes libmpool buffer without bound. */
#define MPC_CORK_MAX ((size_t)64 << 10)
/* Bytes one read asks for. */
#define MPC_READ_CHUNK ((size_t)64 << 10)

/* Bytes queued for the daemon: data[start..len). */
struct mpc_out {
	uint8_t *data;
	size_t start, len, cap;
};

/* The msgid table: open addressing, linear probing, power-of-two size. */
struct mpc_table {
	struct mpool_async **slot;
	size_t cap, n;
};

struct mpool {
	int fd;
	bool dead;              /* the stream is lost: refuse new calls */
	int dead_code;          /* why (enum mpool_error) */
	bool wclosed;           /* a send found the daemon gone: drain, then fail */
	int fail_code;          /* a failure to apply at the next step (0: none) */
	unsigned depth;         /* callbacks running */
	unsigned cork;          /* mpool_cork() calls not yet undone */
	bool reading;           /* in mpc_step: it sends what callbacks queue */
	uint64_t next_msgid;
	struct mp_frame frame;
	struct mpc_out out;
	struct mpc_table table;
	struct mpool_async *calls;   /* every live call, open or held */
	struct mpool_process *procs; /* process handles made on p */
	unsigned n_streams;     /* calls whose producer may still be called */
	unsigned n_full;        /* iterators at their bound */
	mpool_watch_cb watch;
	void *watch_ud;
	int watch_events;       /* what watch was last told */
	char fail_msg[MPC_ERRMSG_MAX];
	char errmsg[MPC_ERRMSG_MAX];
};

enum mpc_kind {
	MPC_SIMPLE,     /* one response, its result kept as a value */
	MPC_APPLY,      /* the same, and a per-item error becomes the failure */
	MPC_MAP,        /* result notifications, then a summary */
	MPC_INTERNAL    /* cancel_request: the answer is dropped */
};

/* Where a map's items come from. */
enum mpc_input {
	INPUT_COPY,     /* a buffer of items that may go away when the call returns */
	INPUT_BORROW,   /* a buffer of items that outlives the map (blocking calls) */
	INPUT_PRODUCER  /* a producer: a streamed map */
};

/* A map of at least this many items, or bytes of items, is sent as a
 * stream of parts (PROTOCOL.md "Streamed input") rather than in one
 * request: mpoold starts on the first part while the rest is on its way,
 * and neither side holds the whole map in one buffer. */
#define MPC_SLICE_MIN_ITEMS 65536u
#define MPC_SLICE_MIN_BYTES ((size_t)4 << 20)

/* Where a map's results go. */
enum mpc_sink {
	SINK_NONE,      /* dropped (detached or cancelled) */
	SINK_CHUNK,     /* the caller's chunk callback, as they arrive */
	SINK_COLLECT,   /* one array in item order (map_async, map_collect) */
	SINK_ITER       /* an iterator's buffer */
};

/* An iterator's buffered notification: the results array and the error
 * objects, still encoded. */
struct mpc_chunk {
	struct mpc_chunk *next;
	uint64_t first;
	uint32_t n, n_errs;
	size_t results_len, errors_len;
	uint8_t bytes[];
};

/* Items delivered so far, to catch a daemon that sends one twice: every
 * index below base is delivered; bits covers [base, base + 8 * cap). */
struct mpc_seen {
	uint8_t *bits;
	uint64_t base;
	size_t cap;
};

struct mpc_map {
	bool ordered;
	bool stream;
	uint64_t n_items;       /* known total; for a stream, the items sent */
	uint64_t next;          /* ordered: the first index due */
	uint64_t covered;       /* items delivered */
	uint64_t failed;        /* item errors delivered */
	struct mpc_seen seen;   /* unordered */
	struct mpool_map_summary summary;
	enum mpc_sink sink;
	int sink_err;           /* first failure of the sink; the rest is dropped */

	/* SINK_CHUNK */
	mpool_chunk_cb chunk_cb;
	void *chunk_ud;

	/* SINK_COLLECT: n_items slots in the value's zone */
	msgpack_object *items;
	bool item_failed;
	uint64_t fail_index;    /* the lowest failed item seen */
	int fail_code;
	char *fail_msg;

	/* SINK_ITER */
	struct mpc_chunk *head, *tail;
	uint64_t buf_items;
	size_t buf_bytes;
	bool full;              /* counted in p->n_full */
	struct mpc_chunk *cur;  /* the chunk being taken, decoded */
	msgpack_unpacked cur_up;
	struct mpool_item_error *cur_errs;
	const struct mpool_item_error **cur_by_item;
	uint32_t cur_pos;

	/* streamed input: a producer, or a buffer sent in parts */
	mpool_producer produce;
	void *produce_ud;
	const uint8_t *src;     /* the items still to send, src[0..src_len) */
	size_t src_len;
	uint64_t src_items;
	uint8_t *src_own;       /* the copy src points into (INPUT_COPY) */
	bool feeding;           /* counted in p->n_streams */
	uint64_t granted;       /* credit received in all */
	bool ended;             /* the feed with end true is queued */
	int input_err;          /* the producer failed: the map's outcome */
	char *input_msg;
};

struct mpool_async {
	mpool *p;               /* NULL once the connection is closed */
	struct mpool_async *prev, *next;   /* p->calls */
	struct mpool_async *fail_next;     /* mpc_fail_all's list */
	uint64_t msgid;
	enum mpc_kind kind;
	bool open;              /* in the table: the response is due */
	bool owned;             /* a handle or a blocking call holds it */
	bool done;              /* the outcome is known */
	bool cancelled;         /* cancelled here: what arrives is dropped */
	bool is_iter;           /* allocated as struct mpool_iter */
	unsigned busy;          /* its callbacks running */
	int err;                /* once done: 0 or -code */
	char *errmsg;           /* once failed */
	mpool_value *value;     /* once succeeded: the result (not for iterators) */
	mpool_result_cb cb;
	mpool_error_cb ecb;
	void *ud;
	struct mpc_map map;     /* MPC_MAP only */
};

struct mpool_iter {
	struct mpool_async a;
};

/* ---- conn.c ---------------------------------------------------------- */

/* Records a failure in p->errmsg and returns -code.  errno is preserved.
 * Does not touch the state of the connection. */
int mpc_err(mpool *p, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* 0 when p may start a request; otherwise the failure to return (after an
 * earlier loss of the stream). */
int mpc_usable(mpool *p);
/* 0 when p may block (no callback running); else -MPOOL_E_INVAL. */
int mpc_can_block(mpool *p);

/* Makes the connection unusable: every open call fails with code and the
 * message (their error callbacks run).  Only from mpc_step's level. */
void mpc_conn_fail(mpool *p, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* A new call of kind with the next msgid, owned and live (not yet open).
 * NULL when out of memory.  size: sizeof(struct mpool_async) or of
 * struct mpool_iter. */
struct mpool_async *mpc_call_new(mpool *p, enum mpc_kind kind, size_t size);
/* Puts a call whose request is queued into the table.  0 or -MPOOL_E_NOMEM. */
int mpc_call_open(struct mpool_async *a);
/* The owner lets go; frees the call when nothing else holds it. */
void mpc_call_release(struct mpool_async *a);
/* Frees the call if nothing holds it any more. */
void mpc_call_maybe_free(struct mpool_async *a);
/* Marks a done with err (0 or -code) and the message, and runs its
 * callback or error callback (none once the connection is closed).  The
 * result value (if any) is set before.  Nothing happens to a call done
 * already. */
void mpc_call_complete(struct mpool_async *a, int err, const char *msg);
/* mpc_call_complete with a formatted message. */
void mpc_call_fail(struct mpool_async *a, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* The object get() hands out (NULL when none). */
const msgpack_object *mpc_call_result(const struct mpool_async *a);

/* Runs a user callback of a: counts it as running.  Requests the callback
 * made leave when the outermost callback returns (mpc_send_soon). */
#define MPC_CALLBACK(a, call) do { \
	mpool *cb_p_ = (a)->p; \
	cb_p_->depth++; \
	(a)->busy++; \
	call; \
	(a)->busy--; \
	if (--cb_p_->depth == 0) \
		mpc_send_soon(cb_p_); \
} while (0)

/* A packer appending to p's output queue. */
void mpc_packer(mpool *p, msgpack_packer *pk);
/* The queue's length, to roll back to when packing fails. */
size_t mpc_out_mark(const mpool *p);
void mpc_out_rollback(mpool *p, size_t mark);
/* Appends bytes.  0 or -1 when out of memory. */
int mpc_out_write(mpool *p, const void *buf, size_t len);
size_t mpc_out_pending(const mpool *p);
/* Sends what the socket takes now.  A lost connection is remembered for
 * the next step (no callback runs here). */
void mpc_flush(mpool *p);
/* A request was queued: sends it now, or holds it back while the program
 * has corked p, a callback runs or mpc_step reads, until MPC_CORK_MAX bytes
 * wait.  Whatever ends the hold (mpool_uncork, the outermost callback's
 * return, mpc_step's end) sends what was held, in one write. */
void mpc_send_soon(mpool *p);

/* Starts a request in the output queue: [0, msgid, method, [n_params...]].
 * 0 or -1 when out of memory. */
int mpc_pack_head(mpool *p, uint64_t msgid, const char *method, uint32_t n_params);

/* One round of everything that can be done without waiting: flush, feed,
 * read and route.  Reading stops at budget bytes, while an iterator is full
 * (unless until is given and not ready: then it reads on until it is), and
 * at the first EAGAIN.  0, or the failure of the connection. */
int mpc_step(mpool *p, struct mpool_async *until, size_t budget);
/* True when a wait for a can stop: a is done, or an iterator has a result. */
bool mpc_ready(const struct mpool_async *a);
/* Waits for mpc_ready(a): 1, or 0 when timeout_ms passed first. */
int mpc_wait(struct mpool_async *a, int timeout_ms);
/* Tells the watch callback when the wanted events changed. */
void mpc_watch_update(mpool *p);

/* ---- call.c ---------------------------------------------------------- */

/* The request's options, for apply and map alike (apply leaves the map
 * ones 0). */
struct mpc_opts {
	uint32_t chunksize;
	int unordered;
	uint32_t timeout_ms;
	uint32_t retries;
	bool stream;
	int spread;          /* 1, -1, or 0: not sent */
};
uint32_t mpc_opts_count(const struct mpc_opts *o);
/* Packs the options map.  0, or -1 when out of memory. */
int mpc_opts_pack(msgpack_packer *pk, const struct mpc_opts *o);
/* Reads the caller's map options (NULL: none) into o.  0, or -MPOOL_E_INVAL
 * as mpc_opts_copy. */
int mpc_opts_from_map(mpool *p, struct mpc_opts *o, const struct mpool_map_opts *opts);
/* Copies a public option struct (NULL: all defaults) into dst, this
 * library's own struct of dst_size bytes, whose first member is its size.
 * The caller's struct says its own size in its first member: a program
 * built against an older header passes a smaller one (what it does not
 * know stays 0, the default), a newer one a larger one, accepted when every
 * byte this library does not know is 0 (an option it cannot honour is
 * refused, not ignored), as clone3(2) and openat2(2) read theirs.  0, or
 * -MPOOL_E_INVAL for a size that was never set or is implausible; what
 * names the struct in the message. */
int mpc_opts_copy(mpool *p, const char *what, void *dst, size_t dst_size, const void *src);

/* Completes a one-response call from its response. */
void mpc_simple_response(mpool *p, struct mpool_async *a, const struct mp_msg *m);
/* The failure a response reports: 0 when its error is nil, else -code with
 * the message in msg (msg_size bytes).  -MPOOL_E_PROTO for a malformed one. */
int mpc_resp_error(const struct mp_msg *m, char *msg, size_t msg_size);

/* Waits for a blocking call's answer and lets the call go: 0 with the
 * value moved to *ret_value (when asked for), or the failure, with its
 * message in p->errmsg. */
int mpc_finish(mpool *p, struct mpool_async *a, mpool_value **ret_value);

/* Starts an apply: checks the argument, queues the request, opens the
 * call.  The call (owned) or NULL with the failure in *ret_err. */
struct mpool_async *mpc_apply_start(mpool *p, const char *fn, const void *arg, size_t arg_len,
				    const struct mpool_apply_opts *opts, int *ret_err);

/* ---- async.c --------------------------------------------------------- */

/* Sends cancel_request for a's msgid (kill: its running chunks too).  0 or
 * -MPOOL_E_NOMEM. */
int mpc_send_cancel(struct mpool_async *a, bool kill);
/* Cancels a here and at the daemon: done with -code (MPOOL_E_CANCELLED, or
 * MPOOL_E_NOMEM when a stream cannot go on), its error callback run,
 * buffered results dropped, producer stopped.
 * The call stays open until mpoold's answer, which is then dropped. */
void mpc_cancel(struct mpool_async *a, bool kill, int code, const char *msg);

/* ---- map.c ----------------------------------------------------------- */

/* Starts a map call: checks the items, queues the request, opens the call.
 * For INPUT_PRODUCER, items is NULL and n_items 0 (the caller then starts
 * the feed); a big buffer of items (MPC_SLICE_MIN_*) goes as a stream of
 * parts.  Returns the call (owned) or NULL with the failure in *ret_err
 * (p->errmsg set). */
struct mpool_async *mpc_map_start(mpool *p, const char *fn, const void *items,
				  size_t items_len, uint64_t n_items,
				  const struct mpool_map_opts *opts, bool star,
				  enum mpc_input input, enum mpc_sink sink, size_t size,
				  int *ret_err);
/* Routes a "result" notification to its map. */
void mpc_map_result(mpool *p, struct mpool_async *a, const struct mp_msg *m);
/* Completes a map from its response. */
void mpc_map_response(mpool *p, struct mpool_async *a, const struct mp_msg *m);
/* Releases a map's sink state (buffers, collected results). */
void mpc_map_free(struct mpool_async *a);
/* The error objects of a chunk (checked) as the public struct, messages
 * NUL-terminated, in one block the caller frees.  NULL when out of memory. */
struct mpool_item_error *mpc_copy_errors(const uint8_t *errors, size_t len, uint32_t n_errs);

/* ---- iter.c ---------------------------------------------------------- */

/* Appends a checked chunk to an iterator's buffer.  0 or -MPOOL_E_NOMEM. */
int mpc_iter_push(struct mpool_async *a, uint64_t first, uint32_t n, const uint8_t *results,
		  size_t results_len, const uint8_t *errors, size_t errors_len,
		  uint32_t n_errs);
/* Drops everything buffered (cancel, free). */
void mpc_iter_drop(struct mpool_async *a);
/* True when a result can be taken without reading. */
bool mpc_iter_has(const struct mpool_async *a);

/* ---- feed.c ---------------------------------------------------------- */

/* Makes a a stream: produce is asked for items as credit comes. */
void mpc_feed_start(struct mpool_async *a, mpool_producer produce, void *produce_ud);
/* Makes a a stream of the n checked items in items[0..len), sent as credit
 * comes; own: items is a copy a now owns (freed when the feed stops). */
void mpc_feed_start_items(struct mpool_async *a, const uint8_t *items, size_t len,
			  uint64_t n, uint8_t *own);
/* Of the checked items in items[0..len), how many to send in one part:
 * up to max items, stopping after the item that crosses max_bytes.  The
 * count, with their length in *ret_len. */
uint64_t mpc_feed_cut(const uint8_t *items, size_t len, uint64_t max, size_t max_bytes,
		      size_t *ret_len);
/* Routes a "credit" notification. */
void mpc_feed_credit(mpool *p, struct mpool_async *a, const struct mp_msg *m);
/* Packs the feeds that credit, the output queue and the iterators allow.
 * true when something was queued. */
bool mpc_feed_pump(mpool *p);
/* The producer is not to be called again. */
void mpc_feed_stop(struct mpool_async *a);

/* ---- process.c ------------------------------------------------------ */

/* The connection is closing: its process handles keep what they know and
 * no longer ask mpoold. */
void mpc_procs_detach(mpool *p);

/* ---- value.c --------------------------------------------------------- */

/* Decodes the one MessagePack value in bytes[0..len) into objects owned by
 * zone: the bytes are copied into the zone first, because msgpack-c's
 * objects point into the buffer they were decoded from.  0, -MPOOL_E_NOMEM,
 * or -MPOOL_E_PROTO for bytes that do not decode. */
int mpc_decode(msgpack_zone *zone, const uint8_t *bytes, size_t len, msgpack_object *ret);

/* Where a value keeps copies of result bytes once they add up to
 * MPC_ARENA_FROM: MPC_ARENA_CHUNK at a time (more for a larger copy) in
 * mappings of filled memory (mp_map_filled) that its zone owns, instead of
 * zone chunks faulted in page by page.  The bound keeps a value that
 * holds little from mapping a whole chunk. */
struct mpc_arena {
	uint8_t *next, *end;
	size_t kept;            /* bytes copied for the value so far */
};
#define MPC_ARENA_FROM ((size_t)2 << 20)
#define MPC_ARENA_CHUNK ((size_t)2 << 20)

/* Decodes the MessagePack array of n values in bytes[0..len) into
 * out[0..n): scalars without msgpack-c's decoder, anything else with it,
 * into zone.  What the objects point into must live as long as zone: when
 * frame is given and bytes lie in the frame it just delivered (at least
 * MPC_ADOPT_MIN of them), zone adopts the frame's buffer; otherwise the
 * bytes are copied, into arena (NULL: none) or into zone.  0,
 * -MPOOL_E_NOMEM, or -MPOOL_E_PROTO when bytes are not such an array.
 *
 * Adopting costs a copy of what the read took past the frame (at most a
 * read, mp_frame_read_size) and a fresh read buffer, and the zone then
 * holds the whole buffer (up to twice the frame); a copy into populated
 * memory (mp_mem.h) holds just the bytes.  Under a megabyte the two take
 * about as long, so only frames larger than that are adopted. */
#define MPC_ADOPT_MIN ((size_t)1 << 20)
/* Copies of results at least this large are populated first. */
#define MPC_POPULATE_MIN ((size_t)64 << 10)
int mpc_decode_items(msgpack_zone *zone, struct mpc_arena *arena, struct mp_frame *frame,
		     const uint8_t *bytes, size_t len, uint32_t n, msgpack_object *out);

/* Room for n objects owned by zone; NULL when out of memory.  From
 * MPC_HUGE_MIN bytes on, a mapping of its own, of filled memory
 * (mp_map_filled): the objects are written front to back right after. */
#define MPC_HUGE_MIN ((size_t)4 << 20)
msgpack_object *mpc_zone_objects(msgpack_zone *zone, size_t n);

/* A value with an empty zone and a nil object; NULL when out of memory. */
mpool_value *mpc_value_new(void);
msgpack_zone *mpc_value_zone(mpool_value *v);
struct mpc_arena *mpc_value_arena(mpool_value *v);
void mpc_value_set(mpool_value *v, const msgpack_object *obj);

/* Decodes bytes into a new value.  0 or a failure as mpc_decode. */
int mpc_value_decode(const uint8_t *bytes, size_t len, mpool_value **ret);

/* Checks that bytes[0..len) hold exactly n whole MessagePack values, each
 * within MP_ITEM_DEPTH_MAX (and an array, with star).  0 or -MPOOL_E_INVAL
 * (errmsg says which). */
int mpc_check_values(mpool *p, const char *what, const void *bytes, size_t len, uint64_t n,
		     bool star);

#endif
