/*
 * db.h - the storage layer: one SQL interface, two backends (SQLite and
 * PostgreSQL through libpq), chosen by URL.
 *
 *   sqlite:PATH               a SQLite file in WAL mode (the default: one
 *                             otacd, no server to run)
 *   postgres://... or         a PostgreSQL database, libpq's connection URI
 *   postgresql://...          (several otacd instances may share it)
 *
 * The engine writes SQL in SQLite's dialect, the one it has always spoken:
 * `?` and `?N` parameters, INSERT OR IGNORE, INTEGER PRIMARY KEY, BLOB,
 * REAL, strftime('%s','now'), scalar MAX(a, b).  The PostgreSQL backend
 * rewrites each statement once, when it is prepared (db_dialect.c); every
 * dialect difference lives there, none in the engine.  Last insert ids come
 * from `INSERT ... RETURNING id`, which both backends run as a query.
 *
 * A connection (struct db) belongs to one thread at a time.  The engine
 * keeps one writer connection; each HTTP thread opens its own reader
 * (DB_READONLY), exactly as store.c does with SQLite today.
 *
 * Errors: every function returns 0 (or 1 for "a row") on success and a
 * negative code on failure, with the backend's own message in the
 * per-thread error slot (ota_error_last()) and in db_errmsg().  Callers act
 * on three codes:
 *   DB_EBUSY        the transaction lost a race (SQLite still busy after
 *                   its 10 s busy timeout; PostgreSQL serialization
 *                   failure, deadlock, or a lock not had within its 10 s
 *                   lock_timeout): roll back and run it again;
 *                   db_transact() does that.
 *   DB_ECONSTRAINT  a UNIQUE, PRIMARY KEY, FOREIGN KEY or NOT NULL
 *                   constraint refused the change.
 *   DB_ECONN        the connection to the server is gone; db_reconnect()
 *                   opens a new one (statements prepare again by themselves).
 */
#ifndef OTA_DB_H
#define OTA_DB_H

#include <stddef.h>
#include <stdint.h>

enum {
	DB_EBUSY = -40,
	DB_ECONSTRAINT = -41,
	DB_ECONN = -42,
	/* the disk under the database is full: SQLite's SQLITE_FULL,
	 * PostgreSQL's SQLSTATE 53100 (disk_full); see db_disk_error() */
	DB_ENOSPACE = -43,
	/* the database's files cannot be written or opened: SQLITE_IOERR,
	 * SQLITE_CANTOPEN, PostgreSQL's 58030 (io_error) */
	DB_EIO = -44,
};

enum db_backend { DB_SQLITE, DB_POSTGRES };

enum db_type { DB_NULL, DB_INTEGER, DB_FLOAT, DB_TEXT, DB_BLOB };

/* db_open flags */
#define DB_READONLY 0x1    /* a reader: the backend refuses writes */
#define DB_SYNC_NORMAL 0x2 /* SQLite only: synchronous=NORMAL, not FULL */
/* SQLite only: a new database gets auto_vacuum=INCREMENTAL, so freed pages
 * can be given back a few thousand at a time (retention.h); an existing
 * one keeps its mode */
#define DB_INCREMENTAL_VACUUM 0x4

struct db;
struct db_stmt;

/* Open a connection to url (see above).  No migration runs here. */
int db_open(struct db **out, const char *url, unsigned flags);
/*
 * SQLite settings a connection may ask for when it opens, beyond the
 * defaults above (the fleet store's fleet.db: docs/storage.md).  A zero
 * field keeps SQLite's default; PostgreSQL ignores them all (its server's
 * configuration governs pages, caches and checkpoints).
 */
