/*
 * runs.c - otactl's run commands: trigger, runs, show, cancel.
 *
 * `trigger` posts a pipeline file or names a configured repository and a
 * ref, prints the run id and, with --wait, polls the run to its end,
 * printing job state changes; a daemon that restarts meanwhile is waited
 * for (runs survive that).  `runs` lists runs as a table, `show` one run
 * with its source, stages and jobs (its test and analysis reports through
 * reports.c), and `cancel` cancels a run with a reason for the audit log.
 * --json prints the API's answers instead.
 */
#include "otactl.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/httpc.h"

/* ---- trigger ---------------------------------------------------------- */

/* Poll the run until it ends, printing job state changes on stderr.
 * 0 when it passed, 1 when it did not, or an API exit code. */
static int wait_run(const char *run_id)
{
	char *path = xasprintf("/api/v1/runs/%s", run_id);
	json_t *seen = json_object();
	int64_t down_since = 0;
	int rc;

	for (;;) {
		json_t *run = NULL, *stage, *job;
		const char *state;
		long status = 0;
		size_t i, k;

		rc = api_raw(&run, &status, "GET", path, NULL);
		if (rc == EXIT_UNREACHABLE) {
			/* The daemon may be restarting: runs survive that. */
			if (!down_since)
				down_since = ctl_now_ms();
			if (ctl_now_ms() - down_since > UNREACHABLE_GIVE_UP_MS)
				break;
			ctl_sleep_ms(2000);
			continue;
		}
		if (rc)
			break;
		down_since = 0;
		if (status != 200) {
			rc = api_fail(status, run, "cannot read the run");
			json_decref(run);
			break;
		}
		json_array_foreach(json_object_get(run, "stages"), i, stage) {
			json_array_foreach(json_object_get(stage, "jobs"), k, job) {
				char id[64];
				const char *js = str_or(job, "state", "?");
				const char *old = json_string_value(json_object_get(seen, ctl_id_text(id, sizeof(id), json_object_get(job, "id"))));
				if (old && !strcmp(old, js))
					continue;
				json_object_set_new(seen, id, json_string(js));
				fprintf(stderr, "  %-30s ", str_or(job, "name", "?"));
				print_state(stderr, js, 0);
				if (json_is_string(json_object_get(job, "failure")))
					fprintf(stderr, " (%s)", str_or(job, "failure", ""));
				fputc('\n', stderr);
			}
		}
		state = str_or(run, "state", NULL);
		if (ctl_state_final(state) || int_or(run, "finished_at", 0) > 0) {
			fprintf(stderr, "run %s ", run_id);
			print_state(stderr, state, 0);
			if (json_is_string(json_object_get(run, "error")))
				fprintf(stderr, ": %s", str_or(run, "error", ""));
			fputc('\n', stderr);
			rc = state && !strcmp(state, "passed") ? EXIT_OK : EXIT_FAIL;
			json_decref(run);
			break;
		}
		json_decref(run);
		ctl_sleep_ms(1000);
	}
	json_decref(seen);
	free(path);
	return rc;
}

/* Print the problems of a 422 answer on stderr. */
static void print_invalid(const json_t *ans, const char *what, int headline)
{
	const json_t *errors = json_object_get(ans, "errors"), *e;
	size_t i;

	if (headline || !json_array_size(errors))
		fprintf(stderr, "otactl: %s: %s\n", what, str_or(ans, "error", "invalid pipeline"));
	json_array_foreach(errors, i, e)
		fprintf(stderr, "%s\n", json_string_value(e) ? json_string_value(e) : "?");
}

/* A run was started: print its id (the answer with --json), then follow
 * it to the end with --wait. */
static int run_started(const json_t *ans, const json_t *id_value, int wait)
{
	char id[64];

	ctl_id_text(id, sizeof(id), id_value);
	if (ctl.json)
		print_json(ans);
	else
		printf("%s\n", id);
	fflush(stdout);
	return wait ? wait_run(id) : EXIT_OK;
}

/* otactl trigger FILE: the pipeline text is sent, no repository involved. */
static int trigger_file(const char *file, const char *ref, int wait)
{
	struct buf text = BUF_INIT;
	json_t *req = NULL, *ans = NULL;
	long status = 0;
	int rc;

	if (ota_read_file(&text, file, PIPELINE_MAX) < 0) {
		fprintf(stderr, "otactl: %s\n", ota_error_last());
		rc = EXIT_FAIL;
		goto out;
	}
	req = json_object();
	json_object_set_new(req, "pipeline", json_stringn(text.ptr, text.len));
	json_object_set_new(req, "file", json_string(file));
	json_object_set_new(req, "ref", json_string(ref));
	json_object_set_new(req, "commit", json_null());
	if (!json_string_value(json_object_get(req, "pipeline"))) {
		fprintf(stderr, "otactl: %s is not valid UTF-8\n", file);
		rc = EXIT_FAIL;
		goto out;
	}
	if ((rc = api_raw(&ans, &status, "POST", "/api/v1/runs", req)) != 0)
		goto out;
	if (status == 422) {
		print_invalid(ans, file, 0);
		rc = EXIT_FAIL;
	} else if (status == 403 && json_array_size(json_object_get(ans, "errors"))) {
		/* refused by the release policy: every reason */
		print_invalid(ans, file, 1);
		rc = EXIT_FAIL;
	} else if (status < 200 || status >= 300) {
		rc = api_fail(status, ans, "cannot start the run");
	} else {
		rc = run_started(ans, json_object_get(ans, "id"), wait);
	}
out:
	json_decref(req);
	json_decref(ans);
	buf_release(&text);
	return rc;
}

