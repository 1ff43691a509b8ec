/*
 * transfer.c - a job's files to and from the daemon: the commit's tree
 * down into the workspace before the steps, the artifacts up after them.
 *
 * Why: both move untrusted bytes across the agent's boundary with the
 * job's token.  The source archive is fetched only from a path on the
 * daemon (the token goes nowhere else), into an unlinked temporary file,
 * retried on network errors, 404, 408, 429 and 5xx, and unpacked by
 * source.c's safe extraction.  Artifacts are matched by glob inside the
 * workspace only (a link pointing out of it is skipped), named by the
 * daemon's own rule, hashed (SHA-256) and uploaded, sent again for a
 * minute of failures (a takeover of the leader answers 503 meanwhile).
 *
 * Runs on the main thread, as part of job_run (job.c).
 */
#include "../common/httpc.h"
#include "../common/util.h"
#include "agent.h"
#include "source.h"
#include "stagework.h"

#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

/* An upload cut off or answered 5xx, 408 or 429 is sent again (backoff up
 * to 2 s) until this long after the first failure: longer than a takeover
 * of the leader (docs/scale.md: within 10 s), while every instance
 * answers 503.  A retried upload replaces the first (docs/api.md). */
#define UPLOAD_RETRY_MS 60000
#define SOURCE_TRIES 4
#define SOURCE_BACKOFF_MS 1000
#define SOURCE_MAX_BYTES ((size_t)4 << 30)
#define SOURCE_TIMEOUT_MS (30L * 60 * 1000)

/* ---- artifacts ------------------------------------------------------ */

/* Upload one file; OUT_OK, OUT_LOST, or OUT_INFRA with *msg set. */
static enum outcome artifact_upload(struct job *j, const char *path, const char *name,
				    json_t *art, char **msg)
{
	const char *type = json_string_value(json_object_get(art, "type"));
	const char *hw = json_string_value(json_object_get(art, "hardware"));
	char *ename = httpc_escape(name), *etype = type ? httpc_escape(type) : NULL;
	char *ehw = hw ? httpc_escape(hw) : NULL, *url = NULL, sha[65], why_name[128];
	enum outcome why = OUT_INFRA;
	FILE *f = fopen(path, "rb");
	struct stat st;
	long backoff = 0;
	int64_t give_up = 0;

	/* the daemon's own rule (common/util.c): refused here, with the reason */
	if (ota_artifact_name_check(name, strlen(name), why_name, sizeof(why_name)) < 0) {
		*msg = xasprintf("artifact name '%s' refused: %s", name, why_name);
		why = OUT_SCRIPT;
		goto out;
	}
	if (!f || fstat(fileno(f), &st) < 0 || agent_sha256_file(sha, f) < 0) {
		*msg = xasprintf("cannot read artifact %s: %s", name, strerror(errno));
		goto out;
	}
	url = xasprintf("%s/api/v1/agent/jobs/%s/artifacts?attempt=%" JSON_INTEGER_FORMAT
			"&name=%s&sha256=%s%s%s%s%s", j->a->url, j->id_url, j->attempt, ename, sha,
			etype ? "&type=" : "", etype ? etype : "", ehw ? "&hardware=" : "", ehw ? ehw : "");
	while (!agent_stop_flag) {
		struct httpc_response r;
		long status;
		int rc;
		rewind(f);
		rc = httpc_upload(&r, "PUT", url, j->token, NULL, f, (size_t)st.st_size,
				  300000 + (long)(st.st_size / 1000));
		if (!rc && (r.status == 200 || r.status == 201)) {
			logsend_printf(j, "uploaded %s (%lld bytes, sha256 %.12s)\n", name, (long long)st.st_size, sha);
			httpc_response_release(&r);
			why = OUT_OK;
			goto out;
		}
		if (!rc && r.status == 409) {
			httpc_response_release(&r);
			why = OUT_LOST;
			goto out;
		}
		free(*msg);
		if (rc < 0) {
			*msg = xasprintf("uploading artifact %s failed: %s", name, ota_error_last());
		} else {
			json_t *e = json_loadb(buf_cstr(&r.body), r.body.len, 0, NULL);
			const char *em = httpc_json_error(e);
			*msg = xasprintf("uploading artifact %s failed: HTTP %ld%s%s", name, r.status,
					 em ? ": " : "", em ? em : "");
			json_decref(e);
		}
		status = r.status; /* released below: read it first */
		httpc_response_release(&r);
		if (!rc && status < 500 && status != 408 && status != 429)
			break; /* the daemon said no; asking again will not help */
		if (!give_up)
			give_up = agent_now_ms() + UPLOAD_RETRY_MS;
		else if (agent_now_ms() >= give_up)
			break;
		backoff = agent_backoff_next(backoff * 4);
		agent_sleep_ms(backoff);
	}
out:
	if (f)
		fclose(f);
	free(url);
	free(ename);
	free(etype);
	free(ehw);
	return why;
}

