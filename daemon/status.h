/* status: the reply to the "status" method (PROTOCOL.md), gathered from
 * the master, the pool, the dispatcher and the connections. */
#ifndef STATUS_H
#define STATUS_H

#include <msgpack.h>

void status_pack(msgpack_packer *pk);

#endif
