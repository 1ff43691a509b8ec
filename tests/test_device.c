/*
 * test_device.c - libotadev (device/) and otacd-device (issue 14).
 *
 * Unit tests run the real state machine on in-memory hooks: two slots of
 * simulated NOR flash, a record that is written whole or not at all, a
 * clock the test advances, an update server in the test that speaks the
 * device API (and misbehaves on demand: corrupt bytes, hostile offers,
 * lost acknowledgements), a power cut after any number of flash or record
 * writes (a longjmp out of the hook), and a simulated MCUboot applying
 * the swap decision of the trailers.  Each invariant of docs/device.md has
 * its test here.
 *
 * The end-to-end tests, real otacd-device processes against the real
 * otacd, are in tests/test_devprocs.c.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <fcntl.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../device/otadev.h"
#include "../device/port_linux_enc.h"
#include "../device/port_linux_x509.h"
#include "../orchestrator/keys.h"
#include "../orchestrator/mcuboot.h"
#include "../orchestrator/pki.h"
#include "../orchestrator/provenance.h"
#include "../common/httpc.h"
#include "devharness.h"
#include "harness.h"
#include "memdev.h"

#define SLOT (64 * 1024)
#define SECTOR 4096
#define HW "mps2-an385"

/* ---- the in-memory device and server -------------------------------------- */

struct world {
	struct memdev mem;            /* first: the hooks' ctx is the world */
	/* the server */
	int offer_on, image_status, corrupt_left, ack_drop_left, reports_status;
	struct buf img;
	char sha_hex[65], offer_version[32], offer_hw[32];
	char offer_url[1024];         /* the offer's image URL; "" : /device/v1/images/SHA */
	/* the signing PKI (issue 13), when cfg.anchor is set: release 3's
	 * manifest envelope, the root's list (PEM, NULL: 404) and the number
	 * check-ins announce (0: none) */
	char *manifest, *crl;
	unsigned announce;
	const struct otadev_hooks *hooks;     /* NULL: HOOKS */
	int checkin_down;                     /* check-ins get no answer */
	uint8_t work[16384];
	uint32_t offer_counter;
	long bytes_served;
	uint32_t seen[512];
	int nseen;
	int counts[8], raw[8];        /* per event: by distinct seq / every receipt */
	uint32_t last_seq[8];
	/* the device */
	struct otadev_config cfg;
	unsigned char *keyder[2];
	struct otadev d;
};
_Static_assert(offsetof(struct world, mem) == 0, "the hooks' ctx is the world: mem comes first");

static int m_http(void *ctx, const struct otadev_http_req *rq, struct otadev_http_resp *rs)
{
	struct world *w = ctx;
	rs->len = 0;
	rs->range_total = -1;
	if (!strcmp(rq->path, "/device/v1/checkin")) {
		char url[1100];
		int n;
		json_t *req = json_loadb(rq->body, rq->body_len, 0, NULL);
		assert_non_null(req);
		assert_string_equal(json_string_value(json_object_get(req, "device")), "dev-1");
		json_decref(req);
		if (w->checkin_down)
			return -1;
		if (w->offer_url[0])
			snprintf(url, sizeof(url), "%s", w->offer_url);
		else
			snprintf(url, sizeof(url), "/device/v1/images/%s", w->sha_hex);
		if (w->offer_on)
			n = snprintf(rs->body, rs->cap,
				     "{\"now\": %llu, \"time_scale\": 1.0, \"next_poll_ms\": 1000, \"revocations\": %u,"
				     " \"extra\": [1, {\"a\": 2}],"
				     " \"offer\": {\"release\": 3, \"version\": \"%s\", \"security_counter\": %u,"
				     " \"image\": {\"url\": \"%s\", \"sha256\": \"%s\", \"size\": %zu,"
				     " \"type\": \"application\", \"hardware\": \"%s\"}, \"reason\": \"rollout\"}}",
				     (unsigned long long)(1796000000000ull + w->mem.now), w->announce, w->offer_version,
				     w->offer_counter, url, w->sha_hex, w->img.len, w->offer_hw);
		else
			n = snprintf(rs->body, rs->cap, "{\"now\": %llu, \"time_scale\": 1, \"next_poll_ms\": 1000,"
				     " \"offer\": null}", (unsigned long long)(1796000000000ull + w->mem.now));
		rs->len = (size_t)n;
		rs->status = 200;
		return 0;
	}
	if (!strncmp(rq->path, "/device/v1/images/", 18) || (w->offer_url[0] && !strcmp(rq->path, w->offer_url))) {
		size_t a = (size_t)rq->range_start, b = (size_t)rq->range_end;
		rs->status = w->image_status ? w->image_status : 206;
		if (rs->status != 206)
			return 0;
		assert_true(rq->range_start >= 0 && a <= b && b < w->img.len && b - a + 1 <= rs->cap);
		memcpy(rs->body, w->img.ptr + a, b - a + 1);
		rs->len = b - a + 1;
		rs->range_total = (long)w->img.len;
		w->bytes_served += (long)rs->len;
		if (w->corrupt_left > 0 && a == 0) {
			w->corrupt_left--;
			rs->body[rs->len / 2] ^= 0x40;
		}
		return 0;
	}
	if (!strcmp(rq->path, "/device/v1/reports")) {
		json_t *req = json_loadb(rq->body, rq->body_len, 0, NULL), *r;
		size_t i;
		assert_non_null(req);
		json_array_foreach(json_object_get(req, "reports"), i, r) {
			const char *ev = json_string_value(json_object_get(r, "event"));
			uint32_t seq = (uint32_t)json_integer_value(json_object_get(r, "seq"));
			int e, k, dup = 0;
			assert_non_null(ev);
			assert_true(seq > 0);
			for (e = 1; e <= OTADEV_EV_REFUSED && strcmp(otadev_event_name(e), ev); e++)
				;
			assert_true(e <= OTADEV_EV_REFUSED);
			w->raw[e]++;
			for (k = 0; k < w->nseen; k++)
				dup |= w->seen[k] == seq;
			if (!dup && w->nseen < 512) {
				/* the proposed server rule: a (device, seq) counts once */
				w->seen[w->nseen++] = seq;
				w->counts[e]++;
				w->last_seq[e] = seq;
			}
		}
		json_decref(req);
		if (w->ack_drop_left > 0) {
			w->ack_drop_left--;
			return -1;          /* recorded, but the answer is lost */
		}
		rs->status = w->reports_status ? w->reports_status : 200;
		rs->len = (size_t)snprintf(rs->body, rs->cap, "{\"accepted\": %zu}",
					   json_array_size(json_object_get(req, "reports")));
		return 0;
	}
	if (!strcmp(rq->path, "/device/v1/revocations") || !strcmp(rq->path, "/device/v1/releases/3/manifest")) {
		const char *body = !strcmp(rq->path, "/device/v1/revocations") ? w->crl : w->manifest;
		rs->status = body ? 200 : 404;
		if (body) {
			assert_true(strlen(body) <= rs->cap);
			memcpy(rs->body, body, strlen(body));
			rs->len = strlen(body);
		}
		return 0;
	}
	rs->status = 404;
	return 0;
}

