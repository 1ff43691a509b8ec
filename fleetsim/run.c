/*
 * run.c - otacd-fleetsim's event loop: thousands to a million devices, one
 * thread, speaking docs/update-server.md to an update server.
 *
 * Why one thread: a device is 40 bytes of state (sim.h) and a few entries
 * in an event heap, so a million of them cost memory, not threads.  The loop
 * pops every event that is due in otacd time (poll, heartbeat, end of a
 * test boot, start of a download), starts at most `concurrency` device
 * requests on one libcurl multi handle, and handles answers as they
 * complete.  Time: each check-in answer carries otacd `now` and
 * `time_scale`; the loop maps real time to otacd time through the latest
 * answer (never backwards), so polls, reports and boot outcomes follow the
 * server's clock, scaled.
 *
 * Start: device 0 checks in first (the probe); its answer gives the time and
 * the poll interval, and every other device's first poll is spread uniformly
 * over that interval.  Then each device polls again after the answer's
 * next_poll_ms.
 *
 * Update flow: offer -> sim_offer_check -> the device downloads the image
 * (Range resume after a cut) -> the digest must be the offered sha256 ->
 * the image's verdict (verified once per image by a separate fetch, see
 * sim_imgcache_verify) and counter decide -> download + install reports ->
 * a test boot of BOOT_MS -> boot_fail / revert / boot_ok.  With
 * --shared-downloads the verification fetch is the only download.
 *
 * Reports of all devices are batched (REPORT_BATCH per POST, a few POSTs in
 * flight); a batch that fails to send is retried, one rejected with 4xx is
 * counted and dropped.  Counts are kept here; the summary line, the stats
 * file and the Prometheus text are made from them in output.c
 * (docs/fleetsim.md), and the fleet is registered before the loop starts
 * by provision.c.  The transfers themselves (a pool of libcurl handles, a
 * device's headers, TLS) are xfer.c's.  The state they all share is in
 * run_int.h.
 */
#include "run_int.h"

#include <curl/curl.h>

#include "../common/httpc.h"
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define BOOT_MS (2 * 60 * 1000)                 /* a test boot: two otacd minutes */
#define DEFAULT_POLL_MS (6LL * 3600 * 1000)
#define REPORT_BATCH 500
#define REPORT_INFLIGHT 4
/* sends of a report the server refused as retryable (unknown device) */
#define REPORT_TRIES 5
#define REPORT_FLUSH_REAL_MS 200
#define REPORT_QUEUE_MAX 20000                   /* batches kept while the server is away */
#define IMAGE_MAX ((size_t)64 << 20)
#define FETCH_TRIES 5
#define WARN_MAX 50
#define LOUD_MAX 20                              /* downgrade / incompatible lines printed */
#define SALT_FIRST_POLL 101
#define SALT_FIRST_HB 102
#define SALT_BATTERY 103

/* ---- small helpers ------------------------------------------------------ */

