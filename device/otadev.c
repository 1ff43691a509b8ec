/*
 * otadev.c - the update state machine of a device (docs/device.md).
 *
 *   IDLE --offer ok--> DOWNLOADING --all bytes--> INSTALLING --verified,
 *   trailer written--> REBOOTING --bootloader test swap--> TESTING
 *   --self-test ok, image_ok--> IDLE (boot_ok) | --not confirmed--> the
 *   bootloader reverts --> IDLE (revert / boot_fail)
 *
 * What makes it safe against a power cut at any instant:
 *  - the record (struct otadev_record) is written whole or not at all (the
 *    port's persist_write is atomic) and carries a CRC;
 *  - the download's offset is persisted only at sector boundaries, and a
 *    sector is erased before its first byte is written, so a resumed
 *    download rewrites at most one sector;
 *  - the secondary slot's trailer is erased before a download starts and
 *    its boot magic is written last, after the digest, signature, security
 *    counter and hardware checks: the bootloader never sees a pending image
 *    that was not verified;
 *  - the confirm (image_ok in the primary trailer) is written before the
 *    record says IDLE; at start the record is reconciled with what the
 *    slots say (otadev_init), so every report is queued exactly once;
 *  - reports carry a per-device sequence number and stay queued until an
 *    answer acknowledges them.
 *
 * Single-threaded; the caller owns struct otadev.  No heap, no stdio.
 */
#include "otadev.h"
#include "otadev_vcdiff.h"

#include <string.h>

#define RECORD_MAGIC 0x4f544431ul   /* "OTD1" */
#define REPORT_TRIES 5
#define BAD_DOWNLOADS 3

/* ---- small bounded text helpers (no stdio in the core) ------------------- */

struct jw {
	char *p;
	size_t len, cap;
	int over;
};

static void jw_raw(struct jw *w, const char *s)
{
	size_t n = strlen(s);
	if (w->over || n >= w->cap - w->len) {
		w->over = 1;
		return;
	}
	memcpy(w->p + w->len, s, n);
	w->len += n;
	w->p[w->len] = 0;
}

static void jw_u64(struct jw *w, uint64_t v)
{
	char t[24];
	int i = 23;
	t[i] = 0;
	do {
		t[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	jw_raw(w, t + i);
}

/* A JSON string: the protocol's strings never need escapes, anything
 * outside printable ASCII, '"' and '\\' are written as \u00XX. */
static void jw_str(struct jw *w, const char *s)
{
	static const char hex[] = "0123456789abcdef";
	char e[7] = "\\u00";
	jw_raw(w, "\"");
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\') {
			e[4] = hex[c >> 4];
			e[5] = hex[c & 15];
			e[6] = 0;
			jw_raw(w, e);
		} else {
			char one[2];
			one[0] = (char)c;
			one[1] = 0;
			jw_raw(w, one);
		}
	}
	jw_raw(w, "\"");
}

static void copy(char *dst, size_t cap, const char *src)
{
	size_t n = strlen(src);
	if (n >= cap)
		n = cap - 1;
	memcpy(dst, src, n);
	dst[n] = 0;
}

static void say(struct otadev *d, const char *a, const char *b)
{
	struct jw w;
	w.p = d->err;
	w.len = 0;
	w.cap = sizeof(d->err);
	w.over = 0;
	d->err[0] = 0;
	jw_raw(&w, a);
	if (b)
		jw_raw(&w, b);
	if (d->h->log)
		d->h->log(d->ctx, d->err);
}

const char *otadev_phase_name(int phase)
{
	static const char *const n[] = { "idle", "downloading", "installing", "rebooting", "testing" };
	return phase >= 0 && phase <= OTADEV_TESTING ? n[phase] : "?";
}

/* CRC-32 (IEEE, reflected 0xedb88320) four bits at a time: a 64-byte table
 * instead of eight shifts per byte.  The record (~940 bytes) is summed at
 * every save, a few dozen times per download; bit by bit that was 58 % of
 * otacd-fleetsim's CPU with a million devices on this core (perf, issue 15).
 * The sums are the same as before, so records written by older builds load.
 * A 1 KiB byte table would be twice as fast again but costs a Cortex-M 1 KiB
 * of flash. */
static const uint32_t crc_nibble[16] = {
	0x00000000u, 0x1db71064u, 0x3b6e20c8u, 0x26d930acu, 0x76dc4190u, 0x6b6b51f4u, 0x4db26158u, 0x5005713cu,
	0xedb88320u, 0xf00f9344u, 0xd6d6a3e8u, 0xcb61b38cu, 0x9b64c2b0u, 0x86d3d2d4u, 0xa00ae278u, 0xbdbdf21cu,
};

uint32_t otadev_crc32(const void *p, size_t n)
{
	const uint8_t *b = p;
	uint32_t c = 0xffffffffu;
	size_t i;
	for (i = 0; i < n; i++) {
		c ^= b[i];
		c = (c >> 4) ^ crc_nibble[c & 15];
		c = (c >> 4) ^ crc_nibble[c & 15];
	}
	return ~c;
}

/* ---- the record ------------------------------------------------------------ */

static int rec_save(struct otadev *d)
{
	d->rec.magic = RECORD_MAGIC;
	d->rec.size = sizeof(d->rec);
	d->rec.gen++;
	d->rec.crc = otadev_crc32(&d->rec, offsetof(struct otadev_record, crc));
	if (d->h->persist_write(d->ctx, &d->rec, sizeof(d->rec)) < 0) {
		say(d, "persistent state: write failed", NULL);
		return OTADEV_EIO;
	}
	return 0;
}

static int rec_load(struct otadev *d)
{
	int n = d->h->persist_read(d->ctx, &d->rec, sizeof(d->rec));
	if (n != (int)sizeof(d->rec) || d->rec.magic != RECORD_MAGIC || d->rec.size != sizeof(d->rec) ||
	    d->rec.crc != otadev_crc32(&d->rec, offsetof(struct otadev_record, crc)) ||
	    d->rec.phase > OTADEV_TESTING || d->rec.nq > OTADEV_QUEUE) {
		memset(&d->rec, 0, sizeof(d->rec));
		return 0;
	}
	d->rec.version[sizeof(d->rec.version) - 1] = 0;
	d->rec.offer.version[sizeof(d->rec.offer.version) - 1] = 0;
	d->rec.offer.url[sizeof(d->rec.offer.url) - 1] = 0;
	d->rec.offer.hardware[sizeof(d->rec.offer.hardware) - 1] = 0;
	return 1;
}

