/*
 * test_dbconv_fleet.c - the fleet store (orchestrator/fleet/fleet_store.c,
 * fleet.db) converted to the storage layer (docs/storage.md, conversion
 * plan step 5, and "the fleet store"):
 *
 *  - every statement fleet_store.c prepares (each db_stmt(), exec_int()
 *    and query_int() literal, read from the source, so a statement added
 *    later is checked too) prepares on SQLite and on a real PostgreSQL
 *    cluster (tests/pgcluster.h) after fleet.db's migrations ran there,
 *    except the legacy layout's, which are SQLite's only and refused on
 *    PostgreSQL; the file calls no sqlite3_* any more;
 *  - the fleet's paths (registration, check-ins, report ingestion,
 *    aggregates, the device log, a snapshot switch, the registration
 *    audit trail, a reload from the database) give the same answers on
 *    both backends, and the answers the fleet promises;
 *  - a fleet.db as otacd wrote it before fleet.db had migrations (no
 *    schema_migrations, registrations without an id) opens with its
 *    devices, registrations and audit trail, newest first.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include <jansson.h>

#include "../common/util.h"
#include "../orchestrator/db/db.h"
#include "../orchestrator/fleet/fleet.h"
#include "../orchestrator/fleet/fleet_int.h"
#include "harness.h"
#include "dbconv.h"

#define FILE_RC "orchestrator/fleet/fleet_store.c"
#define FILE_ROWS "orchestrator/fleet/fleet_rows.c" /* `registered`'s upserts */
#define KEY "fleet-key-for-tests"
#define SECRET "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"

/* ---- the statements, read from the source ------------------------------------ */

/* Every call of one of calls[] whose second argument is a literal. */
static void scan(struct dbconv_sql *l)
{
	static const char *const calls[] = { "db_stmt(", "exec_int(", "query_int(" };

	for (size_t c = 0; c < OTA_ARRAY_SIZE(calls); c++)
		dbconv_scan_calls(FILE_RC, calls[c], 0, l);
	dbconv_scan_calls(FILE_ROWS, "db_stmt(", 0, l);
	if (l->sql.n < 20)
		fail_msg("%s: only %zu statements found (the scan is broken?)", FILE_RC, l->sql.n);
}

/* The legacy layout's statements: SQLite only (fleet_store.c says why). */
static int legacy_only(const char *sql)
{
	return strstr(sql, "device_log") || strstr(sql, "INTO devices") || strstr(sql, "FROM devices") ||
	       strstr(sql, "sqlite_master");
}

/* fleet_rows.c's batched upsert: PostgreSQL only (arrays bound as
 * parameters); SQLite runs the one-row upsert. */
static int postgres_only(const char *sql)
{
	return strstr(sql, "unnest(") != NULL;
}

/* ---- fleets on either backend --------------------------------------------------- */

/* A fresh fleet database's URL on kind (PostgreSQL: the database emptied). */
static void fresh_url(enum db_backend kind, char *url, size_t cap)
{
	if (kind == DB_POSTGRES) {
		dbconv_need_pg();
		dbconv_pg_reset();
		snprintf(url, cap, "%s", dbconv_pg_url());
	} else {
		char path[512];
		dbconv_new_sqlite_path(path, sizeof(path));
		snprintf(url, cap, "sqlite:%s", path);
	}
}

static struct fleet *open_fleet(const char *url)
{
	struct fleet_config cfg = { .db_path = url, .fleet_key = KEY, .device_secret = SECRET,
				    .poll_ms = 6 * 3600 * 1000LL };
	struct fleet *f = NULL;

	if (fleet_open(&f, &cfg) < 0)
		fail_msg("fleet_open %s: %s", url, ota_error_last());
	return f;
}

static void prepare_all(enum db_backend kind)
{
	char url[600];
	struct dbconv_sql l = DBCONV_SQL_INIT;
	struct db *db;
	size_t prepared;

	scan(&l);
	fresh_url(kind, url, sizeof(url));
	if (kind == DB_SQLITE) /* the legacy tables, as the benchmarks' layout makes them */
		setenv("OTACD_FLEET_LAYOUT", "legacy", 1);
	fleet_close(open_fleet(url)); /* fleet.db's migrations */
	unsetenv("OTACD_FLEET_LAYOUT");
	if (db_open(&db, url, 0) < 0)
		fail_msg("db_open %s: %s", url, ota_error_last());
	/* the legacy layout is never run on PostgreSQL: it is refused there */
	prepared = dbconv_prepare_each(db, &l, kind == DB_POSTGRES ? legacy_only : postgres_only);
	if (kind == DB_POSTGRES)
		assert_true(l.sql.n - prepared >= 5);
	db_close(db);
	dbconv_sql_clear(&l);
}

