/*
 * httpc.c - the HTTP client under otacd-agent, otactl and the tests.
 *
 * Why: three programs speak otacd's HTTP API (docs/api.md) and all need the
 * same few things: a request with a bearer token and a capped response, a
 * JSON round trip, a streamed upload and a Server-Sent Events reader.
 *
 * How: each call builds a fresh curl easy handle (thread-safe without
 * sharing), collects the body into a capped struct buf and the headers of
 * the final response (a "HTTP/" status line starts a new block, so 100
 * Continue and redirects do not mix in).  The SSE reader does not buffer the
 * response: its write callback splits bytes into lines as they come, keeps
 * the incomplete tail, and dispatches an event on each blank line, as the
 * WHATWG event-stream rules say.  An optional abort flag (a SIGTERM
 * handler's) is checked from curl's progress callback so no transfer can
 * hold up shutdown for more than about a second.
 *
 * libcurl is reached through curlload.h (loaded on first use, so an idle
 * otacd does not map it): each function takes the table as cu; the public
 * ones say why when it cannot be loaded, the others get only handles it
 * made.
 */
#include "httpc.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "curlload.h"

#define HEADERS_MAX ((size_t)1 << 20)
#define SSE_LINE_MAX ((size_t)16 << 20)
#define CONNECT_TIMEOUT_MS 10000L

static volatile sig_atomic_t *abort_flag;
static char *cacert;   /* --cacert / $OTACD_CACERT, NULL: the system's CAs */

int httpc_global_init(void)
{
	const struct curlload *cu = curlload_get();
	const char *env = getenv("OTACD_CACERT");
	CURLcode c;

	if (!cu)
		return ota_error_set(OTA_ERROR, "%s", curlload_error());
	c = cu->global_init(CURL_GLOBAL_DEFAULT);
	if (c != CURLE_OK)
		return ota_error_set(OTA_ERROR, "curl_global_init: %s", cu->easy_strerror(c));
	if (env && *env && !cacert)
		httpc_set_cacert(env);
	return 0;
}

void httpc_set_cacert(const char *path)
{
	free(cacert);
	cacert = path && *path ? xstrdup(path) : NULL;
}

void httpc_global_cleanup(void)
{
	const struct curlload *cu = curlload_get();
	if (cu)
		cu->global_cleanup();
	free(cacert);
	cacert = NULL;
}

void httpc_set_abort_flag(volatile sig_atomic_t *flag)
{
	abort_flag = flag;
}

void httpc_response_init(struct httpc_response *r)
{
	r->status = 0;
	buf_init(&r->body, HTTPC_MAX_BODY);
	buf_init(&r->headers, HEADERS_MAX);
}

void httpc_response_release(struct httpc_response *r)
{
	buf_release(&r->body);
	buf_release(&r->headers);
	r->status = 0;
}

int httpc_response_header(char **out, const struct httpc_response *r, const char *name)
{
	const char *p = buf_cstr(&r->headers);
	size_t nlen = strlen(name);

	*out = NULL;
	while (*p) {
		const char *eol = strchr(p, '\n');
		const char *end = eol ? eol : p + strlen(p);
		if ((size_t)(end - p) > nlen && p[nlen] == ':' && !strncasecmp(p, name, nlen)) {
			const char *v = p + nlen + 1;
			while (v < end && (*v == ' ' || *v == '\t'))
				v++;
			while (end > v && isspace((unsigned char)end[-1]))
				end--;
			*out = xstrndup(v, (size_t)(end - v));
			return 0;
		}
		if (!eol)
			break;
		p = eol + 1;
	}
	return OTA_ENOTFOUND;
}

char *httpc_escape(const char *s)
{
	static const char hex[] = "0123456789ABCDEF";
	struct buf b = BUF_INIT;

	buf_put(&b, "", 0);
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (isalnum(*p) || *p == '-' || *p == '_' || *p == '.' || *p == '~') {
			buf_putc(&b, (char)*p);
		} else {
			char enc[3] = { '%', hex[*p >> 4], hex[*p & 15] };
			buf_put(&b, enc, 3);
		}
	}
	return buf_detach(&b);
}

