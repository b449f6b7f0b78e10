/* mp_name: the rule for a supervised process's name, shared by mpoold
 * (which enforces it) and libmpool (which refuses early what mpoold would
 * refuse): 1 to MP_NAME_MAX characters of well-formed UTF-8, none of them
 * a control character (C0, DEL, C1), a line or paragraph separator, or a
 * bidirectional formatting character (which would reorder what a terminal
 * shows after it).  Names travel to every client's status, so one bad name
 * must not make every strict decoder fail. */
#ifndef MP_NAME_H
#define MP_NAME_H

#include <stddef.h>

/* Characters (Unicode code points), not bytes. */
#define MP_NAME_MAX 64

/* The number of characters of name (len bytes, not NUL-terminated) when it
 * is a valid name, else -1. */
int mp_name_check(const char *name, size_t len);

/* The length of the character at s (n > 0 bytes left) when it is well-formed
 * UTF-8 and allowed in a name, else 0: what a display may print as it is
 * (anything else it should escape). */
size_t mp_name_char(const char *s, size_t n);

#endif
