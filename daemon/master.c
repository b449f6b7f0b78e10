#include "master.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <mpool/error.h>
#include "config.h"
#include "cluster.h"
#include "conn.h"
#include "disp.h"
#include "forksrv.h"
#include "listen.h"
#include "log.h"
#include "notify.h"
#include "pool.h"
#include "proc.h"
#include "summary.h"

/* STATUS= goes out at most this often (systemctl status is for people). */
#define STATUS_INTERVAL_MS 250

static struct event_base *base;
static enum master_state state = MASTER_RUNNING;
static uint64_t start_ms;
static int listen_fd = -1;
static bool pool_stopped, timed_out;
/* Each of these but SIGPIPE (ignored) reaches signal_cb as an event. */
const int master_signals[] = { SIGTERM, SIGINT, SIGCHLD, SIGHUP, SIGPIPE, 0 };
#define N_EVSIGNALS 4
static struct event *ev_sig[N_EVSIGNALS], *deadline;
/* systemd: both exist only under a service manager that listens. */
static struct event *ev_watchdog, *ev_status;
static bool status_armed, reloading;
static uint64_t status_eval_ms;
static char status_sent[256];

uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

enum master_state master_state(void)
{
	return state;
}

const char *master_state_name(void)
{
	static const char *names[] = { "running", "draining", "terminating" };
	return names[state];
}

uint64_t master_uptime_ms(void)
{
	return now_ms() - start_ms;
}

static void stop_listening(void)
{
	conn_stop_listening();
	listen_close(listen_fd, cfg.socket_path);
	listen_fd = -1;
}

void master_status_changed(void)
{
	uint64_t now, due;

	if (!ev_status || status_armed)
		return;
	now = now_ms();
	due = status_eval_ms + STATUS_INTERVAL_MS;
	status_armed = true;
	timer_add_ms(ev_status, due > now ? due - now : 0);
}

static void status_cb(evutil_socket_t fd, short what, void *arg)
{
	char line[sizeof(status_sent)];

	(void)fd;
	(void)what;
	(void)arg;
	status_armed = false;
	status_eval_ms = now_ms();
	summary_line(line, sizeof(line), reloading && state == MASTER_RUNNING ? "reloading" : NULL);
	if (strcmp(line, status_sent) != 0) {
		memcpy(status_sent, line, sizeof(line));
		notify_status(line);
	}
}

/* READY=1 goes out with the STATUS= of that moment, in one message, so
 * "systemctl status" never shows a line older than the readiness (the
 * rate-limited timer could be up to STATUS_INTERVAL_MS late). */
void master_ready(void)
{
	char line[sizeof(status_sent)];

	if (!notify_enabled())
		return;
	summary_line(line, sizeof(line), NULL);
	memcpy(status_sent, line, sizeof(line));
	notify_ready(line);
}

/* From the loop, so a master stuck anywhere stops the pings and systemd
 * restarts it (WatchdogSec=).  The tick also refreshes STATUS=, in case a
 * change reached no master_status_changed() call. */
static void watchdog_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	notify_watchdog();
	master_status_changed();
}

static int notify_setup(void)
{
	uint64_t usec = notify_watchdog_usec();

	if (!notify_enabled())
		return 0;
	ev_status = evtimer_new(base, status_cb, NULL);
	if (!ev_status)
		return -ENOMEM;
	if (usec) {
		/* Half the interval, as sd_watchdog_enabled(3) advises; not below
		 * 1 ms, so a tiny WATCHDOG_USEC cannot turn the loop into a spin. */
		uint64_t half_ms = usec / 2000 ? usec / 2000 : 1;

		ev_watchdog = event_new(base, -1, EV_PERSIST, watchdog_cb, NULL);
		if (!ev_watchdog || timer_add_ms(ev_watchdog, half_ms) < 0)
			return -ENOMEM;
		notify_watchdog();
	}
	master_status_changed();
	return 0;
}

void master_progress(void)
{
	master_status_changed();
	if (state == MASTER_RUNNING)
		return;
	/* A drain waits for open jobs and for non-daemon processes, as
	 * Python's parent joins those at exit; daemon processes are stopped
	 * with everything else. */
	if (state == MASTER_DRAINING && disp_active() == 0 && !pool_stopped) {
		pool_stopped = true;
		pool_stop();
	}
	if (disp_active() == 0 && pool_live() == 0 && proc_running(state == MASTER_DRAINING) == 0 &&
	    conn_all_flushed())
		event_base_loopbreak(base);
}

void master_drain(const char *why)
{
	if (state != MASTER_RUNNING)
		return;
	state = MASTER_DRAINING;
	notify_stopping();
	master_status_changed();
	log_info("%s: draining %u job(s), then exiting", why, disp_active());
	stop_listening();
	timer_add_ms(deadline, cfg.drain_timeout_ms);
	master_progress();
}

