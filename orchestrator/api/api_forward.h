/*
 * api_forward.h - a follower relays a state-changing request to the leader
 * (issue 16; docs/scale.md, "What a follower does", "Forwarding").
 *
 * Several otacd instances share one PostgreSQL database; only the leader
 * runs the engine (db_leader.h).  A follower that receives a write sends
 * it on, over HTTP, to the address the leader recorded in
 * otacd_leader.holder (db_leader_current()), and relays the leader's
 * answer: status, body and a few headers.  The hop adds no trust: the
 * leader authenticates the client's own credentials again, the follower
 * adds no header the leader trusts (but the device API's signed client
 * certificate, q->extra, which the leader verifies: fwdcert.h; the
 * download check and /metrics' fleet-wide ask in q->extra only take
 * away), the target is the database's holder
 * only (never anything in the request), and that holder is checked as an
 * http(s)://HOST:PORT base URL before any byte is sent.
 *
 * What goes to the leader: the method, the path (as libmicrohttpd decoded
 * it, encoded again), the query, the body, and an allow-list of request
 * headers (Authorization, Idempotency-Key, Content-Type, Accept,
 * User-Agent, the forges' webhook event, delivery and signature headers,
 * X-Device-Id: a device's own claim, which the leader checks),
 * plus X-Request-Id, X-Forwarded-For and Forwarded (the client's address,
 * for the leader's logs only) and X-Otacd-Forwarded (one hop at most: an
 * instance asked to forward a request that already carries it answers 503
 * instead).  Hop-by-hop headers (Connection, Keep-Alive, TE, Trailer,
 * Transfer-Encoding, Upgrade, Proxy-*) and Host never pass.  What comes
 * back: the status and body byte for byte, and Content-Type, Retry-After,
 * Location, Cache-Control, WWW-Authenticate, Idempotent-Replayed, X-Commit,
 * X-Sha256.
 *
 * Streamed routes (api_forward_begin_stream(), struct api_fwd_stream): an
 * agent's artifact upload, spooled by the caller to a file that has no
 * name (api_forward_spool()) and sent from it (API_FWD_BODY_FD), and the
 * agents' GETs of a job, whose answer is spooled the same way and relayed
 * from the file (API_FWD_SPOOL_ANSWER, capped by the caller instead of
 * API_FWD_MAX_ANSWER).  Memory stays flat whatever the size; a client gone
 * midway never reaches the leader; a spool goes with its descriptor.
 *
 * No leader, a bad holder, a leader that cannot be reached or does not
 * answer in time, or a second hop: 503 with Retry-After: 1 (the leader is
 * changing; a retry with the same Idempotency-Key is answered once).  An
 * answer past API_FWD_MAX_ANSWER or unreadable: 502.  A body past the
 * route's cap: 413, nothing sent.
 *
 * Two ways to call it.  api_forward() blocks its thread for the hop (at
 * most timeout_ms).  api_forward_begin() suspends the client's connection
 * (libmicrohttpd's MHD_ALLOW_SUSPEND_RESUME, as api_wait.c parks) and
 * sends on a thread of its own, at most API_FWD_MAX_INFLIGHT at once; the
 * connection is resumed once the answer is there.  The follower gate uses
 * begin: two writes park on the leader for up to 60 s (a trigger of a
 * repository, an agent's claim), and a blocked pool thread would stall
 * every other request of the follower.  Any thread; a struct api_fwd is
 * shared by all of them.
 *
 * Integration (the follower gate, api.c's handle_call, where the route's
 * handler would run, after authentication and after the body was read
 * within the route's cap, before idem_check; one line of each):
 *
 *   q = (struct api_fwd_req){ r->conn, holder, r->method, r->url, r->body.ptr, r->body.len,
 *                             body_cap(r->route->body), r->request_id, 0 };
 *   if (api_forward_begin(fwd, &q, &r->fwd, &status, &resp) == 0) { r->resume = fwd_done; return MHD_YES; }
 *   ...queue status/resp now (api_queue_response, MHD_destroy_response)
 *   fwd_done(): api_forward_end(r->fwd, &status, &resp), r->fwd = NULL; queue them the same way
 *   req_free(): api_forward_job_free(r->fwd);   api_stop(): api_fwd_drain(fwd) before MHD_stop_daemon
 *
 * for every route that is not a read (GET, HEAD); the agents' artifact
 * upload and reads of a job through api_forward_begin_stream()
 * (api_follower.c: api_follower_prepare() opens the upload's spool).
 * The device API on a follower forwards its reads too (API_FWD_READ).
 */
