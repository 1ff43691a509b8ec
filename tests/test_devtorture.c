/*
 * test_devtorture.c - otacd-device under power loss AND hostile images
 * (issue 14's torture test, issue 13's signing chain on the device).
 *
 * A real otacd with a trust root (otactl keys root init) and two certified
 * signing keys; otacd-device processes holding the root as their anchor
 * and both keys as the bootloader's key slots; every device request goes
 * through a mirror in front of otacd (an MHD server in this process that
 * forwards to otacd with libcurl, as a CDN or a hostile network would).
 * Each cycle flashes the factory image, then runs otacd-device and
 * SIGKILLs it at random instants until it settles, "rebooting" through the
 * simulated MCUboot after every kill, and checks after every kill that the
 * primary slot holds a verified image and that nothing bad was ever marked
 * bootable (the secondary's trailer magic, the record's phase).
 *
 * The bad images, and how they reach the device:
 *   corrupt    otacd's own release, bytes flipped in transit by the mirror
 *   truncate   the mirror offers otacd's image cut short (a consistent
 *              offer: its own digest and size)
 *   wronghw    otacd's genuine release for another board (otacd never
 *              offers it to this one; the mirror does, claiming this board)
 *   lowcounter otacd's genuine older release with counter 0 (otacd never
 *              offers a lower counter; the mirror does, claiming counter 1)
 *   revoked    otacd's release signed by key a, after `otactl keys revoke`
 *              + `keys publish`: the real server path end to end
 * The mirror serves what otacd refuses to (wronghw, lowcounter: their
 * manifests too) from bytes it fetched through otacd's admin API: an
 * attacker with a copy of old releases.  Cycles: $OTADEV_TORTURE_CYCLES
 * (default 10) before the revocation, then 2 after it.
 */
/* the core's chain parser, compiled in (before cmocka.h, whose skip() macro it
 * would collide with): no libotadev link for this test */
#include "../device/otadev_chain.c"

#include <ctype.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <curl/curl.h>
#include <fcntl.h>
#include <jansson.h>
#include <microhttpd.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../orchestrator/pki.h"
#include "../orchestrator/mcuboot.h"
#include "../orchestrator/provenance.h"
#include "devharness.h"
#include "harness.h"

#define HW "mps2-an385"

enum mode { M_GOOD, M_CORRUPT, M_TRUNCATE, M_WRONGHW, M_LOWCOUNTER, M_REVOKED, M_WITHHELD, M_FORGED, M_TAMPERED,
	    M_MODES };
static const char *const mode_name[] = { "good", "corrupt", "truncate", "wronghw", "lowcounter", "revoked",
					 "withheld", "forged", "tampered" };
/* what the device must say when it refuses */
static const char *const mode_why[] = {
	"", "image digest does not match the offer", "not a well-formed MCUboot image",
	"image for another hardware variant", "lower security counter", "signing certificate is revoked",
	"the server withholds the revocation list", "the revocation list is not signed by the trust root",
	"signature does not verify with the signing certificate",
};

/* ---- the mirror ---------------------------------------------------------------- */

struct mfile {
	char path[128];
	struct buf data;
	unsigned status;             /* 0: serve data; else answer this status */
};

struct mirror {
	struct MHD_Daemon *mhd;
	char *upstream, *url;
	pthread_mutex_t mu;
	int mode;
	char *offer;                 /* JSON replacing otacd's offer, or NULL */
	struct mfile files[8];
	int nfiles;
	int altered;                 /* answers changed by the mirror */
};

struct cresp {
	struct buf body;
	char content_range[96];
};

static size_t c_body(char *p, size_t s, size_t n, void *u)
{
	struct cresp *r = u;
	return buf_put(&r->body, p, s * n) < 0 ? 0 : s * n;
}

static size_t c_header(char *p, size_t s, size_t n, void *u)
{
	struct cresp *r = u;
	size_t len = s * n;
	if (len > 15 && !strncasecmp(p, "Content-Range:", 14)) {
		size_t k = len - 14 < sizeof(r->content_range) ? len - 14 : sizeof(r->content_range) - 1;
		memcpy(r->content_range, p + 14, k);
		r->content_range[k] = 0;
		for (char *e = r->content_range + strlen(r->content_range); e > r->content_range &&
		     (e[-1] == '\r' || e[-1] == '\n' || e[-1] == ' ');)
			*--e = 0;
	}
	return len;
}

static enum MHD_Result answer(struct MHD_Connection *c, unsigned status, const void *p, size_t n, const char *crange)
{
	struct MHD_Response *r = MHD_create_response_from_buffer(n, (void *)p, MHD_RESPMEM_MUST_COPY);
	enum MHD_Result ret;
	if (crange && *crange)
		MHD_add_response_header(r, "Content-Range", crange + (*crange == ' '));
	ret = MHD_queue_response(c, status, r);
	MHD_destroy_response(r);
	return ret;
}

/* A file the mirror serves itself, with Range. */
static enum MHD_Result serve_file(struct MHD_Connection *c, const struct mfile *f)
{
	const char *range = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Range");
	long a = 0, b = (long)f->data.len - 1;
	char cr[96];
	if (range && sscanf(range, "bytes=%ld-%ld", &a, &b) >= 1) {
		if (b >= (long)f->data.len)
			b = (long)f->data.len - 1;
		if (a < 0 || a > b)
			return answer(c, 416, "", 0, NULL);
		snprintf(cr, sizeof(cr), "bytes %ld-%ld/%zu", a, b, f->data.len);
		return answer(c, 206, f->data.ptr + a, (size_t)(b - a + 1), cr);
	}
	return answer(c, 200, f->data.ptr, f->data.len, NULL);
}

