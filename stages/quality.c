/*
 * quality.c - compliance rules and code-quality metrics for the analysis
 * kind (quality.h lists the keys).
 *
 * Why: a firmware team adopting MISRA C:2012 or CERT C starts with
 * hundreds of findings (cppcheck's misra addon on examples/sensor-node
 * reports 337).  They live with that through documented deviations
 * (`suppress:` entries that must carry a reason), limits per rule, chapter
 * or standard, and the baseline mode that fails only new violations.  The
 * rule number is all cppcheck gives without the licensed rule texts, so
 * rule keys are derived from the id alone.  Complexity and duplication are
 * numbers, not findings: they are judged against limits and, with
 * `no_worse: true`, against the target branch's last passed run.
 */
#include "quality.h"

#include <fnmatch.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define ITEMS_SHOWN 3          /* functions or clones named in a message */
#define RULE_KEY_MAX 128

static const char *const severities[] = { "error", "warning", "style", "performance", "portability",
					  "information", "note", "none" };
static const char *const metric_keys[] = { "complexity_max", "complexity_over", "duplicated_percent", "no_worse" };

static const char *str(const json_t *o, const char *key)
{
	return json_string_value(json_object_get(o, key));
}

static int is_severity(const char *k)
{
	for (size_t i = 0; i < OTA_ARRAY_SIZE(severities); i++)
		if (!strcmp(k, severities[i]))
			return 1;
	return 0;
}

/* ---- rule keys -------------------------------------------------------- */

/*
 * The keys a rule counts under, most specific first; returns how many
 * (at most 3) were written into keys[] (each RULE_KEY_MAX bytes).
 */
static int rule_keys(const char *rule, char keys[3][RULE_KEY_MAX])
{
	size_t n = rule ? strlen(rule) : 0;
	const char *tail;
	int k = 0;

	if (!n || n >= RULE_KEY_MAX)
		return 0;
	memcpy(keys[k++], rule, n + 1);
	if (!strncmp(rule, "misra-c2012-", 12)) {
		tail = rule + 12;
		snprintf(keys[k++], RULE_KEY_MAX, "misra-c2012-%.*s", (int)strcspn(tail, "."), tail);
		snprintf(keys[k++], RULE_KEY_MAX, "misra-c2012");
	} else if (!strncmp(rule, "cert-", 5)) {
		tail = rule + 5;
		snprintf(keys[k++], RULE_KEY_MAX, "cert-%.*s", (int)strcspn(tail, "0123456789-"), tail);
		snprintf(keys[k++], RULE_KEY_MAX, "cert");
	}
	/* "misra-c2012-8" for rule "misra-c2012-8" would repeat itself */
	if (k >= 2 && !strcmp(keys[0], keys[1])) {
		memmove(keys[1], keys[2], RULE_KEY_MAX);
		k--;
	}
	return k;
}

void quality_count(json_t *counts, const json_t *f)
{
	char keys[3][RULE_KEY_MAX];
	const char *sev = str(f, "severity") ? str(f, "severity") : "warning";
	int n = rule_keys(str(f, "rule"), keys);

	json_object_set_new(counts, sev, json_integer(json_integer_value(json_object_get(counts, sev)) + 1));
	for (int i = 0; i < n; i++)
		if (!is_severity(keys[i]))
			json_object_set_new(counts, keys[i],
					    json_integer(json_integer_value(json_object_get(counts, keys[i])) + 1));
}

static int key_over(const json_t *counts, const json_t *thresholds, const char *k)
{
	json_t *t = json_object_get(thresholds, k);
	return json_is_integer(t) && json_integer_value(json_object_get(counts, k)) > json_integer_value(t);
}

int quality_over(const json_t *counts, const json_t *thresholds, const json_t *f)
{
	char keys[3][RULE_KEY_MAX];
	int n = rule_keys(str(f, "rule"), keys);

	if (key_over(counts, thresholds, str(f, "severity") ? str(f, "severity") : "warning"))
		return 1;
	for (int i = 0; i < n; i++)
		if (key_over(counts, thresholds, keys[i]))
			return 1;
	return 0;
}

