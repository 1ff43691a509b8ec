/*
 * gate.c - gate specs, verdicts and metric providers; see gate.h and
 * docs/gates.md.
 *
 * A spec is parsed once from the pipeline's `gates:` mapping into struct
 * gate_spec, with every number normalised ("10%" -> 0.1) and every mistake
 * reported with the gate's name.  Judging is pure: gate_judge turns the
 * fleet aggregates into counts, asks gatestat for confidence sequences at
 * alpha / (number of conditions) each (Bonferroni, so the gate as a whole
 * keeps alpha), and combines the conditions: any proven breach fails, all
 * proven compliant (plus hold and sample size) passes, anything else is
 * inconclusive.  gate_judge_value applies the consecutive-breach rule to
 * single numbers.  The providers are blocking HTTP calls (libcurl through
 * httpc) parsed with jansson; callers run them on a worker thread.
 */
#include "gate.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <string.h>

#include "../common/httpc.h"
#include "../common/log.h"
#include "../common/util.h"
#include "gatestat.h"

/* ---- names -------------------------------------------------------------- */

static const char *const metric_names[] = {
	[GATE_METRIC_EXTERNAL] = "value",
	[GATE_METRIC_CRASH_RATE] = "crash_rate",
	[GATE_METRIC_BOOT_SUCCESS_RATE] = "boot_success_rate",
	[GATE_METRIC_REVERT_RATE] = "revert_rate",
	[GATE_METRIC_CRASHES_PER_DEVICE_HOUR] = "crashes_per_device_hour",
	[GATE_METRIC_BATTERY_MAH_PER_DAY] = "battery_mah_per_day",
};

static const char *const builtin_metrics[] = {
	"crash_rate", "boot_success_rate", "revert_rate", "crashes_per_device_hour",
	"battery_mah_per_day",
};

static const char *const gate_keys[] = {
	"metric", "provider", "query", "url", "json_path", "max", "min", "max_increase",
	"baseline", "min_devices", "alpha", "failure_limit", "error_limit",
};

static int provider_name_valid(const char *s)
{
	size_t n = strlen(s);
	return n > 0 && n <= 64 && strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") == n;
}

int gate_metric_lookup(const char *name)
{
	for (size_t i = 1; i < OTA_ARRAY_SIZE(metric_names); i++)
		if (strcmp(name, metric_names[i]) == 0)
			return (int)i;
	return -1;
}

const char *gate_verdict_name(enum gate_verdict v)
{
	switch (v) {
	case GATE_PASS: return "pass";
	case GATE_FAIL: return "fail";
	default: return "inconclusive";
	}
}

/* Evaluations since the start, by verdict (any rollout controller thread
 * counts; /metrics reads). */
static _Atomic uint64_t g_verdicts[3];

void gate_verdict_count(enum gate_verdict v)
{
	if ((unsigned)v < OTA_ARRAY_SIZE(g_verdicts))
		atomic_fetch_add(&g_verdicts[v], 1);
}

uint64_t gate_verdicts_total(enum gate_verdict v)
{
	return (unsigned)v < OTA_ARRAY_SIZE(g_verdicts) ? atomic_load(&g_verdicts[v]) : 0;
}

/* ---- spec parsing ------------------------------------------------------- */

static int spec_error(char *err, size_t errlen, const char *name, const char *fmt, ...)
	OTA_PRINTF(4, 5);

static int spec_error(char *err, size_t errlen, const char *name, const char *fmt, ...)
{
	char msg[400];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (err && errlen)
		snprintf(err, errlen, "gate '%s': %s", name, msg);
	return ota_error_set(OTA_EINVAL, "gate '%s': %s", name, msg);
}

/*
 * A JSON number, or a string holding one, optionally with a trailing "%"
 * (divided by 100).  0, or -1 when v is neither.
 */
static int parse_number(const json_t *v, double *out)
{
	const char *s;
	char *end;
	double d;

	if (json_is_number(v)) {
		*out = json_number_value(v);
		return isfinite(*out) ? 0 : -1;
	}
	if (!json_is_string(v))
		return -1;
	s = json_string_value(v);
	while (isspace((unsigned char)*s))
		s++;
	if (!*s)
		return -1;
	errno = 0;
	d = strtod(s, &end);
	if (end == s || errno || !isfinite(d))
		return -1;
	while (isspace((unsigned char)*end))
		end++;
	if (*end == '%') {
		d /= 100;
		end++;
		while (isspace((unsigned char)*end))
			end++;
	}
	if (*end)
		return -1;
	*out = d;
	return 0;
}

static int parse_int(const json_t *v, int64_t lo, int64_t hi, int64_t *out)
{
	double d;

	if (json_is_string(v) && strchr(json_string_value(v), '%'))
		return -1;
	if (parse_number(v, &d) < 0 || d != floor(d) || d < (double)lo || d > (double)hi)
		return -1;
	*out = (int64_t)d;
	return 0;
}

static int path_walk(const json_t *root, const char *path, int check_only, const json_t **out);

static char *opt_string(const json_t *obj, const char *key)
{
	const json_t *v = json_object_get(obj, key);
	return json_is_string(v) ? xstrdup(json_string_value(v)) : NULL;
}

/* A string key that must be a non-empty string when present. */
static int want_string(const json_t *obj, const char *key, const char *name, char *err,
		       size_t errlen)
{
	const json_t *v = json_object_get(obj, key);
	if (v && (!json_is_string(v) || !*json_string_value(v)))
		return spec_error(err, errlen, name, "%s must be a non-empty string", key);
	return 0;
}

