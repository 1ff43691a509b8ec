/*
 * test_rollout.c - releases walking through a simulated fleet, for real:
 * otacd with its built-in update server, the real otacd-fleetsim devices
 * (checking in, downloading, verifying MCUboot signatures, reporting),
 * time-scaled so that days of holds take seconds.
 *
 * One fleet lives through the first four tests in order (a good release to
 * 100 %, a bad one halted at 1 % and sent back, a bad one across a
 * security-counter bump rolled forward with --reissue, compatibility over
 * all of it); the others get their own daemon.
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
#include <sys/wait.h>
#include <unistd.h>

#include "../common/httpc.h"
#include "harness.h"

#define VIEWER_TOKEN "viewer-token-for-the-rollout-tests"

struct world {
	struct daemon d;
	pid_t sim;
	char *stats;
};

static struct world fleet_world;

static void world_start(struct world *w, const char *scale, const char *extra_config)
{
	const char *const args[] = { "--local-agents", "2", "--time-scale", scale, NULL };
	struct buf out = BUF_INIT;
	char *cfg;

	h_init(&w->d, NULL);
	assert_int_equal(h_sh(&out, "cd %s && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out key.pem"
				    " && openssl pkey -in key.pem -pubout -out key.pub", w->d.dir), 0);
	/* the simulated fleets register 20,000 devices at once */
	cfg = xasprintf("keys:\n  test: { spec: %s/key.pem }\ndevice_register_burst: 100000\n"
			"tokens:\n  - { name: dashboard, role: viewer, token: \"" VIEWER_TOKEN "\" }\n%s",
			w->d.dir, extra_config ? extra_config : "");
	w->d.config = xasprintf("%s/config.yml", w->d.dir);
	assert_int_equal(ota_write_file_atomic(w->d.config, cfg, strlen(cfg), 0600), 0);
	assert_int_equal(h_start(&w->d, args), 0);
	assert_non_null(w->d.device_url);
	assert_non_null(w->d.fleet_key);
	w->stats = xasprintf("%s/stats.json", w->d.dir);
	free(cfg);
	buf_release(&out);
}

/* Start otacd-fleetsim; extra is a NULL-terminated list of more args. */
static void sim_start(struct world *w, int devices, const char *profile, const char *start_version,
		      const char *start_counter, const char *const *extra)
{
	char *bin = h_bin("otacd-fleetsim"), *prof = xasprintf("%s/profile.json", w->d.dir);
	char *key = xasprintf("%s/key.pub", w->d.dir), *log = xasprintf("%s/sim.log", w->d.dir);
	char n[16];
	struct strvec argv = STRVEC_INIT;
	pid_t parent;

	snprintf(n, sizeof(n), "%d", devices);
	assert_int_equal(ota_write_file_atomic(prof, profile, strlen(profile), 0600), 0);
	strvec_push(&argv, bin);
	{
		const char *const fixed[] = { "--url", w->d.device_url, "--devices", n, "--seed", "7", "--key", key,
					      "--fleet-key", w->d.fleet_key, "--product", "fw", "--profile", prof,
					      "--start-version", start_version, "--start-counter", start_counter,
					      "--duration", "5400", "--stats", w->stats, NULL };
		for (size_t i = 0; fixed[i]; i++)
			strvec_push(&argv, fixed[i]);
	}
	for (size_t i = 0; extra && extra[i]; i++)
		strvec_push(&argv, extra[i]);
	parent = getpid();
	w->sim = fork();
	if (w->sim == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
		h_die_with_parent(parent);
		dup2(fd, 1);
		dup2(fd, 2);
		execv(bin, argv.v);
		_exit(127);
	}
	strvec_clear(&argv);
	free(bin);
	free(prof);
	free(key);
	free(log);
}

/* Stop the simulator; its final counters. */
static json_t *sim_stop(struct world *w)
{
	int status;
	if (w->sim > 0) {
		kill(w->sim, SIGTERM);
		waitpid(w->sim, &status, 0);
		w->sim = 0;
	}
	return json_load_file(w->stats, 0, NULL);
}

static void world_stop(struct world *w)
{
	json_decref(sim_stop(w));
	h_cleanup(&w->d);
	free(w->stats);
	memset(w, 0, sizeof(*w));
}

