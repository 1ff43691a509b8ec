/*
 * fleet.h - the built-in update server's view of the device fleet.
 *
 * The `builtin` update-server adapter keeps here, in memory, every device
 * that checked in (its variant, bootloader, version, counter, tags and what
 * it reported about its current version) and the aggregates the gates read:
 * counts per (product, version, cohort), where cohort is "*" or one
 * "key=value" tag.  Gates never read raw reports, so a gate evaluation costs
 * the same with 100 devices or 1M.
 *
 * Persistence: a SQLite file of its own (STATE/fleet.db), written only by
 * the fleet's writer thread.  A report batch is answered only once the
 * writer has committed it (group commit: every waiting batch in one
 * transaction), so an accepted report survives a SIGKILL.  Device rows
 * changed by check-ins are written behind, at most a second later (losing
 * a last-seen time in a crash is harmless; the device checks in again).
 *
 * Exposures (which release is offered to whom) are desired state set by
 * the rollout controller (orchestrator/rollout.c) through the builtin
 * adapter; they are not persisted here: the controller sets all of them
 * again from the orchestrator's database at start.  Setting the same
 * exposure twice is harmless.
 *
 * Threads: every function is safe to call from any thread.  Check-ins take
 * a read lock on exposures and a lock on one device-table shard.
 *
 * Identity (fleet_auth.c): devices are registered with the fleet key and
 * get their own credential; every check-in, report and download is
 * checked against it, and reports are credited within per-device bounds
 * (fleet_int.h), so no handful of devices outweighs a canary.
 *
 * The wire format is docs/update-server.md; devapi.c is the HTTP side.
 */
#ifndef OTA_FLEET_H
#define OTA_FLEET_H

#include <jansson.h>
#include <stdint.h>

struct fleet;

struct fleet_image {
	const char *hardware;   /* variant this image is for */
	const char *sha256;     /* of the signed image (an artifact) */
	const char *type;       /* "application", ... */
	int64_t size;
};

/* One part of a release's exposure: devices matching cohort (NULL: all)
 * whose slot is below basis_points. */
struct fleet_segment {
	const json_t *cohort;                /* {"tag": ["v1","v2"]} or NULL */
	int basis_points;                    /* 0..10000 */
	/* The step now widening this segment (rollout_step_gen, < 2^24; 0:
	 * none).  A device it exposes keeps the step of its first offer, and
	 * its reports about the release are also counted in the aggregates
	 * of cohort "@GEN/COHORT" (fleet_step_cohort): the evidence of the
	 * devices that step exposed (docs/gates.md). */
	uint32_t gen;
};

/* Desired offer state for one release.  Strings are copied. */
struct fleet_exposure {
	int64_t release_id;
	const char *product, *version;
	int64_t security_counter;
	const char *min_bootloader;          /* "X.Y.Z" or NULL */
	const struct fleet_image *images;    /* one per hardware variant */
	size_t nimages;
	int active;                          /* 1: offer to the cohort; 0: halted, no new offers */
	const char *salt;                    /* cohort hash salt, fixed per rollout */
	int basis_points;                    /* 0..10000: percent x 100 */
	const json_t *cohort;                /* {"tag": ["v1","v2"]} or NULL: every device */
	int64_t rollback_to;                 /* devices running this release are offered that one (0: none) */
	/* When nsegments > 0 these replace cohort/basis_points: a device is
	 * exposed when it is in any segment (a soak's staging group, then
	 * rings of a rollout, each at its own percentage). */
	const struct fleet_segment *segments;
	size_t nsegments;
	/* issue 15: patches to these images from earlier versions (the
	 * manifest's `deltas`); a device running from_version is offered the
	 * patch beside the image (docs/delivery.md "Delta updates") */
	const struct fleet_delta *deltas;
	size_t ndeltas;
};

struct fleet_delta {
	const char *hardware, *to_sha256;    /* the image it rebuilds */
	const char *from_version;            /* devices running this version */
	const char *sha256, *base;           /* the patch; MCUboot SHA256 TLV of its base */
	int64_t size;
};

