/*
 * test_fleetsim.c - otacd-fleetsim's device model (fleetsim/sim.c) without a
 * server, then the real otacd-fleetsim binary against a small fake update
 * server in this process (libmicrohttpd on loopback) for the protocol
 * plumbing: check-ins, Range-resumed downloads, batched reports, and the
 * refusals a correct server must never provoke (lower counter, bad
 * signature).
 *
 * Keys are made with `openssl genpkey` in a temporary directory and images
 * signed with mcuboot_sign, so signatures and counters are real.
 */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include <microhttpd.h>

#include "../common/util.h"
#include "../fleetsim/sim.h"
#include "../orchestrator/keys.h"
#include "../orchestrator/mcuboot.h"
#include "harness.h"
#include "imgtest.h"

/* the release key and another P-256 key (borrowed from g_keys) */
static struct it_keys g_keys;
static struct {
	char *dir, *priv_pem, *pub_pem, *other_pub_pem;
	EVP_PKEY *priv, *pub, *other_priv;
} K;

static int keys_setup(void **state)
{
	static const struct it_key_spec specs[] = {
		{ "release", "-algorithm EC -pkeyopt ec_paramgen_curve:P-256" },
		{ "other", "-algorithm EC -pkeyopt ec_paramgen_curve:P-256" },
	};
	(void)state;

	if (it_keys_make(&g_keys, specs, OTA_ARRAY_SIZE(specs)) < 0)
		return -1;
	K.dir = g_keys.dir;
	K.priv_pem = g_keys.priv_pem[0];
	K.pub_pem = g_keys.pub_pem[0];
	K.other_pub_pem = g_keys.pub_pem[1];
	K.priv = g_keys.priv[0];
	K.pub = g_keys.pub[0];
	K.other_priv = g_keys.priv[1];
	return 0;
}

static int keys_teardown(void **state)
{
	(void)state;
	it_keys_free(&g_keys);
	return 0;
}

/* A signed image of version major.minor.0 with a security counter. */
static void make_image(struct buf *img, EVP_PKEY *key, uint8_t major, uint8_t minor,
		       uint32_t counter, size_t body)
{
	struct mcuboot_sign_opts o = { .major = major, .minor = minor,
				       .has_security_counter = 1, .security_counter = counter };
	unsigned char *bin = xmalloc(body);

	for (size_t i = 0; i < body; i++)
		bin[i] = (unsigned char)(i * 7 + minor);
	assert_int_equal(mcuboot_sign(img, bin, body, key, &o), 0);
	free(bin);
}

static void sha_hex(const void *p, size_t n, char hex[65])
{
	unsigned char md[32];
	unsigned int len = 0;

	assert_true(EVP_Digest(p, n, md, &len, EVP_sha256(), NULL));
	ota_hex(hex, md, 32);
}

/* ---- profile ------------------------------------------------------------ */

static void expect_profile_error(const char *json, const char *needle)
{
	struct sim_profile p;

	assert_int_equal(sim_profile_parse(&p, json, strlen(json), "fleet.json"), OTA_EINVAL);
	if (!strstr(ota_error_last(), needle))
		fail_msg("error '%s' does not name '%s'", ota_error_last(), needle);
}

static void profile_parser_names_the_offending_key(void **state)
{
	(void)state;
	expect_profile_error("{\"defualt\": {}}", "unknown key 'defualt' (did you mean 'default'?)");
	expect_profile_error("{\"versions\": {\"1.1.0\": {\"crash_rate\": 2}}}",
			     "versions.1.1.0.crash_rate: must be a number in [0, 1]");
	expect_profile_error("{\"versions\": {\"1.1.0\": {\"hardware\": {\"an386\": {\"boot_fail\": 0.5}}}}}",
			     "versions.1.1.0.hardware.an386: unknown key 'boot_fail'");
	expect_profile_error("{\"default\": {\"battery_mah_per_day\": \"lots\"}}",
			     "default.battery_mah_per_day: must be a number >= 0");
	expect_profile_error("{\"bootloader\": {\"1.2\": 1}}", "bootloader.1.2: must be a version X.Y.Z");
	expect_profile_error("{\"hardware\": {}}", "hardware: must be a non-empty object");
	expect_profile_error("{\"tags\": {\"tier\": {\"beta\": -1}}}", "tags.tier.beta: must be a weight >= 0");
	expect_profile_error("{\"silent\": 1.5}", "silent: must be a number in [0, 1]");
	expect_profile_error("{\"flaky\": 0.1,\n \"silent\": }", "fleet.json:2:");
	expect_profile_error("[1]", "must be a JSON object");
}

static void profile_rates_layer_default_version_and_hardware(void **state)
{
	const char *json =
		"{\"default\": {\"crash_rate\": 0.01, \"hardware\": {\"mps2-an386\": {\"battery_mah_per_day\": 40}}},"
		" \"versions\": {\"1.2.0\": {\"crash_rate\": 0.2,"
		"                \"hardware\": {\"mps2-an386\": {\"boot_fail_rate\": 0.5}}}}}";
	struct sim_profile p;
	struct sim_rates r;
	(void)state;

	assert_int_equal(sim_profile_parse(&p, json, strlen(json), "p.json"), 0);
	sim_profile_rates(&p, "1.0.0", "mps2-an385", &r);
	assert_true(r.crash_rate == 0.01 && r.boot_fail_rate == 0.001 && r.battery_mah_per_day == 30);
	sim_profile_rates(&p, "1.0.0", "mps2-an386", &r);
	assert_true(r.battery_mah_per_day == 40);
	sim_profile_rates(&p, "1.2.0", "mps2-an385", &r);
	assert_true(r.crash_rate == 0.2 && r.boot_fail_rate == 0.001);
	sim_profile_rates(&p, "1.2.0", "mps2-an386", &r);
	assert_true(r.crash_rate == 0.2 && r.boot_fail_rate == 0.5 && r.battery_mah_per_day == 40);
	/* the omitted parts keep their defaults */
	assert_int_equal(p.hardware.n, 2);
	assert_int_equal(p.ntags, 3);
	assert_true(p.silent == 0.01 && p.flaky == 0.05);
	sim_profile_release(&p);
}

