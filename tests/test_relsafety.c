/*
 * test_relsafety.c - release-safety holes found with 100,000 simulated
 * devices (issue 19, part 6), each reproduced and shown closed:
 *
 * - a release waiting for approval whose security counter fell below what
 *   devices were offered meanwhile is refused at approval (real daemon);
 * - a step cannot pass on the earlier steps' devices alone: its verdict
 *   needs min_devices of the devices it exposed (real daemon and fleetsim),
 *   even while the earlier steps' devices keep reporting during it, across
 *   a restart (real daemon, devices over HTTP);
 * - a halt withdraws outstanding offers: a device offered before the halt
 *   cannot finish its download and its next check-in offers nothing;
 * - the baseline is the previous good release, not every other version
 *   (in-process with the fleet module);
 * - lint warns when a gate cannot be proven at a step's expected device
 *   count (real daemon and fleetsim);
 * - the cohort bucketing hash spreads devices like chance does, over many
 *   salts, for the device ids fleets really use (in-process:
 *   the hash is a pure function, a unit test is the honest level).
 */
#include <math.h>
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
#include <sys/wait.h>
#include <unistd.h>

#include "../common/httpc.h"
#include "../common/util.h"
#include "../orchestrator/fleet/fleet.h"
#include "../orchestrator/gate.h"
#include "harness.h"

static void daemon_start(struct daemon *d)
{
	const char *const args[] = { "--local-agents", "2", "--time-scale", "3600", NULL };
	struct buf out = BUF_INIT;
	char *cfg;

	h_init(d, NULL);
	assert_int_equal(h_sh(&out, "cd %s && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out key.pem"
				    " && openssl pkey -in key.pem -pubout -out key.pub", d->dir), 0);
	cfg = xasprintf("keys:\n  test: { spec: %s/key.pem }\ndevice_register_burst: 100000\n", d->dir);
	d->config = xasprintf("%s/config.yml", d->dir);
	assert_int_equal(ota_write_file_atomic(d->config, cfg, strlen(cfg), 0600), 0);
	assert_int_equal(h_start(d, args), 0);
	free(cfg);
	buf_release(&out);
}

static char *pipeline(const char *version, int counter, const char *stages)
{
	return xasprintf("name: fw\nstages:\n"
			 "  - name: build\n"
			 "    steps: [ { run: \"printf 'fw %s' > app.bin && head -c 3000 /dev/zero >> app.bin\" } ]\n"
			 "    artifacts: [ { path: app.bin, name: app.bin, type: application, hardware: mps2-an385 } ]\n"
			 "  - { name: release, kind: release, needs: [build], version: \"%s\", security_counter: %d, key: test }\n"
			 "%sgates:\n  uptime: { metric: crash_rate, max: 0.5, min_devices: 1 }\n",
			 version, version, counter, stages);
}

static int64_t wait_sql(struct daemon *d, const char *sql, int timeout_ms)
{
	int64_t v = 0;
	for (int waited = 0; waited < timeout_ms && !(v = h_sql_int(d, sql)); waited += 100)
		h_msleep(100);
	return v;
}

/*
 * Counter 1 waits for approval; meanwhile counter 2 goes out.  Approving
 * counter 1 now would offer devices an image they refuse (anti-rollback):
 * the promote is refused with why, the stage fails, nothing is offered.
 */
