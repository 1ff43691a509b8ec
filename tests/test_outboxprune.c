/*
 * test_outboxprune.c - the retention pruner's outbox phase (issue 18,
 * orchestrator/retention.c batch_outbox): the notification outbox's
 * finished rows go by age (real time, done_at) and by count, pending rows
 * stay, a batch deletes at most batch x 20 rows; on SQLite and on a real
 * PostgreSQL cluster (the phase's SQL is storage-layer SQL).  And a whole
 * pass, from its first phase, reaches the outbox on both; the
 * configuration's bounds are checked.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../common/util.h"
#include "../orchestrator/clock.h"
#include "../orchestrator/config.h"
#include "../orchestrator/db/db.h"
#include "../orchestrator/logstore.h"
#include "../orchestrator/retention.h"
#include "../orchestrator/store.h"
#include "harness.h"
#include "dbconv.h"

#define DAY_MS (86400LL * 1000)
#define NOW_REAL (1796000000000LL) /* the pass's real clock, fixed */

static int g_seq; /* numbers deliveries and config files */

/* One outbox row; done_at 0: none (pending). */
static void add_row(struct store *s, const char *state, int64_t created, int64_t done_at)
{
	struct db_stmt *st = store_q(s, "INSERT INTO outbox(delivery, target, event, payload, created_at, state,"
					" next_at, done_at) VALUES (?,?,?,?,?,?,?,?)");
	char delivery[40];

	snprintf(delivery, sizeof(delivery), "d-%d", ++g_seq);
	assert_non_null(st);
	db_bind_text(st, 1, delivery);
	db_bind_text(st, 2, "hook");
	db_bind_text(st, 3, "run.finished");
	db_bind_text(st, 4, "{\"event\":\"run.finished\"}");
	db_bind_int64(st, 5, created);
	db_bind_text(st, 6, state);
	db_bind_int64(st, 7, created);
	if (done_at)
		db_bind_int64(st, 8, done_at);
	else
		db_bind_null(st, 8);
	if (db_run(st) < 0)
		fail_msg("insert: %s", ota_error_last());
}

/* The outbox phase alone, batch by batch in transactions: batches run. */
static int prune_outbox(struct store *s, const struct retention_cfg *cfg)
{
	struct retention_pass p;
	struct retention_out out = { 0 };
	int rc, batches = 0;

	retention_pass_start(&p, 0);
	p.phase = RET_OUTBOX;
	p.now_real = NOW_REAL;
	do {
		assert_int_equal(store_begin(s), 0);
		rc = retention_batch(s, cfg, &p, &out);
		if (rc < 0)
			fail_msg("outbox batch: %s", ota_error_last());
		assert_int_equal(store_commit(s), 0);
		batches++;
	} while (rc == 1);
	retention_out_release(&out);
	return batches;
}

/* Finished rows older than outbox_max_age go, whatever their state;
 * newer ones and every pending row (however old) stay. */
static void finished_rows_past_the_age_go_pending_rows_stay(void **state)
{
	struct store *s = dbconv_case_store(state);
	struct retention_cfg cfg = { .batch = 50, .outbox_max_age_ms = 7 * DAY_MS };
	static const char *const finished[] = { "sent", "refused", "expired" };

	for (int i = 0; i < 30; i++)
		add_row(s, finished[i % 3], NOW_REAL - 40 * DAY_MS, NOW_REAL - 8 * DAY_MS);
	for (int i = 0; i < 5; i++)
		add_row(s, "pending", NOW_REAL - 40 * DAY_MS, 0);
	for (int i = 0; i < 10; i++) /* created long ago, delivered yesterday */
		add_row(s, "sent", NOW_REAL - 40 * DAY_MS, NOW_REAL - DAY_MS);
	assert_int_equal(prune_outbox(s, &cfg), 1);
	assert_int_equal(dbconv_count(s, "SELECT COUNT(*) FROM outbox"), 15);
	assert_int_equal(dbconv_count(s, "SELECT COUNT(*) FROM outbox WHERE state = 'pending'"), 5);
	assert_int_equal(dbconv_count(s, "SELECT COUNT(*) FROM outbox WHERE done_at < 1795395200000"), 0);
	/* the same pass again finds nothing */
	assert_int_equal(prune_outbox(s, &cfg), 1);
	assert_int_equal(dbconv_count(s, "SELECT COUNT(*) FROM outbox"), 15);
	store_close(s);
}

