/*
 * api.c - the HTTP server: routing, authentication, request bodies, and the
 * routes that change runs (trigger, cancel) or need no state (health, lint,
 * the embedded page).  Reads live in api_read.c, the agent protocol in
 * api_agent.c.
 *
 * libmicrohttpd calls the access handler several times per request: once
 * with the headers (we route, authenticate and check Content-Length there,
 * answering 401/403/404/405/413 before reading any body), then once per body
 * chunk (appended to a capped buffer or streamed into the artifact store),
 * then once with no data, when the route's handler runs.  A request that
 * fails any check changes nothing.
 *
 * The server is event-driven (libmicrohttpd's epoll thread pool): a
 * handler that has to wait parks its connection with api_wait() and is
 * called again, through r->resume, when what it waits for changed
 * (api_wait.c).  The agents may have a listener of their own
 * (agent_listen), which serves the agent protocol only, so that a flood of
 * other clients on the main listener never stalls job pickup.
 */
#include "api_int.h"
#include "api_forward.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "../../common/util.h"
#include "../clock.h"
#include "../diskguard.h"
#include "../idem.h"
#include "../pipeline/pipeline.h"
#include "../policy.h"
#include "../logstore.h"
#include "../reports.h"
#include "../sources.h"
#include "../tls/tls.h"
#include "../web.h"

static int64_t mono_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* ---- replies ---------------------------------------------------------- */

enum MHD_Result api_queue_response(struct api_req *r, unsigned status, struct MHD_Response *resp)
{
	if (r->request_id[0])
		MHD_add_response_header(resp, "X-Request-Id", r->request_id);
	r->status_sent = status;
	return MHD_queue_response(r->conn, status, resp);
}

static enum MHD_Result queue(struct api_req *r, unsigned status, const char *type, char *data, size_t len)
{
	struct MHD_Response *resp;
	enum MHD_Result ret;

	if (r->idem_key) {
		/* the answer is on the disk before the client can see it; a
		 * 5xx is no definite answer: a retry runs the request again */
		int rc = status >= 500 ? idem_forget(r->api->cfg.engine, r->actor, r->idem_key)
				       : idem_finish(r->api->cfg.engine, r->actor, r->idem_key, (int)status, data, len);
		free(r->idem_key);
		r->idem_key = NULL;
		if (rc < 0 && status < 500) {
			free(data);
			data = xasprintf("{\"error\":\"the answer could not be recorded for its Idempotency-Key: %s\"}",
					 "retry with the same key");
			len = strlen(data);
			status = MHD_HTTP_SERVICE_UNAVAILABLE;
		}
	}
	if (r->cache_slot) /* a copy of the body, for the next readers */
		api_cache_keep(r->api, r, status, type, data, len);
	resp = MHD_create_response_from_buffer(len, data, MHD_RESPMEM_MUST_FREE);
	MHD_add_response_header(resp, "Content-Type", type);
	MHD_add_response_header(resp, "Cache-Control", "no-store");
	ret = api_queue_response(r, status, resp);
	MHD_destroy_response(resp);
	return ret;
}

enum MHD_Result api_reply_json(struct api_req *r, unsigned status, json_t *body)
{
	char *text = json_dumps(body, JSON_COMPACT);
	json_decref(body);
	if (!text)
		text = xstrdup("{}");
	return queue(r, status, "application/json", text, strlen(text));
}

enum MHD_Result api_reply_error(struct api_req *r, unsigned status, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	return api_reply_json(r, status, json_pack("{ss}", "error", msg));
}

enum MHD_Result api_reply_rc(struct api_req *r, int rc)
{
	unsigned status;
	switch (rc) {
	case OTA_EINVAL: status = MHD_HTTP_BAD_REQUEST; break;
	case OTA_ENOTFOUND: status = MHD_HTTP_NOT_FOUND; break;
	case OTA_ECONFLICT: status = MHD_HTTP_CONFLICT; break;
	case OTA_ETOOBIG: status = MHD_HTTP_CONTENT_TOO_LARGE; break;
	case OTA_EAUTH: status = MHD_HTTP_UNAUTHORIZED; break;
	case OTA_EPERM: status = MHD_HTTP_FORBIDDEN; break;
	default: status = MHD_HTTP_INTERNAL_SERVER_ERROR; break;
	}
	return api_reply_error(r, status, "%s", ota_error_last());
}

const char *api_query(struct api_req *r, const char *key)
{
	return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, key);
}

int64_t api_query_int(struct api_req *r, const char *key)
{
	const char *s = api_query(r, key);
	char *end;
	long long v;
	if (!s)
		return -1;
	if (!*s || *s == '-')
		return -2;
	v = strtoll(s, &end, 10);
	return *end ? -2 : v;
}

int api_list_limit(struct api_req *r, int64_t dflt, int64_t *out)
{
	int64_t v = api_query_int(r, "limit");
	if (v == -1) {
		*out = dflt;
		return 0;
	}
	if (v < 1 || v > API_LIST_MAX) {
		api_reply_error(r, MHD_HTTP_BAD_REQUEST, "limit must be a whole number from 1 to %d (got '%s')",
				API_LIST_MAX, api_query(r, "limit"));
		return -1;
	}
	*out = v;
	return 0;
}

/* ---- handlers that are not reads or agent protocol -------------------- */

/* Who the token is: the page shows actions only to operators. */
static enum MHD_Result get_whoami(struct api *a, struct api_req *r)
{
	(void)a;
	return api_reply_json(r, MHD_HTTP_OK, json_pack("{ss ss}", "name", r->actor[0] ? r->actor : "anonymous", "role",
							 auth_role_name(r->role)));
}

