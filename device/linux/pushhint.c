/*
 * pushhint.c - validating an MQTT push hint; see pushhint.h.
 *
 * The broker and everything on it are untrusted: the hint only schedules an
 * early check-in, and the only thing taken from it is a window the
 * subscriber bounds on both sides.
 */
#include "pushhint.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>

void pushhint_topic_seg(char *out, size_t cap, const char *s)
{
	size_t o = strlen(out);
	for (; *s && o + 4 < cap; s++) {
		if (*s == '/' || *s == '+' || *s == '#' || *s == '%')
			o += (size_t)snprintf(out + o, cap - o, "%%%02X", (unsigned char)*s);
		else
			out[o++] = *s;
	}
	out[o] = 0;
}

int pushhint_parse(const struct pushhint_limits *lim, const void *payload, int len, uint32_t *window,
		   const char **why)
{
	json_t *j;
	const json_t *v, *w;
	*window = lim->window_ms;
	if (len <= 0 || (uint32_t)len > lim->payload_max) {
		*why = "empty or larger than mqtt_payload_max";
		return -1;
	}
	j = json_loadb(payload, (size_t)len, JSON_REJECT_DUPLICATES, NULL);
	v = json_object_get(j, "v");
	if (!json_is_object(j) || !json_is_integer(v) || json_integer_value(v) != 1) {
		json_decref(j);
		*why = "not a hint {\"v\": 1, ...}";
		return -1;
	}
	w = json_object_get(j, "window_ms");
	if (json_is_integer(w) && json_integer_value(w) > (json_int_t)*window)
		*window = json_integer_value(w) > (json_int_t)lim->window_max_ms ? lim->window_max_ms
										 : (uint32_t)json_integer_value(w);
	json_decref(j);
	return 0;
}
