#include "pool.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "chan.h"
#include <mpool/error.h>
#include "mp_rpc.h"
#include "config.h"
#include "log.h"
#include "master.h"
#include "mem.h"
#include "notify.h"
#include "wmsg.h"
#include "worker.h"

enum wstate { W_EMPTY, W_STARTING, W_IDLE, W_BUSY, W_EXITING };
static const char *wstate_names[] = { "empty", "starting", "idle", "busy", "exiting" };

struct worker {
	unsigned slot;
	pid_t pid;                 /* 0 when the slot has no process */
	enum wstate state;
	struct chan *ch;
	uint64_t tasks_done;
	uint64_t seq;
	struct chunk chunk;        /* the chunk in flight, when busy */
	uint64_t started_ms;
	unsigned early_deaths;     /* consecutive deaths before becoming ready */
	bool dying;                /* reaped: take its last results, give no work */
	char cause[128];           /* why the master gave up on it, if it did */
	struct event *respawn;
};

static struct worker *slots;
static unsigned n_slots;
static struct event_base *base;
static bool all_ready_once;
static uint64_t total_tasks, n_started, n_recycled, n_died;

static void worker_frame(void *ctx, const uint8_t *frame, size_t len);
static void worker_closed(void *ctx, int err);
static void worker_drained(void *ctx)
{
	(void)ctx;
}

static const struct chan_ops worker_ops = {
	.frame = worker_frame,
	.closed = worker_closed,
	.drained = worker_drained,
};

/* Forks one worker into an empty slot.  The child goes straight to
 * worker_main() and never comes back here. */
static int spawn(struct worker *w)
{
	struct mp_frame_limits lim = { .max_frame = cfg.max_frame, .max_depth = MP_DEPTH_MAX };
	pid_t master = getpid(), pid;
	int sv[2];

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		return -errno;
	pid = fork();
	if (pid < 0) {
		int e = errno;
		close(sv[0]);
		close(sv[1]);
		return -e;
	}
	if (pid == 0) {
		close(sv[0]);
		worker_main(sv[1], master, cfg.max_tasks_per_child);
	}
	close(sv[1]);
	w->pid = pid;
	w->state = W_STARTING;
	w->tasks_done = 0;
	w->dying = false;
	w->cause[0] = '\0';
	w->started_ms = now_ms();
	w->ch = chan_new(base, sv[0], &lim, &worker_ops, w);
	n_started++;
	return 0;
}

static bool want_workers(void)
{
	return master_state() == MASTER_RUNNING ||
	       (master_state() == MASTER_DRAINING && disp_active() > 0);
}

static void respawn_cb(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;
	int r;

	(void)fd;
	(void)what;
	if (w->pid || !want_workers())
		return;
	r = spawn(w);
	if (r < 0) {
		struct timeval tv = { 1, 0 };

		log_err("cannot start worker in slot %u: %s; retrying in 1 s", w->slot, strerror(-r));
		evtimer_add(w->respawn, &tv);
	}
}

/* Respawn at once after a normal exit; after deaths before readiness, wait
 * 50 ms doubling to 10 s so a broken module cannot cause a fork storm. */
static void schedule_respawn(struct worker *w)
{
	struct timeval tv = { 0, 0 };

	if (w->early_deaths > 0) {
		uint64_t ms = 50ull << (w->early_deaths > 8 ? 8 : w->early_deaths - 1);

		if (ms > 10000)
			ms = 10000;
		tv.tv_sec = (time_t)(ms / 1000);
		tv.tv_usec = (suseconds_t)(ms % 1000) * 1000;
		log_warn("worker slot %u died %u time(s) before ready; next start in %llu ms",
			 w->slot, w->early_deaths, (unsigned long long)ms);
	}
	evtimer_add(w->respawn, &tv);
}

int pool_init(struct event_base *b)
{
	base = b;
	n_slots = cfg.workers;
	slots = xcalloc(n_slots, sizeof(*slots));
	for (unsigned i = 0; i < n_slots; i++) {
		struct worker *w = &slots[i];
		int r;

		w->slot = i;
		w->respawn = evtimer_new(base, respawn_cb, w);
		if (!w->respawn)
			return -ENOMEM;
		r = spawn(w);
		if (r < 0) {
			log_err("cannot start worker %u: %s", i, strerror(-r));
			return r;
		}
	}
	return 0;
}

void pool_free(void)
{
	for (unsigned i = 0; i < n_slots; i++) {
		chan_free(slots[i].ch);
		event_free(slots[i].respawn);
	}
	free(slots);
	slots = NULL;
	n_slots = 0;
}

