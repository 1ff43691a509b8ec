/*
 * safety_bench.c - the rollout safety table: how much of the fleet a bad
 * release reaches before a gate halts it, how soon, and how often a good
 * release is rolled back for nothing, for three gates watching the same
 * simulated rollouts.  Figures are printed, never asserted.
 *
 * The devices are otacd-fleetsim's (fleetsim/sim.h, docs/fleetsim.md):
 * attributes from sim_device_init (1% silent devices never report), the
 * crasher set of a version from sim_is_crasher (same seed, same crashers),
 * a crasher crashes Poisson(hours x SIM_CRASHER_RATE_PER_HOUR) per heartbeat
 * (once every 6 device-hours), test boots fail with the profile's
 * boot_fail_rate (0.1%) and a crasher reverts its test boot with
 * probability 0.5.  The old version 1.4.0 has crash_rate 0.002 (the
 * profile's default); the new one 1.5.0 the rate under test.
 *
 * Time is simulated in hours, without a server.  The rollout starts at
 * t = 0 after HISTORY hours of the whole fleet on 1.4.0 (the baseline's
 * history), with steps 1% (hold 6h) -> 5% (6h) -> 25% (24h) -> 100%
 * (watched 48h more).  A device is in a step when fleet_cohort_slot(salt,
 * id) < percent x 100, like the builtin update server; it sees the offer at
 * its next 6-hourly poll (a phase per device) and test-boots 2 minutes
 * later.  Every hour each reporting device sends a heartbeat (a device that
 * switched during the hour closes its old version's uptime first, then
 * reports boot_ok / revert / boot_fail); the counters are kept exactly as
 * fleet.h defines struct fleet_agg (distinct reporting / crashed devices
 * per version, crashes, device-hours, boots), and after every hourly batch
 * each gate is checked:
 *
 *   naive       canary crashed / reporting > LIMIT with >= 20 reporting;
 *   wilson      the fixed-sample Wilson interval (gatestat_wilson, alpha
 *               ALPHA) on crashed / reporting, re-checked every hour:
 *               fail when its lower bound > LIMIT;
 *   sequential  otacd's gates through gate_judge:
 *                 crash_free: { metric: crash_rate, max: LIMIT }
 *                 regress:    { metric: crashes_per_device_hour,
 *                               baseline: previous, max_increase: "100%" }
 *               (alpha 0.01 each, the default: at most 2% for the pair
 *               over the whole rollout); fail when either fails;
 *   seq +50%    the same with max_increase "50%" (the default of
 *               `baseline: previous`), as a fourth column.
 *
 * The schedule is fixed (steps advance when their hold ends), so the three
 * gates see the very same reports; a gate "halts" at its first fail.  In
 * otacd an inconclusive sequential gate also holds a step past its hold,
 * which can only lower its exposure below the figure here.
 *
 * Printed per crash rate (0.5%, 2%, 5% above the baseline) over SEEDS
 * seeds: runs detected, detection time (hours after the rollout start, over
 * detected runs), exposure (share of the fleet that confirmed the bad
 * release before the halt; a run never halted counts what ran it at the
 * end); and the false rollbacks over GOOD good releases (crash_rate equal
 * to the baseline).
 *
 * Usage: safety-bench [DEVICES [SEEDS [GOOD [LIMIT]]]]   (defaults 20000 20 50 0.01)
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/util.h"
#include "../fleetsim/sim.h"
#include "../orchestrator/fleet/fleet.h"
#include "../orchestrator/gate.h"
#include "../orchestrator/gatestat.h"

#define OLD "1.4.0"
#define NEW "1.5.0"
#define BASE_RATE 0.002
static double crash_limit = 0.01;   /* LIMIT: the crash_rate limit of every gate */
#define ALPHA 0.01          /* Wilson's level, and each sequential gate's */
#define NAIVE_MIN 20
#define HISTORY 24          /* hours of the old version before the rollout */
#define WATCH_100 48        /* hours watched at 100% */
#define BOOT_H (2.0 / 60)   /* a test boot lasts 2 minutes */
#define POLL_H 6.0

