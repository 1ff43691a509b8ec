/*
 * test_dbmods.c - the modules converted to the storage layer (docs/storage.md,
 * conversion plan step 2) run their own functions on both backends: a store
 * opened on SQLite and on a real PostgreSQL cluster started in a temporary
 * directory (tests/pgcluster.h).  Idempotency keys are reserved, answered,
 * replayed and expired; API tokens are kept only as hashes and found again
 * after a reload; agents are registered and revoked; meta rows round-trip.
 * Each case runs twice, "sqlite/..." and "postgres/...".
 */
#include <sqlite3.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../common/util.h"
#include "../orchestrator/agentreg.h"
#include "../orchestrator/auth.h"
#include "../orchestrator/db/db.h"
#include "../orchestrator/idem.h"
#include "../orchestrator/policy.h"
#include "../orchestrator/store.h"
#include "harness.h"
#include "dbconv.h"

/* ---- idempotency keys (idem.c) -------------------------------------------- */

struct idem_seen {
	enum idem_state state;
	int status;
	char *body;
};

/* idem_store_begin in its own transaction, as the engine runs it */
static struct idem_seen idem_at(struct store *s, const char *key, const char *fp, int64_t now)
{
	struct idem_seen r = { 0 };

	dbconv_begin(s);
	if (idem_store_begin(s, "ci", key, fp, now, &r.state, &r.status, &r.body) < 0)
		fail_msg("idem_store_begin %s: %s", key, ota_error_last());
	dbconv_commit(s);
	return r;
}

static void idem_end(struct store *s, const char *key, int status, const char *body, size_t len)
{
	dbconv_begin(s);
	if (idem_store_finish(s, "ci", key, status, body, len) < 0)
		fail_msg("idem_store_finish %s: %s", key, ota_error_last());
	dbconv_commit(s);
}

static void idempotency_keys_are_reserved_answered_replayed_and_expire(void **state)
{
	struct store *s = dbconv_case_store(state);
	const char *answer = "{\"id\":7}trailing bytes not part of the answer";
	int64_t t0 = 1700000000000LL;
	struct idem_seen r;

	r = idem_at(s, "k1", "fp-a", t0);
	assert_int_equal(r.state, IDEM_NEW);
	/* while its request runs, the same key is in progress (this instance) */
	r = idem_at(s, "k1", "fp-a", t0 + 1);
	assert_int_equal(r.state, IDEM_IN_PROGRESS);
	/* the answer is kept with its length, and replayed byte for byte */
	idem_end(s, "k1", 201, answer, 8);
	r = idem_at(s, "k1", "fp-a", t0 + 2);
	assert_int_equal(r.state, IDEM_REPLAY);
	assert_int_equal(r.status, 201);
	assert_string_equal(r.body, "{\"id\":7}");
	free(r.body);
	/* the same key for another request is refused */
	r = idem_at(s, "k1", "fp-b", t0 + 3);
	assert_int_equal(r.state, IDEM_MISMATCH);
	assert_null(r.body);

	/* abandoned: its outcome is unknown, so it is never run again */
	assert_int_equal(idem_at(s, "k2", "fp-a", t0).state, IDEM_NEW);
	idem_end(s, "k2", -1, NULL, 0);
	assert_int_equal(idem_at(s, "k2", "fp-a", t0 + 4).state, IDEM_INTERRUPTED);
	/* forgotten: a retry may run it */
	assert_int_equal(idem_at(s, "k3", "fp-a", t0).state, IDEM_NEW);
	idem_end(s, "k3", 0, NULL, 0);
	assert_int_equal(dbconv_count(s, "SELECT COUNT(*) FROM idempotency WHERE key = 'k3'"), 0);
	assert_int_equal(idem_at(s, "k3", "fp-a", t0 + 5).state, IDEM_NEW);

	/* a day later every older key is gone, and k1 is new again */
	r = idem_at(s, "k1", "fp-b", t0 + IDEM_WINDOW_MS + 10);
	assert_int_equal(r.state, IDEM_NEW);
	assert_int_equal(dbconv_count(s, "SELECT COUNT(*) FROM idempotency"), 1);
	store_close(s);
}

