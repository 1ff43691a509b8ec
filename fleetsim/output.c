/*
 * output.c - what otacd-fleetsim says about its fleet: the summary lines,
 * the Prometheus text served on --metrics-listen, and the stats file.
 *
 * Why apart from run.c: the loop only counts; turning counts into text is
 * a separate concern with its own formats (docs/fleetsim.md).
 *
 * How: every loop pass calls fs_output_tick with the real time.  Once per
 * METRICS_REAL_MS it rebuilds the Prometheus text and swaps it in under
 * `mlock` for the HTTP thread (fleetsim_metrics_snapshot copies it out);
 * a summary line (devices per version, in version order) is printed when
 * a version's count moved by 1% of the fleet or every SUMMARY_REAL_MS.
 * At the end, fs_write_stats writes the counters and per-version figures
 * as JSON.
 */
#include "run_int.h"

#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SUMMARY_REAL_MS 10000

static int cmp_vidx(const void *a, const void *b, void *ctx)
{
	struct fleetsim *fs = ctx;

	return sim_version_cmp(fs->versions.names[*(const int *)a],
			       fs->versions.names[*(const int *)b]);
}

static int *sorted_versions(struct fleetsim *fs)
{
	int *idx = xmalloc((fs->versions.n + 1) * sizeof(int));

	for (size_t k = 0; k < fs->versions.n; k++)
		idx[k] = (int)k;
	qsort_r(idx, fs->versions.n, sizeof(int), cmp_vidx, fs);
	return idx;
}

void fs_print_summary(struct fleetsim *fs, const char *word)
{
	int64_t el = fs->time_known ? (fs_now(fs) - fs->t0) / 60000 : 0;
	int64_t offered = 0;
	int *idx = sorted_versions(fs);
	struct buf b = BUF_INIT;

	buf_printf(&b, "fleetsim%s%s t=+%" PRId64 "h%02" PRId64 "m devices=%u", word ? " " : "",
		   word ? word : "", el / 60, el % 60, fs->ndev);
	for (size_t k = 0; k < fs->versions.n; k++) {
		offered += fs->vs[idx[k]].offered;
		if (fs->vs[idx[k]].devices)
			buf_printf(&b, " %s=%" PRId64, fs->versions.names[idx[k]],
				   fs->vs[idx[k]].devices);
	}
	buf_printf(&b, " offered=%" PRId64 " installed=%" PRId64 " confirmed=%" PRId64
		   " reverted=%" PRId64 " boot_failed=%" PRId64 " refused=%" PRId64
		   " downloads=%" PRId64 " reports=%" PRId64 "\n",
		   offered, fs->c.installed, fs->c.confirmed, fs->c.reverted, fs->c.boot_failed,
		   fs->c.refused, fs->c.downloads, fs->c.reports_sent);
	if (fs->c.refused_lower_counter || fs->c.incompatible_offers)
		buf_printf(&b, "fleetsim%s%s SERVER FAULTS: refused_lower_counter=%" PRId64
			   " incompatible_offers=%" PRId64 "\n", word ? " " : "", word ? word : "",
			   fs->c.refused_lower_counter, fs->c.incompatible_offers);
	fputs(buf_cstr(&b), stdout);
	fflush(stdout);
	buf_release(&b);
	free(idx);
	fs->printed = xrealloc(fs->printed, (fs->versions.n + 1) * sizeof(*fs->printed));
	for (size_t k = fs->nprinted; k < fs->versions.n; k++)
		fs->printed[k] = 0;
	fs->nprinted = fs->versions.n;
	for (size_t k = 0; k < fs->versions.n; k++)
		fs->printed[k] = fs->vs[k].devices;
	fs->last_print_real = fs_real_ms();
}