/* ---- devices ------------------------------------------------------------ */

static void device_attributes_are_a_function_of_seed_and_index(void **state)
{
	struct sim_profile p;
	struct sim_device a, b;
	unsigned differ = 0, an386 = 0, bl_old = 0, beta = 0, staging = 0, silent = 0, flaky = 0;
	const unsigned n = 100000;
	size_t tier = 0, group = 0;
	char id[16];
	(void)state;

	assert_int_equal(sim_profile_parse(&p, NULL, 0, "default"), 0);
	for (size_t t = 0; t < p.ntags; t++) {
		if (!strcmp(p.tag_keys[t], "tier"))
			tier = t;
		if (!strcmp(p.tag_keys[t], "group"))
			group = t;
	}
	for (unsigned i = 0; i < n; i++) {
		sim_device_init(&a, &p, 42, i);
		sim_device_init(&b, &p, 42, i);
		assert_memory_equal(&a, &b, sizeof(a));
		sim_device_init(&b, &p, 43, i);
		differ += memcmp(&a, &b, sizeof(a)) != 0;
		an386 += !strcmp(p.hardware.names[a.hw], "mps2-an386");
		bl_old += !strcmp(p.bootloader.names[a.bl], "1.0.0");
		beta += !strcmp(p.tags[tier].names[a.tags[tier]], "beta");
		staging += !strcmp(p.tags[group].names[a.tags[group]], "staging");
		silent += !!(a.flags & SIM_F_SILENT);
		flaky += !!(a.flags & SIM_F_FLAKY);
	}
	assert_true(differ > n * 9 / 10);
	/* the default distributions, within 5 standard deviations */
	assert_in_range(an386, 50000 - 800, 50000 + 800);
	assert_in_range(bl_old, 5000 - 350, 5000 + 350);
	assert_in_range(beta, 10000 - 480, 10000 + 480);
	assert_in_range(staging, 2000 - 225, 2000 + 225);
	assert_in_range(silent, 1000 - 160, 1000 + 160);
	assert_in_range(flaky, 5000 - 350, 5000 + 350);
	sim_device_id(id, sizeof(id), 42);
	assert_string_equal(id, "dev-000042");
	assert_true(sizeof(struct sim_device) <= 48);
	sim_profile_release(&p);
}

static void crashers_are_a_crash_rate_fraction_of_100k_devices(void **state)
{
	const double rates[] = { 0.002, 0.05, 0.5 };
	(void)state;

	for (size_t k = 0; k < OTA_ARRAY_SIZE(rates); k++) {
		unsigned c = 0, c2 = 0, both = 0;
		const unsigned n = 100000;
		double sd = sqrt(n * rates[k] * (1 - rates[k]));

		for (unsigned i = 0; i < n; i++) {
			int a = sim_is_crasher(7, i, "1.1.0", rates[k]);
			int b = sim_is_crasher(7, i, "1.2.0", rates[k]);

			c += a;
			c2 += b;
			both += a && b;
			assert_int_equal(a, sim_is_crasher(7, i, "1.1.0", rates[k]));
		}
		assert_in_range(c, n * rates[k] - 5 * sd, n * rates[k] + 5 * sd);
		assert_in_range(c2, n * rates[k] - 5 * sd, n * rates[k] + 5 * sd);
		/* each version draws its own crashers */
		if (rates[k] < 0.9)
			assert_true(both < c);
	}
	/* a crasher crashes about once every six device-hours */
	uint64_t rng = 1;
	unsigned total = 0;
	for (int i = 0; i < 10000; i++)
		total += sim_poisson(&rng, 1.0 * SIM_CRASHER_RATE_PER_HOUR);
	assert_in_range(total, 1667 - 205, 1667 + 205);
}

/* ---- event heap ---------------------------------------------------------- */

static void event_heap_pops_by_time_then_device_then_kind(void **state)
{
	struct sim_heap h = { 0 };
	struct sim_event e, prev = { INT64_MIN, 0, 0 };
	uint64_t rng = 99;
	size_t n = 0;
	(void)state;

	for (int i = 0; i < 20000; i++)
		sim_heap_push(&h, (int64_t)(sim_rand(&rng) % 500), (uint32_t)(sim_rand(&rng) % 100),
			      (uint8_t)(sim_rand(&rng) % 3));
	assert_int_equal(sim_heap_peek(&h)->at, 0);
	while (sim_heap_pop(&h, &e)) {
		assert_true(e.at > prev.at || (e.at == prev.at && e.dev > prev.dev) ||
			    (e.at == prev.at && e.dev == prev.dev && e.kind >= prev.kind));
		prev = e;
		n++;
	}
	assert_int_equal(n, 20000);
	assert_null(sim_heap_peek(&h));
	sim_heap_release(&h);
}

/* ---- decisions ------------------------------------------------------------ */

