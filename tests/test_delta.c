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
#include <signal.h>
#include <unistd.h>
#include <jansson.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "../device/otadev.h"
#include "../device/otadev_vcdiff.h"
#include "../orchestrator/mcuboot.h"
#include "../common/httpc.h"
#include "../common/util.h"
#include "devharness.h"
#include "harness.h"
#include "memdev.h"

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
	assert_true(sizeof(struct otadev_vcdiff) <= 4608);
}

/* ---- the update state machine with a delta (otadev.c) ------------------------------ *
 *
 * An in-memory device (NOR slots, a record, a clock) as in test_device.c,
 * and a server whose check-in offers a signed image with a patch from the
 * running one; the patch and the image are served by Range.  The patch can
 * be corrupted, truncated, made from another base, or claim another base. */

#define SLOT (128 * 1024)
#define SECTOR 4096
#define HW "mps2-an385"

struct world {
	struct memdev mem;    /* first: the hooks' ctx is the world */
	struct blob img, patch;
	char sha_hex[65], patch_hex[65], base_hex[65];
	long patch_size_claimed;
	int flip_at;          /* >= 0: flip this patch byte when served */
	int withdrawn;        /* the check-in answers "offer": null */
	long image_served, patch_served;
	uint8_t work[16384] __attribute__((aligned(8)));
	struct otadev_config cfg;
	unsigned char *keyder;
	struct otadev d;
};
_Static_assert(offsetof(struct world, mem) == 0, "the hooks' ctx is the world: mem comes first");

static EVP_PKEY *key_good;

static int m_http(void *ctx, const struct otadev_http_req *rq, struct otadev_http_resp *rs)
{
	struct world *w = ctx;
	rs->len = 0;
	rs->range_total = -1;
	if (!strcmp(rq->path, "/device/v1/checkin") && w->withdrawn) {
		rs->len = (size_t)snprintf(rs->body, rs->cap, "{\"now\": %llu, \"time_scale\": 1, \"next_poll_ms\": 1000,"
					   " \"offer\": null}", (unsigned long long)(1796000000000ull + w->mem.now));
		rs->status = 200;
		return 0;
	}
	if (!strcmp(rq->path, "/device/v1/checkin")) {
		char delta[512] = "";
		if (w->patch.n)
			snprintf(delta, sizeof(delta),
				 ", \"delta\": {\"url\": \"/device/v1/patches/%s\", \"size\": %ld, \"sha256\": \"%s\","
				 " \"base\": \"%s\"}", w->patch_hex, w->patch_size_claimed, w->patch_hex, w->base_hex);
		rs->len = (size_t)snprintf(rs->body, rs->cap,
			"{\"now\": %llu, \"time_scale\": 1, \"next_poll_ms\": 1000, \"offer\": {\"release\": 3,"
			" \"version\": \"1.5.0\", \"security_counter\": 2, \"image\": {\"url\": \"/device/v1/images/%s\","
			" \"sha256\": \"%s\", \"size\": %zu, \"hardware\": \"%s\"}%s}}",
			(unsigned long long)(1796000000000ull + w->mem.now), w->sha_hex, w->sha_hex, w->img.n, HW,
			delta);
		rs->status = 200;
		return 0;
	}
	if (!strncmp(rq->path, "/device/v1/images/", 18)) {
		memdev_serve_range(rq, rs, w->img.p, w->img.n, w->img.n, &w->image_served, -1);
		return 0;
	}
	if (!strncmp(rq->path, "/device/v1/patches/", 19)) {
		memdev_serve_range(rq, rs, w->patch.p, w->patch.n, (size_t)w->patch_size_claimed, &w->patch_served,
				   w->flip_at);
		return 0;
	}
	if (!strcmp(rq->path, "/device/v1/reports")) {
		memdev_accept_reports(rq, rs);
		return 0;
	}
	rs->status = 404;
	return 0;
}

static const struct otadev_hooks HOOKS = {
	.http = m_http, .random = memdev_random, MEMDEV_HOOKS,
};

/* An MCUboot image (the project's signer) of a firmware-shaped body. */
static void signed_image(struct blob *out, const struct blob *body, const char *version, uint32_t counter)
{
	struct mcuboot_sign_opts o;
	struct buf b;
	memset(&o, 0, sizeof(o));
	assert_int_equal(mcuboot_version_parse(version, &o.major, &o.minor, &o.revision, &o.build), 0);
	o.has_security_counter = 1;
	o.security_counter = counter;
	buf_init(&b, 1 << 20);
	assert_int_equal(mcuboot_sign(&b, (const char *)body->p, body->n, key_good, &o), 0);
	out->p = malloc(b.len);
	out->n = b.len;
	memcpy(out->p, b.ptr, b.len);
	buf_release(&b);
}

