/*
 * fleet_ca.c - the device CA in memory: loading and creating it, CSRs,
 * issuing device certificates, fleet_ca_identify, revocations and
 * provisioning credentials (fleet_ca.h; the durable half is fleet_ca_db.c).
 *
 * Why: a device that authenticates with a client certificate (mutual TLS)
 * is named by the certificate, never by what it says in a body.  This file
 * is the one place that decides whether a certificate names a device: the
 * OpenSSL verifier against the CA (an X509_STORE with that one trust
 * anchor, so a self-signed or foreign-CA certificate has no path), then
 * our own rules on top (EKU clientAuth and keyUsage digitalSignature
 * present, not a CA, CN a device id, device not revoked since the
 * certificate's notBefore).
 *
 * How: the CA (certificate, key, store) sits behind a read-write lock, as
 * `otactl fleet ca init` may install one while devices are checked;
 * revocations are a JSON object {device: cutoff} and provisioners a small
 * array, both under one mutex; counters are atomics.  Time is real time
 * (time(2)): certificates live in the world's calendar, not otacd's scaled
 * clock.
 */
#include "fleet_ca.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "../../common/log.h"
#include "../../common/sha256.h"
#include "../../common/util.h"
#include "../auth.h"
#include "../clock.h"
#include "fleet_int.h"

/* Why a certificate was refused; the order of reason_text / reason_label. */
enum {
	RS_REVOKED,
	RS_EXPIRED,
	RS_NOT_YET_VALID,
	RS_FOREIGN_CA,
	RS_SELF_SIGNED,
	RS_WRONG_USAGE,
	RS_BAD_SIGNATURE,
	RS_BAD_ID,
	RS_MALFORMED,
	RS_NO_CA,
	RS_WRONG_DEVICE, /* a request naming another device (fleet_ca_count_wrong_device) */
	RS_N
};
static const char *const reason_text[RS_N] = {
	"revoked", "expired", "not yet valid", "foreign CA", "self-signed", "wrong key usage",
	"bad signature", "bad device id", "malformed", "no device CA", "another device's",
};
static const char *const reason_label[RS_N] = {
	"revoked", "expired", "not_yet_valid", "foreign_ca", "self_signed", "wrong_usage",
	"bad_signature", "bad_id", "malformed", "no_ca", "wrong_device",
};

/*
 * Verified certificates, by SHA-256 of their DER: a device that sends its
 * certificate with every request (or a TLS session resumed many times)
 * pays the parse and the chain's ECDSA verification once.  A slot holds
 * what the verification found; a hit is checked again against the clock
 * (notBefore, notAfter) and the revocations, and is only trusted for the
 * CA generation it was verified under.  Refusals are not kept.
 * bench/devca_bench.c measures both paths.
 */
#define VCACHE_SLOTS 16384

struct vslot {
	unsigned char sha[32];
	uint64_t gen;              /* the CA generation it was verified under; 0: empty */
	int64_t nb, na;
	char id[65];
	char product[129];
};

struct prov {
	char name[65];
	char hash[65];
	char *prefix;
	json_t *products;
	int64_t max, issued, rate;
	double tokens;
	int64_t at_ms;            /* the bucket's last refill (clock_mono_ms) */
	int64_t rate_audit_ms;    /* the last audited rate refusal */
};

struct fleet_ca {
	/* the CA: guarded by lock */
	pthread_rwlock_t lock;
	X509 *cert;
	EVP_PKEY *key;            /* NULL: verify only */
	X509_STORE *store;
	char *cert_pem;
	X509 **also;              /* device_ca.also_trust: verify only (a rollover) */
	size_t nalso;
	int configured;           /* the config names the CA: no init/import */
	char *state_dir;
	char *secret;             /* the device secret: seals the key in device_ca */
	int64_t validity_ms;
	pthread_mutex_t install_mu;
	_Atomic uint64_t gen;     /* moves on whenever the CA changes */

	/* verified certificates (vcache above) */
	pthread_mutex_t vc_mu;
	struct vslot *vc;

	/* revocations and provisioners: guarded by mu */
	pthread_mutex_t mu;
	json_t *revoked;          /* {device: cutoff seconds} */
	struct prov *provs;
	size_t nprovs;

	_Atomic int64_t accepted, refused[RS_N];
	_Atomic int64_t prov_issued, prov_refused;

	struct engine *engine;    /* fleet_ca_db.c */
};

/* fleet_ca_db.c reaches the engine through this */
struct engine *fleet_ca_engine(struct fleet_ca *ca);
struct engine *fleet_ca_engine(struct fleet_ca *ca)
{
	return ca->engine;
}
void fleet_ca_set_engine(struct fleet_ca *ca, struct engine *e);
void fleet_ca_set_engine(struct fleet_ca *ca, struct engine *e)
{
	ca->engine = e;
}

int fleet_auth_mode_parse(const char *s)
{
	if (!s)
		return -1;
	if (!strcmp(s, "token"))
		return FLEET_AUTH_TOKEN;
	if (!strcmp(s, "cert"))
		return FLEET_AUTH_CERT;
	if (!strcmp(s, "both"))
		return FLEET_AUTH_BOTH;
	return -1;
}

const char *fleet_auth_mode_name(int mode)
{
	return mode == FLEET_AUTH_CERT ? "cert" : mode == FLEET_AUTH_BOTH ? "both" : "token";
}

/* ---- small OpenSSL helpers ---------------------------------------------- */

static int64_t asn1_seconds(const ASN1_TIME *t)
{
	struct tm tm;
	if (!t || !ASN1_TIME_to_tm(t, &tm))
		return 0;
	return (int64_t)timegm(&tm);
}

static char *pem_of_cert(X509 *x)
{
	BIO *b = BIO_new(BIO_s_mem());
	char *data = NULL, *out = NULL;
	long n;
	if (b && PEM_write_bio_X509(b, x) && (n = BIO_get_mem_data(b, &data)) > 0) {
		out = xmalloc((size_t)n + 1);
		memcpy(out, data, (size_t)n);
		out[n] = 0;
	}
	BIO_free(b);
	return out;
}

static int add_ext(X509 *issuer, X509 *x, int nid, const char *value)
{
	X509V3_CTX v3;
	X509_EXTENSION *ext;
	int ok;
	X509V3_set_ctx(&v3, issuer, x, NULL, NULL, 0);
	if (!(ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value)))
		return ota_error_set(OTA_ERROR, "cannot make the X.509 extension %s", OBJ_nid2sn(nid));
	ok = X509_add_ext(x, ext, -1);
	X509_EXTENSION_free(ext);
	return ok ? 0 : ota_error_set(OTA_ERROR, "cannot add the X.509 extension %s", OBJ_nid2sn(nid));
}

/* A random positive 159-bit serial, also as 40 hex digits. */
static int set_serial(X509 *x, char hex[41])
{
	unsigned char rnd[20];
	BIGNUM *bn = NULL;
	int rc = 0;
	if (RAND_bytes(rnd, sizeof(rnd)) != 1)
		return ota_error_set(OTA_ERROR, "no random bytes for a serial");
	rnd[0] = (unsigned char)((rnd[0] & 0x7f) | 0x40);
	if (!(bn = BN_bin2bn(rnd, sizeof(rnd), NULL)) || !BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)))
		rc = ota_error_set(OTA_ERROR, "cannot set the serial");
	else if (hex)
		ota_hex(hex, rnd, sizeof(rnd));
	BN_free(bn);
	return rc;
}

