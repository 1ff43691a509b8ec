/*
 * ota_port.c - libotadev's hooks on the MPS2 boards (see ota_port.h).
 *
 * slot flash   the flash map of flashmap.h, on QEMU RAM-backed (the rig
 *              backs it with a file); NOR rules are enforced: erase by
 *              4 KiB sector to 0xff, a write that would set a bit is
 *              refused (on real NOR it would corrupt silently)
 * persistent   two sectors, A/B: the older one is erased, then sequence,
 *   state      length and record are written, then their CRC-32, then the
 *              magic last; the valid copy with the higher sequence wins,
 *              so a power cut mid-write leaves the previous copy
 * clock        SysTick at 1 kHz; random: xorshift seeded from SysTick's
 *              counter (jitter, and the secure element's nonce, which a
 *              board takes from its TRNG: docs/security.md)
 * crypto       SHA-256: src/sha256.c.  Signature verify: the secure
 *              element on UART2 (src/se_link.h; on QEMU the model
 *              hil/se_model.py) checks ECDSA P-256 with the bootloader's
 *              public keys in its slots and MACs its answer; no answer,
 *              a garbled or a forged one is a refusal
 * status       simulated: battery 80 %, no external power, not metered,
 *              rssi -70 dBm, 1 mAh per minute of uptime; a board reads
 *              its ADC and modem
 * reboot       SCB AIRCR SYSRESETREQ (NVIC_SystemReset)
 * transport    UART1 to hil/bridge.py (src/ota_link.h)
 * identity     the provisioning sector ("device=ID\ncredential=TOKEN\n",
 *              written at the factory, here by the rig); without one the
 *              device is "sensor-node-<board>" with no credential
 */
#include "ota_port.h"

#include <stddef.h>
#include <string.h>

#include "flashmap.h"
#include "frame.h"
#include "mps2.h"
#include "ota_link.h"
#include "otadev.h"
#include "se_link.h"
#include "selftest.h"
#include "sha256.h"
#include "trusted_key.h"
#include "uart.h"
#include "version.h"

#define PROV_OFF (STATE_OFF + STATE_SECTORS * FLASH_SECTOR)
#define STATE_MAGIC 0x53544131u /* "STA1" */
#define ID_MAX 64u
#define SE_FIRST_MS 10000u /* an ATECC608 verify takes ~60 ms; the model on a loaded CI host far more */
#define SE_BYTE_MS 500u

/* The link key the element MACs its answers with (make SE_LINK_KEY=64 hex
 * digits; the default is a development key).  Provisioned into both the
 * element and the firmware; docs/security.md. */
#ifndef SE_LINK_KEY_HEX
#define SE_LINK_KEY_HEX "5345206c696e6b206b65792028646576656c6f706d656e74206f6e6c7929212e"
#endif

struct state_hdr {
	uint32_t magic, crc;           /* written last, magic last of all */
	uint32_t seq, len;             /* crc: CRC-32 of seq, len and the record */
};

static struct otadev ota;
static struct otadev_config cfg;
static struct sha256 sha;
static char device_id[ID_MAX] = "sensor-node-" SENSOR_BOARD, credential[ID_MAX];
static volatile uint64_t uptime_ms;
static uint64_t next_step;
static uint32_t rnd;
static uint8_t se_key[SE_KEY_LEN];
static int ota_on, link_up, se_key_ok;

/* Writes go through a volatile pointer (a flash controller's data
 * register on a real part); reads are plain memory-mapped reads. */
static volatile uint8_t *flash_at(uint32_t off)
{
	return (volatile uint8_t *)(uintptr_t)(FLASH_BASE + off);
}

static const uint8_t *flash_rd(uint32_t off)
{
	return (const uint8_t *)(uintptr_t)(FLASH_BASE + off);
}

/* ---- clock ---------------------------------------------------------------- */

void ota_port_tick(void)
{
	uptime_ms++;
}

/* A 64-bit read is two loads on a Cortex-M: mask SysTick around it. */
uint64_t ota_port_now_ms(void)
{
	uint32_t primask;
	uint64_t v;

	__asm__ volatile("mrs %0, primask\n\tcpsid i" : "=r"(primask)::"memory");
	v = uptime_ms;
	__asm__ volatile("msr primask, %0" ::"r"(primask) : "memory");
	return v;
}

static uint64_t h_now(void *ctx)
{
	(void)ctx;
	return ota_port_now_ms();
}

