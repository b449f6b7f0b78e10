#include "wmsg.h"

#include <errno.h>

#include "mp_rpc.h"

int wmsg_pack_run_head(msgpack_packer *pk, const struct wmsg_run *run)
{
	int r = mp_pack_request_head(pk, run->seq, "run");

	r |= msgpack_pack_array(pk, 4);
	r |= msgpack_pack_str_with_body(pk, run->fn, run->fn_len);
	r |= msgpack_pack_uint64(pk, run->first);
	r |= run->each ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
	r |= msgpack_pack_array(pk, run->count);
	return r ? -ENOMEM : 0;
}

int wmsg_parse_run(const uint8_t *frame, size_t len, struct wmsg_run *ret)
{
	struct mp_msg m;
	struct mp_cur c;
	struct wmsg_run run;
	uint64_t msgid;
	uint32_t n;
	int ok;

	if (mp_msg_parse(frame, len, &m, &ok, &msgid) < 0 || m.type != MP_REQUEST ||
	    !mp_str_eq(m.method, m.method_len, "run"))
		return -EBADMSG;
	run.seq = m.msgid;
	mp_cur_init(&c, m.body, m.body_len);
	if (mp_read_array(&c, &n) < 0 || n != 4 ||
	    mp_read_str(&c, &run.fn, &run.fn_len) < 0 ||
	    mp_read_u64(&c, &run.first) < 0 ||
	    mp_read_bool(&c, &run.each) < 0 ||
	    mp_read_array(&c, &run.count) < 0)
		return -EBADMSG;
	run.items = c.p;
	run.items_len = (size_t)(c.end - c.p);
	*ret = run;
	return 0;
}

int wmsg_parse_from_worker(const uint8_t *frame, size_t len, struct wmsg_result *ret,
			   int64_t *ret_pid)
{
	struct mp_msg m;
	struct mp_cur c, arr;
	struct wmsg_result res;
	uint64_t msgid;
	uint32_t n;
	int ok, kind;

	if (mp_msg_parse(frame, len, &m, &ok, &msgid) < 0)
		return -EBADMSG;
	mp_cur_init(&c, m.body, m.body_len);
	if (m.type == MP_NOTIFY && mp_str_eq(m.method, m.method_len, "ready")) {
		if (mp_read_array(&c, &n) < 0 || n != 1 || mp_read_i64(&c, ret_pid) < 0)
			return -EBADMSG;
		return WMSG_READY;
	}
	if (m.type == MP_NOTIFY && mp_str_eq(m.method, m.method_len, "part")) {
		if (mp_read_array(&c, &n) < 0 || n != 3 || mp_read_u64(&c, &res.seq) < 0)
			return -EBADMSG;
		kind = WMSG_PART;
	} else {
		if (m.type != MP_RESPONSE || m.error_len != 1 || m.error[0] != 0xc0)
			return -EBADMSG;
		res.seq = m.msgid;
		if (mp_read_array(&c, &n) < 0 || n != 2)
			return -EBADMSG;
		kind = WMSG_RESULT;
	}
	/* errors comes first and is short (usually empty); results, last in
	 * a frame mp_frame measured, runs to its end and is not walked. */
	arr = c;
	if (mp_read_array(&arr, &res.n_errors) < 0 ||
	    mp_skip(&c, &res.errors, &res.errors_len) < 0)
		return -EBADMSG;
	arr = c;
	if (mp_read_array(&arr, &res.n_results) < 0)
		return -EBADMSG;
	res.results = c.p;
	res.results_len = (size_t)(c.end - c.p);
	*ret = res;
	return kind;
}
