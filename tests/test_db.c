/*
 * test_db.c - the storage layer (orchestrator/db/db.h): the same cases on
 * SQLite and on a real PostgreSQL cluster this test starts in a temporary
 * directory (tests/pgcluster.h): rows in and out, transactions rolled back
 * on error, concurrent writers serialized, NULLs, blobs holding zero
 * bytes, large text, unicode, read-only connections, store.c's migrations
 * on both, a killed connection and a restarted server reported and
 * recovered from, and the dialect rewriter on its own.
 *
 * Without PostgreSQL's binaries the PostgreSQL cases are skipped, saying
 * so; .ci/run installs them.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <unistd.h>
#include <cmocka.h>

#include "../common/util.h"
#include "../orchestrator/db/db.h"
#include "../orchestrator/db/db_int.h"
#include "../orchestrator/store.h"
#include "harness.h"
#include "dbconv.h"
#include "pgcluster.h"

/* ---- fixtures ------------------------------------------------------------- */

/* A fresh, empty database of the test's backend; its URL in url. */
static struct db *fresh_db(void **state, char *url, size_t cap)
{
	enum db_backend kind = dbconv_backend(state);
	struct db *db = NULL;

	if (kind == DB_SQLITE) {
		char path[512];

		dbconv_new_sqlite_path(path, sizeof(path));
		snprintf(url, cap, "sqlite:%s", path);
	} else {
		dbconv_need_pg();
		snprintf(url, cap, "%s", dbconv_pg_url());
	}
	if (db_open(&db, url, DB_SYNC_NORMAL) < 0)
		fail_msg("open %s: %s", url, ota_error_last());
	if (kind == DB_POSTGRES &&
	    db_exec(db, "DROP SCHEMA IF EXISTS public CASCADE; CREATE SCHEMA public") < 0)
		fail_msg("reset schema: %s", db_errmsg(db));
	return db;
}

static void must_exec(struct db *db, const char *sql)
{
	if (db_exec(db, sql) < 0)
		fail_msg("%s: %s", sql, db_errmsg(db));
}

static int64_t one_int(struct db *db, const char *sql)
{
	struct db_stmt *st;
	int64_t v;

	if (db_prepare(db, &st, sql) < 0)
		fail_msg("%s: %s", sql, db_errmsg(db));
	assert_int_equal(db_step(st), 1);
	v = db_column_int64(st, 0);
	db_finalize(st);
	return v;
}

static const char k_items[] =
	"CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, n INTEGER,"
	" score REAL, data BLOB, note TEXT)";

static int64_t insert_item(struct db *db, const char *name, int64_t n)
{
	struct db_stmt *st = db_stmt(db, "INSERT INTO items(name, n) VALUES (?, ?) RETURNING id");
	int64_t id;

	assert_non_null(st);
	db_bind_text(st, 1, name);
	db_bind_int64(st, 2, n);
	if (db_step(st) != 1)
		fail_msg("insert %s: %s", name, db_errmsg(db));
	id = db_column_int64(st, 0);
	assert_int_equal(db_step(st), 0);
	db_reset(st);
	return id;
}

/* ---- cases, each run on both backends -------------------------------------- */

