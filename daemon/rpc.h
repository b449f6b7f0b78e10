/* rpc: the methods clients call.  One table holds every method with its
 * parameter parser and who may call it; a parsed message is dispatched
 * through it after one check that its msgid is free.  The transport
 * (conn.c) hands over each whole message and knows no method. */
#ifndef RPC_H
#define RPC_H

struct conn;
struct mp_msg;

#include <stdbool.h>

/* Answers or acts on one message from c's client.  Returns true for a
 * request (c is still there); false for anything else, after which c may
 * be freed (a malformed feed drops its client) and must not be touched. */
bool rpc_dispatch(struct conn *c, const struct mp_msg *m);

#endif
