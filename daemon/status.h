/* status: the reply to the "status" method (PROTOCOL.md), gathered from
 * the master, the pool, the dispatcher and the connections. */
#ifndef STATUS_H
#define STATUS_H

#include <stdint.h>
#include <msgpack.h>

void status_pack(msgpack_packer *pk);
/* One key and its unsigned value, for the maps status is made of. */
void status_kv(msgpack_packer *pk, const char *key, uint64_t v);

#endif
