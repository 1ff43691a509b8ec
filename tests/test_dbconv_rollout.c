/*
 * test_dbconv_rollout.c - rollout.c and rollout_ctl.c on the storage layer
 * (docs/storage.md, conversion plan step 3): their SQL on a real
 * PostgreSQL cluster (tests/pgcluster.h) as well as on SQLite.
 *
 * Every statement the two files prepare is found in their source (each
 * string literal passed to store_q() or Q()) and prepared on both
 * backends after store.c's migrations, so a dialect problem fails here
 * rather than in production.  Then the rollout tables' own writes run
 * with rows: a rollout created from its job, its release found, steps and
 * holds saved, gate verdicts stored, a release rolled back, a run
 * canceled; the rows, rollout_status() and rollout_exposures() must say
 * the same on PostgreSQL as on SQLite.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <jansson.h>

#include "../common/util.h"
#include "../orchestrator/db/db.h"
#include "../orchestrator/rollout_int.h"
#include "../orchestrator/store.h"
#include "harness.h"
#include "dbconv.h"

/* Both files prepared this many statements when they were converted; the
 * scan must find at least as many (a scanner finding none proves nothing). */
#define KNOWN_STATEMENTS 30

#define T0 1700000000000LL

/* ---- fixtures ------------------------------------------------------------- */

/* A fresh, migrated store on kind's backend; NULL (skip) without PostgreSQL. */
static struct store *fresh_store(enum db_backend kind)
{
	if (kind == DB_POSTGRES && !dbconv_pg_available())
		return NULL;
	return dbconv_open_store(kind);
}

static void must(int rc, const char *what)
{
	if (rc < 0)
		fail_msg("%s: %s", what, ota_error_last());
}

static int64_t add_run(struct store *s)
{
	return dbconv_insert(s, "INSERT INTO runs(pipeline, file, yaml, ref, state, trigger, created_at) VALUES ('fw', 'fw.yml', '',"
				" 'refs/heads/main', 'running', 'push', ?) RETURNING id", "i", (int64_t)T0);
}

/* A run's rollout stage and its job, whose spec carries the stage's keys. */
static int64_t add_rollout_job(struct store *s, int64_t run, const char *stage, const char *extra)
{
	int64_t sid = dbconv_insert(s, "INSERT INTO stages(run_id, idx, name, kind, state, needs) VALUES (?, 0, ?, 'rollout',"
				       "'running', '[]') RETURNING id", "it", run, stage);
	char *spec = xasprintf("{\"extra\": %s}", extra);
	int64_t job = dbconv_insert(s, "INSERT INTO jobs(run_id, stage_id, idx, name, spec, state, retries_left,"
				       " infra_retries_left) VALUES (?, ?, 0, ?, ?, 'running', 0, 0) RETURNING id", "iitt", run, sid,
				    stage, spec);
	free(spec);
	return job;
}

static int64_t add_release(struct store *s, int64_t run, const char *version, int64_t counter, const char *sha)
{
	int64_t art = dbconv_insert(s, "INSERT INTO artifacts(run_id, job_id, attempt, name, sha256, size, created_at)"
				       " VALUES (?, ?, 1, 'manifest.json', ?, 10, ?) RETURNING id", "iiti", run, run, sha, (int64_t)T0);
	return dbconv_insert(s, "INSERT INTO releases(run_id, product, version, branch, security_counter, key_id,"
				" manifest_artifact, created_at) VALUES (?, 'sensor', ?, 'main', ?, 'k1', ?, ?) RETURNING id",
			     "itiii", run, version, counter, art, (int64_t)T0);
}

static int64_t rollout_of_job(struct store *s, int64_t job)
{
	struct db_stmt *st = store_q(s, "SELECT id FROM rollouts WHERE job_id = ?");
	int64_t id = 0;

	assert_non_null(st);
	db_bind_int64(st, 1, job);
	if (db_step(st) == 1)
		id = db_column_int64(st, 0);
	db_reset(st);
	return id;
}