static void approval_rechecks_the_security_counter(void **state)
{
	struct daemon d;
	char *old = pipeline("1.4.0", 1,
			     "  - { name: production, kind: rollout, needs: [release], approval: required,"
			     " steps: [ {percent: 100, hold: 48h} ], gates: [uptime] }\n");
	char *newer = pipeline("1.5.0", 2,
			       "  - { name: canary, kind: rollout, needs: [release], steps: [ {percent: 30, hold: 48h} ],"
			       " gates: [uptime] }\n");
	int64_t run_old, run_new, rel_old;
	json_t *req, *ans = NULL;
	char *path;

	(void)state;
	daemon_start(&d);
	run_old = h_trigger(&d, old);
	assert_int_equal(wait_sql(&d, "SELECT COUNT(*) FROM rollouts WHERE state = 'waiting_approval'", 60000), 1);
	rel_old = h_sql_int(&d, "SELECT id FROM releases WHERE version = '1.4.0'");
	assert_true(rel_old > 0);
	/* waiting is not started: nothing offered, the release still 'created' */
	assert_int_equal(h_sql_int(&d, "SELECT state = 'created' FROM releases WHERE version = '1.4.0'"), 1);

	run_new = h_trigger(&d, newer);
	assert_int_equal(wait_sql(&d, "SELECT COUNT(*) FROM rollouts r JOIN releases l ON l.id = r.release_id"
				      " WHERE l.version = '1.5.0' AND r.state = 'holding' AND r.percent_bp = 3000", 60000), 1);

	path = xasprintf("/api/v1/releases/%lld/promote", (long long)rel_old);
	req = json_pack("{ss}", "reason", "change window tonight");
	assert_int_equal(h_post(&d, path, req, &ans), 409);
	{
		char *text = json_dumps(ans, 0);
		assert_non_null(strstr(text, "anti-rollback"));
		assert_non_null(strstr(text, "counter 2"));
		free(text);
	}
	json_decref(ans);
	/* the refusal is durable: the stage failed, the run ends, the release never exposed */
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM rollouts r JOIN releases l ON l.id = r.release_id"
				       " WHERE l.version = '1.4.0' AND r.state = 'failed' AND r.percent_bp = 0"), 1);
	assert_int_equal(h_sql_int(&d, "SELECT state = 'created' FROM releases WHERE version = '1.4.0'"), 1);
	assert_string_equal(h_wait_run(&d, run_old, 60000), "failed");
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM audit WHERE action = 'refuse'"), 1);
	/* a second promote finds nothing waiting */
	ans = NULL;
	assert_int_equal(h_post(&d, path, req, &ans), 409);
	json_decref(ans);
	/* the newer release is untouched */
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM rollouts r JOIN releases l ON l.id = r.release_id"
				       " WHERE l.version = '1.5.0' AND r.state = 'holding'"), 1);
	json_decref(req);
	free(path);
	h_cleanup(&d);
	free(old);
	free(newer);
	(void)run_new;
}

/* Start otacd-fleetsim with n healthy devices on 1.0.0 (counter 0). */
static pid_t sim_start(struct daemon *d, int n)
{
	char *bin = h_bin("otacd-fleetsim"), *prof = xasprintf("%s/profile.json", d->dir);
	char *key = xasprintf("%s/key.pub", d->dir), *log = xasprintf("%s/sim.log", d->dir);
	char *stats = xasprintf("%s/stats.json", d->dir), devices[16];
	pid_t pid;

	snprintf(devices, sizeof(devices), "%d", n);
	assert_int_equal(ota_write_file_atomic(prof, "{}", 2, 0600), 0);
	pid = fork();
	if (pid == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
		h_child_dies_with_test();
		dup2(fd, 1);
		dup2(fd, 2);
		execl(bin, bin, "--url", d->device_url, "--devices", devices, "--seed", "7", "--key", key, "--fleet-key",
		      d->fleet_key, "--product", "fw", "--profile", prof, "--start-version", "1.0.0", "--start-counter", "0",
		      "--duration", "900", "--stats", stats, (char *)NULL);
		_exit(127);
	}
	free(bin);
	free(prof);
	free(key);
	free(log);
	free(stats);
	return pid;
}

static void sim_stop(pid_t pid)
{
	int status;
	if (pid > 0) {
		kill(pid, SIGKILL);
		waitpid(pid, &status, 0);
	}
}

/*
 * 50 % then 100 %.  The 50 % step's devices alone are far more than the
 * gate's min_devices; the fleet goes silent the moment the 100 % step
 * starts, so that step has no evidence of its own.  Before: it passed on
 * the running total.  Now: inconclusive, then paused for a human.
 */
