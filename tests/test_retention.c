/*
 * test_retention.c - pruning finished runs by age and count (issue 18,
 * orchestrator/retention.h).
 *
 * The end-to-end tests run the real daemon and local agents: runs made
 * through the API are aged by rewriting their times in the database while
 * otacd is stopped (otacd time cannot be moved back), then otacd is
 * started with a retention bound and the test watches what its pruner
 * deleted.  The kill test fills a database with thousands of finished runs
 * (rows and log files, written directly, as otacd's schema has them),
 * SIGKILLs otacd while it prunes them one run per transaction and checks
 * the database and the log directory after the kill and after a restart.
 */
#include <dirent.h>
#include <setjmp.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "../orchestrator/config.h"
#include "../orchestrator/db/db.h"
#include "../orchestrator/logstore.h"
#include "../orchestrator/retention.h"
#include "../orchestrator/store.h"
#include "harness.h"

#define DAY_MS (86400LL * 1000)

static const char *const TRIVIAL = "name: plain\nstages:\n"
				   "  - { name: hello, steps: [ { run: 'echo hello from the job' } ] }\n";

/* ---- direct database access (otacd stopped, or reads) ----------------- */

static sqlite3 *state_db_open(struct daemon *d)
{
	char *path = xasprintf("%s/state/otacd.db", d->dir);
	sqlite3 *db = NULL;
	assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
	sqlite3_busy_timeout(db, 10000);
	free(path);
	return db;
}

static void state_db_exec(sqlite3 *db, const char *fmt, ...) OTA_PRINTF(2, 3);
static void state_db_exec(sqlite3 *db, const char *fmt, ...)
{
	va_list ap;
	char *sql, *err = NULL;
	va_start(ap, fmt);
	sql = sqlite3_vmprintf(fmt, ap);
	va_end(ap);
	if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK)
		fail_msg("%s: %s", sql, err ? err : "?");
	sqlite3_free(sql);
}

static int64_t db_int(sqlite3 *db, const char *fmt, ...) OTA_PRINTF(2, 3);
static int64_t db_int(sqlite3 *db, const char *fmt, ...)
{
	va_list ap;
	char *sql;
	sqlite3_stmt *st;
	int64_t v = -1;
	va_start(ap, fmt);
	sql = sqlite3_vmprintf(fmt, ap);
	va_end(ap);
	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
		fail_msg("%s: %s", sql, sqlite3_errmsg(db));
	if (sqlite3_step(st) == SQLITE_ROW)
		v = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	sqlite3_free(sql);
	return v;
}

static int64_t sql_int(struct daemon *d, const char *fmt, ...) OTA_PRINTF(2, 3);
static int64_t sql_int(struct daemon *d, const char *fmt, ...)
{
	va_list ap;
	char *sql;
	int64_t v;
	va_start(ap, fmt);
	sql = sqlite3_vmprintf(fmt, ap);
	va_end(ap);
	v = h_sql_int(d, sql);
	sqlite3_free(sql);
	return v;
}

/* Nothing in the database names a run, job or rollout that is gone. */
static void assert_consistent(sqlite3 *db)
{
	sqlite3_stmt *st;
	assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	assert_string_equal((const char *)sqlite3_column_text(st, 0), "ok");
	sqlite3_finalize(st);
	assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA foreign_key_check", -1, &st, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_step(st), SQLITE_DONE);
	sqlite3_finalize(st);
	assert_int_equal(db_int(db, "SELECT COUNT(*) FROM stages WHERE run_id NOT IN (SELECT id FROM runs)"), 0);
	assert_int_equal(db_int(db, "SELECT COUNT(*) FROM jobs WHERE run_id NOT IN (SELECT id FROM runs)"), 0);
	assert_int_equal(db_int(db, "SELECT COUNT(*) FROM job_attempts WHERE job_id NOT IN (SELECT id FROM jobs)"), 0);
	assert_int_equal(db_int(db, "SELECT COUNT(*) FROM events WHERE run_id IS NOT NULL"
				    " AND run_id NOT IN (SELECT id FROM runs)"), 0);
	assert_int_equal(db_int(db, "SELECT COUNT(*) FROM artifacts WHERE run_id NOT IN (SELECT id FROM runs)"), 0);
	assert_int_equal(db_int(db, "SELECT COUNT(*) FROM releases WHERE run_id NOT IN (SELECT id FROM runs)"), 0);
	/* a run is deleted whole or not at all */
	assert_int_equal(db_int(db, "SELECT COUNT(*) FROM runs r WHERE r.state = 'passed'"
				    " AND NOT EXISTS (SELECT 1 FROM jobs WHERE run_id = r.id)"), 0);
}

