/*
 * test_admission.c - check-in admission (issue 15, thundering-herd control;
 * docs/delivery.md, "Admission"): a real otacd with a small
 * device_checkin_capacity, spoken to over HTTP and by otacd-fleetsim
 * starting many devices at once; and libotadev honouring the server's turn.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../common/httpc.h"
#include "../device/otadev.h"
#include "devharness.h"
#include "harness.h"

/* The value of the unlabelled series name in the device API's /metrics. */
static double metric(struct daemon *d, const char *name)
{
	char *text = h_device_metrics(d, NULL), *key = xasprintf("\n%s ", name);
	char *p = strstr(text, key);
	double x = p ? strtod(p + strlen(key), NULL) : -1;
	free(key);
	free(text);
	return x;
}

/* One check-in as device id with its credential, naming turn when it is
 * not NULL (its JSON text, as a device would); the raw answer in *r. */
static void checkin_turn_raw(struct daemon *d, const char *id, const char *cred, const char *turn,
			     struct httpc_response *r)
{
	char *url = xasprintf("%s/device/v1/checkin", d->device_url);
	char *body = xasprintf("{\"device\":\"%s\",\"product\":\"fw\",\"hardware\":\"mps2-an385\",\"bootloader\":\"1.2.0\","
			       "\"version\":\"1.0.0\",\"security_counter\":0,\"slot\":\"confirmed\"%s%s}", id,
			       turn ? ",\"turn\":" : "", turn ? turn : "");
	assert_int_equal(httpc_request(r, "POST", url, cred, "application/json", body, strlen(body), 30000), 0);
	free(body);
	free(url);
}

static void checkin_raw(struct daemon *d, const char *id, const char *cred, struct httpc_response *r)
{
	checkin_turn_raw(d, id, cred, NULL, r);
}

static void free_creds(char **c)
{
	for (size_t i = 0; c && c[i]; i++)
		free(c[i]);
	free(c);
}

/* Over capacity a check-in is 503 with Retry-After and the device's turn,
 * which moves later with the backlog; reports are not held back; and the
 * counters say what was admitted and deferred. */
static void checkins_over_capacity_get_503_with_a_turn_that_grows_with_the_backlog(void **state)
{
	struct daemon d;
	struct httpc_response r = { 0 };
	char **creds, *ra = NULL;
	json_t *ans;
	int64_t last = 0;

	(void)state;
	h_init(&d, "device_checkin_capacity: 1\ndevice_register_burst: 1000\n");
	d.device_listen = h_free_listen();
	assert_int_equal(h_start(&d, NULL), 0);
	assert_int_equal((int)metric(&d, "otacd_devapi_checkin_capacity"), 1);
	creds = h_register_devices(&d, "dev", 6);

	checkin_raw(&d, "dev-0000", creds[0], &r); /* the bucket's one token */
	assert_int_equal(r.status, 200);
	httpc_response_release(&r);
	for (int i = 1; i < 6; i++) {
		char id[32];
		snprintf(id, sizeof(id), "dev-%04d", i);
		checkin_raw(&d, id, creds[i], &r);
		assert_int_equal(r.status, 503);
		assert_int_equal(httpc_response_header(&ra, &r, "Retry-After"), 0);
		assert_true(atoi(ra) >= 1);
		free(ra);
		ans = json_loadb(r.body.ptr, r.body.len, 0, NULL);
		assert_non_null(ans);
		assert_true(json_is_integer(json_object_get(ans, "retry_after_ms")));
		assert_true(json_is_integer(json_object_get(ans, "retry_window_ms")));
		assert_true(json_is_number(json_object_get(ans, "time_scale")));
		/* each turn is one 1/C after the last: the backlog's length */
		assert_true(json_integer_value(json_object_get(ans, "retry_after_ms")) > last);
		last = json_integer_value(json_object_get(ans, "retry_after_ms"));
		assert_null(json_object_get(ans, "offer")); /* nothing said about the offer */
		json_decref(ans);
		httpc_response_release(&r);
	}
	assert_true(last >= 4000);
	/* a hostile turn (far future, the longest number read, 0) is no turn:
	 * the device goes to the end of the queue like any newcomer */
	{
		static const char *const hostile[] = { "999999999999999", "99999999999999999999", "0", "-5" };
		for (size_t i = 0; i < sizeof(hostile) / sizeof(hostile[0]); i++) {
			checkin_turn_raw(&d, "dev-0001", creds[1], hostile[i], &r);
			assert_int_equal(r.status, 503);
			ans = json_loadb(r.body.ptr, r.body.len, 0, NULL);
			assert_non_null(ans);
			assert_true(json_integer_value(json_object_get(ans, "retry_after_ms")) > last);
			last = json_integer_value(json_object_get(ans, "retry_after_ms"));
			json_decref(ans);
			httpc_response_release(&r);
		}
	}
	/* reports are never deferred */
	assert_int_equal(h_dev_post(&d, "/device/v1/reports", creds[0],
				    json_pack("{s[{ss ss ss}]}", "reports", "device", "dev-0000", "version", "1.0.0", "event",
					      "heartbeat"),
				    NULL),
			 200);
	assert_int_equal((int)metric(&d, "otacd_devapi_checkins_admitted_total"), 1);
	assert_int_equal((int)metric(&d, "otacd_devapi_checkins_deferred_total"), 9);
	assert_int_equal((int)metric(&d, "otacd_device_checkins_total"), 10);
	assert_true(metric(&d, "otacd_devapi_checkin_backlog_seconds") > 0);
	free_creds(creds);
	h_cleanup(&d);
}

