/*
 * test_staleness.c - gates know how stale their aggregates are (issue 19,
 * part 5), against the real otacd, its device API and real HTTP devices.
 *
 * Gates read the fleet's committed aggregates; under load the fleet's
 * writer lags the reports otacd has accepted (a 1M-device run judged a
 * release on 42k confirmed devices while ~990k had confirmed).  The
 * daemon runs with OTACD_TEST_FLEET_STALL_FILE (tests only): while that
 * file exists the fleet's writer commits nothing, so a report accepted
 * then waits and the aggregates lag it.  The gate's evidence would pass
 * (enough confirmed boots committed before, the hold over), yet while the
 * lag exceeds gate_max_lag every evaluation is inconclusive, says why and
 * records the lag; once the writer catches up the same gate passes.
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
#include <sys/wait.h>
#include <unistd.h>

#include "../common/httpc.h"
#include "harness.h"

#define NDEV 40

static long dev_post(struct daemon *d, const char *path, const char *token, json_t *req, json_t **ans)
{
	char *url = xasprintf("%s%s", d->device_url, path);
	long status = 0;
	json_t *a = NULL;
	if (httpc_json(&a, &status, "POST", url, token, req, 60000) < 0)
		status = -1;
	json_decref(req);
	free(url);
	if (ans)
		*ans = a;
	else
		json_decref(a);
	return status;
}

static long checkin(struct daemon *d, const char *id, const char *token, json_t **ans)
{
	return dev_post(d, "/device/v1/checkin", token,
			json_pack("{ss ss ss ss ss si ss}", "device", id, "product", "fw", "hardware", "mps2-an385",
				  "bootloader", "1.2.0", "version", "1.0.0", "security_counter", 0, "slot", "confirmed"),
			ans);
}

/* Under OTACD_SLOW=1 (sanitizer builds) otacd time runs at half speed. */
static const char *scale(void)
{
	const char *s = getenv("OTACD_SLOW");
	return s && !strcmp(s, "1") ? "1800" : "3600";
}

static int64_t sql_wait(struct daemon *d, const char *sql, int timeout_ms)
{
	int64_t v = 0;
	for (int waited = 0; waited < timeout_ms && (v = h_sql_int(d, sql)) <= 0; waited += 100)
		h_msleep(100);
	return v;
}

