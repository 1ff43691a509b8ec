/*
 * test_dbconv_jobs.c - engine_jobs.c's SQL on both storage backends
 * (docs/storage.md, conversion plan step 3).
 *
 * engine_jobs.c runs only on the engine thread, whose other files are not
 * converted yet, so its functions cannot run on PostgreSQL.  Its statements
 * can: engine_jobs_sql() lists every one, by name, at the address the
 * engine's statement cache uses.  Here each is prepared on a store opened
 * on SQLite and on a real PostgreSQL cluster (tests/pgcluster.h), migrated
 * by store_open(); then the ones a job's life goes through are run with
 * rows, in the order the engine runs them, with the values it binds:
 * an agent registering (RETURNING id), a claim and its attempt (with the
 * queue wait), a lease renewed, retries counted against the right budget,
 * a final state, a canceled attempt, artifacts sent again (RETURNING id)
 * and the run's artifact bytes.  Each case asserts what it sees and keeps
 * a transcript of every result; the PostgreSQL case must see exactly what
 * the SQLite case saw.  Cases run twice, "sqlite/..." and "postgres/...".
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../common/util.h"
#include "../orchestrator/db/db.h"
#include "../orchestrator/engine_int.h"
#include "../orchestrator/store.h"
#include "harness.h"
#include "dbconv.h"

/* ---- engine_jobs.c's statements, run with a transcript -------------------- */

/* What each case saw, in order; the SQLite case's is kept per case name
 * for the PostgreSQL case to compare with. */
static struct buf g_seen = BUF_INIT;
static struct {
	const char *name;
	char *seen;
} g_sqlite_seen[8];

/* The statement engine_jobs.c calls name, from the store's cache (keyed by
 * the same address the engine uses). */
static struct db_stmt *jq(struct store *s, const char *name)
{
	size_t n;
	const struct engine_jobs_sql *q = engine_jobs_sql(&n);
	struct db_stmt *st;

	for (size_t i = 0; i < n; i++) {
		if (strcmp(q[i].name, name) != 0)
			continue;
		if (!(st = store_q(s, q[i].sql)))
			fail_msg("%s does not prepare: %s", name, ota_error_last());
		return st;
	}
	fail_msg("engine_jobs.c has no statement %s", name);
	return NULL;
}

/* Bind by fmt: 'i' an int64_t, 't' a string (NULL binds NULL). */
static void bind_args(struct db_stmt *st, const char *fmt, va_list ap)
{
	for (int i = 0; fmt[i]; i++) {
		int rc = fmt[i] == 'i' ? db_bind_int64(st, i + 1, va_arg(ap, int64_t))
					 : db_bind_text(st, i + 1, va_arg(ap, const char *));
		assert_int_equal(rc, 0);
	}
}

/* The current row's columns as text, "a|b|NULL"; integers and whole
 * numbers alike on both backends (a PostgreSQL boolean reads 1 or 0, a
 * NUMERIC sum as its digits). */
static void row_text(struct db_stmt *st, struct buf *out)
{
	for (int c = 0; c < db_column_count(st); c++) {
		if (c)
			buf_putc(out, '|');
		switch (db_column_type(st, c)) {
		case DB_NULL:
			buf_puts(out, "NULL");
			break;
		case DB_INTEGER:
			buf_printf(out, "%lld", (long long)db_column_int64(st, c));
			break;
		case DB_FLOAT:
			buf_printf(out, "%.17g", db_column_double(st, c));
			break;
		default:
			buf_puts(out, db_column_text(st, c));
		}
	}
}

/* Run statement name with args (fmt as bind_args); the rows it changed. */
static int64_t run(struct store *s, const char *name, const char *fmt, ...)
{
	struct db_stmt *st = jq(s, name);
	va_list ap;
	int64_t changed;

	va_start(ap, fmt);
	bind_args(st, fmt, ap);
	va_end(ap);
	if (db_run(st) < 0) /* as engine_jobs.c runs them */
		fail_msg("%s: %s", name, ota_error_last());
	changed = db_changes(st);
	buf_printf(&g_seen, "%s: %lld changed\n", name, (long long)changed);
	return changed;
}

