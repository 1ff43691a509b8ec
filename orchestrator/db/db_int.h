/*
 * db_int.h - what a storage backend implements (like curl's vtls_int.h).
 *
 * db.c owns everything the backends share: URL dispatch, parameters (kept
 * here until the backend's step reads them), the statement cache, the
 * retry loop, migrations and error reporting.  A backend is a struct
 * db_ops; its private state hangs off db->impl and st->impl.
 */
#ifndef OTA_DB_INT_H
#define OTA_DB_INT_H

#include "db.h"

#include "../../common/util.h"

/* The statement cache's first size; it doubles when half full.  It never
 * evicts: a caller may hold a statement across another db_stmt() call,
 * and the keys are the program's SQL literals, a fixed set. */
#define DB_STMT_CACHE 256

struct db_param {
	enum db_type type; /* DB_NULL until bound */
	int64_t i;
	double f;
	char *data; /* text (NUL-terminated) or blob bytes, owned */
	size_t len;
};

struct db_ops {
	const char *name;
	int (*open)(struct db *db, const char *url, unsigned flags);
	void (*close)(struct db *db);
	int (*exec)(struct db *db, const char *sql);
	/* sql is already in the backend's dialect; st->nparams is set */
	int (*prepare)(struct db_stmt *st);
	void (*finalize)(struct db_stmt *st);
	void (*reset)(struct db_stmt *st);
	int (*step)(struct db_stmt *st);
	int64_t (*changes)(struct db_stmt *st);
	int (*in_transaction)(const struct db *db);
	int (*begin)(struct db *db);
	int (*commit)(struct db *db);
	int (*reconnect)(struct db *db);
	int (*column_count)(struct db_stmt *st);
	enum db_type (*column_type)(struct db_stmt *st, int col);
	int64_t (*column_int64)(struct db_stmt *st, int col);
	double (*column_double)(struct db_stmt *st, int col);
	const char *(*column_text)(struct db_stmt *st, int col);
	const void *(*column_blob)(struct db_stmt *st, int col, size_t *size);
	/* db_maintain(): outside a transaction */
	int (*maintain)(struct db *db, int max_pages, int *freed);
};

struct db_cache_slot {
	const char *sql; /* the caller's literal: the key */
	struct db_stmt *st;
};

struct db {
	const struct db_ops *ops;
	enum db_backend backend;
	unsigned flags;
	char *url;
	void *impl;
	char *errmsg;
	int tx_failed; /* a statement failed since db_begin(): commit refuses */
	int closing;   /* db_close() is finalizing: no per-statement cleanup */
	int disk_error; /* DB_ENOSPACE or DB_EIO since db_begin() (db_disk_error()) */
	void (*on_commit)(void *arg);
	void *on_commit_arg;
	const struct db_sqlite_tuning *tuning; /* during open only (db_open_tuned) */
	int checkpoint_pages; /* SQLite: WAL pages before a checkpoint (0: 1,000) */
	struct db_cache_slot *cache; /* open addressing by key address, [cache_cap] */
	size_t cache_cap;            /* a power of two, or 0 before the first */
	size_t ncache;
};

struct db_stmt {
	struct db *db;
	char *sql;       /* in the backend's dialect */
	int nparams;
	struct db_param *params; /* [nparams] */
	void *impl;
};

extern const struct db_ops db_sqlite_ops;
extern const struct db_ops db_pg_ops;

/*
 * Record a failure: the message goes to db->errmsg and the per-thread
 * error slot.  Returns code.
 */
int db_fail(struct db *db, int code, const char *fmt, ...) OTA_PRINTF(3, 4);
void db_fire_commit(struct db *db);

/*
 * db_dialect.c: rewrite sql from the SQLite dialect to PostgreSQL's into
 * out; *nparams gets the number of parameters.  OTA_EINVAL (message set)
 * for a construct with no translation, so it fails at prepare time, not
 * as a wrong answer.
 */
int db_dialect_pg(const char *sql, struct buf *out, int *nparams);

#endif