enum outcome transfer_artifacts(struct job *j, char **msg)
{
	json_t *arts = json_object_get(j->spec, "artifacts"), *art;
	char *wsq = sw_glob_quote(j->ws), *wsreal = realpath(j->ws, NULL);
	enum outcome why = OUT_OK;
	size_t i, wl = wsreal ? strlen(wsreal) : 0;

	if (!wsreal) {
		*msg = xasprintf("cannot resolve the workspace: %s", strerror(errno));
		why = OUT_INFRA;
		goto out;
	}
	json_array_foreach(arts, i, art) {
		const char *path = json_string_value(json_object_get(art, "path"));
		const char *name = json_string_value(json_object_get(art, "name"));
		int optional = json_is_true(json_object_get(art, "optional")), found = 0;
		char *pattern;
		glob_t g;

		if (!path || !*path)
			continue;
		pattern = xasprintf("%s/%s", wsq, path);
		memset(&g, 0, sizeof(g));
		if (glob(pattern, 0, NULL, &g) == 0) {
			for (size_t k = 0; k < g.gl_pathc && why == OUT_OK; k++) {
				char *real = realpath(g.gl_pathv[k], NULL), *aname;
				const char *rel = g.gl_pathv[k] + strlen(j->ws);
				struct stat st;
				while (*rel == '/' || !strncmp(rel, "./", 2))
					rel += *rel == '/' ? 1 : 2;
				if (!real || strncmp(real, wsreal, wl) || real[wl] != '/' ||
				    stat(real, &st) < 0 || !S_ISREG(st.st_mode)) {
					if (real && (strncmp(real, wsreal, wl) || real[wl] != '/'))
						logsend_printf(j, "skipping %s: it points outside the workspace\n", rel);
					free(real);
					continue;
				}
				aname = name && *name ? (g.gl_pathc == 1 ? xstrdup(name) : xasprintf("%s/%s", name, rel))
						      : xstrdup(rel);
				why = artifact_upload(j, real, aname, art, msg);
				found++;
				free(aname);
				free(real);
			}
		}
		globfree(&g);
		free(pattern);
		if (why != OUT_OK)
			break;
		if (!found && !optional) {
			*msg = xasprintf("artifact '%s' matched no file", path);
			why = OUT_SCRIPT;
			break;
		}
	}
out:
	free(wsq);
	free(wsreal);
	return why;
}

/* ---- source checkout ------------------------------------------------ */

/* "HTTP 503: message" for an answer that is not the one we wanted. */
static char *http_error_text(const struct httpc_response *r)
{
	json_t *e = json_loadb(buf_cstr(&r->body), r->body.len, 0, NULL);
	const char *em = httpc_json_error(e);
	char *t = xasprintf("HTTP %ld%s%s", r->status, em ? ": " : "", em ? em : "");
	json_decref(e);
	return t;
}

/* Why the job must stop now, or OUT_OK. */
static enum outcome job_interrupted(struct job *j)
{
	enum outcome why = OUT_OK;
	pthread_mutex_lock(&j->mu);
	if (j->lost)
		why = OUT_LOST;
	else if (agent_stop_flag)
		why = OUT_STOPPED;
	else if (j->cancel)
		why = OUT_CANCELED;
	else if (j->deadline && agent_now_ms() >= j->deadline)
		why = OUT_TIMEOUT;
	pthread_mutex_unlock(&j->mu);
	return why;
}