static int log_dir_exists(struct daemon *d, int64_t job)
{
	char *p = xasprintf("%s/state/logs/%lld", d->dir, (long long)job);
	struct stat sb;
	int yes = stat(p, &sb) == 0;
	free(p);
	return yes;
}

/* Log directories whose job is not in the database. */
static int orphan_logs(struct daemon *d, sqlite3 *db)
{
	char *p = xasprintf("%s/state/logs", d->dir);
	DIR *dir = opendir(p);
	struct dirent *de;
	int n = 0;
	assert_non_null(dir);
	while ((de = readdir(dir)) != NULL)
		if (de->d_name[0] >= '1' && de->d_name[0] <= '9' &&
		    db_int(db, "SELECT COUNT(*) FROM jobs WHERE id = %s", de->d_name) == 0)
			n++;
	closedir(dir);
	free(p);
	return n;
}

static void write_config(struct daemon *d, const char *text)
{
	free(d->config);
	d->config = xasprintf("%s/config.yml", d->dir);
	assert_int_equal(ota_write_file_atomic(d->config, text, strlen(text), 0600), 0);
}

static int64_t job_of(struct daemon *d, int64_t run)
{
	return sql_int(d, "SELECT MIN(id) FROM jobs WHERE run_id = %lld", (long long)run);
}

/* Move a finished run's times back by days (otacd stopped). */
static void age_run(sqlite3 *db, int64_t run, int days)
{
	state_db_exec(db, "UPDATE runs SET created_at = created_at - %lld, started_at = started_at - %lld,"
		    " finished_at = finished_at - %lld WHERE id = %lld",
		(long long)(days * DAY_MS), (long long)(days * DAY_MS), (long long)(days * DAY_MS), (long long)run);
}

/* Wait until sql (a count) reaches want; the pruner runs at start. */
static void wait_count(struct daemon *d, const char *sql, int64_t want)
{
	for (int i = 0; i < 6000 && h_sql_int(d, sql) != want; i++)
		h_msleep(20);
	assert_int_equal(h_sql_int(d, sql), want);
}

/* ---- end to end --------------------------------------------------------- */

/*
 * Runs finished longer ago than runs_max_age go with their stages, jobs,
 * attempts, events and log files; recent ones stay untouched; a run that
 * produced a release stays, and so does one whose release is in a soak.
 */
