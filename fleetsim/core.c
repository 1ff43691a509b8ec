/*
 * core.c - otacd-fleetsim --engine core: every simulated device runs
 * libotadev, the device core real devices run (issue 14; docs/fleetsim.md
 * "The device core").
 *
 * Why this shape: a device's RAM context is transient, what persists is
 * its record and its flash.  So a device is a compact struct psim_dev (two
 * sparse slots, the record encoded against a template, a few RAM timers),
 * and W worker threads (--concurrency, at most 256) each own one working context (struct psim_ctx: the
 * 6.5 KB struct otadev, a libcurl handle kept alive).  An event heap in
 * device time (real ms since the start) says when each device's next step
 * is due; a worker pops it, loads the device into its context, runs
 * otadev_step until the core asks to wait, and stores the timers back; the
 * record was stored by the core itself through persist_write.
 *
 * A device that loses power (a fault cut a transfer or a flash write) or
 * reboots (the core installed an image, or its self-test failed) is "off":
 * its next event runs the simulated MCUboot on its slots (port_sim.c) and
 * otadev_init, exactly what a real start does.
 *
 * The transport: check-ins and, without --shared-downloads, every Range
 * GET are real requests to the server as the device.  Each image is also
 * fetched whole once (as the first device that asks): its bytes back the
 * sparse slots, and with --shared-downloads they answer the devices'
 * Range GETs.  An offer's patch (issue 15) is the same: fetched whole
 * once by its own digest, its Range GETs real requests or answered from
 * those bytes, while the offered image's bytes back the slot the decoder
 * writes (patch_get).  Report batches go through a gateway: the device's batch
 * (with the seq numbers its record gave each report) joins the fleet's
 * shared batches (run.c, up to 500 reports a POST, retried until
 * answered), and the device gets the gateway's acknowledgement.  otacd
 * counts each seq at most once, so a batch the gateway sends twice is
 * still counted once.
 *
 * Counting: the reports a step queued (seq above the one before it) are
 * the fleet's events: download, install, boot_ok, revert, boot_fail,
 * refused, heartbeat.  One mutex guards the heap, the stats, the version
 * table, the image table and the pending reports; HTTP runs outside it.
 */
#include "run_int.h"

#include <curl/curl.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "../device/port_linux_x509.h"
#include "../orchestrator/mcuboot.h"
#include "port_sim.h"

#define WORKERS_MAX 256
#define STEPS_PER_EVENT 32
#define DELTA_STEPS_MAX 4096           /* steps of one event while a patch is applied */
#define OFF_MS 1000                    /* a power cut keeps a device off this long */
#define IMAGE_MAX ((size_t)64 << 20)
#define SALT_CORE_FIRST 201
#define SALT_CORE_BATT 202
#define SALT_CORE_LOW 203
#define SALT_CORE_START 204
#define LOUD_MAX 20

struct core {
	struct psim_env env;         /* port_sim.c's view */
	struct fleetsim *fs;
	struct psim_dev *dev;
	pthread_mutex_t lock, memo_lock;
	pthread_cond_t cond, imgcond;
	struct sim_heap heap;        /* at: device ms */
	int64_t real0;
	struct otadev_config base;
	uint8_t *keyder[OTADEV_KEYS_MAX];
	uint8_t *anchor;             /* --trust-root: the root certificate, DER */
	uint8_t tmpl[sizeof(struct otadev_record)];
	int have_tmpl;
	uint64_t server_now, server_mono;
	double scale;
	int time_known, started, quit;
	uint64_t poll_real;
	uint32_t hb_ms;
	struct psim_ctx *ctx;
	int nworkers;
	/* issue 15, push: each device's one live heap event (-1: a worker runs
	 * it) and the device ms of a check-in a hint asked for (0: none) */
	int64_t *due;
	uint64_t *nudge_at;
	/* issue 15, --herd: the next device whose first step is still to run
	 * (1 .. ndev-1; 0: none).  Workers take it only when no heap event is
	 * due, so a deferred device whose turn has come goes before the rest
	 * of the herd (herd_take) */
	uint32_t herd_next;
};

/* Device i is due at device ms at (k->lock held). */
static void schedule(struct core *k, uint32_t i, int64_t at)
{
	if (k->due)
		k->due[i] = at;
	sim_heap_push(&k->heap, at, i, 0);
}

static uint64_t dev_now(struct core *k)
{
	return (uint64_t)(fs_real_ms() - k->real0 + 1);
}

static int vanished(struct core *k)
{
	struct fleetsim *fs = k->fs;
	double s = (double)(fs_real_ms() - k->real0) / 1000.0;

	return fs->o.vanish_for_s > 0 && s >= fs->o.vanish_at_s && s < fs->o.vanish_at_s + fs->o.vanish_for_s;
}

/* ---- transport ----------------------------------------------------------------- */

struct sink {
	struct otadev_http_resp *rs;
	struct buf *all;
	int over;
};

static size_t on_data(char *p, size_t sz, size_t nm, void *ud)
{
	struct sink *s = ud;
	size_t n = sz * nm;

	if (s->all)
		return buf_put(s->all, p, n) < 0 ? 0 : n;
	if (n > s->rs->cap - s->rs->len) {
		s->over = 1;
		return 0;
	}
	memcpy(s->rs->body + s->rs->len, p, n);
	s->rs->len += n;
	return n;
}

static size_t on_hdr(char *p, size_t sz, size_t nm, void *ud)
{
	struct sink *s = ud;
	size_t n = sz * nm;
	char line[128];
	long long a, b, t;

	if (n > 14 && !strncasecmp(p, "Content-Range:", 14)) {
		snprintf(line, sizeof(line), "%.*s", (int)(n < 127 ? n : 127), p + 14);
		if (sscanf(line, " bytes %lld-%lld/%lld", &a, &b, &t) == 3)
			s->rs->range_total = (long)t;
	}
	return n;
}

/* An offer's URL: absolute (a CDN, a presigned S3 URL: docs/delivery.md)
 * or relative to the device API. */
static int absolute_url(const char *path)
{
	return !strncmp(path, "http://", 7) || !strncmp(path, "https://", 8);
}

/* One real request as the device; the answer into rs (or whole into all). */
static int request(struct psim_ctx *c, const struct otadev_http_req *rq, struct otadev_http_resp *rs, struct buf *all)
{
	struct fleetsim *fs = ((struct core *)c->env)->fs;
	CURL *e = c->curl;
	struct curl_slist *h = NULL;
	struct sink s = { rs, all, 0 };
	char line[160], range[64];
	long st = 0;
	CURLcode cc;

	curl_easy_reset(e);
	if (absolute_url(rq->path)) {
		/* fetched as given, with no device credential (the model does the same) */
		curl_easy_setopt(e, CURLOPT_URL, rq->path);
	} else {
		snprintf(line, sizeof(line), "%s%s", fs->base, rq->path);
		curl_easy_setopt(e, CURLOPT_URL, line);
		if (!fs->cert) {
			snprintf(line, sizeof(line), "Authorization: Bearer %s", c->cred);
			h = curl_slist_append(h, line);
		}
		snprintf(line, sizeof(line), "X-Device-Id: %s", c->id);
		h = curl_slist_append(h, line);
	}
	if (rq->body) {
		h = curl_slist_append(h, "Content-Type: application/json");
		h = curl_slist_append(h, "Expect:");
		curl_easy_setopt(e, CURLOPT_POSTFIELDS, rq->body);
		curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)rq->body_len);
	}
	if (rq->range_start >= 0 && !all) {
		snprintf(range, sizeof(range), "%ld-%ld", rq->range_start, rq->range_end);
		curl_easy_setopt(e, CURLOPT_RANGE, range);
	}
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
	curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 60000L);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_data);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, &s);
	curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_hdr);
	curl_easy_setopt(e, CURLOPT_HEADERDATA, &s);
	/* fs_tls_setopt's options without its share (the loop thread's; attaching
	 * and detaching it per request leaks libcurl's own session cache) */
	curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
	curl_easy_setopt(e, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
	if (fs->o.cacert)
		curl_easy_setopt(e, CURLOPT_CAINFO, fs->o.cacert);
	if (fs->cert && !absolute_url(rq->path)) {
		/* mTLS: the certificate is the identity, and a connection or TLS
		 * session is one device's: the handle's open connection carries
		 * the last device's certificate, a resumed session would too */
		fs_client_cert(fs, e, c->idx);
		curl_easy_setopt(e, CURLOPT_SSL_SESSIONID_CACHE, 0L);
		if (c->conn_dev != c->idx + 1)
			curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);
		c->conn_dev = c->idx + 1;
	}
	rs->len = 0;
	rs->range_total = -1;
	cc = curl_easy_perform(e);
	curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &st);
	curl_slist_free_all(h);
	if (cc != CURLE_OK || s.over) {
		rs->status = 0;
		return -1;
	}
	rs->status = (int)st;
	return 0;
}

