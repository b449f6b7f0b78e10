/* modload: opens the task modules the configuration lists (dlopen), checks
 * their descriptors and registers them with their initargs.  Clients name
 * functions, never files: only these modules are ever loaded. */
#ifndef MODLOAD_H
#define MODLOAD_H

/* Loads builtin and every cfg.modules[] entry, without running their load
 * hooks.  0, or -1 after logging the file and the cause. */
int modload_all(void);
/* Closes every module and loads them again, so rebuilt files take effect.
 * On failure the modules that did load stay registered.  0 or -1. */
int modload_reload(void);
void modload_close_all(void);

#endif
