/*
 * test_gate.c - rollout gates: the confidence sequences (known cases and
 * the anytime property by simulation, against a re-checked Wilson
 * interval), gate specs and their errors, verdicts from fleet aggregates
 * and from single values, and the providers against real servers: a
 * libmicrohttpd JSON server for the http provider and a real Prometheus
 * (/usr/bin/prometheus) scraping a libmicrohttpd /metrics page.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <signal.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/wait.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <cmocka.h>
#include <jansson.h>
#include <microhttpd.h>

#include "../common/httpc.h"
#include "../common/util.h"
#include "../orchestrator/gate.h"
#include "../orchestrator/gatestat.h"
#include "harness.h"

/* ---- helpers -------------------------------------------------------------- */

static uint64_t splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static double uniform(uint64_t *s)
{
	return (double)(splitmix64(s) >> 11) * 0x1.0p-53;
}

/* Parse a gate from JSON text; fails the test when it does not parse. */
static void spec(struct gate_spec *g, const char *name, const char *json)
{
	char err[512];
	json_error_t jerr;
	json_t *o = json_loads(json, 0, &jerr);
	assert_non_null(o);
	if (gate_spec_parse(o, name, g, err, sizeof(err)) != 0)
		fail_msg("gate spec %s: %s", json, err);
	json_decref(o);
}

/* The error message of a spec that must not parse. */
static void spec_err(const char *json, char *err, size_t errlen)
{
	struct gate_spec g;
	json_t *o = json_loads(json, 0, NULL);
	assert_non_null(o);
	assert_int_equal(gate_spec_parse(o, "crash_free", &g, err, errlen), OTA_EINVAL);
	assert_string_equal(ota_error_last(), err);
	gate_spec_release(&g);
	json_decref(o);
}

/* ---- confidence sequences ------------------------------------------------- */

static void prop_cs_is_everything_without_data(void **state)
{
	double lo, hi;
	(void)state;
	gatestat_prop_cs(0, 0, 0.05, 1, 1, &lo, &hi);
	assert_true(lo == 0 && hi == 1);
	/* invalid input: the whole range, never a claim */
	gatestat_prop_cs(5, 3, 0.05, 1, 1, &lo, &hi);
	assert_true(lo == 0 && hi == 1);
	gatestat_prop_cs(1, 3, 0, 1, 1, &lo, &hi);
	assert_true(lo == 0 && hi == 1);
}

static void prop_cs_ends_at_zero_and_one_for_extreme_counts(void **state)
{
	double lo, hi;
	(void)state;
	gatestat_prop_cs(0, 500, 0.01, 1, 1, &lo, &hi);
	assert_true(lo == 0);
	assert_true(hi > 0 && hi < 0.05);
	gatestat_prop_cs(500, 500, 0.01, 1, 1, &lo, &hi);
	assert_true(hi == 1);
	assert_true(lo > 0.95 && lo < 1);
}

static void prop_cs_contains_the_estimate_and_its_ends_sit_on_the_threshold(void **state)
{
	static const int64_t cases[][2] = { { 1, 10 }, { 5, 95 }, { 2, 5000 }, { 37, 40 },
					    { 500, 1000 }, { 12, 1000000 } };
	(void)state;
	for (size_t i = 0; i < OTA_ARRAY_SIZE(cases); i++) {
		int64_t k = cases[i][0], n = cases[i][1];
		double lo, hi, mle = (double)k / (double)n, t = log(1 / 0.01);
		gatestat_prop_cs(k, n, 0.01, 1, 19, &lo, &hi);
		assert_true(lo < mle && mle < hi);
		/* the ends are where the martingale crosses 1/alpha */
		assert_float_equal(gatestat_prop_log_martingale(k, n, lo, 1, 19), t, 1e-6);
		assert_float_equal(gatestat_prop_log_martingale(k, n, hi, 1, 19), t, 1e-6);
		/* just inside is inside */
		assert_true(gatestat_prop_log_martingale(k, n, lo + (mle - lo) * 1e-3, 1, 19) < t);
	}
}

static void prop_cs_shrinks_as_devices_report(void **state)
{
	double prev = 2;
	(void)state;
	for (int64_t n = 100; n <= 1000000; n *= 10) {
		double lo, hi;
		gatestat_prop_cs(n / 100, n, 0.01, 1, 1, &lo, &hi);
		assert_true(hi - lo < prev);
		prev = hi - lo;
	}
	assert_true(prev < 0.002);
}

static void prop_cs_lower_bound_leaves_zero_with_enough_events(void **state)
{
	double lo, hi;
	(void)state;
	gatestat_prop_cs(50, 5000, 0.01, 1, 1, &lo, &hi);
	assert_true(lo > 0.004 && lo < 0.01);
	assert_true(hi > 0.01 && hi < 0.02);
}

static void prop_cs_is_wider_than_the_fixed_sample_wilson_interval(void **state)
{
	double lo, hi, wlo, whi;
	(void)state;
	gatestat_prop_cs(30, 1000, 0.05, 1, 1, &lo, &hi);
	gatestat_wilson(30, 1000, 0.05, &wlo, &whi);
	assert_true(lo < wlo && hi > whi);
}

static void wilson_interval_matches_the_textbook(void **state)
{
	double lo, hi;
	(void)state;
	assert_float_equal(gatestat_normal_quantile(0.975), 1.959964, 1e-6);
	assert_float_equal(gatestat_normal_quantile(0.005), -2.575829, 1e-6);
	gatestat_wilson(5, 100, 0.05, &lo, &hi);
	assert_float_equal(lo, 0.02154, 1e-4);
	assert_float_equal(hi, 0.11175, 1e-4);
	gatestat_wilson(0, 0, 0.05, &lo, &hi);
	assert_true(lo == 0 && hi == 1);
}

