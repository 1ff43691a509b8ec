/*
 * fuzz_otadev.c - libFuzzer target for libotadev's parsers of untrusted
 * bytes (issue 14): the first byte picks the check-in answer parser, the
 * report-answer parser or the MCUboot image parser reading a slot through
 * the flash hook; the rest is the input.  The core has no heap, so the
 * sanitizers watch its fixed buffers and the jsmn token array.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../device/otadev_json.c"
#include "../device/otadev_mcuboot.c"

static const uint8_t *slot_data;
static size_t slot_len;

static int f_read(void *ctx, int slot, uint32_t off, void *buf, uint32_t len)
{
	(void)ctx;
	(void)slot;
	if (off > slot_len || len > slot_len - off)
		return -1;
	memcpy(buf, slot_data + off, len);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static uint32_t tok[OTADEV_TOKENS * 5];
	static struct otadev_hooks h;
	struct otadev_checkin c;
	struct otadev_image img;
	uint8_t buf[64];
	uint32_t a, r, d;

	if (size < 1)
		return 0;
	switch (data[0] % 3) {
	case 0:
		if (otadev_checkin_parse(&c, (const char *)data + 1, size - 1, tok, OTADEV_TOKENS) == 0 && c.has_offer) {
			if (strlen(c.offer.version) >= sizeof(c.offer.version) || strlen(c.offer.url) >= sizeof(c.offer.url) ||
			    strlen(c.offer.hardware) >= sizeof(c.offer.hardware) || !(c.time_scale > 0))
				abort();
			/* a URL past OTADEV_URL_MAX is flagged with nothing copied, else copied whole */
			if (c.url_too_long != !c.offer.url[0])
				abort();
			/* issue 15: a delta is whole (url, size > 0) or absent */
			if (c.has_delta && (strlen(c.delta.url) >= sizeof(c.delta.url) || !c.delta.url[0] || !c.delta.size))
				abort();
		}
		break;
	case 1:
		otadev_reports_parse(&a, &r, &d, (const char *)data + 1, size - 1, tok, OTADEV_TOKENS);
		break;
	default:
		h.flash_read = f_read;
		slot_data = data + 1;
		slot_len = size - 1;
		if (otadev_image_parse(&img, &h, NULL, 0, (uint32_t)slot_len, buf, sizeof(buf)) == 0 &&
		    (img.signed_len > slot_len || img.tlv_end > slot_len || img.sig_len > sizeof(img.sig) ||
		     (img.enc_type && (img.enc_off > img.tlv_end || img.enc_len > img.tlv_end - img.enc_off)) ||
		     (img.enc_keylen != 0 && img.enc_keylen != 16 && img.enc_keylen != 32)))
			abort();
		break;
	}
	return 0;
}
