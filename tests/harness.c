/*
 * harness.c - start real otacd/otacd-agent processes for end-to-end tests;
 * see harness.h.
 */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "../common/httpc.h"
#include "../orchestrator/db/db.h"
#include "devharness.h"
#include "pgcluster.h"

void h_die_with_parent(pid_t parent)
{
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != parent) /* it died before the line above */
		_exit(127);
}

/* The test binary's pid, taken before any test forks. */
static pid_t g_test_pid;
__attribute__((constructor)) static void note_test_pid(void)
{
	g_test_pid = getpid();
}

void h_child_dies_with_test(void)
{
	h_die_with_parent(g_test_pid);
}

char *h_tmpdir(void)
{
	const char *base = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	char *dir = xasprintf("%s/otacd-test-XXXXXX", base);
	if (!mkdtemp(dir))
		fail_msg("mkdtemp: %s", strerror(errno));
	return dir;
}

/* OTACD_BIN (make check sets it), else build/bin made absolute: tests
 * run commands from other directories. */
char *h_bin(const char *name)
{
	const char *bin = getenv("OTACD_BIN");
	char *abs = bin ? NULL : realpath("build/bin", NULL), *out;
	out = xasprintf("%s/%s", bin ? bin : abs ? abs : "build/bin", name);
	free(abs);
	return out;
}

/*
 * Every process the harness started.  A test that fails half-way leaves
 * through cmocka's longjmp, past its h_cleanup(); at exit whatever is still
 * running is killed, a daemon with its process group (its local agents and
 * their jobs).  Only children not yet reaped are touched, so a pid that
 * was reused by someone else is never signalled.
 */
static struct { pid_t pid; int group; } g_started[512];
static size_t g_nstarted;

static void kill_leftovers(void)
{
	for (size_t i = 0; i < g_nstarted; i++) {
		pid_t p = g_started[i].pid;
		if (waitpid(p, NULL, WNOHANG) != 0)
			continue; /* reaped already, or just exited */
		kill(g_started[i].group ? -p : p, SIGKILL);
		waitpid(p, NULL, 0);
	}
}

static void remember(pid_t pid, int group)
{
	if (pid <= 0)
		return;
	if (!g_nstarted)
		atexit(kill_leftovers);
	if (g_nstarted < OTA_ARRAY_SIZE(g_started)) {
		g_started[g_nstarted].pid = pid;
		g_started[g_nstarted].group = group;
		g_nstarted++;
	}
}

void h_msleep(int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000 };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

int h_pid_alive(pid_t pid)
{
	return kill(pid, 0) == 0;
}

void h_init(struct daemon *d, const char *config_yaml)
{
	static int curl_ready;
	if (!curl_ready) {
		httpc_global_init();
		curl_ready = 1;
	}
	memset(d, 0, sizeof(*d));
	d->dir = h_tmpdir();
	if (config_yaml) {
		d->config = xasprintf("%s/config.yml", d->dir);
		assert_int_equal(ota_write_file_atomic(d->config, config_yaml, strlen(config_yaml), 0600), 0);
	}
	if (h_on_pg()) {
		char *otacd_db, *fleet_db;
		int rc;
		d->pg = xcalloc(1, sizeof(*d->pg));
		if ((rc = pgcluster_start(d->pg, 0)) != 0)
			fail_msg("OTACD_DATABASE=pg: %s", rc > 0 ? "PostgreSQL's binaries are missing" : ota_error_last());
		otacd_db = h_pg_createdb(d->pg, "otacd");
		fleet_db = h_pg_createdb(d->pg, "fleet");
		h_use_database(d, otacd_db, fleet_db);
		free(otacd_db);
		free(fleet_db);
	}
}

int h_pg_start_dbs(struct pgcluster *pg, char **otacd_db, char **fleet_db)
{
	int rc;

	memset(pg, 0, sizeof(*pg));
	rc = pgcluster_start(pg, 0);
	if (rc > 0) {
		print_message("PostgreSQL's binaries are missing: skipped\n");
		return 1;
	}
	if (rc < 0)
		fail_msg("pgcluster: %s", ota_error_last());
	*otacd_db = h_pg_createdb(pg, "otacd");
	*fleet_db = h_pg_createdb(pg, "fleet");
	return 0;
}