/* The first row statement name gives for args, as row_text writes it, or
 * "none".  The string lives until the next call. */
static const char *row(struct store *s, const char *name, const char *fmt, ...)
{
	static struct buf out = BUF_INIT;
	struct db_stmt *st = jq(s, name);
	va_list ap;
	int rc;

	va_start(ap, fmt);
	bind_args(st, fmt, ap);
	va_end(ap);
	buf_clear(&out);
	if ((rc = db_step(st)) == 1)
		row_text(st, &out);
	else if (rc == 0)
		buf_puts(&out, "none");
	else
		fail_msg("%s: %s", name, ota_error_last());
	db_reset(st);
	buf_printf(&g_seen, "%s: %s\n", name, buf_cstr(&out));
	return buf_cstr(&out);
}

/* The id statement name returns (INSERT ... RETURNING id). */
static int64_t returned_id(struct store *s, const char *name, const char *fmt, ...)
{
	struct db_stmt *st = jq(s, name);
	va_list ap;
	int64_t id;

	va_start(ap, fmt);
	bind_args(st, fmt, ap);
	va_end(ap);
	if (db_step(st) != 1)
		fail_msg("%s returned no id: %s", name, ota_error_last());
	id = db_column_int64(st, 0);
	db_reset(st);
	buf_printf(&g_seen, "%s: id %lld\n", name, (long long)id);
	return id;
}

/* One row of the test's own query (sql a literal), as row_text writes it. */
static const char *look(struct store *s, const char *sql, int64_t id)
{
	static struct buf out = BUF_INIT;
	struct db_stmt *st = store_q(s, sql);

	if (!st)
		fail_msg("%s: %s", sql, ota_error_last());
	db_bind_int64(st, 1, id);
	buf_clear(&out);
	if (db_step(st) == 1)
		row_text(st, &out);
	else
		buf_puts(&out, "none");
	db_reset(st);
	buf_printf(&g_seen, "look %lld: %s\n", (long long)id, buf_cstr(&out));
	return buf_cstr(&out);
}

/* End a case: on SQLite keep its transcript; on PostgreSQL it must match. */
static void transcript_done(void **state, const char *case_name, struct store *s)
{
	enum db_backend kind = *(const enum db_backend *)*state;
	size_t i;

	store_close(s);
	for (i = 0; i < OTA_ARRAY_SIZE(g_sqlite_seen) && g_sqlite_seen[i].name; i++)
		if (!strcmp(g_sqlite_seen[i].name, case_name))
			break;
	assert_true(i < OTA_ARRAY_SIZE(g_sqlite_seen));
	if (kind == DB_SQLITE) {
		free(g_sqlite_seen[i].seen);
		g_sqlite_seen[i].name = case_name;
		g_sqlite_seen[i].seen = buf_detach(&g_seen);
	} else if (g_sqlite_seen[i].seen) {
		if (strcmp(g_sqlite_seen[i].seen, buf_cstr(&g_seen)) != 0) {
			fprintf(stderr, "--- SQLite saw:\n%s--- PostgreSQL saw:\n%s", g_sqlite_seen[i].seen,
				buf_cstr(&g_seen));
			fail_msg("%s: PostgreSQL's results differ from SQLite's", case_name);
		}
	} else {
		fprintf(stderr, "(the sqlite case did not run: nothing to compare with)\n");
	}
	buf_clear(&g_seen);
}

/* A run with one stage and n jobs (ids returned in jobs[]), as the engine
 * leaves them queued: retries 2, infra retries 1. */
