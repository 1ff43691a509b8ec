/*
 * restore.c - `otacd --restore DIR`: a backup into a new state directory
 * (backup.h).
 *
 * The backup directory is checked as untrusted input: backup.json must
 * parse, name only plain relative paths (no "..", no absolute path, no
 * symlink followed) each once, and every file must have the size and
 * SHA-256 it lists, checked while it is copied into a staging directory
 * next to the target.  otacd.db is then opened there the way otacd opens
 * it (integrity check first; store_open refuses a schema newer than this
 * otacd), and only after all of that the staging directory is renamed to
 * the target.  Any error removes the staging directory: the target is
 * never half restored.  A restore that succeeds is audited inside the
 * database it restored (restore_audit).
 *
 * A backup of a PostgreSQL database (otacd.pgdump) goes into a new, empty
 * PostgreSQL database instead, with pg_restore in one transaction, before
 * the rename; if anything after it fails its tables are dropped again
 * (backup_pg.c).  The fleet database's part goes the same way:
 * fleet.db into the state directory, fleet.pgdump into fleet_database's
 * new, empty PostgreSQL database, its schema not newer than this otacd's
 * fleet store (fleet_store_migrations()).
 */
#include "backup.h"
#include "backup_int.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <libgen.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../common/util.h"
#include "../clock.h"
#include "../db/db.h"
#include "../fleet/fleet.h"
#include "../store.h"

static int manifest_load(json_t **out, const char *dir)
{
	char *path = xasprintf("%s/" BACKUP_MANIFEST, dir);
	struct buf text = BUF_INIT;
	json_error_t jerr;
	json_t *m = NULL, *files;
	int rc = ota_read_file(&text, path, BACKUP_MAX_MANIFEST);

	if (rc < 0) {
		rc = ota_error_set(OTA_EINVAL, "%s: no readable manifest (a partial backup?): %s", path, ota_error_last());
		goto out;
	}
	m = json_loadb(text.ptr ? text.ptr : "", text.len, 0, &jerr);
	if (!m) {
		rc = ota_error_set(OTA_EINVAL, "%s:%d: %s", path, jerr.line, jerr.text);
		goto out;
	}
	if (json_integer_value(json_object_get(m, "format")) != BACKUP_FORMAT) {
		rc = ota_error_set(OTA_EINVAL, "%s: format must be %d", path, BACKUP_FORMAT);
		goto out;
	}
	files = json_object_get(m, "files");
	if (!json_is_array(files) || json_array_size(files) == 0) {
		rc = ota_error_set(OTA_EINVAL, "%s: 'files' must be a non-empty list", path);
		goto out;
	}
	*out = json_incref(m);
out:
	json_decref(m);
	buf_release(&text);
	free(path);
	return rc;
}

/* One entry of the list: its path, size and digest, or OTA_EINVAL. */
static int entry_check(json_t *f, size_t i, struct strvec *seen, const char **rel, int64_t *size, const char **sha)
{
	json_t *p = json_object_get(f, "path"), *s = json_object_get(f, "size"), *d = json_object_get(f, "sha256");

	*rel = json_string_value(p);
	*sha = json_string_value(d);
	if (!bk_path_ok(*rel) || !strcmp(*rel, BACKUP_MANIFEST))
		return ota_error_set(OTA_EINVAL, "backup.json: files[%zu]: 'path' must be a plain relative path", i);
	if (strvec_contains(seen, *rel))
		return ota_error_set(OTA_EINVAL, "backup.json: files[%zu]: %s is listed twice", i, *rel);
	if (!json_is_integer(s) || json_integer_value(s) < 0)
		return ota_error_set(OTA_EINVAL, "backup.json: %s: 'size' must be a non-negative integer", *rel);
	if (!*sha || strlen(*sha) != 64 || strspn(*sha, "0123456789abcdef") != 64)
		return ota_error_set(OTA_EINVAL, "backup.json: %s: 'sha256' must be 64 lowercase hex digits", *rel);
	*size = json_integer_value(s);
	strvec_push(seen, *rel);
	return 0;
}

/* Open DIR/REL read-only without following a symlink at any component:
 * a backup directory with a symlinked subdirectory cannot make otacd read
 * files outside it.  -1 with errno set. */
