/*
 * test_mtls.c - device identity by client certificate, end to end (issue
 * 13): the real otacd with its device listener on TLS asking for client
 * certificates from its own device CA (tls.client_ca = STATE/devca/ca.pem),
 * devices provisioned by CSR through POST /device/v1/provision, and a real
 * TLS client (libcurl) per device:
 *   - device_auth: cert: a provisioned device checks in, reports and asks
 *     for images and the revocation list with its certificate alone; a
 *     token is refused;
 *   - a certificate of device A naming device B (check-in body, report,
 *     X-Device-Id), or another product than its own, is refused 403 and
 *     counted (reason wrong_device);
 *   - otacd-fleetsim --provisioner: simulated devices provisioned by CSR
 *     check in and report over mTLS;
 *   - after `otactl devices revoke ID` the device's next request is refused
 *     on the kept-alive connection and on a resumed session, and counted;
 *   - a certificate of a foreign CA, and an expired one of the device CA,
 *     fail the handshake, counted on the device listener's /metrics;
 *   - device_auth: both: the token and the certificate both work.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <curl/curl.h>
#include <signal.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "../common/httpc.h"
#include "devharness.h"
#include "harness.h"

/* ---- OpenSSL helpers -------------------------------------------------------- */

static void write_key(EVP_PKEY *k, const char *path)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	assert_true(PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL));
	fclose(f);
}

static char *make_csr(EVP_PKEY *k, const char *cn)
{
	X509_REQ *r = X509_REQ_new();
	X509_NAME *n = X509_NAME_new();
	BIO *b = BIO_new(BIO_s_mem());
	char *data, *out;
	long len;
	assert_true(X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1, 0));
	assert_true(X509_REQ_set_subject_name(r, n));
	assert_true(X509_REQ_set_pubkey(r, k));
	assert_true(X509_REQ_sign(r, k, EVP_sha256()) > 0);
	assert_true(PEM_write_bio_X509_REQ(b, r));
	len = BIO_get_mem_data(b, &data);
	out = xstrndup(data, (size_t)len);
	BIO_free(b);
	X509_NAME_free(n);
	X509_REQ_free(r);
	return out;
}

/* A client certificate for cn, valid [now+nb_s, now+na_s], signed by the CA. */
static void write_client_cert(X509 *ca, EVP_PKEY *ca_key, EVP_PKEY *k, const char *cn, long nb_s, long na_s,
			      const char *path)
{
	X509 *x = X509_new();
	X509_NAME *n = X509_NAME_new();
	FILE *f;
	assert_true(X509_set_version(x, 2));
	ASN1_INTEGER_set(X509_get_serialNumber(x), 4242);
	X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1, 0);
	X509_set_subject_name(x, n);
	X509_set_issuer_name(x, X509_get_subject_name(ca));
	X509_gmtime_adj(X509_getm_notBefore(x), nb_s);
	X509_gmtime_adj(X509_getm_notAfter(x), na_s);
	X509_set_pubkey(x, k);
	dh_x509_add_ext(ca, x, NID_basic_constraints, "critical,CA:FALSE");
	dh_x509_add_ext(ca, x, NID_key_usage, "critical,digitalSignature");
	dh_x509_add_ext(ca, x, NID_ext_key_usage, "clientAuth");
	assert_true(X509_sign(x, ca_key, EVP_sha256()) > 0);
	f = fopen(path, "w");
	assert_non_null(f);
	assert_true(PEM_write_X509(f, x));
	fclose(f);
	X509_NAME_free(n);
	X509_free(x);
}

/* ---- the daemon --------------------------------------------------------------- */

static double series(struct daemon *d, const char *key);

/* A counter, once it reached want (the server counts a refused handshake
 * after the client has given up on it): waits up to 5 s. */
static double series_at_least(struct daemon *d, const char *key, double want)
{
	double v = -1;
	for (int waited = 0; waited < 5000 && (v = series(d, key)) < want; waited += 50)
		h_msleep(50);
	return v;
}

/* The value of the series line that starts with key (not its HELP line). */
static double series(struct daemon *d, const char *key)
{
	char *text = h_device_metrics(d, NULL), *nl = xasprintf("\n%s", key), *p = strstr(text, nl);
	double v = p ? strtod(p + strlen(nl), NULL) : -1;
	free(nl);
	free(text);
	return v;
}

