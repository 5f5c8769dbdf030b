"""Start, await and stop ``emolab serve`` processes (tests, notebooks, the demo, ``emolab bench``).

A server runs as its own process (``python -m emolab.cli serve ...``): the model, and for the vLLM
backend the engine and its workers, live there, and stopping it frees everything.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["LOOPBACK_HOSTS", "free_port", "launch_server", "log_tail", "session_processes",
           "stop_server", "wait_for_health"]

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_server(*, vectors: str | Path, model: str, port: int, host: str = "127.0.0.1", backend: str = "hf",
                  api_key: str | None = None, extra_args: Sequence[str] = (), env: dict[str, str] | None = None,
                  log_path: str | Path | None = None) -> subprocess.Popen:
    """Start ``python -m emolab.cli serve ...`` in the background; its output goes to ``proc.log_path``.

    The key travels in ``$EMOLAB_API_KEY`` (not argv, which other users can read in ``ps``).
    """
    child_env = dict(os.environ if env is None else env)
    child_env.pop("EMOLAB_API_KEY", None)
    child_env.pop("EMOTION_STEERING_API_KEY", None)
    if api_key:
        child_env["EMOLAB_API_KEY"] = api_key
    if log_path is None:
        handle, log_path = tempfile.mkstemp(prefix=f"emolab-serve-{port}-", suffix=".log")
        os.close(handle)
    log_path = Path(log_path)
    cmd = [sys.executable, "-m", "emolab.cli", "serve", "--vectors", str(vectors), "--model", model,
           "--host", host, "--port", str(port), "--backend", backend, *extra_args]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env, start_new_session=True)
    proc.log_path = log_path  # type: ignore[attr-defined]
    return proc


def wait_for_health(base_url: str, timeout: float = 300.0, process: subprocess.Popen | None = None, *,
                    stop_on_failure: bool = False) -> dict[str, Any]:
    """Poll ``/health`` until it answers 200; raise with the log's tail if the process dies or time runs out.

    ``stop_on_failure``: a ``process`` that never answered (timeout, exit, or an interrupt while waiting) is
    stopped with its whole session (``stop_server``) before the error goes up, for callers that hand the
    server on only once it is up and so have no clean-up of their own to reach.
    """
    try:
        return _poll_health(base_url.rstrip("/").removesuffix("/v1") + "/health", timeout, process)
    except BaseException:
        if stop_on_failure and process is not None:
            stop_server(process)
        raise


def _poll_health(url: str, timeout: float, process: subprocess.Popen | None) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode} before {url} answered\n{log_tail(process)}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    body = response.read()  # vLLM's /health answers 200 with an empty body
                    return json.loads(body) if body.strip() else {"status": "ok"}
        except (urllib.error.URLError, OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout:.0f}s\n{log_tail(process)}")
        time.sleep(0.5)


def log_tail(process: subprocess.Popen | None, lines: int = 40) -> str:
    path = getattr(process, "log_path", None)
    if path is None or not Path(path).is_file():
        return "(no log)"
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])


def session_processes(session_id: int) -> list[int]:
    """Live (non-zombie) processes of a session, from ``/proc`` (Linux; elsewhere ``[]``).

    ``launch_server`` starts each server in a session of its own (its id is the server's pid), and
    the vLLM backend's engine core and workers are children in it: this is what must be gone after
    ``stop_server``.
    """
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, pgrp, session, ...
        if int(fields[3]) == session_id and fields[0] != "Z":
            pids.append(int(entry.name))
    return sorted(pids)


def stop_server(process: subprocess.Popen, timeout: float = 15.0) -> None:
    """Terminate a server started by ``launch_server`` (kill if it does not exit in time), then any process
    left in its session (a vLLM engine core that outlived its front end), so nothing of it keeps running."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
    deadline = time.monotonic() + timeout
    while (left := session_processes(process.pid)) and time.monotonic() < deadline:
        time.sleep(0.2)  # the engine core shuts down on its own once the front end has gone
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5.0
    while left and (left := session_processes(process.pid)) and time.monotonic() < deadline:
        time.sleep(0.1)  # SIGKILL is delivered asynchronously: return once they are gone
