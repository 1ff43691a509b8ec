/*
 * fuzz_flags.c - libFuzzer target for the feature-flag operator input
 * (POST /api/v1/flags and /api/v1/flags/rollout bodies, otactl flags):
 * the first byte's low bit picks set (0) or rollout (1), the rest is the
 * JSON body.  flags_check runs every check flags_set/flags_rollout run
 * before writing (names, values, cohorts, the rollout parser's steps,
 * gate specs); it must return 0 or OTA_EINVAL with a message, never crash,
 * and a body it accepts must keep to the documented bounds.  The answer's
 * side, flags_live_answer, is then fed the accepted flag and must stay
 * within FLAGS_ANSWER_MAX.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "../common/util.h"
#include "../orchestrator/flags/flags.h"
#include "../orchestrator/flags/flags_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	json_t *body;
	int rc;

	if (size < 1)
		return 0;
	body = json_loadb((const char *)data + 1, size - 1, JSON_REJECT_DUPLICATES, NULL);
	if (!body)
		return 0;
	rc = flags_check(body, data[0] & 1);
	if (rc != 0 && rc != OTA_EINVAL)
		abort();
	if (rc == 0) {
		const char *name = json_string_value(json_object_get(body, "name"));
		json_t *value = json_object_get(body, "value"), *list;
		struct flags_live *l = flags_live_new();
		char out[FLAGS_ANSWER_MAX + 1];
		const char *tags[] = { "group=beta" };
		size_t n;
		if (!flags_name_valid(name))
			abort();
		/* FLAGS_PER_PRODUCT copies of the flag, as many as a product holds */
		list = json_array();
		for (int i = 0; i < FLAGS_PER_PRODUCT; i++)
			json_array_append_new(list, json_pack("{ss ss sO si so}", "product", "p", "name", name, "value",
							      value ? value : json_true(), "bp", 10000, "cohort", json_object()));
		flags_live_load(l, list);
		n = flags_live_answer(l, "p", "dev-1", tags, 1, out, sizeof(out));
		if (n == 0 || n > FLAGS_ANSWER_MAX || strlen(out) != n)
			abort();
		json_decref(list);
		flags_live_free(l);
	}
	json_decref(body);
	return 0;
}
