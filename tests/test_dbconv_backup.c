/*
 * test_dbconv_backup.c - backup/ on the storage layer (docs/storage.md,
 * issue 16; docs/operations.md, "Back up and restore"):
 *
 *  - backup/ calls no sqlite3_* and includes no sqlite3.h (SQLite's online
 *    backup API is db_sqlite_backup_to() in db/db_sqlite.c), and every SQL
 *    statement of its files (each string literal that starts with SELECT,
 *    INSERT, UPDATE, DELETE or WITH, read from the sources) prepares on a
 *    real PostgreSQL cluster (tests/pgcluster.h) after store.c's
 *    migrations; those not PostgreSQL's own catalog prepare on SQLite too;
 *  - on PostgreSQL a backup is pg_dump's dump of one snapshot plus the
 *    artifacts that snapshot lists, and a restore fills a new, empty
 *    database with pg_restore and audits itself in it;
 *  - bad input changes nothing: a database that is not empty, a backup of
 *    the other kind, pg_dump or pg_restore not installed, a dump corrupt
 *    in its last table's data (pg_restore fails after it created the
 *    tables: one transaction, so none is left), and a dump whose schema
 *    is newer than this otacd behind a manifest that says otherwise
 *    (restored, then refused, then dropped again);
 *  - the fleet database (fleet_database:) on PostgreSQL is in the backup
 *    too (fleet.pgdump) and restored into its own new, empty database;
 *    a filled fleet target, a backup of the other kind, one database for
 *    both and a fleet schema newer than this otacd are refused, and
 *    whatever was restored is dropped again;
 *  - the password of either URL (user part or password=) reaches pg_dump
 *    and pg_restore in their environment (PGPASSWORD), never in their
 *    argv (which `ps` shows: read by wrappers on PATH that record what
 *    the real programs get) nor in an error message.
 */
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include <jansson.h>

#include "../common/util.h"
#include "../orchestrator/backup/backup.h"
#include "../orchestrator/backup/backup_int.h"
#include "../orchestrator/db/db.h"
#include "../orchestrator/fleet/fleet.h"
#include "../orchestrator/store.h"
#include "dbconv.h"
#include "pgcluster.h"

static const struct {
	const char *file;
	size_t min; /* statements the scan must find at least */
} k_files[] = {
	{ "orchestrator/backup/backup.c", 1 },
	{ "orchestrator/backup/backup_pg.c", 3 },
	{ "orchestrator/backup/restore.c", 1 },
};

/* ---- the statements, read from the sources ---------------------------------- */

static void scan_all(struct dbconv_sql *l)
{
	for (size_t i = 0; i < OTA_ARRAY_SIZE(k_files); i++) {
		size_t n = dbconv_scan_literals(k_files[i].file, l);
		if (n < k_files[i].min)
			fail_msg("%s: %zu statements found, expected at least %zu", k_files[i].file, n, k_files[i].min);
	}
}

/* PostgreSQL's own: its catalog and snapshot functions */
static int pg_only(const char *sql)
{
	return strstr(sql, "pg_catalog.") || strstr(sql, "pg_export_snapshot");
}

static void every_statement_prepares(void **state)
{
	enum db_backend kind = dbconv_backend(state);
	struct dbconv_sql l = DBCONV_SQL_INIT;
	size_t prepared;

	scan_all(&l);
	prepared = dbconv_prepare_all(kind, &l, kind == DB_SQLITE ? pg_only : NULL);
	if (kind == DB_POSTGRES)
		assert_int_equal(prepared, l.sql.n);
	dbconv_sql_clear(&l);
}

static void backup_headers_do_not_include_sqlite(void **state)
{
	static const char *const headers[] = { "orchestrator/backup/backup.h", "orchestrator/backup/backup_int.h" };
	(void)state;
	for (size_t i = 0; i < OTA_ARRAY_SIZE(headers); i++) {
		char *text = dbconv_read_source(headers[i]);
		if (strstr(text, "sqlite3"))
			fail_msg("%s mentions sqlite3", headers[i]);
		free(text);
	}
}

/* ---- a state directory and databases on the cluster ---------------------------- */

static char *g_path_saved;

/* A URL for database NAME on the test's cluster. */
static char *db_url(const char *name)
{
	const char *url = dbconv_pg_url(), *at = strstr(url, "/postgres?");
	assert_non_null(at);
	return xasprintf("%.*s/%s%s", (int)(at - url), url, name, at + strlen("/postgres"));
}

/* A new, empty database on the cluster; its URL. */
static char *new_database(void)
{
	static int n;
	char name[64];
	struct db *db = NULL;
	char *sql;

	snprintf(name, sizeof(name), "restored_%d_%d", (int)getpid(), ++n);
	sql = xasprintf("CREATE DATABASE %s", name);
	if (db_open(&db, dbconv_pg_url(), 0) < 0 || db_exec(db, sql) < 0)
		fail_msg("%s: %s", sql, ota_error_last());
	db_close(db);
	free(sql);
	return db_url(name);
}