static void rows_go_in_and_come_back_with_their_ids_and_counts(void **state)
{
	char url[600];
	struct db *db = fresh_db(state, url, sizeof(url));
	struct db_stmt *st;

	/* the handle for modules not yet converted: SQLite only */
	assert_true((db_sqlite_handle(db) != NULL) == (db_backend(db) == DB_SQLITE));
	must_exec(db, k_items);
	assert_int_equal(insert_item(db, "a", 10), 1);
	assert_int_equal(insert_item(db, "b", 20), 2);
	/* 64-bit integers survive: SQLite's INTEGER is BIGINT on PostgreSQL */
	assert_int_equal(insert_item(db, "big", INT64_C(1) << 40), 3);

	st = db_stmt(db, "UPDATE items SET n = n + ?1, score = ?2 WHERE n < ?1");
	db_bind_int64(st, 1, 15);
	db_bind_double(st, 2, 0.1234567890123);
	assert_int_equal(db_step(st), 0);
	assert_int_equal(db_changes(st), 1);
	db_reset(st);

	st = db_stmt(db, "SELECT id, name, n, score FROM items ORDER BY id");
	assert_int_equal(db_step(st), 1);
	assert_int_equal(db_column_count(st), 4);
	assert_string_equal(db_column_text(st, 1), "a");
	assert_int_equal(db_column_int64(st, 2), 25);
	assert_int_equal(db_column_type(st, 3), DB_FLOAT);
	assert_true(db_column_double(st, 3) == 0.1234567890123); /* REAL is 8 bytes on both */
	assert_int_equal(db_step(st), 1);
	assert_int_equal(db_column_int64(st, 2), 20);
	assert_int_equal(db_column_type(st, 3), DB_NULL);
	assert_int_equal(db_step(st), 1);
	assert_int_equal(db_column_int64(st, 2), INT64_C(1) << 40);
	assert_int_equal(db_step(st), 0);
	db_reset(st);

	st = db_stmt(db, "DELETE FROM items WHERE id > ?");
	db_bind_int64(st, 1, 1);
	assert_int_equal(db_run(st), 0);
	assert_int_equal(db_changes(st), 2);
	assert_int_equal(one_int(db, "SELECT COUNT(*) FROM items"), 1);
	/* the scalar MAX is GREATEST on PostgreSQL; the aggregate stays */
	assert_int_equal(one_int(db, "SELECT MAX(n, 100) FROM items"), 100);
	assert_int_equal(one_int(db, "SELECT MAX(n) FROM items"), 25);
	db_close(db);
}

static void insert_or_ignore_and_upsert_behave_alike(void **state)
{
	char url[600];
	struct db *db = fresh_db(state, url, sizeof(url));
	struct db_stmt *st;

	must_exec(db, k_items);
	insert_item(db, "a", 1);
	st = db_stmt(db, "INSERT OR IGNORE INTO items(name, n) VALUES (?, ?)");
	db_bind_text(st, 1, "a");
	db_bind_int64(st, 2, 99);
	assert_int_equal(db_run(st), 0);
	assert_int_equal(db_changes(st), 0);
	assert_int_equal(one_int(db, "SELECT n FROM items WHERE name = 'a'"), 1);

	st = db_stmt(db, "INSERT INTO items(name, n) VALUES (?, ?) "
			 "ON CONFLICT(name) DO UPDATE SET n = excluded.n");
	db_bind_text(st, 1, "a");
	db_bind_int64(st, 2, 7);
	assert_int_equal(db_run(st), 0);
	assert_int_equal(one_int(db, "SELECT n FROM items WHERE name = 'a'"), 7);
	assert_int_equal(one_int(db, "SELECT COUNT(*) FROM items"), 1);
	db_close(db);
}

static int commits;

static void count_commit(void *arg)
{
	(void)arg;
	commits++;
}

static int insert_then_fail(struct db *db, void *arg)
{
	insert_item(db, "inside", 1);
	return insert_item(db, (const char *)arg, 2) > 0 ? ota_error_set(OTA_EINVAL, "refused by the caller") : 0;
}

