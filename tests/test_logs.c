/*
 * test_logs.c - otacd's own telemetry (issue 18): structured log lines
 * (common/log.h) and the /metrics series that watch the queue, the stage
 * kinds and the gates.
 *
 *   - every format is read back: JSON lines with jansson, logfmt with the
 *     small reader below, text as lines; a message holding newlines,
 *     quotes, '=' or bad UTF-8 is still one line that forges no field;
 *   - the real otacd writes its lines in the configured format, each API
 *     request's lines carry its id, which the answer's X-Request-Id echoes
 *     (a sane client id is kept, any other replaced), engine lines carry the
 *     run and job; a URL holding a newline and a forged line stays inside
 *     one line's message;
 *   - /metrics: a job's wait in the queue is observed, durations are by
 *     stage kind, a gate evaluation is counted, device check-ins show on the
 *     API listener.
 *
 * X_ONLY=name runs one test.
 */
#include <curl/curl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <unistd.h>

#include "../common/log.h"
#include "harness.h"

/* ---- a logfmt reader ----------------------------------------------------- */

/* One logfmt line (no '\n') as an object of strings; NULL when it is not
 * well-formed logfmt or a key repeats (a forged field would repeat one). */
static json_t *logfmt_parse(const char *s)
{
	json_t *o = json_object();
	struct buf key = BUF_INIT, val = BUF_INIT;

	while (*s) {
		buf_clear(&key);
		buf_clear(&val);
		while (*s == ' ')
			s++;
		if (!*s)
			break;
		while (*s && *s != '=' && *s != ' ' && *s != '"')
			buf_putc(&key, *s++);
		if (!key.len || *s != '=')
			goto bad;
		s++;
		if (*s == '"') {
			for (s++; *s && *s != '"'; s++) {
				if ((unsigned char)*s < 0x20)
					goto bad; /* raw control characters never appear */
				if (*s != '\\') {
					buf_putc(&val, *s);
					continue;
				}
				s++;
				switch (*s) {
				case '"': buf_putc(&val, '"'); break;
				case '\\': buf_putc(&val, '\\'); break;
				case 'n': buf_putc(&val, '\n'); break;
				case 'r': buf_putc(&val, '\r'); break;
				case 't': buf_putc(&val, '\t'); break;
				case 'u': {
					unsigned cp;
					if (sscanf(s + 1, "%4x", &cp) != 1 || cp >= 0x80)
						goto bad;
					buf_putc(&val, (char)cp);
					s += 4;
					break;
				}
				default: goto bad;
				}
			}
			if (*s != '"')
				goto bad;
			s++;
			if (*s && *s != ' ')
				goto bad;
		} else {
			while (*s && *s != ' ') {
				if (*s == '"' || *s == '=' || (unsigned char)*s < 0x20)
					goto bad;
				buf_putc(&val, *s++);
			}
		}
		if (json_object_get(o, buf_cstr(&key)))
			goto bad;
		json_object_set_new(o, buf_cstr(&key), json_stringn_nocheck(val.ptr ? val.ptr : "", val.len));
	}
	buf_release(&key);
	buf_release(&val);
	return o;
bad:
	buf_release(&key);
	buf_release(&val);
	json_decref(o);
	return NULL;
}

/* ---- formatting, in process ---------------------------------------------- */

struct hostile {
	const char *msg, *want; /* want: what a reader gets back */
};

