/*
 * fwdcert.h - a device's client certificate carried from a follower to the
 * leader (issue 16; docs/scale.md "Devices known by their certificate
 * through a follower", docs/security.md).
 *
 * A follower's TLS device listener checked the device's certificate chain
 * in the handshake, but a certificate cannot cross an HTTP hop by itself:
 * it is public, only the handshake proved the key.  So the follower sends
 * it in FWDCERT_HEADER (base64 DER) with FWDCERT_AUTH_HEADER,
 * "t=UNIX,mac=HEX": an HMAC-SHA256 over the method, the path, the body's
 * SHA-256, the certificate's SHA-256 and t, keyed by a key derived from
 * the device secret every instance shares (device_secret_file:, checked
 * equal by fingerprint, fleet_keys.c).  The leader believes the header
 * only when the MAC verifies and t is within FWDCERT_SKEW_S of its clock,
 * and then identifies the device from that certificate exactly as from a
 * direct TLS client's (fleet_auth_cert_ex: issuer, validity, key usage,
 * revocation, device id).  A request with the header that fails any of
 * this is refused (401), never served by what else it carries.
 *
 * Pure functions, any thread.
 */
#ifndef OTA_FWDCERT_H
#define OTA_FWDCERT_H

#include <stddef.h>
#include <stdint.h>

#define FWDCERT_HEADER "X-Otacd-Client-Cert"
#define FWDCERT_AUTH_HEADER "X-Otacd-Client-Cert-Auth"
/* How far t may be from the leader's clock, either way. */
#define FWDCERT_SKEW_S 30
/* The largest certificate carried (DER bytes). */
#define FWDCERT_MAX_DER 8192

/* The MAC key for this device secret (the secret's text as configured). */
void fwdcert_key(const char *device_secret, unsigned char key[32]);

/*
 * The two header values for a request: *cert_b64 (new string: the DER in
 * base64) and *auth (new string, "t=...,mac=...") at time t (seconds
 * since the epoch).
 */
void fwdcert_sign(const unsigned char key[32], const char *method, const char *path, const void *body, size_t len,
		  const unsigned char *der, size_t derlen, int64_t t, char **cert_b64, char **auth);

/*
 * Check the two header values of a request against key at time now: 0
 * with the certificate's DER in *der (new buffer, free()) and its length;
 * OTA_EAUTH with the reason (malformed, stale, bad MAC) otherwise.
 */
int fwdcert_verify(const unsigned char key[32], const char *method, const char *path, const void *body, size_t len,
		   const char *cert_b64, const char *auth, int64_t now, unsigned char **der, size_t *derlen);

#endif