static void offers_below_the_held_counter_are_refused_and_rollbacks_accepted(void **state)
{
	struct sim_self self = { "1.2.0", "mps2-an385", "1.2.0", 3, 0 };
	struct sim_offer o = { "1.1.0", 2, NULL, NULL, 1 };
	struct sim_image img = { .state = SIM_IMG_OK, .counter = 2 };
	(void)state;

	/* a downgrade below the held counter, declared in the offer */
	assert_int_equal(sim_offer_check(&self, &o), SIM_REFUSE_LOWER_COUNTER);
	/* ... or only in the signed image (an offer that lies) */
	o.counter = 3;
	assert_int_equal(sim_offer_check(&self, &o), SIM_ACCEPT);
	assert_int_equal(sim_image_check(3, &img), SIM_REFUSE_LOWER_COUNTER);
	/* a rollback to an older version with the same counter is fine */
	img.counter = 3;
	assert_int_equal(sim_image_check(3, &img), SIM_ACCEPT);
	img.counter = 4;
	assert_int_equal(sim_image_check(3, &img), SIM_ACCEPT);
	img.state = SIM_IMG_BAD;
	assert_int_equal(sim_image_check(0, &img), SIM_REFUSE_BAD_SIGNATURE);
	assert_int_equal(sim_image_check(0, NULL), SIM_REFUSE_BAD_SIGNATURE);
	/* compatibility, when the server says what the image is for */
	o.hardware = "mps2-an386";
	assert_int_equal(sim_offer_check(&self, &o), SIM_REFUSE_INCOMPATIBLE);
	o.hardware = "mps2-an385";
	o.min_bootloader = "1.10.0";
	assert_int_equal(sim_offer_check(&self, &o), SIM_REFUSE_INCOMPATIBLE);
	o.min_bootloader = "1.2.0";
	assert_int_equal(sim_offer_check(&self, &o), SIM_ACCEPT);
	/* nothing to do, or an image that already failed here */
	o.version = "1.2.0";
	assert_int_equal(sim_offer_check(&self, &o), SIM_SAME_VERSION);
	o.version = "1.3.0";
	self.failed_image = 1;
	assert_int_equal(sim_offer_check(&self, &o), SIM_SKIP_FAILED);
	assert_string_equal(sim_verdict_name(SIM_REFUSE_LOWER_COUNTER), "lower_counter");
	assert_true(sim_version_cmp("1.10.0", "1.9.9") > 0 && sim_version_cmp("1.2", "1.2.0") == 0);
}

/* ---- downloads ------------------------------------------------------------ */

static void cut_download_resumes_with_a_range_and_hashes_the_whole_image(void **state)
{
	struct sim_download d;
	unsigned char data[10000];
	char range[48], hex[65], want[65];
	(void)state;

	for (size_t i = 0; i < sizeof(data); i++)
		data[i] = (unsigned char)(i * 31);
	sha_hex(data, sizeof(data), want);
	assert_int_equal(sim_download_init(&d, 7, 1), 0);
	sim_download_range(&d, range, sizeof(range));
	assert_string_equal(range, "");
	/* first attempt: cut at byte 3000, arriving in 1024-byte chunks */
	d.cut = 3000;
	assert_int_equal(sim_download_response(&d, 200, -1), 0);
	assert_int_equal(sim_download_data(&d, data, 1024), 1024);
	assert_int_equal(sim_download_data(&d, data + 1024, 1024), 1024);
	assert_int_equal(sim_download_data(&d, data + 2048, 1024), 952);
	assert_true(d.cut_hit);
	assert_int_equal(d.offset, 3000);
	sim_download_range(&d, range, sizeof(range));
	assert_string_equal(range, "bytes=3000-");
	/* a 206 that starts elsewhere is refused and the download restarts */
	assert_int_equal(sim_download_response(&d, 206, 2000), OTA_EINVAL);
	assert_int_equal(d.offset, 0);
	assert_int_equal(sim_download_response(&d, 200, -1), 0);
	assert_int_equal(sim_download_data(&d, data, 3000), 3000);
	/* resume: 206 from 3000 */
	assert_int_equal(sim_download_response(&d, 206, 3000), 0);
	assert_true(d.resumed);
	assert_int_equal(d.resumes, 1);
	assert_int_equal(sim_download_data(&d, data + 3000, sizeof(data) - 3000), sizeof(data) - 3000);
	assert_int_equal(d.offset, sizeof(data));
	assert_int_equal(sim_download_digest(&d, hex), 0);
	assert_string_equal(hex, want);
	/* a server that ignores the range sends it all again: start over */
	d.cut = 5000;
	d.offset = 0;
	assert_int_equal(sim_download_response(&d, 200, -1), 0);
	assert_int_equal(sim_download_data(&d, data, 6000), 5000);
	assert_int_equal(sim_download_response(&d, 200, -1), 0);
	assert_int_equal(d.offset, 0);
	assert_int_equal(sim_download_data(&d, data, sizeof(data)), sizeof(data));
	assert_int_equal(sim_download_digest(&d, hex), 0);
	assert_string_equal(hex, want);
	/* 416: unsatisfiable, back to 0 */
	assert_int_equal(sim_download_response(&d, 416, -1), OTA_EINVAL);
	assert_int_equal(d.offset, 0);
	sim_download_release(&d);
}

/* ---- image cache ---------------------------------------------------------- */

