/*
 * pipeline_int.h - what the pipeline module's files share.  Private to
 * orchestrator/pipeline*.c; everyone else uses pipeline.h.
 *
 *   pipeline_walk.c    the walker: typed access to libyaml nodes that
 *                      appends a diagnostic when a node has the wrong shape
 *   pipeline_stage.c   the schema of one stage (and env / branch filters)
 *   pipeline.c         diagnostics, the top level, whole-file checks
 *                      (names, needs, cycles), pipeline_parse / _free
 *   pipeline_expand.c  stages into jobs, ${{ matrix.x }}, ref filters
 */
#ifndef OTA_PIPELINE_INT_H
#define OTA_PIPELINE_INT_H

#include <limits.h>
#include <string.h>
#include <yaml.h>

#include "pipeline.h"

/* ---- the walker (pipeline_walk.c) -------------------------------------- */

/*
 * Most units of work one file may cost: list items, mapping pairs, values
 * converted to JSON, artifact paths checked per matrix job.  Aliases make
 * a small file describe a huge tree ("stages: [*s, *s, ...]" where s holds
 * 10,000 steps); the budget keeps parsing it small and fast.
 */
#define PL_MAX_WORK 200000

/* Sizes past any real pipeline, so duplicate checks stay cheap. */
#define PL_MAX_KEYS 1000         /* keys in one mapping (env ...) */
#define PL_MAX_SECRETS 100       /* secrets of one stage */
#define PL_MAX_AXES 32           /* axes of one matrix */

struct walker {
	yaml_document_t *doc;
	struct pl_diags *d;
	size_t start;         /* d->v[start..] are this parse's diagnostics */
	size_t work;          /* spent of PL_MAX_WORK */
};

/* One key of a mapping, after merge keys ("<<") are resolved.  Borrowed
 * from the document. */
struct pair {
	const char *key;
	yaml_node_t *k;
	yaml_node_t *v;
};

struct map {
	struct pair *v;
	size_t n, cap;
};

#define MAP_INIT { NULL, 0, 0 }

/* Flags for pw_get_string(). */
enum { W_NONEMPTY = 1 };

static inline yaml_node_t *node_at(const struct walker *w, int i)
{
	return yaml_document_get_node(w->doc, i);
}

static inline struct pl_pos pos_of(const yaml_node_t *n)
{
	struct pl_pos p;
	p.line = n->start_mark.line < INT_MAX ? (int)n->start_mark.line + 1 : INT_MAX;
	p.col = n->start_mark.column < INT_MAX ? (int)n->start_mark.column + 1 : INT_MAX;
	return p;
}

static inline int is_scalar(const yaml_node_t *n)
{
	return n->type == YAML_SCALAR_NODE;
}

static inline const char *sval(const yaml_node_t *n)
{
	return (const char *)n->data.scalar.value;
}

/* A scalar holding a NUL ("\0" in a double-quoted string). */
static inline int has_nul(const yaml_node_t *n)
{
	return strlen(sval(n)) != n->data.scalar.length;
}

