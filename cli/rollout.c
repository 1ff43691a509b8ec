/*
 * rollout.c - otactl's release commands: releases, rollout status, promote,
 * rollback, pause, resume, gates, audit.
 *
 * Each is one or two calls to the HTTP API (docs/api.md, "Rollouts") and a
 * readable print; --json prints the API's answer instead.  Actions need an
 * operator token and --reason, which lands in the audit log.
 */
#include "otactl.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/httpc.h"

static void fmt_time(char out[32], int64_t ms)
{
	time_t t = (time_t)(ms / 1000);
	struct tm tm;
	gmtime_r(&t, &tm);
	strftime(out, 32, "%Y-%m-%d %H:%M:%S", &tm);
}

static void fmt_dur(char out[32], int64_t ms)
{
	int64_t s = ms / 1000;
	if (ms < 0)
		s = 0;
	if (s >= 86400)
		snprintf(out, 32, "%" PRId64 "d%02" PRId64 "h", s / 86400, s % 86400 / 3600);
	else if (s >= 3600)
		snprintf(out, 32, "%" PRId64 "h%02" PRId64 "m", s / 3600, s % 3600 / 60);
	else
		snprintf(out, 32, "%" PRId64 "m%02" PRId64 "s", s / 60, s % 60);
}

/* otactl releases ID: one release, its images and where its rollout is. */
static int show_release(const char *id)
{
	json_t *ans = NULL, *x;
	char *path, when[32];
	size_t i;
	int rc;

	if (!*id || strspn(id, "0123456789") != strlen(id) || strlen(id) > 15)
		return usage_error("releases", "a release id is a number, not '%s'", id);
	path = xasprintf("/api/v1/releases/%s", id);
	rc = api(&ans, "GET", path, NULL, "cannot read the release");
	free(path);
	if (rc)
		return rc;
	if (ctl.json) {
		print_json(ans);
		json_decref(ans);
		return 0;
	}
	fmt_time(when, int_or(ans, "created_at", 0));
	printf("release %" PRId64 ": %s %s  %s\n", int_or(ans, "id", 0), str_or(ans, "product", ""),
	       str_or(ans, "version", ""), str_or(ans, "state", ""));
	printf("  run              %" PRId64 " (branch %s)\n  security counter %" PRId64 "\n  signing key      %s\n"
	       "  created          %s (otacd time)\n",
	       int_or(ans, "run_id", 0), str_or(ans, "branch", "-"), int_or(ans, "security_counter", 0),
	       str_or(ans, "key_id", "-"), when);
	if (int_or(ans, "rollback_to", 0))
		printf("  rolled back to   release %" PRId64 "\n", int_or(ans, "rollback_to", 0));
	if (int_or(ans, "reissue_of", 0))
		printf("  reissue of       release %" PRId64 "\n", int_or(ans, "reissue_of", 0));
	printf("\n%-6s %-40s %-12s %-14s %10s  %s\n", "ID", "ARTIFACT", "TYPE", "HARDWARE", "BYTES", "SHA256");
	json_array_foreach(json_object_get(ans, "artifacts"), i, x)
		printf("%-6" PRId64 " %-40s %-12s %-14s %10" PRId64 "  %.16s\n", int_or(x, "id", 0), str_or(x, "name", ""),
		       str_or(x, "type", "-"), str_or(x, "hardware", "-"), int_or(x, "size", 0), str_or(x, "sha256", ""));
	printf("\nrollout: otactl rollout status %s; checks: otactl verify %s\n", id, id);
	json_decref(ans);
	return 0;
}

int cmd_releases(int argc, char **argv)
{
	json_t *ans = NULL, *x;
	const char *id = NULL;
	size_t i;
	int rc;

	for (int a = 1; a < argc; a++) {
		if (!strcmp(argv[a], "--json"))
			ctl.json = 1;
		else if (is_option(argv[a]) || id)
			return usage_error("releases", "unexpected argument '%s'", argv[a]);
		else
			id = argv[a];
	}
	if (id)
		return show_release(id);
	if ((rc = api(&ans, "GET", "/api/v1/releases", NULL, "cannot list releases")))
		return rc;
	if (ctl.json) {
		print_json(ans);
	} else {
		printf("%-5s %-20s %-12s %-8s %-12s %s\n", "ID", "PRODUCT", "VERSION", "COUNTER", "STATE", "CREATED");
		json_array_foreach(ans, i, x) {
			char when[32];
			fmt_time(when, int_or(x, "created_at", 0));
			printf("%-5" PRId64 " %-20s %-12s %-8" PRId64 " %-12s %s\n", int_or(x, "id", 0), str_or(x, "product", ""),
			       str_or(x, "version", ""), int_or(x, "security_counter", 0), str_or(x, "state", ""), when);
		}
	}
	json_decref(ans);
	return 0;
}

