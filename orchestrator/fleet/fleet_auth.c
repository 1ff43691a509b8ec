/*
 * fleet_auth.c - who a device is: registration (provisioning with the fleet
 * key) and the per-device credential every check-in, report and download
 * carries (docs/update-server.md, "Authentication").
 *
 * A credential is the first 128 bits, in hex, of
 * HMAC-SHA256(secret, "otacd-device-v1:" id ":" generation), where secret
 * is a server-only key (STATE/device.secret) and generation a per-device
 * counter kept in fleet.db.  The fleet key cannot compute it; only the
 * registration endpoint mints it, and registering an id again moves its
 * generation on, which revokes the old credential.  Checking one costs a
 * shard lookup and one HMAC: no table of tokens, nothing hashed per
 * device in memory beyond its generation.
 *
 * Registrations are rate-limited (a token bucket counted in devices, real
 * time) and audited: one row per accepted registration request in
 * fleet.db's `registrations` (count, first and last id, peer), not one per
 * device, so a factory provisioning a million devices writes a hundred rows.
 *
 * Devices with a client certificate (issue 13) are named by it:
 * fleet_auth_cert, below, asks the device CA (fleet_ca.c) which device a
 * certificate verified by the TLS handshake names.  Which of the two a
 * fleet accepts is config (device_auth: token | cert | both).
 *
 * The registry sits in the device shards (struct shard.rb), under the
 * shard's mutex; the writer thread (fleet_store.c) moves generations on.
 */
#include "fleet_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/core_names.h>

#include "../clock.h"
#include "fleet_ca.h"

const char fleet_trusted_caller[] = "(in-process caller)";

/* ---- the registry ------------------------------------------------------- */

struct reg *fleet_reg_find_locked(struct shard *s, const char *id, uint64_t h)
{
	if (!s->rnb)
		return NULL;
	for (struct reg *r = s->rb[h & (s->rnb - 1)]; r; r = r->next)
		if (r->hash == h && !strcmp(r->id, id))
			return r;
	return NULL;
}

void fleet_checkin_prefetch(struct fleet *f, const char *id, size_t len)
{
	uint64_t h = fleet_fnv(id, len, FLEET_FNV_BASIS);
	struct shard *s = fleet_shard(f, h);
	/* without the shard's lock (one lock round trip less per check-in):
	 * the table and its size are loaded atomically (fleet_reg_new_locked
	 * stores them so); when a resize races this they may not match, and
	 * the prefetch then names a line of a freed or a larger table, which
	 * a prefetch may (it never faults).  Only the registry's bucket: a
	 * device's check-ins after its first read its device through the
	 * registry entry (reg->dev), not the device table */
	struct reg **rb = __atomic_load_n(&s->rb, __ATOMIC_RELAXED);
	size_t rnb = __atomic_load_n(&s->rnb, __ATOMIC_RELAXED);
	if (rnb)
		__builtin_prefetch(&rb[h & (rnb - 1)]);
}

struct reg *fleet_reg_new_locked(struct fleet *f, struct shard *s, const char *id, uint64_t h)
{
	size_t len = strlen(id);
	struct reg *r = fleet_node_alloc(f, sizeof(*r) + len + 1);
	memcpy(r->id, id, len + 1);
	r->hash = h;
	if (s->rn + 1 > s->rnb) {
		size_t nb = s->rnb ? s->rnb * 2 : 64;
		struct reg **b = xcalloc(nb, sizeof(*b));
		for (size_t i = 0; i < s->rnb; i++) {
			struct reg *x = s->rb[i], *next;
			for (; x; x = next) {
				next = x->next;
				x->next = b[x->hash & (nb - 1)];
				b[x->hash & (nb - 1)] = x;
			}
		}
		free(s->rb);
		/* fleet_checkin_prefetch reads both without the lock */
		__atomic_store_n(&s->rb, b, __ATOMIC_RELAXED);
		__atomic_store_n(&s->rnb, nb, __ATOMIC_RELAXED);
	}
	r->next = s->rb[h & (s->rnb - 1)];
	s->rb[h & (s->rnb - 1)] = r;
	s->rn++;
	return r;
}

