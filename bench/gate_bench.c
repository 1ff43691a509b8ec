/*
 * gate_bench.c - how long one gate evaluation takes with a million devices'
 * reports aggregated.  Figures are printed, never asserted.
 *
 * Opens a real fleet (fleet.db in a temporary directory), checks in N
 * devices through fleet_checkin (JSON bodies, in process, no HTTP): 90% on
 * 1.4.0 and 10% on 1.5.0 (the canary), two hardware variants, tags region
 * (3 values) and tier (2 values).  Then feeds one report per device through
 * fleet_report_async in batches of 1000 (8 in flight, each answered after
 * its group commit): an hour's heartbeat with crashes for 0.2% crashers
 * (1% on the canary), and a boot_ok / revert / boot_fail before it on the
 * canary.  Setup time and resident memory are printed.
 *
 * Then it times, over many iterations, what the rollout controller does at
 * every check of a typical gate set,
 *
 *   crash_free: { metric: crash_rate, max: 0.01 }
 *   boots:      { metric: boot_success_rate, min: 0.99 }
 *   regress:    { metric: crashes_per_device_hour, baseline: previous, max_increase: "100%" }
 *
 * namely fleet_aggregate of the canary (and fleet_baseline when the gate
 * has a baseline) and gate_judge per gate; once without and once with the
 * gate_spec_parse that rollout_ctl.c also runs per check.  As the baseline
 * in the same run it scans a plain C array of N device structs to compute
 * the same three metrics for canary and baseline (what a gate that counts
 * raw rows would cost), and prints the ratio.  The target is < 10 ms per
 * evaluation at 1M devices.
 *
 * Usage: gate-bench [DEVICES [ITERATIONS]]     (defaults 1000000 and 20000)
 */
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../common/util.h"
#include "../orchestrator/fleet/fleet.h"
#include "../orchestrator/gate.h"
#include "flight.h"

#define PRODUCT "sensor-node"
#define OLD "1.4.0"
#define NEW "1.5.0"
#define BATCH 1000
#define IN_FLIGHT 8

static const char *const gate_yaml[][2] = {
	{ "crash_free", "{\"metric\": \"crash_rate\", \"max\": 0.01}" },
	{ "boots", "{\"metric\": \"boot_success_rate\", \"min\": 0.99}" },
	{ "regress", "{\"metric\": \"crashes_per_device_hour\", \"baseline\": \"previous\", \"max_increase\": \"100%\"}" },
};
#define NGATES (sizeof(gate_yaml) / sizeof(gate_yaml[0]))

static double now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* VmRSS or VmHWM of this process in MB. */
static double proc_mb(const char *field)
{
	char line[256];
	double kb = 0;
	size_t n = strlen(field);
	FILE *fp = fopen("/proc/self/status", "r");

	if (!fp)
		return 0;
	while (fgets(line, sizeof(line), fp))
		if (!strncmp(line, field, n) && line[n] == ':')
			kb = atof(line + n + 1);
	fclose(fp);
	return kb / 1024;
}

static uint64_t mix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

/* A device's draws, from its index: the same in the fleet and in the array. */
struct draw {
	int canary, crasher, boot;   /* boot: 0 ok, 1 revert, 2 fail (canary only) */
	int64_t crashes;
	double uptime_s, battery;
};

static void draw(uint32_t i, struct draw *d)
{
	uint64_t h = mix(i);
	double u = (double)(h >> 11) / 9007199254740992.0;
	double c = (double)(mix(h) >> 11) / 9007199254740992.0;

	d->canary = i % 10 == 7;
	d->crasher = c < (d->canary ? 0.01 : 0.002);
	d->boot = !d->canary ? 0 : u < 0.001 ? 2 : d->crasher && u < 0.5 ? 1 : 0;
	d->crashes = d->crasher ? (int64_t)(1 + (h >> 60) % 2) : 0;
	d->uptime_s = 3600;
	d->battery = 1.25;
}

/* ---- the plain array: one struct per device, as raw rows ---------------- */

struct rawdev {
	uint8_t version;        /* 0 old, 1 canary */
	uint8_t reporting, crashed, boot_ok, boot_fail, revert;
	uint16_t crashes;
	float hours;
};

struct rawsum {
	int64_t reporting, crashed, crashes, boot_ok, boot_fail, reverts;
	double hours;
};

