/* summary: the one-line STATUS= text systemd shows (systemctl status):
 * "running; workers 2 busy, 2 idle; 3 jobs, 12 chunks queued; 1234 tasks
 * done", and the pool's health when it is not ok.  The worker states and
 * totals come from what the "status" method packs (pool_pack_workers,
 * pool_pack_totals), so the two never disagree; the job list is left out,
 * so the cost stays with the number of workers, not of jobs. */
#ifndef SUMMARY_H
#define SUMMARY_H

#include <stddef.h>

/* Writes the line into buf.  phase, when not NULL, replaces the master's
 * state ("reloading"). */
void summary_line(char *buf, size_t size, const char *phase);

#endif
