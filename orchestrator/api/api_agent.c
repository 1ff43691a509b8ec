/*
 * api_agent.c - the agent protocol (docs/api.md, "Agent protocol").
 *
 * Agents register, long-poll for a job, heartbeat, stream log chunks,
 * upload artifacts and report the result.  Every state change goes through
 * the engine; this file only checks input and translates to HTTP.
 *
 * Identities (docs/security.md, "Agents and jobs"): an agent is its token.
 * register and request take the agent's own token (never an admin's) and
 * derive the agent from it, whatever the body says; the labels an agent
 * announces must be among the labels it was registered with.  A claim
 * hands out a job token for that one attempt, and every job route
 * (heartbeat, log, artifacts, reports, inputs, source, finish) takes that
 * job token instead (api_job_auth, called before any body is read): it
 * names the job, the attempt and the agent, and stops working the moment
 * the attempt is over (finished, lease expired, retried, agent revoked).
 *
 * The long poll: read the dispatch queue's generation, try to claim, and if
 * nothing matched, park the request (no thread held) until the generation
 * moves (a job became claimable) or the agent's wait runs out.  A job is therefore picked up
 * within the time of one engine round trip, not a poll interval.
 */
#include "api_int.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../clock.h"
#include "../db/db.h"
#include "../logstore.h"

static int name_valid(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > 128)
		return 0;
	for (const char *p = s; *p; p++)
		if ((unsigned char)*p <= 0x20 || *p == 0x7f)
			return 0;
	return 1;
}

/* The labels outside bound (NULL when none are), as "a, b". */
static char *labels_outside(const json_t *labels, const json_t *bound)
{
	struct buf b = BUF_INIT;
	size_t i, k;
	json_t *l, *m;

	json_array_foreach(labels, i, l) {
		int ok = 0;
		json_array_foreach(bound, k, m)
			ok |= json_equal(l, m);
		if (!ok)
			buf_printf(&b, "%s%s", b.len ? ", " : "", json_string_value(l));
	}
	return b.len ? buf_detach(&b) : (buf_release(&b), NULL);
}

/* The agent a request speaks for: the name of its token.  Agent routes
 * need an agent token (auth_allows), so r->actor is an agent's name. */
static int agent_of_token(struct api_req *r, int64_t *id)
{
	struct store *s = store_reader();
	struct db_stmt *st;
	int rc;

	*id = 0;
	if (!s || !(st = store_q(s, "SELECT id FROM agents WHERE name = ? AND revoked_at IS NULL")))
		return OTA_ERROR;
	db_bind_text(st, 1, r->actor);
	rc = db_step(st);
	if (rc == 1)
		*id = db_column_int64(st, 0);
	db_reset(st);
	return rc < 0 ? rc : rc == 1 ? 0 : OTA_ENOTFOUND;
}

enum MHD_Result api_agent_register(struct api *a, struct api_req *r)
{
	json_t *name = json_object_get(r->json, "name"), *labels = json_object_get(r->json, "labels"), *l;
	json_t *bound = NULL;
	unsigned flags = 0;
	int64_t id = 0;
	size_t i;
	int rc;
	char *outside;

	/* The agent is whoever its token names; a body naming another is refused. */
	if (name && (!json_is_string(name) || strcmp(json_string_value(name), r->actor) != 0))
		return api_reply_error(r, MHD_HTTP_FORBIDDEN, "this token belongs to agent '%s'", r->actor);
	if (!name_valid(r->actor) || !auth_agent_info(r->actor, &bound, &flags, NULL))
		return api_reply_error(r, MHD_HTTP_FORBIDDEN, "token '%s' names no agent", r->actor);
	if (!labels)
		labels = json_array();
	else
		json_incref(labels);
	if (!json_is_array(labels) || json_array_size(labels) > 64) {
		json_decref(labels);
		json_decref(bound);
		return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "'labels' must be a list of at most 64 strings");
	}
	json_array_foreach(labels, i, l) {
		if (!json_is_string(l) || !name_valid(json_string_value(l))) {
			json_decref(labels);
			json_decref(bound);
			return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "label %zu must be a non-empty string without spaces", i);
		}
	}
	if (bound && (outside = labels_outside(labels, bound))) {
		enum MHD_Result ret = api_reply_error(r, MHD_HTTP_FORBIDDEN,
						      "agent '%s' is not registered for label(s) %s", r->actor, outside);
		free(outside);
		json_decref(labels);
		json_decref(bound);
		return ret;
	}
	json_decref(bound);
	rc = engine_agent_register(a->cfg.engine, r->actor, labels, (flags & AUTH_AGENT_LOCAL) != 0, &id);
	json_decref(labels);
	if (rc < 0)
		return api_reply_rc(r, rc);
	return api_reply_json(r, MHD_HTTP_OK, json_pack("{sI ss sI sI}", "agent_id", (json_int_t)id, "name", r->actor,
							"lease_ms", (json_int_t)a->cfg.lease_ms,
							"heartbeat_ms", (json_int_t)a->cfg.heartbeat_ms));
}

