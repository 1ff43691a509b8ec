/*
 * otadev.h - libotadev, the device side of an otacd update (issue 14).
 *
 * Portable C99, no heap, no OS headers: everything a platform does (HTTP,
 * flash, crypto, clock, persistent state, power and network status,
 * reboot, self-test) is one struct of hooks the port fills in
 * (device/port_linux.c for embedded Linux).  The caller owns the state
 * (struct otadev, a few KB, docs/device.md "Budgets") and drives it:
 *
 *     otadev_init(&d, &hooks, hctx, &cfg);     once, at every boot
 *     for (;;) { otadev_step(&d, &wait_ms); sleep(wait_ms); }
 *
 * Each step does one bounded unit of work (a check-in, one download chunk,
 * a verification, a report batch ...) and says how long to wait.  Every
 * step may be cut by a power loss at any instant; the persistent record
 * (struct otadev_record) is written at each point that must survive, and
 * the MCUboot trailer's boot magic is written last, after verification, so
 * the bootloader never sees a partial or unverified image as pending.
 *
 * Return codes: 0 or a negative OTADEV_E*.  The last message is in
 * d->err (a fixed buffer).
 */
#ifndef OTADEV_H
#define OTADEV_H

#include <stddef.h>
#include <stdint.h>

#define OTADEV_EIO -1        /* a hook failed (flash, persistent state) */
#define OTADEV_EINVAL -2     /* bad input (answer, image, config) */
#define OTADEV_ENET -3       /* transport error or an unexpected HTTP status */
#define OTADEV_EVERIFY -4    /* an image failed verification */
#define OTADEV_ENOSPC -5     /* does not fit a caller's buffer or the slot */

/* ---- sizes (compile-time; override with -D) ---------------------------- */
#ifndef OTADEV_IO_MAX
#define OTADEV_IO_MAX 2048   /* HTTP answers, request bodies, flash chunks */
#endif
#ifndef OTADEV_TOKENS
#define OTADEV_TOKENS 64     /* jsmn tokens for a check-in answer */
#endif
#ifndef OTADEV_QUEUE
#define OTADEV_QUEUE 8       /* reports kept until acknowledged */
#endif
#define OTADEV_VERSION_MAX 32
#ifndef OTADEV_URL_MAX
/* an image URL with its NUL: a presigned S3 URL is 351 B on the tests'
 * s3rver and 449 B at AWS's longest names (test_origin measures both,
 * docs/delivery.md); a longer one is refused, never truncated */
#define OTADEV_URL_MAX 512
#endif
#define OTADEV_KEYS_MAX 4    /* trusted signing keys */
#define OTADEV_CHAIN_CERTS 4 /* certificates in a release's signing chain (pki.h PKI_CHAIN_MAX) */

/* ---- hooks ---------------------------------------------------------------- */

struct otadev_http_req {
	const char *method;          /* "GET" | "POST" */
	const char *path;            /* "/device/v1/checkin": relative to the server */
	const char *device;          /* X-Device-Id */
	const char *credential;      /* Authorization: Bearer */
	const char *body;            /* JSON body (POST) or NULL */
	size_t body_len;
	long range_start, range_end; /* Range: bytes=start-end (inclusive); -1: no Range */
};

struct otadev_http_resp {
	int status;                  /* HTTP status; 0: no answer */
	char *body;                  /* caller's buffer */
	size_t cap, len;             /* answers longer than cap are an error (status 0) */
	long range_total;            /* Content-Range total, -1 unknown */
};

struct otadev_status {
	int battery_pct;             /* 0..100 */
	int external_power;          /* on mains/USB: battery does not matter */
	int metered;                 /* the current link is metered (cellular) */
	int rssi;                    /* dBm, connectivity report */
	uint32_t battery_mah_used;   /* cumulative since manufacture (wraps) */
	uint32_t crashes;            /* cumulative crashes/watchdog resets */
};

enum otadev_sig { OTADEV_SIG_ECDSA_P256 = 0x22, OTADEV_SIG_ED25519 = 0x24 };

/* A signing chain to check (DER, leaf first, the anchor excluded) at time
 * `at` (Unix seconds, the signed manifest's built_at) against the anchor
 * (the root certificate, DER), with the revocation list crl (DER, or NULL).
 * The leaf must be an end-entity certificate for codeSigning with the
 * key usage digitalSignature only (the policy of orchestrator/pki.c). */