/*
 * The anytime property: 2,000 streams of Bernoulli(0.01), checked after
 * every batch of 20 observations up to 5,000.  The confidence sequence may
 * exclude the true p in at most about alpha of the streams over all 250
 * looks; the Wilson interval re-checked the same way excludes it far more
 * often - which is why gates do not use it.
 */
static void confidence_sequence_stays_valid_when_checked_after_every_batch(void **state)
{
	const double p = 0.01, alpha = 0.05;
	const int streams = 2000, batch = 20, nmax = 5000;
	uint64_t seed = 20240601;
	int seq_miss = 0, wilson_miss = 0, seq_uniform_miss = 0;
	(void)state;

	for (int s = 0; s < streams; s++) {
		int64_t k = 0;
		int seq_out = 0, wilson_out = 0, uni_out = 0;
		for (int n = batch; n <= nmax; n += batch) {
			double lo, hi;
			for (int i = 0; i < batch; i++)
				k += uniform(&seed) < p;
			if (!seq_out) {
				gatestat_prop_cs(k, n, alpha, 1, 19, &lo, &hi);
				seq_out = p < lo || p > hi;
			}
			if (!uni_out) {
				gatestat_prop_cs(k, n, alpha, 1, 1, &lo, &hi);
				uni_out = p < lo || p > hi;
			}
			if (!wilson_out) {
				gatestat_wilson(k, n, alpha, &lo, &hi);
				wilson_out = p < lo || p > hi;
			}
			if (seq_out && wilson_out && uni_out)
				break;
		}
		seq_miss += seq_out;
		seq_uniform_miss += uni_out;
		wilson_miss += wilson_out;
	}
	print_message("ever excluded p: sequential Beta(1,19) %.4f, Beta(1,1) %.4f, "
		      "re-checked Wilson %.4f (alpha %.2f)\n", (double)seq_miss / streams,
		      (double)seq_uniform_miss / streams, (double)wilson_miss / streams, alpha);
	assert_true((double)seq_miss / streams <= alpha + 0.01);
	assert_true((double)seq_uniform_miss / streams <= alpha + 0.01);
	assert_true(wilson_miss > 2 * seq_miss);
	assert_true((double)wilson_miss / streams > 2 * alpha);
}

static void poisson_cs_brackets_the_rate(void **state)
{
	double lo, hi;
	(void)state;
	gatestat_poisson_cs(100, 10000, 0.01, 1, 100, &lo, &hi);
	assert_true(lo < 0.01 && hi > 0.01);
	assert_true(lo > 0.006 && hi < 0.016);
	gatestat_poisson_cs(0, 10000, 0.01, 1, 100, &lo, &hi);
	assert_true(lo == 0 && hi > 0 && hi < 0.002);
	gatestat_poisson_cs(3, 0, 0.01, 1, 100, &lo, &hi);
	assert_true(lo == 0 && isinf(hi));
}

static void rate_ratio_of_equal_rates_contains_one(void **state)
{
	double lo, hi;
	(void)state;
	/* canary 1% of the exposure, same rate as the baseline */
	gatestat_rate_ratio_cs(20, 2000, 2000, 200000, 0.01, &lo, &hi);
	assert_true(lo < 1 && hi > 1);
	gatestat_rate_ratio_cs(1000, 100000, 10000, 1000000, 0.01, &lo, &hi);
	assert_true(lo < 1 && hi > 1);
	assert_true(lo > 0.8 && hi < 1.25);
}

static void rate_ratio_proves_a_fivefold_canary_rate(void **state)
{
	double lo, hi;
	(void)state;
	gatestat_rate_ratio_cs(100, 2000, 2000, 200000, 0.01, &lo, &hi);
	assert_true(lo > 1);
	assert_true(lo < 5 && hi > 5);
}

static void rate_ratio_is_unbounded_when_undefined(void **state)
{
	double lo, hi;
	(void)state;
	gatestat_rate_ratio_cs(0, 100, 0, 100, 0.01, &lo, &hi);
	assert_true(lo == 0 && isinf(hi));
	gatestat_rate_ratio_cs(5, 0, 5, 100, 0.01, &lo, &hi);
	assert_true(lo == 0 && isinf(hi));
	/* no baseline events: the ratio may be anything above its lower end */
	gatestat_rate_ratio_cs(30, 100, 0, 100, 0.01, &lo, &hi);
	assert_true(lo > 1 && isinf(hi));
}

/* ---- specs ---------------------------------------------------------------- */

