/*
 * test_updsrv.c - the `http` update-server adapter against an external
 * update server on loopback (a small libmicrohttpd server in this test
 * that speaks the control API of docs/update-server.md): what otacd PUTs,
 * with which idempotency keys and token, and a whole rollout driven by the
 * metrics it serves.
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
#include <microhttpd.h>
#include <pthread.h>

#include "../common/httpc.h"
#include "../orchestrator/updsrv.h"
#include "harness.h"

#define SERVER_TOKEN "update-server-token-0123456789"

/* What the fake server saw. */
static struct {
	pthread_mutex_t lock;
	json_t *puts;         /* [{path, key, body}] */
	json_t *exposures;    /* path -> body (the latest) */
	int unauthorized;
	int metrics_calls;
} seen = { PTHREAD_MUTEX_INITIALIZER, NULL, NULL, 0, 0 };

struct upload {
	struct buf body;
};

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, const char *text)
{
	struct MHD_Response *r = MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_MUST_COPY);
	enum MHD_Result rc;
	MHD_add_response_header(r, "Content-Type", "application/json");
	rc = MHD_queue_response(c, status, r);
	MHD_destroy_response(r);
	return rc;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url, const char *method,
			      const char *version, const char *data, size_t *size, void **con_cls)
{
	struct upload *u = *con_cls;
	const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");

	(void)cls;
	(void)version;
	if (!u) {
		u = xcalloc(1, sizeof(*u));
		buf_init(&u->body, 1 << 20);
		*con_cls = u;
		return MHD_YES;
	}
	if (*size) {
		buf_put(&u->body, data, *size);
		*size = 0;
		return MHD_YES;
	}
	if (!auth || strcmp(auth, "Bearer " SERVER_TOKEN) != 0) {
		pthread_mutex_lock(&seen.lock);
		seen.unauthorized++;
		pthread_mutex_unlock(&seen.lock);
		return reply(c, 401, "{\"error\":\"bad token\"}");
	}
	if (!strcmp(method, "PUT")) {
		const char *key = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Idempotency-Key");
		json_t *body = json_loadb(u->body.ptr ? u->body.ptr : "", u->body.len, 0, NULL);
		pthread_mutex_lock(&seen.lock);
		json_array_append_new(seen.puts, json_pack("{ss ss? sO?}", "path", url, "key", key, "body", body));
		json_object_set(seen.exposures, url, body ? body : json_null());
		pthread_mutex_unlock(&seen.lock);
		json_decref(body);
		return reply(c, 200, "{}");
	}
	if (!strcmp(url, "/control/v1/metrics")) {
		/* a healthy canary: 500 devices booted, none crashed, and 50
		 * more at every look (a step needs boots of its own) */
		char text[512];
		int n;
		pthread_mutex_lock(&seen.lock);
		n = 500 + 50 * seen.metrics_calls++;
		pthread_mutex_unlock(&seen.lock);
		snprintf(text, sizeof(text), "{\"canary\": {\"devices\": %d, \"offered\": %d, \"boot_ok\": %d, \"reporting\": %d,"
			 " \"device_hours\": 3000}, \"baseline\": {\"devices\": 9500, \"reporting\": 9500,"
			 " \"device_hours\": 57000}}", n, n, n, n);
		return reply(c, 200, text);
	}
	return reply(c, 404, "{\"error\":\"no such path\"}");
}

static void done(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
	struct upload *u = *con_cls;
	(void)cls;
	(void)c;
	(void)toe;
	if (u) {
		buf_release(&u->body);
		free(u);
	}
}

static struct MHD_Daemon *server_start(int *port)
{
	struct MHD_Daemon *d;
	const union MHD_DaemonInfo *info;

	if (!seen.puts) {
		seen.puts = json_array();
		seen.exposures = json_object();
	}
	d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION, 0, NULL, NULL, handle,
			     NULL, MHD_OPTION_NOTIFY_COMPLETED, done, NULL, MHD_OPTION_END);
	assert_non_null(d);
	info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
	*port = info->port;
	return d;
}

static int puts_with_key_prefix(const char *prefix)
{
	size_t i;
	json_t *x;
	int n = 0;
	pthread_mutex_lock(&seen.lock);
	json_array_foreach(seen.puts, i, x)
		if (json_string_value(json_object_get(x, "key")) &&
		    !strncmp(json_string_value(json_object_get(x, "key")), prefix, strlen(prefix)))
			n++;
	pthread_mutex_unlock(&seen.lock);
	return n;
}

/* Copies of what the server saw (never assert while holding the lock:
 * a failed assertion would leave it held). */
static json_t *seen_exposure(const char *path)
{
	json_t *x;
	pthread_mutex_lock(&seen.lock);
	x = json_deep_copy(json_object_get(seen.exposures, path));
	pthread_mutex_unlock(&seen.lock);
	return x;
}

static json_t *seen_puts(void)
{
	json_t *x;
	pthread_mutex_lock(&seen.lock);
	x = json_deep_copy(seen.puts);
	pthread_mutex_unlock(&seen.lock);
	return x;
}

