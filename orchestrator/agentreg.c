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

static int do_add(struct engine *e, void *arg)
{
	struct add_args *a = arg;
	struct store *db = engine_store(e);
	sqlite3_stmt *st = store_stmt(db, "SELECT token_hash IS NOT NULL FROM agents WHERE name = ?");
	char *labels;
	int rc, taken = 0;

	if (!st)
		return OTA_ERROR;
	sqlite3_bind_text(st, 1, a->name, -1, SQLITE_STATIC);
	rc = store_step_row(db, st);
	if (rc == 1)
		taken = (int)store_col_int(st, 0);
	sqlite3_reset(st);
	if (rc < 0)
		return rc;
	if (taken)
		return ota_error_set(OTA_ECONFLICT, "agent '%s' is already registered (revoke it first)", a->name);
	labels = json_dumps(a->labels, JSON_COMPACT);
	st = store_stmt(db, "INSERT INTO agents(name, labels, local, registered_at, last_seen, token_hash, allowed_labels)"
			    " VALUES (?, '[]', 0, ?, 0, ?, ?) ON CONFLICT(name) DO UPDATE SET token_hash = excluded.token_hash,"
			    " allowed_labels = excluded.allowed_labels, revoked_at = NULL, local = 0");
	sqlite3_bind_text(st, 1, a->name, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, clock_now_ms());
	sqlite3_bind_text(st, 3, a->hash, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 4, labels, -1, SQLITE_TRANSIENT);
	free(labels);
	if ((rc = store_step_done(db, st)) < 0)
		return rc;
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

static int do_revoke(struct engine *e, void *arg)
{
	struct revoke_args *a = arg;
	struct store *db = engine_store(e);
	sqlite3_stmt *st = store_stmt(db, "SELECT id, token_hash IS NOT NULL, COALESCE(current_job, 0) FROM agents WHERE name = ?");
	int64_t id = 0, job = 0;
	int rc, active = 0;
	char why[160];

	if (!st)
		return OTA_ERROR;
	sqlite3_bind_text(st, 1, a->name, -1, SQLITE_STATIC);
	rc = store_step_row(db, st);
	if (rc == 1) {
		id = store_col_int(st, 0);
		active = (int)store_col_int(st, 1);
		job = store_col_int(st, 2);
	}
	sqlite3_reset(st);
	if (rc < 0)
		return rc;
	if (!active)
		return ota_error_set(rc == 1 ? OTA_ECONFLICT : OTA_ENOTFOUND, "no registered agent '%s'%s", a->name,
				     rc == 1 ? " (revoked already, or a config-file or local agent)" : "");
	st = store_stmt(db, "UPDATE agents SET token_hash = NULL, revoked_at = ? WHERE id = ?");
	sqlite3_bind_int64(st, 1, clock_now_ms());
	sqlite3_bind_int64(st, 2, id);
	if ((rc = store_step_done(db, st)) < 0)
		return rc;
	/* current_job may name a finished job: released only if running */
	st = store_stmt(db, "SELECT COUNT(*) FROM jobs WHERE id = ? AND agent_id = ? AND state = 'running'");
	sqlite3_bind_int64(st, 1, job);
	sqlite3_bind_int64(st, 2, id);
	if (store_step_row(db, st) == 1 && store_col_int(st, 0))
		a->released = job;
	sqlite3_reset(st);
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