static void hex_sha(char out[65], const uint8_t *p, size_t n)
{
	unsigned char sha[32];
	EVP_Digest(p, n, sha, NULL, EVP_sha256(), NULL);
	ota_hex(out, sha, 32);
}

/* Factory image 1.4.0 in slot 0; the server offers 1.5.0 with a patch
 * from 'patch_base' (the factory image unless another is given). */
static struct world *world_new(const struct blob *patch_base_body)
{
	struct world *w = calloc(1, sizeof(*w));
	struct blob b1, b2, v1, v2, xd, base_img;
	struct otadev_image parsed;
	uint8_t tmp[512];

	memdev_init(&w->mem, SLOT, SECTOR);
	w->mem.rng = 0x9e3779b9u;
	w->flip_at = -1;
	synth_image(&b1, 42, 60 * 1024);
	synth_release(&b1, &b2, 12 * 1024, 400, 5);
	signed_image(&v1, &b1, "1.4.0", 1);
	signed_image(&v2, &b2, "1.5.0", 2);
	memcpy(w->mem.slot[0], v1.p, v1.n);
	w->img = v2;
	hex_sha(w->sha_hex, v2.p, v2.n);
	if (patch_base_body)
		signed_image(&base_img, patch_base_body, "1.3.0", 1);
	else
		base_img = v1;
	xdelta3_pair(&base_img, &v2, &w->patch, &xd);
	free_blob(&xd);
	if (patch_base_body)
		free_blob(&base_img);
	w->patch_size_claimed = (long)w->patch.n;
	hex_sha(w->patch_hex, w->patch.p, w->patch.n);
	/* "base": the running image's MCUboot SHA256 TLV, as the server knows it */
	assert_int_equal(otadev_image_parse(&parsed, &HOOKS, w, 0, SLOT - 432, tmp, sizeof(tmp)), 0);
	ota_hex(w->base_hex, parsed.sha256, 32);
	memdev_config(&w->cfg, &w->mem, HW, key_good, &w->keyder);
	w->cfg.tags = "\"group\":\"staging\"";
	w->cfg.work = w->work;
	w->cfg.work_len = sizeof(w->work);
	free_blob(&v1);
	free_blob(&b1);
	free_blob(&b2);
	return w;
}

static void world_free(struct world *w)
{
	memdev_release(&w->mem);
	free_blob(&w->img);
	free_blob(&w->patch);
	OPENSSL_free(w->keyder);
	free(w);
}

/* Start the device and step it until it asks for a reboot (1), the power
 * is cut (2), or max_steps pass (0). */
static int run_device(struct world *w, int max_steps)
{
	return memdev_run(&w->mem, &w->d, &HOOKS, w, &w->cfg, max_steps);
}

/* The image waiting in slot 1 for its test boot is the offered one, byte
 * for byte, and MCUboot's pending mark is set. */
static void assert_offered_image_installed(struct world *w)
{
	struct otadev_trailer st;
	assert_memory_equal(w->mem.slot[1], w->img.p, w->img.n);
	assert_int_equal(otadev_trailer_read(&st, &HOOKS, w, 1, SLOT), 0);
	assert_int_equal(st.magic, OTADEV_MAGIC_GOOD);
	assert_int_equal(w->d.rec.phase, OTADEV_REBOOTING);
}

static void offered_patch_rebuilds_the_signed_image_which_is_verified_and_installed(void **state)
{
	struct world *w = world_new(NULL);
	(void)state;
	assert_int_equal(run_device(w, 400), 1);
	assert_offered_image_installed(w);
	assert_int_equal(w->d.n_delta_applied, 1);
	assert_int_equal(w->d.n_delta_fallbacks, 0);
	assert_int_equal(w->image_served, 0);            /* not one byte of the full image */
	assert_true(w->patch_served >= (long)w->patch.n);
	assert_true(w->d.bytes_delta == (uint64_t)w->patch_served && w->d.bytes_full == 0);
	printf("# image %zu B, patch %zu B, patch bytes fetched %ld (%.2f of the image)\n", w->img.n, w->patch.n,
	       w->patch_served, (double)w->patch_served / (double)w->img.n);
	world_free(w);
}

/* Each bad patch is caught (by the decoder, or by the digest of the
 * rebuilt image) and the full image is fetched and installed instead. */
