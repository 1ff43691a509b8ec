/*
 * test_ops.c - what an operator and a new user read (issue 18): /metrics,
 * /healthz and /readyz on the API listener, real durations for agents'
 * jobs at any --time-scale, one rule for list limits, `otactl releases ID`
 * and the provenance's invocationId.  The full disk is test_diskfull.c.
 */
#include <regex.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../orchestrator/provenance.h"
#include "harness.h"

static const char *const one_agent[] = { "--local-agents", "1", NULL };

static void contains(const char *text, const char *needle)
{
	if (!strstr(text, needle))
		fail_msg("missing '%s' in:\n%.4000s", needle, text);
}

/* GET /metrics runs, jobs, durations, agents, queue, disk, API latency. */
static void metrics_cover_runs_jobs_agents_and_api_latency(void **state)
{
	struct daemon d;
	struct buf body = BUF_INIT;
	int64_t run;

	(void)state;
	h_init(&d, NULL);
	h_start(&d, one_agent);
	run = h_trigger(&d, "name: m\nstages:\n  - { name: a, steps: [ { run: 'true' } ] }\n");
	assert_string_equal(h_wait_run(&d, run, 60000), "passed");
	/* a viewer's token, like every read; the probes need none */
	assert_int_equal(h_raw(&d, "GET", "/metrics", NULL, NULL, NULL, 0, &body), 401);
	buf_clear(&body);
	assert_int_equal(h_raw(&d, "GET", "/healthz", NULL, NULL, NULL, 0, &body), 200);
	buf_clear(&body);
	assert_int_equal(h_raw(&d, "GET", "/readyz", NULL, NULL, NULL, 0, &body), 200);
	buf_clear(&body);
	assert_int_equal(h_raw(&d, "GET", "/metrics", d.token, NULL, NULL, 0, &body), 200);
	contains(buf_cstr(&body), "\notacd_runs{state=\"passed\"} 1\n");
	contains(buf_cstr(&body), "\notacd_runs{state=\"failed\"} 0\n");
	contains(buf_cstr(&body), "\notacd_jobs{state=\"passed\"} 1\n");
	contains(buf_cstr(&body), "\notacd_queue_depth 0\n");
	contains(buf_cstr(&body), "\notacd_job_duration_seconds_count{kind=\"command\"} 1\n");
	contains(buf_cstr(&body), "\notacd_job_duration_seconds_bucket{kind=\"command\",le=\"+Inf\"} 1\n");
	contains(buf_cstr(&body), "\notacd_job_queue_wait_seconds_count 1\n");
	contains(buf_cstr(&body), "\notacd_agents{state=\"registered\"} 1\n");
	contains(buf_cstr(&body), "\notacd_disk_full 0\n");
	contains(buf_cstr(&body), "\notacd_artifact_bytes 0\n");
	contains(buf_cstr(&body), "otacd_api_request_duration_seconds_count{method=\"POST\",route=\"/api/v1/runs\"} 1\n");
	contains(buf_cstr(&body), "otacd_api_request_duration_seconds_bucket{method=\"POST\",route=\"/api/v1/runs\",le=\"+Inf\"} 1\n");
	buf_release(&body);
	h_cleanup(&d);
}

/* At --time-scale 3600 a 1 s step is 1 s on the page and in otactl show,
 * not an hour; the API says which clock. */
static void agents_jobs_have_real_durations_at_any_time_scale(void **state)
{
	const char *const args[] = { "--local-agents", "1", "--time-scale", "3600", NULL };
	struct daemon d;
	struct buf out = BUF_INIT;
	json_t *r, *job;
	int64_t run, ms;
	char *otactl = h_bin("otactl");

	(void)state;
	h_init(&d, NULL);
	h_start(&d, args);
	run = h_trigger(&d, "name: slow\nstages:\n  - { name: a, steps: [ { run: 'sleep 1' } ] }\n");
	assert_string_equal(h_wait_run(&d, run, 60000), "passed");
	r = h_run(&d, run);
	job = h_job(r, "a");
	assert_string_equal(json_string_value(json_object_get(job, "clock")), "real");
	ms = json_integer_value(json_object_get(job, "duration_ms"));
	/* at least the step's second; an hour (3,600,000) would be otacd time */
	if (ms < 1000 || ms > 600000)
		fail_msg("duration_ms %lld is not the real run time of a 1 s step", (long long)ms);
	assert_true(json_integer_value(json_object_get(job, "finished_at")) -
			    json_integer_value(json_object_get(job, "started_at")) >= 3600 * 1000);
	json_decref(r);
	assert_int_equal(h_sh(&out, "%s --url %s --token %s show %lld", otactl, d.url, d.token, (long long)run), 0);
	contains(buf_cstr(&out), "job durations: real time on the agent");
	contains(buf_cstr(&out), "(otacd time)");
	buf_release(&out);
	free(otactl);
	h_cleanup(&d);
}

