/* mpool-forksrv: mpoold's fork server (forksrv.h says why it exists).
 *
 *     mpool-forksrv VERSION LOG_LEVEL MAX_FRAME [MODULE_PATH INITARGS_JSON|-]...
 *
 * started by the master with its end of a SOCK_SEQPACKET pair on
 * descriptor 3.  It loads the modules and runs their load hooks, says
 * hello with the names those returned, then forks a worker per request and
 * reports each death.  When the master ends the requests it leaves with
 * its last worker. */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "modload.h"
#include "registry.h"
#include "worker.h"
#include "forksrv.h"

#define FORKSRV_FD 3

/* One datagram, with fd unless it is -1. */
static void reply(const void *buf, size_t len, int fd)
{
	char cbuf[CMSG_SPACE(sizeof(int))] = { 0 };
	struct iovec iov = { (void *)buf, len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	ssize_t n;

	if (fd >= 0) {
		struct cmsghdr *c;

		mh.msg_control = cbuf;
		mh.msg_controllen = sizeof(cbuf);
		c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &fd, sizeof(int));
	}
	do
		n = sendmsg(FORKSRV_FD, &mh, MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		_exit(0);           /* the master is gone */
}

static pid_t self;

__attribute__((noreturn)) static void worker_start(int fd, pid_t parent, uint64_t quota)
{
	sigset_t none;

	/* SIGCHLD is blocked for our signalfd, not for the worker. */
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	/* ps and top show workers as mpoold's, as when the master forks them. */
	prctl(PR_SET_NAME, "mpoold");
	worker_main(fd, parent, quota);
}

/* 1 when a worker was forked, else 0. */
static unsigned serve(uint64_t quota)
{
	struct forksrv_rep rep = { .kind = FORKSRV_FORKED };
	pid_t pid;
	int sv[2];

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
		rep.err = -errno;
		reply(&rep, sizeof(rep), -1);
		return 0;
	}
	pid = fork();
	if (pid == 0)
		worker_start(sv[1], self, quota);
	if (pid < 0) {
		rep.err = -errno;
	} else {
		rep.pid = (int32_t)pid;
	}
	close(sv[1]);
	reply(&rep, sizeof(rep), pid > 0 ? sv[0] : -1);
	close(sv[0]);
	return pid > 0;
}

/* The master is not our workers' parent: it learns their deaths from us.
 * How many died. */
static unsigned reap(void)
{
	struct forksrv_rep rep = { .kind = FORKSRV_EXITED };
	int status;
	unsigned n = 0;
	pid_t pid;

	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		rep.pid = (int32_t)pid;
		rep.status = status;
		n++;
		reply(&rep, sizeof(rep), -1);
	}
	return n;
}

int main(int argc, char **argv)
{
	pid_t master = getppid();
	struct forksrv_rep rep = { .kind = FORKSRV_HELLO };
	sigset_t none, chld;
	bool requests = true;
	/* Live workers, on the stack: a global's page would take a
	 * copy-on-write fault per fork. */
	unsigned n_workers = 0;
	size_t names_len = 0;
	char *names = NULL;
	int r, sfd;

	prctl(PR_SET_NAME, FORKSRV_NAME);
	/* Once, for every worker to come: defaults everywhere (exec kept the
	 * master's ignored SIGPIPE and the mask fork.c blocked). */
	for (int sig = 1; sig < NSIG; sig++)
		signal(sig, SIG_DFL);
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != master)
		_exit(0);
	/* A socket systemd passed the master is not CLOEXEC: not ours. */
	close_range(FORKSRV_FD + 1, ~0U, 0);
	/* The wire, arguments included, is private: an mpoold of another
	 * version (a stale install) forks its workers itself. */
	if (argc >= 2 && strcmp(argv[1], MPOOL_VERSION) != 0) {
		log_startup_err("mpool-forksrv %s cannot serve mpoold %s", MPOOL_VERSION, argv[1]);
		_exit(2);
	}
	if (argc < 4 || (argc - 4) % 2 != 0 || (argc - 4) / 2 > CONFIG_MAX_MODULES) {
		log_startup_err("mpool-forksrv is started by mpoold, not by hand");
		_exit(2);
	}
	cfg.log_level = atoi(argv[2]);
	cfg.max_frame = strtoull(argv[3], NULL, 10);
	for (int i = 4; i + 1 < argc; i += 2) {
		struct module_spec *m = config_module_add();

		m->path = strdup(argv[i]);
		m->initargs_json = strcmp(argv[i + 1], "-") == 0 ? NULL : strdup(argv[i + 1]);
		if (!m->path || (strcmp(argv[i + 1], "-") != 0 && !m->initargs_json))
			_exit(1);
	}
	worker_drop_service_env();
	/* The master logged each module it loaded; only our failures count. */
	log_init(cfg.log_level < LOG_WARNING ? cfg.log_level : LOG_WARNING);
	r = modload_all();
	log_init(cfg.log_level);
	/* Module code (a Python import) runs here, once, before any fork; a
	 * module whose load fails logged why and has no functions. */
	if (r == 0) {
		reg_load_all();
		names_len = reg_loaded_names(NULL, 0);
		if (names_len > FORKSRV_NAMES_MAX) {
			log_err("the modules' functions have %zu bytes of names, more than %d",
				names_len, FORKSRV_NAMES_MAX);
			r = -1;
		} else if (names_len > 0) {
			names = malloc(names_len);
			if (!names)
				_exit(1);
			reg_loaded_names(names, names_len);
		}
	}
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	sigprocmask(SIG_BLOCK, &chld, NULL);
	sfd = signalfd(-1, &chld, SFD_NONBLOCK | SFD_CLOEXEC);
	rep.err = r < 0 ? -EINVAL : sfd < 0 ? -errno : 0;
	self = getpid();
	rep.pid = (int32_t)self;
	rep.status = rep.err < 0 ? 0 : (int32_t)names_len;
	reply(&rep, sizeof(rep), -1);
	if (rep.err < 0)
		_exit(1);
	if (rep.status > 0)
		reply(names, names_len, -1);
	free(names);
	/* Requests and deaths, in one loop: SIGCHLD comes as a descriptor. */
	for (;;) {
		struct pollfd p[2] = {
			{ sfd, POLLIN, 0 },
			{ requests ? FORKSRV_FD : -1, POLLIN, 0 },
		};
		struct forksrv_req req;
		ssize_t n;

		if (!requests && n_workers == 0)
			_exit(0);
		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			_exit(1);
		}
		if (p[0].revents) {
			struct signalfd_siginfo si;

			/* One read takes it: SIGCHLD is pending once however
			 * many died, and reap() takes them all. */
			(void)!read(sfd, &si, sizeof(si));
			n_workers -= reap();
		}
		if (!p[1].revents)
			continue;
		n = recv(FORKSRV_FD, &req, sizeof(req), MSG_DONTWAIT);
		if (n == (ssize_t)sizeof(req))
			n_workers += serve(req.quota);
		else if (n == 0)
			requests = false;   /* a reload: serve our workers out */
		else if (n > 0 || (errno != EINTR && errno != EAGAIN))
			_exit(0);           /* nonsense, or the pair broke */
	}
}
