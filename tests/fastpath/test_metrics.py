"""Steering metrics on /metrics: workers publish through shared memory, the middleware renders them."""

from __future__ import annotations

import os
import subprocess
import sys

from emolab.bench.soak import parse_emolab_metrics
from emolab.fastpath.metrics import FrontEndCounters, WorkerCounters, read_worker_counters, render_prometheus


def test_worker_counters_round_trip_through_the_metrics_folder(tmp_path):
    counters = WorkerCounters(tmp_path)
    counters.publish(active_rows=3, active_steered_requests=5, steered_requests_total=17, invalid_steering_total=1,
                     rows_exhausted_total=0)
    (worker,) = read_worker_counters(tmp_path)
    assert worker["pid"] == os.getpid()
    assert (worker["active_rows"], worker["active_steered_requests"], worker["steered_requests_total"]) == (3, 5, 17)
    counters.publish(active_rows=0, active_steered_requests=0, steered_requests_total=18, invalid_steering_total=1,
                     rows_exhausted_total=2)
    assert read_worker_counters(tmp_path)[0]["rows_exhausted_total"] == 2


def test_files_of_finished_workers_are_ignored(tmp_path):
    code = (f"from emolab.fastpath.metrics import WorkerCounters as W; W({str(tmp_path)!r}).publish(active_rows=9, "
            "active_steered_requests=9, steered_requests_total=9, invalid_steering_total=0, rows_exhausted_total=0)")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert len(list(tmp_path.glob("worker-*.i64"))) == 1
    assert read_worker_counters(tmp_path) == []  # that process is gone


def test_inert_without_a_metrics_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("EMOLAB_METRICS_DIR", raising=False)
    WorkerCounters().publish(active_rows=1, active_steered_requests=1, steered_requests_total=1,
                             invalid_steering_total=0, rows_exhausted_total=0)  # nothing to write, no error
    assert read_worker_counters(tmp_path) == []


def test_rendered_lines_parse_back_and_sum_over_workers():
    front = FrontEndCounters(http_requests_in_flight=2, steered_http_requests_in_flight=1,
                             steered_http_requests_total=40, refused_requests_total=3)
    workers = [{"pid": 11, "active_rows": 2, "active_steered_requests": 3, "steered_requests_total": 20,
                "invalid_steering_total": 0, "rows_exhausted_total": 0, "updated_unix_ms": 0},
               {"pid": 12, "active_rows": 2, "active_steered_requests": 3, "steered_requests_total": 20,
                "invalid_steering_total": 0, "rows_exhausted_total": 1, "updated_unix_ms": 0}]
    text = render_prometheus(front, workers)
    assert '# TYPE emolab_worker_active_rows gauge' in text and 'emolab_worker_active_rows{pid="12"} 2' in text
    parsed = parse_emolab_metrics("vllm:num_requests_running 4\n" + text)
    assert parsed["emolab_worker_active_rows"] == 4 and parsed["emolab_worker_rows_exhausted_total"] == 1
    assert parsed["emolab_http_requests_in_flight"] == 2 and parsed["emolab_refused_requests_total"] == 3
    assert not any(name.startswith("vllm") for name in parsed)


def test_counters_create_a_metrics_folder_named_by_hand(tmp_path):
    """``$EMOLAB_METRICS_DIR`` may name a folder that does not exist yet: workers and API servers create it."""
    from emolab.fastpath.metrics import ApiServerCounters, read_api_server_counters

    folder = tmp_path / "not" / "there"
    WorkerCounters(folder)
    counters = ApiServerCounters(folder)
    counters.values[1] = 3
    assert (folder / f"worker-{os.getpid()}.i64").is_file()
    assert [row["http_requests_total"] for row in read_api_server_counters(folder)] == [3]
