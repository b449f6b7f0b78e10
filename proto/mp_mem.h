/* mp_mem: memory that is about to be filled. */
#ifndef MP_MEM_H
#define MP_MEM_H

#include <stddef.h>

/* Populates the whole pages inside [p, p + len) when len >= min, since one
 * madvise maps them for much less than faulting them in one by one as they
 * are first written.  A hint: a kernel without MADV_POPULATE_WRITE (before
 * 5.14) refuses it and the pages fault as before. */
void mp_populate(void *p, size_t len, size_t min);

/* A huge page is one fault or one populated entry where 4 KiB pages are
 * 512.  MP_HUGE_PAGE is their size on x86-64 and arm64 with 4 KiB pages. */
#define MP_HUGE_PAGE ((size_t)2 << 20)

/* A private anonymous mapping for memory that is about to be filled in
 * full: len rounded up to whole MP_HUGE_PAGE (the length in *ret_len),
 * aligned to one, asked to be backed by huge pages (where the system lets
 * a program ask) and populated.  NULL with errno set when mmap fails; the
 * hints failing changes nothing else.  Unmap with munmap(p, *ret_len). */
void *mp_map_filled(size_t len, size_t *ret_len);

#endif
