/*
 * rollout.c - the `rollout` stage kind: expose a release step by step.
 *
 *   - name: canary
 *     kind: rollout
 *     steps: [ { percent: 1, hold: 6h }, { percent: 5, hold: 12h }, { percent: 25, hold: 24h } ]
 *     rings: [ { region: eu }, { region: us } ]      # optional, outermost
 *     window: { start: "00:00", end: "04:00", utc_offset: "+01:00" }   # optional
 *     approval: required                               # optional
 *     gates: [crash_free, boots]
 *
 * Nothing runs on an agent: the engine hands the job to the rollout
 * controller (orchestrator/rollout.h), which walks the steps, holds each
 * for its duration while the gates are checked, and finishes the job when
 * the last step passed (or fails it when a gate fails and the release is
 * rolled back).  This file only checks the stage's keys; the plan itself
 * is built by rollout_plan_from_extra, shared with `soak`.
 */
#include "stage.h"

#include <string.h>

#include "../orchestrator/rollout.h"
#include "rollout_kind.h"

/* Does st need (directly or through other stages) a `release` stage? */
static int needs_release(const struct pipeline *p, const struct pl_stage *st, int depth)
{
	if (depth > 64)
		return 0;
	for (size_t i = 0; i < st->needs.n; i++) {
		int k = pipeline_stage_index(p, st->needs.v[i]);
		const struct pl_stage *n = k >= 0 ? &p->stages[k] : NULL;
		if (n && ((n->kind && !strcmp(n->kind, "release")) || needs_release(p, n, depth + 1)))
			return 1;
	}
	return 0;
}

int rollout_kind_validate(const struct pipeline *p, const struct pl_stage *st, struct pl_diags *d)
{
	json_t *plan = NULL, *gates = json_object_get(st->extra, "gates"), *g;
	size_t i;

	if (!st->extra && !strcmp(st->kind, "rollout")) {
		pl_diag_add(d, st->pos, "rollout stage '%s' needs steps: [{percent: 1, hold: 6h}, ...]", st->name);
		return 0;
	}
	if (rollout_plan_from_extra(st->kind, st->extra ? st->extra : json_object(), &plan) < 0) {
		pl_diag_add(d, st->pos, "%s stage '%s': %s", st->kind, st->name, ota_error_last());
		return 0;
	}
	json_decref(plan);
	json_array_foreach(gates, i, g) {
		const char *name = json_string_value(g);
		if (!p->gates || !json_object_get(p->gates, name))
			pl_diag_add(d, st->pos, "%s stage '%s' names gate '%s', which the top-level 'gates' does not define",
				    st->kind, st->name, name);
	}
	if (st->retry.count > 0)
		pl_diag_add(d, st->pos, "%s stage '%s' is never retried (a failed gate means roll back): remove 'retry'",
			    st->kind, st->name);
	if (!needs_release(p, st, 0))
		pl_diag_add(d, st->pos, "%s stage '%s' must come after a release stage (needs: [release]): it rolls out"
			    " the release its run makes", st->kind, st->name);
	return 0;
}

static const char *const rollout_keys[] = { "steps", "rings", "cohort", "gates", "approval", "window",
					    "max_extension", "check_interval", NULL };

const struct stage_kind stage_kind_rollout = {
	.name = "rollout",
	.summary = "expose the run's release to the fleet in steps of percent + hold, gated on fleet metrics",
	.keys = rollout_keys,
	.runs_steps = 0,
	.validate = rollout_kind_validate,
	.rollout = 1,
};
