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

#include "../gate.h"
#include "../pipeline/pipeline.h"
#include "../rollout.h"
#include "../updsrv.h"

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
	sqlite3_stmt *st;
	json_t *out, *list;
	char product[256] = "", version[64] = "", state[32] = "";
	int64_t counter = 0, rollback_to = 0;
	int rc;

	if (!db || !(st = store_stmt(db, "SELECT product, version, state, security_counter, COALESCE(rollback_to,0)"
					 " FROM releases WHERE id = ?")))
		return api_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "database unavailable");
	sqlite3_bind_int64(st, 1, r->id);
	if ((rc = store_step_row(db, st)) == 1) {
		snprintf(product, sizeof(product), "%s", store_col_text(st, 0));
		snprintf(version, sizeof(version), "%s", store_col_text(st, 1));
		snprintf(state, sizeof(state), "%s", store_col_text(st, 2));
		counter = store_col_int(st, 3);
		rollback_to = store_col_int(st, 4);
	}
	sqlite3_reset(st);
	if (rc != 1)
		return api_reply_error(r, MHD_HTTP_NOT_FOUND, "release %" PRId64 " not found", r->id);
	list = rollout_status(db, r->id);
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
	sqlite3_stmt *st;
	json_t *out;
	int64_t limit;

	(void)a;
	if (api_list_limit(r, 100, &limit) < 0)
		return MHD_YES;
	out = json_array();
	if (!db || !(st = store_stmt(db, "SELECT ro.id, ro.release_id, rel.product, rel.version, ro.stage, ro.kind, ro.state,"
					 " ro.step, ro.percent_bp, COALESCE(ro.hold_until,0), ro.reason, ro.run_id"
					 " FROM rollouts ro JOIN releases rel ON rel.id = ro.release_id"
					 " WHERE ro.state IN ('starting','waiting_approval','waiting_window','holding','paused')"
					 " ORDER BY ro.id DESC LIMIT ?"))) {
		json_decref(out);
		return api_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "database unavailable");
	}
	sqlite3_bind_int64(st, 1, limit);
	while (store_step_row(db, st) == 1)
		json_array_append_new(out, json_pack("{sI sI ss ss ss ss ss si si sI so? sI}", "id", (json_int_t)store_col_int(st, 0),
						     "release", (json_int_t)store_col_int(st, 1), "product",
						     store_col_text(st, 2), "version", store_col_text(st, 3), "stage",
						     store_col_text(st, 4), "kind", store_col_text(st, 5), "state",
						     store_col_text(st, 6), "step", (int)store_col_int(st, 7), "percent_bp",
						     (int)store_col_int(st, 8), "hold_until", (json_int_t)store_col_int(st, 9),
						     "reason", store_col_text(st, 10) ? json_string(store_col_text(st, 10)) : NULL,
						     "run", (json_int_t)store_col_int(st, 11)));
	sqlite3_reset(st);
	return api_reply_json(r, MHD_HTTP_OK, out);
}

enum MHD_Result api_get_gates(struct api *a, struct api_req *r)
{
	struct store *db = store_reader();
	sqlite3_stmt *st;
	json_t *out = json_array();
	int64_t after = api_query_int(r, "after");

	(void)a;
	if (!db || !(st = store_stmt(db, "SELECT g.id, g.rollout_id, ro.stage, g.step, g.gate, g.at, g.verdict, g.detail"
					 " FROM gate_evals g JOIN rollouts ro ON ro.id = g.rollout_id"
					 " WHERE ro.release_id = ? AND g.id > ? ORDER BY g.id LIMIT 5000"))) {
		json_decref(out);
		return api_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "database unavailable");
	}
	sqlite3_bind_int64(st, 1, r->id);
	sqlite3_bind_int64(st, 2, after > 0 ? after : 0);
	while (store_step_row(db, st) == 1) {
		json_t *d = json_loads(store_col_text(st, 7), 0, NULL);
		json_array_append_new(out, json_pack("{sI sI ss si ss sI ss so}", "id", (json_int_t)store_col_int(st, 0),
						     "rollout", (json_int_t)store_col_int(st, 1), "stage", store_col_text(st, 2),
						     "step", (int)store_col_int(st, 3), "gate", store_col_text(st, 4), "at",
						     (json_int_t)store_col_int(st, 5), "verdict", store_col_text(st, 6),
						     "eval", d ? d : json_null()));
	}
	sqlite3_reset(st);
	return api_reply_json(r, MHD_HTTP_OK, out);
}

enum MHD_Result api_get_audit(struct api *a, struct api_req *r)
{
	struct store *db = store_reader();
	sqlite3_stmt *st;
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
	if (!db || !(st = store_stmt(db, "SELECT a.id, a.at, a.actor, a.action, a.release_id, rel.version, a.rollout_id,"
					 " a.reason, a.detail FROM audit a LEFT JOIN releases rel ON rel.id = a.release_id"
					 " WHERE (? < 0 OR a.release_id = ?) ORDER BY a.id DESC LIMIT ?"))) {
		json_decref(out);
		return api_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "database unavailable");
	}
	sqlite3_bind_int64(st, 1, release);
	sqlite3_bind_int64(st, 2, release);
	sqlite3_bind_int64(st, 3, limit);
	while (store_step_row(db, st) == 1) {
		json_t *d = store_col_text(st, 8) ? json_loads(store_col_text(st, 8), 0, NULL) : NULL;
		json_array_append_new(out, json_pack("{sI sI ss ss so? so? so? ss so}", "id", (json_int_t)store_col_int(st, 0),
						     "at", (json_int_t)store_col_int(st, 1), "actor", store_col_text(st, 2),
						     "action", store_col_text(st, 3), "release", sqlite3_column_type(st, 4) == SQLITE_NULL ? NULL
								: json_integer(store_col_int(st, 4)),
						     "version", store_col_text(st, 5) ? json_string(store_col_text(st, 5)) : NULL,
						     "rollout", sqlite3_column_type(st, 6) == SQLITE_NULL ? NULL
								: json_integer(store_col_int(st, 6)),
						     "reason", store_col_text(st, 7) ? store_col_text(st, 7) : "",
						     "detail", d ? d : json_null()));
	}
	sqlite3_reset(st);
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