/* otacd time now, estimated from the last check-in answer (0: unknown). */
static uint64_t server_time(const struct otadev *d, uint64_t now)
{
	if (!d->server_now)
		return 0;
	return d->server_now + (uint64_t)((double)(now - d->server_mono) * d->time_scale);
}

static void queue(struct otadev *d, int event, const char *version, uint32_t uptime_s, uint32_t crashes,
		  uint32_t battery_uah, int rssi)
{
	struct otadev_report *r;
	uint32_t i;

	if (d->rec.nq == OTADEV_QUEUE) {
		/* full: the oldest heartbeat goes first, else the oldest report */
		for (i = 0; i < d->rec.nq && d->rec.q[i].event != OTADEV_EV_HEARTBEAT; i++)
			;
		if (i == d->rec.nq)
			i = 0;
		memmove(&d->rec.q[i], &d->rec.q[i + 1], (d->rec.nq - i - 1) * sizeof(d->rec.q[0]));
		d->rec.nq--;
	}
	r = &d->rec.q[d->rec.nq++];
	memset(r, 0, sizeof(*r));
	r->seq = ++d->rec.next_seq;
	r->event = (uint8_t)event;
	r->uptime_s = uptime_s;
	r->crashes = crashes;
	r->battery_uah = battery_uah;
	r->rssi = (int16_t)rssi;
	r->at = server_time(d, d->h->now_ms(d->ctx));
	copy(r->version, sizeof(r->version), version);
	d->next_report = 0;
}

uint32_t otadev_backoff(const struct otadev *d, uint32_t n)
{
	uint32_t base = d->cfg->backoff_base_ms ? d->cfg->backoff_base_ms : 1000;
	uint32_t max = d->cfg->backoff_max_ms ? d->cfg->backoff_max_ms : 600000;
	uint64_t cap = base;
	while (n-- > 0 && cap < max)
		cap *= 2;
	if (cap > max)
		cap = max;
	return (uint32_t)(d->h->random(d->ctx) % (uint32_t)cap);
}

static void version_of(char *out, size_t cap, const struct otadev_image *img)
{
	struct jw w;
	w.p = out;
	w.len = 0;
	w.cap = cap;
	w.over = 0;
	out[0] = 0;
	jw_u64(&w, img->major);
	jw_raw(&w, ".");
	jw_u64(&w, img->minor);
	jw_raw(&w, ".");
	jw_u64(&w, img->revision);
	if (img->build) {
		jw_raw(&w, "+");
		jw_u64(&w, img->build);
	}
}

/* "1.10.0" vs "1.9.9", per component; <0, 0, >0. */
static int version_cmp(const char *a, const char *b)
{
	while (*a || *b) {
		uint32_t x = 0, y = 0;
		while (*a >= '0' && *a <= '9')
			x = x * 10 + (uint32_t)(*a++ - '0');
		while (*b >= '0' && *b <= '9')
			y = y * 10 + (uint32_t)(*b++ - '0');
		if (x != y)
			return x < y ? -1 : 1;
		if (*a == '.')
			a++;
		if (*b == '.')
			b++;
		if ((*a && (*a < '0' || *a > '9')) || (*b && (*b < '0' || *b > '9')))
			break;
	}
	return 0;
}

static uint32_t usable(const struct otadev *d)
{
	uint32_t t = d->cfg->trailer_size ? d->cfg->trailer_size : 432;
	return d->cfg->slot_size > t ? d->cfg->slot_size - t : 0;
}

/* Erase the sectors of slot 1 that hold the trailer: no stale magic. */
static int erase_trailer(struct otadev *d)
{
	uint32_t ss = d->cfg->sector_size, t = d->cfg->slot_size - usable(d);
	uint32_t start = (d->cfg->slot_size - t) / ss * ss;
	if (d->h->boot_mark && d->h->boot_mark(d->ctx, OTADEV_MARK_CANCEL) < 0)
		return OTADEV_EIO;
	return d->h->flash_erase(d->ctx, 1, start, d->cfg->slot_size - start) < 0 ? OTADEV_EIO : 0;
}

/* The running image's bootloader state: confirmed, on trial (a test boot
 * not confirmed yet), or a test boot of slot 1 still pending (the reboot
 * has not happened).  The boot_testing hook's answer, else MCUboot's
 * trailers: image_ok; a test swap leaves magic and copy_done set. */
static int boot_state(struct otadev *d, int *confirmed, int *on_trial, int *pending)
{
	struct otadev_trailer pt, st;
	int rc;
	if (d->h->boot_testing) {
		if ((rc = d->h->boot_testing(d->ctx)) < 0)
			return OTADEV_EIO;
		*confirmed = rc != 1;
		*on_trial = rc == 1;
		*pending = rc == 2;
		return 0;
	}
	if ((rc = otadev_trailer_read(&pt, d->h, d->ctx, 0, d->cfg->slot_size)) < 0 ||
	    (rc = otadev_trailer_read(&st, d->h, d->ctx, 1, d->cfg->slot_size)) < 0)
		return rc;
	*confirmed = pt.image_ok == OTADEV_FLAG_SET;
	*on_trial = pt.magic == OTADEV_MAGIC_GOOD && pt.copy_done == OTADEV_FLAG_SET && pt.image_ok == OTADEV_FLAG_UNSET;
	*pending = otadev_swap_type(&pt, &st) == OTADEV_SWAP_TEST;
	return 0;
}

/* ---- boot: reconcile the record with the slots ----------------------------- */

static int finish_confirm(struct otadev *d)
{
	copy(d->rec.version, sizeof(d->rec.version), d->rec.offer.version);
	memcpy(d->rec.cur_hash, d->rec.new_hash, 32);
	if (d->rec.new_counter > d->rec.security_counter)
		d->rec.security_counter = d->rec.new_counter;
	d->rec.phase = OTADEV_IDLE;
	d->rec.booted_new = 0;
	memset(d->rec.new_hash, 0, 32);
	queue(d, OTADEV_EV_BOOT_OK, d->rec.version, 0, 0, 0, 0);
	say(d, "confirmed ", d->rec.version);
	return rec_save(d);
}

