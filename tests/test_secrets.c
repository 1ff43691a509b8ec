/*
 * test_secrets.c - secrets never reach a log, a report or a message
 * (docs/security.md, "Secrets in logs and reports").
 *
 * Unit tests of the masker (common/mask.h): every cut of a stream, every
 * base64 alignment and alphabet, URL encoding, multi-line secrets, the
 * resumed stream, and the log store's offsets with masking.  End to end: a
 * real otacd with real local agents whose steps print a configured secret
 * in each form that leaked before (held partial line, a line over 8 KiB cut
 * inside the secret, a multi-line secret line by line, base64, URL
 * encoding, a JUnit failure message); then a raw HTTP client with a valid
 * job credential that bypasses the agent's own masking, chunk by chunk and
 * across a daemon restart.  Every check reads the log both through the API
 * and from the file on disk.
 *
 * Hostile documents (docs/security.md, "Hostile load and hostile
 * documents"): YAML nested 100,000 deep or with too many nodes, XML with
 * 200,000 attributes on one element or nested too deep, refused with a
 * file:line:column message before libyaml or libxml2 builds anything, as
 * units and through the real daemon's POST /lint and report upload.
 *
 * Outbound requests (docs/security.md, "Outbound requests"): a gate URL in
 * pipeline YAML is refused; providers come from the server config, http and
 * https only, redirects never followed; a run learns "unreachable" or "bad
 * answer", never a status or an address.  A raw TCP listener stands in for
 * the local service an attacker aims at and proves no byte reached it.
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
#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <openssl/evp.h>

#include "../common/httpc.h"
#include "../common/mask.h"
#include "../common/util.h"
#include "../orchestrator/config.h"
#include "../orchestrator/gate.h"
#include "../orchestrator/logstore.h"
#include "../orchestrator/pipeline/pipeline.h"
#include "../orchestrator/reports.h"
#include "harness.h"

/* '/', '+', ' ' and '=' make the URL and base64 forms differ from the value. */
#define SECRET "s3cr3t-Value/42+xyz ok=1"
#define ML_LINE1 "line-one-AAAA-q"
#define ML_LINE2 "line-two-BBBB-r"
#define ML_SECRET "-----BEGIN TEST KEY-----\n" ML_LINE1 "\n" ML_LINE2 "\n-----END TEST KEY-----"

/* ---- helpers ------------------------------------------------------------ */

static char *b64(const char *prefix, const char *value, int urlsafe)
{
	size_t n = strlen(prefix) + strlen(value);
	char *in = xasprintf("%s%s", prefix, value), *out = xmalloc(4 * ((n + 2) / 3) + 1);
	EVP_EncodeBlock((unsigned char *)out, (unsigned char *)in, (int)n);
	if (urlsafe)
		for (char *p = out; *p; p++)
			*p = *p == '+' ? '-' : *p == '/' ? '_' : *p;
	free(in);
	return out;
}

static char *urlenc(const char *v)
{
	struct buf b = BUF_INIT;
	for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
		if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || strchr("-._~", *p))
			buf_putc(&b, (char)*p);
		else
			buf_printf(&b, "%%%02X", *p);
	}
	return buf_detach(&b);
}

/* Fails when any 6 consecutive characters of form's inner part (all but
 * the 3 characters at each end, which neighbouring bytes share) survive in
 * text. */
static void assert_form_absent(const char *text, size_t len, const char *form, const char *what)
{
	size_t n = strlen(form);
	for (size_t i = 3; i + 6 + 3 <= n; i++)
		if (memmem(text, len, form + i, 6))
			fail_msg("%s: '%.6s' (part of %s) is in the log", what, form + i, form);
}

/* Every printed form of both secrets is absent from text. */
static void assert_no_secret(const char *text, size_t len)
{
	static const char *const prefixes[] = { "", "x", "xy" };
	char *u = urlenc(SECRET);

	if (memmem(text, len, SECRET, strlen(SECRET)) || memmem(text, len, ML_LINE1, strlen(ML_LINE1)) ||
	    memmem(text, len, ML_LINE2, strlen(ML_LINE2)))
		fail_msg("a secret is in clear in:\n%.*s", (int)len, text);
	for (size_t i = 0; i < 3; i++)
		for (int url = 0; url < 2; url++) {
			char *f = b64(prefixes[i], SECRET, url);
			assert_form_absent(text, len, f, "base64");
			free(f);
		}
	assert_form_absent(text, len, u, "URL-encoded");
	free(u);
}

static struct mask_set *test_set(void)
{
	const char *const v[] = { SECRET, ML_SECRET };
	return mask_set_new(v, 2);
}

/* ---- unit: the masker ---------------------------------------------------- */

/* A text with the secret in each form, and the expected masked text. */
static char *sample_text(void)
{
	char *b0 = b64("", SECRET, 0), *b1 = b64("x", SECRET, 0), *b2 = b64("xy", SECRET, 1), *u = urlenc(SECRET);
	char *t = xasprintf("plain " SECRET " end\nb64 %s\nb64 %s\nb64url %s\nurl %s\nml " ML_LINE1 "\n" ML_LINE2
			    "\nfine text\n", b0, b1, b2, u);
	free(b0);
	free(b1);
	free(b2);
	free(u);
	return t;
}

