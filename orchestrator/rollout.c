/*
 * rollout.c - the rollout state machine: plans, steps, holds, rollbacks.
 *
 * Everything here that changes state runs on the engine thread inside one
 * of its transactions (see rollout.h for who calls what), so a rollout's
 * row, its gate evaluations, its audit entries and the job it belongs to
 * change together or not at all.  Waiting is never sleeping: a hold is an
 * absolute deadline (hold_until, otacd time) in the row, and the rollout
 * controller (rollout_ctl.c) compares it with the clock whenever it looks.
 *
 * The plan is normalised once, when the rollout is created, from the
 * stage's keys: a list of steps, each {ring, cohort, bp, hold_ms}, rings
 * outermost.  `step` indexes that list.
 */
#include "rollout.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "db/db.h"
#include "engine_int.h"
#include "gate.h"
#include "logstore.h"
#include "mcuboot.h"
#include "rollout_int.h"
#include "store.h"

#define DEFAULT_SOAK_MS (24LL * 3600 * 1000)
#define DEFAULT_CHECK_MS (60LL * 1000)

/* ---- the plan ----------------------------------------------------------- */

static int duration_of(const json_t *v, const char *what, int64_t *out)
{
	if (json_is_integer(v) && json_integer_value(v) >= 0) {
		*out = json_integer_value(v) * 1000;
		return 0;
	}
	if (!json_is_string(v) || ota_parse_duration_ms(json_string_value(v), out) < 0 || *out < 0)
		return ota_error_set(OTA_EINVAL, "%s must be a duration like 6h, 30m or 7d", what);
	return 0;
}

/* A cohort map {tag: value | [values]} as {tag: [values]}. */
static int cohort_of(const json_t *v, const char *what, json_t **out)
{
	const char *k;
	json_t *x, *c;

	*out = NULL;
	if (!v || json_is_null(v))
		return 0;
	if (!json_is_object(v) || !json_object_size(v))
		return ota_error_set(OTA_EINVAL, "%s must map tags to values, like {region: eu}", what);
	c = json_object();
	json_object_foreach((json_t *)v, k, x) {
		json_t *list = json_array(), *y;
		size_t i;
		if (json_is_string(x))
			json_array_append(list, x);
		json_array_foreach(x, i, y)
			if (json_is_string(y))
				json_array_append(list, y);
		if (!json_array_size(list) || (json_is_array(x) && json_array_size(list) != json_array_size(x))) {
			json_decref(list);
			json_decref(c);
			return ota_error_set(OTA_EINVAL, "%s: tag '%s' needs a string or a list of strings", what, k);
		}
		json_object_set_new(c, k, list);
	}
	*out = c;
	return 0;
}

/* Merge two cohort filters (both must match). */
static json_t *cohort_and(const json_t *a, const json_t *b)
{
	json_t *out;
	if (!a && !b)
		return json_null();
	out = a ? json_deep_copy(a) : json_object();
	if (b)
		json_object_update(out, (json_t *)b);
	return out;
}

static int parse_hhmm(const char *s, int *min)
{
	int h, m;
	char end;
	if (!s || sscanf(s, "%d:%d%c", &h, &m, &end) != 2 || h < 0 || h > 24 || m < 0 || m > 59 || h * 60 + m > 1440)
		return -1;
	*min = h * 60 + m;
	return 0;
}

static int window_of(const json_t *v, json_t **out)
{
	int start, end, off = 0;
	const char *o = json_string_value(json_object_get(v, "utc_offset"));

	*out = NULL;
	if (!v)
		return 0;
	if (!json_is_object(v) || parse_hhmm(json_string_value(json_object_get(v, "start")), &start) < 0 ||
	    parse_hhmm(json_string_value(json_object_get(v, "end")), &end) < 0)
		return ota_error_set(OTA_EINVAL, "window needs start and end like {start: \"00:00\", end: \"04:00\"}");
	if (o) {
		int h, m = 0;
		char sign;
		if (sscanf(o, "%c%d:%d", &sign, &h, &m) < 2 || (sign != '+' && sign != '-') || h > 14 || m > 59)
			return ota_error_set(OTA_EINVAL, "window utc_offset must look like +02:00");
		off = (sign == '-' ? -1 : 1) * (h * 60 + m);
	}
	*out = json_pack("{si si si}", "start_min", start, "end_min", end, "utc_offset_min", off);
	return 0;
}

/* gate_specs and approvals are set by otacd (pipeline_expand.c, policy.c),
 * never by the pipeline file: the stage kinds do not accept them. */
static const char *const soak_keys[] = { "cohort", "duration", "gates", "approval", "max_extension", "check_interval",
					 "gate_specs", "approvals", NULL };
static const char *const rollout_keys[] = { "steps", "rings", "cohort", "gates", "approval", "window", "max_extension",
					    "check_interval", "gate_specs", "approvals", NULL };