int otadev_init(struct otadev *d, const struct otadev_hooks *h, void *ctx, const struct otadev_config *cfg)
{
	struct otadev_image img;
	struct otadev_status st;
	int i, rc, loaded, running_new, running_cur, confirmed, on_trial, pending;

	memset(d, 0, sizeof(*d));
	d->h = h;
	d->ctx = ctx;
	d->cfg = cfg;
	d->time_scale = 1.0;
	if (!cfg->sector_size || cfg->slot_size % cfg->sector_size || !usable(d) || cfg->nkeys < 1 ||
	    cfg->nkeys > OTADEV_KEYS_MAX) {
		say(d, "config: slot size must be a multiple of the sector size, with room for the trailer, "
		       "and 1 to 4 keys", NULL);
		return OTADEV_EINVAL;
	}
	for (i = 0; i < cfg->nkeys; i++) {
		struct otadev_key *k = (struct otadev_key *)&cfg->keys[i];
		if (h->sha256_begin(ctx) < 0 || h->sha256_update(ctx, k->der, k->len) < 0 ||
		    h->sha256_end(ctx, k->hash) < 0)
			return OTADEV_EIO;
	}
	loaded = rec_load(d);
	if (loaded && d->rec.phase == OTADEV_DOWNLOADING && d->rec.dl_offset) {
		d->n_downloads_resumed++;
		say(d, "resuming the download at its persisted offset: ", d->rec.offer.version);
	}
	if ((rc = otadev_image_parse(&img, h, ctx, 0, usable(d), (uint8_t *)d->io, sizeof(d->io))) < 0) {
		say(d, "primary slot: no valid MCUboot image", NULL);
		return rc;
	}
	if ((rc = boot_state(d, &confirmed, &on_trial, &pending)) < 0)
		return rc;
	h->status(ctx, &st);
	if (!loaded) {
		/* first start: a confirmed image becomes the current one; one on
		 * a test boot (MCUboot swapped it in before any record existed)
		 * is adopted below, and needs its self-test and confirm first */
		version_of(d->rec.version, sizeof(d->rec.version), &img);
		if (!on_trial) {
			memcpy(d->rec.cur_hash, img.sha256, 32);
			d->rec.security_counter = img.has_counter ? img.security_counter : 0;
		}
		d->rec.last_battery = st.battery_mah_used;
		d->rec.last_crashes = st.crashes;
	}
	running_new = d->rec.phase >= OTADEV_INSTALLING && !memcmp(img.sha256, d->rec.new_hash, 32);
	running_cur = !memcmp(img.sha256, d->rec.cur_hash, 32);
	if (running_new) {
		if (confirmed)
			return finish_confirm(d);   /* confirmed, cut before the record said so */
		if (d->rec.phase != OTADEV_TESTING || !d->rec.booted_new) {
			d->rec.phase = OTADEV_TESTING;
			d->rec.booted_new = 1;
			say(d, "test boot of ", d->rec.offer.version);
			return rec_save(d);
		}
		/* a second start in TESTING without a confirm: MCUboot would have
		 * reverted; with a bootloader that did not, run the self-test again */
		return 0;
	}
	if (running_cur && d->rec.phase == OTADEV_REBOOTING && pending) {
		/* restarted, not rebooted (a crash under a supervisor): the mark
		 * is still there; reboot into it rather than call it a failure */
		say(d, "test boot still pending; rebooting into ", d->rec.offer.version);
		return 0;
	}
	if (running_cur && (d->rec.phase == OTADEV_REBOOTING || d->rec.phase == OTADEV_TESTING)) {
		/* back on the old image: the bootloader refused the new one or reverted it */
		queue(d, d->rec.booted_new ? OTADEV_EV_REVERT : OTADEV_EV_BOOT_FAIL, d->rec.offer.version, 0, 0, 0, 0);
		say(d, d->rec.booted_new ? "reverted from " : "boot failed: ", d->rec.offer.version);
		memcpy(d->rec.refused_sha, d->rec.offer.sha256, 32);
		d->rec.phase = OTADEV_IDLE;
		d->rec.booted_new = 0;
		memset(d->rec.new_hash, 0, 32);
		return rec_save(d);
	}
	if (!running_cur) {
		/* an image the record does not know (first start, a permanent swap or a
		 * reflash): adopt it; a test boot of it still needs its self-test */
		version_of(d->rec.version, sizeof(d->rec.version), &img);
		if (on_trial) {
			memcpy(d->rec.new_hash, img.sha256, 32);
			d->rec.new_counter = img.has_counter ? img.security_counter : 0;
			copy(d->rec.offer.version, sizeof(d->rec.offer.version), d->rec.version);
			memset(d->rec.offer.sha256, 0, 32); /* no offer brought it */
			d->rec.phase = OTADEV_TESTING;
			d->rec.booted_new = 1;
		} else {
			memcpy(d->rec.cur_hash, img.sha256, 32);
			if (img.has_counter && img.security_counter > d->rec.security_counter)
				d->rec.security_counter = img.security_counter;
			d->rec.phase = OTADEV_IDLE;
		}
		return rec_save(d);
	}
	return loaded ? 0 : rec_save(d);
}

/* ---- preconditions ---------------------------------------------------------- */

static int preconditions(struct otadev *d, int download)
{
	struct otadev_status st;
	d->h->status(d->ctx, &st);
	if (!st.external_power && st.battery_pct < d->cfg->min_battery_pct) {
		say(d, "waiting: battery below the threshold and no external power", NULL);
		return 0;
	}
	if (download && d->cfg->avoid_metered && st.metered) {
		say(d, "waiting: the link is metered", NULL);
		return 0;
	}
	return 1;
}

/* ---- check-in --------------------------------------------------------------- */

static int refuse(struct otadev *d, const char *why)
{
	say(d, "refused the offer: ", why);
	d->n_refused++;
	queue(d, OTADEV_EV_REFUSED, d->rec.offer.version, 0, 0, 0, 0);
	memcpy(d->rec.refused_sha, d->rec.offer.sha256, 32);
	d->rec.phase = OTADEV_IDLE;
	return rec_save(d);
}

static int consider_offer(struct otadev *d, const struct otadev_offer *o, int url_too_long)
{
	const char *why = NULL;

	if (!memcmp(o->sha256, d->rec.refused_sha, 32) || !strcmp(o->version, d->rec.version))
		return 0;
	d->rec.offer = *o;
	if (strcmp(o->hardware, d->cfg->hardware))
		why = "image for another hardware variant";
	else if (o->security_counter < d->rec.security_counter)
		why = "lower security counter than the device holds";
	else if (o->min_bootloader[0] && version_cmp(o->min_bootloader, d->cfg->bootloader) > 0)
		why = "needs a newer bootloader";
	else if (o->size > usable(d) || o->size < 64)
		why = "image does not fit the slot";
	else if (url_too_long)
		why = "image URL longer than this build's OTADEV_URL_MAX (a presigned URL: build with a larger one)";
	else if (strncmp(o->url, "/device/v1/images/", 18) && strncmp(o->url, "https://", 8) &&
		 strncmp(o->url, "http://", 7))
		why = "image URL neither on the device API nor absolute (a CDN or object store)";
	if (why)
		return refuse(d, why);
	if (erase_trailer(d) < 0)
		return OTADEV_EIO;
	d->rec.phase = OTADEV_DOWNLOADING;
	d->rec.dl_offset = 0;
	d->rec.bad_tries = 0;
	d->rec.delta_tries = 0;
	d->delta_active = d->delta_used = 0; /* a patch starts over with its offer */
	memset(d->rec.new_hash, 0, 32);
	say(d, "downloading ", o->version);
	return rec_save(d);
}

