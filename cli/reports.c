/*
 * reports.c - `otactl show RUN --tests` and `--findings`: a run's test and
 * analysis reports (GET /api/v1/runs/ID/reports), one block per report of
 * each job's latest attempt.
 *
 *   unit-tests (job 3, attempt 1) build/test/unit.xml: 19 tests, 18 passed, 1 failed, 0 errors, 0 skipped
 *     FAILED crc16_matches_ccitt_false_check_value: expected 0x29b1 got 0x29b2
 *   static-analysis (job 4, attempt 1) build/cppcheck.xml: 1 findings (error 1)
 *     error    arrayIndexOutOfBounds  src/lint_break.c:12  Array 'buf[4]' accessed at index 4
 *   code-quality (job 5, attempt 1) build/pmccabe.txt: functions 71, complexity_max 20, complexity_mean 3.4
 */
#include "otactl.h"

#include <string.h>

/* First line of s, at most 200 bytes. */
static int line_len(const char *s)
{
	size_t n = strcspn(s, "\n");
	return (int)(n > 200 ? 200 : n);
}

static void print_tests(const json_t *rep)
{
	const json_t *s = json_object_get(rep, "summary"), *c;
	size_t i;

	printf("%s (job %lld, attempt %lld) %s: %lld tests, %lld passed, %lld failed, %lld errors, %lld skipped\n",
	       str_or(rep, "job_name", "-"), (long long)int_or(rep, "job", 0), (long long)int_or(rep, "attempt", 0),
	       str_or(rep, "name", "-"), (long long)int_or(s, "tests", 0), (long long)int_or(s, "passed", 0),
	       (long long)int_or(s, "failures", 0), (long long)int_or(s, "errors", 0), (long long)int_or(s, "skipped", 0));
	json_array_foreach(json_object_get(rep, "tests"), i, c) {
		const char *status = str_or(c, "status", ""), *m = str_or(c, "message", "");
		if (strcmp(status, "failed") && strcmp(status, "error"))
			continue;
		printf("  %s %s%s%s: %.*s\n", !strcmp(status, "failed") ? "FAILED" : "ERROR ",
		       str_or(c, "classname", ""), str_or(c, "classname", NULL) ? "." : "", str_or(c, "name", "?"),
		       line_len(m), m);
	}
}

static void print_findings(const json_t *rep)
{
	const json_t *s = json_object_get(rep, "summary"), *f, *n;
	const char *sev;
	size_t i, k = 0;

	printf("%s (job %lld, attempt %lld) %s: %lld findings", str_or(rep, "job_name", "-"),
	       (long long)int_or(rep, "job", 0), (long long)int_or(rep, "attempt", 0), str_or(rep, "name", "-"),
	       (long long)int_or(s, "findings", 0));
	json_object_foreach((json_t *)json_object_get(s, "counts"), sev, n)
		printf("%s%s %lld", k++ ? ", " : " (", sev, (long long)json_integer_value(n));
	printf("%s\n", json_object_size(json_object_get(s, "counts")) ? ")" : "");
	json_array_foreach(json_object_get(rep, "findings"), i, f) {
		const char *m = str_or(f, "message", "");
		printf("  %-8s %-24s %s:%lld  %.*s\n", str_or(f, "severity", "-"), str_or(f, "rule", "-"),
		       str_or(f, "file", "-"), (long long)int_or(f, "line", 0), line_len(m), m);
	}
}

/* A metrics report (pmccabe, jscpd, power): its numbers on one line. */
static void print_metrics(const json_t *rep)
{
	const json_t *m = json_object_get(json_object_get(rep, "summary"), "metrics"), *v;
	const char *key;
	size_t k = 0;

	printf("%s (job %lld, attempt %lld) %s:", str_or(rep, "job_name", "-"), (long long)int_or(rep, "job", 0),
	       (long long)int_or(rep, "attempt", 0), str_or(rep, "name", "-"));
	json_object_foreach((json_t *)m, key, v)
		printf("%s %s %g", k++ ? "," : "", key, json_number_value(v));
	printf("\n");
}

int show_reports(const char *run_id, int tests, int findings)
{
	char *path = xasprintf("/api/v1/runs/%s/reports", run_id);
	json_t *ans = NULL, *rep;
	size_t i, shown = 0;
	int rc;

	if ((rc = api(&ans, "GET", path, NULL, "cannot read the run's reports")) != 0)
		goto out;
	if (ctl.json) {
		print_json(ans);
		goto out;
	}
	putchar('\n');
	json_array_foreach(ans, i, rep) {
		const char *format = str_or(rep, "format", "");
		if (!json_is_true(json_object_get(rep, "latest")))
			continue;
		if (tests && !strcmp(format, "junit")) {
			print_tests(rep);
			shown++;
		} else if (findings && (!strcmp(format, "cppcheck") || !strcmp(format, "sarif"))) {
			print_findings(rep);
			shown++;
		} else if (findings && (!strcmp(format, "pmccabe") || !strcmp(format, "jscpd"))) {
			print_metrics(rep);
			shown++;
		} else if (tests && !strcmp(format, "power")) {
			print_metrics(rep); /* a HIL rig's power figures, with its tests */
			shown++;
		}
	}
	if (!shown)
		printf("no %s reports in this run\n", tests && findings ? "test or analysis" : tests ? "test" : "analysis");
out:
	json_decref(ans);
	free(path);
	return rc;
}
