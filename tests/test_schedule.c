/*
 * test_schedule.c - scheduled pipelines (issue 17): the cron parser on
 * good and hostile input, its next/previous slot search, the config check
 * that refuses a bad schedule at start with its key path, and a real otacd
 * at --time-scale firing an hourly schedule from a real git repository,
 * SIGKILLed right after a fire and restarted: every slot ran exactly once.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include "../orchestrator/sched/cron.h"
#include "githarness.h"
#include "harness.h"

/* 2026-01-01T00:00:00Z, a Thursday */
#define JAN1 INT64_C(1767225600000)
#define MIN INT64_C(60000)
#define HOUR (60 * MIN)
#define DAY (24 * HOUR)

static struct cron_expr parse_ok(const char *text)
{
	struct cron_expr c;
	char err[256] = "";
	if (cron_parse(&c, text, strlen(text), err, sizeof(err)) < 0)
		fail_msg("'%s' refused: %s", text, err);
	return c;
}

static void refused(const char *text, size_t len, const char *why)
{
	struct cron_expr c;
	char err[256] = "";
	assert_int_equal(cron_parse(&c, text, len, err, sizeof(err)), OTA_EINVAL);
	if (!strstr(err, why))
		fail_msg("'%.*s': expected '%s' in '%s'", (int)len, text, why, err);
}

static void parses_fields_into_the_right_bits(void **state)
{
	struct cron_expr c = parse_ok("*/15 9-17/4 1,15 jan-Mar,DEC mon-fri");
	(void)state;
	assert_true(c.minute == ((1ULL << 0) | (1ULL << 15) | (1ULL << 30) | (1ULL << 45)));
	assert_int_equal(c.hour, (1u << 9) | (1u << 13) | (1u << 17));
	assert_int_equal(c.mday, (1u << 1) | (1u << 15));
	assert_int_equal(c.month, (1u << 1) | (1u << 2) | (1u << 3) | (1u << 12));
	assert_int_equal(c.wday, 0x3e);
	assert_false(c.mday_star);
	c = parse_ok("  5/20 0 * * 7\t");
	assert_true(c.minute == ((1ULL << 5) | (1ULL << 25) | (1ULL << 45)));
	assert_int_equal(c.wday, 1); /* 7 is Sunday */
	assert_true(c.mday_star);
}

static void refuses_hostile_and_malformed_expressions(void **state)
{
	char big[CRON_MAX_LEN + 2];
	(void)state;
	refused("", 0, "expected 5 fields");
	refused("* * * *", 7, "got 4");
	refused("* * * * * *", 11, "more than 5 fields");
	refused("60 * * * *", 10, "field 1 (minute): 60 is out of range 0-59");
	refused("* 24 * * *", 10, "field 2 (hour): 24 is out of range");
	refused("* * 0 * *", 9, "field 3 (day of month): 0 is out of range 1-31");
	refused("* * * 13 *", 10, "field 4 (month)");
	refused("* * * * 8", 9, "field 5 (day of week): 8 is out of range 0-7");
	refused("5-1 * * * *", 11, "end is before its start");
	refused("*/0 * * * *", 11, "a step must be");
	refused("*/61 * * * *", 12, "a step must be");
	refused("*/ * * * *", 10, "a step must be");
	refused("1,,2 * * * *", 12, "expected a number");
	refused("1, * * * *", 10, "expected a number");
	refused("-1 * * * *", 10, "expected a number");
	refused("100 * * * *", 11, "more than 2 digits");
	refused("99999999999999999999 * * * *", 28, "more than 2 digits");
	refused("@daily", 6, "macros");
	refused("0 0 ? * *", 9, "expected a number");
	refused("0 0 L * *", 9, "expected a number");
	refused("0 0 * * 5#2", 11, "unexpected '#'");
	refused("0 0 * * monday", 14, "unexpected 'd'");
	refused("0 0 * foo *", 11, "expected a number or a name");
	refused("0 0 * * *\n", 10, "unexpected byte 0x0a");
	refused("0 0\0 * * *", 9, "unexpected byte 0x00");
	refused("0 0 * * \xff", 9, "expected a number");
	memset(big, ' ', sizeof(big));
	memcpy(big, "0 0 * * *", 9);
	refused(big, sizeof(big), "longer than");
}