static void every_statement_prepares_on_sqlite(void **state)
{
	(void)state;
	prepare_all(DB_SQLITE);
}

static void every_statement_prepares_on_postgres(void **state)
{
	(void)state;
	prepare_all(DB_POSTGRES);
}

/* The scan finds the upserts that replaced INSERT OR REPLACE, and the old
 * form is what PostgreSQL refuses; the legacy layout is refused there. */
static void the_scan_finds_the_upserts_and_postgres_refuses_the_old_forms(void **state)
{
	char url[600];
	struct dbconv_sql l = DBCONV_SQL_INIT;
	struct fleet_config cfg = { .db_path = NULL, .fleet_key = KEY, .device_secret = SECRET };
	struct fleet *f = NULL;
	struct db *db;
	struct db_stmt *st = NULL;
	int upserts = 0;

	(void)state;
	dbconv_need_pg();
	scan(&l);
	for (size_t i = 0; i < l.sql.n; i++) {
		upserts += strstr(l.sql.v[i], "ON CONFLICT(") != NULL;
		assert_null(strstr(l.sql.v[i], "OR REPLACE"));
	}
	/* fleet_meta, aggs, registered (one row, and arrays), the legacy merge */
	assert_int_equal(upserts, 5);
	fresh_url(DB_POSTGRES, url, sizeof(url));
	fleet_close(open_fleet(url));
	assert_int_equal(db_open(&db, url, 0), 0);
	assert_true(db_prepare(db, &st, "INSERT OR REPLACE INTO fleet_meta(key, value) VALUES(?, ?)") < 0);
	assert_true(db_prepare(db, &st, "SELECT at FROM registrations ORDER BY rowid DESC") < 0);
	assert_null(st);
	db_close(db);
	setenv("OTACD_FLEET_LAYOUT", "legacy", 1);
	cfg.db_path = url;
	assert_true(fleet_open(&f, &cfg) < 0);
	unsetenv("OTACD_FLEET_LAYOUT");
	assert_non_null(strstr(ota_error_last(), "SQLite only"));
	assert_null(f);
	dbconv_sql_clear(&l);
}

/* ---- the fleet's paths, with rows, on both backends ---------------------------- */

static void checkin(struct fleet *f, const char *dev, const char *ver, const char *region)
{
	json_t *b = json_pack("{ss ss ss ss ss sI ss s{ss ss}}", "device", dev, "product", "sensor-node", "hardware",
			      "mps2-an385", "bootloader", "1.0.0", "version", ver, "security_counter", (json_int_t)1,
			      "slot", "confirmed", "tags", "region", region, "tier", "standard");
	json_t *ans = NULL;

	if (fleet_checkin(f, b, &ans) < 0)
		fail_msg("check-in of %s: %s", dev, ota_error_last());
	json_decref(ans);
	json_decref(b);
}

static void report(struct fleet *f, const char *dev, const char *ver, const char *event, double uptime, int crashes,
		   int expect)
{
	json_t *r = json_pack("{ss ss ss sf si sf}", "device", dev, "version", ver, "event", event, "uptime_s", uptime,
			      "crashes", crashes, "battery_mah", 1.5);
	json_t *body = json_pack("{s[o]}", "reports", r);
	int accepted = -1;

	if (fleet_report(f, body, fleet_trusted_caller, &accepted) < 0)
		fail_msg("report of %s: %s", dev, ota_error_last());
	assert_int_equal(accepted, expect);
	json_decref(body);
}

static json_t *agg_json(struct fleet *f, const char *version, const char *cohort)
{
	struct fleet_agg a;

	assert_int_equal(fleet_aggregate(f, "sensor-node", version, cohort, &a), 0);
	return json_pack("{sI sI sI sI sI sI sf sf}", "devices", (json_int_t)a.devices, "reporting",
			 (json_int_t)a.reporting, "crashed", (json_int_t)a.crashed, "crashes", (json_int_t)a.crashes,
			 "boot_ok", (json_int_t)a.boot_ok, "downloads", (json_int_t)a.downloads, "device_hours",
			 a.device_hours, "battery_mah", a.battery_mah);
}

