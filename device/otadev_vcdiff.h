/*
 * otadev_vcdiff.h - a streaming VCDIFF (RFC 3284) decoder for delta updates
 * (issue 15, docs/delivery.md "Delta updates").
 *
 * Rebuilds a new firmware image from the image the device runs (the
 * "source": the active slot) and a patch made by
 * `xdelta3 -e -S none -A -s OLD NEW PATCH`, writing the result in order
 * into the inactive slot.  Portable C99, no heap, no OS header; the RAM it
 * needs is struct otadev_vcdiff (about 3.8 KB, most of it RFC 3284's
 * "same" address cache), whatever the image or window size, because the
 * patch is read through three small cursors (a window's data, instruction
 * and address sections) instead of being held in memory.
 *
 *     struct otadev_vcdiff v;
 *     otadev_vcdiff_begin(&v, &io, patch_size, source_size, target_max, 0, 0);
 *     while ((rc = otadev_vcdiff_step(&v)) > 0) persist(v.patch_off, v.out_off);
 *     if (rc < 0) fall back to the full image (v.err says why)
 *
 * Each step decodes one window; windows are independent (the address
 * caches restart per window), so (patch_off, out_off) after a step is a
 * resume point that survives a power cut: pass it back to
 * otadev_vcdiff_begin.  The patch is hostile: every length, address and
 * instruction is checked against its section, the source, the output
 * written so far and target_max, and xdelta3's per-window Adler-32 is
 * checked when present.  A patch that decodes is still only as good as
 * its output: the caller verifies the whole image (digest, signature,
 * counter) exactly as a full download.
 */
#ifndef OTADEV_VCDIFF_H
#define OTADEV_VCDIFF_H

#include <stddef.h>
#include <stdint.h>

#ifndef OTADEV_VCDIFF_BUF
#define OTADEV_VCDIFF_BUF 256 /* bytes per patch cursor (3 of them): one Range GET each refill */
#endif
#ifndef OTADEV_VCDIFF_OUT
#define OTADEV_VCDIFF_OUT 512 /* output staged before a flash write */
#endif

#define OTADEV_VCDIFF_ECORRUPT -10 /* the patch is malformed or fails its checksum */
#define OTADEV_VCDIFF_ETRUNC -11   /* the patch ends inside a window */
#define OTADEV_VCDIFF_EIO -12      /* a hook failed */
#define OTADEV_VCDIFF_EUNSUP -13   /* valid VCDIFF this decoder does not take */

/*
 * The platform's side.  Every hook returns 0 or a negative value.
 * patch_read fills exactly len bytes at off (off + len <= patch_size is
 * guaranteed); source_read reads the running image; target_read reads back
 * output already passed to target_write, which receives the output in
 * order, each byte once.
 */
struct otadev_vcdiff_io {
	int (*patch_read)(void *ctx, uint32_t off, uint8_t *buf, size_t len);
	int (*source_read)(void *ctx, uint32_t off, uint8_t *buf, size_t len);
	int (*target_read)(void *ctx, uint32_t off, uint8_t *buf, size_t len);
	int (*target_write)(void *ctx, uint32_t off, const uint8_t *buf, size_t len);
	void *ctx;
};

struct otadev_vcdiff_cursor {
	uint32_t pos, end;       /* patch offsets: next byte, section end */
	uint32_t buf_off;        /* patch offset of buf[0] */
	uint16_t buf_len;
	uint8_t buf[OTADEV_VCDIFF_BUF];
};

struct otadev_vcdiff {
	const struct otadev_vcdiff_io *io;
	uint32_t patch_size, source_size, target_max;
	uint32_t patch_off;      /* resume point: the next window's header */
	uint32_t out_off;        /* output bytes written at patch_off */
	int header_done;
	/* the current window */
	struct otadev_vcdiff_cursor data, inst, addr;
	uint32_t src_pos, src_len; /* source segment */
	int src_is_target;         /* VCD_TARGET: the segment is earlier output */
	uint32_t win_len, win_done;
	uint32_t adler, adler_want;
	int has_adler;
	uint32_t near[4];
	unsigned next_near;
	uint32_t same[3 * 256];
	/* output staged for target_write: bytes [out_flushed, out_flushed + out_used) */
	uint32_t out_flushed;
	uint16_t out_used;
	uint8_t out[OTADEV_VCDIFF_OUT];
	char err[96];
};

/*
 * Start (or resume) decoding.  patch_off/out_off: 0, 0 for a new patch,
 * or the values after a completed step.  target_max bounds the output
 * (the slot's room for an image).
 */
void otadev_vcdiff_begin(struct otadev_vcdiff *v, const struct otadev_vcdiff_io *io,
                         uint32_t patch_size, uint32_t source_size, uint32_t target_max,
                         uint32_t patch_off, uint32_t out_off);

/* Decode one window: 1 more to do, 0 the patch is done (v->out_off bytes
 * written), or a negative OTADEV_VCDIFF_E* with v->err. */
int otadev_vcdiff_step(struct otadev_vcdiff *v);

/* The whole patch in one call (tests, the fuzzer): 0 or OTADEV_VCDIFF_E*. */
int otadev_vcdiff_apply(struct otadev_vcdiff *v, const struct otadev_vcdiff_io *io,
                        uint32_t patch_size, uint32_t source_size, uint32_t target_max);

#endif
