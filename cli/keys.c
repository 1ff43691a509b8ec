/*
 * keys.c - `otactl keys ...`: the signing PKI's offline steps and the one
 * online step (publishing a revocation list); see docs/security.md.
 *
 *   keys root init DIR [--cn NAME] [--days N] [--key SPEC [--pin PIN]]
 *   keys certify PUB.pem|KEYSPEC --root DIR [--root-key SPEC] [--pin PIN]
 *                [--days N] [--not-before T] [--not-after T] [--cn NAME] -o CERT.pem
 *   keys revoke KEYID --root DIR [--root-key SPEC] [--pin PIN] --reason R [-o CRL.pem]
 *   keys publish CRL.pem            (to the daemon: POST /api/v1/revocations)
 *
 * The offline steps never talk to the daemon: they run where the root key
 * is (an air-gapped machine, or a host with the HSM).  DIR holds
 * root.crt.pem, root.key.pem (unless the root key is in a token),
 * issued/KEYID-SERIAL.crt.pem for each certificate issued (revoke finds
 * a key's certificates there) and revocations.crl.pem, the newest list.
 */
#include <dirent.h>
#include <openssl/bn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/util.h"
#include "../orchestrator/keys.h"
#include "../orchestrator/pki.h"
#include "otactl.h"

struct kopts {
	const char *root, *root_key, *pin, *cn, *out, *reason, *not_before, *not_after, *key;
	int days;
	const char *pos[2];
	int npos;
};

static int parse(struct kopts *o, int argc, char **argv, const char *cmd)
{
	const struct {
		const char *name;
		const char **dst;
	} opts[] = {
		{ "--root", &o->root },        { "--root-key", &o->root_key }, { "--pin", &o->pin },
		{ "--cn", &o->cn },            { "-o", &o->out },              { "--reason", &o->reason },
		{ "--not-before", &o->not_before }, { "--not-after", &o->not_after }, { "--key", &o->key },
	};

	memset(o, 0, sizeof(*o));
	o->days = -1;
	for (int i = 1; i < argc; i++) {
		const char *v = NULL;
		int r = opt_value("--days", argc, argv, &i, &v);
		if (r > 0) {
			char *end = NULL;
			long d = strtol(v, &end, 10);
			if (*end || d < 1 || d > 36500)
				return usage_error(cmd, "--days must be 1..36500");
			o->days = (int)d;
			continue;
		}
		for (size_t k = 0; k < OTA_ARRAY_SIZE(opts) && r == 0; k++)
			if ((r = opt_value(opts[k].name, argc, argv, &i, &v)) > 0)
				*opts[k].dst = v;
		if (r < 0)
			return usage_error(cmd, "%s needs a value", argv[i]);
		if (r > 0)
			continue;
		if (is_option(argv[i]))
			return usage_error(cmd, "unknown option '%s'", argv[i]);
		if (o->npos == 2)
			return usage_error(cmd, "unexpected argument '%s'", argv[i]);
		o->pos[o->npos++] = argv[i];
	}
	return 0;
}

static int fail(const char *what)
{
	fprintf(stderr, "otactl: %s: %s\n", what, ota_error_last());
	return EXIT_FAIL;
}

/* A time option: Unix seconds or RFC 3339 UTC. */
static int opt_time(const char *s, time_t *out)
{
	char *end = NULL;
	long long v = strtoll(s, &end, 10);
	if (end != s && !*end) {
		*out = (time_t)v;
		return 0;
	}
	return pki_parse_time(s, out);
}

/* The root: its certificate from DIR and its key (--root-key, else DIR/root.key.pem). */
static int load_root(const struct kopts *o, X509 **cert, struct sign_key **key)
{
	char *cpath = xasprintf("%s/root.crt.pem", o->root), *kpath = xasprintf("%s/root.key.pem", o->root);
	int rc = pki_root_load_file(cert, cpath);

	if (rc == 0 && (rc = sign_key_load(key, o->root_key ? o->root_key : kpath, o->pin)) < 0)
		ota_error_prefix("root key");
	free(cpath);
	free(kpath);
	return rc;
}

static int root_init(const struct kopts *o)
{
	struct sign_key *key = NULL;
	int rc;

	if (o->key && sign_key_load(&key, o->key, o->pin) < 0)
		return fail("root key");
	rc = pki_root_init(o->pos[1], o->cn ? o->cn : "otacd release root", o->days > 0 ? o->days : 7300, key);
	sign_key_free(key);
	if (rc < 0)
		return fail("keys root init");
	printf("root certificate %s/root.crt.pem%s%s/root.key.pem: keep it offline\n", o->pos[1],
	       o->key ? "" : ", root key ", o->key ? "" : o->pos[1]);
	return EXIT_OK;
}

