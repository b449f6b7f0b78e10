#include "mp_mem.h"

#include <errno.h>
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

void *mp_map_filled(size_t len, size_t *ret_len)
{
	size_t total, extra;
	uint8_t *raw, *p;

	if (len == 0 || len > SIZE_MAX - 2 * MP_HUGE_PAGE) {
		errno = ENOMEM;
		return NULL;
	}
	total = (len + MP_HUGE_PAGE - 1) & ~(MP_HUGE_PAGE - 1);
	/* One huge page more than asked, so that an aligned start is in it;
	 * the rest is given back at once. */
	raw = mmap(NULL, total + MP_HUGE_PAGE, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (raw == MAP_FAILED)
		return NULL;
	p = (uint8_t *)(((uintptr_t)raw + MP_HUGE_PAGE - 1) & ~(uintptr_t)(MP_HUGE_PAGE - 1));
	if (p > raw)
		munmap(raw, (size_t)(p - raw));
	extra = (size_t)(raw + total + MP_HUGE_PAGE - (p + total));
	if (extra > 0)
		munmap(p + total, extra);
#ifdef MADV_HUGEPAGE
	(void)madvise(p, total, MADV_HUGEPAGE);
#endif
	mp_populate(p, total, 0);
	*ret_len = total;
	return p;
}