int64_t fs_real_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void fs_warn(struct fleetsim *fs, const char *fmt, ...)
{
	va_list ap;

	if (fs->warned++ >= WARN_MAX) {
		if (fs->warned == WARN_MAX + 2)
			fprintf(stderr, "fleetsim: further warnings suppressed\n");
		return;
	}
	va_start(ap, fmt);
	fputs("fleetsim: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

static char *json_quote(const char *s)
{
	json_t *j = json_string(s);
	char *out = j ? json_dumps(j, JSON_ENCODE_ANY) : NULL;

	json_decref(j);
	return out ? out : xstrdup("\"\"");
}

int64_t fs_now(struct fleetsim *fs)
{
	int64_t t;

	if (!fs->time_known)
		return 0;
	t = fs->anchor_otacd + (int64_t)((double)(fs_real_ms() - fs->anchor_real) * fs->scale);
	if (t < fs->last_now)
		t = fs->last_now;
	fs->last_now = t;
	return t;
}

static void time_update(struct fleetsim *fs, int64_t now, double scale)
{
	fs->anchor_otacd = now;
	fs->anchor_real = fs_real_ms();
	fs->scale = scale > 0 ? scale : 1.0;
	if (!fs->time_known) {
		fs->time_known = 1;
		fs->t0 = now;
		fs->last_now = now;
	}
}

static int version_ok(const char *s)
{
	size_t n = strlen(s);

	if (!n || n > 64)
		return 0;
	for (; *s; s++)
		if (!(('0' <= *s && *s <= '9') || ('a' <= *s && *s <= 'z') ||
		      ('A' <= *s && *s <= 'Z') || strchr(".+-_~", *s)))
			return 0;
	return 1;
}

/* Interned index of version s with its stats slot, or -1. */
int fs_version_idx(struct fleetsim *fs, const char *s)
{
	int i;

	if (!version_ok(s))
		return ota_error_set(OTA_EINVAL, "bad version string");
	i = sim_version_intern(&fs->versions, s);
	if (i < 0)
		return i;
	if ((size_t)i >= fs->nvs) {
		size_t n = fs->versions.n;

		fs->vs = xrealloc(fs->vs, n * sizeof(*fs->vs));
		memset(fs->vs + fs->nvs, 0, (n - fs->nvs) * sizeof(*fs->vs));
		for (size_t k = fs->nvs; k < n; k++)
			fs->vs[k].vhash = sim_fnv1a64(fs->versions.names[k]);
		fs->nvs = n;
	}
	return i;
}

const struct sim_rates *fs_rates(struct fleetsim *fs, uint16_t v, uint8_t hw)
{
	struct vstat *s = &fs->vs[v];

	if (!s->rates) {
		s->rates = xcalloc(fs->p->hardware.n, sizeof(*s->rates));
		for (size_t h = 0; h < fs->p->hardware.n; h++)
			sim_profile_rates(fs->p, fs->versions.names[v], fs->p->hardware.names[h],
					  &s->rates[h]);
	}
	return &s->rates[hw];
}

int fs_bit_set(struct fleetsim *fs, uint64_t **bits, uint32_t i)
{
	if (!*bits)
		*bits = xcalloc(fs->ndev / 64 + 1, sizeof(uint64_t));
	if ((*bits)[i / 64] & (1ull << (i % 64)))
		return 0;
	(*bits)[i / 64] |= 1ull << (i % 64);
	return 1;
}

void fs_note_offer(struct fleetsim *fs, int v, int64_t at)
{
	struct vstat *s = &fs->vs[v];

	if (s->noffer_at == s->capoffer_at) {
		s->capoffer_at = s->capoffer_at ? 2 * s->capoffer_at : 1024;
		s->offer_at = xrealloc(s->offer_at, s->capoffer_at * sizeof(*s->offer_at));
	}
	s->offer_at[s->noffer_at++] = at;
}

/* Device i polls at otacd ms at.  With push, a hint may bring a poll
 * forward: poll_at holds the one live event of each device, and
 * process_events drops the others. */
static void schedule_poll(struct fleetsim *fs, uint32_t i, int64_t at)
{
	if (fs->poll_at)
		fs->poll_at[i] = at;
	sim_heap_push(&fs->heap, at, i, SIM_EV_POLL);
}

/* ---- reports ------------------------------------------------------------ */

static void batch_seal(struct fleetsim *fs)
{
	struct buf b = BUF_INIT;

	if (!fs->npending)
		return;
	buf_puts(&b, "{\"reports\":[");
	buf_put(&b, fs->pending.ptr, fs->pending.len);
	buf_puts(&b, "]}");
	if (fs->qn - fs->qhead >= REPORT_QUEUE_MAX) {
		fs->c.reports_dropped += fs->q[fs->qhead].n;
		free(fs->q[fs->qhead].body);
		fs->qhead++;
	}
	if (fs->qn == fs->qcap) {
		if (fs->qhead) {
			memmove(fs->q, fs->q + fs->qhead, (fs->qn - fs->qhead) * sizeof(*fs->q));
			fs->qn -= fs->qhead;
			fs->qhead = 0;
		}
		if (fs->qn == fs->qcap) {
			fs->qcap = fs->qcap ? fs->qcap * 2 : 64;
			fs->q = xrealloc(fs->q, fs->qcap * sizeof(*fs->q));
		}
	}
	fs->q[fs->qn++] = (struct batch){ buf_detach(&b), fs->npending, 0, fs->pending_dev };
	buf_clear(&fs->pending);
	fs->npending = 0;
}

/* Queue one report of device i about version v; extra is more JSON members. */
static void report(struct fleetsim *fs, uint32_t i, uint16_t v, const char *event, int64_t at,
		   const char *extra)
{
	char id[16], hex[2 * sizeof(fs->cred[0]) + 1];

	if ((fs->dev[i].flags & SIM_F_SILENT) || !(fs->dev[i].flags & SIM_F_STARTED))
		return;
	sim_device_id(id, sizeof(id), i);
	ota_hex(hex, fs->cred[i], sizeof(fs->cred[0]));
	if (fs->cert && fs->npending && fs->pending_dev != i + 1)
		batch_seal(fs); /* mTLS: a batch is its device's (its certificate) */
	if (fs->cert)
		fs->pending_dev = i + 1;
	if (fs->npending)
		buf_putc(&fs->pending, ',');
	else
		fs->pending_since_real = fs_real_ms();
	/* one batch carries many devices' reports, each with its credential
	 * (mTLS: none, the batch is the certificate's device's) and its
	 * number: the body is sent again as it is after a lost answer, and
	 * refused reports marked retry are copied from it, so a report keeps
	 * its seq however often it is sent */
	if (fs->cert)
		buf_printf(&fs->pending, "{\"device\":\"%s\",\"version\":\"%s\",\"event\":\"%s\",\"at\":%" PRId64
			   ",\"seq\":%" PRIu32 "%s}", id, fs->versions.names[v], event, at, ++fs->seq[i], extra ? extra : "");
	else
		buf_printf(&fs->pending, "{\"device\":\"%s\",\"credential\":\"%s\",\"version\":\"%s\",\"event\":\"%s\","
			   "\"at\":%" PRId64 ",\"seq\":%" PRIu32 "%s}", id, hex, fs->versions.names[v], event, at,
			   ++fs->seq[i], extra ? extra : "");
	if (++fs->npending >= REPORT_BATCH)
		batch_seal(fs);
}

/* --engine core: n report objects (comma-separated JSON text, each with
 * its credential and the seq its device gave it) from a device's batch. */
void fs_report_append(struct fleetsim *fs, uint32_t dev, const char *objs, size_t len, int n)
{
	if (fs->cert && fs->npending && fs->pending_dev != dev + 1)
		batch_seal(fs); /* mTLS: a batch is its device's (its certificate) */
	if (fs->cert)
		fs->pending_dev = dev + 1;
	if (fs->npending)
		buf_putc(&fs->pending, ',');
	else
		fs->pending_since_real = fs_real_ms();
	buf_put(&fs->pending, objs, len);
	fs->npending += n;
	if (fs->npending >= REPORT_BATCH)
		batch_seal(fs);
}

static void reports_pump(struct fleetsim *fs, int force)
{
	int64_t rn = fs_real_ms();

	if (fs->npending && (force || rn - fs->pending_since_real >= REPORT_FLUSH_REAL_MS))
		batch_seal(fs);
	while (fs->qhead < fs->qn && fs->reports_inflight < REPORT_INFLIGHT &&
	       rn >= fs->retry_at_real) {
		struct xfer *x = fs_xfer_new(fs, X_REPORTS, fs->reports_url);
		struct batch *b = &fs->q[fs->qhead];

		if (!x)
			return;
		buf_puts(&x->req, b->body);
		x->nreports = b->n;
		x->tries = b->tries;
		x->dev = b->dev;
		if (b->dev)
			fs_client_cert(fs, x->e, b->dev - 1);
		fs_xfer_post(x);
		if (fs_xfer_start(fs, x))
			return;
		free(b->body);
		fs->qhead++;
	}
}

/* Put a batch back at the head of the queue, sent again in a second. */
static void requeue_front(struct fleetsim *fs, char *body, int n, int tries, uint32_t dev)
{
	if (fs->qhead == 0) {
		if (fs->qn == fs->qcap) {
			fs->qcap = fs->qcap ? fs->qcap * 2 : 64;
			fs->q = xrealloc(fs->q, fs->qcap * sizeof(*fs->q));
		}
		memmove(fs->q + 1, fs->q, fs->qn * sizeof(*fs->q));
		fs->qn++;
		fs->qhead = 1;
	}
	fs->q[--fs->qhead] = (struct batch){ body, n, tries, dev };
	fs->retry_at_real = fs_real_ms() + 1000;
}

/* The answer lists refused reports (docs/update-server.md): the others
 * were recorded when the status is 200; refused ones marked retry are sent
 * again (up to REPORT_TRIES sends), the rest dropped.  0 if handled. */
static int reports_refused(struct fleetsim *fs, struct xfer *x, long st)
{
	json_t *ans, *refused, *req = NULL, *reps, *keep = NULL, *it;
	size_t k;
	int rc = -1, nrefused, nkeep;

	if (!x->body.ptr || !memmem(x->body.ptr, x->body.len, "\"refused\"", 9))
		return -1; /* the usual answer: {"accepted": n} */
	ans = json_loadb(x->body.ptr, x->body.len, 0, NULL);
	refused = json_object_get(ans, "refused");

	if (!json_is_array(refused) || !json_array_size(refused) ||
	    !(req = json_loads(x->req.ptr ? x->req.ptr : "", 0, NULL)) || !json_is_array(reps = json_object_get(req, "reports")))
		goto out;
	keep = json_array();
	nrefused = (int)json_array_size(refused);
	json_array_foreach(refused, k, it) {
		json_t *r = json_array_get(reps, (size_t)json_integer_value(json_object_get(it, "index")));
		if (!r)
			continue;
		if (!json_is_true(json_object_get(it, "retry")))
			fs->c.reports_rejected++;
		else if (x->tries + 1 >= REPORT_TRIES)
			fs->c.reports_dropped++;
		else
			json_array_append(keep, r);
	}
	if (st == 200)
		fs->c.reports_sent += x->nreports - nrefused;
	nkeep = (int)json_array_size(keep);
	fs_warn(fs, "report batch of %d: %d refused (%d to send again): %.200s", x->nreports, nrefused, nkeep,
		json_string_value(json_object_get(json_array_get(refused, 0), "error")));
	if (nkeep) {
		json_t *o = json_pack("{sO}", "reports", keep);
		char *body = o ? json_dumps(o, JSON_COMPACT) : NULL;
		json_decref(o);
		if (body)
			requeue_front(fs, body, nkeep, x->tries + 1, x->dev);
	}
	rc = 0;
out:
	json_decref(keep);
	json_decref(req);
	json_decref(ans);
	return rc;
}

static void reports_done(struct fleetsim *fs, struct xfer *x, CURLcode rc, long st)
{
	if (rc == CURLE_OK && (st == 200 || (st >= 400 && st < 500)) && reports_refused(fs, x, st) == 0)
		return;
	if (rc == CURLE_OK && st == 200) {
		fs->c.reports_sent += x->nreports;
		return;
	}
	if (rc == CURLE_OK && st >= 400 && st < 500) {
		/* malformed or not authenticated: refused whole, never valid */
		fs->c.reports_rejected += x->nreports;
		fs_warn(fs, "report batch of %d rejected (%ld): %.300s", x->nreports, st,
		     buf_cstr(&x->body));
		return;
	}
	/* server away or failing: put the batch back at the head and retry */
	fs_warn(fs, "report batch of %d not sent (%s), retrying", x->nreports,
	     rc ? x->err : buf_cstr(&x->body));
	requeue_front(fs, xstrdup(x->req.ptr), x->nreports, x->tries, x->dev);
}

/* ---- device flow -------------------------------------------------------- */

static void drop_download(struct fleetsim *fs, uint32_t i)
{
	struct sim_device *d = &fs->dev[i];

	if (!d->dl)
		return;
	sim_download_release(fs->dls[d->dl - 1]);
	free(fs->dls[d->dl - 1]);
	fs->dls[d->dl - 1] = NULL;
	fs->dlfree[fs->ndlfree++] = d->dl;
	d->dl = 0;
}

static struct sim_download *get_download(struct fleetsim *fs, uint32_t i, uint32_t image)
{
	struct sim_device *d = &fs->dev[i];
	uint32_t slot;

	if (d->dl && fs->dls[d->dl - 1]->image != image)
		drop_download(fs, i);
	if (d->dl)
		return fs->dls[d->dl - 1];
	if (fs->ndlfree) {
		slot = fs->dlfree[--fs->ndlfree];
	} else {
		if (fs->ndls == fs->capdls) {
			fs->capdls = fs->capdls ? fs->capdls * 2 : 256;
			fs->dls = xrealloc(fs->dls, fs->capdls * sizeof(*fs->dls));
			fs->dlfree = xrealloc(fs->dlfree, fs->capdls * sizeof(*fs->dlfree));
		}
		slot = ++fs->ndls;
	}
	fs->dls[slot - 1] = xcalloc(1, sizeof(struct sim_download));
	if (sim_download_init(fs->dls[slot - 1], i, image)) {
		free(fs->dls[slot - 1]);
		fs->dls[slot - 1] = NULL;
		fs->dlfree[fs->ndlfree++] = slot;
		return NULL;
	}
	d->dl = slot;
	return fs->dls[slot - 1];
}

static void refuse(struct fleetsim *fs, uint32_t i, uint16_t v, enum sim_verdict why,
		   int64_t now, int64_t counter)
{
	struct sim_device *d = &fs->dev[i];
	char id[16];

	fs->c.refused++;
	sim_device_id(id, sizeof(id), i);
	switch (why) {
	case SIM_REFUSE_LOWER_COUNTER:
		if (fs->c.refused_lower_counter++ < LOUD_MAX)
			fprintf(stderr, "fleetsim: DOWNGRADE OFFERED: %s holds security counter %u, "
				"offered %s with counter %" PRId64 "; refused\n", id, d->counter,
				fs->versions.names[v], counter);
		break;
	case SIM_REFUSE_INCOMPATIBLE:
		if (fs->c.incompatible_offers++ < LOUD_MAX)
			fprintf(stderr, "fleetsim: INCOMPATIBLE OFFER: %s (%s, bootloader %s) "
				"offered %s; refused\n", id, fs->p->hardware.names[d->hw],
				fs->p->bootloader.names[d->bl], fs->versions.names[v]);
		break;
	default:
		fs->c.refused_bad_signature++;
		break;
	}
	report(fs, i, v, "refused", now, NULL);
	d->image = 0;
	d->flags &= (uint8_t)~SIM_F_WAITING;
	drop_download(fs, i);
}

static void fetch_start(struct fleetsim *fs, uint32_t image, uint32_t i);

/* The device has the image's bytes (or shares them) and its verdict is known. */
static void image_ready(struct fleetsim *fs, uint32_t i, int64_t now)
{
	struct sim_device *d = &fs->dev[i];
	struct sim_image *img = fs->images.v[d->image - 1];
	enum sim_verdict v = sim_image_check(d->counter, img);

	d->flags &= (uint8_t)~SIM_F_WAITING;
	drop_download(fs, i);
	if (v != SIM_ACCEPT) {
		d->failed_image = d->image;     /* not downloaded again */
		refuse(fs, i, d->new_version, v, now, img->counter);
		return;
	}
	report(fs, i, d->new_version, "download", now, NULL);
	report(fs, i, d->new_version, "install", now, NULL);
	fs->c.installed++;
	d->flags |= SIM_F_TESTING;
	sim_heap_push(&fs->heap, now + BOOT_MS, i, SIM_EV_BOOT);
}

/* Proceed when the verdict is known, else wait for the fetch. */
static void image_wait(struct fleetsim *fs, uint32_t i, int64_t now)
{
	struct sim_device *d = &fs->dev[i];
	struct sim_image *img = fs->images.v[d->image - 1];

	if (img->state == SIM_IMG_OK || img->state == SIM_IMG_BAD) {
		image_ready(fs, i, now);
		return;
	}
	if (img->state == SIM_IMG_UNKNOWN)
		fetch_start(fs, d->image, i);
	if (img->state != SIM_IMG_FETCHING) {     /* could not even start */
		d->image = 0;
		return;
	}
	d->flags |= SIM_F_WAITING;
	sim_image_add_waiter(img, i);
}

/* The verification fetch of an image, as device i (one it was offered to:
 * the server serves an image only to those). */
static void fetch_start(struct fleetsim *fs, uint32_t image, uint32_t i)
{
	struct sim_image *img = fs->images.v[image - 1];
	struct xfer *x;

	if (img->state != SIM_IMG_UNKNOWN || !img->url)
		return;
	x = fs_xfer_new(fs, X_FETCH, img->url);
	if (!x)
		return;
	fs_xfer_as_device(fs, x, i, img->url);
	x->dev = i;     /* trust_verify fetches the manifest as this device */
	x->image = image;
	if (sim_download_init(&x->fetch, UINT32_MAX, image)) {
		x->busy = 0;
		return;
	}
	buf_init(&x->keep, IMAGE_MAX);
	x->fetch.keep = &x->keep;
	x->dl = &x->fetch;
	if (fs_xfer_start(fs, x)) {
		sim_download_release(&x->fetch);
		buf_release(&x->keep);
		return;
	}
	img->state = SIM_IMG_FETCHING;
}

static size_t cert_get_body(char *p, size_t sz, size_t nm, void *ud)
{
	return buf_put(ud, p, sz * nm) < 0 ? 0 : sz * nm;
}

/* device_get over mTLS: device i's certificate, no token. */
static int cert_get(struct fleetsim *fs, uint32_t i, const char *url, struct buf *out)
{
	CURL *e = curl_easy_init();
	struct buf b = BUF_INIT;
	long st = 0;
	CURLcode cc;
	int rc = 0;

	if (!e)
		return ota_error_set(OTA_ERROR, "curl_easy_init failed");
	curl_easy_setopt(e, CURLOPT_URL, url);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 30000L);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, cert_get_body);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, &b);
	fs_tls_setopt(fs, e);
	fs_client_cert(fs, e, i);
	if ((cc = curl_easy_perform(e)) != CURLE_OK)
		rc = ota_error_set(OTA_ERROR, ": %s", curl_easy_strerror(cc));
	else if (curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &st), st != 200)
		rc = ota_error_set(OTA_ERROR, ": HTTP %ld %.200s", st, buf_cstr(&b));
	if (rc == 0) {
		buf_release(out);
		*out = b;
	} else {
		buf_release(&b);
	}
	curl_easy_cleanup(e);
	return rc;
}

