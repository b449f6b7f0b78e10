/* cfgfile: reads mpoold.conf (libinih) into cfg.
 *
 * Syntax: "key = value" lines, where each key is the long name of a
 * command-line option, before any section; then any number of [module]
 * sections, one per task module, in load order, each with path = and
 * optionally initargs = (JSON).  Comments start a line with # or ;, or follow
 * a value after " ;".  Leading blanks are ignored (so there are no
 * continuation lines) and a line holds at most 199 bytes.  mpoold.conf(5)
 * is the user's description. */
#ifndef CFGFILE_H
#define CFGFILE_H

#include <stdbool.h>
#include <stddef.h>

/* Applies the settings of the file at path to cfg.  A missing file is an
 * error only when must_exist.  0, or -1 with "path:line: reason" (or
 * "path: reason") in why. */
int cfgfile_load(const char *path, bool must_exist, char *why, size_t why_size);

#endif
