/*
 * test_mcuboot.c - MCUboot signed images: sign -> parse -> verify round
 * trips, signatures checked by the openssl CLI alone, tampering and
 * malformed input, and (when OTACD_IMGTOOL points at MCUboot's imgtool.py)
 * agreement with the reference tool in both directions.
 *
 * Keys are made once per run with `openssl genpkey` in a temporary
 * directory.  Without OTACD_IMGTOOL the imgtool checks are skipped with a
 * note (CI cannot fetch MCUboot); run them locally with
 *   OTACD_IMGTOOL=/path/to/mcuboot/scripts/imgtool.py build/bin/test_mcuboot
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

#include <openssl/evp.h>
#include <openssl/pem.h>

#include "../common/util.h"
#include "../orchestrator/keys.h"
#include "../orchestrator/mcuboot.h"
#include "harness.h"
#include "imgtest.h"

/* ---- fixture: keys made once ------------------------------------------ */

enum { K_EC, K_ED, K_RSA, K_EC2, K_P384, K_COUNT };

static const struct it_key_spec key_kinds[K_COUNT] = {
	[K_EC] = { "ec", "-algorithm EC -pkeyopt ec_paramgen_curve:P-256" },
	[K_ED] = { "ed", "-algorithm ED25519" },
	[K_RSA] = { "rsa", "-algorithm RSA -pkeyopt rsa_keygen_bits:2048" },
	[K_EC2] = { "ec2", "-algorithm EC -pkeyopt ec_paramgen_curve:P-256" },
	[K_P384] = { "p384", "-algorithm EC -pkeyopt ec_paramgen_curve:P-384" },
};
/* the MCUboot signature type each key makes */
static const enum mcuboot_sig key_sig[K_COUNT] = {
	[K_EC] = MCUBOOT_SIG_ECDSA_P256, [K_ED] = MCUBOOT_SIG_ED25519, [K_RSA] = MCUBOOT_SIG_RSA2048,
	[K_EC2] = MCUBOOT_SIG_ECDSA_P256, [K_P384] = MCUBOOT_SIG_NONE,
};

static struct it_keys F;

static int keys_setup(void **state)
{
	(void)state;
	return it_keys_make(&F, key_kinds, K_COUNT);
}

static int keys_teardown(void **state)
{
	(void)state;
	it_keys_free(&F);
	return 0;
}

/* ---- helpers ------------------------------------------------------------ */

static char *tmp_path(const char *name)
{
	return xasprintf("%s/%s", F.dir, name);
}

static void write_bytes(const char *path, const void *p, size_t n)
{
	FILE *f = fopen(path, "wb");
	if (!f || fwrite(p, 1, n, f) != n)
		fail_msg("cannot write %s", path);
	fclose(f);
}

static void sign_ok(struct buf *img, int key, size_t fwlen, const struct mcuboot_sign_opts *o)
{
	unsigned char *fw = it_firmware(fwlen, (uint32_t)fwlen);
	int rc = mcuboot_sign(img, fw, fwlen, F.priv[key], o);
	if (rc != 0)
		fail_msg("mcuboot_sign: %s", ota_error_last());
	free(fw);
}

static const struct mcuboot_sign_opts opts_release = {
	.header_size = 0x200, .major = 1, .minor = 2, .revision = 3, .build = 4,
	.has_security_counter = 1, .security_counter = 7,
};

/* Verify a copy of img with one byte changed; the error must contain want. */
static void expect_verify_error(const struct buf *img, size_t off, EVP_PKEY *pub, const char *want)
{
	unsigned char *copy = xmalloc(img->len);
	int rc;

	memcpy(copy, img->ptr, img->len);
	assert_true(off < img->len);
	copy[off] ^= 0x01;
	rc = mcuboot_verify(NULL, copy, img->len, pub);
	if (rc == 0)
		fail_msg("flipping byte %zu did not fail verification (want '%s')", off, want);
	if (!strstr(ota_error_last(), want))
		fail_msg("flipping byte %zu: error '%s' does not mention '%s'", off, ota_error_last(), want);
	free(copy);
}

/* The parse error for img (modified in place by the caller) must be exactly want. */
static void expect_parse_error(const void *img, size_t len, const char *want)
{
	struct mcuboot_info info;
	assert_int_equal(mcuboot_parse(&info, img, len), OTA_EINVAL);
	if (strstr(ota_error_last(), want) == NULL)
		fail_msg("parse error '%s' does not contain '%s'", ota_error_last(), want);
}

/* ---- round trips -------------------------------------------------------- */

static void round_trip(int key)
{
	size_t fwlen = 5000;
	unsigned char *fw = it_firmware(fwlen, (uint32_t)fwlen);
	struct buf img = BUF_INIT, out = BUF_INIT;
	struct mcuboot_info info;
	unsigned char digest[32], kh[32];
	char *pub = F.pub_pem[key], hex[65];

	sign_ok(&img, key, fwlen, &opts_release);
	assert_int_equal(mcuboot_parse(&info, img.ptr, img.len), 0);
	assert_int_equal(info.header_size, 0x200);
	assert_int_equal(info.image_size, fwlen);
	assert_int_equal(info.protected_tlv_size, 12);
	assert_int_equal(info.signed_len, 0x200 + fwlen + 12);
	assert_int_equal(info.tlv_end, img.len);
	assert_int_equal(info.sig_type, key_sig[key]);
	assert_true(info.has_security_counter);
	assert_int_equal(info.security_counter, 7);
	assert_int_equal(info.major, 1);
	assert_int_equal(info.minor, 2);
	assert_int_equal(info.revision, 3);
	assert_int_equal(info.build, 4);
	assert_int_equal(info.flags, 0);
	/* header padding is the erased value, the body is the firmware */
	for (size_t i = 32; i < 0x200; i++)
		assert_int_equal((unsigned char)img.ptr[i], 0xff);
	assert_memory_equal(img.ptr + 0x200, fw, fwlen);
	/* SHA256 TLV is the hash of the hashed region */
	EVP_Digest(img.ptr, info.signed_len, digest, NULL, EVP_sha256(), NULL);
	assert_memory_equal(info.sha256, digest, 32);
	/* KEYHASH is SHA-256 of the DER public key, as the openssl CLI computes it */
	assert_int_equal(mcuboot_keyhash(F.pub[key], kh), 0);
	assert_memory_equal(info.keyhash, kh, 32);
	assert_int_equal(h_sh(&out, key == K_RSA
			      ? "openssl rsa -pubin -in %s -RSAPublicKey_out -outform DER 2>/dev/null | openssl dgst -sha256 -r"
			      : "openssl pkey -pubin -in %s -outform DER | openssl dgst -sha256 -r", pub), 0);
	ota_hex(hex, kh, 32);
	assert_memory_equal(buf_cstr(&out), hex, 64);
	/* verifies with the public half alone and with the private key */
	if (mcuboot_verify(&info, img.ptr, img.len, F.pub[key]) != 0)
		fail_msg("verify: %s", ota_error_last());
	assert_int_equal(mcuboot_verify(NULL, img.ptr, img.len, F.priv[key]), 0);
	buf_release(&out);
	buf_release(&img);
	free(fw);
}

