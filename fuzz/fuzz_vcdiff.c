/*
 * fuzz_vcdiff.c - libFuzzer target for libotadev's VCDIFF decoder (issue
 * 15, device/otadev_vcdiff.c): the input is a hostile patch, applied to a
 * fixed 8 KiB base image (byte i = (i * 31 + 7) ^ (i >> 8), the base the
 * seed corpus's xdelta3 patches were made from) into a 64 KiB slot.  The
 * hooks check the decoder's promises: patch reads stay inside the patch,
 * output is written in order and only written bytes are read back.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../device/otadev_vcdiff.c"

#define BASE 8192
#define SLOT 65536

static uint8_t base[BASE], slot[SLOT];
static const uint8_t *patch;
static size_t patch_len, written;

static int p_read(void *ctx, uint32_t off, uint8_t *buf, size_t len)
{
	(void)ctx;
	if (off > patch_len || len > patch_len - off)
		abort(); /* the decoder promised to stay inside the patch */
	memcpy(buf, patch + off, len);
	return 0;
}

static int s_read(void *ctx, uint32_t off, uint8_t *buf, size_t len)
{
	(void)ctx;
	if (off > BASE || len > BASE - off)
		abort(); /* source segments are checked against source_size */
	memcpy(buf, base + off, len);
	return 0;
}

static int t_read(void *ctx, uint32_t off, uint8_t *buf, size_t len)
{
	(void)ctx;
	if (off > written || len > written - off)
		abort(); /* only output already written is read back */
	memcpy(buf, slot + off, len);
	return 0;
}

static int t_write(void *ctx, uint32_t off, const uint8_t *buf, size_t len)
{
	(void)ctx;
	if (off != written || len > SLOT - off)
		abort(); /* in order, inside target_max */
	memcpy(slot + off, buf, len);
	written += len;
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const struct otadev_vcdiff_io io = { p_read, s_read, t_read, t_write, NULL };
	static struct otadev_vcdiff v;
	size_t i;

	if (size > UINT32_MAX)
		return 0;
	for (i = 0; i < BASE; i++)
		base[i] = (uint8_t)((i * 31 + 7) ^ (i >> 8));
	patch = data;
	patch_len = size;
	written = 0;
	(void)otadev_vcdiff_apply(&v, &io, (uint32_t)size, BASE, SLOT);
	return 0;
}
