/*
 * api_rollout.c - rollouts: status, gate history, audit log, actions.
 *
 *   GET  /api/v1/rollouts                   releases rolling out now (overview)
 *   GET  /api/v1/releases/ID/rollout        its rollouts: plan, step, holds, last verdicts, fleet versions
 *   GET  /api/v1/releases/ID/gates          every stored gate evaluation (charts, otactl gates)
 *   GET  /api/v1/audit[?release=ID]         who did what, when and why
 *   POST /api/v1/releases/ID/promote        {reason, to?, skip_step?}
 *   POST /api/v1/releases/ID/rollback       {reason, reissue?}
 *   POST /api/v1/releases/ID/pause|resume   {reason}
 *
 * Actions need the operator role and a reason; they are engine calls
 * (rollout_act), so they are atomic and audited with the token's name.
 */
#include "api_int.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "../db/db.h"
#include "../gate.h"
#include "../pipeline/pipeline.h"
#include "../rollout.h"
#include "../store.h"
#include "../updsrv.h"

static const char release_head_sql[] =
	"SELECT product, version, state, security_counter, COALESCE(rollback_to,0) FROM releases WHERE id = ?";
static const char rollouts_active_sql[] =
	"SELECT ro.id, ro.release_id, rel.product, rel.version, ro.stage, ro.kind, ro.state, ro.step, ro.percent_bp,"
	" COALESCE(ro.hold_until,0), ro.reason, ro.run_id FROM rollouts ro JOIN releases rel ON rel.id = ro.release_id"
	" WHERE ro.state IN ('starting','waiting_approval','waiting_window','holding','paused') ORDER BY ro.id DESC LIMIT ?";
static const char gate_evals_sql[] =
	"SELECT g.id, g.rollout_id, ro.stage, g.step, g.gate, g.at, g.verdict, g.detail FROM gate_evals g"
	" JOIN rollouts ro ON ro.id = g.rollout_id WHERE ro.release_id = ? AND g.id > ? ORDER BY g.id LIMIT 5000";
static const char audit_sql[] =
	"SELECT a.id, a.at, a.actor, a.action, a.release_id, rel.version, a.rollout_id, a.reason, a.detail FROM audit a"
	" LEFT JOIN releases rel ON rel.id = a.release_id WHERE (? < 0 OR a.release_id = ?) ORDER BY a.id DESC LIMIT ?";

/* Devices of product the update server knows (0: unknown). */
static int64_t fleet_size(struct api *a, const char *product)
{
	json_t *v = a->cfg.updsrv ? a->cfg.updsrv->versions(a->cfg.updsrv, product, NULL) : NULL, *n;
	const char *k;
	int64_t total = 0;
	json_object_foreach(v, k, n)
		total += json_integer_value(n);
	json_decref(v);
	return total;
}

void api_lint_gate_sizing(struct api *a, const struct pipeline *p, struct strvec *w)
{
	const char *product = p->name;
	int64_t fleet;

	for (size_t i = 0; i < p->nstages; i++)
		if (!strcmp(p->stages[i].kind, "release") && json_is_string(json_object_get(p->stages[i].extra, "product")))
			product = json_string_value(json_object_get(p->stages[i].extra, "product"));
	fleet = product ? fleet_size(a, product) : 0;
	for (size_t i = 0; i < p->nstages; i++) {
		const struct pl_stage *st = &p->stages[i];
		const json_t *steps = json_object_get(st->extra, "steps"), *name;
		size_t gi;
		if (strcmp(st->kind, "soak") != 0 && strcmp(st->kind, "rollout") != 0)
			continue;
		json_array_foreach(json_object_get(st->extra, "gates"), gi, name) {
			struct gate_spec g;
			char err[256];
			int64_t need;
			size_t si;
			const json_t *s;
			if (!json_is_string(name) ||
			    gate_spec_parse(json_object_get(p->gates, json_string_value(name)), json_string_value(name), &g, err,
					    sizeof(err)) < 0) {
				gate_spec_release(&g);
				continue;
			}
			need = gate_min_sample(&g);
			if (need < 0) {
				strvec_pushf(w, "stage '%s': gate '%s' can never pass: no sample proves its bound at alpha %g",
					     st->name, g.name, g.alpha);
			} else if (fleet > 0 && !json_array_size(steps)) {
				if (fleet < need)
					strvec_pushf(w, "stage '%s': gate '%s' needs at least %" PRId64 " devices (or boots), all"
						     " perfect, to pass; %s has %" PRId64 " devices in all: it cannot pass"
						     " (docs/rollout.md, \"Sizing gates\")", st->name, g.name, need, product, fleet);
			} else if (fleet > 0) {
				json_array_foreach(steps, si, s) {
					double pct = json_number_value(json_object_get(s, "percent"));
					int64_t expect = (int64_t)((double)fleet * pct / 100.0);
					if (expect >= need)
						continue;
					strvec_pushf(w, "stage '%s' step %zu (%g %%): gate '%s' needs at least %" PRId64 " devices"
						     " (or boots), all perfect, to pass; the step exposes about %" PRId64 " of %s's"
						     " %" PRId64 " devices: it cannot pass there (docs/rollout.md, \"Sizing gates\")",
						     st->name, si + 1, pct, g.name, need, expect, product, fleet);
				}
			}
			gate_spec_release(&g);
		}
	}
}

