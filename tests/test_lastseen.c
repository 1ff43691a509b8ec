/*
 * test_lastseen.c - how stale a device's last_seen may be after a crash
 * (issue 19, part 5: writes proportional to what changed).
 *
 * A check-in that changes nothing but last_seen is answered at once and
 * writes no device row: the device's next row (a report, a change) or the
 * next snapshot carries it, and a snapshot starts once such a last_seen is
 * one poll interval old (orchestrator/fleet/fleet_store.c).  So:
 *
 *   - last_seen-only check-ins write nothing to dev_log, and a clean close
 *     writes every last_seen they moved: reopened, each device's last_seen
 *     is its last check-in's `now`;
 *   - the real otacd SIGKILLed after check-ins that went on for three poll
 *     intervals: every acknowledged registration and version change is
 *     there, and each device's last_seen is within one poll interval (plus
 *     the time a snapshot takes to be written, a round) of its last
 *     check-in — the bound docs/update-server.md states;
 *   - the real otacd stopped cleanly (SIGTERM) while a snapshot is being
 *     written, after last_seen-only check-ins that only that snapshot
 *     carries: the last round finishes the snapshot, so after the restart
 *     every device's last_seen is its last check-in's `now`.
 *
 * And a new fleet.db has 1 KB pages (fewer bytes per commit).
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include <sqlite3.h>

#include "../common/util.h"
#include "../orchestrator/clock.h"
#include "../orchestrator/fleet/fleet.h"
#include "../orchestrator/fleet/fleet_int.h"
#include "harness.h"

#define POLL_MS 2000
/* a check-in's last_seen is in a snapshot at most a poll interval, the
 * writer's idle round (250 ms) and its commit later; the check-ins below
 * come every 250 ms; the rest is room for a loaded machine */
#define SLACK_MS 1500

