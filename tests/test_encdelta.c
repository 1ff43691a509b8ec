/*
 * test_encdelta.c - no delta updates of encrypted images (issue 14,
 * docs/delivery.md "Delta updates").
 *
 * An encrypted image is AES-CTR ciphertext under a key drawn for that
 * image, while a device holds its running image in clear (the bootloader
 * decrypts it into the primary slot).  A patch made from otacd's stored
 * (ciphertext) base cannot start from what a device has, and a patch to an
 * encrypted image must produce ciphertext, so the rule is: otacd never
 * makes or offers a patch to or from an encrypted image, and libotadev
 * never applies one (it falls back to the full image).
 *
 * On the server: a real otacd releases 1.0.0 and 1.1.0 with `encrypt:` and
 * `deltas:`; no patch is made, a check-in from 1.0.0 gets the offer without
 * "delta", and an otacd-device running 1.0.0 (its clear copy) with the
 * device key fetches the full 1.1.0, decrypts it to verify, and confirms it.
 * On the device: libotadev on in-memory flash is offered a patch by a
 * server that does not keep the rule (an earlier otacd, a hostile one):
 * running an encrypted image it fetches no patch byte; offered an encrypted
 * image with a patch that would rebuild it, it stops at the rebuilt header.
 * Either way the full image lands.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "../common/util.h"
#include "../device/otadev.h"
#include "../device/port_linux_enc.h"
#include "../orchestrator/mcuboot.h"
#include "../orchestrator/mcuboot_enc.h"
#include "devharness.h"
#include "harness.h"
#include "memdev.h"

#define HW "mps2-an385"
#define SLOT (64 * 1024)
#define SECTOR 4096

/* ---- libotadev on in-memory flash, offered a patch ------------------------------ */

struct world {
	struct memdev mem;                /* first: the hooks' ctx is the world */
	struct buf img, patch;            /* the offered image, the patch offered with it */
	char sha_hex[65], patch_hex[65], base_hex[65];
	long image_served, patch_served;
	uint8_t work[16384] __attribute__((aligned(8)));
	struct otadev_config cfg;
	unsigned char *keyder;
	struct otadev d;
};
_Static_assert(offsetof(struct world, mem) == 0, "the hooks' ctx is the world: mem comes first");

static EVP_PKEY *sign_key, *dev_key;

static int m_http(void *ctx, const struct otadev_http_req *rq, struct otadev_http_resp *rs)
{
	struct world *w = ctx;
	rs->len = 0;
	rs->range_total = -1;
	if (!strcmp(rq->path, "/device/v1/checkin")) {
		rs->len = (size_t)snprintf(rs->body, rs->cap,
			"{\"now\": %llu, \"time_scale\": 1, \"next_poll_ms\": 1000, \"offer\": {\"release\": 3,"
			" \"version\": \"1.1.0\", \"security_counter\": 2, \"image\": {\"url\": \"/device/v1/images/%s\","
			" \"sha256\": \"%s\", \"size\": %zu, \"hardware\": \"" HW "\"}, \"delta\": {\"url\":"
			" \"/device/v1/patches/%s\", \"size\": %zu, \"sha256\": \"%s\", \"base\": \"%s\"}}}",
			(unsigned long long)(1796000000000ull + w->mem.now), w->sha_hex, w->sha_hex, w->img.len,
			w->patch_hex, w->patch.len, w->patch_hex, w->base_hex);
		rs->status = 200;
		return 0;
	}
	if (!strncmp(rq->path, "/device/v1/images/", 18)) {
		memdev_serve_range(rq, rs, w->img.ptr, w->img.len, w->img.len, &w->image_served, -1);
		return 0;
	}
	if (!strncmp(rq->path, "/device/v1/patches/", 19)) {
		memdev_serve_range(rq, rs, w->patch.ptr, w->patch.len, w->patch.len, &w->patch_served, -1);
		return 0;
	}
	if (!strcmp(rq->path, "/device/v1/reports")) {
		memdev_accept_reports(rq, rs);
		return 0;
	}
	rs->status = 404;
	return 0;
}

