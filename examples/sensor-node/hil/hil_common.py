"""hil_common.py - what the rig's scripts share: the UART's line patterns
and the frame format of src/frame.h (hil.py, conformance.py), the
CRC-16 of every framed link (se_model.py too), and the connection to a
QEMU serial port on a Unix socket (bridge.py, se_model.py)."""

import re
import socket
import time

VERSION_RE = re.compile(r"^sensor-node (\S+) counter=(\d+) board=(\S+)$")
FRAME_RE = re.compile(r"^FRAME ([0-9A-F]+)$")


def crc16_ccitt(data):
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def connect_uart(path, wait_s=10.0):
    """A socket connected to QEMU's `-serial unix:PATH,server=on`, retried
    until QEMU listens (up to wait_s)."""
    deadline = time.monotonic() + wait_s
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s
        except OSError:
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def decode_frame(hexstr):
    """(seq, value) of a sample frame, or raise ValueError saying what is wrong."""
    raw = bytes.fromhex(hexstr)
    if len(raw) < 4:
        raise ValueError("frame shorter than 4 bytes")
    if raw[0] != 0xA5:
        raise ValueError("sync byte is 0x%02X, not 0xA5" % raw[0])
    n = raw[1]
    if len(raw) != n + 4:
        raise ValueError("LEN says %d payload bytes, frame has %d" % (n, len(raw) - 4))
    want = (raw[2 + n] << 8) | raw[3 + n]
    got = crc16_ccitt(raw[1:2 + n])
    if got != want:
        raise ValueError("CRC mismatch: frame says 0x%04X, computed 0x%04X" % (want, got))
    payload = raw[2:2 + n]
    if n != 7 or payload[0] != 0x01:
        raise ValueError("not a sample message (type/length)")
    seq = int.from_bytes(payload[1:5], "little")
    value = int.from_bytes(payload[5:7], "little", signed=True)
    if not -4000 <= value <= 8500:
        raise ValueError("temperature %.2f degC outside the sensor's range" % (value / 100))
    return seq, value
