/*
 * mcuboot.c - MCUboot signed images; see mcuboot.h.
 *
 * The release stage must hand devices an image their bootloader accepts, and
 * the update server must refuse an upload that is not one, so otacd writes
 * and reads the MCUboot format itself instead of shelling out to imgtool
 * (Python, not packaged by Debian, and unable to sign with a key that lives
 * in an HSM) for every release.  Signing builds the image in
 * the caller's buffer in one pass: header, 0xff header padding, body, the
 * protected TLV area (security counter), then the SHA-256 of everything so
 * far, which is both the SHA256 TLV and what the key signs (ECDSA and
 * RSA-PSS sign it as a SHA-256 digest; Ed25519 signs the 32 digest bytes as
 * its message, imgtool's non-"pure" mode), then KEYHASH and the signature,
 * then the slot padding and boot trailer.  The key is only used through
 * EVP_PKEY_sign / EVP_DigestSign and its public half read with i2d_PUBKEY,
 * so HSM-held keys (PKCS#11 engine) work; the fresh signature is checked
 * against that public half before the image is returned.
 *
 * Parsing never trusts a length: every offset is compared against what is
 * left of the input with size_t subtraction (never addition that could
 * wrap), and every complaint names the field and its offset.  No crypto is
 * written here: hashing, signing and verifying are OpenSSL 3's.
 */
#include "mcuboot.h"
#include "mcuboot_enc.h"

#include <inttypes.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TLV_INFO_MAGIC 0x6907u
#define TLV_PROT_INFO_MAGIC 0x6908u
#define TLV_INFO_SIZE 4u
#define TLV_HDR_SIZE 4u

enum {
	TLV_KEYHASH = 0x01,
	TLV_PUBKEY = 0x02,
	TLV_SHA256 = 0x10,
	TLV_RSA2048 = 0x20,
	TLV_ECDSA_SIG = 0x22,
	TLV_RSA3072 = 0x23,
	TLV_ED25519 = 0x24,
	TLV_SIG_PURE = 0x25,
	TLV_SEC_CNT = 0x50,
};

#define ECDSA_SIG_MIN 8u   /* DER SEQUENCE of two one-byte INTEGERs */
#define ECDSA_SIG_MAX 72u  /* two 33-byte INTEGERs in a SEQUENCE */
#define SIG_MAX 512u

/* imgtool's boot magic for max_align 8 (the default). */
static const unsigned char boot_magic[16] = {
	0x77, 0xc2, 0x95, 0xf3, 0x60, 0xd2, 0xef, 0x7f,
	0x35, 0x52, 0x50, 0x0f, 0x2c, 0xb6, 0x79, 0x80,
};

