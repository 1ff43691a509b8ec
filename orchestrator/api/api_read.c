/*
 * api_read.c - the read-only routes: pipelines, runs, jobs, logs (plain and
 * live), artifacts, agents.
 *
 * Every read runs on the handler's own thread through store_reader(), a
 * read-only connection that WAL lets proceed while the engine writes, in
 * the storage layer's dialect (docs/storage.md), so it runs on SQLite and
 * PostgreSQL alike.  An answer made of several statements (a run with its
 * stages and jobs) reads them inside one snapshot (api_snapshot_begin()),
 * so it never shows a job of a stage it does not list.
 *
 * Live logs are Server-Sent Events produced by a libmicrohttpd content
 * callback.  The callback never blocks: with nothing new it parks the
 * connection on the log store's notifier for new bytes or a state change,
 * sending a keepalive comment every 15 s.  Each event's id is the offset
 * after its bytes, so a client resumes exactly where it stopped.
 */
#include "api_int.h"

#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../clock.h"
#include "../db/db.h"
#include "../logstore.h"
#include "../store.h"

static void set_int_or_null(json_t *o, const char *key, struct db_stmt *st, int col)
{
	if (db_column_type(st, col) == DB_NULL)
		json_object_set_new(o, key, json_null());
	else
		json_object_set_new(o, key, json_integer(db_column_int64(st, col)));
}

static void set_text_or_null(json_t *o, const char *key, struct db_stmt *st, int col)
{
	const char *s = db_column_text(st, col);
	json_object_set_new(o, key, s ? json_string(s) : json_null());
}

static struct store *reader(struct api_req *r)
{
	struct store *s = store_reader();
	if (!s)
		api_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "database unavailable: %s", ota_error_last());
	return s;
}

int api_snapshot_begin(struct store *s)
{
	return store_snapshot_begin(s);
}

void api_snapshot_end(struct store *s)
{
	store_snapshot_end(s);
}

/* The reader, inside a snapshot; NULL after answering 500. */
static struct store *reader_snapshot(struct api_req *r)
{
	struct store *s = reader(r);
	if (s && api_snapshot_begin(s) < 0) {
		api_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "database unavailable: %s", ota_error_last());
		return NULL;
	}
	return s;
}

#define RUN_COLS "id, pipeline, file, ref, commit_id, state, concurrency, trigger, created_at, started_at, finished_at," \
		 " error, repo, tree_id, author, committer, message, pusher, delivery_id, protected, trust_reason," \
		 " pr_number, pr_base"

static json_t *run_json(struct db_stmt *st)
{
	json_t *o = json_object();
	json_object_set_new(o, "id", json_integer(db_column_int64(st, 0)));
	set_text_or_null(o, "pipeline", st, 1);
	set_text_or_null(o, "file", st, 2);
	set_text_or_null(o, "ref", st, 3);
	set_text_or_null(o, "commit", st, 4);
	set_text_or_null(o, "state", st, 5);
	set_text_or_null(o, "concurrency", st, 6);
	set_text_or_null(o, "trigger", st, 7);
	set_int_or_null(o, "created_at", st, 8);
	set_int_or_null(o, "started_at", st, 9);
	set_int_or_null(o, "finished_at", st, 10);
	set_text_or_null(o, "error", st, 11);
	set_text_or_null(o, "repo", st, 12);
	set_text_or_null(o, "tree", st, 13);
	set_text_or_null(o, "author", st, 14);
	set_text_or_null(o, "committer", st, 15);
	set_text_or_null(o, "message", st, 16);
	set_text_or_null(o, "pusher", st, 17);
	set_int_or_null(o, "delivery", st, 18);
	json_object_set_new(o, "protected", json_boolean(db_column_int64(st, 19)));
	set_text_or_null(o, "trust_reason", st, 20);
	if (db_column_int64(st, 21) > 0) /* issue 17: a pull/merge request's run */
		json_object_set_new(o, "pull_request", json_pack("{sI ss?}", "number", (json_int_t)db_column_int64(st, 21),
								 "base", db_column_text(st, 22)));
	return o;
}

#define JOB_COLS "j.id, j.run_id, s.name, j.name, j.spec, j.state, j.attempt, j.retries_left, j.infra_retries_left," \
		 " COALESCE(a.name, CASE WHEN j.agent_id = 0 THEN 'otacd' END), j.started_at, j.finished_at, j.exit_code," \
		 " j.failure, j.message, j.real_started_at, j.real_finished_at, j.agent_id"
#define JOB_FROM " FROM jobs j JOIN stages s ON s.id = j.stage_id LEFT JOIN agents a ON a.id = j.agent_id"

