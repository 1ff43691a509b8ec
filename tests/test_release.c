/*
 * test_release.c - the `release` stage kind through a real otacd: images
 * signed as MCUboot images, a signed manifest and SLSA provenance, checked
 * by `otactl verify`, by the openssl CLI alone (DSSE PAE), and by MCUboot's
 * imgtool when OTACD_IMGTOOL points at it; tampering, anti-rollback,
 * version order, key rotation and a key inside a SoftHSM2 token.
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

#include "../orchestrator/provenance.h"
#include "harness.h"

static char *pipeline(const char *version, int counter, const char *key)
{
	return xasprintf("name: fw\nstages:\n"
			 "  - name: build\n    matrix: { board: [an385, an386] }\n"
			 "    steps: [ { run: 'head -c 3000 /dev/urandom > app.bin' } ]\n"
			 "    artifacts: [ { path: app.bin, name: 'app-${{ matrix.board }}.bin', type: application, hardware: '${{ matrix.board }}' } ]\n"
			 "  - { name: release, kind: release, needs: [build], version: \"%s\", security_counter: %d, key: %s }\n",
			 version, counter, key);
}

static void keygen(struct daemon *d, const char *name)
{
	struct buf out = BUF_INIT;
	assert_int_equal(h_sh(&out, "cd %s && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out %s.pem && "
				    "openssl pkey -in %s.pem -pubout -out %s.pub", d->dir, name, name, name), 0);
	buf_release(&out);
}

static int64_t release_run(struct daemon *d, const char *version, int counter, const char *key, const char **state)
{
	char *y = pipeline(version, counter, key);
	int64_t run = h_trigger(d, y);
	*state = h_wait_run(d, run, 30000);
	free(y);
	return run;
}

static char *job_log(struct daemon *d, int64_t run, const char *job)
{
	struct buf out = BUF_INIT;
	json_t *r = h_run(d, run);
	h_sh(&out, "curl -s -H 'Authorization: Bearer %s' %s/api/v1/jobs/%lld/log", d->token, d->url,
	     (long long)json_integer_value(json_object_get(h_job(r, job), "id")));
	json_decref(r);
	return buf_detach(&out);
}

static void start(struct daemon *d, const char *keys_yaml)
{
	const char *const args[] = { "--local-agents", "2", NULL };
	/* the first release is counter 3: the product's policy allows a first
	 * step of 3 (the default is +1 over 0, docs/config.md "products") */
	char *dir = h_tmpdir(), *cfg = xasprintf("products:\n  fw: { max_counter_increase: 3 }\nkeys:\n%s", keys_yaml);
	(void)dir;
	h_init(d, NULL);
	free(dir);
	free(d->config);
	d->config = xasprintf("%s/config.yml", d->dir);
	{
		/* key paths are relative to the test's directory */
		struct buf text = BUF_INIT;
		for (const char *p = cfg; *p; p++) {
			if (!strncmp(p, "@DIR@", 5)) {
				buf_puts(&text, d->dir);
				p += 4;
			} else {
				buf_putc(&text, *p);
			}
		}
		ota_write_file_atomic(d->config, text.ptr, text.len, 0600);
		buf_release(&text);
	}
	free(cfg);
	keygen(d, "k1");
	keygen(d, "k2");
	h_start(d, args);
}