void h_pg_instances(struct daemon *d, int n, const char *otacd_db, const char *fleet_db, const char *yaml,
		    const char *const *args)
{
	h_pg_instances_objects(d, n, otacd_db, fleet_db, yaml, args, NULL);
}

long h_proc_kb(pid_t pid, const char *field)
{
	char path[64], line[256];
	long kb = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	assert_non_null(f = fopen(path, "r"));
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, field, strlen(field)) && line[strlen(field)] == ':')
			kb = strtol(line + strlen(field) + 1, NULL, 10);
	fclose(f);
	assert_true(kb > 0);
	return kb;
}

void h_share_objects(struct daemon *d, const char *objects)
{
	char *dir = xasprintf("%s/state/artifacts", d->dir), *link = xasprintf("%s/sha256", dir);
	assert_int_equal(ota_mkdir_p(dir, 0700), 0);
	assert_int_equal(symlink(objects, link), 0);
	free(dir);
	free(link);
}

void h_pg_instances_objects(struct daemon *d, int n, const char *otacd_db, const char *fleet_db, const char *yaml,
			    const char *const *args, const char *objects)
{
	for (int i = 0; i < n; i++) {
		h_init(&d[i], yaml);
		h_use_database(&d[i], otacd_db, fleet_db);
		if (objects)
			h_share_objects(&d[i], objects);
		d[i].follower_ok = i > 0;
		if (i > 0)
			d[i].token = xstrdup(d[0].token);
		assert_int_equal(h_start(&d[i], args), 0);
		if (i == 0)
			assert_true(h_leads(&d[0]));
	}
}

int h_leads(struct daemon *d)
{
	json_t *r = NULL;
	long st = h_get(d, "/readyz", &r);
	char *text = r ? json_dumps(r, 0) : NULL;
	int following = st == 503 && text && strstr(text, "follower");
	free(text);
	json_decref(r);
	return st > 0 && !following;
}

int h_on_pg(void)
{
	const char *v = getenv("OTACD_DATABASE");
	return v && !strcmp(v, "pg");
}

void h_use_database(struct daemon *d, const char *url, const char *fleet_url)
{
	free(d->database);
	free(d->fleet_database);
	d->database = url ? xstrdup(url) : NULL;
	d->fleet_database = fleet_url ? xstrdup(fleet_url) : NULL;
}

char *h_pg_createdb(const struct pgcluster *pg, const char *name)
{
	const char *q = strstr(pg->url, "/postgres?");
	char *sql = xasprintf("CREATE DATABASE %s", name);
	struct db *db;

	assert_non_null(q);
	if (db_open(&db, pg->url, 0) < 0)
		fail_msg("open %s: %s", pg->url, ota_error_last());
	if (db_exec(db, sql) < 0)
		fail_msg("%s: %s", sql, db_errmsg(db));
	db_close(db);
	free(sql);
	return xasprintf("%.*s/%s?%s", (int)(q - pg->url), pg->url, name, q + 10);
}

/* A config line key: for d's databases, unless the config has one. */
static void config_add_database(struct buf *cfg, const char *key, const char *url)
{
	char *line = xasprintf("\n%s:", key);
	if (url && strncmp(buf_cstr(cfg), line + 1, strlen(line + 1)) != 0 && !strstr(buf_cstr(cfg), line)) {
		if (cfg->len && cfg->ptr[cfg->len - 1] != '\n')
			buf_puts(cfg, "\n");
		buf_printf(cfg, "%s: \"%s\"\n", key, url);
	}
	free(line);
}

/* Add d's database URLs to its config file (made if it has none). */
static void write_database_config(struct daemon *d)
{
	struct buf cfg = BUF_INIT;

	if (!d->database && !d->fleet_database)
		return;
	if (!d->config)
		d->config = xasprintf("%s/config.yml", d->dir);
	if (ota_read_file(&cfg, d->config, 1 << 20) < 0)
		buf_puts(&cfg, "");
	config_add_database(&cfg, "database", d->database);
	config_add_database(&cfg, "fleet_database", d->fleet_database);
	assert_int_equal(ota_write_file_atomic(d->config, cfg.ptr, cfg.len, 0600), 0);
	buf_release(&cfg);
}