/* Two boards "built" (contents differ per version), then the release. */
static char *pipeline(const char *version, int counter, const char *stages, const char *gates)
{
	return xasprintf("name: fw\nstages:\n"
			 "  - name: build\n    matrix: { board: [mps2-an385, mps2-an386] }\n"
			 "    steps: [ { run: \"printf 'fw %s %%s' '${{ matrix.board }}' > app.bin && head -c 3000 /dev/zero >> app.bin\" } ]\n"
			 "    artifacts: [ { path: app.bin, name: 'app-${{ matrix.board }}.bin', type: application,"
			 " hardware: '${{ matrix.board }}' } ]\n"
			 "  - { name: release, kind: release, needs: [build], version: \"%s\", security_counter: %d, key: test,"
			 " min_bootloader: \"1.2.0\" }\n%sgates:\n%s",
			 version, version, counter, stages, gates);
}

static const char *const GOOD_GATES =
	"  crash_free: { metric: crash_rate, max: 0.2, min_devices: 20 }\n"
	"  boots: { metric: boot_success_rate, min: 0.8, min_devices: 10 }\n"
	"  regress: { metric: crashes_per_device_hour, baseline: previous, max_increase: \"100%\" }\n";

static int64_t release_of(struct daemon *d, int64_t run, int timeout_ms)
{
	char *sql = xasprintf("SELECT COALESCE((SELECT id FROM releases WHERE run_id = %lld), 0)", (long long)run);
	int64_t id = 0;
	for (int waited = 0; waited < timeout_ms && !(id = h_sql_int(d, sql)); waited += 100)
		h_msleep(100);
	free(sql);
	return id;
}

static json_t *rollout_status(struct daemon *d, int64_t release)
{
	char *path = xasprintf("/api/v1/releases/%lld/rollout", (long long)release);
	json_t *out = NULL;
	assert_int_equal(h_get(d, path, &out), 200);
	free(path);
	return out;
}

/*
 * Wait for run `run` to end as `want`; on any other ending (or none) print
 * the release's rollout, whose gates and reason say why, before failing.
 */
static void wait_run_verdict(struct daemon *d, int64_t run, int64_t release, const char *want, int timeout_ms)
{
	const char *got = h_wait_run(d, run, timeout_ms);

	if (strcmp(got, want)) {
		/* stderr, whole: cmocka's print_error cuts a long text */
		json_t *st = rollout_status(d, release);
		char *text = json_dumps(st, JSON_INDENT(1));
		fprintf(stderr, "run %lld ended %s, not %s; release %lld:\n%s\n", (long long)run, got, want,
			(long long)release, text);
		free(text);
		json_decref(st);
	}
	assert_string_equal(got, want);
}

/* Wait until the release's state is `state`; fails the test on timeout. */
static void wait_release_state(struct daemon *d, int64_t release, const char *state, int timeout_ms)
{
	char *sql = xasprintf("SELECT state = '%s' FROM releases WHERE id = %lld", state, (long long)release);
	int waited = 0;
	while (!h_sql_int(d, sql)) {
		if (waited >= timeout_ms) {
			json_t *st = rollout_status(d, release);
			char *text = json_dumps(st, JSON_INDENT(1));
			print_error("release %lld never became %s:\n%s\n", (long long)release, state, text);
			free(text);
			json_decref(st);
			fail();
		}
		h_msleep(200);
		waited += 200;
	}
	free(sql);
}

static int64_t devices_on(struct daemon *d, int64_t release)
{
	json_t *st = rollout_status(d, release);
	int64_t n = json_integer_value(json_object_get(json_object_get(st, "fleet"), "devices"));
	json_decref(st);
	return n;
}

static int audit_has(struct daemon *d, const char *action, const char *needle)
{
	json_t *a = NULL, *x;
	size_t i;
	int found = 0;
	assert_int_equal(h_get(d, "/api/v1/audit", &a), 200);
	json_array_foreach(a, i, x)
		if (!strcmp(json_string_value(json_object_get(x, "action")), action) &&
		    (!needle || strstr(json_string_value(json_object_get(x, "reason")), needle)))
			found = 1;
	json_decref(a);
	return found;
}

