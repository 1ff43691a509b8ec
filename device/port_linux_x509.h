/*
 * port_linux_x509.h - the X.509 hooks of libotadev on Linux (OpenSSL):
 * a release's signing chain to the anchor, the anchor's revocation list
 * (otadev.h: x509_chain, x509_crl).
 */
#ifndef OTADEV_PORT_LINUX_X509_H
#define OTADEV_PORT_LINUX_X509_H

#include "otadev.h"

/* The config's `anchor`: a PEM self-signed CA certificate, as DER (OPENSSL_free). */
int port_linux_x509_load_anchor(const char *path, unsigned char **der, size_t *len);
int port_linux_x509_chain(void *ctx, const struct otadev_x509_req *req, uint8_t *key, size_t cap, size_t *key_len,
			  const char **why);
int port_linux_x509_crl(void *ctx, const uint8_t *anchor, size_t anchor_len, const uint8_t *crl, size_t len,
			uint64_t *number, const char **why);

#endif
