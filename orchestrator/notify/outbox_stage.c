/*
 * outbox_stage.c - per-stage commit statuses (docs/notifications.md, "Per
 * stage"): one status context per stage of a run, next to the run's own,
 * as GitLab shows each job and GitHub each check.
 *
 * Opt-in per repository (`status: { per_stage: true }`): each stage costs
 * two more forge requests per run, and GitHub limits how many statuses a
 * token may create, so a repository that wants them says so.
 *
 * Like the run's status, each stage event is one `outbox` row written by
 * the engine thread inside the transaction that changed the stage: a stage
 * recorded as passed has its row, a change that rolls back has none.  The
 * sender (outbox.c) and notify_send.c deliver it; the row's payload is the
 * run's ("run": {...}) plus "stage": {name, state, description}.
 *
 * Which stage changes post a status:
 *   running                  pending (GitLab running)
 *   passed                   success
 *   failed                   failure (GitLab failed)
 *   canceled                 error (GitLab canceled), only for a stage that
 *                            had started: a stage that never ran has no context
 *   skipped                  nothing: the stage never ran
 *   a rollout or soak step   pending again, "holding, step 2/4 (5%)", when
 *                            the rollout starts (step 1), a step is
 *                            promoted, or the rollout pauses
 * Stage events go to the forge only, never to webhook targets.
 */
#include "notify_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../common/util.h"
#include "../clock.h"
#include "../db/db.h"
#include "../engine_int.h"
#include "../store.h"

/* storage layer (store_q); each prepared on PostgreSQL too by tests/test_dbconv_stagestatus.c */
const char stage_sql_run[] = "SELECT pipeline, ref, commit_id, repo FROM runs WHERE id = ?";
const char stage_sql_running[] = "SELECT name FROM stages WHERE run_id = ? AND state = 'running' ORDER BY idx";
const char stage_sql_rollout[] = "SELECT run_id, stage, step, percent_bp, state, spec, reason"
					" FROM rollouts WHERE id = ?";

/* The forge of run_id's repository when it wants per-stage statuses, with
 * the run's part of the payload (new ref) in *run; NULL when none. */
static const struct forge_status *stage_forge(struct engine *e, int64_t run_id, json_t **run)
{
	const struct notify *n = notify_current();
	struct db_stmt *st;
	const struct forge_status *f = NULL;
	const char *repo, *commit;

	*run = NULL;
	if (!notify_any_per_stage(n) || !(st = store_q(engine_store(e), stage_sql_run)))
		return NULL;
	db_bind_int64(st, 1, run_id);
	if (db_step(st) == 1) {
		repo = db_column_text(st, 3);
		commit = db_column_text(st, 2);
		f = repo ? notify_forge_find(n, repo) : NULL;
		if (f && f->per_stage && commit) {
			*run = json_pack("{sI ss ss ss ss}", "id", (json_int_t)run_id, "pipeline", db_column_text(st, 0),
					 "ref", db_column_text(st, 1) ? db_column_text(st, 1) : "", "commit", commit,
					 "repo", repo);
			if (n->public_url)
				json_object_set_new(*run, "url",
						    json_sprintf("%s/#/runs/%lld", n->public_url, (long long)run_id));
		}
	}
	db_reset(st);
	return *run ? f : NULL;
}

/* One outbox row for f: event "stage.<state>", payload {event, at, id, run, stage}. */
static int stage_insert(struct engine *e, const struct forge_status *f, json_t *run, const char *stage,
			const char *state, const char *description)
{
	char delivery[33], event[32];
	char *target, *text;
	int64_t now = clock_real_ms();
	json_t *payload;
	int rc;

	if (ota_random_hex(delivery, 16) < 0)
		return OTA_ERROR;
	snprintf(event, sizeof(event), "stage.%s", state);
	payload = json_pack("{ss sI ss sO s{ss ss ss*}}", "event", event, "at", (json_int_t)now, "id", delivery, "run", run,
			    "stage", "name", stage, "state", state, "description", description);
	text = json_dumps(payload, JSON_COMPACT | JSON_SORT_KEYS);
	target = xasprintf("status:%s", f->repo);
	rc = outbox_store_add(engine_store(e), delivery, target, event, text, now);
	free(target);
	free(text);
	json_decref(payload);
	return rc < 0 ? rc : 0;
}

int outbox_stage_event(struct engine *e, int64_t run_id, const char *stage, const char *state)
{
	const struct forge_status *f;
	json_t *run;
	int rc;

	if (strcmp(state, "running") && strcmp(state, "passed") && strcmp(state, "failed") && strcmp(state, "canceled"))
		return 0;
	if (!(f = stage_forge(e, run_id, &run)))
		return 0;
	rc = stage_insert(e, f, run, stage, state, NULL);
	json_decref(run);
	return rc;
}

int outbox_stage_cancel(struct engine *e, int64_t run_id)
{
	struct db_stmt *st;
	const struct forge_status *f;
	json_t *run, *names = json_array(), *name;
	size_t i;
	int rc = 0;

	if (!(f = stage_forge(e, run_id, &run)))
		goto out;
	if (!(st = store_q(engine_store(e), stage_sql_running))) {
		rc = OTA_ERROR;
		goto out;
	}
	/* read first, insert after: one statement at a time on the connection */
	db_bind_int64(st, 1, run_id);
	while ((rc = db_step(st)) == 1)
		json_array_append_new(names, json_string(db_column_text(st, 0)));
	db_reset(st);
	json_array_foreach(names, i, name) {
		if (rc < 0)
			break;
		rc = stage_insert(e, f, run, json_string_value(name), "canceled", NULL);
	}
out:
	json_decref(run);
	json_decref(names);
	return rc < 0 ? rc : 0;
}

int outbox_stage_rollout(struct engine *e, const char *action, int64_t rollout_id)
{
	struct db_stmt *st;
	const struct forge_status *f = NULL;
	json_t *run = NULL, *spec = NULL;
	char *stage = NULL, *desc = NULL;
	int64_t run_id = 0;
	int rc, pause = !strcmp(action, "pause");

	/* start: the first step holds too, so every step has its status */
	if ((!pause && strcmp(action, "promote") && strcmp(action, "start")) || !notify_current())
		return 0;
	if (!(st = store_q(engine_store(e), stage_sql_rollout)))
		return OTA_ERROR;
	db_bind_int64(st, 1, rollout_id);
	if ((rc = db_step(st)) == 1 && strcmp(db_column_text(st, 4), "passed") && strcmp(db_column_text(st, 4), "completed")) {
		int64_t step = db_column_int64(st, 2), bp = db_column_int64(st, 3);
		const char *reason = db_column_text(st, 6);
		run_id = db_column_int64(st, 0);
		stage = xstrdup(db_column_text(st, 1));
		spec = json_loads(db_column_text(st, 5), 0, NULL);
		/* forges cut descriptions at 140 characters (GitHub): keep it short */
		desc = xasprintf("%s, step %lld/%zu (%lld.%02lld%%)%s%.60s", pause ? "paused" : "holding",
				 (long long)step + 1, json_array_size(json_object_get(spec, "plan")), (long long)(bp / 100),
				 (long long)(bp % 100), pause && reason && *reason ? ": " : "",
				 pause && reason ? reason : "");
	}
	db_reset(st);
	if (rc < 0)
		goto out;
	rc = 0;
	if (stage && (f = stage_forge(e, run_id, &run)))
		rc = stage_insert(e, f, run, stage, "running", desc);
out:
	json_decref(run);
	json_decref(spec);
	free(stage);
	free(desc);
	return rc;
}
