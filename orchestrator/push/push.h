/*
 * push.h - update notifications to devices over MQTT (issue 15, "Push").
 *
 * When a rollout step opens a device's offer, or a halt or a rollback
 * changes it, the fleet (fleet_set_notify) hands the changed devices to
 * push_fleet_notify; it queues small JSON hints for a publisher thread
 * that owns the broker connection (libmosquitto).  The rollout thread
 * never waits on the network: the queue is bounded, and when it is full
 * or the broker is down a hint is dropped and counted (logged once per
 * outage); devices then learn of the offer at their next poll.
 *
 * Topics and payload: docs/delivery.md, "Push".  Nothing in a hint is
 * secret or trusted: it only asks a device to check in early.
 */
#ifndef OTA_PUSH_H
#define OTA_PUSH_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "../fleet/fleet.h"

struct push;

struct push_stats {
	uint64_t queued, published, dropped;
	int connected;
};

/* cfg: the config's `push:` mapping (docs/config.md); NULL or without
 * `url`: *out = NULL and 0 (push off).  Errors in the config are <0. */
int push_open(struct push **out, const json_t *cfg);
void push_close(struct push *p);
/* A fleet_notify_fn: ctx is the struct push. */
void push_fleet_notify(void *ctx, const char *product, const struct fleet_change *c, size_t n);
void push_stats(struct push *p, struct push_stats *out);
/* The Prometheus lines of the push_open'ed publisher (none when push is
 * off): otacd_push_hints_{queued,published,dropped}_total and
 * otacd_push_connected, for the device listener's /metrics. */
struct buf;
void push_metrics_text(struct buf *b);
/* A topic segment: '/', '+', '#' and '%' as %2F, %2B, %23, %25 (product
 * names may hold '/' and '+'); out of cap bytes. */
void push_topic_escape(char *out, size_t cap, const char *s);

#endif
