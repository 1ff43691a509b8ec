/*
 * fleet_ca_db.c - the durable half of the device CA (fleet_ca.h): issued
 * certificates, revocations and provisioners in otacd's database (tables
 * device_certs, device_revocations, device_provisioners; store.c migration
 * 11), each change and its audit entry in one engine transaction.
 *
 * A provisioning request is decided in three steps: what memory can say
 * (fleet_ca_prov_admit: credential, scope, count, rate), the CSR (parsed
 * and its self-signature checked outside any transaction), then on the
 * engine thread the database's word: the provisioner still active and
 * under its count, the device new to the CA, the certificate signed, stored
 * and counted, the audit row written.  A refused request of a known
 * provisioner is audited as well, so a factory credential used out of its
 * scope shows up in `otactl audit`; rate refusals at most once a second
 * per provisioner, so a credential cannot flood the audit log.
 *
 * Removing the CA (`otactl fleet ca remove`, a stolen key) is the other
 * way round: the database first (the device_ca row deleted, the CA's
 * fingerprint marked removed in a meta row, the audit entry, one
 * transaction announced to the other instances), then memory; a removed
 * CA is never put into device_ca again (fleet_ca_store_ca_put), and each
 * instance drops one it loaded from STATE/devca (fleet_ca_sync).
 *
 * Revocation changes memory first (fleet_ca_revoke_mem, so the next
 * request of the device is refused even while the transaction runs; a
 * failed commit errs on the refusing side until a restart), then the
 * database.
 *
 * The table work is in the fleet_ca_store_* functions, on a store and
 * through the storage layer (db/db.h), so it runs on SQLite and on
 * PostgreSQL alike and tests call it without the engine thread; the engine
 * callbacks (do_*) call them and add the audit entry.  Every statement's
 * failure ends its transaction (engine.c's run_call rolls back), so none
 * relies on carrying on after a failed statement.
 */
#include "fleet_ca.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

#include "../../common/log.h"
#include "../../common/util.h"
#include "../auth.h"
#include "../clock.h"
#include "../db/db.h"
#include "../engine_int.h"
#include "../store.h"
#include "fleet_int.h"

struct engine *fleet_ca_engine(struct fleet_ca *ca);
void fleet_ca_set_engine(struct fleet_ca *ca, struct engine *e);
int fleet_ca_prov_rate_audit(struct fleet_ca *ca, const char *name);
void fleet_ca_set_secret(struct fleet_ca *ca, const char *secret);
const char *fleet_ca_secret(struct fleet_ca *ca);
int fleet_ca_row(struct fleet_ca *ca, char **cert_pem, char **sealed);
int fleet_ca_load_row(struct fleet_ca *ca, const char *cert_pem, const char *sealed);
int fleet_ca_db_install(struct fleet_ca *ca, const char *cert_pem, const char *sealed);
static struct engine *engine_of(struct fleet_ca *ca);

int fleet_ca_store_load(struct store *db, struct fleet_ca *ca)
{
	struct db_stmt *st;
	int rc;

	st = store_q(db, "SELECT name, token_hash, prefix, products, max_devices, issued, rate_per_min"
			 " FROM device_provisioners WHERE revoked_at IS NULL");
	if (!st)
		return OTA_ERROR;
	while ((rc = db_step(st)) == 1) {
		const char *products = db_column_text(st, 3);
		json_t *pj = products ? json_loads(products, 0, NULL) : NULL;
		struct fleet_ca_prov p = { db_column_text(st, 0), db_column_text(st, 1), db_column_text(st, 2), pj,
					   db_column_int64(st, 4), db_column_int64(st, 5), db_column_int64(st, 6) };
		fleet_ca_prov_set(ca, &p);
		json_decref(pj);
	}
	db_reset(st);
	if (rc < 0)
		return rc;
	if (!(st = store_q(db, "SELECT device, cutoff FROM device_revocations")))
		return OTA_ERROR;
	while ((rc = db_step(st)) == 1)
		fleet_ca_revoke_mem(ca, db_column_text(st, 0), db_column_int64(st, 1));
	db_reset(st);
	return rc < 0 ? rc : 0;
}

/* ---- the installed CA (table device_ca, issue 16) ---------------------------- */

int fleet_ca_store_ca_get(struct store *db, char **cert_pem, char **sealed_key)
{
	struct db_stmt *st = store_q(db, "SELECT cert_pem, key_sealed FROM device_ca WHERE k = 'ca'");
	int rc;

	*cert_pem = *sealed_key = NULL;
	if (!st)
		return OTA_ERROR;
	if ((rc = db_step(st)) == 1) {
		*cert_pem = xstrdup(db_column_text(st, 0) ? db_column_text(st, 0) : "");
		*sealed_key = db_column_text(st, 1) ? xstrdup(db_column_text(st, 1)) : NULL;
	}
	db_reset(st);
	return rc < 0 ? rc : rc == 1;
}

