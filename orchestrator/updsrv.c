/*
 * updsrv.c - the two update-server adapters.
 *
 * builtin: hands exposures to the fleet module (fleet.h) and reads its
 * aggregates; no I/O.  http: PUTs the same desired state to an external
 * server's control API (docs/update-server.md, "Control API") with the
 * rollout sequence as Idempotency-Key, and GETs its metrics.
 */
#include "updsrv.h"

#include <pthread.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/httpc.h"
#include "../common/util.h"

/* ---- the current adapter (issue 15) ----------------------------------- */

static pthread_mutex_t current_mu = PTHREAD_MUTEX_INITIALIZER;
static struct updsrv *current;

void updsrv_set_current(struct updsrv *u)
{
	pthread_mutex_lock(&current_mu);
	current = u;
	pthread_mutex_unlock(&current_mu);
}

json_t *updsrv_current_versions(const char *product, const char *hardware)
{
	json_t *v = NULL;
	pthread_mutex_lock(&current_mu);
	if (current && current->versions)
		v = current->versions(current, product, hardware);
	pthread_mutex_unlock(&current_mu);
	return v;
}

/* ---- builtin ------------------------------------------------------------- */

struct builtin {
	struct updsrv base;
	struct fleet *f; /* NULL on a follower until it leads (updsrv_builtin_attach) */
};

static struct fleet *fleet_of(struct updsrv *u)
{
	return __atomic_load_n(&((struct builtin *)u)->f, __ATOMIC_ACQUIRE);
}

static int builtin_apply(struct updsrv *u, const json_t *x)
{
	struct fleet *f = fleet_of(u);
	struct fleet_exposure fx = { 0 };
	const json_t *imgs = json_object_get(x, "images"), *segs = json_object_get(x, "segments"), *v;
	struct fleet_image *img = xcalloc(json_array_size(imgs) + 1, sizeof(*img));
	struct fleet_segment *seg = xcalloc(json_array_size(segs) + 1, sizeof(*seg));
	const json_t *dls = json_object_get(x, "deltas");
	struct fleet_delta *dl;
	size_t i, n = 0;
	int rc;

	if (!f)
		return ota_error_set(OTA_ERROR, "the fleet is open on the leader only");
	dl = xcalloc(json_array_size(dls) + 1, sizeof(*dl));

	json_array_foreach(imgs, i, v) {
		/* one image per hardware variant: the application (other types
		 * ride along in the manifest) */
		const char *type = json_string_value(json_object_get(v, "type"));
		if (!json_string_value(json_object_get(v, "hardware")) || (type && strcmp(type, "application") != 0))
			continue;
		img[n].hardware = json_string_value(json_object_get(v, "hardware"));
		img[n].sha256 = json_string_value(json_object_get(v, "sha256"));
		img[n].type = type;
		img[n].size = json_integer_value(json_object_get(v, "size"));
		n++;
	}
	json_array_foreach(segs, i, v) {
		const json_t *c = json_object_get(v, "cohort");
		seg[i].cohort = json_is_object(c) ? c : NULL;
		seg[i].basis_points = (int)json_integer_value(json_object_get(v, "bp"));
		seg[i].gen = (uint32_t)json_integer_value(json_object_get(v, "gen"));
	}
	fx.release_id = json_integer_value(json_object_get(x, "release"));
	fx.product = json_string_value(json_object_get(x, "product"));
	fx.version = json_string_value(json_object_get(x, "version"));
	fx.security_counter = json_integer_value(json_object_get(x, "security_counter"));
	fx.min_bootloader = json_string_value(json_object_get(x, "min_bootloader"));
	fx.images = img;
	fx.nimages = n;
	fx.active = json_is_true(json_object_get(x, "active"));
	fx.salt = json_string_value(json_object_get(x, "salt"));
	fx.basis_points = 0;
	fx.cohort = NULL;
	fx.rollback_to = json_integer_value(json_object_get(x, "rollback_to"));
	fx.segments = seg;
	fx.nsegments = json_array_size(segs);
	json_array_foreach(dls, i, v) {
		dl[i].hardware = json_string_value(json_object_get(v, "hardware"));
		dl[i].to_sha256 = json_string_value(json_object_get(v, "to_sha256"));
		dl[i].from_version = json_string_value(json_object_get(v, "from_version"));
		dl[i].sha256 = json_string_value(json_object_get(v, "sha256"));
		dl[i].base = json_string_value(json_object_get(v, "base"));
		dl[i].size = json_integer_value(json_object_get(v, "size"));
	}
	fx.deltas = dl;
	fx.ndeltas = json_array_size(dls);
	rc = fleet_set_exposure(f, &fx);
	free(dl);
	free(img);
	free(seg);
	return rc;
}

