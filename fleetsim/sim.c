/*
 * sim.c - the device model of otacd-fleetsim (see sim.h).
 *
 * Why a separate file: the simulator's decisions (who is a crasher, which
 * offers a device refuses, how a cut download resumes, which images verify)
 * are the parts worth testing without a server, so they live here with no
 * curl and no event loop; fleetsim/run.c drives them over HTTP.
 *
 * Determinism: device attributes and the crasher set are pure functions of
 * (seed, device index[, version]) through splitmix64, so two runs with the
 * same seed simulate the same fleet.  Per-event randomness (boot outcomes,
 * crash counts, cut points) comes from an explicit splitmix64 stream.
 */
#include "sim.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../orchestrator/mcuboot.h"
#include "../orchestrator/mcuboot_enc.h"

/* ---- hashing and random numbers ---------------------------------------- */

uint64_t sim_mix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

uint64_t sim_fnv1a64(const char *s)
{
	uint64_t h = 0xcbf29ce484222325ull;

	for (; *s; s++) {
		h ^= (unsigned char)*s;
		h *= 0x100000001b3ull;
	}
	return h;
}

uint64_t sim_hash(uint64_t seed, uint32_t dev, uint64_t salt)
{
	return sim_mix64(sim_mix64(seed ^ sim_mix64(salt)) ^ dev);
}

double sim_unit(uint64_t h)
{
	return (double)(h >> 11) * (1.0 / 9007199254740992.0);
}

uint64_t sim_rand(uint64_t *state)
{
	*state += 0x9e3779b97f4a7c15ull;
	return sim_mix64(*state);
}

double sim_randu(uint64_t *state)
{
	return sim_unit(sim_rand(state));
}

unsigned sim_poisson(uint64_t *state, double lambda)
{
	if (lambda <= 0)
		return 0;
	if (lambda > 30) {
		/* normal approximation (Box-Muller) */
		double u1 = sim_randu(state), u2 = sim_randu(state);
		double z = sqrt(-2.0 * log(u1 > 0 ? u1 : 1e-300)) * cos(2 * M_PI * u2);
		double x = lambda + z * sqrt(lambda) + 0.5;
		return x < 0 ? 0 : (unsigned)x;
	}
	double l = exp(-lambda), p = 1.0;
	unsigned k = 0;
	do {
		k++;
		p *= sim_randu(state);
	} while (p > l);
	return k - 1;
}

void sim_device_id(char *out, size_t n, uint32_t index)
{
	snprintf(out, n, "dev-%06u", index);
}

int sim_version_cmp(const char *a, const char *b)
{
	for (int i = 0; i < 4; i++) {
		unsigned long x = strtoul(a, (char **)&a, 10), y = strtoul(b, (char **)&b, 10);

		if (x != y)
			return x < y ? -1 : 1;
		while (*a && *a != '.')
			a++;
		while (*b && *b != '.')
			b++;
		if (*a == '.')
			a++;
		if (*b == '.')
			b++;
	}
	return 0;
}

/* ---- profile ----------------------------------------------------------- */

static const char *const rate_keys[] = { "crash_rate", "boot_fail_rate", "revert_rate",
					 "battery_mah_per_day", "hardware" };
static const char *const top_keys[] = { "default", "versions", "silent", "flaky", "flaky_fail",
					"hardware", "bootloader", "tags", "crashes_per_hour" };

static const char *default_profile =
	"{\"default\": {\"crash_rate\": 0.002, \"boot_fail_rate\": 0.001, \"revert_rate\": 0.0,"
	"  \"battery_mah_per_day\": 30},"
	" \"silent\": 0.01, \"flaky\": 0.05, \"flaky_fail\": 0.3,"
	" \"hardware\": {\"mps2-an385\": 0.5, \"mps2-an386\": 0.5},"
	" \"bootloader\": {\"1.2.0\": 0.95, \"1.0.0\": 0.05},"
	" \"tags\": {\"region\": {\"eu\": 1, \"us\": 1, \"apac\": 1},"
	"          \"tier\": {\"standard\": 0.9, \"beta\": 0.1},"
	"          \"group\": {\"staging\": 0.02, \"production\": 0.98}}}";