/* One look at the dispatch queue: the job, or park until the queue's
 * generation moves or the agent's wait runs out (api_wait.c); the request
 * holds no thread while parked. */
static enum MHD_Result request_poll(struct api *a, struct api_req *r)
{
	struct notifier *work = engine_work(a->cfg.engine);
	uint64_t gen = notifier_gen(work);
	json_t *job = NULL;
	int rc;

	if (a->stopping)
		return api_reply_json(r, MHD_HTTP_NO_CONTENT, json_object());
	rc = engine_claim(a->cfg.engine, r->wait_arg, r->agent_labels, &job);
	if (rc < 0)
		return api_reply_rc(r, rc);
	if (job)
		return api_reply_json(r, MHD_HTTP_OK, job);
	if (clock_mono_ms() >= r->wait_deadline)
		return api_reply_json(r, MHD_HTTP_NO_CONTENT, json_object());
	return api_wait(r, work, gen, r->wait_deadline, request_poll);
}

enum MHD_Result api_agent_request(struct api *a, struct api_req *r)
{
	int64_t agent = 0;
	json_t *wait = json_object_get(r->json, "wait_ms");
	int64_t wait_ms = json_is_integer(wait) ? json_integer_value(wait) : 25000;
	int who;

	/* Authorization: the agent is its token's (never a body's agent_id),
	 * and claims only within the labels it was registered with. */
	if ((who = agent_of_token(r, &agent)) < 0)
		return who == OTA_ENOTFOUND ? api_reply_error(r, MHD_HTTP_NOT_FOUND, "agent '%s' has not registered", r->actor)
					   : api_reply_rc(r, who);
	auth_agent_info(r->actor, &r->agent_labels, NULL, NULL);
	if (wait_ms < 0)
		wait_ms = 0;
	if (wait_ms > 60000)
		wait_ms = 60000;
	r->wait_arg = agent;
	r->wait_deadline = clock_mono_ms() + wait_ms;
	return request_poll(a, r);
}

/* The body's "attempt", when given, must be the job token's. */
static int body_attempt_ok(struct api_req *r)
{
	json_t *v = json_object_get(r->json, "attempt");
	return !v || json_is_null(v) || (json_is_integer(v) && json_integer_value(v) == r->attempt);
}

enum MHD_Result api_agent_heartbeat(struct api *a, struct api_req *r)
{
	int cancel = 0, rc;

	if (!body_attempt_ok(r))
		return api_reply_error(r, MHD_HTTP_CONFLICT, "this job token is for attempt %" PRId64, r->attempt);
	rc = engine_heartbeat(a->cfg.engine, r->agent_id, r->id, (int)r->attempt, &cancel);
	if (rc < 0)
		return api_reply_rc(r, rc);
	return api_reply_json(r, MHD_HTTP_OK, json_pack("{sb}", "cancel", cancel));
}

/* The Authorization header's bearer token, or NULL. */
static const char *bearer(struct api_req *r)
{
	const char *h = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
	if (!h || strncasecmp(h, "Bearer ", 7) != 0)
		return NULL;
	for (h += 7; *h == ' '; h++)
		;
	return *h ? h : NULL;
}

