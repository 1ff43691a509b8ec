/*
 * test_dbconv_read.c - the API's reader files on the storage layer
 * (docs/storage.md, conversion plan step 4: api_read.c, api_reports.c,
 * api_rollout.c, api_release.c, api_notify.c) on both backends: a store
 * opened on SQLite and on a real PostgreSQL cluster (tests/pgcluster.h),
 * migrated by store_open().
 *
 *   - every statement those files prepare prepares on both, and each
 *     SELECT runs (with NULL parameters), so a dialect problem fails here
 *     rather than in production;
 *   - a job's inputs, whose query used SQLite's json_each and now reads the
 *     stage's needs in C, are the same rows the json_each query gave, on
 *     SQLite and on PostgreSQL;
 *   - a reader's snapshot (api_snapshot_begin) does not see a commit made
 *     after it began, and sees it once ended.
 */
#include <pthread.h>
#include <sqlite3.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../common/util.h"
#include "../orchestrator/api/api_int.h"
#include "../orchestrator/db/db.h"
#include "../orchestrator/store.h"
#include "../orchestrator/trustdb.h"
#include "harness.h"
#include "dbconv.h"

/* ---- every statement prepares (and every SELECT runs) ----------------------- */

struct prep {
	struct db *db;
	int statements, selects, failures;
};

static void prepare_one(const char *sql, void *arg)
{
	struct prep *p = arg;
	struct db_stmt *st = NULL;
	int rc;

	p->statements++;
	if (db_prepare(p->db, &st, sql) < 0) {
		fprintf(stderr, "does not prepare: %s\n  %s\n", ota_error_last(), sql);
		p->failures++;
		return;
	}
	if (!strncmp(sql, "SELECT", 6)) {
		/* every parameter 1 (SQLite refuses LIMIT NULL): few rows, but the plan runs */
		for (int i = 1; i <= db_param_count(st); i++)
			db_bind_int64(st, i, 1);
		p->selects++;
		while ((rc = db_step(st)) == 1)
			;
		if (rc < 0) {
			fprintf(stderr, "does not run: %s\n  %s\n", ota_error_last(), sql);
			p->failures++;
		}
	}
	db_finalize(st);
}

static void every_reader_statement_prepares_and_runs(void **state)
{
	struct store *s = dbconv_case_store(state);
	struct prep p = { store_conn(s), 0, 0, 0 };

	api_read_sql_each(prepare_one, &p);
	api_reports_sql_each(prepare_one, &p);
	api_rollout_sql_each(prepare_one, &p);
	api_release_sql_each(prepare_one, &p);
	api_notify_sql_each(prepare_one, &p);
	trustdb_sql_each(prepare_one, &p);
	fprintf(stderr, "%d statements prepared, %d SELECTs run\n", p.statements, p.selects);
	assert_int_equal(p.failures, 0);
	/* 12 + 16 runs lists in api_read.c, 9, 4, 4, 1, trustdb.c's 4: a list that shrank is a test that shrank */
	assert_true(p.statements >= 50);
	store_close(s);
}

/* ---- a job's inputs: json_each's answer, in C -------------------------------- */

struct fixture {
	int64_t hil, flash, quoted, lonely, missing;
};

static const char run_sql[] =
	"INSERT INTO runs(pipeline, file, yaml, ref, state, trigger, created_at) VALUES ('fw', 'fw.yml', '',"
	" 'refs/heads/main', 'running', 'push', 1) RETURNING id";
static const char stage_sql[] =
	"INSERT INTO stages(run_id, idx, name, kind, state, needs) VALUES (?, 0, ?, 'build', 'running', ?) RETURNING id";
static const char job_sql[] =
	"INSERT INTO jobs(run_id, stage_id, idx, name, spec, state, attempt, retries_left, infra_retries_left)"
	" VALUES (?, ?, 0, ?, ?, ?, ?, 0, 0) RETURNING id";
static const char artifact_sql[] =
	"INSERT INTO artifacts(run_id, job_id, attempt, name, sha256, size, hardware, created_at)"
	" VALUES (?, ?, ?, ?, ?, ?, ?, 1) RETURNING id";

