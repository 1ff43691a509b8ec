/*
 * api_cache.c - answers of the status page's list routes, kept until the
 * database changes.
 *
 * Every open status page asks the same few questions (runs, pipelines,
 * releases, rollouts), and asks them again, all at once, after each event.
 * Building each answer means a SQLite snapshot, a few hundred jansson
 * objects and a serialisation, which on 64 threads is mostly malloc and lock
 * contention.  So routes marked `cached` (answers made from the database
 * alone, the same for every reader) keep their last 200 answer per URL and
 * query, tagged with the store_generation() read before it was built:
 *
 *   - the tag still current: the kept body is sent again, by reference (a
 *     counted, immutable buffer), in a response of this request's own so
 *     that it carries the request's X-Request-Id;
 *   - another thread is building the same answer for the current tag: wait
 *     for it (one build per change, not one per waiting client);
 *   - otherwise build it, by running the route's handler as usual.
 *
 * A commit bumps the generation only after it is visible, and the tag is
 * read before the handler's snapshot, so a kept answer is never older than
 * the last commit made before its tag was read (store.h).
 *
 * The slots are a small array searched linearly under one mutex: the page
 * asks about a handful of URLs, and the work under the lock is a string
 * compare and a reference count.
 */
#include "api_int.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../common/util.h"
#include "../store.h"

#define CACHE_WAIT_MS 2000   /* give up waiting for a slow build after this */

/* A kept answer's body: immutable once made, freed by its last holder
 * (the slot, or a response libmicrohttpd is still sending). */
struct cached_body {
	atomic_int refs;
	const char *type;            /* a string literal (api.c's queue) */
	size_t len;
	char data[];
};

struct api_cache_slot {
	char *key;                   /* URL '?' query, NULL when free */
	uint64_t gen;                /* store_generation() before the build */
	struct cached_body *body;    /* the answer; NULL while building */
	int building;
	uint64_t used;               /* for eviction: the least recently used goes */
};

struct api_cache {
	pthread_mutex_t lock;
	pthread_cond_t built;
	uint64_t clock;
	struct api_cache_slot slot[API_CACHE_SLOTS];
};

static void body_unref(void *cls)
{
	struct cached_body *b = cls;
	if (b && atomic_fetch_sub(&b->refs, 1) == 1)
		free(b);
}

/* A response of this request's own over the shared body. */
static struct MHD_Response *body_response(struct cached_body *b)
{
	struct MHD_Response *resp;
	atomic_fetch_add(&b->refs, 1);
	resp = MHD_create_response_from_buffer_with_free_callback_cls(b->len, b->data, body_unref, b);
	if (!resp) {
		body_unref(b);
		return NULL;
	}
	MHD_add_response_header(resp, "Content-Type", b->type);
	MHD_add_response_header(resp, "Cache-Control", "no-store");
	return resp;
}

struct api_cache *api_cache_new(void)
{
	struct api_cache *c = xcalloc(1, sizeof(*c));
	pthread_condattr_t ca;

	pthread_mutex_init(&c->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&c->built, &ca);
	pthread_condattr_destroy(&ca);
	return c;
}

void api_cache_free(struct api_cache *c)
{
	if (!c)
		return;
	for (size_t i = 0; i < API_CACHE_SLOTS; i++) {
		free(c->slot[i].key);
		body_unref(c->slot[i].body);
	}
	pthread_cond_destroy(&c->built);
	pthread_mutex_destroy(&c->lock);
	free(c);
}

struct key_build {
	struct buf b;
	int args;
};

static enum MHD_Result add_arg(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
	struct key_build *k = cls;
	(void)kind;
	if (strcmp(key, "access_token") != 0) /* who asks, not what */
		buf_printf(&k->b, "%c%s=%s", k->args++ ? '&' : '?', key, value ? value : "");
	return MHD_YES;
}

/* The URL and then its query arguments in the order given, so no query can
 * make two paths collide.  The buffer has no cap, so every argument is in
 * the key (a capped one would drop the arguments past the cap and let two
 * queries share an answer); the request line is bounded already, by
 * libmicrohttpd's connection pool. */