static void a_step_needs_evidence_from_its_own_devices(void **state)
{
	struct daemon d;
	char *y = xasprintf("name: fw\nstages:\n"
			    "  - name: build\n"
			    "    steps: [ { run: \"printf 'fw 1.1.0' > app.bin && head -c 3000 /dev/zero >> app.bin\" } ]\n"
			    "    artifacts: [ { path: app.bin, name: app.bin, type: application, hardware: mps2-an385 } ]\n"
			    "  - { name: release, kind: release, needs: [build], version: \"1.1.0\", security_counter: 0, key: test }\n"
			    "  - { name: canary, kind: rollout, needs: [release], max_extension: 4h,"
			    " steps: [ {percent: 50, hold: 12h}, {percent: 100, hold: 2h} ], gates: [boots] }\n"
			    "gates:\n  boots: { metric: boot_success_rate, min: 0.5, min_devices: 60 }\n");
	int64_t run;
	pid_t sim;

	(void)state;
	daemon_start(&d);
	sim = sim_start(&d, 600);
	run = h_trigger(&d, y);
	assert_int_equal(wait_sql(&d, "SELECT COUNT(*) FROM rollouts WHERE step = 1", 120000), 1);
	sim_stop(sim);
	/* the earlier step passed on plenty of its own boots */
	assert_true(h_sql_int(&d, "SELECT MAX(n) FROM gate_evals WHERE step = 0 AND verdict = 'pass'") >= 60);
	assert_int_equal(wait_sql(&d, "SELECT COUNT(*) FROM rollouts WHERE state IN ('paused','passed')", 60000), 1);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM rollouts WHERE state = 'paused' AND step = 1"), 1);
	/* the 100 % step saw the earlier boots (well over min_devices) and still did not pass */
	assert_true(h_sql_int(&d, "SELECT MAX(n) FROM gate_evals WHERE step = 1") >= 60);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM gate_evals WHERE step = 1 AND verdict = 'pass'"), 0);
	assert_true(h_sql_int(&d, "SELECT COUNT(*) FROM gate_evals WHERE step = 1 AND detail LIKE '%exposed in this step%'") > 0);
	assert_int_equal(h_sql_int(&d, "SELECT state = 'rolling' FROM releases WHERE version = '1.1.0'"), 1);
	{
		json_t *r = h_run(&d, run);
		assert_string_equal(json_string_value(json_object_get(r, "state")), "running");
		json_decref(r);
	}
	h_cleanup(&d);
	free(y);
}

static json_t *checkin(struct daemon *d, const char *cred)
{
	char *url = xasprintf("%s/device/v1/checkin", d->device_url);
	json_t *req = json_pack("{ss ss ss ss ss si ss}", "device", "probe-0000", "product", "fw", "hardware", "mps2-an385",
				"bootloader", "1.2.0", "version", "1.0.0", "security_counter", 0, "slot", "confirmed");
	json_t *ans = NULL;
	long status = 0;
	assert_int_equal(httpc_json(&ans, &status, "POST", url, cred, req, 10000), 0);
	assert_int_equal(status, 200);
	json_decref(req);
	free(url);
	return ans;
}

/* GET the image (bytes from..) as probe-0000; the HTTP status. */
static long fetch_image(struct daemon *d, const char *cred, const char *path, int from)
{
	struct buf out = BUF_INIT;
	long st;
	assert_int_equal(h_sh(&out, "curl -s -o /dev/null -w '%%{http_code}' -r %d- -H 'Authorization: Bearer %s'"
				    " -H 'X-Device-Id: probe-0000' '%s%s'", from, cred, d->device_url, path), 0);
	st = strtol(buf_cstr(&out), NULL, 10);
	buf_release(&out);
	return st;
}

/*
 * A device is offered the release and starts downloading; the release is
 * halted before it finishes.  The rest of the download is refused (410)
 * and its next check-in offers nothing: it never installs the halted image.
 */
