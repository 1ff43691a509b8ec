/*
 * test_dbconv_retout.c - the retention pruner (orchestrator/retention.c)
 * and the notification outbox (orchestrator/notify/outbox.c), converted to
 * the storage layer (docs/storage.md, issue 16):
 *
 *  - every SQL statement of both files (each string literal that starts
 *    with SELECT, INSERT, UPDATE or DELETE, read from the sources, so the
 *    arrays of deletes and a statement added later are checked too)
 *    prepares on SQLite and on a real PostgreSQL cluster (tests/pgcluster.h)
 *    after store.c's migrations, and neither file nor engine.c calls
 *    sqlite3_* any more;
 *  - a whole retention pass (runs by age, then by count, logs, rows that
 *    outlive their runs, the outbox) over the same rows deletes the same
 *    rows on both backends, keeps what it must keep (unfinished, released,
 *    rolled out, holding a released artifact, newest) and names the same
 *    artifact objects and job logs to remove after the commit;
 *  - the outbox's rows written, claimed by a sender thread on its own
 *    reader connection, and finished (sent, retried, refused, expired; a
 *    finished row is never finished again) give the same answers on both;
 *  - db_maintain() gives pages back on SQLite and is a no-op on PostgreSQL;
 *    db_disk_error() is DB_ENOSPACE after SQLite's disk-full.
 */
#include <inttypes.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../common/util.h"
#include "../orchestrator/db/db.h"
#include "../orchestrator/logstore.h"
#include "../orchestrator/notify/notify.h"
#include "../orchestrator/retention.h"
#include "../orchestrator/store.h"
#include "harness.h"
#include "dbconv.h"

/* the converted files, relative to the source tree, and how many
 * statements each has at least (a scan that finds fewer is broken) */
static const struct {
	const char *file;
	size_t min;
} k_files[] = {
	{ "orchestrator/retention.c", 18 },
	{ "orchestrator/notify/outbox.c", 5 },
};
#define NFILES (sizeof(k_files) / sizeof(k_files[0]))

/* ---- the statements, read from the sources ---------------------------------- */

static void scan_all(struct dbconv_sql *l)
{
	for (size_t i = 0; i < NFILES; i++) {
		size_t n = dbconv_scan_literals(k_files[i].file, l);
		if (n < k_files[i].min)
			fail_msg("%s: %zu statements found, expected at least %zu (moved? update k_files)", k_files[i].file,
				 n, k_files[i].min);
	}
}

static void every_statement_prepares(void **state)
{
	struct dbconv_sql l = DBCONV_SQL_INIT;

	scan_all(&l);
	dbconv_prepare_all(dbconv_backend(state), &l, NULL);
	dbconv_sql_clear(&l);
}

/* engine.c's last direct call (the disk-full check) went to db.h too */
static void engine_c_calls_no_sqlite(void **state)
{
	char *text = dbconv_read_source("orchestrator/engine.c");

	(void)state;
	if (strstr(text, "sqlite3_"))
		fail_msg("orchestrator/engine.c still calls sqlite3_* (db_disk_error() tells a full disk)");
	free(text);
}

/* the scan finds what it should: the deletes kept in arrays, the
 * statement kept in a constant, and outbox.c's joined literals */
static void the_scan_finds_arrays_constants_and_joined_literals(void **state)
{
	struct dbconv_sql l = DBCONV_SQL_INIT;
	int in_array = 0, constant = 0, joined = 0;

	(void)state;
	scan_all(&l);
	for (size_t i = 0; i < l.sql.n; i++) {
		in_array |= !strcmp(l.sql.v[i], "DELETE FROM run_metrics WHERE run_id = ?");
		constant |= strstr(l.sql.v[i], "CAST(?2 AS BIGINT) > 0") != NULL;
		joined |= strstr(l.sql.v[i], "FROM outbox WHERE state = 'pending' AND next_at <= ? ORDER BY next_at, id") != NULL;
	}
	assert_true(in_array);
	assert_true(constant);
	assert_true(joined);
	dbconv_sql_clear(&l);
}