static void release_is_signed_and_verifies_with_otactl_openssl_and_imgtool(void **state)
{
	struct daemon d;
	struct buf out = BUF_INIT;
	char *otactl = h_bin("otactl");
	const char *st;
	json_t *rel = NULL, *env = NULL;
	(void)state;
	start(&d, "  k1: { spec: @DIR@/k1.pem }\n");
	release_run(&d, "1.0.0", 3, "k1", &st);
	assert_string_equal(st, "passed");
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM releases"), 1);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM artifacts WHERE released = 1"), 7);

	/* otactl verify, with the daemon's published keys and with a given key */
	assert_int_equal(h_sh(&out, "%s --url %s --token %s verify 1", otactl, d.url, d.token), 0);
	assert_non_null(strstr(buf_cstr(&out), "release verifies"));
	assert_non_null(strstr(buf_cstr(&out), "provenance subjects are the 2 image(s) and the manifest"));
	assert_int_equal(h_sh(&out, "%s --url %s --token %s verify 1 --key %s/k1.pub", otactl, d.url, d.token, d.dir), 0);
	/* the wrong key: refused */
	assert_int_equal(h_sh(&out, "%s --url %s --token %s verify 1 --key %s/k2.pub", otactl, d.url, d.token, d.dir), 1);
	assert_non_null(strstr(buf_cstr(&out), "FAIL"));

	/* one signed image, alone */
	assert_int_equal(h_sh(&out, "cd %s && %s --url %s --token %s artifacts get 1/release/an385/app-an385.bin.signed.bin -o img.bin && "
				    "%s verify img.bin --key k1.pub", d.dir, otactl, d.url, d.token, otactl), 0);
	assert_non_null(strstr(buf_cstr(&out), "security counter 3"));
	if (getenv("OTACD_IMGTOOL")) {
		assert_int_equal(h_sh(&out, "cd %s && /usr/bin/python3 %s verify -k k1.pem img.bin", d.dir, getenv("OTACD_IMGTOOL")), 0);
		assert_non_null(strstr(buf_cstr(&out), "Image was correctly validated"));
	} else {
		fprintf(stderr, "note: OTACD_IMGTOOL unset, MCUboot's imgtool check skipped\n");
	}

	/* the manifest envelope, checked with openssl alone: PAE built here */
	assert_int_equal(h_get(&d, "/api/v1/releases/1", &rel), 200);
	{
		char *path = xasprintf("%s/env.json", d.dir);
		struct buf b = BUF_INIT, payload = BUF_INIT, sig = BUF_INIT, pae = BUF_INIT;
		const char *type;
		assert_int_equal(h_sh(&out, "cd %s && %s --url %s --token %s artifacts get 1/release/manifest.dsse.json -o env.json",
				      d.dir, otactl, d.url, d.token), 0);
		assert_int_equal(ota_read_file(&b, path, 1 << 20), 0);
		env = json_loadb(b.ptr, b.len, 0, NULL);
		type = json_string_value(json_object_get(env, "payloadType"));
		assert_int_equal(dsse_base64_decode(&payload, json_string_value(json_object_get(env, "payload")),
						    strlen(json_string_value(json_object_get(env, "payload")))), 0);
		{
			const char *s64 = json_string_value(json_object_get(json_array_get(json_object_get(env, "signatures"), 0), "sig"));
			assert_int_equal(dsse_base64_decode(&sig, s64, strlen(s64)), 0);
		}
		buf_printf(&pae, "DSSEv1 %zu %s %zu ", strlen(type), type, payload.len);
		buf_put(&pae, payload.ptr, payload.len);
		free(path);
		path = xasprintf("%s/pae.bin", d.dir);
		ota_write_file_atomic(path, pae.ptr, pae.len, 0600);
		free(path);
		path = xasprintf("%s/sig.der", d.dir);
		ota_write_file_atomic(path, sig.ptr, sig.len, 0600);
		free(path);
		assert_int_equal(h_sh(&out, "cd %s && openssl dgst -sha256 -verify k1.pub -signature sig.der pae.bin", d.dir), 0);
		assert_non_null(strstr(buf_cstr(&out), "Verified OK"));
		buf_release(&b);
		buf_release(&payload);
		buf_release(&sig);
		buf_release(&pae);
	}
	json_decref(env);
	json_decref(rel);
	free(otactl);
	buf_release(&out);
	h_cleanup(&d);
}

/* The toolchain a `build` stage recorded is in the manifest's
 * dependencies and the provenance's resolvedDependencies, and the release
 * still verifies. */
