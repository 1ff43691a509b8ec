/*
 * sim.h - the device model of otacd-fleetsim, without any networking.
 *
 * Everything here is deterministic or driven by an explicit RNG state, so
 * tests/test_fleetsim.c checks it without a server:
 *
 *   - the profile (a JSON file, docs/fleetsim.md): per-version and
 *     per-hardware rates, the silent and flaky fractions, and the
 *     distributions of hardware, bootloader and tags;
 *   - device attributes drawn from (seed, device index), the crasher model
 *     (a device crashes on version V when hash(seed, device, V) < crash_rate);
 *   - the event heap (otacd time, device, kind);
 *   - the decisions a device takes about an offer (downgrade, compatibility)
 *     and about a verified image (signature, security counter);
 *   - the bookkeeping of one image download with HTTP Range resume;
 *   - the image cache: each distinct image (by the SHA-256 of its bytes) is
 *     verified once with mcuboot_verify and the trusted keys.
 *
 * Errors follow common/util.h: 0 or a negative OTA_E* code with a message in
 * ota_error_last().  Nothing here is thread-safe; the simulator runs it on
 * its one event-loop thread.
 */
#ifndef OTA_FLEETSIM_SIM_H
#define OTA_FLEETSIM_SIM_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>
#include <openssl/evp.h>

#include "../common/util.h"

#define SIM_MAX_CHOICES 64      /* values per distribution (indices are uint8) */
#define SIM_MAX_TAGS 4          /* tag keys per device */

/* ---- hashing and random numbers ---------------------------------------- */

uint64_t sim_mix64(uint64_t x);                 /* splitmix64 finaliser */
uint64_t sim_fnv1a64(const char *s);
/* Hash of (seed, device index, salt); salt is a constant or sim_fnv1a64 of a name. */
uint64_t sim_hash(uint64_t seed, uint32_t dev, uint64_t salt);
/* A hash as a double in [0, 1). */
double sim_unit(uint64_t h);
/* Next number of a splitmix64 stream, and a uniform double in [0, 1). */
uint64_t sim_rand(uint64_t *state);
double sim_randu(uint64_t *state);
/* A Poisson draw of mean lambda (>= 0). */
unsigned sim_poisson(uint64_t *state, double lambda);

/* "dev-000042" from an index, into out (n >= 16). */
void sim_device_id(char *out, size_t n, uint32_t index);

/* "X.Y.Z" comparison (missing parts 0); non-numeric parts compare as 0. */
int sim_version_cmp(const char *a, const char *b);

/* ---- profile ----------------------------------------------------------- */

struct sim_rates {
	double crash_rate;          /* fraction of devices on the version that are crashers */
	double boot_fail_rate;      /* test boots that fail outright (MCUboot reverts) */
	double revert_rate;         /* test boots reverted by a non-crasher */
	double battery_mah_per_day;
};

/* A weighted choice: names with cumulative probabilities (cum[n-1] == 1). */
struct sim_dist {
	size_t n;
	char *names[SIM_MAX_CHOICES];
	double cum[SIM_MAX_CHOICES];
};

struct sim_profile {
	json_t *doc;                /* the validated document (rates are read from it) */
	double silent;              /* fraction of devices that never report */
	double flaky;               /* fraction of devices whose requests sometimes fail */
	double flaky_fail;          /* fraction of a flaky device's requests that fail (0.3) */
	double crashes_per_hour;    /* issue 17: every device's background crash rate (0) */
	struct sim_dist hardware, bootloader;
	size_t ntags;
	char *tag_keys[SIM_MAX_TAGS];
	struct sim_dist tags[SIM_MAX_TAGS];
};

/*
 * Parse a profile from JSON text (len bytes); name is used in messages
 * ("fleet.json: versions.1.1.0.crash_rate: must be a number in [0, 1]").
 * text NULL gives the built-in defaults.  Missing parts take the defaults
 * of docs/fleetsim.md.  OTA_EINVAL names the offending key.
 */
int sim_profile_parse(struct sim_profile *out, const char *text, size_t len, const char *name);
void sim_profile_release(struct sim_profile *p);

/* Rates for a device of hardware hw running version: default, then
 * default.hardware[hw], then versions[version], then
 * versions[version].hardware[hw], each overriding the fields it sets. */
void sim_profile_rates(const struct sim_profile *p, const char *version, const char *hw,
		       struct sim_rates *out);

/* The index chosen in d by the unit value u in [0, 1). */
unsigned sim_dist_pick(const struct sim_dist *d, double u);

/* ---- devices ------------------------------------------------------------ */

enum {
	SIM_F_SILENT = 0x01,        /* never reports */
	SIM_F_FLAKY = 0x02,         /* some requests fail */
	SIM_F_BUSY = 0x04,          /* a request of this device is in flight */
	SIM_F_TESTING = 0x08,       /* test-booting a new image */
	SIM_F_WAITING = 0x10,       /* downloaded, waiting for the image's verdict */
	SIM_F_STARTED = 0x20,       /* has checked in once: the server knows it, it may report */
	SIM_F_DEFERRED = 0x40,      /* issue 15: its last check-in was deferred: the next names its turn */
};

