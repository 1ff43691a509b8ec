/*
 * provenance.h - in-toto Statement v1 with SLSA provenance v1, in DSSE
 * envelopes.
 *
 * A release records how each image was made as an in-toto Statement whose
 * subjects are the images (name + SHA-256) and whose predicate is SLSA
 * provenance v1 (what was built from which commit, by which builder, when,
 * and what else came out).  The Statement is serialised once, signed as a
 * DSSE envelope, and stored next to the artifacts; anyone can check it
 * offline with the release public key (`openssl dgst -sha256 -verify` over
 * the PAE bytes, see docs/signing.md) or any DSSE verifier (cosign,
 * slsa-verifier, in-toto-golang).
 *
 *   {"payloadType": "application/vnd.in-toto+json",
 *    "payload": base64(statement bytes),
 *    "signatures": [{"keyid": "<sign_key_id>", "sig": base64(DER or Ed25519)}]}
 *
 * Signatures are over the DSSE pre-authentication encoding of the payload
 * type and the exact payload bytes, never over re-serialised JSON.
 */
#ifndef OTA_PROVENANCE_H
#define OTA_PROVENANCE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/util.h"
#include "keys.h"

#define DSSE_INTOTO_TYPE "application/vnd.in-toto+json"
#define INTOTO_STATEMENT_V1 "https://in-toto.io/Statement/v1"
#define SLSA_PROVENANCE_V1 "https://slsa.dev/provenance/v1"

/* DSSE pre-authentication encoding, appended to out:
 * "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body (LEN in decimal). */
int dsse_pae(struct buf *out, const char *payload_type, const void *body, size_t len);

/*
 * Sign body as a DSSE envelope, one signature per key (in order), each with
 * keyid = sign_key_id().  base64 is standard with padding.  *envelope is a
 * new reference.
 */
int dsse_sign(json_t **envelope, const char *payload_type, const void *body, size_t len,
	      struct sign_key *const *keys, size_t nkeys);

/*
 * Verify an envelope against trusted public keys: it is accepted when at
 * least one signature verifies under a trusted key.  A signature with a
 * "keyid" is tried only against the trusted key with that id (case
 * insensitive); one without a keyid against every trusted key.  Both
 * standard and URL-safe base64, padded or not, are accepted.  On success
 * the decoded payload is appended to payload (may be NULL) and the id of
 * the key that verified is written to keyid_out (may be NULL).
 *
 * Errors: OTA_EINVAL for a malformed envelope, naming the field
 * ("DSSE envelope: \"signatures\"[0].\"sig\" is not valid base64");
 * OTA_EAUTH "no signature by a trusted key" followed by why each signature
 * failed ("unknown keyid ...", "signature does not verify").
 */
int dsse_verify(const json_t *envelope, EVP_PKEY *const *pubs, size_t npubs, struct buf *payload,
		char keyid_out[65]);

/* Base64 as DSSE uses it (OpenSSL's codec underneath): encode is standard,
 * padded, no newlines (caller frees); decode appends to out and accepts
 * standard and URL-safe, padded or not, and refuses anything else
 * (OTA_EINVAL: mixed alphabets, stray characters, bad padding). */
char *dsse_base64_encode(const void *data, size_t len);
int dsse_base64_decode(struct buf *out, const char *s, size_t len);

/* ---- SLSA provenance v1 ------------------------------------------- */

struct slsa_subject {
	const char *name;
	const char *sha256;       /* hex */
};

struct slsa_dep {             /* e.g. {"git+file:///x", NULL, "gitCommit", "abc..."} */
	const char *uri;          /* may be NULL if digest is given */
	const char *name;         /* may be NULL */
	const char *digest_alg;   /* "sha256", "gitCommit", ...; NULL: no digest */
	const char *digest;       /* hex */
};

struct slsa_byproduct {
	const char *name;
	const char *media_type;   /* may be NULL */
	const char *sha256;       /* hex, may be NULL */
	json_t *annotations;      /* borrowed, may be NULL */
};

struct slsa_input {
	const struct slsa_subject *subjects;
	size_t nsubjects;
	const char *build_type;          /* URI */
	json_t *external_parameters;     /* borrowed object */
	json_t *internal_parameters;     /* borrowed, may be NULL */
	const struct slsa_dep *deps;
	size_t ndeps;
	const char *builder_id;          /* URI */
	const char *builder_version;     /* may be NULL; becomes {"otacd": version} */
	const char *invocation_id;       /* may be NULL */
	int64_t started_ms, finished_ms; /* Unix ms; <= 0: omitted */
	const struct slsa_byproduct *byproducts;
	size_t nbyproducts;
};

/*
 * Build the Statement (see REFERENCE.md): subject digests and dependency
 * digests are lowercased and checked (sha256 is 64 hex digits, gitCommit 40
 * or 64), timestamps are RFC 3339 UTC with second precision ending in "Z",
 * borrowed JSON is deep-copied.  OTA_EINVAL names the bad input.
 */
int slsa_statement(json_t **out, const struct slsa_input *in);

/*
 * Structural check of a Statement: _type, predicateType, every subject's
 * digest, buildDefinition.buildType, externalParameters, runDetails.builder.id,
 * timestamp shapes, descriptor shapes.  OTA_EINVAL names the field by path
 * ("predicate.runDetails.builder.id is missing or not a string").
 */
int slsa_statement_check(const json_t *stmt);

/* Unix ms as "YYYY-MM-DDTHH:MM:SSZ" (21 bytes with the NUL). */
void slsa_time(char out[32], int64_t ms);

#endif
