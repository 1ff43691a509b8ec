/*
 * test_devprocs.c - otacd-device processes against the real otacd (issue 14;
 * split from test_device.c, which keeps libotadev's in-memory tests).
 *
 * The tests start the real otacd (tests/harness.c) with a pipeline release
 * and a rollout, and real otacd-device processes that download, verify,
 * test-boot, confirm and report; the torture test kills otacd-device with
 * SIGKILL at random instants across $OTADEV_TORTURE_CYCLES update cycles
 * (default 20) and checks the invariants after every "reboot".
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
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../device/otadev.h"
#include "../common/httpc.h"
#include "devharness.h"
#include "harness.h"

#define HW "mps2-an385"

/* ---- end to end: real otacd, real otacd-device processes ----------------------- */

static struct dh_fleet fleet;

/* otacd with key.pem (releases) and other.pem, 1 s polls; factory image
 * signed with trusted (the device's key); release 1.1.0 of fw signed with
 * key.pem, counter 1, rolled out to 100 % (held: the gate needs 1000). */
static void e2e_start(struct dh_fleet *e, const char *prefix, int n, const char *trusted, const char *extra_cfg)
{
	struct buf out = BUF_INIT;

	h_init(&e->d, NULL);
	assert_int_equal(h_sh(&out, "cd %s && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out other.pem"
				    " && openssl pkey -in other.pem -pubout -out other.pub", e->d.dir), 0);
	dh_fleet_start(e, prefix, n, trusted, "poll_interval: 1s\n%s", extra_cfg ? extra_cfg : "");
	e->release = dh_fw_release(&e->d);
	buf_release(&out);
}

/* DIR/ID/device.conf for device i, flashed with the factory image. */
static char *device_setup(struct dh_fleet *e, const char *prefix, int i, const char *trusted, const char *health)
{
	char *dir = xasprintf("%s/%s-%04d", e->d.dir, prefix, i);
	char *conf = xasprintf("%s/device.conf", dir);
	char *bin = h_bin("otacd-device");
	char *text = xasprintf("# otacd-device test config\nurl = %s\ndevice = %s-%04d\ncredential = %s\nproduct = fw\n"
			       "hardware = " HW "\nbootloader = 1.2.0\nprimary = %s/slot0\nsecondary = %s/slot1\n"
			       "state = %s/state\nkey = %s/%s.pub\nslot_size = 65536\nsector_size = 4096\n"
			       "health_check = %s\nsync = 0\nbackoff_base_ms = 200\nbackoff_max_ms = 2000\nthrottle_ms = 10\n"
			       "heartbeat_ms = 1500\nstatus_file = %s/power\n",
			       e->d.device_url, prefix, i, e->cred[i], dir, dir, dir, e->d.dir, trusted,
			       health ? health : "", dir);
	char *power = xasprintf("%s/power", dir);
	struct buf out = BUF_INIT;
	assert_int_equal(h_sh(&out, "mkdir -p %s", dir), 0);
	assert_int_equal(ota_write_file_atomic(conf, text, strlen(text), 0600), 0);
	/* on battery, 80 % (above the default 20 % threshold) */
	{
		const char *p = "battery = 80\nexternal_power = 0\nrssi = -71\n";
		assert_int_equal(ota_write_file_atomic(power, p, strlen(p), 0600), 0);
	}
	free(power);
	assert_int_equal(h_sh(&out, "%s -c %s flash %s", bin, conf, e->factory), 0);
	free(dir);
	free(bin);
	free(text);
	buf_release(&out);
	return conf;
}

#define E2E_DEVICES 3

