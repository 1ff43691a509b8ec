/*
 * fleet_report.c - device report batches (see fleet.h and
 * docs/update-server.md): validation, seq, credit.
 *
 * A batch is checked in the caller's thread: every report well formed and
 * authenticated as its device's (its credential, the request's, or the
 * client certificate's device) or the whole batch is refused; then each
 * report the fleet's state refuses (unknown device, a version the device
 * may not report about, a seq out of its window) is listed and the rest
 * go on.  A seq already applied is acknowledged, not applied again.  The
 * accepted reports are credited within their device's bounds (uptime,
 * crashes, battery: see fleet_int.h) and queued for fleet_store.c's writer
 * thread, which applies them and commits.
 */
#include "fleet_int.h"
#include "fleet_ca.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../clock.h"

/* ---- reports: validation ------------------------------------------------ */

static const char *const event_names[] = { "download", "install", "boot_ok", "boot_fail", "revert", "heartbeat",
					   "refused" };

static int num_field(const json_t *r, size_t i, const char *name, int integer, int nonneg, double *out)
{
	json_t *v = json_object_get(r, name);
	double x;
	*out = 0;
	if (!v || json_is_null(v))
		return 0;
	if (integer ? !json_is_integer(v) : !json_is_number(v))
		return ota_error_set(OTA_EINVAL, "reports[%zu].%s: must be %s", i, name,
				     integer ? "an integer" : "a number");
	x = json_number_value(v);
	if (!isfinite(x) || (nonneg && x < 0))
		return ota_error_set(OTA_EINVAL, "reports[%zu].%s: must be a finite number >= 0", i, name);
	*out = x;
	return 0;
}

/* Is a report about version v (interned, or NULL: never seen) one d may
 * make: v was offered to it, or it runs v (or ran it just before: a report
 * sent before its check-in with the new version can arrive after it) and v
 * is not a version being rolled out to its product (those count only from
 * devices offered them, so devices cannot join a canary by claiming its
 * version).  Called with exp_lock held for reading and d's shard locked. */
static int report_version_ok(const struct fleet *f, const struct device *d, const char *v)
{
	if (!v)
		return 0;
	if (fleet_vflags_of(d, v) & FL_OFFERED)
		return 1;
	if (d->version != v && d->prev_version != v)
		return 0;
	for (size_t i = 0; i < f->nexp; i++)
		if (f->exp[i]->product == d->product && f->exp[i]->version == v)
			return 0;
	return 1;
}

/* Credit a validated report within its device's bounds (see fleet_int.h):
 * uptime up to the otacd time since the device's previous credit, crashes
 * from the device's bucket (filled by credited uptime), battery up to
 * FLEET_MAX_MA over the credited uptime. */
static void report_credit(struct fleet *f, struct report *rep, int64_t now)
{
	struct device *d = rep->dev;
	struct shard *s = fleet_shard(f, d->hash);
	double avail, up, claimed = (double)rep->crashes, c;

	pthread_mutex_lock(&s->mu);
	if (d->credit_version != rep->version) {
		/* a version's uptime starts when the device reports about it
		 * (the first-seen allowance only for the version it runs) */
		if ((d->credit_version || rep->version != d->version) && d->uptime_until < now)
			d->uptime_until = now;
		d->credit_version = rep->version;
	}
	avail = (double)(now - d->uptime_until) / 1000.0;
	up = rep->uptime_s < avail ? rep->uptime_s : avail > 0 ? avail : 0;
	d->uptime_until += (int64_t)(up * 1000.0);
	d->crash_budget += up / 3600.0 * FLEET_CRASH_PER_HOUR;
	if (d->crash_budget > FLEET_CRASH_BURST)
		d->crash_budget = FLEET_CRASH_BURST;
	c = claimed < d->crash_budget ? claimed : (double)(int64_t)d->crash_budget;
	d->crash_budget -= c;
	pthread_mutex_unlock(&s->mu);
	rep->uptime_s = up;
	rep->crashes = (int64_t)c;
	if (rep->battery_mah > up / 3600.0 * FLEET_MAX_MA)
		rep->battery_mah = up / 3600.0 * FLEET_MAX_MA;
}