static uint16_t get16(const unsigned char *p)
{
	return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t get32(const unsigned char *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put16(unsigned char *p, uint32_t v)
{
	p[0] = (unsigned char)v;
	p[1] = (unsigned char)(v >> 8);
}

static void put32(unsigned char *p, uint32_t v)
{
	put16(p, v);
	put16(p + 2, v >> 16);
}

/* The first queued OpenSSL error as text (or "unknown error"); clears the queue. */
static const char *ssl_reason(char *msg, size_t n)
{
	unsigned long e = ERR_get_error();

	if (e)
		ERR_error_string_n(e, msg, n);
	else
		snprintf(msg, n, "unknown error");
	ERR_clear_error();
	return msg;
}

const char *mcuboot_sig_name(enum mcuboot_sig t)
{
	switch (t) {
	case MCUBOOT_SIG_ECDSA_P256: return "ecdsa-p256";
	case MCUBOOT_SIG_ED25519: return "ed25519";
	case MCUBOOT_SIG_RSA2048: return "rsa-2048";
	default: return "none";
	}
}

static unsigned sig_tlv_type(enum mcuboot_sig t)
{
	switch (t) {
	case MCUBOOT_SIG_ECDSA_P256: return TLV_ECDSA_SIG;
	case MCUBOOT_SIG_ED25519: return TLV_ED25519;
	case MCUBOOT_SIG_RSA2048: return TLV_RSA2048;
	default: return 0;
	}
}

/* ---- keys ---------------------------------------------------------- */

/*
 * What kind of MCUboot key key is, and its KEYHASH.  The public half is
 * taken with i2d_PUBKEY (works for engine and provider keys whose private
 * part is elsewhere) and decoded again into *pub_out (optional; caller
 * frees) so the rest of the code inspects and verifies with a plain
 * in-memory public key.
 */
static int key_inspect(EVP_PKEY *key, enum mcuboot_sig *type, unsigned char hash[32],
		       EVP_PKEY **pub_out)
{
	unsigned char *spki = NULL, *pkcs1 = NULL;
	const unsigned char *p;
	EVP_PKEY *pub = NULL;
	char msg[256], group[80];
	size_t glen = 0;
	int n, rc = 0;

	if (!key) {
		rc = ota_error_set(OTA_EINVAL, "no key given");
		goto out;
	}
	n = i2d_PUBKEY(key, &spki);
	if (n <= 0) {
		rc = ota_error_set(OTA_EINVAL, "cannot read the key's public part: %s",
				   ssl_reason(msg, sizeof(msg)));
		goto out;
	}
	p = spki;
	pub = d2i_PUBKEY(NULL, &p, n);
	if (!pub) {
		rc = ota_error_set(OTA_EINVAL, "cannot decode the key's public part: %s",
				   ssl_reason(msg, sizeof(msg)));
		goto out;
	}
	if (EVP_PKEY_is_a(pub, "EC")) {
		if (!EVP_PKEY_get_group_name(pub, group, sizeof(group), &glen) ||
		    (OBJ_txt2nid(group) != NID_X9_62_prime256v1 &&
		     EC_curve_nist2nid(group) != NID_X9_62_prime256v1)) {
			ERR_clear_error();
			rc = ota_error_set(OTA_EINVAL, "EC key on curve %s: MCUboot's ECDSA "
					   "signature TLV (0x22) is for P-256 keys only",
					   glen ? group : "(unknown)");
			goto out;
		}
		*type = MCUBOOT_SIG_ECDSA_P256;
		EVP_Digest(spki, (size_t)n, hash, NULL, EVP_sha256(), NULL);
	} else if (EVP_PKEY_is_a(pub, "ED25519")) {
		*type = MCUBOOT_SIG_ED25519;
		EVP_Digest(spki, (size_t)n, hash, NULL, EVP_sha256(), NULL);
	} else if (EVP_PKEY_is_a(pub, "RSA")) {
		if (EVP_PKEY_get_bits(pub) != 2048) {
			rc = ota_error_set(OTA_EINVAL, "RSA key of %d bits: only RSA-2048 "
					   "(signature TLV 0x20) is supported", EVP_PKEY_get_bits(pub));
			goto out;
		}
		/* MCUboot embeds RSA keys as PKCS#1 RSAPublicKey, so that is what
		 * KEYHASH hashes. */
		n = i2d_PublicKey(pub, &pkcs1);
		if (n <= 0) {
			rc = ota_error_set(OTA_EINVAL, "cannot encode the RSA public key: %s",
					   ssl_reason(msg, sizeof(msg)));
			goto out;
		}
		*type = MCUBOOT_SIG_RSA2048;
		EVP_Digest(pkcs1, (size_t)n, hash, NULL, EVP_sha256(), NULL);
	} else {
		const char *name = EVP_PKEY_get0_type_name(pub);
		rc = ota_error_set(OTA_EINVAL, "unsupported key type %s: MCUboot images are "
				   "signed with ECDSA P-256, Ed25519 or RSA-2048",
				   name ? name : "(unknown)");
		goto out;
	}
	if (pub_out) {
		*pub_out = pub;
		pub = NULL;
	}
out:
	OPENSSL_free(spki);
	OPENSSL_free(pkcs1);
	EVP_PKEY_free(pub);
	return rc;
}

int mcuboot_keyhash(EVP_PKEY *pub, unsigned char out[32])
{
	enum mcuboot_sig type;
	return key_inspect(pub, &type, out, NULL);
}

/* Set up ctx (after sign_init or verify_init) for MCUboot's RSA-PSS or
 * SHA-256 ECDSA. */
static int pkey_ctx_params(EVP_PKEY_CTX *ctx, enum mcuboot_sig type)
{
	if (type == MCUBOOT_SIG_RSA2048 &&
	    (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PSS_PADDING) <= 0 ||
	     EVP_PKEY_CTX_set_rsa_pss_saltlen(ctx, 32) <= 0 ||
	     EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, EVP_sha256()) <= 0))
		return -1;
	return EVP_PKEY_CTX_set_signature_md(ctx, EVP_sha256()) <= 0 ? -1 : 0;
}

/* Sign the 32-byte digest of the hashed region; *siglen: room in, length out. */
static int sign_digest(EVP_PKEY *key, enum mcuboot_sig type, const unsigned char digest[32],
		       unsigned char *sig, size_t *siglen)
{
	EVP_PKEY_CTX *ctx = NULL;
	EVP_MD_CTX *md = NULL;
	char msg[256];
	size_t n = 0;
	int ok, rc = 0;

	if (type == MCUBOOT_SIG_ED25519) {
		md = EVP_MD_CTX_new();
		ok = md && EVP_DigestSignInit(md, NULL, NULL, NULL, key) == 1 &&
		     EVP_DigestSign(md, NULL, &n, digest, 32) == 1 && n <= *siglen &&
		     EVP_DigestSign(md, sig, &n, digest, 32) == 1;
	} else {
		ctx = EVP_PKEY_CTX_new(key, NULL);
		ok = ctx && EVP_PKEY_sign_init(ctx) > 0 && pkey_ctx_params(ctx, type) == 0 &&
		     EVP_PKEY_sign(ctx, NULL, &n, digest, 32) > 0 && n <= *siglen &&
		     EVP_PKEY_sign(ctx, sig, &n, digest, 32) > 0;
	}
	if (ok)
		*siglen = n;
	else
		rc = ota_error_set(OTA_ERROR, "signing with the %s key failed: %s",
				   mcuboot_sig_name(type), ssl_reason(msg, sizeof(msg)));
	EVP_PKEY_CTX_free(ctx);
	EVP_MD_CTX_free(md);
	return rc;
}