static void ecdsa_p256_image_signs_parses_and_verifies(void **state)
{
	(void)state;
	round_trip(K_EC);
}

static void ed25519_image_signs_parses_and_verifies(void **state)
{
	(void)state;
	round_trip(K_ED);
}

static void rsa2048_image_signs_parses_and_verifies(void **state)
{
	(void)state;
	round_trip(K_RSA);
}

static void ed25519_signing_is_deterministic(void **state)
{
	struct buf a = BUF_INIT, b = BUF_INIT;
	(void)state;
	sign_ok(&a, K_ED, 777, &opts_release);
	sign_ok(&b, K_ED, 777, &opts_release);
	assert_int_equal(a.len, b.len);
	assert_memory_equal(a.ptr, b.ptr, a.len);
	buf_release(&a);
	buf_release(&b);
}

/* ---- the openssl CLI checks our signatures on its own --------------------- */

static void openssl_cli_verify(int key, int tamper)
{
	struct buf img = BUF_INIT, out = BUF_INIT;
	struct mcuboot_info info;
	char *path = tmp_path("cli.bin"), *region = tmp_path("region.bin"),
	     *sig = tmp_path("sig.bin"), *digest = tmp_path("digest.bin");
	const char *pub = F.pub_pem[key];
	int rc;

	sign_ok(&img, key, 3000, &opts_release);
	assert_int_equal(mcuboot_parse(&info, img.ptr, img.len), 0);
	if (tamper)
		img.ptr[info.header_size + 5] ^= 0x40;
	write_bytes(path, img.ptr, img.len);
	assert_int_equal(h_sh(&out, "head -c %zu %s > %s && tail -c +%zu %s | head -c %zu > %s",
			      info.signed_len, path, region, info.sig_off + 1, path, info.sig_len,
			      sig), 0);
	switch (key) {
	case K_EC:
		rc = h_sh(&out, "openssl dgst -sha256 -verify %s -signature %s %s", pub, sig, region);
		break;
	case K_RSA:
		rc = h_sh(&out, "openssl dgst -sha256 -sigopt rsa_padding_mode:pss "
			  "-sigopt rsa_pss_saltlen:32 -sigopt rsa_mgf1_md:sha256 "
			  "-verify %s -signature %s %s", pub, sig, region);
		break;
	default:
		rc = h_sh(&out, "openssl dgst -sha256 -binary %s > %s && openssl pkeyutl -verify "
			  "-rawin -pubin -inkey %s -sigfile %s -in %s", region, digest, pub, sig,
			  digest);
		break;
	}
	if (tamper) {
		assert_int_not_equal(rc, 0);
	} else {
		if (rc != 0)
			fail_msg("openssl rejected our %s signature: %s", key_kinds[key].name,
				 buf_cstr(&out));
		assert_true(strstr(buf_cstr(&out), "Verified OK") ||
			    strstr(buf_cstr(&out), "Signature Verified Successfully"));
	}
	buf_release(&img);
	buf_release(&out);
	free(path);
	free(region);
	free(sig);
	free(digest);
}

static void openssl_cli_alone_verifies_our_ecdsa_signature(void **state)
{
	(void)state;
	openssl_cli_verify(K_EC, 0);
	openssl_cli_verify(K_EC, 1);
}

static void openssl_cli_alone_verifies_our_ed25519_signature_over_the_digest(void **state)
{
	(void)state;
	openssl_cli_verify(K_ED, 0);
	openssl_cli_verify(K_ED, 1);
}

static void openssl_cli_alone_verifies_our_rsa_pss_signature(void **state)
{
	(void)state;
	openssl_cli_verify(K_RSA, 0);
	openssl_cli_verify(K_RSA, 1);
}

/* ---- imgtool, the reference ------------------------------------------- */

/* Option sets, as ours and as imgtool arguments (imgtool always wants -S;
 * without --pad it only checks that the image would fit). */
static const struct {
	struct mcuboot_sign_opts o;
	const char *args;
	size_t fwlen;
} variants[] = {
	{ { .header_size = 0x200, .major = 1, .minor = 2, .revision = 3, .build = 4,
	    .has_security_counter = 1, .security_counter = 7 },
	  "--pad-header -H 0x200 -v 1.2.3+4 -s 7 -S 0x100000", 5001 },
	{ { .header_size = 32 }, "--pad-header -H 32 -v 0 -S 0x100000", 1 },
	{ { .header_size = 0x400, .major = 255, .minor = 255, .revision = 65535,
	    .build = 4294967295u, .has_security_counter = 1, .security_counter = 4294967295u,
	    .load_addr = 0x20000000, .slot_size = 0x10000, .confirm = 1 },
	  "--pad-header -H 0x400 -v 255.255.65535+4294967295 -s 4294967295 "
	  "--load-addr 0x20000000 -S 0x10000 --pad --confirm", 40000 },
	{ { .header_size = 0x200, .major = 2, .slot_size = 0x8000 },
	  "--pad-header -H 0x200 -v 2.0.0 -S 0x8000 --pad", 1024 * 20 },
	{ { .header_size = 0x200, .major = 3, .minor = 1, .has_security_counter = 1,
	    .security_counter = 0, .flags = MCUBOOT_F_NON_BOOTABLE },
	  "--pad-header -H 0x200 -v 3.1 -s 0 --non-bootable -S 0x100000", 300 },
};

