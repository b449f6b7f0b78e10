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

#endif
