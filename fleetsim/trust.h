/*
 * trust.h - a simulated device's side of the signing PKI (issue 13):
 * releases are trusted because their signing chain ends at the root the
 * device was built with, not because their key is listed; a root-signed
 * revocation list, fetched when a check-in says a newer one exists, takes
 * a key out of service, and images already judged are judged again.
 *
 * The order a device checks an image in (sim_trust_verify_image):
 *   1. the manifest envelope of the offered release (GET
 *      /device/v1/releases/ID/manifest): its signing_chain ends at the
 *      root, valid at the manifest's built_at, codeSigning, not revoked;
 *   2. the envelope (DSSE) verifies with that leaf key;
 *   3. the image's sha256 is one of the manifest's images;
 *   4. the MCUboot signature verifies with the leaf key (what the bootloader
 *      will check), and, when the device's bootloader key slots are given
 *      (--key), the leaf key is one of them: an image the bootloader cannot
 *      verify is refused before it is written, never bricking the device.
 * Everything here runs on the simulator's one thread.
 */
#ifndef OTA_FLEETSIM_TRUST_H
#define OTA_FLEETSIM_TRUST_H

#include <openssl/x509.h>
#include <stdint.h>

#include "sim.h"

struct sim_trust {
	X509 *root;                 /* owned; NULL: chain mode is off */
	X509_CRL *crl;              /* owned: the newest accepted list */
	int64_t number;             /* its CRL number, 0 none */
	int64_t crl_accepted, crl_refused, images_revoked, chain_refused;
};

/* Load the root certificate (PEM file). */
int sim_trust_init(struct sim_trust *t, const char *root_path);
void sim_trust_release(struct sim_trust *t);

/*
 * Judge img (bytes data/len) with the release's manifest envelope env:
 * sets img's verdict (SIM_IMG_OK / SIM_IMG_BAD with the reason) and keeps
 * the chain and signing time for later revocations.  boot_keys: the
 * bootloader's key slots (may be empty: any certified key).  0 OK,
 * OTA_EINVAL refused.
 */
int sim_trust_verify_image(struct sim_trust *t, struct sim_imgcache *c, struct sim_image *img, const void *data,
			   size_t len, const void *env, size_t envlen, EVP_PKEY **boot_keys, size_t nboot);

/*
 * A revocation list from the server: accepted when the root signed it and
 * its number is above the held one (else refused, counted, nothing
 * changes); then every image judged OK is judged again against it.
 */
int sim_trust_accept_crl(struct sim_trust *t, struct sim_imgcache *c, const void *data, size_t len);

#endif
