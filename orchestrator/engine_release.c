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
 *
 * The SQL runs through the storage layer (docs/storage.md).  The rules and
 * the release row (release_store_record) take a store, not the engine, so
 * tests/test_dbconv_runs.c runs them on SQLite and PostgreSQL.
 */
#include "engine.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "db/db.h"
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

/* Step an INSERT ... RETURNING id and read the id. */
static int step_insert_id(struct db_stmt *st, int64_t *id)
{
	int rc = db_step(st);
	if (rc == 1)
		*id = db_column_int64(st, 0);
	db_reset(st);
	if (rc == 0)
		return ota_error_set(OTA_ERROR, "INSERT ... RETURNING id returned no row");
	return rc < 0 ? rc : 0;
}

/* The anti-rollback and version rules, on connection db. */
static int release_rules(struct store *db, const char *product, const char *branch, const char *version,
			 int64_t counter, int64_t skip_run)
{
	/* id breaks ties, so both backends name the same release in the message */
	struct db_stmt *st = store_q(db, "SELECT security_counter, version, run_id FROM releases WHERE product = ?"
					 " AND run_id != ? ORDER BY security_counter DESC, id DESC LIMIT 1");
	int rc;

	if (!st)
		return OTA_ERROR;
	db_bind_text(st, 1, product);
	db_bind_int64(st, 2, skip_run);
	if ((rc = db_step(st)) == 1 && db_column_int64(st, 0) > counter) {
		rc = ota_error_set(OTA_ECONFLICT,
				   "security counter %" PRId64 " is lower than %" PRId64 " (release %s of %s): devices that "
				   "hold %" PRId64 " refuse it; release with security_counter >= %" PRId64,
				   counter, db_column_int64(st, 0), db_column_text(st, 1), product, db_column_int64(st, 0),
				   db_column_int64(st, 0));
		db_reset(st);
		return rc;
	}
	db_reset(st);
	if (rc < 0)
		return rc;
	st = store_q(db, "SELECT version FROM releases WHERE product = ? AND branch = ? AND run_id != ?"
			 " ORDER BY id DESC LIMIT 1");
	if (!st)
		return OTA_ERROR;
	db_bind_text(st, 1, product);
	db_bind_text(st, 2, branch);
	db_bind_int64(st, 3, skip_run);
	if ((rc = db_step(st)) == 1 && release_version_cmp(version, db_column_text(st, 0)) <= 0) {
		rc = ota_error_set(OTA_ECONFLICT, "version %s is not greater than %s, the last release of %s on %s",
				   version, db_column_text(st, 0), product, branch);
		db_reset(st);
		return rc;
	}
	db_reset(st);
	return rc < 0 ? rc : 0;
}

int release_check(const char *product, const char *branch, const char *version, int64_t security_counter)
{
	struct store *db = store_reader();
	if (!db)
		return ota_error_set(OTA_ERROR, "database unavailable");
	return release_rules(db, product, branch, version, security_counter, 0);
}

int release_store_record(struct store *s, const struct release_record *r, int64_t now, int64_t *id)
{
	struct db_stmt *st = store_q(s, "SELECT id FROM releases WHERE run_id = ?");
	int rc;

	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, r->run_id);
	rc = db_step(st);
	if (rc == 1)
		*id = db_column_int64(st, 0);
	db_reset(st);
	if (rc != 0)
		return rc; /* 1: recorded before a crash */
	if ((rc = release_rules(s, r->product, r->branch, r->version, r->security_counter, r->run_id)) < 0)
		return rc;
	st = store_q(s, "INSERT INTO releases(run_id, product, version, branch, security_counter, key_id, manifest_artifact,"
			" envelope_artifact, provenance_artifact, created_at, state, reissue_of)"
			" VALUES (?,?,?,?,?,?,?,?,?,?,?,?) RETURNING id");
	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, r->run_id);
	db_bind_text(st, 2, r->product);
	db_bind_text(st, 3, r->version);
	db_bind_text(st, 4, r->branch);
	db_bind_int64(st, 5, r->security_counter);
	db_bind_text(st, 6, r->key_id);
	db_bind_int64(st, 7, r->manifest_artifact);
	db_bind_int64(st, 8, r->envelope_artifact);
	db_bind_int64(st, 9, r->provenance_artifact);
	db_bind_int64(st, 10, now);
	db_bind_text(st, 11, r->reissue_of ? "reissue" : "created");
	if (r->reissue_of)
		db_bind_int64(st, 12, r->reissue_of); /* else NULL */
	if ((rc = step_insert_id(st, id)) < 0)
		return rc;
	if (r->reissue_for) {
		/* the halted release's devices roll forward to this one */
		if (!(st = store_q(s, "UPDATE releases SET state = 'rolled_back', rollback_to = ? WHERE id = ?")))
			return OTA_ERROR;
		db_bind_int64(st, 1, *id);
		db_bind_int64(st, 2, r->reissue_for);
		if ((rc = db_run(st)) < 0)
			return rc;
	}
	for (size_t i = 0; i < r->nkeep; i++) {
		if (!(st = store_q(s, "UPDATE artifacts SET released = 1 WHERE id = ?")))
			return OTA_ERROR;
		db_bind_int64(st, 1, r->keep[i]);
		if ((rc = db_run(st)) < 0)
			return rc;
	}
	return 0;
}

struct release_args {
	const struct release_record *r;
	int64_t id;
};

static int do_release_record(struct engine *e, void *arg)
{
	struct release_args *a = arg;
	const struct release_record *r = a->r;
	int rc = release_store_record(e->db, r, clock_now_ms(), &a->id);

	if (rc != 0)
		return rc < 0 ? rc : 0; /* recorded before a crash: done */
	if (r->reissue_for)
		e->changed_rollout = 1;
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
	struct db_stmt *st = store_q(engine_store(e), "INSERT INTO audit(at, actor, action, release_id, rollout_id,"
						      " reason, detail) VALUES (?,?,?,?,?,?,?)");
	char *d = detail ? json_dumps(detail, JSON_COMPACT) : NULL;
	int rc;

	json_decref(detail);
	if (!st) {
		free(d);
		return OTA_ERROR;
	}
	db_bind_int64(st, 1, clock_now_ms());
	db_bind_text(st, 2, actor ? actor : "");
	db_bind_text(st, 3, action);
	if (release)
		db_bind_int64(st, 4, release); /* else NULL */
	if (rollout)
		db_bind_int64(st, 5, rollout);
	db_bind_text(st, 6, reason ? reason : "");
	db_bind_text(st, 7, d); /* NULL binds NULL */
	rc = db_run(st);
	free(d);
	/* issue 17: rollout notifications, committed with the audit entry */
	if (rc >= 0 && rollout)
		rc = outbox_rollout_event(e, actor, action, release, rollout, reason);
	if (rc >= 0 && rollout) /* a rollout stage's status says which step holds */
		rc = outbox_stage_rollout(e, action, rollout);
	return rc;
}
