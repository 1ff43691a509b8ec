/*
 * auth.c - hashed tokens, constant-time checks; see auth.h.
 */
#include "auth.h"

#include <openssl/crypto.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../common/sha256.h"
#include "../common/util.h"
#include "clock.h"
#include "db/db.h"

struct token_entry {
	char *name;
	unsigned char hash[32];
	enum auth_role role;
	json_t *labels;         /* agents: the labels it may claim; NULL: any */
	unsigned flags;         /* AUTH_AGENT_* */
};

/* an entry read from the database (tokens, registered agents): replaced
 * by auth_reload(); never shown by auth_agent_info() */
#define FROM_DB 0x100u

static pthread_rwlock_t g_lock = PTHREAD_RWLOCK_INITIALIZER;
static struct token_entry *g_tokens;
static size_t g_ntokens;
/* moved by every change of the set (under g_lock's write side): a reload
 * whose snapshot is older than a revocation made meanwhile starts again */
static uint64_t g_changes;

/* nettle, not EVP: an idle otacd's agents authenticate on every poll, and
 * the first EVP digest would wake OpenSSL's providers (common/sha256.h) */
static void sha256(const char *s, unsigned char out[32])
{
	ota_sha256(s, strlen(s), out);
}

void auth_sha256_hex(const char *token, char out[65])
{
	unsigned char h[32];
	sha256(token, h);
	ota_hex(out, h, 32);
}

static int unhex(const char *hex, unsigned char out[32])
{
	if (strlen(hex) != 64)
		return -1;
	for (int i = 0; i < 32; i++) {
		unsigned v = 0;
		for (int k = 0; k < 2; k++) {
			char c = hex[2 * i + k];
			v <<= 4;
			if (c >= '0' && c <= '9')
				v |= (unsigned)(c - '0');
			else if (c >= 'a' && c <= 'f')
				v |= (unsigned)(c - 'a' + 10);
			else if (c >= 'A' && c <= 'F')
				v |= (unsigned)(c - 'A' + 10);
			else
				return -1;
		}
		out[i] = (unsigned char)v;
	}
	return 0;
}

static void add_entry_full(const char *name, const unsigned char hash[32], enum auth_role role,
			   const json_t *labels, unsigned flags)
{
	pthread_rwlock_wrlock(&g_lock);
	g_tokens = xrealloc(g_tokens, (g_ntokens + 1) * sizeof(*g_tokens));
	g_tokens[g_ntokens].name = xstrdup(name);
	memcpy(g_tokens[g_ntokens].hash, hash, 32);
	g_tokens[g_ntokens].role = role;
	g_tokens[g_ntokens].labels = labels ? json_deep_copy(labels) : NULL;
	g_tokens[g_ntokens].flags = flags;
	g_ntokens++;
	g_changes++;
	pthread_rwlock_unlock(&g_lock);
}

static void add_entry(const char *name, const unsigned char hash[32], enum auth_role role)
{
	add_entry_full(name, hash, role, NULL, 0);
}

void auth_add_agent(const char *name, const char *token, const char *sha256_hex, const json_t *labels,
		    unsigned flags)
{
	unsigned char h[32];
	if (token)
		sha256(token, h);
	else if (!sha256_hex || unhex(sha256_hex, h) < 0)
		return;
	add_entry_full(name, h, ROLE_AGENT, labels, flags & AUTH_AGENT_REGISTERED ? flags | FROM_DB : flags);
}

static int remove_entries(const char *name, unsigned only)
{
	size_t i, n = 0;
	pthread_rwlock_wrlock(&g_lock);
	for (i = 0; i < g_ntokens; i++) {
		if (!strcmp(g_tokens[i].name, name) && (g_tokens[i].flags & only) == only) {
			free(g_tokens[i].name);
			json_decref(g_tokens[i].labels);
			continue;
		}
		g_tokens[n++] = g_tokens[i];
	}
	i = g_ntokens - n;
	g_ntokens = n;
	g_changes++;
	pthread_rwlock_unlock(&g_lock);
	return i ? 0 : OTA_ENOTFOUND;
}

int auth_remove(const char *name)
{
	return remove_entries(name, 0);
}