static void image_cache_verifies_each_image_once_and_refuses_a_flipped_byte(void **state)
{
	struct buf img = BUF_INIT, other = BUF_INIT;
	struct sim_imgcache c;
	struct sim_image *e, *e2;
	EVP_PKEY *keys[1] = { K.pub };
	char hex[65];
	long i;
	(void)state;

	make_image(&img, K.priv, 1, 1, 5, 4000);
	sim_imgcache_init(&c, keys, 1);
	assert_int_equal(sim_imgcache_check(&c, img.ptr, img.len, &e), 0);
	assert_int_equal(e->state, SIM_IMG_OK);
	assert_int_equal(e->counter, 5);
	assert_string_equal(e->version, "1.1.0");
	assert_int_equal(c.verifications, 1);
	for (int k = 0; k < 1000; k++) {
		assert_int_equal(sim_imgcache_check(&c, img.ptr, img.len, &e2), 0);
		assert_ptr_equal(e2, e);
	}
	assert_int_equal(c.verifications, 1);
	/* a flipped byte in the body is another image, and it does not verify */
	img.ptr[600] ^= 1;
	assert_int_equal(sim_imgcache_check(&c, img.ptr, img.len, &e2), OTA_EINVAL);
	assert_ptr_not_equal(e2, e);
	assert_int_equal(e2->state, SIM_IMG_BAD);
	assert_int_equal(sim_image_check(0, e2), SIM_REFUSE_BAD_SIGNATURE);
	assert_int_equal(c.verifications, 2);
	img.ptr[600] ^= 1;
	/* bytes that do not match the offered sha256 are refused before verifying */
	sha_hex(img.ptr, img.len, hex);
	hex[0] = hex[0] == 'a' ? 'b' : 'a';
	i = sim_imgcache_find(&c, hex, 1);
	assert_true(i >= 0);
	assert_int_equal(sim_imgcache_verify(&c, c.v[i], img.ptr, img.len), OTA_EINVAL);
	assert_non_null(strstr(ota_error_last(), "do not match the offered sha256"));
	assert_int_equal(c.verifications, 2);
	/* signed by a key we do not trust */
	make_image(&other, K.other_priv, 1, 2, 5, 4000);
	assert_int_equal(sim_imgcache_check(&c, other.ptr, other.len, &e2), OTA_EINVAL);
	assert_non_null(strstr(e2->error, "key 1:"));
	assert_int_equal(sim_imgcache_find(&c, "nothex", 1), -1);
	sim_imgcache_release(&c);
	buf_release(&img);
	buf_release(&other);
}

/* ---- the binary against a fake update server (--engine model: the core engine
 * has its own cases below, same checks with what a device does) ----------------- */

struct fake {
	pthread_mutex_t lock;
	struct MHD_Daemon *d;
	int port;
	struct buf image;
	char sha[65];
	const char *version;
	int declared_counter;
	int64_t t0_real, t0;
	/* observed */
	int checkins, range_gets, full_gets, bad_auth;
	int ev_download, ev_install, ev_boot_ok, ev_refused, ev_heartbeat, ev_other;
	int batches;
	char *last_checkin;
};

struct req {
	struct buf body;
};

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static enum MHD_Result reply(struct MHD_Connection *c, unsigned code, const char *ctype,
			     const void *p, size_t n, const char *content_range)
{
	struct MHD_Response *r = MHD_create_response_from_buffer(n, (void *)p, MHD_RESPMEM_MUST_COPY);
	enum MHD_Result ret;

	MHD_add_response_header(r, "Content-Type", ctype);
	if (content_range)
		MHD_add_response_header(r, "Content-Range", content_range);
	ret = MHD_queue_response(c, code, r);
	MHD_destroy_response(r);
	return ret;
}

/* The fake server's credential of a device: a hash of its id. */
static void fake_cred(const char *id, char out[33])
{
	uint64_t h = 0xcbf29ce484222325ULL;
	for (const char *p = id ? id : ""; *p; p++)
		h = (h ^ (unsigned char)*p) * 0x100000001b3ULL;
	snprintf(out, 33, "%016llx%016llx", (unsigned long long)h, (unsigned long long)(h * 31 + 7));
}

/* A request carries the credential of the device it is about: the check-in's
 * device, the download's X-Device-Id, each report's "credential". */
static int fake_authorized(struct req *rq, const char *url, const char *auth, const char *xdev)
{
	json_t *b, *r;
	size_t k;
	char cr[33], want[48];
	int ok = 1;

	if (!strncmp(url, "/device/v1/images/", 18)) {
		fake_cred(xdev, cr);
		snprintf(want, sizeof(want), "Bearer %s", cr);
		return xdev && auth && !strcmp(auth, want);
	}
	b = json_loadb(buf_cstr(&rq->body), rq->body.len, 0, NULL);
	if (!strcmp(url, "/device/v1/checkin")) {
		fake_cred(json_string_value(json_object_get(b, "device")), cr);
		snprintf(want, sizeof(want), "Bearer %s", cr);
		ok = auth && !strcmp(auth, want);
	} else if (!strcmp(url, "/device/v1/reports")) {
		json_array_foreach(json_object_get(b, "reports"), k, r) {
			const char *got = json_string_value(json_object_get(r, "credential"));
			fake_cred(json_string_value(json_object_get(r, "device")), cr);
			if (!got || strcmp(got, cr))
				ok = 0;
		}
	}
	json_decref(b);
	return ok;
}