/* POST the JSON in w to the device API's path as this device; the answer
 * lands in d->io (rs).  The transport hook's result. */
static int post_json(struct otadev *d, const char *path, const struct jw *w, struct otadev_http_resp *rs)
{
	struct otadev_http_req rq;

	memset(&rq, 0, sizeof(rq));
	rq.method = "POST";
	rq.path = path;
	rq.device = d->cfg->device;
	rq.credential = d->cfg->credential;
	rq.body = w->p;
	rq.body_len = w->len;
	rq.range_start = rq.range_end = -1;
	memset(rs, 0, sizeof(*rs));
	rs->body = d->io;
	rs->cap = sizeof(d->io) - 1;
	return d->h->http(d->ctx, &rq, rs);
}

/* issue 15: keep the offer's patch (RAM only) for the image it rebuilds;
 * a new image clears an earlier failure. */
static void remember_delta(struct otadev *d, const struct otadev_checkin *ans)
{
	if (memcmp(d->delta_for, ans->offer.sha256, 32)) {
		memcpy(d->delta_for, ans->offer.sha256, 32);
		d->delta_failed = d->delta_active = 0;
	}
	d->has_delta = ans->has_delta;
	if (ans->has_delta && !d->delta_active)
		d->delta = ans->delta;
}

/*
 * issue 15: a server over its check-in capacity answers 503 with our turn
 * (docs/update-server.md).  Not an error: the backoff exponent stays, and
 * the check-in is retried at a moment picked uniformly in the turn's
 * window (full jitter over it), in real ms through the answer's time
 * scale, never later than one poll interval or the backoff's cap.  A 503
 * without a turn is an error as before (exponential backoff, full jitter).
 * 1 when deferred.
 */
static int deferred(struct otadev *d, uint64_t now, const struct otadev_http_resp *rs)
{
	struct otadev_defer df;
	uint64_t wait, cap;

	if (otadev_defer_parse(&df, rs->body, rs->len, d->tokens, OTADEV_TOKENS) < 0)
		return 0;
	wait = df.retry_after_ms + (df.window_ms ? d->h->random(d->ctx) % df.window_ms : 0);
	wait = (uint64_t)((double)wait / df.time_scale);
	cap = d->cfg->poll_ms ? d->cfg->poll_ms : 3600000u;
	if (d->cfg->backoff_max_ms > cap)
		cap = d->cfg->backoff_max_ms;
	if (wait > cap)
		wait = cap;
	d->next_checkin = d->deferred_until = now + (wait ? wait : 1);
	d->turn = df.turn;
	d->n_deferred++;
	say(d, "check-in deferred: the server is over capacity", NULL);
	return 1;
}

static int checkin(struct otadev *d, uint64_t now)
{
	struct otadev_http_resp rs;
	struct otadev_checkin ans;
	struct jw w;
	int rc;

	w.p = d->io2;
	w.len = 0;
	w.cap = sizeof(d->io2);
	w.over = 0;
	jw_raw(&w, "{\"device\":");
	jw_str(&w, d->cfg->device);
	jw_raw(&w, ",\"product\":");
	jw_str(&w, d->cfg->product);
	jw_raw(&w, ",\"hardware\":");
	jw_str(&w, d->cfg->hardware);
	jw_raw(&w, ",\"bootloader\":");
	jw_str(&w, d->cfg->bootloader);
	jw_raw(&w, ",\"version\":");
	jw_str(&w, d->rec.version);
	jw_raw(&w, ",\"security_counter\":");
	jw_u64(&w, d->rec.security_counter);
	jw_raw(&w, d->rec.phase == OTADEV_TESTING ? ",\"slot\":\"testing\"" : ",\"slot\":\"confirmed\"");
	if (d->cfg->tags && d->cfg->tags[0]) {
		jw_raw(&w, ",\"tags\":{");
		jw_raw(&w, d->cfg->tags);
		jw_raw(&w, "}");
	}
	if (d->turn) { /* back at the turn a server over capacity gave */
		jw_raw(&w, ",\"turn\":");
		jw_u64(&w, d->turn);
	}
	jw_raw(&w, "}");
	if (w.over)
		return OTADEV_ENOSPC;
	d->n_checkins++;
	rc = post_json(d, "/device/v1/checkin", &w, &rs);
	if (rc == 0 && rs.status == 503 && deferred(d, now, &rs))
		return OTADEV_ENET;
	if (rc < 0 || rs.status != 200 ||
	    otadev_checkin_parse(&ans, rs.body, rs.len, d->tokens, OTADEV_TOKENS) < 0) {
		d->errors++;
		d->next_checkin = now + otadev_backoff(d, d->errors);
		say(d, "check-in failed; backing off", NULL);
		return OTADEV_ENET;
	}
	d->errors = 0;
	d->turn = 0;
	d->checked_in = 1;
	d->crl_announced = ans.revocations > 0xffffffffu ? 0xffffffffu : (uint32_t)ans.revocations;
	d->server_now = ans.now;
	d->server_mono = now;
	d->time_scale = ans.time_scale;
	if (ans.next_poll_ms) {
		uint64_t real = (uint64_t)((double)ans.next_poll_ms / ans.time_scale);
		d->next_checkin = now + (real < 50 ? 50 : real);
	} else {
		uint32_t p = d->cfg->poll_ms ? d->cfg->poll_ms : 3600000u;
		/* our own jitter: +-10 % */
		d->next_checkin = now + p - p / 10 + d->h->random(d->ctx) % (p / 5 + 1);
	}
	rc = 0;
	if (ans.has_offer)
		remember_delta(d, &ans);
	if (d->rec.phase == OTADEV_IDLE && ans.has_offer)
		rc = consider_offer(d, &ans.offer, ans.url_too_long);
	else if (d->rec.phase == OTADEV_DOWNLOADING && ans.has_offer && !ans.url_too_long &&
		 !memcmp(ans.offer.sha256, d->rec.offer.sha256, 32) && strcmp(ans.offer.url, d->rec.offer.url)) {
		/* the same image at a new URL (a presigned URL renewed at each
		 * check-in): the rest of the download goes there, before the old
		 * one expires; saved with the next sector */
		copy(d->rec.offer.url, sizeof(d->rec.offer.url), ans.offer.url);
	} else if (d->rec.phase == OTADEV_DOWNLOADING &&
		 (!ans.has_offer || memcmp(ans.offer.sha256, d->rec.offer.sha256, 32))) {
		/* a halt withdrew the offer (or a newer one replaced it): drop the download */
		say(d, "offer withdrawn; download dropped: ", d->rec.offer.version);
		d->rec.phase = OTADEV_IDLE;
		rc = rec_save(d);
		if (rc == 0 && ans.has_offer)
			rc = consider_offer(d, &ans.offer, ans.url_too_long);
	}
	return rc;
}

