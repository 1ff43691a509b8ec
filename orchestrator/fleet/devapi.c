/*
 * devapi.c - the device-facing HTTP listener of the built-in update server
 * (docs/update-server.md): check-ins, report batches, image downloads and
 * Prometheus metrics, device registration, on its own libmicrohttpd daemon.
 *
 * Devices are many and their requests small, so, like the main API, a
 * small pool of threads each runs an epoll loop over its share of the
 * connections, with the same header deadline and per-client cap
 * (api_wait.h).  Nothing in a
 * handler may block for long, so a report batch is validated in the
 * handler, handed to the fleet's writer (fleet_report_async) and the
 * connection suspended; the writer's done callback resumes it after the
 * commit and the handler then sends the answer.  A check-in is decided
 * from memory; one that changes its device (fleet_checkin_async) waits the
 * same way for the commit that holds the change, any other is answered at
 * once.  Images stream from the artifact store through a response
 * callback (with Range support).
 *
 * Identity: registrations (POST /device/v1/register) and the audit read
 * need the fleet key; every other device route authenticates the device
 * through fleet_device_auth (report batches: per report, in the fleet),
 * or, with device_auth cert or both and a client certificate, through
 * fleet_auth_cert on every request (cert_identify; issue 13).
 * Issue 16: a follower forwards the certificate signed and the leader
 * checks the signature, then the certificate as a TLS client's
 * (devapi_fwd_identify, devapi_fwd.c; fwdcert.h).
 * Registrations go through the fleet's writer like report batches.
 * Certificates (issue 13): POST /device/v1/provision takes a
 * provisioner's token and a CSR (fleet_ca.h); /metrics adds the device
 * CA's counters.
 * A follower (issue 16) has no fleet: it forwards every route to the
 * leader's device API (devapi_fwd.c), and serves a download the leader
 * vouched for from the shared artifact store (serve_or_vouch).  What the
 * two files share is devapi_int.h.
 * Tokens are never logged or echoed.
 */
#include <arpa/inet.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <netdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "../../common/log.h"
#include "../../common/util.h"
#include "../../common/threadmem.h"
#include "../api/api.h"
#include "../api/api_forward.h"
#include "../api/api_wait.h"
#include "../artifact.h"
#include "../artifact/origin.h"
#include "../clock.h"
#include "../push/push.h"
#include "../tls/tls.h"
#include "admission.h"
#include "devapi_int.h"
#include "devapi_pki.h"
#include "fleet.h"
#include "fleet_ca.h"
#include "fleet_ckbody.h"
#include "fwdcert.h"

/* A body over the cap is read and dropped up to this size, so the client
 * sees the 413 rather than a reset while it is still sending. */
#define DEVAPI_DISCARD_MAX ((size_t)8 << 20)

/* issue 15: image bytes otacd itself sent (device API and CDN pulls) */
static _Atomic uint64_t g_image_bytes;
static _Atomic uint64_t g_delta_bytes;   /* issue 15: patch bytes, apart from full images */
static _Atomic uint64_t g_reports_accepted, g_reports_refused; /* issue 18: report outcomes, answered */

void devapi_report_counts(uint64_t *accepted, uint64_t *refused)
{
	*accepted = g_reports_accepted;
	*refused = g_reports_refused;
}

/* ---- replies -------------------------------------------------------------- */

static enum MHD_Result reply_text(struct MHD_Connection *c, unsigned status, const char *type, char *data, size_t len)
{
	struct MHD_Response *resp = MHD_create_response_from_buffer(len, data, MHD_RESPMEM_MUST_FREE);
	enum MHD_Result ret;
	if (!resp) {
		free(data);
		return MHD_NO;
	}
	MHD_add_response_header(resp, "Content-Type", type);
	ret = MHD_queue_response(c, status, resp);
	MHD_destroy_response(resp);
	return ret;
}

/* A check-in's answer, r->answer, sent from there. */
static enum MHD_Result reply_answer(struct MHD_Connection *c, struct dreq *r)
{
	struct MHD_Response *resp =
		MHD_create_response_from_buffer(strlen(r->answer), r->answer, MHD_RESPMEM_PERSISTENT);
	unsigned status = MHD_HTTP_OK;
	enum MHD_Result ret;
	if (!resp)
		return MHD_NO;
	MHD_add_response_header(resp, "Content-Type", "application/json");
	ret = MHD_queue_response(c, status, resp);
	MHD_destroy_response(resp);
	return ret;
}

static enum MHD_Result reply_json(struct MHD_Connection *c, unsigned status, json_t *body)
{
	char *text = json_dumps(body, JSON_COMPACT);
	json_decref(body);
	if (!text)
		text = xstrdup("{}");
	return reply_text(c, status, "application/json", text, strlen(text));
}

static enum MHD_Result reply_error(struct MHD_Connection *c, unsigned status, const char *fmt, ...) OTA_PRINTF(3, 4);
static enum MHD_Result reply_error(struct MHD_Connection *c, unsigned status, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	return reply_json(c, status, json_pack("{ss}", "error", msg));
}

static unsigned status_of(int rc)
{
	switch (rc) {
	case OTA_EINVAL: return MHD_HTTP_BAD_REQUEST;
	case OTA_ENOTFOUND: return MHD_HTTP_NOT_FOUND;
	case OTA_ETOOBIG: return MHD_HTTP_CONTENT_TOO_LARGE;
	case OTA_EAUTH: return MHD_HTTP_UNAUTHORIZED;
	case OTA_ECONFLICT: return MHD_HTTP_TOO_MANY_REQUESTS;
	case OTA_EPERM: return MHD_HTTP_FORBIDDEN;
	default: return MHD_HTTP_INTERNAL_SERVER_ERROR;
	}
}

/* issue 13: a certificate issued for one product (its OU) does not check
 * in as another: 403, counted as wrong_device.  1 when refused. */
static int cert_product_refused(struct devapi *a, struct MHD_Connection *c, struct dreq *r, const char *claimed,
				enum MHD_Result *ret)
{
	if (!claimed || !r->cert_product[0] || !strcmp(claimed, r->cert_product))
		return 0;
	fleet_ca_count_wrong_device(fleet_get_ca(a->f));
	*ret = reply_error(c, MHD_HTTP_FORBIDDEN, "device '%s''s certificate is for product '%s', not '%s'", r->cert_dev,
			   r->cert_product, claimed);
	return 1;
}

/* ---- the check-in parse arena ---------------------------------------------- */

/*
 * Check-in bodies are read by fleet_ckbody_parse (one pass, no allocation);
 * the few it leaves to jansson (reals, arrays, malformed JSON) are parsed
 * here.  Such a body is a dozen small JSON values that live for one handler
 * call, and malloc/free of them was a fifth of a check-in's cost.  So
 * jansson's allocator (json_set_alloc_funcs, set once) hands out memory
 * from a per-thread buffer while, and only while, this thread parses a
 * check-in body; everything else goes to malloc.  Freeing memory inside
 * this thread's buffer is a no-op; the buffer starts over at the next
 * parse, by which time the handler has released the previous tree (a
 * check-in's tree never leaves its handler call or its thread).  A body
 * that outgrows the buffer continues in malloc'd memory.
 */
