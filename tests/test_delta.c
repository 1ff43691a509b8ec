/*
 * test_delta.c - delta updates (issue 15, docs/delivery.md "Delta updates").
 *
 * libotadev's VCDIFF decoder (device/otadev_vcdiff.c) against the real
 * xdelta3: patches made by `xdelta3 -e -S none -A` between two firmware
 * images must decode to the bytes `xdelta3 -d` gives, through hooks that
 * behave like flash (reads of the running slot, in-order writes to the
 * other, reading back what was written), with the decoder's small buffers;
 * a corrupt, truncated or wrong-base patch must fail before anything would
 * be marked bootable; decoding resumes at a window boundary after a cut.
 *
 * Images: the sample firmware's app.bin built twice (two versions, a
 * changed constant) when arm-none-eabi-gcc is there, and always synthetic
 * images shaped like firmware (code-like words with relative branches, a
 * string table, a vector table) changed the way releases change them: an
 * inserted function that shifts everything after it, edited constants,
 * a version string.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../device/otadev_vcdiff.h"

#define MAX_IMAGE (512 * 1024)

struct blob {
	uint8_t *p;
	size_t n;
};

/* ---- flash-like hooks ------------------------------------------------------- */

struct dev {
	struct blob source, patch;
	uint8_t *target;
	size_t target_cap, written;
	int out_of_order;
	long writes_left;     /* cut after this many writes; -1 never */
};

static int patch_read(void *ctx, uint32_t off, uint8_t *buf, size_t len)
{
	struct dev *d = ctx;
	assert_true(off + len <= d->patch.n); /* the decoder's own promise */
	memcpy(buf, d->patch.p + off, len);
	return 0;
}

static int source_read(void *ctx, uint32_t off, uint8_t *buf, size_t len)
{
	struct dev *d = ctx;
	if (off + len > d->source.n)
		return -1;
	memcpy(buf, d->source.p + off, len);
	return 0;
}

static int target_read(void *ctx, uint32_t off, uint8_t *buf, size_t len)
{
	struct dev *d = ctx;
	if (off + len > d->written)
		return -1; /* only what was written may be read back */
	memcpy(buf, d->target + off, len);
	return 0;
}

static int target_write(void *ctx, uint32_t off, const uint8_t *buf, size_t len)
{
	struct dev *d = ctx;
	if (d->writes_left == 0)
		return -1;
	if (d->writes_left > 0)
		d->writes_left--;
	if (off != d->written)
		d->out_of_order = 1;
	if (off + len > d->target_cap)
		return -1;
	memcpy(d->target + off, buf, len);
	d->written = off + len;
	return 0;
}

static const struct otadev_vcdiff_io hooks = { patch_read, source_read, target_read, target_write, NULL };

/* ---- files and xdelta3 --------------------------------------------------------- */

static char workdir[64];

static void path_in(char *out, size_t cap, const char *name)
{
	snprintf(out, cap, "%s/%s", workdir, name);
}

static void write_file(const char *name, const struct blob *b)
{
	char p[128];
	FILE *f;
	path_in(p, sizeof(p), name);
	f = fopen(p, "wb");
	assert_non_null(f);
	assert_int_equal(fwrite(b->p, 1, b->n, f), b->n);
	assert_int_equal(fclose(f), 0);
}

static int read_file(const char *path, struct blob *out)
{
	FILE *f = fopen(path, "rb");
	long n;
	if (!f)
		return -1;
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	out->p = malloc(n ? (size_t)n : 1);
	out->n = fread(out->p, 1, (size_t)n, f);
	fclose(f);
	return out->n == (size_t)n ? 0 : -1;
}