struct otadev_x509_req {
	const uint8_t *anchor;
	size_t anchor_len;
	const uint8_t *cert[OTADEV_CHAIN_CERTS];
	size_t cert_len[OTADEV_CHAIN_CERTS];
	int ncerts;
	const uint8_t *crl;
	size_t crl_len;
	uint64_t at;
};

struct otadev_hooks {
	/* transport: one request, blocking; 0 with resp->status set, <0: no answer */
	int (*http)(void *ctx, const struct otadev_http_req *req, struct otadev_http_resp *resp);
	/* slot flash: slot 0 primary (running), 1 secondary (download target) */
	int (*flash_read)(void *ctx, int slot, uint32_t off, void *buf, uint32_t len);
	int (*flash_write)(void *ctx, int slot, uint32_t off, const void *buf, uint32_t len);
	int (*flash_erase)(void *ctx, int slot, uint32_t off, uint32_t len); /* sector aligned */
	/* crypto: one SHA-256 at a time; verify a signature over a 32-byte digest
	 * with a public key given as DER SubjectPublicKeyInfo */
	int (*sha256_begin)(void *ctx);
	int (*sha256_update)(void *ctx, const void *data, size_t len);
	int (*sha256_end)(void *ctx, uint8_t out[32]);
	int (*verify)(void *ctx, enum otadev_sig type, const uint8_t *key, size_t key_len,
		      const uint8_t digest[32], const uint8_t *sig, size_t sig_len); /* 0: valid */
	/* clock: monotonic milliseconds; random for jitter */
	uint64_t (*now_ms)(void *ctx);
	uint32_t (*random)(void *ctx);
	/* persistent state: a small record, written atomically (all or nothing) */
	int (*persist_read)(void *ctx, void *buf, size_t cap);      /* bytes read, 0 none, <0 error */
	int (*persist_write)(void *ctx, const void *buf, size_t len);
	/* power and network */
	void (*status)(void *ctx, struct otadev_status *out);
	/* run the application's self-test on a test boot: 0 healthy */
	int (*selftest)(void *ctx);
	/* reboot now (the port may return: the caller then stops stepping) */
	void (*reboot)(void *ctx);
	/* optional: a line for the log */
	void (*log)(void *ctx, const char *msg);
	/* optional: a bootloader that does not read MCUboot's trailer (U-Boot's
	 * bootcount, docs/device.md).  NULL: the trailer in the slots.
	 * boot_mark: OTADEV_MARK_CANCEL before a download (nothing points at
	 * slot 1), _TEST once slot 1 is verified (boot it once, on trial),
	 * _CONFIRM after the self-test (keep the running image); 0 or <0.
	 * boot_testing: 1 when the running image is on trial, 2 when slot 1 is
	 * marked for a test boot that has not happened yet, 0 neither, <0. */
	int (*boot_mark)(void *ctx, int mark);
	int (*boot_testing)(void *ctx);
	/* X.509, only with an anchor (otadev_chain.c; OpenSSL on Linux, mbedTLS's
	 * x509 on an MCU that already speaks TLS with a device certificate):
	 * verify a signing chain, *key gets the leaf's SubjectPublicKeyInfo
	 * (0 valid, else a refusal with *why); verify a revocation list is the
	 * anchor's and read its CRL number. */
	int (*x509_chain)(void *ctx, const struct otadev_x509_req *req, uint8_t *key, size_t cap, size_t *key_len,
			  const char **why);
	int (*x509_crl)(void *ctx, const uint8_t *anchor, size_t anchor_len, const uint8_t *crl, size_t len,
			uint64_t *number, const char **why);
	/* optional: MCUboot encrypted images (docs/device.md "Encrypted
	 * images").  The body in slot 1 is AES-CTR ciphertext and the hash and
	 * signature are over the plaintext, so verifying means decrypting, as
	 * MCUboot does.  enc_key: unwrap the image key from the key TLV (type
	 * 0x32 ECIES-P256 or 0x33 ECIES-X25519, tlv its bytes, keylen 16 or 32)
	 * with the device's private key, which only the port holds, and keep
	 * it until enc_key is called with tlv NULL (forget it); 0, or <0 with
	 * *why.  enc_ctr: decrypt len body bytes in place, off counted from the
	 * body's first byte (AES-CTR, counter block = off / 16 big-endian).
	 * NULL: encrypted images are refused. */
	int (*enc_key)(void *ctx, int tlv_type, const uint8_t *tlv, size_t len, size_t keylen, const char **why);
	int (*enc_ctr)(void *ctx, uint32_t off, uint8_t *buf, size_t len);
	/* optional: verify a signature over a whole message rather than a
	 * digest (0: valid).  Ed25519 (type OTADEV_SIG_ED25519) signs the
	 * message itself, so a DSSE envelope signed with it is checked over
	 * its PAE (otadev_chain.c; msg is in the caller's work buffer).  MCUboot
	 * images still go through verify: their Ed25519 signs the SHA-256
	 * digest.  NULL: a release whose manifest is signed by an Ed25519 key
	 * is refused (ECDSA P-256 manifests need only verify). */
	int (*verify_msg)(void *ctx, enum otadev_sig type, const uint8_t *key, size_t key_len, const uint8_t *msg,
			  size_t len, const uint8_t *sig, size_t sig_len);
};

