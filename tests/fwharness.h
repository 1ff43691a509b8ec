/*
 * fwharness.h - what the tests of the sample firmware's pipeline share
 * (test_firmware, test_quality, test_hilpower): the tools they need, the
 * example's .otacd/pipeline.yml turned into a test pipeline, runs
 * triggered at a ref and awaited with their jobs printed on a surprise,
 * and the two QEMU HIL rigs (otacd-agent --labels hil,board=...); and
 * what the tests that boot the sample firmware in QEMU themselves share
 * (test_sensorota, test_sefw): its flash file, signed slot images, and the
 * rig with UART1 bridged to otacd and UART2 on the secure element's model.
 * Linked into every test binary, like harness.c.
 */
#ifndef OTA_FWHARNESS_H
#define OTA_FWHARNESS_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "harness.h"

/* jscpd (npm) for the code-quality stage: $OTACD_JSCPD or where .ci/run
 * installs it; to free. */
char *fw_jscpd_path(void);
/* 1, after printing a SKIP line naming the tool and `install`, when one of
 * tools[0..n) is not on PATH or jscpd (may be NULL: not needed) is not
 * executable. */
int fw_tools_missing(const char *const *tools, size_t n, const char *install, const char *jscpd);
/* Append text to b with every `from` replaced by `to`; *count says how
 * many were. */
void fw_replace_all(struct buf *b, const char *text, const char *from, const char *to, int *count);
/* The example's pipeline file (examples/sensor-node/.otacd/pipeline.yml)
 * with a first step copying $SRC into the workspace added to each of its
 * stages: exactly `stages` of them (the test's pipeline is wrong otherwise). */
void fw_copy_step(struct buf *out, const char *text, int stages);
/* Trigger yaml at ref (refs/heads/...); the run's id. */
int64_t fw_trigger_on(struct daemon *d, const char *yaml, const char *ref);
/* o[k] as a string, "" when it is not one. */
const char *fw_jstr(json_t *o, const char *k);
/* Wait up to timeout_ms for run id to end in state want; on anything else
 * print its jobs' states and messages and fail. */
void fw_wait_for(struct daemon *d, int64_t id, const char *want, int timeout_ms);
/* The two QEMU rigs, one agent per board (mps2-an385, mps2-an386). */
void fw_rigs_start(struct daemon *d, pid_t rigs[2]);
void fw_rigs_stop(pid_t rigs[2]);

/* ---- the sample firmware booted in QEMU (test_sensorota, test_sefw) --------- */

/* The flash map (examples/sensor-node/src/flash_map.h): a 16 MiB file. */
#define FW_FLASH_SIZE (16u << 20)
#define FW_SLOT_SIZE 0x20000u /* the primary slot at 0, the secondary after it */
#define FW_PROV_OFF 0x43000u  /* the provisioning sector */

/* Write len bytes at off of the flash file (created 0xff-filled first). */
void fw_flash_put(const char *path, long off, const void *p, size_t len);
/* Read len bytes at off of the flash file. */
void fw_flash_get(const char *path, long off, void *p, size_t len);
/* The image bin_path signed by a new key as MCUboot's signer does
 * (version 1.MINOR.0, counter), FW_SLOT_SIZE bytes into slot, with its
 * trailer: confirmed (image_ok set) or as MCUboot leaves it after a test
 * swap (copy_done set, image_ok unset). */
void fw_slot_image(unsigned char *slot, const char *bin_path, uint8_t minor, uint32_t counter, int confirmed);

/* h_init and h_start d with args and a release key "test": a P-256 key
 * made in d->dir (key.pem, and key.der, its public half as the
 * firmware's TRUSTED_KEY= takes it), a 1 s poll interval and product
 * sensor-node allowed counter steps of up to 5. */
void fw_release_otacd(struct daemon *d, const char *const *args);

/* One QEMU boot of the sample firmware. */
struct fw_rig {
	const char *board;   /* NULL: mps2-an385 */
	const char *dir;     /* uart0.log, qemu.pid and the UART sockets go here */
	const char *elf;
	const char *flash;   /* the flash file (NULL: no flash map) */
	const char *url;     /* UART1 through hil/bridge.py to this device API (NULL: nowhere) */
	const char *se_args; /* UART2 to hil/se_model.py with these arguments (NULL: a silent element) */
	int secs;            /* QEMU is stopped after this (0: 900) */
};
/*
 * Boot r: UART0 into out (with the bridge's and the element's lines) and
 * dir/uart0.log.  input is shell run with UART0's input as its stdout;
 * `w N PATTERN` in it waits (up to 300 s) until UART0 has shown PATTERN N
 * times, `o_until PATTERN` sends "o" every second until UART0 shows
 * PATTERN, `w_end` ends the boot (else QEMU stops after r->secs).
 */
void fw_rig_boot(struct buf *out, const struct fw_rig *r, const char *input);

#endif