int h_start(struct daemon *d, const char *const *args)
{
	char *urlfile = xasprintf("%s/state/otacd.url", d->dir);
	char *state = xasprintf("%s/state", d->dir);
	char *log = xasprintf("%s/otacd.log", d->dir);
	char *otacd = h_bin("otacd");
	struct strvec argv = STRVEC_INIT;
	struct buf b = BUF_INIT;
	pid_t parent;
	int i;

	unlink(urlfile);
	write_database_config(d);
	/* local agents outlive a SIGKILLed daemon: in tests, not for long */
	setenv("OTACD_AGENT_ORPHAN_MS", "30000", 0);
	strvec_push(&argv, otacd);
	strvec_push(&argv, "--state-dir");
	strvec_push(&argv, state);
	strvec_push(&argv, "--listen");
	strvec_push(&argv, d->listen ? d->listen : "127.0.0.1:0");
	if (d->config) {
		strvec_push(&argv, "--config");
		strvec_push(&argv, d->config);
	}
	strvec_push(&argv, "--device-listen");
	strvec_push(&argv, d->device_listen ? d->device_listen : "127.0.0.1:0");
	for (i = 0; args && args[i]; i++)
		strvec_push(&argv, args[i]);

	parent = getpid();
	d->pid = fork();
	if (d->pid == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
		h_die_with_parent(parent);
		if (fd >= 0) {
			dup2(fd, 2);
			dup2(fd, 1);
		}
		setpgid(0, 0);
		execv(otacd, argv.v);
		_exit(127);
	}
	remember(d->pid, 1);
	strvec_clear(&argv);
	for (i = 0; i < 1000; i++) {
		if (ota_read_file(&b, urlfile, 4096) == 0) {
			char *nl = strchr(b.ptr, '\n');
			if (nl)
				*nl = '\0';
			free(d->url);
			d->url = buf_detach(&b);
			break;
		}
		if (waitpid(d->pid, NULL, WNOHANG) == d->pid)
			fail_msg("otacd exited at start; see %s", log);
		h_msleep(10);
	}
	assert_non_null(d->url);
	if (!d->token) {
		char *tokfile = xasprintf("%s/admin.token", state);
		assert_int_equal(ota_read_file(&b, tokfile, 4096), 0);
		*strchr(b.ptr, '\n') = '\0';
		d->token = buf_detach(&b);
		free(tokfile);
	}
	for (i = 0; i < 500; i++) {
		json_t *h = NULL;
		if (h_get(d, "/api/v1/health", &h) == 200) {
			json_decref(h);
			break;
		}
		h_msleep(10);
	}
	/* issue 16: on PostgreSQL every instance starts as a follower and
	 * leads from its first leadership poll (docs/scale.md); tests act
	 * on the leader (generous cap: a takeover after a SIGKILL waits for
	 * the old session to end) */
	for (i = 0; d->database && !strncmp(d->database, "postgres", 8) && !d->follower_ok && i < 6000; i++) {
		if (h_leads(d))
			break;
		h_msleep(10);
	}
	/* issue 18: the device API answers 503 until the rollout controller
	 * has loaded the rollouts; tests check in right after a start */
	for (i = 0; !d->follower_ok && i < 1000; i++) {
		json_t *r = NULL;
		long st = h_get(d, "/readyz", &r);
		char *text = r ? json_dumps(r, 0) : NULL;
		int loading = st == 503 && text && strstr(text, "rollout controller");
		free(text);
		json_decref(r);
		if (!loading)
			break;
		h_msleep(10);
	}
	{
		/* the device API (written before the main API's URL file) */
		char *f = xasprintf("%s/otacd-device.url", state);
		if (ota_read_file(&b, f, 4096) == 0) {
			char *nl = strchr(b.ptr, '\n');
			if (nl)
				*nl = '\0';
			free(d->device_url);
			d->device_url = buf_detach(&b);
		}
		free(f);
		f = xasprintf("%s/fleet.key", state);
		if (ota_read_file(&b, f, 4096) == 0) {
			free(d->fleet_key);
			d->fleet_key = buf_detach(&b);
		}
		free(f);
	}
	free(urlfile);
	free(state);
	free(log);
	free(otacd);
	return 0;
}

void h_kill(struct daemon *d, int sig)
{
	if (d->pid <= 0)
		return;
	kill(d->pid, sig);
	waitpid(d->pid, NULL, 0);
	d->pid = 0;
}