int fleet_ca_store_ca_put(struct store *db, const char *cert_pem, const char *sealed_key, int64_t now_ms)
{
	struct db_stmt *st;
	char sha[65];
	int rc;

	if ((rc = fleet_ca_pem_sha256(cert_pem, sha)) < 0)
		return rc;
	if ((rc = fleet_ca_store_ca_removed(db, sha)) != 0)
		return rc < 0 ? rc : ota_error_set(OTA_ECONFLICT, "device CA %s was removed (otactl fleet ca remove):"
								  " a removed CA is never installed again", sha);
	st = store_q(db, "INSERT INTO device_ca(k, cert_pem, key_sealed, created_at) VALUES('ca', ?, ?, ?)"
			 " ON CONFLICT(k) DO NOTHING");
	if (!st)
		return OTA_ERROR;
	db_bind_text(st, 1, cert_pem);
	if (sealed_key)
		db_bind_text(st, 2, sealed_key);
	else
		db_bind_null(st, 2);
	db_bind_int64(st, 3, now_ms);
	if ((rc = db_run(st)) < 0)
		return rc;
	if (db_changes(st) == 0)
		return ota_error_set(OTA_ECONFLICT, "otacd has a device CA already (in its database)");
	return 0;
}

/* The marker of a removed CA: a meta row (no migration), keyed by the
 * certificate's SHA-256, holding who removed it, when and why. */
static char *removed_key(const char *sha)
{
	return xasprintf("device_ca_removed:%s", sha);
}

int fleet_ca_store_ca_removed(struct store *db, const char *sha)
{
	char *key = removed_key(sha), *v = NULL;
	int rc = store_meta_get(db, key, &v);

	free(key);
	free(v);
	return rc == 0 ? 1 : rc == OTA_ENOTFOUND ? 0 : rc;
}

int fleet_ca_store_ca_remove(struct store *db, const char *sha, const json_t *record)
{
	struct db_stmt *st = store_q(db, "DELETE FROM device_ca WHERE k = 'ca'");
	char *key, *value;
	int rc;

	if (!st)
		return OTA_ERROR;
	if ((rc = db_run(st)) < 0)
		return rc;
	key = removed_key(sha);
	value = json_dumps(record, JSON_COMPACT);
	rc = value ? store_meta_set(db, key, value) : ota_error_set(OTA_ENOMEM, "out of memory");
	free(key);
	free(value);
	return rc;
}

struct ca_remove_args {
	const char *sha, *subject, *reason, *actor;
};

static int do_ca_remove(struct engine *e, void *arg)
{
	struct ca_remove_args *a = arg;
	json_t *rec = json_pack("{ss ss ss sI}", "subject", a->subject ? a->subject : "", "actor", a->actor, "reason",
				a->reason, "at", (json_int_t)clock_now_ms());
	int rc = fleet_ca_store_ca_remove(engine_store(e), a->sha, rec);

	json_decref(rec);
	if (rc < 0)
		return rc;
	engine_auth_changed(e); /* the other instances drop it at the commit's notification */
	return engine_audit(e, a->actor, "device_ca.remove", 0, 0, a->reason,
			    json_pack("{ss ss}", "sha256", a->sha, "subject", a->subject ? a->subject : ""));
}

int fleet_ca_db_remove(struct fleet_ca *ca, const char *sha, const char *subject, const char *reason,
		       const char *actor);
int fleet_ca_db_remove(struct fleet_ca *ca, const char *sha, const char *subject, const char *reason,
		       const char *actor)
{
	struct ca_remove_args a = { sha, subject, reason, actor };
	struct engine *e = engine_of(ca);
	return e ? engine_exec(e, do_ca_remove, &a) : OTA_ERROR;
}

struct ca_put_args {
	const char *cert_pem, *sealed;
};

static int do_ca_put(struct engine *e, void *arg)
{
	struct ca_put_args *a = arg;
	return fleet_ca_store_ca_put(engine_store(e), a->cert_pem, a->sealed, clock_now_ms());
}

int fleet_ca_db_install(struct fleet_ca *ca, const char *cert_pem, const char *sealed)
{
	struct ca_put_args a = { cert_pem, sealed };
	struct engine *e = fleet_ca_engine(ca);
	if (!e)
		return ota_error_set(OTA_ERROR, "the device CA has no database");
	return engine_exec(e, do_ca_put, &a);
}

