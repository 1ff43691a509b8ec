/*
 * test_dbconv_engine.c - engine.c on the storage layer (docs/storage.md,
 * conversion plan step 3): its SQL runs on SQLite and on a real PostgreSQL
 * cluster started in a temporary directory (tests/pgcluster.h).
 *
 * Every SQL statement in orchestrator/engine.c is read from the source
 * file itself, so a statement added later is checked too, and prepared on
 * both backends after store.c's migrations: a dialect problem fails here,
 * not in production.  The table work that needs no engine thread
 * (engine_int.h: engine_store_*) then runs with realistic rows on both
 * backends, which must give the same answers: leases extended (a job with
 * no lease keeps none, where PostgreSQL's GREATEST would differ from
 * SQLite's MAX), the next lease or deadline, the jobs that ran out, and a
 * stage's outcome from its jobs.  Each case runs as "sqlite/..." and
 * "postgres/...".
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
#include "../orchestrator/store.h"
#include "harness.h"
#include "dbconv.h"

/* ---- fixtures ------------------------------------------------------------- */

/* Step an INSERT ... RETURNING id and return the id. */
static int64_t returned_id(struct db_stmt *st, const char *what)
{
	int64_t id;

	if (db_step(st) != 1)
		fail_msg("insert %s: %s", what, ota_error_last());
	id = db_column_int64(st, 0);
	db_reset(st);
	return id;
}

static int64_t add_run(struct store *s)
{
	struct db_stmt *st = store_q(s, "INSERT INTO runs(pipeline, file, yaml, ref, state, trigger, created_at)"
					" VALUES ('fw', 'fw.yml', '', 'refs/heads/main', 'running', 'push', 1) RETURNING id");

	assert_non_null(st);
	return returned_id(st, "run");
}

static int64_t add_stage(struct store *s, int64_t run, const char *name)
{
	struct db_stmt *st = store_q(s, "INSERT INTO stages(run_id, idx, name, kind, state, needs)"
					" VALUES (?, 0, ?, 'build', 'running', '[]') RETURNING id");

	assert_non_null(st);
	db_bind_int64(st, 1, run);
	db_bind_text(st, 2, name);
	return returned_id(st, "stage");
}

/* A job; a lease or deadline of -1 is NULL (a job run inside otacd has no
 * lease, a rollout no deadline). */
static int64_t add_job(struct store *s, int64_t run, int64_t stage, const char *state, int64_t lease,
		       int64_t deadline)
{
	struct db_stmt *st = store_q(s, "INSERT INTO jobs(run_id, stage_id, idx, name, spec, state, retries_left,"
					" infra_retries_left, lease_expires, deadline)"
					" VALUES (?, ?, 0, 'j', '{}', ?, 0, 0, ?, ?) RETURNING id");

	assert_non_null(st);
	db_bind_int64(st, 1, run);
	db_bind_int64(st, 2, stage);
	db_bind_text(st, 3, state);
	if (lease >= 0)
		db_bind_int64(st, 4, lease);
	if (deadline >= 0)
		db_bind_int64(st, 5, deadline);
	return returned_id(st, "job");
}

/* A job's lease_expires, -1 for NULL. */
static int64_t lease_of(struct store *s, int64_t job)
{
	struct db_stmt *st = store_q(s, "SELECT lease_expires FROM jobs WHERE id = ?");
	int64_t v;

	assert_non_null(st);
	db_bind_int64(st, 1, job);
	assert_int_equal(db_step(st), 1);
	v = db_column_type(st, 0) == DB_NULL ? -1 : db_column_int64(st, 0);
	db_reset(st);
	return v;
}

/* ---- engine.c's SQL, read from the source ----------------------------------- */

static void every_statement_in_engine_c_prepares(void **state)
{
	struct dbconv_sql l = DBCONV_SQL_INIT;

	/* engine.c has 29 statements: far fewer means the reader broke */
	if (dbconv_scan_literals("orchestrator/engine.c", &l) < 25)
		fail_msg("found only %zu SQL statements in engine.c", l.sql.n);
	dbconv_prepare_all(dbconv_backend(state), &l, NULL);
	dbconv_sql_clear(&l);
}

/* ---- leases --------------------------------------------------------------------- */

static void leases_are_extended_only_for_jobs_that_hold_one(void **state)
{
	struct store *s = dbconv_case_store(state);
	int64_t run, stage, short_lease, long_lease, inproc, queued, done;

	dbconv_begin(s);
	run = add_run(s);
	stage = add_stage(s, run, "build");
	short_lease = add_job(s, run, stage, "running", 1000, 9000);
	long_lease = add_job(s, run, stage, "running", 99000, -1);
	inproc = add_job(s, run, stage, "running", -1, 7000);   /* run inside otacd: no lease */
	queued = add_job(s, run, stage, "queued", 10, -1);      /* not running: untouched */
	done = add_job(s, run, stage, "passed", -1, -1);
	dbconv_commit(s);

	dbconv_begin(s);
	assert_int_equal(engine_store_extend_leases(s, 5000), 0);
	dbconv_commit(s);
	assert_int_equal(lease_of(s, short_lease), 5000); /* raised to one lease from now */
	assert_int_equal(lease_of(s, long_lease), 99000); /* never shortened */
	assert_int_equal(lease_of(s, inproc), -1);         /* no lease given: tick() would fail it */
	assert_int_equal(lease_of(s, queued), 10);
	assert_int_equal(lease_of(s, done), -1);
	store_close(s);
}