static json_t *job_json(struct db_stmt *st)
{
	json_t *o = json_object(), *spec = json_loads(db_column_text(st, 4), 0, NULL);
	int64_t id = db_column_int64(st, 0);
	int attempt = (int)db_column_int64(st, 6);
	json_t *retry = json_object_get(spec, "retry");

	json_object_set_new(o, "id", json_integer(id));
	json_object_set_new(o, "run_id", json_integer(db_column_int64(st, 1)));
	set_text_or_null(o, "stage", st, 2);
	set_text_or_null(o, "name", st, 3);
	json_object_set(o, "matrix", json_object_get(spec, "matrix") ? json_object_get(spec, "matrix") : json_object());
	json_object_set(o, "labels", json_object_get(spec, "labels") ? json_object_get(spec, "labels") : json_array());
	set_text_or_null(o, "state", st, 5);
	json_object_set_new(o, "attempt", json_integer(attempt));
	json_object_set_new(o, "max_attempts",
			    json_integer(1 + json_integer_value(json_object_get(retry, "count")) +
					 (json_object_get(retry, "infra") ? json_integer_value(json_object_get(retry, "infra")) : 2)));
	set_text_or_null(o, "agent", st, 9);
	set_int_or_null(o, "started_at", st, 10);
	set_int_or_null(o, "finished_at", st, 11);
	set_int_or_null(o, "exit_code", st, 12);
	set_text_or_null(o, "failure", st, 13);
	set_text_or_null(o, "message", st, 14);
	json_object_set_new(o, "log_size", json_integer(attempt ? logstore_size(id, attempt) : 0));
	/* Durations (issue 18): a job that ran on an agent is measured in
	 * real (wall-clock) time, whatever --time-scale; a job inside otacd
	 * (soaks and rollouts: holds) in otacd time.  "clock" says which. */
	set_int_or_null(o, "real_started_at", st, 15);
	set_int_or_null(o, "real_finished_at", st, 16);
	{
		int on_agent = db_column_int64(st, 17) > 0 && db_column_type(st, 15) != DB_NULL;
		json_object_set_new(o, "clock", json_string(on_agent ? "real" : "otacd"));
		if (on_agent && db_column_type(st, 16) != DB_NULL)
			json_object_set_new(o, "duration_ms", json_integer(db_column_int64(st, 16) - db_column_int64(st, 15)));
		else if (!on_agent && db_column_type(st, 11) != DB_NULL && db_column_type(st, 10) != DB_NULL)
			json_object_set_new(o, "duration_ms", json_integer(db_column_int64(st, 11) - db_column_int64(st, 10)));
	}
	json_decref(spec);
	return o;
}

static const char pipelines_sql[] =
	"SELECT r.pipeline, COUNT(*), MAX(r.id) FROM runs r GROUP BY r.pipeline ORDER BY r.pipeline";
static const char run_by_id_sql[] = "SELECT " RUN_COLS " FROM runs WHERE id = ?";

enum MHD_Result api_get_pipelines(struct api *a, struct api_req *r)
{
	struct store *s = reader_snapshot(r);
	struct db_stmt *st;
	json_t *arr;
	int rc = 0;

	(void)a;
	if (!s)
		return MHD_YES;
	arr = json_array();
	if (!(st = store_q(s, pipelines_sql)))
		goto fail;
	while ((rc = db_step(st)) == 1) {
		json_t *p = json_pack("{ss sI sI}", "name", db_column_text(st, 0), "runs", (json_int_t)db_column_int64(st, 1),
				      "last_run_id", (json_int_t)db_column_int64(st, 2));
		json_array_append_new(arr, p);
	}
	db_reset(st);
	if (rc < 0)
		goto fail;
	/* attach the last run's summary, from the same snapshot */
	for (size_t i = 0; i < json_array_size(arr); i++) {
		json_t *p = json_array_get(arr, i);
		if (!(st = store_q(s, run_by_id_sql)))
			goto fail;
		db_bind_int64(st, 1, json_integer_value(json_object_get(p, "last_run_id")));
		if (db_step(st) == 1)
			json_object_set_new(p, "last_run", run_json(st));
		db_reset(st);
	}
	api_snapshot_end(s);
	return api_reply_json(r, MHD_HTTP_OK, arr);
fail:
	api_snapshot_end(s);
	json_decref(arr);
	return api_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "pipelines: %s", ota_error_last());
}

/* GET /api/v1/runs: one statement per combination of filters (bit 1
 * pipeline, 2 ref, 4 state, 8 before), so that SQLite can use the
 * runs_by_pipeline and runs_by_state indexes and seek to `before` in the
 * rowid; an "?1 IS NULL OR pipeline = ?1" term would make every page a scan
 * from the newest run (slow with 10,000 runs).  store_q caches by
 * pointer, so these are constants.  The parameters are plain `?`, bound
 * in the order they appear (PostgreSQL cannot prepare a statement whose
 * $N skips a number, and has no named ones). */
