/* libmpool: the client side of mpoold's protocol (proto/PROTOCOL.md).
 *
 * This header is libmpool's reference: every contract is written here,
 * once, beside its declaration.  docs/API.md is a guide to it (a map of
 * the calls, examples, the library's versions and ABI rules, measured
 * figures) and libmpool(3) its short form; neither repeats a contract.
 *
 * Conventions
 * - Every call that can fail returns 0 (or a count) on success and a negative
 *   enum mpool_error code on failure: -MPOOL_E_TYPE, -MPOOL_E_SYS, ...
 *   mpool_errmsg() then holds a sentence saying what happened; for
 *   -MPOOL_E_SYS errno is preserved too.  Codes are negative everywhere
 *   libmpool hands one out: returns, error callbacks, the code of a failed
 *   item (struct mpool_item_error, struct mpool_item), on_lost of
 *   <mpool/mpool-event.h>.  Only the wire carries them positive.
 *   mpool_strerror() names a code of either sign.
 * - Out-parameters (ret_*) are written only on success.
 * - Objects returned through ret_* belong to the caller and are released with
 *   the matching _free(); every _free() accepts NULL.  Pointers returned as
 *   const (results, messages) are borrowed: the comment says how long they
 *   stay valid.
 * - Values cross the API as MessagePack: arguments and items are encoded
 *   bytes (pack them with msgpack-c's msgpack_packer); results come back as
 *   msgpack_object trees owned by an mpool_value or by a handle.
 * - Timeouts are in milliseconds: a negative timeout waits as long as it
 *   takes, 0 does not wait at all.
 * - Option structs (struct mpool_apply_opts, mpool_map_opts,
 *   mpool_spawn_opts) can grow in later versions without breaking programs
 *   built against this header: each starts with its own size, which its
 *   initializer macro sets (designated initializers: C99, C++20), and every
 *   option left out means the default:
 *
 *       struct mpool_map_opts o = MPOOL_MAP_OPTS(.chunksize = 16, .unordered = 1);
 *
 *   A struct whose size member is not set (made with { 0 }, say) fails the
 *   call with -MPOOL_E_INVAL, and so does one from a newer header that sets
 *   an option this library does not know.  Every opts argument may be NULL
 *   (all defaults).  The structs libmpool fills in or hands to callbacks
 *   (struct mpool_item, mpool_item_error, mpool_map_summary) stay as they
 *   are within a symbol version; growing one means new functions.
 *
 * Threads, signals, global state
 * - A connection and everything made from it (handles, iterators, values)
 *   belong to one thread at a time: use one connection per thread, or lock
 *   around every call that names the connection or one of its handles.
 *   Different connections share nothing: libmpool has no global state.
 * - libmpool installs no signal handlers, never raises SIGPIPE (it sends
 *   with MSG_NOSIGNAL) and starts no threads.  A signal that interrupts a
 *   wait does not end it; the wait goes on until its timeout.
 *
 * Many requests on one connection
 * - Any number of requests can be in flight on one connection: the async
 *   calls (mpool_apply_async, mpool_map_async, mpool_imap, ...) send a
 *   request (see "When a request leaves" below) and return a handle at
 *   once; messages from mpoold are routed to their handle by msgid as
 *   they are read.
 * - libmpool reads the connection only inside its own calls: the blocking
 *   calls, the waits (mpool_async_wait/get, mpool_iter_next) and
 *   mpool_process().  Callbacks (result, error, chunk, producer) run only
 *   there, on the caller's thread, and never from another thread or a
 *   signal handler.  A blocking call or a wait runs the callbacks of every
 *   request of its connection whose answers it reads on the way.
 * - When a request leaves: at once, in the call that makes it, with two
 *   exceptions that batch many requests into one write (one system call
 *   and one wake-up of mpoold instead of one each).  Requests made while
 *   the program has corked the connection (mpool_cork) leave when it
 *   uncorks; requests made inside callbacks leave when the libmpool call
 *   that ran the callbacks returns.  Either way they leave at once when
 *   64 KiB are held back, and every call that reads (the blocking calls,
 *   the waits, mpool_process) first sends everything held; mpool_events()
 *   asks for WRITE while anything is held.
 * - Inside a callback the program may submit new requests (they leave
 *   when the callbacks are done, see above), cancel and free handles (its own included: the free
 *   takes effect when the callback returns), and look at handles (ready,
 *   successful, get and next with timeout 0, which then do no I/O).  Anything that
 *   would block or read (the blocking calls, waits with a timeout other
 *   than 0, mpool_process) fails with -MPOOL_E_INVAL there; mpool_close()
 *   must never be called from a callback.
 * - Event loops: poll mpool_fd() for mpool_events(), call mpool_process()
 *   when it is ready, or let mpool_set_watch() say when the events change.
 *   <mpool/mpool-event.h> does this for libevent.
 *
 * Failures of the connection
 * - A connection that saw -MPOOL_E_SYS, -MPOOL_E_PROTO or -MPOOL_E_CLOSED
 *   is unusable: close it.  So is one the daemon dropped with an "error"
 *   notification (a frame past its limits, for instance); the call that
 *   found out returns the daemon's code (such as -MPOOL_E_LIMIT) and every
 *   later call on it -MPOOL_E_CLOSED.  Every request still open then fails
 *   with the same code (its error callback runs).
 * - Handles may outlive their connection: mpool_close() makes every open
 *   handle ready with -MPOOL_E_CLOSED (without running its callbacks), and a
 *   handle keeps what it already received until it is freed.  mpoold drops
 *   the requests of a closed connection and kills the workers running
 *   their chunks (proto/PROTOCOL.md, "When a client goes").
 *
 * Memory bounds (a slow consumer or a huge map never makes libmpool
 * buffer without limit)
 * - An iterator (mpool_imap*) holds at most MPOOL_ITER_MAX_ITEMS results
 *   or MPOOL_ITER_MAX_BYTES bytes of encoded results the program has not
 *   taken yet, plus one notification (one chunk) past either bound, plus
 *   the message being read (one read of 64 KiB, or one frame).  While
 *   it is full, mpool_process() stops reading the connection and a stream
 *   stops calling its producer; mpoold's flow control then stops running
 *   the map (it holds at most 4 MiB of unread output per connection).
 *   Exception: a wait for another request of the same connection reads on,
 *   because its answer may come after the iterator's results, and then
 *   buffers those results past the bound until it has its answer.  Keep a
 *   connection per consumer to avoid that.
 * - A streamed map (mpool_map_stream, mpool_imap_stream) calls its producer
 *   only for items mpoold granted credit for (at most its --stream-window,
 *   65 536 by default, sent and unanswered), packs at most
 *   MPOOL_FEED_MAX_ITEMS items or MPOOL_FEED_MAX_BYTES bytes into one
 *   "feed" message (plus the item that crosses the byte bound), and packs
 *   no new feed while MPOOL_FEED_MAX_BYTES of output wait to be sent.
 * - mpool_map, mpool_map_collect, mpool_imap and the async maps send
 *   their items in one request, copied once into the output buffer; except
 *   a map of at least 65 536 items or 4 MiB of items with the default
 *   chunksize, which goes as a stream of parts (PROTOCOL.md "Streamed
 *   input"): mpoold starts on the first part while the rest follows under
 *   its flow control, so neither side holds the whole map in one message
 *   and --max-frame does not bound it.  Its chunks then follow the parts as
 *   a stream's do (at most the default cap of 4 096 items each).  The
 *   blocking calls send the parts from the caller's buffer; the async ones
 *   and mpool_imap from a copy they keep until the last part is sent.  A
 *   chunksize the caller chose is honoured exactly: that map always goes in
 *   one request.  Use the streamed maps for input too large to hold.
 *
 * Out of memory: every allocation is checked; the call fails with
 * -MPOOL_E_NOMEM.  When it strikes while a map's results stream in, the
 * rest of them are read and dropped, and the map fails with -MPOOL_E_NOMEM
 * at its end. */
