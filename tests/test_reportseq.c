/*
 * test_reportseq.c - a lost acknowledgement never double-counts a report
 * (issue 14's invariant, issue 19's "nothing acknowledged is ever lost"),
 * on the server, against the real otacd:
 *
 *   - a batch whose answer a proxy drops, sent again, leaves every counter
 *     (downloads, installs, boot_ok, device-hours, crashes, battery) as the
 *     first send left it; the answer names the resent reports `duplicate`;
 *     the same reports without seq are credited again (today's rule);
 *   - the same across a SIGKILL: after the answer (the seq was committed
 *     with its counters), and while the writer holds the batch (nothing
 *     committed: the resend is applied, once);
 *   - a seq too far ahead, not an integer or < 1 is refused, nothing changes;
 *   - device rows written before report seq (chunk format 1) still load.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <sys/wait.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>

#include "../common/httpc.h"
#include "../orchestrator/mcuboot.h"
#include "../orchestrator/fleet/fleet.h"
#include "../orchestrator/fleet/fleet_int.h"
#include "devharness.h"
#include "dropproxy.h"
#include "harness.h"

/* otacd's clock at 36000x: a real second is ten hours of creditable
 * uptime (and crash credit: 0.25 an hour) */
#define CONFIG "time_scale: 36000\n"

/* POST req (consumed) to base+path; the HTTP status, -1 without an answer. */
static long dev_post_url(const char *base, const char *path, json_t *req, json_t **ans)
{
	char *url = xasprintf("%s%s", base, path);
	long status = -1;
	json_t *a = NULL;
	if (httpc_json(&a, &status, "POST", url, NULL, req, 30000) < 0)
		status = -1;
	json_decref(req);
	free(url);
	if (ans)
		*ans = a;
	else
		json_decref(a);
	return status;
}

static long checkin(struct daemon *d, const char *id, const char *cred, const char *version)
{
	char *url = xasprintf("%s/device/v1/checkin", d->device_url);
	json_t *req = json_pack("{ss ss ss ss ss si ss}", "device", id, "product", "fw", "hardware", "mps2-an385",
				"bootloader", "1.2.0", "version", version, "security_counter", 0, "slot", "confirmed");
	long status = 0;
	json_t *a = NULL;
	assert_int_equal(httpc_json(&a, &status, "POST", url, cred, req, 30000), 0);
	json_decref(req);
	json_decref(a);
	free(url);
	return status;
}

/* The batch a device sends after an update: download, install, boot_ok
 * and a heartbeat with uptime, crashes and battery; seq from first
 * (0: no seq, as before). */
static json_t *update_batch(const char *id, const char *cred, int64_t first)
{
	static const char *const ev[] = { "download", "install", "boot_ok", "heartbeat" };
	json_t *list = json_array();
	for (int i = 0; i < 4; i++) {
		json_t *r = json_pack("{ss ss ss ss}", "device", id, "credential", cred, "version", "1.0.0", "event", ev[i]);
		if (i == 3) {
			json_object_set_new(r, "uptime_s", json_integer(8 * 3600));
			json_object_set_new(r, "crashes", json_integer(1));
			json_object_set_new(r, "battery_mah", json_real(40.0));
		}
		if (first)
			json_object_set_new(r, "seq", json_integer(first + i));
		json_array_append_new(list, r);
	}
	return json_pack("{so}", "reports", list);
}

static const char *const counters[] = { "otacd_fleet_downloads", "otacd_fleet_installs", "otacd_fleet_boot_ok",
					"otacd_fleet_reporting", "otacd_fleet_crashed", "otacd_fleet_device_hours_total",
					"otacd_fleet_crashes_total", "otacd_fleet_battery_mah_total" };
#define NCOUNTERS (sizeof(counters) / sizeof(counters[0]))

static void read_counters(struct daemon *d, double *out)
{
	char *text = h_device_metrics(d, NULL);
	for (size_t i = 0; i < NCOUNTERS; i++) {
		char *key = xasprintf("%s{product=\"fw\",version=\"1.0.0\",cohort=\"*\"} ", counters[i]);
		char *p = strstr(text, key);
		out[i] = p ? strtod(p + strlen(key), NULL) : 0;
		free(key);
	}
	free(text);
}

static void assert_counters_equal(const double *a, const double *b)
{
	for (size_t i = 0; i < NCOUNTERS; i++) {
		if (a[i] != b[i])
			fail_msg("%s: %.6f before, %.6f after the resend", counters[i], a[i], b[i]);
	}
}

static void free_creds(char **c)
{
	for (size_t i = 0; c && c[i]; i++)
		free(c[i]);
	free(c);
}