static int unknown_key(const char *name, const char *where, const char *key,
		       const char *const *keys, size_t n)
{
	const char *hint = ota_did_you_mean(key, keys, n);

	return ota_error_set(OTA_EINVAL, "%s: %s%sunknown key '%s'%s%s%s", name, where,
			     *where ? ": " : "", key, hint ? " (did you mean '" : "",
			     hint ? hint : "", hint ? "'?)" : "");
}

static int check_fraction(const char *name, const char *where, json_t *v, double max, double *out)
{
	if (!json_is_number(v) || json_number_value(v) < 0 || json_number_value(v) > max) {
		if (max > 1)
			return ota_error_set(OTA_EINVAL, "%s: %s: must be a number >= 0", name, where);
		return ota_error_set(OTA_EINVAL, "%s: %s: must be a number in [0, %g]", name, where, max);
	}
	if (out)
		*out = json_number_value(v);
	return 0;
}

/* A rates object: known keys, values in range; nested `hardware` when allowed. */
static int check_rates(const char *name, const char *where, json_t *o, int allow_hw)
{
	const char *key;
	json_t *v;
	int rc = 0;
	char *path = NULL;

	if (!json_is_object(o))
		return ota_error_set(OTA_EINVAL, "%s: %s: must be an object", name, where);
	json_object_foreach(o, key, v) {
		free(path);
		path = xasprintf("%s.%s", where, key);
		if (!strcmp(key, "hardware") && allow_hw) {
			const char *hw;
			json_t *r;

			if (!json_is_object(v)) {
				rc = ota_error_set(OTA_EINVAL, "%s: %s: must be an object", name, path);
				goto out;
			}
			json_object_foreach(v, hw, r) {
				char *sub = xasprintf("%s.%s", path, hw);

				rc = check_rates(name, sub, r, 0);
				free(sub);
				if (rc)
					goto out;
			}
		} else if (!strcmp(key, "battery_mah_per_day")) {
			if ((rc = check_fraction(name, path, v, 1e12, NULL)))
				goto out;
		} else if (!strcmp(key, "crash_rate") || !strcmp(key, "boot_fail_rate") ||
			   !strcmp(key, "revert_rate")) {
			if ((rc = check_fraction(name, path, v, 1, NULL)))
				goto out;
		} else {
			rc = unknown_key(name, where, key, rate_keys,
					 OTA_ARRAY_SIZE(rate_keys) - (allow_hw ? 0 : 1));
			goto out;
		}
	}
out:
	free(path);
	return rc;
}

static void dist_release(struct sim_dist *d)
{
	for (size_t i = 0; i < d->n; i++)
		free(d->names[i]);
	d->n = 0;
}

static int parse_dist(const char *name, const char *where, json_t *o, int versions,
		      struct sim_dist *out)
{
	const char *key;
	json_t *v;
	double sum = 0;
	int rc = 0;

	dist_release(out);
	if (!json_is_object(o) || json_object_size(o) == 0)
		return ota_error_set(OTA_EINVAL, "%s: %s: must be a non-empty object of weights",
				     name, where);
	if (json_object_size(o) > SIM_MAX_CHOICES)
		return ota_error_set(OTA_EINVAL, "%s: %s: at most %d values", name, where,
				     SIM_MAX_CHOICES);
	json_object_foreach(o, key, v) {
		if (!json_is_number(v) || json_number_value(v) < 0) {
			rc = ota_error_set(OTA_EINVAL, "%s: %s.%s: must be a weight >= 0", name,
					   where, key);
			goto out;
		}
		if (!*key || strlen(key) > 64) {
			rc = ota_error_set(OTA_EINVAL, "%s: %s: values must be 1..64 characters",
					   name, where);
			goto out;
		}
		if (versions) {
			unsigned a, b, c;
			char end;

			if (sscanf(key, "%u.%u.%u%c", &a, &b, &c, &end) != 3) {
				rc = ota_error_set(OTA_EINVAL, "%s: %s.%s: must be a version X.Y.Z",
						   name, where, key);
				goto out;
			}
		}
		sum += json_number_value(v);
		out->names[out->n] = xstrdup(key);
		out->cum[out->n] = sum;
		out->n++;
	}
	if (sum <= 0) {
		rc = ota_error_set(OTA_EINVAL, "%s: %s: weights must not all be 0", name, where);
		goto out;
	}
	for (size_t i = 0; i < out->n; i++)
		out->cum[i] /= sum;
	out->cum[out->n - 1] = 1.0;
out:
	if (rc)
		dist_release(out);
	return rc;
}

