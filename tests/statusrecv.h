/*
 * statusrecv.h - a receiver for outbound requests in the test process
 * (libmicrohttpd on loopback) that records each request exactly as it
 * arrived - method, raw path (its percent-encoding kept), headers, body - so
 * tests check the request format each forge documents (test_notify.c,
 * test_stagestatus.c).
 */
#ifndef OTA_TESTS_STATUSRECV_H
#define OTA_TESTS_STATUSRECV_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define MAX_REQS 128

struct MHD_Daemon;

struct req {
	char method[8];
	char path[512];
	char *authorization, *private_token, *accept, *api_version, *ctype;
	char *event, *delivery, *timestamp, *signature;
	char *body;
	int64_t at_ms;          /* monotonic arrival */
	unsigned status;        /* what the receiver answered */
};

struct receiver {
	pthread_mutex_t lock;
	struct MHD_Daemon *d;
	int port;
	int fail_hook;          /* answer 500 to this many /hook requests first */
	unsigned down;          /* non-zero: answer this to everything */
	size_t n;
	struct req reqs[MAX_REQS];
};

void receiver_start(struct receiver *rv);
void receiver_stop(struct receiver *rv);
/* Requests to paths starting with prefix (answered with status, 0: any). */
size_t recv_count(struct receiver *rv, const char *prefix, unsigned status);
/* Wait (up to a minute) until recv_count reaches want; assert it equals want. */
void recv_wait_count(struct receiver *rv, const char *prefix, unsigned status, size_t want);
/* The k-th request to paths starting with prefix (the receiver is quiet by now). */
struct req *recv_nth(struct receiver *rv, const char *prefix, size_t k);

#endif
