/* mpctl: what mpctl.c shares with its helpers. */
#ifndef MPCTL_H
#define MPCTL_H

#include <stdio.h>
#include <msgpack.h>

/* Exit codes, part of mpctl's interface (see its usage text). */
enum {
	CTL_EXIT_OK = 0,
	CTL_EXIT_FAILED = 1,   /* the request or some items failed; local failures */
	CTL_EXIT_USAGE = 2,    /* bad command line or input */
	CTL_EXIT_CONN = 3      /* cannot connect, or the connection was lost */
};

/* Prints the status map as a header and one row per worker.  Keys that are
 * missing or of another type print as "?", so a newer daemon still shows. */
void ctl_print_status(FILE *out, const msgpack_object *status);

#endif
