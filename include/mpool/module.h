/* The task-module ABI: what a shared object exports so mpoold's workers can
 * run its functions.  Clients call a function as "MODULE.FUNCTION".
 *
 * Lifecycle: the master and the fork server (which forks the pool's
 * workers) both open every module; the master only reads its descriptor
 * and never calls into it.  The fork server calls the optional load hook
 * (ABI 2) once, before it forks any worker, so the code and any data the
 * module sets up then are shared copy-on-write.  Workers are made by
 * fork(), so a module's pthread_atfork handlers run in each (reseed a
 * random generator there).  In each worker, init runs once before the
 * first task and fini when the worker leaves cleanly (recycled, reloaded,
 * drained; not when it is killed).  A worker runs one task at a time:
 * functions need not be thread-safe, and static state persists from task
 * to task within one worker, like a Python Pool initializer's globals.
 *
 * A process forked by the master itself (a supervised process) calls
 * load in that process, before init: load runs at most once in every
 * process that runs tasks, and never in the master.  The master learns
 * the names of load's functions from the fork server only: while none
 * runs (mpoold(8)), they are refused at submit.
 *
 * Memory rules: the argument object and everything it points to belong to
 * the worker and live only for the duration of the call (so do initargs,
 * during init: copy what you keep).  The function
 * writes exactly one result object through the packer, or reports failure;
 * on failure whatever it packed is discarded.  A function must not keep the
 * packer or the argument after it returns.
 *
 * ABI 2 adds load and struct mpool_loaded_function at the end of
 * struct mpool_module; mpoold still loads ABI 1 modules, whose descriptor
 * ends before load.  Bump MPOOL_MODULE_ABI whenever a struct below
 * changes. */
#ifndef MPOOL_MODULE_H
#define MPOOL_MODULE_H

#include <stdint.h>
#include <msgpack.h>
#include <mpool/error.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MPOOL_MODULE_ABI 2
/* The oldest ABI mpoold still loads. */
#define MPOOL_MODULE_ABI_MIN 1
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

/* ABI 2: a function found at run time, with the data it needs (a Python
 * callable, say): one C function can serve many names. */
typedef int (*mpool_task_call)(void *data, const msgpack_object *arg, msgpack_packer *result,
			       struct mpool_task_error *err);

/* name is "FUNCTION"; it may hold dots ("thumbs.resize" is called as
 * "MODULE.thumbs.resize"), and each dot-separated part is [A-Za-z0-9_-]+. */
struct mpool_loaded_function {
	const char *name;
	mpool_task_call call;
	void *data;
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
	/* Ends with {NULL, NULL}.  May be NULL in a module with load. */
	const struct mpool_function *functions;

	/* ---- ABI 2 ---- */

	/* Optional: called once per process that runs tasks, before any
	 * init: in the fork server before it forks a worker, or in a process
	 * the master forked (see Lifecycle), with the module's initargs (nil
	 * when none).  It returns, through ret_functions, a table that ends
	 * with {NULL, NULL, NULL} and lives as long as the process; its
	 * functions are callable as well as the static ones.  Non-zero, with
	 * err filled, leaves the module without load's functions in that
	 * process (clients get no_function) until the next reload; the pool
	 * keeps running.  The master learns the names from the fork server, so
	 * they are refused at submit when the fork server does not run. */
	int (*load)(const msgpack_object *initargs,
		    const struct mpool_loaded_function **ret_functions,
		    struct mpool_task_error *err);
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
