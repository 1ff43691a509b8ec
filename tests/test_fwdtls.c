/*
 * test_fwdtls.c - instance-to-instance HTTPS with a private CA (issue 16,
 * docs/scale.md, "Forwarding", "The fleet on several instances").
 *
 * A real PostgreSQL cluster and real otacd processes whose API and device
 * listeners speak TLS with a certificate of a CA this test makes (openssl
 * CLI), which no system store knows.  A follower with `forward_ca:` naming
 * that CA forwards an API write and the device calls (registration,
 * check-in, report) to the leader over HTTPS and relays its answers; a
 * follower whose forward_ca is another CA refuses to forward (503, naming
 * the certificate) and nothing reaches the leader; a forward_ca that is
 * not a PEM certificate file stops otacd at start with exit 2.  Devices
 * known only by their client certificate go through a follower, which
 * signs the certificate for the leader: check-ins, and a download of the
 * offered image from the artifact store both share (whole, Range, HEAD);
 * forged, stale, foreign and revoked certificates are refused.  Every wait
 * has a generous cap that ends early on success; nothing is timed.
 *
 * Without PostgreSQL's binaries the multi-instance case is skipped.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/crypto.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "../common/httpc.h"
#include "../orchestrator/db/db.h"
#include "../orchestrator/fleet/fwdcert.h"
#include "devharness.h"
#include "harness.h"
#include "pgcluster.h"

static const char *const args[] = { "--local-agents", "0", NULL };
/* a local agent builds the release the certificate devices download */
static const char *const release_args[] = { "--local-agents", "1", NULL };

static struct {
	char *pki;   /* the CAs and the servers' certificate */
	char *ca;    /* the private CA the instances' certificate chains to */
} g;

static int setup(void **state)
{
	struct buf out = BUF_INIT;
	(void)state;
	g.pki = h_tmpdir();
	if (h_sh(&out,
		 "cd '%s' && set -e;"
		 "N='-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes';"
		 "openssl req -x509 $N -keyout ca.key -out ca.pem -days 2 -subj /CN=fwdtls-private-ca;"
		 "openssl req -x509 $N -keyout other.key -out other.pem -days 2 -subj /CN=fwdtls-other-ca;"
		 "openssl req $N -keyout srv.key -out srv.csr -subj /CN=otacd-instance;"
		 "printf 'subjectAltName=IP:127.0.0.1\\nextendedKeyUsage=serverAuth\\n' > srv.ext;"
		 "openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -set_serial 0x1001 -days 2"
		 " -extfile srv.ext -out srv.pem;"
		 "printf 'extendedKeyUsage=clientAuth\\nkeyUsage=critical,digitalSignature\\n"
		 "basicConstraints=critical,CA:FALSE\\n' > dev.ext;"
		 "openssl req -x509 $N -keyout devca.key -out devca.pem -days 2 -subj /CN=fwdtls-device-ca;"
		 "for d in cd-0001 cd-0002; do openssl req $N -keyout $d.key -out $d.csr -subj /CN=$d;"
		 " openssl x509 -req -in $d.csr -CA devca.pem -CAkey devca.key -set_serial 0x2$(echo $d | tr -dc 0-9)"
		 " -days 2 -extfile dev.ext -out $d.pem; done;"
		 "openssl req $N -keyout foreign.key -out foreign.csr -subj /CN=cd-0001;"
		 "openssl x509 -req -in foreign.csr -CA other.pem -CAkey other.key -set_serial 9 -days 2"
		 " -extfile dev.ext -out foreign.pem;"
		 "printf 'not a certificate\\n' > junk.pem",
		 g.pki) != 0) {
		fprintf(stderr, "%s\n", buf_cstr(&out));
		buf_release(&out);
		return -1;
	}
	buf_release(&out);
	g.ca = xasprintf("%s/ca.pem", g.pki);
	/* the test's own clients trust the private CA */
	httpc_set_cacert(g.ca);
	setenv("OTACD_CACERT", g.ca, 1);
	return 0;
}

static int teardown(void **state)
{
	struct buf out = BUF_INIT;
	(void)state;
	h_sh(&out, "rm -rf '%s'", g.pki);
	buf_release(&out);
	free(g.pki);
	free(g.ca);
	return 0;
}

/* An instance's config: TLS on every listener, forward_ca naming ca. */
static char *instance_yaml(const char *secrets, const char *ca)
{
	return xasprintf("leader_poll: 1s\n%stls:\n  cert: %s/srv.pem\n  key: %s/srv.key\nforward_ca: %s/%s\n", secrets,
			 g.pki, g.pki, g.pki, ca);
}

static long token_add(struct daemon *d, const char *name, json_t **ans)
{
	json_t *req = json_pack("{ss ss}", "name", name, "role", "viewer");
	long st = h_post(d, "/api/v1/tokens", req, ans);
	json_decref(req);
	return st;
}

