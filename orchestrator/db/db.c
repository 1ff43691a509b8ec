/*
 * db.c - the backend-independent half of the storage layer (db.h).
 *
 * A URL picks the backend; everything else here is shared: parameters are
 * kept in the statement until the backend's first step reads them, so both
 * backends see the same bind semantics; the statement cache is keyed by the
 * SQL literal's address, as store_stmt() has always been; db_transact() is
 * the one retry policy for transactions that lost a race; db_migrate() runs
 * one migration list on either backend.
 */
#include "db_int.h"

#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int db_fail(struct db *db, int code, const char *fmt, ...)
{
	va_list ap;
	struct buf b = BUF_INIT;

	va_start(ap, fmt);
	buf_vprintf(&b, fmt, ap);
	va_end(ap);
	free(db->errmsg);
	db->errmsg = buf_detach(&b);
	if (db->ops && db->impl && db->ops->in_transaction(db))
		db->tx_failed = 1;
	if (code == DB_ENOSPACE || code == DB_EIO)
		db->disk_error = code;
	return ota_error_set(code, "%s", db->errmsg);
}

void db_fire_commit(struct db *db)
{
	if (db->on_commit)
		db->on_commit(db->on_commit_arg);
}

static const struct db_ops *ops_for_url(const char *url, const char **rest)
{
	if (strncmp(url, "sqlite:", 7) == 0) {
		*rest = url + 7;
		return &db_sqlite_ops;
	}
	if (strncmp(url, "postgres://", 11) == 0 || strncmp(url, "postgresql://", 13) == 0) {
		*rest = url;
		return &db_pg_ops;
	}
	return NULL;
}

int db_url_check(const char *url)
{
	const char *rest;
	char *shown;
	int rc;

	if (url && ops_for_url(url, &rest) && *rest)
		return 0;
	shown = db_url_redacted(url ? url : "");
	rc = ota_error_set(OTA_EINVAL, "database URL '%s': expected sqlite:PATH, postgres://... or postgresql://...",
			   shown);
	free(shown);
	return rc;
}

char *db_url_redacted(const char *url)
{
	struct buf b = BUF_INIT;
	const char *scheme = strstr(url, "://"), *p;

	if (!scheme)
		return xstrdup(url);
	p = scheme + 3;
	{
		/* user:PASSWORD@host: the first ':' before the '@' of the
		 * authority starts the password */
		size_t at = strcspn(p, "@/?"), colon = strcspn(p, ":@/?");
		if (p[at] == '@' && colon < at) {
			buf_put(&b, url, (size_t)(p - url) + colon + 1);
			buf_puts(&b, "***");
			p += at;
		}
	}
	if (!b.len)
		buf_put(&b, url, (size_t)(p - url));
	while (*p) {
		const char *pw = strstr(p, "password=");
		while (pw && pw != p && pw[-1] != '?' && pw[-1] != '&')
			pw = strstr(pw + 1, "password=");
		if (!pw) {
			buf_puts(&b, p);
			break;
		}
		buf_put(&b, p, (size_t)(pw - p) + 9);
		buf_puts(&b, "***");
		p = pw + 9 + strcspn(pw + 9, "&");
	}
	return buf_detach(&b);
}

int db_open(struct db **out, const char *url, unsigned flags)
{
	return db_open_tuned(out, url, flags, NULL);
}

int db_open_tuned(struct db **out, const char *url, unsigned flags, const struct db_sqlite_tuning *tuning)
{
	const char *rest;
	const struct db_ops *ops = ops_for_url(url, &rest);
	struct db *db;
	int rc;

	if (!ops)
		return db_url_check(url);
	db = xcalloc(1, sizeof(*db));
	db->ops = ops;
	db->backend = ops == &db_pg_ops ? DB_POSTGRES : DB_SQLITE;
	db->flags = flags;
	db->url = xstrdup(url);
	db->tuning = tuning;
	rc = ops->open(db, rest, flags);
	db->tuning = NULL;
	if (rc < 0) {
		free(db->errmsg);
		free(db->url);
		free(db);
		return rc;
	}
	*out = db;
	return 0;
}

void db_close(struct db *db)
{
	if (!db)
		return;
	db->closing = 1;
	for (size_t i = 0; i < db->cache_cap; i++)
		if (db->cache[i].sql)
			db_finalize(db->cache[i].st);
	free(db->cache);
	db->ops->close(db);
	free(db->errmsg);
	free(db->url);
	free(db);
}

