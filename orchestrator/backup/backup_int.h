/*
 * backup_int.h - what backup.c (taking a backup) and restore.c share:
 * the manifest's name and format, copying a file while hashing it, and
 * the rule for the relative paths a manifest may name.
 */
#ifndef OTA_BACKUP_INT_H
#define OTA_BACKUP_INT_H

#include <stddef.h>
#include <stdint.h>

#define BACKUP_MANIFEST "backup.json"
#define BACKUP_FORMAT 1
#define BACKUP_MAX_MANIFEST (256 << 20) /* ~1.5 million files */
/* the database part: a SQLite copy, or a PostgreSQL dump (custom format) */
#define BACKUP_SQLITE_DB "otacd.db"
#define BACKUP_PG_DUMP "otacd.pgdump"
/* the fleet database's part: fleet.db, or fleet.pgdump when
 * fleet_database: is PostgreSQL */
#define BACKUP_FLEET_DB "fleet.db"
#define BACKUP_FLEET_DUMP "fleet.pgdump"

struct db;

/* Copy SRC (a regular file, never followed through a symlink) to DST,
 * which must not exist, fsync DST; *size and sha (64 hex digits) are
 * what was copied. */
int bk_copy_file(const char *src, const char *dst, int64_t *size, char sha[65]);
/* The same from an open descriptor IN (named SRC in errors), closed here. */
int bk_copy_from(int in, const char *src, const char *dst, int64_t *size, char sha[65]);
/* Hash a regular file. */
int bk_hash_file(const char *path, int64_t *size, char sha[65]);
/* 1 if REL is a path a manifest may name: relative, components of
 * A-Z a-z 0-9 . _ - (not "." or ".."), at most 4 of them. */
int bk_path_ok(const char *rel);
/* mkdir -p of DIR/REL's parent directories. */
int bk_make_parents(const char *dir, const char *rel);
int bk_fsync_dir(const char *dir);
/* 1 if DIR is absent or an empty directory, 0 if not, negative on error. */
int bk_dir_empty(const char *dir);


/* ---- PostgreSQL (backup_pg.c) --------------------------------------------- */

/* Run argv (argv[0] found on PATH) with stdin and stdout on /dev/null;
 * 0 if it exits 0, else an error with its stderr.  OTA_ENOTFOUND, naming
 * the package to install, if the program is not there. */
int bk_run(const char *const argv[]);
/* bk_run() with PGPASSWORD=password in the child's environment (none
 * added when password is NULL). */
int bk_run_env(const char *const argv[], const char *password);
/* url split for pg_dump/pg_restore: *dbname_arg is "--dbname=" and a
 * libpq connection string with every parameter of url but the password;
 * *password (NULL if url has none) goes in the child's environment.
 * Both freed by the caller; OTA_EINVAL if libpq cannot parse url. */
int bk_pg_conninfo(const char *url, char **dbname_arg, char **password);
/* 1 for a postgres:// or postgresql:// URL. */
int bk_is_pg_url(const char *url);
/* pg_dump the database at url into dst (custom format) as of SNAP's
 * snapshot: SNAP is a reader on the same database inside db_begin(). */
int bk_pg_dump(struct db *snap, const char *url, const char *dst);
/* 0 if db's current schema holds no table, view or sequence, else
 * OTA_ECONFLICT naming SHOWN (the database, without its password). */
int bk_pg_target_empty(struct db *db, const char *shown);
/* pg_restore dump into url in one transaction: all of it or nothing. */
int bk_pg_restore(const char *url, const char *dump);
/* Drop every table of db's current schema (undoing a restore into a
 * database that had none). */
int bk_pg_undo(struct db *db);
/* url for messages: without the password a postgres:// URL may hold
 * (db_url_redacted: the user part's and password=). */
void bk_url_shown(const char *url, char *out, size_t cap);

#endif