void fleet_reg_free_shard(struct shard *s)
{
	for (size_t i = 0; i < s->rnb; i++) {
		struct reg *r = s->rb[i], *next;
		for (; r; r = next) {
			next = r->next;
			OPENSSL_cleanse(r->cred, sizeof(r->cred)); /* the node itself: fleet_nodes_free */
		}
	}
	free(s->rb);
	__atomic_store_n(&s->rb, NULL, __ATOMIC_RELAXED);
	__atomic_store_n(&s->rnb, 0, __ATOMIC_RELAXED);
	s->rn = 0;
}

/* ---- credentials -------------------------------------------------------- */

/* A context keyed with the fleet's secret: one from the pool, else a new
 * one (HMAC-SHA256 fetched and keyed: the cost the pool saves per check). */
static EVP_MAC_CTX *mac_take(struct fleet *f)
{
	EVP_MAC_CTX *c = NULL;
	EVP_MAC *mac;
	OSSL_PARAM params[2];

	pthread_mutex_lock(&f->mac_mu);
	if (f->mac_n > 0)
		c = f->mac_pool[--f->mac_n];
	pthread_mutex_unlock(&f->mac_mu);
	if (c)
		return c;
	if (!(mac = EVP_MAC_fetch(NULL, "HMAC", NULL)))
		return NULL;
	c = EVP_MAC_CTX_new(mac);
	EVP_MAC_free(mac);
	params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0);
	params[1] = OSSL_PARAM_construct_end();
	if (c && !EVP_MAC_init(c, f->secret, sizeof(f->secret), params)) {
		EVP_MAC_CTX_free(c);
		c = NULL;
	}
	return c;
}

static void mac_give(struct fleet *f, EVP_MAC_CTX *c)
{
	pthread_mutex_lock(&f->mac_mu);
	if (f->mac_n < FLEET_MAC_POOL) {
		f->mac_pool[f->mac_n++] = c;
		c = NULL;
	}
	pthread_mutex_unlock(&f->mac_mu);
	EVP_MAC_CTX_free(c);
}

void fleet_auth_release(struct fleet *f)
{
	for (int i = 0; i < f->mac_n; i++)
		EVP_MAC_CTX_free(f->mac_pool[i]);
	f->mac_n = 0;
}

static int credential_raw(struct fleet *f, const char *id, uint32_t gen, unsigned char out[FLEET_CRED_BYTES])
{
	unsigned char mac[EVP_MAX_MD_SIZE];
	size_t maclen = 0;
	static const char prefix[] = "otacd-device-v1:";
	char msg[128], num[16];
	size_t idlen = strlen(id), nlen = 0, n;
	EVP_MAC_CTX *c;

	/* "otacd-device-v1:" id ":" gen, without printf (a check per request) */
	do
		num[sizeof(num) - 1 - nlen++] = (char)('0' + gen % 10);
	while ((gen /= 10) && nlen < sizeof(num));
	n = sizeof(prefix) - 1 + idlen + 1 + nlen;
	if (n >= sizeof(msg))
		return ota_error_set(OTA_EINVAL, "device id too long");
	memcpy(msg, prefix, sizeof(prefix) - 1);
	memcpy(msg + sizeof(prefix) - 1, id, idlen);
	msg[sizeof(prefix) - 1 + idlen] = ':';
	memcpy(msg + sizeof(prefix) + idlen, num + sizeof(num) - nlen, nlen);
	if (!(c = mac_take(f)))
		return ota_error_set(OTA_ERROR, "HMAC failed");
	/* init without a key: the context starts over with the key it holds */
	if (!EVP_MAC_init(c, NULL, 0, NULL) || !EVP_MAC_update(c, (const unsigned char *)msg, n) ||
	    !EVP_MAC_final(c, mac, &maclen, sizeof(mac)) || maclen < FLEET_CRED_BYTES) {
		EVP_MAC_CTX_free(c);
		return ota_error_set(OTA_ERROR, "HMAC failed");
	}
	mac_give(f, c);
	memcpy(out, mac, FLEET_CRED_BYTES);
	OPENSSL_cleanse(mac, sizeof(mac));
	return 0;
}

static int credential(struct fleet *f, const char *id, uint32_t gen, char out[2 * FLEET_CRED_BYTES + 1])
{
	unsigned char raw[FLEET_CRED_BYTES];
	int rc = credential_raw(f, id, gen, raw);
	if (rc == 0)
		ota_hex(out, raw, FLEET_CRED_BYTES);
	OPENSSL_cleanse(raw, sizeof(raw));
	return rc;
}