#define RUNS_SEL "SELECT " RUN_COLS " FROM runs WHERE 1 = 1"
#define RUNS_PL " AND pipeline = ?"
#define RUNS_REF " AND (ref = ? OR ref = 'refs/heads/' || ? OR ref = 'refs/tags/' || ?)"
#define RUNS_ST " AND state = ?"
#define RUNS_BE " AND id < ?"
#define RUNS_END " ORDER BY id DESC LIMIT ?"
static const char *const runs_sql[16] = {
	RUNS_SEL RUNS_END,
	RUNS_SEL RUNS_PL RUNS_END,
	RUNS_SEL RUNS_REF RUNS_END,
	RUNS_SEL RUNS_PL RUNS_REF RUNS_END,
	RUNS_SEL RUNS_ST RUNS_END,
	RUNS_SEL RUNS_PL RUNS_ST RUNS_END,
	RUNS_SEL RUNS_REF RUNS_ST RUNS_END,
	RUNS_SEL RUNS_PL RUNS_REF RUNS_ST RUNS_END,
	RUNS_SEL RUNS_BE RUNS_END,
	RUNS_SEL RUNS_PL RUNS_BE RUNS_END,
	RUNS_SEL RUNS_REF RUNS_BE RUNS_END,
	RUNS_SEL RUNS_PL RUNS_REF RUNS_BE RUNS_END,
	RUNS_SEL RUNS_ST RUNS_BE RUNS_END,
	RUNS_SEL RUNS_PL RUNS_ST RUNS_BE RUNS_END,
	RUNS_SEL RUNS_REF RUNS_ST RUNS_BE RUNS_END,
	RUNS_SEL RUNS_PL RUNS_REF RUNS_ST RUNS_BE RUNS_END,
};

enum MHD_Result api_get_runs(struct api *a, struct api_req *r)
{
	struct store *s = reader(r);
	int64_t limit = 0, before = api_query_int(r, "before");
	const char *pipeline = api_query(r, "pipeline"), *ref = api_query(r, "ref"), *state = api_query(r, "state");
	json_t *runs = json_array();
	struct db_stmt *st;
	int64_t last = 0;
	int more = 0, param = 0, rc;

	(void)a;
	if (!s) {
		json_decref(runs);
		return MHD_YES;
	}
	if (before == -2) {
		json_decref(runs);
		return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "before must be a run id");
	}
	if (api_list_limit(r, 50, &limit) < 0) {
		json_decref(runs);
		return MHD_YES;
	}
	st = store_q(s, runs_sql[(pipeline ? 1 : 0) | (ref ? 2 : 0) | (state ? 4 : 0) | (before > 0 ? 8 : 0)]);
	if (!st) {
		json_decref(runs);
		return api_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "%s", ota_error_last());
	}
	if (pipeline)
		db_bind_text(st, ++param, pipeline);
	if (ref)
		for (int i = 0; i < 3; i++)
			db_bind_text(st, ++param, ref);
	if (state)
		db_bind_text(st, ++param, state);
	if (before > 0)
		db_bind_int64(st, ++param, before);
	/* one row more than asked tells whether an older page exists */
	db_bind_int64(st, ++param, limit + 1);
	while ((rc = db_step(st)) == 1) {
		if ((int64_t)json_array_size(runs) == limit) {
			more = 1;
			break;
		}
		json_array_append_new(runs, run_json(st));
		last = db_column_int64(st, 0);
	}
	db_reset(st);
	if (rc < 0) {
		json_decref(runs);
		return api_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "runs: %s", ota_error_last());
	}
	return api_reply_json(r, MHD_HTTP_OK,
			      json_pack("{so so}", "runs", runs, "next_before", more && last ? json_integer(last) : json_null()));
}

static const char stages_of_run_sql[] =
	"SELECT id, name, kind, state, needs, started_at, finished_at, when_filter FROM stages WHERE run_id = ? ORDER BY idx";
static const char jobs_of_run_sql[] = "SELECT " JOB_COLS JOB_FROM " WHERE j.run_id = ? ORDER BY j.stage_id, j.idx";

static json_t *stage_json(struct db_stmt *st)
{
	json_t *stage = json_object();
	json_object_set_new(stage, "id", json_integer(db_column_int64(st, 0)));
	set_text_or_null(stage, "name", st, 1);
	set_text_or_null(stage, "kind", st, 2);
	set_text_or_null(stage, "state", st, 3);
	json_object_set_new(stage, "needs", json_loads(db_column_text(st, 4), 0, NULL));
	set_int_or_null(stage, "started_at", st, 5);
	set_int_or_null(stage, "finished_at", st, 6);
	/* held back by the release policy: the reason (policy.h) */
	if (db_column_text(st, 7) && strcmp(db_column_text(st, 7), "no-match") != 0)
		set_text_or_null(stage, "skip_reason", st, 7);
	json_object_set_new(stage, "jobs", json_array());
	return stage;
}

/* The run r->id with its stages and their jobs, read in s's snapshot;
 * NULL with *found 0 when there is no such run. */
