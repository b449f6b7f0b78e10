/* wordcount: an example task module with an initializer.
 *
 *   wordcount.count   str -> {word: count, ...} in order of first appearance
 *   wordcount.total   str -> number of words
 *   wordcount.sha256  str or bin -> lowercase hex SHA-256
 *
 * Initargs (all optional; nil means these defaults):
 *   {"lowercase": false, "stopwords": []}
 * With lowercase, count and total fold ASCII case first; both skip the
 * stopwords (folded too).  Unknown keys fail init, so a typo cannot pass
 * for the defaults.
 *
 * A word is a run of ASCII letters, digits and apostrophes, without the
 * apostrophes at its ends.  Every other byte, including all of UTF-8's
 * multibyte sequences, separates words.
 *
 * Out of memory fails the task with MPOOL_E_INTERNAL; the worker lives on.
 *
 * Build: cc -shared -fPIC -o wordcount.so wordcount.c $(pkg-config --cflags mpool)
 * Run:   mpoold --module ./wordcount.so --initargs '{"lowercase": true}' */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <mpool/module.h>

/* A set of words, each with a count, that remembers insertion order so
 * results come out the same way every time. */
struct word {
	const char *p;          /* not owned */
	size_t len;
	uint64_t hash;
	uint64_t count;
};

struct words {
	struct word *v;         /* in insertion order */
	size_t n, cap;
	size_t *slot;           /* open addressing: index into v + 1; 0 is empty */
	size_t n_slots;         /* a power of two, at least twice n */
};

static uint64_t hash(const char *p, size_t len)
{
	uint64_t h = 0xcbf29ce484222325u;       /* FNV-1a */

	for (size_t i = 0; i < len; i++)
		h = (h ^ (unsigned char)p[i]) * 0x100000001b3u;
	return h;
}

static struct word *words_find(const struct words *w, const char *p, size_t len, uint64_t h)
{
	if (!w->n_slots)
		return NULL;
	for (size_t i = h & (w->n_slots - 1);; i = (i + 1) & (w->n_slots - 1)) {
		struct word *e;

		if (!w->slot[i])
			return NULL;
		e = &w->v[w->slot[i] - 1];
		if (e->hash == h && e->len == len && memcmp(e->p, p, len) == 0)
			return e;
	}
}

/* Doubles the set.  On failure it is left as it was, still usable. */
static int words_grow(struct words *w)
{
	size_t n_slots = w->n_slots ? w->n_slots * 2 : 64, cap = n_slots / 2;
	struct word *v;
	size_t *slot;

	if (n_slots > SIZE_MAX / (2 * sizeof(*v)))
		return -1;
	slot = calloc(n_slots, sizeof(*slot));
	if (!slot)
		return -1;
	v = realloc(w->v, cap * sizeof(*v));
	if (!v) {
		free(slot);
		return -1;
	}
	for (size_t k = 0; k < w->n; k++) {
		size_t i = v[k].hash & (n_slots - 1);

		while (slot[i])
			i = (i + 1) & (n_slots - 1);
		slot[i] = k + 1;
	}
	free(w->slot);
	w->v = v;
	w->cap = cap;
	w->slot = slot;
	w->n_slots = n_slots;
	return 0;
}

/* Counts one more p[0..len); p must outlive the set.  0, or -1 when out of
 * memory (the set is unchanged and still valid). */
static int words_add(struct words *w, const char *p, size_t len)
{
	uint64_t h = hash(p, len);
	struct word *e = words_find(w, p, len, h);
	size_t i;

	if (e) {
		e->count++;
		return 0;
	}
	if (w->n == w->cap && words_grow(w) < 0)
		return -1;
	w->v[w->n] = (struct word){ p, len, h, 1 };
	for (i = h & (w->n_slots - 1); w->slot[i]; i = (i + 1) & (w->n_slots - 1))
		;
	w->slot[i] = ++w->n;
	return 0;
}

static bool words_has(const struct words *w, const char *p, size_t len)
{
	return words_find(w, p, len, hash(p, len)) != NULL;
}

static void words_free(struct words *w)
{
	free(w->v);
	free(w->slot);
	memset(w, 0, sizeof(*w));
}

static bool is_word_byte(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '\'';
}