/* The table entry of the image being downloaded: by the offer's SHA-256,
 * since one image may come from many URLs (a presigned URL per offer). */
static int image_slot(struct core *k, const char *path, const uint8_t sha[32])
{
	uint32_t i;

	for (i = 0; i < k->env.nimg; i++)
		if (!memcmp(k->env.img[i]->sha256, sha, 32))
			return (int)i + 1;
	if (k->env.nimg == PSIM_IMAGES_MAX)
		return -1;
	k->env.img[i] = xcalloc(1, sizeof(struct psim_image));
	memcpy(k->env.img[i]->sha256, sha, 32);
	snprintf(k->env.img[i]->url, sizeof(k->env.img[i]->url), "%s", path);
	k->env.nimg++;
	return (int)i + 1;
}

/* An object's bytes (an image, or a patch: issue 15), fetched whole once
 * by its digest; 0, or the HTTP status that refused it. */
static int object_fetch(struct psim_ctx *c, const struct otadev_http_req *rq, const uint8_t sha[32], int is_image,
			uint16_t *out)
{
	struct core *k = (struct core *)c->env;
	struct psim_image *img;
	struct otadev_http_resp rs = { 0 };
	struct otadev_http_req all = *rq;
	struct buf b = BUF_INIT;
	int i, rc;

	pthread_mutex_lock(&k->lock);
	if ((i = image_slot(k, rq->path, sha)) <= 0) {
		pthread_mutex_unlock(&k->lock);
		return -1;
	}
	img = k->env.img[i - 1];
	while (img->state == 1)
		pthread_cond_wait(&k->imgcond, &k->lock);
	if (img->state == 2) {
		pthread_mutex_unlock(&k->lock);
		*out = (uint16_t)i;
		return 0;
	}
	img->state = 1;
	pthread_mutex_unlock(&k->lock);
	buf_init(&b, IMAGE_MAX);
	all.range_start = all.range_end = -1;
	rc = request(c, &all, &rs, &b);
	pthread_mutex_lock(&k->lock);
	if (rc == 0 && rs.status == 200 && b.len > (is_image ? 64u : 0u) && b.len < PSIM_SLOT_SIZE - 4096) {
		img->size = (uint32_t)b.len;
		img->bytes = (uint8_t *)buf_detach(&b);
		img->state = 2;
		if (k->fs->o.shared_downloads && is_image)
			k->fs->c.downloads++;   /* the one transfer, as the model engine counts it */
	} else {
		img->state = 0;
		rc = rs.status ? rs.status : -1;
	}
	pthread_cond_broadcast(&k->imgcond);
	pthread_mutex_unlock(&k->lock);
	buf_release(&b);
	*out = (uint16_t)i;
	return rc == 0 && img->state == 2 ? 0 : rc;
}

/* Faults of a download, drawn when it starts at byte 0. */
static void draw_faults(struct psim_ctx *c, uint32_t size)
{
	struct fleetsim *fs = ((struct core *)c->env)->fs;
	struct psim_dev *d = c->dev;

	d->cut_at = d->corrupt_at = 0;
	d->cut_kind = PSIM_CUT_NONE;
	if (fs->o.fault_power_cut > 0 && sim_randu(&c->rng) < fs->o.fault_power_cut) {
		d->cut_kind = (uint8_t)(PSIM_CUT_TRANSFER + sim_rand(&c->rng) % 3);
		d->cut_at = d->cut_kind == PSIM_CUT_TRAILER ? 1 + (uint32_t)(sim_rand(&c->rng) % 16)
							    : 1 + (uint32_t)(sim_rand(&c->rng) % size);
	}
	if (fs->o.fault_corrupt > 0 && sim_randu(&c->rng) < fs->o.fault_corrupt)
		d->corrupt_at = 1 + (uint32_t)(sim_rand(&c->rng) % size);
}

/* The byte a fault flips in transit, when it is in this answer (from a). */
static void corrupt_in_transit(struct psim_ctx *c, struct otadev_http_resp *rs, uint32_t a)
{
	struct core *k = (struct core *)c->env;
	struct psim_dev *d = c->dev;

	if (!d->corrupt_at || d->corrupt_at - 1 < a || d->corrupt_at - 1 >= a + rs->len)
		return;
	rs->body[d->corrupt_at - 1 - a] ^= 0x5a;
	d->corrupt_at = 0;
	pthread_mutex_lock(&k->lock);
	k->fs->core.transit_corruptions++;
	pthread_mutex_unlock(&k->lock);
}

static int image_get(struct psim_ctx *c, const struct otadev_http_req *rq, struct otadev_http_resp *rs)
{
	struct core *k = (struct core *)c->env;
	struct psim_dev *d = c->dev;
	struct psim_image *img;
	uint16_t id = 0;
	uint32_t a, n;
	int rc = object_fetch(c, rq, c->d.rec.offer.sha256, 1, &id);

	if (rc > 0) {                   /* the server refused the image (410, 404 ...) */
		rs->status = rc;
		rs->len = 0;
		return 0;
	}
	if (rc < 0)
		return -1;
	c->dl_img = id;
	img = k->env.img[id - 1];
	if (rq->range_start < 0 || (uint32_t)rq->range_start >= img->size || rq->range_end < rq->range_start)
		return -1;
	a = (uint32_t)rq->range_start;
	n = (uint32_t)(rq->range_end - rq->range_start + 1);
	if (n > img->size - a)
		n = img->size - a;
	if (a == 0)
		draw_faults(c, img->size);
	if (d->cut_kind == PSIM_CUT_TRANSFER && d->cut_at && d->cut_at - 1 >= a && d->cut_at - 1 < a + n) {
		d->cut_at = 0;
		d->cut_kind = PSIM_CUT_NONE;
		c->power_cut = 1;       /* the power goes in the middle of this answer */
		return -1;
	}
	if (k->fs->o.shared_downloads) {
		if (n > rs->cap)
			return -1;
		memcpy(rs->body, img->bytes + a, n);
		rs->len = n;
		rs->status = 206;
		rs->range_total = img->size;
	} else if (request(c, rq, rs, NULL) < 0) {
		return -1;
	}
	pthread_mutex_lock(&k->lock);
	k->fs->core.image_bytes += (int64_t)rs->len;
	pthread_mutex_unlock(&k->lock);
	corrupt_in_transit(c, rs, a);
	return 0;
}

/* A Range GET of the offer's patch (issue 15; docs/fleetsim.md "Deltas").
 * The patch is fetched whole once by its digest, like an image, and so is
 * the offered image: the decoder writes that image into the secondary
 * slot, and a sparse slot is "the bytes of image I" (a patch that rebuilds
 * something else leaves a wrong byte there, which the core's digest
 * catches).  With --shared-downloads the Range GETs are answered from the
 * patch's bytes; otherwise each is a real request as the device. */
