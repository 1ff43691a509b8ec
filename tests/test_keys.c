/*
 * test_keys.c - signing keys: PEM files (ECDSA P-256, Ed25519) and a real
 * PKCS#11 token (SoftHSM2 through OpenSSL's pkcs11 engine), checked against
 * the openssl and pkcs11-tool command lines, plus the errors a user meets
 * (wrong PIN, missing object or file, public key given as private, RSA).
 *
 * The PKCS#11 tests make their own token in a temporary directory
 * (SOFTHSM2_CONF) and need softhsm2, opensc and libengine-pkcs11-openssl
 * installed; without them they fail with a message that says what to
 * install, they are never skipped.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "../common/util.h"
#include "../orchestrator/keys.h"
#include "harness.h"

#define SOFTHSM "/usr/lib/softhsm/libsofthsm2.so"
#define P11_URI "pkcs11:token=fw;object=release;pin-value=1234"

static const char msg[] = "firmware image bytes \x00\x01\x02 and more";

static char *tmpdir;       /* per test */
static char *hsmdir;       /* the SoftHSM2 token, made once */

static int per_test_setup(void **state)
{
	(void)state;
	tmpdir = h_tmpdir();
	return 0;
}

static int per_test_teardown(void **state)
{
	struct buf out = BUF_INIT;
	(void)state;
	h_sh(&out, "rm -rf '%s'", tmpdir);
	buf_release(&out);
	free(tmpdir);
	tmpdir = NULL;
	return 0;
}

static char *path(const char *name)
{
	return xasprintf("%s/%s", tmpdir, name);
}

static void write_file(const char *name, const void *data, size_t len)
{
	char *p = path(name);
	assert_int_equal(ota_write_file_atomic(p, data, len, 0600), 0);
	free(p);
}

static void sh_ok(struct buf *out, const char *cmd)
{
	int rc = h_sh(out, "%s", cmd);
	if (rc != 0)
		fail_msg("command failed (%d): %s\n%s", rc, cmd, buf_cstr(out));
}

/* `openssl genpkey` into DIR/name. */
static void genkey(const char *name, const char *args)
{
	struct buf out = BUF_INIT;
	char *cmd = xasprintf("openssl genpkey %s -out '%s/%s'", args, tmpdir, name);
	sh_ok(&out, cmd);
	free(cmd);
	buf_release(&out);
}

/* What `openssl pkey -pubout -outform DER | sha256sum` says. */
static void cli_key_id(const char *cmd, char out_id[65])
{
	struct buf out = BUF_INIT;
	sh_ok(&out, cmd);
	assert_true(out.len >= 64);
	memcpy(out_id, out.ptr, 64);
	out_id[64] = '\0';
	buf_release(&out);
}

