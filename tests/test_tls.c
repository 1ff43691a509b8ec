/*
 * test_tls.c - TLS on otacd's listeners (issue 13, "TLS everywhere it
 * matters"), end to end: the real daemon with a `tls:` block, the real
 * otacd-agent, otactl and otacd-fleetsim with --cacert, curl and openssl
 * s_client as outside clients.  Certificates are made at test time with
 * the openssl CLI in a temp dir (a test CA, a foreign CA, server and
 * device certificates); no key is checked in.
 *
 * One daemon serves the group (TLS on the API and the device listener,
 * the test CA as the device listener's client CA); the certificate reload
 * runs last because it replaces the served certificate.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/sha.h>

#include "../common/httpc.h"
#include "../orchestrator/tls/tls.h"
#include "harness.h"

struct tls_env {
	struct daemon d;
	char *pki;       /* the test's certificates and keys */
	char *ca;        /* pki/ca.pem */
	int port, dport; /* the API's and the device listener's ports */
};

/* ---- certificates ------------------------------------------------------------ */

#define NEWKEY "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"

/*
 * In dir: ca.pem (the test CA) and evil.pem (a foreign CA); srv.pem /
 * srv2.pem (serials 1001 and 2002, the same key srv.key) for 127.0.0.1;
 * dev-ca.pem and dev-evil.pem, client certificates of "dev-0001" from
 * each CA; k.pub, a signing key for the simulator.
 */
static void make_pki(const char *dir)
{
	struct buf out = BUF_INIT;
	int rc = h_sh(&out,
		      "{ cd '%s' && set -e;"
		      "openssl req -x509 " NEWKEY " -keyout ca.key -out ca.pem -days 2 -subj /CN=otacd-test-ca;"
		      "openssl req -x509 " NEWKEY " -keyout evil.key -out evil.pem -days 2 -subj /CN=evil-ca;"
		      "openssl req " NEWKEY " -keyout srv.key -out srv.csr -subj /CN=otacd-test;"
		      "printf 'subjectAltName=IP:127.0.0.1\\nextendedKeyUsage=serverAuth\\n' > srv.ext;"
		      "openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -set_serial 0x1001 -days 2"
		      " -extfile srv.ext -out srv.pem;"
		      "openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -set_serial 0x2002 -days 2"
		      " -extfile srv.ext -out srv2.pem;"
		      "printf 'extendedKeyUsage=clientAuth\\n' > dev.ext;"
		      "for who in ca evil; do"
		      " openssl req " NEWKEY " -keyout dev-$who.key -out dev-$who.csr -subj /CN=dev-0001;"
		      " openssl x509 -req -in dev-$who.csr -CA $who.pem -CAkey $who.key -set_serial 7 -days 2"
		      " -extfile dev.ext -out dev-$who.pem; done;"
		      "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out k.pem;"
		      "openssl pkey -in k.pem -pubout -out k.pub; }",
		      dir);
	if (rc != 0)
		fail_msg("making the test PKI: %s", buf_cstr(&out));
	buf_release(&out);
}

static int port_of(const char *url)
{
	const char *c = strrchr(url, ':');
	return c ? atoi(c + 1) : 0;
}

/* The serial the API listener serves now ("2002"), via openssl s_client. */
static char *served_serial(struct tls_env *e)
{
	struct buf out = BUF_INIT;
	char *s, *nl;
	h_sh(&out, "openssl s_client -connect 127.0.0.1:%d -CAfile '%s' </dev/null 2>/dev/null | openssl x509 -noout -serial",
	     e->port, e->ca);
	s = strstr(buf_cstr(&out), "serial=");
	s = xstrdup(s ? s + 7 : "");
	if ((nl = strchr(s, '\n')))
		*nl = '\0';
	buf_release(&out);
	return s;
}