/*
 * issue 13: a small GET as device i, outside the event loop (blocking).
 * Used once per release (its signed manifest) and once per revocation
 * list, so a whole run makes a handful of them.
 */
static int device_get(struct fleetsim *fs, uint32_t i, const char *path, struct buf *out)
{
	char hex[2 * sizeof(fs->cred[0]) + 1], id[16], xdev[64];
	const char *const hdrs[] = { xdev, NULL };
	struct httpc_response resp;
	char *url = xasprintf("%s%s", fs->base, path);
	int rc;

	ota_hex(hex, fs->cred[i], sizeof(fs->cred[0]));
	sim_device_id(id, sizeof(id), i);
	snprintf(xdev, sizeof(xdev), "X-Device-Id: %s", id);
	if (fs->cert) { /* mTLS: as the device, by its certificate */
		rc = cert_get(fs, i, url, out);
		if (rc < 0)
			ota_error_prefix("GET %s", path);
		free(url);
		return rc;
	}
	rc = httpc_request_ex(&resp, "GET", url, hex, NULL, NULL, 0, 30000, hdrs);
	if (rc == 0 && resp.status != 200)
		rc = ota_error_set(OTA_ERROR, "GET %s: HTTP %ld %.200s", path, resp.status, buf_cstr(&resp.body));
	if (rc == 0) {
		buf_release(out);
		*out = resp.body;
		buf_init(&resp.body, 0);
	}
	httpc_response_release(&resp);
	free(url);
	return rc;
}