static void print_eval(const char *name, const json_t *ev)
{
	printf("    gate %-14s %-13s %s\n", name, str_or(ev, "verdict", "?"), str_or(ev, "reason", ""));
}

int cmd_rollout(int argc, char **argv)
{
	json_t *ans = NULL, *ro, *fleet;
	char *path;
	size_t i;
	int rc;

	if (argc != 3 || strcmp(argv[1], "status") != 0 || is_option(argv[2]))
		return usage_error("rollout", "usage: rollout status RELEASE");
	path = xasprintf("/api/v1/releases/%s/rollout", argv[2]);
	rc = api(&ans, "GET", path, NULL, "cannot read the rollout");
	free(path);
	if (rc)
		return rc;
	if (ctl.json) {
		print_json(ans);
		json_decref(ans);
		return 0;
	}
	printf("release %" PRId64 ": %s %s, security counter %" PRId64 ", state %s", int_or(ans, "release", 0),
	       str_or(ans, "product", ""), str_or(ans, "version", ""), int_or(ans, "security_counter", 0),
	       str_or(ans, "state", ""));
	if (int_or(ans, "rollback_to", 0))
		printf(", devices sent to release %" PRId64, int_or(ans, "rollback_to", 0));
	putchar('\n');
	if ((fleet = json_object_get(ans, "fleet")))
		printf("fleet: %" PRId64 " devices run it; offered %" PRId64 ", installed %" PRId64 ", confirmed %" PRId64
		       ", reverted %" PRId64 ", boot failures %" PRId64 ", crashed %" PRId64 "\n",
		       int_or(fleet, "devices", 0), int_or(fleet, "offered", 0), int_or(fleet, "installs", 0),
		       int_or(fleet, "confirmed", 0), int_or(fleet, "reverted", 0), int_or(fleet, "boot_failed", 0),
		       int_or(fleet, "crashed", 0));
	json_array_foreach(json_object_get(ans, "rollouts"), i, ro) {
		int64_t now = int_or(ro, "now", 0), hold = int_or(ro, "hold_until", 0);
		char left[32];
		const char *gname;
		json_t *ev;
		fmt_dur(left, hold - now);
		printf("  %-10s %-8s %-16s step %" PRId64 "/%" PRId64 " at %.2f%%", str_or(ro, "stage", ""), str_or(ro, "kind", ""),
		       str_or(ro, "state", ""), int_or(ro, "step", 0) + 1, int_or(ro, "steps", 0),
		       (double)int_or(ro, "percent_bp", 0) / 100.0);
		if (!strcmp(str_or(ro, "state", ""), "holding") || !strcmp(str_or(ro, "state", ""), "waiting_window"))
			printf(", %s left (otacd time)", left);
		putchar('\n');
		if (json_object_get(ro, "reason"))
			printf("    %s\n", str_or(ro, "reason", ""));
		json_object_foreach(json_object_get(ro, "gates"), gname, ev)
			print_eval(gname, ev);
	}
	json_decref(ans);
	return 0;
}

/* promote / rollback / pause / resume */
static int action(const char *verb, int argc, char **argv)
{
	const char *release = NULL, *reason = NULL, *to = NULL;
	int skip = 0, reissue = 0, rc;
	json_t *req, *ans = NULL;
	long status = 0;
	char *path, *e;

	for (int i = 1; i < argc; i++) {
		int r;
		if ((r = opt_value("--reason", argc, argv, &i, &reason)) != 0) {
			if (r < 0)
				return usage_error(verb, "--reason needs a text");
		} else if (!strcmp(verb, "promote") && (r = opt_value("--to", argc, argv, &i, &to)) != 0) {
			if (r < 0)
				return usage_error(verb, "--to needs a stage name");
		} else if (!strcmp(verb, "promote") && !strcmp(argv[i], "--skip-step")) {
			skip = 1;
		} else if (!strcmp(verb, "rollback") && !strcmp(argv[i], "--reissue")) {
			reissue = 1;
		} else if (is_option(argv[i]) || release) {
			return usage_error(verb, "unexpected argument '%s'", argv[i]);
		} else {
			release = argv[i];
		}
	}
	if (!release)
		return usage_error(verb, "which release?");
	if (!reason || !*reason)
		return usage_error(verb, "--reason is required: it goes into the audit log");
	if (to && skip)
		return usage_error(verb, "--to and --skip-step exclude each other");
	req = json_pack("{ss}", "reason", reason);
	if (to)
		json_object_set_new(req, "to", json_string(to));
	if (skip)
		json_object_set_new(req, "skip_step", json_true());
	if (reissue)
		json_object_set_new(req, "reissue", json_true());
	e = httpc_escape(release);
	path = xasprintf("/api/v1/releases/%s/%s", e, verb);
	rc = api_raw(&ans, &status, "POST", path, req);
	if (!rc) {
		if (status < 200 || status >= 300) {
			char *what = xasprintf("cannot %s release %s", verb, release);
			rc = api_fail(status, ans, what);
			free(what);
		} else if (ctl.json) {
			print_json(ans);
		} else {
			printf("release %s: %s", release, str_or(ans, "state", "done"));
			if (json_object_get(ans, "message"))
				printf(": %s", str_or(ans, "message", ""));
			if (json_object_get(ans, "run"))
				printf(" (re-signing in run %" PRId64 ")", int_or(ans, "run", 0));
			putchar('\n');
		}
	}
	json_decref(req);
	json_decref(ans);
	free(path);
	free(e);
	return rc;
}