#define ARENA_SIZE 8192
struct parse_arena {
	int on;
	size_t used;
	_Alignas(16) char mem[ARENA_SIZE];
};
/* allocated at a thread's first check-in, not in every thread's static TLS
 * (common/threadmem.h): jansson's allocator below runs on every thread, the
 * arena is used only on the device API's */
static struct ota_thread_block arena_block;
static __thread struct parse_arena *arena;

static void *arena_malloc(size_t n)
{
	size_t need = (n + 15) & ~(size_t)15;
	if (arena && arena->on && need >= n && need <= ARENA_SIZE - arena->used) {
		void *p = arena->mem + arena->used;
		arena->used += need;
		return p;
	}
	return malloc(n);
}

static void arena_free(void *p)
{
	if (arena && (char *)p >= arena->mem && (char *)p < arena->mem + ARENA_SIZE)
		return;
	free(p);
}

static pthread_once_t arena_once = PTHREAD_ONCE_INIT;

static void arena_install(void)
{
	json_set_alloc_funcs(arena_malloc, arena_free);
}

/* ---- routes ----------------------------------------------------------------- */

static json_t *parse_body(struct MHD_Connection *c, struct dreq *r, enum MHD_Result *ret)
{
	json_error_t err;
	json_t *j;

	/* check-ins only: their tree is released before the handler returns */
	if (!arena)
		arena = ota_thread_block_alloc(&arena_block, sizeof(*arena), &arena);
	arena->on = r->route == R_CHECKIN;
	arena->used = 0;
	j = json_loadb(r->body.ptr ? r->body.ptr : "", r->body.len, JSON_REJECT_DUPLICATES, &err);
	arena->on = 0;
	if (!j)
		*ret = reply_error(c, MHD_HTTP_BAD_REQUEST, "invalid JSON at line %d column %d: %s", err.line, err.column,
				   err.text);
	else if (!json_is_object(j)) {
		json_decref(j);
		j = NULL;
		*ret = reply_error(c, MHD_HTTP_BAD_REQUEST, "the body must be a JSON object");
	}
	return j;
}

static void report_done(void *ctx, int rc);
static enum MHD_Result report_answer(struct MHD_Connection *c, struct dreq *r);

/* issue 13: a request authenticated by certificate that names another
 * device (body "device", X-Device-Id, ?device=) is refused, 403, counted.
 * 1 when refused (*ret is the answer). */
static int cert_claim_refused(struct devapi *a, struct MHD_Connection *c, struct dreq *r, const char *claimed,
			      enum MHD_Result *ret)
{
	if (!claimed || !strcmp(claimed, r->cert_dev))
		return 0;
	fleet_ca_count_wrong_device(fleet_get_ca(a->f));
	*ret = reply_error(c, MHD_HTTP_FORBIDDEN, "the client certificate is device '%s''s, not '%s''s", r->cert_dev,
			   claimed);
	return 1;
}

/* A check-in that changes its device is answered once the writer has
 * committed the change (the connection suspended in between, as for
 * report batches); any other is answered at once. */
/* A request counted by submit_begin is done with the writer. */
static void submit_end(struct devapi *a)
{
	__atomic_sub_fetch(&a->inflight, 1, __ATOMIC_SEQ_CST);
}

/* Before handing a request to the fleet writer: count it in flight (so
 * devapi_stop waits for its answer), or answer 503 once stopping. */
static int submit_begin(struct devapi *a, struct MHD_Connection *c, struct dreq *r, enum MHD_Result *ret)
{
	r->api = a;
	r->conn = c;
	/* counted before stopping is read, as devapi_stop sets stopping
	 * before it reads the count: one of the two sees the other */
	__atomic_add_fetch(&a->inflight, 1, __ATOMIC_SEQ_CST);
	if (__atomic_load_n(&a->stopping, __ATOMIC_SEQ_CST)) {
		submit_end(a);
		*ret = reply_error(c, MHD_HTTP_SERVICE_UNAVAILABLE, "shutting down");
		return -1;
	}
	r->submitted = 1;
	return 0;
}

#define ID_FIRST "{\"device\":\""

/*
 * issue 15: a check-in over the configured capacity (admission.h) is
 * answered 503 before its body is read or its device authenticated: the
 * cheapest answer there is, and one that says nothing about the device's
 * offer, so a device in the middle of a download keeps it (a 200 without
 * an offer would withdraw it).  Retry-After is in real seconds for any
 * HTTP client; the body gives the turn in otacd milliseconds, the window
 * to pick a moment in and the time scale, for devices (libotadev,
 * fleetsim) to honour it at the server's pace.
 */
/* The turn a check-in body names ("turn": otacd ms, a device back after a
 * 503), found without parsing the body (admission comes first); 0 none.
 * Read as a claim only: admission.c bounds what it can do. */
static int64_t checkin_turn(const struct buf *body)
{
	static const char key[] = "\"turn\":";
	const char *p = body->ptr && body->len > sizeof(key) ? memmem(body->ptr, body->len, key, sizeof(key) - 1) : NULL;
	long long v = 0;
	size_t i;

	if (!p)
		return 0;
	/* digits only, at most 15 (the buffer holds a NUL after its bytes) */
	for (i = sizeof(key) - 1; i < sizeof(key) - 1 + 15 && p[i] >= '0' && p[i] <= '9'; i++)
		v = v * 10 + (p[i] - '0');
	return v;
}

static enum MHD_Result reply_deferred(struct MHD_Connection *c, const struct admission_defer *d)
{
	double scale = clock_scale();
	int64_t real_s = (int64_t)((double)d->retry_after_ms / scale / 1000.0) + 1;
	char *text = xasprintf("{\"error\":\"over the server's check-in capacity: come back at your turn\","
			       "\"turn\":%lld,\"retry_after_ms\":%lld,\"retry_window_ms\":%lld,\"time_scale\":%.17g}",
			       (long long)d->turn_ms, (long long)d->retry_after_ms, (long long)d->window_ms, scale);
	struct MHD_Response *resp = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
	char ra[32];
	enum MHD_Result ret;

	if (!resp) {
		free(text);
		return MHD_NO;
	}
	snprintf(ra, sizeof(ra), "%lld", (long long)real_s);
	MHD_add_response_header(resp, "Content-Type", "application/json");
	MHD_add_response_header(resp, "Retry-After", ra);
	ret = MHD_queue_response(c, MHD_HTTP_SERVICE_UNAVAILABLE, resp);
	MHD_destroy_response(resp);
	return ret;
}

/* An admitted check-in: read, authenticated, decided, answered (now or
 * once committed).  *credential_refused: 401 for its credential. */
