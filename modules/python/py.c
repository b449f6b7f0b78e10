/* py: task functions written in Python (docs/python-tasks.md).
 *
 * The module mpoold opens.  It links no Python, because the master opens
 * every module to read its descriptor and must stay small: the
 * interpreter lives in py-embed.so beside this file (embed.c), which load
 * opens where tasks run, in the fork server (or in a process the master
 * forked), never in the master. */
#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include <mpool/module.h>

#include "embed.h"

static const struct mpool_py_embed *embed;

/* The path of py-embed.so: beside this object, wherever it is. */
static int embed_path(char *buf, size_t size)
{
	extern const struct mpool_module mpool_module;
	Dl_info info;
	const char *slash;

	if (!dladdr(&mpool_module, &info) || !info.dli_fname ||
	    !(slash = strrchr(info.dli_fname, '/')))
		return (int)snprintf(buf, size, "%s", MPOOL_PY_EMBED_FILE) < (int)size ? 0 : -1;
	return snprintf(buf, size, "%.*s/%s", (int)(slash - info.dli_fname), info.dli_fname,
			MPOOL_PY_EMBED_FILE) < (int)size ? 0 : -1;
}

static int load(const msgpack_object *initargs, const struct mpool_loaded_function **ret,
		struct mpool_task_error *err)
{
	char path[PATH_MAX], msg[MPOOL_TASK_MSG_MAX];
	void *h;

	if (embed_path(path, sizeof(path)) < 0)
		return mpool_task_fail(err, MPOOL_E_INTERNAL, "the path of py-embed.so is too long");
	/* RTLD_GLOBAL: CPython's extension modules (math, _json, ...) look
	 * the interpreter's symbols up globally. */
	h = dlopen(path, RTLD_NOW | RTLD_GLOBAL);
	embed = h ? dlsym(h, MPOOL_PY_EMBED_SYMBOL) : NULL;
	if (!embed) {
		snprintf(msg, sizeof(msg), "cannot load the interpreter: %.200s", dlerror());
		return mpool_task_fail(err, MPOOL_E_TASK, msg);
	}
	return embed->load(initargs, ret, err);
}

static int init(const msgpack_object *initargs, struct mpool_task_error *err)
{
	/* Nothing to do where load did not run (the master accepted no py
	 * function) or failed. */
	return embed ? embed->init(initargs, err) : 0;
}

MPOOL_MODULE_EXPORT const struct mpool_module mpool_module = {
	.abi = MPOOL_MODULE_ABI,
	.name = "py",
	.init = init,
	.load = load,
};