static void build_toolchain_versions_reach_manifest_and_provenance(void **state)
{
	struct daemon d;
	struct buf out = BUF_INIT, text = BUF_INIT;
	char *otactl = h_bin("otactl"), *path;
	const char *y = "name: fw\nstages:\n"
			"  - name: build\n    kind: build\n    toolchain: [\"cc --version\"]\n"
			"    steps: [ { run: 'head -c 3000 /dev/zero > app.bin' } ]\n"
			"    artifacts: [ { path: app.bin, type: application, hardware: an385 } ]\n"
			"  - { name: release, kind: release, needs: [build], version: \"1.0.0\", security_counter: 1, key: k1 }\n";
	int64_t run;
	json_t *env, *stmt;
	(void)state;
	start(&d, "  k1: { spec: @DIR@/k1.pem }\n");
	run = h_trigger(&d, y);
	assert_string_equal(h_wait_run(&d, run, 30000), "passed");
	assert_int_equal(h_sh(&out, "%s --url %s --token %s verify 1", otactl, d.url, d.token), 0);
	assert_int_equal(h_sh(&out, "cd %s && %s --url %s --token %s artifacts get 1/release/manifest.json -o m.json && "
				    "%s --url %s --token %s artifacts get 1/release/provenance.dsse.json -o p.json",
			      d.dir, otactl, d.url, d.token, otactl, d.url, d.token), 0);
	path = xasprintf("%s/m.json", d.dir);
	assert_int_equal(ota_read_file(&text, path, 1 << 20), 0);
	assert_non_null(strstr(buf_cstr(&text), "\"dependencies\""));
	assert_non_null(strstr(buf_cstr(&text), "cc --version"));
	free(path);
	buf_release(&text);
	path = xasprintf("%s/p.json", d.dir);
	assert_int_equal(ota_read_file(&text, path, 1 << 20), 0);
	env = json_loadb(text.ptr, text.len, 0, NULL);
	assert_non_null(env);
	{
		struct buf payload = BUF_INIT;
		const char *p64 = json_string_value(json_object_get(env, "payload"));
		assert_int_equal(dsse_base64_decode(&payload, p64, strlen(p64)), 0);
		stmt = json_loadb(payload.ptr, payload.len, 0, NULL);
		assert_non_null(stmt);
		buf_release(&payload);
	}
	{
		char *dump = json_dumps(json_object_get(json_object_get(json_object_get(stmt, "predicate"), "buildDefinition"),
							"resolvedDependencies"), 0);
		assert_non_null(strstr(dump, "cc --version"));
		free(dump);
	}
	json_decref(stmt);
	json_decref(env);
	free(path);
	free(otactl);
	buf_release(&out);
	buf_release(&text);
	h_cleanup(&d);
}

/* GET /api/v1/releases/1/verification: its "ok"; when failed_image is
 * given, the one failed check must be that image's. */
static int verification_ok(struct daemon *d, const char *failed_image)
{
	json_t *ans = NULL, *c;
	size_t i, failed = 0, n;
	int ok;

	assert_int_equal(h_get(d, "/api/v1/releases/1/verification", &ans), 200);
	ok = json_is_true(json_object_get(ans, "ok"));
	n = json_array_size(json_object_get(ans, "checks"));
	assert_true(n >= 5); /* manifest signature and schema, images, provenance */
	json_array_foreach(json_object_get(ans, "checks"), i, c) {
		if (json_is_true(json_object_get(c, "ok")))
			continue;
		failed++;
		if (failed_image) {
			assert_string_equal(json_string_value(json_object_get(c, "step")), "image");
			assert_string_equal(json_string_value(json_object_get(c, "name")), failed_image);
		}
	}
	assert_int_equal(ok, failed == 0);
	if (failed_image)
		assert_int_equal(failed, 1);
	json_decref(ans);
	return ok;
}

