/*
 * test_pgdaemon.c - otacd on PostgreSQL, as one instance (issue 16,
 * docs/storage.md conversion plan step 5; docs/scale.md).
 *
 * A real PostgreSQL cluster (tests/pgcluster.c) with two databases, otacd's
 * and the fleet's, named by the config keys database: and fleet_database:
 * (docs/config.md).  Through them:
 *
 *   - a real git push runs a pipeline whose build runs on local agents,
 *     whose release is signed and whose rollout step is judged on reports
 *     from simulated devices (otacd-fleetsim); otacd is SIGKILLed in the
 *     rollout's hold and restarted: the run finishes once;
 *   - (several instances on one database, leading and following, are
 *     tests/test_failover.c's)
 *   - a database URL's password never reaches a log or a message, and bad
 *     database values are refused before anything is opened.
 *
 * Without PostgreSQL's binaries the PostgreSQL cases are skipped, saying so.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../orchestrator/config.h"
#include "../orchestrator/db/db.h"
#include "githarness.h"
#include "harness.h"
#include "pgcluster.h"

#define SECRET "push-secret-for-the-pg-daemon"
#define REPO "acme/fw"
#define PASSWORD "pw-n0t-in-any-log"
#define DEVICES 400

/* ---- the cluster and its databases ----------------------------------------- */

struct pgworld {
	struct pgcluster pg;
	char *otacd_db; /* postgresql://otacd:PASSWORD@/otacd?host=... */
	char *fleet_db;
};

/* The URL with PASSWORD in its user part: the cluster trusts its socket,
 * so libpq never sends it, and it must never be shown either. */
static char *with_password(const char *url)
{
	const char *at = strstr(url, "otacd@");
	assert_non_null(at);
	return xasprintf("%.*sotacd:" PASSWORD "@%s", (int)(at - url), url, at + 6);
}

/* 0, or skip (a message) when PostgreSQL's binaries are missing. */
static int pgworld_start(struct pgworld *w)
{
	char *a, *b;

	memset(w, 0, sizeof(*w));
	if (h_pg_start_dbs(&w->pg, &a, &b) > 0)
		return 1;
	w->otacd_db = with_password(a);
	w->fleet_db = with_password(b);
	free(a);
	free(b);
	return 0;
}

static void pgworld_stop(struct pgworld *w)
{
	pgcluster_stop(&w->pg);
	free(w->otacd_db);
	free(w->fleet_db);
}

/* The daemon's log (stdout and stderr), read whole. */
static char *daemon_log(struct daemon *d)
{
	struct buf b = BUF_INIT;
	char *path = xasprintf("%s/otacd.log", d->dir);
	assert_int_equal(ota_read_file(&b, path, 64 << 20), 0);
	free(path);
	return buf_detach(&b);
}

/* ---- a pipeline from a push to a rollout step ------------------------------ */

static const char pipeline[] =
	"name: fw\n"
	"on: { push: { branches: [main] } }\n"
	"stages:\n"
	"  - name: build\n"
	"    matrix: { board: [mps2-an385, mps2-an386] }\n"
	"    steps: [ { run: \"printf 'fw 1.1.0 %s' '${{ matrix.board }}' > app.bin && head -c 3000 /dev/zero >> app.bin\" } ]\n"
	"    artifacts: [ { path: app.bin, name: 'app-${{ matrix.board }}.bin', type: application,"
	" hardware: '${{ matrix.board }}' } ]\n"
	"  - { name: release, kind: release, needs: [build], version: \"1.1.0\", security_counter: 1, key: test }\n"
	"  - name: canary\n"
	"    kind: rollout\n"
	"    needs: [release]\n"
	"    steps: [ {percent: 20, hold: 12h}, {percent: 100, hold: 2h} ]\n"
	"    max_extension: 240h\n"
	"    gates: [crash_free, boots]\n"
	"gates:\n"
	"  crash_free: { metric: crash_rate, max: 0.3, min_devices: 10 }\n"
	"  boots: { metric: boot_success_rate, min: 0.5, min_devices: 5 }\n";

static const char profile[] =
	"{ \"versions\": { \"1.0.0\": { \"crash_rate\": 0.02 }, \"1.1.0\": { \"crash_rate\": 0.02 } },"
	"  \"flaky\": 0, \"silent\": 0 }";

struct fleetenv {
	struct pgworld w;
	struct daemon d;
	struct gh_origin git;
	pid_t sim;
};

