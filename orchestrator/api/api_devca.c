/*
 * api_devca.c - the device CA's administration (issue 13; fleet_ca.h):
 *
 *   GET  /api/v1/fleet/ca                   viewer  the CA: subject, fingerprint, PEM
 *   POST /api/v1/fleet/ca                   admin   {"cn"?, "days"?} create one, or
 *                                                   {"certificate", "key"} import one
 *   POST /api/v1/fleet/ca/remove            operator {"reason"}: stop trusting the CA
 *                                                   (a stolen key) on every instance
 *   GET  /api/v1/fleet/provisioners         viewer  provisioning credentials (no tokens)
 *   POST /api/v1/fleet/provisioners         admin   {"name", "prefix", "max", "products"?, "rate_per_min"?}
 *                                                   -> 201 with the token, once
 *   POST /api/v1/fleet/provisioners/revoke  admin   {"name", "devices"?: true: and every
 *                                                   device it provisioned}
 *   POST /api/v1/devices/provision          admin   {"device", "csr", "product"?, "replace"?}
 *   POST /api/v1/devices/revoke             operator {"device", "reason"?}
 *   POST /api/v1/devices/identify           viewer  {"certificate"}: would a device be
 *                                                   accepted with it, now?
 *
 * Factories provision through the device listener instead
 * (POST /device/v1/provision with a provisioner's token, devapi.c).
 * Revoking a device or removing the CA is an operator's: like a rollback,
 * it only ever takes trust away.  docs/api.md documents the answers.
 */
#include "api_int.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "../fleet/fleet_ca.h"
#include "../tls/tls.h"

/* A member, JSON null counting as absent. */
static json_t *member(struct api_req *r, const char *key)
{
	json_t *v = json_object_get(r->json, key);
	return json_is_null(v) ? NULL : v;
}

static const char *actor_of(struct api_req *r)
{
	return r->actor[0] ? r->actor : "admin";
}

static int need_ca(struct api *a, struct api_req *r, enum MHD_Result *ret)
{
	if (a->cfg.devca)
		return 0;
	*ret = api_reply_error(r, MHD_HTTP_SERVICE_UNAVAILABLE, "the device CA is not available (update_server: http?)");
	return -1;
}

enum MHD_Result api_get_devca(struct api *a, struct api_req *r)
{
	enum MHD_Result ret;
	if (need_ca(a, r, &ret) < 0)
		return ret;
	return api_reply_json(r, MHD_HTTP_OK, fleet_ca_info(a->cfg.devca));
}

enum MHD_Result api_post_devca(struct api *a, struct api_req *r)
{
	json_t *cn = member(r, "cn"), *days = member(r, "days");
	json_t *cert = member(r, "certificate"), *key = member(r, "key"), *info;
	enum MHD_Result ret;
	int rc;

	if (need_ca(a, r, &ret) < 0)
		return ret;
	if ((cn && !json_is_string(cn)) || (days && !json_is_integer(days)))
		return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "'cn' must be a string and 'days' an integer");
	if ((cert || key) && (!json_is_string(cert) || !json_is_string(key)))
		return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "an import needs 'certificate' and 'key' (PEM strings)");
	rc = fleet_ca_install(a->cfg.devca, json_string_value(cn), days ? (int)json_integer_value(days) : FLEET_CA_DEFAULT_DAYS,
			      json_string_value(cert), json_string_value(key));
	if (key)
		OPENSSL_cleanse((void *)json_string_value(key), json_string_length(key));
	if (rc < 0)
		return api_reply_rc(r, rc);
	/* a listener whose client_ca is STATE/devca/ca.pem trusts the new CA
	 * now, and no longer a removed one (what SIGHUP does; a listener
	 * whose files do not load keeps what it has, said in the log) */
	tls_reload_all();
	info = fleet_ca_info(a->cfg.devca);
	fleet_ca_audit(a->cfg.devca, actor_of(r), cert ? "device_ca.import" : "device_ca.init",
		       json_pack("{sO sO}", "subject", json_object_get(info, "subject"), "sha256",
				 json_object_get(info, "sha256")));
	return api_reply_json(r, MHD_HTTP_CREATED, info);
}

enum MHD_Result api_post_devca_remove(struct api *a, struct api_req *r)
{
	json_t *reason = member(r, "reason"), *answer = NULL;
	enum MHD_Result ret;
	int rc;

	if (need_ca(a, r, &ret) < 0)
		return ret;
	if (!json_is_string(reason))
		return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "'reason' (a string: why the CA goes) is needed");
	if ((rc = fleet_ca_remove(a->cfg.devca, json_string_value(reason), actor_of(r), &answer)) < 0)
		return api_reply_rc(r, rc);
	return api_reply_json(r, MHD_HTTP_OK, answer);
}

enum MHD_Result api_get_provisioners(struct api *a, struct api_req *r)
{
	enum MHD_Result ret;
	if (need_ca(a, r, &ret) < 0)
		return ret;
	return api_reply_json(r, MHD_HTTP_OK, fleet_ca_prov_list(a->cfg.devca));
}