/* Counters for one (product, version, cohort); see docs/update-server.md. */
struct fleet_agg {
	int64_t devices;         /* devices whose current version is this one */
	int64_t offered;
	int64_t downloads, installs;
	int64_t boot_ok, boot_fail, reverts;
	int64_t reporting;       /* distinct devices that reported about this version */
	int64_t crashed;         /* distinct devices with >= 1 crash on this version */
	int64_t crashes;
	double device_hours;
	double battery_mah;
};

struct fleet_config {
	const char *db_path;       /* STATE/fleet.db */
	const char *fleet_key;     /* provisioning key; NULL: nobody can register devices */
	const char *device_secret; /* >= 32 hex chars, server only (STATE/device.secret);
				      NULL: no device can authenticate */
	int64_t poll_ms;           /* check-in interval in otacd ms (default 6 h) */
	double register_rate;      /* registrations per real second (default 10) */
	int64_t register_burst;    /* bucket size in devices (default 10000) */
	const json_t *tag_allow;   /* {"key": ["value", ...]}: the only tags accepted; NULL: tag_cap */
	int64_t tag_cap;           /* distinct "key=value" tags without an allowlist (default 256) */
	int64_t name_cap;          /* distinct products, versions, hardware, bootloaders devices name (default 1024) */
};

int fleet_open(struct fleet **out, const struct fleet_config *cfg);
void fleet_close(struct fleet *f);
/* Issue 16 (fleet_keys.c): every instance on one fleet database must hold
 * the same fleet key and device secret, or the credentials one instance
 * hands out are wrong on the next.  The database keeps a fingerprint of
 * each (fleet_meta, never the secret); the first instance records them,
 * every later start compares.  0, or OTA_ECONFLICT naming the key that
 * differs (never its value), or another error when the database cannot
 * be read.  cfg->db_path, fleet_key and device_secret as for fleet_open. */
int fleet_keys_check(const struct fleet_config *cfg);
/* Issue 16: the leading instance's device API (fleet_leader, made by
 * fleet_keys_check) written at its lead, and read by a follower on a
 * connection it keeps in *conn (NULL: opened here; closed again after an
 * error, so the next call reconnects).  out "" when none is recorded. */
int fleet_leader_record(const char *db_path, const char *device_url);
struct db;
int fleet_leader_device(struct db **conn, const char *db_path, char *out, size_t size);
/* cfg->db_path as the storage layer's URL (new string): a plain path is a
 * SQLite file. */
char *fleet_db_url(const char *path);
/* fleet.db's migration list (db_migrate), as store_migrations() is
 * otacd.db's: `otactl migrate` copies a fleet database with it. */
const char *const *fleet_store_migrations(size_t *n);

/* Replace the exposure of x->release_id (or add it). */
int fleet_set_exposure(struct fleet *f, const struct fleet_exposure *x);
void fleet_remove_exposure(struct fleet *f, int64_t release_id);

/* issue 15, push (orchestrator/push/push.h): after an exposure changes,
 * the devices whose offer it changed: a release now offered to them
 * ("offer"), taken back ("withdrawn", a halt) or a rollback offered to the
 * devices running it ("rollback").  A hint only: the check-in decides.
 * fn runs on the thread that set the exposure with no fleet lock held;
 * the strings live until fleet_close.  fn NULL: none (the default). */
struct fleet_change {
	const char *device, *hardware, *reason;
};
typedef void (*fleet_notify_fn)(void *ctx, const char *product, const struct fleet_change *c, size_t n);
void fleet_set_notify(struct fleet *f, fleet_notify_fn fn, void *ctx);
/* Issue 17, feature flags (orchestrator/flags/flags.h): fn writes the
 * "flags" object of a device's check-in answer into out (its length; 0:
 * none) from the device's product, id and tags ("k=v").  Called with the
 * device's shard locked: fn only takes leaf locks.  NULL: none (the
 * default).  ctx must outlive every check-in (set before the device API
 * serves, cleared after it stopped). */