static const struct otadev_hooks HOOKS = {
	.http = m_http, .random = memdev_random, MEMDEV_HOOKS,
};

/* ---- keys and images -------------------------------------------------------- */

static EVP_PKEY *key_good, *key_other;

static EVP_PKEY *new_key(void)
{
	EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	assert_non_null(k);
	return k;
}

static void sign_image(struct buf *out, EVP_PKEY *key, const char *version, uint32_t counter, size_t body)
{
	struct mcuboot_sign_opts o;
	char *bin = malloc(body);
	memset(&o, 0, sizeof(o));
	assert_int_equal(mcuboot_version_parse(version, &o.major, &o.minor, &o.revision, &o.build), 0);
	o.has_security_counter = 1;
	o.security_counter = counter;
	for (size_t i = 0; i < body; i++)
		bin[i] = (char)(i * 7 + version[2]);
	buf_init(out, 1 << 20);
	assert_int_equal(mcuboot_sign(out, bin, body, key, &o), 0);
	free(bin);
}

static void world_offer(struct world *w, const struct buf *img, const char *version, uint32_t counter, const char *hw)
{
	unsigned char sha[32];
	buf_release(&w->img);
	buf_init(&w->img, 1 << 20);
	buf_put(&w->img, img->ptr, img->len);
	EVP_Digest(img->ptr, img->len, sha, NULL, EVP_sha256(), NULL);
	ota_hex(w->sha_hex, sha, 32);
	snprintf(w->offer_version, sizeof(w->offer_version), "%s", version);
	snprintf(w->offer_hw, sizeof(w->offer_hw), "%s", hw);
	w->offer_counter = counter;
	w->offer_on = 1;
}

static struct world *world_new(uint32_t factory_counter)
{
	struct world *w = calloc(1, sizeof(*w));
	struct buf f;

	memdev_init(&w->mem, SLOT, SECTOR);
	buf_init(&w->img, 1 << 20);
	sign_image(&f, key_good, "1.0.0", factory_counter, 3000);
	memcpy(w->mem.slot[0], f.ptr, f.len);
	buf_release(&f);
	memdev_config(&w->cfg, &w->mem, HW, key_good, &w->keyder[0]);
	w->cfg.tags = "\"group\":\"staging\"";
	w->cfg.heartbeat_ms = 0;
	return w;
}

static void world_free(struct world *w)
{
	free(w->manifest);
	free(w->crl);
	memdev_release(&w->mem);
	buf_release(&w->img);
	OPENSSL_free(w->keyder[0]);
	free(w);
}

/* An image with an ENCRYPTED flag in slot: its body through AES-CTR under
 * the key its TLV wraps (CTR both ways), as MCUboot's swap does. */
static void mem_crypt_body(struct world *w, int slot)
{
	struct otadev_image img;
	uint8_t buf[512];
	const char *why;
	if (otadev_image_parse(&img, &HOOKS, w, slot, SLOT - 432, buf, sizeof(buf)) < 0 || !img.enc_keylen)
		return;
	assert_int_equal(port_linux_enc_unwrap(&w->mem.enc, w->mem.enc_priv, (int)img.enc_type,
					       w->mem.slot[slot] + img.enc_off, img.enc_len, img.enc_keylen, &why), 0);
	assert_int_equal(port_linux_enc_ctr(&w->mem.enc, 0, w->mem.slot[slot] + img.header_size, img.image_size), 0);
	port_linux_enc_forget(&w->mem.enc);
}

/* The simulated MCUboot (as port_linux_boot, on the in-memory slots). */
static const char *mem_boot(struct world *w)
{
	struct otadev_trailer pt, st;
	struct otadev_image img;
	uint8_t buf[512];
	const char *why;
	int type, valid;

	assert_int_equal(otadev_trailer_read(&pt, &HOOKS, w, 0, SLOT), 0);
	assert_int_equal(otadev_trailer_read(&st, &HOOKS, w, 1, SLOT), 0);
	type = otadev_swap_type(&pt, &st);
	if (type == OTADEV_SWAP_NONE)
		return "none";
	if (type != OTADEV_SWAP_REVERT) {
		valid = otadev_image_parse(&img, &HOOKS, w, 1, SLOT - 432, buf, sizeof(buf)) == 0 &&
			otadev_image_verify(&img, w->hooks ? w->hooks : &HOOKS, w, 1, w->cfg.keys, w->cfg.nkeys, buf,
					    sizeof(buf), &why) == 0;
		if (!valid) {
			memset(w->mem.slot[1], 0xff, SLOT);
			return "fail";
		}
	}
	{
		static uint8_t a[SLOT];
		memcpy(a, w->mem.slot[0], SLOT);
		memcpy(w->mem.slot[0], w->mem.slot[1], SLOT);
		memcpy(w->mem.slot[1], a, SLOT);
		memset(w->mem.slot[0] + SLOT - 432, 0xff, 432);
		memset(w->mem.slot[1] + SLOT - 432, 0xff, 432);
		memcpy(w->mem.slot[0] + SLOT - 16, otadev_boot_magic, 16);
		w->mem.slot[0][SLOT - OTADEV_TR_COPY_DONE] = 1;
		w->mem.slot[0][SLOT - OTADEV_TR_SWAP_INFO] = (uint8_t)type;
		if (type != OTADEV_SWAP_TEST)
			w->mem.slot[0][SLOT - OTADEV_TR_IMAGE_OK] = 1;
		/* MCUboot keeps an encrypted image in clear in the primary
		 * slot and encrypted in the secondary */
		mem_crypt_body(w, 0);
		mem_crypt_body(w, 1);
	}
	return type == OTADEV_SWAP_TEST ? "test" : type == OTADEV_SWAP_PERM ? "perm" : "revert";
}

/* Does slot hold an image that verifies with the device's keys? */
static int slot_verifies(struct world *w, int slot, uint32_t *counter)
{
	struct otadev_image img;
	uint8_t buf[512];
	const char *why;
	int ok = otadev_image_parse(&img, &HOOKS, w, slot, SLOT - 432, buf, sizeof(buf)) == 0 &&
		 otadev_image_verify(&img, w->hooks ? w->hooks : &HOOKS, w, slot, w->cfg.keys, w->cfg.nkeys, buf,
				     sizeof(buf), &why) == 0;
	if (counter)
		*counter = img.security_counter;
	return ok;
}