static int setup(void **state)
{
	struct tls_env *e = xcalloc(1, sizeof(*e));
	char *yaml;

	e->pki = h_tmpdir();
	make_pki(e->pki);
	e->ca = xasprintf("%s/ca.pem", e->pki);
	yaml = xasprintf("local_agents: 0\npoll_interval: 1s\n"
			 "tls:\n"
			 "  cert: %s/srv.pem\n"
			 "  key: %s/srv.key\n"
			 "  client_ca: %s/ca.pem\n",
			 e->pki, e->pki, e->pki);
	/* the harness (httpc) and every agent it starts trust the test CA */
	httpc_set_cacert(e->ca);
	setenv("OTACD_CACERT", e->ca, 1);
	h_init(&e->d, yaml);
	free(yaml);
	if (h_start(&e->d, NULL) != 0)
		return -1;
	e->port = port_of(e->d.url);
	e->dport = port_of(e->d.device_url);
	*state = e;
	return 0;
}

static int teardown(void **state)
{
	struct tls_env *e = *state;
	struct buf out = BUF_INIT;
	h_cleanup(&e->d);
	if (!getenv("OTACD_KEEP"))
		h_sh(&out, "rm -rf '%s'", e->pki);
	buf_release(&out);
	free(e->pki);
	free(e->ca);
	free(e);
	return 0;
}

/* ---- the listeners serve TLS, clients verify ----------------------------------- */

/* Of three GETs of the device listener's /metrics with openssl s_client
 * opts, each offering the session of the one before: how many resumed. */
static int resumed(struct tls_env *e, const char *opts)
{
	struct buf out = BUF_INIT;
	int n;
	h_sh(&out, "cd %s && rm -f s.pem && for i in 1 2 3; do printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' |"
		   " openssl s_client -ign_eof %s -connect 127.0.0.1:%d -CAfile ca.pem -sess_out s.pem"
		   " $(test -f s.pem && echo -sess_in s.pem) 2>/dev/null; done | grep -c '^Reused,'",
	     e->pki, opts, e->dport);
	n = atoi(buf_cstr(&out));
	buf_release(&out);
	return n;
}

static void daemon_serves_https_urls_tls12_and_13_and_resumes_sessions(void **state)
{
	struct tls_env *e = *state;
	struct buf out = BUF_INIT;

	assert_int_equal(strncmp(e->d.url, "https://127.0.0.1:", 18), 0);
	assert_int_equal(strncmp(e->d.device_url, "https://127.0.0.1:", 18), 0);
	assert_int_equal(h_sh(&out, "curl -sS --cacert '%s' --tlsv1.3 -w ' %%{http_code}' %s/api/v1/health", e->ca,
			      e->d.url), 0);
	assert_non_null(strstr(buf_cstr(&out), " 200"));
	assert_int_equal(h_sh(&out, "curl -sS --cacert '%s' --tls-max 1.2 -w ' %%{http_code}' %s/api/v1/health", e->ca,
			      e->d.url), 0);
	assert_non_null(strstr(buf_cstr(&out), " 200"));
	assert_int_equal(h_sh(&out, "curl -sS --cacert '%s' -w ' %%{http_code}' %s/metrics", e->ca, e->d.device_url), 0);
	assert_non_null(strstr(buf_cstr(&out), " 200"));
	/* sessions resume: three connections in a row, each offering the
	 * session of the one before (TLS 1.3 tickets; TLS 1.2 tickets, and
	 * session IDs for a client that sends no ticket) */
	assert_int_equal(resumed(e, "-tls1_3"), 2);
	assert_int_equal(resumed(e, "-tls1_2"), 2);
	assert_int_equal(resumed(e, "-tls1_2 -no_ticket"), 2);
	buf_release(&out);
}

