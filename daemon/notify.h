/* notify: the master's messages to systemd (sd_notify).  The only file that
 * includes sd-daemon.h.  Without NOTIFY_SOCKET every call is a no-op. */
#ifndef NOTIFY_H
#define NOTIFY_H

void notify_ready(void);
void notify_reloading(void);
void notify_stopping(void);
void notify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