static void file_key_round_trip(const char *genargs, enum sign_alg want, const char *cli_verify)
{
	struct sign_key *k = NULL, *again = NULL;
	struct buf sig = BUF_INIT, pem = BUF_INIT, out = BUF_INIT;
	char id[65], *cmd;
	EVP_PKEY *pub = NULL;

	genkey("key.pem", genargs);
	cmd = path("key.pem");
	assert_int_equal(sign_key_load(&k, cmd, NULL), 0);
	free(cmd);
	assert_int_equal(sign_key_alg(k), want);
	assert_int_equal(sign_key_sign(k, msg, sizeof(msg), &sig), 0);
	if (want == SIGN_ED25519)
		assert_int_equal(sig.len, 64);
	else
		assert_in_range(sig.len, 8, 72);
	assert_non_null(sign_key_pkey(k));

	/* our own verifier, and a one-bit change is caught */
	assert_int_equal(pubkey_verify(sign_key_public(k), msg, sizeof(msg), sig.ptr, sig.len), 0);
	assert_int_equal(pubkey_verify(sign_key_public(k), msg, sizeof(msg) - 1, sig.ptr, sig.len), OTA_EINVAL);
	assert_non_null(strstr(ota_error_last(), "signature does not verify"));

	/* the openssl CLI, with the public PEM we export */
	assert_int_equal(sign_key_public_pem(k, &pem), 0);
	assert_non_null(strstr(buf_cstr(&pem), "-----BEGIN PUBLIC KEY-----"));
	write_file("pub.pem", pem.ptr, pem.len);
	write_file("sig", sig.ptr, sig.len);
	write_file("msg", msg, sizeof(msg));
	cmd = xasprintf("cd '%s' && %s", tmpdir, cli_verify);
	sh_ok(&out, cmd);
	free(cmd);
	assert_non_null(strstr(buf_cstr(&out), "Verified"));

	/* key id = sha256 of the DER SubjectPublicKeyInfo, as the CLI computes it */
	cmd = xasprintf("openssl pkey -in '%s/key.pem' -pubout -outform DER | sha256sum", tmpdir);
	cli_key_id(cmd, id);
	free(cmd);
	assert_string_equal(sign_key_id(k), id);
	assert_int_equal(strlen(sign_key_id(k)), 64);
	assert_int_equal(strspn(sign_key_id(k), "0123456789abcdef"), 64);

	/* and from the PEM alone, as a verifier would */
	assert_int_equal(pubkey_load_pem(&pub, pem.ptr, pem.len), 0);
	assert_int_equal(pubkey_id(pub, id), 0);
	assert_string_equal(id, sign_key_id(k));
	assert_int_equal(pubkey_verify(pub, msg, sizeof(msg), sig.ptr, sig.len), 0);

	/* stable across loads */
	cmd = path("key.pem");
	assert_int_equal(sign_key_load(&again, cmd, NULL), 0);
	free(cmd);
	assert_string_equal(sign_key_id(again), sign_key_id(k));

	EVP_PKEY_free(pub);
	sign_key_free(again);
	sign_key_free(k);
	buf_release(&sig);
	buf_release(&pem);
	buf_release(&out);
}

static void ecdsa_p256_file_key_signs_and_openssl_verifies(void **state)
{
	(void)state;
	file_key_round_trip("-algorithm EC -pkeyopt ec_paramgen_curve:P-256", SIGN_ECDSA_P256,
			    "openssl dgst -sha256 -verify pub.pem -signature sig msg");
}

static void ed25519_file_key_signs_and_openssl_verifies(void **state)
{
	(void)state;
	file_key_round_trip("-algorithm ED25519", SIGN_ED25519,
			    "openssl pkeyutl -verify -rawin -pubin -inkey pub.pem -sigfile sig -in msg");
}

static void encrypted_pem_needs_the_right_passphrase(void **state)
{
	struct sign_key *k = NULL;
	char *p;
	(void)state;
	genkey("enc.pem", "-algorithm EC -pkeyopt ec_paramgen_curve:P-256 -aes256 -pass pass:s3cret-pass");
	p = path("enc.pem");
	assert_int_equal(sign_key_load(&k, p, NULL), OTA_EAUTH);
	assert_non_null(strstr(ota_error_last(), "no passphrase"));
	assert_int_equal(sign_key_load(&k, p, "wrong-pass"), OTA_EAUTH);
	assert_non_null(strstr(ota_error_last(), "wrong passphrase"));
	assert_null(strstr(ota_error_last(), "wrong-pass"));
	assert_null(k);
	assert_int_equal(sign_key_load(&k, p, "s3cret-pass"), 0);
	assert_int_equal(sign_key_alg(k), SIGN_ECDSA_P256);
	sign_key_free(k);
	free(p);
}

