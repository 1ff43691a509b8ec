/*
 * rollout_ctl.c - the rollout controller: looks, judges, and asks the
 * engine to act.
 *
 * One thread.  Each pass it (1) makes the update server offer what the
 * rollouts table says (rollout_exposures -> updsrv apply, only what changed
 * since the last pass, everything after a restart), (2) activates rollouts
 * the engine has just created, (3) for every holding rollout whose check
 * is due, reads fleet metrics through the adapter or queries the gate's
 * provider, judges every gate (gate.h) and posts one decision to the
 * engine thread (rollout_do_decide), guarded by the rollout's seq so a
 * decision made on a stale view is dropped.  It never writes the database
 * itself and never sleeps past a deadline: it wakes for the nearest hold
 * end or check, and when kicked after an operator's action.
 *
 * Slow providers (Prometheus, HTTP, 5 s timeout each) only delay this
 * thread, never the engine or the API.
 */
#include "rollout_int.h"

#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/log.h"
#include "artifact.h"
#include "clock.h"
#include "config.h"
#include "db/db.h"
#include "engine_int.h"
#include "gate.h"
#include "updsrv.h"

/* Never check more often than this (real ms), whatever the time scale. */
#define MIN_CHECK_REAL_MS 200
/* Look at the table at least this often (real ms). */
#define MAX_SLEEP_REAL_MS 1000

struct sched {
	int64_t id;
	int64_t next_real;   /* clock_real_ms of the next gate check */
	int64_t hold_seen;   /* the hold_until already checked after it ended */
};

struct rollout_controller {
	struct engine *e;
	struct updsrv *us;
	const struct otacd_config *cfg;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int stop, kicked;
	/* controller thread only */
	struct sched *sched;
	size_t nsched;
	json_t *applied;     /* release id -> the exposure last applied (JSON text) */
};

/* ---- exposures ----------------------------------------------------------- */

static json_t *read_manifest(struct store *db, int64_t artifact_id)
{
	struct db_stmt *st = store_q(db, "SELECT sha256 FROM artifacts WHERE id = ?");
	struct artifact_reader *rd = NULL;
	struct buf b = BUF_INIT;
	char sha[65] = "";
	int64_t size = 0;
	json_t *j = NULL;

	if (!st || !artifact_backend())
		return NULL;
	db_bind_int64(st, 1, artifact_id);
	if (db_step(st) == 1)
		snprintf(sha, sizeof(sha), "%s", db_column_text(st, 0));
	db_reset(st);
	if (!sha[0] || artifact_backend()->get(artifact_backend(), sha, &rd, &size) < 0)
		return NULL;
	for (;;) {
		char chunk[16384];
		ssize_t n = artifact_backend()->read(rd, chunk, sizeof(chunk));
		if (n <= 0)
			break;
		buf_put(&b, chunk, (size_t)n);
	}
	artifact_backend()->close(rd);
	j = json_loadb(b.ptr, b.len, 0, NULL);
	buf_release(&b);
	return j;
}

/* Salt of a release: fixed forever, different per release. */
static void release_salt(struct store *db, int64_t manifest_artifact, char out[17])
{
	struct db_stmt *st = store_q(db, "SELECT sha256 FROM artifacts WHERE id = ?");
	snprintf(out, 17, "0000000000000000");
	if (!st)
		return;
	db_bind_int64(st, 1, manifest_artifact);
	if (db_step(st) == 1)
		snprintf(out, 17, "%.16s", db_column_text(st, 0));
	db_reset(st);
}

/* The segments a rollout row contributes: every ring before the current
 * one at its last step, the current ring at the current percentage. */
