/* cfgerr: what mpoold does under socket activation when it cannot start
 * (a config file error, a bad command line, a module that does not load).
 * Exiting at once would not do: the client that made systemd start mpoold
 * is still queued on the socket, so systemd would start it again and
 * again, until the start limit fails mpoold.socket and removes the socket.
 * Instead every queued request gets an "unavailable" error naming the
 * cause, and mpoold exits once no client is left; the next client starts
 * it again, which reads the (perhaps fixed) file again. */
#ifndef CFGERR_H
#define CFGERR_H

/* Serves the error "why" on the listening socket listen_fd (which it
 * closes) until no client is left for CFGERR_LINGER_MS, or until SIGTERM or
 * SIGINT.  Returns the exit status mpoold should leave with: 2. */
int cfgerr_serve(int listen_fd, const char *why);

#endif