static enum MHD_Result fake_handler(void *cls, struct MHD_Connection *c, const char *url,
				    const char *method, const char *version, const char *data,
				    size_t *size, void **con_cls)
{
	struct fake *f = cls;
	struct req *rq = *con_cls;
	const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
	enum MHD_Result ret;

	if (!rq) {
		rq = xcalloc(1, sizeof(*rq));
		buf_init(&rq->body, 1 << 20);
		*con_cls = rq;
		return MHD_YES;
	}
	if (*size) {
		buf_put(&rq->body, data, *size);
		*size = 0;
		return MHD_YES;
	}
	/* the contract of docs/update-server.md: the fleet key registers
	 * devices; every other request carries a device's credential */
	if (!strcmp(method, "POST") && !strcmp(url, "/device/v1/register")) {
		json_t *b = json_loadb(buf_cstr(&rq->body), rq->body.len, 0, NULL), *ids = json_object_get(b, "devices");
		json_t *creds = json_array(), *v, *ans;
		size_t k;
		char *text, cr[33];
		if (!auth || strcmp(auth, "Bearer fleet-secret")) {
			json_decref(b);
			json_decref(creds);
			pthread_mutex_lock(&f->lock);
			f->bad_auth++;
			pthread_mutex_unlock(&f->lock);
			return reply(c, 401, "application/json", "{\"error\":\"token\"}", 17, NULL);
		}
		json_array_foreach(ids, k, v) {
			fake_cred(json_string_value(v), cr);
			json_array_append_new(creds, json_string(cr));
		}
		ans = json_pack("{sI so}", "registered", (json_int_t)json_array_size(ids), "credentials", creds);
		text = json_dumps(ans, JSON_COMPACT);
		ret = reply(c, 200, "application/json", text, strlen(text), NULL);
		free(text);
		json_decref(ans);
		json_decref(b);
		return ret;
	}
	if (!fake_authorized(rq, url, auth, MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Device-Id"))) {
		pthread_mutex_lock(&f->lock);
		f->bad_auth++;
		pthread_mutex_unlock(&f->lock);
		return reply(c, 401, "application/json", "{\"error\":\"token\"}", 17, NULL);
	}
	if (!strcmp(method, "POST") && !strcmp(url, "/device/v1/checkin")) {
		json_t *b = json_loadb(buf_cstr(&rq->body), rq->body.len, 0, NULL);
		const char *ver = json_string_value(json_object_get(b, "version"));
		json_t *ans;
		char *text, *img_url = xasprintf("/device/v1/images/%s", f->sha);

		pthread_mutex_lock(&f->lock);
		f->checkins++;
		free(f->last_checkin);
		f->last_checkin = xstrndup(rq->body.ptr, rq->body.len);
		pthread_mutex_unlock(&f->lock);
		ans = json_pack("{s:I, s:f, s:I, s:n}", "now",
				(json_int_t)(f->t0 + (now_ms() - f->t0_real) * 1000), "time_scale", 1000.0,
				"next_poll_ms", (json_int_t)60000, "offer");
		/* the image is for the device's variant (otacd offers only such) */
		if (ver && strcmp(ver, f->version))
			json_object_set_new(ans, "offer",
					    json_pack("{s:i, s:s, s:i, s:{s:s, s:s, s:I, s:s, s:s}, s:s}",
						      "release", 2, "version", f->version,
						      "security_counter", f->declared_counter, "image",
						      "url", img_url, "sha256", f->sha, "size",
						      (json_int_t)f->image.len, "type", "application",
						      "hardware", json_string_value(json_object_get(b, "hardware")),
						      "reason", "rollout"));
		text = json_dumps(ans, JSON_COMPACT);
		ret = reply(c, 200, "application/json", text, strlen(text), NULL);
		free(text);
		free(img_url);
		json_decref(ans);
		json_decref(b);
		return ret;
	}
	if (!strcmp(method, "GET") && !strncmp(url, "/device/v1/images/", 18)) {
		const char *range = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Range");
		unsigned long long from = 0, to = 0;
		char cr[96];

		if (strcmp(url + 18, f->sha))
			return reply(c, 404, "text/plain", "no", 2, NULL);
		if (range && sscanf(range, "bytes=%llu-", &from) == 1) {
			pthread_mutex_lock(&f->lock);
			f->range_gets++;
			pthread_mutex_unlock(&f->lock);
			if (from >= f->image.len)
				return reply(c, 416, "text/plain", "", 0, NULL);
			/* bytes=a- or bytes=a-b (RFC 9110 14.1.2), b past the end is the end */
			if (sscanf(range, "bytes=%*u-%llu", &to) != 1 || to >= f->image.len)
				to = f->image.len - 1;
			snprintf(cr, sizeof(cr), "bytes %llu-%llu/%zu", from, to, f->image.len);
			return reply(c, 206, "application/octet-stream", f->image.ptr + from,
				     (size_t)(to - from + 1), cr);
		}
		pthread_mutex_lock(&f->lock);
		f->full_gets++;
		pthread_mutex_unlock(&f->lock);
		return reply(c, 200, "application/octet-stream", f->image.ptr, f->image.len, NULL);
	}
	if (!strcmp(method, "POST") && !strcmp(url, "/device/v1/reports")) {
		json_t *b = json_loadb(buf_cstr(&rq->body), rq->body.len, 0, NULL);
		json_t *reps = json_object_get(b, "reports"), *r;
		size_t k;
		char text[64];

		if (!json_is_array(reps) || json_array_size(reps) > 1000) {
			json_decref(b);
			return reply(c, 400, "application/json", "{\"error\":\"reports\"}", 19, NULL);
		}
		pthread_mutex_lock(&f->lock);
		if (getenv("FLEETSIM_TEST_VERBOSE") && !f->batches)
			fprintf(stderr, "first batch: %.400s\n", buf_cstr(&rq->body));
		f->batches++;
		json_array_foreach(reps, k, r) {
			const char *ev = json_string_value(json_object_get(r, "event"));

			if (!ev || !json_is_string(json_object_get(r, "device")))
				f->ev_other++;
			else if (!strcmp(ev, "download"))
				f->ev_download++;
			else if (!strcmp(ev, "install"))
				f->ev_install++;
			else if (!strcmp(ev, "boot_ok"))
				f->ev_boot_ok++;
			else if (!strcmp(ev, "refused"))
				f->ev_refused++;
			else if (!strcmp(ev, "heartbeat") && json_is_integer(json_object_get(r, "uptime_s")))
				f->ev_heartbeat++;
			else
				f->ev_other++;
		}
		pthread_mutex_unlock(&f->lock);
		snprintf(text, sizeof(text), "{\"accepted\":%zu}", json_array_size(reps));
		json_decref(b);
		return reply(c, 200, "application/json", text, strlen(text), NULL);
	}
	return reply(c, 404, "text/plain", "no", 2, NULL);
}

static void fake_done(void *cls, struct MHD_Connection *c, void **con_cls,
		      enum MHD_RequestTerminationCode toe)
{
	struct req *rq = *con_cls;

	if (rq) {
		buf_release(&rq->body);
		free(rq);
	}
	*con_cls = NULL;
}

static void fake_start(struct fake *f, EVP_PKEY *key, uint32_t counter, int declared)
{
	const union MHD_DaemonInfo *info;

	memset(f, 0, sizeof(*f));
	pthread_mutex_init(&f->lock, NULL);
	buf_init(&f->image, BUF_NOLIMIT);
	make_image(&f->image, key, 1, 1, counter, 20000);
	sha_hex(f->image.ptr, f->image.len, f->sha);
	f->version = "1.1.0";
	f->declared_counter = declared;
	f->t0_real = now_ms();
	f->t0 = 1796000000000LL;
	f->d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION, 0,
				NULL, NULL, fake_handler, f, MHD_OPTION_NOTIFY_COMPLETED, fake_done, f,
				MHD_OPTION_SOCK_ADDR, NULL, MHD_OPTION_END);
	assert_non_null(f->d);
	info = MHD_get_daemon_info(f->d, MHD_DAEMON_INFO_BIND_PORT);
	f->port = info->port;
}

