/*
 * otadev_vcdiff.c - VCDIFF (RFC 3284) decoding in bounded RAM, for delta
 * updates (docs/delivery.md "Delta updates").
 *
 * A VCDIFF window carries three sections, data (bytes for ADD and RUN),
 * instructions, and addresses (for COPY), one after the other.  A decoder
 * that holds a window in RAM needs as much RAM as the encoder's window;
 * this one instead keeps a small read cursor into each section and pulls
 * bytes through the port's patch_read (a file, a flash area or a Range
 * GET), so RAM does not grow with the image or window size.  COPY reads
 * the running image (the source) or output already written (VCDIFF's
 * target addresses and VCD_TARGET windows) through the port; the output
 * is staged in a small buffer and written in order.
 *
 * Taken: RFC 3284's default code table, VCD_SOURCE / VCD_TARGET windows,
 * xdelta3's VCD_APPHEADER (skipped) and per-window Adler-32 (checked).
 * Refused as unsupported: secondary compression (VCD_DECOMPRESS, any
 * Delta_Indicator bit) and application code tables (VCD_CODETABLE):
 * otacd makes its patches with `xdelta3 -S none`, so they never appear.
 */
#include "otadev_vcdiff.h"

#include <string.h>

#define VCD_DECOMPRESS 0x01
#define VCD_CODETABLE 0x02
#define VCD_APPHEADER 0x04 /* xdelta3's extension */

#define VCD_SOURCE 0x01
#define VCD_TARGET 0x02
#define VCD_ADLER32 0x04   /* xdelta3's extension */

enum { INST_NOOP, INST_ADD, INST_RUN, INST_COPY };

struct half {
	uint8_t type, size, mode;
};

static int fail(struct otadev_vcdiff *v, int rc, const char *what, uint32_t at)
{
	char num[11];
	size_t n = 0, len = strlen(what);
	int i = 0;

	if (len > sizeof(v->err) - 24)
		len = sizeof(v->err) - 24;
	memcpy(v->err, what, len);
	memcpy(v->err + len, " at patch byte ", 15);
	n = len + 15;
	do {
		num[i++] = (char)('0' + at % 10);
		at /= 10;
	} while (at);
	while (i > 0)
		v->err[n++] = num[--i];
	v->err[n] = '\0';
	return rc;
}

/* ---- the patch cursors -------------------------------------------------- */

static void cursor_set(struct otadev_vcdiff_cursor *c, uint32_t pos, uint32_t end)
{
	c->pos = pos;
	c->end = end;
	c->buf_off = 0;
	c->buf_len = 0;
}

/* The next byte of c's section; reading past it is a corrupt patch, past
 * the patch itself a truncated one. */
static int cursor_byte(struct otadev_vcdiff *v, struct otadev_vcdiff_cursor *c, uint8_t *out)
{
	if (c->pos >= c->end) {
		if (c->end >= v->patch_size)
			return fail(v, OTADEV_VCDIFF_ETRUNC, "vcdiff: patch ends early", c->pos);
		return fail(v, OTADEV_VCDIFF_ECORRUPT, "vcdiff: read past a section", c->pos);
	}
	if (c->pos < c->buf_off || c->pos - c->buf_off >= c->buf_len) {
		uint32_t n = c->end - c->pos;
		if (n > OTADEV_VCDIFF_BUF)
			n = OTADEV_VCDIFF_BUF;
		if (v->io->patch_read(v->io->ctx, c->pos, c->buf, n) < 0)
			return fail(v, OTADEV_VCDIFF_EIO, "vcdiff: reading the patch failed", c->pos);
		c->buf_off = c->pos;
		c->buf_len = (uint16_t)n;
	}
	*out = c->buf[c->pos - c->buf_off];
	c->pos++;
	return 0;
}