/* The audit trail without its times (they differ between runs). */
static json_t *registrations(struct fleet *f)
{
	json_t *r = fleet_registrations(f, 10), *b;
	size_t i;

	json_array_foreach(json_object_get(r, "batches"), i, b)
		json_object_del(b, "at");
	return r;
}

/* What the fleet answers after registrations, check-ins and reports, and
 * after it is opened again from kind's database. */
static json_t *fleet_paths(enum db_backend kind)
{
	const char *const ids[] = { "d1", "d2", "d3" }, *const later[] = { "d4" };
	char url[600];
	struct fleet_store_stats stats;
	struct fleet *f;
	json_t *out = json_object();

	fresh_url(kind, url, sizeof(url));
	/* every round starts a snapshot: the switch, its deletes and
	 * fleet_meta's upserts run many times */
	setenv("OTACD_FLEET_COMPACT_BYTES", "1", 1);
	f = open_fleet(url);
	assert_int_equal(fleet_register(f, ids, 3, "peer-a", NULL), 0);
	assert_int_equal(fleet_register(f, later, 1, "peer-b", NULL), 0);
	assert_int_equal(fleet_register(f, ids, 1, "peer-c", NULL), 0); /* d1 again: its gen moves */
	checkin(f, "d1", "1.4.0", "eu");
	checkin(f, "d2", "1.4.0", "us");
	checkin(f, "d3", "1.4.0", "eu");
	report(f, "d1", "1.4.0", "heartbeat", 3600, 2, 1);
	report(f, "d1", "1.4.0", "heartbeat", 3600, 1, 1);
	report(f, "d2", "1.4.0", "heartbeat", 7200, 0, 1);
	json_object_set_new(out, "all", agg_json(f, "1.4.0", "*"));
	json_object_set_new(out, "versions", fleet_versions(f, "sensor-node"));
	json_object_set_new(out, "registrations", registrations(f));
	fleet_store_stats(f, &stats);
	assert_true(stats.snapshots >= 1);
	fleet_close(f);
	unsetenv("OTACD_FLEET_COMPACT_BYTES");

	/* from the database alone: the snapshot, the log after it, the
	 * aggregates as committed, the registered devices */
	f = open_fleet(url);
	json_object_set_new(out, "reloaded", agg_json(f, "1.4.0", "*"));
	json_object_set_new(out, "reloaded_versions", fleet_versions(f, "sensor-node"));
	json_object_set_new(out, "reloaded_registrations", registrations(f));
	json_object_set_new(out, "d4_registered", json_integer(fleet_device_registered(f, "d4")));
	/* a report after the reload lands on the reloaded counters */
	report(f, "d3", "1.4.0", "heartbeat", 1800, 0, 1);
	json_object_set_new(out, "after", agg_json(f, "1.4.0", "*"));
	fleet_close(f);
	return out;
}

static void check_answers(json_t *o)
{
	json_t *all = json_object_get(o, "all"), *after = json_object_get(o, "after");
	json_t *batches = json_object_get(json_object_get(o, "registrations"), "batches");

	assert_int_equal(json_integer_value(json_object_get(all, "devices")), 3);
	assert_int_equal(json_integer_value(json_object_get(all, "reporting")), 2);
	assert_int_equal(json_integer_value(json_object_get(all, "crashed")), 1);
	assert_int_equal(json_integer_value(json_object_get(all, "crashes")), 3);
	assert_true(json_equal(all, json_object_get(o, "reloaded")));
	assert_true(json_equal(json_object_get(o, "versions"), json_object_get(o, "reloaded_versions")));
	assert_int_equal(json_integer_value(json_object_get(json_object_get(o, "versions"), "1.4.0")), 3);
	assert_int_equal(json_integer_value(json_object_get(after, "reporting")), 3);
	assert_int_equal(json_integer_value(json_object_get(o, "d4_registered")), 1);
	/* newest first */
	assert_int_equal(json_array_size(batches), 3);
	assert_string_equal(json_string_value(json_object_get(json_array_get(batches, 0), "peer")), "peer-c");
	assert_string_equal(json_string_value(json_object_get(json_array_get(batches, 1), "peer")), "peer-b");
	assert_string_equal(json_string_value(json_object_get(json_array_get(batches, 2), "last")), "d3");
	assert_int_equal(json_integer_value(json_object_get(json_object_get(o, "registrations"), "total")), 5);
	assert_true(json_equal(json_object_get(o, "registrations"), json_object_get(o, "reloaded_registrations")));
}

