/*
 * dbconv.c - the storage-layer tests' shared fixtures (dbconv.h): the
 * PostgreSQL cluster of the run, fresh migrated stores on either backend,
 * and the converted files' source text.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "dbconv.h"
#include "harness.h"
#include "pgcluster.h"

const enum db_backend dbconv_sqlite = DB_SQLITE;
const enum db_backend dbconv_postgres = DB_POSTGRES;

static struct pgcluster g_pg;
static int g_pg_up; /* 1 running, 0 absent (skip), -1 failed */
static char *g_tmp;
static int g_seq;   /* numbers the SQLite files */

/* ---- the run ----------------------------------------------------------------- */

static void stop_cluster(void)
{
	pgcluster_stop(&g_pg);
}

void dbconv_start(const char *test)
{
	int rc;

	g_tmp = h_tmpdir();
	rc = pgcluster_start(&g_pg, 0);
	if (rc == 1) {
		fprintf(stderr, "%s: PostgreSQL's binaries are not installed (/usr/lib/postgresql/*/bin): "
				"the PostgreSQL cases are skipped\n", test);
		g_pg_up = 0;
	} else if (rc < 0) {
		fprintf(stderr, "%s: cannot start PostgreSQL: %s\n", test, ota_error_last());
		g_pg_up = -1;
	} else {
		g_pg_up = 1;
		/* a test that exits early still stops its cluster */
		atexit(stop_cluster);
	}
	cmocka_set_test_filter(getenv("X_ONLY"));
}

void dbconv_finish(void)
{
	struct buf out = BUF_INIT;

	pgcluster_stop(&g_pg);
	h_sh(&out, "rm -rf '%s'", g_tmp);
	buf_release(&out);
	free(g_tmp);
	g_tmp = NULL;
}

const char *dbconv_tmpdir(void)
{
	return g_tmp;
}

struct pgcluster *dbconv_cluster(void)
{
	return &g_pg;
}

const char *dbconv_pg_url(void)
{
	return g_pg.url;
}

/* ---- the case's backend -------------------------------------------------------- */

enum db_backend dbconv_backend(void **state)
{
	return *(const enum db_backend *)*state;
}

int dbconv_pg_available(void)
{
	if (g_pg_up == 1)
		return 1;
	if (g_pg_up < 0)
		fail_msg("PostgreSQL cluster failed to start");
	fprintf(stderr, "skipped: PostgreSQL's binaries are not installed\n");
	return 0;
}

void dbconv_need_pg(void)
{
	if (!dbconv_pg_available())
		skip();
}

/* ---- fresh stores ------------------------------------------------------------- */

void dbconv_new_sqlite_path(char *path, size_t cap)
{
	snprintf(path, cap, "%s/s%d.db", g_tmp, ++g_seq);
}

void dbconv_pg_reset(void)
{
	struct db *db;

	if (db_open(&db, g_pg.url, 0) < 0)
		fail_msg("open %s: %s", g_pg.url, ota_error_last());
	if (db_exec(db, "DROP SCHEMA IF EXISTS public CASCADE; CREATE SCHEMA public") < 0)
		fail_msg("reset schema: %s", db_errmsg(db));
	db_close(db);
}

struct store *dbconv_open_store(enum db_backend kind)
{
	struct store *s = NULL;
	char path[512];

	if (kind == DB_SQLITE) {
		dbconv_new_sqlite_path(path, sizeof(path));
	} else {
		dbconv_pg_reset();
		snprintf(path, sizeof(path), "%s", g_pg.url);
	}
	if (store_open(&s, path) < 0)
		fail_msg("store_open %s: %s", path, ota_error_last());
	assert_int_equal(db_backend(store_conn(s)), kind);
	return s;
}

struct store *dbconv_fresh_store(enum db_backend kind)
{
	if (kind == DB_POSTGRES)
		dbconv_need_pg();
	return dbconv_open_store(kind);
}

struct store *dbconv_case_store(void **state)
{
	return dbconv_fresh_store(dbconv_backend(state));
}

int64_t dbconv_count(struct store *s, const char *sql)
{
	struct db_stmt *st = store_q(s, sql);
	int64_t n;

	if (!st)
		fail_msg("%s: %s", sql, ota_error_last());
	assert_int_equal(db_step(st), 1);
	n = db_column_int64(st, 0);
	db_reset(st);
	return n;
}

