/*
 * fuzz_register.c - libFuzzer target for the device registration body
 * (POST /device/v1/register, untrusted input from whoever holds the fleet
 * key): the first byte's low bit says whether to carry a valid body through
 * to the writer, the rest is the JSON body.  It is validated by
 * fleet_register_parse, the function the device API calls; a valid one is
 * registered on a real fleet (a temporary fleet.db), and every credential
 * minted must then authenticate its device, and only it.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/util.h"
#include "../orchestrator/fleet/fleet.h"
#include "../orchestrator/fleet/fleet_int.h"

static struct fleet *fleet;
static char *db_path;   /* kept for the life of the process */

static void setup(void)
{
	static char dir[] = "/tmp/otacd-fuzz-register-XXXXXX";
	struct fleet_config c = { 0 };

	if (!mkdtemp(dir))
		abort();
	db_path = xasprintf("%s/fleet.db", dir);
	c.db_path = db_path;
	c.fleet_key = "fuzz-fleet-key-0123456789abcdef";
	c.device_secret = "fuzz-device-secret-0123456789abcdef0123456789abcdef0123456789abcdef";
	c.poll_ms = 3600000;
	if (fleet_open(&fleet, &c) < 0)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fleet_reg *reg = NULL;
	json_t *body;

	if (!fleet)
		setup();
	if (size < 1)
		return 0;
	body = json_loadb((const char *)data + 1, size - 1, 0, NULL);
	if (!body)
		return 0;
	if (fleet_register_parse(fleet, body, "fuzz", &reg) == 0) {
		/* what the parse promises the writer: 1..FLEET_MAX_REGISTER
		 * valid, distinct ids */
		if (!reg || reg->n == 0 || reg->n > FLEET_MAX_REGISTER)
			abort();
		for (size_t i = 0; i < reg->n; i++) {
			if (!fleet_device_id_valid(reg->ids[i]))
				abort();
			for (size_t j = 0; j < i; j++)
				if (!strcmp(reg->ids[i], reg->ids[j]))
					abort();
		}
		if ((data[0] & 1) && reg->n <= 64) {
			char(*creds)[33] = xcalloc(reg->n, sizeof(*creds));
			if (fleet_register(fleet, (const char *const *)reg->ids, reg->n, "fuzz", creds) < 0)
				abort();
			for (size_t i = 0; i < reg->n; i++) {
				if (fleet_device_auth(fleet, reg->ids[i], creds[i]) != 0)
					abort();
				/* a credential is its device's alone */
				if (i > 0 && fleet_device_auth(fleet, reg->ids[i - 1], creds[i]) == 0)
					abort();
			}
			free(creds);
		}
	} else if (reg) {
		abort();   /* a refused body leaves nothing behind */
	}
	fleet_reg_free(reg);
	json_decref(body);
	return 0;
}