int cmd_promote(int argc, char **argv)
{
	return action("promote", argc, argv);
}

int cmd_rollback(int argc, char **argv)
{
	return action("rollback", argc, argv);
}

int cmd_pause(int argc, char **argv)
{
	return action("pause", argc, argv);
}

int cmd_resume(int argc, char **argv)
{
	return action("resume", argc, argv);
}

static void num(char out[24], const json_t *v)
{
	if (json_is_number(v))
		snprintf(out, 24, "%.4g", json_number_value(v));
	else if (json_is_string(v))
		snprintf(out, 24, "%s", json_string_value(v));
	else
		snprintf(out, 24, "-");
}

int cmd_gates(int argc, char **argv)
{
	json_t *ans = NULL, *x;
	char *path;
	size_t i;
	int rc;

	if (argc != 2 || is_option(argv[1]))
		return usage_error("gates", "which release?");
	path = xasprintf("/api/v1/releases/%s/gates", argv[1]);
	rc = api(&ans, "GET", path, NULL, "cannot read gate evaluations");
	free(path);
	if (rc)
		return rc;
	if (ctl.json) {
		print_json(ans);
	} else {
		printf("%-19s %-10s %-4s %-12s %-12s %-9s %-9s %-9s %-7s %s\n", "AT", "STAGE", "STEP", "GATE", "VERDICT",
		       "ESTIMATE", "LOW", "HIGH", "N", "REASON");
		json_array_foreach(ans, i, x) {
			const json_t *ev = json_object_get(x, "eval");
			char when[32], est[24], lo[24], hi[24];
			fmt_time(when, int_or(x, "at", 0));
			num(est, json_object_get(ev, "estimate"));
			num(lo, json_object_get(ev, "lo"));
			num(hi, json_object_get(ev, "hi"));
			printf("%-19s %-10s %-4" PRId64 " %-12s %-12s %-9s %-9s %-9s %-7" PRId64 " %s\n", when,
			       str_or(x, "stage", ""), int_or(x, "step", 0) + 1, str_or(x, "gate", ""), str_or(x, "verdict", ""),
			       est, lo, hi, int_or(ev, "n", 0), str_or(ev, "reason", ""));
		}
	}
	json_decref(ans);
	return 0;
}

int cmd_audit(int argc, char **argv)
{
	const char *release = NULL;
	json_t *ans = NULL, *x;
	char *path;
	size_t i;
	int rc;

	for (int j = 1; j < argc; j++) {
		int r = opt_value("--release", argc, argv, &j, &release);
		if (r <= 0)
			return usage_error("audit", r < 0 ? "--release needs a release id" : "unexpected argument '%s'", argv[j]);
	}
	path = release ? xasprintf("/api/v1/audit?release=%s", release) : xstrdup("/api/v1/audit");
	rc = api(&ans, "GET", path, NULL, "cannot read the audit log");
	free(path);
	if (rc)
		return rc;
	if (ctl.json) {
		print_json(ans);
	} else {
		printf("%-19s %-14s %-14s %-9s %s\n", "AT", "WHO", "ACTION", "RELEASE", "WHY");
		json_array_foreach(ans, i, x) {
			char when[32], what[32];
			json_t *run = json_object_get(json_object_get(x, "detail"), "run");
			fmt_time(when, int_or(x, "at", 0));
			/* a release's version, or the run an action was about (cancel) */
			if (json_is_integer(run) && !json_is_string(json_object_get(x, "version")))
				snprintf(what, sizeof(what), "run %lld", (long long)json_integer_value(run));
			else if (json_is_string(json_object_get(json_object_get(x, "detail"), "flag"))) /* issue 17 */
				snprintf(what, sizeof(what), "flag %s",
					 json_string_value(json_object_get(json_object_get(x, "detail"), "flag")));
			else
				snprintf(what, sizeof(what), "%s", str_or(x, "version", ""));
			printf("%-19s %-14s %-14s %-9s %s\n", when, str_or(x, "actor", ""), str_or(x, "action", ""), what,
			       str_or(x, "reason", ""));
		}
	}
	json_decref(ans);
	return 0;
}
