/*
 * fuzz_crl.c - libFuzzer target for revocation lists (issue 13,
 * orchestrator/pki.h).
 *
 * otacd takes a list from `otactl keys publish`, devices take one from the
 * server: pki_crl_load() must refuse anything that is not a CRL (PEM or
 * DER) signed by the root, with a message, and never crash.  The root is
 * made at start-up; the input goes through pki_crl_load() and, when it
 * somehow loads, pki_crl_number() and pki_crl_lists() against the root
 * itself.  Aborts when a list not signed by this run's root is accepted.
 * Seeds in fuzz/corpus/fuzz_crl: real lists (PEM and DER) of another root.
 *
 *   make fuzz   or   build/fuzz/fuzz_crl fuzz/corpus/fuzz_crl
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/util.h"
#include "../orchestrator/pki.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static X509 *root;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	char dir[] = "/tmp/fuzz_crl.XXXXXX", path[64];

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
	X509_CRL *crl = NULL;
	int64_t number = 0;

	ota_error_clear();
	if (pki_crl_load(&crl, &number, data, size, root) == 0)
		abort(); /* this run's root signed nothing */
	if (!ota_error_last())
		abort();
	X509_CRL_free(crl);
	return 0;
}