static enum MHD_Result get_health(struct api *a, struct api_req *r)
{
	(void)a;
	return api_reply_json(r, MHD_HTTP_OK, json_pack("{ss ss sI sf sI so}", "status", "ok", "version", OTACD_VERSION,
							"time", (json_int_t)clock_now_ms(), "time_scale", clock_scale(),
							"real_time", (json_int_t)clock_real_ms(), "storage",
							api_ops_storage_json()));
}

static json_t *diags_json(const struct pl_diags *d)
{
	json_t *arr = json_array();
	for (size_t i = 0; i < d->n; i++) {
		char *s = xasprintf("%s:%d:%d: %s", d->file, d->v[i].pos.line, d->v[i].pos.col, d->v[i].msg);
		json_array_append_new(arr, json_string(s));
		free(s);
	}
	return arr;
}

static enum MHD_Result post_lint(struct api *a, struct api_req *r)
{
	struct pl_diags d;
	struct pipeline *p = NULL;
	const char *file = api_query(r, "file");
	enum MHD_Result ret;

	pl_diags_init(&d, file ? file : "pipeline.yml");
	if (pipeline_parse(&p, d.file, buf_cstr(&r->body), r->body.len, &d) == 0) {
		struct strvec w = STRVEC_INIT;
		json_t *warnings = json_array();
		policy_lint(p, &w);
		api_lint_gate_sizing(a, p, &w);
		for (size_t i = 0; i < w.n; i++)
			json_array_append_new(warnings, json_string(w.v[i]));
		strvec_clear(&w);
		ret = api_reply_json(r, MHD_HTTP_OK, json_pack("{sb so so}", "ok", 1, "errors", json_array(), "warnings",
							       warnings));
	} else
		ret = api_reply_json(r, MHD_HTTP_OK, json_pack("{sb so}", "ok", 0, "errors", diags_json(&d)));
	pipeline_free(p);
	pl_diags_release(&d);
	return ret;
}

static const char *opt_string(json_t *obj, const char *key, int *bad)
{
	json_t *v = json_object_get(obj, key);
	if (!v || json_is_null(v))
		return NULL;
	if (!json_is_string(v)) {
		*bad = 1;
		return NULL;
	}
	return json_string_value(v);
}

static enum MHD_Result post_run(struct api *a, struct api_req *r)
{
	struct trigger_req t = { 0 };
	struct pl_diags d;
	int64_t run_id = 0;
	int bad = 0, rc;
	enum MHD_Result ret;

	t.yaml = opt_string(r->json, "pipeline", &bad);
	t.file = opt_string(r->json, "file", &bad);
	t.ref = opt_string(r->json, "ref", &bad);
	t.commit = opt_string(r->json, "commit", &bad);
	t.trigger = "api";
	t.role = r->role;
	t.actor = r->actor[0] ? r->actor : "anonymous";
	if (bad || !t.yaml)
		return api_reply_error(r, MHD_HTTP_BAD_REQUEST,
				       "body must be {\"pipeline\": YAML text, \"file\"?, \"ref\"?, \"commit\"?} with string values");
	if (t.file && (strlen(t.file) > 255 || strchr(t.file, '\n')))
		return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "'file' must be a short file name");
	if (t.ref && (strlen(t.ref) > 255 || strchr(t.ref, '\n') || !*t.ref))
		return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "'ref' must be a git ref like refs/heads/main");
	t.len = strlen(t.yaml);
	pl_diags_init(&d, t.file ? t.file : "pipeline.yml");
	rc = engine_trigger(a->cfg.engine, &t, &run_id, &d);
	if (rc == OTA_EINVAL && d.n)
		ret = api_reply_json(r, MHD_HTTP_UNPROCESSABLE_CONTENT,
				     json_pack("{ss so}", "error", "the pipeline does not validate", "errors", diags_json(&d)));
	else if (rc == OTA_EPERM && d.n)
		ret = api_reply_json(r, MHD_HTTP_FORBIDDEN,
				     json_pack("{ss so}", "error", "refused by the release policy", "errors", diags_json(&d)));
	else if (rc < 0)
		ret = api_reply_rc(r, rc);
	else
		ret = api_reply_json(r, MHD_HTTP_CREATED, json_pack("{sI}", "id", (json_int_t)run_id));
	pl_diags_release(&d);
	return ret;
}

static enum MHD_Result post_cancel(struct api *a, struct api_req *r)
{
	json_t *reason = json_object_get(r->json, "reason");
	int rc;

	if (reason && !json_is_string(reason))
		return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "reason must be a string");
	rc = engine_cancel_run(a->cfg.engine, r->id, r->actor[0] ? r->actor : "anonymous", json_string_value(reason));
	if (rc < 0)
		return api_reply_rc(r, rc);
	return api_reply_json(r, MHD_HTTP_OK, json_pack("{sI ss}", "id", (json_int_t)r->id, "state", "canceled"));
}

static enum MHD_Result get_asset(struct api *a, struct api_req *r)
{
	const char *path = strcmp(r->url, "/") ? r->url : "/index.html";
	(void)a;
	if (!strcmp(path, "/favicon.ico")) {
		/* no icon: say so without an error in every browser console */
		struct MHD_Response *resp = MHD_create_response_from_buffer(0, "", MHD_RESPMEM_PERSISTENT);
		enum MHD_Result ret = api_queue_response(r, MHD_HTTP_NO_CONTENT, resp);
		MHD_destroy_response(resp);
		return ret;
	}
	for (const struct web_asset *w = web_assets; w->path; w++) {
		if (!strcmp(w->path, path)) {
			const char *ext = strrchr(path, '.');
			const char *type = !strcmp(ext, ".html") ? "text/html; charset=utf-8"
					 : !strcmp(ext, ".css") ? "text/css"
					 : !strcmp(ext, ".js") ? "text/javascript" : "application/octet-stream";
			struct MHD_Response *resp = MHD_create_response_from_buffer(w->size, (void *)w->data,
										    MHD_RESPMEM_PERSISTENT);
			enum MHD_Result ret;
			MHD_add_response_header(resp, "Content-Type", type);
			MHD_add_response_header(resp, "Content-Security-Policy", "default-src 'self'");
			ret = api_queue_response(r, MHD_HTTP_OK, resp);
			MHD_destroy_response(resp);
			return ret;
		}
	}
	return api_reply_error(r, MHD_HTTP_NOT_FOUND, "no such page: %s", r->url);
}

