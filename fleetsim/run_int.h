/*
 * run_int.h - the simulator's state, shared by the files of its event loop:
 * run.c (the loop, report batches, the device flow), xfer.c (transfers),
 * output.c (summary lines, Prometheus text, the stats file) and provision.c
 * (registering the fleet).
 * Everything here belongs to the loop's thread, except `metrics`, which is
 * guarded by `mlock` (run.h).  main.c uses run.h, not this.
 */
#ifndef OTA_FLEETSIM_RUN_INT_H
#define OTA_FLEETSIM_RUN_INT_H

#include <curl/curl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>

#include "run.h"
#include "trust.h"

#define METRICS_REAL_MS 1000

enum xkind { X_CHECKIN, X_DOWNLOAD, X_FETCH, X_REPORTS };

struct xfer {
	CURL *e;
	enum xkind kind;
	int busy;
	uint32_t dev;
	uint32_t image;              /* 1-based */
	struct sim_download *dl;     /* X_DOWNLOAD (the device's), X_FETCH (own) */
	struct sim_download fetch;
	struct buf keep;             /* X_FETCH: the image bytes */
	struct buf body;             /* answer (or error body) */
	struct buf req;
	struct curl_slist *hdrs;     /* this request's headers (the device's credential) */
	int nreports;
	int tries;                   /* a report batch's earlier sends */
	int64_t range_start;
	int started, body_is_data, failed, flaky_abort, probe;
	char err[CURL_ERROR_SIZE];
};

struct vstat {
	int64_t devices, offered, ever_ran, confirmed, crashes;
	double hours, battery;
	uint64_t *offered_bits, *ran_bits;
	uint64_t vhash;
	struct sim_rates *rates;     /* per hardware index, computed once */
	int64_t *offer_at;           /* otacd ms each device first saw this version offered */
	size_t noffer_at, capoffer_at;
};

struct batch {
	char *body;
	int n;
	int tries;     /* times sent already (refused reports sent again) */
	uint32_t dev;  /* mTLS: 1 + the one device of the batch (0: tokens) */
};

struct fleetsim {
	struct fleetsim_opts o;
	const struct sim_profile *p;
	struct sim_imgcache images;
	struct sim_trust trust;      /* issue 13: root and revocation list (trust.h) */
	int64_t crl_wanted;          /* the newest list number a check-in announced */
	int64_t installed_at_crl;    /* c.installed when the held list was accepted */
	struct sim_versions versions;
	struct vstat *vs;
	size_t nvs;
	struct sim_heap heap;
	struct sim_device *dev;
	uint8_t (*cred)[16];         /* each device's credential (registered at start) */
	struct curl_blob *cert, *key; /* --provisioner: each device's certificate and key (PEM), or NULL */
	uint32_t pending_dev;        /* mTLS: 1 + the device of the pending reports */
	uint32_t *seq;               /* each device's last report seq (docs/update-server.md):
				      * a resent report keeps its number, so otacd counts it once */
	uint32_t ndev;
	uint64_t rng;
	char *base, *checkin_url, *reports_url;
	struct curl_slist *hdr_json, *hdr_auth;
	char *product_json;
	char **hw_json, **bl_json, *tag_json[SIM_MAX_TAGS][SIM_MAX_CHOICES];
	char *tagkey_json[SIM_MAX_TAGS];

	/* downloads in flight or partial, by 1-based slot */
	struct sim_download **dls;
	uint32_t ndls, capdls;
	uint32_t *dlfree;
	uint32_t ndlfree;

	CURLM *multi;
	CURLSH *share;               /* TLS sessions shared by every transfer (resumption) */
	struct xfer **xs;            /* every transfer ever made; idle ones are reused */
	size_t nxs;
	unsigned dev_active;         /* device transfers in flight (check-ins, downloads) */
	unsigned reports_inflight;

	int time_known;
	int64_t anchor_otacd, anchor_real, last_now, t0;
	double scale;
	int64_t poll_ms;
	int probe_inflight;
	int64_t probe_retry_real;
	int fatal;

	struct buf pending;
	int npending;
	int64_t pending_since_real;
	struct batch *q;             /* sealed batches, q[qhead..qn) */
	size_t qhead, qn, qcap;
	int64_t retry_at_real;

	struct {
		int64_t installed, confirmed, reverted, boot_failed, refused,
			refused_lower_counter, refused_bad_signature, incompatible_offers,
			skipped_failed, downloads, resumed_downloads, cut_downloads, reports_sent,
			reports_rejected, reports_dropped, checkins, requests_failed,
			flaky_aborts, heartbeats, withdrawn_downloads;
		/* issue 15, admission: check-ins deferred (503 with a turn), the
		 * most one device had, devices served once and when the last was
		 * (otacd ms after the first answer) */
		int64_t checkins_deferred, deferrals_max, served, served_last_ms;
		/* issue 17, --flag-crash: devices whose flag went on, and off again */
		int64_t flag_turned_on, flag_turned_off;
	} c;
	struct {                     /* --engine core (core.c) */
		int64_t power_cuts, transit_corruptions, server_vanished, reboots, bricked,
			unverified_pending, signature_checks, signature_memo_hits, record_bytes,
			digest_retries;
		int64_t state_bytes_per_device;
		/* issue 15, deltas: body bytes the devices received of images and
		 * of patches, patches applied and installed, and patches that
		 * failed (the device fell back to the full image) */
		int64_t image_bytes, patch_bytes, deltas_applied, delta_fallbacks;
	} core;

