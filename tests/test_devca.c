/*
 * test_devca.c - device identity by certificate (issue 13, the CA,
 * provisioning and revocation half): the real otacd, real HTTP on
 * loopback, the real otactl; every certificate and key made here at test
 * time with OpenSSL and checked with OpenSSL.
 *
 *   - `otactl fleet ca init` makes the CA (key 0600) once; a factory
 *     provisioner posts CSRs to POST /device/v1/provision and gets
 *     certificates checked here for issuer, signature, CN, OU, key usage and
 *     EKU; out-of-scope ids and products, a spent count, a rate overrun, a
 *     CSR with a bad self-signature, a CSR for another id, a second identity
 *     for a provisioned device are refused and audited; the count survives a
 *     SIGKILL;
 *   - fleet_ca_identify (through the daemon's POST /api/v1/devices/identify
 *     and in-process) accepts the issued certificate and refuses revoked
 *     (after `otactl devices revoke`, at once and after a restart), expired,
 *     not-yet-valid, foreign-CA, self-signed, wrong-EKU and CA certificates,
 *     each counted by reason; fleet_auth_cert takes the device from the
 *     certificate, never from the body, and follows device_auth;
 *   - an external CA (device_ca: {cert}) verifies but cannot issue; an
 *     imported CA is checked (a CA, its key) before it is written; a
 *     STATE/devca CA with none in the database is copied there once;
 *   - the CA key sealed for the database (issue 16, fleet_ca_seal) opens
 *     with the device secret it was sealed with and nothing else: not with
 *     another secret, not under another certificate, not altered.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <signal.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "../common/httpc.h"
#include "../orchestrator/fleet/fleet.h"
#include "../orchestrator/fleet/fleet_ca.h"
#include "devharness.h"
#include "harness.h"

/* ---- OpenSSL helpers (the test's own, independent of fleet_ca.c) -------- */

static EVP_PKEY *new_key(void)
{
	EVP_PKEY *k = EVP_EC_gen("P-256");
	assert_non_null(k);
	return k;
}

static char *req_pem(X509_REQ *r)
{
	BIO *b = BIO_new(BIO_s_mem());
	char *data;
	long n;
	char *out;
	assert_true(PEM_write_bio_X509_REQ(b, r));
	n = BIO_get_mem_data(b, &data);
	out = xmalloc((size_t)n + 1);
	memcpy(out, data, (size_t)n);
	out[n] = 0;
	BIO_free(b);
	return out;
}

static char *cert_pem(X509 *x)
{
	BIO *b = BIO_new(BIO_s_mem());
	char *data;
	long n;
	char *out;
	assert_true(PEM_write_bio_X509(b, x));
	n = BIO_get_mem_data(b, &data);
	out = xmalloc((size_t)n + 1);
	memcpy(out, data, (size_t)n);
	out[n] = 0;
	BIO_free(b);
	return out;
}

/* A CSR for cn signed by k; corrupt: one bit of its signature flipped. */
static char *make_csr(EVP_PKEY *k, const char *cn, int corrupt)
{
	X509_REQ *r = X509_REQ_new();
	X509_NAME *n = X509_NAME_new();
	char *pem;
	if (cn)
		assert_true(X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1, 0));
	assert_true(X509_REQ_set_subject_name(r, n));
	assert_true(X509_REQ_set_pubkey(r, k));
	assert_true(X509_REQ_sign(r, k, EVP_sha256()) > 0);
	if (corrupt) {
		const ASN1_BIT_STRING *sig = NULL;
		X509_REQ_get0_signature(r, &sig, NULL);
		((ASN1_BIT_STRING *)sig)->data[sig->length / 2] ^= 0x01;
	}
	pem = req_pem(r);
	X509_NAME_free(n);
	X509_REQ_free(r);
	return pem;
}

/*
 * A certificate for subject_key with CN cn, valid [now+nb_s, now+na_s],
 * signed by issuer_key as issuer (NULL: self-signed); eku NULL: none;
 * ca: CA:TRUE.
 */
static X509 *make_cert(X509 *issuer, EVP_PKEY *issuer_key, EVP_PKEY *subject_key, const char *cn, long nb_s, long na_s,
		       const char *eku, int ca)
{
	X509 *x = X509_new();
	X509_NAME *n = X509_NAME_new();
	static long serial = 1000;
	assert_true(X509_set_version(x, 2));
	ASN1_INTEGER_set(X509_get_serialNumber(x), serial++);
	X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1, 0);
	X509_set_subject_name(x, n);
	X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : n);
	X509_gmtime_adj(X509_getm_notBefore(x), nb_s);
	X509_gmtime_adj(X509_getm_notAfter(x), na_s);
	X509_set_pubkey(x, subject_key);
	dh_x509_add_ext(issuer ? issuer : x, x, NID_basic_constraints, ca ? "critical,CA:TRUE" : "critical,CA:FALSE");
	dh_x509_add_ext(issuer ? issuer : x, x, NID_key_usage, ca ? "critical,keyCertSign,cRLSign" : "critical,digitalSignature");
	if (eku)
		dh_x509_add_ext(issuer ? issuer : x, x, NID_ext_key_usage, eku);
	assert_true(X509_sign(x, issuer_key, EVP_sha256()) > 0);
	X509_NAME_free(n);
	return x;
}

static X509 *pem_cert(const char *pem)
{
	BIO *b = BIO_new_mem_buf(pem, -1);
	X509 *x = PEM_read_bio_X509(b, NULL, NULL, NULL);
	BIO_free(b);
	assert_non_null(x);
	return x;
}

static X509 *file_cert(const char *path)
{
	struct buf b = BUF_INIT;
	X509 *x;
	assert_int_equal(ota_read_file(&b, path, 1 << 20), 0);
	x = pem_cert(buf_cstr(&b));
	buf_release(&b);
	return x;
}

static EVP_PKEY *file_key(const char *path)
{
	FILE *f = fopen(path, "r");
	EVP_PKEY *k;
	assert_non_null(f);
	k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
	fclose(f);
	assert_non_null(k);
	return k;
}

static void name_entry(X509_NAME *n, int nid, char *out, size_t len)
{
	int i = X509_NAME_get_index_by_NID(n, nid, -1);
	out[0] = 0;
	if (i >= 0)
		X509_NAME_get_text_by_NID(n, nid, out, (int)len);
}

/* ---- daemon helpers ---------------------------------------------------------- */

/* The harness's JSON calls borrow the body: these take it. */
static long post_as(struct daemon *d, const char *token, const char *path, json_t *body, json_t **out)
{
	long status = h_call_as(d, token, "POST", path, body, out);
	json_decref(body);
	return status;
}

static long post(struct daemon *d, const char *path, json_t *body, json_t **out)
{
	return post_as(d, d->token, path, body, out);
}

/* POST /device/v1/provision as a factory would; the answer in *ans, the
 * Retry-After header in *retry when wanted. */
