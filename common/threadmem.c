/*
 * threadmem.c - ota_thread_block_alloc; see threadmem.h for why.
 */
#include "threadmem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

/* before each block: where its owner keeps the pointer (16 bytes, so the
 * block keeps malloc's alignment) */
union head {
	void *slot;
	_Alignas(16) char pad[16];
};

static pthread_mutex_t key_mu = PTHREAD_MUTEX_INITIALIZER;

/* the key's destructor, in the exiting thread: its __thread slot is still
 * there to clear */
static void block_free(void *p)
{
	union head *h = p;
	void *null = NULL;

	memcpy(h->slot, &null, sizeof(null));
	free(h);
}

void *ota_thread_block_alloc(struct ota_thread_block *b, size_t size, void *slot)
{
	union head *h;

	if (!__atomic_load_n(&b->ready, __ATOMIC_ACQUIRE)) {
		pthread_mutex_lock(&key_mu);
		if (!b->ready) {
			if (pthread_key_create(&b->key, block_free) != 0) {
				fprintf(stderr, "otacd: threadmem: no pthread key left for a per-thread block\n");
				abort();
			}
			__atomic_store_n(&b->ready, 1, __ATOMIC_RELEASE);
		}
		pthread_mutex_unlock(&key_mu);
	}
	h = xcalloc(1, sizeof(*h) + size);
	h->slot = slot;
	if (pthread_setspecific(b->key, h) != 0) {
		fprintf(stderr, "otacd: threadmem: cannot register a per-thread block\n");
		abort();
	}
	return h + 1;
}
