#include "mp_mem.h"

#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

void mp_populate(void *p, size_t len, size_t min)
{
#ifdef MADV_POPULATE_WRITE
	static uintptr_t page;
	uintptr_t a, e;

	if (len < min)
		return;
	if (!page)
		page = (uintptr_t)sysconf(_SC_PAGESIZE);
	a = ((uintptr_t)p + page - 1) & ~(page - 1);
	e = ((uintptr_t)p + len) & ~(page - 1);
	if (e > a)
		(void)madvise((void *)a, e - a, MADV_POPULATE_WRITE);
#else
	(void)p;
	(void)len;
	(void)min;
#endif
}
