/*
 * diskguard.h - the state directory's disk, watched so that a full disk
 * degrades otacd instead of spinning it (docs/operations.md, "When the
 * disk fills").
 *
 * Two states.  `ok`: all work is taken.  `low`: the filesystem holding the
 * state directory has less free space than the reserve, or a write there
 * failed for want of space.  While low, new work (runs, triggers,
 * webhook deliveries, artifact and report uploads) is refused with 507 and
 * a message, job logs are cut with a notice, and the reserve file
 * (STATE/disk.reserve, `disk_reserve` bytes made at start) is given back,
 * so that jobs already running can still commit their heartbeats and
 * finishes.  Back to `ok` once twice the reserve is free again: the reserve
 * is made again and work is taken.
 *
 * Every function is thread-safe.  Writers that fail call
 * diskguard_note_failure(); everything else reads diskguard_low().
 */
#ifndef OTA_DISKGUARD_H
#define OTA_DISKGUARD_H

#include <stdint.h>

#include "../common/util.h"

#define DISKGUARD_DEFAULT_RESERVE ((int64_t)64 << 20)
/* At most one line of "still full" per this many milliseconds. */
#define DISKGUARD_LOG_EVERY_MS 60000

/* Watch the filesystem of state_dir; make the reserve file of
 * reserve_bytes (0: no reserve; negative: the default, 64 MiB or a
 * sixteenth of the filesystem, whichever is smaller).  Enters `low` at once when the reserve
 * cannot be made. */
int diskguard_init(const char *state_dir, int64_t reserve_bytes);

/* Forget everything (tests, shutdown). */
void diskguard_shutdown(void);

/* A write under the state directory failed for want of space (SQLITE_FULL,
 * ENOSPC, or an I/O error on the database).  what: "database commit",
 * "log write", ...  Enters `low` and logs it; later failures are counted
 * and summed up at most once per DISKGUARD_LOG_EVERY_MS. */
void diskguard_note_failure(const char *what);

/* Look at the free space (at most once a second, whatever the callers):
 * enter or leave `low`.  Returns diskguard_low(). */
int diskguard_poll(void);

/* 1 while new work is refused. */
int diskguard_low(void);

/* How long the engine waits before it retries a commit that failed for
 * want of space: doubles from 1 s to 30 s while failures go on. */
int64_t diskguard_backoff_ms(void);

/* The one sentence the API, /readyz and the page show while low ("" when
 * ok). */
void diskguard_message(char *out, size_t n);

struct diskguard_stats {
	int low;
	int64_t low_since_ms;   /* real time the state was entered; 0 when ok */
	int64_t free_bytes;     /* at the last poll */
	int64_t reserve_bytes;  /* configured */
	int reserve_held;       /* the reserve file is in place */
	uint64_t failures;      /* writes that failed for want of space, ever */
	uint64_t episodes;      /* times `low` was entered */
};
void diskguard_stats(struct diskguard_stats *out);

#endif