static void assert_falls_back_to_the_full_image(struct world *w)
{
	assert_int_equal(run_device(w, 600), 1);
	assert_offered_image_installed(w);
	assert_int_equal(w->d.n_delta_fallbacks, 1);
	assert_int_equal(w->d.n_delta_applied, 0);
	assert_int_equal(w->image_served, (long)w->img.n);
	assert_int_equal(w->d.bytes_full, w->img.n);
	assert_int_equal(w->d.rec.bad_tries, 0);          /* a bad patch is not a bad image */
	world_free(w);
}

static void corrupt_patch_falls_back_to_the_full_image(void **state)
{
	struct world *w = world_new(NULL);
	(void)state;
	w->flip_at = (int)(w->patch.n / 2);
	assert_falls_back_to_the_full_image(w);
}

static void truncated_patch_falls_back_to_the_full_image(void **state)
{
	struct world *w = world_new(NULL);
	(void)state;
	w->patch.n = w->patch.n * 2 / 3;                  /* served and announced short */
	w->patch_size_claimed = (long)w->patch.n;
	assert_falls_back_to_the_full_image(w);
}

static void wrong_base_patch_falls_back_to_the_full_image(void **state)
{
	struct blob factory, other;
	struct world *w;
	(void)state;
	/* A patch from another base, claiming ours: from the new release's own
	 * body (a server that mixed versions up).  Its COPYs from the source
	 * take the release's changed bytes from there, so on our older base
	 * they rebuild something else, every time.  (A base unlike ours is no
	 * test: its patch is nearly all ADDs, and what it copies, the MCUboot
	 * header's layout, both bases share; the image it rebuilds may then be
	 * right, and it is installed, verified, as it should be.) */
	synth_image(&factory, 42, 60 * 1024);              /* as world_new makes them */
	synth_release(&factory, &other, 12 * 1024, 400, 5);
	w = world_new(&other);
	free_blob(&factory);
	free_blob(&other);
	assert_falls_back_to_the_full_image(w);
}

/* A patch for another running image is not even fetched. */
static void patch_for_another_base_is_not_fetched(void **state)
{
	struct world *w = world_new(NULL);
	(void)state;
	w->base_hex[0] = w->base_hex[0] == '0' ? '1' : '0';
	assert_int_equal(run_device(w, 400), 1);
	assert_offered_image_installed(w);
	assert_int_equal(w->patch_served, 0);
	assert_int_equal(w->d.n_delta_fallbacks, 0);
	assert_int_equal(w->image_served, (long)w->img.n);
	world_free(w);
}

/* An offer withdrawn while its patch is applied, then offered again: the
 * patch starts over and the image lands whole. */
static void withdrawn_offer_mid_patch_starts_the_patch_over(void **state)
{
	struct world *w = world_new(NULL);
	uint32_t wait;
	int i;
	(void)state;
	assert_int_equal(otadev_init(&w->d, &HOOKS, w, &w->cfg), 0);
	for (i = 0; i < 400 && !w->d.delta_active; i++) {
		assert_true(otadev_step(&w->d, &wait) >= 0);
		w->mem.now += wait ? wait : 1;
	}
	assert_true(w->d.delta_active);
	assert_true(otadev_step(&w->d, &wait) >= 0); /* one more window */
	assert_int_equal(w->d.rec.phase, OTADEV_DOWNLOADING);
	w->withdrawn = 1;
	w->d.next_checkin = w->mem.now; /* the halt reaches the device at its next check-in, now */
	for (i = 0; i < 400 && w->d.rec.phase != OTADEV_IDLE; i++) {
		assert_true(otadev_step(&w->d, &wait) >= 0);
		w->mem.now += wait ? wait : 1;
	}
	assert_int_equal(w->d.rec.phase, OTADEV_IDLE);
	w->withdrawn = 0;
	w->d.next_checkin = w->mem.now;
	for (i = 0; i < 600 && !w->d.reboot_requested; i++) {
		assert_true(otadev_step(&w->d, &wait) >= 0);
		w->mem.now += wait ? wait : 1;
	}
	assert_true(w->d.reboot_requested);
	assert_offered_image_installed(w);
	assert_int_equal(w->d.n_delta_applied, 1);
	assert_int_equal(w->d.rec.delta_tries, 1);        /* started afresh with the new offer */
	assert_true(w->patch_served > (long)w->patch.n);  /* the first windows fetched twice */
	assert_int_equal(w->image_served, 0);
	world_free(w);
}

