/* mp_path: the default socket path rule, shared by mpoold and its clients.
 * $MPOOL_SOCKET if set, else /run/mpool/mpoold.sock for root, else
 * $XDG_RUNTIME_DIR/mpool/mpoold.sock, else /tmp/mpool-UID/mpoold.sock. */
#ifndef MP_PATH_H
#define MP_PATH_H

#include <stddef.h>

/* Writes the path into buf.  0, or -ENAMETOOLONG when it does not fit. */
int mp_default_socket_path(char *buf, size_t size);

#endif