static void bad_key_files_give_clear_errors(void **state)
{
	struct sign_key *k = NULL;
	struct buf out = BUF_INIT;
	char *p, *cmd;
	(void)state;

	p = path("missing.pem");
	assert_int_equal(sign_key_load(&k, p, NULL), OTA_ENOTFOUND);
	assert_non_null(strstr(ota_error_last(), "missing.pem"));
	free(p);

	/* a public key where a private one is needed */
	genkey("key.pem", "-algorithm ED25519");
	cmd = xasprintf("openssl pkey -in '%s/key.pem' -pubout -out '%s/pub.pem'", tmpdir, tmpdir);
	sh_ok(&out, cmd);
	free(cmd);
	p = path("pub.pem");
	assert_int_equal(sign_key_load(&k, p, NULL), OTA_EINVAL);
	assert_non_null(strstr(ota_error_last(), "public key"));
	assert_non_null(strstr(ota_error_last(), "private key"));
	free(p);

	/* RSA and other curves are refused by name */
	genkey("rsa.pem", "-algorithm RSA -pkeyopt rsa_keygen_bits:2048");
	p = path("rsa.pem");
	assert_int_equal(sign_key_load(&k, p, NULL), OTA_EINVAL);
	assert_non_null(strstr(ota_error_last(), "RSA"));
	assert_non_null(strstr(ota_error_last(), "not supported"));
	free(p);
	genkey("p384.pem", "-algorithm EC -pkeyopt ec_paramgen_curve:P-384");
	p = path("p384.pem");
	assert_int_equal(sign_key_load(&k, p, NULL), OTA_EINVAL);
	assert_non_null(strstr(ota_error_last(), "secp384r1"));
	free(p);

	/* not a key at all */
	write_file("junk.pem", "hello\n", 6);
	p = path("junk.pem");
	assert_int_equal(sign_key_load(&k, p, NULL), OTA_EINVAL);
	assert_non_null(strstr(ota_error_last(), "no PEM private key"));
	free(p);

	assert_int_equal(sign_key_load(&k, "", NULL), OTA_EINVAL);
	assert_null(k);
	buf_release(&out);
}

static void public_pem_loading_refuses_private_keys_and_garbage(void **state)
{
	EVP_PKEY *pub = NULL;
	struct buf pem = BUF_INIT;
	char *p;
	(void)state;
	genkey("key.pem", "-algorithm EC -pkeyopt ec_paramgen_curve:P-256");
	p = path("key.pem");
	assert_int_equal(ota_read_file(&pem, p, 65536), 0);
	assert_int_equal(pubkey_load_pem(&pub, pem.ptr, pem.len), OTA_EINVAL);
	assert_non_null(strstr(ota_error_last(), "private key"));
	assert_int_equal(pubkey_load_pem(&pub, "nope", 4), OTA_EINVAL);
	assert_null(pub);
	free(p);
	buf_release(&pem);
}

static void spec_redaction_drops_only_the_pin(void **state)
{
	static const struct { const char *in, *out; } cases[] = {
		{ "pkcs11:token=fw;object=release;pin-value=1234", "pkcs11:token=fw;object=release" },
		{ "pkcs11:pin-value=1234;token=fw;object=release", "pkcs11:token=fw;object=release" },
		{ "pkcs11:token=fw;object=release?pin-value=1234", "pkcs11:token=fw;object=release?" },
		{ "pkcs11:token=fw;object=release?module-path=/x;pin-value=1", "pkcs11:token=fw;object=release?module-path=/x" },
		{ "/etc/otacd/key.pem", "/etc/otacd/key.pem" },
	};
	(void)state;
	for (size_t i = 0; i < OTA_ARRAY_SIZE(cases); i++) {
		char *r = sign_key_redact_spec(cases[i].in);
		assert_string_equal(r, cases[i].out);
		free(r);
	}
}

/* ---- PKCS#11 ----------------------------------------------------------- */