void sim_profile_release(struct sim_profile *p)
{
	json_decref(p->doc);
	dist_release(&p->hardware);
	dist_release(&p->bootloader);
	for (size_t i = 0; i < p->ntags; i++) {
		free(p->tag_keys[i]);
		dist_release(&p->tags[i]);
	}
	memset(p, 0, sizeof(*p));
}

/* Overlay src's keys onto dst (dst owns a copy), for merging defaults. */
static void merge_defaults(json_t *dst, json_t *defaults)
{
	const char *key;
	json_t *v;

	json_object_foreach(defaults, key, v) {
		if (!json_object_get(dst, key))
			json_object_set(dst, key, v);
	}
	/* the default rates are filled in field by field */
	json_t *d = json_object_get(dst, "default"), *dd = json_object_get(defaults, "default");
	if (json_is_object(d) && d != dd) {
		json_object_foreach(dd, key, v) {
			if (!json_object_get(d, key))
				json_object_set(d, key, v);
		}
	}
}

int sim_profile_parse(struct sim_profile *out, const char *text, size_t len, const char *name)
{
	json_t *doc = NULL, *defaults = NULL, *v;
	json_error_t jerr;
	const char *key;
	int rc = 0;

	memset(out, 0, sizeof(*out));
	defaults = json_loads(default_profile, 0, &jerr);
	if (!defaults) {
		rc = ota_error_set(OTA_ERROR, "built-in profile: %s", jerr.text);
		goto out;
	}
	if (!text) {
		doc = json_deep_copy(defaults);
	} else {
		doc = json_loadb(text, len, 0, &jerr);
		if (!doc) {
			rc = ota_error_set(OTA_EINVAL, "%s:%d:%d: %s", name, jerr.line, jerr.column,
					   jerr.text);
			goto out;
		}
		if (!json_is_object(doc)) {
			rc = ota_error_set(OTA_EINVAL, "%s: the profile must be a JSON object", name);
			goto out;
		}
	}
	json_object_foreach(doc, key, v) {
		size_t i;

		for (i = 0; i < OTA_ARRAY_SIZE(top_keys); i++)
			if (!strcmp(key, top_keys[i]))
				break;
		if (i == OTA_ARRAY_SIZE(top_keys)) {
			rc = unknown_key(name, "", key, top_keys, OTA_ARRAY_SIZE(top_keys));
			goto out;
		}
	}
	if ((v = json_object_get(doc, "default")) && (rc = check_rates(name, "default", v, 1)))
		goto out;
	if ((v = json_object_get(doc, "versions"))) {
		json_t *r;

		if (!json_is_object(v)) {
			rc = ota_error_set(OTA_EINVAL, "%s: versions: must be an object", name);
			goto out;
		}
		json_object_foreach(v, key, r) {
			char *where = xasprintf("versions.%s", key);

			rc = check_rates(name, where, r, 1);
			free(where);
			if (rc)
				goto out;
		}
	}
	merge_defaults(doc, defaults);
	if ((rc = check_fraction(name, "silent", json_object_get(doc, "silent"), 1, &out->silent)) ||
	    (rc = check_fraction(name, "flaky", json_object_get(doc, "flaky"), 1, &out->flaky)) ||
	    (rc = check_fraction(name, "flaky_fail", json_object_get(doc, "flaky_fail"), 1,
				 &out->flaky_fail)))
		goto out;
	/* issue 17: a background rate every device crashes at, so a test can
	 * compare two halves of one fleet (a flag's on and off devices) with
	 * no crasher set drawn into one of them; at most otacd's credit of
	 * 0.25 crashes per device-hour (docs/update-server.md, "Bounds") */
	if ((v = json_object_get(doc, "crashes_per_hour")) &&
	    (rc = check_fraction(name, "crashes_per_hour", v, 0.25, &out->crashes_per_hour)))
		goto out;
	if ((rc = parse_dist(name, "hardware", json_object_get(doc, "hardware"), 0,
			     &out->hardware)) ||
	    (rc = parse_dist(name, "bootloader", json_object_get(doc, "bootloader"), 1,
			     &out->bootloader)))
		goto out;
	v = json_object_get(doc, "tags");
	if (!json_is_object(v)) {
		rc = ota_error_set(OTA_EINVAL, "%s: tags: must be an object", name);
		goto out;
	}
	if (json_object_size(v) > SIM_MAX_TAGS) {
		rc = ota_error_set(OTA_EINVAL, "%s: tags: at most %d tag keys", name, SIM_MAX_TAGS);
		goto out;
	}
	{
		json_t *d;

		json_object_foreach(v, key, d) {
			char *where = xasprintf("tags.%s", key);

			rc = parse_dist(name, where, d, 0, &out->tags[out->ntags]);
			free(where);
			if (rc)
				goto out;
			out->tag_keys[out->ntags++] = xstrdup(key);
		}
	}
	out->doc = doc;
	doc = NULL;
out:
	json_decref(doc);
	json_decref(defaults);
	if (rc)
		sim_profile_release(out);
	return rc;
}