/* ---- routing ------------------------------------------------------------ */

static const struct api_route routes[] = {
	{ "GET", "/api/v1/health", ROLE_NONE, BODY_NONE, get_health, NULL, 0 },
	/* the operator's probes and Prometheus (api_ops.c, docs/operations.md) */
	{ "GET", "/healthz", ROLE_NONE, BODY_NONE, api_get_healthz, NULL, 0 },
	{ "GET", "/readyz", ROLE_NONE, BODY_NONE, api_get_readyz, NULL, 0 },
	{ "GET", "/metrics", ROLE_VIEWER, BODY_NONE, api_get_metrics, NULL, 0 },
	{ "GET", "/api/v1/whoami", ROLE_VIEWER, BODY_NONE, get_whoami, NULL, 0 },
	{ "GET", "/api/v1/pipelines", ROLE_VIEWER, BODY_NONE, api_get_pipelines, NULL, 1 },
	{ "GET", "/api/v1/runs", ROLE_VIEWER, BODY_NONE, api_get_runs, NULL, 1 },
	{ "POST", "/api/v1/runs", ROLE_OPERATOR, BODY_JSON, post_run, NULL, 0 },
	{ "GET", "/api/v1/runs/:id", ROLE_VIEWER, BODY_NONE, api_get_run, NULL, 0 },
	{ "GET", "/api/v1/runs/:id/artifacts", ROLE_VIEWER, BODY_NONE, api_get_run_artifacts, NULL, 0 },
	{ "GET", "/api/v1/runs/:id/reports", ROLE_VIEWER, BODY_NONE, api_get_run_reports, NULL, 0 },
	{ "GET", "/api/v1/runs/:id/metrics", ROLE_VIEWER, BODY_NONE, api_get_run_metrics, NULL, 0 },
	{ "POST", "/api/v1/runs/:id/cancel", ROLE_OPERATOR, BODY_JSON, post_cancel, NULL, 0 },
	{ "GET", "/api/v1/jobs/:id", ROLE_VIEWER, BODY_NONE, api_get_job, NULL, 0 },
	{ "GET", "/api/v1/jobs/:id/log", ROLE_VIEWER, BODY_NONE, api_get_job_log, NULL, 0 },
	{ "GET", "/api/v1/artifacts/:id", ROLE_VIEWER, BODY_NONE, api_get_artifact, NULL, 0 },
	{ "GET", "/api/v1/artifacts/sha256/:sha", ROLE_VIEWER, BODY_NONE, api_get_object, NULL, 0 },
	{ "GET", "/api/v1/agents", ROLE_VIEWER, BODY_NONE, api_get_agents, NULL, 0 },
	{ "GET", "/api/v1/events", ROLE_VIEWER, BODY_NONE, api_get_events, NULL, 0 },
	{ "GET", "/api/v1/releases", ROLE_VIEWER, BODY_NONE, api_get_releases, NULL, 1 },
	{ "GET", "/api/v1/releases/:id", ROLE_VIEWER, BODY_NONE, api_get_release, NULL, 0 },
	{ "GET", "/api/v1/releases/:id/verification", ROLE_VIEWER, BODY_NONE, api_get_release_verification, NULL, 0 },
	{ "GET", "/api/v1/releases/:id/rollout", ROLE_VIEWER, BODY_NONE, api_get_rollout, NULL, 0 },
	{ "GET", "/api/v1/releases/:id/gates", ROLE_VIEWER, BODY_NONE, api_get_gates, NULL, 1 },
	{ "POST", "/api/v1/releases/:id/promote", ROLE_OPERATOR, BODY_JSON, api_post_rollout_action, NULL, 0 },
	{ "POST", "/api/v1/releases/:id/rollback", ROLE_OPERATOR, BODY_JSON, api_post_rollout_action, NULL, 0 },
	{ "POST", "/api/v1/releases/:id/pause", ROLE_OPERATOR, BODY_JSON, api_post_rollout_action, NULL, 0 },
	{ "POST", "/api/v1/releases/:id/resume", ROLE_OPERATOR, BODY_JSON, api_post_rollout_action, NULL, 0 },
	{ "GET", "/api/v1/rollouts", ROLE_VIEWER, BODY_NONE, api_get_rollouts, NULL, 1 },
	{ "GET", "/api/v1/audit", ROLE_VIEWER, BODY_NONE, api_get_audit, NULL, 1 },
	{ "GET", "/api/v1/keys", ROLE_VIEWER, BODY_NONE, api_get_keys, NULL, 0 },
	{ "GET", "/api/v1/trust", ROLE_VIEWER, BODY_NONE, api_get_trust, NULL, 0 },
	{ "POST", "/api/v1/revocations", ROLE_ADMIN, BODY_JSON, api_post_revocations, NULL, 0 },
	{ "POST", "/api/v1/backup", ROLE_ADMIN, BODY_JSON, api_post_backup, NULL, 0 },
	{ "POST", "/api/v1/lint", ROLE_VIEWER, BODY_RAW, post_lint, NULL, 0 },
	{ "POST", "/api/v1/triggers", ROLE_OPERATOR, BODY_JSON, api_post_trigger, NULL, 0 },
	{ "GET", "/api/v1/deliveries", ROLE_VIEWER, BODY_NONE, api_get_deliveries, NULL, 0 },
	{ "GET", "/api/v1/notifications", ROLE_VIEWER, BODY_NONE, api_get_notifications, NULL, 0 }, /* issue 17 */
	/* feature flags (issue 17, api_flags.c) */
	{ "GET", "/api/v1/flags", ROLE_VIEWER, BODY_NONE, api_get_flags, NULL, 0 },
	{ "POST", "/api/v1/flags", ROLE_OPERATOR, BODY_JSON, api_post_flags, NULL, 0 },
	{ "POST", "/api/v1/flags/rollout", ROLE_OPERATOR, BODY_JSON, api_post_flags, NULL, 0 },
	{ "GET", "/api/v1/commits/:commit", ROLE_VIEWER, BODY_NONE, api_get_commit, NULL, 0 },
	/* webhooks authenticate by signature, not by bearer token */
	{ "POST", "/hooks/github", ROLE_NONE, BODY_HOOK, api_hook_github, NULL, 0 },
	{ "POST", "/hooks/gitlab", ROLE_NONE, BODY_HOOK, api_hook_gitlab, NULL, 0 },
	{ "POST", "/hooks/gitea", ROLE_NONE, BODY_HOOK, api_hook_gitea, NULL, 0 },
	{ "POST", "/hooks/forgejo", ROLE_NONE, BODY_HOOK, api_hook_gitea, NULL, 0 },
	{ "POST", "/api/v1/agents", ROLE_ADMIN, BODY_JSON, api_post_agent, NULL, 0 },
	{ "POST", "/api/v1/agents/revoke", ROLE_ADMIN, BODY_JSON, api_post_agent_revoke, NULL, 0 },
	{ "POST", "/api/v1/tokens", ROLE_ADMIN, BODY_JSON, api_post_token, NULL, 0 },
	{ "POST", "/api/v1/tokens/revoke", ROLE_ADMIN, BODY_JSON, api_post_token_revoke, NULL, 0 },
	/* the device CA, provisioners, device certificates (issue 13, api_devca.c) */
	{ "GET", "/api/v1/fleet/ca", ROLE_VIEWER, BODY_NONE, api_get_devca, NULL, 0 },
	{ "POST", "/api/v1/fleet/ca", ROLE_ADMIN, BODY_JSON, api_post_devca, NULL, 0 },
	{ "POST", "/api/v1/fleet/ca/remove", ROLE_OPERATOR, BODY_JSON, api_post_devca_remove, NULL, 0 },
	{ "GET", "/api/v1/fleet/provisioners", ROLE_VIEWER, BODY_NONE, api_get_provisioners, NULL, 0 },
	{ "POST", "/api/v1/fleet/provisioners", ROLE_ADMIN, BODY_JSON, api_post_provisioner, NULL, 0 },
	{ "POST", "/api/v1/fleet/provisioners/revoke", ROLE_ADMIN, BODY_JSON, api_post_provisioner_revoke, NULL, 0 },
	{ "POST", "/api/v1/devices/provision", ROLE_ADMIN, BODY_JSON, api_post_device_provision, NULL, 0 },
	{ "POST", "/api/v1/devices/revoke", ROLE_OPERATOR, BODY_JSON, api_post_device_revoke, NULL, 0 },
	{ "POST", "/api/v1/devices/identify", ROLE_VIEWER, BODY_JSON, api_post_device_identify, NULL, 0 },
	/* the agent protocol: register and request take the agent's token,
	 * every route of one job that attempt's job token (api_job_auth) */
	{ "POST", "/api/v1/agent/register", ROLE_AGENT, BODY_JSON, api_agent_register, NULL, 0 },
	{ "POST", "/api/v1/agent/jobs/request", ROLE_AGENT, BODY_JSON, api_agent_request, NULL, 0 },
	{ "GET", "/api/v1/agent/jobs/:id/source", ROLE_JOB, BODY_NONE, api_agent_source, NULL, 0 },
	{ "POST", "/api/v1/agent/jobs/:id/heartbeat", ROLE_JOB, BODY_JSON, api_agent_heartbeat, NULL, 0 },
	{ "PUT", "/api/v1/agent/jobs/:id/log", ROLE_JOB, BODY_RAW, api_agent_log, NULL, 0 },
	{ "PUT", "/api/v1/agent/jobs/:id/artifacts", ROLE_JOB, BODY_ARTIFACT, api_agent_artifact,
	  api_agent_artifact_precheck, 0 },
	{ "POST", "/api/v1/agent/jobs/:id/finish", ROLE_JOB, BODY_JSON, api_agent_finish, NULL, 0 },
	{ "PUT", "/api/v1/agent/jobs/:id/reports", ROLE_JOB, BODY_REPORT, api_agent_report, NULL, 0 },
	{ "GET", "/api/v1/agent/jobs/:id/inputs", ROLE_JOB, BODY_NONE, api_agent_inputs, NULL, 0 },
	{ "GET", "/api/v1/agent/jobs/:id/inputs/:sha", ROLE_JOB, BODY_NONE, api_agent_input, NULL, 0 },
};