static const EVP_MD *sign_md(EVP_PKEY *k)
{
	int id = EVP_PKEY_get_base_id(k);
	return id == EVP_PKEY_ED25519 || id == EVP_PKEY_ED448 ? NULL : EVP_sha256();
}

static X509 *cert_from_pem(const char *pem, size_t len)
{
	BIO *b = BIO_new_mem_buf(pem, (int)len);
	X509 *x = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
	BIO_free(b);
	return x;
}

static EVP_PKEY *key_from_pem(const char *pem, size_t len)
{
	BIO *b = BIO_new_mem_buf(pem, (int)len);
	EVP_PKEY *k = b ? PEM_read_bio_PrivateKey(b, NULL, NULL, (void *)"") : NULL;
	BIO_free(b);
	return k;
}

/* A usable CA certificate (and key, if any): 0 or OTA_EINVAL saying why. */
static int check_ca_pair(X509 *cert, EVP_PKEY *key, const char *what)
{
	time_t now = time(NULL);
	if (X509_check_ca(cert) < 1)
		return ota_error_set(OTA_EINVAL, "%s: not a CA certificate (basicConstraints CA:TRUE and keyCertSign needed)", what);
	if (X509_cmp_time(X509_get0_notAfter(cert), &now) <= 0)
		return ota_error_set(OTA_EINVAL, "%s: the CA certificate has expired", what);
	if (key && X509_check_private_key(cert, key) != 1)
		return ota_error_set(OTA_EINVAL, "%s: the key does not belong to the CA certificate", what);
	return 0;
}

/* The CA in force replaced by cert, key, st and pem (taken; all NULL: no
 * CA), under the write lock; the verified-certificate cache goes stale. */
static void ca_swap(struct fleet_ca *ca, X509 *cert, EVP_PKEY *key, X509_STORE *st, char *pem)
{
	pthread_rwlock_wrlock(&ca->lock);
	X509_free(ca->cert);
	EVP_PKEY_free(ca->key);
	X509_STORE_free(ca->store);
	free(ca->cert_pem);
	ca->cert = cert;
	ca->key = key;
	ca->store = st;
	ca->cert_pem = pem;
	atomic_fetch_add(&ca->gen, 1);
	pthread_rwlock_unlock(&ca->lock);
}

/* Install cert/key (taken) as the CA, under the write lock. */
static int ca_set(struct fleet_ca *ca, X509 *cert, EVP_PKEY *key)
{
	X509_STORE *st = X509_STORE_new();
	char *pem = pem_of_cert(cert);
	int ok = st && pem && X509_STORE_add_cert(st, cert) == 1;
	for (size_t i = 0; ok && i < ca->nalso; i++)
		ok = X509_STORE_add_cert(st, ca->also[i]) == 1;
	if (!ok) {
		X509_STORE_free(st);
		free(pem);
		X509_free(cert);
		EVP_PKEY_free(key);
		return ota_error_set(OTA_ERROR, "cannot build the device CA's trust store");
	}
	/* an external CA may be an intermediate: it is the anchor itself */
	X509_STORE_set_flags(st, X509_V_FLAG_PARTIAL_CHAIN);
	ca_swap(ca, cert, key, st, pem);
	return 0;
}

static int load_files(struct fleet_ca *ca, const char *cert_file, const char *key_file)
{
	struct buf b = BUF_INIT;
	X509 *cert = NULL;
	EVP_PKEY *key = NULL;
	int rc;

	if ((rc = ota_read_file(&b, cert_file, 1 << 20)) < 0)
		return ota_error_set(rc, "device CA: cannot read %s", cert_file);
	cert = cert_from_pem(b.ptr, b.len);
	buf_release(&b);
	if (!cert)
		return ota_error_set(OTA_EINVAL, "device CA: %s holds no PEM certificate", cert_file);
	if (key_file) {
		if ((rc = ota_read_file(&b, key_file, 1 << 20)) < 0) {
			X509_free(cert);
			return ota_error_set(rc, "device CA: cannot read %s", key_file);
		}
		key = key_from_pem(b.ptr, b.len);
		OPENSSL_cleanse(b.ptr, b.len);
		buf_release(&b);
		if (!key) {
			X509_free(cert);
			return ota_error_set(OTA_EINVAL, "device CA: %s holds no unencrypted PEM private key", key_file);
		}
	}
	if ((rc = check_ca_pair(cert, key, cert_file)) < 0) {
		X509_free(cert);
		EVP_PKEY_free(key);
		return rc;
	}
	return ca_set(ca, cert, key);
}

/* ---- open / close / info ------------------------------------------------ */

int fleet_ca_open(struct fleet_ca **out, const struct fleet_ca_config *cfg)
{
	struct fleet_ca *ca = xcalloc(1, sizeof(*ca));
	int rc = 0;

	*out = NULL;
	pthread_rwlock_init(&ca->lock, NULL);
	pthread_mutex_init(&ca->mu, NULL);
	pthread_mutex_init(&ca->install_mu, NULL);
	pthread_mutex_init(&ca->vc_mu, NULL);
	ca->vc = xcalloc(VCACHE_SLOTS, sizeof(*ca->vc));
	atomic_store(&ca->gen, 1);
	ca->revoked = json_object();
	ca->state_dir = cfg->state_dir ? xstrdup(cfg->state_dir) : NULL;
	ca->validity_ms = cfg->cert_validity_ms > 0 ? cfg->cert_validity_ms : FLEET_CA_DEFAULT_CERT_MS;
	for (size_t i = 0; rc == 0 && i < cfg->nalso_trust; i++) {
		struct buf b = BUF_INIT;
		X509 *x = NULL;
		if ((rc = ota_read_file(&b, cfg->also_trust[i], 1 << 20)) < 0)
			rc = ota_error_set(rc, "device_ca.also_trust: cannot read %s", cfg->also_trust[i]);
		else if (!(x = cert_from_pem(b.ptr, b.len)))
			rc = ota_error_set(OTA_EINVAL, "device_ca.also_trust: %s holds no PEM certificate", cfg->also_trust[i]);
		else if ((rc = check_ca_pair(x, NULL, cfg->also_trust[i])) == 0) {
			ca->also = xrealloc(ca->also, (ca->nalso + 1) * sizeof(*ca->also));
			ca->also[ca->nalso++] = x;
			x = NULL;
		}
		X509_free(x);
		buf_release(&b);
	}
	if (rc < 0) {
	} else if (cfg->cert_file) {
		ca->configured = 1;
		rc = load_files(ca, cfg->cert_file, cfg->key_file);
	} else if (ca->state_dir) {
		char *c = xasprintf("%s/devca/ca.pem", ca->state_dir), *k = xasprintf("%s/devca/ca.key", ca->state_dir);
		if (access(c, F_OK) == 0)
			rc = load_files(ca, c, access(k, F_OK) == 0 ? k : NULL);
		free(c);
		free(k);
	}
	if (rc < 0) {
		fleet_ca_close(ca);
		return rc;
	}
	*out = ca;
	return 0;
}