static void spec_parses_percentages_strings_and_defaults(void **state)
{
	struct gate_spec g;
	(void)state;
	spec(&g, "crash_free", "{\"metric\":\"crash_rate\",\"max\":\"0.5%\",\"min_devices\":\"200\","
	     "\"baseline\":\"previous\"}");
	assert_string_equal(g.name, "crash_free");
	assert_int_equal(g.metric_id, GATE_METRIC_CRASH_RATE);
	assert_int_equal(g.kind, GATE_KIND_PROPORTION);
	assert_int_equal(g.provider, GATE_PROVIDER_BUILTIN);
	assert_true(g.has_max && !g.has_min);
	assert_float_equal(g.max, 0.005, 1e-12);
	assert_int_equal(g.min_devices, 200);
	assert_true(g.baseline && g.has_max_increase);
	assert_float_equal(g.max_increase, GATE_DEFAULT_MAX_INCREASE, 1e-12);
	assert_float_equal(g.alpha, 0.01, 1e-12);
	assert_int_equal(g.failure_limit, 3);
	assert_int_equal(g.error_limit, 4);
	gate_spec_release(&g);

	spec(&g, "battery", "{\"provider\":\"prometheus\",\"query\":\"avg(x)\",\"max_increase\":\"10%\"}");
	assert_int_equal(g.provider, GATE_PROVIDER_PROMETHEUS);
	assert_int_equal(g.kind, GATE_KIND_VALUE);
	assert_float_equal(g.max_increase, 0.1, 1e-12);
	assert_true(g.baseline);
	gate_spec_release(&g);

	/* a query alone implies the provider called prometheus; a named
	 * provider without a query is an http one */
	spec(&g, "q", "{\"query\":\"up\",\"min\":1}");
	assert_int_equal(g.provider, GATE_PROVIDER_PROMETHEUS);
	assert_string_equal(g.provider_name, "prometheus");
	gate_spec_release(&g);
	spec(&g, "h", "{\"provider\":\"metrics\",\"json_path\":\"a.b[0].c\",\"max\":3,"
	     "\"failure_limit\":1,\"error_limit\":\"2\",\"alpha\":0.05}");
	assert_int_equal(g.provider, GATE_PROVIDER_HTTP);
	assert_int_equal(g.failure_limit, 1);
	assert_int_equal(g.error_limit, 2);
	assert_float_equal(g.alpha, 0.05, 1e-12);
	gate_spec_release(&g);
}

static void spec_errors_name_the_gate_and_the_problem(void **state)
{
	char err[512];
	(void)state;
	spec_err("{\"metric\":\"crash_rate\",\"maxx\":0.005}", err, sizeof(err));
	assert_string_equal(err, "gate 'crash_free': unknown key 'maxx' (did you mean 'max'?)");
	spec_err("{\"metric\":\"crash_rat\",\"max\":0.005}", err, sizeof(err));
	assert_string_equal(err, "gate 'crash_free': unknown metric 'crash_rat' (did you mean "
			    "'crash_rate'?)");
	spec_err("{\"metric\":\"crash_rate\"}", err, sizeof(err));
	assert_non_null(strstr(err, "needs one of max, min, max_increase"));
	spec_err("{\"metric\":\"crash_rate\",\"max\":5}", err, sizeof(err));
	assert_non_null(strstr(err, "max must be a number between 0 and 1 for a proportion metric"));
	spec_err("{\"metric\":\"boot_success_rate\",\"min\":\"lots\"}", err, sizeof(err));
	assert_non_null(strstr(err, "min must be a number"));
	spec_err("{\"metric\":\"crash_rate\",\"max_increase\":\"-10%\"}", err, sizeof(err));
	assert_non_null(strstr(err, "max_increase must be a positive number"));
	spec_err("{\"metric\":\"crash_rate\",\"max\":0.1,\"baseline\":\"last\"}", err, sizeof(err));
	assert_non_null(strstr(err, "baseline must be 'previous'"));
	spec_err("{\"metric\":\"crash_rate\",\"max\":0.1,\"alpha\":2}", err, sizeof(err));
	assert_non_null(strstr(err, "alpha must be"));
	spec_err("{\"metric\":\"crash_rate\",\"max\":0.1,\"min_devices\":-3}", err, sizeof(err));
	assert_non_null(strstr(err, "min_devices must be a whole number"));
	spec_err("{\"url\":\"gopher://127.0.0.1:25/x\",\"max\":1}", err, sizeof(err));
	assert_non_null(strstr(err, "gate 'crash_free': 'url' is not accepted in a pipeline"));
	spec_err("{\"provider\":\"http://x\",\"max\":1}", err, sizeof(err));
	assert_non_null(strstr(err, "must be builtin or the name of a provider"));
	spec_err("{\"json_path\":\"a.b\",\"max\":1}", err, sizeof(err));
	assert_non_null(strstr(err, "json_path needs provider: NAME"));
	spec_err("{\"provider\":\"m\",\"json_path\":\"a..b\",\"max\":1}", err, sizeof(err));
	assert_non_null(strstr(err, "json_path 'a..b' is not a path"));
	spec_err("{\"max\":1}", err, sizeof(err));
	assert_non_null(strstr(err, "needs a metric"));
	spec_err("{\"metric\":\"crash_rate\",\"min\":0.5,\"max\":0.1}", err, sizeof(err));
	assert_non_null(strstr(err, "min 0.5 is above max 0.1"));
	spec_err("[1,2]", err, sizeof(err));
	assert_non_null(strstr(err, "gate 'crash_free': must be a mapping"));
	{
		struct gate_spec g;
		assert_int_equal(gate_spec_parse(NULL, "nope", &g, err, sizeof(err)), OTA_EINVAL);
		assert_string_equal(err, "gate 'nope': not defined in the pipeline's gates:");
		gate_spec_release(&g);
	}
}

/* ---- verdicts on fleet aggregates ----------------------------------------- */

static void gate_fails_when_canary_crash_rate_exceeds_bound_before_hold_and_min_devices(void **state)
{
	struct gate_spec g;
	struct gate_eval e;
	struct fleet_agg canary = { .devices = 100, .reporting = 100, .crashed = 5, .crashes = 7,
				    .device_hours = 600 };
	(void)state;
	spec(&g, "crash_free", "{\"metric\":\"crash_rate\",\"max\":0.005,\"min_devices\":200}");
	assert_int_equal(gate_judge(&g, &canary, NULL, 0, &e), 0);
	assert_int_equal(e.verdict, GATE_FAIL);
	assert_int_equal(e.n, 100);
	assert_float_equal(e.estimate, 0.05, 1e-12);
	assert_true(e.lo > 0.005 && e.lo < 0.05 && e.hi > 0.05);
	assert_non_null(strstr(e.reason, "crash_rate 0.05 ["));
	assert_non_null(strstr(e.reason, "> max 0.005 with 100 devices: fail"));
	gate_spec_release(&g);
}

