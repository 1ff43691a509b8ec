/*
 * test_load.c - the daemon keeps serving under hostile load (issue 12,
 * part 6): a thousand slow clients that never finish their request header
 * (slowloris) from ten "other hosts" (127.0.0.2-11: all of 127.0.0.0/8 is
 * loopback), while real agents pick up a pipeline's jobs and health probes
 * are answered; the slow connections are closed by the header deadline;
 * one client address cannot hold more than its cap; the agents' own
 * listener serves the agent protocol only; hundreds of live event streams
 * hold no thread.
 *
 * Only that service continues is asserted, never how fast (speed is
 * bench/load.sh's).  Every loop here is bounded in count and time.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>

#include "../common/httpc.h"
#include "harness.h"

#define SLOW_CONNS 1000
#define SLOW_HOSTS 10            /* 127.0.0.2 .. 127.0.0.11, 100 each */
#define SLOW_SECONDS 30
#define DEADLINE_MS 10000        /* request_timeout's default */

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int url_port(const char *url)
{
	const char *colon = strrchr(url, ':');
	return colon ? atoi(colon + 1) : 0;
}

/* A TCP connection to 127.0.0.1:port from source address src (127.x.y.z);
 * nonblocking when nb.  -1 on failure. */
static int connect_from(const char *src, int port, int nb)
{
	struct sockaddr_in sa = { 0 }, da = { 0 };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | (nb ? SOCK_NONBLOCK : 0), 0);
	if (fd < 0)
		return -1;
	sa.sin_family = AF_INET;
	inet_pton(AF_INET, src, &sa.sin_addr);
	da.sin_family = AF_INET;
	da.sin_port = htons((uint16_t)port);
	inet_pton(AF_INET, "127.0.0.1", &da.sin_addr);
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    (connect(fd, (struct sockaddr *)&da, sizeof(da)) < 0 && errno != EINPROGRESS)) {
		close(fd);
		return -1;
	}
	return fd;
}

/* Has the server closed fd (EOF or reset)?  Waits up to wait_ms. */
static int closed_by_server(int fd, int wait_ms)
{
	struct pollfd p = { fd, POLLIN | POLLRDHUP, 0 };
	char c[256];
	if (poll(&p, 1, wait_ms) <= 0)
		return 0;
	for (int i = 0; i < 64; i++) {
		ssize_t n = recv(fd, c, sizeof(c), MSG_DONTWAIT);
		if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK))
			return 1;
		if (n < 0)
			return 0;
	}
	return 0;
}

/* How many of the n connections the server has closed (a close stays
 * seen: the next read gives end of file again). */
static int count_closed(const int *fd, int n)
{
	int c = 0;
	for (int i = 0; i < n; i++)
		c += closed_by_server(fd[i], 0);
	return c;
}

