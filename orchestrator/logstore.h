/*
 * logstore.h - job logs as append-only files, one per job attempt.
 *
 * STATE/logs/JOB/ATTEMPT.log (or under the config's `logs:` directory).
 * Agents send chunks with the offset they start at; the store appends only the part beyond its current size, so a chunk
 * resent after a dropped connection is never duplicated, and a chunk that
 * starts past the end is refused with the current size so the agent can
 * resend from there.  The file's size is the truth; there is no separate
 * index to get out of step after a crash.
 *
 * Secrets: with a mask set (logstore_set_mask) every byte is masked before
 * it is written (common/mask.h); a few bytes that may start a secret are
 * held back in memory until the next chunk or logstore_end().  The sizes
 * this module reports to agents count those bytes as received.
 *
 * Each log is capped (max_bytes); past the cap the store writes one notice
 * and accepts (drops) everything after it.  Followers wait on
 * logstore_changes(), which is bumped on every append and by the engine on
 * every job state change.
 */
#ifndef OTA_LOGSTORE_H
#define OTA_LOGSTORE_H

#include <stdint.h>
#include <stddef.h>

#include "../common/notify.h"
#include "../common/util.h"

int logstore_init(const char *state_dir, int64_t max_bytes);
/* The same with the logs in dir instead of STATE_DIR/logs (config `logs:`). */
int logstore_open(const char *dir, int64_t max_bytes);
int64_t logstore_max_bytes(void);

/*
 * Append len bytes that the agent says start at offset.  On success *size is
 * the offset the agent should continue from.  If offset is beyond the
 * current size returns OTA_ECONFLICT with *size = current size.
 */
int logstore_append(int64_t job, int attempt, int64_t offset, const void *data,
		    size_t len, int64_t *size);
/*
 * The attempt's log is complete (finished, given up): write the bytes held
 * back for masking and forget its stream.
 */
int logstore_end(int64_t job, int attempt);
/* Mask every log, report and message with set (owned; NULL: none). */
struct mask_set;
void logstore_set_mask(struct mask_set *set);
/* The daemon's mask set, or NULL (borrowed). */
const struct mask_set *logstore_mask(void);
/* Current size (0 if no log yet). */
int64_t logstore_size(int64_t job, int attempt);
/* Read up to max bytes from offset into out (appended). */
int logstore_read(int64_t job, int attempt, int64_t offset, size_t max, struct buf *out);

struct notifier *logstore_changes(void);
/*
 * Call fn(arg) after each append, on the appending thread, outside the
 * store's lock (NULL: none).  It must only note the change and return:
 * commitwatch.h tells the other instances' live logs.
 */
void logstore_on_append(void (*fn)(void *arg), void *arg);

/*
 * Retention (retention.h): remove every log of a job (its directory);
 * no log at all is success.  Only for jobs whose attempts have ended.
 */
int logstore_remove_job(int64_t job);
/* Call fn for each job that has a log directory; stops at fn's first
 * non-zero result and returns it. */
int logstore_each_job(int (*fn)(int64_t job, void *arg), void *arg);

#endif
