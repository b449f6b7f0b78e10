/* forksrv_int: shared by forksrv.c, the life of a fork server, and
 * forksrv_req.c, the requests for workers and what answers them. */
#ifndef FORKSRV_INT_H
#define FORKSRV_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "forksrv.h"

struct event_base;

/* A fork server that has not answered a fork by then is taken for hung.
 * Loading the modules may take much longer (a Python import):
 * --fork-server-timeout bounds that, and the master serves meanwhile. */
#define FORKSRV_REPLY_MS 2000

/* One fork server process.  Until its hello and names are in it is sent
 * nothing and has no workers. */
struct forksrv_srv {
	pid_t pid;                /* 0: reaped already */
	int status;               /* then its wait status; -1: unknown */
	int fd;                   /* -1: closed */
	struct event *read;
	bool hello;               /* its hello is in; names_len bytes of names follow */
	bool ready;               /* the names too: it takes requests */
	size_t names_len;
	uint64_t started_ms;
};

/* forksrv.c.  The one that takes requests, or NULL. */
extern struct forksrv_srv *forksrv_cur;
/* It could not start for a reason that does not go away by itself:
 * workers fork from the master until the next reload. */
extern bool forksrv_broken;
/* One message on fd, and the descriptor that came with it (-1 if none):
 * 0; -EAGAIN when none is waiting and flags has MSG_DONTWAIT;
 * -ECONNRESET at the end of the stream. */
int forksrv_recv_rep(int fd, struct forksrv_rep *rep, int *ret_fd, int flags);
/* The current fork server died, broke its channel or stopped answering:
 * it is killed, and what it had not answered goes to a new one. */
void forksrv_lost(const char *why);
/* The same, from the loop at once: answering here would re-enter the
 * caller (a request, a reap). */
void forksrv_lost_soon(const char *why);

/* forksrv_req.c.  0, or -ENOMEM. */
int forksrv_req_init(struct event_base *base, forksrv_forked_fn *forked,
		     forksrv_exited_fn *exited, unsigned max_pending);
void forksrv_req_free(void);
/* Sends what waits to forksrv_cur, once it is ready, as far as its channel
 * takes it; the rest goes when answers have made room. */
void forksrv_pump(void);
/* While answers are due, the oldest must come within FORKSRV_REPLY_MS of
 * the last progress: arms that deadline, else disarms it. */
void forksrv_arm_timer(void);
/* Delivers every answer and death s has sent: 0 when none is left
 * waiting, -ECONNRESET at the end of its stream, another -errno when the
 * channel broke or carried nonsense.  One that is not ready has no workers
 * and was asked nothing: its hello is forksrv.c's to take. */
int forksrv_take(struct forksrv_srv *s);
/* Answers every request with err, sent or not: no answer is due. */
void forksrv_fail_pending(int err);
/* Requests sent to forksrv_cur and not answered yet. */
unsigned forksrv_sent(void);
/* After forksrv_cur was lost and shut: what it had not answered goes to a
 * new one, but a request lost twice fails. */
void forksrv_resend(void);

#endif
