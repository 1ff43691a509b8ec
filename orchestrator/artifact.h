/*
 * artifact.h - the content-addressed artifact store.
 *
 * Every artifact is stored once under the SHA-256 of its bytes.  This layer
 * hashes uploads, enforces the size cap and checks the digest the agent
 * declared; where the bytes live is a backend's business (struct
 * artifact_backend below: put / get / stat / delete), picked by name at
 * start from the config's artifact_store block.  The backends live in
 * orchestrator/artifact/, one file each: local.c keeps objects at
 * STATE/artifacts/sha256/AB/ABCDEF…, writing through a temporary file that
 * is fsynced and renamed, so a crash or a bad upload never leaves a partial
 * object visible; s3.c keeps them in an S3-compatible bucket (libcurl's AWS
 * SigV4) and checks every object's digest as it reads it.
 *
 * Which artifacts belong to which job, and whether a release keeps them, is
 * recorded in the database by the engine; this module only holds bytes.
 */
#ifndef OTA_ARTIFACT_H
#define OTA_ARTIFACT_H

#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>
#include <time.h>

struct json_t;

struct artifact_writer;   /* a backend's object being written */
struct artifact_reader;   /* a backend's object being read */

struct artifact_backend {
	const char *name;
	/* Start writing a new object whose name is not known yet. */
	int (*put_begin)(struct artifact_backend *b, struct artifact_writer **w);
	int (*put_write)(struct artifact_writer *w, const void *data, size_t len);
	/* Make it durable and visible as sha256 (idempotent if it exists);
	 * frees w whatever the outcome. */
	int (*put_commit)(struct artifact_writer *w, const char *sha256);
	void (*put_abort)(struct artifact_writer *w);
	int (*get)(struct artifact_backend *b, const char *sha256, struct artifact_reader **r, int64_t *size);
	ssize_t (*read)(struct artifact_reader *r, void *buf, size_t len);
	void (*close)(struct artifact_reader *r);
	int (*stat)(struct artifact_backend *b, const char *sha256, int64_t *size);  /* OTA_ENOTFOUND */
	int (*remove)(struct artifact_backend *b, const char *sha256);
	void (*free)(struct artifact_backend *b);
};

/* Both backends hand out an open file (the object, or its checked spool):
 * a reader over fd (which it owns), and the read/close methods for it. */
struct artifact_reader *artifact_fd_reader(int fd);
ssize_t artifact_fd_read(struct artifact_reader *r, void *buf, size_t len);
void artifact_fd_close(struct artifact_reader *r);

/* The local-disk backend rooted at STATE/artifacts (artifact/local.c). */
int artifact_local_backend(struct artifact_backend **out, const char *state_dir);

/* The S3 backend (artifact/s3.c; docs/config.md, artifact_store). */
struct artifact_s3_config {
	const char *endpoint;          /* http(s)://host[:port][/prefix] */
	const char *bucket;
	const char *region;            /* default us-east-1 */
	const char *credentials_file;  /* "ACCESS_KEY_ID:SECRET"; NULL: OTACD_S3_ACCESS_KEY_ID and
					* OTACD_S3_SECRET_ACCESS_KEY from the environment */
};
/* Checks the bucket answers to the credentials (OTA_EAUTH if refused). */
int artifact_s3_backend(struct artifact_backend **out, const char *state_dir, const struct artifact_s3_config *cfg);
/* A presigned GET URL of object sha256, valid ttl_s seconds from now (b must
 * be the s3 backend; any thread: the day's signing key is derived once and
 * kept).  The lower-level form signs any host and path (path not encoded:
 * each byte outside RFC 3986's unreserved set is %-encoded once); NULL if
 * now is no date of years 0 to 9999. */
int artifact_s3_presign(char **out, struct artifact_backend *b, const char *sha256, int64_t ttl_s, time_t now);
char *artifact_s3_presign_raw(const char *scheme_host, const char *host, const char *path, const char *region,
			      const char *akid, const char *secret, time_t now, int64_t ttl_s);
/* The Host header a client sends for endpoint, which presigned URLs sign:
 * host[:port], the scheme's default port dropped (caller frees); NULL if
 * the s3 backend would refuse the endpoint. */
char *artifact_s3_host_header(const char *endpoint);
/* S3's error code from the start of an XML error body (NUL-terminated, the
 * server's, untrusted): the letters after its first <Code>, at most cap - 1
 * of them, else "". */
void artifact_s3_error_code(char *out, size_t cap, const char *body);

/* Open the store with backend "local". */
int artifact_store_init(const char *state_dir, int64_t max_size);
/* Open the store from the config's artifact_store block (NULL: local);
 * the block is checked here: {backend: local|s3, endpoint, bucket, region,
 * credentials_file}. */
int artifact_store_open(const char *state_dir, int64_t max_size, const struct json_t *cfg);
void artifact_store_shutdown(void);
struct artifact_backend *artifact_backend(void);
int64_t artifact_max_size(void);

struct artifact_upload;
int artifact_upload_begin(struct artifact_upload **out);
/* OTA_ETOOBIG once the upload passes the size cap. */
int artifact_upload_write(struct artifact_upload *u, const void *data, size_t len);
/*
 * Finish: verify against expect_sha256 (lowercase hex; NULL to skip), make
 * the object durable and visible.  Fills sha256 (65 bytes) and *size.  The
 * upload is freed whatever the outcome.
 */
int artifact_upload_commit(struct artifact_upload *u, const char *expect_sha256,
			   char sha256[65], int64_t *size);
void artifact_upload_abort(struct artifact_upload *u);

/* Is s 64 lowercase hex characters? */
int artifact_digest_valid(const char *s);

/* Is the C string name a safe artifact name (ota_artifact_name_check in
 * common/util.h: the one rule the agent applies too)? */
int artifact_name_valid(const char *name);

#endif