static void otactl_works_with_cacert_and_refuses_a_foreign_ca_or_wrong_host(void **state)
{
	struct tls_env *e = *state;
	char *otactl = h_bin("otactl");
	struct buf out = BUF_INIT;

	/* the right CA: the runs come back */
	assert_int_equal(h_sh(&out, "OTACD_CACERT= %s --url %s --token %s --cacert '%s' runs", otactl, e->d.url,
			      e->d.token, e->ca), 0);
	assert_non_null(strstr(buf_cstr(&out), "PIPELINE"));
	/* a foreign CA: unreachable (exit 3), and it says why */
	assert_int_equal(h_sh(&out, "OTACD_CACERT= %s --url %s --token %s --cacert %s/evil.pem runs", otactl,
			      e->d.url, e->d.token, e->pki), 3);
	assert_non_null(strstr(buf_cstr(&out), "certificate"));
	/* no CA at all: the system's CAs do not know the test CA */
	assert_int_equal(h_sh(&out, "OTACD_CACERT= %s --url %s --token %s runs", otactl, e->d.url, e->d.token), 3);
	/* the right CA but another host name than the certificate's */
	assert_int_equal(h_sh(&out, "OTACD_CACERT= %s --url https://localhost:%d --token %s --cacert '%s' runs",
			      otactl, e->port, e->d.token, e->ca), 3);
	assert_true(strstr(buf_cstr(&out), "localhost") || strstr(buf_cstr(&out), "certificate"));
	/* and curl agrees on both */
	assert_int_equal(h_sh(&out, "curl -sS --cacert %s/evil.pem %s/api/v1/health", e->pki, e->d.url), 60);
	assert_int_equal(h_sh(&out, "curl -sS --cacert '%s' https://localhost:%d/api/v1/health", e->ca, e->port), 60);
	buf_release(&out);
	free(otactl);
}

static void an_agent_runs_a_job_over_tls(void **state)
{
	struct tls_env *e = *state;
	int64_t run;
	pid_t agent;

	/* the agent trusts the test CA through $OTACD_CACERT (setup) */
	agent = h_agent(&e->d, "tls-rig", "tlsjob");
	run = h_trigger(&e->d, "name: p\nstages:\n  - name: s\n    agent: { labels: [tlsjob] }\n"
			       "    steps:\n      - run: echo over-tls\n");
	assert_string_equal(h_wait_run(&e->d, run, 30000), "passed");
	kill(agent, SIGTERM);
	waitpid(agent, NULL, 0);
}

static void an_agent_with_a_foreign_ca_takes_no_job(void **state)
{
	struct tls_env *e = *state;
	char *bin = h_bin("otacd-agent"), *token = h_agent_add(&e->d, "evil-rig", "eviljob");
	char *log = xasprintf("%s/agent-evil.log", e->d.dir), *evil = xasprintf("%s/evil.pem", e->pki);
	struct buf out = BUF_INIT;
	json_t *run;
	int64_t id;
	pid_t pid;

	id = h_trigger(&e->d, "name: q\nstages:\n  - name: s\n    agent: { labels: [eviljob] }\n"
			      "    steps:\n      - run: echo never\n");
	pid = fork();
	if (pid == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		h_child_dies_with_test();
		dup2(fd, 1);
		dup2(fd, 2);
		setenv("OTACD_AGENT_TOKEN", token, 1);
		execl(bin, bin, "--url", e->d.url, "--labels", "eviljob", "--cacert", evil, "--workdir", e->d.dir,
		      (char *)NULL);
		_exit(127);
	}
	h_msleep(3000);
	kill(pid, SIGTERM);
	waitpid(pid, NULL, 0);
	run = h_run(&e->d, id);
	assert_string_equal(json_string_value(json_object_get(h_job(run, "s"), "state")), "queued");
	assert_int_equal(ota_read_file(&out, log, 1 << 20), 0);
	assert_non_null(strstr(buf_cstr(&out), "certificate"));
	json_decref(run);
	buf_release(&out);
	free(bin);
	free(token);
	free(log);
	free(evil);
}

