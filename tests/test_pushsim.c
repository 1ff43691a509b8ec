/*
 * test_pushsim.c - push hints measured with otacd-fleetsim (issue 15,
 * "Push", docs/delivery.md): a real mosquitto (password file and ACL, a
 * free loopback port), the real otacd with `push:` configured, and
 * otacd-fleetsim --mqtt-url (one subscription for the fleet, fleetsim/push.c)
 * with a 6 h poll at time scale SCALE and one rollout step of 100 %.
 *
 * With the broker the step's cohort checks in within the hint window the
 * config implies (max(push.window, N / push.capacity)), and the check-in
 * rate otacd counts in the first minute stays under push.capacity plus the
 * polling load.  Without it (nothing listens on the broker's port) hints
 * never come and the cohort is reached by polling only, over the poll
 * interval.
 *
 * mosquitto: $OTACD_MOSQUITTO or /usr/sbin/mosquitto; the tests skip,
 * saying so, without it.  X_ONLY=name runs one test.
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
#include <jansson.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "devharness.h"
#include "harness.h"

#define HW "mps2-an385"
#define NDEV 400
#define SCALE 1440                 /* otacd ms per real ms: the 6 h poll is 15 s */
#define POLL_S (6 * 3600)
#define CAPACITY 50                /* push.capacity, check-ins per second: a window of 8 s */
#define WINDOW_S 1                 /* push.window */
#define OTACD_PW "otacd-broker-password-1"
#define FLEETSIM_PW "fleetsim-broker-password-1"

/* the hint window the config implies for a batch of NDEV: max(window, N / capacity) */
#define HINT_WINDOW_MS (NDEV * 1000 / CAPACITY > WINDOW_S * 1000 ? NDEV * 1000 / CAPACITY : WINDOW_S * 1000)

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- mosquitto: otacd writes PREFIX/#, the simulator's one user reads it ---- */

struct broker {
	pid_t pid;
	int port;
	char *dir;
};

static void broker_start(struct broker *b, const char *bin)
{
	struct buf conf = BUF_INIT, out = BUF_INIT;
	const char *acl = "user otacd\ntopic write otacd/#\n\nuser fleetsim\ntopic read otacd/#\n";
	char *path;

	b->dir = h_tmpdir();
	b->port = dh_free_port();
	path = xasprintf("%s/acl", b->dir);
	assert_int_equal(ota_write_file_atomic(path, acl, strlen(acl), 0600), 0);
	free(path);
	assert_int_equal(h_sh(&out, "mosquitto_passwd -c -b %s/passwd otacd %s && mosquitto_passwd -b %s/passwd"
				    " fleetsim %s", b->dir, OTACD_PW, b->dir, FLEETSIM_PW), 0);
	buf_printf(&conf, "allow_anonymous false\npassword_file %s/passwd\nacl_file %s/acl\n", b->dir, b->dir);
	b->pid = dh_mosquitto_spawn(bin, b->dir, b->port, buf_cstr(&conf));
	buf_release(&conf);
	buf_release(&out);
}

static void broker_stop(struct broker *b)
{
	struct buf out = BUF_INIT;
	dh_stop(b->pid);
	h_sh(&out, "rm -rf %s", b->dir);
	free(b->dir);
	buf_release(&out);
}

/* ---- otacd and the simulator ------------------------------------------------ */

static const char *pipeline_yaml =
	"name: fw\nstages:\n"
	"  - name: build\n"
	"    steps: [ { run: \"printf 'fw 1.1.0' > app.bin && head -c 4000 /dev/urandom >> app.bin\" } ]\n"
	"    artifacts: [ { path: app.bin, name: app.bin, type: application, hardware: " HW " } ]\n"
	"  - { name: release, kind: release, needs: [build], version: \"1.1.0\", security_counter: 1, key: test }\n"
	"  - name: canary\n    kind: rollout\n    needs: [release]\n"
	"    steps: [ {percent: 100, hold: 1000h} ]\n    gates: [boots]\n"
	"gates:\n  boots: { metric: boot_success_rate, min: 0.5, min_devices: 100000 }\n";