static void a_failed_statement_rolls_the_whole_transaction_back(void **state)
{
	char url[600];
	struct db *db = fresh_db(state, url, sizeof(url));
	struct db_stmt *st;
	int rc;

	must_exec(db, k_items);
	insert_item(db, "kept", 1);
	db_on_commit(db, count_commit, NULL);
	commits = 0;

	assert_int_equal(db_begin(db), 0);
	assert_true(db_in_transaction(db));
	insert_item(db, "lost", 2);
	st = db_stmt(db, "INSERT INTO items(name) VALUES (?)");
	db_bind_text(st, 1, "kept");
	rc = db_run(st);
	assert_int_equal(rc, DB_ECONSTRAINT);
	/* the backend's own words: SQLite "UNIQUE constraint failed",
	 * PostgreSQL "duplicate key value violates unique constraint" */
	assert_true(strstr(db_errmsg(db), "UNIQUE") || strstr(db_errmsg(db), "unique"));
	assert_non_null(strstr(ota_error_last(), db_errmsg(db)));
	db_rollback(db);
	assert_false(db_in_transaction(db));
	assert_int_equal(one_int(db, "SELECT COUNT(*) FROM items WHERE name = 'lost'"), 0);

	/* a commit after a failed statement: refused on both backends */
	assert_int_equal(db_begin(db), 0);
	insert_item(db, "lost too", 2);
	db_bind_text(st = db_stmt(db, "INSERT INTO items(name) VALUES (?)"), 1, "kept");
	assert_int_equal(db_run(st), DB_ECONSTRAINT);
	assert_int_equal(db_commit(db), OTA_ERROR);
	assert_non_null(strstr(db_errmsg(db), "commit refused"));
	assert_false(db_in_transaction(db));
	assert_int_equal(one_int(db, "SELECT COUNT(*) FROM items"), 1);

	/* a caller's error inside db_transact: nothing of it stays */
	rc = db_transact(db, insert_then_fail, "second");
	assert_int_equal(rc, OTA_EINVAL);
	assert_int_equal(one_int(db, "SELECT COUNT(*) FROM items"), 1);
	assert_int_equal(commits, 0);
	db_rollback(db); /* outside a transaction: harmless */

	/* and one that succeeds commits once */
	assert_int_equal(db_begin(db), 0);
	insert_item(db, "third", 3);
	assert_int_equal(db_commit(db), 0);
	assert_int_equal(commits, 1);
	assert_int_equal(one_int(db, "SELECT COUNT(*) FROM items"), 2);
	db_close(db);
}

static void nulls_read_as_null_on_both(void **state)
{
	char url[600];
	struct db *db = fresh_db(state, url, sizeof(url));
	struct db_stmt *st;
	size_t n = 99;

	must_exec(db, k_items);
	st = db_stmt(db, "INSERT INTO items(name, n, score, data, note) VALUES ('x', ?, ?, ?, ?)");
	db_bind_null(st, 1);
	db_bind_null(st, 2);
	db_bind_null(st, 3);
	db_bind_text(st, 4, NULL);
	assert_int_equal(db_run(st), 0);

	st = db_stmt(db, "SELECT n, score, data, note FROM items WHERE n IS NULL AND note IS NULL");
	assert_int_equal(db_step(st), 1);
	for (int col = 0; col < 4; col++)
		assert_int_equal(db_column_type(st, col), DB_NULL);
	assert_int_equal(db_column_int64(st, 0), 0);
	assert_null(db_column_text(st, 3));
	assert_null(db_column_blob(st, 2, &n));
	assert_int_equal(n, 0);
	assert_int_equal(db_step(st), 0);
	db_close(db);
}

static void blobs_keep_every_byte_including_zeros(void **state)
{
	char url[600];
	struct db *db = fresh_db(state, url, sizeof(url));
	unsigned char bytes[512];
	struct db_stmt *st;
	const void *p;
	size_t n;

	for (size_t i = 0; i < sizeof(bytes); i++)
		bytes[i] = (unsigned char)(i % 3 ? i : 0);
	must_exec(db, k_items);
	st = db_stmt(db, "INSERT INTO items(name, data) VALUES (?, ?)");
	db_bind_text(st, 1, "bin");
	db_bind_blob(st, 2, bytes, sizeof(bytes));
	assert_int_equal(db_run(st), 0);
	db_bind_text(st, 1, "empty");
	db_bind_blob(st, 2, "", 0);
	assert_int_equal(db_run(st), 0);

	st = db_stmt(db, "SELECT data, length(data) FROM items WHERE name = ?");
	db_bind_text(st, 1, "bin");
	assert_int_equal(db_step(st), 1);
	assert_int_equal(db_column_type(st, 0), DB_BLOB);
	p = db_column_blob(st, 0, &n);
	assert_int_equal(n, sizeof(bytes));
	assert_memory_equal(p, bytes, sizeof(bytes));
	assert_int_equal(db_column_int64(st, 1), sizeof(bytes));
	db_reset(st);
	/* an empty blob is a value, not NULL */
	db_bind_text(st, 1, "empty");
	assert_int_equal(db_step(st), 1);
	assert_int_equal(db_column_type(st, 0), DB_BLOB);
	db_column_blob(st, 0, &n);
	assert_int_equal(n, 0);
	db_close(db);
}

