/*
 * pki.h - the update channel's signing PKI: an offline root that certifies
 * release-signing keys (X.509), and a revocation list signed by the root.
 *
 *   root          a self-signed CA certificate (CA:TRUE, keyCertSign,
 *                 cRLSign) whose key stays offline (a PEM file written by
 *                 `otactl keys root init`, or a PKCS#11 token);
 *   signing cert  issued by the root (or an intermediate it certified) to
 *                 one release-signing key: CA:FALSE, keyUsage
 *                 digitalSignature (critical), extendedKeyUsage codeSigning
 *                 (1.3.6.1.5.5.7.3.3, critical), a validity period;
 *   chain         what a release carries in its signed manifest
 *                 ("signing_chain": [PEM, ...], leaf first, root excluded);
 *   revocations   an X.509 CRL (v2) signed by the root, with a CRL number
 *                 that only grows; it lists the serials of revoked signing
 *                 certificates with a reason code.
 *
 * A verifier holds the root certificate (`trust_root:`) and the newest CRL
 * it accepted.  pki_chain_verify() accepts a chain when it ends at that
 * root, every certificate was valid at the signing time, the leaf is not
 * self-signed, is not a CA, has the key usages above and is not revoked.
 * All X.509 and CRL work is OpenSSL's (X509_verify_cert, X509_CRL_*).
 *
 * Errors: 0 or a negative OTA_E* code with ota_error_last(); refusals of
 * untrusted input are OTA_EAUTH (a chain or list that does not verify) or
 * OTA_EINVAL (malformed), with a message that names the reason.
 */
#ifndef OTA_PKI_H
#define OTA_PKI_H

#include <jansson.h>
#include <openssl/x509.h>
#include <stdint.h>
#include <time.h>

#include "../common/util.h"
#include "keys.h"

#define PKI_CHAIN_MAX 4                 /* certificates in a release's chain */
#define PKI_CERT_MAX (16 * 1024)        /* bytes of one PEM certificate */
#define PKI_CRL_MAX (1024 * 1024)       /* bytes of a revocation list */

/* The root certificate from PEM: a self-signed CA with keyCertSign. */
int pki_root_load(X509 **out, const void *pem, size_t len);
int pki_root_load_file(X509 **out, const char *path);

/*
 * Write a new root into dir: root.key.pem (mode 0600; unless key is given,
 * a fresh ECDSA P-256 key) and root.crt.pem (self-signed, valid `days`).
 * With key (a PKCS#11 key, say) only the certificate is written.  Refuses
 * to overwrite an existing root.
 */
int pki_root_init(const char *dir, const char *cn, int days, const struct sign_key *key);

/*
 * A signing certificate for the public key `subject`, issued by
 * root/root_cert, valid [not_before, not_after]; PEM appended to out.
 * The serial number is random (128 bits).
 */
int pki_certify(struct buf *out, const struct sign_key *root, X509 *root_cert, EVP_PKEY *subject, const char *cn,
		time_t not_before, time_t not_after);

/* The PEM certificates of text (a chain file) as a JSON array of strings,
 * leaf first; OTA_EINVAL when there is none or more than PKI_CHAIN_MAX. */
int pki_chain_from_pem(json_t **out, const void *text, size_t len);

/*
 * Verify a release's chain (JSON array of PEM strings, leaf first) at time
 * `at` against root, and against crl (may be NULL).  On success *leaf_out
 * (may be NULL) is the leaf's public key (caller frees) and keyid (may be
 * NULL) its key id.  OTA_EAUTH / OTA_EINVAL with the reason otherwise.
 */
int pki_chain_verify(EVP_PKEY **leaf_out, char keyid[65], X509 *root, const json_t *chain, time_t at,
		     const X509_CRL *crl);

/* "2026-12-02T06:40:30Z" (RFC 3339 UTC, fractions allowed) to Unix time. */
int pki_parse_time(const char *s, time_t *out);

/* ---- revocation lists --------------------------------------------------- */

/*
 * Parse a revocation list (PEM or DER), check it is signed by root's key
 * and issued by root's subject, and read its CRL number.  OTA_EAUTH when it
 * is not the root's, OTA_EINVAL when malformed or without a CRL number.
 */
int pki_crl_load(X509_CRL **out, int64_t *number, const void *data, size_t len, X509 *root);
/* The CRL number of a list (-1 when absent). */
int64_t pki_crl_number(const X509_CRL *crl);

/* A CRL reason code from its name ("keyCompromise", "superseded",
 * "cessationOfOperation", "affiliationChanged", "unspecified"); -1 if unknown. */
int pki_reason_code(const char *name);
const char *pki_reason_name(int code);

/*
 * A new list signed by root: every entry of prev (may be NULL) plus the
 * serials of certs[0..n) with `reason`, CRL number prev's + 1 (1 without
 * prev).  PEM appended to out.
 */
int pki_crl_issue(struct buf *out, const struct sign_key *root, X509 *root_cert, const X509_CRL *prev,
		  X509 *const *certs, size_t n, int reason);

/* 1 (and the reason code) when cert is listed in crl, else 0. */
int pki_crl_lists(const X509_CRL *crl, X509 *cert, int *reason);

/* PEM text of a CRL / certificate appended to out. */
int pki_crl_pem(const X509_CRL *crl, struct buf *out);
int pki_cert_pem(X509 *cert, struct buf *out);
/* Key id of a certificate's public key (keys.h). */
int pki_cert_keyid(X509 *cert, char out[65]);
/* One PEM certificate. */
int pki_cert_load(X509 **out, const void *pem, size_t len);

/* ---- the daemon's trust state (process-wide) ----------------------------
 *
 * The root from `trust_root:` and the newest accepted revocation list.
 * The list is kept in the database (trustdb.h: published there, read back
 * by every instance); pki_trust_open() also reads a list an older otacd
 * left in STATE_DIR/revocations.crl.pem, for trustdb_import().  Readers
 * take a reference under a lock; installing a newer list swaps it.  The
 * held number never goes down.
 */
int pki_trust_open(const char *root_path, const char *state_dir);
void pki_trust_close(void);
/* Borrowed root, or NULL when no trust_root is configured. */
X509 *pki_trust_root(void);
/* The held list (new reference, caller X509_CRL_free) or NULL. */
X509_CRL *pki_trust_crl(void);
/* The held list's number, 0 when none (cheap: check-ins read it). */
int64_t pki_trust_crl_number(void);
/* A PEM list checked against the trust root (OTA_EAUTH: not signed by it,
 * OTA_EINVAL: no root, not a list).  *out is the caller's. */
int pki_trust_parse(X509_CRL **out, int64_t *number, const void *data, size_t len);
/* Hold crl (number: its number) when it is newer than the held list: 1,
 * else 0 and crl is freed.  Takes crl either way. */
int pki_trust_install(X509_CRL *crl, int64_t number);

#endif
