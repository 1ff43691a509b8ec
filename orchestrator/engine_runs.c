/*
 * engine_runs.c - making runs and ending them early.
 *
 * Why apart from engine.c: these commands create and cancel runs rather
 * than move them; they are what the webhook, the API and otactl call.
 *
 * How it works.  engine_trigger parses the pipeline and builds the run plan
 * (stages and their expanded jobs) in the caller's thread, checks it
 * against the release policy, then inserts the run, its stages and jobs
 * on the engine thread in one transaction and advances it.  A push that
 * cannot start a run is still answered by a failed run
 * (engine_record_failed_run), and a refusal by the policy is audited.
 * Webhook deliveries are recorded once per provider and delivery id, and
 * closed by the run they caused.  A cancel finishes queued and running
 * jobs at once; agents holding one learn it on their next heartbeat.
 *
 * The SQL runs through the storage layer (docs/storage.md): ids come from
 * INSERT ... RETURNING id.  The table work of a run and of a delivery
 * (runs_store_insert, runs_store_delivery_add) takes a store, not the
 * engine, so tests/test_dbconv_runs.c runs it on SQLite and PostgreSQL.
 */
#include "engine.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "config.h"
#include "db/db.h"
#include "gate.h"
#include "engine_core.h"
#include "notify/notify.h"
#include "policy.h"
#include "rollout.h"

/* ---- commands -------------------------------------------------------------- */

/* Step an INSERT ... RETURNING id and read the id. */
static int step_insert_id(struct db_stmt *st, int64_t *id)
{
	int rc = db_step(st);
	if (rc == 1)
		*id = db_column_int64(st, 0);
	db_reset(st);
	if (rc == 0)
		return ota_error_set(OTA_ERROR, "INSERT ... RETURNING id returned no row");
	return rc < 0 ? rc : 0;
}

int runs_store_insert(struct store *s, const struct trigger_req *req, const struct policy_trust *trust,
		      const char *name, const char *concurrency, const char *state, const char *error, int64_t now,
		      int64_t *run_id)
{
	struct db_stmt *st;
	int rc;

	st = store_q(s, "INSERT INTO runs(pipeline, file, yaml, ref, commit_id, state, concurrency, trigger, created_at,"
			" started_at, finished_at, error, repo, tree_id, author, committer, message, pusher, delivery_id,"
			" protected, trust_reason) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) RETURNING id");
	if (!st)
		return OTA_ERROR;
	/* unset parameters (and NULL text) stay NULL */
	db_bind_text(st, 1, name);
	db_bind_text(st, 2, req->file);
	db_bind_text_n(st, 3, req->yaml ? req->yaml : "", req->yaml ? req->len : 0);
	db_bind_text(st, 4, req->ref);
	db_bind_text(st, 5, req->commit);
	db_bind_text(st, 6, state);
	db_bind_text(st, 7, concurrency);
	db_bind_text(st, 8, req->trigger);
	db_bind_int64(st, 9, now);
	if (engine_state_final(state)) {
		db_bind_int64(st, 10, now);
		db_bind_int64(st, 11, now);
	}
	db_bind_text(st, 12, error);
	db_bind_text(st, 13, req->repo);
	db_bind_text(st, 14, req->tree);
	db_bind_text(st, 15, req->author);
	db_bind_text(st, 16, req->committer);
	db_bind_text(st, 17, req->message);
	db_bind_text(st, 18, req->pusher);
	if (req->delivery_id)
		db_bind_int64(st, 19, req->delivery_id);
	db_bind_int64(st, 20, trust->protected_run);
	db_bind_text(st, 21, trust->reason);
	if ((rc = step_insert_id(st, run_id)) < 0)
		return rc;
	if (req->pr_number > 0) { /* issue 17: which request this run checks */
		if (!(st = store_q(s, "UPDATE runs SET pr_number = ?, pr_base = ? WHERE id = ?")))
			return OTA_ERROR;
		db_bind_int64(st, 1, req->pr_number);
		db_bind_text(st, 2, req->pr_base);
		db_bind_int64(st, 3, *run_id);
		if ((rc = db_run(st)) < 0)
			return rc;
	}
	if (req->delivery_id) {
		if (!(st = store_q(s, "UPDATE deliveries SET state = 'done', run_id = ? WHERE id = ?")))
			return OTA_ERROR;
		db_bind_int64(st, 1, *run_id);
		db_bind_int64(st, 2, req->delivery_id);
		if ((rc = db_run(st)) < 0)
			return rc;
	}
	return 0;
}

