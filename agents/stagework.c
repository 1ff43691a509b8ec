/*
 * stagework.c - the agent's part of the build, test, analysis and hil
 * kinds; see stagework.h.
 *
 * Why a file of its own: job.c is the job runner every kind shares; what
 * only some kinds need (inputs, reports, toolchain versions, the
 * reproducibility check) is here, called from job_run at fixed points.
 *
 * How: the daemon does the thinking.  It lists a job's inputs (the
 * artifacts of the stages it needs, filtered by board) and serves their
 * bytes; it parses and judges reports.  This file moves files: glob in the
 * workspace (matches must stay inside it), PUT each report file in one
 * request (capped at REPORT_MAX_BYTES), GET each input to a file and check
 * its SHA-256.  Toolchain commands run with the steps' environment in the
 * workspace, bounded by TOOLCHAIN_TIMEOUT_MS, and only the first non-empty
 * line of their output is kept.
 */
#include "stagework.h"

#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <openssl/evp.h>

#include "../common/httpc.h"
#include "../common/util.h"
#include "../orchestrator/reports.h"

#define UPLOAD_TRIES 4
#define REQUEST_TIMEOUT_MS 15000
#define TOOLCHAIN_TIMEOUT_MS 60000
#define TOOLCHAIN_OUTPUT_MAX 65536
#define INPUT_MAX_BYTES ((size_t)4 << 30)

static void say(const struct sw_job *j, const char *fmt, ...) OTA_PRINTF(2, 3);
static void say(const struct sw_job *j, const char *fmt, ...)
{
	struct buf b = BUF_INIT;
	va_list ap;
	va_start(ap, fmt);
	buf_vprintf(&b, fmt, ap);
	va_end(ap);
	if (j->log)
		j->log(j->log_arg, buf_cstr(&b));
	buf_release(&b);
}

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int agent_sha256_file(char out[65], FILE *f)
{
	unsigned char buf[65536], md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	int rc = OTA_ERROR;
	size_t n;

	if (!ctx || !EVP_DigestInit_ex(ctx, EVP_sha256(), NULL))
		goto out;
	while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
		if (!EVP_DigestUpdate(ctx, buf, n))
			goto out;
	if (ferror(f) || !EVP_DigestFinal_ex(ctx, md, &mdlen))
		goto out;
	ota_hex(out, md, mdlen);
	rc = 0;
out:
	EVP_MD_CTX_free(ctx);
	return rc;
}

static int sha256_path(char out[65], const char *path)
{
	FILE *f = fopen(path, "rb");
	int rc;
	if (!f)
		return ota_error_set(OTA_ERROR, "cannot read %s: %s", path, strerror(errno));
	rc = agent_sha256_file(out, f);
	fclose(f);
	return rc;
}

/* "HTTP 400: message" of a refused answer. */
static char *answer_text(const struct httpc_response *r)
{
	json_t *e = json_loadb(buf_cstr(&r->body), r->body.len, 0, NULL);
	const char *em = httpc_json_error(e);
	char *t = em ? xstrdup(em) : xasprintf("HTTP %ld", r->status);
	json_decref(e);
	return t;
}

