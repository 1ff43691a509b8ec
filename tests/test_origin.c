/*
 * test_origin.c - object storage and CDN origin (issue 15): the S3 artifact
 * backend against a real S3-protocol server (s3rver, from npm), presigned
 * URLs, and a real caching proxy (nginx with proxy_cache) in front of otacd
 * with real otacd-device processes and otacd-fleetsim behind it.
 *
 * s3rver: $OTACD_S3RVER, or ~/.cache/otacd-npm/node_modules/.bin/s3rver
 * (.ci/run installs it there); nginx: $OTACD_NGINX or /usr/sbin/nginx.  A
 * test that needs one skips, saying so, only when it is not installed.
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
#include <dirent.h>
#include <fcntl.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <pthread.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../orchestrator/artifact.h"
#include "../orchestrator/artifact/origin.h"
#include "../orchestrator/mcuboot.h"
#include "../device/otadev.h"
#include "devharness.h"
#include "harness.h"

#define HW "mps2-an385"
#define TOKEN "cdn-pull-token-0123456789abcdef"

/* ---- helpers: child processes ------------------------------------------- */

static int port_of(const char *listen)
{
	const char *c = strrchr(listen, ':');
	return c ? atoi(c + 1) : 0;
}

/* Start argv (output to log) and wait until http://127.0.0.1:port/ answers
 * anything; a server that does not (in 20 s) fails the test. */
static pid_t spawn_http(const char *log, char *const argv[], int port)
{
	struct buf out = BUF_INIT;
	pid_t pid = dh_spawn(log, argv);
	for (int waited = 0; waited < 20000; waited += 100) {
		buf_clear(&out);
		if (h_sh(&out, "curl -s -o /dev/null -w '%%{http_code}' http://127.0.0.1:%d/", port) == 0 &&
		    strcmp(buf_cstr(&out), "000")) {
			buf_release(&out);
			return pid;
		}
		h_msleep(100);
	}
	buf_release(&out);
	fail_msg("%s did not start; see %s", argv[0], log);
	return pid;
}

static char *tool(const char *env, const char *fallback)
{
	const char *e = getenv(env);
	char *p = e && *e ? xstrdup(e) : xstrdup(fallback);
	if (access(p, X_OK) == 0)
		return p;
	free(p);
	return NULL;
}

static void rmdir_rf(char *dir)
{
	struct buf out = BUF_INIT;
	h_sh(&out, "rm -rf %s", dir);
	buf_release(&out);
	free(dir);
}

/* ---- s3rver --------------------------------------------------------------- */

struct s3srv {
	pid_t pid;
	char *dir, *endpoint, *creds;
};

static char *s3rver_bin(void)
{
	char *fb = xasprintf("%s/.cache/otacd-npm/node_modules/.bin/s3rver", getenv("HOME") ? getenv("HOME") : "/root");
	char *p = tool("OTACD_S3RVER", fb);
	free(fb);
	return p;
}

#define NEED_S3RVER(bin)                                                                                   \
	do {                                                                                               \
		if (!(bin)) {                                                                              \
			print_message("SKIP: s3rver is not installed (npm install --prefix ~/.cache/otacd-npm " \
				      "s3rver, as .ci/run does; or set OTACD_S3RVER)\n");                     \
			skip();                                                                            \
		}                                                                                          \
	} while (0)

/* s3rver on a free port with bucket "otacd", its data under base/s3. */
static void s3_start(struct s3srv *s, const char *bin, const char *base)
{
	int p = dh_free_port();
	char *port = xasprintf("%d", p), *log = xasprintf("%s/s3rver.log", base);
	struct buf out = BUF_INIT;

	s->dir = xasprintf("%s/s3", base);
	assert_int_equal(h_sh(&out, "mkdir -p %s", s->dir), 0);
	{
		char *argv[] = { (char *)bin, "-d", s->dir, "-a", "127.0.0.1", "-p", port, "--configure-bucket", "otacd",
				 "--silent", NULL };
		s->pid = spawn_http(log, argv, p);
	}
	s->endpoint = xasprintf("http://127.0.0.1:%s", port);
	s->creds = xasprintf("%s/s3.cred", base);
	assert_int_equal(ota_write_file_atomic(s->creds, "S3RVER:S3RVER\n", 14, 0600), 0);
	free(port);
	free(log);
	buf_release(&out);
}

static void s3_stop(struct s3srv *s)
{
	dh_stop(s->pid);
	free(s->dir);
	free(s->endpoint);
	free(s->creds);
	memset(s, 0, sizeof(*s));
}

/* The objects in the bucket, as "name name …" (s3rver keeps one file each). */
static char *bucket_listing(struct s3srv *s)
{
	struct buf out = BUF_INIT;
	h_sh(&out, "cd %s/otacd 2>/dev/null && find . -name '*._S3rver_object' | sort | xargs -r md5sum", s->dir);
	return buf_detach(&out);
}

static json_t *s3_cfg(struct s3srv *s, const char *creds)
{
	return json_pack("{ss ss ss ss ss}", "backend", "s3", "endpoint", s->endpoint, "bucket", "otacd", "region",
			 "us-east-1", "credentials_file", creds);
}

static int store(const void *data, size_t len, char sha[65])
{
	struct artifact_upload *u;
	int64_t size;
	int rc;
	if ((rc = artifact_upload_begin(&u)) < 0)
		return rc;
	if ((rc = artifact_upload_write(u, data, len)) < 0) {
		artifact_upload_abort(u);
		return rc;
	}
	return artifact_upload_commit(u, NULL, sha, &size);
}

static int fetch(const char *sha, struct buf *out)
{
	struct artifact_backend *b = artifact_backend();
	struct artifact_reader *r;
	char chunk[4096];
	int64_t size;
	ssize_t n;
	int rc;
	if ((rc = b->get(b, sha, &r, &size)) < 0)
		return rc;
	while ((n = b->read(r, chunk, sizeof(chunk))) > 0)
		buf_put(out, chunk, (size_t)n);
	b->close(r);
	return n < 0 ? OTA_ERROR : 0;
}

/* ---- presigning, without a server ------------------------------------------ */

static void presign_matches_the_documented_sigv4_example(void **state)
{
	/* AWS S3 API reference, "Authenticating Requests: Using Query
	 * Parameters (AWS Signature Version 4)", the GET example */
	char *url = artifact_s3_presign_raw("https://examplebucket.s3.amazonaws.com", "examplebucket.s3.amazonaws.com",
					    "/test.txt", "us-east-1", "AKIAIOSFODNN7EXAMPLE",
					    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", 1369353600, 86400);
	(void)state;
	assert_string_equal(url, "https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256"
				 "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
				 "&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
				 "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404");
	free(url);
}

/* A presigned URL signs the Host header a client sends: libcurl (and every
 * HTTP client) drops the scheme's default port from it. */
static void s3_host_header_drops_only_the_default_port(void **state)
{
	const char *cases[][2] = {
		{ "http://s3.example:80", "s3.example" },       { "https://s3.example:443/p", "s3.example" },
		{ "http://s3.example:443", "s3.example:443" },  { "https://s3.example:80", "s3.example:80" },
		{ "http://127.0.0.1:9000/a/b", "127.0.0.1:9000" }, { "http://[::1]:80", "[::1]" },
		{ "http://[::1]:8080/", "[::1]:8080" },
	};
	const char *refused[] = { "ftp://s3.example", "http://u:p@s3.example", "http://s3.example/?q",
				  "http://s3.example/#f", "http://s3.example/a%0Ab", "not a url" };
	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *h = artifact_s3_host_header(cases[i][0]);
		assert_non_null(h);
		assert_string_equal(h, cases[i][1]);
		free(h);
	}
	for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++)
		assert_null(artifact_s3_host_header(refused[i]));
}

/* A time gmtime cannot express, or past year 9999, is no SigV4 date. */
/* libotadev keeps an offer's image URL in OTADEV_URL_MAX bytes with its
 * NUL (device/otadev.h).  The longest presigned URL otacd makes for AWS:
 * path-style on the longest regional endpoint, a 63-character bucket, a
 * 20-character access key id, the longest region name, the 7-day maximum
 * lifetime; its length depends on nothing else (the signature and the
 * dates are fixed width).  What it leaves for an endpoint's path prefix. */
