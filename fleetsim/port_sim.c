/*
 * port_sim.c - the simulated device's flash, bootloader, crypto and record
 * codec for libotadev (port_sim.h; the transport, clock, status and
 * persistence hooks are core.c's, beside the fleet they simulate).
 *
 * Why sparse: a million devices cannot each hold two slots of image
 * bytes.  A device only ever writes an image in order (libotadev erases a
 * sector, then writes it front to back, and persists the offset per
 * sector), so "bytes [0, written) of image I, except one byte that came
 * wrong" is the whole content of a secondary slot, and the trailer is five
 * fields.  Writes are compared with the shared image as they come (a
 * difference is remembered, not repaired), reads rebuild the bytes, so the
 * core's verification runs on exactly what the device wrote.  A write that
 * is not at the written end (no erase first) is an I/O error, as on NOR.
 *
 * Signatures: every device hashes its slot for real; a signature check is
 * remembered by SHA-256(key, digest, signature) unless verify_every is set
 * (the memo answers exactly what the same check answered before).
 */
#include "port_sim.h"

#include <openssl/evp.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <string.h>

#include "sim.h"

#define END PSIM_SLOT_SIZE
#define TR_START (END - OTADEV_TR_SWAP_SIZE)

/* ---- the record codec ------------------------------------------------------ */

