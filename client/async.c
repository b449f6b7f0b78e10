/* async: the public handle of a request in flight, Python's AsyncResult:
 * apply_async, map_async, starmap_async, and ready, successful, wait, get,
 * cancel, free. */
#include "libmpool-private.h"

#include <stdio.h>

static int handle(mpool *p, struct mpool_async *a, mpool_result_cb callback,
		  mpool_error_cb error_callback, void *userdata, mpool_async **ret)
{
	a->cb = callback;
	a->ecb = error_callback;
	a->ud = userdata;
	mpc_watch_update(p);
	*ret = a;
	return 0;
}

int mpool_apply_async(mpool *p, const char *fn, const void *arg, size_t arg_len,
		      const struct mpool_apply_opts *opts, mpool_result_cb callback,
		      mpool_error_cb error_callback, void *userdata, mpool_async **ret)
{
	struct mpool_async *a;
	int r;

	if (!p || !ret)
		return -MPOOL_E_INVAL;
	r = mpc_usable(p);
	if (r < 0)
		return r;
	a = mpc_apply_start(p, fn, arg, arg_len, opts, &r);
	if (!a)
		return r;
	return handle(p, a, callback, error_callback, userdata, ret);
}

static int map_async(mpool *p, const char *fn, const void *items, size_t items_len,
		     uint64_t n_items, const struct mpool_map_opts *opts, bool star,
		     mpool_result_cb callback, mpool_error_cb error_callback, void *userdata,
		     mpool_async **ret)
{
	struct mpool_async *a;
	int r;

	if (!p || !ret)
		return -MPOOL_E_INVAL;
	r = mpc_usable(p);
	if (r < 0)
		return r;
	a = mpc_map_start(p, fn, items, items_len, n_items, opts, star, INPUT_COPY, SINK_COLLECT,
			  sizeof(*a), &r);
	if (!a)
		return r;
	return handle(p, a, callback, error_callback, userdata, ret);
}

int mpool_map_async(mpool *p, const char *fn, const void *items, size_t items_len,
		    uint64_t n_items, const struct mpool_map_opts *opts,
		    mpool_result_cb callback, mpool_error_cb error_callback, void *userdata,
		    mpool_async **ret)
{
	return map_async(p, fn, items, items_len, n_items, opts, false, callback,
			 error_callback, userdata, ret);
}

int mpool_starmap_async(mpool *p, const char *fn, const void *items, size_t items_len,
			uint64_t n_items, const struct mpool_map_opts *opts,
			mpool_result_cb callback, mpool_error_cb error_callback,
			void *userdata, mpool_async **ret)
{
	return map_async(p, fn, items, items_len, n_items, opts, true, callback,
			 error_callback, userdata, ret);
}

int mpool_async_ready(const mpool_async *a)
{
	return a && a->done;
}

int mpool_async_successful(const mpool_async *a)
{
	if (!a || !a->done)
		return -MPOOL_E_INVAL;
	return a->err == 0;
}

int mpool_async_wait(mpool_async *a, int timeout_ms)
{
	if (!a)
		return -MPOOL_E_INVAL;
	if (a->done || !a->p)
		return 1;
	if (timeout_ms != 0) {
		int r = mpc_can_block(a->p);

		if (r < 0)
			return r;
	}
	return mpc_wait(a, timeout_ms);
}

int mpool_async_get(mpool_async *a, int timeout_ms, const msgpack_object **ret_result)
{
	int r;

	if (!a)
		return -MPOOL_E_INVAL;
	r = mpool_async_wait(a, timeout_ms);
	if (r < 0)
		return r;
	if (r == 0)
		return mpc_err(a->p, MPOOL_E_TIMEOUT, "not ready within %d ms; the request goes on",
			       timeout_ms);
	if (a->err < 0) {
		if (a->p)
			snprintf(a->p->errmsg, sizeof(a->p->errmsg), "%s",
				 a->errmsg ? a->errmsg : "out of memory");
		return a->err;
	}
	if (ret_result)
		*ret_result = mpc_call_result(a);
	return 0;
}

int mpool_async_cancel(mpool_async *a, int kill)
{
	if (!a)
		return -MPOOL_E_INVAL;
	if (a->done)
		return 0;
	mpc_cancel(a, kill != 0, MPOOL_E_CANCELLED, "cancelled by its client");
	return 1;
}

const char *mpool_async_errmsg(const mpool_async *a)
{
	if (!a || !a->done || a->err == 0)
		return "";
	return a->errmsg ? a->errmsg : "out of memory";
}

void mpool_async_free(mpool_async *a)
{
	if (!a)
		return;
	/* A map nobody will read need not keep its results. */
	if (!a->done && a->kind == MPC_MAP && !a->cb && !a->ecb)
		a->map.sink = SINK_NONE;
	mpc_call_release(a);
}

/* ---- cancel ------------------------------------------------------------------ */

int mpc_send_cancel(struct mpool_async *a, bool kill)
{
	mpool *p = a->p;
	struct mpool_async *c;
	msgpack_packer pk;
	size_t mark = mpc_out_mark(p);
	int r;

	c = mpc_call_new(p, MPC_INTERNAL, sizeof(*c));
	if (!c)
		return -MPOOL_E_NOMEM;
	mpc_packer(p, &pk);
	r = mpc_pack_head(p, c->msgid, "cancel_request", kill ? 2 : 1);
	r |= msgpack_pack_uint64(&pk, a->msgid);
	if (kill)
		r |= msgpack_pack_map(&pk, 1) | mp_pack_cstr(&pk, "kill") | msgpack_pack_true(&pk);
	if (r == 0 && mpc_call_open(c) < 0)
		r = -1;
	if (r) {
		mpc_out_rollback(p, mark);
		mpc_call_release(c);
		return -MPOOL_E_NOMEM;
	}
	mpc_call_release(c);       /* open: it lives until mpoold answers */
	mpc_send_soon(p);
	return 0;
}

void mpc_cancel(struct mpool_async *a, bool kill, int code, const char *msg)
{
	if (a->done)
		return;
	/* Without memory for the cancel_request the job runs on at the
	 * daemon; what it sends is still dropped here. */
	if (a->p && !a->p->dead && a->open)
		mpc_send_cancel(a, kill);
	a->cancelled = true;
	if (a->kind == MPC_MAP) {
		a->map.sink = SINK_NONE;
		mpc_feed_stop(a);
		if (a->is_iter)
			mpc_iter_drop(a);
	}
	mpc_call_complete(a, -code, msg);
	if (a->p)
		mpc_watch_update(a->p);
}
