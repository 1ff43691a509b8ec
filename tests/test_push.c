/*
 * test_push.c - push hints over MQTT (issue 15, "Push"): a real mosquitto
 * broker started here on a free loopback port (its config, password file
 * and ACL in a temp dir), the real otacd publishing, real otacd-device
 * processes subscribing.
 *
 * mosquitto: $OTACD_MOSQUITTO or /usr/sbin/mosquitto (Debian's package;
 * .ci/run installs it); the tests that need it skip, saying so, without it.
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
#include <jansson.h>
#include <mosquitto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../orchestrator/mcuboot.h"
#include "../orchestrator/fleet/fleet.h"
#include "../orchestrator/push/push.h"
#include "devharness.h"
#include "harness.h"

#define HW "mps2-an385"
#define OTACD_PW "otacd-broker-password-1"

static int count_in(const char *file, const char *needle)
{
	struct buf b = BUF_INIT;
	int n = 0;
	if (ota_read_file(&b, file, 64 << 20) == 0)
		for (const char *p = buf_cstr(&b); (p = strstr(p, needle)); p += strlen(needle))
			n++;
	buf_release(&b);
	return n;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- mosquitto ------------------------------------------------------------ */

struct broker {
	pid_t pid;
	int port;
	char *dir;
	int tls; /* set before broker_start: a TLS listener; dir/ca.pem its CA, dir/other-ca.pem another */
};

#define NEED_MOSQUITTO(bin)                                                                      \
	do {                                                                                     \
		if (!(bin)) {                                                                    \
			print_message("SKIP: mosquitto not installed (apt-get install mosquitto)\n"); \
			skip();                                                                  \
		}                                                                                \
	} while (0)

/* Start mosquitto on a free loopback port.  ndev > 0: no anonymous
 * clients; users otacd (OTACD_PW; writes PREFIX/#) and dev-NNNN
 * (devpass-N; reads its own device topic and its hardware's); ACL by
 * pattern, as a fleet would run it. */
static void broker_start(struct broker *b, const char *bin, int ndev)
{
	struct buf conf = BUF_INIT, out = BUF_INIT;
	char *path;
	b->dir = h_tmpdir();
	if (!b->port)
		b->port = dh_free_port();
	if (b->tls) {
		const char *req = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2";
		assert_int_equal(h_sh(&out, "cd %s && %s -keyout ca.key -out ca.pem -subj /CN=push-test-ca 2>&1 &&"
					    " %s -keyout other-ca.key -out other-ca.pem -subj /CN=push-test-ca 2>&1 &&"
					    " openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout srv.key"
					    " -out srv.csr -subj /CN=127.0.0.1 2>&1 && printf 'subjectAltName=IP:127.0.0.1\\n' > ext &&"
					    " openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2"
					    " -extfile ext -out srv.pem 2>&1", b->dir, req, req), 0);
		buf_printf(&conf, "cafile %s/ca.pem\ncertfile %s/srv.pem\nkeyfile %s/srv.key\n", b->dir, b->dir, b->dir);
	}
	if (ndev > 0) {
		char *acl = xasprintf("user otacd\ntopic write otacd/#\n\npattern read otacd/+/dev/%%u\n"
				      "pattern read otacd/+/hw/#\n");
		path = xasprintf("%s/acl", b->dir);
		assert_int_equal(ota_write_file_atomic(path, acl, strlen(acl), 0600), 0);
		free(acl);
		free(path);
		assert_int_equal(h_sh(&out, "mosquitto_passwd -c -b %s/passwd otacd %s", b->dir, OTACD_PW), 0);
		for (int i = 0; i < ndev; i++)
			assert_int_equal(h_sh(&out, "mosquitto_passwd -b %s/passwd dev-%04d devpass-%d", b->dir, i, i), 0);
		buf_printf(&conf, "allow_anonymous false\npassword_file %s/passwd\nacl_file %s/acl\n", b->dir, b->dir);
	} else {
		buf_printf(&conf, "allow_anonymous true\n");
	}
	b->pid = dh_mosquitto_spawn(bin, b->dir, b->port, buf_cstr(&conf));
	buf_release(&conf);
	buf_release(&out);
}

