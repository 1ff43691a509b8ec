/*
 * test_engine.c - the engine's scheduling rules, end to end: a real otacd
 * with its real local agents on loopback, pipelines triggered over HTTP,
 * outcomes read back from the API and the database.
 *
 * Steps write marks into files under the test's directory, so the order in
 * which things really ran (not just the recorded states) is checked.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "harness.h"

static const char *const fast_lease[] = { "--local-agents", "2", NULL };

static int setup(void **state)
{
	struct daemon *d = xcalloc(1, sizeof(*d));
	h_init(d, "lease: 3s\nheartbeat: 500ms\nsecrets:\n  DEPLOY_KEY: s3cr3t-value-42\n");
	h_start(d, fast_lease);
	*state = d;
	return 0;
}

static int teardown(void **state)
{
	struct daemon *d = *state;
	h_cleanup(d);
	free(d);
	return 0;
}

static char *read_text(const char *path)
{
	struct buf b = BUF_INIT;
	if (ota_read_file(&b, path, 1 << 20) < 0)
		return xstrdup("");
	return buf_detach(&b);
}

static const char *job_state(json_t *run, const char *name)
{
	return json_string_value(json_object_get(h_job(run, name), "state"));
}

static void dag_runs_stages_in_dependency_order(void **state)
{
	struct daemon *d = *state;
	char *yaml = xasprintf(
		"name: dag\n"
		"env: { MARKS: \"%s/marks\" }\n"
		"stages:\n"
		"  - { name: a, steps: [ { run: 'sleep 0.2; echo a >> $MARKS' } ] }\n"
		"  - { name: b, needs: [a], steps: [ { run: 'echo b >> $MARKS' } ] }\n"
		"  - { name: c, needs: [a], steps: [ { run: 'echo c >> $MARKS' } ] }\n"
		"  - { name: d, needs: [b, c], steps: [ { run: 'echo d >> $MARKS' } ] }\n",
		d->dir);
	int64_t run = h_trigger(d, yaml);
	char *path = xasprintf("%s/marks", d->dir), *marks;

	assert_string_equal(h_wait_run(d, run, 60000), "passed");
	marks = read_text(path);
	/* a first, d last, b and c in between in either order */
	assert_true(!strcmp(marks, "a\nb\nc\nd\n") || !strcmp(marks, "a\nc\nb\nd\n"));
	free(marks);
	free(path);
	free(yaml);
}

static void failed_stage_skips_its_dependents_but_not_independent_stages(void **state)
{
	struct daemon *d = *state;
	int64_t run = h_trigger(d,
		"name: ff\n"
		"stages:\n"
		"  - { name: build, steps: [ { run: 'echo building; exit 3' } ] }\n"
		"  - { name: test, needs: [build], steps: [ { run: 'echo never' } ] }\n"
		"  - { name: deploy, needs: [test], steps: [ { run: 'echo never' } ] }\n"
		"  - { name: lint, steps: [ { run: 'echo lint ok' } ] }\n");
	json_t *r;

	assert_string_equal(h_wait_run(d, run, 60000), "failed");
	r = h_run(d, run);
	assert_string_equal(job_state(r, "build"), "failed");
	assert_int_equal(json_integer_value(json_object_get(h_job(r, "build"), "exit_code")), 3);
	assert_string_equal(json_string_value(json_object_get(h_job(r, "build"), "failure")), "script");
	assert_string_equal(job_state(r, "test"), "skipped");  /* never started */
	assert_int_equal(json_integer_value(json_object_get(h_job(r, "test"), "attempt")), 0);
	assert_string_equal(job_state(r, "lint"), "passed");
	{
		size_t i;
		json_t *s;
		json_array_foreach(json_object_get(r, "stages"), i, s) {
			const char *name = json_string_value(json_object_get(s, "name"));
			const char *st = json_string_value(json_object_get(s, "state"));
			if (!strcmp(name, "test") || !strcmp(name, "deploy"))
				assert_string_equal(st, "skipped");
		}
	}
	json_decref(r);
}

static void failing_job_is_retried_by_its_policy_and_passes(void **state)
{
	struct daemon *d = *state;
	char *yaml = xasprintf(
		"name: flaky\n"
		"stages:\n"
		"  - name: flaky\n"
		"    retry: { count: 2, on: [script] }\n"
		"    steps:\n"
		"      - run: |\n"
		"          n=$(cat %s/count 2>/dev/null || echo 0); n=$((n+1)); echo $n > %s/count\n"
		"          echo attempt $n; test $n -ge 2\n",
		d->dir, d->dir);
	int64_t run = h_trigger(d, yaml);
	json_t *r;

	assert_string_equal(h_wait_run(d, run, 60000), "passed");
	r = h_run(d, run);
	assert_int_equal(json_integer_value(json_object_get(h_job(r, "flaky"), "attempt")), 2);
	json_decref(r);
	free(yaml);
}