/* The three metrics from raw rows; the result is folded into a checksum
 * so the scan cannot be optimised away. */
static double raw_evaluate(const struct rawdev *v, size_t n)
{
	struct rawsum s[2];
	double r;

	memset(s, 0, sizeof(s));
	for (size_t i = 0; i < n; i++) {
		struct rawsum *x = &s[v[i].version];
		x->reporting += v[i].reporting;
		x->crashed += v[i].crashed;
		x->crashes += v[i].crashes;
		x->boot_ok += v[i].boot_ok;
		x->boot_fail += v[i].boot_fail;
		x->reverts += v[i].revert;
		x->hours += v[i].hours;
	}
	r = (double)s[1].crashed / (double)(s[1].reporting ? s[1].reporting : 1);
	r += (double)s[1].boot_ok / (double)(s[1].boot_ok + s[1].boot_fail + s[1].reverts + 1);
	r += ((double)s[1].crashes / (s[1].hours + 1)) / ((double)s[0].crashes / (s[0].hours + 1) + 1e-9);
	return r;
}

/* ---- feeding the fleet -------------------------------------------------- */

/* Check n devices in: asynchronously, each first check-in waits for a
 * commit (many in flight, so the writer commits them in groups). */
static int checkin_all(struct fleet *f, uint32_t n)
{
	static const char *const region[] = { "eu", "us", "apac" };
	static const char *const hw[] = { "mps2-an385", "mps2-an386" };
	struct flight fl = FLIGHT_INIT;
	char id[32];
	int rc = 0;

	for (uint32_t i = 0; i < n; i++) {
		struct draw d;
		json_t *body, *answer = NULL;

		draw(i, &d);
		snprintf(id, sizeof(id), "dev-%07u", i);
		body = json_pack("{ss ss ss ss ss sI s{ss ss}}", "device", id, "product", PRODUCT, "hardware",
				 hw[i % 2], "bootloader", "1.2.0", "version", d.canary ? NEW : OLD,
				 "security_counter", (json_int_t)3, "tags", "region", region[i % 3], "tier",
				 i % 10 == 0 ? "beta" : "standard");
		flight_take(&fl, 10001);
		rc = fleet_checkin_async(f, body, &answer, flight_done, &fl);
		if (rc <= 0)
			flight_done(&fl, rc);
		json_decref(body);
		json_decref(answer);
		if (rc < 0)
			break;
	}
	flight_wait_all(&fl);
	if (rc >= 0 && fl.failed)
		rc = ota_error_set(OTA_ERROR, "%d check-ins failed to commit", fl.failed);
	return rc < 0 ? rc : 0;
}

static void add_report(json_t *arr, const char *id, const char *version, const char *event, const struct draw *d)
{
	json_t *r = json_pack("{ss ss ss}", "device", id, "version", version, "event", event);
	if (!strcmp(event, "heartbeat")) {
		json_object_set_new(r, "uptime_s", json_real(d->uptime_s));
		json_object_set_new(r, "crashes", json_integer(d->crashes));
		json_object_set_new(r, "battery_mah", json_real(d->battery));
	}
	json_array_append_new(arr, r);
}

static int report_all(struct fleet *f, uint32_t n, int64_t *nreports)
{
	static const char *const boot_event[] = { "boot_ok", "revert", "boot_fail" };
	struct flight fl = FLIGHT_INIT;
	json_t *body = NULL, *arr = NULL, *refused = NULL;
	char id[32];
	int rc = 0, accepted;

	*nreports = 0;
	for (uint32_t i = 0; i <= n; i++) {
		struct draw d;
		if (arr && (i == n || json_array_size(arr) + 2 > BATCH)) {
			flight_take(&fl, IN_FLIGHT);
			*nreports += (int64_t)json_array_size(arr);
			if ((rc = fleet_report_async(f, body, fleet_trusted_caller, &accepted, &refused, flight_done, &fl)) < 0) {
				json_decref(refused);
				flight_done(&fl, rc);
				goto out;
			}
			json_decref(refused);
			json_decref(body);
			body = arr = NULL;
		}
		if (i == n)
			break;
		if (!arr) {
			arr = json_array();
			body = json_pack("{so}", "reports", arr);
		}
		draw(i, &d);
		snprintf(id, sizeof(id), "dev-%07u", i);
		if (d.canary)
			add_report(arr, id, NEW, boot_event[d.boot], &d);
		/* a reverted or failed canary device runs the old version again */
		add_report(arr, id, d.canary && d.boot == 0 ? NEW : OLD, "heartbeat", &d);
	}
out:
	json_decref(body);
	flight_wait_all(&fl);
	if (!rc && fl.failed)
		rc = ota_error_set(OTA_ERROR, "%d report batches failed to commit", fl.failed);
	return rc;
}