typedef size_t (*fleet_flags_fn)(void *ctx, const char *product, const char *device, const char *const *tags,
				 size_t ntags, char *out, size_t cap);
void fleet_set_flags(struct fleet *f, fleet_flags_fn fn, void *ctx);

/* Readiness after a start (issue 18): until the rollout controller has
 * applied every rollout's exposure once, this fleet knows no offers, and a
 * check-in answered then would say "nothing for you" to a device that is
 * in a step.  fleet_hold_offers(f, 1) (the daemon, before its device API
 * listens) makes fleet_offers_held() true; the update server's loaded()
 * (updsrv.h) clears it.  A fleet opened without a hold (tests, fuzzers,
 * tools) is never held.  Either thread; an atomic flag. */
void fleet_hold_offers(struct fleet *f, int held);
int fleet_offers_held(const struct fleet *f);

/* Is sha256 an image of some exposure (may it be served to devices)?
 * 1: an image, 2: a delta patch to one (issue 15), 0: neither. */
int fleet_image_known(struct fleet *f, const char *sha256);

/*
 * The aggregate for (product, version, cohort).  cohort "*" for all
 * devices.  An unknown key gives all zeros and 0.
 */
int fleet_aggregate(struct fleet *f, const char *product, const char *version, const char *cohort,
		    struct fleet_agg *out);
/* The baseline for `version`, for one cohort: the devices on `previous`
 * (the previous good release's version).  previous NULL (no good release
 * known, e.g. a fleet still on its factory image): the other version most
 * devices of product run.  Never a sum over history: a rolled-back
 * release's devices are not a baseline. */
int fleet_baseline(struct fleet *f, const char *product, const char *version, const char *previous,
		   const char *cohort, struct fleet_agg *out);
/*
 * How far the aggregates readers see (the committed ones) lag what otacd
 * has accepted.  lag_ms: real milliseconds since the oldest report batch
 * or device change that was accepted (validated and queued for the writer)
 * but is not committed yet; 0 when nothing is pending.  since_commit_ms:
 * real ms since the writer's last commit (-1: none since open).  Reports a
 * device has not sent yet are not covered: they sit in the device's retry
 * queue (docs/update-server.md, "Evidence lag").  Gates read this before
 * the aggregates (rollout_ctl.c) and do not pass above gate_max_lag.
 */
struct fleet_lag {
	int64_t lag_ms, since_commit_ms;
};
void fleet_lag(struct fleet *f, struct fleet_lag *out);
/*
 * The writer's work since open (fleet_store.c): rounds that committed
 * queued batches (each one COMMIT, and one fsync), the batches they held
 * (report batches, registrations, check-ins that changed a device), and
 * device snapshots completed; the last one's time from its start to the
 * commit that made it current (ms) and the commits it spanned.  Exported
 * on /metrics as otacd_fleet_rounds_total, otacd_fleet_round_batches_total,
 * otacd_fleet_snapshots_total and otacd_fleet_snapshot_last_seconds.
 */
struct fleet_store_stats {
	int64_t rounds, batches, snapshots;
	int64_t snap_ms, snap_rounds;
};
void fleet_store_stats(struct fleet *f, struct fleet_store_stats *out);
/* Devices of product per version, for the rollout views: JSON object
 * {"1.4.0": 812, "1.5.0": 188}.  New reference. */
json_t *fleet_versions(struct fleet *f, const char *product);
/* issue 15: devices of product and hardware variant hardware per version
 * they run, the same JSON shape (a device's "1.0.0+7" kept as it is).  A
 * walk over the device table, for the release stage's `deltas:
 * {installed: N}` (once per image of a release): ~O(devices).  New
 * reference. */
json_t *fleet_versions_of_hardware(struct fleet *f, const char *product, const char *hardware);

/* ---- the device API's entry points (devapi.c calls these) --------------- */

