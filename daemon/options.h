/* options: every mpoold setting, declared once.  One table serves the
 * command line (getopt_long), the config file (the option's long name is its
 * key), --help and --print-config.  An entry names its target field in cfg,
 * its type and its range, so the two sources cannot drift apart. */
#ifndef OPTIONS_H
#define OPTIONS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

enum opt_type {
	OPT_UINT,       /* decimal integer in [min, max] */
	OPT_LEVEL,      /* error, warning, info, debug */
	OPT_PATH,       /* a socket path: fits sun_path */
	OPT_MODE,       /* octal permission bits, at most 0777 */
	OPT_GROUP,      /* a group name or a numeric gid */
	OPT_MODULE,     /* the path of the current module */
	OPT_INITARGS,   /* the initargs (JSON) of the current module */
	OPT_STRING,     /* non-empty text that fits the field (a char array) */
	OPT_NAME,       /* 1 to CONFIG_NAME_MAX letters, digits, '-' or '_' */
	OPT_SPREAD,     /* maps, all, none (enum config_spread) */
	OPT_CONFIG,     /* --config FILE (command line only) */
	OPT_ACTION,     /* --help, --version, --print-config (command line only) */
};

/* Where an option may appear. */
enum opt_scope {
	OPT_GLOBAL,     /* command line, and a key before any section */
	OPT_SECTION,    /* command line, and a key of a [module] section */
	OPT_CLI,        /* command line only */
};

struct opt {
	const char *name;       /* --name, and the config key */
	char short_name;        /* -x, or 0 */
	enum opt_type type;
	enum opt_scope scope;
	const char *key;        /* the key, where it differs from name ([module] path) */
	const char *metavar;    /* the argument in --help; NULL: none */
	size_t off, size;       /* target field in struct config */
	uint64_t min, max;      /* OPT_UINT */
	const char *dflt;       /* the default in words, when the field's initial value does not say it */
	const char *help;
};

extern const struct opt opt_table[];
extern const size_t opt_count;

/* The option whose key is key in section ("" before any section, "module"),
 * or NULL. */
const struct opt *opt_by_key(const char *section, const char *key);

/* Parses text for o and stores it in cfg (OPT_MODULE and OPT_INITARGS: in the
 * last entry of cfg.modules, which must exist).  0, or -1 with a reason
 * ("expected an integer from 1 to 1024, got 'x'") in why. */
int opt_set(const struct opt *o, const char *text, char *why, size_t why_size);

/* --help: every option with its default (the values cfg holds now). */
void opt_usage(FILE *f);
/* --print-config: the settings in cfg, as a config file. */
void opt_print_config(FILE *f);

#endif