static json_t *checkin_body(const char *id, const char *version)
{
	return json_pack("{ss ss ss ss ss si}", "device", id, "product", "fw", "hardware", "mps2-an385", "bootloader",
			 "1.0.0", "version", version, "security_counter", 1);
}

/* A check-in through d (503 retried while the leader's fleet opens). */
static long checkin(struct daemon *d, const char *id, const char *cred, const char *version)
{
	long st = 0;
	for (int k = 0; k < 600; k++) {
		if ((st = h_dev_post(d, "/device/v1/checkin", cred, checkin_body(id, version), NULL)) != 503)
			break;
		h_msleep(50);
	}
	return st;
}

/* Wait (up to 30 s) until d counts n devices on version. */
static void wait_devices(struct daemon *d, const char *version, int64_t n)
{
	int64_t on = -1;
	for (int k = 0; k < 300 && (on = h_fleet_devices(d, version)) != n; k++)
		h_msleep(100);
	assert_int_equal(on, n);
}

static void a_follower_forwards_over_https_to_a_leader_of_its_forward_ca_and_refuses_another(void **state)
{
	struct pgcluster pg;
	struct daemon d[3];
	struct buf body = BUF_INIT;
	char *otacd_db, *fleet_db, *secrets, *yaml, *other, **creds;
	json_t *ans = NULL, *rep;
	const char *tok;

	(void)state;
	memset(d, 0, sizeof(d));
	if (h_pg_start_dbs(&pg, &otacd_db, &fleet_db) > 0)
		skip();
	secrets = h_fleet_secrets_yaml(pg.dir);
	yaml = instance_yaml(secrets, "ca.pem");
	h_pg_instances(d, 2, otacd_db, fleet_db, yaml, args);
	for (int i = 0; i < 2; i++)
		d[i].fleet_key = xstrndup(strstr(secrets, "fleet_key: \"") + 12, 64);
	assert_int_equal(strncmp(d[1].url, "https://", 8), 0);
	assert_int_equal(strncmp(d[1].device_url, "https://", 8), 0);
	assert_false(h_leads(&d[1]));

	/* an API write through the follower, answered by the leader: the
	 * token it made works there */
	assert_int_equal(token_add(&d[1], "through-follower", &ans), 201);
	assert_non_null(tok = json_string_value(json_object_get(ans, "token")));
	assert_int_equal(h_raw(&d[0], "GET", "/api/v1/runs", tok, NULL, NULL, 0, NULL), 200);
	json_decref(ans);

	/* the device calls through the follower's TLS device listener */
	creds = h_register_devices(&d[1], "dev", 2);
	assert_int_equal(checkin(&d[1], "dev-0000", creds[0], "1.0.0"), 200);
	assert_int_equal(checkin(&d[1], "dev-0001", creds[1], "1.0.0"), 200);
	rep = json_pack("{s[{ss ss ss ss}]}", "reports", "device", "dev-0000", "credential", creds[0], "version",
			"1.0.0", "event", "heartbeat");
	assert_int_equal(h_dev_post(&d[1], "/device/v1/reports", NULL, rep, &ans), 200);
	assert_int_equal(json_integer_value(json_object_get(ans, "accepted")), 1);
	json_decref(ans);
	wait_devices(&d[0], "1.0.0", 2);

	/* a follower trusting another CA: the leader's certificate does not
	 * verify, nothing is sent (503), the leader sees nothing */
	other = instance_yaml(secrets, "other.pem");
	h_init(&d[2], other);
	d[2].fleet_key = xstrndup(strstr(secrets, "fleet_key: \"") + 12, 64);
	h_use_database(&d[2], otacd_db, fleet_db);
	d[2].follower_ok = 1;
	d[2].token = xstrdup(d[0].token);
	assert_int_equal(h_start(&d[2], args), 0);
	assert_false(h_leads(&d[2]));
	{
		json_t *req = json_pack("{ss ss}", "name", "through-other", "role", "viewer");
		char *text = json_dumps(req, JSON_COMPACT);
		assert_int_equal(h_raw(&d[2], "POST", "/api/v1/tokens", d[2].token, "application/json", text,
				       strlen(text), &body),
				 503);
		if (!strstr(buf_cstr(&body), "certificate"))
			fail_msg("503 without naming the certificate: %s", buf_cstr(&body));
		free(text);
		json_decref(req);
	}
	/* the name is free on the leader: the write never reached it */
	assert_int_equal(token_add(&d[0], "through-other", NULL), 201);
	/* a check-in to a new version: refused, and the leader (which
	 * answers a forwarded change after its commit) still has none there */
	assert_int_equal(h_dev_post(&d[2], "/device/v1/checkin", creds[0], checkin_body("dev-0000", "2.0.0"), NULL),
			 503);
	assert_true(h_fleet_devices(&d[0], "2.0.0") <= 0); /* -1: no such series */
	/* and the trusted follower still forwards */
	assert_int_equal(checkin(&d[1], "dev-0000", creds[0], "2.0.0"), 200);
	wait_devices(&d[0], "2.0.0", 1);

	for (int i = 0; i < 2; i++)
		free(creds[i]);
	free(creds);
	for (int i = 0; i < 3; i++)
		h_cleanup(&d[i]);
	pgcluster_stop(&pg);
	buf_release(&body);
	free(other);
	free(yaml);
	free(secrets);
	free(otacd_db);
	free(fleet_db);
}