static int imgtool_sign(struct buf *out, int key, size_t v, const char *in, const char *img)
{
	return h_sh(out, "/usr/bin/python3 %s sign -k %s %s %s %s", it_imgtool(), F.priv_pem[key],
		    variants[v].args, in, img);
}

static void imgtool_accepts_our_images(void **state)
{
	static const int keys[] = { K_EC, K_ED, K_RSA };
	struct buf img = BUF_INIT, out = BUF_INIT;
	char *path;
	(void)state;
	IT_NEED_IMGTOOL();
	path = tmp_path("ours.bin");
	for (size_t k = 0; k < OTA_ARRAY_SIZE(keys); k++) {
		for (size_t v = 0; v < OTA_ARRAY_SIZE(variants); v++) {
			sign_ok(&img, keys[k], variants[v].fwlen, &variants[v].o);
			write_bytes(path, img.ptr, img.len);
			/* the private key file and the public one both verify */
			for (int pubonly = 0; pubonly < 2; pubonly++) {
				int rc = h_sh(&out, "/usr/bin/python3 %s verify -k %s %s", it_imgtool(),
					      pubonly ? F.pub_pem[keys[k]] : F.priv_pem[keys[k]], path);
				if (rc != 0 || !strstr(buf_cstr(&out), "Image was correctly validated"))
					fail_msg("imgtool rejected our %s image (variant %zu): %s",
						 key_kinds[keys[k]].name, v, buf_cstr(&out));
			}
			/* and with another key it refuses */
			assert_int_not_equal(h_sh(&out, "/usr/bin/python3 %s verify -k %s %s", it_imgtool(),
						  F.priv_pem[keys[k] == K_EC ? K_EC2 : K_EC], path), 0);
		}
	}
	buf_release(&img);
	buf_release(&out);
	free(path);
}

/* Same bytes as imgtool except the signature (randomised for ECDSA and
 * RSA-PSS, whose length also moves the TLV area's length and the padding). */
static void assert_same_as_imgtool(const struct buf *ours, const struct buf *theirs, int key)
{
	struct mcuboot_info a, b;

	assert_int_equal(mcuboot_parse(&a, ours->ptr, ours->len), 0);
	assert_int_equal(mcuboot_parse(&b, theirs->ptr, theirs->len), 0);
	if (key == K_ED) {
		assert_int_equal(ours->len, theirs->len);
		assert_memory_equal(ours->ptr, theirs->ptr, ours->len);
		return;
	}
	assert_int_equal(a.signed_len, b.signed_len);
	/* header, body, protected TLVs */
	assert_memory_equal(ours->ptr, theirs->ptr, a.signed_len);
	/* TLV info magic, SHA256 and KEYHASH entries, the signature's type */
	assert_memory_equal(ours->ptr + a.signed_len, theirs->ptr + b.signed_len, 2);
	assert_int_equal(a.sig_off, b.sig_off);
	assert_memory_equal(ours->ptr + a.signed_len + 4, theirs->ptr + b.signed_len + 4,
			    a.sig_off - 2 - a.signed_len - 4);
	/* the areas differ only by the signature's length */
	assert_int_equal(a.tlv_end - a.sig_len, b.tlv_end - b.sig_len);
	if (ours->len == a.tlv_end) {
		assert_int_equal(theirs->len, b.tlv_end);
	} else {
		/* padding and trailer: same slot, same bytes after the longer area */
		size_t from = a.tlv_end > b.tlv_end ? a.tlv_end : b.tlv_end;
		assert_int_equal(ours->len, theirs->len);
		assert_memory_equal(ours->ptr + from, theirs->ptr + from, ours->len - from);
		for (size_t i = a.tlv_end; i < from; i++)
			assert_int_equal((unsigned char)ours->ptr[i], 0xff);
	}
}

static void ours_match_imgtool_byte_for_byte_but_the_signature(void **state)
{
	static const int keys[] = { K_ED, K_EC, K_RSA };
	struct buf ours = BUF_INIT, theirs = BUF_INIT, out = BUF_INIT;
	char *in, *img;
	(void)state;
	IT_NEED_IMGTOOL();
	in = tmp_path("fw.bin");
	img = tmp_path("theirs.bin");
	for (size_t k = 0; k < OTA_ARRAY_SIZE(keys); k++) {
		for (size_t v = 0; v < OTA_ARRAY_SIZE(variants); v++) {
			unsigned char *fw = it_firmware(variants[v].fwlen, (uint32_t)variants[v].fwlen);
			write_bytes(in, fw, variants[v].fwlen);
			free(fw);
			if (imgtool_sign(&out, keys[k], v, in, img) != 0)
				fail_msg("imgtool sign: %s", buf_cstr(&out));
			assert_int_equal(ota_read_file(&theirs, img, BUF_NOLIMIT), 0);
			sign_ok(&ours, keys[k], variants[v].fwlen, &variants[v].o);
			assert_same_as_imgtool(&ours, &theirs, keys[k]);
			buf_release(&theirs);
		}
	}
	buf_release(&ours);
	buf_release(&out);
	free(in);
	free(img);
}

