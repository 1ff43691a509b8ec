/*
 * gate.h - rollout gates: a spec from the pipeline's `gates:` mapping, the
 * judgement of one check (pass / fail / inconclusive) and the metric
 * providers (builtin fleet aggregates, Prometheus, generic HTTP JSON).
 *
 * A gate names a metric and conditions on it:
 *
 *   crash_free: { metric: crash_rate, max: 0.005, min_devices: 200, baseline: previous }
 *   boots:      { metric: boot_success_rate, min: 0.995 }
 *   battery:    { provider: prometheus, query: 'avg(battery_mah_per_day{release="$release"})',
 *                 max_increase: "10%" }
 *
 * Verdicts (docs/gates.md has the details and the formulas):
 *  - FAIL as soon as the confidence sequence proves a breach, whatever the
 *    sample size or the hold: the rollout halts and rolls back.
 *  - PASS only when the hold has elapsed, at least min_devices are in the
 *    sample and the sequence proves compliance with every condition.
 *  - INCONCLUSIVE otherwise (never promotes).
 *
 * For builtin count metrics the false-alarm probability is at most alpha
 * over the whole rollout however often the gate is checked (confidence
 * sequences, gatestat.h).  Values from external providers (and the builtin
 * mean battery_mah_per_day, which has no variance to go by) are single
 * numbers without a sample size: they are judged Argo-style, failing after
 * failure_limit consecutive breaching checks, and carry no statistical
 * guarantee.
 *
 * Threads: everything here is re-entrant.  The provider queries block (at
 * most GATE_QUERY_TIMEOUT_MS) and belong on a worker thread.
 */
#ifndef OTA_GATE_H
#define OTA_GATE_H

#include <jansson.h>
#include <stdint.h>

#include "fleet/fleet.h"

#define GATE_QUERY_TIMEOUT_MS 5000

/* Defaults for keys the spec leaves out. */
#define GATE_DEFAULT_MIN_DEVICES 100
#define GATE_DEFAULT_ALPHA 0.01
#define GATE_DEFAULT_FAILURE_LIMIT 3
#define GATE_DEFAULT_ERROR_LIMIT 4
/* `baseline: previous` without max_increase allows a 50% relative increase. */
#define GATE_DEFAULT_MAX_INCREASE 0.5

enum gate_provider {
	GATE_PROVIDER_BUILTIN = 0,
	GATE_PROVIDER_PROMETHEUS,
	GATE_PROVIDER_HTTP,
};

enum gate_metric {
	GATE_METRIC_EXTERNAL = 0,          /* a value from prometheus / http */
	GATE_METRIC_CRASH_RATE,            /* crashed / reporting */
	GATE_METRIC_BOOT_SUCCESS_RATE,     /* boot_ok / (boot_ok + boot_fail + reverts) */
	GATE_METRIC_REVERT_RATE,           /* (boot_fail + reverts) / (boot_ok + boot_fail + reverts) */
	GATE_METRIC_CRASHES_PER_DEVICE_HOUR, /* crashes / device_hours */
	GATE_METRIC_BATTERY_MAH_PER_DAY,   /* battery_mah / device_hours * 24 */
};

enum gate_kind {
	GATE_KIND_PROPORTION,   /* k of n: Beta-mixture confidence sequence */
	GATE_KIND_RATE,         /* count over exposure: Gamma-mixture sequence */
	GATE_KIND_VALUE,        /* a single number: consecutive-breach rule */
};

struct gate_spec {
	char *name;                  /* the key in `gates:` */
	char *metric;                /* metric name as written (external: may be NULL) */
	enum gate_metric metric_id;
	enum gate_kind kind;
	enum gate_provider provider;
	char *query;                 /* prometheus: PromQL with $release ... */
	char *provider_name;         /* configured provider (NULL: builtin) */
	char *json_path;             /* http: "data.value", "a.b[0].c"; NULL: the body is the number */
	int has_max, has_min, has_max_increase;
	double max, min, max_increase;   /* max_increase relative: 0.1 = +10% */
	int baseline;                /* compare against the previous release (a flag's: its off devices) */
	int baseline_off;            /* issue 17: a flag's gate with `baseline: off` (gate_spec_parse_flag) */
	int64_t min_devices;
	double alpha;
	int failure_limit;           /* external values: consecutive breaches that fail */
	int error_limit;             /* consecutive provider errors before pausing */
};