static void fleetsim_devices_check_in_and_report_over_tls(void **state)
{
	struct tls_env *e = *state;
	char *bin = h_bin("otacd-fleetsim"), *stats = xasprintf("%s/stats.json", e->d.dir);
	char *calm = h_calm_profile(&e->d);
	struct buf out = BUF_INIT;
	json_t *st;

	assert_int_equal(h_sh(&out, "%s --url %s --devices 40 --seed 3 --key %s/k.pub --fleet-key '%s' --product fw"
				    " --start-version 1.0.0 --report-every 1s --duration 5 --stats %s --cacert '%s'"
				    " --profile %s --quiet",
			      bin, e->d.device_url, e->pki, e->d.fleet_key, stats, e->ca, calm),
			 0);
	free(calm);
	buf_release(&out);
	assert_int_equal(ota_read_file(&out, stats, 1 << 20), 0);
	st = json_loadb(out.ptr, out.len, 0, NULL);
	assert_non_null(st);
	assert_true(json_integer_value(json_object_get(st, "checkins")) >= 40);
	assert_true(json_integer_value(json_object_get(st, "reports_sent")) >= 40);
	assert_int_equal(json_integer_value(json_object_get(st, "reports_rejected")), 0);
	json_decref(st);
	assert_int_equal(h_fleet_devices(&e->d, "1.0.0"), 40);
	/* the same simulator against a foreign CA refuses the server */
	assert_int_not_equal(h_sh(&out, "%s --url %s --devices 5 --seed 4 --key %s/k.pub --fleet-key '%s'"
					" --product fw --duration 3 --cacert %s/evil.pem --quiet",
				  bin, e->d.device_url, e->pki, e->d.fleet_key, e->pki),
			     0);
	assert_non_null(strstr(buf_cstr(&out), "refusing the device API"));
	buf_release(&out);
	free(bin);
	free(stats);
}

/* ---- bad clients ------------------------------------------------------------- */

static void tls11_and_plain_http_are_refused_and_the_daemon_stays_healthy(void **state)
{
	struct tls_env *e = *state;
	struct buf out = BUF_INIT;
	json_t *h = NULL;

	/* TLS 1.1 (and 1.0): no handshake, whatever the client offers */
	assert_int_not_equal(h_sh(&out, "curl -sS --cacert '%s' --tlsv1.0 --tls-max 1.1 --ciphers DEFAULT@SECLEVEL=0"
					" %s/api/v1/health", e->ca, e->d.url), 0);
	h_sh(&out, "openssl s_client -connect 127.0.0.1:%d -tls1_1 -cipher DEFAULT@SECLEVEL=0 </dev/null", e->port);
	assert_non_null(strstr(buf_cstr(&out), "Cipher is (NONE)"));
	h_sh(&out, "openssl s_client -connect 127.0.0.1:%d -tls1_1 -cipher DEFAULT@SECLEVEL=0 </dev/null", e->dport);
	assert_non_null(strstr(buf_cstr(&out), "Cipher is (NONE)"));
	/* a client speaking plain HTTP to a TLS port gets no HTTP answer */
	assert_int_not_equal(h_sh(&out, "curl -sS -m 10 http://127.0.0.1:%d/api/v1/health", e->port), 0);
	assert_null(strstr(buf_cstr(&out), "200"));
	assert_int_not_equal(h_sh(&out, "curl -sS -m 10 http://127.0.0.1:%d/metrics", e->dport), 0);
	assert_int_equal(h_get(&e->d, "/api/v1/health", &h), 200);
	json_decref(h);
	buf_release(&out);
}

/*
 * The test-CA device certificate gets through the device listener's
 * handshake, a foreign-CA one does not, no certificate is fine (token
 * devices).
 */
