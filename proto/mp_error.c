#include <mpool/error.h>

const char *mpool_strerror(int code)
{
	if (code < 0)
		code = -code;
	switch (code) {
	case MPOOL_OK: return "ok";
	case MPOOL_E_BADREQ: return "bad_request";
	case MPOOL_E_NOMETHOD: return "no_method";
	case MPOOL_E_NOFUNC: return "no_function";
	case MPOOL_E_TASK: return "task_error";
	case MPOOL_E_TYPE: return "type_error";
	case MPOOL_E_WORKER: return "worker_died";
	case MPOOL_E_TERMINATED: return "terminated";
	case MPOOL_E_SHUTDOWN: return "shutting_down";
	case MPOOL_E_LIMIT: return "limit";
	case MPOOL_E_TIMEOUT: return "timeout";
	case MPOOL_E_INTERNAL: return "internal";
	case MPOOL_E_RESULT: return "bad_result";
	case MPOOL_E_UNAVAILABLE: return "unavailable";
	case MPOOL_E_CANCELLED: return "cancelled";
	case MPOOL_E_PERM: return "permission";
	case MPOOL_E_NOTFOUND: return "not_found";
	case MPOOL_E_SYS: return "system";
	case MPOOL_E_PROTO: return "protocol";
	case MPOOL_E_CLOSED: return "closed";
	case MPOOL_E_INVAL: return "invalid_argument";
	case MPOOL_E_NOMEM: return "no_memory";
	case MPOOL_E_ITEMS: return "items_failed";
	case MPOOL_E_UNTRUSTED: return "untrusted_server";
	default: return "unknown";
	}
}
