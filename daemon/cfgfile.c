#include "cfgfile.h"

#include <errno.h>
#include <ini.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "options.h"

#define MAX_OPTS 64

/* One parse.  inih calls our reader for every line and the handler for
 * every key right after the reader returned that key's line, so lineno is
 * the handler's line too.  The reader is where we see what inih hides from
 * handlers (built without line numbers or section events): line numbers,
 * over-long lines, and each [module] header, which starts a new module even
 * when the previous section had the same name. */
struct cf {
	FILE *f;
	char *buf;
	size_t cap;
	unsigned lineno;
	unsigned seen[MAX_OPTS];        /* line of each global key, 0: not yet */
	unsigned module_line;           /* header of the current [module], 0: none */
	unsigned path_line, initargs_line;
	unsigned err_line;              /* 0: no error yet */
	char why[256];
};

__attribute__((format(printf, 2, 3)))
static void fail(struct cf *cf, const char *fmt, ...)
{
	va_list ap;

	if (cf->err_line)
		return;
	cf->err_line = cf->lineno;
	va_start(ap, fmt);
	vsnprintf(cf->why, sizeof(cf->why), fmt, ap);
	va_end(ap);
}

/* A [module] section ends at the next header or at the end of the file;
 * the error is on its header's line. */
static void end_module(struct cf *cf)
{
	if (!cf->module_line || cf->path_line || cf->err_line)
		return;
	cf->err_line = cf->module_line;
	snprintf(cf->why, sizeof(cf->why), "[module] without a path");
}

static void begin_section(struct cf *cf, const char *p)
{
	const char *end = strchr(p, ']');
	size_t len = end ? (size_t)(end - p - 1) : 0;

	end_module(cf);
	if (!end) {
		fail(cf, "expected ']' to end the section name");
		return;
	}
	if (len != strlen("module") || strncmp(p + 1, "module", len) != 0) {
		fail(cf, "unknown section [%.*s]; the only section is [module]", (int)len, p + 1);
		return;
	}
	end += 1 + strspn(end + 1, " \t");
	if (*end && *end != '#' && *end != ';') {
		fail(cf, "unexpected text after [module]");
		return;
	}
	if (!config_module_add()) {
		fail(cf, "more than %d [module] sections", CONFIG_MAX_MODULES);
		return;
	}
	cf->module_line = cf->lineno;
	cf->path_line = cf->initargs_line = 0;
}

static char *cf_read(char *str, int num, void *stream)
{
	struct cf *cf = stream;
	ssize_t n;
	size_t len;
	char *p;

	if (cf->err_line)
		return NULL;            /* stop at the first error */
	n = getline(&cf->buf, &cf->cap, cf->f);
	if (n < 0)
		return NULL;
	cf->lineno++;
	p = cf->buf;
	len = (size_t)n;
	if (memchr(p, '\0', len)) {
		fail(cf, "a NUL byte");
		return NULL;
	}
	if (cf->lineno == 1 && len >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0) {
		p += 3;
		len -= 3;
	}
	while (len > 0 && (p[len - 1] == '\n' || p[len - 1] == '\r'))
		len--;
	p[len] = '\0';
	/* No leading blanks reach inih: it would take an indented line as the
	 * continuation of the previous value, so an indented key would silently
	 * become part of the value above it. */
	p += strspn(p, " \t");
	len = strlen(p);
	if (len + 1 > (size_t)num) {
		fail(cf, "line longer than %d bytes", num - 1);
		return NULL;
	}
	if (*p == '[') {
		begin_section(cf, p);
		if (cf->err_line)
			return NULL;
	}
	memcpy(str, p, len + 1);
	return str;
}

static int cf_handle(void *user, const char *section, const char *key, const char *value)
{
	struct cf *cf = user;
	const struct opt *o;
	unsigned *seen;
	char why[200];

	if (cf->err_line)
		return 0;
	o = opt_by_key(section, key);
	if (!o) {
		if (section[0])
			fail(cf, "unknown key '%s' in [module] (it takes path and initargs; "
			     "other keys go before the first section)", key);
		else
			fail(cf, "unknown key '%s'", key);
		return 0;
	}
	if (o->scope == OPT_SECTION)
		seen = o->type == OPT_MODULE ? &cf->path_line : &cf->initargs_line;
	else
		seen = &cf->seen[o - opt_table];
	if (*seen) {
		fail(cf, "'%s' given twice (first on line %u)", key, *seen);
		return 0;
	}
	*seen = cf->lineno;
	if (opt_set(o, value, why, sizeof(why)) < 0) {
		fail(cf, "%s: %s", key, why);
		return 0;
	}
	return 1;
}

int cfgfile_load(const char *path, bool must_exist, char *why, size_t why_size)
{
	struct cf cf;
	int r, rc = -1;

	if (opt_count > MAX_OPTS)
		abort();                /* a bug: raise MAX_OPTS */
	memset(&cf, 0, sizeof(cf));
	cf.f = fopen(path, "re");
	if (!cf.f) {
		if (errno == ENOENT && !must_exist)
			return 0;
		snprintf(why, why_size, "%s: %s", path, strerror(errno));
		return -1;
	}
	r = ini_parse_stream(cf_read, &cf, cf_handle, &cf);
	if (!cf.err_line && ferror(cf.f)) {
		snprintf(why, why_size, "%s: cannot read: %s", path, strerror(errno));
		goto out;
	}
	end_module(&cf);
	/* inih reports the first bad line; ours may come later. */
	if (r > 0 && (!cf.err_line || (unsigned)r < cf.err_line))
		snprintf(why, why_size, "%s:%d: expected 'key = value', a [module] header or a comment",
			 path, r);
	else if (cf.err_line)
		snprintf(why, why_size, "%s:%u: %s", path, cf.err_line, cf.why);
	else if (r < 0)
		snprintf(why, why_size, "%s: cannot parse (out of memory)", path);
	else
		rc = 0;
out:
	free(cf.buf);
	fclose(cf.f);
	return rc;
}