/* The jitter this test has always drawn (a multiple of the clock), not
 * memdev_random's: the waits, and so the steps, stay as they were. */
static uint32_t m_random(void *ctx)
{
	return (uint32_t)((struct world *)ctx)->mem.now * 2654435761u;
}

static const struct otadev_hooks HOOKS = {
	.http = m_http, .random = m_random, MEMDEV_HOOKS, MEMDEV_HOOKS_ENC,
};

/* version signed by sign_key over body; encrypted for dev_key when enc.  A
 * large 0xff header (as imgtool --pad-header -H makes) keeps a patch to a
 * small encrypted image smaller than the image, so a device would take it. */
static void sign(struct buf *out, const char *body, size_t n, const char *version, int enc)
{
	struct mcuboot_sign_opts o;
	memset(&o, 0, sizeof(o));
	assert_int_equal(mcuboot_version_parse(version, &o.major, &o.minor, &o.revision, &o.build), 0);
	o.has_security_counter = 1;
	o.security_counter = 2;
	o.header_size = 0x4000;
	o.enc_key = enc ? dev_key : NULL;
	buf_init(out, SLOT);
	if (mcuboot_sign(out, body, n, sign_key, &o) < 0)
		fail_msg("mcuboot_sign: %s", ota_error_last());
}

static void hex_sha(char out[65], const void *p, size_t n)
{
	unsigned char sha[32];
	EVP_Digest(p, n, sha, NULL, EVP_sha256(), NULL);
	ota_hex(out, sha, 32);
}

/* xdelta3 from old to new, as release_delta.c runs it. */
static void xdelta3(const struct buf *old, const struct buf *new_, struct buf *patch)
{
	char *dir = h_tmpdir(), *o = xasprintf("%s/old", dir), *n = xasprintf("%s/new", dir), *p = xasprintf("%s/p", dir);
	struct buf out = BUF_INIT;
	assert_int_equal(ota_write_file_atomic(o, old->ptr, old->len, 0600), 0);
	assert_int_equal(ota_write_file_atomic(n, new_->ptr, new_->len, 0600), 0);
	assert_int_equal(h_sh(&out, "xdelta3 -e -f -S none -A -W 16384 -s %s %s %s", o, n, p), 0);
	buf_init(patch, SLOT);
	assert_int_equal(ota_read_file(patch, p, SLOT), 0);
	h_sh(&out, "rm -rf %s", dir);
	buf_release(&out);
	free(dir);
	free(o);
	free(n);
	free(p);
}

/* Slot 0 runs `running` (as the bootloader left it: in clear); the server
 * offers `offered` with a patch from patch_base that rebuilds it. */
static struct world *world_new(const struct buf *running, const struct buf *patch_base, const struct buf *offered)
{
	struct world *w = calloc(1, sizeof(*w));
	struct mcuboot_info base;

	memdev_init(&w->mem, SLOT, SECTOR);
	w->mem.enc_priv = dev_key;
	memcpy(w->mem.slot[0], running->ptr, running->len);
	buf_init(&w->img, SLOT);
	buf_put(&w->img, offered->ptr, offered->len);
	hex_sha(w->sha_hex, offered->ptr, offered->len);
	xdelta3(patch_base, offered, &w->patch);
	assert_true(w->patch.len < offered->len); /* a size the device would take */
	hex_sha(w->patch_hex, w->patch.ptr, w->patch.len);
	assert_int_equal(mcuboot_parse(&base, running->ptr, running->len), 0);
	ota_hex(w->base_hex, base.sha256, 32);   /* the patch's base is the running image */
	memdev_config(&w->cfg, &w->mem, HW, sign_key, &w->keyder);
	w->cfg.work = w->work;
	w->cfg.work_len = sizeof(w->work);
	return w;
}

static void world_free(struct world *w)
{
	memdev_release(&w->mem);
	buf_release(&w->img);
	buf_release(&w->patch);
	OPENSSL_free(w->keyder);
	free(w);
}

