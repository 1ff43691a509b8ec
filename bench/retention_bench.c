/*
 * retention_bench.c - otacd.db's size after N runs with retention on and
 * off, and how long the pruner holds the writer per batch
 * (docs/benchmarks.md, retention).
 *
 * Runs are written straight through the store (prepared statements on the
 * writer connection, 500 runs per transaction), not through the HTTP API:
 * 100,000 runs through agents would take hours here, and the database rows
 * are the same.  Each run has the shape of a small pipeline's: its YAML
 * (~600 bytes), 3 stages, 4 jobs with their specs, 4 attempts and 10
 * events; run i finishes at i * 5 minutes (100,000 runs: about a year).
 *
 * Three databases in fresh directories under $TMPDIR, same run:
 *
 *   off       no retention (the baseline);
 *   on        retention { runs_max_age: 30d, runs_keep: 10000, batch: 50 }
 *             on a new database (auto_vacuum=INCREMENTAL, store.c), a pass
 *             after every 2,000 runs written, then retention_maintain() as
 *             the engine does (4,096 pages back per pass);
 *   on-old    the same on a database created before auto_vacuum was set
 *             (auto_vacuum=NONE): free pages are reused, the file does not
 *             shrink.
 *
 * Prints the size of otacd.db + WAL for each, the ratios to `off`, the size
 * at N/2 and N for `on` (bounded: about the same), and the time each batch
 * held the writer (BEGIN IMMEDIATE to COMMIT returned, fsync included):
 * p50, p99, max, and of that the COMMIT alone.  Nothing asserted.
 *
 *   retention-bench [N]     (default 100000)
 */
#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/util.h"
#include "../orchestrator/db/db.h"
#include "../orchestrator/logstore.h"
#include "../orchestrator/retention.h"
#include "../orchestrator/store.h"
#include "flight.h"

#define PER_TX 500
#define PASS_EVERY 2000
#define STEP_MS (5LL * 60 * 1000)

static const char YAML[] =
	"name: sensor-node\non: { push: { branches: [main] } }\nstages:\n"
	"  - name: build\n    kind: build\n    matrix: { board: [mps2-an385, mps2-an386] }\n"
	"    agent: { labels: [arm-gcc] }\n    steps: [ { run: \"make BOARD=${{ matrix.board }}\" } ]\n"
	"    artifacts: [ { path: \"build/${{ matrix.board }}/app.bin\", type: application } ]\n"
	"  - { name: unit-tests, kind: test, steps: [ { run: make test } ], reports: { junit: \"build/test/*.xml\" } }\n"
	"  - { name: static-analysis, kind: analysis, steps: [ { run: make lint } ],"
	" reports: { cppcheck: build/cppcheck.xml }, thresholds: { error: 0 } }\n";

static const char SPEC[] =
	"{\"name\":\"build\",\"steps\":[{\"run\":\"make BOARD=mps2-an385\"}],\"labels\":[\"arm-gcc\"],"
	"\"env\":{\"BOARD\":\"mps2-an385\"},\"artifacts\":[{\"path\":\"build/mps2-an385/app.bin\"}],"
	"\"timeout_ms\":3600000,\"retry\":{\"max\":1}}";

struct series {
	double *v;
	size_t n, cap;
};