enum otadev_mark { OTADEV_MARK_CANCEL = 1, OTADEV_MARK_TEST, OTADEV_MARK_CONFIRM };

/* ---- configuration (borrowed; must outlive the state) --------------------- */

struct otadev_key {
	const uint8_t *der;          /* SubjectPublicKeyInfo */
	size_t len;
	uint8_t hash[32];            /* filled by otadev_init: SHA-256(der), MCUboot's KEYHASH */
};

struct otadev_config {
	const char *device, *credential, *product, *hardware, *bootloader;
	const char *tags;            /* pre-rendered JSON object members ("\"region\":\"eu\"") or NULL */
	struct otadev_key keys[OTADEV_KEYS_MAX];
	int nkeys;
	uint32_t slot_size, sector_size;
	uint32_t trailer_size;       /* 0: 432, imgtool's default (swap, align 1, 128 sectors) */
	uint32_t poll_ms;            /* fallback check-in interval (real ms) without a server answer */
	uint32_t backoff_base_ms, backoff_max_ms;    /* errors: full jitter, 0: 1 s / 10 min */
	uint32_t heartbeat_ms;       /* real ms between heartbeats; 0: none */
	int min_battery_pct;         /* download/install only above, or on external power */
	int avoid_metered;           /* no download on a metered link */
	uint32_t precondition_wait_ms; /* 0: 60 s */
	/* issue 13's signing PKI (otadev_chain.c): with an anchor (the root
	 * certificate, DER), an image is taken only when its release's signed
	 * manifest carries a chain to it, not revoked, and the image is signed
	 * by that chain's leaf; keys[] are then the bootloader's key slots (the
	 * leaf must be one of them).  work: the caller's scratch for the
	 * manifest and the revocation list, used only while an image is
	 * verified (may be shared with the application). */
	const uint8_t *anchor;
	size_t anchor_len;
	uint8_t *work;
	size_t work_len;
};

/* ---- the persistent record ------------------------------------------------ */

enum otadev_phase {
	OTADEV_IDLE = 0,        /* running a confirmed image, nothing pending */
	OTADEV_DOWNLOADING,     /* secondary slot being written; offset persisted per sector */
	OTADEV_INSTALLING,      /* verified; trailer being written */
	OTADEV_REBOOTING,       /* trailer written (test swap pending); reboot requested */
	OTADEV_TESTING,         /* booted the new image, not confirmed */
};

enum otadev_event {
	OTADEV_EV_DOWNLOAD = 1, OTADEV_EV_INSTALL, OTADEV_EV_BOOT_OK, OTADEV_EV_BOOT_FAIL,
	OTADEV_EV_REVERT, OTADEV_EV_HEARTBEAT, OTADEV_EV_REFUSED,
};

struct otadev_report {
	uint32_t seq;                /* per device, never reused: sent as "seq" */
	uint8_t event, tries;
	int16_t rssi;
	uint32_t uptime_s, crashes, battery_uah;   /* battery in µAh (mAh x 1000) */
	uint64_t at;                 /* otacd time, ms */
	char version[OTADEV_VERSION_MAX];
};

struct otadev_offer {
	uint32_t release, security_counter, size;
	char version[OTADEV_VERSION_MAX];
	char url[OTADEV_URL_MAX];
	char hardware[OTADEV_VERSION_MAX];
	char min_bootloader[16];
	uint8_t sha256[32];          /* of the whole image file (the URL's name) */
};