static void tampering_with_an_image_or_the_manifest_fails_verification(void **state)
{
	struct daemon d;
	struct buf out = BUF_INIT;
	char *otactl = h_bin("otactl");
	const char *st;
	(void)state;
	start(&d, "  k1: { spec: @DIR@/k1.pem }\n");
	release_run(&d, "1.0.0", 3, "k1", &st);
	assert_string_equal(st, "passed");
	/* the daemon's own check (the page's Verification section) passes ... */
	assert_true(verification_ok(&d, NULL));
	/* flip one byte of a signed image where it is stored */
	assert_int_equal(h_sh(&out, "cd %s/state/artifacts/sha256 && sha=$(sqlite3 %s/state/otacd.db \"SELECT sha256 FROM artifacts"
				    " WHERE name LIKE 'release/an386/%%'\"); f=$(echo $sha | cut -c1-2)/$sha; "
				    "printf '\\x5a' | dd of=$f bs=1 seek=600 conv=notrunc 2>/dev/null", d.dir, d.dir), 0);
	assert_int_equal(h_sh(&out, "%s --url %s --token %s verify 1", otactl, d.url, d.token), 1);
	assert_non_null(strstr(buf_cstr(&out), "FAIL  release/an386/app-an386.bin.signed.bin: sha256"));
	assert_non_null(strstr(buf_cstr(&out), "release does NOT verify"));
	/* ... and now fails on that image, and only on it */
	assert_false(verification_ok(&d, "release/an386/app-an386.bin.signed.bin"));
	/* and one byte of the manifest */
	assert_int_equal(h_sh(&out, "cd %s/state/artifacts/sha256 && sha=$(sqlite3 %s/state/otacd.db \"SELECT sha256 FROM artifacts"
				    " WHERE name = 'release/manifest.json'\"); f=$(echo $sha | cut -c1-2)/$sha; "
				    "printf '9' | dd of=$f bs=1 seek=40 conv=notrunc 2>/dev/null", d.dir, d.dir), 0);
	assert_int_equal(h_sh(&out, "%s --url %s --token %s verify 1", otactl, d.url, d.token), 1);
	assert_non_null(strstr(buf_cstr(&out), "the signed manifest differs from the stored manifest"));
	free(otactl);
	buf_release(&out);
	h_cleanup(&d);
}

static void lower_security_counter_and_older_version_are_refused(void **state)
{
	struct daemon d;
	const char *st;
	char *log;
	int64_t run;
	(void)state;
	start(&d, "  k1: { spec: @DIR@/k1.pem }\n");
	release_run(&d, "1.0.0", 3, "k1", &st);
	assert_string_equal(st, "passed");
	run = release_run(&d, "1.1.0", 2, "k1", &st);
	assert_string_equal(st, "failed");
	log = job_log(&d, run, "release");
	assert_non_null(strstr(log, "security counter 2 is lower than 3"));
	free(log);
	run = release_run(&d, "1.0.0", 3, "k1", &st);
	assert_string_equal(st, "failed");
	log = job_log(&d, run, "release");
	assert_non_null(strstr(log, "version 1.0.0 is not greater than 1.0.0"));
	free(log);
	/* an equal counter with a newer version is fine; so is a higher one */
	release_run(&d, "1.1.0", 3, "k1", &st);
	assert_string_equal(st, "passed");
	release_run(&d, "1.2.0", 4, "k1", &st);
	assert_string_equal(st, "passed");
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM releases"), 3);
	h_cleanup(&d);
}

