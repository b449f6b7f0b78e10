#include "listen.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"

/* The inode we bound, so we only ever unlink our own socket. */
static ino_t bound_ino;

static int make_dirs(const char *path)
{
	char dir[sizeof(((struct sockaddr_un *)0)->sun_path)];
	char *p;

	snprintf(dir, sizeof(dir), "%s", path);
	p = strrchr(dir, '/');
	if (!p || p == dir)
		return 0;
	*p = '\0';
	for (p = dir + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(dir, 0755) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	/* The last level holds only our socket; private unless root made it. */
	if (mkdir(dir, geteuid() == 0 ? 0755 : 0700) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

/* A socket file is stale when connecting to it is refused. */
static int check_existing(const char *path, const struct sockaddr_un *sa)
{
	struct stat st;
	int fd, r;

	if (lstat(path, &st) < 0)
		return errno == ENOENT ? 0 : -errno;
	if (!S_ISSOCK(st.st_mode)) {
		log_err("%s exists and is not a socket; refusing to replace it", path);
		return -EEXIST;
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	r = connect(fd, (const struct sockaddr *)sa, sizeof(*sa));
	close(fd);
	if (r == 0) {
		log_err("another mpoold is already serving %s", path);
		return -EADDRINUSE;
	}
	if (errno != ECONNREFUSED) {
		log_err("cannot check existing socket %s: %s", path, strerror(errno));
		return -errno;
	}
	if (unlink(path) < 0)
		return -errno;
	log_info("removed stale socket %s", path);
	return 0;
}

int listen_open(const char *path, int *ret_fd)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd, r;

	if (strlen(path) >= sizeof(sa.sun_path)) {
		log_err("socket path too long (%zu bytes, at most %zu): %s", strlen(path),
			sizeof(sa.sun_path) - 1, path);
		return -ENAMETOOLONG;
	}
	memcpy(sa.sun_path, path, strlen(path) + 1);
	r = make_dirs(path);
	if (r < 0) {
		log_err("cannot create the directory of %s: %s", path, strerror(-r));
		return r;
	}
	r = check_existing(path, &sa);
	if (r < 0)
		return r;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 512) < 0) {
		r = -errno;
		log_err("cannot listen on %s: %s", path, strerror(-r));
		close(fd);
		return r;
	}
	{
		struct stat st;
		if (lstat(path, &st) == 0)
			bound_ino = st.st_ino;
	}
	*ret_fd = fd;
	return 0;
}

void listen_close(int fd, const char *path)
{
	struct stat st;

	if (fd < 0)
		return;
	close(fd);
	if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode) && st.st_ino == bound_ino)
		unlink(path);
}