/* ---- rows -------------------------------------------------------------------- */

#define DAY_MS (86400LL * 1000)
#define T0 1800000000000LL       /* otacd ms: the pass's clock */
#define NOW_REAL 1796000000000LL /* real ms: the outbox's clock */

/* A run in state, created and finished (0: not) `age` days before T0, with
 * one stage and `njobs` jobs, each with an attempt, a report and a metric,
 * and an event; the first job's id goes to *job. */
static int64_t add_run(struct store *s, const char *state, int64_t created_days, int64_t finished_days, int njobs,
		       int64_t *job)
{
	int64_t run, stage, j = 0;

	run = dbconv_insert(s, "INSERT INTO runs(pipeline, file, yaml, ref, state, trigger, created_at, finished_at)"
			       " VALUES ('fw', 'fw.yml', '', 'refs/heads/main', ?, 'push', ?, ?) RETURNING id",
			    "tii", state, T0 - created_days * DAY_MS, finished_days ? T0 - finished_days * DAY_MS : (int64_t)0);
	if (!finished_days) { /* not finished: no finished_at at all */
		struct db_stmt *st = store_q(s, "UPDATE runs SET finished_at = NULL WHERE id = ?");
		db_bind_int64(st, 1, run);
		assert_int_equal(db_run(st), 0);
	}
	stage = dbconv_insert(s, "INSERT INTO stages(run_id, idx, name, kind, state, needs) VALUES (?, 0, 'build',"
				 " 'build', ?, '[]') RETURNING id", "it", run, state);
	for (int i = 0; i < njobs; i++) {
		char name[16];
		snprintf(name, sizeof(name), "job%d", i);
		j = dbconv_insert(s, "INSERT INTO jobs(run_id, stage_id, idx, name, spec, state, attempt, retries_left,"
				     " infra_retries_left) VALUES (?, ?, ?, ?, '{}', ?, 1, 0, 0) RETURNING id",
				  "iiitt", run, stage, (int64_t)i, name, state);
		if (i == 0)
			*job = j;
		dbconv_insert(s, "INSERT INTO job_attempts(job_id, attempt, started_at) VALUES (?, 1, ?) RETURNING job_id",
			      "ii", j, T0 - created_days * DAY_MS);
		dbconv_insert(s, "INSERT INTO reports(run_id, job_id, attempt, format, name, summary, body, created_at)"
				 " VALUES (?, ?, 1, 'junit', 'r.xml', '{}', '{}', 1) RETURNING id", "ii", run, j);
		dbconv_insert(s, "INSERT INTO run_metrics(run_id, job_id, attempt, stage, name, value, created_at)"
				 " VALUES (?, ?, 1, 'build', 'ccn', 3.5, 1) RETURNING job_id", "ii", run, j);
	}
	dbconv_insert(s, "INSERT INTO events(at, run_id, job_id, kind) VALUES (?, ?, ?, 'run.state') RETURNING id", "iii",
		      T0 - created_days * DAY_MS, run, j);
	return run;
}

static void add_artifact(struct store *s, int64_t run, int64_t job, const char *name, const char *sha, int released)
{
	dbconv_insert(s, "INSERT INTO artifacts(run_id, job_id, attempt, name, sha256, size, created_at, released)"
			 " VALUES (?, ?, 1, ?, ?, 10, 1, ?) RETURNING id", "iitti", run, job, name, sha, (int64_t)released);
}

static void add_outbox(struct store *s, const char *delivery, int64_t created, int64_t next_at)
{
	char payload[64];

	snprintf(payload, sizeof(payload), "{\"id\":\"%s\"}", delivery);
	if (outbox_store_add(s, delivery, "hook:ci", "run.failed", payload, created) < 0)
		fail_msg("outbox_store_add: %s", ota_error_last());
	if (next_at != created) {
		struct db_stmt *st = store_q(s, "UPDATE outbox SET next_at = ? WHERE delivery = ?");
		db_bind_int64(st, 1, next_at);
		db_bind_text(st, 2, delivery);
		assert_int_equal(db_run(st), 0);
	}
}

