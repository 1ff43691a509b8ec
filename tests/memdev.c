/*
 * memdev.c - libotadev on an in-memory device; see memdev.h.
 *
 * The flash is NOR as the boards have it: an erase sets a sector to 0xff
 * and a write can only clear bits, so a write over unerased bytes shows
 * up as corrupt data, not as a silent overwrite.  A power cut is a
 * longjmp out of the hook that would have mutated flash or the record,
 * taken before the mutation (optionally after half of a flash write, a
 * torn write), so the record is always all old or all new, as the
 * platforms' persist hooks promise.
 */
#include "memdev.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <jansson.h>
#include <openssl/x509.h>

void memdev_init(struct memdev *m, uint32_t slot_size, uint32_t sector_size)
{
	memset(m, 0, sizeof(*m));
	for (int i = 0; i < 2; i++) {
		m->slot[i] = malloc(slot_size);
		assert_non_null(m->slot[i]);
		memset(m->slot[i], 0xff, slot_size);
	}
	m->slot_size = slot_size;
	m->sector_size = sector_size;
	m->budget = -1;
	m->rng = 0x12345678u;
	m->now = 1000;
	m->st.battery_pct = 80;
	m->md = EVP_MD_CTX_new();
	assert_non_null(m->md);
}

void memdev_release(struct memdev *m)
{
	EVP_MD_CTX_free(m->md);
	free(m->slot[0]);
	free(m->slot[1]);
}

void memdev_config(struct otadev_config *cfg, const struct memdev *m, const char *hw, EVP_PKEY *key,
		   unsigned char **der_out)
{
	int n;
	*der_out = NULL;
	n = i2d_PUBKEY(key, der_out);
	assert_true(n > 0);
	cfg->device = "dev-1";
	cfg->credential = "00112233445566778899aabbccddeeff";
	cfg->product = "fw";
	cfg->hardware = hw;
	cfg->bootloader = "1.2.0";
	cfg->keys[0].der = *der_out;
	cfg->keys[0].len = (size_t)n;
	EVP_Digest(*der_out, (size_t)n, cfg->keys[0].hash, NULL, EVP_sha256(), NULL);
	cfg->nkeys = 1;
	cfg->slot_size = m->slot_size;
	cfg->sector_size = m->sector_size;
	cfg->min_battery_pct = 20;
}

int memdev_run(struct memdev *m, struct otadev *d, const struct otadev_hooks *hooks, void *ctx,
	       const struct otadev_config *cfg, int max_steps)
{
	uint32_t wait;
	d->reboot_requested = 0;
	if (setjmp(m->jb))
		return 2;
	assert_int_equal(otadev_init(d, hooks, ctx, cfg), 0);
	for (int i = 0; i < max_steps; i++) {
		assert_true(otadev_step(d, &wait) >= 0);
		if (d->reboot_requested)
			return 1;
		m->now += wait ? wait : 1;
	}
	return 0;
}

void memdev_serve_range(const struct otadev_http_req *rq, struct otadev_http_resp *rs, const void *p, size_t n,
			size_t claimed, long *served, int flip_at)
{
	size_t a = (size_t)rq->range_start, e = (size_t)rq->range_end;
	assert_true(rq->range_start >= 0 && a <= e && e - a + 1 <= rs->cap);
	if (e >= n) {
		rs->status = 416;
		return;
	}
	memcpy(rs->body, (const uint8_t *)p + a, e - a + 1);
	if (flip_at >= 0 && (size_t)flip_at >= a && (size_t)flip_at <= e)
		rs->body[flip_at - (long)a] ^= 0x20;
	rs->len = e - a + 1;
	rs->range_total = (long)claimed;
	rs->status = 206;
	*served += (long)rs->len;
}

void memdev_accept_reports(const struct otadev_http_req *rq, struct otadev_http_resp *rs)
{
	json_t *req = json_loadb(rq->body, rq->body_len, 0, NULL);
	rs->len = (size_t)snprintf(rs->body, rs->cap, "{\"accepted\": %zu}",
				   json_array_size(json_object_get(req, "reports")));
	json_decref(req);
	rs->status = 200;
}

/* Called by each mutating hook before it mutates: the power goes when
 * the budget runs out. */
static void cut_point(struct memdev *m)
{
	if (m->budget >= 0 && m->budget-- == 0)
		longjmp(m->jb, 1);
}