/* ---- delta download (issue 15) ------------------------------------------------- *
 *
 * The patch is read through the decoder's three cursors (a window's data,
 * instruction and address sections), each refill one Range GET of
 * OTADEV_VCDIFF_BUF bytes, so each patch byte crosses the network about
 * once.  The output goes in order into slot 1, each sector erased when the
 * output reaches its start.  Only the attempt count is persisted
 * (rec.delta_tries): a restart or a network error starts the patch again
 * (it is small), DELTA_TRIES starts without success and any failure of the
 * patch itself fall back to the full image, whose download resumes per
 * sector.  The result is verified by install() exactly as a full
 * download: the offer's digest of the whole file first. */

#define DELTA_TRIES 3

static int delta_patch_read(void *ctx, uint32_t off, uint8_t *buf, size_t len)
{
	struct otadev *d = ctx;
	struct otadev_http_req rq;
	struct otadev_http_resp rs;

	memset(&rq, 0, sizeof(rq));
	rq.method = "GET";
	rq.path = d->delta.url;
	rq.device = d->cfg->device;
	rq.credential = d->cfg->credential;
	rq.range_start = (long)off;
	rq.range_end = (long)(off + len - 1);
	memset(&rs, 0, sizeof(rs));
	rs.body = d->io2;
	rs.cap = sizeof(d->io2);
	if (len > sizeof(d->io2))
		return -1;
	if (d->h->http(d->ctx, &rq, &rs) < 0 || rs.status == 0 || rs.status >= 500) {
		d->delta_net_err = 1;
		return -1;
	}
	if ((rs.status != 206 && rs.status != 200) || rs.len != len ||
	    (rs.range_total >= 0 && (uint32_t)rs.range_total != d->delta.size))
		return -1; /* gone, or not the patch offered: fall back */
	d->bytes_delta += len;
	memcpy(buf, d->io2, len);
	return 0;
}

static int delta_source_read(void *ctx, uint32_t off, uint8_t *buf, size_t len)
{
	struct otadev *d = ctx;
	return d->h->flash_read(d->ctx, 0, off, buf, (uint32_t)len);
}

static int delta_target_read(void *ctx, uint32_t off, uint8_t *buf, size_t len)
{
	struct otadev *d = ctx;
	return d->h->flash_read(d->ctx, 1, off, buf, (uint32_t)len);
}

static int delta_target_write(void *ctx, uint32_t off, const uint8_t *buf, size_t len)
{
	struct otadev *d = ctx;
	uint32_t ss = d->cfg->sector_size, s = (off + ss - 1) / ss * ss;

	for (; s < off + len; s += ss)
		if (d->h->flash_erase(d->ctx, 1, s, ss) < 0)
			return -1;
	return d->h->flash_write(d->ctx, 1, off, buf, (uint32_t)len);
}

static const struct otadev_vcdiff_io delta_io = { delta_patch_read, delta_source_read, delta_target_read,
						  delta_target_write, NULL };

/* Whether the offer's patch applies here: it rebuilds the offered image
 * from the image running, the decoder fits the work buffer, and it has
 * not failed for this image. */
static int delta_usable(const struct otadev *d)
{
	return d->has_delta && !d->delta_failed && d->rec.delta_tries < DELTA_TRIES && !memcmp(d->delta_for, d->rec.offer.sha256, 32) &&
	       !memcmp(d->delta.base, d->rec.cur_hash, 32) && d->delta.size < d->rec.offer.size &&
	       d->cfg->work && d->cfg->work_len >= sizeof(struct otadev_vcdiff) &&
	       (uintptr_t)d->cfg->work % sizeof(uint64_t) == 0 &&
	       (!strncmp(d->delta.url, "/device/v1/", 11) || !strncmp(d->delta.url, "https://", 8) ||
		!strncmp(d->delta.url, "http://", 7));
}

static void delta_fall_back(struct otadev *d, const char *why)
{
	say(d, "delta update failed; fetching the full image: ", why);
	d->delta_failed = 1;
	d->delta_active = d->delta_used = 0;
	d->n_delta_fallbacks++;
	d->rec.dl_offset = 0;
}

static int download_delta(struct otadev *d, uint64_t now)
{
	struct otadev_vcdiff *v = (struct otadev_vcdiff *)(void *)d->cfg->work;
	struct otadev_vcdiff_io io = delta_io;
	int rc;

	io.ctx = d;
	if (!d->delta_active) {
		if (d->rec.delta_tries >= DELTA_TRIES) {
			delta_fall_back(d, "too many interrupted attempts");
			return 0;
		}
		/* an encrypted running image: the server's copy of the base is
		 * ciphertext, this slot holds the bootloader's clear copy */
		if ((rc = otadev_slot_encrypted(d->h, d->ctx, 0)) != 0) {
			if (rc < 0)
				return rc;
			delta_fall_back(d, "the running image is encrypted: no patch applies to its clear copy");
			return 0;
		}
		d->rec.delta_tries++;
		if ((rc = rec_save(d)) < 0)
			return rc;
		otadev_vcdiff_begin(v, &io, d->delta.size, usable(d), usable(d), 0, 0);
		d->delta_active = 1;
		say(d, "applying a delta to ", d->rec.offer.version);
	}
	v->io = &io;              /* io lives on this frame: set again each step */
	d->delta_net_err = 0;
	rc = otadev_vcdiff_step(v);
	v->io = NULL;
	/* an encrypted image is ciphertext under a fresh key: a patch would
	 * rebuild it from the clear primary, so it is never one to apply
	 * (otacd makes none; this refuses one a server offered anyway) */
	if (rc >= 0 && v->out_off >= 20 && otadev_slot_encrypted(d->h, d->ctx, 1) == 1) {
		delta_fall_back(d, "the offered image is encrypted: a patch cannot rebuild ciphertext");
		return 0;
	}
	if (rc > 0)
		return 0;
	if (rc == 0 && v->out_off == d->rec.offer.size) {
		d->delta_active = 0;
		d->delta_used = 1;
		d->errors = 0;
		d->rec.dl_offset = d->rec.offer.size;
		d->rec.phase = OTADEV_INSTALLING;
		return rec_save(d);
	}
	if (rc < 0 && d->delta_net_err) {
		d->delta_active = 0;
		d->errors++;
		d->next_work = now + otadev_backoff(d, d->errors);
		say(d, "delta: no answer; backing off", NULL);
		return OTADEV_ENET;
	}
	delta_fall_back(d, rc == 0 ? "patch output is not the offered size" : v->err);
	return 0;
}