static void gate_is_inconclusive_with_few_devices_and_no_crashes(void **state)
{
	struct gate_spec g;
	struct gate_eval e;
	struct fleet_agg canary = { .devices = 40, .reporting = 40, .device_hours = 240 };
	(void)state;
	spec(&g, "crash_free", "{\"metric\":\"crash_rate\",\"max\":0.005}");
	gate_judge(&g, &canary, NULL, 1, &e);
	assert_int_equal(e.verdict, GATE_INCONCLUSIVE);
	assert_true(e.lo == 0 && e.hi > 0.005);
	assert_non_null(strstr(e.reason, "(min_devices 100): inconclusive"));
	gate_spec_release(&g);
}

static void gate_passes_a_clean_canary_only_after_the_hold(void **state)
{
	struct gate_spec g;
	struct gate_eval e;
	struct fleet_agg canary = { .devices = 5000, .reporting = 5000, .crashed = 2, .crashes = 2,
				    .device_hours = 30000 };
	(void)state;
	spec(&g, "crash_free", "{\"metric\":\"crash_rate\",\"max\":0.005}");
	gate_judge(&g, &canary, NULL, 1, &e);
	assert_int_equal(e.verdict, GATE_PASS);
	assert_true(e.hi < 0.005);
	assert_non_null(strstr(e.reason, "< max 0.005 with 5000 devices: pass"));
	gate_judge(&g, &canary, NULL, 0, &e);
	assert_int_equal(e.verdict, GATE_INCONCLUSIVE);
	assert_non_null(strstr(e.reason, "hold not elapsed"));
	gate_spec_release(&g);
}

static void boot_success_gate_judges_a_minimum(void **state)
{
	struct gate_spec g;
	struct gate_eval e;
	struct fleet_agg good = { .devices = 10000, .boot_ok = 9990, .boot_fail = 4, .reverts = 6 };
	struct fleet_agg bad = { .devices = 200, .boot_ok = 190, .boot_fail = 4, .reverts = 6 };
	(void)state;
	spec(&g, "boots", "{\"metric\":\"boot_success_rate\",\"min\":0.995}");
	gate_judge(&g, &good, NULL, 1, &e);
	assert_int_equal(e.verdict, GATE_PASS);
	assert_int_equal(e.n, 10000);
	assert_true(e.lo > 0.995);
	gate_judge(&g, &bad, NULL, 0, &e);
	assert_int_equal(e.verdict, GATE_FAIL);
	assert_true(e.hi < 0.995);
	assert_non_null(strstr(e.reason, "< min 0.995"));
	gate_spec_release(&g);
}

static void gate_fails_a_canary_crashing_far_more_than_the_baseline(void **state)
{
	struct gate_spec g;
	struct gate_eval e;
	/* absolute crash_rate is fine, crashes per device-hour are 6x the baseline */
	struct fleet_agg canary = { .devices = 1000, .reporting = 1000, .crashed = 1, .crashes = 60,
				    .device_hours = 1000 };
	struct fleet_agg base = { .devices = 10000, .reporting = 10000, .crashed = 10,
				  .crashes = 100, .device_hours = 10000 };
	(void)state;
	spec(&g, "crash_free", "{\"metric\":\"crash_rate\",\"max\":0.05,\"baseline\":\"previous\","
	     "\"min_devices\":10}");
	gate_judge(&g, &canary, &base, 0, &e);
	assert_int_equal(e.verdict, GATE_FAIL);
	assert_float_equal(e.ratio, 6, 1e-9);
	assert_true(e.ratio_lo > 1.5);
	assert_float_equal(e.baseline, 0.001, 1e-12);
	assert_float_equal(e.alpha, 0.005, 1e-12);  /* two conditions share alpha */
	assert_non_null(strstr(e.reason, "ratio to baseline 6 ["));
	assert_non_null(strstr(e.reason, "> 1.5 (max_increase 50%)"));
	gate_spec_release(&g);
}

static void gate_passes_a_canary_as_good_as_the_baseline(void **state)
{
	struct gate_spec g;
	struct gate_eval e;
	struct fleet_agg canary = { .devices = 10000, .reporting = 10000, .crashes = 1000,
				    .device_hours = 100000 };
	struct fleet_agg base = { .devices = 100000, .reporting = 100000, .crashes = 10000,
				  .device_hours = 1000000 };
	(void)state;
	spec(&g, "crashes", "{\"metric\":\"crashes_per_device_hour\",\"max_increase\":\"20%\"}");
	gate_judge(&g, &canary, &base, 1, &e);
	assert_int_equal(e.verdict, GATE_PASS);
	assert_true(e.ratio_lo < 1 && e.ratio_hi < 1.2);
	/* without a baseline aggregate the comparison cannot pass */
	gate_judge(&g, &canary, NULL, 1, &e);
	assert_int_equal(e.verdict, GATE_INCONCLUSIVE);
	assert_non_null(strstr(e.reason, "no baseline"));
	gate_spec_release(&g);
}

static void crashes_per_device_hour_fails_against_an_absolute_max(void **state)
{
	struct gate_spec g;
	struct gate_eval e;
	struct fleet_agg canary = { .devices = 100, .reporting = 100, .crashes = 40,
				    .device_hours = 1000 };
	(void)state;
	spec(&g, "crashes", "{\"metric\":\"crashes_per_device_hour\",\"max\":0.01}");
	gate_judge(&g, &canary, NULL, 0, &e);
	assert_int_equal(e.verdict, GATE_FAIL);
	assert_true(e.lo > 0.01);
	gate_spec_release(&g);
}