static int parse_limit(const json_t *obj, const char *key, struct gate_spec *g, double *out,
		       int *has, char *err, size_t errlen)
{
	const json_t *v = json_object_get(obj, key);

	if (!v)
		return 0;
	if (parse_number(v, out) < 0)
		return spec_error(err, errlen, g->name, "%s must be a number (like 0.005 or \"0.5%%\")",
				  key);
	if (g->kind == GATE_KIND_PROPORTION && (*out < 0 || *out > 1))
		return spec_error(err, errlen, g->name,
				  "%s must be a number between 0 and 1 for a proportion metric (%s), "
				  "got %g", key, g->metric, *out);
	if (g->kind == GATE_KIND_RATE && *out < 0)
		return spec_error(err, errlen, g->name, "%s must not be negative for %s", key,
				  g->metric);
	*has = 1;
	return 0;
}

/* for_flag: the gate watches a feature flag (gate_spec_parse_flag): its
 * baseline is `off`, the product's devices without the flag; a release's
 * is `previous`.  Each refuses the other's with a message naming both. */
static int spec_parse(const json_t *obj, const char *name, int for_flag, struct gate_spec *out, char *err,
		      size_t errlen)
{
	const char *key, *s;
	const json_t *v;
	int64_t iv;
	int rc = 0;

	memset(out, 0, sizeof(*out));
	out->name = xstrdup(name ? name : "?");
	out->min_devices = GATE_DEFAULT_MIN_DEVICES;
	out->alpha = GATE_DEFAULT_ALPHA;
	out->failure_limit = GATE_DEFAULT_FAILURE_LIMIT;
	out->error_limit = GATE_DEFAULT_ERROR_LIMIT;
	if (err && errlen)
		err[0] = '\0';

	if (!obj) {
		rc = spec_error(err, errlen, out->name, "not defined in the pipeline's gates:");
		goto out;
	}
	if (!json_is_object(obj)) {
		rc = spec_error(err, errlen, out->name,
				"must be a mapping like { metric: crash_rate, max: 0.005 }");
		goto out;
	}
	json_object_foreach((json_t *)obj, key, v) {
		int known = 0;
		for (size_t i = 0; i < OTA_ARRAY_SIZE(gate_keys); i++)
			known |= strcmp(key, gate_keys[i]) == 0;
		if (!known) {
			const char *dym = ota_did_you_mean(key, gate_keys, OTA_ARRAY_SIZE(gate_keys));
			if (dym)
				rc = spec_error(err, errlen, out->name,
						"unknown key '%s' (did you mean '%s'?)", key, dym);
			else
				rc = spec_error(err, errlen, out->name, "unknown key '%s'", key);
			goto out;
		}
	}
	if ((rc = want_string(obj, "metric", out->name, err, errlen)) < 0 ||
	    (rc = want_string(obj, "provider", out->name, err, errlen)) < 0 ||
	    (rc = want_string(obj, "query", out->name, err, errlen)) < 0 ||
	    (rc = want_string(obj, "json_path", out->name, err, errlen)) < 0)
		goto out;
	if (json_object_get(obj, "url")) {
		/* Where the daemon sends requests is the server's decision (SSRF). */
		rc = spec_error(err, errlen, out->name,
				"'url' is not accepted in a pipeline: define the endpoint as a provider in "
				"otacd's configuration (providers:) and name it with provider: NAME");
		goto out;
	}
	out->metric = opt_string(obj, "metric");
	out->query = opt_string(obj, "query");
	out->json_path = opt_string(obj, "json_path");

	/* provider: builtin, or the name of a configured provider; its kind
	 * follows from the keys (query: prometheus, else http) and is checked
	 * against the configuration when the gate is queried or triggered */
	s = json_string_value(json_object_get(obj, "provider"));
	if (s && strcmp(s, "builtin") != 0) {
		if (!provider_name_valid(s)) {
			rc = spec_error(err, errlen, out->name,
					"provider '%s' must be builtin or the name of a provider in otacd's "
					"configuration (letters, digits, '_', '-')", s);
			goto out;
		}
		out->provider_name = xstrdup(s);
		out->provider = out->query ? GATE_PROVIDER_PROMETHEUS : GATE_PROVIDER_HTTP;
	} else if (!s && out->query) {
		out->provider_name = xstrdup("prometheus");
		out->provider = GATE_PROVIDER_PROMETHEUS;
	} else if (!s && out->json_path) {
		rc = spec_error(err, errlen, out->name, "json_path needs provider: NAME (an http provider "
				"from otacd's configuration)%s", "");
		goto out;
	}

	switch (out->provider) {
	case GATE_PROVIDER_BUILTIN:
		if (out->query || out->json_path) {
			rc = spec_error(err, errlen, out->name, "%s is only for a %s provider",
					out->query ? "query" : "json_path", out->query ? "prometheus" : "http");
			goto out;
		}
		if (!out->metric) {
			rc = spec_error(err, errlen, out->name,
					"needs a metric (crash_rate, boot_success_rate, revert_rate, "
					"crashes_per_device_hour or battery_mah_per_day) or a provider");
			goto out;
		}
		if (gate_metric_lookup(out->metric) < 0) {
			const char *dym = ota_did_you_mean(out->metric, builtin_metrics,
							   OTA_ARRAY_SIZE(builtin_metrics));
			if (dym)
				rc = spec_error(err, errlen, out->name,
						"unknown metric '%s' (did you mean '%s'?)", out->metric, dym);
			else
				rc = spec_error(err, errlen, out->name,
						"unknown metric '%s' (crash_rate, boot_success_rate, "
						"revert_rate, crashes_per_device_hour, battery_mah_per_day)",
						out->metric);
			goto out;
		}
		out->metric_id = (enum gate_metric)gate_metric_lookup(out->metric);
		break;
	case GATE_PROVIDER_PROMETHEUS:
		if (out->json_path) {
			rc = spec_error(err, errlen, out->name, "json_path is only for http providers; "
					"a prometheus gate has a query%s", "");
			goto out;
		}
		break;
	case GATE_PROVIDER_HTTP:
		if (out->json_path && path_walk(NULL, out->json_path, 1, NULL) < 0) {
			rc = spec_error(err, errlen, out->name,
					"json_path '%s' is not a path like data.value or a.b[0].c",
					out->json_path);
			goto out;
		}
		break;
	}

	switch (out->metric_id) {
	case GATE_METRIC_CRASH_RATE:
	case GATE_METRIC_BOOT_SUCCESS_RATE:
	case GATE_METRIC_REVERT_RATE:
		out->kind = GATE_KIND_PROPORTION;
		break;
	case GATE_METRIC_CRASHES_PER_DEVICE_HOUR:
		out->kind = GATE_KIND_RATE;
		break;
	default:
		out->kind = GATE_KIND_VALUE;
		break;
	}

	if ((rc = parse_limit(obj, "max", out, &out->max, &out->has_max, err, errlen)) < 0 ||
	    (rc = parse_limit(obj, "min", out, &out->min, &out->has_min, err, errlen)) < 0)
		goto out;
	if (out->has_max && out->has_min && out->min > out->max) {
		rc = spec_error(err, errlen, out->name, "min %g is above max %g", out->min, out->max);
		goto out;
	}
	if ((v = json_object_get(obj, "max_increase"))) {
		if (parse_number(v, &out->max_increase) < 0 || !(out->max_increase > 0)) {
			rc = spec_error(err, errlen, out->name,
					"max_increase must be a positive number or percentage "
					"like \"10%%\" or 0.1");
			goto out;
		}
		out->has_max_increase = 1;
		out->baseline = 1;
	}
	if ((v = json_object_get(obj, "baseline")) && !json_is_null(v) && !json_is_false(v)) {
		const char *want = for_flag ? "off" : "previous";
		if (!json_is_string(v) || strcmp(json_string_value(v), want) != 0) {
			rc = spec_error(err, errlen, out->name, "%s",
					for_flag ? "a flag's baseline must be 'off' (the product's devices that report "
						   "the flag off, docs/rollout.md); 'previous' compares releases"
						 : "baseline must be 'previous' (the devices still on the previous "
						   "release); 'off' is for a feature flag's gates");
			goto out;
		}
		out->baseline = 1;
	}
	out->baseline_off = for_flag && out->baseline;
	if (out->baseline && !out->has_max_increase) {
		out->has_max_increase = 1;
		out->max_increase = GATE_DEFAULT_MAX_INCREASE;
	}
	if (!out->has_max && !out->has_min && !out->has_max_increase) {
		rc = spec_error(err, errlen, out->name,
				for_flag ? "needs one of max, min, max_increase (or baseline: off)"
					 : "needs one of max, min, max_increase (or baseline: previous)");
		goto out;
	}

	if ((v = json_object_get(obj, "min_devices"))) {
		if (parse_int(v, 0, INT64_MAX / 2, &iv) < 0) {
			rc = spec_error(err, errlen, out->name,
					"min_devices must be a whole number >= 0");
			goto out;
		}
		out->min_devices = iv;
	}
	if ((v = json_object_get(obj, "alpha"))) {
		if (parse_number(v, &out->alpha) < 0 || !(out->alpha > 0) || out->alpha > 0.5) {
			rc = spec_error(err, errlen, out->name,
					"alpha must be a number in (0, 0.5], like 0.01");
			goto out;
		}
	}
	if ((v = json_object_get(obj, "failure_limit"))) {
		if (parse_int(v, 1, 1000000, &iv) < 0) {
			rc = spec_error(err, errlen, out->name,
					"failure_limit must be a whole number >= 1");
			goto out;
		}
		out->failure_limit = (int)iv;
	}
	if ((v = json_object_get(obj, "error_limit"))) {
		if (parse_int(v, 1, 1000000, &iv) < 0) {
			rc = spec_error(err, errlen, out->name,
					"error_limit must be a whole number >= 1");
			goto out;
		}
		out->error_limit = (int)iv;
	}
out:
	return rc;
}

