/*
 * test_edmanifest.c - Ed25519-signed release manifests verified on the
 * device (issue 14, docs/device.md "The signing chain").
 *
 * Ed25519 signs a message, not a digest, so a DSSE envelope signed with it
 * is checked over DSSE's PAE itself: libotadev makes the PAE whole in its
 * work buffer and hands it to the port's verify_msg hook (OpenSSL's pure
 * Ed25519 in otacd-device).  A real otacd with a trust root releases with
 * an Ed25519 signing key certified by the root; otacd-device processes
 * holding the root as their anchor take the release, and refuse it, before
 * anything is marked bootable, when the stored envelope is edited (the
 * same length, still well-formed JSON, its signature kept).
 */
#include <setjmp.h>
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
#include <jansson.h>
#include <openssl/evp.h>

#include "../common/util.h"
#include "../device/otadev.h"
#include "devharness.h"
#include "harness.h"

#define HW "mps2-an385"

static const char *const PIPE = "name: fw\nstages:\n"
	"  - name: build\n"
	"    steps: [ { run: \"printf 'fw 1.1.0' > app.bin && head -c 20000 /dev/urandom >> app.bin\" } ]\n"
	"    artifacts: [ { path: app.bin, name: app.bin, type: application, hardware: " HW " } ]\n"
	"  - { name: release, kind: release, needs: [build], version: \"1.1.0\", security_counter: 1, key: ed }\n"
	"  - name: canary\n    kind: rollout\n    needs: [release]\n"
	"    steps: [ {percent: 100, hold: 1000h} ]\n    gates: [boots]\n"
	"gates:\n  boots: { metric: boot_success_rate, min: 0.5, min_devices: 1000 }\n";

/* Device id (registered, credential cred) as a unit in DIR/id with the
 * root as its anchor and ed as its bootloader's key slot, flashed with the
 * factory image; its config path. */
static char *device_unit(struct daemon *d, const char *id, const char *cred, const char *factory)
{
	char *dir = xasprintf("%s/%s", d->dir, id), *conf = xasprintf("%s/device.conf", dir);
	char *bin = h_bin("otacd-device"), *text;
	struct buf out = BUF_INIT;

	assert_int_equal(h_sh(&out, "mkdir -p %s", dir), 0);
	text = xasprintf("url = %s\ndevice = %s\ncredential = %s\nproduct = fw\nhardware = " HW "\n"
			 "bootloader = 1.2.0\nprimary = %s/slot0\nsecondary = %s/slot1\nstate = %s/state\n"
			 "anchor = %s/root/root.crt.pem\nkey = %s/ed.pub\nslot_size = 65536\nsector_size = 4096\n"
			 "health_check = true\nsync = 0\nbackoff_base_ms = 200\nbackoff_max_ms = 2000\npoll_ms = 1000\n",
			 d->device_url, id, cred, dir, dir, dir, d->dir, d->dir);
	assert_int_equal(ota_write_file_atomic(conf, text, strlen(text), 0600), 0);
	assert_int_equal(h_sh(&out, "%s -c %s flash %s", bin, conf, factory), 0);
	free(text);
	free(dir);
	free(bin);
	buf_release(&out);
	return conf;
}

/* Poll the unit's status until done(s) or 90 s: the last status. */
static json_t *wait_status(const char *conf, int (*done)(json_t *s))
{
	json_t *s = NULL;
	for (int waited = 0; waited < 90000; waited += 250) {
		h_msleep(250);
		json_decref(s);
		s = dh_device_status(NULL, conf);
		if (done(s))
			return s;
	}
	return s;
}

static int landed(json_t *s)
{
	return !strcmp(dh_js(s, "phase", NULL), "idle") && !strcmp(dh_js(s, "version", NULL), "1.1.0");
}

static int refused(json_t *s)
{
	return !strcmp(dh_js(s, "phase", NULL), "idle") && dh_ji(s, "refused_image", NULL) == 1;
}

/* The stored envelope of the release, its path in the artifact store. */
static char *envelope_path(struct daemon *d, int64_t release)
{
	char *sql = xasprintf("SELECT a.sha256 FROM releases r JOIN artifacts a ON a.id = r.envelope_artifact"
			      " WHERE r.id = %lld", (long long)release);
	char *sha = h_sql_text(d, sql), *p = xasprintf("%s/state/artifacts/sha256/%.2s/%s", d->dir, sha, sha);
	free(sql);
	free(sha);
	return p;
}

