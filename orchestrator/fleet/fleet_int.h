/*
 * fleet_int.h - what fleet.c (memory, check-ins, validation),
 * fleet_offer.c (exposures, the offer, push hints), fleet_report.c (report
 * batches) and fleet_store.c (fleet.db, the writer thread) share.  Not an
 * API: see fleet.h.
 */
#ifndef OTA_FLEET_INT_H
#define OTA_FLEET_INT_H

#include <openssl/evp.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../../common/util.h"
#include "../artifact.h"
#include "../db/db.h"
#include "fleet.h"

#define FLEET_SHARD_BITS 6              /* 64 device shards */
#define FLEET_NSHARDS (1 << FLEET_SHARD_BITS)
#define FLEET_NVFLAGS 4                 /* versions a device keeps flags for */
#define FLEET_MAX_TAGS 16
#define FLEET_TAGS_INLINE 4              /* tags a device holds without an allocation */
#define FLEET_MAX_REPORTS 1000
#define FLEET_FNV_BASIS 0xcbf29ce484222325ULL
#define FLEET_CRED_BYTES 16             /* a device credential: 128 bits, 32 hex characters */
#define FLEET_MAX_REGISTER 10000        /* devices per registration request */
#define FLEET_MAC_POOL 32               /* keyed HMAC contexts kept for reuse */

/* Weight bounds of one device (docs/update-server.md, "Bounds").  Uptime
 * is credited up to the otacd time since the device's previous credit (a
 * device first seen may claim one poll interval about the version it runs;
 * a report about another version starts its clock afresh).  Crashes are
 * credited from a bucket that fills with credited uptime, CRASH_PER_HOUR
 * per device-hour up to CRASH_BURST: a device in a crash loop weighs like
 * a device that crashes now and then, and no device adds crashes without
 * adding exposure, so a handful of devices cannot outweigh a canary.
 * Battery is credited up to MAX_MA mA over the credited uptime. */
#define FLEET_UPTIME_MAX_S (366.0 * 86400)   /* larger uptime_s is refused */
#define FLEET_CRASHES_MAX 1000000            /* larger crashes is refused */
#define FLEET_CRASH_BURST 2.0
#define FLEET_CRASH_PER_HOUR 0.25
#define FLEET_MAX_MA 1000.0

/* Per-(device, version) flags behind the distinct counters. */
enum {
	FL_OFFERED = 1 << 0,
	FL_DOWNLOAD = 1 << 1,
	FL_INSTALL = 1 << 2,
	FL_BOOT_OK = 1 << 3,
	FL_BOOT_FAIL = 1 << 4,
	FL_REVERT = 1 << 5,
	FL_REPORTING = 1 << 6,
	FL_CRASHED = 1 << 7,
};
/* The bits above the flags keep the step generation of the device's first
 * offer of the version (the exposing segment's gen; 0: none): the step that
 * exposed it.  They are stored with the flags, so they survive restarts. */
#define FL_GEN_SHIFT 8
#define FL_GEN(flags) ((uint32_t)(flags) >> FL_GEN_SHIFT)

/* Report events, in the order of fleet_report.c's event_names. */
enum { EV_DOWNLOAD, EV_INSTALL, EV_BOOT_OK, EV_BOOT_FAIL, EV_REVERT, EV_HEARTBEAT, EV_REFUSED };

struct vflag {
	const char *version;   /* interned; NULL: unused slot */
	uint32_t flags;
	/* memory only: FL_OFFERED set by a check-in and not yet added to the
	 * aggregates.  The writer adds it when it writes the device's row
	 * (fleet_count_offers_locked), so one commit holds both or neither:
	 * added at the check-in, a round could commit the count without the
	 * row, and after a kill the device was offered and counted again. */
	uint8_t uncounted;
};

/* A device.  Every field but next is guarded by its shard's mutex; the
 * struct itself lives until fleet_close, so pointers to it stay valid. */