static const struct hostile hostile[] = {
	{ "plain", "plain" },
	{ "with spaces and a: colon", "with spaces and a: colon" },
	{ "quote \" here", "quote \" here" },
	{ "back\\slash", "back\\slash" },
	{ "trailing backslash\\", "trailing backslash\\" },
	{ "key=value a=b", "key=value a=b" },
	{ "new\nline level=error msg=forged request_id=x", "new\nline level=error msg=forged request_id=x" },
	{ "json\n{\"time\":\"x\",\"level\":\"error\",\"msg\":\"forged\"}", "json\n{\"time\":\"x\",\"level\":\"error\",\"msg\":\"forged\"}" },
	{ "cr\rlf\r\n", "cr\rlf\r\n" },
	{ "tab\there", "tab\there" },
	{ "ctl \x01\x1b[31m\x7f", "ctl \x01\x1b[31m\x7f" },
	{ "utf-8 \xc3\xa9 \xe2\x9c\x93 \xf0\x9f\x94\xa5", "utf-8 \xc3\xa9 \xe2\x9c\x93 \xf0\x9f\x94\xa5" },
	{ "bad utf-8 \xff\xfe \xc3 \xed\xa0\x80 \xc0\xaf end", "bad utf-8 ?? ? ??? ?? end" },
	{ "", "" },
};

static size_t count_char(const char *s, char c)
{
	size_t n = 0;
	for (; *s; s++)
		n += *s == c;
	return n;
}

/* Each message, in each format, is one line that reads back as itself. */
static void every_format_reads_back_whatever_the_message_holds(void **state)
{
	struct ota_log_ctx ctx = { "req-1", 7, 9 };
	(void)state;

	for (size_t i = 0; i < OTA_ARRAY_SIZE(hostile); i++) {
		struct buf line = BUF_INIT;
		json_t *o;
		json_error_t err;

		/* JSON lines */
		ota_log_format_line(&line, OTA_LOG_JSON, 1764730800123, OTA_LOG_WARN, hostile[i].msg, &ctx);
		assert_int_equal(count_char(buf_cstr(&line), '\n'), 1);
		assert_int_equal(line.ptr[line.len - 1], '\n');
		o = json_loads(buf_cstr(&line), 0, &err);
		if (!o)
			fail_msg("not JSON (%s): %s", err.text, buf_cstr(&line));
		assert_string_equal(json_string_value(json_object_get(o, "msg")), hostile[i].want);
		assert_string_equal(json_string_value(json_object_get(o, "level")), "warn");
		assert_string_equal(json_string_value(json_object_get(o, "time")), "2025-12-03T03:00:00.123Z");
		assert_string_equal(json_string_value(json_object_get(o, "request_id")), "req-1");
		assert_int_equal(json_integer_value(json_object_get(o, "run_id")), 7);
		assert_int_equal(json_integer_value(json_object_get(o, "job_id")), 9);
		assert_int_equal(json_object_size(o), 6);
		json_decref(o);

		/* logfmt */
		buf_clear(&line);
		ota_log_format_line(&line, OTA_LOG_LOGFMT, 1764730800123, OTA_LOG_WARN, hostile[i].msg, &ctx);
		assert_int_equal(count_char(buf_cstr(&line), '\n'), 1);
		line.ptr[--line.len] = '\0';
		o = logfmt_parse(buf_cstr(&line));
		if (!o)
			fail_msg("not logfmt: %s", buf_cstr(&line));
		assert_string_equal(json_string_value(json_object_get(o, "msg")), hostile[i].want);
		assert_string_equal(json_string_value(json_object_get(o, "level")), "warn");
		assert_string_equal(json_string_value(json_object_get(o, "time")), "2025-12-03T03:00:00.123Z");
		assert_string_equal(json_string_value(json_object_get(o, "request_id")), "req-1");
		assert_string_equal(json_string_value(json_object_get(o, "run_id")), "7");
		assert_string_equal(json_string_value(json_object_get(o, "job_id")), "9");
		assert_int_equal(json_object_size(o), 6);
		json_decref(o);

		/* text: the historic "otacd: message", still one line */
		buf_clear(&line);
		ota_log_format_line(&line, OTA_LOG_TEXT, 0, OTA_LOG_WARN, hostile[i].msg, &ctx);
		assert_int_equal(count_char(buf_cstr(&line), '\n'), 1);
		assert_int_equal(count_char(buf_cstr(&line), '\r'), 0);
		assert_int_equal(strncmp(buf_cstr(&line), "otacd: ", 7), 0);
		buf_release(&line);
	}
}

