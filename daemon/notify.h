/* notify: mpoold's systemd glue, and the only file that includes
 * sd-daemon.h: messages to the service manager, the watchdog interval, and
 * the socket systemd passes.  Only the master calls these; without
 * NOTIFY_SOCKET every message is dropped. */
#ifndef NOTIFY_H
#define NOTIFY_H

#include <stdbool.h>
#include <stdint.h>

/* Reads what systemd passed, once, before any fork.  WATCHDOG_* and LISTEN_*
 * leave the environment here, so no child ever sees them; NOTIFY_SOCKET
 * stays for sd_notify() and each worker drops it first thing.  0, or -errno
 * after logging why a passed socket cannot be served. */
int notify_init(void);

/* True when NOTIFY_SOCKET is set: someone listens to the messages below. */
bool notify_enabled(void);
/* The listening socket systemd passed (non-blocking, close-on-exec), or -1.
 * The caller owns it from then on. */
int notify_take_listen_fd(void);
/* The interval systemd expects WATCHDOG=1 within, in microseconds; 0 when
 * it expects none. */
uint64_t notify_watchdog_usec(void);

/* READY=1 and STATUS=status in one message. */
void notify_ready(const char *status);
/* RELOADING=1 with MONOTONIC_USEC (Type=notify-reload needs it); READY=1
 * ends the reload. */
void notify_reloading(void);
void notify_stopping(void);
void notify_watchdog(void);
/* STATUS=text (one line). */
void notify_status(const char *text);

#endif
