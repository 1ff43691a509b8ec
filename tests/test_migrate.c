/*
 * test_migrate.c - `otactl migrate` moves a real installation into a real
 * PostgreSQL (docs/storage.md, "Moving to PostgreSQL").
 *
 * The state is made by the real otacd: a pipeline builds, signs a release
 * and starts its rollout (a 24 h hold), an agent is registered; then otacd
 * stops.  Each case runs the real otactl as a child process against a
 * cluster started in a temporary directory (pgcluster.h), each target a
 * database of its own, and checks the outcome by reading both databases
 * itself: every table's rows compared value by value (independently of
 * the checksums otactl computes), refusals that change nothing, identity
 * sequences past the copied ids, and a migrate SIGKILLed in the middle of
 * a big table leaving an empty target that a rerun fills.  db_copy() is
 * also called directly on a made-up schema for what otacd.db lacks: blobs,
 * NULLs, reals, foreign keys declared before their parent, and a value
 * that cannot be copied exactly.  The fleet database (fleet.db, with the
 * devices the installation registered) is a second migrate into a
 * database of its own, refused the same ways: a running otacd, a filled
 * target, a source newer than this otactl.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <fcntl.h>
#include <math.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../common/util.h"
#include "../orchestrator/db/db.h"
#include "../orchestrator/db/db_copy.h"
#include "../orchestrator/fleet/fleet.h"
#include "../orchestrator/store.h"
#include "harness.h"
#include "pgcluster.h"

static struct pgcluster g_pg;
static int g_pg_up;
static struct daemon g_d;
static char *g_db;  /* STATE/otacd.db */
static char *g_from; /* sqlite:STATE/otacd.db */
static char *g_fleet_db;   /* STATE/fleet.db */
static char *g_fleet_from; /* sqlite:STATE/fleet.db */

/* ---- PostgreSQL databases --------------------------------------------------- */

/* The cluster's URL for database name (caller frees). */
static char *pg_url(const char *name, const char *extra)
{
	const char *q = strstr(g_pg.url, "/postgres?");
	assert_non_null(q);
	return xasprintf("%.*s/%s?%s%s", (int)(q - g_pg.url), g_pg.url, name, q + 10, extra ? extra : "");
}

/* A new, empty database; its URL (caller frees). */
static char *pg_new_db(const char *name)
{
	struct db *db;
	char *sql = xasprintf("CREATE DATABASE %s", name);

	if (db_open(&db, g_pg.url, 0) < 0)
		fail_msg("open %s: %s", g_pg.url, ota_error_last());
	if (db_exec(db, sql) < 0)
		fail_msg("%s: %s", sql, db_errmsg(db));
	db_close(db);
	free(sql);
	return pg_url(name, NULL);
}

static struct db *open_url(const char *url, unsigned flags)
{
	struct db *db;
	if (db_open(&db, url, flags) < 0)
		fail_msg("open %s: %s", url, ota_error_last());
	return db;
}

static int64_t q_int(struct db *db, const char *fmt, ...) OTA_PRINTF(2, 3);
static int64_t q_int(struct db *db, const char *fmt, ...)
{
	struct db_stmt *st;
	struct buf sql = BUF_INIT;
	va_list ap;
	int64_t v;

	va_start(ap, fmt);
	buf_vprintf(&sql, fmt, ap);
	va_end(ap);
	if (db_prepare(db, &st, buf_cstr(&sql)) < 0)
		fail_msg("%s: %s", buf_cstr(&sql), db_errmsg(db));
	if (db_step(st) != 1)
		fail_msg("%s: %s", buf_cstr(&sql), db_errmsg(db));
	v = db_column_int64(st, 0);
	db_finalize(st);
	buf_release(&sql);
	return v;
}

/* The source's tables (SQLite's own aside), in creation order. */
static void source_tables(const char *db_path, struct strvec *out)
{
	char *url = xasprintf("sqlite:%s", db_path);
	struct db *db = open_url(url, DB_READONLY);
	struct db_stmt *st;

	assert_int_equal(db_prepare(db, &st, "SELECT name FROM sqlite_master WHERE type = 'table' "
					     "AND name NOT LIKE 'sqlite_%' ORDER BY name"), 0);
	while (db_step(st) == 1)
		strvec_push(out, db_column_text(st, 0));
	db_finalize(st);
	db_close(db);
	free(url);
}

/* Every row of table on both sides, value by value, in the source's
 * primary-key order (text compared as bytes: COLLATE "C" on PostgreSQL). */