/* Without a context the ids are absent, not empty. */
static void lines_without_context_have_no_ids(void **state)
{
	struct buf line = BUF_INIT;
	json_t *o;
	(void)state;

	ota_log_format_line(&line, OTA_LOG_JSON, 0, OTA_LOG_INFO, "hello", NULL);
	o = json_loads(buf_cstr(&line), 0, NULL);
	assert_non_null(o);
	assert_int_equal(json_object_size(o), 3);
	json_decref(o);
	buf_clear(&line);
	ota_log_format_line(&line, OTA_LOG_LOGFMT, 0, OTA_LOG_INFO, "hello", NULL);
	assert_string_equal(buf_cstr(&line), "time=1970-01-01T00:00:00.000Z level=info msg=hello\n");
	buf_clear(&line);
	ota_log_format_line(&line, OTA_LOG_TEXT, 0, OTA_LOG_INFO, "engine: stalled for 3 ms", NULL);
	assert_string_equal(buf_cstr(&line), "otacd: engine: stalled for 3 ms\n");
	buf_release(&line);
}

static void client_request_ids_are_bounded_and_printable(void **state)
{
	char id[OTA_LOG_REQUEST_ID_MAX + 1], other[OTA_LOG_REQUEST_ID_MAX + 1], longest[OTA_LOG_REQUEST_ID_MAX + 2];
	static const char *const bad[] = { "", "has space", "quote\"", "new\nline", "tab\t", "\xc3\xa9", "semi;colon",
					   "back\\slash", "a,b" };
	(void)state;

	assert_true(ota_log_request_id_ok("abc-123"));
	assert_true(ota_log_request_id_ok("3f2a1b/span:7_x.y+z=@"));
	memset(longest, 'a', sizeof(longest));
	longest[OTA_LOG_REQUEST_ID_MAX] = '\0';
	assert_true(ota_log_request_id_ok(longest));
	longest[OTA_LOG_REQUEST_ID_MAX] = 'a';
	longest[OTA_LOG_REQUEST_ID_MAX + 1] = '\0';
	assert_false(ota_log_request_id_ok(longest));
	assert_false(ota_log_request_id_ok(NULL));
	for (size_t i = 0; i < OTA_ARRAY_SIZE(bad); i++)
		if (ota_log_request_id_ok(bad[i]))
			fail_msg("'%s' was accepted as a request id", bad[i]);
	ota_log_request_id_new(id);
	ota_log_request_id_new(other);
	assert_int_equal(strlen(id), 16);
	assert_true(ota_log_request_id_ok(id));
	assert_string_not_equal(id, other);
}

/* ---- the real otacd ---------------------------------------------------------- */

struct answer {
	char request_id[128];
	long status;
};

static size_t header_cb(char *p, size_t size, size_t n, void *arg)
{
	struct answer *a = arg;
	size_t len = size * n;
	static const char name[] = "x-request-id:";
	if (len > sizeof(name) && !strncasecmp(p, name, sizeof(name) - 1)) {
		const char *v = p + sizeof(name) - 1;
		size_t vlen = len - (sizeof(name) - 1);
		while (vlen && (*v == ' '))
			v++, vlen--;
		while (vlen && (v[vlen - 1] == '\r' || v[vlen - 1] == '\n'))
			vlen--;
		snprintf(a->request_id, sizeof(a->request_id), "%.*s", (int)vlen, v);
	}
	return len;
}

static size_t drop_cb(char *p, size_t size, size_t n, void *arg)
{
	(void)p;
	(void)arg;
	return size * n;
}

/* GET path (already URL-encoded) with an X-Request-Id of id (NULL: none);
 * the status and the answer's X-Request-Id. */
