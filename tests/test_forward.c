/*
 * test_forward.c - a follower's writes forwarded to the leader (issue 16,
 * api_forward.h; docs/scale.md "Forwarding", docs/security.md).
 *
 * The leader is a real otacd (SQLite); the follower's HTTP layer is a
 * minimal libmicrohttpd front in this test, on one epoll thread like
 * otacd's, that reads a request's body within a cap and hands it to
 * api_forward_begin() (or api_forward(), g.sync), as the follower gate does.
 * Beside them: an echo server that answers with the headers it received
 * (what reaches a leader), a listening socket nobody accepts on (a leader
 * that never answers, and a witness that no connection was made) and a
 * closed port (a leader that is gone).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>
#include <pthread.h>

#include "../common/httpc.h"
#include "../orchestrator/api/api_forward.h"
#include "../orchestrator/webhook.h"
#include "harness.h"

#define SECRET "fwd-hook-secret-0123"
#define FRONT_CAP ((size_t)1 << 20)
#define ZEROS "0000000000000000000000000000000000000000"
#define SHA_A "1111111111111111111111111111111111111111"
#define PIPE "name: fwd\nstages:\n  - { name: a, steps: [ { run: 'true' } ] }\n"

static struct {
	struct daemon d;            /* the leader */
	struct api_fwd *fwd;
	struct MHD_Daemon *front, *echo;
	char front_url[64], echo_url[64];
	char *leader;               /* what the front forwards to (the "holder") */
	int sink, sink_port;        /* listening, never accepting */
	int closed_port;            /* nothing listens */
	int sync;                   /* the front calls api_forward(), blocking */
	pthread_mutex_t mu;         /* the echo server's /slow requests: */
	pthread_cond_t cond;
	int slow_waiting, slow_release;
} g = { .mu = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER };

/* ---- the follower's front ------------------------------------------------ */

struct front_req {
	struct buf body;
	int too_big;
	struct api_fwd_job *job;    /* on its way, the connection suspended */
};

static enum MHD_Result front_handle(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
				    const char *version, const char *data, size_t *size, void **con_cls)
{
	struct front_req *r = *con_cls;
	struct api_fwd_req q;
	struct MHD_Response *resp;
	unsigned status;
	enum MHD_Result ret;

	(void)cls;
	(void)version;
	if (!r) {
		r = xcalloc(1, sizeof(*r));
		buf_init(&r->body, 2 * FRONT_CAP);
		*con_cls = r;
		return MHD_YES;
	}
	if (*size) {
		if (buf_put(&r->body, data, *size) < 0)
			r->too_big = 1;
		*size = 0;
		return MHD_YES;
	}
	if (r->job) { /* resumed */
		api_forward_end(r->job, &status, &resp);
		r->job = NULL;
	} else {
		q = (struct api_fwd_req){ conn, g.leader, method, url, r->body.ptr, r->body.len, FRONT_CAP, "fwd-test-1",
					  /* a held request outlasts the 2 s of the pool's */
					  !strcmp(url, "/slow") ? 120000 : 0, NULL, NULL, 0 };
		if (g.sync)
			api_forward(g.fwd, &q, &status, &resp);
		else if (api_forward_begin(g.fwd, &q, &r->job, &status, &resp) == 0)
			return MHD_YES;
	}
	ret = MHD_queue_response(conn, status, resp);
	MHD_destroy_response(resp);
	return ret;
}

static void front_done(void *cls, struct MHD_Connection *conn, void **con_cls, enum MHD_RequestTerminationCode toe)
{
	struct front_req *r = *con_cls;
	(void)cls;
	(void)conn;
	(void)toe;
	if (r) {
		api_forward_job_free(r->job);
		buf_release(&r->body);
		free(r);
	}
	*con_cls = NULL;
}

/* ---- the echo server: the headers a leader would see ------------------------ */