/* ---- the next wake-up and the jobs that ran out ---------------------------------- */

static void next_due_is_the_earliest_lease_or_deadline_of_a_running_job(void **state)
{
	struct store *s = dbconv_case_store(state);
	int64_t run, stage;

	assert_true(engine_store_next_due(s) == INT64_MAX); /* no running job */
	dbconv_begin(s);
	run = add_run(s);
	stage = add_stage(s, run, "build");
	add_job(s, run, stage, "running", -1, -1); /* a rollout: neither */
	dbconv_commit(s);
	/* the sentinel both COALESCEs fall back to, on both backends */
	assert_true(engine_store_next_due(s) == 9000000000000000LL);

	dbconv_begin(s);
	add_job(s, run, stage, "running", 5000, 7000);
	add_job(s, run, stage, "running", -1, 3000);
	add_job(s, run, stage, "queued", 100, 100); /* not running: not due */
	dbconv_commit(s);
	assert_true(engine_store_next_due(s) == 3000);
	store_close(s);
}

static void due_jobs_tell_a_lost_lease_from_a_passed_deadline(void **state)
{
	struct store *s = dbconv_case_store(state);
	int64_t run, stage, lost_agent, timed_out, inproc_timed_out, ids[8];
	int lost[8];
	size_t n = 0;

	dbconv_begin(s);
	run = add_run(s);
	stage = add_stage(s, run, "build");
	lost_agent = add_job(s, run, stage, "running", 900, 5000);
	timed_out = add_job(s, run, stage, "running", 5000, 900);
	inproc_timed_out = add_job(s, run, stage, "running", -1, 1000);
	add_job(s, run, stage, "running", 2000, -1); /* not yet */
	add_job(s, run, stage, "queued", 1, 1);      /* not running */
	dbconv_commit(s);

	dbconv_begin(s);
	assert_int_equal(engine_store_due_jobs(s, 1000, ids, lost, OTA_ARRAY_SIZE(ids), &n), 0);
	dbconv_commit(s);
	assert_int_equal(n, 3);
	for (size_t i = 0; i < n; i++) {
		if (ids[i] == lost_agent)
			assert_int_equal(lost[i], 1);
		else if (ids[i] == timed_out || ids[i] == inproc_timed_out)
			assert_int_equal(lost[i], 0); /* a NULL lease is not a lost one */
		else
			fail_msg("job %lld is not due", (long long)ids[i]);
	}
	/* no more than asked for */
	assert_int_equal(engine_store_due_jobs(s, 1000, ids, lost, 1, &n), 0);
	assert_int_equal(n, 1);
	store_close(s);
}

/* ---- stages --------------------------------------------------------------------- */

/* The outcome of a new stage whose jobs are in the given states. */
static const char *outcome_of(struct store *s, int64_t run, const char *const *states, size_t n)
{
	static int seq;
	char name[32];
	const char *out = "unset";
	int64_t stage;

	snprintf(name, sizeof(name), "s%d", ++seq);
	dbconv_begin(s);
	stage = add_stage(s, run, name);
	for (size_t i = 0; i < n; i++)
		add_job(s, run, stage, states[i], -1, -1);
	if (engine_store_stage_outcome(s, stage, &out) < 0)
		fail_msg("stage outcome: %s", ota_error_last());
	dbconv_commit(s);
	return out;
}

#define OUTCOME(...) outcome_of(s, run, (const char *const[]){ __VA_ARGS__ }, \
				sizeof((const char *const[]){ __VA_ARGS__ }) / sizeof(const char *))

static void a_stage_ends_when_all_its_jobs_did(void **state)
{
	struct store *s = dbconv_case_store(state);
	int64_t run;

	dbconv_begin(s);
	run = add_run(s);
	dbconv_commit(s);
	assert_null(OUTCOME("passed", "running"));
	assert_null(OUTCOME("queued"));
	assert_string_equal(OUTCOME("passed", "passed"), "passed");
	assert_string_equal(OUTCOME("passed", "failed"), "failed");
	assert_string_equal(OUTCOME("failed", "canceled", "passed"), "canceled");
	assert_string_equal(OUTCOME("passed", "skipped"), "failed");
	/* no jobs: nothing unfinished, nothing failed */
	assert_string_equal(outcome_of(s, run, NULL, 0), "passed");
	store_close(s);
}

/* ---- main --------------------------------------------------------------------- */

int main(void)
{
	const struct CMUnitTest tests[] = {
		DBCONV_BOTH(every_statement_in_engine_c_prepares),
		DBCONV_BOTH(leases_are_extended_only_for_jobs_that_hold_one),
		DBCONV_BOTH(next_due_is_the_earliest_lease_or_deadline_of_a_running_job),
		DBCONV_BOTH(due_jobs_tell_a_lost_lease_from_a_passed_deadline),
		DBCONV_BOTH(a_stage_ends_when_all_its_jobs_did),
	};
	int rc;

	dbconv_start("test_dbconv_engine");
	rc = cmocka_run_group_tests_name("dbconv_engine", tests, NULL, NULL);
	dbconv_finish();
	return rc;
}
