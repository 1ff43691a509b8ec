/*
 * hashpipe.c - SHA-256 on a worker thread; see hashpipe.h.
 *
 * A ring of HASHPIPE_BLOCKS blocks and two counters: the producer fills
 * block[submitted % N] and submits it, the worker hashes
 * block[hashed % N].  A block is the producer's to fill while
 * submitted - hashed < N.  Blocks are allocated when first borrowed, so a
 * small stream costs one block.
 */
#include "hashpipe.h"

#include <openssl/evp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#include "util.h"

struct hashpipe {
	EVP_MD_CTX *md;
	char *block[HASHPIPE_BLOCKS];
	size_t len[HASHPIPE_BLOCKS];
	uint64_t submitted, hashed;    /* under lock once the worker runs */
	int started;                   /* the worker thread runs */
	int inline_only;               /* no thread could be started: hash here */
	int stop;                      /* no more blocks: the worker drains and ends */
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t changed;        /* a block submitted or hashed, or stop */
};

int hashpipe_new(struct hashpipe **out)
{
	struct hashpipe *h = xcalloc(1, sizeof(*h));

	h->md = EVP_MD_CTX_new();
	if (!h->md || EVP_DigestInit_ex(h->md, EVP_sha256(), NULL) != 1) {
		EVP_MD_CTX_free(h->md);
		free(h);
		return ota_error_set(OTA_ERROR, "SHA-256 unavailable");
	}
	pthread_mutex_init(&h->lock, NULL);
	pthread_cond_init(&h->changed, NULL);
	*out = h;
	return 0;
}

static void *worker(void *arg)
{
	struct hashpipe *h = arg;

	pthread_mutex_lock(&h->lock);
	for (;;) {
		size_t i;
		while (h->hashed == h->submitted && !h->stop)
			pthread_cond_wait(&h->changed, &h->lock);
		if (h->hashed == h->submitted)
			break; /* stopped and drained */
		i = h->hashed % HASHPIPE_BLOCKS;
		pthread_mutex_unlock(&h->lock);
		EVP_DigestUpdate(h->md, h->block[i], h->len[i]);
		pthread_mutex_lock(&h->lock);
		h->hashed++;
		pthread_cond_broadcast(&h->changed);
	}
	pthread_mutex_unlock(&h->lock);
	return NULL;
}

char *hashpipe_block(struct hashpipe *h)
{
	size_t i;

	if (h->started) {
		pthread_mutex_lock(&h->lock);
		while (h->submitted - h->hashed >= HASHPIPE_BLOCKS)
			pthread_cond_wait(&h->changed, &h->lock);
		pthread_mutex_unlock(&h->lock);
	}
	i = h->submitted % HASHPIPE_BLOCKS;
	if (!h->block[i])
		h->block[i] = xmalloc(HASHPIPE_BLOCK);
	return h->block[i];
}

void hashpipe_submit(struct hashpipe *h, size_t len, int last)
{
	size_t i = h->submitted % HASHPIPE_BLOCKS;

	if (!h->started && !h->inline_only && !last) {
		if (pthread_create(&h->thread, NULL, worker, h) == 0)
			h->started = 1;
		else
			h->inline_only = 1;
	}
	if (!h->started) {
		EVP_DigestUpdate(h->md, h->block[i], len);
		h->submitted++;
		h->hashed++;
		return;
	}
	pthread_mutex_lock(&h->lock);
	h->len[i] = len;
	h->submitted++;
	pthread_cond_broadcast(&h->changed);
	pthread_mutex_unlock(&h->lock);
}

/* Let the worker hash what is queued, then end it. */
static void stop_worker(struct hashpipe *h)
{
	if (!h->started)
		return;
	pthread_mutex_lock(&h->lock);
	h->stop = 1;
	pthread_cond_broadcast(&h->changed);
	pthread_mutex_unlock(&h->lock);
	pthread_join(h->thread, NULL);
	h->started = 0;
}

void hashpipe_final(struct hashpipe *h, unsigned char md[32])
{
	unsigned int n = 0;
	stop_worker(h);
	EVP_DigestFinal_ex(h->md, md, &n);
}

void hashpipe_free(struct hashpipe *h)
{
	if (!h)
		return;
	stop_worker(h);
	for (size_t i = 0; i < HASHPIPE_BLOCKS; i++)
		free(h->block[i]);
	EVP_MD_CTX_free(h->md);
	pthread_cond_destroy(&h->changed);
	pthread_mutex_destroy(&h->lock);
	free(h);
}
