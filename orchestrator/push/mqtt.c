/*
 * mqtt.c - the MQTT publisher of push hints; see push.h.
 *
 * Threads: push_fleet_notify runs on the rollout controller's thread (the
 * one that sets exposures); it only formats hints and appends them to a
 * bounded ring under a mutex, dropping what does not fit.  The publisher
 * thread owns the mosquitto handle: it connects (and reconnects with
 * backoff), runs mosquitto_loop and publishes what the ring holds.  While
 * it is not connected it drains the ring into the drop counter, so a
 * broker that is down costs the rollout nothing and devices fall back to
 * polling.  Errors are logged once per outage (and once per distinct
 * refusal, e.g. bad credentials), not per hint.
 *
 * libmosquitto is dlopen()ed by the first push_open() with a url (through
 * the table mq, its own prototypes): linked, it and the libssl it links
 * were mapped and relocated in every otacd at start (~0.3 MB of idle Rss,
 * issue 18, common/libload.h), push hints or not.
 */
#include "push.h"

#include <errno.h>
#include <mosquitto.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../../common/libload.h"
#include "../../common/log.h"
#include "../../common/util.h"

/* The soname otacd was built against (libmosquitto's ABI). */
#define MQ_SONAME "libmosquitto.so.1"

static struct {
	__typeof__(&mosquitto_lib_init) lib_init;
	__typeof__(&mosquitto_lib_cleanup) lib_cleanup;
	__typeof__(&mosquitto_new) new;
	__typeof__(&mosquitto_destroy) destroy;
	__typeof__(&mosquitto_connect_callback_set) connect_callback_set;
	__typeof__(&mosquitto_disconnect_callback_set) disconnect_callback_set;
	__typeof__(&mosquitto_username_pw_set) username_pw_set;
	__typeof__(&mosquitto_tls_set) tls_set;
	__typeof__(&mosquitto_connect_async) connect_async;
	__typeof__(&mosquitto_disconnect) disconnect;
	__typeof__(&mosquitto_loop) loop;
	__typeof__(&mosquitto_publish) publish;
	__typeof__(&mosquitto_strerror) strerror;
	__typeof__(&mosquitto_connack_string) connack_string;
} mq;
static pthread_once_t mq_once = PTHREAD_ONCE_INIT;
static int mq_loaded;
static char mq_error[256];

static void mq_load(void)
{
	static const struct libload_sym syms[] = {
		{ "mosquitto_lib_init", &mq.lib_init },
		{ "mosquitto_lib_cleanup", &mq.lib_cleanup },
		{ "mosquitto_new", &mq.new },
		{ "mosquitto_destroy", &mq.destroy },
		{ "mosquitto_connect_callback_set", &mq.connect_callback_set },
		{ "mosquitto_disconnect_callback_set", &mq.disconnect_callback_set },
		{ "mosquitto_username_pw_set", &mq.username_pw_set },
		{ "mosquitto_tls_set", &mq.tls_set },
		{ "mosquitto_connect_async", &mq.connect_async },
		{ "mosquitto_disconnect", &mq.disconnect },
		{ "mosquitto_loop", &mq.loop },
		{ "mosquitto_publish", &mq.publish },
		{ "mosquitto_strerror", &mq.strerror },
		{ "mosquitto_connack_string", &mq.connack_string },
	};

	mq_loaded = libload_open(MQ_SONAME, "MQTT push hints", syms, sizeof(syms) / sizeof(syms[0]), mq_error,
				 sizeof(mq_error)) == 0;
}

#define PUSH_PAYLOAD_MAX 128

struct hint {
	char *topic;
	char payload[PUSH_PAYLOAD_MAX];
};

struct push {
	/* config (read-only after push_open) */
	char *host, *cacert, *username, *password, *prefix, *client_id, *url;
	int port, tls;
	int64_t capacity;        /* check-ins per second the device API takes on top of polling */
	int64_t window_ms;       /* the least jitter window */
	size_t per_device_max;   /* above: one hint per (product, hardware) cohort */

	pthread_mutex_t mu;      /* the ring and stop */
	pthread_cond_t cv;
	struct hint *ring;
	size_t cap, head, n;
	int stop;
	int overflow_logged;     /* a full ring was logged (once per process) */
	pthread_t thread;

	int lib;                 /* mosquitto_lib_init called: push_close pairs it with a cleanup */

	/* publisher thread only */
	struct mosquitto *mosq;
	int last_refusal;        /* the last CONNACK refusal logged (0 none) */
	int refused;             /* this attempt's CONNACK refused */
	int outage_logged;

	atomic_int connected;
	atomic_uint_fast64_t queued, published, dropped;
};

