/*
 * api_forward.c - a follower's write sent on to the leader (issue 16).
 *
 * api_forward.h says what passes and why the hop gains no trust.  How it
 * works: the holder string is checked (api_forward_leader_check(), curl's
 * URL parser plus our own rules), the target URL is that base plus the
 * request's path and query encoded again, and one libcurl easy handle
 * from a pool (so the connection to the leader is kept alive between
 * forwards) sends the request with an explicit header list: every header
 * curl would add by itself (Content-Type for a body, Accept, Expect) is
 * removed unless the client sent it.  No redirect is followed, only http
 * and https are spoken, the answer is capped, and the whole hop has a
 * deadline.  The answer's headers arrive through a header callback that
 * keeps only the relayed ones.
 *
 * A forward is a job: job_prepare() reads everything it needs from the
 * client's request on the request's thread (libmicrohttpd's connection is
 * not touched elsewhere), job_perform() is the hop, on any thread, and
 * job_end() hands the answer over.  api_forward() runs the three in a row;
 * api_forward_begin() suspends the connection and runs job_perform() on a
 * detached thread, which resumes the connection as its last touch of the
 * job: from then on the job belongs to the connection's handler.
 * Thread ownership: struct api_fwd's pool and counters under its mutex;
 * a job to its thread until the resume, then to the handler.
 */
#include "api_forward.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "../../common/curlload.h"
#include "../../common/log.h"

/* Idle handles kept, each with its connection to the leader: a handle
 * given back to a full pool is freed and its connection closed, so the
 * pool must cover the forwards in flight at once (one per client request
 * waiting on a follower).  At 8, a follower behind haproxy with 64 device
 * connections opened a new TCP connection for about half of its forwards
 * (bench/fleet_scale.sh, docs/benchmarks.md). */
#define POOL_MAX 64

struct api_fwd {
	pthread_mutex_t mu;
	pthread_cond_t idle_cond;    /* inflight went down */
	CURL *idle[POOL_MAX];
	int nidle;
	int inflight;                /* jobs on threads of their own */
	int stopping;                /* api_fwd_drain(): abort, take no more */
	long connect_timeout_ms, timeout_ms;
	char *cacert;
};

/* The client's headers that go to the leader, as they are. */
static const char *const forwarded[] = {
	"Authorization", "Idempotency-Key", "Content-Type", "Accept", "User-Agent",
	"X-GitHub-Event", "X-GitHub-Delivery", "X-Hub-Signature-256",
	"X-Gitlab-Event", "X-Gitlab-Event-UUID", "X-Gitlab-Token",
	"X-Gitea-Event", "X-Gitea-Delivery", "X-Gitea-Signature",
	"X-Forgejo-Event", "X-Forgejo-Delivery", "X-Forgejo-Signature",
	"X-Device-Id", /* the device API's downloads and PKI reads: the device's claim, checked by the leader */
};

const char *const api_fwd_relayed[API_FWD_RELAYED] = {
	"Content-Type", "Retry-After", "Location", "Cache-Control", "WWW-Authenticate", "Idempotent-Replayed",
	"X-Commit", "X-Sha256",
};

int api_fwd_new(struct api_fwd **out, const struct api_fwd_config *cfg)
{
	struct api_fwd *f = xcalloc(1, sizeof(*f));

	pthread_mutex_init(&f->mu, NULL);
	pthread_cond_init(&f->idle_cond, NULL);
	f->connect_timeout_ms = cfg && cfg->connect_timeout_ms > 0 ? cfg->connect_timeout_ms : 1000;
	f->timeout_ms = cfg && cfg->timeout_ms > 0 ? cfg->timeout_ms : 75000;
	f->cacert = cfg && cfg->cacert ? xstrdup(cfg->cacert) : NULL;
	*out = f;
	return 0;
}

void api_fwd_free(struct api_fwd *f)
{
	if (!f)
		return;
	api_fwd_drain(f);
	for (int i = 0; i < f->nidle; i++)
		curlload_get()->easy_cleanup(f->idle[i]);
	pthread_mutex_destroy(&f->mu);
	pthread_cond_destroy(&f->idle_cond);
	free(f->cacert);
	free(f);
}

