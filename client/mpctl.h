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
	CTL_EXIT_CONN = 3,     /* cannot connect, or the connection was lost */
	CTL_EXIT_RUNNING = 4,  /* join: the timeout passed, the process runs on */
	CTL_EXIT_INTERRUPTED = 130 /* spawn: Ctrl-C terminated the process */
};

/* What a status view shows. */
enum {
	CTL_SHOW_SUMMARY = 1,
	CTL_SHOW_WORKERS = 2,
	CTL_SHOW_JOBS = 4,
	CTL_SHOW_PROCS = 8,
	CTL_SHOW_ALL = 15,
	CTL_SHOW_NODES = 16     /* the cluster (mpctl nodes); not in ALL */
};

/* Prints the parts of the status map that show selects: a summary, a table
 * of workers, a table of jobs, a table of supervised processes (the last
 * two only when there are any, unless show selects them alone).  Keys that are missing or of another type
 * print as "?", so a newer daemon still shows. */
void ctl_print_status(FILE *out, const msgpack_object *status, int show);
/* The table of mpctl ps: one line per process map of procs (an array). */
void ctl_print_processes(FILE *out, const msgpack_object *procs);
/* The value under key in a map, or NULL. */
const msgpack_object *ctl_get(const msgpack_object *map, const char *key);

#endif