/* Tables, views and sequences in url's public schema. */
static int64_t relations(const char *url)
{
	struct db *db = NULL;
	struct db_stmt *st = NULL;
	int64_t n = -1;

	if (db_open(&db, url, DB_READONLY) < 0 ||
	    db_prepare(db, &st, "SELECT COUNT(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n"
				" ON n.oid = c.relnamespace WHERE n.nspname = 'public'") < 0 ||
	    db_step(st) != 1)
		fail_msg("count relations in %s: %s", url, ota_error_last());
	n = db_column_int64(st, 0);
	db_finalize(st);
	db_close(db);
	return n;
}

static int64_t count_in(const char *url, const char *sql)
{
	struct store *s = NULL;
	int64_t n;

	if (store_open(&s, url) < 0)
		fail_msg("store_open %s: %s", url, ota_error_last());
	n = dbconv_count(s, sql);
	store_close(s);
	return n;
}

static void write_text(const char *path, const char *text)
{
	char *dir = xstrdup(path);
	*strrchr(dir, '/') = '\0';
	assert_int_equal(ota_mkdir_p(dir, 0700), 0);
	assert_int_equal(ota_write_file_atomic(path, text, strlen(text), 0600), 0);
	free(dir);
}

static int exists(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0;
}

static int dir_is_empty_or_absent(const char *dir)
{
	return bk_dir_empty(dir) == 1;
}

struct pgstate {
	char *state;        /* the state directory (logs, artifacts, keys) */
	char *backup;       /* where its backup goes */
	char sha_kept[65];  /* an artifact in the store */
	char sha_gone[65];  /* one the database lists that retention removed */
};

static int g_case;

/* The cluster's database, migrated from nothing, with two artifacts (one
 * in the store, one not), an audit row and a job log; a state directory
 * beside it. */
static void pg_state(struct pgstate *ps)
{
	struct store *s;
	char *path;
	int64_t size;
	char sha[65];

	dbconv_need_pg();
	ps->state = xasprintf("%s/state-%d", dbconv_tmpdir(), ++g_case);
	ps->backup = xasprintf("%s/backup-%d", dbconv_tmpdir(), g_case);
	path = xasprintf("%s/blob", ps->state);
	write_text(path, "firmware image bytes\n");
	assert_int_equal(bk_hash_file(path, &size, sha), 0);
	unlink(path);
	free(path);
	memcpy(ps->sha_kept, sha, sizeof(sha));
	memset(ps->sha_gone, 'e', 64);
	ps->sha_gone[64] = '\0';
	path = xasprintf("%s/artifacts/sha256/%.2s/%s", ps->state, sha, sha);
	write_text(path, "firmware image bytes\n");
	free(path);
	path = xasprintf("%s/logs/1/1.log", ps->state);
	write_text(path, "build ok\n");
	free(path);
	path = xasprintf("%s/admin.token", ps->state);
	write_text(path, "token\n");
	free(path);

	s = dbconv_open_store(DB_POSTGRES);
	dbconv_begin(s);
	dbconv_insert(s, "INSERT INTO artifacts(run_id, job_id, attempt, name, sha256, size, created_at)"
			 " VALUES (1, 1, 1, ?, ?, 21, 5) RETURNING id", "tt", "app.bin", ps->sha_kept);
	dbconv_insert(s, "INSERT INTO artifacts(run_id, job_id, attempt, name, sha256, size, created_at)"
			 " VALUES (1, 1, 1, ?, ?, 9, 5) RETURNING id", "tt", "old.bin", ps->sha_gone);
	dbconv_insert(s, "INSERT INTO audit(at, actor, action, reason, detail) VALUES (7, ?, ?, 'x', '{}') RETURNING id",
		      "tt", "alice", "release_approve");
	dbconv_commit(s);
	store_close(s);
}

static void pgstate_free(struct pgstate *ps)
{
	free(ps->state);
	free(ps->backup);
}

static json_t *manifest(const char *backup)
{
	char *path = xasprintf("%s/" BACKUP_MANIFEST, backup);
	json_t *m = json_load_file(path, 0, NULL);
	assert_non_null(m);
	free(path);
	return m;
}

/* Rewrite backup.json with m (the backup's contents edited under it). */
static void manifest_save(const char *backup, json_t *m)
{
	char *path = xasprintf("%s/" BACKUP_MANIFEST, backup);
	assert_int_equal(json_dump_file(m, path, JSON_INDENT(1)), 0);
	free(path);
}

/* backup.json's entry for rel made to match the file as it is now. */
static void manifest_refresh(const char *backup, const char *rel)
{
	json_t *m = manifest(backup), *f;
	char *path = xasprintf("%s/%s", backup, rel), sha[65];
	int64_t size;
	size_t i;

	assert_int_equal(bk_hash_file(path, &size, sha), 0);
	json_array_foreach(json_object_get(m, "files"), i, f)
		if (!strcmp(json_string_value(json_object_get(f, "path")), rel)) {
			json_object_set_new(f, "size", json_integer(size));
			json_object_set_new(f, "sha256", json_string(sha));
		}
	manifest_save(backup, m);
	json_decref(m);
	free(path);
}

