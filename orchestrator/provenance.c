/*
 * provenance.c - DSSE envelopes and in-toto / SLSA v1 statements; see
 * provenance.h.
 *
 * Why: the brief's provenance rule is that every released image traces to
 * its commit, pipeline, builder and verdicts, and that the chain verifies
 * offline.  The industry format for that is an in-toto Statement carrying a
 * SLSA provenance predicate, signed as a DSSE envelope; speaking it exactly
 * means cosign, slsa-verifier and plain `openssl` can check our releases.
 *
 * How: statements are built and checked with jansson, field by field, with
 * the names of the specs (REFERENCE.md).  Signing serialises nothing: DSSE
 * signs the pre-authentication encoding (PAE) of the payload type and the
 * payload bytes exactly as the caller serialised them, so a verifier never
 * depends on JSON canonicalisation.  Verification decodes the payload once,
 * rebuilds the PAE, and tries each signature only against the trusted key
 * whose id matches its keyid; it succeeds on the first signature that
 * verifies (a rotation period has envelopes signed by the old key, the new
 * key, or both), and otherwise reports why each signature failed.  Every
 * byte of the envelope is untrusted: field types are checked before use,
 * keyids are echoed only in a sanitised, truncated form, and base64 goes
 * through OpenSSL's decoder after a strict alphabet check (standard or
 * URL-safe, never mixed).
 */
#include "provenance.h"

#include <ctype.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* ---- base64 -------------------------------------------------------- */

char *dsse_base64_encode(const void *data, size_t len)
{
	char *out;

	if (len > (size_t)INT_MAX / 4 * 3 - 3)
		return NULL;
	out = xmalloc(4 * ((len + 2) / 3) + 1);
	EVP_EncodeBlock((unsigned char *)out, data, (int)len);
	return out;
}

int dsse_base64_decode(struct buf *out, const char *s, size_t len)
{
	size_t n = len, pad = 0, full, i;
	int std = 0, url = 0, outl = 0, fin = 0, rc = 0;
	unsigned char *raw = NULL;
	char *tmp = NULL;
	EVP_ENCODE_CTX *ctx = NULL;

	if (len > (size_t)INT_MAX / 2)
		return ota_error_set(OTA_ETOOBIG, "base64 text too long");
	while (n > 0 && s[n - 1] == '=') {
		n--;
		pad++;
	}
	if (pad > 2 || n % 4 == 1 || (pad && (n + pad) % 4 != 0))
		return ota_error_set(OTA_EINVAL, "bad base64 length or padding");
	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (isalnum(c))
			continue;
		if (c == '+' || c == '/')
			std = 1;
		else if (c == '-' || c == '_')
			url = 1;
		else
			return ota_error_set(OTA_EINVAL, "bad base64 character at offset %zu", i);
	}
	if (std && url)
		return ota_error_set(OTA_EINVAL, "base64 mixes the standard and URL-safe alphabets");
	if (n == 0)
		return buf_put(out, "", 0);
	full = (n + 3) / 4 * 4;
	tmp = xmalloc(full + 1);
	for (i = 0; i < n; i++)
		tmp[i] = s[i] == '-' ? '+' : s[i] == '_' ? '/' : s[i];
	for (; i < full; i++)
		tmp[i] = '=';
	tmp[full] = '\0';
	raw = xmalloc(full / 4 * 3 + 3);
	ctx = EVP_ENCODE_CTX_new();
	if (!ctx) {
		rc = ota_error_set(OTA_ENOMEM, "out of memory");
		goto out;
	}
	EVP_DecodeInit(ctx);
	if (EVP_DecodeUpdate(ctx, raw, &outl, (const unsigned char *)tmp, (int)full) < 0 ||
	    EVP_DecodeFinal(ctx, raw + outl, &fin) < 0) {
		rc = ota_error_set(OTA_EINVAL, "bad base64");
		goto out;
	}
	if ((rc = buf_put(out, raw, (size_t)outl + (size_t)fin)) < 0)
		ota_error_set(rc, "decoded base64 does not fit its buffer");
out:
	EVP_ENCODE_CTX_free(ctx);
	free(tmp);
	free(raw);
	return rc;
}

