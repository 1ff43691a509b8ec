/*
 * util.h - small helpers shared by otacd, otacd-agent and otactl.
 *
 * Error convention (as in libgit2): functions return 0 on success and a
 * negative OTA_E* code on failure, and leave a human-readable message in a
 * per-thread slot, read with ota_error_last().  Callers that only propagate
 * do not overwrite the message; callers that add context use
 * ota_error_prefix().
 *
 * struct buf is the one growable byte buffer.  It always keeps a NUL after
 * the data, and it has a hard cap (max): anything read from the network goes
 * through a capped buf so a peer cannot make us allocate without bound.
 *
 * struct strvec is a NULL-terminated vector of owned strings (argv, env,
 * label lists).
 */
#ifndef OTA_UTIL_H
#define OTA_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdarg.h>

enum {
	OTA_OK = 0,
	OTA_ERROR = -1,      /* generic failure, see message */
	OTA_EINVAL = -2,     /* bad input from a user or peer */
	OTA_ENOTFOUND = -3,  /* no such object */
	OTA_ECONFLICT = -4,  /* state does not allow it (stale lease, finished run) */
	OTA_ETOOBIG = -5,    /* a size cap was hit */
	OTA_EAUTH = -6,      /* missing or wrong credentials */
	OTA_ENOMEM = -7,
	OTA_EPERM = -8,      /* refused by policy (orchestrator/policy.h) */
};

#define OTA_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define OTA_PRINTF(f, a) __attribute__((format(printf, f, a)))

/* Per-thread last error message. */
int ota_error_set(int code, const char *fmt, ...) OTA_PRINTF(2, 3);
void ota_error_prefix(const char *fmt, ...) OTA_PRINTF(1, 2);
const char *ota_error_last(void);
void ota_error_clear(void);

/* Allocation that aborts on out-of-memory: a daemon that cannot allocate a
 * few bytes cannot report anything useful either. */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
char *xasprintf(const char *fmt, ...) OTA_PRINTF(1, 2);

/* ---- struct buf ---------------------------------------------------- */

#define BUF_NOLIMIT ((size_t)-1)

struct buf {
	char *ptr;     /* always NUL-terminated when cap > 0 */
	size_t len;
	size_t cap;
	size_t max;    /* hard cap on len; BUF_NOLIMIT for none */
};

#define BUF_INIT { NULL, 0, 0, BUF_NOLIMIT }

void buf_init(struct buf *b, size_t max);
/* Append; OTA_ETOOBIG (and nothing appended) if len would exceed max. */
int buf_put(struct buf *b, const void *data, size_t len);
int buf_puts(struct buf *b, const char *s);
int buf_putc(struct buf *b, char c);
int buf_printf(struct buf *b, const char *fmt, ...) OTA_PRINTF(2, 3);
int buf_vprintf(struct buf *b, const char *fmt, va_list ap);
void buf_clear(struct buf *b);
/* Returns the data (never NULL: "" when empty). */
const char *buf_cstr(const struct buf *b);
/* Hands the allocation to the caller and re-initialises b. */
char *buf_detach(struct buf *b);
void buf_release(struct buf *b);

/* ---- struct strvec ------------------------------------------------- */

struct strvec {
	char **v;   /* NULL-terminated when n > 0 */
	size_t n;
	size_t cap;
};

#define STRVEC_INIT { NULL, 0, 0 }

void strvec_push(struct strvec *sv, const char *s);
void strvec_pushf(struct strvec *sv, const char *fmt, ...) OTA_PRINTF(2, 3);
int strvec_contains(const struct strvec *sv, const char *s);
void strvec_clear(struct strvec *sv);

/* ---- misc ---------------------------------------------------------- */

/* Levenshtein distance, for did-you-mean suggestions. */
size_t ota_edit_distance(const char *a, const char *b);
/* The candidate closest to word, or NULL when none is close enough. */
const char *ota_did_you_mean(const char *word, const char *const *candidates, size_t n);

/* Parse a duration: "90", "30s", "10m", "1h30m", "7d", "250ms".  Plain numbers
 * are seconds.  Result in milliseconds. */
int ota_parse_duration_ms(const char *s, int64_t *out);

/* Read a whole file (capped at max bytes) into out. */
int ota_read_file(struct buf *out, const char *path, size_t max);
/* Write a file atomically: temp file in the same directory, fsync, rename. */
int ota_write_file_atomic(const char *path, const void *data, size_t len, int mode);
/* mkdir -p */
int ota_mkdir_p(const char *path, int mode);
/* DIR/name where DIR is the directory of this process's executable (a
 * program installed next to us: otacd-agent, otacd-git, otacd-reaper);
 * name alone when /proc/self/exe cannot be read.  Caller frees. */
char *ota_sibling_path(const char *name);

/* Lowercase hex of n bytes into out (2n+1 bytes). */
void ota_hex(char *out, const unsigned char *in, size_t n);
/* SHA-256 of len bytes as 64 lowercase hex digits. */
void ota_sha256_hex(const void *data, size_t len, char out[65]);
/* Random bytes from the OS, as lowercase hex (2n chars). */
int ota_random_hex(char *out, size_t nbytes);

/*
 * The one rule for artifact names, shared by the daemon (which refuses an
 * upload) and the agent (which refuses before uploading): a relative path
 * of 1-255 bytes, len bytes long (so an embedded NUL, as in "fw.bin%00.txt",
 * is caught), no control characters (0x00-0x1f, 0x7f) or backslash, no
 * leading '/', no empty, "." or ".." component.  0, or OTA_EINVAL with the
 * reason in why[n].
 */
int ota_artifact_name_check(const char *name, size_t len, char *why, size_t n);

#endif