/*
 * The scenario's rows (ids are the same on both backends: both count
 * from 1).  Runs, by id:
 *   1 passed 100 days ago, two jobs, artifacts aa (its own) and bb      goes
 *   2 failed 100 days ago, produced a release                            kept
 *   3 passed 100 days ago, a rollout ran in it                           kept
 *   4 running, created 100 days ago                                      kept
 *   5 canceled 100 days ago, artifacts bb and cc (released)              kept
 *   6 passed yesterday                              kept by age, goes by count
 *   7 skipped 100 days ago                                               goes
 *   8 passed yesterday                              kept by age, goes by count
 *   9 passed yesterday                                                   kept
 *  10 passed yesterday, the newest run and job                           kept
 */
static void fill(struct store *s)
{
	int64_t job[11], run[11], rel;

	dbconv_begin(s);
	run[1] = add_run(s, "passed", 100, 100, 2, &job[1]);
	run[2] = add_run(s, "failed", 100, 100, 1, &job[2]);
	run[3] = add_run(s, "passed", 100, 100, 1, &job[3]);
	run[4] = add_run(s, "running", 100, 0, 1, &job[4]);
	run[5] = add_run(s, "canceled", 100, 100, 1, &job[5]);
	run[6] = add_run(s, "passed", 2, 1, 1, &job[6]);
	run[7] = add_run(s, "skipped", 100, 100, 1, &job[7]);
	run[8] = add_run(s, "passed", 2, 1, 1, &job[8]);
	run[9] = add_run(s, "passed", 2, 1, 1, &job[9]);
	run[10] = add_run(s, "passed", 2, 1, 1, &job[10]);
	assert_int_equal(run[10], 10);
	add_artifact(s, run[1], job[1], "a.bin", "aa", 0);
	add_artifact(s, run[1], job[1], "b.bin", "bb", 0);
	add_artifact(s, run[5], job[5], "b.bin", "bb", 0);
	add_artifact(s, run[5], job[5], "c.bin", "cc", 1);
	rel = dbconv_insert(s, "INSERT INTO releases(run_id, product, version, branch, security_counter, key_id,"
			       " created_at) VALUES (?, 'fw', '1.0.0', 'main', 1, 'k1', 1) RETURNING id", "i", run[2]);
	dbconv_insert(s, "INSERT INTO rollouts(job_id, run_id, release_id, stage, kind, spec, state, created_at)"
			 " VALUES (?, ?, ?, 'canary', 'rollout', '{}', 'done', 1) RETURNING id", "iii", job[3], run[3], rel);
	/* rows that outlive their runs: old events of no run go, a new one
	 * stays; answered deliveries of a gone run or of none go, a pending
	 * one and one of a kept run stay */
	dbconv_insert(s, "INSERT INTO events(at, kind) VALUES (?, 'agent.lost') RETURNING id", "i", T0 - 90 * DAY_MS);
	dbconv_insert(s, "INSERT INTO events(at, kind) VALUES (?, 'agent.lost') RETURNING id", "i", T0 - DAY_MS);
	dbconv_insert(s, "INSERT INTO deliveries(provider, delivery, repo, ref, received_at, state, run_id)"
			 " VALUES ('github', 'd1', 'fw', 'main', ?, 'done', ?) RETURNING id", "ii", T0 - 90 * DAY_MS, run[1]);
	dbconv_insert(s, "INSERT INTO deliveries(provider, delivery, repo, ref, received_at, state, run_id)"
			 " VALUES ('github', 'd2', 'fw', 'main', ?, 'done', ?) RETURNING id", "ii", T0 - 90 * DAY_MS, run[2]);
	dbconv_insert(s, "INSERT INTO deliveries(provider, delivery, repo, ref, received_at, state)"
			 " VALUES ('github', 'd3', 'fw', 'main', ?, 'ignored') RETURNING id", "i", T0 - 90 * DAY_MS);
	dbconv_insert(s, "INSERT INTO deliveries(provider, delivery, repo, ref, received_at, state)"
			 " VALUES ('github', 'd4', 'fw', 'main', ?, 'pending') RETURNING id", "i", T0 - 90 * DAY_MS);
	/* the outbox: 3 sent 10 days ago, 2 sent yesterday, 1 pending old */
	for (int i = 0; i < 6; i++) {
		char d[16];
		snprintf(d, sizeof(d), "o%d", i);
		add_outbox(s, d, NOW_REAL - 20 * DAY_MS, NOW_REAL - 20 * DAY_MS);
	}
	assert_int_equal(dbconv_count(s, "SELECT COUNT(*) FROM outbox"), 6);
	for (int64_t id = 1; id <= 5; id++) {
		struct outbox_result r = { id, "sent", 1, 0, NULL };
		assert_int_equal(outbox_store_finish(s, &r, id <= 3 ? NOW_REAL - 10 * DAY_MS : NOW_REAL - DAY_MS), 0);
	}
	dbconv_commit(s);
}