/* A counter of the device listener's /metrics (-1: absent). */
static int64_t metric(struct daemon *d, const char *name)
{
	char *m = h_device_metrics(d, NULL), *needle = xasprintf("\n%s ", name), *p;
	int64_t v = -1;
	if (m && (p = strstr(m, needle)))
		v = strtoll(p + strlen(needle), NULL, 10);
	free(needle);
	free(m);
	return v;
}

static int64_t devices_on(struct daemon *d, const char *version)
{
	char *m = h_device_metrics(d, NULL), *needle, *p;
	int64_t v = 0;
	needle = xasprintf("otacd_fleet_devices{product=\"fw\",version=\"%s\",cohort=\"*\"} ", version);
	if (m && (p = strstr(m, needle)))
		v = strtoll(p + strlen(needle), NULL, 10);
	free(needle);
	free(m);
	return v;
}

/* The rollout's step_started_at (otacd ms), 0 while no step is open. */
static int64_t step_started_at(struct daemon *d, int64_t release)
{
	char *path = xasprintf("/api/v1/releases/%lld/rollout", (long long)release);
	json_t *ans = NULL, *list;
	int64_t at = 0;
	if (h_get(d, path, &ans) == 200) {
		list = json_is_array(ans) ? ans : json_object_get(ans, "rollouts");
		at = json_integer_value(json_object_get(json_array_get(list, 0), "step_started_at"));
	}
	json_decref(ans);
	free(path);
	return at;
}

struct measure {
	json_t *stats;            /* the simulator's stats file */
	int64_t opened_ms;        /* the step's opening, otacd ms (rollout API) */
	int64_t first_minute;     /* check-ins otacd counted in the first real minute after it */
	int64_t in_window;        /* ... and within the hint window after it */
	double window_real_s;     /* the real length that window count covers */
};

/* One run: otacd (push to port), the simulator (subscribing to port),
 * warm-up until every device checked in once, then the release and its
 * 100 % step, watched for run_s real seconds after the step opens. */
