/*
 * pipeline.h - the pipeline file: parse, validate, expand.
 *
 * A pipeline is YAML (docs/pipeline.md).  pipeline_parse() reads it with
 * libyaml into the typed model below and validates it completely: every
 * problem found is appended to a struct pl_diags as "file:line:column:
 * reason", and parsing fails if there was at least one.  Nothing else in
 * otacd touches YAML for pipelines.
 *
 * The model is plain data owned by struct pipeline; pipeline_free() frees
 * all of it.  Positions are 1-based line and column of the YAML node.
 *
 * pipeline_expand_stage() turns one stage into its jobs: the cartesian
 * product of the stage's matrix, with ${{ matrix.NAME }} substituted in step
 * commands, env values, artifact paths/fields and agent labels.  Jobs are
 * returned as JSON (jansson) because they are stored as JSON in the run.
 */
#ifndef OTA_PIPELINE_H
#define OTA_PIPELINE_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "../../common/util.h"

struct stage_kind;

struct pl_pos {
	int line;   /* 1-based; 0 when unknown */
	int col;    /* 1-based */
};

/* One validation problem. */
struct pl_diag {
	struct pl_pos pos;
	char *msg;          /* without the file:line:col prefix */
};

struct pl_diags {
	char *file;         /* name used in messages */
	struct pl_diag *v;
	size_t n, cap;
};

void pl_diags_init(struct pl_diags *d, const char *file);
void pl_diag_add(struct pl_diags *d, struct pl_pos pos, const char *fmt, ...) OTA_PRINTF(3, 4);
/* Formats every diagnostic as "file:line:col: msg\n" into out. */
void pl_diags_format(const struct pl_diags *d, struct buf *out);
void pl_diags_release(struct pl_diags *d);

struct pl_kv {
	char *key;
	char *value;
	struct pl_pos pos;
};

struct pl_kvlist {
	struct pl_kv *v;
	size_t n;
};

/* Branch and tag globs (fnmatch(3) patterns, FNM_PATHNAME not set). */
struct pl_filter {
	int set;                   /* the key was present at all */
	struct strvec branches;    /* empty: no branch matches (when set) */
	struct strvec tags;
};

struct pl_step {
	char *name;                /* may be NULL: shown as the command */
	char *run;                 /* shell command, run with /bin/sh -e -c */
	struct pl_pos pos;
};

struct pl_matrix_axis {
	char *name;
	char **values;
	size_t nvalues;
	struct pl_pos pos;
};

struct pl_artifact {
	char *path;                /* glob relative to the job's workspace */
	char *name;                /* optional: stored name; default the file's relative path */
	char *type;                /* optional: application, bootloader, ... (used by release) */
	char *hardware;            /* optional: hardware variant */
	int optional;              /* missing files do not fail the job */
	struct pl_pos pos;
};

/* Failure kinds a retry can apply to (bit set). */
enum {
	PL_RETRY_SCRIPT = 1 << 0,  /* a step exited non-zero */
	PL_RETRY_TIMEOUT = 1 << 1, /* the job ran past its timeout */
	PL_RETRY_INFRA = 1 << 2,   /* agent lost, lease expired, upload failed */
};

struct pl_retry {
	int count;                 /* extra attempts for failures in `on` */
	unsigned on;               /* PL_RETRY_* mask */
	int infra;                 /* extra attempts for infra failures (default 2) */
};

struct pl_stage {
	char *name;
	char *kind;                          /* default "command" */
	const struct stage_kind *impl;       /* resolved from stages/ */
	struct pl_pos pos;                   /* the stage mapping */
	struct strvec needs;
	struct pl_pos needs_pos;
	struct pl_matrix_axis *matrix;
	size_t nmatrix;
	struct pl_filter when;
	struct pl_step *steps;
	size_t nsteps;
	struct pl_kvlist env;
	struct strvec secrets;
	struct strvec labels;                /* agent.labels */
	int64_t timeout_ms;                  /* 0: the daemon default (1h) */
	struct pl_retry retry;
	struct pl_artifact *artifacts;
	size_t nartifacts;
	json_t *extra;                       /* kind-specific keys, as JSON (NULL if none) */
	json_t *cache;                       /* `cache:` checked, as {key, paths, restore_keys}; NULL if none */
};

struct pipeline {
	char *file;
	char *name;
	struct pl_filter on_push;            /* on.push.{branches,tags} */
	struct pl_kvlist env;
	char *concurrency;                   /* group name, NULL if none */
	struct pl_stage *stages;
	size_t nstages;
	json_t *gates;                       /* top-level `gates`: object NAME -> spec (NULL if none) */
};

/* Most jobs one stage's matrix may expand to. */
#define PL_MAX_MATRIX_JOBS 256
/* Most stages in one pipeline. */
#define PL_MAX_STAGES 1000
/* Most diagnostics kept; one more says that the rest were dropped. */
#define PL_MAX_DIAGS 100

/*
 * Parse and validate text (len bytes) as the pipeline file `file`.
 * On success *out is the pipeline and nothing is added to diags.  On
 * failure returns OTA_EINVAL, *out is NULL and diags has every problem
 * found appended (YAML syntax errors stop at the first one; schema errors
 * are all collected), sorted by position.  Set diags up with
 * pl_diags_init() first (a zeroed struct also works: then `file` names
 * it) and pl_diags_release() it afterwards.  The error slot
 * (ota_error_last) gets the first new diagnostic, formatted.
 */
int pipeline_parse(struct pipeline **out, const char *file, const char *text,
		   size_t len, struct pl_diags *diags);
void pipeline_free(struct pipeline *p);

/* Index of the stage called name, or -1. */
int pipeline_stage_index(const struct pipeline *p, const char *name);

/*
 * Does a full ref ("refs/heads/main", "refs/tags/v1.2") pass the filter?
 * An unset filter passes everything.  A plain name without "refs/" is taken
 * as a branch.
 */
int pipeline_filter_match(const struct pl_filter *f, const char *ref);

/*
 * Expand stage st into jobs.  *out is a new JSON array; each element:
 *   { "name": "build (board=mps2-an385)",   -- the stage name when no matrix
 *     "matrix": { "board": "mps2-an385" },   -- {} when no matrix
 *     "steps": [ { "name": "...", "run": "..." } ],
 *     "env": { "K": "V" },                   -- pipeline env overlaid by stage env
 *     "secrets": [ "NAME" ],
 *     "labels": [ "arm-gcc" ],
 *     "timeout_ms": 3600000,                  -- 0: the stage set none (daemon default)
 *     "retry": { "count": 0, "on": ["script","timeout","infra"], "infra": 2 },
 *     "artifacts": [ { "path": "...", "name": ..., "type": ..., "hardware": ..., "optional": false } ],
 *     "stage": "build", "kind": "command",
 *     "extra": { ... },                       -- the kind's own keys, {} if none
 *     "cache": { "key": T, "paths": [..], "restore_keys": [..] } }  -- only with `cache:`
 * A step's "name" is always a string: the command's first line when the
 * file names none.  Artifact name/type/hardware are null when absent.
 * On failure (a hand-built stage with a bad ${{ }}) returns OTA_EINVAL.
 */
int pipeline_expand_stage(const struct pipeline *p, const struct pl_stage *st, json_t **out);

#endif
