/*
 * manifest.c - strict schema check of release manifests; see manifest.h.
 */
#include "manifest.h"

#include <stdio.h>
#include <string.h>

#include "../common/util.h"

enum kind { STR, STR_OR_NULL, INT, ARR, OBJ };

struct field {
	const char *name;
	enum kind kind;
	int required;
};

static const struct field top[] = {
	{ "product", STR, 1 },       { "version", STR, 1 },        { "build_version", STR, 1 },
	{ "run", INT, 1 },           { "git", OBJ, 1 },            { "built_at", STR, 1 },
	{ "builders", ARR, 1 },      { "hardware", ARR, 1 },       { "min_bootloader", STR_OR_NULL, 0 },
	{ "security_counter", INT, 1 }, { "key_id", STR, 1 },      { "images", ARR, 1 },
	{ "dependencies", ARR, 0 },  /* toolchain versions: [{command, version}] */
	{ "reissue_of", OBJ, 0 },    /* rollback --reissue: {release, run} re-signed */
	{ "signing_chain", ARR, 0 }, /* issue 13: the signing key's certificates, PEM, leaf first (pki.h) */
	{ "deltas", ARR, 0 },        /* issue 15: patches from earlier releases (stages/release_delta.c) */
};

static const struct field git[] = {
	{ "repo", STR_OR_NULL, 0 }, { "ref", STR_OR_NULL, 0 }, { "commit", STR_OR_NULL, 0 }, { "tree", STR_OR_NULL, 0 },
};

static const struct field image[] = {
	{ "name", STR, 1 }, { "type", STR, 1 }, { "hardware", STR_OR_NULL, 0 }, { "sha256", STR, 1 }, { "size", INT, 1 },
	{ "encryption", OBJ, 0 }, /* issue 13, encrypted images: the device key class */
};

/* issue 15: a VCDIFF patch from an earlier release's image to one of these */
static const struct field delta[] = {
	{ "name", STR, 1 },         { "hardware", STR_OR_NULL, 0 }, { "to", STR, 1 },     { "to_sha256", STR, 1 },
	{ "from_version", STR, 1 }, { "from_sha256", STR, 1 },      { "base", STR, 1 },   { "sha256", STR, 1 },
	{ "size", INT, 1 },         { "format", STR, 1 },
};

static int is_sha(const char *s)
{
	return s && strlen(s) == 64 && strspn(s, "0123456789abcdef") == 64;
}

/* issue 13, encrypted images: which device key an image needs */
static const struct field encryption[] = {
	{ "scheme", STR, 1 }, { "cipher", STR, 1 }, { "key", STR, 1 }, { "key_id", STR, 1 },
};

static int kind_ok(const json_t *v, enum kind k)
{
	switch (k) {
	case STR: return json_is_string(v);
	case STR_OR_NULL: return json_is_string(v) || json_is_null(v);
	case INT: return json_is_integer(v) && json_integer_value(v) >= 0;
	case ARR: return json_is_array(v);
	default: return json_is_object(v);
	}
}

static int check(const json_t *o, const struct field *f, size_t n, const char *where)
{
	const char *key;
	json_t *v;

	if (!json_is_object(o))
		return ota_error_set(OTA_EINVAL, "manifest: %s must be an object", where);
	json_object_foreach((json_t *)o, key, v) {
		size_t i;
		for (i = 0; i < n; i++)
			if (!strcmp(f[i].name, key))
				break;
		if (i == n)
			return ota_error_set(OTA_EINVAL, "manifest: unknown field '%s%s%s'", where, *where ? "." : "", key);
		if (!kind_ok(v, f[i].kind))
			return ota_error_set(OTA_EINVAL, "manifest: field '%s%s%s' has the wrong type", where, *where ? "." : "", key);
	}
	for (size_t i = 0; i < n; i++)
		if (f[i].required && !json_object_get(o, f[i].name))
			return ota_error_set(OTA_EINVAL, "manifest: field '%s%s%s' is missing", where, *where ? "." : "", f[i].name);
	return 0;
}

int manifest_check(const json_t *m)
{
	size_t i;
	json_t *v;
	int rc;

	if ((rc = check(m, top, OTA_ARRAY_SIZE(top), "")) < 0)
		return rc;
	if ((rc = check(json_object_get(m, "git"), git, OTA_ARRAY_SIZE(git), "git")) < 0)
		return rc;
	if (!json_array_size(json_object_get(m, "images")))
		return ota_error_set(OTA_EINVAL, "manifest: 'images' is empty");
	json_array_foreach(json_object_get(m, "images"), i, v) {
		char where[32];
		const char *sha;
		snprintf(where, sizeof(where), "images[%zu]", i);
		if ((rc = check(v, image, OTA_ARRAY_SIZE(image), where)) < 0)
			return rc;
		sha = json_string_value(json_object_get(v, "sha256"));
		if (strlen(sha) != 64 || strspn(sha, "0123456789abcdef") != 64)
			return ota_error_set(OTA_EINVAL, "manifest: %s.sha256 is not 64 lowercase hex digits", where);
		if (json_object_get(v, "encryption")) {
			const json_t *e = json_object_get(v, "encryption");
			const char *sc = json_string_value(json_object_get(e, "scheme"));
			const char *ci = json_string_value(json_object_get(e, "cipher"));
			char ewhere[48];
			snprintf(ewhere, sizeof(ewhere), "%s.encryption", where);
			if ((rc = check(e, encryption, OTA_ARRAY_SIZE(encryption), ewhere)) < 0)
				return rc;
			if ((strcmp(sc, "ecies-p256") && strcmp(sc, "ecies-x25519")) ||
			    (strcmp(ci, "aes128") && strcmp(ci, "aes256")))
				return ota_error_set(OTA_EINVAL, "manifest: %s: scheme must be ecies-p256 or ecies-x25519, "
						     "cipher aes128 or aes256", ewhere);
		}
	}
	json_array_foreach(json_object_get(m, "signing_chain"), i, v)
		if (!json_is_string(v) || i >= 4)
			return ota_error_set(OTA_EINVAL, "manifest: signing_chain[%zu] must be a PEM string (at most 4)", i);
	if (json_object_get(m, "signing_chain") && !json_array_size(json_object_get(m, "signing_chain")))
		return ota_error_set(OTA_EINVAL, "manifest: 'signing_chain' is empty");
	json_array_foreach(json_object_get(m, "hardware"), i, v)
		if (!json_is_string(v))
			return ota_error_set(OTA_EINVAL, "manifest: hardware[%zu] must be a string", i);
	json_array_foreach(json_object_get(m, "deltas"), i, v) {
		char where[32];
		snprintf(where, sizeof(where), "deltas[%zu]", i);
		if ((rc = check(v, delta, OTA_ARRAY_SIZE(delta), where)) < 0)
			return rc;
		if (!is_sha(json_string_value(json_object_get(v, "sha256"))) ||
		    !is_sha(json_string_value(json_object_get(v, "to_sha256"))) ||
		    !is_sha(json_string_value(json_object_get(v, "from_sha256"))) ||
		    !is_sha(json_string_value(json_object_get(v, "base"))))
			return ota_error_set(OTA_EINVAL, "manifest: %s: sha256, to_sha256, from_sha256 and base must be 64 "
					     "lowercase hex digits", where);
		if (strcmp(json_string_value(json_object_get(v, "format")), "vcdiff"))
			return ota_error_set(OTA_EINVAL, "manifest: %s.format must be vcdiff", where);
	}
	return 0;
}