/*
 * Identity (fleet_auth.c).  The one place a device's credential is
 * checked: a later mTLS identity replaces the body, not the callers.
 * fleet_device_auth: is credential the current one of registered device_id?
 * Constant time.  0 or OTA_EAUTH (message says why: unregistered, the fleet
 * key used as a device credential, wrong).
 * fleet_provision_auth: is token the fleet key?  0 or OTA_EAUTH.
 */
int fleet_device_auth(struct fleet *f, const char *device_id, const char *credential);
int fleet_provision_auth(struct fleet *f, const char *token);

/*
 * Device certificates (issue 13, fleet_ca.h).  fleet_set_ca: the device CA
 * (borrowed; NULL: none) and how devices authenticate (enum
 * fleet_auth_mode: token, cert or both; fleet_device_auth refuses tokens
 * when it is cert).  fleet_auth_cert is the certificate path of device
 * authentication: der is the client certificate the TLS handshake verified
 * (devapi takes it from tls_peer_cert_der, never from a header or body: a
 * certificate is public, only the handshake proves the key).  0 with the
 * device id in id_out, or OTA_EAUTH: the fleet takes tokens only, the
 * certificate is refused (fleet_ca_identify: revoked, expired, foreign CA,
 * ...; counted on /metrics), or claimed (the body's "device", may be NULL)
 * or claimed_product (may be NULL) is not what the certificate names.
 * fleet_device_registered: has id a token credential (registered)?
 */
struct fleet_ca;
void fleet_set_ca(struct fleet *f, struct fleet_ca *ca, int auth_mode);
struct fleet_ca *fleet_get_ca(struct fleet *f);
int fleet_get_auth_mode(const struct fleet *f); /* enum fleet_auth_mode */
int fleet_auth_cert(struct fleet *f, const unsigned char *der, size_t len, const char *claimed,
		    const char *claimed_product, char *id_out, size_t idlen);
int fleet_device_registered(struct fleet *f, const char *id);
/* The same, with the certificate's product (its OU; "" if none) in
 * product (plen bytes). */
int fleet_auth_cert_ex(struct fleet *f, const unsigned char *der, size_t len, const char *claimed,
		       const char *claimed_product, char *id_out, size_t idlen, char *product, size_t plen);

/*
 * Registration (provisioning).  fleet_register_admit takes n devices from
 * the rate limit: 0, or OTA_ECONFLICT with *retry_ms (real ms) when the
 * bucket is short (nothing taken).  fleet_register_async validates a body
 * {"devices": ["id", ...]} (1..10000 distinct ids) into *out and queues it
 * for the writer, which gives every id a new credential generation (the
 * old credential of an id registered before stops working), writes one
 * audit row and calls done(ctx, rc) after the commit.  Then
 * fleet_register_answer gives {"registered": n, "credentials": [..]} in
 * the order of the ids.  fleet_reg_free frees *out after done.
 * fleet_register_parse is its validation alone (nothing queued; the
 * caller frees *out): the untrusted-body half, which fuzz/ drives.
 */
struct fleet_reg;
int fleet_register_admit(struct fleet *f, size_t n, int64_t *retry_ms);
int fleet_register_async(struct fleet *f, const json_t *body, const char *peer, struct fleet_reg **out,
			 void (*done)(void *ctx, int rc), void *ctx);
int fleet_register_parse(struct fleet *f, const json_t *body, const char *peer, struct fleet_reg **out);
json_t *fleet_register_answer(struct fleet *f, const struct fleet_reg *reg);
void fleet_reg_free(struct fleet_reg *reg);
/* The same, synchronously, for in-process callers (tests, benchmarks): no
 * rate limit.  creds: n x 33 bytes (hex + NUL), may be NULL. */
int fleet_register(struct fleet *f, const char *const *ids, size_t n, const char *peer, char (*creds)[33]);
/* The audit trail: {"total": devices registered, "refused": devices refused
 * by the rate limit since start, "batches": [{at, count, first, last, peer}]
 * (newest first, at most limit)}.  New reference. */
json_t *fleet_registrations(struct fleet *f, int limit);