/* The invariants of docs/device.md that hold at every instant. */
static void check_invariants(struct world *w, uint32_t min_counter)
{
	struct otadev_trailer st;
	uint32_t c = 0;
	/* 1. a bootable verified image in the primary slot */
	assert_true(slot_verifies(w, 0, NULL));
	/* 2. the secondary is marked bootable only when it verified, with a counter >= held */
	assert_int_equal(otadev_trailer_read(&st, &HOOKS, w, 1, SLOT), 0);
	if (st.magic == OTADEV_MAGIC_GOOD) {
		assert_true(slot_verifies(w, 1, &c));
		assert_true(c >= min_counter);
	}
}

/* Start the device (otadev_init) and step it: returns 1 when it asked for a
 * reboot, 2 when the power was cut, 0 after max_steps. */
static int run(struct world *w, int max_steps)
{
	return memdev_run(&w->mem, &w->d, w->hooks ? w->hooks : &HOOKS, w, &w->cfg, max_steps);
}

/* Power on, run until settled (idle, nothing queued) through reboots. */
static void settle(struct world *w, int rounds)
{
	for (int i = 0; i < rounds; i++) {
		int r;
		mem_boot(w);
		r = run(w, 200);
		if (r == 0 && w->d.rec.phase == OTADEV_IDLE && w->d.rec.nq == 0)
			return;
	}
}

/* ---- unit tests -------------------------------------------------------------- */

static void checkin_answer_parser_reads_offers_and_refuses_malformed_answers(void **state)
{
	uint32_t tok[OTADEV_TOKENS * 5];
	struct otadev_checkin c;
	char sha[65];
	char good[1024];
	(void)state;
	memset(sha, 'a', 64);
	sha[64] = 0;
	snprintf(good, sizeof(good),
		 "{\"now\": 1796000000000, \"time_scale\": 3600.0, \"next_poll_ms\": 21600000, \"offer\": {\"release\": 7,"
		 " \"version\": \"1.5.0\", \"security_counter\": 3, \"image\": {\"url\": \"/device/v1/images/%s\","
		 " \"sha256\": \"%s\", \"size\": 123456, \"type\": \"application\", \"hardware\": \"mps2-an385\"},"
		 " \"min_bootloader\": \"1.2.0\", \"reason\": \"rollout\"}}", sha, sha);
	assert_int_equal(otadev_checkin_parse(&c, good, strlen(good), tok, OTADEV_TOKENS), 0);
	assert_true(c.has_offer);
	assert_true(c.now == 1796000000000ull && c.next_poll_ms == 21600000 && c.time_scale == 3600.0);
	assert_string_equal(c.offer.version, "1.5.0");
	assert_int_equal(c.offer.size, 123456);
	assert_int_equal(c.offer.security_counter, 3);
	assert_int_equal(c.offer.sha256[0], 0xaa);
	assert_string_equal(c.offer.min_bootloader, "1.2.0");
	assert_int_equal(otadev_checkin_parse(&c, "{\"now\":1,\"offer\":null}", 22, tok, OTADEV_TOKENS), 0);
	assert_false(c.has_offer);
	/* malformed: each refused, nothing half-filled is used */
	{
		const char *bad[] = {
			"", "[]", "{\"now\": -1}", "{\"now\": 1e3}", "{\"now\": 99999999999999999999999}",
			"{\"time_scale\": 0}", "{\"offer\": 5}", "{\"offer\": {\"version\": \"1.0\"}}",
			"{\"offer\": {\"release\":1,\"version\":\"1\",\"security_counter\":1,\"image\":{\"url\":\"/x\","
			"\"sha256\":\"zz\",\"size\":1,\"hardware\":\"h\"}}}",
			"{\"offer\": {\"release\":1,\"version\":\"1\\\"x\",\"security_counter\":1}}",
			"{\"now\": 1", "{\"now\" 1}", NULL,
		};
		for (int i = 0; bad[i]; i++)
			assert_true(otadev_checkin_parse(&c, bad[i], strlen(bad[i]), tok, OTADEV_TOKENS) < 0);
	}
	/* more tokens than the device has: refused, no overflow */
	{
		char big[4096];
		size_t n = 0;
		n += (size_t)snprintf(big + n, sizeof(big) - n, "{\"x\": [");
		for (int i = 0; i < 200; i++)
			n += (size_t)snprintf(big + n, sizeof(big) - n, "%s1", i ? "," : "");
		n += (size_t)snprintf(big + n, sizeof(big) - n, "]}");
		assert_true(otadev_checkin_parse(&c, big, n, tok, OTADEV_TOKENS) < 0);
	}
}

/* An absolute URL of n characters: a presigned-looking URL padded in its query. */
static void long_url(char *out, size_t n)
{
	const char *head = "https://bucket.s3.example/otacd/sha256/img?X-Amz-Signature=";
	assert_true(n < 1024 && n > strlen(head));
	memcpy(out, head, strlen(head));
	memset(out + strlen(head), 'f', n - strlen(head));
	out[n] = 0;
}

/* An image URL past OTADEV_URL_MAX - 1 characters still makes an offer,
 * flagged and with nothing copied (never a truncated URL); one that fits
 * is copied whole. */
static void checkin_parser_flags_an_image_url_past_the_limit(void **state)
{
	uint32_t tok[OTADEV_TOKENS * 5];
	struct otadev_checkin c;
	char sha[65], url[1024], js[2048];
	size_t lens[] = { OTADEV_URL_MAX - 1, OTADEV_URL_MAX, 900 };
	(void)state;
	memset(sha, 'a', 64);
	sha[64] = 0;
	for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
		long_url(url, lens[i]);
		snprintf(js, sizeof(js),
			 "{\"now\": 1, \"offer\": {\"release\": 7, \"version\": \"1.5.0\", \"security_counter\": 3,"
			 " \"image\": {\"url\": \"%s\", \"sha256\": \"%s\", \"size\": 9000, \"hardware\": \"h\"}}}",
			 url, sha);
		assert_int_equal(otadev_checkin_parse(&c, js, strlen(js), tok, OTADEV_TOKENS), 0);
		assert_true(c.has_offer);
		assert_int_equal(c.url_too_long, lens[i] >= OTADEV_URL_MAX);
		if (lens[i] < OTADEV_URL_MAX)
			assert_string_equal(c.offer.url, url);
		else
			assert_string_equal(c.offer.url, "");
	}
}

/* A device offered an image at a URL longer than its build's limit
 * refuses the offer (reported, not downloaded, not retried) instead of
 * failing every check-in; at the limit the same image lands. */
