/* Allocation in mpoold.
 *
 * Out-of-memory policy: the daemon bounds everything a client can make it
 * allocate (frame size, items, jobs, connections, unsent output), so an
 * allocation failure means the machine itself is out of memory.  mpoold then
 * aborts with a message rather than limp on in a state no test has seen;
 * systemd restarts it (Restart=on-failure) and clients get a closed
 * connection, which libmpool reports as an error. */
#ifndef MEM_H
#define MEM_H

#include <stddef.h>

void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrndup(const char *s, size_t n);
void *xmemdup(const void *p, size_t n);

#endif
