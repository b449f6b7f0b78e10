#include "listen.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "notify.h"

/* The inode we bound, so we only ever unlink our own socket; 0 when the
 * socket came from systemd, which owns its file. */
static ino_t bound_ino;
static char name[sizeof(((struct sockaddr_un *)0)->sun_path) + 1];

const char *listen_name(void)
{
	return name;
}

/* The socket's directory: searchable by those the socket's mode lets in,
 * private otherwise (root's, like /run/mpool, is 0755). */
static mode_t dir_mode(void)
{
	if (geteuid() == 0)
		return 0755;
	return 0700 | ((cfg.socket_mode & 0060) ? 0010 : 0) | ((cfg.socket_mode & 0006) ? 0001 : 0);
}

static const char *file_kind(mode_t m)
{
	return S_ISREG(m) ? "a regular file" : S_ISLNK(m) ? "a symbolic link"
	       : S_ISDIR(m) ? "a directory" : "not a socket";
}

/* The per-user directories of the default socket path (mp_path.c) must be
 * mpoold's alone, so no other user can swap the socket for theirs.  Other
 * directories are the operator's choice (--socket, MPOOL_SOCKET, root's
 * /run/mpool) and only have to be safe from users but their owner and root. */
static bool private_dir(const char *dir)
{
	char want[sizeof(((struct sockaddr_un *)0)->sun_path) + 16];
	const char *xdg = getenv("XDG_RUNTIME_DIR");

	if (geteuid() == 0)
		return false;
	snprintf(want, sizeof(want), "/tmp/mpool-%u", (unsigned)geteuid());
	if (strcmp(dir, want) == 0)
		return true;
	if (xdg && *xdg) {
		snprintf(want, sizeof(want), "%s/mpool", xdg);
		if (strcmp(dir, want) == 0)
			return true;
	}
	return false;
}

/* Refuses a socket directory another user could use to put their own
 * socket in place of ours (as tmux checks its socket directory). */
static int check_dir(const char *dir)
{
	bool priv = private_dir(dir);
	struct stat st;
	int e;

	if ((priv ? lstat(dir, &st) : stat(dir, &st)) < 0) {
		e = errno;
		log_err("cannot look at socket directory %s: %s", dir, strerror(e));
		return -e;
	}
	if (S_ISLNK(st.st_mode)) {
		log_err("socket directory %s is a symbolic link; refusing it (remove it, or pass "
			"--socket)", dir);
		return -ELOOP;
	}
	if (!S_ISDIR(st.st_mode)) {
		log_err("socket directory %s is not a directory; refusing it (remove it, or "
			"pass --socket)", dir);
		return -ENOTDIR;
	}
	if (priv && st.st_uid != geteuid()) {
		log_err("socket directory %s belongs to uid %u, not to mpoold's uid %u; another "
			"user made it: refusing it (remove it, or pass --socket)", dir,
			(unsigned)st.st_uid, (unsigned)geteuid());
		return -EPERM;
	}
	if (priv && (st.st_mode & 077 & ~dir_mode())) {
		log_err("socket directory %s has mode %04o; other users must have no access "
			"(0700): refusing it (chmod 0700 it, or remove it)", dir,
			(unsigned)(st.st_mode & 07777));
		return -EPERM;
	}
	if (!priv && st.st_uid != geteuid() && st.st_uid != 0) {
		log_err("socket directory %s belongs to uid %u, neither mpoold's uid %u nor root: "
			"refusing it", dir, (unsigned)st.st_uid, (unsigned)geteuid());
		return -EPERM;
	}
	if (!priv && (st.st_mode & 022) && !(st.st_mode & S_ISVTX)) {
		log_err("socket directory %s has mode %04o: other users could replace the socket; "
			"refusing it (remove their write permission, or set the sticky bit)", dir,
			(unsigned)(st.st_mode & 07777));
		return -EPERM;
	}
	return 0;
}

static int make_dirs(const char *path)
{
	char dir[sizeof(((struct sockaddr_un *)0)->sun_path)];
	char *p, *end;

	snprintf(dir, sizeof(dir), "%s", path);
	end = strrchr(dir, '/');
	if (!end || end == dir)
		return 0;
	*end = '\0';
	/* Each directory of the path in turn; the socket's own (at end) gets
	 * the mode its clients need. */
	for (p = dir + 1; p <= end; p++) {
		if (*p != '/' && p != end)
			continue;
		*p = '\0';
		if (mkdir(dir, p == end ? dir_mode() : 0755) < 0 && errno != EEXIST) {
			int e = errno;

			log_err("cannot create directory %s for the socket: %s", dir, strerror(e));
			return -e;
		}
		if (p != end)
			*p = '/';
	}
	return check_dir(dir);
}

