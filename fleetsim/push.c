/*
 * push.c - otacd-fleetsim's MQTT subscriber; see push.h.
 *
 * Why one connection for the fleet: a million simulated devices cannot
 * hold a million broker sessions, and what is simulated is the device's
 * reaction, not its TCP connection.  So the one subscription uses the two
 * wildcard topics and the topic's last segment says which device (or which
 * hardware variant) the hint is for; a device of the fleet reacts exactly
 * as otacd-device does (pushhint.c checks the message, one hint per window,
 * a uniform delay within the window).
 */
#include "push.h"

#include <mosquitto.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/util.h"
#include "../device/linux/pushhint.h"
#include "sim.h"

#define QUEUE_MAX 65536
#define TOPIC_MAX 512
#define PAYLOAD_MAX 256               /* otacd-device's mqtt_payload_max default */

struct fs_push {
	struct mosquitto *mosq;
	struct pushhint_limits lim;
	char dev_topic[TOPIC_MAX], hw_topic[TOPIC_MAX];   /* ".../dev/+", ".../hw/+" */
	size_t base_len;                                   /* strlen("PREFIX/PRODUCT/") */
	char **hw_seg;                                     /* escaped hardware names */
	size_t nhw;
	uint32_t ndev;
	int64_t *taken;                  /* per device: real ms of the last hint taken, 0 none */
	pthread_mutex_t lock;            /* q, the counters */
	struct fs_hint *q;
	size_t nq;
	int64_t received, ignored, skipped;
	int started;
};

/* The device index a topic's last segment names ("dev-000042"), or -1. */
static long device_of(const struct fs_push *p, const char *seg)
{
	char id[32], *end;
	unsigned long i;

	if (strncmp(seg, "dev-", 4) || seg[4] < '0' || seg[4] > '9')
		return -1;
	i = strtoul(seg + 4, &end, 10);
	if (*end || i >= p->ndev)
		return -1;
	sim_device_id(id, sizeof(id), (uint32_t)i);
	return strcmp(id, seg) ? -1 : (long)i;     /* one spelling per device */
}

static long hardware_of(const struct fs_push *p, const char *seg)
{
	for (size_t k = 0; k < p->nhw; k++)
		if (!strcmp(p->hw_seg[k], seg))
			return (long)k;
	return -1;
}

/* The hint a message is, or -1 (ignore it). */
static int hint_of(struct fs_push *p, const struct mosquitto_message *m, struct fs_hint *h)
{
	const char *t = m->topic, *why;
	long v;

	if (!t || strncmp(t, p->dev_topic, p->base_len))
		return -1;
	t += p->base_len;
	if (!strncmp(t, "dev/", 4) && (v = device_of(p, t + 4)) >= 0) {
		h->dev = (uint32_t)v;
		h->hw = -1;
	} else if (!strncmp(t, "hw/", 3) && (v = hardware_of(p, t + 3)) >= 0) {
		h->dev = 0;
		h->hw = (int32_t)v;
	} else {
		return -1;
	}
	return pushhint_parse(&p->lim, m->payload, m->payloadlen, &h->window_ms, &why);
}

static void on_message(struct mosquitto *m, void *obj, const struct mosquitto_message *msg)
{
	struct fs_push *p = obj;
	struct fs_hint h;
	int ok = hint_of(p, msg, &h) == 0;

	(void)m;
	pthread_mutex_lock(&p->lock);
	p->received++;
	if (ok && p->nq < QUEUE_MAX)
		p->q[p->nq++] = h;
	else
		p->ignored++;
	pthread_mutex_unlock(&p->lock);
}

static void on_connect(struct mosquitto *m, void *obj, int rc)
{
	struct fs_push *p = obj;

	if (rc) {
		fprintf(stderr, "fleetsim: push: broker refused: %s; polling only\n", mosquitto_connack_string(rc));
		return;
	}
	if (mosquitto_subscribe(m, NULL, p->dev_topic, 0) != MOSQ_ERR_SUCCESS ||
	    mosquitto_subscribe(m, NULL, p->hw_topic, 0) != MOSQ_ERR_SUCCESS)
		fprintf(stderr, "fleetsim: push: cannot subscribe; polling only\n");
	else
		fprintf(stderr, "fleetsim: push: subscribed to %s and %s\n", p->dev_topic, p->hw_topic);
}