/* The CA from device_ca, or STATE/devca's copied there once. */
static int attach_ca(struct fleet_ca *ca, struct store *db, struct engine *e)
{
	char *cert = NULL, *sealed = NULL;
	int rc;

	/* a removed CA (STATE/devca's, an older copy) goes, never into the table */
	if ((rc = fleet_ca_sync(ca, db)) < 0)
		return rc;
	if (!fleet_ca_secret(ca)) /* the config's CA, or no device secret */
		return 0;
	if ((rc = fleet_ca_store_ca_get(db, &cert, &sealed)) == 1) {
		if ((rc = fleet_ca_load_row(ca, cert, sealed)) < 0)
			rc = ota_error_set(rc, "%s; refusing the device CA (restore the device secret"
					   " every instance shares, or the device_ca row from a backup)", ota_error_last());
	} else if (rc == 0 && (rc = fleet_ca_row(ca, &cert, &sealed)) == 1) {
		struct ca_put_args a = { cert, sealed };
		if ((rc = engine_exec(e, do_ca_put, &a)) == 0)
			ota_log(OTA_LOG_INFO, "device CA: STATE/devca copied into the database (table device_ca);"
					      " every instance that leads uses it from there");
		else if (rc == OTA_ECONFLICT) /* another instance's, meanwhile: that one */
			rc = attach_ca(ca, db, e);
	}
	free(cert);
	if (sealed) {
		OPENSSL_cleanse(sealed, strlen(sealed));
		free(sealed);
	}
	return rc < 0 ? rc : 0;
}

int fleet_ca_attach(struct fleet_ca *ca, struct engine *e, const char *device_secret)
{
	struct store *db = store_reader();
	int rc;

	if (!db)
		return ota_error_set(OTA_ERROR, "device CA: no database");
	fleet_ca_set_secret(ca, device_secret);
	if ((rc = attach_ca(ca, db, e)) < 0 || (rc = fleet_ca_store_load(db, ca)) < 0)
		return rc;
	fleet_ca_set_engine(ca, e);
	return 0;
}

static struct engine *engine_of(struct fleet_ca *ca)
{
	struct engine *e = fleet_ca_engine(ca);
	if (!e)
		ota_error_set(OTA_ERROR, "the device CA has no database");
	return e;
}

/* ---- provisioning ----------------------------------------------------------- */

struct prov_args {
	struct fleet_ca *ca;
	const struct fleet_ca_request *rq;
	const char *prov;          /* provisioner's name or NULL (admin) */
	void *csr;
	/* out */
	int refused;               /* a refusal to answer with (rc), audited */
	char why[256];
	char *pem;
	char serial[41];
	int64_t nb, na;
};

static json_t *audit_detail(const struct prov_args *a)
{
	return json_pack("{ss ss* ss* ss}", "device", a->rq->device ? a->rq->device : "", "product", a->rq->product,
			 "provisioner", a->prov, "peer", a->rq->peer ? a->rq->peer : "");
}

static int refuse(struct engine *e, struct prov_args *a, int code, const char *actor)
{
	json_t *d = audit_detail(a);
	a->refused = code;
	snprintf(a->why, sizeof(a->why), "%s", ota_error_last());
	json_object_set_new(d, "error", json_string(a->why));
	return engine_audit(e, actor, "device.provision_refused", 0, 0, a->why, d);
}

int fleet_ca_store_quota(struct store *db, const char *name, int64_t *issued, int64_t *max)
{
	struct db_stmt *st = store_q(db, "SELECT issued, max_devices FROM device_provisioners"
					 " WHERE name = ? AND revoked_at IS NULL");
	int rc;

	*issued = *max = 0;
	if (!st)
		return OTA_ERROR;
	db_bind_text(st, 1, name);
	if ((rc = db_step(st)) == 1) {
		*issued = db_column_int64(st, 0);
		*max = db_column_int64(st, 1);
	}
	db_reset(st);
	if (rc < 0)
		return rc;
	return rc == 1 ? 0 : ota_error_set(OTA_ENOTFOUND, "no active provisioner '%s'", name);
}

int fleet_ca_store_device_certs(struct store *db, const char *device, int64_t now_s, int64_t *certs, int64_t *live)
{
	/* CASE, not SUM(a boolean): PostgreSQL has no SUM of booleans */
	struct db_stmt *st = store_q(db, "SELECT COUNT(*), COALESCE(SUM(CASE WHEN revoked_at IS NULL AND not_after > ?"
					 " THEN 1 ELSE 0 END), 0) FROM device_certs WHERE device = ?");
	int rc;

	*certs = *live = 0;
	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, now_s);
	db_bind_text(st, 2, device);
	if ((rc = db_step(st)) == 1) {
		*certs = db_column_int64(st, 0);
		*live = db_column_int64(st, 1);
	}
	db_reset(st);
	return rc < 0 ? rc : 0;
}