static void path_without_programs(void)
{
	char *empty = xasprintf("%s/no-programs", dbconv_tmpdir());
	mkdir(empty, 0700);
	g_path_saved = xstrdup(getenv("PATH") ? getenv("PATH") : "/usr/bin:/bin");
	setenv("PATH", empty, 1);
	free(empty);
}

static void path_restored(void)
{
	setenv("PATH", g_path_saved, 1);
	free(g_path_saved);
	g_path_saved = NULL;
}

/* ---- PostgreSQL: the behaviour chosen ----------------------------------------- */

static void postgres_backup_is_a_pg_dump_and_restores_into_a_new_empty_database(void **state)
{
	struct pgstate ps;
	json_t *sum = NULL, *m;
	char *target, *restored_state, *path;

	(void)state;
	pg_state(&ps);
	if (backup_take_db(&sum, dbconv_pg_url(), ps.state, ps.backup, 1) < 0)
		fail_msg("backup: %s", ota_error_last());
	assert_string_equal(json_string_value(json_object_get(sum, "database")), "postgres");
	assert_int_equal(json_integer_value(json_object_get(sum, "schema")), store_schema_latest());
	assert_int_equal(json_integer_value(json_object_get(sum, "missing_artifacts")), 1);
	json_decref(sum);
	m = manifest(ps.backup);
	assert_string_equal(json_string_value(json_object_get(m, "database")), "postgres");
	json_decref(m);
	path = xasprintf("%s/" BACKUP_PG_DUMP, ps.backup);
	assert_true(exists(path));
	free(path);
	path = xasprintf("%s/otacd.db", ps.backup);
	assert_false(exists(path));
	free(path);
	path = xasprintf("%s/artifacts/sha256/%.2s/%s", ps.backup, ps.sha_kept, ps.sha_kept);
	assert_true(exists(path));
	free(path);

	target = new_database();
	restored_state = xasprintf("%s/restored-%d", dbconv_tmpdir(), g_case);
	if (backup_restore_db(ps.backup, restored_state, target) < 0)
		fail_msg("restore: %s", ota_error_last());
	assert_int_equal(count_in(target, "SELECT COUNT(*) FROM artifacts"), 2);
	assert_int_equal(count_in(target, "SELECT COUNT(*) FROM audit WHERE actor = 'alice'"), 1);
	assert_int_equal(count_in(target, "SELECT COUNT(*) FROM audit WHERE action = 'restore'"), 1);
	/* identities go on after the restored rows */
	{
		struct store *s = NULL;
		int64_t id;
		assert_int_equal(store_open(&s, target), 0);
		id = dbconv_insert(s, "INSERT INTO events(at, kind) VALUES (1, 'x') RETURNING id", "");
		assert_true(id >= 1);
		id = dbconv_insert(s, "INSERT INTO audit(at, actor, action, reason, detail) VALUES (8, 'b', 'c', 'd', '{}')"
				      " RETURNING id", "");
		assert_int_equal(id, 3); /* alice's, the restore's, this */
		store_close(s);
	}
	path = xasprintf("%s/artifacts/sha256/%.2s/%s", restored_state, ps.sha_kept, ps.sha_kept);
	assert_true(exists(path));
	free(path);
	path = xasprintf("%s/logs/1/1.log", restored_state);
	assert_true(exists(path));
	free(path);
	path = xasprintf("%s/" BACKUP_PG_DUMP, restored_state);
	assert_true(exists(path)); /* kept with the state, as otacd.db would be */
	free(path);

	/* a second restore into the now filled database: refused, nothing changes */
	{
		char *again = xasprintf("%s/again-%d", dbconv_tmpdir(), g_case);
		int64_t before = relations(target);
		assert_int_equal(backup_restore_db(ps.backup, again, target), OTA_ECONFLICT);
		fprintf(stderr, "refused: %s\n", ota_error_last());
		assert_non_null(strstr(ota_error_last(), "is not empty"));
		assert_null(strstr(ota_error_last(), "password"));
		assert_int_equal(relations(target), before);
		assert_int_equal(count_in(target, "SELECT COUNT(*) FROM audit WHERE action = 'restore'"), 1);
		assert_true(dir_is_empty_or_absent(again));
		free(again);
	}
	free(restored_state);
	free(target);
	pgstate_free(&ps);
}

