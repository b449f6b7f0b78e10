/* sys/queue.h plus the one macro glibc's copy lacks. */
#ifndef TAILQ_H
#define TAILQ_H

#include <sys/queue.h>

#ifndef TAILQ_FOREACH_SAFE
#define TAILQ_FOREACH_SAFE(var, head, field, tvar)                    \
	for ((var) = TAILQ_FIRST((head));                             \
	     (var) && ((tvar) = TAILQ_NEXT((var), field), 1);         \
	     (var) = (tvar))
#endif

#endif
