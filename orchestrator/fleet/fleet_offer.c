/*
 * fleet_offer.c - what the update server offers: the exposures (each
 * release's images, bootloader and counter floor, and the segments of the
 * fleet it reaches), the decision a check-in gets (fleet_decide: a
 * rollback first, else the newest active release that fits and exposes the
 * device), which images a device may download, and the push hints sent when
 * an exposure changes (issue 15: the walk over the device table that finds
 * whose offer changed).
 *
 * Exposures are a small array, newest release first, under f->exp_lock;
 * fleet_set_exposure compiles each offer's JSON text once so a check-in
 * (fleet.c) only copies it.  Lock order as in fleet.c: exposures -> one
 * device shard.
 */
#include "../artifact/origin.h"
#include "fleet_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int xyz_cmp(const uint32_t a[3], const uint32_t b[3])
{
	for (int i = 0; i < 3; i++)
		if (a[i] != b[i])
			return a[i] < b[i] ? -1 : 1;
	return 0;
}

/* ---- exposures ---------------------------------------------------------- */

static void exposure_free(struct exposure *x)
{
	if (!x)
		return;
	for (size_t i = 0; i < x->nimages; i++) {
		free(x->images[i].sha256);
		free(x->images[i].type);
		free(x->images[i].url);
		free(x->images[i].offer[0]);
		free(x->images[i].offer[1]);
		for (size_t k = 0; k < x->images[i].ndeltas; k++) {
			free(x->images[i].deltas[k].sha256);
			free(x->images[i].deltas[k].offer[0]);
			free(x->images[i].deltas[k].offer[1]);
		}
		free(x->images[i].deltas);
	}
	free(x->images);
	for (size_t k = 0; k < x->nsegs; k++) {
		for (size_t i = 0; i < x->segs[k].ncohort; i++)
			free(x->segs[k].cohort[i].values);
		free(x->segs[k].cohort);
	}
	free(x->segs);
	free(x->salt);
	free(x);
}

static int segment_compile(struct fleet *f, struct exp_segment *sg, const json_t *cohort, int bp)
{
	const char *key;
	json_t *vals;

	sg->bp = bp < 0 ? 0 : bp > 10000 ? 10000 : bp;
	if (!cohort || json_is_null(cohort))
		return 0;
	if (!json_is_object(cohort))
		return ota_error_set(OTA_EINVAL, "exposure: cohort must be an object");
	sg->cohort = xcalloc(json_object_size(cohort) + 1, sizeof(*sg->cohort));
	json_object_foreach((json_t *)cohort, key, vals) {
		struct cohort_key *ck = &sg->cohort[sg->ncohort++];
		size_t j;
		json_t *v;
		if (!json_is_array(vals))
			return ota_error_set(OTA_EINVAL, "exposure: cohort.%s must be a list", key);
		ck->values = xcalloc(json_array_size(vals) + 1, sizeof(*ck->values));
		json_array_foreach(vals, j, v) {
			char *kv;
			if (!json_is_string(v))
				return ota_error_set(OTA_EINVAL, "exposure: cohort.%s[%zu] must be a string", key, j);
			kv = xasprintf("%s=%s", key, json_string_value(v));
			ck->values[ck->nvalues++] = fleet_intern(f, kv, strlen(kv));
			free(kv);
		}
	}
	return 0;
}

/* The offer of image img of x, as check-in answers carry it (JSON text,
 * made once here so that a check-in only copies it). */
