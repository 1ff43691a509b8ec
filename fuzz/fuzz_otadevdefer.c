/*
 * fuzz_otadevdefer.c - libFuzzer target for libotadev's parser of a
 * deferral, the body of a 503 a server over its check-in capacity sends
 * (issue 15, docs/update-server.md "Over capacity"): untrusted bytes from
 * the network.  A parse that succeeds must hold a usable time scale.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "../device/otadev_json.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static uint32_t tok[OTADEV_TOKENS * 5];
	struct otadev_defer d;

	if (otadev_defer_parse(&d, (const char *)data, size, tok, OTADEV_TOKENS) == 0 &&
	    (!(d.time_scale > 0) || d.time_scale > 1e6))
		abort();
	return 0;
}
