/*
 * test_flags.c - feature flags (issue 17, orchestrator/flags/flags.h)
 * against a real otacd, real otactl and a real otacd-fleetsim (core engine):
 *
 *  - the sticky bucket: SHA-256(flag ":" device) as sha256sum computes it,
 *    raising a percentage only adds devices, shares within 5 sigma, and
 *    two flags sample different devices;
 *  - otactl flags set | ls, audited, delivered in check-in answers with
 *    their cohort; bad input refused with a message and nothing changed;
 *  - a good flag walks through its steps; a bad flag (fleetsim's
 *    --flag-crash makes the devices that have it crash) is halted at its
 *    first step and rolled back by its gate: devices get it off again,
 *    and the firmware they run stays.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <math.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../device/otadev.h"
#include "../orchestrator/db/db.h"
#include "../orchestrator/flags/flags.h"
#include "../orchestrator/flags/flags_int.h"
#include "../orchestrator/store.h"
#include "devharness.h"
#include "harness.h"
#include "pgcluster.h"

#define VIEWER_TOKEN "viewer-token-0123456789abcdef"

/* ---- the bucket ---------------------------------------------------------- */

static void flag_buckets_are_sha256_sticky_and_even(void **state)
{
	struct buf out = BUF_INIT;
	unsigned long long v = 0;
	int n = 20000, in10 = 0, in25 = 0, both = 0, lost = 0;

	(void)state;
	/* the documented formula, computed by another implementation */
	assert_int_equal(h_sh(&out, "printf '%%s' 'dark-mode:dev-0042' | sha256sum | cut -c1-16"), 0);
	v = strtoull(out.ptr, NULL, 16);
	assert_int_equal(flags_bucket("dark-mode", "dev-0042"), (uint32_t)(v % 10000));
	buf_release(&out);

	for (int i = 0; i < n; i++) {
		char id[32];
		uint32_t a, b;
		snprintf(id, sizeof(id), "dev-%06d", i);
		a = flags_bucket("dark-mode", id);
		b = flags_bucket("new-radio", id);
		assert_true(a < 10000 && b < 10000);
		assert_int_equal(a, flags_bucket("dark-mode", id)); /* sticky */
		in10 += a < 1000;
		in25 += a < 2500;
		lost += a < 1000 && !(a < 2500); /* raising 10 % -> 25 % drops nobody */
		both += a < 1000 && b < 1000;
	}
	assert_int_equal(lost, 0);
	/* binomial shares within 5 standard deviations */
	assert_true(fabs(in10 - 0.10 * n) < 5 * sqrt(n * 0.10 * 0.90));
	assert_true(fabs(in25 - 0.25 * n) < 5 * sqrt(n * 0.25 * 0.75));
	/* independent flags: 10 % of one flag's 10 % */
	assert_true(fabs(both - 0.01 * n) < 5 * sqrt(n * 0.01 * 0.99));
}

/* ---- the storage layer: SQLite and PostgreSQL ------------------------------ */

/*
 * Every statement of orchestrator/flags/ prepares on both backends (with
 * migration 17 applied by store_open), and a flag written and decided with
 * them reads back through flags_list, so a dialect problem fails here
 * rather than in production.
 */
static void flag_statements(struct store *s)
{
	const char *const all[] = { flags_sql_count, flags_sql_upsert, flags_sql_list, flags_sql_decide,
				    flags_sql_current };
	struct db *db = store_conn(s);
	struct db_stmt *st;
	json_t *list;

	for (size_t i = 0; i < OTA_ARRAY_SIZE(all); i++) {
		if (db_prepare(db, &st, all[i]) < 0)
			fail_msg("%s: %s", all[i], ota_error_last());
		db_finalize(st);
	}
	assert_int_equal(db_begin(db), 0);
	st = store_q(s, flags_sql_upsert);
	assert_non_null(st);
	db_bind_text(st, 1, "fw");
	db_bind_text(st, 2, "dark-mode");
	db_bind_text(st, 3, "true");
	db_bind_text(st, 4, "{}");
	db_bind_text(st, 5, "holding");
	db_bind_int64(st, 6, 2500);
	db_bind_text(st, 7, "{\"plan\":[{\"bp\":2500},{\"bp\":10000}]}");
	db_bind_int64(st, 8, 1000);
	db_bind_int64(st, 9, 2000);
	db_bind_text(st, 10, "why");
	db_bind_int64(st, 11, 5);
	assert_int_equal(db_run(st), 0);
	st = store_q(s, flags_sql_decide);
	db_bind_text(st, 1, "failed");
	db_bind_int64(st, 2, 0);
	db_bind_int64(st, 3, 0);
	db_bind_int64(st, 4, 1000);
	db_bind_int64(st, 5, 2000);
	db_bind_text(st, 6, "[]");
	db_bind_text(st, 7, "gate failed");
	db_bind_int64(st, 8, 6);
	db_bind_text(st, 9, "fw");
	db_bind_text(st, 10, "dark-mode");
	db_bind_int64(st, 11, 1);
	assert_int_equal(db_step(st), 0);
	assert_int_equal(db_changes(st), 1);
	db_reset(st);
	assert_int_equal(db_commit(db), 0);
	list = flags_list(s, "fw");
	assert_non_null(list);
	assert_int_equal(json_array_size(list), 1);
	assert_string_equal(json_string_value(json_object_get(json_array_get(list, 0), "state")), "failed");
	assert_int_equal(json_integer_value(json_object_get(json_array_get(list, 0), "seq")), 2);
	assert_int_equal(json_integer_value(json_object_get(json_array_get(list, 0), "steps")), 2);
	json_decref(list);
}