void h_cleanup(struct daemon *d)
{
	struct buf out = BUF_INIT;
	h_kill(d, SIGTERM);
	if (d->dir && !getenv("OTACD_KEEP"))
		h_sh(&out, "rm -rf '%s'", d->dir);
	buf_release(&out);
	free(d->dir);
	free(d->url);
	free(d->token);
	free(d->config);
	free(d->listen);
	free(d->device_listen);
	free(d->device_url);
	free(d->fleet_key);
	free(d->database);
	free(d->fleet_database);
	if (d->pg) {
		pgcluster_stop(d->pg);
		free(d->pg);
	}
	memset(d, 0, sizeof(*d));
}

static long call_as(struct daemon *d, const char *token, const char *method, const char *path, json_t *body,
		    json_t **out)
{
	char *url = xasprintf("%s%s", d->url, path);
	long status = 0;
	json_t *ans = NULL;
	int rc = httpc_json(&ans, &status, method, url, token, body, 30000);
	free(url);
	if (rc < 0)
		status = -1;
	if (out)
		*out = ans;
	else
		json_decref(ans);
	return status;
}

static long call(struct daemon *d, const char *method, const char *path, json_t *body, json_t **out)
{
	return call_as(d, d->token, method, path, body, out);
}

long h_call_as(struct daemon *d, const char *token, const char *method, const char *path, json_t *body,
	       json_t **out)
{
	return call_as(d, token, method, path, body, out);
}

long h_get(struct daemon *d, const char *path, json_t **out)
{
	return call(d, "GET", path, NULL, out);
}

long h_post(struct daemon *d, const char *path, json_t *body, json_t **out)
{
	return call(d, "POST", path, body, out);
}

int64_t h_trigger(struct daemon *d, const char *yaml)
{
	json_t *ans = NULL, *req = json_pack("{ss ss}", "pipeline", yaml, "file", "test.yml");
	long status = h_post(d, "/api/v1/runs", req, &ans);
	int64_t id;
	json_decref(req);
	if (status != 201) {
		char *text = ans ? json_dumps(ans, 0) : NULL;
		fail_msg("trigger answered %ld: %s", status, text ? text : "");
	}
	id = json_integer_value(json_object_get(ans, "id"));
	json_decref(ans);
	return id;
}

json_t *h_run(struct daemon *d, int64_t run)
{
	char *path = xasprintf("/api/v1/runs/%lld", (long long)run);
	json_t *ans = NULL;
	long status = h_get(d, path, &ans);
	free(path);
	assert_int_equal(status, 200);
	return ans;
}

const char *h_wait_run(struct daemon *d, int64_t run, int timeout_ms)
{
	static const char *const finals[] = { "passed", "failed", "canceled" };
	for (int waited = 0; waited < timeout_ms; waited += 50) {
		json_t *r = h_run(d, run);
		const char *state = json_string_value(json_object_get(r, "state"));
		for (size_t i = 0; i < OTA_ARRAY_SIZE(finals); i++) {
			if (state && !strcmp(state, finals[i])) {
				json_decref(r);
				return finals[i];
			}
		}
		json_decref(r);
		h_msleep(50);
	}
	return "timeout";
}

json_t *h_job(json_t *run, const char *name)
{
	size_t i, k;
	json_t *stage, *job;
	json_array_foreach(json_object_get(run, "stages"), i, stage) {
		json_array_foreach(json_object_get(stage, "jobs"), k, job) {
			if (!strcmp(json_string_value(json_object_get(job, "name")), name))
				return job;
		}
	}
	fail_msg("no job named %s", name);
	return NULL;
}

/* Tokens of the agents this process registered, so that an agent started
 * again under the same name (a restart) gets its token back. */
static struct {
	char *dir, *name, *token;
} g_agent_tokens[64];

char *h_agent_add(struct daemon *d, const char *name, const char *labels)
{
	json_t *req = json_pack("{ss s[]}", "name", name, "labels"), *ans = NULL;
	const char *s = labels ? labels : "test";
	char *token = NULL;
	long status;
	size_t i;

	for (i = 0; i < OTA_ARRAY_SIZE(g_agent_tokens) && g_agent_tokens[i].dir; i++)
		if (!strcmp(g_agent_tokens[i].dir, d->dir) && !strcmp(g_agent_tokens[i].name, name)) {
			json_decref(req);
			return xstrdup(g_agent_tokens[i].token);
		}
	while (*s) {
		size_t n = strcspn(s, ",");
		if (n)
			json_array_append_new(json_object_get(req, "labels"), json_stringn(s, n));
		s += n;
		if (*s == ',')
			s++;
	}
	status = h_post(d, "/api/v1/agents", req, &ans);
	if (status == 201 && json_is_string(json_object_get(ans, "token"))) {
		token = xstrdup(json_string_value(json_object_get(ans, "token")));
		if (i < OTA_ARRAY_SIZE(g_agent_tokens)) {
			g_agent_tokens[i].dir = xstrdup(d->dir);
			g_agent_tokens[i].name = xstrdup(name);
			g_agent_tokens[i].token = xstrdup(token);
		}
	}
	json_decref(req);
	json_decref(ans);
	return token;
}

