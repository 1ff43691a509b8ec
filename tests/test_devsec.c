/*
 * test_devsec.c - devices cannot steer a gate (issue 12, part 3): each
 * attack reproduced end to end against the real otacd and its device API,
 * with real HTTP devices (libcurl clients here, otacd-fleetsim for the
 * honest fleets), and shown refused.
 *
 *   - the fleet key only provisions: check-ins and reports with it are
 *     refused, registrations are rate-limited and audited, credentials are
 *     per device and revocable;
 *   - reports are accepted only about a version the device was offered or
 *     runs, and within bounds (uptime, crashes, battery);
 *   - tag values beyond the cap (or off the allowlist) are refused, so
 *     /metrics stays small;
 *   - an image is served only to a device it was offered to;
 *   - a handful of hostile devices neither halts a good release nor lets a
 *     bad one pass, against a fleet of honest ones.
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
#include "devharness.h"
#include "harness.h"

/* ---- device-side helpers ------------------------------------------------ */

static long checkin(struct daemon *d, const char *id, const char *token, const char *product, const char *version,
		    json_t *tags, json_t **ans)
{
	json_t *req = json_pack("{ss ss ss ss ss si ss}", "device", id, "product", product, "hardware", "mps2-an385",
				"bootloader", "1.2.0", "version", version, "security_counter", 0, "slot", "confirmed");
	if (tags)
		json_object_set_new(req, "tags", tags);
	return h_dev_post(d, "/device/v1/checkin", token, req, ans);
}

/* One report (extra: more members, may be NULL), with the request's token. */
static long report(struct daemon *d, const char *id, const char *token, const char *version, const char *event,
		   json_t *extra, json_t **ans)
{
	json_t *r = json_pack("{ss ss ss}", "device", id, "version", version, "event", event);
	if (extra) {
		json_object_update(r, extra);
		json_decref(extra);
	}
	return h_dev_post(d, "/device/v1/reports", token, json_pack("{s[o]}", "reports", r), ans);
}

/* The value of the series "name{labels}" in the Prometheus text (0 when absent). */
static double series(struct daemon *d, const char *name, const char *labels)
{
	size_t len;
	char *text = h_device_metrics(d, &len), *key = xasprintf("%s{%s} ", name, labels), *p = strstr(text, key);
	double v = p ? strtod(p + strlen(key), NULL) : 0;
	free(key);
	free(text);
	return v;
}

static const char *err_of(json_t *ans)
{
	const char *e = httpc_json_error(ans);
	return e ? e : "";
}

static void free_creds(char **c)
{
	for (size_t i = 0; c && c[i]; i++)
		free(c[i]);
	free(c);
}

/* ---- provisioning -------------------------------------------------------- */

