/*
 * test_quality.c - stage 3 of the firmware pipeline: MISRA C:2012
 * compliance and code-quality metrics, with the real tools (cppcheck's
 * misra addon, pmccabe, jscpd) on examples/sensor-node through a real
 * otacd and its local agents.
 *
 * The pipeline is the example's own compliance and code-quality stages
 * (cut from its .otacd/pipeline.yml, with a first step copying $SRC into
 * the workspace).  A run on main passes and is the baseline; BREAK=
 * variants on a branch each fail the right stage with the right message;
 * a branch that raises a limit still fails for being worse than main.
 * Also: hostile pmccabe/jscpd reports and a suppression without a reason
 * are refused.  Needs cppcheck, pmccabe, make and jscpd (npm; $OTACD_JSCPD
 * or ~/.cache/otacd-npm); skipped with a message when one is missing.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "../orchestrator/reports.h"
#include "../stages/reports_kind.h"
#include "devharness.h"
#include "fwharness.h"
#include "harness.h"

struct fixture {
	struct daemon d;
	char *src, *jscpd;
	int64_t main_run;
};

static int tools_missing(const char *jscpd)
{
	static const char *const tools[] = { "cppcheck", "pmccabe", "make" };
	return fw_tools_missing(tools, OTA_ARRAY_SIZE(tools), "cppcheck pmccabe make", jscpd);
}

/*
 * The example's compliance and code-quality stages with SRC, JSCPD and
 * BREAK (may be "") in env; `edit` (may be NULL) is a "from\0to" pair
 * applied once to the stages' text.
 */
static char *quality_yaml(const struct fixture *f, const char *brk, const char *from, const char *to)
{
	char *path = dh_src_path("examples/sensor-node/.otacd/pipeline.yml"), *head;
	struct buf text = BUF_INIT, a = BUF_INIT, b = BUF_INIT;
	const char *start, *end;
	int n;

	assert_int_equal(ota_read_file(&text, path, 1 << 20), 0);
	start = strstr(text.ptr, "  # --- compliance");
	end = strstr(text.ptr, "  # --- hardware in the loop");
	assert_non_null(start);
	assert_non_null(end);
	head = xasprintf("name: sensor-node\nenv:\n  SRC: \"%s\"\n  JSCPD: \"%s\"\n  BREAK: \"%s\"\nstages:\n", f->src,
			 f->jscpd, brk);
	buf_puts(&a, head);
	buf_put(&a, start, (size_t)(end - start));
	fw_copy_step(&b, a.ptr, 2);
	if (from) {
		buf_clear(&a);
		fw_replace_all(&a, b.ptr, from, to, &n);
		assert_int_equal(n, 1);
		buf_clear(&b);
		buf_puts(&b, a.ptr);
	}
	free(head);
	free(path);
	buf_release(&text);
	buf_release(&a);
	return buf_detach(&b);
}

static void wait_for(struct daemon *d, int64_t id, const char *want)
{
	fw_wait_for(d, id, want, 120000);
}

/* A branch run with BREAK=brk (and an optional edit) that must fail; its run JSON. */
static json_t *branch_run(struct fixture *f, const char *brk, const char *from, const char *to)
{
	char *yaml = quality_yaml(f, brk, from, to);
	int64_t id = fw_trigger_on(&f->d, yaml, "refs/heads/feature");
	free(yaml);
	wait_for(&f->d, id, "failed");
	return h_run(&f->d, id);
}

static int setup(void **state)
{
	static const char *const args[] = { "--local-agents", "2", NULL };
	struct fixture *f = xcalloc(1, sizeof(*f));
	char *yaml;

	f->jscpd = fw_jscpd_path();
	*state = f;
	if (tools_missing(f->jscpd))
		return 0;
	h_init(&f->d, NULL);
	assert_int_equal(h_start(&f->d, args), 0);
	f->src = dh_sensor_node_copy(f->d.dir, "sensor-node");
	yaml = quality_yaml(f, "", NULL, NULL);
	f->main_run = fw_trigger_on(&f->d, yaml, "refs/heads/main");
	free(yaml);
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	if (f->src)
		h_cleanup(&f->d);
	free(f->src);
	free(f->jscpd);
	free(f);
	return 0;
}

static struct fixture *ready(void **state)
{
	struct fixture *f = *state;
	if (!f->src)
		skip();
	return f;
}

static double metric(json_t *metrics, const char *stage, const char *name)
{
	size_t i;
	json_t *m;
	json_array_foreach(json_object_get(metrics, "metrics"), i, m)
		if (!strcmp(fw_jstr(m, "stage"), stage) && !strcmp(fw_jstr(m, "name"), name))
			return json_real_value(json_object_get(m, "value"));
	fail_msg("metric %s.%s not in the run's metrics", stage, name);
	return -1;
}

