/* The dispatcher's ops in the daemon: its clients are conn.c's connections,
 * its workers pool.c's, and large results are adopted from the worker
 * channel that is delivering them.  Kept apart from disp.c so that the
 * dispatcher links and runs without any of them (tests/test_disp.c);
 * master.c hands these to disp_init. */
#include "disp.h"

#include "chan.h"
#include "conn.h"
#include "master.h"
#include "pool.h"

static uint8_t *take_delivered(const uint8_t *results, size_t len)
{
	return chan_take_delivered(results, len);
}

const struct disp_ops disp_daemon_ops = {
	.uid = conn_uid,
	.pid = conn_pid,
	.backlogged = conn_backlogged,
	.send_chunk = conn_send_chunk,
	.send_credit = conn_send_credit,
	.apply_done = conn_apply_done,
	.map_done = conn_map_done,
	.job_failed = conn_job_failed,
	.job_ended = conn_job_ended,
	.idle = pool_idle,
	.quota_left = pool_quota_left,
	.run = pool_run,
	.kill_job = pool_kill_job,
	.take_results = take_delivered,
	.changed = master_status_changed,
	.job_gone = master_progress,
};