/* The next word of s[*pos..len), or false at the end.  Apostrophes at a
 * run's ends are quotes ('like this'), not part of the word. */
static bool next_word(const char *s, size_t len, size_t *pos, const char **w, size_t *wlen)
{
	size_t i = *pos, start;

	while (i < len && (!is_word_byte((unsigned char)s[i]) || s[i] == '\''))
		i++;
	*pos = i;
	if (i == len)
		return false;
	start = i;
	while (i < len && is_word_byte((unsigned char)s[i]))
		i++;
	*pos = i;
	while (s[i - 1] == '\'')
		i--;
	*w = s + start;
	*wlen = i - start;
	return true;
}

static void ascii_lower(char *s, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (s[i] >= 'A' && s[i] <= 'Z')
			s[i] = (char)(s[i] - 'A' + 'a');
}

/* Per-worker state, built by wc_init in each worker after the fork.  The
 * stopword set points into stop_text, a copy: initargs die after init. */
static struct {
	bool lowercase;
	struct words stop;
	char *stop_text;
} st;

static const char *type_name(msgpack_object_type t)
{
	switch (t) {
	case MSGPACK_OBJECT_NIL: return "nil";
	case MSGPACK_OBJECT_BOOLEAN: return "bool";
	case MSGPACK_OBJECT_POSITIVE_INTEGER: return "int";
	case MSGPACK_OBJECT_NEGATIVE_INTEGER: return "int";
	case MSGPACK_OBJECT_FLOAT32: return "float";
	case MSGPACK_OBJECT_FLOAT64: return "float";
	case MSGPACK_OBJECT_STR: return "str";
	case MSGPACK_OBJECT_BIN: return "bin";
	case MSGPACK_OBJECT_ARRAY: return "array";
	case MSGPACK_OBJECT_MAP: return "map";
	case MSGPACK_OBJECT_EXT: return "ext";
	}
	return "unknown";
}

static int fail_type(struct mpool_task_error *err, const char *fn, const char *want,
		     const msgpack_object *arg)
{
	err->code = MPOOL_E_TYPE;
	snprintf(err->message, sizeof(err->message), "%s: expected %s, got %s", fn, want,
		 type_name(arg->type));
	return -1;
}

static int fail_nomem(struct mpool_task_error *err, const char *fn)
{
	err->code = MPOOL_E_INTERNAL;
	snprintf(err->message, sizeof(err->message), "%s: out of memory", fn);
	return -1;
}

static bool key_is(const msgpack_object *k, const char *name)
{
	return k->type == MSGPACK_OBJECT_STR && k->via.str.size == strlen(name) &&
	       memcmp(k->via.str.ptr, name, k->via.str.size) == 0;
}

/* Copies every stopword into one buffer (folded if need be) and indexes
 * it.  A stopword the tokenizer could never produce is refused, because
 * silently never matching it would hide the caller's mistake. */
static int load_stopwords(const msgpack_object *a, struct mpool_task_error *err)
{
	size_t total = 0, off = 0;

	if (a->type != MSGPACK_OBJECT_ARRAY)
		return fail_type(err, "wordcount: initargs: stopwords", "an array of str", a);
	for (uint32_t i = 0; i < a->via.array.size; i++) {
		const msgpack_object *s = &a->via.array.ptr[i];
		size_t pos = 0, wlen = 0;
		const char *w;

		if (s->type != MSGPACK_OBJECT_STR)
			return fail_type(err, "wordcount: initargs: stopwords", "str items", s);
		if (!next_word(s->via.str.ptr, s->via.str.size, &pos, &w, &wlen) ||
		    wlen != s->via.str.size) {
			err->code = MPOOL_E_TYPE;
			snprintf(err->message, sizeof(err->message),
				 "wordcount: initargs: stopword \"%.*s\" is not one word "
				 "(letters, digits, inner apostrophes)",
				 (int)(s->via.str.size > 40 ? 40 : s->via.str.size), s->via.str.ptr);
			return -1;
		}
		total += wlen;
	}
	st.stop_text = malloc(total ? total : 1);
	if (!st.stop_text)
		return fail_nomem(err, "wordcount: init");
	for (uint32_t i = 0; i < a->via.array.size; i++) {
		const msgpack_object_str *s = &a->via.array.ptr[i].via.str;

		memcpy(st.stop_text + off, s->ptr, s->size);
		if (st.lowercase)
			ascii_lower(st.stop_text + off, s->size);
		if (words_add(&st.stop, st.stop_text + off, s->size) < 0)
			return fail_nomem(err, "wordcount: init");
		off += s->size;
	}
	return 0;
}