static void backup_of_the_other_kind_is_refused_before_anything_changes(void **state)
{
	struct pgstate ps;
	char *target, *into, *sqlite_state, *sqlite_backup;
	struct store *s = NULL;
	char *path;

	(void)state;
	pg_state(&ps);
	assert_int_equal(backup_take_db(NULL, dbconv_pg_url(), ps.state, ps.backup, 1), 0);
	into = xasprintf("%s/into-%d", dbconv_tmpdir(), g_case);
	/* a PostgreSQL backup restored as a SQLite state directory */
	assert_int_equal(backup_restore(ps.backup, into), OTA_EINVAL);
	assert_non_null(strstr(ota_error_last(), "PostgreSQL backup"));
	assert_true(dir_is_empty_or_absent(into));

	/* a SQLite backup restored into PostgreSQL */
	sqlite_state = xasprintf("%s/sqlite-state-%d", dbconv_tmpdir(), g_case);
	sqlite_backup = xasprintf("%s/sqlite-backup-%d", dbconv_tmpdir(), g_case);
	assert_int_equal(ota_mkdir_p(sqlite_state, 0700), 0);
	path = xasprintf("%s/otacd.db", sqlite_state);
	assert_int_equal(store_open(&s, path), 0);
	store_close(s);
	free(path);
	if (backup_take_db(NULL, NULL, sqlite_state, sqlite_backup, 1) < 0)
		fail_msg("SQLite backup: %s", ota_error_last());
	target = new_database();
	assert_int_equal(backup_restore_db(sqlite_backup, into, target), OTA_EINVAL);
	fprintf(stderr, "refused: %s\n", ota_error_last());
	assert_non_null(strstr(ota_error_last(), "otactl migrate"));
	assert_int_equal(relations(target), 0);
	assert_true(dir_is_empty_or_absent(into));

	free(target);
	free(into);
	free(sqlite_state);
	free(sqlite_backup);
	pgstate_free(&ps);
}

static void without_pg_dump_or_pg_restore_nothing_is_backed_up_or_restored(void **state)
{
	struct pgstate ps;
	char *target, *into, *path;

	(void)state;
	pg_state(&ps);
	path_without_programs();
	assert_int_equal(backup_take_db(NULL, dbconv_pg_url(), ps.state, ps.backup, 1), OTA_ENOTFOUND);
	path_restored();
	fprintf(stderr, "refused: %s\n", ota_error_last());
	assert_non_null(strstr(ota_error_last(), "pg_dump is not installed"));
	assert_non_null(strstr(ota_error_last(), "postgresql-client"));
	path = xasprintf("%s/" BACKUP_MANIFEST, ps.backup);
	assert_false(exists(path));
	free(path);
	assert_true(dir_is_empty_or_absent(ps.backup));

	assert_int_equal(backup_take_db(NULL, dbconv_pg_url(), ps.state, ps.backup, 1), 0);
	target = new_database();
	into = xasprintf("%s/into-%d", dbconv_tmpdir(), g_case);
	path_without_programs();
	assert_int_equal(backup_restore_db(ps.backup, into, target), OTA_ENOTFOUND);
	path_restored();
	assert_non_null(strstr(ota_error_last(), "pg_restore is not installed"));
	assert_int_equal(relations(target), 0);
	assert_true(dir_is_empty_or_absent(into));
	free(target);
	free(into);
	pgstate_free(&ps);
}

/* The dump's last table's data corrupt (its manifest entry made to match,
 * as an attacker or a bad copy could): pg_restore fails after it created
 * every table, and its one transaction leaves the database as empty as it
 * was.  Without --single-transaction this fails (the tables stay). */
static void a_corrupt_dump_restores_nothing(void **state)
{
	struct pgstate ps;
	char *target, *into, *path;
	struct stat st;

	(void)state;
	pg_state(&ps);
	assert_int_equal(backup_take_db(NULL, dbconv_pg_url(), ps.state, ps.backup, 1), 0);
	path = xasprintf("%s/" BACKUP_PG_DUMP, ps.backup);
	assert_int_equal(stat(path, &st), 0);
	{
		/* bytes of the last table's data: a custom-format dump holds its
		 * table of contents (every table's DDL) first, the data after */
		FILE *f = fopen(path, "r+b");
		assert_non_null(f);
		assert_true(st.st_size > 200);
		assert_int_equal(fseek(f, st.st_size - 40, SEEK_SET), 0);
		for (int i = 0; i < 32; i++)
			fputc(0xa5 ^ i, f);
		assert_int_equal(fclose(f), 0);
	}
	free(path);
	manifest_refresh(ps.backup, BACKUP_PG_DUMP);
	target = new_database();
	into = xasprintf("%s/into-%d", dbconv_tmpdir(), g_case);
	assert_true(backup_restore_db(ps.backup, into, target) < 0);
	fprintf(stderr, "refused: %s\n", ota_error_last());
	assert_non_null(strstr(ota_error_last(), "pg_restore failed"));
	assert_int_equal(relations(target), 0);
	assert_true(dir_is_empty_or_absent(into));
	free(target);
	free(into);
	pgstate_free(&ps);
}