static enum MHD_Result checkin_admitted(struct devapi *a, struct MHD_Connection *c, struct dreq *r,
					 int *credential_refused)
{
	enum MHD_Result ret = MHD_NO;
	struct fleet_ckbody ck;
	json_t *body = NULL;
	int rc, done;

	/* devices (libotadev) write the id first: its lookups' cache misses
	 * are fetched while the body is parsed */
	if (r->body.len > sizeof(ID_FIRST) - 1 && !memcmp(r->body.ptr, ID_FIRST, sizeof(ID_FIRST) - 1)) {
		const char *id = r->body.ptr + sizeof(ID_FIRST) - 1;
		size_t left = r->body.len - (sizeof(ID_FIRST) - 1);
		const char *q = memchr(id, '"', left < 65 ? left : 65);
		if (q)
			fleet_checkin_prefetch(a->f, id, (size_t)(q - id));
	}
	/* one pass, no allocation (fleet_ckbody.c); a body it leaves alone is
	 * read by jansson, which also words a refusal as before */
	if (fleet_ckbody_parse(&ck, r->body.ptr ? r->body.ptr : "", r->body.len) != 0) {
		if (!(body = parse_body(c, r, &ret)))
			return ret;
		fleet_ckbody_from_json(&ck, body);
	}
	if (submit_begin(a, c, r, &ret) < 0)
		goto out;
	/* authenticated first (401, nothing done), then decided */
	if (r->cert_dev[0] && (cert_claim_refused(a, c, r, fleet_ckbody_str(&ck, FCK_DEVICE), &ret) ||
			       cert_product_refused(a, c, r, fleet_ckbody_str(&ck, FCK_PRODUCT), &ret))) {
		submit_end(a);
		goto out;
	}
	rc = r->cert_dev[0] ? fleet_checkin_body_trusted_async(a->f, &ck, r->answer, sizeof(r->answer), report_done, r)
			    : fleet_checkin_body_async(a->f, &ck, r->token, r->answer, sizeof(r->answer), report_done, r);
	if (rc <= 0) { /* answered now: nothing for the writer */
		submit_end(a);
		*credential_refused = rc == OTA_EAUTH; /* a refused credential did no work */
		ret = rc < 0 ? reply_error(c, status_of(rc), "%s", ota_error_last())
			     : reply_answer(c, r);
		goto out;
	}
	pthread_mutex_lock(&a->mu);
	/* r->answer was written before the writer had the check-in */
	done = r->done;
	if (!done) {
		r->suspended = 1;
		MHD_suspend_connection(c);
	}
	pthread_mutex_unlock(&a->mu);
	ret = done ? report_answer(c, r) : MHD_YES;
out:
	json_decref(body);
	return ret;
}

static enum MHD_Result do_checkin(struct devapi *a, struct MHD_Connection *c, struct dreq *r)
{
	struct admission_defer wait;
	enum MHD_Result ret;
	int refused = 0, done;

	if (r->submitted) { /* resumed by report_done */
		pthread_mutex_lock(&a->mu);
		done = r->done;
		pthread_mutex_unlock(&a->mu);
		return done ? report_answer(c, r) : MHD_YES;
	}
	/* without a capacity every check-in is admitted: neither the clock
	 * nor the body's turn is read */
	if (admission_capacity() && !admission_checkin(clock_now_ms(), checkin_turn(&r->body), &wait))
		return reply_deferred(c, &wait);
	ret = checkin_admitted(a, c, r, &refused);
	admission_checkin_done(refused); /* the outcome counted once known */
	return ret;
}

/* The writer's callback (writer thread): record the outcome, resume.  r
 * is not touched after the unlock: the connection may complete at once. */
static void report_done(void *ctx, int rc)
{
	struct dreq *r = ctx;
	struct devapi *a = r->api;
	pthread_mutex_lock(&a->mu);
	r->done = 1;
	r->rc = rc;
	if (rc < 0)
		snprintf(r->err, sizeof(r->err), "%s", ota_error_last());
	if (r->suspended) {
		r->suspended = 0;
		MHD_resume_connection(r->conn);
	}
	pthread_mutex_unlock(&a->mu);
	/* last: once the count is 0 devapi_stop frees a */
	submit_end(a);
}

static enum MHD_Result report_answer(struct MHD_Connection *c, struct dreq *r)
{
	json_t *answer;
	if (r->route == R_REPORTS) {
		g_reports_accepted += r->rc < 0 ? 0 : (uint64_t)r->accepted;
		g_reports_refused += json_is_array(r->refused) ? json_array_size(r->refused) : 0;
	}
	if (r->rc < 0 && r->refused && r->route == R_REPORTS) { /* every report refused */
		answer = json_pack("{ss sO}", "error", r->err, "refused", r->refused);
		return reply_json(c, status_of(r->rc), answer);
	}
	if (r->rc < 0)
		return reply_error(c, status_of(r->rc), "%s", r->err);
	if (r->route == R_CHECKIN)
		return reply_answer(c, r);
	if (r->reg)
		return reply_json(c, MHD_HTTP_OK, fleet_register_answer(r->api->f, r->reg));
	answer = json_pack("{si}", "accepted", r->accepted);
	if (r->refused)
		json_object_set(answer, "refused", r->refused);
	if (r->duplicate)
		json_object_set(answer, "duplicate", r->duplicate);
	return reply_json(c, MHD_HTTP_OK, answer);
}

static const char *peer_of(struct MHD_Connection *c, char *out, size_t n)
{
	const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
	const struct sockaddr *sa = ci ? ci->client_addr : NULL;
	snprintf(out, n, "?");
	if (sa && sa->sa_family == AF_INET)
		inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, out, (socklen_t)n);
	else if (sa && sa->sa_family == AF_INET6)
		inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, out, (socklen_t)n);
	return out;
}

/* Report batches and registrations: validated here, committed by the
 * fleet's writer, answered when it is done (the connection suspended in
 * between). */
static enum MHD_Result do_reports(struct devapi *a, struct MHD_Connection *c, struct dreq *r)
{
	char peer[64];
	enum MHD_Result ret = MHD_NO;
	json_t *body;
	int rc, done;

	if (r->submitted) { /* resumed by report_done */
		pthread_mutex_lock(&a->mu);
		done = r->done;
		pthread_mutex_unlock(&a->mu);
		return done ? report_answer(c, r) : MHD_YES;
	}
	if (!(body = parse_body(c, r, &ret)))
		return ret;
	if (r->route == R_REGISTER) {
		json_t *ids = json_object_get(body, "devices");
		int64_t retry = 0;
		if (fleet_provision_auth(a->f, r->token) < 0) {
			ret = reply_error(c, MHD_HTTP_UNAUTHORIZED, "registration needs the fleet key");
			goto out;
		}
		if (json_is_array(ids) && json_array_size(ids) > 0 && json_array_size(ids) <= 10000 &&
		    fleet_register_admit(a->f, json_array_size(ids), &retry) < 0) {
			char msg[256], ra[32];
			struct MHD_Response *resp;
			char *text;
			snprintf(msg, sizeof(msg), "%s", ota_error_last());
			ota_log(OTA_LOG_WARN, "device registration refused (%s) from %s", msg, peer_of(c, peer, sizeof(peer)));
			{
				json_t *o = json_pack("{ss}", "error", msg);
				text = json_dumps(o, JSON_COMPACT);
				json_decref(o);
			}
			resp = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
			MHD_add_response_header(resp, "Content-Type", "application/json");
			if (retry > 0) {
				snprintf(ra, sizeof(ra), "%lld", (long long)((retry + 999) / 1000));
				MHD_add_response_header(resp, "Retry-After", ra);
			}
			ret = MHD_queue_response(c, MHD_HTTP_TOO_MANY_REQUESTS, resp);
			MHD_destroy_response(resp);
			goto out;
		}
	}
	/* each report is authenticated by fleet_report_async, with its own
	 * credential or the request's (one device's) */
	if (submit_begin(a, c, r, &ret) < 0)
		goto out;
	rc = r->route == R_REGISTER ? fleet_register_async(a->f, body, peer_of(c, peer, sizeof(peer)), &r->reg, report_done, r)
				    : fleet_report_dev_async(a->f, body, r->token ? r->token : "",
							     r->cert_dev[0] ? r->cert_dev : NULL, &r->accepted,
							     &r->refused, &r->duplicate, report_done, r);
	if (rc < 0) {
		submit_end(a);
		r->rc = rc;
		snprintf(r->err, sizeof(r->err), "%s", ota_error_last());
		r->done = 1;
		ret = report_answer(c, r);
		goto out;
	}
	pthread_mutex_lock(&a->mu);
	done = r->done;
	if (!done) {
		r->suspended = 1;
		MHD_suspend_connection(c);
	}
	pthread_mutex_unlock(&a->mu);
	/* done already: answer now; else report_done resumes us */
	ret = done ? report_answer(c, r) : MHD_YES;
out:
	json_decref(body);
	return ret;
}