/*
 * Parse one entry of the top-level `gates:` mapping (YAML already turned
 * into JSON; numbers may be JSON numbers or strings like "10%" / "0.5%").
 * Fills *out (release with gate_spec_release even on failure).  0, or
 * OTA_EINVAL with a message naming the gate and the problem, also in err.
 */
int gate_spec_parse(const json_t *obj, const char *name, struct gate_spec *out, char *err,
		    size_t errlen);
void gate_spec_release(struct gate_spec *g);

/*
 * The same for a feature flag's gate (issue 17, orchestrator/flags/): its
 * baseline is `baseline: off` (the product's devices that report the flag
 * off, on the versions the flag's devices run), and `max_increase` alone
 * implies it; `baseline: previous` is refused.  Sets baseline and
 * baseline_off.  gate_spec_parse refuses `off` in a release's gate.
 */
int gate_spec_parse_flag(const json_t *obj, const char *name, struct gate_spec *out, char *err, size_t errlen);

/*
 * Sizing: the smallest sample (devices, or boots) with which a builtin
 * proportion gate could pass at all, when every device is perfect (no
 * crash, every boot confirmed): its bounds are proven only from there on,
 * and never before min_devices.  E.g. boot_success_rate min 0.995 at the
 * default alpha needs about 1,800 failure-free boots.  Other gates: their
 * min_devices.  -1 when no sample up to 10^8 proves it (e.g. max: 0).
 */
int64_t gate_min_sample(const struct gate_spec *g);

/* The metric for a builtin name, or -1 (GATE_METRIC_EXTERNAL is not builtin). */
int gate_metric_lookup(const char *name);

enum gate_verdict {
	GATE_INCONCLUSIVE = 0,
	GATE_PASS = 1,
	GATE_FAIL = 2,
};

/* "pass", "fail", "inconclusive". */
const char *gate_verdict_name(enum gate_verdict v);

/* The rollout controller counts each gate evaluation it makes (one per gate
 * and pass, whatever comes of it); /metrics shows the counts since the start
 * as otacd_gate_verdicts_total{verdict}. */
void gate_verdict_count(enum gate_verdict v);
uint64_t gate_verdicts_total(enum gate_verdict v);

struct gate_eval {
	enum gate_verdict verdict;
	char metric[48];
	double estimate;           /* the canary's metric value (NAN: no data) */
	double lo, hi;             /* its confidence sequence (NAN for values) */
	int64_t n;                 /* sample size: devices, or boots for boot metrics */
	double baseline;           /* the baseline's metric value, NAN when none */
	double ratio, ratio_lo, ratio_hi; /* canary / baseline rate and its sequence; NAN when none */
	double alpha;              /* per condition (the gate's alpha / conditions) */
	int breached;              /* values: this value breaches a condition */
	char reason[512];          /* "crash_rate 0.052 [0.031, 0.083] > max 0.005 with 95 devices: fail" */
};

/*
 * Judge a builtin metric from the canary's aggregate and, for baseline
 * conditions, the baseline's (devices still on the previous release; may
 * be NULL, then baseline conditions stay inconclusive).  hold_elapsed:
 * non-zero once the step's hold is over.  Always fills *out; returns 0, or
 * OTA_EINVAL when g is not a builtin gate.
 *
 * For battery_mah_per_day (a mean without variance) the value is judged
 * like an external one, once min_devices report: a breach fails at once
 * and out->breached is set, so a caller wanting failure_limit may count
 * breaches and use gate_judge_value instead.
 */
int gate_judge(const struct gate_spec *g, const struct fleet_agg *canary,
	       const struct fleet_agg *baseline, int hold_elapsed, struct gate_eval *out);

/* The sample size of aggregate a that a builtin gate compares with
 * min_devices (gate_eval.n): reporting devices, or boots. */
int64_t gate_sample_size(const struct gate_spec *g, const struct fleet_agg *a);

