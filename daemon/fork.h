/* fork: the one place mpoold forks (besides the fork server, which this
 * starts): the child goes straight to its entry function, which never
 * returns into master code. */
#ifndef FORK_H
#define FORK_H

#include <sys/types.h>

typedef void (*fork_entry)(int fd, pid_t master, const void *arg);

/* 0 with the child's pid and the master's end of the pair (CLOEXEC), or
 * -errno (socketpair or fork failed; nothing is left open). */
int fork_child(fork_entry entry, const void *arg, pid_t *ret_pid, int *ret_fd);

/* Runs path with argv in a child whose descriptor FORK_EXEC_FD is fd (the
 * others are whatever is not CLOEXEC: 0-2).  0 with its pid, or -errno
 * when fork failed; a failed exec shows as exit status 127. */
#define FORK_EXEC_FD 3
int fork_exec(const char *path, char *const argv[], int fd, pid_t *ret_pid);

#endif