static void sensor_node_passes_its_quality_stages_and_its_metrics_are_stored(void **state)
{
	struct fixture *f = ready(state);
	char *path = xasprintf("/api/v1/runs/%lld/metrics?history=10", (long long)f->main_run), *otactl;
	json_t *run, *metrics = NULL, *hist;
	struct buf out = BUF_INIT;

	wait_for(&f->d, f->main_run, "passed");
	run = h_run(&f->d, f->main_run);
	assert_string_equal(fw_jstr(h_job(run, "compliance"), "state"), "passed");
	assert_string_equal(fw_jstr(h_job(run, "code-quality"), "state"), "passed");
	/* every finding is a suppressed deviation; none was dropped by the parser */
	assert_true(h_sql_int(&f->d, "SELECT json_extract(summary, '$.findings') FROM reports WHERE format = 'cppcheck'"
				      " ORDER BY id LIMIT 1") > 100);

	assert_int_equal(h_get(&f->d, path, &metrics), 200);
	assert_true(metric(metrics, "code-quality", "complexity_max") == 20);     /* src/ota_link.c link_prov_parse */
	assert_true(metric(metrics, "code-quality", "functions") > 50);
	assert_true(metric(metrics, "code-quality", "duplicated_percent") == 0);
	assert_true(metric(metrics, "code-quality", "lines") > 1000);
	hist = json_object_get(metrics, "history");
	assert_int_equal(json_array_size(hist), 1);
	assert_true(json_real_value(json_object_get(json_object_get(json_array_get(hist, 0), "metrics"),
						    "code-quality.complexity_max")) == 20);
	/* otactl shows the numbers with the findings */
	otactl = h_bin("otactl");
	assert_int_equal(h_sh(&out, "%s --url %s --token %s show %lld --findings", otactl, f->d.url, f->d.token,
			      (long long)f->main_run), 0);
	assert_non_null(strstr(buf_cstr(&out), "build/pmccabe.txt: functions "));
	assert_non_null(strstr(buf_cstr(&out), ", complexity_max 20,"));
	assert_non_null(strstr(buf_cstr(&out), "build/jscpd/jscpd-report.json: lines "));
	free(otactl);
	buf_release(&out);
	json_decref(metrics);
	json_decref(run);
	free(path);
}

static void new_misra_violation_fails_compliance_naming_its_rule(void **state)
{
	struct fixture *f = ready(state);
	json_t *run, *job;

	wait_for(&f->d, f->main_run, "passed");
	run = branch_run(f, "misra", NULL, NULL);
	job = h_job(run, "compliance");
	assert_string_equal(fw_jstr(job, "state"), "failed");
	/* malloc: rule 21.3, the only enforced rule broken (10.4 and 15.6 there are deviations) */
	assert_non_null(strstr(fw_jstr(job, "message"), "static analysis: 1 misra-c2012 finding (threshold 0)"));
	assert_non_null(strstr(fw_jstr(job, "message"), "src/lint_break.c:"));
	assert_non_null(strstr(fw_jstr(job, "message"), "misra-c2012-21.3"));
	assert_non_null(strstr(fw_jstr(job, "message"), "suppressed)"));
	assert_string_equal(fw_jstr(h_job(run, "code-quality"), "state"), "passed");
	json_decref(run);
}

static void too_complex_function_fails_code_quality_naming_it(void **state)
{
	struct fixture *f = ready(state);
	json_t *run, *job;

	wait_for(&f->d, f->main_run, "passed");
	run = branch_run(f, "complex", NULL, NULL);
	job = h_job(run, "code-quality");
	assert_string_equal(fw_jstr(job, "state"), "failed");
	assert_non_null(strstr(fw_jstr(job, "message"), "complexity: largest function complexity 31 (limit 25):"
							 " breaks/complex.c:15 decode_command (complexity 31)"));
	assert_non_null(strstr(fw_jstr(job, "message"), "complexity: 3 functions above 15 (at most 2)"));
	assert_null(strstr(fw_jstr(job, "message"), "duplication"));
	assert_string_equal(fw_jstr(h_job(run, "compliance"), "state"), "passed");
	json_decref(run);
}