/* ---- devices known by their certificate through a follower ----------------- */

static size_t on_body(char *p, size_t sz, size_t nm, void *ud)
{
	buf_put(ud, p, sz * nm);
	return sz * nm;
}

/* A request of method (POST, GET or HEAD) to base+path as a device: with
 * the client certificate NAME.pem (NAME.key) of the pki directory when name
 * is not NULL, the extra header lines hdrs (NULL-ended, may be NULL) and,
 * for a POST, body.  The status (-1: no answer); the answer's body in out
 * (a HEAD's: its header lines). */
static long dev_call(const char *method, const char *base, const char *path, const char *name,
		     const char *const *hdrs, const char *body, struct buf *out)
{
	CURL *e = curl_easy_init();
	struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
	char *url = xasprintf("%s%s", base, path), *cert = NULL, *key = NULL;
	long status = -1;

	assert_non_null(e);
	buf_clear(out);
	for (; hdrs && *hdrs; hdrs++)
		h = curl_slist_append(h, *hdrs);
	curl_easy_setopt(e, CURLOPT_URL, url);
	curl_easy_setopt(e, CURLOPT_CAINFO, g.ca);
	if (name) {
		cert = xasprintf("%s/%s.pem", g.pki, name);
		key = xasprintf("%s/%s.key", g.pki, name);
		curl_easy_setopt(e, CURLOPT_SSLCERT, cert);
		curl_easy_setopt(e, CURLOPT_SSLKEY, key);
	}
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
	if (!strcmp(method, "POST")) {
		curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
		curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
	} else if (!strcmp(method, "HEAD")) {
		curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
		curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_body);
		curl_easy_setopt(e, CURLOPT_HEADERDATA, out);
	}
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, out);
	curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 30000L);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	if (curl_easy_perform(e) == CURLE_OK)
		curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
	curl_slist_free_all(h);
	curl_easy_cleanup(e);
	free(cert);
	free(key);
	free(url);
	return status;
}

static long dev_post(const char *base, const char *path, const char *name, const char *const *hdrs, const char *body,
		     struct buf *out)
{
	return dev_call("POST", base, path, name, hdrs, body, out);
}

/* The DER of the pki directory's NAME.pem (caller frees). */
static unsigned char *cert_der(const char *name, size_t *len)
{
	char *path = xasprintf("%s/%s.pem", g.pki, name);
	FILE *f = fopen(path, "r");
	X509 *x;
	unsigned char *der = NULL;
	int n;

	assert_non_null(f);
	assert_non_null(x = PEM_read_X509(f, NULL, NULL, NULL));
	fclose(f);
	assert_true((n = i2d_X509(x, &der)) > 0);
	*len = (size_t)n;
	X509_free(x);
	free(path);
	return der; /* OpenSSL's: OPENSSL_free */
}

/* The two header lines a follower would send for the certificate NAME and
 * this check-in body, signed with key at t; in lines[0..1] (free both). */
static void signed_lines(const unsigned char key[32], const char *name, const char *body, int64_t t, char *lines[3])
{
	size_t len;
	unsigned char *der = cert_der(name, &len);
	char *b64, *auth;
	fwdcert_sign(key, "POST", "/device/v1/checkin", body, strlen(body), der, len, t, &b64, &auth);
	lines[0] = xasprintf("%s: %s", FWDCERT_HEADER, b64);
	lines[1] = xasprintf("%s: %s", FWDCERT_AUTH_HEADER, auth);
	lines[2] = NULL;
	free(b64);
	free(auth);
	OPENSSL_free(der);
}

static void free_lines(char *lines[3])
{
	free(lines[0]);
	free(lines[1]);
}

static char *checkin_text(const char *id, const char *version)
{
	json_t *j = checkin_body(id, version);
	char *text = json_dumps(j, JSON_COMPACT);
	json_decref(j);
	return text;
}

/* A check-in by certificate through d's device API, 503 retried while the
 * leader's fleet opens: the status. */