static void masker_masks_every_form_keeping_length_and_lines(void **state)
{
	struct mask_set *set = test_set();
	char *t = sample_text();
	struct buf out = BUF_INIT;
	size_t nl_in = 0, nl_out = 0;

	(void)state;
	assert_int_equal(mask_buffer(set, t, strlen(t), &out), 0);
	assert_int_equal(out.len, strlen(t));
	assert_no_secret(out.ptr, out.len);
	for (size_t i = 0; i < out.len; i++) {
		nl_in += t[i] == '\n';
		nl_out += out.ptr[i] == '\n';
	}
	assert_int_equal(nl_in, nl_out);
	assert_non_null(strstr(out.ptr, "plain ****"));
	assert_non_null(strstr(out.ptr, "fine text\n"));
	buf_release(&out);
	free(t);
	mask_set_free(set);
}

static void masker_gives_the_same_answer_at_every_cut(void **state)
{
	struct mask_set *set = test_set();
	char *t = sample_text();
	size_t n = strlen(t);
	struct buf want = BUF_INIT;

	(void)state;
	assert_int_equal(mask_buffer(set, t, n, &want), 0);
	/* two pieces cut at every offset, and three pieces around each */
	for (size_t cut = 0; cut <= n; cut++) {
		size_t cut2 = cut + 7 < n ? cut + 7 : n;
		struct mask_stream s;
		struct buf out = BUF_INIT;
		mask_stream_init(&s, set, 0);
		assert_int_equal(mask_stream_feed(&s, t, cut, &out), 0);
		assert_true(mask_stream_held(&s) < mask_set_longest(set));
		assert_int_equal(mask_stream_feed(&s, t + cut, cut2 - cut, &out), 0);
		assert_int_equal(mask_stream_feed(&s, t + cut2, n - cut2, &out), 0);
		assert_int_equal(mask_stream_flush(&s, &out), 0);
		assert_int_equal(out.len, n);
		if (memcmp(out.ptr, want.ptr, n))
			fail_msg("cut at %zu:\n%s\nwant:\n%s", cut, out.ptr, want.ptr);
		mask_stream_release(&s);
		buf_release(&out);
	}
	/* one byte at a time */
	{
		struct mask_stream s;
		struct buf out = BUF_INIT;
		mask_stream_init(&s, set, 0);
		for (size_t i = 0; i < n; i++)
			assert_int_equal(mask_stream_feed(&s, t + i, 1, &out), 0);
		mask_stream_flush(&s, &out);
		assert_memory_equal(out.ptr, want.ptr, n);
		mask_stream_release(&s);
		buf_release(&out);
	}
	buf_release(&want);
	free(t);
	mask_set_free(set);
}

static void masker_holds_a_possible_secret_start_until_it_is_decided(void **state)
{
	struct mask_set *set = test_set();
	struct mask_stream s;
	struct buf out = BUF_INIT;

	(void)state;
	mask_stream_init(&s, set, 0);
	mask_stream_feed(&s, "abc s3cr3t-Va", 13, &out);
	assert_string_equal(buf_cstr(&out), "abc ");  /* the rest may be the secret */
	assert_int_equal(mask_stream_held(&s), 9);
	mask_stream_feed(&s, "lue/42+xyz ok=1 done", 20, &out);
	assert_string_equal(buf_cstr(&out), "abc ************************ done");
	assert_int_equal(mask_stream_held(&s), 0);
	/* not a secret after all: released unchanged on the next byte or flush */
	buf_clear(&out);
	mask_stream_feed(&s, "s3cr3", 5, &out);
	assert_string_equal(buf_cstr(&out), "");
	mask_stream_feed(&s, "!", 1, &out);
	assert_string_equal(buf_cstr(&out), "s3cr3!");
	mask_stream_feed(&s, "s3c", 3, &out);
	mask_stream_flush(&s, &out);
	assert_string_equal(buf_cstr(&out), "s3cr3!s3c");
	mask_stream_release(&s);
	buf_release(&out);
	mask_set_free(set);
}

static void masker_short_lines_of_a_multiline_secret_are_not_patterns(void **state)
{
	const char *const v[] = { "ab\nlong-enough-line\nxyz" };
	struct mask_set *set = mask_set_new(v, 1);
	char s[] = "ab xyz long-enough-line";

	(void)state;
	mask_string(set, s);
	assert_string_equal(s, "ab xyz ****************");
	mask_set_free(set);
}

static void resumed_stream_masks_a_secret_end_at_its_start(void **state)
{
	struct mask_set *set = test_set();
	struct mask_stream s;
	struct buf out = BUF_INIT;

	(void)state;
	mask_stream_init(&s, set, 1);
	mask_stream_feed(&s, "lue/42+xyz ok=1 and then more text that is long enough", 54, &out);
	mask_stream_flush(&s, &out);
	assert_string_equal(buf_cstr(&out), "*************** and then more text that is long enough");
	mask_stream_release(&s);
	buf_release(&out);
	mask_set_free(set);
}