static void fleet_paths_give_the_same_answers_on_both_backends(void **state)
{
	json_t *lite, *pg;

	(void)state;
	dbconv_need_pg();
	lite = fleet_paths(DB_SQLITE);
	check_answers(lite);
	pg = fleet_paths(DB_POSTGRES);
	dbconv_must_agree("the fleet's paths", lite, pg);
	json_decref(lite);
	json_decref(pg);
}

/* ---- registrations written in batches (fleet_rows.c) ------------------------- */

/* More rows than two of PostgreSQL's statements take. */
#define REG_IDS (2 * FLEET_REG_CHUNK + 300)

/* Every `registered` row of url as {id: [gen, at]}. */
static json_t *registered_rows(const char *url)
{
	json_t *rows = json_object();
	struct db *db;
	struct db_stmt *st;
	int rc;

	if (db_open(&db, url, DB_READONLY) < 0)
		fail_msg("db_open %s: %s", url, ota_error_last());
	assert_non_null(st = db_stmt(db, "SELECT id, gen, at FROM registered"));
	while ((rc = db_step(st)) == 1)
		json_object_set_new(rows, db_column_text(st, 0),
				    json_pack("[II]", (json_int_t)db_column_int64(st, 1), (json_int_t)db_column_int64(st, 2)));
	assert_int_equal(rc, 0);
	db_reset(st);
	db_close(db);
	return rows;
}

static void write_rows(const char *url, const struct fleet_regrows *r)
{
	struct db *db;

	if (db_open(&db, url, 0) < 0)
		fail_msg("db_open %s: %s", url, ota_error_last());
	assert_int_equal(db_begin(db), 0);
	if (fleet_regrows_write(db, r) < 0)
		fail_msg("fleet_regrows_write: %s", ota_error_last());
	assert_int_equal(db_commit(db), 0);
	db_close(db);
}

/* A row for r, and what writing the rows one by one leaves (the last row
 * of an id wins) in model. */
static void row(struct fleet_regrows *r, json_t *model, const char *id, int64_t gen, int64_t at)
{
	fleet_regrows_add(r, id, gen, at);
	json_object_set_new(model, id, json_pack("[II]", (json_int_t)gen, (json_int_t)at));
}

static json_int_t model_gen(json_t *model, const char *id)
{
	return json_integer_value(json_array_get(json_object_get(model, id), 0));
}

/* Rows past one statement's chunk, ids again inside a chunk (the last
 * chunk holds an id's first and second row), across chunks and across two
 * transactions: the rows are exactly those of the one-by-one loop. */
static void registered_rows_in_chunks_end_as_written_one_by_one(void **state)
{
	static char ids[REG_IDS + 100][24];
	struct fleet_regrows r = { 0 };
	json_t *model = json_object(), *got;
	char url[600];

	fresh_url(dbconv_backend(state), url, sizeof(url));
	fleet_close(open_fleet(url)); /* fleet.db's migrations */
	for (int i = 0; i < REG_IDS; i++) {
		snprintf(ids[i], sizeof(ids[i]), "r-%06d", i);
		row(&r, model, ids[i], 1, 1000 + i);
	}
	for (int i = 0; i < REG_IDS; i += 7)
		row(&r, model, ids[i], 2, 5000 + i);
	for (int i = REG_IDS - 1; i >= 0; i -= 49) /* a third row, in reverse order */
		row(&r, model, ids[i], 3, 7000 + i);
	assert_true(r.n > 2 * FLEET_REG_CHUNK);
	write_rows(url, &r);
	fleet_regrows_release(&r);

	/* a later round: registered ids again, and new ones */
	for (int i = 0; i < REG_IDS; i += 5)
		row(&r, model, ids[i], model_gen(model, ids[i]) + 1, 9000 + i);
	for (int i = 0; i < 100; i++) {
		snprintf(ids[REG_IDS + i], sizeof(ids[0]), "new-%d", i);
		row(&r, model, ids[REG_IDS + i], 1, 9500);
	}
	write_rows(url, &r);
	fleet_regrows_release(&r);

	got = registered_rows(url);
	assert_int_equal(json_object_size(got), REG_IDS + 100);
	if (!json_equal(got, model))
		fail_msg("%s: the `registered` rows differ from the one-by-one loop's", url);
	json_decref(got);
	json_decref(model);
}

