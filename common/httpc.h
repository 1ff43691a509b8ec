/*
 * httpc.h - a small HTTP client (libcurl) for otacd-agent, otactl and tests.
 *
 * Every call uses its own curl easy handle, so the functions are safe to
 * call from several threads at once.  The program calls httpc_global_init()
 * once from main() before starting threads.
 *
 * Return convention: 0 when an HTTP answer came back, whatever its status
 * (the caller looks at status); a negative OTA_E* code with a message in
 * ota_error_last() when no answer came back (connection refused, timeout,
 * response larger than HTTPC_MAX_BODY, or aborted through the abort flag).
 * The bearer token is sent in the Authorization header and never appears in
 * an error message.
 */
#ifndef OTA_HTTPC_H
#define OTA_HTTPC_H

#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <jansson.h>

#include "util.h"

/* Response bodies larger than this fail the call with OTA_ETOOBIG. */
#define HTTPC_MAX_BODY ((size_t)64 << 20)

struct httpc_response {
	long status;          /* HTTP status of the final response */
	struct buf body;      /* capped at HTTPC_MAX_BODY */
	struct buf headers;   /* raw header block of the final response */
};

#define HTTPC_RESPONSE_INIT { 0, BUF_INIT, BUF_INIT }

/* curl_global_init(); call once from main before any thread starts. */
int httpc_global_init(void);
void httpc_global_cleanup(void);

/*
 * Verify https:// servers against the CA certificate(s) in PEM file path
 * (like curl --cacert) instead of the system's trust store; NULL: the
 * system's.  A server whose certificate does not verify, or does not name
 * the host of the URL, is refused (OTA_ERROR with curl's reason).
 * httpc_global_init() takes $OTACD_CACERT as the default.  Call before
 * starting threads.
 */
void httpc_set_cacert(const char *path);

/*
 * When set, every transfer in progress (and every later one) is aborted
 * within about a second once *flag becomes non-zero.  Meant for a SIGTERM
 * handler's flag so a long poll does not delay shutdown.  NULL to unset.
 */
void httpc_set_abort_flag(volatile sig_atomic_t *flag);

void httpc_response_init(struct httpc_response *r);
void httpc_response_release(struct httpc_response *r);

/*
 * The value of header `name` (case-insensitive) of response r, with
 * surrounding whitespace removed, as a new string in *out.  OTA_ENOTFOUND
 * when the response has no such header.
 */
int httpc_response_header(char **out, const struct httpc_response *r, const char *name);

/*
 * One request.  body may be NULL (len 0); content_type may be NULL.  token
 * may be NULL (no Authorization header).  timeout_ms 0 means no overall
 * timeout (connecting still times out after 10 s).  *out is initialised by
 * the call and must be released by the caller even on failure.
 */
int httpc_request(struct httpc_response *out, const char *method, const char *url,
		  const char *token, const char *content_type, const void *body,
		  size_t len, long timeout_ms);

/*
 * Like httpc_request with the body streamed from file f (size bytes, read
 * from its current position).  Used for artifact uploads.
 */
int httpc_upload(struct httpc_response *out, const char *method, const char *url,
		 const char *token, const char *content_type, FILE *f, size_t size,
		 long timeout_ms);

/*
 * A GET of url whose 2xx body is streamed into f (written from its current
 * position, flushed before returning) rather than kept in memory.  Meant
 * for large downloads such as a job's source archive.  A body of any other
 * status is not written to f: its first 64 KiB go to out->body, so the
 * caller can read the server's error answer.  A 2xx body larger than max
 * bytes fails the call with OTA_ETOOBIG, and a failed write to f with
 * OTA_ERROR; in both cases f holds a partial body.  A transfer that moves
 * no byte for 60 s counts as a failure (OTA_ERROR), whatever timeout_ms is.
 * *out is initialised by the call and must be released by the caller.
 */
int httpc_download(struct httpc_response *out, const char *url, const char *token,
		   FILE *f, size_t max, long timeout_ms);

/*
 * A JSON request: req (may be NULL: no body) is sent as application/json,
 * the answer is parsed into *out (NULL when the body is empty or, for a
 * non-2xx status, not JSON) and its status stored in *status.  A 2xx answer
 * whose body is not valid JSON fails with OTA_EINVAL.
 */
int httpc_json(json_t **out, long *status, const char *method, const char *url,
	       const char *token, json_t *req, long timeout_ms);
/* The same two with extra header lines ("Name: value", NULL-terminated). */
int httpc_request_ex(struct httpc_response *out, const char *method, const char *url,
		     const char *token, const char *content_type, const void *body,
		     size_t len, long timeout_ms, const char *const *headers);
int httpc_json_ex(json_t **out, long *status, const char *method, const char *url,
		  const char *token, const json_t *req, long timeout_ms, const char *const *headers);

/*
 * Follow a text/event-stream (Server-Sent Events) response from a GET of
 * url.  Events are parsed incrementally as bytes arrive and on_event is
 * called once per event: event is the type ("message" when the server gave
 * none), id the last event id seen (NULL if none), data the data lines
 * joined with '\n'.  Comment lines (keepalives) are skipped.
 *
 * on_event returning non-zero stops the stream: a positive value makes
 * httpc_sse return 0, a negative value is returned as is.  Otherwise the
 * call returns 0 when the server closes the stream normally and OTA_ERROR
 * when the connection fails or drops (callers resume with the last id).  A
 * non-200 answer gives OTA_EAUTH (401/403), OTA_ENOTFOUND (404) or
 * OTA_EINVAL, with the server's error text as the message.
 *
 * timeout_ms 0 means no overall timeout; a stream silent for 45 s (no data,
 * no keepalive) counts as dropped.
 */
int httpc_sse(const char *url, const char *token,
	      int (*on_event)(const char *event, const char *id, const char *data, void *ctx),
	      void *ctx, long timeout_ms);

/* Percent-encode s for use in a query string or path segment. */
char *httpc_escape(const char *s);

/* The "error" string of a JSON error answer, or NULL. */
const char *httpc_json_error(const json_t *answer);

#endif