/* Match url against pattern; ":id" matches a positive decimal number,
 * ":sha" 64 lowercase hex digits. */
static int route_match(const char *pattern, const char *url, int64_t *id, char sha[65], char sha40[41])
{
	while (*pattern && *url) {
		if (!strncmp(pattern, ":commit", 7)) {
			if (strspn(url, "0123456789abcdef") != 40)
				return 0;
			memcpy(sha40, url, 40);
			sha40[40] = '\0';
			url += 40;
			pattern += 7;
			continue;
		}
		if (!strncmp(pattern, ":sha", 4)) {
			if (strspn(url, "0123456789abcdef") != 64)
				return 0;
			memcpy(sha, url, 64);
			sha[64] = '\0';
			url += 64;
			pattern += 4;
			continue;
		}
		if (!strncmp(pattern, ":id", 3)) {
			char *end;
			long long v;
			if (*url < '1' || *url > '9')
				return 0;
			v = strtoll(url, &end, 10);
			if (v <= 0 || (end - url) > 15)
				return 0;
			*id = v;
			url = end;
			pattern += 3;
			continue;
		}
		if (*pattern != *url)
			return 0;
		pattern++;
		url++;
	}
	/* a trailing slash is tolerated */
	return *pattern == '\0' && (*url == '\0' || !strcmp(url, "/"));
}

