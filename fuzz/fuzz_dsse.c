/*
 * fuzz_dsse.c - libFuzzer target for DSSE envelopes and in-toto statements.
 *
 * Envelopes arrive from the artifact store, from `otactl verify` on a file a
 * user downloaded, and from other builders' attestations: every byte is
 * untrusted.  Each input is parsed with json_loadb and verified against two
 * fixed trusted public keys (ECDSA P-256 and Ed25519, whose private halves
 * made the seeds in fuzz/corpus/fuzz_dsse and are not kept); the input and
 * any verified payload also go through slsa_statement_check.  Besides
 * crashes, leaks and UB (ASan/UBSan), the target aborts when a contract
 * breaks: success reporting a key id that is not one of the two trusted
 * ones, failure without a message, or a message that is not valid UTF-8
 * (the API sends errors as JSON strings).
 *
 *   make fuzz   or   build/fuzz/fuzz_dsse fuzz/corpus/fuzz_dsse
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../orchestrator/provenance.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char ec_pub[] =
	"-----BEGIN PUBLIC KEY-----\n"
	"MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE87gwUMv5l36+NwZRKvKrEqbc/igK\n"
	"vdtbxye0P8aJkjdcipb3yT9x8bNjQaVvZxm9pnuQk+F50EG7f3wjsKa2+g==\n"
	"-----END PUBLIC KEY-----\n";
static const char ed_pub[] =
	"-----BEGIN PUBLIC KEY-----\n"
	"MCowBQYDK2VwAyEAWEAYptJD75Yk4W39qxNPZx609mNrKBm/N0JqZ3N2m3s=\n"
	"-----END PUBLIC KEY-----\n";

static EVP_PKEY *pubs[2];
static char ids[2][65];

static void load_keys(void)
{
	if (pubs[0])
		return;
	if (pubkey_load_pem(&pubs[0], ec_pub, strlen(ec_pub)) < 0 || pubkey_id(pubs[0], ids[0]) < 0 ||
	    pubkey_load_pem(&pubs[1], ed_pub, strlen(ed_pub)) < 0 || pubkey_id(pubs[1], ids[1]) < 0)
		abort();
}

static void check_message(void)
{
	const char *m = ota_error_last();
	json_t *j;
	if (!m || !*m || strcmp(m, "unknown error") == 0)
		abort();
	j = json_string(m);
	if (!j)
		abort();
	json_decref(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct buf payload = BUF_INIT;
	char keyid[65] = "";
	json_t *env, *stmt;

	load_keys();
	env = json_loadb((const char *)data, size, 0, NULL);
	if (!env)
		return 0;
	if (slsa_statement_check(env) < 0)
		check_message();
	ota_error_clear();
	if (dsse_verify(env, pubs, 2, &payload, keyid) == 0) {
		if (strcmp(keyid, ids[0]) != 0 && strcmp(keyid, ids[1]) != 0)
			abort();
		stmt = json_loadb(buf_cstr(&payload), payload.len, 0, NULL);
		if (stmt && slsa_statement_check(stmt) < 0)
			check_message();
		json_decref(stmt);
	} else {
		check_message();
	}
	/* the same envelope with one trusted key must not verify by the other */
	ota_error_clear();
	if (dsse_verify(env, pubs + 1, 1, NULL, keyid) == 0) {
		if (strcmp(keyid, ids[1]) != 0)
			abort();
	} else {
		check_message();
	}
	json_decref(env);
	buf_release(&payload);
	return 0;
}