static void a_halt_withdraws_outstanding_offers(void **state)
{
	struct daemon d;
	char *y = pipeline("1.1.0", 0,
			   "  - { name: canary, kind: rollout, needs: [release], steps: [ {percent: 100, hold: 48h} ],"
			   " gates: [uptime] }\n");
	char **cred;
	char *img = NULL, *path;
	json_t *ans, *req;
	int64_t rel;

	(void)state;
	daemon_start(&d);
	cred = h_register_devices(&d, "probe", 1);
	h_trigger(&d, y);
	assert_int_equal(wait_sql(&d, "SELECT COUNT(*) FROM rollouts WHERE state = 'holding'", 60000), 1);
	rel = h_sql_int(&d, "SELECT id FROM releases WHERE version = '1.1.0'");
	/* the exposure reaches the update server asynchronously */
	for (int waited = 0; waited < 30000 && !img; waited += 100) {
		ans = checkin(&d, cred[0]);
		if (json_is_object(json_object_get(ans, "offer")))
			img = xstrdup(json_string_value(json_object_get(json_object_get(json_object_get(ans, "offer"), "image"), "url")));
		json_decref(ans);
		if (!img)
			h_msleep(100);
	}
	assert_non_null(img);
	assert_int_equal(fetch_image(&d, cred[0], img, 0), 206);   /* downloading (a range) */

	path = xasprintf("/api/v1/releases/%lld/rollback", (long long)rel);
	req = json_pack("{ss}", "reason", "crash reports from the field");
	ans = NULL;
	assert_int_equal(h_post(&d, path, req, &ans), 200);
	json_decref(ans);
	assert_int_equal(h_sql_int(&d, "SELECT state = 'halted' FROM releases WHERE version = '1.1.0'"), 1);
	/* the rest of the download is refused once the halt reached the update server */
	{
		long st = 0;
		for (int waited = 0; waited < 30000 && (st = fetch_image(&d, cred[0], img, 1000)) != 410; waited += 100)
			h_msleep(100);
		assert_int_equal(st, 410);
	}
	ans = checkin(&d, cred[0]);
	assert_true(json_is_null(json_object_get(ans, "offer")));
	json_decref(ans);
	assert_int_equal(fetch_image(&d, cred[0], img, 0), 410);
	json_decref(req);
	free(path);
	free(img);
	free(cred[0]);
	free(cred);
	h_cleanup(&d);
	free(y);
}

/* ---- a step's own devices, over HTTP ------------------------------------- */

#define OWN_N 400

/* Check device i in on version; 1 when the answer offers 1.1.0. */
static int own_checkin(struct daemon *d, char **cred, int i, const char *version)
{
	char *url = xasprintf("%s/device/v1/checkin", d->device_url), id[32];
	json_t *req, *ans = NULL;
	long status = 0;
	int offered;

	snprintf(id, sizeof(id), "dev-%04d", i);
	req = json_pack("{ss ss ss ss ss si ss}", "device", id, "product", "fw", "hardware", "mps2-an385", "bootloader",
			"1.2.0", "version", version, "security_counter", 0, "slot", "confirmed");
	assert_int_equal(httpc_json(&ans, &status, "POST", url, cred[i], req, 10000), 0);
	assert_int_equal(status, 200);
	offered = json_is_object(json_object_get(ans, "offer")) &&
		  !strcmp(json_string_value(json_object_get(json_object_get(ans, "offer"), "version")) ?: "", "1.1.0");
	json_decref(ans);
	json_decref(req);
	free(url);
	return offered;
}

/* One report batch: every device i with pick[i] set reports events about
 * 1.1.0, each with its own credential; the batch must be accepted. */