/* ---- one fleet, several releases ----------------------------------------- */

#define FLEET 20000

/*
 * Under OTACD_SLOW=1 (make asan) otacd and the 20,000 simulated devices are
 * sanitizer builds, several times slower: a gate could then see too few
 * reports in a hold and its extension, pause instead of deciding, and the
 * run would never end.  So the fleet's otacd time runs at half the speed
 * (each otacd hour of a hold has twice the real time for the devices'
 * reports) and the real-time waits of these tests are twice as long.  What
 * is checked is the same.
 */
static int slow(void)
{
	const char *s = getenv("OTACD_SLOW");
	return s && !strcmp(s, "1");
}

static const char *fleet_scale(void)
{
	return slow() ? "1800" : "3600";
}

static int T(int ms)
{
	return slow() ? 2 * ms : ms;
}

/*
 * A canary step's gates may extend the hold until they have evidence.
 * Under sanitizers on a loaded machine the simulated fleet reports more
 * slowly than otacd time runs, so slow runs allow a longer extension before
 * "inconclusive" pauses the rollout (a pause would leave the run running
 * and the test waiting for a verdict that never comes).
 */
static const char *max_extension(void)
{
	/* within the runs' T(480000) wait.  Plain: 360h, 360 s of it at 3600
	 * (72h, 72 s, once ran out in CI on a quiet machine: the 1 % step of
	 * 1.3.0 paused, where it fails in ~10 s as a rule).  Sanitizers: 240h,
	 * 480 s at 1800, as in every CI run that passed (with 400h, 1.2.0's
	 * 1 % step once passed under ASan and the 5 % step failed it: not
	 * understood yet, the release's gates were not printed) */
	return slow() ? "240h" : "360h";
}
static const char *const PROFILE =
	"{ \"versions\": { \"1.2.0\": { \"crash_rate\": 0.05 }, \"1.3.0\": { \"crash_rate\": 0.05 } },"
	"  \"bootloader\": { \"1.2.0\": 0.9, \"1.0.0\": 0.1 }, \"flaky\": 0.05, \"silent\": 0.01 }";

static void good_release_walks_staging_and_canary_steps_to_the_whole_fleet(void **state)
{
	struct world *w = &fleet_world;
	char *y = pipeline("1.1.0", 1,
			   "  - { name: staging, kind: soak, needs: [release], cohort: { group: staging }, duration: 6h,"
			   " gates: [boots] }\n"
			   "  - name: canary\n    kind: rollout\n    needs: [staging]\n"
			   "    steps: [ {percent: 1, hold: 6h}, {percent: 5, hold: 6h}, {percent: 25, hold: 6h}, {percent: 100, hold: 6h} ]\n"
			   "    gates: [crash_free, boots]\n",
			   GOOD_GATES);
	int64_t run, rel, on;
	json_t *st, *ro;
	size_t i;

	(void)state;
	world_start(w, fleet_scale(), NULL);
	sim_start(w, FLEET, PROFILE, "1.0.0", "0", NULL);
	run = h_trigger(&w->d, y);
	rel = release_of(&w->d, run, T(30000));
	assert_true(rel > 0);
	assert_string_equal(h_wait_run(&w->d, run, T(240000)), "passed");
	wait_release_state(&w->d, rel, "released", 1000);
	/* every step passed with its gates */
	st = rollout_status(&w->d, rel);
	json_array_foreach(json_object_get(st, "rollouts"), i, ro) {
		const char *g;
		json_t *ev;
		assert_string_equal(json_string_value(json_object_get(ro, "state")), "passed");
		json_object_foreach(json_object_get(ro, "gates"), g, ev)
			assert_string_equal(json_string_value(json_object_get(ev, "verdict")), "pass");
	}
	json_decref(st);
	assert_true(audit_has(&w->d, "stage_passed", "step 4/4"));
	/* devices that fit (90 %: the rest have bootloader 1.0.0) update as
	 * they poll: >= 99 % of them within a few more poll intervals */
	for (int waited = 0; (on = devices_on(&w->d, rel)) < FLEET * 0.9 * 0.99 && waited < T(60000); waited += 500)
		h_msleep(500);
	assert_true(on >= FLEET * 0.9 * 0.99);
	assert_true(on <= FLEET * 0.9 * 1.05);
	free(y);
}