int rollout_plan_from_extra(const char *kind, const json_t *extra, json_t **out)
{
	int soak = !strcmp(kind, "soak");
	const char *const *keys = soak ? soak_keys : rollout_keys;
	json_t *plan = json_array(), *cohort = NULL, *window = NULL, *rings = NULL, *x, *gates;
	json_t *approval = json_object_get(extra, "approval");
	int64_t max_ext = -1, check = DEFAULT_CHECK_MS, longest = 0;
	const char *k;
	size_t i, j;
	int rc = OTA_EINVAL;

	*out = NULL;
	json_object_foreach((json_t *)extra, k, x) {
		size_t n = 0;
		while (keys[n] && strcmp(keys[n], k))
			n++;
		if (!keys[n]) {
			ota_error_set(OTA_EINVAL, "unknown key '%s' for a %s stage", k, kind);
			goto out;
		}
	}
	if (cohort_of(json_object_get(extra, "cohort"), "cohort", &cohort) < 0)
		goto out;
	if (approval && !json_is_boolean(approval) &&
	    !(json_is_string(approval) && !strcmp(json_string_value(approval), "required"))) {
		ota_error_set(OTA_EINVAL, "approval must be 'required' or a boolean");
		goto out;
	}
	if ((x = json_object_get(extra, "max_extension")) && duration_of(x, "max_extension", &max_ext) < 0)
		goto out;
	if ((x = json_object_get(extra, "check_interval")) && (duration_of(x, "check_interval", &check) < 0 || check <= 0)) {
		ota_error_set(OTA_EINVAL, "check_interval must be a positive duration");
		goto out;
	}
	gates = json_object_get(extra, "gates");
	if (gates) {
		json_array_foreach(gates, i, x)
			if (!json_is_string(x))
				break;
		if (!json_is_array(gates) || i != json_array_size(gates)) {
			ota_error_set(OTA_EINVAL, "gates must be a list of gate names");
			goto out;
		}
	}
	if (soak) {
		int64_t d = DEFAULT_SOAK_MS;
		if ((x = json_object_get(extra, "duration")) && duration_of(x, "duration", &d) < 0)
			goto out;
		json_array_append_new(plan, json_pack("{si so si sI}", "ring", 0, "cohort", cohort_and(cohort, NULL), "bp",
						      10000, "hold_ms", (json_int_t)d));
		longest = d;
	} else {
		json_t *steps = json_object_get(extra, "steps");
		if (!json_is_array(steps) || !json_array_size(steps)) {
			ota_error_set(OTA_EINVAL, "a rollout stage needs steps: [{percent: 1, hold: 6h}, ...]");
			goto out;
		}
		rings = json_array();
		if ((x = json_object_get(extra, "rings"))) {
			json_t *r;
			if (!json_is_array(x) || !json_array_size(x)) {
				ota_error_set(OTA_EINVAL, "rings must be a list of cohorts, like [{region: eu}, {region: us}]");
				goto out;
			}
			json_array_foreach(x, i, r) {
				json_t *c;
				char what[32];
				snprintf(what, sizeof(what), "rings[%zu]", i);
				if (cohort_of(r, what, &c) < 0)
					goto out;
				json_array_append_new(rings, c);
			}
		} else {
			json_array_append_new(rings, json_null());
		}
		json_array_foreach(rings, i, x) {
			double last = 0;
			json_t *s;
			json_array_foreach(steps, j, s) {
				json_t *p = json_object_get(s, "percent");
				int64_t hold = 0;
				double pc = json_is_number(p) ? json_number_value(p) : -1;
				const char *sk;
				json_t *sv;
				json_object_foreach(s, sk, sv)
					if (strcmp(sk, "percent") && strcmp(sk, "hold")) {
						ota_error_set(OTA_EINVAL, "steps[%zu]: unknown key '%s' (a step has percent and hold)", j, sk);
						goto out;
					}
				if (pc <= 0 || pc > 100) {
					ota_error_set(OTA_EINVAL, "steps[%zu].percent must be a number in (0, 100]", j);
					goto out;
				}
				if (pc < last) {
					ota_error_set(OTA_EINVAL, "steps[%zu].percent %g is below the step before (%g): steps only add devices", j, pc, last);
					goto out;
				}
				last = pc;
				if (duration_of(json_object_get(s, "hold"), "steps[].hold", &hold) < 0)
					goto out;
				if (hold > longest)
					longest = hold;
				json_array_append_new(plan, json_pack("{sI so si sI}", "ring", (json_int_t)i, "cohort",
								      cohort_and(cohort, json_is_null(x) ? NULL : x), "bp",
								      (int)lround(pc * 100), "hold_ms", (json_int_t)hold));
			}
		}
		if ((x = json_object_get(extra, "window")) && window_of(x, &window) < 0)
			goto out;
	}
	*out = json_pack("{ss so s[] so sb sI sI sI so}", "kind", kind, "plan", plan, "gates", "gate_specs",
			 json_object_get(extra, "gate_specs") ? json_deep_copy(json_object_get(extra, "gate_specs")) : json_object(),
			 "approval", approval && (json_is_true(approval) || json_is_string(approval)),
			 "approvals", (json_int_t)(json_integer_value(json_object_get(extra, "approvals")) > 1
						   ? json_integer_value(json_object_get(extra, "approvals")) : 1),
			 "max_extension_ms", (json_int_t)(max_ext >= 0 ? max_ext : longest),
			 "check_ms", (json_int_t)check, "window", window ? window : json_null());
	plan = NULL;
	window = NULL;
	if (gates)
		json_array_extend(json_object_get(*out, "gates"), gates);
	rc = 0;
out:
	json_decref(plan);
	json_decref(cohort);
	json_decref(window);
	json_decref(rings);
	return rc;
}

/* ---- helpers on the engine thread ------------------------------------- */

#define Q(e, sql) store_q(engine_store(e), sql)

int rollout_load(struct store *db, int64_t id, struct rollout_row *r)
{
	struct db_stmt *st = store_q(db, "SELECT ro.job_id, ro.run_id, ro.release_id, ro.stage, ro.kind, ro.spec, ro.state,"
					  " ro.step, ro.percent_bp, COALESCE(ro.step_started_at,0), COALESCE(ro.hold_until,0),"
					  " COALESCE(ro.extend_until,0), ro.errors, COALESCE(ro.breaches,'{}'), ro.seq,"
					  " rel.product, rel.version, rel.security_counter, rel.state,"
					  " COALESCE((SELECT attempt FROM jobs WHERE id = ro.job_id), 1)"
					  " FROM rollouts ro JOIN releases rel ON rel.id = ro.release_id WHERE ro.id = ?");
	int rc;

	memset(r, 0, sizeof(*r));
	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, id);
	if ((rc = db_step(st)) == 1) {
		r->id = id;
		r->job_id = db_column_int64(st, 0);
		r->run_id = db_column_int64(st, 1);
		r->release_id = db_column_int64(st, 2);
		snprintf(r->stage, sizeof(r->stage), "%s", db_column_text(st, 3));
		snprintf(r->kind, sizeof(r->kind), "%s", db_column_text(st, 4));
		r->spec = json_loads(db_column_text(st, 5), 0, NULL);
		snprintf(r->state, sizeof(r->state), "%s", db_column_text(st, 6));
		r->step = (int)db_column_int64(st, 7);
		r->bp = (int)db_column_int64(st, 8);
		r->step_started_at = db_column_int64(st, 9);
		r->hold_until = db_column_int64(st, 10);
		r->extend_until = db_column_int64(st, 11);
		r->errors = (int)db_column_int64(st, 12);
		r->breaches = json_loads(db_column_text(st, 13), 0, NULL);
		r->seq = db_column_int64(st, 14);
		snprintf(r->product, sizeof(r->product), "%s", db_column_text(st, 15));
		snprintf(r->version, sizeof(r->version), "%s", db_column_text(st, 16));
		r->security_counter = db_column_int64(st, 17);
		snprintf(r->release_state, sizeof(r->release_state), "%s", db_column_text(st, 18));
		r->attempt = (int)db_column_int64(st, 19);
	}
	db_reset(st);
	if (rc == 0)
		return ota_error_set(OTA_ENOTFOUND, "rollout %" PRId64 " not found", id);
	if (rc < 0)
		return rc;
	if (!r->spec)
		return ota_error_set(OTA_ERROR, "rollout %" PRId64 " has a corrupt plan", id);
	if (!r->breaches)
		r->breaches = json_object();
	return 0;
}

void rollout_row_release(struct rollout_row *r)
{
	json_decref(r->spec);
	json_decref(r->breaches);
	r->spec = r->breaches = NULL;
}

int rollout_active_state(const char *s)
{
	return !strcmp(s, "starting") || !strcmp(s, "waiting_approval") || !strcmp(s, "waiting_window") ||
	       !strcmp(s, "holding") || !strcmp(s, "paused");
}

/* A line in the rollout job's log, so `otactl logs -f` and the page's log
 * view follow the rollout like any job. */
