/*
 * api_hooks.c - git-facing routes: push webhooks (/hooks/github, /gitlab,
 * /gitea, /forgejo), manual triggers of a repository (POST
 * /api/v1/triggers), the delivery log, and the source archive agents
 * download for a job.
 *
 * A webhook is answered within a few seconds whatever happens: the
 * delivery is recorded (de-duplicated by the sender's delivery id), handed
 * to the source workers, and awaited for at most WEBHOOK_WAIT_MS.  Fast
 * fetches (the common case) get their run id or the reason nothing was
 * started in the answer; slow ones get "pending" and finish in the
 * background (GitHub gives up after 10 s).
 */
#include "api_int.h"

#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../clock.h"
#include "../config.h"
#include "../db/db.h"
#include "../gitsrc.h"
#include "../sources.h"
#include "../webhook.h"

#define WEBHOOK_WAIT_MS 5000
#define TRIGGER_WAIT_MS 60000

static const char *header(struct api_req *r, const char *name)
{
	return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

static json_t *outcome_json(int64_t delivery, const struct source_outcome *o)
{
	json_t *j = json_pack("{sI}", "delivery", (json_int_t)delivery);
	if (!o->done)
		json_object_set_new(j, "state", json_string("pending"));
	else if (o->run_id)
		json_object_set_new(j, "run_id", json_integer(o->run_id));
	else
		json_object_set_new(j, "reason", json_string(o->reason));
	return j;
}

enum { WAIT_HOOK = 1, WAIT_TRIGGER = 2 };

/* Parked until the source worker records delivery r->wait_arg's outcome
 * or r->wait_deadline passes (api_wait.c); then answers as the webhook
 * (202 with the outcome) or the trigger (201 with the run) route does. */
static enum MHD_Result outcome_wait(struct api *a, struct api_req *r)
{
	struct source_outcome o = { 0 };
	struct notifier *n = sources_done(a->cfg.sources);
	uint64_t gen = notifier_gen(n);
	int rc = sources_outcome(r->wait_arg, &o);

	if (rc == 0 && !o.done && !a->stopping && clock_mono_ms() < r->wait_deadline)
		return api_wait(r, n, gen, r->wait_deadline, outcome_wait);
	if (r->wait_kind == WAIT_TRIGGER && o.done && o.run_id)
		return api_reply_json(r, MHD_HTTP_CREATED, json_pack("{sI sI}", "id", (json_int_t)o.run_id,
								     "delivery", (json_int_t)r->wait_arg));
	return api_reply_json(r, MHD_HTTP_ACCEPTED, outcome_json(r->wait_arg, &o));
}

static enum MHD_Result outcome_after(struct api *a, struct api_req *r, int64_t id, const char *repo, int kind,
				     int64_t wait_ms)
{
	sources_enqueue(a->cfg.sources, id, repo);
	r->wait_arg = id;
	r->wait_kind = kind;
	r->wait_deadline = clock_mono_ms() + wait_ms;
	return outcome_wait(a, r);
}

static enum MHD_Result hook(struct api *a, struct api_req *r, enum webhook_provider p)
{
	const struct otacd_config *cfg = a->cfg.config;
	struct webhook_headers h = { 0 };
	struct push_event ev;
	struct delivery d = { 0 };
	struct source_outcome o;
	const struct repo_cfg *repo;
	int *matched = xcalloc(cfg->nrepos + 1, sizeof(int));
	int64_t id = 0;
	int duplicate = 0, rc;
	size_t idx;
	enum MHD_Result ret;

	if (p == WEBHOOK_GITHUB) {
		h.event = header(r, "X-GitHub-Event");
		h.delivery = header(r, "X-GitHub-Delivery");
	} else if (p == WEBHOOK_GITLAB) {
		h.event = header(r, "X-Gitlab-Event");
		h.delivery = header(r, "X-Gitlab-Event-UUID");
		h.gitlab_token = header(r, "X-Gitlab-Token");
	} else {
		h.event = header(r, "X-Gitea-Event") ? header(r, "X-Gitea-Event") : header(r, "X-Forgejo-Event");
		h.delivery = header(r, "X-Gitea-Delivery") ? header(r, "X-Gitea-Delivery") : header(r, "X-Forgejo-Delivery");
		h.gitea_signature = header(r, "X-Gitea-Signature") ? header(r, "X-Gitea-Signature")
								    : header(r, "X-Forgejo-Signature");
	}
	if (p != WEBHOOK_GITLAB)
		h.hub_signature = header(r, "X-Hub-Signature-256");

	/* 1. authenticity, before anything in the body is read */
	if (webhook_authenticate(cfg, p, &h, r->body.ptr ? r->body.ptr : "", r->body.len, matched) == 0) {
		ret = api_reply_error(r, MHD_HTTP_UNAUTHORIZED, "missing or invalid webhook signature");
		goto out;
	}
	if (api_following()) { /* issue 16: only the leader records deliveries */
		ret = api_follower_forward(a, r);
		goto out;
	}
	/* 2. the payload */
	if (webhook_parse(p, &h, r->body.ptr ? r->body.ptr : "", r->body.len, &ev) < 0) {
		ret = api_reply_error(r, MHD_HTTP_BAD_REQUEST, "%s", ota_error_last());
		goto out;
	}
	if (ev.kind == PUSH_PING) {
		ret = api_reply_json(r, MHD_HTTP_OK, json_pack("{sb ss}", "ok", 1, "event", "ping"));
		goto out_ev;
	}
	if (ev.kind == PUSH_OTHER) {
		ret = api_reply_json(r, MHD_HTTP_ACCEPTED,
				     json_pack("{ss}", "reason", "only pushes and opened, reopened or updated pull/merge requests start runs;"
							     " this event is ignored"));
		goto out_ev;
	}
	repo = config_repo_find(cfg, ev.repo);
	if (!repo) {
		ret = api_reply_error(r, MHD_HTTP_NOT_FOUND, "repository '%s' is not configured in otacd", ev.repo);
		goto out_ev;
	}
	idx = (size_t)(repo - cfg->repos);
	if (!matched[idx]) {
		ret = api_reply_error(r, MHD_HTTP_UNAUTHORIZED, "the signature is not valid for repository '%s'", ev.repo);
		goto out_ev;
	}
	if (!h.delivery || !*h.delivery || strlen(h.delivery) > 128) {
		ret = api_reply_error(r, MHD_HTTP_BAD_REQUEST, "the delivery id header is missing");
		goto out_ev;
	}

	/* 3. record it once */
	d.provider = webhook_provider_name(p);
	d.delivery = h.delivery;
	d.repo = ev.repo;
	d.ref = ev.ref;
	d.before = ev.before;
	d.after = ev.after;
	d.forced = ev.forced;
	d.pusher = ev.pusher;
	d.pr_number = ev.pr_number;
	d.pr_base = ev.pr_base;
	if ((rc = engine_delivery_add(a->cfg.engine, &d, &id, &duplicate)) < 0) {
		ret = api_reply_rc(r, rc);
		goto out_ev;
	}
	if (duplicate) {
		json_t *j;
		sources_outcome(id, &o);
		j = outcome_json(id, &o);
		json_object_set_new(j, "duplicate", json_true());
		ret = api_reply_json(r, MHD_HTTP_OK, j);
		goto out_ev;
	}
	if (ev.deleted) {
		char *why = xasprintf("%s was deleted: nothing to build", ev.ref);
		engine_delivery_done(a->cfg.engine, id, why);
		ret = api_reply_json(r, MHD_HTTP_ACCEPTED, json_pack("{sI ss}", "delivery", (json_int_t)id, "reason", why));
		free(why);
		goto out_ev;
	}
	/* 4. the slow part, within the sender's patience (parked, not blocking) */
	ret = outcome_after(a, r, id, ev.repo, WAIT_HOOK, WEBHOOK_WAIT_MS);
out_ev:
	push_event_release(&ev);
out:
	free(matched);
	return ret;
}

enum MHD_Result api_hook_github(struct api *a, struct api_req *r)
{
	return hook(a, r, WEBHOOK_GITHUB);
}

enum MHD_Result api_hook_gitlab(struct api *a, struct api_req *r)
{
	return hook(a, r, WEBHOOK_GITLAB);
}

enum MHD_Result api_hook_gitea(struct api *a, struct api_req *r)
{
	return hook(a, r, WEBHOOK_GITEA);
}

enum MHD_Result api_post_trigger(struct api *a, struct api_req *r)
{
	json_t *repo = json_object_get(r->json, "repo"), *ref = json_object_get(r->json, "ref");
	struct delivery d = { 0 };
	char token[33];
	int64_t id = 0;
	int duplicate = 0, rc;

	if (!json_is_string(repo) || !json_is_string(ref) || !*json_string_value(ref) ||
	    strlen(json_string_value(ref)) > 255)
		return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "body must be {\"repo\": NAME, \"ref\": BRANCH|TAG|REF|COMMIT}");
	if (!config_repo_find(a->cfg.config, json_string_value(repo)))
		return api_reply_error(r, MHD_HTTP_NOT_FOUND, "repository '%s' is not configured in otacd",
				       json_string_value(repo));
	ota_random_hex(token, 16);
	d.provider = "api";
	d.delivery = token;
	d.repo = json_string_value(repo);
	d.ref = json_string_value(ref);
	d.pusher = auth_role_name(r->role);
	if ((rc = engine_delivery_add(a->cfg.engine, &d, &id, &duplicate)) < 0)
		return api_reply_rc(r, rc);
	return outcome_after(a, r, id, d.repo, WAIT_TRIGGER, TRIGGER_WAIT_MS);
}

