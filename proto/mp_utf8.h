/* mp_utf8: one reader of UTF-8, for the places that must judge text from
 * clients and tasks (process names, JSON output). */
#ifndef MP_UTF8_H
#define MP_UTF8_H

#include <stddef.h>
#include <stdint.h>

/* The length of the well-formed UTF-8 sequence at s (n > 0 bytes left),
 * with its code point in *cp; 0 when it is not well formed: no overlong
 * forms, no surrogates, nothing past U+10FFFF (the rules jansson enforces). */
size_t mp_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp);

#endif
