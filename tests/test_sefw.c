/*
 * test_sefw.c - the sample firmware's signature verify through its secure
 * element (examples/sensor-node: src/se_link.h, the verify hook in
 * src/ota_port.c, the model hil/se_model.py on UART2), on QEMU.
 *
 * The firmware has no ECDSA code: it asks the element and trusts only an
 * answer MAC'd with the link key over its own request.  Through the
 * console's "V" (the verify hook's path, with the digest and signature
 * the test chooses): a real P-256 signature is valid; a tampered digest,
 * a signature by a key in no slot and an empty slot are refused by the
 * element; a silent element (no UART2 peer), a garbled answer and a
 * forged "valid" (an attacker on the bus without the link key, or an
 * element provisioned with another link key) are refused by the firmware.
 * Then a release signed by otacd (MCUboot, the format imgtool verifies) is
 * downloaded over the UART1 bridge, verified by the element and marked
 * for a test boot; after the rig stands in for MCUboot's swap the new
 * firmware boots, passes its self-test, confirms and reports boot_ok to
 * otacd.  Needs arm-none-eabi-gcc, qemu-system-arm, make and
 * python3-cryptography; skipped without.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "devharness.h"
#include "fwharness.h"
#include "harness.h"

#define SLOT_SIZE FW_SLOT_SIZE
#define SIG_ECDSA_P256 0x22

static const char boot_magic[16] = "\x77\xc2\x95\xf3\x60\xd2\xef\x7f\x35\x52\x50\x0f\x2c\xb6\x79\x80";

static int tools_missing(void)
{
	static const char *const tools[] = { "arm-none-eabi-gcc", "qemu-system-arm", "make", "python3" };
	struct buf out = BUF_INIT;
	int missing = fw_tools_missing(tools, OTA_ARRAY_SIZE(tools),
				       "gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm make python3", NULL);

	if (!missing && h_sh(&out, "python3 -c 'import cryptography'") != 0) {
		print_message("SKIP: python3's cryptography is not installed (apt-get install python3-cryptography)\n");
		missing = 1;
	}
	buf_release(&out);
	return missing;
}

/* A P-256 key; its public half (SubjectPublicKeyInfo DER) written to path. */
static EVP_PKEY *new_key(const char *der_path)
{
	EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	unsigned char *der = NULL;
	int n;

	assert_non_null(k);
	assert_true((n = i2d_PUBKEY(k, &der)) > 0);
	assert_int_equal(ota_write_file_atomic(der_path, der, (size_t)n, 0644), 0);
	OPENSSL_free(der);
	return k;
}

/* ECDSA over the 32-byte digest (as MCUboot signs an image hash): DER. */
static size_t sign_digest(EVP_PKEY *k, const unsigned char digest[32], unsigned char sig[80])
{
	EVP_PKEY_CTX *c = EVP_PKEY_CTX_new(k, NULL);
	size_t n = 80;

	assert_non_null(c);
	assert_int_equal(EVP_PKEY_sign_init(c), 1);
	assert_int_equal(EVP_PKEY_CTX_set_signature_md(c, EVP_sha256()), 1);
	assert_int_equal(EVP_PKEY_sign(c, sig, &n, digest, 32), 1);
	EVP_PKEY_CTX_free(c);
	return n;
}

/* The console's "V" line: slot, type, digest, signature in hex. */
static char *verify_line(int slot, const unsigned char digest[32], const unsigned char *sig, size_t sig_len)
{
	char *s = malloc(5 + 2 * (32 + sig_len) + 1), *p = s;

	assert_non_null(s);
	p += sprintf(p, "%02x%02x", slot, SIG_ECDSA_P256);
	for (size_t i = 0; i < 32; i++)
		p += sprintf(p, "%02x", digest[i]);
	for (size_t i = 0; i < sig_len; i++)
		p += sprintf(p, "%02x", sig[i]);
	return s;
}

/* Boot elf on the flash file (NULL: no flash map), UART1 bridged to url
 * (NULL: nowhere), UART2 on se_model.py with se_args (NULL: a silent
 * element); fw_rig_boot() says what input may hold. */
static void boot_rig(struct buf *out, const char *dir, const char *elf, const char *flash, const char *url,
		     const char *se_args, const char *input)
{
	const struct fw_rig r = { .dir = dir, .elf = elf, .flash = flash, .url = url, .se_args = se_args };

	fw_rig_boot(out, &r, input);
}

