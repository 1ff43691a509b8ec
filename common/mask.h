/*
 * mask.h - secret masking for job logs, reports and messages.
 *
 * One rule, used by the agent (before a byte leaves the host) and by the
 * daemon (before a byte reaches a log file, a report or a message), so a
 * hostile or old agent cannot bypass it.
 *
 * A mask set is built once from the secret values.  For each secret it
 * holds these patterns:
 *   - the value itself (any length >= 1);
 *   - each line of a multi-line value that is at least MASK_MIN_LEN bytes
 *     (a step that prints the value line by line, or `sed` over it);
 *   - its base64 at all three byte alignments, standard and URL-safe
 *     alphabets: the run of characters that depend on the value alone (the
 *     one or two characters shared with neighbouring bytes are left);
 *   - its URL (percent) encoding, upper and lower case hex, when that
 *     differs from the value.
 * Derived patterns shorter than MASK_MIN_LEN are dropped (they would mask
 * ordinary text).  Every byte inside a match becomes '*' except '\n', so the
 * masked text has the same length and the same lines: log offsets stay
 * the agent's offsets.
 *
 * A mask stream masks a byte stream that arrives in pieces cut anywhere.
 * It holds back the shortest tail that could still be the start of a
 * pattern (never more than the longest pattern - 1 bytes) and releases it
 * when the next piece decides it, or on mask_stream_flush().  A stream
 * opened with `resumed` also masks a leading piece that is the end of a
 * pattern (the daemon lost its held tail in a restart and the log goes on
 * mid-secret).
 */
#ifndef OTA_MASK_H
#define OTA_MASK_H

#include <stddef.h>

#include "util.h"

#define MASK_MIN_LEN 4

struct mask_set;

/* Build a set from n NUL-terminated secret values (empty ones ignored). */
struct mask_set *mask_set_new(const char *const *secrets, size_t n);
void mask_set_free(struct mask_set *set);
/* Number of patterns (0: masking is a copy). */
size_t mask_set_count(const struct mask_set *set);
/* Longest pattern in bytes. */
size_t mask_set_longest(const struct mask_set *set);

struct mask_stream {
	const struct mask_set *set; /* borrowed; NULL masks nothing */
	struct buf pend;            /* held-back raw bytes */
	size_t covered;             /* leading bytes of pend known to be inside a match */
	int resumed;                /* mask a leading pattern end, once */
};

void mask_stream_init(struct mask_stream *s, const struct mask_set *set, int resumed);
/* Mask len more bytes; append what is decided to out. */
int mask_stream_feed(struct mask_stream *s, const void *data, size_t len, struct buf *out);
/* End of stream: append everything held back (masked) to out. */
int mask_stream_flush(struct mask_stream *s, struct buf *out);
/* Bytes held back right now. */
size_t mask_stream_held(const struct mask_stream *s);
void mask_stream_release(struct mask_stream *s);

/* Mask a whole buffer: out gets len bytes. */
int mask_buffer(const struct mask_set *set, const void *data, size_t len, struct buf *out);
/* Mask a NUL-terminated string in place (same length). Returns the number of bytes masked. */
size_t mask_string(const struct mask_set *set, char *s);

#endif
