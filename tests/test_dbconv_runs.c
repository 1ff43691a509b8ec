/*
 * test_dbconv_runs.c - engine_runs.c and engine_release.c on the storage
 * layer (docs/storage.md, conversion plan step 3), on both backends: a
 * store opened on SQLite and on a real PostgreSQL cluster started in a
 * temporary directory (tests/pgcluster.h), migrated by store_open().
 *
 * Every statement the two files run is read from their source (each
 * store_q() call's string literal) and prepared on the backend, so a
 * dialect problem fails here rather than in production.  Then their
 * table work runs with rows: deliveries recorded once, runs inserted with
 * RETURNING id, their stages and jobs, and releases under the
 * anti-rollback rules.  Each case runs twice, "sqlite/..." and
 * "postgres/...", and compares what it reads back with one expected
 * transcript, so PostgreSQL's answers are SQLite's.
 */
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
#include "../orchestrator/engine_int.h"
#include "../orchestrator/policy.h"
#include "../orchestrator/store.h"
#include "harness.h"
#include "dbconv.h"

/* The files this test covers. */
static const char *const k_files[] = { "orchestrator/engine_runs.c", "orchestrator/engine_release.c" };

/* ---- fixtures ------------------------------------------------------------- */

/*
 * The rows of a query, one line each, columns separated by '|' (NULL
 * reads "-"): what a case compares between the backends.
 */
static char *rows(struct store *s, const char *sql)
{
	struct db_stmt *st = store_q(s, sql);
	struct buf out = BUF_INIT;
	int rc;

	if (!st)
		fail_msg("%s: %s", sql, ota_error_last());
	while ((rc = db_step(st)) == 1) {
		for (int c = 0; c < db_column_count(st); c++)
			buf_printf(&out, "%s%s", c ? "|" : "",
				    db_column_type(st, c) == DB_NULL ? "-" : db_column_text(st, c));
		buf_printf(&out, "\n");
	}
	db_reset(st);
	if (rc < 0)
		fail_msg("%s: %s", sql, ota_error_last());
	return buf_detach(&out);
}

static void assert_rows(struct store *s, const char *sql, const char *want)
{
	char *got = rows(s, sql);
	if (strcmp(got, want))
		fail_msg("%s\n--- got:\n%s--- want:\n%s", sql, got, want);
	free(got);
}

/* ---- the statements, read from the source ----------------------------------- */

/* The SQL of each store_q() call of the files (dbconv_scan_calls: a
 * store_q() whose SQL is not a literal fails the test). */
static void scan_all(struct dbconv_sql *l)
{
	for (size_t f = 0; f < OTA_ARRAY_SIZE(k_files); f++) {
		char *src = dbconv_read_source(k_files[f]);

		/* the conversion is complete: no raw SQLite call is left */
		if (strstr(src, "STMT(") || strstr(src, "store_stmt("))
			fail_msg("%s still calls SQLite directly", k_files[f]);
		free(src);
		assert_true(dbconv_scan_calls(k_files[f], "store_q(", 1, l) >= 4);
	}
}

/* The one statement of the files whose SQL starts with prefix. */
static char *find_sql(const char *prefix)
{
	struct dbconv_sql l = DBCONV_SQL_INIT;
	char *found = NULL;

	scan_all(&l);
	for (size_t i = 0; i < l.sql.n && !found; i++)
		if (!strncmp(l.sql.v[i], prefix, strlen(prefix)))
			found = xstrdup(l.sql.v[i]);
	dbconv_sql_clear(&l);
	if (!found)
		fail_msg("no statement starting \"%s\" in the converted files", prefix);
	return found;
}

static void every_statement_of_the_converted_files_prepares(void **state)
{
	struct dbconv_sql l = DBCONV_SQL_INIT;

	scan_all(&l);
	assert_true(dbconv_prepare_all(dbconv_backend(state), &l, NULL) >= 20);
	dbconv_sql_clear(&l);
}

