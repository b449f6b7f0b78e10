/* stackclone: start a child of our parent on a stack of its own
 * (stackclone.h). */
#include <errno.h>
#include <sched.h>
#include <stdint.h>
#include <sys/syscall.h>

#include "stackclone.h"

#if STACKCLONE_AVAILABLE
/* The child's first instructions, on its new stack.  The CFI says there is
 * no caller (the return address is undefined) and rbp is cleared, so
 * unwinders, by tables or by frame pointers, stop here instead of reading
 * past the top of the stack.  A global but hidden symbol: with LTO this
 * block and the jump to it may land in different partitions. */
__asm__(".pushsection .text\n"
	".globl stackclone_child\n"
	".hidden stackclone_child\n"
	".type stackclone_child, @function\n"
	"stackclone_child:\n"
	".cfi_startproc\n"
	".cfi_undefined rip\n"
	"xor %ebp, %ebp\n"
	"mov %r12, %rdi\n"
	"mov %r13, %rsi\n"
	"mov %r14, %rdx\n"
	"call *%r15\n"
	"ud2\n"
	".cfi_endproc\n"
	".size stackclone_child, .-stackclone_child\n"
	".popsection\n");

long stackclone_parent(void *stack, size_t size, stackclone_fn *fn, long a0, long a1, long a2)
{
	/* Before the register variables: nothing may run between their
	 * assignment and the asm. */
	char *top = (char *)stack + size;
	/* The old clone(2), not clone3: systemd's RestrictNamespaces= and
	 * container runtimes answer clone3 with ENOSYS, since a filter cannot
	 * look into its arguments.  With CLONE_PARENT the exit signal given is
	 * ignored for the caller's own. */
	register long r10 __asm__("r10") = 0;     /* child_tid */
	register long r8 __asm__("r8") = 0;       /* tls */
	/* The child gets our registers but not our stack: what it needs
	 * travels in registers the syscall keeps (all but rax, rcx, r11). */
	register long r12 __asm__("r12") = a0;
	register long r13 __asm__("r13") = a1;
	register long r14 __asm__("r14") = a2;
	register stackclone_fn *r15 __asm__("r15") = fn;
	long ret;

	__asm__ volatile("syscall\n\t"
			 "test %%rax, %%rax\n\t"
			 "jz stackclone_child\n\t"
			 : "=a"(ret)
			 : "a"((long)SYS_clone), "D"((long)CLONE_PARENT), "S"(top), "d"(0L),
			   "r"(r10), "r"(r8), "r"(r12), "r"(r13), "r"(r14), "r"(r15)
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
