/*
 * xfer.c - otacd-fleetsim's transfers: a pool of libcurl easy handles
 * (struct xfer, run_int.h) reused for check-ins, image downloads, image
 * fetches and report POSTs on the loop's multi handle.  A transfer speaks
 * as a device (its credential or certificate, its id) or, for report
 * batches, as the fleet; its answer goes to x->body, or an image straight
 * into its download (with the Range start from the Content-Range header).
 * Every server is verified (--cacert, TLS 1.2+) and TLS sessions are
 * shared, except under mTLS, where a session is one device's.  All of it
 * runs on the loop's thread (run.c).
 */
#include "run_int.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define ANSWER_MAX (1u << 20)

static size_t on_header(char *p, size_t sz, size_t nm, void *ud)
{
	struct xfer *x = ud;
	size_t n = sz * nm;

	if (n >= 5 && !strncmp(p, "HTTP/", 5)) {
		x->range_start = -1;
	} else if (n > 14 && !strncasecmp(p, "Content-Range:", 14)) {
		char line[128];
		long long a;

		snprintf(line, sizeof(line), "%.*s", (int)(n < 127 ? n : 127), p + 14);
		if (sscanf(line, " bytes %lld-", &a) == 1)
			x->range_start = a;
	}
	return n;
}

size_t fs_on_body(char *p, size_t sz, size_t nm, void *ud)
{
	struct xfer *x = ud;
	size_t n = sz * nm;

	if (x->flaky_abort)
		return 0;               /* the device loses the answer */
	if (x->dl && !x->started) {
		long st = 0;

		curl_easy_getinfo(x->e, CURLINFO_RESPONSE_CODE, &st);
		x->started = 1;
		if (st == 200 || st == 206) {
			if (sim_download_response(x->dl, st, x->range_start)) {
				x->failed = 1;
				buf_puts(&x->body, ota_error_last());
				return 0;
			}
			x->body_is_data = 1;
		}
	}
	if (x->body_is_data)
		return sim_download_data(x->dl, p, n);
	if (buf_put(&x->body, p, n))
		return 0;
	return n;
}

void fs_client_cert(struct fleetsim *fs, CURL *e, uint32_t i)
{
	if (!fs->cert)
		return;
	curl_easy_setopt(e, CURLOPT_SSLCERT_BLOB, &fs->cert[i]);
	curl_easy_setopt(e, CURLOPT_SSLCERTTYPE, "PEM");
	curl_easy_setopt(e, CURLOPT_SSLKEY_BLOB, &fs->key[i]);
	curl_easy_setopt(e, CURLOPT_SSLKEYTYPE, "PEM");
}