int api_fwd_cacert_check(const char *path)
{
	FILE *fp = fopen(path, "r");
	X509 *x;
	int n = 0, rc = 0;

	if (!fp)
		return ota_error_set(OTA_EINVAL, "forward_ca %s: %s", path, strerror(errno));
	ERR_clear_error();
	while ((x = PEM_read_X509(fp, NULL, NULL, NULL))) {
		n++;
		X509_free(x);
	}
	/* the loop ends at the file's end (PEM_R_NO_START_LINE) or at a
	 * block that does not parse */
	if (ERR_GET_REASON(ERR_peek_last_error()) != PEM_R_NO_START_LINE)
		rc = ota_error_set(OTA_EINVAL, "forward_ca %s: certificate %d is not PEM X.509", path, n + 1);
	else if (n == 0)
		rc = ota_error_set(OTA_EINVAL, "forward_ca %s: no PEM certificate in it", path);
	ERR_clear_error();
	fclose(fp);
	return rc;
}

static CURL *handle_take(struct api_fwd *f, const struct curlload *cu)
{
	CURL *h = NULL;
	pthread_mutex_lock(&f->mu);
	if (f->nidle > 0)
		h = f->idle[--f->nidle];
	pthread_mutex_unlock(&f->mu);
	if (h)
		cu->easy_reset(h);
	else
		h = cu->easy_init();
	return h;
}

static void handle_give(struct api_fwd *f, const struct curlload *cu, CURL *h)
{
	pthread_mutex_lock(&f->mu);
	if (f->nidle < POOL_MAX) {
		f->idle[f->nidle++] = h;
		h = NULL;
	}
	pthread_mutex_unlock(&f->mu);
	if (h)
		cu->easy_cleanup(h);
}

/* ---- the leader's address ------------------------------------------------ */

static int url_part_absent(const struct curlload *cu, CURLU *u, CURLUPart part, CURLUcode absent)
{
	char *v = NULL;
	CURLUcode rc = cu->url_get(u, part, &v, 0);
	cu->free(v);
	return rc == absent;
}

int api_forward_leader_check(const char *holder, char *base, size_t size)
{
	const struct curlload *cu = curlload_get();
	CURLU *u = NULL;
	char *scheme = NULL, *host = NULL, *port = NULL, *path = NULL;
	size_t n = holder ? strlen(holder) : 0;
	int rc = OTA_EINVAL;

	if (!holder || !*holder)
		return ota_error_set(OTA_EINVAL, "no leader is recorded");
	if (n > 255)
		return ota_error_set(OTA_EINVAL, "the leader's address is longer than 255 bytes");
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)holder[i] < '!' || (unsigned char)holder[i] > '~' || holder[i] == '%' ||
		    holder[i] == '\\')
			return ota_error_set(OTA_EINVAL, "the leader's address has a byte that is not allowed at %zu", i);
	if (strncmp(holder, "http://", 7) != 0 && strncmp(holder, "https://", 8) != 0)
		return ota_error_set(OTA_EINVAL, "the leader's address is not http:// or https://");
	if (!cu)
		return ota_error_set(OTA_ERROR, "%s", curlload_error());
	if (!(u = cu->url()) || cu->url_set(u, CURLUPART_URL, holder, 0) != CURLUE_OK) {
		ota_error_set(OTA_EINVAL, "the leader's address is not a URL");
		goto out;
	}
	if (!url_part_absent(cu, u, CURLUPART_USER, CURLUE_NO_USER) ||
	    !url_part_absent(cu, u, CURLUPART_PASSWORD, CURLUE_NO_PASSWORD) ||
	    !url_part_absent(cu, u, CURLUPART_OPTIONS, CURLUE_NO_OPTIONS) ||
	    !url_part_absent(cu, u, CURLUPART_QUERY, CURLUE_NO_QUERY) ||
	    !url_part_absent(cu, u, CURLUPART_FRAGMENT, CURLUE_NO_FRAGMENT) ||
	    !url_part_absent(cu, u, CURLUPART_ZONEID, CURLUE_NO_ZONEID)) {
		ota_error_set(OTA_EINVAL, "the leader's address has a user, options, query or fragment");
		goto out;
	}
	if (cu->url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
	    cu->url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK || !*host ||
	    cu->url_get(u, CURLUPART_PORT, &port, 0) != CURLUE_OK ||
	    cu->url_get(u, CURLUPART_PATH, &path, 0) != CURLUE_OK) {
		ota_error_set(OTA_EINVAL, "the leader's address must be http(s)://HOST:PORT");
		goto out;
	}
	if (strcmp(path, "/") != 0 && *path) {
		ota_error_set(OTA_EINVAL, "the leader's address has a path");
		goto out;
	}
	if (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0) {
		ota_error_set(OTA_EINVAL, "the leader's address is not http:// or https://");
		goto out;
	}
	if ((size_t)snprintf(base, size, "%s://%s:%s", scheme, host, port) >= size) {
		ota_error_set(OTA_EINVAL, "the leader's address is too long");
		goto out;
	}
	rc = 0;
