/*
 * logs.c - `otactl logs RUN [JOB] [-f]`: job logs, printed or followed live.
 *
 * Without -f a log is read in pages from an offset until the daemon's
 * X-Log-Size says there is no more.  With -f a job's log is followed over
 * Server-Sent Events; each event's id is the log offset after its chunk,
 * so a dropped connection resumes where it stopped, and a daemon that is
 * unreachable is waited for a while.  A whole run is followed job by job,
 * each under a banner with its stage, until the run ends.
 */
#include "otactl.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "../common/httpc.h"

/* Print a job's log from *offset on as it is now. */
static int log_print(const char *job_id, uint64_t *offset)
{
	char *e = httpc_escape(job_id);
	int rc = EXIT_OK;

	for (;;) {
		struct httpc_response r;
		char *url = xasprintf("%s/api/v1/jobs/%s/log?offset=%llu", ctl.url, e, (unsigned long long)*offset);
		char *size_hdr = NULL;
		int more, hr = httpc_request(&r, "GET", url, ctl.token, NULL, NULL, 0, REQUEST_TIMEOUT_MS);
		free(url);
		if (hr < 0) {
			httpc_response_release(&r);
			rc = ctl_unreachable();
			break;
		}
		if (r.status == 416) {
			httpc_response_release(&r);
			break;
		}
		if (r.status != 200) {
			json_t *j = json_loadb(buf_cstr(&r.body), r.body.len, 0, NULL);
			char *what = xasprintf("log of job %s", job_id);
			rc = api_fail(r.status, j, what);
			free(what);
			json_decref(j);
			httpc_response_release(&r);
			break;
		}
		fwrite(r.body.ptr, 1, r.body.len, stdout);
		*offset += r.body.len;
		httpc_response_header(&size_hdr, &r, "X-Log-Size");
		more = r.body.len > 0 && size_hdr && strtoull(size_hdr, NULL, 10) > *offset;
		free(size_hdr);
		httpc_response_release(&r);
		if (!more)
			break;
	}
	fflush(stdout);
	free(e);
	return rc;
}

struct follow {
	uint64_t offset;
	int ended;
	char state[32];
};

static int on_log_event(const char *event, const char *id, const char *data, void *ctx)
{
	struct follow *f = ctx;
	json_t *j = json_loads(data, JSON_DECODE_ANY, NULL);

	if (!strcmp(event, "log")) {
		/* The event id is the log offset after the chunk.  It can differ
		 * from offset + text length: the server turns bytes that are not
		 * UTF-8 into U+FFFD for JSON. */
		json_t *t = json_object_get(j, "text");
		uint64_t off = (uint64_t)int_or(j, "offset", (json_int_t)f->offset);
		uint64_t end = id ? strtoull(id, NULL, 10) : 0;
		size_t len = json_string_length(t);
		if (end < off)
			end = off + len;
		if (json_is_string(t) && off >= f->offset) {
			fwrite(json_string_value(t), 1, len, stdout);
			fflush(stdout);
		}
		if (end > f->offset)
			f->offset = end;
	} else if (!strcmp(event, "attempt")) {
		/* A retry started: its log begins at offset 0. */
		printf("%s--- attempt %lld ---%s\n", ctl.color ? "\033[1m" : "", (long long)int_or(j, "attempt", 0),
		       ctl.color ? "\033[0m" : "");
		fflush(stdout);
		f->offset = 0;
	} else if (!strcmp(event, "end")) {
		snprintf(f->state, sizeof(f->state), "%s", str_or(j, "state", "?"));
		f->ended = 1;
	}
	json_decref(j);
	return f->ended;
}

static int get_job(json_t **out, const char *job_id)
{
	char *e = httpc_escape(job_id), *path = xasprintf("/api/v1/jobs/%s", e);
	char *what = xasprintf("job %s", job_id);
	int rc = api(out, "GET", path, NULL, what);
	free(e);
	free(path);
	free(what);
	return rc;
}

/* Follow one job's log live until the job ends. */
static int log_follow(const char *job_id)
{
	struct follow f = { 0, 0, "" };
	char *e = httpc_escape(job_id);
	int64_t down_since = 0;
	int rc = EXIT_OK;

	while (!f.ended) {
		char *url = xasprintf("%s/api/v1/jobs/%s/log?follow=1&offset=%llu", ctl.url, e,
				      (unsigned long long)f.offset);
		int r = httpc_sse(url, ctl.token, on_log_event, &f, 0);
		json_t *job = NULL;
		free(url);
		if (f.ended)
			break;
		if (r == OTA_EAUTH || r == OTA_ENOTFOUND || r == OTA_EINVAL) {
			fprintf(stderr, "otactl: %s\n", ota_error_last());
			rc = r == OTA_EAUTH ? EXIT_AUTH : r == OTA_ENOTFOUND ? EXIT_NOTFOUND : EXIT_FAIL;
			break;
		}
		if (r < 0) {
			/* Dropped: resume from the last offset once the daemon is back. */
			if (!down_since)
				down_since = ctl_now_ms();
			if (ctl_now_ms() - down_since > UNREACHABLE_GIVE_UP_MS) {
				rc = ctl_unreachable();
				break;
			}
			ctl_sleep_ms(1000);
			continue;
		}
		down_since = 0;
		/* The stream closed without `end`: has the job finished? */
		if ((rc = get_job(&job, job_id)) != 0)
			break;
		if (ctl_state_final(str_or(job, "state", NULL))) {
			rc = log_print(job_id, &f.offset);
			json_decref(job);
			break;
		}
		json_decref(job);
		ctl_sleep_ms(500);
	}
	free(e);
	return rc;
}