static int patch_get(struct psim_ctx *c, const struct otadev_http_req *rq, struct otadev_http_resp *rs)
{
	struct core *k = (struct core *)c->env;
	struct fleetsim *fs = k->fs;
	struct psim_dev *d = c->dev;
	struct otadev_http_req whole = *rq;
	struct psim_image *p;
	uint16_t img = 0, id = 0;
	uint32_t a, n;
	int rc;

	whole.path = c->d.rec.offer.url;
	whole.range_start = whole.range_end = -1;
	rc = object_fetch(c, &whole, c->d.rec.offer.sha256, 1, &img);
	if (rc == 0)
		rc = object_fetch(c, rq, c->d.delta.sha256, 0, &id);
	if (rc > 0) {                   /* refused (410, 403 ...): the device falls back */
		rs->status = rc;
		rs->len = 0;
		return 0;
	}
	if (rc < 0)
		return -1;
	c->dl_img = img;
	p = k->env.img[id - 1];
	if (rq->range_start < 0 || (uint32_t)rq->range_start >= p->size || rq->range_end < rq->range_start)
		return -1;
	a = (uint32_t)rq->range_start;
	n = (uint32_t)(rq->range_end - rq->range_start + 1);
	if (n > p->size - a)
		n = p->size - a;
	if (a == 0) {                   /* an attempt starts with the header */
		d->corrupt_at = 0;
		if (fs->o.fault_corrupt_patch > 0 && sim_randu(&c->rng) < fs->o.fault_corrupt_patch) {
			d->corrupt_at = 1 + (uint32_t)(sim_rand(&c->rng) % p->size);
			pthread_mutex_lock(&k->lock);
			fs->core.transit_corruptions++;
			pthread_mutex_unlock(&k->lock);
		}
	}
	if (fs->o.shared_downloads) {
		if (n > rs->cap)
			return -1;
		memcpy(rs->body, p->bytes + a, n);
		rs->len = n;
		rs->status = 206;
		rs->range_total = p->size;
	} else if (request(c, rq, rs, NULL) < 0) {
		return -1;
	}
	pthread_mutex_lock(&k->lock);
	fs->core.patch_bytes += (int64_t)rs->len;
	pthread_mutex_unlock(&k->lock);
	/* the decoder's three cursors read overlapping ranges: the byte comes
	 * wrong in every answer of this attempt, as from a corrupt copy */
	if (d->corrupt_at && d->corrupt_at - 1 >= a && d->corrupt_at - 1 < a + rs->len)
		rs->body[d->corrupt_at - 1 - a] ^= 0x5a;
	return 0;
}

/* The report gateway: the device's batch joins the fleet's shared batches,
 * each report with the device's credential (mTLS: no credential, and a
 * batch is one device's, sent with its certificate); the gateway
 * acknowledges. */
static int gateway(struct psim_ctx *c, const struct otadev_http_req *rq, struct otadev_http_resp *rs)
{
	struct core *k = (struct core *)c->env;
	struct fleetsim *fs = k->fs;
	static const char open[] = "{\"reports\":[", tag[] = "{\"device\":";
	const char *p, *end;
	struct buf out = BUF_INIT;
	int n = 0, beats = 0;

	if (!rq->body || rq->body_len < sizeof(open) + 1 || strncmp(rq->body, open, sizeof(open) - 1))
		return -1;
	p = rq->body + sizeof(open) - 1;
	end = rq->body + rq->body_len - 2;      /* "]}" */
	while (p < end) {
		const char *q = memmem(p + 1, (size_t)(end - p - 1), ",{\"device\":", 11);
		const char *stop = q ? q : end;
		if (strncmp(p, tag, sizeof(tag) - 1))
			break;
		if (fs->cert)
			buf_printf(&out, "%s{%.*s", n ? "," : "", (int)(stop - p - 1), p + 1);
		else
			buf_printf(&out, "%s{\"credential\":\"%s\",%.*s", n ? "," : "", c->cred,
				   (int)(stop - p - 1), p + 1);
		n++;
		/* counted here, not from the queue: a step queues a heartbeat
		 * and sends it at once, so account() never sees it queued */
		beats += memmem(p, (size_t)(stop - p), "\"event\":\"heartbeat\"", 19) != NULL;
		p = q ? q + 1 : end;
	}
	if (!(fs->dev[c->idx].flags & SIM_F_SILENT) && n) {
		pthread_mutex_lock(&k->lock);
		fs_report_append(fs, c->idx, out.ptr, out.len, n);
		fs->c.heartbeats += beats;
		pthread_mutex_unlock(&k->lock);
	}
	buf_release(&out);
	rs->status = 200;
	rs->len = (size_t)snprintf(rs->body, rs->cap, "{\"accepted\":%d}", n);
	return 0;
}

/*
 * Issue 17, --flag and --flag-crash: which of the followed feature flags
 * are on in this check-in answer (its "flags" member: any value but
 * false)?  The device carries each as the tag flag.NAME=on from its next
 * check-in (fill_config); while the --flag-crash one is on it crashes like
 * a crasher (h_status).  k->lock held; only the device's worker writes
 * its flags.
 */
static int flag_crashes(const struct fleetsim *fs, const struct sim_device *sd)
{
	return fs->o.flag_crash >= 0 && fs->o.flag_crash < fs->o.nflags && (sd->flags_on >> fs->o.flag_crash & 1);
}

static void flags_from_answer(struct fleetsim *fs, struct sim_device *sd, const struct otadev_http_resp *rs)
{
	json_t *ans = json_loadb(rs->body, rs->len, 0, NULL), *flags = json_object_get(ans, "flags");
	int was = flag_crashes(fs, sd);

	for (int i = 0; i < fs->o.nflags; i++) {
		const json_t *v = json_object_get(flags, fs->o.flags[i]);
		uint8_t bit = (uint8_t)(1u << i);
		sd->flags_on &= (uint8_t)~bit;
		sd->flags_off &= (uint8_t)~bit;
		if (v && !json_is_false(v))
			sd->flags_on |= bit;
		else if (v) /* the answer names it, off for this device */
			sd->flags_off |= bit;
	}
	if (!was && flag_crashes(fs, sd))
		fs->c.flag_turned_on++;
	else if (was && !flag_crashes(fs, sd))
		fs->c.flag_turned_off++;
	json_decref(ans);
}

/*
 * What a check-in's answer was, for the stats: served (a 200; the first
 * one of a device counts it served, and --herd ends once all are), deferred
 * (issue 15: a 503 with a turn, which libotadev takes as a deferral, not a
 * failure: the same parser decides here), or failed.
 */
static void checkin_count(struct psim_ctx *c, int rc, struct otadev_http_resp *rs)
{
	struct core *k = (struct core *)c->env;
	struct fleetsim *fs = k->fs;
	struct sim_device *sd = &fs->dev[c->idx];
	uint32_t tokens[OTADEV_TOKENS * 5];
	struct otadev_defer df;

	pthread_mutex_lock(&k->lock);
	if (rc == 0 && rs->status == 200) {
		fs->c.checkins++;
		if (fs->o.nflags)
			flags_from_answer(fs, sd, rs);
		if (!(sd->flags & SIM_F_STARTED)) {     /* only this device's worker writes its flags */
			sd->flags |= SIM_F_STARTED;
			fs->c.served++;
			/* device 0's is the answer that starts the clock */
			fs->c.served_last_ms = k->time_known ? fs_now(fs) - fs->t0 : 0;
			if (fs->o.herd && fs->c.served == fs->ndev)
				fs->until_reached = 1;
		}
	} else if (rc == 0 && rs->status == 503 &&
		   otadev_defer_parse(&df, rs->body, rs->len, tokens, OTADEV_TOKENS) == 0) {
		fs->c.checkins_deferred++;
		if (sd->deferrals < UINT8_MAX)
			sd->deferrals++;
		if (sd->deferrals > fs->c.deferrals_max)
			fs->c.deferrals_max = sd->deferrals;
	} else {
		fs->c.requests_failed++;
		if (c->idx == 0 && !k->time_known && rc == 0 &&
		    (rs->status == 400 || rs->status == 401 || rs->status == 403 || rs->status == 404)) {
			fprintf(stderr, "fleetsim: the server refuses check-ins (%d): %.300s\n", rs->status,
				rs->len < rs->cap ? (rs->body[rs->len] = 0, rs->body) : "");
			fs->fatal = 1;
		}
	}
	pthread_mutex_unlock(&k->lock);
}

static int h_http(void *ctx, const struct otadev_http_req *rq, struct otadev_http_resp *rs)
{
	struct psim_ctx *c = ctx;
	struct core *k = (struct core *)c->env;
	struct fleetsim *fs = k->fs;
	int rc;

	if (!strcmp(rq->path, "/device/v1/reports"))
		return gateway(c, rq, rs);
	if (vanished(k)) {
		pthread_mutex_lock(&k->lock);
		fs->core.server_vanished++;
		fs->c.requests_failed++;
		pthread_mutex_unlock(&k->lock);
		return -1;
	}
	if ((fs->dev[c->idx].flags & SIM_F_FLAKY) && k->time_known && sim_randu(&c->rng) < fs->p->flaky_fail) {
		pthread_mutex_lock(&k->lock);
		fs->c.flaky_aborts++;
		fs->c.requests_failed++;
		pthread_mutex_unlock(&k->lock);
		return -1;
	}
	if (rq->path == c->d.delta.url)  /* the core's patch reads name its offer's patch URL */
		return patch_get(c, rq, rs);
	if (!strncmp(rq->path, "/device/v1/images/", 18) || absolute_url(rq->path))
		return image_get(c, rq, rs);
	rc = request(c, rq, rs, NULL);
	if (!strcmp(rq->path, "/device/v1/checkin"))
		checkin_count(c, rc, rs);
	return rc;
}