static void log_store_masks_across_chunks_and_counts_held_bytes_as_received(void **state)
{
	char *dir = h_tmpdir(), *t = sample_text();
	size_t n = strlen(t);
	struct buf want = BUF_INIT, got = BUF_INIT;
	struct mask_set *set = test_set();
	int64_t size = 0;

	(void)state;
	assert_int_equal(mask_buffer(set, t, n, &want), 0);
	assert_int_equal(logstore_init(dir, 1 << 20), 0);
	logstore_set_mask(set);
	for (int attempt = 1; attempt <= 40; attempt++) {
		size_t step = (size_t)attempt, off = 0;
		while (off < n) {
			size_t len = off + step < n ? step : n - off;
			assert_int_equal(logstore_append(7, attempt, (int64_t)off, t + off, len, &size), 0);
			assert_int_equal(size, (int64_t)(off + len)); /* held bytes count as received */
			/* a resend of the same chunk changes nothing */
			assert_int_equal(logstore_append(7, attempt, (int64_t)off, t + off, len, &size), 0);
			assert_int_equal(size, (int64_t)(off + len));
			off += len;
		}
		/* past the end: refused with the received size */
		assert_int_equal(logstore_append(7, attempt, (int64_t)n + 5, "x", 1, &size), OTA_ECONFLICT);
		assert_int_equal(size, (int64_t)n);
		assert_true(logstore_size(7, attempt) <= (int64_t)n);
		assert_int_equal(logstore_end(7, attempt), 0);
		assert_int_equal(logstore_size(7, attempt), (int64_t)n);
		buf_clear(&got);
		assert_int_equal(logstore_read(7, attempt, 0, n + 10, &got), 0);
		if (got.len != n || memcmp(got.ptr, want.ptr, n))
			fail_msg("chunks of %d:\n%s", attempt, got.ptr);
	}
	logstore_set_mask(NULL);
	buf_release(&want);
	buf_release(&got);
	free(t);
	{
		struct buf o = BUF_INIT;
		h_sh(&o, "rm -rf '%s'", dir);
		buf_release(&o);
	}
	free(dir);
}

/* ---- end to end ---------------------------------------------------------------- */

#define VIEWER_TOKEN "viewer-token-0123456789abcdef"

static const char *const config =
	"lease: 3s\nheartbeat: 500ms\n"
	"tokens:\n  - { name: viewer, role: viewer, token: " VIEWER_TOKEN " }\n"
	"secrets:\n"
	"  DEPLOY_KEY: '" SECRET "'\n"
	"  SIGN_PEM: |-\n"
	"    -----BEGIN TEST KEY-----\n"
	"    " ML_LINE1 "\n"
	"    " ML_LINE2 "\n"
	"    -----END TEST KEY-----\n";

static int setup_agents(void **state)
{
	static const char *const args[] = { "--local-agents", "1", NULL };
	struct daemon *d = xcalloc(1, sizeof(*d));
	h_init(d, config);
	h_start(d, args);
	*state = d;
	return 0;
}

static int setup_raw(void **state)
{
	static const char *const args[] = { "--local-agents", "0", NULL };
	struct daemon *d = xcalloc(1, sizeof(*d));
	h_init(d, config);
	h_start(d, args);
	*state = d;
	return 0;
}

static int teardown(void **state)
{
	struct daemon *d = *state;
	h_cleanup(d);
	free(d);
	return 0;
}

/* The job's log through the API and from disk; both checked, the API's returned. */
static void job_log(struct daemon *d, int64_t job, int attempt, struct buf *api)
{
	struct buf disk = BUF_INIT;
	char *path = xasprintf("/api/v1/jobs/%lld/log?attempt=%d", (long long)job, attempt);
	char *file = xasprintf("%s/state/logs/%lld/%d.log", d->dir, (long long)job, attempt);

	assert_int_equal(h_raw(d, "GET", path, d->token, NULL, NULL, 0, api), 200);
	assert_int_equal(ota_read_file(&disk, file, 1 << 24), 0);
	assert_int_equal(disk.len, api->len);
	assert_memory_equal(disk.ptr, api->ptr, disk.len);
	assert_no_secret(api->ptr, api->len);
	buf_release(&disk);
	free(path);
	free(file);
}

