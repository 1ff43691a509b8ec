/*
 * test_pki.c - the update channel's signing PKI (issue 13, docs/security.md):
 * an offline root made by `otactl keys root init`, signing keys certified
 * by `otactl keys certify`, releases carrying their chain in the signed
 * manifest, verifiers trusting the root instead of a list of keys, and a
 * root-signed revocation list that devices fetch with their check-in.
 *
 * Every certificate and key is made at test time (otactl, or the openssl
 * CLI for the malformed ones an attacker would bring) in the test's temp
 * directory.  The end-to-end tests run the real daemon, real pipelines,
 * `otactl`, and real otacd-fleetsim devices.
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
#include <time.h>
#include <unistd.h>

#include "../fleetsim/trust.h"
#include "../orchestrator/manifest.h"
#include "../orchestrator/pki.h"
#include "devharness.h"
#include "harness.h"

/* ---- material, made with otactl and openssl -------------------------------- */

static char *otactl_bin;

/* name.pem (P-256 private key) and name.pub in dir. */
static void make_key(const char *dir, const char *name)
{
	assert_int_equal(dh_sh_in(dir, NULL, "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out %s.pem"
				       " 2>/dev/null && openssl pkey -in %s.pem -pubout -out %s.pub", name, name, name), 0);
}

/* The key id of dir/name.pub (keys.h: SHA-256 of the DER SubjectPublicKeyInfo). */
static void key_id(const char *dir, const char *name, char out[65])
{
	struct buf b = BUF_INIT;
	assert_int_equal(dh_sh_in(dir, &b, "openssl pkey -pubin -in %s.pub -outform DER | sha256sum | cut -c1-64", name), 0);
	assert_true(b.len >= 64);
	memcpy(out, b.ptr, 64);
	out[64] = 0;
	buf_release(&b);
}

/* `otactl keys certify name.pub --root root -o name.crt EXTRA`. */
static void certify(const char *dir, const char *root, const char *name, const char *extra)
{
	assert_int_equal(dh_sh_in(dir, NULL, "%s keys certify %s.pub --root %s -o %s.crt %s", otactl_bin, name, root, name,
			       extra ? extra : ""), 0);
}

static char *read_text(const char *dir, const char *name)
{
	char *p = xasprintf("%s/%s", dir, name);
	struct buf b = BUF_INIT;
	assert_int_equal(ota_read_file(&b, p, 1 << 20), 0);
	free(p);
	return buf_detach(&b);
}

static X509 *root_of(const char *dir, const char *root)
{
	char *p = xasprintf("%s/%s/root.crt.pem", dir, root);
	X509 *x = NULL;
	assert_int_equal(pki_root_load_file(&x, p), 0);
	free(p);
	return x;
}

/* The chain of dir/file as a manifest carries it. */
static json_t *chain_of(const char *dir, const char *file)
{
	char *t = read_text(dir, file);
	json_t *c = NULL;
	assert_int_equal(pki_chain_from_pem(&c, t, strlen(t)), 0);
	free(t);
	return c;
}

static void expect_refused(X509 *root, const char *dir, const char *file, time_t at, const X509_CRL *crl,
			   const char *needle)
{
	json_t *c = chain_of(dir, file);
	int rc = pki_chain_verify(NULL, NULL, root, c, at, crl);
	if (rc == 0 || !strstr(ota_error_last(), needle))
		print_error("%s: rc %d, '%s', wanted '%s'\n", file, rc, rc ? ota_error_last() : "accepted", needle);
	assert_int_equal(rc, OTA_EAUTH);
	assert_non_null(strstr(ota_error_last(), needle));
	json_decref(c);
}

/*
 * The bad certificates of an attacker or a mistake, in dir: expired,
 * not-yet-valid, wrong key usage (no codeSigning; keyCertSign), a
 * self-signed leaf, one certified by another root, and the root itself as
 * a "signing certificate".
 */
static void make_bad_certs(const char *dir)
{
	const char *ca = "-CA root/root.crt.pem -CAkey root/root.key.pem -days 30 -set_serial 7";

	assert_int_equal(dh_sh_in(dir, NULL, "%s keys root init other --cn 'another root'", otactl_bin), 0);
	make_key(dir, "expired");
	certify(dir, "root", "expired", "--not-before 2020-01-01T00:00:00Z --not-after 2021-01-01T00:00:00Z");
	make_key(dir, "future");
	certify(dir, "root", "future", "--not-before 2040-01-01T00:00:00Z --days 30");
	make_key(dir, "foreign");
	certify(dir, "other", "foreign", NULL);
	make_key(dir, "noeku");
	assert_int_equal(dh_sh_in(dir, NULL, "printf 'basicConstraints=critical,CA:FALSE\\nkeyUsage=critical,digitalSignature\\n' > noeku.ext"
				       " && openssl req -new -key noeku.pem -subj /CN=noeku -out noeku.csr"
				       " && openssl x509 -req -in noeku.csr %s -extfile noeku.ext -out noeku.crt 2>/dev/null", ca), 0);
	make_key(dir, "certsign");
	assert_int_equal(dh_sh_in(dir, NULL, "printf 'basicConstraints=critical,CA:FALSE\\nkeyUsage=critical,digitalSignature,keyCertSign\\n"
				       "extendedKeyUsage=critical,codeSigning\\n' > certsign.ext"
				       " && openssl req -new -key certsign.pem -subj /CN=certsign -out certsign.csr"
				       " && openssl x509 -req -in certsign.csr %s -extfile certsign.ext -out certsign.crt 2>/dev/null", ca), 0);
	make_key(dir, "selfsigned");
	assert_int_equal(dh_sh_in(dir, NULL, "openssl req -x509 -key selfsigned.pem -subj /CN=selfsigned -days 30"
				       " -addext basicConstraints=critical,CA:FALSE -addext keyUsage=critical,digitalSignature"
				       " -addext extendedKeyUsage=critical,codeSigning -out selfsigned.crt"), 0);
}

/* ---- the chain check itself --------------------------------------------------- */