static void presigned_urls_fit_libotadevs_url_limit(void **state)
{
	char bucket[64], path[160];
	char *url;
	(void)state;
	memset(bucket, 'b', 63);
	bucket[63] = 0;
	snprintf(path, sizeof(path), "/%s/sha256/%064d", bucket, 0);
	url = artifact_s3_presign_raw("https://s3.ap-southeast-2.amazonaws.com", "s3.ap-southeast-2.amazonaws.com", path,
				      "ap-southeast-2", "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
				      1796000000, 604800);
	assert_non_null(url);
	print_message("longest AWS presigned URL: %zu bytes; OTADEV_URL_MAX %d leaves %zu for an endpoint prefix\n",
		      strlen(url), OTADEV_URL_MAX, (size_t)OTADEV_URL_MAX - 1 - strlen(url));
	assert_true(strlen(url) + 32 < OTADEV_URL_MAX);
	free(url);
}

static void presign_refuses_a_time_that_is_no_date(void **state)
{
	(void)state;
	assert_null(artifact_s3_presign_raw("http://h", "h", "/x", "us-east-1", "A", "S", (time_t)253402300800LL, 60));
	assert_null(artifact_s3_presign_raw("http://h", "h", "/x", "us-east-1", "A", "S", (time_t)INT64_MAX, 60));
	assert_non_null(strstr(ota_error_last(), "not a date"));
}

/* S3's error body is the server's: only the letters of its <Code> are kept */
static void s3_error_code_keeps_only_the_letters_of_a_hostile_body(void **state)
{
	char code[8];
	(void)state;
	artifact_s3_error_code(code, sizeof(code), "<Error><Code>NoSuchKey</Code></Error>");
	assert_string_equal(code, "NoSuchK"); /* cut to the buffer */
	artifact_s3_error_code(code, sizeof(code), "<Code>Bad\n<script>x</Code>");
	assert_string_equal(code, "Bad");
	artifact_s3_error_code(code, sizeof(code), "<Code>%s%n</Code>");
	assert_string_equal(code, "");
	artifact_s3_error_code(code, sizeof(code), "no XML at all <Code");
	assert_string_equal(code, "");
	artifact_s3_error_code(code, 1, "<Code>AccessDenied</Code>");
	assert_string_equal(code, "");
}

static void image_origin_config_is_checked(void **state)
{
	char *dir = h_tmpdir(), *url, *tok = xasprintf("%s/tok", dir);
	char out[1024];
	const char *offer = "{\"image\":{\"url\":\"/device/v1/images/"
			    "0000000000000000000000000000000000000000000000000000000000000000\"}}";
	json_t *c;
	(void)state;
	assert_int_equal(artifact_store_init(dir, 1 << 20), 0);
#define BAD(json, what)                                                      \
	do {                                                                 \
		c = json_loads(json, 0, NULL);                               \
		assert_int_equal(origin_configure(c), OTA_EINVAL);           \
		assert_non_null(strstr(ota_error_last(), what));             \
		json_decref(c);                                              \
	} while (0)
	BAD("{\"kind\": \"ftp\"}", "unknown kind");
	BAD("{\"kind\": \"cdn\"}", "needs url");
	BAD("{\"kind\": \"cdn\", \"url\": \"http://x/\\\"a\"}", "needs url");
	BAD("{\"kind\": \"s3\"}", "needs artifact_store backend s3");
	BAD("{\"kind\": \"cdn\", \"url\": \"http://x\", \"ttl\": 5}", "ttl");
	BAD("{\"kynd\": \"cdn\"}", "unknown key");
	/* a short token would be guessable */
	assert_int_equal(ota_write_file_atomic(tok, "short\n", 6, 0600), 0);
	c = json_pack("{ss ss ss}", "kind", "cdn", "url", "https://cdn.example/fw/", "token_file", tok);
	assert_int_equal(origin_configure(c), OTA_EINVAL);
	json_decref(c);
	/* cdn: URL/SHA, no pull token: the pull endpoint is off */
	c = json_pack("{ss ss}", "kind", "cdn", "url", "https://cdn.example/fw/");
	assert_int_equal(origin_configure(c), 0);
	url = origin_image_url("ab");
	assert_string_equal(url, "https://cdn.example/fw/ab");
	free(url);
	assert_int_equal(origin_pull_allowed(TOKEN), 0);
	assert_ptr_equal(origin_offer_text(out, sizeof(out), offer), offer);
	json_decref(c);
	/* the default: the device API, offers unchanged */
	assert_int_equal(origin_configure(NULL), 0);
	url = origin_image_url("ab");
	assert_string_equal(url, "/device/v1/images/ab");
	free(url);
	origin_shutdown();
	artifact_store_shutdown();
	free(tok);
	rmdir_rf(dir);
#undef BAD
}

/* ---- the S3 backend against s3rver ------------------------------------------- */

static void s3_store_keeps_deduplicates_and_checks_every_object(void **state)
{
	char *bin = s3rver_bin(), *dir, sha[65], sha2[65], *before, *after, *obj;
	struct s3srv s = { 0 };
	struct buf got = BUF_INIT, data = BUF_INIT, out = BUF_INIT;
	json_t *cfg;
	int64_t size;
	(void)state;
	NEED_S3RVER(bin);
	dir = h_tmpdir();
	s3_start(&s, bin, dir);
	cfg = s3_cfg(&s, s.creds);
	assert_int_equal(artifact_store_open(dir, 1 << 20, cfg), 0);
	assert_string_equal(artifact_backend()->name, "s3");

	/* upload, then download the same bytes */
	for (int i = 0; i < 300000; i++)
		buf_putc(&data, (char)(i * 7 + i / 256));
	assert_int_equal(store(data.ptr, data.len, sha), 0);
	assert_int_equal(artifact_backend()->stat(artifact_backend(), sha, &size), 0);
	assert_int_equal(size, (int64_t)data.len);
	assert_int_equal(fetch(sha, &got), 0);
	assert_int_equal(got.len, data.len);
	assert_memory_equal(got.ptr, data.ptr, data.len);

	/* content-addressed: the same bytes again store nothing new */
	before = bucket_listing(&s);
	assert_int_equal(store(data.ptr, data.len, sha2), 0);
	assert_string_equal(sha, sha2);
	after = bucket_listing(&s);
	assert_string_equal(before, after);
	assert_non_null(strstr(after, sha));
	free(after);

	/* an upload past the cap never reaches the bucket */
	{
		struct artifact_upload *u;
		char *big = xcalloc(1, (1 << 20) + 1);
		assert_int_equal(artifact_upload_begin(&u), 0);
		assert_int_equal(artifact_upload_write(u, big, (1 << 20) + 1), OTA_ETOOBIG);
		artifact_upload_abort(u);
		free(big);
		after = bucket_listing(&s);
		assert_string_equal(before, after);
		free(after);
	}

	/* bytes changed at rest in the bucket: refused on read, nothing handed out */
	obj = xasprintf("%s/otacd/sha256/%s._S3rver_object", s.dir, sha);
	assert_int_equal(h_sh(&out, "printf X | dd of=%s bs=1 seek=1000 conv=notrunc 2>/dev/null", obj), 0);
	buf_clear(&got);
	assert_true(fetch(sha, &got) < 0);
	assert_int_equal(got.len, 0);
	assert_non_null(strstr(ota_error_last(), "corrupt"));
	/* a missing object */
	assert_int_equal(artifact_backend()->remove(artifact_backend(), sha), 0);
	assert_int_equal(fetch(sha, &got), OTA_ENOTFOUND);
	assert_int_equal(artifact_backend()->stat(artifact_backend(), sha, &size), OTA_ENOTFOUND);
	/* and stored again whole */
	assert_int_equal(store(data.ptr, data.len, sha2), 0);
	buf_clear(&got);
	assert_int_equal(fetch(sha, &got), 0);
	assert_memory_equal(got.ptr, data.ptr, data.len);
	/* no spool file left behind: not by the commits, the abort past the cap,
	 * the corrupt or the missing read */
	assert_int_equal(h_sh(&out, "ls -A %s/artifacts/s3-tmp | wc -l", dir), 0);
	assert_int_equal(atoi(buf_cstr(&out)), 0);

	artifact_store_shutdown();
	json_decref(cfg);
	free(obj);
	free(before);
	s3_stop(&s);
	rmdir_rf(dir);
	free(bin);
	buf_release(&got);
	buf_release(&data);
	buf_release(&out);
}