static void must_have(const char *transcript, const char *line)
{
	if (!strstr(transcript, line)) {
		/* whole, on stderr: cmocka cuts long messages */
		fprintf(stderr, "test_sefw: the rig's transcript:\n%s\n", transcript);
		fail_msg("no \"%s\" in the rig's transcript", line);
	}
}

/* What the verify cases share: a built firmware, two keys, a digest. */
struct vfix {
	char *dir, *fw, *elf, *slot0, *other;
	EVP_PKEY *k, *k_other;
	unsigned char digest[32];
};

static int vfix_setup(void **state)
{
	struct vfix *f = calloc(1, sizeof(*f));
	struct buf out = BUF_INIT;

	assert_non_null(f);
	f->dir = h_tmpdir();
	f->fw = dh_sensor_node_copy(f->dir, "fw");
	if (h_sh(&out, "make -s -C '%s' BOARD=mps2-an385", f->fw) != 0)
		fail_msg("make: %s", buf_cstr(&out));
	f->elf = xasprintf("%s/build/mps2-an385/app.elf", f->fw);
	f->slot0 = xasprintf("%s/slot0.der", f->dir);
	f->other = xasprintf("%s/other.der", f->dir);
	f->k = new_key(f->slot0);
	f->k_other = new_key(f->other);
	assert_int_equal(EVP_Digest("sensor-node 1.5.0", 17, f->digest, NULL, EVP_sha256(), NULL), 1);
	buf_release(&out);
	*state = f;
	return 0;
}

static int vfix_teardown(void **state)
{
	struct vfix *f = *state;
	struct buf out = BUF_INIT;

	h_sh(&out, "rm -rf '%s'", f->dir);
	buf_release(&out);
	EVP_PKEY_free(f->k);
	EVP_PKEY_free(f->k_other);
	free(f->dir);
	free(f->fw);
	free(f->elf);
	free(f->slot0);
	free(f->other);
	free(f);
	return 0;
}

/* Put lines (NULL-terminated) to "V" one after another on one boot. */
static void verify_run(struct buf *out, struct vfix *f, const char *se_args, const char *const *lines)
{
	struct buf in = BUF_INIT;
	int n = 0;

	buf_printf(&in, "w 1 READY");
	for (const char *const *l = lines; *l; l++) {
		n++;
		buf_printf(&in, "; printf 'V\\n'; w %d 'VERIFY hex?'; printf '%s\\n'; w %d '^VERIFY [rv]'", n, *l, n);
	}
	buf_printf(&in, "; w_end");
	boot_rig(out, f->dir, f->elf, NULL, NULL, se_args, buf_cstr(&in));
	buf_release(&in);
}

static void element_accepts_a_real_signature_and_refuses_a_tampered_digest_a_foreign_key_and_an_empty_slot(void **state)
{
	struct vfix *f = *state;
	unsigned char sig[80], sig_other[80], tampered[32];
	size_t n = sign_digest(f->k, f->digest, sig), n_other = sign_digest(f->k_other, f->digest, sig_other);
	char *good, *bad_digest, *foreign, *no_key, *se;
	struct buf out = BUF_INIT;

	memcpy(tampered, f->digest, 32);
	tampered[31] ^= 0x01;
	good = verify_line(0, f->digest, sig, n);
	bad_digest = verify_line(0, tampered, sig, n);
	foreign = verify_line(0, f->digest, sig_other, n_other);
	no_key = verify_line(3, f->digest, sig, n);
	se = xasprintf("--slot 0=%s", f->slot0);
	verify_run(&out, f, se, (const char *const[]){ good, bad_digest, foreign, no_key, good, NULL });
	/* in order: valid, the three refusals, and valid again (the link
	 * resynchronises after refusals) */
	must_have(out.ptr, "VERIFY valid\nVERIFY hex?\nVERIFY refused: invalid\nVERIFY hex?\nVERIFY refused: invalid\n"
			   "VERIFY hex?\nVERIFY refused: invalid\nVERIFY hex?\nVERIFY valid\n");
	must_have(out.ptr, "se: slot 0 type 0x22 -> valid");
	must_have(out.ptr, "se: slot 0 type 0x22 -> invalid");
	must_have(out.ptr, "se: slot 3: no key");
	free(good);
	free(bad_digest);
	free(foreign);
	free(no_key);
	free(se);
	buf_release(&out);
}

/* The element's answer is a trust boundary on the board: whatever comes
 * back that is not an authentic "valid" for this request is a refusal. */
