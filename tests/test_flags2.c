/*
 * test_flags2.c - feature flags, the second part (issue 17,
 * orchestrator/flags/):
 *
 *  - POST /api/v1/flags and /api/v1/flags/rollout honour Idempotency-Key:
 *    a retry with the same key gets the first answer and changes nothing
 *    (one audit row, the rollout not restarted), the same key with another
 *    body is refused with 422 and changes nothing;
 *  - the check-in's flag lookup is skipped for a product without flags
 *    (flags_live's product bits) and answers exactly as before;
 *  - otacd SIGKILLed in the middle of a flag rollout's hold carries on at
 *    the same step with the same devices, and each step is promoted once.
 *
 * Real otacd, otactl and otacd-fleetsim (core engine) on loopback.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../common/httpc.h"
#include "../orchestrator/flags/flags.h"
#include "../orchestrator/flags/flags_int.h"
#include "devharness.h"
#include "harness.h"

/* ---- Idempotency-Key ------------------------------------------------------ */

/* POST body to path with key; the status, the answer (new string) and
 * whether it was a replay. */
static long post_key(struct daemon *d, const char *path, const char *body, const char *key, char **answer,
		     int *replayed)
{
	struct httpc_response resp;
	char *url = xasprintf("%s%s", d->url, path), *h = xasprintf("Idempotency-Key: %s", key), *flag = NULL;
	const char *headers[2] = { h, NULL };
	long status;
	assert_int_equal(httpc_request_ex(&resp, "POST", url, d->token, "application/json", body, strlen(body), 20000,
					  headers), 0);
	status = resp.status;
	*answer = xstrndup(resp.body.ptr ? resp.body.ptr : "", resp.body.len);
	*replayed = httpc_response_header(&flag, &resp, "Idempotent-Replayed") == 0 && !strcmp(flag, "true");
	free(flag);
	httpc_response_release(&resp);
	free(h);
	free(url);
	return status;
}

static const char rollout_body[] =
	"{\"product\":\"fw\",\"name\":\"new-ui\",\"steps\":[{\"percent\":25,\"hold\":\"3h\"},{\"percent\":100,\"hold\":\"2h\"}],"
	"\"gates\":{\"crash_free\":{\"metric\":\"crashes_per_device_hour\",\"max\":0.05,\"min_devices\":10}},"
	"\"reason\":\"new ui\"}";
static const char other_rollout[] =
	"{\"product\":\"fw\",\"name\":\"new-ui\",\"steps\":[{\"percent\":50,\"hold\":\"3h\"}],"
	"\"gates\":{\"crash_free\":{\"metric\":\"crashes_per_device_hour\",\"max\":0.05,\"min_devices\":10}},"
	"\"reason\":\"other\"}";
static const char set_body[] = "{\"product\":\"fw\",\"name\":\"radio\",\"state\":\"on\",\"reason\":\"ship it\"}";

