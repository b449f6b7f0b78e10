/* libmpool: the client side of mpoold's protocol (proto/PROTOCOL.md).
 *
 * Conventions
 * - Every call that can fail returns 0 (or a count) on success and a negative
 *   enum mpool_error code on failure: -MPOOL_E_TYPE, -MPOOL_E_SYS, ...
 *   mpool_errmsg() then holds a sentence saying what happened; for
 *   -MPOOL_E_SYS errno is preserved too.
 * - Out-parameters (ret_*) are written only on success.
 * - Objects returned through ret_* belong to the caller and are released with
 *   the matching _free(); every _free() accepts NULL.
 * - Values cross the API as MessagePack: arguments and items are encoded
 *   bytes (pack them with msgpack-c's msgpack_packer); results come back as
 *   msgpack_object trees owned by an mpool_value.
 * - A connection is not thread-safe: use one per thread, or lock around it.
 *   libmpool installs no signal handlers and never raises SIGPIPE.
 * - Calls block until the daemon answers; the daemon answers every request,
 *   with an error if the work cannot be done.  A connection that saw
 *   -MPOOL_E_SYS, -MPOOL_E_PROTO or -MPOOL_E_CLOSED is unusable: close it.
 *   So is one the daemon dropped with an "error" notification (a frame past
 *   its limits, for instance); that call returns the daemon's code (such as
 *   -MPOOL_E_LIMIT) and every later call on it -MPOOL_E_CLOSED. */
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

/* Connects to mpoold.  path NULL: the default rule ($MPOOL_SOCKET, else
 * /run/mpool/mpoold.sock for root, else $XDG_RUNTIME_DIR/mpool/mpoold.sock,
 * else /tmp/mpool-UID/mpoold.sock).  On failure *ret is untouched and the
 * reason can only be read from the return code (there is no connection). */
int mpool_connect(const char *path, mpool **ret);
void mpool_close(mpool *p);

/* The last failure on p, as a sentence; "" when there was none. */
const char *mpool_errmsg(const mpool *p);

/* The decoded value; valid until mpool_value_free(). */
const msgpack_object *mpool_value_get(const mpool_value *v);
void mpool_value_free(mpool_value *v);

/* Round trip to the daemon. */
int mpool_ping(mpool *p);

/* Runs fn ("MODULE.FUNCTION") on one argument, arg_len bytes holding exactly
 * one MessagePack value.  A failure of the task itself returns its code
 * (-MPOOL_E_TASK, -MPOOL_E_TYPE, -MPOOL_E_WORKER, ...). */
int mpool_apply(mpool *p, const char *fn, const void *arg, size_t arg_len,
		mpool_value **ret_result);

struct mpool_apply_opts {
	uint32_t timeout_ms;  /* 0: the daemon's --task-timeout */
	uint32_t retries;     /* see mpool_map_opts */
};

/* mpool_apply with options (opts may be NULL). */
int mpool_apply_with(mpool *p, const char *fn, const void *arg, size_t arg_len,
		     const struct mpool_apply_opts *opts, mpool_value **ret_result);

struct mpool_map_opts {
	uint32_t chunksize;   /* items per chunk; 0: the daemon's default */
	int unordered;        /* non-zero: chunks arrive as they finish */
	uint32_t timeout_ms;  /* per item; 0: the daemon's --task-timeout */
	uint32_t retries;     /* rerun a chunk lost to a worker's death or a
			       * timeout up to this many times (idempotent
			       * tasks only); at most the daemon's --max-retries */
};

struct mpool_item_error {
	uint64_t index;       /* the item's position in the map */
	int code;             /* enum mpool_error */
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

/* The daemon's status map (see PROTOCOL.md "status"). */
int mpool_status(mpool *p, mpool_value **ret_status);

/* Admin operations (terminate, drain, reload, kill_worker) are allowed to
 * root, mpoold's own user and its admin group; anyone else gets
 * -MPOOL_E_PERM with a message saying who may.
 *
 * Stops the pool now: workers are killed, pending work fails with
 * MPOOL_E_TERMINATED and mpoold exits.  Returns once the daemon accepted. */
int mpool_terminate(mpool *p);

/* Like Python's close() + join(), for the whole daemon: mpoold takes no new
 * work (new requests fail with MPOOL_E_SHUTDOWN), finishes what is open,
 * then exits.  Returns once the daemon accepted. */
int mpool_drain(mpool *p);

/* Reopens the task modules and replaces every worker after its current
 * chunk; no task fails or is lost.  Returns once the daemon accepted. */
int mpool_reload(mpool *p);

/* Cancels an open job by its id (status "jobs"): its client gets
 * MPOOL_E_CANCELLED.  Allowed to the job's owner (same uid) and to admins;
 * others get -MPOOL_E_PERM; an unknown id -MPOOL_E_NOTFOUND. */
int mpool_cancel(mpool *p, uint64_t job_id);

/* Kills one worker now (admins only): its unfinished items fail with
 * MPOOL_E_WORKER or are retried as the request allows; a replacement
 * starts.  -MPOOL_E_NOTFOUND when no worker has that pid. */
int mpool_kill_worker(mpool *p, pid_t pid);

#ifdef __cplusplus
}
#endif
#endif