static uint32_t h_random(void *ctx)
{
	(void)ctx;
	if (!rnd)
		rnd = (SYST_CVR ^ (uint32_t)ota_port_now_ms() ^ 0x9e3779b9u) | 1u;
	rnd ^= rnd << 13;
	rnd ^= rnd >> 17;
	rnd ^= rnd << 5;
	return rnd;
}

/* ---- flash: NOR rules on the flash map ------------------------------------ */

static int raw_write(uint32_t off, const uint8_t *src, uint32_t len)
{
	volatile uint8_t *dst = flash_at(off);
	uint32_t i;

	for (i = 0; i < len; i++)
		if ((dst[i] & src[i]) != src[i])
			return -1; /* would set a bit: the sector was not erased */
	for (i = 0; i < len; i++)
		dst[i] = src[i];
	return 0;
}

static int raw_erase(uint32_t off, uint32_t len)
{
	volatile uint8_t *p = flash_at(off);
	uint32_t i;

	if (off % FLASH_SECTOR || len % FLASH_SECTOR)
		return -1;
	for (i = 0; i < len; i++)
		p[i] = 0xff;
	return 0;
}

static int slot_range(int slot, uint32_t off, uint32_t len, uint32_t *abs)
{
	if ((slot != 0 && slot != 1) || off > SLOT_SIZE || len > SLOT_SIZE - off)
		return -1;
	*abs = (slot ? SLOT1_OFF : SLOT0_OFF) + off;
	return 0;
}

static int h_read(void *ctx, int slot, uint32_t off, void *buf, uint32_t len)
{
	uint32_t a;

	(void)ctx;
	if (slot_range(slot, off, len, &a) < 0)
		return -1;
	memcpy(buf, flash_rd(a), len);
	return 0;
}

static int h_write(void *ctx, int slot, uint32_t off, const void *buf, uint32_t len)
{
	uint32_t a;

	(void)ctx;
	return slot_range(slot, off, len, &a) < 0 ? -1 : raw_write(a, buf, len);
}

static int h_erase(void *ctx, int slot, uint32_t off, uint32_t len)
{
	uint32_t a;

	(void)ctx;
	return slot_range(slot, off, len, &a) < 0 ? -1 : raw_erase(a, len);
}

/* ---- persistent state: A/B sectors ----------------------------------------- */

/* The CRC of a copy at off: seq, len and the record lie contiguous in flash. */
static uint32_t copy_crc(uint32_t off, uint32_t len)
{
	return otadev_crc32(flash_rd(off + 8), 8 + len);
}

/* The sector (0/1) holding the newest valid copy, or -1; its header in *out. */
static int state_newest(struct state_hdr *out)
{
	int best = -1;
	uint32_t s;

	for (s = 0; s < STATE_SECTORS; s++) {
		struct state_hdr h;
		const uint8_t *p = flash_rd(STATE_OFF + s * FLASH_SECTOR);
		memcpy(&h, p, sizeof(h));
		if (h.magic != STATE_MAGIC || h.len > sizeof(struct otadev_record) ||
		    h.crc != copy_crc(STATE_OFF + s * FLASH_SECTOR, h.len))
			continue;
		if (best < 0 || h.seq > out->seq) {
			*out = h;
			best = (int)s;
		}
	}
	return best;
}

static int h_persist_read(void *ctx, void *buf, size_t cap)
{
	struct state_hdr h;
	int s = state_newest(&h);

	(void)ctx;
	if (s < 0)
		return 0;
	if (h.len > cap)
		return -1;
	memcpy(buf, flash_rd(STATE_OFF + (uint32_t)s * FLASH_SECTOR + sizeof(h)), h.len);
	return (int)h.len;
}

static int h_persist_write(void *ctx, const void *buf, size_t len)
{
	struct state_hdr h, cur;
	int s = state_newest(&cur);
	uint32_t off = STATE_OFF + (s == 0 ? FLASH_SECTOR : 0);

	(void)ctx;
	if (len > sizeof(struct otadev_record))
		return -1;
	h.magic = STATE_MAGIC;
	h.seq = s < 0 ? 1 : cur.seq + 1;
	h.len = (uint32_t)len;
	if (raw_erase(off, FLASH_SECTOR) < 0 || raw_write(off + 8, (const uint8_t *)&h.seq, 4) < 0 ||
	    raw_write(off + 12, (const uint8_t *)&h.len, 4) < 0 ||
	    raw_write(off + sizeof(h), buf, h.len) < 0)
		return -1;
	h.crc = copy_crc(off, h.len);
	/* crc, then the magic: until both are there this copy is invalid */
	if (raw_write(off + 4, (const uint8_t *)&h.crc, 4) < 0)
		return -1;
	return raw_write(off, (const uint8_t *)&h.magic, 4);
}