static void large_text_and_unicode_round_trip(void **state)
{
	static const char uni[] = "h\xc3\xa9llo w\xc3\xb6rld \xe2\x9c\x93 \xe6\x97\xa5\xe6\x9c\xac "
				  "\xf0\x9f\x9a\x80 'quoted' ? $1";
	char url[600];
	struct db *db = fresh_db(state, url, sizeof(url));
	size_t big_len = 4u << 20;
	char *big = xmalloc(big_len + 1);
	struct db_stmt *st;

	for (size_t i = 0; i < big_len; i++)
		big[i] = (char)('a' + i % 26);
	big[big_len] = '\0';
	must_exec(db, k_items);
	st = db_stmt(db, "INSERT INTO items(name, note) VALUES (?, ?)");
	db_bind_text(st, 1, uni);
	db_bind_text(st, 2, big);
	assert_int_equal(db_run(st), 0);

	st = db_stmt(db, "SELECT name, note, length(name) FROM items WHERE name = ?");
	db_bind_text(st, 1, uni);
	assert_int_equal(db_step(st), 1);
	assert_string_equal(db_column_text(st, 0), uni);
	assert_int_equal(strlen(db_column_text(st, 1)), big_len);
	assert_int_equal(memcmp(db_column_text(st, 1), big, big_len), 0);
	/* characters, not bytes: h é l l o _ w ö r l d _ ✓ _ 日 本 _ 🚀 ... */
	assert_int_equal(db_column_int64(st, 2), 32);
	db_close(db);
	free(big);
}

struct writer {
	const char *url;
	int iterations;
	int rc;
};

static int increment(struct db *db, void *arg)
{
	struct db_stmt *st = db_stmt(db, "SELECT n FROM items WHERE name = 'counter'");
	int64_t n;
	int rc;

	(void)arg;
	if (!st)
		return OTA_ERROR;
	if ((rc = db_step(st)) != 1)
		return rc < 0 ? rc : OTA_ERROR;
	n = db_column_int64(st, 0);
	db_reset(st);
	/* read, then write what was read plus one: a lost update shows */
	st = db_stmt(db, "UPDATE items SET n = ? WHERE name = 'counter'");
	db_bind_int64(st, 1, n + 1);
	if ((rc = db_run(st)) < 0)
		return rc;
	st = db_stmt(db, "INSERT INTO items(name, n) VALUES (?, ?)");
	char name[32];
	snprintf(name, sizeof(name), "w%lld", (long long)n);
	db_bind_text(st, 1, name);
	db_bind_int64(st, 2, n);
	return db_run(st);
}

static void *writer_main(void *arg)
{
	struct writer *w = arg;
	struct db *db;

	if ((w->rc = db_open(&db, w->url, DB_SYNC_NORMAL)) < 0)
		return NULL;
	for (int i = 0; i < w->iterations && w->rc == 0; i++)
		w->rc = db_transact(db, increment, NULL);
	if (w->rc < 0)
		fprintf(stderr, "writer: %s\n", db_errmsg(db));
	db_close(db);
	return NULL;
}

static void concurrent_writers_are_serialized(void **state)
{
	char url[600];
	struct db *db = fresh_db(state, url, sizeof(url));
	enum { WRITERS = 4, EACH = 40 };
	struct writer w[WRITERS];
	pthread_t t[WRITERS];

	must_exec(db, k_items);
	insert_item(db, "counter", 0);
	for (int i = 0; i < WRITERS; i++) {
		w[i] = (struct writer){ .url = url, .iterations = EACH };
		pthread_create(&t[i], NULL, writer_main, &w[i]);
	}
	for (int i = 0; i < WRITERS; i++) {
		pthread_join(t[i], NULL);
		assert_int_equal(w[i].rc, 0);
	}
	assert_int_equal(one_int(db, "SELECT n FROM items WHERE name = 'counter'"), WRITERS * EACH);
	assert_int_equal(one_int(db, "SELECT COUNT(*) FROM items"), WRITERS * EACH + 1);
	db_close(db);
}

static int calls;

/* Loses the race twice (after writing), then succeeds. */
static int lose_twice(struct db *db, void *arg)
{
	insert_item(db, "retried", ++calls);
	return calls < 3 ? DB_EBUSY : 0;
}

