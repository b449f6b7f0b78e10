/* json: see json.h. */
#include "mp_json.h"

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mp_utf8.h"

int mjson_pack(const json_t *v, msgpack_packer *pk)
{
	/* jansson's iterators take non-const values; nothing is modified. */
	json_t *j = (json_t *)v;
	const char *key;
	size_t key_len, i;
	json_t *child;

	switch (json_typeof(j)) {
	case JSON_OBJECT:
		if (msgpack_pack_map(pk, json_object_size(j)) < 0)
			return -1;
		json_object_keylen_foreach(j, key, key_len, child) {
			if (msgpack_pack_str(pk, key_len) < 0 ||
			    msgpack_pack_str_body(pk, key, key_len) < 0 || mjson_pack(child, pk) < 0)
				return -1;
		}
		return 0;
	case JSON_ARRAY:
		if (msgpack_pack_array(pk, json_array_size(j)) < 0)
			return -1;
		json_array_foreach(j, i, child) {
			if (mjson_pack(child, pk) < 0)
				return -1;
		}
		return 0;
	case JSON_STRING:
		if (msgpack_pack_str(pk, json_string_length(j)) < 0)
			return -1;
		return msgpack_pack_str_body(pk, json_string_value(j), json_string_length(j)) < 0 ? -1 : 0;
	case JSON_INTEGER:
		return msgpack_pack_int64(pk, json_integer_value(j)) < 0 ? -1 : 0;
	case JSON_REAL:
		return msgpack_pack_double(pk, json_real_value(j)) < 0 ? -1 : 0;
	case JSON_TRUE:
		return msgpack_pack_true(pk) < 0 ? -1 : 0;
	case JSON_FALSE:
		return msgpack_pack_false(pk) < 0 ? -1 : 0;
	case JSON_NULL:
	default:
		return msgpack_pack_nil(pk) < 0 ? -1 : 0;
	}
}

static size_t utf8_seq(const unsigned char *s, size_t n)
{
	uint32_t cp;

	return mp_utf8_decode(s, n, &cp);
}

/* A JSON string for bytes that should be UTF-8; each byte that is not part
 * of a well-formed sequence becomes U+FFFD. */
static json_t *make_string(const char *str, size_t n)
{
	const unsigned char *s = (const unsigned char *)str;
	size_t i = 0, l, o = 0;
	char *fixed;
	json_t *j;

	while (i < n && (l = utf8_seq(s + i, n - i)) > 0)
		i += l;
	if (i == n)
		return json_stringn_nocheck(str, n);
	fixed = malloc(3 * n);
	if (!fixed)
		return NULL;
	for (i = 0; i < n; i += l ? l : 1) {
		l = utf8_seq(s + i, n - i);
		if (l) {
			memcpy(fixed + o, s + i, l);
			o += l;
		} else {
			memcpy(fixed + o, "\xef\xbf\xbd", 3);
			o += 3;
		}
	}
	j = json_stringn_nocheck(fixed, o);
	free(fixed);
	return j;
}