static enum MHD_Result mirror_handler(void *cls, struct MHD_Connection *c, const char *url, const char *method,
				      const char *version, const char *data, size_t *size, void **con_cls)
{
	struct mirror *m = cls;
	struct buf *body;
	struct curl_slist *hl = NULL;
	struct cresp rs;
	const char *hdr[] = { "Authorization", "X-Device-Id", "Range", "Content-Type" };
	char *full, line[512];
	long status = 0;
	CURL *cu;
	enum MHD_Result ret;
	int mode;

	(void)version;
	if (dh_mhd_body(con_cls, data, size, &body))
		return MHD_YES;
	pthread_mutex_lock(&m->mu);
	mode = m->mode;
	for (int i = 0; i < m->nfiles; i++)
		if (!strcmp(method, "GET") && !strcmp(url, m->files[i].path)) {
			m->altered++;
			ret = m->files[i].status ? answer(c, m->files[i].status, "{}", 2, NULL) : serve_file(c, &m->files[i]);
			pthread_mutex_unlock(&m->mu);
			return ret;
		}
	pthread_mutex_unlock(&m->mu);
	/* forward to otacd */
	memset(&rs, 0, sizeof(rs));
	buf_init(&rs.body, 1 << 22);
	full = xasprintf("%s%s", m->upstream, url);
	cu = curl_easy_init();
	for (size_t i = 0; i < OTA_ARRAY_SIZE(hdr); i++) {
		const char *v = MHD_lookup_connection_value(c, MHD_HEADER_KIND, hdr[i]);
		if (v) {
			snprintf(line, sizeof(line), "%s: %s", hdr[i], v);
			hl = curl_slist_append(hl, line);
		}
	}
	curl_easy_setopt(cu, CURLOPT_URL, full);
	curl_easy_setopt(cu, CURLOPT_HTTPHEADER, hl);
	curl_easy_setopt(cu, CURLOPT_WRITEFUNCTION, c_body);
	curl_easy_setopt(cu, CURLOPT_WRITEDATA, &rs);
	curl_easy_setopt(cu, CURLOPT_HEADERFUNCTION, c_header);
	curl_easy_setopt(cu, CURLOPT_HEADERDATA, &rs);
	curl_easy_setopt(cu, CURLOPT_TIMEOUT, 20L);
	curl_easy_setopt(cu, CURLOPT_NOSIGNAL, 1L);   /* threads: no SIGALRM */
	if (!strcmp(method, "POST")) {
		curl_easy_setopt(cu, CURLOPT_POST, 1L);
		curl_easy_setopt(cu, CURLOPT_POSTFIELDS, body->ptr ? body->ptr : "");
		curl_easy_setopt(cu, CURLOPT_POSTFIELDSIZE, (long)body->len);
	}
	if (curl_easy_perform(cu) == CURLE_OK)
		curl_easy_getinfo(cu, CURLINFO_RESPONSE_CODE, &status);
	curl_easy_cleanup(cu);
	curl_slist_free_all(hl);
	free(full);
	if (!status) {
		buf_release(&rs.body);
		return MHD_NO;   /* no answer: the device sees a dropped connection */
	}
	pthread_mutex_lock(&m->mu);
	if (!strcmp(url, "/device/v1/checkin") && status == 200 && m->offer) {
		/* the hostile mirror's offer in place of otacd's */
		json_t *j = json_loadb(rs.body.ptr ? rs.body.ptr : "", rs.body.len, 0, NULL);
		json_t *o = json_loads(m->offer, 0, NULL);
		if (j && o && !json_is_null(json_object_get(j, "offer"))) {
			char *t;
			json_object_set_new(j, "offer", o);
			o = NULL;
			t = json_dumps(j, JSON_COMPACT);
			buf_clear(&rs.body);
			buf_puts(&rs.body, t);
			free(t);
			m->altered++;
		}
		json_decref(o);
		json_decref(j);
	} else if (mode == M_CORRUPT && !strncmp(url, "/device/v1/images/", 18) && (status == 206 || status == 200)) {
		/* one flipped byte at image offset 1000 (inside the signed body) */
		long start = 0;
		const char *range = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Range");
		if (range)
			sscanf(range, "bytes=%ld", &start);
		if (start <= 1000 && 1000 < start + (long)rs.body.len) {
			rs.body.ptr[1000 - start] ^= 0x5a;
			m->altered++;
		}
	}
	pthread_mutex_unlock(&m->mu);
	ret = answer(c, (unsigned)status, rs.body.ptr ? rs.body.ptr : "", rs.body.len, rs.content_range);
	buf_release(&rs.body);
	return ret;
}

static void mirror_start(struct mirror *m, const char *upstream)
{
	const union MHD_DaemonInfo *info;
	memset(m, 0, sizeof(*m));
	pthread_mutex_init(&m->mu, NULL);
	m->upstream = xstrdup(upstream);
	m->mhd = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION, 0, NULL, NULL,
				  mirror_handler, m, MHD_OPTION_NOTIFY_COMPLETED, dh_mhd_body_done, m, MHD_OPTION_END);
	assert_non_null(m->mhd);
	info = MHD_get_daemon_info(m->mhd, MHD_DAEMON_INFO_BIND_PORT);
	m->url = xasprintf("http://127.0.0.1:%u", (unsigned)info->port);
}

