/*
 * se_link.c - the secure element's request and answer frames (se_link.h).
 */
#include "se_link.h"

#include <string.h>

#include "crc16.h"
#include "sha256.h"

#define SE_VERSION 0x01u
#define SE_CMD_VERIFY 0x01u
#define SE_CMD_ANSWER 0x81u
#define SE_MAC_LABEL "otacd-se1"

static void put_header(uint8_t *p, uint8_t cmd, size_t body_len)
{
	p[0] = 'S';
	p[1] = 'E';
	p[2] = SE_VERSION;
	p[3] = cmd;
	p[4] = (uint8_t)(body_len >> 8);
	p[5] = (uint8_t)body_len;
}

static void put_crc(uint8_t *p, size_t len)
{
	uint16_t crc = crc16_ccitt(p, len);
	p[len] = (uint8_t)(crc >> 8);
	p[len + 1] = (uint8_t)crc;
}

int se_req_encode(uint8_t out[SE_REQ_MAX], const struct se_request *r)
{
	uint8_t *b = out + SE_HDR_LEN;
	size_t body_len = SE_NONCE_LEN + 3u + 32u + r->sig_len;

	if (r->sig_len > SE_SIG_MAX)
		return SE_EARG;
	put_header(out, SE_CMD_VERIFY, body_len);
	memcpy(b, r->nonce, SE_NONCE_LEN);
	b += SE_NONCE_LEN;
	*b++ = r->slot;
	*b++ = r->sig_type;
	memcpy(b, r->digest, 32);
	b += 32;
	*b++ = (uint8_t)r->sig_len;
	memcpy(b, r->sig, r->sig_len);
	put_crc(out, SE_HDR_LEN + body_len);
	return (int)(SE_HDR_LEN + body_len + 2u);
}

void se_hmac(uint8_t out[SE_MAC_LEN], const uint8_t *key, size_t key_len, const uint8_t *a, size_t a_len,
	     const uint8_t *b, size_t b_len, const uint8_t *c, size_t c_len)
{
	uint8_t pad[64], inner[32];
	struct sha256 s;
	size_t i;

	memset(pad, 0, sizeof(pad));
	memcpy(pad, key, key_len > sizeof(pad) ? sizeof(pad) : key_len);
	for (i = 0; i < sizeof(pad); i++)
		pad[i] ^= 0x36u;
	sha256_begin(&s);
	sha256_update(&s, pad, sizeof(pad));
	sha256_update(&s, a, a_len);
	sha256_update(&s, b, b_len);
	sha256_update(&s, c, c_len);
	sha256_end(&s, inner);
	for (i = 0; i < sizeof(pad); i++)
		pad[i] ^= 0x36u ^ 0x5cu; /* the inner pad back to the key, then the outer pad */
	sha256_begin(&s);
	sha256_update(&s, pad, sizeof(pad));
	sha256_update(&s, inner, sizeof(inner));
	sha256_end(&s, out);
}

/* Compare without an early exit, so the time taken says nothing about
 * how many leading MAC bytes a forger got right. */
static int same_mac(const uint8_t *x, const uint8_t *y)
{
	uint8_t diff = 0;
	size_t i;

	for (i = 0; i < SE_MAC_LEN; i++)
		diff |= (uint8_t)(x[i] ^ y[i]);
	return diff == 0;
}

int se_ans_check(const uint8_t *ans, size_t n, const uint8_t *req, size_t req_len, const uint8_t key[SE_KEY_LEN],
		 uint8_t *status)
{
	static const uint8_t label[] = SE_MAC_LABEL;
	uint8_t want[SE_HDR_LEN], mac[SE_MAC_LEN];
	uint16_t crc;

	*status = 0xffu;
	if (n != SE_ANS_LEN || req_len < SE_HDR_LEN + 2u)
		return SE_ESHORT;
	put_header(want, SE_CMD_ANSWER, 1u + SE_MAC_LEN);
	if (memcmp(ans, want, SE_HDR_LEN) != 0)
		return SE_EFRAME;
	crc = (uint16_t)(ans[n - 2] << 8 | ans[n - 1]);
	if (crc != crc16_ccitt(ans, n - 2))
		return SE_ECRC;
	/* the MAC covers the request's body as sent and the status byte */
	se_hmac(mac, key, SE_KEY_LEN, label, sizeof(label) - 1u, req + SE_HDR_LEN, req_len - SE_HDR_LEN - 2u,
		ans + SE_HDR_LEN, 1u);
	if (!same_mac(mac, ans + SE_HDR_LEN + 1u))
		return SE_EMAC;
	*status = ans[SE_HDR_LEN];
	return *status == SE_STATUS_VALID ? 0 : SE_EINVALID;
}

const char *se_error_name(int err)
{
	switch (err) {
	case 0:
		return "valid";
	case SE_ESHORT:
		return "no or short answer";
	case SE_EFRAME:
		return "not an answer frame";
	case SE_ECRC:
		return "garbled answer (CRC)";
	case SE_EMAC:
		return "forged answer (MAC)";
	case SE_EINVALID:
		return "invalid";
	case SE_EARG:
		return "signature too long";
	default:
		return "?";
	}
}