static void battery_mean_is_judged_as_a_value_once_enough_devices_report(void **state)
{
	struct gate_spec g;
	struct gate_eval e;
	struct fleet_agg few = { .reporting = 10, .device_hours = 240, .battery_mah = 800 };
	struct fleet_agg many = { .reporting = 500, .device_hours = 12000, .battery_mah = 40000 };
	struct fleet_agg ok = { .reporting = 500, .device_hours = 12000, .battery_mah = 20000 };
	(void)state;
	spec(&g, "battery", "{\"metric\":\"battery_mah_per_day\",\"max\":50}");
	gate_judge(&g, &few, NULL, 1, &e);   /* 80 mAh/day but from 10 devices */
	assert_int_equal(e.verdict, GATE_INCONCLUSIVE);
	assert_true(e.breached);
	gate_judge(&g, &many, NULL, 0, &e);
	assert_int_equal(e.verdict, GATE_FAIL);
	assert_float_equal(e.estimate, 80, 1e-9);
	gate_judge(&g, &ok, NULL, 1, &e);
	assert_int_equal(e.verdict, GATE_PASS);
	gate_spec_release(&g);
}

static void external_value_fails_only_after_consecutive_breaches(void **state)
{
	struct gate_spec g;
	struct gate_eval e;
	(void)state;
	spec(&g, "battery", "{\"provider\":\"prometheus\",\"query\":\"x\",\"max\":50}");
	gate_judge_value(&g, 60, NAN, 0, 0, &e);
	assert_int_equal(e.verdict, GATE_INCONCLUSIVE);
	assert_true(e.breached);
	assert_non_null(strstr(e.reason, "breach 1 of 3"));
	gate_judge_value(&g, 60, NAN, 0, 2, &e);
	assert_int_equal(e.verdict, GATE_FAIL);
	gate_judge_value(&g, 40, NAN, 0, 0, &e);
	assert_int_equal(e.verdict, GATE_INCONCLUSIVE);
	assert_false(e.breached);
	gate_judge_value(&g, 40, NAN, 1, 0, &e);
	assert_int_equal(e.verdict, GATE_PASS);
	gate_judge_value(&g, NAN, NAN, 1, 0, &e);
	assert_int_equal(e.verdict, GATE_INCONCLUSIVE);
	assert_non_null(strstr(e.reason, "no data"));
	gate_spec_release(&g);
}

static void external_value_compares_with_its_baseline(void **state)
{
	struct gate_spec g;
	struct gate_eval e;
	(void)state;
	spec(&g, "battery", "{\"provider\":\"prometheus\",\"query\":\"x\",\"max_increase\":\"10%\","
	     "\"failure_limit\":1}");
	gate_judge_value(&g, 50, 40, 1, 0, &e);   /* +25% */
	assert_int_equal(e.verdict, GATE_FAIL);
	assert_float_equal(e.ratio, 1.25, 1e-12);
	gate_judge_value(&g, 42, 40, 1, 0, &e);   /* +5% */
	assert_int_equal(e.verdict, GATE_PASS);
	gate_judge_value(&g, 42, NAN, 1, 0, &e);  /* nothing to compare with */
	assert_int_equal(e.verdict, GATE_INCONCLUSIVE);
	gate_spec_release(&g);
}

static void evaluations_become_json_without_infinities(void **state)
{
	struct gate_spec g;
	struct gate_eval e;
	struct fleet_agg canary = { .devices = 100, .reporting = 100, .crashes = 30,
				    .device_hours = 100 };
	struct fleet_agg base = { .devices = 100, .reporting = 100, .crashes = 0,
				  .device_hours = 100 };
	json_t *j;
	char *text;
	(void)state;
	spec(&g, "crashes", "{\"metric\":\"crashes_per_device_hour\",\"baseline\":\"previous\"}");
	gate_judge(&g, &canary, &base, 1, &e);
	assert_int_equal(e.verdict, GATE_FAIL);
	j = gate_eval_to_json(&e);
	text = json_dumps(j, JSON_COMPACT);
	assert_non_null(text);   /* jansson refuses to dump inf/nan */
	assert_string_equal(json_string_value(json_object_get(j, "verdict")), "fail");
	assert_string_equal(json_string_value(json_object_get(j, "ratio_hi")), "inf");
	assert_true(json_is_null(json_object_get(j, "ratio")) ||
		    json_is_real(json_object_get(j, "ratio")));
	assert_int_equal(json_integer_value(json_object_get(j, "n")), 100);
	assert_string_equal(json_string_value(json_object_get(j, "reason")), e.reason);
	free(text);
	json_decref(j);
	gate_spec_release(&g);
}

/* ---- query templates and JSON paths --------------------------------------- */

static void queries_substitute_release_product_and_cohort(void **state)
{
	struct gate_vars v = { .release = "1.5.0", .version = "1.5.0", .product = "a\"b",
			       .cohort = "region=eu" };
	char *s;
	(void)state;
	s = gate_expand("avg(m{release=\"$release\",p=\"${product}\"}) $unknown $", &v,
			GATE_EXPAND_PROMQL);
	assert_string_equal(s, "avg(m{release=\"1.5.0\",p=\"a\\\"b\"}) $unknown $");
	free(s);
	s = gate_expand("http://h/m?c=$cohort&v=$version", &v, GATE_EXPAND_URL);
	assert_string_equal(s, "http://h/m?c=region%3Deu&v=1.5.0");
	free(s);
}

