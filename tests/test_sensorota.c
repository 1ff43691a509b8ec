/*
 * test_sensorota.c - the sample firmware with libotadev on its MCU hooks
 * (examples/sensor-node, src/ota_port.c), built for both boards and booted
 * in QEMU with its flash map backed by a file (docs/device-porting.md).
 *
 * The rig writes what a factory and MCUboot would leave in flash: the
 * signed image of the same build in the primary slot with the trailer of
 * a test boot after a swap (magic, copy_done set, image_ok unset) and a
 * provisioning sector.  The firmware must then, on the emulated Cortex-M:
 * read the (absent) record, start in TESTING, run its self-test, write
 * image_ok into the primary trailer, persist the record in its A/B state
 * sectors, reset itself through SCB AIRCR and, after the reset, read the
 * record back from flash (same generation, the boot_ok report still
 * queued: no link).  The file is checked afterwards byte by byte.
 * Needs arm-none-eabi-gcc, qemu-system-arm and make; skipped without.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "devharness.h"
#include "fwharness.h"
#include "harness.h"

#define SLOT_SIZE FW_SLOT_SIZE
#define STATE_OFF 0x41000u

static const char *const boards[] = { "mps2-an385", "mps2-an386" };

static int tools_missing(void)
{
	static const char *const tools[] = { "arm-none-eabi-gcc", "qemu-system-arm", "make" };
	return fw_tools_missing(tools, OTA_ARRAY_SIZE(tools), "gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm make",
				NULL);
}

/* The example as a firmware repository (libotadev at lib/otadev), built for
 * one board; returns the copy's directory. */
static char *build_board(const char *dir, const char *board)
{
	char *to = dh_sensor_node_copy(dir, "fw");
	struct buf out = BUF_INIT;
	if (h_sh(&out, "make -s -C '%s' BOARD=%s", to, board) != 0)
		fail_msg("make BOARD=%s: %s", board, buf_cstr(&out));
	buf_release(&out);
	return to;
}

static void firmware_links_libotadev_for_both_boards(void **state)
{
	(void)state;
	if (tools_missing())
		skip();
	for (size_t i = 0; i < OTA_ARRAY_SIZE(boards); i++) {
		char *dir = h_tmpdir(), *fw = build_board(dir, boards[i]);
		struct buf out = BUF_INIT;
		/* the core and the hooks are in the image, not garbage-collected */
		assert_int_equal(h_sh(&out, "arm-none-eabi-nm '%s/build/%s/app.elf'", fw, boards[i]), 0);
		for (const char *const *sym = (const char *const[]){ " otadev_init", " otadev_step", " otadev_image_verify",
								      " otadev_trailer_confirm", " sha256_update", NULL };
		     *sym; sym++)
			if (!strstr(out.ptr, *sym))
				fail_msg("%s: %s is not linked", boards[i], *sym);
		assert_int_equal(h_sh(&out, "rm -rf '%s'", dir), 0);
		buf_release(&out);
		free(fw);
		free(dir);
	}
}

/* Boot the board on the flash file, feed UART0 the shell words of input
 * (printf/sleep), collect UART0 into out; QEMU is stopped after secs (a
 * little more than the input takes).  With url, UART1 is bridged to otacd's
 * device API there (fw_rig_boot() says what else input may hold). */
static void boot(struct buf *out, const char *board, const char *elf, const char *flash, const char *input, int secs,
		 const char *dir, const char *url)
{
	const struct fw_rig r = { .board = board, .dir = dir, .elf = elf, .flash = flash, .url = url, .secs = secs };

	fw_rig_boot(out, &r, input);
}

static void must_have(const char *board, const char *transcript, const char *line)
{
	if (!strstr(transcript, line))
		fail_msg("%s: no \"%s\" on UART0:\n%s", board, line, transcript);
}