static void imgtool_images_parse_and_verify_here(void **state)
{
	static const int keys[] = { K_EC, K_ED, K_RSA };
	struct buf theirs = BUF_INIT, out = BUF_INIT;
	char *in, *img;
	struct mcuboot_info info;
	(void)state;
	IT_NEED_IMGTOOL();
	in = tmp_path("fw.bin");
	img = tmp_path("theirs.bin");
	for (size_t k = 0; k < OTA_ARRAY_SIZE(keys); k++) {
		for (size_t v = 0; v < OTA_ARRAY_SIZE(variants); v++) {
			unsigned char *fw = it_firmware(variants[v].fwlen, 99);
			write_bytes(in, fw, variants[v].fwlen);
			free(fw);
			if (imgtool_sign(&out, keys[k], v, in, img) != 0)
				fail_msg("imgtool sign: %s", buf_cstr(&out));
			assert_int_equal(ota_read_file(&theirs, img, BUF_NOLIMIT), 0);
			if (mcuboot_verify(&info, theirs.ptr, theirs.len, F.pub[keys[k]]) != 0)
				fail_msg("our verifier rejects imgtool's %s image (variant %zu): %s",
					 key_kinds[keys[k]].name, v, ota_error_last());
			assert_int_equal(info.sig_type, key_sig[keys[k]]);
			assert_int_equal(info.major, variants[v].o.major);
			assert_int_equal(info.minor, variants[v].o.minor);
			assert_int_equal(info.revision, variants[v].o.revision);
			assert_int_equal(info.build, variants[v].o.build);
			assert_int_equal(info.has_security_counter, variants[v].o.has_security_counter);
			assert_int_equal(info.security_counter, variants[v].o.security_counter);
			assert_int_equal(info.load_addr, variants[v].o.load_addr);
			/* a different key of the same type is refused */
			if (keys[k] == K_EC)
				assert_int_not_equal(mcuboot_verify(NULL, theirs.ptr, theirs.len,
								    F.pub[K_EC2]), 0);
			buf_release(&theirs);
		}
	}
	/* imgtool --pad-sig: ECDSA signature zero-padded to 72 bytes */
	assert_int_equal(h_sh(&out, "/usr/bin/python3 %s sign -k %s --pad-sig --pad-header -H 0x200 "
			      "-v 1.0.0 -S 0x100000 %s %s", it_imgtool(), F.priv_pem[K_EC], in, img), 0);
	assert_int_equal(ota_read_file(&theirs, img, BUF_NOLIMIT), 0);
	if (mcuboot_verify(&info, theirs.ptr, theirs.len, F.pub[K_EC]) != 0)
		fail_msg("imgtool --pad-sig image: %s", ota_error_last());
	assert_int_equal(info.sig_len, 72);
	buf_release(&theirs);
	/* imgtool sign without a key: hashed but unsigned */
	assert_int_equal(h_sh(&out, "/usr/bin/python3 %s sign --pad-header -H 0x200 -v 1.0.0 -S 0x100000 %s %s",
			      it_imgtool(), in, img), 0);
	assert_int_equal(ota_read_file(&theirs, img, BUF_NOLIMIT), 0);
	assert_int_equal(mcuboot_parse(&info, theirs.ptr, theirs.len), 0);
	assert_int_equal(info.sig_type, MCUBOOT_SIG_NONE);
	assert_int_equal(mcuboot_verify(NULL, theirs.ptr, theirs.len, F.pub[K_EC]), OTA_EINVAL);
	assert_non_null(strstr(ota_error_last(), "not signed"));
	buf_release(&theirs);
	buf_release(&out);
	free(in);
	free(img);
}

/* A key inside a PKCS#11 token (SoftHSM2 through OpenSSL's pkcs11 engine):
 * the private part never leaves the token and signing still works. */
static void hsm_key_signs_images_through_the_pkcs11_engine(void **state)
{
	static const char softhsm[] = "/usr/lib/softhsm/libsofthsm2.so";
	struct sign_key *k = NULL;
	struct buf img = BUF_INIT, out = BUF_INIT;
	struct mcuboot_info info;
	char *hsm, *pub, *path;
	unsigned char *fw;
	(void)state;

	if (access(softhsm, R_OK) != 0 ||
	    h_sh(&out, "command -v pkcs11-tool && command -v softhsm2-util && "
		 "openssl engine pkcs11 -t") != 0) {
		buf_release(&out);
		print_message("note: SoftHSM2, opensc or the pkcs11 engine missing; HSM check skipped\n");
		skip();
	}
	hsm = tmp_path("hsm");
	pub = tmp_path("hsm/pub.pem");
	path = tmp_path("hsm.bin");
	fw = it_firmware(4096, 11);
	if (h_sh(&out, "mkdir -p %s/tokens && printf 'directories.tokendir = %s/tokens\\n"
		 "objectstore.backend = file\\n' > %s/softhsm2.conf && "
		 "export SOFTHSM2_CONF=%s/softhsm2.conf && "
		 "softhsm2-util --init-token --free --label mcu --pin 1234 --so-pin 5678 && "
		 "pkcs11-tool --module %s --token-label mcu --login --pin 1234 --keypairgen "
		 "--key-type EC:prime256v1 --label release --id 01 && "
		 "pkcs11-tool --module %s --token-label mcu --read-object --type pubkey --label release "
		 "| openssl pkey -pubin -inform DER -out %s", hsm, hsm, hsm, hsm, softhsm, softhsm,
		 pub) != 0)
		fail_msg("token setup: %s", buf_cstr(&out));
	{
		char *conf = xasprintf("%s/softhsm2.conf", hsm);
		setenv("SOFTHSM2_CONF", conf, 1);
		free(conf);
	}
	if (sign_key_load(&k, "pkcs11:token=mcu;object=release;pin-value=1234", NULL) != 0)
		fail_msg("sign_key_load: %s", ota_error_last());
	if (mcuboot_sign(&img, fw, 4096, sign_key_pkey(k), &opts_release) != 0)
		fail_msg("mcuboot_sign with the token key: %s", ota_error_last());
	assert_int_equal(mcuboot_verify(&info, img.ptr, img.len, sign_key_public(k)), 0);
	assert_int_equal(info.sig_type, MCUBOOT_SIG_ECDSA_P256);
	write_bytes(path, img.ptr, img.len);
	assert_int_equal(h_sh(&out, "head -c %zu %s > %s.region && tail -c +%zu %s | head -c %zu > %s.sig && "
			      "openssl dgst -sha256 -verify %s -signature %s.sig %s.region",
			      info.signed_len, path, path, info.sig_off + 1, path, info.sig_len, path,
			      pub, path, path), 0);
	if (it_imgtool()) {
		assert_int_equal(h_sh(&out, "/usr/bin/python3 %s verify -k %s %s", it_imgtool(), pub, path), 0);
		assert_non_null(strstr(buf_cstr(&out), "Image was correctly validated"));
	}
	sign_key_free(k);
	unsetenv("SOFTHSM2_CONF");
	buf_release(&img);
	buf_release(&out);
	free(fw);
	free(hsm);
	free(pub);
	free(path);
}