int quality_suppressed(const json_t *suppress, const json_t *f)
{
	const char *rule = str(f, "rule") ? str(f, "rule") : "", *file = str(f, "file") ? str(f, "file") : "";
	size_t i;
	json_t *s;

	json_array_foreach(suppress, i, s) {
		const char *r = str(s, "rule"), *p = str(s, "file");
		if (r && fnmatch(r, rule, 0) == 0 && (!p || fnmatch(p, file, 0) == 0))
			return 1;
	}
	return 0;
}

/* ---- validation ------------------------------------------------------- */

static void validate_suppress(const struct pl_stage *st, struct pl_diags *d)
{
	json_t *s = json_object_get(st->extra, "suppress"), *e;
	size_t i;

	if (!s)
		return;
	if (!json_is_array(s)) {
		pl_diag_add(d, st->pos, "analysis stage '%s': 'suppress' must be a list of {rule, file, reason}", st->name);
		return;
	}
	json_array_foreach(s, i, e) {
		const char *k;
		json_t *v;
		if (!json_is_object(e) || !str(e, "rule") || !*str(e, "rule")) {
			pl_diag_add(d, st->pos, "analysis stage '%s': suppress[%zu] needs a rule (an id or a glob,"
					       " e.g. misra-c2012-15.5)", st->name, i);
			continue;
		}
		if (!str(e, "reason") || strlen(str(e, "reason")) < 3)
			pl_diag_add(d, st->pos, "analysis stage '%s': suppress[%zu] (%s) needs a reason: a deviation"
					       " must say why", st->name, i, str(e, "rule"));
		json_object_foreach(e, k, v)
			if (strcmp(k, "rule") && strcmp(k, "file") && strcmp(k, "reason"))
				pl_diag_add(d, st->pos, "analysis stage '%s': suppress[%zu]: unknown key '%s'"
						       " (rule, file, reason)", st->name, i, k);
			else if (!json_is_string(v))
				pl_diag_add(d, st->pos, "analysis stage '%s': suppress[%zu].%s must be a string",
					    st->name, i, k);
	}
}

static int count_ok(const json_t *v)
{
	return json_is_integer(v) && json_integer_value(v) >= 0;
}

static void validate_metrics(const struct pl_stage *st, struct pl_diags *d)
{
	json_t *m = json_object_get(st->extra, "metrics"), *v;
	const char *k;

	if (!m)
		return;
	if (!json_is_object(m)) {
		pl_diag_add(d, st->pos, "analysis stage '%s': 'metrics' must be a mapping, e.g. {complexity_max: 15,"
				       " duplicated_percent: 3}", st->name);
		return;
	}
	json_object_foreach(m, k, v) {
		size_t i;
		for (i = 0; i < OTA_ARRAY_SIZE(metric_keys) && strcmp(k, metric_keys[i]); i++)
			;
		if (i == OTA_ARRAY_SIZE(metric_keys))
			pl_diag_add(d, st->pos, "analysis stage '%s': metrics.%s is unknown (complexity_max,"
					       " complexity_over, duplicated_percent, no_worse)", st->name, k);
		else if (!strcmp(k, "complexity_max") && !count_ok(v))
			pl_diag_add(d, st->pos, "analysis stage '%s': metrics.complexity_max must be a number"
					       " (0 or more)", st->name);
		else if (!strcmp(k, "complexity_over") &&
			 (!json_is_object(v) || !count_ok(json_object_get(v, "limit")) ||
			  !count_ok(json_object_get(v, "max")) || json_object_size(v) != 2))
			pl_diag_add(d, st->pos, "analysis stage '%s': metrics.complexity_over must be {limit: N, max: N}"
					       " (functions above limit: at most max)", st->name);
		else if (!strcmp(k, "duplicated_percent") &&
			 (!json_is_number(v) || json_number_value(v) < 0 || json_number_value(v) > 100))
			pl_diag_add(d, st->pos, "analysis stage '%s': metrics.duplicated_percent must be a percentage"
					       " (0 to 100)", st->name);
		else if (!strcmp(k, "no_worse") && !json_is_boolean(v))
			pl_diag_add(d, st->pos, "analysis stage '%s': metrics.no_worse must be true or false", st->name);
	}
	if (json_is_true(json_object_get(m, "no_worse")) && !json_object_get(st->extra, "baseline"))
		pl_diag_add(d, st->pos, "analysis stage '%s': metrics.no_worse compares with the target branch:"
				       " add baseline: BRANCH", st->name);
}

