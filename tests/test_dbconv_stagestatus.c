/*
 * test_dbconv_stagestatus.c - the statements of per-stage commit statuses
 * (orchestrator/notify/outbox_stage.c) on the storage layer: each prepares
 * and runs on SQLite and on a real PostgreSQL cluster (tests/dbconv.h), so
 * a dialect problem fails here rather than in production.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <cmocka.h>

#include "../orchestrator/notify/notify_int.h"
#include "dbconv.h"

#define BOTH DBCONV_BOTH

static void each_statement_prepares_and_runs(void **state)
{
	struct store *s = dbconv_case_store(state);
	const char *reads[] = { stage_sql_run, stage_sql_running, stage_sql_rollout };
	struct db_stmt *st;

	if (!s)
		return;
	/* the reads, on an empty store: no row */
	for (size_t i = 0; i < OTA_ARRAY_SIZE(reads); i++) {
		if (db_prepare(store_conn(s), &st, reads[i]) < 0)
			fail_msg("does not prepare: %s\n  %s", db_errmsg(store_conn(s)), reads[i]);
		db_bind_int64(st, 1, 1);
		assert_int_equal(db_step(st), 0);
		db_finalize(st);
	}
	/* the row a stage event writes, through the outbox's own insert */
	assert_true(outbox_store_add(s, "0123456789abcdef0123456789abcdef", "status:acme/fw", "stage.passed",
				     "{\"stage\":{\"name\":\"build\",\"state\":\"passed\"}}", 1000) >= 0);
	assert_int_equal(dbconv_count(s, "SELECT COUNT(*) FROM outbox WHERE state = 'pending' AND event = 'stage.passed'"),
			 1);
	store_close(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		BOTH(each_statement_prepares_and_runs),
	};
	int rc;

	dbconv_start("test_dbconv_stagestatus");
	rc = cmocka_run_group_tests(tests, NULL, NULL);
	dbconv_finish();
	return rc;
}
