/*
 * fleet_ca.h - device identity by certificate (issue 13): the device CA,
 * provisioning (a CSR in, a client certificate out), revocation, and the
 * one function that turns a verified TLS client certificate into a device
 * id (docs/update-server.md, "Device certificates"; docs/security.md,
 * "Device CA").
 *
 * Two halves:
 *
 *  - fleet_ca.c: OpenSSL and memory only.  The CA (certificate, and its key
 *    when otacd issues), CSR parsing, issuing, fleet_ca_identify, the set of
 *    revoked devices, the provisioning credentials and their rate limits,
 *    the counters on the device listener's /metrics.  No database: an
 *    in-process caller (a test, a fuzz target) can use it alone.
 *  - fleet_ca_db.c: what is durable, through the engine's transactions on
 *    otacd's database (one migration, "device CA" in store.c): issued
 *    certificates, revocations, provisioners (token SHA-256, scope, count),
 *    each change with its audit entry.  fleet_ca_attach loads them at start.
 *
 * A certificate names a device by its subject CN (the device id rules of
 * fleet.c), and, when it was provisioned for a product, by OU = product.
 * Revoking device ID refuses every certificate of ID whose notBefore is not
 * later than the revocation (otacd's own and an external CA's alike); a
 * certificate issued after the revocation is valid again (otacd issues it
 * with notBefore after the revocation's second).
 *
 * Threads: every function is safe to call from any thread.
 */
#ifndef OTA_FLEET_CA_H
#define OTA_FLEET_CA_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

struct fleet_ca;
struct engine;

/* How devices authenticate (config device_auth). */
enum fleet_auth_mode {
	FLEET_AUTH_TOKEN = 0,   /* HMAC device credentials only (the default) */
	FLEET_AUTH_CERT = 1,    /* client certificates only */
	FLEET_AUTH_BOTH = 2,    /* either */
};
/* "token" | "cert" | "both" -> mode, or -1. */
int fleet_auth_mode_parse(const char *s);
const char *fleet_auth_mode_name(int mode);

#define FLEET_CA_CSR_MAX 16384            /* a CSR's PEM, bytes */
#define FLEET_CA_DEFAULT_DAYS 3650        /* a new CA's validity */
#define FLEET_CA_DEFAULT_CERT_MS (365LL * 86400 * 1000)   /* a device certificate's validity */

struct fleet_ca_config {
	const char *cert_file;   /* the CA certificate (PEM); NULL: STATE/devca/ca.pem if present */
	const char *key_file;    /* its key (PEM); NULL with cert_file set: verify only (external CA) */
	const char *state_dir;   /* STATE: where `fleet ca init` / `import` write devca/ca.{pem,key} */
	int64_t cert_validity_ms;   /* device certificates (default FLEET_CA_DEFAULT_CERT_MS) */
	/* more CA certificates trusted for verification only: the previous CA
	 * during a rollover (devices re-provisioned under the new one) */
	const char *const *also_trust;
	size_t nalso_trust;
};

/* Open: loads the CA named by cfg (none is fine: no CA yet).  A configured
 * file that does not load, or a key that does not match, is an error. */
int fleet_ca_open(struct fleet_ca **out, const struct fleet_ca_config *cfg);
void fleet_ca_close(struct fleet_ca *ca);
/* 1 when there is a CA, 2 when otacd also holds its key (can issue). */
int fleet_ca_state(struct fleet_ca *ca);
/* {"configured", "can_issue", "external", "subject", "not_after",
 *  "sha256" (fingerprint), "certificate" (PEM)}.  New reference. */
json_t *fleet_ca_info(struct fleet_ca *ca);

/* ---- the CA itself (also used offline by otactl) ------------------------- */

/* Create a CA key (EC P-256) and a self-signed CA certificate (subject CN =
 * cn, `days` valid, CA:TRUE pathlen 0, keyCertSign + cRLSign) in dir as
 * ca.pem (0644) and ca.key (0600); OTA_ECONFLICT if ca.pem or ca.key is
 * there already. */
int fleet_ca_create_files(const char *dir, const char *cn, int days);
/* Check cert_pem is a CA certificate, valid now, that key_pem is its key,
 * and write both to dir like fleet_ca_create_files. */
int fleet_ca_import_files(const char *dir, const char *cert_pem, size_t cert_len, const char *key_pem,
			  size_t key_len);
/* The daemon's side of `otactl fleet ca init|import`: refuses when the
 * configuration names the CA or one is installed (OTA_ECONFLICT), stores
 * it and loads it.  cert_pem NULL: init (cn, days); else import.  Attached
 * to a database (fleet_ca_attach, issue 16) the CA goes into otacd's
 * database (table device_ca, the key sealed with fleet_ca_seal) in one
 * transaction, so the next leader has it; without one (tests, bench) into
 * STATE/devca. */
