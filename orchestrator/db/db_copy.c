/*
 * db_copy.c - a SQLite database copied into PostgreSQL, all or nothing
 * (db_copy.h; `otactl migrate`, docs/storage.md "Moving to PostgreSQL").
 *
 * Why here: the copy speaks only the storage layer (db.h), so it runs the
 * same migrations the daemon runs (db_migrate) and the same dialect
 * rewriting; nothing outside orchestrator/db/ needs to know either
 * backend's catalog.
 *
 * How: the source's schema says what to copy.  sqlite_master lists the
 * tables in creation (migration) order, pragma_table_info() their
 * columns, declared types and primary keys, pragma_foreign_key_list() the
 * tables each one references; a table is copied after the tables it
 * references (PostgreSQL checks each foreign key as the row goes in).
 * Each value is read by its column's declared type, so a value SQLite
 * kept under another type (a REAL 2.0 in an INTEGER column) is converted
 * when that is exact and refused, naming table, row and column, when not.
 * Every insert runs in one target transaction; the checksums are computed
 * inside it too, so a copy that does not verify is rolled back like any
 * other failure.  A table's checksum is SHA-256 over its column names and
 * then its rows in primary-key order (text keys in byte order on both
 * sides: COLLATE "C" / BINARY), each value rendered with its type:
 * N | I<int64>; | R<%.17g>; | T<len>:<bytes> | B<len>:<bytes>, a newline
 * after each row.
 */
#include "db_copy.h"

#include "db.h"

#include <math.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../../common/util.h"

/* db_migrate()'s ledger: the target has its own rows, which the source's
 * replace (same versions, the installation's own applied_at) */
#define LEDGER "schema_migrations"

enum kind { KIND_INTEGER, KIND_REAL, KIND_TEXT, KIND_BLOB };

static const char *const kind_names[] = { "INTEGER", "REAL", "TEXT", "BLOB" };

struct column {
	char *name;
	enum kind kind;
	int pk; /* its place in the primary key from 1; 0: not in it */
};

struct table {
	char *name;
	struct column *cols;
	size_t ncols;
	struct strvec parents; /* tables its foreign keys reference */
	int placed;
};

struct schema {
	struct table *t;
	size_t n;
};

/* One value, read by its column's declared type. */
struct cell {
	enum db_type type;
	int64_t i;
	double f;
	const void *p;
	size_t len;
};

/* ---- SQL text --------------------------------------------------------------- */

static void put_ident(struct buf *b, const char *name)
{
	buf_putc(b, '"');
	for (const char *p = name; *p; p++) {
		if (*p == '"')
			buf_putc(b, '"');
		buf_putc(b, *p);
	}
	buf_putc(b, '"');
}

static void put_columns(struct buf *b, const struct table *t)
{
	for (size_t i = 0; i < t->ncols; i++) {
		if (i)
			buf_puts(b, ", ");
		put_ident(b, t->cols[i].name);
	}
}

/* ORDER BY the primary key (all columns when there is none), text in byte
 * order and NULLs first on both backends, so both sides hash the same
 * sequence of rows. */
static void put_order(struct buf *b, const struct table *t, enum db_backend backend)
{
	int any_pk = 0, first = 1;

	for (size_t i = 0; i < t->ncols; i++)
		any_pk |= t->cols[i].pk > 0;
	buf_puts(b, " ORDER BY ");
	for (int rank = any_pk ? 1 : 0; rank <= (int)t->ncols; rank++) {
		for (size_t i = 0; i < t->ncols; i++) {
			const struct column *c = &t->cols[i];
			if (any_pk ? c->pk != rank : rank != (int)i + 1)
				continue;
			if (!first)
				buf_puts(b, ", ");
			first = 0;
			put_ident(b, c->name);
			if (c->kind == KIND_TEXT)
				buf_puts(b, backend == DB_POSTGRES ? " COLLATE \"C\"" : " COLLATE BINARY");
			buf_puts(b, " NULLS FIRST");
		}
	}
}

static char *select_sql(const struct table *t, enum db_backend backend)
{
	struct buf b = BUF_INIT;

	buf_puts(&b, "SELECT ");
	put_columns(&b, t);
	buf_puts(&b, " FROM ");
	put_ident(&b, t->name);
	put_order(&b, t, backend);
	return buf_detach(&b);
}

