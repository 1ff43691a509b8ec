/*
 * engine.h - runs, stages and jobs: the one thread that changes them.
 *
 * The engine thread owns every state transition and the database's only
 * writer connection.  Other threads (HTTP handlers, the local-agent
 * supervisor) never write run state themselves: they call the functions
 * below, which queue a command to the engine thread, wait for it to finish
 * and return its result.  Each command runs inside one SQLite transaction,
 * so a state change is either fully recorded or not at all, whenever the
 * process dies.
 *
 * Scheduling: a run's stages form a DAG (needs).  A stage starts when every
 * stage it needs has passed; its jobs then enter the dispatch queue, from
 * which agents take the oldest job whose labels they all carry.  A stage
 * whose needs did not all pass is skipped (fail-fast).  A finished attempt is
 * retried by the job's retry policy; leases and job deadlines are absolute
 * wall-clock times in the database, checked by the engine thread whenever
 * the next one falls due.
 *
 * Recovery: on start the engine re-reads every unfinished run, rebuilds the
 * dispatch queue and re-evaluates each run, so a daemon killed at any
 * instant continues where the database says it was.
 */
#ifndef OTA_ENGINE_H
#define OTA_ENGINE_H

#include <jansson.h>
#include <stdint.h>

#include "../common/notify.h"
#include "../common/util.h"
#include "../stages/stage.h"
#include "auth.h"
#include "pipeline/pipeline.h"
#include "retention.h"
#include "store.h"

struct engine_config {
	int64_t lease_ms;            /* an agent's claim on a job lasts this long without heartbeat */
	int64_t heartbeat_ms;        /* how often agents are told to heartbeat */
	int64_t default_timeout_ms;  /* job timeout when the pipeline sets none */
	json_t *secrets;             /* object NAME -> value (borrowed) */
	int64_t max_run_artifact_bytes;  /* all artifacts of one run together (0: no cap) */
	int64_t artifact_retention_ms;   /* unreleased artifacts of finished runs live this long (otacd time; 0: forever) */
	const struct otacd_config *config;  /* handed to in-daemon stage kinds (borrowed) */
	struct retention_cfg retention;  /* finished runs' rows and logs (retention.h) */
	/* issue 16: the epoch this instance leads under (db_leader.h); every
	 * call's transaction is fenced with it.  0: no fence (SQLite) */
	int64_t leader_epoch;
};

struct engine;

/* Start the engine thread on the writer connection db (borrowed). */
int engine_start(struct engine **out, struct store *db, const struct engine_config *cfg);
void engine_stop(struct engine *e);

struct trigger_req {
	const char *yaml;
	size_t len;
	const char *file;        /* pipeline file name, for messages */
	const char *ref;         /* "refs/heads/main"; default refs/heads/main */
	const char *commit;      /* may be NULL */
	const char *trigger;     /* "api", "webhook", ... */
	/* Where the code came from (all optional; NULL for uploaded pipelines). */
	const char *repo;
	const char *tree;
	const char *author;
	const char *committer;
	const char *message;
	const char *pusher;
	int64_t delivery_id;     /* the delivery this run answers (0: none) */
	int64_t pr_number;       /* issue 17: a pull/merge request's number (0: none) */
	const char *pr_base;     /* and the branch it would merge into */
	/* Who uploaded it (uploads only): decides its trust (policy.h). */
	enum auth_role role;
	const char *actor;       /* the token's name */
};

/*
 * Validate and create a run.  On a pipeline that does not validate returns
 * OTA_EINVAL with every problem in diags (diags must be initialised by the
 * caller) and stores nothing.  The run's trust is decided here from where
 * it came from (orchestrator/policy.h) and stored with it; a protected
 * run whose pipeline asks for more than the release policy allows returns
 * OTA_EPERM with every reason in diags, stores nothing and is audited
 * (`policy_refused`).
 */
int engine_trigger(struct engine *e, const struct trigger_req *req, int64_t *run_id,
		   struct pl_diags *diags);
/*
 * Record a run that failed before it could start (its pipeline file does
 * not validate, or its commit could not be fetched): state failed, error
 * set, no stages.  Used for git sources, where the user must see why a push
 * did nothing.  name is shown as the pipeline's name.
 */
int engine_record_failed_run(struct engine *e, const struct trigger_req *req, const char *name,
			     const char *error, int64_t *run_id);