/* Insert a run row, close the delivery it answers, if any, and tell. */
static int insert_run(struct engine *e, const struct trigger_req *req, const struct policy_trust *trust,
		      const char *name, const char *concurrency, const char *state, const char *error, int64_t *run_id)
{
	int rc;

	if ((rc = runs_store_insert(e->db, req, trust, name, concurrency, state, error, clock_now_ms(), run_id)) < 0)
		return rc;
	eng_event(e, *run_id, 0, "run.created", json_pack("{ss ss ss ss*}", "pipeline", name, "ref", req->ref,
						      "trigger", req->trigger, "commit", req->commit));
	if (engine_state_final(state)) {
		eng_event(e, *run_id, 0, "run.final", json_pack("{ss ss*}", "state", state, "error", error));
		e->changed_state = 1;
	}
	return 0;
}

struct trigger_args {
	const struct trigger_req *req;
	const struct pipeline *p;
	json_t *plan;       /* [{name, kind, needs, skip, skip_reason?, jobs:[spec…]}] */
	struct policy_trust trust;
	int64_t run_id;
};

/* Insert stage number idx of a run's plan and its jobs; a stage the
 * policy holds back adds its name to held. */
static int insert_stage(struct engine *e, int64_t run_id, size_t idx, json_t *stage, json_t *held)
{
	const char *skip_reason = json_string_value(json_object_get(stage, "skip_reason"));
	char *needs = json_dumps(json_object_get(stage, "needs"), JSON_COMPACT);
	struct db_stmt *st;
	int64_t stage_id;
	json_t *job;
	size_t k;
	int rc;

	st = store_q(e->db, "INSERT INTO stages(run_id, idx, name, kind, state, needs, when_filter)"
			    " VALUES (?,?,?,?, 'queued', ?, ?) RETURNING id");
	if (!st) {
		free(needs);
		return OTA_ERROR;
	}
	db_bind_int64(st, 1, run_id);
	db_bind_int64(st, 2, (int64_t)idx);
	db_bind_text(st, 3, json_string_value(json_object_get(stage, "name")));
	db_bind_text(st, 4, json_string_value(json_object_get(stage, "kind")));
	db_bind_text(st, 5, needs);
	free(needs);
	if (skip_reason) {
		/* skipped by the release policy: the reason is the filter */
		db_bind_text(st, 6, skip_reason);
		json_array_append(held, json_object_get(stage, "name"));
	} else if (json_is_true(json_object_get(stage, "skip"))) {
		db_bind_text(st, 6, "no-match");
	}
	if ((rc = step_insert_id(st, &stage_id)) < 0)
		return rc;

	json_array_foreach(json_object_get(stage, "jobs"), k, job) {
		json_t *retry = json_object_get(job, "retry");
		char *spec;

		st = store_q(e->db, "INSERT INTO jobs(run_id, stage_id, idx, name, spec, state, retries_left,"
				    " infra_retries_left) VALUES (?,?,?,?,?, 'queued', ?, ?)");
		if (!st)
			return OTA_ERROR;
		spec = json_dumps(job, JSON_COMPACT);
		db_bind_int64(st, 1, run_id);
		db_bind_int64(st, 2, stage_id);
		db_bind_int64(st, 3, (int64_t)k);
		db_bind_text(st, 4, json_string_value(json_object_get(job, "name")));
		db_bind_text(st, 5, spec);
		free(spec);
		db_bind_int64(st, 6, (int)json_integer_value(json_object_get(retry, "count")));
		db_bind_int64(st, 7, json_object_get(retry, "infra") ? (int)json_integer_value(json_object_get(retry, "infra"))
								     : 2);
		if ((rc = db_run(st)) < 0)
			return rc;
	}
	return 0;
}

static int do_trigger(struct engine *e, void *arg)
{
	struct trigger_args *a = arg;
	size_t i;
	json_t *stage, *held = json_array();
	int rc;

	if ((rc = insert_run(e, a->req, &a->trust, a->p->name, a->p->concurrency, "queued", NULL, &a->run_id)) < 0) {
		json_decref(held);
		return rc;
	}
	ota_log_ctx_work(a->run_id, 0); /* lines about this trigger carry its run (run_call resets it) */

	json_array_foreach(a->plan, i, stage) {
		if ((rc = insert_stage(e, a->run_id, i, stage, held)) < 0) {
			json_decref(held);
			return rc;
		}
	}
	/* stages the policy holds back are refusals too: audited */
	if (json_array_size(held) &&
	    (rc = engine_audit(e, a->req->actor ? a->req->actor : a->req->pusher ? a->req->pusher : "otacd",
			       "policy_skip", 0, 0, a->trust.reason,
			       json_pack("{sI ss ss* sO}", "run", (json_int_t)a->run_id, "ref", a->req->ref, "repo",
					 a->req->repo, "stages", held))) < 0) {
		json_decref(held);
		return rc;
	}
	json_decref(held);
	return eng_advance_run(e, a->run_id);
}

