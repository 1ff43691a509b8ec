/*
 * dropproxy.h - a loopback TCP proxy that loses the first answer: it
 * forwards the first connection's request and closes both ends as soon as
 * the daemon starts to answer, then relays every later connection
 * untouched.  A client that retries after a lost answer (otactl's
 * Idempotency-Key, a device's report batch: test_powerloss,
 * test_reportseq) is tested through it against a real otacd.
 */
#ifndef OTA_TESTS_DROPPROXY_H
#define OTA_TESTS_DROPPROXY_H

#include <pthread.h>

struct dproxy {
	int listen_fd;
	int port;          /* where clients connect (127.0.0.1) */
	int upstream_port;
	volatile int stop;
	volatile int connections; /* counted once a connection's client has gone */
	pthread_t thread;
};

/* Listen on a free loopback port and relay to upstream_url's port on
 * 127.0.0.1, on a thread of its own. */
void dproxy_start(struct dproxy *px, const char *upstream_url);
/* Stop the thread and close the listener. */
void dproxy_stop(struct dproxy *px);
/* A listening socket on a free port of 127.0.0.1 (its port in *port). */
int dproxy_listen(int backlog, int *port);
/* A TCP connection to 127.0.0.1:port; -1 when it cannot be had. */
int dproxy_connect(int port);

#endif
