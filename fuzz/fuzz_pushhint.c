/*
 * fuzz_pushhint.c - libFuzzer target for otacd-device's MQTT hint reader
 * (device/linux/push.c, issue 15): any message on its topic either is
 * ignored or yields a window within [mqtt_window_ms, mqtt_window_max_ms].
 * The first byte picks the topic (ours, the cohort's, another); the rest
 * is the payload.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../device/linux/push.c"
#include "../device/linux/pushhint.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int once;
	struct mosquitto_message msg;
	uint32_t window, delay;
	const char *why;
	char *payload;

	if (!once) {
		g.window_ms = 1000;
		g.window_max_ms = 5000;
		g.payload_max = 256;
		snprintf(g.topic_dev, sizeof(g.topic_dev), "otacd/fw/dev/d1");
		snprintf(g.topic_hw, sizeof(g.topic_hw), "otacd/fw/hw/h1");
		once = 1;
	}
	if (size < 1 || size > 65536)
		return 0;
	payload = malloc(size);
	memcpy(payload, data + 1, size - 1);
	if (hint_parse(payload, (int)size - 1, &window, &why) == 0 && (window < g.window_ms || window > g.window_max_ms))
		abort();
	memset(&msg, 0, sizeof(msg));
	msg.topic = data[0] % 3 == 0 ? g.topic_dev : data[0] % 3 == 1 ? g.topic_hw : "otacd/fw/dev/d2";
	msg.payload = payload;
	msg.payloadlen = (int)size - 1;
	g.last_taken = 0;
	g.ignored = LOG_IGNORED_MAX + 1; /* quiet */
	on_message(NULL, NULL, &msg);
	if (devpush_take(&delay) && delay >= g.window_max_ms)
		abort();
	free(payload);
	return 0;
}
