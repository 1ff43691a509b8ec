/*
 * test_upgrade.c - today's otacd opens the state directories every earlier
 * schema version's otacd wrote (tests/fixtures/schema/vN.tar.gz, made by
 * that otacd itself: make.sh there says how) and works on them: the old
 * runs and their logs are listed, a new run passes, the old release still
 * verifies and a new one is signed, a device the old fleet.db knew checks
 * in.  A database of a newer schema is refused (a downgrade) and left as
 * it was.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "../common/util.h"
#include "../orchestrator/store.h"
#include "devharness.h"
#include "harness.h"

static const int versions[] = { 1, 2, 3, 4, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18 };

static const char hello[] = "name: hello\nstages:\n  - name: build\n"
			    "    steps: [ { run: \"echo hello from the upgraded otacd\" } ]\n";

static const char fw[] = "name: fw\nstages:\n  - name: build\n"
			 "    steps: [ { run: \"printf fw-1.0.1 > app.bin\" } ]\n"
			 "    artifacts: [ { path: app.bin, name: app.bin, type: application, hardware: an385 } ]\n"
			 "  - { name: release, kind: release, needs: [build], version: \"1.0.1\", security_counter: 1, key: k1 }\n";

/* otacd started on fixture vN, unpacked into d's directory. */
static void start_on_fixture(struct daemon *d, int v)
{
	const char *const args[] = { "--local-agents", "1", NULL };
	struct buf out = BUF_INIT;
	char *fx = dh_src_path("tests/fixtures/schema");

	h_init(d, NULL);
	assert_int_equal(h_sh(&out, "tar -xzf %s/v%d.tar.gz -C %s", fx, v, d->dir), 0);
	if (v >= 4) {
		char *cfg = xasprintf("keys:\n  k1: { spec: %s/k1.pem }\n", d->dir);
		d->config = xasprintf("%s/config.yml", d->dir);
		assert_int_equal(ota_write_file_atomic(d->config, cfg, strlen(cfg), 0600), 0);
		free(cfg);
	}
	assert_int_equal(h_start(d, args), 0);
	buf_release(&out);
	free(fx);
}

static char *job_log(struct daemon *d, int64_t job)
{
	struct buf out = BUF_INIT;
	h_sh(&out, "curl -s -H 'Authorization: Bearer %s' %s/api/v1/jobs/%lld/log", d->token, d->url, (long long)job);
	return buf_detach(&out);
}

/* The key scenarios on one fixture. */
static void upgrade_from(int v)
{
	struct daemon d;
	struct buf out = BUF_INIT;
	char *otactl = h_bin("otactl"), *log;
	json_t *runs = NULL;
	int64_t old_runs = v >= 4 ? 2 : 1, run;

	print_message("schema version %d\n", v);
	start_on_fixture(&d, v);
	assert_int_equal(h_sql_int(&d, "SELECT MAX(version) FROM schema_migrations"), store_schema_latest());

	/* the old runs are listed, their logs read */
	assert_int_equal(h_get(&d, "/api/v1/runs", &runs), 200);
	assert_int_equal((int64_t)json_array_size(json_is_array(runs) ? runs : json_object_get(runs, "runs")), old_runs);
	json_decref(runs);
	assert_int_equal(h_sh(&out, "%s --url %s --token %s runs", otactl, d.url, d.token), 0);
	assert_non_null(strstr(buf_cstr(&out), "hello"));
	log = job_log(&d, 1);
	assert_non_null(strstr(log, "hello from an old otacd"));
	free(log);

	/* a new run */
	run = h_trigger(&d, hello);
	assert_string_equal(h_wait_run(&d, run, 60000), "passed");

	if (v >= 4) {
		/* the old release verifies; a new one is signed and verifies */
		int64_t rel;
		assert_int_equal(h_sh(&out, "%s --url %s --token %s verify 1", otactl, d.url, d.token), 0);
		assert_non_null(strstr(buf_cstr(&out), "release verifies"));
		run = h_trigger(&d, fw);
		assert_string_equal(h_wait_run(&d, run, 60000), "passed");
		rel = dh_release_of(&d, run);
		assert_true(rel > 1);
		assert_int_equal(h_sh(&out, "%s --url %s --token %s verify %lld --key %s/k1.pub", otactl, d.url, d.token,
				      (long long)rel, d.dir),
				 0);
		assert_non_null(strstr(buf_cstr(&out), "release verifies"));
	}
	if (v >= 10) {
		/* fleet.db's legacy layout read: a registered device checks in */
		struct buf creds = BUF_INIT;
		char *path = xasprintf("%s/creds.json", d.dir);
		json_t *c, *ans = NULL;
		assert_int_equal(ota_read_file(&creds, path, 1 << 16), 0);
		c = json_loadb(creds.ptr, creds.len, 0, NULL);
		assert_int_equal(h_dev_post(&d, "/device/v1/checkin",
					    json_string_value(json_array_get(json_object_get(c, "credentials"), 0)),
					    json_pack("{ss ss ss ss ss si ss}", "device", "old-0000", "product", "fw", "hardware",
						      "an385", "bootloader", "1.2.0", "version", "1.0.0", "security_counter", 0,
						      "slot", "confirmed"),
					    &ans),
				 200);
		json_decref(ans);
		json_decref(c);
		buf_release(&creds);
		free(path);
	}
	if (v >= 7) {
		/* fleet.db of the legacy layout was moved to the snapshot layout (fleet_store.c) */
		h_kill(&d, SIGTERM);
		assert_int_equal(h_sh(&out, "sqlite3 %s/state/fleet.db \"SELECT COUNT(*) FROM sqlite_master WHERE name = 'dev_snap'\"",
				      d.dir),
				 0);
		assert_string_equal(buf_cstr(&out), "1\n");
	}
	buf_release(&out);
	free(otactl);
	h_cleanup(&d);
}

