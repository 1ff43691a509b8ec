/*
 * push.h - otacd-device's MQTT subscriber (issue 15, "Push").
 *
 * With `mqtt_url` in the config, otacd-device subscribes to its device
 * topic PREFIX/PRODUCT/dev/DEVICE and its cohort topic
 * PREFIX/PRODUCT/hw/HARDWARE (docs/delivery.md, "Push").  A hint only
 * schedules an early check-in at a random instant within the jitter
 * window; the check-in's answer decides everything.  Anything that is not
 * a well-formed hint of at most mqtt_payload_max bytes on one of those two
 * topics is ignored, and at most one hint per window is taken.
 *
 * One subscriber per process (the configuration is process-wide, like
 * libmosquitto's own initialisation).  A thread of its own connects,
 * reconnects (1 s .. 60 s) and receives; the main loop takes the pending
 * delay with devpush_take.
 */
#ifndef OTADEV_LINUX_PUSH_H
#define OTADEV_LINUX_PUSH_H

#include <stddef.h>
#include <stdint.h>

/* mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (1883, 8883), HOST a name, an
 * IPv4 address or an IPv6 one in brackets ([::1]:1883; host is written
 * without them, as getaddrinfo takes it); no user, path or query; a port
 * is 1 to 65535 in digits.  0, or -1 with nothing to trust in the outputs. */
int devpush_parse_url(const char *url, char *host, size_t cap, int *port, int *tls);
/* A `mqtt_*` config key: 0 taken, <0 a bad value or an unknown key. */
int devpush_config(const char *key, const char *value);
/* Connect and subscribe when mqtt_url was set (reconnecting in the
 * background); 0 also when push is not configured, <0 a bad setting. */
int devpush_start(const char *device, const char *product, const char *hardware);
/* 1 with the delay of a pending early check-in (taken), else 0. */
int devpush_take(uint32_t *delay_ms);
void devpush_stop(void);

#endif