static void fake_stop(struct fake *f)
{
	MHD_stop_daemon(f->d);
	buf_release(&f->image);
	free(f->last_checkin);
	pthread_mutex_destroy(&f->lock);
}

/* Run otacd-fleetsim against f; returns the stats JSON (new ref). */
static json_t *run_fleetsim(struct fake *f, const char *extra, const char *profile)
{
	char *prof = xasprintf("%s/profile.json", K.dir), *stats = xasprintf("%s/stats.json", K.dir);
	char *bin = h_bin("otacd-fleetsim");
	struct buf out = BUF_INIT;
	json_t *st;
	int rc;

	assert_int_equal(ota_write_file_atomic(prof, profile, strlen(profile), 0644), 0);
	unlink(stats);
	rc = h_sh(&out, "%s --url http://127.0.0.1:%d --devices 40 --seed 5 --key %s "
		  "--fleet-key fleet-secret --profile %s --stats %s --duration 60 --concurrency 8 %s",
		  bin, f->port, K.pub_pem, prof, stats, extra);
	if (rc != 0)
		fail_msg("otacd-fleetsim exited %d: %s", rc, buf_cstr(&out));
	st = json_load_file(stats, 0, NULL);
	if (!st)
		fail_msg("no stats file; output: %s", buf_cstr(&out));
	if (getenv("FLEETSIM_TEST_VERBOSE"))
		fprintf(stderr, "%s", buf_cstr(&out));
	if (!strstr(buf_cstr(&out), "fleetsim final t=+"))
		fail_msg("no final line in: %s", buf_cstr(&out));
	free(prof);
	free(stats);
	free(bin);
	buf_release(&out);
	return st;
}

static int64_t st_int(json_t *st, const char *k)
{
	return json_integer_value(json_object_get(st, k));
}

static const char *steady_profile =
	"{\"default\": {\"crash_rate\": 0, \"boot_fail_rate\": 0, \"revert_rate\": 0},"
	" \"silent\": 0, \"flaky\": 0}";

static const char *calm_profile =
	"{\"default\": {\"crash_rate\": 0, \"boot_fail_rate\": 0, \"revert_rate\": 0},"
	" \"silent\": 0, \"flaky\": 0.5, \"flaky_fail\": 0.5}";

static void fleet_updates_through_checkins_resumed_downloads_and_batched_reports(void **state)
{
	struct fake f;
	json_t *st;
	(void)state;

	fake_start(&f, K.priv, 2, 2);
	st = run_fleetsim(&f, "--engine model --until 1.1.0:1.0 --report-every 600", calm_profile);
	assert_int_equal(st_int(st, "devices"), 40);
	assert_int_equal(json_integer_value(json_object_get(json_object_get(st, "versions"), "1.1.0")), 40);
	assert_null(json_object_get(json_object_get(st, "versions"), "1.0.0"));
	assert_int_equal(json_integer_value(json_object_get(json_object_get(st, "ever_ran"), "1.0.0")), 40);
	assert_int_equal(json_integer_value(json_object_get(json_object_get(st, "offered"), "1.1.0")), 40);
	assert_int_equal(st_int(st, "confirmed"), 40);
	assert_int_equal(st_int(st, "refused_lower_counter"), 0);
	assert_int_equal(st_int(st, "refused_bad_signature"), 0);
	assert_int_equal(st_int(st, "incompatible_offers"), 0);
	assert_int_equal(st_int(st, "verifications"), 1);
	assert_true(json_is_true(json_object_get(st, "until_reached")));
	assert_int_equal(st_int(st, "downloads"), 40);
	/* half the fleet is flaky and loses half its transfers: some resume */
	assert_true(st_int(st, "resumed_downloads") > 0);
	pthread_mutex_lock(&f.lock);
	if (getenv("FLEETSIM_TEST_VERBOSE"))
		fprintf(stderr, "fake: checkins %d range %d full %d download %d install %d boot_ok %d "
			"refused %d heartbeat %d other %d batches %d\n", f.checkins, f.range_gets,
			f.full_gets, f.ev_download, f.ev_install, f.ev_boot_ok, f.ev_refused,
			f.ev_heartbeat, f.ev_other, f.batches);
	assert_true(f.range_gets > 0);
	assert_int_equal(f.bad_auth, 0);
	/* one verification fetch plus 40 device downloads started from 0 */
	assert_true(f.full_gets >= 41);
	assert_int_equal(f.ev_boot_ok, 40);
	assert_int_equal(f.ev_install, 40);
	assert_int_equal(f.ev_download, 40);
	assert_int_equal(f.ev_refused, 0);
	assert_int_equal(f.ev_other, 0);
	assert_int_equal(st_int(st, "reports_sent"), f.ev_boot_ok + f.ev_install + f.ev_download + f.ev_heartbeat);
	/* batched: fewer POSTs than reports */
	assert_true(f.batches < st_int(st, "reports_sent"));
	assert_non_null(strstr(f.last_checkin, "\"product\":\"sensor-node\""));
	assert_non_null(strstr(f.last_checkin, "\"tags\":{\"region\":"));
	pthread_mutex_unlock(&f.lock);
	json_decref(st);
	fake_stop(&f);
}

