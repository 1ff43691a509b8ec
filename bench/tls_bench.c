/*
 * tls_bench.c - device check-ins per second over TLS against plain HTTP,
 * in the same run on the same machine (issue 13).
 *
 * Opens a fleet (fleet.db in a temporary directory) with 10,000
 * registered devices and two device listeners in this process on
 * 127.0.0.1:0: one plain, one with TLS (a P-256 certificate made with the
 * openssl CLI at start).  A libcurl multi client keeps 64 check-ins in
 * flight for SECONDS per mode, each as a random device with its
 * credential, and counts the 200 answers:
 *
 *   new connection per check-in (a device waking up every few hours):
 *     plain         TCP connect + request
 *     tls-full      TCP + full TLS handshake (no session cache)
 *     tls-resumed   TCP + resumed TLS handshake (session tickets, one
 *                   libcurl share of SSL sessions: CURLSH_SHARE SSL_SESSION)
 *     tls12-full, tls12-resumed   the same two with TLS 1.2 at most
 *                   (libcurl's OpenSSL backend sends no ticket below 1.3:
 *                   this resumes through otacd's session-ID cache).  A
 *                   TLS 1.2 resumption skips the key exchange too; a TLS
 *                   1.3 one still does ECDHE and skips the certificate,
 *                   its signature and its verification.
 *   kept-alive connections (a busy gateway):
 *     plain-ka, tls-ka
 *
 * Both ends run here, so the client's TLS cost is in the figures too.
 * Prints check-ins/s and the ratio against plain.  Nothing asserted.
 *
 *   tls_bench [SECONDS]      (default 5)
 */
#include <curl/curl.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../common/util.h"
#include "../orchestrator/fleet/fleet.h"
#include "../orchestrator/tls/tls.h"

#define KEY "bench-fleet-key-0123456789abcdef"
#define SECRET "bench-device-secret-0123456789abcdef0123456789abcdef0123456789abcdef"
#define NDEV 10000
#define INFLIGHT 64

static char creds[NDEV][33];

enum mode { M_PLAIN, M_TLS_FULL, M_TLS_RESUMED, M_TLS12_FULL, M_TLS12_RESUMED, M_PLAIN_KA, M_TLS_KA, M_NMODES };
static const char *const mode_names[] = { "plain", "tls-full", "tls-resumed", "tls12-full", "tls12-resumed",
					  "plain-ka", "tls-ka" };

struct slot {
	CURL *e;
	struct curl_slist *hdrs;
	char body[512];
	int counted;
};

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* new and resumed TLS sessions, as OpenSSL under libcurl saw them */
static long n_fresh, n_reused;

static size_t sink(char *p, size_t sz, size_t nm, void *ud)
{
	struct slot *s = ud;
	(void)p;
	if (!s->counted) {
		struct curl_tlssessioninfo *info = NULL;
		s->counted = 1;
		if (curl_easy_getinfo(s->e, CURLINFO_TLS_SSL_PTR, &info) == CURLE_OK && info &&
		    info->backend == CURLSSLBACKEND_OPENSSL && info->internals) {
			if (SSL_session_reused(info->internals))
				n_reused++;
			else
				n_fresh++;
		}
	}
	return sz * nm;
}