/* 1: the signature verifies; 0: it does not (or is malformed). */
static int check_signature(EVP_PKEY *pub, enum mcuboot_sig type, const unsigned char digest[32],
			   const unsigned char *sig, size_t siglen)
{
	EVP_PKEY_CTX *ctx = NULL;
	EVP_MD_CTX *md = NULL;
	int ok = 0;

	if (type == MCUBOOT_SIG_ECDSA_P256 && siglen >= 2 && sig[0] == 0x30 && sig[1] < 0x80 &&
	    (size_t)sig[1] + 2 < siglen) {
		/* Old imgtool padded ECDSA signatures to 72 bytes with zeros;
		 * MCUboot and imgtool verify accept that, OpenSSL wants exact DER. */
		size_t der = (size_t)sig[1] + 2, i;
		for (i = der; i < siglen && sig[i] == 0; i++)
			;
		if (i == siglen)
			siglen = der;
	}
	if (type == MCUBOOT_SIG_ED25519) {
		md = EVP_MD_CTX_new();
		ok = md && EVP_DigestVerifyInit(md, NULL, NULL, NULL, pub) == 1 &&
		     EVP_DigestVerify(md, sig, siglen, digest, 32) == 1;
	} else {
		ctx = EVP_PKEY_CTX_new(pub, NULL);
		ok = ctx && EVP_PKEY_verify_init(ctx) > 0 && pkey_ctx_params(ctx, type) == 0 &&
		     EVP_PKEY_verify(ctx, sig, siglen, digest, 32) == 1;
	}
	ERR_clear_error();
	EVP_PKEY_CTX_free(ctx);
	EVP_MD_CTX_free(md);
	return ok;
}

/* ---- signing ------------------------------------------------------- */

static int put_checked(struct buf *out, const void *data, size_t len)
{
	if (buf_put(out, data, len) < 0)
		return ota_error_set(OTA_ETOOBIG, "signed image would exceed the output "
				     "limit of %zu bytes", out->max);
	return 0;
}

static int put_fill(struct buf *out, unsigned char byte, size_t n)
{
	unsigned char chunk[4096];
	int rc = 0;

	memset(chunk, byte, sizeof(chunk));
	while (n > 0 && rc == 0) {
		size_t k = n < sizeof(chunk) ? n : sizeof(chunk);
		rc = put_checked(out, chunk, k);
		n -= k;
	}
	return rc;
}

static int put_tlv(struct buf *out, unsigned type, const void *val, size_t len)
{
	unsigned char h[TLV_HDR_SIZE];
	int rc;

	h[0] = (unsigned char)type;
	h[1] = 0;
	put16(h + 2, (uint32_t)len);
	rc = put_checked(out, h, sizeof(h));
	return rc < 0 ? rc : put_checked(out, val, len);
}