void push_topic_escape(char *out, size_t cap, const char *s)
{
	size_t o = 0;
	if (!cap)
		return;
	for (; *s && o + 4 < cap; s++) {
		if (*s == '/' || *s == '+' || *s == '#' || *s == '%') {
			snprintf(out + o, cap - o, "%%%02X", (unsigned char)*s);
			o += 3;
		} else {
			out[o++] = *s;
		}
	}
	out[o] = 0;
}

/* ---- the ring (any thread) ------------------------------------------------ */

static void enqueue_locked(struct push *p, char *topic, const char *payload)
{
	struct hint *h;
	if (p->n == p->cap) {
		atomic_fetch_add(&p->dropped, 1);
		if (!p->overflow_logged)
			ota_log(OTA_LOG_WARN, "push: %zu hints are waiting (push.queue); more are dropped (counted) and"
					" those devices poll\n", p->cap);
		p->overflow_logged = 1;
		free(topic);
		return;
	}
	h = &p->ring[(p->head + p->n) % p->cap];
	h->topic = topic;
	snprintf(h->payload, sizeof(h->payload), "%s", payload);
	p->n++;
	atomic_fetch_add(&p->queued, 1);
}

static int cmp_ptr(const void *a, const void *b)
{
	uintptr_t x = (uintptr_t) * (const char *const *)a, y = (uintptr_t) * (const char *const *)b;
	return x < y ? -1 : x > y;
}

void push_fleet_notify(void *ctx, const char *product, const struct fleet_change *c, size_t n)
{
	struct push *p = ctx;
	char prod[3 * 128 + 1], seg[3 * 128 + 1], payload[PUSH_PAYLOAD_MAX];
	/* the window sized to capacity: n devices at `capacity` per second */
	int64_t window = (int64_t)n * 1000 / (p->capacity > 0 ? p->capacity : 1);
	if (window < p->window_ms)
		window = p->window_ms;
	const char **hw = NULL;
	size_t nhw = 0;
	push_topic_escape(prod, sizeof(prod), product);
	if (n > p->per_device_max) {
		/* the distinct variants (interned: equal names are equal pointers) */
		hw = xcalloc(n, sizeof(*hw));
		for (size_t i = 0; i < n; i++)
			hw[i] = c[i].hardware;
		qsort(hw, n, sizeof(*hw), cmp_ptr);
		for (size_t i = 0; i < n; i++)
			if (!nhw || hw[nhw - 1] != hw[i])
				hw[nhw++] = hw[i];
	}
	pthread_mutex_lock(&p->mu);
	if (n <= p->per_device_max) {
		for (size_t i = 0; i < n; i++) {
			snprintf(payload, sizeof(payload), "{\"v\":1,\"reason\":\"%s\",\"window_ms\":%lld}", c[i].reason,
				 (long long)window);
			enqueue_locked(p, xasprintf("%s/%s/dev/%s", p->prefix, prod, c[i].device), payload);
		}
	} else {
		/* a cohort hint per hardware variant: every device of it checks
		 * in within the window; those the step did not expose get no offer */
		for (size_t i = 0; i < nhw; i++) {
			push_topic_escape(seg, sizeof(seg), hw[i]);
			snprintf(payload, sizeof(payload), "{\"v\":1,\"reason\":\"%s\",\"window_ms\":%lld}", c[0].reason,
				 (long long)window);
			enqueue_locked(p, xasprintf("%s/%s/hw/%s", p->prefix, prod, seg), payload);
		}
	}
	pthread_cond_signal(&p->cv);
	pthread_mutex_unlock(&p->mu);
	free(hw);
}

/* the publisher /metrics reports: set by push_open, cleared by push_close
 * (one per process) */
static struct push *_Atomic g_push;

void push_metrics_text(struct buf *b)
{
	struct push_stats st;
	struct push *p = atomic_load(&g_push);
	if (!p)
		return;
	push_stats(p, &st);
	buf_printf(b, "# HELP otacd_push_hints_queued_total Push hints queued for the MQTT publisher.\n"
		      "# TYPE otacd_push_hints_queued_total counter\notacd_push_hints_queued_total %llu\n"
		      "# HELP otacd_push_hints_published_total Push hints handed to the MQTT broker.\n"
		      "# TYPE otacd_push_hints_published_total counter\notacd_push_hints_published_total %llu\n"
		      "# HELP otacd_push_hints_dropped_total Push hints dropped (queue full or broker away): devices poll.\n"
		      "# TYPE otacd_push_hints_dropped_total counter\notacd_push_hints_dropped_total %llu\n"
		      "# HELP otacd_push_connected 1 while otacd is connected to the MQTT broker.\n"
		      "# TYPE otacd_push_connected gauge\notacd_push_connected %d\n",
		   (unsigned long long)st.queued, (unsigned long long)st.published, (unsigned long long)st.dropped,
		   st.connected);
}