static void rollout_log(const struct rollout_row *r, const char *reason)
{
	struct buf b = BUF_INIT;
	char now[32], until[32];
	int64_t size;

	clock_format(now, clock_now_ms());
	buf_printf(&b, "[%s] %s", now, r->state);
	if (!strcmp(r->state, "holding")) {
		clock_format(until, r->hold_until);
		buf_printf(&b, ": step %d/%d at %.2f%% until %s", r->step + 1, rollout_plan_len(r), r->bp / 100.0, until);
	} else if (!strcmp(r->state, "waiting_window")) {
		clock_format(until, r->hold_until);
		buf_printf(&b, ": step %d/%d starts at %s", r->step + 1, rollout_plan_len(r), until);
	}
	if (reason)
		buf_printf(&b, " (%s)", reason);
	buf_putc(&b, '\n');
	logstore_append(r->job_id, r->attempt, logstore_size(r->job_id, r->attempt), b.ptr, b.len, &size);
	buf_release(&b);
}

int rollout_store_save(struct store *db, const struct rollout_row *r, const char *reason, int64_t now)
{
	struct db_stmt *st = store_q(db, "UPDATE rollouts SET state = ?, step = ?, percent_bp = ?, step_started_at = ?,"
					 " hold_until = ?, extend_until = ?, errors = ?, breaches = ?, reason = COALESCE(?, reason),"
					 " seq = seq + 1, finished_at = ? WHERE id = ?");
	char *b;
	int rc;

	if (!st)
		return OTA_ERROR;
	b = json_dumps(r->breaches, JSON_COMPACT);
	db_bind_text(st, 1, r->state);
	db_bind_int64(st, 2, r->step);
	db_bind_int64(st, 3, r->bp);
	db_bind_int64(st, 4, r->step_started_at);
	db_bind_int64(st, 5, r->hold_until);
	db_bind_int64(st, 6, r->extend_until);
	db_bind_int64(st, 7, r->errors);
	db_bind_text(st, 8, b);
	if (reason)
		db_bind_text(st, 9, reason);
	else
		db_bind_null(st, 9);
	if (!rollout_active_state(r->state))
		db_bind_int64(st, 10, now);
	else
		db_bind_null(st, 10);
	db_bind_int64(st, 11, r->id);
	rc = db_run(st);
	free(b);
	return rc;
}

/* Write the row's mutable fields back and bump seq. */
static int save(struct engine *e, struct rollout_row *r, const char *reason)
{
	int rc = rollout_store_save(engine_store(e), r, reason, clock_now_ms());

	r->seq++;
	rollout_log(r, reason);
	engine_rollout_changed(e);
	engine_emit(e, r->run_id, r->job_id, "rollout.changed",
		    json_pack("{sI sI ss si si}", "rollout", (json_int_t)r->id, "release", (json_int_t)r->release_id,
			      "state", r->state, "step", r->step, "percent_bp", r->bp));
	return rc;
}

/* Counters only: no seq bump (the exposure did not change), no log line. */
static int save_quiet(struct engine *e, struct rollout_row *r)
{
	struct db_stmt *st = Q(e, "UPDATE rollouts SET errors = ?, breaches = ? WHERE id = ?");
	char *b = json_dumps(r->breaches, JSON_COMPACT);
	int rc;
	if (!st) {
		free(b);
		return OTA_ERROR;
	}
	db_bind_int64(st, 1, r->errors);
	db_bind_text(st, 2, b);
	db_bind_int64(st, 3, r->id);
	rc = db_run(st);
	free(b);
	return rc;
}

int rollout_store_release_state(struct store *db, int64_t release, const char *state, int64_t rollback_to)
{
	struct db_stmt *st = store_q(db, "UPDATE releases SET state = ?, rollback_to = CASE WHEN ? > 0 THEN ? ELSE"
					 " rollback_to END WHERE id = ?");
	if (!st)
		return OTA_ERROR;
	db_bind_text(st, 1, state);
	db_bind_int64(st, 2, rollback_to);
	db_bind_int64(st, 3, rollback_to);
	db_bind_int64(st, 4, release);
	return db_run(st);
}

static int set_release_state(struct engine *e, int64_t release, const char *state, int64_t rollback_to)
{
	return rollout_store_release_state(engine_store(e), release, state, rollback_to);
}

/* Finish the rollout's job: the run's DAG goes on (or stops). */
static int finish_job(struct engine *e, struct rollout_row *r, int passed, const char *why)
{
	struct job_result res = { passed ? 0 : 1, passed ? NULL : "script", why };
	int rc = engine_job_complete(e, r->job_id, &res, NULL);
	/* a job already finished (canceled run) is not an error here */
	return rc == OTA_ECONFLICT ? 0 : rc;
}

static const json_t *plan_step(const struct rollout_row *r, int i)
{
	return json_array_get(json_object_get(r->spec, "plan"), (size_t)i);
}

int rollout_plan_len(const struct rollout_row *r)
{
	return (int)json_array_size(json_object_get(r->spec, "plan"));
}

/* The next instant (otacd ms) at or after now inside the plan's window. */
int64_t rollout_window_next(const json_t *window, int64_t now)
{
	int64_t day = 24LL * 3600 * 1000, off, local, min, start, end;

	if (!window || json_is_null(window))
		return now;
	off = json_integer_value(json_object_get(window, "utc_offset_min")) * 60000;
	start = json_integer_value(json_object_get(window, "start_min"));
	end = json_integer_value(json_object_get(window, "end_min"));
	local = now + off;
	min = (local % day) / 60000;
	if (start <= end ? (min >= start && min < end) : (min >= start || min < end))
		return now;
	/* next start today or tomorrow (local), back to UTC */
	{
		int64_t midnight = local - local % day, next = midnight + start * 60000;
		if (next <= local)
			next += day;
		return next - off;
	}
}

/* Enter step i (or wait for the window). */
static int enter_step(struct engine *e, struct rollout_row *r, int i, int64_t now)
{
	const json_t *s = plan_step(r, i);
	int64_t at = rollout_window_next(json_object_get(r->spec, "window"), now);

	r->step = i;
	r->errors = 0;
	json_object_clear(r->breaches);
	if (at > now) {
		snprintf(r->state, sizeof(r->state), "waiting_window");
		r->hold_until = at;
		return 0;
	}
	snprintf(r->state, sizeof(r->state), "holding");
	r->bp = (int)json_integer_value(json_object_get(s, "bp"));
	r->step_started_at = now;
	r->hold_until = now + json_integer_value(json_object_get(s, "hold_ms"));
	r->extend_until = r->hold_until + json_integer_value(json_object_get(r->spec, "max_extension_ms"));
	return 0;
}

/* Does the step cover the whole fleet (100 %, no cohort filter)? */
static int step_is_everyone(const json_t *s)
{
	const json_t *c = json_object_get(s, "cohort");
	return json_integer_value(json_object_get(s, "bp")) >= 10000 && (!c || json_is_null(c));
}

/* ---- creating a rollout (engine thread, inside advance_run) ----------- */