int fleet_device_auth(struct fleet *f, const char *device_id, const char *cred)
{
	struct reg *r;
	return fleet_device_auth_reg(f, device_id, cred, &r);
}

int fleet_device_auth_reg(struct fleet *f, const char *device_id, const char *cred, struct reg **out)
{
	char want[2 * FLEET_CRED_BYTES + 1];
	unsigned char raw[FLEET_CRED_BYTES];
	uint64_t h;
	struct shard *s;
	struct reg *r;
	uint32_t gen = 0;
	int rc = 0, known = 0;

	*out = NULL;
	if (f->auth_mode == FLEET_AUTH_CERT)
		return ota_error_set(OTA_EAUTH, "this fleet authenticates devices by certificate (device_auth: cert):"
						" connect with the device's client certificate");
	if (!f->has_secret || !cred || !device_id || !fleet_device_id_valid(device_id))
		return ota_error_set(OTA_EAUTH, "missing or wrong credential");
	if (f->fleet_key && strlen(cred) == f->fleet_key_len && CRYPTO_memcmp(cred, f->fleet_key, f->fleet_key_len) == 0)
		return ota_error_set(OTA_EAUTH, "the fleet key is for provisioning only (POST /device/v1/register); "
						"devices use their own credential");
	h = fleet_fnv(device_id, strlen(device_id), FLEET_FNV_BASIS);
	s = fleet_shard(f, h);
	pthread_mutex_lock(&s->mu);
	if ((r = fleet_reg_find_locked(s, device_id, h))) {
		gen = r->gen;
		/* computed at an earlier request of this generation */
		if ((known = r->has_cred && r->cred_gen == gen))
			memcpy(raw, r->cred, sizeof(raw));
		/* the check-in that follows reads its device, every cache line
		 * of it (tags, flags, id): misses in a large fleet, fetched
		 * while this finishes.  A device not cached yet is looked up in
		 * the device table: its bucket's slot is fetched instead (only
		 * fetched: loading the slot to fetch the device it names stalled
		 * every check-in on a miss, for a lookup reg->dev saves) */
		if (r->dev)
			for (size_t off = 0; off <= sizeof(struct device); off += 64)
				__builtin_prefetch((const char *)r->dev + off);
		else if (s->nb)
			__builtin_prefetch(&s->b[h & (s->nb - 1)]);
	}
	pthread_mutex_unlock(&s->mu);
	if (!r)
		return ota_error_set(OTA_EAUTH, "device '%s' is not registered", device_id);
	if (!known) {
		if ((rc = credential_raw(f, device_id, gen, raw)) < 0)
			return rc;
		/* kept for the next request, unless the writer moved the
		 * generation on meanwhile (a registration) */
		pthread_mutex_lock(&s->mu);
		if (r->gen == gen) {
			memcpy(r->cred, raw, sizeof(raw));
			r->cred_gen = gen;
			r->has_cred = 1;
		}
		pthread_mutex_unlock(&s->mu);
	}
	ota_hex(want, raw, FLEET_CRED_BYTES);
	if (strlen(cred) != 2 * FLEET_CRED_BYTES || CRYPTO_memcmp(cred, want, 2 * FLEET_CRED_BYTES) != 0)
		rc = ota_error_set(OTA_EAUTH, "missing or wrong credential");
	else
		*out = r;
	OPENSSL_cleanse(raw, sizeof(raw));
	OPENSSL_cleanse(want, sizeof(want));
	return rc;
}

int fleet_provision_auth(struct fleet *f, const char *token)
{
	if (!f->fleet_key || !token || strlen(token) != f->fleet_key_len ||
	    CRYPTO_memcmp(token, f->fleet_key, f->fleet_key_len) != 0)
		return ota_error_set(OTA_EAUTH, "missing or wrong fleet key");
	return 0;
}

/* ---- registration ------------------------------------------------------- */

