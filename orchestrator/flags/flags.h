/*
 * flags.h - feature flags (stage 7): per-product flags delivered to devices
 * in the check-in answer, targeted by cohort and by percentage, enabled
 * gradually through a release's steps, holds and gates.
 *
 * A flag is a row of `flags` (migration 17): product, name, the value a
 * device gets when the flag is on for it (true, an integer or a short
 * string), a cohort filter ({tag: [values]}) and the exposure bp (basis
 * points, 0..10000).  A device gets the flag's value when its tags match the
 * cohort and its bucket is below bp, else false:
 *
 *   bucket = first 8 bytes of SHA-256(flag ":" device id), big-endian, mod 10000
 *
 * The bucket depends on the flag's name and the device alone (not on the
 * product, the value or the step), so raising bp only adds devices, lowering
 * it only removes them, and each flag samples different devices (sticky
 * bucketing; docs/update-server.md).
 *
 * Rollouts reuse the rollout stage's plan (rollout_plan_from_extra: steps of
 * percent + hold, cohort, max_extension, check_interval) and its gates
 * (gate_spec_parse, gate_judge: anytime-valid confidence sequences).  The
 * evidence of a flag's gate is the fleet's aggregate of cohort
 * "flag.NAME=on", summed over the product's versions: devices report the
 * flags they applied as that tag (fleetsim does; docs/update-server.md).
 * A gate with `baseline: off` (gate_spec_parse_flag) compares them with
 * cohort "flag.NAME=off" on the same versions (devices report a flag their
 * answer has false as that tag): the rate-ratio confidence sequence a
 * release's `baseline: previous` uses.
 * A gate that proves a breach sets the flag off (bp 0) in the same
 * transaction as its audit row: the next check-in of every device answers
 * false.  Firmware releases are untouched.
 *
 * States: off, on (bp > 0, no rollout running), holding (a rollout step is
 * held; gates checked), paused (inconclusive past the extension: exposure
 * kept, never grows), failed (a gate proved a breach: bp 0).
 *
 * Threads: flags_set/flags_rollout are engine calls (one transaction, with
 * the audit row), from any thread.  The flags controller (its own thread)
 * reads the table, publishes it to the fleet's check-in path
 * (fleet_set_flags) and posts its gate decisions through engine calls.
 */
#ifndef OTA_FLAGS_H
#define OTA_FLAGS_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

struct engine;
struct fleet;
struct store;
struct updsrv;
struct otacd_config;

/* Bounds, chosen so that an answer with an offer and every flag of a
 * product stays inside libotadev's 64 JSON tokens and 2,048 bytes. */
#define FLAGS_PER_PRODUCT 8
#define FLAGS_NAME_MAX 32      /* [a-z0-9_-], starting with a letter */
#define FLAGS_VALUE_MAX 32     /* a string value's bytes, [A-Za-z0-9._:/+@-] */
#define FLAGS_ANSWER_MAX 600   /* the "flags" object's text in a check-in answer: 8 x (34 + 2 + 34) + 2 */

/* The device's sticky bucket for flag (0..9999). */
uint32_t flags_bucket(const char *flag, const char *device);

/* Is name a valid flag name?  1 or 0. */
int flags_name_valid(const char *name);

/*
 * Operator actions (any thread; each one engine call, audited with actor).
 * set:     {product, name, state: "on"|"off", value?, cohort?, reason}
 *          on: bp 10000 for the cohort; off: bp 0; a running rollout stops.
 * rollout: {product, name, value?, cohort?, steps: [{percent, hold}],
 *           gates: {NAME: {metric, max|min, min_devices, ...}},
 *           max_extension?, check_interval?, reason}
 * 0 with *out (new ref: the flag's row as flags_list shows it), or
 * OTA_EINVAL with a message naming the field; nothing changes then.
 */
int flags_set(struct engine *e, const char *actor, const json_t *body, json_t **out);
int flags_rollout(struct engine *e, const char *actor, const json_t *body, json_t **out);

/* The input checks of flags_set (rollout 0) or flags_rollout (1) alone,
 * nothing written (fuzz/fuzz_flags.c): 0 or OTA_EINVAL with the message. */
int flags_check(const json_t *body, int rollout);

/* The flags (of product, or all with NULL): array of {product, name, value,
 * cohort, state, percent, bp, step, steps, hold_until, reason, evals,
 * updated_at} (new ref), or NULL on a database error. */
json_t *flags_list(struct store *db, const char *product);

/* ---- the controller --------------------------------------------------- */

struct flags_controller;
/* f may be NULL (an external update server): flags are then judged and
 * listed but not delivered. */
int flags_controller_start(struct flags_controller **out, struct engine *e, struct updsrv *us, struct fleet *f);
void flags_controller_stop(struct flags_controller *fc);
/* Look again now (after an operator action); safe with NULL and from any thread. */
void flags_controller_kick(void);

/* ---- the check-in's "flags" object (fleet_set_flags's hook) ------------- */

struct flags_live;
/* The "flags" object for a device of product with tags ("k=v" strings):
 * written into out (NUL-terminated), its length, or 0 when product has no
 * flags (the answer then has no "flags" member).  Any thread. */
size_t flags_live_answer(void *live, const char *product, const char *device, const char *const *tags,
			 size_t ntags, char *out, size_t cap);

#endif
