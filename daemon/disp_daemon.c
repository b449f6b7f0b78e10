/* The dispatcher's ops in the daemon: its clients are conn.c's connections
 * and the cluster's inlet (cluster_inlet_conn), its workers pool.c's and
 * the cluster's outlet.  Apart from disp.c so that the dispatcher links
 * and runs without any of them (tests/test_disp.c). */
#include "disp.h"

#include <unistd.h>

#include "cluster.h"
#include "conn.h"
#include "master.h"
#include "pool.h"

static uid_t d_uid(const struct conn *c)
{
	return c == cluster_inlet_conn ? getuid() : conn_uid(c);
}

static pid_t d_pid(const struct conn *c)
{
	return c == cluster_inlet_conn ? 0 : conn_pid(c);
}

static bool d_backlogged(const struct conn *c)
{
	return c == cluster_inlet_conn ? false : conn_backlogged(c);
}

static void d_send_chunk(struct conn *c, uint64_t msgid, uint64_t first, const uint8_t *results,
			 size_t rlen, const uint8_t *errors, size_t elen, uint8_t *owned)
{
	if (c == cluster_inlet_conn)
		cluster_send_chunk(msgid, first, results, rlen, errors, elen, owned);
	else
		conn_send_chunk(c, msgid, first, results, rlen, errors, elen, owned);
}

static void d_send_credit(struct conn *c, uint64_t msgid, uint64_t n)
{
	if (c != cluster_inlet_conn)
		conn_send_credit(c, msgid, n);
}

static void d_apply_done(struct conn *c, uint64_t msgid, const uint8_t *results, size_t rlen,
			 const uint8_t *errors, size_t elen, uint32_t n_errors)
{
	/* The inlet submits maps only. */
	if (c != cluster_inlet_conn)
		conn_apply_done(c, msgid, results, rlen, errors, elen, n_errors);
}

static void d_map_done(struct conn *c, uint64_t msgid, uint64_t items, uint64_t failed)
{
	if (c == cluster_inlet_conn)
		cluster_map_done(msgid);
	else
		conn_map_done(c, msgid, items, failed);
}

static void d_job_failed(struct conn *c, uint64_t msgid, int code, const char *msg)
{
	if (c == cluster_inlet_conn)
		cluster_job_failed(msgid, code, msg);
	else
		conn_job_failed(c, msgid, code, msg);
}

static void d_job_ended(struct conn *c, struct job *job)
{
	if (c == cluster_inlet_conn) {
		cluster_inlet_job_ended(disp_job_msgid(job));
		return;
	}
	cluster_job_ended(job);
	conn_job_ended(c, job);
}

static void d_kill_job(const struct job *job)
{
	pool_kill_job(job);
	cluster_kill_job(job);
}

const struct disp_ops disp_daemon_ops = {
	.uid = d_uid,
	.pid = d_pid,
	.backlogged = d_backlogged,
	.send_chunk = d_send_chunk,
	.send_credit = d_send_credit,
	.apply_done = d_apply_done,
	.map_done = d_map_done,
	.job_failed = d_job_failed,
	.job_ended = d_job_ended,
	.idle = pool_idle,
	.quota_left = pool_quota_left,
	.run = pool_run,
	.kill_job = d_kill_job,
	.outlet_room = cluster_outlet_room,
	.outlet_run = cluster_outlet_run,
	.outlet_workers = cluster_outlet_workers,
	.changed = master_status_changed,
	.job_gone = master_progress,
};
