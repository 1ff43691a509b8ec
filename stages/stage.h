/*
 * stage.h - the interface every stage kind implements.
 *
 * A stage's `kind:` picks one struct stage_kind by name (stage_kind_find).
 * The pipeline parser calls validate() for kind-specific checks and keeps
 * the keys listed in `keys` as JSON in pl_stage.extra; the engine asks the
 * kind for a job's verdict when the job's agent reports back.
 *
 * One file per kind lives in this folder (command.c, build.c, test.c,
 * analysis.c, hil.c, release.c, soak.c, rollout.c) and registry.c lists them.
 * Kinds that are planned but not built into this version are still known by
 * name, so a pipeline that uses them gets a clear "not available" message
 * instead of "unknown kind".
 */
#ifndef OTA_STAGE_H
#define OTA_STAGE_H

#include <jansson.h>
#include "../orchestrator/pipeline/pipeline.h"

/* What an agent reported for one job attempt. */
struct job_result {
	int exit_code;             /* of the last step run; -1 if none ran */
	const char *failure_kind;  /* NULL on success, else "script", "timeout", "infra", "canceled" */
	const char *message;       /* short human reason, may be NULL */
};

/* What the engine hands a verdict besides the agent's result (engine thread). */
struct verdict_input {
	/* The attempt's stored reports, oldest first (never NULL):
	 * [{"format": "junit"|"cppcheck"|"sarif"|"toolchain", "name": N, "body": {...}}],
	 * body as orchestrator/reports.h describes. */
	const json_t *reports;
	/* For a stage with `baseline: BRANCH`: the report bodies of the same
	 * stage in the last passed run of the pipeline on refs/heads/BRANCH;
	 * NULL when there is no such run (or no baseline). */
	const json_t *baseline;
	int64_t baseline_run;       /* that run's id, 0 if none */
};

struct otacd_config;
struct engine;

/* What a kind that runs inside otacd (see stage_kind.run) works with. */
struct stage_ctx {
	int64_t run_id, job_id;
	int attempt;
	const json_t *job;                   /* the job spec, "extra" holds the kind's keys */
	const struct otacd_config *config;
	struct engine *engine;               /* for recording what the stage made */
};

/* Append a line to the job's log (for kinds that run inside otacd). */
void stage_log(const struct stage_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

struct stage_kind {
	const char *name;
	const char *summary;                 /* one line for docs and errors */
	/* Kind-specific keys accepted in the stage mapping (NULL-terminated). */
	const char *const *keys;
	/* Does the kind run steps on agents (and so require `steps`)? */
	int runs_steps;
	/* Extra validation after the generic checks; append to d.  May be NULL.
	 * Called once the whole file is parsed, only for stages whose generic
	 * keys had no problems (so name, steps ... are filled in); p may still
	 * have problems elsewhere.  extra holds the kind's keys (or is NULL);
	 * report at st->pos, the model keeps no per-key positions for them. */
	int (*validate)(const struct pipeline *p, const struct pl_stage *st, struct pl_diags *d);
	/* Verdict for one finished attempt: 0 passed, 1 failed.  May be NULL:
	 * then a job passes exactly when failure_kind is NULL.  job_spec is the
	 * job's JSON from pipeline_expand_stage() (the engine does not keep the
	 * parsed pipeline, so anything a kind needs must be in the spec); in
	 * holds the reports the attempt uploaded.  A kind may set *message
	 * (malloc'd) to replace r->message as the job's reason. */
	int (*verdict)(const json_t *job_spec, const struct job_result *r, const struct verdict_input *in,
		       char **message);
	/*
	 * Kinds with no agent work (release; later soak, rollout) do it here,
	 * on otacd's stage worker thread; NULL for kinds whose steps run on
	 * agents.  Fill r (failure_kind NULL on success; message a static or
	 * ctx-lifetime string).  Must be safe to run again after a crash: the
	 * engine re-runs an in-daemon job that was running when otacd died.
	 */
	int (*run)(const struct stage_ctx *ctx, struct job_result *r);
	/*
	 * Set for soak and rollout: the job is a rollout that the rollout
	 * controller drives for as long as its plan says (hours to days), not
	 * work for an agent or the stage worker (orchestrator/rollout.h).
	 */
	int rollout;
};

/* The kind called name, or NULL.  *planned is set to 1 when the name is a
 * kind that exists in otacd's design but is not built into this version. */
const struct stage_kind *stage_kind_find(const char *name, int *planned);
/* Names of every available kind (for did-you-mean), NULL-terminated. */
const char *const *stage_kind_names(void);
/* Names of the planned kinds not built into this version, NULL-terminated. */
const char *const *stage_kind_planned_names(void);

#endif
