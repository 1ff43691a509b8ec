/*
 * fleetstore_bench.c - what the fleet store writes to disk per accepted
 * report, and how fast reports are accepted, with a million devices
 * (docs/benchmarks.md, "fleet store").  Figures are printed, never
 * asserted.
 *
 * In process, like gate-bench: a real fleet (fleet.db in a fresh directory
 * under $TMPDIR, default /tmp: point it at the disk the state directory
 * lives on), fed through fleet_checkin_async and fleet_report_async (JSON
 * bodies, no HTTP).  For each layout, the snapshot layout the daemon uses
 * and then the legacy layout (OTACD_FLEET_LAYOUT=legacy, one text row per
 * device merged into a B-tree keyed by id):
 *
 *   1. N devices check in (two hardware variants, tags region and tier),
 *      64 in flight, each answered after the commit that holds it;
 *   2. ROUNDS rounds of N/2 reports each from devices picked at random:
 *      download, install, boot_ok (on the new version), then heartbeats
 *      with uptime, in batches of 500, 16 in flight;
 *   3. fleet_close (its final checkpoint counts) and the same fleet opened
 *      again: the time a restart takes to load it.
 *
 * Bytes written are this process's /proc/self/io write_bytes (what reached
 * the block layer: WAL, checkpoints, the database) and wchar (every byte
 * passed to write(2)), over phase 2 and the close.  Commit latency is a
 * batch's time from submission to its done callback (the answer a device
 * would wait for).  The last line is the ratios snapshot/legacy.
 *
 *   fleetstore-bench [DEVICES [ROUNDS]]     (defaults 1000000 and 6)
 */
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../common/util.h"
#include "../orchestrator/fleet/fleet.h"

#define BATCH 500
#define IN_FLIGHT 16
#define CHECKIN_IN_FLIGHT 64
#define PRODUCT "sensor-node"
#define OLD "1.4.0"
#define NEW "1.5.0"

struct flight {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int n, failed;
	double *lat;       /* per batch: submission time, then latency (s) */
	size_t nlat;
};

struct req {
	struct flight *fl;
	size_t slot;       /* into lat, or (size_t)-1 */
};

struct result {
	double checkin_s, report_s, load_s;
	int64_t reports, accepted;
	double write_bytes, wchar;
	double p50_ms, p99_ms;
	double db_mb;
};

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void proc_io(double *write_bytes, double *wchar)
{
	char line[128];
	FILE *fp = fopen("/proc/self/io", "r");
	*write_bytes = *wchar = 0;
	if (!fp)
		return;
	while (fgets(line, sizeof(line), fp)) {
		if (!strncmp(line, "write_bytes:", 12))
			*write_bytes = atof(line + 12);
		else if (!strncmp(line, "wchar:", 6))
			*wchar = atof(line + 6);
	}
	fclose(fp);
}

static void done(void *ctx, int rc)
{
	struct req *r = ctx;
	struct flight *fl = r->fl;
	double t = now_s();
	pthread_mutex_lock(&fl->mu);
	if (r->slot != (size_t)-1)
		fl->lat[r->slot] = t - fl->lat[r->slot];
	fl->n--;
	if (rc < 0)
		fl->failed++;
	pthread_cond_broadcast(&fl->cv);
	pthread_mutex_unlock(&fl->mu);
	free(r);
}

static struct req *take(struct flight *fl, int limit, size_t slot)
{
	struct req *r = xcalloc(1, sizeof(*r));
	r->fl = fl;
	r->slot = slot;
	pthread_mutex_lock(&fl->mu);
	while (fl->n >= limit)
		pthread_cond_wait(&fl->cv, &fl->mu);
	fl->n++;
	if (slot != (size_t)-1)
		fl->lat[slot] = now_s();
	pthread_mutex_unlock(&fl->mu);
	return r;
}