static void overlay_rates(struct sim_rates *r, json_t *o)
{
	json_t *v;

	if (!json_is_object(o))
		return;
	if ((v = json_object_get(o, "crash_rate")))
		r->crash_rate = json_number_value(v);
	if ((v = json_object_get(o, "boot_fail_rate")))
		r->boot_fail_rate = json_number_value(v);
	if ((v = json_object_get(o, "revert_rate")))
		r->revert_rate = json_number_value(v);
	if ((v = json_object_get(o, "battery_mah_per_day")))
		r->battery_mah_per_day = json_number_value(v);
}

void sim_profile_rates(const struct sim_profile *p, const char *version, const char *hw,
		       struct sim_rates *out)
{
	json_t *def = json_object_get(p->doc, "default");
	json_t *ver = json_object_get(json_object_get(p->doc, "versions"), version);

	memset(out, 0, sizeof(*out));
	overlay_rates(out, def);
	overlay_rates(out, json_object_get(json_object_get(def, "hardware"), hw));
	overlay_rates(out, ver);
	overlay_rates(out, json_object_get(json_object_get(ver, "hardware"), hw));
}

unsigned sim_dist_pick(const struct sim_dist *d, double u)
{
	for (size_t i = 0; i < d->n; i++)
		if (u < d->cum[i])
			return (unsigned)i;
	return d->n ? (unsigned)d->n - 1 : 0;
}

/* ---- devices ------------------------------------------------------------ */

enum { SALT_HW = 1, SALT_BL, SALT_SILENT, SALT_FLAKY, SALT_RSSI, SALT_TAG0 = 16 };

void sim_device_init(struct sim_device *d, const struct sim_profile *p, uint64_t seed,
		     uint32_t index)
{
	memset(d, 0, sizeof(*d));
	d->hw = (uint8_t)sim_dist_pick(&p->hardware, sim_unit(sim_hash(seed, index, SALT_HW)));
	d->bl = (uint8_t)sim_dist_pick(&p->bootloader, sim_unit(sim_hash(seed, index, SALT_BL)));
	for (size_t i = 0; i < p->ntags; i++)
		d->tags[i] = (uint8_t)sim_dist_pick(&p->tags[i],
						    sim_unit(sim_hash(seed, index, SALT_TAG0 + i)));
	if (sim_unit(sim_hash(seed, index, SALT_SILENT)) < p->silent)
		d->flags |= SIM_F_SILENT;
	if (sim_unit(sim_hash(seed, index, SALT_FLAKY)) < p->flaky)
		d->flags |= SIM_F_FLAKY;
	d->rssi_base = (uint8_t)(15 + sim_hash(seed, index, SALT_RSSI) % 41);   /* -55..-95 dBm */
}

int sim_is_crasher(uint64_t seed, uint32_t index, const char *version, double crash_rate)
{
	return sim_unit(sim_hash(seed, index, sim_fnv1a64(version))) < crash_rate;
}

/* ---- version table ------------------------------------------------------ */

int sim_version_intern(struct sim_versions *t, const char *s)
{
	for (size_t i = 0; i < t->n; i++)
		if (!strcmp(t->names[i], s))
			return (int)i;
	if (t->n >= 65535)
		return ota_error_set(OTA_ETOOBIG, "more than 65535 distinct versions");
	if (t->n == t->cap) {
		t->cap = t->cap ? t->cap * 2 : 16;
		t->names = xrealloc(t->names, t->cap * sizeof(*t->names));
	}
	t->names[t->n] = xstrdup(s);
	return (int)t->n++;
}