static void image_url_past_the_limit_is_refused_and_one_at_it_lands(void **state)
{
	struct world *w = world_new(1);
	struct buf img;
	(void)state;
	sign_image(&img, key_good, "1.1.0", 2, 9000);
	world_offer(w, &img, "1.1.0", 2, HW);
	long_url(w->offer_url, OTADEV_URL_MAX);
	assert_int_equal(run(w, 50), 0);
	assert_int_equal(w->d.rec.phase, OTADEV_IDLE);
	assert_int_equal(w->counts[OTADEV_EV_REFUSED], 1);
	assert_int_equal(w->bytes_served, 0);
	assert_int_equal(w->d.errors, 0);               /* check-ins kept succeeding */
	assert_non_null(strstr(w->d.err, "OTADEV_URL_MAX"));
	world_free(w);

	w = world_new(1);
	world_offer(w, &img, "1.1.0", 2, HW);
	long_url(w->offer_url, OTADEV_URL_MAX - 1);
	assert_int_equal(run(w, 100), 1);               /* downloaded from that URL, verified, rebooting */
	assert_string_equal(w->d.rec.offer.url, w->offer_url);
	assert_string_equal(mem_boot(w), "test");
	assert_int_equal(run(w, 50), 0);
	assert_string_equal(w->d.rec.version, "1.1.0");
	assert_int_equal(w->counts[OTADEV_EV_REFUSED], 0);
	assert_int_equal(w->bytes_served, (long)img.len);
	buf_release(&img);
	world_free(w);
}

static void trailer_layout_and_swap_decision_match_mcuboot(void **state)
{
	struct world *w = world_new(0);
	struct otadev_trailer p, s;
	(void)state;
	/* imgtool --pad --confirm: image_ok at end-24, magic in the last 16 */
	{
		struct buf img;
		struct mcuboot_sign_opts o;
		memset(&o, 0, sizeof(o));
		o.slot_size = SLOT;
		buf_init(&img, 1 << 20);
		assert_int_equal(mcuboot_sign(&img, "abc", 3, key_good, &o), 0);
		memcpy(w->mem.slot[1], img.ptr, SLOT);
		assert_int_equal(otadev_trailer_read(&s, &HOOKS, w, 1, SLOT), 0);
		assert_int_equal(s.magic, OTADEV_MAGIC_GOOD);
		assert_int_equal(s.image_ok, OTADEV_FLAG_UNSET);
		o.confirm = 1;
		buf_clear(&img);
		assert_int_equal(mcuboot_sign(&img, "abc", 3, key_good, &o), 0);
		memcpy(w->mem.slot[1], img.ptr, SLOT);
		assert_int_equal(otadev_trailer_read(&s, &HOOKS, w, 1, SLOT), 0);
		assert_int_equal(s.image_ok, OTADEV_FLAG_SET);
		buf_release(&img);
	}
	memset(w->mem.slot[1], 0xff, SLOT);
	assert_int_equal(otadev_trailer_set_pending(&HOOKS, w, SLOT, 0), 0);
	assert_memory_equal(w->mem.slot[1] + SLOT - 16, otadev_boot_magic, 16);
	assert_int_equal(w->mem.slot[1][SLOT - 40], OTADEV_SWAP_TEST);
	assert_int_equal(w->mem.slot[1][SLOT - 24], 0xff);
	otadev_trailer_read(&p, &HOOKS, w, 0, SLOT);
	otadev_trailer_read(&s, &HOOKS, w, 1, SLOT);
	assert_int_equal(otadev_swap_type(&p, &s), OTADEV_SWAP_TEST);
	memset(w->mem.slot[1] + SLOT - 48, 0xff, 48);
	assert_int_equal(otadev_trailer_set_pending(&HOOKS, w, SLOT, 1), 0);
	otadev_trailer_read(&s, &HOOKS, w, 1, SLOT);
	assert_int_equal(otadev_swap_type(&p, &s), OTADEV_SWAP_PERM);
	/* after a test swap, without a confirm: revert; after the confirm: none */
	memset(w->mem.slot[1] + SLOT - 48, 0xff, 48);
	memcpy(w->mem.slot[0] + SLOT - 16, otadev_boot_magic, 16);
	w->mem.slot[0][SLOT - 32] = 1;
	otadev_trailer_read(&p, &HOOKS, w, 0, SLOT);
	otadev_trailer_read(&s, &HOOKS, w, 1, SLOT);
	assert_int_equal(otadev_swap_type(&p, &s), OTADEV_SWAP_REVERT);
	assert_int_equal(otadev_trailer_confirm(&HOOKS, w, SLOT), 0);
	otadev_trailer_read(&p, &HOOKS, w, 0, SLOT);
	assert_int_equal(otadev_swap_type(&p, &s), OTADEV_SWAP_NONE);
	/* a half-written magic is not a pending image */
	memset(w->mem.slot[1] + SLOT - 48, 0xff, 48);
	memcpy(w->mem.slot[1] + SLOT - 16, otadev_boot_magic, 8);
	otadev_trailer_read(&s, &HOOKS, w, 1, SLOT);
	assert_int_equal(s.magic, OTADEV_MAGIC_BAD);
	assert_int_equal(otadev_swap_type(&p, &s), OTADEV_SWAP_NONE);
	world_free(w);
}

static void offered_image_is_downloaded_verified_test_booted_confirmed_and_reported(void **state)
{
	struct world *w = world_new(1);
	struct buf img;
	(void)state;
	sign_image(&img, key_good, "1.1.0", 2, 9000);
	world_offer(w, &img, "1.1.0", 2, HW);
	assert_int_equal(run(w, 100), 1);           /* download, verify, trailer, reboot */
	check_invariants(w, 1);
	assert_string_equal(mem_boot(w), "test");
	assert_int_equal(run(w, 50), 0);            /* test boot: self-test, confirm, reports */
	assert_int_equal(w->d.rec.phase, OTADEV_IDLE);
	assert_string_equal(w->d.rec.version, "1.1.0");
	assert_int_equal(w->d.rec.security_counter, 2);
	assert_int_equal(w->d.rec.nq, 0);
	assert_string_equal(mem_boot(w), "none");   /* confirmed: stays */
	check_invariants(w, 2);
	assert_int_equal(w->counts[OTADEV_EV_DOWNLOAD], 1);
	assert_int_equal(w->counts[OTADEV_EV_INSTALL], 1);
	assert_int_equal(w->counts[OTADEV_EV_BOOT_OK], 1);
	assert_int_equal(w->counts[OTADEV_EV_REFUSED], 0);
	assert_int_equal(w->bytes_served, (long)img.len);
	buf_release(&img);
	world_free(w);
}

/* First start with no record on an image MCUboot test-swapped in (a
 * factory line that flashes the update before provisioning, a record
 * lost): the core runs the self-test and confirms it, as after its own
 * test boot, rather than adopting it as confirmed and leaving MCUboot to
 * revert it at the next reset. */
