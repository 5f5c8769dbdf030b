"""``emolab soak``: the verdict's arithmetic, and a 60-second soak against the real CPU vLLM backend."""

from __future__ import annotations

import json

import pytest

from emolab.bench.soak import SoakConfig, _windows, check_soak


def report(samples, windows, errors=0, five_xx=0, load_ended=60.0):
    return {"samples": samples, "windows": windows, "errors": errors, "five_xx": five_xx, "load_ended_s": load_ended}


def sample(t, rss=100.0, rows=1.0, in_flight=2.0, gpu=None):
    return {"t_s": t, "rss_mib": rss, "gpu_mib": gpu, "active_rows": rows, "in_flight": in_flight}


def window(start, speed):
    return {"start_s": start, "tok_per_s": 10 * speed, "stream_tok_per_s_median": speed, "streams": 5}


CONFIG = SoakConfig(base_url="http://x", window_s=20.0)


def test_a_clean_soak_passes_and_each_failure_is_named():
    samples = [sample(t) for t in (5, 25, 45)] + [sample(61, rows=0.0, in_flight=0.0)]
    windows = [window(0, 9.0), window(20, 10.0), window(40, 9.8)]
    verdict = check_soak(report(samples, windows), CONFIG)
    assert verdict["ok"] and verdict["checks"]["no_slowdown"]["stream_tok_per_s_last_over_second"] == 0.98
    assert verdict["checks"]["gpu_memory_flat"]["ok"] is None  # not sampled (no GPU) is not a failure

    slow = check_soak(report(samples, [window(0, 9.0), window(20, 10.0), window(40, 9.6)]), CONFIG)
    assert not slow["ok"] and slow["checks"]["no_slowdown"]["ok"] is False
    leak = check_soak(report([sample(25), sample(35), sample(45, rss=108.0)] + samples[-1:], windows), CONFIG)
    assert leak["checks"]["rss_flat"]["ok"] is False
    stuck = check_soak(report(samples[:-1] + [sample(61, rows=1.0, in_flight=0.0)], windows), CONFIG)
    assert stuck["checks"]["rows_back_to_zero"]["ok"] is False
    assert check_soak(report(samples, windows, five_xx=1, errors=1), CONFIG)["checks"]["no_5xx"]["ok"] is False


def test_warm_up_samples_are_not_judged():
    samples = [sample(2, rss=80.0), sample(25), sample(45), sample(61, rows=0.0, in_flight=0.0)]
    windows = [window(0, 9.0), window(20, 10.0), window(40, 10.0)]
    assert check_soak(report(samples, windows), CONFIG)["checks"]["rss_flat"]["ok"] is True


def test_windows_count_tokens_and_stream_speeds():
    tokens = [(1.0, 1), (2.0, 1), (21.0, 1), (59.0, 1), (61.0, 1)]
    streams = [(10.0, 4.0), (15.0, 6.0), (30.0, 8.0)]
    rows = _windows(tokens, streams, 20.0, load_ended=60.0)
    assert [r["tok_per_s"] for r in rows] == [0.1, 0.05, 0.05]
    assert [r["stream_tok_per_s_median"] for r in rows] == [5.0, 8.0, None]


@pytest.mark.slow
@pytest.mark.vllm
def test_a_sixty_second_soak_on_cpu_vllm_passes(tmp_path, smollm2_path, smollm2_bundle_path):
    pytest.importorskip("vllm")
    from emolab.cli import main

    out = tmp_path / "soak.json"
    code = main(["soak", "--serve-model", str(smollm2_path), "--serve-vectors", str(smollm2_bundle_path),
                 "--model", "smollm2", "--dtype", "float32", "--max-model-len", "1024", "--server-arg=--enforce-eager",
                 "--agents", "6", "--duration", "60", "--window", "20", "--sample-every", "5", "--max-tokens", "32",
                 "--output", str(out), "--log-dir", str(tmp_path / "logs")])
    result = json.loads(out.read_text())
    checks = result["verdict"]["checks"]
    assert checks["no_errors"]["ok"] and checks["no_5xx"]["ok"], result["error_messages"]
    assert checks["rss_flat"]["ok"] and checks["rows_back_to_zero"]["ok"], checks
    assert result["disconnects"] > 0 and result["requests"] > result["disconnects"]
    assert max(s["active_rows"] or 0 for s in result["samples"]) > 0  # steering rows were really in use
    # The 3% speed judgement needs a quiet machine; CI's 2 shared cores are not one. Measured on them:
    # a fixed torch loop with nothing else running swings 622-818 iterations/s between 20-s windows
    # (adjacent windows down to 0.79x), and 60-s soaks here gave last/second 0.86-1.07 on unchanged code.
    # So on CPU the ratio must be computed and reported, and a gross drift (what a per-step leak would
    # make) still fails; the 0.97 judgement itself is carried by the 10-minute GPU soak (docs/scale-out.md).
    speed = checks["no_slowdown"]
    assert speed["ok"] is not None and speed["stream_tok_per_s_last_over_second"] > 0.6, speed
    assert code == (0 if result["verdict"]["ok"] else 1)  # the exit code is the verdict
