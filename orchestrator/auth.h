/*
 * auth.h - API tokens and roles.
 *
 * Tokens are random 32-byte hex strings.  Only their SHA-256 is stored (the
 * tokens table, plus tokens given in the config file, plus the local agents'
 * token that lives only in memory).  auth_check() hashes what the client
 * sent and compares it with every known hash in constant time
 * (CRYPTO_memcmp), so neither the token nor which prefix matched leaks
 * through timing.  Tokens never appear in logs.
 */
#ifndef OTA_AUTH_H
#define OTA_AUTH_H

#include <jansson.h>
#include <stddef.h>

#include "store.h"

enum auth_role {
	ROLE_NONE = 0,
	ROLE_VIEWER = 1,
	ROLE_AGENT = 2,
	ROLE_OPERATOR = 3,
	ROLE_RELEASE = 4,   /* an operator who may also release from uploaded pipelines (orchestrator/policy.h) */
	ROLE_ADMIN = 5,
	/* not a token's role: routes that take a job token (api_job_auth) */
	ROLE_JOB = 6,
};

/* What kind of agent a token names (auth_agent_info). */
#define AUTH_AGENT_LOCAL 1u       /* started by otacd (or adopted: known by its hash) */
#define AUTH_AGENT_REGISTERED 2u  /* `otactl agents add`: in the agents table, revocable */

/* Load the tokens table; must be called before auth_check. */
int auth_load(struct store *db);
/*
 * Replace the tokens read from the database (the tokens table, registered
 * agents) by what it holds now, in one swap; the config file's tokens and
 * the local agents' stay.  Another instance's token changes reach this
 * one this way (commitwatch.h, CW_AUTH; docs/scale.md).  A local change
 * made while it reads makes it read again, so a revocation is never
 * undone by an older snapshot.  Any thread (db: that thread's store).
 */
int auth_reload(struct store *db);
/* Add a token (by its plain value) to the in-memory set only. */
void auth_add_memory(const char *name, const char *token, enum auth_role role);
/* Add a token by its SHA-256 hex (from the config file). */
void auth_add_hash(const char *name, const char *sha256_hex, enum auth_role role);
/* Add an agent's token (plain token, or else its SHA-256 hex) with the
 * labels it may claim (NULL: any label) and AUTH_AGENT_* flags. */
void auth_add_agent(const char *name, const char *token, const char *sha256_hex, const json_t *labels,
		    unsigned flags);
/* Forget every token of that name at once (revocation); OTA_ENOTFOUND if none. */
int auth_remove(const char *name);
/* The same for the database's tokens of that name only (an API token's revocation). */
int auth_remove_db(const char *name);
/* Add a token of the tokens table (by SHA-256 hex): auth_reload() replaces it. */
void auth_add_db_hash(const char *name, const char *sha256_hex, enum auth_role role);
/* 1 if a token of that name is known: its labels bound (a new reference,
 * NULL when unbounded), AUTH_AGENT_* flags and role (each may be NULL). */
int auth_agent_info(const char *name, json_t **labels, unsigned *flags, enum auth_role *role);
/* Create a token, store its hash in the database and return it (caller frees). */
int auth_create(struct store *db, const char *name, enum auth_role role, char **token);
/* Role of the presented token (ROLE_NONE when unknown or NULL). */
enum auth_role auth_check(const char *token);
/* The same, also giving the token's name (for the audit log) in name[n]. */
enum auth_role auth_identify(const char *token, char *name, size_t n);
/* Does `have` allow an action that needs `need`?  Agents only do agent
 * work, and only agents do (an admin token names no agent). */
int auth_allows(enum auth_role have, enum auth_role need);

const char *auth_role_name(enum auth_role r);
enum auth_role auth_role_parse(const char *s);
void auth_sha256_hex(const char *token, char out[65]);

#endif
