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

#endif