static void job_without_retry_fails_on_first_script_failure(void **state)
{
	struct daemon *d = *state;
	int64_t run = h_trigger(d, "name: once\nstages:\n  - { name: x, steps: [ { run: 'exit 1' } ] }\n");
	json_t *r;
	assert_string_equal(h_wait_run(d, run, 60000), "failed");
	r = h_run(d, run);
	assert_int_equal(json_integer_value(json_object_get(h_job(r, "x"), "attempt")), 1);
	json_decref(r);
}

/* How many processes run exactly cmd.  Steps run in their own PID
 * namespace (agents/contain.c), so the ids they see ($$, $!) are not this
 * test's: processes are found by their command line instead. */
static int count_procs(const char *cmd)
{
	struct buf out = BUF_INIT;
	int n;
	h_sh(&out, "pgrep -fx '%s' | wc -l", cmd);
	n = atoi(buf_cstr(&out));
	buf_release(&out);
	return n;
}

static void timeout_kills_the_whole_process_group(void **state)
{
	struct daemon *d = *state;
	char *yaml = xasprintf(
		"name: hang\n"
		"stages:\n"
		"  - name: hang\n"
		"    timeout: 2s\n"
		"    steps:\n"
		"      - run: 'sleep 300.17 & echo $! > %s/grandchild; sleep 300.18'\n",
		d->dir);
	char *path = xasprintf("%s/grandchild", d->dir), *pid_text;
	int64_t run = h_trigger(d, yaml);
	json_t *r;
	pid_t pid;

	assert_string_equal(h_wait_run(d, run, 30000), "failed");
	r = h_run(d, run);
	assert_string_equal(json_string_value(json_object_get(h_job(r, "hang"), "failure")), "timeout");
	json_decref(r);
	pid_text = read_text(path);
	pid = (pid_t)atoi(pid_text);
	assert_true(pid > 0);
	for (int i = 0; i < 50 && count_procs("sleep 300.17") + count_procs("sleep 300.18"); i++)
		h_msleep(100);
	assert_int_equal(count_procs("sleep 300.17"), 0); /* the backgrounded sleep is gone too */
	assert_int_equal(count_procs("sleep 300.18"), 0);
	free(pid_text);
	free(path);
	free(yaml);
}

static void cancel_stops_a_running_job_and_its_processes(void **state)
{
	struct daemon *d = *state;
	char *yaml = xasprintf(
		"name: long\n"
		"stages:\n"
		"  - { name: long, steps: [ { run: 'echo $$ > %s/pid; sleep 300.19' } ] }\n"
		"  - { name: after, needs: [long], steps: [ { run: 'echo never' } ] }\n",
		d->dir);
	char *path = xasprintf("%s/pid", d->dir), *pid_text = NULL;
	char *cancel;
	int64_t run = h_trigger(d, yaml);
	json_t *ans = NULL, *r;
	pid_t pid = 0;

	for (int i = 0; i < 200 && pid <= 0; i++) {
		free(pid_text);
		pid_text = read_text(path);
		pid = (pid_t)atoi(pid_text);
		h_msleep(50);
	}
	assert_true(pid > 0);
	cancel = xasprintf("/api/v1/runs/%lld/cancel", (long long)run);
	assert_int_equal(h_post(d, cancel, NULL, &ans), 200);
	json_decref(ans);
	assert_string_equal(h_wait_run(d, run, 5000), "canceled");
	r = h_run(d, run);
	assert_string_equal(job_state(r, "long"), "canceled");
	assert_string_equal(job_state(r, "after"), "canceled");
	json_decref(r);
	for (int i = 0; i < 50 && count_procs("sleep 300.19"); i++)
		h_msleep(100);
	assert_int_equal(count_procs("sleep 300.19"), 0);
	/* canceling twice is a conflict, not a second change */
	assert_int_equal(h_post(d, cancel, NULL, NULL), 409);
	free(cancel);
	free(pid_text);
	free(path);
	free(yaml);
}

static void concurrency_group_runs_one_at_a_time_in_order(void **state)
{
	struct daemon *d = *state;
	int64_t runs[3];
	char *path = xasprintf("%s/deploys", d->dir), *marks;

	for (int i = 0; i < 3; i++) {
		char *yaml = xasprintf(
			"name: deploy\n"
			"concurrency: production\n"
			"stages:\n"
			"  - { name: deploy, steps: [ { run: 'echo start %d >> %s; sleep 0.3; echo end %d >> %s' } ] }\n",
			i, path, i, path);
		runs[i] = h_trigger(d, yaml);
		free(yaml);
	}
	{
		json_t *r = h_run(d, runs[2]);
		assert_string_equal(json_string_value(json_object_get(r, "state")), "blocked");
		json_decref(r);
	}
	for (int i = 0; i < 3; i++)
		assert_string_equal(h_wait_run(d, runs[i], 20000), "passed");
	marks = read_text(path);
	assert_string_equal(marks, "start 0\nend 0\nstart 1\nend 1\nstart 2\nend 2\n");
	free(marks);
	free(path);
}

