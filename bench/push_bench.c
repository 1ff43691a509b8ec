/*
 * push_bench.c - what push hints cost the rollout controller's thread
 * (docs/delivery.md, "Push"): with N devices in a real fleet (fleet.db in
 * a fresh directory under $TMPDIR), the time fleet_set_exposure takes for
 * steps 1 %, 5 %, 25 %, 100 % without a notifier (the baseline, first)
 * and then with push_fleet_notify on a real struct push whose broker is
 * down (hints are formatted, queued and dropped: the controller's share of
 * the work).  Figures are printed, never asserted.
 *
 *   push-bench [DEVICES]     (default 1000000)
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
#include "../orchestrator/push/push.h"

#define IN_FLIGHT 64

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int inflight, failed;

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void done(void *ctx, int rc)
{
	(void)ctx;
	pthread_mutex_lock(&mu);
	inflight--;
	failed += rc < 0;
	pthread_cond_broadcast(&cv);
	pthread_mutex_unlock(&mu);
}

static void checkin_all(struct fleet *f, int n)
{
	char id[32];
	for (int i = 0; i < n; i++) {
		json_t *ans = NULL, *body;
		int rc;
		snprintf(id, sizeof(id), "sn-%08d", i);
		body = json_pack("{ss ss ss ss ss si ss}", "device", id, "product", "fw", "hardware", i % 2 ? "rev-b" : "rev-a",
				 "bootloader", "1.0.0", "version", "1.0.0", "security_counter", 0, "slot", "confirmed");
		pthread_mutex_lock(&mu);
		while (inflight >= IN_FLIGHT)
			pthread_cond_wait(&cv, &mu);
		inflight++;
		pthread_mutex_unlock(&mu);
		rc = fleet_checkin_async(f, body, &ans, done, NULL);
		if (rc <= 0)
			done(NULL, rc);
		json_decref(body);
		json_decref(ans);
	}
	pthread_mutex_lock(&mu);
	while (inflight > 0)
		pthread_cond_wait(&cv, &mu);
	pthread_mutex_unlock(&mu);
}

/* Steps 1, 5, 25, 100 % of release id (both variants); seconds each in t. */
static void steps(struct fleet *f, int64_t id, double t[4])
{
	static const int bp[4] = { 100, 500, 2500, 10000 };
	struct fleet_image img[2] = { { "rev-a", NULL, "application", 1000 }, { "rev-b", NULL, "application", 1000 } };
	char sha[65];
	memset(sha, 'a' + (int)id, 64);
	sha[64] = 0;
	img[0].sha256 = img[1].sha256 = sha;
	for (int k = 0; k < 4; k++) {
		struct fleet_exposure x = { 0 };
		double t0;
		x.release_id = id;
		x.product = "fw";
		x.version = id == 1 ? "1.1.0" : id == 2 ? "1.2.0" : "1.3.0";
		x.images = img;
		x.nimages = 2;
		x.active = 1;
		x.salt = id == 1 ? "salt-1" : id == 2 ? "salt-2" : "salt-3";
		x.basis_points = bp[k];
		t0 = now_s();
		if (fleet_set_exposure(f, &x) < 0) {
			fprintf(stderr, "push-bench: %s\n", ota_error_last());
			exit(1);
		}
		t[k] = now_s() - t0;
	}
	fleet_remove_exposure(f, id);
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 1000000;
	const char *tmp = getenv("TMPDIR");
	char *dir = xasprintf("%s/push-bench-XXXXXX", tmp && *tmp ? tmp : "/tmp"), *db, *cmd;
	struct fleet_config cfg = { 0 };
	struct fleet *f = NULL;
	struct push *p = NULL;
	struct push_stats st;
	double base[4], with[4], t0;

	if (!mkdtemp(dir) || n < 1)
		return 1;
	db = xasprintf("%s/fleet.db", dir);
	cfg.db_path = db;
	cfg.poll_ms = 6 * 3600 * 1000LL;
	if (fleet_open(&f, &cfg) < 0) {
		fprintf(stderr, "push-bench: %s\n", ota_error_last());
		return 1;
	}
	t0 = now_s();
	checkin_all(f, n);
	printf("push-bench: %d devices checked in in %.1f s (%d failed)\n", n, now_s() - t0, failed);
	steps(f, 1, base);
	printf("push-bench: fleet_set_exposure at %d devices (ms)     1%%        5%%        25%%       100%%\n", n);
	printf("push-bench: baseline, no notifier                %9.1f %9.1f %9.1f %9.1f\n", base[0] * 1e3, base[1] * 1e3,
	       base[2] * 1e3, base[3] * 1e3);
	/* a broker that is down (port 1 on loopback): hints are made, queued, dropped */
	for (int v = 0; v < 2; v++) {
		json_t *pc = v ? json_pack("{ss si si}", "url", "mqtt://127.0.0.1:1", "per_device_max", 10000000, "queue",
					   n + 1)
			       : json_pack("{ss}", "url", "mqtt://127.0.0.1:1");
		if (push_open(&p, pc) < 0) {
			fprintf(stderr, "push-bench: %s\n", ota_error_last());
			return 1;
		}
		fleet_set_notify(f, push_fleet_notify, p);
		steps(f, 2 + v, with);
		fleet_set_notify(f, NULL, NULL);
		push_stats(p, &st);
		printf("push-bench: %-40s %9.1f %9.1f %9.1f %9.1f   (%llu hints)\n",
		       v ? "push, every hint per device" : "push, defaults (per_device_max 1000)", with[0] * 1e3,
		       with[1] * 1e3, with[2] * 1e3, with[3] * 1e3, (unsigned long long)st.queued);
		push_close(p);
		json_decref(pc);
	}
	fleet_close(f);
	cmd = xasprintf("rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "push-bench: could not remove %s\n", dir);
	free(cmd);
	free(db);
	free(dir);
	return 0;
}