static void device_listener_refuses_a_client_certificate_of_a_foreign_ca(void **state)
{
	struct tls_env *e = *state;
	struct buf out = BUF_INIT;

	assert_int_equal(h_sh(&out, "curl -sS --cacert '%s' --cert %s/dev-ca.pem --key %s/dev-ca.key -w ' %%{http_code}'"
				    " %s/metrics", e->ca, e->pki, e->pki, e->d.device_url), 0);
	assert_non_null(strstr(buf_cstr(&out), " 200"));
	for (int v = 2; v <= 3; v++) {
		assert_int_not_equal(h_sh(&out, "curl -sS --cacert '%s' --tls-max 1.%d --cert %s/dev-evil.pem"
						" --key %s/dev-evil.key %s/metrics", e->ca, v, e->pki, e->pki,
					  e->d.device_url), 0);
		assert_null(strstr(buf_cstr(&out), "otacd_fleet"));
	}
	assert_int_equal(h_sh(&out, "curl -sS --cacert '%s' -w ' %%{http_code}' %s/metrics", e->ca, e->d.device_url), 0);
	assert_non_null(strstr(buf_cstr(&out), " 200"));
	buf_release(&out);
}

/* ---- the client-certificate hook (tls_peer_cert_der) ------------------------------ */

static enum MHD_Result hook_handler(void *cls, struct MHD_Connection *c, const char *url, const char *method,
				    const char *version, const char *upload, size_t *upload_size, void **con_cls)
{
	unsigned char *der = NULL, md[SHA256_DIGEST_LENGTH];
	char body[2 * SHA256_DIGEST_LENGTH + 16];
	struct MHD_Response *r;
	enum MHD_Result ret;
	size_t len = 0;
	int rc = tls_peer_cert_der(c, &der, &len);

	(void)cls, (void)url, (void)method, (void)version, (void)upload, (void)upload_size, (void)con_cls;
	if (rc == 0) {
		SHA256(der, len, md);
		for (size_t i = 0; i < sizeof(md); i++)
			snprintf(body + 2 * i, 3, "%02x", md[i]);
	} else {
		snprintf(body, sizeof(body), "none %d", rc);
	}
	free(der);
	r = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_COPY);
	ret = MHD_queue_response(c, MHD_HTTP_OK, r);
	MHD_destroy_response(r);
	return ret;
}

static void hook_notify(void *cls, struct MHD_Connection *c, void **socket_context,
			enum MHD_ConnectionNotificationCode code)
{
	(void)socket_context;
	if (code == MHD_CONNECTION_NOTIFY_STARTED)
		tls_server_conn_started(cls, c);
}

/*
 * A listener built like the device listener (tls_server with a client
 * CA) and a handler that answers with the SHA-256 of what
 * tls_peer_cert_der gives it: the device certificate of the trusted CA
 * reaches the handler byte for byte, a foreign one fails the handshake
 * (and is counted), none is "not found".
 */