/* The envelope's payload with built_at's seconds changed (the same length,
 * still JSON, the manifest's images untouched), signature kept. */
static void tamper_built_at(const struct buf *env, struct buf *out)
{
	json_t *e = json_loadb(env->ptr, env->len, 0, NULL);
	const char *b64 = json_string_value(json_object_get(e, "payload"));
	unsigned char *raw = xmalloc(strlen(b64)), *enc = xmalloc(strlen(b64) + 4);
	int n = EVP_DecodeBlock(raw, (const unsigned char *)b64, (int)strlen(b64));
	char *at, *text;
	size_t b64len = strlen(b64);

	assert_true(n > 0);
	while (b64len && b64[b64len - 1] == '=') /* DecodeBlock counts padding as zero bytes */
		b64len--, n--;
	at = memmem(raw, (size_t)n, "\"built_at\"", 10);
	assert_non_null(at);
	at = memchr(at + 10, '"', (size_t)n - (size_t)(at + 10 - (char *)raw));
	assert_non_null(at);
	at += 1 + 18;                 /* YYYY-MM-DDTHH:MM:SS: the last digit of the seconds */
	assert_true(*at >= '0' && *at <= '9');
	*at = *at == '0' ? '1' : '0';
	EVP_EncodeBlock(enc, raw, n);
	assert_int_equal(strlen((char *)enc), strlen(b64));
	text = xmalloc(env->len + 1);
	memcpy(text, env->ptr, env->len);
	text[env->len] = 0;
	memcpy(strstr(text, b64), enc, strlen(b64));
	buf_init(out, env->len + 1);
	buf_put(out, text, env->len);
	free(text);
	free(raw);
	free(enc);
	json_decref(e);
}

/* otacd-fleetsim's core engine (libotadev per simulated device, the
 * root as anchor, fleetsim/port_sim.c's verify_msg): n devices on 1.0.0
 * until they all run 1.1.0 or 120 s pass; its stats. */
static json_t *fleetsim_run(struct daemon *d, int n)
{
	char *bin = h_bin("otacd-fleetsim"), *prof = xasprintf("%s/profile.json", d->dir);
	char *log = xasprintf("%s/sim.log", d->dir), *stats = xasprintf("%s/stats.json", d->dir);
	char *root = xasprintf("%s/root/root.crt.pem", d->dir), *key = xasprintf("%s/ed.pub", d->dir), devices[16];
	static const char profile[] = "{\"default\": {\"crash_rate\": 0, \"boot_fail_rate\": 0, \"revert_rate\": 0},"
				      " \"silent\": 0, \"flaky\": 0, \"hardware\": {\"" HW "\": 1}, \"bootloader\": {\"1.2.0\": 1}}";
	json_t *st;
	pid_t pid;

	snprintf(devices, sizeof(devices), "%d", n);
	assert_int_equal(ota_write_file_atomic(prof, profile, strlen(profile), 0600), 0);
	pid = fork();
	if (pid == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
		h_child_dies_with_test();
		dup2(fd, 1);
		dup2(fd, 2);
		execl(bin, bin, "--engine", "core", "--url", d->device_url, "--devices", devices, "--seed", "3",
		      "--trust-root", root, "--key", key, "--fleet-key", d->fleet_key, "--product", "fw", "--profile",
		      prof, "--start-version", "1.0.0", "--start-counter", "1", "--stats", stats, "--quiet",
		      "--duration", "120", "--until", "1.1.0:1.0", (char *)NULL);
		_exit(127);
	}
	assert_true(pid > 0);
	st = h_fleetsim_stats(pid, stats, log);
	free(bin);
	free(prof);
	free(log);
	free(stats);
	free(root);
	free(key);
	return st;
}