static void own_report(struct daemon *d, char **cred, const char *pick, const char *const *events, size_t nev)
{
	char *url = xasprintf("%s/device/v1/reports", d->device_url);
	json_t *reports = json_array(), *req, *ans = NULL;
	long status = 0;

	for (int i = 0; i < OWN_N; i++) {
		char id[32];
		if (!pick[i])
			continue;
		snprintf(id, sizeof(id), "dev-%04d", i);
		for (size_t e = 0; e < nev; e++)
			json_array_append_new(reports, json_pack("{ss ss ss ss sf}", "device", id, "credential", cred[i],
								 "version", "1.1.0", "event", events[e], "uptime_s", 60.0));
	}
	req = json_pack("{so}", "reports", reports);
	assert_int_equal(httpc_json(&ans, &status, "POST", url, NULL, req, 30000), 0);
	if (status != 200)
		fprintf(stderr, "report batch: HTTP %ld %s\n", status, json_string_value(json_object_get(ans, "error")));
	assert_int_equal(status, 200);
	json_decref(ans);
	json_decref(req);
	free(url);
}

/*
 * 25 % then 100 %, min_devices 30.  The devices of the 25 % step (slots
 * below 2500 under the release's salt, checked here) report their boots
 * partly during their step and partly during the next one; the devices
 * the 100 % step exposes check in, are offered the release, and stay
 * silent.  A rule counting reports that arrive during a step passes the
 * 100 % step on the 25 % step's late boots; the step's own evidence is
 * zero, so it stays inconclusive, also after a SIGKILL and restart.  Once
 * its own devices report their boots, it passes.
 */