static void old_runs_go_with_their_logs_releases_stay(void **state)
{
	struct daemon d;
	struct buf out = BUF_INIT;
	const char *const args[] = { "--local-agents", "2", NULL };
	int64_t old[2], recent[2], released, soaking;
	char *cfg, *rel, *soak;
	sqlite3 *db;
	(void)state;

	h_init(&d, NULL);
	assert_int_equal(h_sh(&out, "cd %s && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256"
				    " -out key.pem 2>/dev/null", d.dir), 0);
	/* first without pruning: the runs are made and aged */
	cfg = xasprintf("keys:\n  k1: { spec: %s/key.pem }\nretention: { runs_max_age: off, runs_keep: off,"
			" logs_max_age: off }\n", d.dir);
	write_config(&d, cfg);
	assert_int_equal(h_start(&d, args), 0);
	rel = xstrdup("name: fw\nstages:\n"
		      "  - name: build\n    steps: [ { run: 'head -c 3000 /dev/zero > app.bin' } ]\n"
		      "    artifacts: [ { path: app.bin, type: application, hardware: an385 } ]\n"
		      "  - { name: release, kind: release, needs: [build], version: \"1.0.0\", security_counter: 1,"
		      " key: k1 }\n");
	soak = xstrdup("name: fw\nstages:\n"
		       "  - name: build\n    steps: [ { run: 'head -c 3000 /dev/zero > app.bin' } ]\n"
		       "    artifacts: [ { path: app.bin, type: application, hardware: an385 } ]\n"
		       "  - { name: release, kind: release, needs: [build], version: \"1.1.0\", security_counter: 1,"
		       " key: k1 }\n"
		       "  - { name: staging, kind: soak, needs: [release], cohort: { group: staging }, duration: 30d }\n");
	for (int i = 0; i < 2; i++) {
		old[i] = h_trigger(&d, TRIVIAL);
		assert_string_equal(h_wait_run(&d, old[i], 60000), "passed");
	}
	released = h_trigger(&d, rel);
	assert_string_equal(h_wait_run(&d, released, 60000), "passed");
	soaking = h_trigger(&d, soak);
	for (int i = 0; i < 3000 && sql_int(&d, "SELECT COUNT(*) FROM rollouts WHERE run_id = %lld AND state = 'holding'",
					    (long long)soaking) != 1; i++)
		h_msleep(20);
	assert_int_equal(sql_int(&d, "SELECT COUNT(*) FROM rollouts WHERE run_id = %lld", (long long)soaking), 1);
	for (int i = 0; i < 2; i++) {
		recent[i] = h_trigger(&d, TRIVIAL);
		assert_string_equal(h_wait_run(&d, recent[i], 60000), "passed");
	}
	for (int i = 0; i < 2; i++) {
		assert_true(log_dir_exists(&d, job_of(&d, old[i])));
		assert_true(log_dir_exists(&d, job_of(&d, recent[i])));
	}
	h_kill(&d, SIGTERM);

	db = state_db_open(&d);
	for (int i = 0; i < 2; i++)
		age_run(db, old[i], 200);
	age_run(db, released, 200);
	state_db_exec(db, "UPDATE runs SET created_at = created_at - %lld WHERE id = %lld", (long long)(200 * DAY_MS),
		(long long)soaking);
	int64_t old_jobs[2] = { db_int(db, "SELECT MIN(id) FROM jobs WHERE run_id = %lld", (long long)old[0]),
				db_int(db, "SELECT MIN(id) FROM jobs WHERE run_id = %lld", (long long)old[1]) };
	sqlite3_close(db);

	free(cfg);
	cfg = xasprintf("keys:\n  k1: { spec: %s/key.pem }\nretention: { runs_max_age: 90d }\n", d.dir);
	write_config(&d, cfg);
	assert_int_equal(h_start(&d, args), 0);
	{
		char *sql = xasprintf("SELECT COUNT(*) FROM runs WHERE id IN (%lld, %lld)", (long long)old[0],
				      (long long)old[1]);
		wait_count(&d, sql, 0);
		free(sql);
	}
	db = state_db_open(&d);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(db_int(db, "SELECT COUNT(*) FROM jobs WHERE run_id = %lld", (long long)old[i]), 0);
		assert_int_equal(db_int(db, "SELECT COUNT(*) FROM stages WHERE run_id = %lld", (long long)old[i]), 0);
		assert_int_equal(db_int(db, "SELECT COUNT(*) FROM events WHERE run_id = %lld", (long long)old[i]), 0);
		assert_int_equal(db_int(db, "SELECT COUNT(*) FROM job_attempts WHERE job_id = %lld",
					(long long)old_jobs[i]), 0);
		/* the log directory goes after the commit: poll */
		for (int k = 0; k < 500 && log_dir_exists(&d, old_jobs[i]); k++)
			h_msleep(20);
		assert_false(log_dir_exists(&d, old_jobs[i]));
		/* recent runs: untouched, logs and all */
		assert_int_equal(db_int(db, "SELECT COUNT(*) FROM runs WHERE id = %lld AND state = 'passed'",
					(long long)recent[i]), 1);
		assert_true(log_dir_exists(&d, job_of(&d, recent[i])));
		assert_true(db_int(db, "SELECT COUNT(*) FROM events WHERE run_id = %lld", (long long)recent[i]) > 0);
	}
	/* the released run, 200 days old, stays with its release and artifacts */
	assert_int_equal(db_int(db, "SELECT COUNT(*) FROM runs WHERE id = %lld", (long long)released), 1);
	assert_int_equal(db_int(db, "SELECT COUNT(*) FROM releases WHERE run_id = %lld", (long long)released), 1);
	assert_true(db_int(db, "SELECT COUNT(*) FROM artifacts WHERE run_id = %lld", (long long)released) >= 3);
	/* the run whose release is in a soak stays */
	assert_int_equal(db_int(db, "SELECT COUNT(*) FROM rollouts WHERE run_id = %lld AND state = 'holding'",
				(long long)soaking), 1);
	assert_int_equal(db_int(db, "SELECT COUNT(*) FROM releases WHERE run_id = %lld", (long long)soaking), 1);
	/* the API agrees */
	{
		char *path = xasprintf("/api/v1/runs/%lld", (long long)old[0]);
		assert_int_equal(h_get(&d, path, NULL), 404);
		free(path);
	}
	assert_consistent(db);
	sqlite3_close(db);
	free(cfg);
	free(rel);
	free(soak);
	buf_release(&out);
	h_cleanup(&d);
}