/* A relative path with no "..", "." or empty component. */
static int rel_path_safe(const char *p)
{
	const char *s = p;
	if (!p || !*p || *p == '/')
		return 0;
	while (*s) {
		size_t n = strcspn(s, "/");
		if (n == 0 || (n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.'))
			return 0;
		s += n;
		if (*s == '/')
			s++;
	}
	return 1;
}

char *sw_glob_quote(const char *s)
{
	struct buf b = BUF_INIT;
	buf_put(&b, "", 0);
	for (; *s; s++) {
		if (strchr("*?[]\\", *s))
			buf_putc(&b, '\\');
		buf_putc(&b, *s);
	}
	return buf_detach(&b);
}

/* Regular files matching pattern under ws (and really inside it), as
 * workspace-relative paths. */
static void ws_glob(struct strvec *out, const char *ws, const char *pattern)
{
	char *wsq = sw_glob_quote(ws), *full = xasprintf("%s/%s", wsq, pattern), *wsreal = realpath(ws, NULL);
	size_t wl = wsreal ? strlen(wsreal) : 0;
	glob_t g;

	memset(&g, 0, sizeof(g));
	if (wsreal && glob(full, 0, NULL, &g) == 0) {
		for (size_t k = 0; k < g.gl_pathc; k++) {
			char *real = realpath(g.gl_pathv[k], NULL);
			const char *rel = g.gl_pathv[k] + strlen(ws);
			struct stat st;
			while (*rel == '/')
				rel++;
			if (real && !strncmp(real, wsreal, wl) && real[wl] == '/' && stat(real, &st) == 0 &&
			    S_ISREG(st.st_mode))
				strvec_push(out, rel);
			free(real);
		}
	}
	globfree(&g);
	free(wsq);
	free(full);
	free(wsreal);
}

/* ---- inputs ------------------------------------------------------------- */

static int input_get(const struct sw_job *j, const char *dir, const json_t *in, char **msg)
{
	const char *name = json_string_value(json_object_get(in, "name"));
	const char *sha = json_string_value(json_object_get(in, "sha256"));
	char *path = NULL, *url = NULL, got[65];
	FILE *f = NULL;
	int rc = SW_INFRA;

	if (!rel_path_safe(name) || !sha || strlen(sha) != 64) {
		*msg = xasprintf("input '%s' has an unsafe name or no digest", name ? name : "?");
		goto out;
	}
	path = xasprintf("%s/%s", dir, name);
	{
		char *parent = xstrdup(path);
		*strrchr(parent, '/') = '\0';
		rc = ota_mkdir_p(parent, 0755);
		free(parent);
		if (rc < 0 || !(f = fopen(path, "w+b"))) {
			*msg = xasprintf("cannot create %s: %s", path, rc < 0 ? ota_error_last() : strerror(errno));
			rc = SW_INFRA;
			goto out;
		}
	}
	url = xasprintf("%s/api/v1/agent/jobs/%s/inputs/%s?attempt=%lld", j->url, j->job_id_url, sha, j->attempt);
	for (int t = 1;; t++) {
		struct httpc_response r = { 0 };
		int hrc;
		rewind(f);
		if (ftruncate(fileno(f), 0) < 0)
			break;
		hrc = httpc_download(&r, url, j->token, f, INPUT_MAX_BYTES, 0);
		if (!hrc && r.status == 200) {
			httpc_response_release(&r);
			rc = 0;
			break;
		}
		free(*msg);
		if (hrc < 0) {
			*msg = xasprintf("cannot download input %s: %s", name, ota_error_last());
		} else {
			char *why = answer_text(&r);
			*msg = xasprintf("cannot download input %s: %s", name, why);
			free(why);
		}
		rc = !hrc && (r.status == 409 || r.status == 403) ? SW_LOST : SW_INFRA;
		httpc_response_release(&r);
		if (rc == SW_LOST || t >= UPLOAD_TRIES)
			goto out;
		usleep(500000u * (unsigned)t);
	}
	if (rc == 0) {
		rewind(f);
		if (agent_sha256_file(got, f) < 0 || strcmp(got, sha) != 0) {
			free(*msg);
			*msg = xasprintf("input %s arrived damaged (sha256 %.16s…, expected %.16s…)", name, got, sha);
			rc = SW_INFRA;
			goto out;
		}
		free(*msg);
		*msg = NULL;
		say(j, "input %s (%" JSON_INTEGER_FORMAT " bytes, sha256 %.12s)", name,
		    json_integer_value(json_object_get(in, "size")), sha);
	}
out:
	if (f)
		fclose(f);
	free(path);
	free(url);
	return rc;
}

int sw_inputs_fetch(const struct sw_job *j, const char *dir, int *count, char **msg)
{
	char *url = xasprintf("%s/api/v1/agent/jobs/%s/inputs?attempt=%lld", j->url, j->job_id_url, j->attempt);
	json_t *list = NULL, *in;
	long status = 0;
	int rc;
	size_t i;

	*count = 0;
	if ((rc = ota_mkdir_p(dir, 0755)) < 0) {
		*msg = xasprintf("cannot create %s: %s", dir, ota_error_last());
		rc = SW_INFRA;
		goto out;
	}
	for (int t = 1;; t++) {
		json_decref(list);
		list = NULL;
		rc = httpc_json(&list, &status, "GET", url, j->token, NULL, REQUEST_TIMEOUT_MS);
		if (!rc && status == 200 && json_is_array(list))
			break;
		if (!rc && (status == 409 || status == 403)) {
			rc = SW_LOST;
			goto out;
		}
		if (t >= UPLOAD_TRIES) {
			*msg = rc < 0 ? xasprintf("cannot list the job's inputs: %s", ota_error_last())
				      : xasprintf("cannot list the job's inputs: HTTP %ld", status);
			rc = SW_INFRA;
			goto out;
		}
		usleep(500000u * (unsigned)t);
	}
	rc = 0;
	json_array_foreach(list, i, in) {
		if ((rc = input_get(j, dir, in, msg)) != 0)
			goto out;
		(*count)++;
	}
out:
	json_decref(list);
	free(url);
	return rc;
}

/* ---- reports -------------------------------------------------------------- */

static int report_put(const struct sw_job *j, const char *format, const char *name, const void *data, size_t len,
		      char **msg)
{
	char *ef = httpc_escape(format), *en = httpc_escape(name);
	char *url = xasprintf("%s/api/v1/agent/jobs/%s/reports?attempt=%lld&format=%s&name=%s", j->url, j->job_id_url,
			      j->attempt, ef, en);
	int rc = SW_INFRA;

	for (int t = 1; t <= UPLOAD_TRIES; t++) {
		struct httpc_response r;
		int hrc = httpc_request(&r, "PUT", url, j->token, "application/octet-stream", data, len,
					REQUEST_TIMEOUT_MS * 4);
		free(*msg);
		*msg = NULL;
		if (!hrc && r.status == 201) {
			json_t *ans = json_loadb(buf_cstr(&r.body), r.body.len, 0, NULL);
			json_t *s = json_object_get(ans, "summary");
			if (json_object_get(s, "tests"))
				say(j, "report %s (%s): %" JSON_INTEGER_FORMAT " tests, %" JSON_INTEGER_FORMAT " failed, %"
				    JSON_INTEGER_FORMAT " errors, %" JSON_INTEGER_FORMAT " skipped", name, format,
				    json_integer_value(json_object_get(s, "tests")), json_integer_value(json_object_get(s, "failures")),
				    json_integer_value(json_object_get(s, "errors")), json_integer_value(json_object_get(s, "skipped")));
			else if (json_object_get(s, "findings"))
				say(j, "report %s (%s): %" JSON_INTEGER_FORMAT " findings", name, format,
				    json_integer_value(json_object_get(s, "findings")));
			else
				say(j, "report %s (%s) recorded", name, format);
			json_decref(ans);
			httpc_response_release(&r);
			rc = 0;
			break;
		}
		if (hrc < 0) {
			*msg = xasprintf("uploading report %s failed: %s", name, ota_error_last());
		} else {
			char *t2 = answer_text(&r);
			*msg = r.status == 400 || r.status == 413 ? t2 : xasprintf("uploading report %s failed: %s", name, t2);
			if (*msg != t2)
				free(t2);
			rc = r.status == 409 || r.status == 403 ? SW_LOST : (r.status == 400 || r.status == 413) ? SW_FAIL : SW_INFRA;
		}
		httpc_response_release(&r);
		if (rc == SW_LOST || rc == SW_FAIL)
			break;
		usleep(300000u * (unsigned)t);
	}
	free(url);
	free(ef);
	free(en);
	return rc;
}

int sw_reports_upload(const struct sw_job *j, const json_t *reports, char **msg)
{
	const char *format;
	json_t *pattern;
	int rc = 0;

	json_object_foreach((json_t *)reports, format, pattern) {
		struct strvec files = STRVEC_INIT;
		const char *pat = json_string_value(pattern);
		if (!pat)
			continue;
		ws_glob(&files, j->ws, pat);
		if (!files.n) {
			free(*msg);
			*msg = xasprintf("no report matched %s", pat);
			rc = SW_FAIL;
		}
		for (size_t i = 0; i < files.n && rc != SW_LOST; i++) {
			struct buf data = BUF_INIT;
			char *path = xasprintf("%s/%s", j->ws, files.v[i]), *m = NULL;
			int r2;
			if (ota_read_file(&data, path, REPORT_MAX_BYTES) < 0) {
				m = xasprintf("report %s: %s", files.v[i], ota_error_last());
				r2 = SW_FAIL;
			} else {
				r2 = report_put(j, format, files.v[i], data.ptr ? data.ptr : "", data.len, &m);
			}
			if (r2 != 0) {
				say(j, "%s", m ? m : "report upload failed");
				if (!rc || r2 == SW_LOST) {
					free(*msg);
					*msg = m;
					m = NULL;
					rc = r2;
				}
			}
			free(m);
			free(path);
			buf_release(&data);
		}
		strvec_clear(&files);
		if (rc == SW_LOST)
			break;
	}
	return rc;
}

/* ---- toolchain ---------------------------------------------------------- */

/* Run cmd with sh -c in j->ws; its output (stdout+stderr, capped) in out. */
static int command_output(const struct sw_job *j, const char *cmd, struct buf *out, int *exit_code)
{
	char *argv[] = { "sh", "-c", (char *)cmd, NULL };
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	int pfd[2] = { -1, -1 }, devnull = open("/dev/null", O_RDONLY | O_CLOEXEC), status = 0, err, rc = OTA_ERROR;
	int64_t deadline = mono_ms() + TOOLCHAIN_TIMEOUT_MS;
	pid_t pid = -1;

	*exit_code = -1;
	if (devnull < 0 || pipe2(pfd, O_CLOEXEC) < 0) {
		ota_error_set(OTA_ERROR, "cannot run '%s': %s", cmd, strerror(errno));
		goto out;
	}
	posix_spawnattr_init(&attr);
	posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
	posix_spawnattr_setpgroup(&attr, 0);
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, devnull, 0);
	posix_spawn_file_actions_adddup2(&fa, pfd[1], 1);
	posix_spawn_file_actions_adddup2(&fa, pfd[1], 2);
	posix_spawn_file_actions_addchdir_np(&fa, j->ws);
	err = posix_spawn(&pid, "/bin/sh", &fa, &attr, argv, j->envp);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&attr);
	close(pfd[1]);
	pfd[1] = -1;
	if (err) {
		ota_error_set(OTA_ERROR, "cannot run '%s': %s", cmd, strerror(err));
		pid = -1;
		goto out;
	}
	for (;;) {
		struct pollfd p = { .fd = pfd[0], .events = POLLIN };
		char tmp[4096];
		int64_t left = deadline - mono_ms();
		ssize_t n;
		if (left <= 0) {
			kill(-pid, SIGKILL);
			break;
		}
		if (poll(&p, 1, (int)(left > 1000 ? 1000 : left)) <= 0)
			continue;
		n = read(pfd[0], tmp, sizeof(tmp));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		if (out->len < TOOLCHAIN_OUTPUT_MAX)
			buf_put(out, tmp, (size_t)n);
	}
	kill(-pid, SIGKILL); /* leftovers */
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	*exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
	rc = 0;
out:
	if (pfd[0] >= 0)
		close(pfd[0]);
	if (pfd[1] >= 0)
		close(pfd[1]);
	if (devnull >= 0)
		close(devnull);
	return rc;
}