static long provision(struct daemon *d, const char *token, const char *device, const char *product, const char *csr,
		      json_t **ans, long *retry)
{
	char *url = xasprintf("%s/device/v1/provision", d->device_url);
	json_t *req = json_pack("{ss ss}", "device", device, "csr", csr);
	struct httpc_response r = HTTPC_RESPONSE_INIT;
	char *body, *ra = NULL;
	long status;
	if (product)
		json_object_set_new(req, "product", json_string(product));
	body = json_dumps(req, JSON_COMPACT);
	assert_int_equal(httpc_request(&r, "POST", url, token, "application/json", body, strlen(body), 30000), 0);
	status = r.status;
	if (ans)
		*ans = json_loads(buf_cstr(&r.body), 0, NULL);
	if (retry)
		*retry = httpc_response_header(&ra, &r, "Retry-After") == 0 ? atol(ra) : -1;
	free(ra);
	free(body);
	json_decref(req);
	httpc_response_release(&r);
	free(url);
	return status;
}

static const char *err_of(json_t *ans)
{
	const char *e = json_string_value(json_object_get(ans, "error"));
	return e ? e : "";
}

/* The daemon's verdict on a certificate: NULL accepted (device in id), else the reason. */
static const char *identify_remote(struct daemon *d, X509 *x, char *id, size_t idlen)
{
	static char reason[64];
	char *pem = cert_pem(x);
	json_t *ans = NULL;
	assert_int_equal(post(d, "/api/v1/devices/identify", json_pack("{ss}", "certificate", pem), &ans), 200);
	free(pem);
	id[0] = 0;
	if (json_is_true(json_object_get(ans, "accepted"))) {
		snprintf(id, idlen, "%s", json_string_value(json_object_get(ans, "device")));
		json_decref(ans);
		return NULL;
	}
	snprintf(reason, sizeof(reason), "%s", json_string_value(json_object_get(ans, "reason")));
	json_decref(ans);
	return reason;
}

static double series(struct daemon *d, const char *key)
{
	char *text = h_device_metrics(d, NULL), *p = strstr(text, key);
	double v = p ? strtod(p + strlen(key), NULL) : -1;
	free(text);
	return v;
}

/* ---- tests ---------------------------------------------------------------------- */

