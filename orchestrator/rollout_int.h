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

/* Engine thread (through engine_exec). */
int rollout_do_activate(struct engine *e, int64_t id);
int rollout_do_decide(struct engine *e, const struct rollout_decision *d);
/* The pipeline that re-signs release `good` for r's release (--reissue). */
int rollout_reissue_plan(struct engine *e, const struct rollout_row *r, int64_t good, char **yaml);

#endif