static int64_t add_run(struct store *s, const char *repo, int64_t *jobs, int n, const int64_t *queued_at)
{
	struct db_stmt *st;
	int64_t run, stage;

	st = store_q(s, "INSERT INTO runs(pipeline, file, yaml, ref, state, trigger, created_at, repo, commit_id,"
			" tree_id) VALUES ('fw', 'fw.yml', '', 'refs/heads/main', 'running', 'push', 1, ?, ?, ?)"
			" RETURNING id");
	assert_non_null(st);
	db_bind_text(st, 1, repo);
	db_bind_text(st, 2, repo ? "c0ffee" : NULL);
	db_bind_text(st, 3, repo ? "7ree" : NULL);
	assert_int_equal(db_step(st), 1);
	run = db_column_int64(st, 0);
	db_reset(st);
	st = store_q(s, "INSERT INTO stages(run_id, idx, name, kind, state, needs) VALUES (?, 0, 'build', 'build',"
			" 'running', '[]') RETURNING id");
	db_bind_int64(st, 1, run);
	assert_int_equal(db_step(st), 1);
	stage = db_column_int64(st, 0);
	db_reset(st);
	for (int i = 0; i < n; i++) {
		st = store_q(s, "INSERT INTO jobs(run_id, stage_id, idx, name, spec, state, retries_left,"
				" infra_retries_left, queued_at) VALUES (?, ?, ?, 'make', '{}', 'queued', 2, 1, ?)"
				" RETURNING id");
		db_bind_int64(st, 1, run);
		db_bind_int64(st, 2, stage);
		db_bind_int64(st, 3, i);
		if (queued_at[i] >= 0)
			db_bind_int64(st, 4, queued_at[i]);
		assert_int_equal(db_step(st), 1);
		jobs[i] = db_column_int64(st, 0);
		db_reset(st);
	}
	return run;
}

static const char k_job_row[] =
	"SELECT state, attempt, agent_id, lease_expires, deadline, retries_left, infra_retries_left,"
	" exit_code, failure, message, queued_at, finished_at, real_finished_at FROM jobs WHERE id = ?";
static const char k_attempt_row[] =
	"SELECT attempt, agent_id, started_at, finished_at, exit_code, failure, message, queue_wait_ms,"
	" token_hash FROM job_attempts WHERE job_id = ? ORDER BY attempt DESC";

/* ---- cases ---------------------------------------------------------------- */

static void every_statement_prepares(void **state)
{
	struct store *s = dbconv_case_store(state);
	size_t n;
	const struct engine_jobs_sql *q = engine_jobs_sql(&n);

	assert_true(n >= 20);
	for (size_t i = 0; i < n; i++) {
		struct db_stmt *st = NULL;
		if (db_prepare(store_conn(s), &st, q[i].sql) < 0)
			fail_msg("%s does not prepare: %s", q[i].name, ota_error_last());
		assert_true(db_param_count(st) > 0);
		db_finalize(st);
	}
	store_close(s);
}

/* The list is the file: each statement engine_jobs.c runs is a jq_
 * constant passed to store_q(), each such constant is listed, and no raw
 * sqlite3_ call is left. */