enum MHD_Result api_post_provisioner(struct api *a, struct api_req *r)
{
	json_t *name = member(r, "name"), *prefix = member(r, "prefix");
	json_t *max = member(r, "max"), *rate = member(r, "rate_per_min");
	json_t *products = member(r, "products");
	enum MHD_Result ret;
	char *token = NULL;
	int rc;

	if (need_ca(a, r, &ret) < 0)
		return ret;
	if (!json_is_string(name) || !json_is_string(prefix) || !json_is_integer(max))
		return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "'name', 'prefix' (strings) and 'max' (integer) are needed");
	if ((rate && !json_is_integer(rate)) || (products && !json_is_null(products) && !json_is_array(products)))
		return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "'rate_per_min' must be an integer, 'products' a list");
	rc = fleet_ca_prov_add(a->cfg.devca, json_string_value(name), json_string_value(prefix),
			       json_is_array(products) ? products : NULL, json_integer_value(max),
			       rate ? json_integer_value(rate) : 0, actor_of(r), &token);
	if (rc < 0)
		return api_reply_rc(r, rc);
	ret = api_reply_json(r, MHD_HTTP_CREATED, json_pack("{sO sO sO ss}", "name", name, "prefix", prefix, "max", max,
							    "token", token));
	OPENSSL_cleanse(token, strlen(token));
	free(token);
	return ret;
}

enum MHD_Result api_post_provisioner_revoke(struct api *a, struct api_req *r)
{
	json_t *name = member(r, "name");
	enum MHD_Result ret;
	int64_t n = 0;
	int rc;
	if (need_ca(a, r, &ret) < 0)
		return ret;
	if (!json_is_string(name))
		return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "'name' must be a provisioner's name");
	if ((rc = fleet_ca_prov_revoke(a->cfg.devca, json_string_value(name), json_is_true(member(r, "devices")),
				       actor_of(r), &n)) < 0)
		return api_reply_rc(r, rc);
	return api_reply_json(r, MHD_HTTP_OK, json_pack("{sO sb sI}", "name", name, "revoked", 1, "devices_revoked",
							 (json_int_t)n));
}

enum MHD_Result api_post_device_provision(struct api *a, struct api_req *r)
{
	json_t *dev = member(r, "device"), *csr = member(r, "csr");
	json_t *product = member(r, "product"), *answer = NULL;
	struct fleet_ca_request rq = { 0 };
	enum MHD_Result ret;
	int64_t retry;
	int rc;

	if (need_ca(a, r, &ret) < 0)
		return ret;
	if (!json_is_string(dev) || !json_is_string(csr) || (product && !json_is_string(product)))
		return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "'device' and 'csr' (PEM) are needed, 'product' is a string");
	rq.device = json_string_value(dev);
	rq.product = json_string_value(product);
	rq.csr_pem = json_string_value(csr);
	rq.csr_len = json_string_length(csr);
	rq.actor = actor_of(r);
	rq.peer = "api";
	rq.replace = json_is_true(member(r, "replace"));
	if ((rc = fleet_ca_provision(a->cfg.devca, &rq, &answer, &retry)) < 0)
		return api_reply_rc(r, rc);
	return api_reply_json(r, MHD_HTTP_CREATED, answer);
}

enum MHD_Result api_post_device_revoke(struct api *a, struct api_req *r)
{
	json_t *dev = member(r, "device"), *reason = member(r, "reason");
	enum MHD_Result ret;
	int64_t n = 0;
	int rc;

	if (need_ca(a, r, &ret) < 0)
		return ret;
	if (!json_is_string(dev) || (reason && !json_is_string(reason)))
		return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "'device' is needed, 'reason' is a string");
	rc = fleet_ca_revoke(a->cfg.devca, json_string_value(dev), json_string_value(reason), actor_of(r), &n);
	if (rc < 0)
		return api_reply_rc(r, rc);
	return api_reply_json(r, MHD_HTTP_OK, json_pack("{sO sb sI}", "device", dev, "revoked", 1, "certificates",
							 (json_int_t)n));
}

enum MHD_Result api_post_device_identify(struct api *a, struct api_req *r)
{
	json_t *pem = member(r, "certificate");
	unsigned char *der = NULL;
	size_t len = 0;
	char id[128], product[129];
	const char *why = NULL;
	enum MHD_Result ret;

	if (need_ca(a, r, &ret) < 0)
		return ret;
	if (!json_is_string(pem) || fleet_ca_pem_to_der(json_string_value(pem), json_string_length(pem), &der, &len) < 0)
		return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "'certificate' must be a PEM certificate");
	if (fleet_ca_identify_ex(a->cfg.devca, der, len, id, sizeof(id), product, sizeof(product), 0, &why) < 0)
		ret = api_reply_json(r, MHD_HTTP_OK, json_pack("{sb ss}", "accepted", 0, "reason", why));
	else
		ret = api_reply_json(r, MHD_HTTP_OK, json_pack("{sb ss ss}", "accepted", 1, "device", id, "product", product));
	free(der);
	return ret;
}