/* Power cuts while the patch is applied: the primary slot is untouched,
 * nothing is marked bootable early, and the update lands. */
static void power_cuts_during_a_delta_keep_the_primary_and_land(void **state)
{
	struct world *w = world_new(NULL);
	uint8_t primary[SLOT];
	int r = 2, cuts = 0;
	(void)state;
	memcpy(primary, w->mem.slot[0], SLOT);
	while (r == 2) {
		struct otadev_trailer st;
		w->mem.budget = 3 + (long)(rng_next(&w->mem.rng) % 60);
		r = run_device(w, 600);
		assert_memory_equal(w->mem.slot[0], primary, SLOT);
		assert_int_equal(otadev_trailer_read(&st, &HOOKS, w, 1, SLOT), 0);
		if (r == 2) {
			cuts++;
			assert_true(st.magic != OTADEV_MAGIC_GOOD || !memcmp(w->mem.slot[1], w->img.p, w->img.n));
		}
		assert_true(cuts < 200);
	}
	w->mem.budget = -1;
	assert_int_equal(r, 1);
	assert_offered_image_installed(w);
	/* at most three patch attempts, then the full image, which resumes per sector */
	assert_true(w->d.rec.delta_tries <= 3);
	printf("# %d power cuts; delta applied %u, fallbacks %u\n", cuts, w->d.n_delta_applied, w->d.n_delta_fallbacks);
	world_free(w);
}

/* ---- the release stage makes the patches (stages/release_delta.c) ------------------- */

static char *delta_pipeline(const char *version, const char *gen, const char *deltas)
{
	return xasprintf("name: fw\nstages:\n"
			 "  - name: build\n"
			 "    steps: [ { run: \"%s > app.bin\" } ]\n"
			 "    artifacts: [ { path: app.bin, type: application, hardware: an385 } ]\n"
			 "  - { name: release, kind: release, needs: [build], version: \"%s\", security_counter: 1, key: k1%s }\n",
			 gen, version, deltas);
}

static void file_blob(const char *dir, const char *name, struct blob *out)
{
	char p[512];
	snprintf(p, sizeof(p), "%s/%s", dir, name);
	assert_int_equal(read_file(p, out), 0);
}