/* A whole pass with cfg, batch by batch in transactions; what it told the
 * caller to remove after each commit is collected in removed. */
static void prune(struct store *s, const struct retention_cfg *cfg, json_t *removed, json_t *counts)
{
	struct retention_pass p;
	struct retention_out out = { 0 };
	json_t *objects = json_object_get(removed, "objects"), *jobs = json_object_get(removed, "jobs");
	int rc;

	retention_pass_start(&p, T0);
	p.now_real = NOW_REAL;
	do {
		dbconv_begin(s);
		rc = retention_batch(s, cfg, &p, &out);
		if (rc < 0)
			fail_msg("retention batch (phase %d): %s", (int)p.phase, ota_error_last());
		dbconv_commit(s);
		for (size_t i = 0; i < out.dead_objects.n; i++)
			json_array_append_new(objects, json_string(out.dead_objects.v[i]));
		for (size_t i = 0; i < out.ndead_jobs; i++)
			json_array_append_new(jobs, json_integer(out.dead_jobs[i]));
		retention_after_commit(&out);
	} while (rc == 1);
	retention_out_release(&out);
	json_array_append_new(counts, json_pack("{sI sI sI sI}", "runs", (json_int_t)p.runs_deleted, "logs",
						(json_int_t)p.logs_pruned, "extras", (json_int_t)p.extras_deleted,
						"outbox", (json_int_t)p.outbox_deleted));
}

static json_t *ids(struct store *s, const char *sql)
{
	json_t *r = dbconv_rows(s, sql), *out = json_array(), *row;
	size_t i;

	json_array_foreach(r, i, row)
		json_array_append(out, json_array_get(row, 0));
	json_decref(r);
	return out;
}

static json_t *int_list(const int64_t *v, size_t n)
{
	json_t *a = json_array();
	for (size_t i = 0; i < n; i++)
		json_array_append_new(a, json_integer(v[i]));
	return a;
}

static void assert_ids(json_t *got, const int64_t *want, size_t n, const char *what)
{
	json_t *w = int_list(want, n);
	if (!json_equal(got, w)) {
		char *a = json_dumps(got, JSON_COMPACT), *b = json_dumps(w, JSON_COMPACT);
		fail_msg("%s: %s, expected %s", what, a, b);
	}
	json_decref(w);
}

/* The scenario on one backend: a pass by age (with logs, extras and the
 * outbox), then one by count.  Returns what both must agree on. */