static char *insert_sql(const struct table *t)
{
	struct buf b = BUF_INIT;

	buf_puts(&b, "INSERT INTO ");
	put_ident(&b, t->name);
	buf_puts(&b, " (");
	put_columns(&b, t);
	buf_puts(&b, ") VALUES (");
	for (size_t i = 0; i < t->ncols; i++)
		buf_puts(&b, i ? ", ?" : "?");
	buf_putc(&b, ')');
	return buf_detach(&b);
}

/* A statement from text built here (not a literal: no cache). */
static int prepare(struct db *db, struct db_stmt **out, const char *sql, const char *what)
{
	if (db_prepare(db, out, sql) < 0)
		return ota_error_set(OTA_ERROR, "%s: %s", what, db_errmsg(db));
	return 0;
}

/* SELECT COUNT(*) or another one-integer query over table name. */
static int query_int(struct db *db, const char *table, const char *fmt, int64_t *out)
{
	struct buf t = BUF_INIT;
	struct db_stmt *st = NULL;
	char *sql;
	int rc;

	put_ident(&t, table);
	sql = xasprintf(fmt, buf_cstr(&t));
	if ((rc = prepare(db, &st, sql, table)) == 0) {
		rc = db_step(st);
		if (rc == 1) {
			*out = db_column_int64(st, 0);
			rc = 0;
		} else {
			rc = ota_error_set(rc < 0 ? rc : OTA_ERROR, "%s: %s", table, rc < 0 ? db_errmsg(db) : "no row");
		}
	}
	db_finalize(st);
	free(sql);
	buf_release(&t);
	return rc;
}

/* ---- the source's schema ---------------------------------------------------- */

/* SQLite's type affinity of a declared type (sqlite.org/datatype3.html,
 * 3.1); -1 for NUMERIC, which has no exact PostgreSQL counterpart here. */
static int kind_of(const char *decl)
{
	char up[128];
	size_t i;

	for (i = 0; decl[i] && i + 1 < sizeof(up); i++)
		up[i] = (char)(decl[i] >= 'a' && decl[i] <= 'z' ? decl[i] - 32 : decl[i]);
	up[i] = '\0';
	if (strstr(up, "INT"))
		return KIND_INTEGER;
	if (strstr(up, "CHAR") || strstr(up, "CLOB") || strstr(up, "TEXT"))
		return KIND_TEXT;
	if (!*up || strstr(up, "BLOB"))
		return KIND_BLOB;
	if (strstr(up, "REAL") || strstr(up, "FLOA") || strstr(up, "DOUB"))
		return KIND_REAL;
	return -1;
}

static int load_columns(struct db *src, struct table *t)
{
	struct db_stmt *st = NULL;
	int rc;

	if ((rc = prepare(src, &st, "SELECT name, type, pk FROM pragma_table_info(?) ORDER BY cid", t->name)) < 0)
		return rc;
	db_bind_text(st, 1, t->name);
	while ((rc = db_step(st)) == 1) {
		const char *decl = db_column_text(st, 1);
		struct column *c;
		int kind = kind_of(decl ? decl : "");

		if (kind < 0) {
			rc = ota_error_set(OTA_EINVAL, "table %s, column %s: declared type %s has no exact copy "
						       "(INTEGER, REAL, TEXT or BLOB)",
					   t->name, db_column_text(st, 0), decl);
			break;
		}
		t->cols = xrealloc(t->cols, (t->ncols + 1) * sizeof(*t->cols));
		c = &t->cols[t->ncols++];
		c->name = xstrdup(db_column_text(st, 0));
		c->kind = (enum kind)kind;
		c->pk = (int)db_column_int64(st, 2);
	}
	if (rc < 0 && rc != OTA_EINVAL)
		ota_error_set(rc, "table %s: columns: %s", t->name, db_errmsg(src));
	db_finalize(st);
	return rc < 0 ? rc : 0;
}

static int load_parents(struct db *src, struct table *t)
{
	struct db_stmt *st = NULL;
	int rc;

	if ((rc = prepare(src, &st, "SELECT DISTINCT \"table\" FROM pragma_foreign_key_list(?)", t->name)) < 0)
		return rc;
	db_bind_text(st, 1, t->name);
	while ((rc = db_step(st)) == 1)
		if (strcmp(db_column_text(st, 0), t->name) != 0) /* a row's own parent comes first by key */
			strvec_push(&t->parents, db_column_text(st, 0));
	if (rc < 0)
		ota_error_set(rc, "table %s: foreign keys: %s", t->name, db_errmsg(src));
	db_finalize(st);
	return rc < 0 ? rc : 0;
}