static void release_stage_makes_patches_named_in_the_manifest_that_rebuild_the_signed_image(void **state)
{
	const char *const args[] = { "--local-agents", "1", NULL };
	struct daemon d;
	struct buf out = BUF_INIT;
	struct blob v1, v2, patch;
	char *otactl = h_bin("otactl"), *y, *cfg;
	json_t *man, *dl;
	int64_t run1, run2;
	struct dev dv;
	char err[128];
	(void)state;

	h_init(&d, NULL);
	assert_int_equal(h_sh(&out, "cd %s && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out k1.pem",
			      d.dir), 0);
	cfg = xasprintf("keys:\n  k1: { spec: %s/k1.pem }\n", d.dir);
	free(d.config);
	d.config = xasprintf("%s/config.yml", d.dir);
	ota_write_file_atomic(d.config, cfg, strlen(cfg), 0600);
	free(cfg);
	h_start(&d, args);

	y = delta_pipeline("1.0.0", "seq 1 6000", "");
	run1 = h_trigger(&d, y);
	free(y);
	assert_string_equal(h_wait_run(&d, run1, 30000), "passed");
	/* 1.1.0: an inserted line shifts everything after it, one value changed;
	 * 0.9.0 was never released: skipped with a log line */
	y = delta_pipeline("1.1.0", "seq 1 6000 | sed -e 's/^2000$/2000\\\\nnew/' -e 's/^4444$/4445/'",
			   ", deltas: { from: [1.0.0, 0.9.0] }");
	run2 = h_trigger(&d, y);
	free(y);
	assert_string_equal(h_wait_run(&d, run2, 60000), "passed");

	assert_int_equal(h_sh(&out, "cd %s && %s --url %s --token %s artifacts get %lld/release/manifest.json -o man.json && "
			      "%s --url %s --token %s artifacts get %lld/release/an385/app.bin.signed.bin -o v1.bin && "
			      "%s --url %s --token %s artifacts get %lld/release/an385/app.bin.signed.bin -o v2.bin && "
			      "%s --url %s --token %s artifacts get %lld/release/an385/app.bin.signed.bin.from-1.0.0.vcdiff -o p.vcdiff",
			      d.dir, otactl, d.url, d.token, (long long)run2, otactl, d.url, d.token, (long long)run1, otactl,
			      d.url, d.token, (long long)run2, otactl, d.url, d.token, (long long)run2), 0);
	{
		char p[512];
		snprintf(p, sizeof(p), "%s/man.json", d.dir);
		man = json_load_file(p, 0, NULL);
	}
	assert_non_null(man);
	assert_int_equal(json_array_size(json_object_get(man, "deltas")), 1);
	dl = json_array_get(json_object_get(man, "deltas"), 0);
	assert_string_equal(json_string_value(json_object_get(dl, "from_version")), "1.0.0");
	assert_string_equal(json_string_value(json_object_get(dl, "format")), "vcdiff");
	assert_string_equal(json_string_value(json_object_get(dl, "hardware")), "an385");

	file_blob(d.dir, "v1.bin", &v1);
	file_blob(d.dir, "v2.bin", &v2);
	file_blob(d.dir, "p.vcdiff", &patch);
	{
		char hex[65];
		hex_sha(hex, patch.p, patch.n);
		assert_string_equal(json_string_value(json_object_get(dl, "sha256")), hex);
		hex_sha(hex, v2.p, v2.n);
		assert_string_equal(json_string_value(json_object_get(dl, "to_sha256")), hex);
		assert_int_equal(json_integer_value(json_object_get(dl, "size")), patch.n);
	}
	/* the device's decoder rebuilds the signed 1.1.0 from the signed 1.0.0 */
	memset(&dv, 0, sizeof(dv));
	dv.writes_left = -1;
	assert_int_equal(decode(&dv, &v1, &patch, err, sizeof(err)), 0);
	assert_int_equal(dv.written, v2.n);
	assert_memory_equal(dv.target, v2.p, v2.n);
	assert_true(patch.n * 4 < v2.n);
	printf("# release patch: %zu B for a %zu B signed image\n", patch.n, v2.n);
	/* the provenance names the patch; the release still verifies */
	assert_int_equal(h_sh(&out, "cd %s && %s --url %s --token %s artifacts get %lld/release/provenance.dsse.json -o prov.json && "
			      "python3 -c \"import json,base64;print(base64.b64decode(json.load(open('prov.json'))['payload']).decode())\" "
			      "| grep -c 'app.bin.signed.bin.from-1.0.0.vcdiff'", d.dir, otactl, d.url, d.token, (long long)run2), 0);
	if (h_sh(&out, "%s --url %s --token %s verify %lld", otactl, d.url, d.token,
		 (long long)h_sql_int(&d, "SELECT MAX(id) FROM releases")) != 0)
		fail_msg("otactl verify: %s", buf_cstr(&out));
	free(dv.target);
	free_blob(&v1);
	free_blob(&v2);
	free_blob(&patch);
	json_decref(man);
	buf_release(&out);
	free(otactl);
	h_kill(&d, SIGTERM);
	h_cleanup(&d);
}

/* ---- end to end: otacd offers the patch, otacd-device applies it --------------------- */

static const char *const fw_build_v1 = "seq 1 9000";
static const char *const fw_build_v2 = "seq 1 9000 | sed -e 's/^3000$/3000\\\\nnew code/' -e 's/^7777$/7778/'";

static char *fw_pipeline(const char *version, const char *gen, const char *extra)
{
	return xasprintf("name: fw\nstages:\n"
			 "  - name: build\n"
			 "    steps: [ { run: \"%s > app.bin\" } ]\n"
			 "    artifacts: [ { path: app.bin, name: app.bin, type: application, hardware: mps2-an385 } ]\n"
			 "  - { name: release, kind: release, needs: [build], version: \"%s\", security_counter: 1, key: test%s }\n"
			 "  - name: canary\n    kind: rollout\n    needs: [release]\n"
			 "    steps: [ {percent: 100, hold: 1000h} ]\n    gates: [boots]\n"
			 "gates:\n  boots: { metric: boot_success_rate, min: 0.5, min_devices: 1000 }\n",
			 gen, version, extra);
}