static void fleet_key_only_provisions_and_registrations_are_limited_and_audited(void **state)
{
	struct daemon d;
	json_t *ans = NULL, *ids, *b0;
	char **creds, **again;
	char *url;
	struct httpc_response r = { 0 };

	(void)state;
	h_init(&d, "device_register_burst: 50\ndevice_register_rate: 1\n");
	assert_int_equal(h_start(&d, NULL), 0);

	/* the fleet key is no device credential: check-ins and reports refused */
	assert_int_equal(checkin(&d, "dev-0000", d.fleet_key, "fw", "1.0.0", NULL, &ans), 401);
	assert_non_null(strstr(err_of(ans), "provisioning only"));
	json_decref(ans);
	assert_int_equal(report(&d, "dev-0000", d.fleet_key, "1.0.0", "heartbeat", NULL, &ans), 401);
	json_decref(ans);
	/* nor is a device that was never registered, whatever its token */
	assert_int_equal(checkin(&d, "dev-0000", "0123456789abcdef0123456789abcdef", "fw", "1.0.0", NULL, &ans), 401);
	assert_non_null(strstr(err_of(ans), "not registered"));
	json_decref(ans);
	/* registering needs the fleet key */
	assert_int_equal(h_dev_post(&d, "/device/v1/register", "not-the-key", json_pack("{s[s]}", "devices", "x"), NULL), 401);

	creds = h_register_devices(&d, "dev", 40);
	assert_int_equal(strlen(creds[0]), 32);
	assert_int_equal(checkin(&d, "dev-0000", creds[0], "fw", "1.0.0", NULL, NULL), 200);
	/* one device's credential is not another's */
	assert_int_equal(checkin(&d, "dev-0001", creds[0], "fw", "1.0.0", NULL, NULL), 401);
	/* a report batch may carry other devices' reports only with their credentials */
	assert_int_equal(checkin(&d, "dev-0001", creds[1], "fw", "1.0.0", NULL, NULL), 200);
	assert_int_equal(h_dev_post(&d, "/device/v1/reports", creds[0],
				  json_pack("{s[{ss ss ss}{ss ss ss}]}", "reports", "device", "dev-0000", "version", "1.0.0",
					    "event", "heartbeat", "device", "dev-0001", "version", "1.0.0", "event",
					    "heartbeat"),
				  &ans),
			 401);
	assert_non_null(strstr(err_of(ans), "reports[1]"));
	json_decref(ans);
	assert_int_equal(h_dev_post(&d, "/device/v1/reports", NULL,
				  json_pack("{s[{ss ss ss ss}{ss ss ss ss}]}", "reports", "device", "dev-0000", "credential",
					    creds[0], "version", "1.0.0", "event", "heartbeat", "device", "dev-0001",
					    "credential", creds[1], "version", "1.0.0", "event", "heartbeat"),
				  &ans),
			 200);
	assert_int_equal(json_integer_value(json_object_get(ans, "accepted")), 2);
	json_decref(ans);

	/* the attack: 10,000 fake devices with the fleet key; 20 more than the
	 * bucket holds are refused too, with Retry-After, and create nothing */
	ids = json_array();
	for (int i = 0; i < 10000; i++) {
		char id[32];
		snprintf(id, sizeof(id), "fake-%05d", i);
		json_array_append_new(ids, json_string(id));
	}
	url = xasprintf("%s/device/v1/register", d.device_url);
	{
		json_t *req = json_pack("{so}", "devices", ids);
		char *body = json_dumps(req, JSON_COMPACT);
		json_decref(req);
		assert_int_equal(httpc_request(&r, "POST", url, d.fleet_key, "application/json", body, strlen(body), 30000), 0);
		assert_int_equal(r.status, 429);
		free(body);
		httpc_response_release(&r);
	}
	ids = json_array();
	for (int i = 0; i < 20; i++) {
		char id[32];
		snprintf(id, sizeof(id), "fake-%05d", i);
		json_array_append_new(ids, json_string(id));
	}
	{
		json_t *req = json_pack("{so}", "devices", ids);
		char *body = json_dumps(req, JSON_COMPACT), *ra = NULL;
		json_decref(req);
		assert_int_equal(httpc_request(&r, "POST", url, d.fleet_key, "application/json", body, strlen(body), 30000), 0);
		assert_int_equal(r.status, 429);
		assert_int_equal(httpc_response_header(&ra, &r, "Retry-After"), 0);
		assert_true(atoi(ra) >= 1);
		free(ra);
		free(body);
		httpc_response_release(&r);
	}
	assert_int_equal(checkin(&d, "fake-00000", creds[0], "fw", "1.0.0", NULL, &ans), 401);
	assert_non_null(strstr(err_of(ans), "not registered"));
	json_decref(ans);

	/* registering again revokes the old credential */
	{
		char **fresh = h_register_devices(&d, "dev", 1);
		assert_string_not_equal(fresh[0], creds[0]);
		assert_int_equal(checkin(&d, "dev-0000", creds[0], "fw", "1.0.0", NULL, NULL), 401);
		assert_int_equal(checkin(&d, "dev-0000", fresh[0], "fw", "1.0.0", NULL, NULL), 200);
		free_creds(fresh);
	}

	/* the audit trail: per request, not per device; readable with the fleet key */
	free(url);
	url = xasprintf("%s/device/v1/registrations", d.device_url);
	{
		long status = 0;
		assert_int_equal(httpc_json(&ans, &status, "GET", url, "wrong", NULL, 10000), 0);
		assert_int_equal(status, 401);
		json_decref(ans);
		assert_int_equal(httpc_json(&ans, &status, "GET", url, d.fleet_key, NULL, 10000), 0);
		assert_int_equal(status, 200);
	}
	assert_int_equal(json_integer_value(json_object_get(ans, "devices")), 40);
	assert_int_equal(json_integer_value(json_object_get(ans, "total")), 41);
	assert_int_equal(json_integer_value(json_object_get(ans, "refused")), 10020);
	assert_int_equal(json_array_size(json_object_get(ans, "batches")), 2);
	b0 = json_array_get(json_object_get(ans, "batches"), 1);
	assert_int_equal(json_integer_value(json_object_get(b0, "count")), 40);
	assert_string_equal(json_string_value(json_object_get(b0, "first")), "dev-0000");
	assert_string_equal(json_string_value(json_object_get(b0, "last")), "dev-0039");
	assert_string_equal(json_string_value(json_object_get(b0, "peer")), "127.0.0.1");
	json_decref(ans);

	/* registrations survive a restart (credentials stay valid) */
	h_kill(&d, SIGKILL);
	assert_int_equal(h_start(&d, NULL), 0);
	assert_int_equal(checkin(&d, "dev-0005", creds[5], "fw", "1.0.0", NULL, NULL), 200);
	assert_int_equal(checkin(&d, "dev-0000", creds[0], "fw", "1.0.0", NULL, NULL), 401);

	again = h_register_devices(&d, "other", 1);
	free_creds(again);
	free_creds(creds);
	free(url);
	h_cleanup(&d);
}