static json_t *run_load(struct store *s, int64_t id, int *found)
{
	struct db_stmt *st;
	json_t *run = NULL, *stages = NULL;
	int rc;

	*found = -1;
	if (!(st = store_q(s, run_by_id_sql)))
		return NULL;
	db_bind_int64(st, 1, id);
	if ((rc = db_step(st)) == 1)
		run = run_json(st);
	db_reset(st);
	if (!run) {
		*found = rc == 0 ? 0 : -1;
		return NULL;
	}
	*found = 1;
	stages = json_array();
	if (!(st = store_q(s, stages_of_run_sql)))
		goto fail;
	db_bind_int64(st, 1, id);
	while ((rc = db_step(st)) == 1)
		json_array_append_new(stages, stage_json(st));
	db_reset(st);
	if (rc < 0 || !(st = store_q(s, jobs_of_run_sql)))
		goto fail;
	db_bind_int64(st, 1, id);
	while ((rc = db_step(st)) == 1) {
		json_t *job = job_json(st);
		const char *stage_name = json_string_value(json_object_get(job, "stage"));
		for (size_t i = 0; i < json_array_size(stages); i++) {
			json_t *stage = json_array_get(stages, i);
			if (!strcmp(json_string_value(json_object_get(stage, "name")), stage_name)) {
				json_array_append(json_object_get(stage, "jobs"), job);
				break;
			}
		}
		json_decref(job);
	}
	db_reset(st);
	if (rc < 0)
		goto fail;
	json_object_set_new(run, "stages", stages);
	return run;
fail:
	*found = -1;
	json_decref(stages);
	json_decref(run);
	return NULL;
}

enum MHD_Result api_get_run(struct api *a, struct api_req *r)
{
	struct store *s = reader_snapshot(r);
	json_t *run;
	int found;

	(void)a;
	if (!s)
		return MHD_YES;
	run = run_load(s, r->id, &found);
	api_snapshot_end(s);
	if (found < 0)
		return api_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "run %" PRId64 ": %s", r->id, ota_error_last());
	if (!run)
		return api_reply_error(r, MHD_HTTP_NOT_FOUND, "run %" PRId64 " not found", r->id);
	return api_reply_json(r, MHD_HTTP_OK, run);
}

static json_t *artifact_json(struct db_stmt *st)
{
	json_t *o = json_object();
	json_object_set_new(o, "id", json_integer(db_column_int64(st, 0)));
	json_object_set_new(o, "job_id", json_integer(db_column_int64(st, 1)));
	json_object_set_new(o, "attempt", json_integer(db_column_int64(st, 2)));
	set_text_or_null(o, "name", st, 3);
	set_text_or_null(o, "sha256", st, 4);
	json_object_set_new(o, "size", json_integer(db_column_int64(st, 5)));
	set_text_or_null(o, "type", st, 6);
	set_text_or_null(o, "hardware", st, 7);
	json_object_set_new(o, "released", json_boolean(db_column_int64(st, 8)));
	set_int_or_null(o, "created_at", st, 9);
	set_text_or_null(o, "job", st, 10);
	return o;
}

static const char run_artifacts_sql[] =
	"SELECT a.id, a.job_id, a.attempt, a.name, a.sha256, a.size, a.type, a.hardware, a.released,"
	" a.created_at, j.name FROM artifacts a LEFT JOIN jobs j ON j.id = a.job_id WHERE a.run_id = ? ORDER BY a.id";

enum MHD_Result api_get_run_artifacts(struct api *a, struct api_req *r)
{
	struct store *s = reader(r);
	struct db_stmt *st;
	json_t *arr;
	int rc;

	(void)a;
	if (!s)
		return MHD_YES;
	if (!(st = store_q(s, run_artifacts_sql)))
		return api_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "artifacts: %s", ota_error_last());
	arr = json_array();
	db_bind_int64(st, 1, r->id);
	while ((rc = db_step(st)) == 1)
		json_array_append_new(arr, artifact_json(st));
	db_reset(st);
	if (rc < 0) {
		json_decref(arr);
		return api_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "artifacts: %s", ota_error_last());
	}
	return api_reply_json(r, MHD_HTTP_OK, arr);
}

static const char job_by_id_sql[] = "SELECT " JOB_COLS JOB_FROM " WHERE j.id = ?";

static json_t *load_job(struct store *s, int64_t id)
{
	struct db_stmt *st = store_q(s, job_by_id_sql);
	json_t *job = NULL;

	if (!st)
		return NULL;
	db_bind_int64(st, 1, id);
	if (db_step(st) == 1)
		job = job_json(st);
	db_reset(st);
	return job;
}

enum MHD_Result api_get_job(struct api *a, struct api_req *r)
{
	struct store *s = reader(r);
	json_t *job;

	(void)a;
	if (!s)
		return MHD_YES;
	job = load_job(s, r->id);
	if (!job)
		return api_reply_error(r, MHD_HTTP_NOT_FOUND, "job %" PRId64 " not found", r->id);
	return api_reply_json(r, MHD_HTTP_OK, job);
}

