/*
 * fuzz_device.c - libFuzzer target for the device API's bodies (untrusted
 * input from every device in the fleet): the first byte picks check-in or
 * report batch, the rest is the JSON body, validated and applied to a real
 * fleet (a temporary fleet.db) with one exposure to decide offers against.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/util.h"
#include "../orchestrator/fleet/fleet.h"

static struct fleet *fleet;
static char *db_path;   /* kept for the life of the process */
static char cred[1][33];   /* dev-1's credential: reports about it pass authentication */

static void setup(void)
{
	static char dir[] = "/tmp/otacd-fuzz-device-XXXXXX";
	static const struct fleet_image img = { "mps2-an385",
		"0000000000000000000000000000000000000000000000000000000000000000", "application", 100 };
	struct fleet_config c = { 0 };
	struct fleet_exposure x = { 0 };

	if (!mkdtemp(dir))
		abort();
	db_path = xasprintf("%s/fleet.db", dir);
	c.db_path = db_path;
	c.fleet_key = "fuzz-fleet-key-0123456789abcdef";
	c.device_secret = "fuzz-device-secret-0123456789abcdef0123456789abcdef0123456789abcdef";
	c.poll_ms = 3600000;
	if (fleet_open(&fleet, &c) < 0)
		abort();
	{
		const char *ids[] = { "dev-1" };
		if (fleet_register(fleet, ids, 1, "fuzz", cred) < 0)
			abort();
	}
	x.release_id = 1;
	x.product = "fw";
	x.version = "1.1.0";
	x.security_counter = 1;
	x.min_bootloader = "1.0.0";
	x.images = &img;
	x.nimages = 1;
	x.active = 1;
	x.salt = "0123456789abcdef";
	x.basis_points = 5000;
	fleet_set_exposure(fleet, &x);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	json_t *body, *answer = NULL;
	int accepted = 0;

	if (!fleet)
		setup();
	if (size < 1)
		return 0;
	body = json_loadb((const char *)data + 1, size - 1, 0, NULL);
	if (!body)
		return 0;
	if (data[0] & 1) {
		/* as dev-1 (authentication, version rule, bounds) or trusted */
		fleet_report(fleet, body, (data[0] & 2) ? cred[0] : fleet_trusted_caller, &accepted);
	} else if (fleet_checkin(fleet, body, &answer) == 0) {
		json_decref(answer);
	}
	json_decref(body);
	return 0;
}
