/* forksrv: the life of a fork server, the master's side: start, hello,
 * retirement, loss, and the guard against one that stops reporting. */
#include "forksrv_int.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/event.h>

#include "config.h"
#include "fork.h"
#include "libexec.h"
#include "log.h"
#include "master.h"
#include "mem.h"
#include "mp_rpc.h"
#include "registry.h"
#include "status.h"

struct forksrv_srv *forksrv_cur;
bool forksrv_broken;
/* The retired ones, whose workers still run. */
static struct forksrv_srv **old;
static unsigned n_old, old_cap;

static struct event_base *z_base;
static forksrv_started_fn *z_started;
/* forksrv_lost_soon's event; the deadline of the hello. */
static struct event *z_lost, *z_hello_timer;
static const char *z_lost_why;

int forksrv_recv_rep(int fd, struct forksrv_rep *rep, int *ret_fd, int flags)
{
	char cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = { rep, sizeof(*rep) };
	struct msghdr mh = {
		.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf),
	};
	struct cmsghdr *c;
	ssize_t n;

	do
		n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC | flags);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return errno == EWOULDBLOCK ? -EAGAIN : -errno;
	*ret_fd = -1;
	for (c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS &&
		    c->cmsg_len == CMSG_LEN(sizeof(int)))
			memcpy(ret_fd, CMSG_DATA(c), sizeof(int));
	if (n != sizeof(*rep) || (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
		if (*ret_fd >= 0)
			close(*ret_fd);
		return n == 0 ? -ECONNRESET : -EPROTO;
	}
	return 0;
}

/* The hello's second message: the names of the functions the load hooks
 * returned.  0, -EAGAIN when it has not arrived, or -errno. */
static int recv_names(int fd, size_t len)
{
	char *buf = xmalloc(len);
	ssize_t n;
	int r = 0;

	do
		n = recv(fd, buf, len, MSG_TRUNC | MSG_DONTWAIT);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		r = errno == EWOULDBLOCK ? -EAGAIN : -errno;
	else if (n == 0)
		r = -ECONNRESET;
	else if ((size_t)n != len)
		r = -EPROTO;
	else
		log_debug("the modules' load hooks gave %u functions",
			  reg_set_loaded_names(buf, len));
	free(buf);
	return r;
}

/* 0 once the hello and names are in (then s->ready), -EAGAIN while some
 * has not arrived, -EINVAL when a module did not load, -ECONNRESET when it
 * closed its channel, another -errno when it broke the protocol.  Nothing
 * else may come first: it is sent no request before. */
static int take_hello(struct forksrv_srv *s)
{
	struct forksrv_rep rep;
	int r, extra;

	if (!s->hello) {
		r = forksrv_recv_rep(s->fd, &rep, &extra, MSG_DONTWAIT);
		if (r < 0)
			return r;
		if (extra >= 0) {
			close(extra);
			return -EPROTO;
		}
		if (rep.kind != FORKSRV_HELLO || rep.err > 0 || rep.status < 0 ||
		    rep.status > FORKSRV_NAMES_MAX)
			return -EPROTO;
		if (rep.err < 0)
			return rep.err;
		s->hello = true;
		s->names_len = (size_t)rep.status;
	}
	if (s->names_len > 0) {
		r = recv_names(s->fd, s->names_len);
		if (r < 0)
			return r;
	} else {
		reg_set_loaded_names(NULL, 0);
	}
	s->ready = true;
	return 0;
}

void forksrv_lost_soon(const char *why)
{
	z_lost_why = why;
	event_active(z_lost, EV_TIMEOUT, 0);
}

static void srv_close(struct forksrv_srv *s)
{
	if (s->read)
		event_free(s->read);
	s->read = NULL;
	if (s->fd >= 0)
		close(s->fd);
	s->fd = -1;
}

/* Kills and reaps s, delivers what it had sent, closes its channel; its
 * workers become ours to reap.  Its wait status, or -1 if unknown. */
static int srv_kill(struct forksrv_srv *s)
{
	if (s->pid) {
		kill(s->pid, SIGKILL);
		while (waitpid(s->pid, &s->status, 0) < 0 && errno == EINTR)
			;
		s->pid = 0;
	}
	if (s->fd >= 0)
		forksrv_take(s);
	srv_close(s);
	return s->status;
}

