/* stackclone: start a child of our parent on a stack of its own.
 *
 * The zygote's workers run on a stack the zygote mapped once and never
 * touches (zygote.h says why), so a worker must begin life on it: clone3()
 * switches the stack, and the child, which has no frame to return to there,
 * calls fn at once.  Done in a few lines of assembly, on x86_64 only; a
 * build with AddressSanitizer does not use it either (ASan knows one stack
 * per thread and would report a worker running on another one). */
#ifndef STACKCLONE_H
#define STACKCLONE_H

#include <stddef.h>

/* Must not return. */
typedef void stackclone_fn(long a0, long a1, long a2);

/* clone3(CLONE_PARENT) with the stack [stack, stack + size) (the top
 * 16-byte aligned); the child runs fn(a0, a1, a2).  The parent gets the
 * child's pid, or -errno: -ENOSYS where this cannot be done (architecture,
 * sanitizer, a kernel without clone3), -EPERM when a seccomp filter said
 * no.  Either means: fork the usual way instead. */
long stackclone_parent(void *stack, size_t size, stackclone_fn *fn, long a0, long a1, long a2);

#endif