/* Fill the database with n finished runs created days ago, one stage,
 * job, attempt, two events and a log file each (otacd stopped). */
static void fill_runs(struct daemon *d, sqlite3 *db, int n, int days)
{
	int64_t t = (int64_t)time(NULL) * 1000 - days * DAY_MS;
	state_db_exec(db, "BEGIN");
	for (int i = 0; i < n; i++) {
		int64_t run, stage, job;
		char *dir, *file;
		state_db_exec(db, "INSERT INTO runs(pipeline, file, yaml, ref, state, trigger, created_at, started_at, finished_at)"
			    " VALUES ('bulk', 'bulk.yml', 'name: bulk', 'refs/heads/main', 'passed', 'api', %lld, %lld, %lld)",
			(long long)t, (long long)t, (long long)t + 1000);
		run = (int64_t)sqlite3_last_insert_rowid(db);
		state_db_exec(db, "INSERT INTO stages(run_id, idx, name, kind, state, needs) VALUES (%lld, 0, 'build', 'build',"
			    " 'passed', '[]')", (long long)run);
		stage = (int64_t)sqlite3_last_insert_rowid(db);
		state_db_exec(db, "INSERT INTO jobs(run_id, stage_id, idx, name, spec, state, attempt, retries_left,"
			    " infra_retries_left, finished_at) VALUES (%lld, %lld, 0, 'build', '{}', 'passed', 1, 0, 0, %lld)",
			(long long)run, (long long)stage, (long long)t + 1000);
		job = (int64_t)sqlite3_last_insert_rowid(db);
		state_db_exec(db, "INSERT INTO job_attempts(job_id, attempt, started_at, finished_at, exit_code)"
			    " VALUES (%lld, 1, %lld, %lld, 0)", (long long)job, (long long)t, (long long)t + 1000);
		state_db_exec(db, "INSERT INTO events(at, run_id, job_id, kind) VALUES (%lld, %lld, %lld, 'job.started'),"
			    " (%lld, %lld, %lld, 'job.passed')", (long long)t, (long long)run, (long long)job,
			(long long)t + 1000, (long long)run, (long long)job);
		dir = xasprintf("%s/state/logs/%lld", d->dir, (long long)job);
		file = xasprintf("%s/1.log", dir);
		assert_int_equal(ota_mkdir_p(dir, 0700), 0);
		{
			/* plain writes: thousands of fsyncs would take longer than the test */
			int fd = open(file, O_WRONLY | O_CREAT | O_TRUNC, 0600);
			assert_true(fd >= 0);
			assert_int_equal(write(fd, "build log\n", 10), 10);
			close(fd);
		}
		free(dir);
		free(file);
	}
	state_db_exec(db, "COMMIT");
}

