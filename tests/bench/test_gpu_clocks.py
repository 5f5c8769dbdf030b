"""The bench's clock log: nvidia-smi's samples (its CSV format, read back), each run's window, and the sampler's
process. No GPU here: the sampler runs an executable named nvidia-smi from PATH, so a stand-in script that
prints lines in nvidia-smi's format checks the process handling; the parsing runs on text of that format."""

from __future__ import annotations

import json
import os
import stat
import time
from datetime import datetime

import pytest

from emolab.bench.gpu_clocks import QUERY, ClockLog, annotate, clock_lines, parse_samples, summarize_window


def stamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch).strftime("%Y/%m/%d %H:%M:%S.%f")[:-3]  # nvidia-smi's millisecond form


def test_samples_parse_and_each_run_gets_its_own_window():
    t0 = 1_800_000_000.0
    text = "\n".join([
        f"{stamp(t0)}, 0, 1980, 350.10, 700.00",
        f"{stamp(t0 + 0.5)}, 0, 1755, 694.20, 700.00",
        "garbage line",
        f"{stamp(t0 + 1.0)}, 0, 1710, 691.00, 700.00",
        f"{stamp(t0 + 1.5)}, 0, 1890, [N/A], 700.00",  # a field the card does not report
        f"{stamp(t0 + 2.0)}, 0, 1920, 600.00, 700.00",
    ])
    samples = parse_samples(text)
    assert len(samples) == 5 and samples[0][1:] == (0, 1980.0, 350.1, 700.0)
    assert samples[1][0] == pytest.approx(t0 + 0.5, abs=1e-3)
    window = summarize_window(samples, t0 + 0.4, t0 + 1.6)
    assert window == {"gpu_sm_mhz": pytest.approx((1755 + 1710 + 1890) / 3, abs=0.05),
                      "gpu_power_w": pytest.approx((694.2 + 691.0) / 2, abs=0.05), "gpu_power_limit_w": 700.0,
                      "gpu_samples": 3, "gpus": 1}
    assert summarize_window(samples, t0 + 10, t0 + 20) is None  # no samples: nothing claimed
    runs = [{"label": "emolab", "scenario": "mixed", "agents": 256, "tok_per_s": 14186.4,
             "started_at": t0 + 0.4, "ended_at": t0 + 1.6},
            {"label": "emolab", "scenario": "none", "agents": 256, "tok_per_s": 14790.6,
             "started_at": t0 + 30, "ended_at": t0 + 40},
            {"label": "emolab", "scenario": "none", "agents": 256, "tok_per_s": 1.0}]  # a run with no window
    assert annotate(runs, samples) == 1
    assert runs[0]["gpu_sm_mhz"] == pytest.approx(1785.0, abs=0.05) and "gpu_sm_mhz" not in runs[1]
    assert clock_lines(runs) == ["  emolab mixed N=256: 14186.4 tok/s, SM 1785 MHz, 693 of 700 W"]


def test_without_nvidia_smi_nothing_is_sampled(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi on it
    with ClockLog(tmp_path / "clocks.csv") as log:
        pass
    assert log.samples() == [] and not (tmp_path / "clocks.csv").exists()


def test_the_sampler_runs_nvidia_smi_and_stops_it(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    args_file = tmp_path / "args.json"
    fake = bin_dir / "nvidia-smi"
    fake.write_text(f"""#!/usr/bin/env python3
import json, sys, time
from datetime import datetime
json.dump(sys.argv[1:], open({str(args_file)!r}, "w"))
while True:
    now = datetime.now().strftime("%Y/%m/%d %H:%M:%S.%f")[:-3]
    print(f"{{now}}, 0, 1830, 690.50, 700.00", flush=True)
    time.sleep(0.05)
""")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    start = time.time()
    with ClockLog(tmp_path / "logs" / "clocks.csv", interval_ms=50) as log:
        time.sleep(1.0)
    end = time.time()
    assert log._proc is not None and log._proc.returncode is not None  # stopped on leaving
    assert json.loads(args_file.read_text()) == [f"--query-gpu={QUERY}", "--format=csv,noheader,nounits",
                                                   "--loop-ms=50"]
    samples = log.samples()
    assert len(samples) >= 5 and all(s[2] == 1830.0 for s in samples)
    assert summarize_window(samples, start, end)["gpu_power_w"] == 690.5
