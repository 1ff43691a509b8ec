/*
 * test_fleet.c - the built-in update server's device side through real
 * HTTP on loopback: check-in decisions (cohorts, compatibility, rollback),
 * report batches and their aggregates, validation and authentication
 * (nothing changes on a refused request), persistence across a clean
 * restart and across a SIGKILL of the serving process, image downloads
 * with Range, and /metrics.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include <curl/curl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "../common/httpc.h"
#include "../common/util.h"
#include "../orchestrator/artifact.h"
#include "../orchestrator/fleet/fleet.h"

#define KEY "fleet-key-for-tests-0123456789"
#define SECRET "device-secret-for-tests-0123456789abcdef0123456789abcdef0123456789"
#define SHA_A "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define SHA_B "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"

struct env {
	char *dir, *db, *base;
	struct fleet *f;
	struct devapi *api;
	json_t *creds;      /* device id -> credential (registered on first use) */
};

static void env_up(struct env *e)
{
	struct fleet_config cfg = { .fleet_key = KEY, .device_secret = SECRET, .poll_ms = 6 * 3600 * 1000LL };
	cfg.db_path = e->db;
	assert_int_equal(fleet_open(&e->f, &cfg), 0);
	assert_int_equal(devapi_start(&e->api, e->f, "127.0.0.1:0", 1), 0);
	free(e->base);
	e->base = xasprintf("http://127.0.0.1:%d", devapi_port(e->api));
}

static void env_down(struct env *e)
{
	devapi_stop(e->api);
	fleet_close(e->f);
	e->api = NULL;
	e->f = NULL;
}

static int setup(void **state)
{
	struct env *e = xcalloc(1, sizeof(*e));
	char tmpl[] = "/tmp/test_fleet.XXXXXX";
	assert_non_null(mkdtemp(tmpl));
	e->dir = xstrdup(tmpl);
	e->db = xasprintf("%s/fleet.db", e->dir);
	env_up(e);
	*state = e;
	return 0;
}

static int teardown(void **state)
{
	struct env *e = *state;
	struct buf cmd = BUF_INIT;
	if (e->f)
		env_down(e);
	buf_printf(&cmd, "rm -rf '%s'", e->dir);
	if (system(buf_cstr(&cmd)) != 0)
		fprintf(stderr, "cannot remove %s\n", e->dir);
	buf_release(&cmd);
	free(e->dir);
	free(e->db);
	free(e->base);
	json_decref(e->creds);
	free(e);
	return 0;
}

/* ---- helpers ------------------------------------------------------------- */

/* The credential of device dev (registered through the fleet on first use). */
static const char *cred(struct env *e, const char *dev)
{
	char c[1][33];
	const char *ids[] = { dev };
	if (!e->creds)
		e->creds = json_object();
	if (!json_object_get(e->creds, dev)) {
		assert_int_equal(fleet_register(e->f, ids, 1, "test", c), 0);
		json_object_set_new(e->creds, dev, json_string(c[0]));
	}
	return json_string_value(json_object_get(e->creds, dev));
}

/* token KEY stands for "as the device the body is about": a check-in with
 * its credential, each report with its own "credential". */
static long post(struct env *e, const char *path, const char *token, json_t *body, json_t **out)
{
	char *url = xasprintf("%s%s", e->base, path);
	long status = 0;
	json_t *ans = NULL;
	if (token && !strcmp(token, KEY) && !strcmp(path, "/device/v1/checkin") &&
	    json_is_string(json_object_get(body, "device")))
		token = cred(e, json_string_value(json_object_get(body, "device")));
	else if (token && !strcmp(token, KEY) && !strcmp(path, "/device/v1/reports")) {
		size_t i;
		json_t *r;
		json_array_foreach(json_object_get(body, "reports"), i, r)
			if (json_is_object(r) && json_is_string(json_object_get(r, "device")))
				json_object_set_new(r, "credential",
						    json_string(cred(e, json_string_value(json_object_get(r, "device")))));
		token = NULL;
	}
	assert_int_equal(httpc_json(&ans, &status, "POST", url, token, body, 10000), 0);
	free(url);
	json_decref(body);
	if (out) { /* replaces what *out held (callers start from NULL) */
		json_decref(*out);
		*out = ans;
	} else
		json_decref(ans);
	return status;
}

static long post_raw(struct env *e, const char *path, const char *token, const char *body, size_t len)
{
	struct httpc_response r;
	char *url = xasprintf("%s%s", e->base, path);
	long status;
	assert_int_equal(httpc_request(&r, "POST", url, token, "application/json", body, len, 10000), 0);
	status = r.status;
	httpc_response_release(&r);
	free(url);
	return status;
}

static json_t *checkin_body(const char *dev, const char *hw, const char *bl, const char *ver, int counter,
			    const char *region)
{
	json_t *b = json_pack("{ss ss ss ss ss sI ss}", "device", dev, "product", "sensor-node", "hardware", hw,
			      "bootloader", bl, "version", ver, "security_counter", (json_int_t)counter, "slot",
			      "confirmed");
	if (region)
		json_object_set_new(b, "tags", json_pack("{ss ss}", "region", region, "tier", "standard"));
	return b;
}

