/*
 * delta_bench.c - libotadev's VCDIFF decoder on real patches (issue 15,
 * docs/delivery.md "Delta updates"): apply time and RAM.
 *
 *   delta-bench OLD PATCH NEW [ROUNDS]
 *
 * Applies PATCH to OLD ROUNDS times through flash-like hooks (reads of the
 * running image, in-order writes, reads back of written output), checks
 * the output equals NEW, and prints the mean time per apply against the
 * same-run baseline: writing NEW through the same write hook in 512-byte
 * pieces (what a full download costs the device besides the network).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../device/otadev_vcdiff.h"

struct mem {
	uint8_t *p;
	size_t n;
};

static struct mem old_img, patch, new_img, out;
static size_t written;

static int load(const char *path, struct mem *m)
{
	FILE *f = fopen(path, "rb");
	long n;
	if (!f || fseek(f, 0, SEEK_END) < 0 || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) < 0) {
		fprintf(stderr, "delta-bench: cannot read %s\n", path);
		if (f)
			fclose(f);
		return -1;
	}
	m->p = malloc((size_t)n + 1);
	m->n = fread(m->p, 1, (size_t)n, f);
	fclose(f);
	return m->n == (size_t)n ? 0 : -1;
}

static int p_read(void *ctx, uint32_t off, uint8_t *buf, size_t len)
{
	(void)ctx;
	memcpy(buf, patch.p + off, len);
	return 0;
}

static int s_read(void *ctx, uint32_t off, uint8_t *buf, size_t len)
{
	(void)ctx;
	if (off + len > old_img.n)
		return -1;
	memcpy(buf, old_img.p + off, len);
	return 0;
}

static int t_read(void *ctx, uint32_t off, uint8_t *buf, size_t len)
{
	(void)ctx;
	if (off + len > written)
		return -1;
	memcpy(buf, out.p + off, len);
	return 0;
}

static int t_write(void *ctx, uint32_t off, const uint8_t *buf, size_t len)
{
	(void)ctx;
	if (off + len > out.n)
		return -1;
	memcpy(out.p + off, buf, len);
	written = off + len;
	return 0;
}

static double now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

int main(int argc, char **argv)
{
	static const struct otadev_vcdiff_io io = { p_read, s_read, t_read, t_write, NULL };
	static struct otadev_vcdiff v;
	int rounds = argc > 4 ? atoi(argv[4]) : 50, i, rc = 0;
	double t0, apply_us, copy_us;
	size_t off;

	if (argc < 4 || rounds < 1) {
		fprintf(stderr, "usage: delta-bench OLD PATCH NEW [ROUNDS]\n");
		return 2;
	}
	if (load(argv[1], &old_img) < 0 || load(argv[2], &patch) < 0 || load(argv[3], &new_img) < 0)
		return 1;
	out.n = new_img.n + 65536;
	out.p = malloc(out.n);
	t0 = now_us();
	for (i = 0; i < rounds && rc == 0; i++) {
		written = 0;
		rc = otadev_vcdiff_apply(&v, &io, (uint32_t)patch.n, (uint32_t)old_img.n, (uint32_t)out.n);
	}
	apply_us = (now_us() - t0) / rounds;
	if (rc != 0 || written != new_img.n || memcmp(out.p, new_img.p, new_img.n)) {
		fprintf(stderr, "delta-bench: the patch did not rebuild NEW (%d: %s)\n", rc, v.err);
		return 1;
	}
	t0 = now_us();
	for (i = 0; i < rounds; i++)
		for (written = 0, off = 0; off < new_img.n; off += 512)
			t_write(NULL, (uint32_t)off, new_img.p + off, new_img.n - off < 512 ? new_img.n - off : 512);
	copy_us = (now_us() - t0) / rounds;
	printf("apply_us=%.1f copy_us=%.1f ratio=%.1f ram=%zu\n", apply_us, copy_us, apply_us / (copy_us > 0 ? copy_us : 1),
	       sizeof(struct otadev_vcdiff));
	return 0;
}
