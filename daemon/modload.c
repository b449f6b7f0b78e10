#include "modload.h"

#include <dlfcn.h>
#include <errno.h>
#include <jansson.h>

#include "config.h"
#include "log.h"
#include "mp_json.h"
#include "registry.h"

static void *handles[CONFIG_MAX_MODULES];

/* initargs JSON -> one MessagePack value in *sb. */
static int pack_initargs(const struct module_spec *spec, msgpack_sbuffer *sb)
{
	json_error_t jerr;
	msgpack_packer pk;
	json_t *v;
	int r;

	v = json_loads(spec->initargs_json, JSON_DECODE_ANY, &jerr);
	if (!v) {
		log_err("module %s: initargs are not JSON: %s (column %d)", spec->path, jerr.text,
			jerr.column);
		return -1;
	}
	msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
	r = mjson_pack(v, &pk);
	json_decref(v);
	if (r < 0) {
		log_err("module %s: out of memory packing initargs", spec->path);
		return -1;
	}
	return 0;
}

static int load_one(unsigned i)
{
	const struct module_spec *spec = &cfg.modules[i];
	const struct mpool_module *m;
	msgpack_sbuffer sb;
	int r;

	/* RTLD_NOW: a missing symbol stops mpoold at start, not a worker at
	 * its first task.  RTLD_LOCAL: modules cannot clash with each other. */
	handles[i] = dlopen(spec->path, RTLD_NOW | RTLD_LOCAL);
	if (!handles[i]) {
		log_err("module %s: cannot load: %s", spec->path, dlerror());
		return -1;
	}
	m = dlsym(handles[i], MPOOL_MODULE_SYMBOL);
	if (!m) {
		log_err("module %s: no '%s' descriptor exported", spec->path, MPOOL_MODULE_SYMBOL);
		return -1;
	}
	msgpack_sbuffer_init(&sb);
	if (spec->initargs_json && pack_initargs(spec, &sb) < 0) {
		msgpack_sbuffer_destroy(&sb);
		return -1;
	}
	r = reg_add(m, spec->initargs_json ? sb.data : NULL, sb.size);
	msgpack_sbuffer_destroy(&sb);
	if (r == -EPROTO) {
		log_err("module %s: built for module ABI %u, mpoold speaks %u to %u", spec->path,
			m->abi, MPOOL_MODULE_ABI_MIN, MPOOL_MODULE_ABI);
		return -1;
	}
	if (r == -EEXIST) {
		log_err("module %s: a module named '%s' is already loaded", spec->path, m->name);
		return -1;
	}
	if (r < 0) {
		log_err("module %s: invalid descriptor (module and function names are "
			"[A-Za-z0-9_-]+, functions end with {NULL, NULL}, and only a "
			"module with load may have none)", spec->path);
		return -1;
	}
	log_info("loaded module '%s' from %s", m->name, spec->path);
	return 0;
}

int modload_all(void)
{
	int failed = 0;

	if (reg_add(&builtin_module, NULL, 0) < 0) {
		log_err("cannot register the builtin module");
		return -1;
	}
	for (unsigned i = 0; i < cfg.n_modules; i++)
		if (load_one(i) < 0)
			failed = -1;
	return failed;
}

void modload_close_all(void)
{
	reg_clear();
	for (unsigned i = 0; i < cfg.n_modules; i++) {
		if (handles[i])
			dlclose(handles[i]);
		handles[i] = NULL;
	}
}

int modload_reload(void)
{
	modload_close_all();
	return modload_all();
}