/* Kills (unless reaped), delivers and forgets a retired one. */
static void old_remove(unsigned i)
{
	srv_kill(old[i]);
	free(old[i]);
	old[i] = old[--n_old];
}

/* Its wait status, as srv_kill(). */
static int shut_cur(void)
{
	int status;

	if (!forksrv_cur)
		return -1;
	status = srv_kill(forksrv_cur);
	free(forksrv_cur);
	forksrv_cur = NULL;
	return status;
}

static void forget_timers(void)
{
	if (z_hello_timer)
		evtimer_del(z_hello_timer);
	if (z_lost)
		event_del(z_lost);
	z_lost_why = NULL;
}

/* After the fork servers are gone: requests are cancelled, and the next
 * start is tried even after a failed one. */
static void forget_all(void)
{
	forksrv_fail_pending(-ECANCELED);
	forget_timers();
	forksrv_broken = false;
}

/* Until the next reload workers fork from the master, without the
 * functions only a fork server knows. */
static void go_broken(void)
{
	forksrv_broken = true;
	reg_set_loaded_names(NULL, 0);
}

/* "exited with status 1", "killed by signal 9". */
static void describe_status(int status, char *buf, size_t size)
{
	if (WIFSIGNALED(status))
		snprintf(buf, size, "killed by signal %d", WTERMSIG(status));
	else
		snprintf(buf, size, "exited with status %d", WEXITSTATUS(status));
}

/* forksrv_cur died, broke the protocol, failed to load a module or took
 * longer than --fork-server-timeout.  It was sent nothing, so every
 * request waits still: each forks from the master now. */
static void start_failed(int err, const char *why)
{
	char how[64];
	pid_t pid = forksrv_cur->pid;
	int status = shut_cur();

	/* Of its end, what its wait status says beats a closed channel. */
	if (err == -ECONNRESET && status >= 0) {
		describe_status(status, how, sizeof(how));
		why = how;
	}
	log_warn("the fork server %d did not start (%s): workers fork from the master", (int)pid,
		 why);
	forget_timers();
	go_broken();
	/* Before the forks: a reload that waited makes them its new
	 * generation. */
	z_started(err);
	forksrv_fail_pending(-ENOTCONN);
}

void forksrv_retire(void)
{
	/* One still loading was sent nothing and has no workers. */
	if (forksrv_cur && !forksrv_cur->ready) {
		log_info("reload: the fork server %d had not loaded the modules yet; a new one "
			 "starts", (int)forksrv_cur->pid);
		shut_cur();
	}
	/* It forks what it was sent before it sees the end of the requests:
	 * let it answer all, so no worker it made goes unreported. */
	if (forksrv_cur && forksrv_cur->fd >= 0 && forksrv_cur->pid &&
	    shutdown(forksrv_cur->fd, SHUT_WR) == 0) {
		uint64_t end = now_ms() + FORKSRV_REPLY_MS;

		while (forksrv_sent() > 0) {
			struct pollfd p = { forksrv_cur->fd, POLLIN, 0 };
			uint64_t now = now_ms();

			if (now >= end || poll(&p, 1, (int)(end - now)) == 0 || forksrv_take(forksrv_cur) < 0)
				break;
		}
	}
	if (forksrv_cur && (forksrv_sent() > 0 || forksrv_cur->fd < 0 || !forksrv_cur->pid)) {
		log_warn("fork server %d did not answer its last requests; killing it",
			 (int)forksrv_cur->pid);
		shut_cur();
	}
	if (forksrv_cur) {
		/* It serves its workers out and leaves with the last. */
		if (n_old == old_cap) {
			old_cap = old_cap ? 2 * old_cap : 4;
			old = xrealloc(old, old_cap * sizeof(*old));
		}
		old[n_old++] = forksrv_cur;
		forksrv_cur = NULL;
	}
	forget_all();
}

void forksrv_stop(void)
{
	shut_cur();
	while (n_old > 0) {
		old_remove(0);
	}
	forget_all();
}

void forksrv_lost(const char *why)
{
	if (!forksrv_cur->ready) {
		start_failed(-ECONNRESET, why);
		return;
	}
	log_warn("fork server lost (%s); its workers die with it", why);
	shut_cur();
	forksrv_resend();
}