static void assert_same_rows(struct db *a, struct db *b, const char *table)
{
	struct db_stmt *cols, *sa, *sb;
	struct buf order = BUF_INIT, qa = BUF_INIT, qb = BUF_INIT;
	int ra, rb;
	int64_t n = 0;

	/* the primary key's columns in key order; all columns when there is none */
	assert_int_equal(db_prepare(a, &cols, "SELECT name, type FROM pragma_table_info(?1) WHERE pk > 0 OR NOT EXISTS "
					      "(SELECT 1 FROM pragma_table_info(?1) WHERE pk > 0) ORDER BY pk, cid"), 0);
	db_bind_text(cols, 1, table);
	while (db_step(cols) == 1) {
		int text = strstr(db_column_text(cols, 1), "TEXT") != NULL;
		buf_printf(&order, "%s\"%s\"%s", order.len ? ", " : "", db_column_text(cols, 0), text ? "\x01" : "");
	}
	db_finalize(cols);
	/* \x01 marks where each side's collation goes */
	for (const char *p = buf_cstr(&order); *p; p++) {
		if (*p == '\x01') {
			buf_puts(&qa, " COLLATE BINARY");
			buf_puts(&qb, " COLLATE \"C\"");
		} else {
			buf_putc(&qa, *p);
			buf_putc(&qb, *p);
		}
	}
	{
		char *sql_a = xasprintf("SELECT * FROM \"%s\" ORDER BY %s", table, buf_cstr(&qa));
		char *sql_b = xasprintf("SELECT * FROM \"%s\" ORDER BY %s", table, buf_cstr(&qb));
		if (db_prepare(a, &sa, sql_a) < 0 || db_prepare(b, &sb, sql_b) < 0)
			fail_msg("%s: %s / %s", table, db_errmsg(a), db_errmsg(b));
		free(sql_a);
		free(sql_b);
	}
	while ((ra = db_step(sa)) == 1) {
		rb = db_step(sb);
		if (rb != 1)
			fail_msg("%s: the target has fewer rows (%lld)", table, (long long)n);
		assert_int_equal(db_column_count(sa), db_column_count(sb));
		for (int c = 0; c < db_column_count(sa); c++) {
			enum db_type ta = db_column_type(sa, c), tb = db_column_type(sb, c);
			if (ta != tb)
				fail_msg("%s row %lld column %d: type %d vs %d", table, (long long)n, c, ta, tb);
			if (ta == DB_INTEGER)
				assert_int_equal(db_column_int64(sa, c), db_column_int64(sb, c));
			else if (ta == DB_FLOAT)
				assert_true(db_column_double(sa, c) == db_column_double(sb, c));
			else if (ta == DB_TEXT)
				assert_string_equal(db_column_text(sa, c), db_column_text(sb, c));
			else if (ta == DB_BLOB) {
				size_t la, lb;
				const void *pa = db_column_blob(sa, c, &la), *pb = db_column_blob(sb, c, &lb);
				assert_int_equal(la, lb);
				assert_memory_equal(pa, pb, la);
			}
		}
		n++;
	}
	assert_int_equal(ra, 0);
	assert_int_equal(db_step(sb), 0);
	db_finalize(sa);
	db_finalize(sb);
	buf_release(&order);
	buf_release(&qa);
	buf_release(&qb);
}

/* Rows of every source table (schema_migrations aside) on url: 0 when
 * the tables are absent or empty. */
static int64_t target_rows(const char *url, const struct strvec *tables)
{
	struct db *db = open_url(url, DB_READONLY);
	int64_t n = 0;

	for (size_t i = 0; i < tables->n; i++) {
		if (!strcmp(tables->v[i], "schema_migrations"))
			continue;
		if (q_int(db, "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'public' "
			      "AND table_name = '%s'", tables->v[i]))
			n += q_int(db, "SELECT COUNT(*) FROM \"%s\"", tables->v[i]);
	}
	db_close(db);
	return n;
}

static int64_t target_tables(const char *url)
{
	struct db *db = open_url(url, DB_READONLY);
	int64_t n = q_int(db, "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'public'");
	db_close(db);
	return n;
}

/* ---- otactl ------------------------------------------------------------------ */

/* otactl migrate --from FROM --to TO [EXTRA]; stdout in out, stderr in
 * err; the exit status. */
