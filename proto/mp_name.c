#include "mp_name.h"

#include <stdbool.h>
#include <stdint.h>

#include "mp_utf8.h"

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
	size_t l = mp_utf8_decode((const unsigned char *)s, n, &c);

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