static const struct api_route asset_route = { "GET", "/", ROLE_NONE, BODY_NONE, get_asset, NULL, 0 };

/* Finds the route; *status is 404 or 405 when none fits. */
static const struct api_route *route_find(const char *method, const char *url, int64_t *id, char sha[65],
					       char sha40[41], unsigned *status)
{
	int path_known = 0;
	for (size_t i = 0; i < OTA_ARRAY_SIZE(routes); i++) {
		if (route_match(routes[i].pattern, url, id, sha, sha40)) {
			path_known = 1;
			if (!strcmp(routes[i].method, method))
				return &routes[i];
		}
	}
	if (!path_known && strncmp(url, "/api/", 5) != 0 && strncmp(url, "/hooks/", 7) != 0 &&
	    (!strcmp(method, "GET") || !strcmp(method, "HEAD")))
		return &asset_route;
	*status = path_known ? MHD_HTTP_METHOD_NOT_ALLOWED : MHD_HTTP_NOT_FOUND;
	return NULL;
}

static enum auth_role request_role(struct MHD_Connection *conn, const char *method, char *actor, size_t n)
{
	const char *h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
	if (!h && !strcmp(method, "GET")) {
		/* Browsers' EventSource cannot send headers: reads may carry the
		 * token as ?access_token= (never logged; GET only). */
		const char *q = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "access_token");
		enum auth_role role = q ? auth_identify(q, actor, n) : ROLE_NONE;
		return role == ROLE_AGENT ? ROLE_NONE : role;
	}
	if (!h || strncasecmp(h, "Bearer ", 7) != 0)
		return ROLE_NONE;
	h += 7;
	while (*h == ' ')
		h++;
	return auth_identify(h, actor, n);
}

size_t api_body_cap(enum body_kind k)
{
	switch (k) {
	case BODY_JSON: return API_MAX_JSON_BODY;
	case BODY_RAW: return API_MAX_LOG_CHUNK;
	case BODY_ARTIFACT: return (size_t)artifact_max_size();
	case BODY_HOOK: return API_MAX_HOOK_BODY;
	case BODY_REPORT: return REPORT_MAX_BYTES;
	default: return 64 * 1024;
	}
}

static void req_free(struct api_req *r)
{
	if (!r)
		return;
	api_cache_abandon(r->api, r);
	if (r->idem_key) {
		/* ended without an answer (the client went away): before its
		 * handler ran, nothing happened and a retry may run it; after
		 * (it was parked), its outcome is unknown */
		if (r->idem_ran)
			idem_abandon(r->api->cfg.engine, r->actor, r->idem_key);
		else
			idem_forget(r->api->cfg.engine, r->actor, r->idem_key);
		free(r->idem_key);
	}
	api_forward_job_free(r->fwd);
	if (r->spool_fd >= 0)
		close(r->spool_fd); /* unnamed: the file is gone */
	buf_release(&r->body);
	json_decref(r->json);
	json_decref(r->agent_labels);
	artifact_upload_abort(r->upload);
	free(r);
}

/* Routes that bring new work or new bytes: refused with 507 while the
 * state directory's disk is full (diskguard.h), before any body is read.
 * Heartbeats, logs (cut while full) and finishes of running jobs go on. */
static int route_takes_disk(const struct api_route *route)
{
	return route->handler == post_run || route->handler == api_post_trigger || route->body == BODY_HOOK ||
	       route->body == BODY_ARTIFACT || route->body == BODY_REPORT;
}

static enum MHD_Result first_call(struct api *a, struct api_req *r, const char *method)
{
	unsigned status = 0;
	const char *cl;