int auth_remove_db(const char *name)
{
	return remove_entries(name, FROM_DB);
}

int auth_agent_info(const char *name, json_t **labels, unsigned *flags, enum auth_role *role)
{
	int found = 0;
	if (labels)
		*labels = NULL;
	pthread_rwlock_rdlock(&g_lock);
	for (size_t i = 0; i < g_ntokens && !found; i++) {
		if (strcmp(g_tokens[i].name, name) != 0)
			continue;
		found = 1;
		if (labels && g_tokens[i].labels)
			*labels = json_deep_copy(g_tokens[i].labels);
		if (flags)
			*flags = g_tokens[i].flags & ~FROM_DB;
		if (role)
			*role = g_tokens[i].role;
	}
	pthread_rwlock_unlock(&g_lock);
	return found;
}

void auth_add_memory(const char *name, const char *token, enum auth_role role)
{
	unsigned char h[32];
	sha256(token, h);
	add_entry(name, h, role);
}

void auth_add_db_hash(const char *name, const char *sha256_hex, enum auth_role role)
{
	unsigned char h[32];
	if (unhex(sha256_hex, h) == 0)
		add_entry_full(name, h, role, NULL, FROM_DB);
}

void auth_add_hash(const char *name, const char *sha256_hex, enum auth_role role)
{
	unsigned char h[32];
	if (unhex(sha256_hex, h) == 0)
		add_entry(name, h, role);
}

static void free_entries(struct token_entry *v, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(v[i].name);
		json_decref(v[i].labels);
	}
	free(v);
}

static void push_entry(struct token_entry **v, size_t *n, const char *name, const char *hex, enum auth_role role,
		       json_t *labels, unsigned flags)
{
	unsigned char h[32];

	if (!name || !hex || unhex(hex, h) < 0)
		return;
	*v = xrealloc(*v, (*n + 1) * sizeof(**v));
	(*v)[*n].name = xstrdup(name);
	memcpy((*v)[*n].hash, h, 32);
	(*v)[*n].role = role;
	(*v)[*n].labels = labels ? json_incref(labels) : NULL;
	(*v)[*n].flags = flags | FROM_DB;
	(*n)++;
}

/* The database's tokens and registered agents, read into *v (*n). */
static int read_db(struct store *db, struct token_entry **v, size_t *n)
{
	struct db_stmt *st = store_q(db, "SELECT name, hash, role FROM tokens");
	int rc;

	*v = NULL;
	*n = 0;
	if (!st)
		return OTA_ERROR;
	while ((rc = db_step(st)) == 1)
		push_entry(v, n, db_column_text(st, 0), db_column_text(st, 1), auth_role_parse(db_column_text(st, 2)),
			   NULL, 0);
	db_reset(st);
	if (rc < 0)
		return rc;
	/* agents registered with `otactl agents add` (and not revoked) */
	st = store_q(db, "SELECT name, token_hash, allowed_labels FROM agents"
			 " WHERE token_hash IS NOT NULL AND revoked_at IS NULL");
	if (!st)
		return OTA_ERROR;
	while ((rc = db_step(st)) == 1) {
		json_t *labels = json_loads(db_column_text(st, 2) ? db_column_text(st, 2) : "[]", 0, NULL);
		if (!labels)
			labels = json_array(); /* unreadable: may claim nothing */
		push_entry(v, n, db_column_text(st, 0), db_column_text(st, 1), ROLE_AGENT, labels,
			   AUTH_AGENT_REGISTERED);
		json_decref(labels);
	}
	db_reset(st);
	return rc < 0 ? rc : 0;
}

