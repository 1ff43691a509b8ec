/*
 * keys.h - signing keys behind one interface, and public keys to verify.
 *
 * A release is signed with a key named by a "spec" string from the pipeline
 * (`key:` of a release stage) or the daemon's config:
 *
 *   /etc/otacd/release.pem                 a PEM private key file (file backend,
 *                                          keys.c); the pin argument, if any,
 *                                          is the PEM passphrase
 *   pkcs11:token=fw;object=release         a key inside a PKCS#11 token (HSM,
 *                                          SoftHSM2, YubiHSM ...), keys_pkcs11.c;
 *                                          the pin argument is the user PIN
 *   pkcs11:token=fw;object=release;pin-value=1234   the same, PIN inline (tests)
 *
 * Two algorithms are supported, the ones MCUboot and DSSE verifiers agree
 * on: ECDSA P-256 with SHA-256 (DER signatures) and pure Ed25519.  Anything
 * else (RSA, other curves) is refused at load time with a message that says
 * so.
 *
 * A PKCS#11 private key never enters this process's memory: OpenSSL's
 * "pkcs11" engine (libp11) holds a handle and the token does the signing.
 * The engine is found with ENGINE_by_id("pkcs11"), or loaded from
 * $OTACD_PKCS11_ENGINE (default /usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so);
 * the PKCS#11 module is $OTACD_PKCS11_MODULE (default
 * /usr/lib/softhsm/libsofthsm2.so).  Nothing here ever prompts on a
 * terminal: a missing PIN or passphrase is an error.
 *
 * Key ids: the lowercase hex SHA-256 of the public key's DER
 * SubjectPublicKeyInfo, the same for a key in a file and in a token, and the
 * value of "keyid" in DSSE envelopes.  `openssl pkey -pubout -outform DER |
 * sha256sum` computes it from outside.
 *
 * Threads: a struct sign_key may be used by one thread at a time for
 * sign_key_sign (the PKCS#11 backend additionally serialises all token
 * operations on one process-wide lock).  Public-key functions are
 * reentrant.  Errors: 0 or a negative OTA_E* code with ota_error_last();
 * messages never contain a PIN, passphrase or key material.
 */
#ifndef OTA_KEYS_H
#define OTA_KEYS_H

#include <stddef.h>
#include <openssl/evp.h>

#include "../common/util.h"

enum sign_alg { SIGN_ECDSA_P256, SIGN_ED25519 };

struct sign_key;

/*
 * Load the key named by spec (see above).  pin may be NULL.  Errors:
 * OTA_ENOTFOUND (no such file, token or object), OTA_EAUTH (wrong or missing
 * PIN / passphrase), OTA_EINVAL (not a private key, unsupported algorithm,
 * malformed spec), OTA_ERROR (engine or module missing), OTA_ECONFLICT
 * (a PKCS#11 module other than the one this process already bound).
 * A token's login is per process: once a key of a token is loaded, later
 * loads from it do not re-check the PIN (see keys_pkcs11.c).
 */
int sign_key_load(struct sign_key **out, const char *spec, const char *pin);
void sign_key_free(struct sign_key *k);

enum sign_alg sign_key_alg(const struct sign_key *k);
const char *sign_alg_name(enum sign_alg alg);     /* "ecdsa-p256", "ed25519" */
/* Lowercase hex SHA-256 of the public key's DER SubjectPublicKeyInfo. */
const char *sign_key_id(const struct sign_key *k);
/* The spec with any pin-value removed (safe to log). */
const char *sign_key_spec(const struct sign_key *k);
/* Borrowed; usable with EVP_DigestSign* / EVP_PKEY_sign (engine keys too:
 * libp11 locks its own sessions; sign_key_sign also takes the backend lock). */
EVP_PKEY *sign_key_pkey(const struct sign_key *k);
/* Borrowed public half, a plain (provider) key: verify, export. */
EVP_PKEY *sign_key_public(const struct sign_key *k);
/* Append the public key as PEM ("-----BEGIN PUBLIC KEY-----"). */
int sign_key_public_pem(const struct sign_key *k, struct buf *out);
/*
 * Sign msg; the signature is appended to sig.  ECDSA P-256: SHA-256 over
 * msg, DER ECDSA-Sig-Value (70-72 bytes).  Ed25519: pure Ed25519 over msg
 * (64 bytes).
 */
int sign_key_sign(const struct sign_key *k, const void *msg, size_t len, struct buf *sig);

/* ---- public keys, for verification -------------------------------- */

/* A PEM "PUBLIC KEY" of a supported algorithm; caller frees with EVP_PKEY_free. */
int pubkey_load_pem(EVP_PKEY **out, const void *pem, size_t len);
/* Key id (see above) into out. */
int pubkey_id(EVP_PKEY *pub, char out[65]);
/* 0 when sig is a valid signature of msg by pub (same rules as
 * sign_key_sign); OTA_EINVAL "signature does not verify" otherwise. */
int pubkey_verify(EVP_PKEY *pub, const void *msg, size_t len, const void *sig, size_t siglen);
/* The algorithm of a key (public or private); OTA_EINVAL naming the key
 * type when it is neither ECDSA P-256 nor Ed25519. */
int pubkey_alg(EVP_PKEY *pkey, enum sign_alg *alg);

/* ---- backends (implementation side) ------------------------------- */

/*
 * A backend fills a struct sign_key: its vtable, the algorithm, the key
 * usable for signing (pkey) and its public half (pub, a plain key), then
 * calls sign_key_finish() to compute the id.  sign is optional (NULL:
 * EVP_DigestSign on pkey).  free (optional) runs first in sign_key_free and
 * releases the backend's own state (priv); it may free pkey itself when
 * that must happen in order (set it to NULL), the rest is freed after it.
 */
struct sign_key_backend {
	const char *name;
	int (*sign)(const struct sign_key *k, const void *msg, size_t len, struct buf *sig);
	void (*free)(struct sign_key *k);
};

struct sign_key {
	const struct sign_key_backend *backend;
	enum sign_alg alg;
	EVP_PKEY *pkey;     /* owned: the signing key (may be an engine key) */
	EVP_PKEY *pub;      /* owned: its public half, provider-native */
	char *spec;         /* owned: spec without pin-value */
	char id[65];
	void *priv;         /* the backend's */
};

/* Compute k->id and k->alg from k->pub. */
int sign_key_finish(struct sign_key *k);
/* EVP_DigestSign with the algorithm's digest (the default sign). */
int sign_key_evp_sign(const struct sign_key *k, const void *msg, size_t len, struct buf *sig);
/* spec without ";pin-value=..." (caller frees). */
char *sign_key_redact_spec(const char *spec);
/* The PKCS#11 backend (keys_pkcs11.c). */
int sign_key_pkcs11_load(struct sign_key **out, const char *uri, const char *pin);

#endif