/* Switch the attack: mode, the offer replacing otacd's (NULL: none), files. */
static void mirror_set(struct mirror *m, int mode, char *offer)
{
	pthread_mutex_lock(&m->mu);
	m->mode = mode;
	free(m->offer);
	m->offer = offer;
	pthread_mutex_unlock(&m->mu);
}

static void mirror_add_file(struct mirror *m, const char *path, const struct buf *data, unsigned status)
{
	struct mfile *f;
	pthread_mutex_lock(&m->mu);
	assert_true(m->nfiles < (int)OTA_ARRAY_SIZE(m->files));
	f = &m->files[m->nfiles];
	snprintf(f->path, sizeof(f->path), "%s", path);
	buf_init(&f->data, 1 << 22);
	if (data)
		buf_put(&f->data, data->ptr, data->len);
	f->status = status;
	m->nfiles++;
	pthread_mutex_unlock(&m->mu);
}

/* Serve other bytes at path. */
static void mirror_replace(struct mirror *m, const char *path, const struct buf *data)
{
	pthread_mutex_lock(&m->mu);
	for (int i = 0; i < m->nfiles; i++)
		if (!strcmp(m->files[i].path, path)) {
			buf_clear(&m->files[i].data);
			buf_put(&m->files[i].data, data->ptr, data->len);
		}
	pthread_mutex_unlock(&m->mu);
}

/* The envelope env with its payload edited (from -> to), signatures kept:
 * what an attacker who edits a signed manifest serves. */
static void tamper(struct buf *out, const struct buf *env, const char *from, const char *to)
{
	json_t *e = json_loadb(env->ptr, env->len, 0, NULL);
	const char *b64 = json_string_value(json_object_get(e, "payload"));
	struct buf raw = BUF_INIT, edited = BUF_INIT;
	char *at, *enc, *text;
	assert_non_null(b64);
	assert_int_equal(dsse_base64_decode(&raw, b64, strlen(b64)), 0);
	at = strstr(buf_cstr(&raw), from);
	assert_non_null(at);
	buf_put(&edited, raw.ptr, (size_t)(at - raw.ptr));
	buf_puts(&edited, to);
	buf_puts(&edited, at + strlen(from));
	enc = dsse_base64_encode(edited.ptr, edited.len);
	json_object_set_new(e, "payload", json_string(enc));
	text = json_dumps(e, JSON_COMPACT);
	buf_init(out, 1 << 20);
	buf_puts(out, text);
	free(text);
	free(enc);
	json_decref(e);
	buf_release(&raw);
	buf_release(&edited);
}

/* Stop serving the last file added. */
static void mirror_drop_last(struct mirror *m)
{
	pthread_mutex_lock(&m->mu);
	buf_release(&m->files[--m->nfiles].data);
	pthread_mutex_unlock(&m->mu);
}

static void mirror_stop(struct mirror *m)
{
	MHD_stop_daemon(m->mhd);
	for (int i = 0; i < m->nfiles; i++)
		buf_release(&m->files[i].data);
	free(m->offer);
	free(m->upstream);
	free(m->url);
	pthread_mutex_destroy(&m->mu);
}

/* ---- otacd, its releases ------------------------------------------------------------ */

static const char *const PIPE = "name: fw\nstages:\n"
	"  - name: build\n"
	"    steps: [ { run: \"printf 'fw %s' > app.bin && head -c 30000 /dev/urandom >> app.bin\" } ]\n"
	"    artifacts: [ { path: app.bin, name: app.bin, type: application, hardware: %s } ]\n"
	"  - { name: release, kind: release, needs: [build], version: \"%s\", security_counter: %d, key: %s }\n%s";
static const char *const ROLLOUT = "  - name: canary\n    kind: rollout\n    needs: [release]\n"
	"    steps: [ {percent: 100, hold: 1000h} ]\n    gates: [boots]\n"
	"gates:\n  boots: { metric: boot_success_rate, min: 0.5, min_devices: 1000 }\n";

struct rel {
	int64_t id;
	char sha[65];                /* the image's */
	struct buf image, envelope;
};

static void fetch_object(struct daemon *d, const char *sha, struct buf *out)
{
	char *path = xasprintf("%s/obj.bin", d->dir);
	struct buf o = BUF_INIT;
	assert_int_equal(h_sh(&o, "curl -sf -H 'Authorization: Bearer %s' -o %s %s/api/v1/artifacts/sha256/%s", d->token,
			      path, d->url, sha), 0);
	buf_init(out, 1 << 22);
	assert_int_equal(ota_read_file(out, path, 1 << 22), 0);
	free(path);
	buf_release(&o);
}

/* Run the pipeline; the release with its image and manifest envelope. */
static void release(struct daemon *d, struct rel *r, const char *version, const char *hw, int counter,
		    const char *key, int rollout)
{
	char *y = xasprintf(PIPE, version, hw, version, counter, key, rollout ? ROLLOUT : "");
	char *p;
	int64_t run = h_trigger(d, y), env_id;
	json_t *rj = NULL, *a;
	size_t i;
	const char *st = rollout ? NULL : h_wait_run(d, run, 60000);

	if (st)
		assert_string_equal(st, "passed");
	r->id = dh_release_of(d, run);
	assert_true(r->id > 0);
	p = xasprintf("/api/v1/releases/%lld", (long long)r->id);
	assert_int_equal(h_get(d, p, &rj), 200);
	env_id = json_integer_value(json_object_get(rj, "envelope_artifact"));
	r->sha[0] = 0;
	json_array_foreach(json_object_get(rj, "artifacts"), i, a) {
		const char *sha = json_string_value(json_object_get(a, "sha256"));
		if (json_integer_value(json_object_get(a, "id")) == env_id)
			fetch_object(d, sha, &r->envelope);
		else if (!strcmp(json_string_value(json_object_get(a, "type")) ?: "", "application") && !r->sha[0]) {
			snprintf(r->sha, sizeof(r->sha), "%s", sha);
			fetch_object(d, sha, &r->image);
		}
	}
	assert_true(r->sha[0] && r->envelope.len > 0);
	json_decref(rj);
	free(p);
	free(y);
}