/*
 * Judge a single value from a provider.  baseline_value is NAN when there
 * is none (max_increase then stays inconclusive).  consecutive_breaches is
 * the number of checks in a row BEFORE this one whose value breached; this
 * check's breach is out->breached.  FAIL when consecutive_breaches +
 * out->breached >= failure_limit; PASS when the hold has elapsed and the
 * value complies; otherwise INCONCLUSIVE.  Returns 0.
 */
int gate_judge_value(const struct gate_spec *g, double value, double baseline_value,
		     int hold_elapsed, int consecutive_breaches, struct gate_eval *out);

/* {verdict, metric, estimate, lo, hi, n, baseline, ratio, ratio_lo,
 *  ratio_hi, alpha, breached, reason}; non-finite numbers are null.  New ref. */
json_t *gate_eval_to_json(const struct gate_eval *e);

/* ---- providers ---------------------------------------------------------- */

/* What `$name` in a query or URL stands for (NULL: left as written). */
struct gate_vars {
	const char *release;   /* the release under test, e.g. "1.5.0" */
	const char *version;
	const char *product;
	const char *cohort;
};

enum gate_expand_mode {
	GATE_EXPAND_RAW,      /* values as they are */
	GATE_EXPAND_PROMQL,   /* backslash and double quote escaped (PromQL string literals) */
	GATE_EXPAND_URL,      /* values percent-encoded */
};

/*
 * tmpl with $release, $version, $product and $cohort (or ${release} ...)
 * replaced; other $words are left as written.  New string.
 */
char *gate_expand(const char *tmpl, const struct gate_vars *vars, enum gate_expand_mode mode);

/*
 * Instant query: GET base_url/api/v1/query?query=Q (5 s timeout).  A vector
 * of exactly one sample or a scalar gives *value.  An empty vector or NaN is
 * "no data": OTA_ENOTFOUND, never zero.  Prometheus's own error ("bad_data:
 * 1:5: parse error: ...") comes back as OTA_EINVAL; several series as
 * OTA_EINVAL (aggregate them in the query); transport failures as OTA_ERROR.
 */
int gate_query_prometheus(const char *base_url, const char *query, double *value);

/*
 * GET url (5 s timeout), parse JSON and follow json_path (dotted names and
 * [index], an optional leading "$."; NULL or "" for the whole body).  The
 * value must be a number or a numeric string; null or a missing key is
 * OTA_ENOTFOUND, anything else OTA_EINVAL.  A non-2xx status is OTA_ERROR.
 */
int gate_query_http(const char *url, const char *json_path, double *value);

/* Follow json_path in root (the rule above) without any I/O. */
int gate_json_path_number(const json_t *root, const char *json_path, double *value);

/*
 * Metric providers are defined by name in the server config (`providers:`
 * NAME -> {kind: prometheus|http, url, token}; `prometheus_url` is the
 * provider called `prometheus` unless `providers:` defines one); a
 * pipeline's gate only names one, so where the daemon sends requests is
 * never up to a pipeline.  def's strings are borrowed from providers.
 */
struct gate_provider_def {
	const char *name;
	enum gate_provider kind;     /* GATE_PROVIDER_PROMETHEUS or GATE_PROVIDER_HTTP */
	const char *url;             /* prometheus: base URL; http: URL with $release ... */
	const char *token;           /* bearer token or NULL */
};
int gate_provider_find(struct gate_provider_def *out, const json_t *providers, const char *prometheus_url,
		       const char *name);
/* The gate's provider exists and is of the kind its keys need (OTA_EINVAL / OTA_ENOTFOUND). */
int gate_provider_check(const struct gate_spec *g, const json_t *providers, const char *prometheus_url);

/*
 * Query the gate's provider with vars substituted.  OTA_EINVAL for builtin
 * gates.  Failures read only "gate 'G': provider 'P' unreachable" or "...
 * gave a bad answer" (OTA_ENOTFOUND: "has no data"); the details go to the
 * daemon's stderr.
 */
int gate_query(const struct gate_spec *g, const json_t *providers, const char *prometheus_url,
	       const struct gate_vars *vars, double *value);

#endif