/* A dump of a newer otacd's schema: refused by its manifest first; behind
 * a manifest edited to hide it, restored, refused by store_open, and its
 * tables dropped again. */
static void a_newer_schema_is_refused_and_dropped_again(void **state)
{
	struct pgstate ps;
	struct store *s = NULL;
	char *target, *into;
	json_t *m;

	(void)state;
	pg_state(&ps);
	assert_int_equal(store_open(&s, dbconv_pg_url()), 0);
	dbconv_begin(s);
	dbconv_insert(s, "INSERT INTO schema_migrations(version, applied_at) VALUES (?, 0) RETURNING version", "i",
		      (int64_t)store_schema_latest() + 1);
	dbconv_commit(s);
	store_close(s);
	assert_int_equal(backup_take_db(NULL, dbconv_pg_url(), ps.state, ps.backup, 1), 0);
	target = new_database();
	into = xasprintf("%s/into-%d", dbconv_tmpdir(), g_case);
	assert_int_equal(backup_restore_db(ps.backup, into, target), OTA_EINVAL);
	assert_non_null(strstr(ota_error_last(), "newer than this otacd"));
	assert_int_equal(relations(target), 0);

	m = manifest(ps.backup);
	json_object_set_new(m, "schema", json_integer(store_schema_latest()));
	manifest_save(ps.backup, m);
	json_decref(m);
	assert_true(backup_restore_db(ps.backup, into, target) < 0);
	fprintf(stderr, "refused: %s\n", ota_error_last());
	assert_non_null(strstr(ota_error_last(), "the restored database"));
	assert_int_equal(relations(target), 0);
	assert_true(dir_is_empty_or_absent(into));
	free(target);
	free(into);
	pgstate_free(&ps);
}

/* ---- SQLite: the same backup through the storage layer ---------------------- */

static void sqlite_backup_lists_its_artifacts_and_restores(void **state)
{
	char *st = xasprintf("%s/sqlite-round-%d", dbconv_tmpdir(), ++g_case);
	char *bk = xasprintf("%s/sqlite-round-bk-%d", dbconv_tmpdir(), g_case);
	char *into = xasprintf("%s/sqlite-round-into-%d", dbconv_tmpdir(), g_case);
	char *path = xasprintf("%s/otacd.db", st), sha[65];
	struct store *s = NULL;
	json_t *sum = NULL;
	int64_t size;

	(void)state;
	write_text(path, "");
	unlink(path);
	{
		char *blob = xasprintf("%s/blob", st);
		write_text(blob, "payload\n");
		assert_int_equal(bk_hash_file(blob, &size, sha), 0);
		unlink(blob);
		free(blob);
		blob = xasprintf("%s/artifacts/sha256/%.2s/%s", st, sha, sha);
		write_text(blob, "payload\n");
		free(blob);
	}
	assert_int_equal(store_open(&s, path), 0);
	dbconv_begin(s);
	dbconv_insert(s, "INSERT INTO artifacts(run_id, job_id, attempt, name, sha256, size, created_at)"
			 " VALUES (1, 1, 1, 'a', ?, 8, 5) RETURNING id", "t", sha);
	dbconv_commit(s);
	store_close(s);
	if (backup_take_db(&sum, NULL, st, bk, 1) < 0)
		fail_msg("backup: %s", ota_error_last());
	assert_string_equal(json_string_value(json_object_get(sum, "database")), "sqlite");
	assert_int_equal(json_integer_value(json_object_get(sum, "schema")), store_schema_latest());
	assert_int_equal(json_integer_value(json_object_get(sum, "missing_artifacts")), 0);
	json_decref(sum);
	if (backup_restore(bk, into) < 0)
		fail_msg("restore: %s", ota_error_last());
	free(path);
	path = xasprintf("%s/artifacts/sha256/%.2s/%s", into, sha, sha);
	assert_true(exists(path));
	free(path);
	path = xasprintf("%s/otacd.db", into);
	assert_int_equal(count_in(path, "SELECT COUNT(*) FROM artifacts"), 1);
	assert_int_equal(count_in(path, "SELECT COUNT(*) FROM audit WHERE action = 'restore'"), 1);
	free(path);
	free(st);
	free(bk);
	free(into);
}

/* ---- the fleet database on PostgreSQL ---------------------------------------- */

/* url migrated with the fleet store's own list, with two registered
 * devices, their registration and an aggregate row. */
static void fleet_fill(const char *url, int newer)
{
	struct db *db = NULL;
	size_t n;
	const char *const *list = fleet_store_migrations(&n);

	if (db_open(&db, url, 0) < 0 || db_migrate(db, list, n) < 0 ||
	    db_exec(db, "INSERT INTO registered(id, gen, at) VALUES ('dev-1', 1, 5), ('dev-2', 1, 6)") < 0 ||
	    db_exec(db, "INSERT INTO registrations(at, count, first, last, peer) VALUES (5, 2, 'dev-1', 'dev-2', 'lo')") < 0 ||
	    db_exec(db, "INSERT INTO aggs VALUES ('fw', '1.1.0', 'all', 2, 2, 2, 2, 0, 0, 2, 0, 0, 1.5, 0.0)") < 0 ||
	    (newer && db_exec(db, "INSERT INTO schema_migrations(version, applied_at) VALUES (99, 1)") < 0))
		fail_msg("fleet database %s: %s", url, ota_error_last());
	db_close(db);
}