enum MHD_Result api_get_deliveries(struct api *a, struct api_req *r)
{
	struct store *db = store_reader();
	int64_t limit = 0;
	json_t *arr;
	struct db_stmt *st;

	(void)a;
	if (api_list_limit(r, 50, &limit) < 0)
		return MHD_YES;
	arr = json_array();
	if (!db || !(st = store_q(db, "SELECT id, provider, delivery, repo, ref, after_sha, forced, pusher,"
					 " received_at, state, run_id, reason FROM deliveries ORDER BY id DESC LIMIT ?"))) {
		json_decref(arr);
		return api_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "database unavailable");
	}
	db_bind_int64(st, 1, limit);
	while (db_step(st) == 1) {
		json_t *o = json_pack("{sI ss ss ss ss sb sI ss}", "id", (json_int_t)db_column_int64(st, 0),
				      "provider", db_column_text(st, 1), "delivery", db_column_text(st, 2),
				      "repo", db_column_text(st, 3), "ref", db_column_text(st, 4),
				      "forced", (int)db_column_int64(st, 6), "received_at", (json_int_t)db_column_int64(st, 8),
				      "state", db_column_text(st, 9));
		json_object_set_new(o, "after", db_column_text(st, 5) ? json_string(db_column_text(st, 5)) : json_null());
		json_object_set_new(o, "pusher", db_column_text(st, 7) ? json_string(db_column_text(st, 7)) : json_null());
		json_object_set_new(o, "run_id", db_column_type(st, 10) == DB_NULL ? json_null()
											 : json_integer(db_column_int64(st, 10)));
		json_object_set_new(o, "reason", db_column_text(st, 11) ? json_string(db_column_text(st, 11)) : json_null());
		json_array_append_new(arr, o);
	}
	db_reset(st);
	return api_reply_json(r, MHD_HTTP_OK, arr);
}