static struct answer get_with_id(struct daemon *d, const char *path, const char *id)
{
	struct answer a = { "", 0 };
	CURL *c = curl_easy_init();
	struct curl_slist *h = NULL;
	char *url = xasprintf("%s%s", d->url, path);
	char *auth = xasprintf("Authorization: Bearer %s", d->token);

	h = curl_slist_append(h, auth);
	if (id) {
		char *line = xasprintf("X-Request-Id: %s", id);
		h = curl_slist_append(h, line);
		free(line);
	}
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
	curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, header_cb);
	curl_easy_setopt(c, CURLOPT_HEADERDATA, &a);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, drop_cb);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 30000L);
	curl_easy_setopt(c, CURLOPT_PATH_AS_IS, 1L);
	assert_int_equal(curl_easy_perform(c), CURLE_OK);
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &a.status);
	curl_easy_cleanup(c);
	curl_slist_free_all(h);
	free(url);
	free(auth);
	return a;
}

static void start_with(struct daemon *d, const char *config)
{
	static const char *const no_agents[] = { "--local-agents", "0", NULL };
	h_init(d, NULL);
	d->config = xasprintf("%s/config.yml", d->dir);
	assert_int_equal(ota_write_file_atomic(d->config, config, strlen(config), 0600), 0);
	assert_int_equal(h_start(d, no_agents), 0);
}

/* The daemon's log as lines (its own only: agents here log to files of
 * their own). */
static json_t *log_lines(struct daemon *d)
{
	struct buf text = BUF_INIT;
	char *path = xasprintf("%s/otacd.log", d->dir);
	json_t *lines = json_array();
	const char *p;

	assert_int_equal(ota_read_file(&text, path, 16 << 20), 0);
	for (p = buf_cstr(&text); *p;) {
		const char *nl = strchr(p, '\n');
		size_t n = nl ? (size_t)(nl - p) : strlen(p);
		json_array_append_new(lines, json_stringn_nocheck(p, n));
		p += n + (nl ? 1 : 0);
	}
	buf_release(&text);
	free(path);
	return lines;
}

/* A line read back as an object: JSON or logfmt (as format); fails the
 * test when it is not one, or lacks time, level or msg. */
static json_t *read_line(enum ota_log_format format, const char *line)
{
	json_t *o = format == OTA_LOG_JSON ? json_loads(line, 0, NULL) : logfmt_parse(line);
	if (!o || !json_is_object(o))
		fail_msg("a log line that is not %s: %s", format == OTA_LOG_JSON ? "JSON" : "logfmt", line);
	if (!json_is_string(json_object_get(o, "time")) || !json_is_string(json_object_get(o, "msg")) ||
	    ota_log_level_parse(json_string_value(json_object_get(o, "level"))) < 0)
		fail_msg("a log line without time, level or msg: %s", line);
	return o;
}

static int64_t id_of(json_t *o, const char *key)
{
	json_t *v = json_object_get(o, key);
	return json_is_integer(v) ? json_integer_value(v) : json_is_string(v) ? strtoll(json_string_value(v), NULL, 10) : 0;
}

/* Requests and a run against otacd writing format; then every line of its
 * log is read back and the ids found where they belong. */