/* ---- timing ------------------------------------------------------------- */

static void summary(const char *what, double *us, size_t n, double baseline_us)
{
	double sum = 0;
	for (size_t i = 0; i < n; i++)
		sum += us[i];
	qsort(us, n, sizeof(us[0]), cmp_double);
	printf("  %-46s mean %9.2f us  p50 %9.2f us  p99 %9.2f us", what, sum / (double)n, us[n / 2],
	       us[(size_t)(0.99 * (double)(n - 1))]);
	if (baseline_us > 0)
		printf("  (raw scan / this: %.3gx)", baseline_us / (sum / (double)n));
	printf("\n");
}

/* One check of the gate set: metrics and verdicts; parse the specs too
 * when parse is set (as rollout_ctl.c does).  Returns a verdict checksum. */
static int evaluate(struct fleet *f, struct gate_spec *specs, json_t **docs, int parse)
{
	int sum = 0;
	for (size_t g = 0; g < NGATES; g++) {
		struct gate_spec tmp, *sp = &specs[g];
		struct fleet_agg canary, base;
		struct gate_eval ev;
		char err[256];

		if (parse) {
			if (gate_spec_parse(docs[g], gate_yaml[g][0], &tmp, err, sizeof(err)) < 0) {
				gate_spec_release(&tmp);
				return -1;
			}
			sp = &tmp;
		}
		fleet_aggregate(f, PRODUCT, NEW, "*", &canary);
		if (sp->baseline)
			fleet_baseline(f, PRODUCT, NEW, OLD, "*", &base);
		gate_judge(sp, &canary, sp->baseline ? &base : NULL, 1, &ev);
		sum += (int)ev.verdict;
		if (parse)
			gate_spec_release(&tmp);
	}
	return sum;
}

