/*
 * backup_pg.c - the database part of a backup when otacd's database is
 * PostgreSQL (docs/operations.md, "Back up and restore"): PostgreSQL's own
 * pg_dump and pg_restore, run as child processes, since SQLite's online
 * backup API has no PostgreSQL form.
 *
 * Taking: a reader connection opens a REPEATABLE READ transaction and
 * exports its snapshot (pg_export_snapshot()); pg_dump --snapshot dumps
 * exactly that state into otacd.pgdump (custom format), and the same
 * transaction then lists the artifacts to copy, so the dump and the copied
 * objects are one committed state, as the SQLite copy and its artifact
 * list are.
 *
 * Restoring: only into a database with no tables (in its current schema),
 * with pg_restore --single-transaction --exit-on-error, so the dump is
 * restored whole or not at all.  What comes after it (otacd's schema
 * check, the audit row, renaming the state directory into place) can
 * still fail; then bk_pg_undo() drops the tables the restore made, and the
 * database is empty again, as it was.
 *
 * The programs are found on PATH (Debian: postgresql-client).  The URL is
 * never handed to them as it is: libpq parses it (PQconninfoParse) and
 * the child gets a connection string without the password in --dbname,
 * and the password, when the URL has one (user part or password=), in
 * its environment as PGPASSWORD, which only its user and root can read
 * (/proc/PID/environ), not in its argv, which `ps` shows everyone.
 * Without one in the URL, libpq reads PGPASSWORD or ~/.pgpass as for
 * otacd itself.
 */
#include "backup_int.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "../../common/util.h"
#include "../db/db.h"
#include "../db/pgload.h"

extern char **environ;

#define ERR_CAP 2048 /* of a program's stderr kept for the message */

