/* Logging to stderr.  Under journald (JOURNAL_STREAM names our stderr) each
 * line starts with its sd-daemon priority prefix ("<3>") so the journal
 * keeps the level; elsewhere lines carry a timestamp and the level's name. */
#ifndef LOG_H
#define LOG_H

#include <stdarg.h>
#include <syslog.h>

/* Sets the level and looks at stderr again (call it once early for the
 * startup errors, and again once the level is known). */
void log_init(int level);
void log_msg(int prio, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void log_vmsg(int prio, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));
/* An error before the daemon runs (options, config file): "mpoold: ..." on
 * a terminal, with the error priority (and without the program's name, which
 * the journal adds) under journald; never filtered. */
void log_startup_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The text of the last error logged (log_startup_err, or log_msg at LOG_ERR
 * or worse), without prefix; "" when none.  For a client that must be told
 * why mpoold cannot serve (cfgerr.h). */
const char *log_last_error(void);

#define log_err(...)   log_msg(LOG_ERR, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_WARNING, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)

#endif
