/*
 * trusted_key.h - the public key whose signatures the update agent accepts
 * (SubjectPublicKeyInfo DER, EC P-256 or Ed25519).  src/trusted_key.c is a
 * development key; `make TRUSTED_KEY=release.pub.der` compiles a product's
 * key in instead (openssl pkey -pubin -in release.pub -outform DER).
 */
#ifndef SENSOR_TRUSTED_KEY_H
#define SENSOR_TRUSTED_KEY_H

#include <stddef.h>
#include <stdint.h>

extern const uint8_t trusted_key[];
extern const size_t trusted_key_len;

#endif
