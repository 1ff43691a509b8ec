#!/usr/bin/env python3
"""se_model.py - a MODEL of the sensor node's secure element, on UART2.

Usage: se_model.py SOCKET --slot N=KEY.der [--slot ...] [--link-key HEX]
                   [--forge] [--garble]

The sample firmware has no ECDSA verifier of its own: its verify hook
(src/ota_port.c) asks a secure element, as products do (e.g. Microchip's
ATECC608 Verify command with the public keys in its slots, or NXP's
SE050).  QEMU has no such chip, so this script stands in for it: run QEMU
with `-serial unix:SOCKET,server=on,wait=on` as its third serial port
(UART2) and this connects to SOCKET.  It is a model, not a secure element:
it holds its keys in a file and in process memory.

Frames (src/se_link.h): a request
  'S' 'E' 01 01 | LEN (2, BE) | nonce (16) | slot | sig type | digest (32)
  | sig len | sig | CRC-16/CCITT-FALSE (2, BE, over all before it)
is answered with
  'S' 'E' 01 81 | 00 21 | status | HMAC-SHA256(link key, "otacd-se1" |
  body | status) | CRC
status 00 valid, 01 invalid, 02 bad request, 03 no key in that slot.  A
request with a bad CRC, magic or length gets no answer (the firmware times
out and refuses): the model resynchronises on the next 'S' 'E'.

Slots hold SubjectPublicKeyInfo DER, the bootloader's key slots (public
halves only).  ECDSA P-256 (type 0x22) verifies the DER signature (zero
padding to 72 bytes allowed, as imgtool's --pad-sig) over the SHA-256
digest; Ed25519 (0x24) over the 32 digest bytes, as MCUboot's TLV.

Attacker modes, for tests of the trust boundary: --forge answers "valid"
to every request with a MAC made with a wrong key (someone on the bus
without the link key); --garble flips a bit of each answer after the CRC
was computed (line noise).  One line per request to stdout:
"se: slot 0 ecdsa-p256 -> valid".  Exits when QEMU closes the socket.
Needs python3-cryptography (Debian).
"""

import argparse
import hashlib
import hmac
import struct
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, utils

sys.dont_write_bytecode = True  # no __pycache__ in the firmware's tree
from hil_common import connect_uart, crc16_ccitt as crc16  # noqa: E402  (after the line above)

DEV_LINK_KEY = "5345206c696e6b206b65792028646576656c6f706d656e74206f6e6c7929212e"
MAC_LABEL = b"otacd-se1"
SIG_ECDSA_P256, SIG_ED25519 = 0x22, 0x24
VALID, INVALID, BADREQ, NOKEY = 0, 1, 2, 3
BODY_MAX = 16 + 3 + 32 + 72


def verify(key, sig_type, digest, sig):
    """VALID or INVALID: sig over digest with key (a loaded public key)."""
    try:
        if sig_type == SIG_ECDSA_P256 and isinstance(key, ec.EllipticCurvePublicKey):
            if len(sig) >= 2 and sig[1] + 2 <= len(sig):
                sig = sig[: sig[1] + 2]  # imgtool's zero padding to 72
            key.verify(sig, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
            return VALID
        if sig_type == SIG_ED25519 and isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(sig, digest)
            return VALID
    except (InvalidSignature, ValueError):
        pass
    return INVALID


def judge(slots, body):
    """The status for a request body, and a word for the log."""
    if len(body) < 16 + 3 + 32 or len(body) != 16 + 3 + 32 + body[16 + 2 + 32]:
        return BADREQ, "bad request"
    slot, sig_type = body[16], body[17]
    digest, sig = body[18:50], body[51:]
    if slot not in slots:
        return NOKEY, "slot %d: no key" % slot
    status = verify(slots[slot], sig_type, digest, sig)
    return status, "slot %d type 0x%02x -> %s" % (slot, sig_type, "valid" if status == VALID else "invalid")


def answer(link_key, body, status):
    mac = hmac.new(link_key, MAC_LABEL + body + bytes([status]), hashlib.sha256).digest()
    frame = b"SE\x01\x81" + struct.pack(">H", 1 + len(mac)) + bytes([status]) + mac
    return frame + struct.pack(">H", crc16(frame))


def next_request(buf):
    """(body or None, bytes consumed) for the first whole frame in buf;
    (None, 0) while a frame is still arriving."""
    start = buf.find(b"SE\x01\x01")
    if start < 0:
        return None, max(0, len(buf) - 3)
    if len(buf) < start + 6:
        return None, start
    n = struct.unpack(">H", buf[start + 4 : start + 6])[0]
    if n > BODY_MAX:
        return None, start + 1  # not a frame start: look further
    end = start + 6 + n + 2
    if len(buf) < end:
        return None, start
    if struct.unpack(">H", buf[end - 2 : end])[0] != crc16(buf[start : end - 2]):
        print("se: request with a bad CRC: no answer", flush=True)
        return None, end
    return buf[start + 6 : end - 2], end


def serve(sock, slots, link_key, forge, garble):
    buf = b""
    while True:
        data = sock.recv(4096)
        if not data:
            return
        buf += data
        while True:
            body, used = next_request(buf)
            buf = buf[used:]
            if body is None:
                break
            status, why = judge(slots, body)
            key = link_key
            if forge:
                status, why, key = VALID, why + " (forged: valid, wrong MAC key)", b"attacker without the key"
            out = answer(key, body, status)
            if garble:
                out = out[:10] + bytes([out[10] ^ 0x01]) + out[11:]
                why += " (garbled)"
            print("se: " + why, flush=True)
            sock.sendall(out)
            if used == 0:
                break


def main():
    ap = argparse.ArgumentParser(description="secure element model on the sensor node's UART2")
    ap.add_argument("socket")
    ap.add_argument("--slot", action="append", default=[], metavar="N=KEY.der")
    ap.add_argument("--link-key", default=DEV_LINK_KEY, help="64 hex digits (make SE_LINK_KEY=)")
    ap.add_argument("--forge", action="store_true")
    ap.add_argument("--garble", action="store_true")
    a = ap.parse_args()
    slots = {}
    for spec in a.slot:
        n, _, path = spec.partition("=")
        with open(path, "rb") as f:
            slots[int(n)] = serialization.load_der_public_key(f.read())
    link_key = bytes.fromhex(a.link_key)
    if len(link_key) != 32:
        print("se_model.py: --link-key must be 32 bytes (64 hex digits)", file=sys.stderr)
        return 2
    sock = connect_uart(a.socket)
    try:
        serve(sock, slots, link_key, a.forge, a.garble)
    except (ConnectionResetError, BrokenPipeError):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