static void factory_provisioning_is_scoped_counted_rate_limited_and_audited(void **state)
{
	struct daemon d;
	struct buf out = BUF_INIT;
	struct stat st;
	EVP_PKEY *k1 = new_key(), *k2 = new_key();
	json_t *ans = NULL;
	char *fab, *slow, *csr, *path, sha[65], cn[128], ou[128];
	X509 *ca, *cert;
	long retry;
	(void)state;

	h_init(&d, "device_auth: both\ndevice_cert_validity: 30d\n");
	assert_int_equal(h_start(&d, NULL), 0);

	/* no CA yet: nothing to provision with */
	assert_int_equal(h_otactl(&d, &out, "fleet ca show"), 0);
	assert_non_null(strstr(buf_cstr(&out), "no device CA"));

	/* the CA, once; its key 0600 in the state directory */
	assert_int_equal(h_otactl(&d, &out, "fleet ca init --cn 'Acme device CA' --days 3650"), 0);
	assert_non_null(strstr(buf_cstr(&out), "created"));
	path = xasprintf("%s/state/devca/ca.key", d.dir);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	free(path);
	assert_int_not_equal(h_otactl(&d, &out, "fleet ca init"), 0);
	assert_non_null(strstr(buf_cstr(&out), "already"));
	path = xasprintf("%s/state/devca/ca.pem", d.dir);
	ca = file_cert(path);
	free(path);

	/* provisioners: a factory line scoped to fab1-* of product sensor, 3
	 * certificates; a slow one at 2 a minute */
	assert_int_equal(h_otactl(&d, &out, "fleet provisioners add fab1 --prefix fab1- --max 3 --products sensor --rate 100"), 0);
	fab = h_token_line(&out);
	assert_int_equal(strlen(fab), 64);
	assert_int_equal(h_otactl(&d, &out, "fleet provisioners add slow --prefix slow- --max 100 --rate 2"), 0);
	slow = h_token_line(&out);
	assert_int_not_equal(h_otactl(&d, &out, "fleet provisioners add fab1 --prefix x --max 1"), 0); /* taken */
	/* stored hashed: the token itself is nowhere in the database */
	ota_sha256_hex(fab, strlen(fab), sha);
	{
		char *q = xasprintf("SELECT COUNT(*) FROM device_provisioners WHERE token_hash = '%s'", sha);
		assert_int_equal(h_sql_int(&d, q), 1);
		free(q);
		q = xasprintf("SELECT COUNT(*) FROM device_provisioners WHERE token_hash = '%s'", fab);
		assert_int_equal(h_sql_int(&d, q), 0);
		free(q);
	}

	/* a CSR provisioned over the device API */
	csr = make_csr(k1, "fab1-0001", 0);
	assert_int_equal(provision(&d, fab, "fab1-0001", "sensor", csr, &ans, NULL), 200);
	cert = pem_cert(json_string_value(json_object_get(ans, "certificate")));
	/* checked with OpenSSL: issuer, signature, subject, key, usages */
	assert_int_equal(X509_NAME_cmp(X509_get_issuer_name(cert), X509_get_subject_name(ca)), 0);
	assert_int_equal(X509_verify(cert, X509_get0_pubkey(ca)), 1);
	name_entry(X509_get_subject_name(cert), NID_commonName, cn, sizeof(cn));
	name_entry(X509_get_subject_name(cert), NID_organizationalUnitName, ou, sizeof(ou));
	assert_string_equal(cn, "fab1-0001");
	assert_string_equal(ou, "sensor");
	assert_int_equal(EVP_PKEY_eq(X509_get0_pubkey(cert), k1), 1);
	assert_true(X509_get_extension_flags(cert) & EXFLAG_XKUSAGE);
	assert_int_equal(X509_get_extended_key_usage(cert), XKU_SSL_CLIENT);
	assert_true(X509_get_key_usage(cert) & KU_DIGITAL_SIGNATURE);
	assert_false(X509_get_key_usage(cert) & KU_KEY_CERT_SIGN);
	assert_int_equal(X509_check_ca(cert), 0);
	{ /* validity from the config: 30 days */
		int days = 0, secs = 0;
		assert_true(ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(cert), X509_get0_notAfter(cert)));
		assert_int_equal(days, 30);
	}
	{ /* the answer carries the CA certificate, for the device's trust store */
		X509 *x = pem_cert(json_string_value(json_object_get(ans, "ca")));
		assert_int_equal(X509_cmp(x, ca), 0);
		X509_free(x);
	}
	X509_free(cert);
	json_decref(ans);
	free(csr);

	/* out of scope: another prefix, another product, no product */
	csr = make_csr(k2, NULL, 0);
	assert_int_equal(provision(&d, fab, "fab2-0001", "sensor", csr, &ans, NULL), 403);
	assert_non_null(strstr(err_of(ans), "outside provisioner fab1's scope"));
	json_decref(ans);
	assert_int_equal(provision(&d, fab, "fab1-0002", "gateway", csr, &ans, NULL), 403);
	json_decref(ans);
	assert_int_equal(provision(&d, fab, "fab1-0002", NULL, csr, &ans, NULL), 403);
	json_decref(ans);
	/* not a provisioner: no token, a wrong one, the fleet key, the admin token */
	assert_int_equal(provision(&d, NULL, "fab1-0002", "sensor", csr, &ans, NULL), 401);
	json_decref(ans);
	assert_int_equal(provision(&d, "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "fab1-0002",
				   "sensor", csr, &ans, NULL), 401);
	json_decref(ans);
	assert_int_equal(provision(&d, d.fleet_key, "fab1-0002", "sensor", csr, &ans, NULL), 401);
	json_decref(ans);
	assert_int_equal(provision(&d, d.token, "fab1-0002", "sensor", csr, &ans, NULL), 401);
	json_decref(ans);
	free(csr);
	/* a CSR whose self-signature does not verify: the requester does not hold the key */
	csr = make_csr(k2, "fab1-0002", 1);
	assert_int_equal(provision(&d, fab, "fab1-0002", "sensor", csr, &ans, NULL), 400);
	assert_non_null(strstr(err_of(ans), "self-signature"));
	json_decref(ans);
	free(csr);
	/* a CSR naming another device; garbage */
	csr = make_csr(k2, "fab1-0999", 0);
	assert_int_equal(provision(&d, fab, "fab1-0002", "sensor", csr, &ans, NULL), 400);
	json_decref(ans);
	free(csr);
	assert_int_equal(provision(&d, fab, "fab1-0002", "sensor", "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n", &ans, NULL), 400);
	json_decref(ans);
	{ /* a CSR past the 16 KiB cap is not even parsed */
		char *big = xmalloc(20000);
		memset(big, 'A', 19999);
		big[19999] = 0;
		assert_int_equal(provision(&d, fab, "fab1-0002", "sensor", big, &ans, NULL), 400);
		assert_non_null(strstr(err_of(ans), "larger than"));
		json_decref(ans);
		free(big);
	}
	{ /* the route takes POST only */
		char *url = xasprintf("%s/device/v1/provision", d.device_url);
		struct httpc_response r = HTTPC_RESPONSE_INIT;
		assert_int_equal(httpc_request(&r, "GET", url, fab, NULL, NULL, 0, 30000), 0);
		assert_int_equal(r.status, 405);
		httpc_response_release(&r);
		free(url);
	}
	/* a second identity for a provisioned device: only an administrator */
	csr = make_csr(k2, NULL, 0);
	assert_int_equal(provision(&d, fab, "fab1-0001", "sensor", csr, &ans, NULL), 403);
	assert_non_null(strstr(err_of(ans), "identity already"));
	json_decref(ans);
	/* nor a device registered with a token credential */
	{
		char **creds = h_register_devices(&d, "fab1-tok", 1);
		assert_int_equal(provision(&d, fab, "fab1-tok-0000", "sensor", csr, &ans, NULL), 403);
		assert_non_null(strstr(err_of(ans), "token credential"));
		json_decref(ans);
		free(creds[0]);
		free(creds);
	}
	/* the count: 0002 and 0003 make three, 0004 is one too many */
	assert_int_equal(provision(&d, fab, "fab1-0002", "sensor", csr, NULL, NULL), 200);
	assert_int_equal(provision(&d, fab, "fab1-0003", "sensor", csr, NULL, NULL), 200);
	assert_int_equal(provision(&d, fab, "fab1-0004", "sensor", csr, &ans, NULL), 403);
	assert_non_null(strstr(err_of(ans), "issued all its 3"));
	json_decref(ans);
	/* the rate: two a minute */
	assert_int_equal(provision(&d, slow, "slow-1", NULL, csr, NULL, NULL), 200);
	assert_int_equal(provision(&d, slow, "slow-2", NULL, csr, NULL, NULL), 200);
	assert_int_equal(provision(&d, slow, "slow-3", NULL, csr, &ans, &retry), 429);
	assert_non_null(strstr(err_of(ans), "rate"));
	assert_true(retry >= 1 && retry <= 31);
	json_decref(ans);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM device_certs WHERE device = 'slow-3'"), 0);

	/* audited: every certificate, every refusal of a known provisioner */
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM audit WHERE action = 'device.provision'"), 5);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM audit WHERE action = 'device.provision' AND actor = 'fab1'"
				       " AND detail LIKE '%fab1-0001%' AND detail LIKE '%serial%'"), 1);
	/* scope x3, bad signature, other CN, garbage, too big, second identity, token device, count: 10; rate: 1 */
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM audit WHERE action = 'device.provision_refused' AND actor = 'fab1'"), 10);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM audit WHERE action = 'device.provision_refused' AND actor = 'slow'"
				       " AND reason LIKE '%rate%'"), 1);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM audit WHERE action = 'provisioner.add'"), 2);
	assert_int_equal(h_sql_int(&d, "SELECT issued FROM device_provisioners WHERE name = 'fab1'"), 3);
	assert_int_equal(h_otactl(&d, &out, "audit"), 0);
	assert_non_null(strstr(buf_cstr(&out), "device.provision"));
	/* counted on the device listener's /metrics */
	assert_true(series(&d, "otacd_device_provision_total{result=\"issued\"} ") == 5);
	/* the identity counters are there for the TLS path (nothing verified yet) */
	assert_true(series(&d, "otacd_device_cert_accepted_total ") == 0);
	assert_true(series(&d, "otacd_device_cert_refused_total{reason=\"revoked\"} ") == 0);
	assert_true(series(&d, "otacd_device_cert_refused_total{reason=\"foreign_ca\"} ") == 0);
	/* refused: scope x3, wrong token, fleet key, admin token, 3 bad CSRs,
	 * too big, second identity, token device, count, rate (no token at all is
	 * answered before the route: not a provisioning attempt) */
	assert_true(series(&d, "otacd_device_provision_total{result=\"refused\"} ") == 14);
	assert_int_equal(h_otactl(&d, &out, "fleet provisioners"), 0);
	assert_non_null(strstr(buf_cstr(&out), "fab1-"));

	/* killed and restarted: the CA, the count and the provisioners stay */
	h_kill(&d, SIGKILL);
	assert_int_equal(h_start(&d, NULL), 0);
	assert_int_equal(provision(&d, fab, "fab1-0005", "sensor", csr, &ans, NULL), 403);
	assert_non_null(strstr(err_of(ans), "issued all its 3"));
	json_decref(ans);
	assert_int_equal(provision(&d, slow, "slow-4", NULL, csr, &ans, NULL), 200);
	cert = pem_cert(json_string_value(json_object_get(ans, "certificate")));
	assert_int_equal(X509_verify(cert, X509_get0_pubkey(ca)), 1);
	json_decref(ans);
	assert_null(identify_remote(&d, cert, cn, sizeof(cn)));
	/* a leaked credential: revoked at once, and with --devices every
	 * identity it minted (slow-1, slow-2, slow-4); fab1's stay */
	assert_int_equal(h_otactl(&d, &out, "fleet provisioners revoke slow --devices"), 0);
	assert_int_equal(provision(&d, slow, "slow-5", NULL, csr, &ans, NULL), 401);
	json_decref(ans);
	assert_string_equal(identify_remote(&d, cert, cn, sizeof(cn)), "revoked");
	X509_free(cert);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM device_revocations WHERE device LIKE 'slow-%'"), 3);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM device_revocations WHERE device LIKE 'fab1-%'"), 0);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM audit WHERE action = 'provisioner.revoke'"
				       " AND detail LIKE '%\"devices_revoked\":3%'"), 1);

	free(csr);
	free(fab);
	free(slow);
	X509_free(ca);
	EVP_PKEY_free(k1);
	EVP_PKEY_free(k2);
	buf_release(&out);
	h_kill(&d, SIGTERM);
	h_cleanup(&d);
}

