/*
 * devca_bench.c - what naming a device by its certificate costs
 * (issue 13, orchestrator/fleet/fleet_ca.h), against the HMAC device
 * credential check it replaces or joins, in the same run.
 *
 * One fleet (fleet.db in a temporary directory) with N registered devices
 * and one device CA (EC P-256, made here) that issued each of them a
 * certificate.  Two threads each: fleet_device_auth (a shard lookup and
 * one HMAC) over every device, then fleet_auth_cert (DER parse, chain and
 * signature check against the CA, usages, CN, revocation lookup) over the
 * same devices: once each (first sight: parse and verify), then again and
 * again (seen before: the verified-certificate cache of fleet_ca.c, still
 * checked against the clock and the revocations).  Prints checks per
 * second of each and the ratios.  Figures only, nothing asserted.
 *
 * What it tells the device listener: a certificate check costs an ECDSA
 * verification, so it belongs once per TLS session (the handshake already
 * verified the chain; resumed sessions keep the identity), not once per
 * request.
 *
 *   devca-bench [DEVICES] [SECONDS]     (default 2000 devices, 2 s per side)
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "../common/util.h"
#include "../orchestrator/fleet/fleet.h"
#include "../orchestrator/fleet/fleet_ca.h"

#define THREADS 2

static struct fleet *fleet;
static int ndev;
static char (*creds)[33];
static char **ids;
static unsigned char **ders;
static size_t *der_lens;
static double seconds = 2;

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct run {
	int cert;
	int64_t n, failed;
	int seed;
	int once;         /* one pass over its share of devices, not timed */
};

static void *worker(void *arg)
{
	struct run *r = arg;
	double end = now_s() + seconds;
	int i = r->seed;
	char id[128];
	if (r->once) {
		for (int k = 0; k < ndev / THREADS; k++, i++) {
			r->failed += fleet_auth_cert(fleet, ders[i], der_lens[i], ids[i], NULL, id, sizeof(id)) < 0;
			r->n++;
		}
		return NULL;
	}
	while (now_s() < end) {
		for (int k = 0; k < 256; k++, i = (i + 1) % ndev) {
			int rc = r->cert ? fleet_auth_cert(fleet, ders[i], der_lens[i], ids[i], NULL, id, sizeof(id))
					 : fleet_device_auth(fleet, ids[i], creds[i]);
			r->n++;
			r->failed += rc < 0;
		}
	}
	return NULL;
}

static double measure(int cert, int once, int64_t *failed)
{
	pthread_t t[THREADS];
	struct run r[THREADS];
	double start = now_s(), total = 0;
	for (int i = 0; i < THREADS; i++) {
		r[i] = (struct run){ cert, 0, 0, i * (ndev / THREADS), once };
		pthread_create(&t[i], NULL, worker, &r[i]);
	}
	*failed = 0;
	for (int i = 0; i < THREADS; i++) {
		pthread_join(t[i], NULL);
		total += (double)r[i].n;
		*failed += r[i].failed;
	}
	return total / (now_s() - start);
}

int main(int argc, char **argv)
{
	char dir[] = "/tmp/otacd-devca-bench-XXXXXX", *db;
	struct fleet_config fc = { 0 };
	struct fleet_ca_config cc = { 0 };
	struct fleet_ca *ca = NULL;
	EVP_PKEY *k = EVP_EC_gen("P-256");
	double token_rps, first_rps, cert_rps;
	int64_t f1, f2, f3;
	char cmd[256];

	ndev = argc > 1 ? atoi(argv[1]) : 2000;
	if (argc > 2)
		seconds = atof(argv[2]);
	if (ndev < THREADS || !k || !mkdtemp(dir))
		return 2;
	db = xasprintf("%s/fleet.db", dir);
	fc.db_path = db;
	fc.device_secret = "bench-device-secret-0123456789abcdef0123456789abcdef0123456789abcdef";
	cc.state_dir = dir;
	if (fleet_open(&fleet, &fc) < 0 || fleet_ca_open(&ca, &cc) < 0 || fleet_ca_install(ca, "bench CA", 30, NULL, NULL) < 0) {
		fprintf(stderr, "devca-bench: %s\n", ota_error_last());
		return 1;
	}
	fleet_set_ca(fleet, ca, FLEET_AUTH_BOTH);
	ids = xcalloc((size_t)ndev, sizeof(*ids));
	creds = xcalloc((size_t)ndev, sizeof(*creds));
	ders = xcalloc((size_t)ndev, sizeof(*ders));
	der_lens = xcalloc((size_t)ndev, sizeof(*der_lens));
	{ /* one CSR (one key: the cost measured is the CA's side) */
		X509_REQ *req = X509_REQ_new();
		BIO *b = BIO_new(BIO_s_mem());
		char *pem;
		long n;
		void *csr = NULL;
		X509_REQ_set_pubkey(req, k);
		X509_REQ_sign(req, k, EVP_sha256());
		PEM_write_bio_X509_REQ(b, req);
		n = BIO_get_mem_data(b, &pem);
		if (fleet_ca_csr_parse(&csr, pem, (size_t)n, NULL) < 0)
			return 1;
		for (int i = 0; i < ndev; i++) {
			char serial[41], *cert;
			int64_t nb, na;
			ids[i] = xasprintf("dev-%07d", i);
			if (fleet_ca_issue(ca, csr, ids[i], NULL, &cert, serial, &nb, &na) < 0 ||
			    fleet_ca_pem_to_der(cert, strlen(cert), &ders[i], &der_lens[i]) < 0)
				return 1;
			free(cert);
		}
		fleet_ca_csr_free(csr);
		BIO_free(b);
		X509_REQ_free(req);
	}
	if (fleet_register(fleet, (const char *const *)ids, (size_t)ndev, "bench", creds) < 0)
		return 1;
	/* not-before is now: start a second later so every certificate is valid */
	sleep(1);
	token_rps = measure(0, 0, &f1);
	first_rps = measure(1, 1, &f2);
	cert_rps = measure(1, 0, &f3);
	printf("device identity checks, %d devices, %d threads, %.0f s each:\n", ndev, THREADS, seconds);
	printf("  HMAC device credential (fleet_device_auth):          %10.0f checks/s  (%lld failed)\n", token_rps,
	       (long long)f1);
	printf("  client certificate, first sight (parse + verify):   %10.0f checks/s  (%lld failed)\n", first_rps,
	       (long long)f2);
	printf("  client certificate, seen before (verified cache):   %10.0f checks/s  (%lld failed)\n", cert_rps,
	       (long long)f3);
	printf("  ratio token/cert: %.1fx first sight, %.1fx seen before\n", first_rps > 0 ? token_rps / first_rps : 0,
	       cert_rps > 0 ? token_rps / cert_rps : 0);
	fleet_close(fleet);
	fleet_ca_close(ca);
	EVP_PKEY_free(k);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		return 1;
	return 0;
}