static ssize_t artifact_read_cb(void *cls, uint64_t pos, char *buf, size_t max)
{
	struct artifact_backend *b = artifact_backend();
	ssize_t n;
	(void)pos;
	n = b->read(cls, buf, max);
	if (n == 0)
		return MHD_CONTENT_READER_END_OF_STREAM;
	return n < 0 ? MHD_CONTENT_READER_END_WITH_ERROR : n;
}

static void artifact_close_cb(void *cls)
{
	artifact_backend()->close(cls);
}

/* Stream the object sha256 through the storage backend. */
static enum MHD_Result serve_object(struct api_req *r, const char *sha256, const char *name)
{
	struct artifact_backend *b = artifact_backend();
	struct artifact_reader *rd = NULL;
	struct MHD_Response *resp;
	enum MHD_Result ret;
	int64_t size = 0;

	if (b->get(b, sha256, &rd, &size) < 0)
		return api_reply_error(r, MHD_HTTP_NOT_FOUND, "%s", ota_error_last());
	resp = MHD_create_response_from_callback((uint64_t)size, 64 * 1024, artifact_read_cb, rd, artifact_close_cb);
	MHD_add_response_header(resp, "Content-Type", "application/octet-stream");
	MHD_add_response_header(resp, "X-Sha256", sha256);
	if (name) {
		const char *base = strrchr(name, '/') ? strrchr(name, '/') + 1 : name;
		char *disp = xasprintf("attachment; filename=\"%s\"", base);
		for (char *p = disp + 22; *p && p[1]; p++)
			if (*p == '"')
				*p = '_';
		MHD_add_response_header(resp, "Content-Disposition", disp);
		free(disp);
	}
	ret = api_queue_response(r, MHD_HTTP_OK, resp);
	MHD_destroy_response(resp);
	return ret;
}

static const char artifact_by_id_sql[] = "SELECT sha256, name FROM artifacts WHERE id = ?";
static const char object_known_sql[] = "SELECT 1 FROM artifacts WHERE sha256 = ? LIMIT 1";

enum MHD_Result api_get_artifact(struct api *a, struct api_req *r)
{
	struct store *s = reader(r);
	struct db_stmt *st;
	char *sha = NULL, *name = NULL;
	enum MHD_Result ret;

	(void)a;
	if (!s)
		return MHD_YES;
	if (!(st = store_q(s, artifact_by_id_sql)))
		return api_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "artifact: %s", ota_error_last());
	db_bind_int64(st, 1, r->id);
	if (db_step(st) == 1) {
		sha = xstrdup(db_column_text(st, 0));
		name = xstrdup(db_column_text(st, 1));
	}
	db_reset(st);
	if (!sha)
		return api_reply_error(r, MHD_HTTP_NOT_FOUND, "artifact %" PRId64 " not found", r->id);
	ret = serve_object(r, sha, name);
	free(sha);
	free(name);
	return ret;
}

enum MHD_Result api_get_object(struct api *a, struct api_req *r)
{
	struct store *s = reader(r);
	struct db_stmt *st;
	int known = 0;

	(void)a;
	if (!s)
		return MHD_YES;
	/* only objects that some artifact record names are served */
	if (!(st = store_q(s, object_known_sql)))
		return api_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "object: %s", ota_error_last());
	db_bind_text(st, 1, r->sha);
	known = db_step(st) == 1;
	db_reset(st);
	if (!known)
		return api_reply_error(r, MHD_HTTP_NOT_FOUND, "no artifact with sha256 %s", r->sha);
	return serve_object(r, r->sha, NULL);
}

static const char agents_sql[] =
	"SELECT a.id, a.name, a.labels, a.local, a.last_seen, a.current_job, j.state, a.allowed_labels, a.revoked_at,"
	" a.token_hash IS NOT NULL OR a.revoked_at IS NOT NULL FROM agents a LEFT JOIN jobs j ON j.id = a.current_job"
	" ORDER BY a.id";

enum MHD_Result api_get_agents(struct api *a, struct api_req *r)
{
	struct store *s = reader(r);
	struct db_stmt *st;
	json_t *arr = json_array();
	int64_t now = clock_now_ms();

