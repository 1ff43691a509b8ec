/*
 * fuzz_junit.c - libFuzzer target for JUnit XML reports (report_parse_junit).
 *
 * Reports are written by the jobs under test, so every byte is untrusted.
 * Besides crashes, leaks and UB (ASan/UBSan), the target aborts when the
 * contract of reports.h breaks: a result whose counts do not add up to its
 * cases, a case without a name or with an unknown status, an output over
 * the 64 KiB cap, a failure without a message naming the file, or a
 * message that is not valid UTF-8 (the API sends errors as JSON strings).
 *
 *   make fuzz   or   build/fuzz/fuzz_junit fuzz/corpus/fuzz_junit
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

	if (!m || strncmp(m, "fuzz.xml", 8) != 0)
		abort();
	j = json_string(m);
	if (!j)
		abort();
	json_decref(j);
}

static json_int_t count(json_t *r, const char *key)
{
	json_t *v = json_object_get(r, key);
	if (!json_is_integer(v) || json_integer_value(v) < 0)
		abort();
	return json_integer_value(v);
}

static void check_result(json_t *r)
{
	json_t *cases = json_object_get(r, "cases"), *c;
	json_int_t n[4] = { 0 };
	static const char *const statuses[] = { "passed", "failed", "error", "skipped" };
	const char *status, *out;
	size_t i;

	if (!json_is_array(cases) || count(r, "tests") != (json_int_t)json_array_size(cases) ||
	    !json_is_real(json_object_get(r, "time")))
		abort();
	json_array_foreach(cases, i, c) {
		status = json_string_value(json_object_get(c, "status"));
		if (!status || !json_string_value(json_object_get(c, "name")) ||
		    json_real_value(json_object_get(c, "time")) < 0)
			abort();
		out = json_string_value(json_object_get(c, "output"));
		if (out && strlen(out) > 64 * 1024 + strlen("\n[truncated]"))
			abort();
		for (size_t k = 0; k <= 4; k++) {
			if (k == 4)
				abort();
			if (strcmp(status, statuses[k]) == 0) {
				n[k]++;
				break;
			}
		}
	}
	if (count(r, "passed") != n[0] || count(r, "failures") != n[1] || count(r, "errors") != n[2] ||
	    count(r, "skipped") != n[3])
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	json_t *r = NULL;

	ota_error_clear();
	if (report_parse_junit(&r, data, size, "fuzz.xml") == 0)
		check_result(r);
	else if (r)
		abort();
	else
		check_message();
	json_decref(r);
	return 0;
}