static int job_auth_refuse(struct api_req *r, unsigned status, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static int job_auth_refuse(struct api_req *r, unsigned status, const char *fmt, ...)
{
	char msg[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	api_reply_error(r, status, "%s", msg);
	r->failed = 1;
	return 1;
}

int api_job_auth(struct api *a, struct api_req *r)
{
	const char *token = bearer(r);
	struct store *s = store_reader();
	struct db_stmt *st;
	char hash[65], state[16] = "";
	int64_t job = 0, attempt = 0, current = 0, ended = 0, q;
	int rc, open = 0, revoked = 0;

	if (!token)
		return job_auth_refuse(r, MHD_HTTP_UNAUTHORIZED, "job routes need the job token of the attempt");
	if (!s || !(st = store_q(s, "SELECT ja.job_id, ja.attempt, COALESCE(ja.agent_id, 0), ja.finished_at IS NULL,"
					 " j.attempt, j.state, ag.revoked_at IS NOT NULL, ag.name,"
					" COALESCE(j.finished_at, 0)"
					" FROM job_attempts ja JOIN jobs j ON j.id = ja.job_id"
					" LEFT JOIN agents ag ON ag.id = ja.agent_id WHERE ja.token_hash = ?")))
		return job_auth_refuse(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "database unavailable");
	auth_sha256_hex(token, hash);
	db_bind_text(st, 1, hash);
	rc = db_step(st);
	if (rc == 1) {
		job = db_column_int64(st, 0);
		attempt = db_column_int64(st, 1);
		r->agent_id = db_column_int64(st, 2);
		open = (int)db_column_int64(st, 3);
		current = db_column_int64(st, 4);
		snprintf(state, sizeof(state), "%s", db_column_text(st, 5) ? db_column_text(st, 5) : "");
		revoked = (int)db_column_int64(st, 6);
		snprintf(r->actor, sizeof(r->actor), "%s", db_column_text(st, 7) ? db_column_text(st, 7) : "");
		ended = db_column_int64(st, 8);
	}
	db_reset(st);
	if (rc < 0)
		return job_auth_refuse(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "database unavailable");
	if (rc == 0)
		return auth_check(token) != ROLE_NONE
			       ? job_auth_refuse(r, MHD_HTTP_FORBIDDEN, "job routes take the job token the claim of job %"
					     PRId64 " returned, not an API or agent token", r->id)
			       : job_auth_refuse(r, MHD_HTTP_UNAUTHORIZED, "unknown job token");
	if (job != r->id)
		return job_auth_refuse(r, MHD_HTTP_FORBIDDEN, "this job token is not for job %" PRId64, r->id);
	r->attempt = attempt;
	/* A running attempt whose lease ran out is over once the engine
	 * records it so (it moves the job on): not before, for a daemon that
	 * was stopped or stalled gives running jobs a new lease first
	 * (engine.c, stall_grace), and an agent that is heard from is not lost. */
	if (!open || revoked || current != attempt || (strcmp(state, "running") && strcmp(state, "canceled")) ||
	    /* a canceled attempt has one lease to stop and report */
	    (!strcmp(state, "canceled") && (double)(clock_now_ms() - ended) / clock_scale() > (double)a->cfg.lease_ms))
		return job_auth_refuse(r, MHD_HTTP_CONFLICT, "attempt %" PRId64 " of this job is over", attempt);
	q = api_query_int(r, "attempt");
	if (q != -1 && q != attempt)
		return job_auth_refuse(r, MHD_HTTP_CONFLICT, "this job token is for attempt %" PRId64, attempt);
	return 0;
}

/* Is attempt the job's current attempt (running, or canceled and not yet reported)? */
int api_attempt_current(int64_t job, int64_t attempt)
{
	struct store *s = store_reader();
	struct db_stmt *st;
	int ok = 0;
	if (!s || !(st = store_q(s, "SELECT attempt = ? AND state IN ('running','canceled') FROM jobs WHERE id = ?")))
		return 0;
	db_bind_int64(st, 1, attempt);
	db_bind_int64(st, 2, job);
	if (db_step(st) == 1)
		ok = (int)db_column_int64(st, 0);
	db_reset(st);
	return ok;
}

enum MHD_Result api_agent_log(struct api *a, struct api_req *r)
{
	int64_t attempt = r->attempt, offset = api_query_int(r, "offset"), size = 0;
	int rc;

	(void)a;
	if (offset < 0)
		return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "query needs offset=N (N >= 0)");
	if (!api_attempt_current(r->id, attempt))
		return api_reply_error(r, MHD_HTTP_CONFLICT, "attempt %" PRId64 " of job %" PRId64 " is not running",
				       attempt, r->id);
	rc = logstore_append(r->id, (int)attempt, offset, r->body.ptr ? r->body.ptr : "", r->body.len, &size);
	if (rc == OTA_ECONFLICT)
		return api_reply_json(r, MHD_HTTP_RANGE_NOT_SATISFIABLE,
				      json_pack("{sI ss}", "size", (json_int_t)size, "error", ota_error_last()));
	if (rc < 0)
		return api_reply_rc(r, rc);
	return api_reply_json(r, MHD_HTTP_OK, json_pack("{sI}", "size", (json_int_t)size));
}

static int hex64(const char *s)
{
	return s && strlen(s) == 64 && strspn(s, "0123456789abcdef") == 64;
}

int api_agent_artifact_precheck(struct api *a, struct api_req *r)
{
	const char *name = NULL, *sha = api_query(r, "sha256");
	const char *type = api_query(r, "type"), *hw = api_query(r, "hardware");
	int64_t attempt = r->attempt;
	size_t name_len = 0;
	char why[128];

	(void)a;
	/* the decoded length: "fw.bin%00.txt" is 11 bytes, not the 6 strlen sees */
	if (MHD_lookup_connection_value_n(r->conn, MHD_GET_ARGUMENT_KIND, "name", 4, &name, &name_len) != MHD_YES)
		name = NULL;
	if (!name || !hex64(sha)) {
		api_reply_error(r, MHD_HTTP_BAD_REQUEST, "query needs name=PATH and sha256=64 lowercase hex");
		r->failed = 1;
		return 1;
	}
	if (ota_artifact_name_check(name, name_len, why, sizeof(why)) < 0) {
		api_reply_error(r, MHD_HTTP_BAD_REQUEST, "artifact name refused: %s", why);
		r->failed = 1;
		return 1;
	}
	if ((type && !name_valid(type)) || (hw && !name_valid(hw))) {
		api_reply_error(r, MHD_HTTP_BAD_REQUEST, "artifact type and hardware must be short words without spaces");
		r->failed = 1;
		return 1;
	}
	if (!api_attempt_current(r->id, attempt)) {
		api_reply_error(r, MHD_HTTP_CONFLICT, "attempt %" PRId64 " of job %" PRId64 " is not running", attempt, r->id);
		r->failed = 1;
		return 1;
	}
	return 0;
}

enum MHD_Result api_agent_artifact(struct api *a, struct api_req *r)
{
	struct artifact_info info = { 0 };
	char sha[65];
	int64_t size = 0, id = 0;
	int rc;

	rc = artifact_upload_commit(r->upload, api_query(r, "sha256"), sha, &size);
	r->upload = NULL;
	if (rc < 0)
		return api_reply_rc(r, rc);
	info.name = api_query(r, "name");
	info.sha256 = sha;
	info.size = size;
	info.type = api_query(r, "type");
	info.hardware = api_query(r, "hardware");
	rc = engine_artifact_add(a->cfg.engine, r->id, (int)r->attempt, &info, &id);
	if (rc < 0)
		return api_reply_rc(r, rc);
	return api_reply_json(r, MHD_HTTP_CREATED,
			      json_pack("{sI sI ss ss sI}", "id", (json_int_t)id, "job_id", (json_int_t)r->id, "name",
					info.name, "sha256", sha, "size", (json_int_t)size));
}

enum MHD_Result api_agent_finish(struct api *a, struct api_req *r)
{
	static const char *const failures[] = { "script", "timeout", "infra", "canceled" };
	int rc;
	json_t *code = json_object_get(r->json, "exit_code");
	json_t *failure = json_object_get(r->json, "failure");
	json_t *message = json_object_get(r->json, "message");
	struct job_result res = { -1, NULL, NULL };
	const char *state = NULL;

	if (!body_attempt_ok(r))
		return api_reply_error(r, MHD_HTTP_CONFLICT, "this job token is for attempt %" PRId64, r->attempt);
	if (code && !json_is_integer(code) && !json_is_null(code))
		return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "'exit_code' must be an integer");
	if (failure && !json_is_null(failure)) {
		size_t i;
		if (!json_is_string(failure))
			return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "'failure' must be null or a string");
		for (i = 0; i < OTA_ARRAY_SIZE(failures); i++)
			if (!strcmp(failures[i], json_string_value(failure)))
				res.failure_kind = failures[i];
		if (!res.failure_kind)
			return api_reply_error(r, MHD_HTTP_BAD_REQUEST,
					       "'failure' must be one of script, timeout, infra, canceled");
	}
	if (message && !json_is_null(message)) {
		if (!json_is_string(message) || strlen(json_string_value(message)) > 4096)
			return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "'message' must be a string of at most 4096 bytes");
		res.message = json_string_value(message);
	}
	if (json_is_integer(code))
		res.exit_code = (int)json_integer_value(code);
	rc = engine_finish(a->cfg.engine, r->agent_id, r->id, (int)r->attempt, &res, &state);
	if (rc < 0)
		return api_reply_rc(r, rc);
	return api_reply_json(r, MHD_HTTP_OK, json_pack("{ss}", "state", state));
}