static void a_transaction_that_lost_a_race_runs_again_and_commits_once(void **state)
{
	char url[600];
	struct db *db = fresh_db(state, url, sizeof(url));

	must_exec(db, k_items);
	calls = 0;
	assert_int_equal(db_transact(db, lose_twice, NULL), 0);
	assert_int_equal(calls, 3);
	/* the two lost attempts left nothing behind */
	assert_int_equal(one_int(db, "SELECT COUNT(*) FROM items"), 1);
	assert_int_equal(one_int(db, "SELECT n FROM items WHERE name = 'retried'"), 3);
	db_close(db);
}

static void a_reader_transaction_reads_one_snapshot(void **state)
{
	char url[600];
	struct db *db = fresh_db(state, url, sizeof(url));
	struct db *reader;

	must_exec(db, k_items);
	insert_item(db, "a", 1);
	assert_int_equal(db_open(&reader, url, DB_READONLY), 0);
	assert_int_equal(db_begin(reader), 0);
	assert_int_equal(one_int(reader, "SELECT COUNT(*) FROM items"), 1);
	/* a writer commits meanwhile: the reader's transaction does not see it */
	assert_int_equal(db_begin(db), 0);
	insert_item(db, "b", 2);
	assert_int_equal(db_commit(db), 0);
	assert_int_equal(one_int(reader, "SELECT COUNT(*) FROM items"), 1);
	assert_int_equal(db_commit(reader), 0);
	assert_int_equal(one_int(reader, "SELECT COUNT(*) FROM items"), 2);
	db_close(reader);
	db_close(db);
}

static void a_reader_refuses_to_write(void **state)
{
	char url[600];
	struct db *db = fresh_db(state, url, sizeof(url));
	struct db *reader;
	struct db_stmt *st;

	must_exec(db, k_items);
	insert_item(db, "a", 1);
	assert_int_equal(db_open(&reader, url, DB_READONLY), 0);
	assert_int_equal(one_int(reader, "SELECT n FROM items"), 1);
	st = db_stmt(reader, "UPDATE items SET n = 2");
	/* SQLite refuses at step; PostgreSQL at step too (read-only transaction) */
	if (st)
		assert_true(db_run(st) < 0);
	assert_true(*db_errmsg(reader) != '\0');
	assert_int_equal(one_int(db, "SELECT n FROM items"), 1);
	db_close(reader);
	db_close(db);
}

static void bad_sql_fails_at_prepare_with_the_backends_message(void **state)
{
	char url[600];
	struct db *db = fresh_db(state, url, sizeof(url));
	struct db_stmt *st = NULL;

	assert_true(db_prepare(db, &st, "SELEC 1") < 0);
	assert_null(st);
	assert_non_null(strstr(db_errmsg(db), "syntax error"));
	assert_null(db_stmt(db, "SELECT nope FROM nowhere"));
	assert_true(strstr(db_errmsg(db), "nowhere") != NULL);
	/* the connection is still usable */
	assert_int_equal(one_int(db, "SELECT 41 + 1"), 42);
	db_close(db);
}