static void flag_statements_run_on_sqlite_and_postgresql(void **state)
{
	struct pgcluster pg;
	struct store *s = NULL;
	struct buf out = BUF_INIT;
	char *dir = h_tmpdir(), *path = xasprintf("%s/otacd.db", dir);
	int rc;

	(void)state;
	assert_int_equal(store_open(&s, path), 0);
	flag_statements(s);
	store_close(s);
	h_sh(&out, "rm -rf '%s'", dir);
	free(path);
	free(dir);
	buf_release(&out);
	rc = pgcluster_start(&pg, 0);
	if (rc == 1) {
		fprintf(stderr, "skipped: PostgreSQL's binaries are not installed\n");
		skip();
	}
	if (rc < 0)
		fail_msg("cannot start PostgreSQL: %s", ota_error_last());
	if (store_open(&s, pg.url) < 0)
		fail_msg("store_open %s: %s", pg.url, ota_error_last());
	flag_statements(s);
	store_close(s);
	pgcluster_stop(&pg);
}

/* ---- the device core ------------------------------------------------------- */

/*
 * libotadev (no heap, OTADEV_TOKENS jsmn tokens, OTADEV_IO_MAX bytes) reads
 * the largest answer otacd sends with flags: an offer with a delta patch
 * and revocations, plus FLAGS_PER_PRODUCT flags with the longest names and
 * string values; the offer is read as without flags and the flags object
 * is found for the application.
 */
static void the_device_core_reads_an_answer_with_every_flag(void **state)
{
	struct buf flags = BUF_INIT, ans = BUF_INIT;
	uint32_t tokens[OTADEV_TOKENS * 5];
	struct otadev_checkin c;
	char url[300];

	(void)state;
	memset(url, 'u', sizeof(url) - 1);
	url[sizeof(url) - 1] = 0;
	buf_printf(&flags, "{");
	for (int i = 0; i < FLAGS_PER_PRODUCT; i++)
		buf_printf(&flags, "%s\"%.*s%d\":\"%0*d\"", i ? "," : "", FLAGS_NAME_MAX - 1,
			   "flag-name-of-the-longest-length-", i, FLAGS_VALUE_MAX, i);
	buf_printf(&flags, "}");
	assert_true(flags.len <= FLAGS_ANSWER_MAX);
	buf_printf(&ans, "{\"now\":123,\"time_scale\":1,\"next_poll_ms\":600000,\"offer\":{\"release\":7,"
			 "\"version\":\"1.2.3\",\"security_counter\":2,\"image\":{\"url\":\"/%s\",\"size\":1000,"
			 "\"sha256\":\"%064d\",\"hardware\":\"mps2-an385\",\"min_bootloader\":\"1.0.0\"},"
			 "\"reason\":\"rollout\",\"delta\":{\"url\":\"/%s\",\"size\":10,\"sha256\":\"%064d\","
			 "\"base\":\"1.2.2\"}},\"revocations\":3,\"flags\":%s}",
		   url, 0, url, 0, buf_cstr(&flags));
	assert_true(ans.len < OTADEV_IO_MAX);
	assert_int_equal(otadev_checkin_parse(&c, ans.ptr, ans.len, tokens, OTADEV_TOKENS), 0);
	assert_true(c.has_offer);
	assert_string_equal(c.offer.version, "1.2.3");
	assert_int_equal(c.revocations, 3);
	assert_int_equal(c.flags_len, flags.len);
	assert_memory_equal(ans.ptr + c.flags_off, flags.ptr, flags.len);
	buf_release(&flags);
	buf_release(&ans);
}

