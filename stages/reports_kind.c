/*
 * reports_kind.c - the part of the build, test, analysis and hil kinds
 * that is not one kind's own: key checks, verdicts from stored reports,
 * and loading those reports on the engine thread.
 *
 * Why one file: test and hil judge JUnit results the same way, and every
 * report-reading kind checks `reports:` the same way.  How: agents upload
 * report files after the steps (docs/stages.md); the API parses them
 * (orchestrator/reports.c) and stores one row per file in `reports`.  When
 * the attempt ends, the engine calls rk_load_for_verdict() and hands the
 * bodies to the kind's verdict, which only computes - no I/O - so the rules
 * (quarantine, allow_failures, thresholds, baseline) are unit-tested
 * without a daemon (tests/test_stages.c).
 */
#include "reports_kind.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "../common/util.h"
#include "../orchestrator/db/db.h"
#include "../orchestrator/store.h"
#include "quality.h"

#define MESSAGE_ITEMS 5      /* failures / findings named in a message */
#define ITEM_TEXT_MAX 160    /* bytes of one failure's message shown */

/* ---- validation -------------------------------------------------------- */

int rk_validate_reports(const struct pl_stage *st, struct pl_diags *d, const char *const *formats, int required)
{
	json_t *rep = json_object_get(st->extra, "reports"), *v;
	const char *k;
	struct buf list = BUF_INIT;

	for (size_t i = 0; formats[i]; i++)
		buf_printf(&list, "%s%s", i ? ", " : "", formats[i]);
	if (!rep) {
		if (required)
			pl_diag_add(d, st->pos, "%s stage '%s' needs reports: {%s: PATH}", st->kind, st->name,
				    formats[0]);
		goto out;
	}
	if (!json_is_object(rep) || !json_object_size(rep)) {
		pl_diag_add(d, st->pos, "%s stage '%s': 'reports' must be a mapping of format to path (%s)", st->kind,
			    st->name, buf_cstr(&list));
		goto out;
	}
	json_object_foreach(rep, k, v) {
		size_t i;
		for (i = 0; formats[i]; i++)
			if (!strcmp(formats[i], k))
				break;
		if (!formats[i])
			pl_diag_add(d, st->pos, "%s stage '%s': unknown report format '%s' (%s stages read %s)", st->kind,
				    st->name, k, st->kind, buf_cstr(&list));
		else if (!json_is_string(v) || !*json_string_value(v))
			pl_diag_add(d, st->pos, "%s stage '%s': reports.%s must be a path or glob in the workspace",
				    st->kind, st->name, k);
		else if (json_string_value(v)[0] == '/' || strstr(json_string_value(v), ".."))
			pl_diag_add(d, st->pos, "%s stage '%s': reports.%s '%s' must be a relative path inside the workspace",
				    st->kind, st->name, k, json_string_value(v));
	}
out:
	buf_release(&list);
	return 0;
}

int rk_validate_bool(const struct pl_stage *st, struct pl_diags *d, const char *key)
{
	json_t *v = json_object_get(st->extra, key);
	if (v && !json_is_boolean(v))
		pl_diag_add(d, st->pos, "%s stage '%s': '%s' must be true or false", st->kind, st->name, key);
	return 0;
}

int rk_validate_strings(const struct pl_stage *st, struct pl_diags *d, const char *key)
{
	json_t *v = json_object_get(st->extra, key), *x;
	size_t i;
	if (!v)
		return 0;
	if (!json_is_array(v)) {
		pl_diag_add(d, st->pos, "%s stage '%s': '%s' must be a list of strings", st->kind, st->name, key);
		return 0;
	}
	json_array_foreach(v, i, x)
		if (!json_is_string(x) || !*json_string_value(x)) {
			pl_diag_add(d, st->pos, "%s stage '%s': %s[%zu] must be a non-empty string", st->kind, st->name,
				    key, i);
			break;
		}
	return 0;
}