/* A report the fleet's state refuses (the rest of its batch goes on). */
static void refuse(json_t **refused, size_t i, int retry, char *first, size_t firstn, const char *fmt, ...)
	OTA_PRINTF(6, 7);
static void refuse(json_t **refused, size_t i, int retry, char *first, size_t firstn, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (!*refused) {
		*refused = json_array();
		snprintf(first, firstn, "%s", msg);
	}
	json_array_append_new(*refused, json_pack("{sI ss sb}", "index", (json_int_t)i, "error", msg, "retry", retry));
}

/* A report's "seq" into *seq (0: none); < 0 when it is not an integer in
 * 1..2^63-1. */
static int report_seq(const json_t *r, uint64_t *seq)
{
	const json_t *v = json_object_get(r, "seq");
	*seq = 0;
	if (!v || json_is_null(v))
		return 0;
	if (!json_is_integer(v) || json_integer_value(v) < 1)
		return -1;
	*seq = (uint64_t)json_integer_value(v);
	return 0;
}

int fleet_report_async(struct fleet *f, const json_t *body, const char *token, int *accepted, json_t **refused,
		       void (*done)(void *ctx, int rc), void *ctx)
{
	return fleet_report_dev_async(f, body, token, NULL, accepted, refused, NULL, done, ctx);
}

int fleet_report_dup_async(struct fleet *f, const json_t *body, const char *token, int *accepted, json_t **refused,
			   json_t **duplicate, void (*done)(void *ctx, int rc), void *ctx)
{
	return fleet_report_dev_async(f, body, token, NULL, accepted, refused, duplicate, done, ctx);
}

