/* conn_accept: who gets a connection.  Accepts clients, gives each a
 * slot within --max-clients (the last --admin-clients kept for admins,
 * --max-clients-per-uid for each other user), refuses the others with a
 * reason, and backs off while descriptors run out. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>
#include <grp.h>
#include <pwd.h>
#include <mpool/error.h>

#include "config.h"
#include "conn_int.h"
#include "log.h"
#include "master.h"
#include "mp_rpc.h"

static struct event *accept_ev, *accept_retry;
static unsigned max_clients;            /* conn_clients_allowed() */
static unsigned accept_backoff_ms;

/* At most one line per interval for a warning a client can provoke at
 * will; the lines it held back are counted in the next. */
struct ratelimit {
	uint64_t last_ms;
	unsigned held;
};

static bool ratelimit_ok(struct ratelimit *rl, unsigned interval_ms, unsigned *ret_held)
{
	uint64_t now = now_ms();

	if (rl->last_ms && now - rl->last_ms < interval_ms) {
		rl->held++;
		return false;
	}
	rl->last_ms = now;
	*ret_held = rl->held;
	rl->held = 0;
	return true;
}

static bool in_group(uid_t uid, gid_t primary, gid_t want)
{
	struct passwd pw, *res = NULL;
	char buf[4096];
	gid_t groups[256];
	int n = 256;

	if (primary == want)
		return true;
	if (getpwuid_r(uid, &pw, buf, sizeof(buf), &res) != 0 || !res)
		return false;
	if (getgrouplist(pw.pw_name, pw.pw_gid, groups, &n) < 0)
		return false;
	for (int i = 0; i < n; i++)
		if (groups[i] == want)
			return true;
	return false;
}

bool conn_cred_is_admin(uid_t uid, gid_t gid)
{
	return uid == 0 || uid == geteuid() ||
	       (cfg.admin_gid != (gid_t)-1 && in_group(uid, gid, cfg.admin_gid));
}

void conn_refuse(int fd, int code, const char *why)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;

	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	if (mp_pack_notify_head(&pk, "error") == 0 && msgpack_pack_array(&pk, 1) == 0 &&
	    mp_pack_error(&pk, code, why, -1) == 0 &&
	    send(fd, sb.data, sb.size, MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
		log_debug("could not tell a refused client why: %s", strerror(errno));
	msgpack_sbuffer_destroy(&sb);
}

/* Whether a new client may have a slot.  Returns -1, or the limit with the
 * reason in why. */
static int admit(const struct ucred *cred, char *why, size_t n_why)
{
	unsigned n = conn_count();
	/* One slot at least stays open to everyone. */
	unsigned reserve = cfg.admin_clients < max_clients ? cfg.admin_clients : max_clients - 1;

	if (n >= max_clients) {
		snprintf(why, n_why, "%u clients connected (--max-clients)", n);
		return LIM_CLIENTS;
	}
	if (n + reserve < max_clients &&
	    conn_uid_count(cred->uid) < cfg.max_clients_per_uid)
		return -1;      /* the common case: no group lookup */
	if (conn_cred_is_admin(cred->uid, cred->gid))
		return -1;
	if (n + reserve >= max_clients) {
		snprintf(why, n_why, "%u clients connected; the last %u of %u slots are for admins "
			 "(--admin-clients)", n, reserve, max_clients);
		return LIM_CLIENTS;
	}
	snprintf(why, n_why, "uid %u has %u connections (--max-clients-per-uid)",
		 (unsigned)cred->uid, cfg.max_clients_per_uid);
	return LIM_CLIENTS_PER_UID;
}

static void accept_cb(evutil_socket_t fd, short what, void *arg)
{
	struct event_base *base = arg;
	static struct ratelimit refusals, out_of_fds;
	unsigned held;

	(void)what;
	/* Bounded, so a connect storm cannot starve the clients already in. */
	for (int i = 0; i < 64; i++) {
		struct ucred cred = { 0 };
		socklen_t cl = sizeof(cred);
		char why[160];
		int cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC), l;

		if (cfd < 0) {
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
				/* Retrying at once would spin: pause accepting,
				 * longer while it lasts. */
				accept_backoff_ms = accept_backoff_ms ? accept_backoff_ms * 2 : 100;
				if (accept_backoff_ms > 5000)
					accept_backoff_ms = 5000;
				if (ratelimit_ok(&out_of_fds, 60000, &held))
					log_warn("accept: %s; pausing new connections for %u ms "
						 "(%u more like this in the last minute not logged)",
						 strerror(errno), accept_backoff_ms, held);
				event_del(accept_ev);
				timer_add_ms(accept_retry, accept_backoff_ms);
			}
			return;
		}
		accept_backoff_ms = 0;
		if (getsockopt(cfd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0) {
			/* Unknown: neither root nor anyone's share. */
			cred.uid = (uid_t)-1;
			cred.gid = (gid_t)-1;
		}
		l = admit(&cred, why, sizeof(why));
		if (l >= 0) {
			conn_limit_hit(l);
			if (ratelimit_ok(&refusals, 1000, &held))
				log_warn("refusing client pid %d uid %u: %s (%u more refused in the "
					 "last second not logged)", (int)cred.pid, (unsigned)cred.uid,
					 why, held);
			conn_refuse(cfd, MPOOL_E_LIMIT, why);
			close(cfd);
			continue;
		}
		conn_new(base, cfd, &cred);
	}
}

static void accept_retry_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	if (master_state() == MASTER_RUNNING)
		event_add(accept_ev, NULL);
}

/* Every client takes a descriptor: when RLIMIT_NOFILE cannot hold
 * --max-clients beside what workers and processes need, raise it as far
 * as the hard limit allows, else serve fewer clients, so that accept()
 * never runs out before the admins' slots do. */
static void fit_descriptors(void)
{
	uint64_t need_other = 32 + 2ull * cfg.workers + 2ull * cfg.max_processes;
	uint64_t need = need_other + cfg.max_clients;
	struct rlimit rl;

	max_clients = cfg.max_clients;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= need)
		return;
	if (rl.rlim_max == RLIM_INFINITY || rl.rlim_max > rl.rlim_cur) {
		rlim_t old = rl.rlim_cur;

		rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > need ? need : rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
			rl.rlim_cur = old;
	}
	if (rl.rlim_cur >= need)
		return;
	max_clients = rl.rlim_cur > need_other + 1 ? (unsigned)(rl.rlim_cur - need_other) : 1;
	log_warn("RLIMIT_NOFILE is %llu: serving at most %u clients, not %u (--max-clients)",
		 (unsigned long long)rl.rlim_cur, max_clients, cfg.max_clients);
}

int conn_listen(struct event_base *base, int listen_fd)
{
	fit_descriptors();
	accept_ev = event_new(base, listen_fd, EV_READ | EV_PERSIST, accept_cb, base);
	accept_retry = evtimer_new(base, accept_retry_cb, NULL);
	if (!accept_ev || !accept_retry)
		return -ENOMEM;
	return event_add(accept_ev, NULL) < 0 ? -EIO : 0;
}

void conn_stop_listening(void)
{
	if (accept_ev) {
		event_free(accept_ev);
		accept_ev = NULL;
	}
	if (accept_retry) {
		event_free(accept_retry);
		accept_retry = NULL;
	}
}

unsigned conn_clients_allowed(void)
{
	return max_clients ? max_clients : cfg.max_clients;
}