struct device {
	struct device *next;          /* hash chain */
	struct device *dirty_next;    /* shard's dirty list, when dirty */
	uint64_t hash;
	const char *product, *hardware, *bootloader, *version;   /* interned */
	uint32_t bl[3];
	int64_t counter, last_seen;
	int64_t last_seen_written;    /* the last_seen of its last row written (0: unknown) */
	const char **tags;            /* interned "key=value", sorted: tags_inline
				       * when they fit (no second cache miss per
				       * check-in), else malloc'd */
	const char *tags_inline[FLEET_TAGS_INLINE];
	uint8_t ntags;
	uint8_t dirty;
	struct vflag vf[FLEET_NVFLAGS];
	/* weight bounds (memory only): uptime is credited up to uptime_until
	 * (otacd ms) for credit_version; crash credit in crash_budget */
	int64_t uptime_until;
	const char *credit_version;
	double crash_budget;
	/* report seq (docs/update-server.md): the highest applied, and which
	 * of the 63 below it were not (fleet_seq_*) */
	uint64_t seq, seq_gaps;
	/* the version it ran before (memory only): a report about it sent
	 * before the device's check-in with the new version may arrive after
	 * it (issue 19 part 5, the 1M-device rollout) */
	const char *prev_version;
	char id[];
};

/* A registered device id and the generation of its credential. */
struct reg {
	struct reg *next;
	uint64_t hash;
	uint32_t gen;
	uint32_t cred_gen;            /* cred holds generation cred_gen's credential */
	struct device *dev;           /* its device once it checked in (a cache:
				       * an authenticated check-in looks it up
				       * once); under the shard's mutex */
	/* the credential of generation cred_gen (when has_cred), as
	 * credential() computes it: a device's every request compares its
	 * token with this instead of computing the HMAC again (the secret
	 * never changes while the fleet is open); under the shard's mutex */
	unsigned char cred[FLEET_CRED_BYTES];
	uint8_t has_cred;
	char id[];
};

struct shard {
	/* written at every lock and change: a cache line of its own (and not
	 * a neighbour's), so the tables below stay in every core's cache */
	_Alignas(64) pthread_mutex_t mu;
	struct device *dirty;
	size_t n, rn;
	/* written only when a table grows (rb and rnb atomically: see
	 * fleet_checkin_prefetch) */
	_Alignas(64) struct device **b;
	size_t nb;
	struct reg **rb;              /* registered ids (fleet_auth.c) */
	size_t rnb;
};

/* One aggregate; counters are updated with atomics, the strings and the
 * chain never change once it is in the table. */
struct agg {
	struct agg *next, *all_next;
	const char *product, *version, *cohort;   /* interned */
	struct fleet_agg v;        /* live: what the next commit writes */
	/* the counters of the last commit (atomics, written by the writer):
	 * what readers see, so no reader sees a count a restart would undo
	 * (`devices` is read live from v) */
	struct fleet_agg c;
	struct fleet_agg pend;     /* writer only: written, not yet committed */
	int dirty;                 /* atomic: on f->agg_dirty */
	struct agg *dirty_next;
	struct agg *flushed_next;  /* writer only: on f->agg_flushed */
};

struct intern {
	pthread_rwlock_t lock;
	char **slot;     /* open addressing, power of two */
	size_t cap, n;
};

/* issue 15: the offer with a patch, for devices running from_version */
struct exp_delta {
	const char *from_version;  /* interned */
	char *sha256;              /* of the patch (an artifact, served like an image) */
	char *offer[2];            /* as exp_image.offer, with "delta" */
};

/* Does a device reporting version v run e's base?  v is the release's
 * version, or the image's own with its build ("1.0.0+7": a device that
 * was flashed with the release's image, not updated to it). */
static inline int exp_delta_applies(const struct exp_delta *e, const char *v)
{
	size_t n = strlen(e->from_version);
	return v && (v == e->from_version || (!strncmp(v, e->from_version, n) && v[n] == '+'));
}

struct exp_image {
	const char *hardware;      /* interned */
	char *sha256, *type, *url;
	int64_t size;
	char *offer[2];            /* the check-in answer's "offer", JSON text:
				    * [0] a rollout, [1] a rollback */
	struct exp_delta *deltas;
	size_t ndeltas;
};

