/*
 * fuzz_manifest.c - libFuzzer target for the release manifest's schema
 * check.
 *
 * `otactl verify` reads manifests from a daemon it may not trust, and the
 * daemon's own verification reads them back from its store: the check must
 * refuse anything malformed by name, never crash.  Each input is parsed
 * with json_loadb and given to manifest_check(); besides crashes, leaks and
 * UB (ASan/UBSan), the target aborts when a refusal's message does not
 * start with "manifest: " or is not valid UTF-8 (the API sends it as a
 * JSON string).  The seed in fuzz/corpus/fuzz_manifest is a real manifest.
 *
 *   make fuzz   or   build/fuzz/fuzz_manifest fuzz/corpus/fuzz_manifest
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../common/util.h"
#include "../orchestrator/manifest.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	json_t *m = json_loadb((const char *)data, size, 0, NULL);

	if (!m)
		return 0;
	ota_error_clear();
	if (manifest_check(m) < 0) {
		const char *msg = ota_error_last();
		json_t *j = msg ? json_string(msg) : NULL;
		if (!msg || strncmp(msg, "manifest: ", 10) != 0 || !j)
			abort();
		json_decref(j);
	}
	json_decref(m);
	return 0;
}