enum db_backend db_backend(const struct db *db)
{
	return db->backend;
}

const char *db_errmsg(const struct db *db)
{
	return db->errmsg ? db->errmsg : "";
}

int db_exec(struct db *db, const char *script)
{
	struct buf pg = BUF_INIT;
	int nparams, rc;

	if (db->backend == DB_SQLITE)
		return db->ops->exec(db, script);
	if ((rc = db_dialect_pg(script, &pg, &nparams)) < 0)
		return db_fail(db, rc, "%s", ota_error_last());
	rc = nparams ? db_fail(db, OTA_EINVAL, "a script cannot take parameters: %s", script)
		     : db->ops->exec(db, buf_cstr(&pg));
	buf_release(&pg);
	return rc;
}

int db_begin(struct db *db)
{
	db->tx_failed = 0;
	db->disk_error = 0;
	return db->ops->begin(db);
}

/*
 * A failed statement spoils its transaction on both backends: PostgreSQL
 * aborts it, and SQLite, which would go on and commit the statements
 * around the failed one, is held to the same rule, so code that relies on
 * carrying on after an error fails on SQLite too, not first in production
 * on PostgreSQL.
 */
int db_commit(struct db *db)
{
	if (db->tx_failed && db->ops->in_transaction(db)) {
		char *why = xstrdup(db_errmsg(db));
		int rc;

		db->ops->exec(db, "ROLLBACK");
		rc = db_fail(db, OTA_ERROR, "commit refused, rolled back: a statement in the transaction failed (%s)",
			     why);
		free(why);
		return rc;
	}
	return db->ops->commit(db);
}

void db_rollback(struct db *db)
{
	if (db->ops->in_transaction(db))
		db->ops->exec(db, "ROLLBACK");
}

int db_in_transaction(const struct db *db)
{
	return db->ops->in_transaction(db);
}

/* ---- upkeep and the disk ---------------------------------------------------- */

int db_disk_error(const struct db *db)
{
	return db->disk_error;
}

int db_maintain(struct db *db, int max_pages, int *freed)
{
	*freed = 0;
	if (db->ops->in_transaction(db))
		return db_fail(db, OTA_ERROR, "maintenance runs outside a transaction");
	return db->ops->maintain(db, max_pages, freed);
}

void db_on_commit(struct db *db, void (*fn)(void *arg), void *arg)
{
	db->on_commit = fn;
	db->on_commit_arg = arg;
}

/* A pause of 1, 2, 4 ... 64 ms, jittered so two losers do not meet again. */
static void retry_pause(int attempt)
{
	long ms = 1L << (attempt < 6 ? attempt : 6);
	struct timespec ts;

	ms += rand() % (ms + 1);
	ts.tv_sec = ms / 1000;
	ts.tv_nsec = (ms % 1000) * 1000000L;
	nanosleep(&ts, NULL);
}

int db_transact(struct db *db, int (*fn)(struct db *db, void *arg), void *arg)
{
	int rc = 0;

	for (int attempt = 0; attempt < DB_RETRIES; attempt++) {
		if (attempt)
			retry_pause(attempt);
		if ((rc = db_begin(db)) == 0 && (rc = fn(db, arg)) == 0 && (rc = db_commit(db)) == 0)
			return 0;
		db_rollback(db);
		if (rc != DB_EBUSY)
			return rc;
	}
	return db_fail(db, DB_EBUSY, "transaction lost %d races in a row: %s", DB_RETRIES,
		       db->errmsg ? db->errmsg : "busy");
}

/* ---- statements ---------------------------------------------------------- */

int db_prepare(struct db *db, struct db_stmt **out, const char *sql)
{
	struct db_stmt *st = xcalloc(1, sizeof(*st));
	struct buf pg = BUF_INIT;
	int rc;

	st->db = db;
	if (db->backend == DB_POSTGRES) {
		if ((rc = db_dialect_pg(sql, &pg, &st->nparams)) < 0) {
			buf_release(&pg); /* what was rewritten before the refusal */
			free(st);
			return db_fail(db, rc, "%s", ota_error_last());
		}
		st->sql = buf_detach(&pg);
	} else {
		st->sql = xstrdup(sql);
	}
	if ((rc = db->ops->prepare(st)) < 0) {
		free(st->sql);
		free(st);
		return rc;
	}
	st->params = xcalloc((size_t)st->nparams + 1, sizeof(*st->params));
	*out = st;
	return 0;
}

