#include "libexec.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int libexec_path(const char *name, const char *installed, int mode, char *buf, size_t size)
{
	char self[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	char *slash;

	if (n > 0) {
		self[n] = '\0';
		slash = strrchr(self, '/');
		if (slash) {
			*slash = '\0';
			if ((size_t)snprintf(buf, size, "%s/%s", self, name) < size &&
			    access(buf, mode) == 0)
				return 0;
		}
	}
	snprintf(buf, size, "%s", installed);
	return access(buf, mode) == 0 ? 0 : -errno;
}
