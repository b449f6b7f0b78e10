#include "fork.h"

#include <errno.h>
#include <sys/socket.h>
#include <unistd.h>

int fork_child(fork_entry entry, const void *arg, pid_t *ret_pid, int *ret_fd)
{
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
		entry(sv[1], master, arg);
		_exit(127);     /* entries never return; this is a seat belt */
	}
	close(sv[1]);
	*ret_pid = pid;
	*ret_fd = sv[0];
	return 0;
}