static json_t *retention_life(struct store *s)
{
	struct retention_cfg by_age = { .runs_max_age_ms = 30 * DAY_MS, .logs_max_age_ms = 10 * DAY_MS, .batch = 2,
					.outbox_max_age_ms = 7 * DAY_MS, .outbox_keep = 3 };
	struct retention_cfg by_count = { .runs_keep = 2, .batch = 50 };
	json_t *removed = json_pack("{s[] s[]}", "objects", "jobs"), *counts = json_array(), *out = json_object();
	static const int64_t after_age[] = { 2, 3, 4, 5, 6, 8, 9, 10 };
	static const int64_t after_count[] = { 2, 3, 4, 5, 9, 10 };
	static const int64_t outbox_left[] = { 4, 5, 6 };
	json_t *got;

	fill(s);
	prune(s, &by_age, removed, counts);
	got = ids(s, "SELECT id FROM runs ORDER BY id");
	assert_ids(got, after_age, OTA_ARRAY_SIZE(after_age), "runs after the age pass");
	json_object_set_new(out, "runs_after_age", got);
	/* aa went with run 1; bb is still named by run 5 */
	assert_int_equal(json_array_size(json_object_get(removed, "objects")), 1);
	assert_string_equal(json_string_value(json_array_get(json_object_get(removed, "objects"), 0)), "aa");
	/* the logs walk: runs 3 and 5 lost their logs (4 is not finished, 2
	 * released, 6 too new) */
	json_object_set_new(out, "logs_through", dbconv_rows(s, "SELECT value FROM meta WHERE key = 'retention.logs_through'"));
	got = ids(s, "SELECT id FROM outbox ORDER BY id");
	assert_ids(got, outbox_left, OTA_ARRAY_SIZE(outbox_left), "outbox after the pass");
	json_object_set_new(out, "outbox", got);

	prune(s, &by_count, removed, counts);
	got = ids(s, "SELECT id FROM runs ORDER BY id");
	assert_ids(got, after_count, OTA_ARRAY_SIZE(after_count), "runs after the count pass");
	json_object_set_new(out, "runs_after_count", got);

	json_object_set_new(out, "removed", removed);
	json_object_set_new(out, "counts", counts);
	json_object_set_new(out, "stages", ids(s, "SELECT run_id FROM stages ORDER BY run_id"));
	json_object_set_new(out, "jobs", ids(s, "SELECT id FROM jobs ORDER BY id"));
	json_object_set_new(out, "attempts", ids(s, "SELECT job_id FROM job_attempts ORDER BY job_id"));
	json_object_set_new(out, "reports", ids(s, "SELECT run_id FROM reports ORDER BY id"));
	json_object_set_new(out, "metrics", ids(s, "SELECT run_id FROM run_metrics ORDER BY job_id"));
	json_object_set_new(out, "artifacts", dbconv_rows(s, "SELECT run_id, sha256 FROM artifacts ORDER BY id"));
	json_object_set_new(out, "events", dbconv_rows(s, "SELECT run_id, kind FROM events ORDER BY id"));
	json_object_set_new(out, "deliveries", ids(s, "SELECT delivery FROM deliveries ORDER BY id"));
	return out;
}

static void a_retention_pass_deletes_the_same_rows_on_both_backends(void **state)
{
	struct store *s;
	json_t *lite, *pg, *logs;

	(void)state;
	dbconv_need_pg();
	assert_int_equal(logstore_init(dbconv_tmpdir(), 0), 0);
	s = dbconv_open_store(DB_SQLITE);
	lite = retention_life(s);
	store_close(s);
	s = dbconv_open_store(DB_POSTGRES);
	pg = retention_life(s);
	store_close(s);
	/* what it knows on its own: the logs walk stopped before run 6 */
	logs = json_object_get(lite, "logs_through");
	assert_string_equal(json_string_value(json_array_get(json_array_get(logs, 0), 0)), "5");
	assert_int_equal(json_integer_value(json_object_get(json_array_get(json_object_get(lite, "counts"), 0), "logs")), 2);
	assert_int_equal(json_integer_value(json_object_get(json_array_get(json_object_get(lite, "counts"), 0), "extras")),
			 3);
	dbconv_must_agree("retention", lite, pg);
	json_decref(lite);
	json_decref(pg);
}

/* ---- the outbox: written, claimed on a reader, finished --------------------- */

struct claim {
	int64_t now;
	json_t *rows;
	int rc;
};

/* On a thread of its own, as the sender: store_reader() opens that
 * thread's reader on the store opened last (closed when it exits). */