/* ---- tampering ---------------------------------------------------------- */

static void tamper(int key)
{
	struct buf img = BUF_INIT;
	struct mcuboot_info info;
	size_t unprot;

	sign_ok(&img, key, 2000, &opts_release);
	assert_int_equal(mcuboot_parse(&info, img.ptr, img.len), 0);
	unprot = info.signed_len;
	expect_verify_error(&img, 20, F.pub[key], "image hash mismatch");            /* header: version */
	expect_verify_error(&img, 4, F.pub[key], "image hash mismatch");             /* header: load address */
	expect_verify_error(&img, 0x100, F.pub[key], "image hash mismatch");         /* header padding */
	expect_verify_error(&img, 0x200, F.pub[key], "image hash mismatch");         /* body, first byte */
	expect_verify_error(&img, 0x200 + 1999, F.pub[key], "image hash mismatch");  /* body, last byte */
	expect_verify_error(&img, unprot - 4, F.pub[key], "image hash mismatch");    /* security counter */
	expect_verify_error(&img, unprot + 8 + 5, F.pub[key], "image hash mismatch");  /* SHA256 TLV */
	expect_verify_error(&img, unprot + 8 + 36 + 5, F.pub[key], "key hash does not match"); /* KEYHASH */
	expect_verify_error(&img, info.sig_off + info.sig_len - 1, F.pub[key],
			    "signature does not verify");
	expect_verify_error(&img, info.sig_off + 10, F.pub[key], "signature does not verify");
	buf_release(&img);
}

static void tampering_with_any_signed_part_of_an_ecdsa_image_names_the_failed_check(void **state)
{
	(void)state;
	tamper(K_EC);
}

static void tampering_with_any_signed_part_of_an_ed25519_image_names_the_failed_check(void **state)
{
	(void)state;
	tamper(K_ED);
}

static void another_key_is_refused_by_key_hash(void **state)
{
	struct buf img = BUF_INIT;
	(void)state;
	sign_ok(&img, K_EC, 100, &opts_release);
	assert_int_equal(mcuboot_verify(NULL, img.ptr, img.len, F.pub[K_EC2]), OTA_EINVAL);
	assert_non_null(strstr(ota_error_last(), "key hash does not match"));
	assert_int_equal(mcuboot_verify(NULL, img.ptr, img.len, F.pub[K_ED]), OTA_EINVAL);
	assert_non_null(strstr(ota_error_last(), "key hash does not match"));
	assert_int_equal(mcuboot_verify(NULL, img.ptr, img.len, F.pub[K_P384]), OTA_EINVAL);
	assert_non_null(strstr(ota_error_last(), "P-256"));
	buf_release(&img);
}

/* Old imgtool (and --pad-sig) pads ECDSA signatures to 72 bytes with zeros. */
static void zero_padded_ecdsa_signatures_still_verify(void **state)
{
	struct buf img = BUF_INIT;
	struct mcuboot_info info;
	size_t pad;
	(void)state;
	do {
		sign_ok(&img, K_EC, 500, &opts_release);
		assert_int_equal(mcuboot_parse(&info, img.ptr, img.len), 0);
	} while (info.sig_len == 72);
	pad = 72 - info.sig_len;
	for (size_t i = 0; i < pad; i++)
		buf_putc(&img, 0);
	img.ptr[info.sig_off - 2] = 72;
	img.ptr[info.signed_len + 2] = (char)(img.ptr[info.signed_len + 2] + pad);
	if (mcuboot_verify(&info, img.ptr, img.len, F.pub[K_EC]) != 0)
		fail_msg("padded signature: %s", ota_error_last());
	assert_int_equal(info.sig_len, 72);
	/* padding that is not zeros is not padding */
	img.ptr[img.len - 1] = 1;
	assert_int_equal(mcuboot_verify(NULL, img.ptr, img.len, F.pub[K_EC]), OTA_EINVAL);
	assert_non_null(strstr(ota_error_last(), "signature does not verify"));
	buf_release(&img);
}

/* ---- malformed input ---------------------------------------------------- */

static void truncate_everywhere(int key, const struct mcuboot_sign_opts *o, size_t fwlen)
{
	struct buf img = BUF_INIT;

	sign_ok(&img, key, fwlen, o);
	for (size_t n = 0; n < img.len; n++) {
		/* an exact-size copy, so the sanitizers see any read past the end */
		unsigned char *copy = xmalloc(n ? n : 1);
		struct mcuboot_info info;
		memcpy(copy, img.ptr, n);
		if (mcuboot_parse(&info, copy, n) != OTA_EINVAL)
			fail_msg("%zu of %zu bytes parsed", n, img.len);
		if (!strstr(ota_error_last(), "truncated"))
			fail_msg("%zu of %zu bytes: '%s' does not say truncated", n, img.len,
				 ota_error_last());
		assert_int_equal(mcuboot_verify(&info, copy, n, F.pub[key]), OTA_EINVAL);
		free(copy);
	}
	assert_int_equal(mcuboot_verify(NULL, img.ptr, img.len, F.pub[key]), 0);
	buf_release(&img);
}

static void truncated_images_fail_cleanly_at_every_length(void **state)
{
	struct mcuboot_sign_opts small = { .header_size = 32, .has_security_counter = 1,
					   .security_counter = 3 };
	struct mcuboot_sign_opts bare = { .header_size = 32 };
	(void)state;
	truncate_everywhere(K_EC, &small, 16);
	truncate_everywhere(K_ED, &small, 16);
	truncate_everywhere(K_ED, &bare, 0);
	truncate_everywhere(K_RSA, &bare, 40);
}

