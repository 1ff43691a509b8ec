/*
 * fwharness.h - what the tests of the sample firmware's pipeline share
 * (test_firmware, test_quality, test_hilpower): the tools they need, the
 * example's .otacd/pipeline.yml turned into a test pipeline, runs
 * triggered at a ref and awaited with their jobs printed on a surprise,
 * and the two QEMU HIL rigs (otacd-agent --labels hil,board=...).
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

#endif