static char *num(int64_t v)
{
	return xasprintf("%lld", (long long)v);
}

static int64_t add_stage(struct store *s, int64_t run, const char *name, const char *needs)
{
	char *r = num(run);
	int64_t id = dbconv_insert(s, stage_sql, "ttt", r, name, needs);
	free(r);
	return id;
}

static int64_t add_job(struct store *s, int64_t run, int64_t stage, const char *spec, const char *state, int attempt)
{
	char *r = num(run), *st = num(stage), *a = num(attempt);
	int64_t id = dbconv_insert(s, job_sql, "tttttt", r, st, "job", spec, state, a);
	free(r);
	free(st);
	free(a);
	return id;
}

static void add_artifact(struct store *s, int64_t run, int64_t job, int attempt, const char *name, const char *hw)
{
	char *r = num(run), *j = num(job), *a = num(attempt), *size = num((int64_t)strlen(name) * 100);
	char sha[65];

	snprintf(sha, sizeof(sha), "%064zx", strlen(name) * 7919 + (size_t)job);
	dbconv_insert(s, artifact_sql, "ttttttt", r, j, a, name, sha, size, hw);
	free(r);
	free(j);
	free(a);
	free(size);
}

/* Two runs of the same pipeline: the inputs of the first's jobs come only
 * from passed jobs of its own needed stages, their current attempt, and
 * the job's board when it has one. */
static void fill(struct store *s, struct fixture *f)
{
	int64_t run, other, build, test, lint, hil, flash, odd, quoted, lonely, j;

	if (store_begin(s) < 0)
		fail_msg("begin: %s", ota_error_last());
	run = dbconv_insert(s, run_sql, "");
	other = dbconv_insert(s, run_sql, "");
	build = add_stage(s, run, "build", "[]");
	test = add_stage(s, run, "unit-tests", "[]");
	lint = add_stage(s, run, "lint", "[]");
	odd = add_stage(s, run, "se\"q", "[]");
	hil = add_stage(s, run, "hil", "[\"build\", \"unit-tests\"]");
	flash = add_stage(s, run, "flash", "[\"build\"]");
	quoted = add_stage(s, run, "quoted", "[\"se\\\"q\", 7, null]");
	lonely = add_stage(s, run, "lonely", "[]");

	j = add_job(s, run, build, "{\"extra\": {\"board\": \"b1\"}}", "passed", 2);
	add_artifact(s, run, j, 1, "b1/app.bin", "b1"); /* an earlier attempt's */
	add_artifact(s, run, j, 2, "b1/app.bin", "b1");
	add_artifact(s, run, j, 2, "b1/app.elf", "b1");
	j = add_job(s, run, build, "{\"extra\": {\"board\": \"b2\"}}", "passed", 1);
	add_artifact(s, run, j, 1, "b2/app.bin", "b2");
	j = add_job(s, run, build, "{}", "passed", 1);
	add_artifact(s, run, j, 1, "docs.tar", NULL);
	j = add_job(s, run, build, "{\"extra\": {\"board\": \"b3\"}}", "failed", 1);
	add_artifact(s, run, j, 1, "b3/app.bin", "b3");
	j = add_job(s, run, test, "{}", "passed", 1);
	add_artifact(s, run, j, 1, "junit.xml", NULL);
	j = add_job(s, run, lint, "{}", "passed", 1);
	add_artifact(s, run, j, 1, "lint.txt", NULL);
	j = add_job(s, run, odd, "{}", "passed", 1);
	add_artifact(s, run, j, 1, "odd.bin", NULL);
	/* the other run's build, passed, with the same names */
	j = add_job(s, other, add_stage(s, other, "build", "[]"), "{}", "passed", 1);
	add_artifact(s, other, j, 1, "b1/app.bin", "b1");
	add_artifact(s, other, j, 1, "docs.tar", NULL);

	f->hil = add_job(s, run, hil, "{}", "running", 1);
	f->flash = add_job(s, run, flash, "{\"extra\": {\"board\": \"b1\"}}", "running", 1);
	f->quoted = add_job(s, run, quoted, "{}", "running", 1);
	f->lonely = add_job(s, run, lonely, "{}", "running", 1);
	f->missing = f->lonely + 1000;
	if (store_commit(s) < 0)
		fail_msg("commit: %s", ota_error_last());
}