#ifndef MPOOL_MPOOL_H
#define MPOOL_MPOOL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <msgpack.h>
#include <mpool/error.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mpool mpool;
typedef struct mpool_value mpool_value;

/* Every message libmpool writes, its terminating NUL included, fits in a
 * buffer of this many bytes. */
#define MPOOL_ERRMSG_MAX 1024

/* Connects to mpoold.  path NULL: the default rule ($MPOOL_SOCKET, else
 * /run/mpool/mpoold.sock for root, else $XDG_RUNTIME_DIR/mpool/mpoold.sock,
 * else /tmp/mpool-UID/mpoold.sock).
 *
 * The server must run as root, as the caller (its real or effective uid),
 * as the "mpool" system user that mpoold.service runs as (looked up by
 * name), or as the uid in $MPOOL_TRUST_UID (ignored by set-user-ID
 * programs); the kernel tells which (SO_PEERCRED).  Anyone else may have
 * put their socket where the caller's daemon should be, to read its
 * requests and forge answers: mpool_connect refuses such a server with
 * -MPOOL_E_UNTRUSTED (proto/PROTOCOL.md, "Which server a client trusts").
 *
 * 0 with *ret, or on failure a negative code (-MPOOL_E_SYS with errno,
 * -MPOOL_E_UNTRUSTED, -MPOOL_E_INVAL for a bad path, -MPOOL_E_NOMEM) with
 * *ret untouched and, when errbuf is not NULL, the reason as a sentence in
 * errbuf (truncated to errbuf_size bytes; MPOOL_ERRMSG_MAX holds any).
 * errbuf is written only on failure. */
