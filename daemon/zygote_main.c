/* mpool-zygote: mpoold's fork server (zygote.h says why it exists).
 *
 *     mpool-zygote VERSION LOG_LEVEL MAX_FRAME [MODULE_PATH INITARGS_JSON|-]...
 *
 * started by the master with its end of a SOCK_SEQPACKET pair on
 * descriptor 3.  It loads the modules as the master did, says so, then per
 * request forks a worker with clone(CLONE_PARENT), so the worker is the
 * master's child (its exit signal is ours, SIGCHLD), and passes back its
 * pid and the master's end of its socketpair.  It leaves when the master
 * closes the pair or dies. */
#include <errno.h>
#include <linux/sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "modload.h"
#include "worker.h"
#include "zygote.h"

#define ZYGOTE_FD 3

static void reply(const struct zygote_rep *rep, int fd)
{
	char cbuf[CMSG_SPACE(sizeof(int))] = { 0 };
	struct iovec iov = { (void *)rep, sizeof(*rep) };
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
		n = sendmsg(ZYGOTE_FD, &mh, MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		_exit(0);           /* the master is gone */
}

/* fork(), but the child's parent is our parent: the master.  With
 * CLONE_PARENT the child's exit signal is ours (SIGCHLD: the master forked
 * us), and clone3 insists that none be given.  clone3 needs Linux 5.3, and
 * seccomp filters (systemd's RestrictNamespaces=, containers) answer it
 * with ENOSYS or EPERM; the old clone's zero arguments mean the same in any
 * order. */
static long clone_parent(void)
{
	struct clone_args ca = { .flags = CLONE_PARENT };
	long pid = syscall(SYS_clone3, &ca, sizeof(ca));

	if (pid < 0 && (errno == ENOSYS || errno == EPERM))
		pid = syscall(SYS_clone, CLONE_PARENT | SIGCHLD, 0, NULL, NULL, 0);
	return pid;
}

/* The worker, on its way, in the child. */
__attribute__((noreturn)) static void worker_start(long fd, long master, long quota)
{
	/* ps and top show workers as mpoold's, as when the master forked them. */
	prctl(PR_SET_NAME, "mpoold");
	worker_main((int)fd, (pid_t)master, (uint64_t)quota);
}

/* A worker, the master's child: its pid, or -1 with errno. */
static long spawn(int fd, pid_t master, uint64_t quota)
{
	long pid = clone_parent();

	if (pid == 0)
		worker_start(fd, master, (long)quota);
	return pid;
}

static void serve(pid_t master, uint64_t quota)
{
	struct zygote_rep rep = { 0 };
	int sv[2];
	long pid;

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
		rep.err = -errno;
		reply(&rep, -1);
		return;
	}
	pid = spawn(sv[1], master, quota);
	if (pid < 0)
		rep.err = -errno;
	else
		rep.pid = (int32_t)pid;
	close(sv[1]);
	reply(&rep, pid > 0 ? sv[0] : -1);
	close(sv[0]);
}

int main(int argc, char **argv)
{
	pid_t master = getppid();
	struct zygote_rep rep = { 0 };
	sigset_t none;
	int r;

	prctl(PR_SET_NAME, ZYGOTE_NAME);
	/* Once, for every worker to come: defaults everywhere (exec kept the
	 * master's ignored SIGPIPE and the mask fork.c blocked). */
	for (int sig = 1; sig < NSIG; sig++)
		signal(sig, SIG_DFL);
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != master)
		_exit(0);
	/* A socket systemd passed the master is not CLOEXEC: not ours. */
	close_range(ZYGOTE_FD + 1, ~0U, 0);
	/* The wire between us, arguments included, is private: an mpoold of
	 * another version (a stale install) falls back to forking its
	 * workers itself. */
	if (argc >= 2 && strcmp(argv[1], MPOOL_VERSION) != 0) {
		log_startup_err("mpool-zygote %s cannot serve mpoold %s", MPOOL_VERSION, argv[1]);
		_exit(2);
	}
	if (argc < 4 || (argc - 4) % 2 != 0 || (argc - 4) / 2 > CONFIG_MAX_MODULES) {
		log_startup_err("mpool-zygote is started by mpoold, not by hand");
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
	rep.err = r < 0 ? -EINVAL : 0;
	rep.pid = (int32_t)getpid();
	reply(&rep, -1);
	if (r < 0)
		_exit(1);
	for (;;) {
		struct zygote_req req;
		ssize_t n = recv(ZYGOTE_FD, &req, sizeof(req), 0);

		if (n < 0 && errno == EINTR)
			continue;
		if (n != (ssize_t)sizeof(req))
			_exit(0);   /* the master closed the pair, or sent nonsense */
		serve(master, req.quota);
	}
}