/* ---- download ----------------------------------------------------------------- */

static int download_sector(struct otadev *d, uint64_t now)
{
	struct otadev_http_req rq;
	struct otadev_http_resp rs;
	uint32_t off = d->rec.dl_offset, ss = d->cfg->sector_size, end, n;

	if (off == 0 && (d->delta_active || delta_usable(d)))
		return download_delta(d, now);

	if (off >= d->rec.offer.size) {
		d->rec.phase = OTADEV_INSTALLING;
		return rec_save(d);
	}
	if (off && off % ss) {          /* never: offsets are persisted per sector */
		off -= off % ss;
		d->rec.dl_offset = off;
	}
	end = off + ss < d->rec.offer.size ? off + ss : d->rec.offer.size;
	if (d->h->flash_erase(d->ctx, 1, off, ss) < 0)
		return OTADEV_EIO;
	memset(&rq, 0, sizeof(rq));
	rq.method = "GET";
	rq.path = d->rec.offer.url;
	rq.device = d->cfg->device;
	rq.credential = d->cfg->credential;
	while (off < end) {
		n = end - off < sizeof(d->io) ? end - off : (uint32_t)sizeof(d->io);
		rq.range_start = (long)off;
		rq.range_end = (long)(off + n - 1);
		memset(&rs, 0, sizeof(rs));
		rs.body = d->io;
		rs.cap = sizeof(d->io);
		if (d->h->http(d->ctx, &rq, &rs) < 0 || rs.status == 0 || rs.status >= 500) {
			d->errors++;
			d->next_work = now + otadev_backoff(d, d->errors);
			say(d, "download: no answer; backing off", NULL);
			return OTADEV_ENET;
		}
		if (rs.status == 410 || rs.status == 403 || rs.status == 404) {
			say(d, "download: the image is gone (halted or withdrawn): ", d->rec.offer.version);
			d->rec.phase = OTADEV_IDLE;
			return rec_save(d);
		}
		if ((rs.status != 206 && rs.status != 200) || rs.len != n ||
		    (rs.range_total >= 0 && (uint32_t)rs.range_total != d->rec.offer.size)) {
			d->errors++;
			d->next_work = now + otadev_backoff(d, d->errors);
			say(d, "download: unexpected answer", NULL);
			return OTADEV_ENET;
		}
		if (d->h->flash_write(d->ctx, 1, off, d->io, n) < 0)
			return OTADEV_EIO;
		d->bytes_full += n;
		off += n;
	}
	d->errors = 0;
	d->rec.dl_offset = end;
	if (end >= d->rec.offer.size)
		d->rec.phase = OTADEV_INSTALLING;
	return rec_save(d);
}

/* ---- verify and install ------------------------------------------------------- */

static int install(struct otadev *d)
{
	struct otadev_image img;
	const char *why = "";
	uint8_t digest[32];
	uint32_t pos = 0, n, counter;
	int rc;

	/* 1. the file's digest: what the server offered (transit corruption) */
	if (d->h->sha256_begin(d->ctx) < 0)
		return OTADEV_EIO;
	while (pos < d->rec.offer.size) {
		n = d->rec.offer.size - pos < sizeof(d->io) ? d->rec.offer.size - pos : (uint32_t)sizeof(d->io);
		if (d->h->flash_read(d->ctx, 1, pos, d->io, n) < 0 || d->h->sha256_update(d->ctx, d->io, n) < 0) {
			d->h->sha256_end(d->ctx, digest);
			return OTADEV_EIO;
		}
		pos += n;
	}
	if (d->h->sha256_end(d->ctx, digest) < 0)
		return OTADEV_EIO;
	if (memcmp(digest, d->rec.offer.sha256, 32) && d->delta_used) {
		/* the patch rebuilt something else (wrong base, bad patch) */
		delta_fall_back(d, "the rebuilt image's digest does not match the offer");
		d->rec.phase = OTADEV_DOWNLOADING;
		return rec_save(d);
	}
	if (!memcmp(digest, d->rec.offer.sha256, 32) && d->delta_used) {
		d->delta_used = 0;
		d->n_delta_applied++;
	}
	if (memcmp(digest, d->rec.offer.sha256, 32)) {
		if (++d->rec.bad_tries < BAD_DOWNLOADS) {
			say(d, "download digest mismatch; downloading again: ", d->rec.offer.version);
			d->rec.phase = OTADEV_DOWNLOADING;
			d->rec.dl_offset = 0;
			return rec_save(d);
		}
		return refuse(d, "image digest does not match the offer");
	}
	/* 2. MCUboot structure, hash and signature by a trusted key */
	rc = otadev_image_parse(&img, d->h, d->ctx, 1, d->rec.offer.size, (uint8_t *)d->io, sizeof(d->io));
	if (rc == OTADEV_EIO)
		return rc;
	if (rc < 0 || img.tlv_end > d->rec.offer.size)
		return refuse(d, "not a well-formed MCUboot image");
	if (d->cfg->anchor_len) {
		/* issue 13: the key is the release's certified signing key
		 * (otadev_chain.c), and one of the bootloader's key slots */
		struct otadev_key leaf;
		uint8_t leaf_der[128];
		int i;
		rc = otadev_chain_verify(d, &leaf, leaf_der, sizeof(leaf_der), &why);
		if (rc == OTADEV_ENET) {
			d->errors++;
			d->next_work = d->h->now_ms(d->ctx) + otadev_backoff(d, d->errors);
			say(d, "signing chain: the server did not answer; backing off", NULL);
			return rc;
		}
		if (rc == 0)
			rc = otadev_image_verify(&img, d->h, d->ctx, 1, &leaf, 1, (uint8_t *)d->io, sizeof(d->io), &why);
		for (i = 0; rc == 0 && i < d->cfg->nkeys && memcmp(d->cfg->keys[i].hash, leaf.hash, 32); i++)
			;
		if (rc == 0 && i == d->cfg->nkeys) {
			why = "the bootloader holds no slot for signing key: installing would brick";
			rc = OTADEV_EVERIFY;
		}
	} else {
		rc = otadev_image_verify(&img, d->h, d->ctx, 1, d->cfg->keys, d->cfg->nkeys, (uint8_t *)d->io,
					 sizeof(d->io), &why);
	}
	if (rc == OTADEV_EIO)
		return rc;
	if (rc < 0)
		return refuse(d, why);
	/* 3. the signed security counter, 4. the hardware variant */
	counter = img.has_counter ? img.security_counter : 0;
	if (counter < d->rec.security_counter)
		return refuse(d, "image carries a lower security counter than the device holds");
	if (strcmp(d->rec.offer.hardware, d->cfg->hardware))
		return refuse(d, "image for another hardware variant");
	if (!memcmp(img.sha256, d->rec.cur_hash, 32))
		return refuse(d, "image is the one running");
	/* verified: remember it (queue `download` once), then the trailer, magic last */
	if (memcmp(d->rec.new_hash, img.sha256, 32)) {
		memcpy(d->rec.new_hash, img.sha256, 32);
		d->rec.new_counter = counter;
		queue(d, OTADEV_EV_DOWNLOAD, d->rec.offer.version, 0, 0, 0, 0);
		if ((rc = rec_save(d)) < 0)
			return rc;
	}
	if (!preconditions(d, 0))
		return 1;
	if (d->h->boot_mark ? d->h->boot_mark(d->ctx, OTADEV_MARK_TEST) < 0
			    : otadev_trailer_set_pending(d->h, d->ctx, d->cfg->slot_size, 0) < 0)
		return OTADEV_EIO;
	d->rec.phase = OTADEV_REBOOTING;
	d->rec.booted_new = 0;
	queue(d, OTADEV_EV_INSTALL, d->rec.offer.version, 0, 0, 0, 0);
	if ((rc = rec_save(d)) < 0)
		return rc;
	say(d, "installed for a test boot; rebooting: ", d->rec.offer.version);
	d->reboot_requested = 1;
	d->h->reboot(d->ctx);
	return 0;
}