static int64_t fleet_count(const char *url, const char *sql)
{
	struct db *db = NULL;
	struct db_stmt *st = NULL;
	int64_t n;

	if (db_open(&db, url, DB_READONLY) < 0 || db_prepare(db, &st, sql) < 0 || db_step(st) != 1)
		fail_msg("%s on %s: %s", sql, url, ota_error_last());
	n = db_column_int64(st, 0);
	db_finalize(st);
	db_close(db);
	return n;
}

static void postgres_fleet_database_is_backed_up_and_restored_into_its_own_database(void **state)
{
	struct pgstate ps;
	json_t *sum = NULL, *m;
	char *fleet, *target, *fleet_target, *into, *path;

	(void)state;
	pg_state(&ps);
	fleet = new_database();
	fleet_fill(fleet, 0);
	if (backup_take_dbs(&sum, dbconv_pg_url(), fleet, ps.state, ps.backup, 1) < 0)
		fail_msg("backup: %s", ota_error_last());
	assert_string_equal(json_string_value(json_object_get(sum, "fleet_database")), "postgres");
	json_decref(sum);
	m = manifest(ps.backup);
	assert_string_equal(json_string_value(json_object_get(m, "fleet_database")), "postgres");
	json_decref(m);
	path = xasprintf("%s/" BACKUP_FLEET_DUMP, ps.backup);
	assert_true(exists(path));
	free(path);
	path = xasprintf("%s/" BACKUP_FLEET_DB, ps.backup);
	assert_false(exists(path));
	free(path);

	target = new_database();
	fleet_target = new_database();
	into = xasprintf("%s/fleet-into-%d", dbconv_tmpdir(), g_case);
	if (backup_restore_dbs(ps.backup, into, target, fleet_target) < 0)
		fail_msg("restore: %s", ota_error_last());
	assert_int_equal(fleet_count(fleet_target, "SELECT COUNT(*) FROM registered"), 2);
	assert_int_equal(fleet_count(fleet_target, "SELECT COUNT(*) FROM registrations"), 1);
	assert_int_equal(fleet_count(fleet_target, "SELECT installs FROM aggs WHERE version = '1.1.0'"), 2);
	assert_int_equal(count_in(target, "SELECT COUNT(*) FROM audit WHERE action = 'restore'"), 1);
	/* the restored fleet database opens as the fleet store opens it, and
	 * its audit trail's ids go on after the restored one */
	{
		struct db *db = NULL;
		size_t n;
		const char *const *list = fleet_store_migrations(&n);
		assert_int_equal(db_open(&db, fleet_target, 0), 0);
		assert_int_equal(db_migrate(db, list, n), 0);
		assert_int_equal(db_exec(db, "INSERT INTO registrations(at, count, first, last, peer)"
					     " VALUES (9, 1, 'dev-3', 'dev-3', 'lo')"), 0);
		db_close(db);
		assert_int_equal(fleet_count(fleet_target, "SELECT MAX(id) FROM registrations"), 2);
	}

	/* into a filled fleet database: refused before anything changes */
	{
		char *again = xasprintf("%s/fleet-again-%d", dbconv_tmpdir(), g_case), *empty = new_database();
		assert_int_equal(backup_restore_dbs(ps.backup, again, empty, fleet_target), OTA_ECONFLICT);
		fprintf(stderr, "refused: %s\n", ota_error_last());
		assert_non_null(strstr(ota_error_last(), "is not empty"));
		assert_int_equal(relations(empty), 0);
		assert_int_equal(fleet_count(fleet_target, "SELECT COUNT(*) FROM registered"), 2);
		assert_true(dir_is_empty_or_absent(again));
		/* a fleet.pgdump without a PostgreSQL fleet database */
		assert_int_equal(backup_restore_dbs(ps.backup, again, empty, NULL), OTA_EINVAL);
		fprintf(stderr, "refused: %s\n", ota_error_last());
		assert_non_null(strstr(ota_error_last(), "fleet.pgdump"));
		/* one database for both */
		assert_int_equal(backup_restore_dbs(ps.backup, again, empty, empty), OTA_EINVAL);
		assert_non_null(strstr(ota_error_last(), "the same PostgreSQL database"));
		assert_int_equal(relations(empty), 0);
		assert_true(dir_is_empty_or_absent(again));
		free(again);
		free(empty);
	}
	free(into);
	free(target);
	free(fleet_target);
	free(fleet);
	pgstate_free(&ps);
}

