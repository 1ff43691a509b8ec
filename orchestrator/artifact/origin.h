/*
 * origin.h - where devices fetch images from (config: image_origin).
 *
 *   kind otacd (default): offers name /device/v1/images/SHA on the device
 *        API; otacd serves every byte.
 *   kind cdn: offers name URL/SHA, an absolute URL on a CDN or caching
 *        proxy.  The CDN pulls from otacd's GET /device/v1/origin/SHA with
 *        Authorization: Bearer <token_file's token> (or from the S3 bucket
 *        directly, if it is configured so).
 *   kind s3: offers name a presigned GET URL of the object in the S3
 *        artifact store, valid `ttl` seconds, made at each check-in.
 *
 * A delta's patch (issue 15) is an object like an image and follows the
 * same origin: URL/PATCH_SHA on a CDN, a presigned URL of it in the bucket.
 *
 * The origin is untrusted: devices check the image's digest and signature
 * whatever served it (docs/security.md).
 */
#ifndef OTA_ORIGIN_H
#define OTA_ORIGIN_H

#include <stddef.h>

struct json_t;

/* Check and apply an image_origin block (NULL: kind otacd). */
int origin_configure(const struct json_t *cfg);
void origin_shutdown(void);

/* The URL offers carry for image sha256 when the exposure is compiled
 * (caller frees).  With kind s3, the device-API path: origin_offer_text
 * swaps in a fresh presigned URL at each check-in. */
char *origin_image_url(const char *sha256);

/* kind s3: copy the compiled offer text into out with each device-API
 * URL in it (the image's, and a delta's patch: issue 15) replaced by a
 * presigned one of the same object.  Returns out, or offer itself when
 * nothing is replaced (another kind; or presigning failed or out is too
 * small: then every device-API path stays, the image's and the patch's). */
const char *origin_offer_text(char *out, size_t cap, const char *offer);

/* May a CDN pull sha256 from /device/v1/origin/ with this bearer token?
 * 1 yes; 0 no (no token configured: the pull endpoint is off). */
int origin_pull_allowed(const char *token);

#endif