struct reg_flight {
	int done, failed;
};

static void reg_done(void *ctx, int rc)
{
	struct reg_flight *fl = ctx;
	if (rc < 0)
		__atomic_add_fetch(&fl->failed, 1, __ATOMIC_SEQ_CST);
	__atomic_add_fetch(&fl->done, 1, __ATOMIC_SEQ_CST);
}

/* {"devices": ["b-LO" .. "b-HI"), then the extra ids} */
static json_t *reg_body(int lo, int hi, const char *const *extra, size_t nextra)
{
	json_t *devs = json_array();
	char id[32];
	for (int i = lo; i < hi; i++) {
		snprintf(id, sizeof(id), "b-%05d", i);
		json_array_append_new(devs, json_string(id));
	}
	for (size_t i = 0; i < nextra; i++)
		json_array_append_new(devs, json_string(extra[i]));
	return json_pack("{so}", "devices", devs);
}

/* Registrations that meet in one writer round (held back by the test stall
 * file while they queue), one larger than a statement's chunk, with ids
 * in several of them: each id's generation is the number of registrations
 * that named it, in the answers, in `registered` and after a reopen. */
static void registrations_in_one_round_move_each_id_once_per_registration(void **state)
{
	static const char *const extra[] = { "c-1", "c-2", "b-00007" };
	struct { int lo, hi; size_t nextra; } req[] = { { 0, 100, 0 }, { 0, FLEET_MAX_REGISTER, 0 },
							 { 5000, 6000, 2 }, { 5500, 5600, 3 } };
	struct fleet_reg *regs[OTA_ARRAY_SIZE(req)] = { NULL };
	struct reg_flight fl = { 0, 0 };
	char url[600], stall[600];
	struct fleet *f;
	json_t *rows;
	FILE *fp;

	fresh_url(dbconv_backend(state), url, sizeof(url));
	snprintf(stall, sizeof(stall), "%s/reg-stall", dbconv_tmpdir());
	assert_non_null(fp = fopen(stall, "w"));
	fclose(fp);
	setenv("OTACD_TEST_FLEET_STALL_FILE", stall, 1);
	f = open_fleet(url);
	unsetenv("OTACD_TEST_FLEET_STALL_FILE");
	for (size_t k = 0; k < OTA_ARRAY_SIZE(req); k++) {
		json_t *body = reg_body(req[k].lo, req[k].hi, extra, req[k].nextra);
		assert_int_equal(fleet_register_async(f, body, "peer", &regs[k], reg_done, &fl), 0);
		json_decref(body);
		if (k == 0)
			usleep(300 * 1000); /* the writer holds the first; the rest queue (or not: same rows) */
	}
	unlink(stall);
	for (int waited = 0; __atomic_load_n(&fl.done, __ATOMIC_SEQ_CST) < (int)OTA_ARRAY_SIZE(req); waited++) {
		if (waited > 120 * 50)
			fail_msg("registrations not committed after 120 s");
		usleep(20 * 1000);
	}
	assert_int_equal(fl.failed, 0);
	fleet_close(f);

	rows = registered_rows(url);
	assert_int_equal(json_object_size(rows), FLEET_MAX_REGISTER + 2);
	for (int i = 0; i < FLEET_MAX_REGISTER; i++) {
		char id[32];
		json_int_t want = 1 + (i < 100) + (i >= 5000 && i < 6000) + (i >= 5500 && i < 5600) + (i == 7);
		snprintf(id, sizeof(id), "b-%05d", i);
		if (model_gen(rows, id) != want)
			fail_msg("%s: gen %lld, not %lld", id, (long long)model_gen(rows, id), (long long)want);
	}
	assert_int_equal(model_gen(rows, "c-1"), 2);
	assert_int_equal(model_gen(rows, "c-2"), 2);
	/* the last registration's answer names the generations written */
	for (size_t i = 0; i < regs[3]->n; i++)
		assert_int_equal(regs[3]->gens[i], model_gen(rows, regs[3]->ids[i]));
	json_decref(rows);
	for (size_t k = 0; k < OTA_ARRAY_SIZE(regs); k++)
		fleet_reg_free(regs[k]);
	f = open_fleet(url);
	assert_int_equal(fleet_device_registered(f, "b-09999"), 1);
	assert_int_equal(fleet_device_registered(f, "c-2"), 1);
	fleet_close(f);
}

