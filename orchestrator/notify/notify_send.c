/*
 * notify_send.c - one delivery of one outbox row: the request each
 * destination documents, sent with libcurl (common/httpc.h).
 *
 *   webhook  POST the event JSON as is, signed like otacd's incoming hooks
 *            with HMAC-SHA256: X-Otacd-Signature-256: sha256=HEX over
 *            "TIMESTAMP.BODY", TIMESTAMP (unix seconds) in X-Otacd-Timestamp
 *            so a receiver can refuse replays of old deliveries.
 *   slack    POST {"text": "..."} to an incoming-webhook URL.
 *   github   POST {api}/repos/{owner}/{repo}/statuses/{sha},
 *            Authorization: Bearer TOKEN, {state, target_url, description, context}
 *   gitlab   POST {api}/projects/{id}/statuses/{sha}, PRIVATE-TOKEN: TOKEN,
 *            {state, name, target_url, description, ref}
 *   gitea    POST {api}/repos/{owner}/{repo}/statuses/{sha},
 *            Authorization: token TOKEN, {state, target_url, description, context}
 *
 * Tokens and secrets only ever go into request headers, built here and
 * wiped after the request; reasons name the target, never its URL (a Slack
 * URL is itself a secret).
 */
#include "notify_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/rand.h>

#include "../../common/httpc.h"
#include "../../common/util.h"
#include "../webhook.h"

/* msg with every copy of url (without its query) replaced by label. */
static void scrub_into(char *out, size_t len, const char *msg, const char *url, const char *label)
{
	/* httpc prints URLs without their query */
	char *u = xstrndup(url, strcspn(url, "?"));
	size_t ulen = strlen(u);
	struct buf b = BUF_INIT;
	const char *p = msg, *hit;
	while (ulen && (hit = strstr(p, u))) {
		buf_put(&b, p, (size_t)(hit - p));
		buf_puts(&b, label);
		p = hit + ulen;
	}
	buf_puts(&b, p);
	snprintf(out, len, "%s", buf_cstr(&b));
	buf_release(&b);
	free(u);
}

static enum notify_outcome outcome_of(int rc, long status, const char *url, const char *label, char *why, size_t len)
{
	char msg[512];
	if (rc < 0) {
		scrub_into(msg, sizeof(msg), ota_error_last(), url, label);
		snprintf(why, len, "no answer: %s", msg);
		return NOTIFY_RETRY;
	}
	if (status >= 200 && status < 300)
		return NOTIFY_SENT;
	snprintf(why, len, "%s answered HTTP %ld", label, status);
	return status == 408 || status == 429 || status >= 500 ? NOTIFY_RETRY : NOTIFY_REFUSED;
}

/* POST body to url with extra header lines; the lines are wiped after. */
static enum notify_outcome post(const struct notify *n, const char *url, const char *label, const char *body,
				char **headers, char *why, size_t len)
{
	struct httpc_response resp;
	int rc = httpc_request_ex(&resp, "POST", url, NULL, "application/json", body, strlen(body), n->timeout_ms,
				  (const char *const *)headers);
	enum notify_outcome o = outcome_of(rc, resp.status, url, label, why, len);
	httpc_response_release(&resp);
	for (size_t i = 0; headers[i]; i++) {
		memset(headers[i], 0, strlen(headers[i]));
		free(headers[i]);
	}
	return o;
}

/* ---- webhook and Slack ----------------------------------------------- */

static char *slack_text(const json_t *ev, const struct notify *n)
{
	const char *event = json_string_value(json_object_get(ev, "event"));
	const json_t *run = json_object_get(ev, "run"), *ro = json_object_get(ev, "rollout");
	if (run) {
		const char *ref = json_string_value(json_object_get(run, "ref"));
		long long id = (long long)json_integer_value(json_object_get(run, "id"));
		char *link = n->public_url ? xasprintf(" <%s/#/runs/%lld|#%lld>", n->public_url, id, id) : xasprintf(" #%lld", id);
		const char *pipeline = json_string_value(json_object_get(run, "pipeline"));
		char *t = xasprintf("otacd: run%s of %s%s%s: %s", link, pipeline ? pipeline : "?", ref ? " on " : "",
				    ref ? ref : "", event + 4);
		free(link);
		return t;
	}
	{
		const char *reason = json_string_value(json_object_get(ro, "reason"));
		const char *product = json_string_value(json_object_get(ro, "product"));
		const char *version = json_string_value(json_object_get(ro, "version"));
		const char *stage = json_string_value(json_object_get(ro, "stage"));
		return xasprintf("otacd: rollout of %s %s, stage %s step %lld: %s%s%s%s", product ? product : "?",
				 version ? version : "?", stage ? stage : "?",
				 (long long)json_integer_value(json_object_get(ro, "step")) + 1, event + 8,
				 reason && *reason ? " (" : "", reason && *reason ? reason : "", reason && *reason ? ")" : "");
	}
}

