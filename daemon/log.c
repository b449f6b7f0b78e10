#include "log.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int max_level = LOG_INFO;
static int journal;
/* The text of the last error logged, without prefix (log_last_error). */
static char last_error[512];

/* JOURNAL_STREAM is "device:inode" of the stream journald gave us; it only
 * counts if stderr is still that stream (not redirected since). */
static int stderr_is_journal(void)
{
	const char *e = getenv("JOURNAL_STREAM");
	unsigned long long dev, ino;
	struct stat st;

	if (!e || sscanf(e, "%llu:%llu", &dev, &ino) != 2)
		return 0;
	if (fstat(STDERR_FILENO, &st) < 0)
		return 0;
	return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void log_init(int level)
{
	max_level = level;
	journal = stderr_is_journal();
}

/* Formats fmt after the n bytes of prefix in line and writes the line;
 * remembers its text when is_err. */
static void emit(char *line, size_t size, int n, bool is_err, const char *fmt, va_list ap)
{
	size_t len;

	vsnprintf(line + n, size - (size_t)n, fmt, ap);
	if (is_err)
		snprintf(last_error, sizeof(last_error), "%s", line + n);
	/* A message (a module's init error, say) may hold a newline; the
	 * journal would take what follows it for a new line without a
	 * priority. */
	for (char *p = line; (p = strchr(p, '\n')) != NULL; p++)
		*p = ' ';
	len = strlen(line);
	if (len == size - 1)
		len--;
	line[len++] = '\n';
	/* One write per line, so lines from master and workers never interleave. */
	if (write(STDERR_FILENO, line, len) < 0)
		return;     /* nowhere left to report it */
}

void log_startup_err(const char *fmt, ...)
{
	char line[1024];
	va_list ap;
	int n;

	/* The journal names the program already ("mpoold[42]: ..."). */
	n = snprintf(line, sizeof(line), "%s", journal ? "<3>" : "mpoold: ");
	va_start(ap, fmt);
	emit(line, sizeof(line), n, true, fmt, ap);
	va_end(ap);
}

const char *log_last_error(void)
{
	return last_error;
}

void log_vmsg(int prio, const char *fmt, va_list ap)
{
	static const char *names[] = { "emerg", "alert", "crit", "error",
				       "warning", "notice", "info", "debug" };
	char line[1024];
	int n;

	if (prio > max_level)
		return;
	if (journal) {
		n = snprintf(line, sizeof(line), "<%d>", prio);
	} else {
		struct timespec ts;
		struct tm tm;

		clock_gettime(CLOCK_REALTIME, &ts);
		localtime_r(&ts.tv_sec, &tm);
		n = (int)strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
		n += snprintf(line + n, sizeof(line) - (size_t)n, ".%03ld mpoold[%d] %s: ",
			      ts.tv_nsec / 1000000, (int)getpid(), names[prio & 7]);
	}
	emit(line, sizeof(line), n, prio <= LOG_ERR, fmt, ap);
}

void log_msg(int prio, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vmsg(prio, fmt, ap);
	va_end(ap);
}