static void fleet_daemon_start(struct fleetenv *f)
{
	const char *const args[] = { "--local-agents", "2", "--time-scale", "3600", NULL };
	struct buf out = BUF_INIT;
	char *config, *hooklog;

	gh_origin_init(&f->git);
	h_init(&f->d, NULL);
	assert_int_equal(h_sh(&out, "cd %s && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out key.pem"
				    " && openssl pkey -in key.pem -pubout -out key.pub", f->d.dir), 0);
	config = xasprintf("lease: 3s\nheartbeat: 300ms\ndevice_register_burst: 100000\n"
			   "keys:\n  test: { spec: %s/key.pem }\n"
			   "repositories:\n  - { name: " REPO ", url: \"%s\", secret: " SECRET " }\n",
			   f->d.dir, f->git.origin);
	f->d.config = xasprintf("%s/config.yml", f->d.dir);
	assert_int_equal(ota_write_file_atomic(f->d.config, config, strlen(config), 0600), 0);
	/* a restart keeps its addresses: the simulated devices and the git
	 * hook go on talking to the same ones */
	f->d.listen = h_free_listen();
	f->d.device_listen = h_free_listen();
	h_use_database(&f->d, f->w.otacd_db, f->w.fleet_db);
	assert_int_equal(h_start(&f->d, args), 0);
	hooklog = xasprintf("%s/hook.log", f->git.base);
	gh_origin_create(&f->git);
	gh_origin_hook(&f->git, &f->d, "github", SECRET, REPO, hooklog);
	free(hooklog);
	free(config);
	buf_release(&out);
}

static void sim_start(struct fleetenv *f)
{
	char *bin = h_bin("otacd-fleetsim"), *prof = xasprintf("%s/profile.json", f->d.dir);
	char *key = xasprintf("%s/key.pub", f->d.dir), *log = xasprintf("%s/sim.log", f->d.dir);
	char *stats = xasprintf("%s/stats.json", f->d.dir), n[16];
	const char *argv[32];
	size_t i = 0;
	pid_t parent = getpid();

	snprintf(n, sizeof(n), "%d", DEVICES);
	assert_int_equal(ota_write_file_atomic(prof, profile, strlen(profile), 0600), 0);
	{
		const char *const fixed[] = { bin, "--url", f->d.device_url, "--devices", n, "--seed", "11", "--key", key,
					      "--fleet-key", f->d.fleet_key, "--product", "fw", "--profile", prof,
					      "--start-version", "1.0.0", "--start-counter", "0", "--duration", "5400",
					      "--stats", stats, NULL };
		for (; fixed[i]; i++)
			argv[i] = fixed[i];
		argv[i] = NULL;
	}
	f->sim = fork();
	if (f->sim == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
		h_die_with_parent(parent);
		dup2(fd, 1);
		dup2(fd, 2);
		execv(bin, (char *const *)argv);
		_exit(127);
	}
	free(bin);
	free(prof);
	free(key);
	free(log);
	free(stats);
}

static void fleetenv_stop(struct fleetenv *f)
{
	if (f->sim > 0) {
		kill(f->sim, SIGTERM);
		waitpid(f->sim, NULL, 0);
	}
	h_cleanup(&f->d);
	gh_origin_release(&f->git);
}

/* The run the push made (the only run of REPO); 0 until it exists. */
static int64_t pushed_run(struct daemon *d)
{
	return h_sql_int(d, "SELECT COALESCE(MAX(id), 0) FROM runs WHERE repo IS NOT NULL");
}

/* Sanitizer builds (OTACD_SLOW=1, make asan) run several times slower:
 * the waits (never an assertion) get three times as long. */
static int T(int ms)
{
	const char *s = getenv("OTACD_SLOW");
	return s && !strcmp(s, "1") ? 3 * ms : ms;
}

static int64_t wait_sql(struct daemon *d, const char *sql, int timeout_ms)
{
	int64_t v = 0;
	for (int waited = 0; waited < timeout_ms && (v = h_sql_int(d, sql)) <= 0; waited += 200)
		h_msleep(200);
	return v;
}