/* The query api_reports.c ran before issue 16, with json_each (SQLite only). */
static json_t *inputs_by_json_each(struct store *s, int64_t job)
{
	sqlite3 *db = db_sqlite_handle(store_conn(s));
	sqlite3_stmt *st = NULL;
	json_t *spec = NULL, *out = json_array();
	const char *board;

	assert_non_null(db);
	assert_int_equal(sqlite3_prepare_v2(db, "SELECT spec FROM jobs WHERE id = ?", -1, &st, NULL), SQLITE_OK);
	sqlite3_bind_int64(st, 1, job);
	if (sqlite3_step(st) == SQLITE_ROW)
		spec = json_loads((const char *)sqlite3_column_text(st, 0), 0, NULL);
	sqlite3_finalize(st);
	board = json_string_value(json_object_get(json_object_get(spec, "extra"), "board"));
	assert_int_equal(sqlite3_prepare_v2(db,
					    "SELECT a.name, a.sha256, a.size, a.hardware FROM artifacts a"
					    " JOIN jobs j ON j.id = a.job_id AND j.attempt = a.attempt AND j.state = 'passed'"
					    " JOIN stages s ON s.id = j.stage_id"
					    " WHERE j.run_id = (SELECT run_id FROM jobs WHERE id = ?1)"
					    " AND s.name IN (SELECT value FROM json_each((SELECT st.needs FROM jobs jj"
					    "   JOIN stages st ON st.id = jj.stage_id WHERE jj.id = ?1)))"
					    " AND (?2 IS NULL OR a.hardware = ?2) ORDER BY a.id",
					    -1, &st, NULL),
			 SQLITE_OK);
	sqlite3_bind_int64(st, 1, job);
	if (board)
		sqlite3_bind_text(st, 2, board, -1, SQLITE_TRANSIENT);
	while (sqlite3_step(st) == SQLITE_ROW) {
		const char *hw = (const char *)sqlite3_column_text(st, 3);
		json_array_append_new(out, json_pack("{ss ss sI so}", "name", sqlite3_column_text(st, 0), "sha256",
						     sqlite3_column_text(st, 1), "size", (json_int_t)sqlite3_column_int64(st, 2),
						     "hardware", hw ? json_string(hw) : json_null()));
	}
	sqlite3_finalize(st);
	json_decref(spec);
	return out;
}

static json_t *inputs(struct store *s, int64_t job)
{
	json_t *out = NULL;
	if (api_job_inputs(s, job, &out) < 0)
		fail_msg("inputs of job %lld: %s", (long long)job, ota_error_last());
	return out;
}

static void assert_names(const json_t *list, const char *const *names, size_t n)
{
	char *text = json_dumps(list, JSON_COMPACT);
	if (json_array_size(list) != n)
		fail_msg("want %zu inputs, got %s", n, text);
	for (size_t i = 0; i < n; i++)
		if (strcmp(json_string_value(json_object_get(json_array_get(list, i), "name")), names[i]) != 0)
			fail_msg("input %zu: want %s, got %s", i, names[i], text);
	free(text);
}

static void assert_same(const json_t *a, const json_t *b, const char *what)
{
	if (!json_equal(a, b)) {
		char *ta = json_dumps(a, JSON_COMPACT), *tb = json_dumps(b, JSON_COMPACT);
		fail_msg("%s differ:\n  %s\n  %s", what, ta, tb);
	}
}

