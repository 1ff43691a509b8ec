/*
 * ota_link.h - libotadev's transport hook over UART1 to the rig's bridge.
 *
 * QEMU's mps2 boards have no network the firmware can use, so the HTTP
 * requests of libotadev travel as text over UART1 to hil/bridge.py, which
 * makes the real HTTP request to otacd and sends the answer back.  A board
 * with a modem or Wi-Fi replaces this with its own HTTP client (the hook
 * is struct otadev_hooks.http); docs/device-porting.md.  The wire:
 *
 *   bridge, once connected:  "BRIDGE 1\n"
 *   firmware:  "REQ METHOD RANGE_START RANGE_END BODY_LEN PATH DEVICE CREDENTIAL\n" HEX "\n"
 *   bridge:    "RSP STATUS RANGE_TOTAL BODY_LEN\n" HEX "\n"
 *
 * Numbers are decimal (-1: no Range / total unknown), CREDENTIAL is "-"
 * when there is none, bodies are lower- or upper-case hex.  Everything the
 * bridge sends is checked: a malformed or oversized answer, or one that
 * stops for LINK_BYTE_MS, is "no answer" to libotadev (it backs off).
 */
#ifndef SENSOR_OTA_LINK_H
#define SENSOR_OTA_LINK_H

#include <stddef.h>
#include <stdint.h>

#include "otadev.h"

#define LINK_FIRST_MS 8000u /* for the bridge's HTTP round trip */
#define LINK_BYTE_MS 1000u  /* between two bytes of an answer */
#define LINK_HELLO_MS 5u    /* between two bytes of "BRIDGE 1" */
#define LINK_LINE_MAX 64u   /* "RSP ..." header line */

/* The request line (without the body) into out; -1 when it does not fit or
 * a field would break the line (a space or control character). */
int link_req_line(char *out, size_t cap, const struct otadev_http_req *req);

/* Parse "RSP STATUS TOTAL LEN": 0, or -1 when it is not exactly that with
 * 0 <= STATUS <= 999, TOTAL >= -1 and LEN <= cap. */
int link_rsp_line(const char *line, int *status, long *total, size_t *len, size_t cap);

/* The provisioning sector (n bytes): "device=ID\n" and optionally
 * "credential=TOKEN\n", ended by the first 0xff or NUL byte (erased
 * flash).  Values are printable words shorter than cap.  0 with both
 * written (cred "" when absent), -1 for anything else (no device, an
 * unknown key, a torn line): the sector is then ignored whole. */
int link_prov_parse(const uint8_t *p, size_t n, char *dev, char *cred, size_t cap);

#endif