struct db_sqlite_tuning {
	int page_size;              /* a new file only: set before WAL is */
	int64_t checkpoint_bytes;   /* WAL bytes before a passive checkpoint
				     * (default 1,000 pages) */
	int cache_kib;              /* cache_size=-N */
	int64_t mmap_bytes;         /* mmap_size */
	int secure_delete_fast;     /* secure_delete=FAST rather than the build's default */
};
/*
 * Whether url names a backend this build knows: sqlite:PATH (PATH not
 * empty), postgres://... or postgresql://...  0, or OTA_EINVAL with a
 * message (the URL redacted) in the error slot.  Nothing is opened.
 */
int db_url_check(const char *url);
/*
 * url as it may be logged or shown: a password in its user part
 * (postgres://user:PASSWORD@host/db) and a password= parameter replaced by
 * "***" (docs/security.md).  Caller frees.
 */
char *db_url_redacted(const char *url);
/* db_open() with tuning (NULL: db_open()). */
int db_open_tuned(struct db **out, const char *url, unsigned flags, const struct db_sqlite_tuning *tuning);
/* Close a connection and finalize every statement prepared on it. */
void db_close(struct db *db);

enum db_backend db_backend(const struct db *db);
/* The backend's message for the last failure on this connection. */
const char *db_errmsg(const struct db *db);

/*
 * Run a script of statements without parameters (migrations, PRAGMAs).
 * The script is translated to the backend's dialect first.
 */
int db_exec(struct db *db, const char *script);

/*
 * Transactions.  On a writer connection db_begin() takes the database's
 * write lock up front, so writers run one at a time and each sees what the
 * previous one committed: SQLite's BEGIN IMMEDIATE, and on PostgreSQL a
 * transaction-scoped advisory lock every otacd instance takes (db_pg.c
 * says why not SERIALIZABLE).  On a reader (DB_READONLY) it starts a
 * read-only snapshot.  Writes outside db_begin() autocommit and do not
 * take turns: state changes go inside a transaction.  A statement that
 * failed inside a transaction spoils it on both backends: db_commit() then
 * rolls back and fails (use INSERT OR IGNORE / ON CONFLICT, not "try and
 * see", inside a transaction).  db_rollback() is safe to call outside a
 * transaction.
 */
int db_begin(struct db *db);
int db_commit(struct db *db);
void db_rollback(struct db *db);
int db_in_transaction(const struct db *db);

/*
 * Run fn(db, arg) inside a transaction and commit; if any step returns
 * DB_EBUSY, roll back and run it again, up to DB_RETRIES times with a
 * growing pause.  fn must have no effect outside the database (or an
 * idempotent one): it may run more than once.  Any other error rolls back
 * and is returned.
 */
#define DB_RETRIES 20
int db_transact(struct db *db, int (*fn)(struct db *db, void *arg), void *arg);
/* DB_ECONN is not retried: a connection lost during COMMIT leaves the
 * outcome unknown, and only the caller can tell (by reading the state). */

/*
 * Called on the connection's thread after each of its commits is visible
 * to other connections (store_generation()'s moment).
 */
void db_on_commit(struct db *db, void (*fn)(void *arg), void *arg);

/*
 * Prepare sql (SQLite dialect, see above).  db_prepare() gives a statement
 * the caller finalizes; db_stmt() one from the connection's cache, keyed by
 * the address of sql (pass a string literal), reset and with its bindings
 * cleared.  NULL on error (message in the error slot).
 */
int db_prepare(struct db *db, struct db_stmt **out, const char *sql);
struct db_stmt *db_stmt(struct db *db, const char *sql);
void db_finalize(struct db_stmt *st);
/* Back to before the first step; bindings stay. */
void db_reset(struct db_stmt *st);
void db_clear_bindings(struct db_stmt *st);

/* Parameters count from 1.  Text and blobs are copied. */
/* How many parameters st takes (its highest ?N). */
int db_param_count(struct db_stmt *st);
int db_bind_int64(struct db_stmt *st, int idx, int64_t v);
int db_bind_double(struct db_stmt *st, int idx, double v);
int db_bind_text(struct db_stmt *st, int idx, const char *s); /* NULL binds NULL */
/* The first n bytes of s as text (a body kept with its length). */
int db_bind_text_n(struct db_stmt *st, int idx, const char *s, size_t n);
int db_bind_blob(struct db_stmt *st, int idx, const void *p, size_t n);
int db_bind_null(struct db_stmt *st, int idx);