struct worker *pool_idle(void)
{
	for (unsigned i = 0; i < n_slots; i++)
		if (slots[i].state == W_IDLE)
			return &slots[i];
	return NULL;
}

uint64_t pool_quota_left(const struct worker *w)
{
	if (!cfg.max_tasks_per_child)
		return UINT64_MAX;
	return w->tasks_done >= cfg.max_tasks_per_child ? 0
	       : cfg.max_tasks_per_child - w->tasks_done;
}

void pool_run(struct worker *w, const struct chunk *ck, const char *fn, uint32_t fn_len,
	      const uint8_t *items, size_t items_len)
{
	struct wmsg_run run = {
		.seq = ++w->seq, .fn = fn, .fn_len = fn_len, .first = ck->first,
		.count = ck->count, .items = items, .items_len = items_len,
	};
	msgpack_packer pk;

	chan_packer(w->ch, &pk);
	if (wmsg_pack_run(&pk, &run) < 0) {
		log_err("out of memory sending a chunk to worker %d", (int)w->pid);
		abort();
	}
	chan_flush(w->ch);
	w->chunk = *ck;
	w->state = W_BUSY;
}

/* Gives up on a worker that broke its contract: kill it; its chunk fails
 * with the cause once it is reaped. */
static void worker_fault(struct worker *w, const char *cause)
{
	if (!w->cause[0])
		snprintf(w->cause, sizeof(w->cause), "%s", cause);
	log_err("worker %d %s; killing it", (int)w->pid, cause);
	kill(w->pid, SIGKILL);
	chan_free(w->ch);
	w->ch = NULL;
	if (w->state != W_BUSY)
		w->state = W_EXITING;
}

static void worker_result(struct worker *w, const struct wmsg_result *res)
{
	struct chunk ck = w->chunk;

	if (w->state != W_BUSY || res->seq != w->seq || res->n_results != ck.count ||
	    res->n_errors > ck.count) {
		worker_fault(w, "sent a result for no chunk it was running");
		return;
	}
	w->tasks_done += ck.count;
	total_tasks += ck.count;
	w->chunk.job = NULL;
	w->state = (w->dying || pool_quota_left(w) == 0) ? W_EXITING : W_IDLE;
	disp_chunk_done(&ck, res);
}

static void worker_frame(void *ctx, const uint8_t *frame, size_t len)
{
	struct worker *w = ctx;
	struct wmsg_result res;
	int64_t pid;
	int r = wmsg_parse_from_worker(frame, len, &res, &pid);

	if (r == 1) {
		worker_result(w, &res);
	} else if (r == 2 && w->state == W_STARTING && pid == w->pid) {
		w->state = w->dying ? W_EXITING : W_IDLE;
		w->early_deaths = 0;
		if (!all_ready_once && !pool_busy() && pool_idle()) {
			bool all = true;
			for (unsigned i = 0; i < n_slots; i++)
				all = all && slots[i].state == W_IDLE;
			if (all) {
				all_ready_once = true;
				notify_ready();
			}
		}
		disp_schedule();
	} else {
		worker_fault(w, "sent a malformed message");
	}
}

static void worker_closed(void *ctx, int err)
{
	struct worker *w = ctx;

	chan_free(w->ch);
	w->ch = NULL;
	if (w->dying)
		return;
	if (err < 0) {
		worker_fault(w, err == -EMSGSIZE ? "sent a result larger than --max-frame"
					      : "broke its channel");
		return;
	}
	/* End of stream: a worker leaving at its quota closes after its last
	 * result.  Anyone else closing while we expect more is gone for good. */
	if (w->state == W_BUSY || w->state == W_STARTING || w->state == W_IDLE)
		worker_fault(w, "closed its channel");
}

static void describe_exit(int status, char *buf, size_t n)
{
	if (WIFSIGNALED(status))
		snprintf(buf, n, "killed by SIG%s%s", sigabbrev_np(WTERMSIG(status))
			 ? sigabbrev_np(WTERMSIG(status)) : "?",
			 WCOREDUMP(status) ? " (core dumped)" : "");
	else if (WEXITSTATUS(status) == WORKER_EXIT_INIT)
		snprintf(buf, n, "exited with status %d (module init failed)", WEXITSTATUS(status));
	else
		snprintf(buf, n, "exited with status %d", WEXITSTATUS(status));
}

