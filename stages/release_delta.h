/*
 * release_delta.h - the release stage's delta patches (issue 15,
 * docs/delivery.md "Delta updates").
 *
 * With `deltas: {from: [1.2.0, 1.3.0], installed: N}` on a release stage,
 * each signed image gets a VCDIFF patch (the real xdelta3, `-e -S none -A
 * -W 16384`) from the same image (same artifact name, so the same
 * hardware variant) of each listed earlier release of the product and of
 * the N versions most installed now on the fleet's devices of that
 * hardware variant.  The patches are
 * content-addressed artifacts of the release job, named in the manifest's
 * `deltas` and in the provenance's subjects.
 */
#ifndef OTA_RELEASE_DELTA_H
#define OTA_RELEASE_DELTA_H

#include <jansson.h>
#include <stdint.h>

#include "stage.h"
#include "../common/util.h"
#include "../orchestrator/pipeline/pipeline.h"

#define RELEASE_DELTAS_MAX 8 /* earlier versions per release */

struct release_deltas {
	json_t *list;             /* the manifest's `deltas` */
	int64_t *ids;             /* artifact ids to keep */
	size_t n;
};

/* Pipeline check of `deltas:` (release_validate). */
void release_deltas_validate(const struct pl_stage *st, const json_t *spec, struct pl_diags *d);

/* The versions to make patches from for an image of hardware variant
 * hardware: `from`, then the `installed` versions most installed on that
 * variant's devices (device counts from the update server; a device's
 * "1.0.0+7" counts for 1.0.0; hardware NULL: the whole product's), without
 * `version` itself and without repeats.  New reference (an array). */
json_t *release_deltas_sources(const struct stage_ctx *c, const json_t *spec, const char *product, const char *version,
			       const char *hardware);

/* Patches to the signed image `name` (bytes img, len; to_sha its sha256)
 * from each version of `from` (release_deltas_sources) of product,
 * appended to out.  An earlier
 * version never released, or released without this image, is logged and
 * skipped; xdelta3 failing, or a patch that does not rebuild the image
 * (checked with `xdelta3 -d`), fails the release. */
int release_deltas_make(const struct stage_ctx *c, const json_t *from, const char *product, const char *name,
			const char *hw, const void *img, size_t len, const char *to_sha, struct release_deltas *out);

void release_deltas_release(struct release_deltas *out);

/* release.c's artifact upload (content-addressed, recorded on the job). */
int release_put(const struct stage_ctx *c, const char *name, const char *type, const char *hw, const void *data,
		size_t len, int64_t *id, char sha[65]);
int release_read_object(const char *sha, struct buf *out);

#endif