/* The image's verdict by the signing PKI: its release's signed manifest
 * from the server, then trust.c's checks. */
static int trust_verify(struct fleetsim *fs, struct sim_image *img, struct xfer *x)
{
	struct buf env = BUF_INIT;
	char *path = xasprintf("/device/v1/releases/%lld/manifest", (long long)img->release);
	int rc;

	if (img->release <= 0 || device_get(fs, x->dev, path, &env) < 0)
		fs_warn(fs, "image %.12s: no signed manifest: %s", img->sha256, ota_error_last());
	rc = sim_trust_verify_image(&fs->trust, &fs->images, img, x->keep.ptr, x->keep.len, env.ptr, env.len,
				    fs->images.keys, fs->images.nkeys);
	buf_release(&env);
	free(path);
	return rc;
}

/* A check-in announced revocation list `number`: fetch it once, as device i. */
static void revocations_check(struct fleetsim *fs, uint32_t i, int64_t number)
{
	struct buf crl = BUF_INIT;

	if (!fs->trust.root || number <= fs->trust.number || number <= fs->crl_wanted)
		return;
	fs->crl_wanted = number;       /* a refused list is not fetched again */
	if (device_get(fs, i, "/device/v1/revocations", &crl) < 0) {
		fs->crl_wanted = fs->trust.number; /* the next check-in tries again */
		fs_warn(fs, "revocation list %lld: %s", (long long)number, ota_error_last());
	} else if (sim_trust_accept_crl(&fs->trust, &fs->images, crl.ptr, crl.len) < 0) {
		fprintf(stderr, "fleetsim: REVOCATION LIST REFUSED: %s\n", ota_error_last());
	} else {
		fs->installed_at_crl = fs->c.installed;
		if (!fs->o.quiet)
			printf("fleetsim revocation list %lld accepted, %lld image(s) revoked\n", (long long)fs->trust.number,
			       (long long)fs->trust.images_revoked);
	}
	buf_release(&crl);
}

static void fetch_done(struct fleetsim *fs, struct xfer *x, CURLcode rc, long st)
{
	struct sim_image *img = fs->images.v[x->image - 1];
	int64_t now = fs_now(fs);

	img->state = SIM_IMG_UNKNOWN;
	if (rc == CURLE_OK && !x->failed && st == 200) {
		if (fs->trust.root ? trust_verify(fs, img, x) : sim_imgcache_verify(&fs->images, img, x->keep.ptr, x->keep.len))
			fprintf(stderr, "fleetsim: IMAGE REFUSED: %s\n", ota_error_last());
		if (fs->o.shared_downloads)
			fs->c.downloads++;
	} else {
		img->fetch_failures++;
		fs_warn(fs, "fetching image %.12s failed (%s)", img->sha256,
		     rc ? x->err : buf_cstr(&x->body));
	}
	for (size_t k = 0; k < img->nwaiters; k++) {
		uint32_t i = img->waiters[k];
		struct sim_device *d = &fs->dev[i];

		if (!(d->flags & SIM_F_WAITING) || d->image != x->image)
			continue;
		if (img->state == SIM_IMG_OK || img->state == SIM_IMG_BAD) {
			image_ready(fs, i, now);
		} else {
			d->flags &= (uint8_t)~SIM_F_WAITING;    /* tries again on its next poll */
			d->image = 0;
		}
	}
	img->nwaiters = 0;
}

static void handle_offer(struct fleetsim *fs, uint32_t i, json_t *offer, int64_t now)
{
	struct sim_device *d = &fs->dev[i];
	json_t *image = json_object_get(offer, "image");
	const char *version = json_string_value(json_object_get(offer, "version"));
	const char *sha = json_string_value(json_object_get(image, "sha256"));
	const char *url = json_string_value(json_object_get(image, "url"));
	json_t *jc = json_object_get(offer, "security_counter");
	struct sim_offer of = { 0 };
	struct sim_self self;
	struct sim_image *img;
	enum sim_verdict verdict;
	long ii;
	int v;

	if (!version || !sha || !url || (v = fs_version_idx(fs, version)) < 0 ||
	    (ii = sim_imgcache_find(&fs->images, sha, 1)) < 0) {
		fs_warn(fs, "malformed offer to dev-%06u (version, image.sha256, image.url)", i);
		return;
	}
	img = fs->images.v[ii];
	if (!img->url || (url[0] != '/' && strcmp(img->url, url))) { /* a presigned URL is renewed */
		free(img->url);
		img->url = url[0] == '/' ? xasprintf("%s%s", fs->base, url) : xstrdup(url);
	}
	if (!img->size)
		img->size = json_integer_value(json_object_get(image, "size"));
	if (!img->release)
		img->release = json_integer_value(json_object_get(offer, "release"));
	if (d->flags & (SIM_F_TESTING | SIM_F_WAITING))
		return;                 /* busy installing something */
	of.version = version;
	of.counter = json_is_integer(jc) ? json_integer_value(jc) : -1;
	of.hardware = json_string_value(json_object_get(image, "hardware"));
	if (!of.hardware)
		of.hardware = json_string_value(json_object_get(offer, "hardware"));
	of.min_bootloader = json_string_value(json_object_get(offer, "min_bootloader"));
	of.image = (uint32_t)ii + 1;
	self.version = fs->versions.names[d->version];
	self.hardware = fs->p->hardware.names[d->hw];
	self.bootloader = fs->p->bootloader.names[d->bl];
	self.counter = d->counter;
	self.failed_image = d->failed_image;
	verdict = sim_offer_check(&self, &of);
	if (verdict == SIM_SAME_VERSION)
		return;
	if (fs_bit_set(fs, &fs->vs[v].offered_bits, i)) {
		fs->vs[v].offered++;
		fs_note_offer(fs, v, now);
	}
	switch (verdict) {
	case SIM_SKIP_FAILED:
		fs->c.skipped_failed++;
		drop_download(fs, i);
		return;
	case SIM_REFUSE_LOWER_COUNTER:
	case SIM_REFUSE_INCOMPATIBLE:
		refuse(fs, i, (uint16_t)v, verdict, now, of.counter);
		return;
	default:
		break;
	}
	d->image = (uint32_t)ii + 1;
	d->new_version = (uint16_t)v;
	if (!img->hardware)
		img->hardware = self.hardware;  /* an image is for one variant: its devices' key decrypts it */
	if (img->state == SIM_IMG_UNKNOWN)
		fetch_start(fs, d->image, i);
	if (fs->o.shared_downloads) {
		image_wait(fs, i, now);
		return;
	}
	if (d->dl && fs->dls[d->dl - 1]->image != d->image)
		drop_download(fs, i);
	sim_heap_push(&fs->heap, now, i, SIM_EV_RESUME);
}