out:
	cu->free(scheme);
	cu->free(host);
	cu->free(port);
	cu->free(path);
	if (u)
		cu->url_cleanup(u);
	return rc;
}

/* ---- the answer's headers -------------------------------------------------- */

void api_forward_headers_release(struct api_fwd_headers *h)
{
	for (int i = 0; i < API_FWD_RELAYED; i++) {
		free(h->value[i]);
		h->value[i] = NULL;
	}
}

void api_forward_header_line(struct api_fwd_headers *h, const char *line, size_t len)
{
	const char *colon, *v, *end = line + len;

	if (len >= 5 && !memcmp(line, "HTTP/", 5)) {
		/* a new answer (after 100 Continue, say): its headers only */
		api_forward_headers_release(h);
		return;
	}
	while (end > line && (end[-1] == '\n' || end[-1] == '\r'))
		end--;
	colon = memchr(line, ':', (size_t)(end - line));
	if (!colon)
		return;
	for (v = colon + 1; v < end && (*v == ' ' || *v == '\t'); v++)
		;
	while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
		end--;
	if (end - v > 1024 || end == v)
		return;
	for (const char *p = v; p < end; p++)
		if ((unsigned char)*p < ' ' || (unsigned char)*p > '~')
			return;
	for (int i = 0; i < API_FWD_RELAYED; i++) {
		size_t n = strlen(api_fwd_relayed[i]);
		if ((size_t)(colon - line) == n && !strncasecmp(line, api_fwd_relayed[i], n)) {
			free(h->value[i]);
			h->value[i] = xmalloc((size_t)(end - v) + 1);
			memcpy(h->value[i], v, (size_t)(end - v));
			h->value[i][end - v] = '\0';
			return;
		}
	}
}

/* ---- the request ------------------------------------------------------------ */

int api_forward_seen(struct MHD_Connection *conn)
{
	return MHD_lookup_connection_value(conn, MHD_HEADER_KIND, API_FWD_MARKER) != NULL;
}

/* Percent-encode the decoded path again: every byte but unreserved ones
 * and '/'. */
static void put_path(struct buf *b, const char *path)
{
	static const char hex[] = "0123456789ABCDEF";
	for (const unsigned char *p = (const unsigned char *)path; *p; p++) {
		if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '-' ||
		    *p == '.' || *p == '_' || *p == '~' || *p == '/')
			buf_putc(b, (char)*p);
		else {
			buf_putc(b, '%');
			buf_putc(b, hex[*p >> 4]);
			buf_putc(b, hex[*p & 15]);
		}
	}
}

struct query_ctx {
	const struct curlload *cu;
	struct buf *b;
	int n;
};

static enum MHD_Result put_arg(void *cls, enum MHD_ValueKind kind, const char *key, size_t key_size,
			       const char *value, size_t value_size)
{
	struct query_ctx *q = cls;
	char *k = q->cu->easy_escape(NULL, key, (int)key_size), *v = NULL;

	(void)kind;
	buf_putc(q->b, q->n++ ? '&' : '?');
	buf_puts(q->b, k ? k : "");
	if (value) {
		v = q->cu->easy_escape(NULL, value_size ? value : "", (int)value_size);
		buf_putc(q->b, '=');
		buf_puts(q->b, v ? v : "");
	}
	q->cu->free(k);
	q->cu->free(v);
	return MHD_YES;
}