static void structured_daemon_log(enum ota_log_format format)
{
	struct daemon d;
	struct answer a;
	char *config = xasprintf("log_format: %s\nlog_level: debug\n", format == OTA_LOG_JSON ? "json" : "logfmt");
	json_t *lines, *line;
	size_t i;
	int64_t run;
	int seen_mine = 0, seen_forgery = 0, seen_claim = 0, seen_done = 0, seen_listening = 0;

	start_with(&d, config);
	/* a sane client id is kept and echoed */
	a = get_with_id(&d, "/healthz", "t-42.client");
	assert_int_equal(a.status, 200);
	assert_string_equal(a.request_id, "t-42.client");
	/* an unsafe one is replaced by one of otacd's */
	a = get_with_id(&d, "/healthz", "evil\"id with=space");
	assert_int_equal(a.status, 200);
	assert_int_equal(strlen(a.request_id), 16);
	assert_true(ota_log_request_id_ok(a.request_id));
	/* none: otacd makes one, a new one per request */
	{
		struct answer b = get_with_id(&d, "/api/v1/runs", NULL), c = get_with_id(&d, "/api/v1/runs", NULL);
		assert_int_equal(b.status, 200);
		assert_int_equal(strlen(b.request_id), 16);
		assert_string_not_equal(b.request_id, c.request_id);
	}
	/* a path that tries to end the line and forge the next one */
	a = get_with_id(&d, "/api/v1/runs/%0A%7B%22level%22:%22error%22,%22msg%22:%22forged%22%7D%0D%0A"
			    "time=x%20level=error%20msg=forged", "t-forge");
	assert_int_equal(a.status, 404);
	assert_string_equal(a.request_id, "t-forge");

	/* a run: engine lines carry its run and job */
	h_agent(&d, "a1", "test");
	run = h_trigger(&d, "name: l\nstages:\n  - { name: s, steps: [ { run: 'true' } ] }\n");
	assert_string_equal(h_wait_run(&d, run, 60000), "passed");
	h_kill(&d, SIGTERM); /* the log is complete */

	lines = log_lines(&d);
	assert_true(json_array_size(lines) > 5);
	json_array_foreach(lines, i, line) {
		json_t *o = read_line(format, json_string_value(line));
		const char *msg = json_string_value(json_object_get(o, "msg"));
		const char *rid = json_string_value(json_object_get(o, "request_id"));
		if (!strcmp(msg, "forged") || !strcmp(json_string_value(json_object_get(o, "time")), "x"))
			fail_msg("a forged line: %s", json_string_value(line));
		if (rid && !strcmp(rid, "t-42.client") && strstr(msg, "api: GET /healthz: 200"))
			seen_mine = 1;
		if (rid && !strcmp(rid, "t-forge")) {
			/* the whole path, newlines and all, is inside the message */
			if (!strstr(msg, "/api/v1/runs/\n{\"level\":\"error\",\"msg\":\"forged\"}\r\ntime=x level=error msg=forged: 404"))
				fail_msg("the hostile path was not kept whole in its line: %s", json_string_value(line));
			seen_forgery = 1;
		}
		if (id_of(o, "run_id") == run && id_of(o, "job_id") > 0 && strstr(msg, "claimed by agent"))
			seen_claim = 1;
		if (id_of(o, "run_id") == run && id_of(o, "job_id") > 0 && strstr(msg, "attempt 1: passed"))
			seen_done = 1;
		if (strstr(msg, "listening on ") && !strcmp(json_string_value(json_object_get(o, "level")), "info"))
			seen_listening = 1;
		json_decref(o);
	}
	assert_true(seen_listening);
	assert_true(seen_mine);
	assert_true(seen_forgery);
	assert_true(seen_claim);
	assert_true(seen_done);
	json_decref(lines);
	free(config);
	h_cleanup(&d);
}

static void json_lines_carry_request_and_run_ids(void **state)
{
	(void)state;
	structured_daemon_log(OTA_LOG_JSON);
}

static void logfmt_lines_carry_request_and_run_ids(void **state)
{
	(void)state;
	structured_daemon_log(OTA_LOG_LOGFMT);
}

/* The default stays the historic text: every line "otacd: …", and a
 * hostile path does not start a line of its own. */
static void text_lines_stay_one_per_message(void **state)
{
	struct daemon d;
	struct answer a;
	json_t *lines, *line;
	size_t i;
	int seen = 0;
	(void)state;

	start_with(&d, "log_level: debug\n");
	a = get_with_id(&d, "/api/v1/runs/%0Aotacd:%20forged%0D", "t-text");
	assert_int_equal(a.status, 404);
	assert_string_equal(a.request_id, "t-text");
	h_kill(&d, SIGTERM);
	lines = log_lines(&d);
	json_array_foreach(lines, i, line) {
		const char *s = json_string_value(line);
		if (strncmp(s, "otacd: ", 7) != 0 || strchr(s, '\r'))
			fail_msg("not an otacd line: %s", s);
		if (!strcmp(s, "otacd: forged"))
			fail_msg("a forged line: %s", s);
		seen |= strstr(s, "api: GET /api/v1/runs/\\notacd: forged\\r: 404") != NULL;
	}
	assert_true(seen);
	json_decref(lines);
	h_cleanup(&d);
}

