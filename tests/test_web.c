/*
 * test_web.c - the status page in a real browser: runs tests/web/test.mjs
 * (playwright-core driving Debian's headless Chromium against the real
 * otacd and otacd-fleetsim from $OTACD_BIN) and fails with its output if
 * any check failed.  See docs/web.md for what it checks; screenshots go to
 * $OTACD_TEST_OUT (default /tmp/otacd-web-shots).
 *
 * The overview's reads at scale: 10,000 runs seeded into a stopped
 * daemon's database (tests/web/seed-runs.sql), then every page and filter
 * of GET /api/v1/runs is compared with the database.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include <sqlite3.h>

#include "../common/util.h"
#include "harness.h"

static void status_page_works_in_headless_chromium(void **state)
{
	const char *src = getenv("OTACD_SRC"), *bin = getenv("OTACD_BIN");
	struct buf out = BUF_INIT;
	int rc;

	(void)state;
	if (!src || !*src)
		src = ".";
	if (!bin || !*bin)
		bin = "build/bin";
	if (access("/usr/bin/chromium", X_OK) != 0)
		fail_msg("/usr/bin/chromium is missing: install Debian's chromium (apt-get install chromium)");
	if (h_sh(&out, "command -v node && command -v npm") != 0)
		fail_msg("node and npm are missing: install Debian's nodejs and npm (apt-get install nodejs npm)");

	rc = h_sh(&out,
		  "(cd '%s/tests/web' && (test -d node_modules/playwright-core || npm ci --no-audit --no-fund) && "
		  "OTACD_BIN='%s' node test.mjs)",
		  src, bin);
	if (rc != 0) {
		fprintf(stderr, "%s\n", buf_cstr(&out));
		buf_release(&out);
		fail_msg("the browser test failed (exit %d); its output is above", rc);
	}
	/* the last line is the summary: "N passed, 0 failed" */
	assert_non_null(strstr(buf_cstr(&out), " passed, 0 failed"));
	buf_release(&out);
}

#define SEEDED 10000

/* Insert n runs with tests/web/seed-runs.sql into d's (stopped) database. */
static void seed_runs(struct daemon *d, int n)
{
	const char *src = getenv("OTACD_SRC");
	char *file = xasprintf("%s/tests/web/seed-runs.sql", src && *src ? src : ".");
	char *path = xasprintf("%s/state/otacd.db", d->dir);
	struct buf sql = BUF_INIT;
	sqlite3 *db = NULL;
	sqlite3_stmt *st = NULL;

	assert_int_equal(ota_read_file(&sql, file, 1 << 16), 0);
	assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
	sqlite3_busy_timeout(db, 5000);
	if (sqlite3_prepare_v2(db, buf_cstr(&sql), -1, &st, NULL) != SQLITE_OK)
		fail_msg("%s: %s", file, sqlite3_errmsg(db));
	sqlite3_bind_int(st, sqlite3_bind_parameter_index(st, ":n"), n);
	assert_int_equal(sqlite3_step(st), SQLITE_DONE);
	sqlite3_finalize(st);
	sqlite3_close(db);
	buf_release(&sql);
	free(path);
	free(file);
}

/* Walk every page of GET /api/v1/runs?QUERY&limit=LIMIT: ids strictly
 * descending, each run matching (pipeline, ref, state when non-NULL);
 * returns how many runs there were. */
static int64_t walk_runs(struct daemon *d, const char *query, int limit, const char *pipeline, const char *ref,
			 const char *state)
{
	int64_t before = 0, last = INT64_MAX, count = 0;
	int pages = 0;

	for (;;) {
		char *path = before ? xasprintf("/api/v1/runs?%s&limit=%d&before=%lld", query, limit, (long long)before)
				    : xasprintf("/api/v1/runs?%s&limit=%d", query, limit);
		json_t *ans = NULL, *runs, *run, *next;
		size_t i;

		assert_int_equal(h_get(d, path, &ans), 200);
		runs = json_object_get(ans, "runs");
		json_array_foreach(runs, i, run) {
			int64_t id = json_integer_value(json_object_get(run, "id"));
			assert_true(id < last);
			last = id;
			if (pipeline)
				assert_string_equal(json_string_value(json_object_get(run, "pipeline")), pipeline);
			if (ref)
				assert_string_equal(json_string_value(json_object_get(run, "ref")), ref);
			if (state)
				assert_string_equal(json_string_value(json_object_get(run, "state")), state);
		}
		count += (int64_t)json_array_size(runs);
		next = json_object_get(ans, "next_before");
		/* a full page may have more; a short one is the last */
		if (json_is_null(next)) {
			json_decref(ans);
			free(path);
			break;
		}
		assert_int_equal(json_array_size(runs), limit);
		before = json_integer_value(next);
		assert_int_equal(before, last);
		json_decref(ans);
		free(path);
		assert_true(++pages < 10000);
	}
	return count;
}

static void runs_api_pages_and_filters_10000_runs_correctly(void **state)
{
	const char *const args[] = { "--local-agents", "0", NULL };
	struct daemon d;

	(void)state;
	h_init(&d, NULL);
	assert_int_equal(h_start(&d, args), 0);
	h_kill(&d, SIGTERM);
	seed_runs(&d, SEEDED);
	assert_int_equal(h_start(&d, args), 0);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM runs"), SEEDED);

	/* everything, in pages of 500 (the API's largest) and of 37 */
	assert_int_equal(walk_runs(&d, "", 500, NULL, NULL, NULL), SEEDED);
	assert_int_equal(walk_runs(&d, "", 37, NULL, NULL, NULL), SEEDED);
	/* by pipeline; by branch, short and full; by state; all three */
	assert_int_equal(walk_runs(&d, "pipeline=p3", 200, "p3", NULL, NULL),
			 h_sql_int(&d, "SELECT COUNT(*) FROM runs WHERE pipeline = 'p3'"));
	assert_int_equal(walk_runs(&d, "ref=main", 500, NULL, "refs/heads/main", NULL),
			 h_sql_int(&d, "SELECT COUNT(*) FROM runs WHERE ref = 'refs/heads/main'"));
	assert_int_equal(walk_runs(&d, "ref=refs%2Fheads%2Fdev", 500, NULL, "refs/heads/dev", NULL),
			 h_sql_int(&d, "SELECT COUNT(*) FROM runs WHERE ref = 'refs/heads/dev'"));
	assert_int_equal(walk_runs(&d, "state=failed", 100, NULL, NULL, "failed"),
			 h_sql_int(&d, "SELECT COUNT(*) FROM runs WHERE state = 'failed'"));
	assert_int_equal(walk_runs(&d, "pipeline=p5&ref=dev&state=canceled", 10, "p5", "refs/heads/dev", "canceled"),
			 h_sql_int(&d, "SELECT COUNT(*) FROM runs WHERE pipeline = 'p5' AND ref = 'refs/heads/dev'"
				       " AND state = 'canceled'"));
	/* a tag by its short name finds exactly that run */
	assert_int_equal(walk_runs(&d, "ref=v0.0.5", 50, NULL, "refs/tags/v0.0.5", NULL), 1);
	/* nothing matches: one empty page, no next */
	assert_int_equal(walk_runs(&d, "pipeline=nope", 50, "nope", NULL, NULL), 0);
	h_cleanup(&d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(runs_api_pages_and_filters_10000_runs_correctly),
		cmocka_unit_test(status_page_works_in_headless_chromium),
	};
	return cmocka_run_group_tests_name("web", tests, NULL, NULL);
}