enum { SALT_POLL = 101, SALT_BOOTFAIL, SALT_REVERT };
enum { G_NAIVE, G_WILSON, G_SEQ, G_SEQ50, NG };
static const char *const gate_names[NG] = { "naive", "wilson", "sequential", "seq +50%" };

static const struct {
	int percent;
	int hold_h;
} steps[] = { { 1, 6 }, { 5, 6 }, { 25, 24 }, { 100, WATCH_100 } };
#define NSTEPS (sizeof(steps) / sizeof(steps[0]))

/* Per device, for one run. */
struct dev {
	double boot_at;          /* hours; INFINITY: never offered */
	uint8_t silent, crasher_old, crasher_new, outcome;   /* outcome: 0 ok, 1 revert, 2 fail */
	uint8_t on_new;
	uint8_t seen[2], crashed[2];   /* distinct flags per version (0 old, 1 new) */
};

struct run_result {
	int detected[NG];
	int at_h[NG];            /* first failing check, hours after the start */
	double exposure[NG];     /* share that confirmed the release by then */
};

struct seq_gates {
	struct gate_spec crash_free, regress, regress50;
};

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
	if (n == 0)
		return NAN;
	qsort(v, (size_t)n, sizeof(v[0]), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static int parse_gate(const char *name, const char *text, struct gate_spec *out)
{
	char err[256];
	json_t *doc = json_loads(text, 0, NULL);
	int rc = gate_spec_parse(doc, name, out, err, sizeof(err));
	if (rc < 0)
		fprintf(stderr, "%s\n", err);
	json_decref(doc);
	return rc;
}

/* When is device i offered the release: the first step whose percentage
 * covers its slot, then its next poll after that step starts. */
static double offer_at(int slot, double phase)
{
	double start = 0;
	for (size_t s = 0; s < NSTEPS; s++) {
		if (slot < steps[s].percent * 100) {
			double k = ceil((start - phase) / POLL_H);
			return phase + (k > 0 ? k : 0) * POLL_H;
		}
		start += steps[s].hold_h;
	}
	return INFINITY;
}

static void heartbeat(struct dev *d, int v, double hours, struct fleet_agg *agg, uint64_t *rng)
{
	unsigned crashes = 0;
	if ((v ? d->crasher_new : d->crasher_old))
		crashes = sim_poisson(rng, hours * SIM_CRASHER_RATE_PER_HOUR);
	if (!d->seen[v]) {
		d->seen[v] = 1;
		agg[v].reporting++;
	}
	if (crashes && !d->crashed[v]) {
		d->crashed[v] = 1;
		agg[v].crashed++;
	}
	agg[v].crashes += crashes;
	agg[v].device_hours += hours;
}

/* One rollout of NEW at crash rate `rate`: every gate watches it. */
static void run_one(struct dev *devs, uint32_t n, const struct sim_profile *prof, uint64_t seed, double rate,
		    const struct seq_gates *sg, struct run_result *out)
{
	struct fleet_agg agg[2];
	char salt[32], id[16];
	uint64_t rng = sim_mix64(seed * 0x9e3779b97f4a7c15ULL + (uint64_t)(rate * 1e6));
	int64_t ever_ran = 0;
	int end_h = 0, open = NG;

	for (size_t s = 0; s < NSTEPS; s++)
		end_h += steps[s].hold_h;
	memset(agg, 0, sizeof(agg));
	memset(out, 0, sizeof(*out));
	snprintf(salt, sizeof(salt), "%016llx", (unsigned long long)sim_mix64(seed));
	for (uint32_t i = 0; i < n; i++) {
		struct dev *d = &devs[i];
		struct sim_device sd;
		struct sim_rates r;
		double phase = POLL_H * sim_unit(sim_hash(seed, i, SALT_POLL));

		sim_device_init(&sd, prof, seed, i);
		sim_profile_rates(prof, NEW, prof->hardware.names[sd.hw], &r);
		memset(d, 0, sizeof(*d));
		sim_device_id(id, sizeof(id), i);
		d->silent = (sd.flags & SIM_F_SILENT) != 0;
		d->crasher_old = (uint8_t)sim_is_crasher(seed, i, OLD, BASE_RATE);
		d->crasher_new = (uint8_t)sim_is_crasher(seed, i, NEW, rate);
		d->boot_at = offer_at(fleet_cohort_slot(salt, id), phase) + BOOT_H;
		d->outcome = sim_unit(sim_hash(seed, i, SALT_BOOTFAIL)) < r.boot_fail_rate ? 2
			     : (d->crasher_new && sim_unit(sim_hash(seed, i, SALT_REVERT)) < 0.5) ||
					       sim_unit(sim_hash(seed, i, SALT_REVERT + 1)) < r.revert_rate
				     ? 1
				     : 0;
	}

	for (int h = 1 - HISTORY; h <= end_h && open > 0; h++) {
		for (uint32_t i = 0; i < n; i++) {
			struct dev *d = &devs[i];
			int booting = !d->on_new && d->boot_at > h - 1 && d->boot_at <= h;

			if (booting && d->outcome == 0) {
				d->on_new = 1;
				ever_ran++;
			}
			if (d->silent)
				continue;
			if (!booting) {
				heartbeat(d, d->on_new, 1.0, agg, &rng);
				continue;
			}
			/* close the old version's hour, then the test boot's verdict */
			heartbeat(d, 0, d->boot_at - (h - 1), agg, &rng);
			if (!d->seen[1]) {
				d->seen[1] = 1;
				agg[1].reporting++;
			}
			if (d->outcome == 0) {
				agg[1].boot_ok++;
				heartbeat(d, 1, h - d->boot_at, agg, &rng);
			} else if (d->outcome == 1) {
				agg[1].reverts++;
			} else {
				agg[1].boot_fail++;
			}
		}
		if (h < 1)
			continue;
		/* the checks after this batch */
		for (int g = 0; g < NG; g++) {
			int fail = 0;
			if (out->detected[g])
				continue;
			if (g == G_NAIVE) {
				fail = agg[1].reporting >= NAIVE_MIN &&
				       (double)agg[1].crashed / (double)agg[1].reporting > crash_limit;
			} else if (g == G_WILSON) {
				double lo, hi;
				gatestat_wilson(agg[1].crashed, agg[1].reporting, ALPHA, &lo, &hi);
				fail = agg[1].reporting > 0 && lo > crash_limit;
			} else {
				struct gate_eval e1, e2;
				gate_judge(&sg->crash_free, &agg[1], NULL, 0, &e1);
				gate_judge(g == G_SEQ ? &sg->regress : &sg->regress50, &agg[1], &agg[0], 0, &e2);
				fail = e1.verdict == GATE_FAIL || e2.verdict == GATE_FAIL;
			}
			if (fail) {
				out->detected[g] = 1;
				out->at_h[g] = h;
				out->exposure[g] = (double)ever_ran / n;
				open--;
			}
		}
	}
	for (int g = 0; g < NG; g++)
		if (!out->detected[g])
			out->exposure[g] = (double)ever_ran / n;
}

int main(int argc, char **argv)
{
	uint32_t ndev = argc > 1 ? (uint32_t)strtoul(argv[1], NULL, 10) : 20000;
	int nseeds = argc > 2 ? atoi(argv[2]) : 20, ngood = argc > 3 ? atoi(argv[3]) : 50;
	char limit_gate[128];
	static const double deltas[] = { 0.005, 0.02, 0.05 };
	struct sim_profile prof;
	struct seq_gates sg;
	struct dev *devs = NULL;
	struct run_result *res = NULL;
	double t0 = now_s(), *tv = NULL, *ev = NULL;
	int rc = 1, false_rb[NG] = { 0 };

	memset(&sg, 0, sizeof(sg));
	if (argc > 4)
		crash_limit = atof(argv[4]);
	if (ndev < 100 || nseeds < 1 || ngood < 1 || !(crash_limit > 0 && crash_limit < 1)) {
		fprintf(stderr, "usage: safety-bench [DEVICES >= 100 [SEEDS >= 1 [GOOD >= 1 [LIMIT in (0,1)]]]]\n");
		return 2;
	}
	if (sim_profile_parse(&prof, NULL, 0, "defaults") < 0) {
		fprintf(stderr, "profile: %s\n", ota_error_last());
		return 1;
	}
	snprintf(limit_gate, sizeof(limit_gate), "{\"metric\": \"crash_rate\", \"max\": %g}", crash_limit);
	if (parse_gate("crash_free", limit_gate, &sg.crash_free) < 0 ||
	    parse_gate("regress50",
		       "{\"metric\": \"crashes_per_device_hour\", \"baseline\": \"previous\", \"max_increase\": \"50%\"}",
		       &sg.regress50) < 0 ||
	    parse_gate("regress",
		       "{\"metric\": \"crashes_per_device_hour\", \"baseline\": \"previous\", \"max_increase\": \"100%\"}",
		       &sg.regress) < 0)
		goto out;
	devs = xcalloc(ndev, sizeof(*devs));
	res = xcalloc((size_t)(nseeds > ngood ? nseeds : ngood), sizeof(*res));
	tv = xcalloc((size_t)nseeds, sizeof(*tv));
	ev = xcalloc((size_t)nseeds, sizeof(*ev));

	printf("== rollout safety: %u devices (fleetsim model), steps 1%%/6h 5%%/6h 25%%/24h 100%%/%dh, hourly batches,\n"
	       "   baseline crash_rate %.3f, %d seeds per rate; gates: naive crashed/reporting > %g (n >= %d),\n"
	       "   wilson lower bound (alpha %g) > %g, sequential crash_rate max %g + crashes_per_device_hour\n"
	       "   +100%% vs baseline (seq +50%%: the same with max_increase 50%%)\n",
	       ndev, WATCH_100, BASE_RATE, nseeds, crash_limit, NAIVE_MIN, ALPHA, crash_limit, crash_limit);
	printf("   %-17s %-10s %9s %18s %22s\n", "new crash_rate", "gate", "detected", "hours mean/median",
	       "exposure mean/median");
	for (size_t r = 0; r < OTA_ARRAY_SIZE(deltas); r++) {
		double rate = BASE_RATE + deltas[r];
		for (int s = 0; s < nseeds; s++)
			run_one(devs, ndev, &prof, (uint64_t)(s + 1), rate, &sg, &res[s]);
		for (int g = 0; g < NG; g++) {
			int k = 0;
			double tsum = 0, esum = 0;
			for (int s = 0; s < nseeds; s++) {
				esum += res[s].exposure[g];
				ev[s] = res[s].exposure[g];
				if (res[s].detected[g]) {
					tsum += res[s].at_h[g];
					tv[k++] = res[s].at_h[g];
				}
			}
			printf("   %.3f (+%.1f%%)    %-10s %4d/%-4d ", rate, deltas[r] * 100, gate_names[g], k, nseeds);
			if (k)
				printf("%9.1f / %-6.1f ", tsum / k, median(tv, k));
			else
				printf("%18s ", "never");
			printf("%10.2f%% / %.2f%%\n", 100 * esum / nseeds, 100 * median(ev, nseeds));
		}
	}
	for (int s = 0; s < ngood; s++) {
		run_one(devs, ndev, &prof, (uint64_t)(1000 + s), BASE_RATE, &sg, &res[s]);
		for (int g = 0; g < NG; g++)
			false_rb[g] += res[s].detected[g];
	}
	printf("   false rollbacks over %d good releases (crash_rate %.3f):\n  ", ngood, BASE_RATE);
	for (int g = 0; g < NG; g++)
		printf("  %s %d/%d (%.0f%%)", gate_names[g], false_rb[g], ngood, 100.0 * false_rb[g] / ngood);
	printf("\n   (%.1f s)\n", now_s() - t0);
	rc = 0;
out:
	free(tv);
	free(ev);
	free(res);
	free(devs);
	gate_spec_release(&sg.crash_free);
	gate_spec_release(&sg.regress);
	gate_spec_release(&sg.regress50);
	sim_profile_release(&prof);
	return rc;
}