static void gate_never_passes_on_aggregates_that_lag_the_fleet(void **state)
{
	struct daemon d;
	const char *const args[] = { "--local-agents", "2", "--time-scale", scale(), NULL };
	struct buf out = BUF_INIT;
	char *cfg, *stall, *y, *sql, *pass_sql, **creds;
	int64_t run, rel, ro, stalled_at, lagging;
	json_t *reports;
	pid_t late;
	int status = 0;

	(void)state;
	h_init(&d, NULL);
	assert_int_equal(h_sh(&out, "cd %s && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out key.pem"
				    " && openssl pkey -in key.pem -pubout -out key.pub", d.dir), 0);
	cfg = xasprintf("keys:\n  test: { spec: %s/key.pem }\ngate_max_lag: 2s\n", d.dir);
	d.config = xasprintf("%s/config.yml", d.dir);
	assert_int_equal(ota_write_file_atomic(d.config, cfg, strlen(cfg), 0600), 0);
	stall = xasprintf("%s/stall", d.dir);
	setenv("OTACD_TEST_FLEET_STALL_FILE", stall, 1);
	assert_int_equal(h_start(&d, args), 0);
	unsetenv("OTACD_TEST_FLEET_STALL_FILE");

	creds = h_register_devices(&d, "dev", NDEV);
	for (int i = 0; i < NDEV; i++) {
		char id[32];
		snprintf(id, sizeof(id), "dev-%04d", i);
		assert_int_equal(checkin(&d, id, creds[i], NULL), 200);
	}
	/* one step to the whole fleet, held 20 h of otacd time (20 s real) */
	y = xasprintf("name: fw\nstages:\n"
		      "  - name: build\n"
		      "    steps: [ { run: \"printf 'fw 1.1.0' > app.bin && head -c 2000 /dev/zero >> app.bin\" } ]\n"
		      "    artifacts: [ { path: app.bin, name: app.bin, type: application, hardware: mps2-an385 } ]\n"
		      "  - { name: release, kind: release, needs: [build], version: \"1.1.0\", security_counter: 0, key: test }\n"
		      "  - name: canary\n    kind: rollout\n    needs: [release]\n"
		      "    steps: [ {percent: 100, hold: 20h} ]\n    max_extension: 1000h\n    gates: [boots]\n"
		      "gates:\n  boots: { metric: boot_success_rate, min: 0.5, min_devices: 20 }\n");
	run = h_trigger(&d, y);
	sql = xasprintf("SELECT COALESCE((SELECT id FROM releases WHERE run_id = %lld), 0)", (long long)run);
	rel = sql_wait(&d, sql, 60000);
	assert_true(rel > 0);
	free(sql);
	sql = xasprintf("SELECT COALESCE((SELECT id FROM rollouts WHERE release_id = %lld AND state = 'holding'), 0)",
			(long long)rel);
	ro = sql_wait(&d, sql, 60000);
	assert_true(ro > 0);
	free(sql);
	/* the step's first check (its evidence counts from there) */
	sql = xasprintf("SELECT COUNT(*) FROM gate_evals WHERE rollout_id = %lld", (long long)ro);
	assert_true(sql_wait(&d, sql, 30000) > 0);
	free(sql);

	/* every device is offered 1.1.0 and confirms it: committed, answered */
	reports = json_array();
	for (int i = 0; i < NDEV; i++) {
		char id[32];
		json_t *ans = NULL;
		snprintf(id, sizeof(id), "dev-%04d", i);
		assert_int_equal(checkin(&d, id, creds[i], &ans), 200);
		assert_true(json_is_object(json_object_get(ans, "offer")));
		json_decref(ans);
		json_array_append_new(reports, json_pack("{ss ss ss ss}", "device", id, "credential", creds[i], "version",
							 "1.1.0", "event", "boot_ok"));
	}
	{
		json_t *ans = NULL;
		assert_int_equal(dev_post(&d, "/device/v1/reports", NULL, json_pack("{so}", "reports", reports), &ans), 200);
		assert_int_equal(json_integer_value(json_object_get(ans, "accepted")), NDEV);
		json_decref(ans);
	}

	/* the writer stalls; a device's heartbeat is accepted and waits */
	assert_int_equal(ota_write_file_atomic(stall, "", 0, 0600), 0);
	stalled_at = h_sql_int(&d, "SELECT COALESCE(MAX(id), 0) FROM gate_evals");
	late = fork();
	if (late == 0) {
		long st = dev_post(&d, "/device/v1/reports", creds[0],
				   json_pack("{s[{ss ss ss}]}", "reports", "device", "dev-0000", "version", "1.1.0", "event",
					     "heartbeat"),
				   NULL);
		_exit(st == 200 ? 0 : 1);
	}
	assert_true(late > 0);

	/* the hold ends while the aggregates lag: inconclusive, with the lag;
	 * never a pass (the committed evidence alone would pass) */
	sql = xasprintf("SELECT COUNT(*) FROM gate_evals WHERE rollout_id = %lld AND id > %lld AND verdict = 'inconclusive'"
			" AND detail LIKE '%%aggregates lag accepted reports%%' AND json_extract(detail, '$.lag_ms') > 2000"
			" AND json_extract(detail, '$.n') >= 20",
			(long long)ro, (long long)stalled_at);
	pass_sql = xasprintf("SELECT COUNT(*) FROM gate_evals WHERE rollout_id = %lld AND id > %lld AND verdict = 'pass'",
			     (long long)ro, (long long)stalled_at);
	lagging = 0;
	for (int waited = 0; waited < 90000 && lagging < 5; waited += 100) {
		if (h_sql_int(&d, pass_sql) > 0) {
			unlink(stall);
			fail_msg("the gate passed on aggregates lagging the fleet");
		}
		lagging = h_sql_int(&d, sql);
		h_msleep(100);
	}
	free(sql);
	if (lagging < 5) {
		json_t *r = NULL;
		char *path = xasprintf("/api/v1/releases/%lld/rollout", (long long)rel);
		char *text = NULL;
		h_get(&d, path, &r);
		text = json_dumps(r, JSON_COMPACT);
		unlink(stall);
		fail_msg("no lagging evaluations after the hold; rollout: %.3000s", text ? text : "?");
	}
	assert_int_equal(h_sql_int(&d, pass_sql), 0);
	free(pass_sql);
	sql = xasprintf("SELECT COUNT(*) FROM rollouts WHERE id = %lld AND state = 'holding'", (long long)ro);
	assert_int_equal(h_sql_int(&d, sql), 1);
	free(sql);
	/* the device listener says so too */
	{
		size_t len;
		char *m = h_device_metrics(&d, &len), *p = strstr(m, "\notacd_fleet_lag_seconds ");
		assert_non_null(p);
		assert_true(strtod(p + strlen("\notacd_fleet_lag_seconds "), NULL) > 2.0);
		free(m);
	}
	assert_true(h_pid_alive(late));   /* its answer waits for the commit */

	/* the writer catches up: the heartbeat is answered, the gate passes */
	assert_int_equal(unlink(stall), 0);
	assert_int_equal(waitpid(late, &status, 0), late);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	assert_string_equal(h_wait_run(&d, run, 60000), "passed");
	sql = xasprintf("SELECT COUNT(*) FROM gate_evals WHERE rollout_id = %lld AND verdict = 'pass'"
			" AND json_extract(detail, '$.lag_ms') <= 2000 AND json_extract(detail, '$.since_commit_ms') >= 0",
			(long long)ro);
	assert_true(h_sql_int(&d, sql) > 0);
	free(sql);

	for (int i = 0; creds[i]; i++)
		free(creds[i]);
	free(creds);
	free(y);
	free(stall);
	free(cfg);
	buf_release(&out);
	h_cleanup(&d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(gate_never_passes_on_aggregates_that_lag_the_fleet),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
