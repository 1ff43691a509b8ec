/*
 * power.h - the `power:` gate of the hil kind (docs/stages.md, "Power"):
 *
 *   reports: { junit: build/hil.xml, power: build/power.json }
 *   baseline: main                  # optional: a branch
 *   power:
 *     avg_current_ma: 1.5           # limits on the power report's figures
 *     sleep_current_ma: 1.2
 *     cycle_energy_uj: 100
 *     max_increase_percent: 25      # and at most 25 % above the baseline's
 *
 * Judged on the attempt's "power" reports (orchestrator/reports.h) and,
 * with max_increase_percent, on the same board's power report in the
 * baseline branch's last passed run.  Pure functions, no I/O.
 */
#ifndef OTA_POWER_H
#define OTA_POWER_H

#include <jansson.h>

#include "../common/util.h"
#include "stage.h"

/* Append diagnostics for `power:` and `baseline:` of a hil stage. */
int power_validate(const struct pl_stage *st, struct pl_diags *d);

/*
 * The `power:` verdict: 1 when a figure is above its limit or more than
 * max_increase_percent above the baseline's, or when no power report was
 * stored; msg gets "power (BOARD): average current 6.05 mA (limit 1.5 mA);
 * ...".  0 and nothing appended when the stage has no `power:`; 0 and a
 * note when max_increase_percent has no baseline run to compare with.
 */
int power_verdict(const json_t *extra, const struct verdict_input *in, struct buf *msg);

#endif