static void run_step(struct measure *m, const char *engine, int port, int run_s)
{
	struct daemon d = { 0 };
	char *pwfile, *simpw, *cfg, *fs = h_bin("otacd-fleetsim"), *prof, *stats, *log, *url, *keyarg, *dur;
	const char *p = "{\"hardware\": {\"" HW "\": 1.0}, \"silent\": 0, \"flaky\": 0,"
			" \"default\": {\"crash_rate\": 0, \"boot_fail_rate\": 0, \"revert_rate\": 0}}";
	const char *const args[] = { "--local-agents", "1", NULL };
	char devices[16];
	int64_t release = 0, c0 = -1;
	double t_open = 0, t0;
	pid_t sim;
	int status = 0;

	h_init(&d, NULL);
	pwfile = xasprintf("%s/broker.pw", d.dir);
	simpw = xasprintf("%s/fleetsim.pw", d.dir);
	assert_int_equal(ota_write_file_atomic(pwfile, OTACD_PW "\n", strlen(OTACD_PW) + 1, 0600), 0);
	assert_int_equal(ota_write_file_atomic(simpw, FLEETSIM_PW "\n", strlen(FLEETSIM_PW) + 1, 0600), 0);
	cfg = xasprintf("time_scale: %d\npoll_interval: 6h\ndevice_register_burst: %d\ndevice_register_rate: %d\n"
			"push: { url: \"mqtt://127.0.0.1:%d\", username: otacd, password_file: %s, window: %d,"
			" capacity: %d, per_device_max: 10 }\n", SCALE, NDEV, NDEV, port, pwfile, WINDOW_S, CAPACITY);
	dh_start_signing(&d, args, "%s", cfg);
	prof = xasprintf("%s/profile.json", d.dir);
	stats = xasprintf("%s/stats.json", d.dir);
	log = xasprintf("%s/fleetsim.log", d.dir);
	url = xasprintf("mqtt://127.0.0.1:%d", port);
	keyarg = xasprintf("%s/key.pub", d.dir);
	assert_int_equal(ota_write_file_atomic(prof, p, strlen(p), 0644), 0);
	snprintf(devices, sizeof(devices), "%d", NDEV);
	dur = xasprintf("%d", 600);
	{
		/* the devices' own window is 1 s: the hint's (sized to capacity) decides */
		char *argv[] = { fs, "--url", d.device_url, "--devices", devices, "--seed", "7", "--key", keyarg,
				 "--fleet-key", d.fleet_key, "--product", "fw", "--profile", prof, "--stats", stats,
				 "--duration", dur, "--concurrency", "64", "--engine", (char *)engine, "--report-every", "1h",
				 "--mqtt-url", url, "--mqtt-username", "fleetsim", "--mqtt-password-file", simpw,
				 "--mqtt-window-ms", "1000", NULL };
		sim = dh_spawn(log, argv);
	}
	/* warm-up: otacd knows every device (a cohort hint is sized to them) */
	t0 = now_s();
	while (devices_on(&d, "1.0.0") < NDEV && now_s() - t0 < 120)
		h_msleep(200);
	assert_int_equal(devices_on(&d, "1.0.0"), NDEV);
	/* until the step opens, sample otacd's check-in counter: the last
	 * sample before it is the baseline of the counts after it */
	{
		char *sql = xasprintf("SELECT COALESCE((SELECT id FROM releases WHERE run_id = %lld), 0)",
				      (long long)h_trigger(&d, pipeline_yaml));
		while (!m->opened_ms && now_s() - t0 < 240) {
			c0 = metric(&d, "otacd_device_checkins_total");
			t_open = now_s();
			if (!release)
				release = h_sql_int(&d, sql);
			if (release)
				m->opened_ms = step_started_at(&d, release);
			if (!m->opened_ms)
				h_msleep(50);
		}
		free(sql);
	}
	assert_true(m->opened_ms > 0);
	assert_true(c0 >= 0);
	while (now_s() - t_open < run_s) {
		int64_t c = metric(&d, "otacd_device_checkins_total");
		double el = now_s() - t_open;
		if (el <= HINT_WINDOW_MS / 1000.0 + 0.5) {
			m->in_window = c - c0;
			m->window_real_s = el;
		}
		if (el <= 60)
			m->first_minute = c - c0;
		h_msleep(100);
	}
	kill(sim, SIGTERM);
	assert_int_equal(waitpid(sim, &status, 0), sim);
	if (!WIFEXITED(status) || WEXITSTATUS(status))
		fail_msg("otacd-fleetsim failed; see %s", log);
	m->stats = json_load_file(stats, 0, NULL);
	assert_non_null(m->stats);
	h_cleanup(&d);
	free(pwfile);
	free(simpw);
	free(cfg);
	free(fs);
	free(prof);
	free(stats);
	free(log);
	free(url);
	free(keyarg);
	free(dur);
}

static int64_t stat_int(json_t *st, const char *a, const char *b, const char *c)
{
	json_t *v = json_object_get(st, a);
	if (b)
		v = json_object_get(v, b);
	if (c)
		v = json_object_get(v, c);
	return json_integer_value(v);
}

/* ---- tests ----------------------------------------------------------------- */