/* RFC 3284 2.2: base-128, most significant digit first; at most 32 bits. */
static int cursor_varint(struct otadev_vcdiff *v, struct otadev_vcdiff_cursor *c, uint32_t *out)
{
	uint32_t x = 0;
	uint8_t b;
	int i, rc;

	for (i = 0; i < 5; i++) {
		if ((rc = cursor_byte(v, c, &b)) < 0)
			return rc;
		if (x > (UINT32_MAX >> 7))
			return fail(v, OTADEV_VCDIFF_ECORRUPT, "vcdiff: integer overflows 32 bits", c->pos);
		x = (x << 7) | (uint32_t)(b & 0x7f);
		if (!(b & 0x80)) {
			*out = x;
			return 0;
		}
	}
	return fail(v, OTADEV_VCDIFF_ECORRUPT, "vcdiff: integer longer than 5 bytes", c->pos);
}

/* ---- output --------------------------------------------------------------- */

static void adler_update(struct otadev_vcdiff *v, const uint8_t *p, size_t n)
{
	uint32_t a = v->adler & 0xffff, b = v->adler >> 16;
	size_t i;
	/* n <= OTADEV_VCDIFF_OUT keeps both sums in 32 bits before the modulo */
	for (i = 0; i < n; i++) {
		a += p[i];
		b += a;
		if ((i & 1023) == 1023) {
			a %= 65521;
			b %= 65521;
		}
	}
	v->adler = ((b % 65521) << 16) | (a % 65521);
}

static int flush(struct otadev_vcdiff *v)
{
	if (!v->out_used)
		return 0;
	adler_update(v, v->out, v->out_used);
	if (v->io->target_write(v->io->ctx, v->out_flushed, v->out, v->out_used) < 0)
		return fail(v, OTADEV_VCDIFF_EIO, "vcdiff: writing the output failed", v->data.pos);
	v->out_flushed += v->out_used;
	v->out_used = 0;
	return 0;
}

/* Room in the staging buffer, flushing it when full. */
static int out_room(struct otadev_vcdiff *v, uint32_t *room)
{
	int rc;
	if (v->out_used == OTADEV_VCDIFF_OUT && (rc = flush(v)) < 0)
		return rc;
	*room = (uint32_t)(OTADEV_VCDIFF_OUT - v->out_used);
	return 0;
}

static int emit(struct otadev_vcdiff *v, uint8_t b)
{
	uint32_t room;
	int rc;
	if ((rc = out_room(v, &room)) < 0)
		return rc;
	v->out[v->out_used++] = b;
	v->win_done++;
	return 0;
}

/* ---- instructions ---------------------------------------------------------- */

/* RFC 3284 5.6: the default code table, computed rather than stored. */
static void code_table(uint8_t op, struct half h[2])
{
	unsigned k;

	h[0].type = h[1].type = INST_NOOP;
	h[0].size = h[1].size = h[0].mode = h[1].mode = 0;
	if (op == 0) {
		h[0].type = INST_RUN;
	} else if (op <= 18) {
		h[0].type = INST_ADD;
		h[0].size = (uint8_t)(op - 1);
	} else if (op <= 162) {
		k = op - 19u;
		h[0].type = INST_COPY;
		h[0].mode = (uint8_t)(k / 16);
		h[0].size = (uint8_t)(k % 16 ? k % 16 + 3 : 0);
	} else if (op <= 234) {
		k = op - 163u;
		h[0].type = INST_ADD;
		h[0].size = (uint8_t)((k % 12) / 3 + 1);
		h[1].type = INST_COPY;
		h[1].size = (uint8_t)(k % 3 + 4);
		h[1].mode = (uint8_t)(k / 12);
	} else if (op <= 246) {
		k = op - 235u;
		h[0].type = INST_ADD;
		h[0].size = (uint8_t)(k % 4 + 1);
		h[1].type = INST_COPY;
		h[1].size = 4;
		h[1].mode = (uint8_t)(6 + k / 4);
	} else {
		h[0].type = INST_COPY;
		h[0].size = 4;
		h[0].mode = (uint8_t)(op - 247u);
		h[1].type = INST_ADD;
		h[1].size = 1;
	}
}