static void push_to_rollout_on_postgresql_survives_a_sigkill_and_finishes_once(void **state)
{
	struct fleetenv f;
	const char *const args[] = { "--local-agents", "2", "--time-scale", "3600", NULL };
	int64_t run, rel;
	char *log, *sql;
	json_t *r;

	(void)state;
	if (pgworld_start(&f.w) > 0)
		skip();
	fleet_daemon_start(&f);
	sim_start(&f);

	h_git_commit_file(f.git.work, "src/main.c", "int main(void) { return 0; }\n", "first");
	h_git_commit_file(f.git.work, ".otacd/pipeline.yml", pipeline, "the pipeline");
	h_git_push(f.git.work, "main");
	run = wait_sql(&f.d, "SELECT COALESCE(MAX(id), 0) FROM runs WHERE repo IS NOT NULL", T(30000));
	if (run <= 0) {
		struct buf hl = BUF_INIT;
		char *p = xasprintf("%s/hook.log", f.git.base);
		ota_read_file(&hl, p, 1 << 20);
		fail_msg("no run of the push; the hook's log:\n%s", buf_cstr(&hl));
	}

	/* the release is signed, and the rollout holds its first step */
	sql = xasprintf("SELECT COUNT(*) FROM rollouts WHERE run_id = %lld AND state = 'holding'", (long long)run);
	if (wait_sql(&f.d, sql, T(120000)) != 1) {
		json_t *r0 = h_run(&f.d, run);
		char *text = json_dumps(r0, JSON_INDENT(1));
		print_error("no rollout holding; the run:\n%s\n", text);
		free(text);
		json_decref(r0);
		fail();
	}
	free(sql);
	rel = h_sql_int(&f.d, "SELECT id FROM releases");
	assert_true(rel > 0);

	/* killed in the hold, restarted on the same databases */
	h_kill(&f.d, SIGKILL);
	assert_int_equal(h_start(&f.d, args), 0);
	assert_string_equal(h_wait_run(&f.d, run, T(240000)), "passed");

	/* once: one run of the push, one release, one rollout that passed
	 * both steps, each job passed in one attempt */
	assert_int_equal(pushed_run(&f.d), run);
	assert_int_equal(h_sql_int(&f.d, "SELECT COUNT(*) FROM runs"), 1);
	assert_int_equal(h_sql_int(&f.d, "SELECT COUNT(*) FROM releases"), 1);
	assert_int_equal(h_sql_int(&f.d, "SELECT COUNT(*) FROM rollouts"), 1);
	assert_int_equal(h_sql_int(&f.d, "SELECT COUNT(*) FROM rollouts WHERE state = 'passed'"), 1);
	assert_int_equal(h_sql_int(&f.d, "SELECT COUNT(*) FROM audit WHERE action = 'promote'"), 1);
	assert_int_equal(h_sql_int(&f.d, "SELECT COUNT(*) FROM jobs WHERE state <> 'passed'"), 0);
	assert_int_equal(h_sql_int(&f.d, "SELECT COUNT(*) FROM audit WHERE action = 'stage_passed'"), 1);
	r = h_run(&f.d, run);
	assert_string_equal(json_string_value(json_object_get(r, "state")), "passed");
	json_decref(r);
	/* the fleet's own database holds the devices */
	{
		struct daemon fleet = f.d;
		fleet.database = f.w.fleet_db;
		assert_true(h_sql_int(&fleet, "SELECT COUNT(*) FROM registered") >= DEVICES);
	}

	/* the log names the databases, never the password */
	log = daemon_log(&f.d);
	assert_non_null(strstr(log, "database postgresql://otacd:***@"));
	assert_non_null(strstr(log, "fleet database postgresql://otacd:***@"));
	assert_null(strstr(log, PASSWORD));
	free(log);

	fleetenv_stop(&f);
	pgworld_stop(&f.w);
}

/* ---- bad values ------------------------------------------------------------ */

/* Run otacd in the foreground on d's state and config until it exits (at
 * most 60 s); its exit status, its output in out. */
static int otacd_once(struct daemon *d, struct buf *out)
{
	char *otacd = h_bin("otacd");
	int rc = h_sh(out, "timeout 60 %s --state-dir %s/state --listen 127.0.0.1:0 --device-listen 127.0.0.1:0"
			   " --local-agents 0 --config %s 2>&1",
		      otacd, d->dir, d->config);
	free(otacd);
	return rc;
}

/* ---- database values ------------------------------------------------------- */

static int config_from(struct otacd_config *c, const char *yaml)
{
	char *dir = h_tmpdir(), *path = xasprintf("%s/c.yml", dir);
	struct buf out = BUF_INIT;
	int rc;

	assert_int_equal(ota_write_file_atomic(path, yaml, strlen(yaml), 0600), 0);
	config_defaults(c);
	rc = config_load(c, path);
	h_sh(&out, "rm -rf '%s'", dir);
	buf_release(&out);
	free(path);
	free(dir);
	return rc;
}