int fleet_register_admit(struct fleet *f, size_t n, int64_t *retry_ms)
{
	int64_t now = clock_mono_ms();
	int rc = 0;

	*retry_ms = 0;
	pthread_mutex_lock(&f->reg_mu);
	f->reg_tokens += (double)(now - f->reg_at) / 1000.0 * f->reg_rate;
	if (f->reg_tokens > f->reg_burst)
		f->reg_tokens = f->reg_burst;
	f->reg_at = now;
	if ((double)n <= f->reg_tokens) {
		f->reg_tokens -= (double)n;
	} else {
		double missing = (double)n - f->reg_tokens;
		f->reg_refused += (int64_t)n;
		*retry_ms = (double)n > f->reg_burst || f->reg_rate <= 0 ? -1 : (int64_t)(missing / f->reg_rate * 1000.0) + 1;
		rc = ota_error_set(OTA_ECONFLICT,
				   (double)n > f->reg_burst ? "registration limit: %zu devices exceed the burst of %.0f"
							    : "registration limit: %zu devices, %.0f available now",
				   n, (double)n > f->reg_burst ? f->reg_burst : f->reg_tokens);
	}
	pthread_mutex_unlock(&f->reg_mu);
	return rc;
}

void fleet_reg_free(struct fleet_reg *reg)
{
	if (!reg)
		return;
	for (size_t i = 0; i < reg->n; i++)
		free(reg->ids[i]);
	free(reg->ids);
	free(reg->gens);
	free(reg);
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int reg_build(struct fleet *f, const char *const *ids, size_t n, const char *peer, struct fleet_reg **out)
{
	struct fleet_reg *reg;
	char **sorted = NULL;
	int rc = 0;

	*out = NULL;
	if (!f->has_secret)
		return ota_error_set(OTA_ERROR, "no device secret: devices cannot be registered");
	if (n == 0 || n > FLEET_MAX_REGISTER)
		return ota_error_set(OTA_EINVAL, "devices: 1..%d device ids per request (got %zu)", FLEET_MAX_REGISTER, n);
	reg = xcalloc(1, sizeof(*reg));
	reg->ids = xcalloc(n, sizeof(*reg->ids));
	reg->gens = xcalloc(n, sizeof(*reg->gens));
	for (size_t i = 0; i < n; i++) {
		if (!ids[i] || !fleet_device_id_valid(ids[i])) {
			rc = ota_error_set(OTA_EINVAL, "devices[%zu]: must be 1..64 characters [A-Za-z0-9._:-]", i);
			goto out;
		}
		reg->ids[reg->n++] = xstrdup(ids[i]);
	}
	sorted = xmalloc(n * sizeof(*sorted));
	memcpy(sorted, reg->ids, n * sizeof(*sorted));
	qsort(sorted, n, sizeof(*sorted), cmp_str);
	for (size_t i = 1; i < n; i++)
		if (!strcmp(sorted[i - 1], sorted[i])) {
			rc = ota_error_set(OTA_EINVAL, "devices: '%s' is listed twice", sorted[i]);
			goto out;
		}
	snprintf(reg->peer, sizeof(reg->peer), "%s", peer ? peer : "");
	reg->at = clock_now_ms();
	*out = reg;
	reg = NULL;
out:
	free(sorted);
	fleet_reg_free(reg);
	return rc;
}

int fleet_register_parse(struct fleet *f, const json_t *body, const char *peer, struct fleet_reg **out)
{
	json_t *arr = json_is_object(body) ? json_object_get(body, "devices") : NULL;
	const char **ids = NULL;
	size_t i;
	json_t *v;
	int rc;

	*out = NULL;
	if (!json_is_array(arr))
		return ota_error_set(OTA_EINVAL, "devices: must be a list of device ids");
	ids = xcalloc(json_array_size(arr) + 1, sizeof(*ids));
	json_array_foreach(arr, i, v) {
		if (!json_is_string(v)) {
			free(ids);
			return ota_error_set(OTA_EINVAL, "devices[%zu]: must be a string", i);
		}
		ids[i] = json_string_value(v);
	}
	rc = reg_build(f, ids, json_array_size(arr), peer, out);
	free(ids);
	return rc;
}

int fleet_register_async(struct fleet *f, const json_t *body, const char *peer, struct fleet_reg **out,
			 void (*done)(void *ctx, int rc), void *ctx)
{
	struct batch *b;
	int rc;

	if ((rc = fleet_register_parse(f, body, peer, out)) < 0)
		return rc;
	b = xcalloc(1, sizeof(*b));
	b->reg = *out;
	b->done = done;
	b->ctx = ctx;
	fleet_store_submit(f, b);
	return 0;
}

json_t *fleet_register_answer(struct fleet *f, const struct fleet_reg *reg)
{
	json_t *creds = json_array();
	for (size_t i = 0; i < reg->n; i++) {
		char c[2 * FLEET_CRED_BYTES + 1];
		if (credential(f, reg->ids[i], reg->gens[i], c) < 0)
			c[0] = 0;
		json_array_append_new(creds, json_string(c));
		OPENSSL_cleanse(c, sizeof(c));
	}
	return json_pack("{sI so}", "registered", (json_int_t)reg->n, "credentials", creds);
}

struct reg_wait {
	pthread_mutex_t mu;
	pthread_cond_t cond;
	int done, rc;
};

static void reg_wait_done(void *ctx, int rc)
{
	struct reg_wait *w = ctx;
	pthread_mutex_lock(&w->mu);
	w->done = 1;
	w->rc = rc;
	pthread_cond_signal(&w->cond);
	pthread_mutex_unlock(&w->mu);
}

int fleet_register(struct fleet *f, const char *const *ids, size_t n, const char *peer, char (*creds)[33])
{
	struct reg_wait w = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0 };
	struct fleet_reg *reg = NULL;
	struct batch *b;
	int rc;

	if ((rc = reg_build(f, ids, n, peer, &reg)) < 0)
		return rc;
	b = xcalloc(1, sizeof(*b));
	b->reg = reg;
	b->done = reg_wait_done;
	b->ctx = &w;
	fleet_store_submit(f, b);
	pthread_mutex_lock(&w.mu);
	while (!w.done)
		pthread_cond_wait(&w.cond, &w.mu);
	pthread_mutex_unlock(&w.mu);
	rc = w.rc;
	for (size_t i = 0; rc == 0 && creds && i < n; i++)
		rc = credential(f, reg->ids[i], reg->gens[i], creds[i]);
	fleet_reg_free(reg);
	pthread_mutex_destroy(&w.mu);
	pthread_cond_destroy(&w.cond);
	return rc;
}

