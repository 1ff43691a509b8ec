/*
 * artifact.h - the content-addressed artifact store (local files).
 *
 * Objects live at STATE/artifacts/sha256/AB/ABCDEF… named by the SHA-256 of
 * their content, so identical files are stored once.  An upload streams into
 * a temporary file under STATE/artifacts/tmp while hashing; commit checks the
 * size cap and the digest the agent declared, fsyncs, and renames into place.
 * A crash or a bad upload therefore never leaves a partial object visible.
 *
 * Which artifacts belong to which job is recorded in the database by the
 * engine (engine_artifact_add); this module only holds bytes.
 */
#ifndef OTA_ARTIFACT_H
#define OTA_ARTIFACT_H

#include <stdint.h>
#include <stddef.h>

struct artifact_upload;

int artifact_store_init(const char *state_dir, int64_t max_size);
int64_t artifact_max_size(void);

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

/* Path of the object with this digest (caller frees); NULL if the digest is
 * not 64 lowercase hex characters. */
char *artifact_object_path(const char *sha256);

/* Is name a safe relative artifact name (no "..", no leading "/", no
 * control characters, at most 255 bytes)? */
int artifact_name_valid(const char *name);

#endif
