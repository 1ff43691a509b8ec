/*
 * fuzz_metrics.c - libFuzzer target for the code-quality metrics reports
 * (report_parse_pmccabe, report_parse_jscpd; orchestrator/metrics_report.c).
 * The first byte picks the parser, the rest is the report.
 *
 * The report comes from a job, so every byte is untrusted.  Besides
 * crashes, leaks and UB (ASan/UBSan), the target aborts when the contract
 * of reports.h breaks: a "metrics" member that is not a non-negative
 * number, a pmccabe function count that is not the functions listed, a
 * complexity_max that is not the first (most complex) function's, functions
 * not sorted, more duplicated lines than lines, a percentage outside
 * 0..100, or a failure that leaves a result or lacks a message naming the
 * file.
 *
 *   make fuzz   or   build/fuzz/fuzz_metrics fuzz/corpus/fuzz_metrics
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../common/util.h"
#include "../orchestrator/reports.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static double num(const json_t *metrics, const char *key)
{
	json_t *v = json_object_get(metrics, key);
	if (!json_is_number(v) || json_number_value(v) < 0)
		abort();
	return json_number_value(v);
}

static void check_pmccabe(const json_t *r)
{
	json_t *m = json_object_get(r, "metrics"), *fns = json_object_get(r, "functions"), *f;
	json_int_t prev = -1;
	size_t i;

	if (num(m, "functions") != (double)json_array_size(fns))
		abort();
	num(m, "complexity_mean");
	if (json_array_size(fns) &&
	    num(m, "complexity_max") != (double)json_integer_value(json_object_get(json_array_get(fns, 0), "complexity")))
		abort();
	json_array_foreach(fns, i, f) {
		json_int_t c = json_integer_value(json_object_get(f, "complexity"));
		if (!json_string_value(json_object_get(f, "function")) || !json_string_value(json_object_get(f, "file")) ||
		    c < 0 || (prev >= 0 && c > prev))
			abort();
		prev = c;
	}
}

static void check_jscpd(const json_t *r)
{
	json_t *m = json_object_get(r, "metrics");
	double p = num(m, "duplicated_percent");

	if (num(m, "duplicated_lines") > num(m, "lines") || p > 100)
		abort();
	num(m, "clones");
	if (!json_is_array(json_object_get(r, "clones")))
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	json_t *r = NULL;
	int jscpd;

	if (size < 1)
		return 0;
	jscpd = data[0] & 1;
	ota_error_clear();
	if (report_parse(&r, jscpd ? "jscpd" : "pmccabe", data + 1, size - 1, "fuzz.txt") == 0) {
		if (!r)
			abort();
		if (jscpd)
			check_jscpd(r);
		else
			check_pmccabe(r);
	} else if (r || !ota_error_last() || strncmp(ota_error_last(), "fuzz.txt", 8) != 0) {
		abort();
	}
	json_decref(r);
	return 0;
}