/* The offered version, or NULL for offer: null (the answer is kept in *keep). */
static const char *checkin(struct env *e, const char *dev, const char *hw, const char *bl, const char *ver,
			   int counter, const char *region, json_t **keep)
{
	json_t *ans = NULL, *offer;
	assert_int_equal(post(e, "/device/v1/checkin", KEY, checkin_body(dev, hw, bl, ver, counter, region), &ans), 200);
	/* ans is new here; *keep is released below */
	assert_non_null(ans);
	assert_true(json_is_integer(json_object_get(ans, "now")));
	assert_true(json_integer_value(json_object_get(ans, "next_poll_ms")) >= 6 * 3600 * 900);
	assert_true(json_integer_value(json_object_get(ans, "next_poll_ms")) <= 6 * 3600 * 1100);
	offer = json_object_get(ans, "offer");
	assert_non_null(offer);
	json_decref(*keep);
	*keep = ans;
	return json_is_null(offer) ? NULL : json_string_value(json_object_get(offer, "version"));
}

static void expose(struct env *e, int64_t id, const char *version, int counter, const char *min_bl, int bp,
		   int active, int64_t rollback_to, const char *sha)
{
	struct fleet_image img[] = { { "mps2-an385", sha, "application", 1000 } };
	json_t *cohort = json_pack("{s[ss]}", "region", "eu", "us");
	struct fleet_exposure x = { id, "sensor-node", version, counter, min_bl, img, 1, active, "salt-1", bp, NULL, rollback_to, NULL, 0, NULL, 0 };
	x.cohort = cohort;
	assert_int_equal(fleet_set_exposure(e->f, &x), 0);
	json_decref(cohort);
}

static struct fleet_agg agg(struct env *e, const char *version, const char *cohort)
{
	struct fleet_agg a;
	assert_int_equal(fleet_aggregate(e->f, "sensor-node", version, cohort, &a), 0);
	return a;
}

static json_t *report(const char *dev, const char *ver, const char *event, double uptime, int crashes)
{
	return json_pack("{ss ss ss sf si sf}", "device", dev, "version", ver, "event", event, "uptime_s", uptime,
			 "crashes", crashes, "battery_mah", 1.5);
}

/* token KEY: in process, as a trusted caller (the aggregation arithmetic,
 * without the device bounds test_devsec.c covers); else over HTTP. */
static long send_reports(struct env *e, const char *token, json_t *list, json_t **out)
{
	json_t *body = json_pack("{so}", "reports", list);
	int accepted = 0, rc;
	if (!token || strcmp(token, KEY))
		return post(e, "/device/v1/reports", token, body, out);
	rc = fleet_report(e->f, body, fleet_trusted_caller, &accepted);
	json_decref(body);
	if (out) {
		json_decref(*out);
		*out = rc < 0 ? json_pack("{ss}", "error", ota_error_last()) : json_pack("{si}", "accepted", accepted);
	}
	return rc == 0 ? 200 : rc == OTA_EAUTH ? 401 : rc == OTA_EINVAL ? 400 : 500;
}

/* Over HTTP, each report with its device's credential. */
static long send_reports_http(struct env *e, json_t *list, json_t **out)
{
	return post(e, "/device/v1/reports", KEY, json_pack("{so}", "reports", list), out);
}

static void device_token(struct env *e, const char *dev, char hex[65])
{
	snprintf(hex, 65, "%s", cred(e, dev));
}

static void assert_agg_equal(const struct fleet_agg *a, const struct fleet_agg *b)
{
	assert_memory_equal(a, b, sizeof(*a));
}

/* ---- check-in decisions -------------------------------------------------- */

static void checkin_without_exposure_offers_nothing(void **state)
{
	struct env *e = *state;
	json_t *ans = NULL;
	assert_null(checkin(e, "dev-1", "mps2-an385", "1.2.0", "1.4.0", 3, "eu", &ans));
	assert_int_equal(agg(e, "1.4.0", "*").devices, 1);
	assert_int_equal(agg(e, "1.4.0", "region=eu").devices, 1);
	assert_int_equal(agg(e, "1.4.0", "region=us").devices, 0);
	json_decref(ans);
}

static void raising_the_percentage_keeps_every_offered_device_offered(void **state)
{
	struct env *e = *state;
	static char offered10[2000];
	json_t *ans = NULL;
	int n10 = 0, n20 = 0;

	expose(e, 7, "1.5.0", 3, "1.2.0", 1000, 1, 0, SHA_A);
	for (int i = 0; i < 2000; i++) {
		char dev[32];
		snprintf(dev, sizeof(dev), "dev-%06d", i);
		offered10[i] = checkin(e, dev, "mps2-an385", "1.2.0", "1.4.0", 3, i % 2 ? "eu" : "us", &ans) != NULL;
		assert_int_equal(offered10[i], fleet_cohort_slot("salt-1", dev) < 1000);
		n10 += offered10[i];
	}
	assert_in_range(n10, 140, 260);
	assert_int_equal(agg(e, "1.5.0", "*").offered, n10);
	assert_int_equal(agg(e, "1.4.0", "*").devices, 2000);

	expose(e, 7, "1.5.0", 3, "1.2.0", 2000, 1, 0, SHA_A);
	for (int i = 0; i < 2000; i++) {
		char dev[32];
		const char *v;
		snprintf(dev, sizeof(dev), "dev-%06d", i);
		v = checkin(e, dev, "mps2-an385", "1.2.0", "1.4.0", 3, i % 2 ? "eu" : "us", &ans);
		if (offered10[i])
			assert_non_null(v);
		n20 += v != NULL;
	}
	assert_in_range(n20, 300, 500);
	assert_true(n20 > n10);
	/* distinct: offering again does not count again */
	assert_int_equal(agg(e, "1.5.0", "*").offered, n20);
	assert_int_equal(agg(e, "1.5.0", "region=eu").offered + agg(e, "1.5.0", "region=us").offered, n20);
	json_decref(ans);
}