static void first_start_on_a_test_boot_runs_the_self_test_and_confirms(void **state)
{
	struct world *w = world_new(0);
	struct buf img;
	(void)state;
	sign_image(&img, key_good, "1.1.0", 2, 9000);
	memcpy(w->mem.slot[1], img.ptr, img.len);
	assert_int_equal(otadev_trailer_set_pending(&HOOKS, w, SLOT, 0), 0);
	assert_string_equal(mem_boot(w), "test");
	assert_int_equal(run(w, 50), 0);
	assert_int_equal(w->d.rec.phase, OTADEV_IDLE);
	assert_string_equal(w->d.rec.version, "1.1.0");
	assert_int_equal(w->d.rec.security_counter, 2);
	assert_int_equal(w->counts[OTADEV_EV_BOOT_OK], 1);
	assert_string_equal(mem_boot(w), "none");   /* image_ok written: no revert */
	check_invariants(w, 2);
	buf_release(&img);
	world_free(w);
}

/* Each hostile or broken offer is refused before the trailer is written. */
static void bad_images_are_refused_before_anything_is_marked_bootable(void **state)
{
	struct {
		const char *name;
		EVP_PKEY **key;
		uint32_t counter, offer_counter;
		const char *hw;
		int tamper, corrupt;
	} cases[] = {
		{ "untrusted (revoked) key", &key_other, 5, 5, HW, 0, 0 },
		{ "lower signed counter", &key_good, 2, 5, HW, 0, 0 },
		{ "wrong hardware", &key_good, 5, 5, "mps2-an386", 0, 0 },
		{ "tampered, digest matching", &key_good, 5, 5, HW, 1, 0 },
		{ "corrupt in transit every time", &key_good, 5, 5, HW, 0, 99 },
		{ "truncated", &key_good, 5, 5, HW, 2, 0 },
	};
	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct world *w = world_new(3);
		struct buf img;
		uint8_t before[SLOT];
		print_message("case: %s\n", cases[i].name);
		sign_image(&img, *cases[i].key, "1.1.0", cases[i].counter, 5000);
		if (cases[i].tamper == 1)
			img.ptr[600] ^= 1;
		if (cases[i].tamper == 2)
			img.len -= 40;
		world_offer(w, &img, "1.1.0", cases[i].offer_counter, cases[i].hw);
		w->corrupt_left = cases[i].corrupt;
		memcpy(before, w->mem.slot[0], SLOT);
		for (int round = 0; round < 4; round++) {
			assert_int_equal(run(w, 300), 0);   /* never asks for a reboot */
			check_invariants(w, 3);
			assert_string_equal(mem_boot(w), "none");
		}
		assert_memory_equal(before, w->mem.slot[0], SLOT);
		assert_string_equal(w->d.rec.version, "1.0.0");
		assert_int_equal(w->counts[OTADEV_EV_REFUSED], 1);  /* once, not per check-in */
		assert_int_equal(w->counts[OTADEV_EV_INSTALL], 0);
		buf_release(&img);
		world_free(w);
	}
}

static void transit_corruption_is_downloaded_again(void **state)
{
	struct world *w = world_new(0);
	struct buf img;
	(void)state;
	sign_image(&img, key_good, "1.1.0", 0, 9000);
	world_offer(w, &img, "1.1.0", 0, HW);
	w->corrupt_left = 1;
	settle(w, 5);
	assert_string_equal(w->d.rec.version, "1.1.0");
	assert_int_equal(w->bytes_served, 2 * (long)img.len);
	assert_int_equal(w->counts[OTADEV_EV_REFUSED], 0);
	buf_release(&img);
	world_free(w);
}

static void failed_self_test_is_reverted_by_the_bootloader_and_reported(void **state)
{
	struct world *w = world_new(0);
	struct buf img;
	(void)state;
	sign_image(&img, key_good, "1.1.0", 0, 9000);
	world_offer(w, &img, "1.1.0", 0, HW);
	assert_int_equal(run(w, 100), 1);
	assert_string_equal(mem_boot(w), "test");
	w->mem.selftest_rc = -1;
	assert_int_equal(run(w, 10), 1);            /* self-test fails: reboot unconfirmed */
	assert_string_equal(mem_boot(w), "revert");
	w->mem.selftest_rc = 0;
	assert_int_equal(run(w, 100), 0);
	assert_string_equal(w->d.rec.version, "1.0.0");
	assert_int_equal(w->counts[OTADEV_EV_REVERT], 1);
	assert_int_equal(w->counts[OTADEV_EV_BOOT_OK], 0);
	assert_string_equal(mem_boot(w), "none");   /* the revert was made permanent */
	check_invariants(w, 0);
	/* the same image is not taken again (a new release has a new digest) */
	assert_int_equal(w->counts[OTADEV_EV_INSTALL], 1);
	buf_release(&img);
	world_free(w);
}

static void interrupted_download_resumes_at_the_persisted_offset(void **state)
{
	struct world *w = world_new(0);
	struct buf img;
	long total;
	(void)state;
	sign_image(&img, key_good, "1.1.0", 0, 40000);
	world_offer(w, &img, "1.1.0", 0, HW);
	/* cut after the 6th sector's record write: 5 sectors are safe */
	/* first start's record, trailer erase, record; then per sector an erase,
	 * two 2 KiB writes and a record: cut at the 6th sector's second write */
	w->mem.budget = 3 + 4 * 5 + 2;
	w->mem.partial = 1;
	assert_int_equal(run(w, 200), 2);
	assert_int_equal(w->d.rec.phase, OTADEV_DOWNLOADING);
	w->mem.budget = -1;
	total = w->bytes_served;
	assert_true(total > 4 * SECTOR);
	assert_int_equal(run(w, 200), 1);
	assert_int_equal(w->d.n_downloads_resumed, 1);
	/* at most one sector (the one being written at the cut) is fetched twice */
	assert_true(w->bytes_served <= (long)img.len + SECTOR);
	settle(w, 3);
	assert_string_equal(w->d.rec.version, "1.1.0");
	buf_release(&img);
	world_free(w);
}