static void agent_step_printing_the_secret_in_every_form_leaves_no_trace(void **state)
{
	struct daemon *d = *state;
	int64_t run = h_trigger(d,
		"name: leak\nstages:\n"
		"  - name: s\n"
		"    secrets: [DEPLOY_KEY, SIGN_PEM]\n"
		"    steps:\n"
		"      - run: |\n"
		"          printf 'held: %.8s' \"$DEPLOY_KEY\"; sleep 1.5; printf '%s\\n' \"${DEPLOY_KEY#????????}\"\n"
		"          printf 'long: %s%s tail\\n' \"$(head -c 8180 /dev/zero | tr '\\0' a)\" \"$DEPLOY_KEY\"\n"
		"          printf '%s\\n' \"$SIGN_PEM\" | while IFS= read -r l; do echo \"pem: $l\"; sleep 0.2; done\n"
		"          for p in '' x xy; do printf 'b64: '; printf '%s%s' \"$p\" \"$DEPLOY_KEY\" | base64 -w0; echo; done\n"
		"          for p in '' x xy; do printf 'b64url: '; printf '%s%s' \"$p\" \"$DEPLOY_KEY\" | base64 -w0 | tr '+/' '-_'; echo; done\n"
		"          printf 'url: '; jq -rn --arg v \"$DEPLOY_KEY\" '$v|@uri'\n"
		"          echo 'test -n \"$DEPLOY_KEY\"' > check.sh; sh check.sh && echo present\n");
	json_t *r;
	int64_t job;
	struct buf log = BUF_INIT;

	assert_string_equal(h_wait_run(d, run, 60000), "passed");
	r = h_run(d, run);
	job = json_integer_value(json_object_get(h_job(r, "s"), "id"));
	job_log(d, job, 1, &log);
	/* the step really printed each form (the test cannot pass vacuously) */
	assert_non_null(strstr(log.ptr, "held: ****************"));
	assert_non_null(strstr(log.ptr, "************ tail\n"));
	assert_non_null(strstr(log.ptr, "pem: ***************\n"));
	assert_non_null(strstr(log.ptr, "b64url: "));
	assert_non_null(strstr(log.ptr, "url: "));
	assert_non_null(strstr(log.ptr, "present\n"));
	buf_release(&log);
	json_decref(r);
}

static void a_junit_failure_message_and_the_job_message_are_masked(void **state)
{
	struct daemon *d = *state;
	int64_t run = h_trigger(d,
		"name: rep\nstages:\n"
		"  - name: t\n"
		"    kind: test\n"
		"    secrets: [DEPLOY_KEY]\n"
		"    reports: { junit: report.xml }\n"
		"    steps:\n"
		"      - run: |\n"
		"          k=$(printf '%s' \"$DEPLOY_KEY\" | sed 's/&/\\&amp;/g')\n"
		"          b=$(printf '%s' \"$DEPLOY_KEY\" | base64 -w0)\n"
		"          printf '<testsuite name=\"s\"><testcase classname=\"c\" name=\"login %s\">"
		"<failure message=\"expected %s\">token %s</failure><system-out>%s</system-out></testcase></testsuite>' "
		"\"$k\" \"$k\" \"$b\" \"$k\" > report.xml\n");
	json_t *r, *reports = NULL;
	char *text;
	int64_t job;

	assert_string_equal(h_wait_run(d, run, 60000), "failed");
	r = h_run(d, run);
	job = json_integer_value(json_object_get(h_job(r, "t"), "id"));
	{
		char *path = xasprintf("/api/v1/runs/%lld/reports", (long long)run);
		assert_int_equal(h_get(d, path, &reports), 200);
		free(path);
	}
	text = json_dumps(reports, 0);
	assert_non_null(strstr(text, "expected ****"));     /* the report is there, masked */
	assert_no_secret(text, strlen(text));
	free(text);
	text = json_dumps(r, 0);                           /* the job's message names the failed test */
	assert_no_secret(text, strlen(text));
	free(text);
	{
		char *sql = xasprintf("SELECT COUNT(*) FROM job_attempts WHERE job_id = %lld AND message LIKE '%%s3cr3t%%'",
				      (long long)job);
		assert_int_equal(h_sql_int(d, sql), 0);
		free(sql);
	}
	json_decref(reports);
	json_decref(r);
}

/* The credential every job route takes: the attempt's job token. */
static const char *job_token(struct daemon *d, json_t *job)
{
	(void)d;
	return json_string_value(json_object_get(job, "job_token"));
}

static long put_log(struct daemon *d, json_t *job, size_t off, const char *data, size_t len, struct buf *ans)
{
	char *path = xasprintf("/api/v1/agent/jobs/%lld/log?attempt=%lld&offset=%zu",
			       (long long)json_integer_value(json_object_get(job, "job_id")),
			       (long long)json_integer_value(json_object_get(job, "attempt")), off);
	long st = h_raw(d, "PUT", path, job_token(d, job), "application/octet-stream", data, len, ans);
	free(path);
	return st;
}

static void finish(struct daemon *d, json_t *job, int64_t agent, const char *message)
{
	int64_t id = json_integer_value(json_object_get(job, "job_id"));
	char *path = xasprintf("/api/v1/agent/jobs/%lld/finish", (long long)id);
	json_t *body = json_pack("{sI sI si ss}", "agent_id", (json_int_t)agent, "attempt",
				 json_integer_value(json_object_get(job, "attempt")), "exit_code", 0, "message", message);
	char *text;
	struct buf ans = BUF_INIT;

	text = json_dumps(body, JSON_COMPACT);
	assert_int_equal(h_raw(d, "POST", path, job_token(d, job), "application/json", text, strlen(text), &ans), 200);
	buf_release(&ans);
	free(text);
	json_decref(body);
	free(path);
}