static enum notify_outcome deliver_hook(const struct notify *n, const struct notify_target *t,
					const struct outbox_row *row, char *why, size_t len)
{
	char *headers[6] = { NULL };
	char label[96];
	char *body = NULL;
	enum notify_outcome o;

	snprintf(label, sizeof(label), "target %s", t->name);
	headers[0] = xasprintf("X-Otacd-Event: %s", row->event);
	headers[1] = xasprintf("X-Otacd-Delivery: %s", row->delivery);
	if (t->kind == NOTIFY_SLACK) {
		json_t *ev = json_loads(row->payload, 0, NULL);
		char *text = ev ? slack_text(ev, n) : xstrdup(row->event);
		json_t *msg = json_pack("{ss}", "text", text);
		body = json_dumps(msg, JSON_COMPACT);
		json_decref(msg);
		json_decref(ev);
		free(text);
	} else {
		/* the signature covers the timestamp, so an old delivery replayed
		 * later does not verify against a fresh timestamp */
		long long ts = (long long)time(NULL);
		char *signed_text = xasprintf("%lld.%s", ts, row->payload);
		char mac[65];
		webhook_hmac_hex(t->secret, signed_text, strlen(signed_text), mac);
		free(signed_text);
		headers[2] = xasprintf("X-Otacd-Timestamp: %lld", ts);
		headers[3] = xasprintf("X-Otacd-Signature-256: sha256=%s", mac);
		body = xstrdup(row->payload);
	}
	o = post(n, t->url, label, body, headers, why, len);
	free(body);
	return o;
}

/* ---- commit statuses --------------------------------------------------- */

static const char *forge_state(enum forge_kind f, const char *run_state)
{
	int running = !strcmp(run_state, "running"), passed = !strcmp(run_state, "passed");
	int canceled = !strcmp(run_state, "canceled");
	switch (f) {
	case FORGE_GITLAB: /* pending, running, success, failed, canceled */
		return running ? "running" : passed ? "success" : canceled ? "canceled" : "failed";
	case FORGE_GITHUB: /* error, failure, pending, success */
	case FORGE_GITEA:  /* pending, success, error, failure (warning) */
	default:
		return running ? "pending" : passed ? "success" : canceled ? "error" : "failure";
	}
}

/* The status context (GitLab's name): the configured one or otacd/PIPELINE,
 * and /STAGE for a stage's status (a stage name is [A-Za-z0-9_.-]). */
static char *stage_context(const struct forge_status *f, const char *pipeline, const char *stage)
{
	char *base = f->context ? xstrdup(f->context) : xasprintf("otacd/%.90s", pipeline), *ctx;
	if (!stage)
		return base;
	ctx = xasprintf("%s/%.64s", base, stage);
	free(base);
	return ctx;
}

