/*
 * frame.h - the wire format of sensor-node messages.
 *
 * A frame is
 *
 *     SYNC (0xA5) | LEN (1 byte) | PAYLOAD (LEN bytes) | CRC (2 bytes, big-endian)
 *
 * where CRC is CRC-16/CCITT-FALSE over LEN and PAYLOAD (not SYNC).  A
 * sample message is a 7-byte payload:
 *
 *     TYPE (0x01) | SEQ (uint32, little-endian) | VALUE (int16, little-endian)
 *
 * On the UART a frame is one line, "FRAME " and the frame's bytes in
 * upper-case hex, e.g. "FRAME A50701000000006608xxxx" (hil/hil.py decodes
 * and checks it).
 */
#ifndef SENSOR_FRAME_H
#define SENSOR_FRAME_H

#include <stddef.h>
#include <stdint.h>

#include "ringbuf.h"

#define FRAME_SYNC        0xA5u
#define FRAME_MAX_PAYLOAD 32u
#define FRAME_OVERHEAD    4u /* SYNC, LEN, 2 bytes of CRC */
#define FRAME_MAX         (FRAME_MAX_PAYLOAD + FRAME_OVERHEAD)

#define SAMPLE_TYPE        0x01u
#define SAMPLE_PAYLOAD_LEN 7u

/* Results of frame_decode() and friends; 0 is success. */
enum frame_error {
	FRAME_ESHORT = -1, /* fewer bytes than the header or LEN announce */
	FRAME_ESYNC = -2,  /* first byte is not FRAME_SYNC */
	FRAME_ELEN = -3,   /* LEN too big, or bytes left over after the CRC */
	FRAME_ECRC = -4,   /* checksum mismatch */
	FRAME_ESPACE = -5, /* output buffer too small */
	FRAME_ETYPE = -6,  /* payload is not a sample message */
};

/* Frame `len` payload bytes into out (cap bytes): the frame's length, or
 * FRAME_ELEN (len > FRAME_MAX_PAYLOAD) / FRAME_ESPACE. */
int frame_encode(uint8_t *out, size_t cap, const uint8_t *payload, size_t len);

/* Check that in[0..n) is exactly one frame; on success point *payload into
 * it and set *len.  Returns 0 or a frame_error. */
int frame_decode(const uint8_t *in, size_t n, const uint8_t **payload, size_t *len);

/* Upper-case hex of n bytes, NUL-terminated: the number of characters
 * (2n), or FRAME_ESPACE when cap < 2n + 1. */
int frame_to_hex(char *out, size_t cap, const uint8_t *data, size_t n);

/* 0..15 for a hex digit (either case), -1 for any other c. */
int frame_hexval(int c);

/* Parse hex (either case, even length) into out: the number of bytes, or
 * FRAME_ELEN for bad hex, FRAME_ESPACE when it does not fit. */
int frame_from_hex(uint8_t *out, size_t cap, const char *hex);

/* A sample as a SAMPLE_PAYLOAD_LEN-byte payload. */
void sample_pack(uint8_t out[SAMPLE_PAYLOAD_LEN], const struct sample *s);

/* A sample message payload back into *out: 0, FRAME_ELEN or FRAME_ETYPE. */
int sample_unpack(const uint8_t *payload, size_t len, struct sample *out);

#endif