static void raw_client_bypassing_the_agent_cannot_store_a_secret(void **state)
{
	struct daemon *d = *state;
	int64_t agent, run = h_trigger(d, "name: raw\nstages:\n  - { name: s, secrets: [DEPLOY_KEY], steps: [ { run: 'true' } ] }\n");
	json_t *job = h_take_job(d, "raw", "test", &agent), *r;
	int64_t id = json_integer_value(json_object_get(job, "job_id"));
	char *t = sample_text(), *tail = xasprintf("last -----BEGIN TEST KE");
	size_t n = strlen(t), off = 0, step = 1;
	struct buf ans = BUF_INIT, log = BUF_INIT;

	/* growing chunks, so the cuts fall everywhere, each sent twice (a resend) */
	while (off < n) {
		size_t len = off + step < n ? step : n - off;
		assert_int_equal(put_log(d, job, off, t + off, len, &ans), 200);
		assert_int_equal(put_log(d, job, off, t + off, len, &ans), 200);
		off += len;
		step = step % 11 + 1;
		{
			/* what is stored so far never holds a secret either */
			struct buf part = BUF_INIT;
			job_log(d, id, 1, &part);
			buf_release(&part);
		}
	}
	/* a chunk past the end: 416 with the received size, held bytes included */
	assert_int_equal(put_log(d, job, n, tail, strlen(tail), &ans), 200);
	off = n + strlen(tail);
	assert_int_equal(put_log(d, job, off + 3, "x", 1, &ans), 416);
	{
		char *want = xasprintf("\"size\":%zu", off);
		assert_non_null(strstr(ans.ptr, want));
		free(want);
	}
	/* the log ends inside a possible secret: finish writes the held bytes */
	finish(d, job, agent, "done; key was " SECRET);
	assert_string_equal(h_wait_run(d, run, 20000), "passed");
	job_log(d, id, 1, &log);
	assert_int_equal(log.len, off); /* masked in place: the agent's offsets hold */
	assert_non_null(strstr(log.ptr, "last -----BEGIN TEST KE")); /* held, not a secret: kept */
	r = h_run(d, run);
	{
		char *text = json_dumps(r, 0);
		assert_non_null(strstr(text, "done; key was ****"));
		assert_no_secret(text, strlen(text));
		free(text);
	}
	json_decref(r);
	buf_release(&ans);
	buf_release(&log);
	free(t);
	free(tail);
	json_decref(job);
}

static void raw_report_upload_is_masked(void **state)
{
	struct daemon *d = *state;
	int64_t agent;
	json_t *job, *reports = NULL;
	char *path, *text, *b = b64("x", SECRET, 0);
	char *xml = xasprintf("<testsuite name=\"s\"><testcase classname=\"c\" name=\"n\"><failure message=\"%s\">%s"
			      "</failure></testcase></testsuite>", SECRET, b);
	struct buf ans = BUF_INIT;
	int64_t run = h_trigger(d, "name: raw\nstages:\n  - { name: s, steps: [ { run: 'true' } ] }\n");

	job = h_take_job(d, "raw", "test", &agent);
	path = xasprintf("/api/v1/agent/jobs/%lld/reports?attempt=1&format=junit&name=r.xml",
			 (long long)json_integer_value(json_object_get(job, "job_id")));
	assert_int_equal(h_raw(d, "PUT", path, job_token(d, job), "application/xml", xml, strlen(xml), &ans), 201);
	free(path);
	path = xasprintf("/api/v1/runs/%lld/reports", (long long)run);
	assert_int_equal(h_get(d, path, &reports), 200);
	text = json_dumps(reports, 0);
	assert_non_null(strstr(text, "\"failed\""));
	assert_no_secret(text, strlen(text));
	free(text);
	free(path);
	json_decref(reports);
	json_decref(job);
	buf_release(&ans);
	free(xml);
	free(b);
}

static void a_secret_cut_by_a_daemon_restart_is_still_masked(void **state)
{
	struct daemon *d = *state;
	int64_t agent;
	json_t *job;
	struct buf ans = BUF_INIT, log = BUF_INIT;
	const char *first = "before the restart: s3cr3t-Val";
	int64_t id;

	h_trigger(d, "name: raw\nstages:\n  - { name: s, steps: [ { run: 'true' } ] }\n");
	job = h_take_job(d, "raw", "test", &agent);
	id = json_integer_value(json_object_get(job, "job_id"));
	assert_int_equal(put_log(d, job, 0, first, strlen(first), &ans), 200);
	h_kill(d, SIGKILL);
	assert_int_equal(h_start(d, (const char *const[]){ "--local-agents", "0", NULL }), 0);
	/* the held bytes died with the daemon: it asks for the file's size... */
	assert_int_equal(put_log(d, job, strlen(first), "ue/42+xyz ok=1 and the rest of the line\n", 40, &ans), 416);
	{
		json_t *a = json_loads(ans.ptr, 0, NULL);
		size_t size = (size_t)json_integer_value(json_object_get(a, "size"));
		json_decref(a);
		assert_true(size < strlen(first));
		/* ...and the agent goes on from there, mid-secret, having dropped the rest */
		assert_int_equal(put_log(d, job, size, "ue/42+xyz ok=1 and the rest of the line\n", 40, &ans), 200);
	}
	finish(d, job, agent, "ok");
	job_log(d, id, 1, &log);
	assert_non_null(strstr(log.ptr, "before the restart: "));
	assert_non_null(strstr(log.ptr, " and the rest of the line\n"));
	assert_null(strstr(log.ptr, "ue/42+xyz"));
	buf_release(&ans);
	buf_release(&log);
	json_decref(job);
}


