/*
 * s3.c - the S3-compatible artifact backend (libcurl, AWS SigV4).
 *
 * Objects live at ENDPOINT/BUCKET/sha256/<hex> (path-style addressing, which
 * every S3-compatible server accepts).  Each request is signed by libcurl's
 * CURLOPT_AWS_SIGV4 with the payload marked UNSIGNED-PAYLOAD (the bytes are
 * content-addressed: their digest is the key).
 *
 *  - put: the upload is spooled to STATE/artifacts/s3-tmp (so a failed or
 *    oversized upload never reaches the bucket; the spool file is unlinked
 *    as soon as it is made, and what a crash in between leaves is swept at
 *    start), then committed with a HEAD
 *    (already there: deduplicated, nothing is sent) and a PUT.  S3 makes an
 *    object visible only once its PUT completes, so a crash mid-PUT leaves
 *    nothing half-written under the key.
 *  - get: the object is fetched into an unlinked temporary file while its
 *    SHA-256 is computed; bytes that do not hash to their key (a corrupt or
 *    replaced object) are refused before any caller sees one byte.
 *  - presign: time-limited GET URLs for devices (SigV4 query signing with
 *    OpenSSL's HMAC: libcurl signs headers, it cannot presign a URL).
 *
 * Credentials come from a file or the environment (artifact.h) and appear in
 * no message or log: errors name the bucket, the key and S3's error code.
 * Each call uses its own curl handle, so any thread may call.  libcurl is
 * loaded when an s3 store is set up (common/curlload.h), not at start.
 */
#include "../artifact.h"

#include "../../common/curlload.h"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../../common/util.h"

struct s3 {
	struct artifact_backend base;
	char *endpoint, *bucket, *region, *akid, *secret;
	char *sigv4;     /* "aws:amz:REGION:s3" */
	char *userpwd;   /* "AKID:SECRET" for libcurl */
	char *host;      /* Host header value (host[:port]) for presigning */
	char *origin;    /* scheme://host[:port] of the endpoint */
	char *prefix;    /* the endpoint's path, decoded: "" or "/a prefix" */
	char *spool;     /* STATE/artifacts/s3-tmp */
	/* The SigV4 signing key depends only on the secret, the region and the
	 * UTC day: derived once a day (four HMACs), not at every check-in.
	 * Device-API threads presign concurrently: key_lock guards both. */
	pthread_mutex_t key_lock;
	char key_date[9];       /* YYYYMMDD the key is for; "" none yet */
	unsigned char key[32];
};

struct artifact_writer {
	struct s3 *s;
	int fd;   /* the spool file (already unlinked) */
};

/* The answer of one request: status, a capped error body, a sink. */
struct s3_req {
	CURL *e;             /* the transfer (its status, as libcurl parsed it) */
	long status;
	char err[512];       /* the start of an error body (S3's XML) */
	size_t errlen;
	int fd;              /* GET: bytes go here (when status is 200/206) */
	EVP_MD_CTX *md;      /* GET: hashed as they arrive */
	int write_errno;     /* the spool write that stopped the transfer */
	curl_off_t length;   /* HEAD: Content-Length */
};

static size_t on_body(char *p, size_t sz, size_t nm, void *ud)
{
	const struct curlload *cu = curlload_get();
	struct s3_req *q = ud;
	size_t n = sz * nm;
	cu->easy_getinfo(q->e, CURLINFO_RESPONSE_CODE, &q->status);
	if (q->fd >= 0 && (q->status == 200 || q->status == 206)) {
		size_t off = 0;
		while (off < n) {
			ssize_t w = write(q->fd, p + off, n - off);
			if (w < 0 && errno == EINTR)
				continue;
			if (w < 0) {
				q->write_errno = errno;
				return 0; /* stops the transfer: CURLE_WRITE_ERROR */
			}
			off += (size_t)w;
		}
		if (q->md)
			EVP_DigestUpdate(q->md, p, n);
		return n;
	}
	if (q->errlen < sizeof(q->err) - 1) {
		size_t k = sizeof(q->err) - 1 - q->errlen < n ? sizeof(q->err) - 1 - q->errlen : n;
		memcpy(q->err + q->errlen, p, k);
		q->errlen += k;
		q->err[q->errlen] = 0;
	}
	return n;
}

