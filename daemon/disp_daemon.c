/* The dispatcher's ops in the daemon: its clients are conn.c's connections
 * and its workers pool.c's.  Kept apart from disp.c so that the
 * dispatcher links and runs without any of them (tests/test_disp.c);
 * master.c hands these to disp_init. */
#include "disp.h"

#include "conn.h"
#include "master.h"
#include "pool.h"

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
	.changed = master_status_changed,
	.job_gone = master_progress,
};