/* ---- hostile documents ------------------------------------------------------- */

static char *deep_flow_yaml(int levels)
{
	struct buf b = BUF_INIT;
	buf_puts(&b, "name: p\nstages: ");
	for (int i = 0; i < levels; i++)
		buf_putc(&b, '[');
	for (int i = 0; i < levels; i++)
		buf_putc(&b, ']');
	buf_putc(&b, '\n');
	return buf_detach(&b);
}

static char *deep_block_yaml(int levels)
{
	struct buf b = BUF_INIT;
	buf_puts(&b, "name: p\nstages:\n");
	for (int i = 0; i < levels; i++) {
		for (int k = 0; k < i; k++)
			buf_puts(&b, "  ");
		buf_puts(&b, "- \n");
	}
	return buf_detach(&b);
}

static char *many_nodes_yaml(int n)
{
	struct buf b = BUF_INIT;
	buf_puts(&b, "name: p\nstages:\n  - { name: a, steps: [x], env: { A: [");
	for (int i = 0; i < n; i++)
		buf_puts(&b, "1,");
	buf_puts(&b, "1] } }\n");
	return buf_detach(&b);
}

static char *many_attrs_xml(int n)
{
	struct buf b = BUF_INIT;
	buf_puts(&b, "<?xml version=\"1.0\"?>\n<testsuite name=\"s\">\n  <testcase name=\"c\"");
	for (int i = 0; i < n; i++)
		buf_printf(&b, " a%d=\"x\"", i);
	buf_puts(&b, "/>\n</testsuite>\n");
	return buf_detach(&b);
}

static char *deep_xml(int levels)
{
	struct buf b = BUF_INIT;
	buf_puts(&b, "<testsuites>\n");
	for (int i = 0; i < levels; i++)
		buf_puts(&b, "<testsuite name=\"a>b\">");
	for (int i = 0; i < levels; i++)
		buf_puts(&b, "</testsuite>");
	buf_puts(&b, "\n</testsuites>\n");
	return buf_detach(&b);
}

static void pipeline_parse_refuses(const char *yaml, const char *want)
{
	struct pipeline *p = NULL;
	struct pl_diags d;
	pl_diags_init(&d, "p.yml");
	assert_int_equal(pipeline_parse(&p, "p.yml", yaml, strlen(yaml), &d), OTA_EINVAL);
	assert_null(p);
	if (!strstr(ota_error_last(), want))
		fail_msg("'%s' does not say '%s'", ota_error_last(), want);
	pl_diags_release(&d);
}

static void yaml_nested_too_deep_or_too_big_is_refused_with_its_position(void **state)
{
	char *flow = deep_flow_yaml(100000), *block = deep_block_yaml(200), *big = many_nodes_yaml(200001);
	char *ok = deep_flow_yaml(20), *dir = h_tmpdir(), *cfg = xasprintf("%s/otacd.yml", dir);
	struct otacd_config c;

	(void)state;
	pipeline_parse_refuses(flow, "p.yml:2:72: the document is nested more than 64 levels deep");
	pipeline_parse_refuses(block, "p.yml:66:127: ");
	pipeline_parse_refuses(block, "nested more than 64 levels deep");
	pipeline_parse_refuses(big, "more than 200000 nodes");
	/* a merely odd document gets the usual checks, not this one */
	{
		struct pipeline *p = NULL;
		struct pl_diags d;
		pl_diags_init(&d, "p.yml");
		assert_int_equal(pipeline_parse(&p, "p.yml", ok, strlen(ok), &d), OTA_EINVAL);
		assert_null(strstr(ota_error_last(), "levels deep"));
		pl_diags_release(&d);
	}
	/* the server config too */
	{
		char *deep_cfg = xasprintf("secrets: %s", flow + strlen("name: p\nstages: "));
		assert_int_equal(ota_write_file_atomic(cfg, deep_cfg, strlen(deep_cfg), 0600), 0);
		config_defaults(&c);
		assert_int_equal(config_load(&c, cfg), OTA_EINVAL);
		if (!strstr(ota_error_last(), "otacd.yml:1:73: the file is nested more than 64 levels deep"))
			fail_msg("%s", ota_error_last());
		config_release(&c);
		free(deep_cfg);
	}
	free(flow);
	free(block);
	free(big);
	free(ok);
	free(cfg);
	free(dir);
}