int fleet_ca_store_cert_add(struct store *db, const struct fleet_ca_cert *c, int64_t now_ms)
{
	struct db_stmt *st = store_q(db, "INSERT INTO device_certs(serial, device, product, provisioner, not_before,"
					 " not_after, issued_at, pem) VALUES (?, ?, ?, ?, ?, ?, ?, ?)");
	int rc;

	if (!st)
		return OTA_ERROR;
	db_bind_text(st, 1, c->serial);
	db_bind_text(st, 2, c->device);
	db_bind_text(st, 3, c->product);     /* NULL binds NULL */
	db_bind_text(st, 4, c->provisioner);
	db_bind_int64(st, 5, c->not_before);
	db_bind_int64(st, 6, c->not_after);
	db_bind_int64(st, 7, now_ms);
	db_bind_text(st, 8, c->pem);
	if ((rc = db_run(st)) < 0 || !c->provisioner)
		return rc;
	if (!(st = store_q(db, "UPDATE device_provisioners SET issued = issued + 1 WHERE name = ?")))
		return OTA_ERROR;
	db_bind_text(st, 1, c->provisioner);
	return db_run(st);
}

static int do_provision(struct engine *e, void *arg)
{
	struct prov_args *a = arg;
	struct store *db = engine_store(e);
	const char *actor = a->prov ? a->prov : a->rq->actor;
	int64_t now_s = (int64_t)time(NULL), certs = 0, live = 0;
	struct fleet_ca_cert cert;
	json_t *d;
	int rc;

	if (a->prov) {
		int64_t issued, max;
		rc = fleet_ca_store_quota(db, a->prov, &issued, &max);
		if (rc == OTA_ENOTFOUND)
			return refuse(e, a, ota_error_set(OTA_EAUTH, "provisioner %s was revoked", a->prov), actor);
		if (rc < 0)
			return rc;
		if (issued >= max)
			return refuse(e, a, ota_error_set(OTA_EPERM, "provisioner %s has issued all its %lld certificates",
							  a->prov, (long long)max), actor);
	}
	if ((rc = fleet_ca_store_device_certs(db, a->rq->device, now_s, &certs, &live)) < 0)
		return rc;
	/* a factory credential only mints new identities: a device that had a
	 * certificate, was revoked, or has a token credential is the admin's */
	if (a->prov && (certs || fleet_ca_revoked_at(a->ca, a->rq->device) || a->rq->token_registered))
		return refuse(e, a, ota_error_set(OTA_EPERM, "device '%s' has an identity already (%s); only an administrator"
							     " provisions it again", a->rq->device,
						  certs ? "a certificate" : a->rq->token_registered ? "a token credential" : "revoked"),
			      actor);
	if (!a->prov && live && !a->rq->replace)
		return refuse(e, a, ota_error_set(OTA_ECONFLICT, "device '%s' has a valid certificate; revoke it first (or replace)",
						  a->rq->device), actor);
	if ((rc = fleet_ca_issue(a->ca, a->csr, a->rq->device, a->rq->product, &a->pem, a->serial, &a->nb, &a->na)) < 0)
		return rc;
	cert = (struct fleet_ca_cert){ a->serial, a->rq->device, a->rq->product, a->prov, a->pem, a->nb, a->na };
	if ((rc = fleet_ca_store_cert_add(db, &cert, clock_now_ms())) < 0)
		return rc;
	d = audit_detail(a);
	json_object_set_new(d, "serial", json_string(a->serial));
	json_object_set_new(d, "not_after", json_integer(a->na));
	return engine_audit(e, actor, "device.provision", 0, 0, NULL, d);
}

struct refusal_args {
	const char *actor, *reason;
	json_t *detail;
};

static int do_audit_refusal(struct engine *e, void *arg)
{
	struct refusal_args *a = arg;
	json_t *d = a->detail;
	a->detail = NULL;
	return engine_audit(e, a->actor, "device.provision_refused", 0, 0, a->reason, d);
}

/* Audit a refusal decided before the transaction (a known provisioner's
 * scope, count, rate or CSR); keeps the refusal's message. */