/* ---- DSSE ---------------------------------------------------------- */

static int pae_n(struct buf *out, const char *type, size_t tlen, const void *body, size_t len)
{
	int rc;
	if ((rc = buf_printf(out, "DSSEv1 %zu ", tlen)) < 0 || (rc = buf_put(out, type, tlen)) < 0 ||
	    (rc = buf_printf(out, " %zu ", len)) < 0 || (rc = buf_put(out, body, len)) < 0)
		return ota_error_set(rc, "DSSE: message too large");
	return 0;
}

int dsse_pae(struct buf *out, const char *payload_type, const void *body, size_t len)
{
	if (!payload_type || (!body && len))
		return ota_error_set(OTA_EINVAL, "DSSE: no payload type or body");
	return pae_n(out, payload_type, strlen(payload_type), body ? body : "", len);
}

int dsse_sign(json_t **envelope, const char *payload_type, const void *body, size_t len,
	      struct sign_key *const *keys, size_t nkeys)
{
	struct buf pae = BUF_INIT, sig = BUF_INIT;
	json_t *env = NULL, *sigs = json_array();
	char *b64 = NULL;
	size_t i;
	int rc = 0;

	*envelope = NULL;
	if (!payload_type || (!body && len) || !keys || nkeys == 0) {
		rc = ota_error_set(OTA_EINVAL, "DSSE: nothing to sign or no key to sign with");
		goto out;
	}
	if ((rc = dsse_pae(&pae, payload_type, body, len)) < 0)
		goto out;
	for (i = 0; i < nkeys; i++) {
		buf_clear(&sig);
		if ((rc = sign_key_sign(keys[i], pae.ptr, pae.len, &sig)) < 0)
			goto out;
		free(b64);
		b64 = dsse_base64_encode(sig.ptr, sig.len);
		if (!b64 || json_array_append_new(sigs, json_pack("{s:s, s:s}", "keyid", sign_key_id(keys[i]),
								     "sig", b64)) < 0) {
			rc = ota_error_set(OTA_ERROR, "DSSE: cannot build the signature list");
			goto out;
		}
	}
	free(b64);
	b64 = dsse_base64_encode(body ? body : "", len);
	if (!b64) {
		rc = ota_error_set(OTA_ETOOBIG, "DSSE: payload too large");
		goto out;
	}
	env = json_pack("{s:s, s:s, s:O}", "payload", b64, "payloadType", payload_type, "signatures", sigs);
	if (!env) {
		rc = ota_error_set(OTA_EINVAL, "DSSE: payload type is not valid UTF-8");
		goto out;
	}
	*envelope = env;
out:
	json_decref(sigs);
	free(b64);
	buf_release(&pae);
	buf_release(&sig);
	return rc;
}

/* A keyid from the envelope, safe to echo: printable ASCII, at most 64. */
static void keyid_show(char out[80], const char *s)
{
	size_t len = strnlen(s, 65), i;
	for (i = 0; i < len && i < 64; i++)
		out[i] = isprint((unsigned char)s[i]) ? s[i] : '?';
	if (len > 64) {
		memcpy(out + i, "...", 3);
		i += 3;
	}
	out[i] = '\0';
}

static void why_add(struct buf *why, size_t *nwhy, const char *fmt, ...) OTA_PRINTF(3, 4);
static void why_add(struct buf *why, size_t *nwhy, const char *fmt, ...)
{
	va_list ap;
	if (++*nwhy > 4)
		return;
	if (why->len)
		buf_puts(why, "; ");
	va_start(ap, fmt);
	buf_vprintf(why, fmt, ap);
	va_end(ap);
}

static int malformed(const char *fmt, const char *field)
{
	return ota_error_set(OTA_EINVAL, fmt, field);
}

