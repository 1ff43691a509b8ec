/*
 * otadev_chain.c - issue 13's signing PKI on the device: an image is taken
 * because its signing key was certified by the root the device holds (the
 * anchor) and is not revoked, not because its key is in a list.
 *
 * What the device reads is what otacd sends every verifier
 * (orchestrator/fleet/devapi_pki.c, the same bytes fleetsim/trust.c checks):
 *
 *   GET /device/v1/revocations            the root-signed X.509 CRL (PEM);
 *                                         fetched when one is held (its
 *                                         number is in the record) or the
 *                                         check-in announces one
 *                                         ("revocations": N)
 *   GET /device/v1/releases/ID/manifest   the release's DSSE envelope; its
 *                                         payload (the manifest) carries
 *                                         "signing_chain" (PEM, leaf first),
 *                                         "built_at" and "images"
 *
 * Both land in the caller's work buffer (cfg->work: the CRL's DER first,
 * then the envelope, then jsmn's tokens), are decoded in place (base64 and
 * PEM shrink; the envelope becomes DSSE's PAE, whole, for an Ed25519
 * signature, then the signatures, the manifest's tokens and the
 * certificates' DER), and nothing outlives the check but the leaf key
 * (<= 128 bytes, the caller's) and the CRL number (the record).  X.509 itself (the
 * chain to the anchor at built_at, the leaf's usages, the CRL's signature
 * and entries) is the port's x509 hooks: OpenSSL on Linux, on an MCU the
 * X.509 code it already links for TLS with its device certificate, so no
 * second ASN.1 parser is written here.  What this file parses itself (JSON
 * with jsmn, base64, PEM armour, RFC 3339 time) is bounded and fuzzed
 * (fuzz/fuzz_devchain.c).
 *
 * Checks, in order: the CRL is the anchor's and not older than the one the
 * device held (a server cannot roll revocations back; one that withholds
 * the list gets the image refused); the chain ends at the anchor, valid at
 * built_at, leaf codeSigning and not revoked; the envelope's signature
 * (ECDSA P-256 over SHA-256 of DSSE's PAE through the verify hook, or
 * Ed25519 over the PAE itself through verify_msg, chosen by the leaf's
 * key type) verifies with the leaf key, so
 * built_at and the image list are the signer's; the offered image is one
 * of the manifest's.  otadev.c then verifies the MCUboot signature with the
 * leaf key and requires the leaf to be one of the bootloader's key slots.
 */
#include "otadev.h"

#include <string.h>

#define JSMN_STATIC
#define JSMN_STRICT
#include <jsmn.h>

#define TYPE_MAX 64

/* ---- base64 and PEM, in place -------------------------------------------- */

static int b64val(int c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+' || c == '-')
		return 62;
	if (c == '/' || c == '_')
		return 63;
	return -1;
}

/*
 * Decode base64 (standard or URL alphabet, padding optional) from buf[0,len)
 * into buf from its start: the output never overtakes the input.  Line
 * breaks, as bytes or as JSON escapes (\n, \r), and "\/" are skipped; any
 * other byte is an error.  The decoded length, or <0.
 */
static long b64_decode_in_place(uint8_t *buf, size_t len)
{
	uint32_t acc = 0;
	size_t i, o = 0;
	int bits = 0, pad = 0;

	for (i = 0; i < len; i++) {
		int c = buf[i], v;
		if (c == '\\' && i + 1 < len && (buf[i + 1] == 'n' || buf[i + 1] == 'r')) {
			i++;
			continue;
		}
		if (c == '\\' && i + 1 < len && buf[i + 1] == '/')
			c = buf[++i];
		if (c == '\n' || c == '\r' || c == ' ')
			continue;
		if (c == '=') {
			pad++;
			continue;
		}
		if (pad || (v = b64val(c)) < 0)
			return OTADEV_EINVAL;
		acc = (acc << 6) | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			buf[o++] = (uint8_t)(acc >> bits);
		}
	}
	if (bits >= 6 || pad > 2)
		return OTADEV_EINVAL;
	return (long)o;
}

