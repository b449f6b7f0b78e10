/* summary: the one-line STATUS= text systemd shows: "running; workers 2
 * busy, 2 idle; 3 jobs, 12 chunks queued; 1234 tasks done", and the pool's
 * health when it is not ok.  It reads what the "status" method packs, so
 * the two never disagree, but not the job list, whose cost grows with jobs. */
#ifndef SUMMARY_H
#define SUMMARY_H

#include <stddef.h>

/* Writes the line into buf.  phase, when not NULL, replaces the master's
 * state ("reloading"). */
void summary_line(char *buf, size_t size, const char *phase);

#endif