static void xml_with_too_many_attributes_or_levels_is_refused_before_parsing(void **state)
{
	char *attrs = many_attrs_xml(200000), *deep = deep_xml(300), *fine = many_attrs_xml(200);
	json_t *out = NULL;

	(void)state;
	assert_int_equal(report_parse(&out, "junit", attrs, strlen(attrs), "r.xml"), OTA_EINVAL);
	assert_string_equal(ota_error_last(), "r.xml:3:3: an element with more than 256 attributes (refused before parsing)");
	assert_int_equal(report_parse(&out, "cppcheck", deep, strlen(deep), "c.xml"), OTA_EINVAL);
	assert_non_null(strstr(ota_error_last(), "c.xml:2:"));
	assert_non_null(strstr(ota_error_last(), "nested more than 256 levels deep"));
	/* under the bounds: parsed as usual ('>' inside a quoted value is no tag end) */
	assert_int_equal(report_parse(&out, "junit", fine, strlen(fine), "r.xml"), 0);
	assert_int_equal(json_integer_value(json_object_get(out, "tests")), 1);
	json_decref(out);
	out = NULL;
	free(deep);
	deep = deep_xml(100);
	assert_int_equal(report_parse(&out, "junit", deep, strlen(deep), "r.xml"), 0);
	json_decref(out);
	free(attrs);
	free(deep);
	free(fine);
}

static void hostile_documents_are_refused_by_the_daemon(void **state)
{
	struct daemon *d = *state;
	char *flow = deep_flow_yaml(100000), *attrs = many_attrs_xml(200000), *path;
	struct buf body = BUF_INIT;
	int64_t agent;
	json_t *job;

	/* a viewer's lint: refused with the position, and the daemon still answers */
	assert_int_equal(h_raw(d, "POST", "/api/v1/lint?file=p.yml", VIEWER_TOKEN, "application/yaml", flow, strlen(flow),
			     &body), 200);
	assert_non_null(strstr(buf_cstr(&body), "\"ok\":false"));
	assert_non_null(strstr(buf_cstr(&body), "p.yml:2:72: the document is nested more than 64 levels deep"));
	/* a trigger of the same is refused and stores nothing */
	{
		json_t *req = json_pack("{ss}", "pipeline", flow), *ans = NULL;
		assert_int_equal(h_post(d, "/api/v1/runs", req, &ans), 422);
		json_decref(req);
		json_decref(ans);
		assert_int_equal(h_sql_int(d, "SELECT COUNT(*) FROM runs"), 0);
	}
	/* a report with 200,000 attributes on one element */
	h_trigger(d, "name: raw\nstages:\n  - { name: s, steps: [ { run: 'true' } ] }\n");
	job = h_take_job(d, "raw", "test", &agent);
	path = xasprintf("/api/v1/agent/jobs/%lld/reports?attempt=1&format=junit&name=r.xml",
			 (long long)json_integer_value(json_object_get(job, "job_id")));
	assert_int_equal(h_raw(d, "PUT", path, job_token(d, job), "application/xml", attrs, strlen(attrs), &body), 400);
	assert_non_null(strstr(buf_cstr(&body), "r.xml:3:3: an element with more than 256 attributes"));
	assert_int_equal(h_sql_int(d, "SELECT COUNT(*) FROM reports"), 0);
	assert_int_equal(h_raw(d, "GET", "/api/v1/health", NULL, NULL, NULL, 0, &body), 200);
	free(path);
	json_decref(job);
	buf_release(&body);
	free(flow);
	free(attrs);
}

/* ---- outbound requests ---------------------------------------------------------- */

/* A TCP listener on 127.0.0.1 that nobody should ever connect to. */
static int victim_listen(int *port)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t len = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	assert_true(fd >= 0);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(fd, 8), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
	*port = ntohs(a.sin_port);
	return fd;
}

static void assert_victim_untouched(int fd)
{
	int c = accept(fd, NULL, NULL);
	if (c >= 0) {
		close(c);
		fail_msg("something connected to the victim port");
	}
	assert_true(errno == EAGAIN || errno == EWOULDBLOCK);
	close(fd);
}

static enum MHD_Result redirect_handler(void *cls, struct MHD_Connection *c, const char *url, const char *method,
					const char *version, const char *data, size_t *size, void **ptr)
{
	const char *to = cls;
	struct MHD_Response *r = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
	enum MHD_Result ret;
	(void)url, (void)method, (void)version, (void)data, (void)size, (void)ptr;
	MHD_add_response_header(r, "Location", to);
	ret = MHD_queue_response(c, MHD_HTTP_FOUND, r);
	MHD_destroy_response(r);
	return ret;
}