int rollout_store_create(struct store *db, int64_t job_id, int64_t now)
{
	struct db_stmt *st = store_q(db, "SELECT j.run_id, j.spec, s.name, s.kind FROM jobs j JOIN stages s ON"
					 " s.id = j.stage_id WHERE j.id = ?");
	json_t *spec = NULL, *plan = NULL;
	int64_t run = 0;
	char stage[256] = "", kind[16] = "";
	char *text = NULL;
	int rc;

	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, job_id);
	if ((rc = db_step(st)) == 1) {
		run = db_column_int64(st, 0);
		spec = json_loads(db_column_text(st, 1), 0, NULL);
		snprintf(stage, sizeof(stage), "%s", db_column_text(st, 2));
		snprintf(kind, sizeof(kind), "%s", db_column_text(st, 3));
	}
	db_reset(st);
	if (rc != 1)
		return rc < 0 ? rc : ota_error_set(OTA_ENOTFOUND, "job %" PRId64 " not found", job_id);
	/* Validated at lint time; a plan that fails now fails on activation. */
	if (rollout_plan_from_extra(kind, json_object_get(spec, "extra"), &plan) < 0)
		plan = json_pack("{ss s[] ss}", "kind", kind, "plan", "error", ota_error_last());
	text = json_dumps(plan, JSON_COMPACT);
	/* The release is found on activation (the controller's next look):
	 * the row starts in 'starting' so that nothing here finishes a job
	 * while the engine is still advancing the run.  A job started again
	 * keeps its row (OR IGNORE on rollouts.job_id).  release_id references
	 * releases: a run without a release row (0) is refused by the foreign
	 * key on both backends (test_dbconv_rollout.c). */
	st = store_q(db, "INSERT OR IGNORE INTO rollouts(job_id, run_id, release_id, stage, kind, spec, state, created_at)"
			 " SELECT ?, ?, COALESCE((SELECT id FROM releases WHERE run_id = ?), 0), ?, ?, ?, 'starting', ?");
	if (!st) {
		rc = OTA_ERROR;
		goto out;
	}
	db_bind_int64(st, 1, job_id);
	db_bind_int64(st, 2, run);
	db_bind_int64(st, 3, run);
	db_bind_text(st, 4, stage);
	db_bind_text(st, 5, kind);
	db_bind_text(st, 6, text);
	db_bind_int64(st, 7, now);
	rc = db_run(st);
out:
	free(text);
	json_decref(spec);
	json_decref(plan);
	return rc;
}

int rollout_job_start(struct engine *e, int64_t job_id)
{
	int rc = rollout_store_create(engine_store(e), job_id, clock_now_ms());

	if (rc >= 0)
		engine_rollout_changed(e);
	return rc;
}

/* Highest counter of any release of product ever offered to devices. */
static int64_t highest_offered_counter(struct engine *e, const char *product, int64_t except)
{
	struct db_stmt *st = Q(e, "SELECT COALESCE(MAX(security_counter), -1) FROM releases WHERE product = ? AND id != ?"
				   " AND (state != 'created' OR id IN (SELECT rollback_to FROM releases WHERE rollback_to IS NOT NULL))");
	int64_t v = -1;
	if (!st)
		return -1;
	db_bind_text(st, 1, product);
	db_bind_int64(st, 2, except);
	if (db_step(st) == 1)
		v = db_column_int64(st, 0);
	db_reset(st);
	return v;
}

/* Fail a rollout that cannot go on and finish its job. */
static int fail_rollout(struct engine *e, struct rollout_row *r, const char *state, const char *why)
{
	int rc;
	snprintf(r->state, sizeof(r->state), "%s", state);
	if ((rc = save(e, r, why)) < 0)
		return rc;
	return finish_job(e, r, 0, why);
}

int rollout_store_find_release(struct store *db, int64_t id)
{
	struct db_stmt *st = store_q(db, "UPDATE rollouts SET release_id = COALESCE((SELECT id FROM releases WHERE"
					 " run_id = rollouts.run_id), 0) WHERE id = ? AND release_id = 0");
	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, id);
	return db_run(st);
}

int rollout_do_activate(struct engine *e, int64_t id)
{
	struct rollout_row r;
	int64_t now = clock_now_ms(), high;
	char why[512];
	int rc;

	/* the release of the run, now that the engine has committed it */
	if ((rc = rollout_store_find_release(engine_store(e), id)) < 0)
		return rc;
	if ((rc = rollout_load(engine_store(e), id, &r)) == OTA_ENOTFOUND) {
		/* no release row: the join found nothing */
		struct db_stmt *st = Q(e, "SELECT job_id, run_id FROM rollouts WHERE id = ? AND state = 'starting'");
		int64_t job = 0;
		if (!st)
			return OTA_ERROR;
		db_bind_int64(st, 1, id);
		if ((rc = db_step(st)) == 1)
			job = db_column_int64(st, 0);
		db_reset(st);
		if (rc < 0)
			return rc;
		if (!job)
			return 0;
		if (!(st = Q(e, "UPDATE rollouts SET state = 'failed', reason = ?, finished_at = ? WHERE id = ?")))
			return OTA_ERROR;
		db_bind_text(st, 1, "this run made no release: a soak or rollout stage needs a release stage before it");
		db_bind_int64(st, 2, now);
		db_bind_int64(st, 3, id);
		if ((rc = db_run(st)) < 0)
			return rc;
		{
			struct job_result res = { 1, "script",
						  "this run made no release: a soak or rollout stage needs a release stage before it" };
			rc = engine_job_complete(e, job, &res, NULL);
			return rc == OTA_ECONFLICT ? 0 : rc;
		}
	}
	if (rc < 0)
		return rc;
	if (strcmp(r.state, "starting") != 0)
		goto done;
	if (json_object_get(r.spec, "error")) {
		snprintf(why, sizeof(why), "bad rollout plan: %s", json_string_value(json_object_get(r.spec, "error")));
		rc = fail_rollout(e, &r, "failed", why);
		goto done;
	}
	if (!strcmp(r.release_state, "rolled_back") || !strcmp(r.release_state, "halted")) {
		snprintf(why, sizeof(why), "release %s was %s; it is not exposed again", r.version,
			 r.release_state[0] == 'r' ? "rolled back" : "halted");
		rc = fail_rollout(e, &r, "failed", why);
		goto done;
	}
	high = highest_offered_counter(e, r.product, r.release_id);
	if (r.security_counter < high) {
		snprintf(why, sizeof(why),
			 "anti-rollback: release %s has security counter %" PRId64 ", but devices of %s have already been"
			 " offered counter %" PRId64 "; they would refuse it",
			 r.version, r.security_counter, r.product, high);
		rc = fail_rollout(e, &r, "failed", why);
		if (rc >= 0)
			rc = engine_audit(e, "otacd", "refuse", r.release_id, r.id, why, NULL);
		goto done;
	}
	/* a release waiting for approval has offered nothing: it stays
	 * 'created' (and does not count as offered) until approved */
	if (json_is_true(json_object_get(r.spec, "approval"))) {
		snprintf(r.state, sizeof(r.state), "waiting_approval");
		rc = save(e, &r, "waiting for an operator's promote (approval: required)");
		if (rc >= 0)
			rc = engine_audit(e, "otacd", "wait_approval", r.release_id, r.id, "approval: required", NULL);
		goto done;
	}
	if (!strcmp(r.release_state, "created") &&
	    (rc = set_release_state(e, r.release_id, "rolling", 0)) < 0)
		goto done;
	enter_step(e, &r, 0, now);
	if ((rc = save(e, &r, NULL)) >= 0)
		rc = engine_audit(e, "otacd", "start", r.release_id, r.id, "stage started",
			   json_pack("{ss si}", "stage", r.stage, "percent_bp", r.bp));
done:
	rollout_row_release(&r);
	return rc;
}

