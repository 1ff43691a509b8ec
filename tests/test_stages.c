/*
 * test_stages.c - the verdicts of the test, hil and analysis kinds and the
 * keys of build/test/analysis/hil, without a daemon: reports are built by
 * the real parsers (orchestrator/reports.c) from small JUnit and cppcheck
 * documents and handed to the kinds as the engine would.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../orchestrator/pipeline/pipeline.h"
#include "../orchestrator/reports.h"
#include "../stages/reports_kind.h"

static const char JUNIT[] =
	"<testsuites><testsuite name='crc'>"
	"<testcase classname='crc' name='crc16_matches_ccitt_false_check_value'>"
	"<failure message='expected 0x29b1 got 0x29b2'/></testcase>"
	"<testcase classname='crc' name='crc16_empty'/>"
	"<testcase classname='ring' name='ring_wraps'><error message='segfault'/></testcase>"
	"<testcase classname='ring' name='ring_full'><skipped/></testcase>"
	"</testsuite></testsuites>";

static const char CPPCHECK_OLD[] =
	"<?xml version='1.0'?><results version='2'><errors>"
	"<error id='knownConditionTrueFalse' severity='style' msg='Condition is always true'>"
	"<location file='src/main.c' line='40'/></error>"
	"<error id='uninitvar' severity='error' msg='Uninitialized variable: x'>"
	"<location file='src/old.c' line='7'/></error>"
	"</errors></results>";

static const char CPPCHECK_NEW[] =
	"<?xml version='1.0'?><results version='2'><errors>"
	"<error id='uninitvar' severity='error' msg='Uninitialized variable: x'>"
	"<location file='src/old.c' line='9'/></error>"
	"<error id='arrayIndexOutOfBounds' severity='error' msg=\"Array 'buf[4]' accessed at index 4, which is out of bounds.\">"
	"<location file='src/lint_break.c' line='12'/></error>"
	"<error id='shadowVariable' severity='style' msg='Local variable shadows outer variable'>"
	"<location file='src/main.c' line='50'/></error>"
	"</errors></results>";

/* [{format, name, body}] as the engine hands it over. */
static json_t *reports_of(const char *format, const char *doc)
{
	json_t *body = NULL;
	assert_int_equal(report_parse(&body, format, doc, strlen(doc), "r.xml"), 0);
	return json_pack("[{ss ss so}]", "format", format, "name", "r.xml", "body", body);
}

static json_t *spec_with(const char *extra_json)
{
	json_t *extra = json_loads(extra_json, 0, NULL);
	assert_non_null(extra);
	return json_pack("{ss ss so}", "stage", "s", "kind", "test", "extra", extra);
}

static int judge_tests(const char *extra, const struct job_result *r, char **msg)
{
	json_t *spec = spec_with(extra), *reps = reports_of("junit", JUNIT);
	struct verdict_input in = { reps, NULL, 0 };
	int v = rk_tests_verdict(spec, r, &in, msg);
	json_decref(spec);
	json_decref(reps);
	return v;
}

static void tests_fail_naming_each_failure_and_error(void **state)
{
	struct job_result ok = { 0, NULL, NULL };
	char *msg = NULL;

	(void)state;
	assert_int_equal(judge_tests("{}", &ok, &msg), 1);
	assert_string_equal(msg, "2 of 4 tests failed: crc16_matches_ccitt_false_check_value: expected 0x29b1 got 0x29b2;"
				 " ring_wraps: segfault");
	free(msg);
}

static void quarantined_tests_do_not_count_by_name_or_classname_dot_name(void **state)
{
	struct job_result ok = { 0, NULL, NULL };
	char *msg = NULL;

	(void)state;
	assert_int_equal(judge_tests("{\"quarantine\": [\"crc16_matches_ccitt_false_check_value\", \"ring.ring_wraps\"]}",
				     &ok, &msg), 0);
	assert_string_equal(msg, "2 tests passed, 2 quarantined failures ignored");
	free(msg);
	/* a quarantine entry of another class does not match */
	assert_int_equal(judge_tests("{\"quarantine\": [\"crc16_matches_ccitt_false_check_value\", \"crc.ring_wraps\"]}",
				     &ok, &msg), 1);
	assert_non_null(strstr(msg, "1 of 4 tests failed: ring_wraps"));
	free(msg);
}