/* ---- tests -------------------------------------------------------------------- */

static void check_duplicates(json_t *ans, int n)
{
	json_t *dup = json_object_get(ans, "duplicate");
	assert_int_equal(json_integer_value(json_object_get(ans, "accepted")), n);
	assert_null(json_object_get(ans, "refused"));
	assert_int_equal(json_array_size(dup), n);
	for (int i = 0; i < n; i++)
		assert_int_equal(json_integer_value(json_array_get(dup, (size_t)i)), i);
}

static void batch_resent_after_a_lost_answer_is_counted_once(void **state)
{
	struct daemon d;
	struct dproxy px = { 0 };
	double before[NCOUNTERS], after[NCOUNTERS];
	char **c, *proxy_url;
	json_t *ans = NULL;

	(void)state;
	h_init(&d, CONFIG);
	assert_int_equal(h_start(&d, NULL), 0);
	c = h_register_devices(&d, "seq", 2);
	assert_int_equal(checkin(&d, "seq-0000", c[0], "1.0.0"), 200);
	assert_int_equal(checkin(&d, "seq-0001", c[1], "1.0.0"), 200);
	h_msleep(1100); /* eleven hours of otacd time: uptime to credit */

	/* the answer to the first send is lost on the way back */
	dproxy_start(&px, d.device_url);
	proxy_url = xasprintf("http://127.0.0.1:%d", px.port);
	assert_int_equal(dev_post_url(proxy_url, "/device/v1/reports", update_batch("seq-0000", c[0], 1), &ans), -1);
	json_decref(ans);
	for (int waited = 0; waited < 5000 && px.connections < 1; waited += 20)
		h_msleep(20);
	assert_int_equal(px.connections, 1);
	read_counters(&d, before);
	/* it was applied: every counter the batch feeds moved */
	for (size_t i = 0; i < NCOUNTERS; i++)
		if (before[i] <= 0)
			fail_msg("%s: %.6f after the first send", counters[i], before[i]);

	/* the device sends the same batch again: the same acknowledgement,
	 * every report `duplicate`, nothing counted twice */
	h_msleep(1100);
	assert_int_equal(dev_post_url(proxy_url, "/device/v1/reports", update_batch("seq-0000", c[0], 1), &ans), 200);
	check_duplicates(ans, 4);
	json_decref(ans);
	read_counters(&d, after);
	assert_counters_equal(before, after);

	/* a next report (seq 5) counts */
	{
		json_t *b = update_batch("seq-0000", c[0], 5);
		assert_int_equal(dev_post_url(d.device_url, "/device/v1/reports", b, &ans), 200);
		assert_int_equal(json_integer_value(json_object_get(ans, "accepted")), 4);
		assert_null(json_object_get(ans, "duplicate"));
		json_decref(ans);
		read_counters(&d, after);
		assert_true(after[5] > before[5]); /* device-hours */
	}

	/* the control: without seq, a resend is credited again (within the
	 * device's bounds): what seq prevents */
	read_counters(&d, before);
	assert_int_equal(dev_post_url(d.device_url, "/device/v1/reports", update_batch("seq-0001", c[1], 0), &ans), 200);
	json_decref(ans);
	read_counters(&d, after);
	h_msleep(1100);
	memcpy(before, after, sizeof(before));
	assert_int_equal(dev_post_url(d.device_url, "/device/v1/reports", update_batch("seq-0001", c[1], 0), &ans), 200);
	assert_null(json_object_get(ans, "duplicate"));
	json_decref(ans);
	read_counters(&d, after);
	assert_true(after[5] > before[5]);

	dproxy_stop(&px);
	free(proxy_url);
	free_creds(c);
	h_cleanup(&d);
}

struct sender {
	const char *url;
	json_t *body;
	long status;
};

static void *send_main(void *arg)
{
	struct sender *s = arg;
	s->status = dev_post_url(s->url, "/device/v1/reports", s->body, NULL);
	return NULL;
}

