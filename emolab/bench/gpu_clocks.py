"""The card's clocks and power during each bench run, from ``nvidia-smi`` sampled in the background.

A GPU held at its power limit sets its clock by the power each cycle draws, and that depends on the data: on
dummy weights the unsteered model writes one token again and again, steered requests write other tokens, and
the card may clock lower for the same work. A throughput ratio read without the clocks beside it can blame the
steering for the card's power budget. ``ClockLog`` samples ``nvidia-smi --query-gpu`` twice a second into a
file while the bench runs; ``annotate`` adds to each run the mean SM clock, power draw and power limit over the
run's wall-clock window (``started_at`` .. ``ended_at``). Where ``nvidia-smi`` is absent (CPU) nothing is
sampled and the runs stay as they are.
"""

from __future__ import annotations

import shutil
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = ["QUERY", "ClockLog", "ClockSample", "annotate", "clock_lines", "parse_samples", "summarize_window"]

QUERY = "timestamp,index,clocks.sm,power.draw,power.limit"
ClockSample = tuple[float, int, float, float, float]  # epoch seconds, GPU index, SM MHz, watts drawn, watt limit


def _number(text: str) -> float:
    try:
        return float(text.strip().split()[0])
    except (ValueError, IndexError):
        return float("nan")  # "[N/A]", "[Not Supported]"


def parse_samples(text: str) -> list[ClockSample]:
    """``nvidia-smi --query-gpu=QUERY --format=csv,noheader,nounits`` lines as samples; other lines are skipped."""
    samples = []
    for line in text.splitlines():
        parts = line.split(",")
        if len(parts) != 5:
            continue
        try:
            when = datetime.strptime(parts[0].strip(), "%Y/%m/%d %H:%M:%S.%f").timestamp()  # the host's local time
            index = int(parts[1])
        except ValueError:
            continue
        samples.append((when, index, _number(parts[2]), _number(parts[3]), _number(parts[4])))
    return samples


def summarize_window(samples: list[ClockSample], start: float, end: float) -> dict[str, Any] | None:
    """Mean SM clock, power and power limit over [start, end] (all GPUs), or None with fewer than 2 samples."""
    inside = [s for s in samples if start <= s[0] <= end]
    if len(inside) < 2:
        return None

    def mean(column: int) -> float | None:
        values = [s[column] for s in inside if s[column] == s[column]]  # NaN != NaN: unsupported fields drop
        return round(sum(values) / len(values), 1) if values else None

    return {"gpu_sm_mhz": mean(2), "gpu_power_w": mean(3), "gpu_power_limit_w": mean(4),
            "gpu_samples": len(inside), "gpus": len({s[1] for s in inside})}


def annotate(runs: list[dict[str, Any]], samples: list[ClockSample]) -> int:
    """Add the clock fields to every run whose window holds samples; how many runs got them."""
    done = 0
    for run in runs:
        start, end = run.get("started_at"), run.get("ended_at")
        if start and end and (window := summarize_window(samples, start, end)):
            run.update(window)
            done += 1
    return done


def clock_lines(runs: list[dict[str, Any]]) -> list[str]:
    """One line per run that has clocks: label, scenario, N, tok/s, mean SM clock, power of its limit."""
    lines = []
    for run in runs:
        if run.get("gpu_sm_mhz") is None:
            continue
        power = (f"{run['gpu_power_w']:.0f} of {run['gpu_power_limit_w']:.0f} W"
                 if run.get("gpu_power_w") is not None and run.get("gpu_power_limit_w") else "power unknown")
        lines.append(f"  {run.get('label', '')} {run['scenario']} N={run['agents']}: {run['tok_per_s']:.1f} tok/s, "
                     f"SM {run['gpu_sm_mhz']:.0f} MHz, {power}")
    return lines


class ClockLog:
    """``with ClockLog(path) as log: ...; log.samples()``: ``nvidia-smi`` sampling to ``path`` while inside."""

    def __init__(self, path: str | Path, interval_ms: int = 500, executable: str = "nvidia-smi") -> None:
        self.path = Path(path)
        self.interval_ms = interval_ms
        self.executable = shutil.which(executable)
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ClockLog:
        if self.executable:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "wb") as out:
                self._proc = subprocess.Popen(
                    [self.executable, f"--query-gpu={QUERY}", "--format=csv,noheader,nounits",
                     f"--loop-ms={self.interval_ms}"], stdout=out, stderr=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def samples(self) -> list[ClockSample]:
        if self._proc is None or not self.path.exists():
            return []
        return parse_samples(self.path.read_text(errors="replace"))
