/*
 * snapshot_bench.c - how long a device snapshot of fleet.db takes at
 * scale, and what a clean stop in the middle of one costs
 * (docs/benchmarks.md, "snapshot-bench").  Figures are printed, never
 * asserted.
 *
 * In process: a real fleet (fleet.db in a fresh directory under $TMPDIR)
 * with a 2 s poll interval, so a snapshot starts 2 s after a check-in that
 * moved only last_seen (orchestrator/fleet/fleet_store.c):
 *
 *   1. N devices check in (64 in flight, each answered once committed);
 *      then fleet_close with nothing pending: the baseline close, and the
 *      reopen (load) time;
 *   2. every device checks in again (last_seen only: no row), and the
 *      snapshot that carries them runs on an idle writer (a round every
 *      250 ms): its time from start to switch and its commits, from
 *      fleet_store_stats;
 *   3. every device checks in again, and once that snapshot has written a
 *      few shards, fleet_close: the last round captures every shard left
 *      (the clean-stop case).  Its time against the baseline close, then a
 *      reopen that counts the devices whose last_seen is not their last
 *      check-in's (0 expected).
 *
 *   snapshot-bench [DEVICES]     (default 1000000)
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
#include "../orchestrator/fleet/fleet_int.h"
#include "flight.h"

#define IN_FLIGHT 64
#define POLL_MS 2000

static void device_id(char *buf, size_t n, int i)
{
	snprintf(buf, n, "sb-%08d", i);
}

/* Every device checks in; seen (if not NULL) gets each answer's `now`. */
static int checkin_all(struct fleet *f, int ndev, int64_t *seen)
{
	struct flight fl = FLIGHT_INIT;
	char id[32];
	int rc = 0;

	for (int i = 0; i < ndev && rc >= 0; i++) {
		json_t *answer = NULL, *body;
		device_id(id, sizeof(id), i);
		body = json_pack("{ss ss ss ss ss sI}", "device", id, "product", "sensor-node", "hardware",
				 i % 2 ? "rev-b" : "rev-a", "bootloader", "1.0.0", "version", "1.4.0", "security_counter",
				 (json_int_t)1);
		flight_take(&fl, IN_FLIGHT);
		rc = fleet_checkin_async(f, body, &answer, flight_done, &fl);
		if (rc <= 0)
			flight_done(&fl, rc);
		if (rc >= 0 && seen)
			seen[i] = json_integer_value(json_object_get(answer, "now"));
		json_decref(body);
		json_decref(answer);
	}
	flight_wait_all(&fl);
	if (rc >= 0 && fl.failed)
		rc = ota_error_set(OTA_ERROR, "%d check-ins failed to commit", fl.failed);
	return rc < 0 ? rc : 0;
}

static struct fleet *open_fleet(const char *db, double *load_s)
{
	struct fleet_config cfg = { .db_path = db, .poll_ms = POLL_MS };
	struct fleet *f = NULL;
	double t0 = bench_now_s();
	if (fleet_open(&f, &cfg) < 0) {
		fprintf(stderr, "snapshot-bench: %s\n", ota_error_last());
		exit(1);
	}
	if (load_s)
		*load_s = bench_now_s() - t0;
	return f;
}

static double close_s(struct fleet *f)
{
	double t0 = bench_now_s();
	fleet_close(f);
	return bench_now_s() - t0;
}

static int building(struct fleet *f, int *shard)
{
	*shard = __atomic_load_n(&f->build_shard, __ATOMIC_RELAXED);
	return __atomic_load_n(&f->building, __ATOMIC_RELAXED);
}

int main(int argc, char **argv)
{
	int ndev = argc > 1 ? atoi(argv[1]) : 1000000, shard = 0, stale = 0;
	const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	char *dir = xasprintf("%s/snapshot-bench.XXXXXX", tmp), *db, *cmd;
	double load_s, idle_close_s, mid_close_s, t0, t_checkin;
	int64_t *seen = xcalloc((size_t)ndev, sizeof(*seen));
	struct fleet_store_stats st;
	struct fleet *f;

	if (ndev <= 0 || !mkdtemp(dir)) {
		fprintf(stderr, "usage: snapshot-bench [DEVICES] (and a writable $TMPDIR)\n");
		return 2;
	}
	db = xasprintf("%s/fleet.db", dir);
	f = open_fleet(db, NULL);
	t0 = bench_now_s();
	if (checkin_all(f, ndev, NULL) < 0)
		goto fail;
	t_checkin = bench_now_s() - t0;
	idle_close_s = close_s(f);
	f = open_fleet(db, &load_s);
	printf("%d devices: first check-ins %.1f s, close with nothing pending %.3f s, reopen %.2f s\n", ndev,
	       t_checkin, idle_close_s, load_s);

	/* 2: a snapshot on an idle writer */
	if (checkin_all(f, ndev, NULL) < 0)
		goto fail;
	t0 = bench_now_s();
	do {
		usleep(50000);
		fleet_store_stats(f, &st);
	} while (st.snapshots == 0);
	printf("snapshot (idle writer, %lld devices a commit at most): %.2f s from start to switch, %lld commits;"
	       " written %.1f s after the last_seen-only check-ins (poll interval %.1f s)\n",
	       (long long)f->snap_round, (double)st.snap_ms / 1000.0, (long long)st.snap_rounds, bench_now_s() - t0,
	       POLL_MS / 1000.0);

	/* 3: a clean stop in the middle of the next one */
	if (checkin_all(f, ndev, seen) < 0)
		goto fail;
	while (!building(f, &shard) || shard < 8)
		usleep(5000);
	mid_close_s = close_s(f);
	f = open_fleet(db, NULL);
	for (int i = 0; i < ndev; i++) {
		char id[32];
		uint64_t h;
		struct device *d;
		device_id(id, sizeof(id), i);
		h = fleet_fnv(id, strlen(id), FLEET_FNV_BASIS);
		d = fleet_device_find_locked(fleet_shard(f, h), id, h);
		stale += !d || d->last_seen != seen[i];
	}
	fleet_close(f);
	printf("clean stop with the snapshot at shard %d of 64: close %.3f s (%.1fx the close with nothing pending);"
	       " devices whose last_seen was not their last check-in's after the reopen: %d\n",
	       shard, mid_close_s, idle_close_s > 0 ? mid_close_s / idle_close_s : 0.0, stale);
	cmd = xasprintf("rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "snapshot-bench: cannot remove %s\n", dir);
	free(cmd);
	free(seen);
	free(db);
	free(dir);
	return stale ? 1 : 0;
fail:
	fprintf(stderr, "snapshot-bench: %s\n", ota_error_last());
	return 1;
}