enum MHD_Result api_get_rollout(struct api *a, struct api_req *r)
{
	struct store *db = store_reader();
	struct db_stmt *st;
	json_t *out, *list;
	char product[256] = "", version[64] = "", state[32] = "";
	int64_t counter = 0, rollback_to = 0;
	int rc;

	if (!db || api_snapshot_begin(db) < 0)
		return api_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "database unavailable");
	/* the release and its rollouts from one snapshot */
	if (!(st = store_q(db, release_head_sql))) {
		api_snapshot_end(db);
		return api_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "database unavailable");
	}
	db_bind_int64(st, 1, r->id);
	if ((rc = db_step(st)) == 1) {
		snprintf(product, sizeof(product), "%s", db_column_text(st, 0));
		snprintf(version, sizeof(version), "%s", db_column_text(st, 1));
		snprintf(state, sizeof(state), "%s", db_column_text(st, 2));
		counter = db_column_int64(st, 3);
		rollback_to = db_column_int64(st, 4);
	}
	db_reset(st);
	list = rc == 1 ? rollout_status(db, r->id) : NULL;
	api_snapshot_end(db);
	if (rc != 1)
		return api_reply_error(r, MHD_HTTP_NOT_FOUND, "release %" PRId64 " not found", r->id);
	out = json_pack("{sI ss ss ss sI sI so}", "release", (json_int_t)r->id, "product", product, "version", version,
			"state", state, "security_counter", (json_int_t)counter, "rollback_to", (json_int_t)rollback_to,
			"rollouts", list ? list : json_array());
	if (a->cfg.updsrv) {
		struct fleet_agg agg;
		json_t *versions = a->cfg.updsrv->versions(a->cfg.updsrv, product, NULL);
		if (versions)
			json_object_set_new(out, "fleet_versions", versions);
		if (a->cfg.updsrv->metrics(a->cfg.updsrv, product, version, "*", NULL, &agg, NULL) == 0)
			json_object_set_new(out, "fleet",
					    json_pack("{sI sI sI sI sI sI sI sI sI sI sf}", "devices", (json_int_t)agg.devices,
						      "offered", (json_int_t)agg.offered, "downloads", (json_int_t)agg.downloads,
						      "installs", (json_int_t)agg.installs, "confirmed", (json_int_t)agg.boot_ok,
						      "boot_failed", (json_int_t)agg.boot_fail, "reverted", (json_int_t)agg.reverts,
						      "reporting", (json_int_t)agg.reporting, "crashed", (json_int_t)agg.crashed,
						      "crashes", (json_int_t)agg.crashes, "device_hours", agg.device_hours));
	}
	return api_reply_json(r, MHD_HTTP_OK, out);
}

enum MHD_Result api_get_rollouts(struct api *a, struct api_req *r)
{
	struct store *db = store_reader();
	struct db_stmt *st;
	json_t *out;
	int64_t limit;

	(void)a;
	if (api_list_limit(r, 100, &limit) < 0)
		return MHD_YES;
	out = json_array();
	if (!db || !(st = store_q(db, rollouts_active_sql))) {
		json_decref(out);
		return api_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "database unavailable");
	}
	db_bind_int64(st, 1, limit);
	while (db_step(st) == 1)
		json_array_append_new(out, json_pack("{sI sI ss ss ss ss ss si si sI so? sI}", "id", (json_int_t)db_column_int64(st, 0),
						     "release", (json_int_t)db_column_int64(st, 1), "product",
						     db_column_text(st, 2), "version", db_column_text(st, 3), "stage",
						     db_column_text(st, 4), "kind", db_column_text(st, 5), "state",
						     db_column_text(st, 6), "step", (int)db_column_int64(st, 7), "percent_bp",
						     (int)db_column_int64(st, 8), "hold_until", (json_int_t)db_column_int64(st, 9),
						     "reason", db_column_text(st, 10) ? json_string(db_column_text(st, 10)) : NULL,
						     "run", (json_int_t)db_column_int64(st, 11)));
	db_reset(st);
	return api_reply_json(r, MHD_HTTP_OK, out);
}

