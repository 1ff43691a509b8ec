/*
 * push.c - otacd-device's MQTT subscriber; see push.h.
 *
 * The broker and everything on it are untrusted: a message is taken only
 * when it arrives on one of our two topics, is at most payload_max bytes
 * and is a JSON object {"v": 1, ...}; its "window_ms" may widen our own
 * jitter window (up to window_max_ms), never narrow it, and one hint per
 * window is taken.  The worst a hostile broker can do is one early
 * check-in per window, which the device's poll would make anyway.
 *
 * Threads: one thread of ours owns the mosquitto handle: it connects
 * (again and again, with backoff, while the broker is away: a board may
 * boot before its network) and runs mosquitto_loop; on_message runs there
 * and only writes the pending delay (an atomic) that the main loop takes
 * (devpush_take).
 */
#include "push.h"
#include "pushhint.h"

#include <mosquitto.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TOPIC_MAX 512
#define LOG_IGNORED_MAX 20

static struct {
	char *url, *cacert, *username, *password_file, *prefix;
	uint32_t window_ms, window_max_ms, payload_max;
	char host[256];
	int port, tls;
	char topic_dev[TOPIC_MAX], topic_hw[TOPIC_MAX];
	struct mosquitto *mosq;
	uint64_t last_taken;            /* monotonic ms of the last hint taken (mosquitto's thread) */
	unsigned ignored;
	atomic_uint pending;            /* 1 + delay: a hint is waiting */
	atomic_int stop;
	atomic_int up;                  /* CONNACK accepted on this connection */
	pthread_t thread;
	int started;
} g = { .window_ms = 60000, .window_max_ms = 3600000, .payload_max = 256 };

static uint64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static int set_str(char **slot, const char *v)
{
	free(*slot);
	*slot = *v ? strdup(v) : NULL;
	return *slot ? 0 : -1;
}

static int set_num(uint32_t *slot, const char *v, uint32_t min, uint32_t max)
{
	char *end;
	unsigned long n = strtoul(v, &end, 0);
	if (!*v || *end || n < min || n > max)
		return -1;
	*slot = (uint32_t)n;
	return 0;
}

int devpush_parse_url(const char *url, char *host, size_t cap, int *port, int *tls)
{
	const char *rest, *end, *p;
	size_t n;
	long num;

	if (!strncmp(url, "mqtt://", 7)) {
		rest = url + 7;
		*port = 1883;
		*tls = 0;
	} else if (!strncmp(url, "mqtts://", 8)) {
		rest = url + 8;
		*port = 8883;
		*tls = 1;
	} else
		return -1;
	if (*rest == '[') { /* an IPv6 literal: [::1]:1883 */
		if (!(end = strchr(rest, ']')))
			return -1;
		rest++;
		n = (size_t)(end - rest);
		p = end + 1;
		if (strspn(rest, "0123456789abcdefABCDEF:.") < n)
			return -1;
	} else {
		n = strcspn(rest, ":");
		p = rest + n;
		if (memchr(rest, '[', n) || memchr(rest, ']', n))
			return -1;
	}
	/* no user, path or query: only HOST[:PORT] */
	if (!n || n >= cap || strcspn(rest, "@/?# \t") < n)
		return -1;
	if (*p == ':') {
		p++;
		if (!*p || strspn(p, "0123456789") != strlen(p) || strlen(p) > 5)
			return -1;
		num = strtol(p, NULL, 10);
		if (num < 1 || num > 65535)
			return -1;
		*port = (int)num;
	} else if (*p)
		return -1;
	memcpy(host, rest, n);
	host[n] = 0;
	return 0;
}

