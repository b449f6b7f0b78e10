#include "registry.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "mem.h"
#include "mp_scan.h"

#define MAX_MODULES 64

/* Names are copied: the master reads them on every request, and must not
 * touch a module's pages, which a careless `cp` over the file can change
 * under it.  Workers are what runs module code.  In the master a loaded
 * function is a name only: fn and call are NULL. */
struct reg_fn {
	char *name;
	mpool_task_fn fn;          /* the static table's */
	mpool_task_call call;      /* load's */
	void *data;
};

struct entry {
	const struct mpool_module *m;
	char *name;
	struct reg_fn *fns;        /* the static ones, then load's */
	unsigned n_fns, n_static;
	void *initargs;            /* owned; NULL: nil */
	size_t initargs_len;
	bool loaded;               /* load ran (or failed) in this process */
};

static struct entry entries[MAX_MODULES];
static unsigned n_entries;

/* In the master: the names the fork server reported last (kept across
 * reg_clear()).  Before the first report (names_awaited) a function of a
 * module with load is accepted on trust: the one entry below. */
static char *known_names;
static size_t known_len;
static bool names_reported, names_awaited;
static const struct reg_fn on_trust;

/* [A-Za-z0-9_-]+, or with dots, parts of those joined by single dots;
 * the first len bytes of s. */
