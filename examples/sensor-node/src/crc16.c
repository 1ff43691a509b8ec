/*
 * crc16.c - CRC-16/CCITT-FALSE, bit by bit.
 *
 * A table would be faster, but frames are a dozen bytes and the bitwise loop
 * is 10 lines that anyone can check against the definition (and against the
 * known vectors in the self-test and the unit tests).
 */
#include "crc16.h"

uint16_t crc16_update(uint16_t crc, const uint8_t *data, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		crc ^= (uint16_t)(data[i] << 8);
		for (int bit = 0; bit < 8; bit++)
			crc = (crc & 0x8000u) ? (uint16_t)((crc << 1) ^ 0x1021u) : (uint16_t)(crc << 1);
	}
	return crc;
}

uint16_t crc16_ccitt(const void *data, size_t n)
{
	return crc16_update(CRC16_INIT, (const uint8_t *)data, n);
}