	/* issue 15, --herd: the next device whose first check-in is still to
	 * send (1 .. ndev-1; 0: none, or not started).  The herd is sent from
	 * this cursor with the slots the due events leave, not from the heap,
	 * so a deferred device whose turn has come goes before the rest of
	 * the herd (a turn is not missed because the simulator was busy) */
	uint32_t herd_next;
	struct fs_push *push;        /* issue 15, --mqtt-url (push.c), or NULL */
	int64_t *poll_at;            /* with push, model engine: each device's one live poll event */
	int64_t first_hint_ms;       /* otacd ms of the first hint dispatched, 0: none */
	int64_t hints_taken;         /* device check-ins a hint brought forward */

	int64_t *printed;            /* devices per version at the last summary line */
	size_t nprinted;
	int64_t start_real, last_print_real, last_metrics_real;
	int until_reached;
	unsigned warned;
	pthread_mutex_t mlock;
	char *metrics;
};

/* Monotonic real milliseconds. */
int64_t fs_real_ms(void);
/* A warning on stderr, at most WARN_MAX of them, then one that says so. */
void fs_warn(struct fleetsim *fs, const char *fmt, ...) OTA_PRINTF(2, 3);
/* otacd ms now: anchored at the latest answer, never backwards. */
int64_t fs_now(struct fleetsim *fs);
/* libcurl's write callback for a struct xfer (ud): the answer into x->body,
 * or the image into its download. */
size_t fs_on_body(char *p, size_t sz, size_t nm, void *ud);

/* xfer.c: the transfer pool.  fs_xfer_new: an idle transfer (or a new
 * one) of kind to url, busy, with the fleet's headers (NULL when libcurl
 * fails); fs_xfer_as_device: the request is device i's (no credential for
 * an image URL off the device API); fs_xfer_post: POST x->req;
 * fs_xfer_start: on the multi handle (negative, not busy, on failure);
 * fs_xfer_end: off it, not busy; fs_xfer_recycle: after its answer was
 * handled, free what only a fetch owns. */
struct xfer *fs_xfer_new(struct fleetsim *fs, enum xkind kind, const char *url);
void fs_xfer_as_device(struct fleetsim *fs, struct xfer *x, uint32_t i, const char *url);
void fs_xfer_post(struct xfer *x);
int fs_xfer_start(struct fleetsim *fs, struct xfer *x);
void fs_xfer_end(struct fleetsim *fs, struct xfer *x);
void fs_xfer_recycle(struct xfer *x);

/* output.c: a summary line (word: "final" at the end, else NULL); the
 * periodic output (Prometheus text every METRICS_REAL_MS, a summary line
 * when the versions moved or every so often), rn being fs_real_ms(); the
 * stats file (o.stats_path) at exit. */
void fs_print_summary(struct fleetsim *fs, const char *word);
void fs_output_tick(struct fleetsim *fs, int64_t rn);
int fs_write_stats(struct fleetsim *fs);

/* run.c helpers core.c shares: the interned version (with its stats
 * slot), the rates of version v on hardware hw, set bit i (1 if new),
 * stop when --until is reached; a device batch's reports into the
 * pending batch; the reports' share of a loop pass; reports still to go. */
int fs_version_idx(struct fleetsim *fs, const char *s);
const struct sim_rates *fs_rates(struct fleetsim *fs, uint16_t v, uint8_t hw);
int fs_bit_set(struct fleetsim *fs, uint64_t **bits, uint32_t i);
void fs_check_until(struct fleetsim *fs);
/* Device i was offered version v for the first time at otacd ms at (the
 * stats' time from a step's opening to its cohort checked in). */
void fs_note_offer(struct fleetsim *fs, int v, int64_t at);
/* ... from device dev's batch (mTLS: a batch holds one device's reports) */
void fs_report_append(struct fleetsim *fs, uint32_t dev, const char *objs, size_t len, int n);
void fs_reports_tick(struct fleetsim *fs, int force);
int fs_reports_busy(struct fleetsim *fs);
/* core.c (issue 14): the fleet on libotadev, after registration. */
int fs_core_run(struct fleetsim *fs, volatile sig_atomic_t *stop);

/* provision.c: register every device and keep its credential; stops early
 * on *stop. */
int fs_register_fleet(struct fleetsim *fs, volatile sig_atomic_t *stop);
/* provision.c (issue 13, --provisioner): each device makes a P-256 key and
 * gets a client certificate for it (POST /device/v1/provision). */
int fs_provision_certs(struct fleetsim *fs, volatile sig_atomic_t *stop);
/* mTLS: e speaks as device i (its certificate and key); no-op with tokens. */
void fs_client_cert(struct fleetsim *fs, CURL *e, uint32_t i);
/* https: verify the server (--cacert), TLS 1.2+, resume TLS sessions. */
void fs_tls_setopt(struct fleetsim *fs, CURL *e);

#endif