static void wc_fini(void)
{
	words_free(&st.stop);
	free(st.stop_text);
	st.stop_text = NULL;
	st.lowercase = false;
}

static int wc_init(const msgpack_object *args, struct mpool_task_error *err)
{
	const msgpack_object *stop = NULL;

	if (args->type == MSGPACK_OBJECT_NIL)
		return 0;
	if (args->type != MSGPACK_OBJECT_MAP)
		return fail_type(err, "wordcount: initargs", "a map or nil", args);
	/* Stopwords wait until after the loop: they fold by lowercase,
	 * whichever key comes first. */
	for (uint32_t i = 0; i < args->via.map.size; i++) {
		const msgpack_object_kv *kv = &args->via.map.ptr[i];

		if (key_is(&kv->key, "lowercase")) {
			if (kv->val.type != MSGPACK_OBJECT_BOOLEAN)
				return fail_type(err, "wordcount: initargs: lowercase", "bool", &kv->val);
			st.lowercase = kv->val.via.boolean;
		} else if (key_is(&kv->key, "stopwords")) {
			stop = &kv->val;
		} else {
			const msgpack_object_str *k = &kv->key.via.str;

			err->code = MPOOL_E_TYPE;
			snprintf(err->message, sizeof(err->message),
				 "wordcount: initargs: unknown key \"%.*s\" (known: lowercase, stopwords)",
				 kv->key.type == MSGPACK_OBJECT_STR ? (int)(k->size > 40 ? 40 : k->size) : 1,
				 kv->key.type == MSGPACK_OBJECT_STR ? k->ptr : "?");
			return -1;
		}
	}
	if (stop && load_stopwords(stop, err) < 0) {
		wc_fini();
		return -1;
	}
	return 0;
}

/* The text to tokenize: arg itself, or a folded copy in *copy (the
 * caller frees it).  0, or -1 with err filled. */
static int get_text(const char *fn, const msgpack_object *arg, const char **text,
		    size_t *len, char **copy, struct mpool_task_error *err)
{
	*copy = NULL;
	if (arg->type != MSGPACK_OBJECT_STR)
		return fail_type(err, fn, "str", arg);
	*text = arg->via.str.ptr;
	*len = arg->via.str.size;
	if (!st.lowercase || arg->via.str.size == 0)
		return 0;
	*copy = malloc(arg->via.str.size);
	if (!*copy)
		return fail_nomem(err, fn);
	memcpy(*copy, arg->via.str.ptr, arg->via.str.size);
	ascii_lower(*copy, arg->via.str.size);
	*text = *copy;
	return 0;
}

static int count(const msgpack_object *arg, msgpack_packer *out, struct mpool_task_error *err)
{
	struct words counts = { 0 };
	size_t len = 0, pos = 0, wlen;
	const char *text = NULL, *w;
	char *copy;
	int r = -1;

	if (get_text("wordcount.count", arg, &text, &len, &copy, err) < 0)
		return -1;
	while (next_word(text, len, &pos, &w, &wlen))
		if (!words_has(&st.stop, w, wlen) && words_add(&counts, w, wlen) < 0)
			goto out;
	/* The map header must carry the final size, so pack after counting. */
	if (msgpack_pack_map(out, counts.n) < 0)
		goto out;
	for (size_t i = 0; i < counts.n; i++)
		if (msgpack_pack_str(out, counts.v[i].len) < 0 ||
		    msgpack_pack_str_body(out, counts.v[i].p, counts.v[i].len) < 0 ||
		    msgpack_pack_uint64(out, counts.v[i].count) < 0)
			goto out;
	r = 0;
out:
	words_free(&counts);
	free(copy);
	return r == 0 ? 0 : fail_nomem(err, "wordcount.count");
}