static void release_rolls_out_to_otacd_device_processes_that_confirm_and_report(void **state)
{
	struct dh_fleet *e = &fleet;
	pid_t pids[E2E_DEVICES];
	char *conf[E2E_DEVICES];
	int64_t ok = 0;
	(void)state;
	e2e_start(e, "dev", E2E_DEVICES, "key", NULL);
	for (int i = 0; i < E2E_DEVICES; i++) {
		conf[i] = device_setup(e, "dev", i, "key", "true");
		pids[i] = dh_device_loop(conf[i]);
	}
	ok = dh_fleet_wait(&e->d, e->release, "confirmed", E2E_DEVICES, 60000);
	assert_int_equal(ok, E2E_DEVICES);
	/* heartbeats about 1.1.0 were accepted: uptime is credited to it */
	{
		char *path = xasprintf("/api/v1/releases/%lld/rollout", (long long)e->release);
		double hours = 0;
		for (int waited = 0; waited < 15000 && hours <= 0; waited += 300) {
			json_t *st = NULL;
			assert_int_equal(h_get(&e->d, path, &st), 200);
			hours = json_number_value(json_object_get(json_object_get(st, "fleet"), "device_hours"));
			json_decref(st);
			if (hours <= 0)
				h_msleep(300);
		}
		assert_true(hours > 0);
		free(path);
	}
	for (int i = 0; i < E2E_DEVICES; i++) {
		json_t *s;
		dh_stop(pids[i]);
		s = dh_device_status(NULL, conf[i]);
		assert_string_equal(dh_js(s, "version", NULL), "1.1.0");
		assert_string_equal(dh_js(s, "phase", NULL), "idle");
		assert_int_equal(dh_ji(s, "security_counter", NULL), 1);
		assert_int_equal(dh_ji(s, "primary", "valid"), 1);
		assert_string_equal(dh_js(s, "primary", "version"), "1.1.0");
		assert_int_equal(dh_ji(s, "primary", "image_ok"), OTADEV_FLAG_SET);
		assert_true(dh_ji(s, "queued", NULL) <= 1);   /* a heartbeat may be queued at the stop */
		assert_true(dh_ji(s, "next_seq", NULL) >= 3);   /* download, install, boot_ok (+ heartbeats) */
		json_decref(s);
		free(conf[i]);
	}
	assert_int_equal(dh_fleet_count(&e->d, e->release, "downloads"), E2E_DEVICES);
	assert_int_equal(dh_fleet_count(&e->d, e->release, "installs"), E2E_DEVICES);
	assert_int_equal(dh_fleet_count(&e->d, e->release, "reverted"), 0);
	assert_int_equal(dh_fleet_count(&e->d, e->release, "devices"), E2E_DEVICES);
}

/*
 * SIGKILL (power loss) at random instants: each cycle flashes a device with
 * the factory image (a fresh unit with the same id) and runs otacd-device
 * until it is settled, killing it after a random delay each time; every
 * kill is followed by the simulated MCUboot (the "reboot") and the
 * invariants: the primary slot holds a verified image, and a secondary
 * marked bootable verifies.  A kill during the test boot reverts (and the
 * device then declines that image); every other cycle lands on 1.1.0.
 */