static void json_paths_follow_names_and_indexes(void **state)
{
	json_t *root = json_loads("{\"data\":{\"value\":1.5,\"s\":\"2.5\",\"n\":null,\"t\":true},"
				  "\"a\":{\"b\":[{\"c\":7},{\"c\":8}]}}", 0, NULL);
	json_t *num = json_loads("3", JSON_DECODE_ANY, NULL);
	double v;
	(void)state;
	assert_int_equal(gate_json_path_number(root, "data.value", &v), 0);
	assert_float_equal(v, 1.5, 0);
	assert_int_equal(gate_json_path_number(root, "$.data.s", &v), 0);
	assert_float_equal(v, 2.5, 0);
	assert_int_equal(gate_json_path_number(root, "a.b[1].c", &v), 0);
	assert_float_equal(v, 8, 0);
	assert_int_equal(gate_json_path_number(root, "a.b[2].c", &v), OTA_ENOTFOUND);
	assert_int_equal(gate_json_path_number(root, "data.n", &v), OTA_ENOTFOUND);
	assert_int_equal(gate_json_path_number(root, "data.t", &v), OTA_EINVAL);
	assert_int_equal(gate_json_path_number(root, "a.b[x]", &v), OTA_EINVAL);
	assert_int_equal(gate_json_path_number(num, NULL, &v), 0);
	assert_float_equal(v, 3, 0);
	json_decref(root);
	json_decref(num);
}

/* ---- a tiny HTTP server (libmicrohttpd) ----------------------------------- */

struct route {
	const char *path;
	unsigned status;
	const char *type;
	const char *body;
};

static enum MHD_Result serve(void *cls, struct MHD_Connection *conn, const char *url,
			     const char *method, const char *version, const char *upload,
			     size_t *upload_len, void **con_cls)
{
	const struct route *r = cls;
	struct MHD_Response *resp;
	enum MHD_Result ret;

	for (; r->path; r++)
		if (strcmp(r->path, url) == 0)
			break;
	if (!r->path) {
		resp = MHD_create_response_from_buffer(9, (void *)"not found", MHD_RESPMEM_PERSISTENT);
		ret = MHD_queue_response(conn, 404, resp);
	} else {
		resp = MHD_create_response_from_buffer(strlen(r->body), (void *)r->body,
						       MHD_RESPMEM_PERSISTENT);
		MHD_add_response_header(resp, "Content-Type", r->type);
		ret = MHD_queue_response(conn, r->status, resp);
	}
	MHD_destroy_response(resp);
	return ret;
}

static struct MHD_Daemon *serve_start(const struct route *routes, int *port)
{
	struct sockaddr_in sin;
	struct MHD_Daemon *d;
	const union MHD_DaemonInfo *info;

	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	sin.sin_port = 0;
	d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, 0, NULL, NULL,
			     serve, (void *)routes, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sin,
			     MHD_OPTION_END);
	assert_non_null(d);
	info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
	assert_non_null(info);
	*port = info->port;
	return d;
}

static const struct route json_routes[] = {
	{ "/v", 200, "application/json", "{\"data\":{\"value\":1.5}}" },
	{ "/deep", 200, "application/json", "{\"a\":{\"b\":[{\"c\":\"2.5\"}]}}" },
	{ "/null", 200, "application/json", "{\"data\":{\"value\":null}}" },
	{ "/text", 200, "text/plain", "this is not json" },
	{ "/boom", 500, "application/json", "{\"error\":\"down\"}" },
	{ NULL, 0, NULL, NULL },
};

static void http_provider_reads_a_number_at_a_json_path(void **state)
{
	struct gate_spec g;
	struct gate_vars vars = { .release = "1.5.0" };
	struct MHD_Daemon *d;
	char *url;
	double v;
	int port;
	(void)state;
	d = serve_start(json_routes, &port);

	url = xasprintf("http://127.0.0.1:%d/v", port);
	assert_int_equal(gate_query_http(url, "data.value", &v), 0);
	assert_float_equal(v, 1.5, 0);
	free(url);
	url = xasprintf("http://127.0.0.1:%d/deep", port);
	assert_int_equal(gate_query_http(url, "a.b[0].c", &v), 0);
	assert_float_equal(v, 2.5, 0);
	assert_int_equal(gate_query_http(url, "a.b[0].d", &v), OTA_ENOTFOUND);
	free(url);
	url = xasprintf("http://127.0.0.1:%d/null", port);
	assert_int_equal(gate_query_http(url, "data.value", &v), OTA_ENOTFOUND);
	assert_true(isnan(v));
	free(url);
	url = xasprintf("http://127.0.0.1:%d/text", port);
	assert_int_equal(gate_query_http(url, "data.value", &v), OTA_EINVAL);
	assert_non_null(strstr(ota_error_last(), "not JSON"));
	free(url);
	url = xasprintf("http://127.0.0.1:%d/boom", port);
	assert_int_equal(gate_query_http(url, "data.value", &v), OTA_ERROR);
	assert_non_null(strstr(ota_error_last(), "HTTP 500"));
	free(url);

	/* through the spec naming a configured provider, with $release in its URL */
	{
		json_t *providers = json_pack("{s{ss}}", "metrics", "kind", "http");
		url = xasprintf("http://127.0.0.1:%d/$release", port);
		json_object_set_new(json_object_get(providers, "metrics"), "url", json_string(url));
		free(url);
		spec(&g, "h", "{\"provider\":\"metrics\",\"json_path\":\"data.value\",\"max\":2}");
		vars.release = "v";
		assert_int_equal(gate_query(&g, providers, NULL, &vars, &v), 0);
		assert_float_equal(v, 1.5, 0);
		/* the run learns only "bad answer": no status, no address */
		vars.release = "boom";
		assert_int_equal(gate_query(&g, providers, NULL, &vars, &v), OTA_ERROR);
		assert_string_equal(ota_error_last(), "gate 'h': provider 'metrics' gave a bad answer");
		gate_spec_release(&g);
		/* a provider not in the config, or of the other kind */
		spec(&g, "h", "{\"provider\":\"nope\",\"json_path\":\"data.value\",\"max\":2}");
		assert_int_equal(gate_query(&g, providers, NULL, &vars, &v), OTA_ENOTFOUND);
		assert_non_null(strstr(ota_error_last(), "provider 'nope' is not defined in otacd's configuration"));
		gate_spec_release(&g);
		spec(&g, "h", "{\"provider\":\"metrics\",\"query\":\"up\",\"max\":2}");
		assert_int_equal(gate_provider_check(&g, providers, NULL), OTA_EINVAL);
		assert_non_null(strstr(ota_error_last(), "provider 'metrics' is an http provider"));
		gate_spec_release(&g);
		json_decref(providers);
	}
	MHD_stop_daemon(d);
}