static void next_and_previous_slots_walk_the_calendar_in_utc(void **state)
{
	struct cron_expr c = parse_ok("0 3 * * *");
	(void)state;
	assert_true(cron_next(&c, JAN1) == JAN1 + 3 * HOUR);
	assert_true(cron_next(&c, JAN1 + 3 * HOUR) == JAN1 + DAY + 3 * HOUR);   /* strictly after */
	assert_true(cron_next(&c, JAN1 + 3 * HOUR - 1) == JAN1 + 3 * HOUR);
	assert_true(cron_prev(&c, JAN1 + 3 * HOUR) == JAN1 + 3 * HOUR);         /* at or before */
	assert_true(cron_prev(&c, JAN1 + 3 * HOUR - 1) == JAN1 - DAY + 3 * HOUR);
	/* Vixie rule: both day fields restricted -> either matches.  The 13th
	 * of January 2026 is a Tuesday; the first Friday is the 2nd. */
	c = parse_ok("0 0 13 * fri");
	assert_true(cron_next(&c, JAN1) == JAN1 + 1 * DAY);
	c = parse_ok("0 0 13 * *");
	assert_true(cron_next(&c, JAN1) == JAN1 + 12 * DAY);
	/* Feb 29: 2028 is the next leap year */
	c = parse_ok("30 12 29 feb *");
	assert_true(cron_next(&c, JAN1) == INT64_C(1835440200000)); /* 2028-02-29T12:30Z */
	/* never */
	c = parse_ok("0 0 30 2 *");
	assert_true(cron_next(&c, JAN1) == -1);
	assert_true(cron_prev(&c, JAN1) == -1);
	/* every minute, across a year boundary */
	c = parse_ok("* * * * *");
	assert_true(cron_next(&c, JAN1 - 1) == JAN1);
	assert_true(cron_prev(&c, JAN1 - 1) == JAN1 - MIN);
}

/* ---- the daemon --------------------------------------------------------- */

#define REPO "acme/fw"

static const char pipeline[] =
	"name: nightly\n"
	"stages:\n"
	"  - name: build\n"
	"    steps:\n"
	"      - run: 'echo \"ref=$OTACD_REF\"'\n";

struct env {
	struct daemon d;
	struct gh_origin git;
};

static void setup_with(struct env *g, const char *before, const char *schedules, const char *dev_file,
		       const char *dev_text)
{
	struct buf out = BUF_INIT;
	char *config;

	memset(g, 0, sizeof(*g));
	gh_origin_init(&g->git);
	gh_origin_create(&g->git);
	h_git_commit_file(g->git.work, ".otacd/pipeline.yml", pipeline, "add pipeline");
	h_git_push(g->git.work, "main");
	if (dev_file) {
		assert_int_equal(h_git(g->git.work, &out, "checkout -q -b dev"), 0);
		h_git_commit_file(g->git.work, dev_file, dev_text, "a dev-only file");
		h_git_push(g->git.work, "dev");
	}
	config = xasprintf("%slease: 3s\nheartbeat: 300ms\nrepositories:\n"
			   "  - name: " REPO "\n    url: \"%s\"\n    schedules:\n%s", before, g->git.origin, schedules);
	h_init(&g->d, config);
	free(config);
	buf_release(&out);
}

static void setup(struct env *g, const char *schedules)
{
	setup_with(g, "", schedules, NULL, NULL);
}

static void teardown(struct env *g)
{
	h_cleanup(&g->d);
	gh_origin_release(&g->git);
}

/* Poll until `sql` counts at least n (generous: the machine may be loaded). */
static int64_t wait_count(struct env *g, const char *sql, int64_t n)
{
	int64_t v = 0;
	for (int i = 0; i < 1200 && (v = h_sql_int(&g->d, sql)) < n; i++)
		h_msleep(100);
	if (v < n)
		fail_msg("%s: %lld, wanted %lld", sql, (long long)v, (long long)n);
	return v;
}

