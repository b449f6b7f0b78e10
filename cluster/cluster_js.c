/* cluster_js: what the node says to the broker: subjects, publishing,
 * the reading of the shapes every message shares, and JetStream's API
 * (the stream and the consumers), asked asynchronously. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cluster_int.h"
#include "log.h"
#include "mem.h"
#include "mp_scan.h"

void cluster_publish(const char *subj, const char *reply, const void *data, size_t len)
{
	natsStatus s;

	if (!cluster.nc)
		return;
	if (reply)
		s = natsConnection_PublishRequest(cluster.nc, subj, reply, data, (int)len);
	else
		s = natsConnection_Publish(cluster.nc, subj, data, (int)len);
	if (s != NATS_OK && cluster.state == CLUSTER_CONNECTED)
		log_debug("cluster: cannot publish to %s: %s", subj, natsStatus_GetText(s));
}

bool cluster_read_name(struct mp_cur *c, char *buf, size_t size)
{
	const char *s;
	uint32_t n;

	if (mp_read_str(c, &s, &n) < 0 || n == 0 || n >= size)
		return false;
	memcpy(buf, s, n);
	buf[n] = '\0';
	return true;
}

bool cluster_read_bin(struct mp_cur *c, const uint8_t **ret, uint32_t *ret_len)
{
	const uint8_t *p;
	size_t len, head;

	if (mp_peek(c) != MP_T_BIN || mp_skip(c, &p, &len) < 0)
		return false;
	head = *p == 0xc4 ? 2 : *p == 0xc5 ? 3 : 5;      /* bin8, bin16, bin32 */
	*ret = p + head;
	*ret_len = (uint32_t)(len - head);
	return true;
}

void cluster_subject(char *buf, size_t size, const char *what, const char *tail)
{
	snprintf(buf, size, "mpool.%s.%s%s%s", host_cfg->cluster_name, what, tail ? "." : "",
		 tail ? tail : "");
}

void cluster_durable_name(char *buf, size_t size, const char *fn)
{
	snprintf(buf, size, "F%zu_%s", strlen(fn), fn);
	for (char *p = buf; *p; p++)
		if (*p == '.')
			*p = '_';
}

void cluster_api_send(int what, const char *fn)
{
	struct api_req *r = xcalloc(1, sizeof(*r));
	char subj[700], reply[256], dur[300], filter[300];
	json_t *body;
	char *text;

	r->id = ++cluster.next_key;
	r->what = what;
	snprintf(r->fn, sizeof(r->fn), "%s", fn ? fn : "");
	r->next = cluster.api;
	cluster.api = r;
	snprintf(reply, sizeof(reply), "%s.api.%" PRIu64, cluster.inbox, r->id);
	if (what == API_CONSUMER) {
		cluster_durable_name(dur, sizeof(dur), fn);
		cluster_subject(filter, sizeof(filter), "work", fn);
		snprintf(subj, sizeof(subj), "$JS.API.CONSUMER.DURABLE.CREATE.%s.%s", cluster.stream,
			 dur);
		body = json_pack("{s:s, s:{s:s, s:s, s:I, s:s, s:I, s:I, s:I, s:s}}",
				 "stream_name", cluster.stream, "config",
				 "durable_name", dur, "ack_policy", "explicit",
				 "ack_wait", (json_int_t)host_cfg->cluster_redelivery_ms * 1000000,
				 "filter_subject", filter, "max_deliver", (json_int_t)-1,
				 "max_waiting", (json_int_t)4096, "max_ack_pending", (json_int_t)65536,
				 "deliver_policy", "all");
	} else {
		cluster_subject(filter, sizeof(filter), "work", ">");
		snprintf(subj, sizeof(subj), "$JS.API.STREAM.%s.%s",
			 what == API_STREAM ? "CREATE" : "UPDATE", cluster.stream);
		body = json_pack("{s:s, s:[s], s:s, s:s, s:I, s:s}", "name", cluster.stream,
				 "subjects", filter, "retention", "workqueue", "storage", "file",
				 "num_replicas", (json_int_t)host_cfg->cluster_replicas, "discard", "old");
	}
	text = body ? json_dumps(body, JSON_COMPACT) : NULL;
	json_decref(body);
	if (!text) {
		log_err("cluster: out of memory building a JetStream request");
		return;
	}
	cluster_publish(subj, reply, text, strlen(text));
	free(text);
}

void cluster_handle_api(uint64_t id, natsMsg *msg)
{
	struct api_req **pp, *r;
	json_t *root, *err;
	json_error_t jerr;

	for (pp = &cluster.api; (r = *pp) && r->id != id; pp = &r->next)
		;
	if (!r)
		return;
	*pp = r->next;
	root = json_loadb(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg), 0, &jerr);
	err = root ? json_object_get(root, "error") : NULL;
	if (!root || err) {
		const char *desc = err ? json_string_value(json_object_get(err, "description")) : NULL;
		json_int_t code = err ? json_integer_value(json_object_get(err, "err_code")) : 0;

		if (r->what == API_STREAM && code == 10058) {
			cluster_api_send(API_STREAM_UPDATE, NULL);      /* exists, other settings */
		} else if (r->what == API_CONSUMER) {
			log_err("cluster: cannot create the consumer of %s: %s", r->fn,
				desc ? desc : "no answer");
		} else {
			log_err("cluster: cannot create the stream %s: %s", cluster.stream,
				desc ? desc : "no answer");
		}
	} else if (r->what != API_CONSUMER) {
		if (!cluster.stream_ok)
			log_info("cluster: stream %s ready (%u replica(s))", cluster.stream,
				 host_cfg->cluster_replicas);
		cluster.stream_ok = true;
		for (unsigned i = 0; i < cluster.n_fns; i++)
			cluster_api_send(API_CONSUMER, cluster.fns[i]);
		disp_schedule();
	}
	json_decref(root);
	free(r);
}