struct cohort_key {
	const char **values;       /* interned "key=value" */
	size_t nvalues;
};

/* Devices matching every cohort key whose slot is below bp. */
struct exp_segment {
	struct cohort_key *cohort;
	size_t ncohort;
	int bp;
	uint32_t gen;              /* step credited to first offers (fleet_segment.gen) */
};

struct exposure {
	int64_t release_id;
	const char *product, *version;   /* interned */
	int64_t counter;
	int has_min_bl;
	uint32_t min_bl[3];
	struct exp_image *images;
	size_t nimages;
	int active;
	char *salt;
	struct exp_segment *segs;   /* exposed: in any segment */
	size_t nsegs;
	int64_t rollback_to;
};

struct report {
	struct device *dev;
	const char *version;       /* interned */
	const char *was;           /* the device's version when the report was
				    * validated: the writer moves the device to
				    * `version` (boot_ok, heartbeat) only if nothing
				    * moved it since (a newer check-in wins) */
	int event;
	int crashed;               /* it claimed crashes (the distinct `crashed` flag) */
	int64_t crashes;           /* credited, within the device's bounds */
	double uptime_s, battery_mah;
	uint64_t seq;              /* the device's report number, 0: none; the
				    * writer applies it only above dev->seq */
};

/* A registration waiting for the writer (fleet_auth.c): the writer gives
 * each id its next generation, stores it and one audit row. */
struct fleet_reg {
	size_t n;
	char **ids;
	uint32_t *gens;            /* set by the writer */
	char peer[64];
	int64_t at;                /* otacd ms */
};

/* A validated report batch (or, with reg set, a registration) waiting for
 * the writer. */
struct batch {
	struct batch *next;
	int64_t at;                /* real (monotonic) ms it was queued: the lag */
	void (*done)(void *ctx, int rc);
	void *ctx;
	struct fleet_reg *reg;     /* borrowed: owned by the caller */
	size_t n;
	struct report r[];
};

struct fleet {
	fleet_notify_fn notify; /* issue 15, push: fleet_set_notify (fleet_offer.c) */
	void *notify_ctx;
	int offers_held;         /* fleet_hold_offers; __atomic builtins */
	fleet_flags_fn flags_fn; /* issue 17, feature flags: fleet_set_flags (fleet.c) */
	void *flags_ctx;
	char *fleet_key;
	size_t fleet_key_len;
	unsigned char secret[32];  /* device credentials: HMAC key, server only */
	int has_secret;
	/* fleet_auth.c: HMAC contexts keyed with secret, ready for reuse (a
	 * credential check re-inits one instead of fetching SHA-256 and
	 * hashing the key again); under mac_mu */
	pthread_mutex_t mac_mu;
	EVP_MAC_CTX *mac_pool[FLEET_MAC_POOL];
	int mac_n;
	char *db_path;
	int64_t cfg_poll_ms;

	/* registration rate limit: a token bucket in devices (real time) */
	/* devices and registry entries: carved from huge-page chunks
	 * (fleet_node_alloc), freed at close; slab_mu is a leaf lock */
	pthread_mutex_t slab_mu;
	struct slab_chunk *slab;
	char *slab_cur;
	size_t slab_left;
	pthread_mutex_t reg_mu;
	double reg_rate, reg_burst, reg_tokens;
	int64_t reg_at;
	int64_t reg_refused;       /* devices refused by the limit since start */

	/* label admission (fleet.c): device-supplied strings that may name an
	 * aggregate or be interned; bounded so /metrics and memory are */
	pthread_rwlock_t adm_lock;
	const char **adm;          /* open addressing set of interned pointers */
	size_t adm_cap, adm_n;
	int64_t n_tags, n_names, tag_cap, name_cap;
	json_t *tag_allow;         /* {"key": ["v", ...]} or NULL */
	const char *star;          /* interned "*" */

	struct intern intern;
	struct shard shards[FLEET_NSHARDS];

	uint64_t instance;         /* atomic: this fleet's number in the process (0: not drawn yet) */
	pthread_rwlock_t agg_lock;
	struct agg **agg_b, *agg_all;
	size_t agg_nb, agg_n;
	pthread_mutex_t agg_dirty_mu;
	struct agg *agg_dirty;
	struct agg *agg_flushed;   /* writer only: written this round */