static void identify_accepts_issued_and_refuses_revoked_expired_foreign_self_signed_wrong_usage(void **state)
{
	struct daemon d;
	struct buf out = BUF_INIT;
	struct stat st;
	char *dir, *path, id[128];
	X509 *ca, *good, *x, *foreign_ca;
	EVP_PKEY *ca_key, *k = new_key(), *fk = new_key();
	(void)state;

	/* an operator and a viewer besides the admin (docs/security.md roles) */
	h_init(&d, "tokens:\n"
		   "  - { name: ops, role: operator, token: operator-token-0123456789abcdef0123456789 }\n"
		   "  - { name: watcher, role: viewer, token: viewer-token-0123456789abcdef0123456789ab }\n");
	assert_int_equal(h_start(&d, NULL), 0);
	assert_int_equal(h_otactl(&d, &out, "fleet ca init"), 0);
	dir = xasprintf("%s/out", d.dir);

	/* by hand: otactl makes the key here and sends only the CSR */
	if (h_otactl(&d, &out, "devices provision dev-1 --out %s", dir))
		fail_msg("%s", buf_cstr(&out));
	path = xasprintf("%s/dev-1.key", dir);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	free(path);
	path = xasprintf("%s/dev-1.crt", dir);
	good = file_cert(path);
	free(path);
	/* with the device's own CSR: only the certificate comes back, no key */
	{
		char *csr = make_csr(k, "dev-3", 0), *csrfile = xasprintf("%s/dev-3.csr", d.dir);
		X509 *c3;
		assert_int_equal(ota_write_file_atomic(csrfile, csr, strlen(csr), 0644), 0);
		assert_int_equal(h_otactl(&d, &out, "devices provision dev-3 --csr %s --product sensor --out %s", csrfile, dir), 0);
		path = xasprintf("%s/dev-3.key", dir);
		assert_int_not_equal(access(path, F_OK), 0);
		free(path);
		path = xasprintf("%s/dev-3.crt", dir);
		c3 = file_cert(path);
		free(path);
		assert_int_equal(EVP_PKEY_eq(X509_get0_pubkey(c3), k), 1);
		X509_free(c3);
		free(csr);
		free(csrfile);
	}
	/* a device with a valid certificate is not provisioned twice by accident */
	assert_int_not_equal(h_otactl(&d, &out, "devices provision dev-1 --out %s", dir), 0);
	assert_non_null(strstr(buf_cstr(&out), "valid certificate"));

	path = xasprintf("%s/state/devca/ca.pem", d.dir);
	ca = file_cert(path);
	free(path);
	path = xasprintf("%s/state/devca/ca.key", d.dir);
	ca_key = file_key(path);
	free(path);

	/* accepted: the issued certificate */
	assert_null(identify_remote(&d, good, id, sizeof(id)));
	assert_string_equal(id, "dev-1");
	path = xasprintf("%s/dev-1.crt", dir);
	assert_int_equal(h_otactl(&d, &out, "devices identify %s", path), 0);
	assert_non_null(strstr(buf_cstr(&out), "accepted: device dev-1"));
	free(path);

	/* refused, each with its reason: signed by the real CA but expired,
	 * not yet valid, for servers, without EKU, a CA itself ... */
	x = make_cert(ca, ca_key, k, "dev-2", -10 * 86400, -86400, "clientAuth", 0);
	assert_string_equal(identify_remote(&d, x, id, sizeof(id)), "expired");
	assert_string_equal(id, "");
	X509_free(x);
	x = make_cert(ca, ca_key, k, "dev-2", 86400, 10 * 86400, "clientAuth", 0);
	assert_string_equal(identify_remote(&d, x, id, sizeof(id)), "not yet valid");
	X509_free(x);
	x = make_cert(ca, ca_key, k, "dev-2", -60, 86400, "serverAuth", 0);
	assert_string_equal(identify_remote(&d, x, id, sizeof(id)), "wrong key usage");
	X509_free(x);
	x = make_cert(ca, ca_key, k, "dev-2", -60, 86400, NULL, 0);
	assert_string_equal(identify_remote(&d, x, id, sizeof(id)), "wrong key usage");
	X509_free(x);
	x = make_cert(ca, ca_key, k, "dev-2", -60, 86400, "clientAuth", 1);
	assert_non_null(identify_remote(&d, x, id, sizeof(id)));
	X509_free(x);
	x = make_cert(ca, ca_key, k, "bad id with spaces", -60, 86400, "clientAuth", 0);
	assert_string_equal(identify_remote(&d, x, id, sizeof(id)), "bad device id");
	X509_free(x);
	/* ... a foreign CA (another name), a foreign key under our CA's name,
	 * a self-signed device certificate */
	foreign_ca = make_cert(NULL, fk, fk, "Evil CA", -60, 86400 * 365, NULL, 1);
	x = make_cert(foreign_ca, fk, k, "dev-1", -60, 86400, "clientAuth", 0);
	assert_string_equal(identify_remote(&d, x, id, sizeof(id)), "foreign CA");
	X509_free(x);
	x = make_cert(ca, fk, k, "dev-1", -60, 86400, "clientAuth", 0);
	assert_string_equal(identify_remote(&d, x, id, sizeof(id)), "bad signature");
	X509_free(x);
	x = make_cert(NULL, k, k, "dev-1", -60, 86400, "clientAuth", 0);
	assert_string_equal(identify_remote(&d, x, id, sizeof(id)), "self-signed");
	X509_free(x);

	/* revoked: at once, after `otactl devices revoke`, and after a restart */
	assert_int_equal(h_otactl(&d, &out, "devices revoke dev-1 --reason 'stolen from the field'"), 0);
	assert_string_equal(identify_remote(&d, good, id, sizeof(id)), "revoked");
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM audit WHERE action = 'device.revoke'"
				       " AND reason = 'stolen from the field' AND detail LIKE '%\"certificates\":1%'"), 1);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM device_certs WHERE device = 'dev-1' AND revoked_at IS NOT NULL"), 1);
	/* a certificate of dev-1 the CA signs elsewhere, dated before the revocation */
	x = make_cert(ca, ca_key, k, "dev-1", -3600, 86400, "clientAuth", 0);
	assert_string_equal(identify_remote(&d, x, id, sizeof(id)), "revoked");
	X509_free(x);
	/* roles: revoking is an operator's (it only takes trust away),
	 * issuing and provisioners an admin's; a viewer may only look */
	{
		const char *op = "operator-token-0123456789abcdef0123456789";
		const char *viewer = "viewer-token-0123456789abcdef0123456789ab";
		char *csr = make_csr(k, NULL, 0);
		json_t *ans = NULL;
		assert_int_equal(post_as(&d, viewer, "/api/v1/devices/revoke", json_pack("{ss}", "device", "dev-9"),
					   &ans), 403);
		json_decref(ans);
		assert_int_equal(post_as(&d, NULL, "/api/v1/devices/revoke", json_pack("{ss}", "device", "dev-9"),
					   &ans), 401);
		json_decref(ans);
		assert_int_equal(post_as(&d, op, "/api/v1/devices/provision",
					   json_pack("{ss ss}", "device", "dev-9", "csr", csr), &ans), 403);
		json_decref(ans);
		assert_int_equal(post_as(&d, op, "/api/v1/fleet/provisioners",
					   json_pack("{ss ss si}", "name", "p", "prefix", "", "max", 1), &ans), 403);
		json_decref(ans);
		assert_int_equal(post_as(&d, op, "/api/v1/fleet/ca", json_object(), &ans), 403);
		json_decref(ans);
		assert_int_equal(post_as(&d, op, "/api/v1/devices/revoke",
					   json_pack("{ss ss}", "device", "dev-9", "reason", "lost"), &ans), 200);
		json_decref(ans);
		assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM audit WHERE action = 'device.revoke' AND actor = 'ops'"), 1);
		free(csr);
	}
	h_kill(&d, SIGKILL);
	assert_int_equal(h_start(&d, NULL), 0);
	assert_string_equal(identify_remote(&d, good, id, sizeof(id)), "revoked");

	/* re-provisioned by the admin: the new certificate starts after the
	 * revocation, the old one stays refused */
	h_msleep(1100);
	assert_int_equal(h_otactl(&d, &out, "devices provision dev-1 --out %s/again", dir), 0);
	path = xasprintf("%s/again/dev-1.crt", dir);
	x = file_cert(path);
	free(path);
	for (int i = 0; i < 30 && identify_remote(&d, x, id, sizeof(id)); i++)
		h_msleep(100); /* notBefore is the second after the revocation */
	assert_null(identify_remote(&d, x, id, sizeof(id)));
	assert_string_equal(id, "dev-1");
	assert_string_equal(identify_remote(&d, good, id, sizeof(id)), "revoked");
	X509_free(x);

	X509_free(good);
	X509_free(ca);
	X509_free(foreign_ca);
	EVP_PKEY_free(ca_key);
	EVP_PKEY_free(k);
	EVP_PKEY_free(fk);
	free(dir);
	buf_release(&out);
	h_kill(&d, SIGTERM);
	h_cleanup(&d);
}