static void audit_early(struct fleet_ca *ca, const struct fleet_ca_request *rq, const char *prov, int rc)
{
	struct engine *e = fleet_ca_engine(ca);
	char why[256];
	struct refusal_args a;

	snprintf(why, sizeof(why), "%s", ota_error_last());
	if (!e || (rc == OTA_ECONFLICT && prov && !fleet_ca_prov_rate_audit(ca, prov)))
		return;
	a.actor = prov ? prov : rq->actor;
	a.reason = why;
	a.detail = json_pack("{ss ss* ss* ss ss}", "device", rq->device ? rq->device : "", "product", rq->product,
			     "provisioner", prov, "peer", rq->peer ? rq->peer : "", "error", why);
	if (engine_exec(e, do_audit_refusal, &a) < 0)
		ota_log(OTA_LOG_WARN, "cannot audit a refused provisioning: %s", ota_error_last());
	json_decref(a.detail);
	ota_error_set(rc, "%s", why);
}

int fleet_ca_provision(struct fleet_ca *ca, const struct fleet_ca_request *rq, json_t **answer, int64_t *retry_s)
{
	struct prov_args a;
	char prov[65] = "";
	struct engine *e;
	json_t *info;
	int rc;

	*answer = NULL;
	*retry_s = 0;
	memset(&a, 0, sizeof(a));
	if (!ca)
		return ota_error_set(OTA_ENOTFOUND, "no device CA (otactl fleet ca init)");
	if (rq->token) {
		if ((rc = fleet_ca_prov_admit(ca, rq->token, rq->device, rq->product, prov, retry_s)) < 0) {
			if (prov[0])
				audit_early(ca, rq, prov, rc);
			return rc;
		}
	} else if (!rq->device || !fleet_device_id_valid(rq->device)) {
		return ota_error_set(OTA_EINVAL, "device: must be 1..64 characters [A-Za-z0-9._:-]");
	}
	if (fleet_ca_state(ca) < 2) {
		rc = ota_error_set(OTA_ENOTFOUND, fleet_ca_state(ca) ? "the device CA is external: otacd cannot issue"
								 : "no device CA (otactl fleet ca init)");
		goto refused;
	}
	if (rq->product && !fleet_name_valid(rq->product)) {
		rc = ota_error_set(OTA_EINVAL, "product: not a valid product name");
		goto refused;
	}
	if ((rc = fleet_ca_csr_parse(&a.csr, rq->csr_pem, rq->csr_len, rq->device)) < 0)
		goto refused;
	if (!(e = engine_of(ca))) {
		rc = OTA_ERROR;
		goto out;
	}
	a.ca = ca;
	a.rq = rq;
	a.prov = prov[0] ? prov : NULL;
	if ((rc = engine_exec(e, do_provision, &a)) < 0)
		goto out;
	if (a.refused) {
		rc = ota_error_set(a.refused, "%s", a.why);
		fleet_ca_count_provision(ca, 0);
		goto out;
	}
	if (a.prov)
		fleet_ca_prov_done(ca, a.prov, 1);
	fleet_ca_count_provision(ca, 1);
	info = fleet_ca_info(ca);
	*answer = json_pack("{ss ss sI sI ss sO}", "device", rq->device, "serial", a.serial, "not_before",
			    (json_int_t)a.nb, "not_after", (json_int_t)a.na, "certificate", a.pem, "ca",
			    json_object_get(info, "certificate"));
	json_decref(info);
	if (rq->product)
		json_object_set_new(*answer, "product", json_string(rq->product));
	goto out;
refused:
	fleet_ca_count_provision(ca, 0);
	if (prov[0])
		audit_early(ca, rq, prov, rc);
out:
	fleet_ca_csr_free(a.csr);
	free(a.pem);
	return rc;
}

/* ---- revocation --------------------------------------------------------------- */

struct revoke_args {
	const char *device, *reason, *actor;
	int64_t cutoff, revoked;
};

/* The device's revocation row: a later cutoff wins.  cutoff is NOT NULL,
 * so MAX (PostgreSQL: GREATEST, which skips NULLs) has no NULL to meet;
 * the kept row's cutoff is named with its table, which PostgreSQL needs
 * (a bare "cutoff" there is ambiguous with excluded's). */
static int revocation_put(struct store *db, const char *device, int64_t cutoff, int64_t now_ms, const char *actor,
			  const char *reason)
{
	struct db_stmt *st = store_q(db, "INSERT INTO device_revocations(device, cutoff, at, actor, reason) VALUES (?, ?, ?, ?, ?)"
					 " ON CONFLICT(device) DO UPDATE SET cutoff = MAX(device_revocations.cutoff, excluded.cutoff),"
					 " at = excluded.at, actor = excluded.actor, reason = excluded.reason");
	if (!st)
		return OTA_ERROR;
	db_bind_text(st, 1, device);
	db_bind_int64(st, 2, cutoff);
	db_bind_int64(st, 3, now_ms);
	db_bind_text(st, 4, actor);
	db_bind_text(st, 5, reason);
	return db_run(st);
}

