/*
 * unit.c - host unit tests of the firmware's logic, with a JUnit report.
 *
 * The ring buffer, CRC, frame format, simulated sensor, self-test, SHA-256
 * and the update link's text are plain C, so they are compiled for the host and tested here; the hardware
 * parts (UART, SysTick, start-up) are exercised by the HIL test instead.
 *
 * The runner is deliberately tiny: a table of test functions grouped by
 * suite, CHECK macros that record the first failure of a test (file, line,
 * what was expected) and return, and a writer for JUnit XML - one
 * <testsuite> per suite, one <testcase> per test with its duration and a
 * <failure message="..."> when it failed.  Usage:
 *
 *     unit [REPORT.xml]
 *
 * exits 1 when any test failed (or the report cannot be written), else 0.
 * Built with -DSENSOR_BREAK_UNIT (make test BREAK=unit), one test expects a
 * wrong CRC and fails: a deliberately broken commit.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "crc16.h"
#include "frame.h"
#include "ota_link.h"
#include "ringbuf.h"
#include "se_link.h"
#include "selftest.h"
#include "sensor.h"
#include "sha256.h"

#ifdef SENSOR_BREAK_UNIT
#define CRC_CHECK_VALUE 0x29B2u /* wrong on purpose */
#else
#define CRC_CHECK_VALUE 0x29B1u /* CRC-16/CCITT-FALSE of "123456789" */
#endif

/* ---- the runner ------------------------------------------------------- */

static char failure[512]; /* first failure of the running test, "" if none */

static void fail_at(const char *file, int line, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (failure[0])
		return;
	n = snprintf(failure, sizeof(failure), "%s:%d: ", file, line);
	va_start(ap, fmt);
	vsnprintf(failure + n, sizeof(failure) - (size_t)n, fmt, ap);
	va_end(ap);
}