static void store_migrations_apply_on_both_backends(void **state)
{
	char url[600];
	struct db *db = fresh_db(state, url, sizeof(url));
	size_t n;
	const char *const *list = store_migrations(&n);
	struct db_stmt *st;
	int version = -1;
	int64_t run;

	assert_int_equal(db_migrate(db, list, n), 0);
	assert_int_equal(db_schema_version(db, &version), 0);
	assert_int_equal(version, (int)n);
	assert_int_equal(db_migrate(db, list, n), 0); /* a second start: nothing to do */
	assert_true(one_int(db, "SELECT MIN(applied_at) FROM schema_migrations") > 1700000000);

	st = db_stmt(db, "INSERT INTO runs(pipeline, file, yaml, ref, state, trigger, created_at)"
			 " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id");
	const char *vals[] = { "fw", ".otacd/pipeline.yml", "name: fw", "refs/heads/main", "queued", "push" };
	for (int i = 0; i < 6; i++)
		db_bind_text(st, i + 1, vals[i]);
	db_bind_int64(st, 7, INT64_C(1764720000000)); /* ms: past 32 bits */
	assert_int_equal(db_step(st), 1);
	run = db_column_int64(st, 0);
	assert_int_equal(run, 1);
	db_reset(st);
	/* a foreign key that points nowhere is refused on both */
	st = db_stmt(db, "INSERT INTO stages(run_id, idx, name, kind, state, needs) VALUES (?, 0, 's', 'build', 'q', '[]')");
	db_bind_int64(st, 1, 999);
	assert_int_equal(db_run(st), DB_ECONSTRAINT);
	db_bind_int64(st, 1, run);
	assert_int_equal(db_run(st), 0);
	/* store_meta_set()'s upsert */
	for (int i = 0; i < 2; i++) {
		st = db_stmt(db, "INSERT INTO meta(key, value) VALUES (?, ?) "
				 "ON CONFLICT(key) DO UPDATE SET value = excluded.value");
		db_bind_text(st, 1, "instance");
		db_bind_text(st, 2, i ? "two" : "one");
		assert_int_equal(db_run(st), 0);
	}
	st = db_stmt(db, "SELECT value FROM meta WHERE key = 'instance'");
	assert_int_equal(db_step(st), 1);
	assert_string_equal(db_column_text(st, 0), "two");
	db_reset(st);
	assert_int_equal(one_int(db, "SELECT created_at FROM runs"), INT64_C(1764720000000));

	if (db_backend(db) == DB_POSTGRES) {
		/* the dialect's types: 64-bit times, 8-byte REAL, identity ids */
		st = db_stmt(db, "SELECT data_type, is_identity FROM information_schema.columns"
				 " WHERE table_name = ? AND column_name = ?");
		const char *cols[][4] = { { "runs", "created_at", "bigint", "NO" },
					  { "runs", "id", "bigint", "YES" },
					  { "gate_evals", "estimate", "double precision", "NO" },
					  { "run_metrics", "value", "double precision", "NO" } };
		for (size_t i = 0; i < OTA_ARRAY_SIZE(cols); i++) {
			db_bind_text(st, 1, cols[i][0]);
			db_bind_text(st, 2, cols[i][1]);
			assert_int_equal(db_step(st), 1);
			assert_string_equal(db_column_text(st, 0), cols[i][2]);
			assert_string_equal(db_column_text(st, 1), cols[i][3]);
			db_reset(st);
		}
	}

	/* a database newer than this otacd is refused, not downgraded */
	assert_true(db_migrate(db, list, n - 1) < 0);
	assert_non_null(strstr(db_errmsg(db), "newer"));
	db_close(db);
}

struct migrator {
	const char *url;
	int rc;
};

static void *migrator_main(void *arg)
{
	struct migrator *m = arg;
	struct db *db;
	size_t n;
	const char *const *list = store_migrations(&n);

	if ((m->rc = db_open(&db, m->url, DB_SYNC_NORMAL)) < 0)
		return NULL;
	m->rc = db_migrate(db, list, n);
	if (m->rc < 0)
		fprintf(stderr, "migrator: %s\n", db_errmsg(db));
	db_close(db);
	return NULL;
}

static void instances_starting_at_once_migrate_once(void **state)
{
	char url[600];
	struct db *db = fresh_db(state, url, sizeof(url));
	enum { INSTANCES = 3 };
	struct migrator m[INSTANCES];
	pthread_t t[INSTANCES];
	size_t n;

	store_migrations(&n);
	for (int i = 0; i < INSTANCES; i++) {
		m[i] = (struct migrator){ .url = url };
		pthread_create(&t[i], NULL, migrator_main, &m[i]);
	}
	for (int i = 0; i < INSTANCES; i++) {
		pthread_join(t[i], NULL);
		assert_int_equal(m[i].rc, 0);
	}
	assert_int_equal(one_int(db, "SELECT COUNT(*) FROM schema_migrations"), (int64_t)n);
	assert_int_equal(one_int(db, "SELECT MAX(version) FROM schema_migrations"), (int64_t)n);
	db_close(db);
}