static void checkin_start(struct fleetsim *fs, uint32_t i)
{
	struct sim_device *d = &fs->dev[i];
	struct xfer *x = fs_xfer_new(fs, X_CHECKIN, fs->checkin_url);
	char id[16];

	if (!x)
		return;
	sim_device_id(id, sizeof(id), i);
	buf_printf(&x->req, "{\"device\":\"%s\",\"product\":%s,\"hardware\":%s,\"bootloader\":%s,"
		   "\"version\":\"%s\",\"security_counter\":%u,\"slot\":\"%s\",\"tags\":{",
		   id, fs->product_json, fs->hw_json[d->hw], fs->bl_json[d->bl],
		   fs->versions.names[d->version], d->counter,
		   d->flags & SIM_F_TESTING ? "testing" : "confirmed");
	for (size_t t = 0; t < fs->p->ntags; t++)
		buf_printf(&x->req, "%s%s:%s", t ? "," : "", fs->tagkey_json[t],
			   fs->tag_json[t][d->tags[t]]);
	buf_puts(&x->req, "}");
	/* back at the server's turn (issue 15); the model keeps no turn per
	 * device (a few bytes each), so it names its poll time, which is the
	 * turn plus the moment it drew in the window */
	if (d->flags & SIM_F_DEFERRED)
		buf_printf(&x->req, ",\"turn\":%" PRId64, fs_now(fs));
	buf_puts(&x->req, "}");
	fs_xfer_post(x);
	fs_xfer_as_device(fs, x, i, NULL);
	x->dev = i;
	x->probe = !fs->time_known;
	if (!x->probe && (d->flags & SIM_F_FLAKY) && sim_randu(&fs->rng) < fs->p->flaky_fail)
		x->flaky_abort = 1;
	if (fs_xfer_start(fs, x))
		return;
	d->flags |= SIM_F_BUSY;
}

/* Every device's first poll, spread over one poll interval, or all at
 * once with --herd (issue 15: a region's power restored): then they are
 * all due now and go out from fs->herd_next (herd_send). */
static void start_fleet(struct fleetsim *fs, int64_t now, int64_t interval)
{
	if (fs->o.herd) {
		fs->herd_next = fs->ndev > 1 ? 1 : 0;
		return;
	}
	for (uint32_t i = 0; i < fs->ndev; i++) {
		if (i)
			schedule_poll(fs, i, now + (int64_t)(sim_unit(sim_hash(fs->o.seed, i, SALT_FIRST_POLL)) *
							     (double)interval));
	}
}

/*
 * issue 15: a server over its check-in capacity answers 503 with the
 * device's turn (docs/update-server.md); the device comes back at a moment
 * picked uniformly in the turn's window, as libotadev does.  1 when the
 * answer was such a deferral (the next poll is queued).
 */
static int checkin_deferred(struct fleetsim *fs, uint32_t i, const struct xfer *x, CURLcode rc, long st)
{
	json_t *ans, *after, *window;
	int64_t wait;

	if (rc != CURLE_OK || st != 503 || x->probe)
		return 0;
	ans = json_loadb(x->body.ptr ? x->body.ptr : "", x->body.len, 0, NULL);
	after = json_object_get(ans, "retry_after_ms");
	window = json_object_get(ans, "retry_window_ms");
	if (!json_is_integer(after) || json_integer_value(after) < 0) {
		json_decref(ans);
		return 0;
	}
	wait = json_integer_value(after);
	if (json_is_integer(window) && json_integer_value(window) > 0)
		wait += (int64_t)(sim_randu(&fs->rng) * (double)json_integer_value(window));
	json_decref(ans);
	fs->c.checkins_deferred++;
	fs->dev[i].flags |= SIM_F_DEFERRED;
	if (fs->dev[i].deferrals < UINT8_MAX)
		fs->dev[i].deferrals++;
	if (fs->dev[i].deferrals > fs->c.deferrals_max)
		fs->c.deferrals_max = fs->dev[i].deferrals;
	if (wait > fs->poll_ms) /* as libotadev: never longer than a poll interval */
		wait = fs->poll_ms;
	sim_heap_push(&fs->heap, fs_now(fs) + (wait > 0 ? wait : 1), i, SIM_EV_POLL);
	return 1;
}

static void checkin_done(struct fleetsim *fs, struct xfer *x, CURLcode rc, long st)
{
	uint32_t i = x->dev;
	json_t *ans = NULL, *jnow, *jscale, *jnext, *offer;
	int64_t now, next;

	fs->dev[i].flags &= (uint8_t)~SIM_F_BUSY;
	if (checkin_deferred(fs, i, x, rc, st))
		return;
	if (rc == CURLE_OK && st == 200)
		ans = json_loadb(x->body.ptr ? x->body.ptr : "", x->body.len, 0, NULL);
	jnow = json_object_get(ans, "now");
	jscale = json_object_get(ans, "time_scale");
	jnext = json_object_get(ans, "next_poll_ms");
	if (!json_is_integer(jnow) || !json_is_number(jscale) || !json_is_integer(jnext)) {
		fs->c.requests_failed++;
		if (x->flaky_abort)
			fs->c.flaky_aborts++;
		else if (rc != CURLE_OK)
			fs_warn(fs, "check-in of dev-%06u: %s", i, x->err);
		else
			fs_warn(fs, "check-in of dev-%06u: %ld %.300s", i, st, buf_cstr(&x->body));
		if (x->probe) {
			fs->probe_inflight = 0;
			fs->probe_retry_real = fs_real_ms() + 1000;
			if (st == 400 || st == 401 || st == 403 || st == 404) {
				fprintf(stderr, "fleetsim: the server refuses check-ins (%ld): %.300s\n", st,
					buf_cstr(&x->body));
				fs->fatal = 1;
			}
		} else {
			schedule_poll(fs, i, fs_now(fs) + fs->poll_ms);
		}
		goto out;
	}
	fs->dev[i].flags &= (uint8_t)~SIM_F_DEFERRED;
	time_update(fs, json_integer_value(jnow), json_number_value(jscale));
	next = json_integer_value(jnext);
	if (next < 1000)
		next = 1000;
	fs->poll_ms = next;
	fs->c.checkins++;
	now = fs_now(fs);
	if (x->probe) {
		fs->probe_inflight = 0;
		start_fleet(fs, now, next);
	}
	schedule_poll(fs, i, now + next);
	if (!(fs->dev[i].flags & SIM_F_STARTED)) {
		/* the server knows the device now: its reports may start */
		fs->dev[i].flags |= SIM_F_STARTED;
		fs->c.served++;
		fs->c.served_last_ms = now - fs->t0;
		if (fs->o.herd && fs->c.served == fs->ndev)
			fs->until_reached = 1; /* --herd: the run ends once the herd is served */
		fs->dev[i].last_report_ms = now;
		if (!(fs->dev[i].flags & SIM_F_SILENT))
			sim_heap_push(&fs->heap,
				      now + 1 + (int64_t)(sim_unit(sim_hash(fs->o.seed, i, SALT_FIRST_HB)) *
							  (double)fs->o.report_every_ms),
				      i, SIM_EV_HEARTBEAT);
	}
	if (json_is_integer(json_object_get(ans, "revocations")))
		revocations_check(fs, i, json_integer_value(json_object_get(ans, "revocations")));
	offer = json_object_get(ans, "offer");
	if (json_is_object(offer))
		handle_offer(fs, i, offer, now);
	else if (!(fs->dev[i].flags & (SIM_F_TESTING | SIM_F_WAITING)))
		drop_download(fs, i);
out:
	json_decref(ans);
}