int dsse_verify(const json_t *envelope, EVP_PKEY *const *pubs, size_t npubs, struct buf *payload,
		char keyid_out[65])
{
	const json_t *jpayload, *jtype, *jsigs;
	struct buf body = BUF_INIT, pae = BUF_INIT, sig = BUF_INIT, why = BUF_INIT;
	char (*ids)[65] = NULL, shown[80];
	size_t i, j, nwhy = 0;
	int rc = 0, found = -1;

	if (!json_is_object(envelope))
		return ota_error_set(OTA_EINVAL, "DSSE envelope: not a JSON object");
	jpayload = json_object_get(envelope, "payload");
	jtype = json_object_get(envelope, "payloadType");
	jsigs = json_object_get(envelope, "signatures");
	if (!json_is_string(jpayload))
		return malformed("DSSE envelope: \"%s\" is missing or not a string", "payload");
	if (!json_is_string(jtype))
		return malformed("DSSE envelope: \"%s\" is missing or not a string", "payloadType");
	if (!json_is_array(jsigs))
		return malformed("DSSE envelope: \"%s\" is missing or not an array", "signatures");
	if (json_array_size(jsigs) == 0)
		return malformed("DSSE envelope: \"%s\" is empty", "signatures");
	if (!pubs || npubs == 0)
		return ota_error_set(OTA_EINVAL, "DSSE: no trusted public keys to verify with");
	if (dsse_base64_decode(&body, json_string_value(jpayload), json_string_length(jpayload)) < 0) {
		rc = ota_error_set(OTA_EINVAL, "DSSE envelope: \"payload\" is not valid base64 (%s)", ota_error_last());
		goto out;
	}
	if ((rc = pae_n(&pae, json_string_value(jtype), json_string_length(jtype), buf_cstr(&body), body.len)) < 0)
		goto out;
	ids = xcalloc(npubs, sizeof(*ids));
	for (j = 0; j < npubs; j++)
		if ((rc = pubkey_id(pubs[j], ids[j])) < 0) {
			ota_error_prefix("DSSE: trusted key %zu", j);
			goto out;
		}

	for (i = 0; i < json_array_size(jsigs) && found < 0; i++) {
		const json_t *s = json_array_get(jsigs, i), *jsig, *jkid;
		const char *kid = NULL;
		int matched = 0;

		if (!json_is_object(s)) {
			rc = ota_error_set(OTA_EINVAL, "DSSE envelope: \"signatures\"[%zu] is not an object", i);
			goto out;
		}
		jsig = json_object_get(s, "sig");
		jkid = json_object_get(s, "keyid");
		if (!json_is_string(jsig)) {
			rc = ota_error_set(OTA_EINVAL, "DSSE envelope: \"signatures\"[%zu].\"sig\" is missing or not a string", i);
			goto out;
		}
		if (jkid && !json_is_null(jkid) && !json_is_string(jkid)) {
			rc = ota_error_set(OTA_EINVAL, "DSSE envelope: \"signatures\"[%zu].\"keyid\" is not a string", i);
			goto out;
		}
		if (json_is_string(jkid) && json_string_length(jkid) > 0)
			kid = json_string_value(jkid);
		buf_clear(&sig);
		if (dsse_base64_decode(&sig, json_string_value(jsig), json_string_length(jsig)) < 0) {
			why_add(&why, &nwhy, "\"signatures\"[%zu].\"sig\" is not valid base64", i);
			continue;
		}
		for (j = 0; j < npubs && found < 0; j++) {
			if (kid && (strlen(kid) != 64 || strcasecmp(kid, ids[j]) != 0))
				continue;
			matched = 1;
			if (pubkey_verify(pubs[j], pae.ptr, pae.len, sig.ptr, sig.len) == 0)
				found = (int)j;
		}
		if (found >= 0)
			break;
		if (!matched) {
			keyid_show(shown, kid ? kid : "");
			why_add(&why, &nwhy, "\"signatures\"[%zu]: unknown keyid %s", i, shown);
		} else if (kid) {
			why_add(&why, &nwhy, "\"signatures\"[%zu] by keyid %.16s...: signature does not verify", i, kid);
		} else {
			why_add(&why, &nwhy, "\"signatures\"[%zu] (no keyid): signature does not verify under any trusted key", i);
		}
	}
	if (found < 0) {
		if (nwhy > 4)
			buf_printf(&why, "; and %zu more", nwhy - 4);
		rc = ota_error_set(OTA_EAUTH, "DSSE envelope: no signature by a trusted key (%s)", buf_cstr(&why));
		goto out;
	}
	if (payload && (rc = buf_put(payload, buf_cstr(&body), body.len)) < 0) {
		ota_error_set(rc, "DSSE payload does not fit its buffer");
		goto out;
	}
	if (keyid_out)
		memcpy(keyid_out, ids[found], 65);
out:
	free(ids);
	buf_release(&body);
	buf_release(&pae);
	buf_release(&sig);
	buf_release(&why);
	return rc;
}

