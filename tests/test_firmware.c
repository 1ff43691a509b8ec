/*
 * test_firmware.c - the sample firmware (examples/sensor-node) through its
 * own pipeline on the real otacd, two local agents and two emulated HIL
 * rigs (otacd-agent --labels hil,board=...): cross-compiled builds checked
 * for reproducibility, host unit tests, cppcheck, MISRA compliance and
 * code metrics (pmccabe, jscpd; their BREAK= variants are in
 * test_quality.c), QEMU boots; then broken
 * variants of the firmware failing the right stage with the right message,
 * rig exclusivity and a rig that stops answering.
 *
 * Jobs get the sources from a copy of the example: the test's pipeline is
 * the example's .otacd/pipeline.yml (without the release and rollout
 * stages, which a branch push skips anyway) with a first step copying
 * $SRC into the workspace.  Needs arm-none-eabi-gcc, qemu-system-arm,
 * cppcheck, pmccabe, jscpd and python3; skipped with a message when one is
 * missing.
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
#include <unistd.h>
#include <cmocka.h>

#include "devharness.h"
#include "fwharness.h"
#include "harness.h"

static int tools_missing(void)
{
	static const char *const tools[] = { "arm-none-eabi-gcc", "qemu-system-arm", "cppcheck", "pmccabe", "python3",
					     "make" };
	char *jscpd = fw_jscpd_path();
	int missing = fw_tools_missing(tools, OTA_ARRAY_SIZE(tools),
				       "gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm cppcheck pmccabe", jscpd);
	free(jscpd);
	return missing;
}

/*
 * The example's pipeline up to its release stage, with env (lines of
 * "  KEY: value\n", may be "") and SRC set, every stage's steps starting
 * with a copy of the sources, and the hil stage's timeout replaced.
 */
static char *firmware_yaml(const char *src, const char *env, const char *hil_timeout)
{
	char *path = dh_src_path("examples/sensor-node/.otacd/pipeline.yml"), *cut, *head, *jscpd;
	struct buf text = BUF_INIT, a = BUF_INIT, b = BUF_INIT, c = BUF_INIT;
	int n;

	assert_int_equal(ota_read_file(&text, path, 1 << 20), 0);
	cut = strstr(text.ptr, "  # --- release");
	assert_non_null(cut);
	*cut = '\0';
	jscpd = fw_jscpd_path();
	head = xasprintf("env:\n  SRC: \"%s\"\n  JSCPD: \"%s\"\n%sstages:\n", src, jscpd, env);
	fw_replace_all(&a, text.ptr, "\nstages:\n", head, &n);
	assert_int_equal(n, 1);
	fw_copy_step(&b, a.ptr, 6);
	fw_replace_all(&c, b.ptr, "    timeout: 2m\n", hil_timeout, &n);
	assert_int_equal(n, 1);
	free(jscpd);
	free(head);
	free(path);
	buf_release(&text);
	buf_release(&a);
	buf_release(&b);
	return buf_detach(&c);
}

static void start(struct daemon *d, const char *config, pid_t rigs[2])
{
	const char *const args[] = { "--local-agents", "2", NULL };
	h_init(d, config);
	h_start(d, args);
	fw_rigs_start(d, rigs);
}

static void stop(struct daemon *d, pid_t rigs[2])
{
	fw_rigs_stop(rigs);
	h_cleanup(d);
}

static json_t *reports(struct daemon *d, int64_t run)
{
	char *path = xasprintf("/api/v1/runs/%lld/reports", (long long)run);
	json_t *ans = NULL;
	assert_int_equal(h_get(d, path, &ans), 200);
	free(path);
	return ans;
}

static char *job_log(struct daemon *d, json_t *job)
{
	struct buf out = BUF_INIT;
	assert_int_equal(h_sh(&out, "curl -sf -H 'Authorization: Bearer %s' %s/api/v1/jobs/%lld/log", d->token, d->url,
			      (long long)json_integer_value(json_object_get(job, "id"))), 0);
	return buf_detach(&out);
}

static json_int_t jint(json_t *o, const char *k)
{
	return json_integer_value(json_object_get(o, k));
}

