/*
 * test_backup.c - `otactl backup` while otacd runs a held rollout, and
 * `otacd --restore` into a fresh state directory: the restored otacd
 * carries the rollout on (same step and hold, its device registry, devices
 * still offered the release, a promote finishes it), its release
 * verifies, its logs are there.  Once with SQLite, once with both
 * databases on PostgreSQL (each daemon its own cluster, tests/pgcluster.h):
 * the backup holds both dumps and the restore fills two new databases.  A corrupted, partial or hostile backup is refused and changes
 * nothing; a backup needs the admin role.  With `logs:` the logs live,
 * are backed up from and are restored into that directory.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "../common/util.h"
#include "../orchestrator/db/db.h"
#include "devharness.h"
#include "harness.h"

#define VIEWER_TOKEN "viewer-token-0123456789abcdef"
#define OPERATOR_TOKEN "operator-token-0123456789abcdef"

static int64_t wait_holding(struct daemon *d)
{
	for (int waited = 0; waited < 60000; waited += 200) {
		if (h_sql_int(d, "SELECT COUNT(*) FROM rollouts WHERE state = 'holding'") == 1)
			return h_sql_int(d, "SELECT hold_until FROM rollouts");
		h_msleep(200);
	}
	fail_msg("the rollout never held");
	return -1;
}

/* The release's offer to device ID (credential CRED) on 1.0.0: its version. */
static char *offered_version(struct daemon *d, const char *id, const char *cred)
{
	json_t *ans = NULL;
	char *v = NULL;
	assert_int_equal(h_dev_post(d, "/device/v1/checkin", cred,
				    json_pack("{ss ss ss ss ss si ss}", "device", id, "product", "fw", "hardware",
					      "mps2-an385", "bootloader", "1.2.0", "version", "1.0.0", "security_counter", 0,
					      "slot", "confirmed"),
				    &ans),
			 200);
	if (json_is_object(json_object_get(ans, "offer")))
		v = xstrdup(json_string_value(json_object_get(json_object_get(ans, "offer"), "version")));
	json_decref(ans);
	return v;
}

static char *job_log(struct daemon *d, int64_t job)
{
	struct buf out = BUF_INIT;
	h_sh(&out, "curl -s -H 'Authorization: Bearer %s' %s/api/v1/jobs/%lld/log", d->token, d->url, (long long)job);
	return buf_detach(&out);
}

/* One integer from d's fleet database. */
static int64_t fleet_sql_int(struct daemon *d, const char *sql)
{
	char *url = d->fleet_database ? xstrdup(d->fleet_database) : xasprintf("sqlite:%s/state/fleet.db", d->dir);
	struct db *db = NULL;
	struct db_stmt *st = NULL;
	int64_t n;

	if (db_open(&db, url, DB_READONLY) < 0 || db_prepare(db, &st, sql) < 0 || db_step(st) != 1)
		fail_msg("fleet sql %s: %s", sql, ota_error_last());
	n = db_column_int64(st, 0);
	db_finalize(st);
	db_close(db);
	free(url);
	return n;
}

/* r's config: f's without its database lines, with r's own (new, empty
 * databases on r's cluster), so `otacd --restore --config` fills them. */
