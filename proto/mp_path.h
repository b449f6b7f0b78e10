/* mp_path: the default socket path rule, shared by mpoold and its clients.
 * $MPOOL_SOCKET if set, else /run/mpool/mpoold.sock for root, else
 * $XDG_RUNTIME_DIR/mpool/mpoold.sock, else /tmp/mpool-UID/mpoold.sock. */
#ifndef MP_PATH_H
#define MP_PATH_H

#include <stddef.h>

/* Writes the path into buf.  0, or -ENAMETOOLONG when it does not fit. */
int mp_default_socket_path(char *buf, size_t size);

/* The same rule for clients, with one fallback: a user who is not root and
 * set no $MPOOL_SOCKET, whose own socket does not exist, reaches the system
 * service at /run/mpool/mpoold.sock when that exists. */
int mp_client_socket_path(char *buf, size_t size);

#endif