static void metrics_build(struct fleetsim *fs, struct buf *b)
{
	static const struct {
		const char *name, *help;
		size_t off;
	} counters[] = {
#define C(f, h) { #f, h, offsetof(struct fleetsim, c.f) }
		C(installed, "Images installed (test boots started)."),
		C(confirmed, "Test boots confirmed (boot_ok)."),
		C(reverted, "Test boots reverted by a crash or watchdog."),
		C(boot_failed, "Test boots that failed outright."),
		C(refused, "Offers or images refused, every reason."),
		C(refused_lower_counter, "Offers refused for a security counter below the held one (must stay 0)."),
		C(refused_bad_signature, "Images refused for a bad signature or digest."),
		C(incompatible_offers, "Offers for hardware or a bootloader the device does not fit (must stay 0)."),
		C(downloads, "Completed image downloads."),
		C(resumed_downloads, "Completed downloads that resumed with a Range request."),
		C(reports_sent, "Reports accepted by the server."),
		C(reports_rejected, "Reports in batches the server rejected."),
		C(checkins, "Successful check-ins."),
		C(checkins_deferred, "Check-ins the server deferred over its capacity (503 with a turn)."),
		C(requests_failed, "Requests that failed (flaky devices included)."),
		C(withdrawn_downloads, "Downloads dropped because the server withdrew the offer (410: release halted)."),
#undef C
	};
	int *idx = sorted_versions(fs);

	buf_puts(b, "# HELP fleetsim_devices Simulated devices per running version.\n"
		    "# TYPE fleetsim_devices gauge\n");
	for (size_t k = 0; k < fs->versions.n; k++)
		buf_printf(b, "fleetsim_devices{version=\"%s\"} %" PRId64 "\n",
			   fs->versions.names[idx[k]], fs->vs[idx[k]].devices);
	buf_puts(b, "# HELP fleetsim_ever_ran Distinct devices that ever booted and confirmed a version.\n"
		    "# TYPE fleetsim_ever_ran gauge\n");
	for (size_t k = 0; k < fs->versions.n; k++)
		buf_printf(b, "fleetsim_ever_ran{version=\"%s\"} %" PRId64 "\n",
			   fs->versions.names[idx[k]], fs->vs[idx[k]].ever_ran);
	buf_puts(b, "# HELP fleetsim_offered_devices Distinct devices offered a version.\n"
		    "# TYPE fleetsim_offered_devices gauge\n");
	for (size_t k = 0; k < fs->versions.n; k++)
		buf_printf(b, "fleetsim_offered_devices{version=\"%s\"} %" PRId64 "\n",
			   fs->versions.names[idx[k]], fs->vs[idx[k]].offered);
	buf_puts(b, "# HELP fleetsim_crashes_total Crashes reported in heartbeats per version.\n"
		    "# TYPE fleetsim_crashes_total counter\n");
	for (size_t k = 0; k < fs->versions.n; k++)
		buf_printf(b, "fleetsim_crashes_total{version=\"%s\"} %" PRId64 "\n",
			   fs->versions.names[idx[k]], fs->vs[idx[k]].crashes);
	buf_puts(b, "# HELP fleetsim_device_hours_total Device-hours reported per version.\n"
		    "# TYPE fleetsim_device_hours_total counter\n");
	for (size_t k = 0; k < fs->versions.n; k++)
		buf_printf(b, "fleetsim_device_hours_total{version=\"%s\"} %.3f\n",
			   fs->versions.names[idx[k]], fs->vs[idx[k]].hours);
	buf_puts(b, "# HELP fleetsim_battery_mah_total Battery used (mAh) reported per version.\n"
		    "# TYPE fleetsim_battery_mah_total counter\n");
	for (size_t k = 0; k < fs->versions.n; k++)
		buf_printf(b, "fleetsim_battery_mah_total{version=\"%s\"} %.3f\n",
			   fs->versions.names[idx[k]], fs->vs[idx[k]].battery);
	buf_puts(b, "# HELP fleetsim_battery_mah_per_day Mean battery use per device-day on a release.\n"
		    "# TYPE fleetsim_battery_mah_per_day gauge\n");
	for (size_t k = 0; k < fs->versions.n; k++)
		if (fs->vs[idx[k]].hours > 0)
			buf_printf(b, "fleetsim_battery_mah_per_day{release=\"%s\"} %.4f\n",
				   fs->versions.names[idx[k]],
				   fs->vs[idx[k]].battery / fs->vs[idx[k]].hours * 24.0);
	buf_puts(b, "# HELP fleetsim_crashes_per_device_hour Crashes per device-hour on a release.\n"
		    "# TYPE fleetsim_crashes_per_device_hour gauge\n");
	for (size_t k = 0; k < fs->versions.n; k++)
		if (fs->vs[idx[k]].hours > 0)
			buf_printf(b, "fleetsim_crashes_per_device_hour{release=\"%s\"} %.6f\n",
				   fs->versions.names[idx[k]],
				   (double)fs->vs[idx[k]].crashes / fs->vs[idx[k]].hours);
	for (size_t k = 0; k < OTA_ARRAY_SIZE(counters); k++)
		buf_printf(b, "# HELP fleetsim_%s_total %s\n# TYPE fleetsim_%s_total counter\n"
			   "fleetsim_%s_total %" PRId64 "\n", counters[k].name, counters[k].help,
			   counters[k].name, counters[k].name,
			   *(const int64_t *)((const char *)fs + counters[k].off));
	buf_printf(b, "# HELP fleetsim_otacd_time_seconds otacd time as the simulator follows it.\n"
		      "# TYPE fleetsim_otacd_time_seconds gauge\nfleetsim_otacd_time_seconds %.3f\n"
		      "# HELP fleetsim_time_scale otacd seconds per real second.\n"
		      "# TYPE fleetsim_time_scale gauge\nfleetsim_time_scale %g\n",
		   (double)fs_now(fs) / 1000.0, fs->time_known ? fs->scale : 0.0);
	free(idx);
}