static int parse_url(const char *url, char *host, size_t cap, int *port, int *tls)
{
	const char *rest, *colon;

	if (!strncmp(url, "mqtt://", 7)) {
		rest = url + 7;
		*port = 1883;
		*tls = 0;
	} else if (!strncmp(url, "mqtts://", 8)) {
		rest = url + 8;
		*port = 8883;
		*tls = 1;
	} else {
		return ota_error_set(OTA_EINVAL, "--mqtt-url: want mqtt://HOST[:PORT] or mqtts://HOST[:PORT]");
	}
	colon = strrchr(rest, ':');
	snprintf(host, cap, "%.*s", colon ? (int)(colon - rest) : (int)strlen(rest), rest);
	if (colon)
		*port = atoi(colon + 1);
	if (!*host || *port <= 0 || *port > 65535)
		return ota_error_set(OTA_EINVAL, "--mqtt-url: bad host or port in '%s'", url);
	return 0;
}

static int credentials(struct fs_push *p, const struct fs_push_opts *o)
{
	struct buf pw = BUF_INIT;
	int rc = 0;

	if (!o->username && !o->password_file)
		return 0;
	if (o->password_file && (rc = ota_read_file(&pw, o->password_file, 4096))) {
		ota_error_prefix("--mqtt-password-file: ");
		goto out;
	}
	if (pw.ptr)
		pw.ptr[strcspn(pw.ptr, "\r\n")] = 0;
	if (mosquitto_username_pw_set(p->mosq, o->username ? o->username : "fleetsim",
				      pw.ptr && *pw.ptr ? pw.ptr : NULL) != MOSQ_ERR_SUCCESS)
		rc = ota_error_set(OTA_EINVAL, "--mqtt-username / --mqtt-password-file: rejected by libmosquitto");
out:
	if (pw.ptr)
		explicit_bzero(pw.ptr, pw.len);
	buf_release(&pw);
	return rc;
}

