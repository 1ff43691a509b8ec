/*
 * api_reports.c - test and analysis reports over HTTP, and a job's inputs.
 *
 *   PUT /api/v1/agent/jobs/ID/reports?format=F&name=FILE             (job token)
 *       one report file (junit, cppcheck, sarif; or "toolchain", a JSON
 *       {commands: [{command, version}]} the agent builds itself), at most
 *       REPORT_MAX_BYTES.  Parsed here with report_parse(); a bad file is a
 *       400 naming it (the agent fails the job with that message), a good
 *       one is stored with the attempt through the engine: 201 {id, summary}.
 *   GET /api/v1/agent/jobs/ID/inputs                                  (job token)
 *       the artifacts the job receives: those of the passed jobs of the
 *       stages its stage needs, only the job's board's when its kind has
 *       `board:` -> [{name, sha256, size, hardware}]
 *   GET /api/v1/agent/jobs/ID/inputs/SHA                              (job token)
 *       the bytes of one of them.
 *   GET /api/v1/runs/ID/reports                                       (viewer)
 *       [{id, job, job_name, stage, attempt, format, name, summary,
 *         tests | findings | commands}]
 *
 * Parsing runs on the HTTP thread (it can take a while for a big file and
 * needs no state); only the insert goes through the engine thread, inside
 * its transaction, and only while the attempt is running, so a report of
 * an attempt that lost its lease is refused (409) like its artifacts.
 */
#include "api_int.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "../../common/mask.h"
#include "../clock.h"
#include "../db/db.h"
#include "../engine_int.h"
#include "../logstore.h"
#include "../reports.h"

#define TOOLCHAIN_MAX_COMMANDS 64
#define TOOLCHAIN_MAX_TEXT 1024

/* ---- upload --------------------------------------------------------------- */

static int toolchain_parse(json_t **out, const void *data, size_t len, const char *name)
{
	json_error_t err;
	json_t *doc = json_loadb(data, len, JSON_REJECT_DUPLICATES, &err), *cmds, *c;
	size_t i;

	*out = NULL;
	if (!doc)
		return ota_error_set(OTA_EINVAL, "%s:%d: invalid JSON: %s", name, err.line, err.text);
	cmds = json_object_get(doc, "commands");
	if (!json_is_array(cmds) || json_array_size(cmds) > TOOLCHAIN_MAX_COMMANDS)
		goto bad;
	json_array_foreach(cmds, i, c) {
		json_t *cmd = json_object_get(c, "command"), *ver = json_object_get(c, "version");
		if (!json_is_string(cmd) || !json_is_string(ver) || strlen(json_string_value(cmd)) > TOOLCHAIN_MAX_TEXT ||
		    strlen(json_string_value(ver)) > TOOLCHAIN_MAX_TEXT)
			goto bad;
	}
	*out = json_pack("{ss ss sO}", "format", "toolchain", "name", name, "commands", cmds);
	json_decref(doc);
	return 0;
bad:
	json_decref(doc);
	return ota_error_set(OTA_EINVAL, "%s: a toolchain report is {\"commands\": [{\"command\": S, \"version\": S}]}"
			     " (at most %d)", name, TOOLCHAIN_MAX_COMMANDS);
}

/* The counts of a parsed report, for listings. */
static json_t *report_summary(const json_t *body, const char *format)
{
	static const char *const junit_keys[] = { "tests", "passed", "failures", "errors", "skipped", "time" };
	json_t *s = json_object();

	if (!strcmp(format, "junit")) {
		for (size_t i = 0; i < OTA_ARRAY_SIZE(junit_keys); i++) {
			json_t *v = json_object_get(body, junit_keys[i]);
			json_object_set(s, junit_keys[i], v ? v : json_integer(0));
		}
	} else if (json_is_object(json_object_get(body, "metrics"))) {
		json_object_set(s, "metrics", json_object_get(body, "metrics"));
	} else if (!strcmp(format, "toolchain")) {
		json_object_set_new(s, "commands", json_integer((json_int_t)json_array_size(json_object_get(body, "commands"))));
	} else {
		json_t *c = json_object_get(body, "counts");
		json_object_set_new(s, "counts", c ? json_deep_copy(c) : json_object());
		json_object_set_new(s, "findings", json_integer((json_int_t)json_array_size(json_object_get(body, "findings"))));
	}
	return s;
}

struct report_add {
	int64_t job_id;
	int attempt;
	const char *format, *name;
	const char *summary, *body;
	const json_t *metrics;   /* the report's "metrics" object, or NULL */
	int64_t id;
};

