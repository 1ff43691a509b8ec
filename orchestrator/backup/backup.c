/*
 * backup.c - a consistent backup of a running otacd (backup.h).
 *
 * Each database is copied by a reader connection of its own with SQLite's
 * online backup API in one step, so the copy is one committed state while
 * the engine and the fleet's writer go on committing (WAL: readers never
 * block them).  otacd.db is copied first and fleet.db right after, so the
 * fleet's counters are never older than what the copied gates and
 * rollouts recorded from them; rollout state itself is all in otacd.db.
 * fleet.db's own layout (a device snapshot plus the log after it,
 * fleet_store.c) is exact at every commit, so a copy of any committed
 * state opens as it is.
 *
 * Artifacts are content-addressed and never change once visible, so the
 * objects the copied otacd.db lists are copied afterwards, each checked
 * against its name while it is hashed.  Logs are copied as they are at
 * that moment (a running job's log may have grown past what its rows
 * say; the restored otacd reads a log by its file).  Runs on the HTTP
 * thread that asked (an admin's rare call): seconds for a typical state
 * directory.
 *
 * Everything goes through the storage layer (db/db.h): the online backup
 * API is db_sqlite_backup_to(), and the copy's schema version and
 * artifact list are plain SQL on a connection to the copy.  When otacd's
 * database is PostgreSQL, pg_dump makes the database part from a snapshot
 * that the same connection then reads the artifacts from (backup_pg.c).
 */
#include "backup.h"
#include "backup_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "../../common/util.h"
#include "../db/db.h"

/* The small files of the state directory a restored otacd needs: its admin
 * token, the fleet's keys, the device CA; and the revocation list an otacd
 * from before issue 16 kept there (now in the database: trustdb.h). */
static const char *const small_files[] = {
	"admin.token", "fleet.key", "device.secret", "revocations.crl.pem", "devca/ca.pem", "devca/ca.key",
};

struct backup_run {
	const char *state, *dir;
	json_t *files;     /* the manifest's list */
	int64_t bytes;
	int missing;       /* artifacts the copied database lists that the store no longer has */
};

/* ---- shared with restore.c ---------------------------------------------- */

static int copy_fd(int in, int out, const char *what, int64_t *size, char sha[65])
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	unsigned char buf[1 << 16], dig[32];
	unsigned dlen = 0;
	int64_t total = 0;
	int rc = 0;
	ssize_t n;

	if (!md)
		return ota_error_set(OTA_ENOMEM, "out of memory hashing %s", what);
	EVP_DigestInit_ex(md, EVP_sha256(), NULL);
	while ((n = read(in, buf, sizeof(buf))) != 0) {
		if (n < 0) {
			if (errno == EINTR)
				continue;
			rc = ota_error_set(OTA_ERROR, "cannot read %s: %s", what, strerror(errno));
			goto out;
		}
		EVP_DigestUpdate(md, buf, (size_t)n);
		total += n;
		for (ssize_t off = 0; out >= 0 && off < n;) {
			ssize_t w = write(out, buf + off, (size_t)(n - off));
			if (w < 0 && errno == EINTR)
				continue;
			if (w < 0) {
				rc = ota_error_set(OTA_ERROR, "cannot write the copy of %s: %s", what, strerror(errno));
				goto out;
			}
			off += w;
		}
	}
	EVP_DigestFinal_ex(md, dig, &dlen);
	for (unsigned i = 0; i < 32; i++)
		snprintf(sha + 2 * i, 3, "%02x", dig[i]);
	*size = total;
out:
	EVP_MD_CTX_free(md);
	return rc;
}

int bk_hash_file(const char *path, int64_t *size, char sha[65])
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW), rc;
	struct stat st;

	if (fd < 0)
		return ota_error_set(errno == ENOENT ? OTA_ENOTFOUND : OTA_ERROR, "cannot open %s: %s", path,
				     strerror(errno));
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return ota_error_set(OTA_ERROR, "%s is not a regular file", path);
	}
	rc = copy_fd(fd, -1, path, size, sha);
	close(fd);
	return rc;
}

int bk_copy_file(const char *src, const char *dst, int64_t *size, char sha[65])
{
	int in = open(src, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);

	if (in < 0)
		return ota_error_set(errno == ENOENT ? OTA_ENOTFOUND : OTA_ERROR, "cannot open %s: %s", src,
				     strerror(errno));
	return bk_copy_from(in, src, dst, size, sha);
}