static int header_value_ok(const char *v)
{
	if (!v || !*v)
		return 0;
	for (; *v; v++)
		if (((unsigned char)*v < ' ' && *v != '\t') || (unsigned char)*v == 127)
			return 0;
	return 1;
}

static struct curl_slist *add(const struct curlload *cu, struct curl_slist *l, const char *name, const char *value)
{
	char *line = value ? xasprintf("%s: %s", name, value) : xasprintf("%s:", name);
	struct curl_slist *n = cu->slist_append(l, line);
	free(line);
	return n ? n : l;
}

/* The client's address, for X-Forwarded-For and Forwarded. */
static void client_address(struct MHD_Connection *conn, char *ip, size_t size, int *v6)
{
	const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
	const struct sockaddr *sa = ci ? ci->client_addr : NULL;

	snprintf(ip, size, "unknown");
	*v6 = 0;
	if (sa && sa->sa_family == AF_INET)
		inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, ip, (socklen_t)size);
	else if (sa && sa->sa_family == AF_INET6) {
		inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, ip, (socklen_t)size);
		*v6 = 1;
	}
}

static struct curl_slist *request_headers(const struct curlload *cu, const struct api_fwd_req *q)
{
	struct curl_slist *l = NULL;
	char ip[INET6_ADDRSTRLEN + 1], *fwd;
	int v6;

	for (size_t i = 0; i < sizeof(forwarded) / sizeof(forwarded[0]); i++) {
		const char *v = MHD_lookup_connection_value(q->conn, MHD_HEADER_KIND, forwarded[i]);
		if (header_value_ok(v))
			l = add(cu, l, forwarded[i], v);
		else if (i == 2 || i == 3) /* Content-Type, Accept: not curl's own */
			l = add(cu, l, forwarded[i], NULL);
	}
	l = add(cu, l, "Expect", NULL);
	if (q->request_id && header_value_ok(q->request_id))
		l = add(cu, l, "X-Request-Id", q->request_id);
	client_address(q->conn, ip, sizeof(ip), &v6);
	l = add(cu, l, "X-Forwarded-For", ip);
	fwd = xasprintf(v6 ? "for=\"[%s]\"" : "for=%s", ip);
	l = add(cu, l, "Forwarded", fwd);
	free(fwd);
	for (const char *const *e = q->extra; e && *e; e++) {
		struct curl_slist *n = cu->slist_append(l, *e);
		l = n ? n : l;
	}
	return add(cu, l, API_FWD_MARKER, "1");
}

int api_forward_spool(const char *dir, int *fd)
{
	char *path;

	*fd = -1;
#ifdef O_TMPFILE
	*fd = open(dir, O_TMPFILE | O_RDWR | O_EXCL | O_CLOEXEC, 0600);
	if (*fd >= 0)
		return 0;
#endif
	/* a filesystem without O_TMPFILE: a name for an instant */
	path = xasprintf("%s/.fwd-spool-XXXXXX", dir);
	/* mode 0600 whatever the umask (mkostemp's own); no umask() here:
	 * it is the process's, and other threads make files meanwhile */
	*fd = mkostemp(path, O_CLOEXEC);
	if (*fd >= 0)
		unlink(path);
	free(path);
	if (*fd < 0)
		return ota_error_set(OTA_ERROR, "cannot make a spool file in %s: %s", dir, strerror(errno));
	return 0;
}

static int write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

struct answer {
	struct buf body;
	struct api_fwd_headers h;
	int too_big;
	int spool;                   /* API_FWD_SPOOL_ANSWER: the body goes here */
	uint64_t spooled, max;
	int spool_failed;
};

static size_t on_body(char *p, size_t size, size_t n, void *cls)
{
	struct answer *a = cls;
	if (a->spool >= 0) {
		if (a->spooled + size * n > a->max) {
			a->too_big = 1;
			return 0;
		}
		if (write_all(a->spool, p, size * n) < 0) {
			a->spool_failed = errno ? errno : EIO;
			return 0;
		}
		a->spooled += size * n;
		return size * n;
	}
	if (buf_put(&a->body, p, size * n) < 0) {
		a->too_big = 1;
		return 0;
	}
	return size * n;
}

/* The body of an API_FWD_BODY_FD job, read from its file. */
struct body_file {
	int fd;
	uint64_t off, len;
};

