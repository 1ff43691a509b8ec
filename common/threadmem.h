/*
 * threadmem.h - per-thread memory allocated at a thread's first use.
 *
 * A large `static __thread` array costs its size in every thread of the
 * process, used or not: glibc zero-fills each thread's static TLS block when
 * the thread starts, which makes those pages resident.  otacd runs ~19
 * threads (engine, controllers, workers, libmicrohttpd's pools), and 21 KB
 * of caches only the device API's workers use made ~0.4 MB of its idle
 * resident set (issue 18).  Such a cache is instead a `__thread` pointer,
 * filled on the thread's first use by ota_thread_block_alloc() and freed
 * when the thread exits:
 *
 *     static struct ota_thread_block cache_block;   (zero: ready to use)
 *     static __thread struct slot *cache;
 *     ...
 *     if (!cache)
 *             cache = ota_thread_block_alloc(&cache_block, N * sizeof(*cache), &cache);
 *
 * At the thread's exit the block is freed and the pointer set back to NULL,
 * so code that runs later in that exit (another key's destructor freeing
 * JSON, say) sees no cache rather than freed memory.
 */
#ifndef OTA_THREADMEM_H
#define OTA_THREADMEM_H

#include <pthread.h>
#include <stddef.h>

struct ota_thread_block {
	int ready;            /* key created (atomic) */
	pthread_key_t key;    /* frees each thread's block at its exit */
};

/* size zeroed bytes (16-byte aligned) for the calling thread; never NULL
 * (out of memory aborts, as xcalloc does).  slot is the address of the
 * __thread pointer the caller keeps it in: at the thread's exit the block is
 * freed and *slot set to NULL.  Call once per thread. */
void *ota_thread_block_alloc(struct ota_thread_block *b, size_t size, void *slot);

#endif
