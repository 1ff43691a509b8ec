/*
 * devapi_pki.h - what the device API serves of the signing PKI (issue 13);
 * see devapi_pki.c and docs/update-server.md.
 */
#ifndef OTA_DEVAPI_PKI_H
#define OTA_DEVAPI_PKI_H

#include <stdint.h>

#include "../../common/util.h"

#define DEVAPI_PKI_MANIFEST_MAX (1024 * 1024)

/* The held revocation list as PEM into out; OTA_ENOTFOUND when none. */
int devapi_pki_revocations(struct buf *out);
/* Release `release`'s manifest envelope into out (initialised here);
 * OTA_ENOTFOUND when there is no such release. */
int devapi_pki_manifest(int64_t release, struct buf *out);

/* 1 when allowed(arg, sha256) is non-zero for one of the images the
 * envelope's manifest lists (the device was offered the release), else 0. */
int devapi_pki_offered(const struct buf *env, int (*allowed)(void *arg, const char *sha256), void *arg);

#endif
