/*
 * retention.h - pruning finished runs' rows and logs by age and count, and
 * keeping the database file's size in check (docs/operations.md,
 * "Retention").
 *
 * Everything here runs on the engine thread, which owns the writer
 * connection.  The engine calls retention_batch() inside one of its own
 * transactions, one small batch at a time, between other commands, so the
 * pruner never holds the writer for long; retention_maintain() runs
 * outside any transaction (checkpoint, incremental vacuum).
 *
 * Kept whatever their age or number: runs that have not finished, runs
 * that produced a release or ran a soak or rollout (the audit log,
 * provenance and gate evaluations name them), runs holding an artifact a
 * release keeps, and the newest run (so that ids are never reused).
 *
 * Crash safety: a run's rows go in one transaction; its log files are
 * removed only after that commit (retention_after_commit), and a start
 * sweeps log directories whose job no longer exists
 * (retention_sweep_orphans), so a kill between the two leaves nothing
 * behind.  Logs pruned by logs_max_age (runs kept) are removed before the
 * transaction that advances the cursor (meta "retention.logs_through")
 * commits, so a kill repeats the removal rather than skipping it.
 */
#ifndef OTA_RETENTION_H
#define OTA_RETENTION_H

#include <stddef.h>
#include <stdint.h>

#include "../common/util.h"
#include "store.h"

struct retention_cfg {
	int64_t runs_max_age_ms;   /* finished runs older than this go (otacd time; 0: no age bound) */
	int64_t runs_keep;         /* at most this many newest runs are kept (0: no count bound) */
	int64_t logs_max_age_ms;   /* logs of runs finished longer ago go, rows stay (0: with the run) */
	int64_t batch;             /* runs per transaction */
	/* the notification outbox's finished rows (sent, refused, expired;
	 * pending rows are the sender's): older than this (real time, done_at)
	 * and beyond the newest N go, `batch` x 20 rows per transaction (0:
	 * no such bound) */
	int64_t outbox_max_age_ms;
	int64_t outbox_keep;
};

/*
 * Defaults of the embedded configuration (docs/config.md): a count bound
 * only.  It bounds the database (~180 MB) and deletes nothing on an
 * upgrade of a smaller installation; an age bound would depend on otacd
 * time, which --time-scale runs thousands of times faster in demos and
 * tests (180 days in 72 minutes at 3600).
 */
#define RETENTION_DEFAULT_RUNS_MAX_AGE_MS 0
#define RETENTION_DEFAULT_RUNS_KEEP 50000
#define RETENTION_DEFAULT_LOGS_MAX_AGE_MS 0
#define RETENTION_DEFAULT_BATCH 50
/* The outbox's finished rows only say what was delivered (each event's
 * state change is in its run): a week of them, and at most 10,000 (~10
 * MB of payloads), whatever the rate.  Outbox times are real time, so
 * --time-scale does not shorten the week. */
#define RETENTION_DEFAULT_OUTBOX_MAX_AGE_MS ((int64_t)7 * 86400 * 1000)
#define RETENTION_DEFAULT_OUTBOX_KEEP 10000

/* True when the configuration prunes anything at all. */
int retention_enabled(const struct retention_cfg *cfg);

enum retention_phase { RET_RUNS, RET_LOGS, RET_EXTRAS, RET_OUTBOX, RET_DONE };

/* One pass over the database, carried across batches. */
struct retention_pass {
	enum retention_phase phase;
	int64_t now;                /* otacd ms the pass started */
	int64_t now_real;           /* real ms the pass started (the outbox's clock) */
	int64_t cursor;             /* the runs phase resumes after this id */
	int64_t runs_deleted, logs_pruned, extras_deleted, outbox_deleted;
};

/* What a batch leaves to do after its commit. */
struct retention_out {
	int64_t *dead_jobs;         /* jobs whose log directories go */
	size_t ndead_jobs, capdead_jobs;
	struct strvec dead_objects; /* artifact objects no row names any more */
	int runs_deleted;
};

void retention_pass_start(struct retention_pass *p, int64_t now_ms);
/*
 * One batch of pass p, inside the caller's transaction on db.  Returns 1
 * while the pass has more to do, 0 once it is complete, negative on error
 * (the caller rolls back; out is then to be discarded).
 */
int retention_batch(struct store *db, const struct retention_cfg *cfg, struct retention_pass *p,
		    struct retention_out *out);
/* After the batch committed: remove the dead jobs' logs; resets out. */
void retention_after_commit(struct retention_out *out);
void retention_out_release(struct retention_out *out);

/* Remove log directories of jobs the database no longer has (a start
 * after a kill between a prune's commit and its file removal). Outside a
 * transaction; returns how many went. */
int retention_sweep_orphans(struct store *db);

/*
 * Outside a transaction: give back up to max_pages free pages when the
 * database uses incremental auto-vacuum, then checkpoint and truncate the
 * WAL if no reader needs it (waiting at most ~50 ms for readers; else
 * skipped until next time).  *freed is the pages given back.  On
 * PostgreSQL nothing (autovacuum's job): db_maintain() in db/db.h.
 */
int retention_maintain(struct store *db, int max_pages, int *freed);

#endif