/* RFC 3284 5.3: a COPY address through the near and same caches. */
static int decode_addr(struct otadev_vcdiff *v, uint8_t mode, uint32_t here, uint32_t *out)
{
	uint32_t a, d;
	uint8_t b;
	int rc;

	if (mode == 0) {
		if ((rc = cursor_varint(v, &v->addr, &a)) < 0)
			return rc;
	} else if (mode == 1) {
		if ((rc = cursor_varint(v, &v->addr, &d)) < 0)
			return rc;
		if (d > here)
			return fail(v, OTADEV_VCDIFF_ECORRUPT, "vcdiff: COPY address before 0", v->addr.pos);
		a = here - d;
	} else if (mode < 6) {
		if ((rc = cursor_varint(v, &v->addr, &d)) < 0)
			return rc;
		a = v->near[mode - 2] + d;
		if (a < d)
			return fail(v, OTADEV_VCDIFF_ECORRUPT, "vcdiff: COPY address overflows", v->addr.pos);
	} else {
		if ((rc = cursor_byte(v, &v->addr, &b)) < 0)
			return rc;
		a = v->same[(mode - 6u) * 256u + b];
	}
	if (a >= here)
		return fail(v, OTADEV_VCDIFF_ECORRUPT, "vcdiff: COPY from beyond the output", v->addr.pos);
	v->near[v->next_near] = a;
	v->next_near = (v->next_near + 1) % 4;
	v->same[a % (3 * 256)] = a;
	*out = a;
	return 0;
}

/* Bytes of the source segment straight into the staging buffer. */
static int copy_source(struct otadev_vcdiff *v, uint32_t a, uint32_t n)
{
	const struct otadev_vcdiff_io *io = v->io;
	uint32_t room, pos = v->src_pos + a;
	int rc;

	while (n) {
		if ((rc = out_room(v, &room)) < 0)
			return rc;
		if (room > n)
			room = n;
		rc = v->src_is_target ? io->target_read(io->ctx, pos, v->out + v->out_used, room)
		                      : io->source_read(io->ctx, pos, v->out + v->out_used, room);
		if (rc < 0)
			return fail(v, OTADEV_VCDIFF_EIO, "vcdiff: reading the base image failed", v->inst.pos);
		v->out_used = (uint16_t)(v->out_used + room);
		v->win_done += room;
		pos += room;
		n -= room;
	}
	return 0;
}

/* Bytes of this window's output from absolute offset q: written ones read
 * back, staged ones one at a time (they may overlap what they produce). */
static int copy_target(struct otadev_vcdiff *v, uint32_t q, uint32_t n)
{
	uint32_t room;
	int rc;

	while (n) {
		if (q < v->out_flushed) {
			if ((rc = out_room(v, &room)) < 0)
				return rc;
			if (room > n)
				room = n;
			if (room > v->out_flushed - q)
				room = v->out_flushed - q;
			if (v->io->target_read(v->io->ctx, q, v->out + v->out_used, room) < 0)
				return fail(v, OTADEV_VCDIFF_EIO, "vcdiff: reading the output back failed", v->inst.pos);
			v->out_used = (uint16_t)(v->out_used + room);
			v->win_done += room;
			q += room;
			n -= room;
		} else {
			if ((rc = emit(v, v->out[q - v->out_flushed])) < 0)
				return rc;
			q++;
			n--;
		}
	}
	return 0;
}

static int execute(struct otadev_vcdiff *v, const struct half *h)
{
	uint32_t size = h->size, a = 0, i;
	uint8_t b;
	int rc;

	if (h->type == INST_NOOP)
		return 0;
	if (!size && (rc = cursor_varint(v, &v->inst, &size)) < 0)
		return rc;
	if (size > v->win_len - v->win_done)
		return fail(v, OTADEV_VCDIFF_ECORRUPT, "vcdiff: instruction overruns the window", v->inst.pos);
	switch (h->type) {
	case INST_RUN:
		if ((rc = cursor_byte(v, &v->data, &b)) < 0)
			return rc;
		for (i = 0; i < size; i++)
			if ((rc = emit(v, b)) < 0)
				return rc;
		return 0;
	case INST_ADD:
		for (i = 0; i < size; i++)
			if ((rc = cursor_byte(v, &v->data, &b)) < 0 || (rc = emit(v, b)) < 0)
				return rc;
		return 0;
	default:
		if ((rc = decode_addr(v, h->mode, v->src_len + v->win_done, &a)) < 0)
			return rc;
		if (a < v->src_len) {
			uint32_t n = v->src_len - a < size ? v->src_len - a : size;
			if ((rc = copy_source(v, a, n)) < 0)
				return rc;
			size -= n;
			a += n;
		}
		/* v->out_off is where this window's output starts */
		return size ? copy_target(v, v->out_off + (a - v->src_len), size) : 0;
	}
}