/* ---- API tokens (auth.c) -------------------------------------------------- */

static void tokens_are_stored_as_hashes_and_checked_after_a_reload(void **state)
{
	struct store *s = dbconv_case_store(state);
	char *tok = NULL, *again = NULL, hash[65];
	struct db_stmt *st;

	auth_remove("deployer");
	assert_int_equal(auth_create(s, "deployer", ROLE_OPERATOR, &tok), 0);
	assert_int_equal(auth_check(tok), ROLE_OPERATOR);

	/* the table holds the SHA-256, never the token */
	auth_sha256_hex(tok, hash);
	st = store_q(s, "SELECT hash, role FROM tokens WHERE name = ?");
	assert_non_null(st);
	db_bind_text(st, 1, "deployer");
	assert_int_equal(db_step(st), 1);
	assert_string_equal(db_column_text(st, 0), hash);
	assert_string_equal(db_column_text(st, 1), "operator");
	db_reset(st);

	/* forgotten in memory, found again from the table */
	assert_int_equal(auth_remove("deployer"), 0);
	assert_int_equal(auth_check(tok), ROLE_NONE);
	assert_int_equal(auth_load(s), 0);
	assert_int_equal(auth_check(tok), ROLE_OPERATOR);
	assert_int_equal(auth_check("not-a-token"), ROLE_NONE);

	/* a second token of the same name is refused and changes nothing */
	assert_true(auth_create(s, "deployer", ROLE_ADMIN, &again) < 0);
	assert_null(again);
	assert_int_equal(dbconv_count(s, "SELECT COUNT(*) FROM tokens"), 1);
	assert_int_equal(auth_check(tok), ROLE_OPERATOR);
	auth_remove("deployer");
	free(tok);
	store_close(s);
}

/* ---- registered agents (agentreg.c) ------------------------------------- */

static void agents_are_registered_loaded_and_revoked(void **state)
{
	struct store *s = dbconv_case_store(state);
	json_t *allowed = json_pack("[ss]", "arm", "hil"), *labels = NULL;
	char hash[65], hash2[65];
	int64_t id = -1, job = -1;
	unsigned flags = 0;

	auth_remove("builder-1");
	auth_sha256_hex("builder-1-token", hash);
	auth_sha256_hex("builder-1-token-2", hash2);
	dbconv_begin(s);
	assert_int_equal(agentreg_store_add(s, "builder-1", allowed, hash), 0);
	dbconv_commit(s);
	/* a name in use is refused */
	dbconv_begin(s);
	assert_int_equal(agentreg_store_add(s, "builder-1", allowed, hash2), OTA_ECONFLICT);
	store_rollback(s);

	/* otacd's start loads it with the labels it may claim */
	assert_int_equal(auth_load(s), 0);
	assert_int_equal(auth_check("builder-1-token"), ROLE_AGENT);
	assert_int_equal(auth_agent_info("builder-1", &labels, &flags, NULL), 1);
	assert_true(flags & AUTH_AGENT_REGISTERED);
	assert_true(json_equal(labels, allowed));
	json_decref(labels);

	dbconv_begin(s);
	assert_int_equal(agentreg_store_revoke(s, "builder-1", &id, &job), 0);
	dbconv_commit(s);
	assert_true(id > 0);
	assert_int_equal(job, 0);
	assert_int_equal(dbconv_count(s, "SELECT COUNT(*) FROM agents WHERE token_hash IS NULL AND revoked_at IS NOT NULL"), 1);
	dbconv_begin(s);
	assert_int_equal(agentreg_store_revoke(s, "builder-1", &id, &job), OTA_ECONFLICT);
	assert_int_equal(agentreg_store_revoke(s, "nobody", &id, &job), OTA_ENOTFOUND);
	store_rollback(s);

	/* a revoked token does not come back on the next start */
	auth_remove("builder-1");
	assert_int_equal(auth_load(s), 0);
	assert_int_equal(auth_check("builder-1-token"), ROLE_NONE);
	/* and the name may be registered again, with a new token */
	dbconv_begin(s);
	assert_int_equal(agentreg_store_add(s, "builder-1", allowed, hash2), 0);
	dbconv_commit(s);
	assert_int_equal(dbconv_count(s, "SELECT COUNT(*) FROM agents WHERE revoked_at IS NULL AND token_hash IS NOT NULL"), 1);
	auth_remove("builder-1");
	json_decref(allowed);
	store_close(s);
}

