/*
 * selftest.c - known-answer checks run at boot (see selftest.h).
 *
 * Each check returns 0 or 1; selftest_run() stops at the first failure and
 * names it, so the UART line "SELFTEST FAIL ring-wrap" says what broke.
 */
#include "selftest.h"

#include <stddef.h>

#include "crc16.h"
#include "frame.h"
#include "ringbuf.h"
#include "sensor.h"

static int check_crc(void)
{
	static const uint8_t a = 'A';

	return crc16_ccitt("123456789", 9) == 0x29B1u && crc16_ccitt(&a, 1) == 0xB915u &&
	       crc16_ccitt(NULL, 0) == 0xFFFFu;
}

/* Push past capacity (two laps of the index), then drain in order. */
static int check_ring(void)
{
	static struct ringbuf rb;
	struct sample s = { 0, 0 }, got;

	ringbuf_init(&rb);
	for (uint32_t lap = 0; lap < 2; lap++) {
		for (uint32_t i = 0; i < RINGBUF_SIZE; i++) {
			s.seq = lap * 100 + i;
			if (ringbuf_push(&rb, &s) != 0)
				return 0;
		}
		if (ringbuf_push(&rb, &s) != -1 || rb.dropped != lap + 1 || ringbuf_count(&rb) != RINGBUF_SIZE)
			return 0;
		for (uint32_t i = 0; i < RINGBUF_SIZE; i++)
			if (ringbuf_pop(&rb, &got) != 0 || got.seq != lap * 100 + i)
				return 0;
		if (ringbuf_pop(&rb, &got) != -1)
			return 0;
	}
	return 1;
}

static int check_frame(void)
{
	const struct sample in = { 0x01020304u, -1234 };
	struct sample out;
	uint8_t payload[SAMPLE_PAYLOAD_LEN], buf[FRAME_MAX];
	const uint8_t *p;
	size_t len;
	int n;

	sample_pack(payload, &in);
	n = frame_encode(buf, sizeof(buf), payload, sizeof(payload));
	if (n != (int)(SAMPLE_PAYLOAD_LEN + FRAME_OVERHEAD) || frame_decode(buf, (size_t)n, &p, &len) != 0 ||
	    sample_unpack(p, len, &out) != 0 || out.seq != in.seq || out.value != in.value)
		return 0;
	buf[3] ^= 0x10u; /* one flipped bit must be caught */
	return frame_decode(buf, (size_t)n, &p, &len) == FRAME_ECRC;
}

/* The simulated sensor starts at the same point on every boot. */
static int check_sensor(void)
{
	struct sensor sn;
	struct sample s;

	sensor_init(&sn);
	sensor_sample(&sn, &s);
	return s.seq == 0 && s.value == 2150 - 96 + (int)(sensor_lfsr_next(SENSOR_LFSR_SEED) & 0x0Fu) - 8;
}

const char *selftest_run(void)
{
	static const struct {
		const char *name;
		int (*check)(void);
	} checks[] = {
		{ "crc16-known-vectors", check_crc },
		{ "ring-fill-wrap-drain", check_ring },
		{ "frame-round-trip", check_frame },
		{ "sensor-first-sample", check_sensor },
	};

	for (size_t i = 0; i < sizeof(checks) / sizeof(checks[0]); i++)
		if (!checks[i].check())
			return checks[i].name;
	return NULL;
}