static int total(const msgpack_object *arg, msgpack_packer *out, struct mpool_task_error *err)
{
	size_t len = 0, pos = 0, wlen;
	const char *text = NULL, *w;
	uint64_t n = 0;
	char *copy;
	int r;

	if (get_text("wordcount.total", arg, &text, &len, &copy, err) < 0)
		return -1;
	while (next_word(text, len, &pos, &w, &wlen))
		n += !words_has(&st.stop, w, wlen);
	free(copy);
	r = msgpack_pack_uint64(out, n);
	return r == 0 ? 0 : fail_nomem(err, "wordcount.total");
}

/* SHA-256 as in FIPS 180-4, one-shot: the whole input is in memory anyway. */
static const uint32_t K[64] = {
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
	0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
	0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
	0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
	0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
	0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
	0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
	0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_block(uint32_t h[8], const unsigned char *p)
{
	uint32_t w[64], s[8], t1, t2;

	for (int i = 0; i < 16; i++)
		w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
		       (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
	for (int i = 16; i < 64; i++)
		w[i] = (ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10)) + w[i - 7] +
		       (ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3)) + w[i - 16];
	memcpy(s, h, sizeof(s));
	for (int i = 0; i < 64; i++) {
		t1 = s[7] + (ROR(s[4], 6) ^ ROR(s[4], 11) ^ ROR(s[4], 25)) +
		     ((s[4] & s[5]) ^ (~s[4] & s[6])) + K[i] + w[i];
		t2 = (ROR(s[0], 2) ^ ROR(s[0], 13) ^ ROR(s[0], 22)) +
		     ((s[0] & s[1]) ^ (s[0] & s[2]) ^ (s[1] & s[2]));
		memmove(s + 1, s, 7 * sizeof(s[0]));    /* h=g, g=f, ..., b=a */
		s[4] += t1;
		s[0] = t1 + t2;
	}
	for (int i = 0; i < 8; i++)
		h[i] += s[i];
}

static void sha256(const unsigned char *msg, size_t len, unsigned char out[32])
{
	uint32_t h[8] = { 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
			  0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19 };
	size_t full = len & ~(size_t)63, rest = len - full, tail_len = rest < 56 ? 64 : 128;
	uint64_t bits = (uint64_t)len * 8;
	unsigned char tail[128] = { 0 };

	for (size_t i = 0; i < full; i += 64)
		sha256_block(h, msg + i);
	if (rest)
		memcpy(tail, msg + full, rest);
	tail[rest] = 0x80;
	for (size_t i = 0; i < 8; i++)
		tail[tail_len - 1 - i] = (unsigned char)(bits >> (8 * i));
	for (size_t i = 0; i < tail_len; i += 64)
		sha256_block(h, tail + i);
	for (int i = 0; i < 32; i++)
		out[i] = (unsigned char)(h[i / 4] >> (24 - 8 * (i % 4)));
}

static int digest(const msgpack_object *arg, msgpack_packer *out, struct mpool_task_error *err)
{
	static const char hex[] = "0123456789abcdef";
	unsigned char md[32];
	char s[64];

	if (arg->type == MSGPACK_OBJECT_STR)
		sha256((const unsigned char *)arg->via.str.ptr, arg->via.str.size, md);
	else if (arg->type == MSGPACK_OBJECT_BIN)
		sha256((const unsigned char *)arg->via.bin.ptr, arg->via.bin.size, md);
	else
		return fail_type(err, "wordcount.sha256", "str or bin", arg);
	for (int i = 0; i < 32; i++) {
		s[2 * i] = hex[md[i] >> 4];
		s[2 * i + 1] = hex[md[i] & 15];
	}
	if (msgpack_pack_str(out, sizeof(s)) < 0 || msgpack_pack_str_body(out, s, sizeof(s)) < 0)
		return fail_nomem(err, "wordcount.sha256");
	return 0;
}

static const struct mpool_function wc_functions[] = {
	{ "count", count },
	{ "total", total },
	{ "sha256", digest },
	{ NULL, NULL },
};

MPOOL_MODULE_EXPORT const struct mpool_module mpool_module = {
	.abi = MPOOL_MODULE_ABI,
	.name = "wordcount",
	.init = wc_init,
	.fini = wc_fini,
	.functions = wc_functions,
};