int mpool_connect(const char *path, mpool **ret, char *errbuf, size_t errbuf_size);
/* Sends what it can of the output still queued without waiting, closes the
 * socket and frees p.  Open handles become ready with -MPOOL_E_CLOSED; no
 * callback runs.  Handles stay valid until their own _free().  Never call
 * it from a callback. */
void mpool_close(mpool *p);

/* The last failure on p, as a sentence; "" when there was none. */
const char *mpool_errmsg(const mpool *p);

/* The decoded value; valid until mpool_value_free(). */
const msgpack_object *mpool_value_get(const mpool_value *v);
void mpool_value_free(mpool_value *v);

/* ==== Blocking calls ======================================================
 * Each sends one request and returns with its answer.  The daemon answers
 * every request, with an error if the work cannot be done. */

/* Round trip to the daemon; -MPOOL_E_PROTO when the peer is not mpoold. */
int mpool_ping(mpool *p);

/* Runs fn ("MODULE.FUNCTION") on one argument, arg_len bytes holding exactly
 * one MessagePack value.  A failure of the task itself returns its code
 * (-MPOOL_E_TASK, -MPOOL_E_TYPE, -MPOOL_E_WORKER, ...). */
int mpool_apply(mpool *p, const char *fn, const void *arg, size_t arg_len,
		mpool_value **ret_result);

struct mpool_apply_opts {
	size_t size;          /* sizeof(struct mpool_apply_opts): MPOOL_APPLY_OPTS() */
	uint32_t timeout_ms;  /* 0: the daemon's --task-timeout */
	uint32_t retries;     /* see mpool_map_opts */
	int spread;           /* see mpool_map_opts */
};
/* A struct mpool_apply_opts with its size set, the options named in the
 * arguments (designated initializers: .timeout_ms = 500) and every other
 * option at its default. */
#define MPOOL_APPLY_OPTS(...) { .size = sizeof(struct mpool_apply_opts), __VA_ARGS__ }

/* mpool_apply with options (opts may be NULL). */
int mpool_apply_with(mpool *p, const char *fn, const void *arg, size_t arg_len,
		     const struct mpool_apply_opts *opts, mpool_value **ret_result);

struct mpool_map_opts {
	size_t size;          /* sizeof(struct mpool_map_opts): MPOOL_MAP_OPTS() */
	uint32_t chunksize;   /* items per chunk; 0: the daemon's default */
	int unordered;        /* non-zero: chunks arrive as they finish */
	uint32_t timeout_ms;  /* per item; 0: the daemon's --task-timeout */
	uint32_t retries;     /* rerun a chunk lost to a worker's death or a
			       * timeout up to this many times (idempotent
			       * tasks only); at most the daemon's --max-retries */
	int spread;           /* mpoold in a cluster: 1 other nodes may run it,
			       * -1 this machine only, 0 the daemon's
			       * cluster-spread (maps are shared by default) */
};
/* A struct mpool_map_opts with its size set (as MPOOL_APPLY_OPTS). */
#define MPOOL_MAP_OPTS(...) { .size = sizeof(struct mpool_map_opts), __VA_ARGS__ }

struct mpool_item_error {
	uint64_t index;       /* the item's position in the map */
	int code;             /* negative enum mpool_error: -MPOOL_E_TASK, ... */
	const char *message;  /* NUL-terminated; valid during the callback */
};

/* Called for every chunk of results as it streams in.  results is an array
 * object whose element i is the result of item first + i (nil where that item
 * failed); errs lists the failed items of the chunk.  Everything is valid
 * only during the call.  Chunks come in index order unless the map is
 * unordered.  To stop early, close the connection after the call returns. */
typedef void (*mpool_chunk_cb)(void *userdata, uint64_t first,
			       const msgpack_object *results,
			       const struct mpool_item_error *errs, size_t n_errs);

struct mpool_map_summary {
	uint64_t items;
	uint64_t failed;
};

/* Runs fn on n_items arguments: items holds their n_items MessagePack values
 * back to back (items_len bytes).  opts may be NULL.  Returns 0 when the
 * map ran to the end, even if items failed (the callback saw which; the
 * summary counts them); a negative code when the map as a whole failed
 * (no such function, limits, terminated). */