static void broker_stop(struct broker *b)
{
	dh_stop(b->pid);
	if (b->dir) {
		struct buf out = BUF_INIT;
		h_sh(&out, "rm -rf %s", b->dir);
		buf_release(&out);
	}
	free(b->dir);
	memset(b, 0, sizeof(*b));
}

static void on_pub(struct mosquitto *m, void *obj, int mid)
{
	(void)m;
	(void)mid;
	*(int *)obj = 1;
}

/* Publish one message (QoS 1, acknowledged by the broker). */
static void mq_publish(int port, const char *user, const char *pass, const char *topic, const void *data, int len)
{
	int done = 0;
	struct mosquitto *m = mosquitto_new(NULL, true, &done);
	assert_non_null(m);
	mosquitto_publish_callback_set(m, on_pub);
	if (user)
		mosquitto_username_pw_set(m, user, pass);
	assert_int_equal(mosquitto_connect(m, "127.0.0.1", port, 10), MOSQ_ERR_SUCCESS);
	assert_int_equal(mosquitto_publish(m, NULL, topic, len, data, 1, false), MOSQ_ERR_SUCCESS);
	for (int i = 0; i < 100 && !done; i++)
		mosquitto_loop(m, 50, 1);
	assert_true(done);
	mosquitto_disconnect(m);
	mosquitto_destroy(m);
}

/* ---- otacd and devices ----------------------------------------------------- */

struct env {
	struct daemon d;
	char **cred;
	int n;
	char *factory;
	char *conf[8];
	pid_t pid[8];
};

static const char *pipeline_yaml =
	"name: fw\nstages:\n"
	"  - name: build\n"
	"    steps: [ { run: \"printf 'fw 1.1.0' > app.bin && head -c 20000 /dev/urandom >> app.bin\" } ]\n"
	"    artifacts: [ { path: app.bin, name: app.bin, type: application, hardware: " HW " } ]\n"
	"  - { name: release, kind: release, needs: [build], version: \"1.1.0\", security_counter: 1, key: test }\n"
	"  - name: canary\n    kind: rollout\n    needs: [release]\n"
	"    steps: [ {percent: 100, hold: 1000h} ]\n    gates: [boots]\n"
	"gates:\n  boots: { metric: boot_success_rate, min: 0.5, min_devices: 1000 }\n";

/* otacd with extra_cfg (poll_interval included), n registered devices and
 * a signed factory image. */
static void env_start(struct env *e, int n, const char *extra_cfg)
{
	const char *const args[] = { "--local-agents", "1", NULL };
	struct buf out = BUF_INIT;

	dh_start_signing(&e->d, args, "%s", extra_cfg);
	e->cred = h_register_devices(&e->d, "dev", n);
	e->n = n;
	e->factory = dh_factory_image(e->d.dir, "key", -1);
	buf_release(&out);
}

static void env_stop(struct env *e)
{
	for (int i = 0; i < e->n; i++) {
		dh_stop(e->pid[i]);
		free(e->conf[i]);
		free(e->cred[i]);
	}
	free(e->cred);
	free(e->factory);
	h_cleanup(&e->d);
	memset(e, 0, sizeof(*e));
}

/* Device i's config (with mqtt lines), flashed with the factory image,
 * then its boot/run loop started. */
static void device_start(struct env *e, int i, const char *mqtt)
{
	char *dir = xasprintf("%s/dev-%04d", e->d.dir, i);
	char *bin = h_bin("otacd-device");
	char *text = xasprintf("url = %s\ndevice = dev-%04d\ncredential = %s\nproduct = fw\n"
			       "hardware = " HW "\nbootloader = 1.2.0\nprimary = %s/slot0\nsecondary = %s/slot1\n"
			       "state = %s/state\nkey = %s/key.pub\nslot_size = 65536\nsector_size = 4096\n"
			       "health_check = true\nsync = 0\nbackoff_base_ms = 200\nbackoff_max_ms = 1000\n%s",
			       e->d.device_url, i, e->cred[i], dir, dir, dir, e->d.dir, mqtt ? mqtt : "");
	struct buf out = BUF_INIT;
	e->conf[i] = xasprintf("%s/device.conf", dir);
	assert_int_equal(h_sh(&out, "mkdir -p %s && printf 'devpass-%d\\n' > %s/mqtt.pw", dir, i, dir), 0);
	assert_int_equal(ota_write_file_atomic(e->conf[i], text, strlen(text), 0600), 0);
	assert_int_equal(h_sh(&out, "%s -c %s flash %s", bin, e->conf[i], e->factory), 0);
	e->pid[i] = dh_device_loop(e->conf[i]);
	free(dir);
	free(bin);
	free(text);
	buf_release(&out);
}