/* ---- headers ----------------------------------------------------------------- */

static int file_header(struct otadev_vcdiff *v)
{
	static const uint8_t magic[4] = { 0xd6, 0xc3, 0xc4, 0x00 };
	struct otadev_vcdiff_cursor *c = &v->inst;
	uint32_t skip;
	uint8_t b, ind;
	int i, rc;

	cursor_set(c, 0, v->patch_size);
	for (i = 0; i < 4; i++) {
		if ((rc = cursor_byte(v, c, &b)) < 0)
			return rc;
		if (b != magic[i])
			return fail(v, OTADEV_VCDIFF_ECORRUPT, "vcdiff: not a VCDIFF patch", c->pos - 1);
	}
	if ((rc = cursor_byte(v, c, &ind)) < 0)
		return rc;
	if (ind & (VCD_DECOMPRESS | VCD_CODETABLE))
		return fail(v, OTADEV_VCDIFF_EUNSUP, "vcdiff: secondary compression or code table (make it with -S none)", 4);
	if (ind & ~(VCD_DECOMPRESS | VCD_CODETABLE | VCD_APPHEADER))
		return fail(v, OTADEV_VCDIFF_ECORRUPT, "vcdiff: unknown header bits", 4);
	if (ind & VCD_APPHEADER) {
		if ((rc = cursor_varint(v, c, &skip)) < 0)
			return rc;
		if (skip > v->patch_size - c->pos)
			return fail(v, OTADEV_VCDIFF_ETRUNC, "vcdiff: application header past the end", c->pos);
		c->pos += skip;
	}
	v->patch_off = c->pos;
	return 0;
}

static int window_header(struct otadev_vcdiff *v)
{
	struct otadev_vcdiff_cursor *c = &v->inst;
	uint32_t delta_len, start, data_len, inst_len, addr_len, i;
	uint64_t end;
	uint8_t ind, delta_ind, b;
	int rc;

	cursor_set(c, v->patch_off, v->patch_size);
	if ((rc = cursor_byte(v, c, &ind)) < 0)
		return rc;
	if (ind & ~(VCD_SOURCE | VCD_TARGET | VCD_ADLER32) || (ind & VCD_SOURCE && ind & VCD_TARGET))
		return fail(v, OTADEV_VCDIFF_ECORRUPT, "vcdiff: bad window indicator", v->patch_off);
	v->src_len = v->src_pos = 0;
	v->src_is_target = (ind & VCD_TARGET) != 0;
	if (ind & (VCD_SOURCE | VCD_TARGET)) {
		if ((rc = cursor_varint(v, c, &v->src_len)) < 0 || (rc = cursor_varint(v, c, &v->src_pos)) < 0)
			return rc;
		if ((uint64_t)v->src_pos + v->src_len > (v->src_is_target ? v->out_off : v->source_size))
			return fail(v, OTADEV_VCDIFF_ECORRUPT, "vcdiff: source segment outside the base image (wrong base?)", c->pos);
	}
	if ((rc = cursor_varint(v, c, &delta_len)) < 0)
		return rc;
	start = c->pos;
	if ((rc = cursor_varint(v, c, &v->win_len)) < 0 || (rc = cursor_byte(v, c, &delta_ind)) < 0 ||
	    (rc = cursor_varint(v, c, &data_len)) < 0 || (rc = cursor_varint(v, c, &inst_len)) < 0 ||
	    (rc = cursor_varint(v, c, &addr_len)) < 0)
		return rc;
	if (delta_ind)
		return fail(v, OTADEV_VCDIFF_EUNSUP, "vcdiff: compressed sections (make it with -S none)", c->pos);
	v->has_adler = (ind & VCD_ADLER32) != 0;
	v->adler_want = 0;
	for (i = 0; v->has_adler && i < 4; i++) {
		if ((rc = cursor_byte(v, c, &b)) < 0)
			return rc;
		v->adler_want = (v->adler_want << 8) | b;
	}
	end = (uint64_t)c->pos + data_len + inst_len + addr_len;
	if (end - start != delta_len)
		return fail(v, OTADEV_VCDIFF_ECORRUPT, "vcdiff: window length disagrees with its sections", start);
	if (end > v->patch_size)
		return fail(v, OTADEV_VCDIFF_ETRUNC, "vcdiff: patch ends inside a window", v->patch_size);
	if (v->win_len > v->target_max - v->out_off || (uint64_t)v->src_len + v->win_len > UINT32_MAX)
		return fail(v, OTADEV_VCDIFF_ECORRUPT, "vcdiff: output larger than the slot", start);
	cursor_set(&v->data, c->pos, c->pos + data_len);
	cursor_set(&v->inst, v->data.end, v->data.end + inst_len);
	cursor_set(&v->addr, v->inst.end, v->inst.end + addr_len);
	return 0;
}