int mcuboot_sign(struct buf *out, const void *bin, size_t len, EVP_PKEY *key,
		 const struct mcuboot_sign_opts *o)
{
	static const struct mcuboot_sign_opts defaults;
	unsigned char hdr[MCUBOOT_HEADER_MIN], info[TLV_INFO_SIZE], digest[32], keyhash[32];
	unsigned char sig[SIG_MAX], cnt[4], aeskey[32], enctlv[MCUBOOT_ENC_TLV_MAX];
	enum mcuboot_sig type = MCUBOOT_SIG_NONE;
	EVP_PKEY *pub = NULL;
	size_t siglen = sizeof(sig), unprot, enclen = 0, keylen = 0, pad = 0, trailer = MCUBOOT_TRAILER_SIZE;
	uint32_t hsize, prot = 0, flags;
	unsigned enctype = 0;
	enum mcuboot_enc scheme;
	int rc;

	buf_clear(out);
	if (!o)
		o = &defaults;
	hsize = o->header_size ? o->header_size : MCUBOOT_HEADER_DEFAULT;
	if (hsize < MCUBOOT_HEADER_MIN || hsize > 0xffff) {
		rc = ota_error_set(OTA_EINVAL, "header size %" PRIu32 " is outside 32..65535",
				   hsize);
		goto out;
	}
	if (len > UINT32_MAX) {
		rc = ota_error_set(OTA_EINVAL, "firmware is %zu bytes; an MCUboot image body "
				   "is at most 4294967295", len);
		goto out;
	}
	rc = key_inspect(key, &type, keyhash, &pub);
	if (rc < 0)
		goto out;
	flags = o->flags | (o->load_addr ? MCUBOOT_F_RAM_LOAD : 0);
	if (o->enc_key) {
		/* imgtool -E: the body is zero-padded to whole AES blocks
		 * before it is hashed, the key wrapped for the device. */
		if (o->enc_bits != 0 && o->enc_bits != 128 && o->enc_bits != 256) {
			rc = ota_error_set(OTA_EINVAL, "AES-%u: MCUboot encrypts with AES-128 or AES-256",
					   o->enc_bits);
			goto out;
		}
		/* imgtool refuses other pairs: an MCUboot build has one EC
		 * implementation (P-256 signing goes with ECIES-P256), and
		 * RSA signing with RSA-OAEP, which otacd does not write. */
		if ((rc = mcuboot_enc_scheme(o->enc_key, &scheme)) < 0)
			goto out;
		if ((type == MCUBOOT_SIG_ECDSA_P256 && scheme != MCUBOOT_ENC_EC256) ||
		    type == MCUBOOT_SIG_RSA2048) {
			rc = ota_error_set(OTA_EINVAL, "a %s signing key cannot go with %s encryption "
					   "(MCUboot and imgtool pair ECDSA P-256 with ECIES-P256; "
					   "Ed25519 with either)", mcuboot_sig_name(type),
					   mcuboot_enc_name(scheme));
			goto out;
		}
		keylen = o->enc_bits == 256 ? 32 : 16;
		pad = (16 - len % 16) % 16;
		if (len > UINT32_MAX - pad) {
			rc = ota_error_set(OTA_EINVAL, "firmware is %zu bytes; padded to AES blocks it "
					   "exceeds an MCUboot body's 4294967295", len);
			goto out;
		}
		rc = mcuboot_enc_wrap(o->enc_key, keylen, aeskey, enctlv, &enclen, &enctype);
		if (rc < 0)
			goto out;
		flags = (flags & ~(MCUBOOT_F_ENC_AES128 | MCUBOOT_F_ENC_AES256)) |
			(keylen == 32 ? MCUBOOT_F_ENC_AES256 : MCUBOOT_F_ENC_AES128);
		trailer += MCUBOOT_ENC_TRAILER_EXTRA;
	}

	if (o->has_security_counter)
		prot = TLV_INFO_SIZE + TLV_HDR_SIZE + 4;
	put32(hdr, MCUBOOT_IMAGE_MAGIC);
	put32(hdr + 4, o->load_addr);
	put16(hdr + 8, hsize);
	put16(hdr + 10, prot);
	put32(hdr + 12, (uint32_t)(len + pad));
	put32(hdr + 16, flags);
	hdr[20] = o->major;
	hdr[21] = o->minor;
	put16(hdr + 22, o->revision);
	put32(hdr + 24, o->build);
	put32(hdr + 28, 0);
	if ((rc = put_checked(out, hdr, sizeof(hdr))) < 0 ||
	    (rc = put_fill(out, 0xff, hsize - MCUBOOT_HEADER_MIN)) < 0 ||
	    (rc = put_checked(out, bin, len)) < 0 || (rc = put_fill(out, 0, pad)) < 0)
		goto out;
	if (prot) {
		put16(info, TLV_PROT_INFO_MAGIC);
		put16(info + 2, prot);
		put32(cnt, o->security_counter);
		if ((rc = put_checked(out, info, sizeof(info))) < 0 ||
		    (rc = put_tlv(out, TLV_SEC_CNT, cnt, sizeof(cnt))) < 0)
			goto out;
	}

	EVP_Digest(out->ptr, out->len, digest, NULL, EVP_sha256(), NULL);
	rc = sign_digest(key, type, digest, sig, &siglen);
	if (rc < 0)
		goto out;
	if (!check_signature(pub, type, digest, sig, siglen)) {
		rc = ota_error_set(OTA_ERROR, "the %s key made a signature that does not verify "
				   "with its own public key", mcuboot_sig_name(type));
		goto out;
	}

	unprot = TLV_INFO_SIZE + 2 * (TLV_HDR_SIZE + 32) + TLV_HDR_SIZE + siglen + (enclen ? TLV_HDR_SIZE + enclen : 0);
	put16(info, TLV_INFO_MAGIC);
	put16(info + 2, (uint32_t)unprot);
	if ((rc = put_checked(out, info, sizeof(info))) < 0 ||
	    (rc = put_tlv(out, TLV_SHA256, digest, 32)) < 0 ||
	    (rc = put_tlv(out, TLV_KEYHASH, keyhash, 32)) < 0 ||
	    (rc = put_tlv(out, sig_tlv_type(type), sig, siglen)) < 0)
		goto out;
	/* The key TLV follows the signature, then the body is encrypted:
	 * the hash and the signature are over the plaintext (MCUboot). */
	if (enclen && ((rc = put_tlv(out, enctype, enctlv, enclen)) < 0 ||
		       (rc = mcuboot_enc_ctr(aeskey, keylen, (unsigned char *)out->ptr + hsize, len + pad)) < 0))
		goto out;

	if (o->slot_size) {
		size_t used = out->len;
		if (o->slot_size < trailer || used > o->slot_size - trailer) {
			rc = ota_error_set(OTA_EINVAL, "image (%zu bytes) + trailer (%zu bytes) "
					   "exceeds the slot size %" PRIu32, used,
					   trailer, o->slot_size);
			goto out;
		}
		/* 0xff up to the boot magic, image_ok 8 bytes before it. */
		rc = put_fill(out, 0xff, o->slot_size - sizeof(boot_magic) - used);
		if (rc < 0 || (rc = put_checked(out, boot_magic, sizeof(boot_magic))) < 0)
			goto out;
		if (o->confirm)
			out->ptr[o->slot_size - 24] = 0x01;
	}
out:
	if (rc < 0)
		buf_clear(out);
	OPENSSL_cleanse(aeskey, sizeof(aeskey));
	EVP_PKEY_free(pub);
	return rc;
}

