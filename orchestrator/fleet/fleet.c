/*
 * fleet.c - the built-in update server's memory: devices, aggregates,
 * and check-ins (see fleet.h and docs/update-server.md).  Exposures, the
 * offer a check-in gets and the push hints are in fleet_offer.c.
 *
 * Everything a check-in touches lives in memory so that a check-in costs a
 * few hash lookups and no SQLite:
 *
 *   - strings that repeat across devices (products, versions, hardware,
 *     bootloaders, "key=value" tags) are interned once (struct intern, a
 *     read-mostly table under a rwlock) and compared by pointer afterwards;
 *   - devices sit in 64 shards, each a chained hash table under its own
 *     mutex.  A device keeps, for a few versions, the flags that make the
 *     distinct counters distinct (offered, download, boot_ok, reporting,
 *     crashed ...); they are reset when its running version changes;
 *   - aggregates are keyed by interned (product, version, cohort) pointers
 *     in a table under a rwlock that only grows; their counters are updated
 *     with atomics, so a check-in that adds a device takes only read locks;
 *   - exposures are a small array, newest release first, under a rwlock
 *     (fleet_offer.c).
 *
 * Lock order: exposures -> one device shard -> aggregate table -> intern
 * table.  Nothing takes a shard while holding a later lock.
 *
 * Persistence is fleet_store.c: its writer thread applies report batches
 * (validated in fleet_report.c, in the caller's thread), writes changed devices and
 * aggregates, and commits, all in one transaction per group of batches.
 */
#include "../pki.h"
#include "../artifact/origin.h"
#include "fleet_ckbody.h"
#include "fleet_int.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "../../common/threadmem.h"
#include "../clock.h"

/* ---- hashing and validation ------------------------------------------ */

uint64_t fleet_fnv(const void *p, size_t n, uint64_t h)
{
	const unsigned char *s = p;
	for (size_t i = 0; i < n; i++) {
		h ^= s[i];
		h *= 0x100000001b3ULL;
	}
	return h;
}

int fleet_cohort_slot(const char *salt, const char *device)
{
	uint64_t h = FLEET_FNV_BASIS;
	h = fleet_fnv(salt, strlen(salt), h);
	h = fleet_fnv(":", 1, h);
	h = fleet_fnv(device, strlen(device), h);
	/* FNV-1a alone mixes its last bytes poorly into the low bits that
	 * mod 10000 reads: ids differing only in their last digits (dev-000123)
	 * gave 1 % cohorts ~3x the variance chance gives
	 * (tests/test_relsafety.c, cohort_hash_spreads_like_chance). */
	return (int)(fleet_hash_mix(h) % 10000);
}

/* MurmurHash3's 64-bit finalizer: every input bit spread over the word. */
uint64_t fleet_hash_mix(uint64_t h)
{
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ULL;
	h ^= h >> 33;
	return h;
}

/* 1 when c is one of the characters of extra (a few): a loop the
 * compiler keeps inline, where strchr was a call per punctuation mark. */
static inline int in_extra(unsigned c, const char *extra)
{
	for (; *extra; extra++)
		if ((unsigned char)*extra == c)
			return 1;
	return 0;
}

/* s is min..max characters of [A-Za-z0-9] and extra.  The letters and
 * digits are tested by hand, as isalnum does in the "C" locale otacd runs
 * in (every check-in checks five strings: the call and strchr per
 * character showed in its profile). */
static int charset_ok(const char *s, size_t min, size_t max, const char *extra)
{
	size_t n = 0;
	for (; s[n]; n++) {
		unsigned c = (unsigned char)s[n];
		if (n >= max)
			return 0;
		if ((c | 0x20) - 'a' < 26u || c - '0' < 10u)
			continue;
		if (!in_extra(c, extra))
			return 0;
	}
	return n >= min;
}

_Static_assert(FLEET_CKBODY_TAGS == FLEET_MAX_TAGS, "a check-in body holds every tag a device may have");

int fleet_device_id_valid(const char *s)
{
	return charset_ok(s, 1, 64, "._:-");
}

int fleet_name_valid(const char *s)
{
	return charset_ok(s, 1, 128, "._:/+@-");
}

int fleet_version_valid(const char *s)
{
	return isdigit((unsigned char)s[0]) && charset_ok(s, 1, 64, ".+_-");
}

/* X.Y.Z, each 1..10 decimal digits within uint32 (digits read by hand:
 * every check-in reads its bootloader's twice, and strtoul, with its
 * locale and sign handling, showed in the check-in's profile). */
int fleet_xyz_parse(const char *s, uint32_t out[3])
{
	for (int i = 0; i < 3; i++) {
		uint64_t v = 0;
		size_t n = 0;
		for (; (unsigned)(unsigned char)s[n] - '0' < 10u; n++) {
			if (n >= 10)
				return OTA_EINVAL;
			v = v * 10 + (uint64_t)(s[n] - '0');
		}
		if (!n || v > UINT32_MAX)
			return OTA_EINVAL;
		out[i] = (uint32_t)v;
		s += n;
		if (i < 2 && *s++ != '.')
			return OTA_EINVAL;
	}
	return *s ? OTA_EINVAL : 0;
}

/* ---- interned strings --------------------------------------------------- */

static const char *intern_find_locked(struct intern *t, const char *s, size_t len, uint64_t h)
{
	if (!t->cap)
		return NULL;
	for (size_t i = h & (t->cap - 1);; i = (i + 1) & (t->cap - 1)) {
		const char *x = t->slot[i];
		if (!x)
			return NULL;
		if (!strncmp(x, s, len) && !x[len])
			return x;
	}
}

const char *fleet_intern_find(struct fleet *f, const char *s)
{
	size_t len = strlen(s);
	const char *r;
	pthread_rwlock_rdlock(&f->intern.lock);
	r = intern_find_locked(&f->intern, s, len, fleet_fnv(s, len, FLEET_FNV_BASIS));
	pthread_rwlock_unlock(&f->intern.lock);
	return r;
}

const char *fleet_intern(struct fleet *f, const char *s, size_t len)
{
	struct intern *t = &f->intern;
	uint64_t h = fleet_fnv(s, len, FLEET_FNV_BASIS);
	const char *r;

	pthread_rwlock_rdlock(&t->lock);
	r = intern_find_locked(t, s, len, h);
	pthread_rwlock_unlock(&t->lock);
	if (r)
		return r;
	pthread_rwlock_wrlock(&t->lock);
	if ((r = intern_find_locked(t, s, len, h)))
		goto out;
	if ((t->n + 1) * 2 > t->cap) {
		size_t ncap = t->cap ? t->cap * 2 : 1024;
		char **ns = xcalloc(ncap, sizeof(*ns));
		for (size_t i = 0; i < t->cap; i++) {
			size_t j;
			if (!t->slot[i])
				continue;
			j = fleet_fnv(t->slot[i], strlen(t->slot[i]), FLEET_FNV_BASIS) & (ncap - 1);
			while (ns[j])
				j = (j + 1) & (ncap - 1);
			ns[j] = t->slot[i];
		}
		free(t->slot);
		t->slot = ns;
		t->cap = ncap;
	}
	{
		size_t j = h & (t->cap - 1);
		while (t->slot[j])
			j = (j + 1) & (t->cap - 1);
		t->slot[j] = xstrndup(s, len);
		t->n++;
		r = t->slot[j];
	}
out:
	pthread_rwlock_unlock(&t->lock);
	return r;
}

