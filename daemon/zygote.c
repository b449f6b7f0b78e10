#include "zygote.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "config.h"
#include "fork.h"
#include "log.h"

#define ZYGOTE_NAME "mpool-zygote"
/* A zygote that has not loaded the modules or answered a fork by then is
 * taken for hung: the master must not wait on it for long. */
#define ZYGOTE_START_MS 5000
#define ZYGOTE_REPLY_MS 2000

static pid_t z_pid;
static int z_fd = -1;
/* It could not start for a reason that does not go away by itself (no
 * binary, a module that does not load): workers fork from the master until
 * the next reload. */
static bool z_broken;

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

/* One reply, and the descriptor that came with it (-1 if none). */
static int recv_rep(struct zygote_rep *rep, int *ret_fd, int timeout_ms)
{
	char cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = { rep, sizeof(*rep) };
	struct msghdr mh = {
		.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf),
	};
	struct pollfd p = { z_fd, POLLIN, 0 };
	struct cmsghdr *c;
	ssize_t n;
	int r;

	do
		r = poll(&p, 1, timeout_ms);
	while (r < 0 && errno == EINTR);
	if (r == 0)
		return -ETIMEDOUT;
	if (r < 0)
		return -errno;
	do
		n = recvmsg(z_fd, &mh, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
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

void zygote_stop(void)
{
	if (z_fd >= 0)
		close(z_fd);
	z_fd = -1;
	if (z_pid) {
		int status;

		kill(z_pid, SIGKILL);
		while (waitpid(z_pid, &status, 0) < 0 && errno == EINTR)
			;
	}
	z_pid = 0;
	z_broken = false;
}

int zygote_start(void)
{
	char path[PATH_MAX], level[16], frame[32];
	char *argv[5 + 2 * CONFIG_MAX_MODULES], version[] = MPOOL_VERSION;
	struct zygote_rep rep;
	unsigned n = 0;
	int sv[2], fd, r;

	if (z_pid)
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
	r = recv_rep(&rep, &fd, ZYGOTE_START_MS);
	if (r == 0 && fd >= 0) {
		close(fd);
		r = -EPROTO;
	}
	if (r == 0 && rep.err)
		r = rep.err;
	if (r < 0) {
		/* It logged a module that failed; exit status 127 was a failed
		 * exec. */
		log_warn("the fork server %s did not start (%s): workers fork from the master", path,
			 r == -ECONNRESET ? "it exited" : strerror(-r));
		zygote_stop();
		z_broken = true;
		return r;
	}
	log_debug("fork server %d started", (int)z_pid);
	return 0;
}

int zygote_fork(uint64_t quota, pid_t *ret_pid, int *ret_fd)
{
	struct zygote_req req = { .quota = quota };
	struct zygote_rep rep;
	int fd, r = 0;

	/* A zygote that died since the last fork (not reaped yet) fails the
	 * first try; a fresh one gets the second. */
	for (int attempt = 0; attempt < 2; attempt++) {
		if (!z_pid && zygote_start() < 0)
			return z_broken ? -ENOTCONN : -EAGAIN;
		if (send(z_fd, &req, sizeof(req), MSG_NOSIGNAL) != (ssize_t)sizeof(req))
			r = -errno;
		else
			r = recv_rep(&rep, &fd, ZYGOTE_REPLY_MS);
		if (r == 0 && rep.err < 0) {
			if (fd >= 0)
				close(fd);
			return rep.err;             /* its clone failed: a failed fork */
		}
		if (r == 0 && (fd < 0 || rep.pid <= 0)) {
			if (fd >= 0)
				close(fd);
			r = -EPROTO;
		}
		if (r == 0) {
			*ret_pid = rep.pid;
			*ret_fd = fd;
			return 0;
		}
		log_warn("fork server %d lost (%s); starting a new one", (int)z_pid,
			 r == -ECONNRESET ? "it closed its channel" : strerror(-r));
		zygote_stop();
	}
	return r;
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
	close(z_fd);
	z_fd = -1;
	z_pid = 0;
	return true;
}

pid_t zygote_pid(void)
{
	return z_pid;
}