static json_t *make_base64(const unsigned char *s, size_t n)
{
	static const char tab[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t o = 0;
	char *out = malloc((n + 2) / 3 * 4 + 1);
	json_t *j;

	if (!out)
		return NULL;
	for (size_t i = 0; i < n; i += 3) {
		uint32_t w = (uint32_t)s[i] << 16;

		if (i + 1 < n)
			w |= (uint32_t)s[i + 1] << 8;
		if (i + 2 < n)
			w |= s[i + 2];
		out[o++] = tab[(w >> 18) & 63];
		out[o++] = tab[(w >> 12) & 63];
		out[o++] = i + 1 < n ? tab[(w >> 6) & 63] : '=';
		out[o++] = i + 2 < n ? tab[w & 63] : '=';
	}
	j = json_stringn_nocheck(out, o);
	free(out);
	return j;
}

/* Fewest significant digits that read back as d (as a float when single). */
static int real_digits(double d, bool single)
{
	char buf[40];

	for (int p = 1; p < 17; p++) {
		double back;

		snprintf(buf, sizeof(buf), "%.*g", p, d);
		back = strtod(buf, NULL);
		if (single ? (float)back == (float)d : back == d)
			return p;
	}
	return 17;
}

static json_t *make_real(double d, bool single, int *prec)
{
	int p;

	if (!isfinite(d))
		return json_null();
	p = real_digits(d, single);
	if (p > *prec)
		*prec = p;
	return json_real(d);
}

/* A JSON object key for a MessagePack map key. */
static json_t *make_key(const msgpack_object *k, char **ret_text, size_t *ret_len)
{
	int prec = 0;
	json_t *j;
	char *text;

	if (k->type == MSGPACK_OBJECT_STR)
		j = make_string(k->via.str.ptr, k->via.str.size);
	else {
		json_t *kj = mjson_from_msgpack(k, &prec);

		if (!kj)
			return NULL;
		text = json_dumps(kj, JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(prec));
		json_decref(kj);
		if (!text)
			return NULL;
		j = json_string_nocheck(text);
		free(text);
	}
	if (j) {
		*ret_text = (char *)json_string_value(j);
		*ret_len = json_string_length(j);
	}
	return j;
}

json_t *mjson_from_msgpack(const msgpack_object *o, int *prec)
{
	json_t *j;

	switch (o->type) {
	case MSGPACK_OBJECT_NIL:
		return json_null();
	case MSGPACK_OBJECT_BOOLEAN:
		return json_boolean(o->via.boolean);
	case MSGPACK_OBJECT_POSITIVE_INTEGER:
		if (o->via.u64 > INT64_MAX)
			return make_real((double)o->via.u64, false, prec);
		return json_integer((json_int_t)o->via.u64);
	case MSGPACK_OBJECT_NEGATIVE_INTEGER:
		return json_integer((json_int_t)o->via.i64);
	case MSGPACK_OBJECT_FLOAT32:
		return make_real(o->via.f64, true, prec);
	case MSGPACK_OBJECT_FLOAT64:
		return make_real(o->via.f64, false, prec);
	case MSGPACK_OBJECT_STR:
		return make_string(o->via.str.ptr, o->via.str.size);
	case MSGPACK_OBJECT_BIN:
		return make_base64((const unsigned char *)o->via.bin.ptr, o->via.bin.size);
	case MSGPACK_OBJECT_ARRAY:
		j = json_array();
		for (uint32_t i = 0; j && i < o->via.array.size; i++) {
			json_t *child = mjson_from_msgpack(&o->via.array.ptr[i], prec);

			/* json_array_append_new() takes child even when it fails. */
			if (!child || json_array_append_new(j, child) < 0) {
				json_decref(j);
				j = NULL;
			}
		}
		return j;
	case MSGPACK_OBJECT_MAP:
		j = json_object();
		for (uint32_t i = 0; j && i < o->via.map.size; i++) {
			const msgpack_object_kv *kv = &o->via.map.ptr[i];
			json_t *key, *val;
			char *text;
			size_t len;

			key = make_key(&kv->key, &text, &len);
			val = key ? mjson_from_msgpack(&kv->val, prec) : NULL;
			if (!val || json_object_setn_new_nocheck(j, text, len, val) < 0) {
				json_decref(j);
				j = NULL;
			}
			json_decref(key);
		}
		return j;
	case MSGPACK_OBJECT_EXT:
	default:
		return json_null();
	}
}

int mjson_print(FILE *out, const msgpack_object *o)
{
	int prec = 0, r;
	json_t *j = mjson_from_msgpack(o, &prec);

	if (!j)
		return -1;
	r = json_dumpf(j, out, JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(prec));
	json_decref(j);
	if (r < 0 || putc('\n', out) == EOF)
		return -1;
	return 0;
}
