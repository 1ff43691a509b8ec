/*
 * otadev_mcuboot.c - the MCUboot image and trailer as a device reads them
 * from its slots, through the flash hooks, a chunk at a time (no heap, no
 * image in RAM).
 *
 * The image format is the one orchestrator/mcuboot.c writes and checks
 * (docs/mcuboot.md); here it is parsed again with bounds on every field,
 * because the bytes came from the network.  The trailer is MCUboot's
 * (bootutil_public.h) with BOOT_MAX_ALIGN 8 and write alignment 1:
 *
 *     slot end - 48  swap_size  (u32)
 *     slot end - 40  swap_info  (low nibble swap type, high nibble image)
 *     slot end - 32  copy_done  (0x01 set, 0xff unset)
 *     slot end - 24  image_ok   (0x01 set, 0xff unset)
 *     slot end - 16  magic      (16 bytes, otadev_boot_magic)
 *
 * and otadev_swap_type() is boot_swap_type()'s table: secondary magic good
 * and image_ok unset -> TEST, set -> PERM; primary magic good, image_ok
 * unset, copy_done set and secondary magic unset -> REVERT; else NONE.
 */
#include "otadev.h"

#include <string.h>

#define IMAGE_MAGIC 0x96f3b83dul
#define TLV_INFO_MAGIC 0x6907u
#define TLV_PROT_INFO_MAGIC 0x6908u
#define TLV_KEYHASH 0x01u
#define TLV_SHA256 0x10u
#define TLV_SEC_CNT 0x50u
#define TLV_ENC_RSA 0x30u            /* the key TLVs: RSA-OAEP, AES-KW, ECIES-P256, */
#define TLV_ENC_X25519_SHA512 0x34u  /* ECIES-X25519, ECIES-X25519-SHA512 */
#define F_ENC_AES128 0x4u
#define F_ENC_AES256 0x8u
#define ENC_TLV_MAX 129u             /* ECIES-P256 with AES-256: 65 + 32 + 32 */

const uint8_t otadev_boot_magic[16] = {
	0x77, 0xc2, 0x95, 0xf3, 0x60, 0xd2, 0xef, 0x7f,
	0x35, 0x52, 0x50, 0x0f, 0x2c, 0xb6, 0x79, 0x80,
};

