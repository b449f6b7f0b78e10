#include "fork.h"

#include <errno.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

int fork_child(fork_entry entry, const void *arg, pid_t *ret_pid, int *ret_fd)
{
	pid_t master = getpid(), pid;
	sigset_t all, old;
	int sv[2];

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		return -errno;
	/* Until the child has dropped the master's signal handlers, a signal
	 * sent to it would run libevent's handler there, which writes into the
	 * signal pipe it shares with the master: the master would act on a
	 * SIGTERM meant for the child.  Blocked across the fork, signals wait
	 * until the child has reset its handlers and unblocks them. */
	sigfillset(&all);
	sigprocmask(SIG_SETMASK, &all, &old);
	pid = fork();
	if (pid != 0)
		sigprocmask(SIG_SETMASK, &old, NULL);
	if (pid < 0) {
		int e = errno;

		close(sv[0]);
		close(sv[1]);
		return -e;
	}
	if (pid == 0) {
		close(sv[0]);
		entry(sv[1], master, arg);
		_exit(127);     /* entries never return; this is a seat belt */
	}
	close(sv[1]);
	*ret_pid = pid;
	*ret_fd = sv[0];
	return 0;
}