static size_t on_read(char *p, size_t size, size_t n, void *cls)
{
	struct body_file *bf = cls;
	size_t want = size * n;
	ssize_t r;

	if (bf->off >= bf->len)
		return 0;
	if (want > bf->len - bf->off)
		want = (size_t)(bf->len - bf->off);
	do
		r = pread(bf->fd, p, want, (off_t)bf->off);
	while (r < 0 && errno == EINTR);
	if (r <= 0)
		return CURL_READFUNC_ABORT; /* the file is shorter than it said: the leader sees a cut body */
	bf->off += (uint64_t)r;
	return (size_t)r;
}

static size_t on_header(char *p, size_t size, size_t n, void *cls)
{
	struct answer *a = cls;
	api_forward_header_line(&a->h, p, size * n);
	return size * n;
}

/* This instance's own answer: a JSON error (with Retry-After: 1 on 503). */
static int own_answer(unsigned code, unsigned *status, struct MHD_Response **resp, int rc)
{
	json_t *j = json_pack("{ss}", "error", ota_error_last());
	char *text = json_dumps(j, JSON_COMPACT);

	json_decref(j);
	if (!text)
		text = xstrdup("{}");
	ota_log(code == MHD_HTTP_CONTENT_TOO_LARGE ? OTA_LOG_INFO : OTA_LOG_WARN, "forward: %u: %s", code,
		ota_error_last());
	*resp = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
	MHD_add_response_header(*resp, "Content-Type", "application/json");
	MHD_add_response_header(*resp, "Cache-Control", "no-store");
	if (code == MHD_HTTP_SERVICE_UNAVAILABLE)
		MHD_add_response_header(*resp, "Retry-After", "1");
	*status = code;
	return rc;
}

static int method_ok(const char *m, unsigned flags)
{
	if (m && !strcmp(m, "GET")) /* a job's reads, spooled; the device API's small reads */
		return (flags & (API_FWD_SPOOL_ANSWER | API_FWD_READ)) != 0;
	return m && (!strcmp(m, "POST") || !strcmp(m, "PUT") || !strcmp(m, "PATCH") || !strcmp(m, "DELETE"));
}

struct api_fwd_job {
	struct api_fwd *f;
	struct MHD_Connection *conn;
	char base[300];
	struct buf url;
	struct curl_slist *hdrs;
	char method[16];
	const char *body;            /* the caller's, kept until the job ends */
	size_t len;
	unsigned flags;              /* api_fwd_stream's */
	int body_fd;                 /* the caller's, kept open until the job ends */
	char *spool_dir;
	uint64_t max_answer;
	long timeout_ms;
	struct buf tail;             /* api_fwd_req's, copied */
	unsigned status;             /* the answer, once decided */
	struct MHD_Response *resp;
	int rc;
};

static void job_free(struct api_fwd_job *job)
{
	if (!job)
		return;
	if (job->hdrs)
		curlload_get()->slist_free_all(job->hdrs);
	if (job->resp)
		MHD_destroy_response(job->resp);
	buf_release(&job->url);
	buf_release(&job->tail);
	free(job->spool_dir);
	free(job);
}

/* Everything read from the client's request, on its thread: 0 and the job
 * ready to send, or 1 with the job's answer decided here (413, 503). */
static int job_prepare(struct api_fwd *f, const struct api_fwd_req *q, const struct api_fwd_stream *s,
		       struct api_fwd_job **out)
{
	static const struct api_fwd_stream none = { 0, -1, NULL, 0 };
	const struct curlload *cu = curlload_get();
	struct api_fwd_job *job = xcalloc(1, sizeof(*job));
	struct query_ctx qc = { cu, &job->url, 0 };
	size_t max = q->max_body ? q->max_body : API_FWD_MAX_BODY;
	int rc;