int rk_validate_tests(const struct pl_stage *st, struct pl_diags *d)
{
	rk_validate_bool(st, d, "allow_failures");
	rk_validate_strings(st, d, "quarantine");
	return 0;
}

/* ---- test verdict ----------------------------------------------------- */

static const char *str(const json_t *o, const char *key)
{
	return json_string_value(json_object_get(o, key));
}

static int quarantined(const json_t *list, const json_t *c)
{
	const char *name = str(c, "name"), *cls = str(c, "classname");
	size_t i, cl = cls ? strlen(cls) : 0;
	json_t *q;

	json_array_foreach(list, i, q) {
		const char *s = json_string_value(q);
		if (!s || !name)
			continue;
		if (!strcmp(s, name))
			return 1;
		if (cls && !strncmp(s, cls, cl) && s[cl] == '.' && !strcmp(s + cl + 1, name))
			return 1;
	}
	return 0;
}

/* "name: first line of the message", cut at ITEM_TEXT_MAX. */
static void put_item(struct buf *b, const char *name, const char *text)
{
	size_t n = text ? strcspn(text, "\n") : 0;
	if (n > ITEM_TEXT_MAX)
		n = ITEM_TEXT_MAX;
	buf_puts(b, name ? name : "?");
	if (n)
		buf_printf(b, ": %.*s", (int)n, text);
}

int rk_tests_verdict(const json_t *spec, const struct job_result *r, const struct verdict_input *in, char **message)
{
	const json_t *extra = json_object_get(spec, "extra");
	const json_t *quarantine = json_object_get(extra, "quarantine");
	int allow = json_is_true(json_object_get(extra, "allow_failures"));
	size_t total = 0, failed = 0, held = 0, njunit = 0, i, k;
	json_t *rep, *c;
	struct buf b = BUF_INIT, items = BUF_INIT;
	int verdict = r->failure_kind != NULL;

	*message = NULL;
	json_array_foreach(in->reports, i, rep) {
		if (!str(rep, "format") || strcmp(str(rep, "format"), "junit"))
			continue;
		njunit++;
		json_array_foreach(json_object_get(json_object_get(rep, "body"), "cases"), k, c) {
			const char *status = str(c, "status");
			total++;
			if (!status || (strcmp(status, "failed") && strcmp(status, "error")))
				continue;
			if (quarantined(quarantine, c)) {
				held++;
				continue;
			}
			if (failed < MESSAGE_ITEMS) {
				if (failed)
					buf_puts(&items, "; ");
				put_item(&items, str(c, "name"), str(c, "message") ? str(c, "message") : status);
			}
			failed++;
		}
	}
	if (failed) {
		buf_printf(&b, "%zu of %zu tests failed: %s%s", failed, total, buf_cstr(&items),
			   failed > MESSAGE_ITEMS ? "; ..." : "");
		if (allow)
			buf_puts(&b, " (allowed: allow_failures)");
		if (!allow)
			verdict = 1;
	} else if (!njunit && json_object_get(json_object_get(extra, "reports"), "junit") && !r->failure_kind) {
		buf_puts(&b, "no test report was recorded");
		verdict = 1;
	} else if (held && !r->failure_kind) {
		buf_printf(&b, "%zu tests passed, %zu quarantined failures ignored", total - held, held);
	}
	/* A timeout, cancel or lost rig says more than the tests that ran. */
	if (b.len && (!r->failure_kind || !strcmp(r->failure_kind, "script") || !r->message || !*r->message))
		*message = buf_detach(&b);
	buf_release(&b);
	buf_release(&items);
	return verdict;
}

/* ---- analysis verdict ------------------------------------------------- */

static int in_baseline(const json_t *baseline, const char *fp)
{
	size_t i, k;
	json_t *body, *f;
	if (!fp)
		return 0;
	json_array_foreach(baseline, i, body)
		json_array_foreach(json_object_get(body, "findings"), k, f)
			if (str(f, "fingerprint") && !strcmp(str(f, "fingerprint"), fp))
				return 1;
	return 0;
}

