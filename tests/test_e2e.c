/*
 * test_e2e.c - the whole system as a user meets it: otactl against a real
 * otacd, its local agents and remote agents, and crashes (SIGKILL) of
 * agents and of the daemon itself in the middle of work.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <cmocka.h>

#include "harness.h"

static char *write_pipeline(struct daemon *d, const char *name, const char *yaml)
{
	char *path = xasprintf("%s/%s", d->dir, name);
	assert_int_equal(ota_write_file_atomic(path, yaml, strlen(yaml), 0600), 0);
	return path;
}

static void cli_triggers_a_run_follows_its_logs_and_collects_artifacts(void **state)
{
	struct daemon d;
	struct buf out = BUF_INIT;
	char *otactl = h_bin("otactl"), *file;
	const char *const args[] = { "--local-agents", "2", NULL };
	int64_t run;
	json_t *arts = NULL;
	char *path;

	(void)state;
	h_init(&d, NULL);
	h_start(&d, args);
	file = write_pipeline(&d, "hello.yml",
		"name: hello\n"
		"stages:\n"
		"  - name: build\n"
		"    steps:\n"
		"      - run: |\n"
		"          for i in 1 2 3; do echo line $i; sleep 0.2; done\n"
		"          mkdir -p out && printf 'firmware' > out/app.bin\n"
		"    artifacts: [ out/app.bin ]\n"
		"  - { name: test, needs: [build], steps: [ { run: 'echo tested' } ] }\n");

	assert_int_equal(h_sh(&out, "%s --url %s --token %s trigger %s", otactl, d.url, d.token, file), 0);
	run = atoll(buf_cstr(&out));
	assert_true(run > 0);
	/* follow the whole run's logs live until it ends */
	assert_int_equal(h_sh(&out, "timeout 30 %s --url %s --token %s logs %lld -f", otactl, d.url, d.token,
			      (long long)run), 0);
	assert_non_null(strstr(buf_cstr(&out), "line 1"));
	assert_non_null(strstr(buf_cstr(&out), "line 3"));
	assert_non_null(strstr(buf_cstr(&out), "tested"));
	assert_string_equal(h_wait_run(&d, run, 10000), "passed");

	/* the artifact is stored with its digest and downloads intact */
	path = xasprintf("/api/v1/runs/%lld/artifacts", (long long)run);
	assert_int_equal(h_get(&d, path, &arts), 200);
	assert_int_equal(json_array_size(arts), 1);
	assert_string_equal(json_string_value(json_object_get(json_array_get(arts, 0), "name")), "out/app.bin");
	assert_int_equal(h_sh(&out, "curl -sf -H 'Authorization: Bearer %s' %s/api/v1/artifacts/%lld | sha256sum",
			      d.token, d.url, (long long)json_integer_value(json_object_get(json_array_get(arts, 0), "id"))), 0);
	assert_int_equal(strncmp(buf_cstr(&out), json_string_value(json_object_get(json_array_get(arts, 0), "sha256")), 64), 0);
	assert_int_equal(h_sh(&out, "printf firmware | sha256sum"), 0);
	assert_int_equal(strncmp(buf_cstr(&out), json_string_value(json_object_get(json_array_get(arts, 0), "sha256")), 64), 0);

	/* runs and show speak JSON too */
	assert_int_equal(h_sh(&out, "%s --url %s --token %s runs --json", otactl, d.url, d.token), 0);
	assert_non_null(strstr(buf_cstr(&out), "\"pipeline\""));
	assert_int_equal(h_sh(&out, "%s --url %s --token %s show %lld", otactl, d.url, d.token, (long long)run), 0);
	assert_non_null(strstr(buf_cstr(&out), "passed"));

	json_decref(arts);
	free(path);
	free(file);
	free(otactl);
	buf_release(&out);
	h_cleanup(&d);
}

