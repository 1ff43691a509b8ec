/*
 * migrate.c - `otactl migrate --from sqlite:STATE/otacd.db --to postgres://...`:
 * an installation's history copied into PostgreSQL (docs/storage.md,
 * "Moving to PostgreSQL").  The same command moves the fleet database:
 * --from sqlite:STATE/fleet.db.  Which of the two a source is, and so
 * which migration list both sides follow, is read from its tables (the
 * fleet's has fleet_meta), not from its file name.
 *
 * otactl's first local command that writes: it talks to the two databases,
 * not to the daemon, because the daemon must be stopped.  It holds
 * STATE/otacd.lock (the lock otacd takes at start, orchestrator/main.c) for
 * the whole copy, so a running otacd is refused and none can start while
 * it runs.  The copy itself, its checks and its all-or-nothing transaction
 * are the storage layer's (orchestrator/db/db_copy.h); this file parses,
 * locks, reports progress on stderr and prints the summary.  Passwords in
 * the target URL are never printed.
 */
#include "../orchestrator/db/db.h"
#include "../orchestrator/db/db_copy.h"
#include "../orchestrator/fleet/fleet.h"
#include "../orchestrator/store.h"
#include "otactl.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

/* msg with every copy of url in it redacted (caller frees). */
static char *redact_in(const char *msg, const char *url, const char *shown)
{
	struct buf b = BUF_INIT;
	const char *p = msg, *hit;

	while ((hit = strstr(p, url))) {
		buf_put(&b, p, (size_t)(hit - p));
		buf_puts(&b, shown);
		p = hit + strlen(url);
	}
	buf_puts(&b, p);
	return buf_detach(&b);
}

/* Take STATE/otacd.lock as otacd does: -1 (said why) when an otacd holds it. */
static int lock_state_dir(const char *db_path, int *fd)
{
	char *dir = xstrdup(db_path), *slash = strrchr(dir, '/'), *path;

	if (slash)
		*slash = '\0';
	path = xasprintf("%s/otacd.lock", slash ? (*dir ? dir : "/") : ".");
	*fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (*fd < 0) {
		fprintf(stderr, "otactl: migrate: cannot open %s: %s\n", path, strerror(errno));
	} else if (flock(*fd, LOCK_EX | LOCK_NB) < 0) {
		if (errno == EWOULDBLOCK)
			fprintf(stderr,
				"otactl: migrate: %s is held: an otacd is running on %s; stop it first (migrate "
				"copies a database no one writes to); nothing was changed\n",
				path, slash ? dir : ".");
		else
			fprintf(stderr, "otactl: migrate: cannot lock %s: %s\n", path, strerror(errno));
		close(*fd);
		*fd = -1;
	}
	free(path);
	free(dir);
	return *fd < 0 ? -1 : 0;
}

static void progress(void *arg, const char *table, int64_t done, int64_t total)
{
	(void)arg;
	if (done == 0 && total > 0)
		fprintf(stderr, "otactl: migrate: %s: %" PRId64 " rows\n", table, total);
	else if (done < total)
		fprintf(stderr, "otactl: migrate: %s: %" PRId64 "/%" PRId64 " rows\n", table, done, total);
}

/* 1 when src is a fleet database (fleet_store.c's fleet_meta), 0 when
 * not (otacd.db), negative on a read error. */
static int is_fleet_db(struct db *src)
{
	struct db_stmt *st = NULL;
	int rc;

	if (db_prepare(src, &st, "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'fleet_meta'") < 0) {
		fprintf(stderr, "otactl: migrate: source: %s; nothing was changed\n", db_errmsg(src));
		return -1;
	}
	rc = db_step(st);
	if (rc == 1)
		rc = db_column_int64(st, 0) > 0;
	else
		fprintf(stderr, "otactl: migrate: source: %s; nothing was changed\n", db_errmsg(src));
	db_finalize(st);
	return rc < 0 ? -1 : rc;
}