/*
 * Engine thread, in do_report_add's transaction: a metrics report's
 * numbers into run_metrics, under the job's stage.  A second file with the
 * same metric name in one attempt replaces the first (last upload wins).
 */
static const char metric_upsert_sql[] =
	"INSERT INTO run_metrics(run_id, job_id, attempt, stage, name, value, created_at)"
	" SELECT ?, ?, ?, s.name, ?, ?, ? FROM jobs j JOIN stages s ON s.id = j.stage_id WHERE j.id = ?"
	" ON CONFLICT(job_id, attempt, name) DO UPDATE SET value = excluded.value";
static const char report_job_sql[] = "SELECT run_id, state, attempt FROM jobs WHERE id = ?";
/* RETURNING gives the row's id whether it was inserted or replaced
 * (SQLite's last insert id would be an older row's after an update). */
static const char report_upsert_sql[] =
	"INSERT INTO reports(run_id, job_id, attempt, format, name, summary, body, created_at)"
	" VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(job_id, attempt, format, name) DO UPDATE SET"
	" summary = excluded.summary, body = excluded.body RETURNING id";

static int metrics_add(struct store *db, int64_t run, const struct report_add *a)
{
	struct db_stmt *st;
	const char *key;
	json_t *v;
	int rc;

	if (!json_is_object(a->metrics))
		return 0;
	st = store_q(db, metric_upsert_sql);
	if (!st)
		return OTA_ERROR;
	json_object_foreach((json_t *)a->metrics, key, v) {
		if (!json_is_number(v))
			continue;
		db_bind_int64(st, 1, run);
		db_bind_int64(st, 2, a->job_id);
		db_bind_int64(st, 3, a->attempt);
		db_bind_text(st, 4, key);
		db_bind_double(st, 5, json_number_value(v));
		db_bind_int64(st, 6, clock_now_ms());
		db_bind_int64(st, 7, a->job_id);
		if ((rc = db_run(st)) < 0)
			return rc;
	}
	return 0;
}

/* Engine thread, inside its transaction. */
static int do_report_add(struct engine *e, void *arg)
{
	struct report_add *a = arg;
	struct store *db = engine_store(e);
	struct db_stmt *st = store_q(db, report_job_sql);
	int64_t run = 0;
	int rc, running = 0;

	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, a->job_id);
	if ((rc = db_step(st)) == 1) {
		run = db_column_int64(st, 0);
		running = !strcmp(db_column_text(st, 1), "running") && db_column_int64(st, 2) == a->attempt;
	}
	db_reset(st);
	if (rc < 0)
		return rc;
	if (!running)
		return ota_error_set(OTA_ECONFLICT, "attempt %d of job %" PRId64 " is not running", a->attempt, a->job_id);
	st = store_q(db, report_upsert_sql);
	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, run);
	db_bind_int64(st, 2, a->job_id);
	db_bind_int64(st, 3, a->attempt);
	db_bind_text(st, 4, a->format);
	db_bind_text(st, 5, a->name);
	db_bind_text(st, 6, a->summary);
	db_bind_text(st, 7, a->body);
	db_bind_int64(st, 8, clock_now_ms());
	if ((rc = db_step(st)) == 1)
		a->id = db_column_int64(st, 0);
	db_reset(st);
	if (rc < 0)
		return rc;
	if (rc == 0)
		return ota_error_set(OTA_ERROR, "report %s of job %" PRId64 ": no row stored", a->name, a->job_id);
	if ((rc = metrics_add(db, run, a)) < 0)
		return rc;
	engine_emit(e, run, a->job_id, "report.added",
		    json_pack("{ss ss so}", "format", a->format, "name", a->name, "summary", json_loads(a->summary, 0, NULL)));
	return 0;
}