static void firmware_refuses_when_the_element_is_silent_garbled_or_forged(void **state)
{
	struct vfix *f = *state;
	unsigned char sig[80];
	size_t n = sign_digest(f->k, f->digest, sig);
	char *good = verify_line(0, f->digest, sig, n), *se;
	const char *const one[] = { good, NULL };
	struct buf out = BUF_INIT;

	/* nothing on UART2: the firmware times out */
	verify_run(&out, f, NULL, one);
	must_have(out.ptr, "VERIFY refused: no or short answer\n");

	/* line noise after the CRC was made */
	se = xasprintf("--slot 0=%s --garble", f->slot0);
	verify_run(&out, f, se, one);
	must_have(out.ptr, "(garbled)");
	must_have(out.ptr, "VERIFY refused: garbled answer (CRC)\n");
	free(se);

	/* someone on the bus answering "valid" to everything, without the key */
	se = xasprintf("--slot 0=%s --forge", f->slot0);
	verify_run(&out, f, se, one);
	must_have(out.ptr, "(forged: valid, wrong MAC key)");
	must_have(out.ptr, "VERIFY refused: forged answer (MAC)\n");
	free(se);

	/* an honest element provisioned with another link key */
	se = xasprintf("--slot 0=%s --link-key %s", f->slot0,
		       "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff");
	verify_run(&out, f, se, one);
	must_have(out.ptr, "se: slot 0 type 0x22 -> valid");
	must_have(out.ptr, "VERIFY refused: forged answer (MAC)\n");
	assert_null(strstr(out.ptr, "VERIFY valid"));
	free(se);
	free(good);
	buf_release(&out);
}

/* The firmware of version VERSION/COUNTER trusting key.der, built in dir/NAME:
 * its build directory (caller frees). */
static char *build_fw(const char *dir, const char *name, const char *version, int counter)
{
	char *fw = dh_sensor_node_copy(dir, name);
	char *out_dir = xasprintf("%s/build/mps2-an385", fw);
	struct buf out = BUF_INIT;

	if (h_sh(&out, "make -s -C '%s' BOARD=mps2-an385 VERSION=%s COUNTER=%d TRUSTED_KEY='%s/key.der'", fw, version,
		 counter, dir) != 0)
		fail_msg("make: %s", buf_cstr(&out));
	buf_release(&out);
	free(fw);
	return out_dir;
}

/* The factory's primary slot: bin signed by otacd's MCUboot signer (the
 * format `imgtool verify` accepts) as 1.4.0, counter 3, confirmed. */
static void factory_slot(const char *bin_path, const char *flash)
{
	unsigned char *slot = malloc(SLOT_SIZE);

	assert_non_null(slot);
	fw_slot_image(slot, bin_path, 4, 3, 1);
	fw_flash_put(flash, 0, slot, SLOT_SIZE);
	free(slot);
}

/* Stand in for MCUboot's test swap: the secondary slot's image into the
 * primary with the trailer MCUboot leaves (magic, copy_done set, image_ok
 * unset); the old image into the secondary. */
static void mcuboot_test_swap(const char *flash)
{
	unsigned char *p = malloc(SLOT_SIZE), *s = malloc(SLOT_SIZE);

	assert_non_null(p);
	assert_non_null(s);
	fw_flash_get(flash, 0, p, SLOT_SIZE);
	fw_flash_get(flash, SLOT_SIZE, s, SLOT_SIZE);
	memset(s + SLOT_SIZE - 48, 0xff, 48);
	memcpy(s + SLOT_SIZE - 16, boot_magic, 16);
	s[SLOT_SIZE - 32] = 0x01; /* copy_done */
	memset(p + SLOT_SIZE - 48, 0xff, 48);
	fw_flash_put(flash, 0, s, SLOT_SIZE);
	fw_flash_put(flash, SLOT_SIZE, p, SLOT_SIZE);
	free(p);
	free(s);
}

