/*
 * test_rolloutplan.c - a soak or rollout stage's keys turned into a plan
 * (steps, rings, holds, windows), and the window arithmetic, without a
 * daemon.  The walk itself is tested end to end in test_rollout.c.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../common/util.h"
#include "../orchestrator/rollout.h"
#include "../orchestrator/rollout_int.h"

static json_t *plan_of(const char *kind, const char *extra_json)
{
	json_t *extra = json_loads(extra_json, 0, NULL), *plan = NULL;
	assert_non_null(extra);
	assert_int_equal(rollout_plan_from_extra(kind, extra, &plan), 0);
	json_decref(extra);
	return plan;
}

static void plan_error(const char *kind, const char *extra_json, const char *want)
{
	json_t *extra = json_loads(extra_json, 0, NULL), *plan = NULL;
	assert_non_null(extra);
	assert_int_equal(rollout_plan_from_extra(kind, extra, &plan), OTA_EINVAL);
	assert_null(plan);
	if (!strstr(ota_error_last(), want)) {
		print_error("got '%s', want '%s'\n", ota_error_last(), want);
		fail();
	}
	json_decref(extra);
}

static void soak_is_one_step_at_100_percent_of_its_cohort_for_24h_by_default(void **state)
{
	json_t *p = plan_of("soak", "{\"cohort\": {\"group\": \"staging\"}}"), *s;

	(void)state;
	assert_int_equal(json_array_size(json_object_get(p, "plan")), 1);
	s = json_array_get(json_object_get(p, "plan"), 0);
	assert_int_equal(json_integer_value(json_object_get(s, "bp")), 10000);
	assert_int_equal(json_integer_value(json_object_get(s, "hold_ms")), 24LL * 3600 * 1000);
	assert_string_equal(json_string_value(json_array_get(json_object_get(json_object_get(s, "cohort"), "group"), 0)),
			    "staging");
	assert_false(json_is_true(json_object_get(p, "approval")));
	json_decref(p);
}

static void rings_are_walked_outermost_each_through_every_step(void **state)
{
	json_t *p = plan_of("rollout", "{\"rings\": [{\"region\": \"eu\"}, {\"region\": [\"us\", \"apac\"]}],"
				       " \"steps\": [{\"percent\": 10, \"hold\": \"1h\"}, {\"percent\": 100, \"hold\": \"2d\"}],"
				       " \"approval\": \"required\"}");
	json_t *plan = json_object_get(p, "plan");

	(void)state;
	assert_int_equal(json_array_size(plan), 4);
	assert_int_equal(json_integer_value(json_object_get(json_array_get(plan, 0), "ring")), 0);
	assert_int_equal(json_integer_value(json_object_get(json_array_get(plan, 1), "bp")), 10000);
	assert_int_equal(json_integer_value(json_object_get(json_array_get(plan, 2), "ring")), 1);
	assert_int_equal(json_integer_value(json_object_get(json_array_get(plan, 2), "bp")), 1000);
	assert_int_equal(json_array_size(json_object_get(json_object_get(json_array_get(plan, 3), "cohort"), "region")), 2);
	assert_int_equal(json_integer_value(json_object_get(json_array_get(plan, 3), "hold_ms")), 2LL * 86400 * 1000);
	/* the extension defaults to the longest hold */
	assert_int_equal(json_integer_value(json_object_get(p, "max_extension_ms")), 2LL * 86400 * 1000);
	assert_true(json_is_true(json_object_get(p, "approval")));
	json_decref(p);
}

static void fractional_percentages_become_basis_points(void **state)
{
	json_t *p = plan_of("rollout", "{\"steps\": [{\"percent\": 0.5, \"hold\": \"6h\"}, {\"percent\": 1, \"hold\": \"6h\"}]}");
	(void)state;
	assert_int_equal(json_integer_value(json_object_get(json_array_get(json_object_get(p, "plan"), 0), "bp")), 50);
	json_decref(p);
}

static void bad_plans_name_the_problem(void **state)
{
	(void)state;
	plan_error("rollout", "{}", "needs steps");
	plan_error("rollout", "{\"steps\": [{\"percent\": 5, \"hold\": \"1h\"}, {\"percent\": 1, \"hold\": \"1h\"}]}",
		   "below the step before");
	plan_error("rollout", "{\"steps\": [{\"percent\": 101, \"hold\": \"1h\"}]}", "percent must be a number in (0, 100]");
	plan_error("rollout", "{\"steps\": [{\"percent\": 1, \"hold\": \"soon\"}]}", "duration");
	plan_error("rollout", "{\"steps\": [{\"percent\": 1, \"hold\": \"1h\", \"weight\": 3}]}", "unknown key 'weight'");
	plan_error("rollout", "{\"steps\": [{\"percent\": 1, \"hold\": \"1h\"}], \"rings\": []}", "rings must be a list");
	plan_error("rollout", "{\"steps\": [{\"percent\": 1, \"hold\": \"1h\"}], \"window\": {\"start\": \"25:00\", \"end\": \"04:00\"}}",
		   "window needs start and end");
	plan_error("soak", "{\"steps\": []}", "unknown key 'steps' for a soak stage");
	plan_error("soak", "{\"cohort\": {\"group\": 3}}", "tag 'group' needs a string");
	plan_error("soak", "{\"approval\": \"maybe\"}", "approval must be");
}

#define HOUR (3600LL * 1000)
#define DAY (24 * HOUR)

static void window_lets_a_step_start_only_inside_it(void **state)
{
	json_t *w = json_pack("{si si si}", "start_min", 0, "end_min", 4 * 60, "utc_offset_min", 0);
	int64_t midnight = 20000 * DAY;

	(void)state;
	/* inside: now */
	assert_int_equal(rollout_window_next(w, midnight + 2 * HOUR), midnight + 2 * HOUR);
	/* after the end: tomorrow's start */
	assert_int_equal(rollout_window_next(w, midnight + 5 * HOUR), midnight + DAY);
	/* no window: always now */
	assert_int_equal(rollout_window_next(NULL, midnight + 5 * HOUR), midnight + 5 * HOUR);
	json_decref(w);
	/* a window across midnight, in UTC+01:00 local time: 22:00-02:00 local */
	w = json_pack("{si si si}", "start_min", 22 * 60, "end_min", 2 * 60, "utc_offset_min", 60);
	assert_int_equal(rollout_window_next(w, midnight + 21 * HOUR + HOUR / 2), midnight + 21 * HOUR + HOUR / 2); /* 22:30 local */
	assert_int_equal(rollout_window_next(w, midnight + 0 * HOUR + HOUR / 2), midnight + HOUR / 2);             /* 01:30 local */
	assert_int_equal(rollout_window_next(w, midnight + 3 * HOUR), midnight + 21 * HOUR);                      /* 04:00 local -> 22:00 local */
	json_decref(w);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(soak_is_one_step_at_100_percent_of_its_cohort_for_24h_by_default),
		cmocka_unit_test(rings_are_walked_outermost_each_through_every_step),
		cmocka_unit_test(fractional_percentages_become_basis_points),
		cmocka_unit_test(bad_plans_name_the_problem),
		cmocka_unit_test(window_lets_a_step_start_only_inside_it),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