static void schema_release(struct schema *s)
{
	for (size_t i = 0; i < s->n; i++) {
		for (size_t c = 0; c < s->t[i].ncols; c++)
			free(s->t[i].cols[c].name);
		free(s->t[i].cols);
		free(s->t[i].name);
		strvec_clear(&s->t[i].parents);
	}
	free(s->t);
	memset(s, 0, sizeof(*s));
}

static int schema_has(const struct schema *s, const char *name)
{
	for (size_t i = 0; i < s->n; i++)
		if (!strcmp(s->t[i].name, name))
			return 1;
	return 0;
}

/* Reorder s->t so each table follows the tables it references, keeping
 * creation order otherwise (Kahn's algorithm, first ready table first). */
static int order_by_foreign_keys(struct schema *s)
{
	struct table *sorted = xcalloc(s->n ? s->n : 1, sizeof(*sorted));
	size_t done = 0;

	while (done < s->n) {
		size_t i;
		for (i = 0; i < s->n; i++) {
			struct table *t = &s->t[i];
			int ready = !t->placed;
			for (size_t p = 0; ready && p < t->parents.n; p++)
				for (size_t j = 0; j < s->n; j++)
					if (!strcmp(s->t[j].name, t->parents.v[p]) && !s->t[j].placed)
						ready = 0;
			if (ready)
				break;
		}
		if (i == s->n) {
			free(sorted);
			return ota_error_set(OTA_EINVAL, "the source's foreign keys form a cycle: no table order "
							 "lets every row in after the rows it references");
		}
		s->t[i].placed = 1;
		sorted[done++] = s->t[i];
	}
	free(s->t);
	s->t = sorted;
	return 0;
}

static int load_schema(struct db *src, struct schema *s)
{
	struct db_stmt *st = NULL;
	int rc;

	memset(s, 0, sizeof(*s));
	/* sqlite_master in creation order; SQLite's own tables stay behind */
	if ((rc = prepare(src, &st, "SELECT name FROM sqlite_master WHERE type = 'table' "
				    "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY rowid", "source schema")) < 0)
		return rc;
	while ((rc = db_step(st)) == 1) {
		s->t = xrealloc(s->t, (s->n + 1) * sizeof(*s->t));
		memset(&s->t[s->n], 0, sizeof(*s->t));
		s->t[s->n++].name = xstrdup(db_column_text(st, 0));
	}
	if (rc < 0)
		ota_error_set(rc, "source schema: %s", db_errmsg(src));
	db_finalize(st);
	for (size_t i = 0; rc >= 0 && i < s->n; i++)
		if ((rc = load_columns(src, &s->t[i])) == 0)
			rc = load_parents(src, &s->t[i]);
	if (rc >= 0 && !schema_has(s, LEDGER))
		rc = ota_error_set(OTA_EINVAL, "the source has no %s table: not a database otacd migrated", LEDGER);
	if (rc >= 0)
		rc = order_by_foreign_keys(s);
	if (rc < 0)
		schema_release(s);
	return rc < 0 ? rc : 0;
}

/* ---- values ----------------------------------------------------------------- */

/* "id=12" or "job_id=3, attempt=1": which row a message is about. */
static char *row_key(struct db_stmt *st, const struct table *t)
{
	struct buf b = BUF_INIT;

	for (size_t i = 0; i < t->ncols; i++) {
		const char *v;
		if (!t->cols[i].pk)
			continue;
		v = db_column_text(st, (int)i);
		buf_printf(&b, "%s%s=%.40s", b.len ? ", " : "", t->cols[i].name, v ? v : "NULL");
	}
	if (!b.len)
		buf_puts(&b, "no primary key");
	return buf_detach(&b);
}

static int cell_refuse(struct db_stmt *st, const struct table *t, size_t col, const char *what)
{
	char *key = row_key(st, t);
	int rc = ota_error_set(OTA_EINVAL, "table %s, row (%s), column %s (%s): %s cannot be copied exactly", t->name,
			       key, t->cols[col].name, kind_names[t->cols[col].kind], what);
	free(key);
	return rc;
}

