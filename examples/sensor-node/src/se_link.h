/*
 * se_link.h - the signature-verify exchange with the board's secure
 * element over UART2 (docs/device-porting.md, "The secure element").
 *
 * The firmware has no ECDSA verifier of its own: it sends the image
 * digest, the signature and the key slot to a secure element (on a real
 * board an ATECC608-class chip's ECDSA P-256 Verify with the bootloader's
 * public keys in its slots; on QEMU the model hil/se_model.py) and trusts
 * only an answer that carries a MAC it can check.  Binary frames, all
 * multi-byte fields big-endian:
 *
 *   request  'S' 'E' 01 01 | LEN (2) | BODY | CRC-16/CCITT-FALSE (2)
 *            BODY = nonce (16) | slot (1) | sig type (1) | digest (32)
 *                   | sig len (1) | sig (<= 72)
 *   answer   'S' 'E' 01 81 | LEN (2) = 33 | STATUS (1) | MAC (32) | CRC
 *            MAC = HMAC-SHA256(link key, "otacd-se1" | BODY | STATUS)
 *
 * The CRC (over everything before it) catches line noise only; the MAC
 * binds the answer to this very request (nonce, digest, signature, slot),
 * so someone on the bus who does not hold the link key cannot turn
 * "invalid" into "valid" or replay an old "valid".  Pure logic: no UART,
 * host-tested in tests/unit.c, fuzzed by otacd's fuzz/fuzz_selink.c.
 */
#ifndef SENSOR_SE_LINK_H
#define SENSOR_SE_LINK_H

#include <stddef.h>
#include <stdint.h>

#define SE_NONCE_LEN  16u
#define SE_SIG_MAX    72u /* a DER ECDSA P-256 signature; Ed25519 is 64 */
#define SE_MAC_LEN    32u
#define SE_KEY_LEN    32u
#define SE_HDR_LEN    6u  /* 'S' 'E' version command LEN(2) */
#define SE_BODY_MAX   (SE_NONCE_LEN + 3u + 32u + SE_SIG_MAX)
#define SE_REQ_MAX    (SE_HDR_LEN + SE_BODY_MAX + 2u)
#define SE_ANS_LEN    (SE_HDR_LEN + 1u + SE_MAC_LEN + 2u)

#define SE_STATUS_VALID   0x00u
#define SE_STATUS_INVALID 0x01u /* the signature does not verify */
#define SE_STATUS_BADREQ  0x02u /* a request the element could not parse */
#define SE_STATUS_NOKEY   0x03u /* no public key in that slot */

/* Why an answer was not "valid"; 0 is valid. */
enum se_error {
	SE_ESHORT = -1,   /* not SE_ANS_LEN bytes */
	SE_EFRAME = -2,   /* wrong magic, version, command or LEN */
	SE_ECRC = -3,     /* CRC mismatch: a garbled answer */
	SE_EMAC = -4,     /* the MAC does not match: forged or for another request */
	SE_EINVALID = -5, /* an authentic answer that says "not valid" */
	SE_EARG = -6,     /* the request does not fit (signature too long) */
};

struct se_request {
	uint8_t nonce[SE_NONCE_LEN];
	uint8_t slot, sig_type;
	const uint8_t *digest; /* 32 bytes */
	const uint8_t *sig;
	size_t sig_len;
};

/* Encode r into out (SE_REQ_MAX bytes): the frame's length, or SE_EARG. */
int se_req_encode(uint8_t out[SE_REQ_MAX], const struct se_request *r);

/* Check an answer of n bytes to the request frame req (req_len bytes, as
 * se_req_encode made it) with the link key: 0 only for an authentic
 * "valid"; otherwise an enum se_error, and *status the element's status
 * byte when the answer was authentic (else 0xff). */
int se_ans_check(const uint8_t *ans, size_t n, const uint8_t *req, size_t req_len, const uint8_t key[SE_KEY_LEN],
		 uint8_t *status);

/* HMAC-SHA256 (RFC 2104) of the concatenation of three parts (b, c may
 * be empty), with a key of at most 64 bytes. */
void se_hmac(uint8_t out[SE_MAC_LEN], const uint8_t *key, size_t key_len, const uint8_t *a, size_t a_len,
	     const uint8_t *b, size_t b_len, const uint8_t *c, size_t c_len);

/* Why as a word for the log: "valid", "invalid", "garbled", "forged", ... */
const char *se_error_name(int err);

#endif