static void resend_across_sigkill_is_counted_once(void **state)
{
	struct daemon d;
	double before[NCOUNTERS], after[NCOUNTERS];
	char **c, *stall;
	json_t *ans = NULL;

	(void)state;
	h_init(&d, CONFIG);
	stall = xasprintf("%s/stall", d.dir);
	setenv("OTACD_TEST_FLEET_STALL_FILE", stall, 1);
	assert_int_equal(h_start(&d, NULL), 0);
	c = h_register_devices(&d, "kil", 2);
	assert_int_equal(checkin(&d, "kil-0000", c[0], "1.0.0"), 200);
	assert_int_equal(checkin(&d, "kil-0001", c[1], "1.0.0"), 200);
	h_msleep(1100);

	/* 1. killed right after the answer: the seq was committed with the
	 * counters; the resend after the restart is a duplicate */
	assert_int_equal(dev_post_url(d.device_url, "/device/v1/reports", update_batch("kil-0000", c[0], 1), &ans), 200);
	json_decref(ans);
	read_counters(&d, before);
	h_kill(&d, SIGKILL);
	assert_int_equal(h_start(&d, NULL), 0);
	h_msleep(1100);
	assert_int_equal(dev_post_url(d.device_url, "/device/v1/reports", update_batch("kil-0000", c[0], 1), &ans), 200);
	check_duplicates(ans, 4);
	json_decref(ans);
	read_counters(&d, after);
	assert_counters_equal(before, after);

	/* the window's gaps survive too: 20..23 applied, kill, then the
	 * skipped 10..13 are applied once */
	assert_int_equal(dev_post_url(d.device_url, "/device/v1/reports", update_batch("kil-0000", c[0], 20), &ans), 200);
	assert_null(json_object_get(ans, "duplicate"));
	json_decref(ans);
	h_kill(&d, SIGKILL);
	assert_int_equal(h_start(&d, NULL), 0);
	assert_int_equal(dev_post_url(d.device_url, "/device/v1/reports", update_batch("kil-0000", c[0], 10), &ans), 200);
	assert_null(json_object_get(ans, "duplicate"));
	json_decref(ans);
	assert_int_equal(dev_post_url(d.device_url, "/device/v1/reports", update_batch("kil-0000", c[0], 10), &ans), 200);
	check_duplicates(ans, 4);
	json_decref(ans);

	/* 2. killed while the writer holds the batch (validated, not
	 * committed): the device has no answer; after the restart its resend
	 * is applied, exactly once */
	{
		struct sender s = { d.device_url, update_batch("kil-0001", c[1], 1), 0 };
		pthread_t t;
		double mid[NCOUNTERS];
		FILE *fp = fopen(stall, "w");
		assert_non_null(fp);
		fclose(fp);
		read_counters(&d, before);
		assert_int_equal(pthread_create(&t, NULL, send_main, &s), 0);
		h_msleep(500);
		h_kill(&d, SIGKILL);
		pthread_join(t, NULL);
		assert_int_equal(s.status, -1);
		unlink(stall);
		assert_int_equal(h_start(&d, NULL), 0);
		read_counters(&d, mid);
		assert_counters_equal(before, mid);
		assert_int_equal(dev_post_url(d.device_url, "/device/v1/reports", update_batch("kil-0001", c[1], 1), &ans),
				 200);
		assert_int_equal(json_integer_value(json_object_get(ans, "accepted")), 4);
		assert_null(json_object_get(ans, "duplicate"));
		json_decref(ans);
		read_counters(&d, mid);
		for (size_t i = 0; i < 3; i++) /* one more distinct device each */
			assert_true(mid[i] == before[i] + 1);
		assert_true(mid[5] > before[5]);
		/* and once more after another kill: a duplicate */
		h_kill(&d, SIGKILL);
		assert_int_equal(h_start(&d, NULL), 0);
		h_msleep(1100);
		assert_int_equal(dev_post_url(d.device_url, "/device/v1/reports", update_batch("kil-0001", c[1], 1), &ans),
				 200);
		check_duplicates(ans, 4);
		json_decref(ans);
		read_counters(&d, after);
		assert_counters_equal(mid, after);
	}
	unsetenv("OTACD_TEST_FLEET_STALL_FILE");
	free(stall);
	free_creds(c);
	h_cleanup(&d);
}

static void check_refused(json_t *ans, size_t k, int index, const char *msg)
{
	json_t *it = json_array_get(json_object_get(ans, "refused"), k);
	assert_non_null(it);
	assert_int_equal(json_integer_value(json_object_get(it, "index")), index);
	assert_false(json_is_true(json_object_get(it, "retry")));
	if (!strstr(json_string_value(json_object_get(it, "error")), msg))
		fail_msg("refusal '%s' does not say '%s'", json_string_value(json_object_get(it, "error")), msg);
}