pid_t h_agent(struct daemon *d, const char *name, const char *labels)
{
	char *token = h_agent_add(d, name, labels);
	pid_t pid;
	if (!token)
		fail_msg("cannot register agent %s", name);
	pid = h_agent_with(d, name, labels, token);
	free(token);
	return pid;
}

pid_t h_agent_with(struct daemon *d, const char *name, const char *labels, const char *token)
{
	char *agent = h_bin("otacd-agent");
	char *work = xasprintf("%s/work-%s", d->dir, name);
	char *log = xasprintf("%s/agent-%s.log", d->dir, name);
	pid_t parent = getpid(), pid = fork();
	if (pid == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
		h_die_with_parent(parent);
		if (fd >= 0) {
			dup2(fd, 2);
			dup2(fd, 1);
		}
		setenv("OTACD_AGENT_TOKEN", token, 1);
		execl(agent, agent, "--url", d->url, "--name", name, "--labels", labels ? labels : "test",
		      "--workdir", work, (char *)NULL);
		_exit(127);
	}
	remember(pid, 0);
	free(agent);
	free(work);
	free(log);
	return pid;
}

int h_sh(struct buf *out, const char *fmt, ...)
{
	struct buf cmd = BUF_INIT;
	char chunk[4096];
	va_list ap;
	FILE *p;
	size_t n;
	int status;

	va_start(ap, fmt);
	buf_vprintf(&cmd, fmt, ap);
	va_end(ap);
	buf_puts(&cmd, " 2>&1");
	buf_clear(out);
	p = popen(buf_cstr(&cmd), "r");
	buf_release(&cmd);
	if (!p)
		return -1;
	while ((n = fread(chunk, 1, sizeof(chunk), p)) > 0)
		buf_put(out, chunk, n);
	status = pclose(p);
	if (!out->ptr)
		buf_puts(out, "");
	return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* otactl with args against d; when loud and it fails, print what it said. */
static int otactl_run(struct daemon *d, struct buf *out, int loud, const char *fmt, va_list ap)
{
	char *bin = h_bin("otactl");
	struct buf args = BUF_INIT;
	int rc;
	buf_vprintf(&args, fmt, ap);
	rc = h_sh(out, "OTACD_URL=%s OTACD_TOKEN=%s %s %s", d->url, d->token, bin, buf_cstr(&args));
	if (rc && loud)
		print_message("otactl %s: exit %d: %s\n", buf_cstr(&args), rc, buf_cstr(out));
	buf_release(&args);
	free(bin);
	return rc;
}

int h_otactl(struct daemon *d, struct buf *out, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int rc = otactl_run(d, out, 0, fmt, ap);
	va_end(ap);
	return rc;
}

int h_otactl_checked(struct daemon *d, struct buf *out, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int rc = otactl_run(d, out, 1, fmt, ap);
	va_end(ap);
	return rc;
}

char *h_ec_keypair(const char *dir)
{
	struct buf out = BUF_INIT;
	/* a pair already there is kept: a daemon configured with k.pem
	 * before h_fleetsim_start() signs what the fleet verifies */
	assert_int_equal(h_sh(&out, "cd %s && { [ -s k.pem ] && [ -s k.pub ] || { openssl genpkey -algorithm EC"
				    " -pkeyopt ec_paramgen_curve:P-256 -out k.pem && openssl pkey -in k.pem -pubout -out k.pub; }; }",
			      dir),
			 0);
	buf_release(&out);
	return xasprintf("%s/k.pub", dir);
}

/* The first column of sql's first row on d's database (NULL when no row,
 * or a NULL): its text, which caller frees.  Read-only. */
static char *sql_first(struct daemon *d, const char *sql, int *found)
{
	char *url = d->database ? xstrdup(d->database) : xasprintf("sqlite:%s/state/otacd.db", d->dir);
	struct db *db = NULL;
	struct db_stmt *st = NULL;
	char *v = NULL;

	*found = 0;
	if (db_open(&db, url, DB_READONLY) < 0 || db_prepare(db, &st, sql) < 0)
		fail_msg("sql %s: %s", sql, ota_error_last());
	if (db_step(st) == 1) {
		const char *t = db_column_text(st, 0);
		*found = 1;
		v = t ? xstrdup(t) : NULL;
	}
	db_finalize(st);
	db_close(db);
	free(url);
	return v;
}

int64_t h_sql_int(struct daemon *d, const char *sql)
{
	int found;
	char *v = sql_first(d, sql, &found);
	int64_t n = found ? 0 : -1;
	/* PostgreSQL writes a boolean (SELECT state = 'passed') as t / f */
	if (v)
		n = !strcmp(v, "t") ? 1 : strtoll(v, NULL, 10);
	free(v);
	return n;
}

char *h_sql_text(struct daemon *d, const char *sql)
{
	int found;
	char *v = sql_first(d, sql, &found);
	if (!found || !v)
		fail_msg("sql %s: no row", sql);
	return v;
}

char *h_fleet_secrets_yaml(const char *dir)
{
	char key[65], secret[65], *path = xasprintf("%s/device-shared.secret", dir), *yaml;
	assert_int_equal(ota_random_hex(key, 32), 0);
	assert_int_equal(ota_random_hex(secret, 32), 0);
	assert_int_equal(ota_write_file_atomic(path, secret, 64, 0600), 0);
	yaml = xasprintf("fleet_key: \"%s\"\ndevice_secret_file: \"%s\"\n", key, path);
	free(path);
	return yaml;
}

char *h_free_listen(void)
{
	struct sockaddr_in sa = { 0 };
	socklen_t len = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	sa.sin_family = AF_INET;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    getsockname(fd, (struct sockaddr *)&sa, &len) < 0)
		fail_msg("cannot find a free port: %s", strerror(errno));
	close(fd);
	return xasprintf("127.0.0.1:%d", ntohs(sa.sin_port));
}