struct otadev_record {
	uint32_t magic, size, gen;
	uint8_t phase, booted_new, bad_tries;
	uint8_t delta_tries;                  /* issue 15: patch attempts for rec.offer (was padding) */
	char version[OTADEV_VERSION_MAX];     /* the confirmed, running version */
	uint8_t cur_hash[32];                 /* its MCUboot SHA256 TLV */
	uint32_t security_counter;            /* highest confirmed */
	struct otadev_offer offer;            /* being downloaded / installed / tested */
	uint8_t new_hash[32];                 /* the offer's SHA256 TLV once verified */
	uint32_t new_counter;
	uint32_t dl_offset;                   /* sector-aligned bytes safely in the slot */
	uint8_t refused_sha[32];              /* do not download this image again */
	uint32_t next_seq, nq;
	uint32_t last_battery, last_crashes;
	uint32_t crl_number;                  /* newest verified revocation list (issue 13) */
	struct otadev_report q[OTADEV_QUEUE];
	uint32_t crc;
};

/* ---- MCUboot image and trailer (otadev_mcuboot.c) ------------------------- */

struct otadev_image {
	uint32_t header_size, image_size, protected_size, signed_len, tlv_end;
	uint8_t major, minor;
	uint16_t revision;
	uint32_t build;
	int has_counter;
	uint32_t security_counter;
	uint8_t sha256[32], keyhash[32];
	uint8_t sig[80];
	uint32_t sig_len;
	int sig_type;                /* 0 none, enum otadev_sig */
	uint32_t enc_keylen;         /* 16/32: the header's ENCRYPTED_AES128/256 flag; 0 clear */
	uint32_t enc_off, enc_len;   /* the key TLV's value in the slot (enc_type 0: none) */
	uint32_t enc_type;
};

/* MCUboot's trailer (bootutil_public.h), BOOT_MAX_ALIGN 8: from the slot end,
 * magic [-16,0), image_ok at -24, copy_done at -32, swap_info at -40, swap_size at -48. */
#define OTADEV_TR_MAGIC 16u
#define OTADEV_TR_IMAGE_OK 24u
#define OTADEV_TR_COPY_DONE 32u
#define OTADEV_TR_SWAP_INFO 40u
#define OTADEV_TR_SWAP_SIZE 48u

enum otadev_swap { OTADEV_SWAP_NONE = 1, OTADEV_SWAP_TEST = 2, OTADEV_SWAP_PERM = 3,
		   OTADEV_SWAP_REVERT = 4, OTADEV_SWAP_FAIL = 5 };
enum otadev_magic { OTADEV_MAGIC_GOOD = 1, OTADEV_MAGIC_BAD = 2, OTADEV_MAGIC_UNSET = 3 };
enum otadev_flag { OTADEV_FLAG_SET = 1, OTADEV_FLAG_BAD = 2, OTADEV_FLAG_UNSET = 3 };

struct otadev_trailer {
	int magic, image_ok, copy_done; /* enum otadev_magic / otadev_flag */
	uint8_t swap_info;
};

extern const uint8_t otadev_boot_magic[16];

/* Parse the image at the start of slot (header, protected and unprotected
 * TLVs), reading through the flash hook with buf (cap >= 64). */
int otadev_image_parse(struct otadev_image *out, const struct otadev_hooks *h, void *ctx, int slot,
		       uint32_t slot_size, uint8_t *buf, size_t cap);
/* Hash the signed region, compare with the SHA256 TLV, find key by KEYHASH
 * among keys and verify the signature.  0 or OTADEV_EVERIFY (why in why).
 * An encrypted image in slot 1 is decrypted while it is hashed (the
 * enc hooks); in slot 0 it is the bootloader's plaintext copy. */
int otadev_image_verify(const struct otadev_image *img, const struct otadev_hooks *h, void *ctx, int slot,
			const struct otadev_key *keys, int nkeys, uint8_t *buf, size_t cap,
			const char **why);
/* 1 when the image header at the start of slot says the body is encrypted
 * (ENCRYPTED_AES128/256; MCUboot keeps the flag in the primary's clear
 * copy), 0 when not or no image, OTADEV_EIO. */
int otadev_slot_encrypted(const struct otadev_hooks *h, void *ctx, int slot);
int otadev_trailer_read(struct otadev_trailer *out, const struct otadev_hooks *h, void *ctx, int slot,
			uint32_t slot_size);
/* Mark slot 1 for a test swap (permanent: 0) the way boot_set_pending does:
 * swap_info, (image_ok), then the magic last. */
