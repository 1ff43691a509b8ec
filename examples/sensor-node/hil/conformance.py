"""conformance.py - conformance suite of sensor-node's framed UART commands.

Run by hil.py on a booted rig, after the boot checks; one JUnit testcase
per case, in the suite "conformance.BOARD".  The protocol is the one
src/proto.h describes: a line "C " + the hex of a frame (A5 | LEN | CMD SEQ
ARGS | CRC-16/CCITT-FALSE over LEN and payload, big-endian), answered by
"ACK SS CC" or "NAK SS REASON".  The cases send well-formed frames, frames
with a bad CRC, sync byte, length or payload, truncated and oversized frames,
an overlong line, non-hex text, and commands out of order (before HELLO,
repeated, skipped), and check the exact answer; after every refusal the
next good command must still be accepted (the firmware resynchronizes and
its session state did not change).

Order matters: the cases share one boot, so the first one runs before any
HELLO, and SEQ numbers follow from case to case.
"""

import re

from hil_common import crc16_ccitt, decode_frame, FRAME_RE

HELLO, PING, SAMPLE = 0x01, 0x02, 0x03
REPLY_RE = re.compile(r"^(ACK|NAK) (\S\S) (\S+)$")
OVERSIZED_LINE_CHARS = 200  # the firmware's line buffer holds 95


def frame(payload, length=None, sync=0xA5, crc_xor=0):
    """The bytes of a frame around payload; length overrides LEN (the CRC
    covers the LEN written), crc_xor corrupts the CRC."""
    n = len(payload) if length is None else length
    body = bytes([n & 0xFF]) + bytes(payload)
    crc = crc16_ccitt(body) ^ crc_xor
    return bytes([sync]) + body + bytes([crc >> 8, crc & 0xFF])


def command(cmd, seq, **kw):
    return "C " + frame(bytes([cmd, seq & 0xFF]), **kw).hex().upper()


def ack(seq, cmd):
    return "ACK %02X %02X" % (seq & 0xFF, cmd)


def nak(seq, reason):
    return "NAK %s %s" % ("--" if seq is None else "%02X" % (seq & 0xFF), reason)


def cases():
    """(name, [(line to send, expected reply), ...]) in the order they run."""
    s = 0x40  # the session's first SEQ
    return [
        ("command_before_hello_is_refused", [(command(PING, 7), nak(7, "session"))]),
        ("hello_opens_a_session", [(command(HELLO, s), ack(s, HELLO))]),
        ("ping_in_sequence_is_acknowledged", [(command(PING, s + 1), ack(s + 1, PING))]),
        ("sample_is_acknowledged_with_a_crc_valid_frame", [(command(SAMPLE, s + 2), ack(s + 2, SAMPLE))]),
        ("bad_crc_is_refused_and_changes_nothing",
         [(command(PING, s + 3, crc_xor=0x0001), nak(None, "crc")), (command(PING, s + 3), ack(s + 3, PING))]),
        ("bad_sync_byte_is_refused", [(command(PING, s + 4, sync=0x5A), nak(None, "sync"))]),
        ("truncated_frame_is_refused", [(command(PING, s + 4)[:-2], nak(None, "short"))]),
        ("frame_shorter_than_a_header_is_refused", [("C A501", nak(None, "short"))]),
        ("bytes_after_the_crc_are_refused", [(command(PING, s + 4) + "00", nak(None, "len"))]),
        ("length_above_the_maximum_is_refused",
         [("C " + frame(bytes([PING, s + 4]) + bytes(31)).hex().upper(), nak(None, "len"))]),
        ("frame_larger_than_any_frame_is_refused", [("C " + "A5" * 40, nak(None, "len"))]),
        ("overlong_line_is_refused_whole", [("C " + "A" * OVERSIZED_LINE_CHARS, nak(None, "oversized")),
                                            (command(PING, s + 4), ack(s + 4, PING))]),
        ("non_hex_text_is_refused", [("C A5ZZ", nak(None, "hex")), ("C A50", nak(None, "hex"))]),
        ("payload_without_seq_is_refused", [("C " + frame(bytes([PING])).hex().upper(), nak(None, "payload"))]),
        ("unknown_command_is_refused", [(command(0x7F, s + 5), nak(s + 5, "cmd"))]),
        ("repeated_seq_is_refused_not_run_twice", [(command(PING, s + 4), nak(s + 4, "order"))]),
        ("skipped_seq_is_refused", [(command(PING, s + 7), nak(s + 7, "order")),
                                    (command(PING, s + 5), ack(s + 5, PING))]),
        ("seq_wraps_after_ff", [(command(HELLO, 0xFE), ack(0xFE, HELLO)), (command(PING, 0xFF), ack(0xFF, PING)),
                                (command(PING, 0x00), ack(0x00, PING))]),
        ("hello_resynchronizes_the_session", [(command(HELLO, 0x20), ack(0x20, HELLO)),
                                              (command(SAMPLE, 0x21), ack(0x21, SAMPLE))]),
    ]


def next_reply(rig, deadline):
    """The next ACK/NAK line (other lines are skipped), or None at the deadline."""
    while True:
        line = rig.readline(deadline)
        if line is None or REPLY_RE.match(line):
            return line


def next_frame(rig, deadline):
    while True:
        line = rig.readline(deadline)
        if line is None:
            return None
        m = FRAME_RE.match(line)
        if m:
            return m.group(1)


def run_case(rig, steps, deadline):
    """None when every step got its answer, else what went wrong."""
    for sent, want in steps:
        rig.send(sent + "\n")
        got = next_reply(rig, deadline)
        if got is None:
            return "no answer to %r before the deadline (expected %r)" % (sent[:60], want)
        if got != want:
            return "sent %r: answered %r, expected %r" % (sent[:60], got, want)
        if want.startswith("ACK") and want.endswith(" %02X" % SAMPLE):
            hexframe = next_frame(rig, deadline)
            if hexframe is None:
                return "no FRAME after %r" % got
            try:
                decode_frame(hexframe)
            except ValueError as e:
                return "FRAME after %r: %s" % (got, e)
    return None


def run(rig, checks, deadline, started):
    """Decide each Check of checks (made from names()) in order."""
    for check, (name, steps) in zip(checks, cases()):
        assert check.name == name
        problem = run_case(rig, steps, deadline)
        check.decide("failure" if problem else "pass", problem or "%d exchange(s) as specified" % len(steps), started)


def names():
    return [name for name, _ in cases()]