/* ---- the controller's decisions ------------------------------------- */

int rollout_store_evals(struct store *db, const struct rollout_row *r, const json_t *evals, int64_t now)
{
	json_t *ev;
	size_t i;
	int rc = 0;

	json_array_foreach(evals, i, ev) {
		struct db_stmt *st = store_q(db, "INSERT INTO gate_evals(rollout_id, step, gate, at, verdict, estimate, lo, hi,"
						 " n, detail) VALUES (?,?,?,?,?,?,?,?,?,?)");
		char *d = json_dumps(ev, JSON_COMPACT);
		json_t *x;
		if (!st) {
			free(d);
			return OTA_ERROR;
		}
		db_bind_int64(st, 1, r->id);
		db_bind_int64(st, 2, r->step);
		db_bind_text(st, 3, json_string_value(json_object_get(ev, "gate")));
		db_bind_int64(st, 4, now);
		db_bind_text(st, 5, json_string_value(json_object_get(ev, "verdict")));
		if (json_is_number(x = json_object_get(ev, "estimate")))
			db_bind_double(st, 6, json_number_value(x));
		if (json_is_number(x = json_object_get(ev, "lo")))
			db_bind_double(st, 7, json_number_value(x));
		if (json_is_number(x = json_object_get(ev, "hi")))
			db_bind_double(st, 8, json_number_value(x));
		if (json_is_integer(x = json_object_get(ev, "n")))
			db_bind_int64(st, 9, json_integer_value(x));
		db_bind_text(st, 10, d);
		rc = db_run(st);
		free(d);
		if (rc < 0)
			break;
	}
	return rc;
}

/* The last good release to send devices back to: the newest older release
 * of the product that reached the whole fleet, or a reissue. */
static int64_t last_good(struct engine *e, const struct rollout_row *r, int64_t *counter, char version[64])
{
	struct db_stmt *st = Q(e, "SELECT id, security_counter, version FROM releases WHERE product = ? AND id != ?"
				   " AND state IN ('released','reissue') AND id < ? ORDER BY id DESC LIMIT 1");
	int64_t id = 0;
	if (!st)
		return 0;
	db_bind_text(st, 1, r->product);
	db_bind_int64(st, 2, r->release_id);
	db_bind_int64(st, 3, r->release_id);
	if (db_step(st) == 1) {
		id = db_column_int64(st, 0);
		*counter = db_column_int64(st, 1);
		snprintf(version, 64, "%s", db_column_text(st, 2));
	}
	db_reset(st);
	return id;
}

/* Stop every other active rollout of the release. */
static int stop_siblings(struct engine *e, const struct rollout_row *r, const char *state, const char *why)
{
	struct db_stmt *st = Q(e, "SELECT id FROM rollouts WHERE release_id = ? AND id != ? AND state IN"
				   " ('starting','waiting_approval','waiting_window','holding','paused')");
	int64_t ids[64];
	size_t n = 0;
	int rc = 0;

	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, r->release_id);
	db_bind_int64(st, 2, r->id);
	while (n < 64 && (rc = db_step(st)) == 1)
		ids[n++] = db_column_int64(st, 0);
	db_reset(st);
	if (rc < 0)
		return rc;
	rc = 0;
	for (size_t i = 0; i < n && rc >= 0; i++) {
		struct rollout_row o;
		if ((rc = rollout_load(engine_store(e), ids[i], &o)) < 0)
			break;
		rc = fail_rollout(e, &o, state, why);
		rollout_row_release(&o);
	}
	return rc;
}

/*
 * Halt the release and send exposed devices back.  Devices that had not
 * confirmed the bad image revert on their own (A/B test boot); confirmed
 * ones are offered the last good release when its counter is not lower.
 * Otherwise the release stays halted and an operator must roll forward
 * with `otactl rollback --reissue`.
 */
static int halt_and_roll_back(struct engine *e, struct rollout_row *r, const char *actor, const char *state,
			      const char *why, json_t **detail)
{
	int64_t good_counter = -1, good;
	char good_version[64] = "", msg[1024];
	int rc;

	good = last_good(e, r, &good_counter, good_version);
	if (good && good_counter >= r->security_counter) {
		rc = set_release_state(e, r->release_id, "rolled_back", good);
		snprintf(msg, sizeof(msg), "%s; devices on %s are sent back to %s", why, r->version, good_version);
	} else {
		rc = set_release_state(e, r->release_id, "halted", 0);
		if (good)
			snprintf(msg, sizeof(msg),
				 "%s; halted: the last good release %s has security counter %" PRId64 " < %" PRId64
				 ", so devices that confirmed %s cannot go back to it; roll forward with"
				 " `otactl rollback %" PRId64 " --reissue`",
				 why, good_version, good_counter, r->security_counter, r->version, r->release_id);
		else
			snprintf(msg, sizeof(msg), "%s; halted: no earlier good release to send devices back to"
				 " (unconfirmed devices revert on their own)", why);
	}
	if (rc < 0)
		return rc;
	if ((rc = stop_siblings(e, r, "canceled", msg)) < 0)
		return rc;
	if ((rc = engine_audit(e, actor, !strcmp(state, "failed") ? "auto_rollback" : "rollback", r->release_id, r->id, msg,
			json_pack("{ss sI ss}", "version", r->version, "rollback_to", (json_int_t)(good && good_counter >= r->security_counter ? good : 0),
				  "stage", r->stage))) < 0)
		return rc;
	if (detail)
		*detail = json_pack("{ss ss}", "state", state, "message", msg);
	return fail_rollout(e, r, state, msg);
}