/* ---- device certificates (issue 13) --------------------------------------- */

void fleet_set_ca(struct fleet *f, struct fleet_ca *ca, int auth_mode)
{
	f->ca = ca;
	f->auth_mode = auth_mode;
}

struct fleet_ca *fleet_get_ca(struct fleet *f)
{
	return f->ca;
}

int fleet_get_auth_mode(const struct fleet *f)
{
	return f->auth_mode;
}

int fleet_device_registered(struct fleet *f, const char *id)
{
	uint64_t h;
	struct shard *s;
	int yes;
	if (!id || !fleet_device_id_valid(id))
		return 0;
	h = fleet_fnv(id, strlen(id), FLEET_FNV_BASIS);
	s = fleet_shard(f, h);
	pthread_mutex_lock(&s->mu);
	yes = fleet_reg_find_locked(s, id, h) != NULL;
	pthread_mutex_unlock(&s->mu);
	return yes;
}

/*
 * The certificate path of device authentication.  devapi.c calls it on
 * every device request with the verified client certificate
 * (tls_peer_cert_der, cert_identify) and refuses a request naming another
 * device itself (403); without a certificate, fleet_device_auth.
 */
int fleet_auth_cert(struct fleet *f, const unsigned char *der, size_t len, const char *claimed,
		    const char *claimed_product, char *id_out, size_t idlen)
{
	char product[129];
	return fleet_auth_cert_ex(f, der, len, claimed, claimed_product, id_out, idlen, product, sizeof(product));
}

int fleet_auth_cert_ex(struct fleet *f, const unsigned char *der, size_t len, const char *claimed,
		       const char *claimed_product, char *id_out, size_t idlen, char *product, size_t plen)
{
	const char *why = NULL;
	int rc;

	if (idlen)
		id_out[0] = 0;
	if (plen)
		product[0] = 0;
	if (f->auth_mode == FLEET_AUTH_TOKEN)
		return ota_error_set(OTA_EAUTH, "this fleet authenticates devices by token (device_auth: token)");
	if ((rc = fleet_ca_identify_ex(f->ca, der, len, id_out, idlen, product, plen, 1, &why)) < 0)
		return rc;
	if (claimed && strcmp(claimed, id_out)) {
		rc = ota_error_set(OTA_EAUTH, "the client certificate is device '%s''s, not '%s''s", id_out, claimed);
		id_out[0] = 0;
		return rc;
	}
	if (product[0] && claimed_product && strcmp(claimed_product, product)) {
		rc = ota_error_set(OTA_EAUTH, "device '%s''s certificate is for product '%s'", id_out, product);
		id_out[0] = 0;
		return rc;
	}
	return 0;
}