/* Every row of a query as a JSON array of arrays of text (NULL as null),
 * the same on both backends when the rows are. */
static json_t *rows(struct store *s, const char *sql, int64_t arg)
{
	struct db_stmt *st = store_q(s, sql);
	json_t *out = json_array();

	if (!st)
		fail_msg("%s: %s", sql, ota_error_last());
	db_bind_int64(st, 1, arg);
	while (db_step(st) == 1) {
		json_t *row = json_array();
		for (int i = 0; i < db_column_count(st); i++) {
			enum db_type t = db_column_type(st, i);
			if (t == DB_NULL)
				json_array_append_new(row, json_null());
			else if (t == DB_FLOAT)
				json_array_append_new(row, json_real(db_column_double(st, i)));
			else
				json_array_append_new(row, json_string(db_column_text(st, i)));
		}
		json_array_append_new(out, row);
	}
	db_reset(st);
	return out;
}

/* ---- every statement prepares ------------------------------------------ */

/* The SQL of every store_q(X, "...") and Q(e, "...") call in the files. */
static void prepare_all(enum db_backend kind)
{
	static const char *const files[] = { "orchestrator/rollout.c", "orchestrator/rollout_ctl.c" };
	struct dbconv_sql l = DBCONV_SQL_INIT;

	for (size_t i = 0; i < OTA_ARRAY_SIZE(files); i++) {
		dbconv_scan_calls(files[i], "store_q(", 0, &l);
		dbconv_scan_calls(files[i], "Q(e, ", 0, &l);
	}
	if (l.sql.n < KNOWN_STATEMENTS)
		fail_msg("found %zu statements in rollout.c and rollout_ctl.c, expected %d or more", l.sql.n,
			 KNOWN_STATEMENTS);
	dbconv_prepare_all(kind, &l, NULL);
	dbconv_sql_clear(&l);
}

static void every_rollout_statement_prepares_on_sqlite(void **state)
{
	prepare_all(DB_SQLITE);
}

static void every_rollout_statement_prepares_on_postgres(void **state)
{
	prepare_all(DB_POSTGRES);
}

/* ---- the rollout tables' writes, with rows ------------------------------ */

static const char k_extra[] = "{\"steps\": [{\"percent\": 5, \"hold\": \"6h\"}, {\"percent\": 100, \"hold\": \"1h\"}],"
			      " \"gates\": [\"crash_free\", \"boots\"], \"max_extension\": \"2h\"}";

static json_t *eval(const char *gate, const char *verdict, double estimate, int with_bounds, int64_t n)
{
	json_t *j = json_pack("{ss ss sf sI}", "gate", gate, "verdict", verdict, "estimate", estimate, "n", (json_int_t)n);
	if (with_bounds) {
		json_object_set_new(j, "lo", json_real(estimate - 0.25));
		json_object_set_new(j, "hi", json_real(estimate + 0.125));
	}
	return j;
}

/*
 * One release's walk on kind's backend, asserting as it goes; returns what
 * the tables, rollout_status() and rollout_exposures() said, to compare
 * across backends (NULL when PostgreSQL is absent).
 */
