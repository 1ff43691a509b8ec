/*
 * soak.c - the `soak` stage kind: a release lives on the staging group.
 *
 *   - name: staging
 *     kind: soak
 *     cohort: { group: staging }     # default: every device
 *     duration: 24h                  # default 24h
 *     gates: [crash_free, boots]
 *
 * One step at 100 % of the cohort, held for `duration` while the gates
 * are checked; like `rollout` it runs in the rollout controller.
 */
#include "stage.h"

#include "rollout_kind.h"

static const char *const soak_keys[] = { "cohort", "duration", "gates", "approval", "max_extension", "check_interval",
					 NULL };

const struct stage_kind stage_kind_soak = {
	.name = "soak",
	.summary = "hold the run's release on a cohort (staging) for a duration, gated on fleet metrics",
	.keys = soak_keys,
	.runs_steps = 0,
	.validate = rollout_kind_validate,
	.rollout = 1,
};