static void bad_release_is_halted_at_one_percent_and_devices_are_sent_back(void **state)
{
	struct world *w = &fleet_world;
	char *canary = xasprintf("  - name: canary\n    kind: rollout\n    needs: [release]\n"
				 "    steps: [ {percent: 1, hold: 12h}, {percent: 5, hold: 6h}, {percent: 100, hold: 6h} ]\n"
				 "    max_extension: %s\n    gates: [crash_free, boots, regress]\n", max_extension());
	char *y = pipeline("1.2.0", 1, canary, GOOD_GATES);
	int64_t run, rel, offered;
	json_t *st, *ro;

	(void)state;
	if (!w->d.pid)
		skip();
	run = h_trigger(&w->d, y);
	rel = release_of(&w->d, run, T(30000));
	/* the 1 % step's crashes take a while to prove under ASan on a loaded
	 * machine (once 8 min was not enough): the wait is generous, the
	 * verdict is not */
	wait_run_verdict(&w->d, run, rel, "failed", T(480000));
	st = rollout_status(&w->d, rel);
	ro = json_array_get(json_object_get(st, "rollouts"), 0);
	assert_string_equal(json_string_value(json_object_get(ro, "state")), "failed");
	assert_int_equal(json_integer_value(json_object_get(ro, "step")), 0);      /* the 1 % step */
	assert_int_equal(json_integer_value(json_object_get(ro, "percent_bp")), 100);
	assert_string_equal(json_string_value(json_object_get(st, "state")), "rolled_back");
	assert_true(json_integer_value(json_object_get(st, "rollback_to")) > 0);
	offered = json_integer_value(json_object_get(json_object_get(st, "fleet"), "offered"));
	assert_true(offered > 0);
	assert_true(offered < FLEET * 2 / 100);  /* fewer than 2 % ever got it */
	assert_non_null(strstr(json_string_value(json_object_get(ro, "reason")), "gate regress"));
	json_decref(st);
	assert_true(audit_has(&w->d, "auto_rollback", "crashes_per_device_hour"));
	/* the gate history shows why */
	{
		char *path = xasprintf("/api/v1/releases/%lld/gates", (long long)rel);
		json_t *g = NULL, *x;
		size_t i;
		int fails = 0;
		assert_int_equal(h_get(&w->d, path, &g), 200);
		json_array_foreach(g, i, x)
			fails += !strcmp(json_string_value(json_object_get(x, "verdict")), "fail");
		assert_true(fails >= 1);
		json_decref(g);
		free(path);
	}
	/* devices that confirmed the bad release go back to 1.1.0 (a device
	 * whose test boot of 1.1.0 fails stays where it is: allow a few) */
	for (int waited = 0; devices_on(&w->d, rel) > 1 + offered / 50 && waited < T(60000); waited += 500)
		h_msleep(500);
	assert_true(devices_on(&w->d, rel) <= 1 + offered / 50);
	free(y);
	free(canary);
}