int fleet_ca_install(struct fleet_ca *ca, const char *cn, int days, const char *cert_pem, const char *key_pem);

/* `otactl fleet ca remove` (a stolen CA key): refuses a CA the
 * configuration names (OTA_ECONFLICT: change device_ca: instead), an empty
 * reason (OTA_EINVAL) and no CA (OTA_ENOTFOUND); else, in one transaction,
 * deletes the device_ca row, marks the CA's fingerprint removed (a meta
 * row: never installed or imported from a STATE/devca again) and audits
 * "device_ca.remove"; then forgets the CA in memory and moves STATE/devca
 * aside (devca.removed-SECONDS).  *answer {"removed", "sha256",
 * "subject"}. */
int fleet_ca_remove(struct fleet_ca *ca, const char *reason, const char *actor, json_t **answer);
/* Every instance, at start and at each auth reload (commit notification or
 * periodic): a CA in memory whose fingerprint the database marks removed is
 * forgotten and STATE/devca moved aside. */
struct store;
int fleet_ca_sync(struct fleet_ca *ca, struct store *db);
/* SHA-256 (hex) of a PEM certificate's DER, as fleet_ca_info's "sha256". */
int fleet_ca_pem_sha256(const char *pem, char out[65]);

/* ---- CSRs and issuing --------------------------------------------------- */

/*
 * Parse one PEM CSR of at most FLEET_CA_CSR_MAX bytes and check it: its
 * self-signature verifies, its key is EC P-256/P-384, Ed25519 or RSA of at
 * least 2048 bits, and a subject CN, if any, equals want_cn (NULL: any).
 * 0 with *out (an X509_REQ *, free with fleet_ca_csr_free), or OTA_EINVAL
 * naming the problem.  This is the parser the fuzz target drives.
 */
int fleet_ca_csr_parse(void **out, const char *pem, size_t len, const char *want_cn);
void fleet_ca_csr_free(void *req);

/*
 * Issue a device certificate for csr (from fleet_ca_csr_parse): subject
 * CN = device (OU = product when not NULL), notBefore now (later than the
 * device's revocation, if any), notAfter now + validity (not past the CA's),
 * keyUsage digitalSignature, EKU clientAuth, CA:FALSE, a random serial.
 * *pem_out (new string) and serial_hex (41 bytes) and the validity in
 * seconds since the epoch.  OTA_ECONFLICT without a CA key.
 */
int fleet_ca_issue(struct fleet_ca *ca, void *csr, const char *device, const char *product, char **pem_out,
		   char serial_hex[41], int64_t *not_before, int64_t *not_after);

/* ---- identity ------------------------------------------------------------ */

/*
 * The device a DER certificate (the TLS client's, verified by the
 * handshake) names: issued by the device CA (signature checked), valid now,
 * keyUsage digitalSignature and EKU clientAuth, not a CA, not self-signed,
 * CN a valid device id, its device not revoked since.  0 with the id in
 * id_out (and the OU in product_out when not NULL: "" if none), or
 * OTA_EAUTH with *why a static reason ("revoked", "expired",
 * "not yet valid", "foreign CA", "self-signed", "wrong key usage",
 * "bad signature", "bad device id", "malformed", "no device CA").  Every
 * answer is counted (fleet_ca_metrics_text).
 */
int fleet_ca_identify(struct fleet_ca *ca, const unsigned char *der, size_t len, char *id_out, size_t idlen,
		      const char **why);
/* The same with the product, and without counting when count is 0 (an
 * administrator asking about a certificate is no device's attempt). */
int fleet_ca_identify_ex(struct fleet_ca *ca, const unsigned char *der, size_t len, char *id_out, size_t idlen,
			 char *product_out, size_t plen, int count, const char **why);
/* PEM -> DER (the first certificate); new buffer in *der. */
int fleet_ca_pem_to_der(const char *pem, size_t len, unsigned char **der, size_t *der_len);

/* Revocation in memory: device's certificates with notBefore <= cutoff
 * (seconds since the epoch) are refused from now on.  Later cutoffs win. */
void fleet_ca_revoke_mem(struct fleet_ca *ca, const char *device, int64_t cutoff);
/* The cutoff of device, 0 if never revoked. */
int64_t fleet_ca_revoked_at(struct fleet_ca *ca, const char *device);

/* ---- provisioning credentials (memory) ---------------------------------- */