static void hexsha(const void *p, size_t n, char out[65])
{
	unsigned char md[32];
	SHA256(p, n, md);
	for (int i = 0; i < 32; i++)
		snprintf(out + 2 * i, 3, "%02x", md[i]);
}

static char *offer_json(int64_t release, const char *version, int counter, const char *url, const struct buf *img)
{
	char sha[65];
	hexsha(img->ptr, img->len, sha);
	return xasprintf("{\"release\":%lld,\"version\":\"%s\",\"security_counter\":%d,\"image\":{\"url\":\"%s\","
			 "\"sha256\":\"%s\",\"size\":%zu,\"hardware\":\"" HW "\"}}",
			 (long long)release, version, counter, url, sha, img->len);
}

/* ---- the device ------------------------------------------------------------------------ */


/* Lines of file with "refused the offer: ...why". */
static int grep_count(const char *file, const char *why)
{
	struct buf l = BUF_INIT;
	int n;
	h_sh(&l, "grep -c 'refused the offer: .*%s' %s", why, file);
	n = atoi(buf_cstr(&l));
	buf_release(&l);
	return n;
}

struct tally {
	int kills, landed, reverted, refused[M_MODES], cycles[M_MODES];
	int at[OTADEV_TESTING + 1];  /* kills by the record's phase */
	int bad_at_install;          /* kills of a bad image's cycle past its download */
};

/*
 * One update cycle in `mode`: a factory-fresh device, runs killed at
 * random instants, the simulated MCUboot after each, the invariants after
 * each.  Returns when the device has settled: on `good_version` (landed),
 * reverted by the bootloader, or (bad modes) refused the image.
 */
static void cycle(const char *bin, const char *conf, const char *dir, const char *factory, int mode,
		  const char *good_version, unsigned *seed, struct tally *t)
{
	struct buf out = BUF_INIT;
	char *statefile = xasprintf("%s/state", dir), *log = xasprintf("%s/cycle.log", dir);
	int done = 0;

	unlink(log);
	if (factory) {   /* NULL: the same unit, keeping its record (what it learnt) */
		unlink(statefile);
		assert_int_equal(h_sh(&out, "%s -c %s flash %s", bin, conf, factory), 0);
	}
	t->cycles[mode]++;
	for (int attempt = 0; !done; attempt++) {
		int delay = (int)(rand_r(seed) % (unsigned)(200 + 25 * attempt));
		json_t *s;

		if (attempt == 150) {
			s = dh_device_status(bin, conf);
			h_sh(&out, "cat %s", log);
			print_error("%s: not settled: %s\n%s\n", mode_name[mode], json_dumps(s, 0), buf_cstr(&out));
		}
		assert_true(attempt < 150);
		if (dh_device_run_killed(bin, conf, log, delay)) {
			t->kills++;
			s = dh_device_status(bin, conf);
			for (int p = 0; p <= OTADEV_TESTING; p++)
				if (!strcmp(dh_js(s, "phase", NULL), otadev_phase_name(p)))
					t->at[p]++;
			if (mode != M_GOOD && !strcmp(dh_js(s, "phase", NULL), "installing"))
				t->bad_at_install++;
			json_decref(s);
		}
		/* the reboot: MCUboot's decision; then the invariants */
		assert_int_equal(h_sh(&out, "%s -c %s boot", bin, conf), 0);
		s = dh_device_status(bin, conf);
		assert_int_equal(dh_ji(s, "primary", "valid"), 1);
		if (dh_ji(s, "secondary", "magic") == OTADEV_MAGIC_GOOD)
			assert_int_equal(dh_ji(s, "secondary", "valid"), 1);
		if (mode != M_GOOD) {
			/* a bad image is never marked bootable: no pending magic, the
			 * record never got past verification, 1.0.0 keeps running */
			if (dh_ji(s, "secondary", "magic") == OTADEV_MAGIC_GOOD || !strcmp(dh_js(s, "phase", NULL), "rebooting") ||
			    !strcmp(dh_js(s, "phase", NULL), "testing") || strcmp(dh_js(s, "primary", "version"), "1.0.0") ||
			    (dh_ji(s, "record", NULL) && strcmp(dh_js(s, "version", NULL), "1.0.0"))) {
				h_sh(&out, "cat %s", log);
				print_error("%s: %s\n%s\n", mode_name[mode], json_dumps(s, 0), buf_cstr(&out));
			}
			assert_true(dh_ji(s, "secondary", "magic") != OTADEV_MAGIC_GOOD);
			assert_string_not_equal(dh_js(s, "phase", NULL), "rebooting");
			assert_string_not_equal(dh_js(s, "phase", NULL), "testing");
			assert_string_equal(dh_js(s, "primary", "version"), "1.0.0");
			if (dh_ji(s, "record", NULL)) {
				assert_string_equal(dh_js(s, "version", NULL), "1.0.0");
				/* nor was it ever recorded as verified */
				assert_string_equal(dh_js(s, "new_hash", NULL),
						    "0000000000000000000000000000000000000000000000000000000000000000");
			}
		}
		if (!strcmp(dh_js(s, "phase", NULL), "idle") && dh_ji(s, "record", NULL)) {
			if (mode == M_GOOD && !strcmp(dh_js(s, "version", NULL), good_version)) {
				assert_string_equal(dh_js(s, "primary", "version"), good_version);
				t->landed++;
				done = 1;
			} else if (dh_ji(s, "refused_image", NULL) && (factory || mode == M_GOOD ||
								     grep_count(log, mode_why[mode]) > 0)) {
				assert_string_equal(dh_js(s, "primary", "version"), "1.0.0");
				if (mode == M_GOOD) {
					/* only the bootloader's revert (a kill in the test
					 * boot) may leave a good image unconfirmed */
					struct buf l = BUF_INIT;
					h_sh(&l, "grep -c 'refused the offer' %s", log);
					if (atoi(buf_cstr(&l)) != 0) {
						h_sh(&l, "cat %s", log);
						print_error("good image refused:\n%s\n", buf_cstr(&l));
					}
					assert_int_equal(atoi(buf_cstr(&l)), 0);
					buf_release(&l);
					t->reverted++;
				} else {
					/* refused for the reason this attack must trip */
					struct buf l = BUF_INIT;
					h_sh(&l, "grep -c 'refused the offer: .*%s' %s", mode_why[mode], log);
					if (atoi(buf_cstr(&l)) < 1) {
						h_sh(&l, "cat %s", log);
						print_error("%s: wanted '%s':\n%s\n", mode_name[mode], mode_why[mode], buf_cstr(&l));
					}
					assert_true(atoi(buf_cstr(&l)) >= 1);
					buf_release(&l);
					t->refused[mode]++;
				}
				done = 1;
			}
		}
		json_decref(s);
	}
	free(statefile);
	free(log);
	buf_release(&out);
}

