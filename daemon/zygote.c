#include "zygote.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/event.h>

#include "config.h"
#include "fork.h"
#include "log.h"
#include "master.h"
#include "mem.h"
#include "mp_rpc.h"

/* A zygote that has not loaded the modules or answered a fork by then is
 * taken for hung: the master must not wait on it for long. */
#define ZYGOTE_START_MS 5000
#define ZYGOTE_REPLY_MS 2000

static pid_t z_pid;          /* 0: none, or reaped already */
static int z_fd = -1;
/* It could not start for a reason that does not go away by itself (no
 * binary, a module that does not load): workers fork from the master until
 * the next reload. */
static bool z_broken;

static struct event_base *z_base;
static zygote_forked_fn *z_forked;
/* Readable z_fd; the deadline of the oldest answer due; a zygote found
 * lost where answering would re-enter the caller (lost_soon). */
static struct event *z_read, *z_timer, *z_lost;
static const char *z_lost_why;

/* Requests not answered, oldest first: the zygote answers in order.  The
 * first pend_sent were sent to the running zygote; the rest wait for room
 * in the channel (it holds a few hundred requests: --workers may ask for
 * more at once, at start or reload). */
struct pending {
	void *token;
	uint64_t quota;
	bool resent;              /* a zygote was lost with it once already */
};
static struct pending *pend;
static unsigned pend_cap, pend_head, pend_n, pend_sent;