static void client_certificate_of_the_trusted_ca_reaches_the_handler(void **state)
{
	struct tls_env *e = *state;
	struct tls_files f;
	struct tls_server *t = NULL;
	struct MHD_OptionItem opts[TLS_MHD_OPTIONS_MAX];
	struct MHD_Daemon *mhd;
	struct buf out = BUF_INIT, want = BUF_INIT;
	char *cert = xasprintf("%s/srv.pem", e->pki), *key = xasprintf("%s/srv.key", e->pki);
	char *hook_ca = xasprintf("%s/hook-ca.pem", e->pki);
	unsigned long before = tls_client_cert_refusals();
	unsigned flags;
	int port;

	f.cert = cert;
	f.key = key;
	f.client_ca = hook_ca;
	assert_int_equal(h_sh(&out, "cp '%s' '%s'", e->ca, hook_ca), 0);
	assert_int_equal(tls_server_new(&t, "hook", &f), 0);
	flags = tls_server_mhd_options(t, opts);
	assert_int_equal(flags, MHD_USE_TLS);
	mhd = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | flags, 0, NULL, NULL, hook_handler,
			       NULL, MHD_OPTION_NOTIFY_CONNECTION, hook_notify, t, MHD_OPTION_ARRAY, opts,
			       MHD_OPTION_END);
	assert_non_null(mhd);
	port = MHD_get_daemon_info(mhd, MHD_DAEMON_INFO_BIND_PORT)->port;

	assert_int_equal(h_sh(&want, "openssl x509 -in %s/dev-ca.pem -outform DER | openssl dgst -sha256 -r | cut -c1-64",
			      e->pki), 0);
	want.ptr[64] = '\0';
	for (int v = 2; v <= 3; v++) {
		assert_int_equal(h_sh(&out, "curl -sS --cacert '%s' --tls-max 1.%d --cert %s/dev-ca.pem --key %s/dev-ca.key"
					    " https://127.0.0.1:%d/", e->ca, v, e->pki, e->pki, port), 0);
		assert_string_equal(buf_cstr(&out), want.ptr);
		assert_int_not_equal(h_sh(&out, "curl -sS --cacert '%s' --tls-max 1.%d --cert %s/dev-evil.pem"
						" --key %s/dev-evil.key https://127.0.0.1:%d/", e->ca, v, e->pki, e->pki,
					  port), 0);
	}
	assert_true(tls_client_cert_refusals() >= before + 2);
	assert_int_equal(h_sh(&out, "curl -sS --cacert '%s' https://127.0.0.1:%d/", e->ca, port), 0);
	assert_string_equal(buf_cstr(&out), "none -3");
	/* a resumed session (no certificate sent again) still names the device */
	for (int v = 2; v <= 3; v++) {
		h_sh(&out, "cd %s && printf 'GET / HTTP/1.0\r\n\r\n' | openssl s_client -ign_eof -tls1_%d -connect"
			   " 127.0.0.1:%d -CAfile ca.pem -cert dev-ca.pem -key dev-ca.key -sess_out sess%d.pem >/dev/null 2>&1;"
			   " printf 'GET / HTTP/1.0\r\n\r\n' | openssl s_client -ign_eof -tls1_%d -connect 127.0.0.1:%d"
			   " -CAfile ca.pem -sess_in sess%d.pem 2>&1 | grep -E '^Reused,|^[0-9a-f]{64}'",
		     e->pki, v, port, v, v, port, v);
		assert_non_null(strstr(buf_cstr(&out), "Reused,"));
		assert_non_null(strstr(buf_cstr(&out), want.ptr));
	}
	/* the client CA changes (reload): a session resumed from before is
	 * checked again and the handler gets OTA_EAUTH, not the certificate */
	assert_int_equal(h_sh(&out, "cp %s/evil.pem '%s'", e->pki, hook_ca), 0);
	assert_int_equal(tls_server_reload(t), 0);
	h_sh(&out, "cd %s && printf 'GET / HTTP/1.0\r\n\r\n' | openssl s_client -ign_eof -tls1_3 -connect 127.0.0.1:%d"
		   " -CAfile ca.pem -sess_in sess3.pem 2>&1 | grep -E '^Reused,|none'", e->pki, port);
	assert_non_null(strstr(buf_cstr(&out), "Reused,"));
	assert_non_null(strstr(buf_cstr(&out), "none -6"));
	/* and a new handshake with that certificate now fails */
	assert_int_not_equal(h_sh(&out, "curl -sS --cacert '%s' --cert %s/dev-ca.pem --key %s/dev-ca.key"
					" https://127.0.0.1:%d/", e->ca, e->pki, e->pki, port), 0);
	MHD_stop_daemon(mhd);
	tls_server_free(t);
	buf_release(&out);
	buf_release(&want);
	free(cert);
	free(key);
	free(hook_ca);
}

/* A bad tls: block stops otacd at start with the reason; a listener off
 * loopback without TLS is warned about. */