#ifndef OTA_API_FORWARD_H
#define OTA_API_FORWARD_H

#include <stddef.h>
#include <stdint.h>

#include <microhttpd.h>

#include "../../common/util.h"

/* The largest body forwarded (the largest in-memory cap, report files). */
#define API_FWD_MAX_BODY ((size_t)64 << 20)
/* The largest answer relayed; past it the client gets 502. */
#define API_FWD_MAX_ANSWER ((size_t)4 << 20)
/* The leader's URL with the path and query encoded again; past it, 414. */
#define API_FWD_MAX_URL (192 * 1024)
/* Forwards on threads of their own at once; past it, 503. */
#define API_FWD_MAX_INFLIGHT 64
/* The hop's marker (see above). */
#define API_FWD_MARKER "X-Otacd-Forwarded"

struct api_fwd_config {
	long connect_timeout_ms;  /* 0: 1000 */
	long timeout_ms;          /* the whole hop; 0: 75000 (the leader parks a
				   * trigger or an agent's claim up to 60 s) */
	const char *cacert;       /* PEM CA file for https:// leaders (forward_ca:); NULL: the system's */
};

struct api_fwd;

/* forward_ca: (config) checked at start: 0 when path is a readable PEM
 * file with one or more X.509 certificates, each of which parses;
 * OTA_EINVAL with the reason otherwise (otacd exits 2). */
int api_fwd_cacert_check(const char *path);

int api_fwd_new(struct api_fwd **out, const struct api_fwd_config *cfg);
/* Abort the forwards on their way (their answers become 503), wait until
 * every suspended connection was resumed, and take no more (503).  Call
 * before stopping the libmicrohttpd daemons.  api_fwd_free() drains too. */
void api_fwd_drain(struct api_fwd *f);
void api_fwd_free(struct api_fwd *f);

struct api_fwd_req {
	struct MHD_Connection *conn;  /* the client's request: headers, query, address */
	const char *leader;           /* otacd_leader.holder as read (NULL: nobody leads) */
	const char *method;           /* POST, PUT, PATCH or DELETE */
	const char *url;              /* the path as libmicrohttpd gave it */
	const char *body;             /* the whole body (may be NULL when len is 0) */
	size_t len;
	size_t max_body;              /* the route's cap; 0: API_FWD_MAX_BODY */
	const char *request_id;       /* sent as X-Request-Id; may be NULL */
	long timeout_ms;              /* this hop's deadline; 0: the pool's */
	const char *const *extra;     /* more "Name: value" lines the caller vouches for (the device API's
				       * signed client certificate, fwdcert.h; its download check), NULL-ended; may be NULL */
	const char *tail;             /* appended to a 200 answer relayed from memory (a follower's own
				       * counters after the leader's /metrics, devapi_fwd.c); NULL: none */
	size_t tail_len;
};

/* What a streamed route adds (api_forward_begin_stream()). */
struct api_fwd_stream {
	unsigned flags;               /* API_FWD_BODY_FD, API_FWD_SPOOL_ANSWER */
	int body_fd;                  /* API_FWD_BODY_FD: the body is q->len bytes of this file from offset 0,
				       * read with pread (q->body unused); open until the job ends */
	const char *spool_dir;        /* API_FWD_SPOOL_ANSWER: where the answer's unnamed file is made */
	uint64_t max_answer;          /* API_FWD_SPOOL_ANSWER: the answer's cap (0: API_FWD_MAX_ANSWER);
				       * past it 502 */
};
/* The body comes from s->body_fd (an upload spooled by api_forward_spool()). */
#define API_FWD_BODY_FD 1u
/* The answer is spooled to an unnamed file under s->spool_dir, capped at
 * s->max_answer instead of API_FWD_MAX_ANSWER, and relayed from it; this is
 * also what lets GET pass (the agents' reads of a job).  No total deadline
 * then: a hop that moves less than 1 KiB/s for 60 s is cut (503). */