/*
 * /metrics in two parts (docs/scale.md, "Metrics on every instance").  The
 * fleet-wide part is what only the leader knows: the fleet's gauges and
 * the device CA's counters.  The process part is what this process
 * counted itself.  A follower asks the leader for the fleet-wide part
 * only (DEVAPI_FLEET_METRICS, devapi_fwd.c) and appends its own process
 * part, so no name appears twice and each instance's counters are its own.
 */
static int fleet_part(struct devapi *a, struct buf *b)
{
	char *text = NULL;
	size_t len = 0;
	if (fleet_metrics_text(a->f, &text, &len) < 0)
		return OTA_ERROR;
	buf_put(b, text, len);
	free(text);
	if (fleet_get_ca(a->f)) /* device certificates (issue 13) */
		fleet_ca_metrics_text(fleet_get_ca(a->f), b);
	return 0;
}

void devapi_process_metrics(struct devapi *a, struct buf *b, int leader)
{
	buf_printf(b, "# HELP otacd_leader 1 on the instance that leads (holds the fleet), 0 on a follower.\n"
		      "# TYPE otacd_leader gauge\notacd_leader %d\n", leader);
	if (a->tls) /* issue 13: handshakes refused for their client certificate */
		buf_printf(b, "# HELP otacd_tls_client_cert_refusals_total TLS handshakes refused because of the"
			      " client certificate.\n# TYPE otacd_tls_client_cert_refusals_total counter\n"
			      "otacd_tls_client_cert_refusals_total %lu\n", tls_client_cert_refusals());
	/* issue 15: what otacd itself served, whatever origin offers name */
	buf_printf(b, "# HELP otacd_image_bytes_served_total Image bytes otacd sent (device API and CDN pulls).\n"
		      "# TYPE otacd_image_bytes_served_total counter\notacd_image_bytes_served_total %llu\n",
		   (unsigned long long)g_image_bytes);
	buf_printf(b, "# HELP otacd_delta_bytes_served_total Delta patch bytes otacd sent (issue 15), apart from full images.\n"
		      "# TYPE otacd_delta_bytes_served_total counter\notacd_delta_bytes_served_total %llu\n",
		   (unsigned long long)g_delta_bytes);
	buf_printf(b, "# HELP otacd_device_checkins_total Check-in requests the device API took (served, deferred,"
		      " refused for their credential).\n"
		      "# TYPE otacd_device_checkins_total counter\notacd_device_checkins_total %llu\n",
		   (unsigned long long)admission_checkins_taken());
	buf_printf(b, "# HELP otacd_device_reports_total Device reports answered, by outcome (a refused one is"
		      " listed in its batch's answer).\n# TYPE otacd_device_reports_total counter\n"
		      "otacd_device_reports_total{outcome=\"accepted\"} %llu\notacd_device_reports_total{outcome=\"refused\"} %llu\n",
		   (unsigned long long)g_reports_accepted, (unsigned long long)g_reports_refused);
	push_metrics_text(b); /* issue 15, push hints */
	admission_metrics_text(b, clock_now_ms()); /* issue 15, check-in admission */
}

static enum MHD_Result do_metrics(struct devapi *a, struct MHD_Connection *c, struct dreq *r)
{
	struct buf b = BUF_INIT;
	size_t len;
	if (!a->metrics_public && fleet_provision_auth(a->f, r->token) < 0)
		return reply_error(c, MHD_HTTP_UNAUTHORIZED, "missing or wrong token");
	if (fleet_part(a, &b) < 0) {
		buf_release(&b);
		return reply_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "%s", ota_error_last());
	}
	/* a follower's question: the fleet-wide part only (a client that
	 * sends the header itself gets less, never more) */
	if (!devapi_header(c, DEVAPI_FLEET_METRICS, sizeof(DEVAPI_FLEET_METRICS) - 1))
		devapi_process_metrics(a, &b, 1);
	len = b.len;
	return reply_text(c, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", buf_detach(&b), len);
}

static enum MHD_Result do_registrations(struct devapi *a, struct MHD_Connection *c, struct dreq *r)
{
	if (fleet_provision_auth(a->f, r->token) < 0)
		return reply_error(c, MHD_HTTP_UNAUTHORIZED, "the registration audit needs the fleet key");
	return reply_json(c, MHD_HTTP_OK, fleet_registrations(a->f, 100));
}

/* Factory provisioning (issue 13, fleet_ca.h): a provisioner's token and
 * {"device", "csr", "product"?} in, a device certificate out.  Rare, so it
 * waits on this thread for the engine's transaction, one at a time (a
 * second one meanwhile is told to retry: check-ins keep their threads). */
static pthread_mutex_t provision_mu = PTHREAD_MUTEX_INITIALIZER;

static enum MHD_Result do_provision(struct devapi *a, struct MHD_Connection *c, struct dreq *r)
{
	struct fleet_ca_request rq = { 0 };
	json_t *body, *dev, *csr, *product, *answer = NULL;
	enum MHD_Result ret = MHD_NO;
	char peer[64];
	int64_t retry = 0;
	int rc;

