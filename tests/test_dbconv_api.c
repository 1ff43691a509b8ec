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

struct sql_list {
	struct strvec sql;
	struct strvec where;
};

static int is_statement(const char *s)
{
	static const char *const verbs[] = { "SELECT ", "INSERT ", "UPDATE ", "DELETE ", "WITH " };
	for (size_t i = 0; i < OTA_ARRAY_SIZE(verbs); i++)
		if (!strncmp(s, verbs[i], strlen(verbs[i])))
			return 1;
	return 0;
}

/* The file's text with backslash-newlines removed (caller frees). */
static char *join_lines(const char *src)
{
	struct buf b = BUF_INIT;
	for (const char *p = src; *p; p++) {
		if (p[0] == '\\' && p[1] == '\n')
			p++;
		else
			buf_putc(&b, *p);
	}
	return buf_detach(&b);
}

/* Object-like macros whose body is string literals (#define NAME "..." "..."):
 * names[i] expands to bodies[i]. */
static void find_macros(const char *text, struct strvec *names, struct strvec *bodies)
{
	for (const char *p = text; (p = strstr(p, "#define ")) != NULL;) {
		const char *name = p + 8, *end = name;
		struct buf body = BUF_INIT;
		while ((*end >= 'A' && *end <= 'Z') || (*end >= '0' && *end <= '9') || *end == '_')
			end++;
		p = dbconv_joined_literals(end, &body);
		if (body.len && end > name && *end != '(') {
			buf_putc(&body, '\0');
			strvec_pushf(names, "%.*s", (int)(end - name), name);
			strvec_push(bodies, body.ptr);
		}
		buf_release(&body);
		if (p == end)
			p = end + 1;
	}
}

/* After a literal: more literals and known macros, appended to sql. */
static const char *join_more(const char *p, const struct strvec *names, const struct strvec *bodies,
			     struct buf *sql)
{
	for (;;) {
		const char *q = p;
		size_t i;
		while (*q == ' ' || *q == '\t' || *q == '\n')
			q++;
		for (i = 0; i < names->n; i++) {
			size_t len = strlen(names->v[i]);
			char after = q[len];
			if (!strncmp(q, names->v[i], len) && !(after == '_' || (after >= 'A' && after <= 'Z') ||
							      (after >= '0' && after <= '9')))
				break;
		}
		if (i < names->n) {
			buf_puts(sql, bodies->v[i]);
			p = q + strlen(names->v[i]);
		} else if (*q == '"') {
			p = dbconv_joined_literals(q, sql);
		} else {
			return p;
		}
	}
}

/* Every statement literal of file, adjacent literals and string macros
 * joined, skipping comments and character constants (a '"' there opens no
 * string). */
static size_t scan_file(const char *file, struct sql_list *out)
{
	char *src = dbconv_read_source(file), *text = join_lines(src);
	struct strvec names = STRVEC_INIT, bodies = STRVEC_INIT;
	const char *p = text;
	size_t n = 0;

	find_macros(text, &names, &bodies);

	if (strstr(src, "sqlite3_"))
		fail_msg("%s still calls sqlite3_* (converted to the storage layer: db/db.h)", file);
	while (*p) {
		if (p[0] == '/' && p[1] == '*') {
			const char *end = strstr(p + 2, "*/");
			p = end ? end + 2 : p + strlen(p);
		} else if (p[0] == '/' && p[1] == '/') {
			p += strcspn(p, "\n");
		} else if (p[0] == '\'') {
			p += p[1] == '\\' ? 4 : 3;
		} else if (p[0] == '"') {
			struct buf sql = BUF_INIT;
			int line = 1;
			for (const char *q = text; q < p; q++)
				line += *q == '\n';
			p = join_more(p, &names, &bodies, &sql);
			buf_putc(&sql, '\0');
			if (is_statement(sql.ptr)) {
				strvec_push(&out->sql, sql.ptr);
				strvec_pushf(&out->where, "%s:%d", file, line);
				n++;
			}
			buf_release(&sql);
		} else if (!strncmp(p, "#define ", 8)) {
			p += strcspn(p, "\n"); /* a macro's literal is counted where it is used */
		} else {
			p++;
		}
	}
	strvec_clear(&names);
	strvec_clear(&bodies);
	free(text);
	free(src);
	return n;
}

static void prepare_all(enum db_backend kind)
{
	struct sql_list l = { STRVEC_INIT, STRVEC_INIT };
	struct store *s;

	for (size_t i = 0; i < OTA_ARRAY_SIZE(k_files); i++)
		if (scan_file(k_files[i], &l) == 0)
			fail_msg("%s: no SQL statement found (moved? update k_files)", k_files[i]);
	s = dbconv_open_store(kind);
	for (size_t i = 0; i < l.sql.n; i++) {
		struct db_stmt *st = NULL;
		if (db_prepare(store_conn(s), &st, l.sql.v[i]) < 0)
			fail_msg("%s: does not prepare on %s: %s\n  %s", l.where.v[i],
				 kind == DB_SQLITE ? "SQLite" : "PostgreSQL", ota_error_last(), l.sql.v[i]);
		db_finalize(st);
	}
	fprintf(stderr, "%zu statements prepared on %s\n", l.sql.n, kind == DB_SQLITE ? "SQLite" : "PostgreSQL");
	store_close(s);
	strvec_clear(&l.sql);
	strvec_clear(&l.where);
}

static void every_api_statement_prepares_on_sqlite(void **state)
{
	(void)state;
	prepare_all(DB_SQLITE);
}

static void every_api_statement_prepares_on_postgres(void **state)
{
	(void)state;
	dbconv_need_pg();
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
