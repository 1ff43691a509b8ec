/*
 * engine_release.c - release records and the audit log.
 *
 * Why apart from engine.c: releases and audit entries are the record of
 * what was shipped and who decided what; they outlive runs and are read by
 * the update server, rollouts and auditors rather than by the run machinery.
 *
 * How it works.  A release must pass the anti-rollback rules: its security
 * counter may not be lower than the product's highest, and its version must
 * be greater than the last release on its branch (release_check applies
 * them on a reader connection before signing, do_release_record again on
 * the engine thread when recording).  Recording is idempotent per run, so
 * a release stage retried after a crash finds its release already there.
 * Audit entries are written by engine-thread code inside the transaction
 * of the change they explain.
 */
#include "engine.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "engine_core.h"
#include "notify/notify.h"

/* ---- releases ---------------------------------------------------------- */

int release_version_cmp(const char *a, const char *b)
{
	for (int i = 0; i < 3; i++) {
		long x = strtol(a, (char **)&a, 10), y = strtol(b, (char **)&b, 10);
		if (x != y)
			return x < y ? -1 : 1;
		if (*a == '.')
			a++;
		if (*b == '.')
			b++;
	}
	return 0;
}

/* The anti-rollback and version rules, on connection db. */
static int release_rules(struct store *db, const char *product, const char *branch, const char *version,
			 int64_t counter, int64_t skip_run)
{
	sqlite3_stmt *st = store_stmt(db, "SELECT security_counter, version, run_id FROM releases WHERE product = ?"
					  " AND run_id != ? ORDER BY security_counter DESC LIMIT 1");
	int rc;

	if (!st)
		return OTA_ERROR;
	sqlite3_bind_text(st, 1, product, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, skip_run);
	if ((rc = store_step_row(db, st)) == 1 && store_col_int(st, 0) > counter) {
		rc = ota_error_set(OTA_ECONFLICT,
				   "security counter %" PRId64 " is lower than %" PRId64 " (release %s of %s): devices that "
				   "hold %" PRId64 " refuse it; release with security_counter >= %" PRId64,
				   counter, store_col_int(st, 0), store_col_text(st, 1), product, store_col_int(st, 0),
				   store_col_int(st, 0));
		sqlite3_reset(st);
		return rc;
	}
	sqlite3_reset(st);
	st = store_stmt(db, "SELECT version FROM releases WHERE product = ? AND branch = ? AND run_id != ?"
			    " ORDER BY id DESC LIMIT 1");
	sqlite3_bind_text(st, 1, product, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, branch, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 3, skip_run);
	if ((rc = store_step_row(db, st)) == 1 && release_version_cmp(version, store_col_text(st, 0)) <= 0) {
		rc = ota_error_set(OTA_ECONFLICT, "version %s is not greater than %s, the last release of %s on %s",
				   version, store_col_text(st, 0), product, branch);
		sqlite3_reset(st);
		return rc;
	}
	sqlite3_reset(st);
	return rc < 0 ? rc : 0;
}

int release_check(const char *product, const char *branch, const char *version, int64_t security_counter)
{
	struct store *db = store_reader();
	if (!db)
		return ota_error_set(OTA_ERROR, "database unavailable");
	return release_rules(db, product, branch, version, security_counter, 0);
}

struct release_args {
	const struct release_record *r;
	int64_t id;
};