struct fleet_ca_prov {
	const char *name;
	const char *token_sha256;    /* hex */
	const char *prefix;          /* device ids it may provision start with this */
	const json_t *products;      /* [names] or NULL: any (and none) */
	int64_t max;                 /* certificates it may issue in all */
	int64_t issued;              /* so far */
	int64_t rate_per_min;        /* certificates per minute (bucket of that size) */
};
/* Add or replace (by name) a provisioner in memory. */
void fleet_ca_prov_set(struct fleet_ca *ca, const struct fleet_ca_prov *p);
void fleet_ca_prov_remove(struct fleet_ca *ca, const char *name);

/*
 * The checks of a provisioning request that need no database, in order:
 * the token is a provisioner's (OTA_EAUTH; *name_out ""), the device id is
 * valid and within its prefix, the product within its products
 * (OTA_EPERM), its count not reached (OTA_EPERM), one certificate from its
 * rate bucket (OTA_ECONFLICT, *retry_s).  name_out gets the provisioner's
 * name once the token is known (for the audit).  Every refusal is counted.
 */
int fleet_ca_prov_admit(struct fleet_ca *ca, const char *token, const char *device, const char *product,
			char name_out[65], int64_t *retry_s);
/* After the database decided: issued (count it), or give the rate token
 * back when nothing was issued for a reason not the provisioner's. */
void fleet_ca_prov_done(struct fleet_ca *ca, const char *name, int issued);
void fleet_ca_count_provision(struct fleet_ca *ca, int issued);

/* Prometheus text of the counters, appended to b (struct buf *). */
struct buf;
void fleet_ca_metrics_text(struct fleet_ca *ca, struct buf *b);
/* Count a request whose valid certificate names another device than the
 * request does (reason "wrong_device"; devapi.c).  NULL ca: no-op. */
void fleet_ca_count_wrong_device(struct fleet_ca *ca);

/* ---- durable state (fleet_ca_db.c; engine thread through engine_exec) ---- */

/* Load the installed CA (table device_ca, its key opened with
 * device_secret), provisioners and revocations from the database; later
 * changes go through e.  The CA row wins over STATE/devca; with no row, a
 * CA loaded from STATE/devca (an older otacd's, or `otactl fleet ca init
 * --offline`) is copied into it once.  A row that does not open or whose key
 * is not the certificate's is an error (nothing loaded).  device_secret
 * NULL: no CA row is read or written (STATE/devca only). */
int fleet_ca_attach(struct fleet_ca *ca, struct engine *e, const char *device_secret);

/* Issue 16: the CA's private key (PEM, n bytes) sealed for the database
 * (fleet_ca_seal.c): AES-256-GCM under HKDF-SHA256(device secret, "otacd
 * device CA key"), a random nonce, aad (the certificate's PEM) bound in.
 * Returns a string to free, NULL on error. */
char *fleet_ca_seal(const char *secret, const char *aad, const unsigned char *plain, size_t n);
/* The key back (*out, *n; cleanse and free it); OTA_EINVAL when sealed is
 * malformed, altered, bound to another aad or sealed with another secret. */
int fleet_ca_unseal(const char *secret, const char *aad, const char *sealed, unsigned char **out, size_t *n);

struct fleet_ca_request {
	const char *device, *product;   /* product may be NULL */
	const char *csr_pem;
	size_t csr_len;
	const char *token;              /* a provisioner's token, or NULL: actor (admin) */
	const char *actor;              /* the admin's token name (token NULL) */
	const char *peer;               /* the client's address, for the audit */
	int replace;                    /* admin only: the device may have a live certificate */
	/* refusals of the device listener's factory route need to know
	 * whether the id is a token-registered device: 1 refuses it */
	int token_registered;
};
/*
 * Provision: admit (provisioner) or admin, parse and check the CSR, then in
 * one transaction: refuse a device that holds a live certificate (unless
 * replace), check the provisioner's count again, issue, store the
 * certificate and count, audit ("device.provision").  Refusals of a known
 * provisioner are audited too ("device.provision_refused"; rate refusals at
 * most once a second per provisioner).  0 with *answer {"device", "serial",
 * "not_before", "not_after", "certificate", "ca"} (new reference), or an
 * OTA_E* code: EAUTH, EPERM (scope, count, live certificate), ECONFLICT
 * (rate: *retry_s), EINVAL (CSR, id), ENOTFOUND / ERROR (no CA key).
 */
int fleet_ca_provision(struct fleet_ca *ca, const struct fleet_ca_request *rq, json_t **answer, int64_t *retry_s);
/* Revoke every certificate of device now (and any later-found one issued
 * before now), durably, then in memory; audited ("device.revoke").
 * *revoked: how many of otacd's certificates it ended. */