/* `otactl fleet ca remove` (a stolen CA key): an operator's, with a reason,
 * audited in its transaction; the CA's certificates are refused at once,
 * after a restart even with STATE/devca put back, and the CA is never
 * imported again; a new CA's certificates work.  Refused with no CA. */
static void a_removed_ca_is_trusted_nowhere_not_after_a_restart_and_a_new_one_works(void **state)
{
	const char *op = "operator-token-0123456789abcdef0123456789";
	const char *viewer = "viewer-token-0123456789abcdef0123456789ab";
	struct daemon d;
	struct buf out = BUF_INIT, pem = BUF_INIT, key = BUF_INIT;
	char *dir, *path, *sha, *like, *agent, id[128];
	json_t *ans = NULL;
	X509 *old, *fresh;
	(void)state;

	h_init(&d, "tokens:\n"
		   "  - { name: ops, role: operator, token: operator-token-0123456789abcdef0123456789 }\n"
		   "  - { name: watcher, role: viewer, token: viewer-token-0123456789abcdef0123456789ab }\n");
	assert_int_equal(h_start(&d, NULL), 0);
	/* no CA: a clear refusal, non-zero, nothing audited */
	assert_int_not_equal(h_otactl(&d, &out, "fleet ca remove --reason 'no CA yet'"), 0);
	assert_non_null(strstr(buf_cstr(&out), "no device CA to remove"));
	assert_int_equal(h_otactl(&d, &out, "fleet ca init"), 0);
	dir = xasprintf("%s/out", d.dir);
	assert_int_equal(h_otactl(&d, &out, "devices provision dev-1 --out %s", dir), 0);
	path = xasprintf("%s/dev-1.crt", dir);
	old = file_cert(path);
	free(path);
	assert_null(identify_remote(&d, old, id, sizeof(id)));

	/* a viewer or an agent may not, nor anyone without a reason: nothing changes */
	assert_int_equal(post_as(&d, viewer, "/api/v1/fleet/ca/remove", json_pack("{ss}", "reason", "x"), &ans), 403);
	json_decref(ans);
	agent = h_agent_add(&d, "builder-1", "linux");
	assert_non_null(agent);
	assert_int_equal(post_as(&d, agent, "/api/v1/fleet/ca/remove", json_pack("{ss}", "reason", "x"), &ans), 403);
	json_decref(ans);
	free(agent);
	assert_int_equal(post_as(&d, op, "/api/v1/fleet/ca/remove", json_object(), &ans), 400);
	json_decref(ans);
	assert_int_not_equal(h_otactl(&d, &out, "fleet ca remove"), 0);
	assert_null(identify_remote(&d, old, id, sizeof(id)));
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM device_ca"), 1);

	/* the operator removes it: refused at once, the row gone, audited */
	assert_int_equal(post_as(&d, op, "/api/v1/fleet/ca/remove", json_pack("{ss}", "reason", "key stolen"), &ans), 200);
	sha = xstrdup(json_string_value(json_object_get(ans, "sha256")));
	json_decref(ans);
	assert_int_equal(strlen(sha), 64);
	assert_string_equal(identify_remote(&d, old, id, sizeof(id)), "no device CA");
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM device_ca"), 0);
	like = xasprintf("SELECT COUNT(*) FROM audit WHERE action = 'device_ca.remove' AND actor = 'ops'"
			 " AND reason = 'key stolen' AND detail LIKE '%%%s%%'", sha);
	assert_int_equal(h_sql_int(&d, like), 1);
	path = xasprintf("%s/state/devca", d.dir);
	assert_int_not_equal(access(path, F_OK), 0);
	assert_int_not_equal(h_otactl(&d, &out, "devices provision dev-2 --out %s", dir), 0);
	assert_int_not_equal(h_otactl(&d, &out, "fleet ca remove --reason again"), 0);

	/* an instance's old copy put back, and a restart: still refused, the
	 * copy moved aside again, not back in the database */
	h_kill(&d, SIGKILL);
	assert_int_equal(h_sh(&out, "cd %s/state && mv devca.removed-* devca 2>&1", d.dir), 0);
	assert_int_equal(access(path, F_OK), 0);
	assert_int_equal(h_start(&d, NULL), 0);
	assert_string_equal(identify_remote(&d, old, id, sizeof(id)), "no device CA");
	assert_int_not_equal(access(path, F_OK), 0);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM device_ca"), 0);
	/* nor imported again */
	assert_int_equal(h_sh(&pem, "cat %s/state/devca.removed-*/ca.pem", d.dir), 0);
	assert_int_equal(h_sh(&key, "cat %s/state/devca.removed-*/ca.key", d.dir), 0);
	assert_int_equal(post(&d, "/api/v1/fleet/ca", json_pack("{ss ss}", "certificate", buf_cstr(&pem), "key", buf_cstr(&key)),
			      &ans), 409);
	{
		const char *err = json_string_value(json_object_get(ans, "error"));
		if (!err || !strstr(err, "was removed"))
			fail_msg("re-importing a removed CA: %s", err ? err : "(no error)");
	}
	json_decref(ans);
	assert_string_equal(identify_remote(&d, old, id, sizeof(id)), "no device CA");

	/* a new CA; the admin re-provisions the device under it */
	assert_int_equal(h_otactl(&d, &out, "fleet ca init"), 0);
	assert_int_equal(h_otactl(&d, &out, "devices provision dev-1 --replace --out %s/new", dir), 0);
	free(path);
	path = xasprintf("%s/new/dev-1.crt", dir);
	fresh = file_cert(path);
	assert_null(identify_remote(&d, fresh, id, sizeof(id)));
	assert_string_equal(id, "dev-1");
	assert_string_equal(identify_remote(&d, old, id, sizeof(id)), "foreign CA");

	X509_free(old);
	X509_free(fresh);
	OPENSSL_cleanse(key.ptr, key.len);
	buf_release(&key);
	buf_release(&pem);
	buf_release(&out);
	free(like);
	free(sha);
	free(path);
	free(dir);
	h_kill(&d, SIGTERM);
	h_cleanup(&d);
}

