/*
 * sched.h - scheduled pipelines (issue 17).
 *
 * A repository's `schedules:` (docs/config.md) lists {name, cron, ref,
 * pipeline}.  One scheduler thread evaluates each cron expression in otacd
 * time (clock.h, UTC) and, when a slot comes due, records a delivery
 * (provider "schedule", delivery id "NAME@SLOT_MS") and the schedule's last
 * fired slot in one transaction (table schedule_fires, migration 16), then
 * hands the delivery to sources.h, which turns it into a run like a manual
 * trigger of `ref`.
 *
 * Crash safety: the slot and the delivery commit together, so after a
 * SIGKILL a slot is either fired (its delivery is pending or done; pending
 * deliveries are resumed by sources_start) or not fired at all.  Slots
 * missed while otacd was down fire once at start: only the latest missed
 * slot, never a backlog.  A schedule seen for the first time starts
 * counting from that moment (no slot before it fires).
 */
#ifndef OTA_SCHED_H
#define OTA_SCHED_H

#include <jansson.h>
#include <stddef.h>

#include "../config.h"
#include "../engine.h"
#include "../sources.h"

/* Check a `schedules:` list (JSON from the YAML).  On error writes
 * "schedules[I].KEY: reason" to err and returns OTA_EINVAL. */
int sched_config_check(const json_t *list, char *err, size_t errlen);

/* The schedule named `name` in repo's list, or NULL (borrowed). */
const json_t *sched_find(const struct repo_cfg *repo, const char *name);

struct sched;
/* Start the scheduler thread (no thread when no repository has schedules). */
int sched_start(struct sched **out, struct engine *e, const struct otacd_config *cfg, struct sources *src);
void sched_stop(struct sched *s);

#endif
