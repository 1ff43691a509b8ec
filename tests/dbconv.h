/*
 * dbconv.h - what the storage-layer tests (test_db, test_dbmods,
 * test_dbconv_*, test_outboxprune; docs/storage.md) share: each case runs on
 * SQLite and on a real PostgreSQL cluster started in a temporary directory
 * (tests/pgcluster.h), on a fresh store migrated from nothing, and the
 * converted files' SQL is read from their source text.
 *
 * A test's main() calls dbconv_start() before its cmocka group and
 * dbconv_finish() after it.  When PostgreSQL's binaries are absent the
 * PostgreSQL cases are skipped, saying so; when the cluster fails to start
 * they fail.  Failures inside these helpers fail the running case with
 * what went wrong (cmocka's fail_msg).
 */
#ifndef OTA_TESTS_DBCONV_H
#define OTA_TESTS_DBCONV_H

#include <jansson.h>

#include "../common/util.h"
#include "../orchestrator/db/db.h"
#include "../orchestrator/store.h"

struct pgcluster;

/* the case's backend, as a cmocka initial state (DBCONV_BOTH) */
extern const enum db_backend dbconv_sqlite;
extern const enum db_backend dbconv_postgres;

/* Two cases for fn: "sqlite/fn" and "postgres/fn"; dbconv_backend(state)
 * tells fn which one it is. */
#define DBCONV_BOTH(fn)                                             \
	{ "sqlite/" #fn, fn, NULL, NULL, (void *)&dbconv_sqlite }, \
	{ "postgres/" #fn, fn, NULL, NULL, (void *)&dbconv_postgres }

/* ---- the run: temporary directory and cluster ------------------------------- */

/* Make the temporary directory, start the cluster (test names the binary in
 * messages) and apply X_ONLY as cmocka's test filter. */
void dbconv_start(const char *test);
/* Stop the cluster and remove the temporary directory. */
void dbconv_finish(void);
const char *dbconv_tmpdir(void);
struct pgcluster *dbconv_cluster(void);
const char *dbconv_pg_url(void);

/* ---- the case's backend -------------------------------------------------------- */

enum db_backend dbconv_backend(void **state);
/* 1 when the cluster runs; 0 (saying "skipped") when PostgreSQL is not
 * installed; fails the case when the cluster failed to start. */
int dbconv_pg_available(void);
/* Skip the case unless dbconv_pg_available(). */
void dbconv_need_pg(void);

/* ---- fresh stores ------------------------------------------------------------- */

/* A new SQLite file's path in the temporary directory. */
void dbconv_new_sqlite_path(char *path, size_t cap);
/* Empty the PostgreSQL database, so store_open() migrates from nothing. */
void dbconv_pg_reset(void);
/* A fresh, migrated store on kind: a new SQLite file, or the PostgreSQL
 * database reset first.  The caller has checked PostgreSQL runs. */
struct store *dbconv_open_store(enum db_backend kind);
/* dbconv_open_store(), skipping a PostgreSQL case without PostgreSQL. */
struct store *dbconv_fresh_store(enum db_backend kind);
/* dbconv_fresh_store() on the case's backend (DBCONV_BOTH). */
struct store *dbconv_case_store(void **state);
/* The one integer sql (a SELECT COUNT(*) ...) returns. */
int64_t dbconv_count(struct store *s, const char *sql);
/* Run sql (which ends in RETURNING id) with one argument per character of
 * types, "t" a string (NULL: SQL NULL) and "i" an int64; the new id. */
int64_t dbconv_insert(struct store *s, const char *sql, const char *types, ...);
void dbconv_begin(struct store *s);
void dbconv_commit(struct store *s);

/* ---- SQL read from the sources ------------------------------------------------ */

/* The text of rel, relative to $OTACD_SRC (default "."); the caller frees it. */
char *dbconv_read_source(const char *rel);
/* Append the C string literal at *p (*p at its opening quote) to out,
 * unescaped; *p moves past its closing quote. */
void dbconv_take_literal(const char **p, struct buf *out);
/* Append the adjacent string literals from p on (after blanks), joined as
 * the compiler joins them; returns where they end (p when there is none). */
const char *dbconv_joined_literals(const char *p, struct buf *out);


/* ---- the statements of converted files ------------------------------------------ */

struct dbconv_sql {
	struct strvec sql;   /* the statements */
	struct strvec where; /* "file:line" of each */
};
#define DBCONV_SQL_INIT { STRVEC_INIT, STRVEC_INIT }
void dbconv_sql_clear(struct dbconv_sql *l);

/*
 * The scanners append file's statements to out and return how many they
 * found; both fail the case when file still uses SQLite directly
 * (sqlite3_*), and both spell out object-like string macros
 * (#define NAME "...") where they are used, as the compiler does.
 */
/* Every group of adjacent string literals outside comments, character
 * constants and #define lines that starts with an SQL verb. */
size_t dbconv_scan_literals(const char *file, struct dbconv_sql *out);
/* The SQL argument of every call of call ("store_q(" …): the literals after
 * its first comma.  strict fails the case on such a call without a literal
 * (the statement cache keys on it); otherwise that call is passed over. */
size_t dbconv_scan_calls(const char *file, const char *call, int strict, struct dbconv_sql *out);

/* Prepare l's statements on db, leaving out those leave_out (NULL: none)
 * says yes to; fails the case at the first that does not prepare, naming
 * where it stands.  Says on stderr, and returns, how many it prepared. */
size_t dbconv_prepare_each(struct db *db, const struct dbconv_sql *l, int (*leave_out)(const char *sql));
/* dbconv_prepare_each() on a fresh migrated store of kind (a PostgreSQL
 * case is skipped without PostgreSQL). */
size_t dbconv_prepare_all(enum db_backend kind, const struct dbconv_sql *l, int (*leave_out)(const char *sql));

/* ---- rows compared across the backends ------------------------------------------ */

/* Every row sql returns, as JSON arrays of its columns (NULL as null,
 * integers as numbers, the rest as text); new ref. */
json_t *dbconv_rows(struct store *s, const char *sql);
/* Fail the case, showing both, unless what SQLite (lite) and PostgreSQL
 * (pg) gave is equal. */
void dbconv_must_agree(const char *what, const json_t *lite, const json_t *pg);

#endif