static int report_name_valid(const char *s)
{
	size_t n = s ? strlen(s) : 0;
	if (n == 0 || n > 512)
		return 0;
	for (const char *p = s; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			return 0;
	return 1;
}

/* Mask every string of a parsed report (messages, output, names) in place. */
static void mask_json(const struct mask_set *m, json_t *v)
{
	const char *key;
	json_t *x;
	size_t i;

	if (json_is_object(v)) {
		json_object_foreach(v, key, x)
			mask_json(m, x);
	} else if (json_is_array(v)) {
		json_array_foreach(v, i, x)
			mask_json(m, x);
	} else if (json_is_string(v)) {
		struct buf b = BUF_INIT;
		if (mask_buffer(m, json_string_value(v), json_string_length(v), &b) == 0 &&
		    memcmp(b.ptr, json_string_value(v), b.len) != 0)
			json_string_setn(v, b.ptr, b.len);
		buf_release(&b);
	}
}

enum MHD_Result api_agent_report(struct api *a, struct api_req *r)
{
	const char *format = api_query(r, "format"), *name = api_query(r, "name");
	int64_t attempt = r->attempt; /* from the job token (api_job_auth) */
	json_t *body = NULL, *summary = NULL;
	struct report_add add = { 0 };
	char *stext = NULL, *btext = NULL;
	enum MHD_Result ret;
	int rc;

	if (!format || !report_name_valid(name))
		return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "query needs format=junit|cppcheck|sarif|pmccabe|jscpd|power|toolchain"
				       " and name=FILE");
	if (!report_format_known(format) && strcmp(format, "toolchain") != 0)
		return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "unknown report format '%s' (junit, cppcheck, sarif,"
				       " pmccabe, jscpd, power, toolchain)", format);
	if (!api_attempt_current(r->id, attempt))
		return api_reply_error(r, MHD_HTTP_CONFLICT, "attempt %" PRId64 " of job %" PRId64 " is not running",
				       attempt, r->id);
	rc = !strcmp(format, "toolchain") ? toolchain_parse(&body, r->body.ptr ? r->body.ptr : "", r->body.len, name)
					   : report_parse(&body, format, r->body.ptr ? r->body.ptr : "", r->body.len, name);
	if (rc < 0) {
		char *msg = xstrdup(ota_error_last()); /* libxml2's text may quote the file */
		mask_string(logstore_mask(), msg);
		ret = api_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad %s report: %s", format, msg);
		free(msg);
		return ret;
	}
	if (mask_set_count(logstore_mask()))
		mask_json(logstore_mask(), body);
	summary = report_summary(body, format);
	stext = json_dumps(summary, JSON_COMPACT);
	btext = json_dumps(body, JSON_COMPACT);
	add = (struct report_add){ r->id, (int)attempt, format, name, stext, btext, json_object_get(body, "metrics"), 0 };
	rc = engine_exec(a->cfg.engine, do_report_add, &add);
	ret = rc < 0 ? api_reply_rc(r, rc)
		     : api_reply_json(r, MHD_HTTP_CREATED, json_pack("{sI sO}", "id", (json_int_t)add.id, "summary", summary));
	json_decref(body);
	json_decref(summary);
	free(stext);
	free(btext);
	return ret;
}

/* ---- inputs ----------------------------------------------------------------- */

/*
 * The job's inputs.  Which stages a stage needs is a JSON array of names
 * (stages.needs); it is read in C rather than with SQLite's json_each,
 * which PostgreSQL lacks: the query lists the artifacts of the run's
 * passed jobs, and the names its stage needs pick among them.  The CAST
 * gives PostgreSQL the type of a parameter it first meets in IS NULL.
 */
static const char inputs_job_sql[] =
	"SELECT j.spec, st.needs FROM jobs j LEFT JOIN stages st ON st.id = j.stage_id WHERE j.id = ?";
static const char inputs_artifacts_sql[] =
	"SELECT a.name, a.sha256, a.size, a.hardware, s.name FROM artifacts a"
	" JOIN jobs j ON j.id = a.job_id AND j.attempt = a.attempt AND j.state = 'passed'"
	" JOIN stages s ON s.id = j.stage_id"
	" WHERE j.run_id = (SELECT run_id FROM jobs WHERE id = ?1)"
	" AND (CAST(?2 AS TEXT) IS NULL OR a.hardware = ?2) ORDER BY a.id";

/* Whether needs (a stage's needs) names stage: an array's, or an object's,
 * string values, or the string itself, as json_each would walk them. */
static int stage_needed(const json_t *needs, const char *stage)
{
	const char *key;
	json_t *v;
	size_t i;

	if (json_is_string(needs))
		return !strcmp(json_string_value(needs), stage);
	if (json_is_array(needs)) {
		json_array_foreach(needs, i, v)
			if (json_is_string(v) && !strcmp(json_string_value(v), stage))
				return 1;
	} else if (json_is_object(needs)) {
		json_object_foreach((json_t *)needs, key, v)
			if (json_is_string(v) && !strcmp(json_string_value(v), stage))
				return 1;
	}
	return 0;
}