static void print_summary(const struct db_copy_result *r, const char *from, const char *to_shown, int fleet)
{
	struct ctl_table t = { .ncols = 4, .state_col = -1 };

	if (ctl.json) {
		json_t *o = json_pack("{sssisIs[]}", "database", fleet ? "fleet" : "engine", "schema", r->schema, "rows",
				      (json_int_t)r->rows, "tables");
		json_t *arr = json_object_get(o, "tables");
		for (size_t i = 0; i < r->ntables; i++) {
			const struct db_copy_table *x = &r->tables[i];
			json_array_append_new(arr, json_pack("{sssIssso}", "name", x->name, "rows", (json_int_t)x->rows,
							     "sha256", x->sha256, "next_id",
							     x->next_id ? json_integer(x->next_id) : json_null()));
		}
		print_json(o);
		json_decref(o);
		return;
	}
	printf("copied %s (the %s database) into %s (schema %d)\n", from, fleet ? "fleet" : "engine", to_shown,
	       r->schema);
	ctl_table_row(&t, "TABLE", "ROWS", "NEXT ID", "SHA-256 (source = target)");
	for (size_t i = 0; i < r->ntables; i++) {
		const struct db_copy_table *x = &r->tables[i];
		char rows[24], next[24] = "";
		snprintf(rows, sizeof(rows), "%" PRId64, x->rows);
		if (x->next_id)
			snprintf(next, sizeof(next), "%" PRId64, x->next_id);
		ctl_table_row(&t, x->name, rows, next, x->sha256);
	}
	ctl_table_print(&t);
	printf("verified: %zu tables, %" PRId64 " rows; row counts and checksums equal on both sides\n", r->ntables,
	       r->rows);
}

/* Open url; on failure print why (password hidden) and return -1. */
static int open_db(struct db **out, const char *url, unsigned flags, const char *role)
{
	char *shown, *msg;

	if (db_open(out, url, flags) == 0)
		return 0;
	shown = db_url_redacted(url);
	msg = redact_in(ota_error_last(), url, shown);
	fprintf(stderr, "otactl: migrate: %s: %s; nothing was changed\n", role, msg);
	free(msg);
	free(shown);
	return -1;
}

int cmd_migrate(int argc, char **argv)
{
	const char *from = NULL, *to = NULL;
	struct db *src = NULL, *dst = NULL;
	struct db_copy_result res;
	struct db_copy_opts opts = { .progress = progress };
	char *to_shown = NULL;
	struct stat sb = { 0 };
	int lockfd = -1, rc = EXIT_FAIL, fleet = 0;

	for (int i = 1; i < argc; i++) {
		int r;
		if ((r = opt_value("--from", argc, argv, &i, &from)) == 0 &&
		    (r = opt_value("--to", argc, argv, &i, &to)) == 0)
			return usage_error("migrate", "unknown argument '%s'", argv[i]);
		if (r < 0)
			return usage_error("migrate", "%s needs a value", argv[i]);
	}
	if (!from || !to)
		return usage_error("migrate", "migrate needs --from sqlite:PATH and --to postgres://...");
	if (strncmp(from, "sqlite:", 7) != 0)
		return usage_error("migrate", "--from must be sqlite:PATH (STATE/otacd.db or STATE/fleet.db)");
	if (strncmp(to, "postgres://", 11) != 0 && strncmp(to, "postgresql://", 13) != 0)
		return usage_error("migrate", "--to must be a postgres:// or postgresql:// URL");
	if (stat(from + 7, &sb) < 0 || !S_ISREG(sb.st_mode)) {
		fprintf(stderr, "otactl: migrate: %s: no database there (%s)\n", from + 7,
			S_ISDIR(sb.st_mode) ? "a directory" : strerror(errno));
		return EXIT_FAIL;
	}
	if (lock_state_dir(from + 7, &lockfd) < 0)
		return EXIT_FAIL;
	to_shown = db_url_redacted(to);
	if (open_db(&src, from, DB_READONLY, "source") < 0 || open_db(&dst, to, 0, "target") < 0)
		goto out;
	if ((fleet = is_fleet_db(src)) < 0)
		goto out;
	opts.migrations = fleet ? fleet_store_migrations(&opts.nmigrations) : store_migrations(&opts.nmigrations);
	if (db_copy(&res, src, dst, &opts) < 0) {
		char *msg = redact_in(ota_error_last(), to, to_shown);
		fprintf(stderr, "otactl: migrate: %s\n", msg);
		free(msg);
		goto out;
	}
	print_summary(&res, from, to_shown, fleet);
	db_copy_result_release(&res);
	rc = EXIT_OK;
out:
	db_close(dst);
	db_close(src);
	free(to_shown);
	close(lockfd);
	return rc;
}