static void sample_pipeline_builds_tests_analyses_and_boots_both_boards(void **state)
{
	struct daemon d;
	pid_t rigs[2];
	struct buf out = BUF_INIT;
	char *src, *yaml, *otactl = h_bin("otactl");
	json_t *run, *reps, *rep, *arts = NULL;
	int64_t id;
	int junit_unit = 0, junit_hil = 0, power_hil = 0, cppcheck = 0, toolchain = 0;
	size_t i;

	(void)state;
	if (tools_missing())
		skip();
	start(&d, NULL, rigs);
	src = dh_sensor_node_copy(d.dir, "sensor-node");
	yaml = firmware_yaml(src, "", "    timeout: 2m\n");
	id = h_trigger(&d, yaml);
	assert_string_equal(h_wait_run(&d, id, 170000), "passed");
	run = h_run(&d, id);

	/* both boards built twice with identical results, toolchains recorded */
	for (const char *const *b = (const char *const[]){ "mps2-an385", "mps2-an386", NULL }; *b; b++) {
		char *name = xasprintf("build (board=%s)", *b), *log, *hname = xasprintf("hil (board=%s)", *b);
		json_t *job = h_job(run, name), *hil = h_job(run, hname);
		char *want;
		assert_non_null(job);
		assert_string_equal(fw_jstr(job, "state"), "passed");
		log = job_log(&d, job);
		assert_non_null(strstr(log, "reproducible: both builds gave identical artifacts (2)"));
		assert_non_null(strstr(log, "toolchain: arm-none-eabi-gcc --version: arm-none-eabi-gcc"));
		free(log);
		/* the rig of that board ran its HIL job, with the board's image as input */
		assert_non_null(hil);
		assert_string_equal(fw_jstr(hil, "state"), "passed");
		assert_string_equal(fw_jstr(hil, "agent"), !strcmp(*b, "mps2-an385") ? "rig-an385" : "rig-an386");
		log = job_log(&d, hil);
		want = xasprintf("input build/%s/app.elf", *b);
		assert_non_null(strstr(log, want));
		assert_null(strstr(log, !strcmp(*b, "mps2-an385") ? "input build/mps2-an386" : "input build/mps2-an385"));
		free(want);
		want = xasprintf("board=%s", *b);
		assert_non_null(strstr(log, want));
		free(want);
		free(log);
		free(name);
		free(hname);
	}

	/* the reports */
	reps = reports(&d, id);
	json_array_foreach(reps, i, rep) {
		json_t *s = json_object_get(rep, "summary");
		if (!strcmp(fw_jstr(rep, "stage"), "unit-tests") && !strcmp(fw_jstr(rep, "format"), "junit")) {
			junit_unit++;
			assert_int_equal(jint(s, "tests"), 31);
			assert_int_equal(jint(s, "failures") + jint(s, "errors"), 0);
			assert_int_equal(json_array_size(json_object_get(rep, "tests")), 31);
		} else if (!strcmp(fw_jstr(rep, "stage"), "hil") && !strcmp(fw_jstr(rep, "format"), "power")) {
			/* the simulated meter's figures; their gate is test_hilpower.c's */
			power_hil++;
			assert_true(json_number_value(json_object_get(json_object_get(s, "metrics"), "avg_current_ma")) > 0);
		} else if (!strcmp(fw_jstr(rep, "stage"), "hil")) {
			junit_hil++;
			assert_string_equal(fw_jstr(rep, "format"), "junit");
			/* 5 boot and command checks, 19 protocol conformance cases, the power meter */
			assert_int_equal(jint(s, "tests"), 25);
			assert_int_equal(jint(s, "passed"), 25);
		} else if (!strcmp(fw_jstr(rep, "stage"), "static-analysis")) {
			cppcheck++;
			assert_int_equal(jint(json_object_get(s, "counts"), "error"), 0);
		} else if (!strcmp(fw_jstr(rep, "format"), "toolchain")) {
			toolchain++;
			assert_non_null(strstr(fw_jstr(json_array_get(json_object_get(rep, "commands"), 0), "version"),
					       "arm-none-eabi-gcc"));
			assert_non_null(strstr(fw_jstr(json_array_get(json_object_get(rep, "commands"), 1), "version"),
					       "Make"));
		}
	}
	assert_string_equal(fw_jstr(h_job(run, "compliance"), "state"), "passed");
	assert_string_equal(fw_jstr(h_job(run, "code-quality"), "state"), "passed");
	assert_int_equal(junit_unit, 1);
	assert_int_equal(junit_hil, 2);
	assert_int_equal(power_hil, 2);
	assert_int_equal(cppcheck, 1);
	assert_int_equal(toolchain, 2);

	/* the images carry their hardware variant */
	{
		char *path = xasprintf("/api/v1/runs/%lld/artifacts", (long long)id);
		json_t *a;
		int bins = 0;
		assert_int_equal(h_get(&d, path, &arts), 200);
		json_array_foreach(arts, i, a)
			if (strstr(fw_jstr(a, "name"), "app.bin")) {
				bins++;
				assert_non_null(strstr(fw_jstr(a, "name"), fw_jstr(a, "hardware")));
			}
		assert_int_equal(bins, 2);
		free(path);
	}

	/* and the CLI shows them */
	assert_int_equal(h_sh(&out, "%s --url %s --token %s show %lld --tests", otactl, d.url, d.token, (long long)id), 0);
	assert_non_null(strstr(buf_cstr(&out), "31 tests, 31 passed"));
	assert_non_null(strstr(buf_cstr(&out), "25 tests, 25 passed"));
	assert_int_equal(h_sh(&out, "%s --url %s --token %s show %lld --findings", otactl, d.url, d.token, (long long)id), 0);
	assert_non_null(strstr(buf_cstr(&out), "static-analysis"));
	assert_non_null(strstr(buf_cstr(&out), "0 findings"));

	json_decref(arts);
	json_decref(reps);
	json_decref(run);
	free(yaml);
	free(src);
	free(otactl);
	buf_release(&out);
	stop(&d, rigs);
}