int api_job_inputs(struct store *s, int64_t job, json_t **out)
{
	struct db_stmt *st = store_q(s, inputs_job_sql);
	json_t *spec = NULL, *needs = NULL, *list = NULL;
	const char *board;
	int rc, needs_bad = 0;

	*out = NULL;
	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, job);
	if ((rc = db_step(st)) == 1) {
		spec = json_loads(db_column_text(st, 0), 0, NULL);
		if (db_column_text(st, 1) && !(needs = json_loads(db_column_text(st, 1), JSON_DECODE_ANY, NULL)))
			needs_bad = 1;
	}
	db_reset(st);
	if (rc < 0)
		goto out;
	if (!spec) {
		rc = ota_error_set(OTA_ENOTFOUND, "job %" PRId64 " not found", job);
		goto out;
	}
	if (needs_bad) {
		rc = ota_error_set(OTA_ERROR, "job %" PRId64 ": its stage's needs are not JSON", job);
		goto out;
	}
	board = json_string_value(json_object_get(json_object_get(spec, "extra"), "board"));
	if (!(st = store_q(s, inputs_artifacts_sql))) {
		rc = OTA_ERROR;
		goto out;
	}
	db_bind_int64(st, 1, job);
	if (board)
		db_bind_text(st, 2, board);
	list = json_array();
	while ((rc = db_step(st)) == 1) {
		const char *hw = db_column_text(st, 3);
		if (!db_column_text(st, 4) || !stage_needed(needs, db_column_text(st, 4)))
			continue;
		json_array_append_new(list, json_pack("{ss ss sI so}", "name", db_column_text(st, 0), "sha256",
						      db_column_text(st, 1), "size", (json_int_t)db_column_int64(st, 2),
						      "hardware", hw ? json_string(hw) : json_null()));
	}
	db_reset(st);
	if (rc == 0) {
		*out = list;
		list = NULL;
	}
out:
	json_decref(list);
	json_decref(needs);
	json_decref(spec);
	return rc < 0 ? rc : 0;
}

/* The inputs of the job whose current attempt holds r's job token (the
 * attempt is the token's, see api_job_auth); NULL once *ret is queued. */
static json_t *current_inputs(struct api_req *r, enum MHD_Result *ret)
{
	struct store *s = store_reader();
	json_t *list = NULL;
	int rc = OTA_ERROR;

	if (!api_attempt_current(r->id, r->attempt)) {
		*ret = api_reply_error(r, MHD_HTTP_CONFLICT, "attempt %" PRId64 " of job %" PRId64 " is not running",
				       r->attempt, r->id);
		return NULL;
	}
	if (!s || (rc = api_snapshot_begin(s)) < 0) {
		*ret = api_reply_rc(r, rc);
		return NULL;
	}
	rc = api_job_inputs(s, r->id, &list);
	api_snapshot_end(s);
	if (rc < 0) {
		*ret = api_reply_rc(r, rc);
		return NULL;
	}
	return list;
}

enum MHD_Result api_agent_inputs(struct api *a, struct api_req *r)
{
	enum MHD_Result ret;
	json_t *list = current_inputs(r, &ret);

	(void)a;
	return list ? api_reply_json(r, MHD_HTTP_OK, list) : ret;
}

static ssize_t input_read_cb(void *cls, uint64_t pos, char *buf, size_t max)
{
	ssize_t n;
	(void)pos;
	n = artifact_backend()->read(cls, buf, max);
	if (n == 0)
		return MHD_CONTENT_READER_END_OF_STREAM;
	return n < 0 ? MHD_CONTENT_READER_END_WITH_ERROR : n;
}

static void input_close_cb(void *cls)
{
	artifact_backend()->close(cls);
}

enum MHD_Result api_agent_input(struct api *a, struct api_req *r)
{
	struct artifact_backend *b = artifact_backend();
	struct artifact_reader *rd = NULL;
	struct MHD_Response *resp;
	enum MHD_Result ret;
	json_t *list = current_inputs(r, &ret), *in;
	int64_t size = 0;
	int found = 0;
	size_t i;