static void *claim_thread(void *arg)
{
	struct claim *c = arg;
	struct outbox_due due[16];
	struct store *r = store_reader();
	size_t n = 0;

	c->rows = json_array();
	c->rc = r ? outbox_store_due(r, c->now, due, 16, &n) : OTA_ERROR;
	for (size_t i = 0; i < n; i++) {
		json_array_append_new(c->rows, json_pack("{sI ss ss ss ss si sI}", "id", (json_int_t)due[i].id, "delivery",
							 due[i].delivery, "target", due[i].target, "event", due[i].event,
							 "payload", due[i].payload, "attempts", due[i].attempts,
							 "created_at", (json_int_t)due[i].created_at));
		outbox_due_release(&due[i]);
	}
	return NULL;
}

static json_t *claim(int64_t now)
{
	struct claim c = { now, NULL, 0 };
	pthread_t t;

	assert_int_equal(pthread_create(&t, NULL, claim_thread, &c), 0);
	pthread_join(t, NULL);
	if (c.rc < 0)
		fail_msg("outbox_store_due: %s", ota_error_last());
	return c.rows;
}

static void finish(struct store *s, int64_t id, const char *state, int attempts, int64_t next_at, const char *error,
		   int64_t now)
{
	struct outbox_result r = { id, state, attempts, next_at, error };

	dbconv_begin(s);
	if (outbox_store_finish(s, &r, now) < 0)
		fail_msg("outbox_store_finish %" PRId64 ": %s", id, ota_error_last());
	dbconv_commit(s);
}

static json_t *outbox_life(struct store *s)
{
	json_t *out = json_object(), *due;

	/* 20 rows: due in order of next_at then id, at most 16 at a time,
	 * none before it is due */
	dbconv_begin(s);
	for (int i = 0; i < 20; i++) {
		char d[16];
		snprintf(d, sizeof(d), "dl-%02d", i);
		add_outbox(s, d, NOW_REAL, NOW_REAL + (i % 4 == 3 ? 60000 : -(int64_t)(i % 3)));
	}
	dbconv_commit(s);
	due = claim(NOW_REAL);
	assert_int_equal(json_array_size(due), 15); /* 5 are due in a minute */
	assert_int_equal(json_integer_value(json_object_get(json_array_get(due, 0), "id")), 3); /* next_at - 2 */
	json_object_set_new(out, "first", due);
	due = claim(NOW_REAL + 60000);
	assert_int_equal(json_array_size(due), 16);
	json_object_set_new(out, "later", due);

	/* results: sent, a retry in 10 s, refused, expired */
	finish(s, 1, "sent", 1, 0, "", NOW_REAL + 1);
	finish(s, 2, "pending", 1, NOW_REAL + 10000, "HTTP 503", NOW_REAL + 2);
	finish(s, 3, "refused", 1, 0, "HTTP 404", NOW_REAL + 3);
	finish(s, 5, "expired", 0, 0, "older than notifications.max_age: given up", NOW_REAL + 4);
	/* a finished row is finished once: a late result changes nothing */
	finish(s, 1, "refused", 2, 0, "late", NOW_REAL + 5);
	due = claim(NOW_REAL);
	assert_int_equal(json_array_size(due), 11); /* 15 - 1, 2 (later), 3, 5 */
	json_object_set_new(out, "after", due);
	due = claim(NOW_REAL + 10000);
	assert_int_equal(json_integer_value(json_object_get(json_array_get(due, json_array_size(due) - 1), "id")), 2);
	json_object_set_new(out, "retry", due);
	json_object_set_new(out, "rows", dbconv_rows(s, "SELECT id, state, attempts, next_at, last_error, done_at FROM outbox"
						" WHERE id <= 6 ORDER BY id"));
	return out;
}

