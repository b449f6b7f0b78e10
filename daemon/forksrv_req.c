/* forksrv_req: the requests for workers, kept in a FIFO because the fork
 * server answers in order; their answers, the deaths it reports, and the
 * deadline of the oldest answer due. */
#include "forksrv_int.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "master.h"
#include "mem.h"

static forksrv_forked_fn *z_forked;
static forksrv_exited_fn *z_exited;
static struct event *z_timer;     /* the oldest answer's deadline */

/* Requests not answered, oldest first.  The first pend_sent were sent to
 * forksrv_cur; the rest wait for room in the channel (it holds a few
 * hundred: --workers may ask for more at once). */
struct pending {
	void *token;
	uint64_t quota;
	bool resent;              /* a fork server was lost with it once already */
};
static struct pending *pend;
static unsigned pend_cap, pend_head, pend_n, pend_sent;

static void pend_push(struct pending p)
{
	pend[(pend_head + pend_n) % pend_cap] = p;
	pend_n++;
}

static struct pending pend_pop(void)
{
	struct pending p = pend[pend_head];

	pend_head = (pend_head + 1) % pend_cap;
	pend_n--;
	return p;
}

/* 0, -EAGAIN when the channel is full, or -errno. */
static int send_req(uint64_t quota)
{
	struct forksrv_req req = { .quota = quota };

	if (send(forksrv_cur->fd, &req, sizeof(req), MSG_NOSIGNAL | MSG_DONTWAIT) !=
	    (ssize_t)sizeof(req))
		return errno == EWOULDBLOCK ? -EAGAIN : -errno;
	return 0;
}

void forksrv_arm_timer(void)
{
	if (pend_sent > 0)
		timer_add_ms(z_timer, FORKSRV_REPLY_MS);
	else
		evtimer_del(z_timer);
}

void forksrv_pump(void)
{
	bool was_idle = pend_sent == 0;

	/* One that has not said hello yet is sent nothing: it may never. */
	while (forksrv_cur && forksrv_cur->ready && forksrv_cur->fd >= 0 && pend_sent < pend_n) {
		int r = send_req(pend[(pend_head + pend_sent) % pend_cap].quota);

		if (r == -EAGAIN)
			break;
		if (r < 0) {
			forksrv_lost_soon("it does not take requests");   /* dead, not reaped yet */
			break;
		}
		pend_sent++;
	}
	if (was_idle && pend_sent > 0)
		forksrv_arm_timer();
}

int forksrv_take(struct forksrv_srv *s)
{
	if (!s->ready)
		return 0;
	while (s->fd >= 0) {
		struct forksrv_rep rep;
		struct pending p;
		int fd, r = forksrv_recv_rep(s->fd, &rep, &fd, MSG_DONTWAIT);

		if (r == -EAGAIN)
			return 0;
		if (r < 0)
			return r;
		if (rep.kind == FORKSRV_EXITED && fd < 0) {
			z_exited(rep.pid, rep.status);
			continue;
		}
		if (rep.kind != FORKSRV_FORKED || s != forksrv_cur || pend_sent == 0) {
			if (fd >= 0)
				close(fd);
			return -EPROTO;
		}
		p = pend_pop();
		pend_sent--;
		if (rep.err == 0 && fd >= 0 && rep.pid > 0) {
			z_forked(p.token, 0, rep.pid, fd);
			continue;
		}
		if (fd >= 0)
			close(fd);
		if (rep.err < 0) {
			z_forked(p.token, rep.err, 0, -1);      /* its fork failed */
			continue;
		}
		/* Unreadable, but it was the oldest request's answer, which
		 * fails, so the next answer still goes to its own request. */
		z_forked(p.token, -EPROTO, 0, -1);
		return -EPROTO;
	}
	return -ECONNRESET;
}

void forksrv_fail_pending(int err)
{
	pend_sent = 0;
	if (z_timer)
		evtimer_del(z_timer);
	while (pend_n > 0) {
		struct pending p = pend_pop();

		z_forked(p.token, err, 0, -1);
	}
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	if (pend_sent > 0)
		forksrv_lost("it did not answer in time");
}

int forksrv_req_init(struct event_base *base, forksrv_forked_fn *forked,
		     forksrv_exited_fn *exited, unsigned max_pending)
{
	z_forked = forked;
	z_exited = exited;
	pend_cap = max_pending ? max_pending : 1;
	pend = xcalloc(pend_cap, sizeof(*pend));
	pend_head = pend_n = pend_sent = 0;
	z_timer = evtimer_new(base, timer_cb, NULL);
	return z_timer ? 0 : -ENOMEM;
}

void forksrv_req_free(void)
{
	if (z_timer)
		event_free(z_timer);
	z_timer = NULL;
	free(pend);
	pend = NULL;
	pend_cap = 0;
}

unsigned forksrv_sent(void)
{
	return pend_sent;
}

void forksrv_resend(void)
{
	unsigned n, sent;
	int r;

	/* The lost one was shut, which delivered what it had answered: the
	 * first pend_sent of what waits it was sent and never answered. */
	sent = pend_sent;
	pend_sent = 0;
	if (pend_n == 0) {
		forksrv_arm_timer();
		return;             /* the next request starts a new one */
	}
	r = forksrv_start();
	n = pend_n;
	for (unsigned i = 0; i < n; i++) {
		struct pending p = pend_pop();

		if (r == 0 && !(i < sent && p.resent)) {
			p.resent = p.resent || i < sent;
			pend_push(p);
		} else {
			z_forked(p.token, r == 0 ? -EIO : forksrv_broken ? -ENOTCONN : r, 0, -1);
		}
	}
	forksrv_pump();
	forksrv_arm_timer();
}

int forksrv_request(uint64_t quota, void *token)
{
	int r;

	if (pend_n == pend_cap)
		return -ENOBUFS;
	if (!forksrv_cur) {
		r = forksrv_start();
		if (r < 0)
			return forksrv_broken ? -ENOTCONN : r;
	}
	pend_push((struct pending){ token, quota, false });
	forksrv_pump();
	return 0;
}