/* A crash between making a spool file and unlinking it leaves its name:
 * swept at the next start, unless a process holds it locked (in use). */
static void s3_store_sweeps_stale_spool_files_at_start_but_not_one_in_use(void **state)
{
	char *bin = s3rver_bin(), *dir, *spool, *stale[2], *inuse;
	struct s3srv s = { 0 };
	struct buf out = BUF_INIT;
	json_t *cfg;
	int fd;
	(void)state;
	NEED_S3RVER(bin);
	dir = h_tmpdir();
	s3_start(&s, bin, dir);
	spool = xasprintf("%s/artifacts/s3-tmp", dir);
	assert_int_equal(ota_mkdir_p(spool, 0700), 0);
	stale[0] = xasprintf("%s/upload-AbC123", spool);
	stale[1] = xasprintf("%s/get-XyZ789", spool);
	inuse = xasprintf("%s/upload-InUse1", spool);
	for (int i = 0; i < 2; i++)
		assert_int_equal(ota_write_file_atomic(stale[i], "half an upload", 14, 0600), 0);
	assert_int_equal(ota_write_file_atomic(inuse, "being written", 13, 0600), 0);
	fd = open(inuse, O_RDWR | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(flock(fd, LOCK_EX | LOCK_NB), 0);

	cfg = s3_cfg(&s, s.creds);
	assert_int_equal(artifact_store_open(dir, 1 << 20, cfg), 0);
	assert_int_equal(access(stale[0], F_OK), -1);
	assert_int_equal(access(stale[1], F_OK), -1);
	assert_int_equal(access(inuse, F_OK), 0);
	assert_int_equal(h_sh(&out, "ls -A %s | wc -l", spool), 0);
	assert_int_equal(atoi(buf_cstr(&out)), 1);

	close(fd);
	artifact_store_shutdown();
	json_decref(cfg);
	for (int i = 0; i < 2; i++)
		free(stale[i]);
	free(inuse);
	free(spool);
	s3_stop(&s);
	rmdir_rf(dir);
	free(bin);
	buf_release(&out);
}

static void s3_store_refuses_wrong_credentials_with_a_clear_error(void **state)
{
	char *bin = s3rver_bin(), *dir, *bad, *before, *after, sha[65];
	struct s3srv s = { 0 };
	json_t *cfg;
	(void)state;
	NEED_S3RVER(bin);
	dir = h_tmpdir();
	s3_start(&s, bin, dir);
	cfg = s3_cfg(&s, s.creds);
	assert_int_equal(artifact_store_open(dir, 1 << 20, cfg), 0);
	assert_int_equal(store("release image", 13, sha), 0);
	artifact_store_shutdown();
	json_decref(cfg);
	before = bucket_listing(&s);

	bad = xasprintf("%s/bad.cred", dir);
	assert_int_equal(ota_write_file_atomic(bad, "NOSUCHKEY:very-secret-value\n", 28, 0600), 0);
	cfg = s3_cfg(&s, bad);
	assert_int_equal(artifact_store_open(dir, 1 << 20, cfg), OTA_EAUTH);
	print_message("refused: %s\n", ota_error_last());
	assert_non_null(strstr(ota_error_last(), "refused the credentials"));
	assert_non_null(strstr(ota_error_last(), "InvalidAccessKeyId"));
	assert_null(strstr(ota_error_last(), "very-secret-value"));
	assert_null(artifact_backend());
	json_decref(cfg);
	/* no credentials at all, or a malformed file: said so at start */
	unsetenv("OTACD_S3_ACCESS_KEY_ID");
	cfg = json_pack("{ss ss ss}", "backend", "s3", "endpoint", s.endpoint, "bucket", "otacd");
	assert_int_equal(artifact_store_open(dir, 1 << 20, cfg), OTA_EINVAL);
	assert_non_null(strstr(ota_error_last(), "credentials_file"));
	json_decref(cfg);
	assert_int_equal(ota_write_file_atomic(bad, "no colon here\n", 14, 0600), 0);
	cfg = s3_cfg(&s, bad);
	assert_int_equal(artifact_store_open(dir, 1 << 20, cfg), OTA_EINVAL);
	json_decref(cfg);
	cfg = json_pack("{ss ss}", "backend", "s4", "bucket", "otacd");
	assert_int_equal(artifact_store_open(dir, 1 << 20, cfg), OTA_EINVAL);
	json_decref(cfg);
	/* credentials in the endpoint would reach every presigned URL: refused, not repeated */
	{
		char *ep = xasprintf("http://S3RVER:very-secret-value@%s", strstr(s.endpoint, "://") + 3);
		cfg = json_pack("{ss ss ss ss}", "backend", "s3", "endpoint", ep, "bucket", "otacd", "credentials_file",
				s.creds);
		assert_int_equal(artifact_store_open(dir, 1 << 20, cfg), OTA_EINVAL);
		assert_non_null(strstr(ota_error_last(), "endpoint"));
		assert_null(strstr(ota_error_last(), "very-secret-value"));
		json_decref(cfg);
		free(ep);
	}
	cfg = json_pack("{si ss}", "backend", 3, "bucket", "otacd");
	assert_int_equal(artifact_store_open(dir, 1 << 20, cfg), OTA_EINVAL);
	assert_non_null(strstr(ota_error_last(), "backend is a name"));
	json_decref(cfg);
	/* nothing stored changed */
	after = bucket_listing(&s);
	assert_string_equal(before, after);

	free(before);
	free(after);
	free(bad);
	s3_stop(&s);
	rmdir_rf(dir);
	free(bin);
}

static void presigned_urls_serve_ranges_and_expire(void **state)
{
	char *bin = s3rver_bin(), *dir, *url = NULL, sha[65];
	struct s3srv s = { 0 };
	struct buf out = BUF_INIT, data = BUF_INIT;
	json_t *cfg;
	(void)state;
	NEED_S3RVER(bin);
	dir = h_tmpdir();
	s3_start(&s, bin, dir);
	cfg = s3_cfg(&s, s.creds);
	assert_int_equal(artifact_store_open(dir, 1 << 20, cfg), 0);
	for (int i = 0; i < 5000; i++)
		buf_printf(&data, "%04d", i);
	assert_int_equal(store(data.ptr, data.len, sha), 0);

	/* a device resuming at byte 1000: 206, exactly those bytes, no credential sent */
	assert_int_equal(artifact_s3_presign(&url, artifact_backend(), sha, 604800, time(NULL)), 0);
	/* the store's URLs at the longest lifetime fit what libotadev keeps */
	print_message("presigned URL on s3rver: %zu bytes (OTADEV_URL_MAX %d)\n", strlen(url), OTADEV_URL_MAX);
	assert_true(strlen(url) < OTADEV_URL_MAX);
	assert_non_null(strstr(url, "X-Amz-Signature="));
	assert_int_equal(h_sh(&out, "curl -s -r 1000-1999 -w ' %%{http_code}' '%s'", url), 0);
	assert_int_equal(out.len, 1000 + 4);
	assert_memory_equal(out.ptr, data.ptr + 1000, 1000);
	assert_string_equal(out.ptr + 1000, " 206");
	free(url);
	/* past its lifetime: refused by the store */
	assert_int_equal(artifact_s3_presign(&url, artifact_backend(), sha, 60, time(NULL) - 3600), 0);
	buf_clear(&out);
	assert_int_equal(h_sh(&out, "curl -s -w ' %%{http_code}' '%s'", url), 0);
	assert_non_null(strstr(buf_cstr(&out), "expired"));
	assert_non_null(strstr(buf_cstr(&out), " 403"));
	free(url);
	/* only from the s3 backend, only digests, 1 s to 7 days */
	assert_int_equal(artifact_s3_presign(&url, artifact_backend(), "../etc", 600, time(NULL)), OTA_EINVAL);
	assert_int_equal(artifact_s3_presign(&url, artifact_backend(), sha, 700000, time(NULL)), OTA_EINVAL);

	artifact_store_shutdown();
	json_decref(cfg);
	s3_stop(&s);
	rmdir_rf(dir);
	free(bin);
	buf_release(&out);
	buf_release(&data);
}

/* Presigning from several threads while the UTC day flips under them. */
struct presign_job {
	const char *sha;
	time_t days[2];
	const char *want[2]; /* the uncached signature of each day */
	int wrong;
};

static void *presign_many(void *arg)
{
	struct presign_job *j = arg;
	for (int i = 0; i < 400; i++) {
		char *url = NULL;
		if (artifact_s3_presign(&url, artifact_backend(), j->sha, 604800, j->days[i % 2]) < 0 ||
		    strcmp(url, j->want[i % 2]))
			j->wrong++;
		free(url);
	}
	return NULL;
}

/* An endpoint with a path prefix ("my%20prefix", already %-encoded as a URL
 * is): requests and presigned URLs both name it encoded once, as S3 signs
 * it; the signing key kept per day is the one of the URL's day. */
static void s3_endpoint_with_a_prefix_signs_and_presigns_it_encoded_once(void **state)
{
	char *bin = s3rver_bin(), *dir, *ep, *url = NULL, *obj, *want[2], *path, *host, sha[65];
	struct s3srv s = { 0 };
	struct buf out = BUF_INIT, data = BUF_INIT, got = BUF_INIT;
	time_t now = time(NULL), days[2] = { now, now - 86400 };
	json_t *cfg;
	(void)state;
	NEED_S3RVER(bin);
	dir = h_tmpdir();
	s3_start(&s, bin, dir);
	/* s3rver has one bucket, "otacd": the prefix and our bucket "b" are the
	 * start of each key.  The start-up check lists ".../b": an object there
	 * answers it (put unsigned: s3rver takes anonymous requests). */
	assert_int_equal(h_sh(&out, "printf x | curl -sf -T - '%s/otacd/my%%20prefix/b'", s.endpoint), 0);
	ep = xasprintf("%s/otacd/my%%20prefix/", s.endpoint);
	cfg = json_pack("{ss ss ss ss ss}", "backend", "s3", "endpoint", ep, "bucket", "b", "region", "us-east-1",
			"credentials_file", s.creds);
	assert_int_equal(artifact_store_open(dir, 1 << 20, cfg), 0);
	for (int i = 0; i < 3000; i++)
		buf_printf(&data, "%04d", i);
	/* libcurl-signed PUT and GET under the prefix, the key decoded once */
	assert_int_equal(store(data.ptr, data.len, sha), 0);
	obj = xasprintf("%s/otacd/my prefix/b/sha256/%s._S3rver_object", s.dir, sha);
	assert_int_equal(access(obj, F_OK), 0);
	assert_int_equal(fetch(sha, &got), 0);
	assert_int_equal(got.len, data.len);

	/* presigned, encoded once: fetched whole by a client that sends no credential */
	assert_int_equal(artifact_s3_presign(&url, artifact_backend(), sha, 600, now), 0);
	assert_non_null(strstr(url, "/otacd/my%20prefix/b/sha256/"));
	assert_null(strstr(url, "%2520"));
	buf_clear(&out);
	assert_int_equal(h_sh(&out, "curl -s -w ' %%{http_code}' '%s'", url), 0);
	assert_int_equal(out.len, data.len + 4);
	assert_string_equal(out.ptr + data.len, " 200");
	free(url);

	/* the kept key follows the day: yesterday's URL (valid 7 days) and
	 * today's, alternately from 4 threads, each as signed from scratch */
	path = xasprintf("/otacd/my prefix/b/sha256/%s", sha);
	host = artifact_s3_host_header(s.endpoint);
	for (int d = 0; d < 2; d++)
		want[d] = artifact_s3_presign_raw(s.endpoint, host, path, "us-east-1", "S3RVER", "S3RVER", days[d], 604800);
	{
		pthread_t t[4];
		struct presign_job j[4];
		for (int i = 0; i < 4; i++) {
			j[i] = (struct presign_job){ sha, { days[i % 2], days[(i + 1) % 2] },
						     { want[i % 2], want[(i + 1) % 2] }, 0 };
			assert_int_equal(pthread_create(&t[i], NULL, presign_many, &j[i]), 0);
		}
		for (int i = 0; i < 4; i++) {
			pthread_join(t[i], NULL);
			assert_int_equal(j[i].wrong, 0);
		}
	}
	buf_clear(&out);
	assert_int_equal(h_sh(&out, "curl -s -o /dev/null -w '%%{http_code}' '%s'", want[1]), 0);
	assert_string_equal(buf_cstr(&out), "200");

	artifact_store_shutdown();
	json_decref(cfg);
	for (int d = 0; d < 2; d++)
		free(want[d]);
	free(path);
	free(host);
	free(obj);
	free(ep);
	s3_stop(&s);
	rmdir_rf(dir);
	free(bin);
	buf_release(&out);
	buf_release(&data);
	buf_release(&got);
}

/* ---- end to end: otacd, nginx in front, real devices ------------------------------ */

struct e2e {
	struct daemon d;
	char **cred;
	int n;
	char *factory;
	int64_t release;
	char sha[65];
	int64_t size;
};

/* otacd with extra_cfg, n devices, release 1.1.0 at 100 %; e->sha and
 * e->size from device 0's offer, whose image URL must start with url_prefix. */
static void e2e_start(struct e2e *e, int n, const char *extra_cfg, const char *url_prefix)
{
	const char *const args[] = { "--local-agents", "1", NULL };
	struct buf out = BUF_INIT;
	json_t *ans = NULL, *image;

	dh_start_signing(&e->d, args, "poll_interval: 1s\n%s", extra_cfg);
	e->cred = h_register_devices(&e->d, "dev", n);
	e->n = n;
	e->factory = dh_factory_image(e->d.dir, "key", -1);
	e->release = dh_release_of(&e->d, h_trigger(&e->d, dh_fw_release_yaml));
	assert_true(e->release > 0);
	/* the offer device 0 gets */
	for (int waited = 0; waited < 30000; waited += 200) {
		json_decref(ans);
		ans = NULL;
		assert_int_equal(h_dev_post(&e->d, "/device/v1/checkin", e->cred[0],
					    json_pack("{ss ss ss ss ss si ss}", "device", "dev-0000", "product", "fw",
						      "hardware", HW, "bootloader", "1.2.0", "version", "1.0.0",
						      "security_counter", 0, "slot", "confirmed"),
					    &ans),
				 200);
		if (json_is_object(json_object_get(ans, "offer")))
			break;
		h_msleep(200);
	}
	image = json_object_get(json_object_get(ans, "offer"), "image");
	assert_non_null(image);
	print_message("offer url: %s\n", json_string_value(json_object_get(image, "url")));
	assert_true(!strncmp(json_string_value(json_object_get(image, "url")), url_prefix, strlen(url_prefix)));
	snprintf(e->sha, sizeof(e->sha), "%s", json_string_value(json_object_get(image, "sha256")));
	e->size = json_integer_value(json_object_get(image, "size"));
	assert_true(e->size > 40000);
	json_decref(ans);
	buf_release(&out);
}

static void e2e_stop(struct e2e *e)
{
	for (int i = 0; i < e->n; i++)
		free(e->cred[i]);
	free(e->cred);
	free(e->factory);
	h_cleanup(&e->d);
	memset(e, 0, sizeof(*e));
}

static char *device_setup(struct e2e *e, int i)
{
	char *dir = xasprintf("%s/dev-%04d", e->d.dir, i);
	char *conf = xasprintf("%s/device.conf", dir);
	char *bin = h_bin("otacd-device");
	char *text = xasprintf("url = %s\ndevice = dev-%04d\ncredential = %s\nproduct = fw\n"
			       "hardware = " HW "\nbootloader = 1.2.0\nprimary = %s/slot0\nsecondary = %s/slot1\n"
			       "state = %s/state\nkey = %s/key.pub\nslot_size = 65536\nsector_size = 4096\n"
			       "health_check = true\nsync = 0\nbackoff_base_ms = 200\nbackoff_max_ms = 1000\nthrottle_ms = 10\n"
			       "heartbeat_ms = 1500\n",
			       e->d.device_url, i, e->cred[i], dir, dir, dir, e->d.dir);
	struct buf out = BUF_INIT;
	assert_int_equal(h_sh(&out, "mkdir -p %s", dir), 0);
	assert_int_equal(ota_write_file_atomic(conf, text, strlen(text), 0600), 0);
	assert_int_equal(h_sh(&out, "%s -c %s flash %s", bin, conf, e->factory), 0);
	free(dir);
	free(bin);
	free(text);
	buf_release(&out);
	return conf;
}

static char *device_version(const char *conf)
{
	char *bin = h_bin("otacd-device");
	struct buf out = BUF_INIT;
	json_t *j;
	char *v;
	assert_int_equal(h_sh(&out, "%s -c %s status 2>/dev/null", bin, conf), 0);
	j = json_loads(buf_cstr(&out), 0, NULL);
	assert_non_null(j);
	v = xstrdup(json_string_value(json_object_get(j, "version")) ?: "");
	json_decref(j);
	free(bin);
	buf_release(&out);
	return v;
}

static int64_t image_bytes_served(struct daemon *d)
{
	size_t len;
	char *m = h_device_metrics(d, &len), *p;
	int64_t v = -1;
	if (m && (p = strstr(m, "\notacd_image_bytes_served_total ")))
		v = strtoll(p + 32, NULL, 10);
	free(m);
	return v;
}

/* ---- nginx ------------------------------------------------------------------ */

struct ngx {
	pid_t pid;
	char *dir, *listen;
};

#define NEED_NGINX(bin)                                                                                      \
	do {                                                                                                 \
		if (!(bin)) {                                                                                \
			print_message("SKIP: nginx is not installed (apt-get install nginx-light, as .ci/run does;" \
				      " or set OTACD_NGINX)\n");                                             \
			skip();                                                                              \
		}                                                                                            \
	} while (0)

/* nginx on n->listen: /img/ a proxy_cache in front of otacd's origin pull
 * endpoint (origin: http://HOST:PORT of the device API), /bad/ static files
 * from DIR/bad (an origin that serves what it likes). */
static void ngx_start(struct ngx *n, const char *bin, const char *base, const char *origin)
{
	struct buf out = BUF_INIT;
	char *conf, *path, *log;
	n->dir = xasprintf("%s/nginx", base);
	assert_int_equal(h_sh(&out, "mkdir -p %s/bad %s/tmp %s/cache && chmod 0711 %s && chmod -R 0777 %s", n->dir, n->dir,
			      n->dir, base, n->dir), 0);
	conf = xasprintf("%s"
			 "daemon off;\nworker_processes 1;\npid %s/nginx.pid;\nerror_log %s/error.log;\n"
			 "events { worker_connections 512; }\n"
			 "http {\n"
			 "  log_format cache '$request_uri $status $upstream_cache_status $body_bytes_sent';\n"
			 "  access_log %s/access.log cache;\n"
			 "  client_body_temp_path %s/tmp/body; proxy_temp_path %s/tmp/proxy;\n"
			 "  fastcgi_temp_path %s/tmp/fcgi; uwsgi_temp_path %s/tmp/uwsgi; scgi_temp_path %s/tmp/scgi;\n"
			 "  proxy_cache_path %s/cache levels=1:2 keys_zone=img:1m max_size=256m inactive=1h use_temp_path=off;\n"
			 "  server {\n    listen %s;\n"
			 "    location /img/ {\n"
			 "      proxy_pass %s/device/v1/origin/;\n"
			 "      proxy_set_header Authorization \"Bearer " TOKEN "\";\n"
			 "      proxy_cache img; proxy_cache_key $uri; proxy_cache_valid 200 1h; proxy_cache_lock on;\n"
			 "      add_header X-Cache-Status $upstream_cache_status always;\n"
			 "    }\n"
			 "    location /bad/ { alias %s/bad/; }\n"
			 "  }\n}\n",
			 geteuid() == 0 ? "user nobody nogroup;\n" : "", n->dir, n->dir, n->dir, n->dir, n->dir, n->dir,
			 n->dir, n->dir, n->dir, n->listen, origin, n->dir);
	path = xasprintf("%s/nginx.conf", n->dir);
	assert_int_equal(ota_write_file_atomic(path, conf, strlen(conf), 0644), 0);
	log = xasprintf("%s/stderr.log", n->dir);
	{
		char *argv[] = { (char *)bin, "-p", n->dir, "-c", path, "-e", "stderr", NULL };
		n->pid = spawn_http(log, argv, port_of(n->listen));
	}
	free(conf);
	free(path);
	free(log);
	buf_release(&out);
}

static void ngx_stop(struct ngx *n)
{
	dh_stop(n->pid);
	free(n->dir);
	free(n->listen);
	memset(n, 0, sizeof(*n));
}

static int count_lines(const char *file, const char *needle)
{
	struct buf out = BUF_INIT;
	int n;
	h_sh(&out, "grep -c -- '%s' %s || true", needle, file);
	n = atoi(buf_cstr(&out));
	buf_release(&out);
	return n;
}

#define DEVICES 3

static void cdn_in_front_serves_every_device_from_its_cache_and_resumes_ranges(void **state)
{
	char *bin = tool("OTACD_NGINX", "/usr/sbin/nginx"), *cfg, *tokfile, *conf[DEVICES], *url, *alog;
	struct e2e e = { 0 };
	struct ngx n = { 0 };
	struct buf full = BUF_INIT, part = BUF_INIT, hdr = BUF_INIT;
	pid_t pids[DEVICES];
	int64_t ok = 0;
	(void)state;
	NEED_NGINX(bin);
	h_init(&e.d, NULL);
	n.listen = h_free_listen();
	tokfile = xasprintf("%s/origin.token", e.d.dir);
	assert_int_equal(ota_write_file_atomic(tokfile, TOKEN "\n", strlen(TOKEN) + 1, 0600), 0);
	cfg = xasprintf("image_origin: { kind: cdn, url: \"http://%s/img/\", token_file: %s }\n", n.listen, tokfile);
	{
		char *prefix = xasprintf("http://%s/img/", n.listen);
		e2e_start(&e, DEVICES, cfg, prefix);
		free(prefix);
	}
	ngx_start(&n, bin, e.d.dir, e.d.device_url);
	assert_int_equal(image_bytes_served(&e.d), 0);

	/* the pull endpoint: the CDN's token only, images on offer only */
	{
		char *p = xasprintf("/device/v1/origin/%s", e.sha);
		struct buf b = BUF_INIT;
		long st;
		h_sh(&b, "curl -s -o /dev/null -w '%%{http_code}' %s%s", e.d.device_url, p);
		assert_string_equal(buf_cstr(&b), "401");
		buf_clear(&b);
		h_sh(&b, "curl -s -o /dev/null -w '%%{http_code}' -H 'Authorization: Bearer %s' %s%s", e.cred[0],
		     e.d.device_url, p);
		assert_string_equal(buf_cstr(&b), "403");
		buf_clear(&b);
		h_sh(&b, "curl -s -o /dev/null -w '%%{http_code}' -H 'Authorization: Bearer " TOKEN "' %s/device/v1/origin/%064d",
		     e.d.device_url, 0);
		assert_string_equal(buf_cstr(&b), "404");
		(void)st;
		buf_release(&b);
		free(p);
	}
	assert_int_equal(image_bytes_served(&e.d), 0);

	for (int i = 0; i < DEVICES; i++) {
		conf[i] = device_setup(&e, i);
		pids[i] = dh_device_loop(conf[i]);
	}
	for (int waited = 0; waited < 60000 && (ok = dh_fleet_count(&e.d, e.release, "confirmed")) < DEVICES; waited += 200)
		h_msleep(200);
	for (int i = 0; i < DEVICES; i++)
		dh_stop(pids[i]);
	assert_int_equal(ok, DEVICES);
	for (int i = 0; i < DEVICES; i++) {
		char *v = device_version(conf[i]);
		assert_string_equal(v, "1.1.0");
		free(v);
		free(conf[i]);
	}

	/* Range resume through the cache: the bytes of the whole, a HIT */
	url = xasprintf("http://%s/img/%s", n.listen, e.sha);
	assert_int_equal(h_sh(&full, "curl -sf '%s'", url), 0);
	assert_int_equal(full.len, (size_t)e.size);
	assert_int_equal(h_sh(&part, "curl -sf -r 20000- '%s'", url), 0);
	assert_int_equal(part.len, (size_t)e.size - 20000);
	assert_memory_equal(part.ptr, full.ptr + 20000, part.len);
	assert_int_equal(h_sh(&hdr, "curl -s -o /dev/null -D - -r 100-199 '%s'", url), 0);
	assert_non_null(strstr(buf_cstr(&hdr), " 206"));
	assert_non_null(strstr(buf_cstr(&hdr), "X-Cache-Status: HIT"));

	/* otacd served the image once for this cache, whatever the devices did */
	alog = xasprintf("%s/access.log", n.dir);
	print_message("nginx: %d requests, %d MISS, %d HIT; otacd sent %lld bytes of a %lld-byte image\n",
		      count_lines(alog, "/img/"), count_lines(alog, " MISS "), count_lines(alog, " HIT "),
		      (long long)image_bytes_served(&e.d), (long long)e.size);
	assert_int_equal(image_bytes_served(&e.d), e.size);
	assert_int_equal(count_lines(alog, " MISS "), 1);
	assert_true(count_lines(alog, " HIT ") >= DEVICES);
	assert_int_equal(dh_fleet_count(&e.d, e.release, "downloads"), DEVICES);

	ngx_stop(&n);
	e2e_stop(&e);
	free(alog);
	free(url);
	free(cfg);
	free(tokfile);
	free(bin);
	buf_release(&full);
	buf_release(&part);
	buf_release(&hdr);
}

static void altered_bytes_from_the_origin_are_refused_by_the_device(void **state)
{
	char *bin = tool("OTACD_NGINX", "/usr/sbin/nginx"), *cfg, *conf, *file, *v, *log;
	struct e2e e = { 0 };
	struct ngx n = { 0 };
	struct buf img = BUF_INIT, out = BUF_INIT;
	pid_t pid;
	int refused = 0;
	(void)state;
	NEED_NGINX(bin);
	h_init(&e.d, NULL);
	n.listen = h_free_listen();
	{
		char *tokfile = xasprintf("%s/origin.token", e.d.dir), *prefix = xasprintf("http://%s/bad/", n.listen);
		assert_int_equal(ota_write_file_atomic(tokfile, TOKEN "\n", strlen(TOKEN) + 1, 0600), 0);
		cfg = xasprintf("image_origin: { kind: cdn, url: \"http://%s/bad\", token_file: %s }\n", n.listen, tokfile);
		e2e_start(&e, 1, cfg, prefix);
		free(tokfile);
		free(prefix);
	}
	ngx_start(&n, bin, e.d.dir, e.d.device_url);
	/* the CDN serves the right size with one byte changed */
	assert_int_equal(h_sh(&img, "curl -sf -H 'Authorization: Bearer " TOKEN "' %s/device/v1/origin/%s", e.d.device_url,
			      e.sha), 0);
	assert_int_equal(img.len, (size_t)e.size);
	img.ptr[img.len - 300] ^= 0x01;
	file = xasprintf("%s/bad/%s", n.dir, e.sha);
	assert_int_equal(ota_write_file_atomic(file, img.ptr, img.len, 0644), 0);

	conf = device_setup(&e, 0);
	pid = dh_device_loop(conf);
	log = xasprintf("%s.log", conf);
	for (int waited = 0; waited < 60000 && !refused; waited += 300) {
		refused = count_lines(log, "image digest does not match the offer") > 0;
		if (!refused)
			h_msleep(300);
	}
	h_msleep(500);
	dh_stop(pid);
	assert_true(refused);
	v = device_version(conf);
	assert_string_equal(v, "1.0.0");   /* nothing marked bootable */
	assert_int_equal(dh_fleet_count(&e.d, e.release, "installs"), 0);
	assert_int_equal(dh_fleet_count(&e.d, e.release, "confirmed"), 0);
	/* the same fleet through fleetsim: refused as well */
	{
		char *fs = h_bin("otacd-fleetsim"), *stats = xasprintf("%s/stats.json", e.d.dir);
		char *prof = xasprintf("%s/profile.json", e.d.dir);
		const char *p = "{\"hardware\": {\"" HW "\": 1.0}, \"silent\": 0, \"flaky\": 0}";
		json_t *st;
		assert_int_equal(ota_write_file_atomic(prof, p, strlen(p), 0644), 0);
		buf_clear(&out);
		if (h_sh(&out, "%s --url %s --devices 5 --seed 3 --key %s/key.pub --fleet-key %s --product fw --profile %s"
			       " --stats %s --duration 8 --concurrency 4 --quiet", fs, e.d.device_url, e.d.dir,
			 e.d.fleet_key, prof, stats) != 0)
			fail_msg("otacd-fleetsim: %s", buf_cstr(&out));
		st = json_load_file(stats, 0, NULL);
		assert_non_null(st);
		print_message("fleetsim: refused %lld, installs %lld\n",
			      (long long)json_integer_value(json_object_get(st, "refused")),
			      (long long)json_integer_value(json_object_get(st, "installs")));
		assert_true(json_integer_value(json_object_get(st, "refused")) > 0);
		assert_int_equal(json_integer_value(json_object_get(st, "installs")), 0);
		json_decref(st);
		free(fs);
		free(stats);
		free(prof);
	}

	ngx_stop(&n);
	e2e_stop(&e);
	free(v);
	free(log);
	free(conf);
	free(file);
	free(cfg);
	free(bin);
	buf_release(&img);
	buf_release(&out);
}

/* Released images are published to the S3 store; offers carry presigned
 * URLs; fleetsim devices fetch them from the store, with no credential. */
static void releases_publish_to_s3_and_devices_fetch_presigned_urls(void **state)
{
	char *bin = s3rver_bin(), *cfg, *listing;
	struct s3srv s = { 0 };
	struct e2e e = { 0 };
	struct buf out = BUF_INIT;
	(void)state;
	NEED_S3RVER(bin);
	h_init(&e.d, NULL);
	s3_start(&s, bin, e.d.dir);
	cfg = xasprintf("artifact_store: { backend: s3, endpoint: \"%s\", bucket: otacd, credentials_file: %s }\n"
			"image_origin: { kind: s3, ttl: 600 }\n", s.endpoint, s.creds);
	{
		char *prefix = xasprintf("%s/otacd/sha256/", s.endpoint);
		e2e_start(&e, 1, cfg, prefix);
		free(prefix);
	}
	listing = bucket_listing(&s);
	assert_non_null(strstr(listing, e.sha));
	/* nothing kept on otacd's own disk */
	assert_int_equal(h_sh(&out, "test ! -e %s/state/artifacts/sha256", e.d.dir), 0);
	{
		char *fs = h_bin("otacd-fleetsim"), *stats = xasprintf("%s/stats.json", e.d.dir);
		char *prof = xasprintf("%s/profile.json", e.d.dir);
		/* no silent or flaky devices: all ten must reach 1.1.0 within --duration
		 * (fleetsim's default 5 % flaky devices left two short on CI) */
		const char *p = "{\"hardware\": {\"" HW "\": 1.0}, \"silent\": 0, \"flaky\": 0,"
				" \"default\": {\"crash_rate\": 0, \"boot_fail_rate\": 0, \"revert_rate\": 0}}";
		json_t *st;
		assert_int_equal(ota_write_file_atomic(prof, p, strlen(p), 0644), 0);
		buf_clear(&out);
		/* the core engine: libotadev follows each offer's presigned URL */
		if (h_sh(&out, "%s --engine core --url %s --devices 10 --seed 3 --key %s/key.pub --fleet-key %s --product fw --profile %s"
			       " --stats %s --duration 240 --until 1.1.0:1.0 --concurrency 4 --quiet", fs, e.d.device_url,
			 e.d.dir, e.d.fleet_key, prof, stats) != 0)
			fail_msg("otacd-fleetsim: %s", buf_cstr(&out));
		st = json_load_file(stats, 0, NULL);
		assert_non_null(st);
		print_message("fleetsim: confirmed %lld, refused %lld, image bytes otacd sent %lld\n",
			      (long long)json_integer_value(json_object_get(st, "confirmed")),
			      (long long)json_integer_value(json_object_get(st, "refused")),
			      (long long)image_bytes_served(&e.d));
		/* every device runs 1.1.0, confirmed, fetched from its presigned
		 * URL (what --until waits for; the core engine's event counters,
		 * "downloads", "installed" and "confirmed" have been seen one short
		 * under load, docs/fleetsim.md) */
		assert_true(json_is_true(json_object_get(st, "until_reached")));
		assert_int_equal(json_integer_value(json_object_get(json_object_get(st, "versions"), "1.1.0")), 10);
		assert_true(json_integer_value(json_object_get(st, "installed")) >= 9);
		assert_int_equal(json_integer_value(json_object_get(st, "refused")), 0);
		assert_int_equal(image_bytes_served(&e.d), 0);   /* every byte came from the store */
		json_decref(st);
		free(fs);
		free(stats);
		free(prof);
	}
	e2e_stop(&e);
	s3_stop(&s);
	free(listing);
	free(cfg);
	free(bin);
	buf_release(&out);
}

/* ---- delta patches through the origin (issue 15) ---------------------------- */

/* Pipeline fw at version: app.bin from the shell command gen (hardware
 * HW), signed; with a 100 % rollout when rollout is set. */
static char *delta_yaml(const char *version, const char *gen, const char *deltas, int rollout)
{
	return xasprintf("name: fw\nstages:\n"
			 "  - name: build\n"
			 "    steps: [ { run: \"%s > app.bin\" } ]\n"
			 "    artifacts: [ { path: app.bin, name: app.bin, type: application, hardware: " HW " } ]\n"
			 "  - { name: release, kind: release, needs: [build], version: \"%s\", security_counter: 1, key: test%s }\n"
			 "%s",
			 gen, version, deltas,
			 rollout ? "  - name: canary\n    kind: rollout\n    needs: [release]\n"
				   "    steps: [ {percent: 100, hold: 1000h} ]\n    gates: [boots]\n"
				   "gates:\n  boots: { metric: boot_success_rate, min: 0.5, min_devices: 1000 }\n"
				 : "");
}

static const char *const delta_v1 = "seq 1 9000";
static const char *const delta_v2 = "seq 1 9000 | sed -e 's/^3000$/3000\\\\nnew code/' -e 's/^7777$/7778/'";

/* A device-API counter from /metrics (-1 when absent). */
static int64_t devapi_counter(struct daemon *d, const char *name)
{
	char *m = h_device_metrics(d, NULL), *pat = xasprintf("\n%s ", name), *p;
	int64_t v = -1;
	if (m && (p = strstr(m, pat)))
		v = strtoll(p + strlen(pat), NULL, 10);
	free(pat);
	free(m);
	return v;
}

/* The signed image of release `version` into DIR/file (otactl). */
static void release_image(struct daemon *d, const char *version, const char *file)
{
	struct buf out = BUF_INIT;
	char *otactl = h_bin("otactl"), *sql = xasprintf("SELECT run_id FROM releases WHERE version = '%s'", version);
	assert_int_equal(h_sh(&out, "cd %s && %s --url %s --token %s artifacts get %lld/release/" HW "/app.bin.signed.bin -o %s",
			      d->dir, otactl, d->url, d->token, (long long)h_sql_int(d, sql), file), 0);
	free(sql);
	free(otactl);
	buf_release(&out);
}

/* A check-in of device i as version: the answer's offer (new ref; NULL: none). */
static json_t *offer_for(struct e2e *e, int i, const char *version)
{
	json_t *ans = NULL, *o;
	char id[32];
	snprintf(id, sizeof(id), "dev-%04d", i);
	assert_int_equal(h_dev_post(&e->d, "/device/v1/checkin", e->cred[i],
				    json_pack("{ss ss ss ss ss si ss}", "device", id, "product", "fw", "hardware", HW,
					      "bootloader", "1.2.0", "version", version, "security_counter", 0, "slot",
					      "confirmed"),
				    &ans),
			 200);
	o = json_incref(json_object_get(ans, "offer"));
	json_decref(ans);
	if (json_is_null(o)) {
		json_decref(o);
		return NULL;
	}
	return o;
}

/* With kind s3, a patch is an object in the bucket like the image, and the
 * offer to a device on its base names a presigned URL of it: the bytes come
 * from the store (Range too), none from otacd, and rebuild the new image
 * with the real xdelta3 from the old one.  A device on another version gets
 * no patch URL at all. */
static void patches_are_published_to_s3_and_offered_as_presigned_urls(void **state)
{
	const char *const args[] = { "--local-agents", "1", NULL };
	char *bin = s3rver_bin(), *listing, *prefix, *y;
	struct s3srv s = { 0 };
	struct e2e e = { 0 };
	struct buf out = BUF_INIT, patch = BUF_INIT, tail = BUF_INIT;
	json_t *offer = NULL, *delta;
	const char *purl, *iurl, *psha;
	int64_t rel2;
	(void)state;
	NEED_S3RVER(bin);
	h_init(&e.d, NULL);
	s3_start(&s, bin, e.d.dir);
	dh_start_signing(&e.d, args,
			 "poll_interval: 1s\n"
			 "artifact_store: { backend: s3, endpoint: \"%s\", bucket: otacd, credentials_file: %s }\n"
			 "image_origin: { kind: s3, ttl: 600 }\n",
			 s.endpoint, s.creds);
	e.cred = h_register_devices(&e.d, "dev", 2);
	e.n = 2;
	y = delta_yaml("1.0.0", delta_v1, "", 0);
	assert_true(dh_release_of(&e.d, h_trigger(&e.d, y)) > 0);
	free(y);
	y = delta_yaml("1.1.0", delta_v2, ", deltas: { from: [1.0.0] }", 1);
	rel2 = dh_release_of(&e.d, h_trigger(&e.d, y));
	free(y);
	assert_true(rel2 > 0);
	for (int waited = 0; waited < 30000 && !offer; waited += 200)
		if (!(offer = offer_for(&e, 0, "1.0.0")))
			h_msleep(200);
	assert_non_null(offer);
	delta = json_object_get(offer, "delta");
	assert_non_null(delta);
	purl = json_string_value(json_object_get(delta, "url"));
	psha = json_string_value(json_object_get(delta, "sha256"));
	iurl = json_string_value(json_object_get(json_object_get(offer, "image"), "url"));
	print_message("patch url: %s\n", purl);
	/* both URLs presigned, each naming its own object in the bucket */
	prefix = xasprintf("%s/otacd/sha256/%s?", s.endpoint, psha);
	assert_true(!strncmp(purl, prefix, strlen(prefix)));
	assert_non_null(strstr(purl, "X-Amz-Signature="));
	free(prefix);
	prefix = xasprintf("%s/otacd/sha256/%s?",  s.endpoint,
			   json_string_value(json_object_get(json_object_get(offer, "image"), "sha256")));
	assert_true(!strncmp(iurl, prefix, strlen(prefix)));
	free(prefix);
	listing = bucket_listing(&s);
	assert_non_null(strstr(listing, psha));

	/* the patch from the store, whole and by Range; it rebuilds 1.1.0 */
	assert_int_equal(h_sh(&patch, "curl -sf '%s'", purl), 0);
	assert_int_equal(patch.len, (size_t)json_integer_value(json_object_get(delta, "size")));
	assert_int_equal(h_sh(&tail, "curl -sf -r 10- '%s'", purl), 0);
	assert_int_equal(tail.len, patch.len - 10);
	assert_memory_equal(tail.ptr, patch.ptr + 10, tail.len);
	release_image(&e.d, "1.0.0", "v1.img");
	assert_int_equal(h_sh(&out, "cd %s && curl -sf '%s' -o p.vcdiff && curl -sf '%s' -o v2.img && "
			      "test \"$(sha256sum < p.vcdiff | cut -c1-64)\" = %s && "
			      "xdelta3 -d -f -s v1.img p.vcdiff rebuilt.img && cmp rebuilt.img v2.img",
			      e.d.dir, purl, iurl, psha), 0);
	assert_int_equal(devapi_counter(&e.d, "otacd_delta_bytes_served_total"), 0);
	assert_int_equal(devapi_counter(&e.d, "otacd_image_bytes_served_total"), 0);
	json_decref(offer);

	/* a device on another version: the image, no patch */
	offer = offer_for(&e, 1, "0.9.0");
	assert_non_null(offer);
	assert_null(json_object_get(offer, "delta"));
	json_decref(offer);

	e2e_stop(&e);
	s3_stop(&s);
	free(listing);
	free(bin);
	buf_release(&out);
	buf_release(&patch);
	buf_release(&tail);
}

/* With kind cdn, real otacd-device processes on 1.0.0 take 1.1.0 as a patch
 * fetched by Range through nginx's proxy_cache: otacd sends the patch once
 * (the cache's one miss) and no image byte; the devices rebuild, verify,
 * test-boot and confirm. */
static void devices_apply_patches_fetched_through_the_cdn_cache(void **state)
{
	const char *const args[] = { "--local-agents", "1", NULL };
	char *bin = tool("OTACD_NGINX", "/usr/sbin/nginx"), *tokfile, *conf[2], *alog, *y, *psha, *pat;
	struct e2e e = { 0 };
	struct ngx n = { 0 };
	struct buf out = BUF_INIT;
	pid_t pids[2];
	int64_t rel2, psize;
	(void)state;
	NEED_NGINX(bin);
	h_init(&e.d, NULL);
	n.listen = h_free_listen();
	tokfile = xasprintf("%s/origin.token", e.d.dir);
	assert_int_equal(ota_write_file_atomic(tokfile, TOKEN "\n", strlen(TOKEN) + 1, 0600), 0);
	dh_start_signing(&e.d, args, "poll_interval: 1s\nimage_origin: { kind: cdn, url: \"http://%s/img/\", token_file: %s }\n",
			 n.listen, tokfile);
	ngx_start(&n, bin, e.d.dir, e.d.device_url);
	e.cred = h_register_devices(&e.d, "dev", 2);
	e.n = 2;
	y = delta_yaml("1.0.0", delta_v1, "", 0);
	assert_true(dh_release_of(&e.d, h_trigger(&e.d, y)) > 0);
	free(y);
	release_image(&e.d, "1.0.0", "v1.img");
	e.factory = xasprintf("%s/v1.img", e.d.dir);
	for (int i = 0; i < 2; i++) {
		conf[i] = device_setup(&e, i);
		pids[i] = dh_device_loop(conf[i]);
	}
	/* both devices known to run 1.0.0 before the release counts them */
	for (int waited = 0; waited < 30000 && devapi_counter(&e.d, "otacd_device_checkins_total") < 2; waited += 200)
		h_msleep(200);
	y = delta_yaml("1.1.0", delta_v2, ", deltas: { installed: 1 }", 1);
	rel2 = dh_release_of(&e.d, h_trigger(&e.d, y));
	free(y);
	assert_true(rel2 > 0);
	assert_int_equal(dh_fleet_wait(&e.d, rel2, "confirmed", 2, 90000), 2);
	for (int i = 0; i < 2; i++) {
		char *v, *log = xasprintf("%s.log", conf[i]);
		dh_stop(pids[i]);
		v = device_version(conf[i]);
		assert_string_equal(v, "1.1.0");
		assert_true(count_lines(log, "applying a delta") >= 1);
		free(v);
		free(log);
		free(conf[i]);
	}
	psha = h_sql_text(&e.d, "SELECT sha256 FROM artifacts WHERE name LIKE '%.vcdiff'");
	psize = h_sql_int(&e.d, "SELECT size FROM artifacts WHERE name LIKE '%.vcdiff'");
	alog = xasprintf("%s/access.log", n.dir);
	pat = xasprintf("/img/%s ", psha);
	/* what the devices' patch fetches cost on the wire: body bytes nginx
	 * sent for them (its log's last field) against the image's size */
	h_sh(&out, "awk '$1 == \"/img/%s\" { n += $4 } END { printf \"%%d\", n }' %s", psha, alog);
	print_message("nginx: %d patch requests, %d MISS, %d HIT, %s patch body bytes to 2 devices; otacd sent %lld patch"
		      " and %lld image bytes (patch %lld B, image %lld B)\n",
		      count_lines(alog, pat), count_lines(alog, " MISS "), count_lines(alog, " HIT "), buf_cstr(&out),
		      (long long)devapi_counter(&e.d, "otacd_delta_bytes_served_total"),
		      (long long)devapi_counter(&e.d, "otacd_image_bytes_served_total"), (long long)psize,
		      (long long)h_sql_int(&e.d, "SELECT size FROM artifacts WHERE name = 'release/" HW "/app.bin.signed.bin'"
					       " ORDER BY id DESC LIMIT 1"));
	assert_true(count_lines(alog, pat) >= 2);
	assert_int_equal(count_lines(alog, " MISS "), 1);   /* the patch, pulled once */
	assert_int_equal(devapi_counter(&e.d, "otacd_delta_bytes_served_total"), psize);
	assert_int_equal(devapi_counter(&e.d, "otacd_image_bytes_served_total"), 0);

	ngx_stop(&n);
	e2e_stop(&e);
	free(pat);
	free(alog);
	free(psha);
	free(tokfile);
	free(bin);
	buf_release(&out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(presign_matches_the_documented_sigv4_example),
		cmocka_unit_test(s3_host_header_drops_only_the_default_port),
		cmocka_unit_test(presigned_urls_fit_libotadevs_url_limit),
		cmocka_unit_test(presign_refuses_a_time_that_is_no_date),
		cmocka_unit_test(s3_error_code_keeps_only_the_letters_of_a_hostile_body),
		cmocka_unit_test(image_origin_config_is_checked),
		cmocka_unit_test(s3_store_keeps_deduplicates_and_checks_every_object),
		cmocka_unit_test(s3_store_sweeps_stale_spool_files_at_start_but_not_one_in_use),
		cmocka_unit_test(s3_store_refuses_wrong_credentials_with_a_clear_error),
		cmocka_unit_test(presigned_urls_serve_ranges_and_expire),
		cmocka_unit_test(s3_endpoint_with_a_prefix_signs_and_presigns_it_encoded_once),
		cmocka_unit_test(cdn_in_front_serves_every_device_from_its_cache_and_resumes_ranges),
		cmocka_unit_test(altered_bytes_from_the_origin_are_refused_by_the_device),
		cmocka_unit_test(releases_publish_to_s3_and_devices_fetch_presigned_urls),
		cmocka_unit_test(patches_are_published_to_s3_and_offered_as_presigned_urls),
		cmocka_unit_test(devices_apply_patches_fetched_through_the_cdn_cache),
	};
	cmocka_set_test_filter(getenv("ORIGIN_ONLY"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
