/*
 * hashpipe.h - SHA-256 of a byte stream, computed on a worker thread while
 * the producer goes on receiving and writing.
 *
 * An artifact upload receives, writes and hashes every byte; on one thread
 * the hash alone is half the time.  With a hashpipe the producer copies
 * what it receives into blocks it borrows from the pipe, writes each full
 * block to disk and submits it; the worker hashes submitted blocks in order
 * and hands them back.  HASHPIPE_BLOCKS blocks of HASHPIPE_BLOCK bytes
 * bound the memory per stream; the producer waits only when all of them
 * are still being hashed.
 *
 * The worker starts with the first submitted block that is not the last:
 * a stream that fits in one block is hashed on the producer's thread, with
 * no thread at all.
 *
 * Usage:
 *   hashpipe_new(&h);
 *   while (data) { char *b = hashpipe_block(h); fill b; hashpipe_submit(h, len, 0); }
 *   hashpipe_submit(h, len, 1);      (the last block, possibly empty)
 *   hashpipe_final(h, md);
 *   hashpipe_free(h);                (also stops the worker if abandoned)
 *
 * One producer thread per pipe.
 */
#ifndef OTA_HASHPIPE_H
#define OTA_HASHPIPE_H

#include <stddef.h>

#define HASHPIPE_BLOCK ((size_t)512 * 1024)
#define HASHPIPE_BLOCKS 4

struct hashpipe;

int hashpipe_new(struct hashpipe **out);
/* The block to fill next (HASHPIPE_BLOCK bytes); waits for the worker to
 * hand one back when all are queued.  The same block until submitted. */
char *hashpipe_block(struct hashpipe *h);
/* The borrowed block holds len bytes; last = 1 for the stream's last. */
void hashpipe_submit(struct hashpipe *h, size_t len, int last);
/* Wait for every submitted block to be hashed; the digest into md. */
void hashpipe_final(struct hashpipe *h, unsigned char md[32]);
void hashpipe_free(struct hashpipe *h);

#endif