/* ---- parsing ------------------------------------------------------- */

static int walk_protected(struct mcuboot_info *in, const unsigned char *p, size_t pos, size_t end)
{
	while (pos < end) {
		unsigned type;
		size_t l;

		if (end - pos < TLV_HDR_SIZE)
			return ota_error_set(OTA_EINVAL, "protected TLV area: entry at offset %zu "
					     "needs 4 header bytes, the area ends at %zu", pos, end);
		type = get16(p + pos);
		l = get16(p + pos + 2);
		if (l > end - pos - TLV_HDR_SIZE)
			return ota_error_set(OTA_EINVAL, "TLV 0x%02x at offset %zu has length %zu, "
					     "past the end of the protected TLV area at offset %zu",
					     type, pos, l, end);
		switch (type) {
		case TLV_SEC_CNT:
			if (l != 4)
				return ota_error_set(OTA_EINVAL, "TLV 0x%02x at offset %zu has "
						     "length %zu, expected 4", type, pos, l);
			if (in->has_security_counter)
				return ota_error_set(OTA_EINVAL, "second security counter TLV "
						     "(0x50) at offset %zu", pos);
			in->has_security_counter = 1;
			in->security_counter = get32(p + pos + TLV_HDR_SIZE);
			break;
		case TLV_SHA256: case TLV_KEYHASH: case TLV_PUBKEY: case TLV_RSA2048:
		case TLV_ECDSA_SIG: case TLV_RSA3072: case TLV_ED25519: case TLV_SIG_PURE:
			return ota_error_set(OTA_EINVAL, "TLV 0x%02x at offset %zu is in the "
					     "protected area; hashes, keys and signatures belong "
					     "in the unprotected one", type, pos);
		default:
			break;  /* dependencies, boot record, vendor TLVs */
		}
		pos += TLV_HDR_SIZE + l;
	}
	return 0;
}

static int expect_len(unsigned type, size_t pos, size_t l, size_t want)
{
	if (l == want)
		return 0;
	return ota_error_set(OTA_EINVAL, "TLV 0x%02x at offset %zu has length %zu, expected %zu",
			     type, pos, l, want);
}