static void the_list_holds_every_statement_engine_jobs_runs(void **state)
{
	const char *src = getenv("OTACD_SRC");
	char *path = xasprintf("%s/orchestrator/engine_jobs.c", src ? src : ".");
	struct buf file = BUF_INIT;
	size_t n, used = 0;
	const struct engine_jobs_sql *q = engine_jobs_sql(&n);
	const char *p;

	(void)state;
	if (ota_read_file(&file, path, 1 << 20) < 0)
		fail_msg("%s: %s (set OTACD_SRC)", path, ota_error_last());
	assert_null(strstr(buf_cstr(&file), "sqlite3_"));
	for (p = buf_cstr(&file); (p = strstr(p, "store_q(e->db,")); p++) {
		const char *arg = p + strlen("store_q(e->db,");
		size_t len;
		int listed = 0;

		arg += strspn(arg, " ");
		len = strspn(arg, "abcdefghijklmnopqrstuvwxyz_");
		if (strncmp(arg, "jq_", 3) != 0)
			fail_msg("engine_jobs.c runs a statement that is not a jq_ constant: %.60s", arg);
		for (size_t i = 0; i < n; i++)
			if (strlen(q[i].name) == len && !strncmp(q[i].name, arg, len))
				listed = 1;
		if (!listed)
			fail_msg("%.*s is not in engine_jobs_sql()'s list", (int)len, arg);
		used++;
	}
	/* and each listed one is used somewhere */
	for (size_t i = 0; i < n; i++) {
		char *use = xasprintf("store_q(e->db, %s)", q[i].name);
		if (!strstr(buf_cstr(&file), use))
			fail_msg("%s is listed but engine_jobs.c never runs it", q[i].name);
		free(use);
	}
	assert_true(used >= n);
	buf_release(&file);
	free(path);
}

/* do_register: an agent's row is upserted under its name and keeps its id;
 * a local agent registered before this daemon started is told apart. */
static void an_agent_registering_again_keeps_its_id(void **state)
{
	struct store *s = dbconv_case_store(state);
	int64_t a, b, again;

	dbconv_begin(s);
	assert_string_equal(row(s, "jq_agent_restarted", "it", (int64_t)500, "builder"), "none");
	a = returned_id(s, "jq_agent_upsert", "ttiii", "builder", "[\"arm\"]", (int64_t)1, (int64_t)100,
			(int64_t)100);
	b = returned_id(s, "jq_agent_upsert", "ttiii", "rig", "[\"hil\"]", (int64_t)0, (int64_t)110, (int64_t)110);
	dbconv_commit(s);
	assert_true(a > 0 && b > 0 && a != b);

	dbconv_begin(s);
	/* registered at 100, this daemon started at 500: its predecessor's */
	assert_string_equal(row(s, "jq_agent_restarted", "it", (int64_t)500, "builder"), "1");
	again = returned_id(s, "jq_agent_upsert", "ttiii", "builder", "[\"arm\",\"x86\"]", (int64_t)1, (int64_t)600,
			    (int64_t)600);
	assert_int_equal(again, a);
	assert_string_equal(row(s, "jq_agent_restarted", "it", (int64_t)500, "builder"), "0");
	assert_string_equal(row(s, "jq_agent_labels", "i", a), "[\"arm\",\"x86\"]");
	assert_int_equal(run(s, "jq_agent_seen", "ii", (int64_t)700, a), 1);
	dbconv_commit(s);
	assert_string_equal(look(s, "SELECT labels, local, registered_at, last_seen FROM agents WHERE id = ?", a),
			    "[\"arm\",\"x86\"]|1|600|700");
	transcript_done(state, "agents", s);
}

/* do_claim: the claim takes a queued job once; its attempt records the
 * queue wait (NULL when queued_at is, 0 when the clock went back). */