/* ---- metrics ------------------------------------------------------------------ */

/* The value of the series line that starts with `series ` in /metrics (-1:
 * absent). */
static double metric(struct daemon *d, const char *series)
{
	struct buf body = BUF_INIT;
	const char *p;
	double v = -1;
	size_t n = strlen(series);

	assert_int_equal(h_raw(d, "GET", "/metrics", d->token, NULL, NULL, 0, &body), 200);
	for (p = buf_cstr(&body); p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
		if (!strncmp(p, series, n) && p[n] == ' ') {
			v = strtod(p + n + 1, NULL);
			break;
		}
	buf_release(&body);
	return v;
}

/* A job queued while no agent exists waits at least until one comes: the
 * histogram has it, and durations are by stage kind. */
static void queue_wait_and_durations_by_kind_are_observed(void **state)
{
	struct daemon d;
	int64_t run;
	char **creds;
	json_t *ans = NULL;
	(void)state;

	start_with(&d, "log_level: info\n");
	assert_true(metric(&d, "otacd_job_queue_wait_seconds_count") == 0);
	run = h_trigger(&d, "name: q\nstages:\n  - { name: b, kind: build, steps: [ { run: 'true' } ] }\n"
			    "  - { name: t, needs: [b], steps: [ { run: 'true' } ] }\n");
	/* queued with no agent: its wait is at least this second */
	for (int waited = 0; h_sql_int(&d, "SELECT COUNT(*) FROM jobs WHERE queued_at IS NOT NULL") < 1; waited += 50) {
		if (waited > 30000)
			fail_msg("the build job was never queued");
		h_msleep(50);
	}
	h_msleep(1000);
	h_agent(&d, "a1", "test");
	assert_string_equal(h_wait_run(&d, run, 60000), "passed");
	assert_true(metric(&d, "otacd_job_queue_wait_seconds_count") == 2);
	assert_true(metric(&d, "otacd_job_queue_wait_seconds_bucket{le=\"+Inf\"}") == 2);
	assert_true(metric(&d, "otacd_job_queue_wait_seconds_sum") >= 1.0);
	assert_true(metric(&d, "otacd_job_queue_wait_seconds_bucket{le=\"0.5\"}") <= 1); /* the build's wait is not */
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM job_attempts WHERE queue_wait_ms >= 1000"), 1);
	assert_true(metric(&d, "otacd_job_duration_seconds_count{kind=\"build\"}") == 1);
	assert_true(metric(&d, "otacd_job_duration_seconds_count{kind=\"command\"}") == 1);
	assert_true(metric(&d, "otacd_job_duration_seconds_bucket{kind=\"command\",le=\"+Inf\"}") == 1);

	/* a device's check-in shows on the API listener too */
	assert_true(metric(&d, "otacd_device_checkins_total") == 0);
	creds = h_register_devices(&d, "dev", 1);
	assert_int_equal(h_dev_post(&d, "/device/v1/checkin", creds[0],
				    json_pack("{ss ss ss ss ss si ss}", "device", "dev-0000", "product", "fw", "hardware",
					      "mps2-an385", "bootloader", "1.2.0", "version", "1.0.0", "security_counter", 0,
					      "slot", "confirmed"),
				    &ans),
			 200);
	json_decref(ans);
	assert_true(metric(&d, "otacd_device_checkins_total") == 1);
	assert_true(metric(&d, "otacd_device_reports_total{outcome=\"accepted\"}") == 0);
	free(creds[0]);
	free(creds);
	h_cleanup(&d);
}

/* Gate evaluations are counted as they are made: a rollout step held with a
 * gate and no devices evaluates it (inconclusive: too few devices), and the
 * counter moves with the stored evaluations. */
static void gate_evaluations_are_counted(void **state)
{
	static const char *const args[] = { "--local-agents", "1", "--time-scale", "3600", NULL };
	struct daemon d;
	struct buf out = BUF_INIT;
	char *cfg, *sql;
	int64_t run, stored = 0;
	double first, later = 0;
	(void)state;

	h_init(&d, NULL);
	assert_int_equal(h_sh(&out, "cd %s && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out key.pem",
			      d.dir), 0);
	cfg = xasprintf("keys:\n  test: { spec: %s/key.pem }\n", d.dir);
	d.config = xasprintf("%s/config.yml", d.dir);
	assert_int_equal(ota_write_file_atomic(d.config, cfg, strlen(cfg), 0600), 0);
	assert_int_equal(h_start(&d, args), 0);
	assert_true(metric(&d, "otacd_gate_verdicts_total{verdict=\"inconclusive\"}") == 0);
	assert_true(metric(&d, "otacd_gate_verdicts_total{verdict=\"pass\"}") == 0);
	run = h_trigger(&d, "name: fw\nstages:\n"
			    "  - name: build\n"
			    "    steps: [ { run: \"printf 'fw 1.1.0' > app.bin\" } ]\n"
			    "    artifacts: [ { path: app.bin, name: app.bin, type: application, hardware: mps2-an385 } ]\n"
			    "  - { name: release, kind: release, needs: [build], version: \"1.1.0\", security_counter: 0, key: test }\n"
			    "  - name: canary\n    kind: rollout\n    needs: [release]\n"
			    "    steps: [ {percent: 100, hold: 1000h} ]\n    gates: [boots]\n"
			    "gates:\n  boots: { metric: boot_success_rate, min: 0.5, min_devices: 20 }\n");
	sql = xasprintf("SELECT COUNT(*) FROM gate_evals e JOIN rollouts r ON r.id = e.rollout_id"
			" JOIN releases l ON l.id = r.release_id WHERE l.run_id = %lld", (long long)run);
	for (int waited = 0; (stored = h_sql_int(&d, sql)) < 1; waited += 100) {
		if (waited > 90000)
			fail_msg("no gate evaluation within 90 s");
		h_msleep(100);
	}
	/* read after the rows: the counter is bumped before its row is stored */
	first = metric(&d, "otacd_gate_verdicts_total{verdict=\"inconclusive\"}");
	if (first < (double)stored)
		fail_msg("%g inconclusive verdicts counted, %lld stored", first, (long long)stored);
	assert_true(metric(&d, "otacd_gate_verdicts_total{verdict=\"fail\"}") == 0);
	/* it moves with the next evaluations */
	for (int waited = 0; (later = metric(&d, "otacd_gate_verdicts_total{verdict=\"inconclusive\"}")) <= first;
	     waited += 200) {
		if (waited > 90000)
			fail_msg("the counter stayed at %g", first);
		h_msleep(200);
	}
	assert_true(later > first);
	free(sql);
	free(cfg);
	buf_release(&out);
	h_cleanup(&d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(every_format_reads_back_whatever_the_message_holds),
		cmocka_unit_test(lines_without_context_have_no_ids),
		cmocka_unit_test(client_request_ids_are_bounded_and_printable),
		cmocka_unit_test(json_lines_carry_request_and_run_ids),
		cmocka_unit_test(logfmt_lines_carry_request_and_run_ids),
		cmocka_unit_test(text_lines_stay_one_per_message),
		cmocka_unit_test(queue_wait_and_durations_by_kind_are_observed),
		cmocka_unit_test(gate_evaluations_are_counted),
	};
	cmocka_set_test_filter(getenv("X_ONLY"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
