/* stackclone: start a child of our parent on a stack of its own.
 *
 * The zygote's workers run on a stack the zygote mapped once and never
 * touches (zygote.h, Layout), so a worker must begin life on it: clone()
 * with a new stack pointer, and the child, which has no frame to return to
 * there, calls fn at once from an entry that marks the end of the stack for
 * unwinders (C++ exceptions, backtrace(), debuggers).  A few lines of
 * assembly, written for x86_64; other architectures and AddressSanitizer
 * builds (ASan knows one stack per thread and would report a worker running
 * on another) do without: STACKCLONE_AVAILABLE is 0 there. */
#ifndef STACKCLONE_H
#define STACKCLONE_H

#include <stddef.h>

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define STACKCLONE_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define STACKCLONE_ASAN 1
#endif

#if defined(__x86_64__) && !defined(STACKCLONE_ASAN)
#define STACKCLONE_AVAILABLE 1
#else
#define STACKCLONE_AVAILABLE 0
#endif

/* Must not return. */
typedef void stackclone_fn(long a0, long a1, long a2);

/* clone(CLONE_PARENT) onto the stack [stack, stack + size) (the top 16-byte
 * aligned); the child runs fn(a0, a1, a2).  The child's exit signal is the
 * caller's own (SIGCHLD for a process its parent forked).  Returns the
 * child's pid, or -errno; -ENOSYS when !STACKCLONE_AVAILABLE. */
long stackclone_parent(void *stack, size_t size, stackclone_fn *fn, long a0, long a1, long a2);

#endif