static void out_of_range_or_malformed_seq_is_refused(void **state)
{
	struct daemon d;
	double before[NCOUNTERS], after[NCOUNTERS];
	char **c;
	json_t *ans = NULL, *b, *list;

	(void)state;
	h_init(&d, CONFIG);
	assert_int_equal(h_start(&d, NULL), 0);
	c = h_register_devices(&d, "bad", 1);
	assert_int_equal(checkin(&d, "bad-0000", c[0], "1.0.0"), 200);
	/* the first seq sets the base: 1..4 */
	assert_int_equal(dev_post_url(d.device_url, "/device/v1/reports", update_batch("bad-0000", c[0], 1), &ans), 200);
	json_decref(ans);
	read_counters(&d, before);

	/* far ahead of the last applied (4), a string, a fraction, 0 */
	b = update_batch("bad-0000", c[0], 4 + (1 << 20) + 1);
	list = json_object_get(b, "reports");
	json_object_set_new(json_array_get(list, 1), "seq", json_string("7"));
	json_object_set_new(json_array_get(list, 2), "seq", json_real(2.5));
	json_object_set_new(json_array_get(list, 3), "seq", json_integer(0));
	assert_int_equal(dev_post_url(d.device_url, "/device/v1/reports", b, &ans), 400);
	assert_int_equal(json_array_size(json_object_get(ans, "refused")), 4);
	check_refused(ans, 0, 0, "more than 1048576 ahead");
	check_refused(ans, 1, 1, "reports[1].seq: must be an integer");
	check_refused(ans, 2, 2, "reports[2].seq: must be an integer");
	check_refused(ans, 3, 3, "reports[3].seq: must be an integer");
	json_decref(ans);
	read_counters(&d, after);
	assert_counters_equal(before, after);

	/* the bound is relative to the last applied: up to 2^20 ahead is
	 * accepted, and a lower seq is a duplicate after that */
	b = update_batch("bad-0000", c[0], 4 + (1 << 20) - 3);
	assert_int_equal(dev_post_url(d.device_url, "/device/v1/reports", b, &ans), 200);
	assert_int_equal(json_integer_value(json_object_get(ans, "accepted")), 4);
	assert_null(json_object_get(ans, "refused"));
	json_decref(ans);
	b = update_batch("bad-0000", c[0], 4 + (1 << 20) - 3);
	assert_int_equal(dev_post_url(d.device_url, "/device/v1/reports", b, &ans), 200);
	check_duplicates(ans, 4);
	json_decref(ans);
	/* out of order within the window: a skipped seq is applied once when
	 * it comes, then it is a duplicate */
	b = update_batch("bad-0000", c[0], 4 + (1 << 20) - 13);
	assert_int_equal(dev_post_url(d.device_url, "/device/v1/reports", b, &ans), 200);
	assert_int_equal(json_integer_value(json_object_get(ans, "accepted")), 4);
	assert_null(json_object_get(ans, "duplicate"));
	json_decref(ans);
	b = update_batch("bad-0000", c[0], 4 + (1 << 20) - 13);
	assert_int_equal(dev_post_url(d.device_url, "/device/v1/reports", b, &ans), 200);
	check_duplicates(ans, 4);
	json_decref(ans);
	/* more than 63 below the highest: too old to tell, never applied */
	b = update_batch("bad-0000", c[0], 5);
	assert_int_equal(dev_post_url(d.device_url, "/device/v1/reports", b, &ans), 200);
	check_duplicates(ans, 4);
	json_decref(ans);
	/* registered again (a factory reset): its numbering restarts */
	free_creds(c);
	c = h_register_devices(&d, "bad", 1);
	assert_int_equal(dev_post_url(d.device_url, "/device/v1/reports", update_batch("bad-0000", c[0], 1), &ans), 200);
	assert_int_equal(json_integer_value(json_object_get(ans, "accepted")), 4);
	assert_null(json_object_get(ans, "duplicate"));
	json_decref(ans);
	assert_int_equal(dev_post_url(d.device_url, "/device/v1/reports", update_batch("bad-0000", c[0], 1), &ans), 200);
	check_duplicates(ans, 4);
	json_decref(ans);
	free_creds(c);
	h_cleanup(&d);
}

/* ---- rows written before report seq ------------------------------------------- */

static void put_v(struct buf *b, uint64_t v)
{
	do {
		unsigned char x = (unsigned char)(v & 0x7f);
		v >>= 7;
		if (v)
			x |= 0x80;
		buf_putc(b, (char)x);
	} while (v);
}

static void put_s(struct buf *b, const char *s)
{
	put_v(b, strlen(s));
	buf_puts(b, s);
}