char **h_register_devices(struct daemon *d, const char *prefix, int n)
{
	char *url = xasprintf("%s/device/v1/register", d->device_url);
	json_t *ids = json_array(), *req, *ans = NULL, *creds;
	char **out = xcalloc((size_t)n + 1, sizeof(*out));
	long status = 0;

	for (int i = 0; i < n; i++) {
		char id[64];
		snprintf(id, sizeof(id), "%s-%04d", prefix, i);
		json_array_append_new(ids, json_string(id));
	}
	req = json_pack("{so}", "devices", ids);
	assert_int_equal(httpc_json(&ans, &status, "POST", url, d->fleet_key, req, 30000), 0);
	if (status != 200)
		fail_msg("registering %d devices: %ld %s", n, status, httpc_json_error(ans));
	creds = json_object_get(ans, "credentials");
	assert_int_equal(json_array_size(creds), n);
	for (int i = 0; i < n; i++)
		out[i] = xstrdup(json_string_value(json_array_get(creds, i)));
	json_decref(ans);
	json_decref(req);
	free(url);
	return out;
}

long h_raw(struct daemon *d, const char *method, const char *path, const char *token, const char *ctype,
	   const void *data, size_t len, struct buf *body)
{
	struct httpc_response resp;
	char *url = xasprintf("%s%s", d->url, path);
	int rc = httpc_request(&resp, method, url, token, ctype, data, len, 20000);
	long status = rc < 0 ? -1 : resp.status;

	free(url);
	if (body) {
		buf_clear(body);
		if (rc == 0)
			buf_put(body, resp.body.ptr ? resp.body.ptr : "", resp.body.len);
	}
	if (rc == 0)
		httpc_response_release(&resp);
	return status;
}