int mpool_map(mpool *p, const char *fn, const void *items, size_t items_len,
	      uint64_t n_items, const struct mpool_map_opts *opts,
	      mpool_chunk_cb cb, void *userdata,
	      struct mpool_map_summary *ret_summary);

/* mpool_map, collecting every result: *ret_results holds one array of
 * n_items results in item order.  Like Python's Pool.map, any failed item
 * fails the call: it returns -MPOOL_E_ITEMS and mpool_errmsg() names the
 * first failed item, its code and its message. */
int mpool_map_collect(mpool *p, const char *fn, const void *items,
		      size_t items_len, uint64_t n_items,
		      const struct mpool_map_opts *opts, mpool_value **ret_results);

/* Python's Pool.starmap: mpool_map_collect where every item is an array of
 * arguments, and the task receives that array as its argument.  An item
 * that is not an array fails the call with -MPOOL_E_INVAL before anything
 * is sent. */
int mpool_starmap(mpool *p, const char *fn, const void *items, size_t items_len,
		  uint64_t n_items, const struct mpool_map_opts *opts,
		  mpool_value **ret_results);

/* Produces a streamed map's items one at a time: packs exactly one
 * MessagePack value (nested at most 29 levels) with pk and returns 1, or
 * packs nothing and returns 0 at the end of the input, or returns a
 * negative enum mpool_error code (-MPOOL_E_INVAL, -MPOOL_E_SYS, ...) to
 * stop: like Pool.imap over an iterable that raises, the items produced
 * before are still mapped and delivered, then the map fails with that
 * code.  Anything else (two values, none with 1, a value too deep) stops
 * the input the same way with -MPOOL_E_INVAL.  It runs inside libmpool
 * calls of the connection (see "Many requests on one connection"), only as
 * mpoold grants credit, and is never called again once it returned 0 or a
 * failure, or its map ended, failed or was cancelled. */
typedef int (*mpool_producer)(void *userdata, msgpack_packer *pk);

/* mpool_map over items that produce() makes as the map goes (Python's
 * Pool.imap over a generator, without reading it all up front): the items
 * travel in parts under mpoold's credit-based flow control, so neither side
 * holds more than a window of them (see "Memory bounds").  The map's
 * chunksize defaults to one computed by mpoold from its stream window.
 * Returns 0 when the map ran to the end (the summary counts the items
 * produced), or the failure: the map's, or the producer's own code. */
int mpool_map_stream(mpool *p, const char *fn, mpool_producer produce, void *produce_ud,
		     const struct mpool_map_opts *opts, mpool_chunk_cb cb, void *userdata,
		     struct mpool_map_summary *ret_summary);

/* The daemon's status map (see PROTOCOL.md "status"). */
int mpool_status(mpool *p, mpool_value **ret_status);

/* Admin operations (terminate, drain, reload, kill_worker) are allowed to
 * root, mpoold's own user and its admin group; anyone else gets
 * -MPOOL_E_PERM with a message saying who may.
 *
 * Stops the pool now: workers are killed, pending work fails with
 * -MPOOL_E_TERMINATED and mpoold exits.  Returns once the daemon accepted. */
int mpool_terminate(mpool *p);

/* Like Python's close() + join(), for the whole daemon: mpoold takes no new
 * work (new requests fail with -MPOOL_E_SHUTDOWN), finishes what is open,
 * then exits.  Returns once the daemon accepted. */
int mpool_drain(mpool *p);

/* Reopens the task modules and replaces every worker after its current
 * chunk; no task fails or is lost.  Returns once the daemon accepted. */
int mpool_reload(mpool *p);

/* Cancels an open job by its id (status "jobs"): its client gets
 * MPOOL_E_CANCELLED.  Allowed to the job's owner (same uid) and to admins;
 * others get -MPOOL_E_PERM; an unknown id -MPOOL_E_NOTFOUND.  To cancel a
 * request of your own connection, use mpool_async_cancel(). */
int mpool_cancel(mpool *p, uint64_t job_id);

/* Kills one worker now (admins only): its unfinished items fail with
 * -MPOOL_E_WORKER or are retried as the request allows; a replacement
 * starts.  -MPOOL_E_NOTFOUND when no worker has that pid. */
int mpool_kill_worker(mpool *p, pid_t pid);