/* Column col of st's row as its declared kind asks; the pointers live
 * until the next step. */
static int cell_read(struct cell *c, struct db_stmt *st, const struct table *t, size_t col)
{
	enum db_type vt = db_column_type(st, (int)col);
	char what[64];

	memset(c, 0, sizeof(*c));
	if (vt == DB_NULL)
		return 0;
	switch (t->cols[col].kind) {
	case KIND_INTEGER:
		c->type = DB_INTEGER;
		if (vt == DB_INTEGER) {
			c->i = db_column_int64(st, (int)col);
			return 0;
		}
		if (vt == DB_FLOAT) {
			c->f = db_column_double(st, (int)col);
			if (c->f == floor(c->f) && fabs(c->f) < 9.2e18) {
				c->i = (int64_t)c->f;
				return 0;
			}
			snprintf(what, sizeof(what), "the real %.17g", c->f);
			return cell_refuse(st, t, col, what);
		}
		return cell_refuse(st, t, col, vt == DB_TEXT ? "a text" : "a blob");
	case KIND_REAL:
		c->type = DB_FLOAT;
		if (vt == DB_FLOAT) {
			c->f = db_column_double(st, (int)col);
			return 0;
		}
		if (vt == DB_INTEGER) {
			c->i = db_column_int64(st, (int)col);
			c->f = (double)c->i;
			if (c->i > -(1LL << 53) && c->i < (1LL << 53))
				return 0;
			snprintf(what, sizeof(what), "the integer %lld", (long long)c->i);
			return cell_refuse(st, t, col, what);
		}
		return cell_refuse(st, t, col, vt == DB_TEXT ? "a text" : "a blob");
	case KIND_TEXT:
		if (vt == DB_BLOB)
			return cell_refuse(st, t, col, "a blob");
		c->type = DB_TEXT;
		c->p = db_column_text(st, (int)col);
		c->len = strlen(c->p);
		return 0;
	case KIND_BLOB:
		if (vt != DB_BLOB && vt != DB_TEXT)
			return cell_refuse(st, t, col, vt == DB_INTEGER ? "an integer" : "a real");
		c->type = DB_BLOB;
		c->p = db_column_blob(st, (int)col, &c->len);
		return 0;
	}
	return 0;
}

static int cell_bind(struct db_stmt *ins, int idx, const struct cell *c)
{
	switch (c->type) {
	case DB_NULL:
		return db_bind_null(ins, idx);
	case DB_INTEGER:
		return db_bind_int64(ins, idx, c->i);
	case DB_FLOAT:
		return db_bind_double(ins, idx, c->f);
	case DB_TEXT:
		return db_bind_text_n(ins, idx, c->p, c->len);
	case DB_BLOB:
		return db_bind_blob(ins, idx, c->p, c->len);
	}
	return OTA_EINVAL;
}

static void cell_hash(EVP_MD_CTX *md, const struct cell *c)
{
	char head[48];
	int n = 0;

	switch (c->type) {
	case DB_NULL:
		n = snprintf(head, sizeof(head), "N");
		break;
	case DB_INTEGER:
		n = snprintf(head, sizeof(head), "I%lld;", (long long)c->i);
		break;
	case DB_FLOAT:
		n = snprintf(head, sizeof(head), "R%.17g;", c->f);
		break;
	case DB_TEXT:
	case DB_BLOB:
		n = snprintf(head, sizeof(head), "%c%zu:", c->type == DB_TEXT ? 'T' : 'B', c->len);
		break;
	}
	EVP_DigestUpdate(md, head, (size_t)n);
	if ((c->type == DB_TEXT || c->type == DB_BLOB) && c->len)
		EVP_DigestUpdate(md, c->p, c->len);
}

/* ---- one table -------------------------------------------------------------- */