static void job_banner(const json_t *job, const char *stage)
{
	char id[64];
	printf("%s==> %s / %s (job %s) <==%s\n", ctl.color ? "\033[1m" : "", stage, str_or(job, "name", "?"),
	       ctl_id_text(id, sizeof(id), json_object_get(job, "id")), ctl.color ? "\033[0m" : "");
	fflush(stdout);
}

/* Every job of the run, in stage order: an array of {stage, job}. */
static json_t *run_jobs(const json_t *run)
{
	json_t *all = json_array(), *stage, *job;
	size_t i, k;
	json_array_foreach(json_object_get(run, "stages"), i, stage)
		json_array_foreach(json_object_get(stage, "jobs"), k, job)
			json_array_append_new(all, json_pack("{s:s, s:O}", "stage", str_or(stage, "name", "?"), "job", job));
	return all;
}

/* -f over a whole run: follow each job as it starts, earliest first. */
static int follow_run(const char *run_id)
{
	json_t *done = json_object();
	int rc = EXIT_OK;

	for (;;) {
		json_t *run = NULL, *jobs, *e, *next = NULL;
		int64_t best = 0;
		size_t i;
		char id[64];

		if ((rc = ctl_get_run(&run, run_id)) != 0)
			break;
		jobs = run_jobs(run);
		json_array_foreach(jobs, i, e) {
			json_t *job = json_object_get(e, "job");
			const char *st = str_or(job, "state", "queued");
			int64_t started = int_or(job, "started_at", 0);
			ctl_id_text(id, sizeof(id), json_object_get(job, "id"));
			if (json_object_get(done, id) || !strcmp(st, "queued") || !strcmp(st, "blocked"))
				continue;
			if (!started && ctl_state_final(st) && !int_or(job, "log_size", 0)) {
				json_object_set_new(done, id, json_true()); /* skipped without running */
				continue;
			}
			if (!next || (started && started < best)) {
				next = e;
				best = started;
			}
		}
		if (next) {
			json_t *job = json_object_get(next, "job");
			ctl_id_text(id, sizeof(id), json_object_get(job, "id"));
			json_object_set_new(done, id, json_true());
			job_banner(job, str_or(next, "stage", "?"));
			rc = log_follow(id);
		}
		if (!next && (ctl_state_final(str_or(run, "state", NULL)) || int_or(run, "finished_at", 0) > 0)) {
			json_decref(jobs);
			json_decref(run);
			break;
		}
		json_decref(jobs);
		json_decref(run);
		if (rc)
			break;
		if (!next)
			ctl_sleep_ms(500);
	}
	json_decref(done);
	return rc;
}

int cmd_logs(int argc, char **argv)
{
	const char *run_id = NULL, *job_sel = NULL;
	json_t *run = NULL, *jobs = NULL, *e, *match = NULL;
	int follow = 0, rc;
	size_t i, shown = 0;

	for (int a = 1; a < argc; a++) {
		if (!strcmp(argv[a], "-f") || !strcmp(argv[a], "--follow"))
			follow = 1;
		else if (is_option(argv[a]))
			return usage_error("logs", "unknown option '%s'", argv[a]);
		else if (!run_id)
			run_id = argv[a];
		else if (!job_sel)
			job_sel = argv[a];
		else
			return usage_error("logs", "unexpected argument '%s'", argv[a]);
	}
	if (!run_id)
		return usage_error("logs", "which run?");
	if (follow && !job_sel)
		return follow_run(run_id);
	if ((rc = ctl_get_run(&run, run_id)) != 0)
		return rc;
	jobs = run_jobs(run);
	if (job_sel) {
		json_array_foreach(jobs, i, e) {
			json_t *job = json_object_get(e, "job");
			char id[64];
			if (!strcmp(ctl_id_text(id, sizeof(id), json_object_get(job, "id")), job_sel) ||
			    !strcmp(str_or(job, "name", ""), job_sel)) {
				match = e;
				break;
			}
		}
		if (!match) {
			fprintf(stderr, "otactl: run %s has no job '%s'; its jobs:\n", run_id, job_sel);
			json_array_foreach(jobs, i, e)
				fprintf(stderr, "  %s\n", str_or(json_object_get(e, "job"), "name", "?"));
			rc = EXIT_NOTFOUND;
			goto out;
		}
	}
	json_array_foreach(jobs, i, e) {
		json_t *job = json_object_get(e, "job");
		uint64_t off = 0;
		char id[64];
		if (match && e != match)
			continue;
		ctl_id_text(id, sizeof(id), json_object_get(job, "id"));
		if (follow) {
			rc = log_follow(id);
			break;
		}
		if (!match && !strcmp(str_or(job, "state", "queued"), "queued") && !int_or(job, "log_size", 0))
			continue;
		if (!match)
			job_banner(job, str_or(e, "stage", "?"));
		if ((rc = log_print(id, &off)) != 0)
			break;
		shown++;
	}
	if (!match && !shown && !rc)
		fprintf(stderr, "otactl: no job of run %s has started yet\n", run_id);
out:
	json_decref(jobs);
	json_decref(run);
	return rc;
}
