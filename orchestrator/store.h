/*
 * store.h - otacd's database: schema, migrations, connections.  A store
 * wraps a storage-layer connection (db/db.h); store_db() and store_stmt()
 * are the bridge for modules not yet converted (docs/storage.md).
 *
 * All of otacd's state lives in one SQLite file (STATE/otacd.db) in WAL
 * mode.  There is exactly one writer connection, owned by the engine thread
 * (engine.c); HTTP handler threads read through their own per-thread reader
 * connections (store_reader()), which WAL lets run alongside the writer.
 *
 * The schema is a list of numbered migrations in store.c; store_open()
 * applies the missing ones, each in its own transaction, and records them in
 * schema_migrations.  Queries use prepared statements only, cached per
 * connection by SQL text (store_stmt()).
 */
#ifndef OTA_STORE_H
#define OTA_STORE_H

#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>

struct store;
struct db;
struct db_stmt;

/*
 * Open (creating and migrating as needed) the database at path: a SQLite
 * file, or a storage-layer URL (sqlite:PATH, postgres://...).  Only the
 * converted modules run on PostgreSQL yet (docs/storage.md).
 */
int store_open(struct store **out, const char *path);
/* The schema version this otacd migrates to (the number of migrations);
 * store_open refuses a database of a newer one. */
int store_schema_latest(void);
/*
 * The migration list, in SQLite's dialect; the storage layer
 * (orchestrator/db/db.h, db_migrate()) runs the same list on PostgreSQL.
 */
const char *const *store_migrations(size_t *n);
void store_close(struct store *s);
/*
 * The storage layer's connection (db/db.h).  Converted modules prepare
 * their statements with store_q() (db_stmt(), cached the same way).
 */
struct db *store_conn(struct store *s);
struct db_stmt *store_q(struct store *s, const char *sql);
/*
 * The same connection's SQLite handle and a statement prepared on it, for
 * the modules not yet converted (docs/storage.md, conversion plan): NULL
 * on PostgreSQL.  Both go when the last module is converted.
 */
sqlite3 *store_db(struct store *s);

/*
 * A prepared statement for sql, from the connection's cache, reset and with
 * its bindings cleared.  sql should be a string literal: the cache is keyed by
 * its address.  Returns NULL (with the error slot set) if it does not prepare.
 */
sqlite3_stmt *store_stmt(struct store *s, const char *sql);

int store_begin(struct store *s);      /* BEGIN IMMEDIATE */
int store_commit(struct store *s);
void store_rollback(struct store *s);

/* Run a statement that returns no rows (after binding).  0 or OTA_ERROR. */
int store_step_done(struct store *s, sqlite3_stmt *st);
/* 1 = a row is ready, 0 = no more rows, negative = error. */
int store_step_row(struct store *s, sqlite3_stmt *st);

int store_meta_get(struct store *s, const char *key, char **out);  /* OTA_ENOTFOUND if absent */
int store_meta_set(struct store *s, const char *key, const char *value);

/*
 * The calling thread's read-only connection to the database opened by the
 * last store_open() (opened on first use, closed when the thread exits).
 */
struct store *store_reader(void);

/*
 * A number that changes after every commit to the database, read before a
 * read transaction starts: an answer computed from a snapshot taken after
 * store_generation() returned G stays valid as long as it still returns G.
 */
uint64_t store_generation(void);

/*
 * Durability of writer connections opened from now on (otacd.db and
 * fleet.db): FULL (the default; a commit is on the disk when it returns,
 * power cuts included) or, with full 0, NORMAL (a commit survives the
 * process being killed, not an OS crash).  Only the benchmark comparing
 * the two lowers it.  store_sync_pragma() is the matching PRAGMA.
 */
void store_set_synchronous(int full);
const char *store_sync_pragma(void);

/* Column helpers: a NULL column reads as NULL / 0. */
const char *store_col_text(sqlite3_stmt *st, int col);
int64_t store_col_int(sqlite3_stmt *st, int col);

#endif