	r->route = route_find(method, r->url, &r->id, r->sha, r->sha40, &status);
	if (r->route && r->listener->agents_only && strncmp(r->route->pattern, "/api/v1/agent/", 14) != 0 &&
	    r->route->handler != get_health && r->route->handler != api_get_healthz) {
		r->route = NULL;
		return api_reply_error(r, MHD_HTTP_NOT_FOUND, "this listener serves the agent protocol only: %s %s",
				       method, r->url);
	}
	if (!r->route)
		return status == MHD_HTTP_NOT_FOUND
			       ? api_reply_error(r, status, "no such route: %s %s", method, r->url)
			       : api_reply_error(r, status, "%s is not allowed on %s", method, r->url);
	r->role = request_role(r->conn, method, r->actor, sizeof(r->actor));
	if (r->route->need == ROLE_JOB) {
		if (api_job_auth(a, r))
			return MHD_YES; /* it queued its own answer */
	} else if (r->route->need != ROLE_NONE) {
		int anonymous_ok = r->route->need == ROLE_VIEWER && a->cfg.anonymous_read;
		if (r->role == ROLE_NONE && !anonymous_ok)
			return api_reply_error(r, MHD_HTTP_UNAUTHORIZED, "missing or invalid bearer token");
		if (!anonymous_ok && !auth_allows(r->role, r->route->need))
			return api_reply_error(r, MHD_HTTP_FORBIDDEN, "this token's role (%s) may not %s %s",
					       auth_role_name(r->role), method, r->route->pattern);
	}
	/* issue 16: after authentication, a follower forwards the call to the
	 * leader once its body is in (handle_call), or refuses it; webhooks
	 * prove themselves in their handler (api_hooks.c) and are forwarded
	 * from there */
	if (api_following() && r->route->body != BODY_HOOK && api_follower_gated(r->route)) {
		if (!api_follower_forwards(r->route))
			return api_follower_refuse(r);
		r->forward = 1;
	}
	if (!r->forward && route_takes_disk(r->route) && diskguard_poll()) {
		char msg[512];
		diskguard_message(msg, sizeof(msg));
		return api_reply_error(r, MHD_HTTP_INSUFFICIENT_STORAGE, "%s; retry once space is freed", msg);
	}
	cl = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
	if (cl && strtoull(cl, NULL, 10) > api_body_cap(r->route->body))
		return api_reply_error(r, MHD_HTTP_CONTENT_TOO_LARGE, "request body larger than %zu bytes",
				       api_body_cap(r->route->body));
	buf_init(&r->body, api_body_cap(r->route->body));
	if (r->forward)
		return api_follower_prepare(a, r); /* the leader checks the rest */
	if (r->route->precheck && r->route->precheck(a, r))
		return MHD_YES; /* it queued its own answer */
	if (r->route->body == BODY_ARTIFACT && artifact_upload_begin(&r->upload) < 0)
		return api_reply_rc(r, OTA_ERROR);
	return MHD_YES;
}

/* The routes that honour an Idempotency-Key: the state-changing calls a
 * script may retry (docs/api.md). */
static int route_idempotent(const struct api_route *route)
{
	return !strcmp(route->method, "POST") &&
	       (route->handler == post_run || route->handler == post_cancel ||
		route->handler == api_post_rollout_action || route->handler == api_post_trigger ||
		route->handler == api_post_flags);
}

/*
 * The Idempotency-Key of a route that honours one (docs/api.md): answer
 * from the record (*answered = 1), or reserve the key so that queue()
 * records this request's answer (r->idem_key).
 */
static enum MHD_Result idem_check(struct api *a, struct api_req *r, const char *method, int *answered)
{
	const char *key = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Idempotency-Key");
	char fp[65], *body = NULL;
	enum idem_state state;
	int status = 0, rc;
	enum MHD_Result ret = MHD_NO;

	*answered = 1;
	if (!key) {
		*answered = 0;
		return MHD_NO;
	}
	if (!idem_key_valid(key))
		return api_reply_error(r, MHD_HTTP_BAD_REQUEST,
				       "Idempotency-Key must be 1-%d printable characters without spaces", IDEM_MAX_KEY);
	idem_fingerprint(method, r->url, r->body.ptr, r->body.len, fp);
	rc = idem_begin(a->cfg.engine, r->actor, key, fp, &state, &status, &body);
	if (rc < 0)
		return api_reply_rc(r, rc);
	switch (state) {
	case IDEM_NEW:
		r->idem_key = xstrdup(key);
		*answered = 0;
		break;
	case IDEM_REPLAY: {
		size_t len = strlen(body);
		struct MHD_Response *resp = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
		body = NULL;
		MHD_add_response_header(resp, "Content-Type", "application/json");
		MHD_add_response_header(resp, "Cache-Control", "no-store");
		MHD_add_response_header(resp, "Idempotent-Replayed", "true");
		ret = api_queue_response(r, (unsigned)status, resp);
		MHD_destroy_response(resp);
		break;
	}
	case IDEM_MISMATCH:
		ret = api_reply_error(r, MHD_HTTP_UNPROCESSABLE_CONTENT,
				      "Idempotency-Key %s was used for another request (method, path or body differ);"
				      " use a new key for a new request", key);
		break;
	case IDEM_IN_PROGRESS:
		ret = api_reply_error(r, MHD_HTTP_CONFLICT,
				      "the request with Idempotency-Key %s is still running; retry in a moment", key);
		break;
	case IDEM_INTERRUPTED:
		ret = api_reply_error(r, MHD_HTTP_CONFLICT,
				      "the request with Idempotency-Key %s was interrupted before it answered (otacd"
				      " restarted, or its client went away while it waited): whether it took effect is"
				      " unknown; check the state, then use a new key",
				      key);
		break;
	}
	free(body);
	return ret;
}

/* A client's X-Request-Id when it is sane (log.h), else a new one. */
static void request_id_pick(struct api_req *r)
{
	const char *theirs = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "X-Request-Id");
	if (ota_log_request_id_ok(theirs))
		snprintf(r->request_id, sizeof(r->request_id), "%s", theirs);
	else
		ota_log_request_id_new(r->request_id);
}

