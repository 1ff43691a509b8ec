/*
 * fuzz_mcuboot.c - libFuzzer target for MCUboot images (untrusted input:
 * an upload to the update server, an artifact from an agent).  Every input
 * goes through mcuboot_parse and mcuboot_verify with two fixed public keys;
 * short inputs are also tried as a version string ("1.2.3+4").
 *
 * The keys are embedded (public halves only) and loaded once into statics.
 * The seeds in fuzz/corpus/fuzz_mcuboot/ were signed by their private halves
 * (discarded), so seeds and mutations of their unhashed bytes (the SHA256,
 * KEYHASH and signature TLVs, slot padding) reach the key hash and signature
 * checks instead of stopping at the image hash.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/pem.h>

#include "../orchestrator/mcuboot.h"

static const char ec_pub_pem[] =
	"-----BEGIN PUBLIC KEY-----\n"
	"MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE7+Y3YdnM+5Pr+6SKQgCBE1pq0Y4q\n"
	"42IzawzsKsA8ACEZ3Nt2OUNwb7bcbq0N1W+TJgOv8gWeNOURbCOpDj/UmQ==\n"
	"-----END PUBLIC KEY-----\n";

static const char ed_pub_pem[] =
	"-----BEGIN PUBLIC KEY-----\n"
	"MCowBQYDK2VwAyEA7A1lQHVOG2Xcy4s8VhcbedW7iGlIGG74tNbaHas38Gs=\n"
	"-----END PUBLIC KEY-----\n";

static EVP_PKEY *load_pub(const char *pem)
{
	BIO *b = BIO_new_mem_buf(pem, -1);
	EVP_PKEY *k = b ? PEM_read_bio_PUBKEY(b, NULL, NULL, NULL) : NULL;
	BIO_free(b);
	if (!k)
		abort();
	return k;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static EVP_PKEY *ec, *ed;
	struct mcuboot_info info;
	char version[40];
	uint8_t ma, mi;
	uint16_t rev;
	uint32_t build;

	if (!ec) {
		ec = load_pub(ec_pub_pem);
		ed = load_pub(ed_pub_pem);
	}
	if (mcuboot_parse(&info, data, size) == 0) {
		/* what parse reported must lie inside the input */
		if (info.signed_len > size || info.tlv_end > size || info.sig_off > size ||
		    info.sig_len > size - info.sig_off || info.signed_len > info.tlv_end)
			abort();
		mcuboot_verify(NULL, data, size, ec);
		mcuboot_verify(NULL, data, size, ed);
	}
	if (size < sizeof(version)) {
		memcpy(version, data, size);
		version[size] = '\0';
		mcuboot_version_parse(version, &ma, &mi, &rev, &build);
	}
	return 0;
}