int fleet_ca_store_revoke(struct store *db, const char *device, int64_t cutoff, int64_t now_ms, const char *actor,
			  const char *reason, int64_t *revoked)
{
	struct db_stmt *st = store_q(db, "UPDATE device_certs SET revoked_at = ? WHERE device = ? AND revoked_at IS NULL");
	int rc;

	*revoked = 0;
	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, now_ms);
	db_bind_text(st, 2, device);
	if ((rc = db_run(st)) < 0)
		return rc;
	*revoked = db_changes(st);
	return revocation_put(db, device, cutoff, now_ms, actor, reason ? reason : "");
}

static int do_revoke(struct engine *e, void *arg)
{
	struct revoke_args *a = arg;
	int rc;

	if ((rc = fleet_ca_store_revoke(engine_store(e), a->device, a->cutoff, clock_now_ms(), a->actor, a->reason,
					&a->revoked)) < 0)
		return rc;
	return engine_audit(e, a->actor, "device.revoke", 0, 0, a->reason,
			    json_pack("{ss sI sI}", "device", a->device, "certificates", (json_int_t)a->revoked,
				      "cutoff", (json_int_t)a->cutoff));
}

int fleet_ca_revoke(struct fleet_ca *ca, const char *device, const char *reason, const char *actor,
		    int64_t *revoked)
{
	struct revoke_args a = { device, reason, actor, (int64_t)time(NULL), 0 };
	struct engine *e;
	int rc;

	*revoked = 0;
	if (!device || !fleet_device_id_valid(device))
		return ota_error_set(OTA_EINVAL, "device: must be 1..64 characters [A-Za-z0-9._:-]");
	if (reason && strlen(reason) > 512)
		return ota_error_set(OTA_EINVAL, "reason: at most 512 characters");
	if (!(e = engine_of(ca)))
		return OTA_ERROR;
	/* memory first: the device's next request is refused already */
	fleet_ca_revoke_mem(ca, device, a.cutoff);
	if ((rc = engine_exec(e, do_revoke, &a)) == 0)
		*revoked = a.revoked;
	return rc;
}

/* ---- provisioners --------------------------------------------------------------- */

static int prov_name_valid(const char *s)
{
	size_t n = s ? strlen(s) : 0;
	return n > 0 && n <= 64 && s[0] != '-' && strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") == n;
}

struct padd_args {
	const char *name, *prefix, *actor, *hash;
	const json_t *products;
	int64_t max, rate;
};

int fleet_ca_store_prov_add(struct store *db, const struct fleet_ca_prov *p, const char *actor, int64_t now_ms)
{
	struct db_stmt *st = store_q(db, "SELECT revoked_at IS NULL FROM device_provisioners WHERE name = ?");
	char *products;
	int rc, active = 0;

	if (!st)
		return OTA_ERROR;
	db_bind_text(st, 1, p->name);
	if ((rc = db_step(st)) == 1)
		active = (int)db_column_int64(st, 0);
	db_reset(st);
	if (rc < 0)
		return rc;
	if (active)
		return ota_error_set(OTA_ECONFLICT, "provisioner '%s' exists (revoke it first)", p->name);
	/* a revoked provisioner's name is taken over: ON CONFLICT resets its
	 * row (no "try the INSERT, then UPDATE": a failed statement ends the
	 * transaction) */
	st = store_q(db, "INSERT INTO device_provisioners(name, token_hash, prefix, products, max_devices, issued,"
			 " rate_per_min, created_at, created_by) VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?)"
			 " ON CONFLICT(name) DO UPDATE SET token_hash = excluded.token_hash, prefix = excluded.prefix,"
			 " products = excluded.products, max_devices = excluded.max_devices, issued = 0,"
			 " rate_per_min = excluded.rate_per_min, created_at = excluded.created_at,"
			 " created_by = excluded.created_by, revoked_at = NULL");
	if (!st)
		return OTA_ERROR;
	products = p->products ? json_dumps(p->products, JSON_COMPACT) : NULL;
	db_bind_text(st, 1, p->name);
	db_bind_text(st, 2, p->token_sha256);
	db_bind_text(st, 3, p->prefix);
	db_bind_text(st, 4, products);   /* NULL binds NULL: any product */
	db_bind_int64(st, 5, p->max);
	db_bind_int64(st, 6, p->rate_per_min);
	db_bind_int64(st, 7, now_ms);
	db_bind_text(st, 8, actor);
	free(products);
	return db_run(st);
}