void sim_versions_release(struct sim_versions *t)
{
	for (size_t i = 0; i < t->n; i++)
		free(t->names[i]);
	free(t->names);
	memset(t, 0, sizeof(*t));
}

/* ---- event heap --------------------------------------------------------- */

static int ev_less(const struct sim_event *a, const struct sim_event *b)
{
	if (a->at != b->at)
		return a->at < b->at;
	if (a->dev != b->dev)
		return a->dev < b->dev;
	return a->kind < b->kind;
}

void sim_heap_push(struct sim_heap *h, int64_t at, uint32_t dev, uint8_t kind)
{
	size_t i;

	if (h->n == h->cap) {
		h->cap = h->cap ? h->cap * 2 : 1024;
		h->v = xrealloc(h->v, h->cap * sizeof(*h->v));
	}
	i = h->n++;
	h->v[i] = (struct sim_event){ at, dev, kind };
	while (i > 0) {
		size_t parent = (i - 1) / 2;

		if (!ev_less(&h->v[i], &h->v[parent]))
			break;
		struct sim_event t = h->v[i];
		h->v[i] = h->v[parent];
		h->v[parent] = t;
		i = parent;
	}
}

int sim_heap_pop(struct sim_heap *h, struct sim_event *out)
{
	size_t i = 0;

	if (!h->n)
		return 0;
	*out = h->v[0];
	h->v[0] = h->v[--h->n];
	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, m = i;

		if (l < h->n && ev_less(&h->v[l], &h->v[m]))
			m = l;
		if (r < h->n && ev_less(&h->v[r], &h->v[m]))
			m = r;
		if (m == i)
			break;
		struct sim_event t = h->v[i];
		h->v[i] = h->v[m];
		h->v[m] = t;
		i = m;
	}
	return 1;
}

const struct sim_event *sim_heap_peek(const struct sim_heap *h)
{
	return h->n ? &h->v[0] : NULL;
}

void sim_heap_release(struct sim_heap *h)
{
	free(h->v);
	memset(h, 0, sizeof(*h));
}

/* ---- images ------------------------------------------------------------- */

void sim_imgcache_init(struct sim_imgcache *c, EVP_PKEY **keys, size_t nkeys)
{
	memset(c, 0, sizeof(*c));
	c->keys = keys;
	c->nkeys = nkeys;
}

void sim_imgcache_release(struct sim_imgcache *c)
{
	for (size_t i = 0; i < c->n; i++) {
		free(c->v[i]->url);
		free(c->v[i]->error);
		free(c->v[i]->waiters);
		json_decref(c->v[i]->chain);
		free(c->v[i]);
	}
	free(c->v);
	memset(c, 0, sizeof(*c));
}

long sim_imgcache_find(struct sim_imgcache *c, const char *sha256, int create)
{
	for (size_t i = 0; i < c->n; i++)
		if (!strcmp(c->v[i]->sha256, sha256))
			return (long)i;
	if (!create || strlen(sha256) != 64)
		return -1;
	c->v = xrealloc(c->v, (c->n + 1) * sizeof(*c->v));
	c->v[c->n] = xcalloc(1, sizeof(struct sim_image));
	memcpy(c->v[c->n]->sha256, sha256, 65);
	return (long)c->n++;
}

static void image_bad(struct sim_image *img, const char *why)
{
	img->state = SIM_IMG_BAD;
	free(img->error);
	img->error = xstrdup(why);
}

static int sha256_hex(const void *data, size_t len, char hex[65])
{
	unsigned char md[32];
	unsigned int mdlen = 0;

	if (!EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL) || mdlen != 32)
		return ota_error_set(OTA_ERROR, "sha256 failed");
	ota_hex(hex, md, 32);
	return 0;
}

void sim_image_refuse(struct sim_image *img, const char *why)
{
	image_bad(img, why);
}

int sim_imgcache_verify(struct sim_imgcache *c, struct sim_image *img, const void *data,
			size_t len)
{
	return sim_imgcache_verify_with(c, img, data, len, c->keys, c->nkeys);
}