static void otacd_offers_the_patch_and_otacd_device_lands_the_release_with_it(void **state)
{
	struct dh_fleet f;
	struct buf out = BUF_INIT;
	char *otactl = h_bin("otactl"), *bin = h_bin("otacd-device"), *y, *conf, *text, *dir, *log;
	int64_t rel1, rel2;
	uint64_t full_bytes, delta_bytes;
	struct blob v1, v2;
	json_t *s;
	pid_t pid;
	(void)state;

	memset(&f, 0, sizeof(f));
	h_init(&f.d, NULL);
	dh_fleet_start(&f, "dd", 1, "key", "poll_interval: 1s\n");
	/* 1.0.0 released by otacd and running on the device (flashed at the factory) */
	y = fw_pipeline("1.0.0", fw_build_v1, "");
	rel1 = dh_release_of(&f.d, h_trigger(&f.d, y));
	free(y);
	assert_true(rel1 > 0);
	dir = xasprintf("%s/dd-0000", f.d.dir);
	conf = xasprintf("%s/device.conf", dir);
	log = xasprintf("%s.log", conf);
	assert_int_equal(h_sh(&out, "mkdir -p %s && cd %s && %s --url %s --token %s artifacts get "
			      "%lld/release/mps2-an385/app.bin.signed.bin -o v1.img", dir, dir, otactl, f.d.url, f.d.token,
			      (long long)h_sql_int(&f.d, "SELECT run_id FROM releases WHERE version = '1.0.0'")), 0);
	text = xasprintf("url = %s\ndevice = dd-0000\ncredential = %s\nproduct = fw\nhardware = mps2-an385\n"
			 "bootloader = 1.2.0\nprimary = %s/slot0\nsecondary = %s/slot1\nstate = %s/state\n"
			 "key = %s/key.pub\nslot_size = 65536\nsector_size = 4096\nhealth_check = true\nsync = 0\n"
			 "backoff_base_ms = 200\nbackoff_max_ms = 2000\nthrottle_ms = 5\n",
			 f.d.device_url, f.cred[0], dir, dir, dir, f.d.dir);
	assert_int_equal(ota_write_file_atomic(conf, text, strlen(text), 0600), 0);
	free(text);
	assert_int_equal(h_sh(&out, "%s -c %s flash %s/v1.img", bin, conf, dir), 0);
	pid = dh_device_loop(conf);
	/* A first check-in as 1.0.0 (nothing to offer) must be answered before
	 * 1.1.0 is released, or `installed: 1` finds no installed version and
	 * makes no patch.  The device asks again only after an answer, so a
	 * second check-in means the first was answered (and is durable). */
	for (int i = 0; i < 600 && h_device_metric(&f.d, "otacd_device_checkins_total") < 2; i++)
		h_msleep(100);
	assert_true(h_device_metric(&f.d, "otacd_device_checkins_total") >= 2);
	/* 1.0.0 is offered to the device (it reports 1.0.0+BUILD), which
	 * downloads the whole image before it finds it is the one it runs; an
	 * offer that came with the second check-in is downloaded while the
	 * image bytes below are read (an ASan run under load counted 44568,
	 * 1.0.0's size, as 1.1.0's), so wait for the refusal */
	for (int i = 0; i < 600 && h_sh(&out, "grep -q 'refused the offer: image is the one running' %s", log); i++)
		h_msleep(100);

	/* 1.1.0 with a patch from the most installed version (1.0.0, reported as
	 * 1.0.0+BUILD): the device fetches the patch, not the image */
	full_bytes = h_device_metric(&f.d, "otacd_image_bytes_served_total");
	y = fw_pipeline("1.1.0", fw_build_v2, ", deltas: { installed: 1 }"); /* the fleet runs 1.0.0 */
	rel2 = dh_release_of(&f.d, h_trigger(&f.d, y));
	free(y);
	assert_true(rel2 > 0);
	assert_int_equal(dh_fleet_wait(&f.d, rel2, "confirmed", 1, 60000), 1);
	dh_stop(pid);
	s = dh_device_status(NULL, conf);
	assert_string_equal(dh_js(s, "version", NULL), "1.1.0");
	assert_string_equal(dh_js(s, "primary", "version"), "1.1.0");
	json_decref(s);
	assert_int_equal(h_sh(&out, "cd %s && %s --url %s --token %s artifacts get "
			      "%lld/release/mps2-an385/app.bin.signed.bin -o v2.img", dir, otactl, f.d.url, f.d.token,
			      (long long)h_sql_int(&f.d, "SELECT run_id FROM releases WHERE version = '1.1.0'")), 0);
	file_blob(dir, "v1.img", &v1);
	file_blob(dir, "v2.img", &v2);
	delta_bytes = h_device_metric(&f.d, "otacd_delta_bytes_served_total");
	full_bytes = h_device_metric(&f.d, "otacd_image_bytes_served_total") - full_bytes;
	printf("# 1.1.0 (%zu B) landed with %llu patch bytes and %llu image bytes served\n", v2.n,
	       (unsigned long long)delta_bytes, (unsigned long long)full_bytes);
	if (full_bytes) {
		h_sh(&out, "grep -i 'delta\\|update server' %s/otacd.log %s | tail -20", f.d.dir, log);
		fprintf(stderr, "%s\n", buf_cstr(&out));
	}
	assert_int_equal(full_bytes, 0);
	assert_true(delta_bytes > 0 && delta_bytes * 4 < v2.n);
	assert_int_equal(h_sh(&out, "grep -c 'applying a delta' %s", log), 0);
	/* the device no longer runs the patch's base: otacd refuses it the
	 * patch (served only to a device offered the image and on its base) */
	{
		char *sha = h_sql_text(&f.d, "SELECT sha256 FROM artifacts WHERE name LIKE '%.vcdiff'");
		char *url = xasprintf("%s/device/v1/images/%s?device=dd-0000", f.d.device_url, sha);
		struct httpc_response r = { 0 };
		assert_int_equal(httpc_request(&r, "GET", url, f.cred[0], NULL, NULL, 0, 30000), 0);
		assert_int_equal(r.status, 403);
		assert_int_equal(h_device_metric(&f.d, "otacd_delta_bytes_served_total"), delta_bytes);
		httpc_response_release(&r);
		free(url);
		free(sha);
	}
	free_blob(&v1);
	free_blob(&v2);
	free(dir);
	free(conf);
	free(log);
	free(bin);
	free(otactl);
	buf_release(&out);
	dh_fleet_stop(&f);
}