void fleet_ca_close(struct fleet_ca *ca)
{
	if (!ca)
		return;
	X509_free(ca->cert);
	EVP_PKEY_free(ca->key);
	X509_STORE_free(ca->store);
	free(ca->cert_pem);
	for (size_t i = 0; i < ca->nalso; i++)
		X509_free(ca->also[i]);
	free(ca->also);
	free(ca->state_dir);
	if (ca->secret) {
		OPENSSL_cleanse(ca->secret, strlen(ca->secret));
		free(ca->secret);
	}
	json_decref(ca->revoked);
	for (size_t i = 0; i < ca->nprovs; i++) {
		free(ca->provs[i].prefix);
		json_decref(ca->provs[i].products);
	}
	free(ca->provs);
	pthread_rwlock_destroy(&ca->lock);
	pthread_mutex_destroy(&ca->mu);
	pthread_mutex_destroy(&ca->install_mu);
	pthread_mutex_destroy(&ca->vc_mu);
	free(ca->vc);
	free(ca);
}

int fleet_ca_state(struct fleet_ca *ca)
{
	int s;
	if (!ca)
		return 0;
	pthread_rwlock_rdlock(&ca->lock);
	s = !ca->cert ? 0 : ca->key ? 2 : 1;
	pthread_rwlock_unlock(&ca->lock);
	return s;
}

json_t *fleet_ca_info(struct fleet_ca *ca)
{
	json_t *o = json_object();
	pthread_rwlock_rdlock(&ca->lock);
	json_object_set_new(o, "configured", json_boolean(ca->cert != NULL));
	json_object_set_new(o, "can_issue", json_boolean(ca->key != NULL));
	json_object_set_new(o, "external", json_boolean(ca->cert && !ca->key));
	json_object_set_new(o, "from_config", json_boolean(ca->configured));
	if (ca->cert) {
		char *subj = X509_NAME_oneline(X509_get_subject_name(ca->cert), NULL, 0);
		unsigned char md[EVP_MAX_MD_SIZE];
		unsigned int mdlen = 0;
		char hex[2 * EVP_MAX_MD_SIZE + 1];
		X509_digest(ca->cert, EVP_sha256(), md, &mdlen);
		ota_hex(hex, md, mdlen);
		json_object_set_new(o, "subject", json_string(subj ? subj : ""));
		json_object_set_new(o, "not_after", json_integer(asn1_seconds(X509_get0_notAfter(ca->cert))));
		json_object_set_new(o, "sha256", json_string(hex));
		json_object_set_new(o, "certificate", json_string(ca->cert_pem));
		OPENSSL_free(subj);
	}
	if (ca->nalso) {
		json_t *a = json_array();
		for (size_t i = 0; i < ca->nalso; i++) {
			char *subj = X509_NAME_oneline(X509_get_subject_name(ca->also[i]), NULL, 0);
			unsigned char md[EVP_MAX_MD_SIZE];
			unsigned int mdlen = 0;
			char hex[2 * EVP_MAX_MD_SIZE + 1];
			X509_digest(ca->also[i], EVP_sha256(), md, &mdlen);
			ota_hex(hex, md, mdlen);
			json_array_append_new(a, json_pack("{ss ss sI}", "subject", subj ? subj : "", "sha256", hex, "not_after",
							   (json_int_t)asn1_seconds(X509_get0_notAfter(ca->also[i]))));
			OPENSSL_free(subj);
		}
		json_object_set_new(o, "also_trusted", a);
	}
	pthread_rwlock_unlock(&ca->lock);
	return o;
}

/* ---- creating and importing a CA ---------------------------------------- */

static int write_pair(const char *dir, X509 *cert, EVP_PKEY *key)
{
	char *cpath = xasprintf("%s/ca.pem", dir), *kpath = xasprintf("%s/ca.key", dir);
	char *cpem = pem_of_cert(cert), *kdata = NULL;
	BIO *b = BIO_new(BIO_s_mem());
	long n = 0;
	int rc = 0;

	/* ca.pem decides: a ca.key alone is what a crash between the two
	 * writes below leaves, and is replaced */
	if (access(cpath, F_OK) == 0) {
		rc = ota_error_set(OTA_ECONFLICT, "a device CA exists already in %s (ca.pem)", dir);
		goto out;
	}
	if (!cpem || !b || !PEM_write_bio_PrivateKey(b, key, NULL, NULL, 0, NULL, NULL) ||
	    (n = BIO_get_mem_data(b, &kdata)) <= 0) {
		rc = ota_error_set(OTA_ERROR, "cannot encode the device CA");
		goto out;
	}
	if ((rc = ota_mkdir_p(dir, 0700)) < 0)
		goto out;
	/* the key first: a CA certificate without its key would be an
	 * external CA on the next start */
	if ((rc = ota_write_file_atomic(kpath, kdata, (size_t)n, 0600)) < 0 ||
	    (rc = ota_write_file_atomic(cpath, cpem, strlen(cpem), 0644)) < 0)
		goto out;
out:
	if (kdata && n > 0)
		OPENSSL_cleanse(kdata, (size_t)n);
	BIO_free(b);
	free(cpem);
	free(cpath);
	free(kpath);
	return rc;
}

/* A new EC P-256 CA key and its self-signed certificate. */
static int make_ca(const char *cn, int days, X509 **cert_out, EVP_PKEY **key_out)
{
	EVP_PKEY *key = EVP_EC_gen("P-256");
	X509 *x = X509_new();
	X509_NAME *name = X509_NAME_new();
	int rc = 0;

	*cert_out = NULL;
	*key_out = NULL;
	if (!cn || !*cn)
		cn = "otacd device CA";
	if (days <= 0 || days > 36500) {
		rc = ota_error_set(OTA_EINVAL, "days must be 1..36500");
		goto out;
	}
	if (strlen(cn) > 64) {
		rc = ota_error_set(OTA_EINVAL, "the CA's name must be at most 64 characters");
		goto out;
	}
	if (!key || !x || !name || !X509_set_version(x, 2) || (rc = set_serial(x, NULL)) < 0 ||
	    !X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8, (const unsigned char *)"otacd", -1, -1, 0) ||
	    !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1, 0) ||
	    !X509_set_subject_name(x, name) || !X509_set_issuer_name(x, name) ||
	    !X509_gmtime_adj(X509_getm_notBefore(x), 0) ||
	    !X509_gmtime_adj(X509_getm_notAfter(x), (long)days * 86400) || !X509_set_pubkey(x, key)) {
		rc = rc < 0 ? rc : ota_error_set(OTA_ERROR, "cannot make the CA certificate");
		goto out;
	}
	if ((rc = add_ext(x, x, NID_basic_constraints, "critical,CA:TRUE,pathlen:0")) < 0 ||
	    (rc = add_ext(x, x, NID_key_usage, "critical,keyCertSign,cRLSign")) < 0 ||
	    (rc = add_ext(x, x, NID_subject_key_identifier, "hash")) < 0)
		goto out;
	if (!X509_sign(x, key, EVP_sha256())) {
		rc = ota_error_set(OTA_ERROR, "cannot sign the CA certificate");
		goto out;
	}
	*cert_out = x;
	*key_out = key;
	x = NULL;
	key = NULL;
out:
	X509_NAME_free(name);
	X509_free(x);
	EVP_PKEY_free(key);
	return rc;
}