/* ---- clock, record, status, self-test, reboot ------------------------------------ */

static uint64_t h_now(void *ctx)
{
	return dev_now((struct core *)((struct psim_ctx *)ctx)->env);
}

static uint32_t h_random(void *ctx)
{
	return (uint32_t)sim_rand(&((struct psim_ctx *)ctx)->rng);
}

static int h_persist_read(void *ctx, void *buf, size_t cap)
{
	struct psim_ctx *c = ctx;
	struct core *k = (struct core *)c->env;

	if (!c->dev->rec || cap < sizeof(struct otadev_record))
		return 0;
	if (psim_rec_decode(buf, k->tmpl, sizeof(struct otadev_record), c->dev->rec, c->dev->rec_len) < 0)
		return -1;
	return (int)sizeof(struct otadev_record);
}

static int h_persist_write(void *ctx, const void *buf, size_t len)
{
	struct psim_ctx *c = ctx;
	struct core *k = (struct core *)c->env;
	struct psim_dev *d = c->dev;
	int n;

	if (len != sizeof(struct otadev_record))
		return -1;
	if (!k->have_tmpl) {           /* the first record written (device 0's, at start) */
		memcpy(k->tmpl, buf, len);
		k->have_tmpl = 1;
	}
	n = psim_rec_encode((uint8_t *)c->scratch, sizeof(c->scratch), buf, k->tmpl, len);
	if (n < 0)
		return -1;
	/* capacity in steps of 16 bytes: most saves reuse the block */
	if (!d->rec || ((size_t)n + 15) / 16 != ((size_t)d->rec_len + 15) / 16) {
		uint8_t *p = realloc(d->rec, n ? ((size_t)n + 15) / 16 * 16 : 16);
		if (!p)
			return -1;
		d->rec = p;
	}
	memcpy(d->rec, c->scratch, (size_t)n);
	pthread_mutex_lock(&k->lock);
	k->fs->core.record_bytes += n - d->rec_len;
	pthread_mutex_unlock(&k->lock);
	d->rec_len = (uint16_t)n;
	return 0;
}

static int version_of_locked(struct core *k, const char *v)
{
	int i = fs_version_idx(k->fs, v);
	return i < 0 ? 0 : i;
}

static void h_status(void *ctx, struct otadev_status *st)
{
	struct psim_ctx *c = ctx;
	struct core *k = (struct core *)c->env;
	struct fleetsim *fs = k->fs;
	struct psim_dev *d = c->dev;
	struct sim_device *sd = &fs->dev[c->idx];
	uint64_t now = dev_now(k);
	double otacd_h = (double)now * (k->scale > 0 ? k->scale : 1) / 3.6e6;

	memset(st, 0, sizeof(*st));
	st->battery_pct = 50 + (int)(sim_hash(fs->o.seed, c->idx, SALT_CORE_BATT) % 50);
	if ((d->flags & PSIM_LOW_BATTERY) && otacd_h < 6)
		st->battery_pct = 10;   /* charges over the first six otacd hours */
	st->rssi = -(40 + sd->rssi_base) + (int)(sim_rand(&c->rng) % 7) - 3;
	if (d->last_status && now > d->last_status) {
		double hours = (double)(now - d->last_status) * (k->scale > 0 ? k->scale : 1) / 3.6e6, batt;
		unsigned crashes = 0;
		const struct sim_rates *r;
		int v;

		pthread_mutex_lock(&k->lock);
		v = d->version;
		r = fs_rates(fs, (uint16_t)v, sd->hw);
		if (sim_unit(sim_hash(fs->o.seed, c->idx, fs->vs[v].vhash)) < r->crash_rate ||
		    flag_crashes(fs, sd)) /* issue 17: --flag-crash's flag makes it a crasher */
			crashes = sim_poisson(&c->rng, hours * SIM_CRASHER_RATE_PER_HOUR);
		if (fs->p->crashes_per_hour > 0) /* issue 17: the profile's background rate */
			crashes += sim_poisson(&c->rng, hours * fs->p->crashes_per_hour);
		batt = r->battery_mah_per_day * hours / 24.0 *
		       (0.9 + 0.2 * sim_unit(sim_hash(fs->o.seed, c->idx, SALT_CORE_BATT)));
		fs->vs[v].crashes += crashes;
		fs->vs[v].hours += hours;
		fs->vs[v].battery += batt;
		pthread_mutex_unlock(&k->lock);
		d->crashes += crashes;
		d->battery_mah += (uint32_t)(batt * 1000.0);   /* µAh inside, mAh out */
	}
	d->last_status = (uint32_t)now;
	st->crashes = d->crashes;
	st->battery_mah_used = d->battery_mah / 1000;
}

static int h_selftest(void *ctx)
{
	struct psim_ctx *c = ctx;
	struct core *k = (struct core *)c->env;
	struct fleetsim *fs = k->fs;
	const struct sim_rates *r;
	int v, crasher;

	pthread_mutex_lock(&k->lock);
	v = version_of_locked(k, c->d.rec.offer.version);
	r = fs_rates(fs, (uint16_t)v, fs->dev[c->idx].hw);
	crasher = sim_unit(sim_hash(fs->o.seed, c->idx, fs->vs[v].vhash)) < r->crash_rate;
	pthread_mutex_unlock(&k->lock);
	/* a crasher fails its test boot half the time; anyone with revert_rate */
	if ((crasher && sim_randu(&c->rng) < 0.5) || sim_randu(&c->rng) < r->revert_rate)
		return 1;
	return 0;
}

static void h_reboot(void *ctx)
{
	((struct psim_ctx *)ctx)->rebooting = 1;
}

static void h_log(void *ctx, const char *msg)
{
	struct psim_ctx *c = ctx;

	if (!strncmp(msg, "download digest mismatch", 24)) {
		struct core *k = (struct core *)c->env;
		pthread_mutex_lock(&k->lock);
		k->fs->core.digest_retries++;
		pthread_mutex_unlock(&k->lock);
	}
	if (strncmp(msg, "refused the offer: ", 19))
		return;
	snprintf(c->why, sizeof(c->why), "%s", msg + 19);
}

/* --enc-key: the device's private key for its variant (HW=FILE), else the
 * one without a variant; the Linux port's ECIES and AES-CTR (OpenSSL). */
static int h_enc_key(void *ctx, int type, const uint8_t *tlv, size_t len, size_t keylen, const char **why)
{
	struct psim_ctx *c = ctx;
	const struct fleetsim *fs = ((struct core *)c->env)->fs;
	EVP_PKEY *key = NULL;

	if (!tlv) {
		port_linux_enc_forget(&c->enc);
		return 0;
	}
	for (size_t i = 0; i < fs->images.nenc && !key; i++)
		if (fs->images.enc[i].hardware && !strcmp(fs->images.enc[i].hardware, c->cfg.hardware))
			key = fs->images.enc[i].key;
	for (size_t i = 0; i < fs->images.nenc && !key; i++)
		if (!fs->images.enc[i].hardware)
			key = fs->images.enc[i].key;
	return port_linux_enc_unwrap(&c->enc, key, type, tlv, len, keylen, why);
}

static int h_enc_ctr(void *ctx, uint32_t off, uint8_t *buf, size_t len)
{
	return port_linux_enc_ctr(&((struct psim_ctx *)ctx)->enc, off, buf, len);
}

static const struct otadev_hooks hooks = {
	.http = h_http,
	.flash_read = psim_h_read,
	.flash_write = psim_h_write,
	.flash_erase = psim_h_erase,
	.sha256_begin = psim_h_sha_begin,
	.sha256_update = psim_h_sha_update,
	.sha256_end = psim_h_sha_end,
	.verify = psim_h_verify,
	.verify_msg = psim_h_verify_msg,
	.now_ms = h_now,
	.random = h_random,
	.persist_read = h_persist_read,
	.persist_write = h_persist_write,
	.status = h_status,
	.selftest = h_selftest,
	.reboot = h_reboot,
	.log = h_log,
	.x509_chain = port_linux_x509_chain,   /* --trust-root: OpenSSL, as otacd-device */
	.x509_crl = port_linux_x509_crl,
	.enc_key = h_enc_key,
	.enc_ctr = h_enc_ctr,
};