void master_terminate(const char *why)
{
	if (state == MASTER_TERMINATING)
		return;
	if (state == MASTER_RUNNING)
		notify_stopping();
	state = MASTER_TERMINATING;
	master_status_changed();
	log_warn("terminating: %s", why);
	stop_listening();
	pool_kill_all();
	proc_kill_all();
	disp_fail_all(MPOOL_E_TERMINATED, why);
	/* Clients that do not read their last error must not hold us. */
	evtimer_del(deadline);
	timer_add_ms(deadline, 2000);
	master_progress();
}

void master_reload(const char *why)
{
	if (state != MASTER_RUNNING)
		return;
	log_info("%s: replacing every worker after its current chunk", why);
	reloading = true;
	notify_reloading();
	master_status_changed();
	pool_reload();
}

void master_reload_done(unsigned old_left)
{
	if (old_left)
		log_info("reload complete: new work goes to new workers; %u old worker(s) "
			 "still leaving, after their current chunk if they have one", old_left);
	else
		log_info("reload complete: every worker is new");
	reloading = false;
	master_ready();
}

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	if (state == MASTER_DRAINING) {
		log_warn("drain did not finish within %u ms", cfg.drain_timeout_ms);
		timed_out = true;
		master_terminate("the drain timed out");
	} else {
		log_warn("shutdown deadline reached; exiting with %u client(s) unflushed",
			 conn_count());
		event_base_loopbreak(base);
	}
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
	(void)what;
	(void)arg;
	switch (sig) {
	case SIGCHLD:
		pool_reap();
		master_progress();
		break;
	case SIGTERM:
	case SIGINT:
		if (state == MASTER_DRAINING)
			master_terminate("second stop signal during the drain");
		else
			master_drain(sig == SIGTERM ? "SIGTERM" : "SIGINT");
		break;
	case SIGHUP:
		master_reload("SIGHUP");
		break;
	}
}

/* Workers die with their master (PR_SET_PDEATHSIG), but a clean exit also
 * waits for them so none is left behind. */
static void reap_all(void)
{
	forksrv_stop();
	pool_kill_all();
	proc_kill_all();
	while (pool_live() > 0 || proc_running(false) > 0) {
		siginfo_t info;

		/* Wait without reaping: pool_reap() reaps and applies policy. */
		if (waitid(P_ALL, 0, &info, WEXITED | WNOWAIT) < 0 && errno != EINTR)
			break;
		pool_reap();
	}
}

int master_run(void)
{
	start_ms = now_ms();
	signal(SIGPIPE, SIG_IGN);
	base = event_base_new();
	if (!base) {
		log_err("cannot create the event loop");
		return 1;
	}
	if (listen_open(cfg.socket_path, &listen_fd) < 0)
		return 1;
	deadline = evtimer_new(base, deadline_cb, NULL);
	for (int i = 0; i < N_EVSIGNALS; i++) {
		ev_sig[i] = evsignal_new(base, master_signals[i], signal_cb, NULL);
		if (!deadline || !ev_sig[i] || evsignal_add(ev_sig[i], NULL) < 0) {
			log_err("cannot set up signal handling");
			return 1;
		}
	}
	if (notify_setup() < 0) {
		log_err("cannot set up the watchdog and status timers");
		return 1;
	}
	/* Modules are registered (main) before the fork server starts and
	 * before any fork. */
	proc_init(base);
	disp_init(&disp_daemon_ops);
	/* cluster: after the pool, so the node announces what it can run. */
	if (pool_init(base) < 0 || conn_listen(base, listen_fd) < 0 || cluster_start(base) < 0) {
		reap_all();
		stop_listening();
		return 1;
	}
	log_info("mpoold %s serving %s with %u worker(s), max %llu task(s) per child",
		 MPOOL_VERSION, listen_name(), cfg.workers,
		 (unsigned long long)cfg.max_tasks_per_child);

	event_base_dispatch(base);

	conn_write_all_now();
	cluster_stop();
	conn_close_all();
	stop_listening();
	reap_all();
	pool_free();
	proc_free();
	for (int i = 0; i < N_EVSIGNALS; i++)
		event_free(ev_sig[i]);
	event_free(deadline);
	if (ev_watchdog)
		event_free(ev_watchdog);
	if (ev_status)
		event_free(ev_status);
	event_base_free(base);
	/* A stop that was asked for happened: the timeout is worth a warning
	 * and a status of its own (MASTER_EXIT_DRAIN_TIMEOUT), not a failure. */
	if (timed_out) {
		log_warn("exited: the drain timed out and open work was terminated");
		return MASTER_EXIT_DRAIN_TIMEOUT;
	}
	log_info("exited (clean)");
	return 0;
}
