/* call: the one-shot methods (ping, apply, status, terminate), each one
 * request and one response. */
#include "libmpool-private.h"

/* Sends a request without params and waits for its result. */
static int call_noargs(mpool *p, const char *method, struct mp_msg *ret_resp)
{
	struct mpc_req rq;
	int r;

	r = mpc_req_start(p, &rq, method, 0);
	if (r == 0)
		r = mpc_req_call(p, &rq, NULL, NULL, ret_resp);
	mpc_req_done(&rq);
	return r;
}

int mpool_ping(mpool *p)
{
	struct mp_msg m;
	struct mp_cur c;
	const char *s;
	uint32_t len;
	int r;

	if (!p)
		return -MPOOL_E_INVAL;
	r = mpc_usable(p);
	if (r == 0)
		r = call_noargs(p, "ping", &m);
	if (r < 0)
		return r;
	/* Checking the answer catches a socket that is not mpoold's. */
	mp_cur_init(&c, m.body, m.body_len);
	if (mp_read_str(&c, &s, &len) < 0 || !mp_str_eq(s, len, "pong"))
		return mpc_err(p, MPOOL_E_PROTO, "mpoold answered ping with something else than \"pong\"");
	return 0;
}

int mpool_apply(mpool *p, const char *fn, const void *arg, size_t arg_len,
		mpool_value **ret_result)
{
	return mpool_apply_with(p, fn, arg, arg_len, NULL, ret_result);
}

int mpool_apply_with(mpool *p, const char *fn, const void *arg, size_t arg_len,
		     const struct mpool_apply_opts *opts, mpool_value **ret_result)
{
	struct mpc_opts o = { 0 };
	struct mpc_req rq;
	struct mp_msg m;
	mpool_value *v;
	int r;

	if (!p)
		return -MPOOL_E_INVAL;
	r = mpc_usable(p);
	if (r < 0)
		return r;
	if (!fn)
		return mpc_err(p, MPOOL_E_INVAL, "apply: no function name");
	r = mpc_check_values(p, "apply argument", arg, arg_len, 1);
	if (r < 0)
		return r;

	if (opts) {
		o.timeout_ms = opts->timeout_ms;
		o.retries = opts->retries;
	}
	r = mpc_req_start(p, &rq, "apply", mpc_opts_count(&o) ? 3 : 2);
	if (r == 0 && mp_pack_cstr(&rq.pk, fn) < 0)
		r = mpc_err(p, MPOOL_E_NOMEM, "out of memory packing a request");
	if (r == 0)
		r = mpc_req_raw(p, &rq, arg, arg_len);
	if (r == 0 && mpc_opts_count(&o) && mpc_opts_pack(&rq.pk, &o) < 0)
		r = mpc_err(p, MPOOL_E_NOMEM, "out of memory packing a request");
	if (r == 0)
		r = mpc_req_call(p, &rq, NULL, NULL, &m);
	mpc_req_done(&rq);
	if (r < 0)
		return r;
	if (!ret_result)
		return 0;
	r = mpc_value_decode(p, m.body, m.body_len, &v);
	if (r < 0)
		return r;
	*ret_result = v;
	return 0;
}

int mpool_status(mpool *p, mpool_value **ret_status)
{
	struct mp_msg m;
	struct mp_cur c;
	mpool_value *v;
	int r;

	if (!p)
		return -MPOOL_E_INVAL;
	r = mpc_usable(p);
	if (r == 0)
		r = call_noargs(p, "status", &m);
	if (r < 0)
		return r;
	mp_cur_init(&c, m.body, m.body_len);
	if (mp_peek(&c) != MP_T_MAP)
		return mpc_err(p, MPOOL_E_PROTO, "mpoold's status is not a map");
	if (!ret_status)
		return 0;
	r = mpc_value_decode(p, m.body, m.body_len, &v);
	if (r < 0)
		return r;
	*ret_status = v;
	return 0;
}

/* The control methods: no params, result true. */
static int control(mpool *p, const char *method)
{
	struct mp_msg m;
	int r;

	if (!p)
		return -MPOOL_E_INVAL;
	r = mpc_usable(p);
	if (r == 0)
		r = call_noargs(p, method, &m);
	return r;
}

int mpool_terminate(mpool *p)
{
	return control(p, "terminate");
}

int mpool_drain(mpool *p)
{
	return control(p, "drain");
}

int mpool_reload(mpool *p)
{
	return control(p, "reload");
}

/* The control methods that name one job or worker: params [id]. */
static int control_id(mpool *p, const char *method, uint64_t id)
{
	struct mpc_req rq;
	struct mp_msg m;
	int r;

	if (!p)
		return -MPOOL_E_INVAL;
	r = mpc_usable(p);
	if (r < 0)
		return r;
	r = mpc_req_start(p, &rq, method, 1);
	if (r == 0 && msgpack_pack_uint64(&rq.pk, id) < 0)
		r = mpc_err(p, MPOOL_E_NOMEM, "out of memory packing a request");
	if (r == 0)
		r = mpc_req_call(p, &rq, NULL, NULL, &m);
	mpc_req_done(&rq);
	return r;
}

int mpool_cancel(mpool *p, uint64_t job_id)
{
	return control_id(p, "cancel", job_id);
}

int mpool_kill_worker(mpool *p, pid_t pid)
{
	if (pid <= 0)
		return p ? mpc_err(p, MPOOL_E_INVAL, "kill_worker: pid must be positive")
			 : -MPOOL_E_INVAL;
	return control_id(p, "kill_worker", (uint64_t)pid);
}
