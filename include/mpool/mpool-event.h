/* mpool-event.h: drive a libmpool connection from a libevent loop.
 *
 * Header-only (static inline functions), so libmpool itself does not
 * depend on libevent: a program that includes this links libevent
 * (pkg-config libevent_core) besides libmpool.
 *
 *     struct mpool_event *me = mpool_event_new(base, p, on_lost, NULL);
 *     mpool_apply_async(p, "builtin.square", arg, len, NULL, on_result, on_error,
 *                       NULL, &a);
 *     event_base_dispatch(base);      callbacks run from the loop
 *     mpool_event_free(me);           before mpool_close(p)
 *
 * The helper keeps two events on mpool_fd(p), one for reading and one for
 * writing, each registered exactly while mpool_events(p) asks for it (through mpool_set_watch, so a request queued
 * anywhere makes the event wait for writability too), and calls
 * mpool_process(p) when the socket is ready.  All callbacks of the
 * connection then run from the event loop's thread, inside that
 * mpool_process call.  When the connection fails, every open request fails
 * with the cause (its error callback runs), the event is removed, and
 * on_lost (if given) is told the code (negative).  One helper per
 * connection; the helper does not own p. */
#ifndef MPOOL_MPOOL_EVENT_H
#define MPOOL_MPOOL_EVENT_H

#include <stdlib.h>
#include <event2/event.h>
#include <mpool/mpool.h>

#ifdef __cplusplus
extern "C" {
#endif

struct mpool_event {
	mpool *p;
	struct event *rd, *wr;
	int events;                          /* what is registered now */
	void (*on_lost)(void *userdata, int code);
	void *userdata;
};

static inline void mpool_event_ready_(evutil_socket_t fd, short what, void *arg)
{
	struct mpool_event *me = (struct mpool_event *)arg;
	int r;

	(void)fd;
	(void)what;
	r = mpool_process(me->p);
	if (r < 0 && me->on_lost)
		me->on_lost(me->userdata, r);
}

/* mpool_set_watch callback: registers each event while it is wanted. */
static inline void mpool_event_watch_(void *arg, int events)
{
	struct mpool_event *me = (struct mpool_event *)arg;
	int change = events ^ me->events;

	me->events = events;
	if (change & MPOOL_EV_READ) {
		if (events & MPOOL_EV_READ)
			event_add(me->rd, NULL);
		else
			event_del(me->rd);
	}
	if (change & MPOOL_EV_WRITE) {
		if (events & MPOOL_EV_WRITE)
			event_add(me->wr, NULL);
		else
			event_del(me->wr);
	}
}

/* Starts driving p from base.  on_lost may be NULL.  Returns the helper, or
 * NULL when out of memory or p is NULL. */
static inline struct mpool_event *mpool_event_new(struct event_base *base, mpool *p,
						  void (*on_lost)(void *userdata, int code),
						  void *userdata)
{
	struct mpool_event *me;

	if (!base || !p)
		return NULL;
	me = (struct mpool_event *)calloc(1, sizeof(*me));
	if (!me)
		return NULL;
	me->p = p;
	me->on_lost = on_lost;
	me->userdata = userdata;
	me->rd = event_new(base, mpool_fd(p), EV_READ | EV_PERSIST, mpool_event_ready_, me);
	me->wr = event_new(base, mpool_fd(p), EV_WRITE | EV_PERSIST, mpool_event_ready_, me);
	if (!me->rd || !me->wr) {
		if (me->rd)
			event_free(me->rd);
		if (me->wr)
			event_free(me->wr);
		free(me);
		return NULL;
	}
	/* The watch reports the current events at once: that registers them. */
	mpool_set_watch(p, mpool_event_watch_, me);
	return me;
}

/* Stops driving the connection (it stays open); accepts NULL.  Call it
 * before mpool_close() of its connection, outside the connection's
 * callbacks. */
static inline void mpool_event_free(struct mpool_event *me)
{
	if (!me)
		return;
	mpool_set_watch(me->p, NULL, NULL);
	event_free(me->rd);
	event_free(me->wr);
	free(me);
}

#ifdef __cplusplus
}
#endif
#endif