static void started(void)
{
	evtimer_del(z_hello_timer);
	log_debug("fork server %d started in %llu ms", (int)forksrv_cur->pid,
		  (unsigned long long)(now_ms() - forksrv_cur->started_ms));
	forksrv_pump();
	z_started(0);
}

static void read_cb(evutil_socket_t fd, short what, void *arg)
{
	struct forksrv_srv *s = arg;
	int r;

	(void)fd;
	(void)what;
	if (s == forksrv_cur && !s->ready) {
		r = take_hello(s);
		if (r == -EAGAIN)
			return;
		if (r < 0) {
			start_failed(r, r == -EINVAL ? "a module did not load; it said why above" :
				     r == -ECONNRESET ? "it closed its channel" :
				     r == -EPROTO ? "it sent nonsense before its hello" : strerror(-r));
			return;
		}
		started();
		return;
	}
	r = forksrv_take(s);
	if (s == forksrv_cur) {
		if (r < 0) {
			forksrv_lost(r == -ECONNRESET ? "it closed its channel" : strerror(-r));
			return;
		}
		forksrv_pump();
		forksrv_arm_timer();
	} else if (r < 0) {
		/* A retired one closes its channel as it leaves; freed when reaped. */
		srv_close(s);
	}
}

static void hello_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	char why[96];

	(void)fd;
	(void)what;
	(void)arg;
	if (!forksrv_cur || forksrv_cur->ready)
		return;
	snprintf(why, sizeof(why), "it had not loaded the modules after %u ms, "
		 "fork-server-timeout", cfg.fork_server_timeout_ms);
	start_failed(-ETIMEDOUT, why);
}

static void lost_cb(evutil_socket_t fd, short what, void *arg)
{
	const char *why = z_lost_why;

	(void)fd;
	(void)what;
	(void)arg;
	z_lost_why = NULL;
	if (forksrv_cur)
		forksrv_lost(why ? why : "it died");
}

int forksrv_init(struct event_base *base, forksrv_forked_fn *forked, forksrv_exited_fn *exited,
		forksrv_started_fn *started, unsigned max_pending)
{
	int r;

	/* Orphaned workers are reparented to us, not to init, so that we
	 * learn how they ended. */
	if (prctl(PR_SET_CHILD_SUBREAPER, 1) < 0)
		return -errno;
	z_base = base;
	z_started = started;
	r = forksrv_req_init(base, forked, exited, max_pending);
	z_lost = event_new(base, -1, 0, lost_cb, NULL);
	z_hello_timer = evtimer_new(base, hello_timer_cb, NULL);
	return r == 0 && z_lost && z_hello_timer ? 0 : -ENOMEM;
}

void forksrv_free(void)
{
	forksrv_stop();
	if (z_lost)
		event_free(z_lost);
	if (z_hello_timer)
		event_free(z_hello_timer);
	z_lost = z_hello_timer = NULL;
	forksrv_req_free();
	free(old);
	old = NULL;
	old_cap = 0;
}

int forksrv_start(void)
{
	char path[PATH_MAX], level[16], frame[32];
	char *argv[5 + 2 * CONFIG_MAX_MODULES], version[] = MPOOL_VERSION;
	unsigned n = 0;
	pid_t pid;
	int sv[2], r;

	if (forksrv_cur)
		return 0;
	if (forksrv_broken)
		return -ENOTCONN;
	r = libexec_path(FORKSRV_NAME, MPOOL_FORKSRV_PATH, X_OK, path, sizeof(path));
	if (r < 0) {
		log_warn("no fork server at %s (%s): workers fork from the master", path,
			 strerror(-r));
		go_broken();
		return r;
	}
	snprintf(level, sizeof(level), "%d", cfg.log_level);
	snprintf(frame, sizeof(frame), "%zu", cfg.max_frame);
	argv[n++] = path;
	argv[n++] = version;
	argv[n++] = level;
	argv[n++] = frame;
	for (unsigned i = 0; i < cfg.n_modules; i++) {
		argv[n++] = cfg.modules[i].path;
		argv[n++] = cfg.modules[i].initargs_json ? cfg.modules[i].initargs_json : "-";
	}
	argv[n] = NULL;
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
		return -errno;
	r = fork_exec(path, argv, sv[1], &pid);
	close(sv[1]);
	if (r < 0) {
		/* Transient (a process limit, memory): try again next time. */
		close(sv[0]);
		log_debug("cannot start the fork server: %s", strerror(-r));
		return r;
	}
	forksrv_cur = xcalloc(1, sizeof(*forksrv_cur));
	forksrv_cur->pid = pid;
	forksrv_cur->fd = sv[0];
	forksrv_cur->status = -1;
	forksrv_cur->started_ms = now_ms();
	/* Until its hello a submit is judged by the names known before
	 * (reload), or, before the first list, on trust (registry.h). */
	reg_await_loaded_names();
	forksrv_cur->read = event_new(z_base, forksrv_cur->fd, EV_READ | EV_PERSIST, read_cb,
				      forksrv_cur);
	if (!forksrv_cur->read || event_add(forksrv_cur->read, NULL) < 0 ||
	    timer_add_ms(z_hello_timer, cfg.fork_server_timeout_ms) < 0) {
		log_err("the fork server %d cannot be watched: workers fork from the master",
			(int)pid);
		shut_cur();
		go_broken();
		return -ENOMEM;
	}
	log_debug("fork server %d loading the modules", (int)pid);
	return 0;
}