/* ---- crypto ----------------------------------------------------------------- */

static int h_sha_begin(void *ctx)
{
	(void)ctx;
	sha256_begin(&sha);
	return 0;
}

static int h_sha_update(void *ctx, const void *data, size_t len)
{
	(void)ctx;
	sha256_update(&sha, data, len);
	return 0;
}

static int h_sha_end(void *ctx, uint8_t out[32])
{
	(void)ctx;
	sha256_end(&sha, out);
	return 0;
}

/* ---- signature verify: the secure element on UART2 (se_link.h) ------------- */

/* A byte from UART2 within ms, or -1. */
static int se_getc(uint32_t ms)
{
	uint64_t until = ota_port_now_ms() + ms;
	int c;

	while ((c = uart2_getc()) < 0)
		if (ota_port_now_ms() >= until)
			return -1;
	return c;
}

/* The nonce that makes each answer single-use.  xorshift over SysTick is
 * guessable; a board takes it from its TRNG or the element's own Random
 * command (docs/security.md, "The secure element link"). */
static void se_nonce(uint8_t out[SE_NONCE_LEN])
{
	uint32_t i, r = 0;

	for (i = 0; i < SE_NONCE_LEN; i++) {
		if (i % 4u == 0)
			r = h_random(NULL) ^ (uint32_t)ota_port_now_ms();
		out[i] = (uint8_t)(r >> (8u * (i % 4u)));
	}
}

/* Ask the element whether sig over digest verifies with the public key in
 * slot: 0 only for an authentic "valid"; otherwise an enum se_error (no
 * answer in time counts as SE_ESHORT, never as valid). */
static int se_verify(uint8_t slot, uint8_t type, const uint8_t digest[32], const uint8_t *sig, size_t sig_len)
{
	uint8_t req[SE_REQ_MAX], ans[SE_ANS_LEN], status;
	struct se_request r = { .slot = slot, .sig_type = type, .digest = digest, .sig = sig, .sig_len = sig_len };
	int len;
	size_t i, n;

	if (!se_key_ok)
		return SE_EMAC; /* with no key, a zero key would be one anybody could MAC with */
	se_nonce(r.nonce);
	if ((len = se_req_encode(req, &r)) < 0)
		return len;
	while (uart2_getc() >= 0)
		; /* drop what a timed-out exchange left: it cannot match this nonce anyway */
	for (i = 0; i < (size_t)len; i++)
		uart2_putc((char)req[i]);
	for (n = 0; n < sizeof(ans); n++) {
		int c = se_getc(n ? SE_BYTE_MS : SE_FIRST_MS);
		if (c < 0)
			break;
		ans[n] = (uint8_t)c;
	}
	return se_ans_check(ans, n, req, (size_t)len, se_key, &status);
}

/* The bootloader key slot holding key: its index in cfg.keys (the element
 * was provisioned with the same keys in the same order), or -1. */
static int key_slot(const uint8_t *key, size_t key_len)
{
	int i;

	for (i = 0; i < cfg.nkeys; i++)
		if (cfg.keys[i].len == key_len && memcmp(cfg.keys[i].der, key, key_len) == 0)
			return i;
	return -1;
}

static int h_verify(void *ctx, enum otadev_sig type, const uint8_t *key, size_t key_len, const uint8_t digest[32],
		    const uint8_t *sig, size_t sig_len)
{
	int slot = key_slot(key, key_len), err;

	(void)ctx;
	if (slot < 0) {
		uart_putline("OTA verify: the key is in no key slot; refused");
		return -1;
	}
	err = se_verify((uint8_t)slot, (uint8_t)type, digest, sig, sig_len);
	uart_puts("OTA verify: secure element: ");
	uart_putline(se_error_name(err));
	return err == 0 ? 0 : -1;
}

/* The console's "V" (main.c): one hex line, slot (1) | sig type (1) |
 * digest (32) | signature, put to the element as the verify hook would;
 * prints "VERIFY valid" or "VERIFY refused: why".  The element only ever
 * checks a signature against its public keys, so this oracle gives a
 * console user nothing they could not compute themselves. */
