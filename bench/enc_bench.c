/*
 * enc_bench.c - what MCUboot image encryption costs (issue 13): signing a
 * firmware image in clear against signing it encrypted for a device key
 * (ECIES-P256 and ECIES-X25519, AES-128), and the device side: verifying a
 * clear image against decrypting then verifying an encrypted one.  Figures
 * and the ratio to the clear baseline, measured in the same run.
 *
 *   enc-bench [SIZE_KIB [ROUNDS]]      (default 1024 KiB, 20 rounds)
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <openssl/evp.h>

#include "../common/util.h"
#include "../orchestrator/mcuboot.h"
#include "../orchestrator/mcuboot_enc.h"

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void die(const char *what)
{
	fprintf(stderr, "enc-bench: %s: %s\n", what, ota_error_last());
	exit(1);
}

int main(int argc, char **argv)
{
	size_t kib = argc > 1 ? strtoul(argv[1], NULL, 10) : 1024, n = kib * 1024;
	int rounds = argc > 2 ? atoi(argv[2]) : 20;
	EVP_PKEY *sign = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
	EVP_PKEY *dev[2] = { EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256"), EVP_PKEY_Q_keygen(NULL, NULL, "X25519") };
	struct mcuboot_sign_opts o = { .header_size = 0x200, .major = 1, .has_security_counter = 1 };
	struct buf img = BUF_INIT, plain = BUF_INIT;
	unsigned char *fw = xmalloc(n ? n : 1);
	double t, base_sign, base_verify;

	if (!sign || !dev[0] || !dev[1] || rounds < 1)
		return 1;
	for (size_t i = 0; i < n; i++)
		fw[i] = (unsigned char)(i * 31 + 7);
	t = now_ms();
	for (int r = 0; r < rounds; r++)
		if (mcuboot_sign(&img, fw, n, sign, &o))
			die("sign");
	base_sign = (now_ms() - t) / rounds;
	t = now_ms();
	for (int r = 0; r < rounds; r++)
		if (mcuboot_verify(NULL, img.ptr, img.len, sign))
			die("verify");
	base_verify = (now_ms() - t) / rounds;
	printf("image %zu KiB, Ed25519 signature, %d rounds\n", kib, rounds);
	printf("  %-34s sign %8.2f ms   device verify %8.2f ms\n", "clear (baseline)", base_sign, base_verify);
	for (int k = 0; k < 2; k++) {
		double s, v;
		o.enc_key = dev[k];
		t = now_ms();
		for (int r = 0; r < rounds; r++)
			if (mcuboot_sign(&img, fw, n, sign, &o))
				die("sign encrypted");
		s = (now_ms() - t) / rounds;
		t = now_ms();
		for (int r = 0; r < rounds; r++)
			if (mcuboot_decrypt(&plain, img.ptr, img.len, dev[k]) ||
			    mcuboot_verify(NULL, plain.ptr, plain.len, sign))
				die("decrypt and verify");
		v = (now_ms() - t) / rounds;
		printf("  %-34s sign %8.2f ms (x%.2f)   decrypt+verify %8.2f ms (x%.2f)\n",
		       k ? "encrypted, ECIES-X25519 AES-128" : "encrypted, ECIES-P256 AES-128", s, s / base_sign, v,
		       v / base_verify);
	}
	buf_release(&img);
	buf_release(&plain);
	free(fw);
	EVP_PKEY_free(sign);
	EVP_PKEY_free(dev[0]);
	EVP_PKEY_free(dev[1]);
	return 0;
}