/* Make the SoftHSM2 token once per process (fails clearly if tools are missing). */
static void need_token(void)
{
	struct buf out = BUF_INIT;
	char *conf, *cmd;

	if (hsmdir)
		return;
	if (access(SOFTHSM, R_OK) != 0)
		fail_msg("PKCS#11 tests need SoftHSM2 (%s): apt-get install softhsm2", SOFTHSM);
	if (h_sh(&out, "command -v pkcs11-tool && command -v softhsm2-util") != 0)
		fail_msg("PKCS#11 tests need pkcs11-tool and softhsm2-util: apt-get install opensc softhsm2");
	if (h_sh(&out, "openssl engine pkcs11 -t") != 0)
		fail_msg("PKCS#11 tests need the OpenSSL pkcs11 engine: apt-get install libengine-pkcs11-openssl\n%s",
			 buf_cstr(&out));
	hsmdir = h_tmpdir();
	conf = xasprintf("%s/softhsm2.conf", hsmdir);
	cmd = xasprintf("mkdir -p '%s/tokens' && printf 'directories.tokendir = %s/tokens\\nobjectstore.backend = file\\n' > '%s'",
			hsmdir, hsmdir, conf);
	sh_ok(&out, cmd);
	free(cmd);
	setenv("SOFTHSM2_CONF", conf, 1);
	unsetenv("OTACD_PKCS11_MODULE");
	sh_ok(&out, "softhsm2-util --init-token --free --label fw --pin 1234 --so-pin 5678");
	sh_ok(&out, "pkcs11-tool --module " SOFTHSM " --token-label fw --login --pin 1234 "
		    "--keypairgen --key-type EC:prime256v1 --label release --id 01");
	cmd = xasprintf("pkcs11-tool --module " SOFTHSM " --token-label fw --read-object --type pubkey "
			"--label release | openssl pkey -pubin -inform DER -out '%s/pub.pem'", hsmdir);
	sh_ok(&out, cmd);
	free(cmd);
	free(conf);
	buf_release(&out);
}

static void pkcs11_key_signs_and_token_public_key_verifies(void **state)
{
	struct sign_key *k = NULL, *again = NULL;
	struct buf sig = BUF_INIT, pem = BUF_INIT, tokpem = BUF_INIT, out = BUF_INIT;
	EVP_PKEY *pub = NULL;
	char id[65], *p, *cmd;
	(void)state;

	need_token();
	assert_int_equal(sign_key_load(&k, P11_URI, NULL), 0);
	assert_int_equal(sign_key_alg(k), SIGN_ECDSA_P256);
	assert_string_equal(sign_key_spec(k), "pkcs11:token=fw;object=release");
	assert_non_null(sign_key_pkey(k));
	assert_int_equal(sign_key_sign(k, msg, sizeof(msg), &sig), 0);
	assert_in_range(sig.len, 8, 72);

	/* the public key as the token itself reports it */
	p = xasprintf("%s/pub.pem", hsmdir);
	assert_int_equal(ota_read_file(&tokpem, p, 65536), 0);
	free(p);
	assert_int_equal(pubkey_load_pem(&pub, tokpem.ptr, tokpem.len), 0);
	assert_int_equal(pubkey_verify(pub, msg, sizeof(msg), sig.ptr, sig.len), 0);
	assert_int_equal(pubkey_id(pub, id), 0);
	assert_string_equal(id, sign_key_id(k));

	/* our exported PEM is the same key, and the CLI agrees */
	assert_int_equal(sign_key_public_pem(k, &pem), 0);
	assert_string_equal(buf_cstr(&pem), buf_cstr(&tokpem));
	write_file("sig", sig.ptr, sig.len);
	write_file("msg", msg, sizeof(msg));
	cmd = xasprintf("cd '%s' && openssl dgst -sha256 -verify '%s/pub.pem' -signature sig msg", tmpdir, hsmdir);
	sh_ok(&out, cmd);
	free(cmd);
	cmd = xasprintf("openssl pkey -pubin -in '%s/pub.pem' -outform DER | sha256sum", hsmdir);
	cli_key_id(cmd, id);
	free(cmd);
	assert_string_equal(id, sign_key_id(k));

	/* a second key from the same token (PIN as argument): same id, both sign */
	assert_int_equal(sign_key_load(&again, "pkcs11:token=fw;object=release", "1234"), 0);
	assert_string_equal(sign_key_id(again), sign_key_id(k));
	buf_clear(&sig);
	assert_int_equal(sign_key_sign(again, "x", 1, &sig), 0);
	assert_int_equal(pubkey_verify(pub, "x", 1, sig.ptr, sig.len), 0);
	sign_key_free(again);
	buf_clear(&sig);
	assert_int_equal(sign_key_sign(k, "y", 1, &sig), 0);
	assert_int_equal(pubkey_verify(pub, "y", 1, sig.ptr, sig.len), 0);
	sign_key_free(k);

	/* and again after the engine was released */
	assert_int_equal(sign_key_load(&k, "pkcs11:token=fw;object=release", "1234"), 0);
	assert_string_equal(sign_key_id(k), id);
	sign_key_free(k);

	EVP_PKEY_free(pub);
	buf_release(&sig);
	buf_release(&pem);
	buf_release(&tokpem);
	buf_release(&out);
}

