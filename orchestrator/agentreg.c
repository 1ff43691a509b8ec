/*
 * agentreg.c - registered agents; see agentreg.h.
 *
 * Both changes run on the engine thread in one transaction (the agents row,
 * the released job, the audit entry); the in-memory token set (auth.c) is
 * changed only once that transaction committed.
 */
#include "agentreg.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "../common/util.h"
#include "auth.h"
#include "clock.h"
#include "db/db.h"
#include "engine_int.h"

int agentreg_name_valid(const char *name)
{
	size_t n = name ? strlen(name) : 0;
	if (n == 0 || n > 64 || name[0] == '.' || name[0] == '-')
		return 0;
	return strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") == n;
}

struct add_args {
	const char *name;
	const json_t *labels;
	const char *actor;
	const char *hash;
};

int agentreg_store_add(struct store *db, const char *name, const json_t *allowed, const char *hash)
{
	struct db_stmt *st = store_q(db, "SELECT token_hash IS NOT NULL FROM agents WHERE name = ?");
	char *labels;
	int rc, taken = 0;

	if (!st)
		return OTA_ERROR;
	db_bind_text(st, 1, name);
	rc = db_step(st);
	if (rc == 1)
		taken = (int)db_column_int64(st, 0);
	db_reset(st);
	if (rc < 0)
		return rc;
	if (taken)
		return ota_error_set(OTA_ECONFLICT, "agent '%s' is already registered (revoke it first)", name);
	st = store_q(db, "INSERT INTO agents(name, labels, local, registered_at, last_seen, token_hash, allowed_labels)"
			 " VALUES (?, '[]', 0, ?, 0, ?, ?) ON CONFLICT(name) DO UPDATE SET token_hash = excluded.token_hash,"
			 " allowed_labels = excluded.allowed_labels, revoked_at = NULL, local = 0");
	if (!st)
		return OTA_ERROR;
	labels = json_dumps(allowed, JSON_COMPACT);
	db_bind_text(st, 1, name);
	db_bind_int64(st, 2, clock_now_ms());
	db_bind_text(st, 3, hash);
	db_bind_text(st, 4, labels);
	free(labels);
	return db_run(st);
}

static int do_add(struct engine *e, void *arg)
{
	struct add_args *a = arg;
	int rc;

	if ((rc = agentreg_store_add(engine_store(e), a->name, a->labels, a->hash)) < 0)
		return rc;
	engine_auth_changed(e);
	return engine_audit(e, a->actor, "agent.add", 0, 0, NULL,
			    json_pack("{ss sO}", "agent", a->name, "labels", (json_t *)a->labels));
}

int agentreg_add(struct engine *e, const char *name, const json_t *labels, const char *actor, char **token)
{
	char tok[65], hash[65];
	struct add_args a = { name, labels, actor, hash };
	unsigned flags = 0;
	int rc;

	if (!agentreg_name_valid(name))
		return ota_error_set(OTA_EINVAL, "agent name '%s' must be 1-64 of A-Z a-z 0-9 . _ -", name);
	if (auth_agent_info(name, NULL, &flags, NULL) && !(flags & AUTH_AGENT_REGISTERED))
		return ota_error_set(OTA_ECONFLICT, "'%s' is the name of a config-file token or a local agent", name);
	if ((rc = ota_random_hex(tok, 32)) < 0)
		return rc;
	auth_sha256_hex(tok, hash);
	if ((rc = engine_exec(e, do_add, &a)) == 0) {
		auth_add_agent(name, tok, NULL, labels, AUTH_AGENT_REGISTERED);
		*token = xstrdup(tok);
	}
	OPENSSL_cleanse(tok, sizeof(tok));
	return rc;
}

struct revoke_args {
	const char *name;
	const char *actor;
	int64_t released;
};

int agentreg_store_revoke(struct store *db, const char *name, int64_t *id, int64_t *running_job)
{
	struct db_stmt *st = store_q(db, "SELECT id, token_hash IS NOT NULL, COALESCE(current_job, 0) FROM agents WHERE name = ?");
	int64_t job = 0;
	int rc, active = 0;

	*id = 0;
	*running_job = 0;
	if (!st)
		return OTA_ERROR;
	db_bind_text(st, 1, name);
	rc = db_step(st);
	if (rc == 1) {
		*id = db_column_int64(st, 0);
		active = (int)db_column_int64(st, 1);
		job = db_column_int64(st, 2);
	}
	db_reset(st);
	if (rc < 0)
		return rc;
	if (!active)
		return ota_error_set(rc == 1 ? OTA_ECONFLICT : OTA_ENOTFOUND, "no registered agent '%s'%s", name,
				     rc == 1 ? " (revoked already, or a config-file or local agent)" : "");
	if (!(st = store_q(db, "UPDATE agents SET token_hash = NULL, revoked_at = ? WHERE id = ?")))
		return OTA_ERROR;
	db_bind_int64(st, 1, clock_now_ms());
	db_bind_int64(st, 2, *id);
	if ((rc = db_run(st)) < 0)
		return rc;
	/* current_job may name a finished job: released only if running */
	if (!(st = store_q(db, "SELECT COUNT(*) FROM jobs WHERE id = ? AND agent_id = ? AND state = 'running'")))
		return OTA_ERROR;
	db_bind_int64(st, 1, job);
	db_bind_int64(st, 2, *id);
	if ((rc = db_step(st)) == 1 && db_column_int64(st, 0))
		*running_job = job;
	db_reset(st);
	return rc < 0 ? rc : 0;
}

static int do_revoke(struct engine *e, void *arg)
{
	struct revoke_args *a = arg;
	int64_t id;
	char why[160];
	int rc;

	if ((rc = agentreg_store_revoke(engine_store(e), a->name, &id, &a->released)) < 0)
		return rc;
	engine_auth_changed(e);
	snprintf(why, sizeof(why), "agent %s was revoked while running this job", a->name);
	if ((rc = engine_release_agent_job(e, id, why)) < 0)
		return rc;
	return engine_audit(e, a->actor, "agent.revoke", 0, 0, NULL,
			    json_pack("{ss sI}", "agent", a->name, "released_job", (json_int_t)a->released));
}

int agentreg_revoke(struct engine *e, const char *name, const char *actor, int64_t *released)
{
	struct revoke_args a = { name, actor, 0 };
	int rc = engine_exec(e, do_revoke, &a);
	if (rc == 0) {
		auth_remove(name);
		*released = a.released;
	}
	return rc;
}
