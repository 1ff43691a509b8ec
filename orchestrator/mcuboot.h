/*
 * mcuboot.h - MCUboot signed images: sign, parse, verify.
 *
 * A release stage turns a raw firmware binary into the image MCUboot boots:
 * a 32-byte header (magic, sizes, flags, version), the body, an optional
 * protected TLV area (the security counter, hashed and signed with the rest)
 * and the unprotected TLV area (SHA-256 of the hashed region, the hash of the
 * signing key, the signature), optionally padded to a slot with the boot
 * trailer.  The layout is the one imgtool 2.4.0 writes; docs/mcuboot.md has
 * the details and how the output was checked against imgtool.
 *
 * Keys are OpenSSL EVP_PKEYs: ECDSA P-256, Ed25519 or RSA-2048 (PSS).  The
 * private part is only ever used through EVP_PKEY_sign / EVP_DigestSign and
 * the public part read back with i2d_PUBKEY, so a key held by an HSM through
 * an engine or provider (PKCS#11) works the same as a PEM file.
 *
 * All functions return 0 or a negative OTA_E* code with the reason in
 * ota_error_last(); bad images are OTA_EINVAL and the message names the
 * offset and the field that is wrong.  Every function is thread-safe.
 */
#ifndef OTA_MCUBOOT_H
#define OTA_MCUBOOT_H

#include <openssl/evp.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/util.h"

#define MCUBOOT_IMAGE_MAGIC 0x96f3b83du
#define MCUBOOT_HEADER_MIN 32u
#define MCUBOOT_HEADER_DEFAULT 0x200u
/* Bytes the trailer needs at the end of a slot (imgtool's default: swap
 * mode, write alignment 1, 128 sectors): the image must end before it. */
#define MCUBOOT_TRAILER_SIZE 432u

/* Header flags. */
#define MCUBOOT_F_PIC 0x1u
#define MCUBOOT_F_ENC_AES128 0x4u
#define MCUBOOT_F_ENC_AES256 0x8u
#define MCUBOOT_F_NON_BOOTABLE 0x10u
#define MCUBOOT_F_RAM_LOAD 0x20u
#define MCUBOOT_F_ROM_FIXED 0x100u

struct mcuboot_sign_opts {
	uint32_t header_size;      /* 0 means MCUBOOT_HEADER_DEFAULT (imgtool --pad-header -H 0x200);
				    * bytes 32..header_size-1 are 0xff; at most 0xffff */
	uint8_t major, minor;      /* version major.minor.revision+build */
	uint16_t revision;
	uint32_t build;
	int has_security_counter;  /* write the protected TLV SEC_CNT (0x50) */
	uint32_t security_counter;
	uint32_t load_addr;        /* non-zero also sets MCUBOOT_F_RAM_LOAD, as imgtool --load-addr */
	uint32_t flags;            /* MCUBOOT_F_* */
	uint32_t slot_size;        /* 0: no trailer; else pad to slot_size with 0xff and end
				    * with the boot magic (imgtool -S slot_size --pad) */
	int confirm;               /* with slot_size: image_ok = 0x01 (imgtool --confirm) */
	EVP_PKEY *enc_key;         /* non-NULL: encrypt the body for this device public key
				    * (EC P-256 or X25519; imgtool -E), see mcuboot_enc.h */
	unsigned enc_bits;         /* with enc_key: 128 (0 means 128) or 256 (--encrypt-keylen) */
};

/*
 * Sign the raw firmware bin (len bytes) with key and write the image into
 * out (cleared first; left empty on failure; its cap applies).  o may be
 * NULL for all defaults.  With the same key, input and options the output
 * is byte-for-byte what `imgtool sign --pad-header` writes (the signature
 * bytes differ for ECDSA, which is randomised; Ed25519 is identical).
 * OTA_EINVAL for an unsupported key, a body too big for the header's u32,
 * or an image that does not fit the slot with its trailer.
 */
int mcuboot_sign(struct buf *out, const void *bin, size_t len, EVP_PKEY *key,
		 const struct mcuboot_sign_opts *o);