void artifact_s3_error_code(char *out, size_t cap, const char *body)
{
	const char *c = strstr(body, "<Code>");
	size_t n = 0;
	if (!cap)
		return;
	if (c)
		for (c += 6; n + 1 < cap && ((c[n] >= 'A' && c[n] <= 'Z') || (c[n] >= 'a' && c[n] <= 'z')); n++)
			out[n] = c[n];
	out[n] = 0;
}

static char *object_url(struct s3 *s, const char *sha256)
{
	return sha256 ? xasprintf("%s/%s/sha256/%s", s->endpoint, s->bucket, sha256)
		      : xasprintf("%s/%s?max-keys=0", s->endpoint, s->bucket); /* an empty listing */
}

/*
 * One signed request: method on the object sha256 (NULL: the bucket).
 * upload_fd >= 0: PUT its bytes (upload_size of them).
 */
static int request(struct s3 *s, const char *method, const char *sha256, struct s3_req *q, int upload_fd,
		   int64_t upload_size)
{
	const struct curlload *cu = curlload_get();
	CURL *e = cu->easy_init();
	struct curl_slist *hdr = NULL;
	char *url = object_url(s, sha256), cerr[CURL_ERROR_SIZE] = "";
	FILE *up = NULL;
	CURLcode cc;
	int rc = 0;

	q->e = e;
	q->status = 0;
	q->errlen = 0;
	q->err[0] = 0;
	q->write_errno = 0;
	if (!e) {
		rc = ota_error_set(OTA_ERROR, "curl_easy_init failed");
		goto out;
	}
	hdr = cu->slist_append(hdr, "x-amz-content-sha256: UNSIGNED-PAYLOAD");
	hdr = cu->slist_append(hdr, "Expect:");
	cu->easy_setopt(e, CURLOPT_URL, url);
	cu->easy_setopt(e, CURLOPT_HTTPHEADER, hdr);
	cu->easy_setopt(e, CURLOPT_AWS_SIGV4, s->sigv4);
	cu->easy_setopt(e, CURLOPT_USERPWD, s->userpwd);
	cu->easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	cu->easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
	cu->easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
	cu->easy_setopt(e, CURLOPT_LOW_SPEED_TIME, 60L);
	cu->easy_setopt(e, CURLOPT_ERRORBUFFER, cerr);
	cu->easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
	cu->easy_setopt(e, CURLOPT_WRITEDATA, q);
	if (!strcmp(method, "HEAD"))
		cu->easy_setopt(e, CURLOPT_NOBODY, 1L);
	else if (!strcmp(method, "PUT")) {
		int dfd = dup(upload_fd);
		if (dfd < 0 || lseek(dfd, 0, SEEK_SET) < 0 || !(up = fdopen(dfd, "rb"))) {
			if (dfd >= 0)
				close(dfd);
			rc = ota_error_set(OTA_ERROR, "cannot reread the spooled upload: %s", strerror(errno));
			goto out;
		}
		cu->easy_setopt(e, CURLOPT_UPLOAD, 1L);
		cu->easy_setopt(e, CURLOPT_READDATA, up);
		cu->easy_setopt(e, CURLOPT_INFILESIZE_LARGE, (curl_off_t)upload_size);
	} else if (strcmp(method, "GET"))
		cu->easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
	cc = cu->easy_perform(e);
	if (cc != CURLE_OK) {
		rc = ota_error_set(OTA_ERROR, "S3 %s %s/sha256/%s: %s%s", method, s->bucket, sha256 ? sha256 : "",
				   q->write_errno ? "spool write failed: " : "",
				   q->write_errno ? strerror(q->write_errno) : cerr[0] ? cerr : cu->easy_strerror(cc));
		goto out;
	}
	cu->easy_getinfo(e, CURLINFO_RESPONSE_CODE, &q->status);
	cu->easy_getinfo(e, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &q->length);
out:
	if (up)
		fclose(up);
	cu->slist_free_all(hdr);
	cu->easy_cleanup(e);
	q->e = NULL;
	free(url);
	return rc;
}

