/* The builtin module: small functions that are always loaded, for trying
 * the pool out, for tests and for benchmarks. */
#include <errno.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include "registry.h"

static const char *type_name(msgpack_object_type t)
{
	switch (t) {
	case MSGPACK_OBJECT_NIL: return "nil";
	case MSGPACK_OBJECT_BOOLEAN: return "bool";
	case MSGPACK_OBJECT_POSITIVE_INTEGER: return "int";
	case MSGPACK_OBJECT_NEGATIVE_INTEGER: return "int";
	case MSGPACK_OBJECT_FLOAT32: return "float32";
	case MSGPACK_OBJECT_FLOAT64: return "float64";
	case MSGPACK_OBJECT_STR: return "str";
	case MSGPACK_OBJECT_BIN: return "bin";
	case MSGPACK_OBJECT_ARRAY: return "array";
	case MSGPACK_OBJECT_MAP: return "map";
	case MSGPACK_OBJECT_EXT: return "ext";
	}
	return "unknown";
}

/* Packing fails only when the worker is out of memory. */
static int packed(int r, struct mpool_task_error *err)
{
	return r == 0 ? 0 : mpool_task_fail(err, MPOOL_E_INTERNAL, "out of memory packing a result");
}

static int echo(const msgpack_object *arg, msgpack_packer *out, struct mpool_task_error *err)
{
	return packed(msgpack_pack_object(out, *arg), err);
}

static int square(const msgpack_object *arg, msgpack_packer *out, struct mpool_task_error *err)
{
	uint64_t m, r;

	if (arg->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
		m = arg->via.u64;
	} else if (arg->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
		m = (uint64_t)(-(arg->via.i64 + 1)) + 1;     /* |v| without overflow */
	} else {
		err->code = MPOOL_E_TYPE;
		snprintf(err->message, sizeof(err->message),
			 "builtin.square: expected an integer, got %s", type_name(arg->type));
		return -1;
	}
	if (__builtin_mul_overflow(m, m, &r))
		return mpool_task_fail(err, MPOOL_E_TASK, "builtin.square: result does not fit in 64 bits");
	return packed(msgpack_pack_uint64(out, r), err);
}

/* Reads a millisecond argument: a non-negative integer below an hour. */
static int read_ms(const char *fn, const msgpack_object *arg, uint64_t *ms,
		   struct mpool_task_error *err)
{
	if (arg->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
		err->code = MPOOL_E_TYPE;
		snprintf(err->message, sizeof(err->message),
			 "%s: expected milliseconds (an integer from 0), got %s%s", fn,
			 arg->type == MSGPACK_OBJECT_NEGATIVE_INTEGER ? "a negative " : "",
			 type_name(arg->type));
		return -1;
	}
	if (arg->via.u64 > 3600 * 1000) {
		err->code = MPOOL_E_TASK;
		snprintf(err->message, sizeof(err->message), "%s: at most 3600000 ms", fn);
		return -1;
	}
	*ms = arg->via.u64;
	return 0;
}

static int do_sleep(const msgpack_object *arg, msgpack_packer *out, struct mpool_task_error *err)
{
	struct timespec ts;
	uint64_t ms = 0;

	if (read_ms("builtin.sleep", arg, &ms, err) < 0)
		return -1;
	ts.tv_sec = (time_t)(ms / 1000);
	ts.tv_nsec = (long)(ms % 1000) * 1000000;
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
	return packed(msgpack_pack_uint64(out, ms), err);
}

static int spin(const msgpack_object *arg, msgpack_packer *out, struct mpool_task_error *err)
{
	struct timespec start, now;
	uint64_t ms = 0, ns;

	if (read_ms("builtin.spin", arg, &ms, err) < 0)
		return -1;
	ns = ms * 1000000;
	clock_gettime(CLOCK_MONOTONIC, &start);
	do {
		for (volatile int i = 0; i < 1000; i++)
			;
		clock_gettime(CLOCK_MONOTONIC, &now);
	} while ((uint64_t)(now.tv_sec - start.tv_sec) * 1000000000u +
		 (uint64_t)(now.tv_nsec - start.tv_nsec) < ns);
	return packed(msgpack_pack_uint64(out, ms), err);
}

static int pid(const msgpack_object *arg, msgpack_packer *out, struct mpool_task_error *err)
{
	(void)arg;
	return packed(msgpack_pack_int64(out, getpid()), err);
}

static const struct mpool_function builtin_functions[] = {
	{ "echo", echo },
	{ "square", square },
	{ "sleep", do_sleep },
	{ "spin", spin },
	{ "pid", pid },
	{ NULL, NULL },
};

const struct mpool_module builtin_module = {
	.abi = MPOOL_MODULE_ABI,
	.name = "builtin",
	.functions = builtin_functions,
};