/* ---- one device's event ------------------------------------------------------------ */

/* The fleet's view of an image a device judged (the stats' "images"):
 * verified by a device (ok), or refused for what it is (bad signature,
 * signing chain, revoked).  Called under k->lock. */
static void image_verdict(struct psim_ctx *c, const struct otadev_offer *o, int ok, const char *why)
{
	struct fleetsim *fs = ((struct core *)c->env)->fs;
	char hex[65];
	long i;
	struct sim_image *img;

	ota_hex(hex, o->sha256, 32);
	if ((i = sim_imgcache_find(&fs->images, hex, 1)) < 0)
		return;
	img = fs->images.v[i];
	if (ok) {
		if (img->state != SIM_IMG_BAD) {
			img->state = SIM_IMG_OK;
			img->counter = c->d.rec.new_counter;
		}
		return;
	}
	if (img->state == SIM_IMG_BAD)
		return;
	if (img->state == SIM_IMG_OK && strstr(why, "revoked"))
		fs->trust.images_revoked++;     /* verified before, refused since */
	if (fs->trust.root)
		fs->trust.chain_refused++;
	sim_image_refuse(img, why);
	fprintf(stderr, "fleetsim: IMAGE REFUSED: %s (%s, first refused by %s): %s\n", hex, o->version, c->id, why);
}

/* --trust-root: a device took a newer revocation list (libotadev fetches it
 * when it checks an image and one is held or announced).  The fleet's
 * `revocations` is the newest list any device holds, and
 * `installed_at_revocation` counts the installs checked without it: those
 * before, and those of devices that had not heard of it yet (a device
 * learns of a list at its next check-in).  Under k->lock. */
static void crl_taken(struct psim_ctx *c, uint32_t number)
{
	struct fleetsim *fs = ((struct core *)c->env)->fs;

	if (number <= fs->trust.number)
		return;
	fs->trust.number = number;
	fs->trust.crl_accepted++;
	if (fs->trust.crl_accepted == 1)
		fs->installed_at_crl = fs->c.installed;
	if (!fs->o.quiet) {
		printf("fleetsim revocation list %u accepted (first by %s)\n", number, c->id);
		fflush(stdout);
	}
}

/* Count what a step did: the reports it queued, a new offer, a new
 * version, a newer revocation list. */
static void account(struct psim_ctx *c, uint32_t seq0, const uint8_t *offer0, uint32_t crl0)
{
	struct core *k = (struct core *)c->env;
	struct fleetsim *fs = k->fs;
	struct otadev_record *r = &c->d.rec;
	struct psim_dev *d = c->dev;
	uint32_t i = c->idx;
	int v;

	pthread_mutex_lock(&k->lock);
	if (r->crl_number > crl0)
		crl_taken(c, r->crl_number);
	if (memcmp(r->offer.sha256, offer0, 32) && r->offer.version[0]) {
		v = version_of_locked(k, r->offer.version);
		if (fs_bit_set(fs, &fs->vs[v].offered_bits, i)) {
			fs->vs[v].offered++;
			if (k->time_known)
				fs_note_offer(fs, v, fs_now(fs));
		}
	}
	for (uint32_t q = 0; q < r->nq; q++) {
		const struct otadev_report *e = &r->q[q];
		if (e->seq <= seq0)
			continue;
		switch (e->event) {
		case OTADEV_EV_DOWNLOAD:
			fs->c.downloads += !fs->o.shared_downloads;
			image_verdict(c, &r->offer, 1, NULL);
			break;
		case OTADEV_EV_INSTALL:
			fs->c.installed++;
			if (fs->trust.crl_accepted && r->crl_number < fs->trust.number)
				fs->installed_at_crl++;   /* checked without the newest list */
			break;
		case OTADEV_EV_BOOT_OK:
			fs->c.confirmed++;
			fs->vs[version_of_locked(k, e->version)].confirmed++;
			break;
		case OTADEV_EV_BOOT_FAIL: fs->c.boot_failed++; break;
		case OTADEV_EV_REVERT: fs->c.reverted++; break;
		case OTADEV_EV_REFUSED: {
			const char *why = c->why;
			fs->c.refused++;
			if (strstr(why, "lower security counter")) {
				if (fs->c.refused_lower_counter++ < LOUD_MAX)
					fprintf(stderr, "fleetsim: DOWNGRADE OFFERED: %s holds security counter %u, "
						"offered %s; refused\n", c->id, r->security_counter, e->version);
			} else if (strstr(why, "hardware variant") || strstr(why, "newer bootloader")) {
				if (fs->c.incompatible_offers++ < LOUD_MAX)
					fprintf(stderr, "fleetsim: INCOMPATIBLE OFFER: %s offered %s: %s; refused\n",
						c->id, e->version, why);
			} else if (strstr(why, "revocation list")) {
				fs->trust.crl_refused++;   /* withheld, older or not the root's */
				fs_warn(fs, "%s refused %s: %s", c->id, e->version, why);
			} else {
				fs->c.refused_bad_signature++;
				/* a digest that came wrong three times, or the running
				 * image offered again, is this device's, not the image's */
				if (!strstr(why, "digest does not match") && !strstr(why, "the one running"))
					image_verdict(c, &r->offer, 0, why);
				else
					fs_warn(fs, "%s refused %s: %s", c->id, e->version, why);
			}
			break;
		}
		}
	}
	if (strcmp(r->version, fs->versions.names[d->version])) {
		v = version_of_locked(k, r->version);
		fs->vs[d->version].devices--;
		fs->vs[v].devices++;
		d->version = (uint16_t)v;
		if (fs_bit_set(fs, &fs->vs[v].ran_bits, i))
			fs->vs[v].ever_ran++;
		fs_check_until(fs);
	}
	pthread_mutex_unlock(&k->lock);
}

static void fill_config(struct psim_ctx *c, uint32_t i)
{
	struct core *k = (struct core *)c->env;
	struct fleetsim *fs = k->fs;
	struct sim_device *sd = &fs->dev[i];
	size_t n = 0;

	c->cfg = k->base;
	sim_device_id(c->id, sizeof(c->id), i);
	ota_hex(c->cred, fs->cred[i], sizeof(fs->cred[0]));
	c->cfg.device = c->id;
	c->cfg.credential = c->cred;
	c->cfg.hardware = fs->p->hardware.names[sd->hw];
	c->cfg.bootloader = fs->p->bootloader.names[sd->bl];
	c->tags[0] = 0;
	for (size_t t = 0; t < fs->p->ntags && n < sizeof(c->tags); t++)
		n += (size_t)snprintf(c->tags + n, sizeof(c->tags) - n, "%s%s:%s", t ? "," : "", fs->tagkey_json[t],
				      fs->tag_json[t][sd->tags[t]]);
	for (int f = 0; f < fs->o.nflags && n < sizeof(c->tags); f++) /* issue 17: the flags it applied */
		if ((sd->flags_on | sd->flags_off) >> f & 1)
			n += (size_t)snprintf(c->tags + n, sizeof(c->tags) - n, "%s\"flag.%s\":\"%s\"", n ? "," : "",
					      fs->o.flags[f], sd->flags_on >> f & 1 ? "on" : "off");
	c->cfg.tags = c->tags;
	c->cfg.heartbeat_ms = (sd->flags & SIM_F_SILENT) ? 0 : k->hb_ms;
	/* the chain check's manifest and CRL, or the delta decoder (issue 15) */
	c->cfg.work = c->work;
	c->cfg.work_len = PSIM_WORK;
}

/* issue 15: the delta's RAM (the check-in's patch, and the decoder's
 * progress, kept in the worker's work buffer) belongs to whichever device
 * the worker ran last.  A simulated device keeps it only within one event:
 * it is cleared when the device is loaded, and run_device steps on while a
 * patch is being applied, so a patch is decoded and the result installed
 * in the event that took the offer (a device whose download starts in a
 * later event takes the full image, as after a restart). */
static void delta_ram_clear(struct otadev *d)
{
	memset(&d->delta, 0, sizeof(d->delta));
	memset(d->delta_for, 0, sizeof(d->delta_for));
	d->has_delta = d->delta_failed = d->delta_active = d->delta_used = d->delta_net_err = 0;
}