static void fleet_refuses_a_downgrade_offer_and_never_installs_it(void **state)
{
	struct fake f;
	json_t *st;
	(void)state;

	/* the offer declares counter 1 to devices holding 3: refused before downloading */
	fake_start(&f, K.priv, 1, 1);
	st = run_fleetsim(&f, "--engine model --start-counter 3 --duration 3", calm_profile);
	assert_int_equal(json_integer_value(json_object_get(json_object_get(st, "versions"), "1.0.0")), 40);
	assert_int_equal(st_int(st, "confirmed"), 0);
	assert_int_equal(st_int(st, "installed"), 0);
	assert_true(st_int(st, "refused_lower_counter") >= 40);
	assert_int_equal(st_int(st, "downloads"), 0);
	pthread_mutex_lock(&f.lock);
	assert_int_equal(f.ev_install, 0);
	if (f.ev_refused < 40) fail_msg("refused reports %d", f.ev_refused);
	pthread_mutex_unlock(&f.lock);
	json_decref(st);
	fake_stop(&f);

	/* the offer lies (declares 3) but the signed image says 1: refused after verifying */
	fake_start(&f, K.priv, 1, 3);
	st = run_fleetsim(&f, "--engine model --start-counter 3 --duration 3", calm_profile);
	assert_int_equal(st_int(st, "confirmed"), 0);
	assert_int_equal(st_int(st, "installed"), 0);
	assert_true(st_int(st, "refused_lower_counter") >= 40);
	assert_true(st_int(st, "downloads") >= 40);
	json_decref(st);
	fake_stop(&f);
}

static void fleet_refuses_an_image_signed_by_an_untrusted_key(void **state)
{
	struct fake f;
	json_t *st;
	(void)state;

	fake_start(&f, K.other_priv, 2, 2);
	st = run_fleetsim(&f, "--engine model --duration 3 --shared-downloads", calm_profile);
	assert_int_equal(st_int(st, "confirmed"), 0);
	assert_int_equal(st_int(st, "installed"), 0);
	assert_true(st_int(st, "refused_bad_signature") >= 40);
	assert_int_equal(st_int(st, "refused_lower_counter"), 0);
	/* shared downloads: the image is fetched once, not per device */
	assert_int_equal(st_int(st, "downloads"), 1);
	pthread_mutex_lock(&f.lock);
	assert_int_equal(f.full_gets, 1);
	assert_int_equal(f.ev_install, 0);
	pthread_mutex_unlock(&f.lock);
	json_decref(st);
	fake_stop(&f);
}


/* ---- --engine core: the devices run libotadev (issue 14) ----------------------------- */

static int64_t core_int(json_t *st, const char *k)
{
	return json_integer_value(json_object_get(json_object_get(st, "core"), k));
}

/* Every device runs the real state machine on simulated flash: the
 * download (Range, resumed after power cuts at any byte of the transfer,
 * the slot write or the trailer write), the digest (bytes corrupted in
 * transit are downloaded again), the MCUboot signature and counter, the
 * test boot through the simulated MCUboot, the confirm, the reports
 * through the gateway.  No device is ever left without a bootable image,
 * and no unverified image is ever pending. */