int sw_toolchain_record(const struct sw_job *j, const json_t *commands, char **msg)
{
	json_t *list = json_array(), *c, *doc = NULL;
	char *text = NULL;
	size_t i;
	int rc = 0;

	json_array_foreach(commands, i, c) {
		const char *cmd = json_string_value(c), *p;
		struct buf out = BUF_INIT;
		int code = -1;
		size_t n;
		if (!cmd)
			continue;
		if (command_output(j, cmd, &out, &code) < 0 || code != 0) {
			*msg = code >= 0 ? xasprintf("toolchain command '%s' exited with code %d", cmd, code)
					 : xasprintf("toolchain command '%s': %s", cmd, ota_error_last());
			buf_release(&out);
			rc = SW_FAIL;
			goto out;
		}
		p = buf_cstr(&out);
		p += strspn(p, " \t\r\n");
		n = strcspn(p, "\r\n");
		if (n > 1000)
			n = 1000;
		say(j, "toolchain: %s: %.*s", cmd, (int)n, p);
		json_array_append_new(list, json_pack("{ss ss#}", "command", cmd, "version", p, n));
		buf_release(&out);
	}
	doc = json_pack("{sO}", "commands", list);
	text = json_dumps(doc, JSON_COMPACT);
	rc = report_put(j, "toolchain", "toolchain", text, strlen(text), msg);
out:
	json_decref(list);
	json_decref(doc);
	free(text);
	return rc;
}