static void cohort_tags_limit_the_offer(void **state)
{
	struct env *e = *state;
	json_t *ans = NULL;
	expose(e, 7, "1.5.0", 3, NULL, 10000, 1, 0, SHA_A);
	assert_non_null(checkin(e, "dev-eu", "mps2-an385", "1.2.0", "1.4.0", 3, "eu", &ans));
	assert_null(checkin(e, "dev-apac", "mps2-an385", "1.2.0", "1.4.0", 3, "apac", &ans));
	assert_null(checkin(e, "dev-untagged", "mps2-an385", "1.2.0", "1.4.0", 3, NULL, &ans));
	/* already running it: nothing */
	assert_null(checkin(e, "dev-eu", "mps2-an385", "1.2.0", "1.5.0", 3, "eu", &ans));
	json_decref(ans);
}

static void segments_expose_a_staging_group_and_a_ring(void **state)
{
	struct env *e = *state;
	struct fleet_image img[] = { { "mps2-an385", SHA_A, "application", 1000 } };
	json_t *staging = json_pack("{s[s]}", "group", "staging"), *ans = NULL;
	struct fleet_segment segs[] = { { NULL, 500, 0 }, { NULL, 10000, 0 } };
	struct fleet_exposure x = { 7, "sensor-node", "1.5.0", 3, NULL, img, 1, 1, "salt-1", 0, NULL, 0, segs, 2, NULL, 0 };
	int ring = 0;

	segs[1].cohort = staging;
	assert_int_equal(fleet_set_exposure(e->f, &x), 0);
	for (int i = 0; i < 400; i++) {
		char dev[32];
		json_t *b;
		const char *v;
		snprintf(dev, sizeof(dev), "seg-%d", i);
		b = checkin_body(dev, "mps2-an385", "1.2.0", "1.4.0", 3, NULL);
		json_object_set_new(b, "tags", json_pack("{ss}", "group", i % 4 ? "field" : "staging"));
		assert_int_equal(post(e, "/device/v1/checkin", KEY, b, &ans), 200);
		v = json_string_value(json_object_get(json_object_get(ans, "offer"), "version"));
		if (i % 4 == 0)
			assert_non_null(v); /* every staging device */
		else {
			assert_int_equal(v != NULL, fleet_cohort_slot("salt-1", dev) < 500);
			ring += v != NULL;
		}
	}
	assert_in_range(ring, 5, 40); /* ~5 % of 300 */
	json_decref(staging);
	json_decref(ans);
}

static void incompatible_devices_are_never_offered(void **state)
{
	struct env *e = *state;
	json_t *ans = NULL;
	expose(e, 7, "1.5.0", 3, "1.10.0", 10000, 1, 0, SHA_A);
	assert_string_equal(checkin(e, "ok", "mps2-an385", "1.10.0", "1.4.0", 3, "eu", &ans), "1.5.0");
	assert_string_equal(json_string_value(json_object_get(json_object_get(json_object_get(ans, "offer"), "image"), "url")),
			    "/device/v1/images/" SHA_A);
	assert_string_equal(json_string_value(json_object_get(json_object_get(ans, "offer"), "reason")), "rollout");
	assert_null(checkin(e, "other-hw", "nrf52840dk", "1.10.0", "1.4.0", 3, "eu", &ans));
	assert_null(checkin(e, "old-bl", "mps2-an385", "1.9.9", "1.4.0", 3, "eu", &ans));   /* 1.9.9 < 1.10.0 numerically */
	assert_null(checkin(e, "old-bl2", "mps2-an385", "0.99.0", "1.4.0", 3, "eu", &ans));
	assert_null(checkin(e, "high-ctr", "mps2-an385", "2.0.0", "1.4.0", 4, "eu", &ans));
	assert_int_equal(agg(e, "1.5.0", "*").offered, 1);
	json_decref(ans);
}

static void rollback_offers_the_target_to_devices_running_the_halted_release(void **state)
{
	struct env *e = *state;
	json_t *ans = NULL;
	expose(e, 6, "1.4.0", 3, NULL, 0, 0, 0, SHA_B);      /* the previous release, fully out */
	expose(e, 7, "1.5.0", 3, NULL, 10000, 1, 0, SHA_A);
	assert_string_equal(checkin(e, "dev-1", "mps2-an385", "1.2.0", "1.4.0", 3, "eu", &ans), "1.5.0");
	expose(e, 7, "1.5.0", 3, NULL, 10000, 0, 6, SHA_A);   /* halted, roll back to release 6 */
	assert_null(checkin(e, "dev-1", "mps2-an385", "1.2.0", "1.4.0", 3, "eu", &ans));
	assert_string_equal(checkin(e, "dev-2", "mps2-an385", "1.2.0", "1.5.0", 3, "eu", &ans), "1.4.0");
	assert_string_equal(json_string_value(json_object_get(json_object_get(ans, "offer"), "reason")), "rollback");
	assert_int_equal(json_integer_value(json_object_get(json_object_get(ans, "offer"), "release")), 6);
	/* a device holding a higher counter than the target cannot go back */
	assert_null(checkin(e, "dev-3", "mps2-an385", "1.2.0", "1.5.0", 4, "eu", &ans));
	json_decref(ans);
}

/* issue 15: the release stage's `deltas: {installed: N}` counts per
 * hardware variant; a device that moves is counted where it is now. */