int quality_validate(const struct pl_stage *st, struct pl_diags *d)
{
	validate_suppress(st, d);
	validate_metrics(st, d);
	return 0;
}

/* ---- metrics ---------------------------------------------------------- */

/* What one set of report bodies measures. */
struct measured {
	int has_complexity, has_duplication;
	json_int_t complexity_max, over;     /* over: functions above complexity_over.limit */
	double duplicated_percent;
	const json_t *functions, *clones;    /* the current run's, for messages */
};

static void measure_body(struct measured *m, const json_t *body, json_int_t limit)
{
	const char *fmt = str(body, "format");
	const json_t *metrics = json_object_get(body, "metrics"), *f;
	size_t i;

	if (fmt && !strcmp(fmt, "pmccabe")) {
		json_int_t c = json_integer_value(json_object_get(metrics, "complexity_max"));
		m->has_complexity = 1;
		m->complexity_max = c > m->complexity_max ? c : m->complexity_max;
		m->functions = json_object_get(body, "functions");
		json_array_foreach(m->functions, i, f)
			if (json_integer_value(json_object_get(f, "complexity")) > limit)
				m->over++;
	} else if (fmt && !strcmp(fmt, "jscpd")) {
		double p = json_number_value(json_object_get(metrics, "duplicated_percent"));
		m->has_duplication = 1;
		m->duplicated_percent = p > m->duplicated_percent ? p : m->duplicated_percent;
		m->clones = json_object_get(body, "clones");
	}
}

/* reports: verdict_input's [{format, name, body}] (bodies=0) or baseline bodies (bodies=1). */
static void measure(struct measured *m, const json_t *list, int bodies, json_int_t limit)
{
	size_t i;
	json_t *x;

	memset(m, 0, sizeof(*m));
	json_array_foreach(list, i, x)
		measure_body(m, bodies ? x : json_object_get(x, "body"), limit);
}

/* "src/selftest.c:60 check_all (complexity 25)", the functions above limit. */
static void put_functions(struct buf *b, const json_t *functions, json_int_t limit)
{
	size_t i, shown = 0;
	json_t *f;

	json_array_foreach(functions, i, f) {
		if (json_integer_value(json_object_get(f, "complexity")) <= limit)
			break; /* most complex first */
		if (shown == ITEMS_SHOWN) {
			buf_puts(b, ", ...");
			break;
		}
		buf_printf(b, "%s%s:%" JSON_INTEGER_FORMAT " %s (complexity %" JSON_INTEGER_FORMAT ")",
			   shown ? ", " : "", str(f, "file") ? str(f, "file") : "?",
			   json_integer_value(json_object_get(f, "line")), str(f, "function") ? str(f, "function") : "?",
			   json_integer_value(json_object_get(f, "complexity")));
		shown++;
	}
}

static void put_side(struct buf *b, const json_t *s)
{
	buf_printf(b, "%s:%" JSON_INTEGER_FORMAT "-%" JSON_INTEGER_FORMAT, str(s, "file") ? str(s, "file") : "?",
		   json_integer_value(json_object_get(s, "start")), json_integer_value(json_object_get(s, "end")));
}

static void put_clones(struct buf *b, const json_t *clones)
{
	size_t i;
	json_t *c;

	json_array_foreach(clones, i, c) {
		if (i == ITEMS_SHOWN) {
			buf_puts(b, ", ...");
			break;
		}
		buf_puts(b, i ? ", " : "");
		put_side(b, json_object_get(c, "first"));
		buf_puts(b, " = ");
		put_side(b, json_object_get(c, "second"));
	}
}