/* ---- the test -------------------------------------------------------------------------- */

static void sigkilled_devices_refuse_every_bad_image_before_it_is_bootable(void **state)
{
	const char *const args[] = { "--local-agents", "1", NULL };
	struct daemon d;
	struct mirror m;
	struct rel r_old, r_hw, r_main, r_b;
	struct buf out = BUF_INIT, trunc = BUF_INIT;
	struct tally t;
	char *cfg, *bin = h_bin("otacd-device"), *otactl = h_bin("otactl"), *dir, *conf, *factory, **cred, ida[65];
	int cycles = dh_env_count("OTADEV_TORTURE_CYCLES", 10);
	unsigned seed = 4242;

	(void)state;
	memset(&t, 0, sizeof(t));
	memset(&r_old, 0, sizeof(r_old));
	memset(&r_hw, 0, sizeof(r_hw));
	memset(&r_main, 0, sizeof(r_main));
	memset(&r_b, 0, sizeof(r_b));
	h_init(&d, NULL);
	/* the PKI: an offline root, signing keys a and b certified by it */
	assert_int_equal(dh_sh_in(d.dir, NULL, "%s keys root init root", otactl), 0);
	for (const char *n = "a"; n; n = !strcmp(n, "a") ? "b" : NULL)
		assert_int_equal(dh_sh_in(d.dir, NULL, "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out %s.pem"
					       " 2>/dev/null && openssl pkey -in %s.pem -pubout -out %s.pub"
					       " && %s keys certify %s.pub --root root -o %s.crt", n, n, n, otactl, n, n), 0);
	assert_int_equal(dh_sh_in(d.dir, &out, "openssl pkey -pubin -in a.pub -outform DER | sha256sum | cut -c1-64"), 0);
	snprintf(ida, sizeof(ida), "%.64s", buf_cstr(&out));
	cfg = xasprintf("trust_root: %s/root/root.crt.pem\npoll_interval: 1s\nkeys:\n"
			"  a: { spec: %s/a.pem, certificate: %s/a.crt }\n  b: { spec: %s/b.pem, certificate: %s/b.crt }\n",
			d.dir, d.dir, d.dir, d.dir, d.dir);
	d.config = xasprintf("%s/config.yml", d.dir);
	assert_int_equal(ota_write_file_atomic(d.config, cfg, strlen(cfg), 0600), 0);
	assert_int_equal(h_start(&d, args), 0);
	cred = h_register_devices(&d, "tort", 1);

	/* releases: an old one (counter 0), one for another board, then the
	 * one rolled out (1.1.0, counter 1), all signed by key a */
	release(&d, &r_old, "1.0.9", HW, 0, "a", 0);
	release(&d, &r_hw, "1.0.10", "mps2-an386", 1, "a", 0);
	release(&d, &r_main, "1.1.0", HW, 1, "a", 1);

	/* the factory image 1.0.0, counter 1, signed by a */
	factory = dh_factory_image(d.dir, "a", 1);

	/* the mirror, and what it serves on its own */
	mirror_start(&m, d.device_url);
	buf_init(&trunc, 1 << 22);
	buf_put(&trunc, r_main.image.ptr, r_main.image.len - 40);
	mirror_add_file(&m, "/device/v1/images/mirror-trunc", &trunc, 0);
	mirror_add_file(&m, "/device/v1/images/mirror-hw", &r_hw.image, 0);
	mirror_add_file(&m, "/device/v1/images/mirror-old", &r_old.image, 0);
	{
		char *p = xasprintf("/device/v1/releases/%lld/manifest", (long long)r_hw.id);
		mirror_add_file(&m, p, &r_hw.envelope, 0);
		free(p);
		p = xasprintf("/device/v1/releases/%lld/manifest", (long long)r_old.id);
		mirror_add_file(&m, p, &r_old.envelope, 0);
		free(p);
	}

	/* the device: the root is its anchor, a and b its bootloader's key slots */
	dir = xasprintf("%s/tort-0000", d.dir);
	conf = xasprintf("%s/device.conf", dir);
	assert_int_equal(h_sh(&out, "mkdir -p %s && printf 'battery = 80\\nexternal_power = 0\\n' > %s/power", dir, dir), 0);
	{
		char *text = xasprintf("url = %s\ndevice = tort-0000\ncredential = %s\nproduct = fw\nhardware = " HW "\n"
				       "bootloader = 1.2.0\nprimary = %s/slot0\nsecondary = %s/slot1\nstate = %s/state\n"
				       "anchor = %s/root/root.crt.pem\nkey = %s/a.pub\nkey = %s/b.pub\n"
				       "slot_size = 65536\nsector_size = 4096\nhealth_check = true\nsync = 0\n"
				       "backoff_base_ms = 200\nbackoff_max_ms = 1000\nthrottle_ms = 10\nheartbeat_ms = 1500\n"
				       "status_file = %s/power\n",
				       m.url, cred[0], dir, dir, dir, d.dir, d.dir, d.dir, dir);
		assert_int_equal(ota_write_file_atomic(conf, text, strlen(text), 0600), 0);
		free(text);
	}

	/* before the revocation: good and bad images in turn */
	for (int c = 0; c < cycles; c++) {
		int mode = c % 5;
		switch (mode) {
		case M_TRUNCATE:
			mirror_set(&m, mode, offer_json(r_main.id, "1.1.0", 1, "/device/v1/images/mirror-trunc", &trunc));
			break;
		case M_WRONGHW:
			mirror_set(&m, mode, offer_json(r_hw.id, "1.0.10", 1, "/device/v1/images/mirror-hw", &r_hw.image));
			break;
		case M_LOWCOUNTER:   /* the mirror claims counter 1; the image's signed counter is 0 */
			mirror_set(&m, mode, offer_json(r_old.id, "1.0.9", 1, "/device/v1/images/mirror-old", &r_old.image));
			break;
		default:
			mirror_set(&m, mode, NULL);
		}
		cycle(bin, conf, dir, factory, mode, "1.1.0", &seed, &t);
	}
	/* a kill in the test boot reverts a good image; on a heavily loaded
	 * machine more kills fall there (every phase takes longer), so good
	 * cycles, killed as before, go on until one lands (a cap, not a wait) */
	for (int extra = 0; t.landed == 0 && t.cycles[M_GOOD] > 0 && extra < 10; extra++) {
		mirror_set(&m, M_GOOD, NULL);
		cycle(bin, conf, dir, factory, M_GOOD, "1.1.0", &seed, &t);
	}

	/* the other board's release with its signed manifest edited to name
	 * this board: the envelope's signature no longer verifies */
	{
		struct buf edited = BUF_INIT;
		char *p = xasprintf("/device/v1/releases/%lld/manifest", (long long)r_hw.id);
		tamper(&edited, &r_hw.envelope, "mps2-an386", HW);
		mirror_replace(&m, p, &edited);
		mirror_set(&m, M_TAMPERED, offer_json(r_hw.id, "1.0.10", 1, "/device/v1/images/mirror-hw", &r_hw.image));
		cycle(bin, conf, dir, factory, M_TAMPERED, "", &seed, &t);
		mirror_replace(&m, p, &r_hw.envelope);
		buf_release(&edited);
		free(p);
	}

	/* key a is compromised: revoked by the root, published on otacd */
	assert_int_equal(dh_sh_in(d.dir, NULL, "%s keys revoke %s --root root --reason keyCompromise -o crl.pem", otactl, ida), 0);
	assert_int_equal(dh_sh_in(d.dir, NULL, "%s --url %s --token %s keys publish crl.pem", otactl, d.url, d.token), 0);
	mirror_set(&m, M_GOOD, NULL);
	for (int c = 0; c < 2; c++)
		cycle(bin, conf, dir, factory, M_REVOKED, "", &seed, &t);
	/* a list announced ("revocations": 1) but not served yet (404 to a
	 * unit that holds none): the unit waits in `installing`, refuses
	 * nothing, marks nothing; once the list is served it refuses */
	{
		char *statefile = xasprintf("%s/state", dir), *log = xasprintf("%s/cycle.log", dir);
		int installing = 0, st;
		pid_t pid;
		json_t *s;
		unlink(statefile);
		unlink(log);
		assert_int_equal(h_sh(&out, "%s -c %s flash %s", bin, conf, factory), 0);
		mirror_add_file(&m, "/device/v1/revocations", NULL, 404);
		pid = dh_device_run(bin, conf, log);
		for (int waited = 0; waited < 20000 && installing < 8; waited += 250) {
			h_msleep(250);
			s = dh_device_status(bin, conf);
			installing = !strcmp(dh_js(s, "phase", NULL), "installing") ? installing + 1 : 0;
			json_decref(s);
		}
		kill(pid, SIGKILL);
		waitpid(pid, &st, 0);
		s = dh_device_status(bin, conf);
		assert_int_equal(installing, 8);   /* two seconds and more, still waiting */
		assert_string_equal(dh_js(s, "phase", NULL), "installing");
		assert_int_equal(dh_ji(s, "refused_image", NULL), 0);
		assert_true(dh_ji(s, "secondary", "magic") != OTADEV_MAGIC_GOOD);
		json_decref(s);
		mirror_drop_last(&m);
		cycle(bin, conf, dir, NULL, M_REVOKED, "", &seed, &t);
		free(statefile);
		free(log);
	}

	/* the unit now holds revocation list 1 (its record): a mirror that
	 * withholds the list, or serves one the root did not sign, gets the
	 * next image refused (here otacd's old release, offered by the mirror) */
	{
		struct buf forged = BUF_INIT;
		assert_int_equal(dh_sh_in(d.dir, NULL, "%s keys root init other --cn other && %s keys certify a.pub --root other -o a-other.crt && %s keys revoke %s --root other"
					       " --reason keyCompromise -o forged.pem", otactl, otactl, otactl, ida), 0);
		{
			char *p = xasprintf("%s/forged.pem", d.dir);
			buf_init(&forged, 1 << 20);
			assert_int_equal(ota_read_file(&forged, p, 1 << 20), 0);
			free(p);
		}
		mirror_add_file(&m, "/device/v1/revocations", NULL, 404);
		mirror_set(&m, M_WITHHELD, offer_json(r_old.id, "1.0.9", 1, "/device/v1/images/mirror-old", &r_old.image));
		cycle(bin, conf, dir, NULL, M_WITHHELD, "", &seed, &t);
		mirror_drop_last(&m);
		mirror_add_file(&m, "/device/v1/revocations", &forged, 0);
		mirror_set(&m, M_FORGED, offer_json(r_hw.id, "1.0.10", 1, "/device/v1/images/mirror-hw", &r_hw.image));
		cycle(bin, conf, dir, NULL, M_FORGED, "", &seed, &t);
		buf_release(&forged);
	}

	print_message("devtorture: %d cycles (good %d, corrupt %d, truncate %d, wronghw %d, lowcounter %d, tampered"
		      " manifest %d, revoked %d, withheld list %d, forged list %d), %d SIGKILLs: %d landed, %d reverted by the"
		      " bootloader; refused corrupt %d, truncate %d, wronghw %d, lowcounter %d, tampered %d, revoked %d,"
		      " withheld %d, forged %d; %d answers altered by the mirror\n",
		      cycles + 6, t.cycles[0], t.cycles[1], t.cycles[2], t.cycles[3], t.cycles[4], t.cycles[8], t.cycles[5],
		      t.cycles[6], t.cycles[7], t.kills, t.landed, t.reverted, t.refused[1], t.refused[2], t.refused[3],
		      t.refused[4], t.refused[8], t.refused[5], t.refused[6], t.refused[7], m.altered);
	print_message("devtorture: SIGKILLs in idle %d, downloading %d, installing %d (%d of them verifying a bad image),"
		      " rebooting %d, testing %d\n", t.at[0], t.at[1], t.at[2], t.bad_at_install, t.at[3], t.at[4]);
	assert_int_equal(t.landed + t.reverted, t.cycles[M_GOOD]);
	assert_true(t.landed > 0);   /* above: good cycles until one lands */
	for (int mode = M_CORRUPT; mode < M_MODES; mode++)
		assert_int_equal(t.refused[mode], t.cycles[mode]);
	assert_true(t.kills >= cycles);

	mirror_stop(&m);
	for (int i = 0; cred[i]; i++)
		free(cred[i]);
	free(cred);
	buf_release(&out);
	buf_release(&trunc);
	buf_release(&r_old.image);
	buf_release(&r_old.envelope);
	buf_release(&r_hw.image);
	buf_release(&r_hw.envelope);
	buf_release(&r_main.image);
	buf_release(&r_main.envelope);
	free(cfg);
	free(conf);
	free(dir);
	free(factory);
	free(bin);
	free(otactl);
	h_cleanup(&d);
}