static void download_start(struct fleetsim *fs, uint32_t i)
{
	struct sim_device *d = &fs->dev[i];
	struct sim_image *img;
	struct sim_download *dl;
	struct xfer *x;
	char range[48];

	if (!d->image || (d->flags & (SIM_F_BUSY | SIM_F_TESTING | SIM_F_WAITING)))
		return;
	img = fs->images.v[d->image - 1];
	dl = get_download(fs, i, d->image);
	if (!dl || !(x = fs_xfer_new(fs, X_DOWNLOAD, img->url)))
		return;
	dl->cut = 0;
	if ((d->flags & SIM_F_FLAKY) && img->size > 1 && (uint64_t)img->size - dl->offset > 1 &&
	    sim_randu(&fs->rng) < fs->p->flaky_fail)
		dl->cut = dl->offset + 1 + sim_rand(&fs->rng) % ((uint64_t)img->size - dl->offset - 1);
	fs_xfer_as_device(fs, x, i, img->url);
	sim_download_range(dl, range, sizeof(range));
	if (range[0])
		curl_easy_setopt(x->e, CURLOPT_RANGE, range + strlen("bytes="));
	x->dev = i;
	x->image = d->image;
	x->dl = dl;
	if (fs_xfer_start(fs, x))
		return;
	d->flags |= SIM_F_BUSY;
}

static void download_done(struct fleetsim *fs, struct xfer *x, CURLcode rc, long st)
{
	uint32_t i = x->dev;
	struct sim_device *d = &fs->dev[i];
	struct sim_download *dl = x->dl;
	struct sim_image *img = fs->images.v[x->image - 1];
	int64_t now = fs_now(fs);
	char hex[65];

	d->flags &= (uint8_t)~SIM_F_BUSY;
	if (rc != CURLE_OK || x->failed || (st != 200 && st != 206)) {
		if (dl->cut_hit) {
			fs->c.cut_downloads++;  /* resumes on the next offer */
		} else if (st == 410) {
			fs->c.withdrawn_downloads++;    /* the release was halted */
			drop_download(fs, i);
		} else {
			fs->c.requests_failed++;
			fs_warn(fs, "download of %.12s by dev-%06u: %s", img->sha256, i,
			     rc && !x->failed ? x->err : buf_cstr(&x->body));
			if (st == 404)
				drop_download(fs, i);
		}
		d->image = 0;
		return;
	}
	if (sim_download_digest(dl, hex) || strcmp(hex, img->sha256)) {
		fs_warn(fs, "dev-%06u downloaded %.12s but its bytes hash to %.12s", i, img->sha256,
		     hex);
		d->failed_image = d->image;
		refuse(fs, i, d->new_version, SIM_REFUSE_BAD_SIGNATURE, now, -1);
		return;
	}
	fs->c.downloads++;
	if (dl->resumes)
		fs->c.resumed_downloads++;
	drop_download(fs, i);
	image_wait(fs, i, now);
}

static void boot_end(struct fleetsim *fs, uint32_t i, int64_t now);
static void heartbeat(struct fleetsim *fs, uint32_t i, int64_t now, int reschedule);

void fs_check_until(struct fleetsim *fs)
{
	int k;

	if (!fs->o.until_version)
		return;
	for (k = 0; k < (int)fs->versions.n; k++)
		if (!strcmp(fs->versions.names[k], fs->o.until_version))
			break;
	if (k < (int)fs->versions.n &&
	    (double)fs->vs[k].devices >= fs->o.until_fraction * (double)fs->ndev)
		fs->until_reached = 1;
}

static void boot_end(struct fleetsim *fs, uint32_t i, int64_t now)
{
	struct sim_device *d = &fs->dev[i];
	uint16_t v = d->new_version, old = d->version;
	const struct sim_rates *r;
	struct sim_image *img;

	if (!(d->flags & SIM_F_TESTING) || !d->image)
		return;
	d->flags &= (uint8_t)~SIM_F_TESTING;
	img = fs->images.v[d->image - 1];
	r = fs_rates(fs, v, d->hw);
	if (sim_randu(&fs->rng) < r->boot_fail_rate) {
		fs->c.boot_failed++;
		report(fs, i, v, "boot_fail", now, NULL);
		d->failed_image = d->image;
	} else if ((sim_unit(sim_hash(fs->o.seed, i, fs->vs[v].vhash)) < r->crash_rate &&
		    sim_randu(&fs->rng) < 0.5) ||
		   sim_randu(&fs->rng) < r->revert_rate) {
		fs->c.reverted++;
		report(fs, i, v, "revert", now, NULL);
		d->failed_image = d->image;
	} else {
		heartbeat(fs, i, now, 0);       /* close the old version's uptime */
		fs->vs[old].devices--;
		fs->vs[v].devices++;
		d->version = v;
		d->counter = img->counter;
		fs->c.confirmed++;
		fs->vs[v].confirmed++;
		if (fs_bit_set(fs, &fs->vs[v].ran_bits, i))
			fs->vs[v].ever_ran++;
		report(fs, i, v, "boot_ok", now, NULL);
		fs_check_until(fs);
	}
	d->image = 0;
}

static void heartbeat(struct fleetsim *fs, uint32_t i, int64_t now, int reschedule)
{
	struct sim_device *d = &fs->dev[i];
	struct vstat *s = &fs->vs[d->version];
	const struct sim_rates *r;
	double hours, battery;
	unsigned crashes = 0;
	int64_t up;
	char extra[160];

	if (d->flags & SIM_F_SILENT)
		return;
	if (reschedule)
		sim_heap_push(&fs->heap, now + fs->o.report_every_ms, i, SIM_EV_HEARTBEAT);
	up = now - d->last_report_ms;
	if (up <= 0)
		return;
	d->last_report_ms = now;
	hours = (double)up / 3.6e6;
	r = fs_rates(fs, d->version, d->hw);
	if (sim_unit(sim_hash(fs->o.seed, i, s->vhash)) < r->crash_rate)
		crashes = sim_poisson(&fs->rng, hours * SIM_CRASHER_RATE_PER_HOUR);
	if (fs->p->crashes_per_hour > 0) /* issue 17: the profile's background rate */
		crashes += sim_poisson(&fs->rng, hours * fs->p->crashes_per_hour);
	battery = r->battery_mah_per_day * hours / 24.0 *
		  (0.9 + 0.2 * sim_unit(sim_hash(fs->o.seed, i, SALT_BATTERY)));
	snprintf(extra, sizeof(extra),
		 ",\"uptime_s\":%" PRId64 ",\"crashes\":%u,\"battery_mah\":%.4f,\"rssi\":%d",
		 up / 1000, crashes, battery,
		 -(40 + d->rssi_base) + (int)(sim_rand(&fs->rng) % 7) - 3);
	report(fs, i, d->version, "heartbeat", now, extra);
	s->crashes += crashes;
	s->hours += hours;
	s->battery += battery;
	fs->c.heartbeats++;
}

/* ---- push hints (issue 15) ---------------------------------------------- */

/* Device i takes hint h as otacd-device would (push.c): at most one per
 * window, a poll at a uniform instant within it.  The window is the
 * server's real time (sized to its capacity), so it is scaled here. */
static void push_one(struct fleetsim *fs, uint32_t i, const struct fs_hint *h, int64_t rn, int64_t now)
{
	uint32_t delay;
	int64_t at;

	if (!fs->poll_at[i] || !fs_push_draw(fs->push, i, h, rn, &fs->rng, &delay))
		return;                 /* not started yet: its first poll comes anyway */
	at = now + (int64_t)((double)delay * fs->scale);
	if (at < fs->poll_at[i]) {   /* never later than its poll */
		schedule_poll(fs, i, at);
		fs->hints_taken++;
	}
}

