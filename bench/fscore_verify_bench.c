/*
 * fscore_verify_bench.c - what libotadev's image verification costs a
 * simulated device in otacd-fleetsim --engine core (issue 14): the bytes
 * are rebuilt from the shared image by the sparse flash (port_sim.c), then
 * the core's own otadev_image_parse and otadev_image_verify hash them and
 * check the ECDSA P-256 signature.  Measured per device with every
 * signature checked (--verify-every) and with the signature memo (the
 * default), and the bare SHA-256 of the same bytes as the baseline, in the
 * same run.
 *
 *   fscore-verify-bench [SIZE_KIB [DEVICES]]     (default 64 KiB, 2000)
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "../common/util.h"
#include "../fleetsim/port_sim.h"
#include "../orchestrator/mcuboot.h"

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static const struct otadev_hooks hooks = {
	.flash_read = psim_h_read,
	.sha256_begin = psim_h_sha_begin,
	.sha256_update = psim_h_sha_update,
	.sha256_end = psim_h_sha_end,
	.verify = psim_h_verify,
};

/* n devices, each holding the whole image in its secondary slot: parse + verify. */
static double run(struct psim_ctx *c, struct psim_dev *devs, int n, struct otadev_key *key, int hash_only)
{
	uint8_t buf[OTADEV_IO_MAX], digest[32];
	double t0 = now_ms();

	for (int i = 0; i < n; i++) {
		struct otadev_image img;
		const char *why = "";
		c->dev = &devs[i];
		if (hash_only) {
			uint32_t size = c->env->img[0]->size;
			psim_h_sha_begin(c);
			for (uint32_t off = 0; off < size; off += sizeof(buf)) {
				uint32_t k = size - off < sizeof(buf) ? size - off : (uint32_t)sizeof(buf);
				psim_h_read(c, 1, off, buf, k);
				psim_h_sha_update(c, buf, k);
			}
			psim_h_sha_end(c, digest);
			continue;
		}
		if (otadev_image_parse(&img, &hooks, c, 1, PSIM_SLOT_SIZE - 4096, buf, sizeof(buf)) < 0 ||
		    otadev_image_verify(&img, &hooks, c, 1, key, 1, buf, sizeof(buf), &why) < 0) {
			fprintf(stderr, "fscore-verify-bench: device %d: %s\n", i, why);
			exit(1);
		}
	}
	return (now_ms() - t0) / n;
}

int main(int argc, char **argv)
{
	size_t kib = argc > 1 ? strtoul(argv[1], NULL, 10) : 64;
	int n = argc > 2 ? atoi(argv[2]) : 2000;
	struct mcuboot_sign_opts o = { .major = 1, .minor = 1, .has_security_counter = 1, .security_counter = 2 };
	EVP_PKEY *pk = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	struct buf img = BUF_INIT;
	uint8_t *body = xmalloc(kib * 1024), *der = NULL;
	struct psim_image im;
	struct psim_ctx *c = xcalloc(1, sizeof(*c));
	struct psim_env env;
	struct psim_dev *devs;
	struct otadev_key key;
	pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
	double hash, every, memo;
	int len;

	for (size_t i = 0; i < kib * 1024; i++)
		body[i] = (uint8_t)(i * 31 + 7);
	buf_init(&img, BUF_NOLIMIT);
	if (!pk || mcuboot_sign(&img, body, kib * 1024, pk, &o) < 0 || (len = i2d_PUBKEY(pk, &der)) <= 0) {
		fprintf(stderr, "fscore-verify-bench: signing: %s\n", ota_error_last());
		return 1;
	}
	memset(&im, 0, sizeof(im));
	im.bytes = (uint8_t *)img.ptr;
	im.size = (uint32_t)img.len;
	im.state = 2;
	memset(&env, 0, sizeof(env));
	env.img[0] = &im;
	env.nimg = 1;
	env.memo_lock = &lock;
	c->env = &env;
	c->md = EVP_MD_CTX_new();
	devs = xcalloc((size_t)n, sizeof(*devs));
	for (int i = 0; i < n; i++) {
		devs[i].slot[1].img = 1;
		devs[i].slot[1].written = im.size;
		devs[i].slot[1].swap_info = 0xff;
	}
	key.der = der;
	key.len = (size_t)len;
	EVP_Digest(der, (size_t)len, key.hash, NULL, EVP_sha256(), NULL);

	hash = run(c, devs, n, &key, 1);
	env.verify_every = 1;
	every = run(c, devs, n, &key, 0);
	env.verify_every = 0;
	memo = run(c, devs, n, &key, 0);
	printf("  image %zu KiB (%u B), %d devices, per device:\n", kib, im.size, n);
	printf("    rebuild + SHA-256 only (baseline): %8.1f us\n", hash * 1000);
	printf("    parse + hash + ECDSA every device: %8.1f us  (%.2fx baseline; %.0f devices/s per core)\n",
	       every * 1000, every / hash, 1000 / every);
	printf("    parse + hash + signature memo:     %8.1f us  (%.2fx baseline; %llu real checks, %llu memo hits)\n",
	       memo * 1000, memo / hash, (unsigned long long)env.verifies - (unsigned long long)n,
	       (unsigned long long)env.verify_hits);
	EVP_MD_CTX_free(c->md);
	free(c);
	free(devs);
	free(body);
	OPENSSL_free(der);
	buf_release(&img);
	EVP_PKEY_free(pk);
	return 0;
}