int64_t dbconv_insert(struct store *s, const char *sql, const char *types, ...)
{
	struct db_stmt *st = store_q(s, sql);
	va_list ap;
	int64_t id;

	if (!st)
		fail_msg("%s: %s", sql, ota_error_last());
	va_start(ap, types);
	for (int i = 0; types[i]; i++) {
		if (types[i] == 't')
			db_bind_text(st, i + 1, va_arg(ap, const char *));
		else
			db_bind_int64(st, i + 1, va_arg(ap, int64_t));
	}
	va_end(ap);
	if (db_step(st) != 1)
		fail_msg("%s: %s", sql, ota_error_last());
	id = db_column_int64(st, 0);
	db_reset(st);
	return id;
}

void dbconv_begin(struct store *s)
{
	if (store_begin(s) < 0)
		fail_msg("begin: %s", ota_error_last());
}

void dbconv_commit(struct store *s)
{
	if (store_commit(s) < 0)
		fail_msg("commit: %s", ota_error_last());
}

/* ---- SQL read from the sources ------------------------------------------------ */

char *dbconv_read_source(const char *rel)
{
	const char *root = getenv("OTACD_SRC") ? getenv("OTACD_SRC") : ".";
	char *path = xasprintf("%s/%s", root, rel);
	struct buf text = BUF_INIT;

	if (ota_read_file(&text, path, 1 << 22) < 0)
		fail_msg("read %s (set OTACD_SRC to the source tree): %s", path, ota_error_last());
	free(path);
	return buf_detach(&text);
}

void dbconv_take_literal(const char **p, struct buf *out)
{
	const char *s = *p + 1;

	for (; *s && *s != '"'; s++) {
		if (*s == '\\' && s[1]) {
			s++;
			buf_putc(out, *s == 'n' ? '\n' : *s == 't' ? '\t' : *s);
		} else {
			buf_putc(out, *s);
		}
	}
	*p = *s ? s + 1 : s;
}

static const char *skip_blanks(const char *p)
{
	while (*p == ' ' || *p == '\t' || *p == '\n')
		p++;
	return p;
}

const char *dbconv_joined_literals(const char *p, struct buf *out)
{
	const char *q = skip_blanks(p);

	if (*q != '"')
		return p;
	while (*q == '"') {
		dbconv_take_literal(&q, out);
		q = skip_blanks(q);
	}
	return q;
}

/* ---- the statements of converted files ------------------------------------------ */

void dbconv_sql_clear(struct dbconv_sql *l)
{
	strvec_clear(&l->sql);
	strvec_clear(&l->where);
}

static void push_statement(struct dbconv_sql *out, const char *file, const char *text, const char *at,
			   struct buf *sql)
{
	int line = 1;

	for (const char *q = text; q < at; q++)
		line += *q == '\n';
	strvec_push(&out->sql, buf_cstr(sql));
	strvec_pushf(&out->where, "%s:%d", file, line);
}

static int is_ident(char c)
{
	return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

static int is_statement(const char *s)
{
	static const char *const verbs[] = { "SELECT ", "INSERT ", "UPDATE ", "DELETE ", "WITH " };
	for (size_t i = 0; i < OTA_ARRAY_SIZE(verbs); i++)
		if (!strncmp(s, verbs[i], strlen(verbs[i])))
			return 1;
	return 0;
}

/* file's text with backslash-newlines removed (caller frees); fails the
 * case when the file still reaches SQLite directly */
static char *converted_source(const char *file)
{
	char *src = dbconv_read_source(file);
	struct buf b = BUF_INIT;

	if (strstr(src, "sqlite3_") || strstr(src, "sqlite3.h"))
		fail_msg("%s still uses SQLite directly (converted to the storage layer: db/db.h)", file);
	for (const char *p = src; *p; p++) {
		if (p[0] == '\\' && p[1] == '\n')
			p++;
		else
			buf_putc(&b, *p);
	}
	free(src);
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
			strvec_pushf(names, "%.*s", (int)(end - name), name);
			strvec_push(bodies, buf_cstr(&body));
		}
		buf_release(&body);
		if (p == end)
			p = end + 1;
	}
}

/* The adjacent literals and string macros from p on (after blanks), joined
 * into sql as the compiler joins them; returns where they end (p when
 * there is none). */
