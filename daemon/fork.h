/* fork: the one place mpoold forks.  Pool workers and supervised processes
 * both start here: a socketpair, a fork, and the child goes straight to its
 * entry function, which never returns into master code. */
#ifndef FORK_H
#define FORK_H

#include <sys/types.h>

typedef void (*fork_entry)(int fd, pid_t master, const void *arg);

/* 0 with the child's pid and the master's end of the pair (CLOEXEC), or
 * -errno (socketpair or fork failed; nothing is left open). */
int fork_child(fork_entry entry, const void *arg, pid_t *ret_pid, int *ret_fd);

#endif