/* A socket file is stale when connecting to it is refused.  The probe does
 * not block: a live daemon with a full backlog answers EAGAIN. */
static int check_existing(const char *path, const struct sockaddr_un *sa)
{
	struct stat st;
	int fd, r, e;

	if (lstat(path, &st) < 0) {
		if (errno == ENOENT)
			return 0;
		e = errno;
		log_err("cannot look at %s: %s", path, strerror(e));
		return -e;
	}
	if (!S_ISSOCK(st.st_mode)) {
		log_err("%s exists and is %s; refusing to replace it", path, file_kind(st.st_mode));
		return -EEXIST;
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	r = connect(fd, (const struct sockaddr *)sa, sizeof(*sa));
	e = errno;
	close(fd);
	if (r == 0 || e == EAGAIN || e == EINPROGRESS) {
		log_err("another mpoold is already serving %s; not starting a second one", path);
		return -EADDRINUSE;
	}
	if (e != ECONNREFUSED) {
		log_err("cannot tell whether %s is still in use (%s); remove it if it is stale",
			path, strerror(e));
		return -e;
	}
	if (unlink(path) < 0) {
		e = errno;
		log_err("cannot remove stale socket %s: %s", path, strerror(e));
		return -e;
	}
	log_info("removed stale socket %s", path);
	return 0;
}

/* The socket gets its mode at bind time (through the umask, so it never
 * exists with wider permissions), and its group before listen(), so no
 * client can connect before both are right. */
static int bind_socket(int fd, const char *path, const struct sockaddr_un *sa)
{
	mode_t old = umask(0777 & ~(mode_t)cfg.socket_mode);
	int r = bind(fd, (const struct sockaddr *)sa, sizeof(*sa)), e = errno;

	umask(old);
	if (r < 0) {
		if (e == EACCES || e == EROFS)
			log_err("cannot create socket %s: %s (its directory must be writable by "
				"uid %u)", path, strerror(e), (unsigned)geteuid());
		else
			log_err("cannot create socket %s: %s", path, strerror(e));
		return -e;
	}
	if (cfg.socket_gid != (gid_t)-1 && lchown(sa->sun_path, (uid_t)-1, cfg.socket_gid) < 0) {
		e = errno;
		log_err("cannot give socket %s to group %u: %s", sa->sun_path,
			(unsigned)cfg.socket_gid, strerror(e));
		unlink(sa->sun_path);
		return -e;
	}
	return 0;
}

static int adopt_passed(int fd, int *ret_fd)
{
	struct sockaddr_un sa;
	socklen_t len = sizeof(sa);

	memset(&sa, 0, sizeof(sa));
	if (getsockname(fd, (struct sockaddr *)&sa, &len) == 0 && len > sizeof(sa_family_t)) {
		if (sa.sun_path[0])
			snprintf(name, sizeof(name), "%.*s", (int)sizeof(sa.sun_path), sa.sun_path);
		else
			snprintf(name, sizeof(name), "@%.*s", (int)(len - sizeof(sa_family_t) - 1),
				 sa.sun_path + 1);
	} else {
		snprintf(name, sizeof(name), "(a socket passed by systemd)");
	}
	bound_ino = 0;
	log_info("socket activation: serving %s", name);
	*ret_fd = fd;
	return 0;
}

int listen_open(const char *path, int *ret_fd)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct stat st;
	int fd, r;

	fd = notify_take_listen_fd();
	if (fd >= 0)
		return adopt_passed(fd, ret_fd);
	snprintf(name, sizeof(name), "%s", path);
	if (strlen(path) >= sizeof(sa.sun_path)) {
		log_err("socket path too long (%zu bytes, at most %zu): %s", strlen(path),
			sizeof(sa.sun_path) - 1, path);
		return -ENAMETOOLONG;
	}
	memcpy(sa.sun_path, path, strlen(path) + 1);
	r = make_dirs(path);
	if (r < 0)
		return r;
	r = check_existing(path, &sa);
	if (r < 0)
		return r;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0) {
		r = -errno;
		log_err("cannot create a socket: %s", strerror(-r));
		return r;
	}
	r = bind_socket(fd, path, &sa);
	if (r < 0) {
		close(fd);
		return r;
	}
	if (lstat(path, &st) == 0)
		bound_ino = st.st_ino;
	if (listen(fd, 512) < 0) {
		r = -errno;
		log_err("cannot listen on %s: %s", path, strerror(-r));
		listen_close(fd, path);
		return r;
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
	if (bound_ino && lstat(path, &st) == 0 && S_ISSOCK(st.st_mode) && st.st_ino == bound_ino)
		unlink(path);
	bound_ino = 0;
}