/* null, ~, an empty plain scalar, or !!null. */
static inline int is_null(const yaml_node_t *n)
{
	const char *s;

	if (!is_scalar(n))
		return 0;
	if (n->tag && !strcmp((const char *)n->tag, YAML_NULL_TAG))
		return 1;
	if (n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
		return 0;
	s = sval(n);
	return !*s || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") ||
	       !strcmp(s, "NULL");
}

/* Length of at most max bytes of s (len bytes), cut at a UTF-8 character
 * boundary: messages go out as JSON strings. */
size_t pw_utf8_cut(const char *s, size_t len, size_t max);

/* What a node is, for "got ..." in messages: "a list", "'abc'" ... */
struct got {
	char s[72];
};
struct got pw_got(const yaml_node_t *n);

/*
 * "SUBJECT must be SHAPE, got X" at n.  Subjects come quoted by the
 * caller ("'timeout'", "each item of 'needs'") so they can be phrases.
 */
void pw_wrong_type(struct walker *w, const yaml_node_t *n, const char *subject, const char *shape);

/* pl_diag_add() once: a node merged or aliased into several places would
 * otherwise report the same problem at the same position again. */
void pw_diag(struct walker *w, struct pl_pos pos, const char *fmt, ...) OTA_PRINTF(3, 4);

/* Spend units of the work budget; -1 once it is exhausted (reported once,
 * at node at). */
int pw_spend(struct walker *w, const yaml_node_t *at, size_t units);

/* After that, walking on would only report what is missing because of it. */
static inline int pw_exhausted(const struct walker *w)
{
	return w->work > PL_MAX_WORK;
}

/* Each returns 0, or -1 after adding a diagnostic. */
int pw_expect_map(struct walker *w, const yaml_node_t *n, const char *subject);
/* The items of a list into *items (array owned by the caller, free it
 * also on failure).  With allow_scalar one non-null scalar is a list of one. */
int pw_expect_seq(struct walker *w, yaml_node_t *n, const char *subject, const char *shape,
		  int allow_scalar, yaml_node_t ***items, size_t *nitems);
/* A scalar into *out (replacing what was there). */
int pw_get_string(struct walker *w, const yaml_node_t *n, const char *subject, int flags, char **out);
int pw_get_int(struct walker *w, const yaml_node_t *n, const char *subject, int lo, int hi, int *out);
int pw_get_bool(struct walker *w, const yaml_node_t *n, const char *subject, int *out);

/*
 * Mappings.  pw_map_collect gathers n's pairs into m: keys written in the
 * mapping win over merged ones ("<<: *defaults"), duplicates within the
 * mapping itself (own) are reported.  pw_map_check_keys reports keys not
 * in known (NULL-terminated) as unknown, with a did-you-mean, and drops
 * them; where says whose key it is ("in stage 'build'").  pw_map_read is
 * expect_map + collect + check (known NULL: any key).
 */
void pw_map_collect(struct walker *w, yaml_node_t *n, struct map *m, int own, int depth);
void pw_map_check_keys(struct walker *w, struct map *m, const char *where,
		       const char *const *known, int dot_keys_ok);
int pw_map_read(struct walker *w, yaml_node_t *n, const char *subject, const char *where,
		const char *const *known, struct map *m);
struct pair *pw_get(const struct map *m, const char *key);
void pw_map_release(struct map *m);

/* ota_did_you_mean() for untrusted words: no suggestion for (or of) names
 * longer than 64 bytes, where edit distances would only cost time. */
const char *pw_did_you_mean(const char *word, const char *const *candidates, size_t n);

/* Is s in the NULL-terminated list (list may be NULL)? */
int pw_in_list(const char *const *list, const char *s);

/* Any value as JSON (plain scalars typed as in YAML 1.2's core schema);
 * NULL after a diagnostic (too deep, too large). */
json_t *pw_to_json(struct walker *w, yaml_node_t *n, int depth);

/* ---- schema (pipeline_stage.c, pipeline.c) ----------------------------- */

/* What the whole-file checks need to know about each stage. */
struct stage_aux {
	yaml_node_t *name_node;
	yaml_node_t **need_nodes;   /* parallel to st->needs.v */
	int ok;                     /* its own keys had no problems */
};

struct pl_ctx {
	struct walker w;
	struct pipeline *p;
	struct stage_aux *aux;      /* parallel to p->stages */
	int matrix_failed;          /* the current stage's matrix had problems */
};

/* Stage idx of c->p->stages from node n. */
void pl_parse_stage(struct pl_ctx *c, yaml_node_t *n, size_t idx);
/* env: { NAME: value }; st is NULL for the pipeline's own env. */
void pl_parse_env(struct pl_ctx *c, const struct pl_stage *st, yaml_node_t *n, struct pl_kvlist *out);
/* { branches, tags } for `when` and `on.push`; of names the owner in
 * messages (" of stage 'x'", or ""). */
void pl_parse_filter(struct pl_ctx *c, yaml_node_t *n, const char *name, const char *of,
		     struct pl_filter *f);

/* `cache:` of a stage into st->cache (pipeline_cache.c); who: "stage 'x'". */
void pl_parse_cache(struct pl_ctx *c, struct pl_stage *st, yaml_node_t *n, const char *who);

/* ---- expansion (pipeline_expand.c) ------------------------------------- */

/* Jobs a matrix of n axes expands to: 1 for no axes; the product saturates
 * at SIZE_MAX instead of wrapping. */
size_t pl_matrix_count(const struct pl_matrix_axis *axes, size_t n);

/* Value index per axis of job k (0 <= k < count); the first axis varies
 * slowest, like nested loops written in axis order. */
void pl_matrix_choice(const struct pl_matrix_axis *axes, size_t n, size_t k, size_t *choice);

/*
 * Substitute ${{ matrix.NAME }} in s (spaces inside the braces optional)
 * with value choice[i] of the stage's axis NAME, appending to out.  With
 * choice or out NULL it only checks s.  st may be NULL (pipeline-level
 * values): then any expression is an error.  On error returns OTA_EINVAL
 * and, if err is not NULL, *err is a message (caller frees).
 */
int pl_subst(const char *s, const struct pl_stage *st, const size_t *choice,
	     struct buf *out, char **err);

/* A non-empty relative path with no ".." component (artifact paths, names). */
int pl_path_is_safe(const char *s);

#endif