static int builtin_metrics(struct updsrv *u, const char *product, const char *version, const char *cohort,
			   const char *previous, struct fleet_agg *canary, struct fleet_agg *baseline)
{
	struct fleet *f = fleet_of(u);
	int rc;

	if (!f)
		return ota_error_set(OTA_ENOTFOUND, "the fleet is open on the leader only");
	rc = fleet_aggregate(f, product, version, cohort, canary);
	if (rc >= 0 && baseline)
		rc = fleet_baseline(f, product, version, previous, cohort, baseline);
	return rc;
}

static void builtin_lag(struct updsrv *u, struct fleet_lag *out)
{
	struct fleet *f = fleet_of(u);
	if (f)
		fleet_lag(f, out);
	else
		memset(out, 0, sizeof(*out));
}

static json_t *builtin_versions(struct updsrv *u, const char *product, const char *hardware)
{
	struct fleet *f = fleet_of(u);
	if (!f)
		return json_array();
	return hardware ? fleet_versions_of_hardware(f, product, hardware) : fleet_versions(f, product);
}

static void builtin_loaded(struct updsrv *u)
{
	struct fleet *f = fleet_of(u);
	if (f)
		fleet_hold_offers(f, 0);
}

static void builtin_free(struct updsrv *u)
{
	free(u);
}

int updsrv_builtin(struct updsrv **out, struct fleet *f)
{
	struct builtin *b = xcalloc(1, sizeof(*b));
	b->base.name = "builtin";
	b->base.apply = builtin_apply;
	b->base.metrics = builtin_metrics;
	b->base.lag = builtin_lag;
	b->base.versions = builtin_versions;
	b->base.free = builtin_free;
	b->base.on_loaded = builtin_loaded;
	b->f = f;
	*out = &b->base;
	return 0;
}

void updsrv_builtin_attach(struct updsrv *u, struct fleet *f)
{
	__atomic_store_n(&((struct builtin *)u)->f, f, __ATOMIC_RELEASE);
}

void updsrv_mark_loaded(struct updsrv *u)
{
	if (!u || __atomic_exchange_n(&u->loaded, 1, __ATOMIC_ACQ_REL))
		return;
	if (u->on_loaded)
		u->on_loaded(u);
}

int updsrv_loaded(const struct updsrv *u)
{
	return !u || __atomic_load_n(&u->loaded, __ATOMIC_ACQUIRE);
}

/* ---- http ---------------------------------------------------------------- */

struct remote {
	struct updsrv base;
	char *url, *token;
};

static int remote_put(struct remote *r, const char *path, const json_t *body, const char *idem)
{
	char *url = xasprintf("%s%s", r->url, path);
	char *hdr = xasprintf("Idempotency-Key: %s", idem);
	const char *headers[] = { hdr, NULL };
	json_t *answer = NULL;
	long status = 0;
	int rc = httpc_json_ex(&answer, &status, "PUT", url, r->token, body, 10000, headers);
	if (rc == 0 && (status < 200 || status > 299))
		rc = ota_error_set(OTA_ERROR, "PUT %s: HTTP %ld %s", path, status,
				   json_string_value(json_object_get(answer, "error")) ? json_string_value(json_object_get(answer, "error")) : "");
	json_decref(answer);
	free(hdr);
	free(url);
	return rc;
}