/* Build the run plan in the caller's thread: parsing and expansion need no
 * engine state and should not hold up the engine thread. */
static int build_plan(struct engine *e, const struct pipeline *p, const char *ref, const struct policy_trust *trust,
		      json_t **out, struct pl_diags *diags)
{
	json_t *plan = json_array();
	int rc = 0;

	if (p->gates && e->cfg.config) {
		/* gates name providers of the server config (docs/security.md, outbound requests) */
		const char *gname;
		json_t *gv;
		json_object_foreach(p->gates, gname, gv) {
			struct gate_spec g;
			char err[256];
			if (gate_spec_parse(gv, gname, &g, err, sizeof(err)) == 0 &&
			    gate_provider_check(&g, e->cfg.config->providers, e->cfg.config->prometheus_url) < 0) {
				snprintf(err, sizeof(err), "%s", ota_error_last());
				pl_diag_add(diags, (struct pl_pos){ 1, 1 }, "%s", err); /* gates keep no position */
			}
			gate_spec_release(&g);
		}
	}
	for (size_t i = 0; i < p->nstages; i++) {
		const struct pl_stage *s = &p->stages[i];
		json_t *jobs = NULL, *needs = json_array(), *job;
		size_t k;

		for (size_t n = 0; n < s->secrets.n; n++) {
			if (!e->cfg.secrets || !json_object_get(e->cfg.secrets, s->secrets.v[n]))
				pl_diag_add(diags, s->pos, "stage '%s' uses secret '%s', which is not defined in otacd's configuration",
					    s->name, s->secrets.v[n]);
		}
		if ((rc = pipeline_expand_stage(p, s, &jobs)) < 0) {
			pl_diag_add(diags, s->pos, "%s", ota_error_last());
			json_decref(needs);
			continue;
		}
		json_array_foreach(jobs, k, job) {
			json_t *t = json_object_get(job, "timeout_ms");
			if (!t || json_integer_value(t) <= 0)
				json_object_set_new(job, "timeout_ms", json_integer(e->cfg.default_timeout_ms));
			json_object_set_new(job, "stage", json_string(s->name));
			policy_apply_job(e->cfg.config, p, s, job);
		}
		for (size_t n = 0; n < s->needs.n; n++)
			json_array_append_new(needs, json_string(s->needs.v[n]));
		json_array_append_new(plan, json_pack("{ss ss so sb so}", "name", s->name, "kind", s->kind,
						      "needs", needs, "skip",
						      s->when.set && !pipeline_filter_match(&s->when, ref), "jobs", jobs));
		if (!trust->protected_run && s->kind &&
		    (!strcmp(s->kind, "release") || !strcmp(s->kind, "soak") || !strcmp(s->kind, "rollout"))) {
			char *why = xasprintf("not a protected run: %s", trust->reason);
			json_object_set_new(json_array_get(plan, json_array_size(plan) - 1), "skip_reason", json_string(why));
			free(why);
		}
	}
	if (diags->n) {
		json_decref(plan);
		return OTA_EINVAL;
	}
	*out = plan;
	return 0;
}

/* A trigger request with its defaults filled in. */
static struct trigger_req trigger_defaults(const struct trigger_req *req)
{
	struct trigger_req r = *req;
	if (!r.ref || !*r.ref)
		r.ref = "refs/heads/main";
	if (!r.trigger)
		r.trigger = "api";
	if (!r.file)
		r.file = "pipeline.yml";
	return r;
}

struct refusal_args {
	const struct trigger_req *req;
	const struct pl_diags *diags;
	const char *trust;
};

/* A pipeline refused by the release policy: the audit log says who, what, why. */
static int do_refusal(struct engine *e, void *arg)
{
	struct refusal_args *a = arg;
	struct buf text = BUF_INIT;
	int rc;

	pl_diags_format(a->diags, &text);
	rc = engine_audit(e, a->req->actor ? a->req->actor : a->req->pusher ? a->req->pusher : "otacd", "policy_refused",
			  0, 0, buf_cstr(&text),
			  json_pack("{ss ss* ss ss* ss}", "ref", a->req->ref, "repo", a->req->repo, "trigger",
				    a->req->trigger, "commit", a->req->commit, "trust", a->trust));
	buf_release(&text);
	return rc;
}