static int open_beneath(const char *dir, const char *rel)
{
	char *copy = xstrdup(rel), *save = NULL, *part, *next;
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	for (part = strtok_r(copy, "/", &save); fd >= 0 && part; part = next) {
		int nfd;
		next = strtok_r(NULL, "/", &save);
		nfd = openat(fd, part, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | (next ? O_DIRECTORY : 0));
		close(fd);
		fd = nfd;
	}
	free(copy);
	return fd;
}

/* Copy every listed file into STAGE (the job logs into LOGS instead when
 * it is not NULL: the config's `logs:`), each checked against the list; the
 * database part NEED (otacd.db or otacd.pgdump) must be among them. */
static int copy_files(json_t *files, const char *dir, const char *stage, const char *logs, const char *need)
{
	struct strvec seen = STRVEC_INIT;
	size_t i;
	json_t *f;
	int rc = 0;

	json_array_foreach(files, i, f) {
		const char *rel, *want;
		char *src, *dst, sha[65] = "";
		int64_t want_size = -1, size = 0;
		int in;
		const char *into = stage, *to;
		if ((rc = entry_check(f, i, &seen, &rel, &want_size, &want)) < 0)
			break;
		to = rel;
		if (logs && !strncmp(rel, "logs/", 5)) {
			into = logs;
			to = rel + 5;
		}
		if ((rc = bk_make_parents(into, to)) < 0)
			break;
		src = xasprintf("%s/%s", dir, rel);
		dst = xasprintf("%s/%s", into, to);
		if ((in = open_beneath(dir, rel)) >= 0)
			rc = bk_copy_from(in, src, dst, &size, sha);
		else if (errno == ENOENT)
			rc = ota_error_set(OTA_EINVAL, "%s is missing from the backup (a partial backup?)", rel);
		else
			rc = ota_error_set(OTA_EINVAL, "cannot open %s in the backup: %s%s", rel, strerror(errno),
					   errno == ELOOP || errno == ENOTDIR ? " (a symlink? backups hold none)" : "");
		if (rc == 0 && (size != want_size || strcmp(sha, want)))
			rc = ota_error_set(OTA_EINVAL,
					   "%s does not match backup.json (%lld bytes, sha256 %.12s…; listed: %lld bytes, %.12s…)",
					   rel, (long long)size, sha, (long long)want_size, want);
		free(src);
		free(dst);
		if (rc < 0)
			break;
	}
	if (rc == 0 && !strvec_contains(&seen, need))
		rc = ota_error_set(OTA_EINVAL, "backup.json lists no %s", need);
	strvec_clear(&seen);
	return rc;
}

/* SQLite's own check of the file at path, opened read-only. */
static int integrity_check(const char *path)
{
	char *url = xasprintf("sqlite:%s", path);
	struct db *db = NULL;
	struct db_stmt *q = NULL;
	int rc;

	if ((rc = db_open(&db, url, DB_READONLY)) < 0 || (rc = db_prepare(db, &q, "PRAGMA integrity_check")) < 0 ||
	    (rc = db_step(q)) != 1)
		rc = ota_error_set(OTA_EINVAL, "%s: not a readable database: %s", path,
				   rc == 0 ? "no answer" : ota_error_last());
	else if (strcmp(db_column_text(q, 0) ? db_column_text(q, 0) : "", "ok"))
		rc = ota_error_set(OTA_EINVAL, "%s: integrity check failed: %s", path, db_column_text(q, 0));
	else
		rc = 0;
	db_finalize(q);
	db_close(db);
	free(url);
	return rc;
}

/* The OS user running the restore: its name, else "uid N". */
static void restorer(char *out, size_t n)
{
	struct passwd *pw = getpwuid(getuid());
	if (pw && pw->pw_name)
		snprintf(out, n, "%s", pw->pw_name);
	else
		snprintf(out, n, "uid %u", (unsigned)getuid());
}

/*
 * The restore's audit row (issue 18), written into the staged otacd.db
 * before the rename: the restored state directory says who restored it,
 * when, from where into where and how much, and a restore that fails
 * leaves no row because it leaves no directory.  `at` is the wall clock
 * (no otacd runs, so there is no otacd time to read); the row's id follows
 * every row of the backup.
 */