static enum notify_outcome deliver_status(const struct notify *n, const struct forge_status *f,
					  const struct outbox_row *row, char *why, size_t len)
{
	json_t *ev = json_loads(row->payload, 0, NULL);
	const json_t *run = json_object_get(ev, "run"), *stage = json_object_get(ev, "stage");
	/* a stage's row (outbox_stage.c) carries the stage's state and name */
	const char *state = json_string_value(json_object_get(stage ? stage : run, "state"));
	const char *stage_name = json_string_value(json_object_get(stage, "name"));
	const char *stage_desc = json_string_value(json_object_get(stage, "description"));
	const char *sha = json_string_value(json_object_get(run, "commit"));
	const char *pipeline = json_string_value(json_object_get(run, "pipeline"));
	const char *ref = json_string_value(json_object_get(run, "ref"));
	long long id = (long long)json_integer_value(json_object_get(run, "id"));
	char *headers[4] = { NULL }, *url = NULL, *proj = NULL, *context = NULL, *desc = NULL, *body = NULL;
	char label[320];
	json_t *req;
	enum notify_outcome o = NOTIFY_REFUSED;

	if (!state || !sha || !pipeline || strspn(sha, "0123456789abcdef") != strlen(sha) || strlen(sha) < 7) {
		snprintf(why, len, "the outbox row has no run with a commit");
		goto out;
	}
	snprintf(label, sizeof(label), "%s status API of %s", f->forge == FORGE_GITHUB ? "GitHub"
							  : f->forge == FORGE_GITLAB ? "GitLab" : "Gitea", f->repo);
	if (stage && !stage_name) {
		snprintf(why, len, "the outbox row's stage has no name");
		goto out;
	}
	context = stage_context(f, pipeline, stage_name);
	if (stage_desc)
		desc = xasprintf("otacd run #%lld %.40s: %.80s", id, stage_name, stage_desc);
	else if (stage)
		desc = xasprintf("otacd run #%lld %.40s %s", id, stage_name, state);
	else
		desc = xasprintf("otacd run #%lld %s", id, state);
	if (f->forge == FORGE_GITLAB) {
		proj = httpc_escape(f->project);
		url = xasprintf("%s/projects/%s/statuses/%s", f->api_url, proj, sha);
		headers[0] = xasprintf("PRIVATE-TOKEN: %s", f->token);
		req = json_pack("{ss ss ss}", "state", forge_state(f->forge, state), "name", context, "description", desc);
		if (ref && !strncmp(ref, "refs/heads/", 11))
			json_object_set_new(req, "ref", json_string(ref + 11));
		else if (ref && !strncmp(ref, "refs/tags/", 10))
			json_object_set_new(req, "ref", json_string(ref + 10));
	} else {
		url = xasprintf("%s/repos/%s/statuses/%s", f->api_url, f->project, sha);
		if (f->forge == FORGE_GITHUB) {
			headers[0] = xasprintf("Authorization: Bearer %s", f->token);
			headers[1] = xstrdup("Accept: application/vnd.github+json");
			headers[2] = xstrdup("X-GitHub-Api-Version: 2022-11-28");
		} else {
			headers[0] = xasprintf("Authorization: token %s", f->token);
			headers[1] = xstrdup("Accept: application/json");
		}
		req = json_pack("{ss ss ss}", "state", forge_state(f->forge, state), "context", context, "description", desc);
	}
	if (n->public_url)
		json_object_set_new(req, "target_url", json_sprintf("%s/#/runs/%lld", n->public_url, id));
	body = json_dumps(req, JSON_COMPACT);
	json_decref(req);
	o = post(n, url, label, body, headers, why, len);
out:
	free(url);
	free(proj);
	free(context);
	free(desc);
	free(body);
	json_decref(ev);
	return o;
}

enum notify_outcome notify_deliver(const struct notify *n, const struct outbox_row *row, char *why, size_t len)
{
	why[0] = '\0';
	if (!strncmp(row->target, "hook:", 5)) {
		const struct notify_target *t = notify_target_find(n, row->target + 5);
		if (t)
			return deliver_hook(n, t, row, why, len);
	} else if (!strncmp(row->target, "status:", 7)) {
		const struct forge_status *f = notify_forge_find(n, row->target + 7);
		if (f)
			return deliver_status(n, f, row, why, len);
	}
	snprintf(why, len, "%s is no longer in the configuration", row->target);
	return NOTIFY_REFUSED;
}

int64_t notify_backoff_ms(const struct notify *n, int attempts)
{
	int64_t d = n->retry_base_ms;
	unsigned char r[4];
	uint32_t u;
	for (int i = 0; i < attempts && d < n->retry_max_ms; i++)
		d *= 2;
	if (d > n->retry_max_ms)
		d = n->retry_max_ms;
	/* jitter: many rows failing together spread out instead of hammering
	 * the receiver in step; at least half the delay is always kept */
	if (RAND_bytes(r, sizeof(r)) != 1)
		return d;
	u = (uint32_t)r[0] << 24 | (uint32_t)r[1] << 16 | (uint32_t)r[2] << 8 | r[3];
	return d / 2 + (int64_t)((double)u / 4294967296.0 * (double)(d - d / 2));
}
