/* modload: opens the task modules the configuration lists (dlopen), checks
 * their descriptors and registers them with their initargs.  Clients name
 * functions, never files: only these modules are ever loaded. */
#ifndef MODLOAD_H
#define MODLOAD_H

/* Loads builtin and every cfg.modules[] entry (opens them; a module's
 * load hook is reg_load_all's, not this).  0, or -1 after logging the
 * file and the cause (missing file, missing descriptor, ABI mismatch,
 * duplicate name, initargs that are not JSON). */
int modload_all(void);
/* Closes every module and loads them again, so rebuilt files take effect.
 * On failure the modules that did load stay registered.  0 or -1. */
int modload_reload(void);
void modload_close_all(void);

#endif