static void config_for_restore(struct daemon *r, const char *from)
{
	struct buf in = BUF_INIT, cfg = BUF_INIT;
	char *save = NULL;

	assert_int_equal(ota_read_file(&in, from, 1 << 20), 0);
	for (char *line = strtok_r(in.ptr, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
		if (strncmp(line, "database:", 9) && strncmp(line, "fleet_database:", 15))
			buf_printf(&cfg, "%s\n", line);
	buf_printf(&cfg, "database: \"%s\"\nfleet_database: \"%s\"\n", r->database, r->fleet_database);
	r->config = xasprintf("%s/config.yml", r->dir);
	assert_int_equal(ota_write_file_atomic(r->config, cfg.ptr, cfg.len, 0600), 0);
	buf_release(&in);
	buf_release(&cfg);
}

static void carry_on(int pg)
{
	struct dh_fleet f = { 0 };
	struct daemon r;
	struct buf out = BUF_INIT;
	char *otacd = h_bin("otacd"), *otactl = h_bin("otactl"), *bk, *log_before, *log_after, *v;
	int64_t run, build_job, hold_before;
	char *saved = getenv("OTACD_DATABASE") ? xstrdup(getenv("OTACD_DATABASE")) : NULL;

	if (pg) /* h_init: a cluster of its own with two new databases (make deps installs PostgreSQL) */
		setenv("OTACD_DATABASE", "pg", 1);
	h_init(&f.d, NULL);
	dh_fleet_start(&f, "bk", 2, "key", "poll_interval: 1s\n");
	f.release = dh_fw_release(&f.d);
	run = h_sql_int(&f.d, "SELECT run_id FROM releases");
	build_job = h_sql_int(&f.d, "SELECT id FROM jobs WHERE name = 'build'");
	hold_before = wait_holding(&f.d);
	v = offered_version(&f.d, "bk-0000", f.cred[0]);
	assert_non_null(v);
	assert_string_equal(v, "1.1.0");
	free(v);
	log_before = job_log(&f.d, build_job);
	assert_true(strlen(log_before) > 0);

	/* the backup, by otactl, while the rollout holds */
	bk = xasprintf("%s/backup", f.d.dir);
	assert_int_equal(h_sh(&out, "%s --url %s --token %s backup %s", otactl, f.d.url, f.d.token, bk), 0);
	assert_non_null(strstr(buf_cstr(&out), "backed up into"));
	h_kill(&f.d, SIGTERM);

	if (pg) {
		json_t *m;
		char *path = xasprintf("%s/backup.json", bk);
		m = json_load_file(path, 0, NULL);
		assert_non_null(m);
		assert_string_equal(json_string_value(json_object_get(m, "database")), "postgres");
		assert_string_equal(json_string_value(json_object_get(m, "fleet_database")), "postgres");
		json_decref(m);
		free(path);
	}

	/* restored into a fresh state directory, otacd there goes on */
	h_init(&r, NULL);
	if (pg) {
		config_for_restore(&r, f.d.config);
		if (saved)
			setenv("OTACD_DATABASE", saved, 1);
		else
			unsetenv("OTACD_DATABASE");
	} else {
		r.config = xstrdup(f.d.config);
	}
	if (h_sh(&out, "%s --config %s --restore %s --state-dir %s/state 2>&1", otacd, r.config, bk, r.dir) != 0)
		fail_msg("restore: %s", buf_cstr(&out));
	/* the device registry came along */
	assert_int_equal(fleet_sql_int(&r, "SELECT COUNT(*) FROM registered"), 2);
	assert_int_equal(h_start(&r, (const char *const[]){ "--local-agents", "1", NULL }), 0);
	assert_int_equal(h_sql_int(&r, "SELECT hold_until FROM rollouts"), hold_before); /* same step, same hold */
	assert_int_equal(h_sql_int(&r, "SELECT COUNT(*) FROM rollouts WHERE state = 'holding' AND step = 0"), 1);
	/* the fleet's credentials came along; the offer comes once the rollout
	 * controller has loaded the rollout, which a start does after the
	 * device API listens */
	for (int waited = 0; !(v = offered_version(&r, "bk-0001", f.cred[1])) && waited < 30000; waited += 200)
		h_msleep(200);
	assert_non_null(v);
	assert_string_equal(v, "1.1.0");
	free(v);
	log_after = job_log(&r, build_job);
	assert_string_equal(log_after, log_before);
	assert_int_equal(h_sh(&out, "%s --url %s --token %s verify %lld", otactl, r.url, r.token, (long long)f.release), 0);
	assert_non_null(strstr(buf_cstr(&out), "release verifies"));

	/* and carries on: promoted past its hold, the run finishes */
	{
		char *path = xasprintf("/api/v1/releases/%lld/promote", (long long)f.release);
		json_t *req = json_pack("{ss sb}", "reason", "restored from a backup", "skip_step", 1);
		assert_int_equal(h_post(&r, path, req, NULL), 200);
		json_decref(req);
		free(path);
	}
	assert_string_equal(h_wait_run(&r, run, 60000), "passed");

	buf_release(&out);
	free(log_before);
	free(log_after);
	free(bk);
	free(otacd);
	free(otactl);
	h_cleanup(&r);
	dh_fleet_stop(&f);
	free(saved);
}

static void rollout_in_a_hold_is_backed_up_restored_and_carries_on(void **state)
{
	(void)state;
	carry_on(0);
}

static void rollout_on_postgresql_is_backed_up_with_its_fleet_database_restored_and_carries_on(void **state)
{
	(void)state;
	carry_on(1);
}

/* A daemon with one finished run and a backup of it in DIR/backup. */
static char *backed_up(struct daemon *d)
{
	const char *const args[] = { "--local-agents", "1", NULL };
	char *bk;
	json_t *ans = NULL, *req;
	int64_t run;

	h_init(d, "tokens:\n"
		  "  - { name: viewer, role: viewer, token: " VIEWER_TOKEN " }\n"
		  "  - { name: ci, role: operator, token: " OPERATOR_TOKEN " }\n");
	assert_int_equal(h_start(d, args), 0);
	run = h_trigger(d, "name: p\nstages:\n  - name: one\n    steps: [ { run: 'echo backed up' } ]\n");
	assert_string_equal(h_wait_run(d, run, 60000), "passed");
	bk = xasprintf("%s/backup", d->dir);
	req = json_pack("{ss}", "dir", bk);
	assert_int_equal(h_post(d, "/api/v1/backup", req, &ans), 200);
	json_decref(req);
	assert_true(json_integer_value(json_object_get(ans, "files")) >= 3);
	json_decref(ans);
	return bk;
}

/* otacd --restore BK+SUFFIX into TARGET: its exit status; the message in out. */
static int restore(struct buf *out, const char *bk, const char *suffix, const char *target)
{
	char *otacd = h_bin("otacd");
	int rc = h_sh(out, "%s --restore %s%s --state-dir %s 2>&1", otacd, bk, suffix, target);
	free(otacd);
	return rc;
}

/* Nothing of a refused restore is left next to TARGET. */
static void nothing_left(const char *dir)
{
	struct buf out = BUF_INIT;
	h_sh(&out, "ls %s | grep -c restore- || true", dir);
	assert_string_equal(buf_cstr(&out), "0\n");
	buf_release(&out);
}

static void corrupted_partial_or_hostile_backup_is_refused_and_changes_nothing(void **state)
{
	struct daemon d;
	struct buf out = BUF_INIT;
	char *bk = backed_up(&d), *target = xasprintf("%s/restored", d.dir), *cmd;
	struct stat st;
	(void)state;

	/* one byte of a log changed */
	assert_int_equal(h_sh(&out, "cp -a %s %s.log && printf X | dd of=%s.log/logs/1/1.log bs=1 seek=0 conv=notrunc 2>/dev/null",
			      bk, bk, bk), 0);
	assert_int_not_equal(restore(&out, bk, ".log", target), 0);
	assert_non_null(strstr(buf_cstr(&out), "logs/1/1.log does not match backup.json"));
	assert_int_equal(stat(target, &st), -1);
	nothing_left(d.dir);

	/* the database truncated, its digest rewritten to match: the integrity check */
	cmd = xasprintf("cp -a %s %s.db && truncate -s 8192 %s.db/otacd.db && "
			"python3 -c \"import json,hashlib,sys; p=sys.argv[1]; m=json.load(open(p+'/backup.json'));"
			" f=[x for x in m['files'] if x['path']=='otacd.db'][0]; b=open(p+'/otacd.db','rb').read();"
			" f['size']=len(b); f['sha256']=hashlib.sha256(b).hexdigest(); json.dump(m,open(p+'/backup.json','w'))\" %s.db",
			bk, bk, bk, bk);
	assert_int_equal(h_sh(&out, "%s", cmd), 0);
	free(cmd);
	assert_int_not_equal(restore(&out, bk, ".db", target), 0);
	assert_non_null(strstr(buf_cstr(&out), "otacd.db"));
	assert_int_equal(stat(target, &st), -1);
	nothing_left(d.dir);

	/* no manifest: a partial backup */
	assert_int_equal(h_sh(&out, "cp -a %s %s.part && rm %s.part/backup.json", bk, bk, bk), 0);
	assert_int_not_equal(restore(&out, bk, ".part", target), 0);
	assert_non_null(strstr(buf_cstr(&out), "no readable manifest"));

	/* a path out of the backup */
	assert_int_equal(h_sh(&out, "cp -a %s %s.esc && sed -i 's#\"logs/1/1.log\"#\"../../etc/passwd\"#' %s.esc/backup.json",
			      bk, bk, bk), 0);
	assert_int_not_equal(restore(&out, bk, ".esc", target), 0);
	assert_non_null(strstr(buf_cstr(&out), "plain relative path"));
	assert_int_equal(stat(target, &st), -1);

	/* a symlinked directory in the backup, pointing at the same bytes elsewhere */
	assert_int_equal(h_sh(&out, "cp -a %s %s.sym && mv %s.sym/logs %s.elsewhere && ln -s %s.elsewhere %s.sym/logs", bk, bk,
			      bk, bk, bk, bk),
			 0);
	assert_int_not_equal(restore(&out, bk, ".sym", target), 0);
	assert_non_null(strstr(buf_cstr(&out), "a symlink?"));
	assert_int_equal(stat(target, &st), -1);
	nothing_left(d.dir);

	/* a state directory that is not empty is never touched */
	assert_int_equal(h_sh(&out, "mkdir -p %s && echo keep > %s/mine", target, target), 0);
	assert_int_not_equal(restore(&out, bk, "", target), 0);
	assert_non_null(strstr(buf_cstr(&out), "is not empty"));
	assert_int_equal(h_sh(&out, "cat %s/mine && ls %s | wc -l", target, target), 0);
	assert_string_equal(buf_cstr(&out), "keep\n1\n");

	/* and the good backup restores into an empty one */
	assert_int_equal(h_sh(&out, "rm %s/mine", target), 0);
	assert_int_equal(restore(&out, bk, "", target), 0);
	assert_int_equal(stat(target, &st), 0);
	nothing_left(d.dir);

	buf_release(&out);
	free(target);
	free(bk);
	h_cleanup(&d);
}

static void backup_needs_the_admin_role(void **state)
{
	struct daemon d;
	char *bk = backed_up(&d), *other = xasprintf("%s/other", d.dir);
	json_t *req = json_pack("{ss}", "dir", other);
	struct stat st;
	(void)state;

	assert_int_equal(h_call_as(&d, VIEWER_TOKEN, "POST", "/api/v1/backup", req, NULL), 403);
	assert_int_equal(h_call_as(&d, OPERATOR_TOKEN, "POST", "/api/v1/backup", req, NULL), 403);
	assert_int_equal(h_call_as(&d, NULL, "POST", "/api/v1/backup", req, NULL), 401);
	assert_int_equal(stat(other, &st), -1);
	/* the admin: a relative path and a used directory are refused */
	json_decref(req);
	req = json_pack("{ss}", "dir", "relative/dir");
	assert_int_equal(h_post(&d, "/api/v1/backup", req, NULL), 400);
	json_decref(req);
	req = json_pack("{ss}", "dir", bk);
	assert_int_equal(h_post(&d, "/api/v1/backup", req, NULL), 409);
	json_decref(req);
	free(other);
	free(bk);
	h_cleanup(&d);
}

/* Write text to DIR/NAME; the path (caller frees). */
static char *write_config(const char *dir, const char *name, const char *text)
{
	char *path = xasprintf("%s/%s", dir, name);
	assert_int_equal(ota_write_file_atomic(path, text, strlen(text), 0600), 0);
	return path;
}

/* `logs:` (docs/config.md): the job logs live there, not in the state
 * directory; a backup copies them from there and a restore fills a new,
 * empty one; a relative or non-string value stops otacd at start. */
static void a_logs_directory_of_its_own_is_used_backed_up_and_restored(void **state)
{
	const char *const args[] = { "--local-agents", "1", NULL };
	struct daemon d;
	struct buf out = BUF_INIT;
	char *text, *restore_cfg, *bad, *bk, *otacd = h_bin("otacd"), *path;
	json_t *req;
	struct stat st;
	int64_t run;
	(void)state;

	h_init(&d, NULL);
	text = xasprintf("logs: %s/shared/logs\n", d.dir);
	d.config = write_config(d.dir, "config.yml", text);
	free(text);
	assert_int_equal(h_start(&d, args), 0);
	run = h_trigger(&d, "name: p\nstages:\n  - name: one\n    steps: [ { run: 'echo in the shared logs' } ]\n");
	assert_string_equal(h_wait_run(&d, run, 60000), "passed");
	assert_int_equal(h_sh(&out, "cat %s/shared/logs/*/1.log", d.dir), 0);
	assert_non_null(strstr(buf_cstr(&out), "in the shared logs"));
	path = xasprintf("%s/state/logs", d.dir);
	assert_int_equal(stat(path, &st), -1);
	free(path);
	h_otactl_checked(&d, &out, "logs %lld", (long long)run);
	assert_non_null(strstr(buf_cstr(&out), "in the shared logs"));

	/* the backup follows logs: */
	bk = xasprintf("%s/backup", d.dir);
	req = json_pack("{ss}", "dir", bk);
	assert_int_equal(h_post(&d, "/api/v1/backup", req, NULL), 200);
	json_decref(req);
	assert_int_equal(h_sh(&out, "cat %s/logs/*/1.log", bk), 0);
	assert_non_null(strstr(buf_cstr(&out), "in the shared logs"));

	/* and the restore fills the logs: of its config, new or empty */
	text = xasprintf("logs: %s/restored-logs\n", d.dir);
	restore_cfg = write_config(d.dir, "restore.yml", text);
	free(text);
	assert_int_equal(h_sh(&out, "%s --restore %s --config %s --state-dir %s/restored 2>&1", otacd, bk, restore_cfg,
			      d.dir),
			 0);
	assert_int_equal(h_sh(&out, "cat %s/restored-logs/*/1.log", d.dir), 0);
	assert_non_null(strstr(buf_cstr(&out), "in the shared logs"));
	path = xasprintf("%s/restored/logs", d.dir);
	assert_int_equal(stat(path, &st), -1);
	free(path);
	/* a logs: directory that is not empty is refused, and nothing is restored */
	assert_int_not_equal(h_sh(&out, "%s --restore %s --config %s --state-dir %s/again 2>&1", otacd, bk, restore_cfg,
				  d.dir),
			     0);
	assert_non_null(strstr(buf_cstr(&out), "is not empty"));
	path = xasprintf("%s/again", d.dir);
	assert_int_equal(stat(path, &st), -1);
	free(path);
	nothing_left(d.dir);

	/* bad values stop otacd at start, at their line and column */
	bad = write_config(d.dir, "bad.yml", "time_scale: 1\nlogs: relative/logs\n");
	assert_int_not_equal(h_sh(&out, "%s --config %s --state-dir %s/bad 2>&1", otacd, bad, d.dir), 0);
	assert_non_null(strstr(buf_cstr(&out), "bad.yml:2:7: 'logs' must be an absolute directory path"));
	free(bad);
	bad = write_config(d.dir, "bad2.yml", "logs: [ /a ]\n");
	assert_int_not_equal(h_sh(&out, "%s --config %s --state-dir %s/bad 2>&1", otacd, bad, d.dir), 0);
	assert_non_null(strstr(buf_cstr(&out), "bad2.yml:1:7: 'logs' must be"));
	free(bad);

	buf_release(&out);
	free(restore_cfg);
	free(bk);
	free(otacd);
	h_cleanup(&d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(rollout_in_a_hold_is_backed_up_restored_and_carries_on),
		cmocka_unit_test(rollout_on_postgresql_is_backed_up_with_its_fleet_database_restored_and_carries_on),
		cmocka_unit_test(corrupted_partial_or_hostile_backup_is_refused_and_changes_nothing),
		cmocka_unit_test(backup_needs_the_admin_role),
		cmocka_unit_test(a_logs_directory_of_its_own_is_used_backed_up_and_restored),
	};
	cmocka_set_test_filter(getenv("X_ONLY"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