void push_stats(struct push *p, struct push_stats *out)
{
	memset(out, 0, sizeof(*out));
	if (!p)
		return;
	out->queued = atomic_load(&p->queued);
	out->published = atomic_load(&p->published);
	out->dropped = atomic_load(&p->dropped);
	out->connected = atomic_load(&p->connected);
}

/* ---- the publisher thread ------------------------------------------------- */

static void on_connect(struct mosquitto *m, void *obj, int rc)
{
	struct push *p = obj;
	(void)m;
	if (rc == 0) {
		if (p->outage_logged || p->last_refusal)
			ota_log(OTA_LOG_INFO, "push: connected to %s (%llu hints dropped so far)", p->url,
				(unsigned long long)atomic_load(&p->dropped));
		p->outage_logged = 0;
		p->last_refusal = 0;
		atomic_store(&p->connected, 1);
		return;
	}
	if (rc != p->last_refusal)
		ota_log(OTA_LOG_WARN, "push: broker %s refused the connection: %s%s; devices poll until it accepts",
			p->url, mq.connack_string(rc),
			rc == 4 || rc == 5 ? " (check push.username and push.password_file)" : "");
	p->last_refusal = rc;
	p->refused = 1;
	p->outage_logged = 1;
}

static void on_disconnect(struct mosquitto *m, void *obj, int rc)
{
	struct push *p = obj;
	(void)m;
	(void)rc;
	atomic_store(&p->connected, 0);
}

/* Take queued hints, at most max (then mosquitto_loop writes them out):
 * publish when connected, else count them dropped. */
static void drain(struct push *p, size_t max)
{
	for (size_t k = 0; k < max; k++) {
		struct hint h;
		int rc;
		pthread_mutex_lock(&p->mu);
		if (!p->n) {
			pthread_mutex_unlock(&p->mu);
			return;
		}
		h = p->ring[p->head];
		p->head = (p->head + 1) % p->cap;
		p->n--;
		pthread_mutex_unlock(&p->mu);
		rc = atomic_load(&p->connected)
			     ? mq.publish(p->mosq, NULL, h.topic, (int)strlen(h.payload), h.payload, 0, false)
			     : MOSQ_ERR_NO_CONN;
		if (rc == MOSQ_ERR_SUCCESS)
			atomic_fetch_add(&p->published, 1);
		else
			atomic_fetch_add(&p->dropped, 1);
		free(h.topic);
	}
}

/* Wait up to ms for a stop (1) or a hint (0). */
static int idle(struct push *p, int64_t ms)
{
	struct timespec ts;
	int stop;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (ms % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&p->mu);
	if (!p->stop && !p->n)
		pthread_cond_timedwait(&p->cv, &p->mu, &ts);
	stop = p->stop;
	pthread_mutex_unlock(&p->mu);
	return stop;
}

static int stopping(struct push *p)
{
	int s;
	pthread_mutex_lock(&p->mu);
	s = p->stop;
	pthread_mutex_unlock(&p->mu);
	return s;
}

static void *publisher(void *arg)
{
	struct push *p = arg;
	int64_t backoff = 1000;
	int up = 0, lrc;

	while (!stopping(p)) {
		if (!up) {
			int rc;
			p->refused = 0;
			/* non-blocking: a black-holed broker must not hold up push_close */
			rc = mq.connect_async(p->mosq, p->host, p->port, 30);
			if (rc != MOSQ_ERR_SUCCESS) {
				if (!p->outage_logged)
					ota_log(OTA_LOG_WARN, "push: cannot reach the broker %s: %s; hints are dropped "
							"(counted) and devices poll until it is back",
						p->url, rc == MOSQ_ERR_ERRNO ? strerror(errno) : mq.strerror(rc));
				p->outage_logged = 1;
				drain(p, SIZE_MAX);
				if (idle(p, backoff))
					break;
				drain(p, SIZE_MAX);
				backoff = backoff * 2 > 60000 ? 60000 : backoff * 2;
				continue;
			}
			up = 1;
		}
		/* the TLS handshake, CONNACK, PINGs and outgoing bytes */
		if ((lrc = mq.loop(p->mosq, 50, 1)) != MOSQ_ERR_SUCCESS || p->refused) {
			int was = atomic_load(&p->connected);
			atomic_store(&p->connected, 0);
			mq.disconnect(p->mosq);
			up = 0;
			if (!p->outage_logged)
				ota_log(OTA_LOG_WARN, "push: %s the broker %s: %s; hints are dropped (counted) and devices"
						" poll until it is back", was ? "lost" : "cannot reach", p->url,
					lrc == MOSQ_ERR_ERRNO ? strerror(errno) : mq.strerror(lrc));
			p->outage_logged = 1;
			drain(p, SIZE_MAX);
			if (idle(p, backoff))
				break;
			backoff = backoff * 2 > 60000 ? 60000 : backoff * 2;
			continue;
		}
		if (atomic_load(&p->connected)) {
			backoff = 1000;
			drain(p, 1000);
		}
	}
	if (up)
		mq.disconnect(p->mosq);
	drain(p, SIZE_MAX);
	return NULL;
}

