#!/usr/bin/env python3
"""hil.py - hardware-in-the-loop test of a sensor-node image on an emulated rig.

Usage: hil.py IMAGE.elf BOARD [OUT.xml [POWER.json]]   (normally through hil/run.sh)

Boots IMAGE in `qemu-system-arm -M BOARD` with UART0 on qemu's stdin/stdout
(pipes, so nothing depends on a terminal), echoes every UART line to stdout
as "uart| ...", and checks, one JUnit testcase each:

  boots_and_reports_version   the first line is "sensor-node VERSION
                              counter=COUNTER board=BOARD" with the expected
                              values
  sends_crc_valid_frames      at least 3 "FRAME <hex>" lines before the
                              self-test result, each a well-formed frame whose
                              CRC-16/CCITT-FALSE this script recomputes, with
                              sample numbers counting up
  passes_selftest             the line "SELFTEST PASS"
  answers_version_command     "v\\n" on the UART brings the version line back
  answers_sample_command      "s\\n" brings a valid frame with a newer sample
                              (the firmware kept sampling after boot)

then, in the same boot, the conformance suite of the framed commands
(conformance.py: one testcase per case, suite "conformance.BOARD") and,
when POWER.json is given, the simulated power meter (power.py: testcase
power_counters_are_reported; the report goes to POWER.json).

The expected version and counter come from $HIL_EXPECT_VERSION and
$HIL_EXPECT_COUNTER, else from `make -s print-version` / `print-counter` in
the example (the same rules the build used, including a vX.Y.Z tag in
$OTACD_REF).  The whole run has one deadline, $HIL_TIMEOUT seconds (default
30); a firmware that hangs fails the boot checks when it passes, and the
command checks are then reported as skipped.  A rig problem (qemu missing,
qemu exiting by itself) is a JUnit <error>, a firmware misbehaviour a
<failure>.  qemu is always killed before exit, also on SIGTERM/SIGINT.

Exit status: 0 all checks passed, 1 a check failed or errored, 2 bad usage.
"""

import hashlib
import os
import select
import signal
import subprocess
import sys
import time
from xml.sax.saxutils import escape, quoteattr

sys.dont_write_bytecode = True  # no __pycache__ in the firmware's tree
import conformance  # noqa: E402  (after the line above)
import power
from hil_common import decode_frame, FRAME_RE, VERSION_RE

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.dirname(HERE)
MIN_BOOT_FRAMES = 3


class Interrupted(Exception):
    pass