/*
 * One virtual device: 40 bytes, so a million fit in 40 MB.  The id is
 * derived from the index (sim_device_id), the strings from tables.
 */
struct sim_device {
	int64_t last_report_ms;     /* otacd time of the last heartbeat (uptime base) */
	uint32_t counter;           /* held security counter */
	uint32_t dl;                /* 1-based download slot in flight or partial, 0 none */
	uint32_t image;             /* 1-based image being installed, 0 none */
	uint32_t failed_image;      /* 1-based image that last failed its test boot */
	uint16_t version;           /* running (confirmed) version, interned */
	uint16_t new_version;       /* version being installed */
	uint8_t hw, bl;             /* indices into the profile's distributions */
	uint8_t tags[SIM_MAX_TAGS];
	uint8_t flags;              /* SIM_F_* */
	uint8_t rssi_base;          /* -(40 + rssi_base) dBm */
	uint8_t deferrals;          /* issue 15: check-ins the server deferred (503), saturating */
	uint8_t flags_on;           /* issue 17: bit i: --flag i is on in its last check-in answer */
	uint8_t flags_off;          /* issue 17: bit i: --flag i is false in its last check-in answer */
};

/* Draw the attributes of device `index` from the seed: hardware, bootloader,
 * tags, silent/flaky, base RSSI.  The running state is left zero. */
void sim_device_init(struct sim_device *d, const struct sim_profile *p, uint64_t seed,
		     uint32_t index);

/* Is device `index` a crasher on `version` given the crash rate? */
int sim_is_crasher(uint64_t seed, uint32_t index, const char *version, double crash_rate);

/* Crashes per device-hour of a crasher (one every six hours). */
/* issue 17: feature flags fleetsim follows (--flag, --flag-crash) */
#define SIM_MAX_FLAGS 4
#define SIM_CRASHER_RATE_PER_HOUR (1.0 / 6.0)

/* ---- version table ------------------------------------------------------ */

struct sim_versions {
	char **names;
	size_t n, cap;
};

/* Index of version s, added if new.  OTA_ETOOBIG past 65535 versions. */
int sim_version_intern(struct sim_versions *t, const char *s);
void sim_versions_release(struct sim_versions *t);

/* ---- event heap --------------------------------------------------------- */

enum sim_event_kind {
	SIM_EV_POLL = 0,            /* check in */
	SIM_EV_HEARTBEAT = 1,       /* send a health report */
	SIM_EV_BOOT = 2,            /* the test boot of a new image ends */
	SIM_EV_RESUME = 3,          /* retry a failed request */
};

struct sim_event {
	int64_t at;                 /* otacd ms */
	uint32_t dev;
	uint8_t kind;
};

/* A binary min-heap ordered by (at, dev, kind): ties pop in a fixed order. */
struct sim_heap {
	struct sim_event *v;
	size_t n, cap;
};

void sim_heap_push(struct sim_heap *h, int64_t at, uint32_t dev, uint8_t kind);
/* 1 and the earliest event in *out, or 0 when empty. */
int sim_heap_pop(struct sim_heap *h, struct sim_event *out);
/* The earliest event or NULL (borrowed). */
const struct sim_event *sim_heap_peek(const struct sim_heap *h);
void sim_heap_release(struct sim_heap *h);

/* ---- images and decisions ----------------------------------------------- */

enum sim_image_state { SIM_IMG_UNKNOWN, SIM_IMG_FETCHING, SIM_IMG_OK, SIM_IMG_BAD };

struct sim_image {
	char sha256[65];            /* lowercase hex: the key */
	char *url;                  /* where it is served (may be NULL in tests) */
	int64_t size;
	enum sim_image_state state;
	int has_counter;
	uint32_t counter;           /* the image's security counter (verified) */
	char version[24];           /* from the image header */
	char *error;                /* why SIM_IMG_BAD */
	uint32_t *waiters;          /* devices waiting for the verdict */
	size_t nwaiters, capwaiters;
	unsigned fetch_failures;
	int64_t release;            /* the offer's release id (0 unknown) */
	json_t *chain;              /* issue 13: its signing chain once trusted (trust.c) */
	int64_t signed_at;          /* the manifest's built_at, Unix seconds */
	const char *hardware;       /* borrowed: the variant of the device that fetched it (picks the --enc-key) */
};

/* A device decryption key (--enc-key [HARDWARE=]FILE); hardware NULL: any. */
struct sim_enc_key {
	const char *hardware;
	EVP_PKEY *key;
};

struct sim_imgcache {
	struct sim_image **v;
	size_t n;
	EVP_PKEY **keys;            /* borrowed: the trusted public keys */
	size_t nkeys;
	uint64_t verifications;     /* mcuboot_verify runs (one per distinct image) */
	const struct sim_enc_key *enc;  /* borrowed: the devices' decryption keys (--enc-key) */
	size_t nenc;
};

