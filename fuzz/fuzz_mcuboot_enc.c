/*
 * fuzz_mcuboot_enc.c - libFuzzer target for the device side of encrypted
 * MCUboot images (issue 13): an image arrives from the network or from
 * external flash and mcuboot_decrypt reads its header flags and key TLV
 * (ENC_EC256 / ENC_X25519), unwraps the key and decrypts the body; on
 * success mcuboot_verify runs on the result, as otacd-fleetsim does.
 *
 * Two device keys: an X25519 key made from fixed bytes (a fuzz-only key;
 * the seeds in fuzz/corpus/fuzz_mcuboot_enc/ were encrypted for it, so
 * mutations of the body, the wrapped key and the ciphertext reach the MAC
 * check and the decryption) and a P-256 key drawn at start (mutations of
 * P-256 TLVs reach point validation and ECDH, never a valid MAC).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "../orchestrator/mcuboot.h"
#include "../orchestrator/mcuboot_enc.h"

/* 0x01 .. 0x20: the fuzz-only X25519 device key the seeds were made for */
static EVP_PKEY *fixed_x25519(void)
{
	unsigned char raw[32];
	EVP_PKEY *k;

	for (int i = 0; i < 32; i++)
		raw[i] = (unsigned char)(i + 1);
	k = EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, NULL, raw, sizeof(raw));
	if (!k)
		abort();
	return k;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static EVP_PKEY *x, *ec;
	struct buf plain = BUF_INIT;
	struct mcuboot_info info;
	EVP_PKEY *keys[2];

	if (!x) {
		x = fixed_x25519();
		ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
		if (!ec)
			abort();
	}
	keys[0] = x;
	keys[1] = ec;
	for (int k = 0; k < 2; k++) {
		if (mcuboot_decrypt(&plain, data, size, keys[k]) == 0) {
			/* the result is the input with only the body changed */
			if (plain.len != size || mcuboot_parse(&info, plain.ptr, plain.len) != 0 ||
			    memcmp(plain.ptr, data, info.header_size) != 0)
				abort();
			mcuboot_verify(NULL, plain.ptr, plain.len, keys[k]);
		} else if (plain.len != 0) {
			abort(); /* a refusal leaves nothing behind */
		}
		buf_release(&plain);
	}
	/* what parse reported about the key TLV must lie inside the input */
	if (mcuboot_parse(&info, data, size) == 0 && info.enc_type &&
	    (info.enc_off > size || info.enc_len > size - info.enc_off))
		abort();
	mcuboot_verify_sealed(NULL, data, size, x);
	return 0;
}