static void worker_gone(struct worker *w, int status)
{
	char how[96], msg[256];
	bool clean = WIFEXITED(status) && WEXITSTATUS(status) == WORKER_EXIT_OK;
	bool terminating = master_state() == MASTER_TERMINATING;
	pid_t pid = w->pid;
	enum wstate st;

	/* It may have written results and exited before we read them: take
	 * them first, so nothing it finished is reported lost. */
	w->dying = true;
	if (w->ch)
		chan_drain_input(w->ch);
	chan_free(w->ch);
	w->ch = NULL;
	st = w->state;
	w->pid = 0;
	w->state = W_EMPTY;

	describe_exit(status, how, sizeof(how));
	if (st == W_BUSY) {
		struct chunk ck = w->chunk;

		snprintf(msg, sizeof(msg), "worker %d %s", (int)pid, w->cause[0] ? w->cause : how);
		if (!terminating) {
			n_died++;
			log_warn("%s while running job %llu (items %llu..%llu)", msg,
				 (unsigned long long)disp_job_id(ck.job),
				 (unsigned long long)ck.first,
				 (unsigned long long)(ck.first + ck.count - 1));
		}
		w->chunk.job = NULL;
		disp_chunk_failed(&ck, MPOOL_E_WORKER, msg);
	} else if (clean && st == W_EXITING && pool_quota_left(w) == 0) {
		n_recycled++;
		log_debug("worker %d recycled after %llu tasks", (int)pid,
			  (unsigned long long)w->tasks_done);
	} else if (!terminating && !(clean && master_state() == MASTER_DRAINING)) {
		n_died++;
		if (st == W_STARTING)
			w->early_deaths++;
		log_warn("worker %d %s", (int)pid, w->cause[0] ? w->cause : how);
	}
	if (want_workers())
		schedule_respawn(w);
	master_progress();
}

void pool_reap(void)
{
	int status;
	pid_t pid;

	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		for (unsigned i = 0; i < n_slots; i++) {
			if (slots[i].pid == pid) {
				worker_gone(&slots[i], status);
				break;
			}
		}
	}
	disp_schedule();
}

void pool_stop(void)
{
	for (unsigned i = 0; i < n_slots; i++) {
		struct worker *w = &slots[i];

		evtimer_del(w->respawn);
		if (w->ch && w->state != W_BUSY) {
			w->dying = true;
			w->state = W_EXITING;
			chan_free(w->ch);
			w->ch = NULL;
		}
	}
}

void pool_kill_all(void)
{
	for (unsigned i = 0; i < n_slots; i++) {
		evtimer_del(slots[i].respawn);
		if (slots[i].pid) {
			slots[i].dying = true;
			kill(slots[i].pid, SIGKILL);
		}
	}
}

unsigned pool_live(void)
{
	unsigned n = 0;
	for (unsigned i = 0; i < n_slots; i++)
		n += slots[i].pid != 0;
	return n;
}

bool pool_all_ready(void)
{
	return all_ready_once;
}

unsigned pool_busy(void)
{
	unsigned n = 0;
	for (unsigned i = 0; i < n_slots; i++)
		n += slots[i].state == W_BUSY;
	return n;
}

void pool_pack_workers(msgpack_packer *pk)
{
	unsigned n = 0;
	uint64_t now = now_ms();

	for (unsigned i = 0; i < n_slots; i++)
		n += slots[i].pid != 0;
	msgpack_pack_array(pk, n);
	for (unsigned i = 0; i < n_slots; i++) {
		const struct worker *w = &slots[i];

		if (!w->pid)
			continue;
		msgpack_pack_map(pk, 5);
		mp_pack_cstr(pk, "pid");
		msgpack_pack_int64(pk, w->pid);
		mp_pack_cstr(pk, "state");
		mp_pack_cstr(pk, wstate_names[w->state]);
		mp_pack_cstr(pk, "tasks_done");
		msgpack_pack_uint64(pk, w->tasks_done);
		mp_pack_cstr(pk, "job");
		if (w->state == W_BUSY && w->chunk.job)
			msgpack_pack_uint64(pk, disp_job_id(w->chunk.job));
		else
			msgpack_pack_nil(pk);
		mp_pack_cstr(pk, "age_ms");
		msgpack_pack_uint64(pk, now - w->started_ms);
	}
}

uint64_t pool_tasks_done(void) { return total_tasks; }
uint64_t pool_started(void) { return n_started; }
uint64_t pool_recycled(void) { return n_recycled; }
uint64_t pool_died(void) { return n_died; }