/* ---- the parser on otacd's own envelope ------------------------------------------- */

static EVP_MD_CTX *md;

static int o_begin(void *ctx)
{
	(void)ctx;
	return EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1 ? 0 : -1;
}

static int o_update(void *ctx, const void *p, size_t n)
{
	(void)ctx;
	return EVP_DigestUpdate(md, p, n) == 1 ? 0 : -1;
}

static int o_end(void *ctx, uint8_t out[32])
{
	(void)ctx;
	return EVP_DigestFinal_ex(md, out, NULL) == 1 ? 0 : -1;
}

/* Parse env (a copy) for image sha, product and hardware; 1 when the DSSE
 * signature verifies with the leaf certificate's key over the digest. */
static int parse_env(struct otadev_manifest *m, const struct buf *env, const uint8_t sha[32], const char *product,
		     const char *hw, size_t room, int *rc)
{
	static const struct otadev_hooks h = { .sha256_begin = o_begin, .sha256_update = o_update, .sha256_end = o_end };
	char *b = xmalloc(env->len + room);
	uint8_t digest[32];
	int ok = 0;

	memcpy(b, env->ptr, env->len);
	*rc = otadev_manifest_parse(m, digest, &h, NULL, b, env->len, env->len + room, sha, product, hw);
	if (*rc == 0 && m->ncerts >= 1 && m->nsig >= 1) {
		const unsigned char *q = m->cert[0];
		X509 *x = d2i_X509(NULL, &q, (long)m->cert_len[0]);
		EVP_PKEY_CTX *pc = x ? EVP_PKEY_CTX_new(X509_get0_pubkey(x), NULL) : NULL;
		ok = pc && EVP_PKEY_verify_init(pc) == 1 && EVP_PKEY_CTX_set_signature_md(pc, EVP_sha256()) == 1 &&
		     EVP_PKEY_verify(pc, m->sig[0], m->sig_len[0], digest, 32) == 1;
		EVP_PKEY_CTX_free(pc);
		X509_free(x);
	}
	free(b);
	return ok;
}