static int restore_audit(struct store *s, const char *dir, const char *state_dir, const json_t *m)
{
	struct db_stmt *st = store_q(s, "INSERT INTO audit(at, actor, action, reason, detail) VALUES (?,?,?,?,?)");
	json_t *files = json_object_get(m, "files"), *f, *detail;
	char who[128], host[256] = "", *text;
	json_int_t bytes = 0;
	size_t i;
	int rc;

	if (!st)
		return OTA_ERROR;
	json_array_foreach(files, i, f)
		bytes += json_integer_value(json_object_get(f, "size"));
	restorer(who, sizeof(who));
	if (gethostname(host, sizeof(host) - 1) < 0)
		host[0] = '\0';
	detail = json_pack("{ss ss ss sI sI sI sO* sI}", "from", dir, "into", state_dir, "host", host, "uid",
			   (json_int_t)getuid(), "files", (json_int_t)json_array_size(files), "bytes", bytes, "backup_otacd",
			   json_object_get(m, "otacd"), "backup_created_at", json_integer_value(json_object_get(m, "created_at")));
	text = json_dumps(detail, JSON_COMPACT | JSON_SORT_KEYS);
	db_bind_int64(st, 1, clock_real_ms());
	db_bind_text(st, 2, who);
	db_bind_text(st, 3, "restore");
	db_bind_text(st, 4, "otacd --restore");
	db_bind_text(st, 5, text);
	rc = db_run(st);
	free(text);
	json_decref(detail);
	if (rc < 0)
		ota_error_prefix("the restore's audit entry");
	return rc;
}

/* The restored databases open: intact, and otacd.db's schema not newer
 * than this otacd (store_open migrates an older one, as otacd would);
 * then the restore is audited in it. */
static int databases_check(const char *stage, const char *dir, const char *state_dir, const json_t *m)
{
	char *main_db = xasprintf("%s/" BACKUP_SQLITE_DB, stage), *fleet_db = xasprintf("%s/fleet.db", stage);
	struct store *s = NULL;
	int rc = integrity_check(main_db);

	if (rc == 0 && access(fleet_db, F_OK) == 0)
		rc = integrity_check(fleet_db);
	if (rc == 0 && (rc = store_open(&s, main_db)) < 0)
		ota_error_prefix("the backup's otacd.db");
	if (rc == 0)
		rc = restore_audit(s, dir, state_dir, m);
	store_close(s);
	free(main_db);
	free(fleet_db);
	return rc;
}

/* ---- PostgreSQL ------------------------------------------------------------ */

static int lists(const json_t *m, const char *rel)
{
	size_t i;
	json_t *f;

	json_array_foreach(json_object_get(m, "files"), i, f)
		if (!strcmp(json_string_value(json_object_get(f, "path")) ?: "", rel))
			return 1;
	return 0;
}

/* A SQLite backup goes into a state directory's otacd.db, a PostgreSQL
 * one into a PostgreSQL database: refused the other way round, before
 * anything changes. */
static int kind_check(const json_t *m, const char *dir, int pg)
{
	int has_db = lists(m, BACKUP_SQLITE_DB), has_dump = lists(m, BACKUP_PG_DUMP);

	if (has_db && has_dump)
		return ota_error_set(OTA_EINVAL, "%s/backup.json lists both otacd.db and otacd.pgdump", dir);
	if (pg && has_db)
		return ota_error_set(OTA_EINVAL,
				     "%s holds a SQLite backup (otacd.db), and otacd's database is PostgreSQL: restore it "
				     "into a state directory with a SQLite database, then move that with otactl migrate "
				     "(docs/storage.md)",
				     dir);
	if (!pg && has_dump)
		return ota_error_set(OTA_EINVAL,
				     "%s holds a PostgreSQL backup (otacd.pgdump): restore it with otacd's database set to "
				     "a new, empty PostgreSQL database (postgres://...), which pg_restore fills",
				     dir);
	return 0;
}

/* The fleet part goes where fleet_database: says, or the restore is
 * refused before anything changes. */
static int fleet_kind_check(const json_t *m, const char *dir, int fleet_pg)
{
	int has_db = lists(m, BACKUP_FLEET_DB), has_dump = lists(m, BACKUP_FLEET_DUMP);

	if (has_db && has_dump)
		return ota_error_set(OTA_EINVAL, "%s/backup.json lists both fleet.db and fleet.pgdump", dir);
	if (fleet_pg && has_db)
		return ota_error_set(OTA_EINVAL,
				     "%s holds a SQLite fleet database (fleet.db), and fleet_database is PostgreSQL: restore "
				     "it with fleet_database unset, then move it with otactl migrate --from "
				     "sqlite:STATE/fleet.db (docs/storage.md)",
				     dir);
	if (!fleet_pg && has_dump)
		return ota_error_set(OTA_EINVAL,
				     "%s holds a PostgreSQL fleet database (fleet.pgdump): restore it with fleet_database "
				     "set to a new, empty PostgreSQL database (postgres://...), which pg_restore fills",
				     dir);
	return 0;
}