/*
 * otactl trigger REPO REF: the daemon resolves REF in its mirror of REPO and
 * runs the pipeline file found at that commit (docs/api.md, POST
 * /api/v1/triggers).  201 {"id"}: started; 202 {"reason"}: nothing to run.
 */
static int trigger_repo(const char *repo, const char *ref, int wait)
{
	json_t *req = json_pack("{ss ss}", "repo", repo, "ref", ref), *ans = NULL, *run_id;
	char *what = xasprintf("%s at %s", repo, ref);
	long status = 0;
	int rc;

	if (!req) {
		fprintf(stderr, "otactl: REPO and REF must be valid UTF-8\n");
		rc = EXIT_USAGE;
		goto out;
	}
	if ((rc = api_raw(&ans, &status, "POST", "/api/v1/triggers", req)) != 0)
		goto out;
	run_id = json_object_get(ans, "id") ? json_object_get(ans, "id") : json_object_get(ans, "run_id");
	if ((status == 201 || status == 202) && (json_is_integer(run_id) || json_is_string(run_id))) {
		rc = run_started(ans, run_id, wait);
	} else if (status == 202) {
		char delivery[64];
		if (ctl.json)
			print_json(ans);
		if (str_or(ans, "reason", NULL))
			fprintf(stderr, "otactl: no run started for %s: %s\n", what, str_or(ans, "reason", ""));
		else
			fprintf(stderr, "otactl: %s: the daemon took the trigger (delivery %s) but has not started "
				"a run yet (state %s)\n", what,
				ctl_id_text(delivery, sizeof(delivery), json_object_get(ans, "delivery")),
				str_or(ans, "state", "unknown"));
		rc = EXIT_FAIL;
	} else if (status == 422) {
		print_invalid(ans, what, 1);
		rc = EXIT_FAIL;
	} else {
		char *fail = xasprintf("cannot start a run of %s", what);
		rc = api_fail(status, ans, fail);
		free(fail);
		if (status == 404 && access(repo, F_OK) == 0)
			fprintf(stderr, "otactl: (to run the pipeline file %s at a ref: otactl trigger %s --ref %s)\n",
				repo, repo, ref);
	}
out:
	json_decref(req);
	json_decref(ans);
	free(what);
	return rc;
}

int cmd_trigger(int argc, char **argv)
{
	const char *pos[2] = { NULL, NULL }, *ref = NULL;
	size_t npos = 0;
	struct stat st;
	int wait = 0, r;

	for (int i = 1; i < argc; i++) {
		if ((r = opt_value("--ref", argc, argv, &i, &ref)) != 0) {
			if (r < 0)
				return usage_error("trigger", "--ref needs a value");
		} else if (!strcmp(argv[i], "--wait")) {
			wait = 1;
		} else if (is_option(argv[i])) {
			return usage_error("trigger", "unknown option '%s'", argv[i]);
		} else if (npos == OTA_ARRAY_SIZE(pos)) {
			return usage_error("trigger", "unexpected argument '%s'", argv[i]);
		} else {
			pos[npos++] = argv[i];
		}
	}
	if (npos == 0)
		return usage_error("trigger", "what to run?  A pipeline FILE, or a repository and a ref");
	if (npos == 2) {
		if (ref)
			return usage_error("trigger", "--ref goes with a pipeline FILE; with REPO REF the ref is "
					   "the second argument");
		return trigger_repo(pos[0], pos[1], wait);
	}
	if (stat(pos[0], &st) == 0 && !S_ISDIR(st.st_mode))
		return trigger_file(pos[0], ref ? ref : "refs/heads/main", wait);
	return usage_error("trigger", "'%s' is not a pipeline file%s; to run a repository's pipeline give "
			   "its name and a ref, as in 'otactl trigger acme/sensor-node main'",
			   pos[0], stat(pos[0], &st) == 0 ? " (it is a directory)" : "");
}

/* ---- runs, show ------------------------------------------------------------ */

