/*
 * api_ops.c - what an operator's tools read on the API listener:
 * /healthz (the process answers), /readyz (it takes new work: the
 * database opens and the disk is not full) and /metrics (Prometheus text:
 * runs, jobs, queue, agents, rollouts, gate verdicts, artifact bytes, the
 * disk guard and the API's own latency per route).  docs/operations.md
 * lists every series.
 *
 * The latency histograms are counted here from api.c's completion
 * callback, with atomics: any libmicrohttpd thread may finish a request.
 * Everything else is read from the database by one reader connection per
 * scrape: counts by state over indexed columns, so a scrape costs a few
 * milliseconds at 100,000 runs.
 */
#include "api_int.h"

#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "../../common/util.h"
#include "../cfgdrift.h"
#include "../clock.h"
#include "../commitwatch.h"
#include "../db/db.h"
#include "../diskguard.h"
#include "../fleet/admission.h"
#include "../fleet/fleet.h"
#include "../gate.h"
#include "../store.h"
#include "../updsrv.h"

/* ---- API latency per route ---------------------------------------------- */

static const double lat_bounds[] = { 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30 };
#define LAT_BUCKETS (sizeof(lat_bounds) / sizeof(lat_bounds[0]))
#define LAT_ROUTES 128

struct lat_series {
	_Atomic(const struct api_route *) route;
	atomic_uint_fast64_t bucket[LAT_BUCKETS]; /* non-cumulative; summed when written */
	atomic_uint_fast64_t count, sum_us;
};
static struct lat_series g_lat[LAT_ROUTES];

void api_ops_observe(const struct api_route *route, int64_t elapsed_us)
{
	double s = (double)elapsed_us / 1e6;
	struct lat_series *ls = NULL;

	if (!route || elapsed_us < 0)
		return;
	for (size_t i = 0; i < LAT_ROUTES && !ls; i++) {
		const struct api_route *cur = atomic_load(&g_lat[i].route), *none = NULL;
		if (cur == route)
			ls = &g_lat[i];
		else if (!cur && (atomic_compare_exchange_strong(&g_lat[i].route, &none, route) || none == route))
			ls = &g_lat[i];
	}
	if (!ls)
		return; /* more routes than series: never, with today's table */
	for (size_t b = 0; b < LAT_BUCKETS; b++)
		if (s <= lat_bounds[b]) {
			atomic_fetch_add(&ls->bucket[b], 1);
			break;
		}
	atomic_fetch_add(&ls->count, 1);
	atomic_fetch_add(&ls->sum_us, (uint_fast64_t)elapsed_us);
}

static void latency_text(struct buf *b)
{
	buf_puts(b, "# HELP otacd_api_request_duration_seconds Time from a request's complete header to its answer,"
		    " per route (long polls wait by design).\n"
		    "# TYPE otacd_api_request_duration_seconds histogram\n");
	for (size_t i = 0; i < LAT_ROUTES; i++) {
		const struct api_route *rt = atomic_load(&g_lat[i].route);
		uint64_t cum = 0;
		if (!rt)
			break;
		for (size_t k = 0; k < LAT_BUCKETS; k++) {
			cum += atomic_load(&g_lat[i].bucket[k]);
			buf_printf(b, "otacd_api_request_duration_seconds_bucket{method=\"%s\",route=\"%s\",le=\"%g\"} %" PRIu64 "\n",
				   rt->method, rt->pattern, lat_bounds[k], cum);
		}
		buf_printf(b, "otacd_api_request_duration_seconds_bucket{method=\"%s\",route=\"%s\",le=\"+Inf\"} %" PRIu64 "\n"
			      "otacd_api_request_duration_seconds_sum{method=\"%s\",route=\"%s\"} %.6f\n"
			      "otacd_api_request_duration_seconds_count{method=\"%s\",route=\"%s\"} %" PRIu64 "\n",
			   rt->method, rt->pattern, (uint64_t)atomic_load(&g_lat[i].count), rt->method, rt->pattern,
			   (double)atomic_load(&g_lat[i].sum_us) / 1e6, rt->method, rt->pattern,
			   (uint64_t)atomic_load(&g_lat[i].count));
	}
}

