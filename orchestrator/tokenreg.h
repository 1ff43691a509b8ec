/*
 * tokenreg.h - API tokens made and revoked through the API (admin).
 *
 * `POST /api/v1/tokens {"name","role"}` makes a random token for a person
 * or a tool (viewer, operator, release or admin; agents have their own,
 * agentreg.h), keeps its SHA-256 in the tokens table and hands the token
 * out once; `POST /api/v1/tokens/revoke {"name"}` deletes it.  Both run on
 * the engine thread in one transaction with their audit entry, and the
 * commit is announced with CW_AUTH so that every other instance on the
 * same PostgreSQL database reloads its tokens (commitwatch.h).  This
 * instance's set changes once the transaction committed.
 */
#ifndef OTA_TOKENREG_H
#define OTA_TOKENREG_H

#include "auth.h"
#include "engine.h"

/* Make a token called name with role; *token (caller frees) is shown once.
 * OTA_EINVAL for a bad name or role, OTA_ECONFLICT if the name is taken. */
int tokenreg_add(struct engine *e, const char *name, enum auth_role role, const char *actor, char **token);
/* Revoke the database's token called name (OTA_ENOTFOUND: none). */
int tokenreg_revoke(struct engine *e, const char *name, const char *actor);

#endif