/* Without a capacity (the default) nothing is deferred. */
static void without_a_capacity_no_checkin_is_deferred(void **state)
{
	struct daemon d;
	struct httpc_response r = { 0 };
	char **creds;

	(void)state;
	h_init(&d, NULL);
	d.device_listen = h_free_listen();
	assert_int_equal(h_start(&d, NULL), 0);
	creds = h_register_devices(&d, "dev", 20);
	for (int i = 0; i < 20; i++) {
		char id[32];
		snprintf(id, sizeof(id), "dev-%04d", i);
		checkin_raw(&d, id, creds[i], &r);
		assert_int_equal(r.status, 200);
		httpc_response_release(&r);
	}
	/* a wrong credential: refused, taken but not served */
	checkin_raw(&d, "dev-0000", creds[1], &r);
	assert_int_equal(r.status, 401);
	httpc_response_release(&r);
	assert_int_equal((int)metric(&d, "otacd_devapi_checkin_capacity"), 0);
	assert_int_equal((int)metric(&d, "otacd_devapi_checkins_admitted_total"), 20);
	assert_int_equal((int)metric(&d, "otacd_devapi_checkins_deferred_total"), 0);
	/* one counter of check-ins taken: served, deferred and refused */
	assert_int_equal((int)metric(&d, "otacd_device_checkins_total"), 21);
	free_creds(creds);
	h_cleanup(&d);
}

static int64_t st_int(json_t *st, const char *k)
{
	json_t *v = json_object_get(st, k);
	if (!json_is_integer(v))
		fail_msg("stats: no integer '%s'", k);
	return json_integer_value(v);
}

/* A herd run: what it was asked, what the devices (fleetsim's stats) and
 * otacd's counters said. */
struct herd {
	const char *engine;          /* fleetsim's --engine */
	const char *concurrency;     /* its --concurrency */
	int n, cap, scale;
	json_t *st;                  /* fleetsim's stats */
	double admitted, deferred, peak, burst;
};

/*
 * Power restored in a region: otacd-fleetsim (engine h->engine) starts
 * h->n devices at once (--herd) against a real otacd at capacity h->cap,
 * time scale h->scale; the run ends once every device was served.  Fills
 * the stats and otacd's admission counters, read before otacd stops.
 */