#define SCHED_RUNS "SELECT COUNT(*) FROM runs WHERE trigger = 'schedule' AND state = 'passed'"
#define SCHED_DELIVERIES "SELECT COUNT(*) FROM deliveries WHERE provider = 'schedule'"

/* Every schedule delivery is one slot, on the hour, with exactly one run. */
static void assert_each_slot_ran_once(struct env *g)
{
	assert_int_equal(h_sql_int(&g->d, "SELECT COUNT(*) FROM deliveries WHERE provider = 'schedule'"
					  " AND CAST(substr(delivery, 8) AS INTEGER) % 3600000 != 0"), 0);
	assert_int_equal(h_sql_int(&g->d, "SELECT COUNT(*) FROM (SELECT d.id FROM deliveries d JOIN runs r"
					  " ON r.delivery_id = d.id WHERE d.provider = 'schedule'"
					  " GROUP BY d.id HAVING COUNT(*) != 1)"), 0);
	assert_int_equal(h_sql_int(&g->d, "SELECT COUNT(*) FROM (SELECT substr(delivery, 8) FROM deliveries"
					  " WHERE provider = 'schedule' GROUP BY 1 HAVING COUNT(*) > 1)"), 0);
	/* the stored last slot is the newest fired slot */
	assert_int_equal(h_sql_int(&g->d, "SELECT COUNT(*) FROM schedule_fires f JOIN deliveries d"
					  " ON d.id = f.delivery_id WHERE d.delivery = 'hourly@' || f.last_slot"), 1);
}

static void schedule_fires_in_otacd_time_and_never_twice_after_sigkill(void **state)
{
	const char *const args[] = { "--local-agents", "1", "--time-scale", "3600", NULL };
	struct env g;
	int64_t before, after;
	(void)state;

	setup(&g, "      - { name: hourly, cron: \"0 * * * *\", ref: main }\n");
	assert_int_equal(h_start(&g.d, args), 0);
	/* an otacd hour is one real second: two slots fire and run */
	wait_count(&g, SCHED_RUNS, 2);
	assert_int_equal(h_sql_int(&g.d, "SELECT COUNT(*) FROM runs WHERE trigger = 'schedule' AND ref != 'refs/heads/main'"), 0);
	/* main is protected by default: its schedule's runs are too */
	assert_int_equal(h_sql_int(&g.d, "SELECT COUNT(*) FROM runs WHERE trigger = 'schedule' AND protected != 1"), 0);
	/* SIGKILL right after a fire: the moment a new delivery is recorded */
	before = h_sql_int(&g.d, SCHED_DELIVERIES);
	wait_count(&g, SCHED_DELIVERIES, before + 1);
	h_kill(&g.d, SIGKILL);
	after = h_sql_int(&g.d, SCHED_DELIVERIES);
	assert_int_equal(h_start(&g.d, args), 0);
	/* the pending delivery is resumed and later slots keep firing */
	wait_count(&g, SCHED_RUNS, after + 1);
	h_kill(&g.d, SIGTERM);
	assert_each_slot_ran_once(&g);
	teardown(&g);
}

#define LAST_SLOT "SELECT MAX(CAST(substr(delivery, 8) AS INTEGER)) FROM deliveries WHERE provider = 'schedule'"

