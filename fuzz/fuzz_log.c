/*
 * fuzz_log.c - libFuzzer target for otacd's log lines (common/log.c): the
 * message and the request id are any bytes a peer could put there (a URL,
 * a ref, a job name, an X-Request-Id).
 *
 * The input's first byte splits it: a request id of up to 80 bytes, then
 * the message.  Besides crashes and UB, the target aborts when a line in any
 * format is not exactly one line ending in '\n', when a JSON line does not
 * parse or does not give the message back (invalid UTF-8 aside), or when a
 * request id the check accepts holds a byte outside its alphabet.
 *
 *   make fuzz   or   build/fuzz/fuzz_log fuzz/corpus/fuzz_log
 */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void one_line(const struct buf *line)
{
	if (line->len == 0 || line->ptr[line->len - 1] != '\n' || memchr(line->ptr, '\n', line->len) != line->ptr + line->len - 1 ||
	    memchr(line->ptr, '\r', line->len))
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t idlen = size ? data[0] % 81 : 0;
	char *id, *msg;
	struct ota_log_ctx ctx = { "", 1, 2 };
	struct buf line = BUF_INIT;
	json_t *o;

	if (size < 1 + idlen)
		return 0;
	id = strndup((const char *)data + 1, idlen);
	msg = strndup((const char *)data + 1 + idlen, size - 1 - idlen);
	if (ota_log_request_id_ok(id)) {
		for (const char *p = id; *p; p++)
			if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/+=@", *p))
				abort();
		snprintf(ctx.request_id, sizeof(ctx.request_id), "%s", id);
	}
	for (int f = OTA_LOG_TEXT; f <= OTA_LOG_JSON; f++) {
		buf_clear(&line);
		ota_log_format_line(&line, (enum ota_log_format)f, 1764730800123, OTA_LOG_INFO, msg, &ctx);
		one_line(&line);
	}
	o = json_loads(buf_cstr(&line), 0, NULL);
	if (!o || !json_is_string(json_object_get(o, "msg")))
		abort();
	/* valid UTF-8 (jansson takes it) comes back as it was */
	{
		json_t *valid = json_string(msg);
		if (valid && strcmp(json_string_value(json_object_get(o, "msg")), msg) != 0)
			abort();
		json_decref(valid);
	}
	json_decref(o);
	buf_release(&line);
	free(id);
	free(msg);
	return 0;
}