/* Handle a parsed check-in body; *answer is the JSON answer (new ref).
 * The caller has authenticated the body's device.  OTA_EINVAL with the
 * message naming the field on a malformed body.  A check-in that registers
 * or changes its device (first check-in, new version, tags, counter, an
 * offer made) returns only once that change is committed. */
int fleet_checkin(struct fleet *f, const json_t *body, json_t **answer);
/* The same, for event-driven servers: < 0 an error (no answer), 0 answer
 * now, 1 the change was queued for the writer, which calls done(ctx, rc)
 * from its own thread once it is committed (rc 0: send *answer) or failed
 * (the caller frees *answer and answers the error); done may run before
 * this returns. */
int fleet_checkin_async(struct fleet *f, const json_t *body, json_t **answer, void (*done)(void *ctx, int rc),
			void *ctx);
/* The same with the answer as JSON text in answer (cap bytes, at least
 * FLEET_ANSWER_MAX): what the device API sends, with no JSON tree built. */
#define FLEET_ANSWER_MAX 4096
int fleet_checkin_text_async(struct fleet *f, const json_t *body, char *answer, size_t cap,
			     void (*done)(void *ctx, int rc), void *ctx);
/* The same for a check-in that arrived with credential token: the body's
 * device is authenticated first (fleet_device_auth: OTA_EAUTH, nothing
 * done) and looked up once for both.  What the device API calls. */
int fleet_checkin_auth_text_async(struct fleet *f, const json_t *body, const char *token, char *answer, size_t cap,
				  void (*done)(void *ctx, int rc), void *ctx);
/* The same from a body already read into its fields (fleet_ckbody.h: the
 * device API reads check-in bodies without jansson). */
struct fleet_ckbody;
int fleet_checkin_body_async(struct fleet *f, const struct fleet_ckbody *b, const char *token, char *answer,
			     size_t cap, void (*done)(void *ctx, int rc), void *ctx);
/* A hint before a check-in of device id (len bytes, as the raw body spells
 * it): fetches the registry bucket the check-in will read into the cache
 * while the caller parses the body (a cache miss in a large fleet).  Takes
 * no lock, changes nothing; a wrong id only fetches the wrong line. */
void fleet_checkin_prefetch(struct fleet *f, const char *id, size_t len);
/* The same for a device the caller authenticated otherwise (its client
 * certificate, devapi.c, which also checked the body names that device). */
int fleet_checkin_body_trusted_async(struct fleet *f, const struct fleet_ckbody *b, char *answer, size_t cap,
				     void (*done)(void *ctx, int rc), void *ctx);
/* In-process callers that vouch for every report (tests and benchmarks of
 * the aggregation itself) pass this as the token of fleet_report(_async):
 * no authentication, no version rule, no bounds.  The device API never
 * does. */
extern const char fleet_trusted_caller[];
/* Validate and durably record a report batch.  Every report is
 * authenticated: by its own "credential" field, else by token (the
 * request's bearer credential) for its device.  A malformed batch or one
 * with a report that fails authentication is refused whole: OTA_EINVAL
 * (message "reports[i].field: ...") or OTA_EAUTH, nothing recorded.  In a
 * well-formed batch, reports the fleet's state refuses (unknown device:
 * retryable once it has checked in; a version it was not offered: never)
 * are left out and the others recorded; *accepted is their count.  The
 * sync form discards the refusal list. */
int fleet_report(struct fleet *f, const json_t *body, const char *token, int *accepted);
/*
 * The same, for event-driven servers: the batch is validated now (a
 * negative code, nothing recorded, done never called) and on 0 it is queued
 * for the writer, which calls done(ctx, rc) from its own thread once the
 * batch is committed (rc 0) or failed; done may run before this returns.
 * *refused (new reference or NULL) lists the refused reports as
 * [{"index", "error", "retry"}], also when every report was refused (then
 * OTA_EINVAL with the first one's message).
 */
int fleet_report_async(struct fleet *f, const json_t *body, const char *token, int *accepted, json_t **refused,
		       void (*done)(void *ctx, int rc), void *ctx);