int engine_trigger(struct engine *e, const struct trigger_req *req, int64_t *run_id, struct pl_diags *diags)
{
	struct trigger_req r = trigger_defaults(req);
	struct pipeline *p = NULL;
	struct trigger_args a = { &r, NULL, NULL, { 0, "" }, 0 };
	int rc;

	if ((rc = pipeline_parse(&p, r.file, r.yaml, r.len, diags)) < 0)
		return ota_error_set(OTA_EINVAL, "%s: pipeline does not validate", r.file);
	a.p = p;
	policy_trust(e->cfg.config, r.repo, r.ref, r.trigger, r.role, r.actor, &a.trust);
	if (a.trust.protected_run && policy_check_pipeline(e->cfg.config, store_reader(), p, r.repo, r.ref, r.trigger,
									diags) > 0) {
		struct refusal_args ra = { &r, diags, a.trust.reason };
		if ((rc = engine_call(e, do_refusal, &ra)) < 0)
			goto out;
		rc = ota_error_set(OTA_EPERM, "%s: refused by the release policy", r.file);
		goto out;
	}
	if ((rc = build_plan(e, p, r.ref, &a.trust, &a.plan, diags)) < 0) {
		rc = ota_error_set(OTA_EINVAL, "%s: pipeline cannot run here", r.file);
		goto out;
	}
	if ((rc = engine_call(e, do_trigger, &a)) == 0)
		*run_id = a.run_id;
out:
	json_decref(a.plan);
	pipeline_free(p);
	return rc;
}

struct failed_run_args {
	const struct trigger_req *req;
	const char *name, *error;
	int64_t run_id;
};

static int do_failed_run(struct engine *e, void *arg)
{
	struct failed_run_args *a = arg;
	struct policy_trust t;
	policy_trust(e->cfg.config, a->req->repo, a->req->ref, a->req->trigger, a->req->role, a->req->actor, &t);
	int rc = insert_run(e, a->req, &t, a->name, NULL, "failed", a->error, &a->run_id);
	/* issue 17: a push whose pipeline never started still fails its commit */
	return rc < 0 ? rc : outbox_run_event(e, a->run_id, "failed");
}

int engine_record_failed_run(struct engine *e, const struct trigger_req *req, const char *name,
			     const char *error, int64_t *run_id)
{
	struct trigger_req r = trigger_defaults(req);
	struct failed_run_args a = { &r, name, error, 0 };
	int rc;

	if ((rc = engine_call(e, do_failed_run, &a)) == 0)
		*run_id = a.run_id;
	return rc;
}

struct delivery_args {
	const struct delivery *d;
	const char *reason;
	int64_t id;
	int duplicate;
};

int runs_store_delivery_add(struct store *s, const struct delivery *d, int64_t now, int64_t *id, int *duplicate)
{
	struct db_stmt *st = store_q(s, "SELECT id FROM deliveries WHERE provider = ? AND delivery = ?");
	int rc;

	if (!st)
		return OTA_ERROR;
	db_bind_text(st, 1, d->provider);
	db_bind_text(st, 2, d->delivery);
	rc = db_step(st);
	if (rc == 1)
		*id = db_column_int64(st, 0);
	db_reset(st);
	*duplicate = rc == 1;
	if (rc != 0)
		return rc < 0 ? rc : 0;
	st = store_q(s, "INSERT INTO deliveries(provider, delivery, repo, ref, before_sha, after_sha, forced, pusher,"
			" received_at, state, pr_number, pr_base) VALUES (?,?,?,?,?,?,?,?,?, 'pending', ?, ?) RETURNING id");
	if (!st)
		return OTA_ERROR;
	db_bind_text(st, 1, d->provider);
	db_bind_text(st, 2, d->delivery);
	db_bind_text(st, 3, d->repo);
	db_bind_text(st, 4, d->ref);
	db_bind_text(st, 5, d->before);
	db_bind_text(st, 6, d->after);
	db_bind_int64(st, 7, d->forced);
	db_bind_text(st, 8, d->pusher);
	db_bind_int64(st, 9, now);
	if (d->pr_number > 0)
		db_bind_int64(st, 10, d->pr_number);
	db_bind_text(st, 11, d->pr_base);
	return step_insert_id(st, id);
}

