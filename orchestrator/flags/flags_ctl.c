/*
 * flags_ctl.c - the flags controller: a thread that publishes the flags
 * table to the fleet's check-in path and walks flag rollouts through their
 * steps, judging each step's gates the way the rollout controller does.
 *
 * Each pass (every 200 ms real, or at once after an operator action):
 *  1. read every flag (a reader connection) and replace the live table
 *     the check-ins read (flags.c);
 *  2. for each flag holding a step whose check is due: sum the fleet's
 *     aggregates of cohort "flag.NAME=on" over the product's versions and
 *     judge every gate with gate_judge (confidence sequences: a breach is
 *     proven at any look without inflating false alarms); a gate with
 *     `baseline: off` also gets cohort "flag.NAME=off" on the same
 *     versions as its baseline (the rate-ratio sequence);
 *  3. post the decision as an engine call: fail (bp 0, audited as
 *     flag_rollback), advance (next step, or on when the last held), pause
 *     (inconclusive past the extension), or just the evaluations.
 * A decision carries the row's seq and is dropped when the row changed
 * meanwhile (an operator acted), so a stale view never acts.  Deadlines
 * are otacd times in the row: a restart carries on where it was.
 */
#include "flags.h"
#include "flags_int.h"

#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../common/log.h"
#include "../../common/util.h"
#include "../clock.h"
#include "../db/db.h"
#include "../engine_int.h"
#include "../fleet/fleet.h"
#include "../gate.h"
#include "../store.h"
#include "../updsrv.h"

#define FLAGS_PASS_REAL_MS 200

struct flags_controller {
	struct engine *e;
	struct updsrv *us;
	struct fleet *fleet;
	struct flags_live *live;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int stop, kicked;
	/* next real ms each holding flag is due, by "product/name" */
	json_t *due;
};

/* SQL (storage layer: store_q keys each by its address) */
const char flags_sql_decide[] =
	"UPDATE flags SET state = ?, bp = ?, step = ?, hold_until = ?, extend_until = ?,"
	" evals = ?, reason = COALESCE(?, reason), seq = seq + 1, updated_at = ?"
	" WHERE product = ? AND name = ? AND seq = ?";
const char flags_sql_current[] =
	"SELECT bp, hold_until, extend_until FROM flags"
	" WHERE product = ? AND name = ? AND seq = ? AND state = 'holding'";

static struct flags_controller *g_fc;
static pthread_mutex_t g_fc_lock = PTHREAD_MUTEX_INITIALIZER;

void flags_controller_kick(void)
{
	pthread_mutex_lock(&g_fc_lock);
	if (g_fc) {
		pthread_mutex_lock(&g_fc->lock);
		g_fc->kicked = 1;
		pthread_cond_signal(&g_fc->cond);
		pthread_mutex_unlock(&g_fc->lock);
	}
	pthread_mutex_unlock(&g_fc_lock);
}

/* ---- decisions (engine thread) ----------------------------------------- */

enum flag_decide { FD_EVALS, FD_ADVANCE, FD_FAIL, FD_PAUSE };

struct flag_decision {
	const char *product, *name;
	int64_t seq;
	enum flag_decide what;
	const char *reason;
	json_t *evals;
	const json_t *plan;   /* the rollout's plan (its "plan" array) */
	int step;             /* the step held now */
	int64_t max_ext_ms;
};

static int decide_update(struct store *db, const struct flag_decision *d, const char *state, int bp, int step,
			 int64_t hold_until, int64_t extend_until, int64_t *changed)
{
	char *evals = d->evals ? json_dumps(d->evals, JSON_COMPACT) : NULL;
	struct db_stmt *st = store_q(db, flags_sql_decide);
	int rc;

	if (!st) {
		free(evals);
		return OTA_ERROR;
	}
	db_bind_text(st, 1, state);
	db_bind_int64(st, 2, bp);
	db_bind_int64(st, 3, step);
	db_bind_int64(st, 4, hold_until);
	db_bind_int64(st, 5, extend_until);
	db_bind_text(st, 6, evals);
	db_bind_text(st, 7, d->what == FD_EVALS ? NULL : d->reason);
	db_bind_int64(st, 8, clock_now_ms());
	db_bind_text(st, 9, d->product);
	db_bind_text(st, 10, d->name);
	db_bind_int64(st, 11, d->seq);
	rc = db_step(st);
	*changed = rc >= 0 ? db_changes(st) : 0;
	db_reset(st);
	free(evals);
	return rc < 0 ? rc : 0;
}