int rollout_do_decide(struct engine *e, const struct rollout_decision *d)
{
	struct rollout_row r;
	int64_t now = clock_now_ms();
	int rc;

	if ((rc = rollout_load(engine_store(e), d->rollout_id, &r)) < 0)
		return rc;
	if (r.seq != d->seq || !rollout_active_state(r.state))
		goto done;  /* stale: someone acted meanwhile */
	if ((rc = rollout_store_evals(engine_store(e), &r, d->evals, now)) < 0)
		goto done;
	if (json_array_size(d->evals))
		engine_emit(e, r.run_id, r.job_id, "gate.result",
			    json_pack("{sI sI si}", "rollout", (json_int_t)r.id, "release", (json_int_t)r.release_id, "step", r.step));
	{
		/* gate history only, unless a counter changed */
		int counters_changed = d->errors != r.errors || (d->breaches && !json_equal(d->breaches, r.breaches));
		if (d->breaches) {
			json_decref(r.breaches);
			r.breaches = json_deep_copy(d->breaches);
		}
		r.errors = d->errors;
		if (d->what == DECIDE_NOTHING) {
			if (counters_changed)
				rc = save_quiet(e, &r);
			goto done;
		}
	}
	switch (d->what) {
	case DECIDE_NOTHING:
		break;
	case DECIDE_WINDOW_OPEN:
		enter_step(e, &r, r.step, now);
		if ((rc = save(e, &r, NULL)) >= 0)
			rc = engine_audit(e, "otacd", "step", r.release_id, r.id, "window opened", json_pack("{si si}", "step", r.step, "percent_bp", r.bp));
		break;
	case DECIDE_ADVANCE: {
		const json_t *cur = plan_step(&r, r.step);
		if (r.step + 1 >= rollout_plan_len(&r)) {
			snprintf(r.state, sizeof(r.state), "passed");
			if ((rc = save(e, &r, d->reason)) < 0)
				break;
			if (step_is_everyone(cur) && (rc = set_release_state(e, r.release_id, "released", 0)) < 0)
				break;
			if ((rc = engine_audit(e, "otacd", "stage_passed", r.release_id, r.id, d->reason,
					json_pack("{ss}", "stage", r.stage))) < 0)
				break;
			rc = finish_job(e, &r, 1, d->reason);
		} else {
			enter_step(e, &r, r.step + 1, now);
			if ((rc = save(e, &r, d->reason)) >= 0)
				rc = engine_audit(e, "otacd", "promote", r.release_id, r.id, d->reason,
					   json_pack("{si si}", "step", r.step, "percent_bp", r.bp));
		}
		break;
	}
	case DECIDE_PAUSE:
		snprintf(r.state, sizeof(r.state), "paused");
		if ((rc = save(e, &r, d->reason)) >= 0)
			rc = engine_audit(e, "otacd", "pause", r.release_id, r.id, d->reason, NULL);
		break;
	case DECIDE_FAIL:
		rc = halt_and_roll_back(e, &r, "otacd", "failed", d->reason, NULL);
		break;
	}
done:
	rollout_row_release(&r);
	return rc;
}

/* ---- canceled runs ------------------------------------------------------- */

int rollout_store_cancel_run(struct store *db, int64_t run_id, int64_t now)
{
	struct db_stmt *st = store_q(db, "UPDATE rollouts SET state = 'canceled', reason = 'run canceled', seq = seq + 1,"
					 " finished_at = ? WHERE run_id = ? AND state IN"
					 " ('starting','waiting_approval','waiting_window','holding','paused')");
	int rc;

	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, now);
	db_bind_int64(st, 2, run_id);
	if ((rc = db_run(st)) < 0)
		return rc;
	return (int)db_changes(st);
}

int rollout_on_run_canceled(struct engine *e, int64_t run_id)
{
	int rc = rollout_store_cancel_run(engine_store(e), run_id, clock_now_ms());

	if (rc > 0)
		engine_rollout_changed(e);
	return rc < 0 ? rc : 0;
}

/* ---- operators ----------------------------------------------------------- */

struct act_args {
	const struct rollout_action *a;
	json_t *detail;
	/* for --reissue, filled by the first call */
	char *reissue_yaml;
	/* set when a promote was refused after failing the stage */
	char refused[600];
};

/* The release's current rollout: the oldest active one. */
static int current_rollout(struct engine *e, int64_t release, int64_t *id)
{
	struct db_stmt *st = Q(e, "SELECT id FROM rollouts WHERE release_id = ? AND state IN"
				   " ('starting','waiting_approval','waiting_window','holding','paused') ORDER BY id LIMIT 1");
	int rc;
	*id = 0;
	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, release);
	if ((rc = db_step(st)) == 1)
		*id = db_column_int64(st, 0);
	db_reset(st);
	return rc < 0 ? rc : 0;
}

static int release_exists(struct engine *e, int64_t id, char state[32])
{
	struct db_stmt *st = Q(e, "SELECT state FROM releases WHERE id = ?");
	int rc;
	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, id);
	if ((rc = db_step(st)) == 1)
		snprintf(state, 32, "%s", db_column_text(st, 0));
	db_reset(st);
	if (rc == 0)
		return ota_error_set(OTA_ENOTFOUND, "release %" PRId64 " not found", id);
	return rc < 0 ? rc : 0;
}

/*
 * One approval of a rollout waiting for approval.  Its plan says how many
 * distinct approvers it needs (`approvals`, from the product's policy;
 * default 1); approvers are token names, kept in rollouts.approved_by, so
 * a second approval by the same name counts once (refused, with why).
 * *done is set when this approval is the last one needed.
 */
static int record_approval(struct engine *e, struct rollout_row *r, const char *actor, struct act_args *x, int *done)
{
	int64_t need = json_integer_value(json_object_get(r->spec, "approvals"));
	struct db_stmt *st;
	json_t *by = NULL, *v;
	char *text = NULL, msg[512];
	size_t i;
	int rc = 0;

	*done = 0;
	if (need <= 1) {
		*done = 1;
		return 0;
	}
	if (!(st = Q(e, "SELECT approved_by FROM rollouts WHERE id = ?")))
		return OTA_ERROR;
	db_bind_int64(st, 1, r->id);
	if ((rc = db_step(st)) == 1 && db_column_text(st, 0))
		by = json_loads(db_column_text(st, 0), 0, NULL);
	db_reset(st);
	if (rc < 0)
		return rc;
	rc = 0;
	if (!json_is_array(by)) {
		json_decref(by);
		by = json_array();
	}
	json_array_foreach(by, i, v)
		if (!strcmp(json_string_value(v), actor)) {
			rc = ota_error_set(OTA_ECONFLICT, "%s already approved stage %s (%zu of %" PRId64 " approvals): the"
					   " next approval must come from someone else", actor, r->stage,
					   json_array_size(by), need);
			goto out;
		}
	json_array_append_new(by, json_string(actor));
	text = json_dumps(by, JSON_COMPACT);
	if (!(st = Q(e, "UPDATE rollouts SET approved_by = ? WHERE id = ?"))) {
		rc = OTA_ERROR;
		goto out;
	}
	db_bind_text(st, 1, text);
	db_bind_int64(st, 2, r->id);
	if ((rc = db_run(st)) < 0)
		goto out;
	if ((int64_t)json_array_size(by) >= need) {
		*done = 1;
		goto out;
	}
	snprintf(msg, sizeof(msg), "approved by %s (%zu of %" PRId64 "): waiting for another approver", actor,
		 json_array_size(by), need);
	if ((rc = save(e, r, msg)) < 0 ||
	    (rc = engine_audit(e, actor, "approve", r->release_id, r->id, msg,
			       json_pack("{ss sO sI}", "stage", r->stage, "approved_by", by, "needed", (json_int_t)need))) < 0)
		goto out;
	x->detail = json_pack("{ss sI sI}", "state", r->state, "approvals", (json_int_t)json_array_size(by), "needed",
			      (json_int_t)need);
out:
	free(text);
	json_decref(by);
	return rc;
}