int fs_push_start(struct fs_push **out, const struct fs_push_opts *o, const char *product,
		  const char *const *hw, size_t nhw, uint32_t ndev)
{
	struct fs_push *p = xcalloc(1, sizeof(*p));
	char host[256], base[TOPIC_MAX - 16];
	int port = 0, tls = 0, rc;

	*out = NULL;
	pthread_mutex_init(&p->lock, NULL);
	p->lim.window_ms = o->window_ms ? o->window_ms : 60000;
	p->lim.window_max_ms = o->window_max_ms ? o->window_max_ms : 3600000;
	if (p->lim.window_max_ms < p->lim.window_ms)
		p->lim.window_max_ms = p->lim.window_ms;
	p->lim.payload_max = PAYLOAD_MAX;
	p->ndev = ndev;
	p->taken = xcalloc(ndev ? ndev : 1, sizeof(*p->taken));
	p->q = xcalloc(QUEUE_MAX, sizeof(*p->q));
	p->nhw = nhw;
	p->hw_seg = xcalloc(nhw ? nhw : 1, sizeof(char *));
	for (size_t k = 0; k < nhw; k++) {
		char s[TOPIC_MAX] = "";
		pushhint_topic_seg(s, sizeof(s), hw[k]);
		p->hw_seg[k] = xstrdup(s);
	}
	if ((rc = parse_url(o->url, host, sizeof(host), &port, &tls)))
		goto out;
	if (o->prefix && strpbrk(o->prefix, "+#")) {
		rc = ota_error_set(OTA_EINVAL, "--mqtt-prefix: '%s' holds a wildcard", o->prefix);
		goto out;
	}
	snprintf(base, sizeof(base), "%s/", o->prefix ? o->prefix : "otacd");
	pushhint_topic_seg(base, sizeof(base), product);
	if (strlen(base) + 5 >= sizeof(base)) {
		rc = ota_error_set(OTA_EINVAL, "--mqtt-prefix / --product: the topic is too long");
		goto out;
	}
	p->base_len = strlen(base) + 1;
	snprintf(p->dev_topic, sizeof(p->dev_topic), "%s/dev/+", base);
	snprintf(p->hw_topic, sizeof(p->hw_topic), "%s/hw/+", base);
	mosquitto_lib_init();
	if (!(p->mosq = mosquitto_new(NULL, true, p))) {
		rc = ota_error_set(OTA_ERROR, "push: mosquitto_new failed");
		goto out;
	}
	mosquitto_connect_callback_set(p->mosq, on_connect);
	mosquitto_message_callback_set(p->mosq, on_message);
	mosquitto_reconnect_delay_set(p->mosq, 1, 60, true);
	if ((rc = credentials(p, o)))
		goto out;
	if ((tls || o->cacert) &&
	    mosquitto_tls_set(p->mosq, o->cacert, o->cacert ? NULL : "/etc/ssl/certs", NULL, NULL, NULL) !=
		    MOSQ_ERR_SUCCESS) {
		rc = ota_error_set(OTA_EINVAL, "--mqtt-cacert: cannot load %s", o->cacert ? o->cacert : "the system CAs");
		goto out;
	}
	/* a broker that is away now is tried again in the background */
	if (mosquitto_connect_async(p->mosq, host, port, 60) != MOSQ_ERR_SUCCESS)
		fprintf(stderr, "fleetsim: push: broker %s:%d not reachable yet; polling, retrying\n", host, port);
	if (mosquitto_loop_start(p->mosq) != MOSQ_ERR_SUCCESS) {
		rc = ota_error_set(OTA_ERROR, "push: cannot start the MQTT thread");
		goto out;
	}
	p->started = 1;
	*out = p;
	p = NULL;
out:
	fs_push_free(p);
	return rc;
}

size_t fs_push_take(struct fs_push *p, struct fs_hint *out, size_t max)
{
	size_t n;

	pthread_mutex_lock(&p->lock);
	n = p->nq < max ? p->nq : max;
	memcpy(out, p->q, n * sizeof(*out));
	memmove(p->q, p->q + n, (p->nq - n) * sizeof(*p->q));
	p->nq -= n;
	pthread_mutex_unlock(&p->lock);
	return n;
}

int fs_push_draw(struct fs_push *p, uint32_t dev, const struct fs_hint *h, int64_t now, uint64_t *rng,
		 uint32_t *delay)
{
	if (p->taken[dev] && now - p->taken[dev] < (int64_t)p->lim.window_ms) {
		pthread_mutex_lock(&p->lock);
		p->skipped++;
		pthread_mutex_unlock(&p->lock);
		return 0;
	}
	p->taken[dev] = now ? now : 1;
	*delay = (uint32_t)(sim_randu(rng) * (double)h->window_ms);
	if (*delay >= h->window_ms)
		*delay = h->window_ms - 1;
	return 1;
}

void fs_push_counts(struct fs_push *p, int64_t *received, int64_t *ignored, int64_t *skipped)
{
	pthread_mutex_lock(&p->lock);
	*received = p->received;
	*ignored = p->ignored;
	*skipped = p->skipped;
	pthread_mutex_unlock(&p->lock);
}

void fs_push_free(struct fs_push *p)
{
	if (!p)
		return;
	if (p->mosq) {
		mosquitto_disconnect(p->mosq);
		if (p->started)
			mosquitto_loop_stop(p->mosq, true);
		mosquitto_destroy(p->mosq);
		mosquitto_lib_cleanup();
	}
	for (size_t k = 0; k < p->nhw; k++)
		free(p->hw_seg[k]);
	free(p->hw_seg);
	free(p->taken);
	free(p->q);
	pthread_mutex_destroy(&p->lock);
	free(p);
}