/* ---- aggregates --------------------------------------------------------- */

static size_t agg_hash(const char *p, const char *v, const char *c)
{
	uint64_t h = (uintptr_t)p * 0x9e3779b97f4a7c15ULL;
	h ^= (uintptr_t)v * 0xc2b2ae3d27d4eb4fULL;
	h ^= (uintptr_t)c * 0x165667b19e3779f9ULL;
	return (size_t)(h ^ (h >> 29));
}

static struct agg *agg_find_locked(struct fleet *f, const char *p, const char *v, const char *c)
{
	if (!f->agg_nb)
		return NULL;
	for (struct agg *a = f->agg_b[agg_hash(p, v, c) & (f->agg_nb - 1)]; a; a = a->next)
		if (a->product == p && a->version == v && a->cohort == c)
			return a;
	return NULL;
}

struct agg *fleet_agg_get(struct fleet *f, const char *p, const char *v, const char *c)
{
	struct agg *a;
	pthread_rwlock_rdlock(&f->agg_lock);
	a = agg_find_locked(f, p, v, c);
	pthread_rwlock_unlock(&f->agg_lock);
	if (a)
		return a;
	pthread_rwlock_wrlock(&f->agg_lock);
	if ((a = agg_find_locked(f, p, v, c)))
		goto out;
	if (f->agg_n + 1 > f->agg_nb) {
		size_t nb = f->agg_nb ? f->agg_nb * 2 : 256;
		struct agg **b = xcalloc(nb, sizeof(*b));
		for (struct agg *x = f->agg_all; x; x = x->all_next) {
			size_t i = agg_hash(x->product, x->version, x->cohort) & (nb - 1);
			x->next = b[i];
			b[i] = x;
		}
		free(f->agg_b);
		f->agg_b = b;
		f->agg_nb = nb;
	}
	a = xcalloc(1, sizeof(*a));
	a->product = p;
	a->version = v;
	a->cohort = c;
	a->next = f->agg_b[agg_hash(p, v, c) & (f->agg_nb - 1)];
	f->agg_b[agg_hash(p, v, c) & (f->agg_nb - 1)] = a;
	a->all_next = f->agg_all;
	f->agg_all = a;
	f->agg_n++;
out:
	pthread_rwlock_unlock(&f->agg_lock);
	return a;
}

void fleet_agg_mark(struct fleet *f, struct agg *a)
{
	if (__atomic_exchange_n(&a->dirty, 1, __ATOMIC_ACQ_REL))
		return;
	pthread_mutex_lock(&f->agg_dirty_mu);
	a->dirty_next = f->agg_dirty;
	f->agg_dirty = a;
	pthread_mutex_unlock(&f->agg_dirty_mu);
}

void fleet_step_cohort(uint32_t gen, const char *cohort, char *out, size_t n)
{
	snprintf(out, n, "@%" PRIu32 "/%s", gen, cohort);
}

/* The step generation d's first offer of version was credited to (0:
 * none).  d's shard is locked. */
static uint32_t offer_gen(const struct device *d, const char *version)
{
	for (int i = 0; i < FLEET_NVFLAGS; i++)
		if (d->vf[i].version == version)
			return FL_GEN(d->vf[i].flags);
	return 0;
}

/* This fleet's number, drawn on first use: never reused in the process,
 * unlike its address, so a thread's cache cannot mistake a new fleet for
 * a closed one. */
