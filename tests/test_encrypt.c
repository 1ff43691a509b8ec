/*
 * test_encrypt.c - MCUboot encrypted images (issue 13): otacd encrypts the
 * body for a device key (ECIES-P256 or ECIES-X25519, AES-128/256-CTR), the
 * device side (mcuboot_decrypt, as otacd-fleetsim uses it) decrypts and the
 * signature verifies; wrong keys, changed TLVs and changed ciphertext are
 * refused; the format is checked against the openssl CLI alone and, when
 * OTACD_IMGTOOL points at MCUboot's scripts/imgtool.py, against imgtool;
 * end to end a pipeline release with `encrypt:` reaches fleetsim devices
 * that hold the key, and devices with another key refuse it.
 *
 *   OTACD_IMGTOOL=/path/to/mcuboot/scripts/imgtool.py build/bin/test_encrypt
 */
#include <fcntl.h>
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

#include <openssl/evp.h>
#include <openssl/pem.h>

#include "../common/util.h"
#include "../orchestrator/mcuboot.h"
#include "../orchestrator/mcuboot_enc.h"
#include "devharness.h"
#include "harness.h"
#include "imgtest.h"

enum { K_SIGN_EC, K_SIGN_ED, K_DEV_EC, K_DEV_EC2, K_DEV_X, K_DEV_X2, K_COUNT };