/*
 * SIGKILL while the pruner deletes thousands of runs, one per
 * transaction: the database is intact (integrity, foreign keys, no run
 * half deleted); after a restart the pruner carries on and the log
 * directories of deleted jobs are gone, those of kept jobs are not.
 */
static void killed_mid_prune_restart_is_consistent(void **state)
{
	enum { N = 6000 };
	struct daemon d;
	const char *const args[] = { "--local-agents", "0", NULL };
	int64_t keep_run, keep_job, left;
	sqlite3 *db;
	(void)state;

	h_init(&d, NULL);
	write_config(&d, "retention: { runs_max_age: off, runs_keep: off, logs_max_age: off }\n");
	assert_int_equal(h_start(&d, args), 0);
	h_kill(&d, SIGTERM);
	db = state_db_open(&d);
	fill_runs(&d, db, N, 200);
	fill_runs(&d, db, 1, 0); /* one recent run: kept */
	keep_run = db_int(db, "SELECT MAX(id) FROM runs");
	keep_job = db_int(db, "SELECT id FROM jobs WHERE run_id = %lld", (long long)keep_run);
	sqlite3_close(db);

	write_config(&d, "retention: { runs_max_age: 90d, batch: 1 }\n");
	assert_int_equal(h_start(&d, args), 0);
	for (int i = 0; i < 6000 && h_sql_int(&d, "SELECT COUNT(*) FROM runs") > N - 20; i++)
		h_msleep(5);
	h_kill(&d, SIGKILL);

	db = state_db_open(&d);
	left = db_int(db, "SELECT COUNT(*) FROM runs");
	print_message("killed with %lld of %d runs left\n", (long long)left, N + 1);
	assert_true(left < N + 1);
	assert_true(left > 1); /* killed mid-prune, not after */
	assert_consistent(db);
	sqlite3_close(db);

	assert_int_equal(h_start(&d, args), 0);
	wait_count(&d, "SELECT COUNT(*) FROM runs", 1);
	db = state_db_open(&d);
	assert_consistent(db);
	assert_int_equal(db_int(db, "SELECT COUNT(*) FROM runs WHERE id = %lld", (long long)keep_run), 1);
	for (int k = 0; k < 500 && orphan_logs(&d, db) > 0; k++)
		h_msleep(20);
	assert_int_equal(orphan_logs(&d, db), 0);
	assert_true(log_dir_exists(&d, keep_job));
	sqlite3_close(db);
	h_cleanup(&d);
}

/* ---- the pruner on a store, and the configuration ----------------------- */

struct bare {
	char *dir;
	struct store *db;
};

static void bare_open(struct bare *b)
{
	char *path;
	b->dir = h_tmpdir();
	path = xasprintf("%s/otacd.db", b->dir);
	assert_int_equal(store_open(&b->db, path), 0);
	assert_int_equal(logstore_init(b->dir, 0), 0);
	free(path);
}

static void bare_close(struct bare *b)
{
	store_close(b->db);
	free(b->dir);
}