/* The row as it is now: bp and deadlines of the step held. */
static int current(struct store *db, const struct flag_decision *d, int *bp, int64_t *hold_until,
		   int64_t *extend_until)
{
	struct db_stmt *st = store_q(db, flags_sql_current);
	int rc;
	if (!st)
		return OTA_ERROR;
	db_bind_text(st, 1, d->product);
	db_bind_text(st, 2, d->name);
	db_bind_int64(st, 3, d->seq);
	if ((rc = db_step(st)) == 1) {
		*bp = (int)db_column_int64(st, 0);
		*hold_until = db_column_int64(st, 1);
		*extend_until = db_column_int64(st, 2);
	}
	db_reset(st);
	return rc;
}

static int do_decide(struct engine *e, void *arg)
{
	const struct flag_decision *d = arg;
	struct store *db = engine_store(e);
	int64_t hold_until = 0, extend_until = 0, changed = 0, now = clock_now_ms();
	int bp = 0, rc, step = d->step;
	const char *state = "holding", *action = NULL;

	if ((rc = current(db, d, &bp, &hold_until, &extend_until)) != 1)
		return rc < 0 ? rc : 0; /* the row changed meanwhile: this view is stale */
	switch (d->what) {
	case FD_EVALS:
		break;
	case FD_FAIL:
		state = "failed";
		bp = 0;
		action = "flag_rollback";
		break;
	case FD_PAUSE:
		state = "paused";
		action = "flag_pause";
		break;
	case FD_ADVANCE: {
		const json_t *next = json_array_get(d->plan, (size_t)step + 1);
		action = "flag_step";
		if (!next) {
			state = "on";
			break;
		}
		step++;
		bp = (int)json_integer_value(json_object_get(next, "bp"));
		hold_until = now + json_integer_value(json_object_get(next, "hold_ms"));
		extend_until = hold_until + d->max_ext_ms;
		break;
	}
	}
	if ((rc = decide_update(db, d, state, bp, step, hold_until, extend_until, &changed)) < 0 || !changed)
		return rc;
	if (!action)
		return 0;
	return engine_audit(e, "flags-controller", action, 0, 0, d->reason,
			    json_pack("{ss ss ss si si}", "product", d->product, "flag", d->name, "state", state, "bp", bp,
				      "step", step));
}

/* ---- judging ------------------------------------------------------------ */

static void agg_sum(struct fleet_agg *sum, const struct fleet_agg *a)
{
	sum->devices += a->devices;
	sum->offered += a->offered;
	sum->downloads += a->downloads;
	sum->installs += a->installs;
	sum->boot_ok += a->boot_ok;
	sum->boot_fail += a->boot_fail;
	sum->reverts += a->reverts;
	sum->reporting += a->reporting;
	sum->crashed += a->crashed;
	sum->crashes += a->crashes;
	sum->device_hours += a->device_hours;
	sum->battery_mah += a->battery_mah;
}

/*
 * The evidence of flag name: cohort "flag.NAME=on" summed over the
 * product's versions into *on, and (issue 17, `baseline: off`) cohort
 * "flag.NAME=off" summed over the versions the on-cohort has reports
 * about into *off: the product's devices that report running without the
 * flag, on the same versions, reporting over the same period (a device
 * carries the off tag only once the flag exists and its answer says
 * false).  Not the product's total minus the on-cohort: that would count
 * every hour the devices ran before the flag existed, and devices that
 * report no flags at all (docs/rollout.md says why).
 */
static int evidence(struct flags_controller *fc, const char *product, const char *name, struct fleet_agg *on,
		    struct fleet_agg *off)
{
	json_t *versions = fc->us->versions(fc->us, product, NULL), *n;
	char on_cohort[64], off_cohort[64];
	const char *v;
	int rc = 0;