static uint64_t fleet_instance(struct fleet *f)
{
	static uint64_t next;
	uint64_t id = __atomic_load_n(&f->instance, __ATOMIC_ACQUIRE), zero = 0;
	if (id)
		return id;
	id = __atomic_add_fetch(&next, 1, __ATOMIC_RELAXED);
	if (!__atomic_compare_exchange_n(&f->instance, &zero, id, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
		id = zero;   /* another thread drew first */
	return id;
}

/* A thread's cache of step aggregates: naming "@GEN/COHORT" costs a
 * snprintf and two hash lookups under read locks on every report of a
 * device a step exposed; an aggregate lives as long as its fleet, so a
 * slot keyed by the fleet's instance, the interned strings and gen stays
 * right. */
struct step_slot {
	uint64_t fleet;
	const char *product, *version, *cohort;
	uint32_t gen;
	struct agg *a;
};
#define STEP_CACHE_SLOTS 256
/* allocated at a thread's first report, not in every thread's static TLS
 * (common/threadmem.h): only the device API's workers use it */
static struct ota_thread_block step_cache_block;
static __thread struct step_slot *step_cache;

static struct agg *step_agg(struct fleet *f, const char *p, const char *v, const char *c, uint32_t gen)
{
	uint64_t id = fleet_instance(f);
	struct step_slot *s;
	char name[256];   /* "@" gen "/" and a tag of at most 193 */

	if (!step_cache)
		step_cache = ota_thread_block_alloc(&step_cache_block, STEP_CACHE_SLOTS * sizeof(*step_cache),
						    &step_cache);
	s = &step_cache[(agg_hash(p, v, c) ^ (size_t)gen * 0x9e3779b97f4a7c15ULL) >> 3 & (STEP_CACHE_SLOTS - 1)];

	if (s->fleet == id && s->product == p && s->version == v && s->cohort == c && s->gen == gen)
		return s->a;
	fleet_step_cohort(gen, c, name, sizeof(name));
	s->a = fleet_agg_get(f, p, v, fleet_intern(f, name, strlen(name)));
	s->fleet = id;
	s->product = p;
	s->version = v;
	s->cohort = c;
	s->gen = gen;
	return s->a;
}

/* The aggregates a device's counters for version go to: (product,
 * version) of each of its cohorts ("*" and each tag), then, when a step
 * exposed it, the same cohorts under "@GEN/" (fleet_step_cohort).  Step
 * aggregates get no `devices` count (it moves down as well as up, and the
 * step a device left is not worth tracking): only the counters that only
 * grow.  d's shard is locked. */
static size_t agg_targets(struct fleet *f, const struct device *d, const char *version, int with_steps,
			  struct agg *out[2 * (FLEET_MAX_TAGS + 1)])
{
	uint32_t gen = with_steps ? offer_gen(d, version) : 0;
	size_t n = 0;

	for (int i = -1; i < (int)d->ntags; i++)
		out[n++] = fleet_agg_get(f, d->product, version, i < 0 ? f->star : d->tags[i]);
	for (int i = -1; gen && i < (int)d->ntags; i++)
		out[n++] = step_agg(f, d->product, version, i < 0 ? f->star : d->tags[i], gen);
	return n;
}

/* Add delta to the int64 field at byte offset off of every aggregate of
 * the device's counters for version (agg_targets). */
void fleet_agg_add(struct fleet *f, const struct device *d, const char *version, size_t off, int64_t delta, int mark)
{
	struct agg *t[2 * (FLEET_MAX_TAGS + 1)];
	size_t n = agg_targets(f, d, version, off != offsetof(struct fleet_agg, devices), t);

	for (size_t i = 0; i < n; i++) {
		__atomic_fetch_add((int64_t *)((char *)&t[i]->v + off), delta, __ATOMIC_RELAXED);
		if (mark)
			fleet_agg_mark(f, t[i]);
	}
}

static void add_real(double *p, double delta)
{
	double v;
	__atomic_load(p, &v, __ATOMIC_RELAXED);
	v += delta;
	__atomic_store(p, &v, __ATOMIC_RELAXED);   /* the writer is the only one adding */
}

void fleet_agg_add_usage(struct fleet *f, const struct device *d, const char *version, int64_t crashes, double hours,
			 double mah)
{
	struct agg *t[2 * (FLEET_MAX_TAGS + 1)];
	size_t n = agg_targets(f, d, version, 1, t);

	for (size_t i = 0; i < n; i++) {
		__atomic_fetch_add(&t[i]->v.crashes, crashes, __ATOMIC_RELAXED);
		add_real(&t[i]->v.device_hours, hours);
		add_real(&t[i]->v.battery_mah, mah);
		fleet_agg_mark(f, t[i]);
	}
}

static void agg_load(const struct fleet_agg *v, struct fleet_agg *out)
{
	out->devices = __atomic_load_n(&v->devices, __ATOMIC_RELAXED);
	out->offered = __atomic_load_n(&v->offered, __ATOMIC_RELAXED);
	out->downloads = __atomic_load_n(&v->downloads, __ATOMIC_RELAXED);
	out->installs = __atomic_load_n(&v->installs, __ATOMIC_RELAXED);
	out->boot_ok = __atomic_load_n(&v->boot_ok, __ATOMIC_RELAXED);
	out->boot_fail = __atomic_load_n(&v->boot_fail, __ATOMIC_RELAXED);
	out->reverts = __atomic_load_n(&v->reverts, __ATOMIC_RELAXED);
	out->reporting = __atomic_load_n(&v->reporting, __ATOMIC_RELAXED);
	out->crashed = __atomic_load_n(&v->crashed, __ATOMIC_RELAXED);
	out->crashes = __atomic_load_n(&v->crashes, __ATOMIC_RELAXED);
	__atomic_load(&v->device_hours, &out->device_hours, __ATOMIC_RELAXED);
	__atomic_load(&v->battery_mah, &out->battery_mah, __ATOMIC_RELAXED);
}

/* What readers (gates, the API, /metrics) see: the committed counters. */
static void agg_snapshot(const struct agg *a, struct fleet_agg *out)
{
	agg_load(&a->c, out);
	out->devices = __atomic_load_n(&a->v.devices, __ATOMIC_RELAXED);
}

void fleet_agg_read(const struct agg *a, struct fleet_agg *out)
{
	agg_load(&a->v, out);
}

void fleet_agg_publish(struct fleet *f, struct agg *a, int ok)
{
	const struct fleet_agg *p = &a->pend;
	if (!ok) {
		fleet_agg_mark(f, a);
		return;
	}
	__atomic_store_n(&a->c.offered, p->offered, __ATOMIC_RELAXED);
	__atomic_store_n(&a->c.downloads, p->downloads, __ATOMIC_RELAXED);
	__atomic_store_n(&a->c.installs, p->installs, __ATOMIC_RELAXED);
	__atomic_store_n(&a->c.boot_ok, p->boot_ok, __ATOMIC_RELAXED);
	__atomic_store_n(&a->c.boot_fail, p->boot_fail, __ATOMIC_RELAXED);
	__atomic_store_n(&a->c.reverts, p->reverts, __ATOMIC_RELAXED);
	__atomic_store_n(&a->c.reporting, p->reporting, __ATOMIC_RELAXED);
	__atomic_store_n(&a->c.crashed, p->crashed, __ATOMIC_RELAXED);
	__atomic_store_n(&a->c.crashes, p->crashes, __ATOMIC_RELAXED);
	__atomic_store(&a->c.device_hours, &p->device_hours, __ATOMIC_RELAXED);
	__atomic_store(&a->c.battery_mah, &p->battery_mah, __ATOMIC_RELAXED);
}

int fleet_aggregate(struct fleet *f, const char *product, const char *version, const char *cohort,
		    struct fleet_agg *out)
{
	const char *p = fleet_intern_find(f, product), *v = fleet_intern_find(f, version);
	const char *c = fleet_intern_find(f, cohort);
	struct agg *a = NULL;

	memset(out, 0, sizeof(*out));
	if (!p || !v || !c)
		return 0;
	pthread_rwlock_rdlock(&f->agg_lock);
	if ((a = agg_find_locked(f, p, v, c)))
		agg_snapshot(a, out);
	pthread_rwlock_unlock(&f->agg_lock);
	return 0;
}

int fleet_baseline(struct fleet *f, const char *product, const char *version, const char *previous,
		   const char *cohort, struct fleet_agg *out)
{
	const char *p = fleet_intern_find(f, product), *v = fleet_intern_find(f, version), *best = NULL;
	int64_t most = 0;

	memset(out, 0, sizeof(*out));
	if (previous)
		return fleet_aggregate(f, product, previous, cohort, out);
	if (!p)
		return 0;
	pthread_rwlock_rdlock(&f->agg_lock);
	for (struct agg *a = f->agg_all; a; a = a->all_next) {
		int64_t n;
		if (a->product != p || a->cohort != f->star || a->version == v)
			continue;
		n = __atomic_load_n(&a->v.devices, __ATOMIC_RELAXED);
		if (n > most || (n == most && best && strcmp(a->version, best) > 0)) {
			most = n;
			best = a->version;
		}
	}
	pthread_rwlock_unlock(&f->agg_lock);
	/* interned strings live as long as the fleet */
	return best ? fleet_aggregate(f, product, best, cohort, out) : 0;
}

json_t *fleet_versions(struct fleet *f, const char *product)
{
	const char *p = fleet_intern_find(f, product);
	json_t *o = json_object();
	if (!p)
		return o;
	pthread_rwlock_rdlock(&f->agg_lock);
	for (struct agg *a = f->agg_all; a; a = a->all_next) {
		int64_t n;
		if (a->product != p || a->cohort != f->star)
			continue;
		n = __atomic_load_n(&a->v.devices, __ATOMIC_RELAXED);
		if (n > 0)
			json_object_set_new(o, a->version, json_integer(n));
	}
	pthread_rwlock_unlock(&f->agg_lock);
	return o;
}

/* Walks the device table (one shard locked at a time), counting by the
 * interned version pointer: a product has a handful of versions, so a
 * linear list beats a JSON lookup per device at a million devices. */
json_t *fleet_versions_of_hardware(struct fleet *f, const char *product, const char *hardware)
{
	const char *p = fleet_intern_find(f, product), *hw = fleet_intern_find(f, hardware);
	struct { const char *v; int64_t n; } *cnt = NULL;
	size_t n = 0, cap = 0;
	json_t *o = json_object();

	if (!p || !hw)
		return o;
	for (int k = 0; k < FLEET_NSHARDS; k++) {
		struct shard *s = &f->shards[k];
		pthread_mutex_lock(&s->mu);
		for (size_t b = 0; b < s->nb; b++)
			for (const struct device *d = s->b[b]; d; d = d->next) {
				size_t i = 0;
				if (d->product != p || d->hardware != hw || !d->version)
					continue;
				while (i < n && cnt[i].v != d->version)
					i++;
				if (i == n) {
					if (n == cap) {
						cap = cap ? cap * 2 : 8;
						cnt = xrealloc(cnt, cap * sizeof(*cnt));
					}
					cnt[n].v = d->version; /* interned: lives as long as the fleet */
					cnt[n++].n = 0;
				}
				cnt[i].n++;
			}
		pthread_mutex_unlock(&s->mu);
	}
	for (size_t i = 0; i < n; i++)
		json_object_set_new(o, cnt[i].v, json_integer(cnt[i].n));
	free(cnt);
	return o;
}

/* ---- label admission ----------------------------------------------------- */

/*
 * Every string a device names that becomes an aggregate label or an
 * interned string (tags, products, versions, hardware, bootloaders) must be
 * admitted first: already admitted, or allowed by the tag allowlist, or
 * under the cap of its kind.  So 2,000 check-ins with fresh tag values are
 * refused after the cap instead of growing /metrics and memory.
 */
static size_t adm_slot(const struct fleet *f, const char *p)
{
	uint64_t h = (uintptr_t)p * 0x9e3779b97f4a7c15ULL;
	return (size_t)(h ^ (h >> 31)) & (f->adm_cap - 1);
}

static int adm_has_locked(const struct fleet *f, const char *p)
{
	if (!f->adm_cap)
		return 0;
	for (size_t i = adm_slot(f, p);; i = (i + 1) & (f->adm_cap - 1)) {
		if (!f->adm[i])
			return 0;
		if (f->adm[i] == p)
			return 1;
	}
}

static void adm_add_locked(struct fleet *f, const char *p)
{
	if ((f->adm_n + 1) * 2 > f->adm_cap) {
		size_t ncap = f->adm_cap ? f->adm_cap * 2 : 256, ocap = f->adm_cap;
		const char **old = f->adm;
		f->adm = xcalloc(ncap, sizeof(*f->adm));
		f->adm_cap = ncap;
		for (size_t i = 0; i < ocap; i++) {
			size_t j;
			if (!old[i])
				continue;
			for (j = adm_slot(f, old[i]); f->adm[j]; j = (j + 1) & (ncap - 1))
				;
			f->adm[j] = old[i];
		}
		free(old);
	}
	for (size_t j = adm_slot(f, p);; j = (j + 1) & (f->adm_cap - 1))
		if (!f->adm[j]) {
			f->adm[j] = p;
			f->adm_n++;
			return;
		}
}

/* A trusted string (an exposure's, or one loaded from fleet.db): admitted
 * without the cap (load counts it). */
void fleet_admit_known(struct fleet *f, const char *p, int tag, int count)
{
	pthread_rwlock_wrlock(&f->adm_lock);
	if (!adm_has_locked(f, p)) {
		adm_add_locked(f, p);
		if (count)
			*(tag ? &f->n_tags : &f->n_names) += 1;
	}
	pthread_rwlock_unlock(&f->adm_lock);
}

/* Is the tag "key=value" on the allowlist? */
static int tag_allowed(const struct fleet *f, const char *key, const char *value)
{
	json_t *vals = json_object_get(f->tag_allow, key), *v;
	size_t i;
	json_array_foreach(vals, i, v)
		if (json_is_string(v) && !strcmp(json_string_value(v), value))
			return 1;
	return 0;
}

/* Admit the device-supplied string s (for a tag: "key=value" with key and
 * value given too) and intern it.  OTA_EINVAL naming what (a tag: its key)
 * when refused.  Admitted strings are the common case (every check-in of a
 * known device): found under read locks only. */
static int admit(struct fleet *f, const char *s, const char *key, const char *value, const char *what,
		 const char **out)
{
	const char *p = fleet_intern_find(f, s);
	int tag = key != NULL, rc = 0, known;

	*out = NULL;
	if (tag && f->tag_allow && !tag_allowed(f, key, value))
		return ota_error_set(OTA_EINVAL, "tags.%.64s: '%.128s' is not on the device tag allowlist (device_tags)", key,
				     value);
	if (p) {
		pthread_rwlock_rdlock(&f->adm_lock);
		known = adm_has_locked(f, p);
		pthread_rwlock_unlock(&f->adm_lock);
		if (known) {
			*out = p;
			return 0;
		}
	}
	pthread_rwlock_wrlock(&f->adm_lock);
	if (p && adm_has_locked(f, p))
		goto out;
	if (!(tag && f->tag_allow) && (tag ? f->n_tags >= f->tag_cap : f->n_names >= f->name_cap)) {
		if (tag)
			rc = ota_error_set(OTA_EINVAL, "tags.%.64s: '%.128s' would be a new tag beyond the fleet's cap of %" PRId64
					   " (device_tag_cap)", key, s, f->tag_cap);
		else
			rc = ota_error_set(OTA_EINVAL, "%s: '%.128s' would be a new name beyond the fleet's cap of %" PRId64
					   " (device_name_cap)", what, s, f->name_cap);
		goto out;
	}
	p = fleet_intern(f, s, strlen(s));
	adm_add_locked(f, p);
	*(tag ? &f->n_tags : &f->n_names) += 1;
out:
	pthread_rwlock_unlock(&f->adm_lock);
	if (rc == 0)
		*out = p;
	return rc;
}

/* ---- long-lived nodes ---------------------------------------------------- */

/*
 * Devices and registry entries live until fleet_close and every check-in
 * reads one of each at random: in malloc's 4 KB pages a fleet of 100,000
 * spreads them over ~10,000 pages, and each check-in paid TLB misses (a
 * page walk, costly in a VM) on top of the cache misses (perf: the
 * prefetches of a device stalled).  So they are carved from 2 MB chunks
 * the kernel may back with huge pages (MADV_HUGEPAGE: Debian's THP setting
 * is "madvise"), in whole cache lines (a node shares no line with
 * another), and the chunks are freed at close.
 */
#define SLAB_CHUNK ((size_t)2 << 20)

struct slab_chunk {
	struct slab_chunk *next;
};

void *fleet_node_alloc(struct fleet *f, size_t size)
{
	char *p;
	size = (size + 63) & ~(size_t)63;
	pthread_mutex_lock(&f->slab_mu);
	if (size > f->slab_left) {
		size_t cap = (size + 64 + SLAB_CHUNK - 1) / SLAB_CHUNK * SLAB_CHUNK;
		struct slab_chunk *c = aligned_alloc(SLAB_CHUNK, cap);
		if (!c) {
			fputs("fatal: out of memory\n", stderr); /* as xcalloc */
			abort();
		}
		/* a hint: refused, the nodes only cost their TLB misses */
		(void)madvise(c, cap, MADV_HUGEPAGE);
		c->next = f->slab;
		f->slab = c;
		f->slab_cur = (char *)c + 64;
		f->slab_left = cap - 64;
	}
	p = f->slab_cur;
	f->slab_cur += size;
	f->slab_left -= size;
	pthread_mutex_unlock(&f->slab_mu);
	return memset(p, 0, size);
}

void fleet_nodes_free(struct fleet *f)
{
	for (struct slab_chunk *c = f->slab, *next; c; c = next) {
		next = c->next;
		free(c);
	}
	f->slab = NULL;
	f->slab_cur = NULL;
	f->slab_left = 0;
}

/* ---- devices ------------------------------------------------------------ */

/* The top bits of FNV-1a alone spread sequential ids unevenly (100,000
 * dev-%06d ids: 790..2,300 a shard against 1,562), and the fullest
 * shard's lock and chains are every check-in's: mixed first
 * (tests/test_fleetstore.c, shard_index_spreads_sequential_ids).  Only
 * the shard: the buckets and the poll jitter keep h as it is. */
int fleet_shard_index(uint64_t h)
{
	return (int)(fleet_hash_mix(h) >> (64 - FLEET_SHARD_BITS));
}

struct shard *fleet_shard(struct fleet *f, uint64_t h)
{
	return &f->shards[fleet_shard_index(h)];
}

struct device *fleet_device_find_locked(struct shard *s, const char *id, uint64_t h)
{
	if (!s->nb)
		return NULL;
	for (struct device *d = s->b[h & (s->nb - 1)]; d; d = d->next)
		if (d->hash == h && !strcmp(d->id, id))
			return d;
	return NULL;
}

struct device *fleet_device_new_locked(struct fleet *f, struct shard *s, const char *id, uint64_t h)
{
	size_t len = strlen(id);
	struct device *d = fleet_node_alloc(f, sizeof(*d) + len + 1);
	memcpy(d->id, id, len + 1);
	d->hash = h;
	if (s->n + 1 > s->nb) {
		size_t nb = s->nb ? s->nb * 2 : 64;
		struct device **b = xcalloc(nb, sizeof(*b));
		for (size_t i = 0; i < s->nb; i++) {
			struct device *x = s->b[i], *next;
			for (; x; x = next) {
				next = x->next;
				x->next = b[x->hash & (nb - 1)];
				b[x->hash & (nb - 1)] = x;
			}
		}
		free(s->b);
		s->b = b;
		s->nb = nb;
	}
	d->next = s->b[h & (s->nb - 1)];
	s->b[h & (s->nb - 1)] = d;
	s->n++;
	return d;
}

void fleet_device_mark_locked(struct shard *s, struct device *d)
{
	if (d->dirty)
		return;
	d->dirty = 1;
	d->dirty_next = s->dirty;
	s->dirty = d;
}

/* The flag slot for version v (created, evicting the oldest slot that is
 * not the running version, when absent). */
struct vflag *fleet_vflag(struct device *d, const char *v)
{
	int victim = -1;
	for (int i = 0; i < FLEET_NVFLAGS; i++) {
		if (d->vf[i].version == v)
			return &d->vf[i];
		if (!d->vf[i].version && victim < 0)
			victim = i;
	}
	if (victim < 0) {
		/* all used: drop slot 0 (the oldest) unless it is the running version */
		int drop = d->vf[0].version == d->version ? 1 : 0;
		memmove(&d->vf[drop], &d->vf[drop + 1], (FLEET_NVFLAGS - drop - 1) * sizeof(d->vf[0]));
		victim = FLEET_NVFLAGS - 1;
	}
	d->vf[victim].version = v;
	d->vf[victim].flags = 0;
	d->vf[victim].uncounted = 0;
	return &d->vf[victim];
}

/* The flags of version v, when d keeps any (never creates a slot). */
uint32_t fleet_vflags_of(const struct device *d, const char *v)
{
	for (int i = 0; i < FLEET_NVFLAGS; i++)
		if (d->vf[i].version == v)
			return d->vf[i].flags;
	return 0;
}

/* The device now runs version v: move its `devices` count and forget the
 * flags of every other version. */
void fleet_count_offers_locked(struct fleet *f, struct device *d)
{
	for (int i = 0; i < FLEET_NVFLAGS; i++)
		if (d->vf[i].version && (d->vf[i].uncounted & FL_OFFERED)) {
			fleet_agg_add(f, d, d->vf[i].version, offsetof(struct fleet_agg, offered), 1, 1);
			d->vf[i].uncounted = 0;
		}
}

void fleet_device_set_version_locked(struct fleet *f, struct device *d, const char *v)
{
	struct vflag keep = { NULL, 0, 0 };
	if (d->version == v)
		return;
	fleet_count_offers_locked(f, d); /* before the flags go */
	if (d->version)
		fleet_agg_add(f, d, d->version, offsetof(struct fleet_agg, devices), -1, 0);
	for (int i = 0; i < FLEET_NVFLAGS; i++)
		if (d->vf[i].version == v)
			keep = d->vf[i];
	memset(d->vf, 0, sizeof(d->vf));
	d->vf[0] = keep;
	d->prev_version = d->version;
	d->version = v;
	fleet_agg_add(f, d, v, offsetof(struct fleet_agg, devices), 1, 0);
}

static int tags_equal(const struct device *d, const char *const *tags, size_t n)
{
	if (d->ntags != n)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (d->tags[i] != tags[i])
			return 0;
	return 1;
}

void fleet_device_set_tags_locked(struct device *d, const char *const *tags, size_t n)
{
	fleet_device_free_tags(d);
	d->tags = !n ? NULL : n <= FLEET_TAGS_INLINE ? d->tags_inline : xmalloc(n * sizeof(*tags));
	if (n)
		memcpy(d->tags, tags, n * sizeof(*tags));
	d->ntags = (uint8_t)n;
}

void fleet_device_free_tags(struct device *d)
{
	if (d->tags != d->tags_inline)
		free(d->tags);
	d->tags = NULL;
}

static int cmp_ptr_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

void fleet_set_flags(struct fleet *f, fleet_flags_fn fn, void *ctx)
{
	if (!f)
		return;
	if (fn)
		f->flags_ctx = ctx;
	__atomic_store_n(&f->flags_fn, fn, __ATOMIC_RELEASE);
}

/* ---- check-ins (the offer itself: fleet_offer.c) -------------------------- */

static int field_str(const struct fleet_ckbody *b, int which, const char **out, int (*valid)(const char *),
		     const char *what)
{
	static const char *const names[FCK_NSTR] = { "device", "product", "hardware", "bootloader", "version", "slot" };
	if (b->kind[which] == FCK_ABSENT)
		return ota_error_set(OTA_EINVAL, "%s: missing", names[which]);
	if (b->kind[which] != FCK_STRING)
		return ota_error_set(OTA_EINVAL, "%s: must be a string", names[which]);
	*out = b->str[which];
	if (valid && !valid(*out))
		return ota_error_set(OTA_EINVAL, "%s: must be %s", names[which], what);
	return 0;
}

static int bl_valid(const char *s)
{
	uint32_t v[3];
	return fleet_xyz_parse(s, v) == 0;
}

/* id_hash: the device id's fleet_fnv (the check-in has it already) */
static int64_t jitter(uint64_t id_hash, int64_t now, int64_t poll)
{
	uint64_t h = fleet_fnv(&now, sizeof(now), id_hash);
	int64_t j;
	j = (int64_t)(h % 2001) - 1000; /* -1000..1000 per 10000: +-10 % */
	return poll + poll * j / 10000;
}

/* time_scale as jansson writes a real ("1.0", never "1": devices read a
 * real), made again only when the scale changes (per thread: no lock) */
static const char *scale_text(void)
{
	static __thread double last = -1;
	static __thread char text[40];
	double now = clock_scale();
	if (now != last) {
		json_t *j = json_real(now);
		char *t = json_dumps(j, JSON_ENCODE_ANY);
		snprintf(text, sizeof(text), "%s", t ? t : "1.0");
		free(t);
		json_decref(j);
		last = now;
	}
	return text;
}

/* A known device checking in as it did before (the common case): its
 * interned strings, admitted when it first named them, stand for the
 * body's, so the check-in skips admission and interning (and their locks).
 * 1 when product, hardware, bootloader, version and (without a tag
 * allowlist, which is checked per tag) the tags all match; then the
 * pointers and the tags (tags, ntags) are the device's.  d may be NULL (a
 * device not seen yet: 0); its shard is locked. */
static int as_before_locked(struct fleet *f, const struct device *d, const char **product, const char **hardware,
			    const char **bootloader, const char **version, const struct fleet_ckbody *b,
			    const char **tags, size_t *ntags)
{
	size_t n = b->tags_kind == FCK_OBJECT ? b->ntags : 0;
	int same;

	if (!d || !d->product || !d->hardware || !d->bootloader || !d->version || strcmp(d->product, *product) ||
	    strcmp(d->hardware, *hardware) || strcmp(d->bootloader, *bootloader) || strcmp(d->version, *version))
		return 0;
	same = n == d->ntags && (!n || !f->tag_allow);
	/* keys are unique (duplicates are refused) and so are the device's
	 * tags: the same count and each found is the same set */
	for (size_t k = 0; same && k < n; k++) {
		const char *key = b->tag_key[k];
		size_t kl = strlen(key);
		int hit = 0;
		for (size_t i = 0; i < d->ntags && !hit; i++)
			hit = !strncmp(d->tags[i], key, kl) && d->tags[i][kl] == '=' && !strcmp(d->tags[i] + kl + 1, b->tag_val[k]);
		same = hit;
	}
	if (!same)
		return 0;
	*product = d->product;
	*hardware = d->hardware;
	*bootloader = d->bootloader;
	*version = d->version;
	if (n)
		memcpy(tags, d->tags, n * sizeof(*tags));
	*ntags = n;
	return 1;
}

/* The body's tags, product, hardware, bootloader and version admitted
 * and interned (a device's first check-in, or one that changes them): no
 * fleet lock held. */
static int admit_body(struct fleet *f, const struct fleet_ckbody *b, const char **product, const char **hardware,
		      const char **bootloader, const char **version, const char **tags, size_t *ntags)
{
	int rc;
	*ntags = 0;
	for (size_t i = 0; b->tags_kind == FCK_OBJECT && i < b->ntags; i++) {
		char kv[300];
		snprintf(kv, sizeof(kv), "%s=%s", b->tag_key[i], b->tag_val[i]);
		if ((rc = admit(f, kv, b->tag_key[i], b->tag_val[i], NULL, &tags[*ntags])) < 0)
			return rc;
		(*ntags)++;
	}
	qsort(tags, *ntags, sizeof(tags[0]), cmp_ptr_str);
	if ((rc = admit(f, *product, NULL, NULL, "product", product)) < 0 ||
	    (rc = admit(f, *hardware, NULL, NULL, "hardware", hardware)) < 0 ||
	    (rc = admit(f, *bootloader, NULL, NULL, "bootloader", bootloader)) < 0 ||
	    (rc = admit(f, *version, NULL, NULL, "version", version)) < 0)
		return rc;
	return 0;
}

/* The device checking in, its shard locked: the registry entry's cache
 * (filled at a device's first check-in since open) or the table's. */
static struct device *device_locked(struct shard *s, struct reg *reg, const char *id, uint64_t h)
{
	if (reg && reg->dev)
		return reg->dev;
	return fleet_device_find_locked(s, id, h);
}

/* A check-in; reg: the device's registry entry when the caller
 * authenticated it (its cached device saves a lookup), else NULL. */
static int checkin(struct fleet *f, const struct fleet_ckbody *b, struct reg *reg, char *answer, size_t cap,
		   void (*done)(void *ctx, int rc), void *ctx)
{
	const char *id = NULL, *product = NULL, *hardware = NULL, *bootloader = NULL, *version = NULL, *slot;
	const char *tags[FLEET_MAX_TAGS];
	size_t ntags = 0;
	uint32_t bl[3];
	const char *offer = NULL;
	/* the offer with presigned URLs: whatever the answer's other members
	 * leave (fleet_answer_format: ~120 bytes); a larger one keeps otacd's paths */
	char presigned[FLEET_ANSWER_MAX - 256];
	int64_t counter, crl, now = clock_now_ms();
	uint64_t h;
	struct shard *s;
	struct device *d;
	const struct exposure *x;
	const struct exp_image *img = NULL;
	int rc, rollback, changed = 0, durable = 0, n;
	char flags[640] = ""; /* issue 17: FLAGS_ANSWER_MAX (600) fits */
	fleet_flags_fn flags_fn = __atomic_load_n(&f->flags_fn, __ATOMIC_ACQUIRE);

	if (cap)
		answer[0] = 0;
	if (!b->is_object)
		return ota_error_set(OTA_EINVAL, "the body must be a JSON object");
	if ((rc = field_str(b, FCK_DEVICE, &id, fleet_device_id_valid, "1..64 characters [A-Za-z0-9._:-]")) < 0 ||
	    (rc = field_str(b, FCK_PRODUCT, &product, fleet_name_valid, "1..128 characters [A-Za-z0-9._:/+@-]")) < 0 ||
	    (rc = field_str(b, FCK_HARDWARE, &hardware, fleet_name_valid, "1..128 characters [A-Za-z0-9._:/+@-]")) < 0 ||
	    (rc = field_str(b, FCK_BOOTLOADER, &bootloader, bl_valid, "X.Y.Z")) < 0 ||
	    (rc = field_str(b, FCK_VERSION, &version, fleet_version_valid,
			    "a version (1..64 characters [0-9A-Za-z.+_-], starting with a digit)")) < 0)
		return rc;
	fleet_xyz_parse(bootloader, bl);
	if (b->counter_kind == FCK_ABSENT)
		return ota_error_set(OTA_EINVAL, "security_counter: missing");
	if (b->counter_kind != FCK_INTEGER || b->counter < 0)
		return ota_error_set(OTA_EINVAL, "security_counter: must be an integer >= 0");
	counter = b->counter;
	slot = b->str[FCK_SLOT];
	if (b->kind[FCK_SLOT] != FCK_ABSENT &&
	    (b->kind[FCK_SLOT] != FCK_STRING || (strcmp(slot, "confirmed") && strcmp(slot, "testing"))))
		return ota_error_set(OTA_EINVAL, "slot: must be \"confirmed\" or \"testing\"");
	if (b->tags_kind != FCK_ABSENT && b->tags_kind != FCK_NULL) {
		if (b->tags_kind != FCK_OBJECT)
			return ota_error_set(OTA_EINVAL, "tags: must be an object of strings");
		if (b->ntags > FLEET_MAX_TAGS)
			return ota_error_set(OTA_EINVAL, "tags: at most %d tags", FLEET_MAX_TAGS);
		for (size_t i = 0; i < b->ntags; i++) {
			const char *key = b->tag_key[i];
			if (!b->tag_val[i] || !fleet_name_valid(b->tag_val[i]))
				return ota_error_set(OTA_EINVAL, "tags.%.64s: must be 1..128 characters [A-Za-z0-9._:/+@-]", key);
			if (!charset_ok(key, 1, 64, "._-"))
				return ota_error_set(OTA_EINVAL, "tags.%.64s: keys are 1..64 characters [A-Za-z0-9._-]", key);
		}
	}
	/* one critical section for a known device checking in as before
	 * (reg: its registry entry has its id's hash); admission and
	 * interning otherwise, with the locks let go meanwhile (they take
	 * later locks) */
	h = reg ? reg->hash : fleet_fnv(id, strlen(id), FLEET_FNV_BASIS);
	s = fleet_shard(f, h);
	pthread_rwlock_rdlock(&f->exp_lock);
	pthread_mutex_lock(&s->mu);
	d = device_locked(s, reg, id, h);
	if (!reg || !as_before_locked(f, d, &product, &hardware, &bootloader, &version, b, tags, &ntags)) {
		pthread_mutex_unlock(&s->mu);
		pthread_rwlock_unlock(&f->exp_lock);
		if ((rc = admit_body(f, b, &product, &hardware, &bootloader, &version, tags, &ntags)) < 0)
			return rc;
		pthread_rwlock_rdlock(&f->exp_lock);
		pthread_mutex_lock(&s->mu);
		d = device_locked(s, reg, id, h);
	}
	if (!d) {
		d = fleet_device_new_locked(f, s, id, h);
		/* bounds: a device first seen may claim one poll interval of uptime */
		d->uptime_until = now - f->cfg_poll_ms;
		d->product = product;
		fleet_device_set_tags_locked(d, tags, ntags);
		fleet_device_set_version_locked(f, d, version);
		changed = 1;
	} else if (d->product != product || !tags_equal(d, tags, ntags)) {
		/* regroup: its cohorts changed, so move its `devices` count */
		fleet_agg_add(f, d, d->version, offsetof(struct fleet_agg, devices), -1, 0);
		fleet_count_offers_locked(f, d); /* in the cohorts it had */
		if (d->product != product)
			memset(d->vf, 0, sizeof(d->vf));
		d->product = product;
		fleet_device_set_tags_locked(d, tags, ntags);
		fleet_agg_add(f, d, d->version, offsetof(struct fleet_agg, devices), 1, 0);
		fleet_device_set_version_locked(f, d, version);
		changed = 1;
	} else if (d->version != version) {
		fleet_device_set_version_locked(f, d, version);
		changed = 1;
	}
	if (d->hardware != hardware || d->bootloader != bootloader || d->counter != counter) {
		d->hardware = hardware;
		d->bootloader = bootloader;
		memcpy(d->bl, bl, sizeof(bl));
		d->counter = counter;
		changed = 1;
	}
	/* a new device, or one whose row or counters change: answered once
	 * durable (below).  last_seen alone is never logged: the device's
	 * next row or the next snapshot (started within one poll interval,
	 * fleet_store.c) carries it */
	durable = changed;
	d->last_seen = now;
	if (!changed)
		fleet_store_seen(f, now);
	if (reg)
		reg->dev = d;
	x = fleet_decide(f, d, &img, &rollback);
	if (x) {
		struct vflag *vf = fleet_vflag(d, x->version);
		if (!(vf->flags & FL_OFFERED)) {
			/* credited to the step that exposed it, for good */
			vf->flags = (vf->flags & ((1u << FL_GEN_SHIFT) - 1)) | FL_OFFERED |
				    (rollback ? 0 : fleet_exposure_gen(x, d) << FL_GEN_SHIFT);
			vf->uncounted |= FL_OFFERED; /* counted with its row (fleet_store.c) */
			changed = durable = 1;
		}
	}
	if (changed)
		fleet_device_mark_locked(s, d);
	if (flags_fn) /* issue 17: the device's feature flags, from its tags as they are now */
		flags_fn(f->flags_ctx, d->product, d->id, (const char *const *)d->tags, d->ntags, flags, sizeof(flags));
	pthread_mutex_unlock(&s->mu);
	offer = x ? img->offer[rollback ? 1 : 0] : "null";
	/* issue 15: with a patch from the version the device runs */
	for (size_t k = 0; x && k < img->ndeltas; k++)
		if (exp_delta_applies(&img->deltas[k], d->version))
			offer = img->deltas[k].offer[rollback ? 1 : 0];
	if (x) /* issue 15: presigned S3 URLs (the image's, the patch's) are made per check-in */
		offer = origin_offer_text(presigned, sizeof(presigned), offer);
	/* the offer's text lives with the exposure: copied under exp_lock */
	/* issue 13: the held revocation list's number; a device fetches
	 * GET /device/v1/revocations when it is above the one it holds */
	crl = pki_trust_crl_number();
	n = fleet_answer_format(answer, cap, now, scale_text(), jitter(h, now, f->cfg_poll_ms), offer, crl, flags);
	if (n < 0 && flags[0]) /* the offer comes first: the flags wait for a check-in with room */
		n = fleet_answer_format(answer, cap, now, scale_text(), jitter(h, now, f->cfg_poll_ms), offer, crl, NULL);
	pthread_rwlock_unlock(&f->exp_lock);
	if (n < 0 || (size_t)n >= cap) /* FLEET_ANSWER_MAX holds any (offer_compile) */
		return ota_error_set(OTA_ERROR, "check-in answer larger than %zu bytes", cap);
	if (!durable)
		return 0;
	/* the commit that follows this submission writes the device's row and
	 * its counters (marked dirty above, before the batch was queued) */
	{
		struct batch *bt = xcalloc(1, sizeof(*bt));
		bt->done = done;
		bt->ctx = ctx;
		fleet_store_submit(f, bt);
	}
	return 1;
}

/* ---- synchronous callers ---------------------------------------------- */

void fleet_sync_done(void *ctx, int rc)
{
	struct fleet_sync *w = ctx;
	pthread_mutex_lock(&w->mu);
	w->done = 1;
	w->rc = rc;
	if (rc < 0)
		snprintf(w->msg, sizeof(w->msg), "%s", ota_error_last());
	pthread_cond_signal(&w->cond);
	pthread_mutex_unlock(&w->mu);
}

/* Wait for the writer's done callback; its code (and message). */
int fleet_sync_finish(struct fleet_sync *w)
{
	pthread_mutex_lock(&w->mu);
	while (!w->done)
		pthread_cond_wait(&w->cond, &w->mu);
	pthread_mutex_unlock(&w->mu);
	pthread_mutex_destroy(&w->mu);
	pthread_cond_destroy(&w->cond);
	return w->rc < 0 ? ota_error_set(w->rc, "%s", w->msg) : 0;
}

/* ---- check-in entry points --------------------------------------------- */

int fleet_checkin_text_async(struct fleet *f, const json_t *body, char *answer, size_t cap,
			     void (*done)(void *ctx, int rc), void *ctx)
{
	struct fleet_ckbody b;
	fleet_ckbody_from_json(&b, body);
	return fleet_checkin_body_trusted_async(f, &b, answer, cap, done, ctx);
}

int fleet_checkin_body_trusted_async(struct fleet *f, const struct fleet_ckbody *b, char *answer, size_t cap,
				     void (*done)(void *ctx, int rc), void *ctx)
{
	return checkin(f, b, NULL, answer, cap, done, ctx);
}

int fleet_checkin_body_async(struct fleet *f, const struct fleet_ckbody *b, const char *token, char *answer,
			     size_t cap, void (*done)(void *ctx, int rc), void *ctx)
{
	struct reg *reg;
	int rc = fleet_device_auth_reg(f, b->is_object && b->kind[FCK_DEVICE] == FCK_STRING ? b->str[FCK_DEVICE] : NULL,
				       token, &reg);
	if (cap)
		answer[0] = 0;
	return rc < 0 ? rc : checkin(f, b, reg, answer, cap, done, ctx);
}

int fleet_checkin_auth_text_async(struct fleet *f, const json_t *body, const char *token, char *answer, size_t cap,
				  void (*done)(void *ctx, int rc), void *ctx)
{
	struct fleet_ckbody b;
	fleet_ckbody_from_json(&b, body);
	return fleet_checkin_body_async(f, &b, token, answer, cap, done, ctx);
}

int fleet_checkin_async(struct fleet *f, const json_t *body, json_t **answer, void (*done)(void *ctx, int rc),
			void *ctx)
{
	char text[FLEET_ANSWER_MAX];
	int rc = fleet_checkin_text_async(f, body, text, sizeof(text), done, ctx);
	*answer = rc < 0 ? NULL : json_loads(text, 0, NULL);
	return rc;
}

int fleet_checkin(struct fleet *f, const json_t *body, json_t **answer)
{
	struct fleet_sync w = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, "" };
	int rc = fleet_checkin_async(f, body, answer, fleet_sync_done, &w);
	if (rc <= 0)
		return rc;
	if ((rc = fleet_sync_finish(&w)) < 0) {
		json_decref(*answer);
		*answer = NULL;
	}
	return rc;
}

/* ---- Prometheus text ---------------------------------------------------- */

static const struct {
	const char *name, *type, *help;
	size_t off;
	int real;
} metric_defs[] = {
	{ "otacd_fleet_devices", "gauge", "Devices whose current version is this one.", offsetof(struct fleet_agg, devices), 0 },
	{ "otacd_fleet_offered", "gauge", "Distinct devices offered this version.", offsetof(struct fleet_agg, offered), 0 },
	{ "otacd_fleet_downloads", "gauge", "Distinct devices that downloaded this version.", offsetof(struct fleet_agg, downloads), 0 },
	{ "otacd_fleet_installs", "gauge", "Distinct devices that installed this version.", offsetof(struct fleet_agg, installs), 0 },
	{ "otacd_fleet_boot_ok", "gauge", "Distinct devices that booted and confirmed this version.", offsetof(struct fleet_agg, boot_ok), 0 },
	{ "otacd_fleet_boot_fail", "gauge", "Distinct devices that failed to boot this version.", offsetof(struct fleet_agg, boot_fail), 0 },
	{ "otacd_fleet_reverts", "gauge", "Distinct devices that reverted this version.", offsetof(struct fleet_agg, reverts), 0 },
	{ "otacd_fleet_reporting", "gauge", "Distinct devices that reported about this version.", offsetof(struct fleet_agg, reporting), 0 },
	{ "otacd_fleet_crashed", "gauge", "Distinct devices with at least one crash on this version.", offsetof(struct fleet_agg, crashed), 0 },
	{ "otacd_fleet_crashes_total", "counter", "Crashes reported on this version.", offsetof(struct fleet_agg, crashes), 0 },
	{ "otacd_fleet_device_hours_total", "counter", "Device-hours of uptime reported on this version.", offsetof(struct fleet_agg, device_hours), 1 },
	{ "otacd_fleet_battery_mah_total", "counter", "Battery mAh used on this version.", offsetof(struct fleet_agg, battery_mah), 1 },
};

int fleet_metrics_text(struct fleet *f, char **out, size_t *len)
{
	struct buf b = BUF_INIT;
	struct agg **all = NULL;
	struct fleet_agg *vals = NULL;
	size_t n = 0;

	pthread_rwlock_rdlock(&f->agg_lock);
	all = xmalloc((f->agg_n + 1) * sizeof(*all));
	vals = xmalloc((f->agg_n + 1) * sizeof(*vals));
	for (struct agg *a = f->agg_all; a; a = a->all_next) {
		if (a->cohort[0] == '@')
			continue;   /* a step's own devices: for gates, not dashboards */
		all[n] = a;
		agg_snapshot(a, &vals[n]);
		n++;
	}
	pthread_rwlock_unlock(&f->agg_lock);
	for (size_t m = 0; m < OTA_ARRAY_SIZE(metric_defs); m++) {
		buf_printf(&b, "# HELP %s %s\n# TYPE %s %s\n", metric_defs[m].name, metric_defs[m].help,
			   metric_defs[m].name, metric_defs[m].type);
		for (size_t i = 0; i < n; i++) {
			const char *p = (const char *)&vals[i] + metric_defs[m].off;
			/* label values are from validated charsets: no quote, backslash or newline */
			buf_printf(&b, "%s{product=\"%s\",version=\"%s\",cohort=\"%s\"} ", metric_defs[m].name,
				   all[i]->product, all[i]->version, all[i]->cohort);
			if (metric_defs[m].real)
				buf_printf(&b, "%.17g\n", *(const double *)(const void *)p);
			else
				buf_printf(&b, "%" PRId64 "\n", *(const int64_t *)(const void *)p);
		}
	}
	{
		struct fleet_lag lag;
		fleet_lag(f, &lag);
		buf_printf(&b, "# HELP otacd_fleet_lag_seconds Age of the oldest accepted report not yet in the committed"
			   " aggregates (0: none pending).\n# TYPE otacd_fleet_lag_seconds gauge\notacd_fleet_lag_seconds %.3f\n",
			   (double)lag.lag_ms / 1000.0);
	}
	{
		struct fleet_store_stats st;
		fleet_store_stats(f, &st);
		buf_printf(&b, "# HELP otacd_fleet_rounds_total fleet.db commits that carried queued batches (the writer's"
			   " rounds).\n# TYPE otacd_fleet_rounds_total counter\notacd_fleet_rounds_total %" PRId64 "\n",
			   st.rounds);
		buf_printf(&b, "# HELP otacd_fleet_round_batches_total Batches (reports, registrations, device changes)"
			   " those rounds committed.\n# TYPE otacd_fleet_round_batches_total counter\n"
			   "otacd_fleet_round_batches_total %" PRId64 "\n", st.batches);
		buf_printf(&b, "# HELP otacd_fleet_snapshots_total Device snapshots of fleet.db completed.\n"
			   "# TYPE otacd_fleet_snapshots_total counter\notacd_fleet_snapshots_total %" PRId64 "\n",
			   st.snapshots);
		buf_printf(&b, "# HELP otacd_fleet_snapshot_last_seconds How long the last device snapshot took, from its"
			   " start to the commit that made it current.\n# TYPE otacd_fleet_snapshot_last_seconds gauge\n"
			   "otacd_fleet_snapshot_last_seconds %.3f\n", (double)st.snap_ms / 1000.0);
	}
	free(all);
	free(vals);
	*len = b.len;
	*out = buf_detach(&b);
	if (!*out)
		*out = xstrdup("");
	return 0;
}
