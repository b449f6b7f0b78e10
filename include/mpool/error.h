/* mpool error codes: one space shared by the wire protocol, libmpool and
 * task modules.  The numbers are part of the protocol (proto/PROTOCOL.md):
 * never renumber, only add. */
#ifndef MPOOL_ERROR_H
#define MPOOL_ERROR_H

#ifdef __cplusplus
extern "C" {
#endif

enum mpool_error {
	MPOOL_OK = 0,
	/* Reported by the daemon (wire codes). */
	MPOOL_E_BADREQ = 1,      /* malformed request or params */
	MPOOL_E_NOMETHOD = 2,    /* unknown method */
	MPOOL_E_NOFUNC = 3,      /* unknown task function */
	MPOOL_E_TASK = 4,        /* the task function reported a failure */
	MPOOL_E_TYPE = 5,        /* the task's argument has the wrong type */
	MPOOL_E_WORKER = 6,      /* the worker running the item died */
	MPOOL_E_TERMINATED = 7,  /* the pool was terminated */
	MPOOL_E_SHUTDOWN = 8,    /* the daemon is draining; no new work */
	MPOOL_E_LIMIT = 9,       /* a configured limit was exceeded */
	MPOOL_E_TIMEOUT = 10,    /* the item ran past its deadline */
	MPOOL_E_INTERNAL = 11,   /* the daemon failed (out of memory, bug) */
	MPOOL_E_RESULT = 12,     /* the task produced an invalid result */
	MPOOL_E_UNAVAILABLE = 13,/* no worker could be started in time */
	MPOOL_E_CANCELLED = 14,  /* the job was cancelled (its owner or an admin) */
	MPOOL_E_PERM = 15,       /* the caller may not do this */
	MPOOL_E_NOTFOUND = 16,   /* no such job or worker */
	/* Local to libmpool: never on the wire. */
	MPOOL_E_SYS = 100,       /* a system call failed; errno tells */
	MPOOL_E_PROTO = 101,     /* the daemon sent something unreadable */
	MPOOL_E_CLOSED = 102,    /* the daemon closed the connection */
	MPOOL_E_INVAL = 103,     /* bad argument to a libmpool call */
	MPOOL_E_NOMEM = 104,     /* out of memory in libmpool */
	MPOOL_E_ITEMS = 105,     /* a map finished with failed items */
	MPOOL_E_UNTRUSTED = 106  /* the server runs as a user a client must not
				  * trust (mpool_connect) */
};

/* A short constant name for a code ("type_error"); "unknown" otherwise. */
const char *mpool_strerror(int code);

#ifdef __cplusplus
}
#endif
#endif