enum MHD_Result api_agent_source(struct api *a, struct api_req *r)
{
	int64_t attempt = r->attempt; /* from the job token (api_job_auth) */
	struct store *db = store_reader();
	const struct repo_cfg *repo = NULL;
	char *commit = NULL, *tar = NULL, *repo_name = NULL;
	struct MHD_Response *resp;
	enum MHD_Result ret;
	struct db_stmt *st;
	struct stat sb;
	int fd;

	if (!api_attempt_current(r->id, attempt))
		return api_reply_error(r, MHD_HTTP_CONFLICT, "attempt %" PRId64 " of job %" PRId64 " is not running",
				       attempt, r->id);
	if (!db || !(st = store_q(db, "SELECT r.repo, r.commit_id FROM jobs j JOIN runs r ON r.id = j.run_id WHERE j.id = ?")))
		return api_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "database unavailable");
	db_bind_int64(st, 1, r->id);
	if (db_step(st) == 1 && db_column_text(st, 0) && db_column_text(st, 1)) {
		repo_name = xstrdup(db_column_text(st, 0));
		commit = xstrdup(db_column_text(st, 1));
	}
	db_reset(st);
	if (!commit) {
		ret = api_reply_error(r, MHD_HTTP_NOT_FOUND, "job %" PRId64 " has no git source", r->id);
		goto out;
	}
	repo = config_repo_find(a->cfg.config, repo_name);
	if (!repo) {
		ret = api_reply_error(r, MHD_HTTP_NOT_FOUND, "repository '%s' is no longer configured", repo_name);
		goto out;
	}
	if (gitsrc_archive(&repo->git, commit, &tar) < 0) {
		ret = api_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "%s", ota_error_last());
		goto out;
	}
	fd = open(tar, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &sb) < 0) {
		if (fd >= 0)
			close(fd);
		ret = api_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "cannot open the source archive");
		goto out;
	}
	resp = MHD_create_response_from_fd((uint64_t)sb.st_size, fd);
	MHD_add_response_header(resp, "Content-Type", "application/x-tar");
	MHD_add_response_header(resp, "X-Commit", commit);
	ret = api_queue_response(r, MHD_HTTP_OK, resp);
	MHD_destroy_response(resp);
out:
	free(tar);
	free(commit);
	free(repo_name);
	return ret;
}

enum MHD_Result api_get_commit(struct api *a, struct api_req *r)
{
	const char *name = api_query(r, "repo");
	const struct repo_cfg *repo = name ? config_repo_find(a->cfg.config, name) : NULL;
	struct gitsrc_commit c;
	enum MHD_Result ret;

	if (!repo)
		return api_reply_error(r, MHD_HTTP_NOT_FOUND, "repository '%s' is not configured in otacd", name ? name : "");
	if (strlen(r->sha40) != 40)
		return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "a commit id is 40 hex digits");
	if (gitsrc_resolve(&repo->git, r->sha40, &c) < 0)
		return api_reply_error(r, MHD_HTTP_NOT_FOUND, "commit %s is not in the mirror of %s", r->sha40, name);
	ret = api_reply_json(r, MHD_HTTP_OK, json_pack("{ss ss ss ss ss}", "repo", name, "commit", c.id, "tree", c.tree,
						       "author", c.author ? c.author : "", "message", c.message ? c.message : ""));
	gitsrc_commit_release(&c);
	return ret;
}