static int copy_rows(struct db *src, struct db *dst, const struct table *t, const struct db_copy_opts *o)
{
	struct db_stmt *sel = NULL, *ins = NULL;
	char *qs = select_sql(t, DB_SQLITE), *qi = insert_sql(t);
	int64_t total = 0, done = 0;
	int rc;

	if ((rc = query_int(src, t->name, "SELECT COUNT(*) FROM %s", &total)) < 0 ||
	    (rc = prepare(src, &sel, qs, t->name)) < 0 || (rc = prepare(dst, &ins, qi, t->name)) < 0)
		goto out;
	if (o->progress)
		o->progress(o->progress_arg, t->name, 0, total);
	while ((rc = db_step(sel)) == 1) {
		for (size_t i = 0; i < t->ncols && rc >= 0; i++) {
			struct cell c;
			if ((rc = cell_read(&c, sel, t, i)) == 0)
				rc = cell_bind(ins, (int)i + 1, &c);
		}
		if (rc < 0)
			goto out;
		if ((rc = db_run(ins)) < 0) {
			char *key = row_key(sel, t);
			rc = ota_error_set(rc, "table %s, row (%s): %s", t->name, key, db_errmsg(dst));
			free(key);
			goto out;
		}
		if (++done % DB_COPY_PROGRESS_ROWS == 0 && o->progress && done < total)
			o->progress(o->progress_arg, t->name, done, total);
	}
	if (rc < 0) {
		ota_error_set(rc, "table %s: reading the source: %s", t->name, db_errmsg(src));
		goto out;
	}
	if (o->progress)
		o->progress(o->progress_arg, t->name, done, done);
out:
	db_finalize(sel);
	db_finalize(ins);
	free(qs);
	free(qi);
	return rc < 0 ? rc : 0;
}

/* The table's checksum on db (hex) and how many rows it hashed. */
static int table_checksum(struct db *db, const struct table *t, int64_t *rows, char hex[65])
{
	char *sql = select_sql(t, db_backend(db));
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	unsigned char sum[EVP_MAX_MD_SIZE];
	struct db_stmt *st = NULL;
	unsigned len = 0;
	int rc;

	if (!md)
		ota_error_set(OTA_ENOMEM, "out of memory");
	*rows = 0;
	if (!md || (rc = prepare(db, &st, sql, t->name)) < 0)
		goto out;
	EVP_DigestInit_ex(md, EVP_sha256(), NULL);
	for (size_t i = 0; i < t->ncols; i++) {
		EVP_DigestUpdate(md, t->cols[i].name, strlen(t->cols[i].name));
		EVP_DigestUpdate(md, i + 1 < t->ncols ? "," : "\n", 1);
	}
	while ((rc = db_step(st)) == 1) {
		for (size_t i = 0; i < t->ncols && rc >= 0; i++) {
			struct cell c;
			if ((rc = cell_read(&c, st, t, i)) == 0)
				cell_hash(md, &c);
		}
		if (rc < 0)
			goto out;
		EVP_DigestUpdate(md, "\n", 1);
		(*rows)++;
	}
	if (rc < 0) {
		ota_error_set(rc, "table %s: checksum: %s", t->name, db_errmsg(db));
		goto out;
	}
	EVP_DigestFinal_ex(md, sum, &len);
	ota_hex(hex, sum, len);
out:
	if (!md)
		rc = OTA_ENOMEM;
	EVP_MD_CTX_free(md);
	db_finalize(st);
	free(sql);
	return rc < 0 ? rc : 0;
}

/* Move t's identity sequence (if it has one) past the copied MAX; the id
 * the target hands out next in *next (0: no identity). */
static int move_identity(struct db *dst, const struct table *t, int64_t *next)
{
	struct db_stmt *st = NULL;
	struct buf name = BUF_INIT, sql = BUF_INIT;
	char *col = NULL;
	int rc;

	*next = 0;
	if ((rc = prepare(dst, &st, "SELECT column_name FROM information_schema.columns WHERE "
				    "table_schema = current_schema() AND table_name = ? AND is_identity = 'YES'",
			  t->name)) < 0)
		return rc;
	db_bind_text(st, 1, t->name);
	if ((rc = db_step(st)) == 1)
		col = xstrdup(db_column_text(st, 0));
	db_finalize(st);
	st = NULL;
	if (rc <= 0) {
		if (rc < 0)
			ota_error_set(rc, "table %s: identity: %s", t->name, db_errmsg(dst));
		return rc;
	}
	put_ident(&name, t->name);
	/* setval is not undone by a rollback: a failed copy leaves the
	 * sequence ahead, which a rerun sets again (nothing is lost) */
	buf_puts(&sql, "SELECT COALESCE((SELECT setval(pg_get_serial_sequence(?, ?), MAX(");
	put_ident(&sql, col);
	buf_puts(&sql, ")) FROM ");
	put_ident(&sql, t->name);
	buf_puts(&sql, " HAVING COUNT(*) > 0), 0) + 1");
	if ((rc = prepare(dst, &st, buf_cstr(&sql), t->name)) == 0) {
		db_bind_text(st, 1, buf_cstr(&name));
		db_bind_text(st, 2, col);
		if ((rc = db_step(st)) == 1) {
			*next = db_column_int64(st, 0);
			rc = 0;
		} else {
			rc = ota_error_set(rc < 0 ? rc : OTA_ERROR, "table %s: moving its identity: %s", t->name,
					   db_errmsg(dst));
		}
	}
	db_finalize(st);
	free(col);
	buf_release(&name);
	buf_release(&sql);
	return rc;
}