static int do_prov_add(struct engine *e, void *arg)
{
	struct padd_args *a = arg;
	struct fleet_ca_prov p = { a->name, a->hash, a->prefix, a->products, a->max, 0, a->rate };
	int rc;

	if ((rc = fleet_ca_store_prov_add(engine_store(e), &p, a->actor, clock_now_ms())) < 0)
		return rc;
	return engine_audit(e, a->actor, "provisioner.add", 0, 0, NULL,
			    json_pack("{ss ss sO* sI sI}", "provisioner", a->name, "prefix", a->prefix, "products",
				      (json_t *)a->products, "max", (json_int_t)a->max, "rate_per_min", (json_int_t)a->rate));
}

int fleet_ca_prov_add(struct fleet_ca *ca, const char *name, const char *prefix, const json_t *products,
		      int64_t max, int64_t rate_per_min, const char *actor, char **token)
{
	char tok[65], hash[65];
	struct padd_args a = { name, prefix, actor, hash, products, max, rate_per_min > 0 ? rate_per_min : 60 };
	struct engine *e;
	json_t *v;
	size_t i;
	int rc;

	*token = NULL;
	if (!prov_name_valid(name))
		return ota_error_set(OTA_EINVAL, "name: 1-64 of A-Z a-z 0-9 . _ -");
	if (!prefix || strlen(prefix) > 63 || (*prefix && !fleet_device_id_valid(prefix)))
		return ota_error_set(OTA_EINVAL, "prefix: the start of the device ids it may provision ([A-Za-z0-9._:-],"
						 " at most 63; \"\" for any id)");
	if (max < 1 || max > 100000000)
		return ota_error_set(OTA_EINVAL, "max: 1..100000000 certificates");
	if (a.rate > 100000)
		return ota_error_set(OTA_EINVAL, "rate_per_min: 1..100000");
	if (products) {
		if (!json_is_array(products) || json_array_size(products) == 0 || json_array_size(products) > 64)
			return ota_error_set(OTA_EINVAL, "products: a list of 1..64 product names");
		json_array_foreach(products, i, v)
			if (!json_is_string(v) || !fleet_name_valid(json_string_value(v)))
				return ota_error_set(OTA_EINVAL, "products[%zu]: not a product name", i);
	}
	if (!(e = engine_of(ca)))
		return OTA_ERROR;
	if ((rc = ota_random_hex(tok, 32)) < 0)
		return rc;
	auth_sha256_hex(tok, hash);
	if ((rc = engine_exec(e, do_prov_add, &a)) == 0) {
		struct fleet_ca_prov p = { name, hash, prefix, products, max, 0, a.rate };
		fleet_ca_prov_set(ca, &p);
		*token = xstrdup(tok);
	}
	OPENSSL_cleanse(tok, sizeof(tok));
	return rc;
}

struct prev_args {
	const char *name, *actor;
	int devices;               /* also revoke every device it provisioned */
	int64_t cutoff;
	json_t *revoked;           /* out: the devices revoked */
};

int fleet_ca_store_prov_devices(struct store *db, const char *name, json_t *out)
{
	struct db_stmt *st = store_q(db, "SELECT DISTINCT device FROM device_certs WHERE provisioner = ? ORDER BY device");
	int rc;

	if (!st)
		return OTA_ERROR;
	db_bind_text(st, 1, name);
	while ((rc = db_step(st)) == 1)
		json_array_append_new(out, json_string(db_column_text(st, 0)));
	db_reset(st);
	return rc < 0 ? rc : 0;
}

int fleet_ca_store_prov_revoke(struct store *db, const char *name, int devices, int64_t cutoff, int64_t now_ms,
			       const char *actor, json_t *revoked)
{
	struct db_stmt *st = store_q(db, "UPDATE device_provisioners SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL");
	size_t i;
	json_t *v;
	int rc;

	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, now_ms);
	db_bind_text(st, 2, name);
	if ((rc = db_run(st)) < 0)
		return rc;
	if (db_changes(st) == 0 && !devices)
		return ota_error_set(OTA_ENOTFOUND, "no active provisioner '%s'", name);
	if (!devices)
		return 0;
	/* a leaked credential: every identity it minted goes too */
	if ((rc = fleet_ca_store_prov_devices(db, name, revoked)) < 0)
		return rc;
	if (!(st = store_q(db, "UPDATE device_certs SET revoked_at = ? WHERE provisioner = ? AND revoked_at IS NULL")))
		return OTA_ERROR;
	db_bind_int64(st, 1, now_ms);
	db_bind_text(st, 2, name);
	if ((rc = db_run(st)) < 0)
		return rc;
	json_array_foreach(revoked, i, v)
		if ((rc = revocation_put(db, json_string_value(v), cutoff, now_ms, actor, "its provisioner was revoked")) < 0)
			return rc;
	return 0;
}