static void qemu_boot_confirms_the_test_boot_keeps_the_record_and_reports_to_otacd_over_the_uart_bridge(void **state)
{
	const char *const args[] = { NULL };
	struct daemon d;
	char **cred;

	(void)state;
	if (tools_missing())
		skip();
	h_init(&d, NULL);
	assert_int_equal(h_start(&d, args), 0);
	cred = h_register_devices(&d, "qemu-sensor", (int)OTA_ARRAY_SIZE(boards));
	for (size_t i = 0; i < OTA_ARRAY_SIZE(boards); i++) {
		const char *b = boards[i];
		char *dir = h_tmpdir(), *fw = build_board(dir, b), *bin = xasprintf("%s/build/%s/app.bin", fw, b),
		     *elf = xasprintf("%s/build/%s/app.elf", fw, b), *flash = xasprintf("%s/flash.img", dir), *boot2;
		unsigned char *slot = malloc(SLOT_SIZE), tr[64], st[16];
		char *prov = xasprintf("device=qemu-sensor-%04zu\ncredential=%s\n", i, cred[i]),
		     *dev = xasprintf("OTA provisioned device=qemu-sensor-%04zu\n", i);
		struct buf out = BUF_INIT;

		assert_non_null(slot);
		/* the factory: 1.3.0 (counter 2) confirmed, the device's identity */
		fw_slot_image(slot, bin, 3, 2, 1);
		fw_flash_put(flash, 0, slot, SLOT_SIZE);
		fw_flash_put(flash, FW_PROV_OFF, prov, strlen(prov));
		boot(&out, b, elf, flash, "sleep 2; printf 'o\\n'; sleep 1", 4, dir, NULL);
		must_have(b, out.ptr, dev);
		must_have(b, out.ptr, "OTA init phase=idle version=1.3.0 counter=2 gen=1 queued=0 image_ok=set\n");

		/* power off; MCUboot's test swap puts 1.4.0 (counter 3) in the
		 * primary slot, unconfirmed; the state sectors stay */
		fw_slot_image(slot, bin, 4, 3, 0);
		fw_flash_put(flash, 0, slot, SLOT_SIZE);
		boot(&out, b, elf, flash, "sleep 2; printf 'o\\n'; sleep 1; printf 'r\\n'; sleep 2; printf 'o\\n'; sleep 1", 7, dir, NULL);
		/* the record from flash: a test boot of an image it did not know;
		 * the self-test passes, image_ok is written, boot_ok queued */
		must_have(b, out.ptr, "OTA init phase=testing version=1.4.0 counter=2 gen=2 queued=0 image_ok=unset\n");
		must_have(b, out.ptr, "OTA confirmed 1.4.0\n");
		must_have(b, out.ptr, "OTA phase=idle version=1.4.0 counter=3 gen=3 queued=1 image_ok=set\n");
		/* after SYSRESETREQ (same QEMU, RAM kept only in the flash map) */
		must_have(b, out.ptr, "REBOOT\n");
		boot2 = strstr(out.ptr, "REBOOT\n");
		must_have(b, boot2, "sensor-node 1.4.0 counter=3 board=");
		must_have(b, boot2, "OTA init phase=idle version=1.4.0 counter=3 gen=3 queued=1 image_ok=set\n");
		must_have(b, boot2, "SELFTEST PASS\n");

		/* and in the file: image_ok in the primary trailer (magic and
		 * copy_done as MCUboot left them); the newest record copy, the
		 * third write, back in the first state sector */
		fw_flash_get(flash, SLOT_SIZE - 64, tr, sizeof(tr));
		fw_flash_get(flash, STATE_OFF, st, sizeof(st));
		assert_int_equal(tr[64 - 24], 0x01);
		assert_int_equal(tr[64 - 32], 0x01);
		assert_int_equal(tr[48], 0x77);
		assert_int_equal(tr[49], 0xc2);
		assert_memory_equal(st, "1ATS", 4);   /* STATE_MAGIC, little-endian */
		assert_int_equal(st[8], 3);           /* sequence 3 (after magic and crc) */

		/* UART1 bridged to the real otacd: the check-in and the report
		 * batch go through it, otacd's acknowledgement empties the queue */
		boot(&out, b, elf, flash, "sleep 4; printf 'o\\n'; sleep 1", 6, dir, d.device_url);
		must_have(b, out.ptr, "OTA link up\n");
		must_have(b, out.ptr, "bridge: POST /device/v1/checkin -> 200");
		must_have(b, out.ptr, "bridge: POST /device/v1/reports -> 200");
		must_have(b, out.ptr, "OTA phase=idle version=1.4.0 counter=3 gen=4 queued=0 image_ok=set\n");

		assert_int_equal(h_sh(&out, "rm -rf '%s'", dir), 0);
		buf_release(&out);
		free(slot);
		free(bin);
		free(elf);
		free(flash);
		free(fw);
		free(dir);
		free(prov);
		free(dev);
		free(cred[i]);
	}
	free(cred);
	h_cleanup(&d);
}

/*
 * A real release offered to the QEMU device: the check-in's offer, the
 * Range downloads into the secondary slot (RAM-backed flash) and the file's
 * SHA-256 all run on the emulated Cortex-M through the UART bridge; the
 * image is signed by the key compiled in (make TRUSTED_KEY=), so the core
 * reaches the signature hook, which asks the secure element on UART2;
 * here none is attached (the landing with one: tests/test_sefw.c), so no
 * answer comes, which is a refusal: nothing is marked bootable and otacd
 * gets the refusal report.
 */
