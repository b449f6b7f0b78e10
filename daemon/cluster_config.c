/* cluster_config: checks the cluster settings at start, before anything
 * runs, so that a wrong URL, an unreadable credentials file or a missing
 * cluster plugin stops mpoold with the reason (exit 2) instead of failing
 * later on the network.  It reads files but never connects. */
#include "cluster.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cluster_plugin.h"
#include "config.h"

/* Whether host (as written in a URL, an IPv6 address in brackets) is this
 * machine's loopback: plain text to it never leaves the machine. */
static bool host_is_loopback(const char *host, size_t len)
{
	char buf[64];
	struct in_addr a4;
	struct in6_addr a6;

	if (len >= sizeof(buf))
		return false;
	memcpy(buf, host, len);
	buf[len] = '\0';
	if (strcmp(buf, "localhost") == 0)
		return true;
	if (inet_pton(AF_INET, buf, &a4) == 1)
		return (ntohl(a4.s_addr) >> 24) == 127;
	if (len > 2 && buf[0] == '[' && buf[len - 1] == ']') {
		buf[len - 1] = '\0';
		if (inet_pton(AF_INET6, buf + 1, &a6) == 1)
			return IN6_IS_ADDR_LOOPBACK(&a6);
	}
	return false;
}

static int check_url(const char *url, size_t len, char *why, size_t n)
{
	const char *host, *end = url + len, *at, *colon;
	bool tls;

	if (len > 7 && strncmp(url, "nats://", 7) == 0) {
		tls = false;
		host = url + 7;
	} else if (len > 6 && strncmp(url, "tls://", 6) == 0) {
		tls = true;
		host = url + 6;
	} else {
		snprintf(why, n, "cluster-url: '%.*s' is not nats://HOST:PORT or tls://HOST:PORT",
			 (int)len, url);
		return -1;
	}
	at = memchr(host, '@', (size_t)(end - host));
	if (at) {
		/* A URL is on the command line and in --print-config for all
		 * to see; secrets belong in files only root can read. */
		snprintf(why, n, "cluster-url: no user or password in a URL; use "
			 "cluster-creds or cluster-user-file");
		return -1;
	}
	/* The port follows the last ':' unless that is inside [IPv6]. */
	colon = memrchr(host, ':', (size_t)(end - host));
	if (colon && memchr(colon, ']', (size_t)(end - colon)))
		colon = NULL;
	if (!colon)
		colon = end;
	if (colon == host) {
		snprintf(why, n, "cluster-url: '%.*s' names no host", (int)len, url);
		return -1;
	}
	if (!tls && !cfg.cluster_ca[0] && !cfg.cluster_cert[0] && !cfg.cluster_allow_plain &&
	    !host_is_loopback(host, (size_t)(colon - host))) {
		snprintf(why, n, "cluster-url: '%.*s' would send work and results unencrypted "
			 "over the network; use tls://, or set cluster-allow-plain = 1",
			 (int)len, url);
		return -1;
	}
	return 0;
}

static int check_readable(const char *key, const char *path, char *why, size_t n)
{
	if (path[0] && access(path, R_OK) < 0) {
		snprintf(why, n, "%s: cannot read %s: %s", key, path, strerror(errno));
		return -1;
	}
	return 0;
}

int cluster_read_user_file(const char *path, char *user, size_t user_size, char *pass,
			   size_t pass_size, char *why, size_t n)
{
	char line[2][512];
	FILE *f = fopen(path, "re");
	int r = -1;

	if (!f) {
		snprintf(why, n, "cluster-user-file: cannot read %s: %s", path, strerror(errno));
		return -1;
	}
	for (int i = 0; i < 2; i++) {
		if (!fgets(line[i], sizeof(line[i]), f)) {
			snprintf(why, n, "cluster-user-file: %s must hold the user name on its "
				 "first line and the password on its second", path);
			goto out;
		}
		line[i][strcspn(line[i], "\r\n")] = '\0';
	}
	if (!line[0][0] || strlen(line[0]) >= user_size || strlen(line[1]) >= pass_size) {
		snprintf(why, n, "cluster-user-file: %s: an empty or overlong user name or "
			 "password", path);
		goto out;
	}
	memcpy(user, line[0], strlen(line[0]) + 1);
	memcpy(pass, line[1], strlen(line[1]) + 1);
	r = 0;
out:
	explicit_bzero(line, sizeof(line));
	fclose(f);
	return r;
}

int cluster_config_check(char *why, size_t n)
{
	char user[256], pass[256];
	const char *p;

	if (!cfg.cluster_url[0]) {
		if (cfg.workers == 0) {
			snprintf(why, n, "workers = 0 makes a cluster gateway, which needs "
				 "cluster-url");
			return -1;
		}
		return 0;
	}
	if (cfg.cluster_creds[0] && cfg.cluster_user_file[0]) {
		snprintf(why, n, "cluster-creds and cluster-user-file: set one, not both");
		return -1;
	}
	if (!cfg.cluster_cert[0] != !cfg.cluster_key[0]) {
		snprintf(why, n, "cluster-cert and cluster-key go together");
		return -1;
	}
	if (check_readable("cluster-creds", cfg.cluster_creds, why, n) < 0 ||
	    check_readable("cluster-ca", cfg.cluster_ca, why, n) < 0 ||
	    check_readable("cluster-cert", cfg.cluster_cert, why, n) < 0 ||
	    check_readable("cluster-key", cfg.cluster_key, why, n) < 0)
		return -1;
	if (cfg.cluster_user_file[0]) {
		int r = cluster_read_user_file(cfg.cluster_user_file, user, sizeof(user), pass,
					       sizeof(pass), why, n);

		explicit_bzero(pass, sizeof(pass));
		if (r < 0)
			return -1;
	}
	for (const char *url = cfg.cluster_url;; url = p + 1) {
		size_t len;

		url += strspn(url, " ");
		p = url + strcspn(url, ",");
		len = (size_t)(p - url);
		while (len && url[len - 1] == ' ')
			len--;
		if (!len) {
			snprintf(why, n, "cluster-url: an empty URL in the list");
			return -1;
		}
		if (check_url(url, len, why, n) < 0)
			return -1;
		if (!*p)
			break;
	}
	if (!cfg.node_name[0]) {
		char host[256];

		/* Subject tokens cannot hold dots: the first label names
		 * the node. */
		if (gethostname(host, sizeof(host)) < 0) {
			snprintf(why, n, "node-name: no host name (%s); set node-name",
				 strerror(errno));
			return -1;
		}
		host[sizeof(host) - 1] = '\0';
		host[strcspn(host, ".")] = '\0';
		if (!host[0] || strlen(host) > CONFIG_NAME_MAX ||
		    host[strspn(host, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
				"0123456789-_")]) {
			snprintf(why, n, "node-name: the host name '%s' cannot name a node; set "
				 "node-name", host);
			return -1;
		}
		memcpy(cfg.node_name, host, strlen(host) + 1);
	}
	return cluster_plugin_load(why, n);
}