static void add_segments(json_t *segs, int64_t id, const char *state, int step, int bp, const json_t *plan)
{
	size_t n = json_array_size(plan);
	int passed = !strcmp(state, "passed");

	if (!strcmp(state, "starting") || !strcmp(state, "waiting_approval") || !strcmp(state, "failed") ||
	    !strcmp(state, "canceled") || !strcmp(state, "rolled_back"))
		return;
	for (size_t i = 0; i < n; i++) {
		const json_t *s = json_array_get(plan, i), *next = json_array_get(plan, i + 1);
		int64_t ring = json_integer_value(json_object_get(s, "ring"));
		int last_of_ring = !next || json_integer_value(json_object_get(next, "ring")) != ring;
		int b;
		if (passed) {
			if (!last_of_ring)
				continue;
			b = (int)json_integer_value(json_object_get(s, "bp"));
		} else if ((int)i < step) {
			if (!last_of_ring)
				continue;
			b = (int)json_integer_value(json_object_get(s, "bp"));
		} else if ((int)i == step) {
			b = bp;
		} else {
			break;
		}
		if (b <= 0)
			continue;
		/* the step now widening: first offers are credited to it (gen) */
		json_array_append_new(segs, json_pack("{sO si sI}", "cohort", json_object_get(s, "cohort"), "bp", b, "gen",
						      (json_int_t)(!passed && (int)i == step ? rollout_step_gen(id, step) : 0)));
	}
}

uint32_t rollout_step_gen(int64_t rollout_id, int step)
{
	return (uint32_t)(rollout_id & 0xffff) << 8 | (uint32_t)(step + 1 < 255 ? step + 1 : 255);
}

int rollout_exposures(struct store *db, json_t **out)
{
	struct db_stmt *st = store_q(db,
		"SELECT id, product, version, security_counter, manifest_artifact, state, COALESCE(rollback_to, 0)"
		" FROM releases WHERE id IN (SELECT release_id FROM rollouts WHERE state != 'starting')"
		" OR id IN (SELECT rollback_to FROM releases WHERE rollback_to IS NOT NULL) ORDER BY id");
	json_t *list = json_array();
	int rc;

	*out = NULL;
	if (!st) {
		json_decref(list);
		return OTA_ERROR;
	}
	while ((rc = db_step(st)) == 1) {
		int64_t id = db_column_int64(st, 0), manifest_id = db_column_int64(st, 4);
		const char *state = db_column_text(st, 5);
		int active = !strcmp(state, "rolling") || !strcmp(state, "released");
		json_t *x = json_pack("{sI ss ss sI ss sb sI}", "release", (json_int_t)id, "product", db_column_text(st, 1),
				      "version", db_column_text(st, 2), "security_counter", (json_int_t)db_column_int64(st, 3),
				      "state", state, "active", active, "rollback_to", (json_int_t)db_column_int64(st, 6));
		json_array_append_new(list, x);
		json_object_set_new(x, "manifest_artifact", json_integer(manifest_id));
	}
	db_reset(st);
	if (rc < 0) {
		json_decref(list);
		return rc;
	}
	{
		size_t i;
		json_t *x;
		json_array_foreach(list, i, x) {
			int64_t id = json_integer_value(json_object_get(x, "release"));
			json_t *m = read_manifest(db, json_integer_value(json_object_get(x, "manifest_artifact")));
			json_t *segs = json_array();
			char salt[17];
			int64_t seq = 0;
			release_salt(db, json_integer_value(json_object_get(x, "manifest_artifact")), salt);
			json_object_set_new(x, "salt", json_string(salt));
			json_object_set_new(x, "images", m && json_object_get(m, "images") ? json_deep_copy(json_object_get(m, "images"))
											   : json_array());
			/* issue 15: the patches from earlier versions */
			if (json_array_size(json_object_get(m, "deltas")))
				json_object_set_new(x, "deltas", json_deep_copy(json_object_get(m, "deltas")));
			json_object_set_new(x, "min_bootloader", json_is_string(json_object_get(m, "min_bootloader"))
								      ? json_deep_copy(json_object_get(m, "min_bootloader")) : json_null());
			json_decref(m);
			st = store_q(db, "SELECT state, step, percent_bp, spec, seq, id FROM rollouts WHERE release_id = ?"
					 " ORDER BY id");
			if (!st) {
				json_decref(segs);
				json_decref(list);
				return OTA_ERROR;
			}
			db_bind_int64(st, 1, id);
			while (db_step(st) == 1) {
				json_t *spec = json_loads(db_column_text(st, 3), 0, NULL);
				add_segments(segs, db_column_int64(st, 5), db_column_text(st, 0), (int)db_column_int64(st, 1),
					     (int)db_column_int64(st, 2), json_object_get(spec, "plan"));
				seq += db_column_int64(st, 4);
				json_decref(spec);
			}
			db_reset(st);
			json_object_set_new(x, "segments", segs);
			json_object_set_new(x, "seq", json_integer(seq));
			json_object_del(x, "manifest_artifact");
		}
	}
	*out = list;
	return 0;
}