static int delta_pending(const struct otadev *d)
{
	return d->delta_active || d->delta_used;
}

/* Run device i's due work; returns when (device ms) it is due again. */
static uint64_t run_device(struct psim_ctx *c, uint32_t i)
{
	struct core *k = (struct core *)c->env;
	struct fleetsim *fs = k->fs;
	struct psim_dev *d = &k->dev[i];
	uint64_t now = dev_now(k), sn;
	uint8_t offer0[32];
	uint32_t wait = 1000, seq0, crl0, applied0, fallbacks0;
	int rc = 0, steps;

	c->dev = d;
	c->idx = i;
	c->power_cut = c->rebooting = 0;
	fill_config(c, i);
	c->why[0] = 0;
	if (!(d->flags & PSIM_ON)) {
		/* a start: the bootloader's swap decision, then the core's reconciliation */
		const struct sim_rates *r;
		int unverified, type;

		memset(&c->d.rec, 0, sizeof(c->d.rec));
		if (d->rec)
			psim_rec_decode(&c->d.rec, k->tmpl, sizeof(c->d.rec), d->rec, d->rec_len);
		c->d.rec.offer.version[sizeof(c->d.rec.offer.version) - 1] = 0;
		pthread_mutex_lock(&k->lock);
		r = fs_rates(fs, (uint16_t)version_of_locked(k, c->d.rec.offer.version[0] ? c->d.rec.offer.version
									      : fs->versions.names[d->version]),
			     fs->dev[i].hw);
		pthread_mutex_unlock(&k->lock);
		seq0 = c->d.rec.next_seq;
		crl0 = c->d.rec.crl_number;
		memcpy(offer0, c->d.rec.offer.sha256, 32);
		type = psim_boot(c, r->boot_fail_rate, &unverified);
		rc = otadev_init(&c->d, &hooks, c, &c->cfg);
		pthread_mutex_lock(&k->lock);
		fs->core.reboots++;
		fs->core.unverified_pending += unverified;
		if (rc < 0)
			fs->core.bricked++;
		if (c->d.n_downloads_resumed)
			fs->c.resumed_downloads++;
		if (rc < 0)
			fs_warn(fs, "%s does not start: %s", c->id, c->d.err);
		pthread_mutex_unlock(&k->lock);
		(void)type;
		if (rc < 0)
			return now + 3600000;
		account(c, seq0, offer0, crl0);
		d->flags |= PSIM_ON;
	} else {
		memset(&c->d, 0, offsetof(struct otadev, err));
		c->d.h = &hooks;
		c->d.ctx = c;
		c->d.cfg = &c->cfg;
		if (h_persist_read(c, &c->d.rec, sizeof(c->d.rec)) != (int)sizeof(c->d.rec))
			return now + 1000;
		c->d.next_checkin = d->next_checkin;
		c->d.next_report = d->next_report;
		c->d.next_work = d->next_work;
		c->d.last_heartbeat = d->last_heartbeat;
		c->d.errors = d->errors;
		c->d.report_errors = d->report_errors;
		c->d.checked_in = !!(d->flags & PSIM_CHECKED_IN);
	}
	pthread_mutex_lock(&k->lock);
	c->d.server_now = k->server_now;
	c->d.server_mono = k->server_mono;
	c->d.time_scale = k->time_known ? k->scale : 1.0;
	if (k->nudge_at && k->nudge_at[i]) {
		/* a hint's check-in: the core decides (never later, not while backing off) */
		otadev_nudge(&c->d, k->nudge_at[i] > now ? (uint32_t)(k->nudge_at[i] - now) : 0);
		k->nudge_at[i] = 0;
	}
	pthread_mutex_unlock(&k->lock);
	if (d->turn_lo && c->d.server_now && !c->d.turn) { /* issue 15: a turn is within an hour of now: its high bits are now's */
		int64_t t = (int64_t)((c->d.server_now & ~(uint64_t)0xffffffffu) | d->turn_lo);
		if (t - (int64_t)c->d.server_now > (int64_t)1 << 31)
			t -= (int64_t)1 << 32;
		c->d.turn = (uint64_t)t;
		c->d.deferred_until = c->d.next_checkin;
	}
	sn = c->d.server_now;
	delta_ram_clear(&c->d);
	for (steps = 0; steps < STEPS_PER_EVENT || (delta_pending(&c->d) && steps < DELTA_STEPS_MAX); steps++) {
		seq0 = c->d.rec.next_seq;
		crl0 = c->d.rec.crl_number;
		memcpy(offer0, c->d.rec.offer.sha256, 32);
		c->why[0] = 0;
		applied0 = c->d.n_delta_applied;
		fallbacks0 = c->d.n_delta_fallbacks;
		rc = otadev_step(&c->d, &wait);
		account(c, seq0, offer0, crl0);
		if (c->d.n_delta_applied != applied0 || c->d.n_delta_fallbacks != fallbacks0) {
			pthread_mutex_lock(&k->lock);
			fs->core.deltas_applied += c->d.n_delta_applied - applied0;
			fs->core.delta_fallbacks += c->d.n_delta_fallbacks - fallbacks0;
			pthread_mutex_unlock(&k->lock);
		}
		if (c->power_cut || c->rebooting || c->d.reboot_requested || rc < 0 || (wait > 0 && !delta_pending(&c->d)))
			break;
	}
	if (c->d.server_now != sn) {     /* a check-in answered: the server's clock */
		pthread_mutex_lock(&k->lock);
		k->server_now = c->d.server_now;
		k->server_mono = c->d.server_mono;
		k->scale = c->d.time_scale > 0 ? c->d.time_scale : 1.0;
		fs->anchor_otacd = (int64_t)k->server_now;
		fs->anchor_real = (int64_t)k->server_mono + k->real0 - 1;
		fs->scale = k->scale;
		if (!k->time_known) {
			k->time_known = fs->time_known = 1;
			fs->t0 = fs->last_now = (int64_t)k->server_now;
			k->poll_real = c->d.next_checkin > now ? c->d.next_checkin - now : 1000;
			k->hb_ms = (uint32_t)((double)fs->o.report_every_ms / k->scale);
			if (!k->hb_ms)
				k->hb_ms = 1;
			/* the device's retry timers in otacd time: a minute (or the
			 * poll interval, when shorter: no retry comes later than the
			 * next poll would) up to an hour of backoff, five minutes to
			 * wait for a precondition (real-time values would stall a
			 * time-scaled fleet) */
			k->base.backoff_base_ms = (uint32_t)(60000.0 / k->scale) + 20;
			if (k->base.backoff_base_ms > k->poll_real + 20)
				k->base.backoff_base_ms = (uint32_t)k->poll_real + 20;
			k->base.backoff_max_ms = (uint32_t)(3600000.0 / k->scale) + 2 * k->base.backoff_base_ms;
			/* ... and at least the poll interval: a fleet whose server is
			 * gone (a failed test leaves it running) retries no faster than
			 * it polled, instead of the whole fleet every otacd hour */
			if (k->base.backoff_max_ms < k->poll_real + 2 * k->base.backoff_base_ms)
				k->base.backoff_max_ms = (uint32_t)k->poll_real + 2 * k->base.backoff_base_ms;
			k->base.precondition_wait_ms = (uint32_t)(300000.0 / k->scale) + 50;
		}
		pthread_mutex_unlock(&k->lock);
	}
	if (c->power_cut || c->rebooting || c->d.reboot_requested) {
		d->flags &= (uint8_t)~PSIM_ON;
		if (c->power_cut) {
			pthread_mutex_lock(&k->lock);
			fs->core.power_cuts++;
			if (c->d.rec.phase == OTADEV_DOWNLOADING)
				fs->c.cut_downloads++;
			pthread_mutex_unlock(&k->lock);
			return now + OFF_MS;
		}
		return now + 10;
	}
	d->next_checkin = (uint32_t)c->d.next_checkin;
	d->next_report = (uint32_t)c->d.next_report;
	d->next_work = (uint32_t)c->d.next_work;
	d->last_heartbeat = (uint32_t)c->d.last_heartbeat;
	d->turn_lo = (uint32_t)c->d.turn;
	d->errors = (uint8_t)(c->d.errors > 255 ? 255 : c->d.errors);
	d->report_errors = (uint8_t)(c->d.report_errors > 255 ? 255 : c->d.report_errors);
	d->flags = (uint8_t)((d->flags & ~PSIM_CHECKED_IN) | (c->d.checked_in ? PSIM_CHECKED_IN : 0));
	if (rc < 0) {
		pthread_mutex_lock(&k->lock);
		fs_warn(fs, "%s: %s", c->id, c->d.err);
		pthread_mutex_unlock(&k->lock);
		wait = 1000;
	}
	return now + (wait ? wait : 1);
}