static const struct it_key_spec key_kinds[K_COUNT] = {
	{ "sign-ec", "-algorithm EC -pkeyopt ec_paramgen_curve:P-256" },
	{ "sign-ed", "-algorithm ED25519" },
	{ "dev-ec", "-algorithm EC -pkeyopt ec_paramgen_curve:P-256" },
	{ "dev-ec2", "-algorithm EC -pkeyopt ec_paramgen_curve:P-256" },
	{ "dev-x", "-algorithm X25519" },
	{ "dev-x2", "-algorithm X25519" },
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

static void write_bytes(const char *path, const void *p, size_t n)
{
	assert_int_equal(ota_write_file_atomic(path, p, n, 0600), 0);
}

/* One encryption case: signing key, device key, AES bits. */
struct ecase {
	int sign, dev, wrong, bits;
	unsigned tlv_type;
	size_t tlv_len;
};

static const struct ecase cases[] = {
	{ K_SIGN_EC, K_DEV_EC, K_DEV_EC2, 128, MCUBOOT_TLV_ENC_EC256, 113 },
	{ K_SIGN_EC, K_DEV_EC, K_DEV_EC2, 256, MCUBOOT_TLV_ENC_EC256, 129 },
	{ K_SIGN_ED, K_DEV_X, K_DEV_X2, 128, MCUBOOT_TLV_ENC_X25519, 80 },
	{ K_SIGN_ED, K_DEV_X, K_DEV_X2, 256, MCUBOOT_TLV_ENC_X25519, 96 },
	{ K_SIGN_ED, K_DEV_EC, K_DEV_EC2, 128, MCUBOOT_TLV_ENC_EC256, 113 },
};

static const struct mcuboot_sign_opts base_opts = {
	.header_size = 0x200, .major = 1, .minor = 4, .build = 9, .has_security_counter = 1, .security_counter = 3,
};

static void encrypt_ok(struct buf *img, const struct ecase *c, const unsigned char *fw, size_t n)
{
	struct mcuboot_sign_opts o = base_opts;
	o.enc_key = F.pub[c->dev];
	o.enc_bits = (unsigned)c->bits;
	if (mcuboot_sign(img, fw, n, F.priv[c->sign], &o) != 0)
		fail_msg("mcuboot_sign with encryption: %s", ota_error_last());
}

/* ---- round trip ---------------------------------------------------------- */

static void encrypted_image_decrypts_with_the_device_key_and_verifies(void **state)
{
	static const size_t sizes[] = { 1, 15, 16, 5001, 70000 };
	struct buf img = BUF_INIT, plain = BUF_INIT;
	struct mcuboot_info info;
	(void)state;
	for (size_t ci = 0; ci < OTA_ARRAY_SIZE(cases); ci++) {
		const struct ecase *c = &cases[ci];
		for (size_t si = 0; si < OTA_ARRAY_SIZE(sizes); si++) {
			size_t n = sizes[si], padded = (n + 15) / 16 * 16;
			unsigned char *fw = it_firmware(n, (uint32_t)(ci * 10 + si));
			encrypt_ok(&img, c, fw, n);
			assert_int_equal(mcuboot_parse(&info, img.ptr, img.len), 0);
			/* header flag, body padded to AES blocks, the key TLV */
			assert_int_equal(info.flags, c->bits == 256 ? MCUBOOT_F_ENC_AES256 : MCUBOOT_F_ENC_AES128);
			assert_int_equal(info.image_size, padded);
			assert_int_equal(info.enc_type, c->tlv_type);
			assert_int_equal(info.enc_len, c->tlv_len);
			/* the body is not the firmware in clear */
			if (n >= 16)
				assert_int_not_equal(memcmp(img.ptr + 0x200, fw, n), 0);
			/* the ciphertext does not verify as an image; the sealed check does */
			assert_int_not_equal(mcuboot_verify(NULL, img.ptr, img.len, F.pub[c->sign]), 0);
			assert_non_null(strstr(ota_error_last(), "image hash mismatch"));
			if (mcuboot_verify_sealed(NULL, img.ptr, img.len, F.pub[c->sign]) != 0)
				fail_msg("sealed verify: %s", ota_error_last());
			/* the device decrypts: firmware, zero padding, then a valid signature */
			if (mcuboot_decrypt(&plain, img.ptr, img.len, F.priv[c->dev]) != 0)
				fail_msg("decrypt case %zu size %zu: %s", ci, n, ota_error_last());
			assert_int_equal(plain.len, img.len);
			assert_memory_equal(plain.ptr + 0x200, fw, n);
			for (size_t i = n; i < padded; i++)
				assert_int_equal(plain.ptr[0x200 + i], 0);
			if (mcuboot_verify(&info, plain.ptr, plain.len, F.pub[c->sign]) != 0)
				fail_msg("verify after decrypt: %s", ota_error_last());
			assert_int_equal(info.security_counter, 3);
			/* header and TLVs stayed clear: only the body differs */
			assert_memory_equal(plain.ptr, img.ptr, 0x200);
			assert_memory_equal(plain.ptr + 0x200 + padded, img.ptr + 0x200 + padded, img.len - 0x200 - padded);
			free(fw);
		}
	}
	buf_release(&img);
	buf_release(&plain);
}

static void each_image_gets_a_fresh_key(void **state)
{
	struct buf a = BUF_INIT, b = BUF_INIT;
	struct mcuboot_info ia, ib;
	unsigned char *fw = it_firmware(4096, 1);
	(void)state;
	encrypt_ok(&a, &cases[0], fw, 4096);
	encrypt_ok(&b, &cases[0], fw, 4096);
	assert_int_equal(mcuboot_parse(&ia, a.ptr, a.len), 0);
	assert_int_equal(mcuboot_parse(&ib, b.ptr, b.len), 0);
	assert_int_not_equal(memcmp(a.ptr + 0x200, b.ptr + 0x200, 4096), 0);
	assert_int_not_equal(memcmp(a.ptr + ia.enc_off, b.ptr + ib.enc_off, ia.enc_len), 0);
	assert_memory_equal(ia.sha256, ib.sha256, 32); /* same plaintext, same hash */
	buf_release(&a);
	buf_release(&b);
	free(fw);
}

static void encrypted_image_in_a_slot_leaves_room_for_the_key_trailer(void **state)
{
	struct mcuboot_sign_opts o = base_opts;
	struct buf img = BUF_INIT, plain = BUF_INIT;
	unsigned char *fw = it_firmware(0x8000, 2);
	size_t used;
	(void)state;
	o.enc_key = F.pub[K_DEV_EC];
	o.slot_size = 0x10000;
	o.confirm = 1;
	assert_int_equal(mcuboot_sign(&img, fw, 0x8000, F.priv[K_SIGN_EC], &o), 0);
	assert_int_equal(img.len, 0x10000);
	assert_int_equal((unsigned char)img.ptr[0x10000 - 24], 0x01);
	assert_int_equal(mcuboot_decrypt(&plain, img.ptr, img.len, F.priv[K_DEV_EC]), 0);
	assert_int_equal(mcuboot_verify(NULL, plain.ptr, plain.len, F.pub[K_SIGN_EC]), 0);
	/* an image that fits the plain trailer (432) but not the encrypted one
	 * (464); Ed25519 so that every signature has the same length */
	o.slot_size = 0;
	assert_int_equal(mcuboot_sign(&img, fw, 0x1000, F.priv[K_SIGN_ED], &o), 0);
	used = img.len;
	o.slot_size = (uint32_t)(used + 440);
	assert_int_not_equal(mcuboot_sign(&img, fw, 0x1000, F.priv[K_SIGN_ED], &o), 0);
	assert_non_null(strstr(ota_error_last(), "trailer (464 bytes)"));
	o.slot_size = (uint32_t)(used + 464);
	assert_int_equal(mcuboot_sign(&img, fw, 0x1000, F.priv[K_SIGN_ED], &o), 0);
	buf_release(&img);
	buf_release(&plain);
	free(fw);
}

static void mismatched_or_unusable_keys_are_refused_at_signing(void **state)
{
	struct mcuboot_sign_opts o = base_opts;
	struct buf img = BUF_INIT;
	unsigned char fw[100] = { 1 };
	(void)state;
	/* ECDSA P-256 signing with X25519 encryption: imgtool refuses it too */
	o.enc_key = F.pub[K_DEV_X];
	assert_int_equal(mcuboot_sign(&img, fw, sizeof(fw), F.priv[K_SIGN_EC], &o), OTA_EINVAL);
	assert_non_null(strstr(ota_error_last(), "cannot go with ecies-x25519"));
	assert_int_equal(img.len, 0);
	/* an Ed25519 key is no encryption key */
	o.enc_key = F.pub[K_SIGN_ED];
	assert_int_equal(mcuboot_sign(&img, fw, sizeof(fw), F.priv[K_SIGN_ED], &o), OTA_EINVAL);
	assert_non_null(strstr(ota_error_last(), "needs an EC P-256"));
	/* AES-192 does not exist in MCUboot */
	o.enc_key = F.pub[K_DEV_X];
	o.enc_bits = 192;
	assert_int_equal(mcuboot_sign(&img, fw, sizeof(fw), F.priv[K_SIGN_ED], &o), OTA_EINVAL);
	assert_non_null(strstr(ota_error_last(), "AES-192"));
	buf_release(&img);
}

/* ---- the device refuses -------------------------------------------------- */

static void expect_decrypt_error(const struct buf *img, EVP_PKEY *key, const char *want)
{
	struct buf plain = BUF_INIT;
	if (mcuboot_decrypt(&plain, img->ptr, img->len, key) == 0)
		fail_msg("decrypt accepted it; expected \"%s\"", want);
	if (!strstr(ota_error_last(), want))
		fail_msg("expected \"%s\", got \"%s\"", want, ota_error_last());
	assert_int_equal(plain.len, 0);
	buf_release(&plain);
}

static void wrong_device_key_fails_the_mac(void **state)
{
	struct buf img = BUF_INIT;
	unsigned char *fw = it_firmware(3000, 3);
	(void)state;
	for (size_t ci = 0; ci < OTA_ARRAY_SIZE(cases); ci++) {
		const struct ecase *c = &cases[ci];
		encrypt_ok(&img, c, fw, 3000);
		expect_decrypt_error(&img, F.priv[c->wrong], "MAC of the wrapped image key does not verify");
		/* a key of the other scheme */
		expect_decrypt_error(&img, F.priv[c->dev == K_DEV_X ? K_DEV_EC : K_DEV_X], "wrapped for");
		/* a signing key is not a device key */
		expect_decrypt_error(&img, F.priv[K_SIGN_ED], "needs an EC P-256");
	}
	buf_release(&img);
	free(fw);
}

static void changed_tlv_or_ciphertext_is_refused(void **state)
{
	struct buf img = BUF_INIT, bad = BUF_INIT, plain = BUF_INIT;
	struct mcuboot_info info;
	unsigned char *fw = it_firmware(3000, 4);
	(void)state;
	for (size_t ci = 0; ci < OTA_ARRAY_SIZE(cases); ci++) {
		const struct ecase *c = &cases[ci];
		size_t plen = c->tlv_type == MCUBOOT_TLV_ENC_EC256 ? 65 : 32;
		encrypt_ok(&img, c, fw, 3000);
		assert_int_equal(mcuboot_parse(&info, img.ptr, img.len), 0);
		/* every byte of the TLV value: ephemeral key, MAC, wrapped key */
		for (size_t i = 0; i < info.enc_len; i++) {
			buf_clear(&bad);
			buf_put(&bad, img.ptr, img.len);
			bad.ptr[info.enc_off + i] ^= 0x01;
			if (mcuboot_decrypt(&plain, bad.ptr, bad.len, F.priv[c->dev]) == 0)
				fail_msg("case %zu: TLV byte %zu changed and still decrypted", ci, i);
			if (i >= plen && !strstr(ota_error_last(), "MAC of the wrapped image key"))
				fail_msg("case %zu byte %zu: %s", ci, i, ota_error_last());
		}
		/* the ciphertext: decrypts (CTR has no integrity), the hash refuses it */
		for (size_t off = 0x200; off < 0x200 + 3000; off += 997) {
			buf_clear(&bad);
			buf_put(&bad, img.ptr, img.len);
			bad.ptr[off] ^= 0x40;
			assert_int_equal(mcuboot_decrypt(&plain, bad.ptr, bad.len, F.priv[c->dev]), 0);
			assert_int_not_equal(mcuboot_verify(NULL, plain.ptr, plain.len, F.pub[c->sign]), 0);
			assert_non_null(strstr(ota_error_last(), "image hash mismatch"));
		}
		/* AES-128 <-> AES-256 flag: the TLV length no longer fits */
		buf_clear(&bad);
		buf_put(&bad, img.ptr, img.len);
		bad.ptr[16] ^= (char)(MCUBOOT_F_ENC_AES128 | MCUBOOT_F_ENC_AES256);
		expect_decrypt_error(&bad, F.priv[c->dev], "has length");
		/* the flag cleared: not encrypted; and the signature covers the flag */
		buf_clear(&bad);
		buf_put(&bad, img.ptr, img.len);
		bad.ptr[16] = 0;
		expect_decrypt_error(&bad, F.priv[c->dev], "not encrypted");
		assert_int_not_equal(mcuboot_verify_sealed(NULL, bad.ptr, bad.len, F.pub[c->sign]), 0);
		/* the key TLV renamed to a vendor type: no key TLV */
		buf_clear(&bad);
		buf_put(&bad, img.ptr, img.len);
		bad.ptr[info.enc_off - 4] = (char)0xa0;
		expect_decrypt_error(&bad, F.priv[c->dev], "has no key TLV");
		assert_int_not_equal(mcuboot_verify_sealed(NULL, bad.ptr, bad.len, F.pub[c->sign]), 0);
		/* an RSA-OAEP key TLV instead */
		bad.ptr[info.enc_off - 4] = (char)MCUBOOT_TLV_ENC_RSA;
		expect_decrypt_error(&bad, F.priv[c->dev], "does not handle");
		/* truncated anywhere in the TLV area */
		for (size_t cut = info.tlv_end - 1; cut > info.signed_len; cut -= 7)
			expect_decrypt_error(&(struct buf){ img.ptr, cut, cut, BUF_NOLIMIT }, F.priv[c->dev], "");
	}
	buf_release(&img);
	buf_release(&bad);
	buf_release(&plain);
	free(fw);
}

static void second_key_tlv_is_refused(void **state)
{
	struct buf img = BUF_INIT, two = BUF_INIT;
	struct mcuboot_info info;
	unsigned char *fw = it_firmware(1000, 5), h[4];
	size_t tl;
	(void)state;
	encrypt_ok(&img, &cases[2], fw, 1000);
	assert_int_equal(mcuboot_parse(&info, img.ptr, img.len), 0);
	/* append a copy of the key TLV and fix the area length */
	buf_put(&two, img.ptr, info.tlv_end);
	memcpy(h, img.ptr + info.enc_off - 4, 4);
	buf_put(&two, h, 4);
	buf_put(&two, img.ptr + info.enc_off, info.enc_len);
	tl = info.tlv_end - info.signed_len + 4 + info.enc_len;
	two.ptr[info.signed_len + 2] = (char)(tl & 0xff);
	two.ptr[info.signed_len + 3] = (char)(tl >> 8);
	assert_int_not_equal(mcuboot_parse(&info, two.ptr, two.len), 0);
	assert_non_null(strstr(ota_error_last(), "second encryption key TLV"));
	buf_release(&img);
	buf_release(&two);
	free(fw);
}

/* ---- the format, checked with the openssl CLI alone ------------------------ */

/*
 * Unwrap otacd's TLV with openssl pkeyutl -derive (ECDH), openssl kdf HKDF,
 * openssl mac HMAC and openssl enc -aes-*-ctr, then decrypt the body the
 * same way: none of otacd's code takes part.
 */
static void openssl_cli_decrypts_our_images(void **state)
{
	struct buf img = BUF_INIT, out = BUF_INIT, plain = BUF_INIT;
	struct mcuboot_info info;
	unsigned char *fw = it_firmware(5000, 6);
	char *d = xasprintf("%s/cli", F.dir);
	(void)state;
	assert_int_equal(h_sh(&out, "mkdir -p %s", d), 0);
	for (size_t ci = 0; ci < OTA_ARRAY_SIZE(cases); ci++) {
		const struct ecase *c = &cases[ci];
		int ec = c->tlv_type == MCUBOOT_TLV_ENC_EC256;
		size_t plen = ec ? 65 : 32, kl = (size_t)c->bits / 8;
		char *imgp = xasprintf("%s/img.bin", d);
		encrypt_ok(&img, c, fw, 5000);
		assert_int_equal(mcuboot_parse(&info, img.ptr, img.len), 0);
		write_bytes(imgp, img.ptr, img.len);
		/* the ephemeral public key as a PEM: DER SPKI prefix + raw key */
		if (h_sh(&out,
			 "cd %s && tail -c +%zu img.bin | head -c %zu > eph.raw && "
			 "tail -c +%zu img.bin | head -c 32 > mac.bin && "
			 "tail -c +%zu img.bin | head -c %zu > wrapped.bin && "
			 "printf '%s' | xxd -r -p > spki.der && cat eph.raw >> spki.der && "
			 "openssl pkey -pubin -inform DER -in spki.der -out eph.pem && "
			 "openssl pkeyutl -derive -inkey %s -peerkey eph.pem -out shared.bin && "
			 "okm=$(openssl kdf -keylen %zu -kdfopt digest:SHA256 -kdfopt hexkey:$(xxd -p -c 256 shared.bin)"
			 " -kdfopt info:MCUBoot_ECIES_v1 HKDF | tr -d ':\\n' | tr A-F a-f) && "
			 "enckey=$(echo $okm | cut -c1-%zu) && mackey=$(echo $okm | cut -c%zu-) && "
			 "test \"$(openssl mac -digest SHA256 -macopt hexkey:$mackey -in wrapped.bin HMAC | tr A-F a-f)\" = "
			 "\"$(xxd -p -c 64 mac.bin)\" && "
			 "aes=$(openssl enc -d -aes-%d-ctr -K $enckey -iv 00000000000000000000000000000000 -in wrapped.bin"
			 " | xxd -p -c 64) && "
			 "head -c %zu img.bin > plain.bin && tail -c +%zu img.bin | head -c %zu |"
			 " openssl enc -d -aes-%d-ctr -K $aes -iv 00000000000000000000000000000000 >> plain.bin && "
			 "tail -c +%zu img.bin >> plain.bin",
			 d, info.enc_off + 1, plen, info.enc_off + plen + 1, info.enc_off + plen + 32 + 1, kl,
			 ec ? "3059301306072a8648ce3d020106082a8648ce3d030107034200" : "302a300506032b656e032100",
			 F.priv_pem[c->dev], kl + 32, kl * 2, kl * 2 + 1, c->bits, (size_t)info.header_size,
			 (size_t)info.header_size + 1, (size_t)info.image_size, c->bits,
			 (size_t)info.header_size + info.image_size + 1) != 0)
			fail_msg("case %zu: openssl CLI unwrap failed: %s", ci, buf_cstr(&out));
		buf_release(&plain);
		free(imgp);
		imgp = xasprintf("%s/plain.bin", d);
		assert_int_equal(ota_read_file(&plain, imgp, 1 << 20), 0);
		assert_int_equal(plain.len, img.len);
		assert_memory_equal(plain.ptr + 0x200, fw, 5000);
		if (mcuboot_verify(NULL, plain.ptr, plain.len, F.pub[c->sign]) != 0)
			fail_msg("case %zu: %s", ci, ota_error_last());
		free(imgp);
	}
	buf_release(&img);
	buf_release(&out);
	buf_release(&plain);
	free(fw);
	free(d);
}

/* ---- imgtool, the reference ---------------------------------------------- */

static const char *sign_args = "--pad-header -H 0x200 -v 1.4.0+9 -s 3 -S 0x100000";

/*
 * imgtool `sign -E` with the same keys and inputs: otacd's device side
 * decrypts it and the signature verifies; and after decrypting both, the
 * two images agree on everything but the signature and the key TLV (the
 * SHA256 TLV too: same header, flags, padding and plaintext).
 */
static void imgtool_encrypted_images_decrypt_here_and_match_ours(void **state)
{
	struct buf img = BUF_INIT, out = BUF_INIT, theirs = BUF_INIT, tp = BUF_INIT, op = BUF_INIT;
	struct mcuboot_info ti, oi;
	unsigned char *fw;
	char *in, *ip;
	(void)state;
	IT_NEED_IMGTOOL(); /* before anything is allocated: skip() does not return */
	fw = it_firmware(5001, 7);
	in = xasprintf("%s/fw.bin", F.dir);
	ip = xasprintf("%s/theirs.bin", F.dir);
	write_bytes(in, fw, 5001);
	for (size_t ci = 0; ci < OTA_ARRAY_SIZE(cases); ci++) {
		const struct ecase *c = &cases[ci];
		if (h_sh(&out, "/usr/bin/python3 %s sign -k %s -E %s --encrypt-keylen %d %s %s %s", it_imgtool(),
			 F.priv_pem[c->sign], F.pub_pem[c->dev], c->bits, sign_args, in, ip) != 0)
			fail_msg("imgtool sign -E: %s", buf_cstr(&out));
		buf_release(&theirs);
		assert_int_equal(ota_read_file(&theirs, ip, 1 << 22), 0);
		assert_int_equal(mcuboot_parse(&ti, theirs.ptr, theirs.len), 0);
		assert_int_equal(ti.enc_type, c->tlv_type);
		assert_int_equal(ti.enc_len, c->tlv_len);
		if (mcuboot_decrypt(&tp, theirs.ptr, theirs.len, F.priv[c->dev]) != 0)
			fail_msg("case %zu: imgtool's image does not decrypt here: %s", ci, ota_error_last());
		if (mcuboot_verify(NULL, tp.ptr, tp.len, F.pub[c->sign]) != 0)
			fail_msg("case %zu: imgtool's image decrypted here does not verify: %s", ci, ota_error_last());
		assert_int_equal(mcuboot_verify_sealed(NULL, theirs.ptr, theirs.len, F.pub[c->sign]), 0);
		expect_decrypt_error(&theirs, F.priv[c->wrong], "MAC of the wrapped image key");
		/* ours, decrypted, against theirs, decrypted */
		encrypt_ok(&img, c, fw, 5001);
		assert_int_equal(mcuboot_decrypt(&op, img.ptr, img.len, F.priv[c->dev]), 0);
		assert_int_equal(mcuboot_parse(&oi, op.ptr, op.len), 0);
		assert_int_equal(oi.signed_len, ti.signed_len);
		assert_memory_equal(op.ptr, tp.ptr, oi.signed_len);
		assert_memory_equal(oi.sha256, ti.sha256, 32);
		assert_memory_equal(oi.keyhash, ti.keyhash, 32);
		if (c->sign == K_SIGN_ED) /* deterministic signature: the TLV areas differ only by the key TLV */
			assert_memory_equal(op.ptr + oi.sig_off, tp.ptr + ti.sig_off, 64);
		assert_true(oi.sig_off < oi.enc_off && ti.sig_off < ti.enc_off);
	}
	buf_release(&img);
	buf_release(&out);
	buf_release(&theirs);
	buf_release(&tp);
	buf_release(&op);
	free(fw);
	free(in);
	free(ip);
}

/*
 * imgtool cannot decrypt, and its `verify` hashes the body as stored, so
 * it refuses every encrypted image, its own included ("Image has an invalid hash"):
 * shown here for both.  What it accepts: otacd's image once the device
 * side decrypted it (flags and key TLV still in place), and otacd's
 * padded slot images pass its trailer-size rules (-S with --pad).
 */
static void imgtool_verifies_our_images_after_decryption(void **state)
{
	struct buf img = BUF_INIT, out = BUF_INIT, plain = BUF_INIT;
	unsigned char *fw;
	char *p, *in, *ip;
	(void)state;
	IT_NEED_IMGTOOL(); /* before anything is allocated: skip() does not return */
	fw = it_firmware(5001, 8);
	p = xasprintf("%s/ours.bin", F.dir);
	in = xasprintf("%s/fw8.bin", F.dir);
	ip = xasprintf("%s/theirs8.bin", F.dir);
	write_bytes(in, fw, 5001);
	for (size_t ci = 0; ci < OTA_ARRAY_SIZE(cases); ci++) {
		const struct ecase *c = &cases[ci];
		encrypt_ok(&img, c, fw, 5001);
		write_bytes(p, img.ptr, img.len);
		assert_int_not_equal(h_sh(&out, "/usr/bin/python3 %s verify -k %s %s", it_imgtool(), F.pub_pem[c->sign], p), 0);
		assert_non_null(strstr(buf_cstr(&out), "invalid hash"));
		assert_int_equal(h_sh(&out, "/usr/bin/python3 %s sign -k %s -E %s %s %s %s", it_imgtool(),
				      F.priv_pem[c->sign], F.pub_pem[c->dev], sign_args, in, ip), 0);
		assert_int_not_equal(h_sh(&out, "/usr/bin/python3 %s verify -k %s %s", it_imgtool(), F.pub_pem[c->sign], ip), 0);
		assert_non_null(strstr(buf_cstr(&out), "invalid hash"));
		assert_int_equal(mcuboot_decrypt(&plain, img.ptr, img.len, F.priv[c->dev]), 0);
		write_bytes(p, plain.ptr, plain.len);
		if (h_sh(&out, "/usr/bin/python3 %s verify -k %s %s", it_imgtool(), F.pub_pem[c->sign], p) != 0 ||
		    !strstr(buf_cstr(&out), "Image was correctly validated"))
			fail_msg("case %zu: imgtool rejects our decrypted image: %s", ci, buf_cstr(&out));
	}
	buf_release(&img);
	buf_release(&out);
	buf_release(&plain);
	free(fw);
	free(p);
	free(in);
	free(ip);
}

/* ---- end to end: a pipeline release to a fleet ------------------------------ */

static void daemon_start(struct daemon *d, const char *enc_pub)
{
	const char *const args[] = { "--local-agents", "2", "--time-scale", "3600", NULL };
	char *cfg;

	h_init(d, NULL);
	cfg = xasprintf("keys:\n  test: { spec: %s }\n"
			"encryption_keys:\n  an385: %s\n  fleet: %s\n"
			"device_register_burst: 100000\n",
			F.priv_pem[K_SIGN_ED], enc_pub, F.pub_pem[K_DEV_EC]);
	d->config = xasprintf("%s/config.yml", d->dir);
	assert_int_equal(ota_write_file_atomic(d->config, cfg, strlen(cfg), 0600), 0);
	assert_int_equal(h_start(d, args), 0);
	free(cfg);
}

static int64_t wait_sql(struct daemon *d, const char *sql, int timeout_ms)
{
	int64_t v = 0;
	for (int waited = 0; waited < timeout_ms && !(v = h_sql_int(d, sql)); waited += 100)
		h_msleep(100);
	return v;
}

/* Run otacd-fleetsim to its end: n devices on 1.0.0, the device key (NULL:
 * none); its stats JSON. */
static json_t *sim_run(struct daemon *d, int n, const char *enc1, const char *enc2, const char *duration,
		       const char *until)
{
	char *bin = h_bin("otacd-fleetsim"), *prof = xasprintf("%s/profile.json", d->dir);
	char *log = xasprintf("%s/sim.log", d->dir), *stats = xasprintf("%s/stats.json", d->dir), devices[16];
	json_t *st;
	pid_t pid;

	snprintf(devices, sizeof(devices), "%d", n);
	/* the two hardware variants the release encrypts for, no random boot
	 * failures or crashes: what is measured is the key */
	static const char profile[] = "{\"hardware\": {\"mps2-an385\": 1, \"mps2-an386\": 1}, \"default\": {\"crash_rate\": 0, "
				      "\"boot_fail_rate\": 0, \"revert_rate\": 0}}";
	assert_int_equal(ota_write_file_atomic(prof, profile, strlen(profile), 0600), 0);
	unlink(stats);
	pid = fork();
	if (pid == 0) {
		const char *argv[40];
		int k = 0;
		int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
		dup2(fd, 1);
		dup2(fd, 2);
		argv[k++] = bin;
		/* the core engine: libotadev decrypts while it verifies, with
		 * the Linux port's ECIES and AES-CTR (device/port_linux_enc.c) */
		argv[k++] = "--engine"; argv[k++] = "core";
		argv[k++] = "--url"; argv[k++] = d->device_url;
		argv[k++] = "--devices"; argv[k++] = devices;
		argv[k++] = "--seed"; argv[k++] = "7";
		argv[k++] = "--key"; argv[k++] = F.pub_pem[K_SIGN_ED];
		argv[k++] = "--fleet-key"; argv[k++] = d->fleet_key;
		argv[k++] = "--product"; argv[k++] = "fw";
		argv[k++] = "--profile"; argv[k++] = prof;
		argv[k++] = "--start-version"; argv[k++] = "1.0.0";
		argv[k++] = "--start-counter"; argv[k++] = "0";
		argv[k++] = "--stats"; argv[k++] = stats;
		argv[k++] = "--quiet";
		if (enc1) {
			argv[k++] = "--enc-key";
			argv[k++] = enc1;
		}
		if (enc2) {
			argv[k++] = "--enc-key";
			argv[k++] = enc2;
		}
		argv[k++] = "--duration";
		argv[k++] = duration;
		if (until) {
			argv[k++] = "--until";
			argv[k++] = until;
		}
		argv[k] = NULL;
		execv(bin, (char *const *)argv);
		_exit(127);
	}
	assert_true(pid > 0);
	st = h_fleetsim_stats(pid, stats, log);
	free(bin);
	free(prof);
	free(log);
	free(stats);
	return st;
}

static int64_t jint(const json_t *o, const char *k)
{
	return json_integer_value(json_object_get(o, k));
}

/* Both images of the release (one per variant) have this state, and
 * each one's error contains one of the two strings (NULL: no error). */
static void sim_images_are(const json_t *st, const char *state, const char *err1, const char *err2)
{
	const char *k, *e;
	json_t *v;
	char *t = json_dumps(json_object_get(st, "images"), 0);
	if (json_object_size(json_object_get(st, "images")) != 2)
		fail_msg("expected the release's two images in the stats: %s", t);
	json_object_foreach(json_object_get(st, "images"), k, v) {
		e = json_string_value(json_object_get(v, "error"));
		if (strcmp(json_string_value(json_object_get(v, "state")), state) ||
		    (err1 && (!e || (!strstr(e, err1) && !(err2 && strstr(e, err2))))))
			fail_msg("image %.12s: expected %s (%s / %s): %s", k, state, err1 ? err1 : "",
				 err2 ? err2 : "", t);
	}
	free(t);
}

/* otacd-device (the Linux port: device/port_linux_enc.c) with the an385
 * X25519 key takes the encrypted release from otacd: it downloads the
 * ciphertext, decrypts it to verify, the simulated MCUboot swaps it in
 * clear into the primary slot, the test boot confirms.  Without the key
 * the same device refuses it and keeps 1.0.0. */
static void otacd_device_takes_the_encrypted_image(struct daemon *d, const char *prefix, int with_key)
{
	char **cred = h_register_devices(d, prefix, 1);
	char *dir = xasprintf("%s/%s", d->dir, prefix), *conf = xasprintf("%s/device.conf", dir);
	char *bin = h_bin("otacd-device"), *factory, *text, *slot0;
	struct buf out = BUF_INIT, slot = BUF_INIT;
	json_t *s = NULL;
	pid_t pid;
	int settled = 0;

	assert_int_equal(h_sh(&out, "mkdir -p %s && cp %s %s/sign.pem", dir, F.priv_pem[K_SIGN_ED], dir), 0);
	factory = dh_factory_image(dir, "sign", 0);
	text = xasprintf("url = %s\ndevice = %s-0000\ncredential = %s\nproduct = fw\nhardware = mps2-an385\n"
			 "bootloader = 1.2.0\nprimary = %s/slot0\nsecondary = %s/slot1\nstate = %s/state\nkey = %s\n"
			 "%s%s\nslot_size = 65536\nsector_size = 4096\nsync = 0\nbackoff_base_ms = 200\n"
			 "backoff_max_ms = 2000\npoll_ms = 1000\n",
			 d->device_url, prefix, cred[0], dir, dir, dir, F.pub_pem[K_SIGN_ED], with_key ? "enc_key = " : "",
			 with_key ? F.priv_pem[K_DEV_X] : "");
	assert_int_equal(ota_write_file_atomic(conf, text, strlen(text), 0600), 0);
	assert_int_equal(h_sh(&out, "%s -c %s flash %s", bin, conf, factory), 0);
	pid = dh_device_loop(conf);
	for (int waited = 0; waited < 90000 && !settled; waited += 500) {
		h_msleep(500);
		json_decref(s);
		s = dh_device_status(NULL, conf);
		settled = s && !strcmp(dh_js(s, "phase", NULL), "idle") &&
			  (with_key ? !strcmp(dh_js(s, "version", NULL), "1.1.0") : dh_ji(s, "refused_image", NULL) == 1);
	}
	dh_stop(pid);
	if (!settled) {
		h_sh(&out, "tail -20 %s.log", conf);
		fail_msg("otacd-device did not settle (%s): %s", with_key ? "with the key" : "without", buf_cstr(&out));
	}
	slot0 = xasprintf("%s/slot0", dir);
	assert_int_equal(ota_read_file(&slot, slot0, 1 << 20), 0);
	if (with_key) /* the bootloader keeps the image in clear in the primary slot */
		assert_non_null(memmem(slot.ptr, slot.len, "FIRMWARE-IN-CLEAR", 17));
	else
		assert_string_equal(dh_js(s, "version", NULL), "1.0.0");
	json_decref(s);
	free(cred[0]);
	free(cred);
	free(dir);
	free(conf);
	free(bin);
	free(factory);
	free(text);
	free(slot0);
	buf_release(&out);
	buf_release(&slot);
}

/*
 * A pipeline release with `encrypt:` per hardware variant (mps2-an385: its
 * own X25519 key; others: the P-256 default), AES-256: the manifest names
 * each image's key class, the stored images are ciphertext; fleetsim
 * devices with another device key, a key of the other scheme, or none,
 * refuse them and install nothing; 300 devices of both variants holding
 * their variant's key install them.
 */
static void encrypted_release_installs_only_on_devices_with_the_key(void **state)
{
	struct daemon d;
	const char *y = "name: fw\nstages:\n"
			"  - name: build\n"
			"    steps: [ { run: \"head -c 20000 /dev/urandom > app.bin && printf 'FIRMWARE-IN-CLEAR' >> app.bin"
			" && cp app.bin app386.bin\" } ]\n"
			"    artifacts: [ { path: app.bin, name: app.bin, type: application, hardware: mps2-an385 },\n"
			"                 { path: app386.bin, name: app386.bin, type: application, hardware: mps2-an386 } ]\n"
			"  - { name: release, kind: release, needs: [build], version: \"1.1.0\", security_counter: 1, key: test,\n"
			"      encrypt: { key: fleet, cipher: aes256, hardware: { mps2-an385: an385 } } }\n"
			"  - { name: canary, kind: rollout, needs: [release], steps: [ {percent: 100, hold: 48h} ] }\n";
	json_t *st, *rel = NULL, *man, *img;
	struct buf out = BUF_INIT, bytes = BUF_INIT, plain = BUF_INIT;
	char id[65], *path, *e1, *e2;
	int64_t run, art;
	struct mcuboot_info info;
	(void)state;
	daemon_start(&d, F.pub_pem[K_DEV_X]);
	run = h_trigger(&d, y);
	assert_true(run > 0);
	if (!wait_sql(&d, "SELECT COUNT(*) FROM rollouts WHERE state IN ('holding', 'rolling')", 120000)) {
		json_t *r = h_run(&d, run);
		char *t = json_dumps(r, 0);
		fail_msg("no rollout started: %s", t);
	}

	/* the manifest names the key class; the stored image is ciphertext */
	assert_int_equal(h_get(&d, "/api/v1/releases/1", &rel), 200);
	path = xasprintf("%s/api/v1/artifacts/%lld", d.url, (long long)jint(rel, "manifest_artifact"));
	assert_int_equal(h_sh(&out, "curl -sf -H 'Authorization: Bearer %s' '%s'", d.token, path), 0);
	free(path);
	man = json_loads(buf_cstr(&out), 0, NULL);
	assert_non_null(man);
	/* per hardware variant: an385 has its own X25519 key, the rest the P-256 default */
	assert_int_equal(json_array_size(json_object_get(man, "images")), 2);
	img = json_array_get(json_object_get(man, "images"), 1);
	assert_string_equal(json_string_value(json_object_get(img, "hardware")), "mps2-an386");
	assert_string_equal(json_string_value(json_object_get(json_object_get(img, "encryption"), "scheme")), "ecies-p256");
	assert_string_equal(json_string_value(json_object_get(json_object_get(img, "encryption"), "key")), "fleet");
	art = h_sql_int(&d, "SELECT id FROM artifacts WHERE name = 'release/mps2-an386/app386.bin.signed.bin'");
	assert_true(art > 0);
	path = xasprintf("%s/api/v1/artifacts/%lld", d.url, (long long)art);
	assert_int_equal(h_sh(&out, "curl -sf -H 'Authorization: Bearer %s' '%s' > %s/dl386.bin", d.token, path, d.dir), 0);
	free(path);
	path = xasprintf("%s/dl386.bin", d.dir);
	assert_int_equal(ota_read_file(&bytes, path, 1 << 20), 0);
	free(path);
	assert_int_not_equal(mcuboot_decrypt(&plain, bytes.ptr, bytes.len, F.priv[K_DEV_X]), 0);
	assert_int_equal(mcuboot_decrypt(&plain, bytes.ptr, bytes.len, F.priv[K_DEV_EC]), 0);
	assert_int_equal(mcuboot_verify(NULL, plain.ptr, plain.len, F.pub[K_SIGN_ED]), 0);
	buf_release(&bytes);
	buf_clear(&out);
	img = json_array_get(json_object_get(man, "images"), 0);
	assert_string_equal(json_string_value(json_object_get(img, "hardware")), "mps2-an385");
	assert_string_equal(json_string_value(json_object_get(json_object_get(img, "encryption"), "scheme")), "ecies-x25519");
	assert_string_equal(json_string_value(json_object_get(json_object_get(img, "encryption"), "cipher")), "aes256");
	assert_string_equal(json_string_value(json_object_get(json_object_get(img, "encryption"), "key")), "an385");
	assert_int_equal(mcuboot_enc_key_id(F.pub[K_DEV_X], id), 0);
	assert_string_equal(json_string_value(json_object_get(json_object_get(img, "encryption"), "key_id")), id);
	art = h_sql_int(&d, "SELECT id FROM artifacts WHERE name = 'release/mps2-an385/app.bin.signed.bin'");
	assert_true(art > 0);
	path = xasprintf("%s/api/v1/artifacts/%lld", d.url, (long long)art);
	assert_int_equal(h_sh(&out, "curl -sf -H 'Authorization: Bearer %s' -o %s/dl.bin '%s'", d.token, d.dir, path), 0);
	free(path);
	path = xasprintf("%s/dl.bin", d.dir);
	assert_int_equal(ota_read_file(&bytes, path, 1 << 20), 0);
	free(path);
	assert_null(memmem(bytes.ptr, bytes.len, "FIRMWARE-IN-CLEAR", 17));
	assert_int_equal(mcuboot_parse(&info, bytes.ptr, bytes.len), 0);
	assert_int_equal(info.flags & MCUBOOT_F_ENC_AES256, MCUBOOT_F_ENC_AES256);
	assert_int_equal(mcuboot_decrypt(&plain, bytes.ptr, bytes.len, F.priv[K_DEV_X]), 0);
	assert_non_null(memmem(plain.ptr, plain.len, "FIRMWARE-IN-CLEAR", 17));
	assert_int_equal(mcuboot_verify(NULL, plain.ptr, plain.len, F.pub[K_SIGN_ED]), 0);

	/* devices holding other keys: an385 another X25519 key (the MAC
	 * fails), an386 the an385 X25519 key (the wrong scheme, P-256 was
	 * asked for); nothing installs */
	e1 = xasprintf("mps2-an385=%s", F.priv_pem[K_DEV_X2]);
	e2 = xasprintf("mps2-an386=%s", F.priv_pem[K_DEV_X]);
	st = sim_run(&d, 100, e1, e2, "10", NULL);
	assert_true(jint(st, "refused") > 0);
	assert_int_equal(jint(st, "installed"), 0);
	sim_images_are(st, "refused", "MAC of the wrapped image key does not verify", "wrapped for ecies-p256");
	json_decref(st);
	free(e1);
	free(e2);
	/* devices without a decryption key */
	st = sim_run(&d, 50, NULL, NULL, "8", NULL);
	assert_int_equal(jint(st, "installed"), 0);
	sim_images_are(st, "refused", "no decryption key", NULL);
	json_decref(st);

	/* 300 devices, each variant with its key, install it */
	e1 = xasprintf("mps2-an385=%s", F.priv_pem[K_DEV_X]);
	e2 = xasprintf("mps2-an386=%s", F.priv_pem[K_DEV_EC]);
	st = sim_run(&d, 300, e1, e2, "120", "1.1.0:1.0");
	free(e1);
	free(e2);
	sim_images_are(st, "ok", NULL, NULL);
	assert_true(jint(st, "installed") >= 300);
	assert_int_equal(jint(st, "refused_bad_signature"), 0);
	if (jint(json_object_get(st, "versions"), "1.1.0") != 300) {
		char *t = json_dumps(json_object_get(st, "versions"), 0);
		fail_msg("versions at the end: %s", t);
	}
	json_decref(st);

	otacd_device_takes_the_encrypted_image(&d, "encdev", 1);
	otacd_device_takes_the_encrypted_image(&d, "nokey", 0);

	/* the daemon's own release check and otactl verify: the signature
	 * checks out over the sealed image */
	json_decref(rel);
	assert_int_equal(h_get(&d, "/api/v1/releases/1/verification", &rel), 200);
	if (!json_is_true(json_object_get(rel, "ok"))) {
		char *t = json_dumps(rel, 0);
		fail_msg("release verification: %s", t);
	}
	path = h_bin("otactl");
	if (h_sh(&out, "%s --url %s --token %s verify %s/dl.bin --key %s", path, d.url, d.token, d.dir,
		 F.pub_pem[K_SIGN_ED]) != 0)
		fail_msg("otactl verify: %s", buf_cstr(&out));
	free(path);
	json_decref(rel);
	json_decref(man);
	buf_release(&out);
	buf_release(&bytes);
	buf_release(&plain);
	h_cleanup(&d);
}

/* Bad `encrypt:` settings: refused when the pipeline is read, or the
 * release fails with the reason and records nothing. */
static void bad_encrypt_settings_are_refused(void **state)
{
	static const struct {
		const char *enc, *want;
	} bad[] = {
		{ "{ key: an385, cipher: aes192 }", "encrypt.cipher must be aes128 or aes256" },
		{ "{ cipher: aes128 }", "encrypt needs key" },
		{ "{ key: an385, colour: blue }", "unknown key 'colour' in encrypt" },
		{ "an385", "encrypt must be a mapping" },
	};
	static const struct {
		const char *enc, *want;
	} fails[] = {
		{ "{ key: nosuch }", "encryption key 'nosuch' is not configured" },
		{ "{ hardware: { other-board: an385 } }", "no key for hardware variant 'mps2-an385'" },
	};
	struct daemon d;
	json_t *r;
	(void)state;
	daemon_start(&d, F.pub_pem[K_DEV_X]);
	for (size_t i = 0; i < OTA_ARRAY_SIZE(bad); i++) {
		char *y = xasprintf("name: fw\nstages:\n"
				    "  - { name: build, steps: [ { run: \"echo x > app.bin\" } ],"
				    " artifacts: [ { path: app.bin, name: app.bin, type: application, hardware: mps2-an385 } ] }\n"
				    "  - { name: release, kind: release, needs: [build], version: \"1.1.%zu\", security_counter: 1,"
				    " key: test, encrypt: %s }\n", i, bad[i].enc);
		json_t *body = json_pack("{ss ss}", "pipeline", y, "file", "test.yml"), *ans = NULL;
		char *t;
		long stc = h_post(&d, "/api/v1/runs", body, &ans);
		t = json_dumps(ans, 0);
		assert_int_equal(stc, 422);
		if (!strstr(t, bad[i].want))
			fail_msg("%s: expected \"%s\", got %s", bad[i].enc, bad[i].want, t);
		free(t);
		json_decref(ans);
		json_decref(body);
		free(y);
	}
	for (size_t i = 0; i < OTA_ARRAY_SIZE(fails); i++) {
		char *y = xasprintf("name: fw\nstages:\n"
				    "  - { name: build, steps: [ { run: \"echo x > app.bin\" } ],"
				    " artifacts: [ { path: app.bin, name: app.bin, type: application, hardware: mps2-an385 } ] }\n"
				    "  - { name: release, kind: release, needs: [build], version: \"1.2.%zu\", security_counter: 1,"
				    " key: test, encrypt: %s }\n", i, fails[i].enc);
		int64_t run = h_trigger(&d, y);
		const char *end = h_wait_run(&d, run, 60000);
		char *t;
		assert_string_equal(end, "failed");
		r = h_run(&d, run);
		t = json_dumps(h_job(r, "release"), 0);
		if (!strstr(t, fails[i].want)) {
			json_t *lg = NULL;
			char *lp = xasprintf("/api/v1/jobs/%lld/log",
					     (long long)json_integer_value(json_object_get(h_job(r, "release"), "id")));
			struct buf lb = BUF_INIT;
			h_sh(&lb, "curl -s '%s%s'", d.url, lp);
			if (!strstr(buf_cstr(&lb), fails[i].want))
				fail_msg("%s: expected \"%s\" in the job or its log: %s / %s", fails[i].enc, fails[i].want,
					 t, buf_cstr(&lb));
			buf_release(&lb);
			free(lp);
			json_decref(lg);
		}
		free(t);
		json_decref(r);
		free(y);
	}
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM releases"), 0);
	h_cleanup(&d);
}

/* A configured encryption key otacd cannot use stops it at start, saying
 * which one and why: a private key (it belongs on the device only), a
 * missing file, something that is not a PEM public key, a signing-only
 * curve.  Found then, not when a release stage first names it. */
static void a_bad_encryption_key_refuses_the_start(void **state)
{
	char *dir = h_tmpdir(), *otacd = h_bin("otacd"), *junk = xasprintf("%s/junk.pem", dir);
	struct {
		const char *file, *says;
	} bad[] = {
		{ F.priv_pem[K_DEV_EC], "only the device's public key belongs on the server" },
		{ "/nonexistent/key.pem", "/nonexistent/key.pem" },
		{ junk, "not a PEM \"PUBLIC KEY\"" },
		{ F.pub_pem[K_SIGN_ED], "encryption_keys.k:" },
	};
	struct buf out = BUF_INIT;
	(void)state;
	assert_int_equal(ota_write_file_atomic(junk, "hello\n", 6, 0600), 0);
	for (size_t i = 0; i < OTA_ARRAY_SIZE(bad); i++) {
		char *cfg = xasprintf("%s/c%zu.yml", dir, i), *y = xasprintf("encryption_keys:\n  k: %s\n", bad[i].file);
		assert_int_equal(ota_write_file_atomic(cfg, y, strlen(y), 0600), 0);
		if (h_sh(&out, "%s --config %s --state-dir %s/s%zu --listen 127.0.0.1:0 --device-listen off 2>&1", otacd,
			 cfg, dir, i) == 0 || !strstr(buf_cstr(&out), bad[i].says) ||
		    !strstr(buf_cstr(&out), "encryption_keys.k"))
			fail_msg("case %zu: expected a refusal naming encryption_keys.k and saying \"%s\", got: %s", i,
				 bad[i].says, buf_cstr(&out));
		free(cfg);
		free(y);
	}
	h_sh(&out, "rm -rf %s", dir);
	buf_release(&out);
	free(junk);
	free(otacd);
	free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(encrypted_image_decrypts_with_the_device_key_and_verifies),
		cmocka_unit_test(each_image_gets_a_fresh_key),
		cmocka_unit_test(encrypted_image_in_a_slot_leaves_room_for_the_key_trailer),
		cmocka_unit_test(mismatched_or_unusable_keys_are_refused_at_signing),
		cmocka_unit_test(wrong_device_key_fails_the_mac),
		cmocka_unit_test(changed_tlv_or_ciphertext_is_refused),
		cmocka_unit_test(second_key_tlv_is_refused),
		cmocka_unit_test(openssl_cli_decrypts_our_images),
		cmocka_unit_test(imgtool_encrypted_images_decrypt_here_and_match_ours),
		cmocka_unit_test(imgtool_verifies_our_images_after_decryption),
		cmocka_unit_test(bad_encrypt_settings_are_refused),
		cmocka_unit_test(a_bad_encryption_key_refuses_the_start),
		cmocka_unit_test(encrypted_release_installs_only_on_devices_with_the_key),
	};
	cmocka_set_test_filter(getenv("ENCRYPT_ONLY"));
	return cmocka_run_group_tests(tests, keys_setup, keys_teardown);
}