#define CHECK(cond)                                                              \
	do {                                                                     \
		if (!(cond)) {                                                   \
			fail_at(__FILE__, __LINE__, "check failed: %s", #cond); \
			return;                                                  \
		}                                                                \
	} while (0)

#define CHECK_EQ(got, want)                                                                          \
	do {                                                                                         \
		long long got_ = (long long)(got), want_ = (long long)(want);                       \
		if (got_ != want_) {                                                                 \
			fail_at(__FILE__, __LINE__, "%s is %lld (0x%llx), expected %lld (0x%llx)", #got, \
				got_, (unsigned long long)got_, want_, (unsigned long long)want_);   \
			return;                                                                      \
		}                                                                                    \
	} while (0)

#define CHECK_EQ_STR(got, want)                                                           \
	do {                                                                              \
		if (strcmp((got), (want)) != 0) {                                         \
			fail_at(__FILE__, __LINE__, "%s is \"%s\", expected \"%s\"", #got, \
				(got), (want));                                           \
			return;                                                           \
		}                                                                         \
	} while (0)

/* ---- crc16 ------------------------------------------------------------ */

static void crc16_matches_ccitt_false_check_value(void)
{
	CHECK_EQ(crc16_ccitt("123456789", 9), CRC_CHECK_VALUE);
}

static void crc16_of_empty_input_is_the_initial_value(void)
{
	CHECK_EQ(crc16_ccitt("", 0), 0xFFFF);
}

static void crc16_of_known_vectors(void)
{
	static const uint8_t zeros[256];

	CHECK_EQ(crc16_ccitt("A", 1), 0xB915);
	CHECK_EQ(crc16_ccitt(zeros, sizeof(zeros)), 0x41E8);
}

static void crc16_in_pieces_equals_one_pass(void)
{
	const uint8_t *msg = (const uint8_t *)"123456789";

	for (size_t cut = 0; cut <= 9; cut++)
		CHECK_EQ(crc16_update(crc16_update(CRC16_INIT, msg, cut), msg + cut, 9 - cut), 0x29B1);
}

/* ---- ring buffer ------------------------------------------------------ */

static void ringbuf_starts_empty_and_pop_fails(void)
{
	struct ringbuf rb;
	struct sample s;

	ringbuf_init(&rb);
	CHECK_EQ(ringbuf_count(&rb), 0);
	CHECK_EQ(ringbuf_pop(&rb, &s), -1);
}

static void ringbuf_returns_samples_in_fifo_order(void)
{
	struct ringbuf rb;
	struct sample s = { 0, 0 }, got;

	ringbuf_init(&rb);
	for (uint32_t i = 0; i < 5; i++) {
		s.seq = i;
		s.value = (int16_t)(-100 * (int)i);
		CHECK_EQ(ringbuf_push(&rb, &s), 0);
	}
	CHECK_EQ(ringbuf_count(&rb), 5);
	for (uint32_t i = 0; i < 5; i++) {
		CHECK_EQ(ringbuf_pop(&rb, &got), 0);
		CHECK_EQ(got.seq, i);
		CHECK_EQ(got.value, -100 * (int)i);
	}
	CHECK_EQ(ringbuf_pop(&rb, &got), -1);
}

static void ringbuf_full_ring_drops_new_samples_and_counts_them(void)
{
	struct ringbuf rb;
	struct sample s = { 0, 0 }, got;

	ringbuf_init(&rb);
	for (uint32_t i = 0; i < RINGBUF_SIZE; i++) {
		s.seq = i;
		CHECK_EQ(ringbuf_push(&rb, &s), 0);
	}
	s.seq = 999;
	CHECK_EQ(ringbuf_push(&rb, &s), -1);
	CHECK_EQ(ringbuf_push(&rb, &s), -1);
	CHECK_EQ(rb.dropped, 2);
	CHECK_EQ(ringbuf_count(&rb), RINGBUF_SIZE);
	CHECK_EQ(ringbuf_pop(&rb, &got), 0);
	CHECK_EQ(got.seq, 0); /* the oldest is kept */
	CHECK_EQ(ringbuf_push(&rb, &s), 0);
}

static void ringbuf_keeps_order_when_indices_wrap_at_2_pow_32(void)
{
	struct ringbuf rb;
	struct sample s = { 0, 0 }, got;

	ringbuf_init(&rb);
	rb.head = rb.tail = UINT32_MAX - 2; /* as after ~2.7 years at 50 Hz */
	for (uint32_t i = 0; i < 8; i++) {
		s.seq = i;
		CHECK_EQ(ringbuf_push(&rb, &s), 0);
	}
	CHECK_EQ(ringbuf_count(&rb), 8);
	for (uint32_t i = 0; i < 8; i++) {
		CHECK_EQ(ringbuf_pop(&rb, &got), 0);
		CHECK_EQ(got.seq, i);
	}
	CHECK_EQ(ringbuf_count(&rb), 0);
}

/* ---- frames ----------------------------------------------------------- */

static void frame_encode_writes_sync_len_payload_and_big_endian_crc(void)
{
	/* the first boot frame of the firmware: seq 0, 20.46 degC */
	static const uint8_t want[] = { 0xA5, 0x07, 0x01, 0x00, 0x00, 0x00, 0x00, 0xFE, 0x07, 0x0E, 0x6E };
	const struct sample s = { 0, 2046 };
	uint8_t payload[SAMPLE_PAYLOAD_LEN], buf[FRAME_MAX];

	sample_pack(payload, &s);
	CHECK_EQ(frame_encode(buf, sizeof(buf), payload, sizeof(payload)), sizeof(want));
	CHECK(memcmp(buf, want, sizeof(want)) == 0);
}

static void frame_decode_round_trips_a_sample(void)
{
	const struct sample in = { 0xDEADBEEFu, -32768 };
	struct sample out;
	uint8_t payload[SAMPLE_PAYLOAD_LEN], buf[FRAME_MAX];
	const uint8_t *p = NULL;
	size_t len = 0;
	int n;

	sample_pack(payload, &in);
	n = frame_encode(buf, sizeof(buf), payload, sizeof(payload));
	CHECK(n > 0);
	CHECK_EQ(frame_decode(buf, (size_t)n, &p, &len), 0);
	CHECK_EQ(len, SAMPLE_PAYLOAD_LEN);
	CHECK_EQ(sample_unpack(p, len, &out), 0);
	CHECK_EQ(out.seq, in.seq);
	CHECK_EQ(out.value, in.value);
}

static void frame_decode_rejects_any_single_bit_flip(void)
{
	const struct sample s = { 7, 2100 };
	uint8_t payload[SAMPLE_PAYLOAD_LEN], buf[FRAME_MAX];
	const uint8_t *p;
	size_t len;
	int n;

	sample_pack(payload, &s);
	n = frame_encode(buf, sizeof(buf), payload, sizeof(payload));
	CHECK(n > 0);
	/* every bit after SYNC and LEN: payload and CRC */
	for (int bit = 16; bit < n * 8; bit++) {
		buf[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		CHECK_EQ(frame_decode(buf, (size_t)n, &p, &len), FRAME_ECRC);
		buf[bit / 8] ^= (uint8_t)(1u << (bit % 8));
	}
	CHECK_EQ(frame_decode(buf, (size_t)n, &p, &len), 0);
}

static void frame_decode_rejects_bad_sync_length_and_truncation(void)
{
	uint8_t buf[FRAME_MAX + 1];
	const uint8_t *p;
	size_t len;
	int n = frame_encode(buf, sizeof(buf), (const uint8_t *)"abc", 3);

	CHECK_EQ(n, 7);
	CHECK_EQ(frame_decode(buf, 3, &p, &len), FRAME_ESHORT);
	CHECK_EQ(frame_decode(buf, 6, &p, &len), FRAME_ESHORT);
	CHECK_EQ(frame_decode(buf, 8, &p, &len), FRAME_ELEN); /* trailing byte */
	buf[0] = 0x5A;
	CHECK_EQ(frame_decode(buf, 7, &p, &len), FRAME_ESYNC);
	buf[0] = FRAME_SYNC;
	buf[1] = FRAME_MAX_PAYLOAD + 1;
	CHECK_EQ(frame_decode(buf, sizeof(buf), &p, &len), FRAME_ELEN);
}

static void frame_encode_refuses_big_payloads_and_small_buffers(void)
{
	uint8_t payload[FRAME_MAX_PAYLOAD + 1] = { 0 }, buf[FRAME_MAX + 8];

	CHECK_EQ(frame_encode(buf, sizeof(buf), payload, FRAME_MAX_PAYLOAD + 1), FRAME_ELEN);
	CHECK_EQ(frame_encode(buf, FRAME_MAX - 1, payload, FRAME_MAX_PAYLOAD), FRAME_ESPACE);
	CHECK_EQ(frame_encode(buf, FRAME_MAX, payload, FRAME_MAX_PAYLOAD), FRAME_MAX);
	CHECK_EQ(frame_encode(buf, FRAME_OVERHEAD, NULL, 0), FRAME_OVERHEAD);
}

static void frame_hex_round_trips_and_rejects_bad_digits(void)
{
	static const uint8_t bytes[] = { 0xA5, 0x00, 0x1F, 0xFF };
	uint8_t back[8];
	char hex[16];

	CHECK_EQ(frame_to_hex(hex, sizeof(hex), bytes, sizeof(bytes)), 8);
	CHECK(strcmp(hex, "A5001FFF") == 0);
	CHECK_EQ(frame_to_hex(hex, 8, bytes, sizeof(bytes)), FRAME_ESPACE); /* no room for NUL */
	CHECK_EQ(frame_from_hex(back, sizeof(back), "a5001fFF"), 4);
	CHECK(memcmp(back, bytes, sizeof(bytes)) == 0);
	CHECK_EQ(frame_from_hex(back, sizeof(back), "A50"), FRAME_ELEN);
	CHECK_EQ(frame_from_hex(back, sizeof(back), "A5G0"), FRAME_ELEN);
	CHECK_EQ(frame_from_hex(back, 1, "A500"), FRAME_ESPACE);
}

static void sample_unpack_rejects_wrong_type_and_length(void)
{
	uint8_t payload[SAMPLE_PAYLOAD_LEN];
	const struct sample s = { 1, 1 };
	struct sample out;

	sample_pack(payload, &s);
	CHECK_EQ(sample_unpack(payload, SAMPLE_PAYLOAD_LEN - 1, &out), FRAME_ELEN);
	payload[0] = 0x02;
	CHECK_EQ(sample_unpack(payload, SAMPLE_PAYLOAD_LEN, &out), FRAME_ETYPE);
}

/* ---- sensor and self-test --------------------------------------------- */

static void sensor_gives_the_same_readings_after_every_power_on(void)
{
	/* what the firmware prints at boot: FE07, 0C08, 1608, 1E08 */
	static const int16_t want[] = { 2046, 2060, 2070, 2078 };
	struct sensor sn;
	struct sample s;

	sensor_init(&sn);
	for (uint32_t i = 0; i < 4; i++) {
		sensor_sample(&sn, &s);
		CHECK_EQ(s.seq, i);
		CHECK_EQ(s.value, want[i]);
	}
}

static void sensor_readings_stay_within_the_waveform_bounds(void)
{
	struct sensor sn;
	struct sample s;

	sensor_init(&sn);
	for (uint32_t i = 0; i < 100000; i++) {
		sensor_sample(&sn, &s);
		CHECK(s.value >= 2150 - 96 - 8 && s.value <= 2150 + 96 + 7);
	}
}

static void sensor_lfsr_has_maximal_period(void)
{
	uint16_t x = SENSOR_LFSR_SEED;
	uint32_t period = 0;

	do {
		x = sensor_lfsr_next(x);
		period++;
		CHECK(x != 0);
	} while (x != SENSOR_LFSR_SEED && period < 70000);
	CHECK_EQ(period, 65535);
}

static void selftest_passes_on_the_shipped_logic(void)
{
	const char *failed = selftest_run();

	if (failed)
		fail_at(__FILE__, __LINE__, "self-test check '%s' failed", failed);
}

/* ---- sha256 (FIPS 180-4 examples, NIST CAVP) --------------------------- */

static void sha256_hex(char out[65], const void *data, size_t len, size_t piece)
{
	struct sha256 s;
	uint8_t d[32];
	const uint8_t *p = data;

	sha256_begin(&s);
	for (size_t off = 0; off < len; off += piece)
		sha256_update(&s, p + off, len - off < piece ? len - off : piece);
	sha256_end(&s, d);
	for (int i = 0; i < 32; i++)
		sprintf(out + 2 * i, "%02x", d[i]);
}

static void sha256_of_fips_examples(void)
{
	static const char two_blocks[] = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
	char h[65];

	sha256_hex(h, "", 0, 1);
	CHECK(strcmp(h, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855") == 0);
	sha256_hex(h, "abc", 3, 3);
	CHECK(strcmp(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad") == 0);
	sha256_hex(h, two_blocks, strlen(two_blocks), 64);
	CHECK(strcmp(h, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1") == 0);
}

static void sha256_of_a_million_a_in_odd_pieces(void)
{
	static char a[1000000];
	char h[65];

	memset(a, 'a', sizeof(a));
	sha256_hex(h, a, sizeof(a), 4093);
	CHECK(strcmp(h, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0") == 0);
}

/* Lengths around the padding boundary (55, 56, 63, 64 bytes), one byte at
 * a time against one call. */
static void sha256_in_pieces_equals_one_pass(void)
{
	uint8_t buf[130];
	char one[65], bytes[65];

	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = (uint8_t)(i * 7 + 1);
	for (size_t n = 50; n <= sizeof(buf); n++) {
		sha256_hex(one, buf, n, n ? n : 1);
		sha256_hex(bytes, buf, n, 1);
		CHECK_EQ_STR(one, bytes);
	}
}

/* ---- ota_link: the UART1 wire ------------------------------------------ */

static void link_request_line_carries_method_range_body_length_and_identity(void)
{
	struct otadev_http_req r = { "GET", "/device/v1/images/ab.bin", "dev-1", "tok", NULL, 0, 4096, 8191 };
	char line[160];

	CHECK(link_req_line(line, sizeof(line), &r) == 0);
	CHECK_EQ_STR(line, "REQ GET 4096 8191 0 /device/v1/images/ab.bin dev-1 tok\n");
	r.method = "POST";
	r.body = "{}";
	r.body_len = 2;
	r.range_start = r.range_end = -1;
	r.credential = NULL;
	CHECK(link_req_line(line, sizeof(line), &r) == 0);
	CHECK_EQ_STR(line, "REQ POST -1 -1 2 /device/v1/images/ab.bin dev-1 -\n");
}

static void link_request_line_refuses_fields_that_break_the_line(void)
{
	struct otadev_http_req r = { "POST", "/device/v1/checkin", "dev 1", "tok", NULL, 0, -1, -1 };
	char line[160];

	CHECK(link_req_line(line, sizeof(line), &r) == -1);
	r.device = "dev-1";
	r.credential = "tok\nREQ";
	CHECK(link_req_line(line, sizeof(line), &r) == -1);
	r.credential = "tok";
	CHECK(link_req_line(line, 20, &r) == -1); /* does not fit */
	r.path = "";
	CHECK(link_req_line(line, sizeof(line), &r) == -1);
}

static void link_answer_header_is_parsed_strictly(void)
{
	int st = -5;
	long total = -5;
	size_t len = 99;

	CHECK(link_rsp_line("RSP 206 65536 4096", &st, &total, &len, 4096) == 0);
	CHECK(st == 206 && total == 65536 && len == 4096);
	CHECK(link_rsp_line("RSP 200 -1 0", &st, &total, &len, 4096) == 0);
	CHECK(st == 200 && total == -1 && len == 0);
	/* every malformed header is refused, nothing written */
	st = -5;
	static const char *const bad[] = {
		"", "RSP", "RSP 200", "RSP 200 -1", "RSP 200 -1 4097", "RSP 1000 -1 0", "RSP -200 -1 0",
		"RSP 200 -2 0", "RSP 200 -1 0 ", "RSP 200 -1 0 extra", "RSP  200 -1 0", "rsp 200 -1 0",
		"RSP 200 -1 0x10", "RSP 200 -1 9999999999", "RSP 2a0 -1 0", "REQ 200 -1 0",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (link_rsp_line(bad[i], &st, &total, &len, 4096) != -1 || st != -5) {
			fail_at(__FILE__, __LINE__, "accepted %s", bad[i]);
			return;
		}
}

static void frame_hexval_takes_hex_digits_only(void)
{
	CHECK(frame_hexval('0') == 0 && frame_hexval('9') == 9 && frame_hexval('a') == 10 && frame_hexval('F') == 15);
	CHECK(frame_hexval('g') == -1 && frame_hexval(' ') == -1 && frame_hexval(-1) == -1 && frame_hexval('\n') == -1);
}

static void link_provisioning_sector_gives_the_identity(void)
{
	static const uint8_t ok[] = "device=qemu-1\ncredential=tok-1\n\xff\xff";
	char dev[16], cred[16];

	CHECK(link_prov_parse(ok, sizeof(ok), dev, cred, sizeof(dev)) == 0);
	CHECK_EQ_STR(dev, "qemu-1");
	CHECK_EQ_STR(cred, "tok-1");
	CHECK(link_prov_parse((const uint8_t *)"device=d\n", 9, dev, cred, sizeof(dev)) == 0);
	CHECK_EQ_STR(cred, "");
}

static void link_provisioning_sector_refuses_anything_else(void)
{
	static const char *const bad[] = {
		"", "\xff", "credential=t\n", "device=d", "device=\n", "device=a b\n", "device=d\nkey=k\n",
		"device=d\ndevice=e\n", "device=0123456789abcdef\n", "=d\n", "device=d\n\n", "dev", "device=d\x01\n",
	};
	char dev[16], cred[16];

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (link_prov_parse((const uint8_t *)bad[i], strlen(bad[i]), dev, cred, sizeof(dev)) != -1) {
			fail_at(__FILE__, __LINE__, "accepted \"%s\"", bad[i]);
			return;
		}
}

/* ---- se_link ------------------------------------------------------------ */

static void se_hmac_matches_rfc4231_case_2(void)
{
	static const char data[] = "what do ya want for nothing?";
	uint8_t mac[SE_MAC_LEN];
	char hex[2 * SE_MAC_LEN + 1];

	se_hmac(mac, (const uint8_t *)"Jefe", 4, (const uint8_t *)data, 10, (const uint8_t *)data + 10,
		sizeof(data) - 11, (const uint8_t *)"", 0);
	frame_to_hex(hex, sizeof(hex), mac, sizeof(mac));
	CHECK_EQ_STR(hex, "5BDCC146BF60754E6A042426089575C75A003F089D2739839DEC58B964EC3843");
}

/* What an element with key answers to req: the frame of se_link.h. */
static void se_answer(uint8_t out[SE_ANS_LEN], const uint8_t *req, int req_len, const uint8_t *key, uint8_t status)
{
	static const uint8_t head[] = { 'S', 'E', 1, 0x81, 0, 33 };
	uint16_t crc;

	memcpy(out, head, sizeof(head));
	out[6] = status;
	se_hmac(out + 7, key, SE_KEY_LEN, (const uint8_t *)"otacd-se1", 9, req + SE_HDR_LEN,
		(size_t)req_len - SE_HDR_LEN - 2u, &status, 1);
	crc = crc16_ccitt(out, SE_ANS_LEN - 2u);
	out[SE_ANS_LEN - 2] = (uint8_t)(crc >> 8);
	out[SE_ANS_LEN - 1] = (uint8_t)crc;
}

static int se_request_for(uint8_t req[SE_REQ_MAX], uint8_t nonce0, size_t sig_len)
{
	static const uint8_t digest[32] = { 0xd1 }, sig[SE_SIG_MAX + 1] = { 0x30 };
	struct se_request r = { .slot = 1, .sig_type = 0x22, .digest = digest, .sig = sig, .sig_len = sig_len };

	memset(r.nonce, nonce0, sizeof(r.nonce));
	return se_req_encode(req, &r);
}

static void se_request_frame_carries_nonce_slot_type_digest_and_signature(void)
{
	uint8_t req[SE_REQ_MAX];
	int n = se_request_for(req, 0x5a, 70);

	CHECK(n == (int)(SE_HDR_LEN + 16 + 3 + 32 + 70 + 2));
	CHECK(memcmp(req, "SE\x01\x01\x00\x79", 6) == 0); /* LEN 121 */
	CHECK(req[6] == 0x5a && req[21] == 0x5a && req[22] == 1 && req[23] == 0x22 && req[24] == 0xd1);
	CHECK(req[56] == 70 && req[57] == 0x30);
	CHECK(crc16_ccitt(req, (size_t)n - 2u) == (uint16_t)(req[n - 2] << 8 | req[n - 1]));
	CHECK(se_request_for(req, 0, SE_SIG_MAX + 1) == SE_EARG);
}

static void se_answer_is_valid_only_when_authentic_and_for_this_request(void)
{
	static const uint8_t key[SE_KEY_LEN] = { 7, 7, 7 }, other[SE_KEY_LEN] = { 7, 7, 8 };
	uint8_t req[SE_REQ_MAX], req2[SE_REQ_MAX], ans[SE_ANS_LEN], st;
	int n = se_request_for(req, 1, 71), n2 = se_request_for(req2, 2, 71);

	se_answer(ans, req, n, key, SE_STATUS_VALID);
	CHECK(se_ans_check(ans, sizeof(ans), req, (size_t)n, key, &st) == 0 && st == SE_STATUS_VALID);
	CHECK(se_ans_check(ans, sizeof(ans) - 1, req, (size_t)n, key, &st) == SE_ESHORT);
	CHECK(se_ans_check(ans, 0, req, (size_t)n, key, &st) == SE_ESHORT);
	CHECK(se_ans_check(ans, sizeof(ans), req2, (size_t)n2, key, &st) == SE_EMAC); /* a replay */
	CHECK(se_ans_check(ans, sizeof(ans), req, (size_t)n, other, &st) == SE_EMAC && st == 0xff);
	for (size_t bit = 0; bit < 8 * sizeof(ans); bit++) {
		ans[bit / 8] ^= (uint8_t)(1u << bit % 8);
		if (se_ans_check(ans, sizeof(ans), req, (size_t)n, key, &st) == 0) {
			fail_at(__FILE__, __LINE__, "answer with bit %zu flipped accepted", bit);
			return;
		}
		ans[bit / 8] ^= (uint8_t)(1u << bit % 8);
	}
	se_answer(ans, req, n, key, SE_STATUS_INVALID);
	CHECK(se_ans_check(ans, sizeof(ans), req, (size_t)n, key, &st) == SE_EINVALID && st == SE_STATUS_INVALID);
	se_answer(ans, req, n, other, SE_STATUS_VALID); /* "valid" from who lacks the key */
	CHECK(se_ans_check(ans, sizeof(ans), req, (size_t)n, key, &st) == SE_EMAC);
}

/* ---- table, report ---------------------------------------------------- */

#define TEST(suite, fn) { suite, #fn, fn }

static const struct test {
	const char *suite, *name;
	void (*fn)(void);
} tests[] = {
	TEST("crc16", crc16_matches_ccitt_false_check_value),
	TEST("crc16", crc16_of_empty_input_is_the_initial_value),
	TEST("crc16", crc16_of_known_vectors),
	TEST("crc16", crc16_in_pieces_equals_one_pass),
	TEST("ringbuf", ringbuf_starts_empty_and_pop_fails),
	TEST("ringbuf", ringbuf_returns_samples_in_fifo_order),
	TEST("ringbuf", ringbuf_full_ring_drops_new_samples_and_counts_them),
	TEST("ringbuf", ringbuf_keeps_order_when_indices_wrap_at_2_pow_32),
	TEST("frame", frame_encode_writes_sync_len_payload_and_big_endian_crc),
	TEST("frame", frame_decode_round_trips_a_sample),
	TEST("frame", frame_decode_rejects_any_single_bit_flip),
	TEST("frame", frame_decode_rejects_bad_sync_length_and_truncation),
	TEST("frame", frame_encode_refuses_big_payloads_and_small_buffers),
	TEST("frame", frame_hex_round_trips_and_rejects_bad_digits),
	TEST("frame", sample_unpack_rejects_wrong_type_and_length),
	TEST("sensor", sensor_gives_the_same_readings_after_every_power_on),
	TEST("sensor", sensor_readings_stay_within_the_waveform_bounds),
	TEST("sensor", sensor_lfsr_has_maximal_period),
	TEST("selftest", selftest_passes_on_the_shipped_logic),
	TEST("sha256", sha256_of_fips_examples),
	TEST("sha256", sha256_of_a_million_a_in_odd_pieces),
	TEST("sha256", sha256_in_pieces_equals_one_pass),
	TEST("ota_link", link_request_line_carries_method_range_body_length_and_identity),
	TEST("ota_link", link_request_line_refuses_fields_that_break_the_line),
	TEST("ota_link", link_answer_header_is_parsed_strictly),
	TEST("frame", frame_hexval_takes_hex_digits_only),
	TEST("ota_link", link_provisioning_sector_gives_the_identity),
	TEST("ota_link", link_provisioning_sector_refuses_anything_else),
	TEST("se_link", se_hmac_matches_rfc4231_case_2),
	TEST("se_link", se_request_frame_carries_nonce_slot_type_digest_and_signature),
	TEST("se_link", se_answer_is_valid_only_when_authentic_and_for_this_request),
};

#define NTESTS (sizeof(tests) / sizeof(tests[0]))

static struct result {
	double seconds;
	char failure[sizeof(failure)];
} results[NTESTS];

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void xml_escaped(FILE *f, const char *s)
{
	for (; *s; s++) {
		switch (*s) {
		case '&': fputs("&amp;", f); break;
		case '<': fputs("&lt;", f); break;
		case '>': fputs("&gt;", f); break;
		case '"': fputs("&quot;", f); break;
		case '\'': fputs("&apos;", f); break;
		default: fputc(*s, f); break;
		}
	}
}

/* One <testsuite> per run of consecutive tests with the same suite name. */
static int write_junit(const char *path, double total, unsigned nfailed)
{
	FILE *f = fopen(path, "w");

	if (!f) {
		perror(path);
		return -1;
	}
	fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
	fprintf(f, "<testsuites name=\"sensor-node unit tests\" tests=\"%zu\" failures=\"%u\" errors=\"0\" time=\"%.6f\">\n",
		NTESTS, nfailed, total);
	for (size_t i = 0; i < NTESTS;) {
		size_t end = i, nfail = 0;
		double t = 0;

		while (end < NTESTS && strcmp(tests[end].suite, tests[i].suite) == 0) {
			nfail += results[end].failure[0] != '\0';
			t += results[end].seconds;
			end++;
		}
		fprintf(f, "  <testsuite name=\"sensor-node.%s\" tests=\"%zu\" failures=\"%zu\" errors=\"0\" skipped=\"0\" time=\"%.6f\">\n",
			tests[i].suite, end - i, nfail, t);
		for (; i < end; i++) {
			fprintf(f, "    <testcase classname=\"sensor-node.%s\" name=\"%s\" time=\"%.6f\"", tests[i].suite,
				tests[i].name, results[i].seconds);
			if (!results[i].failure[0]) {
				fputs("/>\n", f);
				continue;
			}
			fputs(">\n      <failure type=\"assertion\" message=\"", f);
			xml_escaped(f, results[i].failure);
			fputs("\">", f);
			xml_escaped(f, results[i].failure);
			fputs("</failure>\n    </testcase>\n", f);
		}
		fputs("  </testsuite>\n", f);
	}
	fputs("</testsuites>\n", f);
	if (fclose(f) != 0) {
		perror(path);
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	unsigned nfailed = 0;
	double start = now();

	if (argc > 2) {
		fprintf(stderr, "usage: %s [REPORT.xml]\n", argv[0]);
		return 2;
	}
	for (size_t i = 0; i < NTESTS; i++) {
		double t0 = now();

		failure[0] = '\0';
		tests[i].fn();
		results[i].seconds = now() - t0;
		memcpy(results[i].failure, failure, sizeof(failure));
		if (failure[0]) {
			nfailed++;
			printf("FAIL %s.%s\n     %s\n", tests[i].suite, tests[i].name, failure);
		} else {
			printf("ok   %s.%s\n", tests[i].suite, tests[i].name);
		}
	}
	printf("%zu tests, %u failed\n", NTESTS, nfailed);
	if (argc == 2 && write_junit(argv[1], now() - start, nfailed) < 0)
		return 1;
	return nfailed ? 1 : 0;
}
