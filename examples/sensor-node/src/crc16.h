/*
 * crc16.h - CRC-16/CCITT-FALSE, the checksum of every frame.
 *
 * Polynomial 0x1021, initial value 0xFFFF, no reflection, no final XOR.
 * Check value: crc16_ccitt("123456789", 9) == 0x29B1.
 */
#ifndef SENSOR_CRC16_H
#define SENSOR_CRC16_H

#include <stddef.h>
#include <stdint.h>

#define CRC16_INIT 0xFFFFu

/* Continue a CRC over n more bytes; start with CRC16_INIT. */
uint16_t crc16_update(uint16_t crc, const uint8_t *data, size_t n);

/* The CRC of n bytes: crc16_update(CRC16_INIT, data, n). */
uint16_t crc16_ccitt(const void *data, size_t n);

#endif