static int dev_log_count(struct env *e, int i, const char *needle)
{
	char *log = xasprintf("%s.log", e->conf[i]);
	int n = count_in(log, needle);
	free(log);
	return n;
}

static int otacd_log_count(struct env *e, const char *needle)
{
	char *log = xasprintf("%s/otacd.log", e->d.dir);
	int n = count_in(log, needle);
	free(log);
	return n;
}

/* Devices otacd has seen on version (the fleet's gauge). */
static int64_t devices_on(struct env *e, const char *version)
{
	char *m = h_device_metrics(&e->d, NULL), *needle, *p;
	int64_t v = 0;
	needle = xasprintf("otacd_fleet_devices{product=\"fw\",version=\"%s\",cohort=\"*\"} ", version);
	if (m && (p = strstr(m, needle)))
		v = strtoll(p + strlen(needle), NULL, 10);
	free(needle);
	free(m);
	return v;
}

static void wait_devices_on(struct env *e, const char *version, int64_t n, int timeout_ms)
{
	for (int waited = 0; waited < timeout_ms && devices_on(e, version) < n; waited += 100)
		h_msleep(100);
	assert_int_equal(devices_on(e, version), n);
}

/* A counter of the device listener's /metrics (-1: absent). */
static int64_t metric(struct env *e, const char *name)
{
	char *m = h_device_metrics(&e->d, NULL), *needle = xasprintf("\n%s ", name), *p;
	int64_t v = -1;
	if (m && (p = strstr(m, needle)))
		v = strtoll(p + strlen(needle), NULL, 10);
	free(needle);
	free(m);
	return v;
}

/* The broker password otacd was given appears nowhere in its log, from
 * its start to a clean stop (otacd is stopped here; env_stop after).
 * The callers show otacd used it: connected, or refused and logged. */
static void assert_password_never_logged(struct env *e, const char *password)
{
	h_kill(&e->d, SIGTERM);
	assert_int_equal(otacd_log_count(e, "otacd: shutting down"), 1);   /* the whole log */
	assert_int_equal(otacd_log_count(e, password), 0);
}

/* ---- tests ----------------------------------------------------------------- */

#define NDEV 3