int main(int argc, char **argv)
{
	uint32_t ndev = argc > 1 ? (uint32_t)strtoul(argv[1], NULL, 10) : 1000000;
	size_t iters = argc > 2 ? strtoul(argv[2], NULL, 10) : 20000, raw_iters;
	char tmpl[] = "/tmp/gate-bench-XXXXXX";
	struct fleet_config cfg = { .poll_ms = 6 * 3600 * 1000LL };
	struct fleet *f = NULL;
	struct gate_spec specs[NGATES];
	json_t *docs[NGATES];
	struct rawdev *raw = NULL;
	double *us = NULL, t0, t1, t2, rss0, raw_mean, sink = 0;
	int64_t nreports = 0;
	int rc = 1, verdicts = 0;
	char *db = NULL, *cmd = NULL;

	memset(specs, 0, sizeof(specs));
	memset(docs, 0, sizeof(docs));
	if (ndev < 100 || iters < 10) {
		fprintf(stderr, "usage: gate-bench [DEVICES >= 100 [ITERATIONS >= 10]]\n");
		return 2;
	}
	if (!mkdtemp(tmpl)) {
		perror("mkdtemp");
		return 1;
	}
	db = xasprintf("%s/fleet.db", tmpl);
	cfg.db_path = db;
	for (size_t g = 0; g < NGATES; g++) {
		char err[256];
		docs[g] = json_loads(gate_yaml[g][1], 0, NULL);
		if (!docs[g] || gate_spec_parse(docs[g], gate_yaml[g][0], &specs[g], err, sizeof(err)) < 0) {
			fprintf(stderr, "gate %s: %s\n", gate_yaml[g][0], err);
			goto out;
		}
	}

	rss0 = proc_mb("VmRSS");
	if (fleet_open(&f, &cfg) < 0) {
		fprintf(stderr, "fleet_open: %s\n", ota_error_last());
		goto out;
	}
	t0 = now_us();
	if (checkin_all(f, ndev) < 0) {
		fprintf(stderr, "check-in: %s\n", ota_error_last());
		goto out;
	}
	t1 = now_us();
	if (report_all(f, ndev, &nreports) < 0) {
		fprintf(stderr, "reports: %s\n", ota_error_last());
		goto out;
	}
	t2 = now_us();
	printf("== gate evaluation with %u devices aggregated (fleet.db in %s)\n", ndev, tmpl);
	printf("  setup: %u check-ins in %.1f s (%.0f/s), %lld reports in %.1f s (%.0f/s, batches of %d, committed)\n",
	       ndev, (t1 - t0) / 1e6, ndev / ((t1 - t0) / 1e6), (long long)nreports, (t2 - t1) / 1e6,
	       (double)nreports / ((t2 - t1) / 1e6), BATCH);
	printf("  memory: RSS %.0f MB with the fleet (%.0f MB before fleet_open; peak %.0f MB), %.0f bytes per device\n",
	       proc_mb("VmRSS"), rss0, proc_mb("VmHWM"), (proc_mb("VmRSS") - rss0) * 1048576.0 / ndev);
	{
		struct fleet_agg c, b;
		struct gate_eval ev;
		fleet_aggregate(f, PRODUCT, NEW, "*", &c);
		fleet_baseline(f, PRODUCT, NEW, OLD, "*", &b);
		printf("  canary %s: devices %lld reporting %lld crashed %lld crashes %lld device-hours %.0f; baseline devices %lld\n",
		       NEW, (long long)c.devices, (long long)c.reporting, (long long)c.crashed, (long long)c.crashes,
		       c.device_hours, (long long)b.devices);
		for (size_t g = 0; g < NGATES; g++) {
			gate_judge(&specs[g], &c, specs[g].baseline ? &b : NULL, 1, &ev);
			printf("  %-10s %s\n", gate_yaml[g][0], ev.reason);
		}
	}

	/* the raw rows: the same draws as the fleet's reports */
	raw = xcalloc(ndev, sizeof(*raw));
	for (uint32_t i = 0; i < ndev; i++) {
		struct draw d;
		draw(i, &d);
		raw[i].version = (uint8_t)(d.canary && d.boot == 0);
		raw[i].reporting = 1;
		raw[i].crashed = d.crashes > 0;
		raw[i].crashes = (uint16_t)d.crashes;
		raw[i].boot_ok = d.canary && d.boot == 0;
		raw[i].revert = d.canary && d.boot == 1;
		raw[i].boot_fail = d.canary && d.boot == 2;
		raw[i].hours = (float)(d.uptime_s / 3600);
	}
	raw_iters = iters / 100 > 20 ? iters / 100 : 20;
	us = xcalloc(iters > raw_iters ? iters : raw_iters, sizeof(*us));
	for (size_t i = 0; i < raw_iters; i++) {
		double s = now_us();
		sink += raw_evaluate(raw, ndev);
		us[i] = now_us() - s;
	}
	raw_mean = 0;
	for (size_t i = 0; i < raw_iters; i++)
		raw_mean += us[i];
	raw_mean /= (double)raw_iters;
	printf("  evaluations of 3 gates (crash_rate max, boot_success_rate min, crashes_per_device_hour vs baseline):\n");
	summary("raw scan of a C array of devices (baseline)", us, raw_iters, 0);

	for (int parse = 0; parse <= 1; parse++) {
		for (size_t i = 0; i < iters; i++) {
			double s = now_us();
			int v = evaluate(f, specs, docs, parse);
			us[i] = now_us() - s;
			if (v < 0) {
				fprintf(stderr, "gate_spec_parse failed\n");
				goto out;
			}
			verdicts += v;
		}
		summary(parse ? "gate_spec_parse + aggregates + gate_judge" : "fleet aggregates + gate_judge", us, iters,
			raw_mean);
	}
	printf("  (checksums %.3f %d; target < 10 ms per evaluation)\n", sink, verdicts);
	rc = 0;
out:
	free(us);
	free(raw);
	if (f)
		fleet_close(f);
	for (size_t g = 0; g < NGATES; g++) {
		gate_spec_release(&specs[g]);
		json_decref(docs[g]);
	}
	cmd = xasprintf("rm -rf '%s'", tmpl);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", tmpl);
	free(cmd);
	free(db);
	return rc;
}