char *fleetsim_metrics_snapshot(struct fleetsim *fs)
{
	char *s;

	pthread_mutex_lock(&fs->mlock);
	s = xstrdup(fs->metrics ? fs->metrics : "");
	pthread_mutex_unlock(&fs->mlock);
	return s;
}

void fs_output_tick(struct fleetsim *fs, int64_t rn)
{
	int64_t step = fs->ndev / 100 ? fs->ndev / 100 : 1;
	int changed = 0;

	if (rn - fs->last_metrics_real >= METRICS_REAL_MS) {
		struct buf b = BUF_INIT;
		char *old;

		metrics_build(fs, &b);
		pthread_mutex_lock(&fs->mlock);
		old = fs->metrics;
		fs->metrics = buf_detach(&b);
		pthread_mutex_unlock(&fs->mlock);
		free(old);
		fs->last_metrics_real = rn;
	}
	if (!fs->time_known || fs->o.quiet)
		return;
	for (size_t k = 0; k < fs->versions.n && !changed; k++) {
		int64_t before = k < fs->nprinted ? fs->printed[k] : 0;

		changed = llabs(fs->vs[k].devices - before) >= step;
	}
	if (changed || rn - fs->last_print_real >= SUMMARY_REAL_MS)
		fs_print_summary(fs, NULL);
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

	return x < y ? -1 : x > y;
}

/* issue 15: when the devices offered version s first saw the offer
 * (otacd ms): the 50/95/100 % points of that cohort, and from the first
 * push hint when one came (the step's opening as the devices learn it). */
static json_t *reach_json(struct fleetsim *fs, struct vstat *s)
{
	size_t n = s->noffer_at;
	int64_t p50, p95, p100;
	json_t *j;

	qsort(s->offer_at, n, sizeof(*s->offer_at), cmp_i64);
	p50 = s->offer_at[(n - 1) / 2];
	p95 = s->offer_at[(size_t)((double)(n - 1) * 0.95)];
	p100 = s->offer_at[n - 1];
	j = json_pack("{s:I, s:I, s:I, s:I, s:I}", "devices", (json_int_t)n, "first_ms", (json_int_t)s->offer_at[0],
		      "p50_ms", (json_int_t)p50, "p95_ms", (json_int_t)p95, "p100_ms", (json_int_t)p100);
	if (fs->first_hint_ms)
		json_object_set_new(j, "from_first_hint_ms",
				    json_pack("{s:I, s:I, s:I}", "p50", (json_int_t)(p50 - fs->first_hint_ms), "p95",
					      (json_int_t)(p95 - fs->first_hint_ms), "p100",
					      (json_int_t)(p100 - fs->first_hint_ms)));
	return j;
}

static json_t *push_json(struct fleetsim *fs)
{
	int64_t received = 0, ignored = 0, skipped = 0;

	fs_push_counts(fs->push, &received, &ignored, &skipped);
	return json_pack("{s:I, s:I, s:I, s:I, s:I}", "hints_received", (json_int_t)received, "hints_ignored",
			 (json_int_t)ignored, "hints_skipped", (json_int_t)skipped, "checkins_brought_forward",
			 (json_int_t)fs->hints_taken, "first_hint_ms", (json_int_t)fs->first_hint_ms);
}