/* per_device_max < NDEV: one cohort hint on the hardware's topic instead */
static void push_rollout(int per_device_max, const char *topic, int tls)
{
	char *bin = dh_mosquitto_bin(), *cfg, *pwfile;
	struct broker b = { 0 };
	struct env e = { 0 };
	double t0, t1;
	char *cafile;
	NEED_MOSQUITTO(bin);
	b.tls = tls;
	broker_start(&b, bin, NDEV);
	cafile = xasprintf("%s/ca.pem", b.dir);
	h_init(&e.d, NULL);
	pwfile = xasprintf("%s/broker.pw", e.d.dir);
	assert_int_equal(ota_write_file_atomic(pwfile, OTACD_PW "\n", strlen(OTACD_PW) + 1, 0600), 0);
	/* a 1 h poll: only a hint can bring a device back within the test */
	cfg = xasprintf("poll_interval: 1h\npush: { url: \"%s://127.0.0.1:%d\", username: otacd, password_file: %s,"
			" window: 2, capacity: 100, per_device_max: %d%s%s }\n", tls ? "mqtts" : "mqtt", b.port, pwfile,
			per_device_max, tls ? ", cacert: " : "", tls ? cafile : "");
	env_start(&e, NDEV, cfg);
	for (int i = 0; i < NDEV; i++) {
		char *mq = xasprintf("mqtt_url = %s://127.0.0.1:%d\nmqtt_password_file = %s/dev-%04d/mqtt.pw\n"
				     "mqtt_window_ms = 1000\n%s%s\n", tls ? "mqtts" : "mqtt", b.port, e.d.dir, i,
				     tls ? "mqtt_cacert = " : "", tls ? cafile : "");
		device_start(&e, i, mq);
		free(mq);
	}
	/* every device checked in once (no offer yet) and subscribed */
	wait_devices_on(&e, "1.0.0", NDEV, 20000);
	for (int i = 0; i < NDEV; i++) {
		for (int waited = 0; waited < 10000 && !dev_log_count(&e, i, "push: subscribed"); waited += 100)
			h_msleep(100);
		assert_int_equal(dev_log_count(&e, i, "push: subscribed"), 1);
	}
	assert_true(dh_release_of(&e.d, h_trigger(&e.d, pipeline_yaml)) > 0);
	t0 = now_s(); /* the release exists: its rollout's step opens now */
	wait_devices_on(&e, "1.1.0", NDEV, 60000);
	t1 = now_s();
	print_message("step open -> %d/%d devices on 1.1.0 in %.1f s (poll interval 3600 s)\n", NDEV, NDEV, t1 - t0);
	assert_true(t1 - t0 < 60);
	for (int i = 0; i < NDEV; i++) {
		assert_true(dev_log_count(&e, i, topic) >= 1);
		assert_true(dev_log_count(&e, i, "push: checked in early") >= 1);
	}
	assert_int_equal(otacd_log_count(&e, "push: cannot reach"), 0);
	assert_int_equal(otacd_log_count(&e, "refused the connection"), 0);
	assert_int_equal(metric(&e, "otacd_push_connected"), 1);
	assert_int_equal(metric(&e, "otacd_push_hints_dropped_total"), 0);
	assert_true(metric(&e, "otacd_push_hints_published_total") >= (per_device_max >= NDEV ? NDEV : 1));
	assert_password_never_logged(&e, OTACD_PW);
	env_stop(&e);
	broker_stop(&b);
	free(cafile);
	free(pwfile);
	free(cfg);
	free(bin);
}

static void rollout_step_pushes_and_devices_check_in_long_before_their_poll(void **state)
{
	(void)state;
	push_rollout(1000, "push: hint on otacd/fw/dev/dev-", 0);
}

static void a_large_step_pushes_one_cohort_hint_per_hardware(void **state)
{
	(void)state;
	push_rollout(1, "push: hint on otacd/fw/hw/" HW ";", 0);
}

static void push_over_tls_checks_the_brokers_certificate(void **state)
{
	char *bin = dh_mosquitto_bin(), *cfg;
	struct broker b = { 0 };
	struct env e = { 0 };
	(void)state;
	NEED_MOSQUITTO(bin);
	/* devices and otacd with the broker's CA: hints arrive */
	push_rollout(1000, "push: hint on otacd/fw/dev/dev-", 1);
	/* otacd with another CA of the same name: no connection, said clearly */
	b.tls = 1;
	broker_start(&b, bin, 0);
	h_init(&e.d, NULL);
	cfg = xasprintf("poll_interval: 1s\npush: { url: \"mqtts://127.0.0.1:%d\", cacert: %s/other-ca.pem }\n", b.port,
			b.dir);
	env_start(&e, 1, cfg);
	for (int waited = 0; waited < 10000 && !otacd_log_count(&e, "push: cannot reach the broker"); waited += 100)
		h_msleep(100);
	assert_int_equal(otacd_log_count(&e, "push: cannot reach the broker"), 1);
	assert_true(otacd_log_count(&e, "TLS") >= 1);
	assert_int_equal(otacd_log_count(&e, "push: connected"), 0);
	env_stop(&e);
	broker_stop(&b);
	free(cfg);
	free(bin);
}

