/*
 * power_report.c - power-consumption reports from HIL rigs: samples of
 * current over time, turned into the "metrics" shape of reports.h.
 *
 * Why a format of our own: power meters (a bench supply's log, a Joulescope
 * or PPK2 export, the QEMU rig's simulated meter, examples/sensor-node/
 * hil/power.py) each write something else; a rig converts to this one
 * JSON document (docs/stages.md, "Power"):
 *
 *   {"format": "otacd-power/1", "board": B, "source": TEXT, "voltage_v": V,
 *    "samples": [{"t_ms": T, "ms": D, "current_ma": I, "cycles": N}, ...]}
 *
 * Each sample is the average current over D milliseconds starting at T and
 * the measurement cycles the firmware completed in them.  The document
 * comes from a job, so every number is bounded (finite, non-negative,
 * below physical limits) and the samples must follow each other in time;
 * the figures the gate judges are computed here from the samples, never
 * taken from the rig:
 *
 *   avg_current_ma    charge / time over the whole report
 *   sleep_current_ma  the lowest sample: the floor the board idles at
 *   cycle_energy_uj   energy / cycles (absent when no cycle was counted)
 *   energy_uj, duration_ms, cycles
 */
#include "reports.h"

#include <math.h>
#include <string.h>

#include "../common/util.h"

#define POWER_SAMPLES_MAX 100000       /* samples in one report */
#define POWER_MS_MAX 86400000.0        /* one sample: at most a day */
#define POWER_T_MAX 3153600000000.0    /* start times: within a century of ms */
#define POWER_CURRENT_MAX 100000.0     /* mA: 100 A is no microcontroller */
#define POWER_VOLTAGE_MAX 1000.0
#define POWER_CYCLES_MAX 100000000
#define POWER_TEXT_MAX 256             /* bytes of board and source */

static int number_in(const json_t *v, double lo, double hi, int lo_open, double *out)
{
	double x;
	if (!json_is_number(v))
		return -1;
	x = json_number_value(v);
	if (!isfinite(x) || x < lo || (lo_open && x == lo) || x > hi)
		return -1;
	*out = x;
	return 0;
}

static int text_in(const json_t *doc, const char *key, const char **out)
{
	json_t *v = json_object_get(doc, key);
	*out = NULL;
	if (!v)
		return 0;
	if (!json_is_string(v) || json_string_length(v) > POWER_TEXT_MAX)
		return -1;
	*out = json_string_value(v);
	return 0;
}

struct power_sums {
	double time_ms, charge_uc, floor_ma, next_t;
	json_int_t cycles;
};

/* Check sample i and add it to the sums and to kept. */
static int power_sample(const json_t *s, size_t i, struct power_sums *sum, json_t *kept, const char *name)
{
	double t, ms, ma;
	json_t *c = json_object_get(s, "cycles");

	if (!json_is_object(s) || number_in(json_object_get(s, "t_ms"), 0, POWER_T_MAX, 0, &t) < 0 ||
	    number_in(json_object_get(s, "ms"), 0, POWER_MS_MAX, 1, &ms) < 0 ||
	    number_in(json_object_get(s, "current_ma"), 0, POWER_CURRENT_MAX, 0, &ma) < 0 ||
	    (c && (!json_is_integer(c) || json_integer_value(c) < 0 || json_integer_value(c) > POWER_CYCLES_MAX)))
		return ota_error_set(OTA_EINVAL, "%s: samples[%zu] needs t_ms >= 0, ms > 0 (at most a day), current_ma"
				     " 0..%g and optional cycles 0..%d", name, i, POWER_CURRENT_MAX, POWER_CYCLES_MAX);
	if (i && t < sum->next_t)
		return ota_error_set(OTA_EINVAL, "%s: samples[%zu] starts at %g ms, before the previous sample ended"
				     " (%g ms)", name, i, t, sum->next_t);
	sum->next_t = t + ms;
	sum->time_ms += ms;
	sum->charge_uc += ms * ma;
	sum->floor_ma = i ? fmin(sum->floor_ma, ma) : ma;
	sum->cycles += c ? json_integer_value(c) : 0;
	if (sum->cycles > POWER_CYCLES_MAX)
		return ota_error_set(OTA_EINVAL, "%s: more than %d cycles in all", name, POWER_CYCLES_MAX);
	json_array_append_new(kept, json_pack("{sf sf sf sI}", "t_ms", t, "ms", ms, "current_ma", ma, "cycles",
					      c ? json_integer_value(c) : (json_int_t)0));
	return 0;
}

static double round_to(double x, double unit)
{
	return round(x / unit) * unit;
}

int report_parse_power(json_t **out, const void *data, size_t len, const char *name)
{
	json_t *doc = NULL, *samples, *kept = json_array(), *metrics, *s;
	struct power_sums sum = { 0 };
	const char *fmt, *board, *source;
	double volts;
	size_t i;
	int rc = 0;

	*out = NULL;
	if ((rc = report_json_load(&doc, data, len, name)) < 0)
		goto out;
	fmt = json_string_value(json_object_get(doc, "format"));
	if (!fmt || strcmp(fmt, "otacd-power/1")) {
		rc = ota_error_set(OTA_EINVAL, "%s: not a power report: \"format\" must be \"otacd-power/1\"", name);
		goto out;
	}
	if (text_in(doc, "board", &board) < 0 || text_in(doc, "source", &source) < 0) {
		rc = ota_error_set(OTA_EINVAL, "%s: board and source must be strings of at most %d bytes", name,
				   POWER_TEXT_MAX);
		goto out;
	}
	if (number_in(json_object_get(doc, "voltage_v"), 0, POWER_VOLTAGE_MAX, 1, &volts) < 0) {
		rc = ota_error_set(OTA_EINVAL, "%s: voltage_v must be a number above 0 and at most %g", name,
				   POWER_VOLTAGE_MAX);
		goto out;
	}
	samples = json_object_get(doc, "samples");
	if (!json_is_array(samples) || !json_array_size(samples) || json_array_size(samples) > POWER_SAMPLES_MAX) {
		rc = ota_error_set(OTA_EINVAL, "%s: samples must be a list of 1 to %d samples", name, POWER_SAMPLES_MAX);
		goto out;
	}
	json_array_foreach(samples, i, s)
		if ((rc = power_sample(s, i, &sum, kept, name)) < 0)
			goto out;
	/* mA x ms = uC; x V = uJ */
	metrics = json_pack("{sf sf sf sf sI}", "avg_current_ma", round_to(sum.charge_uc / sum.time_ms, 1e-4),
			    "sleep_current_ma", round_to(sum.floor_ma, 1e-4), "energy_uj",
			    round_to(sum.charge_uc * volts, 1e-3), "duration_ms", round_to(sum.time_ms, 1e-3), "cycles",
			    sum.cycles);
	if (sum.cycles)
		json_object_set_new(metrics, "cycle_energy_uj",
				    json_real(round_to(sum.charge_uc * volts / (double)sum.cycles, 1e-3)));
	*out = json_pack("{ss ss ss* ss* sf so sO}", "format", "power", "name", name, "board", board, "source", source,
			 "voltage_v", volts, "metrics", metrics, "samples", kept);
out:
	json_decref(doc);
	json_decref(kept);
	return rc;
}
