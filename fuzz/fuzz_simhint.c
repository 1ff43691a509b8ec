/*
 * fuzz_simhint.c - libFuzzer target for otacd-fleetsim's MQTT hint reader
 * (fleetsim/push.c, issue 15): any message either is ignored or names one
 * simulated device (index < ndev) or one hardware variant of the profile,
 * with a window within [window_ms, window_max_ms].  The input is
 * "TOPIC\0PAYLOAD".
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../device/linux/pushhint.c"
#include "../fleetsim/push.c"
#include "../fleetsim/sim.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct fs_push *p;
	struct mosquitto_message msg;
	const uint8_t *nul;
	struct fs_hint h;
	char *topic;

	if (!p) {
		static const char *const hw[] = { "mps2-an385", "a/b+c" };
		p = xcalloc(1, sizeof(*p));
		p->lim.window_ms = 1000;
		p->lim.window_max_ms = 5000;
		p->lim.payload_max = PAYLOAD_MAX;
		p->ndev = 1000;
		p->nhw = 2;
		p->hw_seg = xcalloc(2, sizeof(char *));
		for (size_t k = 0; k < 2; k++) {
			char s[TOPIC_MAX] = "";
			pushhint_topic_seg(s, sizeof(s), hw[k]);
			p->hw_seg[k] = xstrdup(s);
		}
		snprintf(p->dev_topic, sizeof(p->dev_topic), "otacd/fw/dev/+");
		p->base_len = strlen("otacd/fw/");
	}
	if (size > 65536 || !(nul = memchr(data, 0, size)))
		return 0;
	topic = strndup((const char *)data, (size_t)(nul - data));
	memset(&msg, 0, sizeof(msg));
	msg.topic = topic;
	msg.payload = (void *)(nul + 1);
	msg.payloadlen = (int)(size - (size_t)(nul - data) - 1);
	if (hint_of(p, &msg, &h) == 0) {
		if (h.hw < 0 ? h.dev >= p->ndev : (size_t)h.hw >= p->nhw)
			abort();
		if (h.window_ms < p->lim.window_ms || h.window_ms > p->lim.window_max_ms)
			abort();
	}
	free(topic);
	return 0;
}
