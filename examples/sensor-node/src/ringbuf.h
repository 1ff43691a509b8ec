/*
 * ringbuf.h - a ring of sensor samples between an interrupt and main().
 *
 * One producer (the SysTick interrupt, ringbuf_push) and one consumer
 * (main, ringbuf_pop): each side writes only its own index, so no lock is
 * needed on a single core.  head and tail run freely and wrap at 2^32; the
 * slot is index % RINGBUF_SIZE, which stays right across the wrap because
 * RINGBUF_SIZE is a power of two.  A push into a full ring drops the new
 * sample and counts it in `dropped` (the oldest data is what main is about
 * to read, so it is kept).
 */
#ifndef SENSOR_RINGBUF_H
#define SENSOR_RINGBUF_H

#include <stdint.h>

#define RINGBUF_SIZE 16u /* a power of two */

struct sample {
	uint32_t seq;  /* sample number since boot */
	int16_t value; /* temperature in hundredths of a degree Celsius */
};

struct ringbuf {
	struct sample slot[RINGBUF_SIZE];
	volatile uint32_t head; /* next slot to write; only the producer writes it */
	volatile uint32_t tail; /* next slot to read; only the consumer writes it */
	volatile uint32_t dropped;
};

/* Empty the ring. */
void ringbuf_init(struct ringbuf *rb);

/* Add a sample: 0, or -1 (and dropped + 1) when the ring is full. */
int ringbuf_push(struct ringbuf *rb, const struct sample *s);

/* Take the oldest sample into *out: 0, or -1 when the ring is empty. */
int ringbuf_pop(struct ringbuf *rb, struct sample *out);

/* Samples waiting to be read, 0 .. RINGBUF_SIZE. */
uint32_t ringbuf_count(const struct ringbuf *rb);

#endif
