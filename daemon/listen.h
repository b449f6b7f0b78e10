/* listen: the listening socket.  Serves the socket systemd passed (socket
 * activation), and never removes it; otherwise binds the configured path
 * with the configured mode and group, creating its directory, replacing a
 * stale socket only when nothing answers on it, and never removing anything
 * that is not a socket. */
#ifndef LISTEN_H
#define LISTEN_H

/* 0 with *ret_fd, or -errno after logging the reason. */
int listen_open(const char *path, int *ret_fd);
/* Closes the socket and removes its path (only if we created it). */
void listen_close(int fd, const char *path);
/* The path being served, for messages: the passed socket's or path. */
const char *listen_name(void);

#endif
