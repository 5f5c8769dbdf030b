"""Steering metrics for operators, on vLLM's own ``/metrics`` (Prometheus text format).

The numbers live where the work happens: each worker's ``BatchSteering`` knows its active rows and
steered requests; the API server knows the HTTP requests it admitted. Workers are other processes,
so each worker publishes a handful of counters in a small memory-mapped file under
``$EMOLAB_METRICS_DIR`` (set per server by ``emolab serve``): writing is a store into shared memory,
no syscall, no lock, nothing on the GPU. The middleware appends them (and its own counters) to the
``/metrics`` response, one sample per worker (label ``pid``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["METRICS_DIR_ENV", "WORKER_FIELDS", "FrontEndCounters", "WorkerCounters", "read_worker_counters",
           "render_prometheus"]

METRICS_DIR_ENV = "EMOLAB_METRICS_DIR"
# One int64 slot each, in this order, in every worker's file.
WORKER_FIELDS = ("pid", "active_rows", "active_steered_requests", "steered_requests_total",
                 "invalid_steering_total", "rows_exhausted_total", "updated_unix_ms")
_HELP = {
    "active_rows": ("gauge", "distinct steerings (coefficient rows) in use in the worker's batch buffers"),
    "active_steered_requests": ("gauge", "steered requests the worker is running or holding"),
    "steered_requests_total": ("counter", "steered requests the worker has admitted"),
    "invalid_steering_total": ("counter", "requests whose steering the worker refused (ran unsteered; the API "
                                          "server validates first, so this stays 0 behind emolab serve)"),
    "rows_exhausted_total": ("counter", "steered requests that found every row taken (ran unsteered)"),
}


class WorkerCounters:
    """A worker's counters in ``$EMOLAB_METRICS_DIR/worker-<pid>.i64``; inert when the variable is unset."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        folder = directory if directory is not None else os.environ.get(METRICS_DIR_ENV)
        self._values: np.ndarray | None = None
        if not folder:
            return
        path = Path(folder) / f"worker-{os.getpid()}.i64"
        values = np.memmap(path, dtype=np.int64, mode="w+", shape=(len(WORKER_FIELDS),))
        values[:] = 0
        values[0] = os.getpid()
        self._values = values

    def publish(self, *, active_rows: int, active_steered_requests: int, steered_requests_total: int,
                invalid_steering_total: int, rows_exhausted_total: int) -> None:
        if self._values is None:
            return
        self._values[1:] = (active_rows, active_steered_requests, steered_requests_total, invalid_steering_total,
                            rows_exhausted_total, int(time.time() * 1000))


def read_worker_counters(directory: str | os.PathLike[str]) -> list[dict[str, int]]:
    """Every live worker's counters (files of processes that are gone are skipped)."""
    found = []
    for path in sorted(Path(directory).glob("worker-*.i64")):
        try:
            values = np.fromfile(path, dtype=np.int64)
        except OSError:
            continue
        if len(values) != len(WORKER_FIELDS) or not _alive(int(values[0])):
            continue
        found.append(dict(zip(WORKER_FIELDS, (int(v) for v in values), strict=True)))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class FrontEndCounters:
    """What the API server's middleware counts itself."""

    http_requests_in_flight: int = 0  # generation requests whose response has not finished yet
    steered_http_requests_in_flight: int = 0
    steered_http_requests_total: int = 0
    refused_requests_total: int = 0  # 4xx answered by emolab's validation


def render_prometheus(front: FrontEndCounters, workers: list[dict[str, int]]) -> str:
    """The emolab lines appended to ``/metrics``."""
    lines: list[str] = []
    for name, kind, text, value in (
        ("emolab_http_requests_in_flight", "gauge", "generation requests being answered", front.http_requests_in_flight),
        ("emolab_steered_http_requests_in_flight", "gauge", "steered generation requests being answered",
         front.steered_http_requests_in_flight),
        ("emolab_steered_http_requests_total", "counter", "steered generation requests admitted",
         front.steered_http_requests_total),
        ("emolab_refused_requests_total", "counter", "requests refused by emolab's validation (4xx)",
         front.refused_requests_total),
    ):
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {value}"]
    for field, (kind, text) in _HELP.items():
        name = f"emolab_worker_{field}"
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        lines += [f'{name}{{pid="{w["pid"]}"}} {w[field]}' for w in workers]
    return "\n".join(lines) + "\n"