/* ---- otactl flags set | ls, bad input ------------------------------------- */

static int64_t audit_count(struct daemon *d)
{
	return h_sql_int(d, "SELECT COUNT(*) FROM audit WHERE action LIKE 'flag%'");
}

static void refused(struct daemon *d, const char *args, const char *message)
{
	struct buf out = BUF_INIT;
	int64_t rows = h_sql_int(d, "SELECT COUNT(*) FROM flags"), audits = audit_count(d);
	char *before = h_sql_text(d, "SELECT COALESCE(group_concat(product || name || value || cohort || state || bp || seq, ';'), '')"
				     " FROM flags");
	char *after;

	assert_int_not_equal(h_otactl(d, &out, "%s", args), 0);
	if (!strstr(buf_cstr(&out), message))
		fail_msg("otactl %s: expected \"%s\" in: %s", args, message, buf_cstr(&out));
	assert_int_equal(h_sql_int(d, "SELECT COUNT(*) FROM flags"), rows);
	assert_int_equal(audit_count(d), audits);
	after = h_sql_text(d, "SELECT COALESCE(group_concat(product || name || value || cohort || state || bp || seq, ';'), '')"
			      " FROM flags");
	assert_string_equal(before, after);
	free(before);
	free(after);
	buf_release(&out);
}