/* Keep the first ERR_CAP bytes of what fd gives until EOF, one line. */
static void read_errors(int fd, char *msg, size_t cap)
{
	size_t len = 0;
	char sink[512];
	ssize_t n;

	msg[0] = '\0';
	for (;;) {
		int full = len + 1 >= cap; /* then drain into sink until EOF */
		n = full ? read(fd, sink, sizeof(sink)) : read(fd, msg + len, cap - 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		if (!full)
			len += (size_t)n;
	}
	msg[len] = '\0';
	for (char *p = msg; *p; p++)
		if (*p == '\n')
			*p = len && p == msg + len - 1 ? '\0' : ' ';
}

/* environ with PGPASSWORD=password in place of any it has (caller frees
 * the vector; the entry it added is wiped and freed by env_free). */
static char **env_with(const char *password, char **added)
{
	size_t n = 0, k = 0;
	char **env;

	while (environ[n])
		n++;
	env = xcalloc(n + 2, sizeof(*env));
	for (size_t i = 0; i < n; i++)
		if (strncmp(environ[i], "PGPASSWORD=", 11) != 0)
			env[k++] = environ[i];
	*added = xasprintf("PGPASSWORD=%s", password);
	env[k++] = *added;
	env[k] = NULL;
	return env;
}

static void env_free(char **env, char *added)
{
	if (added) {
		explicit_bzero(added, strlen(added));
		free(added);
	}
	free(env);
}

int bk_pg_conninfo(const char *url, char **dbname_arg, char **password)
{
	const struct pgload *pq = pgload_get(); /* libpq on demand (pgload.h) */
	char *err = NULL;
	PQconninfoOption *opts;
	struct buf b = BUF_INIT;

	*dbname_arg = NULL;
	*password = NULL;
	if (!pq)
		return ota_error_set(OTA_ERROR, "%s", pgload_error());
	if (!(opts = pq->conninfo_parse(url, &err))) {
		/* libpq's message may quote the URL: not repeated here */
		if (err)
			pq->freemem(err);
		return ota_error_set(OTA_EINVAL, "not a PostgreSQL connection URL libpq can read");
	}
	buf_puts(&b, "--dbname=");
	for (PQconninfoOption *o = opts; o->keyword; o++) {
		if (!o->val || !*o->val)
			continue;
		if (!strcmp(o->keyword, "password")) {
			*password = xstrdup(o->val);
			continue;
		}
		buf_printf(&b, "%s%s='", b.len > 9 ? " " : "", o->keyword);
		for (const char *p = o->val; *p; p++) {
			if (*p == '\\' || *p == '\'')
				buf_putc(&b, '\\');
			buf_putc(&b, *p);
		}
		buf_putc(&b, '\'');
	}
	for (PQconninfoOption *o = opts; o->keyword; o++)
		if (o->val)
			explicit_bzero(o->val, strlen(o->val));
	pq->conninfo_free(opts);
	*dbname_arg = buf_detach(&b);
	return 0;
}

int bk_run(const char *const argv[])
{
	return bk_run_env(argv, NULL);
}

int bk_run_env(const char *const argv[], const char *password)
{
	posix_spawn_file_actions_t fa;
	char msg[ERR_CAP], *added = NULL, **env = password ? env_with(password, &added) : environ;
	int pipefd[2], status = 0, rc;
	pid_t pid;

	if (pipe2(pipefd, O_CLOEXEC) < 0) {
		if (password)
			env_free(env, added);
		return ota_error_set(OTA_ERROR, "cannot run %s: pipe: %s", argv[0], strerror(errno));
	}
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
	posix_spawn_file_actions_adddup2(&fa, pipefd[1], 2);
	posix_spawn_file_actions_addclosefrom_np(&fa, 3); /* no database, no listener */
	rc = posix_spawnp(&pid, argv[0], &fa, NULL, (char *const *)argv, env);
	posix_spawn_file_actions_destroy(&fa);
	if (password)
		env_free(env, added);
	close(pipefd[1]);
	if (rc != 0) {
		close(pipefd[0]);
		if (rc == ENOENT)
			return ota_error_set(OTA_ENOTFOUND,
					     "%s is not installed (Debian: apt-get install postgresql-client): otacd backs up "
					     "and restores a PostgreSQL database with pg_dump and pg_restore",
					     argv[0]);
		return ota_error_set(OTA_ERROR, "cannot run %s: %s", argv[0], strerror(rc));
	}
	read_errors(pipefd[0], msg, sizeof(msg));
	close(pipefd[0]);
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return ota_error_set(OTA_ERROR, "%s: waitpid: %s", argv[0], strerror(errno));
	if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
		return 0;
	if (WIFSIGNALED(status))
		return ota_error_set(OTA_ERROR, "%s was killed by signal %d: %s", argv[0], WTERMSIG(status), msg);
	return ota_error_set(OTA_ERROR, "%s failed (exit %d): %s", argv[0], WEXITSTATUS(status), msg);
}

int bk_pg_dump(struct db *snap, const char *url, const char *dst)
{
	struct db_stmt *st;
	char *snapshot = NULL, *snap_arg = NULL, *db_arg = NULL, *file_arg = NULL, *password = NULL;
	int rc;

	/* snap is in its REPEATABLE READ transaction (db_begin on a reader):
	 * pg_dump takes that snapshot, so its dump is the state snap reads */
	if (!(st = db_stmt(snap, "SELECT pg_export_snapshot()")))
		return OTA_ERROR;
	if ((rc = db_step(st)) != 1) {
		rc = ota_error_set(OTA_ERROR, "cannot export a snapshot for pg_dump: %s",
				   rc < 0 ? ota_error_last() : "no row");
		db_reset(st);
		return rc;
	}
	snapshot = xstrdup(db_column_text(st, 0));
	db_reset(st);
	snap_arg = xasprintf("--snapshot=%s", snapshot);
	file_arg = xasprintf("--file=%s", dst);
	if ((rc = bk_pg_conninfo(url, &db_arg, &password)) == 0) {
		const char *argv[] = { "pg_dump", "--format=custom", "--no-password", snap_arg, file_arg, db_arg, NULL };
		rc = bk_run_env(argv, password);
	}
	if (rc < 0)
		ota_error_prefix("backup of the PostgreSQL database");
	free(snapshot);
	free(snap_arg);
	free(db_arg);
	free(file_arg);
	if (password)
		explicit_bzero(password, strlen(password));
	free(password);
	return rc;
}

/* Tables, views, sequences in the connection's current schema. */
static int relations(struct db *db, int64_t *n)
{
	struct db_stmt *st = db_stmt(db, "SELECT COUNT(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n"
					 " ON n.oid = c.relnamespace WHERE n.nspname = current_schema()"
					 " AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')");
	int rc;

	if (!st)
		return OTA_ERROR;
	rc = db_step(st);
	*n = rc == 1 ? db_column_int64(st, 0) : 0;
	db_reset(st);
	return rc == 1 ? 0 : (rc < 0 ? rc : OTA_ERROR);
}

int bk_pg_target_empty(struct db *db, const char *shown)
{
	int64_t n = 0;
	int rc = relations(db, &n);

	if (rc < 0)
		return ota_error_set(rc, "%s: %s", shown, ota_error_last());
	if (n > 0)
		return ota_error_set(OTA_ECONFLICT,
				     "%s is not empty (%lld tables, views or sequences in its schema): restore only into a "
				     "new, empty database (createdb)",
				     shown, (long long)n);
	return 0;
}

int bk_pg_restore(const char *url, const char *dump)
{
	char *db_arg = NULL, *password = NULL;
	int rc = bk_pg_conninfo(url, &db_arg, &password);

	if (rc == 0) {
		const char *argv[] = { "pg_restore", "--single-transaction", "--exit-on-error", "--no-owner",
				       "--no-privileges", "--no-password", db_arg, dump, NULL };
		rc = bk_run_env(argv, password);
	}
	if (rc < 0)
		ota_error_prefix("restore of the PostgreSQL database");
	free(db_arg);
	if (password)
		explicit_bzero(password, strlen(password));
	free(password);
	return rc;
}

int bk_pg_undo(struct db *db)
{
	struct db_stmt *st = db_stmt(db, "SELECT string_agg(format('%I.%I', n.nspname, c.relname), ', ')"
					 " FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n"
					 " ON n.oid = c.relnamespace WHERE n.nspname = current_schema()"
					 " AND c.relkind IN ('r', 'p')");
	char *drop = NULL;
	int rc;

	if (!st)
		return OTA_ERROR;
	db_rollback(db); /* whatever failed may have left a transaction open */
	if ((rc = db_step(st)) == 1 && db_column_text(st, 0))
		drop = xasprintf("DROP TABLE %s CASCADE", db_column_text(st, 0));
	db_reset(st);
	if (rc < 0)
		return rc;
	rc = drop ? db_exec(db, drop) : 0;
	free(drop);
	return rc;
}

void bk_url_shown(const char *url, char *out, size_t cap)
{
	char *shown = db_url_redacted(url); /* the user part's password and password= */

	snprintf(out, cap, "%s", shown);
	free(shown);
}

int bk_is_pg_url(const char *url)
{
	return url && (!strncmp(url, "postgres://", 11) || !strncmp(url, "postgresql://", 13));
}