static uint32_t get16(const uint8_t *p)
{
	return (uint32_t)p[0] | ((uint32_t)p[1] << 8);
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* Walk the TLV area [off+4, end) entry by entry. */
static int walk(struct otadev_image *img, const struct otadev_hooks *h, void *ctx, int slot, uint32_t off,
		uint32_t end, int protected_area, int *have_sha)
{
	uint8_t th[4];
	uint32_t pos = off + 4, type, len;

	while (pos < end) {
		if (end - pos < 4 || h->flash_read(ctx, slot, pos, th, 4) < 0)
			return OTADEV_EINVAL;
		type = get16(th);
		len = get16(th + 2);
		pos += 4;
		if (len > end - pos)
			return OTADEV_EINVAL;
		if (protected_area) {
			if (type == TLV_SEC_CNT) {
				uint8_t v[4];
				if (len != 4 || img->has_counter || h->flash_read(ctx, slot, pos, v, 4) < 0)
					return OTADEV_EINVAL;
				img->has_counter = 1;
				img->security_counter = get32(v);
			} else if (type == TLV_SHA256 || type == TLV_KEYHASH || type == OTADEV_SIG_ECDSA_P256 ||
				   type == OTADEV_SIG_ED25519) {
				return OTADEV_EINVAL;   /* never inside the signed part */
			}
		} else if (type == TLV_SHA256 || type == TLV_KEYHASH) {
			uint8_t *dst = type == TLV_SHA256 ? img->sha256 : img->keyhash;
			if (len != 32 || (type == TLV_SHA256 && *have_sha) ||
			    h->flash_read(ctx, slot, pos, dst, 32) < 0)
				return OTADEV_EINVAL;
			if (type == TLV_SHA256)
				*have_sha = 1;
		} else if (type == OTADEV_SIG_ECDSA_P256 || type == OTADEV_SIG_ED25519) {
			if (img->sig_type || len > sizeof(img->sig) || len < 8 ||
			    (type == OTADEV_SIG_ED25519 && len != 64) || h->flash_read(ctx, slot, pos, img->sig, len) < 0)
				return OTADEV_EINVAL;
			img->sig_type = (int)type;
			img->sig_len = len;
		} else if (type == TLV_SEC_CNT) {
			return OTADEV_EINVAL;   /* the counter must be signed */
		} else if (type >= TLV_ENC_RSA && type <= TLV_ENC_X25519_SHA512) {
			if (img->enc_type)
				return OTADEV_EINVAL;   /* one key TLV, as mcuboot_parse */
			img->enc_type = type;
			img->enc_off = pos;
			img->enc_len = len;
		}
		pos += len;
	}
	return 0;
}

int otadev_slot_encrypted(const struct otadev_hooks *h, void *ctx, int slot)
{
	uint8_t hdr[20];
	if (h->flash_read(ctx, slot, 0, hdr, sizeof(hdr)) < 0)
		return OTADEV_EIO;
	return get32(hdr) == IMAGE_MAGIC && (get32(hdr + 16) & (F_ENC_AES128 | F_ENC_AES256)) != 0;
}

int otadev_image_parse(struct otadev_image *out, const struct otadev_hooks *h, void *ctx, int slot,
		       uint32_t slot_size, uint8_t *buf, size_t cap)
{
	struct otadev_image img;
	uint32_t off, area, m;
	int have_sha = 0, rc;

	memset(&img, 0, sizeof(img));
	if (cap < 32 || slot_size < 64 || h->flash_read(ctx, slot, 0, buf, 32) < 0) {
		rc = OTADEV_EIO;
		goto out;
	}
	rc = OTADEV_EINVAL;
	if (get32(buf) != IMAGE_MAGIC)
		goto out;
	img.header_size = get16(buf + 8);
	img.protected_size = get16(buf + 10);
	img.image_size = get32(buf + 12);
	img.major = buf[20];
	img.minor = buf[21];
	img.revision = (uint16_t)get16(buf + 22);
	img.build = get32(buf + 24);
	m = get32(buf + 16) & (F_ENC_AES128 | F_ENC_AES256);
	if (m == (F_ENC_AES128 | F_ENC_AES256))
		goto out;
	img.enc_keylen = m == F_ENC_AES256 ? 32u : m ? 16u : 0u;
	if (img.header_size < 32 || img.header_size > slot_size || img.image_size > slot_size - img.header_size)
		goto out;
	off = img.header_size + img.image_size;
	if (slot_size - off < 8 || h->flash_read(ctx, slot, off, buf, 4) < 0)
		goto out;
	m = get16(buf);
	if (m == TLV_PROT_INFO_MAGIC) {
		area = get16(buf + 2);
		if (area < 4 || area != img.protected_size || area > slot_size - off ||
		    walk(&img, h, ctx, slot, off, off + area, 1, &have_sha) < 0)
			goto out;
		off += area;
		if (slot_size - off < 4 || h->flash_read(ctx, slot, off, buf, 4) < 0)
			goto out;
		m = get16(buf);
	} else if (img.protected_size) {
		goto out;
	}
	img.signed_len = off;
	if (m != TLV_INFO_MAGIC)
		goto out;
	area = get16(buf + 2);
	if (area < 4 || area > slot_size - off || walk(&img, h, ctx, slot, off, off + area, 0, &have_sha) < 0 ||
	    !have_sha)
		goto out;
	img.tlv_end = off + area;
	rc = 0;
out:
	*out = img;
	return rc;
}

/* Constant-time compare of n bytes. */
static int ct_differ(const uint8_t *a, const uint8_t *b, size_t n)
{
	uint8_t x = 0;
	size_t i;
	for (i = 0; i < n; i++)
		x |= (uint8_t)(a[i] ^ b[i]);
	return x != 0;
}

/* An encrypted image in slot 1: the port unwraps its key from the key TLV
 * (it holds the device's private key).  0, or the refusal / error. */
static int enc_begin(const struct otadev_image *img, const struct otadev_hooks *h, void *ctx, int slot, uint8_t *buf,
		     size_t cap, const char **why)
{
	*why = "the image is encrypted and this device has no decryption key";
	if (!h->enc_key || !h->enc_ctr)
		return OTADEV_EVERIFY;
	*why = "encrypted image has no key TLV (ENC_EC256 0x32 or ENC_X25519 0x33)";
	if (!img->enc_type)
		return OTADEV_EVERIFY;
	*why = "encrypted image's key TLV is longer than any scheme's";
	if (img->enc_len > ENC_TLV_MAX || img->enc_len > cap)
		return OTADEV_EVERIFY;
	if (h->flash_read(ctx, slot, img->enc_off, buf, img->enc_len) < 0)
		return OTADEV_EIO;
	*why = "the image key does not unwrap";
	if (h->enc_key(ctx, (int)img->enc_type, buf, img->enc_len, img->enc_keylen, why) != 0)
		return OTADEV_EVERIFY;
	return 0;
}

/* SHA-256 of the signed region into digest, its body decrypted on the way
 * when decrypt (the header and protected TLVs are in clear). */
static int hash_signed(const struct otadev_image *img, const struct otadev_hooks *h, void *ctx, int slot,
		       uint8_t *buf, size_t cap, int decrypt, uint8_t digest[32])
{
	uint32_t pos = 0, n, b0, b1, body_end = img->header_size + img->image_size;

	if (h->sha256_begin(ctx) < 0)
		return OTADEV_EIO;
	while (pos < img->signed_len) {
		n = img->signed_len - pos;
		if (n > cap)
			n = (uint32_t)cap;
		if (h->flash_read(ctx, slot, pos, buf, n) < 0)
			goto fail;
		b0 = pos > img->header_size ? pos : img->header_size;
		b1 = pos + n < body_end ? pos + n : body_end;
		if (decrypt && b0 < b1 && h->enc_ctr(ctx, b0 - img->header_size, buf + (b0 - pos), b1 - b0) < 0)
			goto fail;
		if (h->sha256_update(ctx, buf, n) < 0)
			goto fail;
		pos += n;
	}
	return h->sha256_end(ctx, digest) < 0 ? OTADEV_EIO : 0;
fail:
	h->sha256_end(ctx, digest);
	return OTADEV_EIO;
}

int otadev_image_verify(const struct otadev_image *img, const struct otadev_hooks *h, void *ctx, int slot,
			const struct otadev_key *keys, int nkeys, uint8_t *buf, size_t cap, const char **why)
{
	uint8_t digest[32];
	int i, rc, decrypt = slot == 1 && img->enc_keylen;

	if (decrypt && (rc = enc_begin(img, h, ctx, slot, buf, cap, why)) != 0)
		return rc;
	rc = hash_signed(img, h, ctx, slot, buf, cap, decrypt, digest);
	if (decrypt)
		h->enc_key(ctx, 0, NULL, 0, 0, why); /* forget the image key */
	*why = "image hash mismatch";
	if (rc < 0)
		return rc;
	if (ct_differ(digest, img->sha256, 32))
		return OTADEV_EVERIFY;
	if (!img->sig_type) {
		*why = "image is not signed";
		return OTADEV_EVERIFY;
	}
	*why = "signed by a key the device does not trust";
	for (i = 0; i < nkeys; i++) {
		if (ct_differ(keys[i].hash, img->keyhash, 32))
			continue;
		if (h->verify(ctx, (enum otadev_sig)img->sig_type, keys[i].der, keys[i].len, digest, img->sig,
			      img->sig_len) != 0) {
			*why = "signature does not verify";
			return OTADEV_EVERIFY;
		}
		*why = "";
		return 0;
	}
	return OTADEV_EVERIFY;
}

static int flag_decode(uint8_t v)
{
	if (v == 0xff)
		return OTADEV_FLAG_UNSET;
	return v == 0x01 ? OTADEV_FLAG_SET : OTADEV_FLAG_BAD;
}

int otadev_trailer_read(struct otadev_trailer *out, const struct otadev_hooks *h, void *ctx, int slot,
			uint32_t slot_size)
{
	uint8_t t[OTADEV_TR_SWAP_SIZE];
	size_t i;
	int erased = 1;

	memset(out, 0, sizeof(*out));
	if (slot_size < OTADEV_TR_SWAP_SIZE || h->flash_read(ctx, slot, slot_size - OTADEV_TR_SWAP_SIZE, t, sizeof(t)) < 0)
		return OTADEV_EIO;
	for (i = 0; i < 16; i++)
		erased &= t[OTADEV_TR_SWAP_SIZE - 16 + i] == 0xff;
	if (!memcmp(t + OTADEV_TR_SWAP_SIZE - 16, otadev_boot_magic, 16))
		out->magic = OTADEV_MAGIC_GOOD;
	else
		out->magic = erased ? OTADEV_MAGIC_UNSET : OTADEV_MAGIC_BAD;
	out->image_ok = flag_decode(t[OTADEV_TR_SWAP_SIZE - OTADEV_TR_IMAGE_OK]);
	out->copy_done = flag_decode(t[OTADEV_TR_SWAP_SIZE - OTADEV_TR_COPY_DONE]);
	out->swap_info = t[OTADEV_TR_SWAP_SIZE - OTADEV_TR_SWAP_INFO];
	return 0;
}

int otadev_trailer_set_pending(const struct otadev_hooks *h, void *ctx, uint32_t slot_size, int permanent)
{
	uint8_t info = permanent ? OTADEV_SWAP_PERM : OTADEV_SWAP_TEST, ok = 0x01;

	/* boot_set_pending: swap_info and image_ok first, the magic last: until
	 * its last byte is written the bootloader sees no pending image. */
	if (h->flash_write(ctx, 1, slot_size - OTADEV_TR_SWAP_INFO, &info, 1) < 0 ||
	    (permanent && h->flash_write(ctx, 1, slot_size - OTADEV_TR_IMAGE_OK, &ok, 1) < 0) ||
	    h->flash_write(ctx, 1, slot_size - OTADEV_TR_MAGIC, otadev_boot_magic, 16) < 0)
		return OTADEV_EIO;
	return 0;
}

int otadev_trailer_confirm(const struct otadev_hooks *h, void *ctx, uint32_t slot_size)
{
	struct otadev_trailer t;
	uint8_t ok = 0x01;
	int rc = otadev_trailer_read(&t, h, ctx, 0, slot_size);

	if (rc < 0)
		return rc;
	if (t.magic != OTADEV_MAGIC_GOOD || t.image_ok == OTADEV_FLAG_SET)
		return 0;   /* nothing to confirm (boot_set_confirmed does the same) */
	return h->flash_write(ctx, 0, slot_size - OTADEV_TR_IMAGE_OK, &ok, 1) < 0 ? OTADEV_EIO : 0;
}

int otadev_swap_type(const struct otadev_trailer *p, const struct otadev_trailer *s)
{
	if (s->magic == OTADEV_MAGIC_GOOD && s->image_ok == OTADEV_FLAG_UNSET)
		return OTADEV_SWAP_TEST;
	if (s->magic == OTADEV_MAGIC_GOOD && s->image_ok == OTADEV_FLAG_SET)
		return OTADEV_SWAP_PERM;
	if (p->magic == OTADEV_MAGIC_GOOD && s->magic == OTADEV_MAGIC_UNSET && p->image_ok == OTADEV_FLAG_UNSET &&
	    p->copy_done == OTADEV_FLAG_SET)
		return OTADEV_SWAP_REVERT;
	return OTADEV_SWAP_NONE;
}