static int offer_compile(const struct exposure *x, struct exp_image *img)
{
	for (int k = 0; k < 2; k++) {
		/* what the image needs, so a device can check the server too */
		json_t *o = json_pack("{sI ss sI s{ss ss sI ss ss} ss}", "release", (json_int_t)x->release_id, "version",
				      x->version, "security_counter", (json_int_t)x->counter, "image", "url", img->url,
				      "sha256", img->sha256, "size", (json_int_t)img->size, "type", img->type, "hardware",
				      img->hardware, "reason", k ? "rollback" : "rollout");
		if (o && x->has_min_bl) {
			char mb[48];
			snprintf(mb, sizeof(mb), "%u.%u.%u", x->min_bl[0], x->min_bl[1], x->min_bl[2]);
			json_object_set_new(o, "min_bootloader", json_string(mb));
		}
		img->offer[k] = o ? json_dumps(o, JSON_COMPACT) : NULL;
		json_decref(o);
		if (!img->offer[k] || strlen(img->offer[k]) > FLEET_ANSWER_MAX / 2)
			return ota_error_set(OTA_EINVAL, "exposure: image type too long");
	}
	return 0;
}

/* issue 15: the offers of img with the patch dl (the image's offer text
 * with a "delta" member; the patch is served like an image, from the
 * same origin). */
static int delta_compile(struct fleet *f, struct exp_image *img, const struct fleet_delta *dl)
{
	struct exp_delta *e;
	char *url;
	json_t *o;

	if (!dl->from_version || !dl->sha256 || !artifact_digest_valid(dl->sha256) || !dl->base ||
	    !artifact_digest_valid(dl->base) || dl->size <= 0)
		return ota_error_set(OTA_EINVAL, "exposure: a delta needs from_version, sha256, base and size");
	img->deltas = xrealloc(img->deltas, (img->ndeltas + 1) * sizeof(*img->deltas));
	e = &img->deltas[img->ndeltas];
	memset(e, 0, sizeof(*e));
	e->from_version = fleet_intern(f, dl->from_version, strlen(dl->from_version));
	e->sha256 = xstrdup(dl->sha256);
	img->ndeltas++;
	url = origin_image_url(dl->sha256);
	o = json_pack("{ss sI ss ss}", "url", url, "size", (json_int_t)dl->size, "sha256", dl->sha256, "base", dl->base);
	free(url);
	for (int k = 0; k < 2 && o; k++) {
		char *text = json_dumps(o, JSON_COMPACT);
		size_t n = strlen(img->offer[k]);
		e->offer[k] = xasprintf("%.*s,\"delta\":%s}", (int)(n - 1), img->offer[k], text ? text : "null");
		free(text);
		if (strlen(e->offer[k]) > FLEET_ANSWER_MAX / 2) {
			json_decref(o);
			return ota_error_set(OTA_EINVAL, "exposure: offer with a delta too long");
		}
	}
	json_decref(o);
	return 0;
}

static void notify_changes(struct fleet *f, const struct exposure *prev, int64_t release_id);