static void put_finding(struct buf *b, const json_t *f)
{
	json_t *line = json_object_get(f, "line");
	size_t n;
	const char *m = str(f, "message");
	buf_puts(b, str(f, "file") ? str(f, "file") : "?");
	if (json_is_integer(line))
		buf_printf(b, ":%" JSON_INTEGER_FORMAT, json_integer_value(line));
	buf_printf(b, " %s", str(f, "rule") ? str(f, "rule") : "?");
	n = m ? strcspn(m, "\n") : 0;
	if (n > ITEM_TEXT_MAX)
		n = ITEM_TEXT_MAX;
	if (n)
		buf_printf(b, " %.*s", (int)n, m);
}

int rk_analysis_verdict(const json_t *spec, const struct job_result *r, const struct verdict_input *in,
			char **message)
{
	const json_t *extra = json_object_get(spec, "extra");
	json_t *thresholds = json_object_get(extra, "thresholds"), *counts = json_object(), *rep, *f, *t;
	json_t *own = NULL;
	const json_t *suppress = json_object_get(extra, "suppress");
	const char *baseline_branch = str(extra, "baseline"), *sev;
	const json_t *base = baseline_branch ? in->baseline : NULL;
	struct buf b = BUF_INIT, items = BUF_INIT, metrics = BUF_INIT;
	size_t i, k, shown = 0, known = 0, suppressed = 0;
	int over = 0, verdict = r->failure_kind != NULL, metrics_failed;

	*message = NULL;
	if (!json_is_object(thresholds))
		thresholds = own = json_pack("{si}", "error", 0);
	/* count what is new */
	json_array_foreach(in->reports, i, rep) {
		const char *fmt = str(rep, "format");
		if (!fmt || (strcmp(fmt, "cppcheck") && strcmp(fmt, "sarif")))
			continue;
		json_array_foreach(json_object_get(json_object_get(rep, "body"), "findings"), k, f) {
			if (quality_suppressed(suppress, f)) {
				suppressed++;
				continue;
			}
			if (base && in_baseline(base, str(f, "fingerprint"))) {
				known++;
				continue;
			}
			quality_count(counts, f);
		}
	}
	/* compare with the thresholds */
	json_object_foreach(thresholds, sev, t) {
		json_int_t n = json_integer_value(json_object_get(counts, sev));
		if (json_is_integer(t) && n > json_integer_value(t)) {
			buf_printf(&b, "%s%" JSON_INTEGER_FORMAT " %s finding%s (threshold %" JSON_INTEGER_FORMAT ")",
				   over ? ", " : "", n, sev, n == 1 ? "" : "s", json_integer_value(t));
			over = 1;
		}
	}
	if (over) {
		verdict = 1;
		/* the first findings of the severities over their threshold */
		json_array_foreach(in->reports, i, rep) {
			json_array_foreach(json_object_get(json_object_get(rep, "body"), "findings"), k, f) {
				if (shown >= MESSAGE_ITEMS || !quality_over(counts, thresholds, f) ||
				    quality_suppressed(suppress, f) || (base && in_baseline(base, str(f, "fingerprint"))))
					continue;
				buf_puts(&items, shown ? "; " : "");
				put_finding(&items, f);
				shown++;
			}
		}
		buf_printf(&b, "%s: %s", base ? " new since the baseline" : "", buf_cstr(&items));
		if (base && known)
			buf_printf(&b, " (%zu findings also in run %" PRId64 " ignored)", known, in->baseline_run);
		if (suppressed)
			buf_printf(&b, " (%zu suppressed)", suppressed);
	}
	metrics_failed = quality_metrics_verdict(extra, in, &metrics);
	if (over || metrics_failed) {
		verdict = 1;
		*message = xasprintf("%s%s%s%s", over ? "static analysis: " : "", over ? buf_cstr(&b) : "",
				     over && metrics_failed ? "; " : "", buf_cstr(&metrics));
	} else if (baseline_branch && !in->baseline && !r->failure_kind) {
		/* not a failure: say why every finding counted */
		*message = json_object_get(extra, "metrics")
				   ? xasprintf("no passed run on %s to compare with: judged on the limits alone, none exceeded",
					       baseline_branch)
				   : xasprintf("no passed run on %s to compare with: every finding counted, none over its threshold",
					       baseline_branch);
	}
	if (*message && r->failure_kind && strcmp(r->failure_kind, "script") && r->message && *r->message) {
		free(*message);
		*message = NULL;
	}
	json_decref(counts);
	json_decref(own);
	buf_release(&b);
	buf_release(&items);
	buf_release(&metrics);
	return verdict;
}