static int do_delivery_add(struct engine *e, void *arg)
{
	struct delivery_args *a = arg;
	return runs_store_delivery_add(e->db, a->d, clock_now_ms(), &a->id, &a->duplicate);
}

int engine_delivery_add(struct engine *e, const struct delivery *d, int64_t *id, int *duplicate)
{
	struct delivery_args a = { d, NULL, 0, 0 };
	int rc = engine_call(e, do_delivery_add, &a);
	if (rc == 0) {
		*id = a.id;
		*duplicate = a.duplicate;
	}
	return rc;
}

static int do_delivery_done(struct engine *e, void *arg)
{
	struct delivery_args *a = arg;
	struct db_stmt *st = store_q(e->db, "UPDATE deliveries SET state = 'done', reason = ? WHERE id = ? AND state = 'pending'");
	if (!st)
		return OTA_ERROR;
	db_bind_text(st, 1, a->reason);
	db_bind_int64(st, 2, a->id);
	return db_run(st);
}

int engine_delivery_done(struct engine *e, int64_t id, const char *reason)
{
	struct delivery_args a = { NULL, reason, id, 0 };
	return engine_call(e, do_delivery_done, &a);
}

/* ---- scheduled pipelines (sched/sched.h) -------------------------------- */

struct schedule_args {
	const char *repo, *name, *ref;
	int64_t slot, since, delivery_id;
};

/* The stored last slot, or 0 with rc 0 when the schedule has none. */
static int schedule_last(struct engine *e, const char *repo, const char *name, int64_t *last, int *found)
{
	struct db_stmt *st = store_q(e->db, "SELECT last_slot FROM schedule_fires WHERE repo = ? AND name = ?");
	int rc;
	if (!st)
		return OTA_ERROR;
	db_bind_text(st, 1, repo);
	db_bind_text(st, 2, name);
	rc = db_step(st);
	*found = rc == 1;
	*last = rc == 1 ? db_column_int64(st, 0) : 0;
	db_reset(st);
	return rc < 0 ? rc : 0;
}

static int do_schedule_since(struct engine *e, void *arg)
{
	struct schedule_args *a = arg;
	struct db_stmt *st;
	int found, rc;

	if ((rc = schedule_last(e, a->repo, a->name, &a->since, &found)) < 0 || found)
		return rc;
	a->since = a->slot;
	if (!(st = store_q(e->db, "INSERT INTO schedule_fires(repo, name, last_slot) VALUES (?,?,?)")))
		return OTA_ERROR;
	db_bind_text(st, 1, a->repo);
	db_bind_text(st, 2, a->name);
	db_bind_int64(st, 3, a->slot);
	return db_run(st);
}

int engine_schedule_since(struct engine *e, const char *repo, const char *name, int64_t now_ms,
			  int64_t *since_ms)
{
	struct schedule_args a = { repo, name, NULL, now_ms, 0, 0 };
	int rc = engine_call(e, do_schedule_since, &a);
	if (rc == 0)
		*since_ms = a.since;
	return rc;
}

static int do_schedule_fire(struct engine *e, void *arg)
{
	struct schedule_args *a = arg;
	char id[160], who[128];
	struct delivery d = { 0 };
	struct delivery_args da = { &d, NULL, 0, 0 };
	struct db_stmt *st;
	int64_t last;
	int found, rc;

	if ((rc = schedule_last(e, a->repo, a->name, &last, &found)) < 0)
		return rc;
	if (found && last >= a->slot)
		return 0; /* fired already (the check and the write share this transaction) */
	snprintf(id, sizeof(id), "%s@%" PRId64, a->name, a->slot);
	snprintf(who, sizeof(who), "schedule %s", a->name);
	d.provider = "schedule";
	d.delivery = id;
	d.repo = a->repo;
	d.ref = a->ref;
	d.pusher = who;
	if ((rc = do_delivery_add(e, &da)) < 0)
		return rc;
	st = store_q(e->db, "INSERT INTO schedule_fires(repo, name, last_slot, delivery_id) VALUES (?,?,?,?)"
			    " ON CONFLICT(repo, name) DO UPDATE SET last_slot = excluded.last_slot,"
			    " delivery_id = excluded.delivery_id");
	if (!st)
		return OTA_ERROR;
	db_bind_text(st, 1, a->repo);
	db_bind_text(st, 2, a->name);
	db_bind_int64(st, 3, a->slot);
	db_bind_int64(st, 4, da.id);
	if ((rc = db_run(st)) < 0)
		return rc;
	a->delivery_id = da.duplicate ? 0 : da.id;
	return 0;
}

