/*
 * fuzz_ubootenv.c - libFuzzer target for otacd-device's readers of the
 * U-Boot side (device/linux/uboot.c): what fw_printenv printed for the
 * four variables, and the kernel command line's otacd.slot=.  The first
 * byte picks the reader; the rest is the input.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../device/linux/uboot.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const struct uboot u = { "fw_env.config", "otacd_slot", "/proc/cmdline", 3 };
	struct uboot_env e;
	char err[256], *s;
	int rc;

	if (size < 1 || size > 8192)
		return 0;
	s = malloc(size);
	memcpy(s, data + 1, size - 1);
	s[size - 1] = 0;
	if (data[0] & 1) {
		rc = cmdline_slot(s);
		if (rc < -1 || rc > 1)
			abort();
	} else if (env_parse(&u, s, &e, err, sizeof(err)) == 0) {
		/* what is accepted is in range */
		if (e.slot < 0 || e.slot > 1 || e.upgrade_available < 0 || e.upgrade_available > 1)
			abort();
	}
	free(s);
	return 0;
}
