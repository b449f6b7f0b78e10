/* cluster: mpoold nodes sharing work through NATS JetStream.  Only used
 * when cluster-url is set; without it nothing here runs and libnats is
 * never initialised. */
#ifndef CLUSTER_H
#define CLUSTER_H

#include <stddef.h>

/* Checks the cluster settings in cfg (URLs, files, names) and fills in
 * the default node name.  0, or -1 with the reason in why.  Without
 * cluster-url it only checks that workers is not 0. */
int cluster_config_check(char *why, size_t why_size);

/* Reads cluster-user-file: the user name on its first line, the password on
 * its second.  0, or -1 with the reason in why. */
int cluster_read_user_file(const char *path, char *user, size_t user_size, char *pass,
			   size_t pass_size, char *why, size_t why_size);

#endif