/* ---- deliveries and runs (engine_runs.c) ----------------------------------- */

static const struct policy_trust k_trusted = { 1, "protected branch main" };
static const struct policy_trust k_untrusted = { 0, "pushed by a contributor" };

static int64_t add_delivery(struct store *s, const char *provider, const char *id, int64_t pr, int *dup)
{
	struct delivery d = { provider, id, "fw", "refs/heads/main", "b0", "a1", 0, "ann", pr, pr ? "main" : NULL };
	int64_t out = -1;

	dbconv_begin(s);
	if (runs_store_delivery_add(s, &d, 1000 + pr, &out, dup) < 0)
		fail_msg("delivery %s: %s", id, ota_error_last());
	dbconv_commit(s);
	return out;
}

static int64_t add_run(struct store *s, const struct trigger_req *req, const struct policy_trust *trust,
		       const char *name, const char *state, const char *error)
{
	int64_t id = -1;

	dbconv_begin(s);
	if (runs_store_insert(s, req, trust, name, NULL, state, error, 5000, &id) < 0)
		fail_msg("run %s: %s", name, ota_error_last());
	dbconv_commit(s);
	return id;
}

static void deliveries_are_recorded_once_and_runs_get_ids_from_returning(void **state)
{
	struct store *s = dbconv_case_store(state);
	/* yaml is bound with its length: the bytes after len are not the pipeline */
	const char *yaml = "name: fw\nstages: []\nNOT PART OF IT";
	struct trigger_req push = { yaml, 19, "fw.yml", "refs/heads/main", "a1", "webhook", "fw", "t1", "Ann",
				    "Ann", "fix", "ann", 0, 7, "main", ROLE_NONE, NULL };
	struct trigger_req api = { .file = "fw.yml", .ref = "refs/heads/dev", .trigger = "api" };
	int dup = -1;
	int64_t d1, d2, r1, r2, r3;

	d1 = add_delivery(s, "github", "g-1", 0, &dup);
	assert_int_equal(dup, 0);
	assert_int_equal(add_delivery(s, "github", "g-1", 0, &dup), d1); /* a redelivery */
	assert_int_equal(dup, 1);
	d2 = add_delivery(s, "gitlab", "g-1", 7, &dup); /* the same id from another provider */
	assert_int_equal(dup, 0);
	assert_true(d2 > d1);

	push.delivery_id = d1;
	r1 = add_run(s, &push, &k_trusted, "fw", "queued", NULL);
	r2 = add_run(s, &api, &k_untrusted, "tools", "failed", "pipeline does not validate");
	r3 = add_run(s, &api, &k_untrusted, "fw", "queued", NULL);
	assert_true(r1 > 0 && r2 == r1 + 1 && r3 == r2 + 1);

	assert_rows(s, "SELECT id, provider, delivery, state, COALESCE(run_id, 0), pr_number, pr_base, received_at"
		       " FROM deliveries ORDER BY id",
		    "1|github|g-1|done|1|-|-|1000\n"
		    "2|gitlab|g-1|pending|0|7|main|1007\n");
	assert_rows(s, "SELECT id, pipeline, file, yaml, ref, commit_id, state, trigger, created_at, started_at,"
		       " finished_at, error, repo, delivery_id, protected, trust_reason, pr_number, pr_base"
		       " FROM runs ORDER BY id",
		    "1|fw|fw.yml|name: fw\nstages: []|refs/heads/main|a1|queued|webhook|5000|-|-|-|fw|1|1|"
		    "protected branch main|7|main\n"
		    "2|tools|fw.yml||refs/heads/dev|-|failed|api|5000|5000|5000|pipeline does not validate|-|-|0|"
		    "pushed by a contributor|-|-\n"
		    "3|fw|fw.yml||refs/heads/dev|-|queued|api|5000|-|-|-|-|-|0|pushed by a contributor|-|-\n");
	/* a pipeline's runs, newest first, as the run list reads them */
	assert_rows(s, "SELECT pipeline, COUNT(*), MAX(id) FROM runs GROUP BY pipeline ORDER BY pipeline",
		    "fw|2|3\ntools|1|2\n");
	store_close(s);
}