static void rollback_across_a_counter_bump_needs_reissue_and_rolls_forward(void **state)
{
	struct world *w = &fleet_world;
	char *canary = xasprintf("  - name: canary\n    kind: rollout\n    needs: [release]\n"
				 "    steps: [ {percent: 1, hold: 12h}, {percent: 100, hold: 6h} ]\n"
				 "    max_extension: %s\n    gates: [crash_free, boots, regress]\n", max_extension());
	char *y = pipeline("1.3.0", 2, canary, GOOD_GATES);
	json_t *ans = NULL, *req, *st;
	int64_t run, rel, reissued;
	char *path;

	(void)state;
	if (!w->d.pid)
		skip();
	run = h_trigger(&w->d, y);
	rel = release_of(&w->d, run, T(30000));
	/* as long as the 1 % step of the test before may take (see there) */
	wait_run_verdict(&w->d, run, rel, "failed", T(480000));
	/* 1.1.0 has counter 1: devices holding 2 cannot go back to it */
	wait_release_state(&w->d, rel, "halted", 1000);
	assert_true(audit_has(&w->d, "auto_rollback", "--reissue"));
	path = xasprintf("/api/v1/releases/%lld/rollback", (long long)rel);
	req = json_pack("{ss}", "reason", "crashes in canary");
	assert_int_equal(h_post(&w->d, path, req, &ans), 409);
	assert_non_null(strstr(json_string_value(json_object_get(ans, "error")), "--reissue"));
	json_decref(ans);
	json_object_set_new(req, "reissue", json_true());
	assert_int_equal(h_post(&w->d, path, req, &ans), 200);
	run = json_integer_value(json_object_get(ans, "run"));
	assert_true(run > 0);
	json_decref(ans);
	assert_string_equal(h_wait_run(&w->d, run, T(60000)), "passed");
	reissued = release_of(&w->d, run, T(1000));
	st = rollout_status(&w->d, rel);
	assert_int_equal(json_integer_value(json_object_get(st, "rollback_to")), reissued);
	json_decref(st);
	assert_int_equal(h_sql_int(&w->d, "SELECT security_counter FROM releases ORDER BY id DESC LIMIT 1"), 2);
	assert_true(h_sql_int(&w->d, "SELECT reissue_of > 0 FROM releases ORDER BY id DESC LIMIT 1"));
	{
		/* the reissue verifies offline, and says what it re-signed */
		struct buf out = BUF_INIT;
		char *ctl = h_bin("otactl");
		int rc = h_sh(&out, "OTACD_URL=%s OTACD_TOKEN=%s %s verify %lld", w->d.url, w->d.token, ctl,
			      (long long)reissued);
		if (rc != 0)
			print_error("%s\n", buf_cstr(&out));
		assert_int_equal(rc, 0);
		buf_clear(&out);
		h_sh(&out, "curl -s -H 'Authorization: Bearer %s' %s/api/v1/releases/%lld", w->d.token, w->d.url,
		     (long long)reissued);
		assert_non_null(strstr(buf_cstr(&out), "reissue_of"));
		buf_release(&out);
		free(ctl);
	}
	/* devices on 1.3.0 roll forward to the re-signed 1.1.0 build */
	for (int waited = 0; devices_on(&w->d, rel) > 1 + FLEET / 5000 && waited < T(60000); waited += 500)
		h_msleep(500);
	assert_true(devices_on(&w->d, rel) <= 1 + FLEET / 5000);
	assert_true(devices_on(&w->d, reissued) > 0);
	json_decref(req);
	free(path);
	free(y);
	free(canary);
}

static void no_device_is_offered_an_image_it_cannot_take(void **state)
{
	struct world *w = &fleet_world;
	json_t *stats;

	(void)state;
	if (!w->d.pid)
		skip();
	stats = sim_stop(w);
	assert_non_null(stats);
	/* the simulator checks every offer against its hardware, bootloader
	 * and held counter, and verifies every image's signature */
	assert_int_equal(json_integer_value(json_object_get(stats, "incompatible_offers")), 0);
	assert_int_equal(json_integer_value(json_object_get(stats, "refused_lower_counter")), 0);
	assert_int_equal(json_integer_value(json_object_get(stats, "refused_bad_signature")), 0);
	assert_true(json_integer_value(json_object_get(stats, "confirmed")) > FLEET / 2);
	json_decref(stats);
	world_stop(w);
}

/* ---- own daemons ----------------------------------------------------------- */