static void a_claim_starts_one_attempt_with_its_queue_wait(void **state)
{
	struct store *s = dbconv_case_store(state);
	const int64_t queued_at[3] = { 1000, -1, 9000 };
	int64_t jobs[3], agent, rig, real = 1500, now = 42, lease = 30000, timeout = 60000;

	dbconv_begin(s);
	agent = returned_id(s, "jq_agent_upsert", "ttiii", "builder", "[]", (int64_t)0, (int64_t)1, (int64_t)1);
	rig = returned_id(s, "jq_agent_upsert", "ttiii", "rig", "[]", (int64_t)0, (int64_t)1, (int64_t)1);
	add_run(s, "acme/fw", jobs, 3, queued_at);
	for (int i = 0; i < 3; i++) {
		int64_t by = i ? rig : agent;
		char hash[65];
		snprintf(hash, sizeof(hash), "%064d", i);
		assert_int_equal(run(s, "jq_job_claim", "iiiiiii", (int64_t)1, by, real + lease,
				     real + timeout + lease, now, jobs[i], real), 1);
		assert_int_equal(run(s, "jq_attempt_start", "iiiiti", jobs[i], (int64_t)1, by, now, hash, real), 1);
	}
	/* a job no longer queued is not claimed again */
	assert_int_equal(run(s, "jq_job_claim", "iiiiiii", (int64_t)2, agent, real, real, now, jobs[0], real), 0);
	assert_int_equal(run(s, "jq_agent_holds", "ii", jobs[0], agent), 1);
	dbconv_commit(s);

	assert_string_equal(look(s, k_attempt_row, jobs[0]), "1|1|42|NULL|NULL|NULL|NULL|500|"
				"0000000000000000000000000000000000000000000000000000000000000000");
	assert_non_null(strstr(look(s, k_attempt_row, jobs[1]), "1|2|42|NULL|NULL|NULL|NULL|NULL|000"));
	assert_non_null(strstr(look(s, k_attempt_row, jobs[2]), "1|2|42|NULL|NULL|NULL|NULL|0|000"));
	assert_string_equal(look(s, k_job_row, jobs[0]),
			    "running|1|1|31500|91500|2|1|NULL|NULL|NULL|1000|NULL|NULL");
	assert_string_equal(look(s, "SELECT current_job FROM agents WHERE id = ?", agent), "1");

	/* do_heartbeat reads the lease and renews it */
	dbconv_begin(s);
	assert_string_equal(row(s, "jq_job_lease", "i", jobs[0]), "running|1|1");
	assert_string_equal(row(s, "jq_job_lease", "i", (int64_t)99), "none");
	assert_int_equal(run(s, "jq_job_lease_renew", "ii", (int64_t)77777, jobs[0]), 1);
	/* the jobs an agent holds, with when each was claimed (a claim from
	 * before a daemon's start is otacd's loss) */
	assert_string_equal(row(s, "jq_agent_jobs", "i", agent), "1|42");
	/* do_finish: the attempt is open for its agent only */
	assert_string_equal(row(s, "jq_attempt_open", "iii", jobs[0], (int64_t)1, agent), "1");
	assert_string_equal(row(s, "jq_attempt_open", "iii", jobs[0], (int64_t)1, agent + 1), "none");
	dbconv_commit(s);
	assert_non_null(strstr(look(s, k_job_row, jobs[0]), "|77777|"));
	transcript_done(state, "claim", s);
}

/* attempt_record: a failed attempt is retried against the right budget
 * (infra, counted, or none for "daemon"), then ends. */