const char *httpc_json_error(const json_t *answer)
{
	const json_t *e = json_is_object(answer) ? json_object_get(answer, "error") : NULL;
	return json_is_string(e) ? json_string_value(e) : NULL;
}

/* ---- plumbing shared by every request ------------------------------ */

struct xfer {
	struct httpc_response *resp;
	int too_big;
};

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	struct xfer *x = userdata;
	size_t n = size * nmemb;
	if (buf_put(&x->resp->body, ptr, n) < 0) {
		x->too_big = 1;
		return 0;
	}
	return n;
}

static size_t on_header(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	struct httpc_response *r = userdata;
	size_t n = size * nmemb;
	if (n >= 5 && !strncmp(ptr, "HTTP/", 5))
		buf_clear(&r->headers);
	if (buf_put(&r->headers, ptr, n) < 0)
		return 0;
	return n;
}

static int on_progress(void *p, curl_off_t dltotal, curl_off_t dlnow,
		       curl_off_t ultotal, curl_off_t ulnow)
{
	return abort_flag && *abort_flag ? 1 : 0;
}

/*
 * A handle with the options every call shares: method, URL, token, timeouts.
 * *hdrs receives the header list to free after the transfer.
 */
static CURL *easy_new_ex(struct curl_slist **hdrs, char *errbuf, const char *method,
			 const char *url, const char *token, const char *content_type,
			 long timeout_ms, const char *const *extra)
{
	const struct curlload *cu = curlload_get();
	CURL *h = cu->easy_init();
	struct curl_slist *l = NULL;

	if (!h)
		return NULL;
	errbuf[0] = '\0';
	cu->easy_setopt(h, CURLOPT_URL, url);
	cu->easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
	cu->easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	cu->easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
	cu->easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS,
			 timeout_ms > 0 && timeout_ms < CONNECT_TIMEOUT_MS ? timeout_ms : CONNECT_TIMEOUT_MS);
	cu->easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms > 0 ? timeout_ms : 0L);
	cu->easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
	cu->easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
	cu->easy_setopt(h, CURLOPT_USERAGENT, "otacd-httpc/1");
	/* http and https only, redirects never followed (and, should a caller
	 * ever turn them on, never to another scheme): no gopher://, file://,
	 * dict:// ... from a URL someone else wrote */
	cu->easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
	cu->easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
	cu->easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
	/* https: the peer and its host name always verified, TLS 1.2 at least */
	cu->easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
	cu->easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
	cu->easy_setopt(h, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
	if (cacert)
		cu->easy_setopt(h, CURLOPT_CAINFO, cacert);
	if (strcmp(method, "GET") && strcmp(method, "POST"))
		cu->easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
	if (!strcmp(method, "HEAD"))
		cu->easy_setopt(h, CURLOPT_NOBODY, 1L);
	if (token && *token) {
		char *auth = xasprintf("Authorization: Bearer %s", token);
		l = cu->slist_append(l, auth);
		/* The header copy inside curl is all that remains. */
		memset(auth, 0, strlen(auth));
		free(auth);
	}
	if (content_type) {
		char *ct = xasprintf("Content-Type: %s", content_type);
		l = cu->slist_append(l, ct);
		free(ct);
	}
	l = cu->slist_append(l, "Expect:");
	for (size_t i = 0; extra && extra[i]; i++)
		l = cu->slist_append(l, extra[i]);
	cu->easy_setopt(h, CURLOPT_HTTPHEADER, l);
	*hdrs = l;
	return h;
}

static CURL *easy_new(struct curl_slist **hdrs, char *errbuf, const char *method,
		      const char *url, const char *token, const char *content_type,
		      long timeout_ms)
{
	return easy_new_ex(hdrs, errbuf, method, url, token, content_type, timeout_ms, NULL);
}

/* The URL without its query, for error messages. */
static char *url_for_message(const char *url)
{
	return xstrndup(url, strcspn(url, "?"));
}

