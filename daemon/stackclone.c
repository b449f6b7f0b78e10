/* stackclone: start a child of our parent on a stack of its own
 * (stackclone.h). */
#include <errno.h>
#include <linux/sched.h>
#include <stdint.h>
#include <sys/syscall.h>

#include "stackclone.h"

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define STACKCLONE_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define STACKCLONE_ASAN 1
#endif

#if defined(__x86_64__) && !defined(STACKCLONE_ASAN)
long stackclone_parent(void *stack, size_t size, stackclone_fn *fn, long a0, long a1, long a2)
{
	/* With CLONE_PARENT the child's exit signal is ours (the master's
	 * SIGCHLD), and clone3 wants none given. */
	struct clone_args ca = { .flags = CLONE_PARENT, .stack = (uint64_t)(uintptr_t)stack,
				 .stack_size = size };
	/* The child gets our registers but not our stack frame: everything it
	 * needs travels in registers the syscall keeps (all but rax, rcx and
	 * r11). */
	register long r12 __asm__("r12") = a0;
	register long r13 __asm__("r13") = a1;
	register long r14 __asm__("r14") = a2;
	register stackclone_fn *r15 __asm__("r15") = fn;
	long ret;

	__asm__ volatile("syscall\n\t"
			 "test %%rax, %%rax\n\t"
			 "jnz 1f\n\t"
			 /* The child, at the aligned top of its stack. */
			 "mov %%r12, %%rdi\n\t"
			 "mov %%r13, %%rsi\n\t"
			 "mov %%r14, %%rdx\n\t"
			 "call *%%r15\n\t"
			 "ud2\n"
			 "1:"
			 : "=a"(ret)
			 : "a"((long)SYS_clone3), "D"(&ca), "S"(sizeof(ca)), "r"(r12), "r"(r13),
			   "r"(r14), "r"(r15)
			 : "rcx", "r11", "memory");
	return ret;
}
#else
long stackclone_parent(void *stack, size_t size, stackclone_fn *fn, long a0, long a1, long a2)
{
	(void)stack, (void)size, (void)fn, (void)a0, (void)a1, (void)a2;
	return -ENOSYS;
}
#endif