/* otacd-fleetsim provisions its devices through the real endpoint, within
 * the limit: a request past the burst is split, a 429 waited out. */
static void fleetsim_registers_its_fleet_within_the_limit(void **state)
{
	struct daemon d;
	const char *const args[] = { "--time-scale", "3600", NULL };
	char *bin, *log, *url;
	json_t *ans = NULL;
	long status = 0;
	pid_t sim;
	double n = 0;

	(void)state;
	struct buf out = BUF_INIT;
	char *key;

	h_init(&d, "device_register_burst: 300\ndevice_register_rate: 200\n");
	assert_int_equal(h_start(&d, args), 0);
	assert_int_equal(h_sh(&out, "cd %s && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out k.pem"
				    " && openssl pkey -in k.pem -pubout -out k.pub", d.dir), 0);
	buf_release(&out);
	key = xasprintf("%s/k.pub", d.dir);
	bin = h_bin("otacd-fleetsim");
	log = xasprintf("%s/sim.log", d.dir);
	sim = fork();
	if (sim == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
		h_child_dies_with_test();
		dup2(fd, 1);
		dup2(fd, 2);
		execl(bin, bin, "--url", d.device_url, "--devices", "700", "--seed", "3", "--key", key, "--fleet-key",
		      d.fleet_key, "--product", "fw", "--start-version", "1.0.0", "--duration", "120", (char *)NULL);
		_exit(127);
	}
	for (int waited = 0; waited < 60000 && n < 700; waited += 250) {
		h_msleep(250);
		n = series(&d, "otacd_fleet_devices", "product=\"fw\",version=\"1.0.0\",cohort=\"*\"");
	}
	kill(sim, SIGTERM);
	waitpid(sim, NULL, 0);
	assert_int_equal((int)n, 700);   /* every device registered and checked in */
	url = xasprintf("%s/device/v1/registrations", d.device_url);
	assert_int_equal(httpc_json(&ans, &status, "GET", url, d.fleet_key, NULL, 10000), 0);
	assert_int_equal(status, 200);
	assert_int_equal(json_integer_value(json_object_get(ans, "devices")), 700);
	assert_true(json_array_size(json_object_get(ans, "batches")) >= 3);   /* at most 300 a request */
	assert_true(json_integer_value(json_object_get(ans, "refused")) > 0);  /* it met the limit */
	json_decref(ans);
	free(url);
	free(bin);
	free(log);
	free(key);
	h_cleanup(&d);
}