void fs_tls_setopt(struct fleetsim *fs, CURL *e)
{
	curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
	curl_easy_setopt(e, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
	if (fs->o.cacert)
		curl_easy_setopt(e, CURLOPT_CAINFO, fs->o.cacert);
	if (fs->share && !fs->cert) /* mTLS: a session is one device's */
		curl_easy_setopt(e, CURLOPT_SHARE, fs->share);
}

struct xfer *fs_xfer_new(struct fleetsim *fs, enum xkind kind, const char *url)
{
	struct xfer *x = NULL;

	for (size_t k = 0; k < fs->nxs; k++)
		if (!fs->xs[k]->busy) {
			x = fs->xs[k];
			curl_easy_reset(x->e);
			break;
		}
	if (!x) {
		x = xcalloc(1, sizeof(*x));
		x->e = curl_easy_init();
		if (!x->e) {
			free(x);
			return NULL;
		}
		buf_init(&x->body, ANSWER_MAX);
		buf_init(&x->req, BUF_NOLIMIT);
		fs->xs = xrealloc(fs->xs, (fs->nxs + 1) * sizeof(*fs->xs));
		fs->xs[fs->nxs++] = x;
	}
	x->kind = kind;
	x->busy = 1;
	x->dl = NULL;
	x->nreports = 0;
	x->range_start = -1;
	x->started = x->body_is_data = x->failed = x->flaky_abort = x->probe = 0;
	x->err[0] = 0;
	buf_clear(&x->body);
	buf_clear(&x->req);
	curl_easy_setopt(x->e, CURLOPT_URL, url);
	curl_easy_setopt(x->e, CURLOPT_PRIVATE, x);
	curl_easy_setopt(x->e, CURLOPT_ERRORBUFFER, x->err);
	curl_easy_setopt(x->e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(x->e, CURLOPT_WRITEFUNCTION, fs_on_body);
	curl_easy_setopt(x->e, CURLOPT_WRITEDATA, x);
	curl_easy_setopt(x->e, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(x->e, CURLOPT_HEADERDATA, x);
	curl_easy_setopt(x->e, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
	curl_easy_setopt(x->e, CURLOPT_TIMEOUT_MS, kind == X_CHECKIN ? 60000L : 600000L);
	fs_tls_setopt(fs, x->e);
	curl_slist_free_all(x->hdrs);
	x->hdrs = NULL;
	curl_easy_setopt(x->e, CURLOPT_HTTPHEADER, kind == X_REPORTS ? fs->hdr_json : fs->hdr_auth);
	return x;
}

/* The request is device i's: its credential and id in the headers, unless
 * url is an image's absolute URL off the device API (a CDN or object store,
 * issue 15): that gets no credential at all. */
void fs_xfer_as_device(struct fleetsim *fs, struct xfer *x, uint32_t i, const char *url)
{
	char line[128], hex[2 * sizeof(fs->cred[0]) + 1], id[16];
	size_t nb = strlen(fs->base);

	if (url && (strncmp(url, fs->base, nb) || url[nb] != '/')) {
		curl_easy_setopt(x->e, CURLOPT_HTTPHEADER, NULL);
		return;
	}

	ota_hex(hex, fs->cred[i], sizeof(fs->cred[0]));
	sim_device_id(id, sizeof(id), i);
	if (fs->cert) { /* mTLS: the certificate is the identity */
		fs_client_cert(fs, x->e, i);
	} else {
		snprintf(line, sizeof(line), "Authorization: Bearer %s", hex);
		x->hdrs = curl_slist_append(NULL, line);
	}
	snprintf(line, sizeof(line), "X-Device-Id: %s", id);
	x->hdrs = curl_slist_append(x->hdrs, line);
	if (x->kind == X_CHECKIN) {
		x->hdrs = curl_slist_append(x->hdrs, "Content-Type: application/json");
		x->hdrs = curl_slist_append(x->hdrs, "Expect:");
	}
	curl_easy_setopt(x->e, CURLOPT_HTTPHEADER, x->hdrs);
}

void fs_xfer_post(struct xfer *x)
{
	curl_easy_setopt(x->e, CURLOPT_POSTFIELDS, x->req.ptr);
	curl_easy_setopt(x->e, CURLOPT_POSTFIELDSIZE, (long)x->req.len);
}

int fs_xfer_start(struct fleetsim *fs, struct xfer *x)
{
	if (curl_multi_add_handle(fs->multi, x->e) != CURLM_OK) {
		x->busy = 0;
		return ota_error_set(OTA_ERROR, "curl_multi_add_handle failed");
	}
	if (x->kind == X_CHECKIN || x->kind == X_DOWNLOAD)
		fs->dev_active++;
	else if (x->kind == X_REPORTS)
		fs->reports_inflight++;
	return 0;
}

void fs_xfer_end(struct fleetsim *fs, struct xfer *x)
{
	curl_multi_remove_handle(fs->multi, x->e);
	if (x->kind == X_CHECKIN || x->kind == X_DOWNLOAD)
		fs->dev_active--;
	else if (x->kind == X_REPORTS)
		fs->reports_inflight--;
	x->busy = 0;
}

/* After the answer was handled: what only a fetch owns. */
void fs_xfer_recycle(struct xfer *x)
{
	if (x->kind == X_FETCH) {
		sim_download_release(&x->fetch);
		buf_release(&x->keep);
	}
	x->dl = NULL;
	x->busy = 0;
}