int gate_spec_parse(const json_t *obj, const char *name, struct gate_spec *out, char *err, size_t errlen)
{
	return spec_parse(obj, name, 0, out, err, errlen);
}

int gate_spec_parse_flag(const json_t *obj, const char *name, struct gate_spec *out, char *err, size_t errlen)
{
	return spec_parse(obj, name, 1, out, err, errlen);
}

void gate_spec_release(struct gate_spec *g)
{
	if (!g)
		return;
	free(g->name);
	free(g->metric);
	free(g->query);
	free(g->provider_name);
	free(g->json_path);
	memset(g, 0, sizeof(*g));
}

/* ---- judging ------------------------------------------------------------ */

/* Per-condition outcome. */
enum cond { COND_OPEN, COND_PASS, COND_FAIL };

static void eval_init(struct gate_eval *out, const struct gate_spec *g)
{
	memset(out, 0, sizeof(*out));
	out->verdict = GATE_INCONCLUSIVE;
	snprintf(out->metric, sizeof(out->metric), "%s",
		 g->metric ? g->metric : g->name ? g->name : "value");
	out->estimate = out->lo = out->hi = NAN;
	out->baseline = out->ratio = out->ratio_lo = out->ratio_hi = NAN;
	out->alpha = g->alpha;
}

static int nconditions(const struct gate_spec *g)
{
	int n = g->has_max + g->has_min + g->has_max_increase;
	return n > 0 ? n : 1;
}