static void a_sqlite_fleet_backup_is_refused_for_a_postgres_fleet_database(void **state)
{
	char *st = xasprintf("%s/sqlite-fleet-%d", dbconv_tmpdir(), ++g_case);
	char *bk = xasprintf("%s/sqlite-fleet-bk-%d", dbconv_tmpdir(), g_case);
	char *into = xasprintf("%s/sqlite-fleet-into-%d", dbconv_tmpdir(), g_case);
	char *path = xasprintf("%s/otacd.db", st), *fleet_path = xasprintf("sqlite:%s/fleet.db", st), *target;
	struct store *s = NULL;
	json_t *sum = NULL;

	(void)state;
	dbconv_need_pg();
	write_text(path, "");
	unlink(path);
	assert_int_equal(store_open(&s, path), 0);
	store_close(s);
	fleet_fill(fleet_path, 0);
	if (backup_take_db(&sum, NULL, st, bk, 1) < 0)
		fail_msg("backup: %s", ota_error_last());
	assert_string_equal(json_string_value(json_object_get(sum, "fleet_database")), "sqlite");
	json_decref(sum);
	target = new_database();
	assert_int_equal(backup_restore_dbs(bk, into, NULL, target), OTA_EINVAL);
	fprintf(stderr, "refused: %s\n", ota_error_last());
	assert_non_null(strstr(ota_error_last(), "otactl migrate --from sqlite:STATE/fleet.db"));
	assert_int_equal(relations(target), 0);
	assert_true(dir_is_empty_or_absent(into));
	/* and restored as it was taken: fleet.db in the state directory */
	if (backup_restore(bk, into) < 0)
		fail_msg("restore: %s", ota_error_last());
	free(fleet_path);
	fleet_path = xasprintf("sqlite:%s/fleet.db", into);
	assert_int_equal(fleet_count(fleet_path, "SELECT COUNT(*) FROM registered"), 2);
	free(target);
	free(fleet_path);
	free(path);
	free(st);
	free(bk);
	free(into);
}

static void a_newer_fleet_schema_is_refused_and_both_databases_are_dropped_again(void **state)
{
	struct pgstate ps;
	char *fleet, *target, *fleet_target, *into;

	(void)state;
	pg_state(&ps);
	fleet = new_database();
	fleet_fill(fleet, 1);
	assert_int_equal(backup_take_dbs(NULL, dbconv_pg_url(), fleet, ps.state, ps.backup, 1), 0);
	target = new_database();
	fleet_target = new_database();
	into = xasprintf("%s/newer-fleet-%d", dbconv_tmpdir(), g_case);
	assert_int_equal(backup_restore_dbs(ps.backup, into, target, fleet_target), OTA_EINVAL);
	fprintf(stderr, "refused: %s\n", ota_error_last());
	assert_non_null(strstr(ota_error_last(), "newer than this otacd"));
	assert_non_null(strstr(ota_error_last(), "dropped again"));
	assert_int_equal(relations(fleet_target), 0);
	assert_int_equal(relations(target), 0);
	assert_true(dir_is_empty_or_absent(into));
	free(into);
	free(target);
	free(fleet_target);
	free(fleet);
	pgstate_free(&ps);
}

/* ---- the password ------------------------------------------------------------ */

#define PASSWORD "Pw-s3cret-42"

/* The program NAME on PATH (caller frees). */
static char *on_path(const char *name)
{
	char *path = xstrdup(getenv("PATH") ? getenv("PATH") : "/usr/bin:/bin"), *save = NULL, *found = NULL;

	for (char *d = strtok_r(path, ":", &save); d && !found; d = strtok_r(NULL, ":", &save)) {
		char *p = xasprintf("%s/%s", d, name);
		if (access(p, X_OK) == 0)
			found = p;
		else
			free(p);
	}
	free(path);
	if (!found)
		skip();
	return found;
}

/* url with PASSWORD in its user part (user) or as password= (query). */
static char *with_password(const char *url, int user)
{
	const char *at = strchr(url, '@');
	assert_non_null(at);
	return user ? xasprintf("%.*s:" PASSWORD "%s", (int)(at - url), url, at) : xasprintf("%s&password=" PASSWORD, url);
}

