/*
 * fuzz_fwdcert.c - libFuzzer target for the signed client-certificate
 * header a leader reads from a follower (orchestrator/fleet/fwdcert.c):
 * the base64 certificate and "t=UNIX,mac=HEX", hostile when a device (or
 * anything on the network) sends them itself.
 *
 * The input is split at '\n' into the certificate header, the auth
 * header, the method, the path and the body (the rest).  Besides crashes
 * and UB, the target aborts when
 *   - a verified header gives no certificate, or one over FWDCERT_MAX_DER;
 *   - a header signed here, over the same request with the input's bytes as
 *     the certificate, does not verify or gives other bytes back;
 *   - that header verifies past the allowed clock skew, or with one byte of
 *     the body, the method or the key changed.
 * Forging a MAC is not expected of the fuzzer; the round trip keeps the
 * parser honest on every length and padding of base64.
 *
 *   make fuzz   or   build/fuzz/fuzz_fwdcert fuzz/corpus/fuzz_fwdcert
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../orchestrator/fleet/fwdcert.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { F_CERT, F_AUTH, F_METHOD, F_PATH, F_BODY, F_N };

static const int64_t now = 1764892800; /* a fixed clock: 2025-12-05 */

static int verifies(const unsigned char key[32], const char *method, const char *path, const void *body, size_t len,
		    const char *b64, const char *auth, int64_t at, const unsigned char *want, size_t wantlen)
{
	unsigned char *der = NULL;
	size_t derlen = 0;
	int ok = fwdcert_verify(key, method, path, body, len, b64, auth, at, &der, &derlen) == 0;
	if (ok && (!der || derlen > FWDCERT_MAX_DER || (want && (derlen != wantlen || memcmp(der, want, derlen)))))
		abort();
	free(der);
	return ok;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *f[F_N] = { 0 };
	size_t flen[F_N] = { 0 };
	const char *p = (const char *)data, *end = p + size;
	unsigned char key[32], other[32];
	char *b64, *auth;

	for (int i = 0; i < F_N; i++) {
		const char *e = i < F_BODY ? memchr(p, '\n', (size_t)(end - p)) : NULL;
		size_t n = e ? (size_t)(e - p) : (size_t)(end - p);
		f[i] = malloc(n + 1);
		memcpy(f[i], p, n);
		f[i][n] = '\0';
		flen[i] = n;
		p += n + (e != NULL);
	}
	fwdcert_key("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", key);
	fwdcert_key("fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210", other);

	/* the hostile headers as they came */
	verifies(key, f[F_METHOD], f[F_PATH], f[F_BODY], flen[F_BODY], f[F_CERT], f[F_AUTH], now, NULL, 0);

	/* a round trip: the input's certificate bytes signed, then checked */
	if (flen[F_CERT] > 0 && flen[F_CERT] <= FWDCERT_MAX_DER) {
		const unsigned char *der = (const unsigned char *)f[F_CERT];
		size_t derlen = flen[F_CERT];
		fwdcert_sign(key, f[F_METHOD], f[F_PATH], f[F_BODY], flen[F_BODY], der, derlen, now, &b64, &auth);
		if (!verifies(key, f[F_METHOD], f[F_PATH], f[F_BODY], flen[F_BODY], b64, auth, now + FWDCERT_SKEW_S, der,
			      derlen) ||
		    verifies(key, f[F_METHOD], f[F_PATH], f[F_BODY], flen[F_BODY], b64, auth, now + FWDCERT_SKEW_S + 1,
			     NULL, 0) ||
		    verifies(other, f[F_METHOD], f[F_PATH], f[F_BODY], flen[F_BODY], b64, auth, now, NULL, 0))
			abort();
		if (flen[F_BODY] > 0) {
			f[F_BODY][0] ^= 1;
			if (verifies(key, f[F_METHOD], f[F_PATH], f[F_BODY], flen[F_BODY], b64, auth, now, NULL, 0))
				abort();
			f[F_BODY][0] ^= 1;
		}
		if (verifies(key, strcmp(f[F_METHOD], "GET") ? "GET" : "POST", f[F_PATH], f[F_BODY], flen[F_BODY], b64,
			     auth, now, NULL, 0))
			abort();
		free(b64);
		free(auth);
	}
	for (int i = 0; i < F_N; i++)
		free(f[i]);
	return 0;
}