static void sigkill_at_random_points_across_update_cycles_keeps_the_invariants(void **state)
{
	struct dh_fleet *e = &fleet;
	char *conf, *bin = h_bin("otacd-device"), *log;
	int cycles = dh_env_count("OTADEV_TORTURE_CYCLES", 20);
	int landed = 0, reverted = 0, kills = 0, at[OTADEV_TESTING + 2] = { 0 };
	unsigned seed = 12345;
	(void)state;
	conf = device_setup(e, "dev", 0, "key", "true");
	log = xasprintf("%s.torture.log", conf);
	for (int c = 0; c < cycles; c++) {
		struct buf out = BUF_INIT;
		int done = 0;
		char *statefile = xasprintf("%s/dev-0000/state", e->d.dir);
		unlink(statefile);
		free(statefile);
		assert_int_equal(h_sh(&out, "%s -c %s flash %s", bin, conf, e->factory), 0);
		for (int attempt = 0; !done; attempt++) {
			int delay = (int)(rand_r(&seed) % (unsigned)(200 + 25 * attempt));
			json_t *s;
			assert_true(attempt < 100);
			if (dh_device_run_killed(bin, conf, log, delay)) {
				kills++;
				/* where the cut landed: the record's phase (idle with the
				 * update not begun or already done counts as idle) */
				s = dh_device_status(NULL, conf);
				for (int p = 0; p <= OTADEV_TESTING; p++)
					if (!strcmp(dh_js(s, "phase", NULL), otadev_phase_name(p)))
						at[p]++;
				json_decref(s);
			}
			/* the reboot: MCUboot's decision; a valid primary image must remain */
			buf_clear(&out);
			assert_int_equal(h_sh(&out, "%s -c %s boot", bin, conf), 0);
			s = dh_device_status(NULL, conf);
			assert_int_equal(dh_ji(s, "primary", "valid"), 1);
			if (dh_ji(s, "secondary", "magic") == OTADEV_MAGIC_GOOD)
				assert_int_equal(dh_ji(s, "secondary", "valid"), 1);
			assert_true(dh_ji(s, "security_counter", NULL) <= 1);
			if (!strcmp(dh_js(s, "phase", NULL), "idle") && dh_ji(s, "queued", NULL) == 0 && dh_ji(s, "record", NULL)) {
				if (!strcmp(dh_js(s, "version", NULL), "1.1.0")) {
					assert_string_equal(dh_js(s, "primary", "version"), "1.1.0");
					landed++;
					done = 1;
				} else if (dh_ji(s, "refused_image", NULL)) {
					assert_string_equal(dh_js(s, "primary", "version"), "1.0.0");
					reverted++;
					done = 1;
				}
			}
			json_decref(s);
		}
		buf_release(&out);
	}
	{
		/* downloads cut by a kill resumed (Range from the persisted offset) */
		struct buf out = BUF_INIT;
		h_sh(&out, "grep -c 'resuming the download' %s", log);
		print_message("torture: %d downloads resumed after a kill\n", atoi(buf_cstr(&out)));
		if (at[OTADEV_DOWNLOADING] > 0)
			assert_true(atoi(buf_cstr(&out)) > 0);
		buf_release(&out);
	}
	print_message("torture: %d update cycles, %d SIGKILLs (in idle %d, downloading %d, installing %d, rebooting %d,"
		      " testing %d): %d landed, %d reverted by the bootloader\n", cycles, kills, at[0], at[1], at[2], at[3],
		      at[4], landed, reverted);
	assert_int_equal(landed + reverted, cycles);
	assert_true(landed > 0);
	assert_true(kills >= cycles);
	free(conf);
	free(log);
	free(bin);
}

/* A release signed by a key the devices no longer trust (revoked): every
 * device downloads it, refuses it, and never marks it bootable. */
static void release_signed_by_an_untrusted_key_is_refused_by_every_device(void **state)
{
	struct dh_fleet e;
	pid_t pids[2];
	char *conf[2];
	(void)state;
	memset(&e, 0, sizeof(e));
	e2e_start(&e, "rev", 2, "other", NULL);
	for (int i = 0; i < 2; i++) {
		conf[i] = device_setup(&e, "rev", i, "other", NULL);
		pids[i] = dh_device_loop(conf[i]);
	}
	/* both check in, are offered 1.1.0, fetch it, and refuse it */
	for (int waited = 0; waited < 30000; waited += 200) {
		int refused = 0;
		for (int i = 0; i < 2; i++) {
			json_t *s = dh_device_status(NULL, conf[i]);
			refused += (int)dh_ji(s, "refused_image", NULL) && dh_ji(s, "queued", NULL) == 0;
			json_decref(s);
		}
		if (refused == 2)
			break;
		h_msleep(200);
	}
	h_msleep(1500);
	for (int i = 0; i < 2; i++) {
		json_t *s;
		dh_stop(pids[i]);
		s = dh_device_status(NULL, conf[i]);
		if (strcmp(dh_js(s, "version", NULL), "1.0.0")) {
			struct buf out = BUF_INIT;
			h_sh(&out, "cat %s.log; %s", conf[i], json_dumps(s, 0));
			print_message("%s\n", buf_cstr(&out));
		}
		assert_int_equal(dh_ji(s, "refused_image", NULL), 1);
		assert_string_equal(dh_js(s, "version", NULL), "1.0.0");
		assert_string_equal(dh_js(s, "primary", "version"), "1.0.0");
		assert_true(dh_ji(s, "secondary", "magic") != OTADEV_MAGIC_GOOD);
		json_decref(s);
		free(conf[i]);
	}
	assert_true(dh_fleet_count(&e.d, e.release, "offered") >= 2);
	assert_int_equal(dh_fleet_count(&e.d, e.release, "downloads"), 0);
	assert_int_equal(dh_fleet_count(&e.d, e.release, "installs"), 0);
	dh_fleet_stop(&e);
}