/*
 * PKCS#11 login is per process and token: once this process has logged in,
 * the token does not check a PIN again.  So each wrong-PIN case runs in a
 * fresh copy of this binary ("probe" mode, see main), which prints the
 * return code and the message.
 */
static int probe(struct buf *out, const char *spec, const char *pin)
{
	return h_sh(out, "OTACD_TEST_PIN='%s' /proc/%d/exe probe '%s'", pin ? pin : "", (int)getpid(), spec);
}

static int probe_main(const char *spec)
{
	struct sign_key *k = NULL;
	const char *pin = getenv("OTACD_TEST_PIN");
	int rc = sign_key_load(&k, spec, pin && *pin ? pin : NULL);
	printf("rc=%d %s\n", rc, rc ? ota_error_last() : sign_key_id(k));
	fflush(stdout);
	sign_key_free(k);
	return 0;
}

static void pkcs11_errors_name_the_problem_and_never_the_pin(void **state)
{
	struct sign_key *k = NULL;
	struct buf out = BUF_INIT;
	char *want;
	(void)state;

	need_token();
	want = xasprintf("rc=%d ", OTA_EAUTH);
	assert_int_equal(probe(&out, "pkcs11:token=fw;object=release;pin-value=987654", NULL), 0);
	assert_non_null(strstr(buf_cstr(&out), want));
	assert_non_null(strstr(buf_cstr(&out), "wrong PIN"));
	assert_null(strstr(buf_cstr(&out), "987654"));
	assert_int_equal(probe(&out, "pkcs11:token=fw;object=release", "987655"), 0);
	assert_non_null(strstr(buf_cstr(&out), want));
	assert_non_null(strstr(buf_cstr(&out), "wrong PIN"));
	assert_null(strstr(buf_cstr(&out), "987655"));
	free(want);
	/* the probe itself works with the right PIN */
	assert_int_equal(probe(&out, P11_URI, NULL), 0);
	assert_non_null(strstr(buf_cstr(&out), "rc=0 "));

	assert_int_equal(sign_key_load(&k, "pkcs11:token=fw;object=release", NULL), OTA_EAUTH);
	assert_non_null(strstr(ota_error_last(), "no PIN"));

	assert_int_equal(sign_key_load(&k, "pkcs11:token=fw;object=nosuchkey;pin-value=1234", NULL), OTA_ENOTFOUND);
	assert_non_null(strstr(ota_error_last(), "object=nosuchkey"));
	assert_non_null(strstr(ota_error_last(), "no such private key"));
	assert_null(strstr(ota_error_last(), "1234"));
	assert_int_equal(sign_key_load(&k, "pkcs11:token=nosuchtoken;object=release", "1234"), OTA_ENOTFOUND);
	assert_non_null(strstr(ota_error_last(), "token=nosuchtoken"));

	setenv("OTACD_PKCS11_MODULE", "/nonexistent/libpkcs11.so", 1);
	assert_int_equal(sign_key_load(&k, P11_URI, NULL), OTA_ERROR);
	assert_non_null(strstr(ota_error_last(), "/nonexistent/libpkcs11.so"));
	assert_non_null(strstr(ota_error_last(), "OTACD_PKCS11_MODULE"));
	unsetenv("OTACD_PKCS11_MODULE");
	assert_null(k);

	/* after all that, the right PIN still works */
	assert_int_equal(sign_key_load(&k, P11_URI, NULL), 0);
	sign_key_free(k);
	buf_release(&out);
}

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static double time_per_signature(struct sign_key *k, int n)
{
	struct buf sig = BUF_INIT;
	double t0 = now_ms();
	for (int i = 0; i < n; i++) {
		buf_clear(&sig);
		assert_int_equal(sign_key_sign(k, msg, sizeof(msg), &sig), 0);
	}
	buf_release(&sig);
	return (now_ms() - t0) / n;
}