/* Counts of one aggregate for a metric. */
struct counts {
	int64_t k, n;        /* proportion: k of n; rate: k events */
	double exposure;     /* rate: device-hours */
	int64_t devices;     /* the sample size compared with min_devices */
	int64_t events;      /* baseline comparison: bad events ... */
	double events_exposure; /* ... over this exposure */
	double value;        /* the metric's value (NAN: no data) */
};

static void agg_counts(const struct gate_spec *g, const struct fleet_agg *a, struct counts *c)
{
	int64_t boots = a->boot_ok + a->boot_fail + a->reverts;

	memset(c, 0, sizeof(*c));
	c->value = NAN;
	/* Crashes are compared per device-hour: baseline devices have run their
	 * version much longer than the canary has run the new one, so "devices
	 * that ever crashed" would be biased against the baseline.  Boot
	 * outcomes happen once per install, so they are compared per boot. */
	c->events = a->crashes;
	c->events_exposure = a->device_hours;
	switch (g->metric_id) {
	case GATE_METRIC_CRASH_RATE:
		c->k = a->crashed;
		c->n = a->reporting;
		c->devices = a->reporting;
		break;
	case GATE_METRIC_BOOT_SUCCESS_RATE:
	case GATE_METRIC_REVERT_RATE:
		c->k = g->metric_id == GATE_METRIC_BOOT_SUCCESS_RATE ? a->boot_ok
								     : a->boot_fail + a->reverts;
		c->n = boots;
		c->devices = boots;
		c->events = a->boot_fail + a->reverts;
		c->events_exposure = (double)boots;
		break;
	case GATE_METRIC_CRASHES_PER_DEVICE_HOUR:
		c->k = a->crashes;
		c->exposure = a->device_hours;
		c->devices = a->reporting;
		if (a->device_hours > 0)
			c->value = (double)a->crashes / a->device_hours;
		return;
	case GATE_METRIC_BATTERY_MAH_PER_DAY:
		c->devices = a->reporting;
		if (a->device_hours > 0)
			c->value = a->battery_mah / a->device_hours * 24;
		return;
	default:
		return;
	}
	if (c->n > 0)
		c->value = (double)c->k / (double)c->n;
}

/*
 * The prior of a proportion's sequence: Beta(1, 19) on the failure side
 * (mean 5%, 64% of the mass below 5%), where firmware failure rates live;
 * mirrored for boot_success_rate, where success is the common side.
 */
static void prop_prior(const struct gate_spec *g, double *a, double *b)
{
	*a = 1;
	*b = 19;
	if (g->metric_id == GATE_METRIC_BOOT_SUCCESS_RATE) {
		*a = 19;
		*b = 1;
	}
}

/* The prior of a rate's sequence: exponential with mean the gate's limit
 * (or 0.01 per device-hour when the gate has none). */
static int perfect_sample_passes(const struct gate_spec *g, int64_t n, double alpha, double pa, double pb)
{
	int64_t k = g->metric_id == GATE_METRIC_BOOT_SUCCESS_RATE ? n : 0;
	double lo, hi;
	gatestat_prop_cs(k, n, alpha, pa, pb, &lo, &hi);
	return (!g->has_max || hi < g->max) && (!g->has_min || lo > g->min);
}

int64_t gate_min_sample(const struct gate_spec *g)
{
	double alpha, pa, pb;
	int64_t lo = 1, hi = 100000000;

	if (g->provider != GATE_PROVIDER_BUILTIN || g->kind != GATE_KIND_PROPORTION || (!g->has_max && !g->has_min))
		return g->min_devices;
	alpha = g->alpha / nconditions(g);
	prop_prior(g, &pa, &pb);
	if (!perfect_sample_passes(g, hi, alpha, pa, pb))
		return -1;
	while (lo < hi) {
		int64_t mid = lo + (hi - lo) / 2;
		if (perfect_sample_passes(g, mid, alpha, pa, pb))
			hi = mid;
		else
			lo = mid + 1;
	}
	return lo > g->min_devices ? lo : g->min_devices;
}

static double rate_prior_mean(const struct gate_spec *g)
{
	double m = g->has_max ? g->max : g->has_min ? g->min : 0.01;
	return m > 0 ? m : 0.01;
}

static void put_num(struct buf *b, double x)
{
	if (isnan(x))
		buf_puts(b, "n/a");
	else if (isinf(x))
		buf_puts(b, x > 0 ? "inf" : "-inf");
	else
		buf_printf(b, "%.3g", x);
}

static void put_interval(struct buf *b, double est, double lo, double hi)
{
	put_num(b, est);
	if (!isnan(lo)) {
		buf_puts(b, " [");
		put_num(b, lo);
		buf_puts(b, ", ");
		put_num(b, hi);
		buf_puts(b, "]");
	}
}

static void put_sep(struct buf *b, int *first)
{
	buf_puts(b, *first ? " " : ", ");
	*first = 0;
}

/* Combine conditions with hold and sample size into the verdict and the
 * reason's tail. */