int memdev_flash_read(void *ctx, int slot, uint32_t off, void *buf, uint32_t len)
{
	struct memdev *m = ctx;
	if (off > m->slot_size || len > m->slot_size - off)
		return -1;
	memcpy(buf, m->slot[slot] + off, len);
	return 0;
}

int memdev_flash_write(void *ctx, int slot, uint32_t off, const void *buf, uint32_t len)
{
	struct memdev *m = ctx;
	if (off > m->slot_size || len > m->slot_size - off)
		return -1;
	if (m->budget == 0 && m->partial)
		memcpy(m->slot[slot] + off, buf, len / 2);   /* torn write */
	cut_point(m);
	for (uint32_t i = 0; i < len; i++)
		m->slot[slot][off + i] &= ((const uint8_t *)buf)[i];   /* NOR: bits only go 1 -> 0 */
	return 0;
}

int memdev_flash_erase(void *ctx, int slot, uint32_t off, uint32_t len)
{
	struct memdev *m = ctx;
	if (off % m->sector_size || off > m->slot_size)
		return -1;
	if (len > m->slot_size - off)
		len = m->slot_size - off;
	cut_point(m);
	memset(m->slot[slot] + off, 0xff, len);
	return 0;
}

int memdev_sha256_begin(void *ctx)
{
	return EVP_DigestInit_ex(((struct memdev *)ctx)->md, EVP_sha256(), NULL) == 1 ? 0 : -1;
}

int memdev_sha256_update(void *ctx, const void *p, size_t n)
{
	return EVP_DigestUpdate(((struct memdev *)ctx)->md, p, n) == 1 ? 0 : -1;
}

int memdev_sha256_end(void *ctx, uint8_t out[32])
{
	return EVP_DigestFinal_ex(((struct memdev *)ctx)->md, out, NULL) == 1 ? 0 : -1;
}

int memdev_verify(void *ctx, enum otadev_sig type, const uint8_t *key, size_t key_len, const uint8_t digest[32],
		  const uint8_t *sig, size_t sig_len)
{
	const unsigned char *kp = key;
	EVP_PKEY *k = d2i_PUBKEY(NULL, &kp, (long)key_len);
	EVP_PKEY_CTX *pc = k ? EVP_PKEY_CTX_new(k, NULL) : NULL;
	int ok = type == OTADEV_SIG_ECDSA_P256 && pc && EVP_PKEY_verify_init(pc) == 1 &&
		 EVP_PKEY_CTX_set_signature_md(pc, EVP_sha256()) == 1 &&
		 EVP_PKEY_verify(pc, sig, sig_len, digest, 32) == 1;
	(void)ctx;
	EVP_PKEY_CTX_free(pc);
	EVP_PKEY_free(k);
	return ok ? 0 : -1;
}

uint64_t memdev_now(void *ctx)
{
	return ((struct memdev *)ctx)->now;
}

uint32_t memdev_random(void *ctx)
{
	struct memdev *m = ctx;
	m->rng ^= m->rng << 13;
	m->rng ^= m->rng >> 17;
	m->rng ^= m->rng << 5;
	return m->rng;
}

int memdev_persist_read(void *ctx, void *buf, size_t cap)
{
	struct memdev *m = ctx;
	if (m->rec_len > cap)
		return -1;
	memcpy(buf, m->rec, m->rec_len);
	return (int)m->rec_len;
}

int memdev_persist_write(void *ctx, const void *buf, size_t len)
{
	struct memdev *m = ctx;
	cut_point(m);   /* before: the record is all old or all new */
	assert_true(len <= sizeof(m->rec));
	memcpy(m->rec, buf, len);
	m->rec_len = len;
	return 0;
}

void memdev_status(void *ctx, struct otadev_status *out)
{
	*out = ((struct memdev *)ctx)->st;
}

int memdev_selftest(void *ctx)
{
	return ((struct memdev *)ctx)->selftest_rc;
}

void memdev_reboot(void *ctx)
{
	((struct memdev *)ctx)->reboots++;
}

int memdev_enc_key(void *ctx, int type, const uint8_t *tlv, size_t len, size_t keylen, const char **why)
{
	struct memdev *m = ctx;
	if (!tlv) {
		port_linux_enc_forget(&m->enc);
		return 0;
	}
	return port_linux_enc_unwrap(&m->enc, m->enc_priv, type, tlv, len, keylen, why);
}

int memdev_enc_ctr(void *ctx, uint32_t off, uint8_t *buf, size_t len)
{
	return port_linux_enc_ctr(&((struct memdev *)ctx)->enc, off, buf, len);
}