void ota_port_verify_console(void)
{
	char hex[2u * (34u + SE_SIG_MAX) + 2u];
	uint8_t in[34u + SE_SIG_MAX];
	size_t n = 0;
	int len, err;

	uart_putline("VERIFY hex?");
	for (;;) {
		int c;
		while ((c = uart_getc()) < 0)
			;
		if (c == '\r')
			continue;
		if (c == '\n')
			break;
		if (n + 1u < sizeof(hex))
			hex[n] = (char)c;
		n++;
	}
	hex[n < sizeof(hex) ? n : sizeof(hex) - 1u] = '\0';
	if (n >= sizeof(hex) || (len = frame_from_hex(in, sizeof(in), hex)) < 34) {
		uart_putline("VERIFY refused: not hex of slot, type, digest and signature");
		return;
	}
	err = se_verify(in[0], in[1], in + 2, in + 34, (size_t)len - 34u);
	uart_puts(err == 0 ? "VERIFY " : "VERIFY refused: ");
	uart_putline(se_error_name(err));
}

/* ---- power, self-test, reboot, log ------------------------------------------ */

static void h_status(void *ctx, struct otadev_status *out)
{
	(void)ctx;
	memset(out, 0, sizeof(*out));
	out->battery_pct = 80;
	out->rssi = -70;
	out->battery_mah_used = (uint32_t)(ota_port_now_ms() / 60000u);
}

static int h_selftest(void *ctx)
{
	(void)ctx;
	return selftest_run() ? -1 : 0;
}

void ota_port_reboot(void)
{
	__asm__ volatile("dsb" ::: "memory");
	SCB_AIRCR = SCB_AIRCR_SYSRESET;
	__asm__ volatile("dsb" ::: "memory");
	for (;;)
		;
}

static void h_reboot(void *ctx)
{
	(void)ctx;
	uart_putline("OTA reboot");
	ota_port_reboot();
}

static void h_log(void *ctx, const char *msg)
{
	(void)ctx;
	uart_puts("OTA ");
	uart_putline(msg);
}

/* ---- transport: UART1 to the bridge ----------------------------------------- */

/* A byte from UART1 within ms, or -1. */
static int link_getc(uint32_t ms)
{
	uint64_t until = ota_port_now_ms() + ms;
	int c;

	while ((c = uart1_getc()) < 0)
		if (ota_port_now_ms() >= until)
			return -1;
	return c;
}

/* Watch for the bridge's "BRIDGE 1" line, waiting up to ms between two
 * bytes (the UART holds one byte at a time; QEMU hands over the next one
 * only after the firmware read the last). */
static void link_watch(uint32_t ms)
{
	static const char hello[] = "BRIDGE 1\n";
	static unsigned matched;
	int c;

	while (!link_up && (c = link_getc(ms)) >= 0) {
		matched = c == hello[matched] ? matched + 1 : c == hello[0];
		if (matched == sizeof(hello) - 1) {
			link_up = 1;
			uart_putline("OTA link up");
		}
	}
}

static int h_http(void *ctx, const struct otadev_http_req *req, struct otadev_http_resp *resp)
{
	static const char hex[] = "0123456789abcdef";
	char line[OTADEV_URL_MAX + 2 * ID_MAX + 48];
	size_t i, n;

	(void)ctx;
	resp->status = 0;
	resp->len = 0;
	resp->range_total = -1;
	link_watch(LINK_HELLO_MS);
	if (!link_up || link_req_line(line, sizeof(line), req) < 0)
		return -1;
	while (uart1_getc() >= 0)
		; /* drop what a timed-out exchange left */
	for (i = 0; line[i]; i++)
		uart1_putc(line[i]);
	for (i = 0; req->body && i < req->body_len; i++) {
		uart1_putc(hex[(unsigned char)req->body[i] >> 4]);
		uart1_putc(hex[(unsigned char)req->body[i] & 15]);
	}
	uart1_putc('\n');

	for (n = 0;;) {
		int c;
		if ((c = link_getc(n ? LINK_BYTE_MS : LINK_FIRST_MS)) < 0)
			return -1;
		if (c == '\n')
			break;
		if (n + 1 >= LINK_LINE_MAX)
			return -1;
		line[n++] = (char)c;
	}
	line[n] = '\0';
	if (link_rsp_line(line, &resp->status, &resp->range_total, &n, resp->cap) < 0) {
		resp->status = 0;
		return -1;
	}
	for (i = 0; i < n; i++) {
		int hi, lo;
		if ((hi = frame_hexval(link_getc(LINK_BYTE_MS))) < 0 || (lo = frame_hexval(link_getc(LINK_BYTE_MS))) < 0) {
			resp->status = 0;
			return -1;
		}
		resp->body[i] = (char)(hi << 4 | lo);
	}
	if (link_getc(LINK_BYTE_MS) != '\n') {
		resp->status = 0;
		return -1;
	}
	resp->len = n;
	return 0;
}