static json_t *walk(enum db_backend kind)
{
	struct store *s = fresh_store(kind);
	struct rollout_row r;
	json_t *seen, *evals, *status, *exp = NULL, *x;
	int64_t old_run, old_rel, run, rel, job, ro, run2, job2, ro2;

	if (!s)
		return NULL;
	seen = json_object();
	must(store_begin(s), "begin");
	old_run = add_run(s);
	old_rel = add_release(s, old_run, "1.0.0", 3, "aaaaaaaaaaaaaaaabbbb");
	must(rollout_store_release_state(s, old_rel, "released", 0), "old release released");
	run = add_run(s);
	rel = add_release(s, run, "1.1.0", 3, "0123456789abcdefffff");
	job = add_rollout_job(s, run, "canary", k_extra);
	/* created from the job, in 'starting'; a second start keeps the row */
	must(rollout_store_create(s, job, T0 + 10), "create");
	must(rollout_store_create(s, job, T0 + 20), "create again");
	must(store_commit(s), "commit");
	ro = rollout_of_job(s, job);
	assert_true(ro > 0);
	json_object_set_new(seen, "created", rows(s, "SELECT job_id, run_id, release_id, stage, kind, state, step, percent_bp,"
						     " seq, created_at FROM rollouts WHERE job_id = ?", job));
	assert_int_equal(json_array_size(json_object_get(seen, "created")), 1);
	assert_int_equal(rollout_store_create(s, job + 100, T0), OTA_ENOTFOUND);

	/* activation finds the release (already there, so nothing changes) */
	must(store_begin(s), "begin");
	must(rollout_store_find_release(s, ro), "find release");
	must(store_commit(s), "commit");
	must(rollout_load(s, ro, &r), "load");
	assert_int_equal(r.release_id, rel);
	assert_string_equal(r.state, "starting");
	assert_string_equal(r.kind, "rollout");
	assert_string_equal(r.stage, "canary");
	assert_string_equal(r.product, "sensor");
	assert_string_equal(r.version, "1.1.0");
	assert_string_equal(r.release_state, "created");
	assert_int_equal(r.security_counter, 3);
	assert_int_equal(rollout_plan_len(&r), 2);
	assert_int_equal(r.seq, 0);

	/* step 1 holding at 5 %, a breach counter, then gate verdicts */
	snprintf(r.state, sizeof(r.state), "holding");
	r.step = 0;
	r.bp = 500;
	r.step_started_at = T0 + 100;
	r.hold_until = T0 + 100 + 6 * 3600000LL;
	r.extend_until = r.hold_until + 2 * 3600000LL;
	r.errors = 1;
	json_object_set_new(r.breaches, "boots", json_integer(2));
	evals = json_array();
	json_array_append_new(evals, eval("crash_free", "inconclusive", 0.5, 0, 10));
	json_array_append_new(evals, eval("boots", "pass", 0.9921875, 1, 1200));
	json_array_append_new(evals, json_pack("{ss ss}", "gate", "crash_free", "verdict", "pass"));
	must(store_begin(s), "begin");
	must(rollout_store_release_state(s, rel, "rolling", 0), "rolling");
	must(rollout_store_save(s, &r, "step 1", T0 + 100), "save holding");
	must(rollout_store_evals(s, &r, evals, T0 + 200), "evals");
	must(store_commit(s), "commit");
	json_decref(evals);
	rollout_row_release(&r);
	must(rollout_load(s, ro, &r), "load");
	assert_string_equal(r.state, "holding");
	assert_int_equal(r.bp, 500);
	assert_int_equal(r.hold_until, T0 + 100 + 6 * 3600000LL);
	assert_int_equal(r.extend_until, T0 + 100 + 8 * 3600000LL);
	assert_int_equal(r.errors, 1);
	assert_int_equal(json_integer_value(json_object_get(r.breaches, "boots")), 2);
	assert_int_equal(r.seq, 1);
	json_object_set_new(seen, "evals", rows(s, "SELECT step, gate, at, verdict, estimate, lo, hi, n FROM gate_evals"
						   " WHERE rollout_id = ? ORDER BY id", ro));
	assert_int_equal(json_array_size(json_object_get(seen, "evals")), 3);
	/* a verdict without numbers keeps them NULL */
	x = json_array_get(json_object_get(seen, "evals"), 2);
	assert_true(json_is_null(json_array_get(x, 4)) && json_is_null(json_array_get(x, 7)));
	/* doubles survive the trip exactly */
	x = json_array_get(json_object_get(seen, "evals"), 1);
	assert_true(json_real_value(json_array_get(x, 4)) == 0.9921875);
	assert_true(json_real_value(json_array_get(x, 5)) == 0.9921875 - 0.25);

	/* the status page's view: the latest verdict of each gate, the reason */
	status = rollout_status(s, rel);
	assert_int_equal(json_array_size(status), 1);
	x = json_array_get(status, 0);
	assert_string_equal(json_string_value(json_object_get(x, "reason")), "step 1");
	assert_string_equal(json_string_value(json_object_get(json_object_get(json_object_get(x, "gates"), "crash_free"),
							      "verdict")), "pass");
	assert_string_equal(json_string_value(json_object_get(json_object_get(json_object_get(x, "gates"), "boots"),
							      "verdict")), "pass");
	json_object_del(x, "now"); /* the clock, not the rows */
	json_object_set_new(seen, "status", status);

	/* what the update server is told: the holding step's segment */
	must(rollout_exposures(s, &exp), "exposures");
	json_object_set(seen, "exposures_holding", exp);
	assert_int_equal(json_array_size(exp), 1);
	x = json_array_get(exp, 0);
	assert_int_equal(json_integer_value(json_object_get(x, "release")), rel);
	assert_string_equal(json_string_value(json_object_get(x, "salt")), "0123456789abcdef");
	assert_int_equal(json_integer_value(json_object_get(x, "seq")), 1);
	assert_int_equal(json_integer_value(json_object_get(json_array_get(json_object_get(x, "segments"), 0), "bp")), 500);
	assert_true(json_is_true(json_object_get(x, "active")));
	json_decref(exp);

	/* no reason keeps the last one; a final state stamps finished_at */
	snprintf(r.state, sizeof(r.state), "failed");
	must(store_begin(s), "begin");
	must(rollout_store_save(s, &r, NULL, T0 + 300), "save failed");
	must(rollout_store_release_state(s, rel, "rolled_back", old_rel), "rolled back");
	must(store_commit(s), "commit");
	json_object_set_new(seen, "failed", rows(s, "SELECT state, reason, seq, finished_at FROM rollouts WHERE id = ?", ro));
	x = json_array_get(json_object_get(seen, "failed"), 0);
	assert_string_equal(json_string_value(json_array_get(x, 1)), "step 1");
	assert_string_equal(json_string_value(json_array_get(x, 3)), "1700000000300");
	json_object_set_new(seen, "release", rows(s, "SELECT state, rollback_to FROM releases WHERE id = ?", rel));
	/* a later state change without a target keeps the rollback target */
	must(store_begin(s), "begin");
	must(rollout_store_release_state(s, rel, "halted", 0), "halted");
	must(store_commit(s), "commit");
	x = rows(s, "SELECT state, COALESCE(rollback_to, 0) FROM releases WHERE id = ?", rel);
	assert_string_equal(json_string_value(json_array_get(json_array_get(x, 0), 0)), "halted");
	assert_int_equal(atoll(json_string_value(json_array_get(json_array_get(x, 0), 1))), old_rel);
	json_decref(x);
	/* devices are sent back: the old release is exposed as the target */
	must(rollout_exposures(s, &exp), "exposures");
	json_object_set_new(seen, "exposures_rolled_back", exp);
	assert_int_equal(json_array_size(exp), 2);
	assert_int_equal(json_integer_value(json_object_get(json_array_get(exp, 0), "release")), old_rel);
	assert_int_equal(json_integer_value(json_object_get(json_array_get(exp, 1), "rollback_to")), old_rel);
	assert_int_equal(json_array_size(json_object_get(json_array_get(exp, 1), "segments")), 0);
	rollout_row_release(&r);

	/* a canceled run stops its active rollouts, once */
	must(store_begin(s), "begin");
	run2 = add_run(s);
	add_release(s, run2, "1.2.0", 4, "ffffffffffffffff0000");
	job2 = add_rollout_job(s, run2, "production", k_extra);
	must(rollout_store_create(s, job2, T0 + 400), "create 2");
	must(store_commit(s), "commit");
	ro2 = rollout_of_job(s, job2);
	must(store_begin(s), "begin");
	assert_int_equal(rollout_store_cancel_run(s, run2, T0 + 500), 1);
	assert_int_equal(rollout_store_cancel_run(s, run2, T0 + 600), 0);
	assert_int_equal(rollout_store_cancel_run(s, run, T0 + 600), 0); /* already failed */
	must(store_commit(s), "commit");
	json_object_set_new(seen, "canceled", rows(s, "SELECT state, reason, seq, finished_at FROM rollouts WHERE id = ?", ro2));
	x = json_array_get(json_object_get(seen, "canceled"), 0);
	assert_string_equal(json_string_value(json_array_get(x, 0)), "canceled");
	assert_string_equal(json_string_value(json_array_get(x, 2)), "1");
	store_close(s);
	return seen;
}