static void lost_acknowledgement_resends_the_same_sequence_and_never_double_counts(void **state)
{
	struct world *w = world_new(0);
	struct buf img;
	uint32_t seq;
	(void)state;
	sign_image(&img, key_good, "1.1.0", 0, 9000);
	world_offer(w, &img, "1.1.0", 0, HW);
	assert_int_equal(run(w, 100), 1);
	mem_boot(w);
	w->ack_drop_left = 3;   /* the server records three batches but no answer arrives */
	assert_int_equal(run(w, 200), 0);
	assert_int_equal(w->d.rec.nq, 0);
	assert_true(w->raw[OTADEV_EV_BOOT_OK] >= 2);     /* sent again ... */
	assert_int_equal(w->counts[OTADEV_EV_BOOT_OK], 1);  /* ... counted once by its seq */
	assert_int_equal(w->counts[OTADEV_EV_DOWNLOAD], 1);
	seq = w->last_seq[OTADEV_EV_BOOT_OK];
	/* and across a power cut right after the send, before the ack is recorded */
	w->cfg.heartbeat_ms = 1000;
	w->ack_drop_left = 0;
	w->mem.budget = 1;                 /* heartbeat's record write, then cut at the ack's */
	assert_int_equal(run(w, 100), 2);
	w->mem.budget = -1;
	assert_int_equal(run(w, 3), 0);
	assert_true(w->raw[OTADEV_EV_HEARTBEAT] >= 2);
	assert_int_equal(w->counts[OTADEV_EV_HEARTBEAT] + 0, w->counts[OTADEV_EV_HEARTBEAT]);
	{
		/* every heartbeat seq was counted once: raw receipts exceed distinct ones */
		int distinct = w->counts[OTADEV_EV_HEARTBEAT];
		assert_true(distinct >= 1 && distinct < w->raw[OTADEV_EV_HEARTBEAT]);
	}
	assert_true(w->last_seq[OTADEV_EV_HEARTBEAT] > seq);
	buf_release(&img);
	world_free(w);
}

static void preconditions_hold_the_download_and_the_install(void **state)
{
	struct world *w = world_new(0);
	struct buf img;
	(void)state;
	sign_image(&img, key_good, "1.1.0", 0, 9000);
	world_offer(w, &img, "1.1.0", 0, HW);
	w->mem.st.battery_pct = 10;       /* below 20 %, no external power */
	assert_int_equal(run(w, 50), 0);
	assert_int_equal(w->bytes_served, 0);
	w->mem.st.external_power = 1;     /* plugged in: the battery does not matter */
	w->cfg.avoid_metered = 1;
	w->mem.st.metered = 1;
	assert_int_equal(run(w, 50), 0);
	assert_int_equal(w->bytes_served, 0);
	w->mem.st.metered = 0;
	assert_int_equal(run(w, 200), 1);
	assert_int_equal(w->bytes_served, (long)img.len);
	buf_release(&img);
	world_free(w);
}

static void withdrawn_offer_drops_the_download(void **state)
{
	struct world *w = world_new(0);
	struct buf img;
	(void)state;
	sign_image(&img, key_good, "1.1.0", 0, 30000);
	world_offer(w, &img, "1.1.0", 0, HW);
	w->image_status = 410;        /* halted: the image is gone */
	assert_int_equal(run(w, 50), 0);
	assert_int_equal(w->d.rec.phase, OTADEV_IDLE);
	/* halted mid-download: the next check-in says offer null */
	w->image_status = 0;
	w->mem.budget = 2 + 2 * 2 + 1;
	assert_int_equal(run(w, 50), 2);
	w->mem.budget = -1;
	w->offer_on = 0;
	assert_int_equal(run(w, 50), 0);
	assert_int_equal(w->d.rec.phase, OTADEV_IDLE);
	assert_true(w->bytes_served < (long)img.len);
	check_invariants(w, 0);
	buf_release(&img);
	world_free(w);
}

static void backoff_is_full_jitter_under_an_exponential_cap(void **state)
{
	struct world *w = world_new(0);
	uint32_t maxseen[12] = { 0 };
	(void)state;
	w->cfg.backoff_base_ms = 1000;
	w->cfg.backoff_max_ms = 60000;
	assert_int_equal(otadev_init(&w->d, &HOOKS, w, &w->cfg), 0);
	for (uint32_t n = 1; n < 12; n++)
		for (int i = 0; i < 2000; i++) {
			uint32_t b = otadev_backoff(&w->d, n);
			uint32_t cap = 1000u << n < 60000u ? 1000u << n : 60000u;
			assert_true(b < cap);
			if (b > maxseen[n])
				maxseen[n] = b;
		}
	/* full jitter: the draws reach the top of each cap */
	for (uint32_t n = 1; n < 12; n++) {
		uint32_t cap = 1000u << n < 60000u ? 1000u << n : 60000u;
		assert_true(maxseen[n] > cap * 9 / 10);
	}
	world_free(w);
}

/*
 * A power cut after every possible number of flash and record writes of a
 * whole update (download, verify, trailer, reboot, test boot, confirm,
 * reports), torn flash writes included: after each cut the simulated
 * MCUboot runs, the invariants hold, and the device ends confirmed on the
 * new image with each outcome reported once.
 */
static void power_cut_at_every_write_keeps_every_invariant(void **state)
{
	struct buf img;
	long k, ops;
	(void)state;
	sign_image(&img, key_good, "1.1.0", 4, 9000);
	/* count the mutating operations of an uncut update */
	{
		struct world *w = world_new(1);
		world_offer(w, &img, "1.1.0", 4, HW);
		w->mem.budget = 1000000;
		settle(w, 5);
		ops = 1000000 - w->mem.budget;
		assert_string_equal(w->d.rec.version, "1.1.0");
		world_free(w);
	}
	for (k = 0; k < ops; k++) {
		struct world *w = world_new(1);
		int done = 0;
		world_offer(w, &img, "1.1.0", 4, HW);
		w->mem.budget = k;
		w->mem.partial = (int)(k & 1);

		for (int round = 0; round < 12 && !done; round++) {
			int r;
			mem_boot(w);
			check_invariants(w, w->d.rec.security_counter);
			r = run(w, 300);
			if (r == 2)
				w->mem.budget = -1;
			check_invariants(w, 1);
			done = r == 0 && w->d.rec.phase == OTADEV_IDLE && w->d.rec.nq == 0;
		}
		assert_true(done);
		/* a cut during the test boot before the confirm reverts (the image
		 * is then refused, not retried); otherwise the update lands */
		if (!strcmp(w->d.rec.version, "1.1.0")) {
			assert_int_equal(w->counts[OTADEV_EV_BOOT_OK], 1);
			assert_int_equal(w->d.rec.security_counter, 4);
		} else {
			assert_string_equal(w->d.rec.version, "1.0.0");
			assert_int_equal(w->counts[OTADEV_EV_BOOT_OK], 0);
			assert_int_equal(w->counts[OTADEV_EV_REVERT] + w->counts[OTADEV_EV_BOOT_FAIL], 1);
		}
		assert_true(w->counts[OTADEV_EV_DOWNLOAD] <= 1 && w->counts[OTADEV_EV_INSTALL] <= 1);
		world_free(w);
	}
	print_message("power cut at each of %ld writes of an update: invariants held\n", ops);
	buf_release(&img);
}

static void state_fits_the_documented_ram_budget(void **state)
{
	(void)state;
	print_message("sizeof(struct otadev) = %zu, record = %zu\n", sizeof(struct otadev), sizeof(struct otadev_record));
	/* docs/device.md: under 8 KiB of RAM with the default sizes, a record under 1.5 KiB (the offer's URL is 512 B) */
	assert_true(sizeof(struct otadev) < 8192);
	assert_true(sizeof(struct otadev_record) < 1536);
}