static void otactl_flags_set_and_ls_are_audited_delivered_and_bad_input_changes_nothing(void **state)
{
	struct daemon d;
	struct buf out = BUF_INIT;
	char **creds;
	json_t *flags, *row;

	(void)state;
	h_init(&d, "tokens:\n  - { name: viewer, role: viewer, token: " VIEWER_TOKEN " }\n");
	assert_int_equal(h_start(&d, NULL), 0);
	creds = h_register_devices(&d, "dev", 2);

	/* no flags: the answer has no "flags" member */
	assert_null(h_checkin_flags(&d, "dev-0000", creds[0], "fw", NULL));

	assert_int_equal(h_otactl_checked(&d, &out, "flags set fw dark-mode on --reason 'ship it'"), 0);
	assert_non_null(strstr(buf_cstr(&out), "flag fw/dark-mode: on at 100.00%"));
	assert_int_equal(h_otactl_checked(&d, &out, "flags set fw radio-profile on --value eu-868"
						    " --cohort group=beta,lab --reason 'beta only'"), 0);
	assert_int_equal(h_otactl_checked(&d, &out, "flags ls fw"), 0);
	assert_non_null(strstr(buf_cstr(&out), "dark-mode"));
	assert_non_null(strstr(buf_cstr(&out), "radio-profile"));
	assert_non_null(strstr(buf_cstr(&out), "\"eu-868\""));
	assert_int_equal(h_otactl_checked(&d, &out, "audit"), 0);
	assert_non_null(strstr(buf_cstr(&out), "flag_set"));
	assert_non_null(strstr(buf_cstr(&out), "flag radio-profile"));
	assert_int_equal(audit_count(&d), 2);

	/* the controller publishes within a pass: poll for it */
	for (int i = 0; i < 100; i++) {
		flags = h_checkin_flags(&d, "dev-0000", creds[0], "fw", NULL);
		if (flags)
			break;
		h_msleep(100);
	}
	assert_non_null(flags);
	assert_true(json_is_true(json_object_get(flags, "dark-mode")));
	assert_true(json_is_false(json_object_get(flags, "radio-profile"))); /* not in the cohort */
	json_decref(flags);
	flags = h_checkin_flags(&d, "dev-0001", creds[1], "fw", json_pack("{ss}", "group", "beta"));
	assert_string_equal(json_string_value(json_object_get(flags, "radio-profile")), "eu-868");
	json_decref(flags);
	/* another product's devices see none of these */
	assert_null(h_checkin_flags(&d, "dev-0000", creds[0], "other", NULL));

	/* off again */
	assert_int_equal(h_otactl_checked(&d, &out, "flags set fw dark-mode off --reason 'enough'"), 0);
	row = h_flag_row(&d, "fw", "dark-mode");
	assert_string_equal(json_string_value(json_object_get(row, "state")), "off");
	assert_int_equal(json_integer_value(json_object_get(row, "bp")), 0);
	json_decref(row);
	for (int i = 0; i < 100; i++) {
		flags = h_checkin_flags(&d, "dev-0000", creds[0], "fw", NULL);
		if (json_is_false(json_object_get(flags, "dark-mode")))
			break;
		json_decref(flags);
		flags = NULL;
		h_msleep(100);
	}
	assert_non_null(flags);
	json_decref(flags);

	/* the trust boundary: refused with the field named, nothing stored */
	/* a viewer may read flags but not change them: 403, nothing written */
	{
		int64_t audits = audit_count(&d);
		char *before = h_sql_text(&d, "SELECT group_concat(name || state || bp || seq, ';') FROM flags");
		char *after;
		json_t *ls = NULL;

		assert_int_equal(h_call_as(&d, VIEWER_TOKEN, "GET", "/api/v1/flags?product=fw", NULL, &ls), 200);
		json_decref(ls);
		json_t *set = json_pack("{ss ss ss ss}", "product", "fw", "name", "dark-mode", "state", "on",
					"reason", "viewer");
		json_t *roll = json_pack("{ss ss ss}", "product", "fw", "name", "sneaky", "reason", "viewer");

		assert_int_equal(h_call_as(&d, VIEWER_TOKEN, "POST", "/api/v1/flags", set, NULL), 403);
		assert_int_equal(h_call_as(&d, VIEWER_TOKEN, "POST", "/api/v1/flags/rollout", roll, NULL), 403);
		json_decref(set);
		json_decref(roll);
		after = h_sql_text(&d, "SELECT group_concat(name || state || bp || seq, ';') FROM flags");
		assert_string_equal(before, after);
		assert_int_equal(audit_count(&d), audits);
		free(before);
		free(after);
	}
	refused(&d, "flags set fw 'Dark Mode' on --reason x", "name: 1..32 characters");
	refused(&d, "flags set fw dark-mode maybe --reason x", "state: \"on\" or \"off\"");
	refused(&d, "flags set fw dark-mode on", "--reason is required");
	refused(&d, "flags set fw dark-mode on --value 'a b' --reason x", "value: only characters");
	refused(&d, "flags set fw dark-mode on --value 0123456789012345678901234567890123456789 --reason x",
		"value: a string of 1..32 characters");
	refused(&d, "flags set fw dark-mode on --cohort 'gr oup=beta' --reason x", "cohort.gr oup");
	refused(&d, "flags rollout fw dark-mode --steps 10:1h --reason x", "gates: 1..8 gates");
	refused(&d, "flags rollout fw dark-mode --steps 10:1h --gate c:crash_rate\\<=0.01 --reason x",
		"crashes_per_device_hour or battery_mah_per_day");
	refused(&d, "flags rollout fw dark-mode --steps 0:1h --gate c:crashes_per_device_hour\\<=0.05 --reason x",
		"steps[0].percent must be a number in (0, 100]");
	refused(&d, "flags rollout fw dark-mode --steps 50:1h,10:1h --gate c:crashes_per_device_hour\\<=0.05 --reason x",
		"steps only add devices");
	refused(&d, "flags rollout fw dark-mode --steps 10:soon --gate c:crashes_per_device_hour\\<=0.05 --reason x",
		"hold");
	refused(&d, "flags rollout fw dark-mode --steps 10:1h --gate c:nonsense\\<=1 --reason x", "gates: ");
	/* a product carries at most FLAGS_PER_PRODUCT flags */
	for (int i = 2; i < FLAGS_PER_PRODUCT; i++)
		assert_int_equal(h_otactl_checked(&d, &out, "flags set fw extra-%d on --reason fill", i), 0);
	refused(&d, "flags set fw one-too-many on --reason x", "the most a check-in answer carries");
	/* the answer with every flag stays within libotadev's bounds */
	flags = h_checkin_flags(&d, "dev-0001", creds[1], "fw", json_pack("{ss}", "group", "beta"));
	assert_int_equal(json_object_size(flags), FLAGS_PER_PRODUCT);
	json_decref(flags);

	free(creds[0]);
	free(creds[1]);
	free(creds);
	buf_release(&out);
	h_cleanup(&d);
}

/* ---- rollouts through a simulated fleet ----------------------------------- */

/* row's key is want, or the test fails showing the whole row (its evals). */
static void expect_int(const json_t *row, const char *key, json_int_t want)
{
	if (json_integer_value(json_object_get(row, key)) != want) {
		char *text = json_dumps(row, JSON_INDENT(1));
		fail_msg("%s: %" JSON_INTEGER_FORMAT " (want %" JSON_INTEGER_FORMAT "): %s", key,
			 json_integer_value(json_object_get(row, key)), want, text);
	}
}

