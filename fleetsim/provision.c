/*
 * provision.c - otacd-fleetsim registers its fleet before the loop starts.
 *
 * Why: devices need credentials of their own (docs/update-server.md); the
 * fleet key may only register them, so every simulated device is
 * registered once, at start, through the real endpoint and its limits.
 *
 * How: ids are sent in batches; the credentials the server mints are kept
 * in fs->cred.  A 429 with Retry-After is waited out, one without it (a
 * batch larger than the server's burst) halves the batch; *stop or the
 * run's duration ends it early.
 */
#include "run_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int unhex16(const char *s, uint8_t out[16])
{
	for (int k = 0; k < 16; k++) {
		unsigned v;
		if (!s[2 * k] || !s[2 * k + 1] || sscanf(s + 2 * k, "%2x", &v) != 1)
			return -1;
		out[k] = (uint8_t)v;
	}
	return s[32] ? -1 : 0;
}

/*
 * Register every simulated device with the fleet key (POST
 * /device/v1/register, REGISTER_BATCH ids a request) and keep the
 * credentials the server mints; a refusal by the registration rate limit
 * (429) is waited out as its Retry-After says, and a request larger than
 * the server's burst (429 without Retry-After) is split.
 */
#define REGISTER_BATCH 10000
int fs_register_fleet(struct fleetsim *fs, volatile sig_atomic_t *stop)
{
	CURL *e = curl_easy_init();
	struct xfer x = { 0 };
	char *url = xasprintf("%s/device/v1/register", fs->base), *h;
	struct curl_slist *hdr;
	struct buf req = BUF_INIT;
	int64_t t0 = fs_real_ms();
	uint32_t batch = REGISTER_BATCH;
	int rc = 0;

	h = xasprintf("Authorization: Bearer %s", fs->o.fleet_key ? fs->o.fleet_key : "");
	hdr = curl_slist_append(NULL, h);
	free(h);
	hdr = curl_slist_append(hdr, "Content-Type: application/json");
	hdr = curl_slist_append(hdr, "Expect:");
	buf_init(&x.body, 4u << 20);
	if (!e) {
		rc = ota_error_set(OTA_ERROR, "curl_easy_init failed");
		goto out;
	}
	for (uint32_t first = 0; first < fs->ndev && rc == 0 && !*stop;) {
		uint32_t n = fs->ndev - first < batch ? fs->ndev - first : batch;
		long st = 0;
		CURLcode cc;
		json_t *ans, *creds;
		char id[16];

		buf_clear(&req);
		buf_puts(&req, "{\"devices\":[");
		for (uint32_t i = 0; i < n; i++) {
			sim_device_id(id, sizeof(id), first + i);
			buf_printf(&req, "%s\"%s\"", i ? "," : "", id);
		}
		buf_puts(&req, "]}");
		buf_clear(&x.body);
		curl_easy_reset(e);
		curl_easy_setopt(e, CURLOPT_URL, url);
		curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdr);
		curl_easy_setopt(e, CURLOPT_POSTFIELDS, req.ptr);
		curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)req.len);
		curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, fs_on_body);
		curl_easy_setopt(e, CURLOPT_WRITEDATA, &x);
		curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x.err);
		curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
		curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 120000L);
		fs_tls_setopt(fs, e);
		cc = curl_easy_perform(e);
		curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &st);
		if (cc == CURLE_PEER_FAILED_VERIFICATION || cc == CURLE_SSL_CACERT_BADFILE) {
			/* a server that is not who the CA says: never talk to it */
			rc = ota_error_set(OTA_EAUTH, "refusing the device API at %s: %s", fs->base,
					   x.err[0] ? x.err : curl_easy_strerror(cc));
			break;
		}
		if (cc != CURLE_OK) {
			/* the server may not be up yet: try again shortly */
			if (fs->o.duration_s > 0 && fs_real_ms() - t0 >= (int64_t)(fs->o.duration_s * 1000))
				break;
			fs_warn(fs, "registering devices: %s", x.err);
			sleep(1);
			continue;
		}
		if (st == 429) {
			curl_off_t wait = 0;
			curl_easy_getinfo(e, CURLINFO_RETRY_AFTER, &wait);
			if (wait <= 0 && n > 1) {
				batch = n / 2;   /* more than the server's burst: smaller requests */
				continue;
			}
			if (wait <= 0) {
				rc = ota_error_set(OTA_ERROR, "the server refuses to register %u devices: %.300s", n,
						   buf_cstr(&x.body));
				break;
			}
			fprintf(stderr, "fleetsim: registration rate limit: waiting %lds\n", (long)wait);
			sleep((unsigned)wait);
			continue;
		}
		ans = st == 200 ? json_loadb(x.body.ptr ? x.body.ptr : "", x.body.len, 0, NULL) : NULL;
		creds = json_object_get(ans, "credentials");
		if (!json_is_array(creds) || json_array_size(creds) != n) {
			rc = ota_error_set(OTA_ERROR, "registering devices: %ld %.300s", st, buf_cstr(&x.body));
			json_decref(ans);
			break;
		}
		for (uint32_t i = 0; i < n && rc == 0; i++) {
			const char *c = json_string_value(json_array_get(creds, i));
			if (!c || unhex16(c, fs->cred[first + i]) < 0)
				rc = ota_error_set(OTA_ERROR, "registering devices: credentials[%u] is not 32 hex digits", i);
		}
		json_decref(ans);
		first += n;
	}
out:
	curl_easy_cleanup(e);
	curl_slist_free_all(hdr);
	buf_release(&x.body);
	buf_release(&req);
	free(url);
	return rc;
}