static void bare_fill(struct bare *b, int n, int64_t at)
{
	sqlite3 *db = db_sqlite_handle(store_conn(b->db));
	for (int i = 0; i < n; i++) {
		int64_t run;
		state_db_exec(db, "INSERT INTO runs(pipeline, file, yaml, ref, state, trigger, created_at, finished_at)"
			    " VALUES ('p', 'p.yml', 'x', 'refs/heads/main', 'failed', 'api', %lld, %lld)",
			(long long)at, (long long)at);
		run = (int64_t)sqlite3_last_insert_rowid(db);
		state_db_exec(db, "INSERT INTO stages(run_id, idx, name, kind, state, needs) VALUES (%lld, 0, 's', 'build',"
			    " 'failed', '[]')", (long long)run);
	}
}

static int prune_all(struct bare *b, const struct retention_cfg *cfg, int64_t now)
{
	struct retention_pass p;
	struct retention_out out = { 0 };
	int rc, batches = 0;
	retention_pass_start(&p, now);
	do {
		assert_int_equal(store_begin(b->db), 0);
		rc = retention_batch(b->db, cfg, &p, &out);
		assert_true(rc >= 0);
		assert_int_equal(store_commit(b->db), 0);
		retention_after_commit(&out);
		batches++;
	} while (rc == 1);
	retention_out_release(&out);
	return batches;
}

/* runs_keep keeps the newest runs whatever their age; a run with a
 * release row and an unfinished run stay however old; a batch never
 * deletes more than `batch` runs. */
static void runs_keep_bounds_the_count_and_spares_releases(void **state)
{
	struct bare b;
	struct retention_cfg cfg = { 0, 10, 0, 4, 0, 0 };
	sqlite3 *db;
	int64_t now = 1000 * DAY_MS;
	(void)state;

	bare_open(&b);
	db = db_sqlite_handle(store_conn(b.db));
	bare_fill(&b, 30, now - DAY_MS);
	state_db_exec(db, "INSERT INTO releases(run_id, product, version, branch, security_counter, key_id, created_at)"
		    " VALUES (2, 'fw', '1.0.0', 'main', 1, 'k', 0)");
	state_db_exec(db, "UPDATE runs SET state = 'running', finished_at = NULL WHERE id = 3");
	assert_true(prune_all(&b, &cfg, now) >= 18 / 4);
	/* 30 runs: the 10 newest kept, plus run 2 (release) and run 3 (running) */
	assert_int_equal(db_int(db, "SELECT COUNT(*) FROM runs"), 12);
	assert_int_equal(db_int(db, "SELECT MIN(id) FROM runs WHERE id > 3"), 21);
	assert_int_equal(db_int(db, "SELECT COUNT(*) FROM stages"), 12);
	assert_int_equal(db_int(db, "SELECT COUNT(*) FROM runs WHERE id IN (2, 3)"), 2);
	/* a second pass finds nothing more */
	prune_all(&b, &cfg, now);
	assert_int_equal(db_int(db, "SELECT COUNT(*) FROM runs"), 12);
	bare_close(&b);
}

/* The newest run stays even when past the age bound: SQLite would hand
 * its id out again. */
static void newest_run_is_never_deleted(void **state)
{
	struct bare b;
	struct retention_cfg cfg = { 30 * DAY_MS, 0, 0, 50, 0, 0 };
	int64_t now = 1000 * DAY_MS;
	(void)state;

	bare_open(&b);
	bare_fill(&b, 5, now - 100 * DAY_MS);
	prune_all(&b, &cfg, now);
	assert_int_equal(db_int(db_sqlite_handle(store_conn(b.db)), "SELECT COUNT(*) FROM runs"), 1);
	assert_int_equal(db_int(db_sqlite_handle(store_conn(b.db)), "SELECT id FROM runs"), 5);
	bare_close(&b);
}

