#include "registry.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mem.h"

#define MAX_MODULES 64

/* Names are copied: the master reads them on every request, and must not
 * touch a module's pages, which a careless `cp` over the file can change
 * under it.  Workers are what runs module code. */
struct fn_entry {
	char *name;
	mpool_task_fn fn;
};

struct entry {
	const struct mpool_module *m;
	char *name;
	struct fn_entry *fns;
	unsigned n_fns;
	void *initargs;            /* owned; NULL: nil */
	size_t initargs_len;
};

static struct entry entries[MAX_MODULES];
static unsigned n_entries;

static int valid_name(const char *s)
{
	if (!s || !*s)
		return 0;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		      (*s >= '0' && *s <= '9') || *s == '_' || *s == '-'))
			return 0;
	return 1;
}

int reg_add(const struct mpool_module *m, const void *initargs, size_t initargs_len)
{
	if (m->abi != MPOOL_MODULE_ABI)
		return -EPROTO;
	if (!valid_name(m->name) || !m->functions)
		return -EINVAL;
	for (const struct mpool_function *f = m->functions; f->name; f++)
		if (!valid_name(f->name) || !f->fn)
			return -EINVAL;
	for (unsigned i = 0; i < n_entries; i++)
		if (strcmp(entries[i].name, m->name) == 0)
			return -EEXIST;
	if (n_entries == MAX_MODULES)
		return -ENOSPC;
	entries[n_entries].m = m;
	entries[n_entries].name = xstrndup(m->name, strlen(m->name));
	for (const struct mpool_function *f = m->functions; f->name; f++)
		entries[n_entries].n_fns++;
	entries[n_entries].fns = xcalloc(entries[n_entries].n_fns, sizeof(struct fn_entry));
	for (unsigned i = 0; i < entries[n_entries].n_fns; i++) {
		entries[n_entries].fns[i].name = xstrndup(m->functions[i].name,
							   strlen(m->functions[i].name));
		entries[n_entries].fns[i].fn = m->functions[i].fn;
	}
	entries[n_entries].initargs = initargs ? xmemdup(initargs, initargs_len) : NULL;
	entries[n_entries].initargs_len = initargs_len;
	n_entries++;
	return 0;
}

void reg_clear(void)
{
	for (unsigned i = 0; i < n_entries; i++) {
		free(entries[i].initargs);
		free(entries[i].name);
		for (unsigned j = 0; j < entries[i].n_fns; j++)
			free(entries[i].fns[j].name);
		free(entries[i].fns);
	}
	memset(entries, 0, sizeof(entries));
	n_entries = 0;
}

mpool_task_fn reg_lookup(const char *name, size_t len)
{
	const char *dot = memchr(name, '.', len);
	size_t mlen;

	if (!dot)
		return NULL;
	mlen = (size_t)(dot - name);
	for (unsigned i = 0; i < n_entries; i++) {
		const struct entry *e = &entries[i];

		if (strlen(e->name) != mlen || memcmp(e->name, name, mlen) != 0)
			continue;
		for (unsigned j = 0; j < e->n_fns; j++)
			if (strlen(e->fns[j].name) == len - mlen - 1 &&
			    memcmp(e->fns[j].name, dot + 1, len - mlen - 1) == 0)
				return e->fns[j].fn;
		return NULL;
	}
	return NULL;
}

int reg_init_all(struct mpool_task_error *err, const char **ret_module)
{
	for (unsigned i = 0; i < n_entries; i++) {
		const struct entry *e = &entries[i];
		msgpack_object args = { .type = MSGPACK_OBJECT_NIL };
		msgpack_zone zone;
		size_t off = 0;
		int r;

		if (!e->m->init)
			continue;
		if (!msgpack_zone_init(&zone, 1024)) {
			*ret_module = e->m->name;
			return mpool_task_fail(err, MPOOL_E_INTERNAL, "out of memory");
		}
		if (e->initargs &&
		    msgpack_unpack(e->initargs, e->initargs_len, &off, &zone, &args) < 0) {
			msgpack_zone_destroy(&zone);
			*ret_module = e->m->name;
			return mpool_task_fail(err, MPOOL_E_INTERNAL, "unreadable initargs");
		}
		err->code = MPOOL_E_TASK;
		err->message[0] = '\0';
		r = e->m->init(&args, err);
		msgpack_zone_destroy(&zone);
		if (r != 0) {
			*ret_module = e->m->name;
			return -1;
		}
	}
	return 0;
}

void reg_fini_all(void)
{
	for (unsigned i = n_entries; i-- > 0;)
		if (entries[i].m->fini)
			entries[i].m->fini();
}

void reg_names(char *buf, size_t size)
{
	size_t n = 0;

	buf[0] = '\0';
	for (unsigned i = 0; i < n_entries && n < size; i++)
		n += (size_t)snprintf(buf + n, size - n, "%s%s", i ? ", " : "", entries[i].name);
}

void reg_each_fn(void (*fn)(const char *name, void *arg), void *arg)
{
	char name[512];

	for (unsigned i = 0; i < n_entries; i++)
		for (unsigned k = 0; k < entries[i].n_fns; k++) {
			snprintf(name, sizeof(name), "%s.%s", entries[i].name,
				 entries[i].fns[k].name);
			fn(name, arg);
		}
}