static char *cache_key(struct api_req *r)
{
	struct key_build k = { BUF_INIT, 0 };

	buf_printf(&k.b, "%s", r->url);
	MHD_get_connection_values(r->conn, MHD_GET_ARGUMENT_KIND, add_arg, &k);
	return buf_detach(&k.b);
}

static struct api_cache_slot *find(struct api_cache *c, const char *key)
{
	for (size_t i = 0; i < API_CACHE_SLOTS; i++)
		if (c->slot[i].key && !strcmp(c->slot[i].key, key))
			return &c->slot[i];
	return NULL;
}

/* A free slot, or the least recently used one not being built; NULL if
 * every slot is being built (then the caller just builds uncached). */
static struct api_cache_slot *claim(struct api_cache *c)
{
	struct api_cache_slot *best = NULL;
	for (size_t i = 0; i < API_CACHE_SLOTS; i++) {
		struct api_cache_slot *s = &c->slot[i];
		if (!s->key)
			return s;
		if (!s->building && (!best || s->used < best->used))
			best = s;
	}
	return best;
}

static void slot_clear(struct api_cache_slot *s)
{
	free(s->key);
	s->key = NULL;
	body_unref(s->body);
	s->body = NULL;
	s->building = 0;
}

enum MHD_Result api_cache_begin(struct api *a, struct api_req *r, int *answered)
{
	struct api_cache *c = a->cache;
	uint64_t gen = store_generation();
	char *key = cache_key(r);
	struct api_cache_slot *s;
	enum MHD_Result ret = MHD_YES;
	struct timespec deadline;
	int waited_out = 0;

	*answered = 0;
	clock_gettime(CLOCK_MONOTONIC, &deadline);
	deadline.tv_sec += CACHE_WAIT_MS / 1000;
	pthread_mutex_lock(&c->lock);
	for (;;) {
		s = find(c, key);
		if (s && s->gen == gen && s->body) {
			struct MHD_Response *resp = body_response(s->body);
			s->used = ++c->clock;
			if (!resp)
				break; /* out of memory: build it uncached */
			ret = api_queue_response(r, MHD_HTTP_OK, resp);
			MHD_destroy_response(resp);
			*answered = 1;
			goto out;
		}
		if (s && s->gen == gen && s->building && !waited_out) {
			waited_out = pthread_cond_timedwait(&c->built, &c->lock, &deadline) != 0;
			continue;
		}
		break;
	}
	/* build it: this thread's answer goes into the slot (api_cache_keep) */
	if (s && s->building)
		goto out; /* someone else's slow build: answer uncached */
	if (!s && !(s = claim(c)))
		goto out;
	slot_clear(s);
	s->key = key;
	key = NULL;
	s->gen = gen;
	s->building = 1;
	s->used = ++c->clock;
	r->cache_slot = s;
out:
	pthread_mutex_unlock(&c->lock);
	free(key);
	return ret;
}

void api_cache_keep(struct api *a, struct api_req *r, unsigned status, const char *type, const char *data,
		    size_t len)
{
	struct api_cache *c = a->cache;
	struct api_cache_slot *s = r->cache_slot;
	struct cached_body *b = NULL;

	if (!s)
		return;
	if (status == MHD_HTTP_OK) {
		b = xmalloc(sizeof(*b) + len + 1);
		atomic_init(&b->refs, 1);
		b->type = type;
		b->len = len;
		memcpy(b->data, data, len);
		b->data[len] = '\0';
	}
	pthread_mutex_lock(&c->lock);
	if (b)
		s->body = b;
	else
		slot_clear(s); /* errors are not kept: the next reader retries */
	s->building = 0;
	r->cache_slot = NULL;
	pthread_cond_broadcast(&c->built);
	pthread_mutex_unlock(&c->lock);
}

void api_cache_abandon(struct api *a, struct api_req *r)
{
	struct api_cache *c = a->cache;
	if (!r->cache_slot)
		return;
	pthread_mutex_lock(&c->lock);
	slot_clear(r->cache_slot);
	r->cache_slot = NULL;
	pthread_cond_broadcast(&c->built);
	pthread_mutex_unlock(&c->lock);
}