/* A release whose self-test fails on the devices: each test-boots it, does
 * not confirm, is reverted by the (simulated) MCUboot and says so; otacd
 * counts the reverts and no device ends on it. */
static void unconfirmed_test_boot_is_reverted_and_reported_to_otacd(void **state)
{
	struct dh_fleet e;
	pid_t pids[2];
	char *conf[2];
	int64_t reverted = 0;
	(void)state;
	memset(&e, 0, sizeof(e));
	e2e_start(&e, "bad", 2, "key", NULL);
	for (int i = 0; i < 2; i++) {
		conf[i] = device_setup(&e, "bad", i, "key", "false");
		pids[i] = dh_device_loop(conf[i]);
	}
	reverted = dh_fleet_wait(&e.d, e.release, "reverted", 2, 60000);
	assert_int_equal(reverted, 2);
	for (int i = 0; i < 2; i++) {
		json_t *s;
		dh_stop(pids[i]);
		s = dh_device_status(NULL, conf[i]);
		assert_string_equal(dh_js(s, "version", NULL), "1.0.0");
		assert_string_equal(dh_js(s, "primary", "version"), "1.0.0");
		assert_int_equal(dh_ji(s, "primary", "valid"), 1);
		assert_int_equal(dh_ji(s, "refused_image", NULL), 1);   /* not taken again */
		json_decref(s);
		free(conf[i]);
	}
	assert_int_equal(dh_fleet_count(&e.d, e.release, "installs"), 2);
	assert_int_equal(dh_fleet_count(&e.d, e.release, "confirmed"), 0);
	dh_fleet_stop(&e);
}

/*
 * The device API over TLS with a client certificate: otacd's device
 * listener asks for one chaining to the test CA (tls.client_ca); the device
 * with its certificate updates, a device presenting a certificate of a
 * foreign CA (with a valid credential) is refused at the handshake and is
 * never even offered the image.
 * Runs last: it points the harness's HTTP client at the test CA.
 */
