/*
 * sensor.h - a simulated temperature sensor, deterministic from power-on.
 *
 * QEMU's MPS2 boards have no sensor, so the "reading" is a triangle wave
 * around 21.50 degC (period 64 samples, +/-0.96 degC) plus a little noise
 * from a 16-bit Galois LFSR.  The same sequence comes out on every boot and
 * on the host, so tests can predict it.
 */
#ifndef SENSOR_SENSOR_H
#define SENSOR_SENSOR_H

#include <stdint.h>

#include "ringbuf.h"

#define SENSOR_LFSR_SEED 0xACE1u

struct sensor {
	uint16_t lfsr; /* noise generator state; never 0 */
	uint32_t seq;  /* number of the next sample */
};

/* Power-on state: seq 0, LFSR at SENSOR_LFSR_SEED. */
void sensor_init(struct sensor *s);

/* Take the next reading into *out and advance. */
void sensor_sample(struct sensor *s, struct sample *out);

/* One step of the LFSR (taps 16, 14, 13, 11: polynomial 0xB400). */
uint16_t sensor_lfsr_next(uint16_t lfsr);

#endif
