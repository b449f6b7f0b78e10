/* call: the one-response methods (ping, apply, status, the control
 * methods), each a call with one response; the blocking forms wait for it. */
#include "libmpool-private.h"

#include <stdio.h>
#include <string.h>

int mpc_resp_error(const struct mp_msg *m, char *msg, size_t msg_size)
{
	struct mp_cur c;
	const char *s;
	uint32_t len;
	int64_t index;
	int code;

	mp_cur_init(&c, m->error, m->error_len);
	if (mp_read_nil(&c) == 0)
		return 0;
	if (mp_read_error(&c, &code, &s, &len, &index) < 0 || code <= 0) {
		snprintf(msg, msg_size, "mpoold sent a malformed error object");
		return -MPOOL_E_PROTO;
	}
	snprintf(msg, msg_size, "%.*s", (int)len, s);
	return -code;
}

void mpc_simple_response(mpool *p, struct mpool_async *a, const struct mp_msg *m)
{
	char msg[MPC_ERRMSG_MAX];
	mpool_value *v;
	int r;

	r = mpc_resp_error(m, msg, sizeof(msg));
	if (r == -MPOOL_E_PROTO) {
		mpc_conn_fail(p, MPOOL_E_PROTO, "%s", msg);
		mpc_call_complete(a, r, msg);
		return;
	}
	if (r < 0 || a->kind == MPC_INTERNAL) {
		mpc_call_complete(a, r, msg);
		return;
	}
	r = mpc_value_decode(m->body, m->body_len, &v);
	if (r < 0) {
		mpc_call_fail(a, -r, r == -MPOOL_E_NOMEM ? "out of memory decoding a result"
			      : "mpoold sent a value msgpack-c cannot decode");
		return;
	}
	a->value = v;
	mpc_call_complete(a, 0, NULL);
}

int mpc_finish(mpool *p, struct mpool_async *a, mpool_value **ret_value)
{
	int r;

	mpc_wait(a, -1);
	r = a->err;
	if (r < 0) {
		snprintf(p->errmsg, sizeof(p->errmsg), "%s", a->errmsg ? a->errmsg : "out of memory");
	} else if (ret_value) {
		*ret_value = a->value;
		a->value = NULL;
	}
	mpc_call_release(a);
	return r;
}

/* Queues [0, msgid, method, []] or [0, msgid, method, [id]].  The call,
 * open, or NULL with the failure in *ret_err. */
static struct mpool_async *simple_start(mpool *p, const char *method, const uint64_t *id,
					int *ret_err)
{
	size_t mark = mpc_out_mark(p);
	struct mpool_async *a;
	msgpack_packer pk;
	int r;

	a = mpc_call_new(p, MPC_SIMPLE, sizeof(*a));
	if (!a) {
		*ret_err = mpc_err(p, MPOOL_E_NOMEM, "out of memory starting a request");
		return NULL;
	}
	mpc_packer(p, &pk);
	r = mpc_pack_head(p, a->msgid, method, id ? 1 : 0);
	if (id)
		r |= msgpack_pack_uint64(&pk, *id);
	if (r == 0 && mpc_call_open(a) < 0)
		r = -1;
	if (r) {
		mpc_out_rollback(p, mark);
		mpc_call_release(a);
		*ret_err = mpc_err(p, MPOOL_E_NOMEM, "out of memory packing a request");
		return NULL;
	}
	mpc_send_soon(p);
	return a;
}

/* A blocking call of method without params (or with one id). */
static int call_simple(mpool *p, const char *method, const uint64_t *id,
		       mpool_value **ret_value)
{
	struct mpool_async *a;
	int r;

	if (!p)
		return -MPOOL_E_INVAL;
	r = mpc_usable(p);
	if (r == 0)
		r = mpc_can_block(p);
	if (r < 0)
		return r;
	a = simple_start(p, method, id, &r);
	if (!a)
		return r;
	return mpc_finish(p, a, ret_value);
}

