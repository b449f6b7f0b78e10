#include "mp_name.h"

#include <stdbool.h>
#include <stdint.h>

/* The code point of the well-formed UTF-8 sequence at s (n bytes left) in
 * *cp, and its length; 0 when it is not well formed: no overlong forms, no
 * surrogates, nothing past U+10FFFF. */
static size_t utf8_decode(const unsigned char *s, size_t n, uint32_t *cp)
{
	unsigned char lo = 0x80, hi = 0xbf;
	size_t len;
	uint32_t c;

	if (s[0] < 0x80) {
		*cp = s[0];
		return 1;
	}
	if (s[0] >= 0xc2 && s[0] <= 0xdf) {
		len = 2;
		c = s[0] & 0x1f;
	} else if (s[0] >= 0xe0 && s[0] <= 0xef) {
		len = 3;
		c = s[0] & 0x0f;
	} else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
		len = 4;
		c = s[0] & 0x07;
	} else {
		return 0;
	}
	if (s[0] == 0xe0)
		lo = 0xa0;
	else if (s[0] == 0xed)
		hi = 0x9f;
	else if (s[0] == 0xf0)
		lo = 0x90;
	else if (s[0] == 0xf4)
		hi = 0x8f;
	if (n < len || s[1] < lo || s[1] > hi)
		return 0;
	for (size_t i = 1; i < len; i++) {
		if (s[i] < 0x80 || s[i] > 0xbf)
			return 0;
		c = (c << 6) | (s[i] & 0x3f);
	}
	*cp = c;
	return len;
}

/* Characters a terminal or a log would not show as themselves. */
static bool unprintable(uint32_t c)
{
	return c < 0x20 || (c >= 0x7f && c <= 0x9f) ||   /* C0, DEL, C1 */
	       c == 0x2028 || c == 0x2029 ||               /* line, paragraph separator */
	       c == 0x061c || c == 0x200e || c == 0x200f || /* bidi marks */
	       (c >= 0x202a && c <= 0x202e) || (c >= 0x2066 && c <= 0x2069);
}

size_t mp_name_char(const char *s, size_t n)
{
	uint32_t c;
	size_t l = utf8_decode((const unsigned char *)s, n, &c);

	return l && !unprintable(c) ? l : 0;
}

int mp_name_check(const char *name, size_t len)
{
	size_t i = 0;
	int chars = 0;

	while (i < len) {
		size_t l = mp_name_char(name + i, len - i);

		if (l == 0 || ++chars > MP_NAME_MAX)
			return -1;
		i += l;
	}
	return chars > 0 ? chars : -1;
}