/* 1 = a row is ready, 0 = done, negative = error (see above). */
int db_step(struct db_stmt *st);
/* Step to the end and reset; for statements that return no rows. */
int db_run(struct db_stmt *st);
/* Rows changed by the last INSERT/UPDATE/DELETE run by st. */
int64_t db_changes(struct db_stmt *st);

/*
 * Columns of the current row, counting from 0.  A NULL column reads as
 * 0, NULL text and a NULL blob of size 0.  Returned pointers are valid
 * until the next step, reset or finalize.  Blobs may hold zero bytes.
 */
int db_column_count(struct db_stmt *st);
enum db_type db_column_type(struct db_stmt *st, int col);
int64_t db_column_int64(struct db_stmt *st, int col);
double db_column_double(struct db_stmt *st, int col);
const char *db_column_text(struct db_stmt *st, int col);
const void *db_column_blob(struct db_stmt *st, int col, size_t *size);

/*
 * PostgreSQL: drop the broken server connection and open a new one with
 * the same URL; statements prepare again on their next step.  SQLite: 0.
 */
int db_reconnect(struct db *db);

/*
 * The SQLite handle under a SQLite connection (NULL for PostgreSQL): only
 * for the modules not yet converted to this interface (docs/storage.md,
 * conversion plan); goes when the last one is.
 */
struct sqlite3;
struct sqlite3 *db_sqlite_handle(struct db *db);

/*
 * SQLite only: copy the database of db, a SQLite connection (a reader
 * will do), into a new file at path with SQLite's online backup API, as
 * one committed state (backup/backup.c; PostgreSQL's counterpart is
 * pg_dump).  OTA_EINVAL on a PostgreSQL connection.
 */
int db_sqlite_backup_to(struct db *db, const char *path);

/*
 * Apply the migrations of list[0..n) the database lacks, each in its own
 * transaction with its schema_migrations row; the list is the SQLite
 * dialect, translated per backend.  OTA_ERROR if the database is newer
 * than the list.
 */
int db_migrate(struct db *db, const char *const *list, size_t n);
/* The schema version recorded in schema_migrations (0 if none). */
int db_schema_version(struct db *db, int *out);
/*
 * One integer from one query: the first column of its first row, for
 * aggregates that always answer a row (COUNT, COALESCE(MAX(...), 0)).
 * 0, or negative: the query's own failure, or OTA_ERROR for no row.
 */
int db_query_int64(struct db *db, const char *sql, int64_t *out);

/* ---- upkeep and the disk (retention.c, engine.c) ------------------------ */

/*
 * The disk's part in this connection's failures since its last db_begin()
 * (or since it opened): DB_ENOSPACE or DB_EIO when a statement, BEGIN or
 * COMMIT failed for want of space or for I/O, else 0.  It outlives the
 * rollback, so a caller may ask after rolling back.  The failing call
 * itself returned the same code.
 */
int db_disk_error(const struct db *db);

/*
 * Outside a transaction, on a writer: give the file's free pages back and
 * bound the write-ahead log.  SQLite: when the database uses incremental
 * auto-vacuum (DB_INCREMENTAL_VACUUM), give back up to max_pages free
 * pages (*freed says how many), then checkpoint and truncate the WAL if no
 * reader needs it, waiting at most ~50 ms for readers (else it is left for
 * the next call; not an error).  PostgreSQL: nothing (*freed 0): VACUUM is
 * autovacuum's job and the WAL is the server's checkpointer's.
 */
int db_maintain(struct db *db, int max_pages, int *freed);

#endif