/* Give run a job with a log file under b->dir/logs; returns the job id. */
static int64_t bare_job_with_log(struct bare *b, int64_t run)
{
	sqlite3 *db = db_sqlite_handle(store_conn(b->db));
	int64_t job;
	char *dir, *file;
	state_db_exec(db, "INSERT INTO jobs(run_id, stage_id, idx, name, spec, state, retries_left, infra_retries_left)"
		    " VALUES (%lld, (SELECT MIN(id) FROM stages WHERE run_id = %lld), 0, 'j', '{}', 'passed', 0, 0)",
		(long long)run, (long long)run);
	job = (int64_t)sqlite3_last_insert_rowid(db);
	dir = xasprintf("%s/logs/%lld", b->dir, (long long)job);
	file = xasprintf("%s/1.log", dir);
	assert_int_equal(ota_mkdir_p(dir, 0700), 0);
	assert_int_equal(ota_write_file_atomic(file, "log\n", 4, 0600), 0);
	free(dir);
	free(file);
	return job;
}

static int bare_log_exists(struct bare *b, int64_t job)
{
	char *p = xasprintf("%s/logs/%lld/1.log", b->dir, (long long)job);
	int yes = access(p, F_OK) == 0;
	free(p);
	return yes;
}

/* logs_max_age removes the log files of runs finished before it and
 * keeps their rows; newer runs, runs with a release and unfinished runs
 * keep their logs; the cursor makes a second pass start where the first
 * stopped. */
static void logs_max_age_removes_files_and_keeps_rows(void **state)
{
	struct bare b;
	struct retention_cfg cfg = { 0, 0, 10 * DAY_MS, 2, 0, 0 };
	int64_t now = 1000 * DAY_MS, job[6];
	sqlite3 *db;
	(void)state;

	bare_open(&b);
	db = db_sqlite_handle(store_conn(b.db));
	bare_fill(&b, 4, now - 20 * DAY_MS); /* runs 1-4: old */
	bare_fill(&b, 2, now - DAY_MS);      /* runs 5-6: recent */
	for (int i = 0; i < 6; i++)
		job[i] = bare_job_with_log(&b, i + 1);
	state_db_exec(db, "INSERT INTO releases(run_id, product, version, branch, security_counter, key_id, created_at)"
		    " VALUES (2, 'fw', '1.0.0', 'main', 1, 'k', 0)");
	state_db_exec(db, "UPDATE runs SET state = 'running', finished_at = NULL WHERE id = 3");
	prune_all(&b, &cfg, now);
	assert_false(bare_log_exists(&b, job[0]));
	assert_true(bare_log_exists(&b, job[1]));  /* a release's run */
	assert_true(bare_log_exists(&b, job[2]));  /* unfinished */
	assert_false(bare_log_exists(&b, job[3]));
	assert_true(bare_log_exists(&b, job[4]));  /* recent */
	assert_true(bare_log_exists(&b, job[5]));
	assert_int_equal(db_int(db, "SELECT COUNT(*) FROM runs"), 6);
	assert_int_equal(db_int(db, "SELECT COUNT(*) FROM jobs"), 6);
	assert_int_equal(db_int(db, "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'retention.logs_through'"), 4);
	/* ten days later runs 5 and 6 are due too */
	prune_all(&b, &cfg, now + 10 * DAY_MS);
	assert_false(bare_log_exists(&b, job[4]));
	assert_false(bare_log_exists(&b, job[5]));
	assert_true(bare_log_exists(&b, job[1]));
	bare_close(&b);
}