static void device_speaks_tls_with_its_client_certificate(void **state)
{
	struct dh_fleet e;
	struct buf out = BUF_INIT;
	char *pki = h_tmpdir(), *extra, *ca, *conf[2];
	pid_t pids[2];
	int64_t ok = 0;
	(void)state;
	assert_int_equal(h_sh(&out,
			      "cd '%s' && set -e;"
			      "N='-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes';"
			      "openssl req -x509 $N -keyout ca.key -out ca.pem -days 2 -subj /CN=device-test-ca;"
			      "openssl req $N -keyout srv.key -out srv.csr -subj /CN=otacd-test;"
			      "printf 'subjectAltName=IP:127.0.0.1\\nextendedKeyUsage=serverAuth\\n' > srv.ext;"
			      "openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -set_serial 0x1001 -days 2"
			      " -extfile srv.ext -out srv.pem;"
			      "printf 'extendedKeyUsage=clientAuth\\nkeyUsage=digitalSignature\\n' > dev.ext;"
			      "openssl req $N -keyout dev.key -out dev.csr -subj /CN=tls-0000;"
			      "openssl x509 -req -in dev.csr -CA ca.pem -CAkey ca.key -set_serial 7 -days 2"
			      " -extfile dev.ext -out dev.pem;"
			      "openssl req -x509 $N -keyout evil.key -out evil.pem -days 2 -subj /CN=evil-ca;"
			      "openssl req $N -keyout bad.key -out bad.csr -subj /CN=tls-0001;"
			      "openssl x509 -req -in bad.csr -CA evil.pem -CAkey evil.key -set_serial 8 -days 2"
			      " -extfile dev.ext -out bad.pem",
			      pki), 0);
	ca = xasprintf("%s/ca.pem", pki);
	httpc_set_cacert(ca);
	setenv("OTACD_CACERT", ca, 1);
	/* issue 13: the test CA is also the fleet's device CA and the fleet
	 * takes certificates only (device_auth: cert): the device's token is
	 * not what gets it in */
	extra = xasprintf("tls:\n  cert: %s/srv.pem\n  key: %s/srv.key\n  client_ca: %s\n"
			  "device_ca:\n  cert: %s\n  key: %s/ca.key\ndevice_auth: cert\n", pki, pki, ca, ca, pki);
	memset(&e, 0, sizeof(e));
	e2e_start(&e, "tls", 2, "key", extra);
	assert_int_equal(strncmp(e.d.device_url, "https://", 8), 0);
	/* device 0's key and certificate made by `otactl devices provision`
	 * (POST /api/v1/devices/provision, the device CA issues) */
	{
		char *otactl = h_bin("otactl");
		assert_int_equal(h_sh(&out, "OTACD_URL=%s OTACD_TOKEN=%s %s devices provision tls-0000 --product fw --out %s/prov",
				      e.d.url, e.d.token, otactl, pki), 0);
		free(otactl);
	}
	for (int i = 0; i < 2; i++) {
		char *more;
		conf[i] = device_setup(&e, "tls", i, "key", "true");
		more = i == 0 ? xasprintf("cacert = %s\nclient_cert = %s/prov/tls-0000.crt\nclient_key = %s/prov/tls-0000.key\n",
					  ca, pki, pki)
			      : xasprintf("cacert = %s\nclient_cert = %s/bad.pem\nclient_key = %s/bad.key\n", ca, pki, pki);
		buf_clear(&out);
		assert_int_equal(h_sh(&out, "printf '%%s' '%s' >> %s", more, conf[i]), 0);
		free(more);
		pids[i] = dh_device_loop(conf[i]);
	}
	ok = dh_fleet_wait(&e.d, e.release, "confirmed", 1, 60000);
	assert_int_equal(ok, 1);
	h_msleep(1000);
	for (int i = 0; i < 2; i++) {
		json_t *s;
		dh_stop(pids[i]);
		s = dh_device_status(NULL, conf[i]);
		assert_string_equal(dh_js(s, "version", NULL), i == 0 ? "1.1.0" : "1.0.0");
		json_decref(s);
		free(conf[i]);
	}
	assert_int_equal(dh_fleet_count(&e.d, e.release, "offered"), 1);
	dh_fleet_stop(&e);
	h_sh(&out, "rm -rf '%s'", pki);
	buf_release(&out);
	free(extra);
	free(ca);
	free(pki);
}

static void e2e_teardown_fleet(void **state)
{
	(void)state;
	dh_fleet_stop(&fleet);
}

#define E2E_TESTS                                                                             \
	cmocka_unit_test(release_rolls_out_to_otacd_device_processes_that_confirm_and_report),  \
	cmocka_unit_test(sigkill_at_random_points_across_update_cycles_keeps_the_invariants), \
	cmocka_unit_test(e2e_teardown_fleet),                                                  \
	cmocka_unit_test(release_signed_by_an_untrusted_key_is_refused_by_every_device),    \
	cmocka_unit_test(unconfirmed_test_boot_is_reverted_and_reported_to_otacd),          \
	cmocka_unit_test(device_speaks_tls_with_its_client_certificate),

int main(void)
{
	const struct CMUnitTest tests[] = {
		E2E_TESTS
	};
	cmocka_set_test_filter(getenv("DEVPROCS_ONLY"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