static void wait_all(struct flight *fl)
{
	pthread_mutex_lock(&fl->mu);
	while (fl->n > 0)
		pthread_cond_wait(&fl->cv, &fl->mu);
	pthread_mutex_unlock(&fl->mu);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static void device_id(char *buf, size_t n, int i)
{
	snprintf(buf, n, "sn-%08d", i);
}

static int checkin_all(struct fleet *f, int ndev)
{
	static const char *const region[] = { "eu", "us", "ap" };
	struct flight fl = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, NULL, 0 };
	char id[32];
	int rc = 0;

	for (int i = 0; i < ndev && rc >= 0; i++) {
		json_t *answer = NULL, *body;
		struct req *r;
		device_id(id, sizeof(id), i);
		body = json_pack("{ss ss ss ss ss sI s{ss ss}}", "device", id, "product", PRODUCT, "hardware",
				 i % 2 ? "rev-b" : "rev-a", "bootloader", "1.0.0", "version", OLD, "security_counter",
				 (json_int_t)1, "tags", "region", region[i % 3], "tier", i % 10 ? "ga" : "beta");
		r = take(&fl, CHECKIN_IN_FLIGHT, (size_t)-1);
		rc = fleet_checkin_async(f, body, &answer, done, r);
		if (rc <= 0)
			done(r, rc);
		json_decref(body);
		json_decref(answer);
	}
	wait_all(&fl);
	if (rc >= 0 && fl.failed)
		rc = ota_error_set(OTA_ERROR, "%d check-ins failed to commit", fl.failed);
	return rc < 0 ? rc : 0;
}

static int report_rounds(struct fleet *f, int ndev, int rounds, struct result *res)
{
	static const char *const events[] = { "download", "install", "boot_ok" };
	struct flight fl = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, NULL, 0 };
	int64_t per_round = ndev / 2, nbatches = (per_round + BATCH - 1) / BATCH * rounds;
	unsigned seed = 12345;
	char id[32];
	int rc = 0;

	fl.lat = xcalloc((size_t)nbatches, sizeof(double));
	for (int round = 0; round < rounds && rc >= 0; round++) {
		const char *event = round < 3 ? events[round] : "heartbeat";
		for (int64_t i = 0; i < per_round && rc >= 0; i += BATCH) {
			json_t *arr = json_array(), *body = json_pack("{so}", "reports", arr), *refused = NULL;
			int accepted = 0;
			struct req *r;
			for (int64_t j = i; j < i + BATCH && j < per_round; j++) {
				json_t *rep;
				device_id(id, sizeof(id), (int)(rand_r(&seed) % (unsigned)ndev));
				rep = json_pack("{ss ss ss}", "device", id, "version", NEW, "event", event);
				if (round >= 3)
					json_object_set_new(rep, "uptime_s", json_real(3600.0));
				json_array_append_new(arr, rep);
			}
			res->reports += (int64_t)json_array_size(arr);
			r = take(&fl, IN_FLIGHT, fl.nlat++);
			rc = fleet_report_async(f, body, fleet_trusted_caller, &accepted, &refused, done, r);
			if (rc < 0)
				done(r, rc);
			else
				res->accepted += accepted;
			json_decref(refused);
			json_decref(body);
		}
	}
	wait_all(&fl);
	if (rc >= 0 && fl.failed)
		rc = ota_error_set(OTA_ERROR, "%d report batches failed to commit", fl.failed);
	if (fl.nlat) {
		qsort(fl.lat, fl.nlat, sizeof(double), cmp_double);
		res->p50_ms = fl.lat[fl.nlat / 2] * 1e3;
		res->p99_ms = fl.lat[fl.nlat * 99 / 100] * 1e3;
	}
	free(fl.lat);
	return rc < 0 ? rc : 0;
}

static double file_mb(const char *dir, const char *name)
{
	char *path = xasprintf("%s/%s", dir, name);
	struct stat st;
	double mb = stat(path, &st) == 0 ? (double)st.st_size / 1e6 : 0;
	free(path);
	return mb;
}