/* The hints received since the last pass, to the devices they name. */
static void push_dispatch(struct fleetsim *fs)
{
	struct fs_hint h[256];
	int64_t rn = fs_real_ms(), now;
	size_t n;

	if (!fs->push || !fs->time_known)
		return;
	now = fs_now(fs);
	while ((n = fs_push_take(fs->push, h, 256)) > 0) {
		if (!fs->first_hint_ms)
			fs->first_hint_ms = now;
		for (size_t k = 0; k < n; k++) {
			if (h[k].hw < 0) {
				push_one(fs, h[k].dev, &h[k], rn, now);
				continue;
			}
			for (uint32_t i = 0; i < fs->ndev; i++)
				if (fs->dev[i].hw == (uint8_t)h[k].hw)
					push_one(fs, i, &h[k], rn, now);
		}
	}
}

/* ---- the loop ----------------------------------------------------------- */

/*
 * --herd (issue 15): the first check-ins still to send, into the slots the
 * due events left.  Every one of them is due since the herd's instant, so
 * in the heap they would all come before any device the server deferred
 * (its turn is later): a million first check-ins take the one thread tens
 * of real seconds to send, every turn given meanwhile would be missed, and
 * the misses cascade.  Real devices each come back on their own; here the
 * due events go first and the herd fills what is left.  1 when it stopped
 * on its budget (more is due).
 */
static int herd_send(struct fleetsim *fs, int *budget)
{
	while (fs->herd_next && fs->dev_active < fs->o.concurrency) {
		if ((*budget)-- <= 0)
			return 1;
		checkin_start(fs, fs->herd_next);
		if (++fs->herd_next == fs->ndev)
			fs->herd_next = 0;
	}
	return 0;
}

/* Pop due events, then send the herd (herd_send); returns 1 when it
 * stopped on its budget (more is due). */
static int process_events(struct fleetsim *fs)
{
	int64_t now = fs_now(fs);
	const struct sim_event *top;
	struct sim_event ev;
	int budget = 20000;

	while ((top = sim_heap_peek(&fs->heap)) && top->at <= now) {
		if (budget-- <= 0)
			return 1;
		if ((top->kind == SIM_EV_POLL || top->kind == SIM_EV_RESUME) &&
		    fs->dev_active >= fs->o.concurrency)
			return 0;
		sim_heap_pop(&fs->heap, &ev);
		switch (ev.kind) {
		case SIM_EV_POLL:
			if (fs->poll_at && fs->poll_at[ev.dev] != ev.at)
				break;          /* a hint brought this poll forward */
			if (fs->dev[ev.dev].flags & SIM_F_BUSY)
				schedule_poll(fs, ev.dev, now + fs->poll_ms);
			else
				checkin_start(fs, ev.dev);
			break;
		case SIM_EV_RESUME:
			download_start(fs, ev.dev);
			break;
		case SIM_EV_HEARTBEAT:
			heartbeat(fs, ev.dev, now, 1);
			break;
		case SIM_EV_BOOT:
			boot_end(fs, ev.dev, now);
			break;
		}
	}
	return herd_send(fs, &budget);
}

static void drain_done(struct fleetsim *fs)
{
	CURLMsg *m;
	int left;

	while ((m = curl_multi_info_read(fs->multi, &left))) {
		struct xfer *x = NULL;
		long st = 0;

		if (m->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&x);
		curl_easy_getinfo(m->easy_handle, CURLINFO_RESPONSE_CODE, &st);
		CURLcode rc = m->data.result;
		fs_xfer_end(fs, x);        /* stays readable until reused below */
		x->busy = 1;
		switch (x->kind) {
		case X_CHECKIN: checkin_done(fs, x, rc, st); break;
		case X_DOWNLOAD: download_done(fs, x, rc, st); break;
		case X_FETCH: fetch_done(fs, x, rc, st); break;
		case X_REPORTS: reports_done(fs, x, rc, st); break;
		}
		fs_xfer_recycle(x);
	}
}

/* --engine core: the report batches' share of a loop pass. */
void fs_reports_tick(struct fleetsim *fs, int force)
{
	int running = 0;

	reports_pump(fs, force);
	curl_multi_perform(fs->multi, &running);
	drain_done(fs);
}

int fs_reports_busy(struct fleetsim *fs)
{
	return fs->npending || fs->qhead < fs->qn || fs->reports_inflight;
}

/* ---- lifecycle ---------------------------------------------------------- */

int fleetsim_new(struct fleetsim **out, const struct fleetsim_opts *o,
		 const struct sim_profile *profile, EVP_PKEY **keys, size_t nkeys)
{
	struct fleetsim *fs = xcalloc(1, sizeof(*fs));
	char *h;
	int rc = 0, v;

	*out = NULL;
	fs->o = *o;
	fs->p = profile;
	if (!fs->o.product)
		fs->o.product = "sensor-node";
	if (!fs->o.start_version)
		fs->o.start_version = "1.0.0";
	if (!fs->o.concurrency)
		fs->o.concurrency = 256;
	if (fs->o.report_every_ms <= 0)
		fs->o.report_every_ms = 3600 * 1000;
	if (!o->url || !o->devices) {
		rc = ota_error_set(OTA_EINVAL, "--url and --devices are required");
		goto out;
	}
	pthread_mutex_init(&fs->mlock, NULL);
	buf_init(&fs->pending, BUF_NOLIMIT);
	sim_imgcache_init(&fs->images, keys, nkeys);
	if ((rc = sim_trust_init(&fs->trust, o->trust_root)) < 0) {
		ota_error_prefix("--trust-root");
		goto out;
	}
	fs->images.enc = o->enc;
	fs->images.nenc = o->nenc;
	fs->rng = sim_mix64(o->seed ^ 0x5eed);
	fs->poll_ms = DEFAULT_POLL_MS;
	fs->base = xstrdup(o->url);
	while (*fs->base && fs->base[strlen(fs->base) - 1] == '/')
		fs->base[strlen(fs->base) - 1] = 0;
	fs->checkin_url = xasprintf("%s/device/v1/checkin", fs->base);
	fs->reports_url = xasprintf("%s/device/v1/reports", fs->base);
	/* the fleet key only registers the devices (fs_register_fleet); requests
	 * carry the devices' own credentials */
	h = xasprintf("Authorization: Bearer %s", o->fleet_key ? o->fleet_key : "");
	fs->hdr_auth = curl_slist_append(NULL, h);
	free(h);
	fs->hdr_json = curl_slist_append(NULL, "Content-Type: application/json");
	fs->hdr_json = curl_slist_append(fs->hdr_json, "Expect:");
	fs->product_json = json_quote(fs->o.product);
	fs->hw_json = xcalloc(profile->hardware.n, sizeof(char *));
	for (size_t k = 0; k < profile->hardware.n; k++)
		fs->hw_json[k] = json_quote(profile->hardware.names[k]);
	fs->bl_json = xcalloc(profile->bootloader.n, sizeof(char *));
	for (size_t k = 0; k < profile->bootloader.n; k++)
		fs->bl_json[k] = json_quote(profile->bootloader.names[k]);
	for (size_t t = 0; t < profile->ntags; t++) {
		fs->tagkey_json[t] = json_quote(profile->tag_keys[t]);
		for (size_t k = 0; k < profile->tags[t].n; k++)
			fs->tag_json[t][k] = json_quote(profile->tags[t].names[k]);
	}
	if ((v = fs_version_idx(fs, fs->o.start_version)) < 0) {
		rc = ota_error_set(OTA_EINVAL, "--start-version: bad version '%s'",
				   fs->o.start_version);
		goto out;
	}
	fs->ndev = o->devices;
	fs->dev = xcalloc(fs->ndev, sizeof(*fs->dev));
	fs->cred = xcalloc(fs->ndev, sizeof(*fs->cred));
	fs->seq = xcalloc(fs->ndev, sizeof(*fs->seq));
	for (uint32_t i = 0; i < fs->ndev; i++) {
		sim_device_init(&fs->dev[i], profile, o->seed, i);
		fs->dev[i].version = (uint16_t)v;
		fs->dev[i].counter = o->start_counter;
		fs_bit_set(fs, &fs->vs[v].ran_bits, i);
	}
	fs->vs[v].devices = fs->ndev;
	fs->vs[v].ever_ran = fs->ndev;
	if (o->push.url && !o->core)
		fs->poll_at = xcalloc(fs->ndev, sizeof(*fs->poll_at));
	if (o->push.url &&
	    (rc = fs_push_start(&fs->push, &o->push, fs->o.product, (const char *const *)profile->hardware.names,
				profile->hardware.n, fs->ndev)))
		goto out;
	fs->multi = curl_multi_init();
	if (!fs->multi) {
		rc = ota_error_set(OTA_ERROR, "curl_multi_init failed");
		goto out;
	}
	curl_multi_setopt(fs->multi, CURLMOPT_MAXCONNECTS, (long)fs->o.concurrency + 16);
	/* one thread drives every transfer: the share needs no lock callbacks */
	if (!(fs->share = curl_share_init()) ||
	    curl_share_setopt(fs->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION) != CURLSHE_OK) {
		rc = ota_error_set(OTA_ERROR, "curl_share_init failed");
		goto out;
	}
	*out = fs;
	fs = NULL;
out:
	fleetsim_free(fs);
	return rc;
}

