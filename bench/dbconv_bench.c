/*
 * dbconv_bench.c - what converting a module to the storage layer costs on
 * SQLite (docs/benchmarks.md, issue 16; docs/storage.md, conversion plan).
 *
 * One store (STATE in $TMPDIR, synchronous=FULL as the daemon), one
 * connection, two ways to run the same statements:
 *
 *   raw   sqlite3_prepare_v3() on db_sqlite_handle()'s handle, cached here as
 *         store.c's old store_stmt() cached it, + sqlite3_bind_*(SQLITE_STATIC)
 *         + sqlite3_step(): the path the modules took before their conversion;
 *   db    store_q() + db_bind_*() + db_step(), the converted path (the
 *         layer copies each parameter and binds it at the step).
 *
 * Work: idem.c's lookup (a point SELECT by actor and key, hit) and the
 * UPDATE that keeps an answer, K rows each, inside one transaction so the
 * fsync does not hide the per-statement cost.  Rounds alternate raw / db
 * (and which goes first) so load from other processes falls on both; prints the best round of each
 * and the ratio db / raw.  Nothing asserted.
 *
 *   dbconv-bench [K [ROUNDS]]     (defaults 20000, 5)
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "../common/util.h"
#include "../orchestrator/db/db.h"
#include "../orchestrator/store.h"

#include <sqlite3.h>

#define Q_SELECT "SELECT fingerprint, status, body, instance FROM idempotency WHERE actor = ? AND key = ?"
#define Q_UPDATE "UPDATE idempotency SET status = ?3, body = ?4 WHERE actor = ?1 AND key = ?2"

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The raw path's statement cache, keyed by the literal's address, as
 * store_stmt() kept it before the bridge went. */
static struct {
	const char *sql;
	sqlite3_stmt *st;
} g_raw[2];

static sqlite3_stmt *raw_stmt(struct store *s, const char *sql)
{
	size_t i;
	for (i = 0; i < OTA_ARRAY_SIZE(g_raw) && g_raw[i].sql; i++) {
		if (g_raw[i].sql == sql) {
			sqlite3_reset(g_raw[i].st);
			sqlite3_clear_bindings(g_raw[i].st);
			return g_raw[i].st;
		}
	}
	if (i == OTA_ARRAY_SIZE(g_raw) ||
	    sqlite3_prepare_v3(db_sqlite_handle(store_conn(s)), sql, -1, SQLITE_PREPARE_PERSISTENT, &g_raw[i].st, NULL) != SQLITE_OK) {
		fprintf(stderr, "raw: cannot prepare %s\n", sql);
		exit(1);
	}
	g_raw[i].sql = sql;
	return g_raw[i].st;
}

static void raw_release(void)
{
	for (size_t i = 0; i < OTA_ARRAY_SIZE(g_raw); i++) {
		sqlite3_finalize(g_raw[i].st);
		g_raw[i].st = NULL;
		g_raw[i].sql = NULL;
	}
}

static void key_of(int i, char *out, size_t n)
{
	snprintf(out, n, "key-%08d", i);
}

static int seed(struct store *s, int k)
{
	struct db_stmt *st;
	char key[32];

	if (store_begin(s) < 0)
		return OTA_ERROR;
	for (int i = 0; i < k; i++) {
		st = store_q(s, "INSERT INTO idempotency(actor, key, fingerprint, status, instance, created_at)"
				" VALUES ('ci', ?, 'fp', 201, 'x', 1)");
		if (!st)
			return OTA_ERROR;
		key_of(i, key, sizeof(key));
		db_bind_text(st, 1, key);
		if (db_run(st) < 0)
			return OTA_ERROR;
	}
	return store_commit(s);
}

static double round_raw(struct store *s, int k)
{
	double t0 = now_s();
	char key[32];

	store_begin(s);
	for (int i = 0; i < k; i++) {
		sqlite3_stmt *st = raw_stmt(s, Q_SELECT);
		key_of(i, key, sizeof(key));
		sqlite3_bind_text(st, 1, "ci", -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
		if (sqlite3_step(st) != SQLITE_ROW || sqlite3_column_int(st, 1) != 201)
			fprintf(stderr, "raw: row %d missing\n", i);
		sqlite3_reset(st);
		st = raw_stmt(s, Q_UPDATE);
		sqlite3_bind_text(st, 1, "ci", -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
		sqlite3_bind_int(st, 3, 201);
		sqlite3_bind_text(st, 4, "{\"id\":7}", 8, SQLITE_STATIC);
		if (sqlite3_step(st) != SQLITE_DONE)
			fprintf(stderr, "raw: update %d failed\n", i);
		sqlite3_reset(st);
	}
	store_commit(s);
	return 2.0 * k / (now_s() - t0);
}

static double round_db(struct store *s, int k)
{
	double t0 = now_s();
	char key[32];

	store_begin(s);
	for (int i = 0; i < k; i++) {
		struct db_stmt *st = store_q(s, Q_SELECT);
		key_of(i, key, sizeof(key));
		db_bind_text(st, 1, "ci");
		db_bind_text(st, 2, key);
		if (db_step(st) != 1 || db_column_int64(st, 1) != 201)
			fprintf(stderr, "db: row %d missing\n", i);
		db_reset(st);
		st = store_q(s, Q_UPDATE);
		db_bind_text(st, 1, "ci");
		db_bind_text(st, 2, key);
		db_bind_int64(st, 3, 201);
		db_bind_text_n(st, 4, "{\"id\":7}", 8);
		db_run(st);
	}
	store_commit(s);
	return 2.0 * k / (now_s() - t0);
}

int main(int argc, char **argv)
{
	int k = argc > 1 ? atoi(argv[1]) : 20000, rounds = argc > 2 ? atoi(argv[2]) : 5;
	const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	char *dir = xasprintf("%s/dbconv-bench-XXXXXX", tmp), *path;
	double raw = 0, dbl = 0;
	struct store *s;

	if (k < 1 || rounds < 1 || !mkdtemp(dir)) {
		fprintf(stderr, "usage: dbconv-bench [K [ROUNDS]] (and a writable $TMPDIR)\n");
		return 2;
	}
	path = xasprintf("%s/otacd.db", dir);
	if (store_open(&s, path) < 0 || seed(s, k) < 0) {
		fprintf(stderr, "dbconv-bench: %s\n", ota_error_last());
		return 1;
	}
	for (int r = 0; r < rounds; r++) {
		/* which goes first alternates too: the second finds warm pages */
		double a, b;
		if (r % 2) {
			b = round_db(s, k);
			a = round_raw(s, k);
		} else {
			a = round_raw(s, k);
			b = round_db(s, k);
		}
		raw = a > raw ? a : raw;
		dbl = b > dbl ? b : dbl;
	}
	printf("statements/s, best of %d rounds of %d lookups + %d updates in one transaction\n", rounds, k, k);
	printf("raw sqlite3_*        %10.0f\n", raw);
	printf("db.h (converted)     %10.0f\n", dbl);
	printf("db / raw             %10.2f\n", dbl / raw);
	raw_release();
	store_close(s);
	unlink(path);
	{
		char *wal = xasprintf("%s-wal", path), *shm = xasprintf("%s-shm", path);
		unlink(wal);
		unlink(shm);
		free(wal);
		free(shm);
	}
	rmdir(dir);
	free(path);
	free(dir);
	return 0;
}
