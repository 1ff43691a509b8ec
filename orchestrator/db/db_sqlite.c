/*
 * db_sqlite.c - the SQLite backend: a file in WAL mode.
 *
 * The same settings store.c has always used: WAL, synchronous=FULL (a
 * commit is on the disk when it returns), a 10 s busy timeout, foreign
 * keys on.  Writers announce each commit through SQLite's WAL hook, which
 * fires once the commit is visible to readers; registering it replaces
 * SQLite's auto-checkpoint, so the hook checkpoints the way that did
 * (passively, every 1,000 WAL pages).
 */
#include "db_int.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BUSY_TIMEOUT_MS 10000

struct sq_stmt {
	sqlite3_stmt *st;
	int bound; /* parameters handed to SQLite since the last reset */
};

static sqlite3 *conn(const struct db *db)
{
	return db->impl;
}

static int fail(struct db *db, int sqlite_rc, const char *what)
{
	int code = OTA_ERROR;

	switch (sqlite_rc & 0xff) {
	case SQLITE_BUSY:
	case SQLITE_LOCKED:
		code = DB_EBUSY;
		break;
	case SQLITE_CONSTRAINT:
		code = DB_ECONSTRAINT;
		break;
	case SQLITE_FULL:
		code = DB_ENOSPACE;
		break;
	case SQLITE_IOERR:
	case SQLITE_CANTOPEN:
		code = DB_EIO;
		break;
	}
	return db_fail(db, code, "sqlite: %s: %s", what, sqlite3_errmsg(conn(db)));
}