static void the_password_reaches_pg_dump_and_pg_restore_in_the_environment_only(void **state)
{
	static const char *const progs[] = { "pg_dump", "pg_restore" };
	struct pgstate ps;
	char *wrappers, *log, *url, *fleet, *target, *fleet_target, *into, *p;
	struct buf text = BUF_INIT;
	int argv_lines = 0, env_lines = 0;

	(void)state;
	pg_state(&ps);
	wrappers = xasprintf("%s/wrappers-%d", dbconv_tmpdir(), g_case);
	log = xasprintf("%s/children.log", wrappers);
	for (size_t i = 0; i < OTA_ARRAY_SIZE(progs); i++) {
		char *real = on_path(progs[i]), *path = xasprintf("%s/%s", wrappers, progs[i]);
		/* what the real program is handed: its argv and its PGPASSWORD */
		char *script = xasprintf("#!/bin/sh\n{ printf 'argv:'; for a in \"$0\" \"$@\"; do printf ' %%s' \"$a\"; done;"
					 " printf '\\nenv: PGPASSWORD=%%s\\n' \"$PGPASSWORD\"; } >> '%s'\nexec '%s' \"$@\"\n",
					 log, real);
		write_text(path, script);
		assert_int_equal(chmod(path, 0700), 0);
		free(script);
		free(path);
		free(real);
	}
	g_path_saved = xstrdup(getenv("PATH") ? getenv("PATH") : "/usr/bin:/bin");
	p = xasprintf("%s:%s", wrappers, g_path_saved);
	setenv("PATH", p, 1);
	free(p);

	url = with_password(dbconv_pg_url(), 1);
	fleet = new_database();
	fleet_fill(fleet, 0);
	p = with_password(fleet, 0);
	free(fleet);
	fleet = p;
	if (backup_take_dbs(NULL, url, fleet, ps.state, ps.backup, 1) < 0)
		fail_msg("backup: %s", ota_error_last());
	target = new_database();
	fleet_target = new_database();
	p = with_password(target, 1);
	free(target);
	target = p;
	p = with_password(fleet_target, 0);
	free(fleet_target);
	fleet_target = p;
	into = xasprintf("%s/pw-into-%d", dbconv_tmpdir(), g_case);
	if (backup_restore_dbs(ps.backup, into, target, fleet_target) < 0)
		fail_msg("restore: %s", ota_error_last());
	path_restored();

	assert_int_equal(ota_read_file(&text, log, 1 << 20), 0);
	fprintf(stderr, "%s", buf_cstr(&text));
	for (char *line = strtok(text.ptr, "\n"); line; line = strtok(NULL, "\n")) {
		if (!strncmp(line, "argv:", 5)) {
			argv_lines++;
			assert_null(strstr(line, PASSWORD));
			assert_non_null(strstr(line, "--dbname="));
		} else {
			env_lines++;
			assert_string_equal(line, "env: PGPASSWORD=" PASSWORD);
		}
	}
	assert_int_equal(argv_lines, 4); /* two dumps, two restores */
	assert_int_equal(env_lines, 4);

	/* a failure names the database, never its password */
	{
		char *again = xasprintf("%s/pw-again-%d", dbconv_tmpdir(), g_case);
		char *u1 = db_url("no_such_database"), *u2 = db_url("nor_this");
		char *gone = with_password(u1, 0), *gone2 = with_password(u2, 1);
		assert_true(backup_restore_dbs(ps.backup, again, gone, gone2) < 0);
		fprintf(stderr, "refused: %s\n", ota_error_last());
		assert_null(strstr(ota_error_last(), PASSWORD));
		assert_true(backup_restore_dbs(ps.backup, again, target, gone2) < 0);
		fprintf(stderr, "refused: %s\n", ota_error_last());
		assert_null(strstr(ota_error_last(), PASSWORD));
		assert_true(backup_take_dbs(NULL, url, gone, ps.state, again, 1) < 0);
		fprintf(stderr, "refused: %s\n", ota_error_last());
		assert_null(strstr(ota_error_last(), PASSWORD));
		free(u1);
		free(u2);
		free(gone);
		free(gone2);
		free(again);
	}
	buf_release(&text);
	free(into);
	free(target);
	free(fleet_target);
	free(fleet);
	free(url);
	free(log);
	free(wrappers);
	pgstate_free(&ps);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		DBCONV_BOTH(every_statement_prepares),
		cmocka_unit_test(backup_headers_do_not_include_sqlite),
		cmocka_unit_test(sqlite_backup_lists_its_artifacts_and_restores),
		cmocka_unit_test(postgres_backup_is_a_pg_dump_and_restores_into_a_new_empty_database),
		cmocka_unit_test(backup_of_the_other_kind_is_refused_before_anything_changes),
		cmocka_unit_test(without_pg_dump_or_pg_restore_nothing_is_backed_up_or_restored),
		cmocka_unit_test(a_corrupt_dump_restores_nothing),
		cmocka_unit_test(a_newer_schema_is_refused_and_dropped_again),
		cmocka_unit_test(postgres_fleet_database_is_backed_up_and_restored_into_its_own_database),
		cmocka_unit_test(a_sqlite_fleet_backup_is_refused_for_a_postgres_fleet_database),
		cmocka_unit_test(a_newer_fleet_schema_is_refused_and_both_databases_are_dropped_again),
		cmocka_unit_test(the_password_reaches_pg_dump_and_pg_restore_in_the_environment_only),
	};
	int rc;

	dbconv_start("test_dbconv_backup");
	rc = cmocka_run_group_tests(tests, NULL, NULL);
	dbconv_finish();
	return rc;
}
