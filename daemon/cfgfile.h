/* cfgfile: reads mpoold.conf (libinih) into cfg: "key = value" lines, each
 * key the long name of an option, then one [module] section per task
 * module.  Leading blanks are ignored, so there are no continuation lines.
 * mpoold.conf(5) describes the syntax. */
#ifndef CFGFILE_H
#define CFGFILE_H

#include <stdbool.h>
#include <stddef.h>

/* Applies the settings of the file at path to cfg.  A missing file is an
 * error only when must_exist.  0, or -1 with "path:line: reason" (or
 * "path: reason") in why. */
int cfgfile_load(const char *path, bool must_exist, char *why, size_t why_size);

#endif