static void slot_arm(struct slot *s, CURLM *m, enum mode mode, const char *url, const char *ca, CURLSH *share)
{
	int i = rand() % NDEV;
	char auth[80];
	int tls = mode != M_PLAIN && mode != M_PLAIN_KA;
	int tls12 = mode == M_TLS12_FULL || mode == M_TLS12_RESUMED;

	curl_multi_remove_handle(m, s->e);
	curl_slist_free_all(s->hdrs);
	snprintf(auth, sizeof(auth), "Authorization: Bearer %s", creds[i]);
	s->hdrs = curl_slist_append(NULL, auth);
	s->hdrs = curl_slist_append(s->hdrs, "Content-Type: application/json");
	s->hdrs = curl_slist_append(s->hdrs, "Expect:");
	snprintf(s->body, sizeof(s->body),
		 "{\"device\":\"dev-%07d\",\"product\":\"sensor-node\",\"hardware\":\"%s\",\"bootloader\":\"1.2.0\","
		 "\"version\":\"1.4.0\",\"security_counter\":3,\"slot\":\"confirmed\",\"tags\":{\"region\":\"eu\"}}",
		 i, i % 2 ? "mps2-an385" : "nrf52840dk");
	curl_easy_setopt(s->e, CURLOPT_URL, url);
	curl_easy_setopt(s->e, CURLOPT_HTTPHEADER, s->hdrs);
	curl_easy_setopt(s->e, CURLOPT_POSTFIELDS, s->body);
	curl_easy_setopt(s->e, CURLOPT_WRITEFUNCTION, sink);
	curl_easy_setopt(s->e, CURLOPT_WRITEDATA, s);
	s->counted = 0;
	curl_easy_setopt(s->e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(s->e, CURLOPT_TIMEOUT_MS, 30000L);
	curl_easy_setopt(s->e, CURLOPT_FORBID_REUSE, mode == M_PLAIN_KA || mode == M_TLS_KA ? 0L : 1L);
	if (tls) {
		curl_easy_setopt(s->e, CURLOPT_CAINFO, ca);
		curl_easy_setopt(s->e, CURLOPT_SSLVERSION,
				 (long)CURL_SSLVERSION_TLSv1_2 | (tls12 ? CURL_SSLVERSION_MAX_TLSv1_2 : 0));
		curl_easy_setopt(s->e, CURLOPT_SSL_SESSIONID_CACHE,
				 mode == M_TLS_FULL || mode == M_TLS12_FULL ? 0L : 1L);
		if (mode == M_TLS_RESUMED || mode == M_TLS12_RESUMED) {
			curl_easy_setopt(s->e, CURLOPT_SHARE, share);
		}
	}
	curl_multi_add_handle(m, s->e);
}

/* Check-ins per second in mode against url for seconds; errors in *errs. */
static double run_mode(enum mode mode, const char *url, const char *ca, int seconds, long *errs)
{
	CURLM *m = curl_multi_init();
	CURLSH *share = curl_share_init();
	struct slot slots[INFLIGHT];
	long ok = 0, bad = 0;
	double t0 = now_s(), end = t0 + seconds, t1;
	int running = 0;

	curl_share_setopt(share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
	curl_multi_setopt(m, CURLMOPT_MAXCONNECTS, (long)INFLIGHT);
	memset(slots, 0, sizeof(slots));
	for (int i = 0; i < INFLIGHT; i++) {
		slots[i].e = curl_easy_init();
		curl_easy_setopt(slots[i].e, CURLOPT_PRIVATE, &slots[i]);
		slot_arm(&slots[i], m, mode, url, ca, share);
	}
	for (;;) {
		CURLMsg *msg;
		int left;
		curl_multi_perform(m, &running);
		while ((msg = curl_multi_info_read(m, &left))) {
			struct slot *s;
			long st = 0;
			if (msg->msg != CURLMSG_DONE)
				continue;
			curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&s);
			curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &st);
			if (msg->data.result == CURLE_OK && st == 200)
				ok++;
			else if (bad++ == 0)
				fprintf(stderr, "tls_bench: %s: %s (HTTP %ld)\n", mode_names[mode],
					curl_easy_strerror(msg->data.result), st);
			if (now_s() < end)
				slot_arm(s, m, mode, url, ca, share);
			else
				curl_multi_remove_handle(m, s->e);
		}
		if (now_s() >= end && running == 0)
			break;
		curl_multi_poll(m, NULL, 0, 100, NULL);
	}
	t1 = now_s();
	for (int i = 0; i < INFLIGHT; i++) {
		curl_multi_remove_handle(m, slots[i].e);
		curl_easy_cleanup(slots[i].e);
		curl_slist_free_all(slots[i].hdrs);
	}
	curl_multi_cleanup(m);
	curl_share_cleanup(share);
	*errs = bad;
	return ok / (t1 - t0);
}