/* A new database gives freed pages back (incremental auto-vacuum). */
static void new_database_shrinks_after_pruning(void **state)
{
	struct bare b;
	struct retention_cfg cfg = { 30 * DAY_MS, 0, 0, 200, 0, 0 };
	int64_t now = 1000 * DAY_MS, before, after;
	int freed = 0;
	sqlite3 *db;
	(void)state;

	bare_open(&b);
	db = db_sqlite_handle(store_conn(b.db));
	assert_int_equal(db_int(db, "PRAGMA auto_vacuum"), 2);
	state_db_exec(db, "BEGIN");
	bare_fill(&b, 2000, now - 100 * DAY_MS);
	state_db_exec(db, "COMMIT");
	before = db_int(db, "PRAGMA page_count");
	prune_all(&b, &cfg, now);
	assert_true(db_int(db, "PRAGMA freelist_count") > 0);
	assert_int_equal(retention_maintain(b.db, 100000, &freed), 0);
	after = db_int(db, "PRAGMA page_count");
	assert_true(freed > 0);
	assert_true(after < before);
	assert_int_equal(db_int(db, "PRAGMA freelist_count"), 0);
	bare_close(&b);
}

static void assert_config_refused(const char *yaml, const char *words)
{
	struct otacd_config c;
	char *dir = h_tmpdir(), *path = xasprintf("%s/c.yml", dir);
	assert_int_equal(ota_write_file_atomic(path, yaml, strlen(yaml), 0600), 0);
	config_defaults(&c);
	assert_int_equal(config_load(&c, path), OTA_EINVAL);
	if (!strstr(ota_error_last(), words))
		fail_msg("'%s': message '%s' lacks '%s'", yaml, ota_error_last(), words);
	config_release(&c);
	free(path);
	free(dir);
}

/* Bad retention settings are refused with the file, line and what is
 * wrong; good ones and the defaults load. */
static void bad_retention_config_is_refused(void **state)
{
	struct otacd_config c;
	char *dir = h_tmpdir(), *path = xasprintf("%s/ok.yml", dir);
	const char *ok = "retention:\n  runs_max_age: 30d\n  runs_keep: off\n  logs_max_age: 7d\n  batch: 20\n";
	(void)state;

	assert_config_refused("retention: { runs_max_age: 90s }\n", "retention.runs_max_age' must be off or a duration");
	assert_config_refused("retention: { runs_max_age: soon }\n", "c.yml:1:");
	assert_config_refused("retention: { runs_keep: 0 }\n", "retention.runs_keep");
	assert_config_refused("retention: { runs_keep: -5 }\n", "retention.runs_keep");
	assert_config_refused("retention: { batch: 5000 }\n", "at most 1024");
	assert_config_refused("retention: { run_max_age: 30d }\n", "unknown key 'run_max_age' in retention");
	assert_config_refused("retention: 30d\n", "'retention' must be a mapping");

	config_defaults(&c);
	assert_int_equal(c.retention.runs_max_age_ms, RETENTION_DEFAULT_RUNS_MAX_AGE_MS);
	assert_int_equal(c.retention.runs_keep, RETENTION_DEFAULT_RUNS_KEEP);
	assert_int_equal(ota_write_file_atomic(path, ok, strlen(ok), 0600), 0);
	assert_int_equal(config_load(&c, path), 0);
	assert_int_equal(c.retention.runs_max_age_ms, 30 * DAY_MS);
	assert_int_equal(c.retention.runs_keep, 0);
	assert_int_equal(c.retention.logs_max_age_ms, 7 * DAY_MS);
	assert_int_equal(c.retention.batch, 20);
	config_release(&c);
	free(path);
	free(dir);
}

int main(void)
{
	const char *only = getenv("RETENTION_ONLY");
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(bad_retention_config_is_refused),
		cmocka_unit_test(runs_keep_bounds_the_count_and_spares_releases),
		cmocka_unit_test(newest_run_is_never_deleted),
		cmocka_unit_test(new_database_shrinks_after_pruning),
		cmocka_unit_test(logs_max_age_removes_files_and_keeps_rows),
		cmocka_unit_test(old_runs_go_with_their_logs_releases_stay),
		cmocka_unit_test(killed_mid_prune_restart_is_consistent),
	};
	if (only)
		cmocka_set_test_filter(only);
	return cmocka_run_group_tests_name("retention", tests, NULL, NULL);
}