static void a_step_passes_only_on_devices_it_exposed(void **state)
{
	static const char *const boot[] = { "download", "install", "boot_ok" };
	static const char *const hb[] = { "heartbeat" };
	const char *const args[] = { "--local-agents", "2", "--time-scale", "3600", NULL };
	struct daemon d;
	char *y = xasprintf("name: fw\nstages:\n"
			    "  - name: build\n"
			    "    steps: [ { run: \"printf 'fw 1.1.0' > app.bin && head -c 3000 /dev/zero >> app.bin\" } ]\n"
			    "    artifacts: [ { path: app.bin, name: app.bin, type: application, hardware: mps2-an385 } ]\n"
			    "  - { name: release, kind: release, needs: [build], version: \"1.1.0\", security_counter: 0, key: test }\n"
			    "  - { name: canary, kind: rollout, needs: [release], max_extension: 2000h,"
			    " steps: [ {percent: 25, hold: 1h}, {percent: 100, hold: 1h} ], gates: [boots] }\n"
			    "gates:\n  boots: { metric: boot_success_rate, min: 0.5, min_devices: 30 }\n");
	char **cred, a[OWN_N], early[OWN_N], late[OWN_N], b[OWN_N], salt[17], sql[256];
	int na = 0, nearly = 0, nb = 0;
	int64_t run;

	(void)state;
	daemon_start(&d);
	cred = h_register_devices(&d, "dev", OWN_N);
	for (int i = 0; i < OWN_N; i++)
		assert_int_equal(own_checkin(&d, cred, i, "1.0.0"), 0);
	run = h_trigger(&d, y);
	assert_int_equal(wait_sql(&d, "SELECT COUNT(*) FROM rollouts WHERE state = 'holding' AND step = 0", 120000), 1);

	/* the 25 % step's devices: offered once the exposure reached the
	 * update server; exactly the slots below 2500 */
	for (int k = 0; k < 16; k++) {
		snprintf(sql, sizeof(sql), "SELECT unicode(substr(a.sha256, %d, 1)) FROM releases r JOIN artifacts a"
			 " ON a.id = r.manifest_artifact WHERE r.version = '1.1.0'", k + 1);
		salt[k] = (char)h_sql_int(&d, sql);
	}
	salt[16] = 0;
	for (int waited = 0, prev = -1; waited < 30000; waited += 100) {
		na = 0;
		for (int i = 0; i < OWN_N; i++)
			na += (a[i] = (char)own_checkin(&d, cred, i, "1.0.0"));
		if (na > 0 && na == prev)
			break;
		prev = na;
		h_msleep(100);
	}
	for (int i = 0; i < OWN_N; i++)
		assert_int_equal(a[i], fleet_cohort_slot(salt, (snprintf(sql, sizeof(sql), "dev-%04d", i), sql)) < 2500);
	/* how many that is comes from the release's salt (random, from the
	 * manifest's digest): binomial(400, 0.25), sd 8.7.  At least 60, so
	 * half of them meet min_devices; 60..140 is 4.6 sd each way (a
	 * 70..130 band failed once in ~2,000 runs by chance) */
	assert_true(na >= 60 && na <= 140);
	/* half of them boot during their step: plenty for min_devices */
	for (int i = 0; i < OWN_N; i++) {
		early[i] = (char)(a[i] && nearly < na / 2);
		nearly += early[i];
		late[i] = (char)(a[i] && !early[i]);
	}
	own_report(&d, cred, early, boot, 3);
	assert_int_equal(wait_sql(&d, "SELECT COUNT(*) FROM rollouts WHERE step = 1", 60000), 1);
	snprintf(sql, sizeof(sql), "SELECT COUNT(*) FROM gate_evals WHERE step = 0 AND verdict = 'pass'"
		 " AND json_extract(detail, '$.step_n') = %d", nearly);
	assert_int_equal(h_sql_int(&d, sql), 1);

	/* the 100 % step: its devices are offered the release and stay silent */
	for (int waited = 0; waited < 30000 && nb < OWN_N - na; waited += 100) {
		nb = 0;
		for (int i = 0; i < OWN_N; i++)
			nb += (b[i] = (char)(!a[i] && own_checkin(&d, cred, i, "1.0.0")));
		if (nb < OWN_N - na)
			h_msleep(100);
	}
	assert_int_equal(nb, OWN_N - na);
	/* the 25 % step's devices go on: the late ones boot now (more than
	 * min_devices of reports arriving during this step), all send heartbeats */
	own_report(&d, cred, late, boot, 3);
	own_report(&d, cred, a, hb, 1);
	/* judged with all of them in the running total, past the hold */
	snprintf(sql, sizeof(sql), "SELECT COUNT(*) FROM gate_evals WHERE step = 1 AND n = %d AND verdict = 'inconclusive'"
		 " AND json_extract(detail, '$.step_n') = 0 AND detail LIKE '%%exposed in this step%%'", na);
	assert_true(wait_sql(&d, sql, 60000) >= 1);
	h_msleep(3000);   /* three hours of otacd time: more checks, past the hold */
	own_report(&d, cred, a, hb, 1);
	assert_true(wait_sql(&d, sql, 60000) >= 2);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM gate_evals WHERE step = 1 AND verdict = 'pass'"), 0);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM rollouts WHERE state = 'holding' AND step = 1"), 1);

	/* a restart keeps who exposed whom: still nothing of its own */
	h_kill(&d, SIGKILL);
	assert_int_equal(h_start(&d, args), 0);
	own_report(&d, cred, a, hb, 1);
	h_msleep(2000);
	own_report(&d, cred, a, hb, 1);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM gate_evals WHERE step = 1 AND verdict = 'pass'"), 0);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM rollouts WHERE state = 'holding' AND step = 1"), 1);

	/* its own devices boot: it passes, on them */
	own_report(&d, cred, b, boot, 3);
	assert_string_equal(h_wait_run(&d, run, 60000), "passed");
	snprintf(sql, sizeof(sql), "SELECT COUNT(*) FROM gate_evals WHERE step = 1 AND verdict = 'pass'"
		 " AND json_extract(detail, '$.step_n') = %d AND n = %d", nb, OWN_N);
	assert_int_equal(h_sql_int(&d, sql), 1);

	for (int i = 0; i < OWN_N; i++)
		free(cred[i]);
	free(cred);
	h_cleanup(&d);
	free(y);
}

static void fleet_device(struct fleet *f, const char *id, const char *version)
{
	json_t *body = json_pack("{ss ss ss ss ss si ss}", "device", id, "product", "fw", "hardware", "mps2-an385",
				 "bootloader", "1.2.0", "version", version, "security_counter", 0, "slot", "confirmed");
	json_t *ans = NULL;
	assert_int_equal(fleet_checkin(f, body, &ans), 0);
	json_decref(ans);
	json_decref(body);
}