static long cert_checkin(struct daemon *d, const char *name, const char *version, struct buf *out)
{
	char *body = checkin_text(name, version);
	long st = 0;
	for (int k = 0; k < 600; k++) {
		if ((st = dev_post(d->device_url, "/device/v1/checkin", name, NULL, body, out)) != 503)
			break;
		h_msleep(50);
	}
	free(body);
	return st;
}

/* NAME's offered image, its check-in through d waiting for the rollout:
 * the image's size, its sha256 in sha. */
static int64_t offered_image(struct daemon *d, const char *name, char sha[65])
{
	struct buf out = BUF_INIT;
	int64_t size = -1;

	for (int k = 0; k < 600 && size < 0; k++) {
		json_t *ans, *img;
		assert_int_equal(cert_checkin(d, name, "1.0.0", &out), 200);
		ans = json_loads(buf_cstr(&out), 0, NULL);
		img = json_object_get(json_object_get(ans, "offer"), "image");
		if (json_is_string(json_object_get(img, "sha256"))) {
			snprintf(sha, 65, "%s", json_string_value(json_object_get(img, "sha256")));
			size = json_integer_value(json_object_get(img, "size"));
		} else {
			h_msleep(100);
		}
		json_decref(ans);
	}
	if (size < 0)
		fail_msg("no offer for %s through %s: %s", name, d->device_url, buf_cstr(&out));
	buf_release(&out);
	return size;
}

/* 401, and the answer names why. */
static void assert_refused(long st, const struct buf *out, const char *why)
{
	if (st != 401 || !strstr(buf_cstr(out), why))
		fail_msg("expected 401 naming '%s', got %ld: %s", why, st, buf_cstr(out));
}