static void series_add(struct series *s, double x)
{
	if (s->n == s->cap) {
		s->cap = s->cap ? 2 * s->cap : 256;
		s->v = xrealloc(s->v, s->cap * sizeof(*s->v));
	}
	s->v[s->n++] = x;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static double series_pct(struct series *s, double p)
{
	size_t i;
	if (!s->n)
		return 0;
	qsort(s->v, s->n, sizeof(*s->v), cmp_double);
	i = (size_t)ceil(p * (double)s->n) - 1;
	return s->v[i < s->n ? i : s->n - 1];
}

/* Run an INSERT ... RETURNING id: its id in *id. */
static int insert_id(struct db_stmt *st, int64_t *id)
{
	int rc = db_step(st);
	if (rc == 1)
		*id = db_column_int64(st, 0);
	db_reset(st);
	return rc == 1 ? 0 : OTA_ERROR;
}

/* Write run number i (finished at i * STEP_MS) with its stages, jobs,
 * attempts and events, in the caller's transaction. */
static int write_run(struct store *s, int64_t i)
{
	int64_t t = i * STEP_MS, run, stage = 0, job;
	struct db_stmt *st = store_q(s, "INSERT INTO runs(pipeline, file, yaml, ref, commit_id, state, trigger,"
				      " created_at, started_at, finished_at, repo, message)"
				      " VALUES ('sensor-node', '.otacd/pipeline.yml', ?, 'refs/heads/main',"
				      " 'c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00', 'passed', 'webhook', ?, ?, ?,"
				      " 'firmware', 'sensor: fix the watchdog kick in the low-power path') RETURNING id");
	int rc;

	if (!st)
		return OTA_ERROR;
	db_bind_text(st, 1, YAML);
	db_bind_int64(st, 2, t - 60000);
	db_bind_int64(st, 3, t - 55000);
	db_bind_int64(st, 4, t);
	if ((rc = insert_id(st, &run)) < 0)
		return rc;
	for (int k = 0; k < 4; k++) {
		if (k < 3) {
			st = store_q(s, "INSERT INTO stages(run_id, idx, name, kind, state, needs, started_at, finished_at)"
					   " VALUES (?, ?, printf('stage-%d', ?), 'build', 'passed', '[]', ?, ?) RETURNING id");
			if (!st)
				return OTA_ERROR;
			db_bind_int64(st, 1, run);
			db_bind_int64(st, 2, k);
			db_bind_int64(st, 3, k);
			db_bind_int64(st, 4, t - 50000);
			db_bind_int64(st, 5, t);
			if ((rc = insert_id(st, &stage)) < 0)
				return rc;
		}
		st = store_q(s, "INSERT INTO jobs(run_id, stage_id, idx, name, spec, state, attempt, retries_left,"
				   " infra_retries_left, agent_id, started_at, finished_at, exit_code, message)"
				   " VALUES (?, ?, ?, printf('job-%d', ?), ?, 'passed', 1, 1, 2, 1, ?, ?, 0, 'exit 0') RETURNING id");
		if (!st)
			return OTA_ERROR;
		db_bind_int64(st, 1, run);
		db_bind_int64(st, 2, stage);
		db_bind_int64(st, 3, k);
		db_bind_int64(st, 4, k);
		db_bind_text(st, 5, SPEC);
		db_bind_int64(st, 6, t - 50000);
		db_bind_int64(st, 7, t);
		if ((rc = insert_id(st, &job)) < 0)
			return rc;
		st = store_q(s, "INSERT INTO job_attempts(job_id, attempt, agent_id, started_at, finished_at, exit_code,"
				   " message) VALUES (?, 1, 1, ?, ?, 0, 'exit 0')");
		if (!st)
			return OTA_ERROR;
		db_bind_int64(st, 1, job);
		db_bind_int64(st, 2, t - 50000);
		db_bind_int64(st, 3, t);
		if ((rc = db_run(st)) < 0)
			return rc;
		for (int e = 0; e < (k < 2 ? 3 : 2); e++) {
			st = store_q(s, "INSERT INTO events(at, run_id, job_id, kind, detail) VALUES (?, ?, ?, ?,"
					   " '{\"attempt\":1,\"agent\":\"local-1\"}')");
			if (!st)
				return OTA_ERROR;
			db_bind_int64(st, 1, t - 1000 * e);
			db_bind_int64(st, 2, run);
			db_bind_int64(st, 3, job);
			db_bind_text(st, 4, e == 0 ? "job.claimed" : e == 1 ? "job.started" : "job.passed");
			if ((rc = db_run(st)) < 0)
				return rc;
		}
	}
	return 0;
}

/* One retention pass at otacd time now, timing each batch's transaction. */
static int prune_pass(struct store *s, const struct retention_cfg *cfg, int64_t now, struct series *held,
		      struct series *commit)
{
	struct retention_pass p;
	struct retention_out out = { 0 };
	int rc, freed;

	retention_pass_start(&p, now);
	do {
		double t0 = bench_now_s();
		if ((rc = store_begin(s)) < 0)
			break;
		if ((rc = retention_batch(s, cfg, &p, &out)) < 0) {
			store_rollback(s);
			break;
		}
		double t1 = bench_now_s();
		if (store_commit(s) < 0) {
			rc = OTA_ERROR;
			break;
		}
		series_add(held, (bench_now_s() - t0) * 1000);
		series_add(commit, (bench_now_s() - t1) * 1000);
		retention_after_commit(&out);
	} while (rc == 1);
	retention_out_release(&out);
	if (rc < 0)
		return rc;
	return retention_maintain(s, 4096, &freed);
}

static int64_t file_size(const char *path)
{
	struct stat sb;
	return stat(path, &sb) == 0 ? (int64_t)sb.st_size : 0;
}

static int64_t db_bytes(const char *dir)
{
	char *db = xasprintf("%s/otacd.db", dir), *wal = xasprintf("%s/otacd.db-wal", dir);
	int64_t n = file_size(db) + file_size(wal);
	free(db);
	free(wal);
	return n;
}

/* Remove what fill() made: the database files and the empty log folder. */
static void remove_dir(const char *dir)
{
	static const char *const names[] = { "otacd.db", "otacd.db-wal", "otacd.db-shm" };
	for (size_t i = 0; i < OTA_ARRAY_SIZE(names); i++) {
		char *p = xasprintf("%s/%s", dir, names[i]);
		unlink(p);
		free(p);
	}
	{
		char *logs = xasprintf("%s/logs", dir);
		rmdir(logs);
		free(logs);
	}
	rmdir(dir);
}

enum mode { OFF, ON, ON_OLD };

/* Write n runs into a fresh database in mode m; *half is the size after
 * n/2 runs, the result the size at the end (negative: error). */
static int64_t fill(enum mode m, int64_t n, int64_t *half, struct series *held, struct series *commit,
		    int64_t *kept)
{
	char *dir = xasprintf("%s/otacd-retention-bench-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	char *path = xasprintf("%s/otacd.db", mkdtemp(dir) ? dir : "/nonexistent");
	struct retention_cfg cfg = { 30 * 86400 * 1000LL, 10000, 0, RETENTION_DEFAULT_BATCH, 0, 0 };
	struct store *s = NULL;
	int64_t size = -1;
	int rc = 0;

	if (m == ON_OLD) {
		/* a database made before store.c set auto_vacuum */
		sqlite3 *raw;
		if (sqlite3_open(path, &raw) != SQLITE_OK ||
		    sqlite3_exec(raw, "CREATE TABLE old_marker(x)", NULL, NULL, NULL) != SQLITE_OK) {
			fprintf(stderr, "retention-bench: cannot create %s\n", path);
			sqlite3_close(raw);
			goto out;
		}
		sqlite3_close(raw);
	}
	if (store_open(&s, path) < 0 || logstore_init(dir, 0) < 0) {
		fprintf(stderr, "retention-bench: %s\n", ota_error_last());
		goto out;
	}
	for (int64_t i = 1; i <= n && rc == 0; i++) {
		if ((i - 1) % PER_TX == 0 && (rc = store_begin(s)) < 0)
			break;
		if ((rc = write_run(s, i)) < 0)
			break;
		if ((i % PER_TX == 0 || i == n) && (rc = store_commit(s)) < 0)
			break;
		if (m != OFF && (i % PASS_EVERY == 0 || i == n))
			rc = prune_pass(s, &cfg, i * STEP_MS, held, commit);
		if (i == n / 2) {
			if (m == OFF)
				sqlite3_wal_checkpoint_v2(db_sqlite_handle(store_conn(s)), NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
			*half = db_bytes(dir);
		}
	}
	if (rc < 0) {
		store_rollback(s);
		fprintf(stderr, "retention-bench: %s\n", ota_error_last());
		goto out;
	}
	/* the same checkpoint for the baseline: compare files, not WALs */
	if (m == OFF)
		sqlite3_wal_checkpoint_v2(db_sqlite_handle(store_conn(s)), NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
	{
		struct db_stmt *st = store_q(s, "SELECT COUNT(*) FROM runs");
		*kept = st && db_step(st) == 1 ? db_column_int64(st, 0) : -1;
		if (st)
			db_reset(st);
	}
	size = db_bytes(dir);
out:
	store_close(s);
	remove_dir(dir);
	free(path);
	free(dir);
	return size;
}

int main(int argc, char **argv)
{
	int64_t n = argc > 1 ? atoll(argv[1]) : 100000;
	static const char *const names[] = { "off", "on", "on-old" };
	int64_t size[3], half[3] = { 0 }, kept[3];
	struct series held[3] = { { 0 } }, commit[3] = { { 0 } };

	if (n < 2) {
		fprintf(stderr, "usage: retention-bench [RUNS]\n");
		return 2;
	}
	for (int m = OFF; m <= ON_OLD; m++) {
		double t0 = bench_now_s();
		if ((size[m] = fill((enum mode)m, n, &half[m], &held[m], &commit[m], &kept[m])) < 0)
			return 1;
		printf("%-7s %7lld runs written, %6lld kept: %8.1f MB at %lld runs, %8.1f MB at %lld (%.0f s)\n",
		       names[m], (long long)n, (long long)kept[m], half[m] / 1e6, (long long)(n / 2), size[m] / 1e6,
		       (long long)n, bench_now_s() - t0);
	}
	printf("size with retention / without:   on %.3f   on-old (auto_vacuum=NONE) %.3f\n",
	       (double)size[ON] / (double)size[OFF], (double)size[ON_OLD] / (double)size[OFF]);
	printf("bounded: on's size at %lld runs / at %lld: %.2f\n", (long long)n, (long long)(n / 2),
	       (double)size[ON] / (double)half[ON]);
	for (int m = ON; m <= ON_OLD; m++)
		printf("writer held per batch of %d runs (%s, %zu batches): p50 %.2f ms  p99 %.2f ms  max %.2f ms\n",
		       RETENTION_DEFAULT_BATCH, names[m], held[m].n, series_pct(&held[m], 0.5),
		       series_pct(&held[m], 0.99), series_pct(&held[m], 1.0));
	/* the commit: the WAL fsync, and every ~1,000 WAL pages the
	 * passive checkpoint store.c's WAL hook runs (any commit pays it) */
	for (int m = ON; m <= ON_OLD; m++)
		printf("  of which COMMIT (%s): p50 %.2f ms  p99 %.2f ms  max %.2f ms\n", names[m],
		       series_pct(&commit[m], 0.5), series_pct(&commit[m], 0.99), series_pct(&commit[m], 1.0));
	for (int m = 0; m < 3; m++) {
		free(held[m].v);
		free(commit[m].v);
	}
	return 0;
}
