/*
 * analysis.c - the `analysis` stage kind: static analysis with thresholds.
 *
 *   - name: static-analysis
 *     kind: analysis
 *     steps: [ { run: make lint } ]
 *     reports: { cppcheck: build/cppcheck.xml }     # and/or sarif: PATH
 *     thresholds: { error: 0, warning: 10 }         # default { error: 0 }
 *     baseline: main                                # optional
 *
 *     suppress: [ { rule: "misra-c2012-15.5", reason: "..." } ]   # optional
 *     metrics: { complexity_max: 15, duplicated_percent: 3, no_worse: true }
 *
 * The agent uploads the reports after the steps; the verdict
 * (reports_kind.c) counts findings per severity and per rule, chapter and
 * standard (quality.c: thresholds such as {misra-c2012: 0}), leaving out
 * suppressed ones, and fails when a count is above its threshold.  With
 * `baseline: BRANCH` only findings whose fingerprint is not in the same
 * stage's reports of the pipeline's last passed run on that branch count,
 * so old debt does not block a change.  pmccabe and jscpd reports are
 * measurements judged by `metrics:` (quality.c).
 */
#include "stage.h"

#include <string.h>

#include "quality.h"
#include "reports_kind.h"

static const char *const analysis_formats[] = { "cppcheck", "sarif", "pmccabe", "jscpd", NULL };

static int analysis_validate(const struct pipeline *p, const struct pl_stage *st, struct pl_diags *d)
{
	json_t *t = json_object_get(st->extra, "thresholds"), *v, *b = json_object_get(st->extra, "baseline");
	const char *sev;

	(void)p;
	rk_validate_reports(st, d, analysis_formats, 1);
	if (t && !json_is_object(t))
		pl_diag_add(d, st->pos, "analysis stage '%s': 'thresholds' must map severities or rules to counts,"
			    " e.g. {error: 0, warning: 10, misra-c2012: 0}", st->name);
	json_object_foreach(t, sev, v)
		if (!json_is_integer(v) || json_integer_value(v) < 0)
			pl_diag_add(d, st->pos, "analysis stage '%s': thresholds.%s must be a count (0 or more)",
				    st->name, sev);
	if (b && (!json_is_string(b) || !*json_string_value(b) || strchr(json_string_value(b), ' ')))
		pl_diag_add(d, st->pos, "analysis stage '%s': 'baseline' must be a branch name, e.g. main", st->name);
	quality_validate(st, d);
	return 0;
}

static const char *const analysis_keys[] = { "reports", "thresholds", "baseline", "suppress", "metrics", NULL };

const struct stage_kind stage_kind_analysis = {
	.name = "analysis",
	.summary = "static analysis on an agent; cppcheck/SARIF findings against per-severity or per-rule thresholds,"
		   " complexity and duplication metrics against limits",
	.keys = analysis_keys,
	.runs_steps = 1,
	.validate = analysis_validate,
	.verdict = rk_analysis_verdict,
};