static void cli_lint_and_daemon_check_report_errors_and_exit_nonzero(void **state)
{
	struct daemon d;
	struct buf out = BUF_INIT;
	char *otactl = h_bin("otactl"), *otacd = h_bin("otacd"), *bad, *good;

	(void)state;
	h_init(&d, NULL);
	bad = write_pipeline(&d, "bad.yml", "name: x\nstages:\n  - name: a\n    stpes: [ { run: x } ]\n");
	good = write_pipeline(&d, "good.yml", "name: x\nstages:\n  - name: a\n    steps: [ { run: x } ]\n");
	assert_int_equal(h_sh(&out, "%s lint %s", otactl, bad), 1);
	assert_non_null(strstr(buf_cstr(&out), "bad.yml:4:5"));
	assert_non_null(strstr(buf_cstr(&out), "did you mean 'steps'"));
	assert_int_equal(h_sh(&out, "%s --check %s", otacd, bad), 1);
	assert_non_null(strstr(buf_cstr(&out), "bad.yml:4:5"));
	assert_int_equal(h_sh(&out, "%s lint %s", otactl, good), 0);
	assert_int_equal(h_sh(&out, "%s --check %s", otacd, good), 0);
	/* an unreachable daemon is its own exit code */
	assert_int_equal(h_sh(&out, "%s --url http://127.0.0.1:1 --token x runs", otactl), 3);
	free(bad);
	free(good);
	free(otactl);
	free(otacd);
	buf_release(&out);
	h_cleanup(&d);
}

static void agent_killed_mid_job_is_retried_on_another_agent(void **state)
{
	struct daemon d;
	const char *const args[] = { "--local-agents", "0", NULL };
	pid_t a1, a2, victim;
	int64_t run;
	json_t *r, *job;
	const char *first_agent;
	char *first = NULL;

	(void)state;
	h_init(&d, "lease: 2s\nheartbeat: 300ms\n");
	h_start(&d, args);
	a1 = h_agent(&d, "rig-a", "hil");
	a2 = h_agent(&d, "rig-b", "hil");
	run = h_trigger(&d, "name: hil\nstages:\n  - { name: hil, agent: { labels: [hil] }, steps: [ { run: 'sleep 2; echo done' } ] }\n");
	/* wait until an agent holds the job */
	for (int i = 0; i < 200; i++) {
		r = h_run(&d, run);
		job = h_job(r, "hil");
		if (!strcmp(json_string_value(json_object_get(job, "state")), "running") &&
		    json_is_string(json_object_get(job, "agent"))) {
			first = xstrdup(json_string_value(json_object_get(job, "agent")));
			json_decref(r);
			break;
		}
		json_decref(r);
		h_msleep(25);
	}
	assert_non_null(first);
	victim = !strcmp(first, "rig-a") ? a1 : a2;
	kill(victim, SIGKILL);
	waitpid(victim, NULL, 0);

	assert_string_equal(h_wait_run(&d, run, 30000), "passed");
	r = h_run(&d, run);
	job = h_job(r, "hil");
	first_agent = json_string_value(json_object_get(job, "agent"));
	assert_int_equal(json_integer_value(json_object_get(job, "attempt")), 2);
	assert_string_not_equal(first_agent, first);
	json_decref(r);
	kill(victim == a1 ? a2 : a1, SIGTERM);
	waitpid(victim == a1 ? a2 : a1, NULL, 0);
	free(first);
	h_cleanup(&d);
}