/* Trigger the example with env; wait; the run must fail. */
static json_t *broken_run(struct daemon *d, const char *src, const char *env, const char *timeout)
{
	char *yaml = firmware_yaml(src, env, timeout);
	int64_t id = h_trigger(d, yaml);
	free(yaml);
	assert_string_equal(h_wait_run(d, id, 170000), "failed");
	return h_run(d, id);
}

static void broken_firmware_fails_the_right_stage_with_the_right_message(void **state)
{
	struct daemon d;
	pid_t rigs[2];
	struct buf out = BUF_INIT;
	char *src, *otactl = h_bin("otactl");
	json_t *run, *job;

	(void)state;
	if (tools_missing())
		skip();
	start(&d, NULL, rigs);
	src = dh_sensor_node_copy(d.dir, "sensor-node");

	/* a failing unit test: named with its message, the other stages pass */
	run = broken_run(&d, src, "  BREAK: unit\n", "    timeout: 2m\n");
	job = h_job(run, "unit-tests");
	assert_string_equal(fw_jstr(job, "state"), "failed");
	assert_non_null(strstr(fw_jstr(job, "message"), "1 of 31 tests failed: crc16_matches_ccitt_false_check_value"));
	assert_string_equal(fw_jstr(h_job(run, "static-analysis"), "state"), "passed");
	assert_string_equal(fw_jstr(h_job(run, "hil (board=mps2-an385)"), "state"), "passed");
	assert_int_equal(h_sh(&out, "%s --url %s --token %s show %lld --tests", otactl, d.url, d.token,
			      (long long)json_integer_value(json_object_get(run, "id"))), 0);
	assert_non_null(strstr(buf_cstr(&out), "crc16_matches_ccitt_false_check_value"));
	json_decref(run);

	/* a new cppcheck error */
	run = broken_run(&d, src, "  BREAK: lint\n", "    timeout: 2m\n");
	job = h_job(run, "static-analysis");
	assert_string_equal(fw_jstr(job, "state"), "failed");
	assert_non_null(strstr(fw_jstr(job, "message"), "1 error finding (threshold 0)"));
	assert_non_null(strstr(fw_jstr(job, "message"), "arrayIndexOutOfBounds"));
	assert_string_equal(fw_jstr(h_job(run, "unit-tests"), "state"), "passed");
	assert_int_equal(h_sh(&out, "%s --url %s --token %s show %lld --findings", otactl, d.url, d.token,
			      (long long)json_integer_value(json_object_get(run, "id"))), 0);
	assert_non_null(strstr(buf_cstr(&out), "arrayIndexOutOfBounds"));
	assert_non_null(strstr(buf_cstr(&out), "error"));
	json_decref(run);

	/* a firmware that hangs at boot: the HIL job's timeout stops it */
	run = broken_run(&d, src, "  BREAK: hang\n", "    timeout: 6s\n");
	job = h_job(run, "hil (board=mps2-an386)");
	assert_string_equal(fw_jstr(job, "state"), "failed");
	assert_string_equal(fw_jstr(job, "failure"), "timeout");
	assert_string_equal(fw_jstr(h_job(run, "build (board=mps2-an386)"), "state"), "passed");
	json_decref(run);

	/* a build that embeds its build time is not reproducible: both digests shown */
	run = broken_run(&d, src, "  INJECT_TIMESTAMP: \"1\"\n", "    timeout: 2m\n");
	job = h_job(run, "build (board=mps2-an385)");
	assert_string_equal(fw_jstr(job, "state"), "failed");
	assert_non_null(strstr(fw_jstr(job, "message"), "not reproducible: build/mps2-an385/app."));
	assert_non_null(strstr(fw_jstr(job, "message"), " vs "));
	assert_string_equal(fw_jstr(h_job(run, "hil (board=mps2-an385)"), "state"), "skipped");
	json_decref(run);

	free(src);
	free(otactl);
	buf_release(&out);
	stop(&d, rigs);
}

