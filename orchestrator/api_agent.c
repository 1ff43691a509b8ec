/*
 * api_agent.c - the agent protocol (docs/api.md, "Agent protocol").
 *
 * Agents register, long-poll for a job, heartbeat, stream log chunks,
 * upload artifacts and report the result.  Every state change goes through
 * the engine; this file only checks input and translates to HTTP.
 *
 * The long poll: read the dispatch queue's generation, try to claim, and if
 * nothing matched, park the request (no thread held) until the generation
 * moves (a job became claimable) or the agent's wait runs out.  A job is therefore picked up
 * within the time of one engine round trip, not a poll interval.
 */
#include "api_int.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "logstore.h"

static int64_t json_int_field(json_t *o, const char *key, int *bad)
{
	json_t *v = json_object_get(o, key);
	if (!json_is_integer(v) || json_integer_value(v) < 0) {
		*bad = 1;
		return 0;
	}
	return json_integer_value(v);
}

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

enum MHD_Result api_agent_register(struct api *a, struct api_req *r)
{
	json_t *name = json_object_get(r->json, "name"), *labels = json_object_get(r->json, "labels"), *l;
	json_t *local = json_object_get(r->json, "local");
	int64_t id = 0;
	size_t i;
	int rc;

	if (!json_is_string(name) || !name_valid(json_string_value(name)))
		return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "'name' must be a non-empty string without spaces (max 128)");
	if (!labels)
		labels = json_array();
	else
		json_incref(labels);
	if (!json_is_array(labels) || json_array_size(labels) > 64) {
		json_decref(labels);
		return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "'labels' must be a list of at most 64 strings");
	}
	json_array_foreach(labels, i, l) {
		if (!json_is_string(l) || !name_valid(json_string_value(l))) {
			json_decref(labels);
			return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "label %zu must be a non-empty string without spaces", i);
		}
	}
	rc = engine_agent_register(a->cfg.engine, json_string_value(name), labels, json_is_true(local), &id);
	json_decref(labels);
	if (rc < 0)
		return api_reply_rc(r, rc);
	return api_reply_json(r, MHD_HTTP_OK, json_pack("{sI sI sI}", "agent_id", (json_int_t)id,
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
	rc = engine_claim(a->cfg.engine, r->wait_arg, &job);
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
	int bad = 0;
	int64_t agent = json_int_field(r->json, "agent_id", &bad);
	json_t *wait = json_object_get(r->json, "wait_ms");
	int64_t wait_ms = json_is_integer(wait) ? json_integer_value(wait) : 25000;

	if (bad)
		return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "'agent_id' must be an integer");
	if (wait_ms < 0)
		wait_ms = 0;
	if (wait_ms > 60000)
		wait_ms = 60000;
	r->wait_arg = agent;
	r->wait_deadline = clock_mono_ms() + wait_ms;
	return request_poll(a, r);
}

enum MHD_Result api_agent_heartbeat(struct api *a, struct api_req *r)
{
	int bad = 0, cancel = 0, rc;
	int64_t agent = json_int_field(r->json, "agent_id", &bad);
	int64_t attempt = json_int_field(r->json, "attempt", &bad);

	if (bad)
		return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "'agent_id' and 'attempt' must be integers");
	rc = engine_heartbeat(a->cfg.engine, agent, r->id, (int)attempt, &cancel);
	if (rc < 0)
		return api_reply_rc(r, rc);
	return api_reply_json(r, MHD_HTTP_OK, json_pack("{sb}", "cancel", cancel));
}

/* Is attempt the job's current attempt (running, or canceled and not yet reported)? */
int api_attempt_current(int64_t job, int64_t attempt)
{
	struct store *s = store_reader();
	sqlite3_stmt *st;
	int ok = 0;
	if (!s || !(st = store_stmt(s, "SELECT attempt = ? AND state IN ('running','canceled') FROM jobs WHERE id = ?")))
		return 0;
	sqlite3_bind_int64(st, 1, attempt);
	sqlite3_bind_int64(st, 2, job);
	if (store_step_row(s, st) == 1)
		ok = (int)store_col_int(st, 0);
	sqlite3_reset(st);
	return ok;
}

enum MHD_Result api_agent_log(struct api *a, struct api_req *r)
{
	int64_t attempt = api_query_int(r, "attempt"), offset = api_query_int(r, "offset"), size = 0;
	int rc;

	(void)a;
	if (attempt <= 0 || offset < 0)
		return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "query needs attempt=N (N >= 1) and offset=N (N >= 0)");
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
	const char *name = api_query(r, "name"), *sha = api_query(r, "sha256");
	const char *type = api_query(r, "type"), *hw = api_query(r, "hardware");
	int64_t attempt = api_query_int(r, "attempt");

	(void)a;
	if (attempt <= 0 || !name || !hex64(sha)) {
		api_reply_error(r, MHD_HTTP_BAD_REQUEST, "query needs attempt=N, name=PATH and sha256=64 lowercase hex");
		r->failed = 1;
		return 1;
	}
	if (!artifact_name_valid(name) || (type && !name_valid(type)) || (hw && !name_valid(hw))) {
		api_reply_error(r, MHD_HTTP_BAD_REQUEST, "artifact name '%s' is not a safe relative path", name);
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
	rc = engine_artifact_add(a->cfg.engine, r->id, (int)api_query_int(r, "attempt"), &info, &id);
	if (rc < 0)
		return api_reply_rc(r, rc);
	return api_reply_json(r, MHD_HTTP_CREATED,
			      json_pack("{sI sI ss ss sI}", "id", (json_int_t)id, "job_id", (json_int_t)r->id, "name",
					info.name, "sha256", sha, "size", (json_int_t)size));
}

enum MHD_Result api_agent_finish(struct api *a, struct api_req *r)
{
	static const char *const failures[] = { "script", "timeout", "infra", "canceled" };
	int bad = 0, rc;
	int64_t agent = json_int_field(r->json, "agent_id", &bad);
	int64_t attempt = json_int_field(r->json, "attempt", &bad);
	json_t *code = json_object_get(r->json, "exit_code");
	json_t *failure = json_object_get(r->json, "failure");
	json_t *message = json_object_get(r->json, "message");
	struct job_result res = { -1, NULL, NULL };
	const char *state = NULL;

	if (bad || (code && !json_is_integer(code) && !json_is_null(code)))
		return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "'agent_id', 'attempt' and 'exit_code' must be integers");
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
	rc = engine_finish(a->cfg.engine, agent, r->id, (int)attempt, &res, &state);
	if (rc < 0)
		return api_reply_rc(r, rc);
	return api_reply_json(r, MHD_HTTP_OK, json_pack("{ss}", "state", state));
}
