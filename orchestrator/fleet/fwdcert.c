/*
 * fwdcert.c - the signed header that carries a device's client certificate
 * from a follower to the leader (fwdcert.h says why and what is trusted).
 *
 * The MAC's input is one line per field, so no field can run into the
 * next: "otacd-fwdcert-v1", the method, the path, hex SHA-256 of the body,
 * hex SHA-256 of the certificate's DER, t.  The key is
 * HMAC-SHA256(device secret, "otacd forwarded client certificate v1"), so
 * the device secret itself never keys anything but device credentials.
 * OpenSSL's HMAC, base64 and CRYPTO_memcmp (constant time).
 */
#include "fwdcert.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "../../common/sha256.h"
#include "../../common/util.h"

static const char label[] = "otacd forwarded client certificate v1";

void fwdcert_key(const char *device_secret, unsigned char key[32])
{
	unsigned int n = 32;
	HMAC(EVP_sha256(), device_secret, (int)strlen(device_secret), (const unsigned char *)label, sizeof(label) - 1,
	     key, &n);
}

static void hex(const unsigned char *p, size_t n, char *out)
{
	static const char digits[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = digits[p[i] >> 4];
		out[2 * i + 1] = digits[p[i] & 15];
	}
	out[2 * n] = 0;
}

static void mac_of(const unsigned char key[32], const char *method, const char *path, const void *body, size_t len,
		   const unsigned char *der, size_t derlen, int64_t t, unsigned char mac[32])
{
	unsigned char d[32];
	char body_hex[65], der_hex[65], *msg;
	unsigned int n = 32;

	ota_sha256(body ? body : "", len, d);
	hex(d, 32, body_hex);
	ota_sha256(der, derlen, d);
	hex(d, 32, der_hex);
	msg = xasprintf("otacd-fwdcert-v1\n%s\n%s\n%s\n%s\n%" PRId64, method, path, body_hex, der_hex, t);
	HMAC(EVP_sha256(), key, 32, (const unsigned char *)msg, strlen(msg), mac, &n);
	free(msg);
}

void fwdcert_sign(const unsigned char key[32], const char *method, const char *path, const void *body, size_t len,
		  const unsigned char *der, size_t derlen, int64_t t, char **cert_b64, char **auth)
{
	unsigned char mac[32];
	char mac_hex[65];

	*cert_b64 = xmalloc(4 * ((derlen + 2) / 3) + 1);
	EVP_EncodeBlock((unsigned char *)*cert_b64, der, (int)derlen);
	mac_of(key, method, path, body, len, der, derlen, t, mac);
	hex(mac, 32, mac_hex);
	*auth = xasprintf("t=%" PRId64 ",mac=%s", t, mac_hex);
}

/* "t=DIGITS,mac=64HEX" exactly: 0 with *t and mac, else -1. */
static int parse_auth(const char *auth, int64_t *t, unsigned char mac[32])
{
	const char *p = auth;
	int64_t v = 0;
	int digits = 0;

	if (strncmp(p, "t=", 2) != 0)
		return -1;
	for (p += 2; *p >= '0' && *p <= '9' && digits < 12; p++, digits++)
		v = v * 10 + (*p - '0');
	if (!digits || strncmp(p, ",mac=", 5) != 0)
		return -1;
	p += 5;
	for (int i = 0; i < 32; i++) {
		int b = 0;
		for (int k = 0; k < 2; k++) {
			char c = *p++;
			int x = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
			if (x < 0)
				return -1;
			b = b * 16 + x;
		}
		mac[i] = (unsigned char)b;
	}
	if (*p)
		return -1;
	*t = v;
	return 0;
}

int fwdcert_verify(const unsigned char key[32], const char *method, const char *path, const void *body, size_t len,
		   const char *cert_b64, const char *auth, int64_t now, unsigned char **der, size_t *derlen)
{
	unsigned char got[32], want[32], *buf;
	size_t n = cert_b64 ? strlen(cert_b64) : 0;
	int64_t t;
	int dec, pad = 0;

	*der = NULL;
	*derlen = 0;
	if (!cert_b64 || !auth)
		return ota_error_set(OTA_EAUTH, "forwarded client certificate: %s missing",
				     cert_b64 ? FWDCERT_AUTH_HEADER : FWDCERT_HEADER);
	if (parse_auth(auth, &t, got) < 0)
		return ota_error_set(OTA_EAUTH, "forwarded client certificate: malformed %s", FWDCERT_AUTH_HEADER);
	if (t < now - FWDCERT_SKEW_S || t > now + FWDCERT_SKEW_S)
		return ota_error_set(OTA_EAUTH, "forwarded client certificate: stale (t is %" PRId64 " s from now)",
				     t - now);
	if (n == 0 || n % 4 || n > 4 * ((FWDCERT_MAX_DER + 2) / 3) || strspn(cert_b64,
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=") != n)
		return ota_error_set(OTA_EAUTH, "forwarded client certificate: not base64 of at most %d bytes",
				     FWDCERT_MAX_DER);
	while (pad < 2 && cert_b64[n - 1 - (size_t)pad] == '=')
		pad++;
	buf = xmalloc(n / 4 * 3 + 1);
	if ((dec = EVP_DecodeBlock(buf, (const unsigned char *)cert_b64, (int)n)) < pad) {
		free(buf);
		return ota_error_set(OTA_EAUTH, "forwarded client certificate: not base64");
	}
	dec -= pad; /* EVP_DecodeBlock counts the padding as zero bytes */
	mac_of(key, method, path, body, len, buf, (size_t)dec, t, want);
	if (CRYPTO_memcmp(got, want, 32) != 0) {
		free(buf);
		return ota_error_set(OTA_EAUTH, "forwarded client certificate: bad MAC");
	}
	*der = buf;
	*derlen = (size_t)dec;
	return 0;
}