static int do_prov_revoke(struct engine *e, void *arg)
{
	struct prev_args *a = arg;
	int rc;

	if ((rc = fleet_ca_store_prov_revoke(engine_store(e), a->name, a->devices, a->cutoff, clock_now_ms(), a->actor,
					     a->revoked)) < 0)
		return rc;
	return engine_audit(e, a->actor, "provisioner.revoke", 0, 0, NULL,
			    json_pack("{ss sI}", "provisioner", a->name, "devices_revoked",
				      (json_int_t)json_array_size(a->revoked)));
}

int fleet_ca_prov_revoke(struct fleet_ca *ca, const char *name, int devices, const char *actor, int64_t *revoked)
{
	struct prev_args a = { name, actor, devices, (int64_t)time(NULL), json_array() };
	struct store *rd = store_reader();
	json_t *known;
	struct engine *e;
	size_t i;
	json_t *v;
	int rc;

	*revoked = 0;
	if (!prov_name_valid(name)) {
		json_decref(a.revoked);
		return ota_error_set(OTA_EINVAL, "name: not a provisioner's name");
	}
	if (!(e = engine_of(ca))) {
		json_decref(a.revoked);
		return OTA_ERROR;
	}
	/* memory first, as for devices: its next request is refused, and so
	 * are the devices it provisioned that the database knows now */
	fleet_ca_prov_remove(ca, name);
	known = json_array();
	if (devices && rd && fleet_ca_store_prov_devices(rd, name, known) == 0)
		json_array_foreach(known, i, v)
			fleet_ca_revoke_mem(ca, json_string_value(v), a.cutoff);
	json_decref(known);
	if ((rc = engine_exec(e, do_prov_revoke, &a)) == 0) {
		json_array_foreach(a.revoked, i, v)
			fleet_ca_revoke_mem(ca, json_string_value(v), a.cutoff);
		*revoked = (int64_t)json_array_size(a.revoked);
	}
	json_decref(a.revoked);
	return rc;
}

json_t *fleet_ca_store_prov_list(struct store *db)
{
	struct db_stmt *st = store_q(db, "SELECT name, prefix, products, max_devices, issued, rate_per_min, created_at,"
					 " created_by, revoked_at FROM device_provisioners ORDER BY name");
	json_t *out = json_array();

	if (!st)
		return out;
	while (db_step(st) == 1) {
		const char *p = db_column_text(st, 2);
		json_t *o = json_pack("{ss ss sI sI sI sI ss}", "name", db_column_text(st, 0), "prefix", db_column_text(st, 1),
				      "max", (json_int_t)db_column_int64(st, 3), "issued", (json_int_t)db_column_int64(st, 4),
				      "rate_per_min", (json_int_t)db_column_int64(st, 5), "created_at",
				      (json_int_t)db_column_int64(st, 6), "created_by", db_column_text(st, 7));
		json_object_set_new(o, "products", p ? json_loads(p, 0, NULL) : json_null());
		json_object_set_new(o, "revoked_at", db_column_type(st, 8) == DB_NULL ? json_null()
										 : json_integer(db_column_int64(st, 8)));
		json_array_append_new(out, o);
	}
	db_reset(st);
	return out;
}

json_t *fleet_ca_prov_list(struct fleet_ca *ca)
{
	struct store *db = store_reader();
	(void)ca;
	return db ? fleet_ca_store_prov_list(db) : json_array();
}

struct ca_audit_args {
	const char *actor, *action;
	json_t *detail;
};

static int do_ca_audit(struct engine *e, void *arg)
{
	struct ca_audit_args *a = arg;
	json_t *d = a->detail;
	a->detail = NULL;
	return engine_audit(e, a->actor, a->action, 0, 0, NULL, d);
}

int fleet_ca_audit(struct fleet_ca *ca, const char *actor, const char *action, json_t *detail)
{
	struct ca_audit_args a = { actor, action, detail };
	struct engine *e = engine_of(ca);
	int rc;
	if (!e) {
		json_decref(detail);
		return OTA_ERROR;
	}
	rc = engine_exec(e, do_ca_audit, &a);
	json_decref(a.detail);
	return rc;
}
