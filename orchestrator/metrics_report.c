/*
 * metrics_report.c - code-quality metrics reports: pmccabe's complexity
 * table and jscpd's duplication report, each turned into the "metrics"
 * shape of reports.h.
 *
 * Why here and not in reports.c: these reports are measurements, not
 * findings; an analysis stage compares their numbers with limits and with
 * the target branch (stages/quality.c).  Both files come from a job, so
 * every byte is hostile: pmccabe's text is read line by line with explicit
 * bounds (it has no library; each line is five numbers and "file(line):
 * name"), jscpd's JSON goes through jansson and only the numbers and the
 * clone locations are kept; the duplicated-lines percentage is recomputed
 * from the line counts, never taken from the report.
 */
#include "reports.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../common/util.h"

#define PMCCABE_LINE_MAX 4096         /* bytes of one line of pmccabe output */
#define PMCCABE_FUNCTIONS_MAX 200000  /* functions in one report */
#define METRIC_NUMBER_MAX 100000000   /* any count or line number */
#define JSCPD_CLONES_MAX 100000       /* clones kept from one report */

/* ---- pmccabe --------------------------------------------------------- */

/*
 * Decimal digits from p up to end (the data is not NUL-terminated, so no
 * strtol): *out is their value, at most METRIC_NUMBER_MAX; returns the
 * first byte after them, or NULL when there is no digit or it is too big.
 */
static const char *pm_number(const char *p, const char *end, long *out)
{
	long v = 0;
	const char *start = p;

	for (; p < end && *p >= '0' && *p <= '9'; p++) {
		v = v * 10 + (*p - '0');
		if (v > METRIC_NUMBER_MAX)
			return NULL;
	}
	*out = v;
	return p > start ? p : NULL;
}

/* One decimal field ending at a tab; advances *p past the tab. */
static int pm_field(const char **p, const char *end, long *out)
{
	const char *stop = pm_number(*p, end, out);

	if (!stop || stop >= end || *stop != '\t')
		return -1;
	*p = stop + 1;
	return 0;
}

/*
 * "modified traditional statements first_line lines\tFILE(LINE): NAME";
 * the traditional McCabe number (column 2) is the complexity kept.
 */
static int pm_line(json_t *functions, const char *s, size_t n, const char *name, long lineno, long *complexity)
{
	const char *p = s, *end = s + n, *paren, *colon;
	long v[5], at;
	json_t *f;

	for (int i = 0; i < 5; i++)
		if (pm_field(&p, end, &v[i]) < 0)
			return ota_error_set(OTA_EINVAL, "%s:%ld: expected five tab-separated numbers (pmccabe's output)",
					     name, lineno);
	colon = memmem(p, (size_t)(end - p), "): ", 3);
	paren = colon ? colon : NULL;
	while (paren && paren > p && *paren != '(')
		paren--;
	if (!colon || paren <= p || colon + 3 >= end)
		return ota_error_set(OTA_EINVAL, "%s:%ld: expected FILE(LINE): FUNCTION after the numbers", name, lineno);
	if (pm_number(paren + 1, colon, &at) != colon)
		return ota_error_set(OTA_EINVAL, "%s:%ld: bad line number in FILE(LINE)", name, lineno);
	f = json_pack("{ss# ss# sI sI}", "function", colon + 3, (int)(end - colon - 3), "file", p, (int)(paren - p),
		      "line", (json_int_t)at, "complexity", (json_int_t)v[1]);
	if (!f) /* jansson refuses strings that are not UTF-8 */
		return ota_error_set(OTA_EINVAL, "%s:%ld: file or function name is not UTF-8", name, lineno);
	json_array_append_new(functions, f);
	*complexity = v[1];
	return 0;
}

static int by_complexity(const void *a, const void *b)
{
	json_int_t x = json_integer_value(json_object_get(*(json_t *const *)a, "complexity"));
	json_int_t y = json_integer_value(json_object_get(*(json_t *const *)b, "complexity"));
	return x < y ? 1 : x > y ? -1 : 0;
}

/* The functions, most complex first (stable for equal numbers: qsort on an index). */
static json_t *pm_sorted(json_t *functions)
{
	size_t n = json_array_size(functions), i;
	json_t **v = xcalloc(n ? n : 1, sizeof(*v)), *out = json_array(), *f;

	json_array_foreach(functions, i, f)
		v[i] = f;
	qsort(v, n, sizeof(*v), by_complexity);
	for (i = 0; i < n; i++)
		json_array_append(out, v[i]);
	free(v);
	return out;
}