static void outbox_rows_are_claimed_and_finished_the_same_on_both_backends(void **state)
{
	struct store *s;
	json_t *lite, *pg, *row;

	(void)state;
	dbconv_need_pg();
	s = dbconv_open_store(DB_SQLITE);
	lite = outbox_life(s);
	store_close(s);
	s = dbconv_open_store(DB_POSTGRES);
	pg = outbox_life(s);
	store_close(s);
	/* row 1: sent at +1, and the late result did not touch it */
	row = json_array_get(json_object_get(lite, "rows"), 0);
	assert_string_equal(json_string_value(json_array_get(row, 1)), "sent");
	assert_int_equal(json_integer_value(json_array_get(row, 5)), NOW_REAL + 1);
	assert_true(json_is_null(json_array_get(row, 4)));
	/* row 2: still pending, no done_at, the error kept */
	row = json_array_get(json_object_get(lite, "rows"), 1);
	assert_string_equal(json_string_value(json_array_get(row, 1)), "pending");
	assert_true(json_is_null(json_array_get(row, 5)));
	assert_string_equal(json_string_value(json_array_get(row, 4)), "HTTP 503");
	dbconv_must_agree("outbox", lite, pg);
	json_decref(lite);
	json_decref(pg);
}

/* ---- upkeep and the disk ------------------------------------------------------ */

static void maintenance_gives_pages_back_on_sqlite_and_is_a_no_op_on_postgres(void **state)
{
	struct store *s = dbconv_case_store(state);
	int freed = -1;

	dbconv_begin(s);
	for (int i = 0; i < 300; i++) {
		char d[16];
		snprintf(d, sizeof(d), "m%d", i);
		add_outbox(s, d, NOW_REAL, NOW_REAL);
	}
	dbconv_commit(s);
	dbconv_begin(s);
	assert_int_equal(db_maintain(store_conn(s), 10, &freed), OTA_ERROR); /* not inside a transaction */
	store_rollback(s);
	assert_int_equal(db_run(store_q(s, "DELETE FROM outbox")), 0);
	assert_int_equal(retention_maintain(s, 100000, &freed), 0);
	if (db_backend(store_conn(s)) == DB_SQLITE)
		assert_true(freed > 0); /* store_open asks for incremental auto-vacuum */
	else
		assert_int_equal(freed, 0);
	store_close(s);
}

/* SQLite's disk-full (here: the file at its page limit, which SQLite
 * reports as SQLITE_FULL, as on a full disk) is DB_ENOSPACE, from the
 * failing statement and from db_disk_error() after the rollback, until
 * the next transaction begins. */
static void a_full_database_is_db_enospace(void **state)
{
	struct store *s = dbconv_open_store(DB_SQLITE);
	struct db *db = store_conn(s);
	int rc = 0;

	(void)state;
	assert_int_equal(db_exec(db, "PRAGMA max_page_count = 1"), 0); /* below its size: no page may be added */
	assert_int_equal(db_disk_error(db), 0);
	dbconv_begin(s);
	for (int i = 0; i < 200 && rc == 0; i++) {
		char d[16];
		snprintf(d, sizeof(d), "f%d", i);
		rc = outbox_store_add(s, d, "hook:ci", "run.failed", "{\"pad\":\"................................................................\"}",
				      NOW_REAL);
	}
	assert_int_equal(rc, DB_ENOSPACE);
	store_rollback(s);
	assert_int_equal(db_disk_error(db), DB_ENOSPACE);
	dbconv_begin(s);
	assert_int_equal(db_disk_error(db), 0);
	store_rollback(s);
	store_close(s);
}

/* ---- main --------------------------------------------------------------------- */

int main(void)
{
	const struct CMUnitTest tests[] = {
		DBCONV_BOTH(every_statement_prepares),
		cmocka_unit_test(engine_c_calls_no_sqlite),
		cmocka_unit_test(the_scan_finds_arrays_constants_and_joined_literals),
		cmocka_unit_test(a_retention_pass_deletes_the_same_rows_on_both_backends),
		cmocka_unit_test(outbox_rows_are_claimed_and_finished_the_same_on_both_backends),
		DBCONV_BOTH(maintenance_gives_pages_back_on_sqlite_and_is_a_no_op_on_postgres),
		cmocka_unit_test(a_full_database_is_db_enospace),
	};
	int rc;

	dbconv_start("test_dbconv_retout");
	rc = cmocka_run_group_tests_name("dbconv_retout", tests, NULL, NULL);
	dbconv_finish();
	return rc;
}
