/*
 * otactl.c - the command-line client of otacd.
 *
 * Why: release managers and scripts need one small tool that lints a
 * pipeline before pushing it, starts a run, lists and inspects runs, follows
 * logs live and cancels — the same HTTP API (docs/api.md) the web page uses.
 *
 * How: commands are cmd_NAME functions in one table (as in git), each
 * returning the process exit status.  Global flags (--url, --token, --json)
 * may stand before or after the command and are taken out of argv first;
 * the server and token are then resolved from flags, the environment, a
 * config file, and finally the daemon's own ./otacd-state/admin.token and
 * default address.  Every request goes through api(), which maps an answer
 * to the exit codes documented in usage: 3 when the daemon cannot be
 * reached, 4 when it refuses our credentials, 5 for an unknown object.
 * `lint` is the exception: it runs the daemon's own parser locally
 * (orchestrator/pipeline/pipeline.h), so it works without a daemon.  Live logs use
 * Server-Sent Events and resume from the last offset when the connection
 * drops.
 */
#include "../common/httpc.h"
#include "../common/util.h"
#include "../orchestrator/pipeline/pipeline.h"
#include "../orchestrator/policy.h"
#include "otactl.h"
#include "verify.h"

#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>

#ifndef OTACD_VERSION
#define OTACD_VERSION "0.1.0-dev"
#endif

#define DEFAULT_URL "http://127.0.0.1:8470"
#define REQUEST_TIMEOUT_MS 30000
#define UNREACHABLE_GIVE_UP_MS 120000
#define PIPELINE_MAX ((size_t)1 << 20)

struct otactl_ctl ctl;

struct cmd {
	const char *name;
	int (*fn)(int argc, char **argv);
	const char *usage;
	const char *summary;
};

static const struct cmd *cmd_find(const char *name);
int usage_error(const char *cmd, const char *fmt, ...) OTA_PRINTF(2, 3);