static void release_nobody_reports_on_stays_inconclusive_then_pauses(void **state)
{
	struct world w = { 0 };
	char *y = pipeline("1.1.0", 1,
			   "  - name: canary\n    kind: rollout\n    needs: [release]\n"
			   "    steps: [ {percent: 10, hold: 2h}, {percent: 100, hold: 2h} ]\n    max_extension: 2h\n"
			   "    gates: [crash_free]\n",
			   "  crash_free: { metric: crash_rate, max: 0.01, min_devices: 200 }\n");
	int64_t run, rel;
	json_t *st, *ro;

	(void)state;
	world_start(&w, "3600", NULL);
	sim_start(&w, 200, "{}", "1.0.0", "0", NULL);
	run = h_trigger(&w.d, y);
	rel = release_of(&w.d, run, 30000);
	for (int waited = 0; waited < 60000; waited += 200) {
		if (h_sql_int(&w.d, "SELECT COUNT(*) FROM rollouts WHERE state = 'paused'"))
			break;
		h_msleep(200);
	}
	st = rollout_status(&w.d, rel);
	ro = json_array_get(json_object_get(st, "rollouts"), 0);
	assert_string_equal(json_string_value(json_object_get(ro, "state")), "paused");
	assert_int_equal(json_integer_value(json_object_get(ro, "step")), 0);   /* never promoted */
	assert_non_null(strstr(json_string_value(json_object_get(ro, "reason")), "inconclusive"));
	assert_string_equal(json_string_value(json_object_get(st, "state")), "rolling");
	json_decref(st);
	assert_true(audit_has(&w.d, "pause", "inconclusive"));
	{
		json_t *r = h_run(&w.d, run);
		assert_string_equal(json_string_value(json_object_get(r, "state")), "running");
		json_decref(r);
	}
	/* a viewer may look but not act, and nothing changes */
	{
		char *path = xasprintf("/api/v1/releases/%lld/promote", (long long)rel);
		struct buf out = BUF_INIT;
		h_sh(&out, "curl -s -o /dev/null -w '%%{http_code}' -X POST -H 'Authorization: Bearer " VIEWER_TOKEN "'"
			   " -d '{\"reason\":\"x\",\"skip_step\":true}' %s%s", w.d.url, path);
		assert_string_equal(buf_cstr(&out), "403");
		buf_release(&out);
		assert_int_equal(h_sql_int(&w.d, "SELECT step FROM rollouts"), 0);
		free(path);
	}
	/* an operator's promote without --skip-step is refused; with it, advances */
	{
		char *path = xasprintf("/api/v1/releases/%lld/promote", (long long)rel);
		json_t *req = json_pack("{ss}", "reason", "checked the devices by hand"), *ans = NULL;
		assert_int_equal(h_post(&w.d, path, req, &ans), 200);   /* paused: promote resumes at the next step */
		json_decref(ans);
		assert_int_equal(h_sql_int(&w.d, "SELECT step FROM rollouts"), 1);
		assert_true(audit_has(&w.d, "promote", "checked the devices by hand"));
		json_decref(req);
		free(path);
	}
	world_stop(&w);
	free(y);
}

static void failing_provider_is_retried_then_pauses_the_rollout(void **state)
{
	struct world w = { 0 };
	char *dead = h_free_listen();   /* nothing listens there */
	char *providers = xasprintf("providers:\n  uptime_src: { kind: http, url: \"http://%s/metrics.json\" }\n", dead);
	char *gates = xstrdup("  uptime: { provider: uptime_src, json_path: value, min: 1, error_limit: 3 }\n");
	char *y = pipeline("1.1.0", 1,
			   "  - name: canary\n    kind: rollout\n    needs: [release]\n"
			   "    steps: [ {percent: 10, hold: 48h} ]\n    check_interval: 30m\n    gates: [uptime]\n", gates);
	int64_t run;
	json_t *st, *ro;

	(void)state;
	world_start(&w, "3600", providers);
	run = h_trigger(&w.d, y);
	for (int waited = 0; waited < 60000; waited += 200) {
		if (h_sql_int(&w.d, "SELECT COUNT(*) FROM rollouts WHERE state = 'paused'"))
			break;
		h_msleep(200);
	}
	st = rollout_status(&w.d, release_of(&w.d, run, 1000));
	ro = json_array_get(json_object_get(st, "rollouts"), 0);
	/* paused, not failed: a provider that errors never rolls a release back */
	assert_string_equal(json_string_value(json_object_get(ro, "state")), "paused");
	assert_non_null(strstr(json_string_value(json_object_get(ro, "reason")), "3 consecutive provider errors"));
	assert_int_equal(json_integer_value(json_object_get(ro, "step")), 0);
	assert_string_equal(json_string_value(json_object_get(st, "state")), "rolling");
	json_decref(st);
	world_stop(&w);
	free(dead);
	free(providers);
	free(gates);
	free(y);
}