	if (!(body = parse_body(c, r, &ret)))
		return ret;
	dev = json_object_get(body, "device");
	csr = json_object_get(body, "csr");
	product = json_object_get(body, "product");
	if (json_is_null(product))
		product = NULL;
	if (!json_is_string(dev) || !json_is_string(csr) || (product && !json_is_string(product))) {
		ret = reply_error(c, MHD_HTTP_BAD_REQUEST, "'device' and 'csr' (PEM) are needed, 'product' is a string");
		goto out;
	}
	rq.device = json_string_value(dev);
	rq.product = json_string_value(product);
	rq.csr_pem = json_string_value(csr);
	rq.csr_len = json_string_length(csr);
	rq.token = r->token;
	rq.peer = peer_of(c, peer, sizeof(peer));
	rq.token_registered = fleet_device_registered(a->f, rq.device);
	if (pthread_mutex_trylock(&provision_mu) != 0) {
		ret = reply_error(c, MHD_HTTP_SERVICE_UNAVAILABLE, "another provisioning is running: retry");
		goto out;
	}
	rc = fleet_ca_provision(fleet_get_ca(a->f), &rq, &answer, &retry);
	pthread_mutex_unlock(&provision_mu);
	if (rc < 0 && retry > 0) {
		struct MHD_Response *resp;
		json_t *o = json_pack("{ss}", "error", ota_error_last());
		char *text = json_dumps(o, JSON_COMPACT), ra[32];
		json_decref(o);
		resp = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
		MHD_add_response_header(resp, "Content-Type", "application/json");
		snprintf(ra, sizeof(ra), "%lld", (long long)retry);
		MHD_add_response_header(resp, "Retry-After", ra);
		ret = MHD_queue_response(c, MHD_HTTP_TOO_MANY_REQUESTS, resp);
		MHD_destroy_response(resp);
	} else if (rc < 0) {
		ret = reply_error(c, rc == OTA_ENOTFOUND ? MHD_HTTP_SERVICE_UNAVAILABLE : status_of(rc), "%s", ota_error_last());
	} else {
		ret = reply_json(c, MHD_HTTP_OK, answer);
	}
out:
	json_decref(body);
	return ret;
}

/* Streams [pos, pos+len) of an artifact; the reader is positioned at
 * `skip` bytes before the first call. */
struct image_stream {
	struct artifact_backend *be;
	struct artifact_reader *rd;
	int64_t skip;
	int delta;                 /* a delta patch (counted apart) */
};

static ssize_t image_read(void *cls, uint64_t pos, char *out, size_t max)
{
	struct image_stream *st = cls;
	ssize_t n;
	(void)pos;
	while (st->skip > 0) {
		char tmp[16384];
		size_t want = st->skip < (int64_t)sizeof(tmp) ? (size_t)st->skip : sizeof(tmp);
		n = st->be->read(st->rd, tmp, want);
		if (n <= 0)
			return MHD_CONTENT_READER_END_WITH_ERROR;
		st->skip -= n;
	}
	n = st->be->read(st->rd, out, max);
	if (n < 0)
		return MHD_CONTENT_READER_END_WITH_ERROR;
	if (st->delta)
		g_delta_bytes += (uint64_t)n;
	else
		g_image_bytes += (uint64_t)n;
	return n == 0 ? MHD_CONTENT_READER_END_OF_STREAM : n;
}

static void image_free(void *cls)
{
	struct image_stream *st = cls;
	st->be->close(st->rd);
	free(st);
}

/* Parses "bytes=A-B", "bytes=A-", "bytes=-N" against size.  1: a range in
 * [*from, *to], 0: no usable Range header (serve everything), -1: 416. */
static int parse_range(const char *h, int64_t size, int64_t *from, int64_t *to)
{
	char *end;
	long long a, b;
	if (!h || strncmp(h, "bytes=", 6) || strchr(h, ','))
		return 0;
	h += 6;
	if (*h == '-') {
		b = strtoll(h + 1, &end, 10);
		if (end == h + 1 || *end || b <= 0)
			return b == 0 && end != h + 1 && !*end ? -1 : 0;
		*from = b >= size ? 0 : size - b;
		*to = size - 1;
		return size > 0 ? 1 : -1;
	}
	a = strtoll(h, &end, 10);
	if (end == h || *end != '-' || a < 0)
		return 0;
	h = end + 1;
	if (*h) {
		b = strtoll(h, &end, 10);
		if (*end || b < a)
			return 0;
	} else {
		b = size - 1;
	}
	if (a >= size)
		return -1;
	*from = a;
	*to = b >= size ? size - 1 : b;
	return 1;
}

static enum MHD_Result serve_or_vouch(struct MHD_Connection *c, const char *sha, int delta);

static enum MHD_Result do_image(struct devapi *a, struct MHD_Connection *c, struct dreq *r, const char *sha)
{
	const char *dev = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Device-Id");
	enum MHD_Result ret;
	int rg, known;

	if (!dev)
		dev = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "device");
	if (r->cert_dev[0]) { /* issue 13: the certificate's device */
		if (cert_claim_refused(a, c, r, dev, &ret))
			return ret;
		dev = r->cert_dev;
	} else if (fleet_device_auth(a->f, dev, r->token) < 0) {
		return reply_error(c, MHD_HTTP_UNAUTHORIZED, "%s", ota_error_last());
	}
	if (!artifact_digest_valid(sha) || !(known = fleet_image_known(a->f, sha)))
		return reply_error(c, MHD_HTTP_NOT_FOUND, "no such image");
	/* only to a device it was offered to (its product, hardware, an offer) */
	if ((rg = fleet_image_allowed(a->f, sha, dev)) == 0)
		return reply_error(c, MHD_HTTP_FORBIDDEN, "this image was not offered to device '%s'", dev);
	if (rg < 0)
		return reply_error(c, MHD_HTTP_GONE, "the offer of this image was withdrawn (its release was halted):"
				   " drop the download; check in for what to run");
	return serve_or_vouch(c, sha, known == 2);
}

/* The bytes of image sha, whole or the Range asked for (devapi_int.h). */
enum MHD_Result devapi_serve_image(struct MHD_Connection *c, const char *sha, int delta)
{
	struct artifact_backend *be = artifact_backend();
	struct artifact_reader *rd = NULL;
	struct image_stream *st;
	struct MHD_Response *resp;
	int64_t size = 0, from = 0, to = 0;
	enum MHD_Result ret;
	int rg;

	if (!be || be->get(be, sha, &rd, &size) < 0)
		return reply_error(c, MHD_HTTP_NOT_FOUND, "no such image");
	rg = parse_range(MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Range"), size, &from, &to);
	if (rg < 0) {
		char *cr = xasprintf("bytes */%" PRId64, size);
		be->close(rd);
		resp = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
		MHD_add_response_header(resp, "Content-Range", cr);
		free(cr);
		ret = MHD_queue_response(c, MHD_HTTP_RANGE_NOT_SATISFIABLE, resp);
		MHD_destroy_response(resp);
		return ret;
	}
	if (rg == 0) {
		from = 0;
		to = size - 1;
	}
	st = xcalloc(1, sizeof(*st));
	st->be = be;
	st->rd = rd;
	st->skip = from;
	st->delta = delta;
	resp = MHD_create_response_from_callback((uint64_t)(to - from + 1), 64 * 1024, image_read, st, image_free);
	if (!resp) {
		image_free(st);
		return MHD_NO;
	}
	MHD_add_response_header(resp, "Content-Type", "application/octet-stream");
	MHD_add_response_header(resp, "Accept-Ranges", "bytes");
	if (rg > 0) {
		char *cr = xasprintf("bytes %" PRId64 "-%" PRId64 "/%" PRId64, from, to, size);
		MHD_add_response_header(resp, "Content-Range", cr);
		free(cr);
	}
	ret = MHD_queue_response(c, rg > 0 ? MHD_HTTP_PARTIAL_CONTENT : MHD_HTTP_OK, resp);
	MHD_destroy_response(resp);
	return ret;
}

/* issue 15: a CDN pulls an image it caches (artifact/origin.h): its own
 * token, and only images a current release offers.  The CDN is untrusted
 * all the same: devices check digest and signature. */
static enum MHD_Result do_origin(struct devapi *a, struct MHD_Connection *c, struct dreq *r, const char *sha)
{
	int known;

