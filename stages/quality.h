/*
 * quality.h - what the analysis kind adds for compliance and code quality
 * (docs/stages.md "Compliance" and "Metrics"):
 *
 *   - rule keys: a finding of rule "misra-c2012-15.5" counts under
 *     "misra-c2012-15.5", its chapter "misra-c2012-15" and its standard
 *     "misra-c2012"; "cert-EXP05-C" under itself, "cert-EXP" and "cert";
 *     any other rule under its own id.  `thresholds:` keys that are not
 *     severities name one of these.
 *   - `suppress: [{rule: GLOB, file: GLOB, reason: TEXT}]`: matching
 *     findings do not count; every entry must say why.
 *   - `metrics: {complexity_max: N, complexity_over: {limit: N, max: N},
 *     duplicated_percent: X, no_worse: true}` judged on pmccabe and jscpd
 *     reports, `no_worse` against the `baseline:` run's reports.
 *
 * Pure functions over the JSON of orchestrator/reports.h: no I/O.
 */
#ifndef OTA_QUALITY_H
#define OTA_QUALITY_H

#include <jansson.h>

#include "../common/util.h"
#include "stage.h"

/* Append diagnostics for `suppress:`, `metrics:` and the keys of `thresholds:`. */
int quality_validate(const struct pl_stage *st, struct pl_diags *d);

/* Is the finding covered by an entry of the stage's `suppress:` list? */
int quality_suppressed(const json_t *suppress, const json_t *finding);

/* Add 1 to counts[k] for the finding's severity and each of its rule keys. */
void quality_count(json_t *counts, const json_t *finding);

/* Does the finding count under a severity or rule key above its threshold? */
int quality_over(const json_t *counts, const json_t *thresholds, const json_t *finding);

/*
 * The `metrics:` verdict: 1 when a measured metric is over its limit or,
 * with no_worse and a baseline run, above the baseline's value; msg gets
 * "complexity: ...; duplication: ..." naming the functions and clones.
 * 0 and nothing appended when the stage has no `metrics:`.
 */
int quality_metrics_verdict(const json_t *extra, const struct verdict_input *in, struct buf *msg);

#endif