static int run(const char *dir, int ndev, int rounds, struct result *res)
{
	struct fleet_config cfg = { 0 };
	struct fleet *f = NULL;
	double t0, wb0, wc0, wb1, wc1;
	int rc;

	memset(res, 0, sizeof(*res));
	cfg.db_path = xasprintf("%s/fleet.db", dir);
	if ((rc = fleet_open(&f, &cfg)) < 0)
		goto out;
	t0 = now_s();
	if ((rc = checkin_all(f, ndev)) < 0)
		goto out;
	res->checkin_s = now_s() - t0;
	proc_io(&wb0, &wc0);
	t0 = now_s();
	if ((rc = report_rounds(f, ndev, rounds, res)) < 0)
		goto out;
	res->report_s = now_s() - t0;
	fleet_close(f);
	f = NULL;
	proc_io(&wb1, &wc1);
	res->write_bytes = wb1 - wb0;
	res->wchar = wc1 - wc0;
	res->db_mb = file_mb(dir, "fleet.db") + file_mb(dir, "fleet.db-wal");
	t0 = now_s();
	if ((rc = fleet_open(&f, &cfg)) < 0)
		goto out;
	res->load_s = now_s() - t0;
out:
	fleet_close(f);
	free((char *)cfg.db_path);
	return rc;
}

int main(int argc, char **argv)
{
	int ndev = argc > 1 ? atoi(argv[1]) : 1000000;
	int rounds = argc > 2 ? atoi(argv[2]) : 6;
	const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	static const char *const layout[] = { "snapshot", "legacy" };
	struct result res[2];

	if (ndev <= 0 || rounds <= 0) {
		fprintf(stderr, "usage: fleetstore-bench [DEVICES [ROUNDS]]\n");
		return 2;
	}
	for (int m = 0; m < 2; m++) {
		char *dir = xasprintf("%s/otacd-fleetstore-XXXXXX", tmp), *cmd;
		struct result *r = &res[m];
		int rc;
		if (!mkdtemp(dir)) {
			perror("mkdtemp");
			free(dir);
			return 1;
		}
		if (m == 1)
			setenv("OTACD_FLEET_LAYOUT", "legacy", 1);
		else
			unsetenv("OTACD_FLEET_LAYOUT");
		rc = run(dir, ndev, rounds, r);
		cmd = xasprintf("rm -rf '%s'", dir);
		if (system(cmd) != 0)
			fprintf(stderr, "could not remove %s\n", dir);
		free(cmd);
		free(dir);
		if (rc < 0) {
			fprintf(stderr, "fleetstore-bench (%s): %s\n", layout[m], ota_error_last());
			return 1;
		}
		printf("  %-8s %d devices checked in in %.1f s (%.0f/s); %lld reports in %d rounds, %lld accepted"
		       " (%lld dropped), %.0f reports/s\n",
		       layout[m], ndev, r->checkin_s, ndev / r->checkin_s, (long long)r->reports, rounds,
		       (long long)r->accepted, (long long)(r->reports - r->accepted), r->accepted / r->report_s);
		printf("  %-8s written per accepted report: %.0f bytes to disk (write_bytes), %.0f bytes through write(2);"
		       " batch answered after p50 %.1f ms, p99 %.1f ms; fleet.db %.0f MB, reopened in %.2f s\n",
		       layout[m], r->write_bytes / (double)r->accepted, r->wchar / (double)r->accepted, r->p50_ms, r->p99_ms,
		       r->db_mb, r->load_s);
		fflush(stdout);
	}
	printf("  snapshot/legacy: bytes to disk per report %.3f, write(2) bytes %.3f, reports/s %.2f, p99 %.2f"
	       " (target: <= 200 bytes to disk per report, none dropped)\n",
	       (res[0].write_bytes / (double)res[0].accepted) / (res[1].write_bytes / (double)res[1].accepted),
	       (res[0].wchar / (double)res[0].accepted) / (res[1].wchar / (double)res[1].accepted),
	       (res[0].accepted / res[0].report_s) / (res[1].accepted / res[1].report_s), res[0].p99_ms / res[1].p99_ms);
	unsetenv("OTACD_FLEET_LAYOUT");
	return 0;
}
