/*
 * yamlbound.h - bound a YAML document's depth and node count before
 * libyaml builds its node tree.
 *
 * yaml_parser_load() builds every node of a document, and deep nesting
 * makes libyaml's scanner and loader slow (a 1 MB body of 100,000 nested
 * flow sequences did not load in 20 s).  yaml_bounds_check() runs libyaml's
 * event parser over the text first and stops at the first event past a
 * bound, so a hostile document costs at most the bytes up to that point.
 * Syntax errors are left to the loader, which reports them as before.
 */
#ifndef OTA_YAMLBOUND_H
#define OTA_YAMLBOUND_H

#include <stddef.h>

/* The bounds used for pipelines and the server config. */
#define YAML_MAX_DEPTH 64
#define YAML_MAX_NODES 200000

struct yaml_bound_err {
	int line, col;   /* 1-based, of the node past the bound */
	char msg[160];
};

/*
 * 0 when text (len bytes) nests at most max_depth collections deep and has
 * at most max_nodes nodes (scalars, collections and aliases), or when it is
 * not valid YAML up to the point checked; OTA_ETOOBIG with *err filled
 * when a bound is passed.
 */
int yaml_bounds_check(const char *text, size_t len, int max_depth, size_t max_nodes, struct yaml_bound_err *err);

#endif