int fleet_ca_create_files(const char *dir, const char *cn, int days)
{
	X509 *cert = NULL;
	EVP_PKEY *key = NULL;
	int rc = make_ca(cn, days, &cert, &key);
	if (rc == 0)
		rc = write_pair(dir, cert, key);
	X509_free(cert);
	EVP_PKEY_free(key);
	return rc;
}

static int parse_pair(const char *cert_pem, size_t cert_len, const char *key_pem, size_t key_len, X509 **cert,
		      EVP_PKEY **key)
{
	int rc;
	*cert = cert_from_pem(cert_pem, cert_len);
	*key = key_from_pem(key_pem, key_len);
	if (!*cert)
		rc = ota_error_set(OTA_EINVAL, "the CA certificate is not a PEM certificate");
	else if (!*key)
		rc = ota_error_set(OTA_EINVAL, "the CA key is not an unencrypted PEM private key");
	else
		rc = check_ca_pair(*cert, *key, "import");
	if (rc < 0) {
		X509_free(*cert);
		EVP_PKEY_free(*key);
		*cert = NULL;
		*key = NULL;
	}
	return rc;
}

int fleet_ca_import_files(const char *dir, const char *cert_pem, size_t cert_len, const char *key_pem,
			  size_t key_len)
{
	X509 *cert;
	EVP_PKEY *key;
	int rc = parse_pair(cert_pem, cert_len, key_pem, key_len, &cert, &key);
	if (rc == 0)
		rc = write_pair(dir, cert, key);
	X509_free(cert);
	EVP_PKEY_free(key);
	return rc;
}

/* cert and key as device_ca's columns, the key sealed (fleet_ca_seal.c). */
static int row_of(const char *secret, X509 *cert, EVP_PKEY *key, char **cert_pem, char **sealed)
{
	BIO *b = NULL;
	char *kdata = NULL;
	long n = 0;

	*sealed = NULL;
	if (!(*cert_pem = pem_of_cert(cert)))
		return ota_error_set(OTA_ERROR, "cannot encode the device CA");
	if (!key)
		return 0;
	if (!(b = BIO_new(BIO_s_mem())) || !PEM_write_bio_PrivateKey(b, key, NULL, NULL, 0, NULL, NULL) ||
	    (n = BIO_get_mem_data(b, &kdata)) <= 0)
		ota_error_set(OTA_ERROR, "cannot encode the device CA's key");
	else
		*sealed = fleet_ca_seal(secret, *cert_pem, (const unsigned char *)kdata, (size_t)n);
	if (kdata && n > 0)
		OPENSSL_cleanse(kdata, (size_t)n);
	BIO_free(b);
	if (!*sealed) {
		free(*cert_pem);
		*cert_pem = NULL;
		return OTA_ERROR;
	}
	return 0;
}

/* fleet_ca_db.c's side: the secret, the CA from and into device_ca */
void fleet_ca_set_secret(struct fleet_ca *ca, const char *secret);
void fleet_ca_set_secret(struct fleet_ca *ca, const char *secret)
{
	if (secret && !ca->secret)
		ca->secret = xstrdup(secret);
}

const char *fleet_ca_secret(struct fleet_ca *ca);
const char *fleet_ca_secret(struct fleet_ca *ca)
{
	return ca->configured ? NULL : ca->secret;
}

/* The CA loaded now (from STATE/devca) as a device_ca row: 1, or 0 when
 * there is none to copy (none, or the config's). */
int fleet_ca_row(struct fleet_ca *ca, char **cert_pem, char **sealed);
int fleet_ca_row(struct fleet_ca *ca, char **cert_pem, char **sealed)
{
	int rc = 0;
	*cert_pem = *sealed = NULL;
	pthread_rwlock_rdlock(&ca->lock);
	if (ca->cert && !ca->configured && ca->secret)
		rc = row_of(ca->secret, ca->cert, ca->key, cert_pem, sealed) < 0 ? OTA_ERROR : 1;
	pthread_rwlock_unlock(&ca->lock);
	return rc;
}

/* Load device_ca's row as the CA: all of it or nothing. */
int fleet_ca_load_row(struct fleet_ca *ca, const char *cert_pem, const char *sealed);
int fleet_ca_load_row(struct fleet_ca *ca, const char *cert_pem, const char *sealed)
{
	X509 *cert = cert_from_pem(cert_pem, strlen(cert_pem));
	EVP_PKEY *key = NULL;
	unsigned char *kpem = NULL;
	size_t kn = 0;
	int rc = 0;

	if (!cert)
		rc = ota_error_set(OTA_EINVAL, "device CA: the certificate in the database (device_ca) is not PEM");
	else if (sealed && (rc = fleet_ca_unseal(ca->secret, cert_pem, sealed, &kpem, &kn)) < 0)
		;
	else if (sealed && !(key = key_from_pem((const char *)kpem, kn)))
		rc = ota_error_set(OTA_EINVAL, "device CA: the key in the database (device_ca) is not a PEM private key");
	else
		rc = check_ca_pair(cert, key, "device CA in the database (device_ca)");
	if (kpem) {
		OPENSSL_cleanse(kpem, kn);
		free(kpem);
	}
	if (rc < 0) {
		X509_free(cert);
		EVP_PKEY_free(key);
		return rc;
	}
	return ca_set(ca, cert, key);
}

/* fleet_ca_db.c: store the row in one transaction (OTA_ECONFLICT: one is there) */
int fleet_ca_db_install(struct fleet_ca *ca, const char *cert_pem, const char *sealed);

int fleet_ca_install(struct fleet_ca *ca, const char *cn, int days, const char *cert_pem, const char *key_pem)
{
	X509 *cert = NULL;
	EVP_PKEY *key = NULL;
	char *dir = NULL, *row_cert = NULL, *row_key = NULL;
	int rc;

	if (ca->configured)
		return ota_error_set(OTA_ECONFLICT, "the configuration names the device CA (device_ca:); change it there");
	if (!ca->state_dir && !(ca->engine && ca->secret))
		return ota_error_set(OTA_ERROR, "no state directory for the device CA");
	pthread_mutex_lock(&ca->install_mu);
	if (fleet_ca_state(ca)) {
		rc = ota_error_set(OTA_ECONFLICT, "otacd has a device CA already");
		goto out;
	}
	rc = cert_pem ? parse_pair(cert_pem, strlen(cert_pem), key_pem ? key_pem : "", key_pem ? strlen(key_pem) : 0, &cert,
				   &key)
		      : make_ca(cn, days, &cert, &key);
	if (rc < 0)
		goto out;
	/* issue 16: attached to the database, the CA lives there, committed
	 * first (the next leader loads it from there); STATE/devca keeps a
	 * copy, which tls.client_ca may name */
	if (ca->engine && ca->secret) {
		if ((rc = row_of(ca->secret, cert, key, &row_cert, &row_key)) < 0 ||
		    (rc = fleet_ca_db_install(ca, row_cert, row_key)) < 0)
			goto out;
	}
	if (ca->state_dir) {
		dir = xasprintf("%s/devca", ca->state_dir);
		if ((rc = write_pair(dir, cert, key)) < 0 && row_cert) {
			ota_log(OTA_LOG_WARN, "device CA: installed in the database, but no copy in %s: %s", dir,
				ota_error_last());
			rc = 0;
		}
		if (rc < 0)
			goto out;
	}
	rc = ca_set(ca, cert, key);
	cert = NULL;
	key = NULL;
out:
	pthread_mutex_unlock(&ca->install_mu);
	X509_free(cert);
	EVP_PKEY_free(key);
	free(dir);
	free(row_cert);
	free(row_key);
	return rc;
}