static void herd_run(struct herd *h)
{
	char scale_text[16];
	const char *const args[] = { "--time-scale", scale_text, NULL };
	struct daemon d;
	/* no flaky devices: a failed request would poll again a poll interval later */
	static const char steady[] = "{\"default\": {\"crash_rate\": 0, \"boot_fail_rate\": 0, \"revert_rate\": 0},"
				     " \"silent\": 0, \"flaky\": 0}";
	char *cfg, *bin, *log, *key, *stats, *profile, devices[16], dur[32];
	pid_t sim;
	double bound_ms = 1000.0 * h->n / h->cap * 1.5 + 2000;

	snprintf(scale_text, sizeof(scale_text), "%d", h->scale);
	cfg = xasprintf("device_checkin_capacity: %d\ndevice_register_burst: 100000\ndevice_register_rate: 100000\n",
			h->cap);
	h_init(&d, cfg);
	free(cfg);
	d.device_listen = h_free_listen();
	assert_int_equal(h_start(&d, args), 0);
	key = h_ec_keypair(d.dir);
	profile = xasprintf("%s/profile.json", d.dir);
	assert_int_equal(ota_write_file_atomic(profile, steady, strlen(steady), 0644), 0);
	bin = h_bin("otacd-fleetsim");
	log = xasprintf("%s/sim.log", d.dir);
	stats = xasprintf("%s/stats.json", d.dir);
	snprintf(devices, sizeof(devices), "%d", h->n);
	/* real seconds: the bound is n/cap otacd seconds, scaled; a minute
	 * more for a loaded machine (the run ends once the herd is served) */
	snprintf(dur, sizeof(dur), "%.0f", bound_ms / 1000.0 / h->scale + 60);
	{
		char *argv[] = { bin, "--engine", (char *)h->engine, "--herd", "--url", d.device_url, "--devices", devices,
				 "--seed", "7", "--profile", profile, "--key", key, "--fleet-key", d.fleet_key,
				 "--product", "fw", "--start-version", "1.0.0", "--report-every", "24h",
				 "--concurrency", (char *)h->concurrency, "--duration", dur, "--stats", stats, NULL };
		sim = dh_spawn(log, argv);
	}
	h->st = h_fleetsim_stats(sim, stats, log);
	h->admitted = metric(&d, "otacd_devapi_checkins_admitted_total");
	h->deferred = metric(&d, "otacd_devapi_checkins_deferred_total");
	h->peak = metric(&d, "otacd_devapi_checkins_admitted_peak_second");
	h->burst = metric(&d, "otacd_devapi_checkin_burst");
	free(key);
	free(profile);
	free(bin);
	free(log);
	free(stats);
	h_cleanup(&d);
}

/*
 * What both engines must show of a herd (docs/delivery.md, "Admission"):
 * every device served, each admitted exactly once (otacd admitted N
 * check-ins and N devices were served), no failed request (no error
 * storm: a deferral is not a failure), the devices saw exactly the
 * deferrals otacd made, none deferred more than max_deferrals times, no
 * otacd second over capacity plus the bucket's depth, and the last device
 * served within D/C plus the window (D the deferrals: each is one turn,
 * 1/C apart; or (N - depth)/C when fewer came back than that: every
 * admission past the depth takes 1/C too) plus slack real seconds for the
 * requests' way.
 */
static void herd_check(const struct herd *h, int max_deferrals, double slack_real_s)
{
	json_t *st = h->st;
	int64_t deferred = st_int(st, "checkins_deferred"), last = st_int(st, "served_last_ms");
	double turns = (double)deferred > h->n - h->burst ? (double)deferred : h->n - h->burst;
	double bound_ms = 1000.0 * turns / h->cap + 2 * 250.0 * h->scale + 1000.0 * slack_real_s * h->scale;

	if (st_int(st, "served") != h->n)
		fail_msg("%s: %d devices, %lld served", h->engine, h->n, (long long)st_int(st, "served"));
	assert_int_equal((int64_t)h->admitted, h->n);
	if (st_int(st, "requests_failed") != 0)
		fail_msg("%s: %lld requests failed (%lld deferred)", h->engine, (long long)st_int(st, "requests_failed"),
			 (long long)deferred);
	assert_true(deferred > 0);
	assert_int_equal((int64_t)h->deferred, deferred);
	if (st_int(st, "deferrals_max") > max_deferrals)
		fail_msg("%s: a device was deferred %lld times (%lld deferrals for %d devices, last served at %lld ms)",
			 h->engine, (long long)st_int(st, "deferrals_max"), (long long)deferred, h->n, (long long)last);
	/* GCRA: at most C*T + depth + 1 in any T seconds */
	assert_true(h->burst >= 1 && h->burst <= h->cap * h->scale);
	if (h->peak > h->cap + h->burst + 1)
		fail_msg("%s: an otacd second served %.0f check-ins, over capacity %d plus the bucket's depth %.0f", h->engine,
			 h->peak, h->cap, h->burst);
	assert_true(h->peak >= 1);
	if ((double)last > bound_ms)
		fail_msg("%s: the last device was served %lld otacd ms after the herd, over the bound %.0f ms", h->engine,
			 (long long)last, bound_ms);
	print_message("%s: herd of %d at capacity %d/s (depth %.0f): last served at %lld ms (bound %.0f, N/C %d), %lld "
		      "deferrals, at most %lld for one device, peak %.0f in one otacd second\n",
		      h->engine, h->n, h->cap, h->burst, (long long)last, bound_ms, 1000 * h->n / h->cap,
		      (long long)deferred, (long long)st_int(st, "deferrals_max"), h->peak);
}