/* ---- reports -------------------------------------------------------------- */

static void reports_need_an_offered_or_running_version_and_stay_within_bounds(void **state)
{
	struct daemon d;
	json_t *ans = NULL;
	char **c;
	double hours, crashes, battery;

	(void)state;
	h_init(&d, NULL);
	assert_int_equal(h_start(&d, NULL), 0);   /* time scale 1: otacd time is wall time */
	c = h_register_devices(&d, "dev", 2);
	assert_int_equal(checkin(&d, "dev-0000", c[0], "fw", "1.0.0", NULL, NULL), 200);

	/* a version it neither runs nor was offered */
	assert_int_equal(report(&d, "dev-0000", c[0], "9.9.9", "boot_ok", NULL, &ans), 400);
	assert_non_null(strstr(err_of(ans), "was not offered 9.9.9"));
	json_decref(ans);
	/* absurd values are refused */
	assert_int_equal(report(&d, "dev-0000", c[0], "1.0.0", "heartbeat", json_pack("{sf}", "uptime_s", 1e12), &ans), 400);
	assert_non_null(strstr(err_of(ans), "uptime_s"));
	json_decref(ans);
	assert_int_equal(report(&d, "dev-0000", c[0], "1.0.0", "heartbeat", json_pack("{sI}", "crashes", (json_int_t)2000000),
				&ans),
			 400);
	json_decref(ans);
	/* the attacks within the hard limits: credited within bounds */
	assert_int_equal(report(&d, "dev-0000", c[0], "1.0.0", "heartbeat",
				json_pack("{sf sI sf}", "uptime_s", 3e7, "crashes", (json_int_t)1000000, "battery_mah", 1e9),
				&ans),
			 400);   /* battery beyond a year at the cap */
	json_decref(ans);
	assert_int_equal(report(&d, "dev-0000", c[0], "1.0.0", "heartbeat",
				json_pack("{sf sI sf}", "uptime_s", 3e7, "crashes", (json_int_t)1000000, "battery_mah", 1e6),
				NULL),
			 200);
	for (int i = 0; i < 20; i++)
		assert_int_equal(report(&d, "dev-0000", c[0], "1.0.0", "heartbeat",
					json_pack("{sf sI}", "uptime_s", 3e7, "crashes", (json_int_t)1000000), NULL),
				 200);
	hours = series(&d, "otacd_fleet_device_hours_total", "product=\"fw\",version=\"1.0.0\",cohort=\"*\"");
	crashes = series(&d, "otacd_fleet_crashes_total", "product=\"fw\",version=\"1.0.0\",cohort=\"*\"");
	battery = series(&d, "otacd_fleet_battery_mah_total", "product=\"fw\",version=\"1.0.0\",cohort=\"*\"");
	/* a device first seen may claim one poll interval (6 h); then only the
	 * (wall = otacd) time since: seconds.  Crashes: the burst of 2. */
	assert_true(hours >= 5.9 && hours <= 6.1);
	assert_true(crashes >= 1 && crashes <= 2);
	assert_true(battery <= hours * 1000.0 + 1);
	assert_int_equal((int)series(&d, "otacd_fleet_crashed", "product=\"fw\",version=\"1.0.0\",cohort=\"*\""), 1);
	free_creds(c);
	h_cleanup(&d);
}

/* ---- tags ------------------------------------------------------------------ */

