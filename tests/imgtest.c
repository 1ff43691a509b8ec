/*
 * imgtest.c - the image tests' shared keys and firmware bytes; see
 * imgtest.h.
 */
#include "imgtest.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <cmocka.h>
#include <openssl/pem.h>

#include "harness.h"

EVP_PKEY *it_read_pem(const char *path, int pub)
{
	FILE *f = fopen(path, "r");
	EVP_PKEY *k;

	if (!f)
		fail_msg("cannot open %s", path);
	k = pub ? PEM_read_PUBKEY(f, NULL, NULL, NULL) : PEM_read_PrivateKey(f, NULL, NULL, NULL);
	fclose(f);
	if (!k)
		fail_msg("cannot read key %s", path);
	return k;
}

int it_keys_make(struct it_keys *k, const struct it_key_spec *specs, size_t n)
{
	struct buf out = BUF_INIT;
	int rc = 0;

	k->dir = h_tmpdir();
	k->n = n;
	k->priv_pem = xcalloc(n, sizeof(*k->priv_pem));
	k->pub_pem = xcalloc(n, sizeof(*k->pub_pem));
	k->priv = xcalloc(n, sizeof(*k->priv));
	k->pub = xcalloc(n, sizeof(*k->pub));
	for (size_t i = 0; i < n && rc == 0; i++) {
		k->priv_pem[i] = xasprintf("%s/%s.pem", k->dir, specs[i].name);
		k->pub_pem[i] = xasprintf("%s/%s.pub.pem", k->dir, specs[i].name);
		if (h_sh(&out, "(openssl genpkey %s -out %s && openssl pkey -in %s -pubout -out %s)", specs[i].genpkey,
			 k->priv_pem[i], k->priv_pem[i], k->pub_pem[i]) != 0) {
			fprintf(stderr, "openssl genpkey failed: %s\n", buf_cstr(&out));
			rc = -1;
			break;
		}
		k->priv[i] = it_read_pem(k->priv_pem[i], 0);
		k->pub[i] = it_read_pem(k->pub_pem[i], 1);
	}
	buf_release(&out);
	return rc;
}

void it_keys_free(struct it_keys *k)
{
	struct buf out = BUF_INIT;

	for (size_t i = 0; i < k->n; i++) {
		EVP_PKEY_free(k->priv[i]);
		EVP_PKEY_free(k->pub[i]);
		free(k->priv_pem[i]);
		free(k->pub_pem[i]);
	}
	free(k->priv);
	free(k->pub);
	free(k->priv_pem);
	free(k->pub_pem);
	if (k->dir)
		h_sh(&out, "rm -rf '%s'", k->dir);
	buf_release(&out);
	free(k->dir);
	*k = (struct it_keys){ 0 };
}

unsigned char *it_firmware(size_t n, uint32_t seed)
{
	unsigned char *p = xmalloc(n ? n : 1);
	uint32_t x = seed * 2654435761u + 1;

	for (size_t i = 0; i < n; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		p[i] = (unsigned char)x;
	}
	return p;
}

const char *it_imgtool(void)
{
	const char *t = getenv("OTACD_IMGTOOL");
	return t && *t ? t : NULL;
}