#define API_FWD_SPOOL_ANSWER 2u
/* A GET whose answer is small and relayed from memory (API_FWD_MAX_ANSWER):
 * the device API's reads on a follower, which has no fleet to answer them
 * (devapi_fwd.c: /metrics, the registrations' audit, the PKI's reads, a
 * download's check). */
#define API_FWD_READ 4u

/*
 * A spool file: 0 and *fd, a file open for reading and writing in dir that
 * has no name (O_TMPFILE, else mkstemp and unlink at once), mode 0600: it
 * is gone when *fd is closed, on every path, and no other process can open
 * it by name.  Negative with the reason otherwise.
 */
int api_forward_spool(const char *dir, int *fd);

/*
 * Forward q and build the answer for the client: *status and *resp (queue
 * it, then MHD_destroy_response()) are always set.  0 when the leader's
 * answer is relayed; negative (reason in ota_error_last(), also logged)
 * when *resp is this instance's own 413, 502 or 503.
 */
int api_forward(struct api_fwd *f, const struct api_fwd_req *q, unsigned *status, struct MHD_Response **resp);

/*
 * The same on a suspended connection.  1: the answer is decided now
 * (*status, *resp set, as api_forward's own 413/503); 0: q->conn is
 * suspended and *job is on its way (q->body must stay valid until the
 * job ends); libmicrohttpd calls the access handler again once it is
 * resumed, and the handler takes the answer with api_forward_end().
 */
struct api_fwd_job;
int api_forward_begin(struct api_fwd *f, const struct api_fwd_req *q, struct api_fwd_job **job, unsigned *status,
		      struct MHD_Response **resp);
/* api_forward_begin() for a streamed route: s may be NULL (the same). */
int api_forward_begin_stream(struct api_fwd *f, const struct api_fwd_req *q, const struct api_fwd_stream *s,
			     struct api_fwd_job **job, unsigned *status, struct MHD_Response **resp);
/* After the resume: the answer (as api_forward() returns it); frees job. */
int api_forward_end(struct api_fwd_job *job, unsigned *status, struct MHD_Response **resp);
/* A request that ended after its resume without api_forward_end(). */
void api_forward_job_free(struct api_fwd_job *job);

/* 1 when the client's request already crossed a hop (carries the marker). */
int api_forward_seen(struct MHD_Connection *conn);

/*
 * The leader's address checked: exactly scheme://HOST:PORT with scheme
 * http or https, a host name or IP address, a port, optionally a "/", and
 * nothing else (no user, password, path, query, fragment, no byte outside
 * '!'..'~', at most 255 bytes).  0 with base = "scheme://host:port", or
 * OTA_EINVAL with the reason.
 */
int api_forward_leader_check(const char *holder, char *base, size_t size);

/*
 * One header line of the leader's answer ("Name: value\r\n" or a status
 * line, which forgets the headers kept so far): kept in h when its name is
 * relayed and its value is printable text of at most 1,024 bytes, else
 * ignored.  Exposed for fuzz/fuzz_forward.c.
 */
#define API_FWD_RELAYED 8
struct api_fwd_headers {
	char *value[API_FWD_RELAYED];  /* by the index of api_fwd_relayed[] */
};
extern const char *const api_fwd_relayed[API_FWD_RELAYED];
void api_forward_header_line(struct api_fwd_headers *h, const char *line, size_t len);
void api_forward_headers_release(struct api_fwd_headers *h);

#endif