	if (!origin_pull_allowed(r->token))
		return reply_error(c, MHD_HTTP_FORBIDDEN, "no origin pull with this token (image_origin.token_file)");
	if (!artifact_digest_valid(sha) || !(known = fleet_image_known(a->f, sha)))
		return reply_error(c, MHD_HTTP_NOT_FOUND, "no such image");
	return serve_or_vouch(c, sha, known == 2);
}

/*
 * Issue 16: a follower serves a download itself, from the artifact store
 * every instance shares, once the leader said this request may have it:
 * it sends the leader the same request (path, query, Authorization,
 * X-Device-Id) with DEVAPI_CHECK, and the leader, after every check of
 * do_image or do_origin, answers 204 instead of the bytes (docs/scale.md,
 * "Downloads through a follower").  The header only takes bytes away: a
 * client that sends it to the leader learns what a GET would have told it.
 */

static enum MHD_Result serve_or_vouch(struct MHD_Connection *c, const char *sha, int delta)
{
	struct MHD_Response *resp;
	enum MHD_Result ret;

	if (!MHD_lookup_connection_value(c, MHD_HEADER_KIND, DEVAPI_CHECK))
		return devapi_serve_image(c, sha, delta);
	if (!(resp = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT)))
		return MHD_NO;
	ret = MHD_queue_response(c, MHD_HTTP_NO_CONTENT, resp);
	MHD_destroy_response(resp);
	return ret;
}

struct pki_offer {
	struct fleet *f;
	const char *dev;
};

static int pki_image_offered(void *arg, const char *sha)
{
	struct pki_offer *o = arg;
	return fleet_image_allowed(o->f, sha, o->dev) != 0;
}

/* issue 13: the revocation list and a release's signed manifest (devapi_pki.c),
 * to an authenticated device; a manifest only to a device offered the release */
static enum MHD_Result do_pki(struct devapi *a, struct MHD_Connection *c, struct dreq *r, const char *url)
{
	const char *dev = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Device-Id");
	struct buf out = BUF_INIT;
	long long rel = 0;
	char tail[16] = "";
	int rc, n = 0;
	enum MHD_Result ret;

	if (r->cert_dev[0]) { /* issue 13: the certificate's device */
		if (cert_claim_refused(a, c, r, dev, &ret))
			return ret;
		dev = r->cert_dev;
	} else if (fleet_device_auth(a->f, dev, r->token) < 0) {
		return reply_error(c, MHD_HTTP_UNAUTHORIZED, "%s", ota_error_last());
	}
	if (url[11] == 'r' && url[13] == 'v') {
		rc = devapi_pki_revocations(&out);
	} else if (sscanf(url + 20, "%lld/%15[a-z]%n", &rel, tail, &n) == 2 && !url[20 + n] && rel > 0 &&
		   !strcmp(tail, "manifest")) {
		struct pki_offer o = { a->f, dev };
		rc = devapi_pki_manifest(rel, &out);
		if (rc == 0 && !devapi_pki_offered(&out, pki_image_offered, &o)) {
			buf_release(&out);
			return reply_error(c, MHD_HTTP_FORBIDDEN, "release %lld was not offered to device '%s'", rel, dev);
		}
	} else {
		return reply_error(c, MHD_HTTP_NOT_FOUND, "no such endpoint");
	}
	if (rc < 0) {
		buf_release(&out);
		return reply_error(c, rc == OTA_ENOTFOUND ? MHD_HTTP_NOT_FOUND : MHD_HTTP_INTERNAL_SERVER_ERROR, "%s",
				   ota_error_last());
	}
	{
		size_t len = out.len;
		return reply_text(c, MHD_HTTP_OK, url[13] == 'v' ? "application/x-pem-file" : "application/json",
				  buf_detach(&out), len);
	}
}

/* ---- the access handler ----------------------------------------------------- */

/*
 * issue 13: the device of the connection's verified client certificate,
 * into r->cert_dev, decided by the device CA (fleet_auth_cert: revoked,
 * expired, another CA's, or a fleet that takes tokens only: OTA_EAUTH,
 * counted there).  0 also without a certificate (cert_dev empty: the token
 * path, which refuses tokens under device_auth: cert).  Under device_auth:
 * token it is not called: a certificate there is only the TLS listener's
 * business (client_ca), the token decides.
 */
static int cert_identify(struct devapi *a, struct MHD_Connection *c, struct dreq *r)
{
	unsigned char *der = NULL;
	size_t len = 0;
	int rc = tls_peer_cert_der(c, &der, &len);
	if (rc == OTA_ENOTFOUND)
		return 0;
	if (rc == 0)
		rc = fleet_auth_cert_ex(a->f, der, len, NULL, NULL, r->cert_dev, sizeof(r->cert_dev), r->cert_product,
					sizeof(r->cert_product));
	free(der);
	return rc;
}

static enum route route_of(const char *method, const char *url, unsigned *bad)
{
	int post = !strcmp(method, "POST"), get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
	*bad = 0;
	if (!strcmp(url, "/device/v1/checkin") || !strcmp(url, "/device/v1/reports") ||
	    !strcmp(url, "/device/v1/register")) {
		if (!post)
			*bad = MHD_HTTP_METHOD_NOT_ALLOWED;
		return url[11] == 'c' ? R_CHECKIN : url[13] == 'p' ? R_REPORTS : R_REGISTER;
	}
	if (!strcmp(url, "/device/v1/provision")) { /* issue 13: factory provisioning */
		if (!post)
			*bad = MHD_HTTP_METHOD_NOT_ALLOWED;
		return R_PROVISION;
	}
	if (!strcmp(url, "/device/v1/registrations")) {
		if (!get)
			*bad = MHD_HTTP_METHOD_NOT_ALLOWED;
		return R_REGISTRATIONS;
	}
	if (!strcmp(url, "/device/v1/revocations") || !strncmp(url, "/device/v1/releases/", 20)) {
		if (!get)
			*bad = MHD_HTTP_METHOD_NOT_ALLOWED;
		return R_PKI; /* issue 13, devapi_pki.c */
	}
	if (!strncmp(url, "/device/v1/origin/", 18)) { /* issue 15: a CDN's pulls */
		if (!get)
			*bad = MHD_HTTP_METHOD_NOT_ALLOWED;
		return R_ORIGIN;
	}
	if (!strncmp(url, "/device/v1/images/", 18) || !strcmp(url, "/metrics")) {
		if (!get)
			*bad = MHD_HTTP_METHOD_NOT_ALLOWED;
		return url[1] == 'm' ? R_METRICS : R_IMAGE;
	}
	*bad = MHD_HTTP_NOT_FOUND;
	return R_NONE;
}