/* Make the update server offer what the table says; -1 when the table
 * could not be read (nothing applied).  The first pass that reads it marks
 * the adapter loaded (updsrv_mark_loaded): until then, after a start, the
 * builtin device API answers 503 rather than "no update" to a device in
 * a step (issue 18).  An exposure the adapter refused is logged and
 * tried again next pass; it does not hold the whole fleet back. */
static int publish(struct rollout_controller *rc)
{
	struct store *db = store_reader();
	json_t *list = NULL, *x;
	size_t i;

	if (!db || rollout_exposures(db, &list) < 0) {
		if (!updsrv_loaded(rc->us)) /* once a pass while starting; the old silence after */
			ota_log(OTA_LOG_WARN, "rollout controller: cannot read the rollouts to offer: %s", ota_error_last());
		return -1;
	}
	json_array_foreach(list, i, x) {
		char key[32], *text = json_dumps(x, JSON_COMPACT | JSON_SORT_KEYS);
		const char *was;
		snprintf(key, sizeof(key), "%" PRId64, (int64_t)json_integer_value(json_object_get(x, "release")));
		was = json_string_value(json_object_get(rc->applied, key));
		if (!was || strcmp(was, text) != 0) {
			if (rc->us->apply(rc->us, x) == 0)
				json_object_set_new(rc->applied, key, json_string(text));
			else
				ota_log(OTA_LOG_WARN, "update server (%s): release %s: %s", rc->us->name, key, ota_error_last());
		}
		free(text);
	}
	json_decref(list);
	updsrv_mark_loaded(rc->us);
	return 0;
}

/* ---- judging ------------------------------------------------------------- */

static int decide_call(struct engine *e, void *arg);

/* The aggregate cohort for a step: one tag with one value, else all. */
static void step_cohort(const json_t *step, char *out, size_t n)
{
	const json_t *c = json_object_get(step, "cohort");
	const char *k;
	json_t *v;

	snprintf(out, n, "*");
	if (!json_is_object(c) || json_object_size(c) != 1)
		return;
	json_object_foreach((json_t *)c, k, v)
		if (json_array_size(v) == 1)
			snprintf(out, n, "%s=%s", k, json_string_value(json_array_get(v, 0)));
}

/*
 * A step's own evidence.  The aggregates are the release's running totals,
 * so a later step could pass on the earlier steps' devices alone, even on
 * reports they send during this step.  A device keeps the step generation
 * of its first offer of the release (rollout_step_gen, carried by the
 * exposure's segment of this step), and the update server counts its
 * reports again under cohort "@GEN/COHORT": own is that aggregate for this
 * step, the devices this step exposed.  A pass needs min_devices of them.  It is durable like
 * any aggregate, so a restart changes nothing.
 */
static int64_t step_evidence(const struct gate_spec *g, const struct fleet_agg *own, struct gate_eval *ev)
{
	int64_t fresh = gate_sample_size(g, own);

	if (ev->verdict == GATE_PASS && fresh < g->min_devices) {
		size_t len = strlen(ev->reason);
		ev->verdict = GATE_INCONCLUSIVE;
		snprintf(ev->reason + len, sizeof(ev->reason) - len,
			 "; but only %" PRId64 " of them were exposed in this step (min_devices %" PRId64
			 " of the step's own): inconclusive", fresh, g->min_devices);
	}
	return fresh;
}

/*
 * Evidence lag (issue 19 part 5): the fleet's committed aggregates trail
 * the reports otacd has accepted while its writer catches up, so a pass
 * may rest on a count far behind the fleet's.  lag is read before the
 * aggregates (conservative: anything pending then is missing from them);
 * a pass on evidence older than gate_max_lag becomes inconclusive (the
 * step extends, then pauses, as for any inconclusive gate).  A fail
 * stands: counters only grow, so a breach seen late is still a breach.
 */
static void evidence_lag(const struct rollout_controller *rc, const struct fleet_lag *lag, struct gate_eval *ev)
{
	int64_t max = rc->cfg && rc->cfg->gate_max_lag_ms > 0 ? rc->cfg->gate_max_lag_ms : 60000;
	size_t len = strlen(ev->reason);
	if (lag->lag_ms < 0 || lag->lag_ms <= max || ev->verdict != GATE_PASS)
		return;
	ev->verdict = GATE_INCONCLUSIVE;
	snprintf(ev->reason + len, sizeof(ev->reason) - len,
		 "; but the fleet's aggregates lag accepted reports by %.1fs (gate_max_lag %.0fs): inconclusive",
		 (double)lag->lag_ms / 1000.0, (double)max / 1000.0);
}