static void tag_values_beyond_the_cap_are_refused_and_metrics_stay_small(void **state)
{
	struct daemon d;
	json_t *ans = NULL;
	char **c;
	size_t before, after;
	int ok = 0, refused = 0;

	(void)state;
	h_init(&d, "device_tag_cap: 20\ndevice_name_cap: 30\n");
	assert_int_equal(h_start(&d, NULL), 0);
	c = h_register_devices(&d, "dev", 300);
	assert_int_equal(checkin(&d, "dev-0000", c[0], "fw", "1.0.0", json_pack("{ss}", "region", "eu"), NULL), 200);
	free(h_device_metrics(&d, &before));
	/* the attack: check-ins with fresh tag values */
	for (int i = 1; i < 300; i++) {
		char v[32], id[32];
		long st;
		snprintf(v, sizeof(v), "r%d", i);
		snprintf(id, sizeof(id), "dev-%04d", i);
		st = checkin(&d, id, c[i], "fw", "1.0.0", json_pack("{ss}", "region", v), &ans);
		if (st == 200)
			ok++;
		else {
			assert_int_equal(st, 400);
			assert_non_null(strstr(err_of(ans), "device_tag_cap"));
			refused++;
		}
		json_decref(ans);
		ans = NULL;
	}
	assert_int_equal(ok, 19);        /* 20 distinct tags in all */
	assert_int_equal(refused, 280);
	/* fresh versions are names: capped as well */
	ok = 0;
	for (int i = 0; i < 100; i++) {
		char v[32], id[32];
		snprintf(v, sizeof(v), "7.0.%d", i);
		snprintf(id, sizeof(id), "dev-%04d", i);
		ok += checkin(&d, id, c[i], "fw", v, NULL, NULL) == 200;
	}
	assert_true(ok < 30);
	free(h_device_metrics(&d, &after));
	/* 20 tag cohorts and < 30 versions: bounded, not 300 x 12 series */
	assert_true(after < before + 60 * 12 * 120);
	free_creds(c);
	h_cleanup(&d);

	/* with an allowlist only listed tags are accepted */
	h_init(&d, "device_tags:\n  region: [eu, us]\n");
	assert_int_equal(h_start(&d, NULL), 0);
	c = h_register_devices(&d, "dev", 3);
	assert_int_equal(checkin(&d, "dev-0000", c[0], "fw", "1.0.0", json_pack("{ss}", "region", "eu"), NULL), 200);
	assert_int_equal(checkin(&d, "dev-0001", c[1], "fw", "1.0.0", json_pack("{ss}", "region", "mars"), &ans), 400);
	assert_non_null(strstr(err_of(ans), "allowlist"));
	json_decref(ans);
	assert_int_equal(checkin(&d, "dev-0002", c[2], "fw", "1.0.0", json_pack("{ss}", "tier", "gold"), NULL), 400);
	free_creds(c);
	h_cleanup(&d);
}

/* ---- releases: a world with agents, a signing key and a fleet ---------------- */

struct world {
	struct daemon d;
	pid_t sim;
	char *stats;
};

/* Under OTACD_SLOW=1 (sanitizer builds) otacd time runs at half speed, so
 * the honest fleet's reports keep up with the holds (as in test_rollout). */
static const char *scale(void)
{
	const char *s = getenv("OTACD_SLOW");
	return s && !strcmp(s, "1") ? "1800" : "3600";
}

static void world_start(struct world *w, const char *extra_config)
{
	const char *const args[] = { "--local-agents", "2", "--time-scale", scale(), NULL };
	struct buf out = BUF_INIT;

	h_init(&w->d, NULL);
	dh_start_signing(&w->d, args, "%s", extra_config ? extra_config : "");
	w->stats = xasprintf("%s/stats.json", w->d.dir);
	buf_release(&out);
}

static void sim_start(struct world *w, int devices, const char *profile)
{
	char *bin = h_bin("otacd-fleetsim"), *prof = xasprintf("%s/profile.json", w->d.dir);
	char *key = xasprintf("%s/key.pub", w->d.dir), *log = xasprintf("%s/sim.log", w->d.dir);
	char n[16];

	snprintf(n, sizeof(n), "%d", devices);
	assert_int_equal(ota_write_file_atomic(prof, profile, strlen(profile), 0600), 0);
	w->sim = fork();
	if (w->sim == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
		h_child_dies_with_test();
		dup2(fd, 1);
		dup2(fd, 2);
		execl(bin, bin, "--url", w->d.device_url, "--devices", n, "--seed", "11", "--key", key, "--fleet-key",
		      w->d.fleet_key, "--product", "fw", "--profile", prof, "--start-version", "1.0.0", "--start-counter",
		      "0", "--duration", "600", "--stats", w->stats, (char *)NULL);
		_exit(127);
	}
	free(bin);
	free(prof);
	free(key);
	free(log);
}

