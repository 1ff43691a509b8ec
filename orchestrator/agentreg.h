/*
 * agentreg.h - registered agents (`otactl agents add|revoke|ls`).
 *
 * An agent's identity is its token.  `agents add NAME --labels a,b` makes a
 * random token, keeps its SHA-256 and the labels the agent may claim in the
 * agents table, and hands the token out once.  `agents revoke NAME` drops
 * the token from the in-memory set at once and releases the job the agent
 * holds as an infra failure (retried), which also ends that attempt's job
 * token.  Agents from the config file's `tokens:` and otacd's local agents
 * are not registered here: they live in memory (auth.h) and cannot be
 * revoked through the API.
 */
#ifndef OTA_AGENTREG_H
#define OTA_AGENTREG_H

#include <jansson.h>

#include "engine.h"

/* Is name usable for an agent: 1-64 of [A-Za-z0-9._-], not starting with '.' or '-'. */
int agentreg_name_valid(const char *name);
/* Register name with labels (array of strings); *token (caller frees) is
 * the agent's token, shown once.  OTA_ECONFLICT if the name is taken. */
int agentreg_add(struct engine *e, const char *name, const json_t *labels, const char *actor, char **token);
/* Revoke name's token; *released is the job it held (0: none). */
int agentreg_revoke(struct engine *e, const char *name, const char *actor, int64_t *released);

/*
 * The table work of agentreg_add and agentreg_revoke on a store connection,
 * inside the caller's transaction (the engine thread's, or a test's on
 * either backend); no audit, no in-memory token set.  hash is the token's
 * SHA-256 (hex).  Revoking gives the agent's row id and the job it was
 * running (0: none), for the engine to release.
 */
struct store;
int agentreg_store_add(struct store *db, const char *name, const json_t *allowed, const char *hash);
int agentreg_store_revoke(struct store *db, const char *name, int64_t *id, int64_t *running_job);

#endif