static void a_killed_connection_is_reported_and_reconnects(void **state)
{
	char url[600];
	struct db *db, *admin;
	struct db_stmt *st;
	int64_t pid;
	int rc;

	admin = fresh_db(state, url, sizeof(url));
	must_exec(admin, k_items);
	assert_int_equal(db_open(&db, url, 0), 0);
	insert_item(db, "a", 1);
	pid = one_int(db, "SELECT pg_backend_pid()");

	st = db_stmt(admin, "SELECT pg_terminate_backend(?)");
	db_bind_int64(st, 1, pid);
	assert_int_equal(db_step(st), 1);
	assert_int_equal(db_column_int64(st, 0), 1);
	db_reset(st);

	/* the cached statement on the dead connection: reported, not a crash */
	st = db_stmt(db, "INSERT INTO items(name, n) VALUES (?, ?) RETURNING id");
	db_bind_text(st, 1, "b");
	db_bind_int64(st, 2, 2);
	rc = db_step(st);
	assert_int_equal(rc, DB_ECONN);
	assert_true(strstr(db_errmsg(db), "terminat") || strstr(db_errmsg(db), "closed"));
	db_reset(st);

	/* reconnect: the same statement prepares again by itself */
	assert_int_equal(db_reconnect(db), 0);
	/* the insert on the dead connection never reached the server */
	assert_int_equal(insert_item(db, "b", 2), 2);

	/* killed inside a transaction: the commit reports it, nothing stays */
	pid = one_int(db, "SELECT pg_backend_pid()");
	assert_int_equal(db_begin(db), 0);
	insert_item(db, "uncommitted", 3);
	st = db_stmt(admin, "SELECT pg_terminate_backend(?)");
	db_bind_int64(st, 1, pid);
	assert_int_equal(db_step(st), 1);
	db_reset(st);
	assert_int_equal(db_commit(db), DB_ECONN);
	assert_int_equal(db_reconnect(db), 0);
	assert_false(db_in_transaction(db));
	assert_int_equal(one_int(db, "SELECT COUNT(*) FROM items WHERE name = 'uncommitted'"), 0);

	/* the whole server restarts: every connection sees it, then recovers */
	assert_int_equal(pgcluster_restart(dbconv_cluster()), 0);
	assert_true(db_exec(db, "SELECT 1") == DB_ECONN);
	assert_int_equal(db_reconnect(db), 0);
	assert_int_equal(db_reconnect(admin), 0);
	assert_int_equal(one_int(db, "SELECT COUNT(*) FROM items"), 2);
	db_close(db);
	db_close(admin);
}

/* ---- the dialect on its own -------------------------------------------------- */

static void expect_pg(const char *sqlite_sql, const char *want, int want_params)
{
	struct buf out = BUF_INIT;
	int n = -1;

	if (db_dialect_pg(sqlite_sql, &out, &n) < 0)
		fail_msg("%s: %s", sqlite_sql, ota_error_last());
	assert_string_equal(buf_cstr(&out), want);
	assert_int_equal(n, want_params);
	buf_release(&out);
}

static void expect_refused(const char *sqlite_sql, const char *why)
{
	struct buf out = BUF_INIT;
	int n;

	assert_int_equal(db_dialect_pg(sqlite_sql, &out, &n), OTA_EINVAL);
	assert_non_null(strstr(ota_error_last(), why));
	buf_release(&out);
}

static void the_dialect_rewrites_what_differs_and_refuses_what_it_cannot(void **state)
{
	(void)state;
	expect_pg("SELECT a FROM t WHERE b = ? AND c = '?' AND \"d?\" = ?", "SELECT a FROM t WHERE b = $1 AND c = '?' AND \"d?\" = $2", 2);
	expect_pg("UPDATE t SET a = ?2 WHERE b = ?1 OR c = ?", "UPDATE t SET a = $2 WHERE b = $1 OR c = $2", 2);
	expect_pg("INSERT OR IGNORE INTO t(a) VALUES (?)", "INSERT INTO t(a) VALUES ($1) ON CONFLICT DO NOTHING", 1);
	expect_pg("insert or ignore into t(a) values (?) returning id",
		  "insert into t(a) values ($1) ON CONFLICT DO NOTHING returning id", 1);
	expect_pg("CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, x REAL, b BLOB, n INTEGER NOT NULL);",
		  "CREATE TABLE t (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY , x DOUBLE PRECISION, "
		  "b BYTEA, n BIGINT NOT NULL);", 0);
	expect_pg("ALTER TABLE t ADD COLUMN n INTEGER", "ALTER TABLE t ADD COLUMN n BIGINT", 0); /* at the very end */
	expect_pg("SELECT MAX(a, MIN(b, ?)), MAX(c), max((d), e) FROM t",
		  "SELECT GREATEST(a, LEAST(b, $1)), MAX(c), GREATEST((d), e) FROM t", 1);
	expect_pg("VALUES (strftime( '%s', 'now' ))", "VALUES (CAST(EXTRACT(EPOCH FROM now()) AS BIGINT))", 0);
	expect_pg("SELECT 'it''s ? INTEGER' -- a ? comment\n, realm, blobs FROM t",
		  "SELECT 'it''s ? INTEGER' -- a ? comment\n, realm, blobs FROM t", 0);
	expect_refused("INSERT OR REPLACE INTO t VALUES (1)", "INSERT OR REPLACE");
	expect_refused("SELECT rowid FROM t", "rowid");
	expect_refused("SELECT value FROM json_each(?)", "json_each");
	expect_refused("SELECT strftime('%Y', 'now')", "strftime");
}