static void versions_of_a_hardware_variant_count_only_its_devices(void **state)
{
	struct env *e = *state;
	json_t *ans = NULL, *v;

	checkin(e, "d1", "mps2-an385", "1.2.0", "1.4.0", 3, "eu", &ans);
	checkin(e, "d2", "mps2-an385", "1.2.0", "1.4.0", 3, "us", &ans);
	checkin(e, "d3", "mps2-an386", "1.2.0", "1.3.0", 3, "eu", &ans);
	checkin(e, "d4", "mps2-an386", "1.2.0", "1.4.0+7", 3, "eu", &ans);
	v = fleet_versions_of_hardware(e->f, "sensor-node", "mps2-an385");
	assert_int_equal(json_object_size(v), 1);
	assert_int_equal(json_integer_value(json_object_get(v, "1.4.0")), 2);
	json_decref(v);
	v = fleet_versions_of_hardware(e->f, "sensor-node", "mps2-an386");
	assert_int_equal(json_object_size(v), 2);
	assert_int_equal(json_integer_value(json_object_get(v, "1.3.0")), 1);
	assert_int_equal(json_integer_value(json_object_get(v, "1.4.0+7")), 1);
	json_decref(v);
	v = fleet_versions_of_hardware(e->f, "sensor-node", "never-seen");
	assert_int_equal(json_object_size(v), 0);
	json_decref(v);
	v = fleet_versions_of_hardware(e->f, "other-product", "mps2-an385");
	assert_int_equal(json_object_size(v), 0);
	json_decref(v);
	/* d3 updated: the an386 count follows it */
	checkin(e, "d3", "mps2-an386", "1.2.0", "1.4.0", 3, "eu", &ans);
	v = fleet_versions_of_hardware(e->f, "sensor-node", "mps2-an386");
	assert_null(json_object_get(v, "1.3.0"));
	assert_int_equal(json_integer_value(json_object_get(v, "1.4.0")), 1);
	json_decref(v);
	json_decref(ans);
}

/* ---- reports ------------------------------------------------------------- */

static void reports_update_aggregates_exactly(void **state)
{
	struct env *e = *state;
	json_t *ans = NULL, *list = json_array();
	struct fleet_agg a, eu, base;

	checkin(e, "d1", "mps2-an385", "1.2.0", "1.4.0", 3, "eu", &ans);
	checkin(e, "d2", "mps2-an385", "1.2.0", "1.4.0", 3, "us", &ans);
	checkin(e, "d3", "mps2-an385", "1.2.0", "1.4.0", 3, "eu", &ans);
	json_array_append_new(list, report("d1", "1.5.0", "download", 0, 0));
	json_array_append_new(list, report("d1", "1.5.0", "download", 0, 0));   /* twice: one device */
	json_array_append_new(list, report("d1", "1.5.0", "install", 0, 0));
	json_array_append_new(list, report("d1", "1.5.0", "boot_ok", 0, 0));
	json_array_append_new(list, report("d1", "1.5.0", "heartbeat", 7200, 2));
	json_array_append_new(list, report("d1", "1.5.0", "heartbeat", 3600, 1));
	json_array_append_new(list, report("d2", "1.5.0", "download", 0, 0));
	json_array_append_new(list, report("d2", "1.5.0", "boot_fail", 0, 0));
	json_array_append_new(list, report("d3", "1.5.0", "revert", 0, 0));
	json_array_append_new(list, report("d3", "1.4.0", "heartbeat", 1800, 0));
	assert_int_equal(send_reports(e, KEY, list, &ans), 200);
	assert_int_equal(json_integer_value(json_object_get(ans, "accepted")), 10);

	a = agg(e, "1.5.0", "*");
	assert_int_equal(a.downloads, 2);
	assert_int_equal(a.installs, 1);
	assert_int_equal(a.boot_ok, 1);
	assert_int_equal(a.boot_fail, 1);
	assert_int_equal(a.reverts, 1);
	assert_int_equal(a.reporting, 3);
	assert_int_equal(a.crashed, 1);
	assert_int_equal(a.crashes, 3);
	assert_true(a.device_hours == 3.0);
	assert_true(a.battery_mah == 9 * 1.5);
	assert_int_equal(a.devices, 1);           /* d1 runs 1.5.0 since boot_ok */
	assert_int_equal(agg(e, "1.4.0", "*").devices, 2);
	eu = agg(e, "1.5.0", "region=eu");
	assert_int_equal(eu.reporting, 2);
	assert_int_equal(eu.downloads, 1);
	assert_int_equal(agg(e, "1.5.0", "region=us").boot_fail, 1);
	assert_int_equal(agg(e, "1.5.0", "tier=standard").reporting, 3);
	assert_true(agg(e, "1.4.0", "*").device_hours == 0.5);
	assert_int_equal(fleet_baseline(e->f, "sensor-node", "1.5.0", NULL, "*", &base), 0);
	assert_int_equal(base.devices, 2);
	assert_int_equal(base.reporting, 1);
	{
		json_t *v = fleet_versions(e->f, "sensor-node");
		assert_int_equal(json_integer_value(json_object_get(v, "1.5.0")), 1);
		assert_int_equal(json_integer_value(json_object_get(v, "1.4.0")), 2);
		json_decref(v);
	}

	/* a second batch: distinct counters do not move, sums do */
	list = json_array();
	json_array_append_new(list, report("d1", "1.5.0", "heartbeat", 3600, 1));
	assert_int_equal(send_reports(e, KEY, list, NULL), 200);
	a = agg(e, "1.5.0", "*");
	assert_int_equal(a.reporting, 3);
	assert_int_equal(a.crashed, 1);
	assert_int_equal(a.crashes, 4);
	assert_true(a.device_hours == 4.0);
	json_decref(ans);
}