	pthread_rwlock_t exp_lock;
	struct exposure **exp;     /* newest release first */
	size_t nexp;

	/* fleet_store.c: the writer thread owns db and everything below */
	struct db *db;
	int legacy;                /* OTACD_FLEET_LAYOUT=legacy (benchmarks only) */
	int64_t log_rows;          /* legacy: rows in device_log not yet merged */
	int64_t snap_gen, snap_seq;   /* the snapshot in use and the last log seq it covers */
	int64_t log_seq;           /* the last dev_log seq written */
	int64_t log_bytes, snap_bytes;   /* dev_log bytes after snap_seq; the snapshot's */
	int64_t compact_min, compact_ratio;   /* a snapshot once the log has compact_min bytes
					       * and compact_ratio times the snapshot's */
	int64_t round_ms;          /* fleet_round_due's pace (OTACD_FLEET_ROUND_MS) */
	char *stall_path;          /* OTACD_TEST_FLEET_STALL_FILE (tests only) */
	char *stall_aggs_path;     /* OTACD_TEST_FLEET_STALL_AGGS_FILE (tests only) */
	int64_t snap_round;        /* devices a round captures for a snapshot (at least a shard) */
	int building;              /* a new snapshot is being written, shard by shard */
	int closing;               /* the last round (fleet_close): no snapshot starts */
	int build_shard;           /* the next shard it captures */
	int64_t build_seq, build_bytes, build_log_bytes;
	int64_t build_started, build_rounds;   /* monotonic ms it started; commits so far */
	int64_t snap_ms, snap_rounds;          /* the last one completed: start to switch (atomics) */
	/* check-ins that moved only last_seen (fleet_store_seen): the otacd
	 * time of the oldest not yet in a row written (0: none; atomic), and
	 * the value the snapshot being built took over */
	int64_t seen_pending, build_seen;
	int64_t snapshots;         /* snapshots completed since open (atomic: fleet_store_stats) */
	int64_t rounds, round_batches;   /* rounds that committed batches, and those batches (atomics) */
	struct device **written;   /* devices whose rows this round wrote */
	size_t nwritten, cap_written;
	pthread_t writer;
	pthread_mutex_t q_mu;
	pthread_cond_t q_cond;
	struct batch *q_head, **q_tail;
	size_t q_n, q_reports;     /* batches and reports queued */
	int stop;

	/* device certificates (issue 13; fleet_set_ca, fleet_auth_cert) */
	struct fleet_ca *ca;
	int auth_mode;             /* enum fleet_auth_mode */
	/* how stale the committed aggregates are (fleet_lag): the queue time
	 * of the oldest batch taken by the writer and not yet committed (0:
	 * none; set under q_mu, kept across a failed commit) and the time of
	 * the last commit, monotonic ms, atomics */
	int64_t lag_oldest, last_commit;
};

uint64_t fleet_fnv(const void *p, size_t n, uint64_t h);
/* A hash's bits mixed over the word (FNV-1a's top and low bits are weak). */
uint64_t fleet_hash_mix(uint64_t h);
int fleet_device_id_valid(const char *s);
int fleet_name_valid(const char *s);
int fleet_version_valid(const char *s);
int fleet_xyz_parse(const char *s, uint32_t out[3]);

const char *fleet_intern(struct fleet *f, const char *s, size_t len);
const char *fleet_intern_find(struct fleet *f, const char *s);
void fleet_admit_known(struct fleet *f, const char *p, int tag, int count);

struct agg *fleet_agg_get(struct fleet *f, const char *p, const char *v, const char *c);
void fleet_agg_mark(struct fleet *f, struct agg *a);
void fleet_agg_add(struct fleet *f, const struct device *d, const char *version, size_t off, int64_t delta, int mark);
/* Add a report's crashes, device-hours and battery to the same aggregates. */
void fleet_agg_add_usage(struct fleet *f, const struct device *d, const char *version, int64_t crashes, double hours,
			 double mah);
