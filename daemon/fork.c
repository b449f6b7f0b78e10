#include "fork.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include "master.h"

static const int fault_signals[] = { SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGTRAP, SIGSYS };

/* In the child, every signal blocked: only the dispositions the master
 * changed go back to their defaults, and the fault signals, which a runtime
 * (a sanitizer) may have hooked, so a crash in a task is reported as the
 * signal it was. */
static void reset_signals(void)
{
	sigset_t none;

	for (const int *sig = master_signals; *sig; sig++)
		signal(*sig, SIG_DFL);
	for (size_t i = 0; i < sizeof(fault_signals) / sizeof(fault_signals[0]); i++)
		signal(fault_signals[i], SIG_DFL);
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
}

/* Until the child has dropped the master's handlers, a signal sent to it
 * would run libevent's handler, which writes into the signal pipe it
 * shares with the master: the master would act on a SIGTERM meant for the
 * child.  So signals are blocked across the fork. */
static pid_t fork_blocked(void)
{
	sigset_t all, old;
	pid_t pid;
	int e;

	sigfillset(&all);
	sigprocmask(SIG_SETMASK, &all, &old);
	pid = fork();
	if (pid == 0) {
		reset_signals();
		return 0;
	}
	e = errno;
	sigprocmask(SIG_SETMASK, &old, NULL);
	errno = e;
	return pid;
}

int fork_child(fork_entry entry, const void *arg, pid_t *ret_pid, int *ret_fd)
{
	pid_t master = getpid(), pid;
	int sv[2];

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		return -errno;
	pid = fork_blocked();
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

int fork_exec(const char *path, char *const argv[], int fd, pid_t *ret_pid)
{
	pid_t pid = fork_blocked();

	if (pid < 0)
		return -errno;
	if (pid == 0) {
		/* fd is CLOEXEC in the master; dup2 makes a copy that is not,
		 * unless it is that descriptor already. */
		if (fd == FORK_EXEC_FD ? fcntl(fd, F_SETFD, 0) == 0 : dup2(fd, FORK_EXEC_FD) >= 0)
			execv(path, argv);
		_exit(127);
	}
	*ret_pid = pid;
	return 0;
}
