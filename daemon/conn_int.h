/* conn_int: what conn.c (a connection's life) and conn_accept.c (who may
 * connect) share. */
#ifndef CONN_INT_H
#define CONN_INT_H

#include <stdbool.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <event2/event.h>

#include "conn.h"

/* A client admitted on fd (nonblocking, close-on-exec), which its
 * connection now owns. */
void conn_new(struct event_base *base, int fd, const struct ucred *cred);
unsigned conn_uid_count(uid_t uid);
bool conn_cred_is_admin(uid_t uid, gid_t gid);
/* --max-clients, or fewer when RLIMIT_NOFILE cannot hold that many. */
unsigned conn_clients_allowed(void);

#endif