/* ==== Async calls: Python's apply_async / map_async / AsyncResult =========
 * An async call queues its request, sends what it can without waiting and
 * returns a handle at once.  The handle owns the result until
 * mpool_async_free().  mpoold limits the requests open on one connection
 * (--max-jobs, 1024 by default): past it a request fails with
 * -MPOOL_E_LIMIT. */

typedef struct mpool_async mpool_async;

/* Called once when a request succeeds, with its result: an apply's result,
 * or a map's array of every result in item order.  Valid during the call;
 * it stays available through mpool_async_get() until the handle is freed. */
typedef void (*mpool_result_cb)(void *userdata, const msgpack_object *result);
/* Called once when a request fails, with the code mpool_async_get() returns
 * (negative, as every code libmpool hands out: -MPOOL_E_TASK,
 * -MPOOL_E_ITEMS, -MPOOL_E_CANCELLED, ...) and its message (valid during
 * the call). */
typedef void (*mpool_error_cb)(void *userdata, int code, const char *message);

/* Sends an apply (as mpool_apply_with; opts may be NULL) and returns its
 * handle.  callback and error_callback may be NULL; exactly one of them
 * runs, once, when the answer is read (see "Many requests on one
 * connection"), or when the handle is cancelled.  Fails only when the
 * request cannot be queued: bad arguments, an unusable connection, out of
 * memory. */
int mpool_apply_async(mpool *p, const char *fn, const void *arg, size_t arg_len,
		      const struct mpool_apply_opts *opts, mpool_result_cb callback,
		      mpool_error_cb error_callback, void *userdata, mpool_async **ret);

/* Sends a map (items as for mpool_map) and returns its handle.  Its result
 * is the array of every result in item order; like Pool.map_async, a
 * failed item fails it with -MPOOL_E_ITEMS (the message names the first
 * failed item).  Results are collected as they arrive: for a map too large
 * to hold, use mpool_imap or mpool_map_stream. */
int mpool_map_async(mpool *p, const char *fn, const void *items, size_t items_len,
		    uint64_t n_items, const struct mpool_map_opts *opts,
		    mpool_result_cb callback, mpool_error_cb error_callback, void *userdata,
		    mpool_async **ret);

/* mpool_map_async where every item is an array of arguments (as for
 * mpool_starmap). */
int mpool_starmap_async(mpool *p, const char *fn, const void *items, size_t items_len,
			uint64_t n_items, const struct mpool_map_opts *opts,
			mpool_result_cb callback, mpool_error_cb error_callback,
			void *userdata, mpool_async **ret);

/* 1 when the outcome is known (the answer arrived, the request failed or
 * was cancelled), else 0.  Does no I/O: mpool_async_wait(a, 0) also reads
 * what has arrived. */
int mpool_async_ready(const mpool_async *a);

/* Once ready: 1 when the request succeeded, 0 when it failed.  Before:
 * -MPOOL_E_INVAL (like Python's successful(), which raises). */
int mpool_async_successful(const mpool_async *a);

/* Waits until a is ready or timeout_ms passed (negative: no limit),
 * processing the connection meanwhile.  1 when ready, 0 when the time ran
 * out: the request goes on (cancel it with mpool_async_cancel to stop it).
 * -MPOOL_E_INVAL from a callback with a timeout other than 0. */
int mpool_async_wait(mpool_async *a, int timeout_ms);

/* Waits like mpool_async_wait, then returns 0 with *ret_result pointing to
 * the result (owned by a, valid until mpool_async_free(a); get may be
 * called again), or the request's failure (its code; the message is in
 * mpool_async_errmsg(a) and in mpool_errmsg() of the connection).  When the
 * time runs out first, returns -MPOOL_E_TIMEOUT and the request goes on;
 * mpool_async_ready(a) is then 0, which tells this apart from a task that
 * failed with MPOOL_E_TIMEOUT itself. */
int mpool_async_get(mpool_async *a, int timeout_ms, const msgpack_object **ret_result);

/* Cancels a request that is not ready yet: it becomes ready at once with
 * -MPOOL_E_CANCELLED (its error callback runs before this returns) and a
 * "cancel_request" goes to mpoold: the daemon drops the job's queued
 * chunks, and its running chunks finish (results dropped) or, with kill
 * non-zero, have their workers killed and replaced.  Returns 1 when it
 * cancelled, 0 when a was ready already (nothing changes). */
int mpool_async_cancel(mpool_async *a, int kill);

/* The failure of a ready, failed request as a sentence; "" otherwise.
 * Valid until mpool_async_free(a). */
const char *mpool_async_errmsg(const mpool_async *a);

/* Frees a handle and its result.  A request still open goes on: its
 * callbacks still run when its answer comes, so their userdata must live
 * until then (cancel first to stop it). */