static int walk_unprotected(struct mcuboot_info *in, const unsigned char *p, size_t pos,
			    size_t end)
{
	size_t keyhash_at = 0, sha_at = 0;
	int rc;

	while (pos < end) {
		enum mcuboot_sig sig = MCUBOOT_SIG_NONE;
		unsigned type;
		size_t l, v;

		if (end - pos < TLV_HDR_SIZE)
			return ota_error_set(OTA_EINVAL, "TLV area: entry at offset %zu needs 4 "
					     "header bytes, the area ends at %zu", pos, end);
		type = get16(p + pos);
		l = get16(p + pos + 2);
		v = pos + TLV_HDR_SIZE;
		if (l > end - v)
			return ota_error_set(OTA_EINVAL, "TLV 0x%02x at offset %zu has length %zu, "
					     "past the end of the TLV area at offset %zu",
					     type, pos, l, end);
		switch (type) {
		case TLV_SHA256:
			if ((rc = expect_len(type, pos, l, 32)) < 0)
				return rc;
			if (sha_at)
				return ota_error_set(OTA_EINVAL, "second SHA256 TLV at offset %zu "
						     "(first at %zu)", pos, sha_at);
			sha_at = pos;
			memcpy(in->sha256, p + v, 32);
			break;
		case TLV_KEYHASH:
			if ((rc = expect_len(type, pos, l, 32)) < 0)
				return rc;
			if (in->sig_off)
				return ota_error_set(OTA_EINVAL, "KEYHASH TLV at offset %zu comes "
						     "after the signature TLV at offset %zu; MCUboot "
						     "needs the key hash first",
						     pos, in->sig_off - TLV_HDR_SIZE);
			if (keyhash_at)
				return ota_error_set(OTA_EINVAL, "second KEYHASH TLV at offset %zu "
						     "(first at %zu)", pos, keyhash_at);
			keyhash_at = pos;
			memcpy(in->keyhash, p + v, 32);
			break;
		case TLV_ECDSA_SIG:
			if (l < ECDSA_SIG_MIN || l > ECDSA_SIG_MAX)
				return ota_error_set(OTA_EINVAL, "TLV 0x%02x at offset %zu has "
						     "length %zu, expected %u to %u (DER ECDSA "
						     "P-256 signature)", type, pos, l,
						     ECDSA_SIG_MIN, ECDSA_SIG_MAX);
			sig = MCUBOOT_SIG_ECDSA_P256;
			break;
		case TLV_ED25519:
			if ((rc = expect_len(type, pos, l, 64)) < 0)
				return rc;
			sig = MCUBOOT_SIG_ED25519;
			break;
		case TLV_RSA2048:
			if ((rc = expect_len(type, pos, l, 256)) < 0)
				return rc;
			sig = MCUBOOT_SIG_RSA2048;
			break;
		case TLV_SEC_CNT:
			return ota_error_set(OTA_EINVAL, "security counter TLV (0x50) at offset "
					     "%zu is in the unprotected TLV area, where anyone "
					     "could change it", pos);
		case TLV_PUBKEY:
			return ota_error_set(OTA_EINVAL, "TLV 0x02 at offset %zu carries the full "
					     "public key; otacd only handles key hashes "
					     "(imgtool --public-key-format hash)", pos);
		case TLV_SIG_PURE:
			return ota_error_set(OTA_EINVAL, "TLV 0x25 at offset %zu marks a \"pure\" "
					     "Ed25519 signature, which otacd does not handle", pos);
		case TLV_RSA3072:
			return ota_error_set(OTA_EINVAL, "TLV 0x23 at offset %zu is an RSA-3072 "
					     "signature, which otacd does not handle", pos);
		case MCUBOOT_TLV_ENC_RSA:
		case MCUBOOT_TLV_ENC_KW:
		case MCUBOOT_TLV_ENC_EC256:
		case MCUBOOT_TLV_ENC_X25519:
		case MCUBOOT_TLV_ENC_X25519_SHA512:
			if (in->enc_type)
				return ota_error_set(OTA_EINVAL, "second encryption key TLV 0x%02x at "
						     "offset %zu (first: 0x%02x)", type, pos,
						     in->enc_type);
			in->enc_type = type;
			in->enc_off = v;
			in->enc_len = l;
			break;
		default:
			break;  /* encryption keys, vendor TLVs */
		}
		if (sig != MCUBOOT_SIG_NONE) {
			if (in->sig_off)
				return ota_error_set(OTA_EINVAL, "second signature TLV at offset %zu "
						     "(first at %zu)", pos,
						     in->sig_off - TLV_HDR_SIZE);
			if (!keyhash_at)
				return ota_error_set(OTA_EINVAL, "signature TLV 0x%02x at offset %zu "
						     "comes before any KEYHASH TLV; MCUboot needs the "
						     "key hash first", type, pos);
			in->sig_type = sig;
			in->sig_off = v;
			in->sig_len = l;
		}
		pos = v + l;
	}
	if (!sha_at)
		return ota_error_set(OTA_EINVAL, "TLV area ending at offset %zu has no SHA256 "
				     "TLV (0x10)", end);
	return 0;
}

/* Check the info header of the area at off (magic already read) and that
 * the area is inside the image; its length in *area. */
static int area_bounds(const unsigned char *p, size_t len, size_t off, const char *what,
		       size_t *area)
{
	*area = get16(p + off + 2);
	if (*area < TLV_INFO_SIZE)
		return ota_error_set(OTA_EINVAL, "%s at offset %zu has length %zu, less than "
				     "its 4-byte info header", what, off, *area);
	if (*area > len - off)
		return ota_error_set(OTA_EINVAL, "image truncated: %s at offset %zu is %zu "
				     "bytes, the file has %zu left", what, off, *area, len - off);
	return 0;
}