/* The previous good release's version (the baseline): the newest earlier
 * release of the product that reached the whole fleet, or a reissue, as
 * for a rollback (rollout.c, last_good).  "" when there is none. */
static void previous_good(const struct rollout_row *r, char *out, size_t n)
{
	struct store *db = store_reader();
	struct db_stmt *st = db ? store_q(db, "SELECT version FROM releases WHERE product = ? AND id < ?"
					   " AND state IN ('released','reissue') ORDER BY id DESC LIMIT 1") : NULL;
	out[0] = 0;
	if (!st)
		return;
	db_bind_text(st, 1, r->product);
	db_bind_int64(st, 2, r->release_id);
	if (db_step(st) == 1)
		snprintf(out, n, "%s", db_column_text(st, 0));
	db_reset(st);
}

static void decide_holding(struct rollout_controller *rc, struct rollout_row *r)
{
	int64_t now = clock_now_ms();
	int hold_elapsed = now >= r->hold_until, all_pass = 1, any_fail = 0, any_error = 0, error_limit = 1 << 30;
	const json_t *step = json_array_get(json_object_get(r->spec, "plan"), (size_t)r->step);
	json_t *gates = json_object_get(r->spec, "gates"), *specs = json_object_get(r->spec, "gate_specs");
	json_t *evals = json_array(), *breaches = json_deep_copy(r->breaches), *name;
	struct rollout_decision d = { r->id, r->seq, DECIDE_NOTHING, NULL, NULL, r->errors, NULL };
	struct buf why = BUF_INIT, fails = BUF_INIT, errs = BUF_INIT;
	struct fleet_lag lag = { -1, -1 };
	char cohort[128], prev[64];
	size_t i;

	if (rc->us->lag) /* before any aggregate is read (evidence_lag) */
		rc->us->lag(rc->us, &lag);
	step_cohort(step, cohort, sizeof(cohort));
	previous_good(r, prev, sizeof(prev));
	json_array_foreach(gates, i, name) {
		const char *gname = json_string_value(name);
		struct gate_spec g;
		struct gate_eval ev;
		struct fleet_agg own;
		char err[256];
		int rc2, has_own = 0;

		memset(&ev, 0, sizeof(ev));
		if (gate_spec_parse(json_object_get(specs, gname), gname, &g, err, sizeof(err)) < 0) {
			buf_printf(&fails, "%s%s", fails.len ? "; " : "", err);
			any_fail = 1;
			gate_spec_release(&g);
			continue;
		}
		if (g.error_limit < error_limit)
			error_limit = g.error_limit;
		if (g.provider == GATE_PROVIDER_BUILTIN) {
			struct fleet_agg canary, base;
			memset(&canary, 0, sizeof(canary));
			memset(&base, 0, sizeof(base));
			rc2 = rc->us->metrics(rc->us, r->product, r->version, cohort, prev[0] ? prev : NULL, &canary,
					      g.baseline ? &base : NULL);
			if (rc2 < 0) {
				any_error = 1;
				buf_printf(&errs, "%s%s: %s", errs.len ? "; " : "", gname, ota_error_last());
				all_pass = 0;
				gate_spec_release(&g);
				continue;
			}
			{
				char own_cohort[192];
				memset(&own, 0, sizeof(own));
				fleet_step_cohort(rollout_step_gen(r->id, r->step), cohort, own_cohort, sizeof(own_cohort));
				rc2 = rc->us->metrics(rc->us, r->product, r->version, own_cohort, NULL, &own, NULL);
			}
			if (rc2 < 0) {
				any_error = 1;
				buf_printf(&errs, "%s%s: %s", errs.len ? "; " : "", gname, ota_error_last());
				all_pass = 0;
				gate_spec_release(&g);
				continue;
			}
			gate_judge(&g, &canary, g.baseline ? &base : NULL, hold_elapsed, &ev);
			has_own = 1;
		} else {
			struct gate_vars vars = { r->version, r->version, r->product, cohort };
			double value = NAN;
			int prior = (int)json_integer_value(json_object_get(breaches, gname));
			rc2 = gate_query(&g, rc->cfg ? rc->cfg->providers : NULL,
					 rc->cfg && rc->cfg->prometheus_url ? rc->cfg->prometheus_url : "http://127.0.0.1:9090",
					 &vars, &value);
			if (rc2 == OTA_ENOTFOUND) {
				/* no data is neither pass nor fail, and not an error */
				snprintf(ev.reason, sizeof(ev.reason), "%s: no data yet: inconclusive", gname);
				ev.verdict = GATE_INCONCLUSIVE;
				ev.estimate = ev.lo = ev.hi = ev.baseline = NAN;
				ev.ratio = ev.ratio_lo = ev.ratio_hi = NAN;
			} else if (rc2 < 0) {
				any_error = 1;
				buf_printf(&errs, "%s%s: %s", errs.len ? "; " : "", gname, ota_error_last());
				all_pass = 0;
				gate_spec_release(&g);
				continue;
			} else {
				gate_judge_value(&g, value, NAN, hold_elapsed, prior, &ev);
				json_object_set_new(breaches, gname, json_integer(ev.breached ? prior + 1 : 0));
			}
		}
		{
			int64_t step_n = has_own ? step_evidence(&g, &own, &ev) : -1;
			json_t *j;
			if (has_own) /* builtin: not on aggregates that lag the fleet */
				evidence_lag(rc, &lag, &ev);
			j = gate_eval_to_json(&ev);
			gate_verdict_count(ev.verdict); /* issue 18: a true counter on /metrics */
			json_object_set_new(j, "gate", json_string(gname));
			if (has_own)
				json_object_set_new(j, "step_n", json_integer(step_n));
			json_object_set_new(j, "cohort", json_string(cohort));
			if (g.baseline)
				json_object_set_new(j, "baseline_version", prev[0] ? json_string(prev) : json_null());
			if (g.provider == GATE_PROVIDER_BUILTIN && lag.lag_ms >= 0) { /* the evidence's age */
				json_object_set_new(j, "lag_ms", json_integer(lag.lag_ms));
				json_object_set_new(j, "since_commit_ms", json_integer(lag.since_commit_ms));
			}
			json_array_append_new(evals, j);
		}
		if (ev.verdict == GATE_FAIL) {
			any_fail = 1;
			buf_printf(&fails, "%sgate %s: %s", fails.len ? "; " : "", gname, ev.reason);
		}
		if (ev.verdict != GATE_PASS)
			all_pass = 0;
		buf_printf(&why, "%s%s %s", why.len ? ", " : "", gname, gate_verdict_name(ev.verdict));
		gate_spec_release(&g);
	}

	d.evals = evals;
	d.breaches = breaches;
	d.errors = any_error ? r->errors + 1 : 0;
	if (any_fail) {
		d.what = DECIDE_FAIL;
		d.reason = buf_cstr(&fails);
	} else if (any_error && d.errors >= error_limit) {
		d.what = DECIDE_PAUSE;
		buf_printf(&why, "; paused after %d consecutive provider errors: %s", d.errors, buf_cstr(&errs));
		d.reason = buf_cstr(&why);
	} else if (hold_elapsed && all_pass && !any_error) {
		struct buf b = BUF_INIT;
		buf_printf(&b, "step %d/%d (%.2f%%) held; gates: %s", r->step + 1, rollout_plan_len(r), r->bp / 100.0,
			   why.len ? buf_cstr(&why) : "none");
		buf_release(&why);
		why = b;
		d.what = DECIDE_ADVANCE;
		d.reason = buf_cstr(&why);
	} else if (hold_elapsed && now >= r->extend_until) {
		buf_printf(&why, "; inconclusive after the hold and its extension: paused for a human");
		d.what = DECIDE_PAUSE;
		d.reason = buf_cstr(&why);
	}
	if (engine_exec(rc->e, decide_call, &d) < 0)
		ota_log(OTA_LOG_WARN, "rollout %" PRId64 ": %s", r->id, ota_error_last());
	json_decref(evals);
	json_decref(breaches);
	buf_release(&why);
	buf_release(&fails);
	buf_release(&errs);
}

