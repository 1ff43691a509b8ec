/*
 * manifest.h - the release manifest's schema.
 *
 * The release stage writes it (stages/release.c); verifiers read it
 * (otactl verify).  manifest_check() accepts exactly the documented fields
 * (docs/signing.md, "Release manifest") with their types, so a manifest
 * that grew a field nobody checks, or lost one, is refused by name instead
 * of being half-understood.
 */
#ifndef OTA_MANIFEST_H
#define OTA_MANIFEST_H

#include <jansson.h>

/* 0, or OTA_EINVAL with "manifest: …" naming the field. */
int manifest_check(const json_t *m);

#endif