/*
 * Request state, recycled: each pool thread keeps the last one it freed
 * (and its body buffer, when small) for its next request, instead of a
 * calloc, a body malloc and their frees per request.  Kept in a
 * thread-specific slot whose destructor frees it when the thread ends.
 */
#define DREQ_KEEP_BODY 4096

static pthread_key_t dreq_key;
static pthread_once_t dreq_once = PTHREAD_ONCE_INIT;

static void dreq_destroy(void *p)
{
	struct dreq *r = p;
	buf_release(&r->body);
	free(r);
}

static void dreq_key_init(void)
{
	if (pthread_key_create(&dreq_key, dreq_destroy) != 0)
		abort();
}

static struct dreq *dreq_new(void)
{
	struct dreq *r;
	struct buf body;

	pthread_once(&dreq_once, dreq_key_init);
	if (!(r = pthread_getspecific(dreq_key))) {
		r = xcalloc(1, sizeof(*r));
		buf_init(&r->body, DEVAPI_BODY_MAX);
		return r;
	}
	pthread_setspecific(dreq_key, NULL);
	body = r->body;
	memset(r, 0, offsetof(struct dreq, answer));
	r->answer[0] = 0;
	r->body = body; /* emptied by dreq_free */
	r->body.max = DEVAPI_BODY_MAX;
	return r;
}

/* After its owned members are released: r kept for this thread's next request, or freed. */
static void dreq_free(struct dreq *r)
{
	pthread_once(&dreq_once, dreq_key_init);
	if (r->body.cap > DREQ_KEEP_BODY || pthread_getspecific(dreq_key) || pthread_setspecific(dreq_key, r) != 0) {
		dreq_destroy(r);
		return;
	}
	r->body.len = 0;
	if (r->body.ptr)
		r->body.ptr[0] = 0;
}

/*
 * Readiness after a start (issue 18).  Until the rollout controller has
 * applied every rollout once (fleet_hold_offers), the fleet knows no
 * offers: a check-in would be told "no update", a download or a report
 * of an offered version refused as never offered.  Those routes answer
 * 503 with Retry-After instead, which devices already honour (admission);
 * registration, provisioning and /metrics do not depend on offers.
 */
static int waits_for_offers(enum route route)
{
	return route == R_CHECKIN || route == R_REPORTS || route == R_IMAGE || route == R_ORIGIN || route == R_PKI;
}

/* 503 with Retry-After: 1 and a static JSON body: the answer of a
 * request this instance cannot take now but another soon can (devices
 * already honour it, as admission's). */
static enum MHD_Result reply_retry(struct MHD_Connection *c, const char *json)
{
	struct MHD_Response *resp = MHD_create_response_from_buffer(strlen(json), (void *)json, MHD_RESPMEM_PERSISTENT);
	enum MHD_Result ret;

	if (!resp)
		return MHD_NO;
	MHD_add_response_header(resp, "Content-Type", "application/json");
	MHD_add_response_header(resp, "Retry-After", "1");
	ret = MHD_queue_response(c, MHD_HTTP_SERVICE_UNAVAILABLE, resp);
	MHD_destroy_response(resp);
	return ret;
}

static const char k_starting[] = "{\"error\":\"otacd is starting: the rollouts are not loaded yet; retry\"}";
static const char k_follower[] = "{\"error\":\"this otacd instance does not lead; retry\"}";

/* Issue 16: on a follower (api_follower.c) the calls that change the
 * fleet are refused like the API's writes, without the leader's address
 * (devices retry through the load balancer); reads and downloads go on. */
static int changes_fleet(enum route route)
{
	return route == R_CHECKIN || route == R_REPORTS || route == R_REGISTER || route == R_REGISTRATIONS ||
	       route == R_PROVISION;
}

/* 1 when a Content-Length value (digits: libmicrohttpd refused any other)
 * is above max; read by hand, saturating (strtoull per request showed in
 * a check-in's profile). */
static int length_over(const char *v, uint64_t max)
{
	uint64_t n = 0;
	for (; (unsigned)(unsigned char)*v - '0' < 10u; v++) {
		n = n * 10 + (uint64_t)(*v - '0');
		if (n > max)
			return 1;
	}
	return 0;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url, const char *method,
			      const char *version, const char *upload_data, size_t *upload_size, void **con_cls)
{
	struct devapi *a = cls;
	struct dreq *r = *con_cls;
	(void)version;

	if (!r) {
		const char *auth = devapi_header(c, "Authorization", sizeof("Authorization") - 1);
		const char *cl = devapi_header(c, "Content-Length", sizeof("Content-Length") - 1);
		unsigned bad;
		api_conn_busy(a->waiter, c, 1); /* the header is complete */
		r = dreq_new();
		*con_cls = r;
		r->route = route_of(method, url, &bad);
		if (auth && !strncasecmp(auth, "Bearer ", 7))
			r->token = auth + 7;
		/* a follower's listener has no fleet until it leads (devapi_attach);
		 * every thread that reads a->f below loaded it here first
		 * (devapi_forwardable() reads r->token: a TLS request with one is a
		 * device known by its credential, which the leader checks) */
		if (!bad && !__atomic_load_n(&a->f, __ATOMIC_ACQUIRE)) {
			if (cl && length_over(cl, DEVAPI_DISCARD_MAX)) {
				r->answered_early = 1;
				return reply_error(c, MHD_HTTP_CONTENT_TOO_LARGE, "request body larger than %zu bytes",
						   DEVAPI_BODY_MAX);
			}
			if (devapi_forwardable(a, c, r))
				r->forward = 1;   /* after the body (below) */
			else
				r->answered_early = 1;
			return r->forward ? MHD_YES : reply_retry(c, k_follower);
		}
		if (bad) {
			r->answered_early = 1;
			return reply_error(c, bad, bad == MHD_HTTP_NOT_FOUND ? "no such endpoint" : "method not allowed");
		}
		/* issue 16: a certificate a follower forwards, checked with the
		 * body (devapi_fwd_identify) instead of the connection's */
		r->fwd_cert = devapi_header(c, FWDCERT_HEADER, sizeof(FWDCERT_HEADER) - 1) ||
			      devapi_header(c, FWDCERT_AUTH_HEADER, sizeof(FWDCERT_AUTH_HEADER) - 1);
		/* issue 13: a client certificate names the device (every request:
		 * a revocation holds at the next one, resumed session or not) */
		if (!r->fwd_cert && a->tls && fleet_get_auth_mode(a->f) != FLEET_AUTH_TOKEN &&
		    (r->route == R_CHECKIN || r->route == R_REPORTS || r->route == R_IMAGE || r->route == R_PKI)) {
			int crc = cert_identify(a, c, r);
			if (crc < 0) {
				r->answered_early = 1;
				return reply_error(c, MHD_HTTP_UNAUTHORIZED, "%s", ota_error_last());
			}
		}
		/* a report batch may carry a credential per report instead */
		if (!r->token && !r->cert_dev[0] && !r->fwd_cert && !(r->route == R_METRICS && a->metrics_public) &&
		    r->route != R_REPORTS) {
			r->answered_early = 1;
			return reply_error(c, MHD_HTTP_UNAUTHORIZED, "missing or wrong token");
		}
		if (cl && length_over(cl, DEVAPI_DISCARD_MAX)) {
			r->answered_early = 1;
			return reply_error(c, MHD_HTTP_CONTENT_TOO_LARGE, "request body larger than %zu bytes", DEVAPI_BODY_MAX);
		}
		return MHD_YES;
	}
	if (*upload_size) {
		r->received += *upload_size;
		if (!r->too_big && !r->answered_early && buf_put(&r->body, upload_data, *upload_size) < 0) {
			r->too_big = 1;
			buf_release(&r->body);
		}
		*upload_size = 0;
		return r->received > DEVAPI_DISCARD_MAX ? MHD_NO : MHD_YES;
	}
	if (r->answered_early)
		return MHD_YES;
	if (r->too_big)
		return reply_error(c, MHD_HTTP_CONTENT_TOO_LARGE, "request body larger than %zu bytes", DEVAPI_BODY_MAX);
	if (r->forward)
		return devapi_forward(a, c, r, method, url);
	if (r->fwd_cert == 1) {
		r->fwd_cert = 2;
		if (devapi_fwd_identify(a, c, r, method, url) < 0)
			return reply_error(c, MHD_HTTP_UNAUTHORIZED, "%s", ota_error_last());
	}
	if (!r->submitted && changes_fleet(r->route) && api_following())
		return reply_retry(c, k_follower);
	if (!r->submitted && waits_for_offers(r->route) && fleet_offers_held(a->f))
		return reply_retry(c, k_starting);
	switch (r->route) {
	case R_CHECKIN: return do_checkin(a, c, r);
	case R_REPORTS:
	case R_REGISTER: return do_reports(a, c, r);
	case R_REGISTRATIONS: return do_registrations(a, c, r);
	case R_PROVISION: return do_provision(a, c, r);
	case R_METRICS: return do_metrics(a, c, r);
	case R_IMAGE: return do_image(a, c, r, url + 18);
	case R_ORIGIN: return do_origin(a, c, r, url + 18);
	case R_PKI: return do_pki(a, c, r, url);
	default: return MHD_NO;
	}
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
	struct devapi *a = cls;
	struct dreq *r = *con_cls;
	(void)toe;
	api_conn_busy(a->waiter, c, 0); /* the next request's header deadline starts */
	if (!r)
		return;
	api_forward_job_free(r->fwd);
	fleet_reg_free(r->reg);
	json_decref(r->refused);
	json_decref(r->duplicate);
	dreq_free(r);
	*con_cls = NULL;
}

