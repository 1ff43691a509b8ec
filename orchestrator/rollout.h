/*
 * rollout.h - a release's walk through the fleet: soak and rollout stages.
 *
 * A soak or rollout stage's job does not run on an agent: when the engine
 * starts it, rollout_job_start() records a rollout (table `rollouts`) with
 * its plan (steps of percent + hold, per ring), the release it exposes and
 * absolute deadlines in otacd time.  From then on the rollout controller
 * (a thread of its own, rollout_controller_start) checks the rollout's
 * gates against fleet metrics, and the engine thread applies what the
 * controller decided: next step, pass, pause, or fail and roll back.  The
 * job finishes when the rollout does, so the run's DAG continues (canary
 * after staging, production after canary).
 *
 * State (rollouts.state):
 *   waiting_approval  `approval: required`: nothing exposed until a promote
 *   waiting_window    the next step may only start inside `window`
 *   holding           exposed at percent_bp; gates checked until hold_until
 *   paused            by an operator, or inconclusive past extend_until, or
 *                     repeated provider errors: exposure kept, never grows
 *   passed            every step held with gates passing
 *   failed            a gate proved a breach: halted and rolled back
 *   rolled_back       by an operator
 *   canceled          its run was canceled
 *
 * Exposure: what the update server offers is desired state computed from
 * these rows alone (rollout_exposures), so applying it again after a crash
 * is harmless, and every decision bumps rollouts.seq, which the http
 * adapter sends as the idempotency key.  A device is in a step when
 * fmix64(fnv1a64(release salt ":" device)) mod 10000 < percent_bp; the salt is
 * derived from the release's manifest digest, so it never changes and each
 * release samples different devices.
 *
 * Threads: rollout_job_start and rollout_on_* run on the engine thread
 * inside its transaction; the controller only reads the database and posts
 * its decisions through engine calls; operators' actions (promote, pause,
 * resume, rollback) are engine calls too.
 */
#ifndef OTA_ROLLOUT_H
#define OTA_ROLLOUT_H

#include <jansson.h>
#include <stdint.h>

struct engine;
struct fleet;
struct otacd_config;
struct updsrv;

/*
 * The normalised plan of a soak/rollout stage from its keys (extra) and
 * kind ("soak" or "rollout"):
 *   {"kind", "plan": [{"ring", "cohort", "bp", "hold_ms"}], "gates": [names],
 *    "gate_specs": {...}, "approval": bool, "max_extension_ms",
 *    "check_ms", "window": null | {"start_min", "end_min", "utc_offset_min"}}
 * OTA_EINVAL with a message naming the key on bad input.
 */
int rollout_plan_from_extra(const char *kind, const json_t *extra, json_t **out);

/* Engine thread, inside a transaction: start job_id's rollout.  Fails the
 * job (with the reason) when the run has no release, or when the release
 * may not be exposed (anti-rollback). */
int rollout_job_start(struct engine *e, int64_t job_id);

/* Engine thread: a run was canceled; its active rollouts stop. */
int rollout_on_run_canceled(struct engine *e, int64_t run_id);

/* ---- operator actions (any thread; each is one engine call) ------------- */

struct rollout_action {
	const char *action;      /* "promote", "pause", "resume", "rollback" */
	int64_t release_id;
	const char *actor;       /* token name */
	const char *reason;      /* required */
	const char *to_stage;    /* promote --to STAGE (NULL) */
	int skip_step;           /* promote --skip-step */
	int reissue;             /* rollback --reissue */
};
/* 0, or OTA_ENOTFOUND / OTA_ECONFLICT / OTA_EINVAL with the reason.
 * *detail (new ref, may be NULL) says what changed. */
int rollout_act(struct engine *e, const struct rollout_action *a, json_t **detail);

/* ---- the controller ------------------------------------------------------ */

struct rollout_controller;
int rollout_controller_start(struct rollout_controller **out, struct engine *e, struct updsrv *us,
			     const struct otacd_config *cfg);
/* Wake the controller now (after an operator action or a new rollout). */
void rollout_controller_kick(struct rollout_controller *rc);
void rollout_controller_stop(struct rollout_controller *rc);

/* Exposure of every release with a rollout, as the update server should
 * see it: array of {"release", "product", "version", "security_counter",
 * "min_bootloader", "images": [...], "active", "salt", "segments":
 * [{"cohort", "bp"}], "rollback_to", "seq"}; a segment of a step now widening
 * also has "gen" (rollout_step_gen).  Reads through db. */
struct store;
int rollout_exposures(struct store *db, json_t **out);
/* The step generation of a rollout's step: (rollout id mod 65536) x 256
 * + step + 1 (steps past 254 share 255), fits the fleet's 24 bits.  The
 * exposure's segment of that step carries it; a device keeps the one of
 * its first offer, and gates read "@GEN/COHORT" for a step's own
 * devices (docs/gates.md). */
uint32_t rollout_step_gen(int64_t rollout_id, int step);

/* For the API: a release's rollouts with plan, state, deadlines, last
 * gate verdicts (new ref), or NULL when the release has none. */
json_t *rollout_status(struct store *db, int64_t release_id);

#endif