static void http_provider_reports_an_unreachable_server(void **state)
{
	char *listen = h_free_listen(), *url;
	double v;
	(void)state;
	url = xasprintf("http://%s/v", listen);
	assert_true(gate_query_http(url, "data.value", &v) < 0);
	assert_true(isnan(v));
	{
		/* through a gate: "unreachable", without the address */
		struct gate_spec g;
		json_t *providers = json_pack("{s{ss ss}}", "metrics", "kind", "http", "url", url);
		spec(&g, "h", "{\"provider\":\"metrics\",\"max\":2}");
		assert_true(gate_query(&g, providers, NULL, NULL, &v) < 0);
		assert_string_equal(ota_error_last(), "gate 'h': provider 'metrics' unreachable");
		gate_spec_release(&g);
		json_decref(providers);
	}
	free(url);
	free(listen);
}

/* ---- a real Prometheus ---------------------------------------------------- */

static const struct route metric_routes[] = {
	{ "/metrics", 200, "text/plain; version=0.0.4",
	  "# TYPE battery_mah_per_day gauge\n"
	  "battery_mah_per_day{release=\"1.5.0\"} 42.5\n"
	  "battery_mah_per_day{release=\"1.4.0\"} 40\n" },
	{ NULL, 0, NULL, NULL },
};

struct prom {
	struct MHD_Daemon *target;
	pid_t pid;
	char *dir;
	char *url;
};

static const char *prometheus_path(void)
{
	const char *p = getenv("OTACD_PROMETHEUS");
	return p && *p ? p : "/usr/bin/prometheus";
}

static int prom_setup(void **state)
{
	struct prom *p = xcalloc(1, sizeof(*p));
	struct buf cfg = BUF_INIT;
	char *listen, *path, *a1, *a2, *a3, *logpath;
	int port;

	*state = p;
	if (access(prometheus_path(), X_OK) != 0)
		return 0;
	p->target = serve_start(metric_routes, &port);
	p->dir = h_tmpdir();
	buf_printf(&cfg, "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
		   "  evaluation_interval: 1s\nscrape_configs:\n  - job_name: fleet\n"
		   "    static_configs:\n      - targets: ['127.0.0.1:%d']\n", port);
	path = xasprintf("%s/prometheus.yml", p->dir);
	if (ota_write_file_atomic(path, cfg.ptr, cfg.len, 0644) < 0)
		return -1;
	listen = h_free_listen();
	p->url = xasprintf("http://%s", listen);
	/* everything the child needs is prepared before fork (the MHD thread
	 * runs: no malloc in the child) */
	a1 = xasprintf("--config.file=%s", path);
	a2 = xasprintf("--storage.tsdb.path=%s/data", p->dir);
	a3 = xasprintf("--web.listen-address=%s", listen);
	logpath = xasprintf("%s/prometheus.log", p->dir);
	p->pid = fork();
	if (p->pid == 0) {
		int fd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		h_child_dies_with_test();
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execl(prometheus_path(), "prometheus", a1, a2, a3, "--log.level=warn", (char *)NULL);
		_exit(127);
	}
	free(a1);
	free(a2);
	free(a3);
	free(logpath);
	free(listen);
	free(path);
	buf_release(&cfg);
	return p->pid > 0 ? 0 : -1;
}

static int prom_teardown(void **state)
{
	struct prom *p = *state;
	if (p->pid > 0) {
		int st;
		kill(p->pid, SIGTERM);
		waitpid(p->pid, &st, 0);
	}
	if (p->target)
		MHD_stop_daemon(p->target);
	if (p->dir) {
		struct buf out = BUF_INIT;
		h_sh(&out, "rm -rf '%s'", p->dir);
		buf_release(&out);
	}
	free(p->dir);
	free(p->url);
	free(p);
	return 0;
}