static int valid_name_n(const char *s, size_t len, bool dots)
{
	bool part = false;

	for (const char *end = s + len; s < end; s++) {
		if ((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		    (*s >= '0' && *s <= '9') || *s == '_' || *s == '-')
			part = true;
		else if (*s == '.' && dots && part)
			part = false;
		else
			return 0;
	}
	return part;
}

static int valid_name(const char *s, bool dots)
{
	return s ? valid_name_n(s, strlen(s), dots) : 0;
}

typedef int load_fn(const msgpack_object *initargs,
		    const struct mpool_loaded_function **ret_functions,
		    struct mpool_task_error *err);

/* An ABI 1 descriptor ends before load: never read past it. */
static load_fn *load_hook(const struct mpool_module *m)
{
	return m->abi >= 2 ? m->load : NULL;
}

static void add_fn(struct entry *e, const char *name, mpool_task_fn fn, mpool_task_call call,
		   void *data)
{
	e->fns = xrealloc(e->fns, (e->n_fns + 1) * sizeof(*e->fns));
	e->fns[e->n_fns++] = (struct reg_fn){ xstrndup(name, strlen(name)), fn, call, data };
}

static void drop_loaded(struct entry *e)
{
	for (unsigned j = e->n_static; j < e->n_fns; j++)
		free(e->fns[j].name);
	e->n_fns = e->n_static;
}

static bool has_fn(const struct entry *e, const char *name)
{
	for (unsigned j = 0; j < e->n_fns; j++)
		if (strcmp(e->fns[j].name, name) == 0)
			return true;
	return false;
}

/* e's share of known_names, added as names only.  The number added. */
static unsigned apply_known(struct entry *e)
{
	const char *buf = known_names;
	size_t len = known_len, mlen = strlen(e->name);
	unsigned kept = 0;

	while (buf && len > 0) {
		const char *end = memchr(buf, '\0', len);

		if (!end)
			break;
		if ((size_t)(end - buf) > mlen + 1 && memcmp(buf, e->name, mlen) == 0 &&
		    buf[mlen] == '.' && valid_name(buf + mlen + 1, true) &&
		    !has_fn(e, buf + mlen + 1)) {
			add_fn(e, buf + mlen + 1, NULL, NULL, NULL);
			kept++;
		}
		len -= (size_t)(end - buf) + 1;
		buf = end + 1;
	}
	return kept;
}

int reg_add(const struct mpool_module *m, const void *initargs, size_t initargs_len)
{
	struct entry *e;

	if (m->abi < MPOOL_MODULE_ABI_MIN || m->abi > MPOOL_MODULE_ABI)
		return -EPROTO;
	if (!valid_name(m->name, false) || (!m->functions && !load_hook(m)))
		return -EINVAL;
	for (const struct mpool_function *f = m->functions; f && f->name; f++)
		if (!valid_name(f->name, false) || !f->fn)
			return -EINVAL;
	for (unsigned i = 0; i < n_entries; i++)
		if (strcmp(entries[i].name, m->name) == 0)
			return -EEXIST;
	if (n_entries == MAX_MODULES)
		return -ENOSPC;
	e = &entries[n_entries++];
	e->m = m;
	e->name = xstrndup(m->name, strlen(m->name));
	for (const struct mpool_function *f = m->functions; f && f->name; f++)
		add_fn(e, f->name, f->fn, NULL, NULL);
	e->n_static = e->n_fns;
	e->initargs = initargs ? xmemdup(initargs, initargs_len) : NULL;
	e->initargs_len = initargs_len;
	/* A reload: the names the last fork server gave stay in force. */
	if (load_hook(m))
		apply_known(e);
	return 0;
}

void reg_clear(void)
{
	for (unsigned i = 0; i < n_entries; i++) {
		free(entries[i].initargs);
		free(entries[i].name);
		for (unsigned j = 0; j < entries[i].n_fns; j++)
			free(entries[i].fns[j].name);
		free(entries[i].fns);
	}
	memset(entries, 0, sizeof(entries));
	n_entries = 0;
}

static struct entry *find_module(const char *name, size_t len)
{
	for (unsigned i = 0; i < n_entries; i++)
		if (mp_str_eq(name, (uint32_t)len, entries[i].name))
			return &entries[i];
	return NULL;
}

/* Names come from MessagePack strings: their lengths fit in 32 bits. */
const struct reg_fn *reg_lookup(const char *name, size_t len)
{
	const char *dot = memchr(name, '.', len);
	const struct entry *e;
	size_t flen;

	if (!dot || !(e = find_module(name, (size_t)(dot - name))))
		return NULL;
	flen = len - (size_t)(dot - name) - 1;
	for (unsigned j = 0; j < e->n_fns; j++)
		if (mp_str_eq(dot + 1, (uint32_t)flen, e->fns[j].name))
			return &e->fns[j];
	if (names_awaited && load_hook(e->m) && valid_name_n(dot + 1, flen, true))
		return &on_trust;
	return NULL;
}

int reg_call(const struct reg_fn *f, const msgpack_object *arg, msgpack_packer *result,
	     struct mpool_task_error *err)
{
	if (f && f->fn)
		return f->fn(arg, result, err);
	if (f && f->call)
		return f->call(f->data, arg, result, err);
	/* The master checked the name, or took it on trust (registry.h): a
	 * miss is a name its module does not define after all, or a load
	 * that failed in this process alone. */
	return mpool_task_fail(err, MPOOL_E_NOFUNC, "no such function in this process: its "
			       "module does not define it, or did not load here");
}

/* The module's initargs, decoded into zone (nil when none), and err made
 * ready for its hook.  0, or -1 with err filled. */
static int unpack_initargs(const struct entry *e, msgpack_zone *zone, msgpack_object *args,
			   struct mpool_task_error *err)
{
	size_t off = 0;

	args->type = MSGPACK_OBJECT_NIL;
	if (!msgpack_zone_init(zone, 1024))
		return mpool_task_fail(err, MPOOL_E_INTERNAL, "out of memory");
	if (e->initargs && msgpack_unpack(e->initargs, e->initargs_len, &off, zone, args) < 0) {
		msgpack_zone_destroy(zone);
		return mpool_task_fail(err, MPOOL_E_INTERNAL, "unreadable initargs");
	}
	err->code = MPOOL_E_TASK;
	err->message[0] = '\0';
	return 0;
}

/* Calls e's load hook in this process and adds what it returns.  0, or -1
 * with err filled; either way it does not run again here. */
static int run_load(struct entry *e, struct mpool_task_error *err)
{
	const struct mpool_loaded_function *t = NULL;
	msgpack_object args;
	msgpack_zone zone;
	int r;

	e->loaded = true;
	drop_loaded(e);
	if (unpack_initargs(e, &zone, &args, err) < 0)
		return -1;
	r = load_hook(e->m)(&args, &t, err);
	msgpack_zone_destroy(&zone);
	if (r != 0) {
		if (!err->message[0])
			mpool_task_fail(err, MPOOL_E_TASK, "no reason given");
		return -1;
	}
	for (; t && t->name; t++) {
		if (!valid_name(t->name, true) || !t->call) {
			drop_loaded(e);
			snprintf(err->message, sizeof(err->message),
				 "load returned an invalid function (names are parts of "
				 "[A-Za-z0-9_-] joined by dots, each with a call): '%.80s'", t->name);
			return -1;
		}
		add_fn(e, t->name, NULL, t->call, t->data);
	}
	return 0;
}

unsigned reg_load_all(void)
{
	unsigned failed = 0;

	for (unsigned i = 0; i < n_entries; i++) {
		struct entry *e = &entries[i];
		struct mpool_task_error err = { 0 };

		if (!load_hook(e->m) || e->loaded)
			continue;
		if (run_load(e, &err) < 0) {
			log_err("module %s: load failed: %s; its functions are unavailable until "
				"the next reload", e->name, err.message);
			failed++;
		}
	}
	return failed;
}

size_t reg_loaded_names(char *buf, size_t size)
{
	size_t n = 0;

	for (unsigned i = 0; i < n_entries; i++) {
		const struct entry *e = &entries[i];

		for (unsigned j = e->n_static; j < e->n_fns; j++) {
			size_t len = strlen(e->name) + 1 + strlen(e->fns[j].name) + 1;

			if (n + len <= size)
				snprintf(buf + n, len, "%s.%s", e->name, e->fns[j].name);
			n += len;
		}
	}
	return n;
}

unsigned reg_set_loaded_names(const char *buf, size_t len)
{
	unsigned kept = 0;

	free(known_names);
	known_names = buf && len > 0 ? xmemdup(buf, len) : NULL;
	known_len = known_names ? len : 0;
	names_reported = true;
	names_awaited = false;
	for (unsigned i = 0; i < n_entries; i++) {
		if (load_hook(entries[i].m)) {
			drop_loaded(&entries[i]);
			entries[i].loaded = false;
			kept += apply_known(&entries[i]);
		}
	}
	return kept;
}

void reg_await_loaded_names(void)
{
	if (!names_reported)
		names_awaited = true;
}

int reg_init_all(struct mpool_task_error *err, const char **ret_module)
{
	/* A process the master forked: load here what the master accepts
	 * (everything, while it accepts on trust), never in the master
	 * itself. */
	for (unsigned i = 0; i < n_entries; i++) {
		struct entry *e = &entries[i];
		struct mpool_task_error lerr = { 0 };

		if (!load_hook(e->m) || e->loaded || (e->n_fns == e->n_static && !names_awaited))
			continue;
		if (run_load(e, &lerr) < 0)
			log_err("worker %d: module %s: load failed: %s", (int)getpid(), e->name,
				lerr.message);
	}
	for (unsigned i = 0; i < n_entries; i++) {
		const struct entry *e = &entries[i];
		msgpack_object args;
		msgpack_zone zone;
		int r;

		if (!e->m->init)
			continue;
		r = unpack_initargs(e, &zone, &args, err);
		if (r == 0) {
			r = e->m->init(&args, err);
			msgpack_zone_destroy(&zone);
		}
		if (r != 0) {
			*ret_module = e->m->name;
			return -1;
		}
	}
	return 0;
}

void reg_fini_all(void)
{
	for (unsigned i = n_entries; i-- > 0;)
		if (entries[i].m->fini)
			entries[i].m->fini();
}

void reg_each_fn(void (*fn)(const char *name, void *arg), void *arg)
{
	char name[512];

	/* A name only is announced too: workers from the fork server run it. */
	for (unsigned i = 0; i < n_entries; i++)
		for (unsigned k = 0; k < entries[i].n_fns; k++) {
			snprintf(name, sizeof(name), "%s.%s", entries[i].name,
				 entries[i].fns[k].name);
			fn(name, arg);
		}
}