	if (!s)
		s = &none;
	*out = job;
	job->f = f;
	job->conn = q->conn;
	/* uncapped: libmicrohttpd's connection memory (64 KiB in otacd) bounds
	 * the path and query; checked below, so nothing is cut silently */
	buf_init(&job->url, BUF_NOLIMIT);
	if (!method_ok(q->method, s->flags) || ((s->flags & API_FWD_SPOOL_ANSWER) && !s->spool_dir) ||
	    ((s->flags & API_FWD_BODY_FD) && s->body_fd < 0)) {
		ota_error_set(OTA_EINVAL, "%s is a read: reads are served here, never forwarded", q->method);
		job->rc = own_answer(MHD_HTTP_INTERNAL_SERVER_ERROR, &job->status, &job->resp, OTA_EINVAL);
		return 1;
	}
	if (q->len > max) {
		ota_error_set(OTA_ETOOBIG, "request body larger than %zu bytes", max);
		job->rc = own_answer(MHD_HTTP_CONTENT_TOO_LARGE, &job->status, &job->resp, OTA_ETOOBIG);
		return 1;
	}
	if (api_forward_seen(q->conn)) {
		ota_error_set(OTA_ECONFLICT, "this instance does not lead and the request was forwarded to it already:"
					     " leadership is changing; retry");
		job->rc = own_answer(MHD_HTTP_SERVICE_UNAVAILABLE, &job->status, &job->resp, OTA_ECONFLICT);
		return 1;
	}
	if ((rc = api_forward_leader_check(q->leader, job->base, sizeof(job->base))) < 0) {
		char why[256];
		snprintf(why, sizeof(why), "%s", ota_error_last()); /* not formatted from the slot it writes */
		ota_error_set(rc, "this instance does not lead and cannot forward: %s; retry", why);
		job->rc = own_answer(MHD_HTTP_SERVICE_UNAVAILABLE, &job->status, &job->resp, rc);
		return 1;
	}
	buf_puts(&job->url, job->base);
	put_path(&job->url, q->url && *q->url == '/' ? q->url : "/");
	MHD_get_connection_values_n(q->conn, MHD_GET_ARGUMENT_KIND, put_arg, &qc);
	if (job->url.len > API_FWD_MAX_URL) {
		ota_error_set(OTA_ETOOBIG, "the request's path and query are longer than %d bytes once encoded",
			      API_FWD_MAX_URL);
		job->rc = own_answer(MHD_HTTP_URI_TOO_LONG, &job->status, &job->resp, OTA_ETOOBIG);
		return 1;
	}
	job->hdrs = request_headers(cu, q);
	snprintf(job->method, sizeof(job->method), "%s", q->method);
	job->body = q->body;
	job->len = q->len;
	job->flags = s->flags;
	job->body_fd = s->flags & API_FWD_BODY_FD ? s->body_fd : -1;
	job->spool_dir = s->flags & API_FWD_SPOOL_ANSWER ? xstrdup(s->spool_dir) : NULL;
	job->max_answer = s->max_answer ? s->max_answer : API_FWD_MAX_ANSWER;
	job->timeout_ms = q->timeout_ms > 0 ? q->timeout_ms : f->timeout_ms;
	buf_init(&job->tail, BUF_NOLIMIT);
	if (q->tail)
		buf_put(&job->tail, q->tail, q->tail_len);
	return 0;
}

static int on_progress(void *cls, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow)
{
	const struct api_fwd *f = cls;
	(void)dltotal;
	(void)dlnow;
	(void)ultotal;
	(void)ulnow;
	return __atomic_load_n(&f->stopping, __ATOMIC_RELAXED);
}

