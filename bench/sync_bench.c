/*
 * sync_bench.c - what synchronous=FULL costs against NORMAL, measured in
 * the same run on the same disk (docs/benchmarks.md, durability).
 *
 * For each mode (FULL, the daemon's setting, then NORMAL) in a fresh
 * temporary directory under $TMPDIR (default /tmp; point it at the disk
 * the state directory lives on):
 *
 *   otacd.db   N single-statement commits (store_meta_set, the shape of an
 *              API write: one answer, one commit): commits/s, ms each;
 *   fleet.db   D devices checked in, then R reports in batches of 100,
 *              8 batches in flight (fleet_report_async, each answered after
 *              the group commit that holds it): reports/s.
 *
 * Prints the figures and the ratio FULL/NORMAL.  Nothing asserted.
 *
 *   sync-bench [N [D [R]]]     (defaults 500, 10000, 200000)
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../common/util.h"
#include "../orchestrator/fleet/fleet.h"
#include "../orchestrator/store.h"
#include "flight.h"

#define BATCH 100
#define IN_FLIGHT 8

/* Commits per second of n single-statement transactions on otacd.db. */
static int bench_store(const char *dir, int n, double *rate)
{
	char *path = xasprintf("%s/otacd.db", dir);
	struct store *s = NULL;
	char val[32];
	double t0;
	int rc;

	if ((rc = store_open(&s, path)) < 0)
		goto out;
	t0 = bench_now_s();
	for (int i = 0; i < n; i++) {
		snprintf(val, sizeof(val), "%d", i);
		if ((rc = store_meta_set(s, "bench", val)) < 0)
			goto out;
	}
	*rate = n / (bench_now_s() - t0);
out:
	store_close(s);
	free(path);
	return rc;
}

/* Reports per second through the fleet writer's group commits. */
static int bench_fleet(const char *dir, int ndev, int nrep, double *rate)
{
	struct fleet_config cfg = { 0 };
	struct flight fl = FLIGHT_INIT;
	char *path = xasprintf("%s/fleet.db", dir);
	struct fleet *f = NULL;
	char id[32];
	double t0;
	int rc, accepted;

	cfg.db_path = path;
	if ((rc = fleet_open(&f, &cfg)) < 0)
		goto out;
	for (int i = 0; i < ndev; i++) {
		json_t *answer = NULL, *body;
		snprintf(id, sizeof(id), "dev-%07d", i);
		body = json_pack("{ss ss ss ss ss sI}", "device", id, "product", "bench", "hardware", "hw",
				 "bootloader", "1.0.0", "version", "1.0.0", "security_counter", (json_int_t)1);
		rc = fleet_checkin(f, body, &answer);
		json_decref(body);
		json_decref(answer);
		if (rc < 0)
			goto out;
	}
	t0 = bench_now_s();
	for (int i = 0; i < nrep; i += BATCH) {
		json_t *arr = json_array(), *body = json_pack("{so}", "reports", arr), *refused = NULL;
		for (int j = i; j < i + BATCH && j < nrep; j++) {
			snprintf(id, sizeof(id), "dev-%07d", j % ndev);
			json_array_append_new(arr, json_pack("{ss ss ss sf}", "device", id, "version", "1.0.0", "event",
							     "heartbeat", "uptime_s", 60.0));
		}
		flight_take(&fl, IN_FLIGHT);
		rc = fleet_report_async(f, body, fleet_trusted_caller, &accepted, &refused, flight_done, &fl);
		json_decref(refused);
		refused = NULL;
		json_decref(body);
		if (rc < 0) {
			flight_done(&fl, rc);
			break;
		}
	}
	flight_wait_all(&fl);
	if (rc >= 0 && fl.failed)
		rc = ota_error_set(OTA_ERROR, "%d report batches failed", fl.failed);
	*rate = nrep / (bench_now_s() - t0);
out:
	fleet_close(f);
	free(path);
	return rc;
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 500;
	int ndev = argc > 2 ? atoi(argv[2]) : 10000;
	int nrep = argc > 3 ? atoi(argv[3]) : 200000;
	const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	double commits[2] = { 0 }, reports[2] = { 0 };
	static const char *const mode[] = { "FULL", "NORMAL" };
	int rc = 1;

	if (n <= 0 || ndev <= 0 || nrep <= 0) {
		fprintf(stderr, "usage: sync-bench [COMMITS [DEVICES [REPORTS]]]\n");
		return 2;
	}
	for (int m = 0; m < 2; m++) {
		char *dir = xasprintf("%s/otacd-sync-XXXXXX", tmp);
		if (!mkdtemp(dir)) {
			perror("mkdtemp");
			free(dir);
			return 1;
		}
		store_set_synchronous(m == 0);
		if (bench_store(dir, n, &commits[m]) < 0 || bench_fleet(dir, ndev, nrep, &reports[m]) < 0) {
			fprintf(stderr, "sync-bench (%s): %s\n", mode[m], ota_error_last());
			free(dir);
			goto out;
		}
		printf("  synchronous=%-6s otacd.db %7.0f commits/s (%.2f ms each); fleet.db %8.0f reports/s"
		       " (batches of %d, %d in flight)\n",
		       mode[m], commits[m], 1e3 / commits[m], reports[m], BATCH, IN_FLIGHT);
		fflush(stdout);
		char *cmd = xasprintf("rm -rf '%s'", dir);
		if (system(cmd) != 0)
			fprintf(stderr, "could not remove %s\n", dir);
		free(cmd);
		free(dir);
	}
	printf("  FULL/NORMAL: otacd.db commits %.2f, fleet.db reports %.2f (1.00 = free)\n", commits[0] / commits[1],
	       reports[0] / reports[1]);
	rc = 0;
out:
	store_set_synchronous(1);
	return rc;
}