/* ---- series read from the database ------------------------------------- */

/* One gauge family from "SELECT label, count" rows; states that have no
 * row are written as 0 so that a series does not vanish. */
static int by_state(struct buf *b, struct store *db, const char *name, const char *help, const char *sql,
		    const char *const *states)
{
	struct db_stmt *st = store_q(db, sql);
	json_t *seen = json_object();
	const char *k;
	json_t *v;

	if (!st) {
		json_decref(seen);
		return OTA_ERROR;
	}
	while (db_step(st) == 1)
		json_object_set_new(seen, db_column_text(st, 0) ? db_column_text(st, 0) : "", json_integer(db_column_int64(st, 1)));
	db_reset(st);
	for (size_t i = 0; states && states[i]; i++)
		if (!json_object_get(seen, states[i]))
			json_object_set_new(seen, states[i], json_integer(0));
	buf_printf(b, "# HELP %s %s\n# TYPE %s gauge\n", name, help, name);
	json_object_foreach(seen, k, v)
		buf_printf(b, "%s{state=\"%s\"} %" JSON_INTEGER_FORMAT "\n", name, k, json_integer_value(v));
	json_decref(seen);
	return 0;
}

static int64_t one_int(struct store *db, const char *sql, int64_t arg)
{
	struct db_stmt *st = store_q(db, sql);
	int64_t v = 0;
	if (!st)
		return 0;
	if (db_param_count(st) > 0)
		db_bind_int64(st, 1, arg);
	if (db_step(st) == 1)
		v = db_column_int64(st, 0);
	db_reset(st);
	return v;
}

/* ---- histograms counted by a query ---------------------------------------- */

/* Every histogram here has HIST_BUCKETS finite buckets: the query counts
 * them in one pass over rows of (l: label value, v: observation in ms). */
#define HIST_BUCKETS 10
/* CASE rather than SUM(v <= ?): PostgreSQL has no SUM of booleans
 * (docs/storage.md, dialect) */
#define HIST_SUMS \
	"SUM(CASE WHEN v <= ?1 THEN 1 ELSE 0 END)," \
	" SUM(CASE WHEN v <= ?2 THEN 1 ELSE 0 END)," \
	" SUM(CASE WHEN v <= ?3 THEN 1 ELSE 0 END)," \
	" SUM(CASE WHEN v <= ?4 THEN 1 ELSE 0 END)," \
	" SUM(CASE WHEN v <= ?5 THEN 1 ELSE 0 END)," \
	" SUM(CASE WHEN v <= ?6 THEN 1 ELSE 0 END)," \
	" SUM(CASE WHEN v <= ?7 THEN 1 ELSE 0 END)," \
	" SUM(CASE WHEN v <= ?8 THEN 1 ELSE 0 END)," \
	" SUM(CASE WHEN v <= ?9 THEN 1 ELSE 0 END)," \
	" SUM(CASE WHEN v <= ?10 THEN 1 ELSE 0 END)," \
	" COUNT(*), COALESCE(SUM(v), 0)"

/* Real run time of finished jobs' last attempts on agents, by stage kind. */
static const char job_duration_sql[] =
	"SELECT l, " HIST_SUMS " FROM (SELECT s.kind AS l, j.real_finished_at - j.real_started_at AS v"
	" FROM jobs j JOIN stages s ON s.id = j.stage_id WHERE j.real_finished_at IS NOT NULL AND j.agent_id > 0)"
	" AS finished GROUP BY l ORDER BY l";
static const double job_duration_bounds[HIST_BUCKETS] = { 0.1, 0.5, 1, 5, 15, 60, 300, 900, 1800, 3600 };

