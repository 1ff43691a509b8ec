/*
 * sensor.c - the simulated sensor: triangle wave plus LFSR noise.
 *
 * Integer arithmetic only, so the Cortex-M3 (no FPU) and the host agree
 * bit for bit.
 */
#include "sensor.h"

#define BASE_CENTI_C 2150 /* 21.50 degC */
#define TRI_PERIOD   64u
#define TRI_STEP     6 /* hundredths of a degree per sample */

void sensor_init(struct sensor *s)
{
	s->lfsr = SENSOR_LFSR_SEED;
	s->seq = 0;
}

uint16_t sensor_lfsr_next(uint16_t lfsr)
{
	uint16_t lsb = lfsr & 1u;

	lfsr >>= 1;
	if (lsb)
		lfsr ^= 0xB400u;
	return lfsr;
}

void sensor_sample(struct sensor *s, struct sample *out)
{
	int32_t t = (int32_t)(s->seq % TRI_PERIOD);
	/* 0 .. 32 .. 1 over a period, centred on zero: -96 .. +96 */
	int32_t tri = ((t < (int32_t)(TRI_PERIOD / 2) ? t : (int32_t)TRI_PERIOD - t) - (int32_t)(TRI_PERIOD / 4)) * TRI_STEP;
	int32_t noise;

	s->lfsr = sensor_lfsr_next(s->lfsr);
	noise = (int32_t)(s->lfsr & 0x0Fu) - 8;
	out->seq = s->seq;
	out->value = (int16_t)(BASE_CENTI_C + tri + noise);
	s->seq++;
}