static void chain_check_refuses_expired_future_misused_self_signed_and_foreign_certificates(void **state)
{
	char *dir = h_tmpdir();
	X509 *root, *other;
	json_t *c;
	EVP_PKEY *leaf = NULL;
	char id[65], want[65];
	time_t now = time(NULL);

	(void)state;
	assert_int_equal(dh_sh_in(dir, NULL, "%s keys root init root", otactl_bin), 0);
	/* a second init does not overwrite the root */
	assert_int_not_equal(dh_sh_in(dir, NULL, "%s keys root init root 2>/dev/null", otactl_bin), 0);
	make_key(dir, "good");
	certify(dir, "root", "good", "--days 30");
	make_bad_certs(dir);
	root = root_of(dir, "root");
	other = root_of(dir, "other");

	/* the good one: its key comes out, with its id */
	c = chain_of(dir, "good.crt");
	assert_int_equal(pki_chain_verify(&leaf, id, root, c, now, NULL), 0);
	key_id(dir, "good", want);
	assert_string_equal(id, want);
	assert_non_null(leaf);
	EVP_PKEY_free(leaf);
	/* validity is judged at the signing time, not now: a release signed
	 * while the certificate was valid stays good after it expired */
	assert_int_equal(pki_chain_verify(NULL, NULL, root, c, now + 40 * 86400, NULL), OTA_EAUTH);
	assert_non_null(strstr(ota_error_last(), "expired at the signing time"));
	assert_int_equal(pki_chain_verify(NULL, NULL, root, c, now - 86400, NULL), OTA_EAUTH);
	assert_non_null(strstr(ota_error_last(), "not yet valid"));
	/* the same certificate is foreign to another root */
	assert_int_equal(pki_chain_verify(NULL, NULL, other, c, now, NULL), OTA_EAUTH);
	assert_non_null(strstr(ota_error_last(), "does not end at the trusted root"));
	json_decref(c);

	expect_refused(root, dir, "expired.crt", now, NULL, "expired at the signing time");
	expect_refused(root, dir, "future.crt", now, NULL, "not yet valid at the signing time");
	expect_refused(root, dir, "noeku.crt", now, NULL, "no extended key usage codeSigning");
	expect_refused(root, dir, "certsign.crt", now, NULL, "wrong key usage");
	expect_refused(root, dir, "selfsigned.crt", now, NULL, "self-signed");
	expect_refused(root, dir, "foreign.crt", now, NULL, "does not end at the trusted root");
	expect_refused(root, dir, "root/root.crt.pem", now, NULL, "self-signed");
	/* a chain padded with the real root does not help a foreign leaf */
	assert_int_equal(dh_sh_in(dir, NULL, "cat foreign.crt root/root.crt.pem > padded.crt"), 0);
	expect_refused(root, dir, "padded.crt", now, NULL, "does not end at the trusted root");

	/* a chain file holds 1 to 4 certificates */
	assert_int_equal(dh_sh_in(dir, NULL, "cat good.crt good.crt good.crt good.crt good.crt > five.crt"), 0);
	{
		char *t = read_text(dir, "five.crt");
		assert_int_equal(pki_chain_from_pem(&c, t, strlen(t)), OTA_EINVAL);
		assert_non_null(strstr(ota_error_last(), "more than 4 certificates"));
		assert_int_equal(pki_chain_from_pem(&c, "no pem", 6), OTA_EINVAL);
		free(t);
	}

	/* the manifest's schema: a chain is 1 to 4 strings */
	{
		json_t *m = json_pack("{ss ss ss sI s{} ss s[] s[s] sI ss s[{ss ss ss sI}]}", "product", "fw", "version", "1.0.0",
				      "build_version", "1.0.0+1", "run", (json_int_t)1, "git", "built_at",
				      "2026-01-01T00:00:00Z", "builders", "hardware", "h", "security_counter", (json_int_t)1,
				      "key_id", "k", "images", "name", "a", "type", "application", "sha256",
				      "0000000000000000000000000000000000000000000000000000000000000000", "size", (json_int_t)1);
		assert_non_null(m);
		assert_int_equal(manifest_check(m), 0);
		json_object_set_new(m, "signing_chain", json_pack("[i]", 1));
		assert_int_equal(manifest_check(m), OTA_EINVAL);
		assert_non_null(strstr(ota_error_last(), "signing_chain[0] must be a PEM string"));
		json_object_set_new(m, "signing_chain", json_array());
		assert_int_equal(manifest_check(m), OTA_EINVAL);
		json_object_set_new(m, "signing_chain", json_pack("[ssss s]", "a", "b", "c", "d", "e"));
		assert_int_equal(manifest_check(m), OTA_EINVAL);
		json_object_set_new(m, "signing_chain", json_pack("[s]", "pem"));
		assert_int_equal(manifest_check(m), 0);
		json_decref(m);
	}

	/* malformed chains are refused by name */
	c = json_pack("[s]", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
	assert_int_equal(pki_chain_verify(NULL, NULL, root, c, now, NULL), OTA_EINVAL);
	assert_non_null(strstr(ota_error_last(), "signing chain[0]: not a PEM certificate"));
	json_decref(c);
	c = json_array();
	assert_int_equal(pki_chain_verify(NULL, NULL, root, c, now, NULL), OTA_EINVAL);
	json_decref(c);
	X509_free(root);
	X509_free(other);
	dh_sh_in(dir, NULL, "rm -rf %s", dir);
	free(dir);
}

static void revocation_lists_must_be_the_roots_and_newer_on_devices(void **state)
{
	char *dir = h_tmpdir(), *crl1, *crl2, *forged;
	char id[65];
	X509 *root;
	X509_CRL *crl = NULL;
	int64_t number = 0;
	struct sim_trust t;
	struct sim_imgcache cache;
	json_t *c;

	(void)state;
	assert_int_equal(dh_sh_in(dir, NULL, "%s keys root init root && %s keys root init other", otactl_bin, otactl_bin), 0);
	make_key(dir, "a");
	make_key(dir, "b");
	certify(dir, "root", "a", NULL);
	certify(dir, "root", "b", NULL);
	certify(dir, "other", "b", NULL); /* other's list will name b's serial there */
	key_id(dir, "a", id);
	assert_int_equal(dh_sh_in(dir, NULL, "%s keys revoke %s --root root --reason keyCompromise -o crl1.pem", otactl_bin, id), 0);
	key_id(dir, "b", id);
	assert_int_equal(dh_sh_in(dir, NULL, "%s keys revoke %s --root root --reason superseded -o crl2.pem", otactl_bin, id), 0);
	assert_int_equal(dh_sh_in(dir, NULL, "%s keys revoke %s --root other --reason keyCompromise -o forged.pem", otactl_bin, id), 0);
	/* unknown keys and reasons are refused before anything is written */
	assert_int_not_equal(dh_sh_in(dir, NULL, "%s keys revoke 00000000000000000000 --root root --reason keyCompromise 2>/dev/null",
				   otactl_bin), 0);
	assert_int_not_equal(dh_sh_in(dir, NULL, "%s keys revoke %s --root root --reason whim 2>/dev/null", otactl_bin, id), 0);
	crl1 = read_text(dir, "crl1.pem");
	crl2 = read_text(dir, "crl2.pem");
	forged = read_text(dir, "forged.pem");
	root = root_of(dir, "root");

	/* the library: numbers, signer, entries */
	assert_int_equal(pki_crl_load(&crl, &number, crl2, strlen(crl2), root), 0);
	assert_int_equal(number, 2);
	c = chain_of(dir, "a.crt");
	assert_int_equal(pki_chain_verify(NULL, NULL, root, c, time(NULL), crl), OTA_EAUTH);
	assert_non_null(strstr(ota_error_last(), "is revoked (keyCompromise, revocation list 2)"));
	json_decref(c);
	X509_CRL_free(crl);
	assert_int_equal(pki_crl_load(&crl, &number, forged, strlen(forged), root), OTA_EAUTH);
	assert_non_null(strstr(ota_error_last(), "not signed by the trust root"));
	assert_int_equal(pki_crl_load(&crl, &number, "garbage", 7, root), OTA_EINVAL);

	/* a device (fleetsim/trust.c): the forged list and an older list are
	 * refused and change nothing */
	sim_imgcache_init(&cache, NULL, 0);
	assert_int_equal(sim_trust_init(&t, NULL), 0);
	t.root = root;
	assert_int_equal(sim_trust_accept_crl(&t, &cache, forged, strlen(forged)), OTA_EAUTH);
	assert_int_equal(t.number, 0);
	assert_int_equal(sim_trust_accept_crl(&t, &cache, crl2, strlen(crl2)), 0);
	assert_int_equal(t.number, 2);
	assert_int_equal(sim_trust_accept_crl(&t, &cache, crl1, strlen(crl1)), OTA_ECONFLICT);
	assert_int_equal(t.number, 2);
	assert_int_equal(sim_trust_accept_crl(&t, &cache, crl2, strlen(crl2)), OTA_ECONFLICT);
	assert_int_equal(t.crl_refused, 3);
	sim_trust_release(&t); /* frees root */
	sim_imgcache_release(&cache);
	free(crl1);
	free(crl2);
	free(forged);
	dh_sh_in(dir, NULL, "rm -rf %s", dir);
	free(dir);
}

/* The root key in a token (SoftHSM2 standing in for the offline HSM): it
 * never leaves it, and init, certify and revoke work through PKCS#11. */
static void root_key_in_a_token_certifies_and_revokes(void **state)
{
	char *dir = h_tmpdir(), id[65];
	struct buf out = BUF_INIT;
	const char *uri = "'pkcs11:token=offline;object=root'";

	(void)state;
	if (access("/usr/lib/softhsm/libsofthsm2.so", R_OK) != 0)
		fail_msg("needs SoftHSM2: apt-get install softhsm2 opensc libengine-pkcs11-openssl");
	assert_int_equal(dh_sh_in(dir, NULL, "mkdir -p tokens && printf 'directories.tokendir = %s/tokens\\nobjectstore.backend = file\\n'"
				       " > softhsm2.conf", dir), 0);
	{
		char *conf = xasprintf("%s/softhsm2.conf", dir);
		setenv("SOFTHSM2_CONF", conf, 1);
		free(conf);
	}
	unsetenv("OTACD_PKCS11_MODULE");
	assert_int_equal(dh_sh_in(dir, NULL, "softhsm2-util --init-token --free --label offline --pin 1234 --so-pin 5678 >/dev/null"
				       " && pkcs11-tool --module /usr/lib/softhsm/libsofthsm2.so --token-label offline --login --pin 1234"
				       " --keypairgen --key-type EC:prime256v1 --label root --id 01 >/dev/null"), 0);
	assert_int_equal(dh_sh_in(dir, NULL, "%s keys root init root --key %s --pin 1234 --cn 'hsm root'", otactl_bin, uri), 0);
	assert_int_not_equal(access("root/root.key.pem", F_OK), 0); /* no key file: it is in the token */
	make_key(dir, "a");
	assert_int_equal(dh_sh_in(dir, NULL, "%s keys certify a.pub --root root --root-key %s --pin 1234 -o a.crt", otactl_bin, uri), 0);
	/* OpenSSL's own verifier agrees */
	assert_int_equal(dh_sh_in(dir, &out, "openssl verify -x509_strict -CAfile root/root.crt.pem a.crt"), 0);
	key_id(dir, "a", id);
	assert_int_equal(dh_sh_in(dir, NULL, "%s keys revoke %s --root root --root-key %s --pin 1234 --reason keyCompromise -o crl.pem",
			       otactl_bin, id, uri), 0);
	assert_int_equal(dh_sh_in(dir, &out, "openssl verify -crl_check -CRLfile crl.pem -CAfile root/root.crt.pem a.crt"), 2);
	assert_non_null(strstr(buf_cstr(&out), "certificate revoked"));
	/* a wrong PIN signs nothing */
	assert_int_not_equal(dh_sh_in(dir, &out, "%s keys certify a.pub --root root --root-key %s --pin 9999 -o b.crt", otactl_bin, uri), 0);
	assert_int_not_equal(access("b.crt", F_OK), 0);
	unsetenv("SOFTHSM2_CONF");
	buf_release(&out);
	dh_sh_in(dir, NULL, "rm -rf %s", dir);
	free(dir);
}

/* ---- the daemon ------------------------------------------------------------------ */

static const char *const RELEASE_ONLY =
	"name: fw\nstages:\n"
	"  - name: build\n    steps: [ { run: \"printf 'fw %s' > app.bin && head -c 2000 /dev/zero >> app.bin\" } ]\n"
	"    artifacts: [ { path: app.bin, name: app.bin, type: application, hardware: mps2-an385 } ]\n"
	"  - { name: release, kind: release, needs: [build], version: \"%s\", security_counter: 1, key: %s }\n";

static void start_daemon(struct daemon *d, const char *config)
{
	const char *const args[] = { "--local-agents", "1", NULL };
	free(d->config);
	d->config = xasprintf("%s/config.yml", d->dir);
	assert_int_equal(ota_write_file_atomic(d->config, config, strlen(config), 0600), 0);
	assert_int_equal(h_start(d, args), 0);
}

/* Run the release pipeline with key `key`; the release id (0: the run failed). */
static int64_t release_with(struct daemon *d, const char *version, const char *key, const char **state)
{
	char *y = xasprintf(RELEASE_ONLY, version, version, key);
	char *sql;
	int64_t run = h_trigger(d, y), rel;

	*state = h_wait_run(d, run, 60000);
	sql = xasprintf("SELECT COALESCE((SELECT id FROM releases WHERE run_id = %lld), 0)", (long long)run);
	rel = h_sql_int(d, sql);
	free(sql);
	free(y);
	return rel;
}

/* The release of version with key fails, its job log saying why. */
static void release_refused(struct daemon *d, const char *version, const char *key, const char *why)
{
	char *y = xasprintf(RELEASE_ONLY, version, version, key);
	int64_t run = h_trigger(d, y);
	json_t *r, *job;
	struct buf out = BUF_INIT;

	assert_string_equal(h_wait_run(d, run, 60000), "failed");
	r = h_run(d, run);
	job = h_job(r, "release");
	assert_non_null(job);
	h_sh(&out, "curl -s -H 'Authorization: Bearer %s' %s/api/v1/jobs/%lld/log", d->token, d->url,
	     (long long)json_integer_value(json_object_get(job, "id")));
	if (!strstr(buf_cstr(&out), why))
		print_error("release with key %s: wanted '%s' in:\n%s\n", key, why, buf_cstr(&out));
	assert_non_null(strstr(buf_cstr(&out), why));
	json_decref(r);
	buf_release(&out);
	free(y);
}

static json_t *verification(struct daemon *d, int64_t rel)
{
	char *p = xasprintf("/api/v1/releases/%lld/verification", (long long)rel);
	json_t *v = NULL;
	assert_int_equal(h_get(d, p, &v), 200);
	free(p);
	return v;
}

static int checks_mention(const json_t *v, int ok, const char *needle)
{
	json_t *c;
	size_t i;
	json_array_foreach(json_object_get(v, "checks"), i, c)
		if (json_is_true(json_object_get(c, "ok")) == ok &&
		    strstr(json_string_value(json_object_get(c, "text")), needle))
			return 1;
	return 0;
}

static void release_signed_by_a_retired_key_still_verifies_by_its_chain(void **state)
{
	struct daemon d;
	struct buf out = BUF_INIT;
	const char *st;
	char *cfg, idA[65];
	int64_t r1, r2;
	json_t *v;

	(void)state;
	h_init(&d, NULL);
	assert_int_equal(dh_sh_in(d.dir, NULL, "%s keys root init root", otactl_bin), 0);
	make_key(d.dir, "a");
	make_key(d.dir, "b");
	make_key(d.dir, "bare");
	certify(d.dir, "root", "a", NULL);
	certify(d.dir, "root", "b", NULL);
	make_key(d.dir, "expired");
	certify(d.dir, "root", "expired", "--not-before 2020-01-01T00:00:00Z --not-after 2021-01-01T00:00:00Z");
	key_id(d.dir, "a", idA);
	cfg = xasprintf("trust_root: %s/root/root.crt.pem\nkeys:\n"
			"  a: { spec: %s/a.pem, certificate: %s/a.crt }\n"
			"  expired: { spec: %s/expired.pem, certificate: %s/expired.crt }\n"
			"  bare: { spec: %s/bare.pem }\n"
			"  mismatch: { spec: %s/bare.pem, certificate: %s/a.crt }\n",
			d.dir, d.dir, d.dir, d.dir, d.dir, d.dir, d.dir, d.dir);
	start_daemon(&d, cfg);
	free(cfg);

	/* a release by the certified key: its manifest carries the chain */
	r1 = release_with(&d, "1.1.0", "a", &st);
	assert_string_equal(st, "passed");
	assert_true(r1 > 0);
	v = verification(&d, r1);
	assert_true(json_is_true(json_object_get(v, "ok")));
	assert_true(checks_mention(v, 1, "chains to the trust root"));
	json_decref(v);

	/* the release stage refuses to sign with an expired certificate, a key
	 * without one (a trust root is configured), a certificate of another key */
	release_refused(&d, "1.1.1", "expired", "expired at the signing time");
	release_refused(&d, "1.1.2", "bare", "the signing key needs a certificate");
	release_refused(&d, "1.1.3", "mismatch", "not the signing key");
	assert_true(h_sql_int(&d, "SELECT COUNT(*) FROM releases") == 1);

	/* rotation: key a is retired (not revoked) and leaves the config; b
	 * signs from now on.  The old release still verifies: on the page... */
	h_kill(&d, SIGTERM);
	cfg = xasprintf("trust_root: %s/root/root.crt.pem\nkeys:\n  b: { spec: %s/b.pem, certificate: %s/b.crt }\n",
			d.dir, d.dir, d.dir);
	start_daemon(&d, cfg);
	free(cfg);
	v = verification(&d, r1);
	if (!json_is_true(json_object_get(v, "ok"))) {
		char *t = json_dumps(v, JSON_INDENT(1));
		print_error("%s\n", t);
		free(t);
	}
	assert_true(json_is_true(json_object_get(v, "ok")));
	assert_true(checks_mention(v, 1, "chains to the trust root"));
	json_decref(v);
	/* ... and with otactl, trusting the root file alone */
	assert_int_equal(dh_sh_in(d.dir, &out, "%s --url %s --token %s verify %lld --root root/root.crt.pem", otactl_bin, d.url,
			       d.token, (long long)r1), 0);
	assert_non_null(strstr(buf_cstr(&out), "release verifies"));
	/* ... or trusting the daemon's root (GET /api/v1/trust), as with its keys */
	assert_int_equal(dh_sh_in(d.dir, &out, "%s --url %s --token %s verify %lld", otactl_bin, d.url, d.token, (long long)r1), 0);
	assert_non_null(strstr(buf_cstr(&out), "chains to the trust root"));
	/* the new key's release verifies the same way */
	r2 = release_with(&d, "1.2.0", "b", &st);
	assert_string_equal(st, "passed");
	v = verification(&d, r2);
	assert_true(json_is_true(json_object_get(v, "ok")));
	json_decref(v);

	/* without the trust root, the retired key's release does not verify:
	 * the chain is what carries the trust */
	h_kill(&d, SIGTERM);
	cfg = xasprintf("keys:\n  b: { spec: %s/b.pem }\n", d.dir);
	start_daemon(&d, cfg);
	free(cfg);
	v = verification(&d, r1);
	assert_false(json_is_true(json_object_get(v, "ok")));
	json_decref(v);
	assert_int_equal(dh_sh_in(d.dir, &out, "%s --url %s --token %s verify %lld --root root/root.crt.pem", otactl_bin, d.url,
			       d.token, (long long)r1), 0);
	buf_release(&out);
	h_cleanup(&d);
}

static void releases_with_bad_chains_do_not_verify(void **state)
{
	static const struct {
		const char *key, *why;
	} bad[] = {
		{ "expired", "expired at the signing time" },
		{ "future", "not yet valid at the signing time" },
		{ "noeku", "no extended key usage codeSigning" },
		{ "certsign", "wrong key usage" },
		{ "selfsigned", "self-signed" },
		{ "foreign", "does not end at the trusted root" },
	};
	struct daemon d;
	struct buf cfg = BUF_INIT, out = BUF_INIT;
	const char *st;

	(void)state;
	h_init(&d, NULL);
	assert_int_equal(dh_sh_in(d.dir, NULL, "%s keys root init root", otactl_bin), 0);
	make_bad_certs(d.dir);
	/* a daemon without a trust root signs whatever it is given (as a
	 * compromised or misconfigured build server would) ... */
	buf_puts(&cfg, "keys:\n");
	for (size_t i = 0; i < OTA_ARRAY_SIZE(bad); i++)
		buf_printf(&cfg, "  %s: { spec: %s/%s.pem, certificate: %s/%s.crt }\n", bad[i].key, d.dir, bad[i].key, d.dir,
			   bad[i].key);
	start_daemon(&d, buf_cstr(&cfg));
	for (size_t i = 0; i < OTA_ARRAY_SIZE(bad); i++) {
		char version[16];
		int64_t rel;
		snprintf(version, sizeof(version), "1.%zu.0", i + 1);
		rel = release_with(&d, version, bad[i].key, &st);
		assert_string_equal(st, "passed");
		/* ... and a verifier holding the root refuses each, saying why */
		assert_int_equal(dh_sh_in(d.dir, &out, "%s --url %s --token %s verify %lld --root root/root.crt.pem", otactl_bin,
				       d.url, d.token, (long long)rel), 1);
		if (!strstr(buf_cstr(&out), bad[i].why))
			print_error("%s: %s\n", bad[i].key, buf_cstr(&out));
		assert_non_null(strstr(buf_cstr(&out), bad[i].why));
		assert_non_null(strstr(buf_cstr(&out), "release does NOT verify"));
	}
	buf_release(&cfg);
	buf_release(&out);
	h_cleanup(&d);
}

static void daemon_publishes_only_newer_root_signed_lists_and_keeps_them(void **state)
{
	struct daemon d;
	struct buf out = BUF_INIT;
	char *cfg, id[65], **cred;
	json_t *ans = NULL;
	long st;

	(void)state;
	h_init(&d, NULL);
	assert_int_equal(dh_sh_in(d.dir, NULL, "%s keys root init root && %s keys root init other", otactl_bin, otactl_bin), 0);
	make_key(d.dir, "a");
	make_key(d.dir, "b");
	certify(d.dir, "root", "a", NULL);
	certify(d.dir, "root", "b", NULL);
	certify(d.dir, "other", "a", NULL);
	key_id(d.dir, "a", id);
	assert_int_equal(dh_sh_in(d.dir, NULL, "%s keys revoke %s --root root --reason keyCompromise -o crl1.pem", otactl_bin, id), 0);
	assert_int_equal(dh_sh_in(d.dir, NULL, "%s keys revoke %s --root other --reason keyCompromise -o forged.pem", otactl_bin, id), 0);
	key_id(d.dir, "b", id);
	assert_int_equal(dh_sh_in(d.dir, NULL, "%s keys revoke %s --root root --reason superseded -o crl2.pem", otactl_bin, id), 0);
	cfg = xasprintf("trust_root: %s/root/root.crt.pem\n", d.dir);
	start_daemon(&d, cfg);
	cred = h_register_devices(&d, "pki", 1);

	/* nothing held yet: a device gets 404 */
	assert_int_equal(dh_sh_in(d.dir, &out, "curl -s -o /dev/null -w '%%{http_code}' -H 'Authorization: Bearer %s'"
				       " -H 'X-Device-Id: pki-0000' %s/device/v1/revocations", cred[0], d.device_url), 0);
	assert_string_equal(buf_cstr(&out), "404");
	/* a list signed by another key: refused, nothing changes */
	assert_int_equal(dh_sh_in(d.dir, &out, "%s --url %s --token %s keys publish forged.pem", otactl_bin, d.url, d.token), 1);
	assert_non_null(strstr(buf_cstr(&out), "not signed by the trust root"));
	/* only an admin publishes */
	{
		json_t *req = json_pack("{ss}", "crl_pem", "x");
		st = h_call_as(&d, "nobody-has-this-token", "POST", "/api/v1/revocations", req, &ans);
		assert_int_equal(st, 401);
		json_decref(req);
		json_decref(ans);
	}
	/* list 2, then list 1 (older) and 2 again: refused */
	assert_int_equal(dh_sh_in(d.dir, &out, "%s --url %s --token %s keys publish crl2.pem", otactl_bin, d.url, d.token), 0);
	assert_non_null(strstr(buf_cstr(&out), "revocation list 2 published"));
	assert_int_equal(dh_sh_in(d.dir, &out, "%s --url %s --token %s keys publish crl1.pem", otactl_bin, d.url, d.token), 1);
	assert_non_null(strstr(buf_cstr(&out), "not newer than the held list 2"));
	assert_int_equal(dh_sh_in(d.dir, &out, "%s --url %s --token %s keys publish crl2.pem", otactl_bin, d.url, d.token), 1);
	/* garbage */
	{
		json_t *req = json_pack("{ss}", "crl_pem", "-----BEGIN X509 CRL-----\nAA\n-----END X509 CRL-----\n");
		st = h_post(&d, "/api/v1/revocations", req, &ans);
		assert_int_equal(st, 400);
		json_decref(req);
		json_decref(ans);
	}

	/* each publication and refusal is in the audit log, with who */
	assert_int_equal(h_get(&d, "/api/v1/audit", &ans), 200);
	{
		json_t *e;
		size_t i;
		int published = 0, refused = 0;
		json_array_foreach(ans, i, e) {
			const char *act = json_string_value(json_object_get(e, "action"));
			published += act && !strcmp(act, "revocations_published");
			refused += act && !strcmp(act, "revocations_refused");
		}
		assert_int_equal(published, 1);
		assert_int_equal(refused, 4);
	}
	json_decref(ans);

	/* kept across a restart, served to devices, announced in check-ins */
	h_kill(&d, SIGTERM);
	start_daemon(&d, cfg);
	assert_int_equal(h_get(&d, "/api/v1/trust", &ans), 200);
	assert_int_equal(json_integer_value(json_object_get(ans, "revocations_number")), 2);
	json_decref(ans);
	{
		assert_int_equal(dh_sh_in(d.dir, &out, "curl -sf -H 'Authorization: Bearer %s' -H 'X-Device-Id: pki-0000' %s/device/v1/revocations"
					       " | openssl crl -noout -text", cred[0], d.device_url), 0);
		assert_non_null(strstr(buf_cstr(&out), "CRL Number"));
		assert_non_null(strstr(buf_cstr(&out), "Superseded"));
		assert_non_null(strstr(buf_cstr(&out), "Key Compromise"));
		assert_int_equal(dh_sh_in(d.dir, &out, "curl -sf -H 'Authorization: Bearer %s' -H 'X-Device-Id: pki-0000'"
					       " -d '{\"device\":\"pki-0000\",\"product\":\"fw\",\"hardware\":\"h\",\"bootloader\":\"1.0.0\","
					       "\"version\":\"1.0.0\",\"security_counter\":1,\"slot\":\"confirmed\"}' %s/device/v1/checkin",
				       cred[0], d.device_url), 0);
		assert_non_null(strstr(buf_cstr(&out), "\"revocations\":2"));
		/* a wrong credential gets nothing */
		assert_int_equal(dh_sh_in(d.dir, &out, "curl -s -o /dev/null -w '%%{http_code}' -H 'Authorization: Bearer %032d'"
					       " -H 'X-Device-Id: pki-0000' %s/device/v1/revocations", 0, d.device_url), 0);
		assert_string_equal(buf_cstr(&out), "401");
	}
	free(cred[0]);
	free(cred);
	free(cfg);
	buf_release(&out);
	h_cleanup(&d);
}

/* ---- a fleet: rotate, compromise, recover -------------------------------------- */

#define FLEET 3000

static const char *const CALM =
	"{ \"default\": { \"crash_rate\": 0, \"boot_fail_rate\": 0, \"revert_rate\": 0 },"
	"  \"silent\": 0, \"flaky\": 0, \"hardware\": { \"mps2-an385\": 1 }, \"bootloader\": { \"1.2.0\": 1 } }";

static char *fleet_pipeline(const char *version, int counter, const char *key, const char *steps)
{
	return xasprintf("name: fw\nstages:\n"
			 "  - name: build\n    steps: [ { run: \"printf 'fw %s' > app.bin && head -c 3000 /dev/zero >> app.bin\" } ]\n"
			 "    artifacts: [ { path: app.bin, name: app.bin, type: application, hardware: mps2-an385 } ]\n"
			 "  - { name: release, kind: release, needs: [build], version: \"%s\", security_counter: %d, key: %s }\n"
			 "  - name: all\n    kind: rollout\n    needs: [release]\n    steps: [ %s ]\n",
			 version, version, counter, key, steps);
}

static int file_has(const char *path, const char *needle)
{
	struct buf b = BUF_INIT;
	int found = ota_read_file(&b, path, 64 << 20) == 0 && memmem(b.ptr, b.len, needle, strlen(needle));
	buf_release(&b);
	return found;
}

static void fleet_rotates_then_survives_a_key_compromise_and_recovers(void **state)
{
	const char *const args[] = { "--local-agents", "2", "--time-scale", "3600", NULL };
	struct daemon d;
	struct buf out = BUF_INIT;
	char *cfg, *y, *log, *stats, *prof, *bin, n[16], idB[65];
	int64_t r1, r2, r3, r4, run3, on3;
	json_t *s, *img;
	const char *sha;
	pid_t sim;
	int status;

	(void)state;
	h_init(&d, NULL);
	/* the offline side: a root and three signing keys; the devices'
	 * bootloaders hold all three public keys in their key slots */
	assert_int_equal(dh_sh_in(d.dir, NULL, "%s keys root init root", otactl_bin), 0);
	make_key(d.dir, "a");
	make_key(d.dir, "b");
	make_key(d.dir, "c");
	certify(d.dir, "root", "a", NULL);
	certify(d.dir, "root", "b", NULL);
	certify(d.dir, "root", "c", NULL);
	key_id(d.dir, "b", idB);
	cfg = xasprintf("trust_root: %s/root/root.crt.pem\ndevice_register_burst: 100000\nkeys:\n"
			"  a: { spec: %s/a.pem, certificate: %s/a.crt }\n"
			"  b: { spec: %s/b.pem, certificate: %s/b.crt }\n"
			"  c: { spec: %s/c.pem, certificate: %s/c.crt }\n",
			d.dir, d.dir, d.dir, d.dir, d.dir, d.dir, d.dir);
	d.config = xasprintf("%s/config.yml", d.dir);
	assert_int_equal(ota_write_file_atomic(d.config, cfg, strlen(cfg), 0600), 0);
	assert_int_equal(h_start(&d, args), 0);

	log = xasprintf("%s/sim.log", d.dir);
	stats = xasprintf("%s/stats.json", d.dir);
	prof = xasprintf("%s/profile.json", d.dir);
	assert_int_equal(ota_write_file_atomic(prof, CALM, strlen(CALM), 0600), 0);
	bin = h_bin("otacd-fleetsim");
	snprintf(n, sizeof(n), "%d", FLEET);
	sim = fork();
	if (sim == 0) {
		char *root = xasprintf("%s/root/root.crt.pem", d.dir), *ka = xasprintf("%s/a.pub", d.dir),
		     *kb = xasprintf("%s/b.pub", d.dir), *kc = xasprintf("%s/c.pub", d.dir);
		int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
		h_child_dies_with_test();
		dup2(fd, 1);
		dup2(fd, 2);
		execl(bin, bin, "--url", d.device_url, "--devices", n, "--seed", "13", "--trust-root", root, "--key", ka,
		      "--key", kb, "--key", kc, "--fleet-key", d.fleet_key, "--product", "fw", "--profile", prof,
		      "--start-version", "1.0.0", "--start-counter", "1", "--duration", "600", "--stats", stats,
		      (char *)NULL);
		_exit(127);
	}

	/* 1.1.0 by key a reaches everyone */
	y = fleet_pipeline("1.1.0", 1, "a", "{percent: 100, hold: 1h}");
	r1 = dh_release_of(&d, h_trigger(&d, y));
	free(y);
	assert_true(r1 > 0);
	assert_int_equal(dh_fleet_wait(&d, r1, "devices", FLEET, 60000), FLEET);

	/* rotation: 1.2.0 by key b, which no device was told about: it
	 * chains to the root they trust */
	y = fleet_pipeline("1.2.0", 1, "b", "{percent: 100, hold: 1h}");
	r2 = dh_release_of(&d, h_trigger(&d, y));
	free(y);
	assert_true(r2 > 0);
	assert_int_equal(dh_fleet_wait(&d, r2, "devices", FLEET, 60000), FLEET);

	/* 1.3.0, also by b, starts at 10 % and holds there */
	y = fleet_pipeline("1.3.0", 1, "b", "{percent: 10, hold: 1000h}, {percent: 100, hold: 1h}");
	run3 = h_trigger(&d, y);
	r3 = dh_release_of(&d, run3);
	free(y);
	assert_true(r3 > 0);
	assert_true(dh_fleet_wait(&d, r3, "devices", FLEET / 20, 60000) >= FLEET / 20);

	/* compromise: b leaked.  Offline, the root revokes it; the list is
	 * published; devices fetch it with their next check-in */
	assert_int_equal(dh_sh_in(d.dir, &out, "%s keys revoke %s --root root --reason keyCompromise -o crl.pem"
					     " && %s --url %s --token %s keys publish crl.pem",
			       otactl_bin, idB, otactl_bin, d.url, d.token), 0);
	for (int waited = 0; !file_has(log, "revocation list 1 accepted") && waited < 120000; waited += 100)
		h_msleep(100);
	assert_true(file_has(log, "revocation list 1 accepted"));
	on3 = dh_fleet_count(&d, r3, "devices");
	/* otacd itself no longer signs with b */
	release_refused(&d, "1.3.1", "b", "is revoked (keyCompromise");
	/* now 1.3.0 is offered to everyone: nobody else installs it */
	{
		char *p = xasprintf("/api/v1/releases/%lld/promote", (long long)r3);
		json_t *ans = NULL;
		json_t *req = json_pack("{sb ss}", "skip_step", 1, "reason", "test: offer b's release to all");
		assert_int_equal(h_post(&d, p, req, &ans), 200);
		json_decref(req);
		json_decref(ans);
		free(p);
	}
	h_msleep(8000); /* more than one poll interval (6 otacd hours) */

	/* recovery: the same code, re-signed with the fresh key c, reaches
	 * every device; none is stuck (bricked) on the way */
	y = fleet_pipeline("1.4.0", 1, "c", "{percent: 100, hold: 1h}");
	r4 = dh_release_of(&d, h_trigger(&d, y));
	free(y);
	assert_true(r4 > 0);
	assert_int_equal(dh_fleet_wait(&d, r4, "devices", FLEET, 60000), FLEET);

	kill(sim, SIGTERM);
	waitpid(sim, &status, 0);
	s = json_load_file(stats, 0, NULL);
	assert_non_null(s);
	print_message("fleet: %lld devices ran b's 1.3.0 at the revocation (server's count), %lld ever; %lld refusals of bad signatures,"
		      " %lld image(s) revoked; %lld on c's 1.4.0\n", (long long)on3,
		      (long long)json_integer_value(json_object_get(json_object_get(s, "ever_ran"), "1.3.0")),
		      (long long)json_integer_value(json_object_get(s, "refused_bad_signature")),
		      (long long)json_integer_value(json_object_get(s, "images_revoked")),
		      (long long)json_integer_value(json_object_get(json_object_get(s, "versions"), "1.4.0")));
	assert_int_equal(json_integer_value(json_object_get(s, "revocations")), 1);
	assert_true(json_integer_value(json_object_get(s, "images_revoked")) >= 1);
	assert_int_equal(json_integer_value(json_object_get(s, "revocations_refused")), 0);
	/* devices were offered b's 1.3.0 after the revocation and refused it */
	assert_true(json_integer_value(json_object_get(s, "refused_bad_signature")) > 0);
	/* since the list arrived, the only installs were c's 1.4.0, one per
	 * device: nothing of b's installed after the revocation (devices that
	 * had installed 1.3.0 before it may still have confirmed it) */
	assert_int_equal(json_integer_value(json_object_get(s, "installed")) -
				 json_integer_value(json_object_get(s, "installed_at_revocation")),
			 FLEET);
	assert_true(json_integer_value(json_object_get(json_object_get(s, "ever_ran"), "1.3.0")) < FLEET / 5);
	assert_int_equal(json_integer_value(json_object_get(json_object_get(s, "versions"), "1.4.0")), FLEET);
	/* b's images are refused with the reason, c's is good */
	{
		const char *k;
		int revoked = 0, good = 0;
		json_object_foreach(json_object_get(s, "images"), k, img) {
			sha = json_string_value(json_object_get(img, "error"));
			if (sha && strstr(sha, "is revoked (keyCompromise"))
				revoked++;
			if (!strcmp(json_string_value(json_object_get(img, "state")), "ok"))
				good++;
		}
		assert_true(revoked >= 1);
		assert_true(good >= 2); /* a's and c's */
	}
	json_decref(s);
	/* the release page says so too */
	s = verification(&d, r3);
	assert_false(json_is_true(json_object_get(s, "ok")));
	assert_true(checks_mention(s, 0, "is revoked"));
	json_decref(s);
	s = verification(&d, r4);
	assert_true(json_is_true(json_object_get(s, "ok")));
	json_decref(s);
	(void)run3;
	free(log);
	free(stats);
	free(prof);
	free(bin);
	free(cfg);
	buf_release(&out);
	h_cleanup(&d);
}

/*
 * A server without trust_root signs with whatever certificate it was
 * given; devices holding the root refuse: a self-signed "signing
 * certificate", and a correctly certified key that is not in their
 * bootloader's key slots (installing would leave them unbootable).
 */
static void devices_refuse_bad_chains_and_keys_their_bootloader_lacks(void **state)
{
	const char *const args[] = { "--local-agents", "1", "--time-scale", "3600", NULL };
	struct daemon d;
	char *cfg, *y, *log, *stats, *bin, *root, *ka;
	int64_t r1, r2;
	pid_t sim;
	int status;
	json_t *s, *img;
	const char *k;
	int selfsigned = 0, brick = 0;

	(void)state;
	h_init(&d, NULL);
	assert_int_equal(dh_sh_in(d.dir, NULL, "%s keys root init root", otactl_bin), 0);
	make_bad_certs(d.dir);
	make_key(d.dir, "a");
	make_key(d.dir, "unslotted");
	certify(d.dir, "root", "a", NULL);
	certify(d.dir, "root", "unslotted", NULL);
	cfg = xasprintf("keys:\n  selfsigned: { spec: %s/selfsigned.pem, certificate: %s/selfsigned.crt }\n"
			"  unslotted: { spec: %s/unslotted.pem, certificate: %s/unslotted.crt }\n",
			d.dir, d.dir, d.dir, d.dir);
	d.config = xasprintf("%s/config.yml", d.dir);
	assert_int_equal(ota_write_file_atomic(d.config, cfg, strlen(cfg), 0600), 0);
	assert_int_equal(h_start(&d, args), 0);
	log = xasprintf("%s/sim.log", d.dir);
	stats = xasprintf("%s/stats.json", d.dir);
	root = xasprintf("%s/root/root.crt.pem", d.dir);
	ka = xasprintf("%s/a.pub", d.dir);
	bin = h_bin("otacd-fleetsim");
	{
		char *prof = xasprintf("%s/profile.json", d.dir);
		assert_int_equal(ota_write_file_atomic(prof, CALM, strlen(CALM), 0600), 0);
		sim = fork();
		if (sim == 0) {
			int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
			h_child_dies_with_test();
			dup2(fd, 1);
			dup2(fd, 2);
			/* the bootloader holds key a only */
			execl(bin, bin, "--url", d.device_url, "--devices", "200", "--seed", "5", "--trust-root", root, "--key",
			      ka, "--fleet-key", d.fleet_key, "--product", "fw", "--profile", prof, "--start-version", "1.0.0",
			      "--start-counter", "1", "--duration", "300", "--stats", stats, (char *)NULL);
			_exit(127);
		}
		free(prof);
	}
	y = fleet_pipeline("1.1.0", 1, "selfsigned", "{percent: 100, hold: 1h}");
	r1 = dh_release_of(&d, h_trigger(&d, y));
	free(y);
	/* the devices judged it before the next release supersedes it */
	for (int waited = 0; !file_has(log, "IMAGE REFUSED") && waited < 30000; waited += 100)
		h_msleep(100);
	assert_true(file_has(log, "self-signed"));
	y = fleet_pipeline("1.2.0", 1, "unslotted", "{percent: 100, hold: 1h}");
	r2 = dh_release_of(&d, h_trigger(&d, y));
	free(y);
	assert_true(r1 > 0 && r2 > 0);
	h_msleep(10000); /* over one poll interval: every device was offered them */
	/* a signed manifest only goes to a device offered its release */
	{
		char **cred = h_register_devices(&d, "stranger", 1);
		struct buf out = BUF_INIT;
		assert_int_equal(dh_sh_in(d.dir, &out, "curl -s -o /dev/null -w '%%{http_code}' -H 'Authorization: Bearer %s'"
					       " -H 'X-Device-Id: stranger-0000' %s/device/v1/releases/%lld/manifest", cred[0],
				       d.device_url, (long long)r1), 0);
		assert_string_equal(buf_cstr(&out), "403");
		assert_int_equal(dh_sh_in(d.dir, &out, "curl -s -o /dev/null -w '%%{http_code}' -H 'Authorization: Bearer %s'"
					       " -H 'X-Device-Id: stranger-0000' %s/device/v1/releases/999/manifest", cred[0],
				       d.device_url), 0);
		assert_string_equal(buf_cstr(&out), "404");
		free(cred[0]);
		free(cred);
		buf_release(&out);
	}
	assert_int_equal(dh_fleet_count(&d, r1, "devices"), 0);
	assert_int_equal(dh_fleet_count(&d, r2, "devices"), 0);
	kill(sim, SIGTERM);
	waitpid(sim, &status, 0);
	s = json_load_file(stats, 0, NULL);
	assert_non_null(s);
	assert_int_equal(json_integer_value(json_object_get(json_object_get(s, "versions"), "1.0.0")), 200);
	assert_true(json_integer_value(json_object_get(s, "refused_bad_signature")) >= 200);
	assert_int_equal(json_integer_value(json_object_get(s, "installed")), 0);
	json_object_foreach(json_object_get(s, "images"), k, img) {
		const char *err = json_string_value(json_object_get(img, "error"));
		selfsigned += err && strstr(err, "self-signed") != NULL;
		brick += err && strstr(err, "the bootloader holds no slot for signing key") != NULL;
	}
	assert_int_equal(selfsigned, 1);
	assert_int_equal(brick, 1);
	json_decref(s);
	free(log);
	free(stats);
	free(root);
	free(ka);
	free(bin);
	free(cfg);
	h_cleanup(&d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(chain_check_refuses_expired_future_misused_self_signed_and_foreign_certificates),
		cmocka_unit_test(revocation_lists_must_be_the_roots_and_newer_on_devices),
		cmocka_unit_test(root_key_in_a_token_certifies_and_revokes),
		cmocka_unit_test(release_signed_by_a_retired_key_still_verifies_by_its_chain),
		cmocka_unit_test(releases_with_bad_chains_do_not_verify),
		cmocka_unit_test(daemon_publishes_only_newer_root_signed_lists_and_keeps_them),
		cmocka_unit_test(devices_refuse_bad_chains_and_keys_their_bootloader_lacks),
		cmocka_unit_test(fleet_rotates_then_survives_a_key_compromise_and_recovers),
	};
	int rc;

	otactl_bin = h_bin("otactl");
	if (getenv("TEST_PKI_FILTER")) /* one test while working on it */
		cmocka_set_test_filter(getenv("TEST_PKI_FILTER"));
	rc = cmocka_run_group_tests(tests, NULL, NULL);
	free(otactl_bin);
	return rc;
}