static const char *joined_with_macros(const char *p, const struct strvec *names, const struct strvec *bodies,
				      struct buf *sql)
{
	for (;;) {
		const char *q = skip_blanks(p);
		size_t i;

		for (i = 0; i < names->n; i++) {
			size_t len = strlen(names->v[i]);
			if (!strncmp(q, names->v[i], len) && !is_ident(q[len]))
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

size_t dbconv_scan_literals(const char *file, struct dbconv_sql *out)
{
	char *text = converted_source(file);
	struct strvec names = STRVEC_INIT, bodies = STRVEC_INIT;
	const char *p = text;
	size_t n = 0;

	find_macros(text, &names, &bodies);
	while (*p) {
		if (p[0] == '/' && p[1] == '*') {
			const char *end = strstr(p + 2, "*/");
			p = end ? end + 2 : p + strlen(p);
		} else if (p[0] == '/' && p[1] == '/') {
			p += strcspn(p, "\n");
		} else if (*p == '\'') { /* a '"' here opens no string */
			p++;
			if (*p == '\\')
				p++;
			p += *p ? 2 : 0; /* the character and the closing quote */
		} else if (*p == '"') {
			struct buf sql = BUF_INIT;
			const char *at = p;
			p = joined_with_macros(p, &names, &bodies, &sql);
			if (is_statement(buf_cstr(&sql))) {
				push_statement(out, file, text, at, &sql);
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
	return n;
}

size_t dbconv_scan_calls(const char *file, const char *call, int strict, struct dbconv_sql *out)
{
	char *text = converted_source(file);
	struct strvec names = STRVEC_INIT, bodies = STRVEC_INIT;
	size_t n = 0;

	find_macros(text, &names, &bodies);
	for (const char *p = text; (p = strstr(p, call)) != NULL; p++) {
		struct buf sql = BUF_INIT;
		const char *comma, *end = NULL;

		if (p > text && is_ident(p[-1]))
			continue; /* another function whose name ends so */
		if ((comma = strchr(p, ',')) != NULL)
			end = skip_blanks(joined_with_macros(comma + 1, &names, &bodies, &sql));
		if (sql.len && (*end == ')' || *end == ',')) {
			push_statement(out, file, text, p, &sql);
			n++;
		} else if (strict) {
			fail_msg("%s: a %s) whose SQL is not a string literal, near \"%.60s\"", file, call, p);
		}
		buf_release(&sql);
	}
	strvec_clear(&names);
	strvec_clear(&bodies);
	free(text);
	return n;
}

static const char *backend_name(const struct db *db)
{
	return db_backend(db) == DB_SQLITE ? "SQLite" : "PostgreSQL";
}

size_t dbconv_prepare_each(struct db *db, const struct dbconv_sql *l, int (*leave_out)(const char *sql))
{
	size_t prepared = 0;

	for (size_t i = 0; i < l->sql.n; i++) {
		struct db_stmt *st = NULL;

		if (leave_out && leave_out(l->sql.v[i]))
			continue;
		if (db_prepare(db, &st, l->sql.v[i]) < 0)
			fail_msg("%s: does not prepare on %s: %s\n  %s", l->where.v[i], backend_name(db), ota_error_last(),
				 l->sql.v[i]);
		db_finalize(st);
		prepared++;
	}
	fprintf(stderr, "%zu of %zu statements prepared on %s\n", prepared, l->sql.n, backend_name(db));
	return prepared;
}

size_t dbconv_prepare_all(enum db_backend kind, const struct dbconv_sql *l, int (*leave_out)(const char *sql))
{
	struct store *s = dbconv_fresh_store(kind);
	size_t prepared = dbconv_prepare_each(store_conn(s), l, leave_out);

	store_close(s);
	return prepared;
}

/* ---- rows compared across the backends ------------------------------------------ */

json_t *dbconv_rows(struct store *s, const char *sql)
{
	struct db_stmt *st = NULL;
	json_t *out = json_array();
	int rc;

	if (db_prepare(store_conn(s), &st, sql) < 0)
		fail_msg("%s: %s", sql, ota_error_last());
	while ((rc = db_step(st)) == 1) {
		json_t *row = json_array();
		for (int i = 0; i < db_column_count(st); i++) {
			switch (db_column_type(st, i)) {
			case DB_NULL:
				json_array_append_new(row, json_null());
				break;
			case DB_INTEGER:
				json_array_append_new(row, json_integer(db_column_int64(st, i)));
				break;
			default:
				json_array_append_new(row, json_string(db_column_text(st, i)));
				break;
			}
		}
		json_array_append_new(out, row);
	}
	assert_int_equal(rc, 0);
	db_finalize(st);
	return out;
}

void dbconv_must_agree(const char *what, const json_t *lite, const json_t *pg)
{
	if (!json_equal(lite, pg)) {
		char *a = json_dumps(lite, JSON_SORT_KEYS | JSON_COMPACT), *b = json_dumps(pg, JSON_SORT_KEYS | JSON_COMPACT);
		fail_msg("%s: SQLite and PostgreSQL disagree:\n  sqlite:   %s\n  postgres: %s", what, a, b);
	}
}