static int transfer_error(CURLcode c, const char *errbuf, const char *url, int too_big)
{
	const struct curlload *cu = curlload_get();
	char *u = url_for_message(url);
	int rc;

	if (too_big)
		rc = ota_error_set(OTA_ETOOBIG, "answer from %s is larger than %zu bytes", u, HTTPC_MAX_BODY);
	else if (c == CURLE_ABORTED_BY_CALLBACK)
		rc = ota_error_set(OTA_ERROR, "request to %s interrupted", u);
	else
		rc = ota_error_set(OTA_ERROR, "cannot reach %s: %s", u,
				   errbuf[0] ? errbuf : cu->easy_strerror(c));
	free(u);
	return rc;
}

static int perform(struct httpc_response *out, CURL *h, const char *url, const char *errbuf)
{
	const struct curlload *cu = curlload_get();
	struct xfer x = { out, 0 };
	CURLcode c;

	cu->easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
	cu->easy_setopt(h, CURLOPT_WRITEDATA, &x);
	cu->easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
	cu->easy_setopt(h, CURLOPT_HEADERDATA, out);
	c = cu->easy_perform(h);
	if (c != CURLE_OK)
		return transfer_error(c, errbuf, url, x.too_big);
	cu->easy_getinfo(h, CURLINFO_RESPONSE_CODE, &out->status);
	buf_put(&out->body, "", 0); /* body.ptr is never NULL after success */
	return 0;
}

int httpc_request(struct httpc_response *out, const char *method, const char *url,
		  const char *token, const char *content_type, const void *body,
		  size_t len, long timeout_ms)
{
	return httpc_request_ex(out, method, url, token, content_type, body, len, timeout_ms, NULL);
}

int httpc_request_ex(struct httpc_response *out, const char *method, const char *url,
		     const char *token, const char *content_type, const void *body,
		     size_t len, long timeout_ms, const char *const *headers)
{
	const struct curlload *cu = curlload_get();
	char errbuf[CURL_ERROR_SIZE];
	struct curl_slist *hdrs = NULL;
	CURL *h;
	int rc;

	httpc_response_init(out);
	if (!cu)
		return ota_error_set(OTA_ERROR, "%s", curlload_error());
	h = easy_new_ex(&hdrs, errbuf, method, url, token, content_type, timeout_ms, headers);
	if (!h) {
		rc = ota_error_set(OTA_ERROR, "curl_easy_init failed");
		goto out;
	}
	if (strcmp(method, "GET") && strcmp(method, "HEAD")) {
		cu->easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(body ? len : 0));
		cu->easy_setopt(h, CURLOPT_POSTFIELDS, body ? (const char *)body : "");
	}
	rc = perform(out, h, url, errbuf);
out:
	if (h)
		cu->easy_cleanup(h);
	cu->slist_free_all(hdrs);
	return rc;
}

int httpc_upload(struct httpc_response *out, const char *method, const char *url,
		 const char *token, const char *content_type, FILE *f, size_t size,
		 long timeout_ms)
{
	const struct curlload *cu = curlload_get();
	char errbuf[CURL_ERROR_SIZE];
	struct curl_slist *hdrs = NULL;
	CURL *h;
	int rc;

	httpc_response_init(out);
	if (!cu)
		return ota_error_set(OTA_ERROR, "%s", curlload_error());
	h = easy_new(&hdrs, errbuf, method, url, token,
		     content_type ? content_type : "application/octet-stream", timeout_ms);
	if (!h) {
		rc = ota_error_set(OTA_ERROR, "curl_easy_init failed");
		goto out;
	}
	cu->easy_setopt(h, CURLOPT_UPLOAD, 1L);
	cu->easy_setopt(h, CURLOPT_READDATA, f);
	cu->easy_setopt(h, CURLOPT_INFILESIZE_LARGE, (curl_off_t)size);
	rc = perform(out, h, url, errbuf);
out:
	if (h)
		cu->easy_cleanup(h);
	cu->slist_free_all(hdrs);
	return rc;
}

/* ---- download to a file -------------------------------------------- */

#define DOWNLOAD_ERRBODY_MAX ((size_t)64 << 10)
#define DOWNLOAD_STALL_S 60L