/* One device row in chunk format 1 (fleet_rows.c before report seq) or 2. */
static void old_chunk(struct buf *b, int format, uint64_t seq, uint64_t gaps)
{
	buf_clear(b);
	buf_putc(b, (char)format);
	put_v(b, 5);
	put_s(b, "fw");
	put_s(b, "mps2-an385");
	put_s(b, "1.2.0");
	put_s(b, "1.0.0");
	put_s(b, "site=lab");
	put_v(b, 1); /* one device */
	put_v(b, 0);
	put_s(b, "old-0001");
	put_v(b, 0); /* product .. version */
	put_v(b, 1);
	put_v(b, 2);
	put_v(b, 3);
	put_v(b, 6);    /* counter 3, zigzag */
	put_v(b, 2000); /* last_seen 1000 */
	put_v(b, 1);    /* one tag */
	put_v(b, 4);
	put_v(b, 1); /* one version flag */
	put_v(b, 3);
	put_v(b, 5);
	if (format == 2) {
		put_v(b, seq);
		put_v(b, gaps);
	}
}

static struct fleet_row got;
static int ngot;
static char got_id[80];

static void on_row(struct fleet *f, const struct fleet_row *row)
{
	(void)f;
	got = *row;
	snprintf(got_id, sizeof(got_id), "%s", row->id);
	ngot++;
}

static void rows_written_before_seq_still_load(void **state)
{
	char *dir = h_tmpdir(), *db = xasprintf("%s/fleet.db", dir);
	struct fleet_config cfg = { .db_path = db };
	struct fleet *f = NULL;
	struct buf b = BUF_INIT;

	(void)state;
	assert_int_equal(fleet_open(&f, &cfg), 0);
	old_chunk(&b, 1, 0, 0);
	assert_int_equal(fleet_chunk_decode(f, b.ptr, b.len, on_row), 0);
	assert_int_equal(ngot, 1);
	assert_string_equal(got_id, "old-0001");
	assert_string_equal(got.version, "1.0.0");
	assert_string_equal(got.tags[0], "site=lab");
	assert_int_equal(got.counter, 3);
	assert_int_equal(got.last_seen, 1000);
	assert_int_equal(got.nvf, 1);
	assert_int_equal(got.vf[0].flags, 5);
	assert_int_equal(got.seq, 0);
	assert_int_equal(got.seq_gaps, 0);

	ngot = 0;
	old_chunk(&b, 2, 123456789, 6);
	assert_int_equal(fleet_chunk_decode(f, b.ptr, b.len, on_row), 0);
	assert_int_equal(ngot, 1);
	assert_int_equal(got.seq, 123456789);
	assert_int_equal(got.seq_gaps, 6);
	assert_int_equal(got.vf[0].flags, 5);

	/* format 2 without its seq is damaged, format 3 unknown */
	old_chunk(&b, 1, 0, 0);
	((char *)b.ptr)[0] = 2;
	assert_true(fleet_chunk_decode(f, b.ptr, b.len, on_row) < 0);
	((char *)b.ptr)[0] = 3;
	assert_true(fleet_chunk_decode(f, b.ptr, b.len, on_row) < 0);

	fleet_close(f);
	buf_release(&b);
	free(db);
	free(dir);
}

/* The anti-replay window against a model that remembers every seq: over
 * random orders and resends, a seq is applied at most once, and every
 * seq within 63 of the highest is applied when it first comes. */
static void seq_window_applies_each_seq_at_most_once(void **state)
{
	enum { N = 4000 };
	static unsigned char applied[N + 200];
	unsigned rnd = 12345;

	(void)state;
	for (int round = 0; round < 50; round++) {
		uint64_t hi = 0, gaps = 0, top = 0;
		memset(applied, 0, sizeof(applied));
		for (int i = 0; i < N; i++) {
			uint64_t s;
			rnd = rnd * 1103515245u + 12345u;
			/* mostly the next ones, some resends and reorderings
			 * within 80 of the top, some skips ahead */
			switch ((rnd >> 16) % 8) {
			case 0: case 1: case 2: case 3: s = top + 1 + (rnd >> 8) % 3; break;
			case 4: case 5: s = top > 80 ? top - (rnd >> 8) % 80 : 1 + (rnd >> 8) % (top + 1); break;
			case 6: s = top + 1 + (rnd >> 8) % 70; break;
			default: s = top ? top : 1; break;
			}
			if (s >= N + 200)
				break;
			if (fleet_seq_seen(hi, gaps, s)) {
				/* seen: applied before, or too old to tell */
				assert_true(applied[s] || hi - s >= 64);
			} else {
				assert_false(applied[s]);
				applied[s] = 1;
				fleet_seq_mark(&hi, &gaps, s);
			}
			if (s > top)
				top = s;
			assert_int_equal(hi, top);
			assert_true(applied[s] || hi - s >= 64);
		}
	}
}