/*
 * 6 devices still on the factory image 1.0.0, 4 on the previous good
 * release 1.1.0, 5 stuck on 1.2.0 (rolled back), 2 on the canary 1.3.0.
 * The baseline was the sum of 15; now it is the previous good release's 4
 * (or, with no good release known, the installed base's 6).
 */
static void baseline_is_the_previous_good_release(void **state)
{
	char *dir = h_tmpdir(), *db = xasprintf("%s/fleet.db", dir);
	struct fleet_config cfg = { .poll_ms = 6 * 3600 * 1000LL };
	struct fleet *f = NULL;
	struct fleet_agg base;
	char id[32];

	(void)state;
	cfg.db_path = db;
	assert_int_equal(fleet_open(&f, &cfg), 0);
	for (int i = 0; i < 17; i++) {
		snprintf(id, sizeof(id), "dev-%02d", i);
		fleet_device(f, id, i < 6 ? "1.0.0" : i < 10 ? "1.1.0" : i < 15 ? "1.2.0" : "1.3.0");
	}
	assert_int_equal(fleet_baseline(f, "fw", "1.3.0", "1.1.0", "*", &base), 0);
	assert_int_equal(base.devices, 4);
	assert_int_equal(fleet_baseline(f, "fw", "1.3.0", NULL, "*", &base), 0);
	assert_int_equal(base.devices, 6);
	/* the canary itself is never its own baseline */
	assert_int_equal(fleet_baseline(f, "fw", "1.0.0", NULL, "*", &base), 0);
	assert_int_equal(base.devices, 5);
	fleet_close(f);
	{
		struct buf out = BUF_INIT;
		h_sh(&out, "rm -rf '%s'", dir);
		buf_release(&out);
	}
	free(db);
	free(dir);
}

/* A release salt: 16 hex digits, as the first of a manifest digest. */
static void salt_of(int i, char out[17])
{
	uint64_t z = (uint64_t)(i + 1) * 0x9e3779b97f4a7c15ULL;
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	z ^= z >> 31;
	snprintf(out, 17, "%016llx", (unsigned long long)z);
}

/*
 * 100,000 devices named like fleetsim's (dev-000000 ...), 60 salts.  For
 * each salt: the 1 % cohort's size (slot < 100), and a chi-square of the
 * 100 one-percent buckets.  Chance gives cohort sizes with variance
 * n p (1 - p) = 990 (sd 31.5), and chi-square 99 on average (sd 14).  The
 * issue saw 843..1,129 over 30 salts: about twice chance's spread.  The
 * bounds below are far (> 4 sd of their own sampling error) from both.
 */
static void cohort_hash_spreads_like_chance(void **state)
{
	enum { DEVICES = 100000, SALTS = 60, BINS = 100 };
	static int bins[BINS];
	double sum = 0, sumsq = 0, chi_mean = 0, var_ratio;
	int lo = DEVICES, hi = 0;
	char salt[17], id[16];

	(void)state;
	for (int s = 0; s < SALTS; s++) {
		int cohort = 0;
		double chi = 0;
		memset(bins, 0, sizeof(bins));
		salt_of(s, salt);
		for (int i = 0; i < DEVICES; i++) {
			int slot;
			snprintf(id, sizeof(id), "dev-%06d", i);
			slot = fleet_cohort_slot(salt, id);
			assert_true(slot >= 0 && slot < 10000);
			bins[slot / 100]++;
			cohort += slot < 100;
		}
		for (int b = 0; b < BINS; b++)
			chi += (bins[b] - DEVICES / BINS) * (double)(bins[b] - DEVICES / BINS) / (DEVICES / BINS);
		chi_mean += chi / SALTS;
		sum += cohort;
		sumsq += (double)cohort * cohort;
		if (cohort < lo)
			lo = cohort;
		if (cohort > hi)
			hi = cohort;
	}
	{
		double mean = sum / SALTS, var = (sumsq - SALTS * mean * mean) / (SALTS - 1);
		var_ratio = var / (DEVICES * 0.01 * 0.99);
		print_message("1%% cohorts over %d salts: %d..%d, mean %.1f, variance %.2f x binomial;"
			      " mean chi-square of 100 buckets %.1f (chance: 99)\n", SALTS, lo, hi, mean, var_ratio, chi_mean);
		assert_true(fabs(mean - 1000) < 4 * 31.5 / sqrt(SALTS));
	}
	/* the sample variance ratio has sd sqrt(2 / 59) = 0.18 under chance */
	assert_true(var_ratio < 1.75);
	assert_true(var_ratio > 0.3);
	/* the mean of 60 chi-squares (99 dof) has sd 14 / sqrt(60) = 1.8 */
	assert_true(chi_mean < 99 + 8);
	assert_true(chi_mean > 99 - 8);
}

