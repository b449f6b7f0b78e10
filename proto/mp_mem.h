/* mp_mem: memory that is about to be filled. */
#ifndef MP_MEM_H
#define MP_MEM_H

#include <stddef.h>

/* Fresh pages are faulted in one at a time as a read or a copy first
 * writes them: on a paravirtualised page table each fault costs tens of
 * microseconds, twenty times what one madvise takes per page to map them
 * all at once, and it costs next to nothing for pages already mapped.  So
 * a buffer of at least min bytes about to be filled is populated first
 * (the whole pages inside [p, p + len)).  A hint: a kernel without
 * MADV_POPULATE_WRITE (before 5.14) refuses it and the pages fault as
 * before, which changes nothing else. */
void mp_populate(void *p, size_t len, size_t min);

/* Transparent huge pages go further: a 2 MiB page is one fault, or one
 * populated entry, where 4 KiB pages are 512 (filling 64 MiB of fresh
 * memory here: 250 ms in 4 KiB pages, 7 ms in huge pages populated first).
 * MP_HUGE_PAGE is their size on x86-64 and arm64 with 4 KiB pages. */
#define MP_HUGE_PAGE ((size_t)2 << 20)

/* A private anonymous mapping for memory that is about to be filled in
 * full: len rounded up to whole MP_HUGE_PAGE (the length in *ret_len),
 * aligned to one, asked to be backed by huge pages (where the system lets
 * a program ask) and populated.  NULL with errno set when mmap fails; the
 * hints failing changes nothing else.  Unmap with munmap(p, *ret_len). */
void *mp_map_filled(size_t len, size_t *ret_len);

#endif
