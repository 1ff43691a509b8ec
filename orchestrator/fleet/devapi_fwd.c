/*
 * devapi_fwd.c - the device API on a follower (issue 16, docs/scale.md,
 * "The fleet on several instances"): every route forwarded to the
 * leader's device API (devapi_forwardable, devapi_forward), a device's
 * client certificate carried signed (fwd_cert_lines, fwdcert.h) and, on
 * the leader, checked (devapi_fwd_identify); a download the leader
 * vouched for streamed here from the shared artifact store.  The listener
 * itself, the routes and their checks are devapi.c's (devapi_int.h).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../common/util.h"
#include "../api/api_forward.h"
#include "../artifact.h"
#include "../tls/tls.h"
#include "devapi_int.h"
#include "fleet.h"
#include "fleet_ca.h"
#include "fwdcert.h"

/* issue 16: the key of fwdcert.h (devapi_set_forward, before the listener starts) */
static unsigned char fwd_key[32];
static int fwd_key_set;

static const char *limit_forward_ca;   /* issue 16: devapi_set_forward */

void devapi_set_forward(const char *cacert, const char *device_secret)
{
	limit_forward_ca = cacert;
	fwd_key_set = device_secret != NULL;
	if (device_secret)
		fwdcert_key(device_secret, fwd_key);
}

int devapi_fwd_new(struct devapi *a)
{
	return api_fwd_new(&a->fwd, &(struct api_fwd_config){ 0, 0, limit_forward_ca });
}

void devapi_set_leader(struct devapi *d, const char *url)
{
	if (!d)
		return;
	pthread_mutex_lock(&d->mu);
	snprintf(d->leader, sizeof(d->leader), "%s", url ? url : "");
	pthread_mutex_unlock(&d->mu);
}

/* 1 when the TLS client sent a certificate (verified by the handshake). */
static int peer_has_cert(struct MHD_Connection *c)
{
	unsigned char *der = NULL;
	size_t len = 0;
	int rc = tls_peer_cert_der(c, &der, &len);
	free(der);
	return rc != OTA_ENOTFOUND;
}

/*
 * Issue 16: a follower has no fleet (devapi_attach); every route goes to
 * the leader's device API (recorded in the fleet database,
 * devapi_set_leader) with api_forward_begin(), as the API forwards its
 * writes, and the leader authenticates the credential itself: its token,
 * or its client certificate, carried signed (fwd_cert_lines, fwdcert.h).
 * Forwarded: what changes the fleet, the reads (/metrics, the
 * registrations' audit, the PKI's revocations and manifests: small
 * answers, relayed; /metrics asks for the fleet-wide part only,
 * DEVAPI_FLEET_METRICS, and this process's counters follow it), and the downloads' check (devapi_forward(): the bytes come
 * from the shared store).  Not forwarded (503 + Retry-After: 1): a request
 * that crossed a hop already, and, on an instance without the device
 * secret's key (none in otacd: main.c always sets it), a device's
 * certificate without a token.
 */
static int cert_route(enum route route)
{
	return route == R_CHECKIN || route == R_REPORTS || route == R_IMAGE || route == R_PKI;
}

int devapi_forwardable(struct devapi *a, struct MHD_Connection *c, const struct dreq *r)
{
	if (!a->fwd || r->route == R_NONE || api_forward_seen(c))
		return 0;
	return !a->tls || r->token || !cert_route(r->route) || fwd_key_set || !peer_has_cert(c);
}

/*
 * Issue 16: the follower's side of fwdcert.h.  The device's client
 * certificate (verified by this listener's handshake) in lines[0..1],
 * signed over the request; nothing when it sent none.  The strings are
 * the caller's to free.
 */
static void fwd_cert_lines(struct devapi *a, struct MHD_Connection *c, const struct dreq *r, const char *method,
			   const char *url, char *lines[3])
{
	unsigned char *der = NULL;
	size_t len = 0;
	char *b64, *auth;

	lines[0] = lines[1] = lines[2] = NULL;
	if (!a->tls || !fwd_key_set || tls_peer_cert_der(c, &der, &len) != 0) {
		free(der);
		return;
	}
	fwdcert_sign(fwd_key, method, url, r->body.ptr, r->body.len, der, len, (int64_t)time(NULL), &b64, &auth);
	lines[0] = xasprintf("%s: %s", FWDCERT_HEADER, b64);
	lines[1] = xasprintf("%s: %s", FWDCERT_AUTH_HEADER, auth);
	free(b64);
	free(auth);
	free(der);
}