static void inputs_are_what_json_each_gave_on_both_backends(void **state)
{
	static const char *const hil[] = { "b1/app.bin", "b1/app.elf", "b2/app.bin", "docs.tar", "junit.xml" };
	static const char *const flash[] = { "b1/app.bin", "b1/app.elf" };
	static const char *const quoted[] = { "odd.bin" };
	struct store *lite = dbconv_open_store(DB_SQLITE), *pg;
	struct fixture fl, fp;
	json_t *got[4];
	json_t *out = NULL;

	(void)state;
	fill(lite, &fl);
	got[0] = inputs(lite, fl.hil);
	got[1] = inputs(lite, fl.flash);
	got[2] = inputs(lite, fl.quoted);
	got[3] = inputs(lite, fl.lonely);
	assert_names(got[0], hil, OTA_ARRAY_SIZE(hil));
	assert_names(got[1], flash, OTA_ARRAY_SIZE(flash));
	assert_names(got[2], quoted, OTA_ARRAY_SIZE(quoted));
	assert_names(got[3], NULL, 0);
	{
		const int64_t jobs[4] = { fl.hil, fl.flash, fl.quoted, fl.lonely };
		for (int i = 0; i < 4; i++) {
			json_t *old = inputs_by_json_each(lite, jobs[i]);
			assert_same(got[i], old, "inputs in C and by json_each");
			json_decref(old);
		}
	}
	assert_int_equal(api_job_inputs(lite, fl.missing, &out), OTA_ENOTFOUND);
	assert_null(out);
	store_close(lite);

	if (dbconv_pg_available()) {
		pg = dbconv_open_store(DB_POSTGRES);
		fill(pg, &fp);
		{
			const int64_t jobs[4] = { fp.hil, fp.flash, fp.quoted, fp.lonely };
			for (int i = 0; i < 4; i++) {
				json_t *p = inputs(pg, jobs[i]);
				assert_same(got[i], p, "inputs on SQLite and PostgreSQL");
				json_decref(p);
			}
		}
		assert_int_equal(api_job_inputs(pg, fp.missing, &out), OTA_ENOTFOUND);
		store_close(pg);
	}
	for (int i = 0; i < 4; i++)
		json_decref(got[i]);
}

/* ---- a reader's snapshot ----------------------------------------------------------- */

struct snap {
	struct store *writer;
	int64_t before, inside, after;
	int rc;
	char err[256];
};

static int64_t runs_now(struct store *r)
{
	struct db_stmt *st = store_q(r, "SELECT COUNT(*) FROM runs");
	int64_t n = -1;
	if (st && db_step(st) == 1)
		n = db_column_int64(st, 0);
	if (st)
		db_reset(st);
	return n;
}

/* On a thread of its own: store_reader() is per thread and opens the
 * database of the last store_open(), so each case gets a new reader. */
static void *snapshot_thread(void *arg)
{
	struct snap *x = arg;
	struct store *r = store_reader();
	struct db_stmt *st;

	if (!r || api_snapshot_begin(r) < 0)
		goto fail;
	x->before = runs_now(r);
	if (store_begin(x->writer) < 0 || !(st = store_q(x->writer, run_sql)) || db_step(st) != 1)
		goto fail;
	db_reset(st);
	if (store_commit(x->writer) < 0)
		goto fail;
	x->inside = runs_now(r);
	api_snapshot_end(r);
	x->after = runs_now(r);
	return NULL;
fail:
	x->rc = -1;
	snprintf(x->err, sizeof(x->err), "%s", ota_error_last());
	return NULL;
}

static void a_snapshot_does_not_see_later_commits(void **state)
{
	struct store *s = dbconv_case_store(state);
	struct snap x = { s, 0, 0, 0, 0, "" };
	pthread_t t;

	dbconv_insert(s, run_sql, "");
	assert_int_equal(pthread_create(&t, NULL, snapshot_thread, &x), 0);
	pthread_join(t, NULL);
	if (x.rc < 0)
		fail_msg("snapshot: %s", x.err);
	assert_int_equal(x.before, 1);
	assert_int_equal(x.inside, 1);
	assert_int_equal(x.after, 2);
	assert_int_equal(dbconv_count(s, "SELECT COUNT(*) FROM runs"), 2);
	store_close(s);
}

/* ---- main --------------------------------------------------------------------- */

int main(void)
{
	const struct CMUnitTest tests[] = {
		DBCONV_BOTH(every_reader_statement_prepares_and_runs),
		cmocka_unit_test(inputs_are_what_json_each_gave_on_both_backends),
		DBCONV_BOTH(a_snapshot_does_not_see_later_commits),
	};
	int rc;

	dbconv_start("test_dbconv_read");
	rc = cmocka_run_group_tests_name("dbconv_read", tests, NULL, NULL);
	dbconv_finish();
	return rc;
}