void mpool_async_free(mpool_async *a);

/* ==== Iterators: Python's imap / imap_unordered ===========================
 * An iterator yields a map's results one by one as chunks stream in,
 * never waiting for the whole map, and holds a bounded number of them (see
 * "Memory bounds"). */

typedef struct mpool_iter mpool_iter;

/* At most this many results, and this many bytes of them, wait in an
 * iterator for the program (plus one chunk past either bound). */
#define MPOOL_ITER_MAX_ITEMS 65536u
#define MPOOL_ITER_MAX_BYTES (4u << 20)
/* A streamed map sends its items in feeds of at most this many items and
 * bytes, and packs no new feed while this many bytes of output wait. */
#define MPOOL_FEED_MAX_ITEMS 4096u
#define MPOOL_FEED_MAX_BYTES (256u << 10)

/* One result taken from an iterator.  result and message are owned by the
 * iterator and valid until the next mpool_iter_next() or mpool_iter_free()
 * on it. */
struct mpool_item {
	uint64_t index;                 /* the item's position in the map */
	const msgpack_object *result;   /* NULL when the item failed */
	int code;                       /* 0, or the item's negative enum mpool_error
					 * code (-MPOOL_E_TASK, ...) */
	const char *message;            /* the item's error message; "" when none */
};

/* Python's Pool.imap: sends a map (items as for mpool_map) and returns an
 * iterator over its results in item order (in completion order when
 * opts->unordered is set). */
int mpool_imap(mpool *p, const char *fn, const void *items, size_t items_len,
	       uint64_t n_items, const struct mpool_map_opts *opts, mpool_iter **ret);

/* Python's Pool.imap_unordered: mpool_imap with results in the order they
 * finish. */
int mpool_imap_unordered(mpool *p, const char *fn, const void *items, size_t items_len,
			 uint64_t n_items, const struct mpool_map_opts *opts,
			 mpool_iter **ret);

/* mpool_imap over items that produce() makes as the map goes (see
 * mpool_producer, mpool_map_stream): input and output both stay bounded
 * however long the map. */
int mpool_imap_stream(mpool *p, const char *fn, mpool_producer produce, void *produce_ud,
		      const struct mpool_map_opts *opts, mpool_iter **ret);

/* Takes the next result, waiting up to timeout_ms for one.  Returns 1 with
 * *ret filled in: a result, or an item that failed (ret->code and
 * ret->message say why; like Pool.imap, the iteration goes on after it).
 * Returns 0 once every result was taken and the map ended (again on every
 * later call), -MPOOL_E_TIMEOUT when none came in time (the map goes on),
 * or the map's failure as a whole (-MPOOL_E_CANCELLED,
 * -MPOOL_E_TERMINATED, -MPOOL_E_CLOSED, the producer's code...), which
 * comes after the results that arrived before it, and again on every later
 * call. */
int mpool_iter_next(mpool_iter *it, int timeout_ms, struct mpool_item *ret);

/* Once mpool_iter_next() returned 0: the map's items and failed items.
 * -MPOOL_E_INVAL before. */
int mpool_iter_summary(const mpool_iter *it, struct mpool_map_summary *ret);

/* Cancels the map as mpool_async_cancel() does: results not yet taken are
 * dropped and mpool_iter_next() returns -MPOOL_E_CANCELLED.  1 when it
 * cancelled, 0 when the map had ended already (its results stay). */
int mpool_iter_cancel(mpool_iter *it, int kill);

/* Frees the iterator.  A map that has not ended is cancelled first (without
 * kill), so a producer is never called after this. */
void mpool_iter_free(mpool_iter *it);

