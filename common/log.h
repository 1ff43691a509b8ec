/*
 * log.h - otacd's own log lines: one function for every message, three
 * formats, and a per-thread context that adds the ids of the work at hand.
 *
 *   ota_log(OTA_LOG_WARN, "engine: job %" PRId64 ": %s", id, why);
 *
 * writes one line to the log descriptor (stderr unless ota_log_setup() says
 * otherwise):
 *
 *   text    otacd: engine: job 12: …                   (the historic line)
 *   logfmt  time=2026-12-03T02:58:01.123Z level=warn msg="engine: job 12: …" run_id=4 job_id=12
 *   json    {"time":"…","level":"warn","msg":"engine: job 12: …","run_id":4,"job_id":12}
 *
 * otacd-agent writes the same lines (its own format option, set by otacd
 * for its local agents), with "program" and "agent" fields
 * (ota_log_set_origin).
 *
 * Messages carry text from peers (job names, refs, URLs, device names), so
 * every format escapes control characters: a message is always exactly one
 * line, whatever it holds.  Invalid UTF-8 bytes become '?' (JSON needs valid
 * UTF-8; logfmt readers assume it).
 *
 * The context is per thread: an API request sets its request id for the
 * time its handler runs, the engine sets the run and job it is working on.
 * Lines written meanwhile carry them; nothing at the call sites changes.
 * Set and clear in pairs (ota_log_ctx_save / _restore for nesting).
 */
#ifndef OTA_LOG_H
#define OTA_LOG_H

#include <stddef.h>
#include <stdint.h>
#include <stdarg.h>

#include "util.h"

enum ota_log_level { OTA_LOG_ERROR = 0, OTA_LOG_WARN, OTA_LOG_INFO, OTA_LOG_DEBUG };
enum ota_log_format { OTA_LOG_TEXT = 0, OTA_LOG_LOGFMT, OTA_LOG_JSON };

#define OTA_LOG_REQUEST_ID_MAX 64   /* longest request id kept (and accepted from a client) */

struct ota_log_ctx {
	char request_id[OTA_LOG_REQUEST_ID_MAX + 1];   /* "" when none */
	int64_t run_id, job_id;                        /* 0 when none */
};

/* "text", "logfmt", "json" -> the format, or -1. */
int ota_log_format_parse(const char *s);
/* The format's name ("text", "logfmt", "json"), as ota_log_format_parse reads it. */
const char *ota_log_format_name(enum ota_log_format f);
/* "error", "warn", "info", "debug" -> the level, or -1. */
int ota_log_level_parse(const char *s);
const char *ota_log_level_name(enum ota_log_level l);

/* Process-wide: the format, the most verbose level written (default info)
 * and the descriptor (default 2).  Call before threads start. */
void ota_log_setup(enum ota_log_format format, enum ota_log_level max_level, int fd);
/* The format and level ota_log_setup chose (otacd hands them to the local
 * agents it starts, so their lines read like its own). */
enum ota_log_format ota_log_current_format(void);
enum ota_log_level ota_log_current_level(void);
/* Process-wide, before threads start: whose lines these are.  program
 * replaces "otacd" as the text format's prefix and, with agent (the
 * agent's name; NULL: none), is a field of every logfmt and JSON line:
 *   {"time":…,"level":"info","msg":"job 7 attempt 1 (build) started",
 *    "program":"otacd-agent","agent":"local-1","run_id":3,"job_id":7}
 * The daemon sets neither: its lines are as before.  Copied. */
void ota_log_set_origin(const char *program, const char *agent);
/*
 * The helper programs (otacd-git, otacd-reaper) take the format and level
 * of the process that starts them as `--log-format F --log-level L`:
 * ota_log_args() reads those two options from argv[*i] on (advancing *i
 * past them), calls ota_log_setup(…, 2) and sets program as the origin.
 * 0, or -1 with the message in *why (static) when a value is unknown.
 */
int ota_log_args(char **argv, int *i, const char *program, const char **why);

/* Whether a line of this level would be written (skip costly messages). */
int ota_log_enabled(enum ota_log_level level);

void ota_log(enum ota_log_level level, const char *fmt, ...) OTA_PRINTF(2, 3);
void ota_logv(enum ota_log_level level, const char *fmt, va_list ap);

/* ---- this thread's context --------------------------------------------- */

/* The request id of the API request this thread is answering (NULL or ""
 * clears it; longer ids are cut at OTA_LOG_REQUEST_ID_MAX). */
void ota_log_ctx_request(const char *id);
/* The run and job this thread works on (0: none). */
void ota_log_ctx_work(int64_t run_id, int64_t job_id);
void ota_log_ctx_save(struct ota_log_ctx *out);
void ota_log_ctx_restore(const struct ota_log_ctx *saved);
void ota_log_ctx_clear(void);

/*
 * A client's X-Request-Id is kept when it is 1..OTA_LOG_REQUEST_ID_MAX bytes
 * of letters, digits and "-_.:/+=@"; else (and when there is none) otacd
 * makes its own.  1 when id is acceptable.
 */
int ota_log_request_id_ok(const char *id);
/* A new request id: 16 lowercase hex digits from the OS's random source. */
void ota_log_request_id_new(char out[OTA_LOG_REQUEST_ID_MAX + 1]);

/* The line (with its '\n') that ota_log writes, for tests and the fuzzer:
 * time_ms is wall-clock ms since the epoch, ctx may be NULL. */
void ota_log_format_line(struct buf *out, enum ota_log_format format, int64_t time_ms, enum ota_log_level level,
			 const char *msg, const struct ota_log_ctx *ctx);

#endif