/* ---- protected runs (policy.c) ------------------------------------------- */

static int64_t add_run(struct store *s, int protect, const char *reason)
{
	struct db_stmt *st = store_q(s, "INSERT INTO runs(pipeline, file, yaml, ref, state, trigger, created_at,"
					" protected, trust_reason) VALUES ('fw', 'fw.yml', '', 'refs/heads/main', 'success',"
					" 'push', 1, ?, ?) RETURNING id");
	int64_t id;

	assert_non_null(st);
	db_bind_int64(st, 1, protect);
	db_bind_text(st, 2, reason);
	assert_int_equal(db_step(st), 1);
	id = db_column_int64(st, 0);
	db_reset(st);
	return id;
}

static void only_protected_runs_may_sign_releases(void **state)
{
	struct store *s = dbconv_case_store(state);
	int64_t trusted = add_run(s, 1, "protected branch main");
	int64_t pushed = add_run(s, 0, "pushed by a contributor");

	assert_int_equal(policy_run_protected(s, trusted), 1);
	assert_int_equal(policy_run_protected(s, pushed), 0);
	assert_int_equal(policy_run_protected(s, pushed + 100), OTA_ENOTFOUND);
	/* refused before any product policy is read, with the run's reason */
	assert_int_equal(policy_release_allowed(NULL, s, pushed, "fw", "key", 1), OTA_EPERM);
	assert_non_null(strstr(ota_error_last(), "pushed by a contributor"));
	assert_int_equal(policy_release_allowed(NULL, s, pushed + 100, "fw", "key", 1), OTA_ENOTFOUND);
	store_close(s);
}

/* ---- store.c's own rows ---------------------------------------------------- */

static void meta_rows_round_trip_and_sql_without_a_faithful_rewrite_is_refused(void **state)
{
	struct store *s = dbconv_case_store(state);
	char *v = NULL;

	assert_int_equal(store_meta_get(s, "instance", &v), OTA_ENOTFOUND);
	assert_int_equal(store_meta_set(s, "instance", "a"), 0);
	assert_int_equal(store_meta_set(s, "instance", "b"), 0);
	assert_int_equal(store_meta_get(s, "instance", &v), 0);
	assert_string_equal(v, "b");
	free(v);
	assert_int_equal(store_schema_latest() > 0, 1);
	if (db_backend(store_conn(s)) == DB_POSTGRES) {
		/* no SQLite handle behind a PostgreSQL store (backup/ checks it),
		 * and SQLite-only SQL fails when prepared, naming the construct,
		 * rather than running with another meaning */
		assert_null(db_sqlite_handle(store_conn(s)));
		assert_null(store_q(s, "INSERT OR REPLACE INTO meta(key, value) VALUES ('k', 'v')"));
		assert_non_null(strstr(ota_error_last(), "INSERT OR REPLACE"));
		assert_null(store_q(s, "SELECT rowid FROM meta"));
		assert_non_null(strstr(ota_error_last(), "rowid"));
	} else {
		assert_non_null(db_sqlite_handle(store_conn(s)));
	}
	store_close(s);
}

/* ---- main --------------------------------------------------------------------- */

int main(void)
{
	const struct CMUnitTest tests[] = {
		DBCONV_BOTH(idempotency_keys_are_reserved_answered_replayed_and_expire),
		DBCONV_BOTH(tokens_are_stored_as_hashes_and_checked_after_a_reload),
		DBCONV_BOTH(agents_are_registered_loaded_and_revoked),
		DBCONV_BOTH(only_protected_runs_may_sign_releases),
		DBCONV_BOTH(meta_rows_round_trip_and_sql_without_a_faithful_rewrite_is_refused),
	};
	int rc;

	dbconv_start("test_dbmods");
	rc = cmocka_run_group_tests_name("dbmods", tests, NULL, NULL);
	dbconv_finish();
	return rc;
}
