"""Steering metrics for operators, on vLLM's own ``/metrics`` (Prometheus text format).

The numbers live where the work happens: each worker's ``BatchSteering`` knows its active rows and
steered requests; each API-server process knows the HTTP requests it admitted. Both are other processes
than the one answering a given ``/metrics`` request (vLLM runs several API servers with
``--api-server-count``), so each publishes a handful of counters in a small memory-mapped file under the
metrics folder (``metrics_directory``: ``$EMOLAB_METRICS_DIR``, set per server by ``emolab serve``, else
vLLM's ``$PROMETHEUS_MULTIPROC_DIR``): writing is a store into shared memory, no syscall, no lock,
nothing on the GPU. Whichever API server answers ``/metrics`` appends them to vLLM's own text: the
API servers' counters summed (plus one per-process request count, label ``pid``) and one sample per
worker (label ``pid``), so every API server answers the same totals.
"""

from __future__ import annotations

import mmap
import os
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

__all__ = ["API_SERVER_FIELDS", "METRICS_DIR_ENV", "WORKER_FIELDS", "ApiServerCounters", "FrontEndCounters",
           "WorkerCounters", "metrics_directory", "read_api_server_counters", "read_worker_counters",
           "render_prometheus"]

METRICS_DIR_ENV = "EMOLAB_METRICS_DIR"
PROMETHEUS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # vLLM sets it for several API servers
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


def metrics_directory() -> str | None:
    """Where this server's processes publish their counters: ``$EMOLAB_METRICS_DIR``, else the folder vLLM
    shares between its API servers (``$PROMETHEUS_MULTIPROC_DIR``, plain ``vllm serve --api-server-count``)."""
    return os.environ.get(METRICS_DIR_ENV) or os.environ.get(PROMETHEUS_DIR_ENV) or None


def _counters_file(directory: str | os.PathLike[str], kind: str) -> Path:
    """``<directory>/<kind>-<pid>.i64``, this process's counters; the folder is created if it is not there yet
    (one named by hand in ``$EMOLAB_METRICS_DIR``)."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    return Path(directory) / f"{kind}-{os.getpid()}.i64"


class WorkerCounters:
    """A worker's counters in ``<metrics folder>/worker-<pid>.i64``; inert without a folder."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        folder = directory if directory is not None else metrics_directory()
        self._values: np.ndarray | None = None
        if not folder:
            return
        values = np.memmap(_counters_file(folder, "worker"), dtype=np.int64, mode="w+", shape=(len(WORKER_FIELDS),))
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
    return _read_live(directory, "worker-*.i64", WORKER_FIELDS)


def _read_live(directory: str | os.PathLike[str], pattern: str, names: tuple[str, ...]) -> list[dict[str, int]]:
    found = []
    for path in sorted(Path(directory).glob(pattern)):
        try:
            values = np.fromfile(path, dtype=np.int64)
        except OSError:
            continue
        if len(values) != len(names) or not _alive(int(values[0])):
            continue
        found.append(dict(zip(names, (int(v) for v in values), strict=True)))
    return found


def _alive(pid: int) -> bool:
    if pid <= 0:  # a file whose owner has not written its pid yet (os.kill(0, ...) would mean our group)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class FrontEndCounters:
    """What the API servers' middleware counts (one process's, or the sum over every API server)."""

    http_requests_in_flight: int = 0  # generation requests whose response has not finished yet
    steered_http_requests_in_flight: int = 0
    steered_http_requests_total: int = 0
    refused_requests_total: int = 0  # 4xx answered by emolab's validation

    @classmethod
    def total(cls, processes: list[dict[str, int]]) -> FrontEndCounters:
        """The sum over API-server processes (``read_api_server_counters``)."""
        return cls(**{f.name: sum(p[f.name] for p in processes) for f in fields(cls)})


# One int64 slot each, in this order, in every API server's file; the middleware writes them by index.
API_SERVER_FIELDS = ("pid", "http_requests_total", "http_requests_in_flight", "steered_http_requests_in_flight",
                     "steered_http_requests_total", "refused_requests_total")
(HTTP_REQUESTS, IN_FLIGHT, STEERED_IN_FLIGHT, STEERED_TOTAL, REFUSED) = range(1, len(API_SERVER_FIELDS))


class ApiServerCounters:
    """One API-server process's counters: ``values[IN_FLIGHT] += 1`` is a store into a memory-mapped
    ``api-server-<pid>.i64`` under the metrics folder, which every API server reads for ``/metrics``
    (private memory without a folder). Only this process's event loop writes it."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        size = 8 * len(API_SERVER_FIELDS)
        buffer: mmap.mmap | bytearray = bytearray(size)
        if directory:
            with open(_counters_file(directory, "api-server"), "w+b") as handle:
                handle.truncate(size)
                buffer = mmap.mmap(handle.fileno(), size)
        self.values = memoryview(buffer).cast("q")
        self.values[0] = os.getpid()

    def snapshot(self) -> dict[str, int]:
        return dict(zip(API_SERVER_FIELDS, self.values.tolist(), strict=True))


def read_api_server_counters(directory: str | os.PathLike[str]) -> list[dict[str, int]]:
    """Every live API-server process's counters (files of processes that are gone are skipped)."""
    return _read_live(directory, "api-server-*.i64", API_SERVER_FIELDS)


def render_prometheus(front: FrontEndCounters, workers: list[dict[str, int]],
                      api_servers: list[dict[str, int]] | None = None) -> str:
    """The emolab lines appended to ``/metrics`` (``front``: summed over ``api_servers`` when given)."""
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
    if api_servers:
        lines += ["# HELP emolab_api_servers API-server processes answering this port",
                  "# TYPE emolab_api_servers gauge", f"emolab_api_servers {len(api_servers)}"]
        name = "emolab_api_server_http_requests_total"
        lines += [f"# HELP {name} HTTP requests each API-server process received (all but /metrics and /health)",
                  f"# TYPE {name} counter"]
        lines += [f'{name}{{pid="{p["pid"]}"}} {p["http_requests_total"]}' for p in api_servers]
    for field, (kind, text) in _HELP.items():
        name = f"emolab_worker_{field}"
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        lines += [f'{name}{{pid="{w["pid"]}"}} {w[field]}' for w in workers]
    return "\n".join(lines) + "\n"