/*
 * Issue 16: the leader's side of fwdcert.h, once the body is read: the
 * header believed only with a valid MAC and a fresh t, then the
 * certificate checked as devapi.c's cert_identify checks a TLS client's.  0, or
 * OTA_EAUTH (the reason in ota_error_last()).
 */
int devapi_fwd_identify(struct devapi *a, struct MHD_Connection *c, struct dreq *r, const char *method, const char *url)
{
	unsigned char *der = NULL;
	size_t len = 0;
	int rc;

	if (!fwd_key_set)
		return ota_error_set(OTA_EAUTH, "forwarded client certificate: this instance has no device secret");
	rc = fwdcert_verify(fwd_key, method, url, r->body.ptr, r->body.len,
			    devapi_header(c, FWDCERT_HEADER, sizeof(FWDCERT_HEADER) - 1),
			    devapi_header(c, FWDCERT_AUTH_HEADER, sizeof(FWDCERT_AUTH_HEADER) - 1), (int64_t)time(NULL), &der,
			    &len);
	if (rc == 0 && fleet_get_auth_mode(a->f) != FLEET_AUTH_TOKEN &&
	    cert_route(r->route))
		rc = fleet_auth_cert_ex(a->f, der, len, NULL, NULL, r->cert_dev, sizeof(r->cert_dev), r->cert_product,
					sizeof(r->cert_product));
	free(der);
	if (rc == 0 && !r->token && !r->cert_dev[0] && r->route != R_REPORTS)
		rc = ota_error_set(OTA_EAUTH, "missing or wrong token");
	return rc < 0 ? OTA_EAUTH : 0;
}

static int download(enum route route)
{
	return route == R_IMAGE || route == R_ORIGIN;
}

enum MHD_Result devapi_forward(struct devapi *a, struct MHD_Connection *c, struct dreq *r, const char *method,
			       const char *url)
{
	struct api_fwd_req q;
	struct api_fwd_stream read = { API_FWD_READ, -1, NULL, 0 };
	struct MHD_Response *resp = NULL;
	unsigned status = 0;
	char leader[sizeof(a->leader)], *lines[3];
	const char *extra[4], *fwd_method;
	struct buf own = BUF_INIT;
	enum MHD_Result ret;
	int begun, n = 0;

	if (r->fwd) { /* resumed: the leader's answer */
		int rc = api_forward_end(r->fwd, &status, &resp);
		r->fwd = NULL;
		/* a download the leader vouched for: the bytes (and the
		 * Range) from the shared store, here (devapi.c's serve_or_vouch, devapi_serve_image) */
		if (rc == 0 && status == MHD_HTTP_NO_CONTENT && download(r->route) && artifact_digest_valid(url + 18)) {
			MHD_destroy_response(resp);
			return devapi_serve_image(c, url + 18, 0);
		}
	} else {
		pthread_mutex_lock(&a->mu);
		memcpy(leader, a->leader, sizeof(leader));
		pthread_mutex_unlock(&a->mu);
		/* HEAD as GET: libmicrohttpd sends a HEAD client the headers only;
		 * the certificate is signed over the method the leader sees */
		fwd_method = strcmp(method, "HEAD") ? method : "GET";
		fwd_cert_lines(a, c, r, fwd_method, url, lines);
		if (lines[0]) {
			extra[n++] = lines[0];
			extra[n++] = lines[1];
		}
		if (download(r->route))
			extra[n++] = DEVAPI_CHECK ": 1";
		/* /metrics: the leader's fleet-wide part, then this process's
		 * own counters, appended to the leader's 200 only (the leader
		 * decides who may read it) */
		if (r->route == R_METRICS) {
			extra[n++] = DEVAPI_FLEET_METRICS ": 1";
			devapi_process_metrics(a, &own, 0);
		}
		extra[n] = NULL;
		q = (struct api_fwd_req){ c, leader[0] ? leader : NULL, fwd_method, url, r->body.ptr, r->body.len,
					  DEVAPI_BODY_MAX, NULL, 0, extra, own.len ? own.ptr : NULL, own.len };
		begun = api_forward_begin_stream(a->fwd, &q, strcmp(q.method, "GET") ? NULL : &read, &r->fwd, &status,
						 &resp) == 0; /* copies the lines and own */
		free(lines[0]);
		free(lines[1]);
		buf_release(&own);
		if (begun)
			return MHD_YES;
	}
	if (!resp)
		return MHD_NO;
	ret = MHD_queue_response(c, status, resp);
	MHD_destroy_response(resp);
	return ret;
}
