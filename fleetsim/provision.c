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

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

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

/* ---- issue 13: client certificates (--provisioner) ------------------------- */

/* A PEM of what write puts into a memory BIO, as a curl blob. */
static int pem_blob(struct curl_blob *out, EVP_PKEY *k, X509_REQ *req)
{
	BIO *b = BIO_new(BIO_s_mem());
	char *data;
	long n;
	int ok = b && (k ? PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL) : PEM_write_bio_X509_REQ(b, req));
	if (!ok || (n = BIO_get_mem_data(b, &data)) <= 0) {
		BIO_free(b);
		return ota_error_set(OTA_ERROR, "PEM encoding failed");
	}
	out->data = xmalloc((size_t)n + 1);
	memcpy(out->data, data, (size_t)n);
	((char *)out->data)[n] = 0;
	out->len = (size_t)n;
	out->flags = CURL_BLOB_NOCOPY;
	BIO_free(b);
	return 0;
}

/* Device i's key (into fs->key[i]) and CSR (PEM, into csr). */
static int make_key_and_csr(struct fleetsim *fs, uint32_t i, struct curl_blob *csr)
{
	EVP_PKEY *k = EVP_EC_gen("P-256");
	X509_REQ *r = X509_REQ_new();
	X509_NAME *n = X509_NAME_new();
	char id[16];
	int rc = 0;

	sim_device_id(id, sizeof(id), i);
	if (!k || !r || !n || !X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)id, -1, -1, 0) ||
	    !X509_REQ_set_subject_name(r, n) || !X509_REQ_set_pubkey(r, k) || X509_REQ_sign(r, k, EVP_sha256()) <= 0) {
		rc = ota_error_set(OTA_ERROR, "device %s: cannot make its key and CSR", id);
		goto out;
	}
	if ((rc = pem_blob(&fs->key[i], k, NULL)) < 0 || (rc = pem_blob(csr, NULL, r)) < 0)
		goto out;
out:
	X509_NAME_free(n);
	X509_REQ_free(r);
	EVP_PKEY_free(k);
	return rc;
}

/*
 * Every device makes its own P-256 key and posts a CSR with the
 * provisioner token (POST /device/v1/provision, one at a time as a factory
 * line would); the certificate answered is its client certificate for the
 * run.  A 429 (the provisioner's --rate) is waited out as Retry-After says,
 * a 503 (another provisioning in progress) retried at once.
 */
int fs_provision_certs(struct fleetsim *fs, volatile sig_atomic_t *stop)
{
	CURL *e = curl_easy_init();
	struct xfer x = { 0 };
	char *url = xasprintf("%s/device/v1/provision", fs->base), *h;
	struct curl_slist *hdr;
	int64_t t0 = fs_real_ms();
	int rc = 0;

	fs->cert = xcalloc(fs->ndev, sizeof(*fs->cert));
	fs->key = xcalloc(fs->ndev, sizeof(*fs->key));
	h = xasprintf("Authorization: Bearer %s", fs->o.provisioner);
	hdr = curl_slist_append(NULL, h);
	explicit_bzero(h, strlen(h));
	free(h);
	hdr = curl_slist_append(hdr, "Content-Type: application/json");
	hdr = curl_slist_append(hdr, "Expect:");
	buf_init(&x.body, 1u << 20);
	if (!e) {
		rc = ota_error_set(OTA_ERROR, "curl_easy_init failed");
		goto out;
	}
	for (uint32_t i = 0; i < fs->ndev && rc == 0 && !*stop;) {
		struct curl_blob csr = { 0 };
		json_t *req, *ans;
		const char *pem;
		char id[16], *body;
		long st = 0;
		CURLcode cc;

		sim_device_id(id, sizeof(id), i);
		free(fs->key[i].data); /* a retry makes a new key: nothing was issued for the old one */
		fs->key[i].data = NULL;
		if ((rc = make_key_and_csr(fs, i, &csr)) < 0)
			break;
		req = json_pack("{ss ss ss}", "device", id, "csr", (const char *)csr.data, "product", fs->o.product);
		body = json_dumps(req, JSON_COMPACT);
		json_decref(req);
		free(csr.data);
		buf_clear(&x.body);
		curl_easy_reset(e);
		curl_easy_setopt(e, CURLOPT_URL, url);
		curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdr);
		curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
		curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
		curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, fs_on_body);
		curl_easy_setopt(e, CURLOPT_WRITEDATA, &x);
		curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x.err);
		curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
		curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 60000L);
		fs_tls_setopt(fs, e);
		cc = curl_easy_perform(e);
		free(body);
		curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &st);
		if (cc == CURLE_PEER_FAILED_VERIFICATION || cc == CURLE_SSL_CACERT_BADFILE) {
			rc = ota_error_set(OTA_EAUTH, "refusing the device API at %s: %s", fs->base,
					   x.err[0] ? x.err : curl_easy_strerror(cc));
			break;
		}
		if (cc != CURLE_OK || st == 503) {
			if (fs->o.duration_s > 0 && fs_real_ms() - t0 >= (int64_t)(fs->o.duration_s * 1000))
				break;
			if (cc != CURLE_OK) {
				fs_warn(fs, "provisioning devices: %s", x.err);
				sleep(1);
			}
			continue;
		}
		if (st == 429) {
			curl_off_t wait = 0;
			curl_easy_getinfo(e, CURLINFO_RETRY_AFTER, &wait);
			fprintf(stderr, "fleetsim: provisioning rate limit: waiting %lds\n", (long)(wait > 0 ? wait : 1));
			sleep(wait > 0 ? (unsigned)wait : 1);
			continue;
		}
		ans = st == 200 ? json_loadb(x.body.ptr ? x.body.ptr : "", x.body.len, 0, NULL) : NULL;
		if (!(pem = json_string_value(json_object_get(ans, "certificate")))) {
			rc = ota_error_set(OTA_ERROR, "provisioning device %s: %ld %.300s", id, st, buf_cstr(&x.body));
			json_decref(ans);
			break;
		}
		fs->cert[i].data = xstrdup(pem);
		fs->cert[i].len = strlen(pem);
		fs->cert[i].flags = CURL_BLOB_NOCOPY;
		json_decref(ans);
		i++;
	}
out:
	curl_easy_cleanup(e);
	curl_slist_free_all(hdr);
	buf_release(&x.body);
	free(url);
	return rc;
}