static void devices_known_by_certificate_go_through_a_follower_and_forged_certificates_do_not(void **state)
{
	struct pgcluster pg;
	struct daemon d[2];
	struct buf out = BUF_INIT;
	char *otacd_db, *fleet_db, *secrets, *yaml, *secret_path, *body, *lines[3], *objects, *img, *cl;
	char sha[65], got[65];
	const char *const range[] = { "Range: bytes=1000-1999", NULL };
	unsigned char key[32], wrong[32];
	struct buf secret = BUF_INIT, lead = BUF_INIT;
	int64_t now, run, size;

	(void)state;
	memset(d, 0, sizeof(d));
	if (h_pg_start_dbs(&pg, &otacd_db, &fleet_db) > 0)
		skip();
	secrets = h_fleet_secrets_yaml(pg.dir);
	/* one artifact store for both, as S3 in production, and a release key */
	objects = xasprintf("%s/objects", pg.dir);
	assert_int_equal(ota_mkdir_p(objects, 0700), 0);
	free(h_ec_keypair(pg.dir));
	yaml = xasprintf("leader_poll: 1s\n%sdevice_auth: cert\ndevice_ca:\n  cert: %s/devca.pem\n"
			 "tls:\n  cert: %s/srv.pem\n  key: %s/srv.key\n  client_ca: %s/devca.pem\nforward_ca: %s/ca.pem\n"
			 "keys:\n  test: { spec: %s/k.pem }\n",
			 secrets, g.pki, g.pki, g.pki, g.pki, g.pki, pg.dir);
	h_pg_instances_objects(d, 2, otacd_db, fleet_db, yaml, release_args, objects);
	for (int i = 0; i < 2; i++)
		d[i].fleet_key = xstrndup(strstr(secrets, "fleet_key: \"") + 12, 64);
	/* the key the instances derive from the shared device secret, and another */
	secret_path = xasprintf("%s/device-shared.secret", pg.dir);
	assert_int_equal(ota_read_file(&secret, secret_path, 4096), 0);
	fwdcert_key(buf_cstr(&secret), key);
	fwdcert_key("0000000000000000000000000000000000000000000000000000000000000000", wrong);
	/* the release the downloads below take, built meanwhile */
	run = h_trigger(&d[0], dh_fw_release_yaml);

	/* a device known by its certificate checks in through the follower,
	 * which carries the certificate, signed, to the leader */
	assert_int_equal(cert_checkin(&d[1], "cd-0001", "1.0.0", &out), 200);
	assert_int_equal(cert_checkin(&d[1], "cd-0002", "1.0.0", &out), 200);
	wait_devices(&d[0], "1.0.0", 2);

	body = checkin_text("cd-0001", "3.0.0");
	now = (int64_t)time(NULL);
	/* the control: the follower's two headers, well signed, sent straight
	 * to the leader, are believed (so the refusals below are the checks') */
	signed_lines(key, "cd-0001", body, now, lines);
	assert_int_equal(dev_post(d[0].device_url, "/device/v1/checkin", NULL, (const char *const *)lines, body, &out),
			 200);
	free_lines(lines);
	free(body);
	body = checkin_text("cd-0001", "2.0.0");
	/* a device that sends the header itself, straight to the leader: no
	 * MAC it can make */
	{
		size_t len;
		unsigned char *der = cert_der("cd-0001", &len);
		char *b64, *auth;
		fwdcert_sign(key, "POST", "/device/v1/checkin", body, strlen(body), der, len, now, &b64, &auth);
		lines[0] = xasprintf("%s: %s", FWDCERT_HEADER, b64);
		lines[1] = xasprintf("%s: t=%lld,mac=%064d", FWDCERT_AUTH_HEADER, (long long)now, 0);
		lines[2] = NULL;
		assert_refused(dev_post(d[0].device_url, "/device/v1/checkin", NULL, (const char *const *)lines, body,
					&out),
			       &out, "bad MAC");
		free_lines(lines);
		/* ... or only the certificate */
		lines[0] = xasprintf("%s: %s", FWDCERT_HEADER, b64);
		lines[1] = NULL;
		assert_refused(dev_post(d[0].device_url, "/device/v1/checkin", NULL, (const char *const *)lines, body,
					&out),
			       &out, "missing");
		free(lines[0]);
		free(b64);
		free(auth);
		OPENSSL_free(der);
	}
	/* a MAC under another key */
	signed_lines(wrong, "cd-0001", body, now, lines);
	assert_refused(dev_post(d[0].device_url, "/device/v1/checkin", NULL, (const char *const *)lines, body, &out),
		       &out, "bad MAC");
	free_lines(lines);
	/* the right key, two minutes old */
	signed_lines(key, "cd-0001", body, now - 120, lines);
	assert_refused(dev_post(d[0].device_url, "/device/v1/checkin", NULL, (const char *const *)lines, body, &out),
		       &out, "stale");
	free_lines(lines);
	/* the right key, fresh, over another body than the one sent */
	signed_lines(key, "cd-0001", "{}", now, lines);
	assert_refused(dev_post(d[0].device_url, "/device/v1/checkin", NULL, (const char *const *)lines, body, &out),
		       &out, "bad MAC");
	free_lines(lines);
	/* a certificate of another CA under a valid MAC: the leader checks it
	 * again as a TLS client's, and refuses it */
	signed_lines(key, "foreign", body, now, lines);
	assert_refused(dev_post(d[0].device_url, "/device/v1/checkin", NULL, (const char *const *)lines, body, &out),
		       &out, "foreign CA");
	free_lines(lines);
	/* well-signed headers sent to the follower by a client without a
	 * certificate: the follower passes no such header on, so the leader
	 * sees no credential */
	signed_lines(key, "cd-0001", body, now, lines);
	assert_refused(dev_post(d[1].device_url, "/device/v1/checkin", NULL, (const char *const *)lines, body, &out),
		       &out, "missing or wrong token");
	free_lines(lines);
	/* none of them reached the fleet */
	assert_true(h_fleet_devices(&d[0], "2.0.0") <= 0);

	/* a device known only by its certificate downloads its offered image
	 * through the follower: the follower forwards the download's check
	 * with the certificate signed (over GET for a HEAD), the leader
	 * vouches, the bytes come from the store both share; the leader's */
	assert_true(dh_release_of(&d[0], run) > 0);
	size = offered_image(&d[1], "cd-0002", sha);
	img = xasprintf("/device/v1/images/%s?device=cd-0002", sha);
	assert_int_equal(dev_call("GET", d[0].device_url, img, "cd-0002", NULL, NULL, &lead), 200);
	assert_int_equal(lead.len, size);
	ota_sha256_hex(lead.ptr, lead.len, got);
	assert_string_equal(got, sha);
	assert_int_equal(dev_call("GET", d[1].device_url, img, "cd-0002", NULL, NULL, &out), 200);
	assert_true(out.len == lead.len && !memcmp(out.ptr, lead.ptr, lead.len));
	assert_int_equal(dev_call("GET", d[1].device_url, img, "cd-0002", range, NULL, &out), 206);
	assert_true(out.len == 1000 && !memcmp(out.ptr, lead.ptr + 1000, 1000));
	assert_int_equal(dev_call("HEAD", d[1].device_url, img, "cd-0002", NULL, NULL, &out), 200);
	cl = xasprintf("\nContent-Length: %lld\r\n", (long long)size);
	if (!strcasestr(buf_cstr(&out), cl))
		fail_msg("HEAD through the follower: no '%s' in:\n%s", cl + 1, buf_cstr(&out));
	/* another device's certificate for it: the leader's 403 */
	assert_int_equal(dev_call("GET", d[1].device_url, img, "cd-0001", NULL, NULL, &out), 403);

	/* a revoked device is refused through the follower at its next request */
	assert_int_equal(h_otactl(&d[0], &out, "devices revoke cd-0002 --reason 'lost in the field'"), 0);
	assert_refused(cert_checkin(&d[1], "cd-0002", "2.0.0", &out), &out, "revoked");
	/* ... and for its download, whole or by HEAD */
	assert_refused(dev_call("GET", d[1].device_url, img, "cd-0002", NULL, NULL, &out), &out, "revoked");
	assert_int_equal(dev_call("HEAD", d[1].device_url, img, "cd-0002", NULL, NULL, &out), 401);
	assert_int_equal(cert_checkin(&d[1], "cd-0001", "2.0.0", &out), 200);
	wait_devices(&d[0], "2.0.0", 1);

	for (int i = 0; i < 2; i++)
		h_cleanup(&d[i]);
	pgcluster_stop(&pg);
	explicit_bzero(secret.ptr, secret.len);
	buf_release(&secret);
	buf_release(&out);
	buf_release(&lead);
	free(secret_path);
	free(body);
	free(img);
	free(cl);
	free(objects);
	free(yaml);
	free(secrets);
	free(otacd_db);
	free(fleet_db);
}