static void when_filter_skips_stage_and_its_dependents_for_other_refs(void **state)
{
	struct daemon *d = *state;
	json_t *req = json_pack("{ss ss}", "pipeline",
				"name: w\nstages:\n"
				"  - { name: always, steps: [ { run: 'true' } ] }\n"
				"  - { name: release-only, when: { tags: ['v*'] }, steps: [ { run: 'true' } ] }\n"
				"  - { name: publish, needs: [release-only], steps: [ { run: 'true' } ] }\n",
				"ref", "refs/heads/main");
	json_t *ans = NULL, *r;
	int64_t run;
	size_t i;
	json_t *s;

	assert_int_equal(h_post(d, "/api/v1/runs", req, &ans), 201);
	run = json_integer_value(json_object_get(ans, "id"));
	assert_string_equal(h_wait_run(d, run, 60000), "passed");
	r = h_run(d, run);
	/* the skipped stage's dependents are skipped too, and the run passes */
	json_array_foreach(json_object_get(r, "stages"), i, s) {
		const char *name = json_string_value(json_object_get(s, "name"));
		const char *st = json_string_value(json_object_get(s, "state"));
		assert_string_equal(st, !strcmp(name, "always") ? "passed" : "skipped");
	}
	assert_string_equal(job_state(r, "publish"), "skipped");
	json_decref(r);
	json_decref(ans);
	json_decref(req);
}

static void matrix_expands_into_one_job_per_combination(void **state)
{
	struct daemon *d = *state;
	int64_t run = h_trigger(d,
		"name: m\nstages:\n"
		"  - name: build\n"
		"    matrix: { board: [an385, an386], mode: [debug, release] }\n"
		"    steps: [ { run: 'echo building ${{ matrix.board }} $MATRIX_MODE' } ]\n");
	json_t *r, *stage;
	assert_string_equal(h_wait_run(d, run, 60000), "passed");
	r = h_run(d, run);
	stage = json_array_get(json_object_get(r, "stages"), 0);
	assert_int_equal(json_array_size(json_object_get(stage, "jobs")), 4);
	json_decref(r);
}

static void secrets_reach_the_job_but_are_masked_in_its_log(void **state)
{
	struct daemon *d = *state;
	int64_t run = h_trigger(d,
		"name: s\nstages:\n"
		"  - { name: s, secrets: [DEPLOY_KEY], steps: [ { run: 'echo key=$DEPLOY_KEY; test \"$DEPLOY_KEY\" = s3cr3t-value-42' } ] }\n");
	json_t *r;
	char *url;
	struct buf out = BUF_INIT;

	assert_string_equal(h_wait_run(d, run, 60000), "passed");
	r = h_run(d, run);
	url = xasprintf("%s/api/v1/jobs/%lld/log", d->url,
			(long long)json_integer_value(json_object_get(h_job(r, "s"), "id")));
	assert_int_equal(h_sh(&out, "curl -sf -H 'Authorization: Bearer %s' '%s'", d->token, url), 0);
	assert_non_null(strstr(buf_cstr(&out), "key=***"));
	assert_null(strstr(buf_cstr(&out), "s3cr3t-value-42"));
	buf_release(&out);
	free(url);
	json_decref(r);
}

static void unknown_secret_is_refused_at_trigger_and_nothing_is_stored(void **state)
{
	struct daemon *d = *state;
	json_t *req = json_pack("{ss}", "pipeline",
				"name: s\nstages:\n  - { name: s, secrets: [NOPE], steps: [ { run: 'true' } ] }\n");
	json_t *ans = NULL;
	int64_t before = h_sql_int(d, "SELECT COUNT(*) FROM runs");
	assert_int_equal(h_post(d, "/api/v1/runs", req, &ans), 422);
	{
		char *err = json_dumps(json_object_get(ans, "errors"), 0);
		assert_non_null(strstr(err, "secret 'NOPE'"));
		free(err);
	}
	assert_int_equal(h_sql_int(d, "SELECT COUNT(*) FROM runs"), before);
	json_decref(ans);
	json_decref(req);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(dag_runs_stages_in_dependency_order, setup, teardown),
		cmocka_unit_test_setup_teardown(failed_stage_skips_its_dependents_but_not_independent_stages, setup, teardown),
		cmocka_unit_test_setup_teardown(failing_job_is_retried_by_its_policy_and_passes, setup, teardown),
		cmocka_unit_test_setup_teardown(job_without_retry_fails_on_first_script_failure, setup, teardown),
		cmocka_unit_test_setup_teardown(timeout_kills_the_whole_process_group, setup, teardown),
		cmocka_unit_test_setup_teardown(cancel_stops_a_running_job_and_its_processes, setup, teardown),
		cmocka_unit_test_setup_teardown(concurrency_group_runs_one_at_a_time_in_order, setup, teardown),
		cmocka_unit_test_setup_teardown(when_filter_skips_stage_and_its_dependents_for_other_refs, setup, teardown),
		cmocka_unit_test_setup_teardown(matrix_expands_into_one_job_per_combination, setup, teardown),
		cmocka_unit_test_setup_teardown(secrets_reach_the_job_but_are_masked_in_its_log, setup, teardown),
		cmocka_unit_test_setup_teardown(unknown_secret_is_refused_at_trigger_and_nothing_is_stored, setup, teardown),
	};
	return cmocka_run_group_tests_name("engine", tests, NULL, NULL);
}