static void finish(struct gate_eval *out, struct buf *r, int any_fail, int all_pass,
		   int hold_elapsed, int64_t n, int64_t min_devices, int show_n)
{
	if (show_n)
		buf_printf(r, " with %lld devices", (long long)n);
	if (any_fail) {
		out->verdict = GATE_FAIL;
	} else if (all_pass && hold_elapsed && n >= min_devices) {
		out->verdict = GATE_PASS;
	} else {
		out->verdict = GATE_INCONCLUSIVE;
		if (n < min_devices)
			buf_printf(r, " (min_devices %lld)", (long long)min_devices);
		if (!hold_elapsed)
			buf_puts(r, ", hold not elapsed");
	}
	buf_printf(r, ": %s", gate_verdict_name(out->verdict));
	snprintf(out->reason, sizeof(out->reason), "%s", buf_cstr(r));
}

static void value_conditions(const struct gate_spec *g, double value, double baseline_value,
			     struct gate_eval *out, struct buf *r, int *open);

int64_t gate_sample_size(const struct gate_spec *g, const struct fleet_agg *a)
{
	struct counts c;
	agg_counts(g, a, &c);
	return c.devices;
}

int gate_judge(const struct gate_spec *g, const struct fleet_agg *canary,
	       const struct fleet_agg *baseline, int hold_elapsed, struct gate_eval *out)
{
	struct counts c, bc;
	struct buf r = BUF_INIT;
	double alpha, lo = 0, hi = 1, pa, pb;
	int any_fail = 0, all_pass = 1, first = 1, rc = 0;
	enum cond st;

	eval_init(out, g);
	if (g->provider != GATE_PROVIDER_BUILTIN || g->metric_id == GATE_METRIC_EXTERNAL) {
		snprintf(out->reason, sizeof(out->reason), "gate '%s' is not a builtin metric",
			 g->name);
		rc = ota_error_set(OTA_EINVAL, "%s", out->reason);
		goto out;
	}
	agg_counts(g, canary, &c);
	if (baseline) {
		agg_counts(g, baseline, &bc);
		out->baseline = bc.value;
	}
	out->n = c.devices;
	out->estimate = c.value;

	if (g->kind == GATE_KIND_VALUE) {
		/* battery_mah_per_day: a mean with no variance, judged as a value
		 * once min_devices report; a breach then fails at once. */
		int open = 0;
		buf_puts(&r, out->metric);
		buf_puts(&r, " ");
		put_num(&r, c.value);
		if (isnan(c.value)) {
			buf_puts(&r, " (no data)");
			finish(out, &r, 0, 0, hold_elapsed, c.devices, g->min_devices, 1);
			goto out;
		}
		value_conditions(g, c.value, baseline ? bc.value : NAN, out, &r, &open);
		finish(out, &r, out->breached && c.devices >= g->min_devices,
		       !out->breached && !open, hold_elapsed, c.devices, g->min_devices, 1);
		goto out;
	}

	alpha = g->alpha / nconditions(g);
	out->alpha = alpha;
	if (g->kind == GATE_KIND_PROPORTION) {
		prop_prior(g, &pa, &pb);
		gatestat_prop_cs(c.k, c.n, alpha, pa, pb, &lo, &hi);
	} else {
		double m = rate_prior_mean(g);
		gatestat_poisson_cs(c.k, c.exposure, alpha, 1.0, 1.0 / m, &lo, &hi);
	}
	out->lo = lo;
	out->hi = hi;
	buf_puts(&r, out->metric);
	buf_puts(&r, " ");
	put_interval(&r, c.value, lo, hi);

	if (g->has_max) {
		st = lo > g->max ? COND_FAIL : hi < g->max ? COND_PASS : COND_OPEN;
		put_sep(&r, &first);
		buf_printf(&r, "%s %g", st == COND_FAIL ? "> max" : st == COND_PASS ? "< max"
								   : "not yet below max", g->max);
		any_fail |= st == COND_FAIL;
		all_pass &= st == COND_PASS;
	}
	if (g->has_min) {
		st = hi < g->min ? COND_FAIL : lo > g->min ? COND_PASS : COND_OPEN;
		put_sep(&r, &first);
		buf_printf(&r, "%s %g", st == COND_FAIL ? "< min" : st == COND_PASS ? "> min"
								   : "not yet above min", g->min);
		any_fail |= st == COND_FAIL;
		all_pass &= st == COND_PASS;
	}
	if (g->has_max_increase) {
		double limit = 1 + g->max_increase, rlo, rhi;
		put_sep(&r, &first);
		if (!baseline) {
			st = COND_OPEN;
			buf_puts(&r, "no baseline to compare with");
		} else {
			gatestat_rate_ratio_cs(c.events, c.events_exposure, bc.events,
					       bc.events_exposure, alpha, &rlo, &rhi);
			if (c.events_exposure > 0 && bc.events_exposure > 0 && bc.events > 0)
				out->ratio = ((double)c.events / c.events_exposure) /
					     ((double)bc.events / bc.events_exposure);
			else if (c.events_exposure > 0 && bc.events_exposure > 0 && c.events > 0)
				out->ratio = INFINITY;
			out->ratio_lo = rlo;
			out->ratio_hi = rhi;
			st = rlo > limit ? COND_FAIL : rhi < limit ? COND_PASS : COND_OPEN;
			buf_puts(&r, "ratio to baseline ");
			put_interval(&r, out->ratio, rlo, rhi);
			buf_printf(&r, " %s %g (max_increase %g%%)",
				   st == COND_FAIL ? ">" : st == COND_PASS ? "<" : "not yet below",
				   limit, g->max_increase * 100);
		}
		any_fail |= st == COND_FAIL;
		all_pass &= st == COND_PASS;
	}
	finish(out, &r, any_fail, all_pass, hold_elapsed, c.devices, g->min_devices, 1);
out:
	buf_release(&r);
	return rc;
}

