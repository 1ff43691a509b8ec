/*
 * fuzz_sensorlink.c - libFuzzer target for the sample firmware's parsers
 * of bytes it does not control (examples/sensor-node/src/ota_link.c): the
 * first byte picks the UART1 bridge's answer header ("RSP ...") or the
 * provisioning sector read from flash; the rest is the input.  Both must
 * refuse or fill their fixed buffers without overrunning them.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../examples/sensor-node/src/ota_link.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char line[LINK_LINE_MAX], dev[64], cred[64];
	int status;
	long total;
	size_t len;

	if (size < 1)
		return 0;
	if (data[0] & 1) {
		size_t n = size - 1 < sizeof(line) - 1 ? size - 1 : sizeof(line) - 1;
		memcpy(line, data + 1, n);
		line[n] = '\0';
		if (link_rsp_line(line, &status, &total, &len, 2048) == 0 &&
		    (status < 0 || status > 999 || total < -1 || len > 2048))
			abort();
	} else if (link_prov_parse(data + 1, size - 1, dev, cred, sizeof(dev)) == 0) {
		if (!dev[0] || strlen(dev) >= sizeof(dev) || strlen(cred) >= sizeof(cred) || strchr(dev, ' '))
			abort();
	}
	return 0;
}