int engine_schedule_fire(struct engine *e, const char *repo, const char *name, const char *ref,
			 int64_t slot_ms, int64_t *delivery_id)
{
	struct schedule_args a = { repo, name, ref, slot_ms, 0, 0 };
	int rc = engine_call(e, do_schedule_fire, &a);
	if (rc == 0)
		*delivery_id = a.delivery_id;
	return rc;
}

struct cancel_args {
	int64_t run_id;
	const char *actor, *reason;
};

/* Up to max (256) of a run's unfinished jobs into ids; *n how many. */
static int cancel_batch(struct engine *e, int64_t run_id, int64_t *ids, size_t max, size_t *n)
{
	struct db_stmt *st = store_q(e->db, "SELECT id FROM jobs WHERE run_id = ? AND state IN ('queued','running') LIMIT 256");
	int rc = 0;

	*n = 0;
	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, run_id);
	while (*n < max && (rc = db_step(st)) == 1)
		ids[(*n)++] = db_column_int64(st, 0);
	db_reset(st);
	/* a failed step used to end the batch silently; it spoils the
	 * transaction now, so it is the error */
	return rc < 0 ? rc : 0;
}

static int do_cancel(struct engine *e, void *arg)
{
	struct cancel_args *a = arg;
	struct db_stmt *st = store_q(e->db, "SELECT state, concurrency FROM runs WHERE id = ?");
	char state[16] = "", *concurrency = NULL;
	int64_t now = clock_now_ms(), ids[256];
	size_t n = 0;
	int rc;

	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, a->run_id);
	rc = db_step(st);
	if (rc == 1) {
		snprintf(state, sizeof(state), "%s", db_column_text(st, 0));
		if (db_column_text(st, 1))
			concurrency = xstrdup(db_column_text(st, 1));
	}
	db_reset(st);
	if (rc <= 0)
		return rc < 0 ? rc : ota_error_set(OTA_ENOTFOUND, "run %" PRId64 " not found", a->run_id);
	if (engine_state_final(state)) {
		free(concurrency);
		return ota_error_set(OTA_ECONFLICT, "run %" PRId64 " already finished (%s)", a->run_id, state);
	}
	/* Queued jobs leave the dispatch queue; running ones learn on their next heartbeat. */
	do {
		if ((rc = cancel_batch(e, a->run_id, ids, OTA_ARRAY_SIZE(ids), &n)) < 0)
			goto out;
		for (size_t i = 0; i < n; i++) {
			eng_queue_remove(e, ids[i]);
			st = store_q(e->db, "UPDATE jobs SET state = 'canceled', finished_at = ?, failure = 'canceled',"
					    " message = 'run canceled', lease_expires = NULL, deadline = NULL WHERE id = ?");
			if (!st) {
				rc = OTA_ERROR;
				goto out;
			}
			db_bind_int64(st, 1, now);
			db_bind_int64(st, 2, ids[i]);
			if ((rc = db_run(st)) < 0)
				goto out;
			eng_event(e, a->run_id, ids[i], "job.final", json_pack("{ss}", "state", "canceled"));
		}
	} while (n == OTA_ARRAY_SIZE(ids));
	if ((rc = rollout_on_run_canceled(e, a->run_id)) < 0)
		goto out;
	/* issue 17: the running stages' commit statuses say canceled */
	if ((rc = outbox_stage_cancel(e, a->run_id)) < 0)
		goto out;
	st = store_q(e->db, "UPDATE stages SET state = 'canceled', finished_at = ? WHERE run_id = ?"
			    " AND state IN ('queued','running')");
	if (!st) {
		rc = OTA_ERROR;
		goto out;
	}
	db_bind_int64(st, 1, now);
	db_bind_int64(st, 2, a->run_id);
	if ((rc = db_run(st)) < 0)
		goto out;
	if ((rc = eng_finish_run(e, a->run_id, "canceled", concurrency, "canceled by user")) < 0)
		goto out;
	rc = engine_audit(e, a->actor, "cancel", 0, 0, a->reason, json_pack("{sI}", "run", (json_int_t)a->run_id));
out:
	free(concurrency);
	return rc;
}

int engine_cancel_run(struct engine *e, int64_t run_id, const char *actor, const char *reason)
{
	struct cancel_args a = { run_id, actor, reason };
	return engine_call(e, do_cancel, &a);
}