/*
 * Download the spec's source archive (docs/api.md: GET source.url, a tar of
 * the commit's tree) into an unlinked temporary file in the work directory,
 * retrying network errors, 404, 408, 429 and 5xx, and extract it into the
 * workspace.  OUT_OK also when the job has no source; OUT_LOST on 409;
 * OUT_INFRA with *msg when it cannot be had.
 */
enum outcome transfer_checkout(struct job *j, char **msg)
{
	json_t *src = json_object_get(j->spec, "source");
	const char *path = json_string_value(json_object_get(src, "url"));
	const char *repo = json_string_value(json_object_get(src, "repo"));
	const char *commit = json_string_value(json_object_get(src, "commit"));
	const char *ref = json_string_value(json_object_get(src, "ref"));
	char *url = NULL, *tmp = NULL, *err = NULL;
	enum outcome why = OUT_INFRA;
	long backoff = SOURCE_BACKOFF_MS;
	size_t entries = 0;
	FILE *f = NULL;
	int fd;

	if (!json_is_object(src))
		return OUT_OK;
	/* A path on the daemon: the job token is never sent anywhere else. */
	if (!path || path[0] != '/') {
		*msg = path ? xasprintf("cannot fetch the source: its url '%s' is not a path on the daemon", path)
			    : xstrdup("cannot fetch the source: the job spec has no source url");
		goto out;
	}
	url = xasprintf("%s%s", j->a->url, path);
	tmp = xasprintf("%s/.source-XXXXXX", j->a->workdir);
	fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0 || !(f = fdopen(fd, "w+b"))) {
		*msg = xasprintf("cannot fetch the source: cannot create a file in %s: %s", j->a->workdir,
				 strerror(errno));
		if (fd >= 0)
			close(fd);
		goto out;
	}
	unlink(tmp); /* the data lives until fclose, whatever happens to us */
	for (int try = 1;; try++) {
		struct httpc_response r;
		long timeout = SOURCE_TIMEOUT_MS;
		int rc, retry;

		if (j->deadline) {
			int64_t left = j->deadline - agent_now_ms();
			if (left < timeout)
				timeout = left > 1 ? (long)left : 1;
		}
		rewind(f);
		if (ftruncate(fileno(f), 0) < 0) {
			*msg = xasprintf("cannot fetch the source: %s", strerror(errno));
			goto out;
		}
		rc = httpc_download(&r, url, j->token, f, SOURCE_MAX_BYTES, timeout);
		if (!rc && r.status == 200) {
			httpc_response_release(&r);
			break;
		}
		retry = rc == OTA_ERROR || (!rc && (r.status == 404 || r.status == 408 || r.status == 429 ||
						    r.status >= 500));
		free(err);
		err = rc < 0 ? xstrdup(ota_error_last()) : http_error_text(&r);
		if (!rc && r.status == 409)
			why = OUT_LOST;
		httpc_response_release(&r);
		if (why == OUT_LOST || (why = job_interrupted(j)) != OUT_OK)
			goto out;
		why = OUT_INFRA;
		if (!retry || try >= SOURCE_TRIES) {
			*msg = xasprintf("cannot fetch the source: %s", err);
			goto out;
		}
		logsend_printf(j, "cannot fetch the source (%s), retrying in %lds\n", err, backoff / 1000);
		agent_sleep_ms(backoff);
		backoff *= 2;
	}
	rewind(f);
	if (source_extract(&entries, fileno(f), j->ws) < 0) {
		*msg = xasprintf("cannot extract the source: %s", ota_error_last());
		goto out;
	}
	logsend_printf(j, "checked out %s at %.12s (%s)\n", repo ? repo : "the source",
		   commit ? commit : "?", ref ? ref : "?");
	why = OUT_OK;
out:
	if (f)
		fclose(f);
	free(url);
	free(tmp);
	free(err);
	return why;
}
