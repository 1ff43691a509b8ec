/*
 * rollout_int.h - shared between rollout.c (state machine, engine thread)
 * and rollout_ctl.c (the controller thread and the read side).
 */
#ifndef OTA_ROLLOUT_INT_H
#define OTA_ROLLOUT_INT_H

#include <jansson.h>
#include <stdint.h>

#include "rollout.h"
#include "store.h"

/* One row of `rollouts` joined with its release. */
struct rollout_row {
	int64_t id, job_id, run_id, release_id;
	char stage[256], kind[16], state[24];
	json_t *spec;                 /* the normalised plan (rollout.h) */
	int step, bp, errors, attempt;
	int64_t step_started_at, hold_until, extend_until, seq;
	json_t *breaches;             /* gate -> consecutive breaching checks (external providers) */
	char product[256], version[64], release_state[24];
	int64_t security_counter;
};

int rollout_load(struct store *db, int64_t id, struct rollout_row *r);
void rollout_row_release(struct rollout_row *r);
int rollout_active_state(const char *state);
int rollout_plan_len(const struct rollout_row *r);
/* The next instant at or after now inside window (now when none). */
int64_t rollout_window_next(const json_t *window, int64_t now);

enum rollout_decide {
	DECIDE_NOTHING,      /* record the evaluations only */
	DECIDE_WINDOW_OPEN,  /* the step's window opened: start it */
	DECIDE_ADVANCE,      /* hold over, gates pass: next step or pass */
	DECIDE_PAUSE,        /* inconclusive too long, or providers failing */
	DECIDE_FAIL,         /* a gate proved a breach: halt and roll back */
};

struct rollout_decision {
	int64_t rollout_id, seq;     /* seq guards against acting on a stale view */
	enum rollout_decide what;
	const char *reason;
	const json_t *evals;         /* array of gate evaluations to store */
	int errors;                  /* consecutive provider errors, after this check */
	const json_t *breaches;      /* new breach counters, or NULL */
};

/*
 * The rollout tables' writes on a store, without the engine thread (the
 * engine's callers add the log line, events and the controller's kick),
 * so tests run them on both backends (tests/test_dbconv_rollout.c).
 * now is otacd ms.  Each returns 0 or a negative error unless it says.
 */
/* A soak/rollout job's row, state 'starting', its plan from the job's
 * spec; a job that has one already keeps it.  OTA_ENOTFOUND: no such job. */
int rollout_store_create(struct store *db, int64_t job_id, int64_t now);
/* Fill release_id (still 0) from the run's release, if it has one now. */
int rollout_store_find_release(struct store *db, int64_t id);
/* r's state, step, percent, deadlines, counters and reason (NULL keeps
 * the old one); seq + 1; finished_at = now when r's state is final. */
int rollout_store_save(struct store *db, const struct rollout_row *r, const char *reason, int64_t now);
/* One gate_evals row per evaluation of evals, at r's step. */
int rollout_store_evals(struct store *db, const struct rollout_row *r, const json_t *evals, int64_t now);
/* A release's fleet state; rollback_to > 0 also sets where devices go back. */
int rollout_store_release_state(struct store *db, int64_t release, const char *state, int64_t rollback_to);
/* Cancel run_id's active rollouts: how many, or a negative error. */
int rollout_store_cancel_run(struct store *db, int64_t run_id, int64_t now);

/* Engine thread (through engine_exec). */
int rollout_do_activate(struct engine *e, int64_t id);
int rollout_do_decide(struct engine *e, const struct rollout_decision *d);
/* The pipeline that re-signs release `good` for r's release (--reissue). */
int rollout_reissue_plan(struct engine *e, const struct rollout_row *r, int64_t good, char **yaml);

#endif