static void sep(struct buf *b)
{
	if (b->len)
		buf_puts(b, "; ");
}

static int complexity_verdict(const json_t *m, const struct measured *now, const struct measured *base,
			      struct buf *msg)
{
	json_t *max = json_object_get(m, "complexity_max"), *over = json_object_get(m, "complexity_over");
	json_int_t limit = json_integer_value(json_object_get(over, "limit"));
	int failed = 0;

	if (!now->has_complexity)
		return 0;
	if (max && now->complexity_max > json_integer_value(max)) {
		sep(msg);
		buf_printf(msg, "complexity: largest function complexity %" JSON_INTEGER_FORMAT " (limit %" JSON_INTEGER_FORMAT
				"): ", now->complexity_max, json_integer_value(max));
		put_functions(msg, now->functions, json_integer_value(max));
		failed = 1;
	}
	if (over && now->over > json_integer_value(json_object_get(over, "max"))) {
		sep(msg);
		buf_printf(msg, "complexity: %" JSON_INTEGER_FORMAT " functions above %" JSON_INTEGER_FORMAT
				" (at most %" JSON_INTEGER_FORMAT "): ", now->over, limit,
			   json_integer_value(json_object_get(over, "max")));
		put_functions(msg, now->functions, limit);
		failed = 1;
	}
	if (base && base->has_complexity && !failed &&
	    (now->complexity_max > base->complexity_max || (over && now->over > base->over))) {
		sep(msg);
		buf_printf(msg, "complexity: worse than the baseline (largest %" JSON_INTEGER_FORMAT " vs %" JSON_INTEGER_FORMAT,
			   now->complexity_max, base->complexity_max);
		if (over)
			buf_printf(msg, ", %" JSON_INTEGER_FORMAT " vs %" JSON_INTEGER_FORMAT " functions above %" JSON_INTEGER_FORMAT,
				   now->over, base->over, limit);
		buf_puts(msg, "): ");
		put_functions(msg, now->functions, now->complexity_max > base->complexity_max ? base->complexity_max : limit);
		failed = 1;
	}
	return failed;
}

static int duplication_verdict(const json_t *m, const struct measured *now, const struct measured *base,
			       struct buf *msg)
{
	json_t *limit = json_object_get(m, "duplicated_percent");

	if (!now->has_duplication)
		return 0;
	if (limit && now->duplicated_percent > json_number_value(limit)) {
		sep(msg);
		buf_printf(msg, "duplication: %.2f%% duplicated lines (limit %g%%): ", now->duplicated_percent,
			   json_number_value(limit));
	} else if (base && base->has_duplication && now->duplicated_percent > base->duplicated_percent + 0.005) {
		sep(msg);
		buf_printf(msg, "duplication: %.2f%% duplicated lines, worse than the baseline's %.2f%%: ",
			   now->duplicated_percent, base->duplicated_percent);
	} else {
		return 0;
	}
	put_clones(msg, now->clones);
	return 1;
}

int quality_metrics_verdict(const json_t *extra, const struct verdict_input *in, struct buf *msg)
{
	const json_t *m = json_object_get(extra, "metrics");
	json_int_t limit = json_integer_value(json_object_get(json_object_get(m, "complexity_over"), "limit"));
	struct measured now, base;
	int use_base, failed;

	if (!json_is_object(m))
		return 0;
	measure(&now, in->reports, 0, limit);
	use_base = json_is_true(json_object_get(m, "no_worse")) && in->baseline;
	if (use_base)
		measure(&base, in->baseline, 1, limit);
	failed = complexity_verdict(m, &now, use_base ? &base : NULL, msg);
	failed |= duplication_verdict(m, &now, use_base ? &base : NULL, msg);
	if (failed && use_base)
		buf_printf(msg, " (baseline: run %" PRId64 ")", in->baseline_run);
	return failed;
}
