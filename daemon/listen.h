/* listen: the listening socket.  Binds the configured path, creating its
 * directory; replaces a stale socket only when nothing answers on it; never
 * removes anything that is not a socket. */
#ifndef LISTEN_H
#define LISTEN_H

/* 0 with *ret_fd, or -errno after logging the reason. */
int listen_open(const char *path, int *ret_fd);
/* Closes the socket and removes its path (only if we created it). */
void listen_close(int fd, const char *path);

#endif
