/* What py-embed.so gives py.so: the module's load and init, as in
 * struct mpool_module.  Private to one build of the two. */
#ifndef MPOOL_PY_EMBED_H
#define MPOOL_PY_EMBED_H

#include <mpool/module.h>

#define MPOOL_PY_EMBED_FILE "py-embed.so"
#define MPOOL_PY_EMBED_SYMBOL "mpool_py_embed"

struct mpool_py_embed {
	int (*load)(const msgpack_object *initargs,
		    const struct mpool_loaded_function **ret_functions,
		    struct mpool_task_error *err);
	int (*init)(const msgpack_object *initargs, struct mpool_task_error *err);
};

#endif