static void releases_signed_before_and_after_a_key_rotation_both_verify(void **state)
{
	struct daemon d;
	struct buf out = BUF_INIT;
	char *otactl = h_bin("otactl");
	const char *st;
	(void)state;
	start(&d, "  k1: { spec: @DIR@/k1.pem }\n  k2: { spec: @DIR@/k2.pem }\n");
	release_run(&d, "1.0.0", 3, "k1", &st);
	assert_string_equal(st, "passed");
	release_run(&d, "1.1.0", 3, "k2", &st);
	assert_string_equal(st, "passed");
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(DISTINCT key_id) FROM releases"), 2);
	assert_int_equal(h_sh(&out, "%s --url %s --token %s verify 1", otactl, d.url, d.token), 0);
	assert_int_equal(h_sh(&out, "%s --url %s --token %s verify 2", otactl, d.url, d.token), 0);
	assert_int_equal(h_sh(&out, "%s --url %s --token %s verify 1 --key %s/k1.pub --key %s/k2.pub", otactl, d.url,
			      d.token, d.dir, d.dir), 0);
	assert_int_equal(h_sh(&out, "%s --url %s --token %s verify 2 --key %s/k1.pub", otactl, d.url, d.token, d.dir), 1);
	free(otactl);
	buf_release(&out);
	h_cleanup(&d);
}

static void release_signed_inside_a_softhsm_token_verifies(void **state)
{
	struct daemon d;
	struct buf out = BUF_INIT;
	char *otactl = h_bin("otactl"), *conf, *tokdir;
	const char *st;
	(void)state;
	start(&d, "  hsm: { spec: \"pkcs11:token=fw;object=release\", pin: \"1234\" }\n");
	h_kill(&d, SIGTERM);
	tokdir = xasprintf("%s/tokens", d.dir);
	conf = xasprintf("%s/softhsm2.conf", d.dir);
	assert_int_equal(h_sh(&out, "mkdir -p %s && printf 'directories.tokendir = %s\\n' > %s && export SOFTHSM2_CONF=%s && "
				    "softhsm2-util --init-token --free --label fw --pin 1234 --so-pin 5678 >/dev/null && "
				    "pkcs11-tool --module /usr/lib/softhsm/libsofthsm2.so --token-label fw --login --pin 1234 "
				    "--keypairgen --key-type EC:prime256v1 --label release --id 01 >/dev/null",
			      tokdir, tokdir, conf, conf), 0);
	setenv("SOFTHSM2_CONF", conf, 1);
	{
		const char *const args[] = { "--local-agents", "2", NULL };
		h_start(&d, args);
	}
	release_run(&d, "1.0.0", 1, "hsm", &st);
	if (strcmp(st, "passed")) {
		char *log = job_log(&d, 1, "release");
		fail_msg("release with the HSM key: %s\n%s", st, log);
	}
	assert_int_equal(h_sh(&out, "%s --url %s --token %s verify 1", otactl, d.url, d.token), 0);
	/* the public key read back from the token verifies it too */
	assert_int_equal(h_sh(&out, "cd %s && SOFTHSM2_CONF=%s pkcs11-tool --module /usr/lib/softhsm/libsofthsm2.so --token-label fw "
				    "--read-object --type pubkey --label release -o hsm.der >/dev/null 2>&1 && "
				    "openssl pkey -pubin -inform DER -in hsm.der -out hsm.pub && %s --url %s --token %s verify 1 --key hsm.pub",
			      d.dir, conf, otactl, d.url, d.token), 0);
	unsetenv("SOFTHSM2_CONF");
	free(conf);
	free(tokdir);
	free(otactl);
	buf_release(&out);
	h_cleanup(&d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(release_is_signed_and_verifies_with_otactl_openssl_and_imgtool),
		cmocka_unit_test(build_toolchain_versions_reach_manifest_and_provenance),
		cmocka_unit_test(tampering_with_an_image_or_the_manifest_fails_verification),
		cmocka_unit_test(lower_security_counter_and_older_version_are_refused),
		cmocka_unit_test(releases_signed_before_and_after_a_key_rotation_both_verify),
		cmocka_unit_test(release_signed_inside_a_softhsm_token_verifies),
	};
	return cmocka_run_group_tests_name("release", tests, NULL, NULL);
}