int main(int argc, char **argv)
{
	int seconds = argc > 1 ? atoi(argv[1]) : 5;
	char dir[] = "/tmp/tls_bench.XXXXXX";
	char *db = NULL, *cmd = NULL, *ca = NULL, *cert = NULL, *key = NULL, *purl = NULL, *turl = NULL;
	struct fleet *f = NULL;
	struct devapi *plain = NULL, *secure = NULL;
	struct tls_server *t = NULL;
	struct tls_files files = { 0 };
	struct fleet_config cfg = { .fleet_key = KEY, .device_secret = SECRET, .poll_ms = 6 * 3600 * 1000LL };
	struct fleet_image imgs[] = {
		{ "mps2-an385", "1111111111111111111111111111111111111111111111111111111111111111", "application", 100000 },
		{ "nrf52840dk", "2222222222222222222222222222222222222222222222222222222222222222", "application", 100000 },
	};
	struct fleet_exposure x = { 7, "sensor-node", "1.5.0", 3, "1.0.0", imgs, 2, 1, "bench", 1000, NULL, 0, NULL, 0, NULL, 0 };
	double rps[M_NMODES];
	long errs[M_NMODES] = { 0 };
	int rc = 1;

	if (seconds <= 0)
		seconds = 5;
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	cmd = xasprintf("cd %s && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key"
			" -out ca.pem -days 2 -subj /CN=bench-ca 2>/dev/null && openssl req -newkey ec -pkeyopt"
			" ec_paramgen_curve:P-256 -nodes -keyout srv.key -out srv.csr -subj /CN=bench 2>/dev/null &&"
			" printf 'subjectAltName=IP:127.0.0.1\\n' > ext && openssl x509 -req -in srv.csr -CA ca.pem"
			" -CAkey ca.key -set_serial 1 -days 2 -extfile ext -out srv.pem 2>/dev/null",
			dir);
	if (system(cmd) != 0) {
		fprintf(stderr, "tls_bench: cannot make the certificates with openssl\n");
		goto out;
	}
	ca = xasprintf("%s/ca.pem", dir);
	cert = xasprintf("%s/srv.pem", dir);
	key = xasprintf("%s/srv.key", dir);
	files.cert = cert;
	files.key = key;
	db = xasprintf("%s/fleet.db", dir);
	cfg.db_path = db;
	curl_global_init(CURL_GLOBAL_DEFAULT);
	/* the daemon's defaults (request_timeout, device_max_connections_per_client) */
	devapi_set_limits(10000, 4096);
	if (fleet_open(&f, &cfg) < 0 || fleet_set_exposure(f, &x) < 0 || tls_server_new(&t, "bench", &files) < 0 ||
	    devapi_start(&plain, f, "127.0.0.1:0", 1) < 0) {
		fprintf(stderr, "tls_bench: %s\n", ota_error_last());
		goto out;
	}
	devapi_set_tls(t);
	if (devapi_start(&secure, f, "127.0.0.1:0", 1) < 0) {
		fprintf(stderr, "tls_bench: %s\n", ota_error_last());
		goto out;
	}
	devapi_set_tls(NULL);
	for (int first = 0; first < NDEV; first += 1000) {
		static char ids[1000][32];
		const char *idp[1000];
		for (int i = 0; i < 1000; i++) {
			snprintf(ids[i], sizeof(ids[i]), "dev-%07d", first + i);
			idp[i] = ids[i];
		}
		if (fleet_register(f, idp, 1000, "bench", creds + first) < 0) {
			fprintf(stderr, "tls_bench: %s\n", ota_error_last());
			goto out;
		}
	}
	purl = xasprintf("http://127.0.0.1:%d/device/v1/checkin", devapi_port(plain));
	turl = xasprintf("https://127.0.0.1:%d/device/v1/checkin", devapi_port(secure));
	srand(7);
	printf("tls bench: %d check-ins in flight, %ds per mode, %ld CPUs (client and server on this machine)\n",
	       INFLIGHT, seconds, sysconf(_SC_NPROCESSORS_ONLN));
	for (int mo = 0; mo < M_NMODES; mo++) {
		int tls = mo != M_PLAIN && mo != M_PLAIN_KA;
		n_fresh = n_reused = 0;
		rps[mo] = run_mode((enum mode)mo, tls ? turl : purl, ca, seconds, &errs[mo]);
		if (tls && mo != M_TLS_KA)
			printf("  %-13s TLS sessions: %ld new, %ld resumed\n", mode_names[mo], n_fresh, n_reused);
	}
	printf("%-13s %10s  %s\n", "mode", "check-in/s", "ratio");
	for (int mo = 0; mo < M_NMODES; mo++) {
		double base = mo >= M_PLAIN_KA ? rps[M_PLAIN_KA] : rps[M_PLAIN];
		printf("%-13s %10.0f  %5.2f x %s%s\n", mode_names[mo], rps[mo], base > 0 ? rps[mo] / base : 0,
		       mo >= M_PLAIN_KA ? "plain-ka" : "plain", errs[mo] ? "  (failed check-ins!)" : "");
	}
	printf("%-13s %10.2f x (tls-resumed / tls-full; TLS 1.2: %.2f x)\n", "resumption",
	       rps[M_TLS_FULL] > 0 ? rps[M_TLS_RESUMED] / rps[M_TLS_FULL] : 0,
	       rps[M_TLS12_FULL] > 0 ? rps[M_TLS12_RESUMED] / rps[M_TLS12_FULL] : 0);
	rc = 0;
	for (int mo = 0; mo < M_NMODES; mo++)
		rc |= errs[mo] != 0;
out:
	devapi_stop(secure);
	devapi_stop(plain);
	tls_server_free(t);
	fleet_close(f);
	free(cmd);
	cmd = xasprintf("rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "cannot remove %s\n", dir);
	free(cmd);
	free(db);
	free(ca);
	free(cert);
	free(key);
	free(purl);
	free(turl);
	curl_global_cleanup();
	return rc;
}