	memset(on, 0, sizeof(*on));
	memset(off, 0, sizeof(*off));
	if (!versions)
		return ota_error_set(OTA_ERROR, "the update server knows no versions of %s", product);
	snprintf(on_cohort, sizeof(on_cohort), "flag.%s=on", name);
	snprintf(off_cohort, sizeof(off_cohort), "flag.%s=off", name);
	json_object_foreach(versions, v, n) {
		struct fleet_agg a, b;
		memset(&a, 0, sizeof(a));
		memset(&b, 0, sizeof(b));
		if ((rc = fc->us->metrics(fc->us, product, v, on_cohort, NULL, &a, NULL)) < 0)
			break;
		agg_sum(on, &a);
		if (!a.reporting && !a.devices)
			continue; /* a version no flagged device reports about */
		if ((rc = fc->us->metrics(fc->us, product, v, off_cohort, NULL, &b, NULL)) < 0)
			break;
		agg_sum(off, &b);
	}
	json_decref(versions);
	/* `reporting` counts a device once per version, in the cohorts it had
	 * at its first report; `devices` follows its tags.  The sample is the
	 * devices carrying the tag now; the rates' hours and crashes are
	 * those reported while they carried it. */
	on->reporting = on->devices;
	off->reporting = off->devices;
	return rc;
}

static void judge(struct flags_controller *fc, const json_t *row, const json_t *spec)
{
	const char *product = json_string_value(json_object_get(row, "product"));
	const char *name = json_string_value(json_object_get(row, "name"));
	int64_t now = clock_now_ms(), hold_until = json_integer_value(json_object_get(row, "hold_until"));
	int64_t extend_until = hold_until + json_integer_value(json_object_get(spec, "max_extension_ms"));
	int hold_elapsed = now >= hold_until, all_pass = 1, any_fail = 0;
	const json_t *specs = json_object_get(spec, "gate_specs"), *gname;
	struct flag_decision d = { product, name, json_integer_value(json_object_get(row, "seq")), FD_EVALS, NULL,
				   json_array(), json_object_get(spec, "plan"),
				   (int)json_integer_value(json_object_get(row, "step")),
				   json_integer_value(json_object_get(spec, "max_extension_ms")) };
	struct buf why = BUF_INIT, fails = BUF_INIT;
	struct fleet_agg agg, off;
	char cohort[64];
	size_t i;

	snprintf(cohort, sizeof(cohort), "flag.%s=on", name);
	if (evidence(fc, product, name, &agg, &off) < 0) {
		ota_log(OTA_LOG_WARN, "flag %s/%s: %s", product, name, ota_error_last());
		json_decref(d.evals);
		return;
	}
	json_array_foreach(json_object_get(spec, "gates"), i, gname) {
		struct gate_spec g;
		struct gate_eval ev;
		char err[256];
		json_t *j;
		memset(&ev, 0, sizeof(ev));
		if (gate_spec_parse_flag(json_object_get(specs, json_string_value(gname)), json_string_value(gname), &g,
					 err, sizeof(err)) < 0) {
			buf_printf(&fails, "%s%s", fails.len ? "; " : "", err);
			any_fail = 1;
			gate_spec_release(&g);
			continue;
		}
		/* `baseline: off`: the rate ratio of the on-devices to the off-devices,
		 * the same confidence sequence as a release's `baseline: previous` */
		gate_judge(&g, &agg, g.baseline_off ? &off : NULL, hold_elapsed, &ev);
		gate_verdict_count(ev.verdict);
		j = gate_eval_to_json(&ev);
		json_object_set_new(j, "gate", json_string(json_string_value(gname)));
		json_object_set_new(j, "cohort", json_string(cohort));
		if (g.baseline_off) {
			json_object_set_new(j, "baseline_cohort", json_sprintf("flag.%s=off", name));
			json_object_set_new(j, "baseline_n", json_integer(off.devices));
		}
		json_array_append_new(d.evals, j);
		if (ev.verdict == GATE_FAIL) {
			any_fail = 1;
			buf_printf(&fails, "%sgate %s: %s", fails.len ? "; " : "", json_string_value(gname), ev.reason);
		}
		if (ev.verdict != GATE_PASS)
			all_pass = 0;
		buf_printf(&why, "%s%s %s", why.len ? ", " : "", json_string_value(gname), gate_verdict_name(ev.verdict));
		gate_spec_release(&g);
	}
	if (any_fail) {
		d.what = FD_FAIL;
		buf_printf(&why, "; flag %s rolled back at step %d/%zu: %s", name, d.step + 1, json_array_size(d.plan),
			   buf_cstr(&fails));
	} else if (hold_elapsed && all_pass) {
		d.what = FD_ADVANCE;
		buf_printf(&why, "; step %d/%zu held", d.step + 1, json_array_size(d.plan));
	} else if (hold_elapsed && now >= extend_until) {
		d.what = FD_PAUSE;
		buf_printf(&why, "; inconclusive after the hold and its extension: paused for a human");
	}
	d.reason = buf_cstr(&why);
	if (engine_exec(fc->e, do_decide, &d) < 0)
		ota_log(OTA_LOG_WARN, "flag %s/%s: %s", product, name, ota_error_last());
	json_decref(d.evals);
	buf_release(&why);
	buf_release(&fails);
}

