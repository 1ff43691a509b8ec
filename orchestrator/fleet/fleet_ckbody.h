/*
 * fleet_ckbody.h - a check-in body's fields, read by one of two parsers.
 *
 * checkin() (fleet.c) validates and decides from a struct fleet_ckbody,
 * never from a JSON tree, so the same field rules (and messages) apply
 * however the body was read:
 *
 *   - fleet_ckbody_parse: the device API's hot path.  One pass over the
 *     body, no tokens, no allocation: it checks the grammar, the literals,
 *     the strings (escapes decoded, UTF-8 and control characters checked,
 *     \u0000 and lone surrogates refused, as jansson does) and duplicate
 *     keys as it goes, and copies the strings checkin() reads into the
 *     struct.  It accepts a body only when it is sure jansson would
 *     parse it to the same values; anything else (malformed JSON, reals,
 *     arrays or objects other than "tags", tag values that are not
 *     strings, a body too large for the struct) returns 1 and the caller
 *     parses with jansson, which also words the error.
 *   - fleet_ckbody_from_json: any parsed jansson object (in-process
 *     callers, the fallback above).
 *
 * tests/test_ckbody.c proves both give the same accept/refuse and the same
 * fields on a corpus of good and bad bodies; fuzz/fuzz_ckbody.c checks, on
 * arbitrary bytes, that whatever the fast path accepts jansson parses to
 * identical fields.
 */
#ifndef OTA_FLEET_CKBODY_H
#define OTA_FLEET_CKBODY_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#define FLEET_CKBODY_TAGS 16        /* == FLEET_MAX_TAGS: more is refused anyway */
#define FLEET_CKBODY_TEXT 2048      /* decoded strings of the fast path */

/* The string fields, in the order checkin() checks them. */
enum { FCK_DEVICE, FCK_PRODUCT, FCK_HARDWARE, FCK_BOOTLOADER, FCK_VERSION, FCK_SLOT, FCK_NSTR };

/* What a member held. */
enum { FCK_ABSENT, FCK_STRING, FCK_INTEGER, FCK_NULL, FCK_OBJECT, FCK_OTHER };

struct fleet_ckbody {
	int is_object;                      /* 0: the body was JSON but not an object */
	int kind[FCK_NSTR];                 /* FCK_ABSENT, FCK_STRING or what else */
	const char *str[FCK_NSTR];          /* when FCK_STRING (NUL-free: \u0000 is refused) */
	int counter_kind;                   /* "security_counter": FCK_INTEGER: counter */
	int64_t counter;
	int tags_kind;                      /* "tags": FCK_ABSENT, FCK_NULL, FCK_OBJECT, other */
	size_t ntags;                       /* members of "tags" (only the first
					     * FLEET_CKBODY_TAGS are below) */
	const char *tag_key[FLEET_CKBODY_TAGS];
	const char *tag_val[FLEET_CKBODY_TAGS];   /* NULL: not a string */
	size_t text_used;
	char text[FLEET_CKBODY_TEXT];
};

/* The hot path: 0 when body (len bytes, not NUL-terminated) is a JSON
 * object read into *out; 1 when the caller must parse it with jansson
 * (invalid JSON, or JSON this parser leaves to jansson).  Never an error of
 * its own.  Strings live in out->text. */
int fleet_ckbody_parse(struct fleet_ckbody *out, const char *body, size_t len);

/* The fields of a parsed body (any JSON value; not an object: is_object 0).
 * Strings are borrowed from body, which must outlive *out. */
void fleet_ckbody_from_json(struct fleet_ckbody *out, const json_t *body);

/* String field i (FCK_DEVICE, ...) when the body is an object holding a
 * string there, else NULL. */
static inline const char *fleet_ckbody_str(const struct fleet_ckbody *b, int i)
{
	return b->is_object && b->kind[i] == FCK_STRING ? b->str[i] : NULL;
}

/* 1 when both hold the same fields (the tests' and the fuzzer's check). */
int fleet_ckbody_equal(const struct fleet_ckbody *a, const struct fleet_ckbody *b);

#endif
