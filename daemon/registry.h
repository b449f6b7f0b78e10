/* registry: the task modules mpoold has loaded and their functions, looked
 * up by "MODULE.FUNCTION".  Filled in the master before any worker is
 * forked, so every worker shares it copy-on-write; changed only by a reload,
 * in the master, between forks. */
#ifndef REGISTRY_H
#define REGISTRY_H

#include <stddef.h>
#include <stdint.h>
#include <mpool/module.h>

/* Adds a module.  The descriptor must outlive the registry; initargs
 * (initargs_len bytes of one MessagePack value, or NULL for nil) is copied.
 * 0, or -EEXIST for a duplicate name, -EPROTO for an ABI mismatch, -EINVAL
 * for a descriptor without a valid name or functions, -ENOSPC. */
int reg_add(const struct mpool_module *m, const void *initargs, size_t initargs_len);
/* Forgets every module (reload). */
void reg_clear(void);
/* The function named name (len bytes, not NUL-terminated), or NULL. */
mpool_task_fn reg_lookup(const char *name, size_t len);
/* Runs every module's init in order (in a worker).  0, or -1 with err
 * filled and *ret_module naming the module that failed. */
int reg_init_all(struct mpool_task_error *err, const char **ret_module);
void reg_fini_all(void);
/* Calls fn with each function's "MODULE.FUNCTION" (cluster: the functions
 * a node announces). */
void reg_each_fn(void (*fn)(const char *name, void *arg), void *arg);
/* "builtin, wordcount": for messages. */
void reg_names(char *buf, size_t size);

extern const struct mpool_module builtin_module;

#endif