/* The stage and job inserts of do_trigger, run with the source's SQL. */
static void stages_and_jobs_insert_with_their_ids(void **state)
{
	struct store *s = dbconv_case_store(state);
	struct trigger_req api = { .file = "fw.yml", .ref = "refs/heads/main", .trigger = "api" };
	char *stage_sql = find_sql("INSERT INTO stages"), *job_sql = find_sql("INSERT INTO jobs");
	int64_t run = add_run(s, &api, &k_trusted, "fw", "queued", NULL), stage[2];
	struct db_stmt *st = NULL;

	dbconv_begin(s);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(db_prepare(store_conn(s), &st, stage_sql), 0);
		db_bind_int64(st, 1, run);
		db_bind_int64(st, 2, i);
		db_bind_text(st, 3, i ? "release" : "build");
		db_bind_text(st, 4, i ? "release" : "build");
		db_bind_text(st, 5, i ? "[\"build\"]" : "[]");
		if (i)
			db_bind_text(st, 6, "not a protected run: x");
		assert_int_equal(db_step(st), 1);
		stage[i] = db_column_int64(st, 0);
		db_finalize(st);
	}
	for (int k = 0; k < 3; k++) {
		assert_int_equal(db_prepare(store_conn(s), &st, job_sql), 0);
		db_bind_int64(st, 1, run);
		db_bind_int64(st, 2, stage[0]);
		db_bind_int64(st, 3, k);
		db_bind_text(st, 4, k ? "build-b" : "build-a");
		db_bind_text(st, 5, "{}");
		db_bind_int64(st, 6, k);
		db_bind_int64(st, 7, 2);
		assert_int_equal(db_run(st), 0);
		assert_int_equal(db_changes(st), 1);
		db_finalize(st);
	}
	dbconv_commit(s);
	assert_int_equal(stage[0], 1);
	assert_int_equal(stage[1], 2);
	assert_rows(s, "SELECT id, run_id, idx, name, state, needs, when_filter FROM stages ORDER BY id",
		    "1|1|0|build|queued|[]|-\n2|1|1|release|queued|[\"build\"]|not a protected run: x\n");
	assert_rows(s, "SELECT run_id, stage_id, idx, name, state, retries_left, infra_retries_left FROM jobs ORDER BY id",
		    "1|1|0|build-a|queued|0|2\n1|1|1|build-b|queued|1|2\n1|1|2|build-b|queued|2|2\n");
	free(stage_sql);
	free(job_sql);
	store_close(s);
}

/* ---- releases (engine_release.c) ------------------------------------------- */

static int record(struct store *s, struct release_record *r, int64_t *id)
{
	int rc;

	dbconv_begin(s);
	rc = release_store_record(s, r, 9000 + r->run_id, id);
	if (rc < 0)
		store_rollback(s);
	else
		dbconv_commit(s);
	return rc;
}

