/* libexec: where mpoold finds what it runs or opens from its libexec
 * directory (the fork server, the cluster plugin). */
#ifndef LIBEXEC_H
#define LIBEXEC_H

#include <stddef.h>

/* Puts in buf the path of name beside the running mpoold (a build tree)
 * if access(mode) allows it there, else installed.  0, or a negative errno
 * from access(installed, mode). */
int libexec_path(const char *name, const char *installed, int mode, char *buf, size_t size);

#endif