static void four_hil_jobs_on_two_rigs_never_share_a_rig(void **state)
{
	struct daemon d;
	pid_t rigs[2];
	const char *const args[] = { "--local-agents", "0", NULL };
	json_t *run, *jobs, *job, *other;
	int64_t id;
	size_t i, k;

	(void)state;
	h_init(&d, NULL);
	h_start(&d, args);
	rigs[0] = h_agent(&d, "rig-1", "hil");
	rigs[1] = h_agent(&d, "rig-2", "hil");
	id = h_trigger(&d, "name: rigs\nstages:\n"
			   "  - name: hil\n    kind: hil\n    matrix: { n: [1, 2, 3, 4] }\n    agent: { labels: [hil] }\n"
			   "    steps: [ { run: 'echo start $(date +%s%N); sleep 1; echo end $(date +%s%N)' } ]\n");
	assert_string_equal(h_wait_run(&d, id, 60000), "passed");
	run = h_run(&d, id);
	jobs = json_array();
	json_array_foreach(json_object_get(run, "stages"), i, job)
		json_array_foreach(json_object_get(job, "jobs"), k, other)
			json_array_append(jobs, other);
	assert_int_equal(json_array_size(jobs), 4);
	json_array_foreach(jobs, i, job) {
		const char *agent = fw_jstr(job, "agent");
		char *log = job_log(&d, job);
		assert_string_equal(fw_jstr(job, "state"), "passed");
		assert_true(!strcmp(agent, "rig-1") || !strcmp(agent, "rig-2"));
		assert_non_null(strstr(log, "start "));
		assert_non_null(strstr(log, "end "));
		free(log);
		/* one job at a time per rig: intervals on the same rig never overlap */
		json_array_foreach(jobs, k, other) {
			if (k == i || strcmp(agent, fw_jstr(other, "agent")))
				continue;
			assert_true(jint(job, "finished_at") <= jint(other, "started_at") ||
				    jint(other, "finished_at") <= jint(job, "started_at"));
		}
	}
	json_decref(jobs);
	json_decref(run);
	stop(&d, rigs);
}

static void rig_that_stops_answering_is_an_infra_failure_retried_on_another_rig(void **state)
{
	struct daemon d;
	pid_t rigs[2];
	const char *const args[] = { "--local-agents", "0", NULL };
	json_t *run, *job;
	int64_t id;
	char *first = NULL;
	pid_t frozen = 0;

	(void)state;
	h_init(&d, "lease: 2s\nheartbeat: 300ms\n");
	h_start(&d, args);
	rigs[0] = h_agent(&d, "rig-1", "hil");
	rigs[1] = h_agent(&d, "rig-2", "hil");
	id = h_trigger(&d, "name: rig\nstages:\n"
			   "  - name: hil\n    kind: hil\n    agent: { labels: [hil] }\n"
			   "    steps: [ { run: 'echo booting; sleep 3; echo checked' } ]\n");
	for (int i = 0; i < 400 && !first; i++) {
		run = h_run(&d, id);
		job = h_job(run, "hil");
		if (!strcmp(fw_jstr(job, "state"), "running") && json_is_string(json_object_get(job, "agent")))
			first = xstrdup(fw_jstr(job, "agent"));
		json_decref(run);
		if (!first)
			h_msleep(25);
	}
	assert_non_null(first);
	/* the rig hangs: no heartbeat, no result */
	frozen = !strcmp(first, "rig-1") ? rigs[0] : rigs[1];
	kill(frozen, SIGSTOP);
	assert_string_equal(h_wait_run(&d, id, 60000), "passed");
	run = h_run(&d, id);
	job = h_job(run, "hil");
	assert_int_equal(jint(job, "attempt"), 2);
	assert_string_not_equal(fw_jstr(job, "agent"), first);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM job_attempts WHERE attempt = 1 AND failure = 'infra'"), 1);
	json_decref(run);
	kill(frozen, SIGCONT);
	free(first);
	stop(&d, rigs);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(sample_pipeline_builds_tests_analyses_and_boots_both_boards),
		cmocka_unit_test(broken_firmware_fails_the_right_stage_with_the_right_message),
		cmocka_unit_test(four_hil_jobs_on_two_rigs_never_share_a_rig),
		cmocka_unit_test(rig_that_stops_answering_is_an_infra_failure_retried_on_another_rig),
	};
	cmocka_set_test_filter(getenv("FIRMWARE_ONLY"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