static void broker_down_neither_stalls_otacd_nor_the_devices(void **state)
{
	struct env e = { 0 };
	int port = dh_free_port(); /* nothing listens there */
	char *cfg;
	(void)state;
	h_init(&e.d, NULL);
	cfg = xasprintf("poll_interval: 1s\npush: { url: \"mqtt://127.0.0.1:%d\", window: 1 }\n", port);
	env_start(&e, NDEV, cfg);
	for (int i = 0; i < NDEV; i++) {
		char *mq = xasprintf("mqtt_url = mqtt://127.0.0.1:%d\n", port);
		device_start(&e, i, mq);
		free(mq);
	}
	wait_devices_on(&e, "1.0.0", NDEV, 20000);
	assert_true(dh_release_of(&e.d, h_trigger(&e.d, pipeline_yaml)) > 0);
	/* the rollout proceeds and the devices update by polling */
	wait_devices_on(&e, "1.1.0", NDEV, 60000);
	for (int i = 0; i < NDEV; i++) {
		assert_int_equal(dev_log_count(&e, i, "push: hint"), 0);
		/* once per outage and process: the run before the update and the one after its reboot */
		assert_true(dev_log_count(&e, i, "retrying in the background") <= 2);
		assert_true(h_pid_alive(e.pid[i]));
	}
	/* said once, not once per hint or per reconnect; counted */
	assert_int_equal(otacd_log_count(&e, "push: cannot reach the broker"), 1);
	assert_int_equal(metric(&e, "otacd_push_connected"), 0);
	assert_int_equal(metric(&e, "otacd_push_hints_published_total"), 0);
	assert_int_equal(metric(&e, "otacd_push_hints_dropped_total"), NDEV);
	{
		json_t *h = NULL;
		assert_int_equal(h_get(&e.d, "/api/v1/health", &h), 200);
		json_decref(h);
	}
	env_stop(&e);
	free(cfg);
}

static void hostile_messages_cause_at_most_an_early_check_in(void **state)
{
	char *bin = dh_mosquitto_bin(), *big, *deep, *topic = "otacd/fw/dev/dev-0000";
	struct broker b = { 0 };
	struct env e = { 0 };
	const char *junk[] = { "garbage", "[]", "{\"v\":2}", "{\"v\":\"1\"}", "{\"v\":1,\"v\":1}", "{\"v\":1", "null" };
	int njunk = (int)(sizeof(junk) / sizeof(*junk));
	(void)state;
	NEED_MOSQUITTO(bin);
	h_init(&e.d, NULL);
	env_start(&e, 1, "poll_interval: 1h\n");
	/* the device starts before its broker (a board that boots before the
	 * network): it polls, and subscribes once the broker is up */
	b.port = dh_free_port();
	{
		char *mq = xasprintf("mqtt_url = mqtt://127.0.0.1:%d\nmqtt_window_ms = 1500\nmqtt_window_max_ms = 3000\n"
				     "mqtt_payload_max = 256\n", b.port);
		device_start(&e, 0, mq);
		free(mq);
	}
	wait_devices_on(&e, "1.0.0", 1, 20000);
	h_msleep(1000);
	assert_int_equal(dev_log_count(&e, 0, "push: subscribed"), 0);
	broker_start(&b, bin, 0);
	for (int waited = 0; waited < 20000 && !dev_log_count(&e, 0, "push: subscribed"); waited += 100)
		h_msleep(100);
	assert_int_equal(dev_log_count(&e, 0, "push: subscribed"), 1);

	for (int i = 0; i < njunk; i++)
		mq_publish(b.port, NULL, NULL, topic, junk[i], (int)strlen(junk[i]));
	mq_publish(b.port, NULL, NULL, topic, "\x00\xff\xfe{", 4);
	big = xmalloc(100000);
	memset(big, '{', 100000);
	mq_publish(b.port, NULL, NULL, topic, big, 100000);
	deep = xmalloc(201);
	memset(deep, '[', 200);
	deep[200] = 0;
	mq_publish(b.port, NULL, NULL, topic, deep, 200);
	/* a well-formed hint for another device never reaches this one */
	mq_publish(b.port, NULL, NULL, "otacd/fw/dev/dev-0001", "{\"v\":1}", 7);
	for (int waited = 0; waited < 5000 && dev_log_count(&e, 0, "push: ignored") < njunk + 3; waited += 100)
		h_msleep(100);
	h_msleep(500);
	assert_int_equal(dev_log_count(&e, 0, "push: ignored"), njunk + 3);
	assert_int_equal(dev_log_count(&e, 0, "push: hint on"), 0);
	assert_int_equal(dev_log_count(&e, 0, "push: checked in early"), 0);
	assert_true(h_pid_alive(e.pid[0]));

	/* a hint asking for a huge window: capped by mqtt_window_max_ms; a
	 * second one right after it is not taken (one per window) */
	{
		const char *huge = "{\"v\":1,\"reason\":\"offer\",\"window_ms\":999999999}";
		mq_publish(b.port, NULL, NULL, topic, huge, (int)strlen(huge));
		mq_publish(b.port, NULL, NULL, topic, "{\"v\":1}", 7);
	}
	for (int waited = 0; waited < 6000 && !dev_log_count(&e, 0, "push: checked in early"); waited += 100)
		h_msleep(100);
	h_msleep(1000);
	assert_int_equal(dev_log_count(&e, 0, "push: hint on"), 1);
	assert_int_equal(dev_log_count(&e, 0, "within 3000 ms"), 1);
	assert_int_equal(dev_log_count(&e, 0, "push: checked in early"), 1);
	assert_int_equal(dev_log_count(&e, 0, "push: ignored"), njunk + 4);
	assert_true(h_pid_alive(e.pid[0]));
	/* nothing else happened: no offer, still the factory image */
	assert_int_equal(devices_on(&e, "1.0.0"), 1);
	env_stop(&e);
	broker_stop(&b);
	free(big);
	free(deep);
	free(bin);
}