/* outbox_keep keeps the newest N finished rows whatever their age; the
 * pending rows between them neither count nor go. */
static void outbox_keep_bounds_the_finished_rows(void **state)
{
	struct store *s = dbconv_case_store(state);
	struct retention_cfg cfg = { .batch = 50, .outbox_keep = 40 };
	int64_t newest_kept;

	for (int i = 0; i < 100; i++) {
		add_row(s, "sent", NOW_REAL - DAY_MS, NOW_REAL - DAY_MS + i);
		if (i % 25 == 0)
			add_row(s, "pending", NOW_REAL - DAY_MS, 0);
	}
	newest_kept = dbconv_count(s, "SELECT MAX(id) FROM outbox WHERE state = 'sent'");
	assert_int_equal(prune_outbox(s, &cfg), 1);
	assert_int_equal(dbconv_count(s, "SELECT COUNT(*) FROM outbox WHERE state = 'sent'"), 40);
	assert_int_equal(dbconv_count(s, "SELECT COUNT(*) FROM outbox WHERE state = 'pending'"), 4);
	assert_int_equal(dbconv_count(s, "SELECT MAX(id) FROM outbox WHERE state = 'sent'"), newest_kept);
	/* the 40 kept are the newest: none older than the 60th */
	assert_int_equal(dbconv_count(s, "SELECT COUNT(*) FROM outbox WHERE state = 'sent' AND done_at < 1795913600060"), 0);
	store_close(s);
}

/* A batch deletes at most batch x 20 rows, so the pruner holds the writer
 * briefly; the pass goes on until none are left. */
static void a_batch_deletes_at_most_batch_times_20_rows(void **state)
{
	struct store *s = dbconv_case_store(state);
	struct retention_cfg cfg = { .batch = 2, .outbox_max_age_ms = DAY_MS };
	struct retention_pass p;
	struct retention_out out = { 0 };

	for (int i = 0; i < 100; i++)
		add_row(s, "sent", NOW_REAL - 3 * DAY_MS, NOW_REAL - 2 * DAY_MS);
	retention_pass_start(&p, 0);
	p.phase = RET_OUTBOX;
	p.now_real = NOW_REAL;
	assert_int_equal(store_begin(s), 0);
	assert_int_equal(retention_batch(s, &cfg, &p, &out), 1); /* more to do */
	assert_int_equal(store_commit(s), 0);
	assert_int_equal(dbconv_count(s, "SELECT COUNT(*) FROM outbox"), 60);
	assert_int_equal(p.outbox_deleted, 40);
	retention_out_release(&out);
	assert_int_equal(prune_outbox(s, &cfg), 2); /* 40, then the last 20 (fewer: done) */
	assert_int_equal(dbconv_count(s, "SELECT COUNT(*) FROM outbox"), 0);
	store_close(s);
}

/* With every outbox bound off nothing goes; a pass from its first phase
 * (no runs at all) reaches the outbox with the default bounds. */
