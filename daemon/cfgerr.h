/* cfgerr: what mpoold does under socket activation when it cannot start
 * (a config file error, a bad command line in a drop-in, a module that does
 * not load).
 *
 * Exiting at once would not do: the client that made systemd start mpoold
 * is still queued on the socket, so systemd would start mpoold again at
 * once, and again, until the start limit fails mpoold.socket and removes
 * the socket file.  Instead mpoold accepts every queued connection, answers
 * each request with an "unavailable" error whose message names the cause
 * (file:line: reason), says the cause in STATUS=, and exits with status 2
 * once no client has been connected for CFGERR_LINGER_MS.  The socket is then
 * empty and stays listening; the next client starts mpoold again, which
 * reads the (perhaps fixed) file again. */
#ifndef CFGERR_H
#define CFGERR_H

/* How long mpoold waits for another client after the last one left.  It
 * spaces out the starts a stream of clients causes (at most one per this
 * much time), which mpoold.service's StartLimitBurst= counts on. */
#define CFGERR_LINGER_MS 500
/* A connection that sends nothing for this long is closed. */
#define CFGERR_IDLE_MS 5000

/* Serves the error "why" on the listening socket listen_fd (which it
 * closes) until no client is left for CFGERR_LINGER_MS, or until SIGTERM or
 * SIGINT.  Returns the exit status mpoold should leave with: 2. */
int cfgerr_serve(int listen_fd, const char *why);

#endif