void fleet_agg_read(const struct agg *a, struct fleet_agg *out);
/* The writer, after a commit (ok) or a rollback: publish what it wrote as
 * the committed counters, or mark them to be written again. */
void fleet_agg_publish(struct fleet *f, struct agg *a, int ok);

/* The shard of a device id whose fleet_fnv is h: its lock and tables. */
int fleet_shard_index(uint64_t h);
struct shard *fleet_shard(struct fleet *f, uint64_t h);
struct device *fleet_device_find_locked(struct shard *s, const char *id, uint64_t h);
/* A zeroed node (a device or a registry entry) of size bytes in whole
 * cache lines, living until fleet_close (fleet_nodes_free). */
void *fleet_node_alloc(struct fleet *f, size_t size);
void fleet_nodes_free(struct fleet *f);
struct device *fleet_device_new_locked(struct fleet *f, struct shard *s, const char *id, uint64_t h);
void fleet_device_mark_locked(struct shard *s, struct device *d);
struct vflag *fleet_vflag(struct device *d, const char *v);
void fleet_device_set_version_locked(struct fleet *f, struct device *d, const char *v);
/* Add d's uncounted offers to the aggregates (d's shard locked). */
void fleet_count_offers_locked(struct fleet *f, struct device *d);
void fleet_device_set_tags_locked(struct device *d, const char *const *tags, size_t n);
/* A check-in's answer into out (cap bytes, NUL-terminated):
 * {"now":N,"time_scale":S,"next_poll_ms":P,"offer":O[,"revocations":C]}
 * (revocations when crl > 0; scale and offer are JSON text).  Its length,
 * or -1 when it does not fit (fleet_answer.c). */
int fleet_answer_format(char *out, size_t cap, int64_t now, const char *scale, int64_t poll, const char *offer,
			int64_t crl, const char *flags);
/* Frees d's tag array unless it is d's own tags_inline (d->tags NULL after). */
void fleet_device_free_tags(struct device *d);

/* fleet_offer.c: the exposures (f->exp) and the check-in decision.  Both
 * are called with exp_lock held for reading and d's shard locked.
 * fleet_decide: the exposure whose image (*img) d is offered (a rollback
 * when *rollback), or NULL; fleet_exposure_gen: the step a first offer of
 * x to d is credited to (0: none). */
const struct exposure *fleet_decide(struct fleet *f, const struct device *d, const struct exp_image **img,
				    int *rollback);
uint32_t fleet_exposure_gen(const struct exposure *x, const struct device *d);
void fleet_exposures_free(struct fleet *f);
/* The flags of version v, when d keeps any (never creates a slot). */
uint32_t fleet_vflags_of(const struct device *d, const char *v);

/* A synchronous caller waiting for the writer's done callback (fleet_report,
 * fleet_checkin): fleet_sync_done is the callback, fleet_sync_finish waits
 * for it and returns its code (and message). */
struct fleet_sync {
	pthread_mutex_t mu;
	pthread_cond_t cond;
	int done, rc;
	char msg[512];
};
void fleet_sync_done(void *ctx, int rc);
int fleet_sync_finish(struct fleet_sync *w);

/* Report seq, an anti-replay window (as IPsec's): hi is the highest seq
 * applied, bit k of gaps says seq hi-k (k 1..63) was skipped, not applied.
 * Has seq s been applied (or is it too old to tell: more than 63 below
 * hi)?  Under the device's shard lock. */
static inline int fleet_seq_seen(uint64_t hi, uint64_t gaps, uint64_t s)
{
	return s <= hi && (hi - s >= 64 || !((gaps >> (hi - s)) & 1));
}

/* Record s (not fleet_seq_seen) as applied. */
static inline void fleet_seq_mark(uint64_t *hi, uint64_t *gaps, uint64_t s)
{
	if (s > *hi) {
		uint64_t shift = s - *hi, m = shift - 1 < 63 ? shift - 1 : 63;
		*gaps = (shift >= 64 ? 0 : *gaps << shift) | (((1ULL << m) - 1) << 1);
		*hi = s;
	} else {
		*gaps &= ~(1ULL << (*hi - s));
	}
}