static int remote_apply(struct updsrv *u, const json_t *x)
{
	struct remote *r = (struct remote *)u;
	int64_t id = json_integer_value(json_object_get(x, "release"));
	char path[96], idem[64];
	json_t *pub = json_pack("{sO sO sO sO sO}", "product", json_object_get(x, "product"), "version",
				json_object_get(x, "version"), "security_counter", json_object_get(x, "security_counter"),
				"min_bootloader", json_object_get(x, "min_bootloader"), "images", json_object_get(x, "images"));
	json_t *exp = json_pack("{ss sO sO sO}", "state", json_is_true(json_object_get(x, "active")) ? "active" : "halted",
				"salt", json_object_get(x, "salt"), "segments", json_object_get(x, "segments"),
				"rollback_to", json_object_get(x, "rollback_to"));
	int rc;

	snprintf(path, sizeof(path), "/control/v1/releases/%" PRId64, id);
	snprintf(idem, sizeof(idem), "%" PRId64 "-%" PRId64 "-publish", id, (int64_t)json_integer_value(json_object_get(x, "seq")));
	rc = remote_put(r, path, pub, idem);
	if (rc == 0) {
		snprintf(path, sizeof(path), "/control/v1/releases/%" PRId64 "/exposure", id);
		snprintf(idem, sizeof(idem), "%" PRId64 "-%" PRId64, id, (int64_t)json_integer_value(json_object_get(x, "seq")));
		rc = remote_put(r, path, exp, idem);
	}
	json_decref(pub);
	json_decref(exp);
	return rc;
}

static void agg_from_json(const json_t *j, struct fleet_agg *a)
{
	memset(a, 0, sizeof(*a));
	a->devices = json_integer_value(json_object_get(j, "devices"));
	a->offered = json_integer_value(json_object_get(j, "offered"));
	a->downloads = json_integer_value(json_object_get(j, "downloads"));
	a->installs = json_integer_value(json_object_get(j, "installs"));
	a->boot_ok = json_integer_value(json_object_get(j, "boot_ok"));
	a->boot_fail = json_integer_value(json_object_get(j, "boot_fail"));
	a->reverts = json_integer_value(json_object_get(j, "reverts"));
	a->reporting = json_integer_value(json_object_get(j, "reporting"));
	a->crashed = json_integer_value(json_object_get(j, "crashed"));
	a->crashes = json_integer_value(json_object_get(j, "crashes"));
	a->device_hours = json_number_value(json_object_get(j, "device_hours"));
	a->battery_mah = json_number_value(json_object_get(j, "battery_mah"));
}

static int remote_metrics(struct updsrv *u, const char *product, const char *version, const char *cohort,
			  const char *previous, struct fleet_agg *canary, struct fleet_agg *baseline)
{
	struct remote *r = (struct remote *)u;
	/* httpc_escape: what curl_easy_escape did here, without libcurl in otacd */
	char *p = httpc_escape(product ? product : ""), *v = httpc_escape(version ? version : "");
	char *c = httpc_escape(cohort ? cohort : ""), *b = httpc_escape(previous ? previous : "");
	char *url = xasprintf("%s/control/v1/metrics?product=%s&version=%s&cohort=%s%s%s", r->url, p, v, c,
			      previous ? "&baseline_version=" : "", previous ? b : "");
	json_t *answer = NULL;
	long status = 0;
	int rc = httpc_json(&answer, &status, "GET", url, r->token, NULL, 10000);

	if (rc == 0 && status != 200)
		rc = ota_error_set(OTA_ERROR, "update server metrics: HTTP %ld", status);
	if (rc == 0) {
		agg_from_json(json_object_get(answer, "canary"), canary);
		if (baseline)
			agg_from_json(json_object_get(answer, "baseline"), baseline);
	}
	json_decref(answer);
	free(url);
	free(p);
	free(v);
	free(c);
	free(b);
	return rc;
}

static json_t *remote_versions(struct updsrv *u, const char *product, const char *hardware)
{
	(void)u;
	(void)product;
	(void)hardware;
	return NULL;
}

static void remote_free(struct updsrv *u)
{
	struct remote *r = (struct remote *)u;
	free(r->url);
	free(r->token);
	free(r);
}

int updsrv_http(struct updsrv **out, const char *base_url, const char *token)
{
	struct remote *r = xcalloc(1, sizeof(*r));
	size_t n = strlen(base_url);
	while (n && base_url[n - 1] == '/')
		n--;
	r->base.name = "http";
	r->base.apply = remote_apply;
	r->base.metrics = remote_metrics;
	r->base.versions = remote_versions;
	r->base.free = remote_free;
	r->url = xstrndup(base_url, n);
	r->token = token ? xstrdup(token) : NULL;
	*out = &r->base;
	return 0;
}