/* Beside the running mpoold first (a build tree), then where it installs. */
static int find_binary(char *buf, size_t size)
{
	char self[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	char *slash;

	if (n > 0) {
		self[n] = '\0';
		slash = strrchr(self, '/');
		if (slash) {
			*slash = '\0';
			if ((size_t)snprintf(buf, size, "%s/%s", self, ZYGOTE_NAME) < size &&
			    access(buf, X_OK) == 0)
				return 0;
		}
	}
	snprintf(buf, size, "%s", MPOOL_ZYGOTE_PATH);
	return access(buf, X_OK) == 0 ? 0 : -errno;
}

/* One message, and the descriptor that came with it (-1 if none): 0;
 * -EAGAIN when none is waiting and flags has MSG_DONTWAIT; -ECONNRESET at
 * the end of the stream. */
static int recv_rep(struct zygote_rep *rep, int *ret_fd, int flags)
{
	char cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = { rep, sizeof(*rep) };
	struct msghdr mh = {
		.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf),
	};
	struct cmsghdr *c;
	ssize_t n;

	do
		n = recvmsg(z_fd, &mh, MSG_CMSG_CLOEXEC | flags);
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

/* The zygote's first message, within ZYGOTE_START_MS. */
static int recv_hello(struct zygote_rep *rep, int *ret_fd)
{
	struct pollfd p = { z_fd, POLLIN, 0 };
	int r;

	do
		r = poll(&p, 1, ZYGOTE_START_MS);
	while (r < 0 && errno == EINTR);
	if (r == 0)
		return -ETIMEDOUT;
	if (r < 0)
		return -errno;
	return recv_rep(rep, ret_fd, 0);
}

static void pend_push(struct pending p)
{
	pend[(pend_head + pend_n) % pend_cap] = p;
	pend_n++;
}

static struct pending pend_pop(void)
{
	struct pending p = pend[pend_head];

	pend_head = (pend_head + 1) % pend_cap;
	pend_n--;
	return p;
}

/* 0, -EAGAIN when the channel is full, or -errno. */
static int send_req(uint64_t quota)
{
	struct zygote_req req = { .quota = quota };

	if (send(z_fd, &req, sizeof(req), MSG_NOSIGNAL | MSG_DONTWAIT) != (ssize_t)sizeof(req))
		return errno == EWOULDBLOCK ? -EAGAIN : -errno;
	return 0;
}

/* While answers are due, the oldest must come within ZYGOTE_REPLY_MS of
 * the last progress. */
static void arm_timer(void)
{
	struct timeval tv = { ZYGOTE_REPLY_MS / 1000, (ZYGOTE_REPLY_MS % 1000) * 1000 };

	if (pend_sent > 0)
		evtimer_add(z_timer, &tv);
	else
		evtimer_del(z_timer);
}

/* lost() answers requests, which must not happen inside the call that made
 * one (or inside the reap that noticed): an event runs it at once. */
static void lost_soon(const char *why)
{
	z_lost_why = why;
	event_active(z_lost, EV_TIMEOUT, 0);
}

/* Sends what waits, as far as the channel takes it; the rest goes when
 * answers have made room (read_cb). */
static void pump(void)
{
	bool was_idle = pend_sent == 0;

	while (z_fd >= 0 && pend_sent < pend_n) {
		int r = send_req(pend[(pend_head + pend_sent) % pend_cap].quota);

		if (r == -EAGAIN)
			break;
		if (r < 0) {
			lost_soon("it does not take requests");   /* dead, not reaped yet */
			break;
		}
		pend_sent++;
	}
	if (was_idle && pend_sent > 0)
		arm_timer();
}

/* Every answer the zygote has sent and we have not read: 0 when none is
 * left waiting, -errno when the channel broke. */
static int take_answers(void)
{
	struct zygote_rep rep;
	int fd, r;

	while (pend_sent > 0) {
		struct pending p;

		r = recv_rep(&rep, &fd, MSG_DONTWAIT);
		if (r == -EAGAIN)
			return 0;
		if (r == 0 && rep.err == 0 && (fd < 0 || rep.pid <= 0)) {
			if (fd >= 0)
				close(fd);
			r = -EPROTO;
		}
		if (r == -EPROTO) {
			/* An answer was taken, unreadable: it was the oldest
			 * request's, which fails, so that the next answer
			 * still goes to its own request. */
			p = pend_pop();
			pend_sent--;
			z_forked(p.token, -EPROTO, 0, -1);
			return r;
		}
		if (r < 0)
			return r;
		p = pend_pop();
		pend_sent--;
		if (rep.err < 0) {
			if (fd >= 0)
				close(fd);
			z_forked(p.token, rep.err, 0, -1);      /* its clone failed */
		} else {
			z_forked(p.token, 0, rep.pid, fd);
		}
	}
	return 0;
}

/* Kills and reaps the zygote and closes its channel, delivering the
 * answers it managed to send; requests not answered stay pending. */
static void shut(void)
{
	if (z_pid) {
		int status;

		kill(z_pid, SIGKILL);
		while (waitpid(z_pid, &status, 0) < 0 && errno == EINTR)
			;
		z_pid = 0;
	}
	if (z_fd >= 0)
		take_answers();
	if (z_read)
		event_free(z_read);
	z_read = NULL;
	if (z_fd >= 0)
		close(z_fd);
	z_fd = -1;
}

static void fail_pending(int err)
{
	pend_sent = 0;
	while (pend_n > 0) {
		struct pending p = pend_pop();

		z_forked(p.token, err, 0, -1);
	}
}

void zygote_stop(void)
{
	/* What it was sent it may be forking now: let it answer all of it
	 * (it leaves at the end of the requests), so that no worker it made
	 * goes unreported.  Bounded like any answer. */
	if (z_fd >= 0 && z_pid && pend_sent > 0 && shutdown(z_fd, SHUT_WR) == 0) {
		uint64_t end = now_ms() + ZYGOTE_REPLY_MS;

		while (pend_sent > 0) {
			struct pollfd p = { z_fd, POLLIN, 0 };
			uint64_t now = now_ms();

			if (now >= end || poll(&p, 1, (int)(end - now)) == 0 || take_answers() < 0)
				break;
		}
	}
	shut();
	fail_pending(-ECANCELED);
	if (z_timer)
		evtimer_del(z_timer);
	if (z_lost)
		event_del(z_lost);
	z_lost_why = NULL;
	z_broken = false;
}

/* The zygote died, broke its channel or stopped answering: what it had not
 * answered goes to a new one; a request lost with a zygote twice fails. */
static void lost(const char *why)
{
	unsigned n, sent;
	int r;

	log_warn("fork server lost (%s); starting a new one", why);
	shut();
	/* shut() delivered what it had answered. */
	sent = pend_sent;
	pend_sent = 0;
	r = zygote_start();
	n = pend_n;
	for (unsigned i = 0; i < n; i++) {
		struct pending p = pend_pop();

		if (r == 0 && !(i < sent && p.resent)) {
			p.resent = p.resent || i < sent;
			pend_push(p);
		} else {
			z_forked(p.token, r == 0 ? -EIO : z_broken ? -ENOTCONN : r, 0, -1);
		}
	}
	pump();
	arm_timer();
}

static void read_cb(evutil_socket_t fd, short what, void *arg)
{
	int r;

	(void)fd;
	(void)what;
	(void)arg;
	r = take_answers();
	if (r < 0) {
		lost(r == -ECONNRESET ? "it closed its channel" : strerror(-r));
		return;
	}
	if (pend_sent == 0) {
		/* Nothing due: the only message can be the end of the
		 * stream. */
		struct zygote_rep rep;
		int fd2;

		r = recv_rep(&rep, &fd2, MSG_DONTWAIT);
		if (r == 0 && fd2 >= 0)
			close(fd2);
		if (r != -EAGAIN) {
			const char *why = r == 0 ? "it sent an answer to nothing" : "it closed its channel";

			if (pend_n > 0) {
				lost(why);
				return;
			}
			log_warn("fork server %d: %s; the next worker starts a new one", (int)z_pid, why);
			shut();
		}
	}
	pump();
	arm_timer();
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	if (pend_sent > 0)
		lost("it did not answer in time");
}

static void lost_cb(evutil_socket_t fd, short what, void *arg)
{
	const char *why = z_lost_why;

	(void)fd;
	(void)what;
	(void)arg;
	z_lost_why = NULL;
	if (pend_n > 0)
		lost(why ? why : "it died");
}

int zygote_init(struct event_base *base, zygote_forked_fn *forked, unsigned max_pending)
{
	z_base = base;
	z_forked = forked;
	pend_cap = max_pending ? max_pending : 1;
	pend = xcalloc(pend_cap, sizeof(*pend));
	pend_head = pend_n = pend_sent = 0;
	z_timer = evtimer_new(base, timer_cb, NULL);
	z_lost = event_new(base, -1, 0, lost_cb, NULL);
	return z_timer && z_lost ? 0 : -ENOMEM;
}

void zygote_free(void)
{
	zygote_stop();
	if (z_timer)
		event_free(z_timer);
	if (z_lost)
		event_free(z_lost);
	z_timer = z_lost = NULL;
	free(pend);
	pend = NULL;
	pend_cap = 0;
}

int zygote_start(void)
{
	char path[PATH_MAX], level[16], frame[32];
	char *argv[5 + 2 * CONFIG_MAX_MODULES], version[] = MPOOL_VERSION;
	struct zygote_rep rep;
	unsigned n = 0;
	int sv[2], fd, r;

	if (z_fd >= 0)
		return 0;
	if (z_broken)
		return -ENOTCONN;
	r = find_binary(path, sizeof(path));
	if (r < 0) {
		log_warn("no fork server at %s (%s): workers fork from the master", path,
			 strerror(-r));
		z_broken = true;
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
	r = fork_exec(path, argv, sv[1], &z_pid);
	close(sv[1]);
	if (r < 0) {
		/* Transient (a process limit, memory): try again next time. */
		close(sv[0]);
		z_pid = 0;
		log_debug("cannot start the fork server: %s", strerror(-r));
		return r;
	}
	z_fd = sv[0];
	r = recv_hello(&rep, &fd);
	if (r == 0 && fd >= 0) {
		close(fd);
		r = -EPROTO;
	}
	if (r == 0 && rep.err)
		r = rep.err;
	if (r == 0) {
		z_read = event_new(z_base, z_fd, EV_READ | EV_PERSIST, read_cb, NULL);
		if (!z_read || event_add(z_read, NULL) < 0)
			r = -ENOMEM;
	}
	if (r < 0) {
		/* It logged a module that failed; exit status 127 was a failed
		 * exec. */
		log_warn("the fork server %s did not start (%s): workers fork from the master", path,
			 r == -ECONNRESET ? "it exited" : strerror(-r));
		shut();
		z_broken = true;
		return r;
	}
	log_debug("fork server %d started", (int)z_pid);
	return 0;
}

int zygote_request(uint64_t quota, void *token)
{
	int r;

	if (pend_n == pend_cap)
		return -ENOBUFS;
	if (z_fd < 0) {
		r = zygote_start();
		if (r < 0)
			return z_broken ? -ENOTCONN : r;
	}
	pend_push((struct pending){ token, quota, false });
	pump();
	return 0;
}

unsigned zygote_pending(void)
{
	return pend_n;
}

bool zygote_reaped(pid_t pid, int status)
{
	if (!z_pid || pid != z_pid)
		return false;
	if (WIFSIGNALED(status))
		log_warn("fork server %d killed by signal %d; the next worker starts a new one",
			 (int)pid, WTERMSIG(status));
	else
		log_warn("fork server %d exited with status %d; the next worker starts a new one",
			 (int)pid, WEXITSTATUS(status));
	z_pid = 0;
	/* What it answered before it died is still in the channel. */
	if (pend_n > 0)
		lost_soon("it died");
	else
		shut();
	return true;
}

pid_t zygote_pid(void)
{
	return z_pid;
}

void zygote_pack_status(msgpack_packer *pk)
{
	if (z_fd < 0 || z_pid == 0) {
		msgpack_pack_nil(pk);
		return;
	}
	msgpack_pack_map(pk, 1);
	mp_pack_cstr(pk, "pid");
	msgpack_pack_uint64(pk, (uint64_t)z_pid);
}
