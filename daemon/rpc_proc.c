/* rpc_proc: the methods of supervised processes (spawn, join, is_alive,
 * terminate_process, kill_process, processes). */
#include <errno.h>

#include "conn.h"
#include "mp_name.h"
#include "mp_scan.h"
#include "rpc_int.h"

/* The owner of a process, or an admin; else answers permission denied. */
static struct proc *own_process(struct conn *c, uint64_t msgid, uint64_t id)
{
	struct proc *p = proc_find(id);

	if (!p) {
		conn_reply_error(c, msgid, MPOOL_E_NOTFOUND, "no process %llu",
				 (unsigned long long)id);
		return NULL;
	}
	if (proc_owner(p) != conn_uid(c) && !conn_is_admin(c)) {
		conn_reply_error(c, msgid, MPOOL_E_PERM,
				 "process %llu belongs to uid %u; only its owner or an admin may use it",
				 (unsigned long long)id, (unsigned)proc_owner(p));
		return NULL;
	}
	return p;
}

/* spawn [function, argument, {"protocol": 2, "daemon": bool, "name": str}].
 * A client that does not say it speaks protocol 2 is refused with what
 * changed, rather than getting the opposite of what it asked for. */
int rpc_parse_spawn(struct mp_cur *p, uint32_t n, struct rpc_args *a, char *why, size_t n_why)
{
	struct proc_spec *spec = &a->proc;
	uint32_t nopt;
	uint64_t proto = 0;
	bool bad_opt = false;

	if (mp_read_str(p, &spec->fn, &spec->fn_len) < 0 ||
	    mp_skip(p, &spec->arg, &spec->arg_len) < 0)
		return RPC_USAGE;
	if (n == 3) {
		if (mp_read_map(p, &nopt) < 0)
			goto badopt;
		/* Every key is read before any is refused: a client of
		 * protocol 1 (no "protocol", maybe a name that is no longer
		 * valid) must hear what changed, whatever order its keys are
		 * in. */
		while (nopt--) {
			const char *k;
			uint32_t kl;

			if (mp_read_str(p, &k, &kl) < 0)
				goto badopt;
			if (mp_str_eq(k, kl, "protocol")) {
				if (mp_read_u64(p, &proto) < 0)
					goto badopt;
			} else if (mp_str_eq(k, kl, "daemon")) {
				if (mp_read_bool(p, &spec->daemon) < 0)
					goto badopt;
			} else if (mp_str_eq(k, kl, "name")) {
				if (mp_read_str(p, &spec->name, &spec->name_len) < 0)
					goto badopt;
				bad_opt |= mp_name_check(spec->name, spec->name_len) < 0;
			} else {
				if (mp_skip(p, NULL, NULL) < 0)
					goto badopt;
				bad_opt = true;
			}
		}
	}
	if (proto == 0)
		return rpc_why(MPOOL_E_BADREQ, why, n_why,
			       "spawn changed meaning in protocol %d: a process started with "
			       "\"daemon\": true now dies with its client's connection, and one "
			       "without runs to completion and keeps its outcome for join (Python's "
			       "meaning, the opposite of protocol 1); say {\"protocol\": %d} in "
			       "spawn's options", MP_PROTO_VERSION, MP_PROTO_VERSION);
	if (proto != MP_PROTO_VERSION)
		return rpc_why(MPOOL_E_BADREQ, why, n_why, "this mpoold speaks protocol %d, "
			       "not %llu", MP_PROTO_VERSION, (unsigned long long)proto);
	if (!bad_opt)
		return 0;
badopt:
	return rpc_why(MPOOL_E_BADREQ, why, n_why, "spawn options: {\"protocol\": %d, "
		       "\"daemon\": bool, \"name\": 1 to %d printable characters}",
		       MP_PROTO_VERSION, MP_NAME_MAX);
}

void rpc_run_spawn(struct conn *c, uint64_t msgid, const struct rpc_args *a)
{
	const struct proc_spec *spec = &a->proc;
	struct proc *pr;
	size_t alen;
	char why[256];
	int r;

	r = rpc_may_start(spec->fn, spec->fn_len, false, why, sizeof(why));
	if (r) {
		conn_reply_error(c, msgid, r, "%s", why);
		return;
	}
	if (mp_scan_one(spec->arg, spec->arg_len, MP_ITEM_DEPTH_MAX, &alen) != 1) {
		conn_limit_hit(LIM_DEPTH);
		conn_reply_error(c, msgid, MPOOL_E_LIMIT,
				 "spawn argument nested deeper than %d levels", MP_ITEM_DEPTH_MAX);
		return;
	}
	r = proc_spawn(c, conn_uid(c), conn_is_admin(c), spec, why, sizeof(why), &pr);
	if (r < 0) {
		conn_reply_error(c, msgid, r == -EUSERS || r == -EAGAIN ? MPOOL_E_LIMIT :
				 MPOOL_E_INTERNAL, "%s", why);
		return;
	}
	conn_reply(c, msgid, proc_pack_spawned, pr);
}

/* join [id] or [id, {"timeout_ms": n}]: answered when the process ends or
 * the timeout passes; the process keeps running after a timeout. */
int rpc_parse_join(struct mp_cur *p, uint32_t n, struct rpc_args *a, char *why, size_t n_why)
{
	uint32_t nopt;
	uint64_t timeout = 0;

	(void)why;
	(void)n_why;
	if (mp_read_u64(p, &a->id) < 0)
		return RPC_USAGE;
	if (n == 2) {
		const char *k;
		uint32_t kl;

		if (mp_read_map(p, &nopt) < 0 || nopt > 1 ||
		    (nopt == 1 && (mp_read_str(p, &k, &kl) < 0 || !mp_str_eq(k, kl, "timeout_ms") ||
				   mp_read_u64(p, &timeout) < 0 || timeout > RPC_TIMEOUT_MAX_MS)))
			return RPC_USAGE;
	}
	a->timeout_ms = (uint32_t)timeout;
	return 0;
}

void rpc_run_join(struct conn *c, uint64_t msgid, const struct rpc_args *a)
{
	struct proc *pr;

	if (!rpc_room_for_request(c, msgid))
		return;
	pr = own_process(c, msgid, a->id);
	if (pr)
		proc_join(pr, c, msgid, a->timeout_ms);
}

static void pack_processes(msgpack_packer *pk, const void *arg)
{
	(void)arg;
	proc_pack_all(pk);
}

void rpc_run_processes(struct conn *c, uint64_t msgid, const struct rpc_args *a)
{
	(void)a;
	conn_reply(c, msgid, pack_processes, NULL);
}

void rpc_run_is_alive(struct conn *c, uint64_t msgid, const struct rpc_args *a)
{
	struct proc *pr = own_process(c, msgid, a->id);

	if (pr)
		rpc_reply_bool(c, msgid, proc_alive(pr));
}

static void stop_process(struct conn *c, uint64_t msgid, uint64_t id, bool kill)
{
	struct proc *pr = own_process(c, msgid, id);

	if (!pr)
		return;
	proc_stop(pr, kill);
	rpc_reply_bool(c, msgid, true);
}

void rpc_run_terminate_process(struct conn *c, uint64_t msgid, const struct rpc_args *a)
{
	stop_process(c, msgid, a->id, false);
}

void rpc_run_kill_process(struct conn *c, uint64_t msgid, const struct rpc_args *a)
{
	stop_process(c, msgid, a->id, true);
}
