/*
 * test_readiness.c - readiness after a start (issue 18).  Until the
 * rollout controller has applied every rollout once, the device API knows
 * no offers; it answers the routes that depend on them with 503 and
 * Retry-After instead of "no update", and /readyz says why.  In process:
 * a held fleet's device API refuses exactly those routes, then serves once
 * released.  End to end: otacd SIGKILLed in a rollout's hold and started
 * again is asked for check-ins from the instant its device listener
 * accepts a connection; every answer is a 503 or carries the offer.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <pthread.h>
#include <cmocka.h>
#include <curl/curl.h>

#include "../common/util.h"
#include "../orchestrator/fleet/fleet.h"
#include "devharness.h"
#include "harness.h"

/* ---- one raw device request ----------------------------------------------- */

struct answer {
	long status;          /* 0: no connection */
	struct buf body;
	int retry_after;      /* the Retry-After header was there */
};

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
	struct answer *a = arg;
	if (buf_put(&a->body, p, size * n) < 0)
		return 0;
	return size * n;
}

static size_t on_header(char *p, size_t size, size_t n, void *arg)
{
	struct answer *a = arg;
	if (size * n > 12 && !strncasecmp(p, "Retry-After:", 12))
		a->retry_after = 1;
	return size * n;
}

/* POST (body) or GET (NULL) url with token; no cmocka calls: a thread uses it. */
static void device_request(struct answer *a, const char *url, const char *token, const char *body)
{
	CURL *c = curl_easy_init();
	struct curl_slist *h = NULL;
	char *auth = xasprintf("Authorization: Bearer %s", token);

	memset(a, 0, sizeof(*a));
	buf_init(&a->body, 1 << 20);
	h = curl_slist_append(h, auth);
	h = curl_slist_append(h, "Content-Type: application/json");
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 20000L);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, a);
	curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(c, CURLOPT_HEADERDATA, a);
	if (body)
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
	if (curl_easy_perform(c) == CURLE_OK)
		curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &a->status);

	curl_slist_free_all(h);
	curl_easy_cleanup(c);
	free(auth);
}

/* ---- in process: a held fleet's device API ------------------------------------ */

static void held_fleet_answers_503_with_retry_after_until_released(void **state)
{
	char *dir = h_tmpdir(), *db = xasprintf("%s/fleet.db", dir), *base, *url;
	struct fleet_config cfg = { .db_path = db, .poll_ms = 1000 };
	struct fleet *f = NULL;
	struct devapi *api = NULL;
	struct answer a;
	static const char *const offer_routes[] = { "/device/v1/checkin", "/device/v1/reports" };
	(void)state;

	assert_int_equal(fleet_open(&f, &cfg), 0);
	assert_false(fleet_offers_held(f)); /* a fleet nobody holds serves at once */
	fleet_hold_offers(f, 1);
	assert_int_equal(devapi_start(&api, f, "127.0.0.1:0", 1), 0);
	base = xasprintf("http://127.0.0.1:%d", devapi_port(api));

	for (size_t i = 0; i < sizeof(offer_routes) / sizeof(offer_routes[0]); i++) {
		url = xasprintf("%s%s", base, offer_routes[i]);
		device_request(&a, url, "not-a-credential", "{\"device\":\"d-1\",\"product\":\"fw\"}");
		assert_int_equal(a.status, 503);
		assert_true(a.retry_after);
		assert_non_null(strstr(buf_cstr(&a.body), "not loaded yet"));
		buf_release(&a.body);
		free(url);
	}
	url = xasprintf("%s/device/v1/images/%064d", base, 0);
	device_request(&a, url, "not-a-credential", NULL);
	assert_int_equal(a.status, 503);
	buf_release(&a.body);
	free(url);
	/* what does not depend on offers is served while held */
	url = xasprintf("%s/metrics", base);
	device_request(&a, url, "x", NULL);
	assert_int_equal(a.status, 200);
	buf_release(&a.body);
	free(url);

	/* released: the same check-in reaches the fleet (and its credential check) */
	fleet_hold_offers(f, 0);
	url = xasprintf("%s/device/v1/checkin", base);
	device_request(&a, url, "not-a-credential", "{\"device\":\"d-1\",\"product\":\"fw\",\"hardware\":\"hw\","
						      "\"bootloader\":\"1.0.0\",\"version\":\"1.0.0\",\"security_counter\":0}");
	assert_int_equal(a.status, 401);
	buf_release(&a.body);
	free(url);

	devapi_stop(api);
	fleet_close(f);
	free(base);
	free(db);
	free(dir);
}