/* ---- otacd-fleetsim through a proxy that loses report answers ------------- */

/* A threaded proxy that keeps every byte devices sent and drops the
 * answer to the first `drops` report requests (then closes the
 * connection), so otacd-fleetsim resends batches otacd applied. */
struct tproxy {
	int listen_fd, port, upstream_port;
	volatile int stop;
	pthread_mutex_t mu;
	int drops, dropped, open;
	struct buf sent;             /* everything the devices sent */
	pthread_t thread;
};

struct tconn {
	struct tproxy *px;
	int client;
};

static void *tconn_main(void *arg)
{
	struct tconn *c = arg;
	struct tproxy *px = c->px;
	int server = dproxy_connect(px->upstream_port), drop = 0;
	struct buf mine = BUF_INIT;  /* this connection's bytes, kept whole */
	struct pollfd p[2] = { { c->client, POLLIN, 0 }, { server, POLLIN, 0 } };
	char block[16384];

	while (server >= 0 && !px->stop) {
		if (poll(p, 2, 200) < 0)
			break;
		if (p[0].revents) {
			ssize_t n = read(c->client, block, sizeof(block));
			if (n <= 0)
				break;
			buf_put(&mine, block, (size_t)n);
			pthread_mutex_lock(&px->mu);
			if (!drop && px->dropped < px->drops && memmem(block, (size_t)n, "POST /device/v1/reports", 23)) {
				drop = 1;
				px->dropped++;
			}
			pthread_mutex_unlock(&px->mu);
			if (write(server, block, (size_t)n) != n)
				break;
		}
		if (p[1].revents) {
			ssize_t n = read(server, block, sizeof(block));
			if (n <= 0 || drop || write(c->client, block, (size_t)n) != n)
				break;
		}
	}
	if (server >= 0)
		close(server);
	close(c->client);
	pthread_mutex_lock(&px->mu);
	buf_put(&px->sent, mine.ptr ? mine.ptr : "", mine.len);
	buf_putc(&px->sent, '\n');
	px->open--;
	pthread_mutex_unlock(&px->mu);
	buf_release(&mine);
	free(c);
	return NULL;
}

static void *tproxy_main(void *arg)
{
	struct tproxy *px = arg;
	while (!px->stop) {
		struct pollfd p = { px->listen_fd, POLLIN, 0 };
		struct tconn *c;
		pthread_t t;
		int client;
		if (poll(&p, 1, 100) <= 0 || (client = accept(px->listen_fd, NULL, NULL)) < 0)
			continue;
		c = xcalloc(1, sizeof(*c));
		c->px = px;
		c->client = client;
		pthread_mutex_lock(&px->mu);
		px->open++;
		pthread_mutex_unlock(&px->mu);
		if (pthread_create(&t, NULL, tconn_main, c) != 0) {
			close(client);
			free(c);
			pthread_mutex_lock(&px->mu);
			px->open--;
			pthread_mutex_unlock(&px->mu);
			continue;
		}
		pthread_detach(t);
	}
	return NULL;
}

static void tproxy_start(struct tproxy *px, const char *upstream_url)
{
	buf_init(&px->sent, BUF_NOLIMIT);
	px->upstream_port = atoi(strrchr(upstream_url, ':') + 1);
	px->listen_fd = dproxy_listen(64, &px->port);
	assert_int_equal(pthread_create(&px->thread, NULL, tproxy_main, px), 0);
}

/* Stop accepting, wait for the open connections to end. */
static void tproxy_stop(struct tproxy *px)
{
	px->stop = 1;
	pthread_join(px->thread, NULL);
	for (int waited = 0; waited < 5000; waited += 20) {
		int open_now;
		pthread_mutex_lock(&px->mu);
		open_now = px->open;
		pthread_mutex_unlock(&px->mu);
		if (!open_now)
			break;
		h_msleep(20);
	}
	close(px->listen_fd);
}

/* Sum what the devices claimed in heartbeats, each report once (by device,
 * event and time), checking that every copy of a report carries the same
 * seq. */