/*
 * The docs' example gate `boot_success_rate min 0.995` needs ~1,800
 * failure-free boots; on a 300-device fleet no step can prove it, and a
 * loose crash gate with min_devices 20 cannot pass at 1 % (3 devices).
 */
static void lint_warns_when_a_gate_cannot_be_proven_at_a_step(void **state)
{
	struct daemon d;
	const char *y = "name: fw\nstages:\n"
			"  - { name: build, steps: [ { run: 'true' } ] }\n"
			"  - { name: release, kind: release, needs: [build], version: \"1.1.0\", security_counter: 0, key: test }\n"
			"  - { name: canary, kind: rollout, needs: [release], steps: [ {percent: 1, hold: 6h}, {percent: 100, hold: 6h} ],"
			" gates: [boots, crash_free] }\n"
			"gates:\n  boots: { metric: boot_success_rate, min: 0.995 }\n"
			"  crash_free: { metric: crash_rate, max: 0.2, min_devices: 20 }\n";
	struct gate_spec g;
	json_t *spec;
	char err[256], *text = NULL;
	int64_t need;
	pid_t sim;

	(void)state;
	spec = json_pack("{ss sf}", "metric", "boot_success_rate", "min", 0.995);
	assert_int_equal(gate_spec_parse(spec, "boots", &g, err, sizeof(err)), 0);
	need = gate_min_sample(&g);
	print_message("boot_success_rate min 0.995 needs %lld failure-free boots\n", (long long)need);
	assert_true(need > 1000 && need < 3000);
	gate_spec_release(&g);
	json_decref(spec);

	daemon_start(&d);
	sim = sim_start(&d, 300);
	/* lint reads the fleet the update server knows */
	for (int waited = 0; waited < 60000; waited += 200) {
		struct buf body = BUF_INIT;
		assert_int_equal(h_raw(&d, "POST", "/api/v1/lint?file=p.yml", d.token, "application/yaml", y, strlen(y), &body),
				 200);
		free(text);
		text = buf_detach(&body);
		if (strstr(text, "of fw's 300 devices"))
			break;
		h_msleep(200);
	}
	sim_stop(sim);
	print_message("%s\n", text);
	assert_non_null(strstr(text, "stage 'canary' step 1 (1 %): gate 'boots'"));
	assert_non_null(strstr(text, "stage 'canary' step 2 (100 %): gate 'boots'"));
	assert_non_null(strstr(text, "stage 'canary' step 1 (1 %): gate 'crash_free' needs at least 25"));
	assert_null(strstr(text, "stage 'canary' step 2 (100 %): gate 'crash_free'"));
	free(text);
	h_cleanup(&d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(approval_rechecks_the_security_counter),
		cmocka_unit_test(a_step_needs_evidence_from_its_own_devices),
		cmocka_unit_test(a_step_passes_only_on_devices_it_exposed),
		cmocka_unit_test(a_halt_withdraws_outstanding_offers),
		cmocka_unit_test(baseline_is_the_previous_good_release),
		cmocka_unit_test(cohort_hash_spreads_like_chance),
		cmocka_unit_test(lint_warns_when_a_gate_cannot_be_proven_at_a_step),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