int fleet_set_exposure(struct fleet *f, const struct fleet_exposure *in)
{
	struct exposure *x = xcalloc(1, sizeof(*x)), *prev = NULL;
	size_t i;
	int rc = 0;

	if (!in->product || !fleet_name_valid(in->product)) {
		rc = ota_error_set(OTA_EINVAL, "exposure: bad product");
		goto out;
	}
	if (!in->version || !fleet_version_valid(in->version)) {
		rc = ota_error_set(OTA_EINVAL, "exposure: bad version");
		goto out;
	}
	if (in->min_bootloader && *in->min_bootloader) {
		if (fleet_xyz_parse(in->min_bootloader, x->min_bl) < 0) {
			rc = ota_error_set(OTA_EINVAL, "exposure: min_bootloader '%s' is not X.Y.Z", in->min_bootloader);
			goto out;
		}
		x->has_min_bl = 1;
	}
	x->release_id = in->release_id;
	x->product = fleet_intern(f, in->product, strlen(in->product));
	x->version = fleet_intern(f, in->version, strlen(in->version));
	fleet_admit_known(f, x->product, 0, 0);
	fleet_admit_known(f, x->version, 0, 0);
	x->counter = in->security_counter;
	x->active = in->active;
	x->salt = xstrdup(in->salt ? in->salt : "");
	x->rollback_to = in->rollback_to;
	x->images = xcalloc(in->nimages ? in->nimages : 1, sizeof(*x->images));
	for (i = 0; i < in->nimages; i++) {
		const struct fleet_image *im = &in->images[i];
		if (!im->hardware || !im->sha256 || !artifact_digest_valid(im->sha256)) {
			rc = ota_error_set(OTA_EINVAL, "exposure: images[%zu] needs hardware and a sha256", i);
			goto out;
		}
		x->images[i].hardware = fleet_intern(f, im->hardware, strlen(im->hardware));
		x->images[i].sha256 = xstrdup(im->sha256);
		x->images[i].type = xstrdup(im->type ? im->type : "application");
		x->images[i].size = im->size;
		x->images[i].url = origin_image_url(im->sha256); /* issue 15: the configured origin */
		x->nimages++;
		if ((rc = offer_compile(x, &x->images[i])) < 0)
			goto out;
		for (size_t k = 0; k < in->ndeltas; k++)
			if (in->deltas[k].hardware && !strcmp(in->deltas[k].hardware, im->hardware) &&
			    in->deltas[k].to_sha256 && !strcmp(in->deltas[k].to_sha256, im->sha256) &&
			    (rc = delta_compile(f, &x->images[i], &in->deltas[k])) < 0)
				goto out;
	}
	x->nsegs = in->nsegments ? in->nsegments : 1;
	x->segs = xcalloc(x->nsegs, sizeof(*x->segs));
	for (i = 0; i < x->nsegs; i++) {
		rc = in->nsegments ? segment_compile(f, &x->segs[i], in->segments[i].cohort, in->segments[i].basis_points)
				   : segment_compile(f, &x->segs[i], in->cohort, in->basis_points);
		if (rc < 0)
			goto out;
		if (in->nsegments && in->segments[i].gen > (UINT32_MAX >> FL_GEN_SHIFT)) {
			rc = ota_error_set(OTA_EINVAL, "exposure: segments[%zu]: step %" PRIu32 " does not fit the device flags",
					   i, in->segments[i].gen);
			goto out;
		}
		x->segs[i].gen = in->nsegments ? in->segments[i].gen : 0;
	}

	pthread_rwlock_wrlock(&f->exp_lock);
	for (i = 0; i < f->nexp; i++)
		if (f->exp[i]->release_id == x->release_id)
			break;
	if (i < f->nexp) {
		prev = f->exp[i]; /* freed after notify_changes */
		f->exp[i] = x;
	} else {
		f->exp = xrealloc(f->exp, (f->nexp + 1) * sizeof(*f->exp));
		/* keep newest (highest release id) first */
		for (i = f->nexp; i > 0 && f->exp[i - 1]->release_id < x->release_id; i--)
			f->exp[i] = f->exp[i - 1];
		f->exp[i] = x;
		f->nexp++;
	}
	pthread_rwlock_unlock(&f->exp_lock);
	if (f->notify)
		notify_changes(f, prev, x->release_id);
	x = NULL;
out:
	exposure_free(x);
	exposure_free(prev);
	return rc;
}

void fleet_remove_exposure(struct fleet *f, int64_t release_id)
{
	pthread_rwlock_wrlock(&f->exp_lock);
	for (size_t i = 0; i < f->nexp; i++) {
		if (f->exp[i]->release_id != release_id)
			continue;
		exposure_free(f->exp[i]);
		memmove(&f->exp[i], &f->exp[i + 1], (f->nexp - i - 1) * sizeof(*f->exp));
		f->nexp--;
		break;
	}
	pthread_rwlock_unlock(&f->exp_lock);
}

int fleet_image_known(struct fleet *f, const char *sha256)
{
	int known = 0;
	pthread_rwlock_rdlock(&f->exp_lock);
	for (size_t i = 0; i < f->nexp && !known; i++)
		for (size_t j = 0; j < f->exp[i]->nimages && !known; j++) {
			known = !strcmp(f->exp[i]->images[j].sha256, sha256);
			for (size_t k = 0; k < f->exp[i]->images[j].ndeltas && !known; k++)
				known = strcmp(f->exp[i]->images[j].deltas[k].sha256, sha256) ? 0 : 2;
		}
	pthread_rwlock_unlock(&f->exp_lock);
	return known;
}

