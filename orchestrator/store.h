/*
 * store.h - otacd's database: schema, migrations, connections.  A store
 * wraps a storage-layer connection (db/db.h), SQLite or PostgreSQL.
 *
 * All of otacd's state lives in one database: by default a SQLite file
 * (STATE/otacd.db) in WAL mode, or a PostgreSQL database (config key
 * database:, docs/config.md).  There is exactly one writer connection,
 * owned by the engine thread (engine.c); HTTP handler threads read through
 * their own per-thread reader connections (store_reader()), which run
 * alongside the writer.
 *
 * The schema is a list of numbered migrations in store.c; store_open()
 * applies the missing ones, each in its own transaction, and records them in
 * schema_migrations.  Queries use prepared statements only, cached per
 * connection by the SQL literal's address (store_q(), db_stmt()).
 */
#ifndef OTA_STORE_H
#define OTA_STORE_H

#include <stddef.h>
#include <stdint.h>

struct store;
struct db;
struct db_stmt;

/*
 * Open (creating and migrating as needed) the database at path: a SQLite
 * file, or a storage-layer URL (sqlite:PATH, postgres://...).
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

int store_begin(struct store *s);      /* BEGIN IMMEDIATE */
int store_commit(struct store *s);
void store_rollback(struct store *s);
/*
 * A read snapshot on a reader (store_reader()): every statement until
 * store_snapshot_end() reads the same state.  A reader that a server's
 * restart broke is opened again (db_reconnect()) and the snapshot begun
 * on the new connection, so a thread's reader outlives a PostgreSQL
 * restart.  begin: 0 or negative (message in the error slot); end is safe
 * without a begin.
 */
int store_snapshot_begin(struct store *s);
void store_snapshot_end(struct store *s);

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
/* Move it as a commit does: another instance's commit, heard by
 * commitwatch.h (its thread), or anything that makes every answer stale. */
void store_generation_bump(void);

/*
 * Durability of writer connections opened from now on (otacd.db and
 * fleet.db): FULL (the default; a commit is on the disk when it returns,
 * power cuts included) or, with full 0, NORMAL (a commit survives the
 * process being killed, not an OS crash).  Only the benchmark comparing
 * the two lowers it.  store_sync_pragma() is the matching PRAGMA.
 */
void store_set_synchronous(int full);
const char *store_sync_pragma(void);

#endif