/* The offers a set of probe devices get right now (a bitmap as a string). */
static char *probe_offers(struct daemon *d, int n)
{
	struct buf out = BUF_INIT;
	char *url = xasprintf("%s/device/v1/checkin", d->device_url);
	char **creds = h_register_devices(d, "probe", n);   /* again: fresh credentials */
	for (int i = 0; i < n; i++) {
		char body[512];
		json_t *ans = NULL;
		long status = 0;
		json_t *req;
		snprintf(body, sizeof(body), "probe-%04d", i);
		req = json_pack("{ss ss ss ss ss si ss}", "device", body, "product", "fw", "hardware", "mps2-an385",
				"bootloader", "1.2.0", "version", "1.0.0", "security_counter", 0, "slot", "confirmed");
		assert_int_equal(httpc_json(&ans, &status, "POST", url, creds[i], req, 10000), 0);
		free(creds[i]);
		assert_int_equal(status, 200);
		buf_putc(&out, json_is_object(json_object_get(ans, "offer")) ? '1' : '0');
		json_decref(ans);
		json_decref(req);
	}
	free(creds);
	free(url);
	return buf_detach(&out);
}

static void daemon_killed_mid_hold_resumes_with_the_same_step_and_devices(void **state)
{
	struct world w = { 0 };
	char *y = pipeline("1.1.0", 1,
			   "  - name: canary\n    kind: rollout\n    needs: [release]\n"
			   "    steps: [ {percent: 10, hold: 30m}, {percent: 30, hold: 48h}, {percent: 100, hold: 30m} ]\n"
			   "    gates: [boots]\n",
			   "  boots: { metric: boot_success_rate, min: 0.5, min_devices: 5 }\n");
	const char *const args[] = { "--local-agents", "2", "--time-scale", "3600", NULL };
	int64_t run, rel, hold_before, hold_after;
	char *before, *after;
	int ones = 0;

	(void)state;
	world_start(&w, "3600", NULL);
	sim_start(&w, 300, "{}", "1.0.0", "0", NULL);
	run = h_trigger(&w.d, y);
	rel = release_of(&w.d, run, 30000);
	for (int waited = 0; waited < 60000 && !h_sql_int(&w.d, "SELECT COUNT(*) FROM rollouts WHERE step = 1 AND state = 'holding'");
	     waited += 100)
		h_msleep(100);
	assert_int_equal(h_sql_int(&w.d, "SELECT percent_bp FROM rollouts"), 3000);
	hold_before = h_sql_int(&w.d, "SELECT hold_until FROM rollouts");
	before = probe_offers(&w.d, 400);
	for (const char *p = before; *p; p++)
		ones += *p == '1';
	assert_true(ones > 400 * 20 / 100 && ones < 400 * 40 / 100);   /* ~30 % */

	h_kill(&w.d, SIGKILL);
	assert_int_equal(h_start(&w.d, args), 0);
	hold_after = h_sql_int(&w.d, "SELECT hold_until FROM rollouts");
	assert_int_equal(hold_after, hold_before);               /* the deadline is in the database */
	assert_int_equal(h_sql_int(&w.d, "SELECT step FROM rollouts"), 1);
	assert_int_equal(h_sql_int(&w.d, "SELECT percent_bp FROM rollouts"), 3000);
	for (int waited = 0; waited < 5000; waited += 100) {  /* the controller re-applies the exposure */
		after = probe_offers(&w.d, 400);
		if (!strcmp(after, before))
			break;
		free(after);
		after = NULL;
		h_msleep(100);
	}
	assert_non_null(after);
	assert_string_equal(after, before);                      /* the same devices, not a new 30 % */
	/* Each step now needs boots of its own (docs/gates.md).  otacd-fleetsim
	 * does not recover from the daemon's SIGKILL (its counters stay frozen
	 * afterwards; issue 19 part 1), which the old running-total gate hid:
	 * a fresh simulator reports for the rest of the walk. */
	json_decref(sim_stop(&w));
	sim_start(&w, 300, "{}", "1.0.0", "0", NULL);
	/* ... and it carries on to the end; each step entered once */
	assert_string_equal(h_wait_run(&w.d, run, 120000), "passed");
	assert_int_equal(h_sql_int(&w.d, "SELECT COUNT(*) FROM audit WHERE action = 'promote'"), 2);
	(void)rel;
	free(before);
	free(after);
	world_stop(&w);
	free(y);
}