int report_parse_pmccabe(json_t **out, const void *data, size_t len, const char *name)
{
	const char *p = data, *end = p + len;
	json_t *functions = json_array(), *sorted;
	long lineno = 0, max = 0, c = 0;
	double sum = 0;
	int rc = 0;

	*out = NULL;
	if (len > REPORT_MAX_BYTES) {
		rc = ota_error_set(OTA_EINVAL, "%s: report larger than %d bytes", name, REPORT_MAX_BYTES);
		goto out;
	}
	if (memchr(data, '\0', len)) {
		rc = ota_error_set(OTA_EINVAL, "%s: a NUL byte (pmccabe's output is text)", name);
		goto out;
	}
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
		lineno++;
		if (n > PMCCABE_LINE_MAX) {
			rc = ota_error_set(OTA_EINVAL, "%s:%ld: line longer than %d bytes", name, lineno, PMCCABE_LINE_MAX);
			goto out;
		}
		if (n && p[n - 1] == '\r')
			n--;
		if (n) {
			if (json_array_size(functions) >= PMCCABE_FUNCTIONS_MAX) {
				rc = ota_error_set(OTA_EINVAL, "%s:%ld: more than %d functions", name, lineno,
						   PMCCABE_FUNCTIONS_MAX);
				goto out;
			}
			if ((rc = pm_line(functions, p, n, name, lineno, &c)) < 0)
				goto out;
			max = c > max ? c : max;
			sum += (double)c;
		}
		p = nl ? nl + 1 : end;
	}
	sorted = pm_sorted(functions);
	*out = json_pack("{ss ss s{sI sI sf} so}", "format", "pmccabe", "name", name, "metrics", "functions",
			 (json_int_t)json_array_size(functions), "complexity_max", (json_int_t)max, "complexity_mean",
			 json_array_size(functions) ? round(100 * sum / (double)json_array_size(functions)) / 100 : 0.0,
			 "functions", sorted);
out:
	json_decref(functions);
	return rc;
}

/* ---- jscpd ------------------------------------------------------------ */

static int js_count(const json_t *o, const char *key, json_int_t *out)
{
	json_t *v = json_object_get(o, key);
	if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > METRIC_NUMBER_MAX)
		return -1;
	*out = json_integer_value(v);
	return 0;
}

/* {"name", "start", "end"} of one side of a clone, or NULL when malformed. */
static json_t *js_side(const json_t *f)
{
	const char *file = json_string_value(json_object_get(f, "name"));
	json_int_t start, stop;
	if (!file || js_count(f, "start", &start) < 0 || js_count(f, "end", &stop) < 0 || stop < start)
		return NULL;
	return json_pack("{ss sI sI}", "file", file, "start", start, "end", stop);
}

static int js_clones(json_t *clones, const json_t *dups, const char *name)
{
	size_t i;
	json_t *d;

	if (dups && !json_is_array(dups))
		return ota_error_set(OTA_EINVAL, "%s: 'duplicates' must be an array (jscpd's json reporter)", name);
	json_array_foreach(dups, i, d) {
		json_t *a = js_side(json_object_get(d, "firstFile")), *b = js_side(json_object_get(d, "secondFile"));
		json_int_t lines;
		if (!a || !b || js_count(d, "lines", &lines) < 0) {
			json_decref(a);
			json_decref(b);
			return ota_error_set(OTA_EINVAL, "%s: duplicates[%zu] needs lines and firstFile/secondFile"
					     " {name, start, end}", name, i);
		}
		if (i < JSCPD_CLONES_MAX)
			json_array_append_new(clones, json_pack("{sI so so}", "lines", lines, "first", a, "second", b));
		else {
			json_decref(a);
			json_decref(b);
		}
	}
	return 0;
}

int report_parse_jscpd(json_t **out, const void *data, size_t len, const char *name)
{
	json_t *doc = NULL, *total, *clones = json_array();
	json_int_t lines, dup, nclones;
	int rc = 0;

	*out = NULL;
	if ((rc = report_json_load(&doc, data, len, name)) < 0)
		goto out;
	total = json_object_get(json_object_get(doc, "statistics"), "total");
	if (js_count(total, "lines", &lines) < 0 || js_count(total, "duplicatedLines", &dup) < 0 ||
	    js_count(total, "clones", &nclones) < 0) {
		rc = ota_error_set(OTA_EINVAL, "%s: statistics.total needs lines, duplicatedLines and clones"
				   " (counts; jscpd's json reporter)", name);
		goto out;
	}
	if (dup > lines) {
		rc = ota_error_set(OTA_EINVAL, "%s: %" JSON_INTEGER_FORMAT " duplicated lines of %" JSON_INTEGER_FORMAT
				   " lines", name, dup, lines);
		goto out;
	}
	if ((rc = js_clones(clones, json_object_get(doc, "duplicates"), name)) < 0)
		goto out;
	*out = json_pack("{ss ss s{sI sI sI sf} sO}", "format", "jscpd", "name", name, "metrics", "lines", lines,
			 "duplicated_lines", dup, "clones", nclones, "duplicated_percent",
			 lines ? round(10000.0 * (double)dup / (double)lines) / 100 : 0.0, "clones", clones);
out:
	json_decref(doc);
	json_decref(clones);
	return rc;
}