static void wrong_broker_password_is_a_clear_error_and_otacd_keeps_running(void **state)
{
	char *bin = dh_mosquitto_bin(), *cfg, *pwfile;
	struct broker b = { 0 };
	struct env e = { 0 };
	json_t *h = NULL;
	(void)state;
	NEED_MOSQUITTO(bin);
	broker_start(&b, bin, 1);
	h_init(&e.d, NULL);
	pwfile = xasprintf("%s/broker.pw", e.d.dir);
	assert_int_equal(ota_write_file_atomic(pwfile, "wrong-password\n", 15, 0600), 0);
	cfg = xasprintf("poll_interval: 1s\npush: { url: \"mqtt://127.0.0.1:%d\", username: otacd, password_file: %s }\n",
			b.port, pwfile);
	env_start(&e, 1, cfg);
	for (int waited = 0; waited < 10000 && !otacd_log_count(&e, "refused the connection"); waited += 100)
		h_msleep(100);
	h_msleep(3500); /* reconnect attempts at 1 s and 2 s: logged once */
	print_message("otacd logged %d refusal(s)\n", otacd_log_count(&e, "refused the connection"));
	assert_int_equal(otacd_log_count(&e, "refused the connection"), 1);
	assert_true(otacd_log_count(&e, "not authorised") >= 1);
	assert_true(otacd_log_count(&e, "push.password_file") >= 1);
	assert_int_equal(h_get(&e.d, "/api/v1/health", &h), 200);
	json_decref(h);
	/* the rollout still runs: a device on polling gets the release */
	device_start(&e, 0, NULL);
	wait_devices_on(&e, "1.0.0", 1, 20000);
	assert_true(dh_release_of(&e.d, h_trigger(&e.d, pipeline_yaml)) > 0);
	wait_devices_on(&e, "1.1.0", 1, 60000);
	assert_password_never_logged(&e, "wrong-password");
	env_stop(&e);
	broker_stop(&b);
	free(pwfile);
	free(cfg);
	free(bin);
}

