/* cluster_load: cluster.h's calls, forwarded to the cluster plugin once
 * cluster_config_check has opened it; without cluster-url each does what
 * a cluster that is off does. */
#include "cluster.h"

#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cluster_plugin.h"
#include "config.h"
#include "disp.h"
#include "libexec.h"
#include "log.h"
#include "master.h"
#include "mp_rpc.h"
#include "pool.h"
#include "registry.h"

/* The one inlet "client": a handle the daemon's ops recognise. */
static char inlet_tag;
struct conn *const cluster_inlet_conn = (struct conn *)&inlet_tag;

/* NULL: no cluster-url, and no plugin. */
static const struct cluster_plugin *plug;

static bool cluster_enabled(void)
{
	return cfg.cluster_url[0] != '\0';
}

static const struct cluster_host host = {
	.cfg = &cfg,
	.inlet_conn = (struct conn *)&inlet_tag,
	.read_user_file = cluster_read_user_file,
	.log_vmsg = log_vmsg,
	.now_ms = now_ms,
	.master_state = master_state,
	.master_status_changed = master_status_changed,
	.pool_busy = pool_busy,
	.pool_tasks_done = pool_tasks_done,
	.reg_lookup = reg_lookup,
	.reg_each_fn = reg_each_fn,
	.disp_submit = disp_submit,
	.disp_schedule = disp_schedule,
	.disp_cancel = disp_cancel,
	.disp_kill_running = disp_kill_running,
	.disp_fail_queued = disp_fail_queued,
	.disp_has_queued = disp_has_queued,
	.disp_job_id = disp_job_id,
	.disp_job_retries = disp_job_retries,
	.disp_job_timeout = disp_job_timeout,
	.disp_chunk_part = disp_chunk_part,
	.disp_chunk_done = disp_chunk_done,
	.disp_chunk_lost = disp_chunk_lost,
	.disp_walk_items = disp_walk_items,
};

int cluster_plugin_load(char *why, size_t n)
{
	static const size_t sizes[CLUSTER_PLUGIN_N_SIZES] = CLUSTER_PLUGIN_SIZES;
	const struct cluster_plugin *p;
	char path[PATH_MAX];
	void *h;

	if (plug || !cluster_enabled())
		return 0;
	/* A missing file is dlopen's to report, with the path. */
	libexec_path(CLUSTER_PLUGIN_NAME, MPOOL_CLUSTER_PLUGIN_PATH, F_OK, path, sizeof(path));
	/* Never closed: its threads and the loop's events live as long as
	 * mpoold. */
	h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	p = h ? dlsym(h, CLUSTER_PLUGIN_SYM) : NULL;
	if (!p) {
		snprintf(why, n, "cluster-url is set but the cluster plugin %s cannot be loaded: %s",
			 path, dlerror());
		if (h)
			dlclose(h);
		return -1;
	}
	if (p->abi != CLUSTER_PLUGIN_ABI || !p->version || strcmp(p->version, MPOOL_VERSION) != 0 ||
	    memcmp(p->sizes, sizes, sizeof(sizes)) != 0) {
		snprintf(why, n, "cluster-url is set but the cluster plugin %s cannot be loaded: it is "
			 "not from this build of mpoold %s (plugin ABI %u, version %s)", path,
			 MPOOL_VERSION, p->abi, p->abi == CLUSTER_PLUGIN_ABI && p->version ?
			 p->version : "unknown");
		dlclose(h);
		return -1;
	}
	p->attach(&host);
	plug = p;
	return 0;
}

int cluster_start(struct event_base *base)
{
	return plug ? plug->start(base) : 0;
}

void cluster_stop(void)
{
	if (plug)
		plug->stop();
}

bool cluster_share(const struct job_spec *spec)
{
	if (!cluster_enabled())
		return false;
	if (cfg.workers == 0)
		return true;
	if (spec->spread)
		return spec->spread > 0;
	return cfg.cluster_spread == CONFIG_SPREAD_ALL ||
	       (cfg.cluster_spread == CONFIG_SPREAD_MAPS && spec->is_map);
}

int cluster_check_fn(const char *fn, size_t len)
{
	if (plug)
		return plug->check_fn(fn, len);
	/* The cluster's answer while it is not up. */
	return reg_lookup(fn, len) && cfg.workers > 0 ? 0 : -EAGAIN;
}

bool cluster_outlet_room(void)
{
	return plug && plug->outlet_room();
}

void cluster_outlet_run(const struct chunk *ck, const char *fn, uint32_t fn_len)
{
	if (!plug) {
		/* Only after cluster_outlet_room said yes. */
		log_err("cluster: a chunk for the outlet without a cluster");
		abort();
	}
	plug->outlet_run(ck, fn, fn_len);
}

unsigned cluster_outlet_workers(void)
{
	return plug ? plug->outlet_workers() : 0;
}

void cluster_kill_job(const struct job *job)
{
	if (plug)
		plug->kill_job(job);
}

void cluster_job_ended(const struct job *job)
{
	if (plug)
		plug->job_ended(job);
}

/* The inlet's calls come only for its own jobs, which only a plugin makes. */
void cluster_send_chunk(uint64_t msgid, uint64_t first, const uint8_t *results, size_t rlen,
			const uint8_t *errors, size_t elen, uint8_t *owned)
{
	if (plug)
		plug->send_chunk(msgid, first, results, rlen, errors, elen, owned);
	else
		free(owned);
}

void cluster_map_done(uint64_t msgid)
{
	if (plug)
		plug->map_done(msgid);
}

void cluster_job_failed(uint64_t msgid, int code, const char *msg)
{
	if (plug)
		plug->job_failed(msgid, code, msg);
}

void cluster_inlet_job_ended(uint64_t msgid)
{
	if (plug)
		plug->inlet_job_ended(msgid);
}

void cluster_pack_status(msgpack_packer *pk)
{
	if (plug) {
		plug->pack_status(pk);
		return;
	}
	msgpack_pack_map(pk, 1);
	mp_pack_cstr(pk, "broker");
	mp_pack_cstr(pk, "off");
}