static void a_missed_slot_fires_once_at_start(void **state)
{
	const char *const args[] = { "--local-agents", "1", "--time-scale", "3600", NULL };
	struct env g;
	char sql[256];
	int64_t last;
	(void)state;

	/* otacd time runs on while otacd is down (clock.h): 3 real seconds
	 * down at scale 3600 miss at least 3 hourly slots */
	setup(&g, "      - { name: hourly, cron: \"0 * * * *\" }\n");
	assert_int_equal(h_start(&g.d, args), 0);
	wait_count(&g, SCHED_RUNS, 1);
	h_kill(&g.d, SIGKILL);
	last = h_sql_int(&g.d, LAST_SLOT);
	h_msleep(3000);
	assert_int_equal(h_start(&g.d, args), 0);
	snprintf(sql, sizeof(sql), "SELECT COUNT(*) FROM deliveries WHERE provider = 'schedule'"
		 " AND CAST(substr(delivery, 8) AS INTEGER) >= %lld", (long long)(last + 3 * 3600000));
	wait_count(&g, sql, 1);
	h_kill(&g.d, SIGTERM);
	/* the catch-up fired the latest missed slot, none of the earlier ones */
	snprintf(sql, sizeof(sql), "SELECT COUNT(*) FROM deliveries WHERE provider = 'schedule'"
		 " AND CAST(substr(delivery, 8) AS INTEGER) BETWEEN %lld AND %lld",
		 (long long)last + 1, (long long)(last + 3 * 3600000 - 1));
	assert_int_equal(h_sql_int(&g.d, sql), 0);
	assert_each_slot_ran_once(&g);
	teardown(&g);
}

/* A schedule runs its ref with that ref's trust: on an unprotected branch,
 * no secrets (docs/security.md), and its own pipeline file. */
static void a_schedule_of_an_unprotected_branch_gets_no_secrets(void **state)
{
	const char *const args[] = { "--local-agents", "1", "--time-scale", "3600", NULL };
	static const char nightly[] =
		"name: nightly-dev\n"
		"stages:\n"
		"  - name: build\n"
		"    secrets: [DEPLOY_KEY]\n"
		"    steps:\n"
		"      - run: 'test -z \"$DEPLOY_KEY\" && echo no-secret'\n";
	struct env g;
	(void)state;

	setup_with(&g, "secrets: { DEPLOY_KEY: \"s3cret-value\" }\n",
		   "      - { name: devly, cron: \"0 * * * *\", ref: dev, pipeline: .otacd/nightly.yml }\n",
		   ".otacd/nightly.yml", nightly);
	assert_int_equal(h_start(&g.d, args), 0);
	wait_count(&g, "SELECT COUNT(*) FROM runs WHERE trigger = 'schedule' AND state IN ('passed', 'failed')", 1);
	h_kill(&g.d, SIGTERM);
	assert_int_equal(h_sql_int(&g.d, "SELECT COUNT(*) FROM runs WHERE trigger = 'schedule' AND (ref != 'refs/heads/dev'"
					  " OR pipeline != 'nightly-dev' OR protected != 0)"), 0);
	assert_int_equal(h_sql_int(&g.d, "SELECT COUNT(*) FROM runs WHERE trigger = 'schedule' AND state = 'failed'"), 0);
	teardown(&g);
}

static void a_bad_schedule_is_refused_at_start_with_its_key_path(void **state)
{
	struct env g;
	struct buf out = BUF_INIT;
	char *bin = h_bin("otacd");
	(void)state;

	setup(&g, "      - { name: nightly, cron: \"0 3 * * *\" }\n      - { name: broken, cron: \"0 25 * * *\" }\n");
	assert_int_not_equal(h_sh(&out, "%s --config %s --state-dir %s/st 2>&1", bin, g.d.config, g.d.dir), 0);
	assert_non_null(strstr(out.ptr, "repositories[" REPO "].schedules[1].cron: '0 25 * * *': field 2 (hour): 25 is out of range"));
	teardown(&g);
	free(bin);
	buf_release(&out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(parses_fields_into_the_right_bits),
		cmocka_unit_test(refuses_hostile_and_malformed_expressions),
		cmocka_unit_test(next_and_previous_slots_walk_the_calendar_in_utc),
		cmocka_unit_test(a_bad_schedule_is_refused_at_start_with_its_key_path),
		cmocka_unit_test(schedule_fires_in_otacd_time_and_never_twice_after_sigkill),
		cmocka_unit_test(a_missed_slot_fires_once_at_start),
		cmocka_unit_test(a_schedule_of_an_unprotected_branch_gets_no_secrets),
	};
	cmocka_set_test_filter(getenv("X_ONLY"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
