/*
 * frame.c - framing, hex lines and the sample payload (see frame.h).
 *
 * Multi-byte fields are assembled byte by byte, so the format is the same on
 * the little-endian target and on whatever host runs the unit tests.
 */
#include "frame.h"

#include <string.h>

#include "crc16.h"

int frame_encode(uint8_t *out, size_t cap, const uint8_t *payload, size_t len)
{
	uint16_t crc;

	if (len > FRAME_MAX_PAYLOAD)
		return FRAME_ELEN;
	if (cap < len + FRAME_OVERHEAD)
		return FRAME_ESPACE;
	out[0] = FRAME_SYNC;
	out[1] = (uint8_t)len;
	if (len)
		memcpy(out + 2, payload, len);
	crc = crc16_ccitt(out + 1, len + 1);
	out[2 + len] = (uint8_t)(crc >> 8);
	out[3 + len] = (uint8_t)(crc & 0xFFu);
	return (int)(len + FRAME_OVERHEAD);
}

int frame_decode(const uint8_t *in, size_t n, const uint8_t **payload, size_t *len)
{
	size_t plen;
	uint16_t want;

	if (n < FRAME_OVERHEAD)
		return FRAME_ESHORT;
	if (in[0] != FRAME_SYNC)
		return FRAME_ESYNC;
	plen = in[1];
	if (plen > FRAME_MAX_PAYLOAD)
		return FRAME_ELEN;
	if (n < plen + FRAME_OVERHEAD)
		return FRAME_ESHORT;
	if (n > plen + FRAME_OVERHEAD)
		return FRAME_ELEN;
	want = (uint16_t)((in[2 + plen] << 8) | in[3 + plen]);
	if (crc16_ccitt(in + 1, plen + 1) != want)
		return FRAME_ECRC;
	*payload = in + 2;
	*len = plen;
	return 0;
}

int frame_to_hex(char *out, size_t cap, const uint8_t *data, size_t n)
{
	static const char digits[] = "0123456789ABCDEF";

	if (cap < 2 * n + 1)
		return FRAME_ESPACE;
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = digits[data[i] >> 4];
		out[2 * i + 1] = digits[data[i] & 0x0Fu];
	}
	out[2 * n] = '\0';
	return (int)(2 * n);
}

int frame_hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

int frame_from_hex(uint8_t *out, size_t cap, const char *hex)
{
	size_t n = strlen(hex);

	if (n % 2)
		return FRAME_ELEN;
	if (n / 2 > cap)
		return FRAME_ESPACE;
	for (size_t i = 0; i < n / 2; i++) {
		int hi = frame_hexval(hex[2 * i]), lo = frame_hexval(hex[2 * i + 1]);

		if (hi < 0 || lo < 0)
			return FRAME_ELEN;
		out[i] = (uint8_t)((hi << 4) | lo);
	}
	return (int)(n / 2);
}

void sample_pack(uint8_t out[SAMPLE_PAYLOAD_LEN], const struct sample *s)
{
	uint16_t v = (uint16_t)s->value;

	out[0] = SAMPLE_TYPE;
	out[1] = (uint8_t)(s->seq & 0xFFu);
	out[2] = (uint8_t)((s->seq >> 8) & 0xFFu);
	out[3] = (uint8_t)((s->seq >> 16) & 0xFFu);
	out[4] = (uint8_t)((s->seq >> 24) & 0xFFu);
	out[5] = (uint8_t)(v & 0xFFu);
	out[6] = (uint8_t)(v >> 8);
}

int sample_unpack(const uint8_t *payload, size_t len, struct sample *out)
{
	if (len != SAMPLE_PAYLOAD_LEN)
		return FRAME_ELEN;
	if (payload[0] != SAMPLE_TYPE)
		return FRAME_ETYPE;
	out->seq = (uint32_t)payload[1] | ((uint32_t)payload[2] << 8) | ((uint32_t)payload[3] << 16) |
		   ((uint32_t)payload[4] << 24);
	out->value = (int16_t)(uint16_t)(payload[5] | (payload[6] << 8));
	return 0;
}