static struct sched *sched_get(struct rollout_controller *rc, int64_t id)
{
	for (size_t i = 0; i < rc->nsched; i++)
		if (rc->sched[i].id == id)
			return &rc->sched[i];
	rc->sched = xrealloc(rc->sched, (rc->nsched + 1) * sizeof(*rc->sched));
	rc->sched[rc->nsched] = (struct sched){ id, 0, 0 };
	return &rc->sched[rc->nsched++];
}

static int activate_call(struct engine *e, void *arg)
{
	return rollout_do_activate(e, *(int64_t *)arg);
}

static int decide_call(struct engine *e, void *arg)
{
	return rollout_do_decide(e, arg);
}

/* One pass; returns the real ms to sleep. */
static int64_t pass(struct rollout_controller *rc)
{
	struct store *db = store_reader();
	struct db_stmt *st;
	int64_t ids[256], sleep_ms = MAX_SLEEP_REAL_MS, real = clock_real_ms();
	size_t n = 0;

	if (!db)
		return sleep_ms;
	st = store_q(db, "SELECT id FROM rollouts WHERE state IN ('starting','waiting_window','holding') ORDER BY id LIMIT 256");
	if (!st)
		return sleep_ms;
	while (n < 256 && db_step(st) == 1)
		ids[n++] = db_column_int64(st, 0);
	db_reset(st);

	for (size_t i = 0; i < n; i++) {
		struct rollout_row r;
		struct sched *s;
		if (rollout_load(db, ids[i], &r) < 0) {
			/* 'starting' rows whose release is not joined yet */
			int64_t id = ids[i];
			if (engine_exec(rc->e, activate_call, &id) < 0)
				ota_log(OTA_LOG_WARN, "rollout %" PRId64 ": %s", id, ota_error_last());
			continue;
		}
		if (!strcmp(r.state, "starting")) {
			if (engine_exec(rc->e, activate_call, &r.id) < 0)
				ota_log(OTA_LOG_WARN, "rollout %" PRId64 ": %s", r.id, ota_error_last());
			sleep_ms = 0;
		} else if (!strcmp(r.state, "waiting_window")) {
			int64_t wait = clock_real_delay_ms(r.hold_until);
			if (wait <= 0) {
				struct rollout_decision d = { r.id, r.seq, DECIDE_WINDOW_OPEN, "window opened", NULL, r.errors, NULL };
				engine_exec(rc->e, decide_call, &d);
				sleep_ms = 0;
			} else if (wait < sleep_ms) {
				sleep_ms = wait;
			}
		} else {
			int64_t every = (int64_t)((double)json_integer_value(json_object_get(r.spec, "check_ms")) / clock_scale());
			int64_t to_hold = clock_real_delay_ms(r.hold_until), wait;
			if (every < MIN_CHECK_REAL_MS)
				every = MIN_CHECK_REAL_MS;
			s = sched_get(rc, r.id);
			/* due: the check interval passed, or the hold just ended */
			if (real >= s->next_real || (to_hold <= 0 && s->hold_seen != r.hold_until)) {
				decide_holding(rc, &r);
				s->next_real = real + every;
				if (to_hold <= 0)
					s->hold_seen = r.hold_until;
			}
			wait = s->next_real - real;
			if (to_hold > 0 && to_hold < wait)
				wait = to_hold;
			if (wait < sleep_ms)
				sleep_ms = wait;
		}
		rollout_row_release(&r);
	}
	publish(rc);
	return sleep_ms < 0 ? 0 : sleep_ms;
}