/* ---- configuration ---------------------------------------------------------- */

static int read_password(struct push *p, const char *file)
{
	struct buf b;
	int rc;
	buf_init(&b, 4096);
	if ((rc = ota_read_file(&b, file, 4096)) < 0) {
		buf_release(&b);
		return ota_error_set(rc, "push: cannot read password_file %s", file);
	}
	while (b.len && (b.ptr[b.len - 1] == '\n' || b.ptr[b.len - 1] == '\r'))
		b.len--;
	if (!b.len || memchr(b.ptr, '\n', b.len)) {
		buf_release(&b);
		return ota_error_set(OTA_EINVAL, "push: password_file %s: want one non-empty line", file);
	}
	p->password = xasprintf("%.*s", (int)b.len, b.ptr);
	explicit_bzero(b.ptr, b.len);
	buf_release(&b);
	return 0;
}

static int parse_url(struct push *p, const char *url)
{
	const char *rest, *colon;
	if (!strncmp(url, "mqtt://", 7)) {
		rest = url + 7;
		p->port = 1883;
	} else if (!strncmp(url, "mqtts://", 8)) {
		rest = url + 8;
		p->port = 8883;
		p->tls = 1;
	} else {
		return ota_error_set(OTA_EINVAL, "push: url '%s': want mqtt://HOST[:PORT] or mqtts://HOST[:PORT]", url);
	}
	if (strchr(rest, '/') || strchr(rest, '@'))
		return ota_error_set(OTA_EINVAL, "push: url '%s': want mqtt://HOST[:PORT] (no path; credentials go in username"
						 " and password_file)", url);
	colon = strrchr(rest, ':');
	if (colon && !strchr(colon, ']')) {
		char *end;
		long port = strtol(colon + 1, &end, 10);
		if (*end || port < 1 || port > 65535)
			return ota_error_set(OTA_EINVAL, "push: url '%s': bad port", url);
		p->port = (int)port;
		p->host = xasprintf("%.*s", (int)(colon - rest), rest);
	} else {
		p->host = xstrdup(rest);
	}
	if (!*p->host)
		return ota_error_set(OTA_EINVAL, "push: url '%s': no host", url);
	p->url = xstrdup(url);
	return 0;
}

static int get_int(const json_t *cfg, const char *key, int64_t min, int64_t max, int64_t *out)
{
	const json_t *v = json_object_get(cfg, key);
	if (!v)
		return 0;
	if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max)
		return ota_error_set(OTA_EINVAL, "push: %s: want an integer in %lld..%lld", key, (long long)min,
				     (long long)max);
	*out = json_integer_value(v);
	return 0;
}