/* Append the value's conditions to r; set out->breached and out->ratio;
 * *open when a condition cannot be judged (no baseline). */
static void value_conditions(const struct gate_spec *g, double value, double baseline_value,
			     struct gate_eval *out, struct buf *r, int *open)
{
	int first = 1, breach;

	if (g->has_max) {
		breach = value > g->max;
		put_sep(r, &first);
		buf_printf(r, "%s max %g", breach ? ">" : "<=", g->max);
		out->breached |= breach;
	}
	if (g->has_min) {
		breach = value < g->min;
		put_sep(r, &first);
		buf_printf(r, "%s min %g", breach ? "<" : ">=", g->min);
		out->breached |= breach;
	}
	if (g->has_max_increase) {
		put_sep(r, &first);
		if (isnan(baseline_value)) {
			*open = 1;
			buf_puts(r, "no baseline to compare with");
		} else {
			double limit = baseline_value + g->max_increase * fabs(baseline_value);
			breach = value > limit;
			if (baseline_value != 0)
				out->ratio = value / baseline_value;
			buf_puts(r, "baseline ");
			put_num(r, baseline_value);
			buf_printf(r, " %s +%g%%", breach ? "exceeded by more than" : "within",
				   g->max_increase * 100);
			out->breached |= breach;
		}
	}
}

int gate_judge_value(const struct gate_spec *g, double value, double baseline_value,
		     int hold_elapsed, int consecutive_breaches, struct gate_eval *out)
{
	struct buf r = BUF_INIT;
	int open = 0;

	eval_init(out, g);
	out->estimate = value;
	out->baseline = baseline_value;
	buf_puts(&r, out->metric);
	buf_puts(&r, " ");
	put_num(&r, value);
	if (isnan(value)) {
		buf_puts(&r, " (no data)");
		open = 1;
	} else {
		value_conditions(g, value, baseline_value, out, &r, &open);
	}
	if (out->breached && consecutive_breaches + 1 >= g->failure_limit)
		out->verdict = GATE_FAIL;
	else if (!out->breached && !open && hold_elapsed)
		out->verdict = GATE_PASS;
	else
		out->verdict = GATE_INCONCLUSIVE;
	if (out->breached && out->verdict != GATE_FAIL)
		buf_printf(&r, " (breach %d of %d in a row)", consecutive_breaches + 1,
			   g->failure_limit);
	if (!out->breached && !open && !hold_elapsed)
		buf_puts(&r, ", hold not elapsed");
	buf_printf(&r, ": %s", gate_verdict_name(out->verdict));
	snprintf(out->reason, sizeof(out->reason), "%s", buf_cstr(&r));
	buf_release(&r);
	return 0;
}

static json_t *num_or_null(double x)
{
	return isfinite(x) ? json_real(x) : json_null();
}

json_t *gate_eval_to_json(const struct gate_eval *e)
{
	json_t *o = json_object();

	json_object_set_new(o, "verdict", json_string(gate_verdict_name(e->verdict)));
	json_object_set_new(o, "metric", json_string(e->metric));
	json_object_set_new(o, "estimate", num_or_null(e->estimate));
	json_object_set_new(o, "lo", num_or_null(e->lo));
	json_object_set_new(o, "hi", isinf(e->hi) ? json_string("inf") : num_or_null(e->hi));
	json_object_set_new(o, "n", json_integer(e->n));
	json_object_set_new(o, "baseline", num_or_null(e->baseline));
	json_object_set_new(o, "ratio", num_or_null(e->ratio));
	json_object_set_new(o, "ratio_lo", num_or_null(e->ratio_lo));
	json_object_set_new(o, "ratio_hi",
			    isinf(e->ratio_hi) ? json_string("inf") : num_or_null(e->ratio_hi));
	json_object_set_new(o, "alpha", num_or_null(e->alpha));
	json_object_set_new(o, "breached", json_boolean(e->breached));
	json_object_set_new(o, "reason", json_string(e->reason));
	return o;
}

/* ---- providers ---------------------------------------------------------- */

char *gate_expand(const char *tmpl, const struct gate_vars *vars, enum gate_expand_mode mode)
{
	struct buf b = BUF_INIT;
	const char *p = tmpl;

	buf_put(&b, "", 0);
	while (*p) {
		const char *start = p, *id, *val = NULL;
		size_t len;
		int braced;

		if (*p != '$') {
			buf_putc(&b, *p++);
			continue;
		}
		p++;
		braced = *p == '{';
		if (braced)
			p++;
		id = p;
		while (*p == '_' || isalnum((unsigned char)*p))
			p++;
		len = (size_t)(p - id);
		if (braced && *p != '}') {
			buf_put(&b, start, (size_t)(p - start));
			continue;
		}
		if (vars) {
			if (len == 7 && strncmp(id, "release", 7) == 0)
				val = vars->release;
			else if (len == 7 && strncmp(id, "version", 7) == 0)
				val = vars->version;
			else if (len == 7 && strncmp(id, "product", 7) == 0)
				val = vars->product;
			else if (len == 6 && strncmp(id, "cohort", 6) == 0)
				val = vars->cohort;
		}
		if (braced)
			p++;
		if (!val) {
			buf_put(&b, start, (size_t)(p - start));
			continue;
		}
		if (mode == GATE_EXPAND_URL) {
			char *e = httpc_escape(val);
			buf_puts(&b, e);
			free(e);
		} else if (mode == GATE_EXPAND_PROMQL) {
			for (const char *q = val; *q; q++) {
				if (*q == '\\' || *q == '"')
					buf_putc(&b, '\\');
				buf_putc(&b, *q);
			}
		} else {
			buf_puts(&b, val);
		}
	}
	return buf_detach(&b);
}

