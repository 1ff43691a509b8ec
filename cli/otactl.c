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
 *
 * This file holds what the commands share (helpers, tables, configuration,
 * the API calls, option parsing; declared in otactl.h), `lint`, `version`
 * and the dispatch table.  The command groups have files of their own:
 * runs.c (trigger, runs, show, cancel), logs.c, agents.c, tokens.c, artifacts.c,
 * rollout.c (releases and rollouts), reports.c, verify.c, migrate.c (a
 * local command: SQLite state into PostgreSQL, with the daemon stopped).
 */
#include "../common/httpc.h"
#include "../common/util.h"
#include "../orchestrator/pipeline/pipeline.h"
#include "../orchestrator/policy.h"
#include "otactl.h"
#include "verify.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifndef OTACD_VERSION
#define OTACD_VERSION "0.1.0-dev"
#endif

#define DEFAULT_URL "http://127.0.0.1:8470"

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

int64_t ctl_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void ctl_sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000 };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* Text of an id or other scalar into out. */
const char *ctl_id_text(char *out, size_t n, const json_t *v)
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

void ctl_fmt_time(char *out, size_t n, int64_t ms)
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
void ctl_obj_duration(char *out, size_t n, const json_t *o)
{
	int64_t s = int_or(o, "started_at", 0), f = int_or(o, "finished_at", 0);
	json_t *d = json_object_get(o, "duration_ms");
	/* a job says which clock its duration is in (issue 18): "real" for
	 * jobs on agents, "otacd" for holds; a run is in otacd time */
	if (json_is_integer(d))
		fmt_duration(out, n, json_integer_value(d));
	else
		fmt_duration(out, n, s > 0 && f >= s ? f - s : -1);
}

const char *ctl_short_ref(const char *ref)
{
	if (!ref)
		return "-";
	if (!strncmp(ref, "refs/heads/", 11))
		return ref + 11;
	if (!strncmp(ref, "refs/tags/", 10))
		return ref + 10;
	return ref;
}


/*
 * The first line of s, for a terminal: control characters (an ESC in a
 * commit message, say) become spaces, and more than max bytes are cut at a
 * character boundary with "...".  Caller frees.
 */
char *ctl_one_line(const char *s, size_t max)
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

int ctl_state_final(const char *s)
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

void ctl_table_row(struct ctl_table *t, ...)
{
	va_list ap;
	va_start(ap, t);
	for (size_t i = 0; i < t->ncols; i++) {
		const char *s = va_arg(ap, const char *);
		strvec_push(&t->cells, s && *s ? s : "-");
	}
	va_end(ap);
}

void ctl_table_print(struct ctl_table *t)
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

int ctl_unreachable(void)
{
	fprintf(stderr, "otactl: cannot reach otacd: %s\n", ota_error_last());
	return EXIT_UNREACHABLE;
}

/*
 * One JSON call; *status is set, and so is *out (may be NULL).  Returns 0,
 * or EXIT_UNREACHABLE after printing why.
 *
 * A call that changes state and that otacd de-duplicates (run triggers,
 * cancel, promote, rollback, pause, resume, flags set and rollout) carries an Idempotency-Key (random per
 * invocation, numbered per call) and is sent again with the same key when
 * no answer came back (connection refused or cut, timeout: the daemon
 * restarting): otacd then answers with the first answer if the first
 * attempt took effect, so a retry never acts twice (docs/api.md).
 */
/* Does otacd honour an Idempotency-Key on this call (docs/api.md)? */
static int idempotent_call(const char *method, const char *path)
{
	static const char *const suffix[] = { "/cancel", "/promote", "/rollback", "/pause", "/resume" };
	if (strcmp(method, "POST"))
		return 0;
	if (!strcmp(path, "/api/v1/runs") || !strcmp(path, "/api/v1/triggers") || !strcmp(path, "/api/v1/flags") ||
	    !strcmp(path, "/api/v1/flags/rollout"))
		return 1;
	for (size_t i = 0; i < OTA_ARRAY_SIZE(suffix); i++) {
		size_t n = strlen(path), m = strlen(suffix[i]);
		if (n > m && !strcmp(path + n - m, suffix[i]) &&
		    (!strncmp(path, "/api/v1/runs/", 13) || !strncmp(path, "/api/v1/releases/", 17)))
			return 1;
	}
	return 0;
}