/* `otactl fleet ca remove` with a leader and a follower: a CA imported
 * through the API (kept in the database), its devices known through
 * either instance, the follower holding a copy in its STATE/devca; a
 * viewer's removal is 403 and changes nothing; once removed (through the
 * follower, forwarded) they get 401 on both and the follower moves its
 * copy aside; restarted with the copy put back and then leading, it does
 * not trust the CA again. */
static void a_removed_device_ca_refuses_its_devices_on_the_leader_and_through_a_follower(void **state)
{
	struct pgcluster pg;
	struct daemon d[2];
	struct buf out = BUF_INIT, pem = BUF_INIT, key = BUF_INIT;
	char *otacd_db, *fleet_db, *secrets, *yaml, *path, *viewer, *copy;
	json_t *ans = NULL, *req;
	struct db *db = NULL;
	struct db_stmt *st;

	(void)state;
	memset(d, 0, sizeof(d));
	if (h_pg_start_dbs(&pg, &otacd_db, &fleet_db) > 0)
		skip();
	secrets = h_fleet_secrets_yaml(pg.dir);
	yaml = xasprintf("leader_poll: 1s\n%sdevice_auth: cert\n"
			 "tls:\n  cert: %s/srv.pem\n  key: %s/srv.key\n  client_ca: %s/devca.pem\nforward_ca: %s/ca.pem\n",
			 secrets, g.pki, g.pki, g.pki, g.pki);
	h_pg_instances(d, 2, otacd_db, fleet_db, yaml, args);
	path = xasprintf("%s/devca.pem", g.pki);
	assert_int_equal(ota_read_file(&pem, path, 1 << 20), 0);
	free(path);
	path = xasprintf("%s/devca.key", g.pki);
	assert_int_equal(ota_read_file(&key, path, 1 << 20), 0);
	free(path);
	req = json_pack("{ss ss}", "certificate", buf_cstr(&pem), "key", buf_cstr(&key));
	assert_int_equal(h_post(&d[0], "/api/v1/fleet/ca", req, &ans), 201);
	json_decref(req);
	json_decref(ans);
	assert_int_equal(cert_checkin(&d[0], "cd-0001", "1.0.0", &out), 200);
	/* the follower keeps a copy in its STATE/devca (an older otacd's, or
	 * one an operator gave it), loaded at its start */
	h_kill(&d[1], SIGTERM);
	path = xasprintf("%s/state/devca", d[1].dir);
	copy = xasprintf("mkdir -p %s && cp %s/devca.pem %s/ca.pem && cp %s/devca.key %s/ca.key", path, g.pki, path, g.pki,
			 path);
	assert_int_equal(h_sh(&out, "%s", copy), 0);
	assert_int_equal(h_start(&d[1], args), 0);
	assert_int_equal(access(path, F_OK), 0);
	assert_int_equal(cert_checkin(&d[1], "cd-0001", "1.0.0", &out), 200);

	/* a viewer may not remove it */
	assert_int_equal(token_add(&d[0], "watcher", &ans), 201);
	viewer = xstrdup(json_string_value(json_object_get(ans, "token")));
	json_decref(ans);
	req = json_pack("{ss}", "reason", "key stolen");
	{
		long code = 0;
		/* 401 until the follower has heard of the new token */
		for (int k = 0; k < 300 && (code = h_call_as(&d[1], viewer, "POST", "/api/v1/fleet/ca/remove", req, &ans)) == 401;
		     k++) {
			json_decref(ans);
			ans = NULL;
			h_msleep(100);
		}
		assert_int_equal(code, 403);
		json_decref(ans);
	}
	assert_int_equal(cert_checkin(&d[1], "cd-0001", "1.0.0", &out), 200);
	/* removed through the follower: 401 on both at the next request */
	assert_int_equal(h_post(&d[1], "/api/v1/fleet/ca/remove", req, &ans), 200);
	json_decref(req);
	json_decref(ans);
	assert_refused(cert_checkin(&d[0], "cd-0001", "1.0.0", &out), &out, "no device CA");
	assert_refused(cert_checkin(&d[1], "cd-0001", "1.0.0", &out), &out, "no device CA");
	assert_int_equal(db_open(&db, otacd_db, 0), 0);
	assert_non_null(st = db_stmt(db, "SELECT COUNT(*) FROM device_ca"));
	assert_int_equal(db_step(st), 1);
	assert_int_equal(db_column_int64(st, 0), 0);
	db_reset(st);
	/* the follower hears of it (the commit's notification, or its periodic
	 * reload) and moves its copy aside */
	for (int k = 0; k < 600 && access(path, F_OK) == 0; k++)
		h_msleep(50);
	assert_int_not_equal(access(path, F_OK), 0);

	/* the copy put back and the follower restarted: moved aside at its
	 * start; leading, it does not trust the CA again */
	h_kill(&d[1], SIGTERM);
	assert_int_equal(h_sh(&out, "%s", copy), 0);
	assert_int_equal(h_start(&d[1], args), 0);
	assert_int_not_equal(access(path, F_OK), 0);
	h_kill(&d[0], SIGKILL);
	for (int k = 0; k < 600 && !h_leads(&d[1]); k++)
		h_msleep(50);
	assert_true(h_leads(&d[1]));
	assert_refused(cert_checkin(&d[1], "cd-0001", "1.0.0", &out), &out, "no device CA");
	assert_int_equal(db_step(st), 1);
	assert_int_equal(db_column_int64(st, 0), 0);
	db_reset(st);
	db_close(db);

	for (int i = 0; i < 2; i++)
		h_cleanup(&d[i]);
	pgcluster_stop(&pg);
	OPENSSL_cleanse(key.ptr, key.len);
	buf_release(&key);
	buf_release(&pem);
	buf_release(&out);
	free(path);
	free(copy);
	free(viewer);
	free(yaml);
	free(secrets);
	free(otacd_db);
	free(fleet_db);
}

