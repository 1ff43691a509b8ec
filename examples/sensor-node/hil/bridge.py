#!/usr/bin/env python3
"""bridge.py - the rig's half of the sensor node's update link (UART1).

Usage: bridge.py SOCKET URL

QEMU's mps2 boards have no network the firmware can use, so libotadev's
transport hook (src/ota_port.c, wire format in src/ota_link.h) sends each
HTTP request as a line on UART1.  Run QEMU with
`-serial stdio -serial unix:SOCKET,server=on,wait=on` and this script
connects to SOCKET, says "BRIDGE 1", and for every "REQ ..." line makes the
real HTTP request to URL (otacd's device API) with the device's id and
bearer credential, and writes the answer back as "RSP STATUS TOTAL LEN" and
the body in hex.  A transport error, or a request whose body line is torn,
is answered with status 0 (libotadev backs off).  One line per exchange
goes to stdout: "bridge: POST /device/v1/checkin -> 200 (123 bytes)".
Exits when QEMU closes the socket.  python3's standard library only.

The bridge is a wire, not a trust anchor: it sees the device's credential
(as a modem would) but the firmware verifies every image itself.
"""

import re
import sys
import urllib.error
import urllib.request

sys.dont_write_bytecode = True  # no __pycache__ in the firmware's tree
from hil_common import connect_uart  # noqa: E402  (after the line above)

REQ_RE = re.compile(r"^REQ (GET|POST) (-?\d+) (-?\d+) (\d+) (/\S+) (\S+) (\S+)$")
BODY_MAX = 4096  # the firmware's buffers are smaller; it refuses what does not fit


def exchange(url, m):
    method, start, end, _, path, device, cred = m.groups()
    headers = {"X-Device-Id": device, "Content-Type": "application/json"}
    if cred != "-":
        headers["Authorization"] = "Bearer " + cred
    if int(start) >= 0:
        headers["Range"] = "bytes=%s-%s" % (start, end)
    return method, path, headers


def main():
    if len(sys.argv) != 3:
        print("usage: bridge.py SOCKET URL", file=sys.stderr)
        return 2
    sock_path, url = sys.argv[1], sys.argv[2].rstrip("/")
    s = connect_uart(sock_path)
    f = s.makefile("rwb", buffering=0)
    f.write(b"BRIDGE 1\n")
    while True:
        line = f.readline()
        if not line:
            return 0
        text = line.decode("ascii", "replace").strip()
        m = REQ_RE.match(text)
        if not m:
            # a torn line: the firmware times out and retries
            print("bridge: ignored %r" % text[:80], flush=True)
            continue
        body_hex = f.readline().decode("ascii", "replace").strip()
        try:
            body = bytes.fromhex(body_hex)
        except ValueError:
            body = None
        method, path, headers = exchange(url, m)
        if body is None or len(body) != int(m.group(4)):
            # a torn body is not sent on (as an empty POST): no answer
            print("bridge: %s %s: torn body, not sent" % (method, path), flush=True)
            f.write(b"RSP 0 -1 0\n\n")
            continue
        status, total, data = 0, -1, b""
        try:
            req = urllib.request.Request(url + path, data=body if method == "POST" and body else None,
                                         headers=headers, method=method)
            with urllib.request.urlopen(req, timeout=5) as r:
                status, data = r.status, r.read(BODY_MAX + 1)
                cr = r.headers.get("Content-Range", "")
        except urllib.error.HTTPError as e:
            status, data, cr = e.code, e.read(BODY_MAX + 1), e.headers.get("Content-Range", "")
        except (urllib.error.URLError, OSError):
            cr = ""
        m2 = re.search(r"/(\d+)$", cr or "")
        if m2:
            total = int(m2.group(1))
        if len(data) > BODY_MAX:
            status, data = 0, b""
        print("bridge: %s %s -> %d (%d bytes)" % (method, path, status, len(data)), flush=True)
        f.write(b"RSP %d %d %d\n" % (status, total, len(data)) + data.hex().encode() + b"\n")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (BrokenPipeError, ConnectionResetError):
        sys.exit(0)