/* fleet_store.c */
void fleet_store_submit(struct fleet *f, struct batch *b);
/*
 * The writer's round pacing: whether a round for the waiting batches may
 * start at now (monotonic ms), the last one having started at last_round.
 * A round at most every pace_ms (FLEET_ROUND_MS, OTACD_FLEET_ROUND_MS;
 * 0 or less: no pacing) unless FLEET_ROUND_BATCHES batches or
 * FLEET_ROUND_REPORTS reports wait: each commit rewrites and fsyncs a few
 * pages whatever it holds, so only rounds of little work are held back.
 * Pure: no clock, no lock.
 */
#define FLEET_ROUND_MS 10
#define FLEET_ROUND_BATCHES 64
#define FLEET_ROUND_REPORTS 4096
int fleet_round_due(int64_t now, int64_t last_round, size_t batches, size_t reports, int64_t pace_ms);
/* A check-in at now (otacd ms) moved only its device's last_seen: a
 * snapshot starts within one poll interval to write it. */
void fleet_store_seen(struct fleet *f, int64_t now);

/* fleet_rows.c: device rows packed many to a BLOB (format in fleet_rows.c).
 * Encoding reads the devices, so the caller holds their shard locks. */
struct fleet_chunk {
	struct buf str, dev;
	const char **keys;         /* interned pointer -> string index */
	uint32_t *idx;
	size_t cap, nstr, ndev;
	const char *prev_id;
	int64_t prev_seen;
};

struct fleet_row {
	const char *id;            /* valid during the callback */
	const char *product, *hardware, *bootloader, *version;   /* interned */
	int64_t counter, last_seen;
	const char *tags[FLEET_MAX_TAGS];
	size_t ntags;
	struct vflag vf[FLEET_NVFLAGS];
	int nvf;
	uint64_t seq, seq_gaps;    /* struct device's (0 in format 1) */
};

void fleet_chunk_init(struct fleet_chunk *c);
void fleet_chunk_add(struct fleet_chunk *c, const struct device *d);
/* The chunk's BLOB into out; the chunk is empty again. */
void fleet_chunk_finish(struct fleet_chunk *c, struct buf *out);
void fleet_chunk_release(struct fleet_chunk *c);
int fleet_chunk_decode(struct fleet *f, const void *p, size_t n, void (*fn)(struct fleet *f, const struct fleet_row *row));

/*
 * fleet_rows.c: the `registered` rows one writer round upserts, in the
 * order its registrations gave out generations (an id may come twice: its
 * later row wins, as if each were written one by one).  ids are borrowed
 * from the round's registrations.  fleet_regrows_write() runs in the
 * round's transaction: on SQLite one prepared upsert per row, on
 * PostgreSQL FLEET_REG_CHUNK rows a statement (arrays bound as parameters).
 */
#define FLEET_REG_CHUNK 8192
struct fleet_regrows {
	const char **ids;
	int64_t *gens, *at;
	size_t n, cap;
};
void fleet_regrows_add(struct fleet_regrows *r, const char *id, int64_t gen, int64_t at);
int fleet_regrows_write(struct db *db, const struct fleet_regrows *r);
void fleet_regrows_release(struct fleet_regrows *r);

/* fleet_auth.c: the registry (shard-locked), used by the writer and load */
struct reg *fleet_reg_find_locked(struct shard *s, const char *id, uint64_t h);
struct reg *fleet_reg_new_locked(struct fleet *f, struct shard *s, const char *id, uint64_t h);
void fleet_reg_free_shard(struct shard *s);
void fleet_auth_release(struct fleet *f);   /* the HMAC contexts (fleet_free) */
/* fleet_device_auth, and the device's registry entry (lives until
 * fleet_close) in *out */
int fleet_device_auth_reg(struct fleet *f, const char *device_id, const char *cred, struct reg **out);

/* fleet.db's connection with its settings (fleet_store.c: a new SQLite
 * file gets 1 KB pages); url as fleet_db_url() gives it. */
int fleet_db_open(struct db **out, const char *url);

#endif