void db_clear_bindings(struct db_stmt *st)
{
	for (int i = 0; i < st->nparams; i++) {
		free(st->params[i].data);
		memset(&st->params[i], 0, sizeof(st->params[i]));
	}
}

void db_finalize(struct db_stmt *st)
{
	if (!st)
		return;
	st->db->ops->finalize(st);
	db_clear_bindings(st);
	free(st->params);
	free(st->sql);
	free(st);
}

void db_reset(struct db_stmt *st)
{
	st->db->ops->reset(st);
}

/* The slot of key sql: where it is, or the empty slot where it goes. */
static struct db_cache_slot *cache_slot(struct db_cache_slot *cache, size_t cap, const char *sql)
{
	/* Mix the address so neighbouring literals spread over the table. */
	uint64_t h = ((uint64_t)(uintptr_t)sql >> 3) * 0x9E3779B97F4A7C15ull;
	size_t i = (size_t)(h >> 32) & (cap - 1);

	while (cache[i].sql && cache[i].sql != sql)
		i = (i + 1) & (cap - 1);
	return &cache[i];
}

/* Doubles the table (or makes the first one) and moves every entry. */
static void cache_grow(struct db *db)
{
	size_t cap = db->cache_cap ? db->cache_cap * 2 : DB_STMT_CACHE;
	struct db_cache_slot *cache = xcalloc(cap, sizeof(*cache));

	for (size_t i = 0; i < db->cache_cap; i++)
		if (db->cache[i].sql)
			*cache_slot(cache, cap, db->cache[i].sql) = db->cache[i];
	free(db->cache);
	db->cache = cache;
	db->cache_cap = cap;
}

struct db_stmt *db_stmt(struct db *db, const char *sql)
{
	struct db_cache_slot *slot;
	struct db_stmt *st;

	if (db->cache_cap) {
		slot = cache_slot(db->cache, db->cache_cap, sql);
		if (slot->sql) {
			st = slot->st;
			db_reset(st);
			db_clear_bindings(st);
			return st;
		}
	}
	if (db_prepare(db, &st, sql) < 0)
		return NULL;
	/* Kept at most half full, so a miss reaches an empty slot soon. */
	if (2 * (db->ncache + 1) > db->cache_cap)
		cache_grow(db);
	slot = cache_slot(db->cache, db->cache_cap, sql);
	slot->sql = sql;
	slot->st = st;
	db->ncache++;
	return st;
}

static struct db_param *param(struct db_stmt *st, int idx)
{
	struct db_param *p;

	if (idx < 1 || idx > st->nparams) {
		db_fail(st->db, OTA_EINVAL, "parameter %d out of range 1..%d: %s", idx, st->nparams, st->sql);
		return NULL;
	}
	p = &st->params[idx - 1];
	free(p->data);
	memset(p, 0, sizeof(*p));
	return p;
}

int db_param_count(struct db_stmt *st)
{
	return st->nparams;
}

int db_bind_int64(struct db_stmt *st, int idx, int64_t v)
{
	struct db_param *p = param(st, idx);
	if (!p)
		return OTA_EINVAL;
	p->type = DB_INTEGER;
	p->i = v;
	return 0;
}

int db_bind_double(struct db_stmt *st, int idx, double v)
{
	struct db_param *p = param(st, idx);
	if (!p)
		return OTA_EINVAL;
	p->type = DB_FLOAT;
	p->f = v;
	return 0;
}

int db_bind_text(struct db_stmt *st, int idx, const char *s)
{
	struct db_param *p = param(st, idx);
	if (!p)
		return OTA_EINVAL;
	if (!s)
		return 0;
	p->type = DB_TEXT;
	p->len = strlen(s);
	p->data = xstrdup(s);
	return 0;
}

int db_bind_text_n(struct db_stmt *st, int idx, const char *s, size_t n)
{
	struct db_param *p;

	if (!s)
		return db_bind_null(st, idx);
	if (!(p = param(st, idx)))
		return OTA_EINVAL;
	p->type = DB_TEXT;
	p->len = n;
	p->data = xmalloc(n + 1);
	memcpy(p->data, s, n);
	p->data[n] = '\0';
	return 0;
}