void sim_imgcache_init(struct sim_imgcache *c, EVP_PKEY **keys, size_t nkeys);
void sim_imgcache_release(struct sim_imgcache *c);
/* Index of the image with this sha256 (hex), -1 when absent; create adds it. */
long sim_imgcache_find(struct sim_imgcache *c, const char *sha256, int create);
/*
 * Verify the bytes of image img once: their SHA-256 must be img->sha256
 * (when set), mcuboot_verify must pass with one of the trusted keys (an
 * encrypted image is first decrypted, as MCUboot does, with the enc key of
 * img->hardware, else the one for any hardware; without one, or with
 * another key, it is BAD); the verdict (SIM_IMG_OK with the counter and version, or SIM_IMG_BAD with the
 * reason) is kept.  Returns 0 for OK, OTA_EINVAL for BAD.  An image that
 * already has a verdict is not verified again.
 */
int sim_imgcache_verify(struct sim_imgcache *c, struct sim_image *img, const void *data,
			size_t len);
/* The same with the given keys instead of the cache's (trust.c: the
 * release's certified key). */
int sim_imgcache_verify_with(struct sim_imgcache *c, struct sim_image *img, const void *data, size_t len,
			     EVP_PKEY **keys, size_t nkeys);
/* Set img's verdict to refused, with the reason. */
void sim_image_refuse(struct sim_image *img, const char *why);
/* Content-addressed: the image entry for these bytes (by their SHA-256),
 * verified once.  *out borrowed.  0 OK, OTA_EINVAL refused. */
int sim_imgcache_check(struct sim_imgcache *c, const void *data, size_t len,
		       struct sim_image **out);
void sim_image_add_waiter(struct sim_image *img, uint32_t dev);

enum sim_verdict {
	SIM_ACCEPT = 0,
	SIM_SAME_VERSION,           /* already running it: nothing to do */
	SIM_SKIP_FAILED,            /* this image failed its test boot here before */
	SIM_REFUSE_LOWER_COUNTER,   /* downgrade below the held counter */
	SIM_REFUSE_INCOMPATIBLE,    /* offered for other hardware or a newer bootloader */
	SIM_REFUSE_BAD_SIGNATURE,   /* the image does not verify with a trusted key */
};

/* What the device knows of itself when judging an offer. */
struct sim_self {
	const char *version, *hardware, *bootloader;
	uint32_t counter;
	uint32_t failed_image;      /* 1-based, 0 none */
};

/* An offer as parsed from a check-in answer (fields may be NULL / -1). */
struct sim_offer {
	const char *version;
	int64_t counter;            /* declared security counter, -1 when absent */
	const char *hardware;       /* image.hardware when the server sends it */
	const char *min_bootloader; /* when the server sends it */
	uint32_t image;             /* 1-based image index */
};

/* Before downloading: same version, a declared counter below the held one,
 * incompatible hardware / bootloader, an image that failed here before. */
enum sim_verdict sim_offer_check(const struct sim_self *self, const struct sim_offer *o);
/* After the download: the verified image must be OK and its counter
 * (0 when it has none) >= the held counter. */
enum sim_verdict sim_image_check(uint32_t held_counter, const struct sim_image *img);
const char *sim_verdict_name(enum sim_verdict v);

/* ---- one download with Range resume ------------------------------------- */

struct sim_download {
	uint32_t dev;               /* device index (UINT32_MAX: the shared fetch) */
	uint32_t image;             /* 1-based image index */
	uint64_t offset;            /* bytes received and hashed so far */
	uint64_t cut;               /* abort the transfer at this byte (0: never) */
	EVP_MD_CTX *md;             /* SHA-256 of bytes [0, offset) */
	int resumed;                /* this attempt continues at offset > 0 (206) */
	unsigned resumes;           /* attempts that continued with a range */
	int cut_hit;                /* the transfer was cut on purpose */
	struct buf *keep;           /* when set, the bytes are also kept here */
};

/* Start a fresh download (offset 0). */
int sim_download_init(struct sim_download *d, uint32_t dev, uint32_t image);
void sim_download_release(struct sim_download *d);
/* The Range header value for the next attempt ("bytes=N-"), or "" from 0. */
void sim_download_range(const struct sim_download *d, char *out, size_t n);
/*
 * The response to an attempt arrived: status 200 (the whole image: the
 * download restarts at 0), 206 with Content-Range start range_start (must
 * equal offset).  Anything else is OTA_EINVAL and the caller drops the
 * attempt; 416 also resets the download to 0.
 */
int sim_download_response(struct sim_download *d, long status, int64_t range_start);
/* Bytes of the body: hashed and counted; returns how many were taken,
 * fewer than n when the cut is reached (the caller aborts the transfer). */
size_t sim_download_data(struct sim_download *d, const void *p, size_t n);
/* The SHA-256 of the bytes so far as hex (does not end the hash). */
int sim_download_digest(const struct sim_download *d, char hex[65]);

#endif