static void retried_flag_posts_with_one_key_change_nothing_twice(void **state)
{
	struct daemon d;
	char *first = NULL, *again = NULL, *other = NULL;
	int replayed = 0;
	/* the step's deadline: set when a rollout starts (the controller's
	 * evaluations bump seq, so seq says nothing here) */
	int64_t hold_until;

	(void)state;
	h_init(&d, NULL);
	assert_int_equal(h_start(&d, NULL), 0);

	/* flags rollout: the retry answers the first answer and leaves the rollout where it is */
	assert_int_equal(post_key(&d, "/api/v1/flags/rollout", rollout_body, "k-rollout-1", &first, &replayed), 200);
	assert_false(replayed);
	hold_until = h_sql_int(&d, "SELECT hold_until FROM flags WHERE name = 'new-ui'");
	assert_int_equal(post_key(&d, "/api/v1/flags/rollout", rollout_body, "k-rollout-1", &again, &replayed), 200);
	assert_true(replayed);
	assert_string_equal(again, first);
	assert_int_equal(h_sql_int(&d, "SELECT hold_until FROM flags WHERE name = 'new-ui'"), hold_until);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM audit WHERE action = 'flag_rollout'"), 1);
	/* the same key with another body: refused, nothing changes */
	assert_int_equal(post_key(&d, "/api/v1/flags/rollout", other_rollout, "k-rollout-1", &other, &replayed), 422);
	assert_non_null(strstr(other, "Idempotency-Key"));
	assert_int_equal(h_sql_int(&d, "SELECT hold_until FROM flags WHERE name = 'new-ui'"), hold_until);
	assert_int_equal(h_sql_int(&d, "SELECT bp FROM flags WHERE name = 'new-ui'"), 2500);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM audit WHERE action = 'flag_rollout'"), 1);
	free(first);
	free(again);
	free(other);

	/* flags set: the same */
	assert_int_equal(post_key(&d, "/api/v1/flags", set_body, "k-set-1", &first, &replayed), 200);
	assert_false(replayed);
	assert_int_equal(post_key(&d, "/api/v1/flags", set_body, "k-set-1", &again, &replayed), 200);
	assert_true(replayed);
	assert_string_equal(again, first);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM audit WHERE action = 'flag_set'"), 1);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM flags WHERE name = 'radio' AND state = 'on'"), 1);
	/* another path with the same key is another request: refused */
	assert_int_equal(post_key(&d, "/api/v1/flags/rollout", set_body, "k-set-1", &other, &replayed), 422);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM audit WHERE action LIKE 'flag%'"), 2);
	free(first);
	free(again);
	free(other);

	/* a bad body's 400 is kept too: its retry answers 400 again, nothing written */
	assert_int_equal(post_key(&d, "/api/v1/flags", "{\"product\":\"fw\",\"name\":\"Bad\",\"state\":\"on\",\"reason\":\"x\"}",
				  "k-bad", &first, &replayed), 400);
	assert_int_equal(post_key(&d, "/api/v1/flags", "{\"product\":\"fw\",\"name\":\"Bad\",\"state\":\"on\",\"reason\":\"x\"}",
				  "k-bad", &again, &replayed), 400);
	assert_true(replayed);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM flags"), 2);
	free(first);
	free(again);
	h_cleanup(&d);
}

/* ---- the check-in's fast path ------------------------------------------------ */

static json_t *live_row(const char *product, const char *name, int bp)
{
	return json_pack("{ss ss so s{} si}", "product", product, "name", name, "value", json_true(), "cohort", "bp", bp);
}

static void a_product_without_flags_skips_the_lookup_and_answers_as_before(void **state)
{
	struct flags_live *l = flags_live_new();
	const char *tags[] = { "group=staging" };
	char out[FLAGS_ANSWER_MAX + 40];
	json_t *list;
	char product[16];

	(void)state;
	/* no flags at all */
	memset(out, 'x', sizeof(out));
	assert_int_equal(flags_live_answer(l, "fw", "dev-1", tags, 1, out, sizeof(out)), 0);
	assert_string_equal(out, "");
	/* a flag of fw (on for everybody) and one of fw2 (off) */
	list = json_pack("[oo]", live_row("fw", "new-ui", 10000), live_row("fw2", "radio", 0));
	flags_live_load(l, list);
	json_decref(list);
	assert_int_equal(flags_live_answer(l, "fw", "dev-1", tags, 1, out, sizeof(out)), strlen("{\"new-ui\":true}"));
	assert_string_equal(out, "{\"new-ui\":true}");
	/* a flag at bp 0 is still a flag: answered false, not left out */
	assert_true(flags_live_answer(l, "fw2", "dev-1", tags, 1, out, sizeof(out)) > 0);
	assert_string_equal(out, "{\"radio\":false}");
	/* every other product: no "flags" member, whether its bit is set or not
	 * (64 bits: some of these share fw's or fw2's bit and take the lock) */
	for (int i = 0; i < 200; i++) {
		snprintf(product, sizeof(product), "p%d", i);
		memset(out, 'x', sizeof(out));
		assert_int_equal(flags_live_answer(l, product, "dev-1", tags, 1, out, sizeof(out)), 0);
		assert_string_equal(out, "");
	}
	/* the table emptied again: nothing for fw either */
	list = json_array();
	flags_live_load(l, list);
	json_decref(list);
	assert_int_equal(flags_live_answer(l, "fw", "dev-1", tags, 1, out, sizeof(out)), 0);
	flags_live_free(l);
}

/* ---- SIGKILL during a hold --------------------------------------------------- */

#define PROBES 16