int devpush_config(const char *key, const char *v)
{
	if (!strcmp(key, "mqtt_url")) {
		char host[sizeof(g.host)];
		int port, tls;
		if (devpush_parse_url(v, host, sizeof(host), &port, &tls) < 0) {
			fprintf(stderr, "otacd-device: push: mqtt_url: want mqtt://HOST[:PORT] or mqtts://HOST[:PORT] "
					"(an IPv6 address in [ ], a port 1 to 65535)\n");
			return -1;
		}
		return set_str(&g.url, v);
	}
	if (!strcmp(key, "mqtt_cacert"))
		return set_str(&g.cacert, v);
	if (!strcmp(key, "mqtt_username"))
		return set_str(&g.username, v);
	if (!strcmp(key, "mqtt_password_file"))
		return set_str(&g.password_file, v);
	if (!strcmp(key, "mqtt_prefix"))
		return strpbrk(v, "+#") ? -1 : set_str(&g.prefix, v);
	if (!strcmp(key, "mqtt_window_ms"))
		return set_num(&g.window_ms, v, 1, 86400000);
	if (!strcmp(key, "mqtt_window_max_ms"))
		return set_num(&g.window_max_ms, v, 1, 86400000);
	if (!strcmp(key, "mqtt_payload_max"))
		return set_num(&g.payload_max, v, 16, 65536);
	return -1;
}

static void ignore(const char *why, int len)
{
	if (g.ignored < LOG_IGNORED_MAX)
		fprintf(stderr, "otacd-device: push: ignored a message (%d bytes): %s\n", len, why);
	if (++g.ignored == LOG_IGNORED_MAX)
		fprintf(stderr, "otacd-device: push: further ignored messages are not logged\n");
}

/* A hint's jitter window: 0 and *window, or -1 with *why (ignore it). */
static int hint_parse(const void *payload, int len, uint32_t *window, const char **why)
{
	const struct pushhint_limits lim = { g.window_ms, g.window_max_ms, g.payload_max };
	return pushhint_parse(&lim, payload, len, window, why);
}

static void on_message(struct mosquitto *m, void *obj, const struct mosquitto_message *msg)
{
	uint32_t window, r = 0, delay;
	uint64_t now = mono_ms();
	const char *why = NULL;
	(void)m;
	(void)obj;
	if (!msg->topic || (strcmp(msg->topic, g.topic_dev) && strcmp(msg->topic, g.topic_hw))) {
		ignore("not one of our topics", msg->payloadlen);
		return;
	}
	if (hint_parse(msg->payload, msg->payloadlen, &window, &why) < 0) {
		ignore(why, msg->payloadlen);
		return;
	}
	if (g.last_taken && now - g.last_taken < g.window_ms) {
		ignore("a hint was taken less than mqtt_window_ms ago", msg->payloadlen);
		return;
	}
	g.last_taken = now;
	if (RAND_bytes((unsigned char *)&r, sizeof(r)) != 1)
		r = (uint32_t)now;
	delay = r % window;
	fprintf(stderr, "otacd-device: push: hint on %s; checking in within %u ms (in %u ms)\n", msg->topic, window,
		delay);
	atomic_store(&g.pending, delay + 1);
}

static void on_connect(struct mosquitto *m, void *obj, int rc)
{
	(void)obj;
	if (rc) {
		fprintf(stderr, "otacd-device: push: broker refused: %s; polling only\n", mosquitto_connack_string(rc));
		return;
	}
	atomic_store(&g.up, 1);
	if (mosquitto_subscribe(m, NULL, g.topic_dev, 0) != MOSQ_ERR_SUCCESS ||
	    mosquitto_subscribe(m, NULL, g.topic_hw, 0) != MOSQ_ERR_SUCCESS)
		fprintf(stderr, "otacd-device: push: cannot subscribe; polling only\n");
	else
		fprintf(stderr, "otacd-device: push: subscribed to %s and %s\n", g.topic_dev, g.topic_hw);
}

static int read_password(char *out, size_t cap)
{
	FILE *f = fopen(g.password_file, "r");
	size_t n;
	if (!f)
		return -1;
	n = fread(out, 1, cap - 1, f);
	fclose(f);
	out[n] = 0;
	out[strcspn(out, "\r\n")] = 0;
	return *out ? 0 : -1;
}

static void nap(uint32_t ms)
{
	for (uint32_t t = 0; t < ms && !atomic_load(&g.stop); t += 100) {
		struct timespec ts = { 0, 100 * 1000000L };
		nanosleep(&ts, NULL);
	}
}

/* Connect, loop, and on any failure reconnect after 1 s .. 60 s; a broker
 * that is away is said once per outage. */