enum mcuboot_sig {
	MCUBOOT_SIG_NONE,          /* no signature TLV (imgtool sign without -k) */
	MCUBOOT_SIG_ECDSA_P256,    /* TLV 0x22, DER ECDSA-Sig-Value */
	MCUBOOT_SIG_ED25519,       /* TLV 0x24, 64 bytes over the SHA-256 digest */
	MCUBOOT_SIG_RSA2048,       /* TLV 0x20, RSA-PSS SHA-256, 256 bytes */
};

struct mcuboot_info {
	uint32_t header_size, image_size, protected_tlv_size, load_addr, flags;
	uint8_t major, minor;
	uint16_t revision;
	uint32_t build;
	int has_security_counter;
	uint32_t security_counter;
	unsigned char sha256[32];     /* from the SHA256 TLV */
	unsigned char keyhash[32];    /* from the KEYHASH TLV (zero when unsigned) */
	enum mcuboot_sig sig_type;
	size_t signed_len;            /* header + body + protected TLVs: the hashed region */
	size_t sig_off, sig_len;      /* the signature TLV's value in the image (0 when unsigned) */
	size_t tlv_end;               /* end of the unprotected TLV area; slot padding follows */
	unsigned enc_type;            /* encryption key TLV type 0x30..0x34, 0 when none */
	size_t enc_off, enc_len;      /* its value in the image */
};

/*
 * Structural parse of img (len bytes), no cryptography: header magic and
 * sizes, the protected area (present exactly when the header says so, with
 * the header's length), the unprotected area, every entry inside its area,
 * the lengths of the known entries, one SHA256 TLV, KEYHASH before the
 * signature.  The encryption key TLV (0x30..0x34) is recorded in enc_*
 * (a second one is refused).  Unknown TLV types are skipped.  Bytes after the TLV areas
 * (slot padding, trailer) are ignored.
 */
int mcuboot_parse(struct mcuboot_info *out, const void *img, size_t len);

/*
 * mcuboot_parse, then: the SHA-256 of the hashed region equals the SHA256
 * TLV, the KEYHASH TLV equals mcuboot_keyhash(pub), the signature type
 * matches pub's type and the signature verifies with pub.  The message
 * says which check failed.  out may be NULL.
 */
int mcuboot_verify(struct mcuboot_info *out, const void *img, size_t len, EVP_PKEY *pub);

/*
 * For whoever holds an encrypted image but not the device key (otacd's
 * release checks, otactl verify): when the header has an ENCRYPTED flag,
 * check the structure, that a key TLV is there, the key hash and that the
 * signature verifies over the SHA256 TLV; the body cannot be hashed (it is
 * ciphertext), so that binding is the device's check after mcuboot_decrypt
 * (the artifact's own digest is in the signed manifest).  Images without
 * the flag get the full mcuboot_verify().
 */
int mcuboot_verify_sealed(struct mcuboot_info *out, const void *img, size_t len, EVP_PKEY *pub);

/* SHA-256 of the public key in the form MCUboot's KEYHASH uses: DER
 * SubjectPublicKeyInfo for EC and Ed25519, PKCS#1 RSAPublicKey for RSA. */
int mcuboot_keyhash(EVP_PKEY *pub, unsigned char out[32]);

/* "1.2.3+4" -> fields, as imgtool reads -v: MAJOR[.MINOR[.REVISION[+BUILD]]],
 * decimal without leading zeros, missing parts 0; numbers that do not fit
 * their field (255, 255, 65535, 4294967295) are refused. */
int mcuboot_version_parse(const char *s, uint8_t *major, uint8_t *minor, uint16_t *rev,
			  uint32_t *build);
/* Fields -> "1.2.3+4" (always all four parts) into out (n >= 24 always fits). */
void mcuboot_version_format(char *out, size_t n, uint8_t major, uint8_t minor, uint16_t rev,
			    uint32_t build);

/* "ecdsa-p256", "ed25519", "rsa-2048" or "none". */
const char *mcuboot_sig_name(enum mcuboot_sig t);

#endif