static void releases_follow_the_anti_rollback_rules_and_record_once(void **state)
{
	struct store *s = dbconv_case_store(state);
	struct trigger_req api = { .file = "fw.yml", .ref = "refs/heads/main", .trigger = "api" };
	int64_t keep[1], id = -1, runs[6];
	struct release_record r = { 0 };
	struct db_stmt *st;

	for (int i = 0; i < 6; i++)
		runs[i] = add_run(s, &api, &k_trusted, "fw", "running", NULL);
	st = store_q(s, "INSERT INTO artifacts(run_id, job_id, attempt, name, sha256, size, created_at)"
			" VALUES (1, 1, 1, 'fw.bin', 'ab', 3, 1) RETURNING id");
	assert_non_null(st);
	assert_int_equal(db_step(st), 1);
	keep[0] = db_column_int64(st, 0);
	db_reset(st);

	r = (struct release_record){ runs[0], "fw", "1.0.0", "main", "k1", 3, 11, 12, 13, keep, 1, 0, 0 };
	assert_int_equal(record(s, &r, &id), 0);
	assert_int_equal(id, 1);
	/* a release stage retried after a crash finds its release */
	id = -1;
	assert_int_equal(record(s, &r, &id), 1);
	assert_int_equal(id, 1);

	/* a lower security counter is refused, naming the release that holds it */
	r = (struct release_record){ runs[1], "fw", "1.1.0", "main", "k1", 2, 21, 22, 23, NULL, 0, 0, 0 };
	assert_int_equal(record(s, &r, &id), OTA_ECONFLICT);
	assert_non_null(strstr(ota_error_last(), "security counter 2 is lower than 3 (release 1.0.0 of fw)"));
	/* and a version not greater than the branch's last */
	r = (struct release_record){ runs[1], "fw", "0.9.0", "main", "k1", 3, 21, 22, 23, NULL, 0, 0, 0 };
	assert_int_equal(record(s, &r, &id), OTA_ECONFLICT);
	assert_non_null(strstr(ota_error_last(), "version 0.9.0 is not greater than 1.0.0"));
	r = (struct release_record){ runs[1], "fw", "1.1.0", "main", "k1", 3, 21, 22, 23, NULL, 0, 0, 0 };
	assert_int_equal(record(s, &r, &id), 0);
	assert_int_equal(id, 2);
	/* ties on the counter: the message names the latest release */
	r = (struct release_record){ runs[2], "fw", "2.0.0", "beta", "k1", 1, 31, 32, 33, NULL, 0, 0, 0 };
	assert_int_equal(record(s, &r, &id), OTA_ECONFLICT);
	assert_non_null(strstr(ota_error_last(), "(release 1.1.0 of fw)"));

	/* a reissue of release 1 replaces it: its devices roll forward */
	r = (struct release_record){ runs[3], "fw", "1.2.0", "main", "k2", 4, 41, 42, 43, NULL, 0, 1, 1 };
	assert_int_equal(record(s, &r, &id), 0);
	assert_int_equal(id, 3);

	/* the same version on another branch breaks UNIQUE(product, version):
	 * the failed INSERT spoils the transaction, on both backends */
	r = (struct release_record){ runs[4], "fw", "1.2.0", "beta", "k1", 5, 51, 52, 53, NULL, 0, 0, 0 };
	dbconv_begin(s);
	assert_true(release_store_record(s, &r, 1, &id) < 0);
	assert_true(store_commit(s) < 0);
	store_rollback(s);

	assert_rows(s, "SELECT id, run_id, product, version, branch, security_counter, key_id, manifest_artifact,"
		       " envelope_artifact, provenance_artifact, created_at, state, rollback_to, reissue_of"
		       " FROM releases ORDER BY id",
		    "1|1|fw|1.0.0|main|3|k1|11|12|13|9001|rolled_back|3|-\n"
		    "2|2|fw|1.1.0|main|3|k1|21|22|23|9002|created|-|-\n"
		    "3|4|fw|1.2.0|main|4|k2|41|42|43|9004|reissue|-|1\n");
	assert_rows(s, "SELECT id, released FROM artifacts ORDER BY id", "1|1\n");
	store_close(s);
}

/* ---- main --------------------------------------------------------------------- */

int main(void)
{
	const struct CMUnitTest tests[] = {
		DBCONV_BOTH(every_statement_of_the_converted_files_prepares),
		DBCONV_BOTH(deliveries_are_recorded_once_and_runs_get_ids_from_returning),
		DBCONV_BOTH(stages_and_jobs_insert_with_their_ids),
		DBCONV_BOTH(releases_follow_the_anti_rollback_rules_and_record_once),
	};
	int rc;

	dbconv_start("test_dbconv_runs");
	rc = cmocka_run_group_tests_name("dbconv_runs", tests, NULL, NULL);
	dbconv_finish();
	return rc;
}