static void wrong_tlv_lengths_are_reported_with_their_offset(void **state)
{
	struct buf img = BUF_INIT;
	struct mcuboot_info info;
	char *want;
	size_t u;
	(void)state;

	sign_ok(&img, K_ED, 1000, &opts_release);
	assert_int_equal(mcuboot_parse(&info, img.ptr, img.len), 0);
	u = info.signed_len;  /* unprotected area */

	img.ptr[u + 4 + 2] = 31;  /* SHA256 */
	want = xasprintf("TLV 0x10 at offset %zu has length 31, expected 32", u + 4);
	expect_parse_error(img.ptr, img.len, want);
	free(want);
	img.ptr[u + 4 + 2] = 32;

	img.ptr[u + 40 + 2] = 33;  /* KEYHASH */
	want = xasprintf("TLV 0x01 at offset %zu has length 33, expected 32", u + 40);
	expect_parse_error(img.ptr, img.len, want);
	free(want);
	img.ptr[u + 40 + 2] = 32;

	img.ptr[u + 76 + 2] = 63;  /* ED25519 */
	want = xasprintf("TLV 0x24 at offset %zu has length 63, expected 64", u + 76);
	expect_parse_error(img.ptr, img.len, want);
	free(want);
	img.ptr[u + 76 + 2] = 64;
	img.ptr[u + 76 + 3] = 1;   /* 320: past the area */
	want = xasprintf("TLV 0x24 at offset %zu has length 320, past the end of the TLV area",
			 u + 76);
	expect_parse_error(img.ptr, img.len, want);
	free(want);
	img.ptr[u + 76 + 3] = 0;

	img.ptr[u - 8 + 2] = 3;    /* SEC_CNT in the protected area */
	want = xasprintf("TLV 0x50 at offset %zu has length 3, expected 4", u - 8);
	expect_parse_error(img.ptr, img.len, want);
	free(want);
	img.ptr[u - 8 + 2] = 4;

	img.ptr[u + 2] = (char)0xff;  /* unprotected area length past the file */
	expect_parse_error(img.ptr, img.len, "image truncated: TLV area at offset");
	img.ptr[u + 2] = 2;          /* shorter than its info header */
	img.ptr[u + 3] = 0;
	expect_parse_error(img.ptr, img.len, "less than its 4-byte info header");
	buf_release(&img);
}

static void wrong_magics_are_named(void **state)
{
	struct buf img = BUF_INIT;
	struct mcuboot_info info;
	size_t prot;
	(void)state;

	sign_ok(&img, K_EC, 100, &opts_release);
	assert_int_equal(mcuboot_parse(&info, img.ptr, img.len), 0);
	prot = 0x200 + 100;
	img.ptr[0] ^= 1;
	expect_parse_error(img.ptr, img.len, "not an MCUboot image: magic 0x96f3b83c at offset 0");
	img.ptr[0] ^= 1;
	img.ptr[prot] ^= 1;
	expect_parse_error(img.ptr, img.len, "found magic 0x6909 there instead of 0x6908");
	img.ptr[prot] ^= 1;
	img.ptr[info.signed_len] ^= 2;
	expect_parse_error(img.ptr, img.len, "has magic 0x6905, expected 0x6907");
	img.ptr[info.signed_len] ^= 2;
	assert_int_equal(mcuboot_verify(NULL, img.ptr, img.len, F.pub[K_EC]), 0);
	buf_release(&img);
}

static void protected_area_must_match_the_header(void **state)
{
	struct buf img = BUF_INIT;
	char *want;
	(void)state;
	sign_ok(&img, K_EC, 100, &opts_release);
	img.ptr[10] = 16;
	want = xasprintf("protected TLV area at offset %d has length 12, the header says 16",
			 0x200 + 100);
	expect_parse_error(img.ptr, img.len, want);
	free(want);
	img.ptr[10] = 0;
	expect_parse_error(img.ptr, img.len, "the header says 0");
	buf_release(&img);

	/* the header announces a protected area that is not there */
	sign_ok(&img, K_EC, 100, &(struct mcuboot_sign_opts){ .header_size = 0x200 });
	img.ptr[10] = 12;
	expect_parse_error(img.ptr, img.len, "header says 12 bytes of protected TLVs");
	buf_release(&img);
}

static void keyhash_after_the_signature_is_refused(void **state)
{
	struct buf img = BUF_INIT;
	struct mcuboot_info info;
	unsigned char keyhash[36];
	size_t u, siglen;
	char *want;
	(void)state;

	sign_ok(&img, K_EC, 100, &opts_release);
	assert_int_equal(mcuboot_parse(&info, img.ptr, img.len), 0);
	u = info.signed_len;
	siglen = 4 + info.sig_len;
	/* SHA256, KEYHASH, SIG  ->  SHA256, SIG, KEYHASH */
	memcpy(keyhash, img.ptr + u + 40, 36);
	memmove(img.ptr + u + 40, img.ptr + u + 76, siglen);
	memcpy(img.ptr + u + 40 + siglen, keyhash, 36);
	want = xasprintf("signature TLV 0x22 at offset %zu comes before any KEYHASH TLV", u + 40);
	expect_parse_error(img.ptr, img.len, want);
	free(want);
	buf_release(&img);
}

static void unsupported_tlvs_and_duplicates_are_refused(void **state)
{
	struct buf img = BUF_INIT;
	struct mcuboot_info info;
	size_t u;
	(void)state;
	sign_ok(&img, K_ED, 100, &opts_release);
	assert_int_equal(mcuboot_parse(&info, img.ptr, img.len), 0);
	u = info.signed_len;
	img.ptr[u + 40] = 0x10;  /* KEYHASH -> second SHA256 */
	expect_parse_error(img.ptr, img.len, "second SHA256 TLV");
	img.ptr[u + 40] = 0x02;  /* full public key */
	expect_parse_error(img.ptr, img.len, "full public key");
	img.ptr[u + 40] = 0x50;  /* security counter outside the signed part */
	expect_parse_error(img.ptr, img.len, "unprotected");
	img.ptr[u + 40] = 0x01;
	img.ptr[u + 4] = 0x11;   /* SHA384 instead of SHA256: skipped, then missing */
	expect_parse_error(img.ptr, img.len, "no SHA256 TLV");
	img.ptr[u + 4] = 0x10;
	img.ptr[u - 8] = 0x10;   /* a hash inside the protected area */
	expect_parse_error(img.ptr, img.len, "is in the protected area");
	buf_release(&img);
}