/* ---- main --------------------------------------------------------------------- */

/* More distinct statements than the cache's first size: none is evicted, so
 * a statement held across other db_stmt() calls keeps its place and its
 * rows (an evicted one would be freed under its caller: ASan sees that). */
#define MANY_STMTS 700
static char g_many[MANY_STMTS][64];

static void a_statement_held_across_many_others_stays_valid(void **state)
{
	char url[600];
	struct db *db = fresh_db(state, url, sizeof(url));
	struct db_stmt *held, *st;

	must_exec(db, k_items);
	insert_item(db, "a", 1);
	insert_item(db, "b", 2);
	held = db_stmt(db, "SELECT n FROM items ORDER BY n");
	assert_non_null(held);
	assert_int_equal(db_step(held), 1);
	assert_int_equal(db_column_int64(held, 0), 1);
	for (int i = 0; i < MANY_STMTS; i++) {
		snprintf(g_many[i], sizeof(g_many[i]), "SELECT %d + n FROM items WHERE n = 2", i);
		st = db_stmt(db, g_many[i]);
		assert_non_null(st);
		assert_int_equal(db_step(st), 1);
		assert_int_equal(db_column_int64(st, 0), i + 2);
		db_reset(st);
	}
	/* the held statement carries on where it was */
	assert_int_equal(db_step(held), 1);
	assert_int_equal(db_column_int64(held, 0), 2);
	assert_int_equal(db_step(held), 0);
	/* and every statement is still the cached one */
	assert_ptr_equal(db_stmt(db, "SELECT n FROM items ORDER BY n"), held);
	st = db_stmt(db, g_many[0]);
	assert_ptr_equal(db_stmt(db, g_many[0]), st);
	db_close(db);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(the_dialect_rewrites_what_differs_and_refuses_what_it_cannot),
		DBCONV_BOTH(rows_go_in_and_come_back_with_their_ids_and_counts),
		DBCONV_BOTH(insert_or_ignore_and_upsert_behave_alike),
		DBCONV_BOTH(a_failed_statement_rolls_the_whole_transaction_back),
		DBCONV_BOTH(nulls_read_as_null_on_both),
		DBCONV_BOTH(blobs_keep_every_byte_including_zeros),
		DBCONV_BOTH(large_text_and_unicode_round_trip),
		DBCONV_BOTH(concurrent_writers_are_serialized),
		DBCONV_BOTH(a_transaction_that_lost_a_race_runs_again_and_commits_once),
		DBCONV_BOTH(a_reader_refuses_to_write),
		DBCONV_BOTH(a_reader_transaction_reads_one_snapshot),
		DBCONV_BOTH(bad_sql_fails_at_prepare_with_the_backends_message),
		DBCONV_BOTH(a_statement_held_across_many_others_stays_valid),
		DBCONV_BOTH(store_migrations_apply_on_both_backends),
		DBCONV_BOTH(instances_starting_at_once_migrate_once),
		/* SQLite has no server connection to lose */
		{ "postgres/a_killed_connection_is_reported_and_reconnects",
		  a_killed_connection_is_reported_and_reconnects, NULL, NULL, (void *)&dbconv_postgres },
	};
	int rc;

	dbconv_start("test_db");
	rc = cmocka_run_group_tests_name("db", tests, NULL, NULL);
	dbconv_finish();
	return rc;
}