/* The key to certify: a PEM public key file or any signing key spec. */
static int subject_key(const char *what, const char *pin, EVP_PKEY **out)
{
	struct buf b = BUF_INIT;
	struct sign_key *k = NULL;
	int rc;

	if (strncmp(what, "pkcs11:", 7) && ota_read_file(&b, what, 1 << 20) == 0 &&
	    memmem(b.ptr, b.len, "-----BEGIN PUBLIC KEY-----", 26)) {
		rc = pubkey_load_pem(out, b.ptr, b.len);
		buf_release(&b);
		return rc;
	}
	buf_release(&b);
	if ((rc = sign_key_load(&k, what, pin)) < 0)
		return rc;
	*out = sign_key_public(k);
	EVP_PKEY_up_ref(*out);
	sign_key_free(k);
	return 0;
}

static int certify(const struct kopts *o)
{
	X509 *root = NULL, *cert = NULL;
	struct sign_key *rk = NULL;
	EVP_PKEY *subj = NULL;
	struct buf pem = BUF_INIT;
	time_t nb = time(NULL) - 60, na;
	char id[65] = "", cn[128], *issued = NULL, serial[80] = "";
	int rc = EXIT_FAIL;

	if (!o->root || !o->out || o->npos != 2)
		return usage_error("keys", "usage: keys certify PUB.pem|KEYSPEC --root DIR -o CERT.pem");
	if (load_root(o, &root, &rk) < 0) {
		fail("keys certify");
		goto out;
	}
	if (subject_key(o->pos[1], NULL, &subj) < 0 || pubkey_id(subj, id) < 0) {
		fail(o->pos[1]);
		goto out;
	}
	if (o->not_before && opt_time(o->not_before, &nb) < 0) {
		fail("--not-before");
		goto out;
	}
	na = nb + (time_t)(o->days > 0 ? o->days : 365) * 86400;
	if (o->not_after && opt_time(o->not_after, &na) < 0) {
		fail("--not-after");
		goto out;
	}
	snprintf(cn, sizeof(cn), "%s", o->cn ? o->cn : "");
	if (!o->cn)
		snprintf(cn, sizeof(cn), "otacd release signing %.16s", id);
	if (pki_certify(&pem, rk, root, subj, cn, nb, na) < 0 || pki_cert_load(&cert, pem.ptr, pem.len) < 0) {
		fail("keys certify");
		goto out;
	}
	{
		BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), NULL);
		char *hex = bn ? BN_bn2hex(bn) : NULL;
		snprintf(serial, sizeof(serial), "%s", hex ? hex : "0");
		OPENSSL_free(hex);
		BN_free(bn);
	}
	issued = xasprintf("%s/issued", o->root);
	if (ota_mkdir_p(issued, 0700) < 0) {
		fail(issued);
		goto out;
	}
	free(issued);
	issued = xasprintf("%s/issued/%s-%s.crt.pem", o->root, id, serial);
	if (ota_write_file_atomic(issued, pem.ptr, pem.len, 0644) < 0 ||
	    ota_write_file_atomic(o->out, pem.ptr, pem.len, 0644) < 0) {
		fail("keys certify");
		goto out;
	}
	{
		char until[32];
		struct tm tm;
		strftime(until, sizeof(until), "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&na, &tm));
		printf("certified key %s (serial %s) until %s: %s\n", id, serial, until, o->out);
	}
	rc = EXIT_OK;
out:
	X509_free(root);
	X509_free(cert);
	EVP_PKEY_free(subj);
	sign_key_free(rk);
	buf_release(&pem);
	free(issued);
	return rc;
}