static void malformed_batches_are_rejected_and_change_nothing(void **state)
{
	struct env *e = *state;
	static const struct {
		const char *body, *msg, *dev;   /* dev: whose credential (NULL: d1) */
	} bad[] = {
		{ "{\"reports\":[{\"device\":\"d1\",\"version\":\"1.5.0\",\"event\":\"heartbeat\"},"
		  "{\"device\":\"d1\",\"version\":\"1.5.0\",\"event\":\"bot_ok\"}]}",
		  "reports[1].event: unknown event 'bot_ok'", NULL },
		{ "{\"reports\":[{\"device\":\"d1\",\"version\":\"1.5.0\",\"event\":\"heartbeat\",\"uptime_s\":-1}]}",
		  "reports[0].uptime_s", NULL },
		{ "{\"reports\":[{\"device\":\"d1\",\"version\":\"1.5.0\",\"event\":\"heartbeat\",\"crashes\":\"2\"}]}",
		  "reports[0].crashes", NULL },
		{ "{\"reports\":[{\"device\":\"d1\",\"version\":\"1.5.0\",\"event\":\"heartbeat\",\"battery_mah\":\"x\"}]}",
		  "reports[0].battery_mah", NULL },
		{ "{\"reports\":[{\"device\":\"d1\",\"version\":\"1.5.0\",\"event\":\"heartbeat\"},"
		  "{\"version\":\"1.5.0\",\"event\":\"heartbeat\"}]}",
		  "reports[1].device: missing", NULL },
		{ "{\"reports\":[{\"device\":\"d 1\",\"version\":\"1.5.0\",\"event\":\"heartbeat\"}]}",
		  "reports[0].device", NULL },
		{ "{\"reports\":[{\"device\":\"d1\",\"version\":\"one\",\"event\":\"heartbeat\"}]}",
		  "reports[0].version", NULL },
		{ "{\"reports\":[{\"device\":\"never-seen\",\"version\":\"1.5.0\",\"event\":\"heartbeat\"}]}",
		  "reports[0].device: unknown device", "never-seen" },
		{ "{\"reports\":[{\"device\":\"d1\",\"version\":\"9.9.9\",\"event\":\"heartbeat\"}]}",
		  "reports[0].version: device 'd1' was not offered 9.9.9", NULL },
		{ "{\"reports\":[{\"device\":\"d1\",\"version\":\"1.5.0\",\"event\":\"heartbeat\",\"uptime_s\":1e12}]}",
		  "reports[0].uptime_s: at most", NULL },
		{ "{\"reports\": 3}", "reports", NULL },
		{ "{\"reports\":[{\"device\":\"d1\",\"version\":\"1.5.0\",\"event\":\"heartb", "invalid JSON", NULL },
		{ "not json at all", "invalid JSON", NULL },
	};
	json_t *ans = NULL, *big;
	struct fleet_agg before, after;
	char *m1 = NULL, *m2 = NULL;
	size_t l1, l2;

	expose(e, 7, "1.5.0", 3, NULL, 10000, 1, 0, SHA_A);
	assert_string_equal(checkin(e, "d1", "mps2-an385", "1.2.0", "1.4.0", 3, "eu", &ans), "1.5.0");
	assert_int_equal(send_reports_http(e, json_pack("[o]", report("d1", "1.5.0", "heartbeat", 60, 1)), NULL), 200);
	before = agg(e, "1.5.0", "*");
	assert_int_equal(fleet_metrics_text(e->f, &m1, &l1), 0);

	for (size_t i = 0; i < OTA_ARRAY_SIZE(bad); i++) {
		struct httpc_response r;
		char *url = xasprintf("%s/device/v1/reports", e->base);
		assert_int_equal(httpc_request(&r, "POST", url, cred(e, bad[i].dev ? bad[i].dev : "d1"), "application/json",
					       bad[i].body, strlen(bad[i].body), 10000), 0);
		assert_int_equal(r.status, 400);
		if (!strstr(buf_cstr(&r.body), bad[i].msg))
			fail_msg("case %zu: '%s' does not contain '%s'", i, buf_cstr(&r.body), bad[i].msg);
		httpc_response_release(&r);
		free(url);
	}
	big = json_array();
	for (int i = 0; i < 1001; i++)
		json_array_append_new(big, report("d1", "1.5.0", "heartbeat", 60, 1));
	assert_int_equal(send_reports(e, KEY, big, &ans), 400);
	assert_non_null(strstr(httpc_json_error(ans), "at most 1000"));

	after = agg(e, "1.5.0", "*");
	assert_agg_equal(&before, &after);
	assert_int_equal(fleet_metrics_text(e->f, &m2, &l2), 0);
	/* the aggregates; the writer's own counters (last) move with the
	 * registrations of the devices the bad batches name */
	assert_non_null(strstr(m1, "# HELP otacd_fleet_rounds_total"));
	*strstr(m1, "# HELP otacd_fleet_rounds_total") = 0;
	*strstr(m2, "# HELP otacd_fleet_rounds_total") = 0;
	assert_string_equal(m1, m2);
	free(m1);
	free(m2);
	json_decref(ans);
}

static void oversized_body_is_413(void **state)
{
	struct env *e = *state;
	size_t n = (1 << 20) + 100;
	char *body = xmalloc(n);
	memset(body, ' ', n);
	body[0] = '{';
	body[n - 1] = '}';
	assert_int_equal(post_raw(e, "/device/v1/reports", KEY, body, n), 413);
	free(body);
}