static int do_release_record(struct engine *e, void *arg)
{
	struct release_args *a = arg;
	const struct release_record *r = a->r;
	sqlite3_stmt *st = STMT(e, "SELECT id FROM releases WHERE run_id = ?");
	int rc;

	sqlite3_bind_int64(st, 1, r->run_id);
	rc = store_step_row(e->db, st);
	if (rc == 1)
		a->id = store_col_int(st, 0);
	sqlite3_reset(st);
	if (rc != 0)
		return rc < 0 ? rc : 0; /* recorded before a crash: done */
	if ((rc = release_rules(e->db, r->product, r->branch, r->version, r->security_counter, r->run_id)) < 0)
		return rc;
	st = STMT(e, "INSERT INTO releases(run_id, product, version, branch, security_counter, key_id, manifest_artifact,"
		     " envelope_artifact, provenance_artifact, created_at, state, reissue_of) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)");
	sqlite3_bind_int64(st, 1, r->run_id);
	sqlite3_bind_text(st, 2, r->product, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, r->version, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 4, r->branch, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 5, r->security_counter);
	sqlite3_bind_text(st, 6, r->key_id, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 7, r->manifest_artifact);
	sqlite3_bind_int64(st, 8, r->envelope_artifact);
	sqlite3_bind_int64(st, 9, r->provenance_artifact);
	sqlite3_bind_int64(st, 10, clock_now_ms());
	sqlite3_bind_text(st, 11, r->reissue_of ? "reissue" : "created", -1, SQLITE_STATIC);
	if (r->reissue_of)
		sqlite3_bind_int64(st, 12, r->reissue_of);
	else
		sqlite3_bind_null(st, 12);
	if ((rc = store_step_done(e->db, st)) < 0)
		return rc;
	a->id = sqlite3_last_insert_rowid(store_db(e->db));
	if (r->reissue_for) {
		/* the halted release's devices roll forward to this one */
		st = STMT(e, "UPDATE releases SET state = 'rolled_back', rollback_to = ? WHERE id = ?");
		sqlite3_bind_int64(st, 1, a->id);
		sqlite3_bind_int64(st, 2, r->reissue_for);
		if ((rc = store_step_done(e->db, st)) < 0)
			return rc;
		e->changed_rollout = 1;
	}
	for (size_t i = 0; i < r->nkeep; i++) {
		st = STMT(e, "UPDATE artifacts SET released = 1 WHERE id = ?");
		sqlite3_bind_int64(st, 1, r->keep[i]);
		if ((rc = store_step_done(e->db, st)) < 0)
			return rc;
	}
	eng_event(e, r->run_id, 0, "release.created", json_pack("{sI ss ss sI ss}", "release", (json_int_t)a->id,
								"product", r->product, "version", r->version,
								"security_counter", (json_int_t)r->security_counter,
								"key", r->key_id));
	return 0;
}

int engine_release_record(struct engine *e, const struct release_record *r, int64_t *release_id)
{
	struct release_args a = { r, 0 };
	int rc = engine_call(e, do_release_record, &a);
	if (rc == 0)
		*release_id = a.id;
	return rc;
}

/* ---- audit ------------------------------------------------------------- */

int engine_audit(struct engine *e, const char *actor, const char *action, int64_t release, int64_t rollout,
		 const char *reason, json_t *detail)
{
	sqlite3_stmt *st = STMT(e, "INSERT INTO audit(at, actor, action, release_id, rollout_id, reason, detail)"
				   " VALUES (?,?,?,?,?,?,?)");
	char *d = detail ? json_dumps(detail, JSON_COMPACT) : NULL;
	int rc;

	json_decref(detail);
	if (!st) {
		free(d);
		return OTA_ERROR;
	}
	sqlite3_bind_int64(st, 1, clock_now_ms());
	sqlite3_bind_text(st, 2, actor ? actor : "", -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, action, -1, SQLITE_STATIC);
	if (release)
		sqlite3_bind_int64(st, 4, release);
	else
		sqlite3_bind_null(st, 4);
	if (rollout)
		sqlite3_bind_int64(st, 5, rollout);
	else
		sqlite3_bind_null(st, 5);
	sqlite3_bind_text(st, 6, reason ? reason : "", -1, SQLITE_STATIC);
	if (d)
		sqlite3_bind_text(st, 7, d, -1, SQLITE_TRANSIENT);
	else
		sqlite3_bind_null(st, 7);
	rc = store_step_done(engine_store(e), st);
	free(d);
	/* issue 17: rollout notifications, committed with the audit entry */
	if (rc >= 0 && rollout)
		rc = outbox_rollout_event(e, actor, action, release, rollout, reason);
	return rc;
}