int auth_reload(struct store *db)
{
	for (int tries = 0; tries < 8; tries++) {
		struct token_entry *v = NULL, *keep;
		size_t n = 0, k = 0;
		uint64_t seen;
		int rc;

		pthread_rwlock_rdlock(&g_lock);
		seen = g_changes;
		pthread_rwlock_unlock(&g_lock);
		if ((rc = read_db(db, &v, &n)) < 0) {
			free_entries(v, n);
			return rc;
		}
		pthread_rwlock_wrlock(&g_lock);
		if (g_changes != seen) { /* a local change since the read: read again */
			pthread_rwlock_unlock(&g_lock);
			free_entries(v, n);
			continue;
		}
		/* the entries of memory and the config file stay; the database's
		 * are replaced whole */
		keep = xmalloc((g_ntokens + n + 1) * sizeof(*keep));
		for (size_t i = 0; i < g_ntokens; i++) {
			if (g_tokens[i].flags & FROM_DB) {
				free(g_tokens[i].name);
				json_decref(g_tokens[i].labels);
			} else {
				keep[k++] = g_tokens[i];
			}
		}
		if (n)
			memcpy(keep + k, v, n * sizeof(*v));
		free(g_tokens);
		free(v);
		g_tokens = keep;
		g_ntokens = k + n;
		g_changes++;
		pthread_rwlock_unlock(&g_lock);
		return 0;
	}
	return ota_error_set(OTA_ERROR, "tokens: the set kept changing during a reload");
}

int auth_load(struct store *db)
{
	return auth_reload(db);
}

int auth_create(struct store *db, const char *name, enum auth_role role, char **token)
{
	char tok[65], hash[65];
	struct db_stmt *st;
	int rc;

	if ((rc = ota_random_hex(tok, 32)) < 0)
		return rc;
	auth_sha256_hex(tok, hash);
	st = store_q(db, "INSERT INTO tokens(name, role, hash, created_at) VALUES (?,?,?,?)");
	if (!st)
		return OTA_ERROR;
	db_bind_text(st, 1, name);
	db_bind_text(st, 2, auth_role_name(role));
	db_bind_text(st, 3, hash);
	db_bind_int64(st, 4, clock_now_ms());
	if ((rc = db_run(st)) < 0)
		return rc;
	auth_add_db_hash(name, hash, role);
	*token = xstrdup(tok);
	return 0;
}

enum auth_role auth_check(const char *token)
{
	return auth_identify(token, NULL, 0);
}

enum auth_role auth_identify(const char *token, char *name, size_t n)
{
	unsigned char h[32];
	enum auth_role role = ROLE_NONE;

	if (name && n)
		name[0] = '\0';
	if (!token || !*token)
		return ROLE_NONE;
	sha256(token, h);
	pthread_rwlock_rdlock(&g_lock);
	/* Compare against every entry, whatever matched, in constant time. */
	for (size_t i = 0; i < g_ntokens; i++) {
		int eq = CRYPTO_memcmp(h, g_tokens[i].hash, 32) == 0;
		if (eq && g_tokens[i].role > role) {
			role = g_tokens[i].role;
			if (name && n)
				snprintf(name, n, "%s", g_tokens[i].name);
		}
	}
	pthread_rwlock_unlock(&g_lock);
	return role;
}

int auth_allows(enum auth_role have, enum auth_role need)
{
	/* Agent work needs an agent's own identity (admins included: an admin
	 * token names no agent), job routes a job token (api_job_auth). */
	if (need == ROLE_AGENT)
		return have == ROLE_AGENT;
	if (need == ROLE_JOB)
		return 0;
	if (have == ROLE_ADMIN)
		return 1;
	if (have == ROLE_AGENT)
		return 0;
	return have >= need;
}

const char *auth_role_name(enum auth_role r)
{
	switch (r) {
	case ROLE_VIEWER: return "viewer";
	case ROLE_AGENT: return "agent";
	case ROLE_OPERATOR: return "operator";
	case ROLE_RELEASE: return "release";
	case ROLE_ADMIN: return "admin";
	case ROLE_JOB: return "job";
	default: return "none";
	}
}

enum auth_role auth_role_parse(const char *s)
{
	if (!s)
		return ROLE_NONE;
	if (!strcmp(s, "viewer"))
		return ROLE_VIEWER;
	if (!strcmp(s, "agent"))
		return ROLE_AGENT;
	if (!strcmp(s, "operator"))
		return ROLE_OPERATOR;
	if (!strcmp(s, "release"))
		return ROLE_RELEASE;
	if (!strcmp(s, "admin"))
		return ROLE_ADMIN;
	return ROLE_NONE;
}