static void world_stop(struct world *w)
{
	if (w->sim > 0) {
		kill(w->sim, SIGTERM);
		waitpid(w->sim, NULL, 0);
	}
	h_cleanup(&w->d);
	free(w->stats);
	memset(w, 0, sizeof(*w));
}

static char *pipeline(const char *name, const char *version, const char *stages, const char *gates)
{
	return xasprintf("name: %s\nstages:\n"
			 "  - name: build\n"
			 "    steps: [ { run: \"printf '%s %s' > app.bin && head -c 2000 /dev/zero >> app.bin\" } ]\n"
			 "    artifacts: [ { path: app.bin, name: app.bin, type: application, hardware: mps2-an385 } ]\n"
			 "  - { name: release, kind: release, needs: [build], version: \"%s\", security_counter: 0, key: test }\n"
			 "%sgates:\n%s",
			 name, name, version, version, stages, gates);
}

static void wait_rolling(struct daemon *d, int64_t rel)
{
	char *sql = xasprintf("SELECT COUNT(*) FROM rollouts WHERE release_id = %lld AND state = 'holding'", (long long)rel);
	for (int waited = 0; waited < 60000 && !h_sql_int(d, sql); waited += 100)
		h_msleep(100);
	assert_true(h_sql_int(d, sql) > 0);
	free(sql);
}

static long download(struct daemon *d, const char *url_path, const char *id, const char *token)
{
	char *url = xasprintf("%s%s", d->device_url, url_path), *hdr = xasprintf("X-Device-Id: %s", id);
	const char *const headers[] = { hdr, NULL };
	struct httpc_response r = { 0 };
	long st;
	assert_int_equal(httpc_request_ex(&r, "GET", url, token, NULL, NULL, 0, 30000, headers), 0);
	st = r.status;
	httpc_response_release(&r);
	free(url);
	free(hdr);
	return st;
}

static void image_is_served_only_to_devices_it_was_offered(void **state)
{
	struct world w = { 0 };
	char *y = pipeline("fw", "1.1.0",
			   "  - name: canary\n    kind: rollout\n    needs: [release]\n"
			   "    steps: [ {percent: 30, hold: 1000h} ]\n    gates: [boots]\n",
			   "  boots: { metric: boot_success_rate, min: 0.5, min_devices: 1000 }\n");
	int64_t run, rel;
	char **c;
	char *url = NULL;
	int offered = 0, refused = 0;
	json_t *ans;

	(void)state;
	world_start(&w, NULL);
	c = h_register_devices(&w.d, "dev", 60);
	for (int i = 0; i < 60; i++) {
		char id[32];
		snprintf(id, sizeof(id), "dev-%04d", i);
		assert_int_equal(checkin(&w.d, id, c[i], i < 50 ? "fw" : "other", "1.0.0", NULL, NULL), 200);
	}
	run = h_trigger(&w.d, y);
	rel = dh_release_of(&w.d, run);
	assert_true(rel > 0);
	wait_rolling(&w.d, rel);
	for (int i = 0; i < 50; i++) {
		char id[32];
		json_t *offer;
		snprintf(id, sizeof(id), "dev-%04d", i);
		assert_int_equal(checkin(&w.d, id, c[i], "fw", "1.0.0", NULL, &ans), 200);
		offer = json_object_get(ans, "offer");
		if (json_is_object(offer)) {
			const char *u = json_string_value(json_object_get(json_object_get(offer, "image"), "url"));
			if (!url)
				url = xstrdup(u);
			assert_int_equal(download(&w.d, u, id, c[i]), 200);
			offered++;
		} else if (url) {
			/* the attack: a device outside the cohort downloads the image */
			assert_int_equal(download(&w.d, url, id, c[i]), 403);
			refused++;
		}
		json_decref(ans);
	}
	assert_non_null(url);
	assert_true(offered > 5 && offered < 30);
	assert_true(refused > 5);
	/* a device of another product */
	assert_int_equal(checkin(&w.d, "dev-0055", c[55], "other", "1.0.0", NULL, NULL), 200);
	assert_int_equal(download(&w.d, url, "dev-0055", c[55]), 403);
	/* someone else's id with one's own credential, or the fleet key */
	assert_int_equal(download(&w.d, url, "dev-0000", c[55]) == 401 || download(&w.d, url, "dev-0000", c[55]) == 403, 1);
	assert_int_equal(download(&w.d, url, "dev-0000", w.d.fleet_key), 401);
	/* no id at all */
	assert_int_equal(download(&w.d, url, "", c[0]), 401);
	free(url);
	free_creds(c);
	free(y);
	world_stop(&w);
}