/* A string holding a number ("1.5", "NaN", "+Inf" as Prometheus writes them). */
static int number_string(const char *s, double *out)
{
	char *end;

	errno = 0;
	*out = strtod(s, &end);
	if (end == s || *end || errno == EINVAL)
		return -1;
	return 0;
}

static int query_prometheus(const char *base_url, const char *token, const char *query, double *value,
			    int *unreachable)
{
	struct httpc_response resp;
	json_t *root = NULL, *data, *result, *sample = NULL, *v;
	json_error_t jerr;
	char *esc = httpc_escape(query), *url;
	const char *status, *type;
	size_t blen = strlen(base_url);
	int rc = 0;

	*value = NAN;
	while (blen > 0 && base_url[blen - 1] == '/')
		blen--;
	url = xasprintf("%.*s/api/v1/query?query=%s", (int)blen, base_url, esc);
	rc = httpc_request(&resp, "GET", url, token, NULL, NULL, 0, GATE_QUERY_TIMEOUT_MS);
	*unreachable = rc < 0;
	if (rc < 0) {
		ota_error_prefix("prometheus %.*s: ", (int)blen, base_url);
		goto out;
	}
	root = json_loadb(resp.body.ptr ? resp.body.ptr : "", resp.body.len, 0, &jerr);
	if (!root) {
		rc = ota_error_set(OTA_ERROR, "prometheus %.*s: HTTP %ld with a body that is not "
				   "JSON", (int)blen, base_url, resp.status);
		goto out;
	}
	status = json_string_value(json_object_get(root, "status"));
	if (!status || strcmp(status, "success") != 0) {
		const char *etype = json_string_value(json_object_get(root, "errorType"));
		const char *emsg = json_string_value(json_object_get(root, "error"));
		rc = ota_error_set(etype && strcmp(etype, "bad_data") == 0 ? OTA_EINVAL : OTA_ERROR,
				   "prometheus: %s: %s (query %s)", etype ? etype : "error",
				   emsg ? emsg : "no error text", query);
		goto out;
	}
	data = json_object_get(root, "data");
	type = json_string_value(json_object_get(data, "resultType"));
	result = json_object_get(data, "result");
	if (type && strcmp(type, "scalar") == 0) {
		sample = result;
	} else if (type && strcmp(type, "vector") == 0 && json_is_array(result)) {
		if (json_array_size(result) == 0) {
			rc = ota_error_set(OTA_ENOTFOUND, "prometheus: no data for %s", query);
			goto out;
		}
		if (json_array_size(result) > 1) {
			rc = ota_error_set(OTA_EINVAL, "prometheus: %s returned %zu series; "
					   "aggregate them into one (avg, sum, max)", query,
					   json_array_size(result));
			goto out;
		}
		sample = json_object_get(json_array_get(result, 0), "value");
	} else {
		rc = ota_error_set(OTA_EINVAL, "prometheus: %s gave a %s, not one number (use an "
				   "instant vector or scalar)", query, type ? type : "malformed answer");
		goto out;
	}
	v = json_array_get(sample, 1);
	if (!json_is_string(v) || number_string(json_string_value(v), value) < 0) {
		rc = ota_error_set(OTA_ERROR, "prometheus: malformed sample in the answer to %s",
				   query);
		goto out;
	}
	if (isnan(*value)) {
		rc = ota_error_set(OTA_ENOTFOUND, "prometheus: no data for %s (NaN)", query);
		goto out;
	}
out:
	if (rc < 0)
		*value = NAN;
	json_decref(root);
	httpc_response_release(&resp);
	free(url);
	free(esc);
	return rc;
}

int gate_query_prometheus(const char *base_url, const char *query, double *value)
{
	int unreachable;
	return query_prometheus(base_url, NULL, query, value, &unreachable);
}

/*
 * Walk path in root.  check_only: only the syntax (root unused).  -1 on a
 * syntax error, 0 with *out NULL when something on the way is missing.
 */
static int path_walk(const json_t *root, const char *path, int check_only, const json_t **out)
{
	const char *p = path ? path : "";
	const json_t *cur = root;
	int first = 1;

	if (*p == '$') {
		p++;
		if (*p == '.')
			p++;
		else if (*p && *p != '[')
			return -1;
	}
	while (*p) {
		if (*p == '[') {
			char *end;
			unsigned long long idx;
			p++;
			if (!isdigit((unsigned char)*p))
				return -1;
			errno = 0;
			idx = strtoull(p, &end, 10);
			if (errno || *end != ']')
				return -1;
			p = end + 1;
			if (!check_only)
				cur = json_is_array(cur) ? json_array_get(cur, (size_t)idx) : NULL;
		} else {
			size_t len;
			if (!first) {
				if (*p != '.')
					return -1;
				p++;
			}
			len = strcspn(p, ".[");
			if (len == 0)
				return -1;
			if (!check_only)
				cur = json_is_object(cur) ? json_object_getn(cur, p, len) : NULL;
			p += len;
		}
		first = 0;
	}
	if (out)
		*out = check_only ? NULL : cur;
	return 0;
}