static const char *find(const char *s, size_t len, const char *needle)
{
	size_t n = strlen(needle), i;
	for (i = 0; n <= len && i <= len - n; i++)
		if (!memcmp(s + i, needle, n))
			return s + i;
	return NULL;
}

int otadev_pem_to_der(char *buf, size_t len, const char *label)
{
	char begin[40] = "-----BEGIN ", end[40] = "-----END ";
	const char *b, *e;
	size_t lab = strlen(label);
	long n;

	if (lab > sizeof(begin) - 11 - 6)   /* "-----BEGIN " label "-----" NUL */
		return OTADEV_EINVAL;
	memcpy(begin + 11, label, lab);
	memcpy(begin + 11 + lab, "-----", 6);
	memcpy(end + 9, label, lab);
	memcpy(end + 9 + lab, "-----", 6);
	if (!(b = find(buf, len, begin)))
		return OTADEV_EINVAL;
	b += strlen(begin);
	if (!(e = find(b, len - (size_t)(b - buf), end)))
		return OTADEV_EINVAL;
	memmove(buf, b, (size_t)(e - b));
	n = b64_decode_in_place((uint8_t *)buf, (size_t)(e - b));
	return n <= 0 || n > 0x7fffffffl ? OTADEV_EINVAL : (int)n;
}

/* ---- RFC 3339 to Unix seconds (no libc time) ------------------------------- */

static int digits(const char *s, int n, uint32_t *out)
{
	uint32_t v = 0;
	int i;
	for (i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (uint32_t)(s[i] - '0');
	}
	*out = v;
	return 0;
}

/* "2026-12-02T06:40:30Z", fractions allowed, Z or +hh:mm / -hh:mm. */
static int parse_time(const char *s, size_t len, uint64_t *out)
{
	uint32_t y, mo, d, h, mi, se, oh = 0, om = 0;
	int64_t days, t;
	size_t i = 19;
	int sign = 0;

	if (len < 20 || digits(s, 4, &y) || s[4] != '-' || digits(s + 5, 2, &mo) || s[7] != '-' ||
	    digits(s + 8, 2, &d) || (s[10] != 'T' && s[10] != 't') || digits(s + 11, 2, &h) || s[13] != ':' ||
	    digits(s + 14, 2, &mi) || s[16] != ':' || digits(s + 17, 2, &se))
		return OTADEV_EINVAL;
	if (y < 1970 || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || se > 60)
		return OTADEV_EINVAL;
	if (s[i] == '.')
		for (i++; i < len && s[i] >= '0' && s[i] <= '9'; i++)
			;
	if (i < len && (s[i] == 'Z' || s[i] == 'z')) {
		i++;
	} else if (i + 6 == len && (s[i] == '+' || s[i] == '-')) {
		sign = s[i] == '-' ? 1 : -1;
		if (digits(s + i + 1, 2, &oh) || s[i + 3] != ':' || digits(s + i + 4, 2, &om) || oh > 23 || om > 59)
			return OTADEV_EINVAL;
		i += 6;
	}
	if (i != len)
		return OTADEV_EINVAL;
	/* days from civil (Howard Hinnant's algorithm) */
	{
		int64_t yy = (int64_t)y - (mo <= 2), era = yy / 400, yoe = yy - era * 400;
		int64_t doy = (153 * ((int64_t)mo + (mo > 2 ? -3 : 9)) + 2) / 5 + (int64_t)d - 1;
		int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
		days = era * 146097 + doe - 719468;
	}
	t = days * 86400 + (int64_t)h * 3600 + (int64_t)mi * 60 + se + sign * ((int64_t)oh * 3600 + (int64_t)om * 60);
	if (t < 0)
		return OTADEV_EINVAL;
	*out = (uint64_t)t;
	return 0;
}

/* ---- the envelope and the manifest ------------------------------------------- */

static int eq(const char *js, const jsmntok_t *t, const char *s)
{
	size_t n = strlen(s);
	return t->type == JSMN_STRING && (size_t)(t->end - t->start) == n && !memcmp(js + t->start, s, n);
}