	(void)a;
	if (!s) {
		json_decref(arr);
		return MHD_YES;
	}
	if (!(st = store_q(s, agents_sql))) {
		json_decref(arr);
		return api_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "agents: %s", ota_error_last());
	}
	while (db_step(st) == 1) {
		json_t *o = json_object();
		int64_t last = db_column_int64(st, 4);
		int busy = db_column_text(st, 6) && !strcmp(db_column_text(st, 6), "running");
		json_object_set_new(o, "id", json_integer(db_column_int64(st, 0)));
		set_text_or_null(o, "name", st, 1);
		json_object_set_new(o, "labels", json_loads(db_column_text(st, 2), 0, NULL));
		json_object_set_new(o, "local", json_boolean(db_column_int64(st, 3)));
		json_object_set_new(o, "last_seen", json_integer(last));
		json_object_set_new(o, "current_job", busy ? json_integer(db_column_int64(st, 5)) : json_null());
		json_object_set_new(o, "state", json_string(db_column_text(st, 8) ? "revoked"
							     : busy ? "busy"
							     : last == 0 ? "new"
							     : (now - last) > 60000 * clock_scale() ? "lost" : "idle"));
		/* how it proves who it is: registered (`otactl agents add`), local, or a config-file token */
		json_object_set_new(o, "kind", json_string(db_column_int64(st, 9) ? "registered"
							   : db_column_int64(st, 3) ? "local" : "config"));
		json_object_set_new(o, "registered_labels",
				    db_column_text(st, 7) ? json_loads(db_column_text(st, 7), 0, NULL) : json_null());
		json_array_append_new(arr, o);
	}
	db_reset(st);
	return api_reply_json(r, MHD_HTTP_OK, arr);
}

/* ---- Server-Sent Events ---------------------------------------------------- */

/*
 * One SSE response: produce() fills `pending` with the next event(s), or
 * leaves it empty and says in *seen which generation of the log store's
 * notifier it looked at; a negative return ends the stream.  The
 * libmicrohttpd callback below drains `pending` into the connection; when
 * there is nothing to send it parks the connection (api_wait.c) until the
 * notifier moves or a keepalive is due, and returns 0: no thread waits.
 */
#define SSE_KEEPALIVE_MS 15000

struct sse {
	struct api *api;
	struct MHD_Connection *conn;
	struct api_park park;
	int64_t keepalive_at;      /* clock_mono_ms() */
	struct buf pending;
	size_t sent;
	int (*produce)(struct sse *s, uint64_t *seen);
	void (*free)(struct sse *s);
};

static ssize_t sse_read(void *cls, uint64_t pos, char *out, size_t max)
{
	struct sse *x = cls;
	size_t n;

	(void)pos;
	if (x->sent == x->pending.len) {
		uint64_t seen = 0;
		int64_t now;
		buf_clear(&x->pending);
		x->sent = 0;
		if (x->api->stopping || x->produce(x, &seen) < 0)
			return MHD_CONTENT_READER_END_OF_STREAM;
		now = clock_mono_ms();
		if (x->pending.len == 0) {
			if (now < x->keepalive_at) {
				if (api_park(x->api->waiter, &x->park, x->conn, logstore_changes(), seen, x->keepalive_at) < 0)
					return MHD_CONTENT_READER_END_OF_STREAM;
				return 0; /* suspended: called again on resume */
			}
			buf_puts(&x->pending, ": keepalive\n\n");
		}
		x->keepalive_at = now + SSE_KEEPALIVE_MS;
	}
	n = x->pending.len - x->sent;
	if (n > max)
		n = max;
	memcpy(out, x->pending.ptr + x->sent, n);
	x->sent += n;
	return (ssize_t)n;
}

static void sse_free(void *cls)
{
	struct sse *x = cls;
	buf_release(&x->pending);
	x->free(x);
}

static enum MHD_Result sse_reply(struct api_req *r, struct sse *x)
{
	struct MHD_Response *resp;
	enum MHD_Result ret;

	x->conn = r->conn;
	x->keepalive_at = clock_mono_ms() + SSE_KEEPALIVE_MS;
	buf_init(&x->pending, BUF_NOLIMIT);
	buf_puts(&x->pending, "retry: 1000\n\n");
	resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 32 * 1024, sse_read, x, sse_free);
	MHD_add_response_header(resp, "Content-Type", "text/event-stream");
	MHD_add_response_header(resp, "Cache-Control", "no-store");
	ret = api_queue_response(r, MHD_HTTP_OK, resp);
	MHD_destroy_response(resp);
	return ret;
}

/* ---- logs ------------------------------------------------------------------ */

/*
 * Append len bytes of log text to out as a JSON string body, making it valid
 * UTF-8: invalid bytes become U+FFFD.  Returns how many input bytes were
 * consumed (an incomplete sequence at the very end is left for next time
 * unless `final`).
 */
static size_t utf8_clean(const unsigned char *p, size_t len, int final, struct buf *out)
{
	size_t i = 0;
	while (i < len) {
		unsigned char c = p[i];
		size_t n = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
		size_t k;
		if (n == 1) {
			buf_putc(out, (char)c);
			i++;
			continue;
		}
		if (n == 0 || (c == 0xC0 || c == 0xC1) || c > 0xF4) {
			buf_puts(out, "\xEF\xBF\xBD");
			i++;
			continue;
		}
		if (i + n > len) {
			if (!final)
				break;
			buf_puts(out, "\xEF\xBF\xBD");
			i++;
			continue;
		}
		for (k = 1; k < n; k++)
			if ((p[i + k] & 0xC0) != 0x80)
				break;
		if (k < n) {
			buf_puts(out, "\xEF\xBF\xBD");
			i++;
			continue;
		}
		buf_put(out, p + i, n);
		i += n;
	}
	return i;
}