/* fleet.pgdump restored into the fleet database (*restored = 1 once it
 * is), its schema not newer than this otacd's fleet store. */
static int fleet_pg_restore(const char *stage, const char *url, struct db *target, int *restored)
{
	char *dump = xasprintf("%s/" BACKUP_FLEET_DUMP, stage);
	size_t latest = 0;
	int rc, version = 0;

	fleet_store_migrations(&latest);
	if ((rc = bk_pg_restore(url, dump)) == 0)
		*restored = 1;
	if (rc < 0)
		ota_error_prefix("the fleet database");
	else if ((rc = db_schema_version(target, &version)) < 0)
		rc = ota_error_set(rc, "the restored fleet database: %s", ota_error_last());
	else if (version > (int)latest)
		rc = ota_error_set(OTA_EINVAL,
				   "the backup's fleet database is at schema version %d, newer than this otacd's (%zu): "
				   "restore it with the otacd that took it, or a newer one",
				   version, latest);
	free(dump);
	return rc;
}

/* The target database is empty and the backup's schema (as its manifest
 * says; store_open checks the restored one again) is not newer than this
 * otacd: what can be known before pg_restore changes anything. */
static int pg_precheck(struct db *target, const char *shown, const json_t *m)
{
	json_int_t schema = json_integer_value(json_object_get(m, "schema"));
	int rc = bk_pg_target_empty(target, shown);

	if (rc == 0 && schema > store_schema_latest())
		rc = ota_error_set(OTA_EINVAL,
				   "the backup's schema version %lld is newer than this otacd's (%d): restore it with the "
				   "otacd that took it, or a newer one",
				   (long long)schema, store_schema_latest());
	return rc;
}

/* fleet.db checked, the dump restored (*restored = 1 once it is), the
 * restored schema opened the way otacd opens it, and the restore audited
 * in it. */
static int pg_restore_check(const char *stage, const char *dir, const char *state_dir, const json_t *m,
			    const char *url, int *restored)
{
	char *dump = xasprintf("%s/" BACKUP_PG_DUMP, stage), *fleet_db = xasprintf("%s/fleet.db", stage);
	struct store *s = NULL;
	int rc = access(fleet_db, F_OK) == 0 ? integrity_check(fleet_db) : 0;

	if (rc == 0 && (rc = bk_pg_restore(url, dump)) == 0)
		*restored = 1;
	if (rc == 0 && (rc = store_open(&s, url)) < 0)
		ota_error_prefix("the restored database");
	if (rc == 0)
		rc = restore_audit(s, dir, state_dir, m);
	store_close(s);
	free(dump);
	free(fleet_db);
	return rc;
}

static int remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

int backup_restore(const char *dir, const char *state_dir)
{
	return backup_restore_db(dir, state_dir, NULL);
}

int backup_restore_db(const char *dir, const char *state_dir, const char *db_url)
{
	return backup_restore_dbs(dir, state_dir, db_url, NULL);
}

/* Drop what a failed restore put into a PostgreSQL database (db, shown);
 * rc and the message say why it failed, and then what became of db. */
static int undo_restore(int rc, struct db *db, const char *shown)
{
	char why[1024];

	snprintf(why, sizeof(why), "%s", ota_error_last());
	if (bk_pg_undo(db) < 0)
		return ota_error_set(rc, "%s; and the restored tables could not be dropped again from %s (drop them by "
					 "hand): %s",
				     why, shown, ota_error_last());
	return ota_error_set(rc, "%s (the restored tables were dropped again: %s is empty, as it was)", why, shown);
}