/* ---- removing the CA (a stolen key) ---------------------------------------- */

int fleet_ca_pem_sha256(const char *pem, char out[65])
{
	X509 *x = pem ? cert_from_pem(pem, strlen(pem)) : NULL;
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;

	out[0] = 0;
	if (!x)
		return ota_error_set(OTA_EINVAL, "not a PEM certificate");
	if (!X509_digest(x, EVP_sha256(), md, &mdlen) || mdlen != 32) {
		X509_free(x);
		return ota_error_set(OTA_ERROR, "cannot hash the certificate");
	}
	ota_hex(out, md, mdlen);
	X509_free(x);
	return 0;
}

/* STATE/devca renamed to STATE/devca.removed-SECONDS[-N]: kept for the
 * record, never loaded again. */
static void move_aside(struct fleet_ca *ca)
{
	char *dir, *to = NULL;
	long long now = (long long)time(NULL);

	if (!ca->state_dir)
		return;
	dir = xasprintf("%s/devca", ca->state_dir);
	for (int i = 0; access(dir, F_OK) == 0 && i < 100; i++) {
		free(to);
		to = i ? xasprintf("%s.removed-%lld-%d", dir, now, i) : xasprintf("%s.removed-%lld", dir, now);
		if (access(to, F_OK) == 0)
			continue;
		if (rename(dir, to) == 0)
			ota_log(OTA_LOG_WARN, "device CA: %s moved to %s (the CA was removed)", dir, to);
		else
			ota_log(OTA_LOG_ERROR, "device CA: cannot move %s aside: %s", dir, strerror(errno));
		break;
	}
	free(to);
	free(dir);
}

/* Forget the CA (not also_trust, the configuration's): identify answers
 * "no device CA" from now on, the verified-certificate cache is stale. */
static void ca_drop(struct fleet_ca *ca)
{
	ca_swap(ca, NULL, NULL, NULL, NULL);
}

/* fleet_ca_db.c: the row deleted and the CA marked removed, audited, in one
 * transaction */
int fleet_ca_db_remove(struct fleet_ca *ca, const char *sha, const char *subject, const char *reason,
		       const char *actor);

int fleet_ca_remove(struct fleet_ca *ca, const char *reason, const char *actor, json_t **answer)
{
	json_t *info = NULL;
	int rc;

	*answer = NULL;
	if (ca->configured)
		return ota_error_set(OTA_ECONFLICT, "the configuration names the device CA (device_ca:); otacd cannot"
						    " remove it: delete device_ca: (and its files) from every instance's"
						    " configuration and restart each");
	if (!reason || !*reason || strlen(reason) > 512)
		return ota_error_set(OTA_EINVAL, "reason: 1..512 characters (why the CA goes, for the audit)");
	if (!ca->engine)
		return ota_error_set(OTA_ERROR, "the device CA has no database");
	pthread_mutex_lock(&ca->install_mu);
	if (!fleet_ca_state(ca)) {
		rc = ota_error_set(OTA_ENOTFOUND, "there is no device CA to remove");
		goto out;
	}
	info = fleet_ca_info(ca);
	if ((rc = fleet_ca_db_remove(ca, json_string_value(json_object_get(info, "sha256")),
				     json_string_value(json_object_get(info, "subject")), reason, actor)) < 0)
		goto out;
	ca_drop(ca);
	move_aside(ca);
	ota_log(OTA_LOG_WARN, "device CA %s removed by %s: %s", json_string_value(json_object_get(info, "sha256")),
		actor, reason);
	*answer = json_pack("{sb sO sO}", "removed", 1, "sha256", json_object_get(info, "sha256"), "subject",
			    json_object_get(info, "subject"));
out:
	pthread_mutex_unlock(&ca->install_mu);
	json_decref(info);
	return rc;
}

int fleet_ca_sync(struct fleet_ca *ca, struct store *db)
{
	char sha[65] = "";
	int rc = 0;

	if (!ca || ca->configured)
		return 0;
	pthread_mutex_lock(&ca->install_mu);
	pthread_rwlock_rdlock(&ca->lock);
	if (ca->cert_pem)
		rc = fleet_ca_pem_sha256(ca->cert_pem, sha);
	pthread_rwlock_unlock(&ca->lock);
	if (rc == 0 && sha[0] && (rc = fleet_ca_store_ca_removed(db, sha)) == 1) {
		ca_drop(ca);
		move_aside(ca);
		ota_log(OTA_LOG_WARN, "device CA %s was removed (otactl fleet ca remove): no longer trusted here", sha);
	}
	pthread_mutex_unlock(&ca->install_mu);
	return rc < 0 ? rc : 0;
}

/* ---- CSRs and issuing ----------------------------------------------------- */

static int key_acceptable(EVP_PKEY *k)
{
	int id = EVP_PKEY_get_base_id(k);
	if (id == EVP_PKEY_ED25519)
		return 1;
	if (id == EVP_PKEY_RSA)
		return EVP_PKEY_get_bits(k) >= 2048 && EVP_PKEY_get_bits(k) <= 8192;
	if (id == EVP_PKEY_EC) {
		char group[64];
		size_t n = 0;
		if (!EVP_PKEY_get_utf8_string_param(k, "group", group, sizeof(group), &n))
			return 0;
		return !strcmp(group, "prime256v1") || !strcmp(group, "secp384r1");
	}
	return 0;
}

/* The one CN of name in out: 1, 0 when there is none, -1 when it is not
 * one printable string. */
static int name_cn(X509_NAME *name, char *out, size_t n)
{
	int i = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
	unsigned char *utf = NULL;
	int len;
	if (i < 0)
		return 0;
	if (X509_NAME_get_index_by_NID(name, NID_commonName, i) >= 0)
		return -1; /* two CNs: which one would be the device? */
	len = ASN1_STRING_to_UTF8(&utf, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, i)));
	if (len <= 0 || (size_t)len >= n || memchr(utf, 0, (size_t)len)) {
		OPENSSL_free(utf);
		return -1;
	}
	memcpy(out, utf, (size_t)len);
	out[len] = 0;
	OPENSSL_free(utf);
	return 1;
}

int fleet_ca_csr_parse(void **out, const char *pem, size_t len, const char *want_cn)
{
	X509_REQ *req = NULL;
	EVP_PKEY *pk;
	BIO *b;
	char cn[128];
	int rc = 0, has;

	*out = NULL;
	if (!pem || len == 0)
		return ota_error_set(OTA_EINVAL, "csr: missing");
	if (len > FLEET_CA_CSR_MAX)
		return ota_error_set(OTA_EINVAL, "csr: larger than %d bytes", FLEET_CA_CSR_MAX);
	if (!(b = BIO_new_mem_buf(pem, (int)len)))
		return ota_error_set(OTA_ENOMEM, "csr: out of memory");
	req = PEM_read_bio_X509_REQ(b, NULL, NULL, NULL);
	BIO_free(b);
	if (!req)
		return ota_error_set(OTA_EINVAL, "csr: not a PEM certificate request (BEGIN CERTIFICATE REQUEST)");
	if (!(pk = X509_REQ_get0_pubkey(req))) {
		rc = ota_error_set(OTA_EINVAL, "csr: no usable public key");
		goto out;
	}
	if (!key_acceptable(pk)) {
		rc = ota_error_set(OTA_EINVAL, "csr: the key must be EC P-256 or P-384, Ed25519, or RSA of 2048-8192 bits");
		goto out;
	}
	if (X509_REQ_verify(req, pk) != 1) {
		rc = ota_error_set(OTA_EINVAL, "csr: its self-signature does not verify (the requester must hold the key)");
		goto out;
	}
	has = name_cn(X509_REQ_get_subject_name(req), cn, sizeof(cn));
	if (has < 0 || (has && want_cn && strcmp(cn, want_cn))) {
		rc = ota_error_set(OTA_EINVAL, "csr: its subject CN must be the device id '%s' (or absent)",
				   want_cn ? want_cn : "");
		goto out;
	}
	*out = req;
	req = NULL;
out:
	ERR_clear_error();
	X509_REQ_free(req);
	return rc;
}