/* The hop itself: any thread; sets the job's answer. */
static void job_perform(struct api_fwd_job *job)
{
	const struct curlload *cu = curlload_get();
	struct api_fwd *f = job->f;
	char errbuf[CURL_ERROR_SIZE] = "";
	struct answer a = { BUF_INIT, { { 0 } }, 0, -1, 0, job->max_answer, 0 };
	struct body_file bf = { job->body_fd, 0, job->len };
	CURL *h;
	CURLcode cc;
	long code = 0;

	if ((job->flags & API_FWD_SPOOL_ANSWER) && api_forward_spool(job->spool_dir, &a.spool) < 0) {
		job->rc = own_answer(MHD_HTTP_SERVICE_UNAVAILABLE, &job->status, &job->resp, OTA_ERROR);
		return;
	}
	if (!(h = handle_take(f, cu))) {
		ota_error_set(OTA_ENOMEM, "no curl handle; retry");
		job->rc = own_answer(MHD_HTTP_SERVICE_UNAVAILABLE, &job->status, &job->resp, OTA_ENOMEM);
		if (a.spool >= 0)
			close(a.spool);
		return;
	}
	buf_init(&a.body, API_FWD_MAX_ANSWER);
	cu->easy_setopt(h, CURLOPT_URL, buf_cstr(&job->url));
	cu->easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
	cu->easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	cu->easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
	cu->easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
	cu->easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, f->connect_timeout_ms);
	if (job->flags & API_FWD_SPOOL_ANSWER) {
		/* an answer of unknown size (an artifact): no total deadline,
		 * but a hop that stalls is cut */
		cu->easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1024L);
		cu->easy_setopt(h, CURLOPT_LOW_SPEED_TIME, 60L);
	} else if (job->flags & API_FWD_BODY_FD) {
		/* the deadline grows with the body: at least 1 MB/s to the leader */
		cu->easy_setopt(h, CURLOPT_TIMEOUT_MS, job->timeout_ms + (long)(job->len / 1000));
	} else {
		cu->easy_setopt(h, CURLOPT_TIMEOUT_MS, job->timeout_ms);
	}
	cu->easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
	cu->easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
	cu->easy_setopt(h, CURLOPT_XFERINFODATA, f);
	cu->easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
	cu->easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
	if (f->cacert)
		cu->easy_setopt(h, CURLOPT_CAINFO, f->cacert);
	if (!strcmp(job->method, "GET")) {
		cu->easy_setopt(h, CURLOPT_HTTPGET, 1L);
	} else if (job->flags & API_FWD_BODY_FD) {
		/* POST's machinery with the route's method: Content-Length from
		 * the spool's size, the bytes read from it as curl sends */
		cu->easy_setopt(h, CURLOPT_CUSTOMREQUEST, job->method);
		cu->easy_setopt(h, CURLOPT_POST, 1L);
		cu->easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)job->len);
		cu->easy_setopt(h, CURLOPT_READFUNCTION, on_read);
		cu->easy_setopt(h, CURLOPT_READDATA, &bf);
	} else {
		cu->easy_setopt(h, CURLOPT_CUSTOMREQUEST, job->method);
		cu->easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)job->len);
		cu->easy_setopt(h, CURLOPT_POSTFIELDS, job->body ? job->body : "");
	}
	cu->easy_setopt(h, CURLOPT_HTTPHEADER, job->hdrs);
	cu->easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
	cu->easy_setopt(h, CURLOPT_WRITEDATA, &a);
	cu->easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
	cu->easy_setopt(h, CURLOPT_HEADERDATA, &a);

	cc = cu->easy_perform(h);
	cu->easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
	/* the handle keeps pointers to errbuf and the list: not past this call */
	cu->easy_setopt(h, CURLOPT_ERRORBUFFER, NULL);
	cu->easy_setopt(h, CURLOPT_HTTPHEADER, NULL);
	if (cc != CURLE_OK || code < 100 || code > 599) {
		if (a.too_big)
			job->rc = own_answer(MHD_HTTP_BAD_GATEWAY, &job->status, &job->resp,
					     ota_error_set(OTA_ETOOBIG, "the leader's answer is larger than %llu bytes",
							   (unsigned long long)job->max_answer));
		else if (a.spool_failed)
			job->rc = own_answer(MHD_HTTP_SERVICE_UNAVAILABLE, &job->status, &job->resp,
					     ota_error_set(OTA_ERROR, "cannot spool the leader's answer: %s; retry",
							   strerror(a.spool_failed)));
		else
			job->rc = own_answer(MHD_HTTP_SERVICE_UNAVAILABLE, &job->status, &job->resp,
					     ota_error_set(OTA_ERROR, "the leader at %s did not answer: %s; retry",
							   job->base, errbuf[0] ? errbuf : cu->easy_strerror(cc)));
		cu->easy_cleanup(h); /* a connection in an unknown state */
	} else {
		job->status = (unsigned)code;
		job->rc = 0;
		if (a.spool >= 0) {
			/* relayed from the file; libmicrohttpd closes it (the file goes) */
			if ((job->resp = MHD_create_response_from_fd64(a.spooled, a.spool)))
				a.spool = -1;
		} else {
			size_t len;
			char *data;
			if (code == 200 && job->tail.len) { /* the caller's, past the leader's cap */
				a.body.max = BUF_NOLIMIT;
				buf_put(&a.body, job->tail.ptr, job->tail.len);
			}
			len = a.body.len;
			data = buf_detach(&a.body);
			job->resp = MHD_create_response_from_buffer(len, data, MHD_RESPMEM_MUST_FREE);
		}
		if (!job->resp)
			job->rc = own_answer(MHD_HTTP_BAD_GATEWAY, &job->status, &job->resp,
					     ota_error_set(OTA_ERROR, "cannot relay the leader's answer"));
		else
			for (int i = 0; i < API_FWD_RELAYED; i++)
				if (a.h.value[i])
					MHD_add_response_header(job->resp, api_fwd_relayed[i], a.h.value[i]);
		handle_give(f, cu, h);
	}
	api_forward_headers_release(&a.h);
	buf_release(&a.body);
	if (a.spool >= 0)
		close(a.spool);
}