static void rollout_rows_steps_holds_and_verdicts_round_trip_on_sqlite(void **state)
{
	json_decref(walk(DB_SQLITE));
}

static void rollout_rows_steps_holds_and_verdicts_round_trip_on_postgres(void **state)
{
	json_t *seen = walk(DB_POSTGRES);
	if (!seen)
		skip();
	json_decref(seen);
}

static void postgres_gives_the_same_rows_status_and_exposures_as_sqlite(void **state)
{
	json_t *pg = walk(DB_POSTGRES), *lite;
	char *a, *b;

	if (!pg)
		skip();
	lite = walk(DB_SQLITE);
	a = json_dumps(lite, JSON_SORT_KEYS | JSON_INDENT(1));
	b = json_dumps(pg, JSON_SORT_KEYS | JSON_INDENT(1));
	if (strcmp(a, b) != 0)
		fail_msg("SQLite and PostgreSQL differ:\n--- sqlite\n%s\n--- postgres\n%s", a, b);
	free(a);
	free(b);
	json_decref(lite);
	json_decref(pg);
}

/* A rollout of a run without a release row: both backends refuse it alike
 * (rollouts.release_id references releases; 0 is no release). */
static void a_rollout_without_a_release_is_refused_alike_on_both_backends(void **state)
{
	enum db_backend kinds[2] = { DB_SQLITE, DB_POSTGRES };
	int rcs[2];

	for (int i = 0; i < 2; i++) {
		struct store *s = fresh_store(kinds[i]);
		int64_t run, job;
		if (!s)
			skip();
		must(store_begin(s), "begin");
		run = add_run(s);
		job = add_rollout_job(s, run, "canary", k_extra);
		must(store_commit(s), "commit");
		must(store_begin(s), "begin");
		rcs[i] = rollout_store_create(s, job, T0);
		store_rollback(s);
		assert_int_equal(rollout_of_job(s, job), 0);
		store_close(s);
	}
	assert_int_equal(rcs[0], DB_ECONSTRAINT);
	assert_int_equal(rcs[1], DB_ECONSTRAINT);
}

/* ---- main --------------------------------------------------------------------- */

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(every_rollout_statement_prepares_on_sqlite),
		cmocka_unit_test(every_rollout_statement_prepares_on_postgres),
		cmocka_unit_test(rollout_rows_steps_holds_and_verdicts_round_trip_on_sqlite),
		cmocka_unit_test(rollout_rows_steps_holds_and_verdicts_round_trip_on_postgres),
		cmocka_unit_test(postgres_gives_the_same_rows_status_and_exposures_as_sqlite),
		cmocka_unit_test(a_rollout_without_a_release_is_refused_alike_on_both_backends),
	};
	int rc;

	dbconv_start("test_dbconv_rollout");
	rc = cmocka_run_group_tests_name("dbconv_rollout", tests, NULL, NULL);
	dbconv_finish();
	return rc;
}