/* The error for an unexpected status: S3's code named, credentials never. */
static int status_error(struct s3 *s, const char *what, const char *sha256, const struct s3_req *q)
{
	char code[48];
	artifact_s3_error_code(code, sizeof(code), q->err);
	if (q->status == 403 || q->status == 401)
		return ota_error_set(OTA_EAUTH, "S3 refused the credentials for bucket '%s' (%s %s: HTTP %ld %s)",
				     s->bucket, what, sha256 ? sha256 : "the bucket", q->status, code[0] ? code : "");
	if (q->status == 404)
		return ota_error_set(OTA_ENOTFOUND, "S3: %s %s: not found in bucket '%s' (%s)", what,
				     sha256 ? sha256 : "the bucket", s->bucket, code[0] ? code : "NoSuchKey");
	return ota_error_set(OTA_ERROR, "S3: %s %s in bucket '%s': HTTP %ld %s", what, sha256 ? sha256 : "",
			     s->bucket, q->status, code);
}

/*
 * An anonymous spool file (kind: "upload" or "get") in s->spool: made,
 * locked and unlinked at once, so only a crash in between leaves a name,
 * which spool_sweep removes at the next start.  The lock tells the sweep
 * the file is in use; should it still win the race, it only unlinks what
 * is about to be unlinked here.
 */
static int spool_open(struct s3 *s, const char *kind)
{
	char *tmp = xasprintf("%s/%s-XXXXXX", s->spool, kind);
	int fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0) {
		int rc = ota_error_set(OTA_ERROR, "cannot create a spool file in %s: %s", s->spool, strerror(errno));
		free(tmp);
		return rc;
	}
	(void)flock(fd, LOCK_EX | LOCK_NB); /* a sweep holding it now only unlinks the name */
	unlink(tmp);
	free(tmp);
	return fd;
}

/* Remove the spool files a crash left behind; one another process holds
 * locked (in use) is left alone. */
static void spool_sweep(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	if (!d)
		return;
	while ((e = readdir(d))) {
		char *p;
		int fd;
		if (strncmp(e->d_name, "upload-", 7) && strncmp(e->d_name, "get-", 4))
			continue;
		p = xasprintf("%s/%s", dir, e->d_name);
		fd = open(p, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
		if (fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) == 0)
			unlink(p);
		if (fd >= 0)
			close(fd);
		free(p);
	}
	closedir(d);
}

static int put_begin(struct artifact_backend *b, struct artifact_writer **out)
{
	struct s3 *s = (struct s3 *)b;
	int fd = spool_open(s, "upload");
	struct artifact_writer *w;

	if (fd < 0)
		return fd;
	w = xcalloc(1, sizeof(*w));
	w->s = s;
	w->fd = fd;
	*out = w;
	return 0;
}

