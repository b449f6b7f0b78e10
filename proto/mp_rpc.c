#include "mp_rpc.h"

#include <mpool/error.h>

#include <errno.h>
#include <string.h>

int mp_msg_parse(const uint8_t *frame, size_t len, struct mp_msg *ret,
		 int *ret_msgid_ok, uint64_t *ret_msgid)
{
	struct mp_cur c;
	struct mp_msg m;
	uint32_t n;
	uint64_t type;

	memset(&m, 0, sizeof(m));
	*ret_msgid_ok = 0;
	mp_cur_init(&c, frame, len);
	if (mp_read_array(&c, &n) < 0 || mp_read_u64(&c, &type) < 0)
		return -EBADMSG;
	switch (type) {
	case MP_REQUEST:
	case MP_RESPONSE:
		if (n != 4 || mp_read_u64(&c, &m.msgid) < 0)
			return -EBADMSG;
		*ret_msgid_ok = 1;
		*ret_msgid = m.msgid;
		if (type == MP_REQUEST) {
			if (mp_read_str(&c, &m.method, &m.method_len) < 0)
				return -EBADMSG;
		} else if (mp_skip(&c, &m.error, &m.error_len) < 0) {
			return -EBADMSG;
		}
		break;
	case MP_NOTIFY:
		if (n != 3 || mp_read_str(&c, &m.method, &m.method_len) < 0)
			return -EBADMSG;
		break;
	default:
		return -EBADMSG;
	}
	/* The frame is one whole element (mp_frame measured it), so the body
	 * is the rest of it: walking it again would be one more pass over
	 * every item of a map. */
	if (mp_cur_done(&c))
		return -EBADMSG;
	m.body = c.p;
	m.body_len = (size_t)(c.end - c.p);
	m.type = (enum mp_msg_type)type;
	*ret = m;
	return 0;
}

int mp_msg_parse_checked(const uint8_t *buf, size_t len, struct mp_msg *ret,
			 int *ret_msgid_ok, uint64_t *ret_msgid)
{
	struct mp_msg m;
	size_t body_len;

	if (mp_msg_parse(buf, len, &m, ret_msgid_ok, ret_msgid) < 0 ||
	    mp_scan_one(m.body, m.body_len, MP_DEPTH_MAX, &body_len) != 1 ||
	    body_len != m.body_len)
		return -EBADMSG;
	*ret = m;
	return 0;
}

int mp_pack_cstr(msgpack_packer *pk, const char *s)
{
	size_t l = strlen(s);
	int r = msgpack_pack_str(pk, l);
	return r < 0 ? r : msgpack_pack_str_body(pk, s, l);
}

int mp_pack_request_head(msgpack_packer *pk, uint64_t msgid, const char *method)
{
	if (msgpack_pack_array(pk, 4) < 0 || msgpack_pack_uint8(pk, MP_REQUEST) < 0 ||
	    msgpack_pack_uint64(pk, msgid) < 0)
		return -ENOMEM;
	return mp_pack_cstr(pk, method) < 0 ? -ENOMEM : 0;
}

int mp_pack_response_head(msgpack_packer *pk, uint64_t msgid)
{
	if (msgpack_pack_array(pk, 4) < 0 || msgpack_pack_uint8(pk, MP_RESPONSE) < 0 ||
	    msgpack_pack_uint64(pk, msgid) < 0)
		return -ENOMEM;
	return 0;
}

int mp_pack_notify_head(msgpack_packer *pk, const char *method)
{
	if (msgpack_pack_array(pk, 3) < 0 || msgpack_pack_uint8(pk, MP_NOTIFY) < 0)
		return -ENOMEM;
	return mp_pack_cstr(pk, method) < 0 ? -ENOMEM : 0;
}

int mp_pack_error(msgpack_packer *pk, int code, const char *msg, int64_t index)
{
	int r = msgpack_pack_map(pk, index >= 0 ? 3 : 2);

	r |= mp_pack_cstr(pk, "code");
	r |= msgpack_pack_int(pk, code);
	r |= mp_pack_cstr(pk, "message");
	r |= mp_pack_cstr(pk, msg);
	if (index >= 0) {
		r |= mp_pack_cstr(pk, "index");
		r |= msgpack_pack_int64(pk, index);
	}
	return r ? -ENOMEM : 0;
}

int mp_read_error(struct mp_cur *c, int *ret_code, const char **ret_msg,
		  uint32_t *ret_msg_len, int64_t *ret_index)
{
	struct mp_cur save = *c;
	int64_t code = MPOOL_E_PROTO, index = -1;
	const char *msg = "";
	uint32_t n, msg_len = 0;

	if (mp_read_map(c, &n) < 0)
		goto bad;
	while (n--) {
		const char *k;
		uint32_t kl;

		if (mp_read_str(c, &k, &kl) < 0)
			goto bad;
		if (mp_str_eq(k, kl, "code")) {
			if (mp_read_i64(c, &code) < 0 || code < INT32_MIN || code > INT32_MAX)
				goto bad;
		} else if (mp_str_eq(k, kl, "message")) {
			if (mp_read_str(c, &msg, &msg_len) < 0)
				goto bad;
		} else if (mp_str_eq(k, kl, "index")) {
			if (mp_read_i64(c, &index) < 0)
				goto bad;
		} else if (mp_skip(c, NULL, NULL) < 0) {  /* future keys */
			goto bad;
		}
	}
	*ret_code = (int)code;
	*ret_msg = msg;
	*ret_msg_len = msg_len;
	*ret_index = index;
	return 0;
bad:
	*c = save;
	return -EBADMSG;
}