int cmd_runs(int argc, char **argv)
{
	const char *limit = "20", *pipeline = NULL, *state = NULL;
	struct buf path = BUF_INIT;
	struct ctl_table t = { 7, 4, STRVEC_INIT };
	json_t *ans = NULL, *run;
	size_t i;
	int rc, r;

	for (int a = 1; a < argc; a++) {
		if ((r = opt_value("--limit", argc, argv, &a, &limit)) ||
		    (r = opt_value("--pipeline", argc, argv, &a, &pipeline)) ||
		    (r = opt_value("--state", argc, argv, &a, &state))) {
			if (r < 0)
				return usage_error("runs", "%s needs a value", argv[a]);
		} else {
			return usage_error("runs", "unexpected argument '%s'", argv[a]);
		}
	}
	if (strspn(limit, "0123456789") != strlen(limit) || !*limit)
		return usage_error("runs", "--limit wants a number");
	buf_printf(&path, "/api/v1/runs?limit=%s", limit);
	if (pipeline) {
		char *e = httpc_escape(pipeline);
		buf_printf(&path, "&pipeline=%s", e);
		free(e);
	}
	if (state) {
		char *e = httpc_escape(state);
		buf_printf(&path, "&state=%s", e);
		free(e);
	}
	if ((rc = api(&ans, "GET", buf_cstr(&path), NULL, "cannot list runs")) != 0)
		goto out;
	if (ctl.json) {
		print_json(ans);
		goto out;
	}
	ctl_table_row(&t, "ID", "PIPELINE", "REF", "COMMIT", "STATE", "CREATED", "DURATION");
	json_array_foreach(json_object_get(ans, "runs"), i, run) {
		char id[64], created[32], dur[32], commit[SHORT_COMMIT + 1];
		snprintf(commit, sizeof(commit), "%s", str_or(run, "commit", "-"));
		ctl_fmt_time(created, sizeof(created), int_or(run, "created_at", 0));
		ctl_obj_duration(dur, sizeof(dur), run);
		ctl_table_row(&t, ctl_id_text(id, sizeof(id), json_object_get(run, "id")), str_or(run, "pipeline", "-"),
			  ctl_short_ref(str_or(run, "ref", NULL)), commit, str_or(run, "state", "-"), created, dur);
	}
	ctl_table_print(&t);
out:
	json_decref(ans);
	buf_release(&path);
	return rc;
}

int ctl_get_run(json_t **out, const char *run)
{
	char *e = httpc_escape(run), *path = xasprintf("/api/v1/runs/%s", e);
	char *what = xasprintf("run %s", run);
	int rc = api(out, "GET", path, NULL, what);
	free(e);
	free(path);
	free(what);
	return rc;
}

static void job_result(char *out, size_t n, const json_t *job)
{
	const json_t *ec = json_object_get(job, "exit_code");
	const char *f = str_or(job, "failure", NULL), *m = str_or(job, "message", NULL);
	if (f)
		snprintf(out, n, "%s%s%s", f, m ? ": " : "", m ? m : "");
	else if (json_is_integer(ec))
		snprintf(out, n, "exit %" JSON_INTEGER_FORMAT, json_integer_value(ec));
	else
		snprintf(out, n, "-");
}

/* "  key      value" with value made printable on one line, if present. */
static void show_field(const char *key, const char *value)
{
	char *v;
	if (!value)
		return;
	v = ctl_one_line(value, 200);
	printf("  %-8s %s\n", key, v);
	free(v);
}

/* Where the run's code came from: repository, ref, commit and its first
 * message line, author, pusher (each only when the daemon knows it). */
static void show_source(const json_t *run)
{
	const char *commit = str_or(run, "commit", NULL), *message = str_or(run, "message", NULL);

	show_field("repo", str_or(run, "repo", NULL));
	show_field("ref", str_or(run, "ref", "-"));
	if (commit) {
		char *m = message ? ctl_one_line(message, 100) : NULL;
		printf("  commit   %.*s%s%s\n", SHORT_COMMIT, commit, m && *m ? "  " : "", m ? m : "");
		free(m);
	}
	show_field("author", str_or(run, "author", NULL));
	show_field("pusher", str_or(run, "pusher", NULL));
	/* the server's decision: secrets, keys and rollouts only when protected */
	if (json_object_get(run, "protected"))
		printf("  trust    %s: %s\n", json_is_true(json_object_get(run, "protected")) ? "protected" : "unprotected",
		       str_or(run, "trust_reason", ""));
}

