/* mp_rpc: MessagePack-RPC envelopes, shared by the daemon, its workers and
 * libmpool.  A message is [0, msgid, method, params] (request),
 * [1, msgid, error, result] (response) or [2, method, params]
 * (notification); proto/PROTOCOL.md is normative.
 *
 * Bump MP_PROTO_VERSION when the meaning of any message changes. */
#ifndef MP_RPC_H
#define MP_RPC_H

#include <stddef.h>
#include <stdint.h>
#include <msgpack.h>

#include "mp_scan.h"

#define MP_PROTO_VERSION 2

/* An item, argument or result sits three containers deep in its message
 * (envelope, params, items or results array), so it may nest this much. */
#define MP_ITEM_DEPTH_MAX (MP_DEPTH_MAX - 3)

enum mp_msg_type { MP_REQUEST = 0, MP_RESPONSE = 1, MP_NOTIFY = 2 };

/* A parsed envelope; every pointer aims into the frame it came from. */
struct mp_msg {
	enum mp_msg_type type;
	uint64_t msgid;          /* request, response */
	const char *method;      /* request, notification (not NUL-terminated) */
	uint32_t method_len;
	const uint8_t *error;    /* response: raw error element (nil when none) */
	size_t error_len;
	const uint8_t *body;     /* request/notification params, response result */
	size_t body_len;
};

/* Reads the envelope of a frame handed out by mp_frame_next (or otherwise
 * known to be exactly one complete element within the depth limit): the
 * body is taken as the rest of the frame, unwalked.  0, or -EBADMSG when it
 * is no MessagePack-RPC message; in that case *ret_msgid_ok tells whether a
 * msgid could still be read (so the sender can be answered) and *ret_msgid
 * holds it.  *ret is written only on success. */
int mp_msg_parse(const uint8_t *frame, size_t len, struct mp_msg *ret,
		 int *ret_msgid_ok, uint64_t *ret_msgid);
/* The same for bytes that did not come through mp_frame: also checks that
 * the body is exactly one element and nothing follows it. */
int mp_msg_parse_checked(const uint8_t *buf, size_t len, struct mp_msg *ret,
			 int *ret_msgid_ok, uint64_t *ret_msgid);

/* Envelope heads: the caller packs the remaining element(s). */
int mp_pack_request_head(msgpack_packer *pk, uint64_t msgid, const char *method);
int mp_pack_response_head(msgpack_packer *pk, uint64_t msgid);  /* then error, result */
int mp_pack_notify_head(msgpack_packer *pk, const char *method);

int mp_pack_cstr(msgpack_packer *pk, const char *s);
/* An error object: {"code": code, "message": msg} plus "index" when index >= 0. */
int mp_pack_error(msgpack_packer *pk, int code, const char *msg, int64_t index);

/* Reads an error object packed by mp_pack_error.  *ret_msg points into the
 * buffer (ret_msg_len bytes); *ret_index is -1 when absent. */
int mp_read_error(struct mp_cur *c, int *ret_code, const char **ret_msg,
		  uint32_t *ret_msg_len, int64_t *ret_index);


#endif