/* Every list takes ?limit= from 1 to 500 and refuses anything else with 400
 * (GET /api/v1/deliveries?limit=1000 fell back to 50 silently). */
static void list_limits_outside_1_to_500_are_refused(void **state)
{
	static const char *const lists[] = { "/api/v1/runs", "/api/v1/deliveries", "/api/v1/releases",
					     "/api/v1/rollouts", "/api/v1/audit" };
	static const char *const bad[] = { "0", "501", "1000", "abc", "-1", "" };
	struct daemon d;

	(void)state;
	h_init(&d, NULL);
	h_start(&d, one_agent);
	for (size_t i = 0; i < sizeof(lists) / sizeof(lists[0]); i++) {
		for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
			char *path = xasprintf("%s?limit=%s", lists[i], bad[k]);
			json_t *ans = NULL;
			long st = h_get(&d, path, &ans);
			if (st != 400)
				fail_msg("%s answered %ld, not 400", path, st);
			contains(json_string_value(json_object_get(ans, "error")), "from 1 to 500");
			json_decref(ans);
			free(path);
		}
		{
			char *path = xasprintf("%s?limit=500", lists[i]);
			json_t *ans = NULL;
			assert_int_equal(h_get(&d, path, &ans), 200);
			json_decref(ans);
			free(path);
		}
	}
	h_cleanup(&d);
}

/* A release by `otactl releases ID` (and --json), and its provenance names
 * the invocation: globally unique, pointing at the run, job and attempt. */
static void one_release_is_shown_and_its_provenance_names_the_invocation(void **state)
{
	const char *const args[] = { "--local-agents", "2", NULL };
	struct daemon d;
	struct buf out = BUF_INIT, payload = BUF_INIT;
	char *otactl = h_bin("otactl"), *cfg, *path, *pattern;
	json_t *rel = NULL, *env, *stmt, *meta;
	int64_t run, rid, prov;
	regex_t re;

	(void)state;
	h_init(&d, NULL);
	assert_int_equal(h_sh(&out, "cd %s && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out k1.pem",
			      d.dir), 0);
	cfg = xasprintf("products:\n  fw: { max_counter_increase: 3 }\nkeys:\n  k1: { spec: %s/k1.pem }\n", d.dir);
	d.config = xasprintf("%s/config.yml", d.dir);
	assert_int_equal(ota_write_file_atomic(d.config, cfg, strlen(cfg), 0600), 0);
	h_start(&d, args);
	run = h_trigger(&d, "name: fw\nstages:\n  - name: build\n    steps: [ { run: 'head -c 3000 /dev/urandom > app.bin' } ]\n"
			    "    artifacts: [ { path: app.bin, name: app.bin, type: application, hardware: an385 } ]\n"
			    "  - { name: release, kind: release, needs: [build], version: \"1.2.3\", security_counter: 1, key: k1 }\n");
	assert_string_equal(h_wait_run(&d, run, 60000), "passed");
	rid = h_sql_int(&d, "SELECT id FROM releases");
	buf_clear(&out);
	assert_int_equal(h_sh(&out, "%s --url %s --token %s releases %lld", otactl, d.url, d.token, (long long)rid), 0);
	contains(buf_cstr(&out), "fw 1.2.3");
	contains(buf_cstr(&out), "release/manifest.json");
	buf_clear(&out);
	assert_int_equal(h_sh(&out, "%s --url %s --token %s releases %lld --json", otactl, d.url, d.token, (long long)rid), 0);
	rel = json_loads(buf_cstr(&out), 0, NULL);
	assert_non_null(rel);
	assert_int_equal(json_integer_value(json_object_get(rel, "id")), rid);
	assert_string_equal(json_string_value(json_object_get(rel, "version")), "1.2.3");
	buf_clear(&out);
	assert_int_not_equal(h_sh(&out, "%s --url %s --token %s releases 999 2>&1", otactl, d.url, d.token), 0);

	/* the provenance: DSSE envelope, base64 payload, SLSA v1 statement */
	prov = json_integer_value(json_object_get(rel, "provenance_artifact"));
	path = xasprintf("/api/v1/artifacts/%lld", (long long)prov);
	buf_clear(&out);
	assert_int_equal(h_raw(&d, "GET", path, d.token, NULL, NULL, 0, &out), 200);
	env = json_loads(buf_cstr(&out), 0, NULL);
	assert_non_null(env);
	{
		const char *p = json_string_value(json_object_get(env, "payload"));
		assert_non_null(p);
		assert_int_equal(dsse_base64_decode(&payload, p, strlen(p)), 0);
	}
	stmt = json_loadb(payload.ptr, payload.len, 0, NULL);
	assert_non_null(stmt);
	meta = json_object_get(json_object_get(json_object_get(stmt, "predicate"), "runDetails"), "metadata");
	pattern = xasprintf("^otacd:[0-9a-f]{32}/runs/%lld/jobs/[0-9]+/attempts/1$", (long long)run);
	assert_int_equal(regcomp(&re, pattern, REG_EXTENDED | REG_NOSUB), 0);
	if (!json_is_string(json_object_get(meta, "invocationId")) ||
	    regexec(&re, json_string_value(json_object_get(meta, "invocationId")), 0, NULL, 0) != 0)
		fail_msg("invocationId is %s", json_dumps(meta, JSON_COMPACT));
	regfree(&re);
	json_decref(stmt);
	json_decref(env);
	json_decref(rel);
	buf_release(&payload);
	buf_release(&out);
	free(pattern);
	free(path);
	free(cfg);
	free(otactl);
	h_cleanup(&d);
}

