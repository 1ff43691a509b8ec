/*
 * fuzz_power.c - libFuzzer target for HIL rigs' power reports
 * (report_parse_power; orchestrator/power_report.c).
 *
 * The report comes from a job, so every byte is untrusted.  Besides
 * crashes, leaks and UB (ASan/UBSan), the target aborts when the contract
 * of reports.h breaks: a figure that is not a finite non-negative number,
 * a sleep current above the average, an average outside the samples'
 * range, cycle_energy_uj present without cycles, a sample count that is
 * not the samples given, or a failure that leaves a result or lacks a
 * message naming the file.
 *
 *   make fuzz   or   build/fuzz/fuzz_power fuzz/corpus/fuzz_power
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../common/util.h"
#include "../orchestrator/reports.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static double num(const json_t *metrics, const char *key)
{
	json_t *v = json_object_get(metrics, key);
	if (!json_is_number(v) || !isfinite(json_number_value(v)) || json_number_value(v) < 0)
		abort();
	return json_number_value(v);
}

static void check(const json_t *r)
{
	const json_t *m = json_object_get(r, "metrics"), *samples = json_object_get(r, "samples"), *s;
	double avg = num(m, "avg_current_ma"), floor = num(m, "sleep_current_ma"), top = 0;
	size_t i;

	num(m, "energy_uj");
	num(m, "duration_ms");
	if (json_object_get(m, "cycle_energy_uj") && (num(m, "cycle_energy_uj"), num(m, "cycles") == 0))
		abort();
	if (!json_is_array(samples) || !json_array_size(samples))
		abort();
	json_array_foreach(samples, i, s)
		top = fmax(top, json_number_value(json_object_get(s, "current_ma")));
	/* rounding to 1e-4 mA: allow that much */
	if (floor > avg + 1e-4 || avg > top + 1e-4)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	json_t *r = NULL;

	ota_error_clear();
	if (report_parse(&r, "power", data, size, "fuzz.json") == 0) {
		if (!r)
			abort();
		check(r);
	} else if (r || !ota_error_last() || strncmp(ota_error_last(), "fuzz.json", 9) != 0) {
		abort();
	}
	json_decref(r);
	return 0;
}
