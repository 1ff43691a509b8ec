/*
 * policy.h - who may use secrets and keys, and what a release may ask for.
 *
 * The rules (docs/security.md, "Protected refs and release policy"):
 *
 * 1. Trust is decided by the server, once, when a run is created, from
 *    where the run came from, and stored on the run (runs.protected,
 *    runs.trust_reason):
 *    - a run of a configured repository is protected when its ref matches
 *      the repository's `protected:` patterns (default: `default_branch`
 *      and tags `v*`); any other ref (feature branches, pull-request refs,
 *      bare commit ids) is unprotected;
 *    - an uploaded pipeline (POST /api/v1/runs, `otactl trigger FILE`) is
 *      protected only when the token's role is `admin` or `release`; an
 *      operator's upload runs unprotected;
 *    - otacd's own re-signing run (`otactl rollback --reissue`) is
 *      protected: it re-signs a build that was released under this policy.
 * 2. An unprotected run gets no secrets (job payloads carry none) and no
 *    signing key; its `release`, `soak` and `rollout` stages are skipped
 *    with the reason.  The engine checks again where it hands out secrets
 *    and starts in-daemon stages, and the release stage checks before it
 *    loads a key: defence in depth, not only at trigger time.
 * 3. A protected run's pipeline is held to its product's entry in the
 *    server's `products:` (never the pipeline's YAML): the keys that may
 *    sign it, the refs (and repositories) that may release it, the largest security-counter
 *    increase over the product's highest released counter (default 1; a
 *    product's first release counts from 0), the gates every soak and
 *    rollout of it must name (with the server's definition: the pipeline
 *    may not redefine them), and the stages that need approval (named
 *    stages, rollout steps above a percentage, a soak without a cohort)
 *    with how many distinct approvers.  Stages that `when` skips on the
 *    run's ref are not checked: they ask for nothing.
 *    A product without an entry gets the default: any configured key,
 *    protected refs only, +1, no required gates, no required approval.
 *    A pipeline that asks for less is refused before it runs.
 */
#ifndef OTA_POLICY_H
#define OTA_POLICY_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "auth.h"
#include "pipeline/pipeline.h"
#include "store.h"

struct otacd_config;

struct policy_trust {
	int protected_run;   /* secrets, keys, release, soak and rollout allowed */
	char reason[256];    /* why, in a sentence (shown on the run) */
};

/*
 * The trust of a new run.  repo: the configured repository it was read
 * from (NULL for uploads); ref: its full ref; trigger: "webhook", "api",
 * "reissue"; role and actor: the uploading token's (uploads only).
 */
void policy_trust(const struct otacd_config *c, const char *repo, const char *ref, const char *trigger,
		  enum auth_role role, const char *actor, struct policy_trust *out);

/*
 * Check and normalise one `products:` entry read from the configuration
 * (raw, as JSON).  *out gets the entry with every default filled in:
 *   { "keys": [..] | null, "refs": {"branches": [..], "tags": [..]} | null,
 *     "repositories": [..] | null,
 *     "max_counter_increase": N, "required_gates": {NAME: spec},
 *     "approvals": {"stages": [..], "above_percent": X | null, "count": N} }
 * On error returns OTA_EINVAL with the reason in err.
 */
int policy_product_parse(const json_t *raw, json_t **out, char *err, size_t n);

/* The policy entry of product (a new reference): its own or the default. */
json_t *policy_product(const struct otacd_config *c, const char *product);

/* The product a release stage releases: its `product:` or the pipeline's name. */
const char *policy_stage_product(const struct pipeline *p, const struct pl_stage *st);

/*
 * Hold a protected run's pipeline to its products' policy: every request
 * for more than the policy allows becomes a diagnostic (a reissue's ref is
 * not checked: it re-signs a released build).  db: a connection
 * to read the products' released counters.  Returns the number added.
 */
int policy_check_pipeline(const struct otacd_config *c, struct store *db, const struct pipeline *p,
			  const char *repo, const char *ref, const char *trigger, struct pl_diags *d);

/*
 * Fill in what the policy decides in a soak or rollout job's spec: the
 * server's definition of every required gate (replacing the pipeline's),
 * and extra.approvals, the number of distinct approvers its start needs
 * (approvals.count, for every stage of the product that waits for approval).
 */
void policy_apply_job(const struct otacd_config *c, const struct pipeline *p, const struct pl_stage *st,
		      json_t *job);

/*
 * At release time (stages/release.c, before a key is loaded): may run
 * run_id sign product with key at counter?  0, or OTA_EPERM with the
 * reason.  Reads the run's stored trust, not the pipeline.
 */
int policy_release_allowed(const struct otacd_config *c, struct store *db, int64_t run_id, const char *product,
			   const char *key, int64_t counter);

/* Is run_id protected (its stored trust)?  1, 0, or negative on error. */
int policy_run_protected(struct store *db, int64_t run_id);

/*
 * Warnings for a pipeline without knowing where it will run (otactl lint,
 * POST /lint): which stages run only on protected refs.  Appended to w.
 */
void policy_lint(const struct pipeline *p, struct strvec *w);

#endif