/* Index of the token after the value at i (its whole subtree). */
static int skip(const jsmntok_t *t, int i, int n)
{
	int end = i + 1, pending = t[i].size;
	while (pending > 0 && end < n) {
		pending += t[end].size - 1;
		end++;
	}
	return end;
}

/* Does the JSON string t name want?  Lowercase hex only, as everywhere on
 * the wire: an uppercase digest is not taken as a match. */
static int sha_matches(const char *js, const jsmntok_t *t, const uint8_t want[32])
{
	uint8_t got[32];
	return t->type == JSMN_STRING &&
	       otadev_sha256_from_hex(got, js + t->start, (size_t)(t->end - t->start)) == 0 &&
	       memcmp(got, want, 32) == 0;
}

static void dec(char *out, size_t v)
{
	char t[24];
	int i = 23;
	t[i] = 0;
	do {
		t[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	memcpy(out, t + i, (size_t)(24 - i));
}

/* Parse the JSON object buf[0,len) into tokens placed in buf past its
 * first used bytes (aligned, up to cap): the token count into *n, or
 * OTADEV_ENOSPC (no room for the tokens), OTADEV_EINVAL (not an object). */
static int parse_object(char *buf, size_t len, size_t used, size_t cap, jsmntok_t **out, int *n)
{
	size_t a = used + (sizeof(int) - (size_t)((uintptr_t)(buf + used) % sizeof(int))) % sizeof(int);
	jsmn_parser p;

	if (a >= cap || (cap - a) / sizeof(jsmntok_t) < 8)
		return OTADEV_ENOSPC;
	*out = (jsmntok_t *)(void *)(buf + a);
	jsmn_init(&p);
	*n = jsmn_parse(&p, buf, len, *out, (unsigned)((cap - a) / sizeof(jsmntok_t)));
	if (*n == JSMN_ERROR_NOMEM)
		return OTADEV_ENOSPC;
	if (*n < 1 || (*out)[0].type != JSMN_OBJECT)
		return OTADEV_EINVAL;
	return 0;
}

int otadev_manifest_parse(struct otadev_manifest *out, uint8_t digest[32], const struct otadev_hooks *h, void *ctx,
			  char *buf, size_t len, size_t cap, const uint8_t want_sha[32], const char *product, const char *hardware)
{
	jsmntok_t *t;
	int rc, n, k, pay = -1, typ = -1, sigs = -1, chain = -1, built = -1, images = -1;
	long plen;
	char pfx[TYPE_MAX + 32], *js;
	uint8_t keep[2][80];
	size_t tlen, free_at;

	memset(out, 0, sizeof(*out));
	if ((rc = parse_object(buf, len, len, cap, &t, &n)) < 0)
		return rc;
	for (k = 1; k + 1 < n; k = skip(t, k + 1, n)) {
		if (eq(buf, &t[k], "payload") && t[k + 1].type == JSMN_STRING)
			pay = k + 1;
		else if (eq(buf, &t[k], "payloadType") && t[k + 1].type == JSMN_STRING)
			typ = k + 1;
		else if (eq(buf, &t[k], "signatures") && t[k + 1].type == JSMN_ARRAY)
			sigs = k + 1;
	}
	if (pay < 0 || typ < 0 || sigs < 0)
		return OTADEV_EINVAL;
	tlen = (size_t)(t[typ].end - t[typ].start);
	if (tlen == 0 || tlen > TYPE_MAX)
		return OTADEV_EINVAL;
	/* the signatures (base64 DER), decoded where they are */
	for (k = sigs + 1; k < skip(t, sigs, n) && out->nsig < 2; k = skip(t, k, n)) {
		int m, me = skip(t, k, n);
		if (t[k].type != JSMN_OBJECT)
			return OTADEV_EINVAL;
		for (m = k + 1; m + 1 < me && out->nsig < 2; m = skip(t, m + 1, n))
			if (eq(buf, &t[m], "sig") && t[m + 1].type == JSMN_STRING) {   /* at most 2 in all */
				long sl = b64_decode_in_place((uint8_t *)buf + t[m + 1].start,
							      (size_t)(t[m + 1].end - t[m + 1].start));
				if (sl < 8 || sl > 80)
					return OTADEV_EINVAL;
				out->sig[out->nsig] = (const uint8_t *)buf + t[m + 1].start;
				out->sig_len[out->nsig++] = (size_t)sl;
			}
	}
	if (!out->nsig)
		return OTADEV_EINVAL;
	/* the payload, decoded in place, then DSSE's PAE made whole at the
	 * buffer's start: "DSSEv1" SP len(type) SP type SP len(body) SP body.
	 * It is hashed through the hooks (ECDSA signs the digest) and kept as
	 * it is for Ed25519, which signs the message.  The signatures are
	 * kept aside first: they may sit where the PAE goes. */
	plen = b64_decode_in_place((uint8_t *)buf + t[pay].start, (size_t)(t[pay].end - t[pay].start));
	if (plen < 2)
		return OTADEV_EINVAL;
	{
		size_t pre = 0, used;
		int i;
		memcpy(pfx, "DSSEv1 ", 7);
		pre = 7;
		dec(pfx + pre, tlen);
		pre += strlen(pfx + pre);
		pfx[pre++] = ' ';
		memcpy(pfx + pre, buf + t[typ].start, tlen);
		pre += tlen;
		pfx[pre++] = ' ';
		dec(pfx + pre, (size_t)plen);
		pre += strlen(pfx + pre);
		pfx[pre++] = ' ';
		if (pre + (size_t)plen + 160 > cap)
			return OTADEV_ENOSPC;
		for (i = 0; i < out->nsig; i++)
			memcpy(keep[i], out->sig[i], out->sig_len[i]);
		memmove(buf + pre, buf + t[pay].start, (size_t)plen);
		memcpy(buf, pfx, pre);
		out->pae = (const uint8_t *)buf;
		out->pae_len = pre + (size_t)plen;
		if (h->sha256_begin(ctx) < 0)
			return OTADEV_EIO;
		h->sha256_update(ctx, buf, out->pae_len);
		if (h->sha256_end(ctx, digest) < 0)
			return OTADEV_EIO;
		/* the manifest is the PAE's body; the signatures after it, then
		 * the tokens, then the certificates' DER (the PAE stays whole) */
		js = buf + pre;
		cap -= pre;
		used = (size_t)plen;
		for (i = 0; i < out->nsig; i++) {
			memcpy(js + used, keep[i], out->sig_len[i]);
			out->sig[i] = (const uint8_t *)js + used;
			used += 80;
		}
		if ((rc = parse_object(js, (size_t)plen, used, cap, &t, &n)) < 0)
			return rc;
		free_at = (size_t)((const char *)(t + n) - js);
	}
	for (k = 1; k + 1 < n; k = skip(t, k + 1, n)) {
		if (eq(js, &t[k], "signing_chain") && t[k + 1].type == JSMN_ARRAY)
			chain = k + 1;
		else if (eq(js, &t[k], "built_at") && t[k + 1].type == JSMN_STRING)
			built = k + 1;
		else if (eq(js, &t[k], "images") && t[k + 1].type == JSMN_ARRAY)
			images = k + 1;
		else if (eq(js, &t[k], "product") && t[k + 1].type == JSMN_STRING)
			out->other_product = !product || !eq(js, &t[k + 1], product);
	}
	if (built < 0 || parse_time(js + t[built].start, (size_t)(t[built].end - t[built].start), &out->built_at) < 0)
		return OTADEV_EINVAL;
	if (images >= 0)
		for (k = images + 1; k < skip(t, images, n); k = skip(t, k, n)) {
			int m, me = skip(t, k, n);
			int hit = 0, hw = -1;
			if (t[k].type != JSMN_OBJECT)
				return OTADEV_EINVAL;
			for (m = k + 1; m + 1 < me; m = skip(t, m + 1, n)) {
				if (eq(js, &t[m], "sha256") && sha_matches(js, &t[m + 1], want_sha))
					hit = 1;
				else if (eq(js, &t[m], "hardware") && t[m + 1].type == JSMN_STRING)
					hw = m + 1;
			}
			if (hit) {
				out->has_image = 1;
				/* the signed hardware variant (null: any) */
				out->other_hardware |= hw >= 0 && hardware && !eq(js, &t[hw], hardware);
			}
		}
	if (chain >= 0)
		for (k = chain + 1; k < skip(t, chain, n); k = skip(t, k, n)) {
			size_t pem = (size_t)(t[k].end - t[k].start);
			int der;
			if (t[k].type != JSMN_STRING || out->ncerts == OTADEV_CHAIN_CERTS)
				return OTADEV_EINVAL;
			/* decoded past the tokens, not in place: the PAE stays whole */
			if (pem > cap - free_at)
				return OTADEV_ENOSPC;
			memcpy(js + free_at, js + t[k].start, pem);
			der = otadev_pem_to_der(js + free_at, pem, "CERTIFICATE");
			if (der < 0)
				return OTADEV_EINVAL;
			out->cert[out->ncerts] = (const uint8_t *)js + free_at;
			out->cert_len[out->ncerts++] = (size_t)der;
			free_at += (size_t)der;
		}
	return 0;
}

/* ---- the check --------------------------------------------------------------- */

/* Is the DER SubjectPublicKeyInfo an Ed25519 key?  RFC 8410 fixes its
 * encoding: SEQUENCE { SEQUENCE { OID 1.3.101.112 }, BIT STRING (32 bytes) },
 * so the 12-byte prefix says it without an ASN.1 parser. */
static int is_ed25519_spki(const uint8_t *der, size_t len)
{
	static const uint8_t prefix[12] = { 0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00 };
	return len == 44 && !memcmp(der, prefix, sizeof(prefix));
}

static int get(struct otadev *d, const char *path, char *buf, size_t cap, size_t *len)
{
	struct otadev_http_req rq;
	struct otadev_http_resp rs;

	memset(&rq, 0, sizeof(rq));
	rq.method = "GET";
	rq.path = path;
	rq.device = d->cfg->device;
	rq.credential = d->cfg->credential;
	rq.range_start = rq.range_end = -1;
	memset(&rs, 0, sizeof(rs));
	rs.body = buf;
	rs.cap = cap;
	rs.range_total = -1;
	if (d->h->http(d->ctx, &rq, &rs) < 0 || rs.status == 0)
		return OTADEV_ENET;
	*len = rs.len;
	return rs.status;
}

int otadev_chain_verify(struct otadev *d, struct otadev_key *leaf, uint8_t *leaf_der, size_t cap, const char **why)
{
	const struct otadev_config *cfg = d->cfg;
	struct otadev_x509_req rq;
	struct otadev_manifest m;
	uint8_t digest[32];
	char path[64];
	char *w = (char *)cfg->work;
	size_t crl_len = 0, len = 0, klen = 0;
	uint64_t number = 0;
	int st, i, rc;

	memset(&rq, 0, sizeof(rq));
	*why = "the device has no room to check the signing chain";
	if (!cfg->work || cfg->work_len < 1024 || !d->h->x509_chain || !d->h->x509_crl)
		return OTADEV_EVERIFY;
	/* 1. the revocation list: required once one was held or announced */
	if (d->rec.crl_number || d->crl_announced) {
		st = get(d, "/device/v1/revocations", w, cfg->work_len / 2, &crl_len);
		if (st < 0 || st >= 500 || st == 429 || st == 401)
			return OTADEV_ENET;
		if (st == 404 && !d->rec.crl_number)
			return OTADEV_ENET;   /* announced but not served yet */
		*why = "the server withholds the revocation list the device holds";
		if (st != 200)
			return OTADEV_EVERIFY;
		*why = "the revocation list is not PEM";
		if ((rc = otadev_pem_to_der(w, crl_len, "X509 CRL")) < 0)
			return OTADEV_EVERIFY;
		crl_len = (size_t)rc;
		if (d->h->x509_crl(d->ctx, cfg->anchor, cfg->anchor_len, (const uint8_t *)w, crl_len, &number, why) != 0)
			return OTADEV_EVERIFY;
		*why = "the revocation list is older than the one the device holds";
		if (number < d->rec.crl_number || number > 0xffffffffu)
			return OTADEV_EVERIFY;
		d->rec.crl_number = (uint32_t)number;   /* saved with the verdict */
		rq.crl = (const uint8_t *)w;
		rq.crl_len = crl_len;
	}
	/* 2. the release's signed manifest */
	memcpy(path, "/device/v1/releases/", 20);
	dec(path + 20, d->rec.offer.release);
	memcpy(path + strlen(path), "/manifest", 10);
	st = get(d, path, w + crl_len, cfg->work_len - crl_len, &len);
	if (st < 0 || st >= 500 || st == 429 || st == 401)
		return OTADEV_ENET;
	*why = "no signed manifest for the offered release";
	if (st != 200)
		return OTADEV_EVERIFY;
	rc = otadev_manifest_parse(&m, digest, d->h, d->ctx, w + crl_len, len, cfg->work_len - crl_len,
				   d->rec.offer.sha256, cfg->product, cfg->hardware);
	if (rc == OTADEV_EIO)
		return rc;
	*why = rc == OTADEV_ENOSPC ? "the release's manifest does not fit the device's work buffer"
				   : "the release's manifest envelope is malformed";
	if (rc < 0)
		return OTADEV_EVERIFY;
	*why = "the release's manifest has no signing chain";
	if (!m.ncerts)
		return OTADEV_EVERIFY;
	/* 3. the chain to the anchor at the signing time, not revoked */
	rq.anchor = cfg->anchor;
	rq.anchor_len = cfg->anchor_len;
	for (i = 0; i < m.ncerts; i++) {
		rq.cert[i] = m.cert[i];
		rq.cert_len[i] = m.cert_len[i];
	}
	rq.ncerts = m.ncerts;
	rq.at = m.built_at;
	*why = "signing chain does not verify";
	if (d->h->x509_chain(d->ctx, &rq, leaf_der, cap, &klen, why) != 0 || klen == 0 || klen > cap)
		return OTADEV_EVERIFY;
	/* 4. the manifest is the leaf's (so built_at and images are): ECDSA
	 * over the PAE's digest, Ed25519 over the PAE itself */
	if (is_ed25519_spki(leaf_der, klen)) {
		*why = "the manifest is signed with Ed25519 and the port has no verify_msg hook";
		if (!d->h->verify_msg)
			return OTADEV_EVERIFY;
		*why = "the manifest's Ed25519 signature does not verify with the signing certificate's key";
		for (i = 0, rc = -1; i < m.nsig && rc != 0; i++)
			rc = m.sig_len[i] == 64 ? d->h->verify_msg(d->ctx, OTADEV_SIG_ED25519, leaf_der, klen, m.pae,
								   m.pae_len, m.sig[i], m.sig_len[i])
						: -1;
	} else {
		*why = "the manifest's signature does not verify with the signing certificate's key";
		for (i = 0, rc = -1; i < m.nsig && rc != 0; i++)
			rc = d->h->verify(d->ctx, OTADEV_SIG_ECDSA_P256, leaf_der, klen, digest, m.sig[i], m.sig_len[i]);
	}
	if (rc != 0)
		return OTADEV_EVERIFY;
	/* 5. the offered image is the release's */
	*why = "the image is not one of its release's manifest";
	if (!m.has_image)
		return OTADEV_EVERIFY;
	*why = "image of another product (the release's signed manifest says so)";
	if (m.other_product)
		return OTADEV_EVERIFY;
	*why = "image for another hardware variant (the release's signed manifest says so)";
	if (m.other_hardware)
		return OTADEV_EVERIFY;
	leaf->der = leaf_der;
	leaf->len = klen;
	if (d->h->sha256_begin(d->ctx) < 0 || d->h->sha256_update(d->ctx, leaf_der, klen) < 0 ||
	    d->h->sha256_end(d->ctx, leaf->hash) < 0)
		return OTADEV_EIO;
	*why = "";
	return 0;
}