static void pushed_step(const char *engine)
{
	char *bin = dh_mosquitto_bin();
	struct broker b = { 0 };
	struct measure m = { 0 };
	int64_t win_otacd = (int64_t)HINT_WINDOW_MS * SCALE, p95, p100, first_hint;
	double poll_rate = (double)NDEV * SCALE / POLL_S;   /* the polling load, check-ins per real second */
	if (!bin) {
		print_message("SKIP: mosquitto not installed (apt-get install mosquitto)\n");
		skip();
	}
	broker_start(&b, bin);
	run_step(&m, engine, b.port, 61);
	p95 = stat_int(m.stats, "reach", "1.1.0", "p95_ms");
	p100 = stat_int(m.stats, "reach", "1.1.0", "p100_ms");
	first_hint = stat_int(m.stats, "push", "first_hint_ms", NULL);
	print_message("push (--engine %s): step open -> 95 %% of %d checked in after %.0f s otacd (%.2f s real), 100 %% after %.2f s"
		      " real; hint window %d ms real; %lld hints received, %lld ignored, %lld check-ins brought forward\n",
		      engine, NDEV, (double)(p95 - m.opened_ms) / 1000, (double)(p95 - m.opened_ms) / 1000 / SCALE,
		      (double)(p100 - m.opened_ms) / 1000 / SCALE, HINT_WINDOW_MS,
		      (long long)stat_int(m.stats, "push", "hints_received", NULL),
		      (long long)stat_int(m.stats, "push", "hints_ignored", NULL),
		      (long long)stat_int(m.stats, "push", "checkins_brought_forward", NULL));
	print_message("push: check-ins otacd counted: %lld in the first %.1f s (%.1f/s), %lld in the first minute"
		      " (%.1f/s); capacity %d/s, polling load %.1f/s\n", (long long)m.in_window, m.window_real_s,
		      (double)m.in_window / m.window_real_s, (long long)m.first_minute, (double)m.first_minute / 60,
		      CAPACITY, poll_rate);
	/* the whole cohort (100 % of the fleet) was offered the release */
	assert_int_equal(stat_int(m.stats, "reach", "1.1.0", "devices"), NDEV);
	assert_true(stat_int(m.stats, "push", "hints_received", NULL) >= 1);
	assert_int_equal(stat_int(m.stats, "push", "hints_ignored", NULL), 0);
	assert_true(stat_int(m.stats, "push", "checkins_brought_forward", NULL) > 0);
	/* 95 % within the window from the hint: every device drew its delay in it */
	assert_true(p95 - first_hint <= win_otacd);
	/* the first minute: at most capacity plus the polling load */
	assert_true((double)m.first_minute <= 60.0 * (CAPACITY + poll_rate));
	json_decref(m.stats);
	broker_stop(&b);
	free(bin);
}

static void pushed_step_reaches_its_cohort_within_the_window_at_capacity(void **state)
{
	(void)state;
	pushed_step("model");
}

/* every simulated device runs libotadev: the hint reaches it through otadev_nudge */
static void pushed_step_reaches_devices_running_the_core_through_otadev_nudge(void **state)
{
	(void)state;
	pushed_step("core");
}

static void without_a_broker_the_cohort_is_reached_by_polling_only(void **state)
{
	struct measure m = { 0 };
	int64_t win_otacd = (int64_t)HINT_WINDOW_MS * SCALE, reached, p50, p95;
	(void)state;
	/* nothing listens on this port: otacd and the simulator poll */
	run_step(&m, "model", dh_free_port(), POLL_S / SCALE + 5);
	reached = stat_int(m.stats, "reach", "1.1.0", "devices");
	p50 = stat_int(m.stats, "reach", "1.1.0", "p50_ms");
	p95 = stat_int(m.stats, "reach", "1.1.0", "p95_ms");
	print_message("polling: step open -> %lld of %d devices offered in %d s real; 50 %% after %.0f s otacd,"
		      " 95 %% after %.0f s otacd (poll interval %d s)\n", (long long)reached, NDEV, POLL_S / SCALE + 5,
		      (double)(p50 - m.opened_ms) / 1000,
		      (double)(p95 - m.opened_ms) / 1000, POLL_S);
	assert_int_equal(stat_int(m.stats, "push", "hints_received", NULL), 0);
	assert_int_equal(stat_int(m.stats, "push", "checkins_brought_forward", NULL), 0);
	assert_int_equal(reached, NDEV);   /* the poll interval reached them all */
	/* polls spread over the interval: 95 % came long after the hint
	 * window would have closed (~0.95 of POLL_S against a window of about
	 * half of it; the median, ~0.5 of POLL_S, is too close to assert on) */
	assert_true(p95 - m.opened_ms > win_otacd);
	json_decref(m.stats);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(pushed_step_reaches_its_cohort_within_the_window_at_capacity),
		cmocka_unit_test(pushed_step_reaches_devices_running_the_core_through_otadev_nudge),
		cmocka_unit_test(without_a_broker_the_cohort_is_reached_by_polling_only),
	};
	cmocka_set_test_filter(getenv("X_ONLY"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