/* Step the device until it asks for the reboot into the new image. */
static void run_to_install(struct world *w)
{
	assert_int_equal(memdev_run(&w->mem, &w->d, &HOOKS, w, &w->cfg, 2000), 1);
	assert_int_equal(w->d.rec.phase, OTADEV_REBOOTING);
}

/* The full image, byte for byte, waits in slot 1 marked for a test boot. */
static void assert_full_image_installed(struct world *w)
{
	struct otadev_trailer st;
	assert_memory_equal(w->mem.slot[1], w->img.ptr, w->img.len);
	assert_int_equal(otadev_trailer_read(&st, &HOOKS, w, 1, SLOT), 0);
	assert_int_equal(st.magic, OTADEV_MAGIC_GOOD);
	assert_int_equal(w->d.n_delta_applied, 0);
	assert_int_equal(w->d.n_delta_fallbacks, 1);
	assert_int_equal(w->d.bytes_full, w->img.len);
	assert_int_equal(w->image_served, (long)w->img.len);
}

static int keys_setup(void **state)
{
	(void)state;
	sign_key = EVP_EC_gen("P-256");
	dev_key = EVP_EC_gen("P-256"); /* ECIES-P256: MCUboot pairs it with ECDSA P-256 */
	return sign_key && dev_key ? 0 : -1;
}

static int keys_teardown(void **state)
{
	(void)state;
	EVP_PKEY_free(sign_key);
	EVP_PKEY_free(dev_key);
	return 0;
}

static char body1[6000], body2[6000];

static void bodies(void)
{
	for (size_t i = 0; i < sizeof(body1); i++)
		body1[i] = body2[i] = (char)('a' + (i * 7 + i / 13) % 26);
	memcpy(body2 + 100, "version 1.1.0 changed", 21);
}

/*
 * The device runs an encrypted image (its clear copy, the header's
 * ENCRYPTED flag kept, as MCUboot leaves it) and is offered a patch from
 * that image: the server's base would be the ciphertext, not these bytes,
 * so the device fetches not one patch byte and downloads the full image.
 */
static void device_running_an_encrypted_image_takes_no_patch(void **state)
{
	struct buf v1, v1_clear = BUF_INIT, v2;
	struct world *w;
	(void)state;
	bodies();
	sign(&v1, body1, sizeof(body1), "1.0.0", 1);
	sign(&v2, body2, sizeof(body2), "1.1.0", 1);
	assert_int_equal(mcuboot_decrypt(&v1_clear, v1.ptr, v1.len, dev_key), 0);
	/* a patch that would even work on the clear copy: still refused */
	w = world_new(&v1_clear, &v1_clear, &v2);
	run_to_install(w);
	assert_int_equal(w->patch_served, 0);
	assert_int_equal(w->d.bytes_delta, 0);
	assert_full_image_installed(w);
	world_free(w);
	buf_release(&v1);
	buf_release(&v1_clear);
	buf_release(&v2);
}

/*
 * The device runs a clear image and is offered an encrypted one with a
 * patch that rebuilds it byte for byte (made from the clear base, smaller
 * than the image): the device stops applying it once the rebuilt header
 * says the image is encrypted, and installs the full image.
 */
static void patch_to_an_encrypted_image_falls_back_to_the_full_image(void **state)
{
	struct buf v1, v2;
	struct world *w;
	(void)state;
	bodies();
	sign(&v1, body1, sizeof(body1), "1.0.0", 0);
	sign(&v2, body2, sizeof(body2), "1.1.0", 1);
	w = world_new(&v1, &v1, &v2);
	run_to_install(w);
	assert_true(w->patch_served > 0);                 /* it began, then stopped */
	assert_true(w->patch_served < (long)w->patch.len + 512);
	assert_full_image_installed(w);
	world_free(w);
	buf_release(&v1);
	buf_release(&v2);
}

/* ---- otacd: encrypted releases with deltas: configured ------------------------- */

static const char *const fw_v1 = "seq 1 9000";
static const char *const fw_v2 = "seq 1 9000 | sed -e 's/^3000$/3000\\\\nnew code/'";