int backup_restore_dbs(const char *dir, const char *state_dir, const char *db_url, const char *fleet_url)
{
	char *target = xstrdup(state_dir), *copy, *stage, shown[512] = "", fleet_shown[512] = "";
	struct db *pg_target = NULL, *fleet_target = NULL;
	json_t *m = NULL;
	int rc, empty, pg = bk_is_pg_url(db_url), restored = 0, fleet_pg = bk_is_pg_url(fleet_url), fleet_restored = 0;
	const char *logs = backup_logs_dir();
	int logs_was = 0;
	size_t n = strlen(target);

	while (n > 1 && target[n - 1] == '/')
		target[--n] = '\0'; /* the staging directory goes beside it, not in it */
	state_dir = target;
	copy = xstrdup(target);
	stage = xasprintf("%s.restore-XXXXXX", target);
	empty = bk_dir_empty(state_dir);

	if (empty <= 0) {
		rc = empty < 0 ? empty
			       : ota_error_set(OTA_ECONFLICT, "%s is not empty: restore only into a new or empty state directory",
					       state_dir);
		goto out;
	}
	/* the default place, named: restored with the state directory */
	if (logs && !strncmp(logs, target, n) && !strcmp(logs + n, "/logs"))
		logs = NULL;
	if (logs && !strncmp(logs, target, n) && logs[n] == '/') {
		rc = ota_error_set(OTA_EINVAL, "logs: %s is inside the state directory %s: use %s/logs or a directory outside it",
				   logs, target, target);
		goto out;
	}
	/* the config's logs: directory is filled too, so it must be as empty */
	if (logs && (logs_was = bk_dir_empty(logs)) <= 0) {
		rc = logs_was < 0 ? logs_was
				  : ota_error_set(OTA_ECONFLICT, "%s (logs:) is not empty: restore only into a new or empty "
								 "logs directory",
						  logs);
		goto out;
	}
	logs_was = logs && access(logs, F_OK) == 0;
	if ((rc = manifest_load(&m, dir)) < 0 || (rc = kind_check(m, dir, pg)) < 0 ||
	    (rc = fleet_kind_check(m, dir, fleet_pg)) < 0)
		goto out;
	if (pg && fleet_pg && !strcmp(db_url, fleet_url)) {
		rc = ota_error_set(OTA_EINVAL, "database and fleet_database name the same PostgreSQL database: each needs "
					       "its own (createdb)");
		goto out;
	}
	if (fleet_pg) {
		bk_url_shown(fleet_url, fleet_shown, sizeof(fleet_shown));
		if ((rc = db_open(&fleet_target, fleet_url, 0)) < 0) {
			rc = ota_error_set(rc, "%s: %s", fleet_shown, ota_error_last());
			goto out;
		}
		if ((rc = bk_pg_target_empty(fleet_target, fleet_shown)) < 0)
			goto out;
	}
	if (pg) {
		bk_url_shown(db_url, shown, sizeof(shown));
		if ((rc = db_open(&pg_target, db_url, 0)) < 0) {
			rc = ota_error_set(rc, "%s: %s", shown, ota_error_last());
			goto out;
		}
		if ((rc = pg_precheck(pg_target, shown, m)) < 0)
			goto out;
	}
	if (!mkdtemp(stage)) {
		rc = ota_error_set(OTA_ERROR, "cannot create %s: %s", stage, strerror(errno));
		goto out;
	}
	if ((rc = copy_files(json_object_get(m, "files"), dir, stage, logs, pg ? BACKUP_PG_DUMP : BACKUP_SQLITE_DB)) < 0)
		goto fail;
	rc = pg ? pg_restore_check(stage, dir, state_dir, m, db_url, &restored) : databases_check(stage, dir, state_dir, m);
	if (rc == 0 && fleet_pg && lists(m, BACKUP_FLEET_DUMP))
		rc = fleet_pg_restore(stage, fleet_url, fleet_target, &fleet_restored);
	if (rc < 0 || (rc = bk_fsync_dir(stage)) < 0)
		goto fail;
	/* rename(2) replaces an empty directory in one step */
	if (rename(stage, state_dir) < 0) {
		rc = ota_error_set(OTA_ERROR, "cannot rename %s to %s: %s", stage, state_dir, strerror(errno));
		goto fail;
	}
	rc = bk_fsync_dir(dirname(copy));
	goto out;
fail:
	nftw(stage, remove_one, 16, FTW_DEPTH | FTW_PHYS);
	if (logs) { /* back to as it was: absent, or empty */
		nftw(logs, remove_one, 16, FTW_DEPTH | FTW_PHYS);
		if (logs_was)
			(void)mkdir(logs, 0700);
	}
	if (fleet_restored)
		rc = undo_restore(rc, fleet_target, fleet_shown);
	if (restored)
		rc = undo_restore(rc, pg_target, shown);
out:
	db_close(fleet_target);
	db_close(pg_target);
	json_decref(m);
	free(stage);
	free(copy);
	free(target);
	return rc;
}