void fleet_ca_csr_free(void *req)
{
	X509_REQ_free(req);
}

int fleet_ca_issue(struct fleet_ca *ca, void *csr, const char *device, const char *product, char **pem_out,
		   char serial_hex[41], int64_t *not_before, int64_t *not_after)
{
	X509_REQ *req = csr;
	X509 *x = NULL;
	X509_NAME *name = NULL;
	int64_t now = (int64_t)time(NULL), nb, na, ca_na, cutoff;
	int rc = 0;

	*pem_out = NULL;
	if (!fleet_device_id_valid(device))
		return ota_error_set(OTA_EINVAL, "device: must be 1..64 characters [A-Za-z0-9._:-]");
	if (product && !fleet_name_valid(product))
		return ota_error_set(OTA_EINVAL, "product: not a valid product name");
	cutoff = fleet_ca_revoked_at(ca, device);
	nb = now > cutoff ? now : cutoff + 1;
	pthread_rwlock_rdlock(&ca->lock);
	if (!ca->cert || !ca->key) {
		rc = ota_error_set(OTA_ECONFLICT, ca->cert ? "the device CA is external: otacd holds no key to issue with"
							   : "no device CA (otactl fleet ca init)");
		goto out;
	}
	ca_na = asn1_seconds(X509_get0_notAfter(ca->cert));
	na = nb + ca->validity_ms / 1000;
	if (na > ca_na)
		na = ca_na;
	if (na <= nb) {
		rc = ota_error_set(OTA_ECONFLICT, "the device CA expires before the certificate would start");
		goto out;
	}
	x = X509_new();
	name = X509_NAME_new();
	if (!x || !name || !X509_set_version(x, 2) || (rc = set_serial(x, serial_hex)) < 0 ||
	    (product && !X509_NAME_add_entry_by_txt(name, "OU", MBSTRING_UTF8, (const unsigned char *)product, -1, -1, 0)) ||
	    !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)device, -1, -1, 0) ||
	    !X509_set_subject_name(x, name) || !X509_set_issuer_name(x, X509_get_subject_name(ca->cert)) ||
	    !ASN1_TIME_set(X509_getm_notBefore(x), (time_t)nb) || !ASN1_TIME_set(X509_getm_notAfter(x), (time_t)na) ||
	    !X509_set_pubkey(x, X509_REQ_get0_pubkey(req))) {
		rc = rc < 0 ? rc : ota_error_set(OTA_ERROR, "cannot build the device certificate");
		goto out;
	}
	if ((rc = add_ext(ca->cert, x, NID_basic_constraints, "critical,CA:FALSE")) < 0 ||
	    (rc = add_ext(ca->cert, x, NID_key_usage, "critical,digitalSignature")) < 0 ||
	    (rc = add_ext(ca->cert, x, NID_ext_key_usage, "clientAuth")) < 0 ||
	    (rc = add_ext(ca->cert, x, NID_subject_key_identifier, "hash")) < 0 ||
	    /* an imported CA may have no key identifier to point at */
	    (X509_get0_subject_key_id(ca->cert) &&
	     (rc = add_ext(ca->cert, x, NID_authority_key_identifier, "keyid:always")) < 0))
		goto out;
	if (!X509_sign(x, ca->key, sign_md(ca->key))) {
		rc = ota_error_set(OTA_ERROR, "cannot sign the device certificate");
		goto out;
	}
	if (!(*pem_out = pem_of_cert(x))) {
		rc = ota_error_set(OTA_ERROR, "cannot encode the device certificate");
		goto out;
	}
	*not_before = nb;
	*not_after = na;
out:
	pthread_rwlock_unlock(&ca->lock);
	ERR_clear_error();
	X509_NAME_free(name);
	X509_free(x);
	return rc;
}

/* ---- identity -------------------------------------------------------------- */

int fleet_ca_pem_to_der(const char *pem, size_t len, unsigned char **der, size_t *der_len)
{
	X509 *x = cert_from_pem(pem, len);
	unsigned char *p = NULL;
	int n;
	*der = NULL;
	*der_len = 0;
	if (!x)
		return ota_error_set(OTA_EINVAL, "not a PEM certificate");
	n = i2d_X509(x, &p);
	X509_free(x);
	if (n <= 0)
		return ota_error_set(OTA_EINVAL, "cannot encode the certificate");
	*der = xmalloc((size_t)n);
	memcpy(*der, p, (size_t)n);
	*der_len = (size_t)n;
	OPENSSL_free(p);
	return 0;
}

static int verify_reason(int err)
{
	switch (err) {
	case X509_V_ERR_CERT_HAS_EXPIRED: return RS_EXPIRED;
	case X509_V_ERR_CERT_NOT_YET_VALID: return RS_NOT_YET_VALID;
	case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
	case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN: return RS_SELF_SIGNED;
	case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
	case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
	case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
	case X509_V_ERR_CERT_UNTRUSTED: return RS_FOREIGN_CA;
	case X509_V_ERR_CERT_SIGNATURE_FAILURE:
	case X509_V_ERR_UNABLE_TO_DECRYPT_CERT_SIGNATURE: return RS_BAD_SIGNATURE;
	case X509_V_ERR_INVALID_PURPOSE:
	case X509_V_ERR_KEYUSAGE_NO_DIGITAL_SIGNATURE: return RS_WRONG_USAGE;
	default: return RS_MALFORMED;
	}
}

/* Is x one of the trusted CA certificates themselves?  (lock held) */
static int is_anchor(const struct fleet_ca *ca, X509 *x)
{
	if (X509_cmp(x, ca->cert) == 0)
		return 1;
	for (size_t i = 0; i < ca->nalso; i++)
		if (X509_cmp(x, ca->also[i]) == 0)
			return 1;
	return 0;
}