static char *enc_pipeline(const char *version, const char *gen, const char *extra)
{
	return xasprintf("name: fw\nstages:\n"
			 "  - name: build\n"
			 "    steps: [ { run: \"%s > app.bin\" } ]\n"
			 "    artifacts: [ { path: app.bin, name: app.bin, type: application, hardware: " HW " } ]\n"
			 "  - { name: release, kind: release, needs: [build], version: \"%s\", security_counter: 1, key: test,\n"
			 "      encrypt: { key: dev }%s }\n"
			 "  - name: canary\n    kind: rollout\n    needs: [release]\n"
			 "    steps: [ {percent: 100, hold: 1000h} ]\n    gates: [boots]\n"
			 "gates:\n  boots: { metric: boot_success_rate, min: 0.5, min_devices: 1000 }\n",
			 gen, version, extra);
}

/*
 * 1.0.0 and 1.1.0 released encrypted, 1.1.0 with deltas from 1.0.0 (listed
 * and most installed): otacd makes no patch, a check-in from 1.0.0 is
 * offered the image without "delta", and an otacd-device on 1.0.0 with the
 * device key downloads the full encrypted 1.1.0 and confirms it.
 */
static void encrypted_release_with_deltas_offers_no_patch_and_the_device_installs_the_full_image(void **state)
{
	struct dh_fleet f;
	struct buf out = BUF_INIT, v1 = BUF_INIT, v1_clear = BUF_INIT;
	char *otactl = h_bin("otactl"), *bin = h_bin("otacd-device"), *y, *conf, *text, *dir, *log, *path;
	int64_t rel2;
	uint64_t image_bytes;
	EVP_PKEY *dev = NULL;
	json_t *s, *ans = NULL, *offer;
	FILE *fp;
	pid_t pid;
	(void)state;

	memset(&f, 0, sizeof(f));
	h_init(&f.d, NULL);
	assert_int_equal(dh_sh_in(f.d.dir, NULL, "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out dev.pem 2>/dev/null"
				       " && openssl pkey -in dev.pem -pubout -out dev.pub"), 0);
	dh_fleet_start(&f, "ed", 2, "key", "poll_interval: 1s\nencryption_keys:\n  dev: %s/dev.pub\n", f.d.dir);
	y = enc_pipeline("1.0.0", fw_v1, "");
	assert_true(dh_release_of(&f.d, h_trigger(&f.d, y)) > 0);
	free(y);

	/* the device runs 1.0.0 as its bootloader left it: decrypted */
	dir = xasprintf("%s/ed-0000", f.d.dir);
	conf = xasprintf("%s/device.conf", dir);
	log = xasprintf("%s.log", conf);
	assert_int_equal(h_sh(&out, "mkdir -p %s && cd %s && %s --url %s --token %s artifacts get "
			      "%lld/release/" HW "/app.bin.signed.bin -o v1.img", dir, dir, otactl, f.d.url, f.d.token,
			      (long long)h_sql_int(&f.d, "SELECT run_id FROM releases WHERE version = '1.0.0'")), 0);
	path = xasprintf("%s/v1.img", dir);
	assert_int_equal(ota_read_file(&v1, path, 1 << 20), 0);
	free(path);
	path = xasprintf("%s/dev.pem", f.d.dir);
	fp = fopen(path, "r");
	assert_non_null(fp);
	dev = PEM_read_PrivateKey(fp, NULL, NULL, NULL);
	fclose(fp);
	assert_non_null(dev);
	assert_int_equal(mcuboot_decrypt(&v1_clear, v1.ptr, v1.len, dev), 0);
	free(path);
	path = xasprintf("%s/v1.clear", dir);
	assert_int_equal(ota_write_file_atomic(path, v1_clear.ptr, v1_clear.len, 0600), 0);
	text = xasprintf("url = %s\ndevice = ed-0000\ncredential = %s\nproduct = fw\nhardware = " HW "\n"
			 "bootloader = 1.2.0\nprimary = %s/slot0\nsecondary = %s/slot1\nstate = %s/state\n"
			 "key = %s/key.pub\nenc_key = %s/dev.pem\nslot_size = 65536\nsector_size = 4096\n"
			 "health_check = true\nsync = 0\nbackoff_base_ms = 200\nbackoff_max_ms = 2000\nthrottle_ms = 5\n",
			 f.d.device_url, f.cred[0], dir, dir, dir, f.d.dir, f.d.dir);
	assert_int_equal(ota_write_file_atomic(conf, text, strlen(text), 0600), 0);
	free(text);
	assert_int_equal(h_sh(&out, "%s -c %s flash %s", bin, conf, path), 0);
	pid = dh_device_loop(conf);
	/* its first check-in as 1.0.0 answered, so `installed: 1` finds it */
	for (int i = 0; i < 600 && h_device_metric(&f.d, "otacd_device_checkins_total") < 2; i++)
		h_msleep(100);
	assert_true(h_device_metric(&f.d, "otacd_device_checkins_total") >= 2);

	image_bytes = h_device_metric(&f.d, "otacd_image_bytes_served_total");
	y = enc_pipeline("1.1.0", fw_v2, ", deltas: { from: [1.0.0], installed: 1 }");
	rel2 = dh_release_of(&f.d, h_trigger(&f.d, y));
	free(y);
	assert_true(rel2 > 0);
	/* no patch made, none named in the manifest */
	assert_int_equal(h_sql_int(&f.d, "SELECT COUNT(*) FROM artifacts WHERE name LIKE '%.vcdiff'"), 0);
	/* a device on 1.0.0 is offered 1.1.0 whole, once the rollout exposes it */
	for (int waited = 0; waited < 60000; waited += 250) {
		json_decref(ans);
		ans = NULL;
		assert_int_equal(h_dev_post(&f.d, "/device/v1/checkin", f.cred[1],
					    json_pack("{ss ss ss ss ss si ss}", "device", "ed-0001", "product", "fw", "hardware",
						      HW, "bootloader", "1.2.0", "version", "1.0.0", "security_counter", 1,
						      "slot", "confirmed"),
					    &ans),
				 200);
		offer = json_object_get(ans, "offer");
		if (json_is_object(offer) && !strcmp(json_string_value(json_object_get(offer, "version")) ?: "", "1.1.0"))
			break;
		h_msleep(250);
	}
	assert_true(json_is_object(offer));
	assert_string_equal(json_string_value(json_object_get(offer, "version")), "1.1.0");
	assert_null(json_object_get(offer, "delta"));
	json_decref(ans);

	/* the device takes the full encrypted image and confirms it */
	assert_int_equal(dh_fleet_wait(&f.d, rel2, "confirmed", 1, 90000), 1);
	dh_stop(pid);
	s = dh_device_status(NULL, conf);
	assert_string_equal(dh_js(s, "version", NULL), "1.1.0");
	assert_string_equal(dh_js(s, "primary", "version"), "1.1.0");
	json_decref(s);
	assert_int_equal(h_device_metric(&f.d, "otacd_delta_bytes_served_total"), 0);
	assert_true(h_device_metric(&f.d, "otacd_image_bytes_served_total") - image_bytes >= v1.len / 2);
	assert_int_not_equal(h_sh(&out, "grep -q 'applying a delta' %s", log), 0);

	EVP_PKEY_free(dev);
	free(dir);
	free(conf);
	free(log);
	free(path);
	free(bin);
	free(otactl);
	buf_release(&v1);
	buf_release(&v1_clear);
	buf_release(&out);
	dh_fleet_stop(&f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(device_running_an_encrypted_image_takes_no_patch),
		cmocka_unit_test(patch_to_an_encrypted_image_falls_back_to_the_full_image),
		cmocka_unit_test(encrypted_release_with_deltas_offers_no_patch_and_the_device_installs_the_full_image),
	};
	cmocka_set_test_filter(getenv("X_ONLY"));
	return cmocka_run_group_tests(tests, keys_setup, keys_teardown);
}