/* ==== Supervised processes: Python's multiprocessing.Process ===============
 * mpoold runs one function call in a process of its own, forked from its
 * prefork image (the task modules already loaded), outside the pool's worker
 * count, and supervises it: the client joins it, polls it, terminates or
 * kills it (proto/PROTOCOL.md, "Supervised processes").
 *
 * - opts->daemon has Python's meaning (protocol 2; mpoold 0.4 had it the
 *   other way round and refuses this library's spawn with -MPOOL_E_BADREQ,
 *   as mpoold 0.5 refuses an older library's, saying what changed).  A
 *   daemon process belongs to the connection that spawned it: mpoold
 *   terminates it when that connection closes (SIGTERM, SIGKILL after
 *   mpoold's --process-grace).  A process that is not a
 *   daemon (the default) runs to completion whatever happens to its
 *   client, and its outcome is kept for a join by the same user from any
 *   connection (mpool_process_attach): that user's last
 *   --max-kept-processes (16) finished ones.
 * - As in Python, waiting for non-daemon processes before the program
 *   exits is the caller's job: join them before mpool_close() if it
 *   matters that they finished.
 * - The process's owner (same uid) and mpoold's admins may join, poll,
 *   terminate and kill it; others get -MPOOL_E_PERM.  At most
 *   --max-processes (16 by default) run at once, and a user who is not an
 *   admin at most --max-processes-per-uid (8) of them; past either,
 *   mpool_spawn fails with -MPOOL_E_LIMIT.
 * - A drain waits for non-daemon processes (within --drain-timeout);
 *   terminate kills every process; reload leaves them running.
 *
 * The handle is a plain struct tag with no typedef: the name
 * mpool_process is taken by the event-loop function.  A handle lives on the
 * connection it was made on (its calls read that connection, like any
 * blocking call) and keeps the last state it heard of: id, pid, name, and
 * once the process has exited, its exit code and outcome.  Freeing a handle
 * does not stop the process.  After mpool_close() of its connection a handle
 * still answers from what it knows; calls that would ask mpoold return
 * -MPOOL_E_CLOSED. */

struct mpool_process;

struct mpool_spawn_opts {
	size_t size;          /* sizeof(struct mpool_spawn_opts): MPOOL_SPAWN_OPTS() */
	int daemon;           /* non-zero: dies with the connection (see above) */
	const char *name;     /* NULL: "Process-ID"; else 1 to 64 characters of
			       * UTF-8, no control, separator or bidirectional
			       * formatting character */
};
/* A struct mpool_spawn_opts with its size set (as MPOOL_APPLY_OPTS). */
#define MPOOL_SPAWN_OPTS(...) { .size = sizeof(struct mpool_spawn_opts), __VA_ARGS__ }

/* Starts fn ("MODULE.FUNCTION") on one argument (arg_len bytes, exactly one
 * MessagePack value) in a supervised process, like Process(target=fn,
 * args=...).start().  opts may be NULL.  Returns once mpoold has forked it,
 * with its handle.  Errors: -MPOOL_E_NOFUNC, -MPOOL_E_LIMIT
 * (--max-processes or the user's share running, or the system refused the
 * fork: the message says which), -MPOOL_E_SHUTDOWN (draining),
 * -MPOOL_E_INTERNAL (fork failed), -MPOOL_E_INVAL (bad argument or name),
 * -MPOOL_E_BADREQ (an mpoold of protocol 1, which would read the daemon
 * flag the other way round). */
int mpool_spawn(mpool *p, const char *fn, const void *arg, size_t arg_len,
		const struct mpool_spawn_opts *opts, struct mpool_process **ret);

/* A handle to the existing process id (mpool_process_id(), the "id" of
 * mpool_processes() or mpctl ps), on p: for instance a non-daemon process
 * started by an earlier connection.  The handle starts with the process's
 * current state.  -MPOOL_E_NOTFOUND for an unknown id (or a finished one
 * mpoold no longer keeps), -MPOOL_E_PERM for another user's process.
 * Attaching takes nothing over: a daemon process still dies with the
 * connection that spawned it. */
int mpool_process_attach(mpool *p, uint64_t id, struct mpool_process **ret);

/* Python's join(timeout): waits until the process exits or timeout_ms
 * passes (negative: no limit; 0: asks without waiting for an exit).  The
 * wait is mpoold's: it answers when the process ends or the timeout passes.
 * 1 when it has exited (its exit code and outcome are then known; at once,
 * without I/O, once the handle knows it), 0 when it is still running.
 * Other requests of the connection progress meanwhile, as in every wait. */
int mpool_process_join(struct mpool_process *proc, int timeout_ms);

/* Python's is_alive(): asks mpoold.  1 running, 0 exited (the handle then
 * knows the exit code and outcome, as after a join), or a failure.  0 at
 * once, without I/O, once the handle knows the process exited. */
int mpool_process_is_alive(struct mpool_process *proc);

/* Python's terminate(): SIGTERM now, SIGKILL if it has not exited after
 * mpoold's --process-grace (3000 ms by default).  Returns once mpoold has
 * sent the signal, not when the process is gone: join for that.  0, also
 * for a process the handle knows to have exited (nothing is sent then). */
int mpool_process_terminate(struct mpool_process *proc);

/* Python's kill(): SIGKILL now; otherwise as mpool_process_terminate. */
int mpool_process_kill(struct mpool_process *proc);