static struct tls_server *limit_tls;   /* issue 13: devapi_set_tls */

static void conn_notify(void *cls, struct MHD_Connection *c, void **socket_context,
			enum MHD_ConnectionNotificationCode code)
{
	struct devapi *a = cls;
	if (code == MHD_CONNECTION_NOTIFY_STARTED)
		tls_server_conn_started(a->tls, c);
	api_conn_notify(a->waiter, c, socket_context, code);
}

/* ---- start / stop ------------------------------------------------------------ */

/* the same protections as the API's listener (docs/config.md) */
static int64_t limit_request_timeout_ms = 10000;
static unsigned limit_per_client = 128;

void devapi_set_tls(struct tls_server *t)
{
	limit_tls = t;
}

void devapi_set_limits(int64_t request_timeout_ms, unsigned max_per_client)
{
	limit_request_timeout_ms = request_timeout_ms;
	limit_per_client = max_per_client;
}

int devapi_start(struct devapi **out, struct fleet *f, const char *addr, int metrics_public)
{
	struct devapi *a = xcalloc(1, sizeof(*a));
	struct sockaddr_storage ss;
	socklen_t sslen;
	const union MHD_DaemonInfo *info;
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	unsigned pool = ncpu < 2 ? 2 : ncpu > 8 ? 8 : (unsigned)ncpu;
	struct MHD_OptionItem tlsopts[TLS_MHD_OPTIONS_MAX];
	int rc;

	*out = NULL;
	if ((rc = api_parse_listen(addr, &ss, &sslen)) < 0) {
		free(a);
		return rc;
	}
	pthread_once(&arena_once, arena_install);
	if (ss.ss_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	flags |= tls_server_mhd_options(limit_tls, tlsopts);
	tls_warn_if_plain("device", addr, (struct sockaddr *)&ss, limit_tls);
	a->f = f;
	a->tls = limit_tls;
	a->metrics_public = metrics_public;
	if ((rc = api_waiter_start(&a->waiter, limit_request_timeout_ms)) < 0) {
		free(a);
		return rc;
	}
	pthread_mutex_init(&a->mu, NULL);
	if (!f && (rc = devapi_fwd_new(a)) < 0) {
		pthread_mutex_destroy(&a->mu);
		api_waiter_stop(a->waiter);
		free(a);
		return rc;
	}
	a->mhd = MHD_start_daemon(flags, 0, NULL, NULL, handle, a,
				  MHD_OPTION_EXTERNAL_LOGGER, api_mhd_log, NULL, /* first, or MHD says so */
				  MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
				  MHD_OPTION_NOTIFY_COMPLETED, completed, a,
				  MHD_OPTION_NOTIFY_CONNECTION, conn_notify, a,
				  MHD_OPTION_THREAD_POOL_SIZE, pool,
				  MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)60,
				  MHD_OPTION_CONNECTION_LIMIT, (unsigned)20000,
				  MHD_OPTION_PER_IP_CONNECTION_LIMIT, limit_per_client,
				  MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned)1024,
				  MHD_OPTION_LISTENING_ADDRESS_REUSE, (unsigned)1,
				  MHD_OPTION_ARRAY, tlsopts,
				  MHD_OPTION_END);
	if (!a->mhd) {
		api_fwd_free(a->fwd);
		pthread_mutex_destroy(&a->mu);
		api_waiter_stop(a->waiter);
		free(a);
		return ota_error_set(OTA_ERROR, "cannot listen on %s (address in use, or not allowed)", addr);
	}
	info = MHD_get_daemon_info(a->mhd, MHD_DAEMON_INFO_BIND_PORT);
	a->port = info ? info->port : 0;
	*out = a;
	return 0;
}

void devapi_attach(struct devapi *d, struct fleet *f)
{
	if (d)
		__atomic_store_n(&d->f, f, __ATOMIC_RELEASE);
}

int devapi_port(const struct devapi *d)
{
	return d->port;
}

void devapi_stop(struct devapi *d)
{
	if (!d)
		return;
	/* MHD must not be stopped with connections still suspended: refuse
	 * new batches, then let the writer finish (and resume) the others */
	__atomic_store_n(&d->stopping, 1, __ATOMIC_SEQ_CST);
	while (__atomic_load_n(&d->inflight, __ATOMIC_SEQ_CST))
		usleep(1000);
	if (d->fwd) /* forwards on their way answered, their connections resumed */
		api_fwd_drain(d->fwd);
	MHD_stop_daemon(d->mhd);
	api_fwd_free(d->fwd);
	api_waiter_stop(d->waiter);
	pthread_mutex_destroy(&d->mu);
	free(d);
}