static void retries_are_counted_against_the_right_budget(void **state)
{
	struct store *s = dbconv_case_store(state);
	const int64_t queued_at[1] = { 10 };
	int64_t job, agent;

	dbconv_begin(s);
	agent = returned_id(s, "jq_agent_upsert", "ttiii", "builder", "[]", (int64_t)0, (int64_t)1, (int64_t)1);
	add_run(s, NULL, &job, 1, queued_at);
	dbconv_commit(s);

	/* attempts 1..4: infra (1 left), counted (2 left), daemon (free), counted */
	static const struct {
		const char *failure;
		int64_t use_infra, use_count;
		const char *after;
	} k_tries[] = {
		{ "infra", 1, 0, "queued|1|NULL|NULL|NULL|2|0|-1|infra|lost|2000|NULL|NULL" },
		{ "script", 0, 1, "queued|2|NULL|NULL|NULL|1|0|1|script|exit 1|2000|NULL|NULL" },
		{ "daemon", 0, 0, "queued|3|NULL|NULL|NULL|1|0|-1|daemon|NULL|2000|NULL|NULL" },
		{ "script", 0, 1, "queued|4|NULL|NULL|NULL|0|0|1|script|exit 1|2000|NULL|NULL" },
	};
	for (size_t i = 0; i < OTA_ARRAY_SIZE(k_tries); i++) {
		int64_t attempt = (int64_t)i + 1, exit_code = strcmp(k_tries[i].failure, "script") ? -1 : 1;
		const char *message = !strcmp(k_tries[i].failure, "infra") ? "lost"
				    : !strcmp(k_tries[i].failure, "script") ? "exit 1" : NULL;

		dbconv_begin(s);
		assert_int_equal(run(s, "jq_job_claim", "iiiiiii", attempt, agent, (int64_t)100, (int64_t)200,
				     (int64_t)50, job, (int64_t)1500), 1);
		assert_int_equal(run(s, "jq_attempt_start", "iiiiti", job, attempt, agent, (int64_t)50, NULL,
				     (int64_t)1500), 1);
		assert_int_equal(run(s, "jq_agent_holds", "ii", job, agent), 1);
		assert_int_equal(run(s, "jq_attempt_end", "iittii", (int64_t)60, exit_code, k_tries[i].failure,
				     message, job, attempt), 1);
		assert_int_equal(run(s, "jq_agent_free", "ii", agent, job), 1);
		assert_int_equal(run(s, "jq_job_requeue", "ittiiii", exit_code, k_tries[i].failure, message,
				     k_tries[i].use_infra, k_tries[i].use_count, job, (int64_t)2000), 1);
		dbconv_commit(s);
		assert_string_equal(look(s, k_job_row, job), k_tries[i].after);
	}
	/* the last attempt fails for good */
	dbconv_begin(s);
	assert_int_equal(run(s, "jq_job_claim", "iiiiiii", (int64_t)5, agent, (int64_t)100, (int64_t)200, (int64_t)50,
			     job, (int64_t)1500), 1);
	assert_int_equal(run(s, "jq_attempt_start", "iiiiti", job, (int64_t)5, agent, (int64_t)50, NULL,
			     (int64_t)1500), 1);
	assert_int_equal(run(s, "jq_attempt_end", "iittii", (int64_t)70, (int64_t)2, "script", NULL, job, (int64_t)5),
			 1);
	assert_int_equal(run(s, "jq_job_final", "tiittii", "failed", (int64_t)70, (int64_t)2, "script", NULL, job,
			     (int64_t)3000), 1);
	dbconv_commit(s);
	assert_string_equal(look(s, k_job_row, job), "failed|5|1|NULL|NULL|0|0|2|script|NULL|2000|70|3000");
	assert_string_equal(look(s, "SELECT COUNT(*), COUNT(finished_at), MAX(queue_wait_ms), MIN(queue_wait_ms)"
				    " FROM job_attempts WHERE job_id = ?", job),
			    "5|5|1490|0");
	transcript_done(state, "retries", s);
}

/* do_finish for a canceled job; cache_scope and job_source read the run. */
static void a_canceled_attempt_closes_and_the_run_is_read(void **state)
{
	struct store *s = dbconv_case_store(state);
	const int64_t queued_at[1] = { 0 };
	int64_t job, agent, run_id, bare;

	dbconv_begin(s);
	agent = returned_id(s, "jq_agent_upsert", "ttiii", "builder", "[]", (int64_t)0, (int64_t)1, (int64_t)1);
	run_id = add_run(s, "acme/fw", &job, 1, queued_at);
	assert_int_equal(run(s, "jq_job_claim", "iiiiiii", (int64_t)1, agent, (int64_t)100, (int64_t)200,
			     (int64_t)50, job, (int64_t)1500), 1);
	assert_int_equal(run(s, "jq_attempt_start", "iiiiti", job, (int64_t)1, agent, (int64_t)50, "ab",
			     (int64_t)1500), 1);
	assert_int_equal(run(s, "jq_agent_holds", "ii", job, agent), 1);
	assert_int_equal(run(s, "jq_attempt_cancel", "iiii", (int64_t)80, (int64_t)137, job, (int64_t)1), 1);
	assert_int_equal(run(s, "jq_agent_free", "ii", agent, job), 1);
	assert_int_equal(run(s, "jq_agent_free", "ii", agent, job), 0);
	assert_string_equal(row(s, "jq_attempt_open", "iii", job, (int64_t)1, agent), "0");
	assert_string_equal(row(s, "jq_run_names", "i", run_id), "acme/fw|refs/heads/main|fw");
	assert_string_equal(row(s, "jq_run_source", "i", run_id), "refs/heads/main|acme/fw|c0ffee|7ree");
	bare = add_run(s, NULL, &job, 0, queued_at);
	assert_string_equal(row(s, "jq_run_source", "i", bare), "refs/heads/main|NULL|NULL|NULL");
	dbconv_commit(s);
	assert_string_equal(look(s, "SELECT finished_at, exit_code, failure FROM job_attempts WHERE job_id = ?", 1),
			    "80|137|canceled");
	transcript_done(state, "cancel", s);
}