static int identify(struct fleet_ca *ca, X509 *x, char *id_out, size_t idlen, char *product_out, size_t plen)
{
	X509_STORE_CTX *ctx = NULL;
	uint32_t xku, ku, flags;
	char cn[128];
	int64_t cutoff;
	int reason = -1;

	pthread_rwlock_rdlock(&ca->lock);
	if (!ca->cert) {
		pthread_rwlock_unlock(&ca->lock);
		return RS_NO_CA;
	}
	/* self-signed: its own issuer, whatever the store holds */
	if (X509_check_issued(x, x) == X509_V_OK && !is_anchor(ca, x))
		reason = RS_SELF_SIGNED;
	else if (!(ctx = X509_STORE_CTX_new()) || X509_STORE_CTX_init(ctx, ca->store, x, NULL) != 1)
		reason = RS_MALFORMED;
	else if (X509_verify_cert(ctx) != 1)
		reason = verify_reason(X509_STORE_CTX_get_error(ctx));
	pthread_rwlock_unlock(&ca->lock);
	X509_STORE_CTX_free(ctx);
	if (reason >= 0)
		return reason;
	/* our rules on top of the chain: a client certificate for signing, not a CA */
	flags = X509_get_extension_flags(x);
	xku = X509_get_extended_key_usage(x);
	ku = X509_get_key_usage(x);
	if ((flags & EXFLAG_INVALID) || X509_check_ca(x) != 0)
		return RS_WRONG_USAGE;
	if (!(flags & EXFLAG_XKUSAGE) || !(xku & XKU_SSL_CLIENT) || !(flags & EXFLAG_KUSAGE) ||
	    !(ku & KU_DIGITAL_SIGNATURE))
		return RS_WRONG_USAGE;
	if (name_cn(X509_get_subject_name(x), cn, sizeof(cn)) != 1 || !fleet_device_id_valid(cn) || strlen(cn) >= idlen)
		return RS_BAD_ID;
	/* revoked: every certificate of the device that started by the cutoff */
	cutoff = fleet_ca_revoked_at(ca, cn);
	if (cutoff && asn1_seconds(X509_get0_notBefore(x)) <= cutoff)
		return RS_REVOKED;
	memcpy(id_out, cn, strlen(cn) + 1);
	if (product_out && plen) {
		X509_NAME *n = X509_get_subject_name(x);
		int i = X509_NAME_get_index_by_NID(n, NID_organizationalUnitName, -1);
		unsigned char *utf = NULL;
		int len = i >= 0 ? ASN1_STRING_to_UTF8(&utf, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(n, i))) : 0;
		product_out[0] = 0;
		if (len > 0 && (size_t)len < plen && !memchr(utf, 0, (size_t)len)) {
			memcpy(product_out, utf, (size_t)len);
			product_out[len] = 0;
		}
		OPENSSL_free(utf);
	}
	return -1;
}

static struct vslot *vslot_of(struct fleet_ca *ca, const unsigned char sha[32])
{
	uint64_t h;
	memcpy(&h, sha, sizeof(h));
	return &ca->vc[h % VCACHE_SLOTS];
}

/* A verified certificate seen before: RS_* or -1 (accepted, id and product
 * copied), or -2: not in the cache (or no longer valid there: verify). */
static int vcache_lookup(struct fleet_ca *ca, const unsigned char sha[32], uint64_t gen, char *id_out, size_t idlen,
			 char *product_out, size_t plen)
{
	struct vslot *v = vslot_of(ca, sha), e;
	int64_t now = (int64_t)time(NULL), cutoff;

	pthread_mutex_lock(&ca->vc_mu);
	e = *v;
	pthread_mutex_unlock(&ca->vc_mu);
	if (e.gen != gen || memcmp(e.sha, sha, sizeof(e.sha)) || now < e.nb || now > e.na || strlen(e.id) >= idlen)
		return -2;
	cutoff = fleet_ca_revoked_at(ca, e.id);
	if (cutoff && e.nb <= cutoff)
		return RS_REVOKED;
	memcpy(id_out, e.id, strlen(e.id) + 1);
	if (product_out && plen && strlen(e.product) < plen)
		memcpy(product_out, e.product, strlen(e.product) + 1);
	return -1;
}

static void vcache_store(struct fleet_ca *ca, const unsigned char sha[32], uint64_t gen, X509 *x, const char *id,
			 const char *product)
{
	struct vslot *v = vslot_of(ca, sha), e;
	memset(&e, 0, sizeof(e));
	if (strlen(id) >= sizeof(e.id) || (product && strlen(product) >= sizeof(e.product)))
		return;
	memcpy(e.sha, sha, sizeof(e.sha));
	e.gen = gen;
	e.nb = asn1_seconds(X509_get0_notBefore(x));
	e.na = asn1_seconds(X509_get0_notAfter(x));
	memcpy(e.id, id, strlen(id) + 1);
	if (product)
		memcpy(e.product, product, strlen(product) + 1);
	pthread_mutex_lock(&ca->vc_mu);
	*v = e;
	pthread_mutex_unlock(&ca->vc_mu);
}

int fleet_ca_identify_ex(struct fleet_ca *ca, const unsigned char *der, size_t len, char *id_out, size_t idlen,
			 char *product_out, size_t plen, int count, const char **why)
{
	const unsigned char *p = der;
	unsigned char sha[32];
	char product[129];
	X509 *x = NULL;
	uint64_t gen = 0;
	int reason = -2;

	if (idlen)
		id_out[0] = 0;
	if (product_out && plen)
		product_out[0] = 0;
	if (!ca) {
		reason = RS_NO_CA;
	} else if (!der || len == 0 || len > 65536) {
		reason = RS_MALFORMED;
	} else {
		gen = atomic_load(&ca->gen); /* before verifying: a CA changed meanwhile makes the entry stale */
		/* nettle, not an EVP fetch: none at start, no locks per call
		 * (common/sha256.h) */
		ota_sha256(der, len, sha);
		reason = vcache_lookup(ca, sha, gen, id_out, idlen, product_out, plen);
	}
	if (reason == -2) {
		if (!(x = d2i_X509(NULL, &p, (long)len)) || p != der + len) {
			reason = RS_MALFORMED;
		} else {
			reason = identify(ca, x, id_out, idlen, product, sizeof(product));
			if (reason < 0) {
				if (gen)
					vcache_store(ca, sha, gen, x, id_out, product);
				if (product_out && plen && strlen(product) < plen)
					memcpy(product_out, product, strlen(product) + 1);
			}
		}
	}
	X509_free(x);
	ERR_clear_error();
	if (reason < 0) {
		if (ca && count)
			atomic_fetch_add(&ca->accepted, 1);
		if (why)
			*why = NULL;
		return 0;
	}
	if (idlen)
		id_out[0] = 0;
	if (ca && count)
		atomic_fetch_add(&ca->refused[reason], 1);
	if (why)
		*why = reason_text[reason];
	return ota_error_set(OTA_EAUTH, "device certificate refused: %s", reason_text[reason]);
}

int fleet_ca_identify(struct fleet_ca *ca, const unsigned char *der, size_t len, char *id_out, size_t idlen,
		      const char **why)
{
	return fleet_ca_identify_ex(ca, der, len, id_out, idlen, NULL, 0, 1, why);
}

/* ---- revocations ------------------------------------------------------------ */

void fleet_ca_revoke_mem(struct fleet_ca *ca, const char *device, int64_t cutoff)
{
	json_t *old;
	pthread_mutex_lock(&ca->mu);
	old = json_object_get(ca->revoked, device);
	if (!old || json_integer_value(old) < cutoff)
		json_object_set_new(ca->revoked, device, json_integer(cutoff));
	pthread_mutex_unlock(&ca->mu);
}

int64_t fleet_ca_revoked_at(struct fleet_ca *ca, const char *device)
{
	int64_t v;
	pthread_mutex_lock(&ca->mu);
	v = json_integer_value(json_object_get(ca->revoked, device));
	pthread_mutex_unlock(&ca->mu);
	return v;
}