/* ---- options ------------------------------------------------------------ */

static void security_counter_and_version_round_trip(void **state)
{
	static const struct { uint8_t ma, mi; uint16_t rev; uint32_t build, sc; int has; } cases[] = {
		{ 0, 0, 0, 0, 0, 1 },
		{ 1, 2, 3, 4, 7, 1 },
		{ 255, 255, 65535, 4294967295u, 4294967295u, 1 },
		{ 9, 0, 1, 0, 0, 0 },
	};
	struct buf img = BUF_INIT;
	struct mcuboot_info info;
	(void)state;
	for (size_t i = 0; i < OTA_ARRAY_SIZE(cases); i++) {
		struct mcuboot_sign_opts o = { .major = cases[i].ma, .minor = cases[i].mi,
					       .revision = cases[i].rev, .build = cases[i].build,
					       .has_security_counter = cases[i].has,
					       .security_counter = cases[i].sc };
		sign_ok(&img, K_ED, 64, &o);
		assert_int_equal(mcuboot_verify(&info, img.ptr, img.len, F.pub[K_ED]), 0);
		assert_int_equal(info.header_size, MCUBOOT_HEADER_DEFAULT);
		assert_int_equal(info.major, cases[i].ma);
		assert_int_equal(info.minor, cases[i].mi);
		assert_int_equal(info.revision, cases[i].rev);
		assert_int_equal(info.build, cases[i].build);
		assert_int_equal(info.has_security_counter, cases[i].has);
		assert_int_equal(info.protected_tlv_size, cases[i].has ? 12 : 0);
		if (cases[i].has)
			assert_int_equal(info.security_counter, cases[i].sc);
	}
	/* load address sets RAM_LOAD, as imgtool --load-addr does */
	sign_ok(&img, K_ED, 64, &(struct mcuboot_sign_opts){ .load_addr = 0x20000000,
							     .flags = MCUBOOT_F_PIC });
	assert_int_equal(mcuboot_parse(&info, img.ptr, img.len), 0);
	assert_int_equal(info.load_addr, 0x20000000);
	assert_int_equal(info.flags, MCUBOOT_F_PIC | MCUBOOT_F_RAM_LOAD);
	buf_release(&img);
}

static void slot_trailer_ends_with_boot_magic_and_image_ok(void **state)
{
	static const unsigned char magic[16] = { 0x77, 0xc2, 0x95, 0xf3, 0x60, 0xd2, 0xef, 0x7f,
						 0x35, 0x52, 0x50, 0x0f, 0x2c, 0xb6, 0x79, 0x80 };
	struct mcuboot_sign_opts o = opts_release;
	struct buf img = BUF_INIT;
	struct mcuboot_info info;
	const unsigned char *p;
	(void)state;

	for (int confirm = 0; confirm < 2; confirm++) {
		o.slot_size = 0x4000;
		o.confirm = confirm;
		sign_ok(&img, K_EC, 3000, &o);
		p = (const unsigned char *)img.ptr;
		assert_int_equal(img.len, 0x4000);
		assert_memory_equal(p + 0x4000 - 16, magic, 16);
		assert_int_equal(p[0x4000 - 24], confirm ? 0x01 : 0xff);
		assert_int_equal(mcuboot_verify(&info, img.ptr, img.len, F.pub[K_EC]), 0);
		for (size_t i = info.tlv_end; i < 0x4000 - 16; i++)
			if (i != 0x4000 - 24)
				assert_int_equal(p[i], 0xff);
	}
	/* image + 432-byte trailer must fit, exactly is enough (as in imgtool) */
	o.slot_size = 0;
	sign_ok(&img, K_ED, 3000, &o);
	o.slot_size = (uint32_t)img.len + MCUBOOT_TRAILER_SIZE;
	sign_ok(&img, K_ED, 3000, &o);
	assert_int_equal(img.len, o.slot_size);
	o.slot_size--;
	{
		unsigned char *fw = it_firmware(3000, 3000);
		assert_int_equal(mcuboot_sign(&img, fw, 3000, F.priv[K_ED], &o), OTA_EINVAL);
		assert_non_null(strstr(ota_error_last(), "exceeds the slot size"));
		assert_int_equal(img.len, 0);
		free(fw);
	}
	buf_release(&img);
}

static void signing_refuses_bad_keys_and_options(void **state)
{
	struct buf img = BUF_INIT, small;
	(void)state;
	assert_int_equal(mcuboot_sign(&img, "fw", 2, F.priv[K_P384], NULL), OTA_EINVAL);
	assert_non_null(strstr(ota_error_last(), "P-256 keys only"));
	assert_int_equal(mcuboot_sign(&img, "fw", 2, NULL, NULL), OTA_EINVAL);
	assert_int_equal(mcuboot_sign(&img, "fw", 2, F.priv[K_EC],
				      &(struct mcuboot_sign_opts){ .header_size = 16 }), OTA_EINVAL);
	assert_non_null(strstr(ota_error_last(), "header size 16"));
	assert_int_equal(mcuboot_sign(&img, "fw", 2, F.priv[K_EC],
				      &(struct mcuboot_sign_opts){ .header_size = 0x10000 }),
			 OTA_EINVAL);
	/* an output cap is respected and leaves nothing behind */
	buf_init(&small, 256);
	assert_int_equal(mcuboot_sign(&small, "fw", 2, F.priv[K_EC], NULL), OTA_ETOOBIG);
	assert_int_equal(small.len, 0);
	buf_release(&small);
	buf_release(&img);
}