struct download {
	CURL *h;
	struct httpc_response *resp;
	FILE *f;
	size_t max;
	size_t written;
	int checked;          /* the status was looked at */
	int to_file;          /* a 2xx answer: the body goes to f */
	int too_big;
	int write_errno;
};

static size_t on_download(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	const struct curlload *cu = curlload_get();
	struct download *d = userdata;
	size_t n = size * nmemb;

	if (!d->checked) {
		long status = 0;
		cu->easy_getinfo(d->h, CURLINFO_RESPONSE_CODE, &status);
		d->to_file = status >= 200 && status < 300;
		d->checked = 1;
	}
	if (!d->to_file) {
		size_t room = DOWNLOAD_ERRBODY_MAX - d->resp->body.len;
		buf_put(&d->resp->body, ptr, n < room ? n : room);
		return n;
	}
	if (n > d->max - d->written) {
		d->too_big = 1;
		return 0;
	}
	if (fwrite(ptr, 1, n, d->f) != n) {
		d->write_errno = errno ? errno : EIO;
		return 0;
	}
	d->written += n;
	return n;
}

int httpc_download(struct httpc_response *out, const char *url, const char *token,
		   FILE *f, size_t max, long timeout_ms)
{
	const struct curlload *cu = curlload_get();
	struct download d = { NULL, out, f, max, 0, 0, 0, 0, 0 };
	char errbuf[CURL_ERROR_SIZE];
	struct curl_slist *hdrs = NULL;
	char *u = NULL;
	CURLcode c;
	CURL *h;
	int rc = 0;

	httpc_response_init(out);
	if (!cu)
		return ota_error_set(OTA_ERROR, "%s", curlload_error());
	h = easy_new(&hdrs, errbuf, "GET", url, token, NULL, timeout_ms);
	if (!h) {
		rc = ota_error_set(OTA_ERROR, "curl_easy_init failed");
		goto out;
	}
	d.h = h;
	cu->easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
	cu->easy_setopt(h, CURLOPT_LOW_SPEED_TIME, DOWNLOAD_STALL_S);
	cu->easy_setopt(h, CURLOPT_WRITEFUNCTION, on_download);
	cu->easy_setopt(h, CURLOPT_WRITEDATA, &d);
	cu->easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
	cu->easy_setopt(h, CURLOPT_HEADERDATA, out);
	c = cu->easy_perform(h);
	u = url_for_message(url);
	if (d.too_big) {
		rc = ota_error_set(OTA_ETOOBIG, "answer from %s is larger than %zu bytes", u, max);
		goto out;
	}
	if (d.write_errno) {
		rc = ota_error_set(OTA_ERROR, "cannot write the answer from %s: %s", u, strerror(d.write_errno));
		goto out;
	}
	if (c != CURLE_OK) {
		rc = transfer_error(c, errbuf, url, 0);
		goto out;
	}
	cu->easy_getinfo(h, CURLINFO_RESPONSE_CODE, &out->status);
	buf_put(&out->body, "", 0);
	if (fflush(f) != 0 || ferror(f))
		rc = ota_error_set(OTA_ERROR, "cannot write the answer from %s: %s", u, strerror(errno));
out:
	if (h)
		cu->easy_cleanup(h);
	cu->slist_free_all(hdrs);
	free(u);
	return rc;
}

int httpc_json(json_t **out, long *status, const char *method, const char *url,
	       const char *token, json_t *req, long timeout_ms)
{
	return httpc_json_ex(out, status, method, url, token, req, timeout_ms, NULL);
}

