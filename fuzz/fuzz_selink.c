/*
 * fuzz_selink.c - libFuzzer target for the sample firmware's check of its
 * secure element's answer (examples/sensor-node/src/se_link.c), the bytes
 * on UART2 that anyone on the board's bus can send.  The first byte picks
 * the length of a request made from the next bytes; the rest is the
 * answer.  The check must never read past either, and must never call an
 * answer "valid" unless its MAC is the one the link key makes (recomputed
 * here).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../examples/sensor-node/src/crc16.c"
#include "../examples/sensor-node/src/se_link.c"
#include "../examples/sensor-node/src/sha256.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const uint8_t key[SE_KEY_LEN] = { 1, 2, 3 };
	uint8_t req[SE_REQ_MAX], digest[32], status, mac[SE_MAC_LEN];
	struct se_request r;
	int len;

	if (size < 1 + SE_NONCE_LEN + 32)
		return 0;
	memset(&r, 0, sizeof(r));
	memcpy(r.nonce, data + 1, SE_NONCE_LEN);
	memcpy(digest, data + 1 + SE_NONCE_LEN, 32);
	r.digest = digest;
	r.sig = data;
	r.sig_len = data[0] % (SE_SIG_MAX + 8u);
	if (r.sig_len > size)
		r.sig_len = size;
	len = se_req_encode(req, &r);
	if (len < 0) {
		if (r.sig_len <= SE_SIG_MAX)
			abort();
		return 0;
	}
	data += 1 + SE_NONCE_LEN + 32;
	size -= 1 + SE_NONCE_LEN + 32;
	if (se_ans_check(data, size, req, (size_t)len, key, &status) == 0) {
		static const uint8_t label[] = SE_MAC_LABEL;
		se_hmac(mac, key, sizeof(key), label, sizeof(label) - 1u, req + SE_HDR_LEN,
			(size_t)len - SE_HDR_LEN - 2u, data + SE_HDR_LEN, 1);
		if (size != SE_ANS_LEN || status != SE_STATUS_VALID || memcmp(mac, data + SE_HDR_LEN + 1, SE_MAC_LEN))
			abort();
	}
	return 0;
}
