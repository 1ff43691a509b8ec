/*
 * push.h - otacd-fleetsim --mqtt-url: the fleet's MQTT push hints (issue 15,
 * docs/fleetsim.md "Push").
 *
 * One libmosquitto connection subscribes to PREFIX/PRODUCT/dev/+ and
 * PREFIX/PRODUCT/hw/+ for the whole fleet.  Each message is checked the way
 * otacd-device checks it (device/linux/pushhint.h: size, {"v": 1},
 * window_ms bounded), and its topic must name one simulated device or one
 * hardware variant of the profile; anything else is counted as ignored.
 * Accepted hints wait in a bounded queue that the simulator's loop drains
 * (fs_push_take) and dispatches to its devices: each device that took no
 * hint within its own window draws a delay uniform in [0, window)
 * (fs_push_draw) and checks in then, as otacd-device would.
 *
 * Threads: libmosquitto's own thread (mosquitto_loop_start) receives and
 * validates; the queue and the counters are guarded by a mutex; the
 * per-device state of fs_push_draw belongs to the caller's thread.
 */
#ifndef OTA_FLEETSIM_PUSH_H
#define OTA_FLEETSIM_PUSH_H

#include <stddef.h>
#include <stdint.h>

struct fs_push_opts {
	const char *url;             /* mqtt://HOST[:PORT] or mqtts://HOST[:PORT] */
	const char *cacert, *username, *password_file;
	const char *prefix;          /* "otacd" */
	uint32_t window_ms;          /* the devices' own window (60000) */
	uint32_t window_max_ms;      /* the widest a hint may ask for (3600000) */
};

/* A hint the loop dispatches: to one device, or to every device of one
 * hardware variant (hw >= 0). */
struct fs_hint {
	uint32_t dev;
	int32_t hw;
	uint32_t window_ms;          /* the jitter window, bounded already */
};

struct fs_push;

/* Connect (in the background, reconnecting) and subscribe; hw names are
 * the profile's hardware variants (borrowed for the lifetime).  <0 with an
 * error message on a bad setting. */
int fs_push_start(struct fs_push **out, const struct fs_push_opts *o, const char *product,
		  const char *const *hw, size_t nhw, uint32_t ndev);
/* Up to max queued hints into out; returns how many. */
size_t fs_push_take(struct fs_push *p, struct fs_hint *out, size_t max);
/* Device dev gets hint h at real ms now: 1 with the delay (real ms) of its
 * early check-in, 0 when it took a hint less than its window ago. */
int fs_push_draw(struct fs_push *p, uint32_t dev, const struct fs_hint *h, int64_t now, uint64_t *rng,
		 uint32_t *delay);
/* Messages received, ignored (bad topic or payload, queue full) and
 * device deliveries skipped by the one-hint-per-window rule. */
void fs_push_counts(struct fs_push *p, int64_t *received, int64_t *ignored, int64_t *skipped);
void fs_push_free(struct fs_push *p);

#endif
