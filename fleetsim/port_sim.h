/*
 * port_sim.h - libotadev's hooks on a simulated device (otacd-fleetsim
 * --engine core, docs/fleetsim.md "The device core").
 *
 * A real device's RAM context is transient; what persists is its record
 * and its flash.  So a simulated device keeps only a compact persistent
 * form (struct psim_dev: two sparse slots and the record, encoded against
 * a template) and runs the real state machine on a per-thread working
 * context (struct otadev in struct psim_ctx) loaded from it when its event
 * fires.
 *
 * The sparse slot: instead of bytes, which image it holds (an index into
 * the shared image table, whose bytes were fetched from the server once),
 * how many bytes of it were written in order, the first byte that was
 * written wrong (transit corruption, flipped by its xor), and the MCUboot
 * trailer as flags.  Reads rebuild the bytes from the shared image, so
 * libotadev's own digest, MCUboot parse and signature checks run on what
 * the device "wrote".
 *
 * Faults, per download (drawn when a download starts): a power cut at one
 * byte of the transfer, of the slot write, or of the trailer write; one
 * byte corrupted in transit.  Both are decided here, in the hooks, so the
 * core sees them exactly as on hardware (a short write, then no more
 * calls; a wrong byte in an answer).
 */
#ifndef OTA_FLEETSIM_PORT_SIM_H
#define OTA_FLEETSIM_PORT_SIM_H

#include <stddef.h>
#include <stdint.h>

#include "../device/otadev.h"
#include "../device/port_linux_enc.h"

#define PSIM_SLOT_SIZE (64u << 20)   /* sparse: costs nothing; images up to 64 MiB - trailer */
#define PSIM_SECTOR 4096u

/* trailer flags of a sparse slot */
#define PSIM_TR_MAGIC 0x01           /* boot magic written, good */
#define PSIM_TR_MAGIC_BAD 0x02       /* magic bytes written but not the magic (a torn write) */
#define PSIM_TR_IMAGE_OK 0x04
#define PSIM_TR_COPY_DONE 0x08

struct psim_slot {
	uint32_t written;            /* bytes [0, written) hold image `img` ... */
	uint32_t bad;                /* ... except byte bad-1 (0: none), xor badx */
	uint16_t img;                /* 1-based image table index, 0: erased */
	uint8_t badx, tr;            /* PSIM_TR_* */
	uint8_t swap_info;           /* 0xff unset */
};

/* fault kinds (psim_dev.cut_kind) */
enum { PSIM_CUT_NONE, PSIM_CUT_TRANSFER, PSIM_CUT_FLASH, PSIM_CUT_TRAILER };

/* Device flags (psim_dev.flags). */
#define PSIM_ON 0x01                 /* running: the RAM fields below are valid */
#define PSIM_CHECKED_IN 0x02
#define PSIM_LOW_BATTERY 0x04        /* starts at 10 %, on battery, charges over hours */

/* Everything a simulated device keeps between its events. */
struct psim_dev {
	struct psim_slot slot[2];
	uint8_t *rec;                /* the record, encoded (psim_rec_encode); NULL: never written */
	uint16_t rec_len;
	uint16_t version;            /* the version the fleet counts it on (interned) */
	uint8_t flags, errors, report_errors, cut_kind;
	uint32_t next_checkin, next_report, next_work, last_heartbeat;   /* device ms, RAM */
	uint32_t cut_at;             /* fault: 1 + the byte of the cut (0: none) */
	uint32_t corrupt_at;         /* fault: 1 + the byte flipped in transit (0: none) */
	uint32_t crashes, battery_mah, last_status;   /* cumulative, for the status hook */
	uint32_t turn_lo;            /* issue 15: the low 32 bits of the turn a 503 gave (0: none) */
};

/* An image the devices were offered: the bytes are the server's, fetched once. */
struct psim_image {
	char url[OTADEV_URL_MAX];
	uint8_t sha256[32];
	uint8_t *bytes;
	uint32_t size;
	int state;                   /* 0 not fetched, 1 fetching, 2 ok, 3 failed */
	char version[OTADEV_VERSION_MAX];
};