int gate_json_path_number(const json_t *root, const char *json_path, double *value)
{
	const json_t *v = NULL;
	const char *path = json_path ? json_path : "";

	*value = NAN;
	if (path_walk(root, path, 0, &v) < 0)
		return ota_error_set(OTA_EINVAL, "json_path '%s' is not a path like data.value or "
				     "a.b[0].c", path);
	if (!v || json_is_null(v))
		return ota_error_set(OTA_ENOTFOUND, "json_path '%s': no value there", path);
	if (json_is_number(v)) {
		*value = json_number_value(v);
		return 0;
	}
	if (json_is_string(v) && number_string(json_string_value(v), value) == 0)
		return isnan(*value) ? ota_error_set(OTA_ENOTFOUND, "json_path '%s': NaN", path) : 0;
	*value = NAN;
	return ota_error_set(OTA_EINVAL, "json_path '%s': the value is not a number", path);
}

static int query_http(const char *url, const char *token, const char *json_path, double *value,
		      int *unreachable)
{
	struct httpc_response resp;
	json_t *root = NULL;
	json_error_t jerr;
	int rc;

	*value = NAN;
	rc = httpc_request(&resp, "GET", url, token, NULL, NULL, 0, GATE_QUERY_TIMEOUT_MS);
	*unreachable = rc < 0;
	if (rc < 0) {
		ota_error_prefix("GET %s: ", url);
		goto out;
	}
	if (resp.status < 200 || resp.status > 299) {
		rc = ota_error_set(OTA_ERROR, "GET %s: HTTP %ld", url, resp.status);
		goto out;
	}
	root = json_loadb(resp.body.ptr ? resp.body.ptr : "", resp.body.len, JSON_DECODE_ANY,
			  &jerr);
	if (!root) {
		rc = ota_error_set(OTA_EINVAL, "GET %s: the answer is not JSON: %s", url, jerr.text);
		goto out;
	}
	rc = gate_json_path_number(root, json_path, value);
	if (rc < 0)
		ota_error_prefix("GET %s: ", url);
out:
	json_decref(root);
	httpc_response_release(&resp);
	return rc;
}

int gate_query_http(const char *url, const char *json_path, double *value)
{
	int unreachable;
	return query_http(url, NULL, json_path, value, &unreachable);
}

int gate_provider_find(struct gate_provider_def *out, const json_t *providers, const char *prometheus_url,
		       const char *name)
{
	const json_t *p = providers ? json_object_get(providers, name ? name : "") : NULL;
	const char *kind;

	memset(out, 0, sizeof(*out));
	if (!p && name && !strcmp(name, "prometheus") && prometheus_url && *prometheus_url) {
		out->name = "prometheus";
		out->kind = GATE_PROVIDER_PROMETHEUS;
		out->url = prometheus_url;
		return 0;
	}
	if (!p)
		return ota_error_set(OTA_ENOTFOUND, "provider '%s' is not defined in otacd's configuration (providers:)",
				     name ? name : "");
	kind = json_string_value(json_object_get(p, "kind"));
	out->name = name;
	out->kind = kind && !strcmp(kind, "http") ? GATE_PROVIDER_HTTP : GATE_PROVIDER_PROMETHEUS;
	out->url = json_string_value(json_object_get(p, "url"));
	out->token = json_string_value(json_object_get(p, "token"));
	return 0;
}

int gate_provider_check(const struct gate_spec *g, const json_t *providers, const char *prometheus_url)
{
	struct gate_provider_def def;
	int rc;

	if (g->provider == GATE_PROVIDER_BUILTIN)
		return 0;
	if ((rc = gate_provider_find(&def, providers, prometheus_url, g->provider_name)) < 0) {
		ota_error_prefix("gate '%s'", g->name);
		return rc;
	}
	if (def.kind != g->provider)
		return ota_error_set(OTA_EINVAL, "gate '%s': provider '%s' is a%s provider: %s", g->name,
				     g->provider_name, def.kind == GATE_PROVIDER_HTTP ? "n http" : " prometheus",
				     def.kind == GATE_PROVIDER_HTTP ? "give json_path, not query" : "give a query");
	return 0;
}

int gate_query(const struct gate_spec *g, const json_t *providers, const char *prometheus_url,
	       const struct gate_vars *vars, double *value)
{
	struct gate_provider_def def;
	char *s = NULL;
	int rc, unreachable = 0;

	*value = NAN;
	if (g->provider == GATE_PROVIDER_BUILTIN) {
		rc = ota_error_set(OTA_EINVAL, "gate '%s': builtin metrics are not queried", g->name);
		goto out;
	}
	if ((rc = gate_provider_check(g, providers, prometheus_url)) < 0)
		goto out;
	gate_provider_find(&def, providers, prometheus_url, g->provider_name);
	if (def.kind == GATE_PROVIDER_PROMETHEUS) {
		s = gate_expand(g->query, vars, GATE_EXPAND_PROMQL);
		rc = query_prometheus(def.url, def.token, s, value, &unreachable);
	} else {
		s = gate_expand(def.url, vars, GATE_EXPAND_URL);
		rc = query_http(s, def.token, g->json_path, value, &unreachable);
	}
	if (rc < 0 && rc != OTA_ENOTFOUND) {
		/* The details (addresses, statuses, bodies) go to the daemon's log
		 * only: a pipeline must not learn about the network through them. */
		ota_log(OTA_LOG_WARN, "gate '%s': provider '%s': %s", g->name, def.name, ota_error_last());
		rc = ota_error_set(rc, "gate '%s': provider '%s' %s", g->name, def.name,
				   unreachable ? "unreachable" : "gave a bad answer");
	} else if (rc == OTA_ENOTFOUND) {
		rc = ota_error_set(rc, "gate '%s': provider '%s' has no data", g->name, def.name);
	}
out:
	free(s);
	return rc;
}