static void push_config_is_checked(void **state)
{
	static const char *const bad[] = {
		"{\"url\": \"http://127.0.0.1:1883\"}",
		"{\"url\": \"mqtt://127.0.0.1:99999\"}",
		"{\"url\": \"mqtt://127.0.0.1:1883/path\"}",
		"{\"url\": \"mqtt://127.0.0.1:1883\", \"colour\": 1}",
		"{\"url\": \"mqtt://127.0.0.1:1883\", \"capacity\": 0}",
		"{\"url\": \"mqtt://127.0.0.1:1883\", \"window\": \"soon\"}",
		"{\"url\": \"mqtt://127.0.0.1:1883\", \"prefix\": \"a/+/b\"}",
		"{\"url\": \"mqtt://127.0.0.1:1883\", \"password_file\": \"/nonexistent/pw\"}",
		"{\"url\": \"mqtts://127.0.0.1:8883\", \"cacert\": \"/nonexistent/ca.pem\"}",
	};
	struct push *p = NULL;
	char esc[64], *dir = h_tmpdir(), *pwfile = xasprintf("%s/broker.pw", dir), *long_user;
	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
		json_t *c = json_loads(bad[i], 0, NULL);
		assert_non_null(c);
		assert_true(push_open(&p, c) < 0);
		assert_null(p);
		print_message("%s -> %s\n", bad[i], ota_error_last());
		assert_non_null(strstr(ota_error_last(), "push"));
		json_decref(c);
	}
	/* refused after the mosquitto library and handle were set up, with a
	 * password read (a bad CA file, a username mosquitto refuses): each
	 * time everything is released (ASan's leak check), and the error
	 * never quotes the password */
	assert_int_equal(ota_write_file_atomic(pwfile, OTACD_PW "\n", strlen(OTACD_PW) + 1, 0600), 0);
	long_user = xmalloc(70000);
	memset(long_user, 'u', 69999);
	long_user[69999] = 0;
	for (int round = 0; round < 3; round++) {
		json_t *c = json_pack("{ss ss ss ss}", "url", "mqtts://127.0.0.1:8883", "username", "otacd", "password_file",
				      pwfile, "cacert", "/nonexistent/ca.pem");
		assert_true(push_open(&p, c) < 0);
		assert_null(p);
		assert_non_null(strstr(ota_error_last(), "cacert"));
		assert_null(strstr(ota_error_last(), OTACD_PW));
		json_decref(c);
		c = json_pack("{ss ss ss}", "url", "mqtt://127.0.0.1:1883", "username", long_user, "password_file", pwfile);
		assert_true(push_open(&p, c) < 0);
		assert_null(p);
		print_message("a %zu-byte username -> %s\n", strlen(long_user), ota_error_last());
		assert_null(strstr(ota_error_last(), OTACD_PW));
		json_decref(c);
	}
	free(long_user);
	unlink(pwfile);
	rmdir(dir);
	free(pwfile);
	free(dir);
	assert_int_equal(push_open(&p, NULL), 0); /* not configured: off */
	assert_null(p);
	push_topic_escape(esc, sizeof(esc), "acme/fw+x#%");
	assert_string_equal(esc, "acme%2Ffw%2Bx%23%25");
}

/* ---- the fleet's side: which devices a change names ------------------------ */

static struct {
	int calls, n, offer, withdrawn, rollback;
	char first[32];
} seen;

static void record(void *ctx, const char *product, const struct fleet_change *c, size_t n)
{
	(void)ctx;
	assert_string_equal(product, "fw");
	seen.calls++;
	seen.n += (int)n;
	for (size_t i = 0; i < n; i++) {
		seen.offer += !strcmp(c[i].reason, "offer");
		seen.withdrawn += !strcmp(c[i].reason, "withdrawn");
		seen.rollback += !strcmp(c[i].reason, "rollback");
	}
	snprintf(seen.first, sizeof(seen.first), "%s", n ? c[0].device : "");
}

static json_t *fleet_checkin_as(struct fleet *f, int i, const char *version)
{
	char id[32];
	json_t *ans = NULL, *body;
	snprintf(id, sizeof(id), "fd-%03d", i);
	body = json_pack("{ss ss ss ss ss si ss}", "device", id, "product", "fw", "hardware", i % 2 ? "rev-b" : "rev-a",
			 "bootloader", "1.0.0", "version", version, "security_counter", 0, "slot", "confirmed");
	assert_int_equal(fleet_checkin(f, body, &ans), 0);
	json_decref(body);
	return ans;
}