int otadev_trailer_set_pending(const struct otadev_hooks *h, void *ctx, uint32_t slot_size, int permanent);
/* boot_set_confirmed: image_ok = 1 in the primary slot's trailer. */
int otadev_trailer_confirm(const struct otadev_hooks *h, void *ctx, uint32_t slot_size);
/* MCUboot's boot_swap_type() from the two trailers. */
int otadev_swap_type(const struct otadev_trailer *primary, const struct otadev_trailer *secondary);

/* ---- check-in answers and report batches (otadev_json.c) ------------------ */

/* issue 15: a VCDIFF patch from the running image to the offered one
 * (docs/delivery.md "Delta updates").  Held in RAM only, never in the
 * record: after a restart the next check-in names it again. */
struct otadev_delta {
	char url[OTADEV_URL_MAX];
	uint32_t size;               /* bytes of the patch */
	uint8_t sha256[32];          /* of the patch file (its content address) */
	uint8_t base[32];            /* MCUboot SHA256 TLV of the image it applies to */
};

struct otadev_checkin {
	uint64_t now;                /* otacd time, ms */
	double time_scale;
	uint64_t next_poll_ms;       /* otacd ms; 0 when absent */
	uint64_t revocations;        /* the server's revocation list number; 0 none */
	int has_offer;
	struct otadev_offer offer;
	int url_too_long;            /* the offer's image URL is longer than OTADEV_URL_MAX - 1: refused */
	int has_delta;               /* the offer's optional "delta" member */
	struct otadev_delta delta;
	/* issue 17: the "flags" object (feature flags, the device-configuration
	 * channel: {"name": true | integer | "string" | false}, at most 8
	 * members and 600 bytes, docs/update-server.md) as the answer's bytes
	 * [flags_off, flags_off + flags_len); flags_len 0: none.  The core only
	 * finds it; the application reads what it needs from it. */
	uint32_t flags_off, flags_len;
};

/* issue 15: a check-in the server deferred (503 over its check-in
 * capacity, docs/update-server.md): come back at retry_after_ms otacd ms
 * from now, at a moment picked uniformly in the window that follows. */
struct otadev_defer {
	uint64_t turn;               /* otacd time of the turn: said back in the next check-in */
	uint64_t retry_after_ms;     /* otacd ms */
	uint64_t window_ms;          /* otacd ms; 0: none given */
	double time_scale;
};

/* Parse a deferral's body; OTADEV_EINVAL when it names no turn. */
int otadev_defer_parse(struct otadev_defer *out, const char *js, size_t len, void *tokens, size_t ntokens);

/* Parse a check-in answer of len bytes (no heap; tokens from the caller). */
int otadev_checkin_parse(struct otadev_checkin *out, const char *js, size_t len, void *tokens,
			 size_t ntokens);
/* The "refused" list of a report answer: bit i of *retry_mask set when
 * report i is refused with retry:true, of *drop_mask when retry:false. */
int otadev_reports_parse(uint32_t *accepted, uint32_t *retry_mask, uint32_t *drop_mask, const char *js,
			 size_t len, void *tokens, size_t ntokens);
const char *otadev_event_name(int ev);

/* ---- the signing chain (otadev_chain.c) ---------------------------------- */

struct otadev;
/* With cfg->anchor: fetch the offered release's signed manifest (and the
 * revocation list when one is held or announced), check the chain to the
 * anchor, the manifest's DSSE signature by the leaf, that the offer's image
 * is the manifest's; leaf gets the leaf key (der in leaf_der, cap >= 128).
 * 0, OTADEV_EVERIFY (refuse: *why), OTADEV_ENET (try again later). */
int otadev_chain_verify(struct otadev *d, struct otadev_key *leaf, uint8_t *leaf_der, size_t cap, const char **why);
/* The parts of a DSSE envelope holding a release manifest, decoded in place
 * (exposed for fuzz/fuzz_devchain.c): *digest is SHA-256 of the PAE, and
 * the PAE itself stays whole at the buffer's start (pae, pae_len) for an
 * Ed25519 signature, which is over the message, not a digest. */