static int run(const char *cmd)
{
	int st = system(cmd);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* The real xdelta3 makes the patch OLD -> NEW, then decodes it itself. */
static void xdelta3_pair(const struct blob *old, const struct blob *new_, struct blob *patch, struct blob *xd_out)
{
	char cmd[512], p[128];
	write_file("old.bin", old);
	write_file("new.bin", new_);
	snprintf(cmd, sizeof(cmd),
	         "cd %s && xdelta3 -f -e -S none -A -W 16384 -s old.bin new.bin patch.vcdiff && "
	         "xdelta3 -f -d -s old.bin patch.vcdiff xd.bin", workdir);
	assert_int_equal(run(cmd), 0);
	path_in(p, sizeof(p), "patch.vcdiff");
	assert_int_equal(read_file(p, patch), 0);
	path_in(p, sizeof(p), "xd.bin");
	assert_int_equal(read_file(p, xd_out), 0);
}

static int decode(struct dev *d, const struct blob *source, const struct blob *patch, char *err, size_t errcap)
{
	static struct otadev_vcdiff v; /* as on a device: one static context */
	struct otadev_vcdiff_io io = hooks;
	int rc;

	d->source = *source;
	d->patch = *patch;
	d->target_cap = MAX_IMAGE;
	d->target = calloc(1, MAX_IMAGE);
	d->written = 0;
	d->out_of_order = 0;
	io.ctx = d;
	rc = otadev_vcdiff_apply(&v, &io, (uint32_t)patch->n, (uint32_t)source->n, MAX_IMAGE);
	if (err)
		snprintf(err, errcap, "%s", v.err);
	return rc;
}

/* ---- images shaped like firmware ------------------------------------------------- */

static uint32_t rng_next(uint32_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 17;
	*s ^= *s << 5;
	return *s;
}

/* A vector table, "functions" of Thumb-like halfwords with BL offsets
 * relative to their position, and a string table. */
static void synth_image(struct blob *out, uint32_t seed, size_t size)
{
	uint32_t s = seed;
	size_t i;
	out->p = malloc(size);
	out->n = size;
	for (i = 0; i < 256; i += 4) {
		uint32_t vec = 0x00000400u + (uint32_t)i * 37u;
		memcpy(out->p + i, &vec, 4);
	}
	for (; i + 1 < size * 3 / 4; i += 2) {
		uint16_t hw = (uint16_t)(rng_next(&s) % 23 < 3 ? 0xf000 | ((size - i) >> 1 & 0x7ff) : 0x4600 + rng_next(&s) % 64);
		memcpy(out->p + i, &hw, 2);
	}
	for (; i < size; i++)
		out->p[i] = (uint8_t)("sensor-node: temperature %d.%02d C\0uart: frame error\0"[i % 52]);
}

/* What a release does to an image: a function inserted at 'at' (every
 * later position-dependent word changes), constants edited, the version
 * string replaced. */
static void synth_release(const struct blob *old, struct blob *out, size_t at, size_t inserted, uint32_t seed)
{
	uint32_t s = seed;
	size_t i;
	out->n = old->n + inserted;
	out->p = malloc(out->n);
	memcpy(out->p, old->p, at);
	for (i = 0; i < inserted; i++)
		out->p[at + i] = (uint8_t)rng_next(&s);
	memcpy(out->p + at + inserted, old->p + at, old->n - at);
	for (i = at + inserted; i + 1 < out->n * 3 / 4; i += 2) {
		uint16_t hw;
		memcpy(&hw, out->p + i, 2);
		if ((hw & 0xf800) == 0xf000) {
			hw = (uint16_t)(0xf000 | ((hw + inserted / 2) & 0x7ff));
			memcpy(out->p + i, &hw, 2);
		}
	}
	for (i = 0; i < 40; i++)
		out->p[300 + rng_next(&s) % (out->n / 2)] ^= (uint8_t)(1 + rng_next(&s) % 255);
	memcpy(out->p + out->n - 64, "version 1.5.0", 13);
}

static void free_blob(struct blob *b)
{
	free(b->p);
	b->p = NULL;
	b->n = 0;
}

/* ---- tests --------------------------------------------------------------------------- */

static void assert_decodes_like_xdelta3(const struct blob *old, const struct blob *new_)
{
	struct blob patch, xd;
	struct dev d;
	char err[128];
	int rc;

	memset(&d, 0, sizeof(d));
	d.writes_left = -1;
	xdelta3_pair(old, new_, &patch, &xd);
	assert_int_equal(xd.n, new_->n);
	assert_memory_equal(xd.p, new_->p, new_->n);
	rc = decode(&d, old, &patch, err, sizeof(err));
	if (rc)
		fail_msg("decode: %d %s", rc, err);
	assert_false(d.out_of_order);
	assert_int_equal(d.written, xd.n);
	assert_memory_equal(d.target, xd.p, xd.n);
	assert_true(patch.n < new_->n); /* a delta worth sending */
	free(d.target);
	free_blob(&patch);
	free_blob(&xd);
}

static void decoder_output_equals_xdelta3_on_synthetic_firmware_releases(void **state)
{
	struct blob v1, v2, v3;
	(void)state;
	synth_image(&v1, 0x1234567, 96 * 1024);
	synth_release(&v1, &v2, 20 * 1024, 300, 7);
	synth_release(&v2, &v3, 60 * 1024, 1200, 9);
	assert_decodes_like_xdelta3(&v1, &v2);
	assert_decodes_like_xdelta3(&v2, &v3);
	assert_decodes_like_xdelta3(&v1, &v3);
	free_blob(&v1);
	free_blob(&v2);
	free_blob(&v3);
}

/* xdelta3 also copies from the new image itself (target addresses, runs):
 * a new image with repeats and no source overlap exercises those paths. */
static void decoder_handles_target_copies_and_runs(void **state)
{
	struct blob v1, v2;
	size_t i;
	(void)state;
	synth_image(&v1, 99, 40 * 1024);
	v2.n = 80 * 1024;
	v2.p = malloc(v2.n);
	for (i = 0; i < v2.n; i++)
		v2.p[i] = (uint8_t)(i < 1000 ? 0xff : (i / 3000) % 2 ? v1.p[i % v1.n] : (uint8_t)(i * 7 / 5));
	memcpy(v2.p + 50000, v2.p + 9000, 4000); /* a repeat far back in the output */
	assert_decodes_like_xdelta3(&v1, &v2);
	free_blob(&v1);
	free_blob(&v2);
}

/* The sample firmware built for two versions with a changed constant. */
static void decoder_output_equals_xdelta3_on_sensor_node_images(void **state)
{
	const char *src = getenv("OTACD_SRC");
	char cmd[1024], p[256];
	struct blob v1, v2;
	(void)state;
	if (!src || run("command -v arm-none-eabi-gcc >/dev/null 2>&1") != 0)
		skip();
	snprintf(cmd, sizeof(cmd),
	         "set -e; cd %s && cp -R '%s/examples/sensor-node' sn && cd sn && "
	         "make -s OTADEV='%s/device' VERSION=1.4.0 >/dev/null && cp build/mps2-an385/app.bin ../sn1.bin && "
	         "sed -i 's/\\(#define [A-Z_]*PERIOD[A-Z_]* *\\)[0-9][0-9]*/\\1 250/' src/*.h src/*.c; "
	         "make -s OTADEV='%s/device' VERSION=1.5.0 >/dev/null && cp build/mps2-an385/app.bin ../sn2.bin",
	         workdir, src, src, src);
	assert_int_equal(run(cmd), 0);
	path_in(p, sizeof(p), "sn1.bin");
	assert_int_equal(read_file(p, &v1), 0);
	path_in(p, sizeof(p), "sn2.bin");
	assert_int_equal(read_file(p, &v2), 0);
	assert_true(v1.n != v2.n || memcmp(v1.p, v2.p, v1.n));
	assert_decodes_like_xdelta3(&v1, &v2);
	free_blob(&v1);
	free_blob(&v2);
}

/* A corrupt, truncated or wrong-base patch fails with a reason, never
 * producing the new image; the caller then fetches the full one. */
static void corrupt_truncated_and_wrong_base_patches_are_detected(void **state)
{
	struct blob v1, v2, other, patch, xd, bad;
	struct dev d;
	char err[128];
	size_t i;
	int rc, detected = 0, trials = 0;
	(void)state;

	synth_image(&v1, 5, 64 * 1024);
	synth_release(&v1, &v2, 10 * 1024, 500, 11);
	synth_image(&other, 6, 64 * 1024);
	xdelta3_pair(&v1, &v2, &patch, &xd);
	memset(&d, 0, sizeof(d));
	d.writes_left = -1;

	/* wrong base: the patch applied to another image */
	rc = decode(&d, &other, &patch, err, sizeof(err));
	assert_int_equal(rc, OTADEV_VCDIFF_ECORRUPT);
	assert_non_null(strstr(err, "checksum"));
	free(d.target);

	/* truncated at every 97th length */
	for (i = 1; i < patch.n; i += 97) {
		bad.p = patch.p;
		bad.n = i;
		rc = decode(&d, &v1, &bad, err, sizeof(err));
		assert_true(rc < 0);
		assert_true(rc == OTADEV_VCDIFF_ETRUNC || rc == OTADEV_VCDIFF_ECORRUPT);
		free(d.target);
	}

	/* a byte flipped anywhere: an error, or (a flip the format cannot see,
	 * e.g. in the skipped header) output that still equals the new image */
	bad.n = patch.n;
	bad.p = malloc(patch.n);
	for (i = 0; i < patch.n; i += 13) {
		memcpy(bad.p, patch.p, patch.n);
		bad.p[i] ^= 0x5a;
		rc = decode(&d, &v1, &bad, err, sizeof(err));
		trials++;
		if (rc < 0)
			detected++;
		else if (rc == 0 && !(d.written == v2.n && !memcmp(d.target, v2.p, v2.n)))
			fail_msg("flip at %zu decoded to a different image without an error", i);
		free(d.target);
	}
	assert_true(detected >= trials * 9 / 10);
	printf("# patch %zu B: %d of %d single-byte flips detected by the decoder\n", patch.n, detected, trials);

	/* not VCDIFF, or compressed with a secondary compressor */
	memcpy(bad.p, patch.p, patch.n);
	bad.p[0] = 'P';
	assert_int_equal(decode(&d, &v1, &bad, err, sizeof(err)), OTADEV_VCDIFF_ECORRUPT);
	free(d.target);
	memcpy(bad.p, patch.p, patch.n);
	bad.p[4] |= 0x01;
	assert_int_equal(decode(&d, &v1, &bad, err, sizeof(err)), OTADEV_VCDIFF_EUNSUP);
	free(d.target);

	free_blob(&bad);
	free_blob(&v1);
	free_blob(&v2);
	free_blob(&other);
	free_blob(&patch);
	free_blob(&xd);
}

/* A power cut mid-window: the step fails, and decoding resumes from the
 * last completed window's (patch_off, out_off), giving the same image. */
static void decoding_resumes_at_a_window_boundary_after_a_cut(void **state)
{
	static struct otadev_vcdiff v;
	struct blob v1, v2, patch, xd;
	struct dev d;
	struct otadev_vcdiff_io io = hooks;
	uint32_t patch_off = 0, out_off = 0;
	int rc, cuts = 0, steps = 0;
	(void)state;

	synth_image(&v1, 77, 128 * 1024);
	synth_release(&v1, &v2, 30 * 1024, 700, 3);
	xdelta3_pair(&v1, &v2, &patch, &xd);
	memset(&d, 0, sizeof(d));
	d.source = v1;
	d.patch = patch;
	d.target_cap = MAX_IMAGE;
	d.target = calloc(1, MAX_IMAGE);
	io.ctx = &d;
	for (;;) {
		d.writes_left = 40 + (cuts % 5) * 7; /* the "power" lasts 1-2 windows (32 writes each) */
		otadev_vcdiff_begin(&v, &io, (uint32_t)patch.n, (uint32_t)v1.n, MAX_IMAGE, patch_off, out_off);
		d.written = out_off; /* flash holds what the completed windows wrote */
		while ((rc = otadev_vcdiff_step(&v)) > 0) {
			patch_off = v.patch_off; /* "persisted" */
			out_off = v.out_off;
			steps++;
		}
		if (rc == 0)
			break;
		assert_int_equal(rc, OTADEV_VCDIFF_EIO);
		cuts++;
		assert_true(cuts < 1000);
	}
	assert_true(cuts > 0);
	assert_int_equal(v.out_off, v2.n);
	assert_memory_equal(d.target, v2.p, v2.n);
	printf("# %d windows, %d cuts, resumed each time\n", steps + 1, cuts);
	free(d.target);
	free_blob(&v1);
	free_blob(&v2);
	free_blob(&patch);
	free_blob(&xd);
}

static void decoder_ram_is_small_and_fixed(void **state)
{
	(void)state;
	printf("# struct otadev_vcdiff: %zu B\n", sizeof(struct otadev_vcdiff));
	assert_true(sizeof(struct otadev_vcdiff) < 4608);
}

static int setup(void **state)
{
	(void)state;
	snprintf(workdir, sizeof(workdir), "/tmp/test_delta.XXXXXX");
	assert_non_null(mkdtemp(workdir));
	return 0;
}

static int teardown(void **state)
{
	char cmd[128];
	(void)state;
	snprintf(cmd, sizeof(cmd), "rm -rf %s", workdir);
	return run(cmd);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(decoder_output_equals_xdelta3_on_synthetic_firmware_releases),
		cmocka_unit_test(decoder_handles_target_copies_and_runs),
		cmocka_unit_test(decoder_output_equals_xdelta3_on_sensor_node_images),
		cmocka_unit_test(corrupt_truncated_and_wrong_base_patches_are_detected),
		cmocka_unit_test(decoding_resumes_at_a_window_boundary_after_a_cut),
		cmocka_unit_test(decoder_ram_is_small_and_fixed),
	};
	cmocka_set_test_filter(getenv("X_ONLY"));
	return cmocka_run_group_tests(tests, setup, teardown);
}
