/*
 * test_fleetstore.c - fleet.db's device layout (issue 19, part 5): device
 * rows are appended to dev_log and compacted into snapshots written shard
 * by shard (orchestrator/fleet/fleet_store.c).  With snapshots forced as
 * often as possible (OTACD_FLEET_COMPACT_BYTES=1: one starts whenever the
 * log is not empty; OTACD_FLEET_SNAPSHOT_ROUND=1: a round captures one
 * shard, so a snapshot spans 64 commits):
 *
 *   - every device (product, hardware, bootloader, version, counter,
 *     last_seen, tags, per-version flags) and every aggregate is the same
 *     after close and reopen, many snapshots later, including reopens in
 *     the middle of a snapshot;
 *   - the real otacd SIGKILLed again and again while snapshots are being
 *     written loses no acknowledged report: each device's flags and the
 *     aggregates are exactly what was acknowledged;
 *   - a fleet.db written by the legacy layout (one text row per device in
 *     `devices` and `device_log`, made here with sqlite3) opens with every
 *     device and flag, and is migrated: the legacy tables are gone;
 *   - the writer's round pacing (fleet_round_due): a round at most every
 *     pace unless 64 batches or 4,096 reports wait; with a pace no test
 *     outlives, 63 waiting check-ins start no round and the 64th starts
 *     one at once, and 64 threads of changing check-ins commit in exactly
 *     one round per wave, no more than the same load unpaced
 *     (OTACD_FLEET_ROUND_MS=0); 64 check-ins arriving behind a commit (held
 *     by OTACD_TEST_FLEET_STALL_FILE) take 2 commits unpaced and 1 paced;
 *     counted by fleet_store_stats and /metrics.
 */
#include <math.h>
#include <pthread.h>
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

#include "../common/httpc.h"
#include "../common/util.h"
#include "../orchestrator/fleet/fleet.h"
#include "../orchestrator/fleet/fleet_int.h"
#include "harness.h"

/* ---- helpers --------------------------------------------------------------- */

static char *tmpdir_new(void)
{
	char tmpl[] = "/tmp/test_fleetstore.XXXXXX";
	assert_non_null(mkdtemp(tmpl));
	return xstrdup(tmpl);
}