/* ---- the target before the copy -------------------------------------------- */

/* Does the target have table name (in its current schema)? */
static int target_has_table(struct db *dst, const char *name, int *has)
{
	struct db_stmt *st = NULL;
	int rc;

	if ((rc = prepare(dst, &st, "SELECT COUNT(*) FROM information_schema.tables WHERE "
				    "table_schema = current_schema() AND table_name = ?", name)) < 0)
		return rc;
	db_bind_text(st, 1, name);
	rc = db_step(st);
	*has = rc == 1 && db_column_int64(st, 0) > 0;
	if (rc < 0)
		ota_error_set(rc, "target: %s", db_errmsg(dst));
	db_finalize(st);
	return rc < 0 ? rc : 0;
}

/* OTA_ECONFLICT, naming them, when any of the tables to copy already has
 * rows on the target (its own schema_migrations aside). */
static int target_must_be_empty(struct db *dst, const struct schema *s)
{
	struct buf full = BUF_INIT;
	int rc = 0;

	for (size_t i = 0; i < s->n && rc == 0; i++) {
		int64_t any = 0;
		int has = 0;
		if (!strcmp(s->t[i].name, LEDGER))
			continue;
		if ((rc = target_has_table(dst, s->t[i].name, &has)) < 0 || !has)
			continue;
		rc = query_int(dst, s->t[i].name, "SELECT COUNT(*) FROM (SELECT 1 FROM %s LIMIT 1) AS probe", &any);
		if (rc == 0 && any)
			buf_printf(&full, "%s%s", full.len ? ", " : "", s->t[i].name);
	}
	if (rc == 0 && full.len)
		rc = ota_error_set(OTA_ECONFLICT, "the target already has rows (in %s): migrate copies into an empty "
						  "database only, it does not merge; nothing was changed",
				   buf_cstr(&full));
	buf_release(&full);
	return rc;
}

/* The source at exactly the list's version; the target not newer. */
static int check_versions(struct db *src, struct db *dst, const struct db_copy_opts *o, int *version)
{
	int has = 0, tv = 0, rc;

	if ((rc = db_schema_version(src, version)) < 0)
		return ota_error_set(rc, "source: cannot read its schema version: %s", db_errmsg(src));
	if (*version != (int)o->nmigrations)
		return ota_error_set(OTA_EINVAL, "the source is at schema version %d, this program's is %zu: %s", *version,
				     o->nmigrations,
				     *version < (int)o->nmigrations
					     ? "start and stop this version's otacd on it once (it upgrades), then migrate"
					     : "migrate with the version that wrote it");
	if ((rc = target_has_table(dst, LEDGER, &has)) < 0 || !has)
		return rc;
	if ((rc = db_schema_version(dst, &tv)) < 0)
		return ota_error_set(rc, "target: cannot read its schema version: %s", db_errmsg(dst));
	if (tv > (int)o->nmigrations)
		return ota_error_set(OTA_EINVAL, "the target is at schema version %d, newer than this program's %zu; "
						 "nothing was changed",
				     tv, o->nmigrations);
	return 0;
}

/* ---- the copy --------------------------------------------------------------- */

static int clear_ledger(struct db *dst)
{
	struct db_stmt *st = db_stmt(dst, "DELETE FROM " LEDGER);

	if (!st || db_run(st) < 0)
		return ota_error_set(OTA_ERROR, "target: %s: %s", LEDGER, db_errmsg(dst));
	return 0;
}