static const struct otadev_hooks hooks = {
	.http = h_http,
	.flash_read = h_read,
	.flash_write = h_write,
	.flash_erase = h_erase,
	.sha256_begin = h_sha_begin,
	.sha256_update = h_sha_update,
	.sha256_end = h_sha_end,
	.verify = h_verify,
	.now_ms = h_now,
	.random = h_random,
	.persist_read = h_persist_read,
	.persist_write = h_persist_write,
	.status = h_status,
	.selftest = h_selftest,
	.reboot = h_reboot,
	.log = h_log,
};

/* ---- provisioning, init, loop ----------------------------------------------- */

/* The identity a factory wrote into the provisioning sector. */
static void provision(void)
{
	char dev[ID_MAX], cred[ID_MAX];

	if (link_prov_parse(flash_rd(PROV_OFF), FLASH_SECTOR, dev, cred, ID_MAX) == 0) {
		memcpy(device_id, dev, sizeof(dev));
		memcpy(credential, cred, sizeof(cred));
		uart_puts("OTA provisioned device=");
		uart_putline(device_id);
	}
}

static void put_u32(uint32_t v)
{
	char t[11];
	int i = 10;

	t[i] = '\0';
	do {
		t[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	uart_puts(t + i);
}

static void print_status(const char *lead)
{
	static const char *const flag[] = { "?", "set", "bad", "unset" };
	struct otadev_trailer t;

	uart_puts(lead);
	uart_puts("phase=");
	uart_puts(otadev_phase_name(ota.rec.phase));
	uart_puts(" version=");
	uart_puts(ota.rec.version);
	uart_puts(" counter=");
	put_u32(ota.rec.security_counter);
	uart_puts(" gen=");
	put_u32(ota.rec.gen);
	uart_puts(" queued=");
	put_u32(ota.rec.nq);
	uart_puts(" image_ok=");
	uart_putline(otadev_trailer_read(&t, &hooks, NULL, 0, SLOT_SIZE) == 0 && t.image_ok >= 1 && t.image_ok <= 3
			     ? flag[t.image_ok]
			     : "?");
}

void ota_port_print_status(void)
{
	if (ota_on)
		print_status("OTA ");
	else
		uart_putline("OTA off");
}

void ota_port_init(void)
{
	uart1_init();
	uart2_init();
	se_key_ok = frame_from_hex(se_key, sizeof(se_key), SE_LINK_KEY_HEX) == (int)SE_KEY_LEN;
	if (!se_key_ok)
		uart_putline("OTA verify: SE_LINK_KEY is not 32 bytes of hex: every signature will be refused");
	provision();
	cfg.device = device_id;
	cfg.credential = credential;
	cfg.product = "sensor-node";
	cfg.hardware = SENSOR_BOARD;
	cfg.bootloader = "1.10.0"; /* the MCUboot release the board ships */
	cfg.keys[0].der = trusted_key;
	cfg.keys[0].len = trusted_key_len;
	cfg.nkeys = 1;
	cfg.slot_size = SLOT_SIZE;
	cfg.sector_size = FLASH_SECTOR;
	cfg.poll_ms = 60000;
	cfg.backoff_base_ms = 1000;
	cfg.backoff_max_ms = 600000;
	cfg.heartbeat_ms = 3600000;
	cfg.min_battery_pct = 20;
	if (otadev_init(&ota, &hooks, NULL, &cfg) < 0) {
		uart_puts("OTA off: ");
		uart_putline(ota.err[0] ? ota.err : "init failed");
		return;
	}
	ota_on = 1;
	print_status("OTA init ");
}

void ota_port_poll(void)
{
	uint64_t now = ota_port_now_ms();
	uint32_t wait;

	if (!ota_on)
		return;
	link_watch(0);
	if (now < next_step)
		return;
	if (otadev_step(&ota, &wait) < 0) {
		uart_puts("OTA step: ");
		uart_putline(ota.err);
		if (wait < 1000)
			wait = 1000;
	}
	next_step = ota_port_now_ms() + wait;
}
