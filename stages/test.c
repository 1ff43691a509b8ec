/*
 * test.c - the `test` stage kind: run tests on an agent, judge by JUnit.
 *
 *   - name: unit-tests
 *     kind: test
 *     steps: [ { run: make test } ]
 *     reports: { junit: "build/test/report-*.xml" } # a glob
 *     allow_failures: false          # optional
 *     quarantine: [flaky_name]       # optional: test names or classname.name
 *
 * After the steps (also when a step failed) the agent uploads every file
 * matching `reports.junit`; the daemon parses and stores them with the
 * attempt, and the verdict (reports_kind.c) fails the job when a test
 * failed or errored that is not quarantined, naming the failures.
 */
#include "stage.h"

#include "reports_kind.h"

static const char *const junit_only[] = { "junit", NULL };

static int test_validate(const struct pipeline *p, const struct pl_stage *st, struct pl_diags *d)
{
	(void)p;
	rk_validate_reports(st, d, junit_only, 1);
	rk_validate_tests(st, d);
	return 0;
}

static const char *const test_keys[] = { "reports", "allow_failures", "quarantine", NULL };

const struct stage_kind stage_kind_test = {
	.name = "test",
	.summary = "run tests on an agent; fails when a JUnit test fails (allow_failures, quarantine)",
	.keys = test_keys,
	.runs_steps = 1,
	.validate = test_validate,
	.verdict = rk_tests_verdict,
};
