/*
 * reports_kind.h - what the build, test, analysis and hil kinds share:
 * checking their keys, judging an attempt from its stored reports
 * (orchestrator/reports.h shapes), and loading those reports for the
 * engine.  docs/stages.md describes the keys.
 */
#ifndef OTA_REPORTS_KIND_H
#define OTA_REPORTS_KIND_H

#include <jansson.h>
#include <stdint.h>

#include "stage.h"

struct store;

/*
 * Validation helpers (append to d, return 0).  formats lists the report
 * formats the kind accepts under `reports:` ("junit"; "cppcheck", "sarif").
 */
int rk_validate_reports(const struct pl_stage *st, struct pl_diags *d, const char *const *formats, int required);
int rk_validate_tests(const struct pl_stage *st, struct pl_diags *d);     /* allow_failures, quarantine */
int rk_validate_bool(const struct pl_stage *st, struct pl_diags *d, const char *key);
int rk_validate_strings(const struct pl_stage *st, struct pl_diags *d, const char *key);

/*
 * The test/hil verdict: 1 (failed) when a testcase failed or errored that
 * is not quarantined (`quarantine: [name | classname.name]`), unless
 * `allow_failures: true`; also 1 whenever r failed (a step's exit code
 * still counts), or when the spec names reports but none was stored.
 * *message (malloc'd or NULL): "2 of 19 tests failed: NAME: MESSAGE; ...".
 */
int rk_tests_verdict(const json_t *spec, const struct job_result *r, const struct verdict_input *in, char **message);

/*
 * The analysis verdict: findings of every cppcheck/sarif report counted
 * per severity and per rule key (quality.h: rule, chapter, standard), less
 * those matching `suppress:` and, when the stage has `baseline:` and a
 * baseline run exists, those whose fingerprint is in in->baseline; 1 when
 * a count is above its `thresholds:` entry (default {error: 0}), when a
 * `metrics:` limit is exceeded (quality_metrics_verdict) or r failed.
 * *message names the counts and the first findings (file:line rule
 * message), then the metrics over their limits.
 */
int rk_analysis_verdict(const json_t *spec, const struct job_result *r, const struct verdict_input *in,
			char **message);

/*
 * Engine thread: the reports of (job_id, attempt) into *reports (new
 * array, see struct verdict_input) and, when spec's extra has `baseline`,
 * the baseline run's report bodies of the same stage into *baseline (NULL
 * when none) and its id into *baseline_run.
 */
int rk_load_for_verdict(struct store *db, int64_t run_id, int64_t job_id, int attempt, const json_t *spec,
			json_t **reports, json_t **baseline, int64_t *baseline_run);

#endif