int bk_copy_from(int in, const char *src, const char *dst, int64_t *size, char sha[65])
{
	int out = -1, rc;
	struct stat st;

	if (fstat(in, &st) < 0 || !S_ISREG(st.st_mode)) {
		rc = ota_error_set(OTA_ERROR, "%s is not a regular file", src);
		goto out;
	}
	out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (out < 0) {
		rc = ota_error_set(OTA_ERROR, "cannot create %s: %s", dst, strerror(errno));
		goto out;
	}
	if ((rc = copy_fd(in, out, src, size, sha)) < 0)
		goto out;
	if (fsync(out) < 0)
		rc = ota_error_set(OTA_ERROR, "cannot fsync %s: %s", dst, strerror(errno));
out:
	if (out >= 0)
		close(out);
	close(in);
	return rc;
}

int bk_path_ok(const char *rel)
{
	int parts = 0;
	const char *p = rel;

	if (!rel || !*rel || strlen(rel) > 256)
		return 0;
	while (*p) {
		size_t n = strspn(p, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-");
		if (n == 0 || (n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.'))
			return 0;
		p += n;
		if (*p == '/' && p[1])
			p++;
		else if (*p)
			return 0;
		if (++parts > 4)
			return 0;
	}
	return 1;
}

int bk_make_parents(const char *dir, const char *rel)
{
	const char *slash = strrchr(rel, '/');
	char *parent;
	int rc;

	if (!slash)
		return 0;
	parent = xasprintf("%s/%.*s", dir, (int)(slash - rel), rel);
	rc = ota_mkdir_p(parent, 0700);
	free(parent);
	return rc;
}

int bk_fsync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), rc = 0;
	if (fd < 0 || fsync(fd) < 0)
		rc = ota_error_set(OTA_ERROR, "cannot fsync directory %s: %s", dir, strerror(errno));
	if (fd >= 0)
		close(fd);
	return rc;
}

int bk_dir_empty(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int empty = 1;

	if (!d && errno == ENOENT)
		return 1;
	if (!d)
		return ota_error_set(OTA_ERROR, "cannot open %s: %s", dir, strerror(errno));
	while (empty && (e = readdir(d)))
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
			empty = 0;
	closedir(d);
	return empty;
}

/* ---- taking a backup ----------------------------------------------------- */

static void manifest_add(struct backup_run *b, const char *rel, int64_t size, const char *sha)
{
	json_array_append_new(b->files, json_pack("{ss sI ss}", "path", rel, "size", (json_int_t)size, "sha256", sha));
	b->bytes += size;
}

/* The job logs' directory (backup_logs_dir_set): NULL is STATE/logs. */
static char *g_logs_dir;

void backup_logs_dir_set(const char *dir)
{
	free(g_logs_dir);
	g_logs_dir = dir ? xstrdup(dir) : NULL;
}

const char *backup_logs_dir(void)
{
	return g_logs_dir;
}

/* Copy SRC to DIR/REL and list it.  OTA_ENOTFOUND if there is no SRC. */
static int copy_from(struct backup_run *b, const char *src, const char *rel, char sha[65])
{
	char *dst = xasprintf("%s/%s", b->dir, rel);
	int64_t size = 0;
	int rc = access(src, F_OK) < 0 && errno == ENOENT ? OTA_ENOTFOUND : bk_make_parents(b->dir, rel);

	if (rc == 0)
		rc = bk_copy_file(src, dst, &size, sha);
	if (rc == 0)
		manifest_add(b, rel, size, sha);
	free(dst);
	return rc;
}

/* Copy STATE/REL to DIR/REL and list it.  OTA_ENOTFOUND if there is none. */
static int copy_rel(struct backup_run *b, const char *rel, char sha[65])
{
	char *src = xasprintf("%s/%s", b->state, rel);
	int rc = copy_from(b, src, rel, sha);

	free(src);
	return rc;
}

/* List DIR/REL, a file written there by another program (pg_dump). */
static int list_file(struct backup_run *b, const char *rel)
{
	char *path = xasprintf("%s/%s", b->dir, rel), sha[65];
	int64_t size = 0;
	int rc = bk_hash_file(path, &size, sha);

	if (rc == 0)
		manifest_add(b, rel, size, sha);
	free(path);
	return rc;
}

/* Copy the SQLite database at SRC_PATH to DIR/NAME with SQLite's online
 * backup API, from a reader of its own, and list it.  OTA_ENOTFOUND if
 * there is no SRC_PATH. */
static int copy_sqlite(struct backup_run *b, const char *src_path, const char *name)
{
	char *url = xasprintf("sqlite:%s", src_path), *dst = xasprintf("%s/%s", b->dir, name);
	struct db *src = NULL;
	char sha[65];
	int64_t size = 0;
	struct stat st;
	int rc;

	if (stat(src_path, &st) < 0) {
		rc = OTA_ENOTFOUND;
		goto out;
	}
	if ((rc = db_open(&src, url, DB_READONLY)) < 0 || (rc = db_sqlite_backup_to(src, dst)) < 0 ||
	    (rc = bk_hash_file(dst, &size, sha)) < 0) {
		ota_error_prefix("backup of %s", src_path);
		goto out;
	}
	manifest_add(b, name, size, sha);
out:
	db_close(src);
	free(url);
	free(dst);
	return rc;
}

/*
 * The database part, and in *snap a connection that reads the state it
 * holds (for its schema version and its artifacts): on SQLite the copy,
 * on PostgreSQL the snapshot pg_dump dumped (a reader inside its
 * transaction).  db_url NULL or "sqlite:PATH" (else a plain path) is a
 * SQLite file; "postgres://" or "postgresql://" is PostgreSQL.
 */
static int copy_main_db(struct backup_run *b, const char *db_url, struct db **snap)
{
	char *path = NULL, *copy_url = NULL, *dst = NULL;
	int rc;

	*snap = NULL;
	if (bk_is_pg_url(db_url)) {
		char shown[512];
		bk_url_shown(db_url, shown, sizeof(shown));
		dst = xasprintf("%s/" BACKUP_PG_DUMP, b->dir);
		if ((rc = db_open(snap, db_url, DB_READONLY)) < 0 || (rc = db_begin(*snap)) < 0) {
			rc = ota_error_set(rc, "backup of %s: %s", shown, ota_error_last());
			goto out;
		}
		if ((rc = bk_pg_dump(*snap, db_url, dst)) == 0)
			rc = list_file(b, BACKUP_PG_DUMP);
		goto out;
	}
	path = db_url ? xstrdup(strncmp(db_url, "sqlite:", 7) ? db_url : db_url + 7)
		      : xasprintf("%s/" BACKUP_SQLITE_DB, b->state);
	if ((rc = copy_sqlite(b, path, BACKUP_SQLITE_DB)) < 0) {
		if (rc == OTA_ENOTFOUND)
			rc = ota_error_set(OTA_ERROR, "%s is missing", path);
		goto out;
	}
	copy_url = xasprintf("sqlite:%s/" BACKUP_SQLITE_DB, b->dir);
	if ((rc = db_open(snap, copy_url, DB_READONLY)) < 0)
		ota_error_prefix("the copy of %s", path);
out:
	if (rc < 0) {
		db_close(*snap);
		*snap = NULL;
	}
	free(path);
	free(copy_url);
	free(dst);
	return rc;
}

/* The fleet database (fleet_database:, NULL: STATE/fleet.db) into the
 * backup, right after otacd.db so its counters are never older than what
 * the copied gates recorded from them: fleet.db by SQLite's online backup
 * API, or fleet.pgdump by pg_dump from a snapshot of its own (another
 * database: the two cannot share one).  *kind: "sqlite", "postgres", or
 * NULL when there is no fleet.db yet (no fleet ever opened). */
static int copy_fleet_db(struct backup_run *b, const char *fleet_url, const char **kind)
{
	struct db *snap = NULL;
	char *path = NULL, *dst = NULL, shown[512];
	int rc;

	*kind = NULL;
	if (bk_is_pg_url(fleet_url)) {
		bk_url_shown(fleet_url, shown, sizeof(shown));
		dst = xasprintf("%s/" BACKUP_FLEET_DUMP, b->dir);
		if ((rc = db_open(&snap, fleet_url, DB_READONLY)) < 0 || (rc = db_begin(snap)) < 0)
			rc = ota_error_set(rc, "backup of the fleet database %s: %s", shown, ota_error_last());
		else if ((rc = bk_pg_dump(snap, fleet_url, dst)) < 0)
			ota_error_prefix("the fleet database");
		else if ((rc = list_file(b, BACKUP_FLEET_DUMP)) == 0)
			*kind = "postgres";
		goto out;
	}
	path = fleet_url ? xstrdup(strncmp(fleet_url, "sqlite:", 7) ? fleet_url : fleet_url + 7)
			 : xasprintf("%s/" BACKUP_FLEET_DB, b->state);
	rc = copy_sqlite(b, path, BACKUP_FLEET_DB);
	if (rc == OTA_ENOTFOUND)
		rc = 0;
	else if (rc == 0)
		*kind = "sqlite";
out:
	db_close(snap);
	free(path);
	free(dst);
	return rc;
}

static int is_sha256(const char *s)
{
	return s && strlen(s) == 64 && strspn(s, "0123456789abcdef") == 64;
}

/* Every object the backed-up database lists (read on snap), each checked
 * against its name. */
static int copy_artifacts(struct backup_run *b, struct db *snap)
{
	struct db_stmt *q = db_stmt(snap, "SELECT DISTINCT sha256 FROM artifacts ORDER BY sha256");
	struct strvec want = STRVEC_INIT;
	int rc = 0, step;

	if (!q)
		return ota_error_set(OTA_ERROR, "backup: cannot list the artifacts: %s", ota_error_last());
	/* listed first: a file copy must not hold the statement open */
	while ((step = db_step(q)) == 1)
		if (is_sha256(db_column_text(q, 0)))
			strvec_push(&want, db_column_text(q, 0)); /* else never written by otacd; nothing to copy */
	db_reset(q);
	if (step < 0)
		rc = ota_error_set(step, "backup: cannot list the artifacts: %s", ota_error_last());
	for (size_t i = 0; rc == 0 && i < want.n; i++) {
		char *rel = xasprintf("artifacts/sha256/%.2s/%s", want.v[i], want.v[i]), sha[65];
		rc = copy_rel(b, rel, sha);
		if (rc == OTA_ENOTFOUND) {
			b->missing++; /* removed by retention since the copy */
			rc = 0;
		} else if (rc == 0 && strcmp(sha, want.v[i]))
			rc = ota_error_set(OTA_ERROR, "artifact %s is corrupt in the store (its content hashes to %s)",
					   want.v[i], sha);
		free(rel);
	}
	strvec_clear(&want);
	return rc;
}

static int all_digits(const char *s, const char *suffix)
{
	size_t n = strspn(s, "0123456789"), sl = strlen(suffix);
	return n > 0 && n < 20 && strlen(s) == n + sl && !strcmp(s + n, suffix);
}

/* logs/JOB/ATTEMPT.log, each as it is now, from the logs' directory. */
static int copy_logs(struct backup_run *b)
{
	char *root = g_logs_dir ? xstrdup(g_logs_dir) : xasprintf("%s/logs", b->state);
	DIR *top = opendir(root);
	struct dirent *j;
	int rc = 0;

	if (!top) {
		free(root);
		return 0;
	}
	while (rc == 0 && (j = readdir(top))) {
		char *jobdir;
		DIR *d;
		struct dirent *f;
		if (!all_digits(j->d_name, ""))
			continue;
		jobdir = xasprintf("%s/%s", root, j->d_name);
		if ((d = opendir(jobdir))) {
			while (rc == 0 && (f = readdir(d))) {
				char *rel, sha[65];
				if (!all_digits(f->d_name, ".log"))
					continue;
				char *src = xasprintf("%s/%s/%s", root, j->d_name, f->d_name);
				rel = xasprintf("logs/%s/%s", j->d_name, f->d_name);
				rc = copy_from(b, src, rel, sha);
				if (rc == OTA_ENOTFOUND)
					rc = 0;
				free(src);
				free(rel);
			}
			closedir(d);
		}
		free(jobdir);
	}
	closedir(top);
	free(root);
	return rc;
}

/* fsync every directory the copies were made in, bottom up. */
static int sync_dirs(struct backup_run *b)
{
	struct strvec seen = STRVEC_INIT;
	size_t i;
	json_t *f;
	int rc = 0;

	json_array_foreach(b->files, i, f) {
		char *rel = xstrdup(json_string_value(json_object_get(f, "path"))), *slash;
		while ((slash = strrchr(rel, '/'))) {
			*slash = '\0';
			if (!strvec_contains(&seen, rel))
				strvec_push(&seen, rel);
		}
		free(rel);
	}
	for (i = seen.n; rc == 0 && i-- > 0;) {
		char *p = xasprintf("%s/%s", b->dir, seen.v[i]);
		rc = bk_fsync_dir(p);
		free(p);
	}
	strvec_clear(&seen);
	return rc;
}

static int write_manifest(struct backup_run *b, int schema, int copied_artifacts, const char *database,
			  const char *fleet_database)
{
	json_t *m = json_pack("{si ss sI si ss ss ss? sO}", "format", BACKUP_FORMAT, "otacd", OTACD_VERSION, "created_at",
			      (json_int_t)time(NULL), "schema", schema, "artifacts", copied_artifacts ? "local" : "external",
			      "database", database, "fleet_database", fleet_database,
			      "files", b->files);
	char *text = json_dumps(m, JSON_INDENT(1) | JSON_SORT_KEYS);
	char *path = xasprintf("%s/" BACKUP_MANIFEST, b->dir);
	int rc = ota_write_file_atomic(path, text, strlen(text), 0600);

	if (rc == 0)
		rc = bk_fsync_dir(b->dir);
	free(path);
	free(text);
	json_decref(m);
	return rc;
}

int backup_take(json_t **out, const char *state_dir, const char *dir, int copy_artifacts_too)
{
	return backup_take_db(out, NULL, state_dir, dir, copy_artifacts_too);
}

int backup_take_db(json_t **out, const char *db_url, const char *state_dir, const char *dir, int copy_artifacts_too)
{
	return backup_take_dbs(out, db_url, NULL, state_dir, dir, copy_artifacts_too);
}

int backup_take_dbs(json_t **out, const char *db_url, const char *fleet_url, const char *state_dir, const char *dir,
		    int copy_artifacts_too)
{
	struct backup_run b = { state_dir, dir, json_array(), 0, 0 };
	struct db *snap = NULL;
	const char *database, *fleet_database = NULL;
	int rc, schema = 0;
	char sha[65];

	if (!dir || dir[0] != '/') {
		rc = ota_error_set(OTA_EINVAL, "the backup directory must be an absolute path");
		goto out;
	}
	if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
		rc = ota_error_set(OTA_ERROR, "cannot create %s: %s", dir, strerror(errno));
		goto out;
	}
	if ((rc = bk_dir_empty(dir)) <= 0) {
		rc = rc < 0 ? rc : ota_error_set(OTA_ECONFLICT, "%s is not empty: back up into a new directory", dir);
		goto out;
	}
	if ((rc = copy_main_db(&b, db_url, &snap)) < 0)
		goto out;
	database = db_backend(snap) == DB_POSTGRES ? "postgres" : "sqlite";
	if (db_schema_version(snap, &schema) < 0)
		schema = 0; /* not otacd's database: restore refuses it */
	if ((rc = copy_fleet_db(&b, fleet_url, &fleet_database)) < 0)
		goto out;
	if ((copy_artifacts_too && (rc = copy_artifacts(&b, snap)) < 0) || (rc = copy_logs(&b)) < 0)
		goto out;
	db_rollback(snap); /* the snapshot has served */
	for (size_t i = 0; i < OTA_ARRAY_SIZE(small_files); i++)
		if ((rc = copy_rel(&b, small_files[i], sha)) < 0 && rc != OTA_ENOTFOUND)
			goto out;
	if ((rc = sync_dirs(&b)) < 0 || (rc = write_manifest(&b, schema, copy_artifacts_too, database, fleet_database)) < 0)
		goto out;
	if (out)
		*out = json_pack("{ss sI sI si ss si ss ss?}", "dir", dir, "files", (json_int_t)json_array_size(b.files),
				 "bytes", (json_int_t)b.bytes, "schema", schema, "artifacts",
				 copy_artifacts_too ? "local" : "external", "missing_artifacts", b.missing, "database",
				 database, "fleet_database", fleet_database);
	rc = 0;
out:
	db_close(snap);
	json_decref(b.files);
	return rc;
}