struct otadev_manifest {
	const uint8_t *sig[2];
	size_t sig_len[2];
	int nsig;
	const uint8_t *pae;
	size_t pae_len;
	const uint8_t *cert[OTADEV_CHAIN_CERTS];
	size_t cert_len[OTADEV_CHAIN_CERTS];
	int ncerts;
	uint64_t built_at;
	int has_image;               /* the wanted sha256 is one of images[] */
	int other_hardware;          /* ... and its "hardware" is not the given one */
	int other_product;           /* "product" is not the given one */
};
int otadev_manifest_parse(struct otadev_manifest *out, uint8_t digest[32], const struct otadev_hooks *h, void *ctx,
			  char *buf, size_t len, size_t cap, const uint8_t want_sha[32], const char *product,
			  const char *hardware);
/* The one hex decoder of libotadev's parsers.  A digest on the wire is 64
 * lowercase hex digits (docs/update-server.md, as otacd writes them); the
 * offer and manifest parsers live in files fuzz targets build alone, hence
 * static inline here rather than a function of one of them. */
static inline int otadev_hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1; /* uppercase too: not the wire format */
}

/* hex[0, len) into out: 0, or OTADEV_EINVAL unless it is exactly 64
 * lowercase hex digits. */
static inline int otadev_sha256_from_hex(uint8_t out[32], const char *hex, size_t len)
{
	int i;
	if (len != 64)
		return OTADEV_EINVAL;
	for (i = 0; i < 32; i++) {
		int hi = otadev_hexval(hex[2 * i]), lo = otadev_hexval(hex[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return OTADEV_EINVAL;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	return 0;
}

/* PEM (one block of the given label, e.g. "X509 CRL") to DER in place; length or <0. */
int otadev_pem_to_der(char *buf, size_t len, const char *label);

/* ---- the state machine ---------------------------------------------------- */

struct otadev {
	const struct otadev_hooks *h;
	void *ctx;
	const struct otadev_config *cfg;
	struct otadev_record rec;
	uint64_t next_checkin, next_report, next_work, last_heartbeat;
	uint64_t server_now, server_mono;     /* last answer's otacd time at our monotonic ms */
	double time_scale;
	uint32_t errors;                      /* consecutive failures: backoff exponent */
	uint32_t report_errors;
	int offer_seen;                       /* the current check-in still offers rec.offer */
	int reboot_requested;
	int checked_in;
	uint32_t crl_announced;               /* the last check-in's "revocations" */
	uint64_t deferred_until;              /* issue 15: the server's turn for us (no nudge before) */
	uint64_t turn;                        /* ... in otacd time, named in the next check-in; 0 none */
	char err[128];
	char io[OTADEV_IO_MAX];
	char io2[OTADEV_IO_MAX];
	uint32_t tokens[OTADEV_TOKENS * 5];   /* jsmntok_t storage, parent links */
	/* issue 15: delta updates (otadev_vcdiff.c; the decoder's state lives
	 * in cfg->work, unused while downloading).  RAM only: a restart falls
	 * back to the start of the patch, or to the full image. */
	struct otadev_delta delta;
	uint8_t delta_for[32];                /* the offered image's sha256 it belongs to */
	int has_delta, delta_failed, delta_active, delta_used, delta_net_err;
	/* counters for tests and logs */
	uint32_t n_checkins, n_downloads_resumed, n_refused, n_reports_sent;
	uint32_t n_delta_applied, n_delta_fallbacks;
	uint64_t bytes_full, bytes_delta;     /* image and patch bytes received */
	uint32_t n_deferred;                  /* check-ins the server deferred (503 with a turn) */
};

/* Load the record (or start a fresh one from the primary slot), decide what
 * the last boot was (test boot of a new image, a revert, a normal boot)
 * and queue the matching reports.  Call at every start. */
int otadev_init(struct otadev *d, const struct otadev_hooks *h, void *ctx, const struct otadev_config *cfg);
/* One unit of work; *wait_ms: how long until the next step is useful. */
int otadev_step(struct otadev *d, uint32_t *wait_ms);
/* issue 15, push: bring the next check-in forward to delay_ms from now (never
 * later than it was; ignored while backing off after errors or waiting for
 * the turn a server over capacity gave).  A hint from
 * an untrusted channel may call it: it only makes a check-in earlier. */
void otadev_nudge(struct otadev *d, uint32_t delay_ms);
/* Delay of the n-th retry (n >= 1): full jitter, uniform in [0, min(max, base*2^n)). */
uint32_t otadev_backoff(const struct otadev *d, uint32_t n);
/* Serialise/parse the record with its CRC (exposed for tests). */
uint32_t otadev_crc32(const void *p, size_t n);
const char *otadev_phase_name(int phase);

#endif