static void tmpdir_remove(char *dir)
{
	char *cmd = xasprintf("rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "cannot remove %s\n", dir);
	free(cmd);
	free(dir);
}

static void force_snapshots(void)
{
	setenv("OTACD_FLEET_COMPACT_BYTES", "1", 1);
	setenv("OTACD_FLEET_SNAPSHOT_ROUND", "1", 1);
}

static void default_snapshots(void)
{
	unsetenv("OTACD_FLEET_COMPACT_BYTES");
	unsetenv("OTACD_FLEET_SNAPSHOT_ROUND");
}

static struct fleet *open_fleet(const char *db)
{
	struct fleet_config cfg = { .db_path = db, .poll_ms = 6 * 3600 * 1000LL };
	struct fleet *f = NULL;
	assert_int_equal(fleet_open(&f, &cfg), 0);
	return f;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every device of f as sorted text lines: all it stores (flags per version,
 * sorted by version so their slot order does not matter). */
static char *dump_devices(struct fleet *f, size_t *ndev)
{
	char **lines = NULL;
	size_t n = 0, cap = 0;
	struct buf out = BUF_INIT;

	for (int k = 0; k < FLEET_NSHARDS; k++) {
		struct shard *s = &f->shards[k];
		pthread_mutex_lock(&s->mu);
		for (size_t i = 0; i < s->nb; i++)
			for (struct device *d = s->b[i]; d; d = d->next) {
				struct buf l = BUF_INIT;
				char *vf[FLEET_NVFLAGS];
				int nvf = 0;
				buf_printf(&l, "%s %s %s %s %s %lld %lld tags", d->id, d->product, d->hardware, d->bootloader,
					   d->version, (long long)d->counter, (long long)d->last_seen);
				for (size_t t = 0; t < d->ntags; t++)
					buf_printf(&l, " %s", d->tags[t]);
				for (int v = 0; v < FLEET_NVFLAGS; v++)
					if (d->vf[v].version)
						vf[nvf++] = xasprintf("%s=%u", d->vf[v].version, (unsigned)d->vf[v].flags);
				qsort(vf, (size_t)nvf, sizeof(vf[0]), cmp_str);
				buf_puts(&l, " flags");
				for (int v = 0; v < nvf; v++) {
					buf_printf(&l, " %s", vf[v]);
					free(vf[v]);
				}
				if (n == cap) {
					cap = cap ? 2 * cap : 1024;
					lines = xrealloc(lines, cap * sizeof(*lines));
				}
				lines[n++] = buf_detach(&l);
			}
		pthread_mutex_unlock(&s->mu);
	}
	qsort(lines, n, sizeof(*lines), cmp_str);
	for (size_t i = 0; i < n; i++) {
		buf_printf(&out, "%s\n", lines[i]);
		free(lines[i]);
	}
	free(lines);
	*ndev = n;
	return buf_detach(&out);
}

static const char *const VERSIONS[] = { "1.0.0", "1.1.0", "1.2.0" };
static const char *const COHORTS[] = { "*", "region=eu", "region=us", "tier=beta" };

/* The committed aggregates of every version and cohort above, as text. */
static char *dump_aggs(struct fleet *f)
{
	struct buf out = BUF_INIT;
	for (size_t v = 0; v < 3; v++)
		for (size_t c = 0; c < 4; c++) {
			struct fleet_agg a;
			memset(&a, 0, sizeof(a));
			fleet_aggregate(f, "fw", VERSIONS[v], COHORTS[c], &a);
			buf_printf(&out, "%s %s: %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %.6f\n", VERSIONS[v],
				   COHORTS[c], (long long)a.devices, (long long)a.offered, (long long)a.downloads,
				   (long long)a.installs, (long long)a.boot_ok, (long long)a.boot_fail, (long long)a.reverts,
				   (long long)a.reporting, (long long)a.crashed, (long long)a.crashes, a.device_hours);
		}
	return buf_detach(&out);
}

static void checkin(struct fleet *f, int i, const char *version, const char *region, int counter)
{
	char id[32];
	json_t *answer = NULL, *body;
	snprintf(id, sizeof(id), "st-%05d", i);
	body = json_pack("{ss ss ss ss ss si s{ss ss}}", "device", id, "product", "fw", "hardware",
			 i % 2 ? "rev-b" : "rev-a", "bootloader", "1.0.0", "version", version, "security_counter", counter,
			 "tags", "region", region, "tier", i % 7 ? "ga" : "beta");
	assert_int_equal(fleet_checkin(f, body, &answer), 0);
	json_decref(body);
	json_decref(answer);
}

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

/* Close and reopen: the same devices, flags and aggregates. */
static struct fleet *reopen_same(struct fleet *f, const char *db)
{
	size_t n0, n1;
	char *before, *after, *aggs0, *aggs1;

	before = dump_devices(f, &n0);
	aggs0 = dump_aggs(f);
	fleet_close(f);
	f = open_fleet(db);
	after = dump_devices(f, &n1);
	aggs1 = dump_aggs(f);
	assert_int_equal(n0, n1);
	assert_string_equal(before, after);
	assert_string_equal(aggs0, aggs1);
	free(before);
	free(after);
	free(aggs0);
	free(aggs1);
	return f;
}

/* ---- snapshots ---------------------------------------------------------------- */

static void snapshots_keep_every_device_and_flag(void **state)
{
	static const char *const events[] = { "download", "install", "boot_ok", "boot_fail", "revert", "heartbeat" };
	char *dir = tmpdir_new(), *db = xasprintf("%s/fleet.db", dir);
	struct fleet *f;
	int64_t snapshots = 0, reopened_mid = 0;
	unsigned seed = 7;

	(void)state;
	force_snapshots();
	f = open_fleet(db);
	for (int i = 0; i < 1500; i++)
		checkin(f, i, "1.0.0", i % 3 ? "eu" : "us", 1);
	for (int phase = 0; phase < 6; phase++) {
		/* reports: every event about 1.1.0, some with crashes and uptime */
		for (int b = 0; b < 8; b++) {
			json_t *list = json_array(), *body;
			int accepted = 0;
			for (int k = 0; k < 100; k++) {
				char id[32];
				json_t *r;
				snprintf(id, sizeof(id), "st-%05d", rand_r(&seed) % 1500);
				r = json_pack("{ss ss ss sf}", "device", id, "version", VERSIONS[1 + phase % 2], "event",
					      events[rand_r(&seed) % 6], "uptime_s", 60.0 * (rand_r(&seed) % 100));
				if (rand_r(&seed) % 10 == 0)
					json_object_set_new(r, "crashes", json_integer(1 + rand_r(&seed) % 3));
				json_array_append_new(list, r);
			}
			body = json_pack("{so}", "reports", list);
			assert_int_equal(fleet_report(f, body, fleet_trusted_caller, &accepted), 0);
			assert_int_equal(accepted, 100);
			json_decref(body);
		}
		/* check-ins that change their device: version, tags, counter */
		for (int k = 0; k < 200; k++) {
			int i = rand_r(&seed) % 1500;
			checkin(f, i, VERSIONS[rand_r(&seed) % 3], k % 2 ? "eu" : "us", 1 + phase);
		}
		/* new devices */
		for (int i = 1500 + phase * 50; i < 1550 + phase * 50; i++)
			checkin(f, i, "1.0.0", "eu", 1);
		snapshots += f->snapshots;
		reopened_mid += f->building;
		f = reopen_same(f, db);
	}
	/* the log was compacted again and again, some reopens came in the
	 * middle of a snapshot, and what is stored is one snapshot and the log
	 * after it */
	assert_true(snapshots >= 6);
	assert_true(reopened_mid >= 1);
	fleet_close(f);
	assert_int_equal(db_int(db, "SELECT count(DISTINCT gen) FROM dev_snap WHERE gen <= "
				    "(SELECT value FROM fleet_meta WHERE key = 'snap_gen')"), 1);
	assert_int_equal(db_int(db, "SELECT count(*) FROM dev_log WHERE seq <= "
				    "(SELECT value FROM fleet_meta WHERE key = 'snap_seq')"), 0);
	assert_int_equal(db_int(db, "SELECT count(*) FROM sqlite_master WHERE name IN ('devices', 'device_log')"), 0);
	default_snapshots();
	free(db);
	tmpdir_remove(dir);
}

/* Default thresholds: a small fleet's log is never compacted (it stays
 * under 4 MB), and reopening still restores it exactly. */
static void a_small_fleet_keeps_its_log(void **state)
{
	char *dir = tmpdir_new(), *db = xasprintf("%s/fleet.db", dir);
	struct fleet *f;

	(void)state;
	default_snapshots();
	f = open_fleet(db);
	for (int i = 0; i < 300; i++)
		checkin(f, i, VERSIONS[i % 3], "eu", 2);
	f = reopen_same(f, db);
	assert_int_equal(f->snapshots, 0);
	assert_int_equal(f->snap_gen, 0);
	fleet_close(f);
	assert_true(db_int(db, "SELECT count(*) FROM dev_log") >= 1);
	assert_int_equal(db_int(db, "SELECT count(*) FROM dev_snap"), 0);
	free(db);
	tmpdir_remove(dir);
}

/* ---- kills during snapshots ------------------------------------------------------ */

#define KDEV 120

/* The real otacd forced to write snapshots all the time is SIGKILLed at a
 * random moment after an acknowledged batch, 12 times; after each kill the
 * fleet.db it left is opened here and every device's flags and the
 * aggregates are exactly what was acknowledged, then otacd starts again on
 * it. */
static void kills_during_snapshots_lose_nothing(void **state)
{
	static const char *const events[] = { "download", "install", "heartbeat" };
	static const uint32_t flag_of[] = { FL_DOWNLOAD, FL_INSTALL, 0 };
	uint32_t want[KDEV];
	struct daemon d;
	char **c, *db;
	unsigned seed = 11;
	int64_t first_gen = -1, last_gen = 0, mid = 0;

	(void)state;
	force_snapshots();
	setenv("OTACD_FLEET_SNAPSHOT_ROUND", "8", 1);   /* ~4 shards a round: 16 commits a snapshot */
	h_init(&d, NULL);
	d.device_listen = h_free_listen();
	assert_int_equal(h_start(&d, NULL), 0);
	db = xasprintf("%s/state/fleet.db", d.dir);
	c = h_register_devices(&d, "kd", KDEV);
	for (int i = 0; i < KDEV; i++) {
		char id[32];
		snprintf(id, sizeof(id), "kd-%04d", i);
		assert_int_equal(h_dev_post(&d, "/device/v1/checkin", c[i],
					  json_pack("{ss ss ss ss ss si}", "device", id, "product", "fw", "hardware", "hw",
						    "bootloader", "1.0.0", "version", "1.0.0", "security_counter", 0),
					  NULL),
				 200);
		want[i] = 0;
	}
	for (int kill_no = 0; kill_no < 12; kill_no++) {
		struct fleet *f;
		int64_t downloads = 0, installs = 0, reporting = 0;
		struct fleet_agg a;
		int batches = 1 + rand_r(&seed) % 10;

		for (int b = 0; b < batches; b++) {
			json_t *list = json_array(), *ans = NULL;
			uint32_t add[KDEV] = { 0 };
			for (int k = 0; k < 10; k++) {
				int i = rand_r(&seed) % KDEV, e = rand_r(&seed) % 3;
				char id[32];
				snprintf(id, sizeof(id), "kd-%04d", i);
				json_array_append_new(list, json_pack("{ss ss ss ss si}", "device", id, "credential", c[i],
								      "version", "1.0.0", "event", events[e], "uptime_s", 60));
				add[i] |= flag_of[e] | FL_REPORTING;
			}
			assert_int_equal(h_dev_post(&d, "/device/v1/reports", NULL, json_pack("{so}", "reports", list), &ans),
					 200);
			assert_int_equal(json_integer_value(json_object_get(ans, "accepted")), 10);
			json_decref(ans);
			for (int i = 0; i < KDEV; i++)   /* acknowledged */
				want[i] |= add[i];
		}
		h_msleep(rand_r(&seed) % 400);  /* idle rounds go on capturing shards */
		h_kill(&d, SIGKILL);

		/* rows of a snapshot being written when the kill came */
		mid += db_int(db, "SELECT count(*) FROM dev_snap WHERE gen > "
				  "(SELECT coalesce(max(value), 0) FROM fleet_meta WHERE key = 'snap_gen')") > 0;
		f = open_fleet(db);
		if (first_gen < 0)
			first_gen = f->snap_gen;
		last_gen = f->snap_gen;
		for (int i = 0; i < KDEV; i++) {
			char id[32];
			uint64_t h;
			struct device *dev;
			uint32_t have = 0;
			snprintf(id, sizeof(id), "kd-%04d", i);
			h = fleet_fnv(id, strlen(id), FLEET_FNV_BASIS);
			dev = fleet_device_find_locked(fleet_shard(f, h), id, h);
			assert_non_null(dev);
			assert_string_equal(dev->version, "1.0.0");
			for (int v = 0; v < FLEET_NVFLAGS; v++)
				if (dev->vf[v].version && !strcmp(dev->vf[v].version, "1.0.0"))
					have = dev->vf[v].flags;
			if (have != want[i])
				fail_msg("kill %d: %s has flags %#x, %#x acknowledged", kill_no, id, have, want[i]);
			downloads += !!(want[i] & FL_DOWNLOAD);
			installs += !!(want[i] & FL_INSTALL);
			reporting += !!(want[i] & FL_REPORTING);
		}
		assert_int_equal(fleet_aggregate(f, "fw", "1.0.0", "*", &a), 0);
		assert_int_equal(a.devices, KDEV);
		assert_int_equal(a.downloads, downloads);
		assert_int_equal(a.installs, installs);
		assert_int_equal(a.reporting, reporting);
		fleet_close(f);
		assert_int_equal(h_start(&d, NULL), 0);
	}
	/* snapshots completed between the kills, and kills came in the middle
	 * of one */
	print_message("%lld snapshots during the kills, %lld of 12 kills in the middle of one\n",
		      (long long)(last_gen - first_gen), (long long)mid);
	assert_true(last_gen - first_gen >= 3);
	assert_true(mid >= 3);
	for (int i = 0; i < KDEV; i++)
		free(c[i]);
	free(c);
	free(db);
	h_cleanup(&d);
	default_snapshots();
}

/* ---- the legacy layout --------------------------------------------------------------- */

static void sql(sqlite3 *h, const char *text)
{
	char *err = NULL;
	if (sqlite3_exec(h, text, NULL, NULL, &err) != SQLITE_OK)
		fail_msg("%s: %s", text, err ? err : "?");
}

/* A fleet.db as the legacy layout wrote it (its schema, made with sqlite3):
 * rows in devices, newer rows of two of them in device_log, aggregates.
 * fleet_open reads it, every device and flag is there, the legacy tables
 * are gone, and it reopens the same from the new layout. */
static void a_legacy_fleet_db_is_migrated(void **state)
{
	char *dir = tmpdir_new(), *db = xasprintf("%s/fleet.db", dir);
	sqlite3 *h = NULL;
	struct fleet *f;
	struct fleet_agg a;
	size_t n;
	char *text;

	(void)state;
	default_snapshots();
	assert_int_equal(sqlite3_open(db, &h), SQLITE_OK);
	sql(h, "CREATE TABLE devices(id TEXT PRIMARY KEY, product TEXT NOT NULL, hardware TEXT NOT NULL,"
	       " bootloader TEXT NOT NULL, version TEXT NOT NULL, counter INTEGER NOT NULL, tags TEXT NOT NULL,"
	       " flags TEXT NOT NULL, last_seen INTEGER NOT NULL) WITHOUT ROWID;"
	       "CREATE TABLE device_log(id TEXT NOT NULL, product TEXT NOT NULL, hardware TEXT NOT NULL,"
	       " bootloader TEXT NOT NULL, version TEXT NOT NULL, counter INTEGER NOT NULL, tags TEXT NOT NULL,"
	       " flags TEXT NOT NULL, last_seen INTEGER NOT NULL);"
	       "CREATE TABLE aggs(product TEXT NOT NULL, version TEXT NOT NULL, cohort TEXT NOT NULL,"
	       " offered INTEGER NOT NULL, downloads INTEGER NOT NULL, installs INTEGER NOT NULL, boot_ok INTEGER NOT NULL,"
	       " boot_fail INTEGER NOT NULL, reverts INTEGER NOT NULL, reporting INTEGER NOT NULL, crashed INTEGER NOT NULL,"
	       " crashes INTEGER NOT NULL, device_hours REAL NOT NULL, battery_mah REAL NOT NULL,"
	       " PRIMARY KEY(product, version, cohort)) WITHOUT ROWID;"
	       "CREATE TABLE registered(id TEXT PRIMARY KEY, gen INTEGER NOT NULL, at INTEGER NOT NULL) WITHOUT ROWID;"
	       "CREATE TABLE registrations(at INTEGER NOT NULL, count INTEGER NOT NULL, first TEXT NOT NULL,"
	       " last TEXT NOT NULL, peer TEXT NOT NULL);"
	       "INSERT INTO devices VALUES('old-1', 'fw', 'rev-a', '1.0.0', '1.0.0', 1, 'region=eu\ntier=ga\n',"
	       " '1.0.0 64\n1.1.0 7\n', 1700000000000);"
	       "INSERT INTO devices VALUES('old-2', 'fw', 'rev-b', '1.2.0', '1.0.0', 2, '', '', 1700000000001);"
	       "INSERT INTO devices VALUES('old-3', 'fw', 'rev-a', '1.0.0', '1.0.0', 1, 'region=us\n', '1.0.0 64\n',"
	       " 1700000000002);"
	       "INSERT INTO device_log VALUES('old-2', 'fw', 'rev-b', '1.2.0', '1.1.0', 3, 'region=us\n',"
	       " '1.1.0 79\n', 1700000000005);"
	       "INSERT INTO device_log VALUES('old-4', 'fw', 'rev-a', '1.0.0', '1.1.0', 1, '', '1.1.0 1\n', 1700000000006);"
	       "INSERT INTO aggs VALUES('fw', '1.1.0', '*', 3, 2, 2, 1, 0, 0, 1, 0, 0, 1.5, 0);"
	       "INSERT INTO registered VALUES('old-1', 1, 1700000000000);");
	sqlite3_close(h);

	f = open_fleet(db);
	text = dump_devices(f, &n);
	assert_int_equal(n, 4);
	assert_string_equal(text,
			    "old-1 fw rev-a 1.0.0 1.0.0 1 1700000000000 tags region=eu tier=ga flags 1.0.0=64 1.1.0=7\n"
			    "old-2 fw rev-b 1.2.0 1.1.0 3 1700000000005 tags region=us flags 1.1.0=79\n"
			    "old-3 fw rev-a 1.0.0 1.0.0 1 1700000000002 tags region=us flags 1.0.0=64\n"
			    "old-4 fw rev-a 1.0.0 1.1.0 1 1700000000006 tags flags 1.1.0=1\n");
	free(text);
	assert_int_equal(fleet_aggregate(f, "fw", "1.1.0", "*", &a), 0);
	assert_int_equal(a.offered, 3);
	assert_int_equal(a.devices, 2);   /* recounted from the rows */
	assert_int_equal(a.boot_ok, 1);
	assert_int_equal(f->snap_gen, 1);
	f = reopen_same(f, db);
	fleet_close(f);
	assert_int_equal(db_int(db, "SELECT count(*) FROM sqlite_master WHERE name IN ('devices', 'device_log')"), 0);
	assert_int_equal(db_int(db, "SELECT count(*) FROM dev_snap"), 64);   /* one BLOB a shard */
	assert_int_equal(db_int(db, "SELECT count(*) FROM registered"), 1);
	free(db);
	tmpdir_remove(dir);
}

/* A round whose commit fails (here a trigger another connection adds makes
 * the log's insert fail, as a full disk would) answers its check-in with an
 * error; the device's retry finds its state already in memory and is
 * answered at once, so the rows the failed round wrote must be written by
 * the next one: after a reopen the device is there, on its new version. */
static void a_failed_commit_writes_its_rows_again(void **state)
{
	char *dir = tmpdir_new(), *db = xasprintf("%s/fleet.db", dir);
	struct fleet *f;
	sqlite3 *h = NULL;
	json_t *answer = NULL, *body;
	char *text;
	size_t n;

	(void)state;
	default_snapshots();
	f = open_fleet(db);
	checkin(f, 1, "1.0.0", "eu", 1);
	assert_int_equal(sqlite3_open(db, &h), SQLITE_OK);
	sqlite3_busy_timeout(h, 5000);
	sql(h, "CREATE TABLE fail(x); INSERT INTO fail VALUES(1);"
	       "CREATE TRIGGER fail_log BEFORE INSERT ON dev_log WHEN (SELECT count(*) FROM fail) > 0"
	       " BEGIN SELECT RAISE(ABORT, 'injected failure'); END;");
	body = json_pack("{ss ss ss ss ss si s{ss ss}}", "device", "st-00001", "product", "fw", "hardware", "rev-b",
			 "bootloader", "1.0.0", "version", "1.1.0", "security_counter", 1, "tags", "region", "eu", "tier",
			 "beta");
	assert_true(fleet_checkin(f, body, &answer) < 0);   /* the round rolled back */
	json_decref(answer);
	answer = NULL;
	sql(h, "DELETE FROM fail");
	sqlite3_close(h);
	assert_int_equal(fleet_checkin(f, body, &answer), 0);   /* the retry: nothing new in memory */
	json_decref(answer);
	json_decref(body);
	fleet_close(f);
	f = open_fleet(db);
	text = dump_devices(f, &n);
	assert_int_equal(n, 1);
	assert_non_null(strstr(text, "st-00001 fw rev-b 1.0.0 1.1.0 1 "));
	free(text);
	fleet_close(f);
	free(db);
	tmpdir_remove(dir);
}

/* A damaged device chunk is an error naming fleet.db, not a partial fleet. */
static void a_damaged_chunk_is_refused(void **state)
{
	char *dir = tmpdir_new(), *db = xasprintf("%s/fleet.db", dir);
	struct fleet_config cfg = { .db_path = db };
	struct fleet *f;
	sqlite3 *h = NULL;

	(void)state;
	default_snapshots();
	f = open_fleet(db);
	checkin(f, 1, "1.0.0", "eu", 1);
	fleet_close(f);
	assert_int_equal(sqlite3_open(db, &h), SQLITE_OK);
	sql(h, "UPDATE dev_log SET rows = substr(rows, 1, length(rows) - 3)");
	sqlite3_close(h);
	f = NULL;
	assert_true(fleet_open(&f, &cfg) < 0);
	assert_null(f);
	assert_non_null(strstr(ota_error_last(), "fleet.db"));
	free(db);
	tmpdir_remove(dir);
}

/* ---- round pacing --------------------------------------------------------------- */

static void round_due_paces_small_rounds_only(void **state)
{
	(void)state;
	/* within the pace, little waiting: no round yet */
	assert_false(fleet_round_due(1005, 1000, 1, 1, 10));
	assert_false(fleet_round_due(1009, 1000, FLEET_ROUND_BATCHES - 1, FLEET_ROUND_REPORTS - 1, 10));
	/* the pace is over */
	assert_true(fleet_round_due(1010, 1000, 1, 0, 10));
	assert_true(fleet_round_due(5000, 1000, 1, 0, 10));
	/* enough waits: at once, whatever the pace */
	assert_true(fleet_round_due(1000, 1000, FLEET_ROUND_BATCHES, 0, 10));
	assert_true(fleet_round_due(1000, 1000, 1, FLEET_ROUND_REPORTS, 10));
	assert_true(fleet_round_due(1000, 1000, FLEET_ROUND_BATCHES, 0, 3600000));
	assert_false(fleet_round_due(1000, 1000, FLEET_ROUND_BATCHES - 1, 0, 3600000));
	/* OTACD_FLEET_ROUND_MS=0 (or less): no pacing */
	assert_true(fleet_round_due(1000, 1000, 1, 0, 0));
	assert_true(fleet_round_due(1000, 1000, 1, 0, -5));
	/* exactly the pace after the last round: due */
	assert_true(fleet_round_due(20, 10, 1, 0, 10));
	/* the defaults the docs state */
	assert_int_equal(FLEET_ROUND_MS, 10);
	assert_int_equal(FLEET_ROUND_BATCHES, 64);
	assert_int_equal(FLEET_ROUND_REPORTS, 4096);
}

#define PACE_THREADS FLEET_ROUND_BATCHES
#define PACE_WAVES 8

struct pacer {
	struct fleet *f;
	int id, waves, base;   /* versions 1.<base>.<wave>: each check-in a change */
	pthread_t t;
};

/* waves check-ins of one device, each a change (its version moves), so
 * each queues a batch and waits for the commit that holds it */
static void *pacer_main(void *arg)
{
	struct pacer *p = arg;
	for (int w = 0; w < p->waves; w++) {
		char id[32], version[16];
		json_t *answer = NULL, *body;
		snprintf(id, sizeof(id), "pc-%03d", p->id);
		snprintf(version, sizeof(version), "1.%d.%d", p->base, w);
		body = json_pack("{ss ss ss ss ss si}", "device", id, "product", "fw", "hardware", "hw", "bootloader",
				 "1.0.0", "version", version, "security_counter", 0);
		if (fleet_checkin(p->f, body, &answer) != 0)
			fprintf(stderr, "pacer %d: check-in %d failed: %s\n", p->id, w, ota_error_last());
		json_decref(body);
		json_decref(answer);
	}
	return NULL;
}

static void pacers_start(struct pacer *p, struct fleet *f, int from, int to, int waves, int base)
{
	for (int i = from; i < to; i++) {
		p[i].f = f;
		p[i].id = i;
		p[i].waves = waves;
		p[i].base = base;
		assert_int_equal(pthread_create(&p[i].t, NULL, pacer_main, &p[i]), 0);
	}
}

static size_t queued(struct fleet *f)
{
	size_t n;
	pthread_mutex_lock(&f->q_mu);
	n = f->q_n;
	pthread_mutex_unlock(&f->q_mu);
	return n;
}

/* PACE_THREADS threads, PACE_WAVES changing check-ins each: the rounds
 * and batches committed. */
static struct fleet_store_stats paced_load(struct fleet *f)
{
	struct pacer p[PACE_THREADS];
	struct fleet_store_stats before, after;
	fleet_store_stats(f, &before);
	pacers_start(p, f, 0, PACE_THREADS, PACE_WAVES, 1);
	for (int i = 0; i < PACE_THREADS; i++)
		pthread_join(p[i].t, NULL);
	fleet_store_stats(f, &after);
	after.rounds -= before.rounds;
	after.batches -= before.batches;
	return after;
}

static void round_pacing_groups_small_check_ins(void **state)
{
	char *dir = tmpdir_new(), *db = xasprintf("%s/paced.db", dir), *db0 = xasprintf("%s/unpaced.db", dir);
	struct pacer p[PACE_THREADS];
	struct fleet_store_stats st, paced, unpaced;
	struct fleet *f;
	char *metrics;
	size_t len;

	(void)state;
	/* a pace no test outlives: a round of batches starts only when
	 * FLEET_ROUND_BATCHES wait (or at close) */
	setenv("OTACD_FLEET_ROUND_MS", "3600000", 1);
	f = open_fleet(db);
	unsetenv("OTACD_FLEET_ROUND_MS");
	/* 63 check-ins that change their device wait, and no round starts
	 * for them (idle rounds of the writer go by meanwhile) */
	pacers_start(p, f, 0, PACE_THREADS - 1, 1, 0);
	for (int waited = 0; waited < 30000 && queued(f) < PACE_THREADS - 1; waited += 10)
		h_msleep(10);
	assert_int_equal(queued(f), PACE_THREADS - 1);
	h_msleep(600);
	fleet_store_stats(f, &st);
	assert_int_equal(st.rounds, 0);
	assert_int_equal(queued(f), PACE_THREADS - 1);
	/* the 64th starts the round: all 64 answered by one commit */
	pacers_start(p, f, PACE_THREADS - 1, PACE_THREADS, 1, 0);
	for (int i = 0; i < PACE_THREADS; i++)
		pthread_join(p[i].t, NULL);
	fleet_store_stats(f, &st);
	assert_int_equal(st.rounds, 1);
	assert_int_equal(st.batches, PACE_THREADS);

	/* 64 threads of changing check-ins: each wave is one round, as no
	 * thread queues its next before the commit of its last */
	paced = paced_load(f);
	print_message("paced (1 h): %lld rounds for %lld batches\n", (long long)paced.rounds, (long long)paced.batches);
	assert_int_equal(paced.batches, PACE_THREADS * PACE_WAVES);
	assert_int_equal(paced.rounds, PACE_WAVES);
	/* /metrics says the same */
	assert_int_equal(fleet_metrics_text(f, &metrics, &len), 0);
	{
		char *want = xasprintf("\notacd_fleet_rounds_total %d\n", 1 + PACE_WAVES);
		assert_non_null(strstr(metrics, want));
		free(want);
		want = xasprintf("\notacd_fleet_round_batches_total %d\n", PACE_THREADS * (1 + PACE_WAVES));
		assert_non_null(strstr(metrics, want));
		free(want);
	}
	free(metrics);
	fleet_close(f);

	/* the same load unpaced: a round takes whatever waits when the
	 * writer comes round, so at least as many rounds for the same
	 * batches (group commit alone often comes close: how close depends
	 * on the machine, so only the paced count is exact) */
	setenv("OTACD_FLEET_ROUND_MS", "0", 1);
	f = open_fleet(db0);
	unsetenv("OTACD_FLEET_ROUND_MS");
	unpaced = paced_load(f);
	fleet_close(f);
	print_message("unpaced (OTACD_FLEET_ROUND_MS=0): %lld rounds for %lld batches\n", (long long)unpaced.rounds,
		      (long long)unpaced.batches);
	assert_int_equal(unpaced.batches, PACE_THREADS * PACE_WAVES);
	assert_true(unpaced.rounds >= paced.rounds);
	free(db);
	free(db0);
	tmpdir_remove(dir);
}

/* 64 check-ins that arrive while the writer commits an earlier one (held
 * by the tests-only stall file): unpaced, the earlier one is its own
 * round and the 63 that waited the next, 2 commits; paced, the first one
 * waits for the pace and the 64th starts one round for all, 1 commit. */
static int64_t rounds_for_a_burst_behind_a_commit(const char *dir, const char *name, const char *pace)
{
	char *db = xasprintf("%s/%s.db", dir, name), *stall = xasprintf("%s/%s.stall", dir, name);
	struct pacer p[PACE_THREADS];
	struct fleet_store_stats st;
	struct fleet *f;
	int paced = strcmp(pace, "0") != 0;

	assert_int_equal(ota_write_file_atomic(stall, "", 0, 0600), 0);
	setenv("OTACD_FLEET_ROUND_MS", pace, 1);
	setenv("OTACD_TEST_FLEET_STALL_FILE", stall, 1);
	f = open_fleet(db);
	unsetenv("OTACD_FLEET_ROUND_MS");
	unsetenv("OTACD_TEST_FLEET_STALL_FILE");
	/* the first: unpaced the writer takes it and stalls before its commit */
	pacers_start(p, f, 0, 1, 1, 0);
	for (int waited = 0; waited < 30000 && (paced ? queued(f) != 1 : !__atomic_load_n(&f->lag_oldest, __ATOMIC_RELAXED));
	     waited += 10)
		h_msleep(10);
	/* then the other 63 */
	pacers_start(p, f, 1, PACE_THREADS, 1, 0);
	for (int waited = 0; waited < 30000 && (paced ? queued(f) != 0 || !__atomic_load_n(&f->lag_oldest, __ATOMIC_RELAXED)
						     : queued(f) != PACE_THREADS - 1);
	     waited += 10)
		h_msleep(10);
	assert_int_equal(queued(f), paced ? 0 : PACE_THREADS - 1);
	assert_int_equal(unlink(stall), 0);
	for (int i = 0; i < PACE_THREADS; i++)
		pthread_join(p[i].t, NULL);
	fleet_store_stats(f, &st);
	fleet_close(f);
	assert_int_equal(st.batches, PACE_THREADS);
	free(db);
	free(stall);
	return st.rounds;
}

static void round_pacing_commits_a_burst_once(void **state)
{
	char *dir = tmpdir_new();
	int64_t unpaced, paced;
	(void)state;
	unpaced = rounds_for_a_burst_behind_a_commit(dir, "unpaced", "0");
	paced = rounds_for_a_burst_behind_a_commit(dir, "paced", "3600000");
	print_message("64 check-ins behind a commit: %lld rounds unpaced, %lld paced\n", (long long)unpaced,
		      (long long)paced);
	assert_int_equal(unpaced, 2);
	assert_int_equal(paced, 1);
	tmpdir_remove(dir);
}

/*
 * The device shard of sequential ids (dev-000000, dev-000001, ...): each
 * shard's count within 5 standard deviations of what chance gives
 * (binomial, 100,000 ids over 64 shards: 1,562.5 +- 5 x 39.2).  The ids
 * are fixed, so the counts are too: the band says the spread is chance's,
 * not that a draw may fail.  FNV-1a's top bits alone gave 790..2,300.
 */
static void shard_index_spreads_sequential_ids(void **state)
{
	enum { IDS = 100000 };
	static const char *const forms[] = { "dev-%06d", "dev-%07d", "%d" };
	double expect = (double)IDS / FLEET_NSHARDS, sd = sqrt(IDS * (1.0 / FLEET_NSHARDS) * (1 - 1.0 / FLEET_NSHARDS));

	(void)state;
	for (size_t f = 0; f < sizeof(forms) / sizeof(forms[0]); f++) {
		int count[FLEET_NSHARDS] = { 0 }, lo = IDS, hi = 0;
		char id[32];
		for (int i = 0; i < IDS; i++) {
			int k;
			snprintf(id, sizeof(id), forms[f], i);
			k = fleet_shard_index(fleet_fnv(id, strlen(id), FLEET_FNV_BASIS));
			assert_true(k >= 0 && k < FLEET_NSHARDS);
			count[k]++;
		}
		for (int k = 0; k < FLEET_NSHARDS; k++) {
			lo = count[k] < lo ? count[k] : lo;
			hi = count[k] > hi ? count[k] : hi;
		}
		print_message("ids %s: %d..%d a shard (chance: %.0f +- %.0f)\n", forms[f], lo, hi, expect, sd);
		assert_true(lo >= expect - 5 * sd);
		assert_true(hi <= expect + 5 * sd);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(snapshots_keep_every_device_and_flag),
		cmocka_unit_test(a_small_fleet_keeps_its_log),
		cmocka_unit_test(kills_during_snapshots_lose_nothing),
		cmocka_unit_test(a_legacy_fleet_db_is_migrated),
		cmocka_unit_test(a_failed_commit_writes_its_rows_again),
		cmocka_unit_test(a_damaged_chunk_is_refused),
		cmocka_unit_test(round_due_paces_small_rounds_only),
		cmocka_unit_test(round_pacing_groups_small_check_ins),
		cmocka_unit_test(round_pacing_commits_a_burst_once),
		cmocka_unit_test(shard_index_spreads_sequential_ids),
	};
	httpc_global_init();
	cmocka_set_test_filter(getenv("X_ONLY"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
