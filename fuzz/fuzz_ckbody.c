/*
 * fuzz_ckbody.c - libFuzzer target for the device API's check-in parse
 * (fleet_ckbody.c, its one-pass reader): untrusted bytes from every device in the fleet.
 *
 * Differential: whatever fleet_ckbody_parse accepts, jansson (the parser
 * it stands in for) must parse to identical fields, or the target aborts;
 * then the fields go through the real check-in (authentication as dev-1,
 * field rules, the decision against one exposure) on a temporary fleet,
 * as the device listener sends them.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/util.h"
#include "../orchestrator/fleet/fleet.h"
#include "../orchestrator/fleet/fleet_ckbody.h"

static struct fleet *fleet;
static char *db_path;      /* kept for the life of the process */
static char cred[1][33];   /* dev-1's credential: its check-ins pass authentication */

static void setup(void)
{
	static char dir[] = "/tmp/otacd-fuzz-ckbody-XXXXXX";
	static const struct fleet_image img = { "mps2-an385",
		"0000000000000000000000000000000000000000000000000000000000000000", "application", 100 };
	struct fleet_config c = { 0 };
	struct fleet_exposure x = { 0 };
	const char *ids[] = { "dev-1" };

	if (!mkdtemp(dir))
		abort();
	db_path = xasprintf("%s/fleet.db", dir);
	c.db_path = db_path;
	c.fleet_key = "fuzz-fleet-key-0123456789abcdef";
	c.device_secret = "fuzz-device-secret-0123456789abcdef0123456789abcdef0123456789abcdef";
	c.poll_ms = 3600000;
	if (fleet_open(&fleet, &c) < 0 || fleet_register(fleet, ids, 1, "fuzz", cred) < 0)
		abort();
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

static void nothing(void *ctx, int rc)
{
	(void)ctx;
	(void)rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fleet_ckbody fast, ref;
	char answer[FLEET_ANSWER_MAX];
	json_t *j;

	if (!fleet)
		setup();
	j = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, NULL);
	if (fleet_ckbody_parse(&fast, (const char *)data, size) == 0) {
		if (!j) {
			fprintf(stderr, "fast path accepts what jansson refuses\n");
			abort();
		}
		fleet_ckbody_from_json(&ref, j);
		if (!fleet_ckbody_equal(&fast, &ref)) {
			fprintf(stderr, "fast path and jansson read different fields\n");
			abort();
		}
		/* the check-in as the device listener runs it (a change waits
		 * for the writer, which calls nothing: fast stays on the stack
		 * only until checkin() returns, which is all it reads) */
		fleet_checkin_body_async(fleet, &fast, cred[0], answer, sizeof(answer), nothing, NULL);
	}
	json_decref(j);
	return 0;
}