int httpc_json_ex(json_t **out, long *status, const char *method, const char *url,
		  const char *token, const json_t *req, long timeout_ms, const char *const *headers)
{
	struct httpc_response r;
	char *body = NULL;
	json_error_t jerr;
	int rc;

	*out = NULL;
	*status = 0;
	if (req)
		body = json_dumps(req, JSON_COMPACT);
	rc = httpc_request_ex(&r, method, url, token, body ? "application/json" : NULL,
			      body, body ? strlen(body) : 0, timeout_ms, headers);
	if (rc < 0)
		goto out;
	*status = r.status;
	if (r.body.len == 0)
		goto out;
	*out = json_loadb(r.body.ptr, r.body.len, JSON_DECODE_ANY, &jerr);
	if (!*out && r.status >= 200 && r.status < 300) {
		char *u = url_for_message(url);
		rc = ota_error_set(OTA_EINVAL, "invalid JSON from %s: %s", u, jerr.text);
		free(u);
	}
out:
	free(body);
	httpc_response_release(&r);
	return rc;
}

/* ---- Server-Sent Events -------------------------------------------- */

struct sse {
	CURL *h;
	int (*on_event)(const char *event, const char *id, const char *data, void *ctx);
	void *ctx;
	int checked;          /* status and content type looked at */
	long status;
	int not_stream;       /* 200 but not text/event-stream */
	struct buf errbody;   /* body of a non-200 answer */
	struct buf line;      /* incomplete line carried between chunks */
	int skip_lf;          /* the previous chunk ended in '\r' */
	struct buf data;
	struct buf event;
	struct buf id;
	int have_id;
	int have_data;
	int stop_rc;          /* non-zero: on_event asked to stop */
	int overflow;
};

static int sse_dispatch(struct sse *s)
{
	int rc = 0;

	if (s->have_data) {
		if (s->data.len && s->data.ptr[s->data.len - 1] == '\n')
			s->data.ptr[--s->data.len] = '\0';
		rc = s->on_event(s->event.len ? buf_cstr(&s->event) : "message",
				 s->have_id ? buf_cstr(&s->id) : NULL, buf_cstr(&s->data), s->ctx);
	}
	buf_clear(&s->data);
	buf_clear(&s->event);
	s->have_data = 0;
	return rc;
}

/* One complete line (without its terminator). */
static int sse_line(struct sse *s, const char *p, size_t n)
{
	const char *colon, *v;
	size_t flen, vlen;

	if (n == 0)
		return sse_dispatch(s);
	if (p[0] == ':')
		return 0;
	colon = memchr(p, ':', n);
	flen = colon ? (size_t)(colon - p) : n;
	v = colon ? colon + 1 : p + n;
	vlen = (size_t)(p + n - v);
	if (vlen && *v == ' ') {
		v++;
		vlen--;
	}
	if (flen == 4 && !memcmp(p, "data", 4)) {
		if (buf_put(&s->data, v, vlen) < 0 || buf_putc(&s->data, '\n') < 0)
			s->overflow = 1;
		s->have_data = 1;
	} else if (flen == 5 && !memcmp(p, "event", 5)) {
		buf_clear(&s->event);
		buf_put(&s->event, v, vlen);
	} else if (flen == 2 && !memcmp(p, "id", 2)) {
		if (!memchr(v, '\0', vlen)) {
			buf_clear(&s->id);
			buf_put(&s->id, v, vlen);
			s->have_id = 1;
		}
	}
	return 0;
}

static void sse_check_status(struct sse *s)
{
	const struct curlload *cu = curlload_get();
	char *ct = NULL;

	s->checked = 1;
	cu->easy_getinfo(s->h, CURLINFO_RESPONSE_CODE, &s->status);
	cu->easy_getinfo(s->h, CURLINFO_CONTENT_TYPE, &ct);
	if (s->status == 200 && (!ct || strncasecmp(ct, "text/event-stream", 17)))
		s->not_stream = 1;
}