int fleet_report_dev_async(struct fleet *f, const json_t *body, const char *token, const char *cert_device,
			   int *accepted, json_t **refused, json_t **duplicate, void (*done)(void *ctx, int rc),
			   void *ctx)
{
	json_t *arr, *r, *dups = NULL;
	struct batch *b = NULL;
	const char *authed_id = NULL, *authed_cred = NULL, *iv;
	char first[512];
	size_t i, n, k;
	int64_t now = clock_now_ms();
	int rc = 0, trusted = token == fleet_trusted_caller, all_refused = 0, ndup = 0;

	*accepted = 0;
	*refused = NULL;
	if (duplicate)
		*duplicate = NULL;
	if (!json_is_object(body) || !json_is_array(arr = json_object_get(body, "reports")))
		return ota_error_set(OTA_EINVAL, "reports: must be a list");
	n = json_array_size(arr);
	if (n > FLEET_MAX_REPORTS)
		return ota_error_set(OTA_EINVAL, "reports: at most %d reports per batch (got %zu)", FLEET_MAX_REPORTS, n);
	b = xcalloc(1, sizeof(*b) + n * sizeof(b->r[0]));
	json_array_foreach(arr, i, r) {
		struct report *rep = &b->r[i];
		const char *id, *ver, *ev, *cred;
		double crashes, x;
		uint64_t h, dseq = 0, dgaps = 0;
		struct shard *s;
		size_t e;
		json_t *v;
		int ok;

		if (!json_is_object(r)) {
			rc = ota_error_set(OTA_EINVAL, "reports[%zu]: must be an object", i);
			goto out;
		}
		if (!(v = json_object_get(r, "device")) || !json_is_string(v) ||
		    !fleet_device_id_valid(id = json_string_value(v))) {
			rc = ota_error_set(OTA_EINVAL, "reports[%zu].device: %s", i,
					   v ? "must be 1..64 characters [A-Za-z0-9._:-]" : "missing");
			goto out;
		}
		/* every report is its device's: its own credential, else the request's */
		v = json_object_get(r, "credential");
		if (v && !json_is_string(v)) {
			rc = ota_error_set(OTA_EINVAL, "reports[%zu].credential: must be a string", i);
			goto out;
		}
		cred = v ? json_string_value(v) : trusted ? NULL : token;
		if (cert_device) { /* issue 13: the client certificate's device, no other */
			if (strcmp(cert_device, id)) {
				fleet_ca_count_wrong_device(f->ca);
				rc = ota_error_set(OTA_EPERM, "reports[%zu]: the client certificate is device '%s''s, not '%s''s",
						   i, cert_device, id);
				goto out;
			}
		} else if ((!trusted || v) && !(authed_id && authed_cred == cred && !strcmp(authed_id, id))) {
			if ((rc = fleet_device_auth(f, id, cred)) < 0) {
				char why[256];
				snprintf(why, sizeof(why), "%s", ota_error_last());
				rc = ota_error_set(OTA_EAUTH, "reports[%zu]: %s", i, why);
				goto out;
			}
			authed_id = id;
			authed_cred = cred;
		}
		if (!(v = json_object_get(r, "version")) || !json_is_string(v) ||
		    !fleet_version_valid(ver = json_string_value(v))) {
			rc = ota_error_set(OTA_EINVAL, "reports[%zu].version: %s", i,
					   v ? "must be a version (1..64 characters [0-9A-Za-z.+_-], starting with a digit)"
					     : "missing");
			goto out;
		}
		if (!(v = json_object_get(r, "event")) || !json_is_string(v)) {
			rc = ota_error_set(OTA_EINVAL, "reports[%zu].event: %s", i, v ? "must be a string" : "missing");
			goto out;
		}
		ev = json_string_value(v);
		for (e = 0; e < OTA_ARRAY_SIZE(event_names) && strcmp(event_names[e], ev); e++)
			;
		if (e == OTA_ARRAY_SIZE(event_names)) {
			rc = ota_error_set(OTA_EINVAL, "reports[%zu].event: unknown event '%.64s'", i, ev);
			goto out;
		}
		if ((rc = num_field(r, i, "at", 1, 1, &x)) < 0 || (rc = num_field(r, i, "uptime_s", 0, 1, &rep->uptime_s)) < 0 ||
		    (rc = num_field(r, i, "crashes", 1, 1, &crashes)) < 0 ||
		    (rc = num_field(r, i, "battery_mah", 0, 1, &rep->battery_mah)) < 0 ||
		    (rc = num_field(r, i, "rssi", 0, 0, &x)) < 0)
			goto out;
		if (rep->uptime_s > FLEET_UPTIME_MAX_S) {
			rc = ota_error_set(OTA_EINVAL, "reports[%zu].uptime_s: at most %.0f (a year) per report", i,
					   FLEET_UPTIME_MAX_S);
			goto out;
		}
		if (crashes > FLEET_CRASHES_MAX) {
			rc = ota_error_set(OTA_EINVAL, "reports[%zu].crashes: at most %d per report", i, FLEET_CRASHES_MAX);
			goto out;
		}
		if (rep->battery_mah > FLEET_UPTIME_MAX_S / 3600.0 * FLEET_MAX_MA) {
			rc = ota_error_set(OTA_EINVAL, "reports[%zu].battery_mah: at most %.0f per report", i,
					   FLEET_UPTIME_MAX_S / 3600.0 * FLEET_MAX_MA);
			goto out;
		}
		rep->crashes = (int64_t)crashes;
		rep->crashed = crashes > 0;
		rep->event = (int)e;
		if (report_seq(r, &rep->seq) < 0) {
			refuse(refused, i, 0, first, sizeof(first),
			       "reports[%zu].seq: must be an integer from 1 to 2^63-1 (the device's report number)", i);
			continue;
		}
		h = fleet_fnv(id, strlen(id), FLEET_FNV_BASIS);
		s = fleet_shard(f, h);
		pthread_rwlock_rdlock(&f->exp_lock);
		pthread_mutex_lock(&s->mu);
		rep->dev = fleet_device_find_locked(s, id, h);
		iv = fleet_intern_find(f, ver);
		ok = rep->dev && (trusted || report_version_ok(f, rep->dev, iv));
		rep->was = rep->dev ? rep->dev->version : NULL;
		dseq = rep->dev ? rep->dev->seq : 0;
		dgaps = rep->dev ? rep->dev->seq_gaps : 0;
		/* a late report about the version it ran before (not offered it
		 * again: a rollback) never moves it back */
		if (rep->dev && iv && rep->dev->prev_version == iv && !(fleet_vflags_of(rep->dev, iv) & FL_OFFERED))
			rep->was = iv;
		pthread_mutex_unlock(&s->mu);
		pthread_rwlock_unlock(&f->exp_lock);
		if (!rep->dev) {
			/* retry: it may not have checked in yet (or that check-in
			 * failed); it checks in, then sends the report again */
			refuse(refused, i, 1, first, sizeof(first),
			       "reports[%zu].device: unknown device '%s' (it must check in first)", i, id);
			continue;
		}
		if (rep->seq && fleet_seq_seen(dseq, dgaps, rep->seq)) {
			/* applied before (its answer was lost): acknowledged,
			 * not applied again (the writer checks once more) */
			if (!dups)
				dups = json_array();
			json_array_append_new(dups, json_integer((json_int_t)i));
			ndup++;
			rep->dev = NULL;
			continue;
		}
		if (dseq && rep->seq > dseq + FLEET_SEQ_AHEAD_MAX) { /* the first sets the base */
			refuse(refused, i, 0, first, sizeof(first),
			       "reports[%zu].seq: %" PRIu64 " is more than %d ahead of device '%s''s last"
			       " applied report (%" PRIu64 ")",
			       i, rep->seq, FLEET_SEQ_AHEAD_MAX, id, dseq);
			rep->dev = NULL;
			continue;
		}
		if (!ok) {
			refuse(refused, i, 0, first, sizeof(first),
			       "reports[%zu].version: device '%s' was not offered %.64s (reports are accepted"
			       " for a version the device was offered, or runs outside a rollout)",
			       i, id, ver);
			rep->dev = NULL;
			continue;
		}
		rep->version = ver; /* interned below, once the batch is known good */
	}
	/* well formed and authenticated: keep the reports the fleet accepts */
	for (i = k = 0; i < n; i++)
		if (b->r[i].dev)
			b->r[k++] = b->r[i];
	if (!k && !ndup && *refused) { /* nothing to record: the first refusal is the answer */
		all_refused = 1;
		rc = ota_error_set(OTA_EINVAL, "%s", first);
		goto out;
	}
	for (i = 0; i < k; i++) {
		b->r[i].version = fleet_intern(f, b->r[i].version, strlen(b->r[i].version));
		if (!trusted)
			report_credit(f, &b->r[i], now);
	}
	n = k;
	b->n = n;
	b->done = done;
	b->ctx = ctx;
	/* duplicates count as accepted (the same answer as the first time);
	 * a batch of only duplicates still waits for a commit */
	*accepted = (int)n + ndup;
	if (duplicate) {
		*duplicate = dups;
		dups = NULL;
	}
	fleet_store_submit(f, b);
	b = NULL;
out:
	free(b);
	json_decref(dups);
	if (rc < 0 && !all_refused) { /* a malformed batch: refused whole, no list */
		json_decref(*refused);
		*refused = NULL;
	}
	return rc;
}

int fleet_report(struct fleet *f, const json_t *body, const char *token, int *accepted)
{
	struct fleet_sync w = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, "" };
	json_t *refused = NULL;
	int rc = fleet_report_async(f, body, token, accepted, &refused, fleet_sync_done, &w);
	json_decref(refused);
	if (rc < 0)
		return rc;
	if ((rc = fleet_sync_finish(&w)) < 0)
		*accepted = 0;
	return rc;
}