static void wrong_tokens_are_401_and_change_nothing(void **state)
{
	struct env *e = *state;
	json_t *ans = NULL;
	char tok1[65], tok2[65];
	struct fleet_agg before;

	checkin(e, "d1", "mps2-an385", "1.2.0", "1.4.0", 3, "eu", &ans);
	checkin(e, "d2", "mps2-an385", "1.2.0", "1.4.0", 3, "eu", &ans);
	device_token(e, "d1", tok1);
	device_token(e, "d2", tok2);
	before = agg(e, "1.4.0", "*");

	assert_int_equal(post(e, "/device/v1/checkin", "wrong", checkin_body("d9", "mps2-an385", "1.2.0", "1.4.0", 3, "eu"), &ans), 401);
	assert_non_null(httpc_json_error(ans));
	assert_int_equal(post(e, "/device/v1/checkin", NULL, checkin_body("d9", "mps2-an385", "1.2.0", "1.4.0", 3, "eu"), NULL), 401);
	assert_int_equal(post(e, "/device/v1/checkin", tok1, checkin_body("d2", "mps2-an385", "1.2.0", "1.5.0", 3, "eu"), NULL), 401);
	assert_int_equal(send_reports(e, "wrong", json_pack("[o]", report("d1", "1.4.0", "heartbeat", 60, 1)), NULL), 401);
	assert_int_equal(send_reports(e, tok1, json_pack("[o]", report("d2", "1.4.0", "heartbeat", 60, 1)), NULL), 401);
	assert_int_equal(send_reports(e, tok1, json_pack("[oo]", report("d1", "1.4.0", "heartbeat", 60, 1),
							 report("d2", "1.4.0", "heartbeat", 60, 1)), NULL), 401);
	{
		struct fleet_agg after = agg(e, "1.4.0", "*");
		assert_agg_equal(&before, &after);
	}
	assert_int_equal(agg(e, "1.5.0", "*").devices, 0);

	/* its own token works, for check-ins and reports */
	assert_int_equal(post(e, "/device/v1/checkin", tok2, checkin_body("d2", "mps2-an385", "1.2.0", "1.4.0", 3, "eu"), NULL), 200);
	assert_int_equal(send_reports(e, tok1, json_pack("[o]", report("d1", "1.4.0", "heartbeat", 60, 1)), NULL), 200);
	assert_true(agg(e, "1.4.0", "*").device_hours > before.device_hours);
	json_decref(ans);
}

/* ---- persistence --------------------------------------------------------- */

static void aggregates_survive_close_and_reopen(void **state)
{
	struct env *e = *state;
	static const char *const versions[] = { "1.4.0", "1.5.0" };
	static const char *const cohorts[] = { "*", "region=eu", "region=us", "tier=standard" };
	struct fleet_agg before[2][4];
	json_t *ans = NULL, *list = json_array();

	expose(e, 7, "1.5.0", 3, NULL, 5000, 1, 0, SHA_A);
	for (int i = 0; i < 50; i++) {
		char dev[16];
		snprintf(dev, sizeof(dev), "p-%d", i);
		checkin(e, dev, "mps2-an385", "1.2.0", "1.4.0", 3, i % 3 ? "eu" : "us", &ans);
		json_array_append_new(list, report(dev, "1.5.0", i % 4 ? "boot_ok" : "revert", 100.0 * i, i % 5));
	}
	assert_int_equal(send_reports(e, KEY, list, NULL), 200);
	for (int v = 0; v < 2; v++)
		for (int c = 0; c < 4; c++)
			before[v][c] = agg(e, versions[v], cohorts[c]);
	assert_true(before[1][0].offered > 0);

	env_down(e);
	env_up(e);
	for (int v = 0; v < 2; v++)
		for (int c = 0; c < 4; c++) {
			struct fleet_agg after = agg(e, versions[v], cohorts[c]);
			assert_agg_equal(&before[v][c], &after);
		}
	/* the device flags came back too: a repeated report is not counted again */
	assert_int_equal(send_reports(e, KEY, json_pack("[o]", report("p-1", "1.5.0", "boot_ok", 0, 0)), NULL), 200);
	assert_int_equal(agg(e, "1.5.0", "*").boot_ok, before[1][0].boot_ok);
	json_decref(ans);
}

static void answered_reports_survive_sigkill(void **state)
{
	struct env *e = *state;
	int fds[2], port = 0;
	pid_t pid;
	json_t *ans = NULL;
	int answered = 0;
	struct fleet_agg a;

	for (int i = 0; i < 20; i++) {   /* registered before the child serves */
		char dev[16];
		snprintf(dev, sizeof(dev), "k-%d", i);
		cred(e, dev);
	}
	env_down(e); /* the child serves the same database */
	assert_int_equal(pipe(fds), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct fleet *f;
		struct devapi *d;
		struct fleet_config cfg = { .db_path = e->db, .fleet_key = KEY, .device_secret = SECRET,
					    .poll_ms = 6 * 3600 * 1000LL };
		close(fds[0]);
		if (fleet_open(&f, &cfg) < 0 || devapi_start(&d, f, "127.0.0.1:0", 1) < 0)
			_exit(1);
		port = devapi_port(d);
		if (write(fds[1], &port, sizeof(port)) != sizeof(port))
			_exit(1);
		for (;;)
			pause();
	}
	close(fds[1]);
	assert_int_equal(read(fds[0], &port, sizeof(port)), (ssize_t)sizeof(port));
	close(fds[0]);
	free(e->base);
	e->base = xasprintf("http://127.0.0.1:%d", port);
	for (int i = 0; i < 20; i++) {
		char dev[16];
		snprintf(dev, sizeof(dev), "k-%d", i);
		checkin(e, dev, "mps2-an385", "1.2.0", "1.4.0", 3, "eu", &ans);
	}
	/* batches of 20 heartbeats, one crash each (0.1 of a crash credited
	 * per 24 minutes of uptime: one per device after 10); kill right after
	 * an answer */
	for (int b = 0; b < 15; b++) {
		json_t *list = json_array();
		for (int i = 0; i < 20; i++) {
			char dev[16];
			snprintf(dev, sizeof(dev), "k-%d", i);
			json_array_append_new(list, report(dev, "1.4.0", "heartbeat", 1440, 1));
		}
		assert_int_equal(send_reports_http(e, list, NULL), 200);
		answered++;
	}
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);

	env_up(e);
	a = agg(e, "1.4.0", "*");
	assert_int_equal(a.crashes, 20);
	assert_int_equal(a.reporting, 20);
	assert_int_equal(a.crashed, 20);
	assert_int_equal(a.devices, 20);
	assert_true(a.device_hours > answered * 20 * 0.4 - 1e-6 && a.device_hours < answered * 20 * 0.4 + 1e-6);
	json_decref(ans);
}