static int do_act(struct engine *e, void *arg)
{
	struct act_args *x = arg;
	const struct rollout_action *a = x->a;
	struct rollout_row r = { 0 };
	char rel_state[32] = "", msg[512];
	int64_t now = clock_now_ms(), cur = 0;
	int rc;

	if ((rc = release_exists(e, a->release_id, rel_state)) < 0)
		return rc;
	if ((rc = current_rollout(e, a->release_id, &cur)) < 0)
		return rc;
	if (cur && (rc = rollout_load(engine_store(e), cur, &r)) < 0)
		return rc;

	if (!strcmp(a->action, "rollback")) {
		if (!strcmp(rel_state, "rolled_back")) {
			rc = ota_error_set(OTA_ECONFLICT, "release %" PRId64 " is already rolled back", a->release_id);
			goto out;
		}
		if (!cur) {
			/* no active rollout: act on the newest one for its context */
			struct db_stmt *st = Q(e, "SELECT MAX(id) FROM rollouts WHERE release_id = ?");
			if (!st) {
				rc = OTA_ERROR;
				goto out;
			}
			db_bind_int64(st, 1, a->release_id);
			if ((rc = db_step(st)) == 1)
				cur = db_column_int64(st, 0);
			db_reset(st);
			if (rc < 0)
				goto out;
			if (!cur) {
				rc = ota_error_set(OTA_ECONFLICT, "release %" PRId64 " was never rolled out", a->release_id);
				goto out;
			}
			if ((rc = rollout_load(engine_store(e), cur, &r)) < 0)
				goto out;
		}
		{
			char gv[64] = "";
			int64_t good_counter = -1, good = last_good(e, &r, &good_counter, gv);
			if (!a->reissue && good && good_counter < r.security_counter) {
				rc = ota_error_set(OTA_ECONFLICT,
						   "refused: rolling back to %s (security counter %" PRId64 ") would ask devices holding"
						   " counter %" PRId64 " from %s to go below it; use --reissue to re-sign %s as a new"
						   " version with counter %" PRId64,
						   gv, good_counter, r.security_counter, r.version, gv, r.security_counter);
				goto out;
			}
			if (a->reissue) {
				if (!good) {
					rc = ota_error_set(OTA_ECONFLICT, "no earlier good release of %s to reissue", r.product);
					goto out;
				}
				rc = rollout_reissue_plan(e, &r, good, &x->reissue_yaml);
				goto out;
			}
		}
		snprintf(msg, sizeof(msg), "rolled back by %s: %s", a->actor, a->reason);
		if (rollout_active_state(r.state))
			rc = halt_and_roll_back(e, &r, a->actor, "rolled_back", msg, &x->detail);
		else {
			/* finished rollouts: re-point devices without touching jobs */
			int64_t gc = -1;
			char gv[64];
			int64_t good = last_good(e, &r, &gc, gv);
			rc = set_release_state(e, r.release_id, good && gc >= r.security_counter ? "rolled_back" : "halted",
					       good && gc >= r.security_counter ? good : 0);
			if (rc >= 0)
				rc = engine_audit(e, a->actor, "rollback", r.release_id, r.id, a->reason,
					   json_pack("{sI}", "rollback_to", (json_int_t)good));
			engine_rollout_changed(e);
			x->detail = json_pack("{ss sI}", "state", "rolled_back", "rollback_to", (json_int_t)good);
		}
		goto out;
	}

	if (!cur) {
		rc = ota_error_set(OTA_ECONFLICT, "release %" PRId64 " has no rollout in progress (it is %s)", a->release_id,
				   rel_state);
		goto out;
	}
	if (!strcmp(a->action, "pause")) {
		if (!strcmp(r.state, "paused")) {
			rc = ota_error_set(OTA_ECONFLICT, "rollout of %s (stage %s) is already paused", r.version, r.stage);
			goto out;
		}
		snprintf(r.state, sizeof(r.state), "paused");
		snprintf(msg, sizeof(msg), "paused by %s: %s", a->actor, a->reason);
		if ((rc = save(e, &r, msg)) >= 0)
			rc = engine_audit(e, a->actor, "pause", r.release_id, r.id, a->reason, NULL);
	} else if (!strcmp(a->action, "resume")) {
		if (strcmp(r.state, "paused") != 0) {
			rc = ota_error_set(OTA_ECONFLICT, "rollout of %s (stage %s) is %s, not paused", r.version, r.stage, r.state);
			goto out;
		}
		/* the hold keeps its deadline; inconclusive gates get a fresh extension */
		snprintf(r.state, sizeof(r.state), r.bp || !json_is_true(json_object_get(r.spec, "approval")) ? "holding" : "waiting_approval");
		if (r.extend_until < now + json_integer_value(json_object_get(r.spec, "max_extension_ms")))
			r.extend_until = now + json_integer_value(json_object_get(r.spec, "max_extension_ms"));
		r.errors = 0;
		snprintf(msg, sizeof(msg), "resumed by %s: %s", a->actor, a->reason);
		if ((rc = save(e, &r, msg)) >= 0)
			rc = engine_audit(e, a->actor, "resume", r.release_id, r.id, a->reason, NULL);
	} else if (!strcmp(a->action, "promote")) {
		if (!strcmp(r.state, "starting")) {
			rc = ota_error_set(OTA_ECONFLICT, "the rollout of stage %s is starting; try again in a moment", r.stage);
			goto out;
		}
		if (a->to_stage && !strcmp(r.state, "waiting_approval") &&
		    json_integer_value(json_object_get(r.spec, "approvals")) > 1) {
			rc = ota_error_set(OTA_ECONFLICT, "stage %s waits for %" PRId64 " distinct approvals: promote it"
					   " without --to", r.stage, (int64_t)json_integer_value(json_object_get(r.spec, "approvals")));
			goto out;
		}
		if (a->to_stage) {
			/* pass every rollout of the release up to the named stage */
			if (!strcmp(a->to_stage, r.stage)) {
				rc = ota_error_set(OTA_ECONFLICT, "stage %s is the current stage", r.stage);
				goto out;
			}
			snprintf(r.state, sizeof(r.state), "passed");
			snprintf(msg, sizeof(msg), "promoted to %s by %s: %s", a->to_stage, a->actor, a->reason);
			if ((rc = save(e, &r, msg)) < 0 ||
			    (rc = engine_audit(e, a->actor, "promote", r.release_id, r.id, a->reason,
					json_pack("{ss ss}", "from", r.stage, "to", a->to_stage))) < 0)
				goto out;
			rc = finish_job(e, &r, 1, msg);
			x->detail = json_pack("{ss ss}", "passed", r.stage, "next", a->to_stage);
			goto out;
		}
		if (!strcmp(r.state, "waiting_approval")) {
			int done = 0;
			int64_t high = highest_offered_counter(e, r.product, r.release_id);
			if (r.security_counter < high) {
				/* anti-rollback at approval: while this stage waited, a
				 * newer counter reached devices; they would refuse it */
				snprintf(msg, sizeof(msg),
					 "anti-rollback: release %s has security counter %" PRId64 ", but devices of %s"
					 " have already been offered counter %" PRId64 "; they would refuse it",
					 r.version, r.security_counter, r.product, high);
				if ((rc = fail_rollout(e, &r, "failed", msg)) >= 0 &&
				    (rc = engine_audit(e, a->actor, "refuse", r.release_id, r.id, msg, NULL)) >= 0)
					snprintf(x->refused, sizeof(x->refused), "refused: %s", msg);
				goto out;
			}
			if ((rc = record_approval(e, &r, a->actor, x, &done)) < 0 || !done)
				goto out;
			if (!strcmp(r.release_state, "created") &&
			    (rc = set_release_state(e, r.release_id, "rolling", 0)) < 0)
				goto out;
			enter_step(e, &r, 0, now);
			snprintf(msg, sizeof(msg), "approved by %s: %s", a->actor, a->reason);
		} else if (a->skip_step || !strcmp(r.state, "paused") || !strcmp(r.state, "waiting_window")) {
			if (r.step + 1 >= rollout_plan_len(&r)) {
				snprintf(r.state, sizeof(r.state), "passed");
				snprintf(msg, sizeof(msg), "last step skipped by %s: %s", a->actor, a->reason);
				if ((rc = save(e, &r, msg)) < 0 ||
				    (step_is_everyone(plan_step(&r, r.step)) &&
				     (rc = set_release_state(e, r.release_id, "released", 0)) < 0) ||
				    (rc = engine_audit(e, a->actor, "promote", r.release_id, r.id, a->reason,
						json_pack("{ss}", "skipped", "last step"))) < 0)
					goto out;
				rc = finish_job(e, &r, 1, msg);
				goto out;
			}
			/* an operator's promote ignores the window */
			{
				json_t *w = json_incref(json_object_get(r.spec, "window"));
				json_object_set(r.spec, "window", json_null());
				enter_step(e, &r, r.step + 1, now);
				json_object_set_new(r.spec, "window", w);
			}
			snprintf(msg, sizeof(msg), "promoted by %s: %s", a->actor, a->reason);
		} else {
			rc = ota_error_set(OTA_ECONFLICT,
					   "the %s stage of %s is holding step %d of %d (its gates decide); use --skip-step to"
					   " advance now or --to STAGE",
					   r.stage, r.version, r.step + 1, rollout_plan_len(&r));
			goto out;
		}
		if ((rc = save(e, &r, msg)) >= 0)
			rc = engine_audit(e, a->actor, "promote", r.release_id, r.id, a->reason,
				   json_pack("{si si}", "step", r.step, "percent_bp", r.bp));
	} else {
		rc = ota_error_set(OTA_EINVAL, "unknown action '%s'", a->action);
	}
	if (rc >= 0 && !x->detail)
		x->detail = json_pack("{ss si si}", "state", r.state, "step", r.step, "percent_bp", r.bp);
out:
	rollout_row_release(&r);
	return rc;
}