static int migrate_from(struct buf *out, struct buf *err, const char *from, const char *to, const char *extra)
{
	char *bin = h_bin("otactl"), *errf = xasprintf("%s/migrate.err", g_d.dir);
	struct timespec t0, t1;
	int rc;

	buf_clear(out);
	buf_release(err); /* ota_read_file() starts it afresh */
	clock_gettime(CLOCK_MONOTONIC, &t0);
	rc = h_sh(out, "(%s %s migrate --from '%s' --to '%s' 2>'%s')", bin, extra ? extra : "", from, to, errf);
	assert_int_equal(ota_read_file(err, errf, 1 << 20), 0);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	if (getenv("MIGRATE_VERBOSE")) /* what an operator sees, and how long it took */
		fprintf(stderr, "--- otactl migrate --to %s: exit %d in %ld ms\n%s%s", to, rc,
			(long)((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000), buf_cstr(out),
			buf_cstr(err));
	free(bin);
	free(errf);
	return rc;
}

static int migrate(struct buf *out, struct buf *err, const char *to, const char *extra)
{
	return migrate_from(out, err, g_from, to, extra);
}

/* ---- the installation -------------------------------------------------------- */

static char *release_pipeline(void)
{
	return xstrdup("name: fw\nstages:\n"
		       "  - name: build\n    matrix: { board: [mps2-an385, mps2-an386] }\n"
		       "    steps: [ { run: \"printf 'fw %s' '${{ matrix.board }}' > app.bin && head -c 2000 /dev/zero >> app.bin\" } ]\n"
		       "    artifacts: [ { path: app.bin, name: 'app-${{ matrix.board }}.bin', type: application,"
		       " hardware: '${{ matrix.board }}' } ]\n"
		       "  - { name: release, kind: release, needs: [build], version: \"1.0.0\", security_counter: 1, key: test }\n"
		       "  - name: canary\n    kind: rollout\n    needs: [release]\n"
		       "    steps: [ {percent: 1, hold: 24h}, {percent: 100, hold: 24h} ]\n"
		       "    gates: [boots]\n"
		       "gates:\n  boots: { metric: boot_success_rate, min: 0.8, min_devices: 10 }\n");
}

static void wait_sql(const char *sql, int timeout_ms)
{
	for (int waited = 0; !h_sql_int(&g_d, sql); waited += 200) {
		if (waited > timeout_ms)
			fail_msg("timed out waiting for: %s", sql);
		h_msleep(200);
	}
}

/* otacd runs a pipeline to a signed release and a rollout in its first
 * hold, an agent is registered, then otacd stops. */
static int make_installation(void **state)
{
	const char *const args[] = { "--local-agents", "2", "--time-scale", "1", NULL };
	struct buf out = BUF_INIT;
	char *cfg, *y, *tok;

	(void)state;
	if (pgcluster_start(&g_pg, 0) == 1) {
		fprintf(stderr, "test_migrate: PostgreSQL's binaries are not installed: skipped\n");
		return 0;
	}
	g_pg_up = 1;
	h_init(&g_d, NULL);
	assert_int_equal(h_sh(&out, "cd %s && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out key.pem",
			      g_d.dir), 0);
	cfg = xasprintf("keys:\n  test: { spec: %s/key.pem }\n", g_d.dir);
	g_d.config = xasprintf("%s/config.yml", g_d.dir);
	assert_int_equal(ota_write_file_atomic(g_d.config, cfg, strlen(cfg), 0600), 0);
	assert_int_equal(h_start(&g_d, args), 0);
	y = release_pipeline();
	h_trigger(&g_d, y);
	/* generous: two small builds and a signature, under ASan on a loaded machine */
	wait_sql("SELECT COUNT(*) FROM releases", 300000);
	wait_sql("SELECT COUNT(*) FROM rollouts WHERE hold_until IS NOT NULL", 300000);
	tok = h_agent_add(&g_d, "rig-1", "hil,board=mps2-an385");
	assert_non_null(tok);
	{
		char **creds = h_register_devices(&g_d, "mig", 3); /* the fleet database's registry */
		for (int i = 0; i < 3; i++)
			free(creds[i]);
		free(creds);
	}
	h_kill(&g_d, SIGTERM);
	g_db = xasprintf("%s/state/otacd.db", g_d.dir);
	g_from = xasprintf("sqlite:%s", g_db);
	g_fleet_db = xasprintf("%s/state/fleet.db", g_d.dir);
	g_fleet_from = xasprintf("sqlite:%s", g_fleet_db);
	free(tok);
	free(y);
	free(cfg);
	buf_release(&out);
	return 0;
}

static int drop_installation(void **state)
{
	(void)state;
	if (g_pg_up) {
		h_cleanup(&g_d);
		pgcluster_stop(&g_pg);
	}
	free(g_db);
	free(g_from);
	free(g_fleet_db);
	free(g_fleet_from);
	return 0;
}

static void need_pg(void)
{
	if (!g_pg_up)
		skip();
}

static char *file_sha(const char *path)
{
	struct buf b = BUF_INIT;
	char *hex = xmalloc(65);
	assert_int_equal(ota_read_file(&b, path, (size_t)1 << 30), 0);
	ota_sha256_hex(b.ptr, b.len, hex);
	buf_release(&b);
	return hex;
}

/* ---- cases ------------------------------------------------------------------- */

static void a_wrong_or_unreachable_target_is_a_clear_error_and_changes_nothing(void **state)
{
	struct buf out = BUF_INIT, err = BUF_INIT;
	char *before, *after, *nodb = pg_url("nosuchdb", NULL);
	char *unreachable = xstrdup("postgresql://otacd:sekret@/postgres?host=/nonexistent-otacd-dir&port=5");

	(void)state;
	need_pg();
	before = file_sha(g_db);
	/* a database that does not exist */
	assert_int_equal(migrate(&out, &err, nodb, NULL), 1);
	assert_non_null(strstr(buf_cstr(&err), "target"));
	assert_non_null(strstr(buf_cstr(&err), "does not exist"));
	assert_non_null(strstr(buf_cstr(&err), "nothing was changed"));
	/* no server there; the password is never printed */
	assert_int_equal(migrate(&out, &err, unreachable, NULL), 1);
	assert_non_null(strstr(buf_cstr(&err), "cannot open database"));
	assert_null(strstr(buf_cstr(&err), "sekret"));
	assert_non_null(strstr(buf_cstr(&err), "otacd:***@"));
	/* not a PostgreSQL URL: a usage error */
	assert_int_equal(migrate(&out, &err, "mysql://localhost/otacd", NULL), 2);
	assert_non_null(strstr(buf_cstr(&err), "--to must be a postgres://"));
	/* a source that is not there */
	{
		char *bin = h_bin("otactl");
		assert_int_equal(h_sh(&out, "%s migrate --from sqlite:%s/none.db --to '%s'", bin, g_d.dir, nodb), 1);
		assert_non_null(strstr(buf_cstr(&out), "no database there"));
		free(bin);
	}
	after = file_sha(g_db);
	assert_string_equal(before, after);
	free(before);
	free(after);
	free(nodb);
	free(unreachable);
	buf_release(&out);
	buf_release(&err);
}

static void a_running_otacd_is_refused_and_the_target_is_left_alone(void **state)
{
	const char *const args[] = { "--local-agents", "0", "--time-scale", "1", NULL };
	struct buf out = BUF_INIT, err = BUF_INIT;
	char *url = pg_new_db("t_running");

	(void)state;
	need_pg();
	assert_int_equal(h_start(&g_d, args), 0);
	assert_int_equal(migrate(&out, &err, url, NULL), 1);
	h_kill(&g_d, SIGTERM);
	assert_non_null(strstr(buf_cstr(&err), "an otacd is running on"));
	assert_non_null(strstr(buf_cstr(&err), "stop it first"));
	assert_int_equal(target_tables(url), 0);
	free(url);
	buf_release(&out);
	buf_release(&err);
}

static json_t *table_of(json_t *summary, const char *name)
{
	json_t *t;
	size_t i;
	json_array_foreach(json_object_get(summary, "tables"), i, t)
		if (!strcmp(json_string_value(json_object_get(t, "name")), name))
			return t;
	return NULL;
}

static void every_table_is_copied_row_for_row_and_verified(void **state)
{
	struct buf out = BUF_INIT, err = BUF_INIT;
	struct strvec tables = STRVEC_INIT;
	char *url = pg_new_db("t1");
	struct db *a, *b;
	json_t *sum;
	int64_t total = 0;
	static const char *const busy[] = { "runs", "stages", "jobs", "job_attempts", "artifacts", "releases",
					    "rollouts", "audit", "events", "agents", "meta", "schema_migrations" };

	(void)state;
	need_pg();
	assert_int_equal(migrate(&out, &err, url, "--json"), 0);
	sum = json_loads(buf_cstr(&out), 0, NULL);
	if (!sum)
		fail_msg("not JSON: %s\nstderr: %s", buf_cstr(&out), buf_cstr(&err));
	source_tables(g_db, &tables);
	assert_int_equal(json_array_size(json_object_get(sum, "tables")), tables.n);
	assert_int_equal(json_integer_value(json_object_get(sum, "schema")), store_schema_latest());
	a = open_url(g_from, DB_READONLY);
	b = open_url(url, DB_READONLY);
	for (size_t i = 0; i < tables.n; i++) {
		json_t *t = table_of(sum, tables.v[i]);
		int64_t n = q_int(a, "SELECT COUNT(*) FROM \"%s\"", tables.v[i]);
		if (!t)
			fail_msg("table %s is not in the summary", tables.v[i]);
		assert_int_equal(json_integer_value(json_object_get(t, "rows")), n);
		assert_int_equal(q_int(b, "SELECT COUNT(*) FROM \"%s\"", tables.v[i]), n);
		assert_int_equal(strlen(json_string_value(json_object_get(t, "sha256"))), 64);
		assert_same_rows(a, b, tables.v[i]);
		total += n;
	}
	assert_int_equal(json_integer_value(json_object_get(sum, "rows")), total);
	/* the installation did fill these */
	for (size_t i = 0; i < OTA_ARRAY_SIZE(busy); i++)
		if (json_integer_value(json_object_get(table_of(sum, busy[i]), "rows")) < 1)
			fail_msg("table %s has no rows: the installation is too thin", busy[i]);
	/* foreign-key order: each table after the ones it references */
	{
		json_t *arr = json_object_get(sum, "tables");
		size_t runs = 0, jobs = 0, releases = 0, rollouts = 0, k;
		json_t *t;
		json_array_foreach(arr, k, t) {
			const char *n = json_string_value(json_object_get(t, "name"));
			if (!strcmp(n, "runs")) runs = k;
			if (!strcmp(n, "jobs")) jobs = k;
			if (!strcmp(n, "releases")) releases = k;
			if (!strcmp(n, "rollouts")) rollouts = k;
		}
		assert_true(runs < jobs && jobs < rollouts && releases < rollouts && runs < releases);
	}
	db_close(a);
	db_close(b);
	json_decref(sum);
	strvec_clear(&tables);
	free(url);
	buf_release(&out);
	buf_release(&err);
}

static void a_second_migrate_into_the_filled_target_is_refused_and_changes_nothing(void **state)
{
	struct buf out = BUF_INIT, err = BUF_INIT;
	struct strvec tables = STRVEC_INIT;
	char *url = pg_url("t1", NULL);
	struct db *a, *b;

	(void)state;
	need_pg();
	assert_int_equal(migrate(&out, &err, url, NULL), 1);
	assert_non_null(strstr(buf_cstr(&err), "the target already has rows"));
	assert_non_null(strstr(buf_cstr(&err), "does not merge; nothing was changed"));
	assert_non_null(strstr(buf_cstr(&err), "runs"));
	/* the target still holds exactly the first copy */
	source_tables(g_db, &tables);
	a = open_url(g_from, DB_READONLY);
	b = open_url(url, DB_READONLY);
	for (size_t i = 0; i < tables.n; i++)
		assert_same_rows(a, b, tables.v[i]);
	db_close(a);
	db_close(b);
	strvec_clear(&tables);
	free(url);
	buf_release(&out);
	buf_release(&err);
}

static void an_identity_insert_after_the_copy_gets_an_id_past_the_copied_ones(void **state)
{
	char *url = pg_url("t1", NULL);
	struct db *a, *b;
	int64_t max_events, max_audit, id;

	(void)state;
	need_pg();
	a = open_url(g_from, DB_READONLY);
	b = open_url(url, 0);
	max_events = q_int(a, "SELECT MAX(id) FROM events");
	max_audit = q_int(a, "SELECT MAX(id) FROM audit");
	assert_true(max_events > 1);
	id = q_int(b, "INSERT INTO events(at, kind) VALUES (1, 'after-migrate') RETURNING id");
	assert_int_equal(id, max_events + 1);
	id = q_int(b, "INSERT INTO audit(at, actor, action) VALUES (1, 'test', 'after-migrate') RETURNING id");
	assert_int_equal(id, max_audit + 1);
	db_close(a);
	db_close(b);
	free(url);
}

/* Lots of events, so the copy of that table takes a while. */
static void add_events(int n)
{
	struct db *db = open_url(g_from, 0);
	struct db_stmt *st;

	assert_int_equal(db_begin(db), 0);
	assert_int_equal(db_prepare(db, &st, "INSERT INTO events(at, kind, detail) VALUES (?, 'bulk', ?)"), 0);
	for (int i = 0; i < n; i++) {
		char detail[64];
		snprintf(detail, sizeof(detail), "bulk event %d: \"quoted\" \xc3\xa9", i);
		db_bind_int64(st, 1, 1700000000000LL + i);
		db_bind_text(st, 2, detail);
		assert_int_equal(db_run(st), 0);
	}
	db_finalize(st);
	assert_int_equal(db_commit(db), 0);
	db_close(db);
}

/* Wait until file holds needle (up to timeout); 1 when it does. */
static int file_has(const char *path, const char *needle, int timeout_ms)
{
	struct buf b = BUF_INIT;
	int found = 0;
	for (int waited = 0; !found && waited <= timeout_ms; waited += 20) {
		buf_release(&b); /* ota_read_file() starts it afresh */
		if (ota_read_file(&b, path, 1 << 20) == 0 && strstr(buf_cstr(&b), needle))
			found = 1;
		else
			h_msleep(20);
	}
	buf_release(&b);
	return found;
}

/* The migrate's connection (by application_name) is inside a transaction. */
static int64_t migrate_in_transaction(const char *app)
{
	struct db *db = open_url(g_pg.url, DB_READONLY);
	int64_t n = q_int(db, "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = '%s' "
			      "AND xact_start IS NOT NULL", app);
	db_close(db);
	return n;
}

static void a_migrate_killed_mid_copy_leaves_the_target_empty_and_a_rerun_succeeds(void **state)
{
	struct buf out = BUF_INIT, err = BUF_INIT;
	struct strvec tables = STRVEC_INIT;
	char *bin = h_bin("otactl"), *errf = xasprintf("%s/kill.err", g_d.dir);
	char *url = NULL;
	int killed_mid_copy = 0;

	(void)state;
	need_pg();
	add_events(60000);
	source_tables(g_db, &tables);
	/* SIGSTOP, then check that its transaction is open, then SIGKILL: the
	 * kill lands inside the copy however loaded the machine is; should
	 * the copy have finished first, try again on a new database */
	for (int attempt = 0; attempt < 3 && !killed_mid_copy; attempt++) {
		char name[32], app[48];
		pid_t pid;
		int status;

		snprintf(name, sizeof(name), "t_kill%d", attempt);
		snprintf(app, sizeof(app), "otactl-migrate-kill%d", attempt);
		free(url);
		url = pg_new_db(name);
		{
			char *to = pg_url(name, "&application_name=");
			char *to_app = xasprintf("%s%s", to, app);
			unlink(errf);
			pid = fork();
			if (pid == 0) {
				int fd = open(errf, O_WRONLY | O_CREAT | O_TRUNC, 0600);
				h_child_dies_with_test();
				dup2(fd, 2);
				execl(bin, bin, "migrate", "--from", g_from, "--to", to_app, (char *)NULL);
				_exit(127);
			}
			free(to);
			free(to_app);
		}
		if (!file_has(errf, "events: 10000/", 300000))
			fail_msg("migrate never reported its progress on events");
		kill(pid, SIGSTOP);
		killed_mid_copy = migrate_in_transaction(app) == 1;
		kill(pid, SIGKILL);
		assert_int_equal(waitpid(pid, &status, 0), pid);
		if (killed_mid_copy) /* (a copy that had ended exited by itself) */
			assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
		if (!killed_mid_copy)
			fprintf(stderr, "test_migrate: the copy ended before the kill: trying again\n");
	}
	assert_true(killed_mid_copy);
	/* one transaction: nothing of it is there */
	assert_int_equal(target_rows(url, &tables), 0);
	/* the rerun copies everything (the lock of the killed one went with it) */
	assert_int_equal(migrate(&out, &err, url, NULL), 0);
	assert_non_null(strstr(buf_cstr(&out), "verified: "));
	assert_non_null(strstr(buf_cstr(&out), "row counts and checksums equal on both sides"));
	{
		struct db *a = open_url(g_from, DB_READONLY), *b = open_url(url, DB_READONLY);
		int64_t n = q_int(a, "SELECT COUNT(*) FROM events");
		char line[64];
		assert_true(n > 60000);
		assert_int_equal(q_int(b, "SELECT COUNT(*) FROM events"), n);
		snprintf(line, sizeof(line), "events ");
		assert_non_null(strstr(buf_cstr(&out), line));
		assert_same_rows(a, b, "events");
		db_close(a);
		db_close(b);
	}
	strvec_clear(&tables);
	free(url);
	free(bin);
	free(errf);
	buf_release(&out);
	buf_release(&err);
}

/* ---- db_copy() on a made-up schema -------------------------------------------- */

/* Blobs with zero bytes, NULLs, reals, text keys, a foreign key. */
static const char *const toy_migrations[] = {
	"CREATE TABLE parent (key TEXT PRIMARY KEY, n INTEGER, ratio REAL);"
	"CREATE TABLE child (id INTEGER PRIMARY KEY, parent_key TEXT NOT NULL REFERENCES parent(key),"
	"  weight REAL, payload BLOB, note TEXT);",
	"CREATE TABLE pairs (a INTEGER NOT NULL, b TEXT NOT NULL, v BLOB, PRIMARY KEY (a, b));",
};

static char *toy_source(int bad)
{
	static int seq;
	char *path = xasprintf("%s/toy%d.db", g_d.dir, ++seq), *url = xasprintf("sqlite:%s", path);
	struct db *db = open_url(url, 0);
	struct db_stmt *st;
	static const unsigned char bytes[] = { 0, 1, 2, 0, 255, 0 };

	assert_int_equal(db_migrate(db, toy_migrations, OTA_ARRAY_SIZE(toy_migrations)), 0);
	assert_int_equal(db_exec(db, "INSERT INTO parent VALUES ('b', 2, 0.1), ('A', NULL, -1e300), ('a', 9007199254740993, NULL);"
				     "INSERT INTO pairs VALUES (1, 'x', NULL), (1, 'X', x'00ff'), (-5, '', x'');"),
			 0);
	assert_int_equal(db_prepare(db, &st, "INSERT INTO child(id, parent_key, weight, payload, note) VALUES (?, ?, ?, ?, ?)"), 0);
	for (int i = 1; i <= 50; i++) {
		db_bind_int64(st, 1, i * 7);
		db_bind_text(st, 2, i % 2 ? "a" : "b");
		if (i % 5)
			db_bind_double(st, 3, 1.0 / i);
		else
			db_bind_null(st, 3);
		db_bind_blob(st, 4, bytes, (size_t)(i % 7));
		db_bind_text(st, 5, i % 3 ? "it's \"fine\"\nline two \xe2\x9c\x93" : NULL);
		assert_int_equal(db_run(st), 0);
	}
	db_finalize(st);
	if (bad) /* SQLite keeps text it cannot convert in an INTEGER column */
		assert_int_equal(db_exec(db, "INSERT INTO parent VALUES ('zz', 'twelve', 1.5)"), 0);
	db_close(db);
	free(path);
	return url;
}

static void db_copy_converts_every_type_in_foreign_key_order(void **state)
{
	struct db_copy_opts o = { toy_migrations, OTA_ARRAY_SIZE(toy_migrations), NULL, NULL };
	char *from, *to;
	struct db *src, *dst;
	struct db_copy_result r;
	static const char *const toy_tables[] = { "parent", "child", "pairs", "schema_migrations" };

	(void)state;
	need_pg();
	from = toy_source(0);
	to = pg_new_db("t_toy");
	src = open_url(from, DB_READONLY);
	dst = open_url(to, 0);
	if (db_copy(&r, src, dst, &o) < 0)
		fail_msg("db_copy: %s", ota_error_last());
	assert_int_equal(r.ntables, 4);
	assert_int_equal(r.schema, 2);
	assert_string_equal(r.tables[0].name, "schema_migrations");
	assert_string_equal(r.tables[1].name, "parent"); /* before the child that references it */
	assert_string_equal(r.tables[2].name, "child");
	assert_int_equal(r.tables[2].rows, 50);
	assert_int_equal(r.tables[2].next_id, 351);
	assert_int_equal(r.tables[1].next_id, 0); /* a text key: no identity */
	assert_int_equal(r.rows, 2 + 3 + 50 + 3);
	for (size_t i = 0; i < OTA_ARRAY_SIZE(toy_tables); i++)
		assert_same_rows(src, dst, toy_tables[i]);
	/* 2^53 + 1 is an exact integer on both sides */
	assert_int_equal(q_int(dst, "SELECT n FROM parent WHERE key = 'a'"), 9007199254740993LL);
	db_copy_result_release(&r);
	db_close(src);
	db_close(dst);
	free(from);
	free(to);
}

static void a_value_that_cannot_be_copied_exactly_is_named_and_nothing_is_kept(void **state)
{
	struct db_copy_opts o = { toy_migrations, OTA_ARRAY_SIZE(toy_migrations), NULL, NULL };
	char *from, *to;
	struct db *src, *dst;
	struct db_copy_result r;
	const char *msg;

	(void)state;
	need_pg();
	from = toy_source(1);
	to = pg_new_db("t_toybad");
	src = open_url(from, DB_READONLY);
	dst = open_url(to, 0);
	assert_true(db_copy(&r, src, dst, &o) < 0);
	msg = ota_error_last();
	assert_non_null(strstr(msg, "table parent, row (key=zz), column n (INTEGER): a text cannot be copied exactly"));
	assert_int_equal(q_int(dst, "SELECT COUNT(*) FROM parent"), 0);
	assert_int_equal(q_int(dst, "SELECT COUNT(*) FROM child"), 0);
	db_close(src);
	db_close(dst);
	free(from);
	free(to);
}

/* ---- the fleet database ------------------------------------------------------ */

static void the_fleet_database_is_a_second_migrate_into_its_own_database(void **state)
{
	struct buf out = BUF_INIT, err = BUF_INIT;
	struct strvec tables = STRVEC_INIT;
	char *url = pg_new_db("fleet1");
	struct db *a, *b;
	json_t *sum;
	size_t nmig;

	(void)state;
	need_pg();
	fleet_store_migrations(&nmig);
	if (migrate_from(&out, &err, g_fleet_from, url, "--json") != 0)
		fail_msg("migrate fleet.db: %s", buf_cstr(&err));
	sum = json_loads(buf_cstr(&out), 0, NULL);
	if (!sum)
		fail_msg("not JSON: %s\nstderr: %s", buf_cstr(&out), buf_cstr(&err));
	assert_string_equal(json_string_value(json_object_get(sum, "database")), "fleet");
	assert_int_equal(json_integer_value(json_object_get(sum, "schema")), (int64_t)nmig);
	source_tables(g_fleet_db, &tables);
	assert_int_equal(json_array_size(json_object_get(sum, "tables")), tables.n);
	a = open_url(g_fleet_from, DB_READONLY);
	b = open_url(url, DB_READONLY);
	for (size_t i = 0; i < tables.n; i++)
		assert_same_rows(a, b, tables.v[i]);
	assert_int_equal(q_int(b, "SELECT COUNT(*) FROM registered"), 3);
	assert_true(q_int(b, "SELECT COUNT(*) FROM registrations") >= 1);
	/* the audit trail's identity goes on past the copied ids */
	db_close(b);
	b = open_url(url, 0);
	assert_int_equal(db_exec(b, "INSERT INTO registrations(at, count, first, last, peer) VALUES (1, 1, 'x', 'x', 'lo')"),
			 0);
	assert_int_equal(q_int(b, "SELECT MAX(id) FROM registrations"), q_int(a, "SELECT MAX(id) FROM registrations") + 1);
	db_close(a);
	db_close(b);

	/* a second migrate into the filled target is refused */
	assert_int_equal(migrate_from(&out, &err, g_fleet_from, url, NULL), 1);
	assert_non_null(strstr(buf_cstr(&err), "the target already has rows"));
	assert_non_null(strstr(buf_cstr(&err), "registered"));
	{ /* the text summary names which database it copied */
		char *url2 = pg_new_db("fleet2");
		assert_int_equal(migrate_from(&out, &err, g_fleet_from, url2, NULL), 0);
		assert_non_null(strstr(buf_cstr(&out), "(the fleet database)"));
		assert_non_null(strstr(buf_cstr(&out), "verified:"));
		free(url2);
	}
	json_decref(sum);
	strvec_clear(&tables);
	free(url);
	buf_release(&out);
	buf_release(&err);
}

static void a_fleet_migrate_is_refused_while_otacd_runs_or_from_a_newer_fleet_database(void **state)
{
	const char *const args[] = { "--local-agents", "0", "--time-scale", "1", NULL };
	struct buf out = BUF_INIT, err = BUF_INIT;
	char *url = pg_new_db("fleet_refused"), *dir, *copy, *copy_url;
	struct db *db;

	(void)state;
	need_pg();
	/* a running otacd */
	assert_int_equal(h_start(&g_d, args), 0);
	assert_int_equal(migrate_from(&out, &err, g_fleet_from, url, NULL), 1);
	h_kill(&g_d, SIGTERM);
	assert_non_null(strstr(buf_cstr(&err), "an otacd is running on"));
	assert_int_equal(target_tables(url), 0);

	/* a fleet.db written by a newer otacd (one more migration applied) */
	dir = xasprintf("%s/newer", g_d.dir);
	copy = xasprintf("%s/fleet.db", dir);
	copy_url = xasprintf("sqlite:%s", copy);
	assert_int_equal(h_sh(&out, "mkdir -p '%s' && cp '%s' '%s'", dir, g_fleet_db, copy), 0);
	db = open_url(copy_url, 0);
	assert_int_equal(db_exec(db, "INSERT INTO schema_migrations(version, applied_at) VALUES (99, 1)"), 0);
	db_close(db);
	assert_int_equal(migrate_from(&out, &err, copy_url, url, NULL), 1);
	assert_non_null(strstr(buf_cstr(&err), "schema version 99"));
	assert_non_null(strstr(buf_cstr(&err), "migrate with the version that wrote it"));
	assert_int_equal(target_tables(url), 0);
	free(copy_url);
	free(copy);
	free(dir);
	free(url);
	buf_release(&out);
	buf_release(&err);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(a_wrong_or_unreachable_target_is_a_clear_error_and_changes_nothing),
		cmocka_unit_test(a_running_otacd_is_refused_and_the_target_is_left_alone),
		cmocka_unit_test(every_table_is_copied_row_for_row_and_verified),
		cmocka_unit_test(a_second_migrate_into_the_filled_target_is_refused_and_changes_nothing),
		cmocka_unit_test(an_identity_insert_after_the_copy_gets_an_id_past_the_copied_ones),
		cmocka_unit_test(db_copy_converts_every_type_in_foreign_key_order),
		cmocka_unit_test(a_value_that_cannot_be_copied_exactly_is_named_and_nothing_is_kept),
		cmocka_unit_test(a_migrate_killed_mid_copy_leaves_the_target_empty_and_a_rerun_succeeds),
		cmocka_unit_test(the_fleet_database_is_a_second_migrate_into_its_own_database),
		cmocka_unit_test(a_fleet_migrate_is_refused_while_otacd_runs_or_from_a_newer_fleet_database),
	};
	cmocka_set_test_filter(getenv("X_ONLY"));
	return cmocka_run_group_tests(tests, make_installation, drop_installation);
}