int push_open(struct push **out, const json_t *cfg)
{
	static const char *const known[] = { "url", "cacert", "username", "password_file", "prefix", "capacity",
					     "window", "queue", "per_device_max", "client_id" };
	struct push *p = NULL;
	const char *key, *s;
	const json_t *v;
	int64_t queue = 10000, per_device = 1000, window = 60;
	int rc = 0;

	*out = NULL;
	if (!cfg || !json_object_get(cfg, "url"))
		return 0;
	json_object_foreach((json_t *)cfg, key, v) {
		size_t i;
		for (i = 0; i < sizeof(known) / sizeof(*known) && strcmp(key, known[i]); i++)
			;
		if (i == sizeof(known) / sizeof(*known))
			return ota_error_set(OTA_EINVAL, "push: unknown key '%s'", key);
		if (!strcmp(key, known[0]) || !strcmp(key, known[1]) || !strcmp(key, known[2]) ||
		    !strcmp(key, known[3]) || !strcmp(key, known[4]) || !strcmp(key, known[9]))
			if (!json_is_string(v) || !*json_string_value(v))
				return ota_error_set(OTA_EINVAL, "push: %s: want a non-empty string", key);
	}
	p = xcalloc(1, sizeof(*p));
	p->capacity = 100;
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->cv, NULL);
	if ((rc = parse_url(p, json_string_value(json_object_get(cfg, "url")))) < 0 ||
	    (rc = get_int(cfg, "capacity", 1, 10000000, &p->capacity)) < 0 ||
	    (rc = get_int(cfg, "window", 1, 86400, &window)) < 0 ||
	    (rc = get_int(cfg, "queue", 1, 10000000, &queue)) < 0 ||
	    (rc = get_int(cfg, "per_device_max", 0, 10000000, &per_device)) < 0)
		goto fail;
	p->window_ms = window * 1000;
	p->per_device_max = (size_t)per_device;
	p->cap = (size_t)queue;
	p->ring = xcalloc(p->cap, sizeof(*p->ring));
	s = json_string_value(json_object_get(cfg, "prefix"));
	p->prefix = xstrdup(s ? s : "otacd");
	if (strpbrk(p->prefix, "+#") || p->prefix[0] == '/' || p->prefix[strlen(p->prefix) - 1] == '/') {
		rc = ota_error_set(OTA_EINVAL, "push: prefix '%s': no '+', '#' nor a leading or trailing '/'", p->prefix);
		goto fail;
	}
	s = json_string_value(json_object_get(cfg, "client_id"));
	p->client_id = s ? xstrdup(s) : xasprintf("otacd-%ld", (long)getpid());
	if ((s = json_string_value(json_object_get(cfg, "username"))))
		p->username = xstrdup(s);
	if ((s = json_string_value(json_object_get(cfg, "password_file"))) && (rc = read_password(p, s)) < 0)
		goto fail;
	if ((s = json_string_value(json_object_get(cfg, "cacert"))))
		p->cacert = xstrdup(s);

	pthread_once(&mq_once, mq_load);
	if (!mq_loaded) {
		rc = ota_error_set(OTA_ERROR, "push: %s", mq_error);
		goto fail;
	}
	if (mq.lib_init() != MOSQ_ERR_SUCCESS) {
		rc = ota_error_set(OTA_ERROR, "push: mosquitto_lib_init failed");
		goto fail;
	}
	p->lib = 1;
	if (!(p->mosq = mq.new(p->client_id, true, p))) {
		rc = ota_error_set(OTA_ERROR, "push: mosquitto_new: %s", strerror(errno));
		goto fail;
	}
	mq.connect_callback_set(p->mosq, on_connect);
	mq.disconnect_callback_set(p->mosq, on_disconnect);
	if (p->username && mq.username_pw_set(p->mosq, p->username, p->password) != MOSQ_ERR_SUCCESS) {
		rc = ota_error_set(OTA_EINVAL, "push: bad username or password");
		goto fail;
	}
	if (p->tls || p->cacert) {
		int trc = mq.tls_set(p->mosq, p->cacert, p->cacert ? NULL : "/etc/ssl/certs", NULL, NULL, NULL);
		if (trc != MOSQ_ERR_SUCCESS) {
			rc = ota_error_set(OTA_EINVAL, "push: cacert %s: %s", p->cacert ? p->cacert : "(system)",
					   mq.strerror(trc));
			goto fail;
		}
		p->tls = 1;
	}
	if (pthread_create(&p->thread, NULL, publisher, p) != 0) {
		rc = ota_error_set(OTA_ERROR, "push: cannot start the publisher thread");
		goto fail;
	}
	*out = p;
	atomic_store(&g_push, p);
	return 0;
fail:
	/* no publisher thread yet: push_close must not join one */
	if (p && p->mosq)
		mq.destroy(p->mosq);
	if (p)
		p->mosq = NULL;
	push_close(p);
	return rc;
}

void push_close(struct push *p)
{
	if (!p)
		return;
	if (atomic_load(&g_push) == p)
		atomic_store(&g_push, NULL);
	if (p->mosq) {
		pthread_mutex_lock(&p->mu);
		p->stop = 1;
		pthread_cond_signal(&p->cv);
		pthread_mutex_unlock(&p->mu);
		pthread_join(p->thread, NULL);
		mq.destroy(p->mosq);
	}
	if (p->lib)
		mq.lib_cleanup();
	for (size_t i = 0; i < p->n; i++)
		free(p->ring[(p->head + i) % p->cap].topic);
	free(p->ring);
	if (p->password)
		explicit_bzero(p->password, strlen(p->password));
	free(p->password);
	free(p->host);
	free(p->cacert);
	free(p->username);
	free(p->prefix);
	free(p->client_id);
	free(p->url);
	pthread_mutex_destroy(&p->mu);
	pthread_cond_destroy(&p->cv);
	free(p);
}