static int put_write(struct artifact_writer *w, const void *data, size_t len)
{
	const char *p = data;
	while (len) {
		ssize_t n = write(w->fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return ota_error_set(OTA_ERROR, "spool write failed: %s", strerror(errno));
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static void put_abort(struct artifact_writer *w)
{
	if (!w)
		return;
	close(w->fd);
	free(w);
}

static int put_commit(struct artifact_writer *w, const char *sha256)
{
	struct s3_req q = { .fd = -1 };
	struct stat sb;
	int rc;

	if ((rc = request(w->s, "HEAD", sha256, &q, -1, 0)) < 0)
		goto out;
	if (q.status == 200)
		goto out; /* already stored: deduplicated */
	if (q.status != 404) {
		rc = status_error(w->s, "HEAD", sha256, &q);
		goto out;
	}
	if (fstat(w->fd, &sb) < 0) {
		rc = ota_error_set(OTA_ERROR, "spool: %s", strerror(errno));
		goto out;
	}
	if ((rc = request(w->s, "PUT", sha256, &q, w->fd, (int64_t)sb.st_size)) < 0)
		goto out;
	if (q.status != 200)
		rc = status_error(w->s, "PUT", sha256, &q);
out:
	put_abort(w);
	return rc;
}

static int get(struct artifact_backend *b, const char *sha256, struct artifact_reader **out, int64_t *size)
{
	struct s3 *s = (struct s3 *)b;
	struct s3_req q = { .fd = -1 };
	unsigned char md[32];
	char hex[65];
	struct stat sb;
	int rc;

	if (!artifact_digest_valid(sha256))
		return ota_error_set(OTA_EINVAL, "not a SHA-256 digest");
	if ((q.fd = spool_open(s, "get")) < 0)
		return q.fd;
	if (!(q.md = EVP_MD_CTX_new()) || !EVP_DigestInit_ex(q.md, EVP_sha256(), NULL)) {
		rc = ota_error_set(OTA_ENOMEM, "EVP_MD_CTX_new failed");
		goto out;
	}
	if ((rc = request(s, "GET", sha256, &q, -1, 0)) < 0)
		goto out;
	if (q.status != 200) {
		rc = status_error(s, "GET", sha256, &q);
		goto out;
	}
	EVP_DigestFinal_ex(q.md, md, NULL);
	ota_hex(hex, md, sizeof(md));
	if (strcmp(hex, sha256)) {
		rc = ota_error_set(OTA_ERROR, "S3 object sha256/%s in bucket '%s' is corrupt: its bytes hash to %s",
				   sha256, s->bucket, hex);
		goto out;
	}
	if (fstat(q.fd, &sb) < 0 || lseek(q.fd, 0, SEEK_SET) < 0) {
		rc = ota_error_set(OTA_ERROR, "spool: %s", strerror(errno));
		goto out;
	}
	*out = artifact_fd_reader(q.fd);
	q.fd = -1;
	*size = (int64_t)sb.st_size;
out:
	if (q.fd >= 0)
		close(q.fd);
	EVP_MD_CTX_free(q.md);
	return rc;
}

static int st(struct artifact_backend *b, const char *sha256, int64_t *size)
{
	struct s3 *s = (struct s3 *)b;
	struct s3_req q = { .fd = -1 };
	int rc;

	if (!artifact_digest_valid(sha256))
		return ota_error_set(OTA_EINVAL, "not a SHA-256 digest");
	if ((rc = request(s, "HEAD", sha256, &q, -1, 0)) < 0)
		return rc;
	if (q.status != 200)
		return status_error(s, "HEAD", sha256, &q);
	if (q.length < 0)
		return ota_error_set(OTA_ERROR, "S3: HEAD %s in bucket '%s': no Content-Length", sha256, s->bucket);
	*size = (int64_t)q.length;
	return 0;
}

static int rm(struct artifact_backend *b, const char *sha256)
{
	struct s3 *s = (struct s3 *)b;
	struct s3_req q = { .fd = -1 };
	int rc;

	if (!artifact_digest_valid(sha256))
		return ota_error_set(OTA_EINVAL, "not a SHA-256 digest");
	if ((rc = request(s, "DELETE", sha256, &q, -1, 0)) < 0)
		return rc;
	if (q.status != 204 && q.status != 200 && q.status != 404)
		return status_error(s, "DELETE", sha256, &q);
	return 0;
}

static void sfree(struct artifact_backend *b)
{
	struct s3 *s = (struct s3 *)b;
	if (!s)
		return;
	free(s->endpoint);
	free(s->bucket);
	free(s->region);
	free(s->akid);
	if (s->secret)
		OPENSSL_cleanse(s->secret, strlen(s->secret));
	free(s->secret);
	if (s->userpwd)
		OPENSSL_cleanse(s->userpwd, strlen(s->userpwd));
	free(s->userpwd);
	free(s->sigv4);
	free(s->host);
	free(s->origin);
	free(s->prefix);
	free(s->spool);
	OPENSSL_cleanse(s->key, sizeof(s->key));
	pthread_mutex_destroy(&s->key_lock);
	free(s);
}

/* "AKID:SECRET" on the first line of a file, or the environment. */
static int load_credentials(struct s3 *s, const char *file)
{
	if (file) {
		struct buf b;
		char *colon, *nl;
		int rc;
		buf_init(&b, 4096);
		if ((rc = ota_read_file(&b, file, 4096)) < 0) {
			buf_release(&b);
			return ota_error_set(rc, "artifact_store: cannot read credentials_file %s", file);
		}
		buf_putc(&b, 0);
		nl = strpbrk(b.ptr, "\r\n");
		if (nl)
			*nl = 0;
		colon = strchr(b.ptr, ':');
		if (colon && colon != b.ptr && colon[1]) {
			*colon = 0;
			s->akid = xstrdup(b.ptr);
			s->secret = xstrdup(colon + 1);
		}
		OPENSSL_cleanse(b.ptr, b.len);
		buf_release(&b);
		if (!s->akid)
			return ota_error_set(OTA_EINVAL, "artifact_store: credentials_file %s: want ACCESS_KEY_ID:SECRET on its first line",
					     file);
		return 0;
	}
	if (getenv("OTACD_S3_ACCESS_KEY_ID") && getenv("OTACD_S3_SECRET_ACCESS_KEY") &&
	    *getenv("OTACD_S3_ACCESS_KEY_ID") && *getenv("OTACD_S3_SECRET_ACCESS_KEY")) {
		s->akid = xstrdup(getenv("OTACD_S3_ACCESS_KEY_ID"));
		s->secret = xstrdup(getenv("OTACD_S3_SECRET_ACCESS_KEY"));
		return 0;
	}
	return ota_error_set(OTA_EINVAL, "artifact_store: s3 needs credentials_file or OTACD_S3_ACCESS_KEY_ID and "
					 "OTACD_S3_SECRET_ACCESS_KEY in the environment");
}

/* RFC 3986 unreserved characters stay, everything else %XX (SigV4's rule:
 * S3 encodes each path segment once). */
static char *uri_encode(const char *s, int keep_slash)
{
	struct buf b;
	buf_init(&b, BUF_NOLIMIT);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
		    c == '_' || c == '.' || c == '~' || (keep_slash && c == '/'))
			buf_putc(&b, (char)c);
		else
			buf_printf(&b, "%%%02X", c);
	}
	return buf_detach(&b);
}

/* The parts of an endpoint URL that requests and presigned URLs are made
 * of; -1 if it is no http(s) URL, or carries a user (credentials would
 * reach every presigned URL), a query, a fragment, or control characters
 * in its path once decoded. */
struct endpoint {
	char *host;   /* as clients send it in Host: the default port dropped,
		       * as libcurl does, so presigning signs what is sent */
	char *origin; /* scheme://host[:port] */
	char *prefix; /* the path, %-decoded, no trailing '/': "" or "/a b" */
};

static void endpoint_release(struct endpoint *ep)
{
	free(ep->host);
	free(ep->origin);
	free(ep->prefix);
	memset(ep, 0, sizeof(*ep));
}

static int has_control(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			return 1;
	return 0;
}

static int endpoint_parse(struct endpoint *ep, const char *url)
{
	const struct curlload *cu = curlload_get();
	CURLU *u = cu ? cu->url() : NULL;
	char *scheme = NULL, *host = NULL, *port = NULL, *path = NULL, *extra = NULL;
	int rc = -1;
	size_t n;

	memset(ep, 0, sizeof(*ep));
	if (!cu)
		return -1;
	if (!u || cu->url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
	    cu->url_get(u, CURLUPART_USER, &extra, 0) != CURLUE_NO_USER ||
	    cu->url_get(u, CURLUPART_QUERY, &extra, 0) != CURLUE_NO_QUERY ||
	    cu->url_get(u, CURLUPART_FRAGMENT, &extra, 0) != CURLUE_NO_FRAGMENT ||
	    cu->url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
	    (strcmp(scheme, "http") && strcmp(scheme, "https")) ||
	    cu->url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
	    cu->url_get(u, CURLUPART_PATH, &path, CURLU_URLDECODE) != CURLUE_OK || has_control(path))
		goto out;
	if (cu->url_get(u, CURLUPART_PORT, &port, 0) == CURLUE_OK &&
	    !strcmp(port, strcmp(scheme, "https") ? "80" : "443")) {
		cu->free(port); /* http://h:80 is sent as Host: h */
		port = NULL;
	}
	ep->host = port ? xasprintf("%s:%s", host, port) : xstrdup(host);
	ep->origin = xasprintf("%s://%s", scheme, ep->host);
	n = strlen(path);
	while (n && path[n - 1] == '/')
		n--;
	ep->prefix = xasprintf("%.*s", (int)n, path);
	rc = 0;
out:
	cu->free(scheme);
	cu->free(host);
	cu->free(port);
	cu->free(path);
	cu->free(extra);
	cu->url_cleanup(u);
	return rc;
}

char *artifact_s3_host_header(const char *endpoint)
{
	struct endpoint ep;
	char *host;
	if (endpoint_parse(&ep, endpoint) < 0)
		return NULL;
	host = ep.host;
	ep.host = NULL;
	endpoint_release(&ep);
	return host;
}

int artifact_s3_backend(struct artifact_backend **out, const char *state_dir, const struct artifact_s3_config *cfg)
{
	struct s3 *s = xcalloc(1, sizeof(*s));
	struct s3_req q = { .fd = -1 };
	int rc;

	s->base.name = "s3";
	s->base.put_begin = put_begin;
	s->base.put_write = put_write;
	s->base.put_commit = put_commit;
	s->base.put_abort = put_abort;
	s->base.get = get;
	s->base.read = artifact_fd_read;
	s->base.close = artifact_fd_close;
	s->base.stat = st;
	s->base.remove = rm;
	s->base.free = sfree;
	pthread_mutex_init(&s->key_lock, NULL);
	/* every request below goes through libcurl: loaded now (curlload.h) */
	if (!curlload_get()) {
		rc = ota_error_set(OTA_ERROR, "artifact_store: s3: %s", curlload_error());
		goto fail;
	}
	if (!cfg->endpoint || strncmp(cfg->endpoint, "http", 4) || !cfg->bucket || !*cfg->bucket ||
	    strspn(cfg->bucket, "abcdefghijklmnopqrstuvwxyz0123456789.-") != strlen(cfg->bucket)) {
		rc = ota_error_set(OTA_EINVAL, "artifact_store: s3 needs an http(s) endpoint and a bucket name "
					       "(lowercase letters, digits, '.', '-')");
		goto fail;
	}
	s->bucket = xstrdup(cfg->bucket);
	s->region = xstrdup(cfg->region && *cfg->region ? cfg->region : "us-east-1");
	{
		struct endpoint ep;
		char *eprefix;
		if (endpoint_parse(&ep, cfg->endpoint) < 0) { /* not repeated: it may hold a password */
			rc = ota_error_set(OTA_EINVAL, "artifact_store: endpoint is not an http(s)://HOST[:PORT][/PREFIX] URL "
						       "(credentials go in credentials_file)");
			goto fail;
		}
		/* requests name the prefix in its canonical (SigV4) encoding, so
		 * what libcurl signs, what S3 checks and what presign signs agree */
		eprefix = uri_encode(ep.prefix, 1);
		s->endpoint = xasprintf("%s%s", ep.origin, eprefix);
		free(eprefix);
		s->host = ep.host;
		s->origin = ep.origin;
		s->prefix = ep.prefix;
	}
	if ((rc = load_credentials(s, cfg->credentials_file)) < 0)
		goto fail;
	s->sigv4 = xasprintf("aws:amz:%s:s3", s->region);
	s->userpwd = xasprintf("%s:%s", s->akid, s->secret);
	s->spool = xasprintf("%s/artifacts/s3-tmp", state_dir);
	if ((rc = ota_mkdir_p(s->spool, 0700)) < 0)
		goto fail;
	spool_sweep(s->spool);
	/* the bucket must answer to these credentials now, not at the first release */
	if ((rc = request(s, "GET", NULL, &q, -1, 0)) < 0)
		goto fail;
	if (q.status != 200) {
		rc = status_error(s, "GET", NULL, &q);
		goto fail;
	}
	*out = &s->base;
	return 0;
fail:
	sfree(&s->base);
	return rc;
}

/* ---- presigned GET URLs (SigV4 query authentication) --------------------- */

static void hmac(unsigned char out[32], const void *key, size_t klen, const char *msg)
{
	unsigned int n = 32;
	HMAC(EVP_sha256(), key, (int)klen, (const unsigned char *)msg, strlen(msg), out, &n);
}

static void sha256_hex(char out[65], const char *msg)
{
	unsigned char md[32];
	EVP_Digest(msg, strlen(msg), md, NULL, EVP_sha256(), NULL);
	ota_hex(out, md, sizeof(md));
}

/* The request time as SigV4 writes it: YYYYMMDDTHHMMSSZ and YYYYMMDD. */
static int utc_stamps(char amzdate[17], char date[9], time_t now)
{
	struct tm tm;
	if (!gmtime_r(&now, &tm) || !strftime(amzdate, 17, "%Y%m%dT%H%M%SZ", &tm) ||
	    !strftime(date, 9, "%Y%m%d", &tm))
		return ota_error_set(OTA_EINVAL, "presign: time %lld is not a date of years 0 to 9999", (long long)now);
	return 0;
}

static void signing_key(unsigned char out[32], const char *secret, const char *date, const char *region)
{
	unsigned char k1[32], k2[32], k3[32];
	char *key = xasprintf("AWS4%s", secret);
	hmac(k1, key, strlen(key), date);
	hmac(k2, k1, 32, region);
	hmac(k3, k2, 32, "s3");
	hmac(out, k3, 32, "aws4_request");
	OPENSSL_cleanse(key, strlen(key));
	OPENSSL_cleanse(k1, sizeof(k1));
	OPENSSL_cleanse(k2, sizeof(k2));
	OPENSSL_cleanse(k3, sizeof(k3));
	free(key);
}

/* The presigned URL of path (not encoded) from the day's signing key. */
static char *presign_with_key(const char *origin, const char *host, const char *path, const char *region,
			      const char *akid, const unsigned char key[32], const char *amzdate, const char *date,
			      int64_t ttl_s)
{
	char canon_hash[65], sig[65], *c, *cred, *query, *canon, *sts, *url, *epath;
	unsigned char s[32];

	c = xasprintf("%s/%s/%s/s3/aws4_request", akid, date, region);
	cred = uri_encode(c, 0);
	free(c);
	epath = uri_encode(path, 1);
	query = xasprintf("X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=%s&X-Amz-Date=%s&X-Amz-Expires=%lld"
			  "&X-Amz-SignedHeaders=host",
			  cred, amzdate, (long long)ttl_s);
	canon = xasprintf("GET\n%s\n%s\nhost:%s\n\nhost\nUNSIGNED-PAYLOAD", epath, query, host);
	sha256_hex(canon_hash, canon);
	sts = xasprintf("AWS4-HMAC-SHA256\n%s\n%s/%s/s3/aws4_request\n%s", amzdate, date, region, canon_hash);
	hmac(s, key, 32, sts);
	ota_hex(sig, s, sizeof(s));
	url = xasprintf("%s%s?%s&X-Amz-Signature=%s", origin, epath, query, sig);
	free(cred);
	free(epath);
	free(query);
	free(canon);
	free(sts);
	return url;
}

char *artifact_s3_presign_raw(const char *scheme_host, const char *host, const char *path, const char *region,
			      const char *akid, const char *secret, time_t now, int64_t ttl_s)
{
	char amzdate[17], date[9], *url;
	unsigned char key[32];

	if (utc_stamps(amzdate, date, now) < 0)
		return NULL;
	signing_key(key, secret, date, region);
	url = presign_with_key(scheme_host, host, path, region, akid, key, amzdate, date, ttl_s);
	OPENSSL_cleanse(key, sizeof(key));
	return url;
}

int artifact_s3_presign(char **out, struct artifact_backend *b, const char *sha256, int64_t ttl_s, time_t now)
{
	struct s3 *s = (struct s3 *)b;
	char amzdate[17], date[9], *path;
	unsigned char key[32];
	int rc;

	if (!b || strcmp(b->name, "s3"))
		return ota_error_set(OTA_EINVAL, "image_origin s3 needs artifact_store backend s3");
	if (!artifact_digest_valid(sha256))
		return ota_error_set(OTA_EINVAL, "not a SHA-256 digest");
	if (ttl_s < 1 || ttl_s > 604800)
		return ota_error_set(OTA_EINVAL, "a presigned URL lives 1 s to 7 days");
	if ((rc = utc_stamps(amzdate, date, now)) < 0)
		return rc;
	pthread_mutex_lock(&s->key_lock);
	if (strcmp(s->key_date, date)) {
		signing_key(s->key, s->secret, date, s->region);
		memcpy(s->key_date, date, sizeof(s->key_date));
	}
	memcpy(key, s->key, sizeof(key));
	pthread_mutex_unlock(&s->key_lock);
	/* the endpoint's prefix is part of the signed path */
	path = xasprintf("%s/%s/sha256/%s", s->prefix, s->bucket, sha256);
	*out = presign_with_key(s->origin, s->host, path, s->region, s->akid, key, amzdate, date, ttl_s);
	OPENSSL_cleanse(key, sizeof(key));
	free(path);
	return 0;
}