/* ---- images and metrics --------------------------------------------------- */

struct dl {
	struct buf body;
	long status;
	char content_range[128];
};

static size_t dl_write(char *p, size_t sz, size_t n, void *ctx)
{
	struct dl *d = ctx;
	buf_put(&d->body, p, sz * n);
	return sz * n;
}

static size_t dl_header(char *p, size_t sz, size_t n, void *ctx)
{
	struct dl *d = ctx;
	if (sz * n > 15 && !strncasecmp(p, "Content-Range: ", 15))
		snprintf(d->content_range, sizeof(d->content_range), "%.*s", (int)(sz * n - 15 - 2), p + 15);
	return sz * n;
}

static void download(struct env *e, const char *sha, const char *range, const char *token, struct dl *d)
{
	CURL *c = curl_easy_init();
	struct curl_slist *h = NULL;
	char *url = xasprintf("%s/device/v1/images/%s", e->base, sha);
	char *auth;
	/* KEY stands for device d7, which the tests below offer the image */
	if (!strcmp(token, KEY)) {
		token = cred(e, "d7");
		h = curl_slist_append(h, "X-Device-Id: d7");
	}
	auth = xasprintf("Authorization: Bearer %s", token);
	memset(d, 0, sizeof(*d));
	buf_init(&d->body, BUF_NOLIMIT);
	h = curl_slist_append(h, auth);
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
	if (range)
		curl_easy_setopt(c, CURLOPT_RANGE, range);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, dl_write);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, d);
	curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, dl_header);
	curl_easy_setopt(c, CURLOPT_HEADERDATA, d);
	assert_int_equal(curl_easy_perform(c), CURLE_OK);
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &d->status);
	curl_slist_free_all(h);
	curl_easy_cleanup(c);
	free(url);
	free(auth);
}

static void image_downloads_support_ranges(void **state)
{
	struct env *e = *state;
	unsigned char data[1000];
	char sha[65], tok[65];
	int64_t size;
	struct artifact_upload *u;
	struct dl d;

	for (size_t i = 0; i < sizeof(data); i++)
		data[i] = (unsigned char)(i * 7 + 3);
	assert_int_equal(artifact_store_init(e->dir, 1 << 20), 0);
	assert_int_equal(artifact_upload_begin(&u), 0);
	assert_int_equal(artifact_upload_write(u, data, sizeof(data)), 0);
	assert_int_equal(artifact_upload_commit(u, NULL, sha, &size), 0);

	download(e, sha, "10-99", KEY, &d);
	assert_int_equal(d.status, 404); /* not an image of any release yet */
	buf_release(&d.body);
	expose(e, 7, "1.5.0", 3, NULL, 10000, 1, 0, sha);
	{
		/* served only to a device it was offered to */
		json_t *ans = NULL;
		checkin(e, "d8", "mps2-an385", "1.2.0", "1.4.0", 3, "asia", &ans);   /* outside the cohort */
		json_decref(ans);
		ans = NULL;
		download(e, sha, NULL, cred(e, "d8"), &d);   /* no X-Device-Id: 401 */
		assert_int_equal(d.status, 401);
		buf_release(&d.body);
		{
			char *q = xasprintf("%s?device=d8", sha);
			download(e, q, NULL, cred(e, "d8"), &d);
			assert_int_equal(d.status, 403);
			buf_release(&d.body);
			free(q);
		}
		assert_string_equal(checkin(e, "d7", "mps2-an385", "1.2.0", "1.4.0", 3, "eu", &ans), "1.5.0");
		json_decref(ans);
	}

	download(e, sha, NULL, KEY, &d);
	assert_int_equal(d.status, 200);
	assert_int_equal(d.body.len, sizeof(data));
	assert_memory_equal(d.body.ptr, data, sizeof(data));
	buf_release(&d.body);

	download(e, sha, "10-99", KEY, &d);
	assert_int_equal(d.status, 206);
	assert_int_equal(d.body.len, 90);
	assert_memory_equal(d.body.ptr, data + 10, 90);
	assert_string_equal(d.content_range, "bytes 10-99/1000");
	buf_release(&d.body);

	download(e, sha, "100-", KEY, &d);
	assert_int_equal(d.status, 206);
	assert_int_equal(d.body.len, 900);
	assert_memory_equal(d.body.ptr, data + 100, 900);
	assert_string_equal(d.content_range, "bytes 100-999/1000");
	buf_release(&d.body);

	download(e, sha, "1000-", KEY, &d);
	assert_int_equal(d.status, 416);
	assert_string_equal(d.content_range, "bytes */1000");
	buf_release(&d.body);

	download(e, sha, NULL, "wrong", &d);
	assert_int_equal(d.status, 401);
	buf_release(&d.body);
	{
		/* a device token names its device */
		char *q = xasprintf("%s?device=d7", sha);
		device_token(e, "d7", tok);
		download(e, q, "0-9", tok, &d);
		assert_int_equal(d.status, 206);
		assert_memory_equal(d.body.ptr, data, 10);
		buf_release(&d.body);
		free(q);
	}
	env_down(e); /* no request may still hold a reader */
	artifact_store_shutdown();
}