static size_t put_varint(uint8_t *out, size_t pos, size_t cap, size_t v, int *over)
{
	do {
		if (pos >= cap) {
			*over = 1;
			return pos;
		}
		out[pos++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
		v >>= 7;
	} while (v);
	return pos;
}

static int get_varint(const uint8_t *in, size_t len, size_t *pos, size_t *v)
{
	int shift = 0;

	*v = 0;
	while (*pos < len && shift < 28) {
		uint8_t b = in[(*pos)++];
		*v |= (size_t)(b & 0x7f) << shift;
		if (!(b & 0x80))
			return 0;
		shift += 7;
	}
	return -1;
}

int psim_rec_encode(uint8_t *out, size_t cap, const void *rec, const void *tmpl, size_t n)
{
	const uint8_t *a = rec, *t = tmpl;
	size_t i = 0, pos = 0;
	int over = 0;

	while (i < n) {
		size_t z = i, l;
		while (z < n && a[z] == t[z])
			z++;
		if (z == n)
			break;
		l = z;
		/* a literal ends at 4 equal bytes in a row (shorter runs cost more to skip) */
		while (l < n && !(l + 4 <= n && a[l] == t[l] && a[l + 1] == t[l + 1] && a[l + 2] == t[l + 2] &&
				   a[l + 3] == t[l + 3]))
			l++;
		pos = put_varint(out, pos, cap, z - i, &over);
		pos = put_varint(out, pos, cap, l - z, &over);
		if (over || l - z > cap - pos)
			return -1;
		for (size_t k = z; k < l; k++)
			out[pos++] = a[k] ^ t[k];
		i = l;
	}
	return (int)pos;
}

int psim_rec_decode(void *rec, const void *tmpl, size_t n, const uint8_t *in, size_t len)
{
	uint8_t *a = rec;
	const uint8_t *t = tmpl;
	size_t pos = 0, i = 0, z, l;

	memcpy(a, t, n);
	while (pos < len) {
		if (get_varint(in, len, &pos, &z) || get_varint(in, len, &pos, &l) || z > n - i || l > n - i - z ||
		    l > len - pos)
			return -1;
		i += z;
		for (size_t k = 0; k < l; k++)
			a[i + k] ^= in[pos + k];
		i += l;
		pos += l;
	}
	return 0;
}

/* ---- sparse flash ------------------------------------------------------------ */

static struct psim_image *image_of(struct psim_ctx *c, uint16_t img)
{
	return img && img <= c->env->nimg ? c->env->img[img - 1] : NULL;
}

static void patch(uint8_t *buf, uint32_t off, uint32_t len, uint32_t pos, uint8_t v)
{
	if (pos >= off && pos - off < len)
		buf[pos - off] = v;
}

int psim_h_read(void *ctx, int slot, uint32_t off, void *out, uint32_t len)
{
	struct psim_ctx *c = ctx;
	struct psim_slot *s = &c->dev->slot[slot & 1];
	struct psim_image *img = image_of(c, s->img);
	uint8_t *buf = out;

	if (off > END || len > END - off)
		return -1;
	memset(buf, 0xff, len);
	if (img && img->bytes && off < s->written) {
		uint32_t n = s->written - off < len ? s->written - off : len;
		memcpy(buf, img->bytes + off, n);
		if (s->bad && s->bad - 1 >= off && s->bad - 1 < off + n)
			buf[s->bad - 1 - off] ^= s->badx;
	}
	if (off + len <= TR_START)
		return 0;
	for (uint32_t k = 0; k < 16; k++)
		if (s->tr & (PSIM_TR_MAGIC | PSIM_TR_MAGIC_BAD))
			patch(buf, off, len, END - OTADEV_TR_MAGIC + k,
			      s->tr & PSIM_TR_MAGIC ? otadev_boot_magic[k] : 0);
	if (s->tr & PSIM_TR_IMAGE_OK)
		patch(buf, off, len, END - OTADEV_TR_IMAGE_OK, 1);
	if (s->tr & PSIM_TR_COPY_DONE)
		patch(buf, off, len, END - OTADEV_TR_COPY_DONE, 1);
	patch(buf, off, len, END - OTADEV_TR_SWAP_INFO, s->swap_info);
	return 0;
}

/* A power cut before byte `cut` of this write: what reached the flash is
 * the part before it. */
static int cut_here(struct psim_ctx *c, int kind, uint32_t off, uint32_t len, uint32_t *keep)
{
	struct psim_dev *d = c->dev;

	if (d->cut_kind != kind || !d->cut_at)
		return 0;
	if (kind == PSIM_CUT_FLASH && (d->cut_at - 1 < off || d->cut_at - 1 >= off + len))
		return 0;
	*keep = kind == PSIM_CUT_FLASH ? d->cut_at - 1 - off : (d->cut_at - 1) % (len ? len : 1);
	d->cut_at = 0;
	d->cut_kind = PSIM_CUT_NONE;
	c->power_cut = 1;
	return 1;
}

static void trailer_write(struct psim_slot *s, uint32_t off, const uint8_t *b, uint32_t len)
{
	for (uint32_t k = 0; k < len; k++) {
		uint32_t pos = off + k;
		if (pos >= END - OTADEV_TR_MAGIC) {
			if (pos == END - OTADEV_TR_MAGIC)
				s->tr = (uint8_t)((s->tr & ~(PSIM_TR_MAGIC | PSIM_TR_MAGIC_BAD)) | PSIM_TR_MAGIC_BAD);
			if (pos == END - 1 && len >= 16 && !memcmp(b + k - 15, otadev_boot_magic, 16))
				s->tr = (uint8_t)((s->tr & ~PSIM_TR_MAGIC_BAD) | PSIM_TR_MAGIC);
		} else if (pos == END - OTADEV_TR_IMAGE_OK && b[k] == 1) {
			s->tr |= PSIM_TR_IMAGE_OK;
		} else if (pos == END - OTADEV_TR_COPY_DONE && b[k] == 1) {
			s->tr |= PSIM_TR_COPY_DONE;
		} else if (pos == END - OTADEV_TR_SWAP_INFO) {
			s->swap_info = b[k];
		}
	}
}

int psim_h_write(void *ctx, int slot, uint32_t off, const void *buf, uint32_t len)
{
	struct psim_ctx *c = ctx;
	struct psim_slot *s = &c->dev->slot[slot & 1];
	const uint8_t *b = buf;
	struct psim_image *img;
	uint32_t keep = len;
	int cut;

	if (off > END || len > END - off)
		return -1;
	if (off >= TR_START) {
		cut = slot == 1 && cut_here(c, PSIM_CUT_TRAILER, off, len, &keep);
		trailer_write(s, off, b, keep);
		return cut ? -1 : 0;
	}
	cut = slot == 1 && cut_here(c, PSIM_CUT_FLASH, off, len, &keep);
	if (off != s->written)
		return -1;              /* not erased: NOR cannot set bits back */
	if (off == 0 || !s->img)
		s->img = c->dl_img;
	img = image_of(c, s->img);
	if (!img || !img->bytes || off + len > img->size)
		return -1;
	if (!s->bad && memcmp(img->bytes + off, b, keep)) {
		uint32_t k = 0;
		while (img->bytes[off + k] == b[k])
			k++;
		s->bad = off + k + 1;
		s->badx = (uint8_t)(img->bytes[off + k] ^ b[k]);
	}
	s->written = off + keep;
	return cut ? -1 : 0;
}

int psim_h_erase(void *ctx, int slot, uint32_t off, uint32_t len)
{
	struct psim_ctx *c = ctx;
	struct psim_slot *s = &c->dev->slot[slot & 1];

	if (off > END || len > END - off)
		return -1;
	if (off < s->written) {
		s->written = off;
		if (s->bad && s->bad - 1 >= off)
			s->bad = 0;
		if (!off)
			s->img = 0;
	}
	if (off + len > TR_START) {
		s->tr = 0;
		s->swap_info = 0xff;
	}
	return 0;
}

/* ---- crypto -------------------------------------------------------------------- */

int psim_h_sha_begin(void *ctx)
{
	struct psim_ctx *c = ctx;
	return EVP_DigestInit_ex(c->md, EVP_sha256(), NULL) == 1 ? 0 : -1;
}

int psim_h_sha_update(void *ctx, const void *data, size_t len)
{
	struct psim_ctx *c = ctx;
	return EVP_DigestUpdate(c->md, data, len) == 1 ? 0 : -1;
}

int psim_h_sha_end(void *ctx, uint8_t out[32])
{
	struct psim_ctx *c = ctx;
	unsigned n = 32;
	return EVP_DigestFinal_ex(c->md, out, &n) == 1 ? 0 : -1;
}

static int verify_real(enum otadev_sig type, const uint8_t *key, size_t key_len, const uint8_t digest[32],
		       const uint8_t *sig, size_t sig_len)
{
	const unsigned char *kp = key;
	EVP_PKEY *k = d2i_PUBKEY(NULL, &kp, (long)key_len);
	EVP_PKEY_CTX *pc = NULL;
	EVP_MD_CTX *mc = NULL;
	int ok = 0;

	if (!k)
		return -1;
	if (type == OTADEV_SIG_ECDSA_P256 && EVP_PKEY_get_base_id(k) == EVP_PKEY_EC)
		ok = (pc = EVP_PKEY_CTX_new(k, NULL)) && EVP_PKEY_verify_init(pc) == 1 &&
		     EVP_PKEY_CTX_set_signature_md(pc, EVP_sha256()) == 1 &&
		     EVP_PKEY_verify(pc, sig, sig_len, digest, 32) == 1;
	else if (type == OTADEV_SIG_ED25519 && EVP_PKEY_get_base_id(k) == EVP_PKEY_ED25519)
		ok = (mc = EVP_MD_CTX_new()) && EVP_DigestVerifyInit(mc, NULL, NULL, NULL, k) == 1 &&
		     EVP_DigestVerify(mc, sig, sig_len, digest, 32) == 1;
	EVP_PKEY_CTX_free(pc);
	EVP_MD_CTX_free(mc);
	EVP_PKEY_free(k);
	return ok ? 0 : -1;
}

/* Pure Ed25519 over a whole message (a manifest's DSSE PAE). */
static int verify_msg_real(const uint8_t *key, size_t key_len, const uint8_t *msg, size_t len, const uint8_t *sig,
			   size_t sig_len)
{
	const unsigned char *kp = key;
	EVP_PKEY *k = d2i_PUBKEY(NULL, &kp, (long)key_len);
	EVP_MD_CTX *mc = NULL;
	int ok = k && EVP_PKEY_get_base_id(k) == EVP_PKEY_ED25519 && (mc = EVP_MD_CTX_new()) &&
		 EVP_DigestVerifyInit(mc, NULL, NULL, NULL, k) == 1 && EVP_DigestVerify(mc, sig, sig_len, msg, len) == 1;
	EVP_MD_CTX_free(mc);
	EVP_PKEY_free(k);
	return ok ? 0 : -1;
}

/*
 * Both verify hooks share the memo: a signature verified once for the
 * fleet is taken again by its id, SHA-256 of (type, key, digest, sig).
 * The message form remembers the message's SHA-256 as its digest, with
 * the type's high bit set so the two forms never share an id.  msg NULL:
 * the signature is over digest.
 */
static int verify_memo(struct psim_ctx *c, enum otadev_sig type, const uint8_t *key, size_t key_len,
		       const uint8_t digest[32], const uint8_t *msg, size_t msg_len, const uint8_t *sig, size_t sig_len)
{
	struct psim_env *e = c->env;
	pthread_mutex_t *lock = e->memo_lock;
	uint8_t id[32];
	unsigned n = 32;
	int rc, found = 0;

	if (!e->verify_every) {
		EVP_MD_CTX *m = EVP_MD_CTX_new();
		uint8_t t = (uint8_t)(msg ? (unsigned)type | 0x80u : (unsigned)type);
		int ok = m && EVP_DigestInit_ex(m, EVP_sha256(), NULL) == 1 && EVP_DigestUpdate(m, &t, 1) == 1 &&
			 EVP_DigestUpdate(m, key, key_len) == 1 && EVP_DigestUpdate(m, digest, 32) == 1 &&
			 EVP_DigestUpdate(m, sig, sig_len) == 1 && EVP_DigestFinal_ex(m, id, &n) == 1;
		EVP_MD_CTX_free(m);
		if (!ok)
			return -1;
		pthread_mutex_lock(lock);
		for (uint32_t k = 0; k < e->nmemo && k < PSIM_MEMO && !found; k++)
			found = !memcmp(e->memo[k], id, 32);
		if (found)
			e->verify_hits++;
		pthread_mutex_unlock(lock);
		if (found)
			return 0;
	}
	rc = msg ? verify_msg_real(key, key_len, msg, msg_len, sig, sig_len)
		 : verify_real(type, key, key_len, digest, sig, sig_len);
	pthread_mutex_lock(lock);
	e->verifies++;
	if (rc == 0 && !e->verify_every)
		memcpy(e->memo[e->nmemo++ % PSIM_MEMO], id, 32);
	pthread_mutex_unlock(lock);
	return rc;
}

int psim_h_verify(void *ctx, enum otadev_sig type, const uint8_t *key, size_t key_len, const uint8_t digest[32],
		  const uint8_t *sig, size_t sig_len)
{
	return verify_memo(ctx, type, key, key_len, digest, NULL, 0, sig, sig_len);
}

int psim_h_verify_msg(void *ctx, enum otadev_sig type, const uint8_t *key, size_t key_len, const uint8_t *msg,
		      size_t len, const uint8_t *sig, size_t sig_len)
{
	uint8_t digest[32];
	unsigned n = 32;

	if (type != OTADEV_SIG_ED25519 || EVP_Digest(msg, len, digest, &n, EVP_sha256(), NULL) != 1)
		return -1;
	return verify_memo(ctx, type, key, key_len, digest, msg, len, sig, sig_len);
}

/* ---- the simulated MCUboot ------------------------------------------------------- */

int psim_boot(struct psim_ctx *c, double boot_fail, int *unverified)
{
	static const struct otadev_hooks fh = { .flash_read = psim_h_read };
	struct psim_dev *d = c->dev;
	struct otadev_trailer pt, st;
	struct psim_slot tmp;
	struct psim_image *img;
	int type;

	*unverified = 0;
	if (otadev_trailer_read(&pt, &fh, c, 0, END) < 0 || otadev_trailer_read(&st, &fh, c, 1, END) < 0)
		return OTADEV_SWAP_NONE;
	type = otadev_swap_type(&pt, &st);
	if (type == OTADEV_SWAP_TEST || type == OTADEV_SWAP_PERM) {
		img = image_of(c, d->slot[1].img);
		if (!img || d->slot[1].written < img->size || d->slot[1].bad)
			*unverified = 1;    /* MCUboot's own check would refuse it */
		if (*unverified || sim_randu(&c->rng) < boot_fail) {
			memset(&d->slot[1], 0, sizeof(d->slot[1]));
			d->slot[1].swap_info = 0xff;
			return OTADEV_SWAP_FAIL;
		}
	}
	if (type == OTADEV_SWAP_TEST || type == OTADEV_SWAP_PERM || type == OTADEV_SWAP_REVERT) {
		tmp = d->slot[0];
		d->slot[0] = d->slot[1];
		d->slot[1] = tmp;
		d->slot[0].tr = PSIM_TR_MAGIC | PSIM_TR_COPY_DONE |
				(type == OTADEV_SWAP_TEST ? 0 : PSIM_TR_IMAGE_OK);
		d->slot[0].swap_info = 0xff;
		d->slot[1].tr = 0;
		d->slot[1].swap_info = 0xff;
	}
	return type;
}
