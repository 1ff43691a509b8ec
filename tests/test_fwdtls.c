/*
 * test_fwdtls.c - instance-to-instance HTTPS with a private CA (issue 16,
 * docs/scale.md, "Forwarding", "The fleet on several instances").
 *
 * A real PostgreSQL cluster and real otacd processes whose API and device
 * listeners speak TLS with a certificate of a CA this test makes (openssl
 * CLI), which no system store knows.  A follower with `forward_ca:` naming
 * that CA forwards an API write and the device calls (registration,
 * check-in, report) to the leader over HTTPS and relays its answers; a
 * follower whose forward_ca is another CA refuses to forward (503, naming
 * the certificate) and nothing reaches the leader; a forward_ca that is
 * not a PEM certificate file stops otacd at start with exit 2.  Every wait
 * has a generous cap that ends early on success; nothing is timed.
 *
 * Without PostgreSQL's binaries the multi-instance case is skipped.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../common/httpc.h"
#include "harness.h"
#include "pgcluster.h"

static const char *const args[] = { "--local-agents", "0", NULL };

static struct {
	char *pki;   /* the CAs and the servers' certificate */
	char *ca;    /* the private CA the instances' certificate chains to */
} g;

static int setup(void **state)
{
	struct buf out = BUF_INIT;
	(void)state;
	g.pki = h_tmpdir();
	if (h_sh(&out,
		 "cd '%s' && set -e;"
		 "N='-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes';"
		 "openssl req -x509 $N -keyout ca.key -out ca.pem -days 2 -subj /CN=fwdtls-private-ca;"
		 "openssl req -x509 $N -keyout other.key -out other.pem -days 2 -subj /CN=fwdtls-other-ca;"
		 "openssl req $N -keyout srv.key -out srv.csr -subj /CN=otacd-instance;"
		 "printf 'subjectAltName=IP:127.0.0.1\\nextendedKeyUsage=serverAuth\\n' > srv.ext;"
		 "openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -set_serial 0x1001 -days 2"
		 " -extfile srv.ext -out srv.pem;"
		 "printf 'not a certificate\\n' > junk.pem",
		 g.pki) != 0) {
		fprintf(stderr, "%s\n", buf_cstr(&out));
		buf_release(&out);
		return -1;
	}
	buf_release(&out);
	g.ca = xasprintf("%s/ca.pem", g.pki);
	/* the test's own clients trust the private CA */
	httpc_set_cacert(g.ca);
	setenv("OTACD_CACERT", g.ca, 1);
	return 0;
}

static int teardown(void **state)
{
	struct buf out = BUF_INIT;
	(void)state;
	h_sh(&out, "rm -rf '%s'", g.pki);
	buf_release(&out);
	free(g.pki);
	free(g.ca);
	return 0;
}

/* An instance's config: TLS on every listener, forward_ca naming ca. */
static char *instance_yaml(const char *secrets, const char *ca)
{
	return xasprintf("leader_poll: 1s\n%stls:\n  cert: %s/srv.pem\n  key: %s/srv.key\nforward_ca: %s/%s\n", secrets,
			 g.pki, g.pki, g.pki, ca);
}

static long token_add(struct daemon *d, const char *name, json_t **ans)
{
	json_t *req = json_pack("{ss ss}", "name", name, "role", "viewer");
	long st = h_post(d, "/api/v1/tokens", req, ans);
	json_decref(req);
	return st;
}

static json_t *checkin_body(const char *id, const char *version)
{
	return json_pack("{ss ss ss ss ss si}", "device", id, "product", "fw", "hardware", "mps2-an385", "bootloader",
			 "1.0.0", "version", version, "security_counter", 1);
}

/* A check-in through d (503 retried while the leader's fleet opens). */
static long checkin(struct daemon *d, const char *id, const char *cred, const char *version)
{
	long st = 0;
	for (int k = 0; k < 600; k++) {
		if ((st = h_dev_post(d, "/device/v1/checkin", cred, checkin_body(id, version), NULL)) != 503)
			break;
		h_msleep(50);
	}
	return st;
}

/* Wait (up to 30 s) until d counts n devices on version. */
static void wait_devices(struct daemon *d, const char *version, int64_t n)
{
	int64_t on = -1;
	for (int k = 0; k < 300 && (on = h_fleet_devices(d, version)) != n; k++)
		h_msleep(100);
	assert_int_equal(on, n);
}

