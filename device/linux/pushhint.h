/*
 * pushhint.h - the checks every subscriber applies to an MQTT push hint
 * (issue 15, docs/delivery.md "Push"), shared by otacd-device
 * (device/linux/push.c) and otacd-fleetsim (fleetsim/push.c) so that the
 * simulator takes exactly the hints a device takes.
 *
 * A hint is at most payload_max bytes, a JSON object {"v": 1, ...}; its
 * "window_ms" may widen the subscriber's own window (up to window_max_ms),
 * never narrow it.  Topic segments are written as otacd writes them.
 */
#ifndef OTADEV_LINUX_PUSHHINT_H
#define OTADEV_LINUX_PUSHHINT_H

#include <stddef.h>
#include <stdint.h>

struct pushhint_limits {
	uint32_t window_ms;       /* the subscriber's own jitter window (mqtt_window_ms) */
	uint32_t window_max_ms;   /* the widest window a hint may ask for */
	uint32_t payload_max;     /* bytes */
};

/* 0 with the hint's jitter window in *window, or -1 with *why (ignore the
 * message). */
int pushhint_parse(const struct pushhint_limits *lim, const void *payload, int len, uint32_t *window,
		   const char **why);
/* Append topic segment s to the string in out (cap bytes): '/', '+', '#'
 * and '%' escaped as %XX; truncated when out is full. */
void pushhint_topic_seg(char *out, size_t cap, const char *s);

#endif
