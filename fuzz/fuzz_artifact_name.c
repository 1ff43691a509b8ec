/*
 * fuzz_artifact_name.c - libFuzzer target for the artifact-name rule
 * (ota_artifact_name_check, common/util.c) that the daemon and the agent
 * share.
 *
 * The input is a name of any bytes, NULs included.  Besides crashes and UB,
 * the target aborts when an accepted name could leave the directory it is
 * stored under (a leading '/', an empty, "." or ".." component), holds a NUL,
 * a control character or a backslash, or is empty or longer than 255 bytes;
 * and when a refusal gives no reason.
 *
 *   make fuzz   or   build/fuzz/fuzz_artifact_name fuzz/corpus/fuzz_artifact_name
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../common/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *name = (const char *)data;
	char why[128] = "";
	size_t i, start = 0;

	if (ota_artifact_name_check(name, size, why, sizeof(why)) < 0) {
		if (!why[0])
			abort();
		return 0;
	}
	if (size == 0 || size > 255 || name[0] == '/')
		abort();
	for (i = 0; i < size; i++)
		if (data[i] < 0x20 || data[i] == 0x7f || data[i] == '\\')
			abort();
	for (i = 0; i <= size; i++) {
		if (i < size && name[i] != '/')
			continue;
		if (i == start || (i - start == 1 && name[start] == '.') ||
		    (i - start == 2 && name[start] == '.' && name[start + 1] == '.'))
			abort();
		start = i + 1;
	}
	return 0;
}
