/*
 * imgtest.h - what the image tests share (test_mcuboot, test_encrypt,
 * test_fleetsim): key pairs made once with `openssl genpkey` in a
 * temporary directory and loaded, deterministic firmware bytes, and
 * MCUboot's imgtool when $OTACD_IMGTOOL names it.
 */
#ifndef OTA_TESTS_IMGTEST_H
#define OTA_TESTS_IMGTEST_H

#include <stddef.h>
#include <stdint.h>
#include <openssl/evp.h>

/* One key pair to make: NAME.pem and NAME.pub.pem, from `openssl genpkey
 * GENPKEY` (e.g. "-algorithm ED25519"). */
struct it_key_spec {
	const char *name;
	const char *genpkey;
};

/* The key pairs of specs[0..n), each index as in specs. */
struct it_keys {
	char *dir;       /* the temporary directory holding them */
	size_t n;
	char **priv_pem; /* dir/NAME.pem */
	char **pub_pem;  /* dir/NAME.pub.pem */
	EVP_PKEY **priv;
	EVP_PKEY **pub;  /* public half only */
};

/* Make and load the pairs of specs; -1 (openssl's output on stderr) when
 * openssl fails, for a cmocka group setup to return. */
int it_keys_make(struct it_keys *k, const struct it_key_spec *specs, size_t n);
/* Free the keys and remove their directory. */
void it_keys_free(struct it_keys *k);
/* The key in PEM file path: its public half (pub) or private key; fails
 * the case when it cannot be read. */
EVP_PKEY *it_read_pem(const char *path, int pub);

/* Deterministic pseudo-random firmware of n bytes (xorshift from seed);
 * the caller frees it. */
unsigned char *it_firmware(size_t n, uint32_t seed);

/* $OTACD_IMGTOOL (MCUboot's scripts/imgtool.py), NULL when unset. */
const char *it_imgtool(void);
/* Skip the case, saying why, unless it_imgtool() names imgtool. */
#define IT_NEED_IMGTOOL()                                                           \
	do {                                                                        \
		if (!it_imgtool()) {                                                \
			print_message("note: OTACD_IMGTOOL is not set (path to MCUboot's " \
				      "scripts/imgtool.py); imgtool checks skipped\n");     \
			skip();                                                     \
		}                                                                   \
	} while (0)

#endif