static enum MHD_Result handle_call(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
				   const char *version, const char *upload_data, size_t *upload_size, void **con_cls)
{
	const struct api_listener *l = cls;
	struct api *a = l->api;
	struct api_req *r = *con_cls;

	(void)version;
	if (!r) {
		enum MHD_Result ret;
		/* the header is complete: the header deadline stops here */
		api_conn_busy(a->waiter, conn, 1);
		r = xcalloc(1, sizeof(*r));
		r->api = a;
		r->listener = l;
		r->conn = conn;
		r->spool_fd = -1;
		r->url = url;
		r->started_us = mono_us();
		snprintf(r->method, sizeof(r->method), "%s", method);
		request_id_pick(r);
		ota_log_ctx_request(r->request_id);
		*con_cls = r;
		ret = first_call(a, r, method);
		if (!r->route || r->failed)
			r->failed = 1;
		return ret;
	}
	r->conn = conn;
	if (*upload_size) {
		if (!r->failed && !r->too_big) {
			int rc;
			if (r->upload)
				rc = artifact_upload_write(r->upload, upload_data, *upload_size);
			else if (r->spool_fd >= 0) /* a follower's upload on its way to the leader */
				rc = api_follower_spool_write(r, upload_data, *upload_size);
			else
				rc = buf_put(&r->body, upload_data, *upload_size);
			if (rc == OTA_ETOOBIG)
				r->too_big = 1;
			else if (rc < 0) {
				r->failed = 1;
				snprintf(r->error, sizeof(r->error), "%s", ota_error_last());
			}
		}
		*upload_size = 0;
		return MHD_YES;
	}
	if (r->resume) {
		/* resumed after api_wait() */
		api_handler fn = r->resume;
		r->resume = NULL;
		return fn(a, r);
	}
	if (r->too_big)
		return api_reply_error(r, MHD_HTTP_CONTENT_TOO_LARGE, "request body larger than %zu bytes",
				       r->route ? api_body_cap(r->route->body) : 0);
	if (r->failed)
		return r->error[0] ? api_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "%s", r->error) : MHD_NO;
	if (r->forward) /* before idem_check: the leader keeps the key's answer */
		return api_follower_forward(a, r);
	if (r->route->body == BODY_JSON) {
		json_error_t err;
		if (r->body.len == 0) {
			r->json = json_object();
		} else {
			r->json = json_loadb(r->body.ptr, r->body.len, JSON_REJECT_DUPLICATES, &err);
			if (!r->json)
				return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "invalid JSON at line %d column %d: %s",
						       err.line, err.column, err.text);
			if (!json_is_object(r->json))
				return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "the body must be a JSON object");
		}
	}
	if (route_idempotent(r->route)) {
		int answered;
		enum MHD_Result ret = idem_check(a, r, method, &answered);
		if (answered)
			return ret;
	}
	/* on a follower too: commitwatch.c moves store_generation() with the
	 * leader's commits (docs/scale.md) */
	if (r->route->cached) {
		int answered;
		enum MHD_Result ret = api_cache_begin(a, r, &answered);
		if (answered)
			return ret;
	}
	r->idem_ran = r->idem_key != NULL;
	return r->route->handler(a, r);
}

/* libmicrohttpd's access handler: every call for a request (header,
 * body chunks, the resumption of a parked one) runs with the request's id
 * in this thread's log context, so whatever it logs carries it. */
static enum MHD_Result handle(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
			      const char *version, const char *upload_data, size_t *upload_size, void **con_cls)
{
	struct api_req *r = *con_cls;
	enum MHD_Result ret;

	if (r)
		ota_log_ctx_request(r->request_id);
	ret = handle_call(cls, conn, url, method, version, upload_data, upload_size, con_cls);
	ota_log_ctx_request(NULL);
	return ret;
}

static void completed(void *cls, struct MHD_Connection *conn, void **con_cls, enum MHD_RequestTerminationCode toe)
{
	const struct api_listener *l = cls;
	struct api_req *r = *con_cls;
	int64_t elapsed_us = r ? mono_us() - r->started_us : 0;
	if (r && r->route)
		api_ops_observe(r->route, elapsed_us);
	if (r && ota_log_enabled(OTA_LOG_DEBUG)) {
		/* the access log (log_level: debug): the path is the client's
		 * text, which the logger escapes */
		ota_log_ctx_request(r->request_id);
		ota_log(OTA_LOG_DEBUG, "api: %s %s: %u in %.3f ms%s", r->method, r->url ? r->url : "", r->status_sent,
			(double)elapsed_us / 1000.0, toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " (not completed)");
		ota_log_ctx_request(NULL);
	}
	req_free(*con_cls);
	*con_cls = NULL;
	/* the next request on this connection gets a new header deadline */
	api_conn_busy(l->api->waiter, conn, 0);
}

static void conn_notify(void *cls, struct MHD_Connection *conn, void **socket_context,
			enum MHD_ConnectionNotificationCode code)
{
	const struct api_listener *l = cls;
	if (code == MHD_CONNECTION_NOTIFY_STARTED)
		tls_server_conn_started(l->tls, conn);
	api_conn_notify(l->api->waiter, conn, socket_context, code);
}

int api_parse_listen(const char *listen, struct sockaddr_storage *ss, socklen_t *len)
{
	char host[256];
	const char *colon = strrchr(listen, ':');
	struct addrinfo hints = { 0 }, *res = NULL;
	int rc;

	if (!colon || colon == listen || (size_t)(colon - listen) >= sizeof(host))
		return ota_error_set(OTA_EINVAL, "listen address '%s' must be HOST:PORT", listen);
	memcpy(host, listen, (size_t)(colon - listen));
	host[colon - listen] = '\0';
	if (host[0] == '[' && host[strlen(host) - 1] == ']') {
		memmove(host, host + 1, strlen(host));
		host[strlen(host) - 1] = '\0';
	}
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV;
	if ((rc = getaddrinfo(host, colon + 1, &hints, &res)) != 0)
		return ota_error_set(OTA_EINVAL, "cannot resolve listen address '%s': %s", listen, gai_strerror(rc));
	memcpy(ss, res->ai_addr, res->ai_addrlen);
	*len = res->ai_addrlen;
	freeaddrinfo(res);
	return 0;
}

/* Each connection is a descriptor: let the process have as many as the
 * listeners may hold (up to the hard limit), plus room for the rest. */
static void raise_fd_limit(rlim_t want)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur >= want)
		return;
	rl.rlim_cur = rl.rlim_max != RLIM_INFINITY && rl.rlim_max < want ? rl.rlim_max : want;
	setrlimit(RLIMIT_NOFILE, &rl);
}