/* ---- reports ---------------------------------------------------------------- */

static void heartbeat(struct otadev *d, uint64_t now)
{
	struct otadev_status st;
	uint64_t up = (uint64_t)((double)(now - d->last_heartbeat) * d->time_scale / 1000.0);
	d->h->status(d->ctx, &st);
	queue(d, OTADEV_EV_HEARTBEAT, d->rec.version, up > 0xffffffffu ? 0xffffffffu : (uint32_t)up,
	      st.crashes - d->rec.last_crashes, (st.battery_mah_used - d->rec.last_battery) * 1000u, st.rssi);
	d->rec.last_crashes = st.crashes;
	d->rec.last_battery = st.battery_mah_used;
	d->last_heartbeat = now;
	rec_save(d);
}

static void drop(struct otadev *d, uint32_t i)
{
	memmove(&d->rec.q[i], &d->rec.q[i + 1], (d->rec.nq - i - 1) * sizeof(d->rec.q[0]));
	d->rec.nq--;
}

static int send_reports(struct otadev *d, uint64_t now)
{
	struct otadev_http_resp rs;
	uint32_t n = d->rec.nq, i, accepted, retry, dropm;
	struct jw w;
	int rc;

	w.p = d->io2;
	w.len = 0;
	w.cap = sizeof(d->io2);
	w.over = 0;
	jw_raw(&w, "{\"reports\":[");
	for (i = 0; i < n; i++) {
		const struct otadev_report *r = &d->rec.q[i];
		size_t mark = w.len;
		jw_raw(&w, i ? ",{\"device\":" : "{\"device\":");
		jw_str(&w, d->cfg->device);
		jw_raw(&w, ",\"version\":");
		jw_str(&w, r->version);
		jw_raw(&w, ",\"event\":\"");
		jw_raw(&w, otadev_event_name(r->event));
		jw_raw(&w, "\",\"seq\":");
		jw_u64(&w, r->seq);
		if (r->at) {
			jw_raw(&w, ",\"at\":");
			jw_u64(&w, r->at);
		}
		if (r->event == OTADEV_EV_HEARTBEAT) {
			jw_raw(&w, ",\"uptime_s\":");
			jw_u64(&w, r->uptime_s);
			jw_raw(&w, ",\"crashes\":");
			jw_u64(&w, r->crashes);
			jw_raw(&w, ",\"battery_mah\":");
			jw_u64(&w, r->battery_uah / 1000);
			jw_raw(&w, ".");
			jw_u64(&w, r->battery_uah % 1000 / 100);
			jw_raw(&w, ",\"rssi\":");
			if (r->rssi < 0) {
				jw_raw(&w, "-");
				jw_u64(&w, (uint64_t)(-r->rssi));
			} else {
				jw_u64(&w, (uint64_t)r->rssi);
			}
		}
		jw_raw(&w, "}");
		if (w.over) {           /* send what fits; the rest next time */
			w.over = 0;
			w.len = mark;
			n = i;
			break;
		}
	}
	jw_raw(&w, "]}");
	if (w.over || n == 0)
		return OTADEV_ENOSPC;
	rc = post_json(d, "/device/v1/reports", &w, &rs);
	d->n_reports_sent += n;
	if (rc < 0 || rs.status == 0 || rs.status >= 500 || rs.status == 401 || rs.status == 403 ||
	    rs.status == 429) {
		/* no acknowledgement: everything stays queued, same sequence numbers */
		d->report_errors++;
		d->next_report = now + otadev_backoff(d, d->report_errors);
		say(d, "reports not acknowledged; will send them again", NULL);
		return OTADEV_ENET;
	}
	d->report_errors = 0;
	/* 200: acknowledged, except refusals marked retry; 400 with a refused
	 * list: the same; any other 4xx, or a 400 without one, refused the batch
	 * whole as malformed: resending it cannot help */
	if (otadev_reports_parse(&accepted, &retry, &dropm, rs.body, rs.len, d->tokens, OTADEV_TOKENS) < 0 ||
	    (rs.status != 200 && (rs.status != 400 || (!retry && !dropm)))) {
		say(d, "report batch refused as malformed; dropped", NULL);
		retry = 0;
	}
	for (i = n; i-- > 0;) {
		if (retry & (1u << i)) {
			if (++d->rec.q[i].tries >= REPORT_TRIES)
				drop(d, i);
		} else {
			drop(d, i);         /* acknowledged (or refused for good) */
		}
	}
	if (retry)
		d->next_report = now + otadev_backoff(d, 1);
	return rec_save(d);
}

