/*
 * memdev.h - libotadev on an in-memory device, for the unit tests that run
 * the real state machine without a board or a process: two slots of
 * simulated NOR flash, a record written whole or not at all, a clock the
 * test advances, OpenSSL's SHA-256 and ECDSA, the Linux port's AES-CTR for
 * encrypted images, and a power cut after any number of flash or record
 * writes (a longjmp out of the hook).
 *
 * The update server (the http hook) is each test's own: what it offers and
 * how it misbehaves is what the tests differ in.  A test embeds struct
 * memdev as the FIRST member of its world and passes the world as the
 * hooks' ctx, so the hooks here and the test's http hook read one pointer:
 *
 *	struct world { struct memdev mem; ...the test's server... };
 *	static const struct otadev_hooks HOOKS = {
 *		.http = m_http, .random = memdev_random, MEMDEV_HOOKS,
 *	};
 *
 * Linked into test_device, test_delta and test_encdelta only (it needs the
 * Linux port's port_linux_enc.o and libotadev, which the other tests do
 * not link; see the Makefile's MEMDEV_OBJ).
 */
#ifndef OTA_MEMDEV_H
#define OTA_MEMDEV_H

#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>
#include <openssl/evp.h>

#include "../device/otadev.h"
#include "../device/port_linux_enc.h"

struct memdev {
	uint8_t *slot[2];             /* slot_size bytes each, erased (0xff) by memdev_init */
	uint32_t slot_size, sector_size;
	uint8_t rec[sizeof(struct otadev_record)];
	size_t rec_len;
	/* power: mutating hook calls (flash writes and erases, record writes)
	 * left before the cut; -1 none.  The cut longjmps to jb, which
	 * memdev_run sets. */
	long budget;
	int partial;                  /* a cut flash write leaves half of its bytes */
	jmp_buf jb;
	uint64_t now;                 /* now_ms */
	uint32_t rng;                 /* memdev_random's xorshift32 state, never 0 */
	struct otadev_status st;      /* what the status hook reports */
	int selftest_rc, reboots;
	EVP_MD_CTX *md;
	EVP_PKEY *enc_priv;           /* the device's decryption key (NULL: none) */
	struct port_enc enc;
};

/* Erased slots of slot_size bytes, sectors of sector_size, no record, the
 * clock at 1000 ms, a battery at 80 %, no power cut.  Fails the test when
 * memory runs out. */
void memdev_init(struct memdev *m, uint32_t slot_size, uint32_t sector_size);
void memdev_release(struct memdev *m);

/* cfg for device "dev-1" of hardware hw trusting one release key (its
 * hash filled, so images verify before otadev_init), on m's slots (the
 * sizes), taking updates above a 20 % battery.  *der_out is
 * key's DER, which cfg borrows: the caller frees it with OPENSSL_free. */
void memdev_config(struct otadev_config *cfg, const struct memdev *m, const char *hw, EVP_PKEY *key,
		   unsigned char **der_out);

/* otadev_init on hooks with ctx (a world whose first member is m), then
 * otadev_step up to max_steps times, the clock advanced by each wait
 * (at least 1 ms).  1: the device asked for a reboot; 2: the power was cut
 * (m->budget ran out); 0: max_steps passed.  A step that fails, fails the
 * test. */
int memdev_run(struct memdev *m, struct otadev *d, const struct otadev_hooks *hooks, void *ctx,
	       const struct otadev_config *cfg, int max_steps);

/* Pieces of a test's update server (its http hook). */
/* Answer a Range request for the bytes [rq->range_start, rq->range_end] of
 * p (n bytes): 206 with them, the total claimed to be `claimed` (n for an
 * honest server), the byte at flip_at (< 0: none) corrupted, the bytes
 * added to *served; 416 past the end. */
void memdev_serve_range(const struct otadev_http_req *rq, struct otadev_http_resp *rs, const void *p, size_t n,
			size_t claimed, long *served, int flip_at);
/* Accept a POST /device/v1/reports batch whole: 200 {"accepted": N}. */
void memdev_accept_reports(const struct otadev_http_req *rq, struct otadev_http_resp *rs);

/* The hooks; ctx is a struct memdev (or a struct whose first member is one). */
int memdev_flash_read(void *ctx, int slot, uint32_t off, void *buf, uint32_t len);
int memdev_flash_write(void *ctx, int slot, uint32_t off, const void *buf, uint32_t len);
int memdev_flash_erase(void *ctx, int slot, uint32_t off, uint32_t len);
int memdev_sha256_begin(void *ctx);
int memdev_sha256_update(void *ctx, const void *p, size_t n);
int memdev_sha256_end(void *ctx, uint8_t out[32]);
int memdev_verify(void *ctx, enum otadev_sig type, const uint8_t *key, size_t key_len, const uint8_t digest[32],
		  const uint8_t *sig, size_t sig_len);
uint64_t memdev_now(void *ctx);
uint32_t memdev_random(void *ctx);
int memdev_persist_read(void *ctx, void *buf, size_t cap);
int memdev_persist_write(void *ctx, const void *buf, size_t len);
void memdev_status(void *ctx, struct otadev_status *out);
int memdev_selftest(void *ctx);
void memdev_reboot(void *ctx);
int memdev_enc_key(void *ctx, int type, const uint8_t *tlv, size_t len, size_t keylen, const char **why);
int memdev_enc_ctr(void *ctx, uint32_t off, uint8_t *buf, size_t len);

/* Designated initializers for every hook but http and random (the test's
 * own; memdev_random is there for the tests that want it). */
#define MEMDEV_HOOKS                                                                                      \
	.flash_read = memdev_flash_read, .flash_write = memdev_flash_write, .flash_erase = memdev_flash_erase, \
	.sha256_begin = memdev_sha256_begin, .sha256_update = memdev_sha256_update,                        \
	.sha256_end = memdev_sha256_end, .verify = memdev_verify, .now_ms = memdev_now,                     \
	.persist_read = memdev_persist_read, .persist_write = memdev_persist_write, .status = memdev_status, \
	.selftest = memdev_selftest, .reboot = memdev_reboot
/* ... and the decryption hooks (the Linux port's, with m->enc_priv). */
#define MEMDEV_HOOKS_ENC .enc_key = memdev_enc_key, .enc_ctr = memdev_enc_ctr

#endif
