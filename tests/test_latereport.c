/*
 * test_latereport.c - a report about the version a device ran just before
 * its latest check-in is accepted (issue 19 part 5, found by
 * bench/rollout_1m.sh).
 *
 * A device queues a heartbeat closing its uptime on the old version just
 * before it confirms the new one; with several report batches in flight
 * that heartbeat can reach otacd after the device's check-in with the new
 * version.  It was refused "device 'dev-…' was not offered 1.0.0" (50 of
 * ~5M reports in a 1M-device rollout), a report the device sent and lost.
 * Now the version it ran just before is accepted too, counted for that
 * version, and never moves the device back; older versions and versions it
 * never ran stay refused.  Real otacd, real HTTP.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../common/httpc.h"
#include "harness.h"

static long checkin(struct daemon *d, const char *id, const char *token, const char *version)
{
	return h_dev_post(d, "/device/v1/checkin", token,
			json_pack("{ss ss ss ss ss si ss}", "device", id, "product", "fw", "hardware", "mps2-an385",
				  "bootloader", "1.2.0", "version", version, "security_counter", 0, "slot", "confirmed"),
			NULL);
}

/* One heartbeat about version; its status, and in *error the refusal's text */
static long heartbeat(struct daemon *d, const char *id, const char *token, const char *version, char *error,
		      size_t len)
{
	json_t *ans = NULL;
	long st = h_dev_post(d, "/device/v1/reports", token,
			   json_pack("{s[{ss ss ss si}]}", "reports", "device", id, "version", version, "event",
				     "heartbeat", "uptime_s", 600),
			   &ans);
	const char *e = httpc_json_error(ans);
	snprintf(error, len, "%s", e ? e : "");
	if (st == 200 && json_integer_value(json_object_get(ans, "accepted")) != 1)
		st = -1;
	json_decref(ans);
	return st;
}

/* The committed value of otacd_fleet_NAME for fw VERSION, waiting up to
 * 10 s for it to equal want (it is committed by the writer's next round). */
static double committed(struct daemon *d, const char *name, const char *version, double want)
{
	char *key = xasprintf("otacd_fleet_%s{product=\"fw\",version=\"%s\",cohort=\"*\"} ", name, version);
	double v = -1;
	for (int waited = 0; waited <= 10000; waited += 50) {
		size_t len;
		char *text = h_device_metrics(d, &len), *p = strstr(text, key);
		v = p ? strtod(p + strlen(key), NULL) : 0;
		free(text);
		if (v == want)
			break;
		h_msleep(50);
	}
	free(key);
	return v;
}

static void a_late_report_about_the_previous_version_is_accepted_and_moves_nothing(void **state)
{
	struct daemon d;
	char **c, err[512];

	(void)state;
	h_init(&d, NULL);
	assert_int_equal(h_start(&d, NULL), 0);
	c = h_register_devices(&d, "dev", 1);
	assert_int_equal(checkin(&d, "dev-0000", c[0], "1.0.0"), 200);
	assert_int_equal(heartbeat(&d, "dev-0000", c[0], "1.0.0", err, sizeof(err)), 200);
	/* updated: it checks in with 1.0.1 before its last 1.0.0 heartbeat arrives */
	assert_int_equal(checkin(&d, "dev-0000", c[0], "1.0.1"), 200);
	assert_true(committed(&d, "devices", "1.0.1", 1) == 1);
	assert_int_equal(heartbeat(&d, "dev-0000", c[0], "1.0.0", err, sizeof(err)), 200);
	/* the device still runs 1.0.1 once committed */
	assert_true(committed(&d, "devices", "1.0.1", 1) == 1);
	assert_true(committed(&d, "devices", "1.0.0", 0) == 0);
	assert_int_equal(heartbeat(&d, "dev-0000", c[0], "1.0.1", err, sizeof(err)), 200);

	/* a version it never ran stays refused */
	assert_int_equal(heartbeat(&d, "dev-0000", c[0], "0.9.0", err, sizeof(err)), 400);
	assert_non_null(strstr(err, "was not offered 0.9.0"));
	/* and only the one just before: after 1.0.2, 1.0.0 is refused */
	assert_int_equal(checkin(&d, "dev-0000", c[0], "1.0.2"), 200);
	assert_int_equal(heartbeat(&d, "dev-0000", c[0], "1.0.1", err, sizeof(err)), 200);
	assert_int_equal(heartbeat(&d, "dev-0000", c[0], "1.0.0", err, sizeof(err)), 400);
	assert_non_null(strstr(err, "was not offered 1.0.0"));
	assert_true(committed(&d, "devices", "1.0.2", 1) == 1);
	assert_true(committed(&d, "devices", "1.0.1", 0) == 0);

	free(c[0]);
	free(c);
	h_cleanup(&d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(a_late_report_about_the_previous_version_is_accepted_and_moves_nothing),
	};
	httpc_global_init();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
