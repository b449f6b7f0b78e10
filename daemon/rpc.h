/* rpc: the methods clients call.  The transport (conn.c) hands over each
 * whole message and knows no method. */
#ifndef RPC_H
#define RPC_H

#include <stdbool.h>

struct conn;
struct mp_msg;

/* Answers or acts on one message from c's client.  Returns true for a
 * request (c is still there); false for anything else, after which c may
 * be freed (a malformed feed drops its client) and must not be touched. */
bool rpc_dispatch(struct conn *c, const struct mp_msg *m);

#endif