static void ed25519_signed_release_lands_and_a_tampered_envelope_is_refused(void **state)
{
	const char *const args[] = { "--local-agents", "1", NULL };
	struct daemon d;
	struct buf out = BUF_INIT, env = BUF_INIT, bad = BUF_INIT;
	char *otactl = h_bin("otactl"), *cfg, *factory, *conf, *envp, **cred;
	int64_t release;
	json_t *s, *e;
	pid_t pid;

	(void)state;
	h_init(&d, NULL);
	/* the PKI: an offline root certifies the Ed25519 release key */
	assert_int_equal(dh_sh_in(d.dir, NULL, "%s keys root init root", otactl), 0);
	assert_int_equal(dh_sh_in(d.dir, NULL, "openssl genpkey -algorithm ed25519 -out ed.pem 2>/dev/null"
				       " && openssl pkey -in ed.pem -pubout -out ed.pub"
				       " && %s keys certify ed.pub --root root -o ed.crt", otactl), 0);
	cfg = xasprintf("trust_root: %s/root/root.crt.pem\npoll_interval: 1s\nkeys:\n"
			"  ed: { spec: %s/ed.pem, certificate: %s/ed.crt }\n", d.dir, d.dir, d.dir);
	d.config = xasprintf("%s/config.yml", d.dir);
	assert_int_equal(ota_write_file_atomic(d.config, cfg, strlen(cfg), 0600), 0);
	assert_int_equal(h_start(&d, args), 0);
	cred = h_register_devices(&d, "ed", 2);
	factory = dh_factory_image(d.dir, "ed", 1);

	release = dh_release_of(&d, h_trigger(&d, PIPE));
	assert_true(release > 0);
	/* the manifest's DSSE signature is Ed25519's (64 bytes) */
	envp = envelope_path(&d, release);
	assert_int_equal(ota_read_file(&env, envp, 1 << 20), 0);
	e = json_loadb(env.ptr, env.len, 0, NULL);
	assert_non_null(e);
	{
		const char *sig = json_string_value(json_object_get(json_array_get(json_object_get(e, "signatures"), 0), "sig"));
		unsigned char raw[128];
		assert_non_null(sig);
		assert_int_equal(strlen(sig), 88);            /* base64 of 64 bytes */
		assert_int_equal(EVP_DecodeBlock(raw, (const unsigned char *)sig, 88), 66);
	}
	json_decref(e);

	/* the stored envelope edited: the unit refuses the image before it
	 * marks anything bootable, saying the Ed25519 signature failed */
	tamper_built_at(&env, &bad);
	assert_int_equal(ota_write_file_atomic(envp, bad.ptr, bad.len, 0644), 0);
	conf = device_unit(&d, "ed-0001", cred[1], factory);
	pid = dh_device_loop(conf);
	s = wait_status(conf, refused);
	dh_stop(pid);
	if (!refused(s)) {
		h_sh(&out, "tail -20 %s.log", conf);
		fail_msg("the unit did not refuse the tampered release: %s", buf_cstr(&out));
	}
	assert_string_equal(dh_js(s, "version", NULL), "1.0.0");
	assert_string_equal(dh_js(s, "primary", "version"), "1.0.0");
	assert_true(dh_ji(s, "secondary", "magic") != OTADEV_MAGIC_GOOD);
	json_decref(s);
	assert_int_equal(h_sh(&out, "grep -c \"Ed25519 signature does not verify\" %s.log", conf), 0);
	assert_int_equal(dh_fleet_count(&d, release, "confirmed"), 0);
	free(conf);

	/* the genuine envelope: a unit on 1.0.0 takes 1.1.0 through a test
	 * boot and confirms it; otacd counts it */
	assert_int_equal(ota_write_file_atomic(envp, env.ptr, env.len, 0644), 0);
	conf = device_unit(&d, "ed-0000", cred[0], factory);
	pid = dh_device_loop(conf);
	s = wait_status(conf, landed);
	dh_stop(pid);
	if (!landed(s)) {
		h_sh(&out, "tail -20 %s.log", conf);
		fail_msg("the Ed25519 release did not land: %s", buf_cstr(&out));
	}
	assert_string_equal(dh_js(s, "primary", "version"), "1.1.0");
	json_decref(s);
	assert_int_equal(dh_fleet_wait(&d, release, "confirmed", 1, 60000), 1);

	/* the simulator runs the same core: 40 devices verify the Ed25519
	 * manifest through fleetsim's port and install the release */
	s = fleetsim_run(&d, 40);
	if (json_integer_value(json_object_get(json_object_get(s, "versions"), "1.1.0")) != 40) {
		char *t = json_dumps(s, 0);
		fail_msg("fleetsim devices did not all take the Ed25519 release: %s", t);
	}
	assert_int_equal(json_integer_value(json_object_get(s, "refused_bad_signature")), 0);
	json_decref(s);

	free(conf);
	free(envp);
	free(factory);
	free(cfg);
	free(otactl);
	for (int i = 0; i < 2; i++)
		free(cred[i]);
	free(cred);
	buf_release(&env);
	buf_release(&bad);
	buf_release(&out);
	h_cleanup(&d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(ed25519_signed_release_lands_and_a_tampered_envelope_is_refused),
	};
	cmocka_set_test_filter(getenv("X_ONLY"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