/* ---- the signing PKI on the in-memory device (issue 13) ------------------------ */

static const struct otadev_hooks HOOKS_X509 = {
	.http = m_http, .random = memdev_random, MEMDEV_HOOKS,
	.x509_chain = port_linux_x509_chain, .x509_crl = port_linux_x509_crl,
};

/* A root (orchestrator/pki.c), key_good certified by it as the release
 * signing key, key_other as a second one. */
struct pki_fix {
	struct sign_key *root, *leaf_key;
	X509 *root_cert, *leaf, *other;
	char *leaf_pem;
	unsigned char *anchor;
	int anchor_len;
};

static X509 *certify(struct pki_fix *f, EVP_PKEY *key, const char *cn, char **pem_out)
{
	struct buf pem = BUF_INIT;
	time_t now = time(NULL);
	X509 *x = NULL;
	if (pki_certify(&pem, f->root, f->root_cert, key, cn, now, now + 7 * 86400) < 0)
		fail_msg("certify: %s", ota_error_last());
	assert_int_equal(pki_cert_load(&x, pem.ptr, pem.len), 0);
	if (pem_out)
		*pem_out = xstrdup(buf_cstr(&pem));
	buf_release(&pem);
	return x;
}

static void pki_fix_init(struct pki_fix *f)
{
	char *dir = h_tmpdir(), *kp = xasprintf("%s/root.key.pem", dir), *cp = xasprintf("%s/root.crt.pem", dir);
	char *lp = xasprintf("%s/leaf.pem", dir);
	FILE *fp;
	memset(f, 0, sizeof(*f));
	assert_int_equal(pki_root_init(dir, "test release root", 30, NULL), 0);
	assert_int_equal(sign_key_load(&f->root, kp, NULL), 0);
	assert_int_equal(pki_root_load_file(&f->root_cert, cp), 0);
	f->leaf = certify(f, key_good, "release key", &f->leaf_pem);
	f->other = certify(f, key_other, "other key", NULL);
	fp = fopen(lp, "w");
	assert_non_null(fp);
	assert_int_equal(PEM_write_PrivateKey(fp, key_good, NULL, NULL, 0, NULL, NULL), 1);
	fclose(fp);
	assert_int_equal(sign_key_load(&f->leaf_key, lp, NULL), 0);
	f->anchor_len = i2d_X509(f->root_cert, &f->anchor);
	assert_true(f->anchor_len > 0);
	free(dir);
	free(kp);
	free(cp);
	free(lp);
}

static void pki_fix_free(struct pki_fix *f)
{
	sign_key_free(f->root);
	sign_key_free(f->leaf_key);
	X509_free(f->root_cert);
	X509_free(f->leaf);
	X509_free(f->other);
	free(f->leaf_pem);
	OPENSSL_free(f->anchor);
}