static void qemu_downloads_an_offered_release_over_the_bridge_and_refuses_it_without_a_secure_element(void **state)
{
	const char *const args[] = { "--local-agents", "1", NULL };
	const char *b = "mps2-an385";
	const char *y = "name: sensor-node\nstages:\n"
			"  - name: build\n"
			"    steps: [ { run: \"head -c 20000 /dev/urandom > app.bin\" } ]\n"
			"    artifacts: [ { path: app.bin, name: app.bin, type: application, hardware: mps2-an385 } ]\n"
			"  - { name: release, kind: release, needs: [build], version: \"1.5.0\", security_counter: 4, key: test }\n"
			"  - name: canary\n    kind: rollout\n    needs: [release]\n"
			"    steps: [ {percent: 100, hold: 1000h} ]\n    gates: [boots]\n"
			"gates:\n  boots: { metric: boot_success_rate, min: 0.5, min_devices: 1000 }\n";
	struct daemon d;
	struct buf out = BUF_INIT;
	char **cred, *fw, *bin, *elf, *flash, *prov;
	unsigned char *slot;
	int64_t release = 0;

	(void)state;
	if (tools_missing())
		skip();
	fw_release_otacd(&d, args);
	cred = h_register_devices(&d, "qemu-dl", 1);

	/* the firmware trusting the release key */
	fw = xasprintf("%s/fw", d.dir);
	free(build_board(d.dir, b));
	assert_int_equal(h_sh(&out, "make -s -C '%s' BOARD=%s TRUSTED_KEY='%s/key.der'", fw, b, d.dir), 0);
	bin = xasprintf("%s/build/%s/app.bin", fw, b);
	elf = xasprintf("%s/build/%s/app.elf", fw, b);
	flash = xasprintf("%s/flash.img", d.dir);
	slot = malloc(SLOT_SIZE);
	assert_non_null(slot);
	fw_slot_image(slot, bin, 4, 3, 1);   /* 1.4.0, counter 3, confirmed */
	fw_flash_put(flash, 0, slot, SLOT_SIZE);
	prov = xasprintf("device=qemu-dl-0000\ncredential=%s\n", cred[0]);
	fw_flash_put(flash, FW_PROV_OFF, prov, strlen(prov));

	/* release 1.5.0 (counter 4) for this board, rolled out to 100 % */
	release = dh_release_of(&d, h_trigger(&d, y));
	assert_true(release > 0);

	/* no element: its 10 s answer timeout comes after the download; then
	 * the refusal report is acknowledged (the queue empties) */
	boot(&out, b, elf, flash, "w 1 'OTA refused the offer'; o_until '^OTA phase=idle.* queued=0 '; w_end", 600, d.dir,
	     d.device_url);
	must_have(b, out.ptr, "bridge: POST /device/v1/checkin -> 200");
	must_have(b, out.ptr, "bridge: GET /device/v1/");
	must_have(b, out.ptr, "-> 206 (2048 bytes)");
	must_have(b, out.ptr, "OTA verify: secure element: no or short answer\n");
	must_have(b, out.ptr, "OTA refused the offer: signature does not verify\n");
	/* the only report: the refusal (bridge and UART lines interleave freely) */
	must_have(b, out.ptr, "bridge: POST /device/v1/reports -> 200");
	/* still on 1.4.0, nothing pending, the refusal acknowledged */
	must_have(b, out.ptr, "OTA phase=idle version=1.4.0 counter=3 ");
	must_have(b, out.ptr, " queued=0 image_ok=set\n");
	/* the image is in the secondary slot (MCUboot's header magic), its
	 * trailer never got the boot magic */
	fw_flash_get(flash, SLOT_SIZE, slot, SLOT_SIZE);
	assert_memory_equal(slot, "\x3d\xb8\xf3\x96", 4);
	for (unsigned i = SLOT_SIZE - 48; i < SLOT_SIZE; i++)
		assert_int_equal(slot[i], 0xff);

	free(prov);
	free(slot);
	free(flash);
	free(elf);
	free(bin);
	free(fw);
	free(cred[0]);
	free(cred);
	buf_release(&out);
	h_cleanup(&d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(firmware_links_libotadev_for_both_boards),
		cmocka_unit_test(qemu_boot_confirms_the_test_boot_keeps_the_record_and_reports_to_otacd_over_the_uart_bridge),
		cmocka_unit_test(qemu_downloads_an_offered_release_over_the_bridge_and_refuses_it_without_a_secure_element),
	};
	cmocka_set_test_filter(getenv("X_ONLY"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