json_t *h_take_job(struct daemon *d, const char *name, const char *labels, int64_t *agent_id)
{
	char *token = h_agent_add(d, name, labels);
	json_t *ans = NULL, *req = json_object(), *ls = json_array();
	char *copy = xstrdup(labels), *save = NULL;

	if (!token)
		fail_msg("cannot register agent %s", name);
	for (char *l = strtok_r(copy, ",", &save); l; l = strtok_r(NULL, ",", &save))
		json_array_append_new(ls, json_string(l));
	free(copy);
	json_object_set_new(req, "labels", ls);
	if (h_call_as(d, token, "POST", "/api/v1/agent/register", req, &ans) != 200)
		fail_msg("agent %s could not register", name);
	*agent_id = json_integer_value(json_object_get(ans, "agent_id"));
	json_decref(ans);
	json_decref(req);
	ans = NULL;
	req = json_pack("{si}", "wait_ms", 5000);
	if (h_call_as(d, token, "POST", "/api/v1/agent/jobs/request", req, &ans) != 200)
		fail_msg("agent %s got no job", name);
	json_decref(req);
	free(token);
	return ans;
}

int h_git(const char *work, struct buf *out, const char *fmt, ...)
{
	struct buf cmd = BUF_INIT;
	va_list ap;
	int rc;

	va_start(ap, fmt);
	buf_vprintf(&cmd, fmt, ap);
	va_end(ap);
	rc = h_sh(out, "cd %s && git -c user.name=Tester -c user.email=tester@example.com %s", work, buf_cstr(&cmd));
	buf_release(&cmd);
	return rc;
}

void h_git_commit_file(const char *work, const char *path, const char *content, const char *msg)
{
	struct buf out = BUF_INIT;
	char *full = xasprintf("%s/%s", work, path);
	char *dir = xstrdup(full);

	*strrchr(dir, '/') = '\0';
	ota_mkdir_p(dir, 0755);
	if (ota_write_file_atomic(full, content, strlen(content), 0644) != 0)
		fail_msg("cannot write %s", full);
	if (h_git(work, &out, "add -A && git -c user.name=Tester -c user.email=tester@example.com commit -q -m '%s'", msg) != 0)
		fail_msg("git commit: %s", buf_cstr(&out));
	free(dir);
	free(full);
	buf_release(&out);
}

void h_git_push(const char *work, const char *args)
{
	struct buf out = BUF_INIT;
	if (h_git(work, &out, "push -q origin %s", args) != 0)
		fail_msg("git push %s: %s", args, buf_cstr(&out));
	buf_release(&out);
}

char *h_device_metrics(struct daemon *d, size_t *len)
{
	char *url = xasprintf("%s/metrics", d->device_url);
	struct httpc_response r = { 0 };
	char *text;

	if (httpc_request(&r, "GET", url, NULL, NULL, NULL, 0, 30000) != 0 || r.status != 200)
		fail_msg("GET %s failed", url);
	if (len)
		*len = r.body.len;
	text = xstrdup(buf_cstr(&r.body));
	httpc_response_release(&r);
	free(url);
	return text;
}

int64_t h_device_metric(struct daemon *d, const char *name)
{
	char *m = h_device_metrics(d, NULL), *at = strstr(m, name);
	int64_t v = 0;
	while (at && at > m && at[-1] != '\n')
		at = strstr(at + 1, name);
	if (at)
		v = strtoll(at + strlen(name) + 1, NULL, 10);
	free(m);
	return v;
}

int64_t h_fleet_devices(struct daemon *d, const char *version)
{
	char *needle = xasprintf("otacd_fleet_devices{product=\"fw\",version=\"%s\",cohort=\"*\"} ", version);
	char *text = h_device_metrics(d, NULL);
	const char *p = strstr(text, needle);
	int64_t on = p ? strtoll(p + strlen(needle), NULL, 10) : -1;

	free(text);
	free(needle);
	return on;
}

char *h_calm_profile(struct daemon *d)
{
	static const char calm[] = "{ \"silent\": 0, \"flaky\": 0 }";
	char *path = xasprintf("%s/calm-profile.json", d->dir);

	assert_int_equal(ota_write_file_atomic(path, calm, strlen(calm), 0600), 0);
	return path;
}

json_t *h_flag_row(struct daemon *d, const char *product, const char *name)
{
	json_t *list = NULL, *x, *found = NULL;
	char *path = xasprintf("/api/v1/flags?product=%s", product);
	size_t i;
	assert_int_equal(h_get(d, path, &list), 200);
	free(path);
	json_array_foreach(list, i, x)
		if (!strcmp(json_string_value(json_object_get(x, "name")), name))
			found = json_incref(x);
	json_decref(list);
	return found;
}