	(void)a;
	if (!list)
		return ret;
	json_array_foreach(list, i, in)
		found |= !strcmp(json_string_value(json_object_get(in, "sha256")), r->sha);
	json_decref(list);
	if (!found)
		return api_reply_error(r, MHD_HTTP_NOT_FOUND, "%s is not an input of job %" PRId64, r->sha, r->id);
	if (b->get(b, r->sha, &rd, &size) < 0)
		return api_reply_error(r, MHD_HTTP_NOT_FOUND, "%s", ota_error_last());
	resp = MHD_create_response_from_callback((uint64_t)size, 64 * 1024, input_read_cb, rd, input_close_cb);
	MHD_add_response_header(resp, "Content-Type", "application/octet-stream");
	MHD_add_response_header(resp, "X-Sha256", r->sha);
	ret = api_queue_response(r, MHD_HTTP_OK, resp);
	MHD_destroy_response(resp);
	return ret;
}

/* ---- reading ------------------------------------------------------------------ */

static const char run_exists_sql[] = "SELECT 1 FROM runs WHERE id = ?";
static const char run_reports_sql[] =
	"SELECT rp.id, rp.job_id, j.name, s.name, rp.attempt, rp.format, rp.name, rp.summary, rp.body,"
	" j.attempt FROM reports rp JOIN jobs j ON j.id = rp.job_id JOIN stages s ON s.id = j.stage_id"
	" WHERE rp.run_id = ? ORDER BY rp.job_id, rp.attempt, rp.id";

/* 1 if run exists, 0 if not, negative on error. */
static int run_exists(struct store *s, int64_t run)
{
	struct db_stmt *st = store_q(s, run_exists_sql);
	int rc;

	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, run);
	rc = db_step(st);
	db_reset(st);
	return rc;
}

static json_t *report_json(struct db_stmt *st)
{
	const char *format = db_column_text(st, 5);
	json_t *body = json_loads(db_column_text(st, 8), 0, NULL), *summary = json_loads(db_column_text(st, 7), 0, NULL);
	const char *key = !strcmp(format, "junit")	? "cases"
			  : !strcmp(format, "toolchain") ? "commands"
			  : !strcmp(format, "pmccabe")	? "functions"
			  : !strcmp(format, "jscpd")	? "clones"
			  : !strcmp(format, "power")	? "samples"
							: "findings";
	json_t *items = json_object_get(body, key);
	json_t *o = json_pack("{sI sI ss ss si ss ss so sb}", "id", (json_int_t)db_column_int64(st, 0), "job",
			      (json_int_t)db_column_int64(st, 1), "job_name", db_column_text(st, 2), "stage",
			      db_column_text(st, 3), "attempt", (int)db_column_int64(st, 4), "format", format, "name",
			      db_column_text(st, 6), "summary", summary ? summary : json_object(), "latest",
			      db_column_int64(st, 4) == db_column_int64(st, 9));
	json_object_set_new(o, !strcmp(format, "junit") ? "tests" : key, items ? json_incref(items) : json_array());
	json_decref(body);
	return o;
}

/* The reports of run, in s's snapshot: 0, OTA_ENOTFOUND or an error. */
static int run_reports(struct store *s, int64_t run, json_t **out)
{
	struct db_stmt *st;
	int rc;

	*out = NULL;
	if ((rc = run_exists(s, run)) <= 0)
		return rc < 0 ? rc : ota_error_set(OTA_ENOTFOUND, "run %" PRId64 " not found", run);
	if (!(st = store_q(s, run_reports_sql)))
		return OTA_ERROR;
	db_bind_int64(st, 1, run);
	*out = json_array();
	while ((rc = db_step(st)) == 1)
		json_array_append_new(*out, report_json(st));
	db_reset(st);
	if (rc < 0) {
		json_decref(*out);
		*out = NULL;
		return rc;
	}
	return 0;
}

enum MHD_Result api_get_run_reports(struct api *a, struct api_req *r)
{
	struct store *s = store_reader();
	json_t *arr = NULL;
	int rc;

	(void)a;
	if (!s || (rc = api_snapshot_begin(s)) < 0)
		return api_reply_rc(r, OTA_ERROR);
	rc = run_reports(s, r->id, &arr);
	api_snapshot_end(s);
	if (rc < 0)
		return api_reply_rc(r, rc);
	return api_reply_json(r, MHD_HTTP_OK, arr);
}

/* ---- metrics ---------------------------------------------------------------- */

/*
 * GET /api/v1/runs/:id/metrics -> {"run": ID, "metrics": [{stage, job, attempt, name, value}]}
 * (the latest attempt of each job) and, with ?history=N (1..100), "history":
 * the same metrics of the last N runs of the pipeline on the run's ref, up to
 * this one, oldest first: [{run, state, created_at, metrics: {STAGE.NAME: value}}],
 * which the status page draws as trends.  All of it from one snapshot.
 */