static size_t sse_write(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	struct sse *s = userdata;
	size_t n = size * nmemb, start = 0;

	if (!s->checked)
		sse_check_status(s);
	if (s->status != 200 || s->not_stream) {
		buf_put(&s->errbody, ptr, n); /* capped; the tail does not matter */
		return n;
	}
	if (s->skip_lf && n && ptr[0] == '\n')
		start = 1;
	s->skip_lf = 0;
	for (size_t i = start; i < n; i++) {
		int rc;
		if (ptr[i] != '\n' && ptr[i] != '\r')
			continue;
		if (s->line.len) {
			if (buf_put(&s->line, ptr + start, i - start) < 0) {
				s->overflow = 1;
				return 0;
			}
			rc = sse_line(s, s->line.ptr, s->line.len);
			buf_clear(&s->line);
		} else {
			rc = sse_line(s, ptr + start, i - start);
		}
		if (ptr[i] == '\r') {
			if (i + 1 < n && ptr[i + 1] == '\n')
				i++;
			else if (i + 1 == n)
				s->skip_lf = 1;
		}
		start = i + 1;
		if (rc != 0) {
			s->stop_rc = rc;
			return 0;
		}
		if (s->overflow)
			return 0;
	}
	if (start < n && buf_put(&s->line, ptr + start, n - start) < 0) {
		s->overflow = 1;
		return 0;
	}
	return n;
}

int httpc_sse(const char *url, const char *token,
	      int (*on_event)(const char *event, const char *id, const char *data, void *ctx),
	      void *ctx, long timeout_ms)
{
	const struct curlload *cu = curlload_get();
	char errbuf[CURL_ERROR_SIZE];
	struct curl_slist *hdrs = NULL;
	struct sse s;
	CURLcode c;
	CURL *h;
	int rc = 0;

	if (!cu)
		return ota_error_set(OTA_ERROR, "%s", curlload_error());
	memset(&s, 0, sizeof(s));
	s.on_event = on_event;
	s.ctx = ctx;
	buf_init(&s.errbody, 64 * 1024);
	buf_init(&s.line, SSE_LINE_MAX);
	buf_init(&s.data, SSE_LINE_MAX);
	buf_init(&s.event, 256);
	buf_init(&s.id, 256);

	h = easy_new(&hdrs, errbuf, "GET", url, token, NULL, timeout_ms);
	if (!h) {
		rc = ota_error_set(OTA_ERROR, "curl_easy_init failed");
		goto out;
	}
	s.h = h;
	hdrs = cu->slist_append(hdrs, "Accept: text/event-stream");
	cu->easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
	cu->easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
	cu->easy_setopt(h, CURLOPT_LOW_SPEED_TIME, 45L);
	cu->easy_setopt(h, CURLOPT_WRITEFUNCTION, sse_write);
	cu->easy_setopt(h, CURLOPT_WRITEDATA, &s);
	c = cu->easy_perform(h);
	if (s.stop_rc) {
		rc = s.stop_rc > 0 ? 0 : s.stop_rc;
		goto out;
	}
	if (!s.checked && c == CURLE_OK)
		sse_check_status(&s);
	if (s.checked && (s.status != 200 || s.not_stream)) {
		json_t *j = json_loadb(buf_cstr(&s.errbody), s.errbody.len, JSON_DECODE_ANY, NULL);
		const char *msg = httpc_json_error(j);
		char *u = url_for_message(url);
		int code = s.status == 401 || s.status == 403 ? OTA_EAUTH
			 : s.status == 404 ? OTA_ENOTFOUND : OTA_EINVAL;
		if (s.not_stream && s.status == 200)
			rc = ota_error_set(OTA_EINVAL, "%s did not answer with an event stream", u);
		else
			rc = ota_error_set(code, "%s: HTTP %ld%s%s", u, s.status,
					   msg ? ": " : "", msg ? msg : "");
		free(u);
		json_decref(j);
		goto out;
	}
	if (s.overflow) {
		char *u = url_for_message(url);
		rc = ota_error_set(OTA_ETOOBIG, "event from %s is larger than %zu bytes", u, SSE_LINE_MAX);
		free(u);
		goto out;
	}
	if (c != CURLE_OK) {
		rc = transfer_error(c, errbuf, url, 0);
		goto out;
	}
	/* The server closed the stream; a last event without its blank line
	 * is dropped, as the event-stream rules say. */
out:
	if (h)
		cu->easy_cleanup(h);
	cu->slist_free_all(hdrs);
	buf_release(&s.errbody);
	buf_release(&s.line);
	buf_release(&s.data);
	buf_release(&s.event);
	buf_release(&s.id);
	return rc;
}