int mpool_ping(mpool *p)
{
	mpool_value *v;
	const msgpack_object *o;
	int r;

	r = call_simple(p, "ping", NULL, &v);
	if (r < 0)
		return r;
	/* Checking the answer catches a socket that is not mpoold's. */
	o = mpool_value_get(v);
	r = o->type == MSGPACK_OBJECT_STR && o->via.str.size == 4 &&
	    memcmp(o->via.str.ptr, "pong", 4) == 0;
	mpool_value_free(v);
	if (!r) {
		mpc_conn_fail(p, MPOOL_E_PROTO, "mpoold answered ping with something else than \"pong\"");
		return -MPOOL_E_PROTO;
	}
	return 0;
}

int mpool_status(mpool *p, mpool_value **ret_status)
{
	mpool_value *v;
	int r;

	r = call_simple(p, "status", NULL, &v);
	if (r < 0)
		return r;
	if (mpool_value_get(v)->type != MSGPACK_OBJECT_MAP) {
		mpool_value_free(v);
		mpc_conn_fail(p, MPOOL_E_PROTO, "mpoold's status is not a map");
		return -MPOOL_E_PROTO;
	}
	if (ret_status)
		*ret_status = v;
	else
		mpool_value_free(v);
	return 0;
}

int mpool_terminate(mpool *p)
{
	return call_simple(p, "terminate", NULL, NULL);
}

int mpool_drain(mpool *p)
{
	return call_simple(p, "drain", NULL, NULL);
}

int mpool_reload(mpool *p)
{
	return call_simple(p, "reload", NULL, NULL);
}

int mpool_cancel(mpool *p, uint64_t job_id)
{
	return call_simple(p, "cancel", &job_id, NULL);
}

int mpool_kill_worker(mpool *p, pid_t pid)
{
	uint64_t id = (uint64_t)pid;

	if (pid <= 0)
		return p ? mpc_err(p, MPOOL_E_INVAL, "kill_worker: pid must be positive")
			 : -MPOOL_E_INVAL;
	return call_simple(p, "kill_worker", &id, NULL);
}

/* ---- apply ----------------------------------------------------------------- */

struct mpool_async *mpc_apply_start(mpool *p, const char *fn, const void *arg, size_t arg_len,
				    const struct mpool_apply_opts *opts, int *ret_err)
{
	struct mpc_opts o = { 0 };
	struct mpool_apply_opts ao;
	struct mpool_async *a;
	msgpack_packer pk;
	size_t mark;
	int r;

	if (!fn) {
		*ret_err = mpc_err(p, MPOOL_E_INVAL, "apply: no function name");
		return NULL;
	}
	r = mpc_opts_copy(p, "struct mpool_apply_opts", &ao, sizeof(ao), opts);
	if (r < 0) {
		*ret_err = r;
		return NULL;
	}
	r = mpc_check_values(p, "apply argument", arg, arg_len, 1, false);
	if (r < 0) {
		*ret_err = r;
		return NULL;
	}
	o.timeout_ms = ao.timeout_ms;
	o.retries = ao.retries;
	o.spread = ao.spread;
	a = mpc_call_new(p, MPC_APPLY, sizeof(*a));
	if (!a) {
		*ret_err = mpc_err(p, MPOOL_E_NOMEM, "out of memory starting a request");
		return NULL;
	}
	mark = mpc_out_mark(p);
	mpc_packer(p, &pk);
	r = mpc_pack_head(p, a->msgid, "apply", mpc_opts_count(&o) ? 3 : 2);
	r |= mp_pack_cstr(&pk, fn);
	r |= mpc_out_write(p, arg, arg_len);
	if (mpc_opts_count(&o))
		r |= mpc_opts_pack(&pk, &o);
	if (r == 0 && mpc_call_open(a) < 0)
		r = -1;
	if (r) {
		mpc_out_rollback(p, mark);
		mpc_call_release(a);
		*ret_err = mpc_err(p, MPOOL_E_NOMEM, "out of memory packing a request");
		return NULL;
	}
	mpc_send_soon(p);
	return a;
}