/* Not a benchmark gate: prints the cost of one signature per backend. */
static void signing_time_per_backend_is_reported(void **state)
{
	struct sign_key *ec = NULL, *ed = NULL, *hsm = NULL;
	char *p;
	(void)state;
	need_token();
	genkey("ec.pem", "-algorithm EC -pkeyopt ec_paramgen_curve:P-256");
	genkey("ed.pem", "-algorithm ED25519");
	p = path("ec.pem");
	assert_int_equal(sign_key_load(&ec, p, NULL), 0);
	free(p);
	p = path("ed.pem");
	assert_int_equal(sign_key_load(&ed, p, NULL), 0);
	free(p);
	assert_int_equal(sign_key_load(&hsm, P11_URI, NULL), 0);
	print_message("signing time per signature: file ECDSA P-256 %.3f ms, file Ed25519 %.3f ms, "
		      "SoftHSM2 ECDSA P-256 %.3f ms\n",
		      time_per_signature(ec, 500), time_per_signature(ed, 500), time_per_signature(hsm, 200));
	sign_key_free(ec);
	sign_key_free(ed);
	sign_key_free(hsm);
}

int main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "probe") == 0)
		return probe_main(argv[2]);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(ecdsa_p256_file_key_signs_and_openssl_verifies, per_test_setup, per_test_teardown),
		cmocka_unit_test_setup_teardown(ed25519_file_key_signs_and_openssl_verifies, per_test_setup, per_test_teardown),
		cmocka_unit_test_setup_teardown(encrypted_pem_needs_the_right_passphrase, per_test_setup, per_test_teardown),
		cmocka_unit_test_setup_teardown(bad_key_files_give_clear_errors, per_test_setup, per_test_teardown),
		cmocka_unit_test_setup_teardown(public_pem_loading_refuses_private_keys_and_garbage, per_test_setup, per_test_teardown),
		cmocka_unit_test(spec_redaction_drops_only_the_pin),
		cmocka_unit_test_setup_teardown(pkcs11_key_signs_and_token_public_key_verifies, per_test_setup, per_test_teardown),
		cmocka_unit_test_setup_teardown(pkcs11_errors_name_the_problem_and_never_the_pin, per_test_setup, per_test_teardown),
		cmocka_unit_test_setup_teardown(signing_time_per_backend_is_reported, per_test_setup, per_test_teardown),
	};
	int rc = cmocka_run_group_tests_name("keys", tests, NULL, NULL);
	if (hsmdir) {
		struct buf out = BUF_INIT;
		h_sh(&out, "rm -rf '%s'", hsmdir);
		buf_release(&out);
		free(hsmdir);
	}
	return rc;
}
