/*
 * api_backup.c - POST /api/v1/backup {"dir": "/abs/path"} (admin): a
 * consistent backup of the running otacd into a directory on otacd's own
 * host (backup/backup.h; docs/operations.md, "Back up and restore").
 *
 * The directory must be absolute and new or empty; otacd creates it (mode
 * 0700) as its own user.  The copy runs on this HTTP thread: one of the
 * pool's threads is busy for as long as it takes (seconds for a typical
 * state directory), the others serve on.
 */
#include "api_int.h"

#include <string.h>

#include "../backup/backup.h"
#include "../config.h"

enum MHD_Result api_post_backup(struct api *a, struct api_req *r)
{
	json_t *dir = json_object_get(r->json, "dir"), *store = a->cfg.config->artifact_store, *summary = NULL;
	const char *backend = store ? json_string_value(json_object_get(store, "backend")) : NULL;
	int local = !backend || !strcmp(backend, "local");
	const char *d = json_string_value(dir);
	int rc;

	if (!d || d[0] != '/' || strlen(d) > 1024)
		return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "'dir' must be an absolute path on otacd's host");
	rc = backup_take(&summary, a->cfg.config->state_dir, d, local);
	if (rc < 0)
		return api_reply_rc(r, rc);
	return api_reply_json(r, MHD_HTTP_OK, summary);
}