/* ---- push hints (issue 15) --------------------------------------------------------- */

/* Device i takes hint h as otacd-device would (push.c) and asks its core
 * for a check-in then, through otadev_nudge when it next runs (k->lock
 * held).  Device time is real time, like the hint's window. */
static void push_one(struct core *k, uint32_t i, const struct fs_hint *h, uint64_t now)
{
	struct fleetsim *fs = k->fs;
	uint32_t delay;
	uint64_t at;

	if (!fs_push_draw(fs->push, i, h, fs_real_ms(), &fs->rng, &delay))
		return;
	at = now + delay;
	if (k->nudge_at[i] && k->nudge_at[i] <= at)
		return;
	k->nudge_at[i] = at;
	fs->hints_taken++;
	if (k->due[i] >= 0 && (uint64_t)k->due[i] > at)
		schedule(k, i, (int64_t)at);         /* else it runs now, or earlier anyway */
}

/* The hints received since the last pass, to the devices they name. */
static void push_dispatch(struct core *k)
{
	struct fleetsim *fs = k->fs;
	struct fs_hint h[256];
	size_t n;

	if (!fs->push || !k->time_known)
		return;
	while ((n = fs_push_take(fs->push, h, 256)) > 0) {
		uint64_t now = dev_now(k);

		if (!fs->first_hint_ms)
			fs->first_hint_ms = fs_now(fs);
		for (size_t j = 0; j < n; j++) {
			if (h[j].hw < 0) {
				push_one(k, h[j].dev, &h[j], now);
				continue;
			}
			for (uint32_t i = 0; i < fs->ndev; i++)
				if (fs->dev[i].hw == (uint8_t)h[j].hw)
					push_one(k, i, &h[j], now);
		}
	}
	pthread_cond_broadcast(&k->cond);
}

/* ---- workers and the loop -------------------------------------------------------------- */

/*
 * --herd (issue 15): the next device of the herd to start (k->lock held).
 * All of them are due since the herd's instant, so in the heap they would
 * come before every device the server deferred (its turn is later), and
 * every turn given while the workers start the rest of the herd would be
 * missed.  Real devices each come back on their own; here a worker takes
 * a due event first and the herd only when none is due.
 */
static uint32_t herd_take(struct core *k)
{
	uint32_t i = k->herd_next;

	if (++k->herd_next == k->fs->ndev)
		k->herd_next = 0;
	return i;
}

/* Wait for the next due event, at most 50 ms (k->lock held). */
static void worker_wait(struct core *k, const struct sim_event *top, uint64_t now)
{
	struct timespec ts;
	int64_t ms = top ? (int64_t)((uint64_t)top->at - now) : 50;

	if (ms > 50)
		ms = 50;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_nsec += ms * 1000000;
	ts.tv_sec += ts.tv_nsec / 1000000000;
	ts.tv_nsec %= 1000000000;
	pthread_cond_timedwait(&k->cond, &k->lock, &ts);
}

static void *worker(void *arg)
{
	struct psim_ctx *c = arg;
	struct core *k = (struct core *)c->env;
	struct sim_event ev;
	const struct sim_event *top;

	pthread_mutex_lock(&k->lock);
	while (!k->quit) {
		uint64_t now = dev_now(k), next;
		uint32_t i;

		top = sim_heap_peek(&k->heap);
		if (top && (uint64_t)top->at <= now) {
			sim_heap_pop(&k->heap, &ev);
			if (k->due && k->due[ev.dev] != ev.at)
				continue;               /* a hint brought this device forward */
			i = ev.dev;
		} else if (k->herd_next) {
			i = herd_take(k);
		} else {
			worker_wait(k, top, now);
			continue;
		}
		if (k->due)
			k->due[i] = -1;
		pthread_mutex_unlock(&k->lock);
		next = run_device(c, i);
		pthread_mutex_lock(&k->lock);
		if (k->nudge_at && k->nudge_at[i] && k->nudge_at[i] < next)
			next = k->nudge_at[i];   /* a hint came while it ran */
		schedule(k, i, (int64_t)next);
	}
	pthread_mutex_unlock(&k->lock);
	return NULL;
}

static int ctx_init(struct core *k, struct psim_ctx *c, int n)
{
	memset(c, 0, sizeof(*c));
	c->env = &k->env;
	c->rng = sim_mix64(k->fs->o.seed ^ (0xc0de0000ull + (uint64_t)n));
	c->md = EVP_MD_CTX_new();
	c->curl = curl_easy_init();
	c->work = xmalloc(PSIM_WORK);
	return c->md && c->curl ? 0 : ota_error_set(OTA_ERROR, "out of memory");
}

static void ctx_release(struct psim_ctx *c)
{
	EVP_MD_CTX_free(c->md);
	free(c->work);
	if (c->curl)
		curl_easy_cleanup(c->curl);
}

/* The image every device runs at start: start_version with start_counter,
 * signed by a throwaway key (a factory image is parsed, not verified). */
static int factory_image(struct core *k)
{
	struct fleetsim *fs = k->fs;
	struct mcuboot_sign_opts o = { .has_security_counter = 1, .security_counter = fs->o.start_counter };
	EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	struct psim_image *img = xcalloc(1, sizeof(*img));
	struct buf b = BUF_INIT;
	uint8_t body[1024];
	int rc;

	for (size_t i = 0; i < sizeof(body); i++)
		body[i] = (uint8_t)(i * 13 + 1);
	buf_init(&b, BUF_NOLIMIT);
	if (!key || mcuboot_version_parse(fs->o.start_version, &o.major, &o.minor, &o.revision, &o.build) < 0)
		rc = ota_error_set(OTA_EINVAL, "--start-version '%s' is not an MCUboot version", fs->o.start_version);
	else
		rc = mcuboot_sign(&b, body, sizeof(body), key, &o);
	EVP_PKEY_free(key);
	if (rc < 0) {
		free(img);
		buf_release(&b);
		return rc;
	}
	snprintf(img->url, sizeof(img->url), "factory");
	snprintf(img->version, sizeof(img->version), "%s", fs->o.start_version);
	img->size = (uint32_t)b.len;
	img->bytes = (uint8_t *)buf_detach(&b);
	img->state = 2;
	k->env.img[k->env.nimg++] = img;
	return 0;
}

/* issue 15: --start-image, a release's signed image that a share of the
 * devices runs at start (so a patch's base: they report its version and
 * its hash).  Its digest keys it like an image the server offers. */
static int start_image(struct core *k)
{
	struct fleetsim *fs = k->fs;
	struct psim_image *img;
	struct mcuboot_info parsed;
	struct buf b = BUF_INIT;
	int rc;

	if ((rc = ota_read_file(&b, fs->o.start_image, IMAGE_MAX)) < 0) {
		ota_error_prefix("--start-image %s: ", fs->o.start_image);
		goto out;
	}
	if (b.len < 64 || b.len >= PSIM_SLOT_SIZE - 4096 || mcuboot_parse(&parsed, b.ptr, b.len) < 0) {
		rc = ota_error_set(OTA_EINVAL, "--start-image %s: not a signed MCUboot image", fs->o.start_image);
		goto out;
	}
	img = xcalloc(1, sizeof(*img));
	snprintf(img->url, sizeof(img->url), "start-image");
	snprintf(img->version, sizeof(img->version), "%s", "start-image");
	img->size = (uint32_t)b.len;
	EVP_Digest(b.ptr, b.len, img->sha256, NULL, EVP_sha256(), NULL);
	img->bytes = (uint8_t *)buf_detach(&b);
	img->state = 2;
	k->env.img[k->env.nimg++] = img;
out:
	buf_release(&b);
	return rc;
}