static void raise_nofile(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 8192) {
		rl.rlim_cur = rl.rlim_max < 8192 ? rl.rlim_max : 8192;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

/* ---- the slowloris ------------------------------------------------------ */

struct slow {
	int port;
	int fd[SLOW_CONNS];
	int64_t opened[SLOW_CONNS];
	int first[SLOW_CONNS];           /* still the connection opened at the start */
	volatile int stop;
	/* results */
	int opened_total;
	int first_closed;                /* first connections the server closed */
	int first_closed_early;          /* ... sooner than the deadline allows */
	int closed_total;
	int open_failures;
};

static void slow_open(struct slow *s, int i)
{
	char src[32];
	snprintf(src, sizeof(src), "127.0.0.%d", 2 + i % SLOW_HOSTS);
	s->fd[i] = connect_from(src, s->port, 1);
	s->opened[i] = mono_ms();
	if (s->fd[i] < 0)
		s->open_failures++;
	else
		s->opened_total++;
}

/* Holds SLOW_CONNS half-sent requests for SLOW_SECONDS: one header byte
 * per connection every 3 s, never the end of the header; a connection the
 * server closes is counted and opened again, as an attacker would. */
static void *slow_main(void *arg)
{
	struct slow *s = arg;
	int64_t end = mono_ms() + SLOW_SECONDS * 1000;
	int tick = 0;

	for (int i = 0; i < SLOW_CONNS; i++) {
		slow_open(s, i);
		s->first[i] = 1;
	}
	while (!s->stop && mono_ms() < end && tick < SLOW_SECONDS * 2 + 10) {
		for (int i = 0; i < SLOW_CONNS; i++) {
			int dead = s->fd[i] < 0;
			if (!dead && closed_by_server(s->fd[i], 0))
				dead = 1;
			else if (!dead && tick % 6 == 0) {
				/* the request line at once, then one header byte a time */
				const char *bytes = tick == 0 ? "GET /api/v1/runs HTTP/1.1\r\nHost: x\r\nX-Slow: " : "a";
				if (send(s->fd[i], bytes, strlen(bytes), MSG_NOSIGNAL) < 0 && errno != EAGAIN &&
				    errno != ENOTCONN)
					dead = 1;
			}
			if (dead) {
				if (s->fd[i] >= 0) {
					s->closed_total++;
					if (s->first[i]) {
						s->first_closed++;
						if (mono_ms() - s->opened[i] < DEADLINE_MS - 1000)
							s->first_closed_early++;
					}
					close(s->fd[i]);
				}
				s->first[i] = 0;
				slow_open(s, i);
				if (s->fd[i] >= 0)
					send(s->fd[i], "GET / HTTP/1.1\r\nX-Slow: ", 24, MSG_NOSIGNAL);
			}
		}
		tick++;
		h_msleep(500);
	}
	for (int i = 0; i < SLOW_CONNS; i++)
		if (s->fd[i] >= 0)
			close(s->fd[i]);
	return NULL;
}

static int probe_health(const char *url)
{
	char *u = xasprintf("%s/api/v1/health", url);
	json_t *ans = NULL;
	long status = 0;
	int ok = httpc_json(&ans, &status, "GET", u, NULL, NULL, 5000) == 0 && status == 200 &&
		 json_is_string(json_object_get(ans, "status"));
	json_decref(ans);
	free(u);
	return ok;
}

static const char *const six_jobs =
	"name: under-load\n"
	"stages:\n"
	"  - { name: a, steps: [ { run: 'sleep 1; echo a' } ] }\n"
	"  - { name: b, steps: [ { run: 'sleep 1; echo b' } ] }\n"
	"  - { name: c, needs: [a], steps: [ { run: 'sleep 1; echo c' } ] }\n"
	"  - { name: d, needs: [b], steps: [ { run: 'sleep 1; echo d' } ] }\n"
	"  - { name: e, needs: [c, d], steps: [ { run: 'sleep 1; echo e' } ] }\n"
	"  - { name: f, needs: [e], steps: [ { run: 'echo f' } ] }\n";

static void agents_and_probes_are_served_while_1000_slow_clients_hold_half_sent_requests(void **state)
{
	struct daemon d;
	const char *const args[] = { "--local-agents", "2", NULL };
	struct slow *s = xcalloc(1, sizeof(*s));
	pthread_t th;
	pid_t remote;
	int64_t run, end;
	int probes = 0, answered = 0;
	const char *final;

	(void)state;
	raise_nofile();
	/* 100 connections from each of the ten attacking addresses fit the cap,
	 * so the attack reaches the header deadline rather than the cap */
	h_init(&d, "max_connections_per_client: 100\n");
	h_start(&d, args);
	/* one remote agent on the main listener, next to the attack, besides
	 * the local agents on their own listener */
	remote = h_agent(&d, "remote-under-load", "test");
	s->port = url_port(d.url);
	assert_int_equal(pthread_create(&th, NULL, slow_main, s), 0);
	h_msleep(2000); /* the thousand are connected and sending */

	run = h_trigger(&d, six_jobs);
	/* 40 probes, one every 0.5 s, during the attack */
	end = mono_ms() + (SLOW_SECONDS - 4) * 1000;
	while (probes < 40 && mono_ms() < end) {
		probes++;
		answered += probe_health(d.url);
		h_msleep(500);
	}
	final = h_wait_run(&d, run, 60000);
	/* the attack is still on until here: the run finished under it */
	s->stop = 1;
	pthread_join(th, NULL);

	fprintf(stderr, "# slow connections: %d opened, %d closed by the server (%d of the first %d, %d early), "
		"%d failed to open; probes answered: %d of %d; run: %s\n", s->opened_total, s->closed_total,
		s->first_closed, SLOW_CONNS, s->first_closed_early, s->open_failures, answered, probes, final);
	assert_string_equal(final, "passed");
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM jobs WHERE state = 'passed'"), 6);
	assert_int_equal(probes, 40);
	/* At most one probe may miss: the attacker re-opens up to 1,000
	 * sockets in one burst when the deadline closes them, and for that
	 * instant the listen backlog (1,024) can be full.  Without the fix
	 * 0 of 40 were answered. */
	assert_true(answered >= 39);
	/* every first connection was held open by its client and closed by
	 * the header deadline, none earlier (that would be the cap) */
	assert_int_equal(s->open_failures, 0);
	assert_int_equal(s->first_closed, SLOW_CONNS);
	assert_int_equal(s->first_closed_early, 0);

	kill(remote, SIGTERM);
	h_cleanup(&d);
	free(s);
}

static void one_client_address_cannot_hold_more_than_its_cap(void **state)
{
	struct daemon d;
	const char *const args[] = { "--local-agents", "0", NULL };
	int fd[5], other, port;

	(void)state;
	h_init(&d, "max_connections_per_client: 4\n");
	h_start(&d, args);
	port = url_port(d.url);
	for (int i = 0; i < 5; i++) {
		fd[i] = connect_from("127.0.0.20", port, 0);
		assert_true(fd[i] >= 0);
	}
	/* the fifth the server accepts is closed at once, the other four
	 * stay.  Which of the five that is depends on which pool thread
	 * accepted first (each has the listening socket in its epoll set), so
	 * the test looks for exactly one closed among them. */
	for (int waited = 0; waited < 5000 && !count_closed(fd, 5); waited += 50)
		h_msleep(50);
	h_msleep(200);
	assert_int_equal(count_closed(fd, 5), 1);
	/* another address is served meanwhile */
	other = connect_from("127.0.0.21", port, 0);
	assert_true(other >= 0);
	{
		const char *req = "GET /api/v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
		char ans[512] = "";
		ssize_t n;
		struct pollfd p = { other, POLLIN, 0 };
		assert_int_equal(send(other, req, strlen(req), MSG_NOSIGNAL), (ssize_t)strlen(req));
		assert_true(poll(&p, 1, 10000) == 1);
		n = recv(other, ans, sizeof(ans) - 1, 0);
		assert_true(n > 12);
		assert_memory_equal(ans, "HTTP/1.1 200", 12);
	}
	close(other);
	for (int i = 0; i < 5; i++)
		close(fd[i]);
	h_cleanup(&d);
}

static void the_agents_listener_serves_the_agent_protocol_only(void **state)
{
	struct daemon d;
	const char *const args[] = { "--local-agents", "0", NULL };
	char *listen = h_free_listen(), *cfg, *agent_url, *main_url, *u, *token;
	json_t *ans = NULL;
	long status = 0;
	pid_t agent;
	int64_t run;

	(void)state;
	cfg = xasprintf("agent_listen: \"%s\"\n", listen);
	h_init(&d, cfg);
	h_start(&d, args);
	agent_url = xasprintf("http://%s", listen);

	/* the page and the reads are not there */
	u = xasprintf("%s/api/v1/runs", agent_url);
	assert_int_equal(httpc_json(&ans, &status, "GET", u, d.token, NULL, 10000), 0);
	assert_int_equal(status, 404);
	assert_non_null(strstr(json_string_value(json_object_get(ans, "error")), "agent protocol only"));
	json_decref(ans);
	free(u);
	u = xasprintf("%s/api/v1/health", agent_url);
	assert_int_equal(httpc_json(&ans, &status, "GET", u, NULL, NULL, 10000), 0);
	assert_int_equal(status, 200);
	json_decref(ans);
	free(u);

	/* an agent registered on the API and pointed at it gets jobs */
	token = h_agent_add(&d, "reserved-path", "test");
	assert_non_null(token);
	main_url = d.url;
	d.url = agent_url;
	agent = h_agent_with(&d, "reserved-path", "test", token);
	d.url = main_url;
	free(token);
	run = h_trigger(&d, "name: reserved\nstages:\n  - { name: a, steps: [ { run: 'echo via the agents listener' } ] }\n");
	assert_string_equal(h_wait_run(&d, run, 60000), "passed");
	kill(agent, SIGTERM);
	h_cleanup(&d);
	free(agent_url);
	free(cfg);
	free(listen);
}

/* 300 live event streams (the status page's) from three addresses, then a
 * run: every stream receives the run's events, and the API still answers.
 * With a handful of pool threads this works only if an idle stream holds
 * no thread. */
static void three_hundred_live_event_streams_hold_no_thread(void **state)
{
	enum { STREAMS = 300 };
	struct daemon d;
	const char *const args[] = { "--local-agents", "1", NULL };
	int fd[STREAMS], port, got = 0;
	int64_t run, end;
	static char seen[STREAMS];

	(void)state;
	raise_nofile();
	h_init(&d, "max_connections_per_client: 150\nhttp_threads: 2\n");
	h_start(&d, args);
	port = url_port(d.url);
	for (int i = 0; i < STREAMS; i++) {
		char src[32], *req;
		snprintf(src, sizeof(src), "127.0.0.%d", 30 + i % 3);
		fd[i] = connect_from(src, port, 0);
		assert_true(fd[i] >= 0);
		req = xasprintf("GET /api/v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
				"Accept: text/event-stream\r\n\r\n", d.token);
		assert_int_equal(send(fd[i], req, strlen(req), MSG_NOSIGNAL), (ssize_t)strlen(req));
		free(req);
		seen[i] = 0;
	}
	h_msleep(500);
	assert_true(probe_health(d.url));
	run = h_trigger(&d, "name: streamed\nstages:\n  - { name: a, steps: [ { run: 'echo hi' } ] }\n");
	assert_string_equal(h_wait_run(&d, run, 60000), "passed");
	/* read what each stream got, up to 30 s in all */
	end = mono_ms() + 30000;
	while (got < STREAMS && mono_ms() < end) {
		for (int i = 0; i < STREAMS; i++) {
			char b[4096];
			ssize_t n;
			if (seen[i])
				continue;
			while ((n = recv(fd[i], b, sizeof(b) - 1, MSG_DONTWAIT)) > 0) {
				b[n] = '\0';
				if (strstr(b, "event: ")) {
					seen[i] = 1;
					got++;
					break;
				}
			}
		}
		h_msleep(200);
	}
	fprintf(stderr, "# %d of %d streams received the run's events\n", got, STREAMS);
	assert_int_equal(got, STREAMS);
	assert_true(probe_health(d.url));
	for (int i = 0; i < STREAMS; i++)
		close(fd[i]);
	h_cleanup(&d);
}

/* Both listeners: a request whose header trickles in a byte every 0.5 s
 * is closed at request_timeout (2 s here), although bytes keep arriving;
 * a complete request on another connection meanwhile is answered. */
static void a_trickled_header_is_cut_at_the_deadline_on_the_api_and_device_listeners(void **state)
{
	struct daemon d;
	const char *const args[] = { "--local-agents", "0", NULL };
	int port[2], fd[2];
	int64_t opened[2], lived[2] = { -1, -1 };

	(void)state;
	h_init(&d, "request_timeout: 2s\n");
	h_start(&d, args);
	port[0] = url_port(d.url);
	port[1] = url_port(d.device_url);
	for (int k = 0; k < 2; k++) {
		fd[k] = connect_from("127.0.0.40", port[k], 0);
		assert_true(fd[k] >= 0);
		opened[k] = mono_ms();
		assert_true(send(fd[k], "GET /api/v1/health HTTP/1.1\r\nX-Slow: ", 38, MSG_NOSIGNAL) == 38);
	}
	/* at most 40 half-second ticks (20 s) */
	for (int tick = 0; tick < 40 && (lived[0] < 0 || lived[1] < 0); tick++) {
		for (int k = 0; k < 2; k++) {
			if (lived[k] >= 0)
				continue;
			if (closed_by_server(fd[k], 0) || send(fd[k], "a", 1, MSG_NOSIGNAL) < 0)
				lived[k] = mono_ms() - opened[k];
		}
		if (tick == 2)
			assert_true(probe_health(d.url));
		h_msleep(500);
	}
	fprintf(stderr, "# trickled headers closed after %lld ms (API) and %lld ms (devices)\n", (long long)lived[0],
		(long long)lived[1]);
	for (int k = 0; k < 2; k++) {
		assert_true(lived[k] >= 0);    /* closed, although bytes kept coming */
		assert_true(lived[k] >= 1900); /* by the deadline, not before */
		close(fd[k]);
	}
	h_cleanup(&d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(a_trickled_header_is_cut_at_the_deadline_on_the_api_and_device_listeners),
		cmocka_unit_test(one_client_address_cannot_hold_more_than_its_cap),
		cmocka_unit_test(the_agents_listener_serves_the_agent_protocol_only),
		cmocka_unit_test(three_hundred_live_event_streams_hold_no_thread),
		cmocka_unit_test(agents_and_probes_are_served_while_1000_slow_clients_hold_half_sent_requests),
	};
	return cmocka_run_group_tests_name("load", tests, NULL, NULL);
}