int cmd_show(int argc, char **argv)
{
	struct ctl_table t = { 8, 3, STRVEC_INIT };
	json_t *run = NULL, *stage, *job;
	char id[64], created[32], dur[32];
	const char *which = NULL;
	int rc, tests = 0, findings = 0, otacd_clock = 0;
	size_t i, k;

	for (int a = 1; a < argc; a++) {
		if (!strcmp(argv[a], "--tests"))
			tests = 1;
		else if (!strcmp(argv[a], "--findings"))
			findings = 1;
		else if (is_option(argv[a]) || which)
			return usage_error("show", "unexpected argument '%s'", argv[a]);
		else
			which = argv[a];
	}
	if (!which)
		return usage_error("show", "which run?");
	if ((rc = ctl_get_run(&run, which)) != 0)
		return rc;
	if (tests || findings) {
		rc = show_reports(ctl_id_text(id, sizeof(id), json_object_get(run, "id")), tests, findings);
		goto out;
	}
	if (ctl.json) {
		print_json(run);
		goto out;
	}
	printf("run %s  %s  ", ctl_id_text(id, sizeof(id), json_object_get(run, "id")), str_or(run, "pipeline", "-"));
	print_state(stdout, str_or(run, "state", "-"), 0);
	ctl_fmt_time(created, sizeof(created), int_or(run, "created_at", 0));
	ctl_obj_duration(dur, sizeof(dur), run);
	putchar('\n');
	show_source(run);
	printf("  file     %s\n  trigger  %s\n  created  %s\n  duration %s (otacd time)\n", str_or(run, "file", "-"),
	       str_or(run, "trigger", "-"), created, dur);
	if (str_or(run, "error", NULL))
		printf("  error    %s\n", str_or(run, "error", ""));
	putchar('\n');
	ctl_table_row(&t, "STAGE", "JOB", "NAME", "STATE", "ATTEMPT", "AGENT", "DURATION", "RESULT");
	json_array_foreach(json_object_get(run, "stages"), i, stage) {
		const char *sname = str_or(stage, "name", "-");
		if (!json_array_size(json_object_get(stage, "jobs")))
			ctl_table_row(&t, sname, "-", "-", str_or(stage, "state", "-"), "-", "-", "-",
				  str_or(stage, "kind", "-"));
		json_array_foreach(json_object_get(stage, "jobs"), k, job) {
			char jid[64], att[32], agent[64], res[512];
			snprintf(att, sizeof(att), "%lld/%lld", (long long)int_or(job, "attempt", 0),
				 (long long)int_or(job, "max_attempts", 0));
			ctl_id_text(agent, sizeof(agent), json_object_get(job, "agent"));
			ctl_obj_duration(dur, sizeof(dur), job);
			if (!strcmp(str_or(job, "clock", "otacd"), "otacd") && strcmp(dur, "-") != 0) {
				/* a hold (soak, rollout) or an in-daemon job: otacd time */
				size_t len = strlen(dur);
				snprintf(dur + len, sizeof(dur) - len, "*");
				otacd_clock = 1;
			}
			job_result(res, sizeof(res), job);
			ctl_table_row(&t, sname, ctl_id_text(jid, sizeof(jid), json_object_get(job, "id")),
				  str_or(job, "name", "-"), str_or(job, "state", "-"), att, agent, dur, res);
		}
	}
	ctl_table_print(&t);
	printf("\njob durations: real time on the agent%s\n",
	       otacd_clock ? "; * otacd time (holds and jobs inside otacd, at --time-scale)" : "");
out:
	json_decref(run);
	return rc;
}

/* ---- cancel ------------------------------------------------------------ */

int cmd_cancel(int argc, char **argv)
{
	json_t *req, *ans = NULL;
	const char *run = NULL, *reason = NULL;
	char *e, *path;
	long status = 0;
	int rc;

	for (int i = 1; i < argc; i++) {
		int r = opt_value("--reason", argc, argv, &i, &reason);
		if (r < 0)
			return usage_error("cancel", "--reason needs a text");
		if (r > 0)
			continue;
		if (run || is_option(argv[i]))
			return usage_error("cancel", "unexpected argument '%s'", argv[i]);
		run = argv[i];
	}
	if (!run)
		return usage_error("cancel", "which run?");
	e = httpc_escape(run);
	path = xasprintf("/api/v1/runs/%s/cancel", e);
	/* the reason goes into the audit log with the token's name */
	req = reason ? json_pack("{ss}", "reason", reason) : json_object();
	rc = api_raw(&ans, &status, "POST", path, req);
	if (rc)
		goto out;
	if (status == 409) {
		fprintf(stderr, "otactl: run %s has already finished\n", run);
		rc = EXIT_FAIL;
	} else if (status < 200 || status >= 300) {
		char *what = xasprintf("cannot cancel run %s", run);
		rc = api_fail(status, ans, what);
		free(what);
	} else if (ctl.json) {
		print_json(ans);
	} else {
		printf("run %s ", run);
		print_state(stdout, str_or(ans, "state", "canceled"), 0);
		putchar('\n');
	}
out:
	json_decref(req);
	json_decref(ans);
	free(e);
	free(path);
	return rc;
}