static int revoke(const struct kopts *o)
{
	X509 *root = NULL, *certs[64];
	X509_CRL *prev = NULL;
	struct sign_key *rk = NULL;
	struct buf pem = BUF_INIT, old = BUF_INIT;
	char *dir = NULL, *crlpath = NULL;
	size_t n = 0, idlen = o->npos == 2 ? strlen(o->pos[1]) : 0;
	int64_t number = 0;
	int reason = pki_reason_code(o->reason), rc = EXIT_FAIL;
	DIR *d = NULL;
	struct dirent *e;

	if (!o->root || o->npos != 2 || !o->reason)
		return usage_error("keys", "usage: keys revoke KEYID --root DIR --reason R");
	if (reason < 0)
		return usage_error("keys", "--reason must be keyCompromise, superseded, cessationOfOperation,"
				   " affiliationChanged or unspecified");
	if (idlen < 16 || idlen > 64 || strspn(o->pos[1], "0123456789abcdef") != idlen)
		return usage_error("keys", "KEYID must be 16 to 64 lowercase hex digits of the key id");
	if (load_root(o, &root, &rk) < 0) {
		fail("keys revoke");
		goto out;
	}
	crlpath = xasprintf("%s/revocations.crl.pem", o->root);
	if (ota_read_file(&old, crlpath, PKI_CRL_MAX) == 0 && pki_crl_load(&prev, &number, old.ptr, old.len, root) < 0) {
		fail(crlpath);
		goto out;
	}
	dir = xasprintf("%s/issued", o->root);
	if ((d = opendir(dir)) != NULL) {
		while ((e = readdir(d)) != NULL && n < OTA_ARRAY_SIZE(certs)) {
			struct buf c = BUF_INIT;
			char *p;
			if (strncmp(e->d_name, o->pos[1], idlen) != 0)
				continue;
			p = xasprintf("%s/%s", dir, e->d_name);
			if (ota_read_file(&c, p, PKI_CERT_MAX) == 0 && pki_cert_load(&certs[n], c.ptr, c.len) == 0)
				n++;
			free(p);
			buf_release(&c);
		}
	}
	if (!n) {
		fprintf(stderr, "otactl: keys revoke: no certificate issued to key %s in %s\n", o->pos[1], dir);
		goto out;
	}
	if (pki_crl_issue(&pem, rk, root, prev, certs, n, reason) < 0) {
		fail("keys revoke");
		goto out;
	}
	if (ota_write_file_atomic(crlpath, pem.ptr, pem.len, 0644) < 0 ||
	    (o->out && ota_write_file_atomic(o->out, pem.ptr, pem.len, 0644) < 0)) {
		fail("keys revoke");
		goto out;
	}
	printf("revocation list %lld: %zu certificate(s) of key %s revoked (%s): %s\n", (long long)number + 1, n,
	       o->pos[1], pki_reason_name(reason), o->out ? o->out : crlpath);
	printf("publish it: otactl keys publish %s\n", o->out ? o->out : crlpath);
	rc = EXIT_OK;
out:
	if (d)
		closedir(d);
	for (size_t i = 0; i < n; i++)
		X509_free(certs[i]);
	X509_free(root);
	X509_CRL_free(prev);
	sign_key_free(rk);
	buf_release(&pem);
	buf_release(&old);
	free(dir);
	free(crlpath);
	return rc;
}

static int publish(const struct kopts *o)
{
	struct buf b = BUF_INIT;
	json_t *req, *ans = NULL;
	int rc;

	if (o->npos != 2)
		return usage_error("keys", "usage: keys publish CRL.pem");
	if (ota_read_file(&b, o->pos[1], PKI_CRL_MAX) < 0)
		return fail(o->pos[1]);
	req = json_pack("{s:s%}", "crl_pem", b.ptr, b.len);
	rc = api(&ans, "POST", "/api/v1/revocations", req, "publish the revocation list");
	if (rc == 0)
		printf("revocation list %lld published\n", (long long)json_integer_value(json_object_get(ans, "number")));
	json_decref(req);
	json_decref(ans);
	buf_release(&b);
	return rc;
}

int cmd_keys(int argc, char **argv)
{
	struct kopts o;
	int rc;

	if (argc >= 2 && !strcmp(argv[1], "root")) {
		if (argc < 4 || strcmp(argv[2], "init"))
			return usage_error("keys", "usage: keys root init DIR");
		if ((rc = parse(&o, argc - 1, argv + 1, "keys")) != 0)
			return rc;
		if (o.npos != 2)
			return usage_error("keys", "usage: keys root init DIR");
		return root_init(&o);
	}
	if ((rc = parse(&o, argc, argv, "keys")) != 0)
		return rc;
	if (o.npos < 1)
		return usage_error("keys", "usage: keys root init | certify | revoke | publish");
	if (!strcmp(o.pos[0], "certify"))
		return certify(&o);
	if (!strcmp(o.pos[0], "revoke"))
		return revoke(&o);
	if (!strcmp(o.pos[0], "publish"))
		return publish(&o);
	return usage_error("keys", "unknown subcommand '%s' (root init, certify, revoke, publish)", o.pos[0]);
}