/* The flags to judge now: holding, and their check interval passed (or
 * their hold just ended). */
static void judge_due(struct flags_controller *fc, const json_t *list)
{
	int64_t real = clock_real_ms();
	const json_t *row;
	size_t i;

	json_array_foreach(list, i, row) {
		char key[200];
		json_t *spec;
		int64_t every, due;
		if (strcmp(json_string_value(json_object_get(row, "state")), "holding"))
			continue;
		snprintf(key, sizeof(key), "%s/%s", json_string_value(json_object_get(row, "product")),
			 json_string_value(json_object_get(row, "name")));
		due = json_integer_value(json_object_get(fc->due, key));
		if (real < due && clock_real_delay_ms(json_integer_value(json_object_get(row, "hold_until"))) > 0)
			continue;
		spec = json_object_get(row, "spec");
		if (!json_is_object(spec))
			continue;
		every = (int64_t)((double)json_integer_value(json_object_get(spec, "check_ms")) / clock_scale());
		if (every < FLAGS_PASS_REAL_MS)
			every = FLAGS_PASS_REAL_MS;
		judge(fc, row, spec);
		json_object_set_new(fc->due, key, json_integer(real + every));
	}
}

static void pass(struct flags_controller *fc)
{
	struct store *db = store_reader();
	json_t *list = db ? flags_list(db, NULL) : NULL;

	if (!list)
		return;
	flags_live_load(fc->live, list);
	judge_due(fc, list);
	json_decref(list);
}

static void *controller_main(void *arg)
{
	struct flags_controller *fc = arg;

	pthread_mutex_lock(&fc->lock);
	while (!fc->stop) {
		struct timespec ts;
		fc->kicked = 0;
		pthread_mutex_unlock(&fc->lock);
		pass(fc);
		pthread_mutex_lock(&fc->lock);
		if (fc->kicked || fc->stop)
			continue;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += FLAGS_PASS_REAL_MS * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&fc->cond, &fc->lock, &ts);
	}
	pthread_mutex_unlock(&fc->lock);
	return NULL;
}

static size_t live_hook(void *ctx, const char *product, const char *device, const char *const *tags, size_t ntags,
			char *out, size_t cap)
{
	return flags_live_answer(ctx, product, device, tags, ntags, out, cap);
}

int flags_controller_start(struct flags_controller **out, struct engine *e, struct updsrv *us, struct fleet *f)
{
	struct flags_controller *fc = xcalloc(1, sizeof(*fc));
	struct store *db = store_reader();
	json_t *list = db ? flags_list(db, NULL) : NULL;

	fc->e = e;
	fc->us = us;
	fc->fleet = f;
	fc->live = flags_live_new();
	fc->due = json_object();
	/* the first check-in already gets the flags as they are */
	if (list)
		flags_live_load(fc->live, list);
	json_decref(list);
	pthread_mutex_init(&fc->lock, NULL);
	pthread_cond_init(&fc->cond, NULL);
	if (pthread_create(&fc->thread, NULL, controller_main, fc) != 0) {
		flags_live_free(fc->live);
		json_decref(fc->due);
		free(fc);
		return ota_error_set(OTA_ERROR, "cannot start the flags controller");
	}
	fleet_set_flags(f, live_hook, fc->live);
	pthread_mutex_lock(&g_fc_lock);
	g_fc = fc;
	pthread_mutex_unlock(&g_fc_lock);
	*out = fc;
	return 0;
}

void flags_controller_stop(struct flags_controller *fc)
{
	if (!fc)
		return;
	pthread_mutex_lock(&g_fc_lock);
	g_fc = NULL;
	pthread_mutex_unlock(&g_fc_lock);
	pthread_mutex_lock(&fc->lock);
	fc->stop = 1;
	pthread_cond_signal(&fc->cond);
	pthread_mutex_unlock(&fc->lock);
	pthread_join(fc->thread, NULL);
	/* the caller stopped the device API first: no check-in reads the table */
	fleet_set_flags(fc->fleet, NULL, NULL);
	flags_live_free(fc->live);
	json_decref(fc->due);
	free(fc);
}