/* ---- installed: N per hardware variant ----------------------------------------- */

/* Pipeline fw2 at version: a.bin for an385 and b.bin for an386 from the
 * shell commands ga and gb, signed, rolled out to 100 % when deltas is set. */
static char *variants_pipeline(const char *version, const char *ga, const char *gb, const char *deltas)
{
	return xasprintf("name: fw2\nstages:\n"
			 "  - name: build\n"
			 "    steps: [ { run: \"%s > a.bin && %s > b.bin\" } ]\n"
			 "    artifacts: [ { path: a.bin, name: a.bin, type: application, hardware: an385 },\n"
			 "                 { path: b.bin, name: b.bin, type: application, hardware: an386 } ]\n"
			 "  - { name: release, kind: release, needs: [build], version: \"%s\", security_counter: 1, key: test%s }\n"
			 "%s",
			 ga, gb, version, deltas ? deltas : "",
			 deltas ? "  - name: canary\n    kind: rollout\n    needs: [release]\n"
				  "    steps: [ {percent: 100, hold: 1000h} ]\n    gates: [boots]\n"
				  "gates:\n  boots: { metric: boot_success_rate, min: 0.5, min_devices: 1000 }\n"
				: "");
}

/* A check-in of device id (credential cred) of hardware hw running version:
 * the offer's delta's from-version as the patch's sha256, or NULL (new ref). */
static json_t *checkin_offer(struct daemon *d, const char *id, const char *cred, const char *hw, const char *version)
{
	json_t *ans = NULL, *o;
	assert_int_equal(h_dev_post(d, "/device/v1/checkin", cred,
				    json_pack("{ss ss ss ss ss si ss}", "device", id, "product", "fw2", "hardware", hw,
					      "bootloader", "1.2.0", "version", version, "security_counter", 0, "slot",
					      "confirmed"),
				    &ans),
			 200);
	o = json_incref(json_object_get(ans, "offer"));
	json_decref(ans);
	if (json_is_null(o)) {
		json_decref(o);
		return NULL;
	}
	return o;
}

/* The fleet: three an385 devices on 1.0.0, two an386 devices on 1.1.0.
 * Counted over the whole product the most installed version is 1.0.0;
 * per variant it is 1.0.0 for an385 and 1.1.0 for an386, and each image
 * of 1.2.0 gets its patch from its own variant's version. */
