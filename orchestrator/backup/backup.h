/*
 * backup.h - a consistent copy of a running otacd's state directory, and
 * its restore into a new one (docs/operations.md, "Back up and restore").
 *
 * A backup is a directory: otacd.db and fleet.db copied with SQLite's
 * online backup API (each one transaction-consistent, taken while otacd
 * runs), the job logs, the local artifact store's objects the copied
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

/* Restore the backup in DIR into STATE_DIR, which must not exist or be an
 * empty directory.  Every file is checked against backup.json while it is
 * copied into a staging directory next to STATE_DIR, otacd.db is opened
 * (integrity check, schema not newer than this otacd), and only then the
 * staging directory is renamed to STATE_DIR: on any error nothing is
 * changed.  0, or negative with the error message set. */
int backup_restore(const char *dir, const char *state_dir);

#endif