int mcuboot_parse(struct mcuboot_info *out, const void *img, size_t len)
{
	const unsigned char *p = img;
	struct mcuboot_info in;
	size_t off, area;
	uint32_t magic;
	unsigned m;
	int rc = 0;

	memset(&in, 0, sizeof(in));
	if (len < MCUBOOT_HEADER_MIN) {
		rc = ota_error_set(OTA_EINVAL, "image truncated: %zu bytes, the header alone "
				   "is 32", len);
		goto out;
	}
	magic = get32(p);
	if (magic != MCUBOOT_IMAGE_MAGIC) {
		rc = ota_error_set(OTA_EINVAL, "not an MCUboot image: magic 0x%08" PRIx32
				   " at offset 0, expected 0x96f3b83d", magic);
		goto out;
	}
	in.load_addr = get32(p + 4);
	in.header_size = get16(p + 8);
	in.protected_tlv_size = get16(p + 10);
	in.image_size = get32(p + 12);
	in.flags = get32(p + 16);
	in.major = p[20];
	in.minor = p[21];
	in.revision = get16(p + 22);
	in.build = get32(p + 24);
	if (in.header_size < MCUBOOT_HEADER_MIN) {
		rc = ota_error_set(OTA_EINVAL, "header size %" PRIu32 " is less than the "
				   "32-byte header", in.header_size);
		goto out;
	}
	if (in.header_size > len) {
		rc = ota_error_set(OTA_EINVAL, "image truncated: header size is %" PRIu32
				   " bytes, the file has %zu", in.header_size, len);
		goto out;
	}
	if (in.image_size > len - in.header_size) {
		rc = ota_error_set(OTA_EINVAL, "image truncated: header says %" PRIu32 " bytes "
				   "of body, the file has %zu", in.image_size,
				   len - in.header_size);
		goto out;
	}
	off = (size_t)in.header_size + in.image_size;  /* <= len, checked above */

	if (len - off < TLV_INFO_SIZE) {
		rc = ota_error_set(OTA_EINVAL, "image truncated: no TLV area after the body at "
				   "offset %zu (the file ends at %zu)", off, len);
		goto out;
	}
	m = get16(p + off);
	if (m == TLV_PROT_INFO_MAGIC) {
		if ((rc = area_bounds(p, len, off, "protected TLV area", &area)) < 0)
			goto out;
		if (area != in.protected_tlv_size) {
			rc = ota_error_set(OTA_EINVAL, "protected TLV area at offset %zu has length "
					   "%zu, the header says %" PRIu32, off, area,
					   in.protected_tlv_size);
			goto out;
		}
		if ((rc = walk_protected(&in, p, off + TLV_INFO_SIZE, off + area)) < 0)
			goto out;
		off += area;
	} else if (in.protected_tlv_size) {
		rc = ota_error_set(OTA_EINVAL, "header says %" PRIu32 " bytes of protected TLVs "
				   "at offset %zu, found magic 0x%04x there instead of 0x6908",
				   in.protected_tlv_size, off, m);
		goto out;
	}
	in.signed_len = off;

	if (len - off < TLV_INFO_SIZE) {
		rc = ota_error_set(OTA_EINVAL, "image truncated: no TLV area at offset %zu "
				   "(the file ends at %zu)", off, len);
		goto out;
	}
	m = get16(p + off);
	if (m != TLV_INFO_MAGIC) {
		rc = ota_error_set(OTA_EINVAL, "TLV area at offset %zu has magic 0x%04x, "
				   "expected 0x6907", off, m);
		goto out;
	}
	if ((rc = area_bounds(p, len, off, "TLV area", &area)) < 0 ||
	    (rc = walk_unprotected(&in, p, off + TLV_INFO_SIZE, off + area)) < 0)
		goto out;
	in.tlv_end = off + area;
out:
	if (out)
		*out = in;
	return rc;
}

/* ---- verification -------------------------------------------------- */