static int on_wal_commit(void *arg, sqlite3 *handle, const char *name, int pages)
{
	struct db *db = arg;

	db_fire_commit(db);
	if (pages >= (db->checkpoint_pages > 0 ? db->checkpoint_pages : 1000))
		sqlite3_wal_checkpoint_v2(handle, name, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
	return SQLITE_OK;
}

static int sq_exec(struct db *db, const char *sql)
{
	char *err = NULL;
	int rc = sqlite3_exec(conn(db), sql, NULL, NULL, &err);

	/* err repeats sqlite3_errmsg(), which fail() reports */
	sqlite3_free(err);
	return rc == SQLITE_OK ? 0 : fail(db, rc, "exec");
}

/* db_open_tuned()'s settings that apply once WAL is on (page_size went
 * before it, in sq_open). */
static int apply_tuning(struct db *db, const struct db_sqlite_tuning *t)
{
	struct buf pragmas = BUF_INIT;
	sqlite3_stmt *st = NULL;
	int page = 4096, rc = 0;

	if (t->secure_delete_fast)
		buf_puts(&pragmas, "PRAGMA secure_delete=FAST;");
	if (t->cache_kib > 0)
		buf_printf(&pragmas, "PRAGMA cache_size=-%d;", t->cache_kib);
	if (t->mmap_bytes > 0)
		buf_printf(&pragmas, "PRAGMA mmap_size=%lld;", (long long)t->mmap_bytes);
	if (pragmas.len)
		rc = sq_exec(db, buf_cstr(&pragmas));
	buf_release(&pragmas);
	if (rc < 0)
		return rc;
	if (t->checkpoint_bytes <= 0)
		return 0;
	/* an existing file keeps the page size it was made with */
	if (sqlite3_prepare_v2(conn(db), "PRAGMA page_size", -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
		page = sqlite3_column_int(st, 0);
	sqlite3_finalize(st);
	db->checkpoint_pages = (int)(t->checkpoint_bytes / (page > 0 ? page : 4096));
	return 0;
}

static int sq_open(struct db *db, const char *path, unsigned flags)
{
	int oflags = (flags & DB_READONLY) ? SQLITE_OPEN_READONLY : (SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
	sqlite3 *handle = NULL;
	char pragmas[300], page_size[40] = "";
	int rc;

	oflags |= SQLITE_OPEN_NOMUTEX; /* a connection belongs to one thread */
	if (sqlite3_open_v2(path, &handle, oflags, NULL) != SQLITE_OK) {
		rc = ota_error_set(OTA_ERROR, "cannot open database %s: %s", path,
				   handle ? sqlite3_errmsg(handle) : "out of memory");
		sqlite3_close(handle);
		return rc;
	}
	db->impl = handle;
	sqlite3_extended_result_codes(handle, 1);
	if (db->tuning && db->tuning->page_size > 0)
		snprintf(page_size, sizeof(page_size), "PRAGMA page_size=%d;", db->tuning->page_size);
	if (flags & DB_READONLY)
		snprintf(pragmas, sizeof(pragmas), "PRAGMA busy_timeout=%d; PRAGMA foreign_keys=ON;", BUSY_TIMEOUT_MS);
	else
		snprintf(pragmas, sizeof(pragmas),
			 /* the timeout first: switching to WAL waits for the lock too */
			 /* auto_vacuum before WAL: it takes effect only on a
			  * database with no tables yet, before WAL writes its header */
			 /* page_size too (db_open_tuned): a WAL database keeps its page size */
			 "PRAGMA busy_timeout=%d; %s%s PRAGMA journal_mode=WAL; PRAGMA synchronous=%s; PRAGMA foreign_keys=ON;",
			 BUSY_TIMEOUT_MS, (flags & DB_INCREMENTAL_VACUUM) ? "PRAGMA auto_vacuum=INCREMENTAL;" : "", page_size,
			 (flags & DB_SYNC_NORMAL) ? "NORMAL" : "FULL");
	if ((rc = sq_exec(db, pragmas)) < 0) {
		sqlite3_close(handle);
		return rc;
	}
	if (db->tuning && (rc = apply_tuning(db, db->tuning)) < 0) {
		sqlite3_close(handle);
		return rc;
	}
	if (!(flags & DB_READONLY))
		sqlite3_wal_hook(handle, on_wal_commit, db);
	return 0;
}

static void sq_close(struct db *db)
{
	sqlite3_close(conn(db));
}

static int sq_prepare(struct db_stmt *st)
{
	struct sq_stmt *q = xcalloc(1, sizeof(*q));

	if (sqlite3_prepare_v3(conn(st->db), st->sql, -1, SQLITE_PREPARE_PERSISTENT, &q->st, NULL) != SQLITE_OK) {
		int rc = db_fail(st->db, OTA_ERROR, "sqlite prepare: %s (%s)", sqlite3_errmsg(conn(st->db)), st->sql);
		free(q);
		return rc;
	}
	st->nparams = sqlite3_bind_parameter_count(q->st);
	st->impl = q;
	return 0;
}

static void sq_finalize(struct db_stmt *st)
{
	struct sq_stmt *q = st->impl;

	sqlite3_finalize(q->st);
	free(q);
}

static void sq_reset(struct db_stmt *st)
{
	struct sq_stmt *q = st->impl;

	sqlite3_reset(q->st);
	q->bound = 0;
}

static int bind_all(struct db_stmt *st, sqlite3_stmt *s)
{
	int rc = SQLITE_OK;

	sqlite3_clear_bindings(s);
	for (int i = 0; i < st->nparams && rc == SQLITE_OK; i++) {
		const struct db_param *p = &st->params[i];
		switch (p->type) {
		case DB_NULL:
			break;
		case DB_INTEGER:
			rc = sqlite3_bind_int64(s, i + 1, p->i);
			break;
		case DB_FLOAT:
			rc = sqlite3_bind_double(s, i + 1, p->f);
			break;
		case DB_TEXT: /* the statement's copy lives until the next bind */
			rc = sqlite3_bind_text64(s, i + 1, p->data, p->len, SQLITE_STATIC, SQLITE_UTF8);
			break;
		case DB_BLOB:
			rc = sqlite3_bind_blob64(s, i + 1, p->data, p->len, SQLITE_STATIC);
			break;
		}
	}
	return rc == SQLITE_OK ? 0 : fail(st->db, rc, "bind");
}

static int sq_step(struct db_stmt *st)
{
	struct sq_stmt *q = st->impl;
	int rc;

	if (!q->bound) {
		if ((rc = bind_all(st, q->st)) < 0)
			return rc;
		q->bound = 1;
	}
	rc = sqlite3_step(q->st);
	if (rc == SQLITE_ROW)
		return 1;
	if (rc == SQLITE_DONE)
		return 0;
	rc = fail(st->db, rc, "step");
	sqlite3_reset(q->st);
	q->bound = 0;
	return rc;
}

static int64_t sq_changes(struct db_stmt *st)
{
	return sqlite3_changes64(conn(st->db));
}

static int sq_in_transaction(const struct db *db)
{
	return !sqlite3_get_autocommit(conn(db));
}

/* A writer takes the write lock up front; a reader's transaction is a
 * snapshot (and a read-only connection cannot take the write lock). */
static int sq_begin(struct db *db)
{
	return sq_exec(db, (db->flags & DB_READONLY) ? "BEGIN" : "BEGIN IMMEDIATE");
}

static int sq_commit(struct db *db)
{
	return sq_exec(db, "COMMIT");
}

static int sq_reconnect(struct db *db)
{
	return 0;
}

static sqlite3_stmt *raw(struct db_stmt *st)
{
	return ((struct sq_stmt *)st->impl)->st;
}

static int sq_column_count(struct db_stmt *st)
{
	return sqlite3_column_count(raw(st));
}

static enum db_type sq_column_type(struct db_stmt *st, int col)
{
	switch (sqlite3_column_type(raw(st), col)) {
	case SQLITE_INTEGER:
		return DB_INTEGER;
	case SQLITE_FLOAT:
		return DB_FLOAT;
	case SQLITE_TEXT:
		return DB_TEXT;
	case SQLITE_BLOB:
		return DB_BLOB;
	default:
		return DB_NULL;
	}
}

static int64_t sq_column_int64(struct db_stmt *st, int col)
{
	return sqlite3_column_int64(raw(st), col);
}

static double sq_column_double(struct db_stmt *st, int col)
{
	return sqlite3_column_double(raw(st), col);
}

static const char *sq_column_text(struct db_stmt *st, int col)
{
	return (const char *)sqlite3_column_text(raw(st), col);
}

static const void *sq_column_blob(struct db_stmt *st, int col, size_t *size)
{
	const void *p = sqlite3_column_blob(raw(st), col);

	*size = (size_t)sqlite3_column_bytes(raw(st), col);
	return p;
}

/* ---- upkeep (db_maintain) ------------------------------------------------- */

/* The one integer a PRAGMA without arguments answers. */
static int pragma_int(struct db *db, const char *sql, int64_t *out)
{
	sqlite3_stmt *st = NULL;
	int rc;

	*out = 0;
	if ((rc = sqlite3_prepare_v2(conn(db), sql, -1, &st, NULL)) != SQLITE_OK)
		return fail(db, rc, sql);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		*out = sqlite3_column_int64(st, 0);
	else if (rc != SQLITE_DONE)
		rc = fail(db, rc, sql);
	sqlite3_finalize(st);
	return rc < 0 ? rc : 0;
}

static int sq_maintain(struct db *db, int max_pages, int *freed)
{
	int64_t mode = 0, free_pages = 0;
	int rc;

	if ((rc = pragma_int(db, "PRAGMA auto_vacuum", &mode)) < 0 ||
	    (rc = pragma_int(db, "PRAGMA freelist_count", &free_pages)) < 0)
		return rc;
	/* 2: INCREMENTAL (DB_INCREMENTAL_VACUUM); NONE reuses free pages but
	 * never shrinks the file (docs/operations.md, Retention) */
	if (mode == 2 && free_pages > 0 && max_pages > 0) {
		char sql[64];
		int n = free_pages < max_pages ? (int)free_pages : max_pages;

		snprintf(sql, sizeof(sql), "PRAGMA incremental_vacuum(%d)", n);
		if ((rc = sq_exec(db, sql)) < 0)
			return rc;
		*freed = n;
	}
	/* TRUNCATE waits for readers on older snapshots through the busy
	 * handler: wait briefly, not the writer's 10 s, and try again next
	 * time if a reader is slow */
	sqlite3_busy_timeout(conn(db), 50);
	rc = sqlite3_wal_checkpoint_v2(conn(db), NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
	sqlite3_busy_timeout(conn(db), BUSY_TIMEOUT_MS);
	if (rc != SQLITE_OK && rc != SQLITE_BUSY)
		return fail(db, rc, "wal_checkpoint(TRUNCATE)");
	return 0;
}

/*
 * SQLite's online backup API, in one step: one read transaction on db, so
 * the copy at path (created, or overwritten) is one committed state
 * while writers on other connections go on committing (WAL).  A step that
 * meets a lock waits and tries again, for up to ~10 s.  The copy is left
 * in rollback journal mode: one self-contained file.
 */
int db_sqlite_backup_to(struct db *db, const char *path)
{
	sqlite3 *dst = NULL;
	sqlite3_backup *bk;
	int rc = 0, step;

	if (db->backend != DB_SQLITE)
		return ota_error_set(OTA_EINVAL, "%s: SQLite's online backup needs a SQLite database", path);
	if (sqlite3_open_v2(path, &dst, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) != SQLITE_OK) {
		rc = ota_error_set(OTA_ERROR, "cannot create the copy %s: %s", path, dst ? sqlite3_errmsg(dst) : "out of memory");
		goto out;
	}
	if (!(bk = sqlite3_backup_init(dst, "main", conn(db), "main"))) {
		rc = ota_error_set(OTA_ERROR, "cannot start the copy into %s: %s", path, sqlite3_errmsg(dst));
		goto out;
	}
	for (int tries = 0; (step = sqlite3_backup_step(bk, -1)) == SQLITE_BUSY || step == SQLITE_LOCKED; tries++) {
		if (tries == 1000)
			break;
		sqlite3_sleep(10);
	}
	sqlite3_backup_finish(bk);
	if (step != SQLITE_DONE) {
		rc = ota_error_set(OTA_ERROR, "the copy into %s: %s", path, sqlite3_errstr(step));
		goto out;
	}
	if (sqlite3_exec(dst, "PRAGMA journal_mode=DELETE", NULL, NULL, NULL) != SQLITE_OK)
		rc = ota_error_set(OTA_ERROR, "the copy %s: journal mode: %s", path, sqlite3_errmsg(dst));
out:
	sqlite3_close(dst);
	return rc;
}

sqlite3 *db_sqlite_handle(struct db *db)
{
	return db->backend == DB_SQLITE ? conn(db) : NULL;
}

const struct db_ops db_sqlite_ops = {
	.name = "sqlite",
	.open = sq_open,
	.close = sq_close,
	.exec = sq_exec,
	.prepare = sq_prepare,
	.finalize = sq_finalize,
	.reset = sq_reset,
	.step = sq_step,
	.changes = sq_changes,
	.in_transaction = sq_in_transaction,
	.begin = sq_begin,
	.commit = sq_commit,
	.reconnect = sq_reconnect,
	.column_count = sq_column_count,
	.column_type = sq_column_type,
	.column_int64 = sq_column_int64,
	.column_double = sq_column_double,
	.column_text = sq_column_text,
	.column_blob = sq_column_blob,
	.maintain = sq_maintain,
};
