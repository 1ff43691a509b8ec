/*
 * db_copy.h - copy a SQLite database's tables into PostgreSQL, all or
 * nothing, and prove the copy (docs/storage.md, "Moving to PostgreSQL").
 *
 * `otactl migrate` moves an installation's otacd.db with one call:
 *
 *	struct db_copy_opts o = { .migrations = list, .nmigrations = n };
 *	struct db_copy_result r;
 *	rc = db_copy(&r, src, dst, &o);
 *
 * The engine is generic: the tables, their columns, primary keys and
 * foreign-key order come from the source's own schema, and each value is
 * converted by its column's declared type (INTEGER, REAL, TEXT, BLOB) and
 * NULL.  Another SQLite file with its own migration list (fleet.db) is a
 * second call with that list.
 *
 * What it does, in order:
 *   1. the source (SQLite) must be at exactly the list's schema version;
 *   2. the target (PostgreSQL) must have no rows in any of the source's
 *      tables (schema_migrations aside) and not be newer than the list:
 *      it is refused, unchanged, otherwise;
 *   3. db_migrate() brings the target to the same version, as store_open()
 *      does;
 *   4. in ONE target transaction (and one source read snapshot): every
 *      table row by row in foreign-key order, schema_migrations' rows
 *      replaced by the source's; each identity sequence moved past the
 *      copied MAX(id) (setval); then rows counted and a SHA-256 per table
 *      computed on both sides; only when all are equal, COMMIT.
 *
 * A failure anywhere, or a process killed anywhere, leaves the target with
 * no rows (step 3's schema may stay: a rerun migrates nothing and copies).
 */
#ifndef OTA_DB_COPY_H
#define OTA_DB_COPY_H

#include <stddef.h>
#include <stdint.h>

struct db;

/* Rows between two progress calls on a big table. */
#define DB_COPY_PROGRESS_ROWS 10000

struct db_copy_opts {
	const char *const *migrations; /* the list both databases follow */
	size_t nmigrations;
	/* Optional: called at the start of each table (done 0), every
	 * DB_COPY_PROGRESS_ROWS rows, and at its end (done == total). */
	void (*progress)(void *arg, const char *table, int64_t done, int64_t total);
	void *progress_arg;
};

struct db_copy_table {
	char *name;
	int64_t rows;     /* counted on both sides after the copy: equal */
	char sha256[65];  /* the table's checksum, equal on both sides */
	int64_t next_id;  /* the id the target's identity hands out next; 0: none */
};

struct db_copy_result {
	int schema;                    /* the schema version of both */
	struct db_copy_table *tables;  /* in copy (foreign-key) order */
	size_t ntables;
	int64_t rows;                  /* all tables */
};

/*
 * Copy src (SQLite, opened DB_READONLY is enough) into dst (PostgreSQL, a
 * writer).  0 with *out filled (release it); OTA_ECONFLICT when the target
 * already has rows, OTA_EINVAL for a wrong backend or version, else the
 * failure's code; the message, naming the table (and row) where it
 * applies, is in the error slot.  Nothing is committed on a failure.
 */
int db_copy(struct db_copy_result *out, struct db *src, struct db *dst, const struct db_copy_opts *opts);
void db_copy_result_release(struct db_copy_result *r);

#endif