static enum MHD_Result echo_header(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
	(void)kind;
	json_object_set_new(cls, key, json_string(value ? value : ""));
	return MHD_YES;
}

static enum MHD_Result echo_handle(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
				   const char *version, const char *data, size_t *size, void **con_cls)
{
	json_t *j;
	char *text;
	struct MHD_Response *resp;
	enum MHD_Result ret;

	(void)cls;
	(void)version;
	(void)data;
	if (!*con_cls) {
		*con_cls = conn;
		return MHD_YES;
	}
	if (*size) {
		*size = 0;
		return MHD_YES;
	}
	if (!strcmp(url, "/slow")) { /* held until the test lets it go */
		pthread_mutex_lock(&g.mu);
		g.slow_waiting++;
		pthread_cond_broadcast(&g.cond);
		while (!g.slow_release)
			pthread_cond_wait(&g.cond, &g.mu);
		g.slow_waiting--;
		pthread_mutex_unlock(&g.mu);
	}
	j = json_object();
	MHD_get_connection_values(conn, MHD_HEADER_KIND, echo_header, j);
	json_object_set_new(j, ":method", json_string(method));
	json_object_set_new(j, ":path", json_string(url));
	json_object_set_new(j, ":q", json_string(MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "q")
							 ? MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "q")
							 : "(none)"));
	text = json_dumps(j, JSON_COMPACT);
	json_decref(j);
	resp = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
	MHD_add_response_header(resp, "Content-Type", "application/json");
	MHD_add_response_header(resp, "Set-Cookie", "leader=1");     /* not relayed */
	MHD_add_response_header(resp, "Location", "/api/v1/runs/7"); /* relayed */
	MHD_add_response_header(resp, "Retry-After", "5");           /* relayed */
	ret = MHD_queue_response(conn, 202, resp);
	MHD_destroy_response(resp);
	return ret;
}

/* The front: one epoll thread with suspend/resume, like otacd's API; the
 * echo server: a thread per connection (its /slow requests block). */
static struct MHD_Daemon *serve(MHD_AccessHandlerCallback fn, MHD_RequestCompletedCallback done, char *url,
				size_t size, int front)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG |
			 (front ? MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME : MHD_USE_THREAD_PER_CONNECTION);
	struct MHD_Daemon *d = MHD_start_daemon(flags, 0, NULL, NULL, fn, NULL, MHD_OPTION_SOCK_ADDR, &sa,
						MHD_OPTION_NOTIFY_COMPLETED, done, NULL, MHD_OPTION_END);
	assert_non_null(d);
	snprintf(url, size, "http://127.0.0.1:%u", MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT)->port);
	return d;
}

static int listening_socket(int *port, int do_listen)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	if (do_listen)
		assert_int_equal(listen(fd, 16), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
	*port = ntohs(sa.sin_port);
	return fd;
}

