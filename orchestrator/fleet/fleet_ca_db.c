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
 * Revocation changes memory first (fleet_ca_revoke_mem, so the next
 * request of the device is refused even while the transaction runs; a
 * failed commit errs on the refusing side until a restart), then the
 * database.
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
#include "../engine_int.h"
#include "../store.h"
#include "fleet_int.h"

struct engine *fleet_ca_engine(struct fleet_ca *ca);
void fleet_ca_set_engine(struct fleet_ca *ca, struct engine *e);
int fleet_ca_prov_rate_audit(struct fleet_ca *ca, const char *name);

int fleet_ca_attach(struct fleet_ca *ca, struct engine *e)
{
	struct store *db = store_reader();
	sqlite3_stmt *st;
	int rc;

	if (!db)
		return ota_error_set(OTA_ERROR, "device CA: no database");
	st = store_stmt(db, "SELECT name, token_hash, prefix, products, max_devices, issued, rate_per_min"
			    " FROM device_provisioners WHERE revoked_at IS NULL");
	if (!st)
		return OTA_ERROR;
	while ((rc = store_step_row(db, st)) == 1) {
		const char *products = store_col_text(st, 3);
		json_t *pj = products ? json_loads(products, 0, NULL) : NULL;
		struct fleet_ca_prov p = { store_col_text(st, 0), store_col_text(st, 1), store_col_text(st, 2), pj,
					   store_col_int(st, 4), store_col_int(st, 5), store_col_int(st, 6) };
		fleet_ca_prov_set(ca, &p);
		json_decref(pj);
	}
	sqlite3_reset(st);
	if (rc < 0)
		return rc;
	if (!(st = store_stmt(db, "SELECT device, cutoff FROM device_revocations")))
		return OTA_ERROR;
	while ((rc = store_step_row(db, st)) == 1)
		fleet_ca_revoke_mem(ca, store_col_text(st, 0), store_col_int(st, 1));
	sqlite3_reset(st);
	if (rc < 0)
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

static int do_provision(struct engine *e, void *arg)
{
	struct prov_args *a = arg;
	struct store *db = engine_store(e);
	const char *actor = a->prov ? a->prov : a->rq->actor;
	int64_t now_s = (int64_t)time(NULL), certs = 0, live = 0;
	sqlite3_stmt *st;
	json_t *d;
	int rc;

	if (a->prov) {
		int64_t issued = 0, max = 0, found = 0;
		st = store_stmt(db, "SELECT issued, max_devices FROM device_provisioners WHERE name = ? AND revoked_at IS NULL");
		if (!st)
			return OTA_ERROR;
		sqlite3_bind_text(st, 1, a->prov, -1, SQLITE_STATIC);
		if ((rc = store_step_row(db, st)) == 1) {
			found = 1;
			issued = store_col_int(st, 0);
			max = store_col_int(st, 1);
		}
		sqlite3_reset(st);
		if (rc < 0)
			return rc;
		if (!found)
			return refuse(e, a, ota_error_set(OTA_EAUTH, "provisioner %s was revoked", a->prov), actor);
		if (issued >= max)
			return refuse(e, a, ota_error_set(OTA_EPERM, "provisioner %s has issued all its %lld certificates",
							  a->prov, (long long)max), actor);
	}
	st = store_stmt(db, "SELECT COUNT(*), COALESCE(SUM(revoked_at IS NULL AND not_after > ?), 0)"
			    " FROM device_certs WHERE device = ?");
	if (!st)
		return OTA_ERROR;
	sqlite3_bind_int64(st, 1, now_s);
	sqlite3_bind_text(st, 2, a->rq->device, -1, SQLITE_STATIC);
	if ((rc = store_step_row(db, st)) == 1) {
		certs = store_col_int(st, 0);
		live = store_col_int(st, 1);
	}
	sqlite3_reset(st);
	if (rc < 0)
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
	st = store_stmt(db, "INSERT INTO device_certs(serial, device, product, provisioner, not_before, not_after, issued_at, pem)"
			    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)");
	if (!st)
		return OTA_ERROR;
	sqlite3_bind_text(st, 1, a->serial, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, a->rq->device, -1, SQLITE_STATIC);
	if (a->rq->product)
		sqlite3_bind_text(st, 3, a->rq->product, -1, SQLITE_STATIC);
	else
		sqlite3_bind_null(st, 3);
	if (a->prov)
		sqlite3_bind_text(st, 4, a->prov, -1, SQLITE_STATIC);
	else
		sqlite3_bind_null(st, 4);
	sqlite3_bind_int64(st, 5, a->nb);
	sqlite3_bind_int64(st, 6, a->na);
	sqlite3_bind_int64(st, 7, clock_now_ms());
	sqlite3_bind_text(st, 8, a->pem, -1, SQLITE_STATIC);
	if ((rc = store_step_done(db, st)) < 0)
		return rc;
	if (a->prov) {
		st = store_stmt(db, "UPDATE device_provisioners SET issued = issued + 1 WHERE name = ?");
		sqlite3_bind_text(st, 1, a->prov, -1, SQLITE_STATIC);
		if ((rc = store_step_done(db, st)) < 0)
			return rc;
	}
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

static int do_revoke(struct engine *e, void *arg)
{
	struct revoke_args *a = arg;
	struct store *db = engine_store(e);
	sqlite3_stmt *st = store_stmt(db, "UPDATE device_certs SET revoked_at = ? WHERE device = ? AND revoked_at IS NULL");
	int rc;

	if (!st)
		return OTA_ERROR;
	sqlite3_bind_int64(st, 1, clock_now_ms());
	sqlite3_bind_text(st, 2, a->device, -1, SQLITE_STATIC);
	if ((rc = store_step_done(db, st)) < 0)
		return rc;
	a->revoked = sqlite3_changes(store_db(db));
	st = store_stmt(db, "INSERT INTO device_revocations(device, cutoff, at, actor, reason) VALUES (?, ?, ?, ?, ?)"
			    " ON CONFLICT(device) DO UPDATE SET cutoff = MAX(cutoff, excluded.cutoff), at = excluded.at,"
			    " actor = excluded.actor, reason = excluded.reason");
	if (!st)
		return OTA_ERROR;
	sqlite3_bind_text(st, 1, a->device, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, a->cutoff);
	sqlite3_bind_int64(st, 3, clock_now_ms());
	sqlite3_bind_text(st, 4, a->actor, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 5, a->reason ? a->reason : "", -1, SQLITE_STATIC);
	if ((rc = store_step_done(db, st)) < 0)
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

static int do_prov_add(struct engine *e, void *arg)
{
	struct padd_args *a = arg;
	struct store *db = engine_store(e);
	sqlite3_stmt *st = store_stmt(db, "SELECT revoked_at IS NULL FROM device_provisioners WHERE name = ?");
	char *products = a->products ? json_dumps(a->products, JSON_COMPACT) : NULL;
	int rc, active = 0;

	if (!st) {
		free(products);
		return OTA_ERROR;
	}
	sqlite3_bind_text(st, 1, a->name, -1, SQLITE_STATIC);
	if ((rc = store_step_row(db, st)) == 1)
		active = (int)store_col_int(st, 0);
	sqlite3_reset(st);
	if (rc < 0 || active) {
		free(products);
		return rc < 0 ? rc : ota_error_set(OTA_ECONFLICT, "provisioner '%s' exists (revoke it first)", a->name);
	}
	st = store_stmt(db, "INSERT INTO device_provisioners(name, token_hash, prefix, products, max_devices, issued,"
			    " rate_per_min, created_at, created_by) VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?)"
			    " ON CONFLICT(name) DO UPDATE SET token_hash = excluded.token_hash, prefix = excluded.prefix,"
			    " products = excluded.products, max_devices = excluded.max_devices, issued = 0,"
			    " rate_per_min = excluded.rate_per_min, created_at = excluded.created_at,"
			    " created_by = excluded.created_by, revoked_at = NULL");
	sqlite3_bind_text(st, 1, a->name, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, a->hash, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, a->prefix, -1, SQLITE_STATIC);
	if (products)
		sqlite3_bind_text(st, 4, products, -1, SQLITE_TRANSIENT);
	else
		sqlite3_bind_null(st, 4);
	sqlite3_bind_int64(st, 5, a->max);
	sqlite3_bind_int64(st, 6, a->rate);
	sqlite3_bind_int64(st, 7, clock_now_ms());
	sqlite3_bind_text(st, 8, a->actor, -1, SQLITE_STATIC);
	free(products);
	if ((rc = store_step_done(db, st)) < 0)
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

static int do_prov_revoke(struct engine *e, void *arg)
{
	struct prev_args *a = arg;
	struct store *db = engine_store(e);
	sqlite3_stmt *st = store_stmt(db, "UPDATE device_provisioners SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL");
	int64_t now = clock_now_ms();
	size_t i;
	json_t *v;
	int rc;

	if (!st)
		return OTA_ERROR;
	sqlite3_bind_int64(st, 1, now);
	sqlite3_bind_text(st, 2, a->name, -1, SQLITE_STATIC);
	if ((rc = store_step_done(db, st)) < 0)
		return rc;
	if (sqlite3_changes(store_db(db)) == 0 && !a->devices)
		return ota_error_set(OTA_ENOTFOUND, "no active provisioner '%s'", a->name);
	if (a->devices) {
		/* a leaked credential: every identity it minted goes too */
		if (!(st = store_stmt(db, "SELECT DISTINCT device FROM device_certs WHERE provisioner = ?")))
			return OTA_ERROR;
		sqlite3_bind_text(st, 1, a->name, -1, SQLITE_STATIC);
		while ((rc = store_step_row(db, st)) == 1)
			json_array_append_new(a->revoked, json_string(store_col_text(st, 0)));
		sqlite3_reset(st);
		if (rc < 0)
			return rc;
		st = store_stmt(db, "UPDATE device_certs SET revoked_at = ? WHERE provisioner = ? AND revoked_at IS NULL");
		sqlite3_bind_int64(st, 1, now);
		sqlite3_bind_text(st, 2, a->name, -1, SQLITE_STATIC);
		if ((rc = store_step_done(db, st)) < 0)
			return rc;
		json_array_foreach(a->revoked, i, v) {
			st = store_stmt(db, "INSERT INTO device_revocations(device, cutoff, at, actor, reason) VALUES (?, ?, ?, ?, ?)"
					    " ON CONFLICT(device) DO UPDATE SET cutoff = MAX(cutoff, excluded.cutoff),"
					    " at = excluded.at, actor = excluded.actor, reason = excluded.reason");
			sqlite3_bind_text(st, 1, json_string_value(v), -1, SQLITE_STATIC);
			sqlite3_bind_int64(st, 2, a->cutoff);
			sqlite3_bind_int64(st, 3, now);
			sqlite3_bind_text(st, 4, a->actor, -1, SQLITE_STATIC);
			sqlite3_bind_text(st, 5, "its provisioner was revoked", -1, SQLITE_STATIC);
			if ((rc = store_step_done(db, st)) < 0)
				return rc;
		}
	}
	return engine_audit(e, a->actor, "provisioner.revoke", 0, 0, NULL,
			    json_pack("{ss sI}", "provisioner", a->name, "devices_revoked",
				      (json_int_t)json_array_size(a->revoked)));
}

int fleet_ca_prov_revoke(struct fleet_ca *ca, const char *name, int devices, const char *actor, int64_t *revoked)
{
	struct prev_args a = { name, actor, devices, (int64_t)time(NULL), json_array() };
	struct store *rd = store_reader();
	struct engine *e;
	sqlite3_stmt *st;
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
	if (devices && rd && (st = store_stmt(rd, "SELECT DISTINCT device FROM device_certs WHERE provisioner = ?"))) {
		sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
		while (store_step_row(rd, st) == 1)
			fleet_ca_revoke_mem(ca, store_col_text(st, 0), a.cutoff);
		sqlite3_reset(st);
	}
	if ((rc = engine_exec(e, do_prov_revoke, &a)) == 0) {
		json_array_foreach(a.revoked, i, v)
			fleet_ca_revoke_mem(ca, json_string_value(v), a.cutoff);
		*revoked = (int64_t)json_array_size(a.revoked);
	}
	json_decref(a.revoked);
	return rc;
}

json_t *fleet_ca_prov_list(struct fleet_ca *ca)
{
	struct store *db = store_reader();
	sqlite3_stmt *st;
	json_t *out = json_array();
	(void)ca;
	if (!db || !(st = store_stmt(db, "SELECT name, prefix, products, max_devices, issued, rate_per_min, created_at,"
					 " created_by, revoked_at FROM device_provisioners ORDER BY name")))
		return out;
	while (store_step_row(db, st) == 1) {
		const char *p = store_col_text(st, 2);
		json_t *o = json_pack("{ss ss sI sI sI sI ss}", "name", store_col_text(st, 0), "prefix", store_col_text(st, 1),
				      "max", (json_int_t)store_col_int(st, 3), "issued", (json_int_t)store_col_int(st, 4),
				      "rate_per_min", (json_int_t)store_col_int(st, 5), "created_at",
				      (json_int_t)store_col_int(st, 6), "created_by", store_col_text(st, 7));
		json_object_set_new(o, "products", p ? json_loads(p, 0, NULL) : json_null());
		json_object_set_new(o, "revoked_at", sqlite3_column_type(st, 8) == SQLITE_NULL ? json_null()
											 : json_integer(store_col_int(st, 8)));
		json_array_append_new(out, o);
	}
	sqlite3_reset(st);
	return out;
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