def expected(name, env_var):
    """The expected version/counter: the environment, else the Makefile."""
    if os.environ.get(env_var):
        return os.environ[env_var]
    try:
        out = subprocess.run(["make", "-s", "--no-print-directory", "-C", EXAMPLE, "print-" + name],
                             capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


class Check:
    """One JUnit testcase; its time runs from the previous decision to its own."""
    last_decision = None

    def __init__(self, name):
        self.name = name
        self.status = None  # None (not decided), "pass", "failure", "error", "skipped"
        self.message = ""
        self.seconds = 0.0

    def decide(self, status, message, started):
        if self.status is None:
            now = time.monotonic()
            since = max(started, Check.last_decision or started)
            self.status, self.message = status, message
            self.seconds = now - since
            Check.last_decision = now


class Rig:
    """qemu with the UART on pipes; lines() yields UART lines until a deadline."""

    def __init__(self, qemu, board, image):
        self.proc = subprocess.Popen(
            [qemu, "-M", board, "-nographic", "-monitor", "none", "-serial", "stdio", "-kernel", image],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.buf = b""
        self.stderr = b""
        self.inputs = [self.proc.stdout, self.proc.stderr]
        self.transcript = []

    def send(self, text):
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def readline(self, deadline):
        """The next UART line (without CR/LF), or None at the deadline; raises
        EOFError when qemu has exited."""
        while True:
            if b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                text = line.decode("latin-1").rstrip("\r")
                self.transcript.append(text)
                print("uart| " + text, flush=True)
                return text
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select(self.inputs, [], [], left)
            for f in ready:
                chunk = os.read(f.fileno(), 4096)
                if f is self.proc.stderr:
                    self.stderr += chunk
                    if not chunk:
                        self.inputs.remove(f)
                elif chunk:
                    self.buf += chunk
                else:
                    raise EOFError()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except OSError:
                pass


def run_checks(rig, checks, board, want_version, want_counter, deadline, started):
    boot, frames, selftest, cmd_v, cmd_s = checks
    version_line = None
    seqs = []

    # boot: version line, frames, self-test result, READY
    while True:
        line = rig.readline(deadline)
        if line is None:
            break
        if not line.strip() or line.startswith("build-stamp="):
            continue
        if version_line is None:
            version_line = line
            m = VERSION_RE.match(line)
            if not m:
                boot.decide("failure", "first UART line is %r, not 'sensor-node VERSION counter=N board=BOARD'" % line, started)
            else:
                problems = []
                if want_version and m.group(1) != want_version:
                    problems.append("version %s, expected %s" % (m.group(1), want_version))
                if want_counter and m.group(2) != want_counter:
                    problems.append("counter %s, expected %s" % (m.group(2), want_counter))
                if m.group(3) != board:
                    problems.append("board %s, expected %s" % (m.group(3), board))
                boot.decide("failure" if problems else "pass",
                            "; ".join(problems) or line, started)
            continue
        fm = FRAME_RE.match(line)
        if fm:
            try:
                seq, _ = decode_frame(fm.group(1))
                if seqs and seq <= seqs[-1]:
                    raise ValueError("sample %d after sample %d" % (seq, seqs[-1]))
                seqs.append(seq)
            except ValueError as e:
                frames.decide("failure", "boot frame %d (%s): %s" % (len(seqs) + 1, fm.group(1), e), started)
            continue
        if line.startswith("SELFTEST"):
            if len(seqs) >= MIN_BOOT_FRAMES:
                frames.decide("pass", "%d valid frames, samples %s" % (len(seqs), seqs), started)
            else:
                frames.decide("failure", "%d valid frame(s) before the self-test, expected at least %d"
                              % (len(seqs), MIN_BOOT_FRAMES), started)
            selftest.decide("pass" if line == "SELFTEST PASS" else "failure", line, started)
            continue
        if line == "READY":
            break

    if selftest.status is None:  # the boot never finished
        what = "no UART output at all" if not rig.transcript else "last line %r" % rig.transcript[-1]
        limit = "within %gs" % (deadline - started)
        boot.decide("failure", "no version line %s (%s)" % (limit, what), started)
        frames.decide("failure", "%d valid frame(s) %s, expected at least %d" % (len(seqs), limit, MIN_BOOT_FRAMES), started)
        selftest.decide("failure", "no SELFTEST line %s (%s)" % (limit, what), started)
        for c in (cmd_v, cmd_s):
            c.decide("skipped", "not run: the firmware did not finish booting", started)
        return

    # commands
    t0 = time.monotonic()
    rig.send("v\n")
    while cmd_v.status is None:
        line = rig.readline(deadline)
        if line is None:
            cmd_v.decide("failure", "no reply to 'v' before the deadline", t0)
        elif VERSION_RE.match(line):
            cmd_v.decide("pass" if line == version_line else "failure",
                         "%r (boot said %r)" % (line, version_line), t0)
    t0 = time.monotonic()
    rig.send("s\n")
    while cmd_s.status is None:
        line = rig.readline(deadline)
        if line is None:
            cmd_s.decide("failure", "no reply to 's' before the deadline", t0)
            continue
        fm = FRAME_RE.match(line)
        if not fm:
            continue
        try:
            seq, value = decode_frame(fm.group(1))
            if seqs and seq <= seqs[-1]:
                raise ValueError("sample %d is not newer than the boot frames (%d): sampling stopped" % (seq, seqs[-1]))
            cmd_s.decide("pass", "sample %d, %.2f degC" % (seq, value / 100), t0)
        except ValueError as e:
            cmd_s.decide("failure", "reply to 's' (%s): %s" % (fm.group(1), e), t0)


def write_junit(path, board, image_digest, suites, transcript, qemu_stderr, total):
    """suites: [(suite name, [Check])]; the transcript goes with the first."""
    every = [c for _, checks in suites for c in checks]
    count = lambda checks, st: sum(c.status == st for c in checks)
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           '<testsuites name="hil" tests="%d" failures="%d" errors="%d" skipped="%d" time="%.3f">'
           % (len(every), count(every, "failure"), count(every, "error"), count(every, "skipped"), total)]
    for n, (suite, checks) in enumerate(suites):
        cls = quoteattr("%s.%s" % (suite, board))
        out += ['  <testsuite name=%s tests="%d" failures="%d" errors="%d" skipped="%d" time="%.3f">'
                % (cls, len(checks), count(checks, "failure"), count(checks, "error"), count(checks, "skipped"),
                   sum(c.seconds for c in checks)),
                '    <properties>',
                '      <property name="board" value=%s/>' % quoteattr(board),
                '      <property name="image.sha256" value=%s/>' % quoteattr(image_digest),
                '    </properties>']
        for c in checks:
            head = '    <testcase classname=%s name=%s time="%.3f"' % (cls, quoteattr(c.name), c.seconds)
            if c.status == "pass":
                out.append(head + "/>")
                continue
            tag = {"failure": "failure", "error": "error", "skipped": "skipped"}[c.status]
            body = "" if tag == "skipped" else escape(c.message)
            out.append(head + ">")
            out.append("      <%s message=%s>%s</%s>" % (tag, quoteattr(c.message), body, tag))
            out.append("    </testcase>")
        if n == 0:
            out.append("    <system-out>%s</system-out>" % escape("\n".join(transcript)))
            out.append("    <system-err>%s</system-err>" % escape(qemu_stderr.decode("utf-8", "replace")))
        out.append("  </testsuite>")
    out.append("</testsuites>")
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")


def run_power(rig, board, check, power_out, deadline, started):
    """The simulated power meter (power.py): the report to power_out."""
    try:
        seconds = float(os.environ.get("HIL_POWER_SECONDS", "2"))
        intervals = max(2, int(seconds * 10))
        report = power.measure(rig, board, intervals, seconds / intervals, deadline)
    except (ValueError, power.MeterError) as e:
        check.decide("failure", "power meter: %s" % e, started)
        return
    power.write(power_out, report)
    line = power.summary(report)
    print("hil: " + line, flush=True)
    check.decide("pass", line, started)


def main(argv):
    if len(argv) not in (3, 4, 5):
        print("usage: hil/run.sh IMAGE.elf BOARD [OUT.xml [POWER.json]]", file=sys.stderr)
        return 2
    image, board = argv[1], argv[2]
    out_xml = argv[3] if len(argv) >= 4 else None
    power_out = argv[4] if len(argv) == 5 else None
    try:
        timeout = float(os.environ.get("HIL_TIMEOUT", "30"))
    except ValueError:
        print("hil: HIL_TIMEOUT must be a number of seconds", file=sys.stderr)
        return 2
    qemu = os.environ.get("QEMU", "qemu-system-arm")
    checks = [Check(n) for n in ("boots_and_reports_version", "sends_crc_valid_frames", "passes_selftest",
                                 "answers_version_command", "answers_sample_command")]
    proto_checks = [Check(n) for n in conformance.names()]
    power_check = Check("power_counters_are_reported")
    extra = proto_checks + ([power_check] if power_out else [])
    want_version = expected("version", "HIL_EXPECT_VERSION")
    want_counter = expected("counter", "HIL_EXPECT_COUNTER")
    print("hil: %s on %s, expecting version %s counter %s, deadline %gs"
          % (image, board, want_version or "(any)", want_counter or "(any)", timeout), flush=True)

    def on_signal(signum, _frame):
        raise Interrupted(signal.Signals(signum).name)

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)

    started = time.monotonic()
    rig = None
    digest = ""
    try:
        with open(image, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        rig = Rig(qemu, board, image)
        run_checks(rig, checks, board, want_version, want_counter, started + timeout, started)
        if checks[-1].status == "skipped":
            for c in extra:
                c.decide("skipped", "not run: the firmware did not finish booting", started)
        else:
            conformance.run(rig, proto_checks, started + timeout, started)
            if power_out:
                run_power(rig, board, power_check, power_out, started + timeout, started)
    except OSError as e:
        for c in checks + extra:
            c.decide("error", "rig error: %s" % e, started)
    except EOFError:
        rig.proc.wait()
        msg = "qemu exited (status %s): %s" % (rig.proc.returncode,
                                               rig.stderr.decode("utf-8", "replace").strip() or "no message")
        for c in checks + extra:
            c.decide("error", msg, started)
    except Interrupted as e:
        for c in checks + extra:
            c.decide("error", "interrupted by %s" % e, started)
    finally:
        if rig:
            rig.stop()
    total = time.monotonic() - started

    for c in checks + extra:
        print("hil: %-7s %s%s" % ("ok" if c.status == "pass" else c.status.upper(), c.name,
                                  "" if c.status == "pass" else ": " + c.message), flush=True)
    bad = sum(c.status in ("failure", "error") for c in checks + extra)
    print("hil: %d checks, %d failed, %.2fs" % (len(checks + extra), bad, total), flush=True)
    if out_xml:
        write_junit(out_xml, board, digest, [("hil", checks), ("conformance", extra)],
                    rig.transcript if rig else [], rig.stderr if rig else b"", total)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