static void a_bad_tls_configuration_is_refused_at_start(void **state)
{
	struct tls_env *e = *state;
	char *otacd = h_bin("otacd"), *dir = h_tmpdir();
	struct buf out = BUF_INIT;

	assert_int_equal(h_sh(&out, "cd %s && printf 'tls:\\n  cert: %s/srv.pem\\n' > a.yml && %s --config a.yml"
				    " --state-dir st --local-agents 0 --listen 127.0.0.1:0", dir, e->pki, otacd), 2);
	assert_non_null(strstr(buf_cstr(&out), "cert and key go together"));
	assert_int_equal(h_sh(&out, "cd %s && printf 'tls:\\n  api: true\\n' > c.yml && %s --config c.yml"
				    " --state-dir st --local-agents 0 --listen 127.0.0.1:0", dir, otacd), 2);
	assert_non_null(strstr(buf_cstr(&out), "no cert and key"));
	assert_int_equal(h_sh(&out, "cd %s && printf 'tls:\\n  cert: a\\n  key: b\\n  ciphers: x\\n' > d.yml &&"
				    " %s --config d.yml --state-dir st --local-agents 0 --listen 127.0.0.1:0", dir, otacd), 2);
	assert_non_null(strstr(buf_cstr(&out), "unknown key 'ciphers'"));
	/* the key of another certificate */
	assert_int_equal(h_sh(&out, "cd %s && printf 'tls:\\n  cert: %s/srv.pem\\n  key: %s/ca.key\\n' > b.yml &&"
				    " timeout 10 %s --config b.yml --state-dir st --local-agents 0 --listen 127.0.0.1:0"
				    " --device-listen off", dir, e->pki, e->pki, otacd), 1);
	assert_non_null(strstr(buf_cstr(&out), "is not the key of the certificate"));
	/* a listener off loopback without TLS: a warning at start */
	h_sh(&out, "cd %s && timeout 3 %s --state-dir st2 --local-agents 0 --listen 0.0.0.0:0 --device-listen off",
	     dir, otacd);
	assert_non_null(strstr(buf_cstr(&out), "warning: the API listener on 0.0.0.0:0 is not loopback and has no TLS"));
	h_sh(&out, "rm -rf '%s'", dir);
	buf_release(&out);
	free(otacd);
	free(dir);
}

/* ---- a handshake flood ------------------------------------------------------------ */

/* A connection from 127.0.0.2 (another client than the tests' 127.0.0.1)
 * to port; -1 on failure. */