static void allow_failures_passes_but_still_names_the_failures(void **state)
{
	struct job_result ok = { 0, NULL, NULL };
	char *msg = NULL;

	(void)state;
	assert_int_equal(judge_tests("{\"allow_failures\": true}", &ok, &msg), 0);
	assert_non_null(strstr(msg, "2 of 4 tests failed"));
	assert_non_null(strstr(msg, "allowed"));
	free(msg);
}

static void failed_step_fails_even_with_allow_failures_and_timeout_keeps_its_message(void **state)
{
	struct job_result script = { 2, "script", "step 'make test' exited with code 2" };
	struct job_result timeout = { -1, "timeout", "job timed out after 6s" };
	char *msg = NULL;

	(void)state;
	assert_int_equal(judge_tests("{\"allow_failures\": true}", &script, &msg), 1);
	free(msg);
	/* a failing step: the tests say more than the exit code */
	assert_int_equal(judge_tests("{}", &script, &msg), 1);
	assert_non_null(strstr(msg, "2 of 4 tests failed"));
	free(msg);
	/* a timeout keeps the agent's reason */
	assert_int_equal(judge_tests("{}", &timeout, &msg), 1);
	assert_null(msg);
}

static void missing_junit_report_fails_a_passing_job(void **state)
{
	struct job_result ok = { 0, NULL, NULL };
	json_t *spec = spec_with("{\"reports\": {\"junit\": \"build/*.xml\"}}"), *none = json_array();
	struct verdict_input in = { none, NULL, 0 };
	char *msg = NULL;

	(void)state;
	assert_int_equal(rk_tests_verdict(spec, &ok, &in, &msg), 1);
	assert_string_equal(msg, "no test report was recorded");
	free(msg);
	json_decref(spec);
	json_decref(none);
}

static int judge_analysis(const char *extra, const char *doc, json_t *baseline, char **msg)
{
	json_t *spec = spec_with(extra), *reps = reports_of("cppcheck", doc);
	struct job_result ok = { 0, NULL, NULL };
	struct verdict_input in = { reps, baseline, baseline ? 7 : 0 };
	int v = rk_analysis_verdict(spec, &ok, &in, msg);
	json_decref(spec);
	json_decref(reps);
	return v;
}

static void analysis_fails_when_a_severity_exceeds_its_threshold(void **state)
{
	char *msg = NULL;

	(void)state;
	/* default: no error allowed */
	assert_int_equal(judge_analysis("{}", CPPCHECK_NEW, NULL, &msg), 1);
	assert_non_null(strstr(msg, "2 error findings (threshold 0)"));
	assert_non_null(strstr(msg, "src/old.c:9 uninitvar Uninitialized variable: x"));
	assert_non_null(strstr(msg, "src/lint_break.c:12 arrayIndexOutOfBounds Array 'buf[4]'"));
	assert_null(strstr(msg, "shadowVariable"));
	free(msg);
	/* counts equal to the threshold pass; above fails */
	assert_int_equal(judge_analysis("{\"thresholds\": {\"error\": 2, \"style\": 1}}", CPPCHECK_NEW, NULL, &msg), 0);
	free(msg);
	assert_int_equal(judge_analysis("{\"thresholds\": {\"error\": 2, \"style\": 0}}", CPPCHECK_NEW, NULL, &msg), 1);
	assert_non_null(strstr(msg, "1 style finding (threshold 0)"));
	assert_non_null(strstr(msg, "shadowVariable"));
	free(msg);
}