/* ---- hostile devices against an honest fleet ------------------------------- */

#define HONEST 2000
/* 12: the cohort salt changes with every release, and each hostile device
 * is in a 50 % canary by chance: with 5 devices, 1 run in 32 had none in it */
#define HOSTILE 12

static const char *const GATES =
	"  crash_free: { metric: crash_rate, max: 0.2, min_devices: 50 }\n"
	"  regress: { metric: crashes_per_device_hour, baseline: previous, max_increase: \"100%\" }\n";

/* hostile devices evil-NNNN: registered (credentials in *creds), checked in */
static void hostile_join(struct world *w, char ***creds, int n)
{
	*creds = h_register_devices(&w->d, "evil", n);
	for (int i = 0; i < n; i++) {
		char id[32];
		snprintf(id, sizeof(id), "evil-%04d", i);
		assert_int_equal(checkin(&w->d, id, (*creds)[i], "fw", "1.0.0", NULL, NULL), 200);
	}
}

static char *last_rollout;   /* the rollouts of the last run watched, for a failure message */

static void expect_run(const char *got, const char *want)
{
	if (strcmp(got, want))
		fail_msg("the run %s, expected %s; rollouts:\n%.4000s", got, want, last_rollout ? last_rollout : "?");
}

/* Each hostile device that is offered the release says it booted it, then
 * sends extra (heartbeats) every 100 ms until the run ends. */
static const char *hostile_until_done(struct world *w, int64_t run, char **creds, int n, const char *version,
				      json_t *extra)
{
	int *on = xcalloc((size_t)n, sizeof(int));
	const char *state = NULL;
	char *sql = xasprintf("SELECT state FROM runs WHERE id = %lld", (long long)run);
	int joined = 0;

	for (int tick = 0; tick < 3000; tick++) {
		json_t *r = NULL;
		const char *st;
		for (int i = 0; i < n; i++) {
			char id[32];
			json_t *ans = NULL;
			snprintf(id, sizeof(id), "evil-%04d", i);
			if (!on[i]) {
				if (checkin(&w->d, id, creds[i], "fw", "1.0.0", NULL, &ans) == 200 &&
				    json_is_object(json_object_get(ans, "offer"))) {
					on[i] = 1;
					joined++;
					assert_int_equal(report(&w->d, id, creds[i], version, "boot_ok", NULL, NULL), 200);
				}
				json_decref(ans);
				continue;
			}
			assert_int_equal(report(&w->d, id, creds[i], version, "heartbeat", json_deep_copy(extra), NULL), 200);
		}
		r = h_run(&w->d, run);
		st = json_string_value(json_object_get(r, "state"));
		if (st && (!strcmp(st, "passed") || !strcmp(st, "failed") || !strcmp(st, "canceled"))) {
			json_t *ro = NULL;
			char *path = xasprintf("/api/v1/releases/%lld/rollout", (long long)dh_release_of(&w->d, run));
			free(last_rollout);
			last_rollout = NULL;
			if (h_get(&w->d, path, &ro) == 200)
				last_rollout = json_dumps(json_object_get(ro, "rollouts"), JSON_INDENT(1));
			json_decref(ro);
			free(path);
			state = !strcmp(st, "passed") ? "passed" : !strcmp(st, "failed") ? "failed" : "canceled";
			json_decref(r);
			break;
		}
		json_decref(r);
		h_msleep(100);
	}
	assert_true(joined >= 1);   /* some hostile devices were in the canary */
	free(on);
	free(sql);
	json_decref(extra);
	return state ? state : "timeout";
}

