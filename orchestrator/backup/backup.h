/*
 * backup.h - a consistent copy of a running otacd's state directory, and
 * its restore into a new one (docs/operations.md, "Back up and restore").
 *
 * A backup is a directory: otacd.db and fleet.db copied with SQLite's
 * online backup API (each one transaction-consistent, taken while otacd
 * runs) -- or, for a database on PostgreSQL, otacd.pgdump or fleet.pgdump
 * made by pg_dump from one snapshot (backup_pg.c) -- the job logs, the local artifact store's objects the copied
 * otacd.db references, the small key and token files, and backup.json,
 * the manifest (every file's path, size and SHA-256).  backup.json is
 * written last and renamed into place, so a backup without it is partial.
 */
#ifndef OTA_BACKUP_H
#define OTA_BACKUP_H

#include <jansson.h>

/* Copy STATE_DIR into DIR, which must be an absolute path that does not
 * exist or is an empty directory.  copy_artifacts = 0 when the artifact
 * store is not the local one (an S3 bucket is backed up by its own means).
 * *out (may be NULL): a summary {dir, files, bytes, schema, artifacts,
 * missing_artifacts}.  0, or negative with the error message set; a failed
 * backup leaves no backup.json. */
int backup_take(json_t **out, const char *state_dir, const char *dir, int copy_artifacts);
/* backup_take() of the database at db_url, a storage-layer URL (db/db.h):
 * NULL or sqlite:PATH is copied with SQLite's online backup API;
 * postgres://... is dumped with pg_dump (an error naming the package if it
 * is not installed; nothing is backed up then).  The summary adds
 * database: "sqlite" or "postgres". */
int backup_take_db(json_t **out, const char *db_url, const char *state_dir, const char *dir, int copy_artifacts);
/* backup_take_db() with the fleet database at fleet_url too (NULL:
 * STATE/fleet.db): sqlite:PATH copied as fleet.db, postgres://... dumped
 * as fleet.pgdump.  The summary adds fleet_database: "sqlite",
 * "postgres" or null (no fleet.db yet). */
int backup_take_dbs(json_t **out, const char *db_url, const char *fleet_url, const char *state_dir, const char *dir,
		    int copy_artifacts);

/* The job logs' directory backups read and restores fill (config `logs:`):
 * NULL (the default) is STATE_DIR/logs.  Set once at start. */
void backup_logs_dir_set(const char *dir);
const char *backup_logs_dir(void);

/* Restore the backup in DIR into STATE_DIR, which must not exist or be an
 * empty directory.  Every file is checked against backup.json while it is
 * copied into a staging directory next to STATE_DIR, otacd.db is opened
 * (integrity check, schema not newer than this otacd), and only then the
 * staging directory is renamed to STATE_DIR: on any error nothing is
 * changed.  0, or negative with the error message set. */
int backup_restore(const char *dir, const char *state_dir);
/* backup_restore() with otacd's database at db_url (NULL: STATE_DIR's
 * otacd.db).  A postgres:// database must be new, with no tables: the
 * backup's otacd.pgdump is restored into it with pg_restore in one
 * transaction, and dropped again if anything after it fails.  A SQLite
 * backup is refused for a PostgreSQL database and the other way round,
 * before anything changes. */
int backup_restore_db(const char *dir, const char *state_dir, const char *db_url);
/* backup_restore_db() with the fleet database at fleet_url (NULL or
 * sqlite:: fleet.db goes into STATE_DIR).  A postgres:// fleet database
 * must be new and empty, and another database than db_url: the backup's
 * fleet.pgdump is restored into it the same way, and dropped again if
 * anything after it fails.  A fleet.db backup is refused for a
 * PostgreSQL fleet database and the other way round. */
int backup_restore_dbs(const char *dir, const char *state_dir, const char *db_url, const char *fleet_url);

#endif