/* fwdcert.c alone: its signature verifies, and each change to the request,
 * the certificate, the time or the header's syntax is refused. */
static void a_forwarded_certificate_verifies_only_as_signed(void **state)
{
	static const unsigned char der[] = { 0x30, 0x03, 0x02, 0x01, 0x07 };
	unsigned char key[32], other[32], *got = NULL;
	char *b64, *auth, *bad;
	size_t len = 0;
	const int64_t t = 1764900000;
	static const char *const malformed[] = {
		"", "t=", "t=1764900000", "t=1764900000,mac=", "t=x,mac=00", "T=1764900000,mac=00",
		"t=1764900000;mac=0000000000000000000000000000000000000000000000000000000000000000",
		"t=17649000000000000,mac=0000000000000000000000000000000000000000000000000000000000000000",
	};

	(void)state;
	fwdcert_key("secret-a", key);
	fwdcert_key("secret-b", other);
	fwdcert_sign(key, "POST", "/device/v1/checkin", "{}", 2, der, sizeof(der), t, &b64, &auth);
	assert_int_equal(fwdcert_verify(key, "POST", "/device/v1/checkin", "{}", 2, b64, auth, t + 30, &got, &len), 0);
	assert_int_equal(len, sizeof(der));
	assert_memory_equal(got, der, sizeof(der));
	free(got);
	/* each input changed */
	assert_int_equal(fwdcert_verify(other, "POST", "/device/v1/checkin", "{}", 2, b64, auth, t, &got, &len), OTA_EAUTH);
	assert_int_equal(fwdcert_verify(key, "PUT", "/device/v1/checkin", "{}", 2, b64, auth, t, &got, &len), OTA_EAUTH);
	assert_int_equal(fwdcert_verify(key, "POST", "/device/v1/reports", "{}", 2, b64, auth, t, &got, &len), OTA_EAUTH);
	assert_int_equal(fwdcert_verify(key, "POST", "/device/v1/checkin", "{ }", 3, b64, auth, t, &got, &len), OTA_EAUTH);
	assert_int_equal(fwdcert_verify(key, "POST", "/device/v1/checkin", "{}", 2, "MAMCAQg=", auth, t, &got, &len),
			 OTA_EAUTH);
	/* the time: 30 s either way, not 31 */
	assert_int_equal(fwdcert_verify(key, "POST", "/device/v1/checkin", "{}", 2, b64, auth, t - 30, &got, &len), 0);
	free(got);
	assert_int_equal(fwdcert_verify(key, "POST", "/device/v1/checkin", "{}", 2, b64, auth, t + 31, &got, &len),
			 OTA_EAUTH);
	assert_int_equal(fwdcert_verify(key, "POST", "/device/v1/checkin", "{}", 2, b64, auth, t - 31, &got, &len),
			 OTA_EAUTH);
	/* the header's syntax: uppercase hex, a byte more, none of the forms above */
	bad = xstrdup(auth);
	for (char *p = strstr(bad, "mac=") + 4; *p; p++)
		if (*p >= 'a' && *p <= 'f')
			*p = (char)(*p - 'a' + 'A');
	assert_int_equal(fwdcert_verify(key, "POST", "/device/v1/checkin", "{}", 2, b64, bad, t, &got, &len), OTA_EAUTH);
	free(bad);
	bad = xasprintf("%s0", auth);
	assert_int_equal(fwdcert_verify(key, "POST", "/device/v1/checkin", "{}", 2, b64, bad, t, &got, &len), OTA_EAUTH);
	free(bad);
	for (size_t i = 0; i < sizeof(malformed) / sizeof(malformed[0]); i++)
		assert_int_equal(fwdcert_verify(key, "POST", "/device/v1/checkin", "{}", 2, b64, malformed[i], t, &got, &len),
				 OTA_EAUTH);
	/* the certificate: missing, not base64, too long */
	assert_int_equal(fwdcert_verify(key, "POST", "/device/v1/checkin", "{}", 2, NULL, auth, t, &got, &len), OTA_EAUTH);
	assert_int_equal(fwdcert_verify(key, "POST", "/device/v1/checkin", "{}", 2, "MAMC!QE=", auth, t, &got, &len),
			 OTA_EAUTH);
	bad = xmalloc(4 * ((FWDCERT_MAX_DER + 2) / 3) + 5);
	memset(bad, 'A', 4 * ((FWDCERT_MAX_DER + 2) / 3) + 4);
	bad[4 * ((FWDCERT_MAX_DER + 2) / 3) + 4] = 0;
	assert_int_equal(fwdcert_verify(key, "POST", "/device/v1/checkin", "{}", 2, bad, auth, t, &got, &len), OTA_EAUTH);
	free(bad);
	assert_null(got);
	free(b64);
	free(auth);
}

