/*
 * tokenreg.c - API tokens made and revoked through the API; see
 * tokenreg.h.  Table work, audit entry and the CW_AUTH announcement share
 * the engine's transaction; the in-memory set (auth.c) follows the commit.
 */
#include "tokenreg.h"

#include <string.h>

#include <openssl/crypto.h>

#include "../common/util.h"
#include "agentreg.h"
#include "clock.h"
#include "db/db.h"
#include "engine_int.h"

struct token_args {
	const char *name;
	enum auth_role role;
	const char *actor;
	const char *hash; /* add only */
};

static int do_add(struct engine *e, void *arg)
{
	struct token_args *a = arg;
	struct store *s = engine_store(e);
	struct db_stmt *st = store_q(s, "SELECT COUNT(*) FROM tokens WHERE name = ?");
	int rc, taken = 0;

	if (!st)
		return OTA_ERROR;
	db_bind_text(st, 1, a->name);
	if ((rc = db_step(st)) == 1)
		taken = db_column_int64(st, 0) > 0;
	db_reset(st);
	if (rc < 0)
		return rc;
	if (taken)
		return ota_error_set(OTA_ECONFLICT, "a token called '%s' exists (revoke it first)", a->name);
	if (!(st = store_q(s, "INSERT INTO tokens(name, role, hash, created_at) VALUES (?,?,?,?)")))
		return OTA_ERROR;
	db_bind_text(st, 1, a->name);
	db_bind_text(st, 2, auth_role_name(a->role));
	db_bind_text(st, 3, a->hash);
	db_bind_int64(st, 4, clock_now_ms());
	if ((rc = db_run(st)) < 0)
		return rc;
	engine_auth_changed(e);
	return engine_audit(e, a->actor, "token.add", 0, 0, NULL,
			    json_pack("{ss ss}", "token", a->name, "role", auth_role_name(a->role)));
}

int tokenreg_add(struct engine *e, const char *name, enum auth_role role, const char *actor, char **token)
{
	char tok[65], hash[65];
	struct token_args a = { name, role, actor, hash };
	int rc;

	if (!agentreg_name_valid(name))
		return ota_error_set(OTA_EINVAL, "token name '%s' must be 1-64 of A-Z a-z 0-9 . _ -", name);
	if (role != ROLE_VIEWER && role != ROLE_OPERATOR && role != ROLE_RELEASE && role != ROLE_ADMIN)
		return ota_error_set(OTA_EINVAL, "a token's role is viewer, operator, release or admin (agents: /api/v1/agents)");
	if (auth_agent_info(name, NULL, NULL, NULL))
		return ota_error_set(OTA_ECONFLICT, "'%s' is the name of a token or agent already", name);
	if ((rc = ota_random_hex(tok, 32)) < 0)
		return rc;
	auth_sha256_hex(tok, hash);
	if ((rc = engine_exec(e, do_add, &a)) == 0) {
		auth_add_db_hash(name, hash, role);
		*token = xstrdup(tok);
	}
	OPENSSL_cleanse(tok, sizeof(tok));
	return rc;
}

static int do_revoke(struct engine *e, void *arg)
{
	struct token_args *a = arg;
	struct db_stmt *st = store_q(engine_store(e), "DELETE FROM tokens WHERE name = ?");
	int rc;

	if (!st)
		return OTA_ERROR;
	db_bind_text(st, 1, a->name);
	if ((rc = db_run(st)) < 0)
		return rc;
	if (db_changes(st) == 0)
		return ota_error_set(OTA_ENOTFOUND, "no token '%s' (config-file tokens are revoked in the config)",
				     a->name);
	engine_auth_changed(e);
	return engine_audit(e, a->actor, "token.revoke", 0, 0, NULL, json_pack("{ss}", "token", a->name));
}

int tokenreg_revoke(struct engine *e, const char *name, const char *actor)
{
	struct token_args a = { name, ROLE_NONE, actor, NULL };
	int rc;

	if (!agentreg_name_valid(name))
		return ota_error_set(OTA_EINVAL, "'%s' is not a token's name", name);
	if ((rc = engine_exec(e, do_revoke, &a)) == 0)
		auth_remove_db(name);
	return rc;
}
