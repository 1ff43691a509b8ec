/*
 * ringbuf.c - single-producer single-consumer ring of samples.
 *
 * The slot is written before head moves (push) and read before tail moves
 * (pop); the compiler barriers keep that order, which is all a Cortex-M3/M4
 * needs between an interrupt handler and thread code on the same core.
 */
#include "ringbuf.h"

#define COMPILER_BARRIER() __asm__ volatile("" ::: "memory")

void ringbuf_init(struct ringbuf *rb)
{
	rb->head = 0;
	rb->tail = 0;
	rb->dropped = 0;
}

uint32_t ringbuf_count(const struct ringbuf *rb)
{
	return rb->head - rb->tail;
}

int ringbuf_push(struct ringbuf *rb, const struct sample *s)
{
	uint32_t head = rb->head;

	if (head - rb->tail >= RINGBUF_SIZE) {
		rb->dropped = rb->dropped + 1;
		return -1;
	}
	rb->slot[head % RINGBUF_SIZE] = *s;
	COMPILER_BARRIER();
	rb->head = head + 1;
	return 0;
}

int ringbuf_pop(struct ringbuf *rb, struct sample *out)
{
	uint32_t tail = rb->tail;

	if (rb->head == tail)
		return -1;
	*out = rb->slot[tail % RINGBUF_SIZE];
	COMPILER_BARRIER();
	rb->tail = tail + 1;
	return 0;
}