/* Device check-ins and reports are counted on the device listener's
 * /metrics (the API listener's carries otacd's own state). */
static void device_reports_are_counted_by_outcome(void **state)
{
	struct daemon d;
	char **tok, *text;
	json_t *ans = NULL;
	size_t len;

	(void)state;
	h_init(&d, NULL);
	h_start(&d, one_agent);
	tok = h_register_devices(&d, "m", 1); /* device m-0000 */
	assert_int_equal(h_dev_post(&d, "/device/v1/checkin", tok[0],
				    json_pack("{ss ss ss ss ss si ss}", "device", "m-0000", "product", "fw", "hardware",
					      "mps2-an385", "bootloader", "1.2.0", "version", "1.0.0", "security_counter", 0,
					      "slot", "confirmed"), &ans), 200);
	json_decref(ans);
	/* one about the version it runs, one about a version never offered */
	assert_int_equal(h_dev_post(&d, "/device/v1/reports", tok[0],
				    json_pack("{s[{ss ss ss sf}{ss ss ss}]}", "reports", "device", "m-0000", "version", "1.0.0",
					      "event", "heartbeat", "uptime_s", 60.0, "device", "m-0000", "version", "9.9.9",
					      "event", "install"), &ans), 200);
	assert_int_equal(json_integer_value(json_object_get(ans, "accepted")), 1);
	json_decref(ans);
	text = h_device_metrics(&d, &len);
	contains(text, "otacd_device_reports_total{outcome=\"accepted\"} 1\n");
	contains(text, "otacd_device_reports_total{outcome=\"refused\"} 1\n");
	contains(text, "otacd_device_checkins_total 1\n");
	free(text);
	for (char **t = tok; *t; t++)
		free(*t);
	free(tok);
	h_cleanup(&d);
}

int main(void)
{
	const char *only = getenv("OPS_ONLY");
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(metrics_cover_runs_jobs_agents_and_api_latency),
		cmocka_unit_test(agents_jobs_have_real_durations_at_any_time_scale),
		cmocka_unit_test(list_limits_outside_1_to_500_are_refused),
		cmocka_unit_test(one_release_is_shown_and_its_provenance_names_the_invocation),
		cmocka_unit_test(device_reports_are_counted_by_outcome),
	};
	if (only)
		cmocka_set_test_filter(only);
	return cmocka_run_group_tests_name("ops", tests, NULL, NULL);
}