static void database_values_are_checked_and_their_passwords_never_shown(void **state)
{
	static const char *const bad[] = {
		"database: \"mysql://u:" PASSWORD "@db/otacd\"\n",
		"database: \"sqlite:\"\n",
		"fleet_database: \"/var/lib/otacd/fleet.db\"\n",
		"database: [ \"postgres://u:" PASSWORD "@db/otacd\" ]\n",
	};
	struct otacd_config c;
	char *url;

	(void)state;
	for (size_t i = 0; i < OTA_ARRAY_SIZE(bad); i++) {
		assert_int_equal(config_from(&c, bad[i]), OTA_EINVAL);
		assert_non_null(strstr(ota_error_last(), "database"));
		assert_non_null(strstr(ota_error_last(), "sqlite:PATH, postgres://... or postgresql://..."));
		assert_null(strstr(ota_error_last(), PASSWORD));
		/* nothing taken from a refused value */
		assert_null(c.database);
		assert_null(c.fleet_database);
		config_release(&c);
	}

	/* the defaults live in the state directory */
	assert_int_equal(config_from(&c, "state_dir: /srv/ota\n"), 0);
	url = config_database_url(&c, c.database, "otacd.db");
	assert_string_equal(url, "sqlite:/srv/ota/otacd.db");
	free(url);
	url = config_database_url(&c, c.fleet_database, "fleet.db");
	assert_string_equal(url, "sqlite:/srv/ota/fleet.db");
	free(url);
	config_release(&c);

	assert_int_equal(config_from(&c, "database: \"postgresql://otacd:" PASSWORD "@db.example/otacd\"\n"
					  "fleet_database: \"sqlite:/data/fleet.db\"\n"), 0);
	assert_string_equal(c.database, "postgresql://otacd:" PASSWORD "@db.example/otacd");
	assert_string_equal(c.fleet_database, "sqlite:/data/fleet.db");
	config_release(&c);

	/* what any message shows instead */
	url = db_url_redacted("postgres://otacd:" PASSWORD "@db.example:5432/otacd?sslmode=require&password=" PASSWORD);
	assert_string_equal(url, "postgres://otacd:***@db.example:5432/otacd?sslmode=require&password=***");
	free(url);
	url = db_url_redacted("postgres://otacd@db.example/otacd");
	assert_string_equal(url, "postgres://otacd@db.example/otacd");
	free(url);
}

static void daemon_refuses_a_bad_database_at_start_without_showing_its_password(void **state)
{
	struct daemon d;
	struct buf out = BUF_INIT;
	char *state_dir;
	struct stat st;

	(void)state;
	/* a bad value: exit 2 before the state directory is made */
	h_init(&d, "database: \"mongodb://otacd:" PASSWORD "@db/otacd\"\n");
	assert_int_equal(otacd_once(&d, &out), 2);
	assert_non_null(strstr(buf_cstr(&out), "'database' must be sqlite:PATH"));
	assert_null(strstr(buf_cstr(&out), PASSWORD));
	state_dir = xasprintf("%s/state", d.dir);
	assert_int_not_equal(stat(state_dir, &st), 0);

	/* a server that is not there: a failed start naming the URL, the
	 * password replaced */
	{
		char *cfg = xasprintf("database: \"postgresql://otacd:" PASSWORD "@/otacd?host=%s/nowhere\"\n", d.dir);
		assert_int_equal(ota_write_file_atomic(d.config, cfg, strlen(cfg), 0600), 0);
		free(cfg);
	}
	assert_int_not_equal(otacd_once(&d, &out), 0);
	assert_non_null(strstr(buf_cstr(&out), "postgresql://otacd:***@/otacd"));
	assert_null(strstr(buf_cstr(&out), PASSWORD));
	free(state_dir);
	buf_release(&out);
	h_cleanup(&d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(database_values_are_checked_and_their_passwords_never_shown),
		cmocka_unit_test(daemon_refuses_a_bad_database_at_start_without_showing_its_password),
		cmocka_unit_test(push_to_rollout_on_postgresql_survives_a_sigkill_and_finishes_once),
	};
	cmocka_set_test_filter(getenv("PGDAEMON_ONLY"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