static int listener_start(struct api_listener *l, struct api *a, const char *listen, int agents_only,
			  struct tls_server *tls)
{
	struct MHD_OptionItem tlsopts[TLS_MHD_OPTIONS_MAX];
	struct sockaddr_storage ss;
	socklen_t sslen;
	const union MHD_DaemonInfo *info;
	/* epoll: thousands of sockets on a few threads; suspend/resume: waits
	 * park instead of holding a thread (api_wait.c) */
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	unsigned pool = a->cfg.threads ? a->cfg.threads : ncpu < 4 ? 4 : ncpu > 16 ? 16 : (unsigned)ncpu;
	int rc;

	if ((rc = api_parse_listen(listen, &ss, &sslen)) < 0)
		return rc;
	if (agents_only)
		pool = pool > 2 ? 2 : pool;
	if (ss.ss_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	l->api = a;
	l->agents_only = agents_only;
	l->tls = tls;
	flags |= tls_server_mhd_options(tls, tlsopts);
	tls_warn_if_plain(agents_only ? "agents'" : "API", listen, (struct sockaddr *)&ss, tls);
	l->mhd = MHD_start_daemon(flags, 0, NULL, NULL, handle, l,
				  MHD_OPTION_EXTERNAL_LOGGER, api_mhd_log, NULL, /* first, or MHD says so */
				  MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
				  MHD_OPTION_NOTIFY_COMPLETED, completed, l,
				  MHD_OPTION_NOTIFY_CONNECTION, conn_notify, l,
				  MHD_OPTION_THREAD_POOL_SIZE, pool,
				  /* an idle timeout for stalled bodies and answers; the
				   * header deadline is api_wait.c's */
				  MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120,
				  MHD_OPTION_CONNECTION_LIMIT, a->cfg.max_connections,
				  MHD_OPTION_PER_IP_CONNECTION_LIMIT, a->cfg.max_per_client,
				  MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned)1024,
				  /* Upload chunks are at most the pool's free space, so a
				   * bigger pool means fewer callbacks per artifact; but MHD
				   * zeroes the whole pool after every request on a kept-alive
				   * connection.  256 KB made artifact ingest ~10 % faster and
				   * the page's API p99 several times worse; 64 KB is the
				   * compromise (docs/benchmarks.md). */
				  MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(64 * 1024),
				  MHD_OPTION_LISTENING_ADDRESS_REUSE, (unsigned)1,
				  MHD_OPTION_ARRAY, tlsopts,
				  MHD_OPTION_END);
	if (!l->mhd)
		return ota_error_set(OTA_ERROR, "cannot listen on %s (address in use, or not allowed)", listen);
	info = MHD_get_daemon_info(l->mhd, MHD_DAEMON_INFO_BIND_PORT);
	l->port = info ? info->port : 0;
	return 0;
}

int api_start(struct api **out, const struct api_config *cfg)
{
	struct api *a = xcalloc(1, sizeof(*a));
	int rc;

	*out = NULL;
	a->cfg = *cfg;
	if (!a->cfg.request_timeout_ms)
		a->cfg.request_timeout_ms = 10000;
	if (!a->cfg.max_connections)
		a->cfg.max_connections = 10000;
	if (!a->cfg.max_per_client)
		a->cfg.max_per_client = 128;
	raise_fd_limit((rlim_t)a->cfg.max_connections * 2 + 1024);
	a->cache = api_cache_new();
	if ((rc = api_fwd_new(&a->fwd, &(struct api_fwd_config){ 0, 0, cfg->forward_ca })) < 0 || (rc = api_waiter_start(&a->waiter, a->cfg.request_timeout_ms)) < 0 ||
	    (cfg->engine && (rc = api_waiter_watch(a->waiter, engine_work(cfg->engine))) < 0) ||
	    (rc = api_waiter_watch(a->waiter, logstore_changes())) < 0 ||
	    (cfg->sources && (rc = api_waiter_watch(a->waiter, sources_done(cfg->sources))) < 0) ||
	    (rc = listener_start(&a->main, a, cfg->listen, 0, cfg->tls)) < 0 ||
	    (cfg->agent_listen && *cfg->agent_listen && (rc = listener_start(&a->agents, a, cfg->agent_listen, 1, cfg->agent_tls)) < 0)) {
		api_stop(a);
		return rc;
	}
	*out = a;
	return 0;
}

int api_lead(struct api *a, struct engine *e, struct sources *s)
{
	int rc;
	/* read by handlers only once api_follower_set(0) lets them through */
	a->cfg.engine = e;
	a->cfg.sources = s;
	if ((rc = api_waiter_watch(a->waiter, engine_work(e))) < 0 ||
	    (s && (rc = api_waiter_watch(a->waiter, sources_done(s))) < 0))
		return rc;
	return 0;
}

int api_port(const struct api *a)
{
	return a->main.port;
}

int api_agent_port(const struct api *a)
{
	return a->agents.port;
}

void api_stop(struct api *a)
{
	if (!a)
		return;
	a->stopping = 1;
	/* every parked request answers (it sees `stopping`) before the
	 * listeners stop: libmicrohttpd must not stop with one suspended */
	api_waiter_drain(a->waiter);
	/* and every forward on its way resumes its connection (503) */
	if (a->fwd)
		api_fwd_drain(a->fwd);
	if (a->agents.mhd)
		MHD_stop_daemon(a->agents.mhd);
	if (a->main.mhd)
		MHD_stop_daemon(a->main.mhd);
	api_waiter_stop(a->waiter);
	api_fwd_free(a->fwd);
	api_cache_free(a->cache);
	free(a);
}