bool forksrv_loading(void)
{
	return forksrv_cur && !forksrv_cur->ready;
}

void forksrv_collect(void)
{
	for (unsigned i = 0; i < n_old; i++)
		if (old[i]->fd >= 0 && forksrv_take(old[i]) < 0)
			srv_close(old[i]);
	if (forksrv_cur && forksrv_cur->fd >= 0 && forksrv_take(forksrv_cur) < 0)
		forksrv_lost_soon("it closed its channel");
}

/* pid's parent, from /proc; 0 when it is unknown. */
static pid_t parent_of(pid_t pid)
{
	char path[64], line[512], *paren;
	int ppid = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	f = fopen(path, "re");
	if (!f)
		return 0;
	/* The name may hold anything, even ')': the fields follow the last. */
	if (!fgets(line, sizeof(line), f) || !(paren = strrchr(line, ')')) ||
	    sscanf(paren + 1, " %*c %d", &ppid) != 1)
		ppid = 0;
	fclose(f);
	return (pid_t)ppid;
}

void forksrv_overdue(pid_t worker)
{
	pid_t ppid;

	/* Reported, maybe, and not read yet. */
	forksrv_collect();
	ppid = parent_of(worker);
	if (ppid <= 0)
		return;
	if (forksrv_cur && forksrv_cur->pid == ppid) {
		log_warn("fork server %d has not reported the death of worker %d; killing it",
			 (int)ppid, (int)worker);
		kill(ppid, SIGKILL);
		forksrv_lost_soon("it did not report a worker's death");
		return;
	}
	for (unsigned i = 0; i < n_old; i++) {
		if (old[i]->pid == ppid) {
			log_warn("retired fork server %d has not reported the death of worker %d; "
				 "killing it", (int)ppid, (int)worker);
			old_remove(i);
			return;
		}
	}
}

bool forksrv_reaped(pid_t pid, int status)
{
	char how[64];

	describe_status(status, how, sizeof(how));
	if (forksrv_cur && forksrv_cur->pid == pid) {
		forksrv_cur->pid = 0;
		forksrv_cur->status = status;
		/* One not ready yet: said once, with the rest, by start_failed(). */
		if (forksrv_cur->ready)
			log_warn("fork server %d %s; its workers die with it", (int)pid, how);
		/* What it sent before it died is still in the channel. */
		forksrv_lost_soon("it died");
		return true;
	}
	for (unsigned i = 0; i < n_old; i++) {
		if (old[i]->pid != pid)
			continue;
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
			log_warn("retired fork server %d %s; its workers die with it", (int)pid, how);
		old[i]->pid = 0;
		old_remove(i);
		return true;
	}
	return false;
}

void forksrv_pack_status(msgpack_packer *pk)
{
	if (!forksrv_cur || forksrv_cur->fd < 0 || forksrv_cur->pid == 0) {
		msgpack_pack_nil(pk);
		return;
	}
	msgpack_pack_map(pk, 2);
	status_kv(pk, "pid", (uint64_t)forksrv_cur->pid);
	mp_pack_cstr(pk, "state");
	mp_pack_cstr(pk, forksrv_cur->ready ? "ready" : "loading");
}