static int verify_image(struct mcuboot_info *out, const void *img, size_t len, EVP_PKEY *pub, int sealed)
{
	const unsigned char *p = img;
	struct mcuboot_info in;
	unsigned char digest[32], keyhash[32];
	char have[65], want[65];
	enum mcuboot_sig ktype;
	EVP_PKEY *plain = NULL;
	int rc;

	rc = mcuboot_parse(&in, img, len);
	if (rc < 0)
		goto out;
	if (in.sig_type == MCUBOOT_SIG_NONE) {
		rc = ota_error_set(OTA_EINVAL, "image is not signed: no signature TLV");
		goto out;
	}
	sealed = sealed && (in.flags & (MCUBOOT_F_ENC_AES128 | MCUBOOT_F_ENC_AES256));
	if (sealed && !in.enc_type) {
		rc = ota_error_set(OTA_EINVAL, "image is flagged encrypted but has no encryption key TLV");
		goto out;
	}
	if (sealed)
		memcpy(digest, in.sha256, 32); /* the body is ciphertext: the device hashes it */
	else
		EVP_Digest(p, in.signed_len, digest, NULL, EVP_sha256(), NULL);
	if (CRYPTO_memcmp(digest, in.sha256, 32) != 0) {
		ota_hex(have, digest, 32);
		ota_hex(want, in.sha256, 32);
		rc = ota_error_set(OTA_EINVAL, "image hash mismatch: SHA-256 of the hashed region "
				   "(header, body, protected TLVs: %zu bytes) is %.16s..., the "
				   "SHA256 TLV says %.16s...", in.signed_len, have, want);
		goto out;
	}
	rc = key_inspect(pub, &ktype, keyhash, &plain);
	if (rc < 0)
		goto out;
	if (CRYPTO_memcmp(keyhash, in.keyhash, 32) != 0) {
		ota_hex(have, in.keyhash, 32);
		ota_hex(want, keyhash, 32);
		rc = ota_error_set(OTA_EINVAL, "key hash does not match: the image names the key "
				   "with hash %.16s..., the given %s key's hash is %.16s...",
				   have, mcuboot_sig_name(ktype), want);
		goto out;
	}
	if (ktype != in.sig_type) {
		rc = ota_error_set(OTA_EINVAL, "signature type mismatch: the image has a %s "
				   "signature, the given key is %s", mcuboot_sig_name(in.sig_type),
				   mcuboot_sig_name(ktype));
		goto out;
	}
	if (!check_signature(plain, in.sig_type, digest, p + in.sig_off, in.sig_len)) {
		rc = ota_error_set(OTA_EINVAL, "signature does not verify: the %s signature TLV "
				   "at offset %zu is not the given key's signature of this image",
				   mcuboot_sig_name(in.sig_type), in.sig_off - TLV_HDR_SIZE);
		goto out;
	}
out:
	if (out)
		*out = in;
	EVP_PKEY_free(plain);
	return rc;
}

int mcuboot_verify(struct mcuboot_info *out, const void *img, size_t len, EVP_PKEY *pub)
{
	return verify_image(out, img, len, pub, 0);
}

int mcuboot_verify_sealed(struct mcuboot_info *out, const void *img, size_t len, EVP_PKEY *pub)
{
	return verify_image(out, img, len, pub, 1);
}

/* ---- versions ------------------------------------------------------ */

/* One decimal number without leading zeros, at most max; advances *s. */
static int version_part(const char **s, uint64_t max, uint64_t *v, const char *whole,
			const char *name)
{
	const char *q = *s;

	if (*q < '0' || *q > '9')
		return ota_error_set(OTA_EINVAL, "version '%s': expected a number for %s, "
				     "the form is MAJOR[.MINOR[.REVISION[+BUILD]]]", whole, name);
	if (q[0] == '0' && q[1] >= '0' && q[1] <= '9')
		return ota_error_set(OTA_EINVAL, "version '%s': %s has a leading zero", whole,
				     name);
	*v = 0;
	for (; *q >= '0' && *q <= '9'; q++) {
		*v = *v * 10 + (uint64_t)(*q - '0');
		if (*v > max)
			return ota_error_set(OTA_EINVAL, "version '%s': %s is out of range "
					     "(0-%" PRIu64 ")", whole, name, max);
	}
	*s = q;
	return 0;
}

int mcuboot_version_parse(const char *s, uint8_t *major, uint8_t *minor, uint16_t *rev,
			  uint32_t *build)
{
	static const char *const names[] = { "major", "minor", "revision", "build" };
	static const uint64_t max[] = { UINT8_MAX, UINT8_MAX, UINT16_MAX, UINT32_MAX };
	static const char seps[] = { '.', '.', '+' };
	uint64_t v[4] = { 0, 0, 0, 0 };
	const char *q = s;
	int rc = 0;
	size_t i;

	if (!s) {
		rc = ota_error_set(OTA_EINVAL, "no version given");
		goto out;
	}
	for (i = 0; i < 4; i++) {
		if ((rc = version_part(&q, max[i], &v[i], s, names[i])) < 0)
			goto out;
		if (*q == '\0')
			break;
		if (i == 3 || *q != seps[i]) {
			rc = ota_error_set(OTA_EINVAL, "version '%s': unexpected '%c' after the "
					   "%s, the form is MAJOR[.MINOR[.REVISION[+BUILD]]]",
					   s, *q, names[i]);
			goto out;
		}
		q++;
	}
	*major = (uint8_t)v[0];
	*minor = (uint8_t)v[1];
	*rev = (uint16_t)v[2];
	*build = (uint32_t)v[3];
out:
	return rc;
}

void mcuboot_version_format(char *out, size_t n, uint8_t major, uint8_t minor, uint16_t rev,
			    uint32_t build)
{
	snprintf(out, n, "%u.%u.%u+%" PRIu32, major, minor, rev, build);
}