int sim_imgcache_verify_with(struct sim_imgcache *c, struct sim_image *img, const void *data, size_t len,
			     EVP_PKEY **keys, size_t nkeys)
{
	struct mcuboot_info info;
	char hex[65];
	struct buf why = BUF_INIT, plain = BUF_INIT;
	int rc = OTA_EINVAL;

	if (img->state == SIM_IMG_OK)
		return 0;
	if (img->state == SIM_IMG_BAD)
		return ota_error_set(OTA_EINVAL, "image %.12s: %s", img->sha256, img->error);
	if ((rc = sha256_hex(data, len, hex)))
		goto out;
	if (img->sha256[0] && strcmp(hex, img->sha256)) {
		image_bad(img, "the downloaded bytes do not match the offered sha256");
		rc = ota_error_set(OTA_EINVAL, "image %.12s: %s", img->sha256, img->error);
		goto out;
	}
	memcpy(img->sha256, hex, 65);
	c->verifications++;
	/* An encrypted image is decrypted with the device key first (as
	 * MCUboot does); the signature is over the plaintext. */
	if (mcuboot_parse(&info, data, len) == 0 && (info.flags & (MCUBOOT_F_ENC_AES128 | MCUBOOT_F_ENC_AES256))) {
		EVP_PKEY *key = NULL;
		for (size_t k = 0; k < c->nenc && !key; k++)
			if (c->enc[k].hardware && img->hardware && !strcmp(c->enc[k].hardware, img->hardware))
				key = c->enc[k].key;
		for (size_t k = 0; k < c->nenc && !key; k++)
			if (!c->enc[k].hardware)
				key = c->enc[k].key;
		if (!key) {
			image_bad(img, "the image is encrypted and this device has no decryption key");
			rc = ota_error_set(OTA_EINVAL, "image %.12s: %s", img->sha256, img->error);
			goto out;
		}
		if (mcuboot_decrypt(&plain, data, len, key) < 0) {
			buf_printf(&why, "decryption: %s", ota_error_last());
			image_bad(img, buf_cstr(&why));
			rc = ota_error_set(OTA_EINVAL, "image %.12s: %s", img->sha256, img->error);
			goto out;
		}
		data = plain.ptr;
		len = plain.len;
	}
	rc = OTA_EINVAL;
	if (!nkeys)
		buf_puts(&why, "no trusted key");
	for (size_t i = 0; i < nkeys && rc; i++) {
		rc = mcuboot_verify(&info, data, len, keys[i]);
		if (rc)
			buf_printf(&why, "%skey %zu: %s", i ? "; " : "", i + 1, ota_error_last());
	}
	if (rc) {
		image_bad(img, buf_cstr(&why));
		rc = ota_error_set(OTA_EINVAL, "image %.12s: %s", img->sha256, img->error);
		goto out;
	}
	img->state = SIM_IMG_OK;
	img->has_counter = info.has_security_counter;
	img->counter = info.has_security_counter ? info.security_counter : 0;
	snprintf(img->version, sizeof(img->version), "%u.%u.%u", info.major, info.minor,
		 info.revision);
	if (!img->size)
		img->size = (int64_t)len;
	rc = 0;
out:
	buf_release(&why);
	buf_release(&plain);
	return rc;
}

int sim_imgcache_check(struct sim_imgcache *c, const void *data, size_t len,
		       struct sim_image **out)
{
	char hex[65];
	long i;
	int rc;

	*out = NULL;
	if ((rc = sha256_hex(data, len, hex)))
		return rc;
	i = sim_imgcache_find(c, hex, 1);
	*out = c->v[i];
	return sim_imgcache_verify(c, c->v[i], data, len);
}

void sim_image_add_waiter(struct sim_image *img, uint32_t dev)
{
	if (img->nwaiters == img->capwaiters) {
		img->capwaiters = img->capwaiters ? img->capwaiters * 2 : 64;
		img->waiters = xrealloc(img->waiters, img->capwaiters * sizeof(*img->waiters));
	}
	img->waiters[img->nwaiters++] = dev;
}

/* ---- decisions ---------------------------------------------------------- */

