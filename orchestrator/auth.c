/*
 * auth.c - hashed tokens, constant-time checks; see auth.h.
 */
#include "auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "../common/util.h"
#include "clock.h"

struct token_entry {
	char *name;
	unsigned char hash[32];
	enum auth_role role;
};

static pthread_rwlock_t g_lock = PTHREAD_RWLOCK_INITIALIZER;
static struct token_entry *g_tokens;
static size_t g_ntokens;

static void sha256(const char *s, unsigned char out[32])
{
	unsigned int len = 32;
	EVP_Digest(s, strlen(s), out, &len, EVP_sha256(), NULL);
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

static void add_entry(const char *name, const unsigned char hash[32], enum auth_role role)
{
	pthread_rwlock_wrlock(&g_lock);
	g_tokens = xrealloc(g_tokens, (g_ntokens + 1) * sizeof(*g_tokens));
	g_tokens[g_ntokens].name = xstrdup(name);
	memcpy(g_tokens[g_ntokens].hash, hash, 32);
	g_tokens[g_ntokens].role = role;
	g_ntokens++;
	pthread_rwlock_unlock(&g_lock);
}

void auth_add_memory(const char *name, const char *token, enum auth_role role)
{
	unsigned char h[32];
	sha256(token, h);
	add_entry(name, h, role);
}

void auth_add_hash(const char *name, const char *sha256_hex, enum auth_role role)
{
	unsigned char h[32];
	if (unhex(sha256_hex, h) == 0)
		add_entry(name, h, role);
}

int auth_load(struct store *db)
{
	sqlite3_stmt *st = store_stmt(db, "SELECT name, hash, role FROM tokens");
	int rc;
	if (!st)
		return OTA_ERROR;
	while ((rc = store_step_row(db, st)) == 1)
		auth_add_hash(store_col_text(st, 0), store_col_text(st, 1), auth_role_parse(store_col_text(st, 2)));
	sqlite3_reset(st);
	return rc < 0 ? rc : 0;
}

int auth_create(struct store *db, const char *name, enum auth_role role, char **token)
{
	char tok[65], hash[65];
	sqlite3_stmt *st;
	int rc;

	if ((rc = ota_random_hex(tok, 32)) < 0)
		return rc;
	auth_sha256_hex(tok, hash);
	st = store_stmt(db, "INSERT INTO tokens(name, role, hash, created_at) VALUES (?,?,?,?)");
	if (!st)
		return OTA_ERROR;
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, auth_role_name(role), -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, hash, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 4, clock_now_ms());
	if ((rc = store_step_done(db, st)) < 0)
		return rc;
	auth_add_hash(name, hash, role);
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
	if (have == ROLE_ADMIN)
		return 1;
	if (need == ROLE_AGENT)
		return have == ROLE_AGENT;
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