void otadev_nudge(struct otadev *d, uint32_t delay_ms)
{
	uint64_t at = d->h->now_ms(d->ctx) + delay_ms;
	if (!d->errors && at < d->next_checkin && at >= d->deferred_until)
		d->next_checkin = at;
}

/* ---- a test boot under revocation ---------------------------------------------- *
 *
 * With an anchor, the signing key of an image on trial may be revoked
 * between its verification and its confirm (the root's list published
 * while the device rebooted into it).  So a test boot is confirmed only
 * after a check-in of this boot; when that check-in announces a newer
 * revocation list than the one the image was verified with, the chain is
 * checked again against it (otadev_chain_verify, as at install).  A
 * refused image is left unconfirmed: the device reboots and the
 * bootloader reverts it.  The refusal is kept in the record (refused_sha
 * is the trial's image), so a restart without the reboot does not confirm
 * it either.  While check-ins fail the image stays on trial (a power cut
 * then reverts it): no confirm without hearing from the server.
 */

static int trial_refused(const struct otadev *d)
{
	static const uint8_t none[32];
	return memcmp(d->rec.offer.sha256, none, 32) && !memcmp(d->rec.offer.sha256, d->rec.refused_sha, 32);
}

static uint32_t until(uint64_t now, uint64_t at)
{
	return at > now ? (at - now > 0x7fffffffu ? 0x7fffffffu : (uint32_t)(at - now)) : 0;
}

/* 1: the trial may be confirmed (after its self-test); 2: refused, reboot
 * unconfirmed; 0: not yet (*wait_ms); <0: a hook failed. */
static int trial_trusted(struct otadev *d, uint64_t now, uint32_t *wait_ms)
{
	static const uint8_t none[32];
	struct otadev_key leaf;
	uint8_t leaf_der[128];
	const char *why = "";
	int rc;

	if (trial_refused(d))
		return 2;
	if (!d->cfg->anchor_len || !memcmp(d->rec.offer.sha256, none, 32))
		return 1;          /* no chain to check, or an image no offer brought (adopted) */
	if (!d->checked_in) {
		if (now < d->next_checkin) {
			*wait_ms = until(now, d->next_checkin);
			return 0;
		}
		rc = checkin(d, now);
		*wait_ms = 0;
		return rc == OTADEV_ENET || rc >= 0 ? 0 : rc;
	}
	if (d->crl_announced <= d->rec.crl_number)
		return 1;          /* no list newer than the one the image was verified with */
	if (now < d->next_work) {
		*wait_ms = until(now, d->next_work);
		return 0;
	}
	rc = otadev_chain_verify(d, &leaf, leaf_der, sizeof(leaf_der), &why);
	if (rc == OTADEV_ENET) {
		d->errors++;
		d->next_work = now + otadev_backoff(d, d->errors);
		*wait_ms = until(now, d->next_work);
		say(d, "test boot: the revocation list or manifest did not come; backing off", NULL);
		return 0;
	}
	if (rc == OTADEV_EIO)
		return rc;
	if (rc == 0)
		return rec_save(d) < 0 ? OTADEV_EIO : 1; /* the newer list's number kept */
	memcpy(d->rec.refused_sha, d->rec.offer.sha256, 32);
	if (rec_save(d) < 0)
		return OTADEV_EIO;
	say(d, "test boot not confirmed, the bootloader reverts it: ", why);
	return 2;
}

/* ---- the step ------------------------------------------------------------------- */

int otadev_step(struct otadev *d, uint32_t *wait_ms)
{
	uint64_t now = d->h->now_ms(d->ctx), next;
	int rc = 0;

	*wait_ms = 1000;
	if (d->reboot_requested)
		return 0;
	if (!d->last_heartbeat)
		d->last_heartbeat = now ? now : 1;
	if (d->rec.phase == OTADEV_TESTING) {
		int trusted = trial_trusted(d, now, wait_ms);
		if (trusted <= 0)
			return trusted;
		if (trusted == 1 && d->h->selftest(d->ctx) == 0) {
			if (d->h->boot_mark)
				rc = d->h->boot_mark(d->ctx, OTADEV_MARK_CONFIRM) < 0 ? OTADEV_EIO : 0;
			else
				rc = otadev_trailer_confirm(d->h, d->ctx, d->cfg->slot_size);
			if (rc < 0)
				return rc;
			rc = finish_confirm(d);
		} else {
			/* not confirmed: the bootloader reverts at the next boot */
			if (trusted == 1)
				say(d, "self-test failed; rebooting into the previous image: ", d->rec.offer.version);
			d->reboot_requested = 1;
			d->h->reboot(d->ctx);
		}
		*wait_ms = 0;
		return rc;
	}
	if (d->rec.phase == OTADEV_REBOOTING) {
		d->reboot_requested = 1;
		d->h->reboot(d->ctx);
		return 0;
	}
	if (d->cfg->heartbeat_ms && now - d->last_heartbeat >= d->cfg->heartbeat_ms)
		heartbeat(d, now);
	if (d->rec.nq && d->checked_in && now >= d->next_report) {
		rc = send_reports(d, now);
		*wait_ms = 0;
		return rc == OTADEV_ENET ? 0 : rc;
	}
	if (now >= d->next_checkin) {
		rc = checkin(d, now);
		*wait_ms = 0;
		return rc == OTADEV_ENET ? 0 : rc;
	}
	if ((d->rec.phase == OTADEV_DOWNLOADING || d->rec.phase == OTADEV_INSTALLING) && now >= d->next_work) {
		uint32_t pw = d->cfg->precondition_wait_ms ? d->cfg->precondition_wait_ms : 60000;
		if (!preconditions(d, d->rec.phase == OTADEV_DOWNLOADING)) {
			d->next_work = now + pw;
			*wait_ms = pw;
			return 0;
		}
		rc = d->rec.phase == OTADEV_DOWNLOADING ? download_sector(d, now) : install(d);
		if (rc == 1) {
			d->next_work = now + pw;
			*wait_ms = pw;
			return 0;
		}
		*wait_ms = 0;
		return rc == OTADEV_ENET ? 0 : rc;
	}
	next = d->next_checkin;
	if ((d->rec.phase == OTADEV_DOWNLOADING || d->rec.phase == OTADEV_INSTALLING) && d->next_work < next)
		next = d->next_work;
	if (d->rec.nq && d->checked_in && d->next_report < next)
		next = d->next_report;
	if (d->cfg->heartbeat_ms && d->last_heartbeat + d->cfg->heartbeat_ms < next)
		next = d->last_heartbeat + d->cfg->heartbeat_ms;
	*wait_ms = next > now ? (next - now > 0x7fffffffu ? 0x7fffffffu : (uint32_t)(next - now)) : 0;
	return 0;
}
