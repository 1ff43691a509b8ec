/*
 * fuzz_csr.c - libFuzzer target for the device CA's parsers of untrusted
 * input (issue 13, orchestrator/fleet/fleet_ca.h): the first byte picks
 *   0: a CSR as a factory posts it to POST /device/v1/provision
 *      (fleet_ca_csr_parse; a CSR that passes is issued a certificate by a
 *      real CA made at start, as the route would);
 *   1: a DER client certificate as a TLS handshake hands it to
 *      fleet_ca_identify.
 * Neither may crash, leak or accept what it should not: an identified
 * certificate must have been issued by the CA, so any success on input the
 * fuzzer made up is a finding (abort).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/util.h"
#include "../orchestrator/fleet/fleet_ca.h"

static struct fleet_ca *ca;

static void setup(void)
{
	static char dir[] = "/tmp/otacd-fuzz-csr-XXXXXX";
	struct fleet_ca_config c = { .state_dir = dir };
	if (!mkdtemp(dir) || fleet_ca_open(&ca, &c) < 0 || fleet_ca_install(ca, "fuzz CA", 30, NULL, NULL) < 0)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char id[128], serial[41], *pem = NULL;
	const char *why;
	int64_t nb, na;
	void *req = NULL;

	if (!ca)
		setup();
	if (size < 1)
		return 0;
	if (data[0] == 0) {
		if (fleet_ca_csr_parse(&req, (const char *)data + 1, size - 1, NULL) == 0) {
			if (fleet_ca_issue(ca, req, "fuzz-device", NULL, &pem, serial, &nb, &na) < 0)
				abort(); /* a CSR that passed the checks must be issuable */
			free(pem);
			fleet_ca_csr_free(req);
		}
	} else if (fleet_ca_identify(ca, data + 1, size - 1, id, sizeof(id), &why) == 0) {
		abort(); /* the fuzzer cannot forge the CA's signature */
	}
	return 0;
}