static int core_setup(struct core *k, struct fleetsim *fs)
{
	int rc;

	k->fs = fs;
	k->real0 = fs_real_ms();
	pthread_mutex_init(&k->lock, NULL);
	pthread_mutex_init(&k->memo_lock, NULL);
	pthread_cond_init(&k->cond, NULL);
	pthread_cond_init(&k->imgcond, NULL);
	k->env.memo_lock = &k->memo_lock;
	k->env.verify_every = fs->o.verify_every;
	k->scale = 1.0;
	/* with --trust-root too: libotadev installs only an image whose signing
	 * key is one of the bootloader's key slots (--key) */
	if (fs->images.nkeys < 1 || fs->images.nkeys > OTADEV_KEYS_MAX)
		return ota_error_set(OTA_EINVAL, "--engine core needs 1 to %d --key (the bootloader's key slots)",
				     OTADEV_KEYS_MAX);
	if (fs->trust.root) {
		int n = i2d_X509(fs->trust.root, &k->anchor);
		if (n <= 0)
			return ota_error_set(OTA_EINVAL, "--trust-root: cannot encode the root certificate");
		k->base.anchor = k->anchor;
		k->base.anchor_len = (size_t)n;
	}
	for (size_t i = 0; i < fs->images.nkeys; i++) {
		int n = i2d_PUBKEY(fs->images.keys[i], &k->keyder[i]);
		if (n <= 0)
			return ota_error_set(OTA_EINVAL, "--key: cannot encode the public key");
		k->base.keys[i].der = k->keyder[i];
		k->base.keys[i].len = (size_t)n;
		/* otadev_init fills it too, in the working copy; a resumed device needs it */
		EVP_Digest(k->keyder[i], (size_t)n, k->base.keys[i].hash, NULL, EVP_sha256(), NULL);
	}
	k->base.nkeys = (int)fs->images.nkeys;
	k->base.product = fs->o.product;
	k->base.slot_size = PSIM_SLOT_SIZE;
	k->base.sector_size = PSIM_SECTOR;
	k->base.min_battery_pct = 20;
	k->base.backoff_base_ms = 1000;
	k->base.backoff_max_ms = 60000;
	k->base.precondition_wait_ms = 5000;
	k->base.poll_ms = 60000;
	if ((rc = factory_image(k)) < 0)
		return rc;
	if (fs->o.start_image && (rc = start_image(k)) < 0)
		return rc;
	k->dev = xcalloc(fs->ndev, sizeof(*k->dev));
	if (fs->push) {
		k->due = xcalloc(fs->ndev, sizeof(*k->due));
		k->nudge_at = xcalloc(fs->ndev, sizeof(*k->nudge_at));
	}
	for (uint32_t i = 0; i < fs->ndev; i++) {
		struct psim_dev *d = &k->dev[i];
		d->slot[0].img = 1;
		if (fs->o.start_image && sim_unit(sim_hash(fs->o.seed, i, SALT_CORE_START)) < fs->o.start_image_share)
			d->slot[0].img = 2;  /* the version it reports comes from the image (account) */
		d->slot[0].written = k->env.img[d->slot[0].img - 1]->size;
		d->slot[0].swap_info = d->slot[1].swap_info = 0xff;
		d->version = fs->dev[i].version;
		if (fs->o.fault_low_battery > 0 &&
		    sim_unit(sim_hash(fs->o.seed, i, SALT_CORE_LOW)) < fs->o.fault_low_battery)
			d->flags |= PSIM_LOW_BATTERY;
	}
	fs->core.state_bytes_per_device = (int64_t)(sizeof(struct psim_dev) + sizeof(struct sim_device) +
						    sizeof(fs->cred[0]) + sizeof(fs->seq[0]) + sizeof(struct sim_event));
	k->nworkers = (int)(fs->o.concurrency < WORKERS_MAX ? fs->o.concurrency : WORKERS_MAX);
	k->ctx = xcalloc((size_t)k->nworkers, sizeof(*k->ctx));
	for (int w = 0; w < k->nworkers; w++)
		if ((rc = ctx_init(k, &k->ctx[w], w)) < 0)
			return rc;
	return 0;
}

static void core_release(struct core *k)
{
	for (int w = 0; k->ctx && w < k->nworkers; w++)
		ctx_release(&k->ctx[w]);
	free(k->ctx);
	for (uint32_t i = 0; k->dev && i < k->fs->ndev; i++)
		free(k->dev[i].rec);
	free(k->dev);
	for (uint32_t i = 0; i < k->env.nimg; i++) {
		free(k->env.img[i]->bytes);
		free(k->env.img[i]);
	}
	for (int i = 0; i < OTADEV_KEYS_MAX; i++)
		OPENSSL_free(k->keyder[i]);
	OPENSSL_free(k->anchor);
	sim_heap_release(&k->heap);
	free(k->due);
	free(k->nudge_at);
	pthread_mutex_destroy(&k->lock);
	pthread_mutex_destroy(&k->memo_lock);
	pthread_cond_destroy(&k->cond);
	pthread_cond_destroy(&k->imgcond);
}

int fs_core_run(struct fleetsim *fs, volatile sig_atomic_t *stop)
{
	struct core k;
	pthread_t th[WORKERS_MAX];
	int nth = 0, rc;
	int64_t deadline;

	memset(&k, 0, sizeof(k));
	if ((rc = core_setup(&k, fs)) < 0)
		goto out;
	fs->start_real = fs->last_print_real = fs_real_ms();
	fs->last_metrics_real = fs->start_real - METRICS_REAL_MS;
	/* device 0 first, here: its record is the template, its answer the clock */
	while (!*stop && !fs->fatal && !k.time_known &&
	       !(fs->o.duration_s > 0 && fs_real_ms() - fs->start_real >= (int64_t)(fs->o.duration_s * 1000))) {
		uint64_t next = run_device(&k.ctx[0], 0);
		if (!k.time_known) {
			struct timespec ts = { 0, 200 * 1000000 };
			nanosleep(&ts, NULL);
		} else {
			schedule(&k, 0, (int64_t)next);
		}
	}
	if (k.time_known) {
		if (fs->o.herd) /* every device at once, from herd_take */
			k.herd_next = fs->ndev > 1 ? 1 : 0;
		for (uint32_t i = 1; i < fs->ndev && !fs->o.herd; i++)
			schedule(&k, i,
				 (int64_t)(dev_now(&k) + (uint64_t)(sim_unit(sim_hash(fs->o.seed, i, SALT_CORE_FIRST)) *
								    (double)k.poll_real)));
		for (; nth < k.nworkers; nth++)
			if (pthread_create(&th[nth], NULL, worker, &k.ctx[nth])) {
				rc = ota_error_set(OTA_ERROR, "cannot start worker threads");
				break;
			}
	}
	pthread_mutex_lock(&k.lock);
	fs_check_until(fs);
	while (!*stop && !fs->fatal && !fs->until_reached && rc == 0) {
		int64_t rn = fs_real_ms();

		if (fs->o.duration_s > 0 && rn - fs->start_real >= (int64_t)(fs->o.duration_s * 1000))
			break;
		if (!vanished(&k))
			fs_reports_tick(fs, 0);
		push_dispatch(&k);
		fs->core.signature_checks = (int64_t)k.env.verifies;
		fs->core.signature_memo_hits = (int64_t)k.env.verify_hits;
		fs_output_tick(fs, rn);
		pthread_mutex_unlock(&k.lock);
		curl_multi_poll(fs->multi, NULL, 0, 50, NULL);
		pthread_mutex_lock(&k.lock);
	}
	k.quit = 1;
	pthread_cond_broadcast(&k.cond);
	pthread_mutex_unlock(&k.lock);
	for (int t = 0; t < nth; t++)
		pthread_join(th[t], NULL);
	/* send the reports still queued (up to 10 s) */
	deadline = fs_real_ms() + 10000;
	fs_reports_tick(fs, 1);
	while (fs_reports_busy(fs) && fs_real_ms() < deadline) {
		fs_reports_tick(fs, 1);
		curl_multi_poll(fs->multi, NULL, 0, 50, NULL);
	}
	fs->core.signature_checks = (int64_t)k.env.verifies;
	fs->core.signature_memo_hits = (int64_t)k.env.verify_hits;
	fs->images.verifications = k.env.verifies;
	fs_print_summary(fs, "final");
	if (fs->o.stats_path && (rc = fs_write_stats(fs)))
		fprintf(stderr, "fleetsim: %s\n", ota_error_last());
	if (fs->fatal && !rc)
		rc = ota_error_set(OTA_EAUTH, "the server refused the fleet's check-ins");
out:
	core_release(&k);
	return rc;
}