static int verify_table(struct db *src, struct db *dst, const struct table *t, struct db_copy_table *r)
{
	int64_t n_src = 0, n_dst = 0, h_src = 0, h_dst = 0;
	char sum_dst[65];
	int rc;

	if ((rc = query_int(src, t->name, "SELECT COUNT(*) FROM %s", &n_src)) < 0 ||
	    (rc = query_int(dst, t->name, "SELECT COUNT(*) FROM %s", &n_dst)) < 0 ||
	    (rc = table_checksum(src, t, &h_src, r->sha256)) < 0 || (rc = table_checksum(dst, t, &h_dst, sum_dst)) < 0)
		return rc;
	if (n_src != n_dst || h_src != n_src || h_dst != n_dst)
		return ota_error_set(OTA_ERROR, "verification failed: table %s has %lld rows in the source, %lld in the "
						"target; rolled back",
				     t->name, (long long)n_src, (long long)n_dst);
	if (strcmp(r->sha256, sum_dst) != 0)
		return ota_error_set(OTA_ERROR, "verification failed: table %s's checksum differs (source %.16s, target "
						"%.16s); rolled back",
				     t->name, r->sha256, sum_dst);
	r->rows = n_src;
	return 0;
}

static int copy_all(struct db_copy_result *out, struct db *src, struct db *dst, const struct schema *s,
		    const struct db_copy_opts *o)
{
	int rc;

	if ((rc = target_must_be_empty(dst, s)) < 0)
		return rc;
	for (size_t i = 0; i < s->n; i++) {
		if (!strcmp(s->t[i].name, LEDGER) && (rc = clear_ledger(dst)) < 0)
			return rc;
		if ((rc = copy_rows(src, dst, &s->t[i], o)) < 0)
			return rc;
	}
	out->tables = xcalloc(s->n ? s->n : 1, sizeof(*out->tables));
	out->ntables = s->n;
	for (size_t i = 0; i < s->n; i++) {
		struct db_copy_table *r = &out->tables[i];
		r->name = xstrdup(s->t[i].name);
		if ((rc = move_identity(dst, &s->t[i], &r->next_id)) < 0 ||
		    (rc = verify_table(src, dst, &s->t[i], r)) < 0)
			return rc;
		out->rows += r->rows;
	}
	return 0;
}

void db_copy_result_release(struct db_copy_result *r)
{
	for (size_t i = 0; r->tables && i < r->ntables; i++)
		free(r->tables[i].name);
	free(r->tables);
	memset(r, 0, sizeof(*r));
}

int db_copy(struct db_copy_result *out, struct db *src, struct db *dst, const struct db_copy_opts *o)
{
	struct schema s;
	int rc;

	memset(out, 0, sizeof(*out));
	if (db_backend(src) != DB_SQLITE || db_backend(dst) != DB_POSTGRES)
		return ota_error_set(OTA_EINVAL, "migrate copies a SQLite database (sqlite:PATH) into PostgreSQL "
						 "(postgres://...)");
	if ((rc = load_schema(src, &s)) < 0)
		return rc;
	if ((rc = check_versions(src, dst, o, &out->schema)) < 0 || (rc = target_must_be_empty(dst, &s)) < 0)
		goto out;
	if ((rc = db_migrate(dst, o->migrations, o->nmigrations)) < 0) {
		ota_error_set(rc, "target: migrating it to schema %zu: %s", o->nmigrations, db_errmsg(dst));
		goto out;
	}
	/* one snapshot of the source, one transaction on the target */
	if ((rc = db_begin(src)) < 0) {
		ota_error_set(rc, "source: begin: %s", db_errmsg(src));
		goto out;
	}
	if ((rc = db_begin(dst)) < 0) {
		ota_error_set(rc, "target: begin: %s", db_errmsg(dst));
		goto out;
	}
	if ((rc = copy_all(out, src, dst, &s, o)) < 0)
		goto out;
	if ((rc = db_commit(dst)) < 0)
		ota_error_set(rc, "target: commit: %s", db_errmsg(dst));
out:
	db_rollback(dst);
	db_rollback(src);
	schema_release(&s);
	if (rc < 0)
		db_copy_result_release(out);
	return rc < 0 ? rc : 0;
}