int mpool_apply(mpool *p, const char *fn, const void *arg, size_t arg_len,
		mpool_value **ret_result)
{
	return mpool_apply_with(p, fn, arg, arg_len, NULL, ret_result);
}

int mpool_apply_with(mpool *p, const char *fn, const void *arg, size_t arg_len,
		     const struct mpool_apply_opts *opts, mpool_value **ret_result)
{
	struct mpool_async *a;
	int r;

	if (!p)
		return -MPOOL_E_INVAL;
	r = mpc_usable(p);
	if (r == 0)
		r = mpc_can_block(p);
	if (r < 0)
		return r;
	a = mpc_apply_start(p, fn, arg, arg_len, opts, &r);
	if (!a)
		return r;
	return mpc_finish(p, a, ret_result);
}

/* ---- request options ------------------------------------------------------ */

uint32_t mpc_opts_count(const struct mpc_opts *o)
{
	return (o->chunksize != 0) + (o->unordered != 0) + (o->timeout_ms != 0) +
	       (o->retries != 0) + o->stream + (o->spread != 0);
}

/* Only what differs from the daemon's defaults goes on the wire. */
int mpc_opts_pack(msgpack_packer *pk, const struct mpc_opts *o)
{
	int r = msgpack_pack_map(pk, mpc_opts_count(o));

	if (o->chunksize)
		r |= mp_pack_cstr(pk, "chunksize") | msgpack_pack_uint32(pk, o->chunksize);
	if (o->unordered)
		r |= mp_pack_cstr(pk, "ordered") | msgpack_pack_false(pk);
	if (o->timeout_ms)
		r |= mp_pack_cstr(pk, "timeout_ms") | msgpack_pack_uint32(pk, o->timeout_ms);
	if (o->retries)
		r |= mp_pack_cstr(pk, "retries") | msgpack_pack_uint32(pk, o->retries);
	if (o->stream)
		r |= mp_pack_cstr(pk, "stream") | msgpack_pack_true(pk);
	if (o->spread)
		r |= mp_pack_cstr(pk, "spread") |
		     (o->spread > 0 ? msgpack_pack_true(pk) : msgpack_pack_false(pk));
	return r ? -1 : 0;
}

int mpc_opts_from_map(mpool *p, struct mpc_opts *o, const struct mpool_map_opts *opts)
{
	struct mpool_map_opts mo;
	int r;

	r = mpc_opts_copy(p, "struct mpool_map_opts", &mo, sizeof(mo), opts);
	if (r < 0)
		return r;
	o->chunksize = mo.chunksize;
	o->unordered = mo.unordered;
	o->timeout_ms = mo.timeout_ms;
	o->retries = mo.retries;
	o->spread = mo.spread;
	return 0;
}

/* Far above any option struct this library will have: a larger size is
 * garbage (a struct whose size was never set), not a newer header. */
#define MPC_OPTS_MAX_SIZE 4096

int mpc_opts_copy(mpool *p, const char *what, void *dst, size_t dst_size, const void *src)
{
	const unsigned char *s = src;
	size_t size;

	memset(dst, 0, dst_size);
	memcpy(dst, &dst_size, sizeof(size_t));
	if (!src)
		return 0;
	memcpy(&size, src, sizeof(size));
	if (size < sizeof(size_t) || size > MPC_OPTS_MAX_SIZE)
		return mpc_err(p, MPOOL_E_INVAL,
			       "%s: its size member is %zu: make the struct with its "
			       "MPOOL_..._OPTS() initializer", what, size);
	for (size_t i = dst_size; i < size; i++)
		if (s[i] != 0)
			return mpc_err(p, MPOOL_E_INVAL,
				       "%s: sets an option this libmpool does not know "
				       "(byte %zu of %zu; it knows %zu): link a newer libmpool",
				       what, i, size, dst_size);
	memcpy((unsigned char *)dst + sizeof(size_t), s + sizeof(size_t),
	       (size < dst_size ? size : dst_size) - sizeof(size_t));
	return 0;
}