static void metrics_expose_the_counters(void **state)
{
	struct env *e = *state;
	json_t *ans = NULL;
	struct httpc_response r;
	char *url = xasprintf("%s/metrics", e->base);

	checkin(e, "m1", "mps2-an385", "1.2.0", "1.4.0", 3, "eu", &ans);
	assert_int_equal(send_reports(e, KEY, json_pack("[o]", report("m1", "1.4.0", "heartbeat", 3600, 12)), NULL), 200);
	assert_int_equal(httpc_request(&r, "GET", url, NULL, NULL, NULL, 0, 10000), 0);
	assert_int_equal(r.status, 200);
	assert_non_null(strstr(buf_cstr(&r.body), "# TYPE otacd_fleet_crashes_total counter\n"));
	assert_non_null(strstr(buf_cstr(&r.body),
			       "otacd_fleet_crashes_total{product=\"sensor-node\",version=\"1.4.0\",cohort=\"*\"} 12\n"));
	assert_non_null(strstr(buf_cstr(&r.body),
			       "otacd_fleet_devices{product=\"sensor-node\",version=\"1.4.0\",cohort=\"region=eu\"} 1\n"));
	assert_non_null(strstr(buf_cstr(&r.body),
			       "otacd_fleet_device_hours_total{product=\"sensor-node\",version=\"1.4.0\",cohort=\"*\"} 1\n"));
	httpc_response_release(&r);

	/* not public: the fleet key is needed */
	devapi_stop(e->api);
	assert_int_equal(devapi_start(&e->api, e->f, "127.0.0.1:0", 0), 0);
	free(url);
	url = xasprintf("http://127.0.0.1:%d/metrics", devapi_port(e->api));
	assert_int_equal(httpc_request(&r, "GET", url, NULL, NULL, NULL, 0, 10000), 0);
	assert_int_equal(r.status, 401);
	httpc_response_release(&r);
	assert_int_equal(httpc_request(&r, "GET", url, KEY, NULL, NULL, 0, 10000), 0);
	assert_int_equal(r.status, 200);
	httpc_response_release(&r);
	free(url);
	json_decref(ans);
}

static void malformed_checkins_name_the_field(void **state)
{
	struct env *e = *state;
	json_t *ans = NULL, *b;

	b = checkin_body("d1", "mps2-an385", "1.2", "1.4.0", 3, "eu");
	assert_int_equal(post(e, "/device/v1/checkin", KEY, b, &ans), 400);
	assert_non_null(strstr(httpc_json_error(ans), "bootloader"));
	json_decref(ans);
	ans = NULL;
	b = checkin_body("d1", "mps2-an385", "1.2.0", "1.4.0", 3, "eu");
	json_object_set_new(b, "security_counter", json_string("3"));
	assert_int_equal(post(e, "/device/v1/checkin", KEY, b, &ans), 400);
	assert_non_null(strstr(httpc_json_error(ans), "security_counter"));
	json_decref(ans);
	ans = NULL;
	b = checkin_body("d1", "mps2-an385", "1.2.0", "1.4.0", 3, "eu");
	json_object_del(b, "product");
	assert_int_equal(post(e, "/device/v1/checkin", KEY, b, &ans), 400);
	assert_non_null(strstr(httpc_json_error(ans), "product: missing"));
	json_decref(ans);
	ans = NULL;
	assert_int_equal(agg(e, "1.4.0", "*").devices, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(checkin_without_exposure_offers_nothing, setup, teardown),
		cmocka_unit_test_setup_teardown(raising_the_percentage_keeps_every_offered_device_offered, setup, teardown),
		cmocka_unit_test_setup_teardown(cohort_tags_limit_the_offer, setup, teardown),
		cmocka_unit_test_setup_teardown(segments_expose_a_staging_group_and_a_ring, setup, teardown),
		cmocka_unit_test_setup_teardown(incompatible_devices_are_never_offered, setup, teardown),
		cmocka_unit_test_setup_teardown(rollback_offers_the_target_to_devices_running_the_halted_release, setup, teardown),
		cmocka_unit_test_setup_teardown(reports_update_aggregates_exactly, setup, teardown),
		cmocka_unit_test_setup_teardown(versions_of_a_hardware_variant_count_only_its_devices, setup, teardown),
		cmocka_unit_test_setup_teardown(malformed_batches_are_rejected_and_change_nothing, setup, teardown),
		cmocka_unit_test_setup_teardown(malformed_checkins_name_the_field, setup, teardown),
		cmocka_unit_test_setup_teardown(oversized_body_is_413, setup, teardown),
		cmocka_unit_test_setup_teardown(wrong_tokens_are_401_and_change_nothing, setup, teardown),
		cmocka_unit_test_setup_teardown(aggregates_survive_close_and_reopen, setup, teardown),
		cmocka_unit_test_setup_teardown(answered_reports_survive_sigkill, setup, teardown),
		cmocka_unit_test_setup_teardown(image_downloads_support_ranges, setup, teardown),
		cmocka_unit_test_setup_teardown(metrics_expose_the_counters, setup, teardown),
	};
	httpc_global_init();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