static void core_fleet_updates_through_power_cuts_and_corrupt_transfers(void **state)
{
	struct fake f;
	json_t *st;
	int64_t confirmed;
	(void)state;

	fake_start(&f, K.priv, 2, 2);
	st = run_fleetsim(&f, getenv("FLEETSIM_CORE_ARGS") ? getenv("FLEETSIM_CORE_ARGS") :
			  "--engine core --until 1.1.0:0.9 --report-every 600 --fault-power-cut 0.6 "
			  "--fault-corrupt 0.3", calm_profile);
	if (getenv("FLEETSIM_TEST_VERBOSE"))
		fprintf(stderr, "%s\n", json_dumps(st, JSON_INDENT(1)));
	confirmed = st_int(st, "confirmed");
	assert_true(json_is_true(json_object_get(st, "until_reached")));
	assert_true(confirmed >= 36);
	assert_int_equal(json_integer_value(json_object_get(json_object_get(st, "versions"), "1.1.0")), confirmed);
	assert_true(st_int(st, "installed") >= confirmed);
	assert_true(st_int(st, "downloads") >= st_int(st, "installed"));
	/* three corrupt downloads in a row are refused (digest), nothing else is */
	assert_int_equal(st_int(st, "refused"), st_int(st, "refused_bad_signature"));
	assert_int_equal(st_int(st, "refused_lower_counter"), 0);
	assert_true(core_int(st, "power_cuts") > 0);
	assert_true(st_int(st, "resumed_downloads") > 0);
	assert_true(core_int(st, "transit_corruptions") > 0);
	assert_true(core_int(st, "digest_retries") > 0);
	assert_true(core_int(st, "signature_checks") >= 1);
	assert_int_equal(core_int(st, "bricked"), 0);
	assert_int_equal(core_int(st, "unverified_pending"), 0);
	pthread_mutex_lock(&f.lock);
	assert_int_equal(f.bad_auth, 0);
	assert_true(f.range_gets > 0);
	/* reports still queued in a device when the run stops are not sent */
	assert_true(f.ev_boot_ok >= 30 && f.ev_boot_ok <= confirmed);
	assert_int_equal(st_int(st, "reports_sent"),
			 f.ev_boot_ok + f.ev_install + f.ev_download + f.ev_heartbeat + f.ev_refused);
	assert_true(f.ev_install >= f.ev_boot_ok);
	assert_true(f.ev_download >= f.ev_install);
	assert_int_equal(f.ev_other, 0);
	assert_true(f.ev_heartbeat > 0);
	/* the gateway batches many devices' reports per POST (how many per
	 * POST depends on timing: a report waits at most 200 ms for others) */
	assert_true(f.batches < st_int(st, "reports_sent"));
	pthread_mutex_unlock(&f.lock);
	json_decref(st);
	fake_stop(&f);
}

/* The core refuses a declared downgrade before downloading, a signed one
 * after verifying, and an image signed by a key it does not trust. */
static void core_fleet_refuses_downgrades_and_untrusted_images(void **state)
{
	struct fake f;
	json_t *st;
	(void)state;

	fake_start(&f, K.priv, 1, 1);
	st = run_fleetsim(&f, "--engine core --start-counter 3 --duration 3", steady_profile);
	assert_int_equal(json_integer_value(json_object_get(json_object_get(st, "versions"), "1.0.0")), 40);
	assert_int_equal(st_int(st, "installed"), 0);
	assert_int_equal(st_int(st, "refused_lower_counter"), 40);
	assert_int_equal(st_int(st, "downloads"), 0);
	json_decref(st);
	fake_stop(&f);

	fake_start(&f, K.priv, 1, 3);   /* declares 3, signed 1 */
	st = run_fleetsim(&f, "--engine core --start-counter 3 --duration 3 --shared-downloads", steady_profile);
	assert_int_equal(st_int(st, "installed"), 0);
	assert_int_equal(st_int(st, "confirmed"), 0);
	assert_int_equal(st_int(st, "refused_lower_counter"), 40);
	assert_int_equal(core_int(st, "unverified_pending"), 0);
	json_decref(st);
	fake_stop(&f);

	fake_start(&f, K.other_priv, 2, 2);
	st = run_fleetsim(&f, "--engine core --duration 3 --shared-downloads --verify-every", steady_profile);
	assert_int_equal(st_int(st, "installed"), 0);
	assert_int_equal(st_int(st, "refused_bad_signature"), 40);
	assert_int_equal(st_int(st, "refused_lower_counter"), 0);
	/* shared downloads: fetched once; every device checked the signature itself */
	assert_int_equal(st_int(st, "downloads"), 1);
	pthread_mutex_lock(&f.lock);
	assert_int_equal(f.full_gets, 1);
	assert_int_equal(f.range_gets, 0);
	assert_int_equal(f.ev_install, 0);
	pthread_mutex_unlock(&f.lock);
	json_decref(st);
	fake_stop(&f);
}

/* The server vanishes for a second in the middle of the downloads: the
 * devices back off and resume; all land, none bricked. */
static void core_fleet_survives_a_server_that_vanishes_mid_download(void **state)
{
	struct fake f;
	json_t *st;
	(void)state;

	fake_start(&f, K.priv, 2, 2);
	st = run_fleetsim(&f, "--engine core --until 1.1.0:1.0 --fault-vanish 0.1:1", calm_profile);
	assert_int_equal(st_int(st, "confirmed"), 40);
	assert_true(core_int(st, "server_vanished") > 0);
	assert_int_equal(core_int(st, "bricked"), 0);
	json_decref(st);
	fake_stop(&f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(profile_parser_names_the_offending_key),
		cmocka_unit_test(profile_rates_layer_default_version_and_hardware),
		cmocka_unit_test(device_attributes_are_a_function_of_seed_and_index),
		cmocka_unit_test(crashers_are_a_crash_rate_fraction_of_100k_devices),
		cmocka_unit_test(event_heap_pops_by_time_then_device_then_kind),
		cmocka_unit_test(offers_below_the_held_counter_are_refused_and_rollbacks_accepted),
		cmocka_unit_test(cut_download_resumes_with_a_range_and_hashes_the_whole_image),
		cmocka_unit_test(image_cache_verifies_each_image_once_and_refuses_a_flipped_byte),
		cmocka_unit_test(fleet_updates_through_checkins_resumed_downloads_and_batched_reports),
		cmocka_unit_test(fleet_refuses_a_downgrade_offer_and_never_installs_it),
		cmocka_unit_test(fleet_refuses_an_image_signed_by_an_untrusted_key),
		cmocka_unit_test(core_fleet_updates_through_power_cuts_and_corrupt_transfers),
		cmocka_unit_test(core_fleet_refuses_downgrades_and_untrusted_images),
		cmocka_unit_test(core_fleet_survives_a_server_that_vanishes_mid_download),
	};
	return cmocka_run_group_tests_name("fleetsim", tests, keys_setup, keys_teardown);
}