int api_raw(json_t **out, long *status, const char *method, const char *path, json_t *req)
{
	static const int backoff_ms[] = { 250, 500, 1000, 2000, 4000, 8000 };
	static char invocation[33];
	static int ncalls;
	char *url = xasprintf("%s%s", ctl.url, path), *header = NULL;
	const char *headers[2] = { NULL, NULL };
	int rc;

	if (idempotent_call(method, path)) {
		if (!invocation[0] && ota_random_hex(invocation, 16) < 0)
			snprintf(invocation, sizeof(invocation), "%ld-%ld", (long)getpid(), (long)time(NULL));
		header = xasprintf("Idempotency-Key: otactl-%s-%d", invocation, ++ncalls);
		headers[0] = header;
	}
	rc = httpc_json_ex(out, status, method, url, ctl.token, req, REQUEST_TIMEOUT_MS, headers);
	for (size_t i = 0; header && rc < 0 && rc != OTA_EINVAL && i < OTA_ARRAY_SIZE(backoff_ms); i++) {
		fprintf(stderr, "otactl: no answer from otacd (%s); retrying in %d ms with the same Idempotency-Key\n",
			ota_error_last(), backoff_ms[i]);
		usleep((useconds_t)backoff_ms[i] * 1000);
		rc = httpc_json_ex(out, status, method, url, ctl.token, req, REQUEST_TIMEOUT_MS, headers);
	}
	free(header);
	free(url);
	if (rc == OTA_EINVAL) {
		fprintf(stderr, "otactl: %s\n", ota_error_last());
		return EXIT_FAIL;
	}
	return rc < 0 ? ctl_unreachable() : 0;
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

/* ---- version ------------------------------------------------------------ */

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
	{ "tokens", cmd_tokens, "tokens add NAME --role R", "make an API token: viewer, operator, release or admin (admin); prints it once" },
	{ "tokens", cmd_tokens, "tokens revoke NAME", "revoke an API token, on every instance (admin)" },
	/* issue 13: device certificates (cli/devca.c) */
	{ "fleet", cmd_fleet, "fleet ca init [--cn NAME] [--days N]", "create the device CA (admin; --offline --state DIR: files only)" },
	{ "fleet", cmd_fleet, "fleet ca import CERT KEY", "import a device CA and its key (admin; --offline --state DIR too)" },
	{ "fleet", cmd_fleet, "fleet ca show [--out FILE]", "the device CA's subject and fingerprint (--out: its PEM)" },
	{ "fleet", cmd_fleet, "fleet ca remove --reason TEXT", "stop trusting the device CA on every instance: a stolen key (operator)" },
	{ "fleet", cmd_fleet, "fleet provisioners [ls]", "factory provisioning credentials: scope, count, rate" },
	{ "fleet", cmd_fleet, "fleet provisioners add NAME --prefix P --max N", "add one (admin; --products a,b --rate N/min); prints its token once" },
	{ "fleet", cmd_fleet, "fleet provisioners revoke NAME [--devices]", "end it now (admin); --devices: and every device it provisioned" },
	{ "devices", cmd_devices, "devices provision ID [--csr FILE]", "issue a device certificate (admin; --product P --out DIR --replace)" },
	{ "devices", cmd_devices, "devices revoke ID [--reason TEXT]", "refuse the device's certificates from now on (operator)" },
	{ "devices", cmd_devices, "devices identify CERT", "would the device CA accept this certificate now, and as whom" },
	{ "verify", cmd_verify, "verify RELEASE [--key PUB.pem]... [--root ROOT.crt.pem] | verify IMAGE --key PUB.pem",
	  "check a release's signatures, digests and provenance (or one MCUboot image)" },
	{ "artifacts", cmd_artifacts, "artifacts ls RUN | artifacts get DIGEST|RUN/NAME -o FILE",
	  "list a run's artifacts; download one, checked against its sha256" },
	{ "releases", cmd_releases, "releases [RELEASE] [--json]",
	  "list releases with their state; with an id: that release, its images and digests" },
	{ "rollout", cmd_rollout, "rollout status RELEASE", "steps, exposure, holds and gate verdicts with bounds" },
	{ "promote", cmd_promote, "promote RELEASE [--to STAGE|--skip-step] --reason TEXT",
	  "approve a waiting stage, or advance now (operator)" },
	{ "rollback", cmd_rollback, "rollback RELEASE [--reissue] --reason TEXT",
	  "halt the release and send devices back (or roll forward with --reissue)" },
	{ "pause", cmd_pause, "pause RELEASE --reason TEXT", "stop a rollout's expansion" },
	{ "resume", cmd_resume, "resume RELEASE --reason TEXT", "continue a paused rollout" },
	{ "gates", cmd_gates, "gates RELEASE", "every gate evaluation: inputs, bounds, verdict" },
	{ "audit", cmd_audit, "audit [--release RELEASE]", "who did what, when and why" },
	{ "flags", cmd_flags, "flags [ls] [PRODUCT]", "feature flags: state, percent, step, value, cohort" },
	{ "flags", cmd_flags, "flags set PRODUCT NAME on|off [--value V] [--cohort TAG=V] --reason TEXT",
	  "turn a flag on or off for its cohort at once (audited)" },
	{ "flags", cmd_flags, "flags rollout PRODUCT NAME --steps 10:1h,100:1h --gate G:crash_rate<=0.01 --reason TEXT",
	  "enable a flag through steps, holds and gates; rolled back when a gate fails (audited)" },
	{ "keys", cmd_keys, "keys root init DIR [--cn NAME] [--days N] [--key SPEC --pin PIN]",
	  "create the offline release root (key + self-signed certificate) in DIR" },
	{ "keys", cmd_keys, "keys certify PUB.pem|KEYSPEC --root DIR [--days N|--not-after T] -o CERT.pem",
	  "certify a release-signing key with the root (offline)" },
	{ "keys", cmd_keys, "keys revoke KEYID --root DIR --reason R [-o CRL.pem]",
	  "add a key's certificates to the root-signed revocation list (offline)" },
	{ "keys", cmd_keys, "keys publish CRL.pem", "hand a revocation list to the daemon, which serves it to devices" },
	{ "backup", cmd_backup, "backup DIR", "a consistent backup of the running otacd into DIR on its host (admin)" },
	{ "migrate", cmd_migrate, "migrate --from sqlite:STATE/otacd.db --to postgres://...",
	  "copy a stopped otacd's state into an empty PostgreSQL database, verified (no daemon needed)" },
	{ "migrate", cmd_migrate, "migrate --from sqlite:STATE/fleet.db --to postgres://...",
	  "then its fleet database (devices, aggregates, registrations) the same way, into a database of its own "
	  "(fleet_database:)" },
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
	fputs("usage: otactl [--url URL] [--token TOKEN] [--cacert FILE] [--json] COMMAND [ARGS]\n\ncommands:\n", f);
	for (size_t i = 0; i < OTA_ARRAY_SIZE(commands); i++)
		fprintf(f, "  %-44s %s\n", commands[i].usage, commands[i].summary);
	fputs("\n"
	      "--json prints the API's JSON instead of tables.  The daemon is found\n"
	      "through --url/--token, else OTACD_URL/OTACD_TOKEN, else the config file\n"
	      "($OTACTL_CONFIG or ~/.config/otactl/config: lines `url = ...`, `token = ...`),\n"
	      "else ./otacd-state/admin.token and " DEFAULT_URL ".\n"
	      "An https:// daemon is verified against --cacert FILE (else $OTACD_CACERT,\n"
	      "else the system's CAs); one that does not verify is unreachable.\n"
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
		fputs("usage: otactl [--url URL] [--token TOKEN] [--cacert FILE] [--json] COMMAND [ARGS]\n", stderr);
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
	const char *cacert = NULL;
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
		} else if ((r = opt_value("--cacert", argc, argv, &i, &v)) != 0) {
			if (r < 0)
				return usage_error(NULL, "--cacert needs a value");
			cacert = v;
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
	if (cacert)
		httpc_set_cacert(cacert);
	rc = c->fn((int)args.n - 1, args.v + 1);
	fflush(stdout);
	httpc_global_cleanup();
	strvec_clear(&args);
	free(ctl.url);
	free(ctl.token);
	return rc;
}