/* The device model's herd (fast: the most devices): served at capacity,
 * every device within the bound, few turns missed. */
static void a_herd_is_served_at_capacity_and_every_device_within_the_bound(void **state)
{
	struct herd h = { .engine = "model", .concurrency = "256", .n = dh_env_count("ADMISSION_DEVICES", 1200),
			  .cap = dh_env_count("ADMISSION_CAPACITY", 40), .scale = dh_env_count("ADMISSION_SCALE", 5) };

	(void)state;
	herd_run(&h);
	herd_check(&h, 4, 3.0);
	/* D itself stays near N: few turns missed */
	if (st_int(h.st, "checkins_deferred") > h.n + h.n / 2)
		fail_msg("%lld deferrals for %d devices: too many turns missed",
			 (long long)st_int(h.st, "checkins_deferred"), h.n);
	json_decref(h.st);
}

/*
 * The same herd on libotadev, the code a device runs (--engine core): its
 * state machine takes each 503 with a turn as a deferral and comes back in
 * the turn's window; fleetsim counts those as deferrals, not failed
 * requests; and every device is admitted exactly once.  Bounds are loose
 * (a thread per device in flight; ASan on two cores): at most eight
 * deferrals for a device, five real seconds of slack.
 */
static void libotadev_herd_is_admitted_once_per_device_and_no_request_fails(void **state)
{
	/* 64 workers (a thread each): enough to keep the capacity busy, few
	 * enough for ASan on two cores */
	struct herd h = { .engine = "core", .concurrency = "64", .n = dh_env_count("ADMISSION_CORE_DEVICES", 600),
			  .cap = dh_env_count("ADMISSION_CORE_CAPACITY", 30), .scale = dh_env_count("ADMISSION_SCALE", 5) };

	(void)state;
	herd_run(&h);
	herd_check(&h, 8, 5.0);
	json_decref(h.st);
}

/* ---- libotadev honours the turn ------------------------------------------------ */

/* A scripted update server and clock for the device core. */
static struct {
	uint64_t now;
	uint32_t random;
	int status;
	const char *answer;
	char sent[2048];             /* the last request's body */
} srv;

static int s_http(void *ctx, const struct otadev_http_req *rq, struct otadev_http_resp *rs)
{
	size_t n = strlen(srv.answer);
	(void)ctx;
	snprintf(srv.sent, sizeof(srv.sent), "%.*s", (int)rq->body_len, rq->body ? rq->body : "");
	if (n > rs->cap)
		return -1;
	memcpy(rs->body, srv.answer, n);
	rs->len = n;
	rs->status = srv.status;
	return 0;
}

static uint64_t s_now(void *ctx)
{
	(void)ctx;
	return srv.now;
}

static uint32_t s_random(void *ctx)
{
	(void)ctx;
	return srv.random;
}

static const struct otadev_hooks SHOOKS = { .http = s_http, .now_ms = s_now, .random = s_random };

static const struct otadev_config SCFG = { .device = "dev-0001", .credential = "c", .product = "fw",
					    .hardware = "mps2-an385", .bootloader = "1.2.0", .poll_ms = 600000,
					    .backoff_base_ms = 1000, .backoff_max_ms = 60000 };

