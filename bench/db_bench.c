/*
 * db_bench.c - the storage layer's two backends side by side, same run,
 * same disk (docs/benchmarks.md, storage backends).
 *
 * SQLite (a file in $TMPDIR, synchronous=FULL: the daemon's setting) and
 * PostgreSQL (a cluster this program starts in $TMPDIR with initdb and
 * pg_ctl, fsync on, over its unix socket), each through orchestrator/db:
 *
 *   commits/s   N single-row INSERT ... RETURNING id, each its own
 *               transaction (the shape of an API write)
 *   rows/s      R rows inserted in one transaction
 *   selects/s   S point SELECTs by primary key
 *
 * Prints each figure and the ratio PostgreSQL / SQLite.  Nothing asserted.
 *
 *   db-bench [N [R [S]]]     (defaults 1000, 50000, 50000)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../common/util.h"
#include "../orchestrator/db/db.h"
#include "../tests/pgcluster.h"

struct figures {
	double commits, rows, selects;
};

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int insert_one(struct db *db, int64_t i)
{
	struct db_stmt *st = db_stmt(db, "INSERT INTO kv(k, v) VALUES (?, ?) RETURNING id");
	int rc;

	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, i);
	db_bind_text(st, 2, "a value of a few dozen bytes, like a state or a name");
	rc = db_step(st);
	db_reset(st);
	return rc == 1 ? 0 : (rc < 0 ? rc : OTA_ERROR);
}

static int measure(const char *url, int n, int r, int s, struct figures *f)
{
	struct db *db;
	double t0;
	int rc;

	if ((rc = db_open(&db, url, 0)) < 0)
		return rc;
	if ((rc = db_exec(db, "CREATE TABLE kv (id INTEGER PRIMARY KEY, k INTEGER NOT NULL, v TEXT NOT NULL)")) < 0)
		goto out;

	t0 = now_s();
	for (int i = 0; i < n && rc == 0; i++)
		rc = insert_one(db, i);
	f->commits = n / (now_s() - t0);

	t0 = now_s();
	if (rc == 0)
		rc = db_begin(db);
	for (int i = 0; i < r && rc == 0; i++)
		rc = insert_one(db, n + i);
	if (rc == 0)
		rc = db_commit(db);
	f->rows = r / (now_s() - t0);

	t0 = now_s();
	for (int i = 0; i < s && rc == 0; i++) {
		struct db_stmt *st = db_stmt(db, "SELECT k, v FROM kv WHERE id = ?");
		if (!st) {
			rc = OTA_ERROR;
			break;
		}
		db_bind_int64(st, 1, 1 + i % (n + r));
		if (db_step(st) != 1)
			rc = OTA_ERROR;
		db_reset(st);
	}
	f->selects = s / (now_s() - t0);
out:
	if (rc < 0)
		fprintf(stderr, "db-bench: %s: %s\n", url, db_errmsg(db));
	db_close(db);
	return rc;
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 1000;
	int r = argc > 2 ? atoi(argv[2]) : 50000;
	int s = argc > 3 ? atoi(argv[3]) : 50000;
	const char *tmp = getenv("TMPDIR");
	char dir[256], url[300];
	struct figures lite = { 0 }, pg = { 0 };
	struct pgcluster cluster;
	int rc;

	snprintf(dir, sizeof(dir), "%s/otacd-dbbench-XXXXXX", tmp && *tmp ? tmp : "/tmp");
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	snprintf(url, sizeof(url), "sqlite:%s/bench.db", dir);
	if (measure(url, n, r, s, &lite) < 0)
		return 1;
	snprintf(url, sizeof(url), "%s/bench.db", dir);
	remove(url);
	snprintf(url, sizeof(url), "%s/bench.db-wal", dir);
	remove(url);
	snprintf(url, sizeof(url), "%s/bench.db-shm", dir);
	remove(url);
	rmdir(dir);

	rc = pgcluster_start(&cluster, 1);
	if (rc == 1) {
		printf("PostgreSQL is not installed: SQLite only\n");
	} else if (rc < 0) {
		fprintf(stderr, "db-bench: %s\n", ota_error_last());
		return 1;
	} else if (measure(cluster.url, n, r, s, &pg) < 0) {
		pgcluster_stop(&cluster);
		return 1;
	}
	pgcluster_stop(&cluster);

	printf("%-28s %12s %12s %8s\n", "", "SQLite", "PostgreSQL", "PG/SQL");
	printf("%-28s %12.0f %12.0f %8.2f\n", "commits/s (1 row each)", lite.commits, pg.commits,
	       pg.commits / lite.commits);
	printf("%-28s %12.0f %12.0f %8.2f\n", "rows/s (one transaction)", lite.rows, pg.rows, pg.rows / lite.rows);
	printf("%-28s %12.0f %12.0f %8.2f\n", "point selects/s", lite.selects, pg.selects,
	       pg.selects / lite.selects);
	return 0;
}