void fleetsim_free(struct fleetsim *fs)
{
	if (!fs)
		return;
	fs_push_free(fs->push);
	free(fs->poll_at);
	for (size_t k = 0; k < fs->nxs; k++) {
		if (fs->xs[k]->busy) {
			curl_multi_remove_handle(fs->multi, fs->xs[k]->e);
			if (fs->xs[k]->kind == X_FETCH) {
				sim_download_release(&fs->xs[k]->fetch);
				buf_release(&fs->xs[k]->keep);
			}
		}
		curl_easy_cleanup(fs->xs[k]->e);
		curl_slist_free_all(fs->xs[k]->hdrs);
		buf_release(&fs->xs[k]->body);
		buf_release(&fs->xs[k]->req);
		free(fs->xs[k]);
	}
	free(fs->xs);
	if (fs->multi)
		curl_multi_cleanup(fs->multi);
	if (fs->share)
		curl_share_cleanup(fs->share);
	for (uint32_t k = 0; k < fs->ndls; k++)
		if (fs->dls[k]) {
			sim_download_release(fs->dls[k]);
			free(fs->dls[k]);
		}
	free(fs->dls);
	free(fs->dlfree);
	for (size_t k = 0; k < fs->nvs; k++) {
		free(fs->vs[k].offered_bits);
		free(fs->vs[k].offer_at);
		free(fs->vs[k].ran_bits);
		free(fs->vs[k].rates);
	}
	free(fs->vs);
	for (size_t k = fs->qhead; k < fs->qn; k++)
		free(fs->q[k].body);
	free(fs->q);
	buf_release(&fs->pending);
	sim_versions_release(&fs->versions);
	sim_imgcache_release(&fs->images);
	sim_trust_release(&fs->trust);
	sim_heap_release(&fs->heap);
	free(fs->dev);
	free(fs->cred);
	for (uint32_t i = 0; fs->cert && i < fs->ndev; i++) {
		free(fs->cert[i].data);
		if (fs->key[i].data)
			explicit_bzero(fs->key[i].data, fs->key[i].len);
		free(fs->key[i].data);
	}
	free(fs->cert);
	free(fs->key);
	free(fs->seq);
	if (fs->p) {
		for (size_t k = 0; fs->hw_json && k < fs->p->hardware.n; k++)
			free(fs->hw_json[k]);
		for (size_t k = 0; fs->bl_json && k < fs->p->bootloader.n; k++)
			free(fs->bl_json[k]);
		for (size_t t = 0; t < fs->p->ntags; t++) {
			free(fs->tagkey_json[t]);
			for (size_t k = 0; k < fs->p->tags[t].n; k++)
				free(fs->tag_json[t][k]);
		}
	}
	free(fs->hw_json);
	free(fs->bl_json);
	free(fs->product_json);
	curl_slist_free_all(fs->hdr_auth);
	curl_slist_free_all(fs->hdr_json);
	free(fs->base);
	free(fs->checkin_url);
	free(fs->reports_url);
	free(fs->printed);
	free(fs->metrics);
	pthread_mutex_destroy(&fs->mlock);
	free(fs);
}

int fleetsim_run(struct fleetsim *fs, volatile sig_atomic_t *stop)
{
	int64_t deadline;
	int rc = 0;

	if ((rc = fs->o.provisioner ? fs_provision_certs(fs, stop) : fs_register_fleet(fs, stop)) < 0)
		return rc;
	if (fs->o.core)
		return fs_core_run(fs, stop);

	fs->start_real = fs->last_print_real = fs_real_ms();
	fs->last_metrics_real = fs->start_real - METRICS_REAL_MS;
	fs_check_until(fs);
	while (!*stop && !fs->fatal && !fs->until_reached) {
		int64_t rn = fs_real_ms();
		int more = 0, running = 0, timeout = 100;
		const struct sim_event *top;

		if (fs->o.duration_s > 0 && rn - fs->start_real >= (int64_t)(fs->o.duration_s * 1000))
			break;
		if (!fs->time_known && !fs->probe_inflight && rn >= fs->probe_retry_real) {
			fs->probe_inflight = 1;
			checkin_start(fs, 0);
		}
		push_dispatch(fs);
		if (fs->time_known)
			more = process_events(fs);
		reports_pump(fs, 0);
		curl_multi_perform(fs->multi, &running);
		drain_done(fs);
		fs_output_tick(fs, rn);
		if (more) {
			timeout = 0;
		} else if (fs->time_known && (top = sim_heap_peek(&fs->heap))) {
			int64_t now = fs_now(fs);

			if (top->at > now) {
				double wait = (double)(top->at - now) / fs->scale;
				if (wait < timeout)
					timeout = (int)wait + 1;
			}
		}
		if (fs->npending && timeout > REPORT_FLUSH_REAL_MS / 2)
			timeout = REPORT_FLUSH_REAL_MS / 2;
		curl_multi_poll(fs->multi, NULL, 0, timeout, NULL);
	}
	/* drop device requests in flight, send the reports still queued */
	for (size_t k = 0; k < fs->nxs; k++) {
		struct xfer *x = fs->xs[k];

		if (x->busy && x->kind != X_REPORTS) {
			fs_xfer_end(fs, x);
			if (x->kind == X_CHECKIN || x->kind == X_DOWNLOAD)
				fs->dev[x->dev].flags &= (uint8_t)~SIM_F_BUSY;
			fs_xfer_recycle(x);
		}
	}
	deadline = fs_real_ms() + 10000;
	reports_pump(fs, 1);
	while ((fs->qhead < fs->qn || fs->reports_inflight) && fs_real_ms() < deadline) {
		int running = 0;

		curl_multi_perform(fs->multi, &running);
		drain_done(fs);
		reports_pump(fs, 1);
		curl_multi_poll(fs->multi, NULL, 0, 50, NULL);
	}
	fs_print_summary(fs, "final");
	if (fs->o.stats_path && (rc = fs_write_stats(fs)))
		fprintf(stderr, "fleetsim: %s\n", ota_error_last());
	if (fs->fatal && !rc)
		rc = ota_error_set(OTA_EAUTH, "the server refused the fleet's check-ins");
	return rc;
}