/* ---- a fleet.db from before fleet.db's migrations ------------------------------ */

static void a_fleet_db_without_migrations_opens_with_its_rows(void **state)
{
	const char *const ids[] = { "old-1", "old-2" };
	char path[512], url[600];
	struct fleet *f;
	struct db *db;
	struct db_stmt *st;
	json_t *regs, *batches;
	int version = -1;

	(void)state;
	dbconv_new_sqlite_path(path, sizeof(path));
	snprintf(url, sizeof(url), "sqlite:%s", path);
	/* a fleet written by this fleet_store.c, then made to look as
	 * main's wrote it: no schema_migrations, registrations keyed by
	 * SQLite's rowid, two audit rows in the same millisecond */
	f = open_fleet(url);
	assert_int_equal(fleet_register(f, ids, 2, "peer-a", NULL), 0);
	checkin(f, "old-1", "1.4.0", "eu");
	fleet_close(f);
	assert_int_equal(db_open(&db, url, 0), 0);
	assert_int_equal(db_exec(db, "DROP TABLE schema_migrations;"
				     "CREATE TABLE r_old(at INTEGER NOT NULL, count INTEGER NOT NULL, first TEXT NOT NULL,"
				     " last TEXT NOT NULL, peer TEXT NOT NULL);"
				     "INSERT INTO r_old SELECT at, count, first, last, peer FROM registrations;"
				     "INSERT INTO r_old VALUES(1, 1, 'x', 'x', 'peer-old'), (1, 1, 'y', 'y', 'peer-old2');"
				     "DROP TABLE registrations; ALTER TABLE r_old RENAME TO registrations;"),
			 0);
	db_close(db);

	f = open_fleet(url);
	assert_int_equal(fleet_device_registered(f, "old-2"), 1);
	regs = fleet_registrations(f, 10);
	batches = json_object_get(regs, "batches");
	assert_int_equal(json_array_size(batches), 3);
	/* newest first: the rows of at = 1 are the oldest */
	assert_string_equal(json_string_value(json_object_get(json_array_get(batches, 0), "peer")), "peer-a");
	assert_int_equal(json_integer_value(json_object_get(regs, "total")), 4);
	json_decref(regs);
	regs = fleet_versions(f, "sensor-node");
	assert_int_equal(json_integer_value(json_object_get(regs, "1.4.0")), 1);
	json_decref(regs);
	fleet_close(f);

	assert_int_equal(db_open(&db, url, DB_READONLY), 0);
	assert_int_equal(db_schema_version(db, &version), 0);
	{ /* every migration ran: the one that added registrations.id among them */
		size_t nmig;
		fleet_store_migrations(&nmig);
		assert_int_equal(version, (int)nmig);
	}
	st = db_stmt(db, "SELECT count(*) FROM registrations WHERE id IS NOT NULL");
	assert_int_equal(db_step(st), 1);
	assert_int_equal(db_column_int64(st, 0), 3);
	db_reset(st);
	db_close(db);
}

/* ---- main --------------------------------------------------------------------- */

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(every_statement_prepares_on_sqlite),
		cmocka_unit_test(every_statement_prepares_on_postgres),
		cmocka_unit_test(the_scan_finds_the_upserts_and_postgres_refuses_the_old_forms),
		cmocka_unit_test(fleet_paths_give_the_same_answers_on_both_backends),
		cmocka_unit_test(a_fleet_db_without_migrations_opens_with_its_rows),
		DBCONV_BOTH(registered_rows_in_chunks_end_as_written_one_by_one),
		DBCONV_BOTH(registrations_in_one_round_move_each_id_once_per_registration),
	};
	int rc;

	dbconv_start("test_dbconv_fleet");
	rc = cmocka_run_group_tests_name("dbconv_fleet", tests, NULL, NULL);
	dbconv_finish();
	return rc;
}