struct log_job {
	char state[16];
	int attempt;
};

static const char job_state_sql[] = "SELECT state, attempt FROM jobs WHERE id = ?";

static int log_job_state(int64_t job, struct log_job *out)
{
	struct store *s = store_reader();
	struct db_stmt *st;
	int rc;
	if (!s)
		return OTA_ERROR;
	st = store_q(s, job_state_sql);
	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, job);
	rc = db_step(st);
	if (rc == 1) {
		snprintf(out->state, sizeof(out->state), "%s", db_column_text(st, 0));
		out->attempt = (int)db_column_int64(st, 1);
	}
	db_reset(st);
	return rc == 1 ? 0 : OTA_ENOTFOUND;
}

struct logsse {
	struct sse base;
	int64_t job;
	int attempt;
	int64_t offset;
	int ended;
};

static void sse_event(struct logsse *x, const char *event, const char *id, json_t *data)
{
	char *text = json_dumps(data, JSON_COMPACT);
	buf_printf(&x->base.pending, "event: %s\n", event);
	if (id)
		buf_printf(&x->base.pending, "id: %s\n", id);
	buf_printf(&x->base.pending, "data: %s\n\n", text);
	free(text);
	json_decref(data);
}

/* Fill pending with the next log event(s), if there are any. */
static int log_produce(struct sse *base, uint64_t *seen)
{
	struct logsse *x = (struct logsse *)base;
	if (x->ended)
		return -1;
	{
		struct notifier *n = logstore_changes();
		uint64_t gen = notifier_gen(n);
		struct log_job job;
		int64_t size;

		if (x->base.api->stopping)
			return -1;
		if (log_job_state(x->job, &job) < 0)
			return -1;
		if (x->attempt == 0)
			x->attempt = job.attempt;
		size = x->attempt ? logstore_size(x->job, x->attempt) : 0;
		if (size > x->offset) {
			struct buf raw = BUF_INIT, clean = BUF_INIT;
			size_t want = (size_t)(size - x->offset), used;
			char id[32];
			if (want > 16384)
				want = 16384;
			logstore_read(x->job, x->attempt, x->offset, want, &raw);
			used = utf8_clean((const unsigned char *)raw.ptr, raw.len, raw.len < 4, &clean);
			if (used == 0)
				used = utf8_clean((const unsigned char *)raw.ptr, raw.len, 1, &clean);
			snprintf(id, sizeof(id), "%" PRId64, x->offset + (int64_t)used);
			sse_event(x, "log", id, json_pack("{sI si ss#}", "offset", (json_int_t)x->offset, "attempt", x->attempt,
							  "text", buf_cstr(&clean), (int)clean.len));
			x->offset += (int64_t)used;
			buf_release(&raw);
			buf_release(&clean);
			return 0;
		}
		if (job.attempt > x->attempt) {
			/* a retry started: continue with the new attempt's log */
			x->attempt = job.attempt;
			x->offset = 0;
			sse_event(x, "attempt", NULL, json_pack("{si}", "attempt", x->attempt));
			return 0;
		}
		if (!strcmp(job.state, "passed") || !strcmp(job.state, "failed") || !strcmp(job.state, "canceled") ||
		    !strcmp(job.state, "skipped")) {
			sse_event(x, "end", NULL, json_pack("{ss si}", "state", job.state, "attempt", x->attempt));
			x->ended = 1;
			return 0;
		}
		*seen = gen;
		return 0;
	}
}

static void sse_free_plain(struct sse *x)
{
	free(x);
}

enum MHD_Result api_get_job_log(struct api *a, struct api_req *r)
{
	const char *accept = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Accept");
	const char *follow = api_query(r, "follow");
	const char *last_id = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Last-Event-ID");
	int64_t offset = api_query_int(r, "offset"), attempt = api_query_int(r, "attempt");
	struct log_job job;
	struct MHD_Response *resp;
	enum MHD_Result ret;