/* Connections made to the sink since the last call (accepted and closed). */
static int sink_connections(void)
{
	int n = 0, fd;
	while ((fd = accept4(g.sink, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
		close(fd);
		n++;
	}
	assert_true(errno == EAGAIN || errno == EWOULDBLOCK);
	return n;
}

static void leader_is(const char *fmt, ...) OTA_PRINTF(1, 2);
static void leader_is(const char *fmt, ...)
{
	va_list ap;
	free(g.leader);
	g.leader = NULL;
	if (!fmt)
		return;
	va_start(ap, fmt);
	assert_true(vasprintf(&g.leader, fmt, ap) >= 0);
	va_end(ap);
}

static int setup(void **state)
{
	struct api_fwd_config cfg = { .timeout_ms = 2000 };
	int closed;
	char *config = xasprintf("repositories:\n  - { name: acme/fw, url: \"file:///nonexistent/fw.git\", secret: %s }\n",
				 SECRET);
	(void)state;
	h_init(&g.d, config);
	free(config);
	h_start(&g.d, NULL);
	assert_int_equal(api_fwd_new(&g.fwd, &cfg), 0);
	g.front = serve(front_handle, front_done, g.front_url, sizeof(g.front_url), 1);
	g.echo = serve(echo_handle, NULL, g.echo_url, sizeof(g.echo_url), 0);
	g.sink = listening_socket(&g.sink_port, 1);
	fcntl(g.sink, F_SETFL, O_NONBLOCK);
	closed = listening_socket(&g.closed_port, 0);
	close(closed);
	leader_is("%s", g.d.url);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	api_fwd_drain(g.fwd); /* every suspended connection resumed first */
	MHD_stop_daemon(g.front);
	MHD_stop_daemon(g.echo);
	api_fwd_free(g.fwd);
	close(g.sink);
	free(g.leader);
	h_cleanup(&g.d);
	return 0;
}

/* A request to the front (follower) or, with direct, to the leader itself. */
static long call(int direct, const char *method, const char *path, const char *token, const char *ctype,
		 const char *body, size_t len, const char *const *headers, struct httpc_response *out)
{
	char *url = xasprintf("%s%s", direct ? g.d.url : g.front_url, path);
	int rc = httpc_request_ex(out, method, url, token, ctype, body, len, 60000, headers);
	free(url);
	assert_int_equal(rc, 0);
	return out->status;
}

static char *hdr(const struct httpc_response *r, const char *name)
{
	char *v = NULL;
	return httpc_response_header(&v, r, name) == 0 ? v : NULL;
}

static char *run_body(void)
{
	json_t *j = json_pack("{ss ss}", "pipeline", PIPE, "file", "fwd.yml");
	char *s = json_dumps(j, JSON_COMPACT);
	json_decref(j);
	return s;
}

/* ---- the tests --------------------------------------------------------------- */

static void forwarded_post_arrives_once_and_its_answer_is_relayed(void **state)
{
	struct httpc_response a = HTTPC_RESPONSE_INIT, b = HTTPC_RESPONSE_INIT;
	char *body = run_body(), *ctype;
	const char *key[] = { "Idempotency-Key: fwd-first", NULL };
	int64_t before = h_sql_int(&g.d, "SELECT count(*) FROM runs"), id;
	json_t *j;
	(void)state;

	leader_is("%s", g.d.url);
	assert_int_equal(call(0, "POST", "/api/v1/runs", g.d.token, "application/json", body, strlen(body), key, &a), 201);
	j = json_loads(buf_cstr(&a.body), 0, NULL);
	assert_non_null(j);
	id = json_integer_value(json_object_get(j, "id"));
	json_decref(j);
	assert_true(id > 0);
	assert_int_equal(h_sql_int(&g.d, "SELECT count(*) FROM runs"), before + 1);
	ctype = hdr(&a, "Content-Type");
	assert_non_null(ctype);
	assert_string_equal(ctype, "application/json");
	free(ctype);
	/* byte for byte: the leader's recorded answer, asked directly with the
	 * same key, is the body the follower relayed */
	assert_int_equal(call(1, "POST", "/api/v1/runs", g.d.token, "application/json", body, strlen(body), key, &b), 201);
	assert_int_equal(a.body.len, b.body.len);
	assert_memory_equal(a.body.ptr, b.body.ptr, a.body.len);
	assert_int_equal(h_sql_int(&g.d, "SELECT count(*) FROM runs"), before + 1);
	httpc_response_release(&a);
	httpc_response_release(&b);
	free(body);
}

static void the_leaders_401_is_relayed_and_no_trust_is_gained(void **state)
{
	struct httpc_response a = HTTPC_RESPONSE_INIT, b = HTTPC_RESPONSE_INIT, c = HTTPC_RESPONSE_INIT;
	char *body = run_body();
	int64_t before = h_sql_int(&g.d, "SELECT count(*) FROM runs");
	/* headers a client might hope the hop makes trusted */
	const char *forged[] = { "X-Forwarded-For: 127.0.0.1", "Forwarded: for=127.0.0.1", "X-Otacd-Role: admin",
				 "X-Real-IP: 127.0.0.1", NULL };
	(void)state;

	leader_is("%s", g.d.url);
	assert_int_equal(call(0, "POST", "/api/v1/runs", "not-a-token", "application/json", body, strlen(body), forged, &a),
			 401);
	assert_int_equal(call(1, "POST", "/api/v1/runs", "not-a-token", "application/json", body, strlen(body), NULL, &b),
			 401);
	assert_int_equal(a.body.len, b.body.len);
	assert_memory_equal(a.body.ptr, b.body.ptr, a.body.len);
	/* no token at all */
	/* no token at all, through the blocking call this time */
	g.sync = 1;
	assert_int_equal(call(0, "POST", "/api/v1/runs", NULL, "application/json", body, strlen(body), NULL, &c), 401);
	g.sync = 0;
	assert_int_equal(h_sql_int(&g.d, "SELECT count(*) FROM runs"), before);
	httpc_response_release(&a);
	httpc_response_release(&b);
	httpc_response_release(&c);
	free(body);
}

static void an_idempotency_key_retried_through_the_follower_runs_once(void **state)
{
	struct httpc_response a = HTTPC_RESPONSE_INIT, b = HTTPC_RESPONSE_INIT;
	char *body = run_body(), *replayed;
	const char *key[] = { "Idempotency-Key: fwd-retry-1", NULL };
	int64_t before = h_sql_int(&g.d, "SELECT count(*) FROM runs");
	(void)state;

	leader_is("%s", g.d.url);
	assert_int_equal(call(0, "POST", "/api/v1/runs", g.d.token, "application/json", body, strlen(body), key, &a), 201);
	assert_int_equal(call(0, "POST", "/api/v1/runs", g.d.token, "application/json", body, strlen(body), key, &b), 201);
	assert_int_equal(a.body.len, b.body.len);
	assert_memory_equal(a.body.ptr, b.body.ptr, a.body.len);
	replayed = hdr(&b, "Idempotent-Replayed");
	assert_non_null(replayed);
	assert_string_equal(replayed, "true");
	free(replayed);
	assert_int_equal(h_sql_int(&g.d, "SELECT count(*) FROM runs"), before + 1);
	httpc_response_release(&a);
	httpc_response_release(&b);
	free(body);
}

static long hook(const char *body, const char *sig, const char *delivery)
{
	struct httpc_response a = HTTPC_RESPONSE_INIT;
	char *s = xasprintf("X-Hub-Signature-256: sha256=%s", sig), *d = xasprintf("X-GitHub-Delivery: %s", delivery);
	const char *h[] = { "X-GitHub-Event: push", s, d, NULL };
	long status = call(0, "POST", "/hooks/github", NULL, "application/json", body, strlen(body), h, &a);
	httpc_response_release(&a);
	free(s);
	free(d);
	return status;
}

static void a_signed_webhook_is_accepted_through_the_follower_and_a_tampered_one_refused(void **state)
{
	const char *body = "{\"ref\":\"refs/heads/gone\",\"before\":\"" SHA_A "\",\"after\":\"" ZEROS "\","
			   "\"deleted\":true,\"repository\":{\"full_name\":\"acme/fw\"},\"pusher\":{\"name\":\"ann\"}}";
	char mac[65], *tampered = xstrdup(body);
	int64_t before = h_sql_int(&g.d, "SELECT count(*) FROM deliveries");
	(void)state;

	leader_is("%s", g.d.url);
	webhook_hmac_hex(SECRET, body, strlen(body), mac);
	assert_int_equal(hook(body, mac, "fwd-d-1"), 202);
	assert_int_equal(h_sql_int(&g.d, "SELECT count(*) FROM deliveries"), before + 1);
	/* the same signature on other bytes */
	tampered[strlen("{\"ref\":\"refs/heads/")] = 'G';
	assert_int_equal(hook(tampered, mac, "fwd-d-2"), 401);
	/* a signature made with another secret */
	webhook_hmac_hex("guess", body, strlen(body), mac);
	assert_int_equal(hook(body, mac, "fwd-d-3"), 401);
	assert_int_equal(h_sql_int(&g.d, "SELECT count(*) FROM deliveries"), before + 1);
	free(tampered);
}

static void only_allowed_headers_reach_the_leader(void **state)
{
	struct httpc_response a = HTTPC_RESPONSE_INIT;
	const char *h[] = { "Idempotency-Key: k-1", "X-Hub-Signature-256: sha256=ab", "X-Forwarded-For: 10.9.9.9",
			    "X-Otacd-Role: admin", "Connection: keep-alive, X-Secret", "X-Secret: s",
			    "Proxy-Authorization: Basic eA==", "Cookie: a=b", NULL };
	char *v;
	json_t *j;
	(void)state;

	leader_is("%s/", g.echo_url);
	assert_int_equal(call(0, "PUT", "/api/v1/some%20where/x?q=a%26b%3Dc+d&flag", "tok-1", "text/plain", "hi", 2, h, &a),
			 202);
	j = json_loads(buf_cstr(&a.body), 0, NULL);
	assert_non_null(j);
	assert_string_equal(json_string_value(json_object_get(j, ":method")), "PUT");
	assert_string_equal(json_string_value(json_object_get(j, ":path")), "/api/v1/some where/x");
	assert_string_equal(json_string_value(json_object_get(j, ":q")), "a&b=c d");
	assert_string_equal(json_string_value(json_object_get(j, "Authorization")), "Bearer tok-1");
	assert_string_equal(json_string_value(json_object_get(j, "Idempotency-Key")), "k-1");
	assert_string_equal(json_string_value(json_object_get(j, "X-Hub-Signature-256")), "sha256=ab");
	assert_string_equal(json_string_value(json_object_get(j, "Content-Type")), "text/plain");
	assert_string_equal(json_string_value(json_object_get(j, "X-Request-Id")), "fwd-test-1");
	/* the follower's own view of the client, never the client's claim */
	assert_string_equal(json_string_value(json_object_get(j, "X-Forwarded-For")), "127.0.0.1");
	assert_string_equal(json_string_value(json_object_get(j, "Forwarded")), "for=127.0.0.1");
	assert_string_equal(json_string_value(json_object_get(j, API_FWD_MARKER)), "1");
	assert_null(json_object_get(j, "X-Otacd-Role"));
	assert_null(json_object_get(j, "X-Secret"));
	assert_null(json_object_get(j, "Proxy-Authorization"));
	assert_null(json_object_get(j, "Cookie"));
	assert_null(json_object_get(j, "Expect"));
	json_decref(j);
	/* the answer: Location and Retry-After relayed, Set-Cookie not */
	v = hdr(&a, "Location");
	assert_non_null(v);
	assert_string_equal(v, "/api/v1/runs/7");
	free(v);
	v = hdr(&a, "Retry-After");
	assert_non_null(v);
	assert_string_equal(v, "5");
	free(v);
	assert_null(hdr(&a, "Set-Cookie"));
	httpc_response_release(&a);
	/* a long query arrives whole */
	{
		struct httpc_response b = HTTPC_RESPONSE_INIT;
		char *q = xmalloc(8001), *path;
		memset(q, 'x', 8000);
		q[8000] = '\0';
		path = xasprintf("/long?a=1&q=%s&z=2", q);
		assert_int_equal(call(0, "POST", path, NULL, "application/json", "{}", 2, NULL, &b), 202);
		j = json_loads(buf_cstr(&b.body), 0, NULL);
		assert_non_null(j);
		assert_string_equal(json_string_value(json_object_get(j, ":q")), q);
		json_decref(j);
		httpc_response_release(&b);
		free(path);
		free(q);
	}
}

/* A 503 of this instance's own, with Retry-After: 1. */
static void assert_503(struct httpc_response *a)
{
	char *ra = hdr(a, "Retry-After");
	assert_int_equal(a->status, 503);
	assert_non_null(ra);
	assert_string_equal(ra, "1");
	free(ra);
}

struct slow_call {
	pthread_t t;
	long status;
};

static void *slow_call_run(void *arg)
{
	struct slow_call *c = arg;
	struct httpc_response a = HTTPC_RESPONSE_INIT;
	c->status = call(0, "POST", "/slow", NULL, "application/json", "{}", 2, NULL, &a);
	httpc_response_release(&a);
	return NULL;
}

/* The front has one thread: four forwards held by a slow leader must not
 * stop a fifth request from being forwarded and answered meanwhile. */
static void a_slow_leader_does_not_hold_the_followers_thread(void **state)
{
	struct slow_call slow[4];
	struct httpc_response a = HTTPC_RESPONSE_INIT;
	int held;
	char *body = run_body();
	(void)state;

	leader_is("%s", g.echo_url);
	g.sync = getenv("FWD_TRY_SYNC") != NULL; /* to see this test fail on the blocking call */
	g.slow_release = 0;
	for (int i = 0; i < 4; i++)
		assert_int_equal(pthread_create(&slow[i].t, NULL, slow_call_run, &slow[i]), 0);
	pthread_mutex_lock(&g.mu);
	{
		struct timespec until;
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_sec += 60; /* a cap, not a measure */
		while (g.slow_waiting < 4 && pthread_cond_timedwait(&g.cond, &g.mu, &until) == 0)
			;
	}
	held = g.slow_waiting;
	pthread_mutex_unlock(&g.mu);
	if (held < 4) { /* the front is stuck behind the first: let them go, then fail */
		pthread_mutex_lock(&g.mu);
		g.slow_release = 1;
		pthread_cond_broadcast(&g.cond);
		pthread_mutex_unlock(&g.mu);
		for (int i = 0; i < 4; i++)
			pthread_join(slow[i].t, NULL);
		fail_msg("only %d of 4 forwards reached the leader at once", held);
	}
	/* all four are parked at the "leader"; the echo server answers others */
	assert_int_equal(call(0, "POST", "/fast", NULL, "application/json", "{}", 2, NULL, &a), 202);
	pthread_mutex_lock(&g.mu);
	assert_int_equal(g.slow_waiting, 4); /* still held */
	g.slow_release = 1;
	pthread_cond_broadcast(&g.cond);
	pthread_mutex_unlock(&g.mu);
	for (int i = 0; i < 4; i++) {
		pthread_join(slow[i].t, NULL);
		assert_int_equal(slow[i].status, 202);
	}
	g.sync = 0;
	httpc_response_release(&a);
	free(body);
}

static void an_unreachable_leader_gives_503_retry_after_1_in_bounded_time(void **state)
{
	struct httpc_response a = HTTPC_RESPONSE_INIT, b = HTTPC_RESPONSE_INIT, c = HTTPC_RESPONSE_INIT;
	struct timespec t0, t1;
	(void)state;

	leader_is("http://127.0.0.1:%d", g.closed_port); /* gone */
	call(0, "POST", "/api/v1/runs", g.d.token, "application/json", "{}", 2, NULL, &a);
	assert_503(&a);
	leader_is(NULL); /* nobody leads */
	call(0, "POST", "/api/v1/runs", g.d.token, "application/json", "{}", 2, NULL, &b);
	assert_503(&b);
	/* connected, never answers: the hop's deadline (2 s here) ends it */
	leader_is("http://127.0.0.1:%d", g.sink_port);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	call(0, "POST", "/api/v1/runs", g.d.token, "application/json", "{}", 2, NULL, &c);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	assert_503(&c);
	print_message("forward: a silent leader answered 503 after %.2f s (hop deadline 2 s)\n",
		      (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
	sink_connections();
	httpc_response_release(&a);
	httpc_response_release(&b);
	httpc_response_release(&c);
}

static void a_bogus_holder_is_refused_without_any_request(void **state)
{
	const char *bogus[] = {
		"file:///etc/passwd", "http://evil@127.0.0.1:%d", "http://evil:pw@127.0.0.1:%d",
		"http://127.0.0.1:%d/api", "http://127.0.0.1:%d?x=1", "http://127.0.0.1:%d#f",
		"http://127.0.0.1:%d\r\nX-Otacd-Role: admin", "http://127.0.0.1:%d\n", "http://127.0.0.1:%d extra",
		"ftp://127.0.0.1:%d", "gopher://127.0.0.1:%d", "HTTP://127.0.0.1:%d", "//127.0.0.1:%d",
		"127.0.0.1:%d", "http://127.0.0.1", "http://[::1%%25lo]:%d", "host pid %d", "",
	};
	char base[300];
	(void)state;

	sink_connections();
	for (size_t i = 0; i < sizeof(bogus) / sizeof(bogus[0]); i++) {
		struct httpc_response a = HTTPC_RESPONSE_INIT;
		leader_is(bogus[i], g.sink_port);
		assert_true(api_forward_leader_check(g.leader, base, sizeof(base)) < 0);
		call(0, "POST", "/api/v1/runs", g.d.token, "application/json", "{}", 2, NULL, &a);
		assert_503(&a);
		httpc_response_release(&a);
	}
	assert_int_equal(sink_connections(), 0);
	/* what a holder looks like */
	assert_int_equal(api_forward_leader_check("http://127.0.0.1:8470", base, sizeof(base)), 0);
	assert_string_equal(base, "http://127.0.0.1:8470");
	assert_int_equal(api_forward_leader_check("https://otacd-1.internal:8470/", base, sizeof(base)), 0);
	assert_string_equal(base, "https://otacd-1.internal:8470");
	assert_int_equal(api_forward_leader_check("http://[::1]:8470", base, sizeof(base)), 0);
	assert_string_equal(base, "http://[::1]:8470");
	/* the check is what the front reached: a valid sink gets a connection */
	leader_is("http://127.0.0.1:%d", g.sink_port);
	{
		struct httpc_response a = HTTPC_RESPONSE_INIT;
		call(0, "POST", "/api/v1/runs", g.d.token, "application/json", "{}", 2, NULL, &a);
		assert_503(&a);
		httpc_response_release(&a);
	}
	assert_true(sink_connections() >= 1);
}

static void oversized_bodies_and_second_hops_are_refused_without_a_request(void **state)
{
	struct httpc_response a = HTTPC_RESPONSE_INIT, b = HTTPC_RESPONSE_INIT;
	size_t len = FRONT_CAP + 1;
	char *big = xmalloc(len);
	const char *hop[] = { API_FWD_MARKER ": 1", NULL };
	(void)state;

	memset(big, ' ', len);
	sink_connections();
	leader_is("http://127.0.0.1:%d", g.sink_port);
	assert_int_equal(call(0, "POST", "/api/v1/runs", g.d.token, "application/json", big, len, NULL, &a), 413);
	call(0, "POST", "/api/v1/runs", g.d.token, "application/json", "{}", 2, hop, &b);
	assert_503(&b);
	assert_int_equal(sink_connections(), 0);
	httpc_response_release(&a);
	httpc_response_release(&b);
	free(big);
}

static int cmp_ll(const void *x, const void *y)
{
	long long a = *(const long long *)x, b = *(const long long *)y;
	return (a > b) - (a < b);
}

/* Not a speed test: the added latency of one hop, printed for
 * docs/benchmarks.md.  200 POST /api/v1/lint each way, alternating, after
 * 20 warm-ups; each call is a new client connection, as a script's. */
static void one_hop_latency_is_printed(void **state)
{
	enum { N = 200 };
	long long t[2][N];
	const char *yaml = PIPE;
	(void)state;

	leader_is("%s", g.d.url);
	for (int i = -20; i < N; i++) {
		for (int fwd = 0; fwd < 2; fwd++) {
			struct httpc_response a = HTTPC_RESPONSE_INIT;
			struct timespec t0, t1;
			clock_gettime(CLOCK_MONOTONIC, &t0);
			assert_int_equal(call(!fwd, "POST", "/api/v1/lint", g.d.token, "application/yaml", yaml,
					      strlen(yaml), NULL, &a),
					 200);
			clock_gettime(CLOCK_MONOTONIC, &t1);
			if (i >= 0)
				t[fwd][i] = (t1.tv_sec - t0.tv_sec) * 1000000LL + (t1.tv_nsec - t0.tv_nsec) / 1000;
			httpc_response_release(&a);
		}
	}
	qsort(t[0], N, sizeof(t[0][0]), cmp_ll);
	qsort(t[1], N, sizeof(t[1][0]), cmp_ll);
	print_message("forward: POST /api/v1/lint x%d: direct p50 %lld us p99 %lld us; forwarded p50 %lld us p99 %lld us"
		      " (one hop adds p50 %lld us)\n",
		      N, t[0][N / 2], t[0][N * 99 / 100], t[1][N / 2], t[1][N * 99 / 100], t[1][N / 2] - t[0][N / 2]);
}

/* Last (it stops the forwarder): a stop aborts the forwards on their way,
 * each answered 503, every suspended connection resumed; later ones 503. */
static void draining_answers_forwards_on_their_way_with_503(void **state)
{
	struct slow_call slow[2];
	struct httpc_response a = HTTPC_RESPONSE_INIT;
	struct timespec until;
	(void)state;

	leader_is("%s", g.echo_url);
	g.slow_release = 0;
	for (int i = 0; i < 2; i++)
		assert_int_equal(pthread_create(&slow[i].t, NULL, slow_call_run, &slow[i]), 0);
	pthread_mutex_lock(&g.mu);
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += 60; /* a cap, not a measure */
	while (g.slow_waiting < 2 && pthread_cond_timedwait(&g.cond, &g.mu, &until) == 0)
		;
	assert_int_equal(g.slow_waiting, 2);
	pthread_mutex_unlock(&g.mu);
	api_fwd_drain(g.fwd);
	for (int i = 0; i < 2; i++) {
		pthread_join(slow[i].t, NULL);
		assert_int_equal(slow[i].status, 503);
	}
	call(0, "POST", "/fast", NULL, "application/json", "{}", 2, NULL, &a);
	assert_503(&a);
	pthread_mutex_lock(&g.mu);
	g.slow_release = 1;
	pthread_cond_broadcast(&g.cond);
	pthread_mutex_unlock(&g.mu);
	httpc_response_release(&a);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(forwarded_post_arrives_once_and_its_answer_is_relayed),
		cmocka_unit_test(the_leaders_401_is_relayed_and_no_trust_is_gained),
		cmocka_unit_test(an_idempotency_key_retried_through_the_follower_runs_once),
		cmocka_unit_test(a_signed_webhook_is_accepted_through_the_follower_and_a_tampered_one_refused),
		cmocka_unit_test(only_allowed_headers_reach_the_leader),
		cmocka_unit_test(a_slow_leader_does_not_hold_the_followers_thread),
		cmocka_unit_test(an_unreachable_leader_gives_503_retry_after_1_in_bounded_time),
		cmocka_unit_test(a_bogus_holder_is_refused_without_any_request),
		cmocka_unit_test(oversized_bodies_and_second_hops_are_refused_without_a_request),
		cmocka_unit_test(one_hop_latency_is_printed),
		cmocka_unit_test(draining_answers_forwards_on_their_way_with_503),
	};
	httpc_global_init();
	return cmocka_run_group_tests_name("forward", tests, setup, teardown);
}