static void set_exposure(struct fleet *f, int64_t id, const char *version, int bp, int active, int64_t rollback_to)
{
	struct fleet_image img = { "rev-a", "", "application", 1000 };
	struct fleet_exposure x = { 0 };
	char sha[65];
	memset(sha, id == 1 ? 'a' : 'b', 64);
	sha[64] = 0;
	img.sha256 = sha;
	x.release_id = id;
	x.product = "fw";
	x.version = version;
	x.images = &img;
	x.nimages = 1;
	x.active = active;
	x.salt = "salt";
	x.basis_points = bp;
	x.rollback_to = rollback_to;
	assert_int_equal(fleet_set_exposure(f, &x), 0);
}

static void fleet_names_offers_withdrawals_and_rollbacks_once(void **state)
{
	char *dir = h_tmpdir(), *db = xasprintf("%s/fleet.db", dir);
	struct fleet_config cfg = { .db_path = db, .poll_ms = 6 * 3600 * 1000LL };
	struct fleet *f = NULL;
	int offered = 0, before;
	(void)state;
	assert_int_equal(fleet_open(&f, &cfg), 0);
	for (int i = 0; i < 200; i++)
		json_decref(fleet_checkin_as(f, i, "1.0.0"));
	fleet_set_notify(f, record, NULL);

	/* a 10 % step of release 1 (rev-a only): hints for exactly the devices offered */
	set_exposure(f, 1, "1.1.0", 1000, 1, 0);
	for (int i = 0; i < 200; i++) {
		json_t *a = fleet_checkin_as(f, i, "1.0.0");
		offered += json_is_object(json_object_get(a, "offer"));
		json_decref(a);
	}
	print_message("10 %% step: %d hints, %d devices offered\n", seen.n, offered);
	assert_int_equal(seen.calls, 1);
	assert_true(offered > 0 && offered < 100);
	assert_int_equal(seen.n, offered);
	assert_int_equal(seen.offer, offered);
	/* the same exposure again: nothing */
	set_exposure(f, 1, "1.1.0", 1000, 1, 0);
	assert_int_equal(seen.calls, 1);
	/* widened to 50 %: only the newly exposed */
	before = seen.n;
	set_exposure(f, 1, "1.1.0", 5000, 1, 0);
	offered = 0;
	for (int i = 0; i < 200; i++) {
		json_t *a = fleet_checkin_as(f, i, "1.0.0");
		offered += json_is_object(json_object_get(a, "offer"));
		json_decref(a);
	}
	assert_int_equal(seen.calls, 2);
	assert_int_equal(seen.n, offered);
	assert_int_equal(seen.offer, offered);
	assert_true(seen.n > before);
	/* halted: every device still offered hears it is withdrawn */
	set_exposure(f, 1, "1.1.0", 5000, 0, 0);
	assert_int_equal(seen.calls, 3);
	assert_int_equal(seen.withdrawn, offered);
	/* one device took 1.1.0; release 1 rolled back to release 2: that device is told */
	json_decref(fleet_checkin_as(f, 0, "1.1.0"));
	set_exposure(f, 2, "1.0.0", 0, 0, 0);
	assert_int_equal(seen.calls, 3);
	set_exposure(f, 1, "1.1.0", 5000, 0, 2);
	assert_int_equal(seen.calls, 4);
	assert_int_equal(seen.rollback, 1);
	assert_string_equal(seen.first, "fd-000");
	fleet_set_notify(f, NULL, NULL);
	fleet_close(f);
	{
		struct buf out = BUF_INIT;
		h_sh(&out, "rm -rf %s", dir);
		buf_release(&out);
	}
	free(db);
	free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(push_config_is_checked),
		cmocka_unit_test(fleet_names_offers_withdrawals_and_rollbacks_once),
		cmocka_unit_test(rollout_step_pushes_and_devices_check_in_long_before_their_poll),
		cmocka_unit_test(a_large_step_pushes_one_cohort_hint_per_hardware),
		cmocka_unit_test(push_over_tls_checks_the_brokers_certificate),
		cmocka_unit_test(broker_down_neither_stalls_otacd_nor_the_devices),
		cmocka_unit_test(hostile_messages_cause_at_most_an_early_check_in),
		cmocka_unit_test(wrong_broker_password_is_a_clear_error_and_otacd_keeps_running),
	};
	cmocka_set_test_filter(getenv("X_ONLY"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