enum MHD_Result api_get_gates(struct api *a, struct api_req *r)
{
	struct store *db = store_reader();
	struct db_stmt *st;
	json_t *out = json_array();
	int64_t after = api_query_int(r, "after");

	(void)a;
	if (!db || !(st = store_q(db, gate_evals_sql))) {
		json_decref(out);
		return api_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "database unavailable");
	}
	db_bind_int64(st, 1, r->id);
	db_bind_int64(st, 2, after > 0 ? after : 0);
	while (db_step(st) == 1) {
		json_t *d = json_loads(db_column_text(st, 7), 0, NULL);
		json_array_append_new(out, json_pack("{sI sI ss si ss sI ss so}", "id", (json_int_t)db_column_int64(st, 0),
						     "rollout", (json_int_t)db_column_int64(st, 1), "stage", db_column_text(st, 2),
						     "step", (int)db_column_int64(st, 3), "gate", db_column_text(st, 4), "at",
						     (json_int_t)db_column_int64(st, 5), "verdict", db_column_text(st, 6),
						     "eval", d ? d : json_null()));
	}
	db_reset(st);
	return api_reply_json(r, MHD_HTTP_OK, out);
}

enum MHD_Result api_get_audit(struct api *a, struct api_req *r)
{
	struct store *db = store_reader();
	struct db_stmt *st;
	json_t *out = json_array();
	int64_t release = api_query_int(r, "release"), limit;

	(void)a;
	if (release == -2) {
		json_decref(out);
		return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "release must be a number");
	}
	if (api_list_limit(r, 500, &limit) < 0) {
		json_decref(out);
		return MHD_YES;
	}
	if (!db || !(st = store_q(db, audit_sql))) {
		json_decref(out);
		return api_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "database unavailable");
	}
	db_bind_int64(st, 1, release);
	db_bind_int64(st, 2, release);
	db_bind_int64(st, 3, limit);
	while (db_step(st) == 1) {
		json_t *d = db_column_text(st, 8) ? json_loads(db_column_text(st, 8), 0, NULL) : NULL;
		json_array_append_new(out, json_pack("{sI sI ss ss so? so? so? ss so}", "id", (json_int_t)db_column_int64(st, 0),
						     "at", (json_int_t)db_column_int64(st, 1), "actor", db_column_text(st, 2),
						     "action", db_column_text(st, 3), "release", db_column_type(st, 4) == DB_NULL ? NULL
								: json_integer(db_column_int64(st, 4)),
						     "version", db_column_text(st, 5) ? json_string(db_column_text(st, 5)) : NULL,
						     "rollout", db_column_type(st, 6) == DB_NULL ? NULL
								: json_integer(db_column_int64(st, 6)),
						     "reason", db_column_text(st, 7) ? db_column_text(st, 7) : "",
						     "detail", d ? d : json_null()));
	}
	db_reset(st);
	return api_reply_json(r, MHD_HTTP_OK, out);
}

enum MHD_Result api_post_rollout_action(struct api *a, struct api_req *r)
{
	const char *verb = strrchr(r->url, '/') + 1;
	struct rollout_action act = { 0 };
	json_t *detail = NULL, *x;
	int rc;

	act.action = verb;
	act.release_id = r->id;
	act.actor = r->actor[0] ? r->actor : "unknown";
	act.reason = json_string_value(json_object_get(r->json, "reason"));
	if ((x = json_object_get(r->json, "to")) && !json_is_string(x))
		return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "to must be a stage name");
	act.to_stage = json_string_value(x);
	act.skip_step = json_is_true(json_object_get(r->json, "skip_step"));
	act.reissue = json_is_true(json_object_get(r->json, "reissue"));
	if (!act.reason || !*act.reason)
		return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "a reason is required: {\"reason\": \"...\"}");
	if ((rc = rollout_act(a->cfg.engine, &act, &detail)) < 0)
		return api_reply_rc(r, rc);
	return api_reply_json(r, MHD_HTTP_OK, detail ? detail : json_object());
}

/* Every statement this file prepares (tests/test_dbconv_read.c prepares
 * each on PostgreSQL too); rollout_status() is rollout_ctl.c's. */
void api_rollout_sql_each(void (*fn)(const char *sql, void *arg), void *arg)
{
	fn(release_head_sql, arg);
	fn(rollouts_active_sql, arg);
	fn(gate_evals_sql, arg);
	fn(audit_sql, arg);
}