static void gopher_and_redirects_never_reach_another_service(void **state)
{
	int vport, fd = victim_listen(&vport);
	char *gopher = xasprintf("gopher://127.0.0.1:%d/_HELO%%20evil%%0D%%0A", vport);
	char *elsewhere = xasprintf("http://127.0.0.2:%d/steal", vport);
	char *dir = h_tmpdir(), *cfgpath = xasprintf("%s/otacd.yml", dir), *cfg, *url;
	struct MHD_Daemon *mhd;
	struct gate_spec g;
	char err[256];
	json_t *providers, *spec;
	double v;

	(void)state;
	/* libcurl refuses the scheme before any connection */
	assert_true(gate_query_http(gopher, NULL, &v) < 0);
	assert_non_null(strstr(ota_error_last(), "gopher"));
	/* the server config refuses such a provider too */
	cfg = xasprintf("providers:\n  evil: { kind: http, url: '%s' }\n", gopher);
	assert_int_equal(ota_write_file_atomic(cfgpath, cfg, strlen(cfg), 0600), 0);
	{
		struct otacd_config c;
		config_defaults(&c);
		assert_int_equal(config_load(&c, cfgpath), OTA_EINVAL);
		assert_non_null(strstr(ota_error_last(), "provider 'evil' needs a url starting with http:// or https://"));
		config_release(&c);
	}
	/* a provider that answers with a redirect to another host: not followed */
	mhd = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL, NULL, redirect_handler, elsewhere,
			       MHD_OPTION_END);
	assert_non_null(mhd);
	url = xasprintf("http://127.0.0.1:%u/v",
			(unsigned)MHD_get_daemon_info(mhd, MHD_DAEMON_INFO_BIND_PORT)->port);
	providers = json_pack("{s{ss ss}}", "metrics", "kind", "http", "url", url);
	spec = json_pack("{ss ss si}", "provider", "metrics", "json_path", "value", "max", 1);
	assert_int_equal(gate_spec_parse(spec, "g", &g, err, sizeof(err)), 0);
	assert_true(gate_query(&g, providers, NULL, NULL, &v) < 0);
	/* the run's text names neither the status nor an address */
	assert_string_equal(ota_error_last(), "gate 'g': provider 'metrics' gave a bad answer");
	gate_spec_release(&g);
	MHD_stop_daemon(mhd);
	assert_victim_untouched(fd);
	json_decref(providers);
	json_decref(spec);
	free(url);
	free(cfg);
	free(cfgpath);
	free(dir);
	free(gopher);
	free(elsewhere);
}

static void a_gate_url_in_pipeline_yaml_is_refused_by_the_daemon(void **state)
{
	struct daemon *d = *state;
	int vport, fd = victim_listen(&vport);
	char *yaml = xasprintf("name: p\nstages:\n  - { name: a, steps: [ { run: 'true' } ] }\n"
			       "gates:\n  probe: { url: 'gopher://127.0.0.1:%d/_PING', json_path: x, max: 1 }\n", vport);
	const char *unknown = "name: p\nstages:\n  - { name: a, steps: [ { run: 'true' } ] }\n"
			      "gates:\n  probe: { provider: intranet, json_path: x, max: 1 }\n";
	struct buf body = BUF_INIT;
	json_t *req, *ans = NULL;
	char *text;

	assert_int_equal(h_raw(d, "POST", "/api/v1/lint?file=p.yml", VIEWER_TOKEN, "application/yaml", yaml, strlen(yaml),
			     &body), 200);
	assert_non_null(strstr(buf_cstr(&body), "p.yml:5:10: gate 'probe': 'url' is not accepted in a pipeline"));
	req = json_pack("{ss}", "pipeline", yaml);
	assert_int_equal(h_post(d, "/api/v1/runs", req, &ans), 422);
	text = json_dumps(ans, 0);
	assert_non_null(strstr(text, "'url' is not accepted in a pipeline"));
	free(text);
	json_decref(req);
	json_decref(ans);
	/* a provider name the server does not define */
	req = json_pack("{ss}", "pipeline", unknown);
	ans = NULL;
	assert_int_equal(h_post(d, "/api/v1/runs", req, &ans), 422);
	text = json_dumps(ans, 0);
	if (!strstr(text, "gate 'probe': provider 'intranet' is not defined in otacd's configuration"))
		fail_msg("%s", text);
	free(text);
	json_decref(req);
	json_decref(ans);
	assert_int_equal(h_sql_int(d, "SELECT COUNT(*) FROM runs"), 0);
	assert_victim_untouched(fd);
	buf_release(&body);
	free(yaml);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(masker_masks_every_form_keeping_length_and_lines),
		cmocka_unit_test(masker_gives_the_same_answer_at_every_cut),
		cmocka_unit_test(masker_holds_a_possible_secret_start_until_it_is_decided),
		cmocka_unit_test(masker_short_lines_of_a_multiline_secret_are_not_patterns),
		cmocka_unit_test(resumed_stream_masks_a_secret_end_at_its_start),
		cmocka_unit_test(log_store_masks_across_chunks_and_counts_held_bytes_as_received),
		cmocka_unit_test_setup_teardown(agent_step_printing_the_secret_in_every_form_leaves_no_trace, setup_agents,
						teardown),
		cmocka_unit_test_setup_teardown(a_junit_failure_message_and_the_job_message_are_masked, setup_agents,
						teardown),
		cmocka_unit_test_setup_teardown(raw_client_bypassing_the_agent_cannot_store_a_secret, setup_raw, teardown),
		cmocka_unit_test_setup_teardown(raw_report_upload_is_masked, setup_raw, teardown),
		cmocka_unit_test_setup_teardown(a_secret_cut_by_a_daemon_restart_is_still_masked, setup_raw, teardown),
		cmocka_unit_test(yaml_nested_too_deep_or_too_big_is_refused_with_its_position),
		cmocka_unit_test(xml_with_too_many_attributes_or_levels_is_refused_before_parsing),
		cmocka_unit_test_setup_teardown(hostile_documents_are_refused_by_the_daemon, setup_raw, teardown),
		cmocka_unit_test(gopher_and_redirects_never_reach_another_service),
		cmocka_unit_test_setup_teardown(a_gate_url_in_pipeline_yaml_is_refused_by_the_daemon, setup_raw, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
