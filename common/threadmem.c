/*
 * threadmem.c - ota_thread_block_alloc; see threadmem.h for why.
 */
#include "threadmem.h"

#include <stdio.h>
#include <stdlib.h>

#include "util.h"

static pthread_mutex_t key_mu = PTHREAD_MUTEX_INITIALIZER;

void *ota_thread_block_alloc(struct ota_thread_block *b, size_t size)
{
	void *p;

	if (!__atomic_load_n(&b->ready, __ATOMIC_ACQUIRE)) {
		pthread_mutex_lock(&key_mu);
		if (!b->ready) {
			if (pthread_key_create(&b->key, free) != 0) {
				fprintf(stderr, "otacd: threadmem: no pthread key left for a per-thread block\n");
				abort();
			}
			__atomic_store_n(&b->ready, 1, __ATOMIC_RELEASE);
		}
		pthread_mutex_unlock(&key_mu);
	}
	p = xcalloc(1, size);
	if (pthread_setspecific(b->key, p) != 0) {
		fprintf(stderr, "otacd: threadmem: cannot register a per-thread block\n");
		abort();
	}
	return p;
}