/* otacd with forward_ca naming name (in the pki directory): its exit
 * status (124: still running after 30 s) and output. */
static int start_with_forward_ca(const char *name, struct buf *out)
{
	char *dir = h_tmpdir(), *config = xasprintf("%s/otacd.yml", dir), *otacd = h_bin("otacd");
	char *yaml = xasprintf("local_agents: 0\nforward_ca: %s/%s\n", g.pki, name);
	struct buf rm = BUF_INIT;
	int rc;

	assert_int_equal(ota_write_file_atomic(config, yaml, strlen(yaml), 0600), 0);
	rc = h_sh(out, "timeout 30 %s --state-dir %s --config %s --listen 127.0.0.1:0 --device-listen 127.0.0.1:0", otacd,
		  dir, config);
	h_sh(&rm, "rm -rf %s", dir);
	buf_release(&rm);
	free(yaml);
	free(otacd);
	free(config);
	free(dir);
	return rc;
}

static void a_forward_ca_that_is_not_a_pem_certificate_file_stops_otacd_with_exit_2(void **state)
{
	struct buf out = BUF_INIT;
	(void)state;
	assert_int_equal(start_with_forward_ca("junk.pem", &out), 2);
	if (!strstr(buf_cstr(&out), "forward_ca") || !strstr(buf_cstr(&out), "no PEM certificate"))
		fail_msg("refused without saying why:\n%s", buf_cstr(&out));
	assert_int_equal(start_with_forward_ca("missing.pem", &out), 2);
	if (!strstr(buf_cstr(&out), "forward_ca") || !strstr(buf_cstr(&out), "No such file"))
		fail_msg("refused without saying why:\n%s", buf_cstr(&out));
	/* a private key is not a CA bundle either */
	assert_int_equal(start_with_forward_ca("ca.key", &out), 2);
	buf_release(&out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(a_forwarded_certificate_verifies_only_as_signed),
		cmocka_unit_test(a_forward_ca_that_is_not_a_pem_certificate_file_stops_otacd_with_exit_2),
		cmocka_unit_test(a_follower_forwards_over_https_to_a_leader_of_its_forward_ca_and_refuses_another),
		cmocka_unit_test(devices_known_by_certificate_go_through_a_follower_and_forged_certificates_do_not),
		cmocka_unit_test(a_removed_device_ca_refuses_its_devices_on_the_leader_and_through_a_follower),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