/* ---- small helpers ------------------------------------------------- */

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000 };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* Text of an id or other scalar into out. */
static const char *id_text(char *out, size_t n, const json_t *v)
{
	if (json_is_integer(v))
		snprintf(out, n, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
	else if (json_is_string(v))
		snprintf(out, n, "%s", json_string_value(v));
	else
		snprintf(out, n, "-");
	return out;
}

const char *str_or(const json_t *obj, const char *key, const char *dflt)
{
	const char *s = json_string_value(json_object_get(obj, key));
	return s && *s ? s : dflt;
}

int64_t int_or(const json_t *obj, const char *key, int64_t dflt)
{
	const json_t *v = json_object_get(obj, key);
	return json_is_integer(v) ? json_integer_value(v) : json_is_real(v) ? (int64_t)json_real_value(v) : dflt;
}

static void fmt_time(char *out, size_t n, int64_t ms)
{
	time_t t = (time_t)(ms / 1000);
	struct tm tm;
	if (ms <= 0 || !localtime_r(&t, &tm) || !strftime(out, n, "%Y-%m-%d %H:%M:%S", &tm))
		snprintf(out, n, "-");
}

static void fmt_duration(char *out, size_t n, int64_t ms)
{
	if (ms < 0)
		snprintf(out, n, "-");
	else if (ms < 1000)
		snprintf(out, n, "%lldms", (long long)ms);
	else if (ms < 60000)
		snprintf(out, n, "%.1fs", (double)ms / 1000);
	else if (ms < 3600000)
		snprintf(out, n, "%lldm%02llds", (long long)(ms / 60000), (long long)(ms / 1000 % 60));
	else if (ms < 86400000)
		snprintf(out, n, "%lldh%02lldm", (long long)(ms / 3600000), (long long)(ms / 60000 % 60));
	else
		snprintf(out, n, "%lldd%02lldh", (long long)(ms / 86400000), (long long)(ms / 3600000 % 24));
}

/* Duration between started_at and finished_at of a run or job. */
static void obj_duration(char *out, size_t n, const json_t *o)
{
	int64_t s = int_or(o, "started_at", 0), f = int_or(o, "finished_at", 0);
	fmt_duration(out, n, s > 0 && f >= s ? f - s : -1);
}

static const char *short_ref(const char *ref)
{
	if (!ref)
		return "-";
	if (!strncmp(ref, "refs/heads/", 11))
		return ref + 11;
	if (!strncmp(ref, "refs/tags/", 10))
		return ref + 10;
	return ref;
}

/* The abbreviated commit id shown everywhere (as in the agent's log). */
#define SHORT_COMMIT 12

/*
 * The first line of s, for a terminal: control characters (an ESC in a
 * commit message, say) become spaces, and more than max bytes are cut at a
 * character boundary with "...".  Caller frees.
 */
static char *one_line(const char *s, size_t max)
{
	size_t n = strcspn(s, "\r\n");
	struct buf b = BUF_INIT;

	if (n > max) {
		n = max;
		while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
			n--;
	}
	buf_put(&b, "", 0);
	for (size_t i = 0; i < n; i++)
		buf_putc(&b, (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? ' ' : s[i]);
	if (n < strcspn(s, "\r\n"))
		buf_puts(&b, "...");
	return buf_detach(&b);
}

static int state_final(const char *s)
{
	return s && (!strcmp(s, "passed") || !strcmp(s, "failed") || !strcmp(s, "canceled") ||
		     !strcmp(s, "skipped"));
}

static const char *state_color(const char *s)
{
	if (!ctl.color || !s)
		return NULL;
	if (!strcmp(s, "passed"))
		return "\033[32m";
	if (!strcmp(s, "failed"))
		return "\033[31m";
	if (!strcmp(s, "running"))
		return "\033[33m";
	if (!strcmp(s, "canceled"))
		return "\033[35m";
	if (!strcmp(s, "queued") || !strcmp(s, "skipped") || !strcmp(s, "blocked"))
		return "\033[2m";
	return NULL;
}

void print_state(FILE *f, const char *s, int width)
{
	const char *c = state_color(s);
	int len = (int)strlen(s ? s : "-");
	fprintf(f, "%s%s%s%*s", c ? c : "", s ? s : "-", c ? "\033[0m" : "", width > len ? width - len : 0, "");
}

void print_json(const json_t *j)
{
	json_dumpf(j, stdout, JSON_INDENT(2) | JSON_ENCODE_ANY);
	putchar('\n');
}

/* ---- tables --------------------------------------------------------- */

/* A table printed with columns padded to their widest cell; the column
 * `state_col` is coloured by state. */
struct table {
	size_t ncols;
	int state_col;
	struct strvec cells;
};

static void table_row(struct table *t, ...)
{
	va_list ap;
	va_start(ap, t);
	for (size_t i = 0; i < t->ncols; i++) {
		const char *s = va_arg(ap, const char *);
		strvec_push(&t->cells, s && *s ? s : "-");
	}
	va_end(ap);
}

static void table_print(struct table *t)
{
	size_t *w = xcalloc(t->ncols, sizeof(size_t));
	for (size_t i = 0; i < t->cells.n; i++) {
		size_t l = strlen(t->cells.v[i]);
		if (l > w[i % t->ncols])
			w[i % t->ncols] = l;
	}
	for (size_t i = 0; i < t->cells.n; i++) {
		size_t c = i % t->ncols;
		int last = c == t->ncols - 1;
		if (i >= t->ncols && (int)c == t->state_col)
			print_state(stdout, t->cells.v[i], last ? 0 : (int)w[c]);
		else
			printf("%-*s", last ? 0 : (int)w[c], t->cells.v[i]);
		fputs(last ? "\n" : "  ", stdout);
	}
	free(w);
	strvec_clear(&t->cells);
}

/* ---- configuration --------------------------------------------------- */

static char *trim(char *s)
{
	char *e;
	while (*s == ' ' || *s == '\t')
		s++;
	e = s + strlen(s);
	while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r' || e[-1] == '\n'))
		*--e = '\0';
	if (e - s >= 2 && (*s == '"' || *s == '\'') && e[-1] == *s) {
		e[-1] = '\0';
		s++;
	}
	return s;
}

/* `url = …` and `token = …` lines of the config file, if there is one. */
static void config_read(char **url, char **token)
{
	const char *path = getenv("OTACTL_CONFIG"), *home = getenv("HOME");
	char *owned = NULL, *line, *save = NULL;
	struct buf b = BUF_INIT;

	if (!path && home)
		path = owned = xasprintf("%s/.config/otactl/config", home);
	if (!path || ota_read_file(&b, path, 65536) < 0)
		goto out;
	for (line = strtok_r(b.ptr, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char *eq = strchr(line, '='), *k, *v;
		line = trim(line);
		if (!*line || *line == '#' || !eq)
			continue;
		*eq = '\0';
		k = trim(line);
		v = trim(eq + 1);
		if (!strcmp(k, "url") && !*url)
			*url = xstrdup(v);
		else if (!strcmp(k, "token") && !*token)
			*token = xstrdup(v);
	}
out:
	buf_release(&b);
	free(owned);
}

static void config_resolve(void)
{
	struct buf b = BUF_INIT;

	if (!ctl.url && getenv("OTACD_URL") && *getenv("OTACD_URL"))
		ctl.url = xstrdup(getenv("OTACD_URL"));
	if (!ctl.token && getenv("OTACD_TOKEN") && *getenv("OTACD_TOKEN"))
		ctl.token = xstrdup(getenv("OTACD_TOKEN"));
	if (!ctl.url || !ctl.token)
		config_read(&ctl.url, &ctl.token);
	if (!ctl.token && !ota_read_file(&b, "otacd-state/admin.token", 4096)) {
		char *t = trim(b.ptr);
		if (*t)
			ctl.token = xstrdup(t);
	}
	if (!ctl.url)
		ctl.url = xstrdup(DEFAULT_URL);
	while (strlen(ctl.url) > 1 && ctl.url[strlen(ctl.url) - 1] == '/')
		ctl.url[strlen(ctl.url) - 1] = '\0';
	buf_release(&b);
}

/* ---- API calls -------------------------------------------------------- */

/* Exit code for an HTTP error answer; prints the reason. */
int api_fail(long status, const json_t *ans, const char *what)
{
	const char *e = httpc_json_error(ans);
	if (status == 401 || status == 403) {
		fprintf(stderr, "otactl: %s: %s (HTTP %ld)%s%s\n", what,
			status == 401 ? "authentication required or token refused" : "permission denied",
			status, e ? ": " : "", e ? e : "");
		if (status == 401)
			fputs("otactl: pass --token, set OTACD_TOKEN or add `token = …` to the config file\n", stderr);
		return EXIT_AUTH;
	}
	fprintf(stderr, "otactl: %s: %s (HTTP %ld)\n", what, e ? e : "request failed", status);
	return status == 404 ? EXIT_NOTFOUND : EXIT_FAIL;
}

static int unreachable(void)
{
	fprintf(stderr, "otactl: cannot reach otacd: %s\n", ota_error_last());
	return EXIT_UNREACHABLE;
}

/* One JSON call; *status is set, and so is *out (may be NULL).  Returns 0,
 * or EXIT_UNREACHABLE after printing why. */
int api_raw(json_t **out, long *status, const char *method, const char *path, json_t *req)
{
	char *url = xasprintf("%s%s", ctl.url, path);
	int rc = httpc_json(out, status, method, url, ctl.token, req, REQUEST_TIMEOUT_MS);
	free(url);
	if (rc == OTA_EINVAL) {
		fprintf(stderr, "otactl: %s\n", ota_error_last());
		return EXIT_FAIL;
	}
	return rc < 0 ? unreachable() : 0;
}

/* A JSON call that must answer 2xx: 0 with *out, else an exit code. */
int api(json_t **out, const char *method, const char *path, json_t *req, const char *what)
{
	long status = 0;
	int rc = api_raw(out, &status, method, path, req);
	if (rc)
		return rc;
	if (status < 200 || status >= 300) {
		rc = api_fail(status, *out, what);
		json_decref(*out);
		*out = NULL;
	}
	return rc;
}

/* ---- option parsing for commands -------------------------------------- */

/*
 * Is argv[*i] the option `name` taking a value ("--name V" or "--name=V")?
 * 1 and *val when it is, 0 when not, -1 when the value is missing.
 */
int opt_value(const char *name, int argc, char **argv, int *i, const char **val)
{
	size_t n = strlen(name);
	if (strncmp(argv[*i], name, n))
		return 0;
	if (argv[*i][n] == '=') {
		*val = argv[*i] + n + 1;
		return 1;
	}
	if (argv[*i][n] != '\0')
		return 0;
	if (*i + 1 >= argc)
		return -1;
	*val = argv[++*i];
	return 1;
}

int is_option(const char *a)
{
	return a[0] == '-' && a[1] != '\0';
}

/* ---- lint ------------------------------------------------------------- */

static int cmd_lint(int argc, char **argv)
{
	int bad = 0, files = 0;

	for (int i = 1; i < argc; i++) {
		struct pipeline *p = NULL;
		struct pl_diags d;
		struct buf text = BUF_INIT, out = BUF_INIT;

		if (is_option(argv[i]))
			return usage_error("lint", "unknown option '%s'", argv[i]);
		files++;
		if (ota_read_file(&text, argv[i], PIPELINE_MAX) < 0) {
			fprintf(stderr, "otactl: %s\n", ota_error_last());
			bad = 1;
			continue;
		}
		pl_diags_init(&d, argv[i]);
		if (pipeline_parse(&p, argv[i], text.ptr, text.len, &d) < 0) {
			pl_diags_format(&d, &out);
			if (out.len)
				fputs(buf_cstr(&out), stdout);
			else
				printf("%s: %s\n", argv[i], ota_error_last());
			bad = 1;
		} else {
			struct strvec w = STRVEC_INIT;
			printf("%s: ok\n", argv[i]);
			policy_lint(p, &w);
			for (size_t k = 0; k < w.n; k++)
				printf("%s: warning: %s\n", argv[i], w.v[k]);
			strvec_clear(&w);
		}
		pipeline_free(p);
		pl_diags_release(&d);
		buf_release(&text);
		buf_release(&out);
	}
	if (!files)
		return usage_error("lint", "no pipeline file given");
	return bad ? EXIT_FAIL : EXIT_OK;
}

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
				down_since = now_ms();
			if (now_ms() - down_since > UNREACHABLE_GIVE_UP_MS)
				break;
			sleep_ms(2000);
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
				const char *old = json_string_value(json_object_get(seen, id_text(id, sizeof(id), json_object_get(job, "id"))));
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
		if (state_final(state) || int_or(run, "finished_at", 0) > 0) {
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
		sleep_ms(1000);
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

	id_text(id, sizeof(id), id_value);
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
				id_text(delivery, sizeof(delivery), json_object_get(ans, "delivery")),
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

static int cmd_trigger(int argc, char **argv)
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

/* ---- runs, show, agents ------------------------------------------------ */

static int cmd_runs(int argc, char **argv)
{
	const char *limit = "20", *pipeline = NULL, *state = NULL;
	struct buf path = BUF_INIT;
	struct table t = { 7, 4, STRVEC_INIT };
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
	table_row(&t, "ID", "PIPELINE", "REF", "COMMIT", "STATE", "CREATED", "DURATION");
	json_array_foreach(json_object_get(ans, "runs"), i, run) {
		char id[64], created[32], dur[32], commit[SHORT_COMMIT + 1];
		snprintf(commit, sizeof(commit), "%s", str_or(run, "commit", "-"));
		fmt_time(created, sizeof(created), int_or(run, "created_at", 0));
		obj_duration(dur, sizeof(dur), run);
		table_row(&t, id_text(id, sizeof(id), json_object_get(run, "id")), str_or(run, "pipeline", "-"),
			  short_ref(str_or(run, "ref", NULL)), commit, str_or(run, "state", "-"), created, dur);
	}
	table_print(&t);
out:
	json_decref(ans);
	buf_release(&path);
	return rc;
}

static int get_run(json_t **out, const char *run)
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
	v = one_line(value, 200);
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
		char *m = message ? one_line(message, 100) : NULL;
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

static int cmd_show(int argc, char **argv)
{
	struct table t = { 8, 3, STRVEC_INIT };
	json_t *run = NULL, *stage, *job;
	char id[64], created[32], dur[32];
	const char *which = NULL;
	int rc, tests = 0, findings = 0;
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
	if ((rc = get_run(&run, which)) != 0)
		return rc;
	if (tests || findings) {
		rc = show_reports(id_text(id, sizeof(id), json_object_get(run, "id")), tests, findings);
		goto out;
	}
	if (ctl.json) {
		print_json(run);
		goto out;
	}
	printf("run %s  %s  ", id_text(id, sizeof(id), json_object_get(run, "id")), str_or(run, "pipeline", "-"));
	print_state(stdout, str_or(run, "state", "-"), 0);
	fmt_time(created, sizeof(created), int_or(run, "created_at", 0));
	obj_duration(dur, sizeof(dur), run);
	putchar('\n');
	show_source(run);
	printf("  file     %s\n  trigger  %s\n  created  %s\n  duration %s\n", str_or(run, "file", "-"),
	       str_or(run, "trigger", "-"), created, dur);
	if (str_or(run, "error", NULL))
		printf("  error    %s\n", str_or(run, "error", ""));
	putchar('\n');
	table_row(&t, "STAGE", "JOB", "NAME", "STATE", "ATTEMPT", "AGENT", "DURATION", "RESULT");
	json_array_foreach(json_object_get(run, "stages"), i, stage) {
		const char *sname = str_or(stage, "name", "-");
		if (!json_array_size(json_object_get(stage, "jobs")))
			table_row(&t, sname, "-", "-", str_or(stage, "state", "-"), "-", "-", "-",
				  str_or(stage, "kind", "-"));
		json_array_foreach(json_object_get(stage, "jobs"), k, job) {
			char jid[64], att[32], agent[64], res[512];
			snprintf(att, sizeof(att), "%lld/%lld", (long long)int_or(job, "attempt", 0),
				 (long long)int_or(job, "max_attempts", 0));
			id_text(agent, sizeof(agent), json_object_get(job, "agent"));
			obj_duration(dur, sizeof(dur), job);
			job_result(res, sizeof(res), job);
			table_row(&t, sname, id_text(jid, sizeof(jid), json_object_get(job, "id")),
				  str_or(job, "name", "-"), str_or(job, "state", "-"), att, agent, dur, res);
		}
	}
	table_print(&t);
out:
	json_decref(run);
	return rc;
}

static void labels_text(struct buf *b, json_t *labels)
{
	json_t *l;
	size_t k;
	json_array_foreach(labels, k, l)
		buf_printf(b, "%s%s", k ? "," : "", json_string_value(l) ? json_string_value(l) : "");
}

static int agents_ls(void)
{
	struct table t = { 8, 3, STRVEC_INIT };
	json_t *ans = NULL, *ag;
	size_t i;
	int rc;

	if ((rc = api(&ans, "GET", "/api/v1/agents", NULL, "cannot list agents")) != 0)
		return rc;
	if (ctl.json) {
		print_json(ans);
		goto out;
	}
	table_row(&t, "ID", "NAME", "KIND", "STATE", "JOB", "LAST SEEN", "LABELS", "MAY CLAIM");
	json_array_foreach(ans, i, ag) {
		struct buf labels = BUF_INIT, bound = BUF_INIT;
		char id[64], job[64], seen[32];
		json_t *reg = json_object_get(ag, "registered_labels");
		labels_text(&labels, json_object_get(ag, "labels"));
		if (json_is_array(reg))
			labels_text(&bound, reg);
		else
			buf_puts(&bound, !strcmp(str_or(ag, "kind", ""), "local") ? "(local labels)" : "(as configured)");
		fmt_time(seen, sizeof(seen), int_or(ag, "last_seen", 0));
		table_row(&t, id_text(id, sizeof(id), json_object_get(ag, "id")), str_or(ag, "name", "-"),
			  str_or(ag, "kind", "-"), str_or(ag, "state", "-"),
			  id_text(job, sizeof(job), json_object_get(ag, "current_job")), seen, buf_cstr(&labels),
			  buf_cstr(&bound));
		buf_release(&labels);
		buf_release(&bound);
	}
	table_print(&t);
out:
	json_decref(ans);
	return rc;
}

/* agents add NAME --labels a,b: the token is printed once, on stdout alone. */
static int agents_add(int argc, char **argv)
{
	json_t *ans = NULL, *labels = json_array(), *req;
	const char *name = NULL;
	int rc;

	for (int i = 2; i < argc; i++) {
		if (!strcmp(argv[i], "--labels") && i + 1 < argc) {
			const char *s = argv[++i];
			while (*s) {
				size_t n = strcspn(s, ",");
				if (n)
					json_array_append_new(labels, json_stringn(s, n));
				s += n;
				if (*s == ',')
					s++;
			}
		} else if (argv[i][0] != '-' && !name) {
			name = argv[i];
		} else {
			json_decref(labels);
			return usage_error("agents", "unexpected argument '%s'", argv[i]);
		}
	}
	if (!name) {
		json_decref(labels);
		return usage_error("agents", "agents add needs a NAME");
	}
	req = json_pack("{ss so}", "name", name, "labels", labels);
	rc = api(&ans, "POST", "/api/v1/agents", req, "cannot add the agent");
	json_decref(req);
	if (rc == 0) {
		if (ctl.json)
			print_json(ans);
		else {
			printf("%s\n", str_or(ans, "token", ""));
			fprintf(stderr, "otactl: agent %s registered; the token above is shown only now"
				" (give it to otacd-agent --token-file)\n", name);
		}
	}
	json_decref(ans);
	return rc;
}

static int agents_revoke(int argc, char **argv)
{
	json_t *ans = NULL, *req;
	int rc;

	if (argc != 3)
		return usage_error("agents", "agents revoke needs exactly one NAME");
	req = json_pack("{ss}", "name", argv[2]);
	rc = api(&ans, "POST", "/api/v1/agents/revoke", req, "cannot revoke the agent");
	json_decref(req);
	if (rc == 0) {
		json_t *job = json_object_get(ans, "released_job");
		if (ctl.json)
			print_json(ans);
		else if (json_is_integer(job))
			printf("revoked %s; its job %" JSON_INTEGER_FORMAT " was released for a retry\n", argv[2],
			       json_integer_value(job));
		else
			printf("revoked %s\n", argv[2]);
	}
	json_decref(ans);
	return rc;
}

static int cmd_agents(int argc, char **argv)
{
	if (argc == 1 || !strcmp(argv[1], "ls"))
		return argc > 2 ? usage_error("agents", "unexpected argument '%s'", argv[2]) : agents_ls();
	if (!strcmp(argv[1], "add"))
		return agents_add(argc, argv);
	if (!strcmp(argv[1], "revoke"))
		return agents_revoke(argc, argv);
	return usage_error("agents", "unknown subcommand '%s' (ls, add, revoke)", argv[1]);
}

/* ---- artifacts ------------------------------------------------------------ */

static int artifacts_ls(const char *run)
{
	struct table t = { 6, 2, STRVEC_INIT };
	json_t *ans = NULL, *art;
	char *e = httpc_escape(run), *path = xasprintf("/api/v1/runs/%s/artifacts", e);
	size_t i;
	int rc;

	if ((rc = api(&ans, "GET", path, NULL, "cannot list artifacts")) != 0)
		goto out;
	if (ctl.json) {
		print_json(ans);
		goto out;
	}
	table_row(&t, "ID", "JOB", "NAME", "SIZE", "SHA256", "HARDWARE");
	json_array_foreach(ans, i, art) {
		char id[64], job[64], size[32], sha[16];
		snprintf(size, sizeof(size), "%lld", (long long)int_or(art, "size", 0));
		snprintf(sha, sizeof(sha), "%.12s", str_or(art, "sha256", "-"));
		table_row(&t, id_text(id, sizeof(id), json_object_get(art, "id")),
			  id_text(job, sizeof(job), json_object_get(art, "job_id")), str_or(art, "name", "-"), size, sha,
			  str_or(art, "hardware", "-"));
	}
	table_print(&t);
out:
	json_decref(ans);
	free(e);
	free(path);
	return rc;
}

/* Download path into file, checking the bytes against sha256 before the
 * file appears (written to FILE.part, then renamed). */
static int download_checked(const char *path, const char *sha256, const char *file)
{
	struct httpc_response resp;
	char *url = xasprintf("%s%s", ctl.url, path), *part = xasprintf("%s.part", file);
	unsigned char md[EVP_MAX_MD_SIZE], chunk[65536];
	unsigned int mdlen = 0;
	char got[65];
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	FILE *f = fopen(part, "w+b");
	size_t n;
	int rc = EXIT_FAIL;

	httpc_response_init(&resp);
	if (!f) {
		fprintf(stderr, "otactl: cannot write %s: %s\n", part, strerror(errno));
		goto out;
	}
	if (httpc_download(&resp, url, ctl.token, f, (size_t)1 << 40, 0) < 0) {
		rc = unreachable();
		goto out;
	}
	if (resp.status != 200) {
		json_t *ans = json_loadb(resp.body.ptr ? resp.body.ptr : "", resp.body.len, 0, NULL);
		rc = api_fail(resp.status, ans, "cannot download the artifact");
		json_decref(ans);
		goto out;
	}
	EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
	rewind(f);
	while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
		EVP_DigestUpdate(ctx, chunk, n);
	EVP_DigestFinal_ex(ctx, md, &mdlen);
	ota_hex(got, md, mdlen);
	if (strcmp(got, sha256) != 0) {
		fprintf(stderr, "otactl: the download's sha256 is %s, expected %s: not saved\n", got, sha256);
		goto out;
	}
	if (fflush(f) != 0 || fsync(fileno(f)) != 0 || rename(part, file) != 0) {
		fprintf(stderr, "otactl: cannot save %s: %s\n", file, strerror(errno));
		goto out;
	}
	if (!ctl.json)
		fprintf(stderr, "otactl: saved %s (sha256 %s)\n", file, sha256);
	rc = EXIT_OK;
out:
	if (f)
		fclose(f);
	if (rc != EXIT_OK)
		unlink(part);
	EVP_MD_CTX_free(ctx);
	httpc_response_release(&resp);
	free(url);
	free(part);
	return rc;
}

static int artifacts_get(const char *what, const char *file)
{
	const char *slash = strchr(what, '/');
	char *path = NULL, *sha = NULL;
	json_t *ans = NULL, *art;
	size_t i;
	int rc = EXIT_FAIL;

	if (strlen(what) == 64 && strspn(what, "0123456789abcdef") == 64) {
		sha = xstrdup(what);
		path = xasprintf("/api/v1/artifacts/sha256/%s", what);
	} else if (slash && slash != what) {
		char *run = xstrndup(what, (size_t)(slash - what)), *e = httpc_escape(run);
		char *list = xasprintf("/api/v1/runs/%s/artifacts", e);
		rc = api(&ans, "GET", list, NULL, "cannot list artifacts");
		free(run);
		free(e);
		free(list);
		if (rc)
			goto out;
		rc = EXIT_NOTFOUND;
		json_array_foreach(ans, i, art) {
			if (!strcmp(str_or(art, "name", ""), slash + 1)) {
				sha = xstrdup(str_or(art, "sha256", ""));
				path = xasprintf("/api/v1/artifacts/%lld", (long long)int_or(art, "id", 0));
			}
		}
		if (!path) {
			fprintf(stderr, "otactl: run %.*s has no artifact named '%s'\n", (int)(slash - what), what, slash + 1);
			goto out;
		}
	} else {
		rc = usage_error("artifacts", "'%s' is neither a sha256 digest nor RUN/NAME", what);
		goto out;
	}
	rc = download_checked(path, sha, file);
out:
	json_decref(ans);
	free(path);
	free(sha);
	return rc;
}

static int cmd_artifacts(int argc, char **argv)
{
	const char *out = NULL;
	int i;

	if (argc >= 3 && !strcmp(argv[1], "ls") && argc == 3)
		return artifacts_ls(argv[2]);
	if (argc >= 3 && !strcmp(argv[1], "get")) {
		for (i = 3; i < argc; i++) {
			if (!strcmp(argv[i], "-o") && i + 1 < argc)
				out = argv[++i];
			else
				return usage_error("artifacts", "unexpected argument '%s'", argv[i]);
		}
		if (!out)
			return usage_error("artifacts", "where to? give -o FILE");
		return artifacts_get(argv[2], out);
	}
	return usage_error("artifacts", "use 'artifacts ls RUN' or 'artifacts get DIGEST|RUN/NAME -o FILE'");
}

/* ---- cancel, version ---------------------------------------------------- */

static int cmd_cancel(int argc, char **argv)
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

static int cmd_version(int argc, char **argv)
{
	char *url = xasprintf("%s/api/v1/health", ctl.url);
	json_t *ans = NULL;
	long status = 0;
	int rc = httpc_json(&ans, &status, "GET", url, NULL, NULL, 3000);
	const char *server = !rc && status == 200 ? str_or(ans, "version", NULL) : NULL;

	if (ctl.json) {
		json_t *o = json_pack("{s:s, s:s, s:s?}", "otactl", OTACD_VERSION, "url", ctl.url, "otacd", server);
		print_json(o);
		json_decref(o);
	} else {
		printf("otactl %s\n", OTACD_VERSION);
		if (server)
			printf("otacd %s at %s\n", server, ctl.url);
		else
			printf("otacd not reachable at %s\n", ctl.url);
	}
	json_decref(ans);
	free(url);
	return EXIT_OK;
}

/* ---- logs ---------------------------------------------------------------- */

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
			rc = unreachable();
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
				down_since = now_ms();
			if (now_ms() - down_since > UNREACHABLE_GIVE_UP_MS) {
				rc = unreachable();
				break;
			}
			sleep_ms(1000);
			continue;
		}
		down_since = 0;
		/* The stream closed without `end`: has the job finished? */
		if ((rc = get_job(&job, job_id)) != 0)
			break;
		if (state_final(str_or(job, "state", NULL))) {
			rc = log_print(job_id, &f.offset);
			json_decref(job);
			break;
		}
		json_decref(job);
		sleep_ms(500);
	}
	free(e);
	return rc;
}

static void job_banner(const json_t *job, const char *stage)
{
	char id[64];
	printf("%s==> %s / %s (job %s) <==%s\n", ctl.color ? "\033[1m" : "", stage, str_or(job, "name", "?"),
	       id_text(id, sizeof(id), json_object_get(job, "id")), ctl.color ? "\033[0m" : "");
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

		if ((rc = get_run(&run, run_id)) != 0)
			break;
		jobs = run_jobs(run);
		json_array_foreach(jobs, i, e) {
			json_t *job = json_object_get(e, "job");
			const char *st = str_or(job, "state", "queued");
			int64_t started = int_or(job, "started_at", 0);
			id_text(id, sizeof(id), json_object_get(job, "id"));
			if (json_object_get(done, id) || !strcmp(st, "queued") || !strcmp(st, "blocked"))
				continue;
			if (!started && state_final(st) && !int_or(job, "log_size", 0)) {
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
			id_text(id, sizeof(id), json_object_get(job, "id"));
			json_object_set_new(done, id, json_true());
			job_banner(job, str_or(next, "stage", "?"));
			rc = log_follow(id);
		}
		if (!next && (state_final(str_or(run, "state", NULL)) || int_or(run, "finished_at", 0) > 0)) {
			json_decref(jobs);
			json_decref(run);
			break;
		}
		json_decref(jobs);
		json_decref(run);
		if (rc)
			break;
		if (!next)
			sleep_ms(500);
	}
	json_decref(done);
	return rc;
}

static int cmd_logs(int argc, char **argv)
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
	if ((rc = get_run(&run, run_id)) != 0)
		return rc;
	jobs = run_jobs(run);
	if (job_sel) {
		json_array_foreach(jobs, i, e) {
			json_t *job = json_object_get(e, "job");
			char id[64];
			if (!strcmp(id_text(id, sizeof(id), json_object_get(job, "id")), job_sel) ||
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
		id_text(id, sizeof(id), json_object_get(job, "id"));
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

/* ---- help and dispatch ---------------------------------------------------- */

static int cmd_verify(int argc, char **argv)
{
	return otactl_verify(ctl.url, ctl.token, argc, argv);
}

static int cmd_help(int argc, char **argv);

static const struct cmd commands[] = {
	{ "lint", cmd_lint, "lint FILE...", "check pipeline files locally (no daemon needed)" },
	{ "trigger", cmd_trigger, "trigger FILE [--ref REF] [--wait]",
	  "run a pipeline file now and print the run id; --wait follows it to the end" },
	{ "trigger", cmd_trigger, "trigger REPO REF [--wait]",
	  "run REPO's pipeline at REF (branch, tag, full ref or commit id)" },
	{ "runs", cmd_runs, "runs [--limit N] [--pipeline P] [--state S]", "list runs, newest first" },
	{ "show", cmd_show, "show RUN [--tests] [--findings]", "a run with its stages and jobs; its test results or analysis findings" },
	{ "logs", cmd_logs, "logs RUN [JOB] [-f]", "print job logs (JOB: id or name); -f follows them live" },
	{ "cancel", cmd_cancel, "cancel RUN [--reason TEXT]", "cancel a run (audited)" },
	{ "agents", cmd_agents, "agents [ls]", "list agents: kind, state, labels and the labels each may claim" },
	{ "agents", cmd_agents, "agents add NAME --labels a,b", "register an agent (admin); prints its token once" },
	{ "agents", cmd_agents, "agents revoke NAME", "revoke an agent's token now; its job is retried (admin)" },
	{ "verify", cmd_verify, "verify RELEASE [--key PUB.pem]... | verify IMAGE --key PUB.pem",
	  "check a release's signatures, digests and provenance (or one MCUboot image)" },
	{ "artifacts", cmd_artifacts, "artifacts ls RUN | artifacts get DIGEST|RUN/NAME -o FILE",
	  "list a run's artifacts; download one, checked against its sha256" },
	{ "releases", cmd_releases, "releases", "list releases with their state and rollout" },
	{ "rollout", cmd_rollout, "rollout status RELEASE", "steps, exposure, holds and gate verdicts with bounds" },
	{ "promote", cmd_promote, "promote RELEASE [--to STAGE|--skip-step] --reason TEXT",
	  "approve a waiting stage, or advance now (operator)" },
	{ "rollback", cmd_rollback, "rollback RELEASE [--reissue] --reason TEXT",
	  "halt the release and send devices back (or roll forward with --reissue)" },
	{ "pause", cmd_pause, "pause RELEASE --reason TEXT", "stop a rollout's expansion" },
	{ "resume", cmd_resume, "resume RELEASE --reason TEXT", "continue a paused rollout" },
	{ "gates", cmd_gates, "gates RELEASE", "every gate evaluation: inputs, bounds, verdict" },
	{ "audit", cmd_audit, "audit [--release RELEASE]", "who did what, when and why" },
	{ "version", cmd_version, "version", "versions of otactl and the daemon" },
	{ "help", cmd_help, "help [COMMAND]", "this text" },
};

static const struct cmd *cmd_find(const char *name)
{
	for (size_t i = 0; i < OTA_ARRAY_SIZE(commands); i++)
		if (!strcmp(commands[i].name, name))
			return &commands[i];
	return NULL;
}

static void usage(FILE *f)
{
	fputs("usage: otactl [--url URL] [--token TOKEN] [--json] COMMAND [ARGS]\n\ncommands:\n", f);
	for (size_t i = 0; i < OTA_ARRAY_SIZE(commands); i++)
		fprintf(f, "  %-44s %s\n", commands[i].usage, commands[i].summary);
	fputs("\n"
	      "--json prints the API's JSON instead of tables.  The daemon is found\n"
	      "through --url/--token, else OTACD_URL/OTACD_TOKEN, else the config file\n"
	      "($OTACTL_CONFIG or ~/.config/otactl/config: lines `url = ...`, `token = ...`),\n"
	      "else ./otacd-state/admin.token and " DEFAULT_URL ".\n"
	      "\n"
	      "exit status: 0 ok, 1 failed (run failed, invalid pipeline, API error),\n"
	      "2 usage error, 3 daemon unreachable, 4 authentication or permission\n"
	      "refused, 5 not found.\n", f);
}

/* "usage: otactl ..." for every form of c's command (a command may have
 * several rows in the table), with the summaries when `summaries`. */
static void cmd_usage(FILE *f, const struct cmd *c, int summaries)
{
	const char *lead = "usage:";
	for (const struct cmd *k = c; k < commands + OTA_ARRAY_SIZE(commands) && !strcmp(k->name, c->name); k++) {
		fprintf(f, "%s otactl %s\n", lead, k->usage);
		if (summaries)
			fprintf(f, "  %s\n", k->summary);
		lead = summaries ? "usage:" : "      ";
	}
}

int usage_error(const char *cmd, const char *fmt, ...)
{
	const struct cmd *c = cmd ? cmd_find(cmd) : NULL;
	va_list ap;
	fputs("otactl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	if (c)
		cmd_usage(stderr, c, 0);
	else
		fputs("usage: otactl [--url URL] [--token TOKEN] [--json] COMMAND [ARGS]\n", stderr);
	return EXIT_USAGE;
}

static int cmd_help(int argc, char **argv)
{
	const struct cmd *c = argc > 1 ? cmd_find(argv[1]) : NULL;
	if (argc > 1 && !c)
		return usage_error("help", "unknown command '%s'", argv[1]);
	if (c)
		cmd_usage(stdout, c, 1);
	else
		usage(stdout);
	return EXIT_OK;
}

int main(int argc, char **argv)
{
	struct strvec args = STRVEC_INIT;
	const struct cmd *c;
	int help = 0, rc;

	strvec_push(&args, "otactl");
	for (int i = 1; i < argc; i++) {
		const char *v = NULL;
		int r;
		if (!strcmp(argv[i], "--")) {
			for (i++; i < argc; i++)
				strvec_push(&args, argv[i]);
			break;
		}
		if ((r = opt_value("--url", argc, argv, &i, &v)) != 0) {
			if (r < 0)
				return usage_error(NULL, "--url needs a value");
			free(ctl.url);
			ctl.url = xstrdup(v);
		} else if ((r = opt_value("--token", argc, argv, &i, &v)) != 0) {
			if (r < 0)
				return usage_error(NULL, "--token needs a value");
			free(ctl.token);
			ctl.token = xstrdup(v);
		} else if (!strcmp(argv[i], "--json")) {
			ctl.json = 1;
		} else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			help = 1;
		} else if (!strcmp(argv[i], "--version") && args.n == 1) {
			strvec_push(&args, "version");
		} else {
			strvec_push(&args, argv[i]);
		}
	}
	if (args.n < 2) {
		usage(help ? stdout : stderr);
		strvec_clear(&args);
		return help ? EXIT_OK : EXIT_USAGE;
	}
	c = cmd_find(args.v[1]);
	if (!c) {
		const char *names[OTA_ARRAY_SIZE(commands)];
		const char *dym;
		for (size_t i = 0; i < OTA_ARRAY_SIZE(commands); i++)
			names[i] = commands[i].name;
		dym = ota_did_you_mean(args.v[1], names, OTA_ARRAY_SIZE(commands));
		fprintf(stderr, "otactl: unknown command '%s'%s%s%s; see 'otactl help'\n", args.v[1],
			dym ? " (did you mean '" : "", dym ? dym : "", dym ? "'?)" : "");
		strvec_clear(&args);
		return EXIT_USAGE;
	}
	if (help) {
		cmd_usage(stdout, c, 1);
		strvec_clear(&args);
		return EXIT_OK;
	}
	ctl.color = isatty(STDOUT_FILENO) && !getenv("NO_COLOR");
	config_resolve();
	if (httpc_global_init() < 0) {
		fprintf(stderr, "otactl: %s\n", ota_error_last());
		strvec_clear(&args);
		return EXIT_FAIL;
	}
	rc = c->fn((int)args.n - 1, args.v + 1);
	fflush(stdout);
	httpc_global_cleanup();
	strvec_clear(&args);
	free(ctl.url);
	free(ctl.token);
	return rc;
}
