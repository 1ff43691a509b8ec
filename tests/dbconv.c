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