static void qemu_lands_a_release_verified_by_the_secure_element_and_confirms_it(void **state)
{
	const char *const args[] = { "--local-agents", "1", NULL };
	struct daemon d;
	struct buf out = BUF_INIT;
	char **cred, *v14, *v15, *y, *flash, *prov, *se, *bin, *elf14, *elf15, *boot2;
	unsigned char tr[64];
	int64_t release;

	(void)state;
	if (tools_missing())
		skip();
	fw_release_otacd(&d, args);
	cred = h_register_devices(&d, "qemu-se", 1);

	/* 1.4.0 runs; 1.5.0 is what the pipeline releases */
	v14 = build_fw(d.dir, "fw14", "1.4.0", 3);
	v15 = build_fw(d.dir, "fw15", "1.5.0", 4);
	flash = xasprintf("%s/flash.img", d.dir);
	bin = xasprintf("%s/app.bin", v14);
	elf14 = xasprintf("%s/app.elf", v14);
	elf15 = xasprintf("%s/app.elf", v15);
	factory_slot(bin, flash);
	prov = xasprintf("device=qemu-se-0000\ncredential=%s\n", cred[0]);
	fw_flash_put(flash, FW_PROV_OFF, prov, strlen(prov));

	y = xasprintf("name: sensor-node\nstages:\n"
		      "  - name: build\n"
		      "    steps: [ { run: \"cp %s/app.bin app.bin\" } ]\n"
		      "    artifacts: [ { path: app.bin, name: app.bin, type: application, hardware: mps2-an385 } ]\n"
		      "  - { name: release, kind: release, needs: [build], version: \"1.5.0\", security_counter: 4, key: test }\n"
		      "  - name: canary\n    kind: rollout\n    needs: [release]\n"
		      "    steps: [ {percent: 100, hold: 1000h} ]\n    gates: [boots]\n"
		      "gates:\n  boots: { metric: boot_success_rate, min: 0.5, min_devices: 1000 }\n",
		      v15);
	release = dh_release_of(&d, h_trigger(&d, y));
	assert_true(release > 0);

	/* the download over the bridge, the element's verdict, the test-boot mark */
	se = xasprintf("--slot 0=%s/key.der", d.dir);
	boot_rig(&out, d.dir, elf14, flash, d.device_url, se, "w 1 'OTA reboot'; w_end");
	must_have(out.ptr, "bridge: GET /device/v1/");
	must_have(out.ptr, "se: slot 0 type 0x22 -> valid");
	must_have(out.ptr, "OTA verify: secure element: valid\n");
	must_have(out.ptr, "OTA reboot\n");
	/* marked for a test boot: the boot magic last in the secondary trailer */
	fw_flash_get(flash, 2 * SLOT_SIZE - 16, tr, 16);
	assert_memory_equal(tr, boot_magic, 16);

	/* MCUboot swaps (the rig stands in), 1.5.0 boots: self-test, image_ok,
	 * boot_ok reported to otacd through the bridge */
	mcuboot_test_swap(flash);
	boot_rig(&out, d.dir, elf15, flash, d.device_url, se,
		 "w 1 'OTA confirmed'; o_until 'phase=idle version=1.5.0 .* queued=0'; w_end");
	must_have(out.ptr, "sensor-node 1.5.0 counter=4 board=mps2-an385\n");
	must_have(out.ptr, "OTA test boot of 1.5.0\n");
	must_have(out.ptr, "OTA confirmed 1.5.0\n");
	must_have(out.ptr, "bridge: POST /device/v1/reports -> 200");
	/* boot_ok acknowledged: the queue is empty */
	boot2 = strstr(out.ptr, "OTA confirmed 1.5.0\n");
	must_have(boot2, "OTA phase=idle version=1.5.0 counter=4 ");
	must_have(boot2, " queued=0 image_ok=set\n");
	fw_flash_get(flash, SLOT_SIZE - 64, tr, sizeof(tr));
	assert_int_equal(tr[64 - 24], 0x01); /* image_ok, written by 1.5.0 */
	assert_memory_equal(tr + 48, boot_magic, 16);
	assert_true(dh_fleet_wait(&d, release, "confirmed", 1, 60000) >= 1);

	free(bin);
	free(elf14);
	free(elf15);

	free(se);
	free(y);
	free(prov);
	free(flash);
	free(v14);
	free(v15);
	free(cred[0]);
	free(cred);
	buf_release(&out);
	h_cleanup(&d);
}

int main(void)
{
	const struct CMUnitTest verify_tests[] = {
		cmocka_unit_test(element_accepts_a_real_signature_and_refuses_a_tampered_digest_a_foreign_key_and_an_empty_slot),
		cmocka_unit_test(firmware_refuses_when_the_element_is_silent_garbled_or_forged),
	};
	const struct CMUnitTest land_tests[] = {
		cmocka_unit_test(qemu_lands_a_release_verified_by_the_secure_element_and_confirms_it),
	};
	int rc;

	cmocka_set_test_filter(getenv("X_ONLY"));
	if (tools_missing())
		return 0;
	rc = cmocka_run_group_tests_name("verify", verify_tests, vfix_setup, vfix_teardown);
	return rc | cmocka_run_group_tests_name("land", land_tests, NULL, NULL);
}
