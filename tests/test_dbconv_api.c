/*
 * test_dbconv_api.c - every SQL statement of the API's handlers prepares on
 * SQLite and on a real PostgreSQL (docs/storage.md, conversion plan).
 *
 * api_hooks.c, api_ops.c and api_agent.c were converted in step 2 but run
 * only under the engine and the HTTP server, so their SQL had never met
 * PostgreSQL (api_ops.c's /metrics had an unnamed subquery, which
 * PostgreSQL refuses).  Their statements are not all store_q() calls
 * (api_ops.c passes SQL to helpers), so this scan takes every string
 * literal, adjacent ones joined as the compiler joins them, that starts
 * with SELECT, INSERT, UPDATE, DELETE or WITH, from the source text: a
 * statement added later is checked too.
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
#include "../orchestrator/store.h"
#include "dbconv.h"
#include "harness.h"

static const char *const k_files[] = {
	"orchestrator/api/api_hooks.c",
	"orchestrator/api/api_ops.c",
	"orchestrator/api/api_agent.c",
};

static void prepare_all(enum db_backend kind)
{
	struct dbconv_sql l = DBCONV_SQL_INIT;

	for (size_t i = 0; i < OTA_ARRAY_SIZE(k_files); i++)
		if (dbconv_scan_literals(k_files[i], &l) == 0)
			fail_msg("%s: no SQL statement found (moved? update k_files)", k_files[i]);
	dbconv_prepare_all(kind, &l, NULL);
	dbconv_sql_clear(&l);
}

static void every_api_statement_prepares_on_sqlite(void **state)
{
	(void)state;
	prepare_all(DB_SQLITE);
}

static void every_api_statement_prepares_on_postgres(void **state)
{
	(void)state;
	prepare_all(DB_POSTGRES);
}

/* the scan finds what it should, and PostgreSQL refuses what it refused */
static void an_unnamed_subquery_is_refused_by_postgres_and_named_it_runs_on_both(void **state)
{
	static const char *const unnamed = "SELECT COUNT(*) FROM (SELECT 1 AS x FROM artifacts)";
	static const char *const named = "SELECT COUNT(*) FROM (SELECT 1 AS x FROM artifacts) AS objects";
	struct store *s;
	struct db_stmt *st = NULL;

	(void)state;
	dbconv_need_pg();
	s = dbconv_open_store(DB_POSTGRES);
	assert_true(db_prepare(store_conn(s), &st, unnamed) < 0);
	assert_int_equal(db_prepare(store_conn(s), &st, named), 0);
	assert_int_equal(db_step(st), 1);
	assert_int_equal(db_column_int64(st, 0), 0);
	db_finalize(st);
	store_close(s);
	s = dbconv_open_store(DB_SQLITE);
	assert_int_equal(db_prepare(store_conn(s), &st, named), 0);
	assert_int_equal(db_step(st), 1);
	db_finalize(st);
	store_close(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(every_api_statement_prepares_on_sqlite),
		cmocka_unit_test(every_api_statement_prepares_on_postgres),
		cmocka_unit_test(an_unnamed_subquery_is_refused_by_postgres_and_named_it_runs_on_both),
	};
	int rc;

	dbconv_start("test_dbconv_api");
	rc = cmocka_run_group_tests(tests, NULL, NULL);
	dbconv_finish();
	return rc;
}