static int connect_from(const char *src, int port)
{
	struct sockaddr_in a = { .sin_family = AF_INET }, b = { .sin_family = AF_INET };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	inet_pton(AF_INET, src, &a.sin_addr);
	inet_pton(AF_INET, "127.0.0.1", &b.sin_addr);
	b.sin_port = htons((uint16_t)port);
	if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || connect(fd, (struct sockaddr *)&b, sizeof(b)) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

/*
 * Another address holds hundreds of half-open handshakes (a ClientHello
 * record header promising bytes that never come) on both listeners and
 * throws garbage handshakes at them; meanwhile every request of a
 * legitimate client over TLS is answered.
 */
static void a_handshake_flood_does_not_stop_legitimate_clients(void **state)
{
	struct tls_env *e = *state;
	static const unsigned char half_hello[] = { 0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03 };
	static const unsigned char garbage[] = "\x16\x03\x03\x00\x05\xde\xad\xbe\xef\x00GET / HTTP/1.1\r\n\r\n";
	enum { HELD = 300, THROWN = 400 };
	int *held = xcalloc(HELD, sizeof(int)), nheld = 0, ok = 0;
	json_t *h = NULL;
	char *m;

	for (int i = 0; i < HELD; i++) {
		int fd = connect_from("127.0.0.2", i % 2 ? e->dport : e->port);
		if (fd < 0)
			continue;
		if (write(fd, half_hello, sizeof(half_hello)) < 0) {
			close(fd);
			continue;
		}
		held[nheld++] = fd;
	}
	assert_true(nheld > 100);
	for (int i = 0; i < THROWN; i++) {
		int fd = connect_from("127.0.0.2", i % 2 ? e->dport : e->port);
		if (fd >= 0) {
			if (write(fd, garbage, sizeof(garbage) - 1) < 0)
				errno = 0;
			close(fd);
		}
		if (i % 20 == 0) {
			/* the legitimate client, during the flood */
			if (h_get(&e->d, "/api/v1/health", &h) == 200)
				ok++;
			json_decref(h);
			h = NULL;
		}
	}
	assert_int_equal(ok, THROWN / 20);
	m = h_device_metrics(&e->d, NULL);
	free(m);
	for (int i = 0; i < nheld; i++)
		close(held[i]);
	free(held);
	assert_int_equal(h_get(&e->d, "/api/v1/health", &h), 200);
	json_decref(h);
	assert_true(h_pid_alive(e->d.pid));
}

/* ---- reload ------------------------------------------------------------------------ */

static void sighup_swaps_the_certificate_and_a_bad_file_keeps_the_old_one(void **state)
{
	struct tls_env *e = *state;
	struct buf out = BUF_INIT;
	char *serial = served_serial(e), *log = xasprintf("%s/otacd.log", e->d.dir);
	json_t *h = NULL;

	assert_string_equal(serial, "1001");
	free(serial);
	/* a new certificate in place, SIGHUP: served from the next handshake */
	assert_int_equal(h_sh(&out, "cp %s/srv2.pem %s/srv.pem", e->pki, e->pki), 0);
	kill(e->d.pid, SIGHUP);
	for (int i = 0; i < 100; i++) {
		serial = served_serial(e);
		if (!strcmp(serial, "2002"))
			break;
		free(serial);
		serial = NULL;
		h_msleep(50);
	}
	assert_non_null(serial);
	assert_string_equal(serial, "2002");
	free(serial);
	/* a broken file: the reload fails, says so, and 2002 stays */
	assert_int_equal(h_sh(&out, "echo 'not a certificate' > %s/srv.pem", e->pki), 0);
	kill(e->d.pid, SIGHUP);
	for (int i = 0; i < 100; i++) {
		buf_release(&out);
		if (ota_read_file(&out, log, 1 << 22) == 0 && strstr(buf_cstr(&out), "TLS reload failed"))
			break;
		h_msleep(50);
	}
	assert_non_null(strstr(buf_cstr(&out), "TLS reload failed, the old certificate stays"));
	serial = served_serial(e);
	assert_string_equal(serial, "2002");
	free(serial);
	assert_int_equal(h_get(&e->d, "/api/v1/health", &h), 200);
	json_decref(h);
	assert_true(h_pid_alive(e->d.pid));
	buf_release(&out);
	free(log);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(daemon_serves_https_urls_tls12_and_13_and_resumes_sessions),
		cmocka_unit_test(otactl_works_with_cacert_and_refuses_a_foreign_ca_or_wrong_host),
		cmocka_unit_test(an_agent_runs_a_job_over_tls),
		cmocka_unit_test(an_agent_with_a_foreign_ca_takes_no_job),
		cmocka_unit_test(fleetsim_devices_check_in_and_report_over_tls),
		cmocka_unit_test(tls11_and_plain_http_are_refused_and_the_daemon_stays_healthy),
		cmocka_unit_test(device_listener_refuses_a_client_certificate_of_a_foreign_ca),
		cmocka_unit_test(client_certificate_of_the_trusted_ca_reaches_the_handler),
		cmocka_unit_test(a_bad_tls_configuration_is_refused_at_start),
		cmocka_unit_test(a_handshake_flood_does_not_stop_legitimate_clients),
		cmocka_unit_test(sighup_swaps_the_certificate_and_a_bad_file_keeps_the_old_one),
	};
	httpc_global_init();
	return cmocka_run_group_tests(tests, setup, teardown);
}