/* ---- SLSA provenance v1: building ---------------------------------- */

void slsa_time(char out[32], int64_t ms)
{
	time_t t = (time_t)(ms >= 0 ? ms / 1000 : (ms - 999) / 1000);
	struct tm tm;

	if (!gmtime_r(&t, &tm) || strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
		memcpy(out, "1970-01-01T00:00:00Z", 21);
}

static int is_hex(const char *s, size_t n)
{
	return strspn(s, "0123456789abcdef") == n;
}

/* A digest value, lowercased and checked; "alg" decides the length. */
static int digest_value(json_t *set, const char *alg, const char *hex, const char *what)
{
	size_t n = hex ? strlen(hex) : 0, i;
	char *low;
	int ok;

	if (!alg || !*alg)
		return ota_error_set(OTA_EINVAL, "%s: digest algorithm missing", what);
	if (n == 0 || n > 128)
		return ota_error_set(OTA_EINVAL, "%s: %s digest missing or too long", what, alg);
	low = xstrdup(hex);
	for (i = 0; i < n; i++)
		low[i] = (char)tolower((unsigned char)low[i]);
	ok = is_hex(low, n);
	if (ok && strcmp(alg, "sha256") == 0)
		ok = n == 64;
	else if (ok && (strcmp(alg, "gitCommit") == 0 || strcmp(alg, "gitTree") == 0))
		ok = n == 40 || n == 64;
	else if (ok && strcmp(alg, "sha1") == 0)
		ok = n == 40;
	else if (ok && strcmp(alg, "sha512") == 0)
		ok = n == 128;
	if (!ok) {
		free(low);
		return ota_error_set(OTA_EINVAL, "%s: %s digest is not a %s hex string", what, alg, alg);
	}
	json_object_set_new(set, alg, json_string(low));
	free(low);
	return 0;
}

static int set_str(json_t *obj, const char *key, const char *val, const char *what)
{
	json_t *s;
	if (!val)
		return 0;
	s = json_string(val);
	if (!s)
		return ota_error_set(OTA_EINVAL, "%s: %s is not valid UTF-8", what, key);
	json_object_set_new(obj, key, s);
	return 0;
}

static int copy_obj(json_t *dst, const char *key, json_t *src, const char *what)
{
	json_t *c;
	if (!json_is_object(src))
		return ota_error_set(OTA_EINVAL, "%s is not a JSON object", what);
	c = json_deep_copy(src);
	if (!c)
		return ota_error_set(OTA_ENOMEM, "out of memory");
	json_object_set_new(dst, key, c);
	return 0;
}

int slsa_statement(json_t **out, const struct slsa_input *in)
{
	json_t *st = json_object(), *subjects = json_array(), *pred = json_object(), *def = json_object();
	json_t *run = json_object(), *builder = json_object(), *meta = json_object();
	char what[96], ts[32];
	size_t i;
	int rc = 0;

	*out = NULL;
	json_object_set_new(st, "_type", json_string(INTOTO_STATEMENT_V1));
	json_object_set(st, "subject", subjects);
	json_object_set_new(st, "predicateType", json_string(SLSA_PROVENANCE_V1));
	json_object_set(st, "predicate", pred);
	json_object_set(pred, "buildDefinition", def);
	json_object_set(pred, "runDetails", run);

	if (!in->subjects || in->nsubjects == 0) {
		rc = ota_error_set(OTA_EINVAL, "provenance: no subjects");
		goto out;
	}
	for (i = 0; i < in->nsubjects; i++) {
		json_t *sub = json_object(), *dig = json_object();
		json_array_append_new(subjects, sub);
		snprintf(what, sizeof(what), "provenance: subject %zu", i);
		if (!in->subjects[i].name || !*in->subjects[i].name) {
			json_decref(dig);
			rc = ota_error_set(OTA_EINVAL, "%s: no name", what);
			goto out;
		}
		if ((rc = set_str(sub, "name", in->subjects[i].name, what)) < 0) {
			json_decref(dig);
			goto out;
		}
		json_object_set_new(sub, "digest", dig);
		if ((rc = digest_value(dig, "sha256", in->subjects[i].sha256, what)) < 0)
			goto out;
	}

	/* buildDefinition */
	if (!in->build_type || !*in->build_type) {
		rc = ota_error_set(OTA_EINVAL, "provenance: no buildType");
		goto out;
	}
	if ((rc = set_str(def, "buildType", in->build_type, "provenance")) < 0 ||
	    (rc = copy_obj(def, "externalParameters", in->external_parameters, "provenance: externalParameters")) < 0)
		goto out;
	if (in->internal_parameters &&
	    (rc = copy_obj(def, "internalParameters", in->internal_parameters, "provenance: internalParameters")) < 0)
		goto out;
	if (in->ndeps) {
		json_t *deps = json_array();
		json_object_set_new(def, "resolvedDependencies", deps);
		for (i = 0; i < in->ndeps; i++) {
			const struct slsa_dep *d = &in->deps[i];
			json_t *rd = json_object();
			json_array_append_new(deps, rd);
			snprintf(what, sizeof(what), "provenance: dependency %zu", i);
			if (!d->uri && !d->digest) {
				rc = ota_error_set(OTA_EINVAL, "%s: needs a uri or a digest", what);
				goto out;
			}
			if ((rc = set_str(rd, "uri", d->uri, what)) < 0)
				goto out;
			if (d->digest) {
				json_t *dig = json_object();
				json_object_set_new(rd, "digest", dig);
				if ((rc = digest_value(dig, d->digest_alg, d->digest, what)) < 0)
					goto out;
			}
			if ((rc = set_str(rd, "name", d->name, what)) < 0)
				goto out;
		}
	}

	/* runDetails */
	if (!in->builder_id || !*in->builder_id) {
		rc = ota_error_set(OTA_EINVAL, "provenance: no builder id");
		goto out;
	}
	json_object_set(run, "builder", builder);
	if ((rc = set_str(builder, "id", in->builder_id, "provenance: builder")) < 0)
		goto out;
	if (in->builder_version) {
		json_t *v = json_object();
		json_object_set_new(builder, "version", v);
		if ((rc = set_str(v, "otacd", in->builder_version, "provenance: builder version")) < 0)
			goto out;
	}
	if ((rc = set_str(meta, "invocationId", in->invocation_id, "provenance: metadata")) < 0)
		goto out;
	if (in->started_ms > 0) {
		slsa_time(ts, in->started_ms);
		json_object_set_new(meta, "startedOn", json_string(ts));
	}
	if (in->finished_ms > 0) {
		slsa_time(ts, in->finished_ms);
		json_object_set_new(meta, "finishedOn", json_string(ts));
	}
	if (json_object_size(meta))
		json_object_set(run, "metadata", meta);
	if (in->nbyproducts) {
		json_t *bps = json_array();
		json_object_set_new(run, "byproducts", bps);
		for (i = 0; i < in->nbyproducts; i++) {
			const struct slsa_byproduct *b = &in->byproducts[i];
			json_t *rd = json_object(), *dig = json_object();
			json_array_append_new(bps, rd);
			snprintf(what, sizeof(what), "provenance: byproduct %zu", i);
			if ((rc = set_str(rd, "name", b->name, what)) < 0)
				goto out;
			json_object_set_new(rd, "digest", dig);
			if ((rc = digest_value(dig, "sha256", b->sha256, what)) < 0 ||
			    (rc = set_str(rd, "mediaType", b->media_type, what)) < 0)
				goto out;
			if (b->annotations && (rc = copy_obj(rd, "annotations", b->annotations, what)) < 0)
				goto out;
		}
	}
	if ((rc = slsa_statement_check(st)) < 0) {
		ota_error_prefix("provenance: built an invalid statement");
		goto out;
	}
	*out = st;
	st = NULL;
out:
	json_decref(st);
	json_decref(subjects);
	json_decref(pred);
	json_decref(def);
	json_decref(run);
	json_decref(builder);
	json_decref(meta);
	return rc;
}

/* ---- SLSA provenance v1: checking ---------------------------------- */

static int bad(const char *path, const char *problem)
{
	return ota_error_set(OTA_EINVAL, "statement: %s %s", path, problem);
}

/* "YYYY-MM-DDTHH:MM:SS[.frac]Z" */
static int rfc3339_utc(const char *s)
{
	static const char shape[] = "dddd-dd-ddTdd:dd:dd";
	size_t i;
	int mon, day, hh, mm, ss;

	for (i = 0; shape[i]; i++) {
		if (shape[i] == 'd' ? !isdigit((unsigned char)s[i]) : s[i] != shape[i])
			return 0;
	}
	mon = (s[5] - '0') * 10 + s[6] - '0';
	day = (s[8] - '0') * 10 + s[9] - '0';
	hh = (s[11] - '0') * 10 + s[12] - '0';
	mm = (s[14] - '0') * 10 + s[15] - '0';
	ss = (s[17] - '0') * 10 + s[18] - '0';
	if (mon < 1 || mon > 12 || day < 1 || day > 31 || hh > 23 || mm > 59 || ss > 60)
		return 0;
	if (s[i] == '.') {
		size_t d = 0;
		for (i++; isdigit((unsigned char)s[i]); i++)
			d++;
		if (d == 0)
			return 0;
	}
	return s[i] == 'Z' && s[i + 1] == '\0';
}

static int check_digests(const json_t *dig, const char *path)
{
	const char *alg;
	json_t *v;
	char p[256];

	if (!json_is_object(dig) || json_object_size(dig) == 0)
		return bad(path, "is missing or not a non-empty object");
	json_object_foreach((json_t *)dig, alg, v) {
		const char *hex = json_string_value(v);
		size_t n = hex ? strlen(hex) : 0;
		snprintf(p, sizeof(p), "%.200s.%.32s", path, alg);
		if (!hex || n == 0 || !is_hex(hex, n))
			return bad(p, "is not a lowercase hex string");
		if (strcmp(alg, "sha256") == 0 && n != 64)
			return bad(p, "is not 64 lowercase hex digits");
	}
	return 0;
}

static int check_opt_string(const json_t *obj, const char *key, const char *path)
{
	json_t *v = json_object_get(obj, key);
	char p[256];
	if (v && !json_is_string(v)) {
		snprintf(p, sizeof(p), "%.200s.%.32s", path, key);
		return bad(p, "is not a string");
	}
	return 0;
}

static int check_descriptor(const json_t *rd, const char *path)
{
	static const char *const strings[] = { "uri", "name", "downloadLocation", "mediaType", "content" };
	json_t *ann;
	char p[256];
	size_t i;
	int rc;

	if (!json_is_object(rd))
		return bad(path, "is not an object");
	for (i = 0; i < OTA_ARRAY_SIZE(strings); i++)
		if ((rc = check_opt_string(rd, strings[i], path)) < 0)
			return rc;
	if (!json_object_get(rd, "uri") && !json_object_get(rd, "digest") && !json_object_get(rd, "content"))
		return bad(path, "needs at least one of uri, digest, content");
	if (json_object_get(rd, "digest")) {
		snprintf(p, sizeof(p), "%.200s.digest", path);
		if ((rc = check_digests(json_object_get(rd, "digest"), p)) < 0)
			return rc;
	}
	ann = json_object_get(rd, "annotations");
	if (ann && !json_is_object(ann)) {
		snprintf(p, sizeof(p), "%.200s.annotations", path);
		return bad(p, "is not an object");
	}
	return 0;
}

static int check_descriptors(const json_t *obj, const char *key, const char *path)
{
	json_t *arr = json_object_get(obj, key), *rd;
	char p[256];
	size_t i;
	int rc;

	snprintf(p, sizeof(p), "%.200s.%.32s", path, key);
	if (!arr)
		return 0;
	if (!json_is_array(arr))
		return bad(p, "is not an array");
	json_array_foreach(arr, i, rd) {
		char q[256];
		snprintf(q, sizeof(q), "%.200s[%zu]", p, i);
		if ((rc = check_descriptor(rd, q)) < 0)
			return rc;
	}
	return 0;
}

int slsa_statement_check(const json_t *st)
{
	const json_t *subjects, *pred, *def, *run, *builder, *meta, *v, *sub;
	const char *key;
	char p[64];
	size_t i;
	int rc;

	if (!json_is_object(st))
		return ota_error_set(OTA_EINVAL, "statement: not a JSON object");
	if (!json_is_string(json_object_get(st, "_type")) ||
	    strcmp(json_string_value(json_object_get(st, "_type")), INTOTO_STATEMENT_V1) != 0)
		return bad("_type", "is not \"" INTOTO_STATEMENT_V1 "\"");
	subjects = json_object_get(st, "subject");
	if (!json_is_array(subjects) || json_array_size(subjects) == 0)
		return bad("subject", "is missing or not a non-empty array");
	json_array_foreach(subjects, i, sub) {
		snprintf(p, sizeof(p), "subject[%zu]", i);
		if (!json_is_object(sub))
			return bad(p, "is not an object");
		if ((rc = check_opt_string(sub, "name", p)) < 0)
			return rc;
		snprintf(p, sizeof(p), "subject[%zu].digest", i);
		if ((rc = check_digests(json_object_get(sub, "digest"), p)) < 0)
			return rc;
	}
	if (!json_is_string(json_object_get(st, "predicateType")) ||
	    strcmp(json_string_value(json_object_get(st, "predicateType")), SLSA_PROVENANCE_V1) != 0)
		return bad("predicateType", "is not \"" SLSA_PROVENANCE_V1 "\"");
	pred = json_object_get(st, "predicate");
	if (!json_is_object(pred))
		return bad("predicate", "is missing or not an object");

	def = json_object_get(pred, "buildDefinition");
	if (!json_is_object(def))
		return bad("predicate.buildDefinition", "is missing or not an object");
	v = json_object_get(def, "buildType");
	if (!json_is_string(v) || json_string_length(v) == 0)
		return bad("predicate.buildDefinition.buildType", "is missing or not a string");
	if (!json_is_object(json_object_get(def, "externalParameters")))
		return bad("predicate.buildDefinition.externalParameters", "is missing or not an object");
	v = json_object_get(def, "internalParameters");
	if (v && !json_is_object(v))
		return bad("predicate.buildDefinition.internalParameters", "is not an object");
	if ((rc = check_descriptors(def, "resolvedDependencies", "predicate.buildDefinition")) < 0)
		return rc;

	run = json_object_get(pred, "runDetails");
	if (!json_is_object(run))
		return bad("predicate.runDetails", "is missing or not an object");
	builder = json_object_get(run, "builder");
	if (!json_is_object(builder))
		return bad("predicate.runDetails.builder", "is missing or not an object");
	v = json_object_get(builder, "id");
	if (!json_is_string(v) || json_string_length(v) == 0)
		return bad("predicate.runDetails.builder.id", "is missing or not a string");
	v = json_object_get(builder, "version");
	if (v) {
		json_t *x;
		if (!json_is_object(v))
			return bad("predicate.runDetails.builder.version", "is not an object");
		json_object_foreach((json_t *)v, key, x)
			if (!json_is_string(x))
				return bad("predicate.runDetails.builder.version", "has a value that is not a string");
	}
	if ((rc = check_descriptors(builder, "builderDependencies", "predicate.runDetails.builder")) < 0)
		return rc;
	meta = json_object_get(run, "metadata");
	if (meta) {
		static const char *const times[] = { "startedOn", "finishedOn" };
		if (!json_is_object(meta))
			return bad("predicate.runDetails.metadata", "is not an object");
		if ((rc = check_opt_string(meta, "invocationId", "predicate.runDetails.metadata")) < 0)
			return rc;
		for (i = 0; i < OTA_ARRAY_SIZE(times); i++) {
			v = json_object_get(meta, times[i]);
			snprintf(p, sizeof(p), "predicate.runDetails.metadata.%s", times[i]);
			if (v && (!json_is_string(v) || !rfc3339_utc(json_string_value(v))))
				return bad(p, "is not an RFC 3339 UTC time ending in Z");
		}
	}
	return check_descriptors(run, "byproducts", "predicate.runDetails");
}