/* ---- provisioners (memory) -------------------------------------------------- */

static struct prov *prov_find_locked(struct fleet_ca *ca, const char *name)
{
	for (size_t i = 0; i < ca->nprovs; i++)
		if (!strcmp(ca->provs[i].name, name))
			return &ca->provs[i];
	return NULL;
}

void fleet_ca_prov_set(struct fleet_ca *ca, const struct fleet_ca_prov *p)
{
	struct prov *x;
	pthread_mutex_lock(&ca->mu);
	if (!(x = prov_find_locked(ca, p->name))) {
		ca->provs = xrealloc(ca->provs, (ca->nprovs + 1) * sizeof(*ca->provs));
		x = &ca->provs[ca->nprovs++];
		memset(x, 0, sizeof(*x));
		snprintf(x->name, sizeof(x->name), "%s", p->name);
		x->at_ms = clock_mono_ms();
	}
	free(x->prefix);
	json_decref(x->products);
	snprintf(x->hash, sizeof(x->hash), "%s", p->token_sha256);
	x->prefix = xstrdup(p->prefix ? p->prefix : "");
	x->products = p->products ? json_deep_copy(p->products) : NULL;
	x->max = p->max;
	x->issued = p->issued;
	x->rate = p->rate_per_min > 0 ? p->rate_per_min : 60;
	x->tokens = (double)x->rate;
	pthread_mutex_unlock(&ca->mu);
}

void fleet_ca_prov_remove(struct fleet_ca *ca, const char *name)
{
	pthread_mutex_lock(&ca->mu);
	for (size_t i = 0; i < ca->nprovs; i++) {
		if (strcmp(ca->provs[i].name, name))
			continue;
		free(ca->provs[i].prefix);
		json_decref(ca->provs[i].products);
		ca->provs[i] = ca->provs[--ca->nprovs];
		break;
	}
	pthread_mutex_unlock(&ca->mu);
}

int fleet_ca_prov_admit(struct fleet_ca *ca, const char *token, const char *device, const char *product,
			char name_out[65], int64_t *retry_s)
{
	char hash[65];
	struct prov *p = NULL;
	int64_t now = clock_mono_ms();
	int rc = 0;

	name_out[0] = 0;
	*retry_s = 0;
	if (!token || !*token) {
		atomic_fetch_add(&ca->prov_refused, 1);
		return ota_error_set(OTA_EAUTH, "provisioning needs a provisioner's credential");
	}
	auth_sha256_hex(token, hash);
	pthread_mutex_lock(&ca->mu);
	for (size_t i = 0; i < ca->nprovs; i++)
		if (CRYPTO_memcmp(ca->provs[i].hash, hash, 64) == 0)
			p = &ca->provs[i];
	if (!p) {
		rc = ota_error_set(OTA_EAUTH, "missing or wrong provisioning credential");
		goto out;
	}
	snprintf(name_out, 65, "%s", p->name);
	if (!device || !fleet_device_id_valid(device)) {
		rc = ota_error_set(OTA_EINVAL, "device: must be 1..64 characters [A-Za-z0-9._:-]");
		goto out;
	}
	if (strncmp(device, p->prefix, strlen(p->prefix))) {
		rc = ota_error_set(OTA_EPERM, "device '%s' is outside provisioner %s's scope (ids starting with '%s')",
				   device, p->name, p->prefix);
		goto out;
	}
	if (p->products) {
		json_t *v;
		size_t i;
		int ok = 0;
		json_array_foreach(p->products, i, v)
			ok |= product && !strcmp(json_string_value(v), product);
		if (!ok) {
			rc = ota_error_set(OTA_EPERM, "product '%s' is outside provisioner %s's scope", product ? product : "",
					   p->name);
			goto out;
		}
	}
	if (p->issued >= p->max) {
		rc = ota_error_set(OTA_EPERM, "provisioner %s has issued all its %lld certificates", p->name,
				   (long long)p->max);
		goto out;
	}
	p->tokens += (double)(now - p->at_ms) / 60000.0 * (double)p->rate;
	if (p->tokens > (double)p->rate)
		p->tokens = (double)p->rate;
	p->at_ms = now;
	if (p->tokens < 1.0) {
		*retry_s = (int64_t)((1.0 - p->tokens) * 60.0 / (double)p->rate) + 1;
		rc = ota_error_set(OTA_ECONFLICT, "provisioner %s is over its rate of %lld certificates a minute", p->name,
				   (long long)p->rate);
		goto out;
	}
	p->tokens -= 1.0;
out:
	pthread_mutex_unlock(&ca->mu);
	if (rc < 0)
		atomic_fetch_add(&ca->prov_refused, 1);
	return rc;
}

void fleet_ca_prov_done(struct fleet_ca *ca, const char *name, int issued)
{
	struct prov *p;
	pthread_mutex_lock(&ca->mu);
	if (issued && (p = prov_find_locked(ca, name)))
		p->issued++;
	pthread_mutex_unlock(&ca->mu);
}

void fleet_ca_count_provision(struct fleet_ca *ca, int issued)
{
	atomic_fetch_add(issued ? &ca->prov_issued : &ca->prov_refused, 1);
}

/* 1 at most once a second per provisioner: audit this rate refusal. */
int fleet_ca_prov_rate_audit(struct fleet_ca *ca, const char *name);
int fleet_ca_prov_rate_audit(struct fleet_ca *ca, const char *name)
{
	struct prov *p;
	int64_t now = clock_mono_ms();
	int yes = 0;
	pthread_mutex_lock(&ca->mu);
	if ((p = prov_find_locked(ca, name)) && now - p->rate_audit_ms >= 1000) {
		p->rate_audit_ms = now;
		yes = 1;
	}
	pthread_mutex_unlock(&ca->mu);
	return yes;
}

void fleet_ca_count_wrong_device(struct fleet_ca *ca)
{
	if (ca)
		atomic_fetch_add(&ca->refused[RS_WRONG_DEVICE], 1);
}

void fleet_ca_metrics_text(struct fleet_ca *ca, struct buf *b)
{
	if (!ca)
		return;
	buf_printf(b, "# HELP otacd_device_cert_accepted_total Device certificates accepted as an identity.\n"
		      "# TYPE otacd_device_cert_accepted_total counter\n"
		      "otacd_device_cert_accepted_total %lld\n",
		   (long long)atomic_load(&ca->accepted));
	buf_printf(b, "# HELP otacd_device_cert_refused_total Device certificates refused, by reason.\n"
		      "# TYPE otacd_device_cert_refused_total counter\n");
	for (int i = 0; i < RS_N; i++)
		buf_printf(b, "otacd_device_cert_refused_total{reason=\"%s\"} %lld\n", reason_label[i],
			   (long long)atomic_load(&ca->refused[i]));
	buf_printf(b, "# HELP otacd_device_provision_total Device certificates requested (factory provisioners and administrators), by result.\n"
		      "# TYPE otacd_device_provision_total counter\n"
		      "otacd_device_provision_total{result=\"issued\"} %lld\n"
		      "otacd_device_provision_total{result=\"refused\"} %lld\n",
		   (long long)atomic_load(&ca->prov_issued), (long long)atomic_load(&ca->prov_refused));
}