static void duplicated_block_fails_code_quality_naming_both_copies(void **state)
{
	struct fixture *f = ready(state);
	json_t *run, *job;
	const char *msg;

	wait_for(&f->d, f->main_run, "passed");
	run = branch_run(f, "dup", NULL, NULL);
	job = h_job(run, "code-quality");
	msg = fw_jstr(job, "message");
	assert_string_equal(fw_jstr(job, "state"), "failed");
	assert_non_null(strstr(msg, "duplication: "));
	assert_non_null(strstr(msg, "% duplicated lines (limit 1%): "));
	assert_non_null(strstr(msg, "breaks/dup.c:"));
	assert_non_null(strstr(msg, "src/sha256.c:"));
	assert_null(strstr(msg, "complexity"));
	assert_string_equal(fw_jstr(h_job(run, "compliance"), "state"), "passed");
	json_decref(run);
}

static void branch_that_raises_a_limit_still_fails_when_worse_than_main(void **state)
{
	struct fixture *f = ready(state);
	json_t *run, *job;
	char *want;

	wait_for(&f->d, f->main_run, "passed");
	/* the branch allows 5 % but main has 0 %: no_worse judges against main */
	run = branch_run(f, "dup", "      duplicated_percent: 1 ", "      duplicated_percent: 5 ");
	job = h_job(run, "code-quality");
	assert_string_equal(fw_jstr(job, "state"), "failed");
	assert_non_null(strstr(fw_jstr(job, "message"), "duplicated lines, worse than the baseline's 0.00%"));
	want = xasprintf("(baseline: run %lld)", (long long)f->main_run);
	assert_non_null(strstr(fw_jstr(job, "message"), want));
	free(want);
	json_decref(run);
}

static void suppression_without_a_reason_is_refused(void **state)
{
	struct fixture *f = ready(state);
	char *yaml = quality_yaml(f, "", "reason: \"early returns and brace-less single statements are the project's style\"",
				  "file: \"src/*.c\"");
	json_t *req = json_pack("{ss ss ss}", "pipeline", yaml, "file", "pipeline.yml", "ref", "refs/heads/feature");
	json_t *ans = NULL;
	int64_t runs = h_sql_int(&f->d, "SELECT count(*) FROM runs");
	char *text;

	assert_int_equal(h_post(&f->d, "/api/v1/runs", req, &ans), 422);
	text = json_dumps(ans, 0);
	assert_non_null(strstr(text, "(misra-c2012-15.[567]) needs a reason"));
	free(text);
	assert_int_equal(h_sql_int(&f->d, "SELECT count(*) FROM runs"), runs);
	json_decref(ans);
	json_decref(req);
	free(yaml);
}

/* Hostile metrics reports: refused with a message naming file and line, nothing half-parsed. */
static void hostile_metrics_reports_are_refused(void **state)
{
	static const struct {
		const char *format, *data, *want;
	} cases[] = {
		{ "pmccabe", "1\t2\t3\t4\n", "x:1: expected five tab-separated numbers" },
		{ "pmccabe", "1\t2\t3\t4\t5\tsrc/a.c(9: f\n", "x:1: expected FILE(LINE): FUNCTION" },
		{ "pmccabe", "1\t99999999999\t3\t4\t5\ta.c(1): f\n", "x:1: expected five" },
		{ "pmccabe", "1\t2\t3\t4\t5\ta.c(x): f\n", "x:1: bad line number" },
		{ "pmccabe", "1\t-2\t3\t4\t5\ta.c(1): f\n", "x:1: expected five" },
		{ "jscpd", "{\"statistics\":{\"total\":{\"lines\":10,\"duplicatedLines\":11,\"clones\":1}}}",
		  "11 duplicated lines of 10 lines" },
		{ "jscpd", "{\"statistics\":{\"total\":{\"lines\":-1,\"duplicatedLines\":0,\"clones\":0}}}",
		  "statistics.total needs" },
		{ "jscpd", "{\"statistics\":{\"total\":{\"lines\":10,\"duplicatedLines\":1,\"clones\":1}},"
			   "\"duplicates\":[{\"lines\":3,\"firstFile\":{\"name\":\"a\",\"start\":5,\"end\":1}}]}",
		  "duplicates[0] needs" },
		{ "jscpd", "{\"a\":1,\"a\":2}", "x:1:" },
	};
	static const char good[] = "{\"statistics\":{\"total\":{\"lines\":200,\"duplicatedLines\":3,\"clones\":1,"
				   "\"percentage\":0}},\"duplicates\":[]}";
	json_t *r = NULL;

	(void)state;
	for (size_t i = 0; i < OTA_ARRAY_SIZE(cases); i++) {
		assert_true(report_parse(&r, cases[i].format, cases[i].data, strlen(cases[i].data), "x") < 0);
		assert_null(r);
		if (!strstr(ota_error_last(), cases[i].want))
			fail_msg("case %zu: '%s' does not say '%s'", i, ota_error_last(), cases[i].want);
	}
	/* and a good one: the percentage is recomputed, not taken from the report */
	assert_int_equal(report_parse(&r, "jscpd", good, strlen(good), "x"), 0);
	assert_true(json_real_value(json_object_get(json_object_get(r, "metrics"), "duplicated_percent")) == 1.5);
	json_decref(r);
}