/* The job's answer handed to the caller; the job freed. */
static int job_end(struct api_fwd_job *job, unsigned *status, struct MHD_Response **resp)
{
	int rc = job->rc;
	*status = job->status;
	*resp = job->resp;
	job->resp = NULL;
	job_free(job);
	return rc;
}

int api_forward(struct api_fwd *f, const struct api_fwd_req *q, unsigned *status, struct MHD_Response **resp)
{
	struct api_fwd_job *job;

	if (job_prepare(f, q, NULL, &job) == 0)
		job_perform(job);
	return job_end(job, status, resp);
}

/* ---- on a suspended connection ------------------------------------------- */

static void *job_thread(void *arg)
{
	struct api_fwd_job *job = arg;
	struct api_fwd *f = job->f;
	struct MHD_Connection *conn = job->conn;

	job_perform(job);
	/* the job belongs to the connection's handler from here on */
	MHD_resume_connection(conn);
	pthread_mutex_lock(&f->mu);
	f->inflight--;
	pthread_cond_broadcast(&f->idle_cond);
	pthread_mutex_unlock(&f->mu);
	return NULL;
}

int api_forward_begin(struct api_fwd *f, const struct api_fwd_req *q, struct api_fwd_job **out, unsigned *status,
		      struct MHD_Response **resp)
{
	return api_forward_begin_stream(f, q, NULL, out, status, resp);
}

int api_forward_begin_stream(struct api_fwd *f, const struct api_fwd_req *q, const struct api_fwd_stream *s,
			     struct api_fwd_job **out, unsigned *status, struct MHD_Response **resp)
{
	struct api_fwd_job *job;
	pthread_attr_t attr;
	pthread_t t;
	int busy;

	*out = NULL;
	*resp = NULL;
	if (job_prepare(f, q, s, &job) != 0) {
		job_end(job, status, resp);
		return 1;
	}
	pthread_mutex_lock(&f->mu);
	busy = f->stopping || f->inflight >= API_FWD_MAX_INFLIGHT;
	if (!busy)
		f->inflight++;
	pthread_mutex_unlock(&f->mu);
	if (busy) {
		job_free(job);
		ota_error_set(OTA_ECONFLICT, "%s; retry",
			      f->stopping ? "otacd is stopping" : "too many requests are on their way to the leader");
		own_answer(MHD_HTTP_SERVICE_UNAVAILABLE, status, resp, OTA_ECONFLICT);
		return 1;
	}
	*out = job;
	MHD_suspend_connection(q->conn);
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&attr, 256 * 1024);
	if (pthread_create(&t, &attr, job_thread, job) != 0)
		job_thread(job); /* on this thread, then; it resumes the connection */
	pthread_attr_destroy(&attr);
	return 0;
}

int api_forward_end(struct api_fwd_job *job, unsigned *status, struct MHD_Response **resp)
{
	return job_end(job, status, resp);
}

void api_forward_job_free(struct api_fwd_job *job)
{
	job_free(job);
}

void api_fwd_drain(struct api_fwd *f)
{
	pthread_mutex_lock(&f->mu);
	__atomic_store_n(&f->stopping, 1, __ATOMIC_RELAXED);
	while (f->inflight > 0)
		pthread_cond_wait(&f->idle_cond, &f->mu);
	pthread_mutex_unlock(&f->mu);
}