static void a_bad_flag_halts_at_its_first_step_and_rolls_back_while_a_good_one_walks_through(void **state)
{
	static const char steady[] = "{\"default\": {\"crash_rate\": 0, \"boot_fail_rate\": 0, \"revert_rate\": 0},"
				     " \"silent\": 0, \"flaky\": 0}";
	const char *const args[] = { "--time-scale", "1200", NULL };
	struct daemon d;
	struct buf out = BUF_INIT;
	const char *const sim_args[] = { "--devices", "200", "--seed", "11", "--duration", "600", "--flag", "good-flag",
					 "--flag-crash", "bad-flag", NULL };
	struct h_fleetsim sim;
	char **creds;
	json_t *row, *st, *flags;

	(void)state;
	h_init(&d, "poll_interval: 15m\n");
	assert_int_equal(h_start(&d, args), 0);
	h_fleetsim_start(&sim, &d, steady, sim_args);
	/* a fleet that has been running: otacd credits a device's crashes
	 * from a budget its uptime fills (0.25 an hour, fleet_report.c), so
	 * a fresh device's first crashes count only hours later */
	h_msleep(6 * 3600 * 1000 / 1200);
	/* both through the same steps and gate: devices reporting more than
	 * 0.05 crashes per hour while they carry the flag */
	assert_int_equal(h_otactl_checked(&d, &out, "flags rollout fw good-flag --steps 25:3h,100:2h"
						    " --max-extension 12h --gate crash_free:crashes_per_device_hour"
						    "\\<=0.05,min_devices=10 --reason 'new ui'"), 0);
	assert_int_equal(h_otactl_checked(&d, &out, "flags rollout fw bad-flag --steps 25:3h,100:2h"
						    " --max-extension 12h --gate crash_free:crashes_per_device_hour"
						    "\\<=0.05,min_devices=10 --reason 'new radio'"), 0);
	assert_non_null(strstr(buf_cstr(&out), "holding at 25.00%"));

	/* the bad flag: failed at its first step, exposure 0, audited */
	h_flag_wait(&d, "bad-flag", "failed", 240);
	row = h_flag_row(&d, "fw", "bad-flag");
	expect_int(row, "step", 0);
	expect_int(row, "bp", 0);
	assert_non_null(strstr(json_string_value(json_object_get(row, "reason")), "rolled back at step 1/2"));
	json_decref(row);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM audit WHERE action = 'flag_rollback'"
				       " AND actor = 'flags-controller' AND detail LIKE '%bad-flag%'"),
			 1);
	/* the good flag: through both steps to on at 100 % */
	h_flag_wait(&d, "good-flag", "on", 300);
	row = h_flag_row(&d, "fw", "good-flag");
	expect_int(row, "step", 1);
	expect_int(row, "bp", 10000);
	json_decref(row);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM audit WHERE action = 'flag_step'"
				       " AND detail LIKE '%good-flag%'"),
			 2);

	/* devices get the bad flag off again: a device of ours, and (after a
	 * few poll intervals) every simulated device */
	creds = h_register_devices(&d, "probe", 1);
	flags = h_checkin_flags(&d, "probe-0000", creds[0], "fw", NULL);
	assert_true(json_is_false(json_object_get(flags, "bad-flag")));
	assert_true(json_is_true(json_object_get(flags, "good-flag")));
	json_decref(flags);
	free(creds[0]);
	free(creds);
	h_msleep(4000); /* 80 otacd minutes: over five poll intervals */
	st = h_fleetsim_stop(&sim);
	assert_true(json_integer_value(json_object_get(st, "flag_turned_on")) > 0);
	assert_int_equal(json_integer_value(json_object_get(st, "flag_turned_off")),
			 json_integer_value(json_object_get(st, "flag_turned_on")));
	assert_int_equal(json_integer_value(json_object_get(json_object_get(st, "flags_on"), "bad-flag")), 0);
	assert_int_equal(json_integer_value(json_object_get(json_object_get(st, "flags_on"), "good-flag")), 200);
	/* the firmware stays: nothing installed, no release rolled back */
	assert_int_equal(json_integer_value(json_object_get(st, "installed")), 0);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM audit WHERE action NOT LIKE 'flag%'"), 0);
	json_decref(st);

	buf_release(&out);
	h_cleanup(&d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(flag_buckets_are_sha256_sticky_and_even),
		cmocka_unit_test(the_device_core_reads_an_answer_with_every_flag),
		cmocka_unit_test(flag_statements_run_on_sqlite_and_postgresql),
		cmocka_unit_test(otactl_flags_set_and_ls_are_audited_delivered_and_bad_input_changes_nothing),
		cmocka_unit_test(a_bad_flag_halts_at_its_first_step_and_rolls_back_while_a_good_one_walks_through),
	};
	cmocka_set_test_filter(getenv("X_ONLY"));
	return cmocka_run_group_tests_name("flags", tests, NULL, NULL);
}