static void baseline_counts_only_findings_new_since_the_branch_passed(void **state)
{
	json_t *old = reports_of("cppcheck", CPPCHECK_OLD), *baseline = json_array();
	char *msg = NULL;

	(void)state;
	json_array_append(baseline, json_object_get(json_array_get(old, 0), "body"));
	/* uninitvar moved from line 7 to 9 but is the same finding: only the new one counts */
	assert_int_equal(judge_analysis("{\"baseline\": \"main\"}", CPPCHECK_NEW, baseline, &msg), 1);
	assert_non_null(strstr(msg, "1 error finding (threshold 0) new since the baseline"));
	assert_non_null(strstr(msg, "arrayIndexOutOfBounds"));
	assert_null(strstr(msg, "uninitvar"));
	assert_non_null(strstr(msg, "1 findings also in run 7 ignored"));
	free(msg);
	/* the old report against itself: nothing new */
	assert_int_equal(judge_analysis("{\"baseline\": \"main\"}", CPPCHECK_OLD, baseline, &msg), 0);
	free(msg);
	/* no passed run on the branch: every finding counts, and the message says so */
	assert_int_equal(judge_analysis("{\"baseline\": \"main\"}", CPPCHECK_OLD, NULL, &msg), 1);
	assert_non_null(strstr(msg, "1 error finding (threshold 0)"));
	free(msg);
	json_decref(baseline);
	json_decref(old);
}

/* ---- keys ---- */

static char *lint(const char *yaml)
{
	struct pipeline *p = NULL;
	struct pl_diags d;
	struct buf out = BUF_INIT;

	pl_diags_init(&d, "p.yml");
	pipeline_parse(&p, "p.yml", yaml, strlen(yaml), &d);
	pl_diags_format(&d, &out);
	pipeline_free(p);
	pl_diags_release(&d);
	buf_put(&out, "", 0);
	return buf_detach(&out);
}

static void kind_keys_are_checked(void **state)
{
	char *m;

	(void)state;
	m = lint("name: p\nstages:\n  - { name: t, kind: test, steps: [x], reports: { cppcheck: a.xml } }\n");
	assert_non_null(strstr(m, "unknown report format 'cppcheck' (test stages read junit)"));
	free(m);
	m = lint("name: p\nstages:\n  - { name: t, kind: test, steps: [x] }\n");
	assert_non_null(strstr(m, "test stage 't' needs reports: {junit: PATH}"));
	free(m);
	m = lint("name: p\nstages:\n  - { name: a, kind: analysis, steps: [x], reports: { sarif: r.sarif },"
		 " thresholds: { error: -1 } }\n");
	assert_non_null(strstr(m, "thresholds.error must be a count"));
	free(m);
	m = lint("name: p\nstages:\n  - { name: b, kind: build, steps: [x], reproducible: yes please }\n");
	assert_non_null(strstr(m, "'reproducible' must be true or false"));
	free(m);
	m = lint("name: p\nstages:\n  - { name: h, kind: hil, board: an385, steps: [x], reports: { junit: ../h.xml } }\n");
	assert_non_null(strstr(m, "needs no stage"));
	assert_non_null(strstr(m, "must be a relative path inside the workspace"));
	free(m);
	m = lint("name: p\nstages:\n  - { name: a, kind: analysis, steps: [x], reports: { cppcheck: c.xml },"
		 " thresholds: { error: 0, warning: 10 }, baseline: main }\n");
	assert_string_equal(m, "");
	free(m);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(tests_fail_naming_each_failure_and_error),
		cmocka_unit_test(quarantined_tests_do_not_count_by_name_or_classname_dot_name),
		cmocka_unit_test(allow_failures_passes_but_still_names_the_failures),
		cmocka_unit_test(failed_step_fails_even_with_allow_failures_and_timeout_keeps_its_message),
		cmocka_unit_test(missing_junit_report_fails_a_passing_job),
		cmocka_unit_test(analysis_fails_when_a_severity_exceeds_its_threshold),
		cmocka_unit_test(baseline_counts_only_findings_new_since_the_branch_passed),
		cmocka_unit_test(kind_keys_are_checked),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
