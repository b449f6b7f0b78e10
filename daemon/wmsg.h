/* wmsg: the messages between the master and its workers, packed and read in
 * one place.  They ride the same MessagePack-RPC framing as clients:
 *
 *   master -> worker  [0, seq, "run", [function, first, each, items]]
 *   worker -> master  [2, "part", [seq, errors, results]]   zero or more
 *   worker -> master  [1, seq, nil, [errors, results]]      the rest, last
 *   worker -> master  [2, "ready", [pid]]        once, after module init
 *
 * results has one element per item (nil where it failed); errors holds an
 * error object (with "index" = first + i) per failed item.  Both arrays are
 * forwarded to the client byte for byte.  results comes last so the master
 * finds its end as the end of the frame, without walking every result.  A
 * worker sends a "part" for the items it finished whenever WMSG_PART_MS
 * passed since its last message, so long chunks stream, a death loses only
 * unreported items, and the master can tell a slow chunk from a hung task.
 * With each true (a batch of independent applies) it reports every item at
 * once, so the master knows exactly which item a death interrupted.  Bump
 * WMSG_VERSION when a shape changes. */
#ifndef WMSG_H
#define WMSG_H

#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>
#include <msgpack.h>

#define WMSG_VERSION 3
#define WMSG_PART_MS 20
/* Workers time parts with a coarse clock: the master allows this much more. */
#define WMSG_PART_SLACK_MS 10

/* Worker exit statuses the master understands. */
enum {
	WORKER_EXIT_OK = 0,       /* quota reached, or the master closed the channel */
	WORKER_EXIT_INIT = 3,     /* a module's init failed */
	WORKER_EXIT_PROTO = 4,    /* the master sent something unreadable: a bug */
};

struct wmsg_run {
	uint64_t seq;
	const char *fn;
	uint32_t fn_len;
	uint64_t first;
	bool each;                /* report every item as it finishes */
	uint32_t count;
	const uint8_t *items;     /* count raw elements back to back */
	size_t items_len;
};

struct wmsg_result {
	uint64_t seq;
	const uint8_t *results;   /* the whole results array, header included */
	size_t results_len;
	uint32_t n_results;
	const uint8_t *errors;    /* the whole errors array, header included */
	size_t errors_len;
	uint32_t n_errors;
};

/* All of a run but the item bytes, which the caller appends (count of
 * them, items_len bytes) however it likes: they go out as the client sent
 * them, not decoded and encoded again. */
int wmsg_pack_run_head(msgpack_packer *pk, const struct wmsg_run *run);
int wmsg_parse_run(const uint8_t *frame, size_t len, struct wmsg_run *ret);

/* A worker frame (from mp_frame: one whole element): a final result
 * (returns 1), the ready notice (2, with *ret_pid) or a part (3).
 * -EBADMSG for anything else. */
enum { WMSG_RESULT = 1, WMSG_READY = 2, WMSG_PART = 3 };
int wmsg_parse_from_worker(const uint8_t *frame, size_t len, struct wmsg_result *ret,
			   int64_t *ret_pid);

#endif