/* ---- loading (engine thread) ------------------------------------------ */

static int load_reports(struct store *db, int64_t job_id, int attempt, json_t *out)
{
	struct db_stmt *st = store_q(db, "SELECT format, name, body FROM reports WHERE job_id = ? AND attempt = ? ORDER BY id");
	int rc;
	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, job_id);
	db_bind_int64(st, 2, attempt);
	while ((rc = db_step(st)) == 1) {
		json_t *body = json_loads(db_column_text(st, 2), 0, NULL);
		json_array_append_new(out, json_pack("{ss ss so}", "format", db_column_text(st, 0), "name",
						     db_column_text(st, 1), "body", body ? body : json_object()));
	}
	db_reset(st);
	return rc < 0 ? rc : 0;
}

int rk_load_for_verdict(struct store *db, int64_t run_id, int64_t job_id, int attempt, const json_t *spec,
			json_t **reports, json_t **baseline, int64_t *baseline_run)
{
	const char *branch = str(json_object_get(spec, "extra"), "baseline");
	const char *stage = str(spec, "stage");
	struct db_stmt *st;
	char *ref = NULL;
	int64_t base = 0;
	int rc;

	*reports = json_array();
	*baseline = NULL;
	*baseline_run = 0;
	if ((rc = load_reports(db, job_id, attempt, *reports)) < 0 || !branch || !stage)
		goto out;
	ref = xasprintf("refs/heads/%s", branch);
	st = store_q(db, "SELECT r.id FROM runs r WHERE r.state = 'passed' AND r.ref = ? AND r.id != ?"
			    " AND r.pipeline = (SELECT pipeline FROM runs WHERE id = ?) ORDER BY r.id DESC LIMIT 1");
	if (!st) {
		rc = OTA_ERROR;
		goto out;
	}
	db_bind_text(st, 1, ref);
	db_bind_int64(st, 2, run_id);
	db_bind_int64(st, 3, run_id);
	if ((rc = db_step(st)) == 1)
		base = db_column_int64(st, 0);
	db_reset(st);
	if (rc < 0 || !base)
		goto out;
	rc = 0;
	st = store_q(db, "SELECT rp.body FROM reports rp JOIN jobs j ON j.id = rp.job_id AND j.attempt = rp.attempt"
			    " JOIN stages s ON s.id = j.stage_id WHERE j.run_id = ? AND s.name = ? ORDER BY rp.id");
	if (!st) {
		rc = OTA_ERROR;
		goto out;
	}
	db_bind_int64(st, 1, base);
	db_bind_text(st, 2, stage);
	*baseline = json_array();
	while ((rc = db_step(st)) == 1) {
		json_t *body = json_loads(db_column_text(st, 0), 0, NULL);
		if (body)
			json_array_append_new(*baseline, body);
	}
	db_reset(st);
	*baseline_run = base;
	rc = rc < 0 ? rc : 0;
out:
	free(ref);
	return rc < 0 ? rc : 0;
}