/* A webhook delivery (or manual trigger) to turn into a run. */
struct delivery {
	const char *provider;    /* github, gitlab, gitea, api */
	const char *delivery;    /* the sender's delivery id */
	const char *repo;
	const char *ref;
	const char *before;
	const char *after;       /* NULL for manual triggers: resolve ref */
	int forced;
	const char *pusher;
	int64_t pr_number;       /* issue 17: a pull/merge request (0: a push) */
	const char *pr_base;
};
/*
 * Record a delivery, state "pending".  If the same (provider, delivery) was
 * recorded before, *duplicate is set and *id is the earlier one.
 */
int engine_delivery_add(struct engine *e, const struct delivery *d, int64_t *id, int *duplicate);
/* Close a delivery that started no run, with the reason. */
int engine_delivery_done(struct engine *e, int64_t id, const char *reason);
/*
 * Scheduled pipelines (sched/sched.h).  engine_schedule_fire records, in one
 * transaction, a delivery for (repo, schedule `name`, ref) with delivery id
 * "NAME@SLOT" and the schedule's last slot -- unless that slot (or a later
 * one) already fired, in which case *delivery_id is 0.
 * engine_schedule_since reads the last slot, recording `now` as the start
 * of a schedule seen for the first time.
 */
int engine_schedule_fire(struct engine *e, const char *repo, const char *name, const char *ref,
			 int64_t slot_ms, int64_t *delivery_id);
int engine_schedule_since(struct engine *e, const char *repo, const char *name, int64_t now_ms,
			  int64_t *since_ms);

/* OTA_ENOTFOUND, or OTA_ECONFLICT when the run already finished. */
/* Cancel a run that has not finished; audited as `cancel` by actor (the
 * token's name) with reason (may be NULL). */
int engine_cancel_run(struct engine *e, int64_t run_id, const char *actor, const char *reason);

int engine_agent_register(struct engine *e, const char *name, const json_t *labels,
			  int local, int64_t *agent_id);
/* Hand the oldest matching queued job to the agent; *job is NULL if none.
 * Only the agent's labels that are also in allowed count (NULL: all of
 * them).  The job carries "job_token", the attempt's credential (only its
 * SHA-256 is stored, in job_attempts.token_hash). */
int engine_claim(struct engine *e, int64_t agent_id, const json_t *allowed, json_t **job);
/* Generation of the dispatch queue: bumped whenever a job becomes claimable. */
struct notifier *engine_work(struct engine *e);
/* OTA_ECONFLICT when the lease is gone; *cancel set when the job was canceled. */
int engine_heartbeat(struct engine *e, int64_t agent_id, int64_t job_id, int attempt, int *cancel);
/* Record an attempt's result (exactly once); *state (static string) is the job's state after. */
int engine_finish(struct engine *e, int64_t agent_id, int64_t job_id, int attempt,
		  const struct job_result *r, const char **state);

struct artifact_info {
	const char *name;
	const char *sha256;
	int64_t size;
	const char *type;       /* may be NULL */
	const char *hardware;   /* may be NULL */
};
/* OTA_ECONFLICT when the attempt is no longer running. */
int engine_artifact_add(struct engine *e, int64_t job_id, int attempt,
			const struct artifact_info *a, int64_t *artifact_id);

/* What a release stage made, recorded in one transaction. */
struct release_record {
	int64_t run_id;
	const char *product, *version, *branch, *key_id;
	int64_t security_counter;
	int64_t manifest_artifact, envelope_artifact, provenance_artifact;
	const int64_t *keep;          /* artifact ids kept forever (inputs and outputs) */
	size_t nkeep;
	int64_t reissue_of;           /* a re-signed copy of this release (rollback --reissue), 0 if none */
	int64_t reissue_for;          /* ... made to replace this (halted) release */
};
/*
 * Record a release.  Refused (OTA_ECONFLICT, with the reason) when its
 * security counter is lower than the product's highest released counter
 * (devices holding that counter would refuse it), or its version is not
 * greater than the last release of the product on the same branch.  A run
 * that already has its release gets that one (*release_id) and 0.
 */
int engine_release_record(struct engine *e, const struct release_record *r, int64_t *release_id);
/* The same checks without recording, for a stage to fail before signing. */
int release_check(const char *product, const char *branch, const char *version, int64_t security_counter);
/* Compare "X.Y.Z" versions numerically: <0, 0, >0. */
int release_version_cmp(const char *a, const char *b);

/* Expire unreleased artifacts past the retention now (normally done by the
 * engine every minute).  *removed is the number of records removed. */
int engine_artifact_gc(struct engine *e, int *removed);

/* True for passed, failed, canceled, skipped. */
int engine_state_final(const char *state);

#endif
