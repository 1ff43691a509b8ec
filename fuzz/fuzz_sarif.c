/*
 * fuzz_sarif.c - libFuzzer target for SARIF 2.1.0 logs
 * (report_parse_sarif), JSON read with jansson.
 *
 * The report comes from a job, so every byte is untrusted.  Besides
 * crashes, leaks and UB (ASan/UBSan), the target aborts when the contract
 * of reports.h breaks: per-severity counts that do not add up to the
 * findings, a severity that is not a SARIF level, a finding without a
 * file, a non-negative line or a 64-hex-digit fingerprint, a failure
 * without a message naming the file, or a message that is not valid UTF-8.
 *
 *   make fuzz   or   build/fuzz/fuzz_sarif fuzz/corpus/fuzz_sarif
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../common/util.h"
#include "../orchestrator/reports.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_message(void)
{
	const char *m = ota_error_last();
	json_t *j;

	if (!m || strncmp(m, "fuzz.sarif", 10) != 0)
		abort();
	j = json_string(m);
	if (!j)
		abort();
	json_decref(j);
}

/* The findings shape shared by cppcheck and SARIF. */
static void check_findings(json_t *r)
{
	json_t *findings = json_object_get(r, "findings"), *counts = json_object_get(r, "counts"), *f, *v;
	json_int_t total = 0;
	const char *fp, *key;
	size_t i;

	if (!json_is_array(findings) || !json_is_object(counts))
		abort();
	json_object_foreach(counts, key, v) {
		if (!json_is_integer(v) || json_integer_value(v) < 0)
			abort();
		total += json_integer_value(v);
	}
	if (total != (json_int_t)json_array_size(findings))
		abort();
	json_array_foreach(findings, i, f) {
		fp = json_string_value(json_object_get(f, "fingerprint"));
		if (!fp || strlen(fp) != 64 || strspn(fp, "0123456789abcdef") != 64)
			abort();
		key = json_string_value(json_object_get(f, "severity"));
		if (!key || !json_string_value(json_object_get(f, "file")))
			abort();
		if (strcmp(key, "error") && strcmp(key, "warning") && strcmp(key, "note") && strcmp(key, "none"))
			abort();
		if (json_integer_value(json_object_get(f, "line")) < 0 || json_integer_value(json_object_get(f, "column")) < 0)
			abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	json_t *r = NULL;

	ota_error_clear();
	if (report_parse_sarif(&r, data, size, "fuzz.sarif") == 0)
		check_findings(r);
	else if (r)
		abort();
	else
		check_message();
	json_decref(r);
	return 0;
}