void h_flag_wait(struct daemon *d, const char *name, const char *want, int timeout_s)
{
	json_t *row = NULL;
	for (int i = 0; i < timeout_s * 10; i++) {
		row = h_flag_row(d, "fw", name);
		if (getenv("FLAGS_DEBUG") && i % 20 == 0) {
			json_t *e = json_array_get(json_object_get(row, "evals"), 0);
			fprintf(stderr, "%s %s step %d bp %d: %s\n", name, json_string_value(json_object_get(row, "state")),
				(int)json_integer_value(json_object_get(row, "step")),
				(int)json_integer_value(json_object_get(row, "bp")),
				json_string_value(json_object_get(e, "reason")));
		}
		if (row && !strcmp(json_string_value(json_object_get(row, "state")), want))
			break;
		json_decref(row);
		row = NULL;
		h_msleep(100);
	}
	if (!row) {
		row = h_flag_row(d, "fw", name);
		print_message("state directory: %s\n", d->dir);
		fail_msg("flag %s never reached %s: %s", name, want, row ? json_dumps(row, 0) : "(none)");
	}
	json_decref(row);
}

json_t *h_checkin_flags(struct daemon *d, const char *id, const char *cred, const char *product, json_t *tags)
{
	json_t *req = json_pack("{ss ss ss ss ss si}", "device", id, "product", product, "hardware", "mps2-an385",
				"bootloader", "1.0.0", "version", "1.0.0", "security_counter", 1), *ans = NULL, *flags;
	if (tags)
		json_object_set_new(req, "tags", tags);
	assert_int_equal(h_dev_post(d, "/device/v1/checkin", cred, req, &ans), 200);
	flags = json_incref(json_object_get(ans, "flags"));
	json_decref(ans);
	return flags;
}

json_t *h_fleetsim_stats(pid_t sim, const char *stats, const char *log)
{
	int status = 0;
	json_t *st;

	assert_int_equal(waitpid(sim, &status, 0), sim);
	st = json_load_file(stats, 0, NULL);
	if (!st || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		struct buf out = BUF_INIT;
		h_sh(&out, "tail -20 %s", log);
		fail_msg("fleetsim failed or wrote no stats (status %d): %s", status, buf_cstr(&out));
	}
	return st;
}

void h_fleetsim_start(struct h_fleetsim *fs, struct daemon *d, const char *profile_json, const char *const *args)
{
	char *bin = h_bin("otacd-fleetsim"), *key = h_ec_keypair(d->dir), *profile = xasprintf("%s/profile.json", d->dir);
	struct strvec argv = STRVEC_INIT;

	assert_int_equal(ota_write_file_atomic(profile, profile_json, strlen(profile_json), 0644), 0);
	fs->log = xasprintf("%s/sim.log", d->dir);
	fs->stats = xasprintf("%s/stats.json", d->dir);
	for (const char *const *a = (const char *const[]){ bin, "--engine", "core", "--url", d->device_url,
							    "--fleet-key", d->fleet_key, "--key", key, "--profile", profile,
							    "--product", "fw", "--start-version", "1.0.0", "--report-every",
							    "30m", "--stats", fs->stats, NULL };
	     *a; a++)
		strvec_push(&argv, *a);
	for (const char *const *a = args; *a; a++)
		strvec_push(&argv, *a);
	fs->pid = dh_spawn(fs->log, argv.v);
	strvec_clear(&argv);
	free(profile);
	free(key);
	free(bin);
}

json_t *h_fleetsim_stop(struct h_fleetsim *fs)
{
	json_t *st;

	kill(fs->pid, SIGTERM);
	st = h_fleetsim_stats(fs->pid, fs->stats, fs->log);
	free(fs->log);
	free(fs->stats);
	return st;
}

long h_dev_post(struct daemon *d, const char *path, const char *token, json_t *req, json_t **ans)
{
	char *url = xasprintf("%s%s", d->device_url, path);
	long status = 0;
	json_t *a = NULL;
	assert_int_equal(httpc_json(&a, &status, "POST", url, token, req, 30000), 0);
	json_decref(req);
	free(url);
	if (ans)
		*ans = a;
	else
		json_decref(a);
	return status;
}

char *h_token_line(struct buf *b)
{
	const char *s = buf_cstr(b);
	while (*s) {
		size_t n = strcspn(s, "\n");
		if (n == 64 && strspn(s, "0123456789abcdef") == 64)
			return xstrndup(s, n);
		s += n + (s[n] == '\n');
	}
	fail_msg("no token in: %s", buf_cstr(b));
	return NULL;
}
