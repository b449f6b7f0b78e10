/* conn: the transport of client connections.  Frames messages and hands
 * each whole one to rpc_dispatch(), buffers output, keeps every client
 * within its byte budgets, and writes responses and streamed results; it
 * knows no method.  A client that breaks the framing loses its own
 * connection and nothing else. */
#ifndef CONN_H
#define CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <event2/event.h>
#include <msgpack.h>

struct conn;
struct job;

/* Starts accepting on a listening socket (owned by the caller). */
int conn_listen(struct event_base *base, int listen_fd);
void conn_stop_listening(void);
/* Tells a client on fd that it will not be served, and why, in an "error"
 * notification: one best-effort write. */
void conn_refuse(int fd, int code, const char *why);

/* For the dispatcher. */
bool conn_backlogged(const struct conn *c);
/* owned: NULL, or the buffer results lie in, which the connection takes
 * (free()d once the bytes are sent or dropped): they go out by reference. */
void conn_send_chunk(struct conn *c, uint64_t msgid, uint64_t first,
		     const uint8_t *results, size_t rlen, const uint8_t *errors, size_t elen,
		     uint8_t *owned);
void conn_send_credit(struct conn *c, uint64_t msgid, uint64_t n);
/* A response whose result pack() writes. */
void conn_reply(struct conn *c, uint64_t msgid, void (*pack)(msgpack_packer *pk, const void *arg),
		const void *arg);
/* A msgid answered later by someone other than a job (a join): it counts
 * as in use until forgotten. */
void conn_hold_msgid(struct conn *c, uint64_t msgid);
void conn_forget_msgid(struct conn *c, uint64_t msgid);
void conn_map_done(struct conn *c, uint64_t msgid, uint64_t items, uint64_t failed);
void conn_apply_done(struct conn *c, uint64_t msgid, const uint8_t *results, size_t rlen,
		     const uint8_t *errors, size_t elen, uint32_t n_errors);
void conn_job_failed(struct conn *c, uint64_t msgid, int code, const char *msg);
void conn_job_ended(struct conn *c, struct job *job);

/* Limits hit so far, by name, for status. */
enum conn_limit { LIM_FRAME, LIM_DEPTH, LIM_ITEMS, LIM_JOBS, LIM_CLIENTS, LIM_QUEUED,
		  LIM_BACKLOG, LIM_CLIENTS_PER_UID, LIM_CLIENT_BYTES, LIM_TOTAL_BYTES,
		  LIM_FRAME_TIMEOUT, LIM_COUNT };
void conn_limit_hit(enum conn_limit l);
void conn_pack_limits(msgpack_packer *pk);
/* status: the limits in effect, and the bytes held for clients now. */
void conn_pack_config_limits(msgpack_packer *pk);
uint64_t conn_bytes_held(void);

pid_t conn_pid(const struct conn *c);
uid_t conn_uid(const struct conn *c);
uint64_t conn_id(const struct conn *c);
/* Root, mpoold's own user, or a member of --admin-group. */
bool conn_is_admin(const struct conn *c);

/* For the RPC layer. */
void conn_reply_error(struct conn *c, uint64_t msgid, int code, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
/* Tells the client why in an "error" notification (one best-effort
 * write), then frees c, which the caller must not touch afterwards. */
void conn_abort(struct conn *c, int code, const char *why);
struct job *conn_find_job(const struct conn *c, uint64_t msgid);
/* Whether msgid names an open request (a job or a held msgid). */
bool conn_msgid_in_use(const struct conn *c, uint64_t msgid);
/* Jobs and held msgids: what --max-jobs bounds. */
unsigned conn_open_requests(const struct conn *c);
/* Tracks a submitted job until conn_job_ended(). */
void conn_add_job(struct conn *c, struct job *job);
/* The read buffer of the message being dispatched, for a job to keep. */
uint8_t *conn_take_frame(struct conn *c, size_t len);
/* Whether holding add more bytes for c (beside the message under way)
 * keeps within --max-client-bytes and --max-total-bytes.  Returns -1, or
 * the limit it would pass (not yet counted) with the reason in why. */
int conn_budget(const struct conn *c, size_t add, char *why, size_t n_why);

/* For shutdown. */
unsigned conn_count(void);
bool conn_all_flushed(void);
void conn_write_all_now(void);
void conn_close_all(void);

#endif
