/*
 * fuzz_idem.c - libFuzzer target for the Idempotency-Key header (untrusted
 * input from every API client): input is one selector byte, the header
 * value up to the first newline, then the request body.  The value goes
 * through what api.c's idem_check does with it: idem_key_valid, the
 * request's fingerprint, idem_begin on a real engine (a temporary
 * otacd.db); a new key is finished (or forgotten, or abandoned) and looked
 * up again, which must replay the first answer exactly, refuse another
 * request under the same key, and never run it twice.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/util.h"
#include "../orchestrator/artifact.h"
#include "../orchestrator/clock.h"
#include "../orchestrator/engine.h"
#include "../orchestrator/idem.h"
#include "../orchestrator/logstore.h"
#include "../orchestrator/store.h"

static struct engine *engine;

static void setup(void)
{
	static char dir[] = "/tmp/otacd-fuzz-idem-XXXXXX";
	struct engine_config ec = { 0 };
	struct store *db = NULL;
	char *path;

	if (!mkdtemp(dir))
		abort();
	path = xasprintf("%s/otacd.db", dir);
	if (store_open(&db, path) < 0)
		abort();
	free(path);
	clock_init(1.0, clock_real_ms(), clock_real_ms());
	if (logstore_init(dir, 1 << 20) < 0 || artifact_store_init(dir, 1 << 20) < 0)
		abort();
	ec.lease_ms = 60000;
	ec.heartbeat_ms = 10000;
	ec.default_timeout_ms = 60000;
	if (engine_start(&engine, db, &ec) < 0)
		abort();
}

/* The rule of docs/api.md, written out independently. */
static int key_ok(const char *k)
{
	size_t n = strlen(k);
	if (n < 1 || n > IDEM_MAX_KEY)
		return 0;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)k[i] <= 0x20 || (unsigned char)k[i] >= 0x7f)
			return 0;
	return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const methods[] = { "POST", "PUT", "DELETE", "PATCH" };
	static unsigned long seq;
	const uint8_t *nl;
	char *key, *body, fp[65], fp2[65], actor[32], *replay = NULL;
	const char *answer = "{\"id\":1}";
	enum idem_state state;
	int status = 0;
	size_t klen, blen;

	if (!engine)
		setup();
	if (size < 1)
		return 0;
	nl = memchr(data + 1, '\n', size - 1);
	klen = nl ? (size_t)(nl - data - 1) : size - 1;
	key = xstrndup((const char *)data + 1, klen);   /* a header value ends at its first NUL */
	blen = nl ? size - 2 - klen : 0;
	body = xmalloc(blen + 1);
	memcpy(body, nl ? (const char *)nl + 1 : "", blen);
	body[blen] = 0;
	if (idem_key_valid(key) != key_ok(key))
		abort();
	if (!idem_key_valid(key))
		goto out;
	/* one actor per input: every key starts unused */
	snprintf(actor, sizeof(actor), "fuzz-%lu", ++seq);
	idem_fingerprint(methods[data[0] & 3], "/api/v1/runs", body, blen, fp);
	if (idem_begin(engine, actor, key, fp, &state, &status, &replay) < 0 || state != IDEM_NEW)
		abort();
	switch ((data[0] >> 2) & 3) {
	case 0:   /* answered: a retry replays it, another request is refused */
		if (idem_finish(engine, actor, key, 201, answer, strlen(answer)) < 0)
			abort();
		if (idem_begin(engine, actor, key, fp, &state, &status, &replay) < 0 || state != IDEM_REPLAY ||
		    status != 201 || !replay || strcmp(replay, answer))
			abort();
		free(replay);
		replay = NULL;
		idem_fingerprint(methods[data[0] & 3], "/api/v1/runs", body, blen + 1, fp2);
		if (idem_begin(engine, actor, key, fp2, &state, &status, &replay) < 0 || state != IDEM_MISMATCH)
			abort();
		break;
	case 1:   /* still running: a retry waits */
		if (idem_begin(engine, actor, key, fp, &state, &status, &replay) < 0 || state != IDEM_IN_PROGRESS)
			abort();
		break;
	case 2:   /* failed without an answer: a retry runs it */
		if (idem_forget(engine, actor, key) < 0 ||
		    idem_begin(engine, actor, key, fp, &state, &status, &replay) < 0 || state != IDEM_NEW)
			abort();
		break;
	default:  /* ran, its client left: outcome unknown, never run again */
		if (idem_abandon(engine, actor, key) < 0 ||
		    idem_begin(engine, actor, key, fp, &state, &status, &replay) < 0 || state != IDEM_INTERRUPTED)
			abort();
		break;
	}
out:
	free(replay);
	free(key);
	free(body);
	return 0;
}