static const char run_metrics_sql[] =
	"SELECT m.stage, m.job_id, m.attempt, m.name, m.value FROM run_metrics m"
	" JOIN jobs j ON j.id = m.job_id AND j.attempt = m.attempt WHERE m.run_id = ? ORDER BY m.stage, m.job_id, m.name";
/* the derived table is named: PostgreSQL (before 16) wants it */
static const char run_history_sql[] =
	"SELECT id, state, created_at FROM (SELECT r.id, r.state, r.created_at FROM runs r, runs me"
	" WHERE me.id = ?1 AND r.pipeline = me.pipeline AND r.ref = me.ref AND r.id <= me.id"
	" ORDER BY r.id DESC LIMIT ?2) AS recent ORDER BY id";

static json_t *metrics_of_run(struct store *s, int64_t run, int as_map)
{
	struct db_stmt *st = store_q(s, run_metrics_sql);
	json_t *out = as_map ? json_object() : json_array();

	if (!st)
		return out;
	db_bind_int64(st, 1, run);
	while (db_step(st) == 1) {
		if (as_map) {
			char *k = xasprintf("%s.%s", db_column_text(st, 0), db_column_text(st, 3));
			json_object_set_new(out, k, json_real(db_column_double(st, 4)));
			free(k);
		} else {
			json_array_append_new(out, json_pack("{ss sI si ss sf}", "stage", db_column_text(st, 0), "job",
							     (json_int_t)db_column_int64(st, 1), "attempt",
							     (int)db_column_int64(st, 2), "name", db_column_text(st, 3),
							     "value", db_column_double(st, 4)));
		}
	}
	db_reset(st);
	return out;
}

/* The answer of GET /api/v1/runs/run/metrics, in s's snapshot. */
static int run_metrics(struct store *s, int64_t run, long history, json_t **out)
{
	struct db_stmt *st;
	json_t *hist;
	int rc;

	*out = NULL;
	if ((rc = run_exists(s, run)) <= 0)
		return rc < 0 ? rc : ota_error_set(OTA_ENOTFOUND, "run %" PRId64 " not found", run);
	*out = json_pack("{sI so}", "run", (json_int_t)run, "metrics", metrics_of_run(s, run, 0));
	if (!history)
		return 0;
	if (!(st = store_q(s, run_history_sql)))
		return 0; /* as a failed metrics_of_run: the part is left out */
	db_bind_int64(st, 1, run);
	db_bind_int64(st, 2, history);
	hist = json_array();
	while (db_step(st) == 1)
		json_array_append_new(hist, json_pack("{sI ss sI}", "run", (json_int_t)db_column_int64(st, 0), "state",
						       db_column_text(st, 1), "created_at", (json_int_t)db_column_int64(st, 2)));
	db_reset(st);
	for (size_t i = 0; i < json_array_size(hist); i++) {
		json_t *e = json_array_get(hist, i);
		json_object_set_new(e, "metrics", metrics_of_run(s, json_integer_value(json_object_get(e, "run")), 1));
	}
	json_object_set_new(*out, "history", hist);
	return 0;
}

enum MHD_Result api_get_run_metrics(struct api *a, struct api_req *r)
{
	struct store *s = store_reader();
	const char *h = api_query(r, "history");
	long history = h ? strtol(h, NULL, 10) : 0;
	json_t *ans = NULL;
	int rc;

	(void)a;
	if (!s)
		return api_reply_rc(r, OTA_ERROR);
	if (h && (history < 1 || history > 100))
		return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "history must be a number of runs from 1 to 100");
	if ((rc = api_snapshot_begin(s)) < 0)
		return api_reply_rc(r, rc);
	rc = run_metrics(s, r->id, history, &ans);
	api_snapshot_end(s);
	if (rc < 0)
		return api_reply_rc(r, rc);
	return api_reply_json(r, MHD_HTTP_OK, ans);
}

/* Every statement this file prepares (tests/test_dbconv_read.c prepares
 * each on PostgreSQL too): a statement added above goes here. */
void api_reports_sql_each(void (*fn)(const char *sql, void *arg), void *arg)
{
	static const char *const all[] = { metric_upsert_sql, report_job_sql,	 report_upsert_sql, inputs_job_sql,
					   inputs_artifacts_sql, run_exists_sql, run_reports_sql, run_metrics_sql,
					   run_history_sql };

	for (size_t i = 0; i < OTA_ARRAY_SIZE(all); i++)
		fn(all[i], arg);
}
