/*
 * api_flags.c - feature flags (issue 17, orchestrator/flags/flags.h):
 *
 *   GET  /api/v1/flags[?product=P]   every flag: value, cohort, state, percent, step, last verdicts
 *   POST /api/v1/flags               {product, name, state: on|off, value?, cohort?, reason}
 *   POST /api/v1/flags/rollout       {product, name, value?, cohort?, steps, gates, reason}
 *
 * Changes need the operator role and a reason; each is one engine call,
 * audited with the token's name.  Bad input is refused with 400 and a
 * message naming the field; nothing changes then.
 */
#include "api_int.h"

#include <string.h>

#include "../flags/flags.h"

enum MHD_Result api_get_flags(struct api *a, struct api_req *r)
{
	struct store *db = store_reader();
	const char *product = api_query(r, "product");
	json_t *list;

	(void)a;
	if (!db || !(list = flags_list(db, product && *product ? product : NULL)))
		return api_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "database unavailable");
	return api_reply_json(r, MHD_HTTP_OK, list);
}

enum MHD_Result api_post_flags(struct api *a, struct api_req *r)
{
	const char *actor = r->actor[0] ? r->actor : "unknown";
	int rollout = !strcmp(r->url, "/api/v1/flags/rollout");
	json_t *out = NULL;
	int rc = rollout ? flags_rollout(a->cfg.engine, actor, r->json, &out)
			 : flags_set(a->cfg.engine, actor, r->json, &out);

	if (rc < 0)
		return api_reply_rc(r, rc);
	return api_reply_json(r, MHD_HTTP_OK, out ? out : json_object());
}