	if (offset == -2 || attempt == -2)
		return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "offset and attempt must be non-negative integers");
	if (log_job_state(r->id, &job) < 0)
		return api_reply_error(r, MHD_HTTP_NOT_FOUND, "job %" PRId64 " not found", r->id);
	if (offset < 0)
		offset = 0;
	if (attempt <= 0)
		attempt = job.attempt;
	if (attempt > job.attempt)
		return api_reply_error(r, MHD_HTTP_NOT_FOUND, "job %" PRId64 " has no attempt %" PRId64, r->id, attempt);

	if ((follow && strcmp(follow, "0") != 0) || (accept && strstr(accept, "text/event-stream"))) {
		struct logsse *x = xcalloc(1, sizeof(*x));
		x->base.api = a;
		x->base.produce = log_produce;
		x->base.free = sse_free_plain;
		x->job = r->id;
		x->attempt = (int)attempt;
		x->offset = offset;
		if (last_id && *last_id)
			x->offset = strtoll(last_id, NULL, 10);
		return sse_reply(r, &x->base);
	} else {
		struct buf out = BUF_INIT;
		char size[32], att[16];
		int64_t total = attempt ? logstore_size(r->id, (int)attempt) : 0;
		if (attempt)
			logstore_read(r->id, (int)attempt, offset, 64 << 20, &out);
		snprintf(size, sizeof(size), "%" PRId64, total);
		snprintf(att, sizeof(att), "%" PRId64, attempt);
		size_t len = out.len;
		resp = MHD_create_response_from_buffer(len, buf_detach(&out), MHD_RESPMEM_MUST_FREE);
		MHD_add_response_header(resp, "Content-Type", "text/plain; charset=utf-8");
		MHD_add_response_header(resp, "X-Log-Size", size);
		MHD_add_response_header(resp, "X-Job-State", job.state);
		MHD_add_response_header(resp, "X-Attempt", att);
		ret = api_queue_response(r, MHD_HTTP_OK, resp);
		MHD_destroy_response(resp);
		return ret;
	}
}

/* ---- the event stream ------------------------------------------------------ */

/*
 * GET /api/v1/events?after=ID: every state change recorded in the events
 * table after ID, as Server-Sent Events (id = the event's id, so a client
 * that reconnects with Last-Event-ID misses nothing), then live.  The
 * status page refreshes what an event touches.
 */
struct evstream {
	struct sse base;
	int64_t after;
};

static const char events_after_sql[] =
	"SELECT id, at, run_id, job_id, kind, detail FROM events WHERE id > ? ORDER BY id LIMIT 200";
static const char events_last_sql[] = "SELECT COALESCE(MAX(id), 0) FROM events";

static int ev_produce(struct sse *base, uint64_t *seen)
{
	struct evstream *x = (struct evstream *)base;
	{
		struct notifier *n = logstore_changes();
		uint64_t gen = notifier_gen(n);
		struct store *db = store_reader();
		struct db_stmt *st;
		int any = 0;

		if (x->base.api->stopping || !db)
			return -1;
		st = store_q(db, events_after_sql);
		if (!st)
			return -1;
		db_bind_int64(st, 1, x->after);
		while (db_step(st) == 1) {
			json_t *o = json_object(), *detail = db_column_text(st, 5) ? json_loads(db_column_text(st, 5), 0, NULL) : NULL;
			char *text;
			x->after = db_column_int64(st, 0);
			json_object_set_new(o, "id", json_integer(x->after));
			json_object_set_new(o, "at", json_integer(db_column_int64(st, 1)));
			set_int_or_null(o, "run_id", st, 2);
			set_int_or_null(o, "job_id", st, 3);
			set_text_or_null(o, "kind", st, 4);
			json_object_set_new(o, "detail", detail ? detail : json_object());
			text = json_dumps(o, JSON_COMPACT);
			buf_printf(&x->base.pending, "id: %" PRId64 "\nevent: %s\ndata: %s\n\n", x->after, db_column_text(st, 4), text);
			free(text);
			json_decref(o);
			any = 1;
		}
		db_reset(st);
		if (any)
			return 0;
		*seen = gen;
		return 0;
	}
}

enum MHD_Result api_get_events(struct api *a, struct api_req *r)
{
	const char *last_id = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Last-Event-ID");
	int64_t after = api_query_int(r, "after");
	struct evstream *x;

	if (after == -2)
		return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "after must be a non-negative integer");
	x = xcalloc(1, sizeof(*x));
	x->base.api = a;
	x->base.produce = ev_produce;
	x->base.free = sse_free_plain;
	x->after = after > 0 ? after : 0;
	if (last_id && *last_id)
		x->after = strtoll(last_id, NULL, 10);
	if (after < 0 && !(last_id && *last_id)) {
		/* no position given: start from now */
		struct store *db = store_reader();
		struct db_stmt *st = db ? store_q(db, events_last_sql) : NULL;
		if (st && db_step(st) == 1)
			x->after = db_column_int64(st, 0);
		if (st)
			db_reset(st);
	}
	return sse_reply(r, &x->base);
}

/* Every statement this file prepares, for tests/test_dbconv_read.c, which
 * prepares each on PostgreSQL too: a statement added above goes here. */
void api_read_sql_each(void (*fn)(const char *sql, void *arg), void *arg)
{
	static const char *const one[] = { pipelines_sql,     run_by_id_sql, stages_of_run_sql, jobs_of_run_sql,
					   run_artifacts_sql, job_by_id_sql, artifact_by_id_sql, object_known_sql,
					   agents_sql,        job_state_sql, events_after_sql,   events_last_sql };

	for (size_t i = 0; i < OTA_ARRAY_SIZE(one); i++)
		fn(one[i], arg);
	for (size_t i = 0; i < OTA_ARRAY_SIZE(runs_sql); i++)
		fn(runs_sql[i], arg);
}