/* Release 3's manifest envelope naming img, signed by the leaf. */
static char *release_manifest(struct pki_fix *f, const struct buf *img)
{
	unsigned char sha[32];
	char hex[65], at[32], *body, *out;
	time_t now = time(NULL);
	json_t *m, *env = NULL;
	EVP_Digest(img->ptr, img->len, sha, NULL, EVP_sha256(), NULL);
	ota_hex(hex, sha, 32);
	strftime(at, sizeof(at), "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
	m = json_pack("{s:s, s:s, s:[{s:s, s:s}], s:[s]}", "product", "fw", "built_at", at, "images", "sha256", hex,
		      "hardware", HW, "signing_chain", f->leaf_pem);
	assert_non_null(m);
	body = json_dumps(m, JSON_COMPACT);
	assert_int_equal(dsse_sign(&env, "application/vnd.otacd.manifest+json", body, strlen(body), &f->leaf_key, 1), 0);
	out = json_dumps(env, JSON_COMPACT);
	json_decref(m);
	json_decref(env);
	free(body);
	return out;
}

/* The root's list (number 1) revoking cert. */
static char *revocation_list(struct pki_fix *f, X509 *cert)
{
	struct buf pem = BUF_INIT;
	char *out;
	assert_int_equal(pki_crl_issue(&pem, f->root, f->root_cert, NULL, &cert, 1, pki_reason_code("keyCompromise")), 0);
	out = xstrdup(buf_cstr(&pem));
	buf_release(&pem);
	return out;
}

/* A device with the root as its anchor, offered img (release 3), which
 * it downloads, verifies against the chain and marks for a test boot. */
static struct world *pki_world_in_test_boot(struct pki_fix *f, const struct buf *img)
{
	struct world *w = world_new(1);
	w->hooks = &HOOKS_X509;
	w->cfg.anchor = f->anchor;
	w->cfg.anchor_len = (size_t)f->anchor_len;
	w->cfg.work = w->work;
	w->cfg.work_len = sizeof(w->work);
	world_offer(w, img, "1.1.0", 2, HW);
	w->manifest = release_manifest(f, img);
	assert_int_equal(run(w, 100), 1);
	assert_int_equal(w->d.rec.phase, OTADEV_REBOOTING);
	assert_int_equal(w->d.rec.crl_number, 0);
	assert_string_equal(mem_boot(w), "test");
	return w;
}

/* docs/device.md "The signing chain": a revocation published while a
 * device reboots into an image signed by the revoked key stops the
 * confirm; the bootloader reverts it.  A newer list that does not revoke
 * its key, or one learnt after a check-in that failed first, does not. */
static void revocation_during_the_test_boot_stops_the_confirm(void **state)
{
	struct pki_fix f;
	struct buf img;
	struct world *w;
	(void)state;
	pki_fix_init(&f);
	sign_image(&img, key_good, "1.1.0", 2, 9000);

	w = pki_world_in_test_boot(&f, &img);
	w->crl = revocation_list(&f, f.leaf);
	w->announce = 1;
	assert_int_equal(run(w, 50), 1);            /* checked in, chain refused: reboot unconfirmed */
	assert_int_equal(w->d.rec.crl_number, 1);
	assert_int_equal(run(w, 50), 1);            /* restarted, not rebooted: still not confirmed */
	assert_int_equal(w->counts[OTADEV_EV_BOOT_OK], 0);
	assert_string_equal(mem_boot(w), "revert");
	assert_int_equal(run(w, 100), 0);
	assert_string_equal(w->d.rec.version, "1.0.0");
	assert_int_equal(w->counts[OTADEV_EV_REVERT], 1);
	assert_int_equal(w->counts[OTADEV_EV_BOOT_OK], 0);
	assert_int_equal(w->d.rec.crl_number, 1);   /* kept: the list cannot be rolled back */
	assert_string_equal(mem_boot(w), "none");
	check_invariants(w, 1);
	world_free(w);

	/* a newer list that revokes another key: confirmed, its number kept */
	w = pki_world_in_test_boot(&f, &img);
	w->crl = revocation_list(&f, f.other);
	w->announce = 1;
	assert_int_equal(run(w, 50), 0);
	assert_string_equal(w->d.rec.version, "1.1.0");
	assert_int_equal(w->counts[OTADEV_EV_BOOT_OK], 1);
	assert_int_equal(w->d.rec.crl_number, 1);
	assert_string_equal(mem_boot(w), "none");
	world_free(w);

	/* no confirm before a check-in of the test boot; then confirmed */
	w = pki_world_in_test_boot(&f, &img);
	w->checkin_down = 1;
	assert_int_equal(run(w, 30), 0);
	assert_int_equal(w->d.rec.phase, OTADEV_TESTING);
	assert_int_equal(w->counts[OTADEV_EV_BOOT_OK], 0);
	w->checkin_down = 0;
	assert_int_equal(run(w, 100), 0);
	assert_string_equal(w->d.rec.version, "1.1.0");
	assert_int_equal(w->counts[OTADEV_EV_BOOT_OK], 1);
	world_free(w);

	buf_release(&img);
	pki_fix_free(&f);
}

/* ---- encrypted images (MCUboot's format as orchestrator/mcuboot_enc.c writes it) -- */

static const struct otadev_hooks HOOKS_ENC = {
	.http = m_http, .random = memdev_random, MEMDEV_HOOKS, MEMDEV_HOOKS_ENC,
};

/* 1.1.0 signed by key_good, its body AES-256-CTR under a key wrapped for dev (ECIES-P256). */
static void sign_encrypted(struct buf *out, EVP_PKEY *dev)
{
	struct mcuboot_sign_opts o;
	char bin[9000];
	memset(&o, 0, sizeof(o));
	assert_int_equal(mcuboot_version_parse("1.1.0", &o.major, &o.minor, &o.revision, &o.build), 0);
	o.has_security_counter = 1;
	o.security_counter = 2;
	o.enc_key = dev;
	o.enc_bits = 256;
	for (size_t i = 0; i < sizeof(bin); i++)
		bin[i] = (char)(i * 13);
	buf_init(out, 1 << 20);
	assert_int_equal(mcuboot_sign(out, bin, sizeof(bin), key_good, &o), 0);
}

/* The device decrypts the secondary slot while it hashes it (the hash and
 * signature are over the plaintext), so an encrypted image lands; a
 * flipped ciphertext byte, another device's key or none are refused
 * before anything is marked bootable. */
static void encrypted_image_is_decrypted_to_verify_and_refused_when_it_cannot_be(void **state)
{
	EVP_PKEY *dev = new_key(), *other = new_key();
	struct mcuboot_info info;
	struct buf img, bad;
	struct world *w;
	static const struct { int tamper, key; const char *why; } refusals[] = {
		{ 1, 1, "image hash mismatch" },
		{ 0, 2, "MAC of the wrapped image key does not verify" },
		{ 0, 0, "no decryption key" },
	};
	(void)state;
	sign_encrypted(&img, dev);
	assert_int_equal(mcuboot_parse(&info, img.ptr, img.len), 0);
	assert_true(info.flags & MCUBOOT_F_ENC_AES256);

	w = world_new(1);
	w->hooks = &HOOKS_ENC;
	w->mem.enc_priv = dev;
	world_offer(w, &img, "1.1.0", 2, HW);
	assert_int_equal(run(w, 100), 1);
	check_invariants(w, 1);                         /* the secondary verifies decrypted */
	assert_string_equal(mem_boot(w), "test");
	assert_int_equal(run(w, 50), 0);
	assert_string_equal(w->d.rec.version, "1.1.0");
	assert_int_equal(w->counts[OTADEV_EV_BOOT_OK], 1);
	assert_string_equal(mem_boot(w), "none");
	check_invariants(w, 2);
	world_free(w);

	for (size_t i = 0; i < sizeof(refusals) / sizeof(refusals[0]); i++) {
		w = world_new(1);
		w->hooks = &HOOKS_ENC;
		w->mem.enc_priv = refusals[i].key == 1 ? dev : refusals[i].key == 2 ? other : NULL;
		buf_init(&bad, 1 << 20);
		buf_put(&bad, img.ptr, img.len);
		if (refusals[i].tamper)
			bad.ptr[info.header_size + 100] ^= 1;  /* the offer's digest is of these bytes */
		world_offer(w, &bad, "1.1.0", 2, HW);
		assert_int_equal(run(w, 100), 0);
		assert_int_equal(w->d.rec.phase, OTADEV_IDLE);
		assert_int_equal(w->counts[OTADEV_EV_REFUSED], 1);
		assert_int_equal(w->counts[OTADEV_EV_INSTALL], 0);
		if (!strstr(w->d.err, refusals[i].why))
			fail_msg("case %zu: %s", i, w->d.err);
		check_invariants(w, 1);
		buf_release(&bad);
		world_free(w);
	}
	buf_release(&img);
	EVP_PKEY_free(dev);
	EVP_PKEY_free(other);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(checkin_answer_parser_reads_offers_and_refuses_malformed_answers),
		cmocka_unit_test(trailer_layout_and_swap_decision_match_mcuboot),
		cmocka_unit_test(offered_image_is_downloaded_verified_test_booted_confirmed_and_reported),
		cmocka_unit_test(bad_images_are_refused_before_anything_is_marked_bootable),
		cmocka_unit_test(transit_corruption_is_downloaded_again),
		cmocka_unit_test(failed_self_test_is_reverted_by_the_bootloader_and_reported),
		cmocka_unit_test(first_start_on_a_test_boot_runs_the_self_test_and_confirms),
		cmocka_unit_test(interrupted_download_resumes_at_the_persisted_offset),
		cmocka_unit_test(lost_acknowledgement_resends_the_same_sequence_and_never_double_counts),
		cmocka_unit_test(preconditions_hold_the_download_and_the_install),
		cmocka_unit_test(withdrawn_offer_drops_the_download),
		cmocka_unit_test(backoff_is_full_jitter_under_an_exponential_cap),
		cmocka_unit_test(power_cut_at_every_write_keeps_every_invariant),
		cmocka_unit_test(state_fits_the_documented_ram_budget),
		cmocka_unit_test(checkin_parser_flags_an_image_url_past_the_limit),
		cmocka_unit_test(image_url_past_the_limit_is_refused_and_one_at_it_lands),
		cmocka_unit_test(revocation_during_the_test_boot_stops_the_confirm),
		cmocka_unit_test(encrypted_image_is_decrypted_to_verify_and_refused_when_it_cannot_be),
	};
	key_good = new_key();
	key_other = new_key();
	cmocka_set_test_filter(getenv("DEVICE_ONLY"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
