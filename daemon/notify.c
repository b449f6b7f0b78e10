#include "notify.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <systemd/sd-daemon.h>

#include "log.h"

static bool enabled;
static uint64_t watchdog_usec;
static int listen_fd = -1;

static int take_passed_socket(void)
{
	int n = sd_listen_fds(1), fl;

	if (n < 0) {
		log_err("cannot use the sockets systemd passed (LISTEN_FDS): %s", strerror(-n));
		return n;
	}
	if (n == 0)
		return 0;
	if (n > 1) {
		log_err("systemd passed %d sockets; mpoold serves exactly one "
			"(one ListenStream= in mpoold.socket)", n);
		for (int i = 0; i < n; i++)
			close(SD_LISTEN_FDS_START + i);
		return -EINVAL;
	}
	if (sd_is_socket_unix(SD_LISTEN_FDS_START, SOCK_STREAM, 1, NULL, 0) <= 0) {
		log_err("the socket systemd passed is not a listening Unix stream socket "
			"(mpoold.socket needs ListenStream=/path)");
		close(SD_LISTEN_FDS_START);
		return -EINVAL;
	}
	fl = fcntl(SD_LISTEN_FDS_START, F_GETFL);
	if (fl < 0 || fcntl(SD_LISTEN_FDS_START, F_SETFL, fl | O_NONBLOCK) < 0 ||
	    fcntl(SD_LISTEN_FDS_START, F_SETFD, FD_CLOEXEC) < 0) {
		int e = errno;

		log_err("cannot set up the socket systemd passed: %s", strerror(e));
		close(SD_LISTEN_FDS_START);
		return -e;
	}
	listen_fd = SD_LISTEN_FDS_START;
	return 0;
}

int notify_init(void)
{
	const char *s = getenv("NOTIFY_SOCKET");

	enabled = s && *s;
	if (sd_watchdog_enabled(1, &watchdog_usec) <= 0)
		watchdog_usec = 0;
	return take_passed_socket();
}

bool notify_enabled(void)
{
	return enabled;
}

int notify_take_listen_fd(void)
{
	int fd = listen_fd;

	listen_fd = -1;
	return fd;
}

uint64_t notify_watchdog_usec(void)
{
	return enabled ? watchdog_usec : 0;
}

__attribute__((format(printf, 1, 2)))
static void send_msg(const char *fmt, ...)
{
	char msg[800];
	va_list ap;
	int r;

	if (!enabled)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	r = sd_notify(0, msg);
	if (r < 0)
		log_debug("sd_notify: %s", strerror(-r));
}

void notify_ready(const char *status)
{
	send_msg("READY=1\nSTATUS=%s", status);
}

void notify_reloading(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	send_msg("RELOADING=1\nMONOTONIC_USEC=%llu",
		 (unsigned long long)ts.tv_sec * 1000000ull + (unsigned long long)ts.tv_nsec / 1000);
}

void notify_stopping(void)
{
	send_msg("STOPPING=1");
}

void notify_watchdog(void)
{
	send_msg("WATCHDOG=1");
}

void notify_status(const char *text)
{
	send_msg("STATUS=%s", text);
}