/* ---- end to end: check-ins from the first instant after a restart ------------- */

struct prober {
	char *url, *cred, *body;
	int stop;                  /* set by the test thread (atomic) */
	long first;                /* the first answer's status */
	int refused, offered, no_offer, retry_missing, other;
};

/* Check in as fast as the listener allows, from before it listens, until
 * an answer carries the offer (or stop): count each kind of answer. */
static void *probe(void *arg)
{
	struct prober *p = arg;
	struct answer a;

	while (!__atomic_load_n(&p->stop, __ATOMIC_ACQUIRE)) {
		device_request(&a, p->url, p->cred, p->body);
		if (a.status && !p->first)
			p->first = a.status;
		if (a.status == 503) {
			p->refused++;
			p->retry_missing += !a.retry_after;
		} else if (a.status == 200) {
			json_t *j = json_loads(buf_cstr(&a.body), 0, NULL);
			int offer = json_is_object(json_object_get(j, "offer"));
			json_decref(j);
			buf_release(&a.body);
			if (offer) {
				__atomic_add_fetch(&p->offered, 1, __ATOMIC_RELEASE);
				break;
			}
			p->no_offer++;
		} else if (a.status) {
			p->other++;
		}
		buf_release(&a.body);
	}
	return NULL;
}

static void restarted_in_a_hold_answers_the_first_checkin_with_the_offer_or_503(void **state)
{
	struct dh_fleet f = { 0 };
	struct prober p = { 0 };
	pthread_t th;
	json_t *ready = NULL;
	(void)state;

	h_init(&f.d, NULL);
	f.d.device_listen = h_free_listen(); /* the prober knows it before otacd starts */
	dh_fleet_start(&f, "rd", 1, "key", "poll_interval: 1s\n");
	f.release = dh_fw_release(&f.d);
	for (int waited = 0; h_sql_int(&f.d, "SELECT COUNT(*) FROM rollouts WHERE state = 'holding'") != 1; waited += 100) {
		assert_true(waited < 60000);
		h_msleep(100);
	}
	h_kill(&f.d, SIGKILL);

	p.url = xasprintf("http://%s/device/v1/checkin", f.d.device_listen);
	p.cred = f.cred[0];
	p.body = xstrdup("{\"device\":\"rd-0000\",\"product\":\"fw\",\"hardware\":\"mps2-an385\",\"bootloader\":\"1.2.0\","
			 "\"version\":\"1.0.0\",\"security_counter\":0,\"slot\":\"confirmed\"}");
	assert_int_equal(pthread_create(&th, NULL, probe, &p), 0);
	assert_int_equal(h_start(&f.d, (const char *const[]){ "--local-agents", "1", NULL }), 0);
	/* the prober stops at the offer; give it generous time, then stop it */
	for (int waited = 0; !__atomic_load_n(&p.offered, __ATOMIC_ACQUIRE) && waited < 30000; waited += 50)
		h_msleep(50);
	__atomic_store_n(&p.stop, 1, __ATOMIC_RELEASE);
	pthread_join(th, NULL);

	print_message("restart: first answer %ld; %d refused with 503, %d without an offer, %d offered, %d other\n",
		      p.first, p.refused, p.no_offer, p.offered, p.other);
	assert_int_equal(p.offered, 1);
	assert_int_equal(p.no_offer, 0);  /* never "nothing for you" to a device in the step */
	assert_int_equal(p.other, 0);
	assert_int_equal(p.retry_missing, 0);
	assert_true(p.first == 503 || p.first == 200);
	/* and once loaded, /readyz says ready */
	assert_int_equal(h_get(&f.d, "/readyz", &ready), 200);
	json_decref(ready);

	free(p.url);
	free(p.body);
	dh_fleet_stop(&f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(held_fleet_answers_503_with_retry_after_until_released),
		cmocka_unit_test(restarted_in_a_hold_answers_the_first_checkin_with_the_offer_or_503),
	};
	curl_global_init(CURL_GLOBAL_DEFAULT);
	cmocka_set_test_filter(getenv("X_ONLY"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