/* Each claimed attempt's wait in the queue (migration 14). */
static const char queue_wait_sql[] =
	"SELECT '' AS l, " HIST_SUMS " FROM (SELECT queue_wait_ms AS v FROM job_attempts WHERE queue_wait_ms IS NOT NULL) AS waits";
static const double queue_wait_bounds[HIST_BUCKETS] = { 0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 3600 };

/* A label value as the text format wants it: \, " and newline escaped. */
static void put_label_value(struct buf *b, const char *v)
{
	for (; *v; v++) {
		if (*v == '\\' || *v == '"')
			buf_putc(b, '\\');
		if (*v == '\n')
			buf_puts(b, "\\n");
		else
			buf_putc(b, *v);
	}
}

/* One histogram family; label NULL: a single unlabelled series (the query
 * then answers one row, with l ''). */
static int histogram_text(struct buf *b, struct store *db, const char *name, const char *help, const char *label,
			  const char *sql, const double bounds[HIST_BUCKETS])
{
	struct db_stmt *st = store_q(db, sql);
	int rc;

	if (!st)
		return OTA_ERROR;
	for (int i = 0; i < HIST_BUCKETS; i++)
		db_bind_int64(st, i + 1, (int64_t)(bounds[i] * 1000.0 + 0.5));
	buf_printf(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
	while ((rc = db_step(st)) == 1) {
		struct buf lv = BUF_INIT; /* {kind="build", or { */
		int64_t count = db_column_int64(st, HIST_BUCKETS + 1);
		buf_putc(&lv, '{');
		if (label) {
			buf_printf(&lv, "%s=\"", label);
			put_label_value(&lv, db_column_text(st, 0) ? db_column_text(st, 0) : "");
			buf_puts(&lv, "\",");
		}
		for (int i = 0; i < HIST_BUCKETS; i++)
			buf_printf(b, "%s_bucket%sle=\"%g\"} %" PRId64 "\n", name, buf_cstr(&lv), bounds[i],
				   db_column_int64(st, i + 1));
		buf_printf(b, "%s_bucket%sle=\"+Inf\"} %" PRId64 "\n", name, buf_cstr(&lv), count);
		if (label) {
			lv.ptr[lv.len - 1] = '}'; /* the trailing comma closes the set */
			buf_printf(b, "%s_sum%s %.3f\n%s_count%s %" PRId64 "\n", name, buf_cstr(&lv),
				   (double)db_column_int64(st, HIST_BUCKETS + 2) / 1000.0, name, buf_cstr(&lv), count);
		} else {
			buf_printf(b, "%s_sum %.3f\n%s_count %" PRId64 "\n", name,
				   (double)db_column_int64(st, HIST_BUCKETS + 2) / 1000.0, name, count);
		}
		buf_release(&lv);
	}
	db_reset(st);
	return rc < 0 ? OTA_ERROR : 0;
}

/* Counters kept in memory since the start: gate evaluations (gate.h) and
 * the device API's check-ins and reports (the same numbers as on the
 * device listener's /metrics, so one scrape of the API listener sees the
 * whole pipeline). */
static void counters_text(struct buf *b)
{
	static const enum gate_verdict verdicts[] = { GATE_PASS, GATE_FAIL, GATE_INCONCLUSIVE };
	uint64_t accepted, refused;

	buf_puts(b, "# HELP otacd_gate_verdicts_total Gate evaluations since otacd started, by verdict.\n"
		    "# TYPE otacd_gate_verdicts_total counter\n");
	for (size_t i = 0; i < OTA_ARRAY_SIZE(verdicts); i++)
		buf_printf(b, "otacd_gate_verdicts_total{verdict=\"%s\"} %" PRIu64 "\n", gate_verdict_name(verdicts[i]),
			   gate_verdicts_total(verdicts[i]));
	devapi_report_counts(&accepted, &refused);
	buf_printf(b, "# HELP otacd_device_checkins_total Check-in requests the device API took (served, deferred,"
		      " refused for their credential).\n"
		      "# TYPE otacd_device_checkins_total counter\notacd_device_checkins_total %" PRIu64 "\n"
		      "# HELP otacd_device_reports_total Device reports answered, by outcome.\n"
		      "# TYPE otacd_device_reports_total counter\n"
		      "otacd_device_reports_total{outcome=\"accepted\"} %" PRIu64 "\n"
		      "otacd_device_reports_total{outcome=\"refused\"} %" PRIu64 "\n",
		   admission_checkins_taken(), accepted, refused);
}

static const char *const run_states[] = { "queued", "blocked", "running", "passed", "failed", "canceled", NULL };
static const char *const job_states[] = { "pending", "queued", "running", "passed", "failed", "canceled", "skipped",
					  NULL };

static int db_text_read(struct api *a, struct store *db, struct buf *b)
{
	int64_t now = clock_now_ms(), oldest;

	if (by_state(b, db, "otacd_runs", "Runs by state.", "SELECT state, COUNT(*) FROM runs GROUP BY state",
		     run_states) < 0 ||
	    by_state(b, db, "otacd_jobs", "Jobs by state.", "SELECT state, COUNT(*) FROM jobs GROUP BY state",
		     job_states) < 0 ||
	    by_state(b, db, "otacd_rollouts", "Rollout stages (soaks and rollouts) by state.",
		     "SELECT state, COUNT(*) FROM rollouts GROUP BY state", NULL) < 0 ||
	    by_state(b, db, "otacd_gate_evaluations", "Gate evaluations stored, by verdict (a counter: only grows).",
		     "SELECT verdict, COUNT(*) FROM gate_evals GROUP BY verdict", NULL) < 0)
		return OTA_ERROR;
	buf_printf(b, "# HELP otacd_queue_depth Jobs waiting for an agent.\n# TYPE otacd_queue_depth gauge\n"
		      "otacd_queue_depth %" PRId64 "\n",
		   one_int(db, "SELECT COUNT(*) FROM jobs WHERE state = 'queued'", 0));
	oldest = one_int(db, "SELECT COALESCE(MIN(s.started_at), 0) FROM jobs j JOIN stages s ON s.id = j.stage_id"
			     " WHERE j.state = 'queued' AND s.started_at IS NOT NULL", 0);
	buf_printf(b, "# HELP otacd_queue_oldest_wait_seconds How long the oldest queued job has waited (otacd time,"
		      " from its stage's start).\n# TYPE otacd_queue_oldest_wait_seconds gauge\n"
		      "otacd_queue_oldest_wait_seconds %.3f\n",
		   oldest > 0 && now > oldest ? (double)(now - oldest) / 1000.0 : 0.0);
	if (histogram_text(b, db, "otacd_job_duration_seconds",
			   "Real run time of finished jobs' last attempts on agents, by stage kind.", "kind",
			   job_duration_sql, job_duration_bounds) < 0 ||
	    histogram_text(b, db, "otacd_job_queue_wait_seconds",
			   "Real time each job attempt waited in the queue for an agent (from its stage's start or"
			   " its retry).", NULL, queue_wait_sql, queue_wait_bounds) < 0)
		return OTA_ERROR;
	{
		/* an agent is connected when heard from within a lease */
		int64_t lease = a->cfg.lease_ms > 0 ? a->cfg.lease_ms : 30000;
		buf_printf(b, "# HELP otacd_agents Registered agents: connected (heard from within a lease), busy (on"
			      " a job), revoked.\n# TYPE otacd_agents gauge\n"
			      "otacd_agents{state=\"registered\"} %" PRId64 "\n"
			      "otacd_agents{state=\"connected\"} %" PRId64 "\n"
			      "otacd_agents{state=\"busy\"} %" PRId64 "\n"
			      "otacd_agents{state=\"revoked\"} %" PRId64 "\n",
			   one_int(db, "SELECT COUNT(*) FROM agents WHERE revoked_at IS NULL", 0),
			   one_int(db, "SELECT COUNT(*) FROM agents WHERE revoked_at IS NULL AND last_seen >= ?",
				   clock_real_ms() - lease),
			   one_int(db, "SELECT COUNT(*) FROM agents WHERE revoked_at IS NULL AND current_job > 0", 0),
			   one_int(db, "SELECT COUNT(*) FROM agents WHERE revoked_at IS NOT NULL", 0));
	}
	buf_printf(b, "# HELP otacd_artifact_bytes Bytes of distinct artifact objects recorded (the store's"
		      " content).\n# TYPE otacd_artifact_bytes gauge\notacd_artifact_bytes %" PRId64 "\n"
		      "# HELP otacd_artifacts Artifact records.\n# TYPE otacd_artifacts gauge\notacd_artifacts %" PRId64 "\n",
		   one_int(db, "SELECT COALESCE(SUM(size), 0) FROM (SELECT MAX(size) AS size FROM artifacts GROUP BY sha256) AS objects", 0),
		   one_int(db, "SELECT COUNT(*) FROM artifacts", 0));
	return 0;
}

/* The database's series, in one snapshot of the thread's reader (opened
 * again after a PostgreSQL restart). */
static int db_text(struct api *a, struct buf *b)
{
	struct store *db = store_reader();
	int rc;

	if (!db || api_snapshot_begin(db) < 0)
		return OTA_ERROR;
	rc = db_text_read(a, db, b);
	api_snapshot_end(db);
	return rc;
}

/* issue 16: tokens and agents read again (commitwatch.h) */
static void auth_text(struct buf *b)
{
	uint64_t heard, periodic;

	commitwatch_auth_reloads(&heard, &periodic);
	buf_printf(b, "# HELP otacd_auth_reloads_total Tokens and agents read again from the shared database,"
		      " after another instance's notification or periodically.\n"
		      "# TYPE otacd_auth_reloads_total counter\n"
		      "otacd_auth_reloads_total{cause=\"notification\"} %" PRIu64 "\n"
		      "otacd_auth_reloads_total{cause=\"periodic\"} %" PRIu64 "\n",
		   heard, periodic);
}

static void disk_text(struct buf *b)
{
	struct diskguard_stats s;
	diskguard_stats(&s);
	buf_printf(b, "# HELP otacd_disk_full 1 while the state directory's disk is full and new work is refused (507).\n"
		      "# TYPE otacd_disk_full gauge\notacd_disk_full %d\n"
		      "# HELP otacd_disk_free_bytes Free bytes on the state directory's filesystem at the last look.\n"
		      "# TYPE otacd_disk_free_bytes gauge\notacd_disk_free_bytes %" PRId64 "\n"
		      "# HELP otacd_disk_reserve_bytes The reserve kept for a full disk, and whether it is in place.\n"
		      "# TYPE otacd_disk_reserve_bytes gauge\notacd_disk_reserve_bytes{held=\"%d\"} %" PRId64 "\n"
		      "# HELP otacd_disk_write_failures_total Writes under the state directory that failed for want of"
		      " space.\n# TYPE otacd_disk_write_failures_total counter\notacd_disk_write_failures_total %" PRIu64 "\n"
		      "# HELP otacd_disk_full_episodes_total Times the disk guard turned `full`.\n"
		      "# TYPE otacd_disk_full_episodes_total counter\notacd_disk_full_episodes_total %" PRIu64 "\n",
		   s.low, s.free_bytes < 0 ? 0 : s.free_bytes, s.reserve_held, s.reserve_bytes, s.failures, s.episodes);
}

/* ---- handlers -------------------------------------------------------------- */

static enum MHD_Result reply_text(struct api_req *r, unsigned status, struct buf *b)
{
	struct MHD_Response *resp = MHD_create_response_from_buffer(b->len, b->ptr, MHD_RESPMEM_MUST_FREE);
	enum MHD_Result ret;
	b->ptr = NULL; /* the response owns it */
	buf_release(b);
	MHD_add_response_header(resp, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
	MHD_add_response_header(resp, "Cache-Control", "no-store");
	ret = api_queue_response(r, status, resp);
	MHD_destroy_response(resp);
	return ret;
}

enum MHD_Result api_get_metrics(struct api *a, struct api_req *r)
{
	struct buf b = BUF_INIT;

	diskguard_poll();
	buf_printf(&b, "# HELP otacd_build_info otacd's version.\n# TYPE otacd_build_info gauge\n"
		       "otacd_build_info{version=\"%s\"} 1\n"
		       "# HELP otacd_time_scale otacd time per real second (--time-scale).\n"
		       "# TYPE otacd_time_scale gauge\notacd_time_scale %g\n",
		   OTACD_VERSION, clock_scale());
	disk_text(&b);
	auth_text(&b);
	cfgdrift_metrics_text(&b); /* issue 16 */
	if (db_text(a, &b) < 0) {
		buf_release(&b);
		return api_reply_error(r, MHD_HTTP_SERVICE_UNAVAILABLE, "metrics: the database cannot be read: %s",
				       ota_error_last());
	}
	counters_text(&b);
	latency_text(&b);
	return reply_text(r, MHD_HTTP_OK, &b);
}

enum MHD_Result api_get_healthz(struct api *a, struct api_req *r)
{
	json_t *differ = cfgdrift_mismatch_json(); /* issue 16: settings unlike the leader's */
	(void)a;
	return api_reply_json(r, MHD_HTTP_OK, json_pack("{ss ss so}", "status", "ok", "version", OTACD_VERSION,
							 "config_mismatch", differ));
}

/* Ready: the database answers, the rollouts are loaded and the disk takes new work.  503 with the
 * reasons otherwise, so a load balancer or systemd's watchdog sees why. */
enum MHD_Result api_get_readyz(struct api *a, struct api_req *r)
{
	struct store *db = store_reader();
	json_t *why = json_array();
	char msg[512];

	if (a->stopping)
		json_array_append_new(why, json_string("otacd is stopping"));
	if (!db || one_int(db, "SELECT 1", 0) != 1)
		json_array_append_new(why, json_string("the database cannot be read"));
	if (api_following()) { /* issue 16: it serves reads; writes go to the leader */
		int64_t epoch;
		char *leader = api_follower_leader(&epoch);
		json_array_append_new(why, json_sprintf("this instance is a follower (the leader is %s)",
							leader ? leader : "not known yet"));
		free(leader);
	}
	if (!updsrv_loaded(a->cfg.updsrv)) /* issue 18: a device checking in now would get no offer */
		json_array_append_new(why, json_string("the rollout controller has not loaded the rollouts yet"));
	if (diskguard_poll()) {
		diskguard_message(msg, sizeof(msg));
		json_array_append_new(why, json_string(msg));
	}
	if (json_array_size(why))
		return api_reply_json(r, MHD_HTTP_SERVICE_UNAVAILABLE, json_pack("{ss so}", "status", "not ready",
										 "reasons", why));
	json_decref(why);
	return api_reply_json(r, MHD_HTTP_OK, json_pack("{ss}", "status", "ready"));
}

/* The storage part of /api/v1/health (the page's banner). */
json_t *api_ops_storage_json(void)
{
	struct diskguard_stats s;
	char msg[512];
	diskguard_poll();
	diskguard_stats(&s);
	diskguard_message(msg, sizeof(msg));
	return json_pack("{ss sI sI ss}", "state", s.low ? "full" : "ok", "free_bytes", (json_int_t)s.free_bytes,
			 "since", (json_int_t)s.low_since_ms, "message", msg);
}