static void databases_of_every_earlier_schema_open_and_work(void **state)
{
	const char *only = getenv("UPGRADE_FROM");
	(void)state;
	for (size_t i = 0; i < OTA_ARRAY_SIZE(versions); i++)
		if (!only || atoi(only) == versions[i])
			upgrade_from(versions[i]);
}

static void fixtures_cover_every_earlier_schema_version(void **state)
{
	/* a new migration needs its fixture: v(N-1) made by the otacd before it */
	int latest_fixture = versions[OTA_ARRAY_SIZE(versions) - 1];
	(void)state;
	assert_int_equal(latest_fixture, store_schema_latest() - 1);
}

static void newer_schema_is_refused_and_left_untouched(void **state)
{
	struct daemon d;
	struct buf out = BUF_INIT, before = BUF_INIT, after = BUF_INIT;
	char *otacd = h_bin("otacd"), *db;
	(void)state;

	start_on_fixture(&d, 12); /* upgraded to today's schema */
	h_kill(&d, SIGTERM);
	db = xasprintf("%s/state/otacd.db", d.dir);
	assert_int_equal(h_sh(&out, "sqlite3 %s \"INSERT INTO schema_migrations(version, applied_at) VALUES (%d, 0)\"", db,
			      store_schema_latest() + 1),
			 0);
	assert_int_equal(h_sh(&before, "sha256sum < %s", db), 0);
	assert_int_not_equal(h_sh(&out, "%s --state-dir %s/state --listen 127.0.0.1:0 --device-listen off --local-agents 0 2>&1",
				  otacd, d.dir),
			     0);
	assert_non_null(strstr(buf_cstr(&out), "newer than this otacd"));
	assert_non_null(strstr(buf_cstr(&out), "downgrade is refused"));
	assert_int_equal(h_sh(&after, "sha256sum < %s", db), 0);
	assert_string_equal(buf_cstr(&after), buf_cstr(&before));
	assert_int_equal(h_sql_int(&d, "SELECT MAX(version) FROM schema_migrations"), store_schema_latest() + 1);

	buf_release(&out);
	buf_release(&before);
	buf_release(&after);
	free(db);
	free(otacd);
	h_cleanup(&d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(fixtures_cover_every_earlier_schema_version),
		cmocka_unit_test(databases_of_every_earlier_schema_open_and_work),
		cmocka_unit_test(newer_schema_is_refused_and_left_untouched),
	};
	cmocka_set_test_filter(getenv("X_ONLY"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