#define PSIM_IMAGES_MAX 256
#define PSIM_MEMO 64
#define PSIM_WORK 16384           /* otadev_config.work: a CRL and a release manifest */

/* The shared side port_sim.c needs (core.c embeds it): images by index
 * (entries never move once published) and the signature memo. */
struct psim_env {
	struct psim_image *img[PSIM_IMAGES_MAX];
	uint32_t nimg;
	int verify_every;            /* 1: no memo, every device runs its signature check */
	uint64_t verifies, verify_hits;
	uint8_t memo[PSIM_MEMO][32]; /* SHA-256 of (key, digest, signature) that verified */
	uint32_t nmemo;
	void *memo_lock;             /* pthread_mutex_t * */
};

/* The per-thread working context. */
struct psim_ctx {
	struct otadev d;             /* the working RAM of the device being stepped */
	struct otadev_config cfg;    /* its configuration (device id, credential, variant) */
	struct psim_env *env;
	struct psim_dev *dev;
	uint32_t idx;                /* device index */
	uint64_t rng;
	void *md;                    /* EVP_MD_CTX */
	void *curl;                  /* CURL easy handle, kept alive */
	int power_cut;               /* a fault cut the power: stop stepping, RAM is lost */
	int rebooting;               /* the core asked for a reboot */
	uint16_t dl_img;             /* image of the last image request (the slot's data) */
	uint32_t conn_dev;           /* --provisioner: 1 + the device whose certificate the
				      * handle's open connection carries (0: none) */
	uint8_t *work;               /* --trust-root: the config's work buffer (PSIM_WORK) */
	char id[16], cred[40], tags[256];
	char why[128];               /* the last refusal's reason (the log hook) */
	struct port_enc enc;         /* --enc-key: the image key while an image is verified */
	char scratch[OTADEV_IO_MAX + 64];
};

/* The hooks port_sim.c implements (ctx: struct psim_ctx); core.c adds
 * transport, clock, persistence, status, self-test and reboot. */
int psim_h_read(void *ctx, int slot, uint32_t off, void *buf, uint32_t len);
int psim_h_write(void *ctx, int slot, uint32_t off, const void *buf, uint32_t len);
int psim_h_erase(void *ctx, int slot, uint32_t off, uint32_t len);
int psim_h_sha_begin(void *ctx);
int psim_h_sha_update(void *ctx, const void *data, size_t len);
int psim_h_sha_end(void *ctx, uint8_t out[32]);
int psim_h_verify(void *ctx, enum otadev_sig type, const uint8_t *key, size_t key_len, const uint8_t digest[32],
		  const uint8_t *sig, size_t sig_len);
/* Ed25519 over a whole message (a manifest's PAE), memoised like psim_h_verify. */
int psim_h_verify_msg(void *ctx, enum otadev_sig type, const uint8_t *key, size_t key_len, const uint8_t *msg,
		      size_t len, const uint8_t *sig, size_t sig_len);

/* The record against a template: XOR, then zero runs skipped.  Returns the
 * encoded length (<= cap) or -1. */
int psim_rec_encode(uint8_t *out, size_t cap, const void *rec, const void *tmpl, size_t n);
int psim_rec_decode(void *rec, const void *tmpl, size_t n, const uint8_t *in, size_t len);

/* The simulated MCUboot at a (re)boot: the swap decision from the two
 * trailers (otadev_swap_type), a test/permanent swap fails with
 * probability boot_fail (the bootloader erases the candidate), else the
 * slots swap; a revert swaps back and makes it permanent.  Returns the
 * swap type (enum otadev_swap); *unverified is set when a candidate was
 * pending whose bytes are not exactly its image (an invariant breach). */
int psim_boot(struct psim_ctx *c, double boot_fail, int *unverified);

#endif