/* The verdict alone (no daemon): rule keys for CERT and MISRA, file globs, chapter thresholds. */
static int judge(const char *extra_json, const char *xml, char **msg)
{
	json_t *extra = json_loads(extra_json, 0, NULL), *body = NULL, *reps, *spec;
	struct job_result ok = { 0, NULL, NULL };
	struct verdict_input in;
	int v;

	assert_non_null(extra);
	assert_int_equal(report_parse(&body, "cppcheck", xml, strlen(xml), "misra.xml"), 0);
	reps = json_pack("[{ss ss so}]", "format", "cppcheck", "name", "misra.xml", "body", body);
	spec = json_pack("{ss ss so}", "stage", "compliance", "kind", "analysis", "extra", extra);
	in = (struct verdict_input){ reps, NULL, 0 };
	*msg = NULL;
	v = rk_analysis_verdict(spec, &ok, &in, msg);
	json_decref(spec);
	json_decref(reps);
	return v;
}

static void rule_chapter_and_standard_thresholds_with_file_scoped_deviations(void **state)
{
	static const char xml[] =
		"<?xml version=\"1.0\"?><results version=\"2\"><cppcheck version=\"2.10\"/><errors>"
		"<error id=\"misra-c2012-11.4\" severity=\"style\" msg=\"misra violation\"><location file=\"src/mps2.h\" line=\"3\"/></error>"
		"<error id=\"misra-c2012-11.4\" severity=\"style\" msg=\"misra violation\"><location file=\"src/main.c\" line=\"9\"/></error>"
		"<error id=\"cert-EXP05-C\" severity=\"style\" msg=\"cert violation\"><location file=\"src/a.c\" line=\"5\"/></error>"
		"<error id=\"cert-INT31-C\" severity=\"style\" msg=\"cert violation\"><location file=\"src/a.c\" line=\"6\"/></error>"
		"</errors></results>";
	char *msg;

	(void)state;
	/* a deviation scoped to one file leaves the other 11.4 counted */
	assert_int_equal(judge("{\"thresholds\":{\"misra-c2012\":0},\"suppress\":[{\"rule\":\"misra-c2012-11.4\","
			       "\"file\":\"src/*.h\",\"reason\":\"registers\"}]}", xml, &msg), 1);
	assert_non_null(strstr(msg, "1 misra-c2012 finding (threshold 0): src/main.c:9 misra-c2012-11.4"));
	assert_non_null(strstr(msg, "(1 suppressed)"));
	assert_null(strstr(msg, "cert"));
	free(msg);
	/* a chapter threshold: two in chapter 11 are allowed, one CERT EXP is not */
	assert_int_equal(judge("{\"thresholds\":{\"misra-c2012-11\":2,\"cert-EXP\":0}}", xml, &msg), 1);
	assert_non_null(strstr(msg, "1 cert-EXP finding (threshold 0): src/a.c:5 cert-EXP05-C"));
	assert_null(strstr(msg, "INT31"));
	assert_null(strstr(msg, "misra"));
	free(msg);
	/* the whole CERT standard, and a single rule */
	assert_int_equal(judge("{\"thresholds\":{\"cert\":1}}", xml, &msg), 1);
	assert_non_null(strstr(msg, "2 cert findings (threshold 1)"));
	free(msg);
	assert_int_equal(judge("{\"thresholds\":{\"misra-c2012-11.4\":2,\"cert\":2}}", xml, &msg), 0);
	assert_null(msg);
	/* style findings do not fail the default {error: 0} */
	assert_int_equal(judge("{}", xml, &msg), 0);
	free(msg);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(hostile_metrics_reports_are_refused),
		cmocka_unit_test(rule_chapter_and_standard_thresholds_with_file_scoped_deviations),
		cmocka_unit_test(sensor_node_passes_its_quality_stages_and_its_metrics_are_stored),
		cmocka_unit_test(new_misra_violation_fails_compliance_naming_its_rule),
		cmocka_unit_test(too_complex_function_fails_code_quality_naming_it),
		cmocka_unit_test(duplicated_block_fails_code_quality_naming_both_copies),
		cmocka_unit_test(branch_that_raises_a_limit_still_fails_when_worse_than_main),
		cmocka_unit_test(suppression_without_a_reason_is_refused),
	};
	cmocka_set_test_filter(getenv("QUALITY_ONLY"));
	return cmocka_run_group_tests(tests, setup, teardown);
}
