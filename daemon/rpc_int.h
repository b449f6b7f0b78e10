/* rpc_int: what the method files (rpc.c, rpc_job.c, rpc_proc.c) share. */
#ifndef RPC_INT_H
#define RPC_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <mpool/error.h>

#include "disp.h"
#include "mp_rpc.h"
#include "proc.h"

struct conn;

/* What a method's parser read from its params. */
struct rpc_args {
	uint64_t id;            /* a job, worker, process id, or cancel_request's msgid */
	bool kill;              /* cancel_request */
	uint32_t timeout_ms;    /* join */
	struct job_spec job;    /* apply, map */
	struct proc_spec proc;  /* spawn */
};

/* Reads what follows the params array's header (n elements, within the
 * method's bounds).  Returns 0; RPC_USAGE when the params do not fit the
 * method's usage line; or an MPOOL_E_ code with the reply's text in why
 * (a limit it passes already counted). */
#define RPC_USAGE (-1)
typedef int rpc_parse_fn(struct mp_cur *p, uint32_t n, struct rpc_args *a, char *why,
			 size_t n_why);
typedef void rpc_run_fn(struct conn *c, uint64_t msgid, const struct rpc_args *a);

/* The most a request's timeout_ms may say (a day), for apply, map and join. */
#define RPC_TIMEOUT_MAX_MS (24u * 3600 * 1000)

/* Writes a reason into why and returns ret, for parsers. */
int rpc_why(int ret, char *why, size_t n_why, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
/* Names come from clients: keep what is logged and echoed printable. */
void rpc_printable(char *dst, size_t size, const char *s, size_t len);
/* A request that opens something answered later (a job, a join) fits
 * --max-jobs, else is refused.  Returns whether it fits. */
bool rpc_room_for_request(struct conn *c, uint64_t msgid);
/* 0 when new work is taken now (not draining or terminating) and fn is a
 * registered function (of any node, when shared); else the MPOOL_E_ code
 * that refuses it, with the reply's text in why. */
int rpc_may_start(const char *fn, uint32_t fn_len, bool shared, char *why, size_t n_why);
void rpc_reply_bool(struct conn *c, uint64_t msgid, bool v);

/* rpc_job.c: apply, map and the feeds of a streamed map. */
rpc_parse_fn rpc_parse_apply, rpc_parse_map;
rpc_run_fn rpc_run_job;
void rpc_feed(struct conn *c, const struct mp_msg *m);

/* rpc_proc.c: supervised processes. */
rpc_parse_fn rpc_parse_spawn, rpc_parse_join;
rpc_run_fn rpc_run_spawn, rpc_run_join, rpc_run_processes, rpc_run_is_alive,
	rpc_run_terminate_process, rpc_run_kill_process;

#endif
