/*
 * api_agents.c - registering and revoking agents (admin; agentreg.h), and
 * API tokens (admin; tokenreg.h).
 *
 *   POST /api/v1/agents         {"name", "labels": [..]}  -> 201 {name, labels, token}
 *   POST /api/v1/agents/revoke  {"name"}                  -> 200 {name, revoked, released_job}
 *   POST /api/v1/tokens         {"name", "role"}          -> 201 {name, role, token}
 *   POST /api/v1/tokens/revoke  {"name"}                  -> 200 {name, revoked}
 *
 * The token is in the answer once and nowhere else (the database keeps its
 * SHA-256).  Listing is GET /api/v1/agents (api_read.c).
 */
#include "api_int.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "../agentreg.h"
#include "../tokenreg.h"

enum MHD_Result api_post_agent(struct api *a, struct api_req *r)
{
	json_t *name = json_object_get(r->json, "name"), *labels = json_object_get(r->json, "labels"), *l;
	char *token = NULL;
	enum MHD_Result ret;
	size_t i;
	int rc;

	if (!json_is_string(name) || !agentreg_name_valid(json_string_value(name)))
		return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "'name' must be 1-64 of A-Z a-z 0-9 . _ -");
	if (!json_is_array(labels) || json_array_size(labels) > 64)
		return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "'labels' must be a list of at most 64 strings");
	json_array_foreach(labels, i, l) {
		const char *s = json_string_value(l);
		size_t n = s ? strlen(s) : 0;
		int ok = n > 0 && n <= 128;
		for (size_t k = 0; ok && k < n; k++)
			ok = (unsigned char)s[k] > 0x20 && s[k] != 0x7f && s[k] != ',';
		if (!ok)
			return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "label %zu must be a short string without spaces or commas", i);
	}
	rc = agentreg_add(a->cfg.engine, json_string_value(name), labels, r->actor[0] ? r->actor : "admin", &token);
	if (rc < 0)
		return api_reply_rc(r, rc);
	ret = api_reply_json(r, MHD_HTTP_CREATED, json_pack("{sO sO ss}", "name", name, "labels", labels, "token", token));
	OPENSSL_cleanse(token, strlen(token));
	free(token);
	return ret;
}

enum MHD_Result api_post_agent_revoke(struct api *a, struct api_req *r)
{
	json_t *name = json_object_get(r->json, "name");
	int64_t released = 0;
	int rc;

	if (!json_is_string(name) || !agentreg_name_valid(json_string_value(name)))
		return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "'name' must be an agent's name");
	rc = agentreg_revoke(a->cfg.engine, json_string_value(name), r->actor[0] ? r->actor : "admin", &released);
	if (rc < 0)
		return api_reply_rc(r, rc);
	return api_reply_json(r, MHD_HTTP_OK, json_pack("{sO sb so?}", "name", name, "revoked", 1, "released_job",
							 released ? json_integer(released) : NULL));
}

enum MHD_Result api_post_token(struct api *a, struct api_req *r)
{
	json_t *name = json_object_get(r->json, "name"), *role = json_object_get(r->json, "role");
	char *token = NULL;
	enum MHD_Result ret;
	int rc;

	if (!json_is_string(name) || !agentreg_name_valid(json_string_value(name)))
		return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "'name' must be 1-64 of A-Z a-z 0-9 . _ -");
	if (!json_is_string(role))
		return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "'role' must be viewer, operator, release or admin");
	rc = tokenreg_add(a->cfg.engine, json_string_value(name), auth_role_parse(json_string_value(role)),
			  r->actor[0] ? r->actor : "admin", &token);
	if (rc < 0)
		return api_reply_rc(r, rc);
	ret = api_reply_json(r, MHD_HTTP_CREATED, json_pack("{sO sO ss}", "name", name, "role", role, "token", token));
	OPENSSL_cleanse(token, strlen(token));
	free(token);
	return ret;
}

enum MHD_Result api_post_token_revoke(struct api *a, struct api_req *r)
{
	json_t *name = json_object_get(r->json, "name");
	int rc;

	if (!json_is_string(name) || !agentreg_name_valid(json_string_value(name)))
		return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "'name' must be a token's name");
	rc = tokenreg_revoke(a->cfg.engine, json_string_value(name), r->actor[0] ? r->actor : "admin");
	if (rc < 0)
		return api_reply_rc(r, rc);
	return api_reply_json(r, MHD_HTTP_OK, json_pack("{sO sb}", "name", name, "revoked", 1));
}