int db_bind_blob(struct db_stmt *st, int idx, const void *data, size_t n)
{
	struct db_param *p = param(st, idx);
	if (!p)
		return OTA_EINVAL;
	p->type = DB_BLOB;
	p->len = n;
	p->data = xmalloc(n + 1);
	if (n)
		memcpy(p->data, data, n);
	p->data[n] = '\0';
	return 0;
}

int db_bind_null(struct db_stmt *st, int idx)
{
	return param(st, idx) ? 0 : OTA_EINVAL;
}

int db_step(struct db_stmt *st)
{
	return st->db->ops->step(st);
}

int db_run(struct db_stmt *st)
{
	int rc;

	while ((rc = db_step(st)) == 1)
		;
	db_reset(st);
	return rc;
}

int64_t db_changes(struct db_stmt *st)
{
	return st->db->ops->changes(st);
}

int db_column_count(struct db_stmt *st)
{
	return st->db->ops->column_count(st);
}

enum db_type db_column_type(struct db_stmt *st, int col)
{
	return st->db->ops->column_type(st, col);
}

int64_t db_column_int64(struct db_stmt *st, int col)
{
	return st->db->ops->column_int64(st, col);
}

double db_column_double(struct db_stmt *st, int col)
{
	return st->db->ops->column_double(st, col);
}

const char *db_column_text(struct db_stmt *st, int col)
{
	return st->db->ops->column_text(st, col);
}

const void *db_column_blob(struct db_stmt *st, int col, size_t *size)
{
	return st->db->ops->column_blob(st, col, size);
}

int db_reconnect(struct db *db)
{
	return db->ops->reconnect(db);
}

/* ---- migrations ---------------------------------------------------------- */

int db_query_int64(struct db *db, const char *sql, int64_t *out)
{
	struct db_stmt *st = db_stmt(db, sql);
	int rc;

	if (!st)
		return OTA_ERROR;
	rc = db_step(st);
	if (rc == 1)
		*out = db_column_int64(st, 0);
	db_reset(st);
	return rc == 1 ? 0 : (rc < 0 ? rc : OTA_ERROR);
}

int db_schema_version(struct db *db, int *out)
{
	int64_t v = 0;
	int rc = db_query_int64(db, "SELECT COALESCE(MAX(version), 0) FROM schema_migrations", &v);

	if (rc == 0)
		*out = (int)v;
	return rc;
}

static int apply_one(struct db *db, const char *const *list, size_t n, int *done)
{
	struct db_stmt *st;
	int version = 0, rc;

	/* db_begin() makes migrators take turns (several instances starting
	 * at once), and the one that waited sees the version the other
	 * committed */
	*done = 0;
	if ((rc = db_begin(db)) < 0)
		return rc;
	if ((rc = db_exec(db, "CREATE TABLE IF NOT EXISTS schema_migrations ("
			      "version INTEGER NOT NULL PRIMARY KEY, applied_at INTEGER NOT NULL)")) < 0 ||
	    (rc = db_schema_version(db, &version)) < 0)
		goto out;
	if (version > (int)n) {
		rc = db_fail(db, OTA_ERROR, "database schema version %d is newer than this otacd (%zu)", version, n);
		goto out;
	}
	if (version == (int)n) {
		*done = 1;
		goto out;
	}
	if ((rc = db_exec(db, list[version])) < 0) {
		rc = db_fail(db, rc, "migration %d failed: %s", version + 1, db_errmsg(db));
		goto out;
	}
	st = db_stmt(db, "INSERT INTO schema_migrations(version, applied_at) VALUES (?, strftime('%s','now'))");
	if (!st) {
		rc = OTA_ERROR;
		goto out;
	}
	db_bind_int64(st, 1, version + 1);
	if ((rc = db_run(st)) < 0 || (rc = db_commit(db)) < 0)
		goto out;
	return 0;
out:
	db_rollback(db);
	return rc;
}

int db_migrate(struct db *db, const char *const *list, size_t n)
{
	int rc, done = 0;

	while (!done)
		if ((rc = apply_one(db, list, n, &done)) < 0)
			return rc;
	/* A fresh database's migrations leave every page they wrote in this
	 * connection's cache (~0.3 MB for otacd.db), for a process that may
	 * now idle for hours: give them back; a later read fetches what it
	 * needs (issue 18, idle memory). */
	if (db_sqlite_handle(db))
		sqlite3_db_release_memory(db_sqlite_handle(db));
	return 0;
}