static void adapter_puts_desired_state_with_token_and_idempotency_key(void **state)
{
	int port;
	struct MHD_Daemon *d = server_start(&port);
	char *url = xasprintf("http://127.0.0.1:%d", port);
	struct updsrv *us = NULL;
	struct fleet_agg canary, base;
	json_t *x = json_pack("{sI ss ss sI ss s[{ss ss sI ss}] sb ss s[{so si}] sI sI}", "release", (json_int_t)7,
			      "product", "fw", "version", "1.5.0", "security_counter", (json_int_t)3, "min_bootloader",
			      "1.2.0", "images", "hardware", "mps2-an385", "sha256",
			      "0000000000000000000000000000000000000000000000000000000000000000", "size", (json_int_t)100,
			      "type", "application", "active", 1, "salt", "abcdef0123456789", "segments", "cohort",
			      json_null(), "bp", 100, "rollback_to", (json_int_t)0, "seq", (json_int_t)4);
	json_t *exp;
	int before_unauth;

	(void)state;
	httpc_global_init();
	assert_int_equal(updsrv_http(&us, url, SERVER_TOKEN), 0);
	assert_int_equal(us->apply(us, x), 0);
	assert_int_equal(puts_with_key_prefix("7-4-publish"), 1);
	assert_int_equal(puts_with_key_prefix("7-4"), 2);
	exp = seen_exposure("/control/v1/releases/7/exposure");
	assert_string_equal(json_string_value(json_object_get(exp, "state")), "active");
	assert_int_equal(json_integer_value(json_object_get(json_array_get(json_object_get(exp, "segments"), 0), "bp")), 100);
	json_decref(exp);
	exp = seen_exposure("/control/v1/releases/7");
	assert_string_equal(json_string_value(json_object_get(exp, "version")), "1.5.0");
	json_decref(exp);
	/* metrics come back as aggregates */
	assert_int_equal(us->metrics(us, "fw", "1.5.0", "*", "1.4.0", &canary, &base), 0);
	assert_int_equal(canary.boot_ok, 500);
	assert_int_equal(base.reporting, 9500);
	us->free(us);
	/* a wrong token is an error, not a silent success */
	assert_int_equal(updsrv_http(&us, url, "wrong-token-wrong-token"), 0);
	assert_true(us->apply(us, x) < 0);
	pthread_mutex_lock(&seen.lock);
	before_unauth = seen.unauthorized;
	pthread_mutex_unlock(&seen.lock);
	assert_true(before_unauth >= 1);
	us->free(us);
	json_decref(x);
	free(url);
	MHD_stop_daemon(d);
}

static void rollout_through_an_external_update_server_survives_a_restart(void **state)
{
	struct daemon dm;
	struct buf out = BUF_INIT;
	int port;
	struct MHD_Daemon *srv = server_start(&port);
	const char *const args[] = { "--local-agents", "2", "--time-scale", "3600", NULL };
	char *cfg, *y;
	int64_t run;
	int before;

	(void)state;
	h_init(&dm, NULL);
	assert_int_equal(h_sh(&out, "cd %s && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out key.pem",
			      dm.dir), 0);
	cfg = xasprintf("keys:\n  test: { spec: %s/key.pem }\nupdate_server: http\nupdate_server_url: http://127.0.0.1:%d\n"
			"update_server_token: " SERVER_TOKEN "\n", dm.dir, port);
	dm.config = xasprintf("%s/config.yml", dm.dir);
	ota_write_file_atomic(dm.config, cfg, strlen(cfg), 0600);
	assert_int_equal(h_start(&dm, args), 0);
	assert_null(dm.device_url);   /* no built-in device API with an external server */
	y = xstrdup("name: ext\nstages:\n"
		    "  - { name: build, steps: [ { run: 'head -c 2000 /dev/zero > app.bin' } ],"
		    " artifacts: [ { path: app.bin, type: application, hardware: mps2-an385 } ] }\n"
		    "  - { name: release, kind: release, needs: [build], version: \"2.0.0\", security_counter: 1, key: test }\n"
		    "  - name: canary\n    kind: rollout\n    needs: [release]\n"
		    "    steps: [ {percent: 5, hold: 2h}, {percent: 100, hold: 2h} ]\n    gates: [boots]\n"
		    "gates:\n  boots: { metric: boot_success_rate, min: 0.9, min_devices: 100 }\n");
	run = h_trigger(&dm, y);
	/* kill it mid-walk, once the 5 % step was sent */
	for (int waited = 0; waited < 30000 && !puts_with_key_prefix("1-"); waited += 50)
		h_msleep(50);
	assert_true(puts_with_key_prefix("1-") > 0);
	h_kill(&dm, SIGKILL);
	{
		json_t *all = seen_puts();
		before = (int)json_array_size(all);
		json_decref(all);
	}
	assert_int_equal(h_start(&dm, args), 0);
	assert_string_equal(h_wait_run(&dm, run, 60000), "passed");
	{
		json_t *all = seen_puts();
		int after = (int)json_array_size(all);
		json_decref(all);
		assert_true(after > before);
	}
	{
		/* the last exposure is the whole fleet; every PUT carried a key */
		json_t *exp = seen_exposure("/control/v1/releases/1/exposure"), *all = seen_puts(), *x;
		size_t i;
		assert_int_equal(json_integer_value(json_object_get(json_array_get(json_object_get(exp, "segments"), 0), "bp")),
				 10000);
		int with_gen = 0;
		json_array_foreach(all, i, x) {
			json_t *seg = json_array_get(json_object_get(json_object_get(x, "body"), "segments"), 0);
			assert_non_null(json_string_value(json_object_get(x, "key")));
			/* a step's segment names its step, for the step's own metrics */
			with_gen += json_integer_value(json_object_get(seg, "gen")) > 0;
		}
		assert_true(with_gen > 0);
		json_decref(exp);
		json_decref(all);
	}
	h_cleanup(&dm);
	MHD_stop_daemon(srv);
	buf_release(&out);
	free(cfg);
	free(y);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(adapter_puts_desired_state_with_token_and_idempotency_key),
		cmocka_unit_test(rollout_through_an_external_update_server_survives_a_restart),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