/*
 * otadev_manifest_parse on an envelope otacd made (the fuzz seed, a
 * release of fw for mps2-an385 with a one-certificate chain): the chain,
 * built_at, the image and the signed digest come out right; an edited
 * payload no longer verifies; other products and boards are flagged; too
 * little room is ENOSPC; a cut envelope is refused.
 */
static void manifest_parser_reads_otacds_envelope_and_flags_edits(void **state)
{
	char *path = dh_src_path("fuzz/corpus/fuzz_devchain/manifest");
	struct buf file = BUF_INIT, env = BUF_INIT, edited = BUF_INIT, raw = BUF_INIT;
	struct otadev_manifest m;
	uint8_t sha[32], other[32];
	json_t *e, *man;
	time_t at;
	int rc;

	(void)state;
	md = EVP_MD_CTX_new();
	assert_int_equal(ota_read_file(&file, path, 1 << 20), 0);
	buf_put(&env, file.ptr + 1, file.len - 1);   /* the fuzz selector byte */
	e = json_loadb(env.ptr, env.len, 0, NULL);
	assert_int_equal(dsse_base64_decode(&raw, json_string_value(json_object_get(e, "payload")),
					    strlen(json_string_value(json_object_get(e, "payload")))), 0);
	man = json_loadb(raw.ptr, raw.len, 0, NULL);
	assert_non_null(man);
	{
		const char *hex = json_string_value(json_object_get(json_array_get(json_object_get(man, "images"), 0), "sha256"));
		for (int i = 0; i < 32; i++) {
			unsigned v;
			sscanf(hex + 2 * i, "%2x", &v);
			sha[i] = (uint8_t)v;
		}
	}
	memset(other, 0x11, sizeof(other));
	assert_int_equal(pki_parse_time(json_string_value(json_object_get(man, "built_at")), &at), 0);

	assert_int_equal(parse_env(&m, &env, sha, "fw", HW, 4096, &rc), 1);
	assert_int_equal(rc, 0);
	assert_int_equal(m.ncerts, 1);
	assert_int_equal(m.nsig, 1);
	assert_int_equal((time_t)m.built_at, at);
	assert_true(m.has_image);
	assert_false(m.other_hardware);
	assert_false(m.other_product);
	/* the same envelope for another image, product, board */
	parse_env(&m, &env, other, "fw", HW, 4096, &rc);
	assert_int_equal(rc, 0);
	assert_false(m.has_image);
	parse_env(&m, &env, sha, "other-product", "mps2-an386", 4096, &rc);
	assert_int_equal(rc, 0);
	assert_true(m.other_product);
	assert_true(m.other_hardware);
	/* an edited payload (signatures kept) parses but no longer verifies */
	tamper(&edited, &env, "\"fw\"", "\"fx\"");
	assert_int_equal(parse_env(&m, &edited, sha, "fw", HW, 4096, &rc), 0);
	assert_int_equal(rc, 0);
	assert_true(m.other_product);
	/* the wire names digests in lowercase hex: the image in uppercase is
	 * not this image (as an offer's uppercase sha256 is refused) */
	{
		json_t *up = json_deep_copy(e);
		char *hex = strstr(buf_cstr(&raw), "\"sha256\": \"");
		unsigned char *b64 = xmalloc(4 * raw.len / 3 + 8);
		char *dump;
		assert_non_null(hex);
		hex += 11;
		for (int i = 0; i < 64; i++)
			hex[i] = (char)toupper((unsigned char)hex[i]);
		EVP_EncodeBlock(b64, (const unsigned char *)raw.ptr, (int)raw.len);
		json_object_set_new(up, "payload", json_string((char *)b64));
		dump = json_dumps(up, JSON_COMPACT);
		buf_clear(&edited);
		buf_puts(&edited, dump);
		parse_env(&m, &edited, sha, "fw", HW, 4096, &rc);
		assert_int_equal(rc, 0);
		assert_false(m.has_image);
		free(dump);
		free(b64);
		json_decref(up);
	}
	/* no room for the tokens; a cut envelope */
	parse_env(&m, &env, sha, "fw", HW, 64, &rc);
	assert_int_equal(rc, OTADEV_ENOSPC);
	env.len -= 40;
	parse_env(&m, &env, sha, "fw", HW, 4096, &rc);
	assert_true(rc < 0);

	json_decref(e);
	json_decref(man);
	buf_release(&file);
	buf_release(&env);
	buf_release(&edited);
	buf_release(&raw);
	EVP_MD_CTX_free(md);
	free(path);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(manifest_parser_reads_otacds_envelope_and_flags_edits),
		cmocka_unit_test(sigkilled_devices_refuse_every_bad_image_before_it_is_bootable),
	};
	curl_global_init(CURL_GLOBAL_DEFAULT);
	signal(SIGPIPE, SIG_IGN);   /* a killed device's connection must not kill the mirror */
	cmocka_set_test_filter(getenv("DEVTORTURE_ONLY"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