/* ---- API ------------------------------------------------------------------------ */

void otadev_vcdiff_begin(struct otadev_vcdiff *v, const struct otadev_vcdiff_io *io,
                         uint32_t patch_size, uint32_t source_size, uint32_t target_max,
                         uint32_t patch_off, uint32_t out_off)
{
	memset(v, 0, sizeof(*v));
	v->io = io;
	v->patch_size = patch_size;
	v->source_size = source_size;
	v->target_max = target_max;
	v->patch_off = patch_off;
	v->out_off = out_off;
	v->header_done = patch_off != 0;
}

int otadev_vcdiff_step(struct otadev_vcdiff *v)
{
	struct half h[2];
	uint8_t op;
	int rc;

	v->err[0] = '\0';
	if (!v->header_done) {
		if ((rc = file_header(v)) < 0)
			return rc;
		v->header_done = 1;
	}
	if (v->patch_off >= v->patch_size)
		return 0;
	if ((rc = window_header(v)) < 0)
		return rc;
	memset(v->near, 0, sizeof(v->near));
	memset(v->same, 0, sizeof(v->same));
	v->next_near = 0;
	v->win_done = 0;
	v->adler = 1;
	v->out_flushed = v->out_off;
	v->out_used = 0;
	while (v->inst.pos < v->inst.end) {
		if ((rc = cursor_byte(v, &v->inst, &op)) < 0)
			return rc;
		code_table(op, h);
		if ((rc = execute(v, &h[0])) < 0 || (rc = execute(v, &h[1])) < 0)
			return rc;
	}
	if ((rc = flush(v)) < 0)
		return rc;
	if (v->win_done != v->win_len || v->data.pos != v->data.end || v->addr.pos != v->addr.end)
		return fail(v, OTADEV_VCDIFF_ECORRUPT, "vcdiff: window sections not used up", v->inst.pos);
	if (v->has_adler && v->adler != v->adler_want)
		return fail(v, OTADEV_VCDIFF_ECORRUPT, "vcdiff: window checksum mismatch (corrupt patch or wrong base)", v->patch_off);
	v->patch_off = v->addr.end;
	v->out_off += v->win_len;
	return v->patch_off < v->patch_size ? 1 : 0;
}

int otadev_vcdiff_apply(struct otadev_vcdiff *v, const struct otadev_vcdiff_io *io,
                        uint32_t patch_size, uint32_t source_size, uint32_t target_max)
{
	int rc;

	otadev_vcdiff_begin(v, io, patch_size, source_size, target_max, 0, 0);
	while ((rc = otadev_vcdiff_step(v)) > 0)
		;
	return rc;
}
