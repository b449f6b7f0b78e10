/* registry: the task modules mpoold has loaded and their functions, looked
 * up by "MODULE.FUNCTION".  Filled before any worker is forked, so workers
 * share it copy-on-write; changed only by a reload, between forks.
 *
 * A module's functions come from its static table and (ABI 2) its load
 * hook, which runs in the fork server or in a process the master forked,
 * never in the master: it knows those functions by name only, from the
 * fork server, which is all its submit-time check needs. */
#ifndef REGISTRY_H
#define REGISTRY_H

#include <stddef.h>
#include <stdint.h>
#include <mpool/module.h>

struct reg_fn;

/* Adds a module.  The descriptor must outlive the registry; initargs
 * (initargs_len bytes of one MessagePack value, or NULL for nil) is copied.
 * 0, or -EEXIST for a duplicate name, -EPROTO for an ABI mpoold does not
 * speak, -EINVAL for a descriptor without a valid name or functions (or a
 * load hook), -ENOSPC. */
int reg_add(const struct mpool_module *m, const void *initargs, size_t initargs_len);
/* Forgets every module (reload).  Not the names the fork server reported
 * (reg_set_loaded_names): the modules added next get theirs back. */
void reg_clear(void);
/* The function named name (len bytes, not NUL-terminated), or NULL.  In
 * the master, a loaded function known by name only is found too, and
 * while the first names are awaited (reg_await_loaded_names), any valid
 * name of a module with load. */
const struct reg_fn *reg_lookup(const char *name, size_t len);
/* f NULL (not found), or a name only (the master's), fails with
 * no_function. */
int reg_call(const struct reg_fn *f, const msgpack_object *arg, msgpack_packer *result,
	     struct mpool_task_error *err);

/* In the fork server, before any fork: calls every module's load hook and
 * adds the functions it returns.  A module whose load fails is logged and
 * left without loaded functions.  The number of modules that failed. */
unsigned reg_load_all(void);
/* The loaded functions' full names, each NUL-terminated, in buf: their
 * total size, which may exceed size (nothing is then written past it). */
size_t reg_loaded_names(char *buf, size_t size);
/* In the master: the names the fork server reported (as reg_loaded_names
 * wrote them) replace those known before; NULL, 0 forgets them all.
 * Invalid names, or those of modules not registered, are skipped.  The
 * number kept.  They outlive reg_clear(): a reload keeps judging by them
 * until the new fork server reports. */
unsigned reg_set_loaded_names(const char *buf, size_t len);
/* In the master, as a fork server starts loading: unless some fork server
 * reported names before, reg_lookup() accepts every valid name of a module
 * with load until one does, rather than refuse what the modules may well
 * define.  A function that then does not exist fails in its worker. */
void reg_await_loaded_names(void);

/* In a worker: calls load where it did not run in this process yet (a
 * process the master forked) for the modules whose functions the master
 * accepts, then every module's init in order.  0, or -1 with err filled
 * and *ret_module naming the module whose init failed. */
int reg_init_all(struct mpool_task_error *err, const char **ret_module);
void reg_fini_all(void);
/* Calls fn with each function's "MODULE.FUNCTION", names only included. */
void reg_each_fn(void (*fn)(const char *name, void *arg), void *arg);

extern const struct mpool_module builtin_module;

#endif
