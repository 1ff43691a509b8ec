/*
 * fuzz_chain.c - libFuzzer target for the signing chain a release manifest
 * carries (issue 13, orchestrator/pki.h).
 *
 * Verifiers (otacd's release page, `otactl verify`, devices) read the chain
 * from a manifest before anything about it is trusted.  Each input is
 * parsed as JSON: a manifest goes through manifest_check(), and its
 * "signing_chain" (or the input itself, when it is an array) through
 * pki_chain_verify() against a root made at start-up, at the manifest's
 * built_at; the raw bytes also go through pki_chain_from_pem() (a chain
 * file).  Besides crashes, leaks and UB, the target aborts when a chain
 * the root never certified is accepted, or a refusal has no message.
 * Seeds in fuzz/corpus/fuzz_chain: a manifest with a real chain (from
 * another root) and a bare chain array.
 *
 *   make fuzz   or   build/fuzz/fuzz_chain fuzz/corpus/fuzz_chain
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/util.h"
#include "../orchestrator/manifest.h"
#include "../orchestrator/pki.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static X509 *root;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	char dir[] = "/tmp/fuzz_chain.XXXXXX", path[64];

	(void)argc;
	(void)argv;
	if (!mkdtemp(dir) || pki_root_init(dir, "fuzz root", 30, NULL) < 0)
		abort();
	snprintf(path, sizeof(path), "%s/root.crt.pem", dir);
	if (pki_root_load_file(&root, path) < 0)
		abort();
	unlink(path);
	snprintf(path, sizeof(path), "%s/root.key.pem", dir);
	unlink(path);
	rmdir(dir);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	json_t *m = json_loadb((const char *)data, size, 0, NULL), *chain = NULL, *parsed = NULL;
	time_t at = time(NULL);
	char keyid[65];
	EVP_PKEY *leaf = NULL;

	if (pki_chain_from_pem(&parsed, data, size) == 0 && !json_array_size(parsed))
		abort();
	json_decref(parsed);
	if (!m)
		return 0;
	if (json_is_object(m)) {
		manifest_check(m);
		pki_parse_time(json_string_value(json_object_get(m, "built_at")), &at);
		chain = json_object_get(m, "signing_chain");
	} else {
		chain = m;
	}
	ota_error_clear();
	/* nothing here was certified by this run's fresh root */
	if (chain && pki_chain_verify(&leaf, keyid, root, chain, at, NULL) == 0)
		abort();
	if (chain && !ota_error_last())
		abort();
	EVP_PKEY_free(leaf);
	json_decref(m);
	return 0;
}