/* do_artifact_add: a name sent again keeps its row and id, and the run's
 * bytes leave out the one it replaces. */
static void an_artifact_sent_again_keeps_its_id(void **state)
{
	struct store *s = dbconv_case_store(state);
	const int64_t queued_at[1] = { 0 };
	int64_t job, run_id, fw, map, again;

	dbconv_begin(s);
	run_id = add_run(s, "acme/fw", &job, 1, queued_at);
	assert_string_equal(row(s, "jq_run_artifact_bytes", "iiit", run_id, job, (int64_t)1, "fw.bin"), "0");
	fw = returned_id(s, "jq_artifact_upsert", "iiittitti", run_id, job, (int64_t)1, "fw.bin", "aa", (int64_t)300,
			 "image", "board-a", (int64_t)5);
	map = returned_id(s, "jq_artifact_upsert", "iiittitti", run_id, job, (int64_t)1, "fw.map", "bb",
			  (int64_t)45, NULL, NULL, (int64_t)6);
	assert_string_equal(row(s, "jq_run_artifact_bytes", "iiit", run_id, job, (int64_t)1, "fw.bin"), "45");
	assert_string_equal(row(s, "jq_run_artifact_bytes", "iiit", run_id, job, (int64_t)1, "other"), "345");
	again = returned_id(s, "jq_artifact_upsert", "iiittitti", run_id, job, (int64_t)1, "fw.bin", "cc",
			    (int64_t)310, NULL, "board-b", (int64_t)7);
	dbconv_commit(s);
	assert_true(fw != map);
	assert_int_equal(again, fw);
	assert_string_equal(look(s, "SELECT sha256, size, type, hardware, created_at FROM artifacts WHERE id = ?", fw),
			    "cc|310|NULL|board-b|5");
	assert_string_equal(look(s, "SELECT COUNT(*) FROM artifacts WHERE run_id = ?", run_id), "2");
	transcript_done(state, "artifacts", s);
}

/* ---- main ------------------------------------------------------------------ */

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(the_list_holds_every_statement_engine_jobs_runs),
		DBCONV_BOTH(every_statement_prepares),
		DBCONV_BOTH(an_agent_registering_again_keeps_its_id),
		DBCONV_BOTH(a_claim_starts_one_attempt_with_its_queue_wait),
		DBCONV_BOTH(retries_are_counted_against_the_right_budget),
		DBCONV_BOTH(a_canceled_attempt_closes_and_the_run_is_read),
		DBCONV_BOTH(an_artifact_sent_again_keeps_its_id),
	};
	int rc;

	dbconv_start("test_dbconv_jobs");
	rc = cmocka_run_group_tests_name("dbconv_jobs", tests, NULL, NULL);
	dbconv_finish();
	for (size_t i = 0; i < OTA_ARRAY_SIZE(g_sqlite_seen); i++)
		free(g_sqlite_seen[i].seen);
	buf_release(&g_seen);
	return rc;
}