static void a_whole_pass_reaches_the_outbox_and_off_keeps_everything(void **state)
{
	struct store *s = dbconv_case_store(state);
	struct retention_cfg off = { .batch = 50 };
	struct retention_cfg dflt = { .batch = RETENTION_DEFAULT_BATCH,
				      .outbox_max_age_ms = RETENTION_DEFAULT_OUTBOX_MAX_AGE_MS,
				      .outbox_keep = RETENTION_DEFAULT_OUTBOX_KEEP };
	struct retention_pass p;
	struct retention_out out = { 0 };
	int64_t now = clock_real_ms();
	int rc;

	assert_false(retention_enabled(&off));
	assert_true(retention_enabled(&dflt));
	for (int i = 0; i < 20; i++)
		add_row(s, "sent", now - 30 * DAY_MS, now - 20 * DAY_MS);
	for (int i = 0; i < 5; i++)
		add_row(s, "sent", now - DAY_MS, now - DAY_MS);
	assert_int_equal(prune_outbox(s, &off), 1);
	assert_int_equal(dbconv_count(s, "SELECT COUNT(*) FROM outbox"), 25);
	/* every phase runs on both backends (retention.c is on the storage layer) */
	assert_int_equal(logstore_init(dbconv_tmpdir(), 0), 0);
	retention_pass_start(&p, now);
	do {
		assert_int_equal(store_begin(s), 0);
		rc = retention_batch(s, &dflt, &p, &out);
		if (rc < 0)
			fail_msg("retention batch (phase %d): %s", (int)p.phase, ota_error_last());
		assert_int_equal(store_commit(s), 0);
		retention_after_commit(&out);
	} while (rc == 1);
	retention_out_release(&out);
	assert_int_equal(p.outbox_deleted, 20);
	assert_int_equal(dbconv_count(s, "SELECT COUNT(*) FROM outbox"), 5);
	store_close(s);
}

static void assert_config_refused(const char *yaml, const char *words)
{
	struct otacd_config c;
	char *path = xasprintf("%s/c%d.yml", dbconv_tmpdir(), ++g_seq);
	assert_int_equal(ota_write_file_atomic(path, yaml, strlen(yaml), 0600), 0);
	config_defaults(&c);
	assert_int_equal(config_load(&c, path), OTA_EINVAL);
	if (!strstr(ota_error_last(), words))
		fail_msg("'%s': message '%s' lacks '%s'", yaml, ota_error_last(), words);
	config_release(&c);
	free(path);
}

static void outbox_bounds_in_the_config_are_checked(void **state)
{
	struct otacd_config c;
	char *path = xasprintf("%s/ok.yml", dbconv_tmpdir());
	const char *ok = "retention:\n  outbox_max_age: 30d\n  outbox_keep: off\n";
	(void)state;

	assert_config_refused("retention: { outbox_max_age: 90s }\n", "retention.outbox_max_age' must be off or a duration");
	assert_config_refused("retention: { outbox_keep: 0 }\n", "retention.outbox_keep");
	assert_config_refused("retention: { outbox_kept: 5 }\n", "unknown key 'outbox_kept' in retention");
	config_defaults(&c);
	assert_int_equal(c.retention.outbox_max_age_ms, 7 * DAY_MS);
	assert_int_equal(c.retention.outbox_keep, 10000);
	assert_int_equal(ota_write_file_atomic(path, ok, strlen(ok), 0600), 0);
	assert_int_equal(config_load(&c, path), 0);
	assert_int_equal(c.retention.outbox_max_age_ms, 30 * DAY_MS);
	assert_int_equal(c.retention.outbox_keep, 0);
	assert_int_equal(c.retention.runs_keep, RETENTION_DEFAULT_RUNS_KEEP); /* untouched */
	config_release(&c);
	free(path);
}

#define BOTH(fn)                                                                   \
	cmocka_unit_test_prestate(fn, (void *)&dbconv_sqlite),                         \
	cmocka_unit_test_prestate(fn, (void *)&dbconv_postgres)

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(outbox_bounds_in_the_config_are_checked),
		BOTH(finished_rows_past_the_age_go_pending_rows_stay),
		BOTH(outbox_keep_bounds_the_finished_rows),
		BOTH(a_batch_deletes_at_most_batch_times_20_rows),
		BOTH(a_whole_pass_reaches_the_outbox_and_off_keeps_everything),
	};
	int rc;

	dbconv_start("test_outboxprune");
	rc = cmocka_run_group_tests(tests, NULL, NULL);
	dbconv_finish();
	return rc;
}