int fleet_ca_revoke(struct fleet_ca *ca, const char *device, const char *reason, const char *actor,
		    int64_t *revoked);
/* Provisioners (admin): add returns the token once (*token, caller frees). */
int fleet_ca_prov_add(struct fleet_ca *ca, const char *name, const char *prefix, const json_t *products,
		      int64_t max, int64_t rate_per_min, const char *actor, char **token);
/* Revoke a provisioner at once; devices: also every device it provisioned
 * (a leaked credential's identities), *revoked their number.  Audited. */
int fleet_ca_prov_revoke(struct fleet_ca *ca, const char *name, int devices, const char *actor, int64_t *revoked);
/* [{name, prefix, products, max, issued, rate_per_min, created_at,
 *   created_by, revoked_at}].  New reference. */
json_t *fleet_ca_prov_list(struct fleet_ca *ca);
/* Audit an administrator's CA init/import. */
int fleet_ca_audit(struct fleet_ca *ca, const char *actor, const char *action, json_t *detail);

/* ---- the tables alone (fleet_ca_db.c) -------------------------------------
 * The durable half's table work on a store, through the storage layer, so
 * it runs on SQLite and PostgreSQL alike (docs/storage.md).  The functions
 * above call these inside their engine transaction and add the audit entry
 * and the memory; a test calls them on a store of either backend.  Changes
 * belong inside a transaction (store_begin); times are passed in: now_ms
 * in ms, cutoff and now_s in seconds since the epoch. */
struct store;

/* One issued certificate (product and provisioner may be NULL). */
struct fleet_ca_cert {
	const char *serial, *device, *product, *provisioner, *pem;
	int64_t not_before, not_after;   /* seconds since the epoch */
};
/* The active provisioners (into memory with fleet_ca_prov_set) and every
 * revocation (fleet_ca_revoke_mem) the database holds. */
int fleet_ca_store_load(struct store *db, struct fleet_ca *ca);
/* The installed CA's row: 1 and *cert_pem, *sealed_key (free them; the
 * key NULL for a CA without one), 0 when there is none. */
int fleet_ca_store_ca_get(struct store *db, char **cert_pem, char **sealed_key);
/* Store the installed CA; OTA_ECONFLICT when there is one, or when it was
 * removed. */
int fleet_ca_store_ca_put(struct store *db, const char *cert_pem, const char *sealed_key, int64_t now_ms);
/* 1 when the CA of that fingerprint (hex SHA-256) was removed, else 0. */
int fleet_ca_store_ca_removed(struct store *db, const char *sha);
/* Delete the installed CA's row and mark sha removed, record (JSON: who,
 * when, why) kept with the mark. */
int fleet_ca_store_ca_remove(struct store *db, const char *sha, const json_t *record);
/* An active provisioner's count so far and its maximum; OTA_ENOTFOUND when
 * it is revoked or unknown. */
int fleet_ca_store_quota(struct store *db, const char *name, int64_t *issued, int64_t *max);
/* How many certificates device was ever issued, and how many of them are
 * live (not revoked, notAfter later than now_s). */
int fleet_ca_store_device_certs(struct store *db, const char *device, int64_t now_s, int64_t *certs, int64_t *live);
/* Store an issued certificate and count it against its provisioner. */
int fleet_ca_store_cert_add(struct store *db, const struct fleet_ca_cert *c, int64_t now_ms);
/* Revoke device's live certificates (*revoked: how many) and keep its
 * revocation cutoff (a later one wins). */
int fleet_ca_store_revoke(struct store *db, const char *device, int64_t cutoff, int64_t now_ms, const char *actor,
			  const char *reason, int64_t *revoked);
/* Add a provisioner (p->issued is ignored: 0), or take over a revoked one's
 * name; OTA_ECONFLICT while one of that name is active. */
int fleet_ca_store_prov_add(struct store *db, const struct fleet_ca_prov *p, const char *actor, int64_t now_ms);
/* Append to out the devices name provisioned, each once, in id order. */
int fleet_ca_store_prov_devices(struct store *db, const char *name, json_t *out);
/* Revoke provisioner name (OTA_ENOTFOUND when it is not active, unless
 * devices); devices: also every device it provisioned, appended to revoked. */
int fleet_ca_store_prov_revoke(struct store *db, const char *name, int devices, int64_t cutoff, int64_t now_ms,
			       const char *actor, json_t *revoked);
/* fleet_ca_prov_list's answer, from db. */
json_t *fleet_ca_store_prov_list(struct store *db);

#endif