/* In-process: fleet_ca_identify's counters, fleet_auth_cert and device_auth. */
static void identify_counts_refusals_and_auth_cert_takes_the_device_from_the_certificate(void **state)
{
	char *dir = h_tmpdir(), *db = xasprintf("%s/fleet.db", dir), *pem, id[128];
	struct fleet_ca_config cc = { .state_dir = dir };
	struct fleet_config fc = { 0 };
	struct fleet_ca *ca = NULL, *ext = NULL;
	struct fleet *f = NULL;
	struct buf m = BUF_INIT;
	EVP_PKEY *k = new_key(), *ca_key;
	X509 *ca_cert, *good, *expired, *selfs;
	unsigned char *der = NULL, *d2 = NULL;
	int len, len2;
	const char *why = NULL;
	void *csr = NULL;
	char serial[41];
	int64_t nb, na;
	(void)state;

	assert_int_equal(fleet_ca_open(&ca, &cc), 0);
	assert_int_equal(fleet_ca_state(ca), 0);
	assert_int_equal(fleet_ca_install(ca, "test CA", 30, NULL, NULL), 0);
	assert_int_equal(fleet_ca_state(ca), 2);
	/* issue through the library: CSR checked, certificate made */
	pem = make_csr(k, "sim-1", 0);
	assert_int_equal(fleet_ca_csr_parse(&csr, pem, strlen(pem), "sim-1"), 0);
	free(pem);
	assert_int_equal(fleet_ca_issue(ca, csr, "sim-1", "sensor", &pem, serial, &nb, &na), 0);
	assert_true(na - nb <= 30 * 86400); /* never past the CA's own end */
	fleet_ca_csr_free(csr);
	good = pem_cert(pem);
	free(pem);
	{
		char *p = xasprintf("%s/devca/ca.pem", dir);
		ca_cert = file_cert(p);
		free(p);
		p = xasprintf("%s/devca/ca.key", dir);
		ca_key = file_key(p);
		free(p);
	}
	expired = make_cert(ca_cert, ca_key, k, "sim-2", -7200, -3600, "clientAuth", 0);
	selfs = make_cert(NULL, k, k, "sim-1", -60, 3600, "clientAuth", 0);

	len = i2d_X509(good, &der);
	assert_int_equal(fleet_ca_identify(ca, der, (size_t)len, id, sizeof(id), &why), 0);
	assert_string_equal(id, "sim-1");
	len2 = i2d_X509(expired, &d2);
	assert_int_equal(fleet_ca_identify(ca, d2, (size_t)len2, id, sizeof(id), &why), OTA_EAUTH);
	assert_string_equal(why, "expired");
	OPENSSL_free(d2);
	d2 = NULL;
	len2 = i2d_X509(selfs, &d2);
	assert_int_equal(fleet_ca_identify(ca, d2, (size_t)len2, id, sizeof(id), &why), OTA_EAUTH);
	assert_string_equal(why, "self-signed");
	assert_int_equal(fleet_ca_identify(ca, d2, (size_t)len2 - 1, id, sizeof(id), &why), OTA_EAUTH);
	assert_string_equal(why, "malformed");
	/* revoked in memory: refused at once */
	fleet_ca_revoke_mem(ca, "sim-1", (int64_t)time(NULL));
	assert_int_equal(fleet_ca_identify(ca, der, (size_t)len, id, sizeof(id), &why), OTA_EAUTH);
	assert_string_equal(why, "revoked");
	fleet_ca_metrics_text(ca, &m);
	assert_non_null(strstr(buf_cstr(&m), "otacd_device_cert_accepted_total 1\n"));
	assert_non_null(strstr(buf_cstr(&m), "otacd_device_cert_refused_total{reason=\"expired\"} 1\n"));
	assert_non_null(strstr(buf_cstr(&m), "otacd_device_cert_refused_total{reason=\"self_signed\"} 1\n"));
	assert_non_null(strstr(buf_cstr(&m), "otacd_device_cert_refused_total{reason=\"malformed\"} 1\n"));
	assert_non_null(strstr(buf_cstr(&m), "otacd_device_cert_refused_total{reason=\"revoked\"} 1\n"));
	buf_release(&m);

	/* fleet_auth_cert: the device is the certificate's */
	{
		struct fleet_ca *ca2 = NULL;
		struct fleet_ca_config c2 = { .state_dir = dir };
		assert_int_equal(fleet_ca_open(&ca2, &c2), 0); /* the same CA, no revocation */
		fc.db_path = db;
		fc.device_secret = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
		assert_int_equal(fleet_open(&f, &fc), 0);
		fleet_set_ca(f, ca2, FLEET_AUTH_TOKEN);
		assert_int_equal(fleet_auth_cert(f, der, (size_t)len, NULL, NULL, id, sizeof(id)), OTA_EAUTH);
		fleet_set_ca(f, ca2, FLEET_AUTH_CERT);
		assert_int_equal(fleet_auth_cert(f, der, (size_t)len, "sim-1", "sensor", id, sizeof(id)), 0);
		assert_string_equal(id, "sim-1");
		/* a body naming another device or product is refused */
		assert_int_equal(fleet_auth_cert(f, der, (size_t)len, "sim-9", NULL, id, sizeof(id)), OTA_EAUTH);
		assert_string_equal(id, "");
		assert_int_equal(fleet_auth_cert(f, der, (size_t)len, "sim-1", "gateway", id, sizeof(id)), OTA_EAUTH);
		assert_int_equal(fleet_auth_cert(f, d2, (size_t)len2, NULL, NULL, id, sizeof(id)), OTA_EAUTH);
		/* cert only: tokens are refused, whatever they are */
		{
			char creds[1][33];
			const char *ids[1] = { "sim-1" };
			assert_int_equal(fleet_register(f, ids, 1, "test", creds), 0);
			assert_int_equal(fleet_device_auth(f, "sim-1", creds[0]), OTA_EAUTH);
			fleet_set_ca(f, ca2, FLEET_AUTH_BOTH);
			assert_int_equal(fleet_device_auth(f, "sim-1", creds[0]), 0);
			assert_int_equal(fleet_auth_cert(f, der, (size_t)len, NULL, NULL, id, sizeof(id)), 0);
			assert_int_equal(fleet_device_registered(f, "sim-1"), 1);
		}
		fleet_close(f);
		fleet_ca_close(ca2);
	}

	/* an external CA: trusted, but otacd cannot issue */
	{
		struct fleet_ca_config ce = { 0 };
		char *p = xasprintf("%s/devca/ca.pem", dir);
		ce.cert_file = p;
		assert_int_equal(fleet_ca_open(&ext, &ce), 0);
		assert_int_equal(fleet_ca_state(ext), 1);
		assert_int_equal(fleet_ca_identify(ext, der, (size_t)len, id, sizeof(id), &why), 0);
		pem = make_csr(k, NULL, 0);
		assert_int_equal(fleet_ca_csr_parse(&csr, pem, strlen(pem), NULL), 0);
		free(pem);
		assert_int_equal(fleet_ca_issue(ext, csr, "sim-3", NULL, &pem, serial, &nb, &na), OTA_ECONFLICT);
		fleet_ca_csr_free(csr);
		assert_int_equal(fleet_ca_install(ext, NULL, 30, NULL, NULL), OTA_ECONFLICT);
		fleet_ca_close(ext);
		/* a configured CA file that is no CA is an error at start */
		ce.cert_file = p;
		free(p);
		p = xasprintf("%s/leaf.pem", dir);
		pem = cert_pem(good);
		assert_int_equal(ota_write_file_atomic(p, pem, strlen(pem), 0644), 0);
		free(pem);
		ce.cert_file = p;
		assert_int_equal(fleet_ca_open(&ext, &ce), OTA_EINVAL);
		free(p);
	}

	OPENSSL_free(der);
	OPENSSL_free(d2);
	X509_free(good);
	X509_free(expired);
	X509_free(selfs);
	X509_free(ca_cert);
	EVP_PKEY_free(ca_key);
	EVP_PKEY_free(k);
	fleet_ca_close(ca);
	{
		struct buf o = BUF_INIT;
		h_sh(&o, "rm -rf '%s'", dir);
		buf_release(&o);
	}
	free(db);
	free(dir);
}

