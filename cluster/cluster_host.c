/* cluster_host: the daemon's functions the cluster code calls, under their
 * own names, forwarded to the table mpoold hands the plugin at attach
 * (cluster_plugin.h).  The plugin's symbols are hidden, so these bind
 * within it and mpoold needs to export nothing. */
#include <stdarg.h>

#include "cluster_int.h"
#include "log.h"
#include "master.h"
#include "pool.h"
#include "registry.h"

const struct cluster_host *cluster_host;
const struct config *host_cfg;

void cluster_attach(const struct cluster_host *host)
{
	cluster_host = host;
	host_cfg = host->cfg;
}

int cluster_read_user_file(const char *path, char *user, size_t user_size, char *pass,
			   size_t pass_size, char *why, size_t why_size)
{
	return cluster_host->read_user_file(path, user, user_size, pass, pass_size, why,
					    why_size);
}

void log_msg(int prio, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	cluster_host->log_vmsg(prio, fmt, ap);
	va_end(ap);
}

uint64_t now_ms(void)
{
	return cluster_host->now_ms();
}

enum master_state master_state(void)
{
	return cluster_host->master_state();
}

void master_status_changed(void)
{
	cluster_host->master_status_changed();
}

unsigned pool_busy(void)
{
	return cluster_host->pool_busy();
}

uint64_t pool_tasks_done(void)
{
	return cluster_host->pool_tasks_done();
}

const struct reg_fn *reg_lookup(const char *name, size_t len)
{
	return cluster_host->reg_lookup(name, len);
}

void reg_each_fn(void (*fn)(const char *name, void *arg), void *arg)
{
	cluster_host->reg_each_fn(fn, arg);
}

struct job *disp_submit(struct conn *conn, const struct job_spec *spec)
{
	return cluster_host->disp_submit(conn, spec);
}

void disp_schedule(void)
{
	cluster_host->disp_schedule();
}

void disp_cancel(struct job *job, int code, const char *msg)
{
	cluster_host->disp_cancel(job, code, msg);
}

void disp_kill_running(struct job *job)
{
	cluster_host->disp_kill_running(job);
}

void disp_fail_queued(int code, const char *msg)
{
	cluster_host->disp_fail_queued(code, msg);
}

bool disp_has_queued(void)
{
	return cluster_host->disp_has_queued();
}

uint64_t disp_job_id(const struct job *job)
{
	return cluster_host->disp_job_id(job);
}

uint32_t disp_job_retries(const struct job *job)
{
	return cluster_host->disp_job_retries(job);
}

uint32_t disp_job_timeout(const struct job *job)
{
	return cluster_host->disp_job_timeout(job);
}

void disp_chunk_part(struct chunk *ck, const struct wmsg_result *res,
		     const struct disp_results_buf *buf)
{
	cluster_host->disp_chunk_part(ck, res, buf);
}

void disp_chunk_done(struct chunk *ck, const struct wmsg_result *res,
		     const struct disp_results_buf *buf)
{
	cluster_host->disp_chunk_done(ck, res, buf);
}

void disp_chunk_lost(struct chunk *ck, int code, const char *msg)
{
	cluster_host->disp_chunk_lost(ck, code, msg);
}

int disp_walk_items(struct mp_cur *c, uint64_t n, const uint8_t **ret_items, size_t *ret_len,
		    const size_t **ret_marks)
{
	return cluster_host->disp_walk_items(c, n, ret_items, ret_len, ret_marks);
}
