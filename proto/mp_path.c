#include "mp_path.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int mp_default_socket_path(char *buf, size_t size)
{
	const char *env = getenv("MPOOL_SOCKET");
	int n;

	if (env && *env)
		n = snprintf(buf, size, "%s", env);
	else if (geteuid() == 0)
		n = snprintf(buf, size, "/run/mpool/mpoold.sock");
	else if ((env = getenv("XDG_RUNTIME_DIR")) && *env)
		n = snprintf(buf, size, "%s/mpool/mpoold.sock", env);
	else
		n = snprintf(buf, size, "/tmp/mpool-%u/mpoold.sock", (unsigned)geteuid());
	return n < 0 || (size_t)n >= size ? -ENAMETOOLONG : 0;
}

int mp_client_socket_path(char *buf, size_t size)
{
	static const char system_path[] = "/run/mpool/mpoold.sock";
	const char *env = getenv("MPOOL_SOCKET");
	int r = mp_default_socket_path(buf, size);

	if (r < 0 || (env && *env) || geteuid() == 0)
		return r;
	if (access(buf, F_OK) < 0 && access(system_path, F_OK) == 0) {
		if (size < sizeof(system_path))
			return -ENAMETOOLONG;
		memcpy(buf, system_path, sizeof(system_path));
	}
	return 0;
}