int fs_write_stats(struct fleetsim *fs)
{
	json_t *st = json_object(), *versions = json_object(), *ever = json_object(),
	       *offered = json_object(), *images = json_object(), *reach = json_object();
	int *idx = sorted_versions(fs);
	char *text = NULL;
	int rc;

	for (size_t k = 0; k < fs->versions.n; k++) {
		struct vstat *s = &fs->vs[idx[k]];
		const char *name = fs->versions.names[idx[k]];

		if (s->devices)
			json_object_set_new(versions, name, json_integer(s->devices));
		if (s->ever_ran)
			json_object_set_new(ever, name, json_integer(s->ever_ran));
		if (s->offered)
			json_object_set_new(offered, name, json_integer(s->offered));
		if (s->noffer_at)
			json_object_set_new(reach, name, reach_json(fs, s));
	}
	for (size_t k = 0; k < fs->images.n; k++) {
		struct sim_image *img = fs->images.v[k];

		json_object_set_new(images, img->sha256,
				    json_pack("{s:s, s:I, s:s?}", "state",
					      img->state == SIM_IMG_OK ? "ok" :
					      img->state == SIM_IMG_BAD ? "refused" : "unknown",
					      "security_counter", (json_int_t)img->counter,
					      "error", img->error));
	}
	json_object_set_new(st, "devices", json_integer(fs->ndev));
	json_object_set_new(st, "versions", versions);
	json_object_set_new(st, "ever_ran", ever);
	json_object_set_new(st, "offered", offered);
	json_object_set_new(st, "reach", reach);
	if (fs->push)
		json_object_set_new(st, "push", push_json(fs));
#define S(f) json_object_set_new(st, #f, json_integer(fs->c.f))
	S(installed); S(confirmed); S(reverted); S(boot_failed); S(refused);
	S(refused_lower_counter); S(refused_bad_signature); S(incompatible_offers);
	S(skipped_failed); S(downloads); S(resumed_downloads); S(cut_downloads);
	S(reports_sent); S(reports_rejected); S(reports_dropped); S(checkins);
	S(requests_failed); S(flaky_aborts); S(heartbeats); S(withdrawn_downloads);
	S(checkins_deferred); S(deferrals_max); S(served); S(served_last_ms);
	S(flag_turned_on); S(flag_turned_off);
#undef S
	if (fs->o.nflags) { /* issue 17: devices with each followed flag on now */
		json_t *on = json_object();
		for (int f = 0; f < fs->o.nflags; f++) {
			int64_t n = 0;
			for (uint32_t i = 0; i < fs->ndev; i++)
				n += fs->dev[i].flags_on >> f & 1;
			json_object_set_new(on, fs->o.flags[f], json_integer(n));
		}
		json_object_set_new(st, "flags_on", on);
	}
	json_object_set_new(st, "verifications", json_integer((json_int_t)fs->images.verifications));
	/* issue 13: the signing PKI on the devices' side (trust.h) */
	json_object_set_new(st, "revocations", json_integer(fs->trust.number));
	json_object_set_new(st, "revocations_accepted", json_integer(fs->trust.crl_accepted));
	json_object_set_new(st, "revocations_refused", json_integer(fs->trust.crl_refused));
	json_object_set_new(st, "images_revoked", json_integer(fs->trust.images_revoked));
	json_object_set_new(st, "chain_refused", json_integer(fs->trust.chain_refused));
	json_object_set_new(st, "installed_at_revocation", json_integer(fs->installed_at_crl));
	json_object_set_new(st, "images", images);
	if (fs->o.core) {           /* issue 14: the devices ran libotadev (core.c) */
		json_t *k = json_object();
#define K(f) json_object_set_new(k, #f, json_integer(fs->core.f))
		K(power_cuts); K(transit_corruptions); K(server_vanished); K(reboots); K(bricked);
		K(unverified_pending); K(signature_checks); K(signature_memo_hits); K(record_bytes);
		K(digest_retries); K(state_bytes_per_device);
		K(image_bytes); K(patch_bytes); K(deltas_applied); K(delta_fallbacks);
#undef K
		json_object_set_new(st, "core", k);
	}
	json_object_set_new(st, "otacd_elapsed_ms",
			    json_integer(fs->time_known ? fs_now(fs) - fs->t0 : 0));
	json_object_set_new(st, "until_reached", json_boolean(fs->until_reached));
	text = json_dumps(st, JSON_INDENT(2));
	rc = text ? ota_write_file_atomic(fs->o.stats_path, text, strlen(text), 0644)
		  : ota_error_set(OTA_ERROR, "cannot encode the stats");
	if (rc)
		ota_error_prefix("%s: ", fs->o.stats_path);
	free(text);
	free(idx);
	json_decref(st);
	return rc;
}