/* An idle device that has its record (no init: no flash needed for a check-in). */
static void idle_device(struct otadev *d)
{
	memset(d, 0, sizeof(*d));
	d->h = &SHOOKS;
	d->cfg = &SCFG;
	memcpy(d->rec.version, "1.0.0", 6);
	memset(&srv, 0, sizeof(srv));
}

static void step_at(struct otadev *d, uint64_t now, int status, const char *answer)
{
	uint32_t wait;
	srv.now = now;
	srv.status = status;
	srv.answer = answer;
	srv.sent[0] = 0;
	assert_int_equal(otadev_step(d, &wait), 0);
}

/* A 503 with a turn: not an error; the device comes back at a moment in
 * the turn's window (real ms through the time scale), names the turn,
 * ignores a push nudge before it, and forgets it once served. */
static void libotadev_comes_back_at_its_turn_with_full_jitter_over_the_window(void **state)
{
	struct otadev d;

	(void)state;
	idle_device(&d);
	srv.random = 600;
	step_at(&d, 100, 503, "{\"error\":\"busy\",\"turn\":9000,\"retry_after_ms\":4000,\"retry_window_ms\":1000,"
			      "\"time_scale\":2.0}");
	assert_int_equal(d.errors, 0);
	assert_int_equal(d.n_deferred, 1);
	assert_int_equal(d.next_checkin, 100 + (4000 + 600) / 2);
	otadev_nudge(&d, 0); /* a push hint cannot bring it forward */
	assert_int_equal(d.next_checkin, 2400);
	step_at(&d, 1000, 200, "{}"); /* not yet: nothing sent */
	assert_string_equal(srv.sent, "");
	step_at(&d, 2400, 200, "{\"now\":9100,\"time_scale\":2.0,\"next_poll_ms\":1000,\"offer\":null}");
	assert_non_null(strstr(srv.sent, ",\"turn\":9000}"));
	assert_int_equal(d.turn, 0);
	assert_int_equal(d.next_checkin, 2400 + 500);
	/* the window is drawn over: another draw, another moment in it */
	srv.random = 999;
	step_at(&d, 2900, 503, "{\"turn\":1,\"retry_after_ms\":0,\"retry_window_ms\":1000,\"time_scale\":1}");
	assert_int_equal(d.next_checkin, 2900 + 999);
}

/* A 503 without a turn, or with a hostile one, is an error (exponential
 * backoff, full jitter) or capped: never a wait past the poll interval. */
static void libotadev_treats_a_503_without_a_sane_turn_as_an_error(void **state)
{
	struct otadev d;
	static const char *const bad[] = {
		"{\"error\":\"overloaded\"}", "{\"retry_after_ms\":-5}", "{\"retry_after_ms\":\"soon\"}",
		"{\"retry_after_ms\":10,\"time_scale\":0}", "[1]", "not json",
	};

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		idle_device(&d);
		srv.random = 12345;
		step_at(&d, 100, 503, bad[i]);
		assert_int_equal(d.errors, 1);
		assert_int_equal(d.n_deferred, 0);
		assert_true(d.next_checkin < 100 + 2000); /* backoff: within base * 2 */
	}
	idle_device(&d);
	step_at(&d, 100, 503, "{\"turn\":1,\"retry_after_ms\":999999999999,\"time_scale\":1}");
	assert_int_equal(d.errors, 0);
	assert_int_equal(d.next_checkin, 100 + SCFG.poll_ms);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(checkins_over_capacity_get_503_with_a_turn_that_grows_with_the_backlog),
		cmocka_unit_test(without_a_capacity_no_checkin_is_deferred),
		cmocka_unit_test(a_herd_is_served_at_capacity_and_every_device_within_the_bound),
		cmocka_unit_test(libotadev_herd_is_admitted_once_per_device_and_no_request_fails),
		cmocka_unit_test(libotadev_comes_back_at_its_turn_with_full_jitter_over_the_window),
		cmocka_unit_test(libotadev_treats_a_503_without_a_sane_turn_as_an_error),
	};
	cmocka_set_test_filter(getenv("X_ONLY"));
	return cmocka_run_group_tests_name("admission", tests, NULL, NULL);
}