static void claimed_once(const struct buf *sent, double *hours, int64_t *crashes, int *resent)
{
	json_t *seen = json_object(), *byseq = json_object();
	const char *p = sent->ptr, *end = sent->ptr + sent->len;
	*hours = 0;
	*crashes = 0;
	*resent = 0;
	while (p < end && (p = memmem(p, (size_t)(end - p), "{\"reports\":[", 12))) {
		json_t *body = json_loadb(p, (size_t)(end - p), JSON_DISABLE_EOF_CHECK, NULL), *r;
		size_t i;
		p++;
		if (!body)
			continue; /* cut by the buffer's end */
		json_array_foreach(json_object_get(body, "reports"), i, r) {
			char key[160], key2[120];
			json_t *seq = json_object_get(r, "seq"), *first, *copy;
			assert_true(json_is_integer(seq));
			snprintf(key, sizeof(key), "%s/%s/%" JSON_INTEGER_FORMAT,
				 json_string_value(json_object_get(r, "device")),
				 json_string_value(json_object_get(r, "event")), json_integer_value(json_object_get(r, "at")));
			/* the same report always has the same seq, and a seq is
			 * always the same report */
			if ((first = json_object_get(seen, key)))
				assert_int_equal(json_integer_value(first), json_integer_value(seq));
			snprintf(key2, sizeof(key2), "%s#%" JSON_INTEGER_FORMAT,
				 json_string_value(json_object_get(r, "device")), json_integer_value(seq));
			if ((copy = json_object_get(byseq, key2))) {
				assert_true(json_equal(copy, r));
				(*resent)++;
				continue;
			}
			json_object_set(seen, key, seq);
			json_object_set(byseq, key2, r);
			if (!strcmp(json_string_value(json_object_get(r, "event")), "heartbeat")) {
				*hours += json_number_value(json_object_get(r, "uptime_s")) / 3600.0;
				*crashes += json_integer_value(json_object_get(r, "crashes"));
			}
		}
		json_decref(body);
	}
	json_decref(seen);
	json_decref(byseq);
}

static void fleetsim_resends_with_the_same_seq_and_is_counted_once(void **state)
{
	const char *const args[] = { "--time-scale", "3600", NULL };
	struct daemon d;
	struct tproxy px = { .mu = PTHREAD_MUTEX_INITIALIZER, .drops = 3 };
	struct buf out = BUF_INIT;
	char *bin, *key, *stats, *url, *log;
	double hours, server_hours, server_crashes;
	int64_t crashes;
	int resent, status = 0;
	json_t *st;
	pid_t sim;

	(void)state;
	h_init(&d, NULL);
	assert_int_equal(h_start(&d, args), 0);
	tproxy_start(&px, d.device_url);

	assert_int_equal(h_sh(&out, "cd %s && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out k.pem"
				    " && openssl pkey -in k.pem -pubout -out k.pub",
			      d.dir),
			 0);
	key = xasprintf("%s/k.pub", d.dir);
	bin = h_bin("otacd-fleetsim");
	stats = xasprintf("%s/stats.json", d.dir);
	log = xasprintf("%s/sim.log", d.dir);
	url = xasprintf("http://127.0.0.1:%d", px.port);
	sim = fork();
	if (sim == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
		h_child_dies_with_test();
		dup2(fd, 1);
		dup2(fd, 2);
		execl(bin, bin, "--url", url, "--devices", "60", "--seed", "9", "--key", key, "--fleet-key", d.fleet_key,
		      "--product", "fw", "--start-version", "1.0.0", "--report-every", "1h", "--duration", "8", "--stats",
		      stats, (char *)NULL);
		_exit(127);
	}
	assert_int_equal(waitpid(sim, &status, 0), sim);
	tproxy_stop(&px);
	assert_int_equal(px.dropped, 3);

	buf_release(&out);
	assert_int_equal(ota_read_file(&out, stats, 1 << 20), 0);
	st = json_loadb(out.ptr, out.len, 0, NULL);
	assert_non_null(st);
	assert_int_equal(json_integer_value(json_object_get(st, "reports_rejected")), 0);
	assert_int_equal(json_integer_value(json_object_get(st, "reports_dropped")), 0);
	json_decref(st);

	/* the lost answers made the simulator resend applied batches, with
	 * the same seq; otacd credited each report at most once */
	claimed_once(&px.sent, &hours, &crashes, &resent);
	{
		double v[NCOUNTERS];
		read_counters(&d, v);
		server_hours = v[5];
		server_crashes = v[6];
	}
	print_message("fleetsim: %d reports resent; claimed %.3f h, %" PRId64 " crashes; otacd %.3f h, %.0f crashes\n",
		      resent, hours, crashes, server_hours, server_crashes);
	assert_true(resent > 0);
	assert_true(hours > 0);
	assert_true(server_hours > 0);
	assert_true(server_hours <= hours + 1e-6);
	assert_true(server_crashes <= (double)crashes);

	pthread_mutex_destroy(&px.mu);
	buf_release(&px.sent);
	buf_release(&out);
	free(bin);
	free(key);
	free(stats);
	free(url);
	free(log);
	h_cleanup(&d);
}