static void prometheus_gate_decides_from_a_real_prometheus_scraping_the_fleet(void **state)
{
	struct world w = { 0 };
	struct buf out = BUF_INIT;
	char *prom_dir, *prom_listen = h_free_listen(), *sim_listen = h_free_listen(), *cfg, *y, *extra;
	const char *sim_args[] = { "--metrics-listen", sim_listen, NULL };
	pid_t prom;
	int64_t run, rel;

	(void)state;
	if (access("/usr/bin/prometheus", X_OK) != 0)
		skip();
	extra = xasprintf("prometheus_url: http://%s\n", prom_listen);
	world_start(&w, "3600", extra);
	prom_dir = xasprintf("%s/prom", w.d.dir);
	cfg = xasprintf("global: { scrape_interval: 1s }\nscrape_configs:\n  - job_name: fleetsim\n"
			"    static_configs: [ { targets: ['%s'] } ]\n", sim_listen);
	h_sh(&out, "mkdir -p %s", prom_dir);
	{
		char *f = xasprintf("%s/prometheus.yml", prom_dir);
		ota_write_file_atomic(f, cfg, strlen(cfg), 0600);
		prom = fork();
		if (prom == 0) {
			char *data = xasprintf("--storage.tsdb.path=%s/data", prom_dir);
			char *cf = xasprintf("--config.file=%s", f);
			char *listen = xasprintf("--web.listen-address=%s", prom_listen);
			int fd = open("/dev/null", O_WRONLY);
			h_child_dies_with_test();
			dup2(fd, 1);
			dup2(fd, 2);
			execl("/usr/bin/prometheus", "prometheus", cf, data, listen, (char *)NULL);
			_exit(127);
		}
		free(f);
	}
	/* 1.2.0 drains batteries twice as fast */
	sim_start(&w, 400, "{ \"versions\": { \"1.2.0\": { \"battery_mah_per_day\": 60 } } }", "1.0.0", "0", sim_args);
	y = pipeline("1.2.0", 1,
		     "  - name: canary\n    kind: rollout\n    needs: [release]\n"
		     "    steps: [ {percent: 25, hold: 24h}, {percent: 100, hold: 6h} ]\n    gates: [battery]\n",
		     "  battery: { provider: prometheus, query: 'avg(fleetsim_battery_mah_per_day{release=\"$release\"})',"
		     " max: 40, failure_limit: 2 }\n");
	run = h_trigger(&w.d, y);
	rel = release_of(&w.d, run, 30000);
	assert_string_equal(h_wait_run(&w.d, run, 180000), "failed");
	{
		json_t *st = rollout_status(&w.d, rel);
		json_t *ro = json_array_get(json_object_get(st, "rollouts"), 0);
		assert_non_null(strstr(json_string_value(json_object_get(ro, "reason")), "gate battery"));
		assert_int_equal(json_integer_value(json_object_get(ro, "step")), 0);
		json_decref(st);
	}
	kill(prom, SIGTERM);
	waitpid(prom, NULL, 0);
	world_stop(&w);
	buf_release(&out);
	free(prom_dir);
	free(prom_listen);
	free(sim_listen);
	free(cfg);
	free(extra);
	free(y);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(good_release_walks_staging_and_canary_steps_to_the_whole_fleet),
		cmocka_unit_test(bad_release_is_halted_at_one_percent_and_devices_are_sent_back),
		cmocka_unit_test(rollback_across_a_counter_bump_needs_reissue_and_rolls_forward),
		cmocka_unit_test(no_device_is_offered_an_image_it_cannot_take),
		cmocka_unit_test(release_nobody_reports_on_stays_inconclusive_then_pauses),
		cmocka_unit_test(failing_provider_is_retried_then_pauses_the_rollout),
		cmocka_unit_test(daemon_killed_mid_hold_resumes_with_the_same_step_and_devices),
		cmocka_unit_test(prometheus_gate_decides_from_a_real_prometheus_scraping_the_fleet),
	};
	if (getenv("TEST_ROLLOUT_FILTER")) /* one test while working on it */
		cmocka_set_test_filter(getenv("TEST_ROLLOUT_FILTER"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