static void *controller_main(void *arg)
{
	struct rollout_controller *rc = arg;

	/* offers first: the device API waits for them (publish), gates later */
	publish(rc);
	pthread_mutex_lock(&rc->lock);
	while (!rc->stop) {
		int64_t wait;
		rc->kicked = 0;
		pthread_mutex_unlock(&rc->lock);
		wait = pass(rc);
		pthread_mutex_lock(&rc->lock);
		if (!rc->kicked && !rc->stop && wait > 0) {
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_sec += wait / 1000;
			ts.tv_nsec += (wait % 1000) * 1000000;
			if (ts.tv_nsec >= 1000000000) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000;
			}
			pthread_cond_timedwait(&rc->cond, &rc->lock, &ts);
		}
	}
	pthread_mutex_unlock(&rc->lock);
	return NULL;
}

void rollout_controller_kick(struct rollout_controller *rc)
{
	if (!rc)
		return;
	pthread_mutex_lock(&rc->lock);
	rc->kicked = 1;
	pthread_cond_signal(&rc->cond);
	pthread_mutex_unlock(&rc->lock);
}

static void kick_hook(void *arg)
{
	rollout_controller_kick(arg);
}

int rollout_controller_start(struct rollout_controller **out, struct engine *e, struct updsrv *us,
			     const struct otacd_config *cfg)
{
	struct rollout_controller *rc = xcalloc(1, sizeof(*rc));

	rc->e = e;
	rc->us = us;
	rc->cfg = cfg;
	rc->applied = json_object();
	pthread_mutex_init(&rc->lock, NULL);
	pthread_cond_init(&rc->cond, NULL);
	if (pthread_create(&rc->thread, NULL, controller_main, rc) != 0) {
		json_decref(rc->applied);
		free(rc);
		return ota_error_set(OTA_ERROR, "cannot start the rollout controller");
	}
	engine_set_rollout_hook(e, kick_hook, rc);
	*out = rc;
	return 0;
}

