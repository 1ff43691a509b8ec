/*
 * statusrecv.c - the recording receiver of statusrecv.h.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>

#include "harness.h"
#include "statusrecv.h"

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static char *hdr(struct MHD_Connection *c, const char *name)
{
	const char *v = MHD_lookup_connection_value(c, MHD_HEADER_KIND, name);
	return v ? xstrdup(v) : NULL;
}

/* Keep the path as sent: the tests check its percent-encoding. */
static size_t keep_raw(void *cls, struct MHD_Connection *c, char *uri)
{
	(void)cls;
	(void)c;
	return strlen(uri);
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode t)
{
	(void)cls;
	(void)c;
	(void)t;
	if (*con_cls) {
		buf_release(*con_cls);
		free(*con_cls);
		*con_cls = NULL;
	}
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
				  const char *version, const char *upload, size_t *upload_size, void **con_cls)
{
	struct receiver *rv = cls;
	struct buf *body = *con_cls;
	struct MHD_Response *resp;
	struct req *q;
	unsigned status = 200;
	enum MHD_Result ret;

	(void)version;
	if (!body) {
		body = xcalloc(1, sizeof(*body));
		buf_init(body, 1 << 20);
		*con_cls = body;
		return MHD_YES;
	}
	if (*upload_size) {
		buf_put(body, upload, *upload_size);
		*upload_size = 0;
		return MHD_YES;
	}
	pthread_mutex_lock(&rv->lock);
	if (rv->n < MAX_REQS) {
		q = &rv->reqs[rv->n++];
		snprintf(q->method, sizeof(q->method), "%s", method);
		snprintf(q->path, sizeof(q->path), "%s", url);
		q->authorization = hdr(c, "Authorization");
		q->private_token = hdr(c, "PRIVATE-TOKEN");
		q->accept = hdr(c, "Accept");
		q->api_version = hdr(c, "X-GitHub-Api-Version");
		q->ctype = hdr(c, "Content-Type");
		q->event = hdr(c, "X-Otacd-Event");
		q->delivery = hdr(c, "X-Otacd-Delivery");
		q->timestamp = hdr(c, "X-Otacd-Timestamp");
		q->signature = hdr(c, "X-Otacd-Signature-256");
		q->body = xstrdup(buf_cstr(body));
		q->at_ms = mono_ms();
		if (rv->down)
			status = rv->down;
		else if (!strcmp(url, "/hook") && rv->fail_hook > 0)
			rv->fail_hook--, status = 500;
		q->status = status;
	}
	pthread_mutex_unlock(&rv->lock);
	resp = MHD_create_response_from_buffer(2, (void *)"{}", MHD_RESPMEM_PERSISTENT);
	ret = MHD_queue_response(c, status, resp);
	MHD_destroy_response(resp);
	return ret;
}

void receiver_start(struct receiver *rv)
{
	struct sockaddr_in sin;
	const union MHD_DaemonInfo *info;

	memset(rv, 0, sizeof(*rv));
	pthread_mutex_init(&rv->lock, NULL);
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	rv->d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, 0, NULL, NULL, on_request, rv,
				 MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sin, MHD_OPTION_UNESCAPE_CALLBACK, keep_raw, NULL,
				 MHD_OPTION_NOTIFY_COMPLETED, completed, NULL, MHD_OPTION_END);
	assert_non_null(rv->d);
	info = MHD_get_daemon_info(rv->d, MHD_DAEMON_INFO_BIND_PORT);
	assert_non_null(info);
	rv->port = info->port;
}

void receiver_stop(struct receiver *rv)
{
	MHD_stop_daemon(rv->d);
	for (size_t i = 0; i < rv->n; i++) {
		struct req *q = &rv->reqs[i];
		free(q->authorization);
		free(q->private_token);
		free(q->accept);
		free(q->api_version);
		free(q->ctype);
		free(q->event);
		free(q->delivery);
		free(q->timestamp);
		free(q->signature);
		free(q->body);
	}
	pthread_mutex_destroy(&rv->lock);
}

size_t recv_count(struct receiver *rv, const char *prefix, unsigned status)
{
	size_t n = 0;
	pthread_mutex_lock(&rv->lock);
	for (size_t i = 0; i < rv->n; i++)
		if (!strncmp(rv->reqs[i].path, prefix, strlen(prefix)) && (!status || rv->reqs[i].status == status))
			n++;
	pthread_mutex_unlock(&rv->lock);
	return n;
}

void recv_wait_count(struct receiver *rv, const char *prefix, unsigned status, size_t want)
{
	for (int i = 0; i < 1200 && recv_count(rv, prefix, status) < want; i++)
		h_msleep(50);
	assert_int_equal(recv_count(rv, prefix, status), want);
}

struct req *recv_nth(struct receiver *rv, const char *prefix, size_t k)
{
	for (size_t i = 0; i < rv->n; i++)
		if (!strncmp(rv->reqs[i].path, prefix, strlen(prefix)) && k-- == 0)
			return &rv->reqs[i];
	fail_msg("no request %zu under %s", k, prefix);
	return NULL;
}
