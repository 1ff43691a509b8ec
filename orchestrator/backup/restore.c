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
 */
#include "backup.h"
#include "backup_int.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <libgen.h>
#include <pwd.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../common/util.h"
#include "../clock.h"
#include "../db/db.h"
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

/* Copy every listed file into STAGE, each checked against the list. */
static int copy_files(json_t *files, const char *dir, const char *stage)
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
		if ((rc = entry_check(f, i, &seen, &rel, &want_size, &want)) < 0 || (rc = bk_make_parents(stage, rel)) < 0)
			break;
		src = xasprintf("%s/%s", dir, rel);
		dst = xasprintf("%s/%s", stage, rel);
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
	if (rc == 0 && !strvec_contains(&seen, "otacd.db"))
		rc = ota_error_set(OTA_EINVAL, "backup.json lists no otacd.db");
	strvec_clear(&seen);
	return rc;
}

static int integrity_check(const char *path)
{
	sqlite3 *db = NULL;
	sqlite3_stmt *q = NULL;
	int rc = 0;

	if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &q, NULL) != SQLITE_OK ||
	    sqlite3_step(q) != SQLITE_ROW)
		rc = ota_error_set(OTA_EINVAL, "%s: not a readable database: %s", path, sqlite3_errmsg(db));
	else if (strcmp((const char *)sqlite3_column_text(q, 0), "ok"))
		rc = ota_error_set(OTA_EINVAL, "%s: integrity check failed: %s", path, sqlite3_column_text(q, 0));
	sqlite3_finalize(q);
	sqlite3_close(db);
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
		ota_error_prefix("the restore's audit entry: ");
	return rc;
}

/* The restored databases open: intact, and otacd.db's schema not newer
 * than this otacd (store_open migrates an older one, as otacd would);
 * then the restore is audited in it. */
static int databases_check(const char *stage, const char *dir, const char *state_dir, const json_t *m)
{
	char *main_db = xasprintf("%s/otacd.db", stage), *fleet_db = xasprintf("%s/fleet.db", stage);
	struct store *s = NULL;
	int rc = integrity_check(main_db);

	if (rc == 0 && access(fleet_db, F_OK) == 0)
		rc = integrity_check(fleet_db);
	if (rc == 0 && (rc = store_open(&s, main_db)) < 0)
		ota_error_prefix("the backup's otacd.db: ");
	if (rc == 0)
		rc = restore_audit(s, dir, state_dir, m);
	store_close(s);
	free(main_db);
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
	char *target = xstrdup(state_dir), *copy, *stage;
	json_t *m = NULL;
	int rc, empty;
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
	if ((rc = manifest_load(&m, dir)) < 0)
		goto out;
	if (!mkdtemp(stage)) {
		rc = ota_error_set(OTA_ERROR, "cannot create %s: %s", stage, strerror(errno));
		goto out;
	}
	if ((rc = copy_files(json_object_get(m, "files"), dir, stage)) < 0 || (rc = databases_check(stage, dir, state_dir, m)) < 0 ||
	    (rc = bk_fsync_dir(stage)) < 0)
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
out:
	json_decref(m);
	free(stage);
	free(copy);
	free(target);
	return rc;
}
