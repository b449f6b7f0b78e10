/* A cluster plugin of another ABI (tests/check_cluster_plugin.py): mpoold
 * must refuse it at config check, naming it, rather than call into it. */
#include "cluster_plugin.h"

const struct cluster_plugin mpool_cluster_plugin = {
	.abi = CLUSTER_PLUGIN_ABI + 1,
	.version = "another build",
};