static void daemon_killed_with_twenty_runs_in_flight_finishes_them_all_once(void **state)
{
	struct daemon d;
	const char *const args[] = { "--local-agents", "2", NULL };
	int64_t runs[20];
	char *yaml;

	(void)state;
	h_init(&d, "lease: 2s\nheartbeat: 300ms\n");
	h_start(&d, args);
	yaml = xasprintf("name: busy\nenv: { LOG: \"%s/executions\" }\nstages:\n"
			 "  - { name: a, steps: [ { run: 'echo a-$OTACD_RUN_ID >> $LOG; sleep 0.1' } ] }\n"
			 "  - { name: b, needs: [a], steps: [ { run: 'echo b-$OTACD_RUN_ID >> $LOG; sleep 0.1' } ] }\n",
			 d.dir);
	for (int i = 0; i < 20; i++)
		runs[i] = h_trigger(&d, yaml);
	h_msleep(700);
	h_kill(&d, SIGKILL);
	assert_true(h_sql_int(&d, "SELECT COUNT(*) FROM runs WHERE state IN ('passed','failed','canceled')") < 20);
	h_start(&d, args);
	for (int i = 0; i < 20; i++)
		assert_string_equal(h_wait_run(&d, runs[i], 60000), "passed");
	/* every job reached its final state exactly once */
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM jobs"), 40);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM jobs WHERE state = 'passed'"), 40);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM events WHERE kind = 'job.final'"), 40);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(DISTINCT job_id) FROM events WHERE kind = 'job.final'"), 40);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM events WHERE kind = 'run.final'"), 20);
	/* a job that passed before the crash never ran again: no job has an
	 * attempt after a passed one */
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM job_attempts a JOIN job_attempts b ON a.job_id = b.job_id"
				       " AND b.attempt > a.attempt WHERE a.failure IS NULL AND a.finished_at IS NOT NULL"), 0);
	free(yaml);
	h_cleanup(&d);
}

static void remote_agent_keeps_its_job_across_a_daemon_restart(void **state)
{
	struct daemon d;
	const char *const args[] = { "--local-agents", "0", NULL };
	pid_t agent;
	int64_t run;
	json_t *r, *job;

	(void)state;
	h_init(&d, "lease: 3s\nheartbeat: 300ms\n");
	d.listen = h_free_listen();
	h_start(&d, args);
	agent = h_agent(&d, "builder", "arm-gcc");
	run = h_trigger(&d, "name: long\nstages:\n  - { name: build, agent: { labels: [arm-gcc] },"
			    " steps: [ { run: 'echo start; sleep 3; echo end' } ] }\n");
	for (int i = 0; i < 200; i++) {
		r = h_run(&d, run);
		int running = !strcmp(json_string_value(json_object_get(h_job(r, "build"), "state")), "running");
		json_decref(r);
		if (running)
			break;
		h_msleep(25);
	}
	h_msleep(500);
	h_kill(&d, SIGKILL);
	/* down for longer than the lease: the job ends meanwhile, and the
	 * agent reports to the restarted daemon */
	h_msleep(3500);
	h_start(&d, args);
	assert_string_equal(h_wait_run(&d, run, 30000), "passed");
	r = h_run(&d, run);
	job = h_job(r, "build");
	/* the agent carried on and reported to the new daemon: no second attempt */
	assert_int_equal(json_integer_value(json_object_get(job, "attempt")), 1);
	assert_string_equal(json_string_value(json_object_get(job, "agent")), "builder");
	{
		struct buf out = BUF_INIT;
		char *path = xasprintf("/api/v1/jobs/%lld/log", (long long)json_integer_value(json_object_get(job, "id")));
		assert_int_equal(h_sh(&out, "curl -sf -H 'Authorization: Bearer %s' %s%s", d.token, d.url, path), 0);
		assert_non_null(strstr(buf_cstr(&out), "start"));
		assert_non_null(strstr(buf_cstr(&out), "end"));
		free(path);
		buf_release(&out);
	}
	json_decref(r);
	kill(agent, SIGTERM);
	waitpid(agent, NULL, 0);
	h_cleanup(&d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(cli_triggers_a_run_follows_its_logs_and_collects_artifacts),
		cmocka_unit_test(cli_lint_and_daemon_check_report_errors_and_exit_nonzero),
		cmocka_unit_test(agent_killed_mid_job_is_retried_on_another_agent),
		cmocka_unit_test(daemon_killed_with_twenty_runs_in_flight_finishes_them_all_once),
		cmocka_unit_test(remote_agent_keeps_its_job_across_a_daemon_restart),
	};
	return cmocka_run_group_tests_name("e2e", tests, NULL, NULL);
}