/* ---- reproducibility ---------------------------------------------------- */

int sw_digests(json_t **out, const char *ws, const json_t *artifacts)
{
	json_t *art;
	size_t i;

	*out = json_object();
	json_array_foreach(artifacts, i, art) {
		const char *path = json_string_value(json_object_get(art, "path"));
		struct strvec files = STRVEC_INIT;
		if (!path || !*path)
			continue;
		ws_glob(&files, ws, path);
		for (size_t k = 0; k < files.n; k++) {
			char *full = xasprintf("%s/%s", ws, files.v[k]), sha[65];
			if (sha256_path(sha, full) == 0)
				json_object_set_new(*out, files.v[k], json_string(sha));
			free(full);
		}
		strvec_clear(&files);
	}
	return 0;
}

int sw_digests_compare(const json_t *first, const json_t *second, char **msg)
{
	struct buf b = BUF_INIT;
	const char *name;
	json_t *v;
	int n = 0;

	json_object_foreach((json_t *)first, name, v) {
		const char *other = json_string_value(json_object_get(second, name));
		if (other && !strcmp(other, json_string_value(v)))
			continue;
		buf_printf(&b, "%s%s %s vs %s", n++ ? "; " : "", name, json_string_value(v), other ? other : "(missing)");
	}
	json_object_foreach((json_t *)second, name, v) {
		if (json_object_get(first, name))
			continue;
		buf_printf(&b, "%s%s (missing) vs %s", n++ ? "; " : "", name, json_string_value(v));
	}
	if (n)
		*msg = xasprintf("not reproducible: %s", buf_cstr(&b));
	buf_release(&b);
	return n ? SW_FAIL : 0;
}
