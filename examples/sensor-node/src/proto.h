/*
 * proto.h - framed commands from the host, the conformance-tested part of
 * the UART protocol.
 *
 * Besides the one-letter commands (main.c), the host may send a command
 * frame: a line "C " and the hex of one frame (frame.h: SYNC | LEN |
 * PAYLOAD | CRC-16/CCITT-FALSE), whose payload is
 *
 *     CMD (1 byte) | SEQ (1 byte) | ARGS (none so far)
 *
 * CMD is PROTO_HELLO, which opens a session and sets the sequence number
 * (any SEQ), PROTO_PING or PROTO_SAMPLE.  Inside a session every command
 * must carry the previous SEQ + 1 (mod 256).  The firmware answers each
 * command line with one line:
 *
 *     ACK SS CC            accepted (SS, CC: SEQ and CMD in hex); a SAMPLE's
 *                          FRAME line follows
 *     NAK SS REASON        refused; SS is "--" when the frame gave no SEQ
 *
 * REASON is one of hex (odd length or a non-hex digit), short (fewer bytes
 * than the header or LEN say), sync (first byte not 0xA5), len (LEN above
 * FRAME_MAX_PAYLOAD or bytes after the CRC), crc (checksum mismatch),
 * oversized (the line did not fit the receive buffer; main.c), payload
 * (fewer than CMD and SEQ), cmd (unknown CMD), session (a command before
 * HELLO), order (SEQ is not the previous + 1: a repeat, a gap or a
 * reordering; the command is not executed and the session keeps its SEQ).
 *
 * Pure logic, no I/O: the unit tests and hil/conformance.py read this.
 */
#ifndef SENSOR_PROTO_H
#define SENSOR_PROTO_H

#include <stddef.h>
#include <stdint.h>

#define PROTO_HELLO  0x01u
#define PROTO_PING   0x02u
#define PROTO_SAMPLE 0x03u

/* The longest reply line proto_handle() writes, with its NUL. */
#define PROTO_REPLY_MAX 24u

struct proto {
	uint8_t open;     /* a HELLO was accepted */
	uint8_t next_seq; /* the SEQ the next command must carry */
};

void proto_init(struct proto *p);

/*
 * Handle the hex of one command frame (the text after "C "): the reply
 * line goes to reply (PROTO_REPLY_MAX bytes).  Returns the accepted CMD
 * (the caller then does what it asks: PROTO_SAMPLE sends a frame) or 0
 * when the frame was refused.
 */
unsigned proto_handle(struct proto *p, const char *hex, char reply[PROTO_REPLY_MAX]);

/* The reply to a command line that overflowed the receive buffer. */
void proto_oversized(char reply[PROTO_REPLY_MAX]);

#endif