struct reissue_done {
	const struct rollout_action *a;
	int64_t run_id;
};

static int do_reissue_recorded(struct engine *e, void *arg)
{
	struct reissue_done *x = arg;
	return engine_audit(e, x->a->actor, "reissue", x->a->release_id, 0, x->a->reason,
		     json_pack("{sI}", "run", (json_int_t)x->run_id));
}

int rollout_act(struct engine *e, const struct rollout_action *a, json_t **detail)
{
	struct act_args x = { .a = a };
	int rc;

	if (detail)
		*detail = NULL;
	if (!a->reason || !*a->reason)
		return ota_error_set(OTA_EINVAL, "a reason is required (--reason)");
	if ((rc = engine_exec(e, do_act, &x)) < 0)
		return rc;
	if (x.refused[0]) {
		/* the stage's failure is committed; the operator gets why */
		json_decref(x.detail);
		return ota_error_set(OTA_ECONFLICT, "%s", x.refused);
	}
	if (x.reissue_yaml) {
		/* Roll forward: sign the last good build again as a new release
		 * with the current counter; once recorded it becomes this
		 * release's rollback target (engine_release_record). */
		struct trigger_req t = { 0 };
		struct pl_diags diags;
		struct reissue_done done = { a, 0 };
		pl_diags_init(&diags, "reissue");
		t.yaml = x.reissue_yaml;
		t.len = strlen(x.reissue_yaml);
		t.file = "reissue";
		t.trigger = "reissue";
		rc = engine_trigger(e, &t, &done.run_id, &diags);
		pl_diags_release(&diags);
		free(x.reissue_yaml);
		if (rc < 0)
			return rc;
		if ((rc = engine_exec(e, do_reissue_recorded, &done)) < 0)
			return rc;
		x.detail = json_pack("{ss sI}", "state", "reissuing", "run", (json_int_t)done.run_id);
	}
	if (detail)
		*detail = x.detail;
	else
		json_decref(x.detail);
	return 0;
}

/*
 * --reissue: a one-stage pipeline that signs release `good`'s build again
 * as version (highest of the product, patch + 1) with r's counter, using
 * the key and settings of good's own release stage.
 */
int rollout_reissue_plan(struct engine *e, const struct rollout_row *r, int64_t good, char **yaml)
{
	struct db_stmt *st = Q(e, "SELECT j.spec FROM releases rel JOIN jobs j ON j.run_id = rel.run_id"
				   " JOIN stages s ON s.id = j.stage_id WHERE rel.id = ? AND s.kind = 'release' LIMIT 1");
	json_t *spec = NULL, *extra;
	char top[64] = "0.0.0";
	uint8_t maj, min;
	uint16_t rev;
	uint32_t build;
	const char *key, *mb;
	int rc = 0;

	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, good);
	if (db_step(st) == 1)
		spec = json_loads(db_column_text(st, 0), 0, NULL);
	db_reset(st);
	extra = json_object_get(spec, "extra");
	key = json_string_value(json_object_get(extra, "key"));
	if (!key) {
		json_decref(spec);
		return ota_error_set(OTA_ECONFLICT, "cannot reissue release %" PRId64 ": its release stage is not on record", good);
	}
	/* the product's highest version, one patch up */
	if (!(st = Q(e, "SELECT version FROM releases WHERE product = ?"))) {
		json_decref(spec);
		return OTA_ERROR;
	}
	db_bind_text(st, 1, r->product);
	while (db_step(st) == 1)
		if (release_version_cmp(db_column_text(st, 0), top) > 0)
			snprintf(top, sizeof(top), "%s", db_column_text(st, 0));
	db_reset(st);
	if (mcuboot_version_parse(top, &maj, &min, &rev, &build) < 0 || rev == 0xffff) {
		json_decref(spec);
		return ota_error_set(OTA_ECONFLICT, "cannot derive a version above %s", top);
	}
	mb = json_string_value(json_object_get(extra, "min_bootloader"));
	*yaml = xasprintf("name: \"%s\"\n"
			  "stages:\n"
			  "  - name: reissue\n"
			  "    kind: release\n"
			  "    product: \"%s\"\n"
			  "    version: \"%u.%u.%u\"\n"
			  "    security_counter: %" PRId64 "\n"
			  "    key: \"%s\"\n"
			  "%s%s%s"
			  "    reissue_of: %" PRId64 "\n"
			  "    reissue_for: %" PRId64 "\n",
			  r->product, r->product, maj, min, (unsigned)rev + 1, r->security_counter, key,
			  mb ? "    min_bootloader: \"" : "", mb ? mb : "", mb ? "\"\n" : "", good, r->release_id);
	json_decref(spec);
	return rc;
}