static void installed_picks_the_most_installed_version_of_each_hardware_variant(void **state)
{
	const char *const args[] = { "--local-agents", "1", NULL };
	static const char *const hw[5] = { "an385", "an385", "an385", "an386", "an386" };
	static const char *const ver[5] = { "1.0.0", "1.0.0", "1.0.0", "1.1.0", "1.1.0" };
	struct daemon d;
	char **cred, *y;
	json_t *man, *dl, *offer = NULL;
	struct buf out = BUF_INIT;
	char *otactl = h_bin("otactl");
	int64_t rel;
	size_t i;
	(void)state;

	h_init(&d, NULL);
	dh_start_signing(&d, args, "poll_interval: 1s\n");
	cred = h_register_devices(&d, "dv", 5);
	y = variants_pipeline("1.0.0", "seq 1 6000", "seq 2 6000", NULL);
	assert_true(dh_release_of(&d, h_trigger(&d, y)) > 0);
	free(y);
	y = variants_pipeline("1.1.0", "seq 1 6001", "seq 2 6001", NULL);
	assert_true(dh_release_of(&d, h_trigger(&d, y)) > 0);
	free(y);
	for (i = 0; i < 5; i++) {
		char id[16];
		snprintf(id, sizeof(id), "dv-%04zu", i);
		json_decref(checkin_offer(&d, id, cred[i], hw[i], ver[i]));
	}
	y = variants_pipeline("1.2.0", "seq 1 6002", "seq 2 6002", ", deltas: { installed: 1 }");
	rel = dh_release_of(&d, h_trigger(&d, y));
	free(y);
	assert_true(rel > 0);

	assert_int_equal(h_sh(&out, "cd %s && %s --url %s --token %s artifacts get %lld/release/manifest.json -o man.json",
			      d.dir, otactl, d.url, d.token,
			      (long long)h_sql_int(&d, "SELECT run_id FROM releases WHERE version = '1.2.0'")), 0);
	{
		char p[512];
		snprintf(p, sizeof(p), "%s/man.json", d.dir);
		man = json_load_file(p, 0, NULL);
	}
	assert_non_null(man);
	{
		char *text = json_dumps(json_object_get(man, "deltas"), JSON_COMPACT);
		print_message("deltas: %s\n", text);
		free(text);
	}
	assert_int_equal(json_array_size(json_object_get(man, "deltas")), 2);
	json_array_foreach(json_object_get(man, "deltas"), i, dl) {
		const char *h = json_string_value(json_object_get(dl, "hardware"));
		assert_string_equal(json_string_value(json_object_get(dl, "from_version")),
				    !strcmp(h, "an385") ? "1.0.0" : "1.1.0");
	}
	/* and each variant's devices are offered their patch */
	for (int waited = 0; waited < 30000 && !offer; waited += 200)
		if (!(offer = checkin_offer(&d, "dv-0003", cred[3], "an386", "1.1.0")))
			h_msleep(200);
	assert_non_null(offer);
	assert_non_null(json_object_get(offer, "delta"));
	json_decref(offer);
	offer = checkin_offer(&d, "dv-0000", cred[0], "an385", "1.0.0");
	assert_non_null(json_object_get(offer, "delta"));
	json_decref(offer);
	/* an an385 device on 1.1.0: no an385 patch from 1.1.0 was made */
	offer = checkin_offer(&d, "dv-0001", cred[1], "an385", "1.1.0");
	assert_non_null(offer);
	assert_null(json_object_get(offer, "delta"));
	json_decref(offer);

	json_decref(man);
	for (i = 0; i < 5; i++)
		free(cred[i]);
	free(cred);
	free(otactl);
	buf_release(&out);
	h_kill(&d, SIGTERM);
	h_cleanup(&d);
}

static int setup(void **state)
{
	(void)state;
	key_good = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	assert_non_null(key_good);
	snprintf(workdir, sizeof(workdir), "/tmp/test_delta.XXXXXX");
	assert_non_null(mkdtemp(workdir));
	return 0;
}

static int teardown(void **state)
{
	char cmd[128];
	(void)state;
	EVP_PKEY_free(key_good);
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
		cmocka_unit_test(offered_patch_rebuilds_the_signed_image_which_is_verified_and_installed),
		cmocka_unit_test(corrupt_patch_falls_back_to_the_full_image),
		cmocka_unit_test(truncated_patch_falls_back_to_the_full_image),
		cmocka_unit_test(wrong_base_patch_falls_back_to_the_full_image),
		cmocka_unit_test(patch_for_another_base_is_not_fetched),
		cmocka_unit_test(power_cuts_during_a_delta_keep_the_primary_and_land),
		cmocka_unit_test(withdrawn_offer_mid_patch_starts_the_patch_over),
		cmocka_unit_test(release_stage_makes_patches_named_in_the_manifest_that_rebuild_the_signed_image),
		cmocka_unit_test(otacd_offers_the_patch_and_otacd_device_lands_the_release_with_it),
		cmocka_unit_test(installed_picks_the_most_installed_version_of_each_hardware_variant),
	};
	cmocka_set_test_filter(getenv("X_ONLY"));
	return cmocka_run_group_tests(tests, setup, teardown);
}