static void a_flag_rollout_killed_mid_hold_carries_on_at_its_step_with_the_same_devices(void **state)
{
	static const char steady[] = "{\"default\": {\"crash_rate\": 0, \"boot_fail_rate\": 0, \"revert_rate\": 0},"
				     " \"silent\": 0, \"flaky\": 0}";
	const char *const args[] = { "--time-scale", "1200", NULL };
	struct daemon d;
	struct buf out = BUF_INIT;
	const char *const sim_args[] = { "--devices", "200", "--seed", "11", "--duration", "900", "--flag", "good-flag",
					 NULL };
	struct h_fleetsim sim;
	char **creds, ids[PROBES][32];
	json_t *before[PROBES], *row;
	int64_t hold_until, on = 0;

	(void)state;
	h_init(&d, "poll_interval: 15m\n");
	d.device_listen = h_free_listen(); /* the same port after the restart: fleetsim stays on it */
	assert_int_equal(h_start(&d, args), 0);
	h_fleetsim_start(&sim, &d, steady, sim_args);
	creds = h_register_devices(&d, "probe", PROBES);
	for (int i = 0; i < PROBES; i++)
		snprintf(ids[i], sizeof(ids[i]), "probe-%04d", i);
	h_msleep(6 * 3600 * 1000 / 1200); /* the fleet's crash budgets fill (test_flags.c says why) */
	/* a long first step (36 s here), so the kill and the restart land
	 * inside its hold even on a loaded machine */
	assert_int_equal(h_otactl_checked(&d, &out, "flags rollout fw good-flag --steps 25:12h,100:1h"
						    " --max-extension 12h --gate crash_free:crashes_per_device_hour"
						    "\\<=0.05,min_devices=10 --reason 'new ui'"), 0);
	row = h_flag_row(&d, "fw", "good-flag");
	hold_until = json_integer_value(json_object_get(row, "hold_until"));
	json_decref(row);
	for (int i = 0; i < PROBES; i++) {
		before[i] = h_checkin_flags(&d, ids[i], creds[i], "fw", NULL);
		on += json_is_true(json_object_get(before[i], "good-flag"));
	}
	h_msleep(3000); /* an otacd hour into the hold */

	h_kill(&d, SIGKILL);
	assert_int_equal(h_start(&d, args), 0);

	/* the same step and deadline (a restarted rollout would have a new
	 * one); the same devices have the flag */
	row = h_flag_row(&d, "fw", "good-flag");
	assert_string_equal(json_string_value(json_object_get(row, "state")), "holding");
	assert_int_equal(json_integer_value(json_object_get(row, "step")), 0);
	assert_int_equal(json_integer_value(json_object_get(row, "bp")), 2500);
	assert_int_equal(json_integer_value(json_object_get(row, "hold_until")), hold_until);
	json_decref(row);
	for (int i = 0; i < PROBES; i++) {
		json_t *after = h_checkin_flags(&d, ids[i], creds[i], "fw", NULL);
		assert_true(json_equal(after, before[i]));
		json_decref(after);
		json_decref(before[i]);
	}
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM audit WHERE action = 'flag_step'"), 0);

	/* and on through both steps: each promoted once */
	h_flag_wait(&d, "good-flag", "on", 300);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM audit WHERE action = 'flag_step'"
				       " AND detail LIKE '%good-flag%'"),
			 2);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM audit WHERE action = 'flag_rollout'"), 1);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM audit WHERE action LIKE 'flag%' AND action NOT IN"
				       " ('flag_rollout', 'flag_step')"), 0);
	print_message("flags2: %" PRId64 " of %d probes had the flag at 25 %%\n", on, PROBES);

	json_decref(h_fleetsim_stop(&sim));
	for (int i = 0; i < PROBES; i++)
		free(creds[i]);
	free(creds);
	buf_release(&out);
	h_cleanup(&d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(a_product_without_flags_skips_the_lookup_and_answers_as_before),
		cmocka_unit_test(retried_flag_posts_with_one_key_change_nothing_twice),
		cmocka_unit_test(a_flag_rollout_killed_mid_hold_carries_on_at_its_step_with_the_same_devices),
	};
	cmocka_set_test_filter(getenv("X_ONLY"));
	return cmocka_run_group_tests_name("flags2", tests, NULL, NULL);
}