static void hostile_devices_cannot_halt_a_good_release(void **state)
{
	struct world w = { 0 };
	char *y = pipeline("fw", "1.1.0",
			   "  - name: canary\n    kind: rollout\n    needs: [release]\n"
			   "    steps: [ {percent: 50, hold: 6h}, {percent: 100, hold: 1h} ]\n"
			   "    max_extension: 24h\n    gates: [crash_free, regress]\n",
			   GATES);
	char **creds;
	int64_t run;

	(void)state;
	world_start(&w, NULL);
	hostile_join(&w, &creds, HOSTILE);
	sim_start(&w, HONEST, "{ \"versions\": { \"1.0.0\": { \"crash_rate\": 0.05 }, \"1.1.0\": { \"crash_rate\": 0.05 } } }");
	h_msleep(3000);   /* the honest fleet checks in */
	run = h_trigger(&w.d, y);
	/* the attack: a million crashes per heartbeat */
	expect_run(hostile_until_done(&w, run, creds, HOSTILE, "1.1.0",
				      json_pack("{sf sI}", "uptime_s", 1.0, "crashes", (json_int_t)1000000)),
		   "passed");
	free_creds(creds);
	free(y);
	world_stop(&w);
	free(last_rollout);
	last_rollout = NULL;
}

static void hostile_devices_cannot_make_a_bad_release_pass(void **state)
{
	struct world w = { 0 };
	/* only the per-device-hour gate: the one inflated uptimes dilute */
	char *y = pipeline("fw", "1.1.0",
			   "  - name: canary\n    kind: rollout\n    needs: [release]\n"
			   "    steps: [ {percent: 50, hold: 6h}, {percent: 100, hold: 1h} ]\n"
			   "    max_extension: 24h\n    gates: [regress]\n",
			   GATES);
	char **creds;
	int64_t run;

	(void)state;
	world_start(&w, NULL);
	hostile_join(&w, &creds, HOSTILE);
	sim_start(&w, HONEST, "{ \"versions\": { \"1.0.0\": { \"crash_rate\": 0.02 }, \"1.1.0\": { \"crash_rate\": 0.4 } } }");
	h_msleep(3000);
	run = h_trigger(&w.d, y);
	/* the attack: huge healthy uptimes (a year a report, the
	 * most a report may say) to dilute the crashes per device-hour */
	expect_run(hostile_until_done(&w, run, creds, HOSTILE, "1.1.0",
				      json_pack("{sf sI}", "uptime_s", 3.0e7, "crashes", (json_int_t)0)),
		   "failed");
	free_creds(creds);
	free(y);
	world_stop(&w);
	free(last_rollout);
	last_rollout = NULL;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(fleet_key_only_provisions_and_registrations_are_limited_and_audited),
		cmocka_unit_test(fleetsim_registers_its_fleet_within_the_limit),
		cmocka_unit_test(reports_need_an_offered_or_running_version_and_stay_within_bounds),
		cmocka_unit_test(tag_values_beyond_the_cap_are_refused_and_metrics_stay_small),
		cmocka_unit_test(image_is_served_only_to_devices_it_was_offered),
		cmocka_unit_test(hostile_devices_cannot_halt_a_good_release),
		cmocka_unit_test(hostile_devices_cannot_make_a_bad_release_pass),
	};
	httpc_global_init();
	if (getenv("DEVSEC_ONLY"))
		cmocka_set_test_filter(getenv("DEVSEC_ONLY"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