static void *loop(void *arg)
{
	uint32_t backoff = 1000;
	int said = 0;
	(void)arg;
	while (!atomic_load(&g.stop)) {
		int rc = mosquitto_connect_async(g.mosq, g.host, g.port, 60); /* stop never waits on a TCP timeout */
		if (rc == MOSQ_ERR_SUCCESS) {
			while (!atomic_load(&g.stop) && (rc = mosquitto_loop(g.mosq, 100, 1)) == MOSQ_ERR_SUCCESS)
				if (atomic_load(&g.up))
					backoff = 1000, said = 0;
			atomic_store(&g.up, 0);
			mosquitto_disconnect(g.mosq);
		}
		if (atomic_load(&g.stop))
			break;
		if (!said)
			fprintf(stderr, "otacd-device: push: broker %s:%d: %s; polling, retrying in the background\n", g.host,
				g.port, mosquitto_strerror(rc));
		said = 1;
		nap(backoff);
		backoff = backoff * 2 > 60000 ? 60000 : backoff * 2;
	}
	return NULL;
}

int devpush_start(const char *device, const char *product, const char *hardware)
{
	char password[256];

	if (!g.url)
		return 0;
	if (devpush_parse_url(g.url, g.host, sizeof(g.host), &g.port, &g.tls) < 0) {
		fprintf(stderr, "otacd-device: push: mqtt_url: want mqtt://HOST[:PORT] or mqtts://HOST[:PORT]\n");
		return -1;
	}
	snprintf(g.topic_dev, sizeof(g.topic_dev), "%s/", g.prefix ? g.prefix : "otacd");
	pushhint_topic_seg(g.topic_dev, sizeof(g.topic_dev), product);
	memcpy(g.topic_hw, g.topic_dev, sizeof(g.topic_hw));
	strncat(g.topic_hw, "/hw/", sizeof(g.topic_hw) - strlen(g.topic_hw) - 1);
	strncat(g.topic_dev, "/dev/", sizeof(g.topic_dev) - strlen(g.topic_dev) - 1);
	pushhint_topic_seg(g.topic_dev, sizeof(g.topic_dev), device);
	pushhint_topic_seg(g.topic_hw, sizeof(g.topic_hw), hardware);

	mosquitto_lib_init();
	if (!(g.mosq = mosquitto_new(device, true, NULL))) {
		fprintf(stderr, "otacd-device: push: mosquitto_new failed\n");
		return -1;
	}
	mosquitto_connect_callback_set(g.mosq, on_connect);
	mosquitto_message_callback_set(g.mosq, on_message);
	if (g.password_file && read_password(password, sizeof(password)) < 0) {
		fprintf(stderr, "otacd-device: push: cannot read mqtt_password_file %s\n", g.password_file);
		return -1;
	}
	if (g.username || g.password_file) {
		int rc = mosquitto_username_pw_set(g.mosq, g.username ? g.username : device,
						   g.password_file ? password : NULL);
		memset(password, 0, sizeof(password));   /* mosquitto keeps its own copy */
		if (rc != MOSQ_ERR_SUCCESS) {
			fprintf(stderr, "otacd-device: push: mqtt_username / mqtt_password_file: %s\n",
				mosquitto_strerror(rc));
			return -1;
		}
	}
	if ((g.tls || g.cacert) &&
	    mosquitto_tls_set(g.mosq, g.cacert, g.cacert ? NULL : "/etc/ssl/certs", NULL, NULL, NULL) != MOSQ_ERR_SUCCESS) {
		fprintf(stderr, "otacd-device: push: mqtt_cacert: cannot load\n");
		return -1;
	}
	if (pthread_create(&g.thread, NULL, loop, NULL) != 0) {
		fprintf(stderr, "otacd-device: push: cannot start the MQTT thread\n");
		return -1;
	}
	g.started = 1;
	return 0;
}

int devpush_take(uint32_t *delay_ms)
{
	unsigned v = atomic_exchange(&g.pending, 0);
	if (!v)
		return 0;
	*delay_ms = v - 1;
	return 1;
}

void devpush_stop(void)
{
	if (g.mosq) {
		atomic_store(&g.stop, 1);
		if (g.started)
			pthread_join(g.thread, NULL);
		g.started = 0;
		mosquitto_destroy(g.mosq);
		mosquitto_lib_cleanup();
		g.mosq = NULL;
	}
}