/*
 * The same, with report seq (docs/update-server.md): a report whose "seq"
 * is at or below the highest its device has had applied is acknowledged
 * (counted in *accepted) and not applied again; *duplicate (new reference
 * or NULL) lists their indexes.  A seq more than FLEET_SEQ_AHEAD_MAX above
 * it (once the device has one), or not an integer >= 1, is refused (retry
 * false).
 */
#define FLEET_SEQ_AHEAD_MAX (1 << 20)
int fleet_report_dup_async(struct fleet *f, const json_t *body, const char *token, int *accepted, json_t **refused,
			   json_t **duplicate, void (*done)(void *ctx, int rc), void *ctx);
/* The same for a batch whose request was authenticated by a client
 * certificate (issue 13): cert_device (not NULL) is the certificate's
 * device, every report must be its (else OTA_EPERM, the batch refused,
 * counted as "wrong_device"); credentials are not consulted.  NULL:
 * fleet_report_dup_async.  duplicate may be NULL. */
int fleet_report_dev_async(struct fleet *f, const json_t *body, const char *token, const char *cert_device,
			   int *accepted, json_t **refused, json_t **duplicate, void (*done)(void *ctx, int rc),
			   void *ctx);
/* May device_id (authenticated) download image sha256: is it the image of
 * an exposure of its product and hardware that it was offered, and does
 * the offer still stand?  1 yes, 0 never offered, -1 withdrawn (the release
 * was halted or rolled back and the image is no rollback target). */
int fleet_image_allowed(struct fleet *f, const char *sha256, const char *device_id);
/* Prometheus text exposition of every aggregate (new buffer in *out). */
int fleet_metrics_text(struct fleet *f, char **out, size_t *len);

/* The device listener (devapi.c): serves docs/update-server.md on addr
 * ("HOST:PORT"), images from the artifact store. */
struct devapi;
int devapi_start(struct devapi **out, struct fleet *f, const char *addr, int metrics_public);
int devapi_port(const struct devapi *d);
/* Issue 16: a follower on PostgreSQL starts the listener with no fleet
 * (f NULL: every request but a refused one answers 503, Retry-After: 1)
 * and attaches the fleet it opens once it leads; f is borrowed. */
void devapi_attach(struct devapi *d, struct fleet *f);
/* Issue 16: the leader's device API (http(s)://HOST:PORT, checked by
 * api_forward_leader_check before each forward; NULL or "": nobody
 * leads) to which a follower's listener forwards check-ins, reports,
 * registrations and provisioning. */
void devapi_set_leader(struct devapi *d, const char *url);
/* Device reports answered since the start (process-wide), by outcome: the
 * device listener's otacd_device_reports_total, also on the API's /metrics. */
void devapi_report_counts(uint64_t *accepted, uint64_t *refused);
/* The header deadline and per-client cap for listeners started after this
 * call (default 10 s and 128; main.c passes request_timeout and
 * max_connections_per_client). */
void devapi_set_limits(int64_t request_timeout_ms, unsigned max_per_client);
/* Issue 16, for device listeners started after this call: the PEM CA
 * bundle (forward_ca:) a follower trusts when it forwards to an https://
 * leader (NULL: the system's; borrowed, must outlive the listener), and
 * the device secret that keys the forwarded client certificate's MAC
 * (fwdcert.h; NULL: certificates are not forwarded, nor believed). */
void devapi_set_forward(const char *cacert, const char *device_secret);
/* The device listener's TLS (tls/tls.h) for the next devapi_start; NULL:
 * plain HTTP.  Borrowed: freed by the caller after devapi_stop. */
struct tls_server;
void devapi_set_tls(struct tls_server *t);
void devapi_stop(struct devapi *d);

/* The aggregate cohort of the devices first offered in step generation
 * gen that are in cohort ("*" or "key=value"): "@GEN/COHORT". */
void fleet_step_cohort(uint32_t gen, const char *cohort, char *out, size_t n);

/* fmix64(fnv1a64(salt ":" device)) mod 10000: a device's place in cohorts. */
int fleet_cohort_slot(const char *salt, const char *device);

#endif
