/*
 * power.c - power-consumption gates for HIL rigs (power.h lists the keys).
 *
 * Why in the hil kind: the rig that runs the firmware is the one that can
 * measure it, in the same boot as the functional tests, so a firmware
 * that passes every test but stops sleeping (examples/sensor-node's
 * BREAK=power) fails the same job with the figure that moved.  Limits
 * catch a board over its battery budget; max_increase_percent catches a
 * change that makes it worse than the target branch while still inside
 * the budget, per board, since boards draw differently.
 */
#include "power.h"

#include <inttypes.h>
#include <math.h>
#include <string.h>

struct power_figure {
	const char *key, *what, *unit;
};

static const struct power_figure figures[] = {
	{ "avg_current_ma", "average current", "mA" },
	{ "sleep_current_ma", "sleep current", "mA" },
	{ "cycle_energy_uj", "energy per measurement cycle", "uJ" },
};

#define INCREASE_KEY "max_increase_percent"
#define LIMIT_MAX 1e9

static const char *str(const json_t *o, const char *key)
{
	return json_string_value(json_object_get(o, key));
}

int power_validate(const struct pl_stage *st, struct pl_diags *d)
{
	json_t *p = json_object_get(st->extra, "power"), *v, *b = json_object_get(st->extra, "baseline");
	json_t *rep = json_object_get(st->extra, "reports");
	const char *k;

	if (b && (!json_is_string(b) || !*json_string_value(b) || strchr(json_string_value(b), ' ')))
		pl_diag_add(d, st->pos, "%s stage '%s': 'baseline' must be a branch name, e.g. main", st->kind, st->name);
	if (!p)
		return 0;
	if (!json_is_object(p) || !json_object_size(p)) {
		pl_diag_add(d, st->pos, "%s stage '%s': 'power' must be a mapping of limits, e.g. {avg_current_ma: 1.5,"
			    " sleep_current_ma: 1.2, cycle_energy_uj: 100, max_increase_percent: 25}", st->kind, st->name);
		return 0;
	}
	json_object_foreach(p, k, v) {
		size_t i;
		for (i = 0; i < OTA_ARRAY_SIZE(figures); i++)
			if (!strcmp(k, figures[i].key))
				break;
		if (i == OTA_ARRAY_SIZE(figures) && strcmp(k, INCREASE_KEY))
			pl_diag_add(d, st->pos, "%s stage '%s': power.%s is not a limit (avg_current_ma, sleep_current_ma,"
				    " cycle_energy_uj, max_increase_percent)", st->kind, st->name, k);
		else if (!json_is_number(v) || !(json_number_value(v) > 0) || json_number_value(v) > LIMIT_MAX)
			pl_diag_add(d, st->pos, "%s stage '%s': power.%s must be a number above 0", st->kind, st->name, k);
	}
	if (json_object_get(p, INCREASE_KEY) && !b)
		pl_diag_add(d, st->pos, "%s stage '%s': power.max_increase_percent compares with a branch: add"
			    " 'baseline: main'", st->kind, st->name);
	if (!json_is_string(json_object_get(rep, "power")))
		pl_diag_add(d, st->pos, "%s stage '%s': 'power' limits need a power report: reports: {power: PATH}",
			    st->kind, st->name);
	return 0;
}

/* The baseline's power report for board (any board when NULL), or NULL. */
static const json_t *baseline_for(const json_t *baseline, const char *board)
{
	size_t i;
	json_t *body;
	json_array_foreach(baseline, i, body) {
		const char *fmt = str(body, "format"), *b = str(body, "board");
		if (fmt && !strcmp(fmt, "power") && ((!board && !b) || (board && b && !strcmp(board, b))))
			return body;
	}
	return NULL;
}

/* "; " between the items of one report's message. */
static void sep(struct buf *msg, size_t *items, const json_t *body)
{
	if ((*items)++)
		buf_puts(msg, "; ");
	else
		buf_printf(msg, "%spower%s%s%s: ", msg->len ? "; " : "", str(body, "board") ? " (" : "",
			   str(body, "board") ? str(body, "board") : "", str(body, "board") ? ")" : "");
}

/* Append what is over a limit, then what is over the baseline's figure. */
static int judge_report(const json_t *limits, const json_t *body, const json_t *base, int64_t base_run,
			struct buf *msg)
{
	const json_t *m = json_object_get(body, "metrics"), *bm = json_object_get(base, "metrics");
	json_t *inc = json_object_get(limits, INCREASE_KEY);
	size_t items = 0;

	for (size_t i = 0; i < OTA_ARRAY_SIZE(figures); i++) {
		const struct power_figure *f = &figures[i];
		json_t *lim = json_object_get(limits, f->key), *v = json_object_get(m, f->key);
		if (!lim)
			continue;
		if (!json_is_number(v)) {
			sep(msg, &items, body);
			buf_printf(msg, "no %s in the report%s", f->what,
				   !strcmp(f->key, "cycle_energy_uj") ? " (no measurement cycle was counted)" : "");
		} else if (json_number_value(v) > json_number_value(lim)) {
			sep(msg, &items, body);
			buf_printf(msg, "%s %g %s (limit %g %s)", f->what, json_number_value(v), f->unit,
				   json_number_value(lim), f->unit);
		}
	}
	for (size_t i = 0; inc && base && i < OTA_ARRAY_SIZE(figures); i++) {
		const struct power_figure *f = &figures[i];
		json_t *v = json_object_get(m, f->key), *bv = json_object_get(bm, f->key);
		double now, was;
		if (!json_is_number(v) || !json_is_number(bv))
			continue;
		now = json_number_value(v);
		was = json_number_value(bv);
		if (now <= was * (1 + json_number_value(inc) / 100))
			continue;
		sep(msg, &items, body);
		buf_printf(msg, "%s %g %s, %.0f%% above the baseline's %g %s (run %" PRId64 ", at most +%g%%)", f->what,
			   now, f->unit, was > 0 ? 100 * (now / was - 1) : INFINITY, was, f->unit, base_run,
			   json_number_value(inc));
	}
	return items > 0;
}

int power_verdict(const json_t *extra, const struct verdict_input *in, struct buf *msg)
{
	const json_t *limits = json_object_get(extra, "power"), *rep;
	const char *branch = str(extra, "baseline");
	size_t i, n = 0;
	int failed = 0;

	if (!json_is_object(limits))
		return 0;
	json_array_foreach(in->reports, i, rep) {
		const json_t *body = json_object_get(rep, "body");
		const char *fmt = str(rep, "format");
		if (!fmt || strcmp(fmt, "power"))
			continue;
		n++;
		failed |= judge_report(limits, body, baseline_for(in->baseline, str(body, "board")), in->baseline_run,
				       msg);
	}
	if (!n) {
		buf_printf(msg, "%spower: no power report was recorded (reports.power)", msg->len ? "; " : "");
		return 1;
	}
	if (!failed && json_object_get(limits, INCREASE_KEY) && branch && !in->baseline)
		buf_printf(msg, "%sno passed run on %s to compare power with: judged on the limits alone, none exceeded",
			   msg->len ? "; " : "", branch);
	return failed;
}