/* device_ca: {cert} names an external CA; `fleet ca import` checks what it is given. */
static void external_ca_verifies_but_cannot_issue_and_import_checks_the_pair(void **state)
{
	struct daemon d, e;
	struct buf out = BUF_INIT;
	EVP_PKEY *ek = new_key(), *other = new_key(), *k = new_key(), *ok = new_key();
	X509 *eca = make_cert(NULL, ek, ek, "Factory CA", -60, 86400 * 365, NULL, 1), *leaf;
	X509 *oca = make_cert(NULL, ok, ok, "Factory CA 2019", -86400, 86400 * 30, NULL, 1);
	char *cfg, *capath, *oldpath, *keypath, *pem, *csr, id[128];
	json_t *ans = NULL;
	FILE *f;
	(void)state;

	/* an external CA: its certificate only */
	h_init(&d, NULL);
	capath = xasprintf("%s/factory-ca.pem", d.dir);
	pem = cert_pem(eca);
	assert_int_equal(ota_write_file_atomic(capath, pem, strlen(pem), 0644), 0);
	free(pem);
	/* and the CA before it, still trusted while devices move over (a rollover) */
	oldpath = xasprintf("%s/old-ca.pem", d.dir);
	pem = cert_pem(oca);
	assert_int_equal(ota_write_file_atomic(oldpath, pem, strlen(pem), 0644), 0);
	free(pem);
	cfg = xasprintf("device_auth: cert\ndevice_ca: { cert: %s, also_trust: [%s] }\n", capath, oldpath);
	d.config = xasprintf("%s/config.yml", d.dir);
	assert_int_equal(ota_write_file_atomic(d.config, cfg, strlen(cfg), 0600), 0);
	free(cfg);
	assert_int_equal(h_start(&d, NULL), 0);
	assert_int_equal(h_get(&d, "/api/v1/fleet/ca", &ans), 200);
	assert_true(json_is_true(json_object_get(ans, "external")));
	assert_false(json_is_true(json_object_get(ans, "can_issue")));
	assert_int_equal(json_array_size(json_object_get(ans, "also_trusted")), 1);
	json_decref(ans);
	/* the old CA's devices are accepted; a CA not listed is still foreign */
	leaf = make_cert(oca, ok, k, "old-1", -60, 86400, "clientAuth", 0);
	assert_null(identify_remote(&d, leaf, id, sizeof(id)));
	assert_string_equal(id, "old-1");
	X509_free(leaf);
	leaf = make_cert(oca, other, k, "old-2", -60, 86400, "clientAuth", 0);
	assert_string_equal(identify_remote(&d, leaf, id, sizeof(id)), "bad signature");
	X509_free(leaf);
	{
		X509 *third = make_cert(NULL, other, other, "Third CA", -60, 86400, NULL, 1);
		leaf = make_cert(third, other, k, "ext-3", -60, 86400, "clientAuth", 0);
		assert_string_equal(identify_remote(&d, leaf, id, sizeof(id)), "foreign CA");
		X509_free(leaf);
		X509_free(third);
	}
	/* its certificates are accepted ... */
	leaf = make_cert(eca, ek, k, "ext-1", -60, 86400, "clientAuth", 0);
	assert_null(identify_remote(&d, leaf, id, sizeof(id)));
	assert_string_equal(id, "ext-1");
	X509_free(leaf);
	/* ... otacd issues none, nor replaces the configured CA */
	csr = make_csr(k, NULL, 0);
	assert_int_equal(post(&d, "/api/v1/devices/provision", json_pack("{ss ss}", "device", "ext-2", "csr", csr), &ans), 404);
	assert_non_null(strstr(err_of(ans), "external"));
	json_decref(ans);
	assert_int_not_equal(h_otactl(&d, &out, "fleet ca init"), 0);
	assert_non_null(strstr(buf_cstr(&out), "configuration"));
	/* nor removes it: that is a change of device_ca: on every instance */
	assert_int_not_equal(h_otactl(&d, &out, "fleet ca remove --reason 'key stolen'"), 0);
	assert_non_null(strstr(buf_cstr(&out), "device_ca:"));
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM audit WHERE action = 'device_ca.remove'"), 0);
	/* revocation works for an external CA's certificates too */
	assert_int_equal(h_otactl(&d, &out, "devices revoke ext-1"), 0);
	leaf = make_cert(eca, ek, k, "ext-1", -60, 86400, "clientAuth", 0);
	assert_string_equal(identify_remote(&d, leaf, id, sizeof(id)), "revoked");
	X509_free(leaf);
	h_kill(&d, SIGTERM);

	/* import: a CA and its key, checked */
	h_init(&e, NULL);
	assert_int_equal(h_start(&e, NULL), 0);
	keypath = xasprintf("%s/factory-ca.key", e.dir);
	f = fopen(keypath, "w");
	assert_non_null(f);
	assert_true(PEM_write_PrivateKey(f, other, NULL, NULL, 0, NULL, NULL));
	fclose(f);
	assert_int_not_equal(h_otactl(&e, &out, "fleet ca import %s %s", capath, keypath), 0); /* not its key */
	assert_non_null(strstr(buf_cstr(&out), "does not belong"));
	f = fopen(keypath, "w");
	assert_true(PEM_write_PrivateKey(f, ek, NULL, NULL, 0, NULL, NULL));
	fclose(f);
	assert_int_equal(h_otactl(&e, &out, "fleet ca import %s %s", capath, keypath), 0);
	assert_int_equal(h_sql_int(&e, "SELECT COUNT(*) FROM audit WHERE action = 'device_ca.import'"), 1);
	/* now otacd issues with it */
	assert_int_equal(post(&e, "/api/v1/devices/provision", json_pack("{ss ss}", "device", "imp-1", "csr", csr), &ans), 201);
	leaf = pem_cert(json_string_value(json_object_get(ans, "certificate")));
	assert_int_equal(X509_verify(leaf, ek), 1);
	X509_free(leaf);
	json_decref(ans);
	/* offline: the files written into a state directory, no daemon */
	{
		char *st = xasprintf("%s/offline", e.dir), *p, *bin = h_bin("otactl");
		struct stat sb;
		assert_int_equal(h_sh(&out, "%s fleet ca init --offline --state %s", bin, st), 0);
		p = xasprintf("%s/devca/ca.key", st);
		assert_int_equal(stat(p, &sb), 0);
		assert_int_equal(sb.st_mode & 0777, 0600);
		free(p);
		assert_int_not_equal(h_sh(&out, "%s fleet ca init --offline --state %s", bin, st), 0);
		/* a crash between the key and the certificate leaves ca.key alone:
		 * the next init replaces it */
		assert_int_equal(h_sh(&out, "rm %s/devca/ca.pem", st), 0);
		assert_int_equal(h_sh(&out, "%s fleet ca init --offline --state %s", bin, st), 0);
		assert_int_equal(h_sh(&out, "openssl x509 -noout -in %s/devca/ca.pem -pubkey > %s/a.pub &&"
				       " openssl pkey -in %s/devca/ca.key -pubout > %s/b.pub && cmp %s/a.pub %s/b.pub",
				       st, st, st, st, st, st), 0);
		/* issue 16: an otacd that finds such a STATE/devca and no CA in its
		 * database copies it there once, the key sealed, and issues with it */
		{
			struct daemon imp;
			char *sha;
			h_init(&imp, NULL);
			assert_int_equal(h_sh(&out, "mkdir -p %s/state && cp -a %s/devca %s/state/", imp.dir, st, imp.dir), 0);
			assert_int_equal(h_start(&imp, NULL), 0);
			assert_int_equal(h_sql_int(&imp, "SELECT COUNT(*) FROM device_ca"), 1);
			assert_int_equal(h_sql_int(&imp, "SELECT COUNT(*) FROM device_ca WHERE key_sealed LIKE 'v1:%'"
						       " AND key_sealed NOT LIKE '%PRIVATE%'"), 1);
			assert_int_equal(h_get(&imp, "/api/v1/fleet/ca", &ans), 200);
			assert_true(json_is_true(json_object_get(ans, "can_issue")));
			sha = xstrdup(json_string_value(json_object_get(ans, "sha256")));
			json_decref(ans);
			assert_int_equal(h_sh(&out, "openssl x509 -noout -fingerprint -sha256 -in %s/devca/ca.pem"
						    " | tr -d : | tr A-F a-f", st), 0);
			assert_non_null(strstr(buf_cstr(&out), sha));
			free(sha);
			/* a restart loads it from the table: the same CA, one row */
			h_kill(&imp, SIGKILL);
			assert_int_equal(h_start(&imp, NULL), 0);
			assert_int_equal(h_sql_int(&imp, "SELECT COUNT(*) FROM device_ca"), 1);
			h_kill(&imp, SIGTERM);
			h_cleanup(&imp);
		}
		free(st);
		free(bin);
	}
	free(csr);
	free(capath);
	free(oldpath);
	free(keypath);
	X509_free(eca);
	X509_free(oca);
	EVP_PKEY_free(ok);
	EVP_PKEY_free(ek);
	EVP_PKEY_free(other);
	EVP_PKEY_free(k);
	buf_release(&out);
	h_kill(&e, SIGTERM);
	h_cleanup(&e);
	h_cleanup(&d);
}

