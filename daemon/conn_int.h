/* conn_int: what conn.c (a connection's life) and conn_accept.c (who may
 * connect) share.  The rest of the daemon uses conn.h. */
#ifndef CONN_INT_H
#define CONN_INT_H

#include <stdbool.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <event2/event.h>

#include "conn.h"

/* A client admitted on fd (nonblocking, close-on-exec), now owned by its
 * connection. */
void conn_new(struct event_base *base, int fd, const struct ucred *cred);
/* Connections of uid now. */
unsigned conn_uid_count(uid_t uid);
/* Admin operations are for root, mpoold's own user, and --admin-group. */
bool conn_cred_is_admin(uid_t uid, gid_t gid);
/* --max-clients, or fewer when RLIMIT_NOFILE cannot hold that many. */
unsigned conn_clients_allowed(void);

#endif