static void versions_parse_like_imgtool_and_reject_out_of_range(void **state)
{
	uint8_t ma, mi;
	uint16_t rev;
	uint32_t build;
	char s[32];
	(void)state;

	assert_int_equal(mcuboot_version_parse("1.2.3+4", &ma, &mi, &rev, &build), 0);
	assert_int_equal(ma, 1);
	assert_int_equal(mi, 2);
	assert_int_equal(rev, 3);
	assert_int_equal(build, 4);
	assert_int_equal(mcuboot_version_parse("7", &ma, &mi, &rev, &build), 0);
	assert_true(ma == 7 && mi == 0 && rev == 0 && build == 0);
	assert_int_equal(mcuboot_version_parse("0.9", &ma, &mi, &rev, &build), 0);
	assert_true(ma == 0 && mi == 9 && rev == 0 && build == 0);
	assert_int_equal(mcuboot_version_parse("255.255.65535+4294967295", &ma, &mi, &rev, &build), 0);
	assert_true(ma == 255 && mi == 255 && rev == 65535 && build == 4294967295u);
	mcuboot_version_format(s, sizeof(s), ma, mi, rev, build);
	assert_string_equal(s, "255.255.65535+4294967295");
	mcuboot_version_format(s, sizeof(s), 1, 2, 3, 4);
	assert_string_equal(s, "1.2.3+4");

	assert_int_equal(mcuboot_version_parse("256.0.0", &ma, &mi, &rev, &build), OTA_EINVAL);
	assert_non_null(strstr(ota_error_last(), "major is out of range (0-255)"));
	assert_int_equal(mcuboot_version_parse("1.256", &ma, &mi, &rev, &build), OTA_EINVAL);
	assert_non_null(strstr(ota_error_last(), "minor is out of range"));
	assert_int_equal(mcuboot_version_parse("1.2.65536", &ma, &mi, &rev, &build), OTA_EINVAL);
	assert_int_equal(mcuboot_version_parse("1.2.3+4294967296", &ma, &mi, &rev, &build), OTA_EINVAL);
	assert_int_equal(mcuboot_version_parse("1.2.3+99999999999999999999999", &ma, &mi, &rev, &build),
			 OTA_EINVAL);
	assert_int_equal(mcuboot_version_parse("01.2", &ma, &mi, &rev, &build), OTA_EINVAL);
	assert_non_null(strstr(ota_error_last(), "leading zero"));
	static const char *const bad[] = { "", "1.", "1..2", "1.2.3.4", "1.2+3", "1.2.3+", "v1",
					   "1.2.3+4 ", "-1", "1.2.3-rc1", "+1" };
	for (size_t i = 0; i < OTA_ARRAY_SIZE(bad); i++)
		if (mcuboot_version_parse(bad[i], &ma, &mi, &rev, &build) != OTA_EINVAL)
			fail_msg("version '%s' accepted", bad[i]);
	assert_int_equal(mcuboot_version_parse(NULL, &ma, &mi, &rev, &build), OTA_EINVAL);
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void signing_a_1mb_image_takes_milliseconds(void **state)
{
	static const int keys[] = { K_EC, K_ED, K_RSA };
	size_t n = 1024 * 1024;
	unsigned char *fw = it_firmware(n, 5);
	struct buf img = BUF_INIT;
	(void)state;
	for (size_t k = 0; k < OTA_ARRAY_SIZE(keys); k++) {
		double sign = 1e9, verify = 1e9;
		/* best of 5: the first run also pays for growing the buffer */
		for (int i = 0; i < 5; i++) {
			double t0 = now_s(), t1, t2;
			assert_int_equal(mcuboot_sign(&img, fw, n, F.priv[keys[k]], &opts_release), 0);
			t1 = now_s();
			assert_int_equal(mcuboot_verify(NULL, img.ptr, img.len, F.pub[keys[k]]), 0);
			t2 = now_s();
			sign = t1 - t0 < sign ? t1 - t0 : sign;
			verify = t2 - t1 < verify ? t2 - t1 : verify;
		}
		print_message("1 MiB image, %s: sign %.1f ms, verify %.1f ms\n",
			      key_kinds[keys[k]].name, sign * 1e3, verify * 1e3);
		assert_true(sign < 2.0);
	}
	buf_release(&img);
	free(fw);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(ecdsa_p256_image_signs_parses_and_verifies),
		cmocka_unit_test(ed25519_image_signs_parses_and_verifies),
		cmocka_unit_test(rsa2048_image_signs_parses_and_verifies),
		cmocka_unit_test(ed25519_signing_is_deterministic),
		cmocka_unit_test(openssl_cli_alone_verifies_our_ecdsa_signature),
		cmocka_unit_test(openssl_cli_alone_verifies_our_ed25519_signature_over_the_digest),
		cmocka_unit_test(openssl_cli_alone_verifies_our_rsa_pss_signature),
		cmocka_unit_test(imgtool_accepts_our_images),
		cmocka_unit_test(ours_match_imgtool_byte_for_byte_but_the_signature),
		cmocka_unit_test(imgtool_images_parse_and_verify_here),
		cmocka_unit_test(hsm_key_signs_images_through_the_pkcs11_engine),
		cmocka_unit_test(tampering_with_any_signed_part_of_an_ecdsa_image_names_the_failed_check),
		cmocka_unit_test(tampering_with_any_signed_part_of_an_ed25519_image_names_the_failed_check),
		cmocka_unit_test(another_key_is_refused_by_key_hash),
		cmocka_unit_test(zero_padded_ecdsa_signatures_still_verify),
		cmocka_unit_test(truncated_images_fail_cleanly_at_every_length),
		cmocka_unit_test(wrong_tlv_lengths_are_reported_with_their_offset),
		cmocka_unit_test(wrong_magics_are_named),
		cmocka_unit_test(protected_area_must_match_the_header),
		cmocka_unit_test(keyhash_after_the_signature_is_refused),
		cmocka_unit_test(unsupported_tlvs_and_duplicates_are_refused),
		cmocka_unit_test(security_counter_and_version_round_trip),
		cmocka_unit_test(slot_trailer_ends_with_boot_magic_and_image_ok),
		cmocka_unit_test(signing_refuses_bad_keys_and_options),
		cmocka_unit_test(versions_parse_like_imgtool_and_reject_out_of_range),
		cmocka_unit_test(signing_a_1mb_image_takes_milliseconds),
	};
	return cmocka_run_group_tests_name("mcuboot", tests, keys_setup, keys_teardown);
}