static int64_t db_int(const char *db, const char *sql)
{
	sqlite3 *h = NULL;
	sqlite3_stmt *st = NULL;
	int64_t v = -1;
	assert_int_equal(sqlite3_open_v2(db, &h, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
	if (sqlite3_prepare_v2(h, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
		v = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	sqlite3_close(h);
	return v;
}

static struct fleet *open_fleet(const char *db, int64_t poll_ms)
{
	struct fleet_config cfg = { .db_path = db, .poll_ms = poll_ms };
	struct fleet *f = NULL;
	assert_int_equal(fleet_open(&f, &cfg), 0);
	return f;
}

static struct device *find(struct fleet *f, const char *id)
{
	uint64_t h = fleet_fnv(id, strlen(id), FLEET_FNV_BASIS);
	return fleet_device_find_locked(fleet_shard(f, h), id, h);
}

static json_t *ckbody(const char *id, const char *version)
{
	return json_pack("{ss ss ss ss ss si}", "device", id, "product", "fw", "hardware", "hw", "bootloader", "1.0.0",
			 "version", version, "security_counter", 0);
}

/* ---- in process: nothing logged, a clean close writes it ----------------------- */

#define NDEV 50

static void last_seen_only_checkins_log_nothing_and_a_clean_close_keeps_them(void **state)
{
	char *dir = h_tmpdir(), *db = xasprintf("%s/fleet.db", dir);
	int64_t seen[NDEV], rows, bytes;
	struct fleet *f;

	(void)state;
	f = open_fleet(db, 6 * 3600 * 1000LL);
	for (int round = 0; round < 2; round++) {
		if (round) {
			/* the registrations are committed (answered once durable) */
			rows = db_int(db, "SELECT count(*) FROM dev_log");
			bytes = db_int(db, "SELECT sum(length(rows)) FROM dev_log");
			assert_true(rows >= 1);
			h_msleep(20);
		}
		for (int i = 0; i < NDEV; i++) {
			char id[32];
			json_t *ans = NULL, *body;
			snprintf(id, sizeof(id), "ls-%04d", i);
			body = ckbody(id, "1.0.0");
			assert_int_equal(fleet_checkin(f, body, &ans), 0);
			seen[i] = json_integer_value(json_object_get(ans, "now"));
			assert_true(seen[i] > 0);
			json_decref(body);
			json_decref(ans);
		}
	}
	/* idle rounds go by: the second check-ins wrote no row, no snapshot */
	h_msleep(800);
	assert_int_equal(db_int(db, "SELECT count(*) FROM dev_log"), rows);
	assert_int_equal(db_int(db, "SELECT sum(length(rows)) FROM dev_log"), bytes);
	assert_int_equal(db_int(db, "SELECT count(*) FROM dev_snap"), 0);
	fleet_close(f);
	assert_true(db_int(db, "SELECT count(*) FROM dev_log") > rows);
	/* a new fleet.db has 1 KB pages: a commit's few rewritten pages cost
	 * 1 KB each in the WAL (fleet_store.c) */
	assert_int_equal(db_int(db, "PRAGMA page_size"), 1024);
	f = open_fleet(db, 6 * 3600 * 1000LL);
	for (int i = 0; i < NDEV; i++) {
		char id[32];
		struct device *d;
		snprintf(id, sizeof(id), "ls-%04d", i);
		assert_non_null(d = find(f, id));
		assert_int_equal(d->last_seen, seen[i]);
	}
	fleet_close(f);
	free(db);
	free(dir);
}

/* ---- the real otacd, killed ---------------------------------------------------- */

#define KDEV 20

static void after_a_kill_last_seen_is_within_one_poll_interval(void **state)
{
	struct daemon d;
	char **c, *db;
	int64_t first[KDEV], last[KDEV], t0, t_end;
	struct fleet *f;
	int k = 0, moved_rounds = 0;

	(void)state;
	h_init(&d, "poll_interval: 2s\n");
	d.device_listen = h_free_listen();
	assert_int_equal(h_start(&d, NULL), 0);
	db = xasprintf("%s/state/fleet.db", d.dir);
	c = h_register_devices(&d, "lk", KDEV);
	t0 = clock_mono_ms();
	/* check-ins every 250 ms for three poll intervals; half way, the
	 * first five devices move to 1.0.1 (a change: answered once durable).
	 * Half way in time, not in rounds: under load a round takes longer
	 * (at load ~50 fewer than 12 rounds fitted, and no device moved) */
	do {
		int move = clock_mono_ms() - t0 >= (3 * POLL_MS + 500) / 2;
		moved_rounds += move;
		for (int i = 0; i < KDEV; i++) {
			char id[32];
			json_t *ans = NULL;
			snprintf(id, sizeof(id), "lk-%04d", i);
			assert_int_equal(h_dev_post(&d, "/device/v1/checkin", c[i],
						  ckbody(id, i < 5 && move ? "1.0.1" : "1.0.0"), &ans),
					 200);
			last[i] = json_integer_value(json_object_get(ans, "now"));
			if (k == 0)
				first[i] = last[i];
			json_decref(ans);
		}
		k++;
		h_msleep(250);
	} while (clock_mono_ms() - t0 < 3 * POLL_MS + 500 || moved_rounds < 2);
	h_kill(&d, SIGKILL);

	f = open_fleet(db, POLL_MS);
	t_end = 0;
	for (int i = 0; i < KDEV; i++) {
		char id[32];
		struct device *dev;
		snprintf(id, sizeof(id), "lk-%04d", i);
		assert_non_null(dev = find(f, id));   /* registered: acknowledged */
		assert_string_equal(dev->version, i < 5 ? "1.0.1" : "1.0.0");   /* acknowledged change */
		if (dev->last_seen < last[i] - POLL_MS - SLACK_MS || dev->last_seen > last[i])
			fail_msg("%s: last_seen %lld after the kill, last check-in at %lld (bound %d ms + %d ms)", id,
				 (long long)dev->last_seen, (long long)last[i], POLL_MS, SLACK_MS);
		/* the test can fail: the first check-in is older than the bound */
		assert_true(first[i] < last[i] - POLL_MS - SLACK_MS);
		if (last[i] - dev->last_seen > t_end)
			t_end = last[i] - dev->last_seen;
	}
	print_message("%d check-in rounds; last_seen at most %lld ms behind after the kill (bound %d + %d)\n", k,
		      (long long)t_end, POLL_MS, SLACK_MS);
	fleet_close(f);
	for (int i = 0; i < KDEV; i++)
		free(c[i]);
	free(c);
	free(db);
	h_cleanup(&d);
}

/* ---- the real otacd, stopped cleanly in the middle of a snapshot ----------------- */

#define SDEV 256

/* Shards of the snapshot being built, written so far (0: none is). */
static int64_t partial_snapshot_shards(const char *db)
{
	return db_int(db, "SELECT count(*) FROM dev_snap WHERE gen >"
			  " coalesce((SELECT value FROM fleet_meta WHERE key = 'snap_gen'), 0)");
}

static void a_clean_close_during_a_snapshot_keeps_last_seen(void **state)
{
	struct daemon d;
	char **c, *db;
	int64_t first[SDEV], last[SDEV], shards = 0;
	struct fleet *f;

	(void)state;
	/* a round captures one shard that has devices (and the empty ones
	 * before it): the snapshot spans several idle rounds (one every
	 * 250 ms), seconds the SIGTERM below lands in */
	setenv("OTACD_FLEET_SNAPSHOT_ROUND", "1", 1);
	h_init(&d, "poll_interval: 2s\n");
	d.device_listen = h_free_listen();
	assert_int_equal(h_start(&d, NULL), 0);
	unsetenv("OTACD_FLEET_SNAPSHOT_ROUND");
	db = xasprintf("%s/state/fleet.db", d.dir);
	c = h_register_devices(&d, "sc", SDEV);
	/* the first check-ins are new devices (rows logged); the second ones
	 * move only last_seen: no row, the next snapshot carries them */
	for (int pass = 0; pass < 2; pass++) {
		for (int i = 0; i < SDEV; i++) {
			char id[32];
			json_t *ans = NULL;
			snprintf(id, sizeof(id), "sc-%04d", i);
			assert_int_equal(h_dev_post(&d, "/device/v1/checkin", c[i], ckbody(id, "1.0.0"), &ans), 200);
			*(pass ? &last[i] : &first[i]) = json_integer_value(json_object_get(ans, "now"));
			json_decref(ans);
		}
		if (!pass)
			h_msleep(50);
	}
	/* a poll interval later the snapshot starts; stop otacd once it has
	 * written some shards and not all */
	for (int waited = 0; waited < 20000 && shards == 0; waited += 20) {
		h_msleep(20);
		shards = partial_snapshot_shards(db);
	}
	h_kill(&d, SIGTERM);
	print_message("SIGTERM with %lld of 64 shards of the snapshot written\n", (long long)shards);
	assert_true(shards >= 1 && shards < FLEET_NSHARDS);

	f = open_fleet(db, POLL_MS);
	for (int i = 0; i < SDEV; i++) {
		char id[32];
		struct device *dev;
		snprintf(id, sizeof(id), "sc-%04d", i);
		assert_non_null(dev = find(f, id));
		/* the test can fail: without the second check-in it is older */
		assert_true(first[i] < last[i]);
		if (dev->last_seen != last[i])
			fail_msg("%s: last_seen %lld after a clean stop, last check-in at %lld (first at %lld)", id,
				 (long long)dev->last_seen, (long long)last[i], (long long)first[i]);
	}
	fleet_close(f);
	/* the close finished the snapshot rather than dropping it */
	assert_int_equal(db_int(db, "SELECT value FROM fleet_meta WHERE key = 'snap_gen'"), 1);
	assert_int_equal(partial_snapshot_shards(db), 0);
	for (int i = 0; i < SDEV; i++)
		free(c[i]);
	free(c);
	free(db);
	h_cleanup(&d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(last_seen_only_checkins_log_nothing_and_a_clean_close_keeps_them),
		cmocka_unit_test(after_a_kill_last_seen_is_within_one_poll_interval),
		cmocka_unit_test(a_clean_close_during_a_snapshot_keeps_last_seen),
	};
	cmocka_set_test_filter(getenv("X_ONLY"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
