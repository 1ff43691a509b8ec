/*
 * api_backup.c - POST /api/v1/backup {"dir": "/abs/path"} (admin): a
 * consistent backup of the running otacd into a directory on otacd's own
 * host (backup/backup.h; docs/operations.md, "Back up and restore").
 *
 * The directory must be absolute and new or empty; otacd creates it (mode
 * 0700) as its own user.  The copy runs on this HTTP thread: one of the
 * pool's threads is busy for as long as it takes (seconds for a typical
 * state directory), the others serve on.  Each backup, taken or refused,
 * leaves an audit row (issue 18): who, when, where, how much.
 */
#include "api_int.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "../../common/log.h"
#include "../backup/backup.h"
#include "../clock.h"
#include "../config.h"
#include "../engine_int.h"

struct backup_audit {
	const char *actor, *action, *reason;
	json_t *detail; /* taken by engine_audit */
};

/* Engine thread: the audit row of a backup taken or refused. */
static int audit_backup(struct engine *e, void *arg)
{
	struct backup_audit *x = arg;
	json_t *detail = x->detail;
	x->detail = NULL;
	return engine_audit(e, x->actor, x->action, 0, 0, x->reason, detail);
}

/* Who, when (otacd time is the row's `at`; the wall clock in the detail),
 * where (this host, the directory) and how much: every backup is audited,
 * a refused one too, since a backup is a copy of every secret otacd holds.
 * The row is written after the copy, so it is not in the backup itself. */
static void backup_audited(struct api *a, struct api_req *r, const char *dir, const json_t *summary, const char *why)
{
	char host[256] = "";
	struct backup_audit x = { r->actor, summary ? "backup" : "backup_failed", summary ? "backup taken" : why, NULL };

	if (gethostname(host, sizeof(host) - 1) < 0)
		host[0] = '\0';
	x.detail = json_pack("{ss ss sI}", "dir", dir, "host", host, "real_ms", (json_int_t)clock_real_ms());
	if (summary)
		json_object_update_missing(x.detail, (json_t *)summary);
	if (engine_exec(a->cfg.engine, audit_backup, &x) < 0)
		ota_log(OTA_LOG_WARN, "audit: backup into %s: %s", dir, ota_error_last());
	json_decref(x.detail); /* NULL once engine_audit took it */
}

enum MHD_Result api_post_backup(struct api *a, struct api_req *r)
{
	json_t *dir = json_object_get(r->json, "dir"), *store = a->cfg.config->artifact_store, *summary = NULL;
	const char *backend = store ? json_string_value(json_object_get(store, "backend")) : NULL;
	int local = !backend || !strcmp(backend, "local");
	const char *d = json_string_value(dir);
	char why[512];
	int rc;

	if (!d || d[0] != '/' || strlen(d) > 1024)
		return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "'dir' must be an absolute path on otacd's host");
	/* database NULL: STATE/otacd.db; postgres://: pg_dump (docs/operations.md) */
	rc = backup_take_dbs(&summary, a->cfg.config->database, a->cfg.config->fleet_database, a->cfg.config->state_dir, d,
			     local);
	snprintf(why, sizeof(why), "%s", rc < 0 ? ota_error_last() : "");
	backup_audited(a, r, d, rc < 0 ? NULL : summary, why);
	if (rc < 0) {
		ota_error_set(rc, "%s", why); /* the audit may have set another */
		return api_reply_rc(r, rc);
	}
	return api_reply_json(r, MHD_HTTP_OK, summary);
}