static void a_follower_forwards_over_https_to_a_leader_of_its_forward_ca_and_refuses_another(void **state)
{
	struct pgcluster pg;
	struct daemon d[3];
	struct buf body = BUF_INIT;
	char *otacd_db, *fleet_db, *secrets, *yaml, *other, **creds;
	json_t *ans = NULL, *rep;
	const char *tok;

	(void)state;
	memset(d, 0, sizeof(d));
	if (h_pg_start_dbs(&pg, &otacd_db, &fleet_db) > 0)
		skip();
	secrets = h_fleet_secrets_yaml(pg.dir);
	yaml = instance_yaml(secrets, "ca.pem");
	h_pg_instances(d, 2, otacd_db, fleet_db, yaml, args);
	for (int i = 0; i < 3; i++)
		d[i].fleet_key = xstrndup(strstr(secrets, "fleet_key: \"") + 12, 64);
	assert_int_equal(strncmp(d[1].url, "https://", 8), 0);
	assert_int_equal(strncmp(d[1].device_url, "https://", 8), 0);
	assert_false(h_leads(&d[1]));

	/* an API write through the follower, answered by the leader: the
	 * token it made works there */
	assert_int_equal(token_add(&d[1], "through-follower", &ans), 201);
	assert_non_null(tok = json_string_value(json_object_get(ans, "token")));
	assert_int_equal(h_raw(&d[0], "GET", "/api/v1/runs", tok, NULL, NULL, 0, NULL), 200);
	json_decref(ans);

	/* the device calls through the follower's TLS device listener */
	creds = h_register_devices(&d[1], "dev", 2);
	assert_int_equal(checkin(&d[1], "dev-0000", creds[0], "1.0.0"), 200);
	assert_int_equal(checkin(&d[1], "dev-0001", creds[1], "1.0.0"), 200);
	rep = json_pack("{s[{ss ss ss ss}]}", "reports", "device", "dev-0000", "credential", creds[0], "version",
			"1.0.0", "event", "heartbeat");
	assert_int_equal(h_dev_post(&d[1], "/device/v1/reports", NULL, rep, &ans), 200);
	assert_int_equal(json_integer_value(json_object_get(ans, "accepted")), 1);
	json_decref(ans);
	wait_devices(&d[0], "1.0.0", 2);

	/* a follower trusting another CA: the leader's certificate does not
	 * verify, nothing is sent (503), the leader sees nothing */
	other = instance_yaml(secrets, "other.pem");
	h_init(&d[2], other);
	h_use_database(&d[2], otacd_db, fleet_db);
	d[2].follower_ok = 1;
	d[2].token = xstrdup(d[0].token);
	assert_int_equal(h_start(&d[2], args), 0);
	assert_false(h_leads(&d[2]));
	{
		json_t *req = json_pack("{ss ss}", "name", "through-other", "role", "viewer");
		char *text = json_dumps(req, JSON_COMPACT);
		assert_int_equal(h_raw(&d[2], "POST", "/api/v1/tokens", d[2].token, "application/json", text,
				       strlen(text), &body),
				 503);
		if (!strstr(buf_cstr(&body), "certificate"))
			fail_msg("503 without naming the certificate: %s", buf_cstr(&body));
		free(text);
		json_decref(req);
	}
	/* the name is free on the leader: the write never reached it */
	assert_int_equal(token_add(&d[0], "through-other", NULL), 201);
	/* a check-in to a new version: refused, and the leader (which
	 * answers a forwarded change after its commit) still has none there */
	assert_int_equal(h_dev_post(&d[2], "/device/v1/checkin", creds[0], checkin_body("dev-0000", "2.0.0"), NULL),
			 503);
	assert_true(h_fleet_devices(&d[0], "2.0.0") <= 0); /* -1: no such series */
	/* and the trusted follower still forwards */
	assert_int_equal(checkin(&d[1], "dev-0000", creds[0], "2.0.0"), 200);
	wait_devices(&d[0], "2.0.0", 1);

	for (int i = 0; i < 2; i++)
		free(creds[i]);
	free(creds);
	for (int i = 0; i < 3; i++)
		h_cleanup(&d[i]);
	pgcluster_stop(&pg);
	buf_release(&body);
	free(other);
	free(yaml);
	free(secrets);
	free(otacd_db);
	free(fleet_db);
}

/* otacd with forward_ca naming name (in the pki directory): its exit
 * status (124: still running after 30 s) and output. */
static int start_with_forward_ca(const char *name, struct buf *out)
{
	char *dir = h_tmpdir(), *config = xasprintf("%s/otacd.yml", dir), *otacd = h_bin("otacd");
	char *yaml = xasprintf("local_agents: 0\nforward_ca: %s/%s\n", g.pki, name);
	struct buf rm = BUF_INIT;
	int rc;

	assert_int_equal(ota_write_file_atomic(config, yaml, strlen(yaml), 0600), 0);
	rc = h_sh(out, "timeout 30 %s --state-dir %s --config %s --listen 127.0.0.1:0 --device-listen 127.0.0.1:0", otacd,
		  dir, config);
	h_sh(&rm, "rm -rf %s", dir);
	buf_release(&rm);
	free(yaml);
	free(otacd);
	free(config);
	free(dir);
	return rc;
}

static void a_forward_ca_that_is_not_a_pem_certificate_file_stops_otacd_with_exit_2(void **state)
{
	struct buf out = BUF_INIT;
	(void)state;
	assert_int_equal(start_with_forward_ca("junk.pem", &out), 2);
	if (!strstr(buf_cstr(&out), "forward_ca") || !strstr(buf_cstr(&out), "no PEM certificate"))
		fail_msg("refused without saying why:\n%s", buf_cstr(&out));
	assert_int_equal(start_with_forward_ca("missing.pem", &out), 2);
	if (!strstr(buf_cstr(&out), "forward_ca") || !strstr(buf_cstr(&out), "No such file"))
		fail_msg("refused without saying why:\n%s", buf_cstr(&out));
	/* a private key is not a CA bundle either */
	assert_int_equal(start_with_forward_ca("ca.key", &out), 2);
	buf_release(&out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(a_forward_ca_that_is_not_a_pem_certificate_file_stops_otacd_with_exit_2),
		cmocka_unit_test(a_follower_forwards_over_https_to_a_leader_of_its_forward_ca_and_refuses_another),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
