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
 *
 * With --backends, the snapshot layout on each storage backend instead,
 * same run, same disk: SQLite (fleet.db under $TMPDIR) and PostgreSQL (a
 * durable cluster started with tests/pgcluster.c, fleet_database being its
 * URL).  For each: DEVICES registered (fleet_register, 10,000 ids a
 * commit) and checked in, the bench process's RSS per device then, ROUNDS
 * rounds of reports as above with the bytes written per report (for
 * PostgreSQL the write_bytes of every process of the cluster, after a
 * CHECKPOINT: WAL and data pages), the database's size, and after
 * fleet_close the reopen: its time and RSS per device loaded.  Last, what
 * a gate check reads at that size (fleet_aggregate of the canary and
 * fleet_baseline, gate-bench's calls; gate_judge is arithmetic on them):
 * it should not depend on DEVICES.
 *
 *   fleetstore-bench --backends [DEVICES [ROUNDS]]     (defaults 1000000 and 1)
 */
#include <dirent.h>
#include <jansson.h>
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../common/util.h"
#include "../orchestrator/db/db.h"
#include "../orchestrator/fleet/fleet.h"
#include "../tests/pgcluster.h"

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


/* ---- --backends: the snapshot layout on SQLite and on PostgreSQL --------- */

#define REGISTER_CHUNK 10000
#define GATE_CHECKS 20000

struct backend {
	const char *name;
	double register_s, checkin_s, report_s, load_s;
	double rss_dev, load_rss_dev;   /* bytes of RSS per device */
	int64_t reports, accepted;
	double written;                 /* bytes to disk over the reports */
	double rps, per_report;
	double p50_ms, p99_ms, db_mb;
	double gate_p50_us, gate_p99_us;
};

static double rss_bytes(void)
{
	char line[128];
	double kb = 0;
	FILE *fp = fopen("/proc/self/status", "r");
	if (!fp)
		return 0;
	while (fgets(line, sizeof(line), fp))
		if (!strncmp(line, "VmRSS:", 6))
			kb = atof(line + 6);
	fclose(fp);
	return kb * 1024;
}

static double pid_write_bytes(long pid)
{
	char path[64], line[128];
	double wb = 0;
	FILE *fp;
	snprintf(path, sizeof(path), "/proc/%ld/io", pid);
	if (!(fp = fopen(path, "r")))
		return 0;
	while (fgets(line, sizeof(line), fp))
		if (!strncmp(line, "write_bytes:", 12))
			wb = atof(line + 12);
	fclose(fp);
	return wb;
}

/* write_bytes of the postmaster and its children (the backends, WAL
 * writer, checkpointer, ...): what the cluster sent to the block layer. */
static double cluster_write_bytes(const struct pgcluster *pg)
{
	char path[300], line[128];
	long postmaster = 0;
	double sum = 0;
	DIR *d;
	struct dirent *e;
	FILE *fp;

	snprintf(path, sizeof(path), "%s/data/postmaster.pid", pg->dir);
	if (!(fp = fopen(path, "r")))
		return 0;
	if (fgets(line, sizeof(line), fp))
		postmaster = atol(line);
	fclose(fp);
	sum = pid_write_bytes(postmaster);
	if (!(d = opendir("/proc")))
		return sum;
	while ((e = readdir(d))) {
		long pid = atol(e->d_name), ppid = 0;
		if (pid <= 0)
			continue;
		snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
		if (!(fp = fopen(path, "r")))
			continue;
		if (fgets(line, sizeof(line), fp)) {
			const char *p = strrchr(line, ')');
			if (p)
				sscanf(p + 1, " %*c %ld", &ppid);
		}
		fclose(fp);
		if (ppid == postmaster)
			sum += pid_write_bytes(pid);
	}
	closedir(d);
	return sum;
}

/* One value of a query on a side connection to the cluster (-1 on error). */
static double pg_value(const struct pgcluster *pg, const char *sql)
{
	struct db *db;
	struct db_stmt *st;
	double v = -1;

	if (db_open(&db, pg->url, 0) < 0)
		return -1;
	if ((st = db_stmt(db, sql)) && db_step(st) == 1)
		v = db_column_double(st, 0);
	if (st)
		db_reset(st);
	db_close(db);
	return v;
}

static int register_all(struct fleet *f, int ndev)
{
	char (*ids)[32] = xcalloc(REGISTER_CHUNK, sizeof(*ids));
	const char **ptr = xcalloc(REGISTER_CHUNK, sizeof(*ptr));
	int rc = 0;

	for (int i = 0; i < ndev && rc >= 0; i += REGISTER_CHUNK) {
		size_t n = 0;
		for (int j = i; j < ndev && j < i + REGISTER_CHUNK; j++, n++) {
			device_id(ids[n], sizeof(ids[n]), j);
			ptr[n] = ids[n];
		}
		rc = fleet_register(f, ptr, n, "fleetstore-bench", NULL);
	}
	free(ids);
	free(ptr);
	return rc;
}

/* What a gate check reads, GATE_CHECKS times: p50 and p99 in µs. */
static void gate_reads(struct fleet *f, struct backend *r)
{
	double *us = xcalloc(GATE_CHECKS, sizeof(double));
	int64_t sink = 0;

	for (int i = 0; i < GATE_CHECKS; i++) {
		struct fleet_agg canary, base;
		double t0 = now_s();
		fleet_aggregate(f, PRODUCT, NEW, "*", &canary);
		fleet_baseline(f, PRODUCT, NEW, OLD, "*", &base);
		us[i] = (now_s() - t0) * 1e6;
		sink += canary.boot_ok + base.devices;
	}
	qsort(us, GATE_CHECKS, sizeof(double), cmp_double);
	r->gate_p50_us = us[GATE_CHECKS / 2];
	r->gate_p99_us = us[GATE_CHECKS * 99 / 100];
	if (sink < 0)
		printf("?\n");
	free(us);
}

/* pg: the cluster when db_path is its URL, NULL for SQLite (dir holds fleet.db). */
static int run_backend(const char *dir, const struct pgcluster *pg, int ndev, int rounds, struct backend *r)
{
	struct fleet_config cfg = { 0 };
	struct result res = { 0 };
	struct fleet *f = NULL;
	double t0, rss0, w0 = 0, wc0 = 0, w1 = 0, wc1 = 0;
	int rc;

	cfg.db_path = pg ? xstrdup(pg->url) : xasprintf("%s/fleet.db", dir);
	cfg.device_secret = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
	malloc_trim(0);
	rss0 = rss_bytes();
	if ((rc = fleet_open(&f, &cfg)) < 0)
		goto out;
	t0 = now_s();
	if ((rc = register_all(f, ndev)) < 0)
		goto out;
	r->register_s = now_s() - t0;
	t0 = now_s();
	if ((rc = checkin_all(f, ndev)) < 0)
		goto out;
	r->checkin_s = now_s() - t0;
	r->rss_dev = (rss_bytes() - rss0) / ndev;

	if (pg) {
		pg_value(pg, "CHECKPOINT");
		w0 = cluster_write_bytes(pg);
	} else {
		proc_io(&w0, &wc0);
	}
	t0 = now_s();
	if ((rc = report_rounds(f, ndev, rounds, &res)) < 0)
		goto out;
	r->report_s = now_s() - t0;
	if (pg) {
		/* what fleet_close's checkpoint does for SQLite */
		pg_value(pg, "CHECKPOINT");
		w1 = cluster_write_bytes(pg);
		r->db_mb = pg_value(pg, "SELECT pg_database_size(current_database())") / 1e6;
		fleet_close(f);
		f = NULL;
	} else {
		fleet_close(f);
		f = NULL;
		proc_io(&w1, &wc1);
		r->db_mb = file_mb(dir, "fleet.db") + file_mb(dir, "fleet.db-wal");
	}
	r->written = w1 - w0;
	r->reports = res.reports;
	r->accepted = res.accepted;
	r->p50_ms = res.p50_ms;
	r->p99_ms = res.p99_ms;
	r->rps = r->accepted / r->report_s;
	r->per_report = r->accepted ? r->written / (double)r->accepted : 0;

	malloc_trim(0);
	rss0 = rss_bytes();
	t0 = now_s();
	if ((rc = fleet_open(&f, &cfg)) < 0)
		goto out;
	r->load_s = now_s() - t0;
	r->load_rss_dev = (rss_bytes() - rss0) / ndev;
	gate_reads(f, r);
out:
	fleet_close(f);
	free((char *)cfg.db_path);
	return rc;
}

static int backends_main(int ndev, int rounds)
{
	struct backend b[2] = { { .name = "SQLite" }, { .name = "PostgreSQL" } };
	struct pgcluster cluster;
	const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	int nb, rc;

	unsetenv("OTACD_FLEET_LAYOUT");
	/* the cluster first: its watchdog is forked from this process, which
	 * should not hold the SQLite run's freed heap then (copy on write) */
	rc = pgcluster_start(&cluster, 1);
	if (rc < 0) {
		fprintf(stderr, "fleetstore-bench: %s\n", ota_error_last());
		return 1;
	}
	nb = rc == 1 ? 1 : 2;
	if (rc == 1)
		printf("  PostgreSQL is not installed: SQLite only\n");
	for (int m = 0; m < nb; m++) {
		char *dir = NULL, *cmd;
		if (m == 0) {
			dir = xasprintf("%s/otacd-fleetstore-XXXXXX", tmp);
			if (!mkdtemp(dir)) {
				perror("mkdtemp");
				free(dir);
				pgcluster_stop(&cluster);
				return 1;
			}
			rc = run_backend(dir, NULL, ndev, rounds, &b[m]);
			cmd = xasprintf("rm -rf '%s'", dir);
			if (system(cmd) != 0)
				fprintf(stderr, "could not remove %s\n", dir);
			free(cmd);
			free(dir);
		} else {
			rc = run_backend(NULL, &cluster, ndev, rounds, &b[m]);
			pgcluster_stop(&cluster);
		}
		if (rc < 0) {
			fprintf(stderr, "fleetstore-bench (%s): %s\n", b[m].name, ota_error_last());
			pgcluster_stop(&cluster);
			return 1;
		}
		printf("  %-10s %d devices: registered in %.1f s, checked in in %.1f s; %lld reports (%lld accepted) in %.1f s;"
		       " reopened in %.2f s\n",
		       b[m].name, ndev, b[m].register_s, b[m].checkin_s, (long long)b[m].reports,
		       (long long)b[m].accepted, b[m].report_s, b[m].load_s);
		fflush(stdout);
	}
	printf("\n  %-44s %12s %12s %8s\n", "", "SQLite", "PostgreSQL", "PG/SQL");
#define ROW(label, fmt, expr)                                                                                  \
	do {                                                                                                   \
		double v0 = b[0].expr, v1 = nb > 1 ? b[1].expr : 0;                                           \
		printf("  %-44s " fmt " " fmt " %8.2f\n", label, v0, v1, nb > 1 && v0 > 0 ? v1 / v0 : 0);     \
	} while (0)
	ROW("register (s)", "%12.1f", register_s);
	ROW("check in (s)", "%12.1f", checkin_s);
	ROW("RSS per device after check-in (bytes)", "%12.0f", rss_dev);
	ROW("reports/s", "%12.0f", rps);
	ROW("bytes to disk per accepted report", "%12.0f", per_report);
	ROW("batch of 500 answered after, p99 (ms)", "%12.1f", p99_ms);
	ROW("database size (MB)", "%12.0f", db_mb);
	ROW("reopen: load every device (s)", "%12.2f", load_s);
	ROW("RSS per device loaded (bytes)", "%12.0f", load_rss_dev);
	ROW("gate check's reads p50 (us)", "%12.1f", gate_p50_us);
	ROW("gate check's reads p99 (us)", "%12.1f", gate_p99_us);
#undef ROW
	return 0;
}

int main(int argc, char **argv)
{
	int ndev = argc > 1 ? atoi(argv[1]) : 1000000;
	int rounds = argc > 2 ? atoi(argv[2]) : 6;
	const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	static const char *const layout[] = { "snapshot", "legacy" };
	struct result res[2];

	if (argc > 1 && !strcmp(argv[1], "--backends")) {
		ndev = argc > 2 ? atoi(argv[2]) : 1000000;
		rounds = argc > 3 ? atoi(argv[3]) : 1;
		if (ndev > 0 && rounds > 0)
			return backends_main(ndev, rounds);
	}
	if (ndev <= 0 || rounds <= 0) {
		fprintf(stderr, "usage: fleetstore-bench [--backends] [DEVICES [ROUNDS]]\n");
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
