/*
 * test_analysis.c - the `analysis` kind's baseline mode through a real
 * otacd: a branch fails only on findings that are new since the target
 * branch's last passed run, which the engine looks up itself.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "harness.h"

/* A SARIF file with one result per rule id given. */
static char *sarif(const char *const *rules)
{
	struct buf b = BUF_INIT;
	buf_puts(&b, "{\"version\":\"2.1.0\",\"runs\":[{\"tool\":{\"driver\":{\"name\":\"lint\"}},\"results\":[");
	for (size_t i = 0; rules[i]; i++)
		buf_printf(&b, "%s{\"ruleId\":\"%s\",\"level\":\"error\",\"message\":{\"text\":\"%s found\"},"
			       "\"locations\":[{\"physicalLocation\":{\"artifactLocation\":{\"uri\":\"src/main.c\"},"
			       "\"region\":{\"startLine\":%zu}}}]}",
			   i ? "," : "", rules[i], rules[i], 10 * (i + 1));
	buf_puts(&b, "]}]}");
	return buf_detach(&b);
}

static int64_t run_on(struct daemon *d, const char *ref, const char *const *rules, const char *limits)
{
	char *s = sarif(rules);
	char *yaml = xasprintf("name: fw\nstages:\n"
			       "  - name: static-analysis\n    kind: analysis\n"
			       "    steps:\n      - run: |\n          cat > lint.sarif <<'EOF'\n          %s\n          EOF\n"
			       "    reports: { sarif: lint.sarif }\n%s",
			       s, limits);
	json_t *req = json_pack("{ss ss ss}", "pipeline", yaml, "file", "fw.yml", "ref", ref), *ans = NULL;
	int64_t id;
	long status = h_post(d, "/api/v1/runs", req, &ans);
	if (status != 201) {
		char *t = ans ? json_dumps(ans, 0) : NULL;
		print_error("trigger: %ld %s\n%s\n", status, t ? t : "", yaml);
		free(t);
		fail();
	}
	id = json_integer_value(json_object_get(ans, "id"));
	json_decref(ans);
	json_decref(req);
	free(yaml);
	free(s);
	return id;
}

static const char *job_message(struct daemon *d, int64_t run)
{
	static char msg[1024];
	json_t *r = h_run(d, run);
	snprintf(msg, sizeof(msg), "%s", json_string_value(json_object_get(h_job(r, "static-analysis"), "message"))
						 ? json_string_value(json_object_get(h_job(r, "static-analysis"), "message")) : "");
	json_decref(r);
	return msg;
}

static void branch_fails_only_on_findings_new_since_the_target_branch(void **state)
{
	struct daemon d;
	const char *const old[] = { "nullPointer", NULL };
	const char *const old_and_new[] = { "nullPointer", "arrayIndexOutOfBounds", NULL };
	const char *const args[] = { "--local-agents", "2", NULL };
	int64_t run;

	(void)state;
	h_init(&d, NULL);
	assert_int_equal(h_start(&d, args), 0);
	/* main has one known finding and tolerates it */
	run = run_on(&d, "refs/heads/main", old, "    thresholds: { error: 1 }\n");
	assert_string_equal(h_wait_run(&d, run, 60000), "passed");
	/* a branch with the same finding and a new one: only the new one counts */
	run = run_on(&d, "refs/heads/feature", old_and_new, "    thresholds: { error: 0 }\n    baseline: main\n");
	assert_string_equal(h_wait_run(&d, run, 60000), "failed");
	assert_non_null(strstr(job_message(&d, run), "arrayIndexOutOfBounds"));
	assert_null(strstr(job_message(&d, run), "nullPointer"));
	/* the same branch without the new finding passes: nothing is new */
	run = run_on(&d, "refs/heads/feature", old, "    thresholds: { error: 0 }\n    baseline: main\n");
	assert_string_equal(h_wait_run(&d, run, 60000), "passed");
	/* without the baseline, the old finding breaks the threshold */
	run = run_on(&d, "refs/heads/feature", old, "    thresholds: { error: 0 }\n");
	assert_string_equal(h_wait_run(&d, run, 60000), "failed");
	assert_non_null(strstr(job_message(&d, run), "nullPointer"));
	h_cleanup(&d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(branch_fails_only_on_findings_new_since_the_target_branch),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