/* The shared state of the tests: one daemon, restarted between modes. */
static struct {
	struct daemon d;
	char *pki, *srvca, *prov;
	char *creds_tok;  /* a token-registered device's credential (tok-0000) */
	char *simprov;    /* otacd-fleetsim's provisioner (dev-*) */
} g;

static void write_config(const char *mode)
{
	char *yaml = xasprintf("poll_interval: 1s\ndevice_auth: %s\ntls:\n  cert: %s/srv.pem\n  key: %s/srv.key\n"
			       "  client_ca: %s/state/devca/ca.pem\n", mode, g.pki, g.pki, g.d.dir);
	assert_int_equal(ota_write_file_atomic(g.d.config, yaml, strlen(yaml), 0600), 0);
	free(yaml);
}

/* ---- a device: one libcurl handle, keeps its connection ---------------------- */

struct dev {
	CURL *e;
	struct buf body;
	long connects;   /* new connections of the last request */
	CURLcode cc;
};

static size_t on_body(char *p, size_t sz, size_t nm, void *ud)
{
	struct dev *v = ud;
	buf_put(&v->body, p, sz * nm);
	return sz * nm;
}

/* cert NULL: no client certificate */
static void dev_open(struct dev *v, const char *cert, const char *key)
{
	memset(v, 0, sizeof(*v));
	buf_init(&v->body, BUF_NOLIMIT);
	v->e = curl_easy_init();
	assert_non_null(v->e);
	curl_easy_setopt(v->e, CURLOPT_CAINFO, g.srvca);
	curl_easy_setopt(v->e, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
	if (cert) {
		curl_easy_setopt(v->e, CURLOPT_SSLCERT, cert);
		curl_easy_setopt(v->e, CURLOPT_SSLKEY, key);
	}
	curl_easy_setopt(v->e, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(v->e, CURLOPT_WRITEDATA, v);
	curl_easy_setopt(v->e, CURLOPT_TIMEOUT_MS, 30000L);
	curl_easy_setopt(v->e, CURLOPT_NOSIGNAL, 1L);
}

static void dev_close(struct dev *v)
{
	curl_easy_cleanup(v->e);
	buf_release(&v->body);
}

/* A request; the HTTP status, or -1 when there was no answer (the
 * handshake refused).  body NULL: GET.  xdev: X-Device-Id or NULL. */
static long dev_req(struct dev *v, const char *path, const char *token, const char *xdev, json_t *body, int fresh)
{
	struct curl_slist *h = NULL;
	char line[256], *url = xasprintf("%s%s", g.d.device_url, path), *text = NULL;
	long status = -1;

	buf_clear(&v->body);
	if (token) {
		snprintf(line, sizeof(line), "Authorization: Bearer %s", token);
		h = curl_slist_append(h, line);
	}
	if (xdev) {
		snprintf(line, sizeof(line), "X-Device-Id: %s", xdev);
		h = curl_slist_append(h, line);
	}
	h = curl_slist_append(h, "Content-Type: application/json");
	curl_easy_setopt(v->e, CURLOPT_URL, url);
	curl_easy_setopt(v->e, CURLOPT_HTTPHEADER, h);
	curl_easy_setopt(v->e, CURLOPT_FRESH_CONNECT, fresh ? 1L : 0L);
	if (body) {
		text = json_dumps(body, JSON_COMPACT);
		curl_easy_setopt(v->e, CURLOPT_POSTFIELDS, text);
		curl_easy_setopt(v->e, CURLOPT_POSTFIELDSIZE, (long)strlen(text));
	} else {
		curl_easy_setopt(v->e, CURLOPT_HTTPGET, 1L);
	}
	v->cc = curl_easy_perform(v->e);
	if (v->cc == CURLE_OK)
		curl_easy_getinfo(v->e, CURLINFO_RESPONSE_CODE, &status);
	curl_easy_getinfo(v->e, CURLINFO_NUM_CONNECTS, &v->connects);
	curl_slist_free_all(h);
	json_decref(body);
	free(text);
	free(url);
	return status;
}

static json_t *checkin_body(const char *id)
{
	return json_pack("{ss ss ss ss ss si ss}", "device", id, "product", "sensor", "hardware", "mps2-an385",
			 "bootloader", "1.2.0", "version", "1.0.0", "security_counter", 0, "slot", "confirmed");
}

static json_t *report_body(const char *id)
{
	return json_pack("{s[{ss ss ss}]}", "reports", "device", id, "version", "1.0.0", "event", "heartbeat");
}

/* Provision device id over the device API with a new P-256 key; writes
 * DIR/id.pem and DIR/id.key. */
static void provision(const char *id)
{
	EVP_PKEY *k = EVP_EC_gen("P-256");
	char *csr = make_csr(k, id), *url = xasprintf("%s/device/v1/provision", g.d.device_url);
	char *path = xasprintf("%s/%s.key", g.pki, id), *text;
	json_t *req = json_pack("{ss ss ss}", "device", id, "csr", csr, "product", "sensor"), *ans;
	struct httpc_response r = HTTPC_RESPONSE_INIT;
	const char *pem;

	write_key(k, path);
	free(path);
	text = json_dumps(req, JSON_COMPACT);
	assert_int_equal(httpc_request(&r, "POST", url, g.prov, "application/json", text, strlen(text), 30000), 0);
	assert_int_equal(r.status, 200);
	ans = json_loads(buf_cstr(&r.body), 0, NULL);
	assert_non_null(pem = json_string_value(json_object_get(ans, "certificate")));
	path = xasprintf("%s/%s.pem", g.pki, id);
	assert_int_equal(ota_write_file_atomic(path, pem, strlen(pem), 0600), 0);
	free(path);
	json_decref(ans);
	json_decref(req);
	httpc_response_release(&r);
	EVP_PKEY_free(k);
	free(text);
	free(csr);
	free(url);
}

static char *pki_path(const char *name)
{
	return xasprintf("%s/%s", g.pki, name);
}

/* ---- tests ------------------------------------------------------------------------ */

/* The daemon with its device CA and a provisioner, then on TLS with
 * client_ca = the device CA, device_auth: cert. */
static int setup(void **state)
{
	struct buf out = BUF_INIT;
	char **creds;
	(void)state;
	g.pki = h_tmpdir();
	if (h_sh(&out,
		 "cd '%s' && set -e;"
		 "N='-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes';"
		 "openssl req -x509 $N -keyout srvca.key -out srvca.pem -days 2 -subj /CN=mtls-server-ca;"
		 "openssl req $N -keyout srv.key -out srv.csr -subj /CN=otacd-test;"
		 "printf 'subjectAltName=IP:127.0.0.1\\nextendedKeyUsage=serverAuth\\n' > srv.ext;"
		 "openssl x509 -req -in srv.csr -CA srvca.pem -CAkey srvca.key -set_serial 0x1001 -days 2"
		 " -extfile srv.ext -out srv.pem;"
		 "printf 'extendedKeyUsage=clientAuth\\nkeyUsage=digitalSignature\\n' > dev.ext;"
		 "openssl req -x509 $N -keyout evil.key -out evil.pem -days 2 -subj /CN=evil-ca;"
		 "openssl req $N -keyout foreign.key -out foreign.csr -subj /CN=mt-0001;"
		 "openssl x509 -req -in foreign.csr -CA evil.pem -CAkey evil.key -set_serial 8 -days 2"
		 " -extfile dev.ext -out foreign.pem;"
		 "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out k.pem;"
		 "openssl pkey -in k.pem -pubout -out k.pub",
		 g.pki) != 0) {
		fprintf(stderr, "%s\n", buf_cstr(&out));
		return -1;
	}
	g.srvca = pki_path("srvca.pem");
	httpc_set_cacert(g.srvca);
	setenv("OTACD_CACERT", g.srvca, 1);

	/* first plain: the CA and a provisioner (the listener needs the CA file) */
	h_init(&g.d, "device_auth: cert\n");
	assert_int_equal(h_start(&g.d, NULL), 0);
	/* a token device, registered with the fleet key while tokens are the way in */
	if (h_otactl(&g.d, &out, "fleet ca init --cn 'mtls device CA' --days 30") != 0)
		fail_msg("otactl fleet ca init: %s (daemon in %s)", buf_cstr(&out), g.d.dir);
	assert_int_equal(h_otactl(&g.d, &out, "fleet provisioners add fab --prefix mt- --max 100 --rate 1000"), 0);
	g.prov = h_token_line(&out);
	assert_int_equal(h_otactl(&g.d, &out, "fleet provisioners add sim --prefix dev- --max 100000 --rate 100000"), 0);
	g.simprov = h_token_line(&out);
	creds = h_register_devices(&g.d, "tok", 1);
	g.creds_tok = creds[0];
	free(creds);
	h_kill(&g.d, SIGTERM);
	write_config("cert");
	assert_int_equal(h_start(&g.d, NULL), 0);
	assert_int_equal(strncmp(g.d.device_url, "https://", 8), 0);
	provision("mt-0001");
	provision("mt-0002");
	buf_release(&out);
	return 0;
}

static int teardown(void **state)
{
	struct buf out = BUF_INIT;
	(void)state;
	h_cleanup(&g.d);
	h_sh(&out, "rm -rf '%s'", g.pki);
	buf_release(&out);
	free(g.pki);
	free(g.srvca);
	free(g.prov);
	free(g.creds_tok);
	free(g.simprov);
	return 0;
}

static void provisioned_device_checks_in_reports_and_fetches_by_certificate_and_tokens_are_refused(void **state)
{
	char *cert = pki_path("mt-0001.pem"), *key = pki_path("mt-0001.key");
	struct dev v, t;
	json_t *ans;
	(void)state;

	dev_open(&v, cert, key);
	/* no token anywhere: the certificate is the identity */
	assert_int_equal(dev_req(&v, "/device/v1/checkin", NULL, NULL, checkin_body("mt-0001"), 0), 200);
	ans = json_loads(buf_cstr(&v.body), 0, NULL);
	assert_non_null(ans);
	json_decref(ans);
	assert_int_equal(dev_req(&v, "/device/v1/reports", NULL, NULL, report_body("mt-0001"), 0), 200);
	ans = json_loads(buf_cstr(&v.body), 0, NULL);
	assert_int_equal(json_integer_value(json_object_get(ans, "accepted")), 1);
	json_decref(ans);
	/* authenticated past the identity: an unknown image is a 404, not a 401 */
	assert_int_equal(dev_req(&v, "/device/v1/images/0000000000000000000000000000000000000000000000000000000000000000",
				 NULL, NULL, NULL, 0), 404);
	assert_int_not_equal(dev_req(&v, "/device/v1/revocations", NULL, NULL, NULL, 0), 401);
	assert_true(series(&g.d, "otacd_device_cert_accepted_total ") >= 4);

	/* device_auth: cert: a valid token without a certificate is refused */
	dev_open(&t, NULL, NULL);
	assert_int_equal(dev_req(&t, "/device/v1/checkin", g.creds_tok, NULL, checkin_body("tok-0000"), 0), 401);
	assert_non_null(strstr(buf_cstr(&t.body), "device_auth: cert"));
	assert_int_equal(dev_req(&t, "/device/v1/images/0000000000000000000000000000000000000000000000000000000000000000",
				 g.creds_tok, "tok-0000", NULL, 0), 401);
	assert_int_equal(dev_req(&t, "/device/v1/reports", g.creds_tok, NULL, report_body("tok-0000"), 0), 401);
	dev_close(&t);
	dev_close(&v);
	free(cert);
	free(key);
}

/* otacd-fleetsim --provisioner: each simulated device makes its key, gets
 * its certificate by CSR and checks in and reports over mTLS (no token in
 * any request: the fleet is device_auth: cert). */
static void fleetsim_devices_provisioned_by_csr_check_in_and_report_over_mtls(void **state)
{
	char *bin = h_bin("otacd-fleetsim"), *stats = xasprintf("%s/stats.json", g.d.dir), *calm = h_calm_profile(&g.d);
	double accepted = series(&g.d, "otacd_device_cert_accepted_total ");
	struct buf out = BUF_INIT;
	json_t *st;
	(void)state;

	assert_int_equal(h_sh(&out, "%s --url %s --devices 40 --seed 3 --key %s/k.pub --provisioner '%s' --product fw"
				    " --start-version 1.0.0 --report-every 1s --duration 6 --stats %s --cacert '%s'"
				    " --profile %s --quiet",
			      bin, g.d.device_url, g.pki, g.simprov, stats, g.srvca, calm), 0);
	free(calm);
	buf_release(&out);
	assert_int_equal(ota_read_file(&out, stats, 1 << 20), 0);
	st = json_loadb(out.ptr, out.len, 0, NULL);
	assert_non_null(st);
	assert_true(json_integer_value(json_object_get(st, "checkins")) >= 40);
	assert_true(json_integer_value(json_object_get(st, "reports_sent")) >= 40);
	assert_int_equal(json_integer_value(json_object_get(st, "reports_rejected")), 0);
	json_decref(st);
	assert_int_equal(h_fleet_devices(&g.d, "1.0.0"), 40);
	/* every request was a certificate's: 40 issued, each used */
	assert_int_equal(h_sql_int(&g.d, "SELECT COUNT(*) FROM device_certs WHERE device LIKE 'dev-%'"), 40);
	assert_true(series(&g.d, "otacd_device_cert_accepted_total ") >= accepted + 80);
	assert_true(series(&g.d, "otacd_device_cert_refused_total{reason=\"wrong_device\"} ") == 0);
	buf_release(&out);
	free(bin);
	free(stats);
}

static void certificate_of_device_a_naming_device_b_is_refused_and_counted(void **state)
{
	char *cert = pki_path("mt-0001.pem"), *key = pki_path("mt-0001.key");
	double before = series(&g.d, "otacd_device_cert_refused_total{reason=\"wrong_device\"} ");
	struct dev v;
	(void)state;

	dev_open(&v, cert, key);
	assert_int_equal(dev_req(&v, "/device/v1/checkin", NULL, NULL, checkin_body("mt-0002"), 0), 403);
	assert_non_null(strstr(buf_cstr(&v.body), "not 'mt-0002''s"));
	/* with mt-0002's own token too: the certificate decides */
	assert_int_equal(dev_req(&v, "/device/v1/reports", NULL, NULL,
				 json_pack("{s[{ss ss ss}{ss ss ss}]}", "reports", "device", "mt-0001", "version", "1.0.0",
					   "event", "heartbeat", "device", "mt-0002", "version", "1.0.0", "event",
					   "heartbeat"), 0), 403);
	assert_int_equal(dev_req(&v, "/device/v1/images/0000000000000000000000000000000000000000000000000000000000000000",
				 NULL, "mt-0002", NULL, 0), 403);
	assert_int_equal(dev_req(&v, "/device/v1/revocations", NULL, "mt-0002", NULL, 0), 403);
	/* its certificate is for product sensor (OU): not another product */
	{
		json_t *b = checkin_body("mt-0001");
		json_object_set_new(b, "product", json_string("gateway"));
		assert_int_equal(dev_req(&v, "/device/v1/checkin", NULL, NULL, b, 0), 403);
		assert_non_null(strstr(buf_cstr(&v.body), "for product 'sensor'"));
	}
	assert_true(series(&g.d, "otacd_device_cert_refused_total{reason=\"wrong_device\"} ") == before + 5);
	dev_close(&v);
	free(cert);
	free(key);
}

static void foreign_and_expired_certificates_fail_the_handshake_and_are_counted(void **state)
{
	char *cert = pki_path("foreign.pem"), *key = pki_path("foreign.key");
	double before = series(&g.d, "otacd_tls_client_cert_refusals_total ");
	char *capath = xasprintf("%s/state/devca/ca.pem", g.d.dir), *cakey = xasprintf("%s/state/devca/ca.key", g.d.dir);
	char *old = pki_path("old.pem"), *oldkey = pki_path("old.key");
	EVP_PKEY *k = EVP_EC_gen("P-256"), *ck;
	struct buf b = BUF_INIT;
	struct dev v;
	X509 *ca;
	BIO *bio;
	FILE *f;
	(void)state;

	assert_true(before >= 0);
	dev_open(&v, cert, key);
	assert_int_equal(dev_req(&v, "/device/v1/checkin", NULL, NULL, checkin_body("mt-0001"), 0), -1);
	dev_close(&v);
	assert_true(series_at_least(&g.d, "otacd_tls_client_cert_refusals_total ", before + 1) == before + 1);

	/* a certificate of the device CA itself, expired an hour ago */
	assert_int_equal(ota_read_file(&b, capath, 1 << 20), 0);
	bio = BIO_new_mem_buf(buf_cstr(&b), -1);
	ca = PEM_read_bio_X509(bio, NULL, NULL, NULL);
	BIO_free(bio);
	assert_non_null(ca);
	f = fopen(cakey, "r");
	assert_non_null(f);
	ck = PEM_read_PrivateKey(f, NULL, NULL, NULL);
	fclose(f);
	assert_non_null(ck);
	write_key(k, oldkey);
	write_client_cert(ca, ck, k, "mt-0002", -7200, -3600, old);
	dev_open(&v, old, oldkey);
	assert_int_equal(dev_req(&v, "/device/v1/checkin", NULL, NULL, checkin_body("mt-0002"), 0), -1);
	dev_close(&v);
	assert_true(series_at_least(&g.d, "otacd_tls_client_cert_refusals_total ", before + 2) == before + 2);
	X509_free(ca);
	EVP_PKEY_free(ck);
	EVP_PKEY_free(k);
	buf_release(&b);
	free(capath);
	free(cakey);
	free(old);
	free(oldkey);
	free(cert);
	free(key);
}

static void revoked_device_is_refused_at_its_next_request_on_a_kept_and_a_resumed_connection(void **state)
{
	char *cert = pki_path("mt-0002.pem"), *key = pki_path("mt-0002.key");
	double before = series(&g.d, "otacd_device_cert_refused_total{reason=\"revoked\"} ");
	struct buf out = BUF_INIT;
	struct dev v;
	(void)state;

	dev_open(&v, cert, key);
	assert_int_equal(dev_req(&v, "/device/v1/checkin", NULL, NULL, checkin_body("mt-0002"), 0), 200);
	assert_int_equal(v.connects, 1);
	assert_int_equal(dev_req(&v, "/device/v1/checkin", NULL, NULL, checkin_body("mt-0002"), 0), 200);
	assert_int_equal(v.connects, 0); /* the same connection */
	assert_int_equal(h_otactl(&g.d, &out, "devices revoke mt-0002 --reason 'lost in the field'"), 0);
	/* the next request on the kept-alive connection */
	assert_int_equal(dev_req(&v, "/device/v1/checkin", NULL, NULL, checkin_body("mt-0002"), 0), 401);
	assert_int_equal(v.connects, 0);
	assert_non_null(strstr(buf_cstr(&v.body), "revoked"));
	assert_int_equal(dev_req(&v, "/device/v1/reports", NULL, NULL, report_body("mt-0002"), 0), 401);
	/* a new connection (the TLS session resumed from curl's cache) */
	assert_int_equal(dev_req(&v, "/device/v1/checkin", NULL, NULL, checkin_body("mt-0002"), 1), 401);
	assert_int_equal(v.connects, 1);
	assert_true(series(&g.d, "otacd_device_cert_refused_total{reason=\"revoked\"} ") == before + 3);
	dev_close(&v);
	/* another device is untouched */
	free(cert);
	free(key);
	cert = pki_path("mt-0001.pem");
	key = pki_path("mt-0001.key");
	dev_open(&v, cert, key);
	assert_int_equal(dev_req(&v, "/device/v1/checkin", NULL, NULL, checkin_body("mt-0001"), 0), 200);
	dev_close(&v);
	buf_release(&out);
	free(cert);
	free(key);
}

static void device_auth_both_takes_a_token_or_a_certificate(void **state)
{
	char *cert = pki_path("mt-0001.pem"), *key = pki_path("mt-0001.key");
	struct dev v, t;
	(void)state;

	h_kill(&g.d, SIGTERM);
	write_config("both");
	assert_int_equal(h_start(&g.d, NULL), 0);
	dev_open(&t, NULL, NULL);
	assert_int_equal(dev_req(&t, "/device/v1/checkin", g.creds_tok, NULL, checkin_body("tok-0000"), 0), 200);
	assert_int_equal(dev_req(&t, "/device/v1/reports", g.creds_tok, NULL, report_body("tok-0000"), 0), 200);
	/* a token is still only its own device's */
	assert_int_equal(dev_req(&t, "/device/v1/checkin", g.creds_tok, NULL, checkin_body("mt-0001"), 0), 401);
	dev_close(&t);
	dev_open(&v, cert, key);
	assert_int_equal(dev_req(&v, "/device/v1/checkin", NULL, NULL, checkin_body("mt-0001"), 0), 200);
	/* with a certificate, a token does not widen it */
	assert_int_equal(dev_req(&v, "/device/v1/checkin", g.creds_tok, NULL, checkin_body("tok-0000"), 0), 403);
	dev_close(&v);
	free(cert);
	free(key);
}

/* `otactl fleet ca remove` under the TLS listener whose client_ca is
 * STATE/devca/ca.pem: the old CA's device is refused at its next request
 * (401, on the kept and on a new connection); `fleet ca init` makes a new
 * CA the listener trusts at once (its TLS reloaded) while the old CA's
 * certificate no longer passes the handshake; the device re-provisioned
 * under the new CA checks in, before and after a restart. */
static void a_removed_ca_is_refused_and_a_new_one_works_without_a_restart(void **state)
{
	char *cert = pki_path("mt-0001.pem"), *key = pki_path("mt-0001.key");
	char *ncert = pki_path("new/mt-0001.crt"), *nkey = pki_path("new/mt-0001.key");
	struct buf out = BUF_INIT;
	struct dev v;
	double before;
	(void)state;

	dev_open(&v, cert, key);
	assert_int_equal(dev_req(&v, "/device/v1/checkin", NULL, NULL, checkin_body("mt-0001"), 0), 200);
	assert_int_equal(h_otactl(&g.d, &out, "fleet ca remove --reason 'key stolen'"), 0);
	assert_int_equal(dev_req(&v, "/device/v1/checkin", NULL, NULL, checkin_body("mt-0001"), 0), 401);
	assert_non_null(strstr(buf_cstr(&v.body), "no device CA"));
	assert_int_equal(dev_req(&v, "/device/v1/checkin", NULL, NULL, checkin_body("mt-0001"), 1), 401);
	dev_close(&v);

	/* a new CA: trusted by the listener at once, the old one refused in
	 * the handshake (a new handle: no TLS session to resume) */
	assert_int_equal(h_otactl(&g.d, &out, "fleet ca init --cn 'mtls device CA 2' --days 30"), 0);
	before = series(&g.d, "otacd_tls_client_cert_refusals_total ");
	dev_open(&v, cert, key);
	assert_int_equal(dev_req(&v, "/device/v1/checkin", NULL, NULL, checkin_body("mt-0001"), 0), -1);
	assert_true(series_at_least(&g.d, "otacd_tls_client_cert_refusals_total ", before + 1) >= before + 1);
	dev_close(&v);
	/* re-provisioned by the admin (it had a certificate) */
	if (h_otactl(&g.d, &out, "devices provision mt-0001 --product sensor --replace --out %s/new", g.pki) != 0)
		fail_msg("re-provisioning under the new CA: %s", buf_cstr(&out));
	dev_open(&v, ncert, nkey);
	assert_int_equal(dev_req(&v, "/device/v1/checkin", NULL, NULL, checkin_body("mt-0001"), 0), 200);
	dev_close(&v);
	h_kill(&g.d, SIGTERM);
	assert_int_equal(h_start(&g.d, NULL), 0);
	dev_open(&v, ncert, nkey);
	assert_int_equal(dev_req(&v, "/device/v1/checkin", NULL, NULL, checkin_body("mt-0001"), 0), 200);
	dev_close(&v);
	buf_release(&out);
	free(cert);
	free(key);
	free(ncert);
	free(nkey);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(provisioned_device_checks_in_reports_and_fetches_by_certificate_and_tokens_are_refused),
		cmocka_unit_test(fleetsim_devices_provisioned_by_csr_check_in_and_report_over_mtls),
		cmocka_unit_test(certificate_of_device_a_naming_device_b_is_refused_and_counted),
		cmocka_unit_test(foreign_and_expired_certificates_fail_the_handshake_and_are_counted),
		cmocka_unit_test(revoked_device_is_refused_at_its_next_request_on_a_kept_and_a_resumed_connection),
		cmocka_unit_test(device_auth_both_takes_a_token_or_a_certificate),
		/* last: it replaces the device CA */
		cmocka_unit_test(a_removed_ca_is_refused_and_a_new_one_works_without_a_restart),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