int fleet_image_allowed(struct fleet *f, const char *sha256, const char *device_id)
{
	uint64_t h = fleet_fnv(device_id, strlen(device_id), FLEET_FNV_BASIS);
	struct shard *s = fleet_shard(f, h);
	const struct device *d;
	int ok = 0;

	pthread_rwlock_rdlock(&f->exp_lock);
	pthread_mutex_lock(&s->mu);
	d = fleet_device_find_locked(s, device_id, h);
	for (size_t i = 0; d && i < f->nexp && ok != 1; i++) {
		const struct exposure *x = f->exp[i];
		int stands = x->active;
		if (x->product != d->product || !(fleet_vflags_of(d, x->version) & FL_OFFERED))
			continue;
		/* a halt withdraws outstanding offers: only a rollback target of
		 * an inactive release is still served */
		for (size_t k = 0; k < f->nexp && !stands; k++)
			stands = f->exp[k]->rollback_to == x->release_id;
		for (size_t j = 0; j < x->nimages && ok != 1; j++) {
			if (x->images[j].hardware != d->hardware)
				continue;
			if (!strcmp(x->images[j].sha256, sha256))
				ok = stands ? 1 : -1;
			/* issue 15: a patch to that image, from the version the device runs */
			for (size_t k = 0; k < x->images[j].ndeltas && ok != 1; k++)
				if (exp_delta_applies(&x->images[j].deltas[k], d->version) &&
				    !strcmp(x->images[j].deltas[k].sha256, sha256))
					ok = stands ? 1 : -1;
		}
	}
	pthread_mutex_unlock(&s->mu);
	pthread_rwlock_unlock(&f->exp_lock);
	return ok;
}

void fleet_exposures_free(struct fleet *f)
{
	for (size_t i = 0; i < f->nexp; i++)
		exposure_free(f->exp[i]);
	free(f->exp);
	f->exp = NULL;
	f->nexp = 0;
}

/* ---- the check-in decision ---------------------------------------------- */

/* The image of x for d, when x fits d (hardware, bootloader, counter). */
static const struct exp_image *exposure_fits(const struct exposure *x, const struct device *d)
{
	if (x->counter < d->counter)
		return NULL;
	if (x->has_min_bl && xyz_cmp(x->min_bl, d->bl) > 0)
		return NULL;
	for (size_t i = 0; i < x->nimages; i++)
		if (x->images[i].hardware == d->hardware)
			return &x->images[i];
	return NULL;
}

static int segment_match(const struct exp_segment *sg, const struct device *d)
{
	for (size_t k = 0; k < sg->ncohort; k++) {
		int hit = 0;
		for (size_t t = 0; t < d->ntags && !hit; t++)
			for (size_t v = 0; v < sg->cohort[k].nvalues && !hit; v++)
				hit = d->tags[t] == sg->cohort[k].values[v];
		if (!hit)
			return 0;
	}
	return 1;
}

/* Is d in x's exposure: in some segment, by tags and by slot? */
static int exposed(const struct exposure *x, const struct device *d)
{
	int slot = -1;
	for (size_t k = 0; k < x->nsegs; k++) {
		if (!x->segs[k].bp || !segment_match(&x->segs[k], d))
			continue;
		if (slot < 0)
			slot = fleet_cohort_slot(x->salt, d->id);
		if (slot < x->segs[k].bp)
			return 1;
	}
	return 0;
}

/* The step a first offer of x to d is credited to: the gen of a segment
 * now widening that exposes d (0: none, e.g. it was exposed by a finished
 * ring's segment).  Called like exposed(). */
uint32_t fleet_exposure_gen(const struct exposure *x, const struct device *d)
{
	int slot = -1;
	for (size_t k = 0; k < x->nsegs; k++) {
		if (!x->segs[k].gen || !x->segs[k].bp || !segment_match(&x->segs[k], d))
			continue;
		if (slot < 0)
			slot = fleet_cohort_slot(x->salt, d->id);
		if (slot < x->segs[k].bp)
			return x->segs[k].gen;
	}
	return 0;
}