/* Python's exitcode, as last heard by the handle (no I/O: join or is_alive
 * first): 0 when the function returned, 1 when it reported a failure, the
 * status it passed to exit(), or minus the signal that killed it (-9 after
 * a kill, -15 after a terminate that took).  -MPOOL_E_INVAL while it runs
 * (or is not known to have exited). */
int mpool_process_exitcode(const struct mpool_process *proc, int *ret_code);

/* Once exited (no I/O): 0 with *ret_result, the function's result (owned
 * by proc, valid until mpool_process_free(proc): the outcome of an exited
 * process never changes), or the failure: the function's own code
 * (-MPOOL_E_TASK, -MPOOL_E_TYPE, ...), -MPOOL_E_WORKER when the process died
 * without reporting one (killed by a signal, or exit() before returning; the
 * message says which, e.g. "process 3 (pid 4242) killed by SIGSEGV"), and
 * -MPOOL_E_INVAL while it runs.  The message is in
 * mpool_process_errmsg(proc) and, while the connection is open, in
 * mpool_errmsg(). */
int mpool_process_result(const struct mpool_process *proc, const msgpack_object **ret_result);

/* The failure of an exited process as a sentence; "" when it returned a
 * result or is still running.  Valid until mpool_process_free(proc). */
const char *mpool_process_errmsg(const struct mpool_process *proc);

/* The process's pid (it stays the pid it had once the process exited; 0
 * for NULL), mpoold's id for it (0 for NULL) and its name ("" for NULL;
 * valid until mpool_process_free(proc)). */
pid_t mpool_process_pid(const struct mpool_process *proc);
uint64_t mpool_process_id(const struct mpool_process *proc);
const char *mpool_process_name(const struct mpool_process *proc);

/* Frees the handle (NULL is fine).  The process goes on: it ends with its
 * function, with the connection that spawned it (daemon), or when
 * terminated. */
void mpool_process_free(struct mpool_process *proc);

/* Every process mpoold knows of, running or kept after exit, of every
 * user: an array of process maps (PROTOCOL.md: id, name, function, pid,
 * owner_uid, daemon, state, age_ms, exitcode, result, error). */
int mpool_processes(mpool *p, mpool_value **ret_list);

/* ==== Batching requests ===================================================== */

/* Holds back the requests made on p from now until the matching
 * mpool_uncork(), so that a burst of them (mpool_apply_async in a loop,
 * say) leaves in one write, as TCP_CORK does for a socket: many small
 * requests then cost mpoold one read and one wake-up in all.  Calls nest:
 * the requests leave at the last uncork.  The hold is never longer than
 * it must be: past 64 KiB held, and whenever a libmpool call reads (a
 * blocking call, a wait, mpool_process), everything held is sent first,
 * so a wait for a corked request never hangs.  0, or -MPOOL_E_INVAL for
 * a NULL p. */
int mpool_cork(mpool *p);
/* Undoes one mpool_cork(); the last one sends what was held (inside a
 * callback: when the callbacks are done).  A failure to send shows at the
 * next call that reads, as for any request.  0, or -MPOOL_E_INVAL when p
 * is not corked. */
int mpool_uncork(mpool *p);

/* ==== Driving a connection from an event loop ============================== */

#define MPOOL_EV_READ 1
#define MPOOL_EV_WRITE 2

/* The connection's socket, to poll; -1 for NULL.  Do not read, write or
 * close it yourself. */
int mpool_fd(const mpool *p);

/* What the connection waits for now: MPOOL_EV_READ and/or MPOOL_EV_WRITE
 * (output is queued), or 0 when it is closed or unusable.  READ is off
 * while an iterator is full (see "Memory bounds").  The answer changes
 * after libmpool calls; ask again after each, or use mpool_set_watch(). */
int mpool_events(const mpool *p);

/* Does without waiting what the connection can do now: sends queued
 * output, reads and routes what arrived (up to about 1 MiB per call, so
 * one busy connection does not starve the rest of the loop), runs the
 * callbacks that follow, and packs and sends the feeds of streamed maps
 * that credit allows.  0, or the failure that made the connection unusable
 * (after every open request failed with it). */
int mpool_process(mpool *p);

/* Called with the new mpool_events() value whenever it changes, from
 * inside the libmpool call that changed it (any call of the connection,
 * callbacks included), and once from mpool_set_watch() itself with the
 * current value.  cb NULL: no calls.  It may call mpool_fd() and
 * mpool_events(), nothing else of libmpool. */
typedef void (*mpool_watch_cb)(void *userdata, int events);
void mpool_set_watch(mpool *p, mpool_watch_cb cb, void *userdata);

#ifdef __cplusplus
}
#endif
#endif