/* ---- otacd-device (libotadev) against the real otacd ------------------------- */

#define HW "mps2-an385"

/* Two otacd-device processes whose first report answers are lost on the
 * way back: libotadev resends the same reports with the same seq, and
 * otacd credits each once (what test_device.c's fake server assumes). */
static void otacd_device_resends_after_lost_answers_are_counted_once(void **state)
{
	const char *const args[] = { "--time-scale", "3600", NULL };
	struct daemon d;
	struct tproxy px = { .mu = PTHREAD_MUTEX_INITIALIZER, .drops = 2 };
	struct buf out = BUF_INIT;
	char **c, *bin = h_bin("otacd-device"), *factory, *url;
	pid_t pid[2];
	double hours, v[NCOUNTERS];
	int64_t crashes;
	int resent;

	(void)state;
	h_init(&d, NULL);
	assert_int_equal(h_start(&d, args), 0); /* heartbeats of ~40 otacd minutes */
	c = h_register_devices(&d, "od", 2);
	assert_int_equal(h_sh(&out, "cd %s && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out key.pem"
				    " && openssl pkey -in key.pem -pubout -out key.pub", d.dir), 0);
	factory = dh_factory_image(d.dir, "key", -1);
	tproxy_start(&px, d.device_url);
	url = xasprintf("http://127.0.0.1:%d", px.port);

	for (int i = 0; i < 2; i++) {
		char *dir = xasprintf("%s/od-%04d", d.dir, i), *conf = xasprintf("%s/device.conf", dir);
		char *text = xasprintf("url = %s\ndevice = od-%04d\ncredential = %s\nproduct = fw\nhardware = " HW
				       "\nbootloader = 1.2.0\nprimary = %s/slot0\nsecondary = %s/slot1\nstate = %s/state\n"
				       "key = %s/key.pub\nslot_size = 65536\nsector_size = 4096\nsync = 0\n"
				       "backoff_base_ms = 200\nbackoff_max_ms = 1000\nthrottle_ms = 10\nheartbeat_ms = 700\n",
				       url, i, c[i], dir, dir, dir, d.dir);
		char *log = xasprintf("%s.log", conf);
		assert_int_equal(h_sh(&out, "mkdir -p %s", dir), 0);
		assert_int_equal(ota_write_file_atomic(conf, text, strlen(text), 0600), 0);
		assert_int_equal(h_sh(&out, "%s -c %s flash %s && %s -c %s boot", bin, conf, factory, bin, conf), 0);
		pid[i] = fork();
		if (pid[i] == 0) {
			int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
			h_child_dies_with_test();
			dup2(fd, 1);
			dup2(fd, 2);
			execl(bin, bin, "-c", conf, "run", (char *)NULL);
			_exit(127);
		}
		free(dir);
		free(conf);
		free(text);
		free(log);
	}
	/* heartbeats for a while; both first answers lost, then resent */
	for (int waited = 0; waited < 20000 && px.dropped < 2; waited += 100)
		h_msleep(100);
	h_msleep(6000);
	for (int i = 0; i < 2; i++) {
		int st;
		kill(pid[i], SIGTERM);
		waitpid(pid[i], &st, 0);
	}
	h_msleep(500); /* the last answered batch is committed before its answer */
	tproxy_stop(&px);
	assert_int_equal(px.dropped, 2);

	claimed_once(&px.sent, &hours, &crashes, &resent);
	read_counters(&d, v);
	print_message("otacd-device: %d reports resent; claimed %.4f h; otacd %.4f h, %.0f reporting\n", resent, hours,
		      v[5], v[3]);
	assert_true(resent > 0);
	assert_true(v[3] == 2); /* both devices reported */
	assert_true(v[5] > 0);
	assert_true(v[5] <= hours + 1e-6);

	pthread_mutex_destroy(&px.mu);
	buf_release(&px.sent);
	buf_release(&out);
	free_creds(c);
	free(factory);
	free(url);
	free(bin);
	h_cleanup(&d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(rows_written_before_seq_still_load),
		cmocka_unit_test(seq_window_applies_each_seq_at_most_once),
		cmocka_unit_test(out_of_range_or_malformed_seq_is_refused),
		cmocka_unit_test(batch_resent_after_a_lost_answer_is_counted_once),
		cmocka_unit_test(resend_across_sigkill_is_counted_once),
		cmocka_unit_test(fleetsim_resends_with_the_same_seq_and_is_counted_once),
		cmocka_unit_test(otacd_device_resends_after_lost_answers_are_counted_once),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
