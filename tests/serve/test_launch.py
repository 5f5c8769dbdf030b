"""``wait_for_health`` with ``stop_on_failure``: a server that never answers is stopped with its whole session."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from emolab.serve.launch import free_port, session_processes, stop_server, wait_for_health

# A stand-in for a server that never answers: a process in a session of its own with a child that, like vLLM's
# engine core, ends once its front end has gone; listening nowhere.
CHILD = "import os, time\nparent = os.getppid()\nwhile os.getppid() == parent: time.sleep(0.1)"
SILENT = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {CHILD!r}]); time.sleep(600)"


def _silent_server() -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", SILENT], start_new_session=True)
    deadline = time.monotonic() + 30
    while len(session_processes(proc.pid)) < 2 and time.monotonic() < deadline:  # the child is up
        time.sleep(0.05)
    assert len(session_processes(proc.pid)) == 2
    return proc


def test_a_server_that_never_answers_is_stopped_with_its_session_when_asked():
    proc = _silent_server()
    try:
        with pytest.raises(TimeoutError, match="did not answer within 1s"):
            wait_for_health(f"http://127.0.0.1:{free_port()}", timeout=1, process=proc, stop_on_failure=True)
        assert proc.poll() is not None and session_processes(proc.pid) == []
    finally:
        stop_server(proc)


def test_without_stop_on_failure_the_caller_keeps_the_server():
    proc = _silent_server()
    try:
        with pytest.raises(TimeoutError):
            wait_for_health(f"http://127.0.0.1:{free_port()}", timeout=1, process=proc)
        assert proc.poll() is None and len(session_processes(proc.pid)) == 2
    finally:
        stop_server(proc)
    assert session_processes(proc.pid) == []