void rollout_controller_stop(struct rollout_controller *rc)
{
	if (!rc)
		return;
	engine_set_rollout_hook(rc->e, NULL, NULL);
	pthread_mutex_lock(&rc->lock);
	rc->stop = 1;
	pthread_cond_signal(&rc->cond);
	pthread_mutex_unlock(&rc->lock);
	pthread_join(rc->thread, NULL);
	json_decref(rc->applied);
	free(rc->sched);
	free(rc);
}

/* ---- the read side ------------------------------------------------------- */

json_t *rollout_status(struct store *db, int64_t release_id)
{
	struct db_stmt *st = store_q(db, "SELECT id FROM rollouts WHERE release_id = ? ORDER BY id");
	json_t *list = json_array();
	int64_t ids[64];
	size_t n = 0;

	if (!st) {
		json_decref(list);
		return NULL;
	}
	db_bind_int64(st, 1, release_id);
	while (n < 64 && db_step(st) == 1)
		ids[n++] = db_column_int64(st, 0);
	db_reset(st);
	for (size_t i = 0; i < n; i++) {
		struct rollout_row r;
		json_t *x, *gates = json_object();
		struct db_stmt *g;
		if (rollout_load(db, ids[i], &r) < 0)
			continue;
		x = json_pack("{sI sI sI ss ss ss si si si sI sI sI sI si sI}", "id", (json_int_t)r.id, "job",
			      (json_int_t)r.job_id, "run", (json_int_t)r.run_id, "stage", r.stage, "kind", r.kind, "state",
			      r.state, "step", r.step, "steps", rollout_plan_len(&r), "percent_bp", r.bp, "step_started_at",
			      (json_int_t)r.step_started_at, "hold_until", (json_int_t)r.hold_until, "extend_until",
			      (json_int_t)r.extend_until, "seq", (json_int_t)r.seq, "errors", r.errors, "now",
			      (json_int_t)clock_now_ms());
		json_object_set(x, "plan", json_object_get(r.spec, "plan"));
		json_object_set(x, "gate_names", json_object_get(r.spec, "gates"));
		json_object_set(x, "gate_specs", json_object_get(r.spec, "gate_specs"));
		json_object_set(x, "approval", json_object_get(r.spec, "approval"));
		json_object_set(x, "window", json_object_get(r.spec, "window"));
		if ((g = store_q(db, "SELECT reason FROM rollouts WHERE id = ?"))) {
			db_bind_int64(g, 1, r.id);
			if (db_step(g) == 1 && db_column_text(g, 0))
				json_object_set_new(x, "reason", json_string(db_column_text(g, 0)));
			db_reset(g);
		}
		/* the latest evaluation of each gate */
		if ((g = store_q(db, "SELECT gate, detail FROM gate_evals WHERE id IN"
				     " (SELECT MAX(id) FROM gate_evals WHERE rollout_id = ? GROUP BY gate)"))) {
			db_bind_int64(g, 1, r.id);
			while (db_step(g) == 1)
				json_object_set_new(gates, db_column_text(g, 0), json_loads(db_column_text(g, 1), 0, NULL));
			db_reset(g);
		}
		json_object_set_new(x, "gates", gates);
		json_array_append_new(list, x);
		rollout_row_release(&r);
	}
	return list;
}