/* Issue 16: the CA key as the database keeps it (table device_ca). */
static void the_sealed_ca_key_opens_only_with_its_secret_certificate_and_bytes(void **state)
{
	static const char secret[] = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
	static const char other[] = "f123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
	static const char key[] = "-----BEGIN PRIVATE KEY-----\nnot a real key, the bytes are what counts\n";
	char *sealed, *again, *bad;
	unsigned char *plain = NULL;
	size_t n = 0;
	(void)state;

	assert_non_null(sealed = fleet_ca_seal(secret, "CERT A", (const unsigned char *)key, strlen(key)));
	assert_non_null(again = fleet_ca_seal(secret, "CERT A", (const unsigned char *)key, strlen(key)));
	assert_string_not_equal(sealed, again); /* a fresh nonce each time */
	assert_null(strstr(sealed, "BEGIN"));
	assert_int_equal(fleet_ca_unseal(secret, "CERT A", sealed, &plain, &n), 0);
	assert_int_equal(n, strlen(key));
	assert_memory_equal(plain, key, n);
	free(plain);
	/* another instance's device secret: refused, nothing out */
	assert_int_equal(fleet_ca_unseal(other, "CERT A", sealed, &plain, &n), OTA_EINVAL);
	assert_null(plain);
	assert_non_null(strstr(ota_error_last(), "does not open"));
	/* moved under another certificate */
	assert_int_equal(fleet_ca_unseal(secret, "CERT B", sealed, &plain, &n), OTA_EINVAL);
	/* each byte altered: nonce, ciphertext, tag */
	for (size_t i = 3; sealed[i]; i += 7) {
		bad = xstrdup(sealed);
		bad[i] = bad[i] == '0' ? '1' : '0';
		assert_int_equal(fleet_ca_unseal(secret, "CERT A", bad, &plain, &n), OTA_EINVAL);
		assert_null(plain);
		free(bad);
	}
	/* cut short, not hex, another version, none */
	bad = xstrndup(sealed, strlen(sealed) - 2);
	assert_int_equal(fleet_ca_unseal(secret, "CERT A", bad, &plain, &n), OTA_EINVAL);
	free(bad);
	bad = xstrdup(sealed);
	bad[10] = 'x';
	assert_int_equal(fleet_ca_unseal(secret, "CERT A", bad, &plain, &n), OTA_EINVAL);
	bad[1] = '2';
	assert_int_equal(fleet_ca_unseal(secret, "CERT A", bad, &plain, &n), OTA_EINVAL);
	free(bad);
	assert_int_equal(fleet_ca_unseal(secret, "CERT A", "v1:", &plain, &n), OTA_EINVAL);
	assert_true(fleet_ca_unseal(NULL, "CERT A", sealed, &plain, &n) < 0);
	assert_null(fleet_ca_seal(NULL, "CERT A", (const unsigned char *)key, strlen(key)));
	free(sealed);
	free(again);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(factory_provisioning_is_scoped_counted_rate_limited_and_audited),
		cmocka_unit_test(identify_accepts_issued_and_refuses_revoked_expired_foreign_self_signed_wrong_usage),
		cmocka_unit_test(identify_counts_refusals_and_auth_cert_takes_the_device_from_the_certificate),
		cmocka_unit_test(external_ca_verifies_but_cannot_issue_and_import_checks_the_pair),
		cmocka_unit_test(the_sealed_ca_key_opens_only_with_its_secret_certificate_and_bytes),
		cmocka_unit_test(a_removed_ca_is_trusted_nowhere_not_after_a_restart_and_a_new_one_works),
	};
	httpc_global_init();
	if (getenv("DEVCA_ONLY"))
		cmocka_set_test_filter(getenv("DEVCA_ONLY"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
