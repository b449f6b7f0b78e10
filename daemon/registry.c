#include "registry.h"

#include <errno.h>
#include <string.h>

#define MAX_MODULES 64

static const struct mpool_module *modules[MAX_MODULES];
static unsigned n_modules;

int reg_add(const struct mpool_module *m)
{
	if (m->abi != MPOOL_MODULE_ABI)
		return -EPROTO;
	if (!m->name || !*m->name || strchr(m->name, '.') || !m->functions)
		return -EINVAL;
	for (unsigned i = 0; i < n_modules; i++)
		if (strcmp(modules[i]->name, m->name) == 0)
			return -EEXIST;
	if (n_modules == MAX_MODULES)
		return -ENOSPC;
	modules[n_modules++] = m;
	return 0;
}

mpool_task_fn reg_lookup(const char *name, size_t len)
{
	const char *dot = memchr(name, '.', len);
	size_t mlen;

	if (!dot)
		return NULL;
	mlen = (size_t)(dot - name);
	for (unsigned i = 0; i < n_modules; i++) {
		const struct mpool_module *m = modules[i];

		if (strlen(m->name) != mlen || memcmp(m->name, name, mlen) != 0)
			continue;
		for (const struct mpool_function *f = m->functions; f->name; f++)
			if (strlen(f->name) == len - mlen - 1 &&
			    memcmp(f->name, dot + 1, len - mlen - 1) == 0)
				return f->fn;
		return NULL;
	}
	return NULL;
}

int reg_init_all(struct mpool_task_error *err, const char **ret_module)
{
	msgpack_object nil = { .type = MSGPACK_OBJECT_NIL };

	for (unsigned i = 0; i < n_modules; i++) {
		if (!modules[i]->init)
			continue;
		err->code = MPOOL_E_TASK;
		err->message[0] = '\0';
		if (modules[i]->init(&nil, err) != 0) {
			*ret_module = modules[i]->name;
			return -1;
		}
	}
	return 0;
}

void reg_fini_all(void)
{
	for (unsigned i = n_modules; i-- > 0;)
		if (modules[i]->fini)
			modules[i]->fini();
}