static void prometheus_provider_queries_a_real_prometheus(void **state)
{
	struct prom *p = *state;
	const char *q = "battery_mah_per_day{release=\"1.5.0\"}";
	struct gate_spec g;
	struct gate_eval e;
	struct gate_vars vars = { .release = "1.5.0" };
	double v = NAN;
	int rc = -1, st;

	if (!p->pid) {
		print_message("skipped: %s is not installed (apt-get install prometheus)\n",
			      prometheus_path());
		skip();
	}
	/* Scrapes every second; wait (up to 60 s on a slow, sanitized run)
	 * until the first sample is in. */
	for (int i = 0; i < 240 && rc != 0; i++) {
		if (waitpid(p->pid, &st, WNOHANG) == p->pid) {
			struct buf out = BUF_INIT;
			p->pid = 0;
			h_sh(&out, "cat '%s/prometheus.log'", p->dir);
			fail_msg("prometheus exited: %s", buf_cstr(&out));
		}
		rc = gate_query_prometheus(p->url, q, &v);
		if (rc != 0)
			h_msleep(250);
	}
	if (rc != 0)
		fail_msg("no sample from prometheus: %s", ota_error_last());
	assert_float_equal(v, 42.5, 0);

	/* a series that does not exist is "no data", not zero */
	assert_int_equal(gate_query_prometheus(p->url, "battery_mah_per_day{release=\"9.9.9\"}", &v),
			 OTA_ENOTFOUND);
	assert_true(isnan(v));
	/* Prometheus's own error text comes back */
	assert_int_equal(gate_query_prometheus(p->url, "sum(battery_mah_per_day", &v), OTA_EINVAL);
	assert_non_null(strstr(ota_error_last(), "bad_data"));
	assert_non_null(strstr(ota_error_last(), "parse error"));
	/* several series are refused; a scalar is fine */
	assert_int_equal(gate_query_prometheus(p->url, "battery_mah_per_day", &v), OTA_EINVAL);
	assert_non_null(strstr(ota_error_last(), "2 series"));
	assert_int_equal(gate_query_prometheus(p->url, "scalar(battery_mah_per_day{release=\"1.4.0\"})",
					       &v), 0);
	assert_float_equal(v, 40, 0);

	/* the spec's query with $release, judged against its limit */
	spec(&g, "battery", "{\"provider\":\"prometheus\","
	     "\"query\":\"avg(battery_mah_per_day{release=\\\"$release\\\"})\",\"max\":50}");
	assert_int_equal(gate_query(&g, NULL, p->url, &vars, &v), 0); /* prometheus_url is `prometheus` */
	assert_float_equal(v, 42.5, 0);
	gate_judge_value(&g, v, NAN, 1, 0, &e);
	assert_int_equal(e.verdict, GATE_PASS);
	gate_spec_release(&g);

	/* a provider named in the server config */
	{
		json_t *providers = json_pack("{s{ss ss}}", "prom", "kind", "prometheus", "url", p->url);
		spec(&g, "battery", "{\"provider\":\"prom\","
		     "\"query\":\"avg(battery_mah_per_day{release=\\\"$release\\\"})\",\"max\":50}");
		v = NAN;
		assert_int_equal(gate_query(&g, providers, NULL, &vars, &v), 0);
		assert_float_equal(v, 42.5, 0);
		/* a bad query: the run sees "bad answer", Prometheus's text stays in the daemon's log */
		gate_spec_release(&g);
		spec(&g, "battery", "{\"provider\":\"prom\",\"query\":\"sum(x\",\"max\":50}");
		assert_int_equal(gate_query(&g, providers, NULL, &vars, &v), OTA_EINVAL);
		assert_string_equal(ota_error_last(), "gate 'battery': provider 'prom' gave a bad answer");
		gate_spec_release(&g);
		json_decref(providers);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(prop_cs_is_everything_without_data),
		cmocka_unit_test(prop_cs_ends_at_zero_and_one_for_extreme_counts),
		cmocka_unit_test(prop_cs_contains_the_estimate_and_its_ends_sit_on_the_threshold),
		cmocka_unit_test(prop_cs_shrinks_as_devices_report),
		cmocka_unit_test(prop_cs_lower_bound_leaves_zero_with_enough_events),
		cmocka_unit_test(prop_cs_is_wider_than_the_fixed_sample_wilson_interval),
		cmocka_unit_test(wilson_interval_matches_the_textbook),
		cmocka_unit_test(confidence_sequence_stays_valid_when_checked_after_every_batch),
		cmocka_unit_test(poisson_cs_brackets_the_rate),
		cmocka_unit_test(rate_ratio_of_equal_rates_contains_one),
		cmocka_unit_test(rate_ratio_proves_a_fivefold_canary_rate),
		cmocka_unit_test(rate_ratio_is_unbounded_when_undefined),
		cmocka_unit_test(spec_parses_percentages_strings_and_defaults),
		cmocka_unit_test(spec_errors_name_the_gate_and_the_problem),
		cmocka_unit_test(gate_fails_when_canary_crash_rate_exceeds_bound_before_hold_and_min_devices),
		cmocka_unit_test(gate_is_inconclusive_with_few_devices_and_no_crashes),
		cmocka_unit_test(gate_passes_a_clean_canary_only_after_the_hold),
		cmocka_unit_test(boot_success_gate_judges_a_minimum),
		cmocka_unit_test(gate_fails_a_canary_crashing_far_more_than_the_baseline),
		cmocka_unit_test(gate_passes_a_canary_as_good_as_the_baseline),
		cmocka_unit_test(crashes_per_device_hour_fails_against_an_absolute_max),
		cmocka_unit_test(battery_mean_is_judged_as_a_value_once_enough_devices_report),
		cmocka_unit_test(external_value_fails_only_after_consecutive_breaches),
		cmocka_unit_test(external_value_compares_with_its_baseline),
		cmocka_unit_test(evaluations_become_json_without_infinities),
		cmocka_unit_test(queries_substitute_release_product_and_cohort),
		cmocka_unit_test(json_paths_follow_names_and_indexes),
		cmocka_unit_test(http_provider_reads_a_number_at_a_json_path),
		cmocka_unit_test(http_provider_reports_an_unreachable_server),
		cmocka_unit_test_setup_teardown(prometheus_provider_queries_a_real_prometheus,
						prom_setup, prom_teardown),
	};
	int rc;

	httpc_global_init();
	rc = cmocka_run_group_tests_name("gate", tests, NULL, NULL);
	httpc_global_cleanup();
	return rc;
}
