/*
 * cfgdrift.h - do this instance's settings agree with the leader's?
 * (issue 16, docs/scale.md "What every instance must share")
 *
 * Several otacd instances on one PostgreSQL database take turns leading;
 * whatever instance leads signs releases, judges gates and owns the
 * fleet.  Each instance records, at start, one fingerprint per setting the
 * leader's decisions depend on (the first 63 bits of SHA-256 over a label
 * and a canonical text of the setting, never a secret) in the engine
 * database's meta table under "config_fp:HOLDER" (HOLDER: the address
 * otacd_leader names the leader by, so a follower finds the leader's row).
 * A follower compares its set with the leader's at start and at every
 * leadership poll whose leader or row changed: an item that differs is
 * logged once as a warning naming the item, never a value, and shown as
 * otacd_config_mismatch{item="..."} 1 on /metrics and in /healthz.  A
 * warning, not a refusal: a rolling configuration change passes through
 * instances that disagree.
 *
 * The leader's row comes from the database: hostile.  A row that does not
 * parse, or an item whose name or value is malformed, is a mismatch (the
 * item "record" for the row as a whole), never a crash.
 *
 * Threads: cfgdrift_init/record/compare/leading on main's thread; the
 * text and JSON functions from any (a lock).
 */
#ifndef OTA_CFGDRIFT_H
#define OTA_CFGDRIFT_H

#include <jansson.h>

#include "../common/util.h"
#include "config.h"
#include "store.h"

/* Compute this instance's fingerprints from cfg (final: after the flags). */
int cfgdrift_init(const struct otacd_config *cfg);
/* Record them as holder's row (an upsert). */
int cfgdrift_record(struct store *db, const char *holder);
/* A follower's look at the leader's row (read on db: a reader, inside a
 * store_snapshot_begin()); the leader not known yet, or no row of its own:
 * nothing changes (0).  Negative: the database could not be read (the
 * message in the error slot, nothing changed); the caller says so and
 * tries again at its next poll. */
int cfgdrift_compare(struct store *db);
/* This instance leads: its settings are the leader's, no item differs. */
void cfgdrift_leading(void);
/* otacd_config_mismatch in Prometheus text. */
void cfgdrift_metrics_text(struct buf *b);
/* The kinds of the items that differ (signing_key for signing_key.NAME),
 * a new JSON array, for /healthz (no token: no key's name). */
json_t *cfgdrift_mismatch_json(void);
/* Free everything (tests, the end of main). */
void cfgdrift_release(void);

#endif