/* Called with exp_lock held for reading and d's shard locked. */
const struct exposure *fleet_decide(struct fleet *f, const struct device *d, const struct exp_image **img,
				    int *rollback)
{
	*rollback = 0;
	for (size_t i = 0; i < f->nexp; i++) {
		const struct exposure *x = f->exp[i], *t = NULL;
		if (x->product != d->product || x->version != d->version || !x->rollback_to)
			continue;
		for (size_t j = 0; j < f->nexp && !t; j++)
			if (f->exp[j]->release_id == x->rollback_to)
				t = f->exp[j];
		if (!t || t->product != d->product || t->version == d->version || !(*img = exposure_fits(t, d)))
			return NULL;
		*rollback = 1;
		return t;
	}
	for (size_t i = 0; i < f->nexp; i++) {
		const struct exposure *x = f->exp[i];
		if (x->product != d->product)
			continue;
		if (x->version == d->version)
			return NULL; /* nothing newer applies: it runs this one */
		if (!x->active || !(*img = exposure_fits(x, d)) || !exposed(x, d))
			continue;
		return x;
	}
	return NULL;
}

/* ---- push hints (issue 15) ------------------------------------------------ */

void fleet_set_notify(struct fleet *f, fleet_notify_fn fn, void *ctx)
{
	if (!f)
		return;
	f->notify_ctx = ctx;
	f->notify = fn;
}

/* ---- readiness after a start (issue 18) ---------------------------------- */

void fleet_hold_offers(struct fleet *f, int held)
{
	if (f)
		__atomic_store_n(&f->offers_held, held ? 1 : 0, __ATOMIC_RELEASE);
}

int fleet_offers_held(const struct fleet *f)
{
	return f && __atomic_load_n(&f->offers_held, __ATOMIC_ACQUIRE);
}

/* Would x, on its own, offer d an update? */
static int offers(const struct exposure *x, const struct device *d)
{
	return x && x->active && x->product == d->product && x->version != d->version && exposure_fits(x, d) &&
	       exposed(x, d);
}

/* The devices whose offer changed from prev to the current exposure of
 * release_id, judged on that release alone (other releases' exposures are
 * ignored: a hint too many costs one check-in, one too few the poll). */
static void notify_changes(struct fleet *f, const struct exposure *prev, int64_t release_id)
{
	struct fleet_change *c = NULL;
	size_t n = 0, cap = 0;
	const char *product = NULL;

	pthread_rwlock_rdlock(&f->exp_lock);
	for (size_t i = 0; i < f->nexp && !product; i++) {
		const struct exposure *x = f->exp[i];
		int rollback;
		if (x->release_id != release_id)
			continue;
		product = x->product;
		rollback = x->rollback_to && x->rollback_to != (prev ? prev->rollback_to : 0);
		for (int k = 0; k < FLEET_NSHARDS; k++) {
			struct shard *s = &f->shards[k];
			pthread_mutex_lock(&s->mu);
			for (size_t b = 0; b < s->nb; b++)
				for (const struct device *d = s->b[b]; d; d = d->next) {
					const char *why = NULL;
					int now = offers(x, d), before = offers(prev, d);
					if (rollback && d->product == x->product && d->version == x->version)
						why = "rollback";
					else if (now && !before)
						why = "offer";
					else if (before && !now)
						why = "withdrawn";
					if (!why)
						continue;
					if (n == cap) {
						cap = cap ? cap * 2 : 64;
						c = xrealloc(c, cap * sizeof(*c));
					}
					c[n].device = d->id; /* devices live until fleet_close */
					c[n].hardware = d->hardware;
					c[n].reason = why;
					n++;
				}
			pthread_mutex_unlock(&s->mu);
		}
	}
	pthread_rwlock_unlock(&f->exp_lock);
	if (n)
		f->notify(f->notify_ctx, product, c, n);
	free(c);
}
