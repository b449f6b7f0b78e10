/* The task-module ABI: what a shared object exports so mpoold's workers can
 * run its functions.  Clients call a function as "MODULE.FUNCTION".
 *
 * Lifecycle: mpoold loads every module in the master, before it forks, so
 * the code and any data the module sets up at load time are shared
 * copy-on-write.  Workers are made by fork(), so a module's pthread_atfork
 * handlers run in each (reseed a random generator there).  In each worker,
 * init runs once before the first task and fini when the worker leaves
 * cleanly (recycled, reloaded, drained; not when it is killed).  A worker runs one task at a time: functions need not
 * be thread-safe, and static state persists from task to task within one
 * worker, like a Python Pool initializer's globals.
 *
 * Memory rules: the argument object and everything it points to belong to
 * the worker and live only for the duration of the call (so do initargs,
 * during init: copy what you keep).  The function
 * writes exactly one result object through the packer, or reports failure;
 * on failure whatever it packed is discarded.  A function must not keep the
 * packer or the argument after it returns.
 *
 * Bump MPOOL_MODULE_ABI whenever a struct below changes. */
#ifndef MPOOL_MODULE_H
#define MPOOL_MODULE_H

#include <stdint.h>
#include <msgpack.h>
#include <mpool/error.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MPOOL_MODULE_ABI 1
#define MPOOL_TASK_MSG_MAX 256

/* Where a failing function says why.  code is MPOOL_E_TASK unless the
 * function sets another (MPOOL_E_TYPE for an argument of the wrong type). */
struct mpool_task_error {
	int code;
	char message[MPOOL_TASK_MSG_MAX];
};

/* Returns 0 after packing exactly one object into result, or -1 after
 * filling err (see mpool_task_fail). */
typedef int (*mpool_task_fn)(const msgpack_object *arg, msgpack_packer *result,
			     struct mpool_task_error *err);

struct mpool_function {
	const char *name;
	mpool_task_fn fn;
};

/* A module exports its descriptor under this name:
 *
 *     MPOOL_MODULE_EXPORT const struct mpool_module mpool_module = { ... };
 */
#define MPOOL_MODULE_SYMBOL "mpool_module"
#define MPOOL_MODULE_EXPORT __attribute__((visibility("default")))

struct mpool_module {
	uint32_t abi;                 /* MPOOL_MODULE_ABI */
	const char *name;             /* the MODULE in MODULE.FUNCTION */
	/* Optional: called once in every worker before its first task, with
	 * the module's initargs (nil when none).  Non-zero fails the worker. */
	int (*init)(const msgpack_object *initargs, struct mpool_task_error *err);
	/* Optional: called when a worker leaves cleanly. */
	void (*fini)(void);
	const struct mpool_function *functions;  /* ends with {NULL, NULL} */
};

/* Fills err and returns -1, so a function can `return mpool_task_fail(...)`. */
static inline int mpool_task_fail(struct mpool_task_error *err, int code, const char *msg)
{
	size_t i = 0;
	err->code = code;
	for (; msg[i] && i < MPOOL_TASK_MSG_MAX - 1; i++)
		err->message[i] = msg[i];
	err->message[i] = '\0';
	return -1;
}

#ifdef __cplusplus
}
#endif
#endif
