"""power.py - the QEMU rig's simulated power meter.

QEMU draws no current, so this is a MODEL, not a measurement: the firmware
counts, per SysTick millisecond, whether its core was asleep in WFI or
running, how often it woke from WFI and how many samples it took ("p" on
the UART: "POWER ms=N active=N wakeups=N samples=N", counted since boot),
and this meter turns the counters of each interval into an average current
with the board constants below.  It catches what the firmware decides
(sleeping or not, how often it wakes, how much it samples), not what the
silicon would draw; a real rig writes the same report from a real meter.

Per interval of `ms` firmware milliseconds:

    charge (uC) = active_ms * RUN_MA + (ms - active_ms) * SLEEP_MA
                  + wakeups * WAKE_US / 1000 * (RUN_MA - SLEEP_MA)
                  + samples * SAMPLE_UC
    current (mA) = charge / ms

The report (docs/stages.md, "Power"), written as JSON:

    {"format": "otacd-power/1", "board": B, "source": TEXT, "voltage_v": V,
     "samples": [{"t_ms": T, "ms": D, "current_ma": I, "cycles": N}, ...]}

one sample per interval; cycles is the number of measurement cycles (here:
sensor samples) in it.
"""

import json
import os
import re
import time

VOLTAGE_V = 3.3
# Board constants of the model: a Cortex-M3 and a Cortex-M4F at the mps2
# boards' 25 MHz, typical datasheet figures for such parts (run current
# from flash with peripherals clocked, WFI sleep with clocks running), plus
# the cost of waking and of one sensor conversion.
BOARDS = {
    "mps2-an385": {"core": "Cortex-M3", "run_ma": 6.0, "sleep_ma": 0.8, "wake_us": 15.0, "sample_uc": 1.0},
    "mps2-an386": {"core": "Cortex-M4F", "run_ma": 7.5, "sleep_ma": 0.9, "wake_us": 12.0, "sample_uc": 1.0},
}
POWER_RE = re.compile(r"^POWER ms=(\d+) active=(\d+) wakeups=(\d+) samples=(\d+)$")


class MeterError(Exception):
    pass


def read_counters(rig, deadline):
    """Ask the firmware for its counters: (ms, active, wakeups, samples)."""
    rig.send("p\n")
    while True:
        line = rig.readline(deadline)
        if line is None:
            raise MeterError("no POWER line in answer to 'p' before the deadline")
        m = POWER_RE.match(line)
        if m:
            return tuple(int(g) for g in m.groups())


def interval_current(board, a, b):
    """(ms, current_ma, cycles) between two counter readings a and b."""
    k = BOARDS[board]
    ms, active, wakeups, samples = (y - x for x, y in zip(a, b))
    if ms <= 0 or active < 0 or active > ms or wakeups < 0 or samples < 0:
        raise MeterError("counters went backwards or do not add up: %s then %s" % (a, b))
    charge = (active * k["run_ma"] + (ms - active) * k["sleep_ma"]
              + wakeups * k["wake_us"] / 1000.0 * (k["run_ma"] - k["sleep_ma"]) + samples * k["sample_uc"])
    return ms, charge / ms, samples


def measure(rig, board, intervals, interval_s, deadline):
    """Sample the firmware's counters; the report as a dict."""
    if board not in BOARDS:
        raise MeterError("no power model for board %s (known: %s)" % (board, ", ".join(sorted(BOARDS))))
    first = prev = read_counters(rig, deadline)
    samples = []
    for _ in range(intervals):
        time.sleep(interval_s)
        cur = read_counters(rig, deadline)
        ms, current, cycles = interval_current(board, prev, cur)
        samples.append({"t_ms": prev[0] - first[0], "ms": ms, "current_ma": round(current, 4), "cycles": cycles})
        prev = cur
    k = BOARDS[board]
    source = ("model: qemu rig, %s at %.1f V; run %.1f mA, WFI sleep %.1f mA, wake-up %g us, %g uC per sample"
              % (k["core"], VOLTAGE_V, k["run_ma"], k["sleep_ma"], k["wake_us"], k["sample_uc"]))
    return {"format": "otacd-power/1", "board": board, "source": source, "voltage_v": VOLTAGE_V,
            "samples": samples}


def summary(report):
    """One line for the log: average, lowest interval, energy per cycle."""
    s = report["samples"]
    total_ms = sum(x["ms"] for x in s)
    charge = sum(x["ms"] * x["current_ma"] for x in s)
    cycles = sum(x["cycles"] for x in s)
    return ("power (model): %d intervals, %d ms, average %.3f mA, lowest interval %.3f mA, %.1f uJ per cycle"
            % (len(s), total_ms, charge / total_ms, min(x["current_ma"] for x in s),
               report["voltage_v"] * charge / cycles if cycles else float("nan")))


def write(path, report):
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