enum sim_verdict sim_offer_check(const struct sim_self *self, const struct sim_offer *o)
{
	if (o->counter >= 0 && o->counter < (int64_t)self->counter)
		return SIM_REFUSE_LOWER_COUNTER;
	if (o->hardware && strcmp(o->hardware, self->hardware))
		return SIM_REFUSE_INCOMPATIBLE;
	if (o->min_bootloader && sim_version_cmp(o->min_bootloader, self->bootloader) > 0)
		return SIM_REFUSE_INCOMPATIBLE;
	if (o->version && self->version && !strcmp(o->version, self->version))
		return SIM_SAME_VERSION;
	if (o->image && o->image == self->failed_image)
		return SIM_SKIP_FAILED;
	return SIM_ACCEPT;
}

enum sim_verdict sim_image_check(uint32_t held_counter, const struct sim_image *img)
{
	if (!img || img->state != SIM_IMG_OK)
		return SIM_REFUSE_BAD_SIGNATURE;
	if (img->counter < held_counter)
		return SIM_REFUSE_LOWER_COUNTER;
	return SIM_ACCEPT;
}

const char *sim_verdict_name(enum sim_verdict v)
{
	switch (v) {
	case SIM_ACCEPT: return "accept";
	case SIM_SAME_VERSION: return "same_version";
	case SIM_SKIP_FAILED: return "failed_before";
	case SIM_REFUSE_LOWER_COUNTER: return "lower_counter";
	case SIM_REFUSE_INCOMPATIBLE: return "incompatible";
	case SIM_REFUSE_BAD_SIGNATURE: return "bad_signature";
	}
	return "?";
}

/* ---- downloads ---------------------------------------------------------- */

int sim_download_init(struct sim_download *d, uint32_t dev, uint32_t image)
{
	memset(d, 0, sizeof(*d));
	d->dev = dev;
	d->image = image;
	d->md = EVP_MD_CTX_new();
	if (!d->md || !EVP_DigestInit_ex(d->md, EVP_sha256(), NULL)) {
		EVP_MD_CTX_free(d->md);
		d->md = NULL;
		return ota_error_set(OTA_ERROR, "sha256 init failed");
	}
	return 0;
}

void sim_download_release(struct sim_download *d)
{
	EVP_MD_CTX_free(d->md);
	d->md = NULL;
}

static void download_restart(struct sim_download *d)
{
	d->offset = 0;
	EVP_DigestInit_ex(d->md, EVP_sha256(), NULL);
	if (d->keep)
		buf_clear(d->keep);
}

void sim_download_range(const struct sim_download *d, char *out, size_t n)
{
	if (d->offset)
		snprintf(out, n, "bytes=%llu-", (unsigned long long)d->offset);
	else if (n)
		out[0] = 0;
}

int sim_download_response(struct sim_download *d, long status, int64_t range_start)
{
	d->cut_hit = 0;
	if (status == 200) {
		d->resumed = 0;
		download_restart(d);
		return 0;
	}
	if (status == 206) {
		if (range_start < 0 || (uint64_t)range_start != d->offset) {
			download_restart(d);
			return ota_error_set(OTA_EINVAL,
					     "206 Content-Range starts at %lld, asked for %llu",
					     (long long)range_start, (unsigned long long)d->offset);
		}
		d->resumed = d->offset > 0;
		if (d->resumed)
			d->resumes++;
		return 0;
	}
	if (status == 416)
		download_restart(d);
	return ota_error_set(OTA_EINVAL, "image download answered %ld", status);
}

size_t sim_download_data(struct sim_download *d, const void *p, size_t n)
{
	size_t take = n;

	if (d->cut && d->offset + n > d->cut) {
		take = d->cut > d->offset ? (size_t)(d->cut - d->offset) : 0;
		d->cut_hit = 1;
		d->cut = 0;
	}
	if (take) {
		EVP_DigestUpdate(d->md, p, take);
		if (d->keep && buf_put(d->keep, p, take))
			return 0;
		d->offset += take;
	}
	return take;
}

int sim_download_digest(const struct sim_download *d, char hex[65])
{
	EVP_MD_CTX *copy = EVP_MD_CTX_new();
	unsigned char md[32];
	unsigned int mdlen = 0;
	int rc = 0;

	if (!copy || !EVP_MD_CTX_copy_ex(copy, d->md) || !EVP_DigestFinal_ex(copy, md, &mdlen)) {
		rc = ota_error_set(OTA_ERROR, "sha256 failed");
		goto out;
	}
	ota_hex(hex, md, 32);
out:
	EVP_MD_CTX_free(copy);
	return rc;
}
