/*
 * fuzz_devchain.c - libFuzzer target for libotadev's signing-chain parsers
 * (device/otadev_chain.c, issue 13 on the device): the first byte picks the
 * DSSE envelope / manifest parser (base64 payload and signatures decoded in
 * place, the PAE made whole at the buffer's start for Ed25519, the PEM
 * chain decoded to DER past the tokens, built_at, images) or the PEM armour
 * decoder of a revocation list; the rest is the input, copied into a
 * buffer with the room a device gives it.  Everything the parser returns
 * must point inside that buffer.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../device/otadev_chain.c"

static int f_begin(void *ctx)
{
	(void)ctx;
	return 0;
}

static int f_update(void *ctx, const void *p, size_t n)
{
	(void)ctx;
	(void)p;
	(void)n;
	return 0;
}

static int f_end(void *ctx, uint8_t out[32])
{
	(void)ctx;
	memset(out, 0, 32);
	return 0;
}

static void inside(const char *buf, size_t cap, const uint8_t *p, size_t n)
{
	if ((const char *)p < buf || (const char *)p + n > buf + cap)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const uint8_t want[32];
	struct otadev_hooks h;
	struct otadev_manifest m;
	uint8_t digest[32];
	size_t cap;
	char *buf;
	int i, rc;

	if (size < 1)
		return 0;
	cap = size - 1 + (data[0] & 0x80 ? 64 : 4096);
	buf = malloc(cap);
	memcpy(buf, data + 1, size - 1);
	memset(&h, 0, sizeof(h));
	h.sha256_begin = f_begin;
	h.sha256_update = f_update;
	h.sha256_end = f_end;
	if (data[0] & 1) {
		rc = otadev_pem_to_der(buf, size - 1, "X509 CRL");
		if (rc > (int)(size - 1))
			abort();
	} else if (otadev_manifest_parse(&m, digest, &h, NULL, buf, size - 1, cap, want, "fw", "mps2-an385") == 0) {
		if (m.ncerts > OTADEV_CHAIN_CERTS || m.nsig > 2)
			abort();
		for (i = 0; i < m.ncerts; i++)
			inside(buf, cap, m.cert[i], m.cert_len[i]);
		for (i = 0; i < m.nsig; i++)
			inside(buf, cap, m.sig[i], m.sig_len[i]);
		/* the PAE an Ed25519 signature is checked over: whole, at the start */
		if (m.pae != (const uint8_t *)buf || m.pae_len < 10 || memcmp(buf, "DSSEv1 ", 7))
			abort();
		inside(buf, cap, m.pae, m.pae_len);
	}
	free(buf);
	return 0;
}
